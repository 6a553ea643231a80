"""The authority's keys: the one place the signing key is loaded, and the set tokens
are verified against (current, rotated-out, a relayed authority's).

``AUTHORITY_PRIVATE_KEY`` (an identity string, ``manage.py keygen``) or, for
development only, a key generated once into ``VAR_DIR/dev-authority.key``
(mode 0600) so ``make run`` needs no configuration. The composition root
(:mod:`challenges.runtime`) calls :func:`load_authority_key` once per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .identity import PrivateKey, PublicKey, parse_private_key, parse_public_key
from .tokens import jwk


class AuthorityKeyMissing(Exception):
    """Production without ``AUTHORITY_PRIVATE_KEY``."""


def load_authority_key(*, configured: str, debug: bool, dev_key_file: Path) -> PrivateKey:
    """The configured key; in ``debug`` without one, the development key (created
    on first use). Raises :class:`AuthorityKeyMissing` or
    :class:`~challenges.errors.IdentityError` (never quoting the key)."""
    if configured:
        return parse_private_key(configured)
    if not debug:
        raise AuthorityKeyMissing("AUTHORITY_PRIVATE_KEY is not set")
    if not dev_key_file.exists():
        dev_key_file.parent.mkdir(parents=True, exist_ok=True)
        key = PrivateKey.generate()
        try:
            with open(dev_key_file, "x", encoding="ascii", opener=_private) as fh:
                fh.write(str(key) + "\n")
        except FileExistsError:
            pass  # another process won the race; read theirs
    return parse_private_key(dev_key_file.read_text(encoding="ascii").strip())


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def verification_key(text: str) -> PublicKey | None:
    """An entry of ``AUTHORITY_PREVIOUS_KEYS`` or ``UPSTREAM_PUBLIC_KEY``: None when blank;
    raises :class:`~challenges.errors.IdentityError` when it is not a public key string."""
    return parse_public_key(text.strip()) if text.strip() else None


@dataclass(frozen=True)
class AuthorityKeys:
    """The keys tokens of ours are verified against, and published as a JWK set.

    ``signer`` is the current key (absent on a relay that does not mint);
    ``previous`` are rotated-out public keys, kept until their tokens expire;
    ``upstream`` is the public key of the authority a ``grpc`` relay gets its
    tokens from, when that authority is not this service's own key.
    """

    signer: PrivateKey | None
    verifiers: tuple[PublicKey, ...]

    @classmethod
    def build(
        cls, *, signer: PrivateKey | None, previous: Iterable[str] = (), upstream: str = ""
    ) -> AuthorityKeys:
        keys: list[PublicKey] = [signer.public] if signer is not None else []
        for text in (upstream, *previous):
            key = verification_key(text)
            if key is not None and key not in keys:
                keys.append(key)
        return cls(signer=signer, verifiers=tuple(keys))

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [jwk(key) for key in self.verifiers]}
