"""Who may read ``/metrics``: the access rule, its settings and checks, and the endpoint through
the whole ASGI application, in-process; and what the metrics facade records."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.checks import run_checks
from prometheus_client import REGISTRY

from challenges import metrics
from challenges.access import MetricsAccess, parse_networks
from tests import servers

TOKEN = "a-long-random-metrics-token-" + "x" * 20


@pytest.mark.parametrize(
    ("allowed", "ip", "expected"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "127.0.0.2", False),
        (["127.0.0.1/32"], "::ffff:127.0.0.1", True),  # an IPv4-mapped address is its IPv4
        (["10.0.0.0/8", "::1"], "10.200.3.4", True),
        (["10.0.0.0/8", "::1"], "::1", True),
        (["10.0.0.0/8", "::1"], "11.0.0.1", False),
        (["2001:db8::/32"], "2001:db8:1::5", True),
        (["2001:db8::/32"], "10.0.0.1", False),
        (["10.0.0.1"], None, False),  # no address known
        (["10.0.0.1"], "not-an-address", False),
        ([], "127.0.0.1", False),  # nothing configured: no one
    ],
)
def test_addresses_and_networks(allowed, ip, expected):
    assert MetricsAccess.build(allowed).allows(ip) is expected


@pytest.mark.parametrize(
    ("token", "authorization", "expected"),
    [
        (TOKEN, f"Bearer {TOKEN}", True),
        (TOKEN, f"bearer  {TOKEN} ", True),
        (TOKEN, f"Bearer {TOKEN[:-1]}", False),
        (TOKEN, f"Bearer {TOKEN}x", False),
        (TOKEN, TOKEN, False),  # no scheme
        (TOKEN, f"Basic {TOKEN}", False),
        (TOKEN, "", False),
        ("", "Bearer ", False),  # no token configured: none is accepted, not even an empty one
        ("", "Bearer x", False),
    ],
)
def test_the_bearer_token(token, authorization, expected):
    access = MetricsAccess.build(["10.0.0.0/8"], token)
    assert access.allows("192.0.2.1", authorization) is expected
    assert access.allows("10.0.0.1", authorization)  # an allowed address needs no token


def test_the_token_is_never_in_the_repr_and_a_malformed_entry_is_named():
    assert TOKEN not in repr(MetricsAccess.build([], TOKEN))
    assert MetricsAccess.build([], TOKEN).open_to_anyone
    assert not MetricsAccess.build([" ", ""]).open_to_anyone
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not an address or a network"):
        parse_networks(["127.0.0.1", "10.0.0.300"])


def check_ids(settings: Any) -> set[str]:
    return {m.id for m in run_checks() if m.id and m.id in ("challenges.W002", "challenges.E015")}


def test_production_with_no_way_in_is_warned_and_a_malformed_address_is_an_error(settings):
    settings.DEBUG = False
    settings.METRICS_ALLOWED_IPS, settings.METRICS_TOKEN = [], ""
    assert check_ids(settings) == {"challenges.W002"}
    settings.METRICS_TOKEN = TOKEN
    assert check_ids(settings) == set()
    settings.METRICS_ALLOWED_IPS, settings.METRICS_TOKEN = ["10.0.0.1"], ""
    assert check_ids(settings) == set()
    settings.METRICS_ALLOWED_IPS = ["10.0.0.1", "localhost"]
    assert check_ids(settings) == {"challenges.E015"}
    settings.DEBUG = True
    settings.METRICS_ALLOWED_IPS = []
    assert check_ids(settings) == set()  # with DEBUG, refusing everyone is no warning


def allowed(tmp_path, **env: str) -> list[str]:
    """METRICS_ALLOWED_IPS as a process started with ``env`` reads it."""
    code = "from django.conf import settings as s; import json; print(json.dumps(s.METRICS_ALLOWED_IPS))"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=servers.ROOT, env=servers.base_env(tmp_path, **env), capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_loopback_may_look_by_default_with_debug_only(tmp_path):
    loopback = ["127.0.0.0/8", "::1"]
    assert allowed(tmp_path, DEBUG="true") == loopback
    assert allowed(tmp_path, DEBUG="true", METRICS_ALLOWED_IPS="") == loopback  # as .env.example has it
    assert allowed(tmp_path, DEBUG="true", METRICS_TOKEN=TOKEN) == []  # then the token is the way in
    assert allowed(tmp_path, DEBUG="false") == []
    assert allowed(tmp_path, DEBUG="false", METRICS_ALLOWED_IPS="10.0.0.0/8,10.1.0.5") == [
        "10.0.0.0/8",
        "10.1.0.5",
    ]


async def get(
    path: str, client: str, method: str = "GET", headers: list[Any] | None = None
) -> dict[str, Any]:
    """One request through tokensite.asgi's whole application (the guard, then the endpoint)."""
    from tokensite.asgi import application

    scope = {
        "type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"10.9.9.9:8000"), *(headers or [])],  # a Host Django would refuse
        "client": (client, 40000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    comm = ApplicationCommunicator(application, scope)
    await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await comm.receive_output(10)
    body = await comm.receive_output(10)
    await comm.wait(10)
    return {"status": start["status"], "headers": dict(start["headers"]), "body": body["body"]}


@pytest.mark.django_db(transaction=True)
async def test_the_endpoint_answers_the_allowed_and_refuses_the_rest(settings):
    settings.DEBUG = False
    settings.SECURE_SSL_REDIRECT = True  # plain http would be redirected by Django
    settings.METRICS_ALLOWED_IPS, settings.METRICS_TOKEN = ["127.0.0.1"], TOKEN
    allowed = await get("/metrics", "127.0.0.1")
    assert allowed["status"] == 200
    assert allowed["headers"][b"content-type"].startswith(b"text/plain; version=")
    assert b"# TYPE tokenprovider_flows_finished_total counter" in allowed["body"]
    assert b"process_cpu_seconds_total" in allowed["body"]  # one process: the registry itself
    assert (await get("/metrics", "127.0.0.2"))["status"] == 403
    bearer = [(b"authorization", f"Bearer {TOKEN}".encode())]
    assert (await get("/metrics", "127.0.0.2", headers=bearer))["status"] == 200
    wrong = [(b"authorization", f"Bearer {TOKEN}-".encode())]
    refused = await get("/metrics", "127.0.0.2", headers=wrong)
    assert (refused["status"], refused["body"]) == (403, b"forbidden\n")
    head = await get("/metrics", "127.0.0.1", method="HEAD")
    assert (head["status"], head["body"]) == (200, b"")
    assert int(head["headers"][b"content-length"]) > 0
    post = await get("/metrics", "127.0.0.1", method="POST")
    assert (post["status"], post["headers"][b"allow"]) == (405, b"GET, HEAD")
    other = await get("/metrics/", "127.0.0.1")  # not the endpoint: Django's, behind the Host check
    assert (other["status"], json.loads(other["body"])["code"]) == (403, "invalid_host")


@pytest.mark.django_db(transaction=True)
async def test_in_production_with_neither_setting_no_one_may_read(settings):
    settings.DEBUG = False
    settings.METRICS_ALLOWED_IPS, settings.METRICS_TOKEN = [], ""
    assert (await get("/metrics", "127.0.0.1"))["status"] == 403
    anything = [(b"authorization", b"Bearer ")]
    assert (await get("/metrics", "127.0.0.1", headers=anything))["status"] == 403


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_facade_records_each_fact_on_the_right_series():
    recorded = metrics.Metrics("grpc://hub.test:3006")
    upstream = {"upstream": "grpc://hub.test:3006"}
    before = value("tokenprovider_flows_finished_total", outcome="rate_limited", transport="http", **upstream)
    recorded.finished("rate_limited", "http")  # a refusal: no latency, a refusal kind
    recorded.finished("rate_limited", "http")
    recorded.finished("upstream_deadline", "ws", 2.5)
    after = value("tokenprovider_flows_finished_total", outcome="rate_limited", transport="http", **upstream)
    assert after - before == 2
    assert value("tokenprovider_flow_latency_seconds_count", transport="ws", outcome_class="upstream") >= 1
    assert value("tokenprovider_refusals_total", kind="rate_limited") >= 2
    assert [metrics.outcome_class(o) for o in ("success", "bad_signature", "challenge_timeout")] == [
        "success",
        "rejected",
        "timeout",
    ]
    assert [
        metrics.outcome_class(o) for o in ("upstream_error", "routing_unavailable", "internal_error")
    ] == [
        "upstream",
        "upstream",
        "server",
    ]
    ok = value("tokenprovider_upstream_status_total", status="OK")
    metrics.upstream_status("OK")
    assert value("tokenprovider_upstream_status_total", status="OK") == ok + 1
    assert metrics.multiprocess_dir() is None  # this process keeps its values itself
