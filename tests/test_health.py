"""GET /api/health reports the database and the channel layer."""

from __future__ import annotations

import pytest
from django.db import connection


@pytest.mark.django_db(transaction=True)
def test_health_ok(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


@pytest.mark.django_db(transaction=True)
def test_health_reports_a_broken_channel_layer(client, settings):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1"]},
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    try:
        response = client.get("/api/health")
    finally:
        channel_layers.backends.clear()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"] == "ok"
    assert body["channel_layer"] != "ok"
    assert connection.vendor


def test_health_is_get_only(client):
    assert client.post("/api/health").status_code == 405


@pytest.mark.django_db(transaction=True)
def test_health_answers_a_probe_at_the_workers_own_address(client, settings):
    """A load balancer probes a worker by its address, which ALLOWED_HOSTS does not list:
    the probe is answered; any other path with that Host is still refused."""
    settings.ALLOWED_HOSTS = ["tokens.example.com"]
    response = client.get("/api/health", HTTP_HOST="10.0.0.5:8000")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert client.head("/api/health", HTTP_HOST="10.0.0.5:8000").status_code == 200
    assert client.post("/api/health", HTTP_HOST="10.0.0.5:8000").status_code == 405
    # Django's own answer to the rest (in front of it, the HTTP guard answers 403 invalid_host:
    # tests/test_httpguard.py): only the probe is exempt.
    assert client.get("/", HTTP_HOST="10.0.0.5:8000").status_code == 400
    assert client.get("/.well-known/jwks.json", HTTP_HOST="10.0.0.5:8000").status_code == 400
    assert client.get("/api/health/", HTTP_HOST="10.0.0.5:8000").status_code == 400
