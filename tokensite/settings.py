"""Settings, read once from the environment (and ``.env``) with django-environ
(:mod:`tokensite.environment`: an empty variable is its default).

Every variable is listed, with its default, in ``.env.example`` and the
README. With nothing set, the project runs for development: DEBUG on, SQLite,
the in-memory channel layer, the embedded authority with a development key
generated once into ``var/`` (ignored by git). With ``DEBUG=false``, missing
secrets are system check errors (``challenges.checks``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from challenges.redisconf import RedisTarget, parse_sentinels
from tokensite import environment

BASE_DIR = Path(__file__).resolve().parent.parent


env = environment.read(BASE_DIR / ".env")
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))

#: The one exception to "empty is the default": an empty DEBUG is false, so debug is only
#: ever on when asked for by name or when DEBUG is absent (development with nothing set).
DEBUG = env.bool("DEBUG", default=os.environ.get("DEBUG") != "")
#: Placeholder only when DEBUG; a missing SECRET_KEY in production is a check error.
SECRET_KEY = env.str("SECRET_KEY", default="") or "insecure-development-only-secret-key"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
if DEBUG and not ALLOWED_HOSTS:
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    # First: its runserver (daphne's, with the browser client's headers) replaces daphne's.
    "challenges",
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A load balancer's probe names the worker's address, not a public host.
    "challenges.middleware.HealthProbe",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tokensite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "tokensite.asgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent readers with one writer, and a writer that waits, not fails. A transaction
    # takes the write lock when it begins (IMMEDIATE): one that read first and wrote later
    # would fail at once, not wait, if another connection committed in between.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
if env.str("TEST_DATABASE_NAME", default=""):
    # Lets concurrent test runs on one PostgreSQL server each have their own test database.
    DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str("TEST_DATABASE_NAME")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
#: Redis Sentinel: host:port of each sentinel, and the name of the master they watch.
REDIS_SENTINELS = env.list("REDIS_SENTINELS", default=[])
REDIS_SENTINEL_MASTER = env.str("REDIS_SENTINEL_MASTER", default="")
try:
    REDIS = RedisTarget(
        url=REDIS_URL, sentinels=parse_sentinels(REDIS_SENTINELS), master=REDIS_SENTINEL_MASTER
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"REDIS_SENTINELS: {exc}") from None
if REDIS.sentinels and not REDIS.master:
    raise ImproperlyConfigured(
        "REDIS_SENTINELS needs REDIS_SENTINEL_MASTER, the name of the master they watch"
    )
if REDIS.configured:
    # channels-redis's pub/sub layer: a routed signature and its answer are a PUBLISH each
    # (challenges.redisconf says why); challenges.pubsub makes a failed SUBSCRIBE retryable.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "challenges.pubsub.PubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS.layer_host()]},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- HTTPS: with DEBUG off, the secure choice unless the environment says otherwise ----------
#: The header a TLS-terminating proxy sets to "https" (e.g. X-Forwarded-Proto; the proxy must
#: overwrite what the client sent). Makes Django's request.is_secure() and the WebSocket's own
#: origin (challenges.clients) https. Empty: the scheme of the connection itself.
_PROXY_SSL_HEADER = env.str("SECURE_PROXY_SSL_HEADER", default="").strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https") if _PROXY_SSL_HEADER else None
)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
#: A load balancer's health probe speaks plain http.
SECURE_REDIRECT_EXEMPT = [r"^api/health$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_REFERRER_POLICY = env.str("SECURE_REFERRER_POLICY", default="same-origin")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- the token provider -------------------------------------------------------

#: "local" (the embedded authority) or a Hub-compatible relay: grpc://host:port, grpcs://host:port.
TOKEN_UPSTREAM = env.str("TOKEN_UPSTREAM", default="local").strip()
#: The Hub API key (and secret, for keys that need signatures) the grpc relay sends.
USER_API_KEY = env.str("USER_API_KEY", default="")
USER_API_SECRET = env.str("USER_API_SECRET", default="")
#: For grpcs:// upstreams: a PEM bundle of the CAs to trust instead of the system's (a private CA).
TOKEN_UPSTREAM_CA = env.str("TOKEN_UPSTREAM_CA", default="")
#: manage.py runauthority: the address it serves GetToken on (the self-hosted hub's port).
AUTHORITY_ADDRESS = env.str("AUTHORITY_ADDRESS", default="127.0.0.1:3006")
#: The API keys runauthority accepts: "key:secret,key2:secret2" (a bare key needs no
#: signature). Empty: USER_API_KEY / USER_API_SECRET, if set.
AUTHORITY_API_KEYS = env.str("AUTHORITY_API_KEYS", default="")
#: Seconds runauthority waits for the signature (the Hub's one minute).
AUTHORITY_CHALLENGE_DEADLINE = env.float("AUTHORITY_CHALLENGE_DEADLINE", default=60.0)
#: runauthority's TLS: paths of a PEM certificate chain and its private key (both or neither;
#: neither: plaintext). Checked by challenges.checks, never printed.
AUTHORITY_TLS_CERT = env.str("AUTHORITY_TLS_CERT", default="")
AUTHORITY_TLS_KEY = env.str("AUTHORITY_TLS_KEY", default="")
#: GetToken calls runauthority serves at once; a call past it ends with RESOURCE_EXHAUSTED.
AUTHORITY_MAX_STREAMS = env.int("AUTHORITY_MAX_STREAMS", default=1000)
#: The authority's identity (a private key string); see challenges.checks.
AUTHORITY_PRIVATE_KEY = env.str("AUTHORITY_PRIVATE_KEY", default="")
AUTHORITY_KEY_FILE = VAR_DIR / "dev-authority.key"
#: Public key strings of rotated-out authority keys (comma-separated): their tokens stay
#: verifiable (key set, introspection) until they expire.
AUTHORITY_PREVIOUS_KEYS = env.list("AUTHORITY_PREVIOUS_KEYS", default=[])
#: With TOKEN_UPSTREAM=grpc://...: the public key string of the authority that signs the
#: relayed tokens, when it is not AUTHORITY_PRIVATE_KEY's.
UPSTREAM_PUBLIC_KEY = env.str("UPSTREAM_PUBLIC_KEY", default="")
#: The bearer token POST /api/token/introspect requires (a long random string).
INTROSPECTION_TOKEN = env.str("INTROSPECTION_TOKEN", default="")
#: Empty: the audience is the origin the client connected to (validated Host).
TOKEN_AUDIENCE = env.str("TOKEN_AUDIENCE", default="")
TOKEN_TTL = env.int("TOKEN_TTL", default=24 * 3600)
CHALLENGE_TIMEOUT = env.float("CHALLENGE_TIMEOUT", default=60.0)
#: Empty: a browser's Origin must be this service's own origin (scheme, host and port).
ALLOWED_ORIGINS = env.list("ALLOWED_ORIGINS", default=[])

#: While a worker waits for the owner of a challenge to answer a routed signature, it asks
#: every this many seconds whether the owner is still alive (its heartbeat, with Redis).
ROUTE_LIVENESS_CHECK = env.float("ROUTE_LIVENESS_CHECK", default=1.0)
#: Seconds a relayed (gRPC) challenge outlives its socket, for a reconnect to resume it,
#: before its upstream stream is cancelled. Local challenges wait for their expiry.
RELAY_RESUME_GRACE = env.float("RELAY_RESUME_GRACE", default=5.0)
#: Pending challenges for one key from one address (IPv4, or IPv6 /64): one address cannot
#: lock a key out at another.
MAX_PENDING_PER_KEY = env.int("MAX_PENDING_PER_KEY", default=5)
MAX_PENDING_PER_IP = env.int("MAX_PENDING_PER_IP", default=100)
MAX_PENDING_PER_PROCESS = env.int("MAX_PENDING_PER_PROCESS", default=10000)
MAX_CONNECTIONS_PER_IP = env.int("MAX_CONNECTIONS_PER_IP", default=256)
MAX_ERRORS_PER_CONNECTION = env.int("MAX_ERRORS_PER_CONNECTION", default=20)
#: Requests per address (IPv4, or IPv6 /64): a token bucket refilled at this many a minute,
#: holding at most RATE_LIMIT_BURST. Charged: a WebSocket opened, a 'token' frame, an HTTP
#: request. 0 turns it off. Shared through Redis when REDIS_URL is set.
RATE_LIMIT_PER_MINUTE = env.float("RATE_LIMIT_PER_MINUTE", default=300.0)
RATE_LIMIT_BURST = env.int("RATE_LIMIT_BURST", default=60)
#: Sign-in attempts on the admin (a POST to its login page) per address: a bucket of their own,
#: on top of the request rate, refilled at this many a minute and holding at most
#: ADMIN_LOGIN_BURST. 0 turns it off. Shared through Redis when REDIS_URL is set.
ADMIN_LOGIN_PER_MINUTE = env.float("ADMIN_LOGIN_PER_MINUTE", default=5.0)
ADMIN_LOGIN_BURST = env.int("ADMIN_LOGIN_BURST", default=10)
#: Seconds the shared rate limits count in-process while Redis is unreachable; then new
#: requests are refused (limits_unavailable).
RATE_LIMIT_REDIS_GRACE = env.float("RATE_LIMIT_REDIS_GRACE", default=30.0)
#: Proxy header carrying the client address (e.g. X-Forwarded-For); empty: peer address.
CLIENT_IP_HEADER = env.str("CLIENT_IP_HEADER", default="")
#: How many proxies of yours append to CLIENT_IP_HEADER; the entry they added is the client.
TRUSTED_PROXIES = env.int("TRUSTED_PROXIES", default=1)
#: Seconds a request (its body above all) has to arrive in full (challenges.httpguard). Bodies
#: are bounded by path: 64 KiB for the API, DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) elsewhere.
HTTP_BODY_TIMEOUT = env.float("HTTP_BODY_TIMEOUT", default=10.0)

WORKER_ID = env.str("WORKER_ID", default=f"{socket.gethostname()}:{os.getpid()}")

#: Who may read /metrics (challenges.access): these addresses or networks (the client address
#: as CLIENT_IP_HEADER says), or a request with "Authorization: Bearer <METRICS_TOKEN>". With
#: neither set: loopback with DEBUG, no one without it (a check warns).
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if DEBUG and not METRICS_ALLOWED_IPS and not METRICS_TOKEN:
    METRICS_ALLOWED_IPS = ["127.0.0.0/8", "::1"]
#: Where each uvicorn worker writes its metrics (prometheus-client's multiprocess mode):
#: manage.py serve sets it for its workers, to a fresh VAR_DIR/metrics/<port>; leave it unset.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")

#: "plain" (one text line per record) or "json" (one JSON object per line; challenges.logs).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT[:20]!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "challenges.logs.JsonFormatter"},
    },
    "filters": {
        "quiet_reconnects": {"()": "challenges.redisconf.QuietReconnects"},
        "client_frame_errors": {"()": "challenges.logs.ClientFrameErrors"},
        "websocket_access": {"()": "challenges.logs.WebSocketAccessLines"},
        # Never a handshake header (cookies) or a frame (tokens), at DEBUG either.
        "websocket_protocol": {"()": "challenges.logs.WebSocketProtocolLines"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["quiet_reconnects", "client_frame_errors", "websocket_protocol"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's records through our handler only (its default console handler, with DEBUG,
        # printed them a second time, unformatted).
        "django": {"handlers": [], "propagate": True},
        "django.channels.server": {"level": "WARNING"},
        # uvicorn's records through our handler, in LOG_FORMAT, not its command line's handler.
        # Not "uvicorn" itself (configuring it would reset uvicorn.access, which serve and
        # --no-access-log silence) and not uvicorn.access (an access log on keeps uvicorn's format).
        # Its per-WebSocket lines go with the access log (challenges.logs.WebSocketAccessLines).
        "uvicorn.error": {"handlers": ["console"], "propagate": False, "filters": ["websocket_access"]},
        "uvicorn.asgi": {"handlers": ["console"], "propagate": False},
    },
}
