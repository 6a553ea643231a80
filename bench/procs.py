"""Server processes for the benchmark: the product's workers, the floor, pinning, /proc readings.

The product's servers are started by ``tests/servers.py`` (daphne with a
1,024 backlog, uvicorn with ``--ws websockets-sansio``), each with its own
SQLite audit unless ``DATABASE_URL`` names a PostgreSQL server. Every server
runs in production mode (``DEBUG=false``) with a fresh authority key.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import sys
import urllib.request
from pathlib import Path

from challenges.apikeys import new_api_key
from challenges.identity import PrivateKey

from . import servers
from .servers import Server

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


#: The API key gRPC-Web flows send: a bare key, which needs no signature (AUTHORITY_API_KEYS).
BENCH_API_KEY = "bbenchbenchbenchbenchbench"


def bench_env(tmp: Path, *, authority: PrivateKey, redis_url: str = "", **extra: str) -> dict[str, str]:
    """Production settings for a server under test; ``redis_url`` selects the Redis layer."""
    settings = {
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "AUTHORITY_PRIVATE_KEY": str(authority),
        "REDIS_URL": redis_url,
        # All the load comes from one address (10,000 idle sockets, 512 clients): lift its
        # caps and its rate limit, as a deployment behind many addresses would see.
        "MAX_CONNECTIONS_PER_IP": "5000",
        "MAX_PENDING_PER_IP": "5000",
        "RATE_LIMIT_PER_MINUTE": "0",
        # Plain http on loopback (in production a TLS proxy says https): no redirect.
        "SECURE_SSL_REDIRECT": "false",
        "METRICS_ALLOWED_IPS": "127.0.0.1",
    }
    return servers.base_env(tmp, **{**settings, **extra})


def start_config(tmp: Path, name: str, *, authority: PrivateKey, **extra: str) -> Server:
    """One server as the benchmark runs it: ``serve`` (``make serve``'s command, uvicorn),
    ``asyncio`` (the same on asyncio's loop and h11), ``daphne``, or the ``floor``;
    production settings, its own SQLite audit."""
    if name == "floor":
        return start_floor(tmp, authority=authority)
    env = bench_env(tmp, authority=authority, **extra)
    if name == "asyncio":
        return servers.start(tmp, kind="serve", env=env, args=["--loop", "asyncio", "--http", "h11"])
    return servers.start(tmp, kind=name, env=env)


def start_relay(tmp: Path, *, authority: PrivateKey) -> tuple[Server, Server]:
    """``runauthority`` (with an API key) and a ``make serve`` provider relaying to it over gRPC."""
    api = new_api_key()
    tmp.mkdir(parents=True, exist_ok=True)
    env = bench_env(tmp, authority=authority, AUTHORITY_API_KEYS=f"{api.key}:{api.secret}")
    servers.migrate(env)
    process, log_path = servers.launch(
        [sys.executable, "manage.py", "runauthority", "--address", "127.0.0.1:0"],
        env=env,
        log_path=tmp / "authority.log",
    )

    def listening() -> int | None:
        found = re.search(r"^listening on 127\.0\.0\.1:(\d+)$", log_path.read_text(), re.MULTILINE)
        return int(found.group(1)) if found else None

    port = servers.wait_ready(process, log_path, listening, timeout=30, what="runauthority")
    hub = Server(process=process, port=port, env=env, log_path=log_path)
    relay_env = bench_env(
        tmp / "provider",
        authority=authority,
        TOKEN_UPSTREAM=f"grpc://127.0.0.1:{port}",
        USER_API_KEY=api.key,
        USER_API_SECRET=api.secret,
    )
    (tmp / "provider").mkdir(exist_ok=True)
    return hub, servers.start(tmp / "provider", kind="serve", env=relay_env)


def start_floor(tmp: Path, *, authority: PrivateKey, ready_timeout: float = 20) -> Server:
    """``bench.floor`` (plain ``websockets``) on a free port, ready when it accepts TCP."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(AUTHORITY_PRIVATE_KEY=str(authority), PYTHONUNBUFFERED="1")
    process, log_path = servers.launch(
        [sys.executable, "-m", "bench.floor", "--port", str(port)],
        env=env,
        log_path=tmp / f"floor-{port}.log",
    )
    server = Server(process=process, port=port, env=env, log_path=log_path)

    def accepting() -> Server | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            return None

    return servers.wait_ready(process, log_path, accepting, timeout=ready_timeout, what="the floor")


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of ``pid`` (threads it starts later inherit it)."""
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        match = re.search(r"^VmRSS:\s+(\d+) kB", fh.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return int(match.group(1))


def log_counts(*logs: Path) -> dict[str, int]:
    """Tracebacks, redis-py 'Timeout reading' lines (redis-py 8's 5 s socket timeout under
    channels-redis, django/channels_redis#422) and failed reads of a worker's inbox (how that
    trap shows now that no connection reads the layer itself)."""
    text = "".join(path.read_text(errors="replace") for path in logs if path.exists())
    return {
        "tracebacks": text.count("Traceback"),
        "timeout_reading": text.count("Timeout reading"),
        "inbox_read_failures": text.count("cannot read the channel layer"),
    }


def raise_fd_limit(wanted: int = 20_000) -> None:
    """Idle sockets need descriptors in this process and in the servers it starts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def cpu_split(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, load-generator CPUs): the last CPU for the client, the rest for servers."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    return set(cpus[:-1]), {cpus[-1]}


def audit_metrics(urls: list[str]) -> tuple[float, float, float] | None:
    """Audit batches, their rows and their commit seconds so far, summed over the servers
    behind ``urls`` (their ``/metrics``); None for a server without it (the floor)."""
    totals = [0.0, 0.0, 0.0]
    for url in sorted(set(urls)):
        base = url.replace("ws://", "http://", 1).split("/", 3)
        try:
            with urllib.request.urlopen(f"{base[0]}//{base[2]}/metrics", timeout=5) as response:  # noqa: S310 (loopback)
                text = response.read().decode()
        except OSError:
            return None
        for i, name in enumerate(
            ("tokenprovider_audit_batch_rows_count", "tokenprovider_audit_batch_rows_sum",
             "tokenprovider_audit_commit_seconds_sum")
        ):  # fmt: skip
            found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
            totals[i] += float(found.group(1)) if found else 0.0
    return totals[0], totals[1], totals[2]


def redis_commands(port: int) -> int:
    """Commands a redis-server has run (``INFO commandstats``), not counting this query."""
    return sum(redis_commandstats(port).values())


def redis_commandstats(port: int) -> dict[str, int]:
    """Calls per command a redis-server has run (``INFO commandstats``), ``info`` left out."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < _bulk_end(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    calls = re.findall(rb"^cmdstat_([\w|]+):calls=(\d+)", data, re.MULTILINE)
    return {name.decode(): int(n) for name, n in calls if name != b"info"}


def _bulk_end(data: bytes) -> int:
    header, _, _ = data.partition(b"\r\n")
    return len(header) + 2 + int(header[1:]) + 2 if header.startswith(b"$") else 0
