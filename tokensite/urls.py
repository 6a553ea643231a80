from django.contrib import admin
from django.urls import path, re_path

from challenges import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health", views.health, name="health"),
    path("api/token/challenge", views.token_challenge, name="token-challenge"),
    path("api/token", views.token, name="token"),
    path("", views.demo, name="demo"),
    path("api/token/verify", views.token_verify, name="token-verify"),
    re_path(r"^static/challenges/(?P<path>[a-z-]+\.(?:js|css))$", views.client_asset, name="client-asset"),
]
