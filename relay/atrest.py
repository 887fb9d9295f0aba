"""Standard-mode transcripts encrypted at rest: per-account data keys under a master key.

Each account has data keys (AES-256-GCM); the active one encrypts new items, older
ones stay for reading. A data key is stored only wrapped (AES-GCM under the relay
master key, with the account and key id as associated data, so a wrapped key moved to
another account's row does not unwrap: key-swapping by someone with database access).
A stolen database file alone therefore yields no transcript.

Rotation: :meth:`TranscriptCipher.rotate_data_key` starts a new data key;
:func:`rewrap_data_keys` moves every wrapped key to a new master key.

Failures raise :class:`AtRestError` without saying which check failed.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .store import DataKeyRow, RelayStore, TranscriptRow

__all__ = ["AtRestError", "TranscriptCipher", "rewrap_data_keys"]

_VERSION = b"\x01"


class AtRestError(Exception):
    """A stored item could not be decrypted (opaque)."""

    code = "atrest.undecryptable"


def _wrap(master: bytes, account: str, key_id: str, key: bytes) -> bytes:
    nonce = os.urandom(12)
    return _VERSION + nonce + AESGCM(master).encrypt(nonce, key, f"{account}/{key_id}".encode())


def _unwrap(master: bytes, row: DataKeyRow) -> bytes:
    blob = row.wrapped
    if blob[:1] != _VERSION:
        raise AtRestError()
    try:
        return AESGCM(master).decrypt(blob[1:13], blob[13:],
                                      f"{row.account}/{row.key_id}".encode())
    except InvalidTag as exc:
        raise AtRestError() from exc


class TranscriptCipher:
    """Encrypts and decrypts standard-mode transcript items for a store."""

    def __init__(self, store: RelayStore, master_key: bytes) -> None:
        self.store = store
        self.master_key = master_key

    async def _active_key(self, account: str, now: int) -> tuple[str, bytes]:
        rows = await self.store.data_keys(account)
        if rows and rows[0].active:
            return rows[0].key_id, _unwrap(self.master_key, rows[0])
        return await self.rotate_data_key(account, now)

    async def rotate_data_key(self, account: str, now: int) -> tuple[str, bytes]:
        """Start a new active data key for ``account``; return (key id, key)."""
        key, key_id = AESGCM.generate_key(bit_length=256), os.urandom(8).hex()
        await self.store.add_data_key(
            DataKeyRow(account, key_id, _wrap(self.master_key, account, key_id, key), True),
            now)
        return key_id, key

    async def seal_items(self, account: str, engagement: str, items: list[dict[str, Any]],
                         now: int) -> list[TranscriptRow]:
        """Encrypt transcript items (JSON objects) under the account's active key."""
        key_id, key = await self._active_key(account, now)
        aead, rows = AESGCM(key), []
        for item in items:
            nonce = os.urandom(12)
            # Associated data binds the item to its account and engagement (no splicing).
            ad = f"{account}/{engagement}".encode()
            data = json.dumps(item, separators=(",", ":")).encode()
            rows.append(TranscriptRow(account, engagement, key_id,
                                      _VERSION + nonce + aead.encrypt(nonce, data, ad), now))
        return rows

    async def read(self, account: str, engagement: str) -> list[dict[str, Any]]:
        """Decrypt an engagement's transcript items in order."""
        keys = {r.key_id: r for r in await self.store.data_keys(account)}
        out = []
        for row in await self.store.read_transcript(account, engagement):
            key_row = keys.get(row.key_id)
            if key_row is None or row.sealed[:1] != _VERSION:
                raise AtRestError()
            try:
                plain = AESGCM(_unwrap(self.master_key, key_row)).decrypt(
                    row.sealed[1:13], row.sealed[13:], f"{account}/{engagement}".encode())
            except InvalidTag as exc:
                raise AtRestError() from exc
            out.append(json.loads(plain))
        return out


async def rewrap_data_keys(store: RelayStore, accounts: list[str], old_master: bytes,
                           new_master: bytes) -> int:
    """Re-wrap every data key of ``accounts`` under ``new_master``; return keys rewrapped."""
    rows = []
    for account in accounts:
        for row in await store.data_keys(account):
            key = _unwrap(old_master, row)
            rows.append(DataKeyRow(account, row.key_id,
                                   _wrap(new_master, account, row.key_id, key), row.active))
    await store.replace_wrapped_keys(rows)
    return len(rows)
