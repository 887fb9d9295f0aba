"""deploy/install-*.sh run for real into a staging root: idempotent, complete, reversible."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
IS_ROOT = os.geteuid() == 0

pytestmark = [
    pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                       reason="systemd-sysusers absent (.ci/run installs systemd)"),
    pytest.mark.timeout(180),
]


def _install(script: str, staging: pathlib.Path, *args: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(DEPLOY / script), "--root", str(staging), *args],
        capture_output=True, text=True, timeout=150,
        env={**os.environ, "PYTHON": sys.executable})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def tree_digest(root: pathlib.Path) -> str:
    """Hash every path under root with its type, mode, owner and content."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(f"{path.relative_to(root)}\0{info.st_mode:o}\0{info.st_uid}:"
                      f"{info.st_gid}\0".encode())
        if stat.S_ISLNK(info.st_mode):
            digest.update(os.readlink(path).encode())
        elif stat.S_ISREG(info.st_mode):
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _uid_gid(staging: pathlib.Path, user: str) -> tuple[int, int]:
    for line in (staging / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"{user} not in the staging passwd")


def test_relay_installer_twice_gives_the_same_tree(tmp_path: pathlib.Path) -> None:
    staging = tmp_path / "root"
    _install("install-relay.sh", staging, "--no-venv",
             "--public-origin", "https://relay.test.example")
    first = tree_digest(staging)
    second_run = _install("install-relay.sh", staging, "--no-venv",
                          "--public-origin", "https://relay.test.example")
    assert tree_digest(staging) == first
    assert "wrote" not in second_run.stdout and "generated" not in second_run.stdout

    config = tomllib.loads((staging / "etc/compliance-relay/relay.toml").read_text())
    assert config["relay"] == {"host": "127.0.0.1", "port": 8440,
                               "state_dir": "/var/lib/compliance-relay",
                               "public_origin": "https://relay.test.example",
                               "log_level": "info"}
    token = staging / "etc/compliance-relay/credentials/operator_token"
    assert len(token.read_text()) >= 40 and _mode(token) == 0o600
    assert token.read_text() not in second_run.stdout + second_run.stderr
    assert _mode(token.parent) == 0o700
    unit = staging / "etc/systemd/system/relay.service"
    assert unit.read_bytes() == (ROOT / "systemd/relay.service").read_bytes()
    wants = staging / "etc/systemd/system/multi-user.target.wants/relay.service"
    assert os.readlink(wants) == "/etc/systemd/system/relay.service"
    state = staging / "var/lib/compliance-relay"
    assert _mode(state) == 0o700
    if IS_ROOT:
        assert (state.stat().st_uid, state.stat().st_gid) == _uid_gid(staging, "compliance-relay")


def test_uninstall_keeps_data_and_token_unless_purged(tmp_path: pathlib.Path) -> None:
    staging = tmp_path / "root"
    _install("install-relay.sh", staging, "--no-venv")
    token = staging / "etc/compliance-relay/credentials/operator_token"
    secret = token.read_bytes()
    data = staging / "var/lib/compliance-relay/relay.sqlite3"
    data.write_bytes(b"records")

    _install("install-relay.sh", staging, "--uninstall")
    assert not (staging / "etc/systemd/system/relay.service").exists()
    assert not (staging / "etc/systemd/system/multi-user.target.wants/relay.service").is_symlink()
    assert not (staging / "opt/compliance-relay").exists()
    assert data.read_bytes() == b"records" and token.read_bytes() == secret

    # Reinstalling keeps the operator's token: a rerun must not lock the operator out.
    _install("install-relay.sh", staging, "--no-venv")
    assert token.read_bytes() == secret

    _install("install-relay.sh", staging, "--uninstall", "--purge")
    assert not (staging / "etc/compliance-relay").exists()
    assert not (staging / "var/lib/compliance-relay").exists()
    # The user stays, so its uid is never handed to another account.
    assert "compliance-relay:" in (staging / "etc/passwd").read_text()


def test_vault_installer_refuses_bad_input_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    staging = tmp_path / "root"
    for args in (["--account", "Bad Name"], ["--account", "clinic", "--relay-url", "ftp://x"],
                 ["--account", "clinic", "--relay-url", "https://relay.example\\"],
                 ["--account", "clinic", "--listen", "a\\b:8450"],
                 ["--account", "clinic", "--purge"], ["--bogus"]):
        result = _install("install-vault.sh", staging, "--no-venv", *args, check=False)
        assert result.returncode != 0
    assert not staging.exists() or list(staging.rglob("*")) == []


def test_vault_passphrase_becomes_a_root_only_credential(tmp_path: pathlib.Path) -> None:
    staging = tmp_path / "root"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple")
    _install("install-vault.sh", staging, "--no-venv", "--account", "clinic",
             "--passphrase-file", str(passphrase))
    credential = staging / "etc/controller-vault/credentials/passphrase"
    assert credential.read_text() == "correct horse battery staple"
    assert _mode(credential) == 0o600 and _mode(credential.parent) == 0o700

    without = tmp_path / "root2"
    _install("install-vault.sh", without, "--no-venv", "--account", "clinic")
    # Present but empty: LoadCredential= needs the file, the vault reads "no passphrase".
    assert (without / "etc/controller-vault/credentials/passphrase").read_bytes() == b""


