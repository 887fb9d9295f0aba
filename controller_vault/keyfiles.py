"""The vault's keys on disk: ``init``, loading with clear errors, rotation, passphrase.

Layout of the state directory (mode 0700)::

    vault.json               public: account, identity public key, encryption key list
                             with signed statements, current key id, passphrase KDF params
    secrets/                 0700
      identity.key           Ed25519 seed of the controller identity (trust anchor)
      master.key             wraps the per-engagement data keys in keys.db
      index.key              keys the blind index of subject identifiers
      enc-<KID>.key          X25519 secret of each vault encryption key (old ones kept)

Each secret file is JSON ``{"v":1,"name":NAME,"key":B64}`` (0600), or when a passphrase
protects the vault ``{"v":1,"name":NAME,"nonce":B64,"ct":B64}`` sealed with
XChaCha20-Poly1305 under an argon2id key; the file name is the associated data, so a
protected file swapped for another (say identity.key for master.key) fails to open.
With ``$CREDENTIALS_DIRECTORY`` set (systemd ``LoadCredential=``), a secret of the same
file name there wins over the state directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.pwhash
import nacl.utils

from envelope import (
    EncryptionKey,
    EnvelopeError,
    IdentityKey,
    b64d,
    b64e,
    sign_vault_key_statement,
)
from envelope.limits import ACCOUNT_PATTERN

from .errors import KeyFileError, VaultExists

__all__ = [
    "KDF_MEM_FLOOR",
    "KDF_OPS_FLOOR",
    "KEY_VALIDITY_S",
    "VaultKeys",
    "embed_attribute",
    "init_vault",
    "load_vault_keys",
    "read_passphrase",
    "rotate_encryption_key",
]

KEY_VALIDITY_S = 2 * 365 * 86400
_CLOCK_SKEW_S = 300
_SECRET_NAMES = ("identity", "master", "index")
#: The weakest argon2id setting the vault accepts. vault.json is not authenticated (it
#: holds the salt and costs the passphrase needs before any key exists), so without a
#: floor an attacker who can edit it could set ops/mem to the minimum and make a stolen
#: copy of secrets/ cheap to brute-force once the vault re-wraps or re-inits with them.
KDF_OPS_FLOOR = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
KDF_MEM_FLOOR = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


@dataclass(frozen=True)
class VaultKeys:
    """Everything secret and public the running vault needs, loaded once at startup."""

    account: str
    identity: IdentityKey
    master_key: bytes
    index_key: bytes
    current_key_id: str
    encryption_keys: Mapping[str, EncryptionKey]
    statements: Mapping[str, dict[str, str]]
    key_created: Mapping[str, int] = field(default_factory=dict)

    @property
    def current_key(self) -> EncryptionKey:
        """The encryption key senders should seal to now."""
        return self.encryption_keys[self.current_key_id]

    @property
    def current_statement(self) -> dict[str, str]:
        """The signed statement of the current key (what the relay publishes)."""
        return self.statements[self.current_key_id]


def embed_attribute(keys: VaultKeys) -> str:
    """The attribute a controller pastes into its widget embed snippet."""
    return f'data-controller-fingerprint="{keys.identity.fingerprint}"'


def read_passphrase(path: str | None, credentials_dir: str | None = None) -> bytes | None:
    """The passphrase from systemd credentials (``passphrase``) or a file; None if neither."""
    candidates = []
    if credentials_dir:
        candidates.append(pathlib.Path(credentials_dir) / "passphrase")
    if path:
        candidates.append(pathlib.Path(path))
    for p in candidates:
        if p.exists():
            try:
                data = p.read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise KeyFileError(f"cannot read passphrase file {p}: {exc.strerror}") from None
            if not data:
                raise KeyFileError(f"passphrase file {p} is empty")
            return data
    return None


def _kdf(passphrase: bytes, params: Mapping[str, object], where: str = "vault.json") -> bytes:
    try:
        salt = b64d(params["salt"], length=nacl.pwhash.argon2id.SALTBYTES)
        ops, mem = params["ops"], params["mem"]
        if not isinstance(ops, int) or not isinstance(mem, int) or isinstance(ops, bool) \
                or isinstance(mem, bool):
            raise KeyError("ops")
    except (KeyError, EnvelopeError):
        raise KeyFileError(f"{where} has a corrupt passphrase section; restore it") from None
    if ops < KDF_OPS_FLOOR or mem < KDF_MEM_FLOOR:
        # Refuse rather than derive: a weakened cost is a downgrade attack on the
        # passphrase, not a setting to honour (see KDF_OPS_FLOOR).
        raise KeyFileError(f"{where} asks for passphrase KDF costs below the floor "
                           f"(ops {ops} < {KDF_OPS_FLOOR} or mem {mem} < {KDF_MEM_FLOOR}); "
                           "the file was altered: restore it from your backup")
    return bytes(nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit=ops, memlimit=mem))


def _write_secret(path: pathlib.Path, name: str, secret: bytes, wrap_key: bytes | None) -> None:
    if wrap_key is None:
        doc = {"v": 1, "name": name, "key": b64e(secret)}
    else:
        nonce = nacl.utils.random(24)
        ct = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            secret, name.encode(), nonce, wrap_key)
        doc = {"v": 1, "name": name, "nonce": b64e(nonce), "ct": b64e(ct)}
    # O_EXCL: never overwrite a secret; mode 0600 from creation, never briefly wider.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _read_secret(state: pathlib.Path, name: str, wrap_key: bytes | None,
                 credentials_dir: str | None) -> bytes:
    filename = f"{name}.key"
    path = state / "secrets" / filename
    from_credentials = False
    if credentials_dir and (pathlib.Path(credentials_dir) / filename).exists():
        path, from_credentials = pathlib.Path(credentials_dir) / filename, True
    if not path.exists():
        raise KeyFileError(f"key file {path} is missing; restore it from your backup "
                           "(without it the vault cannot start)")
    # A secret readable by other users is a leak waiting to happen: refuse to start.
    mode = path.stat().st_mode
    if not from_credentials and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} has mode {oct(mode & 0o777)}; "
                           f"run: chmod 600 {path}")
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("name") != name:
            raise ValueError
        if "key" in doc:
            secret = b64d(doc["key"], length=32)
        elif wrap_key is None:
            raise KeyFileError(f"key file {path} is passphrase-protected; give the "
                               "passphrase (--passphrase-file or credential 'passphrase')")
        else:
            secret = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                b64d(doc["ct"]), name.encode(), b64d(doc["nonce"], length=24), wrap_key)
            if len(secret) != 32:
                raise ValueError
    except KeyFileError:
        raise
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"key file {path} does not open with this passphrase "
                           "(wrong passphrase, or the file was altered)") from None
    except (OSError, ValueError, KeyError, TypeError, EnvelopeError):
        raise KeyFileError(f"key file {path} is corrupt; restore it from your backup") from None
    return bytes(secret)


def _statement(identity: IdentityKey, account: str, key: EncryptionKey,
               now: int) -> dict[str, str]:
    return sign_vault_key_statement(identity, account=account, key=key.public_bytes,
                                    not_before=max(0, now - _CLOCK_SKEW_S),
                                    not_after=now + KEY_VALIDITY_S)


def _write_public(state: pathlib.Path, doc: dict[str, object]) -> None:
    tmp = state / "vault.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, state / "vault.json")


def init_vault(state_dir: str | os.PathLike[str], account: str, *, now: int,
               passphrase: bytes | None = None,
               kdf_ops: int = nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
               kdf_mem: int = nacl.pwhash.argon2id.MEMLIMIT_MODERATE) -> VaultKeys:
    """Create a new vault's keys in ``state_dir``; refuse if any vault file exists there."""
    if not ACCOUNT_PATTERN.fullmatch(account):
        raise KeyFileError("account id out of pattern (lowercase letters, digits, - and _)")
    if passphrase is not None and (kdf_ops < KDF_OPS_FLOOR or kdf_mem < KDF_MEM_FLOOR):
        raise KeyFileError(f"init: passphrase KDF costs below the floor (ops {kdf_ops}, "
                           f"mem {kdf_mem}; at least {KDF_OPS_FLOOR}, {KDF_MEM_FLOOR})")
    state = pathlib.Path(state_dir)
    if state.exists() and any(state.iterdir()):
        raise VaultExists(f"{state} is not empty; init refuses to overwrite an existing vault")
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    (state / "secrets").mkdir(mode=0o700)
    doc: dict[str, object] = {"v": 1, "account": account}
    wrap_key = None
    if passphrase is not None:
        params: dict[str, object] = {"alg": "argon2id", "ops": kdf_ops, "mem": kdf_mem,
                                     "salt": b64e(nacl.utils.random(16))}
        wrap_key = _kdf(passphrase, params, "init")
        doc["kdf"] = params
    identity = IdentityKey.generate()
    enc = EncryptionKey.generate()
    master, index = nacl.utils.random(32), nacl.utils.random(32)
    secrets_dir = state / "secrets"
    for name, secret in (("identity", identity.seed), ("master", master), ("index", index),
                         (f"enc-{enc.key_id}", enc.secret)):
        _write_secret(secrets_dir / f"{name}.key", name, secret, wrap_key)
    statement = _statement(identity, account, enc, now)
    doc.update({"identity_public": b64e(identity.public_bytes), "current": enc.key_id,
                "keys": [{"kid": enc.key_id, "pk": b64e(enc.public_bytes), "created": now,
                          "statement": statement}]})
    _write_public(state, doc)
    return VaultKeys(account=account, identity=identity, master_key=master, index_key=index,
                     current_key_id=enc.key_id, encryption_keys={enc.key_id: enc},
                     statements={enc.key_id: statement}, key_created={enc.key_id: now})


