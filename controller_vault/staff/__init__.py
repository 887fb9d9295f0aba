"""controller_vault.staff: the vault's staff side as self-contained parts.

Redaction at ingest, staff tokens and scope checks, retention rules, transcript
rendering and email, anomaly alerts, and the subject-access export bundle. None of
these modules touches the vault's store; README-integration.md says how to wire them.
"""

__all__: list[str] = []
