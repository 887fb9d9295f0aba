"""The staff subcommands of `controller-vault` (tokens, transcripts, export, erasure,
retention). ``__main__`` mounts them; each opens the vault's files, does one audited
operation and closes them. Output is ids and counts on stdout, progress on stderr.

    controller-vault token create --actor NAME --scope read [--scope export] [--ttl-days N]
    controller-vault token revoke TOKEN_ID
    controller-vault token list
    controller-vault transcripts list [--since UNIX] [--until UNIX] [--agent NAME]
    controller-vault transcripts show ENGAGEMENT --purpose TEXT [--html]
    controller-vault export --subject-email E --out FILE --purpose TEXT
    controller-vault erase (--engagement ID | --subject-email E) [--purpose TEXT]
    controller-vault retention (--dry-run | --run)

All take ``--config FILE`` or ``--state-dir DIR``. The plaintext of a new token is
printed once and never stored.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import pathlib
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .config import VaultConfig, load_staff_settings
from .errors import VaultError

__all__ = ["STAFF_COMMANDS", "add_staff_commands"]


@dataclass
class _Vault:
    cfg: VaultConfig
    keys: Any
    store: Any
    keystore: Any


@asynccontextmanager
async def _open(cfg: VaultConfig, keys: Any) -> AsyncIterator[_Vault]:
    from .keystore import KeyStore
    from .store import VaultStore

    store = await VaultStore.open(cfg.state_path / "vault.db", keys.account,
                                  busy_timeout_ms=cfg.busy_timeout_ms)
    try:
        keystore = await KeyStore.open(cfg.state_path / "keys.db", keys.master_key,
                                       busy_timeout_ms=cfg.busy_timeout_ms)
    except BaseException:
        await store.close()  # else its aiosqlite thread keeps the command from exiting
        raise
    try:
        yield _Vault(cfg, keys, store, keystore)
    finally:
        await keystore.close()
        await store.close()


def _actor() -> str:
    # The OS user running the command is the actor of CLI operations in the audit log.
    return "cli-" + re.sub(r"[^A-Za-z0-9._-]", "_", getpass.getuser())[:48]


def add_staff_commands(sub: Any, where: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the staff subcommands to the `controller-vault` parser."""
    token = sub.add_parser("token", help="staff API tokens")
    tsub = token.add_subparsers(dest="subcommand", required=True)
    create = tsub.add_parser("create", help="issue a token (printed once)")
    where(create)
    create.add_argument("--actor", required=True, help="staff member or system name")
    create.add_argument("--scope", action="append", required=True,
                        help="read, export, erase, configure or audit (repeatable)")
    create.add_argument("--ttl-days", type=int, help="expire after this many days")
    revoke = tsub.add_parser("revoke", help="revoke a token by id")
    where(revoke)
    revoke.add_argument("token_id")
    listing = tsub.add_parser("list", help="list tokens (ids, actors, scopes, times)")
    where(listing)
    tr = sub.add_parser("transcripts", help="list and read transcripts")
    trsub = tr.add_subparsers(dest="transcripts_command", required=True)
    tlist = trsub.add_parser("list", help="list engagements")
    where(tlist)
    tlist.add_argument("--since", type=int)
    tlist.add_argument("--until", type=int)
    tlist.add_argument("--agent")
    show = trsub.add_parser("show", help="print one transcript (audited read)")
    where(show)
    show.add_argument("engagement", help="engagement id (one that starts with '-': put it"
                      " after '--', as in: show --purpose P -- -abc)")
    show.add_argument("--purpose", required=True, help="why it is read (audited)")
    show.add_argument("--html", action="store_true", help="printable HTML instead of JSON")
    export = sub.add_parser("export", help="subject-access export (JSON bundle)")
    where(export)
    export.add_argument("--subject-email", required=True)
    export.add_argument("--out", required=True, help="file to write (mode 0600)")
    export.add_argument("--purpose", default="subject-access-request")
    erase = sub.add_parser("erase", help="erase an engagement or a data subject")
    where(erase)
    target = erase.add_mutually_exclusive_group(required=True)
    target.add_argument("--engagement", help="engagement id (one that starts with '-':"
                        " --engagement=-abc)")
    target.add_argument("--subject-email")
    erase.add_argument("--purpose", default="erasure-request")
    retention = sub.add_parser("retention", help="erase what is past its retention age")
    where(retention)
    mode = retention.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="only list what would go")
    mode.add_argument("--run", action="store_true", help="erase it now")


