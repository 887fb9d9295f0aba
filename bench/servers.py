"""Servers under test as real subprocesses on 127.0.0.1, and what /proc says about them.

Each ``start_*`` is a context manager yielding a :class:`Server` (base URL and pid);
on exit the process gets SIGTERM, then SIGKILL after a bound.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import resource
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Server", "cpu_seconds", "free_port", "init_vault", "raise_nofile", "rss_kib",
           "start_bare", "start_relay", "start_socketio", "start_vault"]

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass
class Server:
    """A running server process."""

    url: str
    proc: subprocess.Popen[str]
    state_dir: pathlib.Path | None = None
    operator_token: str = ""

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int = 20_000) -> int:
    """Raise this process's (and its children's) open-file limit towards ``want``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return max(new, soft)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _await_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    _stop(proc)
    raise RuntimeError(f"server did not start (wanted {prefix!r})")


@contextlib.contextmanager
def _baseline(script: str, uvloop: bool) -> Iterator[Server]:
    argv = [sys.executable, str(BENCH / "baselines" / script)]
    if uvloop:
        argv.append("--uvloop")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = _await_line(proc, "listening http://127.0.0.1:")
        yield Server(line.split()[1], proc)
    finally:
        _stop(proc)


def event_loop() -> str:
    """The loop ``relay serve`` runs on here: uvloop when importable (its ``auto``)."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def start_bare(uvloop: bool | None = None) -> contextlib.AbstractContextManager[Server]:
    """The bare aiohttp forwarder (baseline a), on the relay's event loop by default:
    a ratio of two servers on different loops would credit the relay with uvloop's gain."""
    return _baseline("bare_forwarder.py", event_loop() == "uvloop" if uvloop is None else uvloop)


def start_socketio(uvloop: bool | None = None) -> contextlib.AbstractContextManager[Server]:
    """The python-socketio forwarder (baseline b), on the relay's event loop by default."""
    return _baseline("socketio_forwarder.py",
                     event_loop() == "uvloop" if uvloop is None else uvloop)


@contextlib.contextmanager
def start_relay(state_dir: pathlib.Path, **settings: object) -> Iterator[Server]:
    """``relay serve`` on a fresh state directory with bench limits (RELAY_* settings)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    token_file = state_dir.parent / f"{state_dir.name}.operator_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    env = dict(os.environ)
    limits: dict[str, object] = {
        # One load generator address opens every connection: the per-address limit
        # would (rightly) refuse it, so the bench lifts it, and the per-account cap.
        "connections_per_ip_per_minute": 10_000_000, "max_engagements_per_account": 100_000,
        "max_engagements_per_address": 10_000_000,
        "log_level": "WARNING", "public_origin": f"http://127.0.0.1:{port}",
        "idle_timeout_seconds": 3600, "operator_token_file": str(token_file)}
    limits.update(settings)
    env.update({f"RELAY_{k.upper()}": str(v) for k, v in limits.items()})
    # BENCH_RELAY_SRC: run the relay from another source tree (bench/ab.py's "before"
    # side, a `git archive` of an older commit), so an A/B compares code in one run.
    src = os.environ.get("BENCH_RELAY_SRC") or str(ROOT)
    env["PYTHONPATH"] = src
    proc = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--state-dir", str(state_dir)],
                            stdout=subprocess.PIPE, text=True, cwd=src, env=env)
    try:
        line = _await_line(proc, '{"event": "relay.listening"')
        assert json.loads(line)["port"] == port
        yield Server(f"http://127.0.0.1:{port}", proc, state_dir, token)
    finally:
        _stop(proc)


def _vault_cli(state_dir: pathlib.Path, *args: str, admin_token: str = "") -> str:
    out = subprocess.run([sys.executable, "-m", "controller_vault", *args, "--state-dir",
                          str(state_dir)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "RELAY_ADMIN_TOKEN": admin_token},
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"controller-vault {args[0]} failed: {out.stderr[-1000:]}")
    return out.stdout


def init_vault(state_dir: pathlib.Path, account: str, relay_url: str, admin_token: str) -> None:
    """``controller-vault init`` then ``pair``: the controller's own set-up steps."""
    _vault_cli(state_dir, "init", "--account", account)
    _vault_cli(state_dir, "pair", "--relay", relay_url, "--account", account,
               admin_token=admin_token)


@contextlib.contextmanager
def start_vault(state_dir: pathlib.Path, relay_url: str) -> Iterator[Server]:
    """``controller-vault serve`` on an initialised, paired state directory, dialing the relay."""
    port = free_port()
    env = {**os.environ, "VAULT_RELAY_URL": relay_url, "VAULT_PORT": str(port),
           "VAULT_HOST": "127.0.0.1", "VAULT_BACKOFF_INITIAL_S": "0.05",
           "VAULT_BACKOFF_MAX_S": "0.5"}
    log = (state_dir.parent / f"{state_dir.name}.out").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "controller_vault", "serve", "--state-dir",
                             str(state_dir)], stdout=log, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:  # noqa: S310 (127.0.0.1)
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vault did not start")
            time.sleep(0.1)
        yield Server(url, proc, state_dir)
    finally:
        _stop(proc)
