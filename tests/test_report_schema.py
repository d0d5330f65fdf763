"""The documented report: docs/report.schema.json accepts a real report, refuses a wrong one,
and docs/report.md names every field the schema has."""

import copy
import json
import re

import jsonschema
import pytest
from report_schema import SCHEMA, SCHEMA_PATH, check_report

from streamfusion.cli import main
from streamfusion.data.generate import generate

SMALL = ["--trees", "10", "--leaves", "7", "--refit-every", "1500", "--first-fit", "1000",
         "--window", "4000", "--hidden", "16", "--bits", "14", "--quiet", "--batch-size", "256"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("schema")
    generate(d / "g.csv", format="avazu", rows=5000, seed=6)
    assert main(["replay", "--file", str(d / "g.csv"), *SMALL, "--report",
                 str(d / "r.json")]) == 0  # the autouse fixture checks it as it is written
    return json.loads((d / "r.json").read_text())


def broken(report, path, value=None, delete=False):
    r = copy.deepcopy(report)
    *parents, last = path
    node = r
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return r


@pytest.mark.parametrize("path,value,delete", [
    (["windowing"], None, True),
    (["holdout", "mode"], "future", False),
    (["progressive", "auc"], "NaN", False),
    (["windows", 0, "auc"], 1.5, False),
    (["model", "stages"], [], False),
    (["refit_windows", 0, "when"], 3, False),
    (["rows"], -1, False),
    (["surprise"], 1, False),
])
def test_the_schema_refuses_a_wrong_report(report, path, value, delete):
    check_report(report)
    with pytest.raises(jsonschema.ValidationError):
        check_report(broken(report, path, value, delete))


def test_undefined_metrics_are_null_in_the_schema(report):
    check_report(broken(report, ["holdout", "auc"], None))


def schema_fields(schema, node=None):
    node = SCHEMA if node is None else node
    names = set()
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            names.add(key)
            names |= schema_fields(schema, sub)
        for key in ("items", "$defs"):
            if key in node:
                subs = node[key].values() if key == "$defs" else [node[key]]
                for sub in subs:
                    names |= schema_fields(schema, sub)
        for sub in node.get("allOf", []):
            names |= schema_fields(schema, sub)
    return names


def test_the_page_documents_every_field_of_the_schema():
    page = (SCHEMA_PATH.parent / "report.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)`", page))
    # config's knobs are the model flags, documented by `replay --help`
    knobs = set(SCHEMA["properties"]["model"]["properties"]["config"]["properties"])
    missing = schema_fields(SCHEMA) - documented - knobs
    assert not missing, f"docs/report.md does not describe {sorted(missing)}"
