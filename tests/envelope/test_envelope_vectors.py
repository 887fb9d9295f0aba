"""Every case in envelope/vectors/v1.json, checked against the library; and the file is
exactly what its committed generator produces."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import nacl.bindings
import pytest

from envelope import (
    EncryptionKey,
    EnvelopeError,
    check_shape,
    decode_outbox_batch,
    decode_outbox_frame,
    envelope_hash,
    fingerprint,
    key_id,
    open_envelope,
    parse_envelope,
    verify_agent_certificate,
    verify_erasure_notice,
    verify_link_auth,
    verify_receipt,
    verify_vault_key_statement,
)
from envelope.keys import PartyKeys
from envelope.sealing import _seal_with

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTOR_DIR = ROOT / "envelope" / "vectors"
VECTORS: dict[str, Any] = json.loads((VECTOR_DIR / "v1.json").read_text())
KEYS: dict[str, Any] = VECTORS["keys"]


def _enc(name: str) -> EncryptionKey:
    return EncryptionKey.from_secret(bytes.fromhex(KEYS[name]["x25519_secret"]))


def _party(name: str) -> PartyKeys:
    k = KEYS[name]
    return PartyKeys.from_secrets(bytes.fromhex(k["x25519_secret"]),
                                  bytes.fromhex(k["ed25519_seed"]))


def _envelope_bytes(case: dict[str, Any]) -> bytes:
    fill = case.get("envelope_fill")
    if fill is not None:
        return bytes([fill["byte"]]) * fill["length"]
    return bytes.fromhex(case["envelope_hex"])


def _run(case: dict[str, Any]) -> Any:
    """Perform the case's operation exactly as the README describes it."""
    op: dict[str, Any] = case["operation"]
    name = op["op"]
    if name == "parse_envelope":
        return parse_envelope(_envelope_bytes(case))
    if name == "check_shape":
        return check_shape(_envelope_bytes(case), account=op["account"],
                           vault_key_id=op["vault_key_id"], engagement=op.get("engagement"))
    if name == "decode_outbox_frame":
        return [decode_outbox_frame(bytes.fromhex(case["frame_hex"]))]
    if name == "decode_outbox_batch":
        return decode_outbox_batch(bytes.fromhex(case["frame_hex"]))
    if name == "open_envelope":
        pin = op.get("sender_public_key_hex")
        return open_envelope(_envelope_bytes(case), _enc(op["recipient"]),
                             account=op.get("account"), engagement=op.get("engagement"),
                             sender_public_key=bytes.fromhex(pin) if pin else None)
    identity = bytes.fromhex(KEYS[op["identity"]]["ed25519_public"])
    if name == "verify_vault_key_statement":
        return verify_vault_key_statement(case["input"], identity, account=op["account"],
                                          now=op["now"])
    if name == "verify_agent_certificate":
        return verify_agent_certificate(case["input"], identity, account=op["account"],
                                        now=op["now"])
    if name == "verify_receipt":
        return verify_receipt(case["input"], identity, account=op["account"])
    if name == "verify_erasure_notice":
        return verify_erasure_notice(case["input"], identity, account=op["account"])
    if name == "verify_link_auth":
        return verify_link_auth(case["input"], identity, account=op["account"],
                                nonce=bytes.fromhex(op["nonce_hex"]), origin=op["origin"])
    raise AssertionError(f"unknown operation {name}")


def test_vector_counts_and_names() -> None:
    valid, invalid = VECTORS["valid"], VECTORS["invalid"]
    assert len(valid) >= 10 and len(invalid) >= 25
    names = [c["name"] for c in valid + invalid]
    assert len(names) == len(set(names))
    # Not only envelopes: statements, receipts and link auth have cases of both kinds.
    for kind in ("envelope", "statement", "receipt", "link-auth", "outbox-frame"):
        assert any(c["type"] == kind for c in valid), kind
        assert any(c["type"] == kind for c in invalid), kind
    codes = {c["error"] for c in invalid}
    assert {"envelope.malformed", "envelope.too_large", "envelope.unsupported_version",
            "envelope.bad_header_field", "envelope.missing_vault_recipient",
            "envelope.duplicate_recipient", "envelope.wrong_engagement",
            "envelope.undecryptable", "statement.expired", "receipt.invalid",
            "link.auth_failed"} <= codes


