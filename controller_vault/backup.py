"""Online backup and restore of the vault's stores: the data store and, SEPARATELY, the key
store, each in its own folder with its own manifest so the two can be kept apart.

Layout of a backup directory (folders 0700, files 0600)::

    manifest.json            both parts' manifests (informative)
    data/manifest.json       part "data": time, account, sha256, size, schema version
    data/vault.db            consistent copy of the data store (SQLite backup API)
    data/staff.db            staff token hashes, when the vault has them
    data/vault.json          public keys and statements (no secret)
    data/audit-checkpoints.jsonl
    keys/manifest.json       part "keys"
    keys/keys.db             per-engagement data keys, wrapped by the master key

No secret file (secrets/) is ever copied: keys.db is only useful together with the
master key, which stays in the controller's own custody (systemd credential or offline
copy). Why the two parts need different retention is in README.md ("Backups").

>>> sorted(PART_DATABASES)
['data', 'keys']
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import os
import pathlib
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .checkpoints import CHECKPOINT_FILE
from .errors import AlreadyServing, VaultError

__all__ = [
    "BACKUP_FORMAT",
    "PART_DATABASES",
    "BackupError",
    "RestoreReport",
    "latest_schema_version",
    "restore_backup",
    "take_backup",
]

BACKUP_FORMAT = 1
# part -> (database file, schema prefix, required)
PART_DATABASES: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "data": (("vault.db", "vault", True), ("staff.db", "staff", False)),
    "keys": (("keys.db", "keys", True),),
}
_PLAIN_FILES = {"data": ("vault.json", CHECKPOINT_FILE), "keys": ()}
_MANIFEST = "manifest.json"


class BackupError(VaultError):
    """A backup could not be taken or restored; ``code`` says why (backup.*)."""

    code = "backup.failed"


@dataclass(frozen=True)
class RestoreReport:
    """What a restore put back: part -> file names, and the backup's creation time."""

    parts: dict[str, list[str]]
    created_at: dict[str, int]


def latest_schema_version(schema: str) -> int:
    """The newest schema version this code knows for ``schema`` (vault, keys or staff)."""
    if schema == "staff":
        from .staff.token_store import SCHEMA_VERSION

        return int(SCHEMA_VERSION)
    found = [int(r.name[len(schema) + 1:-4])
             for r in importlib.resources.files("controller_vault.schema").iterdir()
             if r.name.startswith(schema + "-") and r.name.endswith(".sql")]
    return max(found, default=0)


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_file(path: pathlib.Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)  # a pre-existing file keeps its mode under O_CREAT: force it


def _copy_database(src: pathlib.Path, dst: pathlib.Path) -> int:
    """Consistent copy of a live WAL database; return its user_version."""
    # mode=rw: never create an empty source by mistake. One backup step (pages=-1) runs
    # inside one read transaction: in WAL mode that is a snapshot, so the writer keeps
    # committing and the copy is exactly the database as of one commit.
    try:
        source = sqlite3.connect(f"file:{src}?mode=rw", uri=True, timeout=10.0)
    except sqlite3.Error:
        raise BackupError(f"cannot open {src}", code="backup.source_unavailable") from None
    _private_file(dst)
    target = sqlite3.connect(dst, isolation_level=None)
    try:
        source.backup(target)
        # A single self-contained file: no -wal beside the copy to lose or mismatch.
        target.execute("PRAGMA journal_mode = DELETE")
        version = int(target.execute("PRAGMA user_version").fetchone()[0])
        _integrity(target, dst.name)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {src.name} ({exc.__class__.__name__})",
                          code="backup.source_unavailable") from None
    finally:
        target.close()
        source.close()
    _fsync(dst)
    return version


def _integrity(db: sqlite3.Connection, name: str) -> None:
    rows = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    if rows != ["ok"]:
        raise BackupError(f"{name} fails PRAGMA integrity_check", code="backup.integrity")


