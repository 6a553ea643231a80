"""Helpers for the browser tests: Debian's Chromium, and a scripted provider.

Chromium is launched by path (Playwright's own browser download cannot work
here); a missing binary fails the test with the command that installs it.

:class:`ScriptedProvider` is a real WebSocket server on a free loopback port
that plays one scenario per path (a challenge naming another audience, a raw
challenge, an error frame, silence ...): the cases the real provider never
produces, which the client must still handle. It records every frame it
receives and when the client closed the socket.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from challenges import authority
from challenges.identity import PrivateKey, encode_buffer, parse_public_key

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The audience the client is told to expect when it talks to the scripted provider.
APP_AUDIENCE = "http://app.test"
#: docs/PROTOCOL.md "Vectors": the raw challenge, and its signature by the vector key.
VECTOR_CHALLENGE = bytes(range(32))
VECTOR_SIGNATURE = bytes.fromhex(
    "00c1db988bb12fd7351a6054ae3fac90fab7e4fc56b1651c7181f5f55f896f66"
    "3933d3a90605d9058e9d0ac45950ee2d3c9c9b14857415587179fe0ccac35f09"
)


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Chromium is missing at {path}: run 'make chromium' (or 'apt-get install -y chromium' "
            "as root), or set CHROMIUM=/path/to/chromium. These tests never download a browser.",
            pytrace=False,
        )
    return path


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_path(), args=ARGS)


@dataclass
class Connection:
    path: str
    received: list[dict[str, Any]] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)


class ScriptedProvider:
    """A WebSocket server that plays the scenario named by the request path."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self._server = serve(self._handle, "127.0.0.1", 0)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, scenario: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{scenario}"

    def only(self, scenario: str) -> Connection:
        found = [c for c in self.connections if c.path == f"/{scenario}"]
        assert len(found) == 1, f"expected one connection for {scenario}, got {len(found)}"
        return found[0]

    def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(path=ws.request.path if ws.request else "")
        self.connections.append(conn)
        try:
            self._play(ws, conn, conn.path.strip("/"))
            for message in ws:  # until the client closes
                conn.received.append(json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            conn.closed.set()

    def _recv(self, ws: ServerConnection, conn: Connection) -> dict[str, Any]:
        frame = json.loads(ws.recv(timeout=10))
        conn.received.append(frame)
        return frame

    def _play(self, ws: ServerConnection, conn: Connection, scenario: str) -> None:
        request = self._recv(ws, conn)
        if scenario == "silent":
            return
        if scenario == "hang-up":
            ws.close(1011, "scripted hang-up")
            return
        if scenario == "error":  # the tutorial's server: no code
            ws.send(json.dumps({"type": "error", "value": "missing public key (pub)"}))
            return
        if scenario == "error-coded":
            ws.send(json.dumps({"type": "error", "value": "this key is blocked", "code": "key_blocked"}))
            return
        if scenario == "not-json":
            ws.send("<html>502 Bad Gateway</html>")
            return
        pub = request.get("pub")
        value, raw = self._challenge(scenario, pub)
        frame: dict[str, Any] = {"type": "challenge", "value": encode_buffer(value)}
        if scenario != "raw-unflagged":  # the tutorial's server sends only type and value
            frame.update(id="scripted-challenge-id-0001", expires_at="2099-01-01T00:00:00Z", raw=raw)
        ws.send(json.dumps(frame))
        answer = self._recv(ws, conn)
        sig = bytes(answer["sig"]["data"])
        parse_public_key(pub).verify(value, sig)  # raises (and the client times out) if wrong
        ws.send(json.dumps({"type": "token", "value": f"token-for-{pub}"}))

    def _challenge(self, scenario: str, pub: Any) -> tuple[bytes, bool]:
        audience, key, purpose = APP_AUDIENCE, pub, "api-token"
        if scenario in ("raw", "raw-unflagged"):
            return VECTOR_CHALLENGE, scenario == "raw"
        if scenario == "text-flagged-raw":
            audience = "https://elsewhere.example"
        elif scenario == "not-a-text":
            return b"\x00" * 48, False
        elif scenario == "other-audience":
            audience = "https://elsewhere.example"
        elif scenario == "other-key":
            key = str(PrivateKey.generate().public)
        elif scenario == "other-purpose":
            purpose = "login"
        elif scenario != "ok":
            raise AssertionError(f"unknown scenario {scenario}")
        text = authority.make_challenge(audience=audience, key=parse_public_key(key), timeout=60).value
        text = text.replace(b"purpose: api-token", f"purpose: {purpose}".encode())
        return text, scenario == "text-flagged-raw"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


@contextmanager
def scripted_provider() -> Iterator[ScriptedProvider]:
    provider = ScriptedProvider()
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


#: Runs getToken in the page with instrumented timers and sockets; returns what
#: happened. ``signer``: "webcrypto" (a generated identity), "vector" (the vectors'
#: key), "vector-sync" (returns the vectors' signature synchronously), "vector-buffer"
#: (a Node-Buffer-like Uint8Array subclass), "never" (never resolves), "junk-pub".
RUN_GET_TOKEN = """
async ({clientUrl, options, signer, vector, abortAfterMs}) => {
  const client = await import(clientUrl);
  const live = new Set();
  const sockets = [];
  const realSetTimeout = window.setTimeout, realClearTimeout = window.clearTimeout;
  const RealWebSocket = window.WebSocket;
  window.setTimeout = (fn, ms, ...args) => {
    const id = realSetTimeout(() => { live.delete(id); fn(...args); }, ms);
    live.add(id);
    return id;
  };
  window.clearTimeout = (id) => { live.delete(id); realClearTimeout(id); };
  window.WebSocket = class extends RealWebSocket {
    constructor(...args) { super(...args); sockets.push(this); }
  };
  const signCalls = [];
  let identity;
  if (signer === "webcrypto") identity = await client.Ed25519Identity.generate();
  else identity = await client.Ed25519Identity.fromString(vector.priv);
  const inner = identity;
  const fromHex = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
  class NodeBufferLike extends Uint8Array { toJSON() { return {type: "Buffer", data: Array.from(this)}; } }
  const wrapped = {
    public: signer === "junk-pub" ? {toString: () => "not-a-key"} : inner.public,
    sign(bytes) {
      signCalls.push(Array.from(bytes));
      if (signer === "never") return new Promise(() => {});
      if (signer === "vector-sync") return fromHex(vector.signature);
      if (signer === "vector-buffer") return inner.sign(bytes).then((s) => NodeBufferLike.from(s));
      return inner.sign(bytes);
    },
  };
  const controller = new AbortController();
  if (abortAfterMs) realSetTimeout(() => controller.abort(), abortAfterMs);
  const result = {pub: String(wrapped.public)};
  const started = performance.now();
  try {
    const token = await client.getToken({...options, identity: wrapped, signal: controller.signal});
    Object.assign(result, {ok: true, token});
  } catch (error) {
    Object.assign(result, {
      ok: false, isError: error instanceof Error, code: error.code, message: error.message,
    });
  } finally {
    window.setTimeout = realSetTimeout;
    window.clearTimeout = realClearTimeout;
    window.WebSocket = RealWebSocket;
  }
  result.ms = performance.now() - started;
  result.signCalls = signCalls;
  result.liveTimers = live.size;
  result.socketStates = sockets.map((s) => s.readyState);
  return result;
}
"""
