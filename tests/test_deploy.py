"""deploy/: the systemd unit, the nginx site and the Compose file, each as real as this
machine allows.

* nginx: a real nginx runs the committed ``deploy/nginx.conf`` (only its listen ports,
  upstream servers, certificate and static paths filled in; TLS with a certificate made
  here) in front of a header-echoing backend, and in front of two real workers (daphne,
  and the unit's own ExecStart) sharing a Redis and a database. A flow whose answer goes
  to the other worker gets its token; the audit records the client's address, neither a
  forged X-Forwarded-For nor nginx's own (nginx connects from 127.0.0.2, the client from
  127.0.0.3); bodies over the service's limit are refused by nginx.
* systemd: ``systemd-analyze verify`` in a staged root, the essential keys, and ExecStart
  equal to the Makefile's ``serve`` recipe; the cluster test runs that ExecStart.
* Compose: in ``tests/test_compose.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from websockets.sync.server import serve as sync_serve

from challenges import authority
from challenges.identity import PrivateKey
from challenges.protocol import MAX_FRAME_BYTES
from challenges.tokens import verify_token
from tests import servers

pytestmark = pytest.mark.once

DEPLOY = servers.ROOT / "deploy"
SITE = DEPLOY / "nginx.conf"
UNIT = DEPLOY / "tokenprovider.service"
COMPOSE = DEPLOY / "compose.yaml"

PUBLIC_HOST = "tokens.example.com"
PUBLIC_ORIGIN = f"https://{PUBLIC_HOST}"
CLIENT_ADDR = "127.0.0.3"  # where the test's client connects from: what the audit must show
NGINX_ADDR = "127.0.0.2"  # where nginx connects to the workers from (proxy_bind)
FORGED = "6.6.6.6"  # what the client writes into X-Forwarded-For
AUTHORITY = PrivateKey.generate()


# --- nginx configuration: a small parser -----------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{self.name} {self.args}: {len(found)} '{name}' directives"
        return found[0]

    def value(self, name: str) -> str:
        return " ".join(self.one(name).args)

    def walk(self) -> Iterator[Directive]:
        for directive in self.block or []:
            yield directive
            yield from directive.walk()


def parse_nginx(text: str) -> Directive:
    """nginx's syntax: words, quoted strings, ``;``, blocks; ``#`` comments."""
    tokens = re.findall(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'|#[^\n]*|[{};]|[^\s{};\"'#]+", text)
    stack: list[Directive] = [Directive("main", [], [])]
    words: list[str] = []
    for token in tokens:
        if token.startswith("#"):
            continue
        if token in (";", "{"):
            assert words, f"an empty directive before {token!r}"
            directive = Directive(words[0], words[1:], [] if token == "{" else None)
            stack[-1].block.append(directive)  # type: ignore[union-attr]
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            assert not words, f"a directive without ';' before '}}': {words}"
            assert len(stack) > 1, "unbalanced braces"
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    assert not words, f"an unterminated directive: {words}"
    assert len(stack) == 1, "an unterminated block"
    return stack[0]


def size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * units[unit or "s"]


def tls_server(site: Directive) -> Directive:
    return next(s for s in site.all("server") if any("ssl" in d.args for d in s.all("listen")))


def location(server: Directive, path: str) -> Directive:
    return next(d for d in server.all("location") if d.args == [path])


def effective(server: Directive, loc: Directive, name: str) -> str:
    """A directive's value in a location, or inherited from its server."""
    return loc.value(name) if loc.all(name) else server.value(name)


def test_nginx_site_matches_the_service():
    site = parse_nginx(SITE.read_text())
    assert "proxy_bind" not in {d.name for d in site.walk()}  # the tests add their own
    maps = {tuple(d.args): dict((e.name, " ".join(e.args)) for e in d.block or []) for d in site.all("map")}
    assert maps[("$http_upgrade", "$connection_upgrade")] == {"~*^websocket$": "upgrade", "default": "close"}
    assert maps[("$http_upgrade", "$websocket_upgrade")] == {"~*^websocket$": "websocket", "default": ""}
    upstream = site.one("upstream")
    assert upstream.args == ["tokenprovider"]
    assert upstream.all("server")

    redirect = next(s for s in site.all("server") if s is not tls_server(site))
    assert redirect.value("return") == "301 https://$host$request_uri"
    server = tls_server(site)
    assert ["443", "ssl"] in [d.args for d in server.all("listen")]
    assert server.all("ssl_certificate")
    assert server.all("ssl_certificate_key")

    # The headers the service reads; set once for the server: a location that set any
    # proxy_set_header of its own would silently drop all of these.
    headers = {d.args[0].lower(): d.args[1] for d in server.all("proxy_set_header")}
    assert headers == {
        "host": "$host",
        "x-forwarded-for": "$remote_addr",  # replaced, never appended ($proxy_add_x_forwarded_for)
        "x-forwarded-proto": "$scheme",
        "upgrade": "$websocket_upgrade",
        "connection": "$connection_upgrade",
    }
    assert server.value("proxy_http_version") == "1.1"
    assert seconds(server.value("client_body_timeout")) == 10

    challenge_timeout = float(settings.CHALLENGE_TIMEOUT)
    locations = server.all("location")
    assert {tuple(d.args) for d in locations} >= {("/api/",), ("/ws/",), ("/admin/",), ("/",)}
    for loc in locations:
        assert not loc.all("proxy_set_header"), loc.args
        if loc.args != ["/static/admin/"]:
            assert loc.value("proxy_pass") == "http://tokenprovider", loc.args
    # The service's limit on bodies and frames, and more for the admin's forms.
    assert size(server.value("client_max_body_size")) == MAX_FRAME_BYTES
    assert size(server.value("client_body_buffer_size")) >= MAX_FRAME_BYTES
    assert size(effective(server, location(server, "/api/"), "client_max_body_size")) == MAX_FRAME_BYTES
    assert size(effective(server, location(server, "/admin/"), "client_max_body_size")) > MAX_FRAME_BYTES
    # A signature routed to a busy owner may wait up to the challenge's timeout; an idle
    # WebSocket may wait a whole challenge for its client (nginx's default is 60 s).
    assert seconds(effective(server, location(server, "/api/"), "proxy_read_timeout")) > challenge_timeout
    for path in ("/ws/", "/"):  # "/": any path may carry a WebSocket (gRPC-Web later)
        loc = location(server, path)
        assert seconds(loc.value("proxy_read_timeout")) >= 2 * challenge_timeout, path
        assert loc.value("proxy_buffering") == "off", path


# --- a real nginx ------------------------------------------------------------------------


@dataclass
class Tls:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def make_certificate(folder: Path) -> Tls:
    """A self-signed certificate for PUBLIC_HOST and 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PUBLIC_HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(PUBLIC_HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    tls = Tls(cert=folder / "fullchain.pem", key=folder / "privkey.pem")
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return tls


def site_for_test(
    *, https_port: int, http_port: int, upstreams: list[int], tls: Tls, static_root: Path
) -> str:
    """The committed site with what a test must change: listen addresses, the upstream's
    servers, the certificate and the static folder. Each must be there exactly once, so
    the committed file cannot drift from what is tested."""
    text = SITE.read_text()
    for old, new in [
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", ""),
        ("server 127.0.0.1:8000;", " ".join(f"server 127.0.0.1:{port};" for port in upstreams)),
        ("/etc/ssl/tokenprovider/fullchain.pem", str(tls.cert)),
        ("/etc/ssl/tokenprovider/privkey.pem", str(tls.key)),
        ("alias /var/lib/tokenprovider/static/admin/;", f"alias {static_root}/admin/;"),
    ]:
        assert text.count(old) == 1, f"deploy/nginx.conf should have {old!r} exactly once"
        text = text.replace(old, new)
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise RuntimeError("nginx is missing: 'make deploy-tools' (as root) or apt-get install -y nginx")
    return found


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    https_port: int
    http_port: int
    prefix: Path

    def access_log(self) -> list[dict[str, str]]:
        path = self.prefix / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [
            dict(zip(("remote", "method", "uri", "status", "upstream"), ln.split(" "), strict=True))
            for ln in lines
        ]

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")


@contextlib.contextmanager
def running_nginx(folder: Path, site: str, *, https_port: int, http_port: int) -> Iterator[Nginx]:
    """nginx in the foreground as this user, everything under ``folder``; nginx connects to
    the upstreams from NGINX_ADDR; the access log names the upstream of each request."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.conf").write_text(site)
    temp = {t: folder / "temp" / t for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    # As root, nginx's workers would otherwise run as nobody, who cannot enter the test's folder.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else ""
    (folder / "nginx.conf").write_text(
        f"""{user}
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    {mime}
    default_type application/octet-stream;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    log_format test '$remote_addr $request_method $request_uri $status $upstream_addr';
    access_log {folder / "access.log"} test;
    proxy_bind {NGINX_ADDR};
    include {folder / "site.conf"};
}}
"""
    )
    binary = nginx_binary()
    base = [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]
    directives = f"daemon off; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'} info;"
    check = subprocess.run([*base, "-t", "-g", directives], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"nginx -t refused the configuration:\n{check.stderr}\n{site}"
    process, _ = servers.launch(
        [*base, "-g", directives], env=dict(os.environ), log_path=folder / "stderr.log"
    )
    nginx = Nginx(process=process, https_port=https_port, http_port=http_port, prefix=folder)

    def listening() -> bool | None:
        try:
            with socket.create_connection(("127.0.0.1", https_port), timeout=1):
                return True
        except OSError:
            return None

    try:
        servers.wait_ready(process, folder / "stderr.log", listening, timeout=15, what="nginx")
        yield nginx
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    errors = [ln for ln in nginx.error_log().splitlines() if re.search(r"\[(emerg|alert|crit)\]", ln)]
    assert not errors, "\n".join(errors)


def https(
    nginx: Nginx, tls: Tls, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request through nginx from CLIENT_ADDR, Host PUBLIC_HOST, a forged X-Forwarded-For."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        nginx.https_port,
        context=tls.client_context(),
        timeout=30,
        source_address=(CLIENT_ADDR, 0),
    )
    try:
        sent = {
            "Host": PUBLIC_HOST,
            "X-Forwarded-For": FORGED,
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wss(nginx: Nginx, tls: Tls, path: str, **kwargs: Any) -> Any:
    """A WebSocket through nginx from CLIENT_ADDR with a forged X-Forwarded-For."""
    return websockets.connect(
        f"wss://{PUBLIC_HOST}:{nginx.https_port}{path}",
        host="127.0.0.1",
        port=nginx.https_port,
        ssl=tls.client_context(),
        local_addr=(CLIENT_ADDR, 0),
        additional_headers={"X-Forwarded-For": FORGED},
        proxy=None,
        open_timeout=10,
        **kwargs,
    )


# --- nginx in front of a backend that echoes what it receives -----------------------------


@contextlib.contextmanager
def echo_backend() -> Iterator[tuple[int, dict[str, dict[str, str]]]]:
    """A backend on a free port: a plain GET is answered with the headers it arrived with
    (JSON); a WebSocket echoes its messages. The headers seen, by path, in the dict, with
    the address the request came from as ``peer``."""
    seen: dict[str, dict[str, str]] = {}

    def process_request(connection: Any, request: Any) -> Any:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        seen[request.path] = {**headers, "peer": connection.remote_address[0]}
        if "upgrade" in headers:
            return None  # the WebSocket handshake goes on
        return connection.respond(200, json.dumps(headers))

    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with sync_serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1], seen
        finally:
            server.shutdown()
            thread.join(10)


@pytest.mark.server
async def test_nginx_passes_the_client_and_websockets_on_any_path(tmp_path):
    tls = make_certificate(tmp_path / "tls")
    with echo_backend() as (backend_port, seen):
        https_port, http_port = servers.free_port(), servers.free_port()
        site = site_for_test(
            https_port=https_port,
            http_port=http_port,
            upstreams=[backend_port],
            tls=tls,
            static_root=tmp_path,
        )
        with running_nginx(tmp_path / "nginx", site, https_port=https_port, http_port=http_port) as nginx:
            # Plain requests, one per location: the same headers everywhere, whatever the
            # client wrote; an Upgrade that is not websocket is not passed on.
            for path in ("/api/echo", "/ws/echo", "/admin/echo", "/any/echo"):
                status, headers, body = await asyncio.to_thread(
                    https,
                    nginx,
                    tls,
                    "GET",
                    path,
                    X_Forwarded_Proto="http",
                    Upgrade="h2c",
                    Connection="Upgrade",
                )
                assert status == 200, (path, status, body)
                got = json.loads(body)
                assert got["x-forwarded-for"] == CLIENT_ADDR, (path, got)
                assert got["x-forwarded-proto"] == "https", (path, got)
                assert got["host"] == PUBLIC_HOST, (path, got)
                assert "upgrade" not in got, (path, got)
                assert got["connection"] == "close", (path, got)
                assert headers["strict-transport-security"].startswith("max-age="), headers
                assert seen[path] == {**got, "peer": NGINX_ADDR}  # nginx connected from proxy_bind's address

            # A WebSocket on /ws/ and on any other path (gRPC-Web over WebSocket, later).
            for path in ("/ws/token", "/threads.pb.API/GetToken"):
                async with wss(nginx, tls, path) as sock:
                    for message in ("ping", "x" * 5000):
                        await sock.send(message)
                        assert await asyncio.wait_for(sock.recv(), 5) == message
                got = seen[path]
                assert got["upgrade"].lower() == "websocket", got
                assert got["connection"].lower() == "upgrade", got
                assert got["x-forwarded-for"] == CLIENT_ADDR, got
                assert got["host"] == PUBLIC_HOST, got
                assert got["x-forwarded-proto"] == "https", got
                assert got["peer"] == NGINX_ADDR, got

            # Plain http: redirected to https, path and query kept, never proxied.
            conn = http.client.HTTPConnection(
                "127.0.0.1", http_port, timeout=10, source_address=(CLIENT_ADDR, 0)
            )
            try:
                conn.request("GET", "/ws/token?from=http", headers={"Host": PUBLIC_HOST})
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
            assert response.status == 301
            assert response.getheader("location") == f"{PUBLIC_ORIGIN}/ws/token?from=http"
            assert "/ws/token?from=http" not in seen

        # Every request nginx proxied went to the backend; the client was CLIENT_ADDR throughout.
        log = nginx.access_log()
        proxied = [line for line in log if line["upstream"] != "-"]
        assert {line["upstream"] for line in proxied} == {f"127.0.0.1:{backend_port}"}
        assert {line["remote"] for line in log} == {CLIENT_ADDR}
        assert len(proxied) == 6


# --- nginx in front of two real workers ----------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> key -> values (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = (pending + raw.strip()) if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        assert current is not None, f"outside any section: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(service: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in service.get("Environment", []):
        env.update(item.split("=", 1) for item in shlex.split(line))  # type: ignore[arg-type]
    return env


def unit_command(line: str, values: dict[str, str]) -> list[str]:
    """An Exec line as it runs here: the venv's python, ``${VAR}`` from ``values``."""
    argv = shlex.split(line)
    assert argv[0] == "/opt/tokenprovider/.venv/bin/python", argv
    expanded = [re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], arg) for arg in argv[1:]]
    return [sys.executable, *expanded]


