"""The load generator: complete token flows against one server, or across two.

Run as a separate process, pinned to its own CPU, so the client does not
share a core with the server under test::

    python -m bench.loadgen '{"urls": ["ws://127.0.0.1:8001/ws/token"], "concurrency": 16, "flows": 1000}'

It prints one JSON object (:class:`Result`). Each flow is, by ``mode``:

* ``one``: connect, ``token`` frame, challenge, sign, ``challenge`` frame,
  token, on one socket;
* ``same`` / ``other``: the challenge comes from one socket, which is closed,
  and the signature goes with the challenge's ``id`` on a second socket to the
  same server or to the other one (with two URLs; directions alternate), so
  the only difference between the two is the routing between workers;
* ``http``: the HTTP two-step, ``POST /api/token/challenge`` then
  ``POST /api/token``, on one kept-alive connection per client (as an app
  server would hold one), alternating the servers when there are two;
* ``grpcweb``: ``GetToken`` over gRPC-Web on a WebSocket, framed as the Hub's
  JavaScript client frames it, with the API key ``api_key``.

Latency is from the start of the connect to the token frame; the socket's
closing handshake follows outside it. Every failure is counted by kind
(``http_500``, ``close_1011``, ``error_<code>``, ``timeout`` ...), never raised.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import nacl.signing
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from challenges.identity import encode_buffer, format_public_key, parse_public_key
from challenges.tokens import verify_token


@dataclass
class Spec:
    urls: list[str]
    concurrency: int
    flows: int
    cpu: int | None = None
    #: The authority's public key string: the first token of the run is verified against it.
    issuer: str = ""
    flow_timeout: float = 30.0
    run_timeout: float = 300.0
    #: one, same, other, http or grpcweb (see the module's docstring).
    mode: str = "one"
    #: The API key a grpcweb flow sends (one the server takes without a signature).
    api_key: str = ""


@dataclass
class Result:
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    client_cpu: float = 0.0
    extensions: str = ""

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


class FlowFailed(Exception):
    """The server answered with an error frame or an unexpected frame."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Identity:
    key: nacl.signing.SigningKey
    pub: str

    @classmethod
    def generate(cls) -> Identity:
        key = nacl.signing.SigningKey.generate()
        return cls(key=key, pub=format_public_key(bytes(key.verify_key)))

    def answer(self, challenge: dict[str, Any], *, with_id: bool) -> str:
        value = bytes(challenge["value"]["data"])
        frame: dict[str, Any] = {"type": "challenge", "sig": encode_buffer(self.key.sign(value).signature)}
        if with_id:
            frame["id"] = challenge["id"]
        return json.dumps(frame)


def open_socket(url: str, *, timeout: float = 30.0, compression: bool = True) -> Any:
    """The client's connect: permessage-deflate offered as browsers do (unless told not to), no pings."""
    return connect(
        url,
        max_size=2**16,
        open_timeout=timeout,
        close_timeout=timeout,
        ping_interval=None,
        compression="deflate" if compression else None,
    )


async def receive(ws: ClientConnection, expected: str) -> dict[str, Any]:
    frame = json.loads(await ws.recv())
    if not isinstance(frame, dict):
        raise FlowFailed("bad_frame")
    if frame.get("type") == "error":
        raise FlowFailed(f"error_{frame.get('code')}")
    if frame.get("type") != expected:
        raise FlowFailed(f"unexpected_{frame.get('type')}")
    return frame


async def ask(ws: ClientConnection, who: Identity) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "token", "pub": who.pub}))
    return await receive(ws, "challenge")


async def flow_on(ws: ClientConnection, who: Identity) -> str:
    """One flow on an open socket; returns the token."""
    challenge = await ask(ws, who)
    await ws.send(who.answer(challenge, with_id=False))
    return str((await receive(ws, "token"))["value"])


def classify(exc: BaseException) -> str:
    if isinstance(exc, FlowFailed):
        return exc.kind
    if isinstance(exc, websockets.InvalidStatus):
        return f"http_{exc.response.status_code}"
    if isinstance(exc, websockets.ConnectionClosed):
        return f"close_{exc.rcvd.code if exc.rcvd else 'none'}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return f"os_{exc.errno}"
    return type(exc).__name__


async def _same(url: str, who: Identity, result: Result) -> tuple[str, float]:
    async with open_socket(url) as ws:
        token = await flow_on(ws, who)
        done = time.perf_counter()
        if not result.extensions:
            result.extensions = ",".join(e.name for e in ws.protocol.extensions) or "none"
    return token, done


async def _cross(first: str, second: str, who: Identity) -> tuple[str, float]:
    async with open_socket(first) as ws:
        challenge = await ask(ws, who)
    async with open_socket(second) as ws:
        await ws.send(who.answer(challenge, with_id=True))
        token = str((await receive(ws, "token"))["value"])
        done = time.perf_counter()
    return token, done


