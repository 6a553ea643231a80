"""deploy/compose.yaml: no Docker engine runs here, so its structure is checked (PyYAML),
the nginx command's rewrite of ``deploy/nginx.conf`` is run with sed, the workers' health
check is run against ``manage.py serve`` as Compose runs it, and its Redis master, replica
and sentinels run with their own commands and configuration."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from challenges.identity import PrivateKey
from tests import servers
from tests.test_deploy import (
    COMPOSE,
    DEPLOY,
    SITE,
    location,
    make_serve_command,
    parse_nginx,
    seconds,
    tls_server,
)

pytestmark = pytest.mark.once


def test_compose_file_wires_the_services():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    sentinels = sorted(name for name in services if name.startswith("sentinel"))
    workers = sorted(name for name in services if name.startswith("worker"))
    assert len(sentinels) == 3
    assert len(workers) == 2
    assert {"postgres", "redis-master", "redis-replica", "migrate", "nginx"} <= set(services)

    def healthy(name: str) -> bool:
        check = services[name].get("healthcheck", {})
        return bool(check.get("test")) and not check.get("disable")

    def needs(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name].get("depends_on", {}).items()}

    for name in ["postgres", "redis-master", "redis-replica", *sentinels, *workers]:
        assert healthy(name), name
    assert needs("redis-replica") == {"redis-master": "service_healthy"}
    for name in sentinels:
        assert needs(name) == {"redis-master": "service_healthy", "redis-replica": "service_healthy"}
    assert needs("migrate") == {"postgres": "service_healthy"}
    assert needs("nginx") == dict.fromkeys(workers, "service_healthy")

    # Redis: one master, one replica of it, three sentinels watching it with a majority quorum.
    assert "--replicaof redis-master 6379" in " ".join(services["redis-replica"]["command"])
    assert "--replicaof" not in services["redis-master"]["command"]
    sentinel_conf = compose["configs"]["sentinel"]["content"].splitlines()
    (monitor,) = [ln.split() for ln in sentinel_conf if ln.startswith("sentinel monitor ")]
    master_name, master_host, master_port, quorum = monitor[2:]
    assert (master_host, master_port) == ("redis-master", "6379")
    assert int(quorum) == 2
    (sentinel_port,) = [ln.split()[1] for ln in sentinel_conf if ln.startswith("port ")]
    for name in sentinels:
        assert services[name]["configs"][0]["source"] == "sentinel"
        assert "--sentinel" in services[name]["command"][-1]

    make = make_serve_command()
    ports = {}
    for name in workers:
        worker = services[name]
        env = worker["environment"]
        for key in ("SECRET_KEY", "AUTHORITY_PRIVATE_KEY", "ALLOWED_HOSTS"):
            assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", env[key]), (key, "a required variable, never a literal")
        assert env["DEBUG"] == "false"
        assert env["DATABASE_URL"].startswith("postgres://")
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis-master:6379/0"
        assert env["REDIS_SENTINELS"].split(",") == [f"{s}:{sentinel_port}" for s in sentinels]
        assert env["REDIS_SENTINEL_MASTER"] == master_name
        assert (env["CLIENT_IP_HEADER"], env["TRUSTED_PROXIES"]) == ("X-Forwarded-For", "1")
        assert env["TOKEN_AUDIENCE"] == env["ALLOWED_ORIGINS"] == "https://${PUBLIC_HOST}"
        assert env["WORKER_ID"] == name
        assert needs(name) == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis-master": "service_healthy",
            "sentinel1": "service_healthy",
        }
        assert worker["stop_signal"] == "SIGTERM"
        assert seconds(worker["stop_grace_period"]) > 10
        # make serve's command, listening inside its container.
        command = worker["command"]
        values = dict(zip(("@HOST@", "@PORT@", "@WORKERS@"), command[-5::2], strict=True))
        assert command == ["python", *(values.get(arg, arg) for arg in make[2:])]
        assert values["@WORKERS@"] == "1"
        ports[name] = values["@PORT@"]
        assert "/api/health" in worker["healthcheck"]["test"][-1]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (.+)$", dockerfile, re.MULTILINE)
    assert json.loads(cmd) == services["worker1"]["command"]

    # nginx: the committed site with its upstream pointed at the workers, as its command
    # rewrites it (the sed part run here on deploy/nginx.conf).
    nginx = services["nginx"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    assert mounts["/etc/tokenprovider/nginx.conf"] == "./nginx.conf"
    shell = nginx["command"][-1]
    rewrite, _, rest = shell.partition("&&")
    assert rest.strip() == "exec nginx -g 'daemon off;'"
    sed = shlex.split(rewrite)
    assert sed[-3:-1] == ["/etc/tokenprovider/nginx.conf", ">"]
    assert sed[-1].startswith("/etc/nginx/conf.d/")
    rewritten = subprocess.run([*sed[:-3], str(SITE)], capture_output=True, text=True, check=True).stdout
    site = parse_nginx(rewritten)
    assert [d.args for d in site.one("upstream").all("server")] == [[f"{w}:{ports[w]}"] for w in workers]
    assert all(not d.args[0].startswith("[::]") for s in site.all("server") for d in s.all("listen"))
    assert ["443", "ssl"] in [d.args for d in tls_server(site).all("listen")]
    # The certificate folder and the collected static files are where the site looks.
    assert mounts["/etc/ssl/tokenprovider"] == "./tls"
    for key in ("ssl_certificate", "ssl_certificate_key"):
        assert tls_server(site).value(key).startswith("/etc/ssl/tokenprovider/")
    static_alias = location(tls_server(site), "/static/admin/").value("alias")
    static_mount = next(v for v in nginx["volumes"] if v.startswith("static:"))
    assert static_alias.startswith(static_mount.split(":")[1] + "/")
    assert "static:" + static_mount.split(":")[1] in services["migrate"]["volumes"]
    assert "collectstatic" in services["migrate"]["command"][-1]
    assert any(p.endswith(":443") for p in nginx["ports"])


@pytest.mark.server
def test_compose_workers_health_check_passes_on_a_worker_serving_its_public_host(tmp_path):
    """The workers' health check, run as Compose runs it inside the container: against the
    worker's own address, which ALLOWED_HOSTS (the public host) does not name. Django
    refused it (400, DisallowedHost), so the workers never became healthy and nginx, which
    waits for them, never started."""
    compose = yaml.safe_load(COMPOSE.read_text())
    worker = compose["services"]["worker1"]
    port = servers.free_port()
    env = servers.base_env(
        tmp_path,
        SECRET_KEY="a-long-random-test-secret-" + "x" * 30,
        AUTHORITY_PRIVATE_KEY=str(PrivateKey.generate()),
        ALLOWED_HOSTS="tokens.example.com",
        TOKEN_AUDIENCE="https://tokens.example.com",
        ALLOWED_ORIGINS="https://tokens.example.com",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        DEBUG="false",
        REDIS_URL="",
    )
    process, log_path = servers.launch(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log_path=tmp_path / "serve.log",
    )
    check = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in worker["healthcheck"]["test"]]
    assert check[0] == "CMD"

    def listening() -> bool | None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return None

    try:
        servers.wait_ready(process, log_path, listening, timeout=60, what="manage.py serve")
        out = subprocess.run([sys.executable, *check[2:]], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr[-2000:]
        # The exemption is the probe's alone: another path with that Host is still refused.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/jwks.json", timeout=5)
        body = json.loads(refused.value.read())
        refused.value.close()
        assert (refused.value.code, body["code"]) == (403, "invalid_host")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def redis_args(command: list[str], ports: dict[str, int]) -> list[str]:
    """A Compose redis-server command for this machine: host names to 127.0.0.1, each
    service's port 6379 to its own free port; bound to loopback."""
    assert command[0] == "redis-server", command
    args = command[1:]
    out: list[str] = []
    i = 0
    while i < len(args):
        option = args[i]
        if option == "--replicaof":
            out += [option, "127.0.0.1", str(ports[args[i + 1]])]
            assert args[i + 2] == "6379"
            i += 3
            continue
        value = args[i + 1]
        if option == "--replica-announce-ip":
            value = "127.0.0.1"
        out += [option, value]
        i += 2
    return out


