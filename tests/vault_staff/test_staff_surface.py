"""The staff package's public surface: exact __all__, docstrings, no forbidden imports."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "controller_vault" / "staff"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_all_is_exact_and_documented(name: str) -> None:
    module = importlib.import_module(f"controller_vault.staff.{name}")
    assert module.__doc__
    defined = {n for n, v in vars(module).items()
               if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
               and getattr(v, "__module__", None) == module.__name__}
    assert defined <= set(module.__all__)
    for public in module.__all__:
        obj = getattr(module, public)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__, f"{name}.{public} has no docstring"


@pytest.mark.parametrize("name", MODULES)
def test_staff_modules_import_only_envelope_and_each_other(name: str) -> None:
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            assert node.module.split(".")[0] not in {"relay", "controller_vault"}
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] not in {"relay", "controller_vault"}
                       for a in node.names)


def test_pure_modules_do_no_io() -> None:
    io = {"asyncio", "aiohttp", "aiosqlite", "sqlite3", "socket", "smtplib", "ssl"}
    for name in ("redaction", "retention", "render", "export", "tokens"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        assert not imported & io, name


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    import doctest

    module = importlib.import_module(f"controller_vault.staff.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
