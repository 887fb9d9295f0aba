"""Fuzz the envelope parser and opener: only EnvelopeError may escape."""

from __future__ import annotations

import contextlib

from envelope import (
    EncryptionKey,
    EnvelopeError,
    PartyKeys,
    check_shape,
    decode_outbox_batch,
    decode_outbox_frame,
    open_envelope,
    parse_envelope,
    seal,
)

__all__ = ["seeds", "test_one_input"]

_VAULT = EncryptionKey.from_secret(b"\x01" * 32)
_SENDER = PartyKeys.from_secrets(b"\x02" * 32, b"\x03" * 32)


def seeds() -> list[bytes]:
    """Valid envelopes of a few shapes, for the fuzzer to mutate."""
    return [seal(b"hello" * n, sender=_SENDER, role="visitor", account="clinic",
                 engagement="eng-00000001", sequence=n + 1, kind="message",
                 recipients=[_VAULT.public_bytes]) for n in (0, 1, 40)]


def test_one_input(data: bytes) -> None:
    """One input: parse, shape-check and open; anything but EnvelopeError is a bug."""
    try:
        parsed = parse_envelope(data)
        assert parsed.signed_part + parsed.signature == data
    except EnvelopeError:
        pass
    with contextlib.suppress(EnvelopeError):
        check_shape(data, account="clinic", vault_key_id=_VAULT.key_id)
    try:
        opened = open_envelope(data, _VAULT)
        assert opened.header.account == "clinic" or opened.header.account
    except EnvelopeError:
        pass
    with contextlib.suppress(EnvelopeError):
        decode_outbox_frame(data)
    with contextlib.suppress(EnvelopeError):
        decode_outbox_batch(data)
