"""Envelope seal/open rates for 1 KiB bodies, as ratios to the raw pynacl primitives.

Baseline, measured in the same run and interleaved with the library rounds so machine
noise hits both alike:
  seal: 3 x crypto_box_seal of a 32-byte key + 1 XChaCha20-Poly1305 encrypt + 1 Ed25519 sign
  open: 1 Ed25519 verify + 1 crypto_box_seal_open + 1 XChaCha20-Poly1305 decrypt
The library adds header JSON, validation, padding, framing and parsing on top.

Standalone: ``python bench/bench_envelope.py [--smoke] [--json out.json]``.
Imported: ``run_bench(smoke=False)`` returns ``{row: {ops_per_s, baseline_ops_per_s, ratio}}``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Callable

import nacl.bindings as nb
import nacl.signing
import nacl.utils

from envelope import EncryptionKey, PartyKeys, open_envelope, seal

__all__ = ["run_bench"]

BODY = bytes(range(256)) * 4  # 1 KiB


def _rate(fn: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def _best_interleaved(lib: Callable[[], object], raw: Callable[[], object], count: int,
                      rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` rates, alternating library and baseline rounds."""
    best_lib = best_raw = 0.0
    for _ in range(rounds):
        best_lib = max(best_lib, _rate(lib, count))
        best_raw = max(best_raw, _rate(raw, count))
    return best_lib, best_raw


def run_bench(*, smoke: bool = False) -> dict[str, dict[str, float]]:
    """Measure and return the rows (seal with 3 recipients, open), each with its baseline."""
    count, rounds = (50, 1) if smoke else (2000, 5)
    vault, agent = EncryptionKey.generate(), EncryptionKey.generate()
    visitor = PartyKeys.generate()
    recipients = [vault.public_bytes, agent.public_bytes, visitor.encryption.public_bytes]
    signer = nacl.signing.SigningKey.generate()
    header = b'{"acct":"clinic","eng":"eng-00000001"}'  # stands in for the AD bytes

    def lib_seal() -> bytes:
        return seal(BODY, sender=visitor, role="visitor", account="clinic",
                    engagement="eng-00000001", sequence=1, kind="message",
                    recipients=recipients)

    def raw_seal() -> bytes:
        key = nacl.utils.random(32)
        sealed = b"".join(nb.crypto_box_seal(key, pk) for pk in recipients)
        nonce = nacl.utils.random(24)
        ct = nb.crypto_aead_xchacha20poly1305_ietf_encrypt(BODY, header, nonce, key)
        signed = header + sealed + nonce + ct
        return signed + signer.sign(signed).signature

    envelope = lib_seal()
    raw_env = raw_seal()
    verify_key = signer.verify_key
    raw_key_at = len(header)
    raw_body_at = raw_key_at + 3 * 80

    def lib_open() -> bytes:
        return open_envelope(envelope, vault).body

    def raw_open() -> bytes:
        verify_key.verify(raw_env[:-64], raw_env[-64:])
        key = nb.crypto_box_seal_open(raw_env[raw_key_at:raw_key_at + 80], vault.public_bytes,
                                      vault.secret)
        return nb.crypto_aead_xchacha20poly1305_ietf_decrypt(
            raw_env[raw_body_at + 24:-64], header, raw_env[raw_body_at:raw_body_at + 24], key)

    raw_open()  # the baseline must itself be correct
    rows: dict[str, dict[str, float]] = {}
    for name, lib, raw in (("seal_1KiB_3_recipients", lib_seal, raw_seal),
                           ("open_1KiB", lib_open, raw_open)):
        lib_rate, raw_rate = _best_interleaved(lib, raw, count, rounds)
        rows[name] = {"ops_per_s": round(lib_rate, 1), "baseline_ops_per_s": round(raw_rate, 1),
                      "ratio": round(lib_rate / raw_rate, 3)}
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table; optionally write it as JSON."""
    parser = argparse.ArgumentParser(description="envelope seal/open vs raw pynacl")
    parser.add_argument("--smoke", action="store_true", help="tiny counts (CI)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = run_bench(smoke=args.smoke)
    print(f"{'row':<26}{'ops/s':>12}{'raw pynacl ops/s':>20}{'ratio':>8}")
    for name, row in rows.items():
        print(f"{name:<26}{row['ops_per_s']:>12.0f}{row['baseline_ops_per_s']:>20.0f}"
              f"{row['ratio']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
