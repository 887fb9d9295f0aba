"""The audit log's hash chain and signed checkpoints (pure: values in, values out).

Each entry's hash covers the previous hash and the entry's fields, so changing,
deleting or reordering an entry breaks the chain from that point on. Truncating the
tail leaves a valid chain, so the vault periodically signs the chain head with its
identity key (a checkpoint) and keeps the checkpoints twice: in the database and in
an append-only file beside it. A log shorter than its last checkpoint, or whose hash
at a checkpoint differs, has lost entries.

Entries hold actor, action, purpose, target (engagement ids, key ids, counts) and a
detail object of non-personal values; never personal data.

>>> h1 = entry_hash(GENESIS, AuditEntry(1, 10, "system", "init", "setup", "-", "{}"))
>>> len(h1)
64
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import nacl.signing

from envelope import IdentityKey, b64d, b64e, canonical_json

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditProblem",
    "entry_hash",
    "sign_checkpoint",
    "verify_audit_chain",
    "verify_checkpoint",
]

GENESIS = "0" * 64
_DOMAIN = b"compliance-relay/v1/audit-checkpoint\x00"


@dataclass(frozen=True)
class AuditEntry:
    """One audit record as stored (``detail`` is canonical JSON text)."""

    seq: int
    at: int
    actor: str
    action: str
    purpose: str
    target: str
    detail: str


@dataclass(frozen=True)
class AuditProblem:
    """Where and how the log fails to verify; ``code`` is stable."""

    code: str
    seq: int
    message: str


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """The chain hash of ``entry`` after ``prev_hash``."""
    data = canonical_json([prev_hash, entry.seq, entry.at, entry.actor, entry.action,
                           entry.purpose, entry.target, entry.detail])
    return hashlib.blake2b(data, digest_size=32, person=b"cr-audit-v1").hexdigest()


def sign_checkpoint(identity: IdentityKey, *, account: str, seq: int, head: str,
                    at: int) -> tuple[str, str]:
    """``(body, sig)`` signing that entry ``seq`` has chain hash ``head``."""
    body = canonical_json({"t": "audit-checkpoint", "v": 1, "acct": account, "seq": seq,
                           "head": head, "at": at}).decode()
    return body, b64e(identity.sign(_DOMAIN + body.encode()))


def verify_checkpoint(body: str, sig: str, identity_public_key: bytes) -> tuple[int, str]:
    """``(seq, head)`` of a checkpoint whose signature verifies, else ValueError."""
    try:
        nacl.signing.VerifyKey(identity_public_key).verify(_DOMAIN + body.encode(),
                                                           b64d(sig, length=64))
        doc = json.loads(body)
        if doc.get("t") != "audit-checkpoint" or type(doc.get("seq")) is not int:
            raise ValueError("not a checkpoint")
        return int(doc["seq"]), str(doc["head"])
    except Exception as exc:  # any failure (signature, JSON, base64) is one answer
        raise ValueError("checkpoint does not verify") from exc


def verify_audit_chain(
    rows: Sequence[tuple[AuditEntry, str, str]],
    checkpoints: Sequence[tuple[str, str]],
    identity_public_key: bytes,
    *, after: tuple[int, str] = (0, GENESIS),
) -> list[AuditProblem]:
    """Check ``(entry, prev_hash, hash)`` rows in stored order against signed checkpoints.

    ``after`` = (seq, hash) of an entry already verified: the rows then continue from it
    (the service checks only what was appended since its last check).
    """
    problems: list[AuditProblem] = []
    prev, expected_seq = after[1], after[0] + 1
    hashes: dict[int, str] = {}
    for entry, stored_prev, stored_hash in rows:
        if entry.seq != expected_seq:
            code = "audit.deleted" if entry.seq > expected_seq else "audit.reordered"
            problems.append(AuditProblem(code, expected_seq,
                                         f"entry {expected_seq}: expected here, found "
                                         f"entry {entry.seq} ({code.split('.')[1]})"))
            return problems
        if stored_prev != prev:
            problems.append(AuditProblem("audit.reordered", entry.seq,
                                         f"entry {entry.seq}: does not follow entry "
                                         f"{entry.seq - 1} (reordered or replaced)"))
            return problems
        if entry_hash(prev, entry) != stored_hash:
            problems.append(AuditProblem("audit.changed", entry.seq,
                                         f"entry {entry.seq}: contents changed"))
            return problems
        hashes[entry.seq] = stored_hash
        prev, expected_seq = stored_hash, expected_seq + 1
    last = expected_seq - 1
    for body, sig in checkpoints:
        try:
            seq, head = verify_checkpoint(body, sig, identity_public_key)
        except ValueError:
            problems.append(AuditProblem("audit.bad_checkpoint", 0,
                                         "a checkpoint's signature does not verify"))
            continue
        if seq > last:
            problems.append(AuditProblem("audit.truncated", last + 1,
                                         f"entries {last + 1}..{seq} missing: the log ends "
                                         f"at entry {last} but a signed checkpoint covers "
                                         f"entry {seq} (truncated)"))
        elif hashes.get(seq) != head:
            problems.append(AuditProblem("audit.changed", seq,
                                         f"entry {seq}: differs from its signed checkpoint"))
    return problems
