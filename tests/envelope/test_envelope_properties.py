"""Property tests: round trip for every recipient; any changed byte, splice or move fails."""

from __future__ import annotations

import base64
import binascii
import json
import pathlib
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from envelope import (
    KINDS,
    EncryptionKey,
    EnvelopeError,
    IdentityKey,
    PartyKeys,
    ReceiptError,
    StatementError,
    b64d,
    b64e,
    canonical_json,
    check_shape,
    envelope_hash,
    link_auth_response,
    open_envelope,
    parse_envelope,
    receipt_hash,
    seal,
    sign_agent_certificate,
    sign_receipt,
    sign_vault_key_statement,
    verify_agent_certificate,
    verify_link_auth,
    verify_receipt,
    verify_receipt_with_hash,
    verify_vault_key_statement,
)
from envelope.errors import MalformedError
from envelope.limits import MAX_SEQUENCE, PAD_BUCKETS

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
VAULT = EncryptionKey.generate()
AGENTS = [PartyKeys.generate() for _ in range(4)]
VISITOR = PartyKeys.generate()
STRANGER = EncryptionKey.generate()
IDENTITY = IdentityKey.generate()
ACCOUNT, ENG = "clinic", "eng-00000001"
BASE = seal(b"base message", sender=VISITOR, role="visitor", account=ACCOUNT, engagement=ENG,
            sequence=5, kind="message",
            recipients=[VAULT.public_bytes, AGENTS[0].encryption.public_bytes])

accounts = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
engagements = st.from_regex(r"[A-Za-z0-9_-]{8,40}", fullmatch=True)


@SETTINGS
@given(body=st.binary(max_size=PAD_BUCKETS[4]), n_agents=st.integers(0, 4),
       kind=st.sampled_from(sorted(KINDS)), sequence=st.integers(0, MAX_SEQUENCE),
       account=accounts, engagement=engagements)
def test_round_trip_for_every_recipient(body: bytes, n_agents: int, kind: str, sequence: int,
                                        account: str, engagement: str) -> None:
    keys = [VAULT] + [a.encryption for a in AGENTS[:n_agents]]
    data = seal(body, sender=VISITOR, role="visitor", account=account, engagement=engagement,
                sequence=sequence, kind=kind, recipients=[k.public_bytes for k in keys])
    header = check_shape(data, account=account, vault_key_id=VAULT.key_id,
                         engagement=engagement)
    assert (header.sequence, header.kind) == (sequence, kind)
    # Length hiding: the ciphertext length reveals only the padding bucket.
    bucket = next(b for b in PAD_BUCKETS if b > len(body))
    assert len(data) == 3 + len(header.raw) + 80 * len(keys) + 24 + bucket + 16 + 64
    for key in keys:
        opened = open_envelope(data, key, account=account, engagement=engagement,
                               sender_public_key=VISITOR.signing_public_bytes)
        assert opened.body == body
        # Parse once, open later (the vault's path) gives the same envelope.
        assert open_envelope(parse_envelope(data), key) == opened
    for wrong in (lambda: open_envelope(data, STRANGER),
                  lambda: open_envelope(parse_envelope(data), STRANGER),
                  lambda: open_envelope(parse_envelope(data), VAULT,
                                        sender_public_key=AGENTS[0].signing_public_bytes)):
        with pytest.raises(EnvelopeError) as info:
            wrong()
        assert info.value.code == "envelope.undecryptable"


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, len(BASE) - 1), bit=st.integers(0, 7),
       opener=st.sampled_from([VAULT, AGENTS[0].encryption]))
def test_any_flipped_bit_anywhere_fails(index: int, bit: int, opener: EncryptionKey) -> None:
    data = bytearray(BASE)
    data[index] ^= 1 << bit
    with pytest.raises(EnvelopeError):
        open_envelope(bytes(data), opener)
    with pytest.raises(EnvelopeError):
        open_envelope(parse_envelope(bytes(data)), opener)


def _move(data: bytes, field: str, value: Any, *, resign: bool) -> bytes:
    """The same ciphertext under a header with one field changed."""
    hlen = struct.unpack_from(">H", data, 1)[0]
    header = json.loads(data[3:3 + hlen])
    header[field] = value
    raw = canonical_json(header)
    signed = data[:1] + struct.pack(">H", len(raw)) + raw + data[3 + hlen:-64]
    sig = VISITOR.signing.sign(signed).signature if resign else data[-64:]
    return signed + sig


