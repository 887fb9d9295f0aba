"""Bad input: random bytes, random JSON and mutated valid frames raise only EnvelopeError."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import (
    KINDS,
    EncryptionKey,
    EnvelopeError,
    IdentityKey,
    PartyKeys,
    b64e,
    canonical_json,
    check_shape,
    decode_body,
    decode_outbox_batch,
    decode_outbox_frame,
    encode_outbox_batches,
    encode_outbox_frame,
    key_id,
    link_auth_response,
    open_envelope,
    parse_envelope,
    receipt_hash,
    seal,
    sign_erasure_notice,
    sign_receipt,
    sign_vault_key_statement,
    verify_agent_certificate,
    verify_erasure_notice,
    verify_link_auth,
    verify_receipt,
    verify_receipt_with_hash,
    verify_vault_key_statement,
)
from envelope._signed import sign_body

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
VAULT, VISITOR, IDENTITY = EncryptionKey.generate(), PartyKeys.generate(), IdentityKey.generate()
ACCOUNT = "clinic"
VALID = seal(b"hello", sender=VISITOR, role="visitor", account=ACCOUNT,
             engagement="eng-00000001", sequence=1, kind="message",
             recipients=[VAULT.public_bytes])
HLEN = struct.unpack_from(">H", VALID, 1)[0]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
HEADER_KEYS = ["v", "acct", "eng", "id", "seq", "role", "skid", "spk", "kind", "rcpt"]


def _only_envelope_errors(call: Callable[[], object]) -> None:
    # Any other exception type escapes and fails the test.
    with contextlib.suppress(EnvelopeError):
        call()


def _envelope_entry_points(data: bytes) -> None:
    _only_envelope_errors(lambda: parse_envelope(data))
    _only_envelope_errors(lambda: check_shape(data, account=ACCOUNT, vault_key_id=VAULT.key_id))
    _only_envelope_errors(lambda: open_envelope(data, VAULT, account=ACCOUNT))
    _only_envelope_errors(lambda: decode_outbox_frame(data))
    _only_envelope_errors(lambda: decode_outbox_batch(data))


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _envelope_entry_points(data)
    _envelope_entry_points(VALID[:3] + data)
    _envelope_entry_points(b"\xb1" + data)  # past the batch tag
    _envelope_entry_points(b"\xb1\x00\x02" + data)  # and a plausible count
    for kind in sorted(KINDS):
        _only_envelope_errors(lambda k=kind: decode_body(k, data))


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for op, pos, val in ops:
        if not out:
            break
        i = pos % len(out)
        if op == 0:
            out[i] = val
        elif op == 1:
            del out[i:i + val]
        elif op == 2:
            out[i:i] = bytes([val]) * (val % 7 + 1)
        else:
            del out[i:]
    return bytes(out)


mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**16), st.integers(0, 255)),
                     min_size=1, max_size=6)


@SETTINGS
@given(mutations)
def test_mutated_valid_envelope(ops: list[tuple[int, int, int]]) -> None:
    data = _mutate(VALID, ops)
    _envelope_entry_points(data)
    _envelope_entry_points(encode_outbox_frame(7, data))
    if data:
        _envelope_entry_points(_mutate(encode_outbox_batches([(7, VALID), (8, data)])[0], ops))


def _header_frame(header: dict[str, Any]) -> bytes:
    raw = canonical_json(header)
    return bytes([1]) + struct.pack(">H", len(raw)) + raw + VALID[3 + HLEN:]


GOOD_HEADER = {"v": 1, "acct": ACCOUNT, "eng": "eng-00000001", "id": "A" * 22, "seq": 1,
               "role": "visitor", "skid": key_id(VISITOR.signing_public_bytes), "kind": "message",
               "spk": b64e(VISITOR.signing_public_bytes), "rcpt": [VAULT.key_id]}


@SETTINGS
@given(st.sampled_from(HEADER_KEYS), json_values)
def test_each_header_field_with_any_json(field: str, value: Any) -> None:
    """One field replaced at a time, so every check after the earlier ones is reached."""
    _envelope_entry_points(_header_frame(dict(GOOD_HEADER, **{field: value})))


@SETTINGS
@given(st.dictionaries(st.sampled_from(HEADER_KEYS), json_values, max_size=10),
       st.booleans())
def test_arbitrary_header_json(fields: dict[str, Any], valid_base: bool) -> None:
    """Any header JSON, with several fields changed or absent."""
    header = dict(GOOD_HEADER) if valid_base else {}
    header.update(fields)
    _envelope_entry_points(_header_frame(header))


@SETTINGS
@given(json_values, st.binary(max_size=300))
def test_body_decoder_with_any_json(value: Any, raw: bytes) -> None:
    encoded = canonical_json(value)
    for kind in sorted(KINDS):
        _only_envelope_errors(lambda k=kind: decode_body(k, encoded))
        _only_envelope_errors(lambda k=kind: decode_body(k, raw))
        if isinstance(value, dict):
            _only_envelope_errors(lambda k=kind: decode_body(
                k, canonical_json({"text": value, "items": [value], "final": value,
                                   "messages": [value], "answers": value})))


STATEMENT = sign_vault_key_statement(IDENTITY, account=ACCOUNT, key=VAULT.public_bytes,
                                     not_before=0, not_after=10)
RECEIPT = sign_receipt(IDENTITY, account=ACCOUNT, items=[("eng-00000001", "A" * 22, "0" * 64)])
ERASURE = sign_erasure_notice(IDENTITY, account=ACCOUNT, engagements=["eng-00000001"], at=1,
                              rule="request")


def _signed_entry_points(wire: Any) -> None:
    pk = IDENTITY.public_bytes
    _only_envelope_errors(lambda: verify_vault_key_statement(wire, pk, account=ACCOUNT, now=5))
    _only_envelope_errors(lambda: verify_agent_certificate(wire, pk, account=ACCOUNT, now=5))
    _only_envelope_errors(lambda: verify_receipt(wire, pk, account=ACCOUNT))
    _only_envelope_errors(lambda: verify_erasure_notice(wire, pk, account=ACCOUNT))
    _only_envelope_errors(lambda: receipt_hash(wire))
    _only_envelope_errors(lambda: verify_receipt_with_hash(wire, pk, account=ACCOUNT))
    _only_envelope_errors(lambda: verify_link_auth(wire, pk, account=ACCOUNT, nonce=b"n" * 32,
                                                   origin="https://r"))


@SETTINGS
@given(json_values)
def test_signed_objects_with_any_json(value: Any) -> None:
    _signed_entry_points(value)
    _signed_entry_points({"body": value, "sig": value})
    _signed_entry_points(dict(STATEMENT, body=value))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["t", "v", "acct", "kid", "pk", "nbf", "exp", "agent",
                                        "enc_pk", "sig_pk", "items", "engagements", "at",
                                        "rule"]), json_values, max_size=8),
       st.sampled_from([b"compliance-relay/v1/statement\x00", b"compliance-relay/v1/receipt\x00",
                        b"compliance-relay/v1/erasure\x00"]))
def test_correctly_signed_but_hostile_bodies(body: dict[str, Any], domain: bytes) -> None:
    """Bodies signed by the real identity key but with any content: still typed errors."""
    _signed_entry_points(sign_body(IDENTITY, domain, body))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["type", "account", "identity_key", "sig"]), json_values,
                       max_size=4))
def test_link_auth_with_any_fields(changes: dict[str, Any]) -> None:
    frame = link_auth_response(IDENTITY, account=ACCOUNT, nonce=b"n" * 32, origin="https://r")
    _signed_entry_points(dict(frame, **changes))
    _signed_entry_points(dict(RECEIPT, **changes))
    _signed_entry_points(dict(ERASURE, **changes))


GOOD_BODIES = {
    b"compliance-relay/v1/statement\x00": {
        "t": "vault-key", "v": 1, "acct": ACCOUNT, "kid": VAULT.key_id,
        "pk": b64e(VAULT.public_bytes), "nbf": 0, "exp": 10, "agent": "a1",
        "enc_pk": b64e(VAULT.public_bytes), "sig_pk": b64e(VISITOR.signing_public_bytes)},
    b"compliance-relay/v1/receipt\x00": {
        "t": "receipt", "v": 1, "acct": ACCOUNT, "items": [["eng-00000001", "A" * 22, "0" * 64]]},
    b"compliance-relay/v1/erasure\x00": {
        "t": "erasure", "v": 1, "acct": ACCOUNT, "engagements": ["eng-00000001"], "at": 1,
        "rule": "request"},
}


@SETTINGS
@given(st.sampled_from(sorted(GOOD_BODIES)), st.data())
def test_signed_bodies_with_one_field_replaced(domain: bytes, data: st.DataObject) -> None:
    """Correctly signed bodies with one field of any JSON type: every later check is reached."""
    body = dict(GOOD_BODIES[domain])
    for variant in ("vault-key", "agent-cert"):
        if domain.endswith(b"statement\x00"):
            body["t"] = variant
        field = data.draw(st.sampled_from(sorted(body)))
        _signed_entry_points(sign_body(IDENTITY, domain, dict(body, **{field: data.draw(
            json_values)})))
