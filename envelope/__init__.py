"""envelope: the pure crypto and wire-format library the relay, the vault and clients share.

No I/O lives here (no asyncio, aiohttp, sqlite or sockets): values in, values out.

>>> from envelope import EncryptionKey, PartyKeys, seal, open_envelope, check_shape
>>> vault, visitor = EncryptionKey.generate(), PartyKeys.generate()
>>> data = seal(b"hi", sender=visitor, role="visitor", account="clinic",
...             engagement="eng-00000001", sequence=1, kind="message",
...             recipients=[vault.public_bytes])
>>> check_shape(data, account="clinic", vault_key_id=vault.key_id).sequence
1
>>> open_envelope(data, vault).body
b'hi'
"""

from ._codec import b64d, b64e, canonical_json
from .bodies import SUBJECT_FIELDS, decode_body, encode_body
from .errors import (
    BindingError,
    DecryptionError,
    EnvelopeError,
    HeaderFieldError,
    LimitExceeded,
    LinkAuthError,
    MalformedError,
    ReceiptError,
    RecipientError,
    StatementError,
    UnsupportedVersion,
)
from .keys import EncryptionKey, IdentityKey, PartyKeys, fingerprint, key_id
from .link import (
    CLOSE_CODES,
    ErasureNotice,
    decode_outbox_batch,
    decode_outbox_frame,
    encode_outbox_batches,
    encode_outbox_frame,
    link_auth_response,
    link_features,
    sign_erasure_notice,
    verify_erasure_notice,
    verify_link_auth,
)
from .receipts import (
    ReceiptItem,
    receipt_hash,
    sign_receipt,
    verify_receipt,
    verify_receipt_with_hash,
)
from .sealing import (
    KINDS,
    ROLES,
    EnvelopeHeader,
    OpenedEnvelope,
    ParsedEnvelope,
    check_shape,
    envelope_hash,
    new_envelope_id,
    open_envelope,
    parse_envelope,
    seal,
)
from .statements import (
    AgentCertificate,
    VaultKeyStatement,
    sign_agent_certificate,
    sign_vault_key_statement,
    verify_agent_certificate,
    verify_vault_key_statement,
)

__all__ = [
    "CLOSE_CODES",
    "KINDS",
    "ROLES",
    "SUBJECT_FIELDS",
    "AgentCertificate",
    "BindingError",
    "DecryptionError",
    "EncryptionKey",
    "EnvelopeError",
    "EnvelopeHeader",
    "ErasureNotice",
    "HeaderFieldError",
    "IdentityKey",
    "LimitExceeded",
    "LinkAuthError",
    "MalformedError",
    "OpenedEnvelope",
    "ParsedEnvelope",
    "PartyKeys",
    "ReceiptError",
    "ReceiptItem",
    "RecipientError",
    "StatementError",
    "UnsupportedVersion",
    "VaultKeyStatement",
    "b64d",
    "b64e",
    "canonical_json",
    "check_shape",
    "decode_body",
    "decode_outbox_batch",
    "decode_outbox_frame",
    "encode_body",
    "encode_outbox_batches",
    "encode_outbox_frame",
    "envelope_hash",
    "fingerprint",
    "key_id",
    "link_auth_response",
    "link_features",
    "new_envelope_id",
    "open_envelope",
    "parse_envelope",
    "receipt_hash",
    "seal",
    "sign_agent_certificate",
    "sign_erasure_notice",
    "sign_receipt",
    "sign_vault_key_statement",
    "verify_agent_certificate",
    "verify_erasure_notice",
    "verify_link_auth",
    "verify_receipt",
    "verify_receipt_with_hash",
    "verify_vault_key_statement",
]
