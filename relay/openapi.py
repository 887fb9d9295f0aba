"""The relay's OpenAPI 3 document, written as data (a test fails when a route is missing)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERR = {"description": "error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _op(summary: str, auth: str, ok: str = "200", body: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary,
                          "responses": {ok: {"description": "success"}, "4XX": _ERR}}
    if auth != "none":
        op["security"] = [{"bearer": []}]
        op["description"] = f"Bearer token: {auth}."
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"type": "object", "properties": body}}}}
    return op


def _keys_op() -> dict[str, Any]:
    op = _op("Public keys: identity, key statement, agent certificates, relay signing key",
             "none")
    op["responses"]["200"]["content"] = {"application/json": {"schema": {
        "type": "object", "properties": {
            "account": {"type": "string"}, "mode": {"type": "string"},
            "identity_key": {"type": "string", "nullable": True,
                             "description": "b64url Ed25519 controller identity key"},
            "key_statement": {"type": "object", "nullable": True},
            "agent_certificates": {"type": "array", "items": {"type": "object"}},
            "relay_signing_key": {"type": "string", "description":
                                  "b64url(32) Ed25519 public key the relay signs"
                                  " connection-info and offload envelopes with; the vault"
                                  " pins it"}}}}}
    return op


_ACCOUNT = [{"name": "account", "in": "path", "required": True, "schema": {"type": "string"}}]
_ENG = [*_ACCOUNT, {"name": "engagement", "in": "path", "required": True,
                    "schema": {"type": "string"}}]
_SIGNED = {"type": "object", "properties": {"body": {"type": "string"},
                                            "sig": {"type": "string"}}}

PATHS: dict[str, dict[str, Any]] = {
    "/v1/accounts": {"post": _op("Create an account", "operator", "201", {
        "account": {"type": "string"}, "origins": {"type": "array"},
        "mode": {"type": "string"}, "retention_days": {"type": "integer"}})},
    "/v1/accounts/{account}": {"get": _op("Account configuration", "account admin"),
                               "parameters": _ACCOUNT},
    "/v1/accounts/{account}/admin-tokens": {
        "post": _op("Issue an account-admin token", "operator", "201"),
        "parameters": _ACCOUNT},
    "/v1/accounts/{account}/vault": {
        "put": _op("Pair the vault (identity key + verified key statement)", "account admin",
                   body={"identity_key": {"type": "string"}, "key_statement": _SIGNED}),
        "parameters": _ACCOUNT},
    "/v1/accounts/{account}/agent-certificates": {
        "post": _op("Upload an agent certificate", "account admin", "201",
                    {"certificate": _SIGNED}), "parameters": _ACCOUNT},
    "/v1/accounts/{account}/agent-certificates/{key_id}": {
        "delete": _op("Revoke an agent certificate; that agent's live sockets close with"
                      " certificate.revoked (4403)", "account admin"),
        "parameters": [*_ACCOUNT, {"name": "key_id", "in": "path", "required": True,
                                   "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"}}]},
    "/v1/accounts/{account}/agent-tokens": {
        "post": _op("Issue an agent device token", "account admin", "201",
                    {"agent": {"type": "string"}}), "parameters": _ACCOUNT},
    "/v1/accounts/{account}/keys": {
        "get": _keys_op(),
        "parameters": _ACCOUNT},
    "/v1/accounts/{account}/mode": {
        "put": _op("Toggle compliance mode", "account admin", body={
            "mode": {"type": "string", "enum": ["compliance", "standard"]},
            "confirm": {"type": "boolean"}}), "parameters": _ACCOUNT},
    "/v1/accounts/{account}/mode-changes": {
        "get": _op("Recorded mode changes", "account admin"), "parameters": _ACCOUNT},
    "/v1/accounts/{account}/record-of-processing": {
        "get": _op("GDPR Art. 30 record of processing", "account admin"),
        "parameters": _ACCOUNT},
    "/v1/accounts/{account}/engagements": {
        "get": _op("Engagement records (JSON, or ?format=csv)", "account admin"),
        "parameters": _ACCOUNT},
    "/v1/accounts/{account}/engagements/{engagement}/transcript": {
        "get": _op("A standard-mode transcript (409 mode.compliance in compliance mode)",
                   "account admin"),
        "delete": _op("Delete a standard-mode transcript (409 mode.compliance in"
                      " compliance mode)", "account admin"),
        "parameters": _ENG},
    "/v1/accounts/{account}/transcripts": {
        "delete": _op("Delete every standard-mode transcript (409 mode.compliance"
                      " in compliance mode)", "account admin"),
        "parameters": _ACCOUNT},
    "/v1/accounts/{account}/data-keys/rotate": {
        "post": _op("Rotate the transcript data key (409 mode.compliance in compliance"
                    " mode)", "account admin", "201"),
        "parameters": _ACCOUNT},
    "/v1/accounts/{account}/outbox": {
        "get": _op("Outbox backlog for the vault", "account admin"), "parameters": _ACCOUNT},
    "/v1/chat/visitor/{account}": {
        "get": _op("Visitor chat websocket (see relay/protocol.py)", "none", "101"),
        "parameters": _ACCOUNT},
    "/v1/chat/agent": {"get": _op("Agent chat websocket (see relay/protocol.py)",
                                  "agent token", "101")},
    "/v1/vault/link": {"get": _op("Vault link websocket (see envelope/link.py): challenge,"
                                  " identity-key auth, outbox stream, receipts", "none",
                                  "101")},
    "/v1/accounts/{account}/offload": {
        "get": _op("Compliance-toggle offload progress", "account admin"),
        "parameters": _ACCOUNT},
    "/v1/openapi.json": {"get": _op("This document", "none")},
    "/metrics": {"get": _op("Prometheus metrics", "none")},
    "/healthz": {"get": _op("Liveness", "none")},
    "/readyz": {"get": _op("Readiness (store open)", "none")},
}


def openapi_document(origin: str) -> dict[str, Any]:
    """The OpenAPI 3 document for a relay reachable at ``origin``."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "Compliance Relay", "version": "1"},
        "servers": [{"url": origin}],
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {
                "type": "object", "properties": {"code": {"type": "string"},
                                                 "message": {"type": "string"}}}}}},
        },
    }
