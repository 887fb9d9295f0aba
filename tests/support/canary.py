"""Canary scanning: look for personal test strings in every encoding a leak could take.

A canary found raw, in base64 (any of the three byte alignments), in hex, in UTF-16
(either byte order) or URL-encoded counts as a hit; so a leak that went through a
base64 field, a JSON escape or a log formatter is still caught.
"""

from __future__ import annotations

import base64
import pathlib
import secrets
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Hit", "encodings", "new_canary", "scan_bytes", "scan_tree"]


def new_canary(label: str) -> str:
    """A unique, unguessable canary string tagged with the field it stands in for."""
    return f"CANARY{label}{secrets.token_hex(8)}"


def _b64_variants(raw: bytes) -> list[bytes]:
    # A substring of a base64 stream depends on the offset at which it starts, so
    # encode with 0, 1 and 2 leading bytes and keep only the stable middle part.
    out = []
    for shift in range(3):
        enc = base64.b64encode(b"\x00" * shift + raw)
        start = 4 * ((shift + 2) // 3)
        stable = enc[start:start + 4 * (len(raw) // 3 - 1)]
        if len(stable) >= 8:
            out += [stable, stable.replace(b"+", b"-").replace(b"/", b"_")]
    return out


def encodings(canary: str) -> dict[str, list[bytes]]:
    """Byte patterns under which ``canary`` might be stored."""
    raw = canary.encode()
    return {
        "raw": [raw],
        "base64": _b64_variants(raw),
        "hex": [raw.hex().encode(), raw.hex().upper().encode()],
        "utf16": [canary.encode("utf-16-le"), canary.encode("utf-16-be")],
        "url": [urllib.parse.quote(canary).encode(), urllib.parse.quote_plus(canary).encode()],
    }


@dataclass(frozen=True)
class Hit:
    """One canary found in one place under one encoding."""

    where: str
    canary: str
    encoding: str


def scan_bytes(where: str, data: bytes, canaries: Iterable[str]) -> list[Hit]:
    """Every (canary, encoding) found in ``data``."""
    hits = []
    for canary in canaries:
        for name, patterns in encodings(canary).items():
            if any(p in data for p in patterns):
                hits.append(Hit(where, canary, name))
    return hits


def scan_tree(root: pathlib.Path, canaries: Iterable[str]) -> list[Hit]:
    """Scan every regular file below ``root`` (databases, WAL, shm, journals, logs)."""
    listed = list(canaries)
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hits += scan_bytes(str(path), path.read_bytes(), listed)
    return hits
