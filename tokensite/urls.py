from django.contrib import admin
from django.urls import path

from challenges import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health", views.health, name="health"),
    path("api/token/challenge", views.token_challenge, name="token-challenge"),
    path("api/token", views.token, name="token"),
]
