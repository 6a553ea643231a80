"""Helpers for driving the consumer in-process with WebsocketCommunicator."""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from challenges.identity import PrivateKey, encode_buffer
from challenges.models import ChallengeAttempt, IssuedToken
from tokensite.asgi import application

HOST = "127.0.0.1:8000"
AUDIENCE = f"http://{HOST}"


async def connect(
    *,
    origin: str | None = None,
    host: str = HOST,
    client: tuple[str, int] = ("127.0.0.9", 5000),
    scheme: str = "ws",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> WebsocketCommunicator:
    headers = [(b"host", host.encode()), (b"user-agent", b"pytest"), *(extra or [])]
    if origin:
        headers.append((b"origin", origin.encode()))
    comm = WebsocketCommunicator(application, "/ws/token", headers=headers)
    comm.scope["client"] = client
    comm.scope["scheme"] = scheme
    connected, _ = await comm.connect()
    assert connected
    return comm


async def send(comm: WebsocketCommunicator, frame: dict[str, Any]) -> dict[str, Any]:
    await comm.send_to(text_data=json.dumps(frame))
    return await receive(comm)


async def receive(comm: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    frame = json.loads(await comm.receive_from(timeout))
    assert isinstance(frame, dict)
    return frame


async def challenge(comm: WebsocketCommunicator, key: PrivateKey) -> dict[str, Any]:
    frame = await send(comm, {"type": "token", "pub": str(key.public)})
    assert frame["type"] == "challenge", frame
    return frame


def sign_frame(key: PrivateKey, challenge_frame: dict[str, Any], **extra: Any) -> dict[str, Any]:
    value = bytes(challenge_frame["value"]["data"])
    return {"type": "challenge", "sig": encode_buffer(key.sign(value)), **extra}


@database_sync_to_async
def attempts() -> list[ChallengeAttempt]:
    return list(ChallengeAttempt.objects.order_by("id"))


@database_sync_to_async
def tokens() -> list[IssuedToken]:
    return list(IssuedToken.objects.select_related("attempt").order_by("id"))