@SETTINGS
@given(move=st.one_of(
    st.tuples(st.just("eng"), engagements.filter(lambda e: e != ENG)),
    st.tuples(st.just("acct"), accounts.filter(lambda a: a != ACCOUNT)),
    st.tuples(st.just("seq"), st.integers(0, MAX_SEQUENCE).filter(lambda s: s != 5))),
    resign=st.booleans())
def test_ciphertext_moved_to_another_engagement_account_or_sequence_fails(
        move: tuple[str, Any], resign: bool) -> None:
    # resign=True is the sender itself replaying its ciphertext under another header:
    # the AEAD associated data still binds the body to the original header bytes.
    moved = _move(BASE, *move, resign=resign)
    for opener in (VAULT, AGENTS[0].encryption):
        with pytest.raises(EnvelopeError) as info:
            open_envelope(moved, opener)
        assert info.value.code == "envelope.undecryptable"


def _flip_wire(wire: dict[str, str], index: int) -> dict[str, str]:
    raw = bytearray(b64d(wire["body"]) + b64d(wire["sig"]))
    raw[index % len(raw)] ^= 0x01
    split = len(raw) - 64
    return {"body": b64e(bytes(raw[:split])), "sig": b64e(bytes(raw[split:]))}


STATEMENT = sign_vault_key_statement(IDENTITY, account=ACCOUNT, key=VAULT.public_bytes,
                                     not_before=0, not_after=100)
CERT = sign_agent_certificate(IDENTITY, account=ACCOUNT, agent="a1",
                              encryption_key=AGENTS[0].encryption.public_bytes,
                              signing_key=AGENTS[0].signing_public_bytes, not_before=0,
                              not_after=100)
RECEIPT = sign_receipt(IDENTITY, account=ACCOUNT,
                       items=[(ENG, "A" * 22, envelope_hash(BASE)), (ENG, "B" * 22, "0" * 64)])


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, 10_000))
def test_statements_and_receipts_any_flipped_byte_fails(index: int) -> None:
    with pytest.raises(StatementError):
        verify_vault_key_statement(_flip_wire(STATEMENT, index), IDENTITY.public_bytes,
                                   account=ACCOUNT, now=50)
    with pytest.raises(StatementError):
        verify_agent_certificate(_flip_wire(CERT, index), IDENTITY.public_bytes,
                                 account=ACCOUNT, now=50)
    with pytest.raises(ReceiptError):
        verify_receipt(_flip_wire(RECEIPT, index), IDENTITY.public_bytes, account=ACCOUNT)
    assert _one_pass_agrees(_flip_wire(RECEIPT, index), IDENTITY.public_bytes,
                            ACCOUNT)[0] == "error"


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, 95))
def test_link_auth_any_flipped_byte_fails(index: int) -> None:
    nonce = b"n" * 32
    frame = link_auth_response(IDENTITY, account=ACCOUNT, nonce=nonce, origin="https://r")
    raw = bytearray(b64d(frame["identity_key"]) + b64d(frame["sig"]))
    raw[index] ^= 0x01
    bad = dict(frame, identity_key=b64e(bytes(raw[:32])), sig=b64e(bytes(raw[32:])))
    with pytest.raises(EnvelopeError) as info:
        verify_link_auth(bad, IDENTITY.public_bytes, account=ACCOUNT, nonce=nonce,
                         origin="https://r")
    assert info.value.code == "link.auth_failed"


def _lenient_then_reencode(text: str) -> bytes:
    """Reference for b64d: decode leniently, then demand the text is the one spelling."""
    raw = text.encode("ascii")
    if b"=" in raw or b"+" in raw or b"/" in raw:
        raise MalformedError("padded or standard alphabet")
    out = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    if b64e(out) != text:
        raise MalformedError("not the canonical spelling")
    return out


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                        "-_=+/ \n.!\u00e9\x00", max_size=14))
def test_b64d_accepts_exactly_the_canonical_spelling(text: str) -> None:
    try:
        expected: bytes | None = _lenient_then_reencode(text)
    except (MalformedError, binascii.Error, ValueError, UnicodeEncodeError):
        expected = None
    try:
        got: bytes | None = b64d(text)
    except MalformedError:
        got = None
    assert got == expected


