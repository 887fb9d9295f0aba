"""Run a command under the seccomp filters our units ask systemd for.

systemd is not PID 1 on the test machines, so `systemd-run -p ...` cannot start a
unit. This launcher rebuilds the two filters systemd 252 would install from
`SystemCallFilter=@system-service` + `SystemCallFilter=~@privileged @resources`
(the allowlist, expanded with `systemd-analyze syscall-filter`, so it follows the
installed systemd's own group tables) and `MemoryDenyWriteExecute=yes` (the same
argument rules systemd's seccomp-util.c adds), then execs the command, which
inherits both filters. It needs the distribution's python3-seccomp bindings, so it
runs under /usr/bin/python3, not the project's venv:

    /usr/bin/python3 seccomp_launcher.py -- /path/to/venv/bin/python -c '...'
"""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys

__all__ = ["expand_group", "main"]

ALLOW_GROUPS = ["@system-service"]
DENY_GROUPS = ["@privileged", "@resources"]


def expand_group(name: str, seen: set[str] | None = None) -> set[str]:
    """Return the system calls of a systemd group, nested groups included."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name],
                         check=True, capture_output=True, text=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= expand_group(item, seen) if item.startswith("@") else {item}
    return calls


def _install_filters() -> int:
    import seccomp  # the distribution's python3-seccomp; absent from the venv

    allowed = set().union(*(expand_group(g) for g in ALLOW_GROUPS))
    allowed -= set().union(*(expand_group(g) for g in DENY_GROUPS))
    allow_list = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for call in sorted(allowed):
        try:
            allow_list.add_rule(seccomp.ALLOW, call)
        except (RuntimeError, ValueError, OSError):
            continue  # a name this architecture does not have (e.g. *_time64)
    # MemoryDenyWriteExecute=yes, as systemd 252 writes it: no mapping that is both
    # writable and executable, and no turning an existing mapping executable.
    mdwe = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    eperm = seccomp.ERRNO(errno.EPERM)
    mdwe.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
    mdwe.add_rule(eperm, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC,
                                                 mmap.PROT_EXEC))
    mdwe.add_rule(eperm, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC,
                                                      mmap.PROT_EXEC))
    shm_exec = 0o100000
    mdwe.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
    mdwe.load()
    allow_list.load()
    return len(allowed)


def main(argv: list[str]) -> int:
    """Install the filters and exec the command after `--`."""
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    if not command:
        print("usage: seccomp_launcher.py -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    count = _install_filters()
    print(f"seccomp: {count} system calls allowed, W^X enforced", file=sys.stderr)
    sys.stderr.flush()
    os.execv(command[0], command)  # noqa: S606 - exec is the point: the filters must carry over
    return 127  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
