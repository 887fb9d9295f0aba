"""The chat sockets' idle timeout (relay/idle.py): one timer per socket, not per frame.

It must time a socket out after a full silent wait, never while its task is busy with a
frame (durable commit, delivery), never swallow another cancel, and keep a socket that
sends now and then open past the timeout; on a live relay too.
"""

from __future__ import annotations

import asyncio
import pathlib

import aiohttp
import pytest

from relay.client import VisitorClient
from relay.idle import IdleGuard

from .conftest import ORIGIN, FakeClock, Relay, start_relay

pytestmark = pytest.mark.timeout(60)


async def _guarded_wait(guard: IdleGuard, wait: asyncio.Future[None]) -> str:
    """What chat._receive does around ws.receive()."""
    guard.waiting()
    try:
        await wait
    except asyncio.CancelledError:
        if guard.expired():
            return "idle"
        raise
    finally:
        guard.received()
    return "frame"


async def test_a_silent_wait_times_out() -> None:
    async def task() -> str:
        guard = IdleGuard(0.05)
        try:
            return await _guarded_wait(guard, asyncio.get_running_loop().create_future())
        finally:
            guard.close()
    assert await asyncio.wait_for(task(), 10) == "idle"


async def test_a_busy_task_is_never_cancelled_and_frames_keep_it_alive() -> None:
    async def task() -> list[str]:
        guard = IdleGuard(0.05)
        out = []
        try:
            for _ in range(6):
                # Busy (not waiting for a frame) for longer than the timeout: not idle.
                await asyncio.sleep(0.08)
                fut = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().call_later(0.02, fut.set_result, None)
                out.append(await _guarded_wait(guard, fut))
            return out
        finally:
            guard.close()
    assert await asyncio.wait_for(task(), 10) == ["frame"] * 6


async def test_another_cancel_is_not_taken_for_idle() -> None:
    started = asyncio.Event()

    async def task() -> str:
        guard = IdleGuard(30)
        try:
            started.set()
            return await _guarded_wait(guard, asyncio.get_running_loop().create_future())
        finally:
            guard.close()
    t = asyncio.create_task(task())
    await started.wait()
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t


async def test_a_talking_socket_outlives_the_timeout_a_silent_one_does_not(
        tmp_path: pathlib.Path) -> None:
    server = await start_relay(tmp_path / "state", FakeClock(), idle_timeout_seconds=0.3)
    try:
        async with aiohttp.ClientSession() as session:
            relay = Relay(server, session, tmp_path / "state", FakeClock())
            await relay.account("shop")
            talking = VisitorClient(relay.url, "shop", origin=ORIGIN)
            silent = VisitorClient(relay.url, "shop", origin=ORIGIN)
            await talking.connect()
            await silent.connect()
            for _ in range(8):  # 1.2 s in all, a frame every 0.15 s
                await asyncio.sleep(0.15)
                await talking.typing(True)
            closed = await silent.next_event(types=("closed",))
            assert closed == {"type": "closed", "code": 4408, "error": "session.idle_timeout"}
            assert talking.session.closed is None
            await talking.typing(False)  # still served after 4x the timeout
            closed = await talking.next_event(types=("closed",))  # then silent: closed
            assert closed["error"] == "session.idle_timeout"
            await talking.close()
            await silent.close()
    finally:
        await server.close()
