"""The project's one exception root, every exception class, and every error code.

Every failure a client can see is a :class:`ChallengeError` subclass whose
``code`` is a member of :class:`Code`. The class decides its code (a default
per class, or one of its family passed at the raise site); the transports
map codes in one place each: an error frame for WebSocket
(``protocol.error_frame``), an HTTP status in the HTTP edge (``http``), the
Hub's status for ``GetToken`` over gRPC and gRPC-Web (``hubstatus``).

::

    ChallengeError
    ├── FrameError            the frame itself is unusable (json, type, size)
    ├── PubKeyError           the public key is missing or malformed
    │   └── IdentityError     a key string is not a canonical Ed25519 identity
    ├── SignatureError        the signature is missing, malformed or wrong
    ├── StateError            the frame does not fit the flow's state
    ├── LimitError            a cap was hit (pending, connections, errors)
    │   └── RateLimited       too many requests from one address (``retry_after``)
    ├── RefusedError          refused by policy: Host, Origin, a blocked key, shutdown
    ├── UpstreamError         the upstream authority failed or refused
    │   └── RoutingUnavailable  the worker owning a challenge cannot be reached
    ├── TokenError            a token failed verification
    ├── ChallengeTextError    a client refuses to sign a challenge text
    ├── ApiKeyError           a Hub API key or its signature is refused
    └── InternalError         our fault; details stay in the server log

    TokenClientError          the Python client's failure (server or client code)

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Every stable code, with its one-line meaning (``Code.X.meaning``).

    The audit's ``outcome`` is one of these or ``success``; the README's
    table of codes is checked against this enumeration by the tests.
    """

    meaning: str

    def __new__(cls, value: str, meaning: str) -> Code:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    @classmethod
    def lookup(cls, value: object) -> Code | None:
        """The member whose value is ``value``, if any (a code read off the wire)."""
        member = cls._value2member_map_.get(value) if isinstance(value, str) else None
        return member if isinstance(member, Code) else None

    # -- frames ------------------------------------------------------------
    INVALID_JSON = "invalid_json", "the text frame is not JSON"
    INVALID_FRAME = (
        "invalid_frame",
        "the JSON is not an object (a field of the wrong type gets that field's own code)",
    )
    MISSING_TYPE = "missing_type", "the frame has no 'type'"
    UNKNOWN_TYPE = "unknown_type", "the frame's 'type' is not 'token' or 'challenge'"
    BINARY_FRAME = "binary_frame", "binary frames are not accepted; send JSON text"
    FRAME_TOO_LARGE = "frame_too_large", "the frame is larger than the limit (64 KiB)"
    INVALID_UTF8 = (
        "invalid_utf8",
        "a text frame is not UTF-8: the server's WebSocket layer closes the connection with 1007",
    )
    INVALID_GRPC_WEB = (
        "invalid_grpc_web",
        "gRPC-Web: a message is not the metadata block, a whole gRPC frame of a GetTokenRequest"
        " or the half-close",
    )
    # -- keys and signatures ------------------------------------------------
    MISSING_PUB = "missing_pub", "a 'token' frame needs 'pub', the public key string"
    INVALID_PUB = "invalid_pub", "'pub' is not an Ed25519 public key string"
    MISSING_SIG = "missing_sig", "a 'challenge' frame needs 'sig', the signature"
    INVALID_SIG_ENCODING = "invalid_sig_encoding", "'sig' is not Buffer JSON, an int array or base64"
    INVALID_SIG_LENGTH = "invalid_sig_length", "'sig' is not 64 bytes"
    BAD_SIGNATURE = "bad_signature", "the signature does not verify for this key and challenge"
    # -- the flow's state -----------------------------------------------------
    ALREADY_PENDING = "already_pending", "a challenge is already pending on this connection"
    NO_CHALLENGE = "no_challenge", "no challenge is pending for this signature"
    UNKNOWN_CHALLENGE = "unknown_challenge", "the challenge id is unknown, expired or already used"
    CHALLENGE_TIMEOUT = "challenge_timeout", "the challenge was not answered in time"
    # -- limits and policy ------------------------------------------------------
    TOO_MANY_PENDING = "too_many_pending", "too many challenges are pending; answer or wait"
    TOO_MANY_CONNECTIONS = "too_many_connections", "too many connections from this address"
    TOO_MANY_ERRORS = "too_many_errors", "too many bad frames on this connection"
    RATE_LIMITED = "rate_limited", "too many requests from this address; retry after 'retry_after' seconds"
    TOO_MANY_SIGN_INS = (
        "too_many_sign_ins",
        "too many sign-in attempts on the admin from this address; retry after 'retry_after' seconds",
    )
    LIMITS_UNAVAILABLE = "limits_unavailable", "the shared rate limits cannot be reached; retry shortly"
    KEY_BLOCKED = "key_blocked", "an operator blocked this public key"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed", "the page's Origin is not allowed to get tokens here"
    INVALID_HOST = "invalid_host", "the Host header is not one of ALLOWED_HOSTS"
    INSECURE_TRANSPORT = (
        "insecure_transport",
        "this service gives tokens over encrypted connections only: connect with wss://",
    )
    SERVER_SHUTDOWN = "server_shutdown", "the server is shutting down; retry (another worker will answer)"
    # -- the upstream authority and the routing between workers -------------------
    UPSTREAM_UNAVAILABLE = "upstream_unavailable", "the token authority cannot be reached"
    UPSTREAM_DEADLINE = "upstream_deadline", "the token authority did not answer in time"
    UPSTREAM_REJECTED_KEY = "upstream_rejected_key", "the token authority rejected the public key"
    UPSTREAM_API_KEY = "upstream_api_key", "the token authority rejected the API key"
    UPSTREAM_BAD_SIGNATURE = "upstream_bad_signature", "the token authority rejected the signature"
    UPSTREAM_ERROR = "upstream_error", "the token authority failed"
    ROUTING_UNAVAILABLE = (
        "routing_unavailable",
        "the challenge lives on another worker that cannot be reached now",
    )
    # -- tokens (POST /api/token/verify) -------------------------------------------
    INVALID_REQUEST = "invalid_request", "the request body is not what the endpoint takes"
    INVALID_TOKEN = "invalid_token", "the token is malformed, not signed by this authority, or not ours"
    TOKEN_EXPIRED = "token_expired", "the token has expired"
    WRONG_AUDIENCE = "wrong_audience", "the token was issued for another audience"
    TOKEN_REVOKED = "token_revoked", "an operator revoked the token"
    VERIFICATION_UNAVAILABLE = (
        "verification_unavailable",
        "this server has no key to check tokens against (AUTHORITY_PRIVATE_KEY / UPSTREAM_PUBLIC_KEY)",
    )
    # -- runauthority refusing a gRPC caller's API key (the caller sees the Hub's status) --
    API_KEY_REQUIRED = "api_key_required", "runauthority: the call carries no API key"
    API_KEY_NOT_FOUND = "api_key_not_found", "runauthority: the API key is unknown"
    API_SIG_REQUIRED = "api_sig_required", "runauthority: the API key needs a signature"
    API_SIG_BAD = "api_sig_bad", "runauthority: the API key signature is wrong or expired"
    # -- our fault --------------------------------------------------------------------
    INTERNAL_ERROR = "internal_error", "the server failed; the request can be retried"
    NOT_CONFIGURED = "not_configured", "the server lacks a setting this needs (its system checks say which)"
    # -- the clients' own codes (never sent by the server) ----------------------------
    CHALLENGE_REFUSED = "challenge_refused", "client: the challenge does not name this service or key"
    TIMEOUT = "timeout", "client: no token within the client's timeout"
    CONNECTION_CLOSED = "connection_closed", "client: the connection failed or closed early"
    PROTOCOL_ERROR = "protocol_error", "client: the server sent a frame the client cannot use"


