"""Prometheus metrics: every metric object, and the one :class:`Metrics` facade the runtime injects.

Only this module imports ``prometheus_client``. The metrics are process-wide
objects; a process with several uvicorn workers (``manage.py serve
--workers N``) runs them in prometheus-client's *multiprocess mode*: serve
makes an empty ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, each
worker writes its values to files there, and :func:`render` (the ``/metrics``
endpoint, in whichever worker answers) adds them up with
``MultiProcessCollector``. No label names a worker, so totals add up; gauges
sum over live workers (``livesum``), and :func:`process_stopped` drops a
stopping worker's gauges. Without the directory (``make run``, daphne, one
uvicorn) the registry is read directly.

In the hot path a metric update is a dict lookup of a cached ``.labels()``
child and one ``inc``/``observe``: no label tuple is built per flow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

FLOWS_STARTED = Counter(
    "tokenprovider_flows_started",
    "Challenges asked of the flow service (a valid 'token' frame or step-1 request)",
    ["transport", "upstream"],
)
FLOWS_FINISHED = Counter(
    "tokenprovider_flows_finished",
    "Outcomes recorded, one per audit row or aggregated refusal: 'success' or the error code",
    ["outcome", "transport", "upstream"],
)
FLOW_LATENCY = Histogram(
    "tokenprovider_flow_latency_seconds",
    "From the request for a challenge to the flow's outcome (the audit's latency_ms)",
    ["transport", "outcome_class"],
    buckets=_SECONDS,
)
PENDING = Gauge(
    "tokenprovider_pending_challenges",
    "Challenges issued (or being issued) and not yet answered or expired",
    multiprocess_mode="livesum",
)
WEBSOCKETS = Gauge(
    "tokenprovider_websocket_connections", "Open WebSocket connections", multiprocess_mode="livesum"
)
REFUSALS = Counter("tokenprovider_refusals", "Refusals by a rate limit or a cap, by kind", ["kind"])
ROUTED = Histogram(
    "tokenprovider_routed_answer_seconds",
    "Signatures sent to the worker owning their challenge, until its answer ('token' or 'refused')",
    ["result"],
    buckets=_SECONDS,
)
ROUTING_FAILURES = Counter(
    "tokenprovider_routing_failures", "Routed signatures that got no answer from their owner", ["code"]
)
AUDIT_BATCH = Histogram(
    "tokenprovider_audit_batch_rows",
    "Audit rows committed together (group commit)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
AUDIT_COMMIT = Histogram(
    "tokenprovider_audit_commit_seconds",
    "Time to write and commit one audit batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
AUDIT_FAILURES = Counter("tokenprovider_audit_failed_batches", "Audit batches whose commit failed")
UPSTREAM_STATUS = Counter(
    "tokenprovider_upstream_status", "gRPC upstream calls ended, by the status they ended with", ["status"]
)

#: The refusals REFUSALS counts: a rate limit, a cap, or the limits unreachable.
REFUSAL_KINDS = frozenset(
    {
        "rate_limited",
        "too_many_sign_ins",
        "too_many_pending",
        "too_many_connections",
        "too_many_errors",
        "limits_unavailable",
        "frame_too_large",
    }
)
_CLASSES = {
    "success": "success",
    "challenge_timeout": "timeout",
    "internal_error": "server",
    "server_shutdown": "server",
    "routing_unavailable": "upstream",
    # The upstream said no to the client's key or signature: the client's answer, not a failure.
    "upstream_bad_signature": "rejected",
    "upstream_rejected_key": "rejected",
}


def outcome_class(outcome: str) -> str:
    """``success``, ``timeout``, ``upstream`` (it failed), ``server``, or ``rejected`` (the
    client's answer, refused here or upstream)."""
    return _CLASSES.get(outcome) or ("upstream" if outcome.startswith("upstream_") else "rejected")


class _Children(dict[str, Any]):
    """A metric's ``.labels()`` children by the label value that varies, each made once."""

    def __init__(self, make: Callable[[str], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: str) -> Any:
        child = self[key] = self.make(key)
        return child


class Metrics:
    """What the flow records, for one upstream (a label of the flow counters)."""

    def __init__(self, upstream: str = "") -> None:
        self.upstream = upstream
        self._started = _Children(lambda transport: FLOWS_STARTED.labels(transport, upstream))
        self._finished = _Children(
            lambda transport: _Children(lambda outcome: FLOWS_FINISHED.labels(outcome, transport, upstream))
        )
        self._latency = _Children(
            lambda transport: _Children(lambda kind: FLOW_LATENCY.labels(transport, kind))
        )
        self._refusals = _Children(REFUSALS.labels)
        self._routed = _Children(ROUTED.labels)
        self._routing_failures = _Children(ROUTING_FAILURES.labels)

    def started(self, transport: str) -> None:
        self._started[transport].inc()

    def finished(self, outcome: str, transport: str, seconds: float | None = None) -> None:
        """An outcome: a flow's (with its latency) or a refusal's (``seconds`` None)."""
        self._finished[transport][outcome].inc()
        if seconds is not None:
            self._latency[transport][outcome_class(outcome)].observe(seconds)
        elif outcome in REFUSAL_KINDS:
            self._refusals[outcome].inc()

    def pending(self, count: int) -> None:
        PENDING.set(count)

    def websocket_opened(self) -> None:
        WEBSOCKETS.inc()

    def websocket_closed(self) -> None:
        WEBSOCKETS.dec()

    def routed(self, result: str, seconds: float) -> None:
        self._routed[result].observe(seconds)

    def routing_failed(self, code: str) -> None:
        self._routing_failures[code].inc()

    def audit_batch(self, rows: int, seconds: float) -> None:
        AUDIT_BATCH.observe(rows)
        AUDIT_COMMIT.observe(seconds)

    def audit_failed(self) -> None:
        AUDIT_FAILURES.inc()


_statuses = _Children(UPSTREAM_STATUS.labels)


def upstream_status(status: str) -> None:
    """A gRPC upstream call ended with ``status`` (a status name, ``INVALID_REPLY`` ...)."""
    _statuses[status].inc()


#: For what is built without the runtime (tests, runauthority, whose metrics nobody reads).
DEFAULT = Metrics("")


def multiprocess_dir() -> str | None:
    """The directory the values live in, when this process writes them there."""
    if getattr(values.ValueClass, "_multiprocess", False):
        return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    return None


def render() -> bytes:
    """The exposition of every metric: of every worker's files in multiprocess mode."""
    path = multiprocess_dir()
    if path is None:
        return bytes(generate_latest(REGISTRY))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


def process_stopped() -> None:
    """This worker stops: its gauges no longer count (``livesum``)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
