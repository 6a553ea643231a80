from __future__ import annotations

import argparse
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from challenges.client import TokenClientError, get_token
from challenges.errors import IdentityError
from challenges.identity import PrivateKey, parse_private_key


class Command(BaseCommand):
    help = (
        "Get a token from a running provider over its WebSocket. The private key is read from "
        "$TOKEN_PRIVATE_KEY or --key-file (never from the command line, where ps shows it); "
        "without either, a throwaway identity is generated."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/token")
        parser.add_argument("--key-file", help="file holding a private key string")
        parser.add_argument("--audience", help="expected audience (default: the URL's origin)")
        parser.add_argument("--timeout", type=_seconds, default=30.0, help="seconds (default 30)")
        parser.add_argument(
            "--accept-raw",
            action="store_true",
            help="sign raw Hub challenges (32 random bytes; nothing else labelled raw)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["key_file"]:
                with open(options["key_file"], "rb") as fh:  # a BOM an editor wrote is not the key's
                    key = parse_private_key(fh.read().removeprefix(b"\xef\xbb\xbf").decode("ascii").strip())
            elif os.environ.get("TOKEN_PRIVATE_KEY"):
                key = parse_private_key(os.environ["TOKEN_PRIVATE_KEY"])
            else:
                key = PrivateKey.generate()
        except UnicodeDecodeError:
            raise CommandError(
                "cannot read the private key: the file holds a byte that is not ASCII, and a private"
                " key string is ASCII"
            ) from None
        except (OSError, IdentityError) as exc:
            raise CommandError(f"cannot read the private key: {exc}") from exc
        self.stderr.write(f"# identity: {key.public}")
        try:
            token = get_token(
                options["url"],
                key,
                audience=options["audience"],
                timeout=options["timeout"],
                accept_raw=options["accept_raw"],
            )
        except TokenClientError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        self.stdout.write(token)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text[:20]!r}")
    return value