#: Codes only the clients produce: not audit outcomes, never on the wire from the server.
CLIENT_CODES = frozenset({Code.CHALLENGE_REFUSED, Code.TIMEOUT, Code.CONNECTION_CLOSED, Code.PROTOCOL_ERROR})


class ChallengeError(Exception):
    """Root of every error the token flow reports to a client."""

    code: Code = Code.INTERNAL_ERROR

    def __init__(self, message: str, *, code: Code | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class FrameError(ChallengeError):
    code = Code.INVALID_FRAME


#: RFC 6455's "invalid frame payload data": uvicorn and daphne (see challenges.daphneguard)
#: close with it on a text frame that is not UTF-8, before the application sees the frame,
#: which hears of it only in the disconnect.
CLOSE_INVALID_PAYLOAD = 1007


def not_utf8() -> FrameError:
    """What a connection closed with :data:`CLOSE_INVALID_PAYLOAD` is audited as."""
    return FrameError("a text frame is not UTF-8", code=Code.INVALID_UTF8)


class PubKeyError(ChallengeError):
    code = Code.INVALID_PUB


class IdentityError(PubKeyError):
    """A key string is not a canonical Ed25519 Textile identity."""


class SignatureError(ChallengeError):
    code = Code.INVALID_SIG_ENCODING


class StateError(ChallengeError):
    code = Code.NO_CHALLENGE


class LimitError(ChallengeError):
    code = Code.TOO_MANY_PENDING


class RateLimited(LimitError):
    """Too many requests from one address; ``retry_after`` is the whole seconds to wait."""

    code = Code.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SignInLimited(RateLimited):
    """Too many sign-in attempts on the admin from one address (the request rate's sibling)."""

    code = Code.TOO_MANY_SIGN_INS


class RefusedError(ChallengeError):
    """Refused by policy: a Host or Origin, a blocked key (at the start of its flow or at its
    answer), or a server that is shutting down."""

    code = Code.ORIGIN_NOT_ALLOWED


def key_blocked() -> RefusedError:
    """A flow for a public key an operator blocked (refused when it starts, and when it is
    answered if the block came meanwhile)."""
    return RefusedError("this public key is blocked", code=Code.KEY_BLOCKED)


class UpstreamError(ChallengeError):
    code = Code.UPSTREAM_UNAVAILABLE

    def __init__(self, message: str, *, code: Code | None = None, status: str = "") -> None:
        super().__init__(message, code=code)
        #: The upstream's last status (a gRPC status name), for the audit.
        self.upstream_status = status


class RoutingUnavailable(UpstreamError):
    code = Code.ROUTING_UNAVAILABLE


class TokenError(ChallengeError):
    """A token failed verification."""

    code = Code.INVALID_TOKEN


class ChallengeTextError(ChallengeError):
    """A challenge text is malformed or does not name what the client expects."""

    code = Code.CHALLENGE_REFUSED


#: The Hub's own message for each API-key refusal (the caller sees only these).
API_KEY_MESSAGES: dict[Code, str] = {
    Code.API_KEY_REQUIRED: "Session or API key required",
    Code.API_KEY_NOT_FOUND: "API key not found or is invalid",
    Code.API_SIG_REQUIRED: "API key signature required",
    Code.API_SIG_BAD: "Bad API key signature",
}


class ApiKeyError(ChallengeError):
    """An API key or its signature is missing or refused."""

    code = Code.API_KEY_NOT_FOUND

    def __init__(self, code: Code, reason: str = "") -> None:
        # The client sees only the Hub's fixed message; ``reason`` is for our log.
        super().__init__(API_KEY_MESSAGES[code], code=code)
        self.reason = reason or API_KEY_MESSAGES[code]


class InternalError(ChallengeError):
    code = Code.INTERNAL_ERROR


class TokenClientError(Exception):
    """The Python client's failure: ``code`` is the server's error code or one of
    the client's own (:data:`CLIENT_CODES`); a code the server invents later is
    kept as its string."""

    def __init__(self, code: Code | str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
