"""The router driven by hand: two workers in one process, one in-memory channel layer, a
fake clock. Nothing sleeps on wall-clock time; waits return as soon as their answer lands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from challenges.audit import AuditWriter
from challenges.clients import ClientInfo
from challenges.errors import ChallengeError, Code
from challenges.flows import FlowService
from challenges.identity import PrivateKey
from challenges.limits import Caps, Limits
from challenges.liveness import LocalLiveness
from challenges.outcomes import Outcomes
from challenges.owner import PREFIX
from challenges.refusals import Refusals
from challenges.routing import Router
from challenges.tokens import verify_token
from challenges.upstream import LocalUpstream
from tests.fakeclock import FakeClock, settle
from tests.wsutil import attempts

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT = ClientInfo(ip="127.0.0.8", audience="https://app.example", transport="http")


class Layer(InMemoryChannelLayer):  # type: ignore[misc]
    """The in-memory layer, which can be taken down."""

    down = False
    #: Messages to lose on the way (a pub/sub layer's reader that was away), as sent.
    lose = 0

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("the layer is down")
        if self.lose:
            self.lose -= 1
            return
        await super().send(channel, message)


@dataclass
class Worker:
    service: FlowService
    router: Router


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cluster(
    clock: FakeClock, authority_signer: PrivateKey
) -> AsyncIterator[tuple[Layer, Worker, Worker]]:
    layer, registry = Layer(), set[str]()
    workers = []
    # One writer for both: two writer threads on the test's shared in-memory SQLite database
    # collide ("database table is locked", which SQLite's busy timeout does not wait out
    # there), where workers on a real database each have their own and wait for the lock.
    audit = AuditWriter()
    for name, tag in (("A", "aaaaaaaa"), ("B", "bbbbbbbb")):
        service = FlowService(
            upstream=LocalUpstream(signer=authority_signer, ttl=600, clock=clock),
            outcomes=Outcomes(
                audit=audit,
                refusals=Refusals(audit=audit, clock=clock),
                clock=clock,
                worker=name,
                upstream="local",
            ),
            limits=Limits(Caps()),
            clock=clock,
            timeout=60,
            worker=name,
            tag=tag,
        )
        router = Router(
            service=service,
            layer=layer,
            liveness=LocalLiveness(tag=tag, registry=registry),
            clock=clock,
            timeout=65,
            check_every=1.0,
        )
        await router.start()
        workers.append(Worker(service, router))
    yield layer, workers[0], workers[1]
    for worker in workers:
        await worker.router.stop()
        await worker.service.shutdown()
        await worker.service.outcomes.refusals.stop()
        await worker.service.outcomes.audit.close()


async def outcomes(*flushed: Worker) -> list[tuple[str, str]]:
    """Every outcome, a refusal once per time it was counted (refusals aggregate per address
    and minute: the counts of ``flushed`` workers are written first)."""
    for worker in flushed:
        await worker.service.outcomes.refusals.flush()
    return [(row.outcome, row.worker) for row in await attempts() for _ in range(row.count)]


async def test_a_signature_on_b_is_finished_by_its_owner_a(cluster, user_key, authority_signer):
    _, a, b = cluster
    heard: list[Any] = []

    async def asker(flow_id: str, event: Any) -> None:
        heard.append(event)

    flow = await a.service.begin(key=user_key.public, client=CLIENT, watcher=asker)
    token = await b.router.finish(
        flow_id=flow.id, signature=user_key.sign(flow.challenge.value), client=CLIENT
    )
    assert verify_token(token, issuer=authority_signer.public, now=a.service.clock.now())
    assert [t.token for t in heard] == [token]  # the socket that asked on A gets it too
    assert await outcomes() == [("success", "A")]  # one row, written by the owner


async def test_the_owners_refusal_comes_back_audited_once(cluster, user_key):
    _, a, b = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    forged = PrivateKey.generate().sign(flow.challenge.value)
    with pytest.raises(ChallengeError) as refused:
        await b.router.finish(flow_id=flow.id, signature=forged, client=CLIENT)
    assert refused.value.code == Code.BAD_SIGNATURE
    assert await outcomes() == [("bad_signature", "A")]


async def test_a_tag_of_no_live_worker_is_unknown_at_once_and_sends_nothing(cluster, user_key):
    layer, a, b = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    await a.router.stop()  # A is gone (its tag leaves the registry)
    for flow_id in (flow.id, "deadbeef" + "x" * 24):
        with pytest.raises(ChallengeError) as gone:
            await b.router.finish(flow_id=flow_id, signature=b"\0" * 64, client=CLIENT)
        assert gone.value.code == Code.UNKNOWN_CHALLENGE
    assert not any(name.startswith(PREFIX) and queue.qsize() for name, queue in layer.channels.items())
    assert await outcomes(b) == [("unknown_challenge", "B")] * 2
    assert [row.count for row in await attempts()] == [2]  # one row for both


async def test_an_owner_that_dies_while_b_waits_is_noticed_at_the_next_check(cluster, clock, user_key):
    _, a, b = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    await a.router.stop()
    await a.router.liveness.start()  # alive on paper, but reading nothing: a hung owner
    waiting = asyncio.ensure_future(
        b.router.finish(flow_id=flow.id, signature=user_key.sign(flow.challenge.value), client=CLIENT)
    )
    await clock.advance(5)
    assert not waiting.done()  # a slow owner is waited for while it lives
    await a.router.liveness.stop()  # now it dies
    await clock.advance(1)
    with pytest.raises(ChallengeError) as gone:
        await asyncio.wait_for(waiting, 5)
    assert gone.value.code == Code.UNKNOWN_CHALLENGE
    assert await outcomes() == [("unknown_challenge", "B")]


async def test_an_owner_alive_but_silent_runs_into_the_deadline(cluster, clock, user_key):
    _, a, b = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    await a.router.stop()
    await a.router.liveness.start()
    waiting = asyncio.ensure_future(
        b.router.finish(flow_id=flow.id, signature=user_key.sign(flow.challenge.value), client=CLIENT)
    )
    await clock.advance(66)
    with pytest.raises(ChallengeError) as late:
        await asyncio.wait_for(waiting, 5)
    assert late.value.code == Code.UPSTREAM_DEADLINE
    assert ("upstream_deadline", "B") in await outcomes()


async def test_a_layer_that_is_down_is_routing_unavailable_and_the_challenge_stays(cluster, user_key):
    layer, a, b = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    layer.down = True
    signature = user_key.sign(flow.challenge.value)
    with pytest.raises(ChallengeError) as down:
        await b.router.finish(flow_id=flow.id, signature=signature, client=CLIENT)
    assert down.value.code == Code.ROUTING_UNAVAILABLE
    assert a.service.pending(flow.id) is flow  # never spent: it can still be answered
    layer.down = False
    await settle()
    assert await b.router.finish(flow_id=flow.id, signature=signature, client=CLIENT)
    assert await outcomes() == [("routing_unavailable", "B"), ("success", "A")]


async def test_a_local_signature_never_touches_the_layer(cluster, user_key):
    layer, a, _ = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    layer.down = True
    assert await a.router.finish(
        flow_id=flow.id, signature=user_key.sign(flow.challenge.value), client=CLIENT
    )
    assert await outcomes() == [("success", "A")]


async def test_a_request_lost_on_the_way_is_sent_again_and_finished_once(cluster, clock, user_key):
    layer, a, b = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    layer.lose = 1  # the request never reaches A
    waiting = asyncio.ensure_future(
        b.router.finish(flow_id=flow.id, signature=user_key.sign(flow.challenge.value), client=CLIENT)
    )
    await clock.advance(1)
    assert not waiting.done()
    await clock.advance(1.5)  # past resend_after: sent again
    token = await asyncio.wait_for(waiting, 5)
    assert token
    assert await outcomes() == [("success", "A")]


async def test_a_repeated_request_gets_the_same_answer_without_finishing_twice(cluster, clock, user_key):
    layer, a, b = cluster
    flow = await a.service.begin(key=user_key.public, client=CLIENT)
    signature = user_key.sign(flow.challenge.value)
    request = {
        "type": "flow.request", "request": "r-1", "reply_to": b.router.inbox, "id": flow.id, "sig": signature,
        "client": {"ip": "127.0.0.8", "transport": "http"},
    }  # fmt: skip
    replies = []
    b.router._waiting["r-1"] = asyncio.get_running_loop().create_future()
    await layer.send(a.router.inbox, request)
    first = await asyncio.wait_for(b.router._waiting["r-1"], 5)
    b.router._waiting["r-1"] = asyncio.get_running_loop().create_future()
    await layer.send(a.router.inbox, request)  # the same request again
    second = await asyncio.wait_for(b.router._waiting["r-1"], 5)
    replies += [first, second]
    assert [r["ok"] for r in replies] == [True, True]
    assert first["token"] == second["token"]
    assert await outcomes() == [("success", "A")]  # finished once: no unknown_challenge row
