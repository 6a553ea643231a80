"""Start and stop the runtime with the server, whichever server it is.

* **uvicorn** (``make serve``) has the ASGI lifespan: :class:`LifecycleApp`
  starts the runtime on ``lifespan.startup`` and stops it on
  ``lifespan.shutdown``. But uvicorn closes every WebSocket (code 1012)
  *before* that shutdown event, too late to tell a waiting client why; so at
  startup it also wraps the server's SIGTERM/SIGINT handlers: on the signal,
  the runtime drains first (each pending challenge ends with
  ``server_shutdown``, sent to the sockets that wait for it and audited),
  then the server's own handler runs.
* **daphne** and ``manage.py runserver`` (daphne's) have no lifespan, but a
  Twisted reactor: :func:`install_reactor_hooks` starts the runtime when the
  reactor runs, and stops it in a "before shutdown" trigger, registered
  before daphne's own (which cancels every application), while sockets are
  still open.
* Anywhere else (Django's test clients), the first request starts it.

:func:`freeze_startup_heap` keeps what a process built to start (modules,
settings, the application) out of the garbage collector's full passes, which
otherwise walk all of it with the event loop stopped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from . import runtime
from .tasks import TaskSet

log = logging.getLogger(__name__)

#: How long a drain may hold a signal back from the server.
DRAIN_TIMEOUT = 6.0
_background = TaskSet()


def freeze_startup_heap() -> None:
    """Move every object alive now into the collector's permanent generation.

    CPython's full (generation 2) collection walks every tracked object. A worker that has
    imported Django, Channels, gRPC and PyNaCl tracks about 94,000 at start-up, all alive
    for good, and walking them took 54 ms here: a stall of every flow in flight, each time
    the collector runs a full pass under load. Frozen, a full pass walks only what was made
    since (4.7 ms at most under load on the benchmark's machine, against 75 ms). Garbage is
    collected first, so none is kept for good.
    """
    gc.collect()
    gc.freeze()


class LifecycleApp:
    """ASGI wrapper: the lifespan protocol around ``app`` (Channels' router)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await runtime.get()
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await runtime.get()
                    _drain_on_signals(asyncio.get_running_loop())
                except Exception as exc:
                    log.exception("the token flow could not start")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _drain_on_signals(loop: asyncio.AbstractEventLoop) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if callable(previous):
            signal.signal(signum, _DrainFirst(loop, previous))


class _DrainFirst:
    """A signal handler: drain the runtime, then hand the signal to the server's handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop, previous: Any) -> None:
        self.loop, self.previous = loop, previous
        self.draining = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.draining:
            # A second Ctrl-C forces the server's own handling at once; a second SIGTERM
            # (systemd signals every process of the unit, and uvicorn's parent its
            # workers again) waits for the drain under way.
            if signum == signal.SIGINT:
                self.previous(signum, frame)
            return
        self.draining = True
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain(signum, frame)))

    async def _drain(self, signum: int, frame: FrameType | None) -> None:
        current = runtime.current()
        if current is not None:
            try:
                await asyncio.wait_for(current.drain(), DRAIN_TIMEOUT)
            except Exception:
                log.exception("draining before shutdown failed")
        self.previous(signum, frame)


def install_reactor_hooks() -> None:
    """Under daphne (a Twisted reactor is installed): start with the reactor, drain
    and stop before it shuts down. Without a reactor this does nothing."""
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import defer
    from twisted.internet import reactor as installed

    reactor: Any = installed  # its zope interfaces confuse the type checker

    def started() -> None:
        # callWhenRunning runs before the reactor's asyncio loop does: start inside the loop
        # (a task made here failed, and its coroutine was reported "never awaited" at exit).
        reactor.callLater(0, lambda: _background.spawn(runtime.get(), name="runtime-start"))

    def before_shutdown() -> Any:
        current = runtime.current()
        if current is None or current.stopped:
            return None
        # Taken now, before daphne cancels the applications: see FlowService.shutdown.
        return defer.Deferred.fromFuture(asyncio.ensure_future(current.stop()))

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
