"""Size limits and fixed patterns of envelope v1, as named constants.

Anything larger or outside these patterns is refused before any crypto runs, so a
hostile peer cannot make either side allocate or compute much for garbage.
"""

from __future__ import annotations

import re

__all__ = [
    "ACCOUNT_PATTERN",
    "AGENT_PATTERN",
    "ENGAGEMENT_PATTERN",
    "ENVELOPE_ID_PATTERN",
    "KEY_ID_PATTERN",
    "MAX_BATCH_ENTRIES",
    "MAX_BATCH_FRAME_BYTES",
    "MAX_BODY_BYTES",
    "MAX_ENVELOPE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_RECEIPT_ITEMS",
    "MAX_RECIPIENTS",
    "MAX_SEQUENCE",
    "MAX_STATEMENT_BYTES",
    "NONCE_BYTES",
    "PAD_BUCKETS",
    "SEALED_KEY_BYTES",
    "SIGNATURE_BYTES",
    "TAG_BYTES",
    "VERSION",
]

VERSION = 1

#: Body sizes after padding. Ciphertext length reveals only the bucket.
PAD_BUCKETS: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
#: Largest plaintext body (one byte of the largest bucket is the padding marker).
MAX_BODY_BYTES = PAD_BUCKETS[-1] - 1
MAX_HEADER_BYTES = 1536
MAX_RECIPIENTS = 12
MAX_SEQUENCE = 2**31 - 1
MAX_RECEIPT_ITEMS = 1024
MAX_STATEMENT_BYTES = 2048

SEALED_KEY_BYTES = 80  # crypto_box_seal of a 32-byte key: 32 ephemeral pk + 16 MAC + 32
NONCE_BYTES = 24  # XChaCha20-Poly1305
TAG_BYTES = 16
SIGNATURE_BYTES = 64  # Ed25519

MAX_ENVELOPE_BYTES = (
    3 + MAX_HEADER_BYTES + MAX_RECIPIENTS * SEALED_KEY_BYTES + NONCE_BYTES
    + PAD_BUCKETS[-1] + TAG_BYTES + SIGNATURE_BYTES
)

#: A batched vault-link frame (envelope/link.py OUTBOX BATCH): most entries, most bytes.
#: The vault accepts frames this large; a largest envelope always fits in one.
MAX_BATCH_ENTRIES = 1024
MAX_BATCH_FRAME_BYTES = 1 << 20

# Fixed patterns: no header field can carry free text, so plaintext cannot be put
# into a compliance-mode frame at all (it would not match).
ACCOUNT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ENGAGEMENT_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
ENVELOPE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{24}")
AGENT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
