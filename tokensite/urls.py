from django.contrib import admin
from django.urls import path, re_path

from challenges import tokenviews, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health", views.health, name="health"),
    path("", views.demo, name="demo"),
    path("api/token/verify", tokenviews.token_verify, name="token-verify"),
    path("api/token/introspect", tokenviews.introspect, name="token-introspect"),
    path(".well-known/jwks.json", tokenviews.jwks, name="jwks"),
    re_path(r"^static/challenges/(?P<path>[a-z-]+\.(?:js|css))$", views.client_asset, name="client-asset"),
]
