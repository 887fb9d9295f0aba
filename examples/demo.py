"""`make demo`: a relay and a controller vault as real processes on 127.0.0.1, a chat in
compliance mode, and proof that the relay kept nothing personal.

Steps: start the relay (operator), create an account, initialise the vault and start
it (controller), pair it, certify an agent device, turn compliance mode on, run a
scripted visitor/agent conversation through the Python SDK, show the transcript as
the vault's staff see it, then scan every file of the relay's state directory for the
conversation's personal strings (raw, base64, hex, UTF-16, URL-encoded). Exit 0 when
none is found; everything started is stopped. Uses temporary directories and free
ports only.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.canary import scan_tree  # noqa: E402 - after the path set-up
from tests.support.stack import Stack, converse, wait_until  # noqa: E402

VISITOR_NAME = "Ada Lovelace"
VISITOR_EMAIL = "ada.lovelace@example.org"
VISITOR_AGENT = "Mozilla/5.0 (DemoBrowser; Ada's laptop)"
SCRIPT = [
    ("visitor", "Hello, my knee has been swelling since Tuesday"),
    ("agent", "Sorry to hear that. Can you come in on Thursday at 10:00?"),
    ("visitor", "Yes. My phone is +44 20 7946 0958 if anything changes"),
    ("agent", "Booked: Thursday 10:00 with Dr. Okafor. See you then."),
]
PERSONAL = [VISITOR_NAME, VISITOR_EMAIL, VISITOR_AGENT, *(text for _, text in SCRIPT)]


def step(text: str) -> None:
    """Print one numbered step of the demo."""
    step.n = getattr(step, "n", 0) + 1  # type: ignore[attr-defined]
    print(f"\n[{step.n}] {text}", flush=True)  # type: ignore[attr-defined]


def _in_vault(stack: Stack, engagement: str) -> dict[str, object] | None:
    try:
        doc = stack.vault_transcript(engagement)
    except RuntimeError:
        return None
    texts = [m["text"] for m in doc["messages"]]  # type: ignore[index]
    return doc if all(t in texts for _, t in SCRIPT) else None


def run(root: pathlib.Path) -> int:
    """The demo in ``root``; returns the exit code."""
    started = time.monotonic()
    stack = Stack(root, account="demo-clinic")
    try:
        step("relay: starting (the processor's service)")
        stack.start_relay()
        print(f"    relay listening at {stack.relay_url}, state in {stack.relay_state}")
        stack.create_account()
        print(f"    account {stack.account!r} created in standard mode")
        step("vault: initialising and starting (the controller's own server)")
        fingerprint = stack.init_vault()
        stack.start_vault()
        print(f"    identity fingerprint {fingerprint} (pinned in the widget snippet)")
        step("pairing the vault with the relay (identity key + signed vault key)")
        stack.pair()
        token, keys = stack.certify_agent("dr-okafor")
        print("    agent device 'dr-okafor' certified by the vault and published")
        step("turning compliance mode on")
        stack.set_mode("compliance")
        wait_until(lambda: stack.metric("relay_vault_links") >= 1, timeout=20,
                   what="vault link")
        print("    the vault dialed out and authenticated its link")
        step("a visitor and an agent chat through the SDK (end-to-end encrypted)")
        engagement = asyncio.run(converse(
            stack, ("dr-okafor", token, keys), SCRIPT,
            prechat={"name": VISITOR_NAME, "email": VISITOR_EMAIL}, user_agent=VISITOR_AGENT))
        for role, text in SCRIPT:
            print(f"    {role:>7}: {text}")
        step("the transcript as the vault's staff see it (controller-vault transcripts show)")
        doc = wait_until(lambda: _in_vault(stack, engagement), timeout=30,
                         what="transcript in the vault")
        print(f"    engagement {engagement}")
        for m in doc["messages"]:
            print(f"    #{m['seq']} {m['role']:>7}: {m['text']}")
        wait_until(lambda: stack.outbox_entries() == 0, timeout=20, what="outbox drained")
        print("    the relay's outbox is empty: every envelope was receipted by the vault")
        step("scanning every file of the relay's state directory for personal strings")
        files = sorted(p for p in stack.relay_state.rglob("*") if p.is_file())
        for path in files:
            print(f"    {path.relative_to(stack.relay_state)}  ({path.stat().st_size} bytes)")
        hits = scan_tree(stack.relay_state, PERSONAL)
        if hits:
            for hit in hits:
                print(f"    FOUND ({hit.encoding}) in {hit.where}")
            print(f"\nFAILED: {len(hits)} personal string(s) found at the relay")
            return 1
        print(f"    searched {len(files)} files for {len(PERSONAL)} personal strings in raw,"
              " base64, hex, UTF-16 and URL encodings: found none")
    finally:
        step("stopping the vault and the relay")
        stack.stop()
    print(f"\nOK: the relay held only ciphertext and non-personal records "
          f"({time.monotonic() - started:.1f} s)")
    return 0


def main() -> int:
    """Run the demo in a temporary directory that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="compliance-relay-demo-") as tmp:
        return run(pathlib.Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