class Http:
    """A minimal HTTP/1.1 client: JSON POSTs on one kept-alive connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        data = json.dumps(body).encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        status = int((await reader.readline()).split()[1])
        length, keep = 0, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                keep = False
        frame = json.loads(await reader.readexactly(length))
        if not keep:
            await self.close()
        if status != 200:
            raise FlowFailed(f"error_{frame.get('code')}" if isinstance(frame, dict) else f"http_{status}")
        return dict(frame)

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _http(first: Http, second: Http, who: Identity) -> tuple[str, float]:
    challenge = await first.post("/api/token/challenge", {"pub": who.pub})
    value = bytes(challenge["value"]["data"])
    sig = encode_buffer(who.key.sign(value).signature)
    token = await second.post("/api/token", {"id": challenge["id"], "sig": sig})
    return str(token["value"]), time.perf_counter()


def _grpc_frame(message: bytes) -> bytes:
    return b"\x00" + b"\x00" + len(message).to_bytes(4, "big") + message


async def _grpcweb(url: str, who: Identity, api_key: str) -> tuple[str, float]:
    """The Hub client's framing: metadata, key, (challenge), signature and half-close, (token)."""
    base = url.rsplit("/ws/token", 1)[0]
    async with connect(
        base + "/threads.pb.API/GetToken",
        subprotocols=[Subprotocol("grpc-websockets")],
        ping_interval=None,
        max_size=2**16,
    ) as ws:
        metadata = (
            f"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\nx-textile-api-key: {api_key}\r\n"
        )
        key = who.pub.encode()
        await ws.send(metadata.encode())
        await ws.send(_grpc_frame(b"\x0a" + bytes([len(key)]) + key))
        challenge = await _grpc_data(ws)
        if challenge[:2] != b"\x0a\x20":
            raise FlowFailed("grpc_no_challenge")
        sig = who.key.sign(challenge[2:]).signature
        await ws.send(_grpc_frame(b"\x12\x40" + sig))
        await ws.send(b"\x01")
        token = await _grpc_data(ws)
        done = time.perf_counter()
        if token[:1] != b"\x12":
            raise FlowFailed("grpc_no_token")
        return token[2:].decode() if token[1] < 0x80 else token[3:].decode(), done


async def _grpc_data(ws: ClientConnection) -> bytes:
    """The next data frame's message; a trailer block instead is the call's error."""
    while True:
        message = await ws.recv()
        if not isinstance(message, bytes) or not message:
            continue
        if message[0] & 0x80:
            block = message[5:].decode("latin-1")
            if "grpc-status" in block and "grpc-status: 0" not in block:
                raise FlowFailed("grpc_" + block.split("grpc-message:")[-1].strip().replace(" ", "_")[:40])
            continue
        return message[5 : 5 + int.from_bytes(message[1:5], "big")]


async def run(spec: Spec) -> Result:
    result = Result()
    counter = itertools.count()
    errors: Counter[str] = Counter()
    checked = False

    async def slot() -> None:
        nonlocal checked
        who = Identity.generate()  # one key per client: MAX_PENDING_PER_KEY is never hit
        clients = [Http(url.replace("ws://", "http://")) for url in spec.urls] if spec.mode == "http" else []
        while (n := next(counter)) < spec.flows:
            started = time.perf_counter()
            first, other = n % len(spec.urls), (n + 1) % len(spec.urls)
            try:
                async with asyncio.timeout(spec.flow_timeout):
                    if spec.mode == "one":
                        token, done = await _same(spec.urls[first], who, result)
                    elif spec.mode == "http":
                        token, done = await _http(clients[first], clients[other], who)
                    elif spec.mode == "grpcweb":
                        token, done = await _grpcweb(spec.urls[first], who, spec.api_key)
                    else:
                        second = other if spec.mode == "other" else first
                        token, done = await _cross(spec.urls[first], spec.urls[second], who)
                if not checked and spec.issuer:
                    checked = True
                    verify_token(token, issuer=parse_public_key(spec.issuer))
            except Exception as exc:
                errors[classify(exc)] += 1
                who = Identity.generate()  # its failed challenge may still be pending
                for client in clients:
                    await client.close()
            else:
                result.ok += 1
                result.latencies_ms.append((done - started) * 1000)
        for client in clients:
            await client.close()

    cpu, started = time.process_time(), time.perf_counter()
    try:
        async with asyncio.timeout(spec.run_timeout):
            await asyncio.gather(*(slot() for _ in range(spec.concurrency)))
    except TimeoutError:
        errors["run_timeout"] += 1
    result.elapsed = time.perf_counter() - started
    result.client_cpu = (time.process_time() - cpu) / max(result.elapsed, 1e-9)
    result.errors = dict(errors)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("spec", help="a JSON object with the fields of bench.loadgen.Spec")
    spec = Spec(**json.loads(parser.parse_args().spec))
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    print(json.dumps(asdict(asyncio.run(run(spec)))))


if __name__ == "__main__":
    main()
