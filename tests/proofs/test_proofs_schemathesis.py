"""Invariant 6 and 7 by generated input: schemathesis against both OpenAPI documents.

The relay and two vaults (accounts A and B) run as real processes on 127.0.0.1; each
service's own ``/v1/openapi.json`` drives schemathesis (Python API, hypothesis under
it: few examples per operation, no deadline). Every generated case is sent with every
credential: the operator, A's and B's admin and agent tokens, A's and B's vault staff
tokens of every scope, and none. Half of the relay cases are aimed at account A's
paths. Two properties must hold for every response:

- no 5xx (``not_a_server_error``): generated input gets a stable 4xx, never a crash;
- no cross-account success: a credential of account B never gets a 2xx on account A's
  relay paths or from A's vault (routes whose operation declares no security are
  public by design and are excluded from that count only).
"""

from __future__ import annotations

import collections
import json
import pathlib
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.support.stack import Stack, deploy_accounts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ACCOUNTS = ("acct-a", "acct-b")
EXAMPLES = 6
SCOPES = ("read", "export", "erase", "configure", "audit")


@pytest.fixture
def stacks(tmp_path: pathlib.Path) -> Iterator[list[Stack]]:
    deployed: list[Stack] = []
    try:
        deployed = deploy_accounts(tmp_path, ACCOUNTS)
        yield deployed
    finally:
        for s in reversed(deployed):
            s.stop()


def _credentials(stacks: list[Stack]) -> dict[str, tuple[str, str | None]]:
    """label -> (owning account or "" for the operator/no token, bearer token)."""
    creds: dict[str, tuple[str, str | None]] = {"none": ("", None),
                                                "operator": ("", stacks[0].operator_token)}
    for s in stacks:
        creds[f"admin-{s.account}"] = (s.account, s.admin_token)
        status, body = s.call("POST", f"/v1/accounts/{s.account}/agent-tokens",
                              {"agent": "agent"}, token=s.admin_token)
        assert status == 201, body
        creds[f"agent-{s.account}"] = (s.account, str(body["token"]))
        for scope in SCOPES:
            out = s.vault_cli("token", "create", "--actor", f"fuzz-{scope}", "--scope", scope)
            creds[f"staff-{scope}-{s.account}"] = (s.account, out.split()[0])
    return creds


def _schema(url: str) -> Any:
    with urllib.request.urlopen(url + "/v1/openapi.json", timeout=10) as resp:  # noqa: S310
        return schemathesis.openapi.from_dict(json.loads(resp.read()))


class _Books:
    def __init__(self) -> None:
        self.calls = 0
        self.server_errors: list[str] = []
        self.cross_account: list[str] = []
        self.statuses: collections.Counter[int] = collections.Counter()


def _exercise(schema: Any, base_url: str, creds: dict[str, tuple[str, str | None]],
              target: str, *, vault_of: str | None, books: _Books) -> int:
    """Run every operation of ``schema``; returns how many operations were run."""
    session = requests.Session()
    operations = [r.ok() for r in schema.get_all_operations()]
    for op in operations:
        _fuzz_operation(op, session, base_url, creds, target, vault_of, books)
    return len(operations)


def _fuzz_operation(op: Any, session: requests.Session, base_url: str,
                    creds: dict[str, tuple[str, str | None]], target: str,
                    vault_of: str | None, books: _Books) -> None:
    public = not op.definition.raw.get("security")
    has_account = "{account}" in op.path

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         derandomize=True, phases=[hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=op.as_strategy(), aim=st.booleans())
    def run(case: Any, aim: bool) -> None:
        if has_account and aim:
            case.path_parameters["account"] = target
        on_target = vault_of == target or (has_account
                                           and case.path_parameters["account"] == target)
        for label, (owner, token) in creds.items():
            headers = {"X-Purpose": "schemathesis proof"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            resp = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
            books.calls += 1
            books.statuses[resp.status_code] += 1
            where = f"{op.method.upper()} {case.formatted_path} as {label}"
            try:
                case.validate_response(resp, checks=[not_a_server_error])
            except Exception:  # recorded; asserted after the run with the case named
                books.server_errors.append(f"{where} -> {resp.status_code}")
            foreign = owner not in ("", target)
            if on_target and foreign and not public and 200 <= resp.status_code < 300:
                books.cross_account.append(f"{where} -> {resp.status_code}")
    run()


def test_schemathesis_both_services(stacks: list[Stack],
                                    proof_line: Callable[[str], None]) -> None:
    started = time.monotonic()
    creds = _credentials(stacks)
    a = stacks[0]
    relay_books, vault_books = _Books(), _Books()
    relay_ops = _exercise(_schema(a.relay_url), a.relay_url, creds, a.account,
                          vault_of=None, books=relay_books)
    vault_ops = 0
    for s in stacks:
        url = f"http://127.0.0.1:{s.vault_port}"
        vault_creds = {k: v for k, v in creds.items() if k.startswith(("staff-", "none"))}
        vault_ops += _exercise(_schema(url), url, vault_creds, a.account,
                               vault_of=s.account, books=vault_books)
    assert relay_books.server_errors == [] and vault_books.server_errors == [], \
        (relay_books.server_errors[:10], vault_books.server_errors[:10])
    assert not [c for c in (relay_books.statuses + vault_books.statuses) if c >= 500]
    assert relay_books.cross_account == [] and vault_books.cross_account == [], \
        (relay_books.cross_account[:10], vault_books.cross_account[:10])
    assert any(200 <= c < 300 for c in relay_books.statuses)  # owners do get through
    assert any(200 <= c < 300 for c in vault_books.statuses)
    proof_line(f"schemathesis: relay_operations={relay_ops} vault_operations={vault_ops} "
               f"credentials={len(creds)} examples_per_op={EXAMPLES} "
               f"calls={relay_books.calls + vault_books.calls} server_errors=0 "
               f"cross_account_successes=0 seconds={time.monotonic() - started:.0f}")
