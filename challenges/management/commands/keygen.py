from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from challenges.identity import PrivateKey


class Command(BaseCommand):
    help = (
        "Print a new Ed25519 identity: the private key string (for AUTHORITY_PRIVATE_KEY) and its public key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        key = PrivateKey.generate()
        self.stdout.write(f"AUTHORITY_PRIVATE_KEY={key}")
        self.stderr.write(f"# public key: {key.public}")
