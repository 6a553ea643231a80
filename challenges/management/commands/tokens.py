"""``manage.py tokens``: list and show issued tokens, and take them back, from the command line.

    python manage.py tokens list [--key KEY] [--since 7d] [--until ...] [--active | --revoked] [--json]
    python manage.py tokens show JTI [--json]
    python manage.py tokens revoke JTI [--reason TEXT] [--issued-elsewhere]
    python manage.py tokens block KEY [--reason TEXT]
    python manage.py tokens unblock KEY [--reason TEXT]

``list`` prints the newest tokens first (``--limit``, 50 by default; 0 for all), each with
its standing: active, expired, revoked or key blocked. ``show`` prints one token, its
standing and the timeline of the flow that released it. The database holds no token, only
its ``jti`` and SHA-256: nothing printed here can be used as one.

Each revocation is recorded with who did it (``cli:<user>``) and holds at once for
introspection on every worker; a blocked key's new flows are refused within about a second.
"""

from __future__ import annotations

import getpass
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone

from challenges import cli, reports
from challenges.errors import IdentityError
from challenges.models import BlockedKey, IssuedToken, RevokedToken
from challenges.revocation import UnknownToken, block_key, revoke_token, unblock_key


class Command(BaseCommand):
    help = "List and show issued tokens; revoke a token by its jti, or block / unblock a public key."

    def add_arguments(self, parser: Any) -> None:
        actions = parser.add_subparsers(dest="action", required=True, parser_class=cli.ValueParser)
        listing = actions.add_parser("list", help="issued tokens, newest first")
        cli.add_time_options(listing)
        listing.add_argument("--key", help="tokens of this public key string")
        standing = listing.add_mutually_exclusive_group()
        standing.add_argument("--active", action="store_true", help="only tokens still good")
        standing.add_argument(
            "--revoked", action="store_true", help="only tokens revoked or of a blocked key"
        )
        listing.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")
        listing.add_argument("--json", action="store_true", help="a JSON array, every field whole")
        show = actions.add_parser("show", help="one token: its standing and its flow's timeline")
        show.add_argument("jti")
        show.add_argument("--json", action="store_true")
        for name, target, what in (
            ("revoke", "jti", "the token's jti (the audit's issued tokens list it)"),
            ("block", "key", "the public key string (bbaarei...)"),
            ("unblock", "key", "the public key string (bbaarei...)"),
        ):
            action = actions.add_parser(name, help=f"{name} {target}")
            action.add_argument(target, help=what)
            action.add_argument("--reason", default="", help="why (kept with the action)")
            if name == "revoke":
                action.add_argument(
                    "--issued-elsewhere",
                    action="store_true",
                    help="revoke a jti no issued token here has (a runauthority with its own database)",
                )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            return self.list(options)
        if action == "show":
            return self.show(options["jti"], as_json=options["json"])
        actor, reason = f"cli:{_user()}", options["reason"]
        try:
            if action == "revoke":
                done = revoke_token(
                    jti=options["jti"],
                    actor=actor,
                    reason=reason,
                    issued_elsewhere=options["issued_elsewhere"],
                )
                self._say(done, f"revoked token {options['jti']}", "that token was already revoked")
            elif action == "block":
                done = block_key(public_key=options["key"], actor=actor, reason=reason)
                self._say(done, f"blocked key {options['key']}", "that key was already blocked")
            else:
                done = unblock_key(public_key=options["key"], actor=actor, reason=reason)
                self._say(done, f"unblocked key {options['key']}", "that key was not blocked")
        except IdentityError as exc:
            raise CommandError(f"not a public key string: {exc.message}") from exc
        except UnknownToken:
            raise CommandError(
                f"no issued token has the jti {options['jti'][:80]!r}: nothing was revoked ('tokens list'"
                " shows them; --issued-elsewhere revokes a jti of 1 to 64 characters all the same)"
            ) from None

    def list(self, options: dict[str, Any]) -> None:
        now = timezone.now()
        if options["limit"] < 0:
            raise CommandError("--limit must be >= 0")
        tokens = cli.tokens(options, now=now, rows=reports.with_standing(IssuedToken.objects.all()))
        if options["active"]:
            live = Q(expires_at__isnull=True) | Q(expires_at__gt=now)
            tokens = tokens.filter(live, Q(revoked=False), Q(key_blocked=False))
        elif options["revoked"]:
            tokens = tokens.filter(Q(revoked=True) | Q(key_blocked=True))
        tokens = tokens.order_by("-issued_at", "-id")
        limit = options["limit"]
        if options["json"]:
            rows = tokens[:limit] if limit else tokens.iterator(chunk_size=2000)
            cli.write_json_array(self._raw_stdout, (cli.token_dict(t, now=now) for t in rows))
            return
        page = list(tokens[: limit + 1]) if limit else list(tokens)
        more = bool(limit) and len(page) > limit
        page = page[:limit] if limit else page
        lines = cli.table(
            ("issued (UTC)", "jti", "key", "expires (UTC)", "standing"),
            (
                (cli.when(t.issued_at), t.jti, cli.fingerprint(t.public_key), cli.when(t.expires_at),
                 reports.standing(t, now=now))
                for t in page
            ),
        )  # fmt: skip
        for line in lines:
            self.stdout.write(line)
        note = f" (the newest {limit}; --limit 0 for all)" if more else ""
        self.stdout.write(f"{len(page)} token{'s' if len(page) != 1 else ''}{note}")

    def show(self, jti: str, *, as_json: bool) -> None:
        now = timezone.now()
        token = reports.with_standing(IssuedToken.objects.select_related("attempt").filter(jti=jti)).first()
        if token is None:
            raise CommandError(f"no issued token has the jti {jti!r}")
        attempt = token.attempt
        revoked = RevokedToken.objects.filter(jti=token.jti).first()
        blocked = BlockedKey.objects.filter(public_key=token.public_key).first()
        if as_json:
            item = cli.token_dict(token, now=now)
            item["revoked"] = _action(revoked.revoked_at, revoked.actor, revoked.reason) if revoked else None
            item["key_blocked"] = (
                _action(blocked.blocked_at, blocked.actor, blocked.reason) if blocked else None
            )
            item["attempt"] = cli.attempt_dict(attempt)
            item["timeline"] = cli.timeline_dicts(attempt)
            cli.write_json_array(self._raw_stdout, [item])
            return
        expires = cli.when(token.expires_at) if token.expires_at else "never (no expiry)"
        facts = [
            ("jti", token.jti),
            ("standing", reports.standing(token, now=now)),
            ("key", token.public_key),
            ("issued", f"{cli.when(token.issued_at)} UTC"),
            ("expires", f"{expires} UTC" if token.expires_at else expires),
            ("issuer", token.issuer or "-"),
            ("audience", token.audience or "-"),
            ("sha256", token.token_sha256),
            ("revoked", _said(revoked.revoked_at, revoked.actor, revoked.reason) if revoked else "no"),
            ("key blocked", _said(blocked.blocked_at, blocked.actor, blocked.reason) if blocked else "no"),
            ("attempt", f"#{attempt.pk}: {attempt.transport} from {cli.addresses(attempt)}"
                        f" (Origin {attempt.origin or '-'}) on worker {attempt.worker or '-'}"),
            ("upstream", cli.upstream(attempt)),
            ("latency", cli.latency(attempt.latency_ms)),
        ]  # fmt: skip
        width = max(len(name) for name, _ in facts)
        for name, value in facts:
            self.stdout.write(f"{name.ljust(width)}  {value}")
        self.stdout.write("timeline")
        for line in cli.timeline_lines(attempt):
            self.stdout.write(line)

    @property
    def _raw_stdout(self) -> TextIO:
        return cast(TextIO, self.stdout._out)  # Django's wrapper would end every write with a newline

    def _say(self, done: bool, did: str, already: str) -> None:
        self.stdout.write(did if done else already)


def _said(at: Any, actor: str, reason: str) -> str:
    return f"yes, {cli.when(at)} UTC by {actor}" + (f" ({reason})" if reason else "")


def _action(at: Any, actor: str, reason: str) -> dict[str, Any]:
    return {"at": at, "actor": actor, "reason": reason}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
