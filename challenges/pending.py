"""A pending challenge as this process keeps it: the :class:`Flow` record and its watchers.

The flow service (:mod:`challenges.flows`) creates and ends them; the outcomes
(:mod:`challenges.outcomes`) read them for the audit; the edges
(:mod:`challenges.pipeline`, :mod:`challenges.routing`) register a
:data:`Watcher` to hear how one ended elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from .authority import Challenge
from .clients import ClientInfo
from .clock import Timer
from .errors import ChallengeError
from .identity import PublicKey
from .tokens import MintedToken
from .upstream import PendingChallenge

#: Told how a watched flow ended: its id, and the token or the error.
Watcher = Callable[[str, MintedToken | ChallengeError], Awaitable[None]]


@dataclass(eq=False)
class Flow:
    """One pending challenge: ``id`` is what clients quote (the owner's tag first)."""

    id: str
    key: PublicKey
    pending: PendingChallenge
    client: ClientInfo
    created_at: datetime
    started: float
    challenged_at: datetime | None = None
    answered_at: datetime | None = None
    #: Where the answer came from (any connection may answer, on any worker).
    answer_ip: str | None = None
    watchers: list[Watcher] = field(default_factory=list)
    timer: Timer | None = None
    grace: Timer | None = None

    @property
    def challenge(self) -> Challenge:
        return self.pending.challenge
