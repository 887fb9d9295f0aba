"""Envelope v1: seal a body for several recipients, check its shape, open it.

Wire layout (all lengths big-endian)::

    offset  size        field
    0       1           version (0x01)
    1       2           header length H (<= MAX_HEADER_BYTES)
    3       H           header: canonical JSON, the exact bytes authenticated
    3+H     80 * N      content key sealed (crypto_box_seal) to each recipient, in
                        the order of header["rcpt"] (N recipients)
    ...     24          XChaCha20-Poly1305 nonce
    ...     B + 16      body ciphertext; B is a padding bucket (PAD_BUCKETS)
    end-64  64          Ed25519 signature by the sender over every byte before it

Header fields (canonical JSON, sorted keys; every value matches a fixed pattern, so a
header can hold no free text):

    v     1                                   version
    acct  ACCOUNT_PATTERN                     account id
    eng   ENGAGEMENT_PATTERN                  engagement id
    id    ENVELOPE_ID_PATTERN                 envelope id (random, idempotency key)
    seq   0 .. MAX_SEQUENCE                   position in the sender's stream
    role  visitor | agent | bot | vault | relay
    skid  KEY_ID_PATTERN                      key id of spk
    spk   base64url, 32 bytes                 sender's Ed25519 public key
    kind  see KINDS
    rcpt  1..MAX_RECIPIENTS distinct KEY_ID   recipients' X25519 key ids

The AEAD associated data is bytes[0:3+H], so the body is bound to the exact header;
the signature covers the header, the sealed keys (so recipients cannot be swapped or
reordered), the nonce and the ciphertext. Moving a ciphertext to another account,
engagement or sequence number changes the header bytes and fails both checks.

>>> from envelope.keys import EncryptionKey, PartyKeys
>>> vault, visitor = EncryptionKey.generate(), PartyKeys.generate()
>>> data = seal(b"hello", sender=visitor, role="visitor", account="clinic",
...             engagement="eng-00000001", sequence=1, kind="message",
...             recipients=[vault.public_bytes])
>>> open_envelope(data, vault).body
b'hello'
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from ._codec import b64d, b64e, canonical_json, is_canonical_ascii, load_json_object
from .errors import (
    BindingError,
    DecryptionError,
    EnvelopeError,
    HeaderFieldError,
    LimitExceeded,
    MalformedError,
    RecipientError,
    UnsupportedVersion,
)
from .keys import EncryptionKey, PartyKeys, key_id
from .limits import (
    ACCOUNT_PATTERN,
    ENGAGEMENT_PATTERN,
    ENVELOPE_ID_PATTERN,
    KEY_ID_PATTERN,
    MAX_BODY_BYTES,
    MAX_ENVELOPE_BYTES,
    MAX_HEADER_BYTES,
    MAX_RECIPIENTS,
    MAX_SEQUENCE,
    NONCE_BYTES,
    PAD_BUCKETS,
    SEALED_KEY_BYTES,
    SIGNATURE_BYTES,
    TAG_BYTES,
    VERSION,
)

__all__ = [
    "KINDS",
    "ROLES",
    "EnvelopeHeader",
    "OpenedEnvelope",
    "ParsedEnvelope",
    "check_shape",
    "envelope_hash",
    "new_envelope_id",
    "open_envelope",
    "pad",
    "parse_envelope",
    "seal",
    "unpad",
]

ROLES = frozenset({"visitor", "agent", "bot", "vault", "relay"})
KINDS = frozenset({
    "message",          # chat text (and attachments by reference)
    "prechat",          # pre-chat form answers: name, email, phone, ...
    "connection-info",  # visitor IP, user agent, page URL, referrer (sealed by the relay)
    "history-handoff",  # visitor's history sealed to a newly assigned agent
    "end",              # end of engagement, with final counts
    "consent",          # consent text version and the visitor's answer
    "survey",           # post-chat survey answers
    "transcript-request",  # visitor asks the vault to email the transcript
    "offload",          # a standard-mode transcript sealed by the relay at toggle-on
})
_HEADER_KEYS = frozenset({"v", "acct", "eng", "id", "seq", "role", "skid", "spk", "kind", "rcpt"})
_PREFIX = struct.Struct(">BH")
#: Header fields checked against a fixed pattern, in the order they are checked.
_PATTERNED = (("acct", ACCOUNT_PATTERN), ("eng", ENGAGEMENT_PATTERN),
              ("id", ENVELOPE_ID_PATTERN), ("skid", KEY_ID_PATTERN))


class EnvelopeHeader(NamedTuple):
    """The parsed header; ``raw`` holds the exact authenticated bytes.

    A NamedTuple (immutable like the frozen dataclass it was, built at a third of the
    cost): one is made for every frame the relay and the vault see.
    """

    account: str
    engagement: str
    envelope_id: str
    sequence: int
    role: str
    sender_key_id: str
    sender_public_key: bytes
    kind: str
    recipients: tuple[str, ...]
    raw: bytes


class ParsedEnvelope(NamedTuple):
    """An envelope split into its parts by :func:`parse_envelope` (nothing verified)."""

    header: EnvelopeHeader
    sealed_keys: tuple[bytes, ...]
    nonce: bytes
    ciphertext: bytes
    signature: bytes
    signed_part: bytes
    associated_data: bytes


@dataclass(frozen=True)
class OpenedEnvelope:
    """What a recipient gets from :func:`open_envelope`."""

    header: EnvelopeHeader
    body: bytes


def new_envelope_id() -> str:
    """A random 128-bit envelope id."""
    return b64e(nacl.utils.random(16))


def envelope_hash(data: bytes) -> str:
    """BLAKE2b-256 of the whole envelope, hex: what receipts name."""
    return hashlib.blake2b(data, digest_size=32, person=b"cr-envelope-v1").hexdigest()


def pad(body: bytes) -> bytes:
    """ISO/IEC 7816-4 padding to the smallest bucket: only the bucket leaks."""
    if len(body) > MAX_BODY_BYTES:
        raise LimitExceeded("body exceeds MAX_BODY_BYTES")
    size = next(b for b in PAD_BUCKETS if b > len(body))
    return body + b"\x80" + b"\x00" * (size - len(body) - 1)


def unpad(padded: bytes) -> bytes:
    """Inverse of :func:`pad`; MalformedError when the padding is wrong."""
    end = padded.rfind(b"\x80")
    if end < 0 or padded[end + 1:].strip(b"\x00") or len(padded) not in PAD_BUCKETS:
        raise MalformedError("bad padding")
    return padded[:end]


def _header_dict(
    *, account: str, engagement: str, envelope_id: str, sequence: int, role: str,
    sender: PartyKeys, kind: str, recipient_ids: list[str],
) -> dict[str, object]:
    return {
        "v": VERSION, "acct": account, "eng": engagement, "id": envelope_id, "seq": sequence,
        "role": role, "skid": key_id(sender.signing_public_bytes),
        "spk": b64e(sender.signing_public_bytes), "kind": kind, "rcpt": recipient_ids,
    }


def _sealed_box_with(message: bytes, recipient_pk: bytes, ephemeral_secret: bytes) -> bytes:
    """libsodium's ``crypto_box_seal`` with a given ephemeral secret (byte-identical output).

    sealed = epk || crypto_box_easy(message, nonce, recipient_pk, esk) where
    epk = X25519(esk, basepoint) and nonce = BLAKE2b-192(epk || recipient_pk), unkeyed,
    exactly as libsodium defines sealed boxes. Taking the ephemeral secret as an argument
    is what makes the published test vectors deterministic; :func:`seal` passes fresh
    random bytes, and the ephemeral secret is discarded after use in both cases.
    """
    epk = nacl.bindings.crypto_scalarmult_base(ephemeral_secret)
    nonce = hashlib.blake2b(epk + recipient_pk, digest_size=24).digest()
    shared = nacl.bindings.crypto_box_beforenm(recipient_pk, ephemeral_secret)
    return epk + nacl.bindings.crypto_box_easy_afternm(message, nonce, shared)


def _seal_with(
    body: bytes,
    *,
    sender: PartyKeys,
    role: str,
    account: str,
    engagement: str,
    sequence: int,
    kind: str,
    recipients: Sequence[bytes],
    envelope_id: str,
    content_key: bytes,
    nonce: bytes,
    ephemeral_secrets: Sequence[bytes],
) -> bytes:
    """Deterministic sealing: every random input given. Only :func:`seal` and the vectors call it.

    Never call this with reused randomness outside vector generation: a repeated
    (content key, nonce) pair breaks XChaCha20-Poly1305 confidentiality and integrity.
    """
    if len(recipients) == 0 or len(recipients) > MAX_RECIPIENTS:
        raise RecipientError("between 1 and MAX_RECIPIENTS recipients",
                             code="envelope.too_many_recipients")
    if len(ephemeral_secrets) != len(recipients):
        raise RecipientError("one ephemeral secret per recipient",
                             code="envelope.too_many_recipients")
    if len(content_key) != 32 or len(nonce) != NONCE_BYTES:
        raise MalformedError("content key or nonce of the wrong length")
    for pk in recipients:
        if not isinstance(pk, bytes) or len(pk) != 32:
            raise MalformedError("recipient public key must be 32 bytes")
    recipient_ids = [key_id(pk) for pk in recipients]
    if len(set(recipient_ids)) != len(recipient_ids):
        raise RecipientError("duplicate recipient", code="envelope.duplicate_recipient")
    header = canonical_json(_header_dict(
        account=account, engagement=engagement, envelope_id=envelope_id,
        sequence=sequence, role=role, sender=sender, kind=kind, recipient_ids=recipient_ids))
    if len(header) > MAX_HEADER_BYTES:
        raise LimitExceeded("header exceeds MAX_HEADER_BYTES")
    _validate_header(load_json_object(header, limit=MAX_HEADER_BYTES), header)
    prefix = _PREFIX.pack(VERSION, len(header)) + header
    sealed = b"".join(
        _sealed_box_with(content_key, pk, esk) for pk, esk in zip(recipients, ephemeral_secrets,
                                                                   strict=True))
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        pad(body), prefix, nonce, content_key)
    signed = prefix + sealed + nonce + ciphertext
    return signed + sender.signing.sign(signed).signature


def seal(
    body: bytes,
    *,
    sender: PartyKeys,
    role: str,
    account: str,
    engagement: str,
    sequence: int,
    kind: str,
    recipients: Sequence[bytes],
    envelope_id: str | None = None,
) -> bytes:
    """Seal ``body`` for each X25519 public key in ``recipients``; return envelope bytes."""
    if len(recipients) == 0 or len(recipients) > MAX_RECIPIENTS:
        raise RecipientError("between 1 and MAX_RECIPIENTS recipients",
                             code="envelope.too_many_recipients")
    return _seal_with(
        body, sender=sender, role=role, account=account, engagement=engagement,
        sequence=sequence, kind=kind, recipients=recipients,
        envelope_id=envelope_id or new_envelope_id(), content_key=nacl.utils.random(32),
        nonce=nacl.utils.random(NONCE_BYTES),
        ephemeral_secrets=[nacl.utils.random(32) for _ in recipients])


@functools.lru_cache(maxsize=4096)
def _sender_key(spk: str) -> tuple[bytes, str]:
    """The sender key's bytes and id: decoded and hashed once per key, not per envelope
    (every frame of a conversation names the same one or two keys). Bounded: a peer
    naming fresh keys only makes misses. Raises MalformedError as b64d does."""
    key = b64d(spk, length=32)
    return key, key_id(key)


def _validate_header(obj: dict[str, object], raw: bytes) -> EnvelopeHeader:
    if obj.get("v") != VERSION or type(obj.get("v")) is not int:
        raise UnsupportedVersion("unknown header version")
    if set(obj) != _HEADER_KEYS:
        raise HeaderFieldError("header fields missing or unknown")
    # Canonical form is required so the relay and every client see one spelling.
    if not is_canonical_ascii(obj, raw):
        raise HeaderFieldError("header is not canonical JSON")

    # One loop, no closure: this runs for every envelope the relay and the vault see.
    for name, rx in _PATTERNED:
        value = obj[name]
        if not isinstance(value, str) or not rx.fullmatch(value):
            raise HeaderFieldError(f"header field {name} out of pattern")
    account, engagement = str(obj["acct"]), str(obj["eng"])
    envelope_id, skid = str(obj["id"]), str(obj["skid"])
    seq = obj["seq"]
    if type(seq) is not int or not 0 <= seq <= MAX_SEQUENCE:
        raise HeaderFieldError("header field seq out of range")
    role, kind = obj["role"], obj["kind"]
    # isinstance first: a JSON list or object is unhashable and would raise TypeError
    # from the set lookup, an untyped crash a fuzzing peer could trigger.
    if not isinstance(role, str) or role not in ROLES:
        raise HeaderFieldError("header field role unknown")
    if not isinstance(kind, str) or kind not in KINDS:
        raise HeaderFieldError("header field kind unknown")
    spk_text = obj["spk"]
    if not isinstance(spk_text, str):  # a JSON list is unhashable: no cache lookup
        raise MalformedError("expected a base64url string")
    spk, spk_id = _sender_key(spk_text)
    if spk_id != skid:
        raise HeaderFieldError("header field skid does not match spk")
    rcpt = obj["rcpt"]
    if not isinstance(rcpt, list) or not rcpt:
        raise HeaderFieldError("header field rcpt must be a non-empty list")
    if len(rcpt) > MAX_RECIPIENTS:
        raise RecipientError("too many recipients", code="envelope.too_many_recipients")
    for r in rcpt:
        if not isinstance(r, str) or not KEY_ID_PATTERN.fullmatch(r):
            raise HeaderFieldError("header field rcpt out of pattern")
    if len(set(rcpt)) != len(rcpt):
        raise RecipientError("duplicate recipient", code="envelope.duplicate_recipient")
    return EnvelopeHeader(
        account=account, engagement=engagement, envelope_id=envelope_id, sequence=seq,
        role=str(role), sender_key_id=skid, sender_public_key=spk, kind=str(kind),
        recipients=tuple(rcpt), raw=raw)


def _parse_header(data: bytes) -> tuple[EnvelopeHeader, int]:
    """Every structural check of an envelope; its header and where the header ends."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise LimitExceeded("envelope exceeds MAX_ENVELOPE_BYTES")
    if len(data) < _PREFIX.size:
        raise MalformedError("envelope truncated")
    version, header_len = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise UnsupportedVersion("unknown envelope version")
    if header_len > MAX_HEADER_BYTES:
        raise LimitExceeded("header exceeds MAX_HEADER_BYTES")
    header_end = _PREFIX.size + header_len
    if len(data) < header_end:
        raise MalformedError("envelope truncated in header")
    raw = data[_PREFIX.size:header_end]
    header = _validate_header(load_json_object(raw, limit=MAX_HEADER_BYTES), raw)
    keys_end = header_end + SEALED_KEY_BYTES * len(header.recipients)
    body_len = len(data) - keys_end - NONCE_BYTES - SIGNATURE_BYTES
    if body_len < PAD_BUCKETS[0] + TAG_BYTES:
        raise MalformedError("envelope truncated")
    if body_len - TAG_BYTES not in PAD_BUCKETS:
        raise MalformedError("ciphertext length is not a padding bucket")
    return header, header_end


