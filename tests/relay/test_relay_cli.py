"""`relay` as a real subprocess: init, serve (systemd notify + watchdog), account commands,
graceful shutdown on SIGTERM."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", *args], env=env, text=True,
                          capture_output=True, timeout=30)


def test_cli_serve_notify_accounts_and_sigterm(tmp_path: pathlib.Path) -> None:
    port = _free_port()
    state = tmp_path / "state"
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[relay]\nstate_dir = "{state}"\nport = {port}\n'
                   f'public_origin = "http://127.0.0.1:{port}"\n')
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
    assert _relay("--config", str(cfg), "init", env=env).returncode == 0
    assert (state / "operator_token").stat().st_mode & 0o777 == 0o600
    assert _relay("--config", str(cfg), "init", env=env).returncode == 1  # never overwrites
    proc = subprocess.Popen([sys.executable, "-m", "relay", "--config", str(cfg), "serve"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 15
        while b"WATCHDOG=1" not in seen and time.monotonic() < deadline:
            seen.append(notify.recv(256))
        assert seen[0] == b"READY=1" and b"WATCHDOG=1" in seen
        # READY=1 came after the socket was up: connecting works at once.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        out = _relay("--config", str(cfg), "account", "create", "clinic", "--origin",
                     "https://clinic.example", env=env)
        assert out.returncode == 0, out.stderr
        out = _relay("--config", str(cfg), "account", "mode", "clinic", "compliance", env=env)
        assert out.returncode == 1 and "mode.not_paired" in out.stdout
        out = _relay("--config", str(cfg), "account", "token", "clinic", env=env)
        assert out.returncode == 0 and '"token"' in out.stdout
        out = _relay("--config", str(cfg), "account", "agent-token", "clinic", "ann", env=env)
        assert out.returncode == 0 and '"token"' in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        notify.close()
    assert proc.returncode == 0, err
    assert "relay.stopped" in err
    for key in ("master.key", "relay_signing.key", "relay.sqlite3"):
        assert (state / key).stat().st_mode & 0o077 == 0, key