def _read_public(state: pathlib.Path) -> dict[str, object]:
    path = state / "vault.json"
    if not path.exists():
        raise KeyFileError(f"{path} is missing; run `controller-vault init` first, "
                           "or point state_dir at the vault's directory")
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError
    except (OSError, ValueError):
        raise KeyFileError(f"{path} is corrupt; restore it from your backup") from None
    return doc


def _wrap_key(doc: Mapping[str, object], passphrase: bytes | None,
              where: str = "vault.json") -> bytes | None:
    params = doc.get("kdf")
    if params is None:
        return None
    if passphrase is None:
        raise KeyFileError("the vault's secret files are passphrase-protected; give the "
                           "passphrase (--passphrase-file or credential 'passphrase')")
    if not isinstance(params, dict):
        raise KeyFileError(f"{where} has a corrupt passphrase section; restore it")
    return _kdf(passphrase, params, where)


def load_vault_keys(state_dir: str | os.PathLike[str], *, passphrase: bytes | None = None,
                    credentials_dir: str | None = None) -> VaultKeys:
    """Load every key of the vault, or raise KeyFileError naming the file and the fix."""
    state = pathlib.Path(state_dir)
    doc = _read_public(state)
    wrap_key = _wrap_key(doc, passphrase, str(state / "vault.json"))
    seed, master, index = (_read_secret(state, n, wrap_key, credentials_dir)
                           for n in _SECRET_NAMES)
    identity = IdentityKey.from_seed(seed)
    try:
        account = str(doc["account"])
        if b64d(doc["identity_public"], length=32) != identity.public_bytes:
            raise KeyFileError("secrets/identity.key does not match vault.json's identity "
                               "key; restore the matching pair from your backup")
        entries = doc["keys"]
        current = str(doc["current"])
        if not isinstance(entries, list):
            raise TypeError("keys")
        encs: dict[str, EncryptionKey] = {}
        statements: dict[str, dict[str, str]] = {}
        created: dict[str, int] = {}
        for entry in entries:
            kid = entry["kid"]
            enc = EncryptionKey.from_secret(_read_secret(state, f"enc-{kid}", wrap_key,
                                                         credentials_dir))
            if enc.key_id != kid:
                raise KeyFileError(f"secrets/enc-{kid}.key holds another key; restore it")
            encs[kid], statements[kid], created[kid] = enc, entry["statement"], entry["created"]
        if current not in encs:
            raise KeyError("current")
    except KeyFileError:
        raise
    except (KeyError, TypeError, EnvelopeError):
        raise KeyFileError(f"{state / 'vault.json'} is corrupt; restore it from your "
                           "backup") from None
    return VaultKeys(account=account, identity=identity, master_key=master, index_key=index,
                     current_key_id=current, encryption_keys=encs, statements=statements,
                     key_created=created)


def rotate_encryption_key(state_dir: str | os.PathLike[str], *, now: int,
                          passphrase: bytes | None = None) -> VaultKeys:
    """Add a new current encryption key and statement; old keys stay for opening."""
    state = pathlib.Path(state_dir)
    doc = _read_public(state)
    wrap_key = _wrap_key(doc, passphrase, str(state / "vault.json"))
    keys = load_vault_keys(state, passphrase=passphrase)
    enc = EncryptionKey.generate()
    name = f"enc-{enc.key_id}"
    _write_secret(state / "secrets" / f"{name}.key", name, enc.secret, wrap_key)
    statement = _statement(keys.identity, keys.account, enc, now)
    listed = doc.get("keys")
    if not isinstance(listed, list):
        raise KeyFileError(f"{state / 'vault.json'} is corrupt; restore it from your backup")
    entries = list(listed)
    entries.append({"kid": enc.key_id, "pk": b64e(enc.public_bytes), "created": now,
                    "statement": statement})
    doc.update({"keys": entries, "current": enc.key_id})
    _write_public(state, doc)
    return load_vault_keys(state, passphrase=passphrase)
