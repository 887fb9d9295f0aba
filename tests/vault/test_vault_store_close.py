"""VaultStore.close closes its connection even when the checkpoint before it fails, in a
real subprocess on a real vault.db: an aiosqlite connection left open keeps its
(non-daemon) thread, and with it the process, alive after the error was printed.

Two real ways the checkpoint at close fails: it raises ("database table is locked")
while a statement of the same connection is still open, and it is cancelled (a Ctrl-C
under ``asyncio.run``, a shutdown timeout) while it waits for another process's reader.
"""

from __future__ import annotations

import pathlib
import sqlite3
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

_SCRIPT = r"""
import asyncio, sqlite3, sys
from controller_vault.store import AuditRecord, VaultStore

path, how = sys.argv[1], sys.argv[2]
KEPT = []  # as a traceback's frames would: no garbage collection stops the thread for us

async def main() -> None:
    store = await VaultStore.open(path, "clinic", busy_timeout_ms=2000)
    KEPT.append(store)
    # A commit: the WAL has frames for the checkpoint at close to copy.
    await store.append_audit([AuditRecord("test", "close", "test", "vault")], 1)
    if how == "raises":
        # A statement of the store's own connection still open: the checkpoint in close
        # raises SQLITE_LOCKED (a connection in a read transaction cannot checkpoint).
        cursor = await store._db.execute(
            "SELECT name FROM sqlite_master UNION ALL SELECT name FROM sqlite_master")
        assert await cursor.fetchone() is not None
        try:
            await store.close()
        except sqlite3.OperationalError as exc:
            print("close raised", type(exc).__name__, flush=True)
        else:
            print("close did not raise", flush=True)
    else:
        # Another process's reader keeps the checkpoint waiting (busy_timeout, then
        # retries); the close is cancelled while it waits.
        try:
            await asyncio.wait_for(store.close(), timeout=0.2)
        except TimeoutError:
            print("close cancelled", flush=True)
        else:
            print("close was not cancelled", flush=True)
    thread = store._db._thread
    thread.join(timeout=10)
    print("connection thread", "alive" if thread.is_alive() else "stopped", flush=True)

asyncio.run(main())
print("main returned", flush=True)
"""


@pytest.mark.parametrize("how", ["raises", "cancelled"])
def test_a_failed_checkpoint_at_close_still_lets_the_process_exit(
        tmp_path: pathlib.Path, how: str) -> None:
    path = tmp_path / "vault.db"
    reader = None
    if how == "cancelled":
        # Made here, then held in a read transaction across the subprocess's close.
        init = subprocess.run([sys.executable, "-c",
                               "import asyncio, sys\n"
                               "from controller_vault.store import VaultStore\n"
                               "async def m():\n"
                               "    s = await VaultStore.open(sys.argv[1], 'clinic')\n"
                               "    await s.close()\n"
                               "asyncio.run(m())\n", str(path)],
                              capture_output=True, text=True, timeout=30, check=False)
        assert init.returncode == 0, init.stderr
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM audit_log").fetchone() == (0,)
    try:
        # Before the fix this never returned: the timeout is the test's failure.
        out = subprocess.run([sys.executable, "-c", _SCRIPT, str(path), how],
                             capture_output=True, text=True, timeout=30, check=False)
    finally:
        if reader is not None:
            reader.close()
    expected = "close raised OperationalError" if how == "raises" else "close cancelled"
    assert out.stdout.splitlines() == [expected, "connection thread stopped",
                                       "main returned"], out.stderr
    assert out.returncode == 0, out.stderr
    # The connection was really closed: the last one to close removes the -wal.
    assert not (tmp_path / "vault.db-wal").exists()
