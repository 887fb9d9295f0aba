"""Connection-info is sealed once per engagement: when it opens, never on resume."""

from __future__ import annotations

import pytest

from envelope import open_envelope
from relay.client import VisitorClient

from .conftest import ORIGIN, Relay

pytestmark = pytest.mark.timeout(60)


async def test_resume_seals_no_second_connection_info(relay: Relay) -> None:
    await relay.account("clinic", compliance=True)
    ident, vault_key = relay.vaults["clinic"]
    visitor = VisitorClient(relay.url, "clinic", origin=ORIGIN,
                            pinned_fingerprint=ident.fingerprint, visitor_id="cookie-1")
    try:
        eng = (await visitor.connect())["engagement"]
        await visitor.send("before the drop")
        await visitor.next_event(types=("ack",))
        for _ in range(2):  # two drops, two resumes
            await visitor.drop()
            assert (await visitor.resume())["engagement"] == eng
        await visitor.send("after the resumes")
        await visitor.next_event(types=("ack",))
    finally:
        await visitor.close()
    entries = [e for e in await relay.state.store.read_outbox("clinic", 0, 100)
               if e.engagement == eng]
    kinds = [open_envelope(e.data, vault_key).header.kind for e in entries]
    # The vault refuses a repeated connection-info (vault.connection_info_repeated).
    assert kinds.count("connection-info") == 1
    assert kinds.count("message") == 2
