from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from challenges.identity import PrivateKey, parse_private_key
from tests import servers

#: PROTOCOL.md §5 (RFC 8032 test key 1).
VECTOR_PRIVATE = (
    "bbaareqe5mgyz3375ljqlvbck6sjoylgeire4k2l3gjurs4b3vqbrzlt7m"  # split for line length
    "dlvvgabqkyqvn6vjp7nhslea45a5yls6pnkmizfv4bbu2hxa5iru"
)
VECTOR_PUBLIC = "bbaareigxlkmadavrbk35ks762pewibz2b3qxf462uyrsllycdjupob2rdi"


@pytest.fixture
def vector_key() -> PrivateKey:
    return parse_private_key(VECTOR_PRIVATE)


@pytest.fixture
def user_key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def daphne_server(tmp_path: Path) -> Iterator[servers.Server]:
    """A real daphne process on a free port with its own SQLite audit."""
    with servers.running(tmp_path, kind="daphne") as server:
        yield server


@pytest.fixture(autouse=True)
def authority_signer(settings: pytest.FixtureRequest) -> Iterator[PrivateKey]:
    """Each test gets a fresh authority key (never the developer's var/ key)."""
    from challenges import upstream

    key = PrivateKey.generate()
    settings.AUTHORITY_PRIVATE_KEY = str(key)  # type: ignore[attr-defined]
    upstream.authority_key.cache_clear()
    yield key
    upstream.authority_key.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _no_persistent_connections() -> None:
    """database_sync_to_async runs in worker threads; with CONN_MAX_AGE their PostgreSQL
    sessions outlive the tests and block the test database's DROP at teardown."""
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(scope="session", autouse=True)
def _drop_server_databases() -> Iterator[None]:
    yield
    servers.drop_server_databases()
