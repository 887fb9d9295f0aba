"""The subject-access export bundle: streamed, schema-valid, complete, nobody else's data."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import jsonschema
import pytest

from controller_vault.staff.errors import ExportError, ExportNameError
from controller_vault.staff.export import (
    ExportHeader,
    content_disposition,
    export_filename,
    stream_bundle,
)
from envelope import IdentityKey

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "export-bundle.schema.json").read_text())
NOW = 1_700_000_000
BLIND = "ab" * 32
OTHER_BLIND = "cd" * 32
FINGERPRINT = IdentityKey.generate().fingerprint


def _header(**kw: Any) -> ExportHeader:
    values: dict[str, Any] = {"account": "clinic", "identity_fingerprint": FINGERPRINT,
                              "identifier_kind": "email", "blind_index": BLIND, "now": NOW}
    values.update(kw)
    return ExportHeader.new(**values)


def _engagement(n: int, *, account: str = "clinic", blind: str = BLIND) -> dict[str, Any]:
    canary = f"canary-subject-{n}"
    return {
        "engagement_id": f"eng-{n:08d}", "account": account, "started_at": NOW - 1000 * n,
        "ended_at": None if n == 3 else NOW - 1000 * n + 600, "complete": n != 3,
        "subject_blind_indexes": [blind],
        "messages": [{"seq": 1, "role": "visitor", "ts": NOW - 1000 * n + 1,
                      "text": f"{canary} hello"},
                     {"seq": 1, "role": "agent", "ts": NOW - 1000 * n + 2, "text": "hi",
                      "sender": "agent-7"}],
        "prechat": [{"ts": NOW - 1000 * n, "name": canary, "email": "s@example.org",
                     "answers": {"reason": "refill"}}],
        "consent": [{"ts": NOW - 1000 * n, "text_version": "v3", "answer": "granted"}],
        "surveys": [{"ts": NOW - 1000 * n + 700, "answers": {"score": "5"}}] if n == 1 else [],
        "connection_info": [{"ts": NOW - 1000 * n, "ip": "192.0.2.7",
                             "visitor_id": f"vid-{n}"}],
    }


async def _aiter(items: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


async def _collect(header: ExportHeader, engs: Iterable[dict[str, Any]]) -> list[bytes]:
    return [chunk async for chunk in stream_bundle(header, _aiter(engs))]


def test_schema_is_valid_and_documents_every_property() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                for name, sub in node["properties"].items():
                    assert "description" in sub, f"{path}.{name} has no description"
                assert node.get("additionalProperties") is False, path
            for key, sub in node.items():
                walk(sub, f"{path}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(SCHEMA, "$")


async def test_three_engagements_exported_completely_and_valid() -> None:
    header = _header()
    progress: list[int] = []
    chunks = [c async for c in stream_bundle(header, _aiter(_engagement(n) for n in (1, 2, 3)),
                                             on_engagement=progress.append)]
    assert len(chunks) == 5 and progress == [1, 2, 3]
    bundle = json.loads(b"".join(chunks))
    jsonschema.validate(bundle, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert [e["engagement_id"] for e in bundle["engagements"]] == [
        "eng-00000001", "eng-00000002", "eng-00000003"]
    assert bundle["summary"] == {"engagements": 3, "messages": 6, "prechat": 3, "consent": 3,
                                 "surveys": 1, "connection_info": 3}
    assert bundle["vault"] == {"account": "clinic", "identity_fingerprint": FINGERPRINT}
    assert bundle["generated_at"] == "2023-11-14T22:13:20Z"
    assert bundle["engagements"][2]["complete"] is False
    text = b"".join(chunks).decode()
    for n in (1, 2, 3):
        assert f"canary-subject-{n}" in text
    # The store's tag is checked and then dropped: it is not part of the format.
    assert "subject_blind_indexes" not in text
    # The identifier is not repeated in clear in the header.
    head = json.loads(chunks[0][:-len(b',"engagements":[')] + b"}")
    assert "s@example.org" not in json.dumps(head)


async def test_empty_export_is_valid() -> None:
    bundle = json.loads(b"".join(await _collect(_header(), [])))
    jsonschema.validate(bundle, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert bundle["engagements"] == [] and bundle["summary"]["engagements"] == 0


@pytest.mark.parametrize(("bad", "code"), [
    (_engagement(9, account="other-clinic"), "export.foreign_engagement"),
    (_engagement(9, blind=OTHER_BLIND), "export.foreign_engagement"),
    ({**_engagement(9), "data_key": "00"}, "export.bad_engagement"),
    ({**_engagement(9), "messages": [{"seq": 1, "role": "visitor", "ts": 1, "text": "x",
                                      "raw_envelope": "AA"}]}, "export.bad_engagement"),
    ({**_engagement(9), "consent": [{"ts": 1, "text_version": "v", "answer": "maybe"}]},
     "export.bad_engagement"),
    ({**_engagement(9), "engagement_id": "../../x"}, "export.bad_engagement"),
    (_engagement(1), "export.duplicate_engagement"),
])
async def test_writer_refuses_what_must_not_be_exported(bad: dict[str, Any], code: str) -> None:
    with pytest.raises(ExportError) as err:
        await _collect(_header(), [_engagement(1), bad])
    assert err.value.code == code
    assert "canary" not in err.value.message


def test_schema_rejects_extra_fields() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    bundle: dict[str, Any] = {
        "format": "compliance-relay.subject-export", "version": 1, "export_id": "a" * 32,
        "generated_at": "2023-11-14T22:13:20Z", "generated_at_unix": NOW,
        "vault": {"account": "clinic", "identity_fingerprint": FINGERPRINT},
        "subject": {"identifier_kind": "email", "blind_index": BLIND},
        "engagements": [], "summary": {k: 0 for k in ("engagements", "messages", "prechat",
                                                      "consent", "surveys", "connection_info")}}
    assert validator.is_valid(bundle)
    bundle["subject"]["email"] = "someone@example.org"
    assert not validator.is_valid(bundle)


def test_default_filename() -> None:
    assert export_filename(None, account="clinic", export_id="0123456789abcdef" * 2,
                           generated_at=NOW) == \
        "subject-export-clinic-20231114T221320Z-0123456789ab.json"


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "..", "a..json", "/etc/cron.d/x", "reports/x.json", "C:\\x.json",
    "C:x.json", "x\x00.json", ".hidden.json", "x" * 129, "x" * 124, "", "nul.json", "CON",
    "lpt1", "name with space.json", "ü.json", "x.json\n",
])
def test_filename_path_tricks_are_refused(name: str) -> None:
    with pytest.raises(ExportNameError) as err:
        export_filename(name, account="clinic", export_id="a" * 32, generated_at=NOW)
    assert (err.value.code, err.value.status) == ("export.bad_filename", 400)


@pytest.mark.parametrize(("name", "expected"), [
    ("sar-2024-17.json", "sar-2024-17.json"), ("sar_17", "sar_17.json"),
    ("x" * 123, "x" * 123 + ".json"),
])
def test_harmless_filenames_are_kept(name: str, expected: str) -> None:
    got = export_filename(name, account="clinic", export_id="a" * 32, generated_at=NOW)
    assert got == expected
    assert content_disposition(got) == f'attachment; filename="{expected}"'


def test_bad_header_is_refused() -> None:
    with pytest.raises(ExportError) as err:
        _header(identifier_kind="name")
    assert err.value.code == "export.bad_header"


@pytest.mark.timeout(30)
async def test_bundle_streams_as_a_download(aiohttp_client: Any) -> None:
    from aiohttp import web

    header = _header()
    name = export_filename(None, account="clinic", export_id=header.export_id,
                           generated_at=NOW)

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Content-Disposition": content_disposition(name)})
        await resp.prepare(request)
        async for chunk in stream_bundle(header, _aiter(_engagement(n) for n in (1, 2, 3))):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/subjects/export", download)
    client = await aiohttp_client(app)
    resp = await client.get("/v1/subjects/export")
    assert resp.status == 200
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    bundle = json.loads(await resp.read())
    jsonschema.validate(bundle, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert bundle["summary"]["engagements"] == 3
