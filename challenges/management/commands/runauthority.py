from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import uvloop
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from challenges.audit import AuditWriter
from challenges.config import RuntimeConfig
from challenges.gettoken import AuthorityConfig, StreamCap
from challenges.lifecycle import freeze_startup_heap
from challenges.rpc.tls import ServerTls, load_server_tls

log = logging.getLogger("challenges.rpc.server")


@dataclass(frozen=True)
class Serving:
    """How the server runs: accepted API keys, TLS (None: plaintext), the stream cap."""

    keys: dict[str, str] = field(repr=False)
    tls: ServerTls | None
    cap: StreamCap
    grace: float


class Command(BaseCommand):
    help = (
        "Serve the embedded authority as a Hub-compatible gRPC API: /threads.pb.API/GetToken and "
        "/threads.net.pb.API/GetToken, minting the tokens of the 'local' upstream. Prints "
        "'listening on HOST:PORT' once bound. SIGTERM or SIGINT stops it gracefully."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--address",
            default=None,
            help="host:port to listen on (default: $AUTHORITY_ADDRESS, 127.0.0.1:3006; port 0 picks one)",
        )
        parser.add_argument(
            "--challenge-deadline",
            type=float,
            default=None,
            help="seconds to wait for the signature (default: $AUTHORITY_CHALLENGE_DEADLINE, 60)",
        )
        parser.add_argument(
            "--tls-cert",
            default=None,
            help="PEM certificate chain to serve TLS with (default: $AUTHORITY_TLS_CERT; with --tls-key)",
        )
        parser.add_argument(
            "--tls-key",
            default=None,
            help="its PEM private key (default: $AUTHORITY_TLS_KEY); neither: plaintext",
        )
        parser.add_argument(
            "--max-streams",
            type=int,
            default=None,
            help="GetToken calls served at once; past it, RESOURCE_EXHAUSTED (default:"
            " $AUTHORITY_MAX_STREAMS, 1000)",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=10.0,
            help="on SIGTERM, seconds in-flight streams get to finish before they are cancelled",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        keys = self._api_keys()
        cert = settings.AUTHORITY_TLS_CERT if options["tls_cert"] is None else options["tls_cert"]
        key = settings.AUTHORITY_TLS_KEY if options["tls_key"] is None else options["tls_key"]
        try:
            tls = load_server_tls(cert, key)  # the problem names paths, never contents
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        max_streams = (
            settings.AUTHORITY_MAX_STREAMS if options["max_streams"] is None else options["max_streams"]
        )
        if max_streams < 1:
            raise CommandError("--max-streams (AUTHORITY_MAX_STREAMS) must be at least 1")
        if not keys:
            if not settings.DEBUG:
                raise CommandError("no API keys: set AUTHORITY_API_KEYS (or USER_API_KEY/USER_API_SECRET)")
            log.warning("no API keys are configured: every caller is accepted (DEBUG only)")
        deadline = options["challenge_deadline"] or settings.AUTHORITY_CHALLENGE_DEADLINE
        config = AuthorityConfig(
            signer=RuntimeConfig.from_settings().load_authority_key(),
            ttl=settings.TOKEN_TTL,
            audience=settings.TOKEN_AUDIENCE,
            challenge_deadline=deadline,
            worker=settings.WORKER_ID,
        )
        address = options["address"] or settings.AUTHORITY_ADDRESS
        serving = Serving(keys=keys, tls=tls, cap=StreamCap(max_streams), grace=options["grace"])
        try:
            # uvloop, as under make serve: in four alternating relay runs, runauthority spent
            # 0.64 of the provider's CPU per flow on it, 0.70 on asyncio's own loop.
            uvloop.run(self._serve(address, config, serving))
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc

    def _api_keys(self) -> dict[str, str]:
        try:
            return RuntimeConfig.from_settings().api_keys()
        except ValueError as exc:
            raise CommandError(f"bad API key configuration: {exc}") from exc

    async def _serve(self, address: str, config: AuthorityConfig, serving: Serving) -> None:
        from challenges import selectors
        from challenges.revocation import Blocklist
        from challenges.rpc import sched
        from challenges.rpc.server import AuthorityServicer, create_server

        audit = AuditWriter()
        # Keys blocked with `manage.py tokens block` (or the admin) on the same database get no
        # challenge here either, within a second.
        blocklist = Blocklist(version=selectors.revocation_version, load=selectors.blocked_keys)
        await blocklist.start()
        servicer = AuthorityServicer(config=config, audit=audit, cap=serving.cap, blocked=blocklist)
        before = sched.thread_ids()
        server, port = create_server(address, servicer=servicer, api_keys=serving.keys, tls=serving.tls)
        await server.start()
        # gRPC's threads hand each call's steps to this event loop: never ahead of it.
        sched.not_preempting(sched.thread_ids() - before)
        freeze_startup_heap()
        host = address.rpartition(":")[0] or "0.0.0.0"  # noqa: S104 (only echoes the address given)
        self.stdout.write(f"listening on {host}:{port}")
        sys.stdout.flush()
        log.info(
            "authority %s serving GetToken on %s:%d (%s, %d API keys, deadline %g s, at most %d streams)",
            config.signer.public,
            host,
            port,
            "TLS" if serving.tls else "plaintext",
            len(serving.keys),
            config.challenge_deadline,
            serving.cap.limit,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: %d streams in flight get %g s to finish", servicer.active, serving.grace)
        await server.stop(serving.grace)
        await blocklist.stop()
        log.info("stopped")
