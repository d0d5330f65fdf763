"""Schemas: what each input column becomes for the learner (fields) and the trees (dense).

A delimited schema is a tuple of :class:`Column`; the compiled form that the C pass reads is
built by :class:`streamfusion.data.encoder.Encoder`. libsvm / libfm have no columns: each row
fills up to ``max_features`` learner slots in order.

Learner fields (``field_names``, F of them) and tree features (``dense_names``, T) follow the
column order. Per column kind:

- ``num``:  one learner field (row = hash of the field alone, value = sign(x) * log1p(|x|),
  0 when missing) and one dense feature (x as is, 0 when missing).
- ``cat``:  one learner field (row = hash of the value with the field's salt, value 1.0; a
  missing value is the empty-string token) and, by ``dense``, one tree feature: ``"int"``
  (the value read as a number; 0 if missing or not a number), ``"count"`` (how often the value
  has been seen so far, this row included, from a fixed hashed count table, per million rows
  seen so far: a share, so that its meaning does not drift as the stream grows) or ``"none"``.
- ``hour``: Avazu YYMMDDHH: learner fields and dense features ``hour_of_day`` and ``weekday``
  (Monday = 0); the row's ``time`` is YYMMDDHH as an integer.
- ``label``: 0/1 click; ``skip``: ignored (ids).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from streamfusion import _parse

# column kinds, the same integers as parse_core.h
KINDS = {"skip": 0, "label": 1, "num": 2, "cat": 3, "hour": 4}
DENSE_MODES = {"none": 0, "int": 1, "count": 2}

AVAZU_COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
    "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)
# Avazu categoricals that are small integers: the trees get the integer itself
AVAZU_INT_COLUMNS = frozenset(
    ("C1", "banner_pos", "device_type", "device_conn_type")
    + tuple(f"C{i}" for i in range(14, 22))
)
CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))

# CSV type inference: a column whose non-empty values all parse as numbers is numeric only if
# it has at least this many distinct values in the sample (few distinct = codes, not amounts)
NUMERIC_MIN_DISTINCT = 16
DEFAULT_SAMPLE_ROWS = 1000
DEFAULT_MAX_FEATURES = 64
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    """One input column: ``kind`` in KINDS, ``dense`` in DENSE_MODES (categoricals only)."""

    name: str
    kind: str
    dense: str = "none"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: unknown kind {self.kind!r}")
        if self.dense not in DENSE_MODES:
            raise ValueError(f"column {self.name!r}: unknown dense mode {self.dense!r}")


@dataclass(frozen=True)
class Schema:
    """How one file format maps to learner fields and tree features.

    Parameters
    ----------
    name : str
        ``"avazu"``, ``"criteo"``, ``"csv"``, ``"libsvm"`` or ``"libfm"``.
    columns : tuple of Column
        Input columns in file order (empty for libsvm / libfm).
    delimiter : str
        One-byte field separator.
    header : bool
        Whether the first line names the columns (and is skipped).
    max_features : int
        libsvm / libfm: learner slots per row (F); shorter rows are padded.
    dense_features : int
        libsvm / libfm: integer feature indices below this fill dense[idx] (T); default 0.

    Examples
    --------
    >>> s = avazu_schema()
    >>> len(s.field_names), len(s.dense_names), s.label
    (23, 23, 'click')
    """

    name: str
    columns: tuple[Column, ...] = ()
    delimiter: str = ","
    header: bool = False
    max_features: int = 0
    dense_features: int = 0
    field_names: tuple[str, ...] = field(init=False, compare=False)
    dense_names: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.delimiter.encode()) != 1:
            raise ValueError(f"delimiter must be one byte, got {self.delimiter!r}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("duplicate column names")
        if sum(c.kind == "label" for c in self.columns) > 1:
            raise ValueError("more than one label column")
        fields: list[str] = []
        dense: list[str] = []
        if self.is_svm:
            if self.max_features < 1:
                raise ValueError("libsvm / libfm need max_features >= 1")
            fields = [f"f{i}" for i in range(self.max_features)]
            dense = [f"x{i}" for i in range(self.dense_features)]
        for c in self.columns:
            if c.kind == "hour":
                fields += ["hour_of_day", "weekday"]
                dense += ["hour_of_day", "weekday"]
            elif c.kind == "num":
                fields.append(c.name)
                dense.append(c.name)
            elif c.kind == "cat":
                fields.append(c.name)
                if c.dense != "none":
                    dense.append(c.name)
        if not fields:
            raise ValueError("schema has no learner fields")
        object.__setattr__(self, "field_names", tuple(fields))
        object.__setattr__(self, "dense_names", tuple(dense))

    @property
    def is_svm(self) -> bool:
        return self.name in ("libsvm", "libfm")

    @property
    def label(self) -> str | None:
        """Name of the label column (None when the file carries no label)."""
        return next((c.name for c in self.columns if c.kind == "label"), "label" if self.is_svm
                    else None)

    @property
    def has_header(self) -> bool:
        """Alias of ``header`` (the first line names the columns)."""
        return self.header

    @property
    def has_time(self) -> bool:
        return any(c.kind == "hour" for c in self.columns)

    def to_dict(self) -> dict:
        """JSON-serialisable description (for checkpoints)."""
        return {
            "version": SCHEMA_VERSION,
            "name": self.name,
            "columns": [asdict(c) for c in self.columns],
            "delimiter": self.delimiter,
            "header": self.header,
            "max_features": self.max_features,
            "dense_features": self.dense_features,
        }

    @staticmethod
    def from_dict(d: Mapping) -> Schema:
        """Inverse of :meth:`to_dict`; raises ValueError on a foreign version."""
        if d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"schema version {d.get('version')!r}, expected {SCHEMA_VERSION}")
        return Schema(
            name=d["name"],
            columns=tuple(Column(**c) for c in d["columns"]),
            delimiter=d["delimiter"],
            header=bool(d["header"]),
            max_features=int(d["max_features"]),
            dense_features=int(d["dense_features"]),
        )

    def with_types(self, types: Mapping[str, str] | None) -> Schema:
        """Override column kinds: ``{"col": "num" | "cat" | "skip"}``."""
        if not types:
            return self
        known = {c.name: c for c in self.columns}
        cols = []
        for name in types:
            if name not in known:
                raise ValueError(f"types: no column {name!r} in the {self.name} schema")
            if known[name].kind == "label":
                raise ValueError(f"types: {name!r} is the label column")
            if types[name] not in ("num", "cat", "skip"):
                raise ValueError(f"types[{name!r}] must be 'num', 'cat' or 'skip'")
        for c in self.columns:
            t = types.get(c.name)
            if t is None or t == c.kind:
                cols.append(c)
            elif t == "cat":
                cols.append(Column(c.name, "cat", "count"))
            else:
                cols.append(Column(c.name, t))
        return Schema(self.name, tuple(cols), self.delimiter, self.header,
                      self.max_features, self.dense_features)


def avazu_schema(header: bool = True) -> Schema:
    """Kaggle Avazu train.csv: F = T = 23 (id skipped; hour -> hour_of_day, weekday)."""
    cols = []
    for name in AVAZU_COLUMNS:
        if name == "id":
            cols.append(Column(name, "skip"))
        elif name == "click":
            cols.append(Column(name, "label"))
        elif name == "hour":
            cols.append(Column(name, "hour"))
        else:
            cols.append(Column(name, "cat", "int" if name in AVAZU_INT_COLUMNS else "count"))
    return Schema("avazu", tuple(cols), ",", header)


def criteo_schema(delimiter: str = "\t", header: bool = False, id_column: str | None = None,
                  label: str | None = "label") -> Schema:
    """Criteo (Kaggle dac): F = T = 39 (I1..I13 numeric, C1..C26 categorical as counts).

    ``train.txt`` is tab-separated without header; the csv variants have a header
    (``Id,Label,I1..`` or ``label,I1..``); ``label=None`` is the unlabelled test.txt.
    """
    cols = []
    if id_column:
        cols.append(Column(id_column, "skip"))
    if label:
        cols.append(Column(label, "label"))
    cols += [Column(n, "num") for n in CRITEO_NUMERIC]
    cols += [Column(n, "cat", "count") for n in CRITEO_CATEGORICAL]
    return Schema("criteo", tuple(cols), delimiter, header)


def libsvm_schema(max_features: int = DEFAULT_MAX_FEATURES, dense_features: int = 0,
                  libfm: bool = False) -> Schema:
    """libsvm ``label idx:val ...`` / libfm ``label field:idx:val ...``: F = max_features.

    Trees get ``dense[idx] = val`` for integer indices below ``dense_features`` (T), nothing
    else: with the default T = 0 the tree stage only contributes its prior.
    """
    return Schema("libfm" if libfm else "libsvm", (), " ", False, max_features, dense_features)


def infer_csv_schema(names: list[str], rows: Iterable[list[str]], label: str,
                     types: Mapping[str, str] | None = None, delimiter: str = ",") -> Schema:
    """A CSV schema from its header and a sample of rows (see module docstring).

    A column is numeric when every non-empty sampled value parses as a number and it has at
    least NUMERIC_MIN_DISTINCT distinct values; otherwise categorical (trees get the integer
    when every value is an integer, else the count). A column named ``id`` is skipped.
    """
    if label not in names:
        raise ValueError(f"label column {label!r} not in the header {names}")
    distinct: list[set[str]] = [set() for _ in names]
    numeric = [True] * len(names)
    integer = [True] * len(names)
    for row in rows:
        if len(row) != len(names):
            continue  # malformed: the parser reports it with its line number later
        for j, v in enumerate(row):
            if v == "" or (not numeric[j] and not integer[j] and len(distinct[j]) > 64):
                continue
            if len(distinct[j]) <= NUMERIC_MIN_DISTINCT:
                distinct[j].add(v)
            x = _parse.parse_number(v.encode())
            if x is None:
                numeric[j] = integer[j] = False
            elif not re.fullmatch(r"[+-]?\d+", v):
                integer[j] = False
    cols = []
    for j, name in enumerate(names):
        if name == label:
            cols.append(Column(name, "label"))
        elif name.lower() == "id":
            cols.append(Column(name, "skip"))
        elif numeric[j] and len(distinct[j]) >= NUMERIC_MIN_DISTINCT:
            cols.append(Column(name, "num"))
        else:
            cols.append(Column(name, "cat", "int" if integer[j] and distinct[j] else "count"))
    return Schema("csv", tuple(cols), delimiter, True).with_types(types)


def split_cells(line: str, delimiter: str) -> list[str]:
    """The cells of one line as the C tokenizer splits it: comma-separated lines may quote
    a cell (RFC 4180), other delimiters never quote."""
    if delimiter != "," or '"' not in line:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter, strict=True), [])


def _sample_cells(line: str, delimiter: str) -> list[str]:
    try:
        return split_cells(line, delimiter)
    except csv.Error:
        return []  # malformed: the parser reports it with its line number later


def _split_lines(head: bytes, complete: bool) -> list[bytes]:
    lines = head.split(b"\n")
    if not complete:
        lines = lines[:-1]  # the last one may be cut
    return [ln.rstrip(b"\r") for ln in lines if ln.strip()]


def detect_schema(head: bytes, complete: bool, format: str = "auto", label: str | None = None,
                  types: Mapping[str, str] | None = None, delimiter: str = ",",
                  max_features: int = DEFAULT_MAX_FEATURES, dense_features: int = 0,
                  sample_rows: int = DEFAULT_SAMPLE_ROWS) -> Schema:
    """Pick the schema of a file from its first bytes.

    ``format="auto"`` recognises Avazu (header names, or 24 comma fields with a 0/1 click and a
    YYMMDDHH hour), Criteo (40 or 39 tab-separated fields, or the Kaggle csv headers) and
    libsvm / libfm (``idx:val`` tokens); any other file needs ``format="csv"`` or a label.
    """
    lines = _split_lines(head, complete)
    if not lines:
        raise ValueError("no complete line in the first bytes")
    first = lines[0].decode("utf-8", "replace")
    fmt = format
    if fmt == "auto":
        fmt = _detect(first, label)
    if fmt == "avazu":
        cells = first.split(",")
        if tuple(cells) == AVAZU_COLUMNS:
            schema = avazu_schema(header=True)
        elif len(cells) == len(AVAZU_COLUMNS) and re.fullmatch(r"\d+", cells[2]):
            schema = avazu_schema(header=False)  # data from line 1; the C pass checks it
        elif len(cells) == len(AVAZU_COLUMNS):
            raise ValueError(f"header does not match the Avazu columns: {cells[:4]}...")
        else:
            raise ValueError(f"not an Avazu file: first line has {len(cells)} fields, want 24")
    elif fmt == "criteo":
        schema = _criteo_from_first(first)
    elif fmt in ("libsvm", "libfm"):
        schema = libsvm_schema(max_features, dense_features, libfm=fmt == "libfm")
    elif fmt == "csv":
        if label is None:
            raise ValueError("format='csv' needs label=COLUMN")
        names = split_cells(first, delimiter)
        sample = (_sample_cells(ln.decode("utf-8", "replace"), delimiter)
                  for ln in lines[1:1 + sample_rows])
        return infer_csv_schema(names, sample, label, types, delimiter)
    else:
        raise ValueError(f"unknown format {format!r}: auto, avazu, criteo, csv, libsvm, libfm")
    if label is not None and not schema.is_svm and label != schema.label:
        raise ValueError(f"label={label!r}, but the {schema.name} label column is "
                         f"{schema.label!r}")
    return schema.with_types(types)


def _detect(first: str, label: str | None) -> str:
    cells = first.split(",")
    if tuple(cells) == AVAZU_COLUMNS or (
        len(cells) == len(AVAZU_COLUMNS) and cells[1] in ("0", "1")
        and re.fullmatch(r"\d{8}", cells[2])
    ):
        return "avazu"
    if first.count("\t") in (38, 39):
        return "criteo"
    lower = [c.lower() for c in cells]
    if lower[-39:] == [n.lower() for n in CRITEO_NUMERIC + CRITEO_CATEGORICAL] and (
        lower[:-39] in (["label"], ["id", "label"])
    ):
        return "criteo"
    tokens = first.split()
    if len(tokens) >= 2 and _parse.parse_number(tokens[0].encode()) is not None:
        colons = {t.count(":") for t in tokens[1:]}
        if colons == {1}:
            return "libsvm"
        if colons == {2}:
            return "libfm"
    if label is not None:
        return "csv"
    raise ValueError("cannot detect the format (not Avazu, Criteo, libsvm or libfm): give "
                     "--format csv --label COLUMN, or another --format")


def _criteo_from_first(first: str) -> Schema:
    tabs = first.count("\t")
    if tabs == 39:
        return criteo_schema("\t", header=False)
    if tabs == 38:
        return criteo_schema("\t", header=False, label=None)
    cells = first.split(",")
    lower = [c.lower() for c in cells]
    if lower[-39:] == [n.lower() for n in CRITEO_NUMERIC + CRITEO_CATEGORICAL]:
        lead = cells[:-39]
        if [c.lower() for c in lead] == ["id", "label"]:
            return criteo_schema(",", True, id_column=lead[0], label=lead[1])
        if [c.lower() for c in lead] == ["label"]:
            return criteo_schema(",", True, label=lead[0])
        if [c.lower() for c in lead] == ["id"]:
            return criteo_schema(",", True, id_column=lead[0], label=None)
    raise ValueError("not a Criteo file: want 40 (or 39) tab-separated fields or a Kaggle "
                     "csv header (Id,Label,I1..C26 or label,I1..C26)")