def parse_envelope(data: bytes) -> ParsedEnvelope:
    """Split envelope bytes into parts with strict size and pattern checks (no crypto)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError("envelope must be bytes")
    data = bytes(data)
    header, header_end = _parse_header(data)
    keys_end = header_end + SEALED_KEY_BYTES * len(header.recipients)
    sealed_keys = tuple(
        data[header_end + i * SEALED_KEY_BYTES: header_end + (i + 1) * SEALED_KEY_BYTES]
        for i in range(len(header.recipients)))
    nonce_end = keys_end + NONCE_BYTES
    return ParsedEnvelope(
        header=header, sealed_keys=sealed_keys, nonce=data[keys_end:nonce_end],
        ciphertext=data[nonce_end:len(data) - SIGNATURE_BYTES],
        signature=data[len(data) - SIGNATURE_BYTES:],
        signed_part=data[:len(data) - SIGNATURE_BYTES], associated_data=data[:header_end])


def check_shape(
    data: bytes, *, account: str, vault_key_id: str, engagement: str | None = None,
) -> EnvelopeHeader:
    """The relay's check: parse, bind to account (and engagement), require the vault recipient.

    The same structural checks as :func:`parse_envelope`, without copying out the parts
    only a recipient needs (the relay checks every frame it routes).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError("envelope must be bytes")
    header = _parse_header(bytes(data))[0]
    if header.account != account:
        raise BindingError("envelope is for another account", code="envelope.wrong_account")
    if engagement is not None and header.engagement != engagement:
        raise BindingError("envelope is for another engagement", code="envelope.wrong_engagement")
    if vault_key_id not in header.recipients:
        raise RecipientError("the vault key is not a recipient",
                             code="envelope.missing_vault_recipient")
    return header


