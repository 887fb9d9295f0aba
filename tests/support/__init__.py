"""Shared test support: canary scanning and real-process service control."""