def test_keys_section() -> None:
    for name, k in KEYS.items():
        if "x25519_secret" in k:
            enc = _enc(name)
            assert enc.public_bytes.hex() == k["x25519_public"]
            assert enc.key_id == k["key_id"] == key_id(enc.public_bytes)
        if "fingerprint" in k:
            assert fingerprint(bytes.fromhex(k["ed25519_public"])) == k["fingerprint"]
        if "signing_key_id" in k:
            assert _party(name).signing_public_bytes.hex() == k["ed25519_public"]


ENVELOPES = [c for c in VECTORS["valid"] if c["type"] == "envelope"]


@pytest.mark.parametrize("case", ENVELOPES, ids=[c["name"] for c in ENVELOPES])
def test_valid_envelope(case: dict[str, Any]) -> None:
    s = case["seal"]
    recipients = [_enc(r).public_bytes for r in s["recipients"]]
    content_key = bytes.fromhex(s["content_key_hex"])
    data = _seal_with(
        bytes.fromhex(s["body_hex"]), sender=_party(s["sender"]), role=s["role"],
        account=s["account"], engagement=s["engagement"], sequence=s["sequence"],
        kind=s["kind"], recipients=recipients, envelope_id=s["envelope_id"],
        content_key=content_key, nonce=bytes.fromhex(s["nonce_hex"]),
        ephemeral_secrets=[bytes.fromhex(e) for e in s["ephemeral_secrets_hex"]])
    assert data.hex() == case["envelope_hex"]
    assert envelope_hash(data) == case["envelope_hash"]
    parsed = parse_envelope(data)
    assert parsed.header.raw.decode("ascii") == case["header_json"]
    # Every sealed key is a standard libsodium sealed box: crypto_box_seal_open accepts it.
    for name, sealed in zip(s["recipients"], parsed.sealed_keys, strict=True):
        enc = _enc(name)
        assert nacl.bindings.crypto_box_seal_open(
            sealed, enc.public_bytes, enc.secret) == content_key
    header = check_shape(data, account=s["account"], vault_key_id=_enc("vault").key_id,
                         engagement=s["engagement"])
    assert (header.sequence, header.kind, header.role) == (s["sequence"], s["kind"], s["role"])
    for name in case["open_as"]:
        opened = open_envelope(data, _enc(name), account=s["account"],
                               engagement=s["engagement"],
                               sender_public_key=_party(s["sender"]).signing_public_bytes)
        assert opened.body.hex() == s["body_hex"]


OTHERS = [c for c in VECTORS["valid"] if c["type"] != "envelope"]


@pytest.mark.parametrize("case", OTHERS, ids=[c["name"] for c in OTHERS])
def test_valid_signed_object(case: dict[str, Any]) -> None:
    result = _run(case)
    expect = case["expect"]
    if case["type"] == "receipt":
        assert [[i.engagement, i.envelope_id, i.envelope_hash] for i in result] == \
            expect["items"]
    elif case["operation"]["op"] == "verify_vault_key_statement":
        assert (result.key_id, result.public_key.hex()) == (expect["key_id"],
                                                            expect["public_key_hex"])
    elif case["operation"]["op"] == "verify_agent_certificate":
        assert (result.agent, result.encryption_key_id, result.signing_public_key.hex()) == (
            expect["agent"], expect["encryption_key_id"], expect["signing_public_key_hex"])
    elif case["type"] == "outbox-frame":
        assert [[seq, env.hex()] for seq, env in result] == expect["entries"]
    elif case["type"] == "erasure-notice":
        assert (list(result.engagements), result.at, result.rule) == (
            expect["engagements"], expect["at"], expect["rule"])
    else:
        assert result is None


INVALID = VECTORS["invalid"]


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_invalid_case(case: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as info:
        _run(case)
    assert info.value.code == case["error"]


@pytest.mark.timeout(60)
def test_generator_reproduces_file_byte_for_byte(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "v1.json"
    subprocess.run([sys.executable, str(VECTOR_DIR / "generate.py"), "--out", str(out)],
                   check=True, timeout=50, cwd=ROOT)
    assert out.read_bytes() == (VECTOR_DIR / "v1.json").read_bytes()
