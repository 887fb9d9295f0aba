"""A relay whose systemd notify socket stops being read keeps serving and stops on SIGTERM.

Regression for the flake of ``test_cli_serve_notify_accounts_and_sigterm``: the watchdog
ping was a blocking datagram send, so once the reader's queue was full (10 datagrams on
hosts with ``net.unix.max_dgram_qlen=10``) the event loop froze: no HTTP answers, and
SIGTERM was never handled.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from relay.notify import Notifier

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_notifier_drops_instead_of_blocking(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "n.sock")
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(path)
    notifier = Notifier(path)
    started = time.monotonic()
    sent = [notifier.notify("WATCHDOG=1") for _ in range(200)]
    assert time.monotonic() - started < 2.0
    assert sent[0] is True and notifier.dropped > 0  # the full queue dropped, never blocked
    assert reader.recv(64) == b"WATCHDOG=1"
    notifier.close()
    reader.close()


def test_serve_keeps_answering_with_an_unread_notify_socket(tmp_path: pathlib.Path) -> None:
    port = _free_port()
    state = tmp_path / "state"
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[relay]\nstate_dir = "{state}"\nport = {port}\n'
                   f'public_origin = "http://127.0.0.1:{port}"\n')
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(15)
    # 20 ms between pings: the queue is full within a fraction of a second.
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "40000"}
    subprocess.run([sys.executable, "-m", "relay", "--config", str(cfg), "init"], env=env,
                   check=True, capture_output=True, timeout=30)
    proc = subprocess.Popen([sys.executable, "-m", "relay", "--config", str(cfg), "serve"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert notify.recv(256) == b"READY=1"
        time.sleep(1.5)  # about 75 pings, none read
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            notify.close()
    assert proc.returncode == 0, err
    assert "relay.stopped" in err
