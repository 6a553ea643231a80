"""Who calls ``GetToken`` over native gRPC, as the audit records it.

Every row of a call names the API key that made it (``api_key``): a key the
server accepts in full; a well-formed Hub key it does not know in full too
(an old or mistyped key is worth seeing); anything else a caller put in the
header (a secret pasted after its key, or in its place) only as a
fingerprint, so no secret reaches the audit or the log. The signature and its
message are never recorded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable
from typing import Any

import grpc.aio

from ..apikeys import API_KEY_HEADER
from ..gettoken import Caller

#: A Hub API key: multibase base32 of 16 bytes (a secret, 24 bytes, is longer).
_HUB_KEY = re.compile(r"b[a-z2-7]{26}")


def first_values(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    """Call metadata as a mapping, keeping the first value of a repeated entry: the one the
    API-key check reads, so the audit names the key that was checked."""
    values: dict[str, Any] = {}
    for name, value in metadata or ():
        values.setdefault(name, value)
    return values


def key_label(sent: Any, known: Collection[str] = ()) -> str:
    """The API key as the audit and the log record it (see the module's docstring)."""
    if not isinstance(sent, str) or not sent:
        return ""
    if sent in known or _HUB_KEY.fullmatch(sent):
        return sent[:64]
    return "sha256:" + hashlib.sha256(sent.encode("utf-8", "replace")).hexdigest()[:16]


def caller_of(context: grpc.aio.ServicerContext[Any, Any], *, known_keys: Collection[str] = ()) -> Caller:
    metadata = first_values(context.invocation_metadata())
    return Caller(
        ip=_peer_ip(context.peer()),
        user_agent=str(metadata.get("user-agent", ""))[:200],
        transport="grpc",
        api_key=key_label(metadata.get(API_KEY_HEADER), known_keys),
    )


def _peer_ip(peer: str) -> str | None:
    # "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000"
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None
