"""Fuzz the export file naming: only ExportNameError may escape, and every accepted name
is a plain file name that cannot break out of a directory or the header it goes in."""

from __future__ import annotations

from controller_vault.staff.errors import StaffError
from controller_vault.staff.export import MAX_FILENAME, content_disposition, export_filename

__all__ = ["seeds", "test_one_input"]


def seeds() -> list[bytes]:
    """Names a staff member might type, and classic path tricks."""
    return [b"alice-sar", b"export.json", b"../../etc/passwd", b"CON", b".hidden",
            b"a\x00b", b"C:\\x", b"exportport.", "\u00e9t\u00e9".encode()]


def test_one_input(data: bytes) -> None:
    """One input: the bytes as a requested name."""
    requested = data.decode("utf-8", errors="replace")
    try:
        name = export_filename(requested, account="clinic", export_id="e" * 16,
                               generated_at=1_800_000_000)
    except StaffError as exc:
        assert exc.code == "export.bad_filename", exc.code
        return
    assert name.endswith(".json") and len(name) <= MAX_FILENAME
    assert not name.startswith(".") and ".." not in name
    for bad in ("/", "\\", "\x00", '"', "\r", "\n"):
        assert bad not in name
    assert content_disposition(name).count('"') == 2
