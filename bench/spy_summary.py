"""Text summary of a py-spy ``--format raw`` profile (collapsed stacks): top functions.

    python bench/spy_summary.py PROFILE.raw [--top 25]

Prints, for the busiest functions, the share of samples where each is on the CPU itself
(self) and anywhere on the stack (inclusive); idle samples (the event loop waiting in
``select``/``epoll``) are counted separately, so the shares say where the busy time goes.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys

__all__ = ["main", "summarise"]

_IDLE = ("select (selectors.py", "poll (selectors.py", "run_once (uvloop", "_run_once")


def _short(frame: str) -> str:
    # py-spy frames look like "name (path/to/file.py:LINE)"; keep name and file tail.
    # With --threads the first frame is "thread (TID): NAME": keep the thread's name.
    if frame.startswith("thread ("):
        return "thread " + frame.partition("): ")[2]
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    tail = "/".join(parts[-2:]) if "site-packages" in path or len(parts) > 2 else path
    return f"{name} ({tail})"


def summarise(text: str, top: int = 25) -> str:
    """The summary for one collapsed-stack profile."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        total += count
        leaf = stack.split(";")[-1]
        if any(marker in leaf for marker in ("select (", "poll (", "epoll")):
            idle += count
            continue
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    busy = max(total - idle, 1)
    out = [f"samples: {total}, idle in the event loop's poll: {idle} "
           f"({100 * idle / max(total, 1):.0f}%); shares below are of busy samples",
           "", f"top {top} by self time:"]
    out += [f"  {100 * n / busy:5.1f}%  {f}" for f, n in self_t.most_common(top)]
    out += ["", f"top {top} by inclusive time:"]
    out += [f"  {100 * n / busy:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the summary of one profile."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("profile", type=pathlib.Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    print(summarise(args.profile.read_text(), args.top), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
