"""The replay report's JSON Schema (docs/report.schema.json), for the tests that write reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
jsonschema.Draft202012Validator.check_schema(SCHEMA)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def check_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` (the most specific error) unless ``report``, as read
    back from its JSON file, follows the schema."""
    # the deepest error names the field itself, not the object that holds it
    e = max(VALIDATOR.iter_errors(report), key=lambda e: len(e.absolute_path), default=None)
    if e is not None:
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        raise jsonschema.ValidationError(f"report field {where}: {e.message}")
