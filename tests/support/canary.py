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

__all__ = ["CanaryIndex", "Hit", "encodings", "new_canary", "scan_bytes", "scan_tree"]


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


class CanaryIndex:
    """Thousands of canaries scanned in one pass per file, with the same hits as ``scan_bytes``.

    ``scan_bytes`` costs (canaries x patterns x bytes); over 2,000 canaries and a
    database of megabytes that is hours. Here every pattern is indexed by its first
    ``_HEAD`` bytes: the distinct heads are few when the canaries share a prefix (they
    do: ``CANARY...``, ``2001:db8:...``), each head is found with ``bytes.find``, and
    each occurrence is checked against the full patterns that start with it. Every
    occurrence of a full pattern starts with its head, so nothing ``scan_bytes`` would
    report is missed (``tests/proofs/test_proofs_canary_index.py`` checks both agree).
    """

    _HEAD = 8

    def __init__(self, canaries: Iterable[str]) -> None:
        self.canaries = list(canaries)
        self._by_head: dict[bytes, list[tuple[bytes, str, str]]] = {}
        for canary in self.canaries:
            for name, patterns in encodings(canary).items():
                for pattern in set(patterns):
                    if len(pattern) < self._HEAD:
                        raise ValueError("canary too short to index")
                    self._by_head.setdefault(pattern[:self._HEAD], []).append(
                        (pattern, canary, name))
        # Second level: within one head, entries keyed by their first ``key_len`` bytes,
        # so an occurrence costs one dict look-up, not one comparison per canary.
        self._second: dict[bytes, tuple[int, dict[bytes, list[tuple[bytes, str, str]]]]] = {}
        for head, entries in self._by_head.items():
            key_len = min(len(p) for p, _, _ in entries)
            table: dict[bytes, list[tuple[bytes, str, str]]] = {}
            for entry in entries:
                table.setdefault(entry[0][:key_len], []).append(entry)
            self._second[head] = (key_len, table)

    @property
    def heads(self) -> int:
        """Distinct pattern heads searched per file (small when canaries share a prefix)."""
        return len(self._by_head)

    def scan(self, where: str, data: bytes) -> list[Hit]:
        """Every (canary, encoding) found in ``data``, once each."""
        found: set[tuple[str, str]] = set()
        for head, (key_len, table) in self._second.items():
            pos = data.find(head)
            while pos >= 0:
                for pattern, canary, name in table.get(data[pos:pos + key_len], ()):
                    if data.startswith(pattern, pos):
                        found.add((canary, name))
                pos = data.find(head, pos + 1)
        return [Hit(where, c, n) for c, n in sorted(found)]

    def scan_tree(self, root: pathlib.Path) -> list[Hit]:
        """Scan every regular file below ``root``."""
        hits = []
        for path in sorted(root.rglob("*")):
            if path.is_file():
                hits += self.scan(str(path), path.read_bytes())
        return hits
