"""The `controller-vault` command in real subprocesses: init, audit verify, rotate-key,
certify-agent, a store that fails to open (one line, no hang), and serve under a
systemd-style notify socket with credentials."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from envelope import PartyKeys, b64e

pytestmark = pytest.mark.timeout(60)


def _cli(*args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "controller_vault", *args],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_init_prints_fingerprint_and_refuses_a_second_time(tmp_path):
    state = str(tmp_path / "v")
    out = _cli("init", "--account", "clinic", "--state-dir", state).stdout
    assert "identity fingerprint: crfp1-" in out
    assert 'data-controller-fingerprint="crfp1-' in out
    again = _cli("init", "--account", "clinic", "--state-dir", state, check=False)
    assert again.returncode != 0 and "vault.exists" in again.stderr


def test_audit_verify_exit_codes(tmp_path):
    state = str(tmp_path / "v")
    _cli("init", "--account", "clinic", "--state-dir", state)
    agent = PartyKeys.generate()
    for name in ("agent-a", "agent-b", "agent-c"):
        out = _cli("certify-agent", "--state-dir", state, "--agent", name,
                   f"--enc-pk={b64e(agent.encryption.public_bytes)}",
                   f"--sig-pk={b64e(agent.signing_public_bytes)}").stdout
        assert set(json.loads(out)) == {"body", "sig"}
    _cli("rotate-key", "--state-dir", state)
    ok = _cli("audit", "verify", "--state-dir", state)
    assert "audit log verifies: 4 entries" in ok.stdout
    con = sqlite3.connect(os.path.join(state, "vault.db"))
    con.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
    con.commit()
    con.close()
    bad = _cli("audit", "verify", "--state-dir", state, check=False)
    assert bad.returncode == 1 and "entry 2" in bad.stderr and "audit.changed" in bad.stderr


def test_a_store_failing_after_its_connection_opened_exits_with_one_line(tmp_path):
    state = tmp_path / "v"
    _cli("init", "--account", "clinic", "--state-dir", str(state))
    _cli("rotate-key", "--state-dir", str(state))  # vault.db now exists, closed cleanly
    db = state / "vault.db"
    for suffix in ("-wal", "-shm"):
        (state / f"vault.db{suffix}").unlink(missing_ok=True)
    data = db.read_bytes()
    # The 100-byte header stays valid, so the read-only version check before connecting
    # passes; the rest of page 1 (the schema table) is garbage, so the first statement
    # on the new connection that loads the schema fails. Its aiosqlite thread, left
    # open, kept the command alive after the error line (_cli's timeout fails the test).
    db.write_bytes(data[:100] + b"\xa5" * 3996 + data[4096:])
    for command in (["audit", "verify"], ["transcripts", "list"]):
        started = time.monotonic()
        proc = _cli(*command, "--state-dir", str(state), check=False)
        assert time.monotonic() - started < 20, command
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (f"controller-vault: vault.store_unavailable: cannot open "
                               f"database {db}: DatabaseError\n")


def test_missing_key_file_stops_serve_with_the_file_named(tmp_path):
    state = tmp_path / "v"
    _cli("init", "--account", "clinic", "--state-dir", str(state))
    (state / "secrets" / "index.key").unlink()
    proc = _cli("serve", "--state-dir", str(state), check=False)
    assert proc.returncode == 1 and "index.key" in proc.stderr and "restore" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_notifies_systemd_and_reads_credentials(tmp_path):
    state, creds = tmp_path / "v", tmp_path / "creds"
    _cli("init", "--account", "clinic", "--state-dir", str(state))
    creds.mkdir()
    for p in (state / "secrets").iterdir():  # systemd LoadCredential= copies
        (creds / p.name).write_bytes(p.read_bytes())
        p.unlink()
    port = _free_port()
    cfg = tmp_path / "vault.toml"
    cfg.write_text(f'[vault]\naccount = "clinic"\nstate_dir = "{state}"\nport = {port}\n'
                   'watchdog_interval_s = 0.2\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(15)
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller_vault", "serve", "--config", str(cfg)],
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"),
             "CREDENTIALS_DIRECTORY": str(creds)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        messages = [notify.recv(256).decode()]
        assert messages == ["READY=1"]
        messages.append(notify.recv(256).decode())
        assert "WATCHDOG=1" in messages
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"vault_audit_entries" in r.read()
        # Stop reading the notify socket: its queue fills within a few pings at 0.2 s.
        # A blocking send would now freeze the event loop (HTTP and SIGTERM); the
        # vault drops pings instead and keeps serving.
        time.sleep(4)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        notify.close()
    assert proc.returncode == 0, err
    verified = _cli("audit", "verify", "--config", str(cfg),
                    env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert "verifies" in verified.stdout
    assert (state / "audit-checkpoints.jsonl").read_text().count("\n") >= 1


def test_ingest_benchmark_runs_and_prints_the_ratio():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_vault_ingest.py"),
                           "--envelopes", "300", "--batch", "100"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ratio vault/floor:" in proc.stdout


@pytest.mark.parametrize("table", [
    '[smtp]\nhost = "127.0.0.1"\nport = 25\nsecurity = "carrier-pigeon"\n'
    'from_addr = "vault@clinic.example"\n',
    "[vault]\nbatch_max = 5000\n",
])
def test_serve_exits_78_on_a_bad_setting(tmp_path, table) -> None:
    state = tmp_path / "vault"
    _cli("init", "--account", "clinic", "--state-dir", str(state))
    conf = tmp_path / "vault.toml"
    base = f'account = "clinic"\nstate_dir = "{state}"\n'
    conf.write_text(table.replace("[vault]\n", "[vault]\n" + base) if "[vault]" in table
                    else "[vault]\n" + base + table)
    out = _cli("serve", "--config", str(conf), env={"VAULT_PORT": "0"}, check=False)
    # 78: controller-vault.service's RestartPreventExitStatus: a restart fails alike.
    assert out.returncode == 78, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "config" in lines[0] and "Traceback" not in out.stderr
