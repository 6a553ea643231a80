"""Who calls ``GetToken`` over native gRPC, as the audit records it.

Every row of a call names the API key that made it (``api_key``), as
:func:`challenges.hub.key_label` shows it (shared with the gRPC-Web endpoint):
no secret reaches the audit or the log.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import unquote

import grpc.aio

from ..apikeys import API_KEY_HEADER
from ..clients import storable_ip
from ..gettoken import Caller
from ..hub import first_values, key_label

__all__ = ["caller_of", "first_values", "key_label"]


def caller_of(context: grpc.aio.ServicerContext[Any, Any], *, known_keys: Collection[str] = ()) -> Caller:
    metadata = first_values(context.invocation_metadata())
    return Caller(
        ip=peer_ip(context.peer()),
        user_agent=str(metadata.get("user-agent", ""))[:200],
        transport="grpc",
        api_key=key_label(metadata.get(API_KEY_HEADER), known_keys),
    )


def peer_ip(peer: str) -> str | None:
    """The address of grpc's peer string: ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, which
    grpc writes as a URI (``ipv6:%5B::1%5D:5000``, ``ipv6:%5Bfe80::1%25eth0%5D:5000``), as
    :func:`~challenges.clients.storable_ip` keeps it; None for any other kind (``unix:``)."""
    kind, _, rest = (peer or "").partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return storable_ip(unquote(rest.rpartition(":")[0]).strip("[]"))
