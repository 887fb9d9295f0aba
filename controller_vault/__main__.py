"""`controller-vault` command line: turns arguments and environment into a config and
calls the vault's operations. Exit codes: 0 ok, 1 the operation failed (audit does not
verify, relay refused), 2 bad usage, 78 a bad setting (vault.config, config.*) or a
store written by a newer vault (vault.db, keys.db or staff.db): the unit does not
restart on 78, since a restart would fail the same way.

    controller-vault init --account ACCOUNT --state-dir DIR [--passphrase-file F]
    controller-vault serve --config FILE
    controller-vault rotate-key (--config FILE | --state-dir DIR) [--relay URL]
    controller-vault pair --relay URL --account ACCOUNT --token TOKEN (--config | --state-dir)
    controller-vault audit verify (--config FILE | --state-dir DIR)
    controller-vault backup DIR (--config FILE | --state-dir DIR)
    controller-vault restore DIR --state-dir DIR [--only data|keys] [--force]
    controller-vault certify-agent --agent NAME --enc-pk B64 --sig-pk B64 [--days N]
                                   [--relay URL --token TOKEN] (--config | --state-dir)

Staff commands (token, transcripts, export, erase, retention): see staff_cli.py.

The admin token may come from $RELAY_ADMIN_TOKEN instead of --token (keeps it out of
the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from envelope import EnvelopeError, b64d

from .config import VaultConfig, load_config
from .errors import VaultError
from .staff.errors import StaffError
from .staff_cli import STAFF_COMMANDS, add_staff_commands

if TYPE_CHECKING:
    from .audit import AuditProblem
    from .keyfiles import VaultKeys
    from .store import VaultStore

__all__ = ["main"]

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controller-vault", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def where(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="TOML config file with a [vault] table")
        sp.add_argument("--state-dir", help="vault state directory (instead of --config)")
        sp.add_argument("--passphrase-file", help="passphrase protecting the secret files")

    init = sub.add_parser("init", help="create a new vault's keys")
    init.add_argument("--account", required=True)
    init.add_argument("--state-dir", required=True)
    init.add_argument("--passphrase-file", help="protect the secret files with a passphrase")
    serve = sub.add_parser("serve", help="run the vault service")
    where(serve)
    rotate = sub.add_parser("rotate-key", help="new vault encryption key and statement")
    where(rotate)
    rotate.add_argument("--relay", help="republish the statement at this relay")
    rotate.add_argument("--token", help="relay admin token (or $RELAY_ADMIN_TOKEN)")
    pair = sub.add_parser("pair", help="publish the identity key and key statement")
    where(pair)
    pair.add_argument("--relay", required=True)
    pair.add_argument("--account", required=True)
    pair.add_argument("--token", help="relay admin token (or $RELAY_ADMIN_TOKEN)")
    audit = sub.add_parser("audit", help="audit log operations")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="verify the hash chain and checkpoints")
    where(verify)
    backup = sub.add_parser("backup", help="online copy of the data store and the key store")
    backup.add_argument("dir", help="new or empty directory to write the backup into")
    where(backup)
    restore = sub.add_parser("restore", help="put a backup's stores back (service stopped)")
    restore.add_argument("dir", help="backup directory (with data/ and/or keys/)")
    where(restore)
    restore.add_argument("--only", choices=["data", "keys"],
                         help="restore one part only (default: both)")
    restore.add_argument("--force", action="store_true",
                         help="replace stores that already hold data")
    cert = sub.add_parser("certify-agent", help="certify an agent device's public keys")
    where(cert)
    cert.add_argument("--agent", required=True, help="agent pseudonym")
    cert.add_argument("--enc-pk", required=True, help="X25519 public key, base64url")
    cert.add_argument("--sig-pk", required=True, help="Ed25519 public key, base64url")
    cert.add_argument("--days", type=int, default=365)
    cert.add_argument("--relay")
    cert.add_argument("--token", help="relay admin token (or $RELAY_ADMIN_TOKEN)")
    add_staff_commands(sub, where)
    return p


def _config(args: argparse.Namespace, account: str | None = None) -> VaultConfig:
    env = dict(os.environ)
    if getattr(args, "state_dir", None):
        env["VAULT_STATE_DIR"] = args.state_dir
        if account is None and "VAULT_ACCOUNT" not in env:
            doc = json.loads((pathlib.Path(args.state_dir) / "vault.json").read_text())
            env["VAULT_ACCOUNT"] = str(doc["account"])
    if account is not None:
        env["VAULT_ACCOUNT"] = account
    if getattr(args, "passphrase_file", None):
        env["VAULT_PASSPHRASE_FILE"] = args.passphrase_file
    return load_config(args.config if getattr(args, "config", None) else None, env=env)


def _token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("RELAY_ADMIN_TOKEN", "")
    if not token:
        raise VaultError("give --token or set $RELAY_ADMIN_TOKEN", code="cli.usage")
    return str(token)


def _tls(cfg: VaultConfig) -> dict[str, str | None]:
    # The same certificate checks as the vault link (pairing.relay_ssl reads them).
    return {"ca_file": cfg.relay_ca_file or None, "cert_sha256": cfg.relay_cert_sha256 or None}


def _keys(cfg: VaultConfig) -> VaultKeys:
    from .keyfiles import load_vault_keys, read_passphrase

    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return load_vault_keys(cfg.state_path, credentials_dir=creds,
                           passphrase=read_passphrase(cfg.passphrase_file, creds))


def _init(args: argparse.Namespace) -> int:
    from .keyfiles import embed_attribute, init_vault, read_passphrase

    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    keys = init_vault(args.state_dir, args.account, now=int(time.time()),
                      passphrase=passphrase)
    print(f"vault created for account {keys.account} in {args.state_dir}")
    print(f"identity fingerprint: {keys.identity.fingerprint}")
    print(f"vault encryption key id: {keys.current_key_id}")
    print("paste this attribute into your widget embed snippet:")
    print(f"  {embed_attribute(keys)}")
    print("back up the secrets/ directory now: without it stored data cannot be read")
    return 0


async def _with_store(cfg: VaultConfig, op: Callable[[VaultStore], Awaitable[T]]) -> T:
    from .store import VaultStore

    store = await VaultStore.open(cfg.state_path / "vault.db", cfg.account,
                                  busy_timeout_ms=cfg.busy_timeout_ms)
    try:
        return await op(store)
    finally:
        await store.close()


def _audit_verify(args: argparse.Namespace) -> int:
    from .checkpoints import verify_audit

    cfg = _config(args)
    if not (cfg.state_path / "vault.db").exists():
        raise VaultError(f"no vault database in {cfg.state_dir}", code="vault.config")

    async def op(store: VaultStore) -> tuple[list[AuditProblem], list[Any]]:
        return await verify_audit(store, cfg.state_path), await store.audit_rows()

    problems, rows = asyncio.run(_with_store(cfg, op))
    if problems:
        for p in problems:
            print(f"audit log does NOT verify: {p.code}: {p.message}", file=sys.stderr)
        return 1
    print(f"audit log verifies: {len(rows)} entries")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from .keyfiles import read_passphrase, rotate_encryption_key
    from .pairing import publish_vault_key
    from .store import AuditRecord

    cfg = _config(args)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    now = int(time.time())
    keys = rotate_encryption_key(cfg.state_path, now=now,
                                 passphrase=read_passphrase(cfg.passphrase_file, creds))

    async def op(store: VaultStore) -> None:
        await store.append_audit([AuditRecord("admin", "rotate-key", "key-management",
                                              keys.current_key_id, {})], now)

    asyncio.run(_with_store(cfg, op))
    print(f"new vault encryption key id: {keys.current_key_id} "
          f"({len(keys.encryption_keys)} keys kept for opening)")
    if args.relay:
        asyncio.run(publish_vault_key(args.relay, _token(args), keys, **_tls(cfg)))
        print(f"statement published at {args.relay}")
    else:
        print("run `controller-vault pair` to publish the new statement at the relay")
    return 0


def _pair(args: argparse.Namespace) -> int:
    from .pairing import fetch_relay_signing_key, publish_vault_key
    from .store import AuditRecord

    cfg = _config(args, account=args.account)
    keys = _keys(cfg)
    if keys.account != args.account:
        raise VaultError("this vault was initialised for another account", code="cli.usage")
    token = _token(args)
    asyncio.run(publish_vault_key(args.relay, token, keys, **_tls(cfg)))
    relay_key = asyncio.run(fetch_relay_signing_key(args.relay, token, keys.account,
                                                    **_tls(cfg)))
    print(f"paired account {keys.account} at {args.relay}; "
          f"identity fingerprint {keys.identity.fingerprint}")
    if relay_key is None:
        print("the relay publishes no relay_signing_key: relay-role envelopes are trusted "
              "on first use, and a key change raises an alert", file=sys.stderr)
        return 0
    from envelope import key_id

    async def op(store: VaultStore) -> None:
        await store.set_relay_pin(relay_key, "pair", int(time.time()), AuditRecord(
            "admin", "pin-relay-key", "key-management", key_id(relay_key), {}))

    asyncio.run(_with_store(cfg, op))
    print(f"relay signing key {key_id(relay_key)} pinned: relay-role envelopes signed by "
          "any other key are refused")
    return 0


def _certify(args: argparse.Namespace) -> int:
    from .certify import certify_agent
    from .pairing import publish_agent_certificate

    cfg = _config(args)
    keys = _keys(cfg)
    try:
        enc, sig = b64d(args.enc_pk, length=32), b64d(args.sig_pk, length=32)
    except EnvelopeError:
        raise VaultError("--enc-pk and --sig-pk must be 32-byte base64url keys",
                         code="cli.usage") from None

    async def op(store: VaultStore) -> dict[str, str]:
        return await certify_agent(store, keys, agent=args.agent, encryption_key=enc,
                                   signing_key=sig, now=int(time.time()), days=args.days)

    cert = asyncio.run(_with_store(cfg, op))
    print(json.dumps(cert))
    if args.relay:
        asyncio.run(publish_agent_certificate(args.relay, _token(args), keys.account, cert,
                                              **_tls(cfg)))
        print(f"certificate published at {args.relay}", file=sys.stderr)
    return 0


def _backup_state_dir(args: argparse.Namespace) -> pathlib.Path:
    # restore targets a fresh directory that may have no vault.json yet, so no _config().
    if args.config:
        return _config(args).state_path
    if not args.state_dir:
        raise VaultError("give --config or --state-dir", code="cli.usage")
    return pathlib.Path(args.state_dir)


def _backup(args: argparse.Namespace) -> int:
    from .backup import take_backup

    manifest = take_backup(_backup_state_dir(args), args.dir, now=int(time.time()))
    for part, doc in manifest["parts"].items():
        print(f"{part}: {', '.join(sorted(doc['files']))} -> {pathlib.Path(args.dir) / part}")
    print("keep keys/ for a SHORTER time than data/ (see README.md, Backups)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from .backup import RestoreReport, restore_backup

    parts = (args.only,) if args.only else ("data", "keys")
    state = _backup_state_dir(args)

    def finish(report: RestoreReport) -> None:
        # Still under serve.lock: the audit entry is the restore's last write.
        for part, names in report.parts.items():
            print(f"restored {part} (taken at {report.created_at[part]}): {', '.join(names)}")
        if "data" not in report.parts or not (state / "vault.json").exists():
            return
        from .store import AuditRecord

        # The restore itself goes into the (restored) audit chain: who put old data back.
        record = AuditRecord("admin", "restore", "backup-restore", "backup",
                             {"parts": sorted(report.parts), "taken_at": report.created_at})
        cfg = load_config(None, env={"VAULT_STATE_DIR": str(state),
                                     "VAULT_ACCOUNT": json.loads(
                                         (state / "vault.json").read_text())["account"]})

        async def op(store: VaultStore) -> None:
            await store.append_audit([record], int(time.time()))

        asyncio.run(_with_store(cfg, op))

    restore_backup(args.dir, state, parts=parts, force=args.force, before_release=finish)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    asyncio.run(serve(_config(args)))
    return 0


#: sysexits' EX_CONFIG: the unit's RestartPreventExitStatus names it.
EXIT_NOT_RESTARTABLE = 78
#: Refusals a restart cannot fix: a vault.db or keys.db (SchemaNewer), or a staff.db
#: (the token store's StaffConfigError), written by a newer vault.
_NOT_RESTARTABLE_CODES = frozenset({"vault.schema_newer", "vault.config"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `controller-vault` console script."""
    args = _parser().parse_args(argv)
    commands = {"init": _init, "serve": _serve, "rotate-key": _rotate, "pair": _pair,
                "audit": _audit_verify, "certify-agent": _certify,
                "backup": _backup, "restore": _restore}
    try:
        if args.command in STAFF_COMMANDS:
            cfg = _config(args)
            return STAFF_COMMANDS[args.command](args, cfg, _keys(cfg))
        return commands[args.command](args)
    except (VaultError, StaffError) as exc:
        print(f"controller-vault: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.code in _NOT_RESTARTABLE_CODES or exc.code.startswith("config."):
            # 78 (EX_CONFIG): a newer database or a bad setting (vault.toml, [smtp],
            # [alerts], redaction or retention rules) that a restart cannot fix;
            # controller-vault.service does not restart on it (RestartPreventExitStatus)
            # instead of failing again every 2 s until systemd's start limit.
            return EXIT_NOT_RESTARTABLE
        return 2 if exc.code == "cli.usage" else 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"controller-vault: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
