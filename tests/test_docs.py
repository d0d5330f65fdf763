"""The docs state today's defaults: docs/cli.md's table of the defaults that differ between
replay / serve and the river classifier is checked against the parsers and the class; every
docstring example of the package runs."""

import ast
import doctest
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import streamfusion
from streamfusion.cli import build_parser
from streamfusion.river import ResFusionClassifier

DOCS = Path(__file__).resolve().parents[1] / "docs"


def table_rows():
    rows = []
    for line in (DOCS / "cli.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`--") and "=" in cells[3]:
            rows.append(cells)
    return rows


def parser_default(command, flag):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    action = next(a for a in sub._actions if flag in a.option_strings)
    return action.default


def test_the_table_has_the_rows_it_should():
    assert len(table_rows()) >= 10


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: r[1])
def test_each_documented_default_is_the_code_s(row):
    _, flag, cli_default, river = row
    flag = flag.strip("`")
    token = cli_default.replace("`", "").split()[0]
    for command in ("replay", "serve"):
        default = parser_default(command, flag)
        if isinstance(default, (int, float)):
            assert float(token.replace(",", "")) == default, (command, flag)
        else:
            assert token == str(default), (command, flag)
    name, value = re.fullmatch(r"`(\w+)=(.+)`", river).groups()
    param = inspect.signature(ResFusionClassifier.__init__).parameters[name]
    assert ast.literal_eval(value) == param.default, name


MODULES = [m.name for m in pkgutil.walk_packages(streamfusion.__path__, "streamfusion.")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
