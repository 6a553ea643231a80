"""The WebSocket endpoint ``/ws/token``: a thin translation to :class:`TokenSession`."""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from . import flows, protocol, session
from .errors import ChallengeError
from .origins import client_info

#: Close codes in the application range (daphne/autobahn refuse 1008 and 1009 from an app):
#: 4008 mirrors 1008 "policy violation", 4009 mirrors 1009 "message too big".
CLOSE_POLICY = 4008
CLOSE_TOO_LARGE = 4009


class TokenConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    #: No channel per connection: routing goes through the process inbox (challenges.inbox).
    channel_layer_alias = "__no_layer_per_connection__"
    session: session.TokenSession | None = None

    async def connect(self) -> None:
        await self.accept()
        service = flows.get_service()
        try:
            client = client_info(self.scope)
            service.connection_opened(client.ip)
        except ChallengeError as error:
            refused = client_info(self.scope, validate=False)
            await service.record_error(error, client=refused)
            await self.send(text_data=json.dumps(protocol.error_frame(error)))
            await self.close(code=CLOSE_POLICY)
            return
        self.session = session.TokenSession(
            service=service,
            client=client,
            send=self._send_json,
            max_errors=_settings().MAX_ERRORS_PER_CONNECTION,
        )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None:
            return
        if not await self.session.receive(text=text_data, data=bytes_data):
            await self.close(code=CLOSE_TOO_LARGE if _too_large(text_data) else CLOSE_POLICY)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # daphne cancels an application still busy 10 s after its client left, and then
        # disconnect() never runs: release the connection here too, or its count leaks.
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()

    async def disconnect(self, code: int) -> None:
        self._release()

    def _release(self) -> None:
        if self.session is not None:
            self.session.close(resume_grace=_settings().RELAY_RESUME_GRACE)
            self.session.service.connection_closed(self.session.client.ip)
            self.session = None

    async def _send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame))


def _too_large(text: str | None) -> bool:
    try:
        protocol.check_size(text=text)
    except ChallengeError:
        return True
    return False


def _settings() -> Any:
    from django.conf import settings

    return settings
