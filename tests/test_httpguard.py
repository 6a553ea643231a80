"""Request bodies and slow clients are bounded before they cost memory, in real daphne and
uvicorn processes driven over raw sockets: a declared body over the limit is refused
before any of it is read, a streamed one once it passes the limit, a body that trickles
in is dropped after ``HTTP_BODY_TIMEOUT``, and HTTP requests count against the same
per-address cap as WebSockets. Every refusal is an audit row."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets.sync.client

from challenges.identity import PrivateKey, encode_buffer
from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.once]
BODY_TIMEOUT = 1.5
CAP = 3


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request, tmp_path_factory) -> Iterator[servers.Server]:
    tmp = tmp_path_factory.mktemp(request.param)
    env = servers.base_env(tmp, HTTP_BODY_TIMEOUT=str(BODY_TIMEOUT), MAX_CONNECTIONS_PER_IP=str(CAP))
    with servers.running(tmp, kind=request.param, env=env) as srv:
        yield srv
        log = srv.log()
    assert "Traceback" not in log, log
    assert "audit batch" not in log, log


def head(port: int, path: str, *, length: int | None = None, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket, timeout: float) -> tuple[int, bytes] | None:
    """The status and body of one response, or None if none came within ``timeout``
    (or the connection closed without one)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
        header, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [line for line in header.lower().split(b"\r\n") if line.startswith(b"content-length:")]
            length = int(lengths[0].split(b":")[1]) if lengths else None
            if length is not None and len(body) >= length:
                return int(header.split()[1]), body[:length]
    header, sep, body = data.partition(b"\r\n\r\n")
    return (int(header.split()[1]), body) if sep else None


def push(sock: socket.socket, total: int, *, seconds: float) -> int:
    """Send up to ``total`` bytes for at most ``seconds``; how many the kernel took."""
    sock.setblocking(False)
    block = b"x" * 65536
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < total and time.monotonic() < deadline:
        try:
            sent += sock.send(block[: total - sent])
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:  # the server closed the connection: it reads nothing more
            break
    return sent


def rss_kib(server: servers.Server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def refusals(server: servers.Server, outcome: str) -> int:
    return servers.refusals(server, outcome, "http")


def error_code(body: bytes) -> str:
    frame = json.loads(body)
    assert frame["type"] == "error", frame
    assert frame["value"], frame
    return str(frame["code"])


def test_a_declared_20_mb_body_is_refused_before_it_is_read(server):
    before = rss_kib(server)
    audited = refusals(server, "frame_too_large")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head(server.port, "/api/token/challenge", length=20_000_000))
        response = read_response(sock, timeout=5)
        elapsed = time.monotonic() - started
        assert response is not None, "no answer to the headers alone"
        status, body = response
        assert (status, error_code(body)) == (413, "frame_too_large")
        assert elapsed < 2
        # The server reads none of it: the body cannot be pushed through.
        assert push(sock, 20_000_000, seconds=3) < 15_000_000
    assert rss_kib(server) - before < 10_000  # KiB: far below the 20 MB body
    assert servers.wait_for(lambda: refusals(server, "frame_too_large") == audited + 1, timeout=5)


def test_a_chunked_body_over_the_limit_is_refused(server):
    audited = refusals(server, "frame_too_large")
    chunk = b"4000\r\n" + b"[" * 0x4000 + b"\r\n"  # 16 KiB
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head(server.port, "/api/token/challenge", chunked=True))
        sent = 0
        for _ in range(64):  # up to 1 MiB, far past the 64 KiB limit
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        response = read_response(sock, timeout=5)
    assert response is not None
    status, body = response
    assert (status, error_code(body)) == (413, "frame_too_large")
    assert servers.wait_for(lambda: refusals(server, "frame_too_large") == audited + 1, timeout=5)


