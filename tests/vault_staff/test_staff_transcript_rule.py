"""Transcript email goes only to an address the pinned visitor gave in pre-chat; every
other request is refused with a stable code, audited, and sends nothing."""

from __future__ import annotations

import asyncio

import pytest

from controller_vault.app import MAILER, STORE
from controller_vault.certify import certify_agent
from controller_vault.config import StaffSettings
from controller_vault.staff.mailer import SmtpConfig
from envelope import PartyKeys

pytestmark = pytest.mark.timeout(60)


async def test_transcript_requests_outside_the_rule_are_refused(make_staff_vault, smtp_plain):
    smtp = SmtpConfig(host="127.0.0.1", port=smtp_plain.port, security="none",
                      from_addr="noreply@clinic.example")
    v = await make_staff_vault(StaffSettings(smtp=smtp))
    visitor, relay_made, agent = PartyKeys.generate(), PartyKeys.generate(), \
        PartyKeys.generate()
    await certify_agent(v.app[STORE], v.keys, agent="agent-1",
                        encryption_key=agent.encryption.public_bytes,
                        signing_key=agent.signing_public_bytes, now=v.clock[0], days=30)
    result = await v.ingest([
        # The visitor gave one address; the request names another (a relay's own).
        v.env("eng-rule-0001", visitor, "prechat", {"email": "alice@example.org"}),
        v.env("eng-rule-0001", visitor, "transcript-request", {"email": "mallory@evil.test"}),
        # A hostile relay delivers its own visitor key first, then asks for the replies.
        v.env("eng-rule-0002", relay_made, "message", {"text": "hi"}),
        v.env("eng-rule-0002", agent, "message", {"text": "private reply"}, role="agent"),
        v.env("eng-rule-0002", relay_made, "transcript-request",
              {"email": "mallory@evil.test"}),
        # Not the visitor at all: a (certified) agent key asks.
        v.env("eng-rule-0003", visitor, "prechat", {"email": "bob@example.org"}),
        v.env("eng-rule-0003", agent, "transcript-request", {"email": "bob@example.org"},
              role="agent"),
    ])
    assert result.stored == 7, result.rejected
    await asyncio.wait_for(v.app[MAILER].drain(), 20)
    outcomes = {e.target: e.detail for e, _, _ in await v.app[STORE].audit_rows()
                if e.action == "transcript-email"}
    assert outcomes == {
        "eng-rule-0001": '{"outcome":"transcript.address_not_given"}',
        "eng-rule-0002": '{"outcome":"transcript.address_not_given"}',
        "eng-rule-0003": '{"outcome":"transcript.not_pinned_visitor"}'}
    assert v.app[MAILER].sent == 0 and v.app[MAILER].refused == 3
    assert smtp_plain.mailbox.messages == []
    assert all("evil.test" not in repr(e) for e, _, _ in await v.app[STORE].audit_rows())
