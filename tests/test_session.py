"""TokenSession's bookkeeping, stepped by hand."""

from __future__ import annotations

from challenges.errors import ChallengeError
from challenges.flows import ClientInfo
from challenges.session import TokenSession


class Service:
    """Only what TokenSession touches when news of a flow arrives."""


async def test_late_news_of_an_old_challenge_keeps_the_new_one():
    sent: list[dict] = []

    async def send(frame: dict) -> None:
        sent.append(frame)

    session = TokenSession(service=Service(), client=ClientInfo(ip=None), send=send, max_errors=5)  # type: ignore[arg-type]
    session.flow_id = "new-challenge"
    await session._event("old-challenge", ChallengeError("too late", code="challenge_timeout"))
    assert session.flow_id == "new-challenge"
    assert sent == [{"type": "error", "value": "too late", "code": "challenge_timeout"}]
    await session._event("new-challenge", ChallengeError("too late", code="challenge_timeout"))
    assert session.flow_id is None
