"""Is this token active? The one check behind ``POST /api/token/introspect`` (RFC 7662)
and its older alias ``POST /api/token/verify``.

Active means: signed by one of the authority's keys (the current one, a
rotated-out one still listed, or a relayed authority's; ``kid`` and ``iss``
must agree), not expired (30 s of leeway), for ``TOKEN_AUDIENCE`` when one is
set, and not taken back by an operator: neither its ``jti`` revoked nor its
subject's key blocked. Revocation is read from the database on every call, so
it holds at once on every worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async

from . import selectors
from .errors import Code, RefusedError, TokenError
from .keys import AuthorityKeys
from .tokens import verify_token


@dataclass(frozen=True, slots=True)
class Verdict:
    active: bool
    claims: dict[str, Any] = field(default_factory=dict)
    code: Code | None = None
    message: str = ""


async def inspect(token: str, *, keys: AuthorityKeys, audience: str) -> Verdict:
    """The verdict on ``token``; raises ``verification_unavailable`` when no key can check it."""
    if not keys.verifiers:
        raise RefusedError(
            "no key to verify tokens with: set AUTHORITY_PRIVATE_KEY or UPSTREAM_PUBLIC_KEY",
            code=Code.VERIFICATION_UNAVAILABLE,
        )
    try:
        claims = verify_token(token, issuer=keys.verifiers, audience=audience)
    except TokenError as error:
        return Verdict(active=False, code=error.code, message=error.message)
    standing = await database_sync_to_async(selectors.token_standing)(
        jti=str(claims.get("jti", "")), subject=str(claims.get("sub", ""))
    )
    if standing is not None:
        return Verdict(active=False, code=standing, message=standing.meaning)
    return Verdict(active=True, claims=claims)
