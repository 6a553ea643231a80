"""The transport-free ``GetToken`` state machine and its stream cap, driven directly.

The cap is one :class:`StreamCap` object: calls driven by different transports (here,
two hand-written drivers) take their slots from it, and every way out of a call gives
its slot back. The audit is a recorder of the rows the call writes.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import REGISTRY

from challenges import metrics
from challenges.errors import Code, InternalError
from challenges.gettoken import AuthorityConfig, Caller, GetTokenCall, Reply, StreamCap
from challenges.identity import PrivateKey
from challenges.rpc.status import status_of
from challenges.tasks import TaskSet


class Recorder:
    """Stands in for the AuditWriter: keeps each row."""

    def __init__(self) -> None:
        self.rows: list = []

    async def record(self, record) -> None:
        self.rows.append(record)

    async def record_quietly(self, record) -> None:
        self.rows.append(record)


class Driver:
    """One call driven by a queue of the caller's messages."""

    def __init__(
        self,
        cap: StreamCap,
        audit: Recorder,
        tasks: TaskSet,
        api_key: str,
        counted: metrics.Metrics = metrics.DEFAULT,
    ) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.sent: list[Reply] = []
        self.call = GetTokenCall(
            config=AuthorityConfig(signer=PrivateKey.generate(), ttl=60, challenge_deadline=5),
            audit=audit,  # duck-typed: record and record_quietly
            caller=Caller(api_key=api_key),
            tasks=tasks,
            cap=cap,
            metrics=counted,
        )

    def start(self) -> asyncio.Task:
        async def send(reply: Reply) -> None:
            self.sent.append(reply)

        return asyncio.create_task(
            self.call.run(self.inbox.get, send, status_name=lambda error: status_of(error)[0].name)
        )


async def wait_for(predicate, what: str) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached: {what}")


async def test_one_cap_for_every_transport_and_every_way_out_releases_its_slot():
    cap, audit, tasks = StreamCap(1), Recorder(), TaskSet()
    user = PrivateKey.generate()
    holder = Driver(cap, audit, tasks, "bholder")
    held = holder.start()
    await holder.inbox.put(("key", str(user.public)))
    await wait_for(lambda: holder.sent, "the holder's challenge")
    assert cap.active == 1

    # Another transport's call, over the cap: refused once its key is read, and audited.
    over = Driver(cap, audit, tasks, "bother")
    await over.inbox.put(("key", str(user.public)))
    error = await asyncio.wait_for(over.start(), 0.5)
    assert error is not None
    assert (error.code, status_of(error)[0].name) == ("too_many_pending", "RESOURCE_EXHAUSTED")
    assert error.message == "too many concurrent GetToken calls; retry shortly"
    assert over.sent == []
    row = audit.rows[-1]
    assert (row.outcome, row.upstream_status, row.api_key, row.public_key) == (
        "too_many_pending",
        "RESOURCE_EXHAUSTED",
        "bother",
        str(user.public),
    )

    # Over the cap and cancelled before its first message: audited as cancelled, no slot taken.
    silent = Driver(cap, audit, tasks, "bsilent")
    task = silent.start()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await tasks.wait(2)
    row = audit.rows[-1]
    assert (row.outcome, row.upstream_status, row.api_key) == ("too_many_pending", "CANCELLED", "bsilent")
    assert cap.active == 1

    # The holder is cancelled mid-call: its slot comes back, and a new call gets a token.
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    await tasks.wait(2)
    assert cap.active == 0
    assert (audit.rows[-1].outcome, audit.rows[-1].api_key) == ("missing_sig", "bholder")
    fresh = Driver(cap, audit, tasks, "bfresh")
    task = fresh.start()
    await fresh.inbox.put(("key", str(user.public)))
    await wait_for(lambda: fresh.sent, "the fresh call's challenge")
    await fresh.inbox.put(("signature", user.sign(fresh.sent[0].challenge)))
    assert await asyncio.wait_for(task, 2) is None
    assert fresh.sent[1].token
    assert (audit.rows[-1].outcome, audit.rows[-1].api_key) == ("success", "bfresh")
    assert cap.active == 0


class FailingAudit(Recorder):
    """An audit whose awaited rows fail: the token's row is never committed."""

    async def record(self, record) -> None:
        raise InternalError("the audit is unavailable", code=Code.INTERNAL_ERROR)


async def test_a_token_whose_row_fails_is_counted_as_the_error_its_caller_is_told():
    upstream = "test-gettoken-audit-fails"
    counted = metrics.Metrics(upstream)

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"transport": "grpc", **labels}) or 0.0

    server_latency = "tokenprovider_flow_latency_seconds_count"
    before = value(server_latency, outcome_class="server")  # the histogram has no upstream label
    user = PrivateKey.generate()
    driver = Driver(StreamCap(1), FailingAudit(), TaskSet(), "bfailing", counted)
    task = driver.start()
    await driver.inbox.put(("key", str(user.public)))
    await wait_for(lambda: driver.sent, "the challenge")
    await driver.inbox.put(("signature", user.sign(driver.sent[0].challenge)))
    error = await asyncio.wait_for(task, 2)
    assert error is not None
    assert error.code == "internal_error"
    assert len(driver.sent) == 1  # no token left
    finished = "tokenprovider_flows_finished_total"
    assert value("tokenprovider_flows_started_total", upstream=upstream) == 1
    assert value(finished, outcome="internal_error", upstream=upstream) == 1
    assert value(finished, outcome="success", upstream=upstream) == 0
    assert value(server_latency, outcome_class="server") == before + 1


class SlowAudit(Recorder):
    """An audit whose token row takes a while to commit (written whatever the caller does)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()

    async def record(self, record) -> None:
        self.writing.set()
        await asyncio.shield(asyncio.sleep(0.2))
        await super().record(record)


async def test_a_call_cancelled_while_its_token_row_commits_is_still_counted():
    upstream = "test-gettoken-cancelled-at-commit"
    counted = metrics.Metrics(upstream)
    user = PrivateKey.generate()
    driver = Driver(StreamCap(1), SlowAudit(), TaskSet(), "bslow", counted)
    task = driver.start()
    await driver.inbox.put(("key", str(user.public)))
    await wait_for(lambda: driver.sent, "the challenge")
    await driver.inbox.put(("signature", user.sign(driver.sent[0].challenge)))
    await asyncio.wait_for(driver.call.audit.writing.wait(), 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    sample = {"transport": "grpc", "outcome": "success", "upstream": upstream}
    assert REGISTRY.get_sample_value("tokenprovider_flows_finished_total", sample) == 1
