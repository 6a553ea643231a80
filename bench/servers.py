"""Real server processes for the benchmark and the tests: daphne or uvicorn on a free
loopback port, redis-server on another, and the one launch/wait_ready helper for all.

Each server gets its own ``VAR_DIR`` and, unless given one, its own SQLite
database (or, when ``DATABASE_URL`` names a PostgreSQL server, a database of
its own there), migrated before it starts, so callers can read its audit directly:
a copy of a template migrated once per process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


#: Ports this process handed out: the kernel may offer a port again once its probe socket
#: is closed, before whoever it was given to has bound it (a sentinel once got its master's).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on, never one this process handed out before."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh loopback port in 100 tries")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/token"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return query(self.env["DATABASE_URL"], sql, params)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


#: Databases created for server processes in a PostgreSQL run (dropped at session end).
CREATED_DATABASES: list[str] = []
_DATABASE_OF: dict[Path, str] = {}
#: Database URLs made from a migrated template: ``migrate`` has nothing to do there.
_MIGRATED: set[str] = set()
#: The migrated template of this process, by backend ("sqlite" / the PostgreSQL URL).
_TEMPLATES: dict[str, str] = {}


def server_database(tmp: Path) -> str:
    """A fresh, migrated database for server processes: a SQLite file, or, when the suite
    runs on PostgreSQL (``DATABASE_URL=postgres://...``), a new database on that server.
    Each is a copy of a template this process migrated once (a ``migrate`` per server
    cost 1.4-1.8 s, and a test run starts a few hundred servers)."""
    url = os.environ.get("DATABASE_URL", "")
    if tmp in _DATABASE_OF:  # one database per folder
        return _DATABASE_OF[tmp]
    if not url.startswith(("postgres://", "postgresql://")):
        path = tmp / "audit.sqlite3"
        made = f"sqlite:///{path}"
        if not path.exists():
            tmp.mkdir(parents=True, exist_ok=True)
            with (
                contextlib.closing(sqlite3.connect(_sqlite_template())) as source,
                contextlib.closing(sqlite3.connect(path)) as target,
            ):
                source.backup(target)
            _MIGRATED.add(made)
    else:
        import psycopg

        template = _postgres_template(url)
        name = f"tp_{os.getpid()}_{len(CREATED_DATABASES)}_{os.urandom(3).hex()}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        CREATED_DATABASES.append(name)
        made = url.rsplit("/", 1)[0] + "/" + name
        _MIGRATED.add(made)
    _DATABASE_OF[tmp] = made
    return made


def _sqlite_template() -> str:
    if "sqlite" not in _TEMPLATES:
        path = Path(tempfile.mkdtemp(prefix="tp-template-")) / "audit.sqlite3"
        _migrate_url(f"sqlite:///{path}")
        _TEMPLATES["sqlite"] = str(path)
    return _TEMPLATES["sqlite"]


def _postgres_template(url: str) -> str:
    if url not in _TEMPLATES:
        import psycopg

        name = f"tp_{os.getpid()}_template_{os.urandom(3).hex()}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        CREATED_DATABASES.append(name)
        _migrate_url(url.rsplit("/", 1)[0] + "/" + name)  # its connections end with the process
        _TEMPLATES[url] = name
    return _TEMPLATES[url]


def _migrate_url(url: str) -> None:
    _run_migrate(base_env(Path(tempfile.mkdtemp(prefix="tp-template-")), DATABASE_URL=url))


def drop_server_databases() -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not CREATED_DATABASES or not url.startswith(("postgres://", "postgresql://")):
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for name in CREATED_DATABASES:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    CREATED_DATABASES.clear()
    _DATABASE_OF.clear()
    _MIGRATED.clear()
    _TEMPLATES.pop(url, None)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read a server's audit database (SQLite file or PostgreSQL); ``?`` placeholders."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(sql, params).fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(sql.replace("?", "%s"), params).fetchall()
    # inet columns come back as ipaddress objects; compare them as SQLite's strings.
    return [tuple(str(v) if isinstance(v, ipaddress._BaseAddress) else v for v in row) for row in rows]


def base_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tokensite.settings",
            "VAR_DIR": str(tmp / "var"),
            "DEBUG": "true",
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        }
    )
    if "DATABASE_URL" not in overrides:
        env["DATABASE_URL"] = server_database(tmp)
    env.update(overrides)
    return env


def migrate(env: dict[str, str]) -> None:
    if env.get("DATABASE_URL") not in _MIGRATED:  # else a copy of the migrated template
        _run_migrate(env)


def _run_migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )


def start(
    tmp: Path,
    *,
    kind: str = "daphne",
    port: int | None = None,
    env: dict[str, str] | None = None,
    migrate_db: bool = True,
    ready_timeout: float = 30,
    args: Sequence[str] = (),
) -> Server:
    """Start a server and wait until ``/api/health`` answers; ``args`` are extra
    command-line options for the server (e.g. daphne's ``--proxy-headers``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = env or base_env(tmp)
    if migrate_db:
        migrate(env)
    port = port or free_port()
    if kind == "daphne":
        cmd = [
            sys.executable, "-m", "daphne", "-e",
            f"tcp:port={port}:interface=127.0.0.1:backlog=1024", *args,
            "tokensite.asgi:application",
        ]  # fmt: skip
    elif kind == "uvicorn":
        cmd = [
            sys.executable, "-m", "uvicorn", "tokensite.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio",
            "--ws-max-size", str(128 * 1024), "--ws-per-message-deflate", "false",
            "--no-access-log", "--lifespan", "on", *args,
        ]  # fmt: skip
    elif kind == "serve":  # make serve's command: production settings, WORKERS processes
        cmd = [
            sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", env.get("WORKERS", "1"), *args,
        ]  # fmt: skip
    elif kind == "runserver":  # make run's command: daphne's development server, DEBUG on
        cmd = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", *args]
    else:
        raise ValueError(kind)
    process, log_path = launch(cmd, env=env, log_path=tmp / f"{kind}-{port}.log")
    server = Server(process=process, port=port, env=env, log_path=log_path)

    def healthy() -> Server | None:
        try:
            with urllib.request.urlopen(f"{server.http}/api/health", timeout=2) as response:  # noqa: S310 (a loopback http URL we built)
                return server if response.status == 200 else None
        except OSError:
            return None

    return wait_ready(process, log_path, healthy, timeout=ready_timeout, what=kind)


def launch(
    cmd: list[str], *, env: dict[str, str], log_path: Path, new_session: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``cmd`` in the project root, its output going to ``log_path``; with
    ``new_session``, in a process group of its own (to signal it and its children)."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
        )
    return process, log_path


def wait_ready(
    process: subprocess.Popen[bytes],
    log_path: Path,
    ready: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
) -> T:
    """Poll ``ready`` until it returns something; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = ready()
        if result is not None:
            return result
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise RuntimeError(f"{what} was not ready in {timeout} s:\n{log_path.read_text()}")


@contextlib.contextmanager
def running(tmp: Path, **kwargs: Any) -> Iterator[Server]:
    server = start(tmp, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Redis:
    """A redis-server of the test's own (so the test may stop and restart it)."""

    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            ["redis-server", *args, "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[Redis]:
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    tmp.mkdir(parents=True, exist_ok=True)
    redis = Redis(port=free_port(), dir=tmp)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def health(server: Server) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(f"{server.http}/api/health", timeout=3) as response:  # noqa: S310 (a loopback http URL we built)
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