def worker_settings(**extra: str) -> dict[str, str]:
    return {
        "DEBUG": "false",
        "SECRET_KEY": "deploy-test-" + "s" * 40,
        "AUTHORITY_PRIVATE_KEY": str(AUTHORITY),
        # The public name through nginx; 127.0.0.1 for the harness's direct health check.
        "ALLOWED_HOSTS": f"{PUBLIC_HOST},127.0.0.1",
        "TOKEN_AUDIENCE": PUBLIC_ORIGIN,
        "ALLOWED_ORIGINS": PUBLIC_ORIGIN,
        "CLIENT_IP_HEADER": "X-Forwarded-For",
        "TRUSTED_PROXIES": "1",
        "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        **extra,
    }


@dataclass
class Cluster:
    nginx: Nginx
    tls: Tls
    workers: dict[str, servers.Server]  # WORKER_ID -> server

    def by_port(self, upstream: str) -> str:
        return next(name for name, srv in self.workers.items() if upstream == f"127.0.0.1:{srv.port}")

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return next(iter(self.workers.values())).rows(sql, params)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Redis, worker A (daphne) and worker B (the unit's ExecStart: manage.py serve, uvicorn)
    sharing one database, and nginx with the committed site in front of both."""
    tmp = tmp_path_factory.mktemp("deploy")
    service = read_unit(UNIT)["Service"]
    with servers.redis_server(tmp / "redis") as redis:
        env = servers.base_env(tmp, REDIS_URL=redis.url, **worker_settings())
        a = servers.start(tmp / "a", kind="daphne", env=dict(env, WORKER_ID="A", VAR_DIR=str(tmp / "a")))
        b_dir = tmp / "b"
        b_dir.mkdir()
        port = servers.free_port()
        # What systemd would run: the unit's Environment, then the environment file's.
        env_file = {"HOST": "127.0.0.1", "PORT": str(port), "WORKERS": "1", "VAR_DIR": str(b_dir / "var")}
        b_env = {**env, **unit_environment(service), **env_file, "WORKER_ID": "B"}
        timeout_stop = float(service["TimeoutStopSec"][0])
        process = None
        try:
            (pre,) = service["ExecStartPre"]
            subprocess.run(unit_command(pre, b_env), cwd=servers.ROOT, env=b_env, check=True, timeout=120)
            (start,) = service["ExecStart"]
            process, log_path = servers.launch(
                unit_command(start, b_env), env=b_env, log_path=b_dir / "serve.log", new_session=True
            )
            b = servers.Server(process=process, port=port, env=b_env, log_path=log_path)
            servers.wait_ready(process, log_path, lambda: b if healthy(b) else None, timeout=60, what="serve")
            tls = make_certificate(tmp / "tls")
            https_port, http_port = servers.free_port(), servers.free_port()
            site = site_for_test(
                https_port=https_port,
                http_port=http_port,
                upstreams=[a.port, b.port],
                tls=tls,
                static_root=b_dir / "var" / "static",
            )
            with running_nginx(tmp / "nginx", site, https_port=https_port, http_port=http_port) as nginx:
                yield Cluster(nginx=nginx, tls=tls, workers={"A": a, "B": b})
            upstream_errors = [
                ln
                for ln in nginx.error_log().splitlines()
                if "upstream" in ln and re.search(r"\[(warn|error)\]", ln)
            ]
            assert not upstream_errors, "\n".join(upstream_errors)
        finally:
            a.stop()
            if process is not None:
                # As systemd stops the unit: SIGTERM to its every process, within TimeoutStopSec.
                started = time.monotonic()
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout_stop)
                finally:
                    stopped_in = time.monotonic() - started
                    if process.poll() is None:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait(5)
        assert stopped_in < timeout_stop, f"serve took {stopped_in:.1f} s to stop"
        assert "serving on http://127.0.0.1:" in b.log()
        for srv in (a, b):
            assert "Traceback" not in srv.log(), srv.log()


def healthy(server: servers.Server) -> bool:
    try:
        return servers.health(server)[0] == 200
    except OSError:  # not listening yet
        return False


def sign(user: PrivateKey, challenge: dict[str, Any]) -> list[int]:
    value = bytes(challenge["value"]["data"])
    authority.check_challenge_text(value, audience=PUBLIC_ORIGIN, key=user.public)  # names the public origin
    return list(user.sign(value))


@pytest.mark.server
async def test_a_flow_answered_on_the_other_worker_through_nginx_gets_its_token(cluster):
    nginx, tls = cluster.nginx, cluster.tls
    crossings: set[tuple[str, str]] = set()
    for flow in range(8):  # nginx alternates between the workers: two flows suffice
        user = PrivateKey.generate()
        async with wss(nginx, tls, f"/ws/token?flow={flow}", origin=PUBLIC_ORIGIN) as sock:
            await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
            challenge = json.loads(await asyncio.wait_for(sock.recv(), 10))
            assert challenge["type"] == "challenge", challenge
            body = json.dumps({"id": challenge["id"], "sig": sign(user, challenge)}).encode()
            status, _, answer = await asyncio.to_thread(
                https, nginx, tls, "POST", f"/api/token?flow={flow}", body, Content_Type="application/json"
            )
            assert status == 200, answer
            token = json.loads(answer)["value"]
            claims = verify_token(token, issuer=AUTHORITY.public, audience=PUBLIC_ORIGIN)
            assert claims["sub"] == str(user.public)
            # The socket that asked, on the owner, gets the token too.
            assert json.loads(await asyncio.wait_for(sock.recv(), 10)) == {"type": "token", "value": token}
        # Which worker nginx sent each step to (the socket's line is written when it closes).
        assert servers.wait_for(
            lambda flow=flow: (
                len([ln for ln in nginx.access_log() if ln["uri"].endswith(f"?flow={flow}")]) == 2
            ),
            timeout=5,
        )
        steps = {ln["method"]: ln for ln in nginx.access_log() if ln["uri"].endswith(f"?flow={flow}")}
        asked, answered = (
            cluster.by_port(steps["GET"]["upstream"]),
            cluster.by_port(steps["POST"]["upstream"]),
        )
        assert (steps["GET"]["status"], steps["POST"]["status"]) == ("101", "200")
        # The owner (the worker the socket reached) recorded the flow, and the token.
        rows = cluster.rows(
            "SELECT outcome, worker, client_ip FROM challenges_challengeattempt WHERE challenge_id = ?",
            (challenge["id"],),
        )
        assert rows == [("success", asked, CLIENT_ADDR)], rows
        jti = cluster.rows(
            "SELECT t.jti FROM challenges_issuedtoken t JOIN challenges_challengeattempt a"
            " ON a.id = t.attempt_id WHERE a.challenge_id = ?",
            (challenge["id"],),
        )
        assert jti == [(claims["jti"],)]
        if asked != answered:
            crossings.add((asked, answered))
        if crossings == {("A", "B"), ("B", "A")}:
            break
        # One more request shifts nginx's round robin, so the next flow crosses the other way.
        status, _, _ = await asyncio.to_thread(https, nginx, tls, "GET", "/api/health")
        assert status == 200
    assert crossings == {("A", "B"), ("B", "A")}, f"answers never crossed both ways: {crossings}"
    # Each worker's challenge ids carry its own tag.
    tags = cluster.rows(
        "SELECT worker, challenge_id FROM challenges_challengeattempt WHERE outcome = 'success'"
    )
    by_worker: dict[str, set[str]] = {}
    for worker, challenge_id in tags:
        by_worker.setdefault(worker, set()).add(challenge_id[:8])
    assert set(by_worker) == {"A", "B"}
    assert all(len(t) == 1 for t in by_worker.values())
    assert by_worker["A"] != by_worker["B"]


@pytest.mark.server
async def test_the_audit_records_the_client_not_a_forged_header_nor_nginx(cluster):
    nginx, tls = cluster.nginx, cluster.tls
    # Refused on each worker (an unknown key string), audited with the client's address.
    for _ in range(2):
        status, _, body = await asyncio.to_thread(
            https,
            nginx,
            tls,
            "POST",
            "/api/token/challenge",
            b'{"pub": "not-a-key"}',
            Content_Type="application/json",
        )
        assert (status, json.loads(body)["code"]) == (400, "invalid_pub")
    sql = "SELECT DISTINCT client_ip, worker FROM challenges_challengeattempt WHERE outcome = 'invalid_pub'"
    expected = [(CLIENT_ADDR, "A"), (CLIENT_ADDR, "B")]
    assert servers.wait_for(lambda: sorted(cluster.rows(sql)) == expected, timeout=5), cluster.rows(sql)
    addresses = {ip for (ip,) in cluster.rows("SELECT DISTINCT client_ip FROM challenges_challengeattempt")}
    assert addresses == {CLIENT_ADDR}  # never FORGED, never NGINX_ADDR, never 127.0.0.1


@pytest.mark.server
async def test_bodies_over_the_service_limit_are_refused_by_nginx(cluster):
    nginx, tls = cluster.nginx, cluster.tls
    json_headers = {"Content_Type": "application/json"}
    # One byte over the service's limit: nginx answers 413 itself; no worker sees it.
    status, _, body = await asyncio.to_thread(
        https, nginx, tls, "POST", "/api/token?size=over", b"x" * (MAX_FRAME_BYTES + 1), **json_headers
    )
    assert status == 413, body[:200]
    assert b"413 Request Entity Too Large" in body  # nginx's page, not the service's JSON
    # At the limit it reaches the service, which says what is wrong with it.
    status, _, body = await asyncio.to_thread(
        https, nginx, tls, "POST", "/api/token?size=limit", b"x" * MAX_FRAME_BYTES, **json_headers
    )
    assert (status, json.loads(body)["code"]) == (400, "invalid_json")
    # The admin's forms may be larger: Django answers (no CSRF cookie), not nginx.
    form = b"a=" + b"x" * (2 * MAX_FRAME_BYTES)
    status, _, body = await asyncio.to_thread(
        https, nginx, tls, "POST", "/admin/login/", form, Content_Type="application/x-www-form-urlencoded"
    )
    assert status == 403, body[:200]
    assert b"CSRF" in body
    assert servers.wait_for(
        lambda: any(ln["uri"] == "/api/token?size=limit" for ln in nginx.access_log()), timeout=5
    )
    upstream = {ln["uri"]: ln["upstream"] for ln in nginx.access_log()}
    assert upstream["/api/token?size=over"] == "-"
    assert upstream["/api/token?size=limit"] != "-"


@pytest.mark.server
async def test_nginx_serves_the_admins_static_files(cluster):
    nginx, tls = cluster.nginx, cluster.tls
    status, _, page = await asyncio.to_thread(https, nginx, tls, "GET", "/admin/login/")
    assert status == 200, page[:200]
    stylesheets = re.findall(rb'href="(/static/admin/[^"]+\.css)"', page)
    assert stylesheets, page[:500]
    status, headers, css = await asyncio.to_thread(https, nginx, tls, "GET", stylesheets[0].decode())
    assert status == 200
    assert headers["content-type"].startswith("text/css")
    assert css
    served = [ln for ln in nginx.access_log() if ln["uri"] == stylesheets[0].decode()]
    assert served
    assert all(ln["upstream"] == "-" for ln in served)


# --- systemd ------------------------------------------------------------------------------


def make_serve_command() -> list[str]:
    """The Makefile's ``serve`` recipe, as make would run it for the unit's venv, with
    ``@VAR@`` where the unit has ``${VAR}``."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", "install", "serve", "VENV=/opt/tokenprovider/.venv",
         "HOST=@HOST@", "PORT=@PORT@", "WORKERS=@WORKERS@"],
        cwd=servers.ROOT, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    (line,) = out.stdout.splitlines()
    return shlex.split(line)


