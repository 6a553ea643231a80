"""The authority's signing key: the one place it is loaded.

``AUTHORITY_PRIVATE_KEY`` (an identity string, ``manage.py keygen``) or, for
development only, a key generated once into ``VAR_DIR/dev-authority.key``
(mode 0600) so ``make run`` needs no configuration. The composition root
(:mod:`challenges.runtime`) calls :func:`load_authority_key` once per process.
"""

from __future__ import annotations

import os
from pathlib import Path

from .identity import PrivateKey, parse_private_key


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
