"""The Hub's status contract for ``GetToken``, without grpc (``docs/PROTOCOL.md``, "GetToken").

One table says which gRPC status, and where the Hub had a fixed one which
message, a caller gets for each error code. Both transports that serve
``GetToken`` read it: the native gRPC server (:mod:`challenges.rpc.status`
turns :class:`Status` into ``grpc.StatusCode``) and the gRPC-Web endpoint
(:mod:`challenges.grpcweb_consumer`, which writes the number into the
``grpc-status`` trailer).

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

from enum import IntEnum

from .errors import ChallengeError, Code


class Status(IntEnum):
    """The gRPC status codes, by their numbers on the wire."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: Error code -> the Hub's status. ``None`` keeps the error's own message.
STATUS: dict[Code, tuple[Status, str | None]] = {
    # The Hub's own answers (go-threads' GetToken and the Hub's API-key check).
    Code.MISSING_PUB: (Status.INVALID_ARGUMENT, "Key is required"),
    Code.INVALID_PUB: (Status.UNKNOWN, None),
    Code.MISSING_SIG: (Status.INVALID_ARGUMENT, "Signature is required"),
    Code.CHALLENGE_TIMEOUT: (Status.DEADLINE_EXCEEDED, "Challenge deadline exceeded"),
    Code.BAD_SIGNATURE: (Status.UNKNOWN, "bad signature"),
    Code.INVALID_SIG_LENGTH: (Status.UNKNOWN, "bad signature"),
    Code.API_KEY_REQUIRED: (Status.UNAUTHENTICATED, None),
    Code.API_KEY_NOT_FOUND: (Status.NOT_FOUND, None),
    Code.API_SIG_REQUIRED: (Status.UNAUTHENTICATED, None),
    Code.API_SIG_BAD: (Status.UNAUTHENTICATED, None),
    # Ours: limits, policy and the transport, each with gRPC's own status for it.
    Code.TOO_MANY_PENDING: (Status.RESOURCE_EXHAUSTED, None),
    Code.TOO_MANY_CONNECTIONS: (Status.RESOURCE_EXHAUSTED, None),
    Code.RATE_LIMITED: (Status.RESOURCE_EXHAUSTED, None),
    Code.FRAME_TOO_LARGE: (Status.RESOURCE_EXHAUSTED, None),
    Code.LIMITS_UNAVAILABLE: (Status.UNAVAILABLE, None),
    Code.SERVER_SHUTDOWN: (Status.UNAVAILABLE, None),
    Code.INVALID_HOST: (Status.PERMISSION_DENIED, None),
    Code.ORIGIN_NOT_ALLOWED: (Status.PERMISSION_DENIED, None),
    Code.INSECURE_TRANSPORT: (Status.PERMISSION_DENIED, None),
    Code.KEY_BLOCKED: (Status.PERMISSION_DENIED, None),
    Code.INVALID_GRPC_WEB: (Status.INTERNAL, None),
    Code.NOT_CONFIGURED: (Status.UNIMPLEMENTED, None),
    Code.INTERNAL_ERROR: (Status.INTERNAL, None),
}


def status_of(error: ChallengeError) -> tuple[Status, str]:
    """The status and message a ``GetToken`` caller gets for ``error``."""
    status, message = STATUS.get(error.code, (Status.INTERNAL, None))
    return status, message or error.message
