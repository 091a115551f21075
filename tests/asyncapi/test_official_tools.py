"""Generated documents against the official AsyncAPI tools: the AsyncAPI 3.0.0 JSON Schema
(``@asyncapi/specs``) and the parser with its rules (``@asyncapi/parser``), run with Node."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dispytch.asyncapi import asyncapi, dump_yaml
from tests.asyncapi.everything import build
from tests.asyncapi.test_document import URLS
from tests.asyncapi.tools import ROOT, check_documents


def _example_apps() -> dict[str, object]:
    examples = str(ROOT / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    import demo
    import fastapi_service

    return {"demo": demo.app, "fastapi_service": fastapi_service.events}


def _write(tmp_path: Path, name: str, document: dict) -> list[Path]:
    as_json = tmp_path / f"{name}.json"
    as_json.write_text(json.dumps(document))
    as_yaml = tmp_path / f"{name}.yaml"
    as_yaml.write_text(dump_yaml(document))
    return [as_json, as_yaml]


def test_every_backend_and_example_passes_the_official_schema_and_parser(tmp_path: Path) -> None:
    files: list[Path] = []
    for backend, url in URLS.items():
        files += _write(tmp_path, f"everything-{backend}", asyncapi(build(url)))
    for name, app in _example_apps().items():
        files += _write(tmp_path, f"example-{name}", asyncapi(app))  # type: ignore[arg-type]
    reports = check_documents(files)
    assert [r["file"] for r in reports] == [str(f) for f in files]
    for report in reports:
        problems = [d for d in report["diagnostics"] if d["severity"] in ("error", "warning")]
        assert report["parsed"], report
        assert problems == [], report["file"]
        if report["file"].endswith(".json"):
            assert report["schemaErrors"] == [], report["file"]
    everything = next(r for r in reports if r["file"].endswith("everything-kafka.json"))
    assert "shop:{shop_id}:orders" in everything["channels"]
    assert "receive on_charge" in everything["operations"]
    assert "send emit_OrderPlaced" in everything["operations"]


def test_the_official_tools_catch_a_broken_document(tmp_path: Path) -> None:
    """The check can fail: an OpenAPI-style discriminator (pydantic's own) and an operation
    whose message is not on its channel are what a careless generator would write."""
    doc = asyncapi(build(URLS["kafka"]))
    doc["components"]["schemas"]["OrderPlaced"]["properties"]["payment"]["discriminator"] = {
        "propertyName": "kind"
    }
    doc["operations"]["on_charge"]["messages"] = [
        {"$ref": "#/channels/users/messages/user_registered"}
    ]
    (report,) = check_documents(_write(tmp_path, "broken", doc)[:1])
    assert any("discriminator" in e for e in report["schemaErrors"]), report["schemaErrors"]
    codes = {d["code"] for d in report["diagnostics"] if d["severity"] == "error"}
    assert "asyncapi3-operation-messages-from-referred-channel" in codes, report["diagnostics"]
