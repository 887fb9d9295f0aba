"""Invariant 3, the relay can neither read nor forge.

1. Every key the relay holds (master key, signing seed, its X25519 key, every transcript
   data key it can unwrap) is tried against every outbox row its database holds, as an
   envelope recipient key, as a sealed-box key and as the content key: nothing opens.
2. A hostile relay (tests/proofs/hostile_relay.py) delivers spliced, replayed, reordered,
   recipient-swapped, re-signed and tampered envelopes to the real SDK clients and to the
   real vault over its link: every one is refused with a stable code.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public
import pytest

from controller_vault.app import INGESTOR
from envelope import (
    EncryptionKey,
    EnvelopeError,
    IdentityKey,
    PartyKeys,
    b64d,
    b64e,
    encode_body,
    key_id,
    open_envelope,
    parse_envelope,
    seal,
    sign_agent_certificate,
    sign_vault_key_statement,
    verify_receipt,
)
from relay.atrest import _unwrap
from relay.client import AgentClient, VisitorClient
from relay.keyring import MASTER_KEY_FILE, SIGNING_KEY_FILE
from relay.state import STATE
from relay.store import DataKeyRow

from .conftest import TwoAccountRelay, start_vault
from .hostile_relay import HostileRelay, flip_byte, swap_sealed_keys

pytestmark = pytest.mark.timeout(90)
ACCT, ENG = "clinic", "eng-00000001"


def _tries(data: bytes, secret: bytes) -> tuple[int, int]:
    """Attempts to open ``data`` with ``secret`` in every role a key could play."""
    attempts = opened = 0
    parsed = parse_envelope(data)
    try:
        attempts += 1
        open_envelope(data, EncryptionKey.from_secret(secret))
        opened += 1
    except EnvelopeError:
        pass
    for sealed in parsed.sealed_keys:
        attempts += 1
        try:
            nacl.public.SealedBox(nacl.public.PrivateKey(secret)).decrypt(sealed)
            opened += 1
        except nacl.exceptions.CryptoError:
            pass
    attempts += 1
    try:
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            parsed.ciphertext, parsed.associated_data, parsed.nonce, secret)
        opened += 1
    except nacl.exceptions.CryptoError:
        pass
    return attempts, opened


async def test_relay_keys_open_no_outbox_row(two_account_relay: TwoAccountRelay,
                                             proof_line: Any) -> None:
    r = two_account_relay
    ident, vault_key = r.identities["acme-a"]
    admin = r.tokens["admin-A"]
    status, _ = await r.call("PUT", "/v1/accounts/acme-a/mode", admin, json={"mode": "compliance"})
    assert status == 200
    ann = PartyKeys.generate()
    now = int(r.clock())
    cert = sign_agent_certificate(ident, account="acme-a", agent="ann",
                                  encryption_key=ann.encryption.public_bytes,
                                  signing_key=ann.signing_public_bytes, not_before=now - 60,
                                  not_after=now + 3600)
    status, _ = await r.call("POST", "/v1/accounts/acme-a/agent-certificates", admin,
                             json={"certificate": cert})
    assert status == 201
    canaries = [f"CANARYnrf{i:03d}x" for i in range(6)]
    agent = AgentClient(r.url, r.tokens["agent-A"], "acme-a", keys=ann,
                        pinned_fingerprint=ident.fingerprint)
    visitor = VisitorClient(r.url, "acme-a", origin=r.origins["acme-a"],
                            pinned_fingerprint=ident.fingerprint, user_agent=canaries[0])
    try:
        await agent.connect()
        eng = (await visitor.connect())["engagement"]
        await visitor.send_prechat(name=canaries[1], email=f"{canaries[2]}@example.org")
        await agent.accept((await agent.next_event(types=("offer",)))["engagement"])
        await visitor.next_event(types=("assigned",))
        await visitor.send(f"visitor says {canaries[3]}")
        await agent.next_event(types=("msg",))
        await agent.send(eng, f"agent says {canaries[4]}")
        await visitor.next_event(types=("msg",))
        await visitor.send(f"bye {canaries[5]}")
        await agent.next_event(types=("msg",))
    finally:
        await visitor.close()
        await agent.close()
    # Standard-mode transcripts of account B give the relay data keys to try as well.
    state = r.server.app[STATE]
    await state.cipher.seal_items("acme-b", "eng-standard01", [{"role": "visitor",
                                                               "text": "x", "ts": 1}], now)
    state_dir = r.state_dir
    secrets = {"master": (state_dir / MASTER_KEY_FILE).read_bytes(),
               "signing-seed": (state_dir / SIGNING_KEY_FILE).read_bytes(),
               "process-x25519": state.keyring.relay_keys.encryption.secret}
    db = sqlite3.connect(f"file:{state_dir / 'relay.sqlite3'}?mode=ro", uri=True)
    try:
        rows = [bytes(d) for (d,) in db.execute("SELECT data FROM outbox")]
        for account, kid, wrapped, active in db.execute(
                "SELECT account, key_id, wrapped, active FROM data_keys"):
            secrets[f"data-key {account}/{kid}"] = _unwrap(
                secrets["master"], DataKeyRow(account, kid, bytes(wrapped), bool(active)))
    finally:
        db.close()
    assert len(rows) >= 5 and any(k.startswith("data-key") for k in secrets)
    attempts = recovered = 0
    for data, secret in itertools.product(rows, secrets.values()):
        a, o = _tries(data, secret)
        attempts, recovered = attempts + a, recovered + o
    # Positive control: the vault's key opens every row, so the rows are real envelopes.
    assert all(open_envelope(d, vault_key).body for d in rows)
    blob = b"".join(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())
    hits = sum(c.encode() in blob for c in canaries)
    assert recovered == 0 and hits == 0
    proof_line(f"neither-read: relay_keys={len(secrets)} outbox_rows={len(rows)} "
               f"attempts={attempts} plaintexts_recovered={recovered} canary_hits={hits}")


class _Controller:
    """The controller's keys as the tests' stand-in vault holds them."""

    def __init__(self) -> None:
        self.ident, self.vault = IdentityKey.generate(), EncryptionKey.generate()
        self.ann = PartyKeys.generate()
        now = int(time.time())
        self.statement = sign_vault_key_statement(self.ident, account=ACCT,
                                                  key=self.vault.public_bytes,
                                                  not_before=now - 60, not_after=now + 3600)
        self.cert = sign_agent_certificate(self.ident, account=ACCT, agent="ann",
                                           encryption_key=self.ann.encryption.public_bytes,
                                           signing_key=self.ann.signing_public_bytes,
                                           not_before=now - 60, not_after=now + 3600)

    def keys_doc(self) -> dict[str, Any]:
        return {"account": ACCT, "mode": "compliance",
                "identity_key": b64e(self.ident.public_bytes),
                "key_statement": self.statement, "agent_certificates": [self.cert]}


def _env(sender: PartyKeys, role: str, seq: int, recipients: list[bytes], *,
         account: str = ACCT, engagement: str = ENG, text: str | None = None) -> bytes:
    return seal(encode_body("message", {"text": text or f"{role} {seq}"}), sender=sender,
                role=role, account=account, engagement=engagement, sequence=seq,
                kind="message", recipients=recipients)


async def _outcome(client: Any) -> list[tuple[str, Any]]:
    """Events up to and including the next msg or rejection (a gap comes first)."""
    out = []
    while True:
        ev = await client.next_event(timeout=5, types=("msg", "rejected", "gap"))
        out.append((ev["type"], ev.get("code") or ev.get("text")))
        if ev["type"] != "gap":
            return out


def _attacks(sender: PartyKeys, role: str, rcpts: list[bytes], relay_keys: PartyKeys
             ) -> list[tuple[str, bytes, list[tuple[str, Any]]]]:
    e = {s: _env(sender, role, s, rcpts) for s in (1, 2, 3, 4)}
    undecryptable = [("rejected", "envelope.undecryptable")]
    return [
        ("control", e[1], [("msg", f"{role} 1")]),
        ("replay", e[1], [("rejected", "envelope.wrong_sequence")]),
        ("reorder-later-first", e[3], [("gap", "envelope.gap"), ("msg", f"{role} 3")]),
        ("reorder-earlier-after", e[2], [("rejected", "envelope.wrong_sequence")]),
        ("splice-engagement", _env(sender, role, 4, rcpts, engagement="eng-00000002"),
         [("rejected", "envelope.wrong_engagement")]),
        ("splice-account", _env(sender, role, 4, rcpts, account="other"),
         [("rejected", "envelope.wrong_account")]),
        ("swap-recipients", swap_sealed_keys(e[4]), undecryptable),
        ("re-signed-by-relay", _env(relay_keys, role, 4, rcpts), undecryptable),
        ("tamper-ciphertext", flip_byte(e[4], -70), undecryptable),
        ("tamper-header-seq", e[4].replace(b'"seq":4', b'"seq":5'), undecryptable),
        ("control-after", e[4], [("msg", f"{role} 4")]),
    ]


async def test_hostile_relay_against_both_sdk_clients(proof_line: Any) -> None:
    c, relay_keys = _Controller(), PartyKeys.generate()
    detected = total = 0
    # Visitor side: the relay delivers the agent's envelopes.
    hostile = await HostileRelay(ACCT, c.keys_doc(), {
        "type": "welcome", "engagement": ENG, "resume": "r" * 24, "mode": "compliance",
        "account": ACCT, "vault_key_id": c.vault.key_id, "acked": 0, "agent": None,
        "key_id": None}).start()
    visitor = VisitorClient(hostile.url, ACCT, origin="https://clinic.example",
                            pinned_fingerprint=c.ident.fingerprint)
    try:
        await visitor.connect()
        visitor_enc = b64d(hostile.hello["keys"]["enc"], length=32)
        hostile.dseq += 1
        hostile.send_json({"type": "assigned", "engagement": ENG, "agent": "ann",
                           "key_id": c.ann.encryption_key_id, "dseq": hostile.dseq})
        await visitor.next_event(types=("assigned",))
        for name, data, want in _attacks(c.ann, "agent", [c.vault.public_bytes, visitor_enc],
                                         relay_keys):
            hostile.deliver(data)
            got = await _outcome(visitor)
            assert got == want, (name, got)
            if not name.startswith("control"):
                total += 1
                detected += got[0][0] in ("rejected", "gap")
    finally:
        await visitor.close()
        await hostile.close()
    # Agent side: the relay delivers the visitor's envelopes (visitor key pinned at offer).
    visitor_keys = PartyKeys.generate()
    hostile = await HostileRelay(ACCT, c.keys_doc(), {
        "type": "welcome", "agent": "ann", "account": ACCT, "mode": "compliance",
        "vault_key_id": c.vault.key_id, "engagements": []}).start()
    agent = AgentClient(hostile.url, "token", ACCT, keys=c.ann,
                        pinned_fingerprint=c.ident.fingerprint)
    try:
        await agent.connect()
        hostile.dseq += 1
        hostile.send_json({"type": "assigned", "engagement": ENG, "dseq": hostile.dseq,
                           "visitor_keys": {"enc": b64e(visitor_keys.encryption.public_bytes),
                                            "sig": b64e(visitor_keys.signing_public_bytes)}})
        await agent.next_event(types=("assigned",))
        # A later substitution of the visitor's keys is ignored: the first ones are pinned.
        hostile.dseq += 1
        hostile.send_json({"type": "assigned", "engagement": ENG, "dseq": hostile.dseq,
                           "visitor_keys": {"enc": b64e(relay_keys.encryption.public_bytes),
                                            "sig": b64e(relay_keys.signing_public_bytes)}})
        await agent.next_event(types=("assigned",))
        for name, data, want in _attacks(visitor_keys, "visitor",
                                         [c.vault.public_bytes,
                                          c.ann.encryption.public_bytes], relay_keys):
            hostile.deliver(data)
            got = await _outcome(agent)
            assert got == want, (name, got)
            if not name.startswith("control"):
                total += 1
                detected += got[0][0] in ("rejected", "gap")
    finally:
        await agent.close()
        await hostile.close()
    assert detected == total
    proof_line(f"neither-forge(sdk): clients=2 attacks={total} detected={detected}")


async def test_hostile_relay_link_against_vault_ingest(tmp_path: Any, proof_line: Any) -> None:
    hostile = await HostileRelay(ACCT, {}, {}).start()
    vault = await start_vault(tmp_path / "vault", ACCT, relay_url=hostile.url,
                              backoff_initial_s=0.05, batch_wait_ms=5)
    try:
        await asyncio.wait_for(hostile.connected.wait(), 10)
        assert hostile.link_messages[0]["type"] == "auth"
        vpk, other, relay_keys = (vault.keys.current_key.public_bytes,
                                  EncryptionKey.generate(), PartyKeys.generate())
        visitor, eng = PartyKeys.generate(), "eng-vaultlink1"
        m = {s: _env(visitor, "visitor", s, [vpk, other.public_bytes], engagement=eng,
                     text=f"m{s}") for s in (1, 2, 3)}
        legit = [m[1], m[3], m[2]]  # delivered out of order: stored by position
        attacks = {
            "replay-identical": m[1],
            "splice-account": _env(visitor, "visitor", 9, [vpk], account="other",
                                   engagement=eng),
            "relay-as-visitor": _env(relay_keys, "visitor", 4, [vpk], engagement=eng),
            "relay-as-agent": _env(relay_keys, "agent", 1, [vpk], engagement=eng),
            "relay-speaks-message": _env(relay_keys, "relay", 1, [vpk], engagement=eng),
            "swap-recipients": swap_sealed_keys(_env(visitor, "visitor", 5,
                                                     [vpk, other.public_bytes],
                                                     engagement=eng)),
            "tamper-ciphertext": flip_byte(_env(visitor, "visitor", 6, [vpk], engagement=eng),
                                           -70),
            "not-for-vault": _env(visitor, "visitor", 7, [other.public_bytes], engagement=eng),
        }
        for data in [*legit, *attacks.values()]:
            hostile.deliver(data)
        ingestor = vault.server.app[INGESTOR]
        for _ in range(200):
            if sum(ingestor.rejected_total.values()) >= len(attacks) - 1 \
                    and ingestor.stored_total >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        receipted = {item.envelope_id
                     for msg in hostile.link_messages if msg.get("type") == "ack"
                     for item in verify_receipt(msg["receipt"], vault.keys.identity.public_bytes,
                                                account=ACCT)}
        legit_ids = {parse_envelope(d).header.envelope_id for d in legit}
        assert receipted == legit_ids
        assert ingestor.stored_total == 3 and ingestor.duplicates_total == 1
        assert dict(ingestor.rejected_total) == {
            "envelope.wrong_account": 1, "vault.visitor_key_mismatch": 1,
            "vault.agent_not_certified": 1, "vault.role_not_allowed": 1,
            "envelope.undecryptable": 2, "vault.not_recipient": 1}
        detected = sum(ingestor.rejected_total.values()) + ingestor.duplicates_total
    finally:
        await vault.server.close()
        await hostile.close()
    assert detected == len(attacks)
    proof_line(f"neither-forge(vault link): attacks={len(attacks)} detected={detected} "
               f"receipted_forgeries=0 stored_legit={len(legit_ids)}")


def test_key_id_of_attack_keys_differs() -> None:
    """The hostile relay's keys are not the controller's (guards the fixtures above)."""
    c, relay_keys = _Controller(), PartyKeys.generate()
    assert key_id(relay_keys.encryption.public_bytes) != c.ann.encryption_key_id
