"""What keeps an idle chat socket small, checked as behaviour on a live relay."""

from __future__ import annotations

import pytest

from relay.client import VisitorClient

from .conftest import ORIGIN, Relay

pytestmark = pytest.mark.timeout(60)


async def test_sockets_of_one_account_share_its_account_until_it_changes(relay: Relay) -> None:
    admin = await relay.account("shop")
    hub, store = relay.state.hub, relay.state.store
    assert hub is not None
    visitor = VisitorClient(relay.url, "shop", origin=ORIGIN)
    await visitor.connect()  # its handler holds the account for the socket's life
    fresh = await store.get_account("shop")
    assert fresh is not None
    shared = hub.shared_account(fresh)
    assert shared is not fresh and shared == fresh
    # A changed account is never served stale: the first read after the change is kept.
    await relay.pair_and_toggle("shop", admin)
    changed = await store.get_account("shop")
    assert changed is not None and changed.mode == "compliance"
    assert hub.shared_account(changed) is changed
    await visitor.close()