@pytest.mark.slow
def test_relay_installer_venv_runs_the_relay_on_uvloop(tmp_path: pathlib.Path) -> None:
    """The relay's venv gets the `fast` extra: `relay serve` (event_loop=auto) then runs
    on uvloop, the loop its benchmark figures are measured on."""
    staging = tmp_path / "root"
    run = _install("install-relay.sh", staging, "--source", str(ROOT))
    assert "installed into /opt/compliance-relay/venv" in run.stdout
    python = staging / "opt/compliance-relay/venv/bin/python"
    probe = subprocess.run([str(python), "-c", "import uvloop, relay; print('ok')"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "ok", probe.stderr


def test_vault_installer_with_a_real_venv_twice(tmp_path: pathlib.Path) -> None:
    staging = tmp_path / "root"
    args = ("--account", "clinic", "--relay-url", "https://relay.test.example",
            "--listen", "0.0.0.0:8450", "--source", str(ROOT))
    first_run = _install("install-vault.sh", staging, *args)
    assert "installed into /opt/controller-vault/venv" in first_run.stdout
    first = tree_digest(staging)
    second_run = _install("install-vault.sh", staging, *args)
    assert tree_digest(staging) == first
    assert "virtual environment up to date" in second_run.stdout

    program = staging / "opt/controller-vault/venv/bin/controller-vault"
    assert subprocess.run([str(program), "--help"], capture_output=True,
                          timeout=60).returncode == 0
    config = tomllib.loads((staging / "etc/controller-vault/vault.toml").read_text())
    assert config["vault"] == {"account": "clinic", "state_dir": "/var/lib/controller-vault",
                               "relay_url": "https://relay.test.example",
                               "host": "0.0.0.0", "port": 8450}
    state = staging / "var/lib/controller-vault"
    assert _mode(state) == 0o700
    if IS_ROOT:
        owner = _uid_gid(staging, "controller-vault")
        assert all((p.stat().st_uid, p.stat().st_gid) == owner
                   for p in [state, *state.rglob("*")])

    # Keys already there (from init, or a restore): init is not run again.
    (state / "keep-me").write_bytes(b"existing key material")
    third_run = _install("install-vault.sh", staging, *args)
    assert "init skipped" in third_run.stdout
    assert (state / "keep-me").read_bytes() == b"existing key material"

    # The installed unit verifies against the installed program.
    if shutil.which("systemd-analyze") and pathlib.Path("/usr/lib/systemd/system").is_dir():
        shutil.copytree("/usr/lib/systemd/system", staging / "usr/lib/systemd/system",
                        symlinks=True)
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=false", f"--root={staging}",
             str(staging / "etc/systemd/system/controller-vault.service")],
            capture_output=True, text=True, timeout=30)
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck absent (.ci/run installs it)")
def test_installers_pass_shellcheck() -> None:
    scripts = sorted(str(p) for p in DEPLOY.glob("*.sh"))
    result = subprocess.run(["shellcheck", "-x", *scripts, str(ROOT / ".ci/run")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout


def test_vault_installer_writes_the_relay_tls_trust(tmp_path: pathlib.Path) -> None:
    from controller_vault.config import load_config

    pin = "AB:" * 31 + "CD"
    pinned = tmp_path / "pinned"
    _install("install-vault.sh", pinned, "--no-venv", "--account", "clinic",
             "--relay-cert-sha256", pin)
    conf = pinned / "etc/controller-vault/vault.toml"
    assert tomllib.loads(conf.read_text())["vault"]["relay_cert_sha256"] == pin
    assert load_config(conf).relay_cert_sha256 == pin  # the vault accepts what was written

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    with_ca = tmp_path / "with-ca"
    _install("install-vault.sh", with_ca, "--no-venv", "--account", "clinic",
             "--relay-ca-file", str(ca))
    doc = tomllib.loads((with_ca / "etc/controller-vault/vault.toml").read_text())["vault"]
    assert doc["relay_ca_file"] == "/etc/controller-vault/relay-ca.pem"
    staged = with_ca / "etc/controller-vault/relay-ca.pem"
    assert staged.read_text() == ca.read_text() and _mode(staged) == 0o644

    # A rerun with other TLS options keeps the controller's config and says so.
    rerun = _install("install-vault.sh", with_ca, "--no-venv", "--account", "clinic",
                     "--relay-cert-sha256", pin)
    assert "not merged" in rerun.stdout + rerun.stderr
    assert "relay_cert_sha256" not in (with_ca / "etc/controller-vault/vault.toml").read_text()

    refused = tmp_path / "refused"
    for args in (["--relay-cert-sha256", "abc"], ["--relay-ca-file", str(tmp_path / "none")],
                 ["--relay-ca-file", str(ca), "--relay-cert-sha256", pin]):
        result = _install("install-vault.sh", refused, "--no-venv", "--account", "clinic",
                          *args, check=False)
        assert result.returncode != 0
    assert not refused.exists() or list(refused.rglob("*")) == []
