"""Generate ``v1.json``, the envelope v1 known-answer vectors, deterministically.

Run ``python envelope/vectors/generate.py`` (or ``--out PATH``) from the repository.
Every key and every random input is derived from a fixed label with BLAKE2b, and the
resulting hex is written into the file, so another implementation needs only the
file. Valid envelopes come from the library's own deterministic sealing path
(``_seal_with``, the code ``seal`` runs); invalid ones are valid cases changed in one
place each, re-signed by the honest sender where the case needs only one failure.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import struct
import sys
from collections.abc import Callable
from typing import Any

import nacl.bindings

from envelope import limits
from envelope._codec import b64e, canonical_json
from envelope._signed import sign_body
from envelope.bodies import encode_body
from envelope.keys import fingerprint, key_id
from envelope.link import link_auth_response, sign_erasure_notice
from envelope.sealing import _seal_with, _sealed_box_with, envelope_hash
from envelope.statements import sign_agent_certificate, sign_vault_key_statement
from envelope.vectors.fixtures import (
    _ACCOUNT,
    _ENC_KEYS,
    _ENG,
    _IDENTITY,
    _OTHER_IDENTITY,
    _PARTIES,
    _RELAY_ORIGIN,
    _STATEMENT_DOMAIN,
    _VAULT,
    _Case,
    _rand,
)
from envelope.vectors.outbox_cases import outbox_frame_cases
from envelope.vectors.receipt_cases import flip_sig, receipt_cases

__all__ = ["build_vectors", "main", "render"]

_OUT = pathlib.Path(__file__).resolve().parent / "v1.json"


def _keys_section() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, ident in (("identity", _IDENTITY), ("other-identity", _OTHER_IDENTITY)):
        out[name] = {"ed25519_seed": ident.seed.hex(), "ed25519_public": ident.public_bytes.hex(),
                     "fingerprint": fingerprint(ident.public_bytes)}
    for name, enc in _ENC_KEYS.items():
        entry = {"x25519_secret": enc.secret.hex(), "x25519_public": enc.public_bytes.hex(),
                 "key_id": enc.key_id}
        if name in _PARTIES:
            sig = _PARTIES[name].signing
            entry |= {"ed25519_seed": bytes(sig).hex(),
                      "ed25519_public": bytes(sig.verify_key).hex(),
                      "signing_key_id": key_id(bytes(sig.verify_key))}
        out[name] = entry
    return out


def _envelope_case(name: str, description: str, *, sender: str = "visitor",
                   role: str = "visitor", recipients: list[str], body: bytes,
                   kind: str = "message", sequence: int = 1, engagement: str = _ENG) -> _Case:
    label = "envelope/" + name
    seal_in: dict[str, Any] = {
        "sender": sender, "role": role, "account": _ACCOUNT, "engagement": engagement,
        "sequence": sequence, "kind": kind, "recipients": recipients,
        "envelope_id": b64e(_rand(label + "/id", 16)), "body_hex": body.hex(),
        "content_key_hex": _rand(label + "/content-key").hex(),
        "nonce_hex": _rand(label + "/nonce", limits.NONCE_BYTES).hex(),
        "ephemeral_secrets_hex": [_rand(f"{label}/esk/{r}").hex() for r in recipients]}
    data = _seal_from(seal_in)
    header_len = struct.unpack_from(">H", data, 1)[0]
    return {"name": name, "type": "envelope", "description": description, "seal": seal_in,
            "header_json": data[3:3 + header_len].decode("ascii"),
            "envelope_hex": data.hex(), "envelope_hash": envelope_hash(data),
            "open_as": [r for r in recipients if not r.startswith("extra-")] or recipients}


def _seal_from(s: dict[str, Any]) -> bytes:
    return _seal_with(
        bytes.fromhex(s["body_hex"]), sender=_PARTIES[s["sender"]], role=s["role"],
        account=s["account"], engagement=s["engagement"], sequence=s["sequence"],
        kind=s["kind"], recipients=[_ENC_KEYS[r].public_bytes for r in s["recipients"]],
        envelope_id=s["envelope_id"], content_key=bytes.fromhex(s["content_key_hex"]),
        nonce=bytes.fromhex(s["nonce_hex"]),
        ephemeral_secrets=[bytes.fromhex(e) for e in s["ephemeral_secrets_hex"]])


def _valid_envelopes() -> list[_Case]:
    body_1k = bytes(range(256)) * 4
    return [
        _envelope_case("vault-only-empty", "smallest envelope: one recipient, empty body "
                       "(bucket 256)", recipients=["vault"], body=b""),
        _envelope_case("vault-agent-hello", "visitor message to vault and agent",
                       recipients=["vault", "agent"], body=b"Hello, I need an appointment"),
        _envelope_case("three-recipients-1k", "1 KiB body to vault, agent and the visitor "
                       "itself (bucket 2048)", recipients=["vault", "agent", "visitor"],
                       body=body_1k, sequence=2),
        _envelope_case("bucket-edge-255", "255-byte body: the largest that fits bucket 256",
                       recipients=["vault"], body=b"a" * 255, sequence=3),
        _envelope_case("bucket-edge-256", "256-byte body spills into bucket 512",
                       recipients=["vault"], body=b"b" * 256, sequence=4),
        _envelope_case("agent-reply", "agent to vault and visitor", sender="agent",
                       role="agent", recipients=["vault", "visitor"], sequence=7,
                       body=encode_body("message", {"text": "Tuesday at 10:00 works"})),
        _envelope_case("prechat-utf8", "pre-chat answers with non-ASCII UTF-8",
                       recipients=["vault", "agent"], kind="prechat", sequence=0,
                       body=encode_body("prechat", {"name": "Zoë Ñúñez",
                                                    "email": "zoe@example.org"})),
        _envelope_case("relay-connection-info", "the relay seals connection info to the "
                       "vault only", sender="relay", role="relay", recipients=["vault"],
                       kind="connection-info", body=encode_body(
                           "connection-info", {"ip": "192.0.2.7", "user_agent": "Example/1"})),
        _envelope_case("end-max-sequence", "end of engagement at the largest sequence number",
                       sender="bot", role="bot", recipients=["vault", "visitor"], kind="end",
                       sequence=limits.MAX_SEQUENCE,
                       body=encode_body("end", {"final": {_PARTIES["visitor"].encryption_key_id:
                                                          12}})),
        _envelope_case("max-recipients", "twelve recipients, the maximum",
                       recipients=["vault", "agent", "visitor"] + [f"extra-{i}" for i in
                                                                   range(9)],
                       body=b"to everyone", sequence=9),
    ]


def _statement_cases() -> tuple[list[_Case], list[_Case]]:
    vks = sign_vault_key_statement(_IDENTITY, account=_ACCOUNT, key=_VAULT.public_bytes,
                                   not_before=1_700_000_000, not_after=1_800_000_000)
    agent = _PARTIES["agent"]
    cert = sign_agent_certificate(
        _IDENTITY, account=_ACCOUNT, agent="agent-7", encryption_key=agent.encryption.public_bytes,
        signing_key=agent.signing_public_bytes, not_before=1_700_000_000,
        not_after=1_800_000_000)
    vks_op = {"op": "verify_vault_key_statement", "identity": "identity", "account": _ACCOUNT,
              "now": 1_750_000_000}
    cert_op = dict(vks_op, op="verify_agent_certificate")
    valid = [
        {"name": "vault-key-statement", "type": "statement", "input": vks, "operation": vks_op,
         "expect": {"key_id": _VAULT.key_id, "public_key_hex": _VAULT.public_bytes.hex()}},
        {"name": "agent-certificate", "type": "statement", "input": cert, "operation": cert_op,
         "expect": {"agent": "agent-7", "encryption_key_id": agent.encryption_key_id,
                    "signing_public_key_hex": agent.signing_public_bytes.hex()}},
    ]

    def body(**changes: Any) -> dict[str, str]:
        base = {"t": "vault-key", "v": 1, "acct": _ACCOUNT, "kid": _VAULT.key_id,
                "pk": b64e(_VAULT.public_bytes), "nbf": 1_700_000_000, "exp": 1_800_000_000}
        return sign_body(_IDENTITY, _STATEMENT_DOMAIN, base | changes)

    bad: list[tuple[str, object, dict[str, Any], str]] = [
        ("statement-expired", vks, dict(vks_op, now=1_800_000_001), "statement.expired"),
        ("statement-not-yet-valid", vks, dict(vks_op, now=1_699_999_999), "statement.expired"),
        ("statement-wrong-account", vks, dict(vks_op, account="clinic-2"),
         "statement.wrong_account"),
        ("statement-flipped-signature", flip_sig(vks), vks_op, "statement.invalid"),
        ("statement-other-identity", vks, dict(vks_op, identity="other-identity"),
         "statement.invalid"),
        ("statement-unknown-version", body(v=2), vks_op, "statement.unsupported_version"),
        ("statement-cert-as-vault-key", cert, vks_op, "statement.invalid"),
        ("statement-kid-mismatch", body(kid="0" * 24), vks_op, "statement.invalid"),
        ("statement-window-reversed", body(nbf=1_800_000_000, exp=1_700_000_000), vks_op,
         "statement.invalid"),
        ("statement-extra-wire-field", dict(vks, extra="x"), vks_op, "statement.invalid"),
        ("statement-body-not-json", {"body": b64e(b"not json"), "sig": b64e(
            _IDENTITY.sign(_STATEMENT_DOMAIN + b"not json"))}, vks_op, "statement.invalid"),
    ]
    invalid = [{"name": n, "type": "statement", "input": w, "operation": op, "error": code}
               for n, w, op, code in bad]
    return valid, invalid


def _link_cases() -> tuple[list[_Case], list[_Case]]:
    nonce = _rand("link/nonce")
    frame = link_auth_response(_IDENTITY, account=_ACCOUNT, nonce=nonce, origin=_RELAY_ORIGIN)
    op = {"op": "verify_link_auth", "identity": "identity", "account": _ACCOUNT,
          "nonce_hex": nonce.hex(), "origin": _RELAY_ORIGIN}
    erasure = sign_erasure_notice(_IDENTITY, account=_ACCOUNT, engagements=[_ENG], at=1_750_000_000,
                                  rule="request")
    valid = [
        {"name": "link-auth", "type": "link-auth", "input": frame, "operation": op,
         "expect": {}},
        {"name": "erasure-notice", "type": "erasure-notice", "input": erasure,
         "operation": {"op": "verify_erasure_notice", "identity": "identity",
                       "account": _ACCOUNT},
         "expect": {"engagements": [_ENG], "at": 1_750_000_000, "rule": "request"}},
    ]
    garbage = nonce * 2  # 64 bytes that are not a signature
    bad: list[tuple[str, object, dict[str, Any]]] = [
        ("link-auth-wrong-nonce", frame, dict(op, nonce_hex=_rand("link/other").hex())),
        ("link-auth-other-relay-origin", frame, dict(op, origin="https://evil.example")),
        ("link-auth-wrong-account", frame, dict(op, account="clinic-2")),
        ("link-auth-unpaired-identity", link_auth_response(
            _OTHER_IDENTITY, account=_ACCOUNT, nonce=nonce, origin=_RELAY_ORIGIN), op),
        ("link-auth-garbage-signature", dict(frame, sig=b64e(garbage)), op),
        ("link-auth-wrong-frame-type", dict(frame, type="ping"), op),
    ]
    invalid = [{"name": n, "type": "link-auth", "input": w, "operation": o,
                "error": "link.auth_failed"} for n, w, o in bad]
    return valid, invalid


def _rebuild(data: bytes, *, header: bytes | None = None, mutate: Callable[[dict[str, Any]],
             None] | None = None, keys: list[bytes] | None = None, tail: bytes | None = None,
             resign: str | None = None) -> bytes:
    """Rebuild an envelope with one part changed; ``resign`` names the honest sender."""
    hlen = struct.unpack_from(">H", data, 1)[0]
    raw = data[3:3 + hlen]
    obj = json.loads(raw)
    if mutate is not None:
        mutate(obj)
        raw = canonical_json(obj)
    if header is not None:
        raw = header
    n = len(json.loads(data[3:3 + hlen])["rcpt"])
    old_keys = data[3 + hlen:3 + hlen + 80 * n]
    rest = data[3 + hlen + 80 * n:-64]
    signed = struct.pack(">BH", data[0], len(raw)) + raw + (
        b"".join(keys) if keys is not None else old_keys) + (tail if tail is not None else rest)
    sig = _PARTIES[resign].signing.sign(signed).signature if resign else data[-64:]
    return signed + sig


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _invalid_envelopes(base: _Case, agent_only: _Case, other: _Case) -> list[_Case]:
    e = bytes.fromhex(base["envelope_hex"])
    hlen = struct.unpack_from(">H", e, 1)[0]
    vault_id = _VAULT.key_id
    parse = {"op": "parse_envelope"}
    shape = {"op": "check_shape", "account": _ACCOUNT, "vault_key_id": vault_id}
    open_v = {"op": "open_envelope", "recipient": "vault"}
    keys = [e[3 + hlen:3 + hlen + 80], e[3 + hlen + 80:3 + hlen + 160]]
    tail = e[3 + hlen + 160:-64]

    def setf(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda h: h.__setitem__(name, value)

    def padded_wrong() -> bytes:
        # AEAD-valid and signed, but the plaintext has no 0x80 marker: bad padding.
        prefix = e[:3 + hlen]
        ck = _rand("bad-padding/content-key")
        nonce = _rand("bad-padding/nonce", 24)
        sealed = b"".join(_sealed_box_with(ck, _ENC_KEYS[r].public_bytes,
                                           _rand(f"bad-padding/esk/{r}"))
                          for r in ("vault", "agent"))
        ct = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(b"\0" * 256, prefix,
                                                                      nonce, ck)
        return _rebuild(e, keys=[sealed[:80], sealed[80:]], tail=nonce + ct, resign="visitor")

    thirteen = [_ENC_KEYS[n].key_id for n in _ENC_KEYS][:13]
    other_env = bytes.fromhex(other["envelope_hex"])
    other_hlen = struct.unpack_from(">H", other_env, 1)[0]
    cases: list[tuple[str, str, bytes | dict[str, int], dict[str, Any], str]] = [
        ("truncated-last-byte", "one byte cut off the end", e[:-1], parse, "envelope.malformed"),
        ("truncated-prefix", "only two bytes", e[:2], parse, "envelope.malformed"),
        ("truncated-in-header", "cut inside the header", e[:3 + hlen // 2], parse,
         "envelope.malformed"),
        ("unknown-version-byte", "version byte 0x02", bytes([2]) + e[1:], parse,
         "envelope.unsupported_version"),
        ("unknown-header-version", "header v = 2, re-signed",
         _rebuild(e, mutate=setf("v", 2), resign="visitor"), parse,
         "envelope.unsupported_version"),
        ("header-length-over-limit", "declared header length above MAX_HEADER_BYTES",
         e[:1] + struct.pack(">H", limits.MAX_HEADER_BYTES + 1) + e[3:], parse,
         "envelope.too_large"),
        ("oversized-frame", "one byte over MAX_ENVELOPE_BYTES (given as a fill)",
         {"byte": 1, "length": limits.MAX_ENVELOPE_BYTES + 1}, parse, "envelope.too_large"),
        ("header-not-json", "header bytes are not JSON",
         _rebuild(e, header=b"x" * hlen, resign="visitor"), parse, "envelope.malformed"),
        ("header-not-canonical", "same header with a space added, re-signed",
         _rebuild(e, header=e[3:3 + hlen].replace(b",", b", ", 1), resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("header-extra-field", "an extra header field",
         _rebuild(e, mutate=setf("note", "hello"), resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("header-missing-field", "the kind field removed",
         _rebuild(e, mutate=lambda h: h.pop("kind"), resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("sequence-out-of-range", "seq = MAX_SEQUENCE + 1",
         _rebuild(e, mutate=setf("seq", limits.MAX_SEQUENCE + 1), resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("sequence-negative", "seq = -1", _rebuild(e, mutate=setf("seq", -1),
                                                 resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("unknown-kind", "kind outside KINDS", _rebuild(e, mutate=setf("kind", "free-text"),
                                                       resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("role-not-a-string", "role is a JSON list", _rebuild(
            e, mutate=setf("role", ["visitor"]), resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("account-out-of-pattern", "upper-case account id", _rebuild(
            e, mutate=setf("acct", "Clinic"), resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("sender-key-id-mismatch", "skid is not the id of spk", _rebuild(
            e, mutate=setf("skid", "0" * 24), resign="visitor"), parse,
         "envelope.bad_header_field"),
        ("sender-key-not-base64", "spk is not base64url", _rebuild(
            e, mutate=setf("spk", "*" * 43), resign="visitor"), parse, "envelope.malformed"),
        ("duplicate-recipient", "the vault listed twice", _rebuild(
            e, mutate=setf("rcpt", [vault_id, vault_id]), resign="visitor"), parse,
         "envelope.duplicate_recipient"),
        ("too-many-recipients", "thirteen recipients", _rebuild(
            e, mutate=setf("rcpt", thirteen), keys=[b"\0" * 80] * 13, resign="visitor"),
         parse, "envelope.too_many_recipients"),
        ("ciphertext-not-a-bucket", "one byte appended before the signature, re-signed",
         _rebuild(e, tail=tail + b"\0", resign="visitor"), parse, "envelope.malformed"),
        ("missing-vault-recipient", "addressed to the agent only; the relay refuses it",
         bytes.fromhex(agent_only["envelope_hex"]), shape,
         "envelope.missing_vault_recipient"),
        ("shape-wrong-account", "the relay checks it for another account", e,
         dict(shape, account="clinic-2"), "envelope.wrong_account"),
        ("shape-wrong-engagement", "splice: a valid envelope presented on another engagement",
         e, dict(shape, engagement="eng-0000000000000002"), "envelope.wrong_engagement"),
        ("open-wrong-account", "opened with an account pin that differs", e,
         dict(open_v, account="clinic-2"), "envelope.wrong_account"),
        ("open-wrong-engagement", "opened with an engagement pin that differs", e,
         dict(open_v, engagement="eng-0000000000000002"), "envelope.wrong_engagement"),
        ("flipped-tag", "last AEAD tag byte flipped", _flip(e, len(e) - 65), open_v,
         "envelope.undecryptable"),
        ("flipped-tag-resigned", "tag byte flipped, re-signed by the sender: the AEAD fails",
         _rebuild(_flip(e, len(e) - 65), resign="visitor"), open_v, "envelope.undecryptable"),
        ("flipped-signature", "first signature byte flipped", _flip(e, len(e) - 64), open_v,
         "envelope.undecryptable"),
        ("flipped-sealed-key", "a byte of the vault's sealed key flipped, re-signed",
         _rebuild(_flip(e, 3 + hlen + 40), resign="visitor"), open_v,
         "envelope.undecryptable"),
        ("wrong-recipient", "opened by a key that is not a recipient", e,
         dict(open_v, recipient="stranger"), "envelope.undecryptable"),
        ("wrong-sender-pin", "opened pinning another sender key", e,
         dict(open_v, sender_public_key_hex=_PARTIES["agent"].signing_public_bytes.hex()),
         "envelope.undecryptable"),
        ("resigned-by-relay", "the relay re-signs with its own key, sender pinned", _rebuild(
            _rebuild(e, mutate=lambda h: h.update(
                spk=b64e(_PARTIES["relay"].signing_public_bytes),
                skid=key_id(_PARTIES["relay"].signing_public_bytes))), resign="relay"),
         dict(open_v, sender_public_key_hex=_PARTIES["visitor"].signing_public_bytes.hex()),
         "envelope.undecryptable"),
        ("spliced-engagement", "header moved to another engagement, signature kept",
         _rebuild(e, mutate=setf("eng", "eng-0000000000000002")), open_v,
         "envelope.undecryptable"),
        ("spliced-account", "header moved to another account, signature kept",
         _rebuild(e, mutate=setf("acct", "clinic-2")), open_v, "envelope.undecryptable"),
        ("changed-sequence", "seq changed, signature kept", _rebuild(
            e, mutate=setf("seq", 2)), open_v, "envelope.undecryptable"),
        ("changed-sequence-resigned", "seq changed and re-signed by the sender: the AEAD "
         "associated data still fails", _rebuild(e, mutate=setf("seq", 2), resign="visitor"),
         open_v, "envelope.undecryptable"),
        ("reordered-recipients", "recipient ids and sealed keys swapped, signature kept",
         _rebuild(e, mutate=lambda h: h["rcpt"].reverse(), keys=keys[::-1]), open_v,
         "envelope.undecryptable"),
        ("ciphertext-from-other-envelope", "sealed keys, nonce and ciphertext of another "
         "envelope to the same recipients under this header, re-signed by the sender",
         _rebuild(e, keys=[], tail=other_env[3 + other_hlen:-64], resign="visitor"), open_v,
         "envelope.undecryptable"),
        ("bad-padding", "AEAD and signature valid, plaintext has no padding marker",
         padded_wrong(), open_v, "envelope.undecryptable"),
    ]
    out = []
    for name, desc, data, op, code in cases:
        case: _Case = {"name": name, "type": "envelope", "description": desc}
        if isinstance(data, dict):
            case["envelope_fill"] = data
        else:
            case["envelope_hex"] = data.hex()
        out.append(case | {"operation": op, "error": code})
    return out


def build_vectors() -> dict[str, Any]:
    """The whole vector document as a JSON-ready dict."""
    envelopes = _valid_envelopes()
    hello = next(c for c in envelopes if c["name"] == "vault-agent-hello")
    other = _envelope_case("other", "", recipients=["vault", "agent"], body=b"other text")
    agent_only = _envelope_case("agent-only", "", recipients=["agent"], body=b"x")
    s_valid, s_invalid = _statement_cases()
    r_valid, r_invalid = receipt_cases()
    l_valid, l_invalid = _link_cases()
    o_valid, o_invalid = outbox_frame_cases()
    return {
        "format": 1,
        "about": "Known-answer vectors for Compliance Relay envelope v1. See README.md "
                 "beside this file for the format.",
        "limits": {n: getattr(limits, n) for n in (
            "VERSION", "MAX_HEADER_BYTES", "MAX_RECIPIENTS", "MAX_SEQUENCE",
            "MAX_ENVELOPE_BYTES", "MAX_BODY_BYTES", "MAX_RECEIPT_ITEMS", "PAD_BUCKETS",
            "MAX_BATCH_ENTRIES", "MAX_BATCH_FRAME_BYTES")},
        "keys": _keys_section(),
        "valid": envelopes + s_valid + r_valid + l_valid + o_valid,
        "invalid": _invalid_envelopes(hello, agent_only, other) + s_invalid + r_invalid
        + l_invalid + o_invalid,
    }


def render() -> str:
    """The vector file's exact text."""
    return json.dumps(build_vectors(), indent=1, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the vectors (default: v1.json beside this script)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--out", type=pathlib.Path, default=_OUT)
    args = parser.parse_args(argv)
    args.out.write_text(render(), encoding="ascii")
    return 0


if __name__ == "__main__":
    sys.exit(main())
