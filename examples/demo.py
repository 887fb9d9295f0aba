"""Demo: an envelope round trip (replaced by the full relay + vault demo in the end-to-end work)."""

from __future__ import annotations

from envelope import EncryptionKey, IdentityKey, PartyKeys, check_shape, open_envelope, seal


def main() -> None:
    """Seal a message to a vault and an agent, check it as the relay would, open it."""
    identity, vault, agent, visitor = (IdentityKey.generate(), EncryptionKey.generate(),
                                       PartyKeys.generate(), PartyKeys.generate())
    print(f"controller identity fingerprint: {identity.fingerprint}")
    data = seal(b"Hello, I would like an appointment", sender=visitor, role="visitor",
                account="demo-clinic", engagement="eng-demo-0001", sequence=1, kind="message",
                recipients=[vault.public_bytes, agent.encryption.public_bytes])
    header = check_shape(data, account="demo-clinic", vault_key_id=vault.key_id)
    print(f"relay sees: kind={header.kind} seq={header.sequence} bytes={len(data)}")
    print(f"vault opens: {open_envelope(data, vault).body.decode()}")
    print(f"agent opens: {open_envelope(data, agent.encryption).body.decode()}")


if __name__ == "__main__":
    main()
