"""``manage.py serve``: the production server (``make serve``).

uvicorn with its sans-I/O WebSocket protocol, ``WORKERS`` processes on one
port, the ASGI lifespan on (the runtime starts and drains with each worker),
migrations applied first. It refuses to start, with one line per missing
setting, without ``SECRET_KEY``, ``AUTHORITY_PRIVATE_KEY`` (a ``grpc`` relay
may set ``UPSTREAM_PUBLIC_KEY`` instead) or ``ALLOWED_HOSTS``, with ``DEBUG``
on, or with several workers and no ``REDIS_URL`` or ``REDIS_SENTINELS`` (their
challenges could not reach each other).

With several workers, the metrics run in prometheus-client's multiprocess
mode: a fresh, empty ``VAR_DIR/metrics/<port>`` is made before the workers
start, and ``PROMETHEUS_MULTIPROC_DIR`` names it in their environment (they
inherit it), so ``/metrics`` adds up every worker's values. With one worker
the process's own registry is read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from challenges.protocol import MAX_FRAME_BYTES
from challenges.upstream import relays

#: uvicorn refuses WebSocket messages past this (the app refuses frames past 64 KiB
#: with an error frame; larger ones are dropped by the server itself).
WS_MAX_SIZE = 2 * MAX_FRAME_BYTES


class Command(BaseCommand):
    help = "Serve the token provider for production: uvicorn, WORKERS processes, DEBUG off."
    requires_system_checks: list[str] = []  # our refusals first, one line each; then the checks

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
        parser.add_argument("--port", type=_port, default=os.environ.get("PORT") or "8000")
        parser.add_argument("--workers", type=int, default=os.environ.get("WORKERS") or "1")
        parser.add_argument(
            "--loop",
            choices=("uvloop", "asyncio"),
            default=os.environ.get("SERVE_LOOP") or "uvloop",
            help="the event loop (default uvloop, the faster in bench/REPORT.md)",
        )
        parser.add_argument(
            "--http",
            choices=("httptools", "h11"),
            default=os.environ.get("SERVE_HTTP") or "httptools",
            help="the HTTP/1.1 parser (default httptools)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workers = options["workers"]
        refusals = _refusals(workers)
        if refusals:
            for line in refusals:
                self.stderr.write(f"serve: {line}")
            sys.exit(2)
        self.check(display_num_errors=False)
        call_command("migrate", interactive=False, verbosity=0)
        metrics_dir = _metrics_dir(Path(settings.VAR_DIR), options["port"]) if workers > 1 else None
        if metrics_dir is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        else:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.stdout.write(f"serving on http://{options['host']}:{options['port']} with {workers} worker(s)")
        self.stdout.flush()

        import uvicorn

        uvicorn.run(
            "tokensite.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=workers,
            loop=options["loop"],
            http=options["http"],
            ws="websockets-sansio",
            ws_max_size=WS_MAX_SIZE,
            ws_per_message_deflate=False,
            lifespan="on",
            # The client address comes from CLIENT_IP_HEADER / TRUSTED_PROXIES (challenges.clients):
            # uvicorn's own rewrite takes X-Forwarded-For's leftmost entry, which a client writes.
            proxy_headers=False,
            access_log=False,
            timeout_graceful_shutdown=8,
            log_config=None,  # every record through LOGGING's handler (LOG_FORMAT)
            log_level=str(settings.LOGGING["root"]["level"]).lower(),  # type: ignore[index]
        )


def _port(text: str) -> int:
    """A TCP port, 1 to 65535 (the kernel took 99999 as 99999 - 65536, and served there)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text[:20]!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {port}")
    return port


def _metrics_dir(var_dir: Path, port: int) -> Path:
    """A directory for this server's workers' metrics, emptied of a previous run's files
    (their counters would add up with the new ones)."""
    path = var_dir / "metrics" / str(port)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    return path


def _refusals(workers: int) -> list[str]:
    lines = []
    if settings.DEBUG:
        lines.append(
            "DEBUG is on: serve is for production (make serve sets DEBUG=false; make run is for a laptop)"
        )
    if settings.SECRET_KEY.startswith("insecure-"):  # the development placeholder
        lines.append("SECRET_KEY is not set: set a long random string in the environment or .env")
    relay = relays(settings.TOKEN_UPSTREAM)
    if not settings.AUTHORITY_PRIVATE_KEY and not (relay and settings.UPSTREAM_PUBLIC_KEY.strip()):
        # A relay mints nothing: the public key of the authority it relays to is enough.
        lines.append(
            "AUTHORITY_PRIVATE_KEY is not set: 'python manage.py keygen' prints one"
            + (" (or set UPSTREAM_PUBLIC_KEY, the public key of the authority relayed to)" if relay else "")
        )
    if not settings.ALLOWED_HOSTS:
        lines.append("ALLOWED_HOSTS is not set: the host names clients use, comma-separated")
    if workers < 1:
        lines.append("WORKERS must be at least 1")
    elif workers > 1 and not settings.REDIS.configured:
        lines.append(
            f"WORKERS={workers} needs REDIS_URL: workers reach each other's challenges through Redis"
        )
    return lines
