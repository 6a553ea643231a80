from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from challenges.apikeys import new_api_key
from challenges.identity import PrivateKey


class Command(BaseCommand):
    help = (
        "Print a new Ed25519 identity: the private key string (for AUTHORITY_PRIVATE_KEY) and its public key."
        " With --api-key, print a new Hub API key and secret instead (USER_API_KEY / USER_API_SECRET)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--api-key",
            action="store_true",
            help="print a Hub-format API key and secret (USER_API_KEY, USER_API_SECRET)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["api_key"]:
            api = new_api_key()
            self.stdout.write(f"USER_API_KEY={api.key}")
            self.stdout.write(f"USER_API_SECRET={api.secret}")
            self.stderr.write(
                "# runauthority and the gRPC-Web endpoint accept it with AUTHORITY_API_KEYS=<key>:<secret>"
            )
            return
        key = PrivateKey.generate()
        self.stdout.write(f"AUTHORITY_PRIVATE_KEY={key}")
        self.stderr.write(f"# public key: {key.public}")