_FIELD = st.text(alphabet="AZaz09_-f\x00\n !\u00e9", min_size=0, max_size=70)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_FIELD, _FIELD, _FIELD), min_size=1, max_size=4))
def test_receipt_items_follow_the_field_patterns(items: list[tuple[str, str, str]]) -> None:
    """verify_receipt checks all items in one pass: accepted exactly when every field
    matches its own pattern (ENGAGEMENT_PATTERN, ENVELOPE_ID_PATTERN, 64 hex)."""
    from envelope.limits import ENGAGEMENT_PATTERN, ENVELOPE_ID_PATTERN

    ident = IdentityKey.generate()
    wire = sign_receipt(ident, account="clinic", items=items)
    valid = all(ENGAGEMENT_PATTERN.fullmatch(e) and ENVELOPE_ID_PATTERN.fullmatch(i)
                and len(h) == 64 and all(c in "0123456789abcdef" for c in h)
                for e, i, h in items)
    try:
        got = verify_receipt(wire, ident.public_bytes, account="clinic")
    except ReceiptError:
        assert not valid
    else:
        assert valid and [tuple(g) for g in got] == items
    assert _one_pass_agrees(wire, ident.public_bytes, "clinic")[0] == ("ok" if valid
                                                                      else "error")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True),
                          st.from_regex(r"[A-Za-z0-9_-]{22}", fullmatch=True),
                          st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
                min_size=1, max_size=5))
def test_receipt_with_valid_items_verifies(items: list[tuple[str, str, str]]) -> None:
    ident = IdentityKey.generate()
    wire = sign_receipt(ident, account="clinic", items=items)
    got = verify_receipt(wire, ident.public_bytes, account="clinic")
    assert [tuple(g) for g in got] == items
    assert _one_pass_agrees(wire, ident.public_bytes, "clinic")[0] == "ok"


def test_a_field_holding_the_item_separators_is_not_read_as_two_items() -> None:
    # Found in review: joined, this one item reads as two valid ones to the item regex.
    forged = ["engaaaaa\x00" + "A" * 22 + "\x00" + "0" * 64 + "\nengbbbbb", "A" * 22, "0" * 64]
    ident = IdentityKey.generate()
    wire = sign_receipt(ident, account="clinic", items=[forged])  # type: ignore[list-item]
    with pytest.raises(ReceiptError):
        verify_receipt(wire, ident.public_bytes, account="clinic")


# Values as a header can hold them (strings, integers, lists) and what it must not
# (floats, non-ASCII text, nested objects, 64-bit overflow): the canonical check must
# accept exactly what the json-module spelling accepted before orjson replaced it.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=12)


