"""`controller-vault` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `controller-vault` console script."""
    print("controller-vault: subcommands: init, serve, pair (being built)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
