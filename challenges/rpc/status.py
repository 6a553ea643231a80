"""The Hub's status contract for the native gRPC transport, both directions.

* :func:`status_of`: what ``runauthority`` answers for an error code: the
  table of :mod:`challenges.hubstatus` (shared with the gRPC-Web endpoint) as a
  ``grpc.StatusCode``;
* :func:`upstream_error`: what the relay makes of a Hub's status, by the
  phase of the stream it came in.
"""

from __future__ import annotations

import grpc

from ..errors import ChallengeError, Code, UpstreamError
from ..hubstatus import status_of as hub_status_of


def status_of(error: ChallengeError) -> tuple[grpc.StatusCode, str]:
    status, message = hub_status_of(error)
    return grpc.StatusCode[status.name], message


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
