"""One `controller-vault serve` per state directory, in real subprocesses: a second one
exits at once with one line on stderr while the first keeps serving, staff commands
still run beside it, and a SIGKILLed serve leaves no stale lock behind."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys

import pytest

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
        assert f"another controller-vault serve is running on {state} (serve.lock is held)" \
            in lines[0]
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
