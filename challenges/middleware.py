"""Django middleware of the project's own.

:class:`HealthProbe` answers ``/api/health`` before Django checks the Host header
against ``ALLOWED_HOSTS``: a load balancer or an orchestrator (Compose, Kubernetes)
probes each worker at its own address (``Host: 10.0.0.5:8000``), which no public
host list names, and Django answered such a probe 400 (``DisallowedHost``). The
health answer names no host, so no Host header can poison it; every other path
still has its Host checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from . import views
from .httpguard import HEALTH


class HealthProbe:
    """Put it before ``CommonMiddleware`` (the first to read the Host) and after
    ``SecurityMiddleware`` (whose https redirect ``SECURE_REDIRECT_EXEMPT`` spares it)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info == HEALTH:
            return await views.health(request)
        return await self.get_response(request)
