"""`relay` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `relay` console script."""
    print("relay: subcommands: serve, account (being built)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
