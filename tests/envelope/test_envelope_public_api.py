"""The envelope package's public surface: exact __all__ lists, a docstring on everything public."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import envelope


def _modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(envelope.__path__, "envelope.")]
    return [envelope] + [importlib.import_module(n) for n in sorted(names)]


MODULES = _modules()


def _defined_public_names(module: ModuleType) -> set[str]:
    """Public names a module's own source binds at top level (defs, classes, assignments)."""
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_all_is_exact(module: ModuleType) -> None:
    """__all__ names exactly what the module defines; the package root exactly what it exports."""
    assert module.__doc__, module.__name__
    declared = module.__all__
    assert len(declared) == len(set(declared))
    assert all(hasattr(module, n) for n in declared)
    if module is envelope:
        submodules = {m.name for m in pkgutil.iter_modules(envelope.__path__)}
        public = {n for n in dir(envelope) if not n.startswith("_")} - submodules
        assert set(declared) == public - {"annotations"}
    else:
        assert set(declared) == _defined_public_names(module), module.__name__


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_every_public_function_has_a_docstring(module: ModuleType) -> None:
    """Each name in __all__ that is callable, and each public method, says what it does."""
    missing = []
    for name in module.__all__:
        value = getattr(module, name)
        if (inspect.isfunction(value) or inspect.isclass(value)) and not value.__doc__:
            missing.append(name)
        if inspect.isclass(value):
            for attr, member in vars(value).items():
                if attr.startswith("_"):
                    continue
                func = member.__func__ if isinstance(member, classmethod | staticmethod) \
                    else member.fget if isinstance(member, property) else member
                if inspect.isfunction(func) and not func.__doc__:
                    missing.append(f"{name}.{attr}")
    assert missing == [], module.__name__
