"""One chat socket's idle timeout, without a timer per received frame.

``ws.receive(timeout=...)`` enters an ``asyncio.timeout`` per frame: a ``TimerHandle``
pushed on the loop's heap and cancelled again (and the heap rebuilt when half of it is
cancelled handles). Under load that was about a tenth of the event loop's time. Here a
receive only stamps the loop time; the one timer of the socket, when it fires, re-arms
itself for what is left, and only when the socket has waited in ``receive`` for the
whole timeout does it cancel the waiting task, which :meth:`IdleGuard.expired` turns
back into the idle-timeout refusal (as ``asyncio.timeout`` does, ``Task.uncancel``).
It cancels only a task blocked in ``receive``: a frame being made durable or delivered
is never interrupted, exactly like the per-receive timeout it replaces. Stops what the
timeout always stopped: a client holding a socket (and its engagement) open silently.
"""

from __future__ import annotations

import asyncio

__all__ = ["IdleGuard"]


class IdleGuard:
    """The idle deadline of the task that receives on one socket."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._since = self._loop.time()
        self._waiting = False
        self._fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._since + timeout, self._check)

    def waiting(self) -> None:
        """The task is about to wait for the next frame: the idle period starts now."""
        self._since = self._loop.time()
        self._waiting = True

    def received(self) -> None:
        """The wait ended (a frame, a close, an error)."""
        self._waiting = False

    def expired(self) -> bool:
        """In ``except CancelledError``: was it this guard's cancel (and no other)?"""
        if not self._fired:
            return False
        self._fired = False
        assert self._task is not None
        return self._task.uncancel() == 0

    def close(self) -> None:
        """Stop the timer (the socket's handler is done)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        deadline = self._since + self.timeout
        if self._waiting and self._loop.time() >= deadline and self._task is not None:
            self._fired = True
            self._handle = None
            self._task.cancel()
            return
        # Busy (not in receive) or a frame came since: look again when the current
        # period would end (at least a full period later while busy).
        next_at = deadline if self._waiting else self._loop.time() + self.timeout
        self._handle = self._loop.call_at(max(next_at, self._loop.time()), self._check)
