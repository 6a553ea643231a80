"""An HTTP client for in-process tests that goes through the whole ASGI application
(the lifecycle, the HTTP guard, the two-step answered in ASGI, then Django), unlike
Django's test clients, which start at Django's handler."""

from __future__ import annotations

import json
from typing import Any

from channels.testing import HttpCommunicator

from tokensite.asgi import application

HOST = "testserver"


#: What an API endpoint answers a method it does not take, by the method it takes.
METHOD_NOT_ALLOWED = {
    method: {"error": "method_not_allowed", "error_description": f"use {method}"}
    for method in ("GET", "POST")
}


class Response:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        self.content = content

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]

    def json(self) -> Any:
        return json.loads(self.content)


class AsgiClient:
    def __init__(self, *, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.client = client

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        root_path: str = "",
    ) -> Response:
        given = {k.lower(): v for k, v in (headers or {}).items()}
        raw = [(k.encode(), v.encode()) for k, v in {"host": HOST, **given}.items()]
        comm = HttpCommunicator(application, method, path, body=body, headers=raw)
        comm.scope["client"] = self.client
        comm.scope["root_path"] = root_path
        response = await comm.get_response(timeout=10)
        await comm.wait(timeout=5)  # the application's own clean-up
        return Response(response["status"], response["headers"], response.get("body", b""))

    async def post(
        self,
        path: str,
        data: Any = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = (
            data
            if isinstance(data, bytes)
            else data.encode()
            if isinstance(data, str)
            else json.dumps(data).encode()
        )
        return await self.request("POST", path, body, {"content-type": content_type, **(headers or {})})

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return await self.request("GET", path, b"", headers)
