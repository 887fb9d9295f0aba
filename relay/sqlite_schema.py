"""The relay database's versioned schema files, their upgrades, and the newer-file refusal.

``relay/schema/NNN_*.sql`` are applied in order, each in one transaction that ends by
setting ``PRAGMA user_version = NNN``. A file whose version is above the newest file
this code knows was written by a newer relay (the package was downgraded, or a newer
relay's state directory restored): opening it is refused before anything writes to it,
because this code would move rows without the columns and counters the newer schema
keeps (schema 004's outbox totals, for one) and so corrupt it for that newer relay.
"""

from __future__ import annotations

import pathlib
import sqlite3
from importlib import resources

from .errors import SchemaNewer

__all__ = ["SCHEMA_VERSION", "migrate", "refuse_newer", "schema_files", "statements"]


def schema_files() -> list[tuple[int, str]]:
    """Every ``(version, sql)`` of relay/schema, oldest first."""
    root = resources.files("relay") / "schema"
    out = []
    for item in root.iterdir():
        if item.name.endswith(".sql"):
            out.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(out)


SCHEMA_VERSION = max(v for v, _ in schema_files())


def refuse_newer(path: pathlib.Path) -> None:
    """Raise :class:`SchemaNewer` if the file at ``path`` has a newer schema; write nothing.

    Runs before the store's connections open: their pragmas, the upgrade, the outbox
    recount and the checkpoint at close would all touch a file that is not ours to
    change. ``immutable=1`` reads the main file with no lock and no -wal or -shm
    created. A -wal left by a relay that stopped without its last checkpoint may hold
    the newest pages (the schema version among them), so then a read-only connection
    reads through it; being read-only it never checkpoints it into the file. A file a
    newer relay upgrades between this read and the writer's open (two relays on one
    directory at once) is still refused by the upgrade step, but by then the writer's
    pragmas and its close may have folded the -wal into the file: unchanged content,
    not unchanged bytes.
    """
    if not path.exists():
        return
    wal = path.with_name(path.name + "-wal")
    uri = path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
    conn = sqlite3.connect(uri, uri=True)
    try:
        row = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise SchemaNewer(int(row[0]), SCHEMA_VERSION)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the schema files newer than the file's user_version, each in one transaction."""
    row = conn.execute("PRAGMA user_version").fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:  # made newer after refuse_newer read it: still refused
        raise SchemaNewer(current, SCHEMA_VERSION)
    for version, sql in schema_files():
        if version > current:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in statements(sql):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={int(version)}")
            conn.execute("COMMIT")


def statements(sql: str) -> list[str]:
    """Split a schema file into statements (the files hold no semicolons inside strings)."""
    lines = [ln.split("--", 1)[0] for ln in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
