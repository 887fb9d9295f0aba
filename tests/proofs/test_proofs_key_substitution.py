"""A hostile relay cannot substitute keys: its own identity or key statement, a stale
statement, a forged agent certificate, or a claimed downgrade to standard mode. The SDK
refuses with a clear ``ChatClientError`` code and nothing reaches the relay sealed to a
key the controller did not sign (checked on what the hostile relay received)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from envelope import (
    EncryptionKey,
    IdentityKey,
    PartyKeys,
    b64e,
    sign_agent_certificate,
    sign_vault_key_statement,
)
from relay.client import AgentClient, ChatClientError, VisitorClient

from .hostile_relay import HostileRelay

pytestmark = pytest.mark.timeout(60)
ACCT, ENG = "clinic", "eng-00000001"


def _doc(ident: IdentityKey, statement: dict[str, str], certs: list[dict[str, str]],
         *, mode: str = "compliance", identity: IdentityKey | None = None) -> dict[str, Any]:
    return {"account": ACCT, "mode": mode,
            "identity_key": b64e((identity or ident).public_bytes),
            "key_statement": statement, "agent_certificates": certs}


def _statement(signer: IdentityKey, key: EncryptionKey, *, age: int = 0) -> dict[str, str]:
    now = int(time.time()) - age
    return sign_vault_key_statement(signer, account=ACCT, key=key.public_bytes,
                                    not_before=now - 60, not_after=now + 600)


def _cert(signer: IdentityKey, agent: PartyKeys, name: str = "ann") -> dict[str, str]:
    now = int(time.time())
    return sign_agent_certificate(signer, account=ACCT, agent=name,
                                  encryption_key=agent.encryption.public_bytes,
                                  signing_key=agent.signing_public_bytes,
                                  not_before=now - 60, not_after=now + 600)


_WELCOME = {"type": "welcome", "engagement": ENG, "resume": "r" * 24, "mode": "compliance",
            "account": ACCT, "vault_key_id": None, "acked": 0, "agent": None, "key_id": None}


async def test_sdk_refuses_substituted_keys(proof_line: Any) -> None:
    ident, vault = IdentityKey.generate(), EncryptionKey.generate()
    relay_ident, relay_key = IdentityKey.generate(), EncryptionKey.generate()
    ann = PartyKeys.generate()
    good = _statement(ident, vault)
    cases = {
        "relay-own-identity": (_doc(relay_ident, _statement(relay_ident, relay_key), []),
                               "keys.fingerprint_mismatch"),
        "relay-own-statement": (_doc(ident, _statement(relay_ident, relay_key), []),
                                "keys.invalid"),
        "stale-statement": (_doc(ident, _statement(ident, vault, age=3600), []),
                            "keys.invalid"),
        "downgrade-to-standard": (_doc(ident, good, [], mode="standard"),
                                  "keys.downgrade_refused"),
    }
    refused = 0
    for name, (doc, code) in cases.items():
        for role in ("visitor", "agent"):
            hostile = await HostileRelay(ACCT, doc, _WELCOME).start()
            client: Any = (VisitorClient(hostile.url, ACCT, origin="https://c.example",
                                         pinned_fingerprint=ident.fingerprint)
                           if role == "visitor" else
                           AgentClient(hostile.url, "token", ACCT, keys=ann,
                                       pinned_fingerprint=ident.fingerprint))
            try:
                with pytest.raises(ChatClientError) as info:
                    await client.connect()
                assert info.value.code == code, (name, role, info.value)
                assert code in str(info.value)
                refused += 1
            finally:
                await client.close()
                await hostile.close()
            assert hostile.received == [] and hostile.hello == {}, (name, role)

    # A forged agent certificate (signed by the relay) for an agent the relay assigns:
    # the visitor reports it and refuses to seal anything more in the engagement.
    mallory = PartyKeys.generate()
    doc = _doc(ident, good, [_cert(ident, ann), _cert(relay_ident, mallory, "mallory")])
    hostile = await HostileRelay(ACCT, doc, _WELCOME).start()
    visitor = VisitorClient(hostile.url, ACCT, origin="https://c.example",
                            pinned_fingerprint=ident.fingerprint)
    try:
        await visitor.connect()
        await visitor.send("before any agent")  # sealed to the vault only: fine
        hostile.dseq += 1
        hostile.send_json({"type": "assigned", "engagement": ENG, "agent": "mallory",
                           "key_id": mallory.encryption_key_id, "dseq": hostile.dseq})
        event = await visitor.next_event(types=("rejected",))
        assert event["code"] == "keys.unknown_agent"
        with pytest.raises(ChatClientError) as info:
            await visitor.send("my secret")
        assert info.value.code == "keys.unknown_agent"
        refused += 1
    finally:
        await visitor.close()
        await hostile.close()
    sent = [m for m in hostile.received if isinstance(m, bytes)]
    assert len(sent) == 1  # only the message sent before the forged assignment

    # A pinned agent device seals even when the relay's welcome claims standard mode.
    hostile = await HostileRelay(ACCT, _doc(ident, good, [_cert(ident, ann)]), {
        "type": "welcome", "agent": "ann", "account": ACCT, "mode": "standard",
        "vault_key_id": None, "engagements": []}).start()
    agent = AgentClient(hostile.url, "token", ACCT, keys=ann,
                        pinned_fingerprint=ident.fingerprint)
    visitor_keys = PartyKeys.generate()
    try:
        await agent.connect()
        hostile.dseq += 1
        hostile.send_json({"type": "assigned", "engagement": ENG, "dseq": hostile.dseq,
                           "visitor_keys": {"enc": b64e(visitor_keys.encryption.public_bytes),
                                            "sig": b64e(visitor_keys.signing_public_bytes)}})
        await agent.next_event(types=("assigned",))
        await agent.send(ENG, "my secret reply")
        for _ in range(100):
            if hostile.received:
                break
            await asyncio.sleep(0.02)
        assert hostile.received and all(isinstance(m, bytes) for m in hostile.received)
        assert not any(b"my secret reply" in m for m in hostile.received
                       if isinstance(m, bytes))
        refused += 1
    finally:
        await agent.close()
        await hostile.close()
    total = len(cases) * 2 + 2
    assert refused == total
    proof_line(f"key-substitution: attacks={total} refused={refused} "
               "sealed_to_unsigned_keys=0")
