"""The Hub's status contract, both directions, in one place (``docs/PROTOCOL.md``, "GetToken").

* :func:`status_of`: what ``runauthority`` answers for an error code (the Hub's
  status and, where the Hub had a fixed one, its message);
* :func:`upstream_error`: what the relay makes of a Hub's status, by the
  phase of the stream it came in.
"""

from __future__ import annotations

import grpc

from ..errors import ChallengeError, Code, UpstreamError

#: Error code -> the Hub's status. ``None`` keeps the error's own message.
STATUS: dict[Code, tuple[grpc.StatusCode, str | None]] = {
    Code.MISSING_PUB: (grpc.StatusCode.INVALID_ARGUMENT, "Key is required"),
    Code.INVALID_PUB: (grpc.StatusCode.UNKNOWN, None),
    Code.MISSING_SIG: (grpc.StatusCode.INVALID_ARGUMENT, "Signature is required"),
    Code.CHALLENGE_TIMEOUT: (grpc.StatusCode.DEADLINE_EXCEEDED, "Challenge deadline exceeded"),
    Code.BAD_SIGNATURE: (grpc.StatusCode.UNKNOWN, "bad signature"),
    Code.INVALID_SIG_LENGTH: (grpc.StatusCode.UNKNOWN, "bad signature"),
    Code.API_KEY_REQUIRED: (grpc.StatusCode.UNAUTHENTICATED, None),
    Code.API_KEY_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, None),
    Code.API_SIG_REQUIRED: (grpc.StatusCode.UNAUTHENTICATED, None),
    Code.API_SIG_BAD: (grpc.StatusCode.UNAUTHENTICATED, None),
    Code.TOO_MANY_PENDING: (grpc.StatusCode.RESOURCE_EXHAUSTED, None),
    Code.SERVER_SHUTDOWN: (grpc.StatusCode.UNAVAILABLE, None),
    Code.INTERNAL_ERROR: (grpc.StatusCode.INTERNAL, None),
}


def status_of(error: ChallengeError) -> tuple[grpc.StatusCode, str]:
    code, message = STATUS.get(error.code, (grpc.StatusCode.INTERNAL, None))
    return code, message or error.message


def upstream_error(
    code: grpc.StatusCode | None, *, phase: str, details: str = "", status: str | None = None
) -> UpstreamError:
    """A Hub's status in the ``key`` or ``signature`` phase (or an invalid ``reply``) as a
    coded error; ``status`` overrides what the audit records as the upstream's status."""
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNKNOWN and "bad signature" in details.lower():
        phase = "signature"
    if code == grpc.StatusCode.UNAVAILABLE:
        kind = Code.UPSTREAM_UNAVAILABLE
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        kind = Code.UPSTREAM_DEADLINE
    elif code == grpc.StatusCode.UNKNOWN and phase == "signature":
        kind = Code.UPSTREAM_BAD_SIGNATURE
    elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN) and phase == "key":
        kind = Code.UPSTREAM_REJECTED_KEY
    elif code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
    ):
        kind = Code.UPSTREAM_API_KEY
    else:
        kind = Code.UPSTREAM_ERROR
    return UpstreamError(f"{kind.meaning} ({name})", code=kind, status=status or name)
