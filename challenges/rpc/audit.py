"""Who calls ``GetToken`` over native gRPC, as the audit records it."""

from __future__ import annotations

from typing import Any

import grpc.aio

from ..apikeys import API_KEY_HEADER
from ..gettoken import Caller


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    metadata = dict(context.invocation_metadata() or ())
    api_key = metadata.get(API_KEY_HEADER)
    return Caller(
        ip=_peer_ip(context.peer()),
        user_agent=str(metadata.get("user-agent", ""))[:200],
        transport="grpc",
        api_key=api_key[:64] if isinstance(api_key, str) else "",
    )


def _peer_ip(peer: str) -> str | None:
    # "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000"
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None
