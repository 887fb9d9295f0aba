"""The canary scanner finds what it is meant to find (positive controls)."""

from __future__ import annotations

import base64
import pathlib
import urllib.parse

import pytest

from tests.support.canary import new_canary, scan_bytes, scan_tree


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"xyz"])
@pytest.mark.parametrize("form", ["raw", "base64", "urlsafe", "hex", "utf16", "url"])
def test_scanner_finds_every_encoding(prefix: bytes, form: str) -> None:
    canary = new_canary("name") + " é/+"
    raw = prefix + canary.encode()
    data = {
        "raw": raw,
        "base64": base64.b64encode(raw),
        "urlsafe": base64.urlsafe_b64encode(raw),
        "hex": raw.hex().encode(),
        "utf16": canary.encode("utf-16-le"),
        "url": urllib.parse.quote(canary).encode(),
    }[form]
    assert scan_bytes("blob", b"noise" + data + b"noise", [canary])


def test_scanner_is_quiet_on_other_data(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.db").write_bytes(b"nothing personal here" * 100)
    assert scan_tree(tmp_path, [new_canary("email")]) == []
