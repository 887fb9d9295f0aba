"""One `controller-vault serve` per state directory, in real subprocesses: a second one
exits at once with one line on stderr while the first keeps serving, staff commands
still run beside it, a SIGKILLed serve leaves no stale lock behind, restore refuses
(one line, nothing changed) while a serve holds the lock, and holds it itself until its
last write, so a serve started during a restore exits."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import stat
import subprocess
import sys
import time

import pytest

from controller_vault.backup import BackupError, RestoreReport, restore_backup, take_backup
from controller_vault.errors import AlreadyServing
from controller_vault.keyfiles import init_vault, load_vault_keys
from controller_vault.keystore import KeyStore
from controller_vault.serve import SERVE_LOCK, hold_serve_lock
from controller_vault.store import VaultStore
from tests.support.procs import Service, free_port, wait_http_ok

pytestmark = pytest.mark.timeout(90)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller_vault", *args],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})}, check=False)


def _serve(state: pathlib.Path, port: int, log: pathlib.Path) -> Service:
    return Service("controller_vault", ["serve", "--state-dir", str(state)],
                   f"http://127.0.0.1:{port}/healthz", log, env={"VAULT_PORT": str(port)})


def test_a_second_serve_on_the_same_vault_exits_and_a_killed_one_leaves_no_lock(
        tmp_path: pathlib.Path) -> None:
    state = tmp_path / "vault"
    assert _cli("init", "--account", "clinic", "--state-dir", str(state)).returncode == 0
    port = free_port()
    first = _serve(state, port, tmp_path / "first.out").start()
    try:
        lock = state / "serve.lock"
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        # Another port: without the lock this second serve would start and keep running
        # (the 30 s timeout would fail the test), not die of a port clash.
        second = _cli("serve", "--state-dir", str(state),
                      env={"VAULT_PORT": str(free_port())})
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr  # one clear line, no traceback
        assert f"another controller-vault serve or restore is running on {state} " \
            "(serve.lock is held)" in lines[0]
        assert first.proc is not None and first.proc.poll() is None
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=5)
        # Staff and admin commands do not take the lock: they run beside serve.
        verified = _cli("audit", "verify", "--state-dir", str(state))
        assert verified.returncode == 0 and "verifies" in verified.stdout, verified.stderr
        backup = _cli("backup", str(tmp_path / "backup"), "--state-dir", str(state))
        assert backup.returncode == 0, backup.stderr

        first.kill()  # SIGKILL: no cleanup runs, the lock file stays on disk
        assert first.proc.returncode == -9 and lock.exists()
        third = _serve(state, port, tmp_path / "third.out").start()
        try:
            assert third.proc is not None and third.proc.poll() is None
        finally:
            assert third.stop() == 0, third.output()[-2000:]
    finally:
        first.stop()


def _stores(state: pathlib.Path) -> dict[str, int]:
    """The state directory's file names, with the inode of each store (a restore
    replaces a store by a new file)."""
    return {p.name: p.stat().st_ino if p.suffix == ".db" else 0 for p in state.iterdir()}


def test_restore_refuses_while_serve_runs_and_works_once_it_stopped(
        tmp_path: pathlib.Path) -> None:
    state, backup = tmp_path / "vault", tmp_path / "backup"
    assert _cli("init", "--account", "clinic", "--state-dir", str(state)).returncode == 0
    port = free_port()
    running = _serve(state, port, tmp_path / "serve.out").start()
    try:
        assert _cli("backup", str(backup), "--state-dir", str(state)).returncode == 0
        before = _stores(state)
        refused = _cli("restore", str(backup), "--state-dir", str(state), "--force")
        assert refused.returncode == 1
        assert refused.stderr == (
            f"controller-vault: backup.live_store: a controller-vault serve or restore is "
            f"running on {state} (serve.lock is held); stop it first\n")
        assert _stores(state) == before  # nothing staged, nothing replaced
        assert running.proc is not None and running.proc.poll() is None
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        assert running.stop() == 0, running.output()[-2000:]
    restored = _cli("restore", str(backup), "--state-dir", str(state), "--force")
    assert restored.returncode == 0, restored.stderr
    assert "restored data" in restored.stdout and "restored keys" in restored.stdout
    assert _stores(state)["vault.db"] != before["vault.db"]
    # Into a directory no serve ever used: no serve.lock is made by checking it.
    fresh = tmp_path / "fresh"
    assert _cli("restore", str(backup), "--state-dir", str(fresh)).returncode == 0
    assert (fresh / "vault.db").exists() and not (fresh / SERVE_LOCK).exists()


def test_restore_refuses_on_the_lock_alone(tmp_path: pathlib.Path) -> None:
    # A serve that holds the lock but has no store open yet (starting up): the SQLite
    # check alone would let the restore replace the files it is about to open.
    state, backup = tmp_path / "vault", tmp_path / "backup"
    init_vault(state, "clinic", now=1_800_000_000)
    asyncio.run(_touch_stores(state))
    take_backup(state, backup, now=1_800_000_000)
    lock = hold_serve_lock(state)
    try:
        with pytest.raises(BackupError) as err:
            restore_backup(backup, state, force=True)
        assert err.value.code == "backup.live_store" and SERVE_LOCK in err.value.message
    finally:
        os.close(lock)
    assert restore_backup(backup, state, force=True).parts["data"] == ["vault.db"]


def _open_fifo_for_writing(fifo: pathlib.Path, reader: subprocess.Popen[str]) -> int:
    """Open ``fifo`` for writing once ``reader`` has opened it for reading (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            # Non-blocking: ENXIO until the other end is open, so a restore that failed
            # (or never reached the manifest) ends the wait instead of blocking it.
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        assert reader.poll() is None, reader.communicate()
        assert time.monotonic() < deadline, "the restore never opened its manifest"
        time.sleep(0.01)


def test_a_serve_started_during_a_restore_exits_and_the_restore_completes(
        tmp_path: pathlib.Path) -> None:
    # The restore is stopped at a known point, deterministically: its data manifest is
    # a FIFO, so it waits reading it until this test writes it. Before that point it
    # took serve.lock (it has read the manifest only after), and a serve started now
    # must exit rather than open stores the restore is about to replace.
    state, backup = tmp_path / "vault", tmp_path / "backup"
    assert _cli("init", "--account", "clinic", "--state-dir", str(state)).returncode == 0
    asyncio.run(_touch_stores(state))
    take_backup(state, backup, now=1_800_000_000)
    manifest = backup / "data" / "manifest.json"
    content = manifest.read_bytes()
    manifest.unlink()
    os.mkfifo(manifest, 0o600)
    restore = subprocess.Popen(
        [sys.executable, "-m", "controller_vault", "restore", str(backup),
         "--state-dir", str(state), "--force"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        writer = _open_fifo_for_writing(manifest, restore)
        try:
            # Mid-restore: a real serve (on a free port: without the lock it would start
            # and serve until the 30 s timeout) exits at once with one line.
            started = _cli("serve", "--state-dir", str(state),
                           env={"VAULT_PORT": str(free_port())})
            assert started.returncode == 1, started.stderr
            assert started.stderr == (
                "controller-vault: vault.already_serving: another controller-vault serve "
                f"or restore is running on {state} (serve.lock is held)\n")
            with pytest.raises(AlreadyServing):
                os.close(hold_serve_lock(state))
            os.write(writer, content)
        finally:
            os.close(writer)  # EOF: the restore reads the manifest and goes on
        out, err = restore.communicate(timeout=30)
    finally:
        if restore.poll() is None:
            restore.kill()
            restore.wait()
    assert restore.returncode == 0, err
    assert "restored data" in out and "restored keys" in out
    os.close(hold_serve_lock(state))  # released at the end


def test_restore_holds_the_lock_until_its_last_write(tmp_path: pathlib.Path) -> None:
    state, backup = tmp_path / "vault", tmp_path / "backup"
    init_vault(state, "clinic", now=1_800_000_000)
    asyncio.run(_touch_stores(state))
    take_backup(state, backup, now=1_800_000_000)
    seen: list[str] = []

    def before_release(report: RestoreReport) -> None:
        # Every store is in place (the CLI writes its audit entry here): still held.
        assert report.parts["data"] == ["vault.db"] and report.parts["keys"] == ["keys.db"]
        with pytest.raises(AlreadyServing) as err:
            os.close(hold_serve_lock(state))
        seen.append(err.value.code)

    restore_backup(backup, state, force=True, before_release=before_release)
    assert seen == ["vault.already_serving"]
    os.close(hold_serve_lock(state))  # and released after it
    # Into a directory that does not exist yet: no serve.lock is left in it.
    fresh = tmp_path / "fresh"
    restore_backup(backup, fresh, before_release=lambda report: seen.append("fresh"))
    assert seen[-1] == "fresh" and not (fresh / SERVE_LOCK).exists()


async def _touch_stores(state: pathlib.Path) -> None:
    keys = load_vault_keys(state)
    store = await VaultStore.open(state / "vault.db", keys.account)
    keystore = await KeyStore.open(state / "keys.db", keys.master_key)
    await keystore.close()
    await store.close()