def _spellings(obj: dict[str, Any]) -> list[bytes]:
    """The canonical spelling and near misses a peer could send."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return [canonical,
            json.dumps(obj, sort_keys=True, separators=(",", ":"),
                       ensure_ascii=False).encode("utf-8", "surrogatepass"),
            json.dumps(obj, sort_keys=True).encode(),
            canonical.replace(b"\\u007f", b"\x7f"),  # DEL unescaped: orjson's spelling
            json.dumps(obj, separators=(",", ":")).encode(),
            canonical.replace(b"1", b"1.0", 1), canonical + b" "]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=6), _json_values, max_size=6))
@example({"\x7f": None})  # found by CI: escaped DEL is canonical_json's, not orjson's
def test_fast_canonical_check_accepts_what_the_json_module_accepted(
        obj: dict[str, Any]) -> None:
    from envelope._codec import is_canonical_ascii, load_json_object

    for raw in _spellings(obj):
        try:
            before = json.loads(raw.decode("utf-8"))
            old_ok = isinstance(before, dict) and canonical_json(before) == raw
        except (UnicodeDecodeError, ValueError):
            old_ok = False
        try:
            parsed = load_json_object(raw, limit=1 << 20)
            new_ok = is_canonical_ascii(parsed, raw)
        except MalformedError:
            new_ok = False
        if new_ok:
            assert old_ok, raw  # never more permissive
        elif old_ok:
            # Stricter only where no header can pass anyway: a float, or text holding a
            # character outside printable ASCII once parsed (non-ASCII, or DEL, which
            # orjson writes raw where canonical_json escapes it): every header string is
            # pattern-checked against printable ASCII.
            assert _no_header_can_hold(before), raw


def _no_header_can_hold(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, str):
        return not value.isascii() or "\x7f" in value
    if isinstance(value, list):
        return any(_no_header_can_hold(v) for v in value)
    if isinstance(value, dict):
        return any(_no_header_can_hold(k) or _no_header_can_hold(v)
                   for k, v in value.items())
    return False


def test_a_raw_del_byte_is_not_canonical() -> None:
    from envelope._codec import is_canonical_ascii

    raw = b'{"a":"\x7f"}'  # canonical_json writes DEL as \u007f; orjson leaves it raw
    assert canonical_json(json.loads(raw)) != raw
    assert is_canonical_ascii(json.loads(raw), raw) is False


def test_a_header_nested_deeper_than_orjson_writes_is_refused_not_a_crash() -> None:
    from envelope._codec import is_canonical_ascii

    deep = b"[" * 300 + b"]" * 300  # read by orjson (limit 1,024), not written (255)
    raw = b'{"a":' + deep + b"}"
    assert is_canonical_ascii(json.loads(raw), raw) is False


def _outcome(call: Any) -> tuple[Any, ...]:
    """What a call returned, or the class, code, message and cause class of what it raised."""
    try:
        return ("ok", call())
    except EnvelopeError as exc:
        return ("error", type(exc), exc.code, exc.message, type(exc.__cause__))


def _one_pass_agrees(wire: Any, public_key: bytes, account: str) -> tuple[Any, ...]:
    """verify_receipt_with_hash gives what verify_receipt then receipt_hash gave (the
    relay's two calls before it): the same items and the same hash for a good receipt,
    the same error for a bad one. Returns that outcome."""
    two_calls = _outcome(lambda: (verify_receipt(wire, public_key, account=account),
                                  receipt_hash(wire)))
    one_pass = _outcome(lambda: verify_receipt_with_hash(wire, public_key, account=account))
    assert one_pass == two_calls
    return one_pass


_VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[2] / "envelope" / "vectors"
                       / "v1.json").read_text())
RECEIPT_VECTORS = [c for c in _VECTORS["valid"] + _VECTORS["invalid"] if c["type"] == "receipt"]


def _wire_edit(wire: Any, edit: tuple[str, int]) -> Any:
    """``wire`` unchanged, with one decoded byte flipped, or cut short."""
    how, index = edit
    if how == "same" or not isinstance(wire, dict) or set(wire) != {"body", "sig"}:
        return wire
    if how == "flip":
        return _flip_wire(wire, index)
    return dict(wire, body=wire["body"][:index % max(1, len(wire["body"]))])


@settings(max_examples=400, deadline=None)
@given(case=st.sampled_from(RECEIPT_VECTORS),
       edit=st.tuples(st.sampled_from(["same", "flip", "cut"]), st.integers(0, 10_000)))
# Found by CI: flipping byte 400 of this vector undoes its own flipped signature byte, so
# the edited receipt verifies, with another signature (and hash) than the vector's input.
@example(case=next(c for c in RECEIPT_VECTORS if c["name"] == "receipt-flipped-signature"),
         edit=("flip", 400))
def test_receipt_hash_in_one_pass_matches_receipt_hash_on_the_vectors(
        case: dict[str, Any], edit: tuple[str, int]) -> None:
    op = case["operation"]
    identity = bytes.fromhex(_VECTORS["keys"][op["identity"]]["ed25519_public"])
    wire = _wire_edit(case["input"], edit)
    outcome = _one_pass_agrees(wire, identity, op["account"])
    if edit[0] == "same":
        assert outcome[0] == ("ok" if "expect" in case else "error"), case["name"]
    if outcome[0] == "ok":
        # The hash of what was verified (the edited wire), which for an unedited valid
        # vector is its input's.
        assert outcome[1][1] == receipt_hash(wire)
        if edit[0] == "same":
            assert outcome[1][1] == receipt_hash(case["input"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([1, 2, 255, 256, 1024]), account=accounts,
       verify_as=st.sampled_from(["same", "other"]))
def test_receipt_hash_in_one_pass_matches_receipt_hash_for_any_size_and_account(
        n: int, account: str, verify_as: str) -> None:
    items = [(ENG, b64e(i.to_bytes(16, "big")), f"{i:064x}") for i in range(n)]
    wire = sign_receipt(IDENTITY, account=account, items=items)
    expected = account if verify_as == "same" else account + "-other"
    outcome = _one_pass_agrees(wire, IDENTITY.public_bytes, expected)
    assert outcome[0] == ("ok" if verify_as == "same" else "error")
