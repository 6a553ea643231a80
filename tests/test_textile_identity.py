"""The browser module with a real ``@textile/crypto`` identity, under Node, against daphne.

An existing Textile app passes its ``PrivateKey`` to ``getToken`` unchanged; this runs
``challenges/static/challenges/token-client.js`` in Node 20 with ``@textile/crypto`` 4.2.1
(installed by ``make test`` from ``tests/node/package-lock.json``) and the ``ws`` package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from challenges import tokens
from challenges.identity import PrivateKey
from tests import servers
from tests.conftest import VECTOR_PRIVATE, VECTOR_PUBLIC

pytestmark = [pytest.mark.server, pytest.mark.once]
NODE_DIR = servers.ROOT / "tests" / "node"
MODULE = servers.ROOT / "challenges" / "static" / "challenges" / "token-client.js"
AUTHORITY = PrivateKey.generate()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not shutil.which("node") or not (NODE_DIR / "node_modules" / "@textile" / "crypto").is_dir():
        raise RuntimeError("node and tests/node/node_modules are needed: run `make node-deps` (npm ci)")
    tmp = tmp_path_factory.mktemp("node")
    env = servers.base_env(tmp, AUTHORITY_PRIVATE_KEY=str(AUTHORITY))
    with servers.running(tmp, kind="daphne", env=env) as srv:
        yield srv


def run_node(server, tmp_path: Path, *key: str) -> dict:
    module = tmp_path / "token-client.mjs"  # Node 20 reads ES modules by extension
    module.write_text(MODULE.read_text())
    out = subprocess.run(
        ["node", "get-token.mjs", module.as_uri(), server.ws, server.http, *key],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_textile_crypto_identity_gets_a_token(server, tmp_path):
    result = run_node(server, tmp_path)
    assert "token" in result, result
    claims = tokens.verify_token(result["token"], issuer=AUTHORITY.public)
    assert claims["sub"] == result["pub"]
    assert result["pub"].startswith("bbaarei")


def test_textile_crypto_reads_the_protocol_vector_key_the_same_way(server, tmp_path):
    result = run_node(server, tmp_path, VECTOR_PRIVATE)
    assert result["pub"] == VECTOR_PUBLIC
    assert tokens.verify_token(result["token"], issuer=AUTHORITY.public)["sub"] == VECTOR_PUBLIC
