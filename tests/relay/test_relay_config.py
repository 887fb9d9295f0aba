"""Config, secrets, the frame parser, and the module rules of STYLE.md for relay/."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib

import pytest

from relay.config import FIELD_HELP, ConfigError, RelayConfig, load_config, read_operator_token
from relay.keyring import load_keyring
from relay.protocol import ProtocolError, parse_text_frame

ROOT = pathlib.Path(__file__).resolve().parents[2] / "relay"


def test_every_config_field_is_documented() -> None:
    assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(RelayConfig)}
    assert all(len(h) > 5 for h in FIELD_HELP.values())


def test_toml_then_env_then_overrides(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[relay]\nport = 9001\nhost = "0.0.0.0"\ntrusted_proxies = ["10.0.0.1"]\n')
    cfg = load_config(path, env={"RELAY_PORT": "9002", "RELAY_LOG_LEVEL": "DEBUG"})
    assert (cfg.port, cfg.host, cfg.log_level) == (9002, "0.0.0.0", "DEBUG")
    assert cfg.trusted_proxies == ("10.0.0.1",)
    assert load_config(path, env={}, port=9003).port == 9003
    path.write_text("[relay]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown config fields"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="port"):
        load_config(None, env={"RELAY_PORT": "eighty"})


def test_boolean_fields_from_toml_and_env(tmp_path: pathlib.Path) -> None:
    assert load_config(None, env={}).link_batch_frames is True
    path = tmp_path / "relay.toml"
    path.write_text("[relay]\nlink_batch_frames = false\n")
    assert load_config(path, env={}).link_batch_frames is False
    for word, value in (("true", True), ("0", False), ("Off", False), ("yes", True)):
        assert load_config(None, env={"RELAY_LINK_BATCH_FRAMES": word}).link_batch_frames \
            is value
    with pytest.raises(ConfigError, match="link_batch_frames"):
        load_config(None, env={"RELAY_LINK_BATCH_FRAMES": "maybe"})


def test_secrets_from_credentials_directory(tmp_path: pathlib.Path) -> None:
    creds, state = tmp_path / "creds", tmp_path / "state"
    creds.mkdir()
    (creds / "operator_token").write_text("from-systemd-credentials-0123\n")
    (creds / "master.key").write_bytes(b"m" * 32)
    cfg = load_config(None, env={}, state_dir=str(state))
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert read_operator_token(cfg, env=env) == "from-systemd-credentials-0123"
    ring = load_keyring(state, env=env)
    assert ring.master_key == b"m" * 32
    assert not (state / "master.key").exists()  # nothing copied to disk
    assert (state / "relay_signing.key").stat().st_mode & 0o777 == 0o600
    (state / "relay_signing.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_keyring(state, env=env)
    with pytest.raises(ConfigError, match="no operator token"):
        read_operator_token(cfg, env={})


@pytest.mark.parametrize(("frame", "compliance", "code"), [
    ("[1]", False, "frame.malformed"),
    ('{"type": 5}', False, "frame.malformed"),
    ('{"type": "accept", "engagement": "eng-00000001"}', False, "frame.unknown_type"),
    ('{"type": "msg", "seq": 0, "text": "x"}', False, "frame.bad_field"),
    ('{"type": "msg", "seq": 1, "text": "x"}', True, "compliance.plaintext_refused"),
    ('{"type": "hello", "note": "free text"}', True, "compliance.plaintext_refused"),
    ('{"type": "hello", "visitor_id": "has spaces in it"}', True, "frame.bad_field"),
    ('{"type": "typing", "on": "yes"}', False, "frame.bad_field"),
])
def test_parser_refusals(frame: str, compliance: bool, code: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_text_frame(frame, role="visitor", compliance=compliance)
    assert exc.value.code == code


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_rules(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), "module docstring"
    assert len(path.read_text().splitlines()) <= 450
    if path.name in ("__init__.py",) and path.parent == ROOT:
        return
    module = importlib.import_module(
        ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"))
    exported = getattr(module, "__all__", None)
    assert exported is not None and all(hasattr(module, n) for n in exported)
    public = [n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]
    nodes = [*tree.body, *(m for c in public for m in c.body)]
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                and not node.name.startswith("_"):
            assert ast.get_docstring(node), f"{path.name}:{node.name} has no docstring"
    text = path.read_text()
    for marker in ("TO" "DO", "FIX" "ME", "X" "XX", "NotImplemented" "Error"):
        assert marker not in text


def test_schema_files_are_versioned() -> None:
    from relay.sqlite_store import SCHEMA_VERSION

    names = sorted(p.name for p in (ROOT / "schema").glob("*.sql"))
    assert names[0].startswith("001_") and len(names) == SCHEMA_VERSION


def test_gc_young_threshold_is_a_setting_and_serve_applies_it() -> None:
    import gc

    from relay.__main__ import tune_gc

    assert load_config(None, env={}).gc_young_threshold == 10_000
    with pytest.raises(ConfigError, match="gc_young_threshold"):
        load_config(None, env={"RELAY_GC_YOUNG_THRESHOLD": "-1"})
    before = gc.get_threshold()
    try:
        tune_gc(load_config(None, env={"RELAY_GC_YOUNG_THRESHOLD": "12345"}))
        assert gc.get_threshold() == (12345, 50, 10)
        assert gc.get_freeze_count() > 0  # what existed at start leaves the collections
        gc.set_threshold(*before)
        gc.unfreeze()
        tune_gc(load_config(None, env={"RELAY_GC_YOUNG_THRESHOLD": "0"}))
        assert gc.get_threshold() == before  # 0: Python's own settings kept
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_relay_serve_exits_78_on_a_bad_setting(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    conf = tmp_path / "relay.toml"
    conf.write_text("[relay]\nno_such_setting = 1\n")
    out = subprocess.run([sys.executable, "-m", "relay", "--config", str(conf), "serve",
                          "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=60, check=False)
    # 78: relay.service's RestartPreventExitStatus; a restart would fail the same way.
    assert out.returncode == 78, out.stderr
    assert "no_such_setting" in out.stderr and "Traceback" not in out.stderr
