"""Revocation across real worker processes: two servers share one database (as workers
on several hosts share PostgreSQL). A token taken back with the command line is inactive
at once on the other worker, and a blocked key can start no flow there within its poll."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import pytest

from challenges.client import get_token_async
from challenges.errors import TokenClientError
from challenges.identity import PrivateKey
from challenges.tokens import verify_token
from tests import servers

pytestmark = pytest.mark.server
AUTHORITY = PrivateKey.generate()
BEARER = "introspection-bearer-for-the-test"


def introspect(server: servers.Server, token: str) -> dict:
    request = urllib.request.Request(
        server.http + "/api/token/introspect",
        data=json.dumps({"token": token}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {BEARER}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def command(server: servers.Server, *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "tokens", *args],
        cwd=servers.ROOT, env=server.env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


async def test_revoked_and_blocked_on_one_worker_are_refused_by_the_other(tmp_path):
    # Rate limits are not the subject here: the polling loops below would run into them.
    env = servers.base_env(
        tmp_path, AUTHORITY_PRIVATE_KEY=str(AUTHORITY), INTROSPECTION_TOKEN=BEARER, RATE_LIMIT_PER_MINUTE="0"
    )
    with (
        servers.running(tmp_path / "a", kind="daphne", env=dict(env, WORKER_ID="A")) as a,
        servers.running(tmp_path / "b", kind="uvicorn", env=dict(env, WORKER_ID="B"), migrate_db=False) as b,
    ):
        user, other = PrivateKey.generate(), PrivateKey.generate()
        first = await get_token_async(a.ws, user)
        second = await get_token_async(a.ws, user)
        third = await get_token_async(a.ws, other)
        assert all(introspect(b, t)["active"] for t in (first, second, third))

        command(a, "revoke", verify_token(first, issuer=AUTHORITY.public)["jti"])
        assert introspect(b, first) == {"active": False}  # at once: introspection reads the database
        assert introspect(b, second)["active"] is True

        command(a, "block", str(user.public))
        assert introspect(b, second) == {"active": False}
        assert introspect(b, third)["active"] is True  # another key is untouched
        deadline, refused = time.monotonic() + 5, None
        while time.monotonic() < deadline:  # each worker reloads the blocked keys every second
            try:
                await get_token_async(b.ws, user, timeout=10)
            except TokenClientError as error:
                refused = str(error.code)
                break
            await asyncio.sleep(0.1)
        assert refused == "key_blocked", refused
        assert await get_token_async(b.ws, other)  # others still get tokens

        command(a, "unblock", str(user.public))
        deadline, token = time.monotonic() + 5, None
        while token is None and time.monotonic() < deadline:
            try:
                token = await get_token_async(b.ws, user, timeout=10)
            except TokenClientError:
                await asyncio.sleep(0.2)
        assert token is not None
    for server in (a, b):
        assert "Traceback" not in server.log()
