"""gRPC's threads in a relaying worker and in ``runauthority`` run as ``SCHED_BATCH``
(Linux): they never preempt the process's event loop.

grpc.aio hands every step of a call to the event loop from threads of gRPC's own (its
I/O threads, the completion queue's poller, a timer thread). On a core the loop keeps
busy, as a worker's is under load, each of those wake-ups preempted the loop thread:
about 12 involuntary context switches a relayed flow, against 1 for a local one. A
``SCHED_BATCH`` thread is not woken ahead of the running thread (it waits for the loop to
block, or for the scheduler's tick), so gRPC's events queue up and the loop takes them
in one turn; on an idle core they still run at once. Nothing else changes: the same
threads, the same priority otherwise, no privilege needed.

gRPC starts its threads with the first call on a channel, or as a server starts, from
the loop's thread: :func:`thread_ids` before the channel or the server is made, and
:func:`not_preempting` of the threads that appeared once its first call is under way or
it listens. Threads its pools start later are started by those threads, and inherit the
policy.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable


def thread_ids() -> set[int]:
    """This process's threads (none where ``/proc`` is not Linux's)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def not_preempting(tids: Iterable[int]) -> int:
    """Run each of ``tids`` as ``SCHED_BATCH``, but the main thread and the caller's (the
    event loop's). Returns how many were set; 0 where the policy does not exist."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return 0
    keep = {threading.main_thread().native_id, threading.get_native_id()}
    done = 0
    for tid in set(tids) - keep:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setscheduler(tid, batch, os.sched_param(0))
            done += 1
    return done
