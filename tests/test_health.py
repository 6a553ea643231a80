"""GET /api/health reports the database and the channel layer."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import AsyncClient


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
async def test_health_answers_a_probe_at_the_workers_own_address(settings):
    """A load balancer probes a worker by its address, which ALLOWED_HOSTS does not list:
    the probe is answered; any other path with that Host is still refused. (Async: each
    request of Django's sync client would start a runtime on a loop of its own.)"""
    settings.ALLOWED_HOSTS = ["tokens.example.com"]
    client, worker = AsyncClient(), {"host": "10.0.0.5:8000"}
    response = await client.get("/api/health", headers=worker)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert (await client.head("/api/health", headers=worker)).status_code == 200
    assert (await client.post("/api/health", headers=worker)).status_code == 405
    # Django's own answer to the rest (in front of it, the HTTP guard answers 403 invalid_host:
    # tests/test_httpguard.py): only the probe is exempt.
    for path in ("/", "/.well-known/jwks.json", "/api/health/"):
        assert (await client.get(path, headers=worker)).status_code == 400, path
