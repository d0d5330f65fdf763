"""The input flags of every command that reads or types a click log (replay, reproduce,
produce, and serve with --sample).

One list, so the commands accept the same formats, typing overrides and error handling with
the same names, defaults and help: :func:`add_input_arguments` attaches them and
:func:`source_options` turns the parsed flags into :func:`streamfusion.data.open_source`
keyword arguments.
"""

from __future__ import annotations

import argparse
from typing import Any

from streamfusion import argtypes as at
from streamfusion.data.schema import (
    DEFAULT_MAX_FEATURES,
    DEFAULT_SAMPLE_ROWS,
    DELIMITERS,
    DENSE_AUTO_MAX,
    FORMATS,
    LABEL_NAMES,
    SNIFF_LINES,
    TIME_WORDS,
)

# the flags' destinations, which are open_source's keyword names too
SOURCE_OPTIONS = ("format", "label", "delimiter", "types", "on_error", "max_features",
                  "dense_features")


def add_input_arguments(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Attach ``--format``, ``--label``, ``--delimiter``, ``--types``, ``--on-error``,
    ``--max-features`` and ``--dense-features`` to a parser or an argument group."""
    group.add_argument(
        "--format", default="auto", choices=FORMATS,
        help="input format (default: auto, Avazu, Criteo, libsvm = libfm 'label idx:val' or "
        "libffm 'label field:idx:val' from the first lines, or a csv whose label column is "
        "named as labels are; other files: csv with --label)")
    group.add_argument(
        "--label", help="label column of a generic CSV (default: the one column of 0/1 or "
        f"true/false values named {', '.join(LABEL_NAMES)}, any case)")
    group.add_argument(
        "--delimiter", type=at.delimiter, default=None, metavar="CHAR",
        help="separator of a generic CSV: one character, or tab (default: the first of "
        f"{' '.join(repr(d) for d in DELIMITERS)} that splits the header and nearly all "
        f"of the {SNIFF_LINES} lines after it alike)")
    group.add_argument(
        "--types", type=at.column_types, metavar="COL=KIND,...",
        help="column kinds (num, cat, time or skip) overriding the inferred ones, e.g. "
        f"zip=cat,score=num. A CSV's kinds are inferred from a sample of "
        f"{DEFAULT_SAMPLE_ROWS:,} rows, the first half and the rest spread over the file: "
        "timestamps (ISO 8601 date and time, or Unix seconds or milliseconds in a column whose "
        f"name has one of the words {', '.join(sorted(TIME_WORDS))}, or a word ending in "
        "time, and is not an id's) give their hour of day and weekday; integer "
        "columns named *id or *hash*, or whose values look like ids (many distinct, 5+ digits "
        "or evenly spread), are categorical; a numeric column's rare words (unknown, ?) are "
        "missing values, counted in the report's unparsed_numbers")
    group.add_argument(
        "--on-error", choices=["fail", "skip"], default="fail",
        help="malformed rows: stop with file/line/reason (default), or skip and count them")
    group.add_argument(
        "--max-features", type=at.positive_int, default=DEFAULT_MAX_FEATURES, metavar="N",
        help=f"libsvm / libfm / libffm: most features in a row, the learner's slots "
        f"(default {DEFAULT_MAX_FEATURES})")
    group.add_argument(
        "--dense-features", type=at.nonneg_int, default=None, metavar="N",
        help="libsvm / libfm / libffm: the trees' columns are the feature ids 0..N-1 (0: none, "
        "the trees keep the click prior). Default: chosen from a sample of rows spread over the "
        f"file, every feature id seen there, or the {DENSE_AUTO_MAX} most frequent if there "
        "are more")


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`~streamfusion.data.open_source` keyword arguments the input flags set."""
    return {name: getattr(args, name) for name in SOURCE_OPTIONS}