def test_the_limit_is_the_paths(server):
    """64 KiB for the token API, 16 KiB for verify and introspection, Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) for the admin: 100 KB is too large for the API, not
    for the admin's login form. Each refusal is the error frame, before the body is read."""
    audited = refusals(server, "frame_too_large")
    for path, length, refused in [
        ("/api/token/verify", 20_000, True),
        ("/api/token/introspect", 20_000, True),
        ("/api/token", 100_000, True),
        ("/admin/login/", 100_000, False),
        ("/admin/login/", 3_000_000, True),
    ]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(head(server.port, path, length=length))
            if not refused:
                sock.sendall(b"a=" + b"b" * (length - 2))
            response = read_response(sock, timeout=5)
        assert response is not None, path
        assert (response[0] == 413) is refused, (path, length, response)
        if refused:
            assert error_code(response[1]) == "frame_too_large", path
    assert servers.wait_for(lambda: refusals(server, "frame_too_large") == audited + 4, timeout=5)


def test_a_body_that_trickles_in_is_dropped_after_the_timeout(server):
    audited = refusals(server, "invalid_request")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head(server.port, "/api/token/challenge", length=100))
        started = time.monotonic()
        closed = False
        for _ in range(40):  # one byte every 0.25 s: 10 s at most
            try:
                sock.sendall(b"{")
            except OSError:
                closed = True
                break
            sock.settimeout(0.25)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            closed = True
            if data:
                assert data.startswith(b"HTTP/1.1 408"), data
            break
        elapsed = time.monotonic() - started
    assert closed, "the server kept a trickling body open"
    assert elapsed < BODY_TIMEOUT + 2
    assert servers.wait_for(lambda: refusals(server, "invalid_request") == audited + 1, timeout=5)


def test_http_requests_count_against_the_per_address_cap(server):
    """The cap WebSockets count against: with it taken by sockets, an HTTP request is 429."""
    audited = refusals(server, "too_many_connections")
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(websockets.sync.client.connect(server.ws)) for _ in range(CAP)]
        response = exchange(server, "/api/token/challenge", b"{}")
        assert response is not None
        assert (response[0], error_code(response[1])) == (429, "too_many_connections")
        assert refusals(server, "too_many_connections") == audited + 1
        for ws in sockets[1:]:
            ws.close()
        # Slots are free again once the server has seen the sockets go (a request holds its
        # slot until Django has finished with it, a moment after the response).
        assert servers.wait_for(lambda: exchange(server, "/api/token/challenge", b"{}")[0] == 400, timeout=5)
        assert flow(server)


def exchange(server: servers.Server, path: str, body: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head(server.port, path, length=len(body)) + body)
        response = read_response(sock, timeout=5)
    assert response is not None, path
    return response


def flow(server: servers.Server) -> str:
    """The HTTP two-step through the guard: the body it read is the body Django sees."""
    user = PrivateKey.generate()
    challenge = post(server, "/api/token/challenge", {"pub": str(user.public)})
    sig = encode_buffer(user.sign(bytes(challenge["value"]["data"])))
    token = post(server, "/api/token", {"id": challenge["id"], "sig": sig})
    assert token["type"] == "token", token
    return str(token["value"])


def post(server: servers.Server, path: str, body: dict) -> dict:
    status, answer = exchange(server, path, json.dumps(body).encode())
    assert status == 200, (status, answer)
    return dict(json.loads(answer))


def get(port: int, path: str, host: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = read_response(sock, timeout=5)
    assert response is not None, path
    return response


@pytest.mark.parametrize("path", ["/.well-known/jwks.json", "/admin/login/", "/", "/api/token/verify"])
def test_a_foreign_host_is_refused_with_a_code_and_an_audit_row_not_a_traceback(server, path):
    """Django answered a Host outside ALLOWED_HOSTS with an HTML 400, no audit row, and an
    ERROR with its traceback in the log (the fixture checks there is none): any client
    could fill the log. The guard refuses it as the two-step and the sockets do."""
    audited = refusals(server, "invalid_host")
    status, body = get(server.port, path, "evil.example")
    assert (status, error_code(body)) == (403, "invalid_host")
    assert servers.wait_for(lambda: refusals(server, "invalid_host") == audited + 1, timeout=5)
    assert get(server.port, path, f"127.0.0.1:{server.port}")[0] != 403  # its own host passes


def test_the_probe_and_the_metrics_answer_at_any_host(server):
    """A load balancer probes, and Prometheus scrapes, a worker at its own address."""
    assert get(server.port, "/api/health", "10.0.0.5:8000")[0] == 200
    status, body = get(server.port, "/metrics", "10.0.0.5:8000")
    assert status == 200
    assert b"# HELP" in body
