"""Signed audit checkpoints kept twice (vault.db and ``audit-checkpoints.jsonl``) and the
``audit verify`` operation.

The second copy is an append-only file (O_APPEND, fsync) so an attacker who edits
vault.db to drop the tail of the log and its newest checkpoint row is still caught by
the file copy. Verifying needs only the identity *public* key from vault.json, so an
auditor can run it without the passphrase or any secret.
"""

from __future__ import annotations

import json
import os
import pathlib

from envelope import b64d

from .audit import AuditProblem, sign_checkpoint, verify_audit_chain
from .errors import KeyFileError
from .keyfiles import VaultKeys
from .store import VaultStore

__all__ = ["CHECKPOINT_FILE", "identity_public_key", "verify_audit", "write_checkpoint"]

CHECKPOINT_FILE = "audit-checkpoints.jsonl"


async def write_checkpoint(store: VaultStore, keys: VaultKeys, state_dir: pathlib.Path,
                           now: int, *, head: tuple[int, str] | None = None) -> int | None:
    """Sign the chain head (the current one, or ``head`` = a verified (seq, hash)) into
    both copies; return its seq (None if the log is empty)."""
    seq, head_hash = head if head is not None else await store.audit_head()
    if seq == 0:
        return None
    body, sig = sign_checkpoint(keys.identity, account=keys.account, seq=seq, head=head_hash,
                                at=now)
    await store.add_checkpoint(body, sig, seq)
    fd = os.open(state_dir / CHECKPOINT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps({"body": body, "sig": sig}) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return seq


def identity_public_key(state_dir: pathlib.Path) -> bytes:
    """The identity public key recorded in vault.json (no secret needed)."""
    try:
        doc = json.loads((state_dir / "vault.json").read_text())
        return b64d(doc["identity_public"], length=32)
    except Exception:  # missing file, bad JSON, bad base64: one answer
        raise KeyFileError(f"{state_dir / 'vault.json'} is missing or corrupt") from None


def _file_checkpoints(state_dir: pathlib.Path) -> list[tuple[str, str]]:
    path = state_dir / CHECKPOINT_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
            out.append((str(doc["body"]), str(doc["sig"])))
        except (ValueError, KeyError, TypeError):
            out.append(("", ""))  # a garbled line fails signature verification below
    return out


async def verify_audit(store: VaultStore, state_dir: pathlib.Path) -> list[AuditProblem]:
    """Every problem found in the audit log; an empty list means it verifies."""
    rows = await store.audit_rows()
    checkpoints = sorted(set(await store.checkpoints()) | set(_file_checkpoints(state_dir)))
    return verify_audit_chain(rows, checkpoints, identity_public_key(state_dir))
