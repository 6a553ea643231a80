"""The floor: the bare token flow on a plain ``websockets`` server.

The same frames and the same cryptography as the product (the pure
``challenges.protocol`` parser, ``authority.make_challenge``, PyNaCl verify,
``tokens.mint_token``) with no Django, Channels, channel layer, caps or
audit: what any Python server must spend on a flow. Each connection holds at
most one challenge, answered on the same socket::

    AUTHORITY_PRIVATE_KEY=bbaareq... python -m bench.floor --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from challenges import authority, protocol, tokens
from challenges.errors import ChallengeError, Code
from challenges.identity import parse_private_key

SIGNER = parse_private_key(os.environ["AUTHORITY_PRIVATE_KEY"])
CHALLENGE_TIMEOUT = 60.0
TOKEN_TTL = 86400


async def handle(ws: ServerConnection) -> None:
    host = ws.request.headers.get("Host", "") if ws.request else ""
    pending: tuple[authority.Challenge, Any] | None = None
    try:
        async for text in ws:
            try:
                message = protocol.parse_frame(text if isinstance(text, str) else "")
                if isinstance(message, protocol.TokenRequest):
                    challenge = authority.make_challenge(
                        audience=f"http://{host}", key=message.pub, timeout=CHALLENGE_TIMEOUT
                    )
                    pending = (challenge, message.pub)
                    frame = protocol.challenge_frame(
                        value=challenge.value,
                        challenge_id=challenge.id,
                        expires_at=challenge.expires_at,
                        raw=False,
                    )
                else:
                    if pending is None:
                        raise ChallengeError("no challenge is pending", code=Code.NO_CHALLENGE)
                    (challenge, key), pending = pending, None
                    if datetime.now(UTC) > challenge.expires_at:
                        raise ChallengeError("the challenge expired", code=Code.CHALLENGE_TIMEOUT)
                    key.verify(challenge.value, message.sig)
                    token = tokens.mint_token(signer=SIGNER, subject=key, ttl=TOKEN_TTL)
                    frame = protocol.token_frame(token.token)
            except ChallengeError as error:
                frame = protocol.error_frame(error)
            await ws.send(json.dumps(frame))
    except ConnectionClosed:
        pass


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done)
    async with serve(handle, "127.0.0.1", port, max_size=protocol.MAX_FRAME_BYTES, backlog=1024):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