def _account(state: pathlib.Path) -> str | None:
    try:
        return str(json.loads((state / "vault.json").read_text())["account"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"{state / 'vault.json'} is corrupt", code="backup.manifest") from None


def take_backup(state_dir: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                now: int) -> dict[str, Any]:
    """Copy the data store and the key store of a (possibly running) vault into ``dest``."""
    state, out = pathlib.Path(state_dir), pathlib.Path(dest)
    account = _account(state)
    if account is None or not (state / "vault.db").exists() or not (state / "keys.db").exists():
        raise BackupError(f"no vault stores in {state}", code="backup.no_vault")
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; give a new directory", code="backup.exists")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    manifest: dict[str, Any] = {"format": BACKUP_FORMAT, "account": account,
                                "created_at": now, "parts": {}}
    # Order matters. Plain files before the data store: a checkpoint is written to
    # vault.db before the checkpoint file, so every checkpoint in the copied file is
    # also in the copied database (audit verify passes after restore). The data store
    # before the key store: every engagement in the data copy that is not erased has its
    # key in the later key copy; an erasure in between leaves it unreadable, as it must.
    for part in ("data", "keys"):
        folder = out / part
        folder.mkdir(mode=0o700)
        files: dict[str, dict[str, Any]] = {}
        for name in _PLAIN_FILES[part]:
            if (state / name).exists():
                _private_file(folder / name)
                shutil.copyfile(state / name, folder / name)
                _fsync(folder / name)
                files[name] = {}
        for name, schema, required in PART_DATABASES[part]:
            if not required and not (state / name).exists():
                continue
            version = _copy_database(state / name, folder / name)
            files[name] = {"schema": schema, "schema_version": version}
        for name, entry in files.items():
            entry.update(sha256=_sha256(folder / name), bytes=(folder / name).stat().st_size)
        part_manifest = {"format": BACKUP_FORMAT, "part": part, "account": account,
                         "created_at": now, "files": files}
        _write_json(folder / _MANIFEST, part_manifest)
        manifest["parts"][part] = part_manifest
    _write_json(out / _MANIFEST, manifest)
    return manifest


def _write_json(path: pathlib.Path, doc: dict[str, Any]) -> None:
    _private_file(path)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _fsync(path)


def _read_manifest(folder: pathlib.Path, part: str) -> dict[str, Any]:
    try:
        doc = json.loads((folder / _MANIFEST).read_text())
        files = doc["files"]
        ok = (doc["format"] == BACKUP_FORMAT and doc["part"] == part
              and isinstance(files, dict) and isinstance(doc["created_at"], int))
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise BackupError(f"{folder / _MANIFEST} is missing or not a format-{BACKUP_FORMAT} "
                          f"manifest of part {part}", code="backup.manifest")
    known = {n for n, _, _ in PART_DATABASES[part]} | set(_PLAIN_FILES[part])
    for name, _, required in PART_DATABASES[part]:
        if required and name not in files:
            raise BackupError(f"part {part} lacks {name}", code="backup.manifest")
    if set(files) - known:
        # Names come from the manifest: refuse anything that is not ours (no path tricks).
        raise BackupError(f"part {part} lists unknown files", code="backup.manifest")
    return dict(doc)


def _is_live(path: pathlib.Path) -> bool:
    """True if another process holds ``path`` open (a running vault)."""
    # An exclusive lock cannot be had while any WAL connection is open (each holds a
    # shared lock), so this tells a stopped store from a running one without writing.
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    except sqlite3.DatabaseError:
        # Not a database (garbage, a corrupt header): no process holds it open as one,
        # and the serve.lock the restore holds keeps a serve from starting on it. The
        # store to restore over, not a traceback.
        return False
    finally:
        db.close()


def _has_data(path: pathlib.Path) -> bool:
    return any(p.exists() and p.stat().st_size > 0
               for p in (path, path.with_name(path.name + "-wal")))


def _hold_serve_lock(state: pathlib.Path) -> int | None:
    """Take ``state``'s serve.lock for the restore (its descriptor), or None for a state
    directory that does not exist yet: the restore creates it and leaves no serve.lock."""
    from .serve import SERVE_LOCK, hold_serve_lock  # here: serve imports the whole app

    if not state.exists():
        return None
    try:
        return hold_serve_lock(state)
    except AlreadyServing:
        raise BackupError(f"a controller-vault serve or restore is running on {state} "
                          f"({SERVE_LOCK} is held); stop it first",
                          code="backup.live_store") from None


