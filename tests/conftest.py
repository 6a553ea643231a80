from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from challenges import audit, runtime
from challenges.identity import PrivateKey, parse_private_key
from tests import servers

#: docs/PROTOCOL.md "Vectors" (RFC 8032 test key 1).
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
def authority_signer(settings: pytest.FixtureRequest) -> PrivateKey:
    """Each test gets a fresh authority key (never the developer's var/ key); the
    runtime a test starts reads it from the settings."""
    key = PrivateKey.generate()
    settings.AUTHORITY_PRIVATE_KEY = str(key)  # type: ignore[attr-defined]
    return key


@pytest.fixture
async def _runtime_stopped() -> AsyncIterator[None]:
    """A runtime an in-process test started (its first request did) is stopped with the
    test, on the test's own event loop: no task or timer outlives it."""
    yield
    await runtime.stop()
    # The runtime's reads (the blocklist's) ran in asgiref's one thread for thread-sensitive
    # work, which outlives the test: close its connection while the test may still use the
    # database (a PostgreSQL session left open there blocks the test database's DROP).
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@pytest.fixture(autouse=True)
def _orphaned_runtime_settled() -> Iterator[None]:
    """A sync test's request (Django's test client) runs an async view on an event loop of its
    own, which starts a runtime and is closed under it (an async test's runtime on another
    loop than the test's is left the same way). Its audit writer's thread may still be writing
    (the worker-status row) when the test database is flushed: on SQLite's shared in-memory
    database that flush then fails ("table is locked"); and a kept PostgreSQL connection, left
    to the garbage collector, warns (ResourceWarning) in whichever test is running then. Let
    the thread finish, close its connection and end it before the flush (this fixture is torn
    down first)."""
    yield
    orphan = runtime.current()
    if orphan is None or orphan.stopped or orphan.loop is None or orphan.loop.is_running():
        return
    orphan.stopped = True
    thread = orphan.audit._thread  # (private: the loop that could close it is gone)
    if thread is not None:
        thread.submit(audit._close_kept_connection).result(timeout=10)
        thread.shutdown(wait=True)
        orphan.audit._thread = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Async tests only: a sync test may run its own loop (Playwright's), or none.
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.function):
            item.fixturenames.append("_runtime_stopped")  # type: ignore[attr-defined]


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


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On SQLite, the test database is a WAL file, as production's is, not Django's default
    in-memory database with a shared cache: there a connection that meets another's write
    transaction fails at once ("database table is locked") instead of waiting, which the
    audit writer's and the worker-status reporter's own connections made a random failure."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
