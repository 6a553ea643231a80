"""The flow service driven by hand: a fake clock instead of sleeping, the real audit writer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from challenges.audit import AuditWriter
from challenges.clients import ClientInfo
from challenges.errors import ChallengeError, Code
from challenges.flows import FlowService
from challenges.identity import PrivateKey
from challenges.limits import Caps, Limits
from challenges.outcomes import Outcomes
from challenges.refusals import Refusals
from challenges.tokens import MintedToken, verify_token
from challenges.upstream import LocalUpstream
from tests.fakeclock import FakeClock
from tests.wsutil import attempts, tokens

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT = ClientInfo(ip="127.0.0.7", audience="https://app.example", transport="ws")
STRANGER = ClientInfo(ip="2001:db8::9", transport="ws")


class Events:
    """A watcher that keeps what it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, MintedToken | ChallengeError]] = []
        self.changed = asyncio.Event()

    async def __call__(self, flow_id: str, event: MintedToken | ChallengeError) -> None:
        self.heard.append((flow_id, event))
        self.changed.set()

    async def next(self) -> tuple[str, MintedToken | ChallengeError]:
        await asyncio.wait_for(self.changed.wait(), 5)  # returns as soon as it is heard
        self.changed.clear()
        return self.heard[-1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def service(clock: FakeClock, authority_signer: PrivateKey) -> Any:
    upstream = LocalUpstream(signer=authority_signer, ttl=600, clock=clock)
    audit = AuditWriter()
    outcomes = Outcomes(
        audit=audit, refusals=Refusals(audit=audit, clock=clock), clock=clock, worker="w1", upstream="local"
    )
    service = FlowService(
        upstream=upstream,
        outcomes=outcomes,
        limits=Limits(Caps(pending_per_key=2)),
        clock=clock,
        timeout=60,
        worker="w1",
        tag="cafebabe",
    )
    yield service
    await service.shutdown()
    await service.outcomes.audit.close()


async def test_a_flow_gets_a_verifiable_token_once_its_row_is_committed(service, user_key, authority_signer):
    flow = await service.begin(key=user_key.public, client=CLIENT)
    assert flow.id.startswith("cafebabe")
    assert flow.challenge.expires_at == service.clock.now() + timedelta(seconds=60)
    token = await service.finish(
        flow_id=flow.id, signature=user_key.sign(flow.challenge.value), client=CLIENT
    )
    assert verify_token(token.token, issuer=authority_signer.public, now=service.clock.now())["sub"] == str(
        user_key.public
    )
    [row] = await attempts()
    assert (row.outcome, row.challenge_id, row.worker, row.client_ip, row.answer_ip) == (
        "success",
        flow.id,
        "w1",
        "127.0.0.7",
        "127.0.0.7",
    )
    assert [t.jti for t in await tokens()] == [token.jti]


async def test_racing_answers_finish_a_challenge_once(service, user_key):
    flow = await service.begin(key=user_key.public, client=CLIENT)
    signature = user_key.sign(flow.challenge.value)
    results = await asyncio.gather(
        *(service.finish(flow_id=flow.id, signature=signature, client=CLIENT) for _ in range(5)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, MintedToken)]
    lost = [r for r in results if isinstance(r, ChallengeError)]
    assert len(won) == 1
    assert [e.code for e in lost] == [Code.UNKNOWN_CHALLENGE] * 4
    await service.outcomes.refusals.flush()
    rows = sorted((r.outcome, r.count) for r in await attempts())
    assert rows == [("success", 1), ("unknown_challenge", 4)]  # the refusals on one row
    assert len(await tokens()) == 1


async def test_expiry_tells_the_watcher_audits_and_forgets(service, clock, user_key):
    events = Events()
    flow = await service.begin(key=user_key.public, client=CLIENT, watcher=events)
    await clock.advance(59)
    assert service.pending(flow.id) is flow
    await clock.advance(2)
    flow_id, event = await events.next()
    assert flow_id == flow.id
    assert isinstance(event, ChallengeError)
    assert event.code == Code.CHALLENGE_TIMEOUT
    assert service.pending_count == 0
    with pytest.raises(ChallengeError) as late:
        await service.finish(flow_id=flow.id, signature=user_key.sign(flow.challenge.value), client=CLIENT)
    assert late.value.code == Code.UNKNOWN_CHALLENGE
    assert [r.outcome for r in await attempts()] == ["challenge_timeout", "unknown_challenge"]
    assert clock.waiting == 0  # the expiry timer is gone with the flow


async def test_a_bad_signature_spends_the_challenge_and_tells_the_other_watchers(service, user_key):
    asker = Events()
    flow = await service.begin(key=user_key.public, client=CLIENT, watcher=asker)
    forged = PrivateKey.generate().sign(flow.challenge.value)
    with pytest.raises(ChallengeError) as bad:
        await service.finish(flow_id=flow.id, signature=forged, client=STRANGER)
    assert bad.value.code == Code.BAD_SIGNATURE
    assert (await asker.next())[1].code == Code.BAD_SIGNATURE  # type: ignore[union-attr]
    assert service.pending(flow.id) is None
    [row] = await attempts()
    assert (row.outcome, row.upstream_status) == ("bad_signature", "bad_signature")
    # The stranger who answered is on record as such, not as the user who asked.
    assert (row.client_ip, row.answer_ip) == ("127.0.0.7", "2001:db8::9")


async def test_a_malformed_answer_records_who_sent_it_and_an_expiry_no_one(service, clock, user_key):
    answered = await service.begin(key=user_key.public, client=CLIENT)
    waiting = Events()
    unanswered = await service.begin(key=user_key.public, client=CLIENT, watcher=waiting)
    malformed = ChallengeError("malformed answer", code=Code.INVALID_SIG_LENGTH)
    answered_at = clock.now()
    assert await service.fail(answered.id, malformed, client=STRANGER)
    assert not await service.fail(answered.id, malformed, client=STRANGER)  # spent already
    await clock.advance(61)
    assert (await waiting.next())[0] == unanswered.id  # told once its row is written
    rows = {row.outcome: row for row in await attempts()}
    assert set(rows) == {"invalid_sig_length", "challenge_timeout"}
    bad, late = rows["invalid_sig_length"], rows["challenge_timeout"]
    assert (bad.challenge_id, bad.client_ip, bad.answer_ip) == (answered.id, "127.0.0.7", "2001:db8::9")
    assert bad.answered_at == answered_at
    assert (late.challenge_id, late.answer_ip, late.answered_at) == (unanswered.id, None, None)


async def test_the_per_key_cap_is_released_when_flows_end(service, user_key):
    first = await service.begin(key=user_key.public, client=CLIENT)
    await service.begin(key=user_key.public, client=CLIENT)
    with pytest.raises(ChallengeError) as capped:
        await service.begin(key=user_key.public, client=CLIENT)
    assert capped.value.code == Code.TOO_MANY_PENDING
    malformed = ChallengeError("malformed answer", code=Code.INVALID_SIG_LENGTH)
    await service.fail(first.id, malformed, client=CLIENT)
    await service.begin(key=user_key.public, client=CLIENT)
    assert [r.outcome for r in await attempts()] == ["too_many_pending", "invalid_sig_length"]


async def test_shutdown_ends_every_pending_flow_and_refuses_new_ones(service, user_key):
    watchers = [Events(), Events()]
    flows = [await service.begin(key=user_key.public, client=CLIENT, watcher=w) for w in watchers]
    assert await service.shutdown() == 2
    for watcher, flow in zip(watchers, flows, strict=True):
        flow_id, event = await watcher.next()
        assert flow_id == flow.id
        assert isinstance(event, ChallengeError)
        assert event.code == Code.SERVER_SHUTDOWN
    with pytest.raises(ChallengeError) as refused:
        await service.begin(key=user_key.public, client=CLIENT)
    assert refused.value.code == Code.SERVER_SHUTDOWN
    await service.outcomes.refusals.flush()
    rows = [(r.outcome, r.count) for r in await attempts()]
    assert rows == [("server_shutdown", 1)] * 3  # two flows (a row each) and one refusal
    assert service.pending_count == 0
