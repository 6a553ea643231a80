"""A real Redis Sentinel failover under load, with two ``manage.py serve`` workers.

A Redis master, one replica and three sentinels of the test's own (quorum 2,
``down-after-milliseconds`` 5000 as in deploy/compose.yaml, so the failover takes about
6 s: longer than a worker heartbeat's TTL of 4 s); two workers configured with
``REDIS_SENTINELS`` and ``REDIS_SENTINEL_MASTER`` share one database. Threads drive the
HTTP two-step on loopback: same-worker flows (challenge and answer on one worker) and
routed flows (challenge on one worker, answer on the other), bounded in count and in
time. Mid-load the master is killed with SIGKILL; the sentinels promote the replica; the
load goes on until routed flows succeed again. Then:

* same-worker flows never failed, not one: the rate limits count in-process for
  ``RATE_LIMIT_REDIS_GRACE`` (15 s here) while Redis is away, longer than the failover;
* routed answers failed only with ``routing_unavailable``, and each failure ended between
  the kill and the first sentinel's ``+switch-master`` plus ``MARGIN`` seconds;
* routed flows succeed again, both ways, on the same worker processes (same pids, same
  routing tags: nothing restarted);
* the audit accounts for every failed flow: the answering worker counts its
  ``routing_unavailable`` answers (refusals that belong to no flow it holds are one row per
  address, code and minute with a ``count``), and the challenge, left pending on its owner,
  has its own row there once it ends.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from challenges.identity import PrivateKey
from challenges.tokens import verify_token
from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.once]
AUTHORITY = PrivateKey.generate()
MASTER_NAME = "tokenprovider"
#: RATE_LIMIT_REDIS_GRACE of the workers: the failover must be shorter than this.
GRACE = 15.0
#: Seconds after the first ``+switch-master`` a routed failure may still end: the workers
#: ask the sentinels again and their pub/sub readers subscribe on the new master.
MARGIN = 2.0
#: A worker heartbeat's TTL (challenges.liveness): the failover outlasts it.
HEARTBEAT_TTL = 4.0
#: Bounds of the load: flows per thread, and the seconds the whole run may take.
MAX_FLOWS_PER_THREAD = 1000
#: Seconds each thread waits between two flows (a steady load, not a flood).
PAUSE = 0.05
RUN_LIMIT = 30.0
#: The load before the kill, and after the failover.
BEFORE, AFTER = 2.0, 3.0
#: Each kind of flow: (the worker issuing the challenge, the worker taking the answer).
KINDS = {"same_a": ("A", "A"), "same_b": ("B", "B"), "routed_ab": ("A", "B"), "routed_ba": ("B", "A")}


@dataclass
class Flow:
    kind: str
    started: float
    ended: float
    outcome: str  # "token" or the error code
    challenge_id: str = ""
    answered_by: str = ""


class RedisCluster:
    """A master, one replica and three sentinels on free loopback ports."""

    def __init__(self, tmp: Path) -> None:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.master_port, self.replica_port = servers.free_port(), servers.free_port()
        self.sentinel_ports = [servers.free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def _launch(self, name: str, args: list[str]) -> None:
        self.processes[name], _ = servers.launch(
            ["redis-server", *args], env=dict(os.environ), log_path=self.tmp / f"{name}.log"
        )

    def start(self) -> None:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        # Without its default 5 s wait for more replicas before a diskless sync.
        self._launch("master", ["--port", str(self.master_port), *common, "--repl-diskless-sync-delay", "0"])
        replica = ["--replicaof", "127.0.0.1", str(self.master_port)]
        self._launch("replica", ["--port", str(self.replica_port), *common, *replica])
        assert servers.wait_for(self._replica_synced, timeout=15), "the replica did not sync"
        for i, port in enumerate(self.sentinel_ports):
            conf = self.tmp / f"sentinel{i}.conf"  # sentinel rewrites it
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 5000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._launch(f"sentinel{i}", [str(conf), "--sentinel"])

    def ready(self) -> bool:
        """Every sentinel names the master and knows the two other sentinels and the replica."""
        for port in self.sentinel_ports:
            master = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            peers = self._ask(port, "SENTINEL", "SENTINELS", MASTER_NAME) or []
            replicas = self._ask(port, "SENTINEL", "REPLICAS", MASTER_NAME) or []
            if master != ["127.0.0.1", str(self.master_port)] or len(peers) != 2 or len(replicas) != 1:
                return False
        return True

    def kill_master(self) -> None:
        self.processes["master"].kill()
        self.processes["master"].wait(5)

    def role(self, port: int) -> str | None:
        answer = self._ask(port, "ROLE")
        return str(answer[0]) if answer else None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)

    def _replica_synced(self) -> bool:
        info = self._ask(self.replica_port, "INFO", "replication") or {}
        return bool(info.get("master_link_status") == "up")

    @staticmethod
    def _ask(port: int, *command: str) -> Any:
        try:
            with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as conn:
                return conn.execute_command(*command)
        except redis.RedisError:
            return None


class SwitchWatch(threading.Thread):
    """The monotonic time of the first ``+switch-master`` any sentinel publishes."""

    def __init__(self, ports: list[int], deadline: float) -> None:
        super().__init__(daemon=True)
        self.ports, self.deadline = ports, deadline
        self.at: float | None = None
        self.event = ""
        self.subscribed = threading.Event()

    def run(self) -> None:
        clients = [redis.Redis(port=port, socket_timeout=2, decode_responses=True) for port in self.ports]
        subs = [client.pubsub(ignore_subscribe_messages=True) for client in clients]
        try:
            for sub in subs:
                sub.subscribe("+switch-master")
            self.subscribed.set()
            while self.at is None and time.monotonic() < self.deadline:
                for sub in subs:
                    message = sub.get_message(timeout=0.02)
                    if message and self.at is None:
                        self.at, self.event = time.monotonic(), str(message["data"])
        finally:
            for sub in subs:
                sub.close()
            for client in clients:
                client.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    redis_cluster = RedisCluster(tmp_path / "redis")
    try:
        redis_cluster.start()
        yield redis_cluster
    finally:
        redis_cluster.stop()


def worker_env(tmp: Path, cluster: RedisCluster, worker: str) -> dict[str, str]:
    env = servers.base_env(
        tmp,
        SECRET_KEY="a-long-random-test-secret-" + "x" * 30,
        AUTHORITY_PRIVATE_KEY=str(AUTHORITY),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        WORKER_ID=worker,
        WORKERS="1",
        REDIS_URL="",
        REDIS_SENTINELS=cluster.sentinels,
        REDIS_SENTINEL_MASTER=MASTER_NAME,
        # Every client is 127.0.0.1: the caps lifted, the rate limit on (each request goes
        # through the shared buckets in Redis) but never reached.
        MAX_CONNECTIONS_PER_IP="2000",
        MAX_PENDING_PER_IP="2000",
        RATE_LIMIT_PER_MINUTE="6000000",
        RATE_LIMIT_BURST="100000",
        RATE_LIMIT_REDIS_GRACE=str(GRACE),
        CHALLENGE_TIMEOUT="60",
    )
    env["DEBUG"] = "false"  # as make serve sets it: manage.py serve is for production
    return env


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"content-type": "application/json", "x-forwarded-proto": "https"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def one_flow(kind: str, ports: dict[str, int], user: PrivateKey) -> Flow:
    first, second = KINDS[kind]
    started = time.monotonic()
    status, challenge = post(ports[first], "/api/token/challenge", {"pub": str(user.public)})
    if status != 200:
        return Flow(kind, started, time.monotonic(), challenge.get("code", f"http_{status}"))
    signature = list(user.sign(bytes(challenge["value"]["data"])))
    status, reply = post(ports[second], "/api/token", {"id": challenge["id"], "sig": signature})
    flow = Flow(kind, started, time.monotonic(), "", challenge["id"], second)
    if status == 200 and reply.get("type") == "token":
        assert verify_token(reply["value"], issuer=AUTHORITY.public)["sub"] == str(user.public)
        flow.outcome = "token"
    else:
        flow.outcome = reply.get("code", f"http_{status}")
    return flow


def drive(
    kind: str, ports: dict[str, int], stop: threading.Event, flows: list[Flow], errors: list[str]
) -> None:
    deadline = time.monotonic() + RUN_LIMIT
    for _ in range(MAX_FLOWS_PER_THREAD):
        if stop.is_set() or time.monotonic() > deadline:
            return
        try:
            # A key of its own: a failed routed answer leaves its challenge pending on the owner.
            flows.append(one_flow(kind, ports, PrivateKey.generate()))
        except Exception as exc:  # a transport failure: no coded answer at all
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        stop.wait(PAUSE)


def test_sentinel_failover_under_load(tmp_path: Path, cluster: RedisCluster) -> None:
    run_started = time.monotonic()
    workers: list[servers.Server] = []
    try:
        a = servers.start(tmp_path / "a", kind="serve", env=worker_env(tmp_path, cluster, "A"))
        workers.append(a)
        b = servers.start(
            tmp_path / "b", kind="serve", env=worker_env(tmp_path, cluster, "B"), migrate_db=False
        )
        workers.append(b)
        assert servers.wait_for(cluster.ready, timeout=20), (
            f"the sentinels did not find each other: {_logs(cluster)}"
        )
        ready_at = time.monotonic() - run_started
        ports = {"A": a.port, "B": b.port}
        pids = (a.process.pid, b.process.pid)

        flows: list[Flow] = []
        errors: list[str] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=drive, args=(kind, ports, stop, flows, errors), daemon=True)
            for kind in KINDS
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        time.sleep(BEFORE)
        watch = SwitchWatch(cluster.sentinel_ports, deadline=time.monotonic() + 25)
        watch.start()
        assert watch.subscribed.wait(5)

        killed = time.monotonic()
        cluster.kill_master()
        watch.join(26)
        switched = watch.at
        if switched is None:
            stop.set()
            pytest.fail(f"no +switch-master within 25 s of the kill: {_logs(cluster)}")
        recovered = switched + MARGIN

        def routed_again() -> bool:
            late = [f for f in flows if f.started > recovered and f.outcome == "token"]
            return all(sum(f.kind == kind for f in late) >= 3 for kind in ("routed_ab", "routed_ba"))

        servers.wait_for(lambda: time.monotonic() > switched + AFTER and routed_again(), timeout=15)
        stop.set()
        for thread in threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in threads)
        health = [servers.health(server)[0] for server in workers]
        alive = [server.process.poll() is None for server in workers]

        # -- the figures ---------------------------------------------------------------
        failover = switched - killed
        by_kind = {kind: dict(Counter(f.outcome for f in flows if f.kind == kind)) for kind in KINDS}
        failed = [f for f in flows if f.outcome != "token"]
        window = max(f.ended for f in failed) - killed if failed else 0.0
        same_during = [f for f in flows if f.kind.startswith("same") and killed < f.started < switched]
        slowest_same = max((f.ended - f.started for f in same_during), default=0.0)
        routed_after = [f for f in flows if f.kind.startswith("routed") and f.started > switched]
        slowest_routed_after = max((f.ended - f.started for f in routed_after), default=0.0)
        summary = (
            f"failover (kill to the first +switch-master) {failover:.2f} s; routed failures from"
            f" {min((f.started for f in failed), default=killed) - killed:+.2f} s to {window:+.2f} s"
            f" after the kill (bound {failover + MARGIN:.2f} s); flows by kind {by_kind};"
            f" same-worker flows during the failover {len(same_during)}, slowest {slowest_same:.2f} s;"
            f" routed flows after the switch: slowest {slowest_routed_after:.2f} s;"
            f" transport errors {len(errors)}; workers and sentinels ready in {ready_at:.1f} s,"
            f" run {time.monotonic() - run_started:.1f} s"
        )
        print(f"\n{summary}")

        assert errors == [], f"{errors[:5]}; {summary}"
        # 0. The failover is shorter than the rate limits' grace, so same-worker flows must not
        # fail; and longer than a heartbeat's TTL, so the heartbeats written before the kill had
        # expired on the new master (a live owner must not be taken for a dead one).
        assert HEARTBEAT_TTL < failover < GRACE - 5, summary
        assert cluster.role(cluster.replica_port) == "master", summary
        # 1. Same-worker flows kept working: not one failed, and they ran all through the failover.
        for kind in ("same_a", "same_b"):
            assert set(by_kind[kind]) == {"token"}, summary
            assert sum(f.kind == kind for f in same_during) >= 5, summary
        assert slowest_same < 5.0, summary
        # 2. Routed answers failed only with routing_unavailable, only from the kill to the switch.
        assert all(f.kind.startswith("routed") for f in failed), summary
        assert {f.outcome for f in failed} <= {"routing_unavailable"}, summary
        for flow in failed:
            assert killed <= flow.ended <= switched + MARGIN, (flow, summary)
        # 3. Routed flows work again, both ways, on the same processes (same pids, same tags).
        assert routed_again(), summary
        assert alive == [True, True], summary
        assert (a.process.pid, b.process.pid) == pids, summary
        assert health == [200, 200], summary
        tags = {first: {f.challenge_id[:8] for f in flows if f.challenge_id and KINDS[f.kind][0] == first}
                for first in ("A", "B")}  # fmt: skip
        assert all(len(t) == 1 for t in tags.values()), f"a worker restarted (a new routing tag): {tags}"

        # 4. The audit. A routing failure belongs to no flow the answering worker holds: it is
        # counted on that worker's row for (address, code, minute), whose count must add up to
        # exactly the failures that worker answered.
        def counted() -> dict[str, int]:
            rows = a.rows(
                "SELECT worker, SUM(count) FROM challenges_challengeattempt"
                " WHERE outcome = 'routing_unavailable' GROUP BY worker"
            )
            return {worker: int(total) for worker, total in rows}

        expected = dict(Counter(f.answered_by for f in failed))
        assert servers.wait_for(lambda: counted() == expected, timeout=10), (counted(), expected, summary)
    finally:
        for server in workers:
            server.stop()
    # ... and each failed flow's challenge, never answered, has its own row on its owner: ended
    # with server_shutdown when the owner stopped (or success, if the owner answered and the
    # answer was lost on its way back). Every token has its owner's success row.
    rows = a.rows("SELECT challenge_id, outcome, worker FROM challenges_challengeattempt")
    audit = {(cid, worker): outcome for cid, outcome, worker in rows if outcome != "routing_unavailable"}
    endings = Counter(audit.get((f.challenge_id, KINDS[f.kind][0])) for f in failed)
    print(f"the failed flows' challenges ended on their owners as {dict(endings)}")
    assert set(endings) <= {"server_shutdown", "success"}, endings
    for flow in flows:
        if flow.outcome == "token":
            assert audit.get((flow.challenge_id, KINDS[flow.kind][0])) == "success", flow
    for server in workers:
        log = server.log()
        assert "Traceback" not in log, log[-5000:]
        warnings = [line for line in log.splitlines() if " WARNING " in line]
        print(f"worker log {server.env['WORKER_ID']}: {len(warnings)} warnings", *warnings, sep="\n  ")
        assert len(warnings) <= 8, warnings


def _logs(cluster: RedisCluster) -> str:
    return "\n".join(
        f"--- {path.name}\n{path.read_text()[-2000:]}" for path in sorted(cluster.tmp.glob("*.log"))
    )
