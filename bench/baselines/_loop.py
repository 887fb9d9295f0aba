"""``--uvloop`` for the baseline servers: the same event loop the relay runs on."""

from __future__ import annotations

import sys


def install_uvloop() -> None:
    """Install uvloop's loop policy, or say on stderr that plain asyncio runs."""
    try:
        import uvloop
    except ImportError:
        print("uvloop not installed; using asyncio", file=sys.stderr)
        return
    uvloop.install()
