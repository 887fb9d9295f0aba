"""Real services for tests, all on 127.0.0.1: subprocesses for end-to-end and crash
tests, and the relay a test drives as its operator (in-process or as a subprocess).

Every wait is bounded: a service that does not become healthy in time fails the test
with its captured output instead of hanging CI.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from relay.app import create_app
from relay.config import load_config
from relay.logs import NoPersonalDataAccessLogger

__all__ = ["OperatorRelay", "Service", "free_port", "wait_http_ok", "write_operator_token"]


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


def write_operator_token(directory: pathlib.Path, token: str) -> pathlib.Path:
    """The relay operator token file as ``relay init`` leaves it: mode 0600, outside the
    state directory. Returns its path."""
    path = directory / "operator_token"
    path.write_text(token)
    path.chmod(0o600)
    return path


@dataclass
class OperatorRelay:
    """A relay a test drives as its operator, on 127.0.0.1, with ``token`` in its token file.

    ``start`` runs the real app (``relay.app.create_app``) in-process on a socket bound
    first, so the relay names its own URL as ``public_origin`` (the vault link signs it);
    ``start_process`` runs ``relay serve`` as a subprocess. ``close()`` stops either.
    """

    token: str
    token_file: pathlib.Path
    state_dir: pathlib.Path
    url: str
    app: web.Application | None = None  # in-process only
    service: Service | None = None  # start_process only
    client_ssl: ssl.SSLContext | None = None  # how the operator's client trusts TLS
    runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The TCP port the relay listens on."""
        return int(self.url.rsplit(":", 1)[1])

    @classmethod
    async def start(cls, root: pathlib.Path, token: str, *,
                    state_dir: pathlib.Path | None = None,
                    clock: Callable[[], float] = time.time,
                    prestart: Callable[[web.Application], object] | None = None,
                    ssl_context: ssl.SSLContext | None = None,
                    client_ssl: ssl.SSLContext | None = None,
                    **overrides: Any) -> OperatorRelay:
        """The relay app on 127.0.0.1 (``https`` with ``ssl_context``); ``overrides`` are
        RelayConfig fields, ``prestart`` may add to the app before it serves."""
        state = state_dir or root / "state"
        state.mkdir(parents=True, exist_ok=True)
        token_file = write_operator_token(root, token)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            scheme = "https" if ssl_context else "http"
            url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
            overrides.setdefault("heartbeat_seconds", 5.0)
            overrides.setdefault("public_origin", url)
            cfg = load_config(None, env={}, state_dir=str(state),
                              operator_token_file=str(token_file), log_file="relay.log",
                              **overrides)
            app = create_app(cfg, clock=clock, env={})
            if prestart is not None:
                prestart(app)
            # handler_cancellation as aiohttp's TestServer sets it (the relay suites ran
            # on it): a client that drops its connection cancels its handler.
            runner = web.AppRunner(app, handler_cancellation=True,
                                   access_log_class=NoPersonalDataAccessLogger)
            await runner.setup()
        except BaseException:
            sock.close()
            raise
        try:
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        return cls(token, token_file, state, url, app=app, client_ssl=client_ssl,
                   runner=runner)

    @classmethod
    def start_process(cls, root: pathlib.Path, token: str, *,
                      env: dict[str, str] | None = None) -> OperatorRelay:
        """``relay serve`` as a subprocess (state in ``root/state``, output in
        ``root/relay.out``); ``env`` adds ``RELAY_*`` settings."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        token_file = write_operator_token(root, token)
        service = Service("relay", ["serve", "--port", str(port), "--state-dir",
                                    str(root / "state")], f"{url}/healthz",
                          root / "relay.out",
                          env={"RELAY_OPERATOR_TOKEN_FILE": str(token_file),
                               "RELAY_PUBLIC_ORIGIN": url, **(env or {})}).start()
        return cls(token, token_file, root / "state", url, service=service)

    async def create_account(self, account: str, **fields: Any) -> str:
        """``POST /v1/accounts`` as the operator (``fields`` beside the name), then a
        new admin token for it, which is returned."""
        tls = {} if self.client_ssl is None else {"ssl": self.client_ssl}
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.post(f"{self.url}/v1/accounts", json={"account": account, **fields},
                                 **tls) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(f"{self.url}/v1/accounts/{account}/admin-tokens",
                                 **tls) as resp:
                assert resp.status == 201, await resp.text()
                return str((await resp.json())["token"])

    async def close(self) -> None:
        """Stop the relay: the in-process app's runner, or the subprocess."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.service is not None:
            self.service.stop()