@pytest.mark.server
def test_compose_redis_sentinels_fail_over_to_the_replica(tmp_path):
    """The Compose file's Redis master, replica and three sentinels, run here with their own
    commands and sentinel configuration (host names and ports made local): the sentinels
    find each other and the replica, and promote it when the master dies."""
    import redis

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    ports = {"redis-master": servers.free_port(), "redis-replica": servers.free_port()}
    sentinel_names = sorted(name for name in services if name.startswith("sentinel"))
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def launch(name: str, args: list[str]) -> None:
        processes[name], _ = servers.launch(
            ["redis-server", *args], env=dict(os.environ), log_path=tmp_path / f"{name}.log"
        )

    def client(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def answers(port: int, *command: str) -> Any:
        try:
            with client(port) as conn:
                return conn.execute_command(*command)
        except redis.RedisError:
            return None

    sentinel_ports = {name: servers.free_port() for name in sentinel_names}
    try:
        for name in ("redis-master", "redis-replica"):
            args = redis_args(services[name]["command"], ports)
            args[args.index("--port") + 1] = str(ports[name])
            launch(name, [*args, "--bind", "127.0.0.1", "--dir", str(tmp_path)])

        def replica_synced() -> bool:
            info = answers(ports["redis-replica"], "INFO", "replication") or {}
            return bool(info.get("master_link_status") == "up")

        assert servers.wait_for(replica_synced, timeout=15), "the replica did not sync with the master"
        for name in sentinel_names:
            conf = compose["configs"][services[name]["configs"][0]["source"]]["content"]
            assert conf.count("port 26379") == 1
            assert conf.count(" redis-master 6379 ") == 1
            conf = conf.replace("port 26379", f"port {sentinel_ports[name]}")
            conf = conf.replace(" redis-master 6379 ", f" 127.0.0.1 {ports['redis-master']} ")
            path = tmp_path / f"{name}.conf"  # writable: sentinel rewrites it, as in Compose
            path.write_text(f"{conf}bind 127.0.0.1\ndir {tmp_path}\n")
            launch(name, [str(path), "--sentinel"])
        master_name = services["worker1"]["environment"]["REDIS_SENTINEL_MASTER"]

        def agree_on(port: int) -> bool:
            for sentinel in sentinel_ports.values():
                master = answers(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
                if master != ["127.0.0.1", str(port)]:
                    return False
            return True

        def know_each_other() -> bool:
            for sentinel in sentinel_ports.values():
                peers = answers(sentinel, "SENTINEL", "SENTINELS", master_name) or []
                replicas = answers(sentinel, "SENTINEL", "REPLICAS", master_name) or []
                if len(peers) != len(sentinel_ports) - 1 or len(replicas) != 1:
                    return False
            return True

        assert servers.wait_for(lambda: agree_on(ports["redis-master"]) and know_each_other(), timeout=20)
        processes["redis-master"].kill()
        processes["redis-master"].wait(5)
        # down-after-milliseconds (5 s), then one sentinel is elected and promotes the replica.
        started = time.monotonic()
        assert servers.wait_for(lambda: agree_on(ports["redis-replica"]), timeout=30, interval=0.25)
        assert answers(ports["redis-replica"], "ROLE")[0] == "master"
        assert time.monotonic() - started < 30
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)
