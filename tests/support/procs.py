"""Real service processes for end-to-end and crash tests, all on 127.0.0.1.

Every wait is bounded: a service that does not become healthy in time fails the test
with its captured output instead of hanging CI.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

__all__ = ["Service", "free_port", "wait_http_ok"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http_ok(url: str, *, timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers 200, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - test URL on 127.0.0.1
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {timeout}s")
        time.sleep(0.05)


@dataclass
class Service:
    """A service run as a real subprocess (``python -m MODULE ARGS``) with its output in a file."""

    module: str
    args: list[str]
    health_url: str
    log_path: pathlib.Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 20.0) -> Service:
        """Start and wait until healthy."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            start_new_session=True)
        log.close()
        try:
            wait_http_ok(self.health_url, timeout=timeout)
        except TimeoutError:
            self.stop()
            raise TimeoutError(self.output()[-4000:]) from None
        return self

    def kill(self) -> None:
        """SIGKILL: the crash the durability tests are about."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
