"""What both services do at run time, compressed, to run under the units' filters.

Run by test_deploy_seccomp.py through seccomp_launcher.py: every library the
services load (pynacl and cryptography through their compiled cffi/Rust modules,
aiohttp, sqlite3 in WAL mode, prometheus_client, sdnotify) does real work, and a
websocket and an HTTP request cross a real 127.0.0.1 socket. Prints one line per
step and `workload ok` at the end.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile

__all__ = ["main"]


def _crypto() -> None:
    import nacl.public
    import nacl.pwhash
    import nacl.signing
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    import envelope

    vault, visitor = envelope.EncryptionKey.generate(), envelope.PartyKeys.generate()
    data = envelope.seal(b"hi", sender=visitor, role="visitor", account="clinic",
                         engagement="eng-00000001", sequence=1, kind="message",
                         recipients=[vault.public_bytes])
    assert envelope.open_envelope(data, vault).body == b"hi"
    key = nacl.public.PrivateKey.generate()
    box = nacl.public.SealedBox(key.public_key).encrypt(b"x")
    assert nacl.public.SealedBox(key).decrypt(box) == b"x"
    signer = nacl.signing.SigningKey.generate()
    signer.verify_key.verify(signer.sign(b"m"))
    nacl.pwhash.argon2id.kdf(32, b"passphrase", b"s" * 16,
                             opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
                             memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN)
    nonce = b"\0" * 12
    assert AESGCM(AESGCM.generate_key(128)).encrypt(nonce, b"a", None)
    assert ChaCha20Poly1305(ChaCha20Poly1305.generate_key()).encrypt(nonce, b"a", None)
    X25519PrivateKey.generate().exchange(X25519PrivateKey.generate().public_key())
    print("crypto ok")


def _sqlite(directory: str) -> None:
    db = sqlite3.connect(os.path.join(directory, "store.sqlite3"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA secure_delete=ON")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    with db:
        db.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(64),) for _ in range(200)])
    backup = sqlite3.connect(os.path.join(directory, "backup.sqlite3"))
    db.backup(backup)
    assert backup.execute("SELECT count(*) FROM t").fetchone()[0] == 200
    print("sqlite ok")


async def _network() -> None:
    import aiohttp
    from aiohttp import web
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    hits = Counter("workload_hits", "requests", registry=registry)

    async def metrics(request: web.Request) -> web.Response:
        hits.inc()
        return web.Response(body=generate_latest(registry))

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert b"workload_hits_total" in await resp.read()
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            await ws.send_bytes(b"\x01\x02")
            assert (await ws.receive()).data == b"\x01\x02"
    await runner.cleanup()
    print("network ok")


def _notify() -> None:
    import sdnotify

    notifier = sdnotify.SystemdNotifier(debug=True)
    notifier.notify("READY=1")
    notifier.notify("WATCHDOG=1")
    print("notify ok")


def main() -> int:
    """Run every step; a failure raises and exits non-zero."""
    _crypto()
    with tempfile.TemporaryDirectory() as directory:
        _sqlite(directory)
    asyncio.run(asyncio.wait_for(_network(), 20))
    _notify()
    print("workload ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