def _token(args: argparse.Namespace, cfg: VaultConfig, keys: Any) -> int:
    from .staff.token_store import SqliteTokenStore
    from .staff.tokens import StaffTokens
    from .store import AuditRecord

    async def op() -> int:
        now = int(time.time())
        # The vault's stores first: one that is refused (a newer schema, locked, corrupt)
        # stops the command before staff.db is created or changed.
        async with _open(cfg, keys) as v:
            token_db = await SqliteTokenStore.open(cfg.state_path)
            tokens = StaffTokens(token_db)
            try:
                if args.subcommand == "create":
                    ttl = args.ttl_days * 86400 if args.ttl_days else None
                    plain, rec = await tokens.issue(args.actor, args.scope, now=now, ttl_s=ttl)
                    await v.store.append_audit([AuditRecord(
                        _actor(), "token-create", "access-management", rec.token_id,
                        {"actor": rec.actor, "scopes": sorted(rec.scopes)})], now)
                    print(plain)
                    print(f"token id {rec.token_id} for {rec.actor}: "
                          f"{','.join(sorted(rec.scopes))} (shown once)", file=sys.stderr)
                    return 0
                if args.subcommand == "revoke":
                    if not await tokens.revoke(args.token_id, now=now):
                        print("no live token with that id", file=sys.stderr)
                        return 1
                    await v.store.append_audit([AuditRecord(
                        _actor(), "token-revoke", "access-management", args.token_id[:16],
                        {})], now)
                    print(f"revoked {args.token_id}")
                    return 0
                for rec in await token_db.list_tokens():
                    state = "revoked" if rec.revoked_at else (
                        "expired" if rec.expires_at and rec.expires_at <= now else "live")
                    print(f"{rec.token_id}  {rec.actor:<24} "
                          f"{','.join(sorted(rec.scopes)):<28} {state}")
                return 0
            finally:
                await token_db.close()

    return asyncio.run(op())


def _transcripts(args: argparse.Namespace, cfg: VaultConfig, keys: Any) -> int:
    from .erasure import read_engagement
    from .staff.render import render_html
    from .transcripts import build_transcript

    async def op() -> int:
        async with _open(cfg, keys) as v:
            if args.transcripts_command == "list":
                after: tuple[int, str] | None = None
                while page := await v.store.list_engagements(
                        since=args.since, until=args.until, agent=args.agent, limit=1000,
                        after=after):
                    for s in page:
                        flag = "incomplete" if s.incomplete else "complete"
                        print(f"{s.engagement}  started {s.first_at}  {flag:<10} "
                              f"agents {','.join(s.agents) or '-'}")
                    after = (page[-1].first_at, page[-1].engagement)
                return 0
            summary = await v.store.engagement_summary(args.engagement)
            if summary is None or summary.erased_at is not None:
                raise VaultError("no such engagement (or erased)", code="engagement.not_found")
            rows = await read_engagement(v.store, v.keystore, args.engagement, actor=_actor(),
                                         purpose=args.purpose, now=int(time.time()))
            doc = build_transcript(args.engagement, keys.account, summary.first_at, None,
                                   summary.complete is True, rows, await v.store.agent_names())
            print(render_html(doc) if args.html else json.dumps(doc, indent=2,
                                                                 ensure_ascii=False))
            return 0

    return asyncio.run(op())