def open_envelope(
    data: bytes | ParsedEnvelope,
    recipient: EncryptionKey,
    *,
    account: str | None = None,
    engagement: str | None = None,
    sender_public_key: bytes | None = None,
) -> OpenedEnvelope:
    """Verify and decrypt as ``recipient``; optional pins for account, engagement and sender.

    ``data`` may be what :func:`parse_envelope` made of the bytes (a caller that checks
    the header first, as the vault does, then parses once). Structural problems raise
    their typed error; every cryptographic failure (bad signature, not a recipient,
    tampered key or body, bad padding) raises the same opaque DecryptionError.
    """
    parsed = data if isinstance(data, ParsedEnvelope) else parse_envelope(data)
    header = parsed.header
    if account is not None and header.account != account:
        raise BindingError("envelope is for another account", code="envelope.wrong_account")
    if engagement is not None and header.engagement != engagement:
        raise BindingError("envelope is for another engagement", code="envelope.wrong_engagement")
    try:
        # A pinned sender stops a hostile relay from re-signing with its own key.
        if sender_public_key is not None and sender_public_key != header.sender_public_key:
            raise DecryptionError()
        nacl.signing.VerifyKey(header.sender_public_key).verify(
            parsed.signed_part, parsed.signature)
        try:
            index = header.recipients.index(recipient.key_id)
        except ValueError:
            raise DecryptionError() from None
        content_key = nacl.public.SealedBox(recipient.private_key).decrypt(
            parsed.sealed_keys[index])
        if len(content_key) != 32:
            raise DecryptionError()
        padded = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            parsed.ciphertext, parsed.associated_data, parsed.nonce, content_key)
        body = unpad(padded)
    except (nacl.exceptions.CryptoError, EnvelopeError, ValueError, TypeError) as exc:
        raise DecryptionError() from exc
    return OpenedEnvelope(header=header, body=body)
