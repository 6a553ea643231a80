"""Property-based tests (hypothesis): arbitrary JSON, strings with surrogates and control
characters, byte encodings and key strings, against the parser, a live consumer on a real
daphne, and both HTTP steps. Every input gets a well-formed error (or a correct result):
never a 500, never a 1011 close, never an exception in the server log; and every refusal
is counted in the audit."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from challenges import protocol, tokens
from challenges.client import get_token_async
from challenges.errors import CLIENT_CODES, ChallengeError, Code
from challenges.identity import PrivateKey, decode_bytes, parse_public_key
from tests import servers

pytestmark = pytest.mark.once

SERVER_CODES = {str(code) for code in Code if code not in CLIENT_CODES}
#: Letters, digits, controls, surrogates and the rest: what a hostile client can put in JSON.
any_char = st.characters(codec=None, categories=["L", "N", "P", "S", "Z", "Cc", "Cs", "Cf"])
text = st.text(any_char, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
key_strings = st.one_of(
    text,
    st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=52, max_size=52).map(lambda s: "bbaarei" + s),
    st.binary(min_size=32, max_size=32).map(
        lambda raw: "b" + base64.b32encode(b"\x08\x01\x12\x20" + raw).decode().lower().rstrip("=")
    ),
)
signatures = st.one_of(
    json_values,
    st.binary(max_size=80).map(lambda b: {"type": "Buffer", "data": list(b)}),
    st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()),
    st.lists(st.integers(-5, 300), max_size=70),
)
frames = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.just("token")}, optional={"pub": key_strings | json_values}),
    st.fixed_dictionaries(
        {"type": st.just("challenge")},
        optional={"sig": signatures, "id": text | json_values, "pub": key_strings},
    ),
    st.dictionaries(st.sampled_from(["type", "pub", "sig", "id"]), json_values, max_size=4),
)
raw_texts = st.one_of(
    frames.map(json.dumps), text, st.just("[" * 5000), st.just('{"type":"token","pub":"\\ud800"}')
)
bodies = st.one_of(
    frames.map(lambda f: json.dumps(f).encode()),
    frames.map(lambda f: json.dumps(f, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    frames.map(lambda f: json.dumps(f).encode("utf-16")),
    st.binary(max_size=200),
    st.just(b"[" * 5000),
)


def attempt(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, ChallengeError | None]:
    """What ``fn`` returned, or the coded error it raised (any other exception escapes)."""
    try:
        return fn(*args, **kwargs), None
    except ChallengeError as error:
        return None, error


@given(raw_texts)
def test_the_parser_answers_every_text_with_a_message_or_a_coded_error(raw: str) -> None:
    message, error = attempt(protocol.parse_frame, raw)
    if error is not None:
        assert str(error.code) in SERVER_CODES
        assert error.message
    else:
        assert isinstance(message, protocol.TokenRequest | protocol.ChallengeResponse)


@given(key_strings | json_values)
def test_key_strings_parse_or_fail_with_a_coded_error(value: Any) -> None:
    key, error = attempt(parse_public_key, value)
    if error is not None:
        assert error.code == Code.INVALID_PUB
    else:
        assert str(key) == value  # only the canonical form is accepted


@given(signatures)
def test_byte_encodings_decode_or_fail_with_a_coded_error(value: Any) -> None:
    decoded, error = attempt(decode_bytes, value, allow_base64=True)
    if error is not None:
        assert error.code == Code.INVALID_SIG_ENCODING
    else:
        assert isinstance(decoded, bytes)


class Live:
    """A real daphne, its sockets, and what it answered, by code."""

    def __init__(self, server: servers.Server) -> None:
        self.server = server
        self.sock: ClientConnection | None = None
        self.told: collections.Counter[str] = collections.Counter()

    def ws(self, raw: str) -> dict[str, Any] | None:
        if self.sock is None:
            self.sock = connect(self.server.ws, max_size=2**20, legacy=True)  # kept across examples
        try:
            payload = raw.encode()
        except UnicodeEncodeError:  # a lone surrogate: no valid text frame can carry it
            return self.invalid_utf8(raw.encode("utf-8", "surrogatepass"))
        try:
            self.sock.send(payload, text=True)
            reply = json.loads(self.sock.recv(timeout=10))
        except ConnectionClosed as exc:
            closed: ConnectionClosed | None = exc
        else:
            closed = None
        if closed is not None:
            self.sock = None
            assert closed.rcvd is not None
            assert closed.rcvd.code in (1000, 4008, 4009), closed  # never 1011
            raise closed
        return self.count(reply)

    def invalid_utf8(self, payload: bytes) -> None:
        """A text frame that is not UTF-8 is refused by the server's WebSocket layer before the
        application sees it (RFC 6455 §8.1): the connection is closed with 1007, nothing is
        answered, and the next connection is served as usual."""
        assert self.sock is not None
        sock, self.sock = self.sock, None
        sock.send(payload, text=True)
        with pytest.raises(ConnectionClosed) as closed:
            sock.recv(timeout=10)
        assert closed.value.rcvd is not None, closed.value
        assert closed.value.rcvd.code == 1007, closed.value
        self.told[Code.INVALID_UTF8] += 1
        return None

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request("POST", path, body, {"content-type": "application/json"})
            response = conn.getresponse()
            status, reply = response.status, json.loads(response.read())
        finally:
            conn.close()
        assert status < 500, (status, reply)
        assert (status == 200) == (reply["type"] != "error"), (status, reply)
        return self.count(reply)

    def count(self, reply: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(reply, dict)
        assert reply["type"] in ("error", "challenge", "token"), reply
        if reply["type"] == "error":
            assert reply["code"] in SERVER_CODES, reply
            assert isinstance(reply["value"], str)
            assert reply["value"]
            self.told[reply["code"]] += 1
        return reply


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("properties")
    env = servers.base_env(
        tmp, RATE_LIMIT_PER_MINUTE="0", MAX_ERRORS_PER_CONNECTION="100000", LOG_LEVEL="DEBUG"
    )
    server = servers.start(tmp, kind="daphne", env=env)
    state = Live(server)
    try:
        yield state
    finally:
        if state.sock is not None:
            state.sock.close()
        server.stop()
    log = server.log()
    assert "Traceback" not in log
    assert " ERROR " not in log
    # Every refusal was counted (aggregated rows: add their counts up).
    rows = server.rows("SELECT outcome, SUM(count) FROM challenges_challengeattempt GROUP BY outcome")
    audited = {
        outcome: n
        for outcome, n in rows
        if outcome not in ("success", "challenge_timeout", "server_shutdown")
    }
    assert audited == {code: n for code, n in state.told.items()}


HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(raw_texts)
@example("\ud800")  # not UTF-8 on the wire: see Live.invalid_utf8
@example('{"type":"token","pub":"\\ud800"}')  # a lone surrogate escaped in JSON: the app's to refuse
def test_a_live_consumer_answers_every_frame_with_a_coded_error_or_a_challenge(live: Live, raw: str) -> None:
    with contextlib.suppress(ConnectionClosed):  # a policy close after its error frame: checked in Live.ws
        live.ws(raw)


@HYPOTHESIS
@given(bodies)
def test_the_challenge_step_answers_every_body_with_a_coded_error_or_a_challenge(
    live: Live, body: bytes
) -> None:
    live.post("/api/token/challenge", body)


@HYPOTHESIS
@given(bodies)
def test_the_token_step_answers_every_body_with_a_coded_error(live: Live, body: bytes) -> None:
    assert live.post("/api/token", body)["type"] == "error"


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_text_frame_that_is_not_utf8_fails_the_connection_and_nothing_else(
    tmp_path: Path, kind: str
) -> None:
    """Refused by the server's WebSocket layer, which closes with 1007 (uvicorn's own; daphne's
    through challenges.daphneguard), audited as invalid_utf8, logged without a traceback, and
    the next client gets its token."""
    authority = PrivateKey.generate()
    env = servers.base_env(tmp_path, RATE_LIMIT_PER_MINUTE="0", AUTHORITY_PRIVATE_KEY=str(authority))
    with servers.running(tmp_path, kind=kind, env=env) as server:
        live = Live(server)
        for _ in range(3):
            live.ws("\ud800")
        user = PrivateKey.generate()
        token = asyncio.run(get_token_async(server.ws, user, timeout=10))
        audited = servers.wait_for(lambda: servers.refusals(server, Code.INVALID_UTF8) == 3, timeout=5)
        log = server.log()
    assert audited, servers.refusals(server, Code.INVALID_UTF8)
    assert tokens.verify_token(token, issuer=authority.public)["sub"] == str(user.public)
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    if kind == "uvicorn":
        assert log.count("a client sent a text frame that is not UTF-8: closed (1007)") == 3, log
