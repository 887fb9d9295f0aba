"""relay: the hosted processor that routes chat and keeps no personal data."""
