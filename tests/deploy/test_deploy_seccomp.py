"""The units' MemoryDenyWriteExecute and SystemCallFilter, checked against the real stack.

systemd is not PID 1 here, so the same seccomp filters are installed by
seccomp_launcher.py (from the installed systemd's own syscall group tables) and
the services' libraries do real work under them (seccomp_workload.py).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def _have_seccomp_bindings() -> bool:
    if not (os.path.exists(SYSTEM_PYTHON) and shutil.which("systemd-analyze")):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux-only"),
    pytest.mark.skipif(not _have_seccomp_bindings(),
                       reason="needs systemd-analyze and python3-seccomp (.ci/run installs both)"),
    pytest.mark.timeout(90),
]


def _run_filtered(code_or_script: list[str], env: dict[str, str] | None = None,
                  ) -> subprocess.CompletedProcess[str]:
    command = [SYSTEM_PYTHON, str(HERE / "seccomp_launcher.py"), "--", sys.executable,
               *code_or_script]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_services_stack_runs_under_the_units_filters(tmp_path: pathlib.Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(5)
        result = _run_filtered([str(HERE / "seccomp_workload.py")],
                               env={"NOTIFY_SOCKET": str(notify_path)})
        assert result.returncode == 0, result.stderr
        assert "W^X enforced" in result.stderr
        for step in ("crypto ok", "sqlite ok", "network ok", "notify ok", "workload ok"):
            assert step in result.stdout
        assert notify.recv(64) == b"READY=1"
        assert notify.recv(64) == b"WATCHDOG=1"


def test_filters_are_really_enforced() -> None:
    # Negative control: without it, a launcher that silently installed nothing would
    # make the test above prove nothing.
    probe = (
        "import mmap, os\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    print('wx-allowed')\n"
        "except PermissionError:\n"
        "    print('wx-refused')\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    print('setuid-allowed')\n"
        "except PermissionError:\n"
        "    print('setuid-refused')\n"
    )
    result = _run_filtered(["-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wx-refused", "setuid-refused"]


def test_cffi_abi_mode_callbacks_would_break_but_are_not_used() -> None:
    # The finding written in the units: cffi's ABI-mode ffi.callback() needs W+X pages
    # and fails under MemoryDenyWriteExecute; pynacl and cryptography ship compiled
    # out-of-line modules instead, so the services never take that path.
    probe = (
        "import cffi\n"
        "try:\n"
        "    cffi.FFI().callback('int(int)', lambda x: x)\n"
        "    print('callback-allowed')\n"
        "except MemoryError:\n"
        "    print('callback-refused')\n"
        "import nacl._sodium, cryptography.hazmat.bindings._rust as r\n"
        "print(nacl._sodium.__file__.endswith('.so'), r.__file__.endswith('.so'))\n"
    )
    result = _run_filtered(["-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["callback-refused", "True", "True"]