def restore_backup(source: str | os.PathLike[str], state_dir: str | os.PathLike[str], *,
                   parts: tuple[str, ...] = ("data", "keys"), force: bool = False,
                   before_release: Callable[[RestoreReport], None] | None = None,
                   ) -> RestoreReport:
    """Check a backup's manifests, checksums and integrity, then put its stores in place.

    ``before_release(report)`` runs while serve.lock is still held (the CLI writes the
    restore's audit entry there): no serve starts on the stores before it returns.
    """
    src, state = pathlib.Path(source), pathlib.Path(state_dir)
    # Held from before the first write to after the last, not only checked: the SQLite
    # check below sees only stores held open, and a serve started while the files are
    # being replaced (or one starting up, between its stores) would open a store that
    # is then swapped under it, split from its WAL: both corrupt. While the restore
    # holds the lock, such a serve exits with vault.already_serving instead.
    lock = _hold_serve_lock(state)
    try:
        report = _restore_locked(src, state, parts, force)
        if before_release is not None:
            before_release(report)
        return report
    finally:
        if lock is not None:
            os.close(lock)


def _restore_locked(src: pathlib.Path, state: pathlib.Path, parts: tuple[str, ...],
                    force: bool) -> RestoreReport:
    manifests = {part: _read_manifest(src / part, part) for part in parts}
    accounts = {m["account"] for m in manifests.values()}
    live_account = _account(state) if state.exists() else None
    if len(accounts) != 1 or (live_account is not None and live_account not in accounts):
        raise BackupError("the backup belongs to another account than this vault",
                          code="backup.account_mismatch")
    for part, doc in manifests.items():
        for name, entry in doc["files"].items():
            path = src / part / name
            if not path.is_file() or _sha256(path) != entry.get("sha256"):
                raise BackupError(f"{part}/{name} does not match its manifest checksum",
                                  code="backup.checksum")
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    for part, doc in manifests.items():
        for name, _, _ in PART_DATABASES[part]:
            target = state / name
            if name in doc["files"] and target.exists() and _is_live(target):
                # Replacing the file under a running service would split it from its WAL
                # and corrupt both: stop the service first, --force or not.
                raise BackupError(f"{target} is in use by a running vault; stop it first",
                                  code="backup.live_store")
            if name in doc["files"] and _has_data(target) and not force:
                raise BackupError(f"{target} already holds data; give --force to replace it",
                                  code="backup.target_not_empty")
    staged: list[tuple[pathlib.Path, pathlib.Path]] = []
    try:
        for part, doc in manifests.items():
            for name, schema, _ in PART_DATABASES[part]:
                if name in doc["files"]:
                    staged.append((_stage(src / part / name, state, doc["files"][name],
                                          schema), state / name))
        for tmp, target in staged:
            for suffix in ("-wal", "-shm", "-journal"):
                # A stale WAL of the old file would be replayed into the restored one.
                target.with_name(target.name + suffix).unlink(missing_ok=True)
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    restored = {part: [n for n, _, _ in PART_DATABASES[part] if n in doc["files"]]
                for part, doc in manifests.items()}
    for part, doc in manifests.items():
        for name in _PLAIN_FILES[part]:
            # Public files come back only into a fresh directory: a live vault.json may
            # list newer keys, and the live checkpoint file is evidence of what a restore
            # of an older data store lost (audit verify reports it).
            if name in doc["files"] and not (state / name).exists():
                _private_file(state / name)
                shutil.copyfile(src / part / name, state / name)
                restored[part].append(name)
    _fsync(state)
    return RestoreReport(parts=restored,
                         created_at={p: int(m["created_at"]) for p, m in manifests.items()})


def _stage(src: pathlib.Path, state: pathlib.Path, entry: dict[str, Any],
           schema: str) -> pathlib.Path:
    tmp = state / f".restore-{src.name}"
    _private_file(tmp)
    shutil.copyfile(src, tmp)
    db = sqlite3.connect(f"file:{tmp}?mode=rw", uri=True, isolation_level=None)
    try:
        _integrity(db, src.name)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError:
        raise BackupError(f"{src.name} is not a readable SQLite database",
                          code="backup.integrity") from None
    finally:
        db.close()
    if version != entry.get("schema_version"):
        raise BackupError(f"{src.name} schema version differs from its manifest",
                          code="backup.manifest")
    if version > latest_schema_version(schema):
        raise BackupError(f"{src.name} is from a newer vault (schema {version}); upgrade first",
                          code="backup.newer_schema")
    with contextlib.suppress(OSError):
        _fsync(tmp)
    return tmp
