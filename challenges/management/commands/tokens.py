"""``manage.py tokens``: take tokens back from the command line.

    python manage.py tokens revoke JTI [--reason TEXT]
    python manage.py tokens block KEY [--reason TEXT]
    python manage.py tokens unblock KEY [--reason TEXT]

Each action is recorded with who did it (``cli:<user>``) and holds at once for
introspection on every worker; a blocked key's new flows are refused within
about a second.
"""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from challenges.errors import IdentityError
from challenges.revocation import block_key, revoke_token, unblock_key


class Command(BaseCommand):
    help = "Revoke a token by its jti, or block / unblock a public key (all its tokens, and new flows)."

    def add_arguments(self, parser: Any) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        for name, target, what in (
            ("revoke", "jti", "the token's jti (the audit's issued tokens list it)"),
            ("block", "key", "the public key string (bbaarei...)"),
            ("unblock", "key", "the public key string (bbaarei...)"),
        ):
            action = actions.add_parser(name, help=f"{name} {target}")
            action.add_argument(target, help=what)
            action.add_argument("--reason", default="", help="why (kept with the action)")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = f"cli:{_user()}"
        action, reason = options["action"], options["reason"]
        try:
            if action == "revoke":
                done = revoke_token(jti=options["jti"], actor=actor, reason=reason)
                self._say(done, f"revoked token {options['jti']}", "that token was already revoked")
            elif action == "block":
                done = block_key(public_key=options["key"], actor=actor, reason=reason)
                self._say(done, f"blocked key {options['key']}", "that key was already blocked")
            else:
                done = unblock_key(public_key=options["key"], actor=actor, reason=reason)
                self._say(done, f"unblocked key {options['key']}", "that key was not blocked")
        except IdentityError as exc:
            raise CommandError(f"not a public key string: {exc.message}") from exc

    def _say(self, done: bool, did: str, already: str) -> None:
        self.stdout.write(did if done else already)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