def _export(args: argparse.Namespace, cfg: VaultConfig, keys: Any) -> int:
    from .atrest import blind_token
    from .erasure import read_engagement
    from .staff.export import ExportHeader, stream_bundle
    from .store import AuditRecord
    from .transcripts import build_export_record

    out = pathlib.Path(args.out)
    partial = out.with_name(out.name + ".partial")

    async def op() -> int:
        now = int(time.time())
        token = blind_token(keys.index_key, "email", args.subject_email)
        header = ExportHeader.new(account=keys.account,
                                  identity_fingerprint=keys.identity.fingerprint,
                                  identifier_kind="email", blind_index=token.hex(), now=now)
        async with _open(cfg, keys) as v:
            engagements = await v.store.engagements_for_token(token)
            agents = await v.store.agent_names()
            await v.store.append_audit([AuditRecord(_actor(), "export", args.purpose,
                                                    header.export_id,
                                                    {"engagements": len(engagements)})], now)
            total = len(engagements)

            async def records() -> AsyncIterator[dict[str, Any]]:
                for eid in engagements:
                    s = await v.store.engagement_summary(eid)
                    if s is None or s.erased_at is not None:
                        continue
                    rows = await read_engagement(v.store, v.keystore, eid, actor=_actor(),
                                                 purpose=args.purpose, now=now)
                    yield build_export_record(eid, keys.account, s.first_at,
                                              s.complete is True, rows, agents,
                                              [header.blind_index])

            def progress(done: int) -> None:
                width = 30
                filled = width * done // max(total, 1)
                print(f"\rexport [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                      "engagements", end="", file=sys.stderr, flush=True)

            # Personal data: the file is created 0600 and renamed into place only when
            # complete, so a crash never leaves a truncated bundle under the real name.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                progress(0)
                async for chunk in stream_bundle(header, records(), on_engagement=progress):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, out)
            print(f"\nwrote {total} engagement(s) to {out}", file=sys.stderr)
            return 0

    try:
        return asyncio.run(op())
    finally:
        partial.unlink(missing_ok=True)


def _erase(args: argparse.Namespace, cfg: VaultConfig, keys: Any) -> int:
    from .atrest import blind_token
    from .erasure import erase_and_notify

    async def op() -> int:
        async with _open(cfg, keys) as v:
            if args.engagement:
                if await v.store.engagement_summary(args.engagement) is None:
                    raise VaultError("no such engagement", code="engagement.not_found")
                engs, rule = [args.engagement], "request"
            else:
                token = blind_token(keys.index_key, "email", args.subject_email)
                engs, rule = await v.store.engagements_for_token(token), "subject"
            outcome = await erase_and_notify(v.store, v.keystore, keys, engs, actor=_actor(),
                                             purpose=args.purpose, rule=rule,
                                             now=int(time.time()))
            print(json.dumps(outcome.to_json()))
            if not outcome.complete:
                print("erasure INCOMPLETE (erasure_incomplete_checkpoint): keys and rows are "
                      "deleted but a concurrent reader kept old pages on disk; run the same "
                      "erase command again", file=sys.stderr)
                return 1
            print(f"erased {len(outcome.engagements)} engagement(s); the signed notice is "
                  "queued for the relay (sent by the running service)", file=sys.stderr)
            return 0

    return asyncio.run(op())


def _retention(args: argparse.Namespace, cfg: VaultConfig, keys: Any) -> int:
    from .staff.retention import format_dry_run
    from .staff_services import expired_engagements, sweep_retention

    rules = load_staff_settings(cfg.config_file or None).retention

    async def op() -> int:
        now = int(time.time())
        async with _open(cfg, keys) as v:
            if args.dry_run:
                print(format_dry_run(await expired_engagements(v.store, rules, now)))
                return 0
            result = await sweep_retention(v.store, v.keystore, keys, rules, now=now)
            print(f"erased {len(result.erased.engagements)} engagement(s), trimmed "
                  f"{len(result.partial)}")
            return 0

    return asyncio.run(op())


#: command name -> function(args, config, keys) -> exit code
STAFF_COMMANDS: dict[str, Callable[[argparse.Namespace, VaultConfig, Any], int]] = {
    "token": _token, "transcripts": _transcripts, "export": _export, "erase": _erase,
    "retention": _retention,
}
