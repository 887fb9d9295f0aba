"""Rules of STYLE.md for the vault: no personal data in logs, metrics, errors or the
audit log; `__all__` and docstrings on every public name; docstring examples run."""

from __future__ import annotations

import ast
import doctest
import importlib
import logging
import pathlib

import prometheus_client
import pytest

from controller_vault.metrics import VaultMetrics
from envelope import PartyKeys

NOW = 1_800_000_000
PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "controller_vault"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


async def test_personal_data_reaches_no_log_metric_error_or_audit_entry(vault, conversation,
                                                                        caplog):
    caplog.set_level(logging.DEBUG)
    metrics = VaultMetrics()
    vault.ingestor._on_anomaly = metrics.count_anomaly
    canary = "Zq9canary"
    conv, visitor, intruder = conversation("eng-00000001"), PartyKeys.generate(), \
        PartyKeys.generate()
    frames = [
        conv.env(visitor, "prechat", {"name": canary, "email": f"{canary}@example.org"}),
        conv.env(visitor, "message", {"text": f"text {canary}"}),
        conv.env(intruder, "message", {"text": f"forged {canary}"}),
        conv.env(visitor, "message", {"text": canary}, account="other"),
    ]
    tampered = bytearray(frames[1])
    tampered[-100] ^= 1
    frames.append(bytes(tampered))
    result = await vault.ingest(frames, NOW)
    assert result.stored == 2 and len(result.rejected_indexes) == 3
    audit = await vault.store.audit_rows()
    exposed = (caplog.text + prometheus_client.generate_latest(metrics.registry).decode()
               + repr(result) + repr(audit))
    assert canary not in exposed and canary.lower() not in exposed.lower()


@pytest.mark.parametrize("name", MODULES)
def test_module_has_all_and_documented_public_names(name):
    path = PACKAGE / f"{name}.py"
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{name} has no module docstring"
    module = importlib.import_module(f"controller_vault.{name}")
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and \
                not node.name.startswith("_"):
            assert ast.get_docstring(node), f"{name}.{node.name} has no docstring"
            assert node.name in module.__all__, f"{name}.{node.name} missing from __all__"
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and \
                        not item.name.startswith("_"):
                    assert ast.get_docstring(item), f"{name}.{node.name}.{item.name}"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"controller_vault.{name}")
    failures, _ = doctest.testmod(module, verbose=False)
    assert failures == 0


def test_no_utils_or_helpers_modules():
    assert not {"utils", "helpers"} & set(MODULES)