def test_systemd_unit_runs_make_serves_command():
    unit = read_unit(UNIT)
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["User"] == one["Group"] == "tokenprovider"
    assert service["EnvironmentFile"] == ["/etc/tokenprovider.env"]
    assert one["Restart"] == "on-failure"
    assert one["KillSignal"] == "SIGTERM"
    assert one["KillMode"] == "control-group"
    assert 10 < float(one["TimeoutStopSec"]) <= 30  # the service drains within 10 s
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
    }.items():
        assert one[key] == value, key
    env = unit_environment(service)
    assert env["DEBUG"] == "false"
    assert service["ReadWritePaths"] == [env["VAR_DIR"]] == ["/var/lib/tokenprovider"]
    assert one["StateDirectory"] == "tokenprovider"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    # ExecStart is make serve's command: DEBUG=false and the same argv.
    make = make_serve_command()
    assert make[0] == "DEBUG=false"
    (start,) = service["ExecStart"]
    assert [re.sub(r"\$\{(\w+)\}", r"@\1@", arg) for arg in shlex.split(start)] == make[1:]
    assert one["WorkingDirectory"] == "/opt/tokenprovider"


def test_systemd_analyze_verifies_the_unit(tmp_path):
    """The unit as committed, in a staged root that has its ExecStart's path and this
    machine's system units (systemd need not run)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: 'make deploy-tools' (as root) or apt-get install -y systemd"
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    for line in read_unit(UNIT)["Service"]["ExecStartPre"] + read_unit(UNIT)["Service"]["ExecStart"]:
        program = root / shlex.split(line)[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    system_units = Path("/usr/lib/systemd/system")
    assert system_units.is_dir(), "this machine has no systemd units to verify against"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    out = subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, ""), out.stdout + out.stderr
    # The check is not blind: a misspelt key makes it speak.
    broken = (
        (root / "etc/systemd/system" / UNIT.name).read_text().replace("NoNewPrivileges=", "NoNewPrivilege=")
    )
    (root / "etc/systemd/system" / UNIT.name).write_text(broken)
    out = subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Unknown key 'NoNewPrivilege'" in out.stdout + out.stderr
