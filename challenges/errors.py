"""The project's one exception root and its stable error codes.

Every failure a client can see is a :class:`ChallengeError` subclass with a
stable ``code``. Each transport maps it in exactly one place: an error frame
for WebSocket (``consumers``), a status and JSON body for HTTP (``views``), a
status code for gRPC (``rpc``).

::

    ChallengeError
    ├── FrameError            the frame itself is unusable (json, type, size)
    ├── PubKeyError             the public key is missing or malformed
    ├── SignatureError        the signature is missing, malformed or wrong
    ├── StateError            the frame does not fit the flow's state
    ├── LimitError            a cap was hit (pending, connections, rate)
    ├── UpstreamError         the upstream authority failed or refused
    └── InternalError         our fault; details stay in the server log

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations


class ChallengeError(Exception):
    """Root of every error the token flow reports to a client."""

    code = "error"
    #: HTTP status used by the HTTP transport.
    http_status = 400
    #: Set once the flow service has written the audit row for this error.
    audited = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.http_status = _HTTP_STATUS.get(self.code, 400)


class FrameError(ChallengeError):
    code = "invalid_frame"


class PubKeyError(ChallengeError):
    code = "invalid_pub"


class SignatureError(ChallengeError):
    code = "invalid_sig_encoding"


class StateError(ChallengeError):
    code = "no_challenge"


class LimitError(ChallengeError):
    code = "too_many_pending"


class UpstreamError(ChallengeError):
    code = "upstream_unavailable"
    #: The upstream's last status (a gRPC status name), for the audit.
    upstream_status = ""


class InternalError(ChallengeError):
    code = "internal_error"


#: Every code a client can receive, with a one-line meaning. The audit's
#: outcome choices and the README's table are built from this mapping.
ERROR_CODES: dict[str, str] = {
    "invalid_json": "the text frame is not JSON",
    "invalid_frame": "the JSON is not an object, or a field has the wrong type",
    "missing_type": "the frame has no 'type'",
    "unknown_type": "the frame's 'type' is not 'token' or 'challenge'",
    "binary_frame": "binary frames are not accepted; send JSON text",
    "frame_too_large": "the frame is larger than the limit (64 KiB)",
    "missing_pub": "a 'token' frame needs 'pub', the public key string",
    "invalid_pub": "'pub' is not an Ed25519 public key string",
    "already_pending": "a challenge is already pending on this connection",
    "no_challenge": "no challenge is pending for this signature",
    "unknown_challenge": "the challenge id is unknown, expired or already used",
    "missing_sig": "a 'challenge' frame needs 'sig', the signature",
    "invalid_sig_encoding": "'sig' is not Buffer JSON, an int array or base64",
    "invalid_sig_length": "'sig' is not 64 bytes",
    "bad_signature": "the signature does not verify for this key and challenge",
    "challenge_timeout": "the challenge was not answered in time",
    "too_many_pending": "too many challenges are pending; answer or wait",
    "too_many_connections": "too many connections from this address",
    "too_many_errors": "too many bad frames on this connection",
    "origin_not_allowed": "the page's Origin is not allowed to get tokens here",
    "invalid_host": "the Host header is not one of ALLOWED_HOSTS",
    "upstream_unavailable": "the token authority cannot be reached",
    "upstream_deadline": "the token authority did not answer in time",
    "upstream_rejected_key": "the token authority rejected the public key",
    "upstream_api_key": "the token authority rejected the API key",
    "upstream_bad_signature": "the token authority rejected the signature",
    "upstream_error": "the token authority failed",
    "routing_unavailable": "the challenge lives on another worker that cannot be reached now",
    # Refusals of runauthority's API-key check (gRPC callers only).
    "api_key_required": "runauthority: the call carries no API key",
    "api_key_not_found": "runauthority: the API key is unknown",
    "api_sig_required": "runauthority: the API key needs a signature",
    "api_sig_bad": "runauthority: the API key signature is wrong or expired",
    "internal_error": "the server failed; the request can be retried",
}


#: HTTP status per code (the HTTP transport); codes not listed are 400.
_HTTP_STATUS: dict[str, int] = {
    "bad_signature": 401,
    "upstream_bad_signature": 401,
    "invalid_token": 401,
    "token_expired": 401,
    "wrong_audience": 401,
    "origin_not_allowed": 403,
    "invalid_host": 403,
    "unknown_challenge": 404,
    "no_challenge": 409,
    "already_pending": 409,
    "challenge_timeout": 410,
    "frame_too_large": 413,
    "too_many_pending": 429,
    "too_many_connections": 429,
    "too_many_errors": 429,
    "internal_error": 500,
    "upstream_api_key": 502,
    "upstream_error": 502,
    "upstream_unavailable": 503,
    "routing_unavailable": 503,
    "upstream_deadline": 504,
}
