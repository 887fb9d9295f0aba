"""The layout rules of STYLE.md, read from the source with ast."""

from __future__ import annotations

import ast
import pathlib
import pkgutil

import pytest

import envelope

ROOT = pathlib.Path(__file__).resolve().parent.parent
IO_MODULES = {"asyncio", "aiohttp", "aiosqlite", "sqlite3", "socket", "ssl", "selectors"}


def _imports(package: str) -> list[tuple[pathlib.Path, str]]:
    found = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, a.name.split(".")[0]) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module.split(".")[0]))
    return found


def test_envelope_does_no_io() -> None:
    bad = [(str(p), m) for p, m in _imports("envelope") if m in IO_MODULES]
    assert bad == []


@pytest.mark.parametrize(("package", "forbidden"),
                         [("relay", "controller_vault"), ("controller_vault", "relay")])
def test_services_never_import_each_other(package: str, forbidden: str) -> None:
    bad = [str(p) for p, m in _imports(package) if m == forbidden]
    assert bad == []


def test_envelope_all_is_exact() -> None:
    public = {n for n in dir(envelope) if not n.startswith("_")}
    # Submodules appear in dir() once imported (doctest collection imports them all).
    modules = {m.name for m in pkgutil.iter_modules(envelope.__path__)}
    assert set(envelope.__all__) == public - modules


@pytest.mark.parametrize("package", ["envelope", "relay", "controller_vault"])
def test_every_module_is_at_most_450_lines(package: str) -> None:
    # STYLE.md's module size, for all three packages (relay's own rules test had it alone).
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
