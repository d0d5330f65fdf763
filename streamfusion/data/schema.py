"""Schemas: what each input column becomes for the learner (fields) and the trees (dense).

A delimited schema is a tuple of :class:`Column`; the compiled form that the C pass reads is
built by :class:`streamfusion.data.encoder.Encoder`. libsvm / libfm / libffm have no columns:
each row fills up to ``max_features`` learner slots in order, and the feature ids the trees see
(``dense_features`` / ``dense_ids``) fill one tree column each.

Learner fields (``field_names``, F of them) and tree features (``dense_names``, T) follow the
column order. Per column kind:

- ``num``:  one learner field (row = hash of the field alone, value = sign(x) * log1p(|x|),
  0 when missing) and one dense feature (x as is, NaN when missing). A ``lenient`` column (a
  generic CSV's) reads a cell that is not a number as missing and counts it; elsewhere such a
  cell makes the row malformed.
- ``cat``:  one learner field (row = hash of the value with the field's salt, value 1.0; a
  missing value is the empty-string token) and, by ``dense``, one tree feature: ``"int"``
  (the value read as a number; 0 if missing or not a number), ``"count"`` (how often the value
  has been seen so far, this row included, from a fixed hashed count table, per million rows
  seen so far: a share, so that its meaning does not drift as the stream grows) or ``"none"``.
- ``hour``: Avazu YYMMDDHH: learner fields and dense features ``hour_of_day`` and ``weekday``
  (Monday = 0); the row's ``time`` is YYMMDDHH as an integer.
- ``time``: a generic log's timestamp (ISO 8601 date and time, as written, or Unix seconds or
  milliseconds, UTC): learner fields and dense features ``<name>_hour_of_day`` and
  ``<name>_weekday``, never the time itself (an id of each moment for the learner, and trees
  that split on it meet only times beyond their splits in the future); the row's ``time`` is
  YYYYMMDDHH (of the first time column). A cell that is not a time is missing there, counted.
- ``label``: the click, 0 or 1 (a generic CSV's also true or false, any case); ``skip``:
  ignored (ids).

A generic CSV's kinds are inferred from a sample of up to ``DEFAULT_SAMPLE_ROWS`` rows spread
over the file (:func:`type_sample`, :func:`infer_csv_schema`); ``types`` overrides them.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from streamfusion import _parse

# column kinds, the same integers as parse_core.h
KINDS = {"skip": 0, "label": 1, "num": 2, "cat": 3, "hour": 4, "time": 5}
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

# Input formats as users name them: libfm is libFM's own `label idx:val` (the libsvm syntax),
# libffm the field-aware `label field:idx:val`
FORMATS = ("auto", "avazu", "criteo", "csv", "libsvm", "libfm", "libffm")
SVM_FORMATS = ("libsvm", "libfm", "libffm")

# CSV type inference. A column whose values parse as numbers is numeric only if it has at
# least this many distinct values in the sample (few distinct = codes, not amounts)
NUMERIC_MIN_DISTINCT = 16
# words in a numeric column ("?", "unknown") up to this share of its sampled values are
# missing values, not categories: real logs carry a few such placeholders
MAX_WORD_SHARE = 0.02
# placeholders that mean "missing" whatever their share (compared lower-cased and stripped)
MISSING_WORDS = frozenset({"", "?", "-", "na", "n/a", "nan", "null", "none", "unknown", "#n/a"})
# Integer ids without an id-like name, by their values: at least ID_MIN_DISTINCT distinct
# (fewer are codes or small amounts, whatever their spread), none negative, and either all of
# 5+ digits (hashes, offset ids) or spread evenly: mean at most ID_MAX_SKEW x the median, where
# counts and amounts pile up at small values (Criteo's counts: mean 2-40x the median)
ID_MIN_DISTINCT = 100
ID_MIN_VALUE = 10_000
ID_MAX_SKEW = 1.5
# names that say "id": `*id` (user_id, userId, adgroupid) or containing `hash`
ID_NAME = re.compile(r"(?i).*id|.*hash.*")
# Unix times (seconds or milliseconds, _parse.parse_time) are a time only in a column whose
# name has a word that says so (time_stamp, eventTime, date, created_at, ts; a word ending in
# time: clicktime) and does not say id (update_date_id): elsewhere integers of 9-13 digits
# are as likely ids. ISO 8601 times are a time under any name; a date alone (birth_date)
# stays a category, its hour always 0.
TIME_WORDS = frozenset({"time", "timestamp", "stamp", "date", "datetime", "ts", "at"})
# the kinds --types may give a column
TYPES = ("num", "cat", "time", "skip")
# a generic CSV read without a label column named: the one column with one of these names
# (any case) whose sampled values are all labels (0, 1, true, false) is the label
LABEL_NAMES = ("label", "click", "clicked", "clk", "is_click", "is_clicked", "target", "y")
# a CSV's separators, tried in this order: the first that splits the header into 2+ cells and
# nearly all (SNIFF_SHARE) of the SNIFF_LINES lines after it into as many is the file's (a
# malformed row among them is reported later, with its line number)
DELIMITERS = (",", "\t", ";", "|")
SNIFF_LINES = 50
SNIFF_SHARE = 0.9
# rows read for type inference: enough for rare words and id cardinality to show, for about
# 0.2 s of Python on a 15-column log
DEFAULT_SAMPLE_ROWS = 20_000
DEFAULT_MAX_FEATURES = 64
# libsvm / libfm / libffm: at most this many feature ids become tree columns by default (a
# 200k-event tree window of them is 200 MB of float32)
DENSE_AUTO_MAX = 256
SVM_DETECT_LINES = 20  # lines whose tokens tell libsvm (idx:val) from libffm (field:idx:val)
SCHEMA_VERSION = 1
SVM_EVENT_FIELD = "features"  # a libsvm-like event's tokens, as they are in its file line


@dataclass(frozen=True)
class Column:
    """One input column: ``kind`` in KINDS, ``dense`` in DENSE_MODES (categoricals only);
    ``lenient`` (numeric only): a cell that is not a number is a missing value, counted."""

    name: str
    kind: str
    dense: str = "none"
    lenient: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: unknown kind {self.kind!r}")
        if self.dense not in DENSE_MODES:
            raise ValueError(f"column {self.name!r}: unknown dense mode {self.dense!r}")
        if self.lenient and self.kind != "num":
            raise ValueError(f"column {self.name!r}: only a numeric column is lenient")


@dataclass(frozen=True)
class Schema:
    """How one file format maps to learner fields and tree features.

    Parameters
    ----------
    name : str
        ``"avazu"``, ``"criteo"``, ``"csv"``, ``"libsvm"``, ``"libfm"`` or ``"libffm"``.
    columns : tuple of Column
        Input columns in file order (empty for libsvm / libfm / libffm).
    delimiter : str
        One-byte field separator.
    header : bool
        Whether the first line names the columns (and is skipped).
    max_features : int
        libsvm / libfm / libffm: learner slots per row (F); shorter rows are padded.
    dense_features : int
        libsvm / libfm / libffm: the number of tree columns (T). Without ``dense_ids``,
        feature id ``i < T`` fills column ``i``; default 0.
    dense_ids : tuple of int
        libsvm / libfm / libffm: the T sorted feature ids that fill the tree columns, in
        order (empty: the ids below ``dense_features``).

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
    dense_ids: tuple[int, ...] = ()
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
        ids = tuple(int(i) for i in self.dense_ids)
        object.__setattr__(self, "dense_ids", ids)
        if ids and (len(ids) != self.dense_features or list(ids) != sorted(set(ids))
                    or ids[0] < 0):
            raise ValueError("dense_ids must be dense_features sorted, distinct ids >= 0")
        if self.is_svm:
            if self.max_features < 1:
                raise ValueError(f"{self.name} needs max_features >= 1")
            fields = [f"f{i}" for i in range(self.max_features)]
            dense = [f"x{i}" for i in (ids or range(self.dense_features))]
        elif ids or self.dense_features:
            raise ValueError("dense_features / dense_ids are for libsvm-like formats only")
        for c in self.columns:
            if c.kind == "hour":
                fields += ["hour_of_day", "weekday"]
                dense += ["hour_of_day", "weekday"]
            elif c.kind == "time":
                fields += [f"{c.name}_hour_of_day", f"{c.name}_weekday"]
                dense += [f"{c.name}_hour_of_day", f"{c.name}_weekday"]
            elif c.kind == "num":
                fields += [c.name, f"{c.name}#bin"]
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
        """A libsvm-like format (libsvm, libfm, libffm): features as ``idx:val`` tokens."""
        return self.name in SVM_FORMATS

    @property
    def field_aware(self) -> bool:
        """libffm: each token is ``field:idx:val``."""
        return self.name == "libffm"

    def column_kinds(self) -> dict[str, str]:
        """The kind each input column is read as (for reports); for libsvm-like formats the
        label and the feature ids the trees see (``x<id>``, numeric)."""
        if self.is_svm:
            return {"label": "label", **{name: "num" for name in self.dense_names}}
        return {c.name: c.kind for c in self.columns}

    @property
    def label(self) -> str | None:
        """Name of the label column (None when the file carries no label)."""
        return next((c.name for c in self.columns if c.kind == "label"), "label" if self.is_svm
                    else None)

    @property
    def event_fields(self) -> tuple[str, ...]:
        """The raw fields of an event (a Kafka message): every column but the id and the
        label, under its own name; libsvm-like formats carry their ``idx:val`` tokens as one
        string field, ``features``."""
        if self.is_svm:
            return (SVM_EVENT_FIELD,)
        return tuple(c.name for c in self.columns if c.kind not in ("skip", "label"))

    @property
    def id_column(self) -> str | None:
        """The skipped column that names each event (``id``, any case), if the log has one."""
        return next((c.name for c in self.columns
                     if c.kind == "skip" and c.name.lower() == "id"), None)

    @property
    def has_header(self) -> bool:
        """Alias of ``header`` (the first line names the columns)."""
        return self.header

    @property
    def has_time(self) -> bool:
        return any(c.kind in ("hour", "time") for c in self.columns)

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
            "dense_ids": list(self.dense_ids),
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
            dense_ids=tuple(d.get("dense_ids", ())),
        )

    def with_types(self, types: Mapping[str, str] | None) -> Schema:
        """Override column kinds: ``{"col": "num" | "cat" | "time" | "skip"}``.

        A column made numeric is lenient: the user chose the kind, so its words are counted
        missing values, not malformed rows.
        """
        if not types:
            return self
        known = {c.name: c for c in self.columns}
        cols = []
        for name in types:
            if name not in known:
                raise ValueError(f"types: no column {name!r} in the {self.name} schema")
            if known[name].kind == "label":
                raise ValueError(f"types: {name!r} is the label column")
            if types[name] not in TYPES:
                raise ValueError(f"types[{name!r}] must be 'num', 'cat', 'time' or 'skip'")
        for c in self.columns:
            t = types.get(c.name)
            if t is None or (t == c.kind and t != "num"):
                cols.append(c)
            elif t == "cat":
                cols.append(Column(c.name, "cat", "count"))
            else:
                cols.append(Column(c.name, t, lenient=t == "num"))
        return Schema(self.name, tuple(cols), self.delimiter, self.header,
                      self.max_features, self.dense_features, self.dense_ids)


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
                  format: str = "libsvm", dense_ids: Sequence[int] = ()) -> Schema:
    """libsvm / libfm ``label idx:val ...`` or libffm ``label field:idx:val ...``.

    F = ``max_features`` learner slots. The trees get ``dense[slot] = val`` for the feature
    ids they see: the ``dense_ids`` (sorted) when given, else the ids below
    ``dense_features``; with neither, the tree stage only contributes its prior.
    """
    if format not in SVM_FORMATS:
        raise ValueError(f"not a libsvm-like format: {format!r}")
    ids = tuple(dense_ids)
    if ids == tuple(range(len(ids))):  # the ids 0..T-1 themselves: no lookup needed
        return Schema(format, (), " ", False, max_features, len(ids) or dense_features)
    return Schema(format, (), " ", False, max_features, len(ids), ids)


@dataclass(frozen=True)
class ColumnProfile:
    """What a sample says about one CSV column.

    Attributes
    ----------
    values : int
        Sampled cells that hold something (not empty, not a MISSING_WORDS placeholder).
    words : int
        Of those, cells that are not numbers.
    distinct : int
        Distinct numbers among them (as written: ``1`` and ``1.0`` are two); 0 when the words
        alone made the profile stop early.
    integer : bool
        Every number is a whole number.
    low, median, mean : float
        Smallest, median and mean number (NaN without numbers).
    """

    values: int
    words: int
    distinct: int
    integer: bool
    low: float = math.nan
    median: float = math.nan
    mean: float = math.nan

    @classmethod
    def of(cls, cells: Sequence[str]) -> ColumnProfile:
        """Profile the sampled cells of one column (each distinct cell is parsed once).

        Stops early once the words alone make the column categorical: a column of strings
        costs one look at its first distinct values, not a parse of all of them.
        """
        values = words = 0
        numbers: list[float] = []
        weights: list[int] = []
        too_many = MAX_WORD_SHARE * len(cells)
        for cell, n in Counter(cells).items():
            x = _parse.parse_number(cell.encode())
            if x is not None:
                numbers.append(x)
                weights.append(n)
            elif cell.strip().lower() not in MISSING_WORDS:
                words += n
                if words > too_many:
                    return cls(values + words, words, 0, False)
            else:
                continue
            values += n
        if not numbers:
            return cls(values, words, 0, False)
        x, w = np.array(numbers), np.array(weights)
        order = np.argsort(x, kind="stable")
        x, cum = x[order], np.cumsum(w[order])
        median = float(x[np.searchsorted(cum, cum[-1] / 2)])
        return cls(values, words, len(numbers), bool((x == np.floor(x)).all()), float(x[0]),
                   median, float(x @ w[order] / cum[-1]))

    @property
    def numeric(self) -> bool:
        """Numbers, with at most MAX_WORD_SHARE of words (read as missing values)."""
        return self.distinct > 0 and self.words <= MAX_WORD_SHARE * self.values

    @property
    def ids(self) -> bool:
        """Integers whose values look like ids: many, none negative, and all of 5+ digits or
        spread evenly (see ID_MIN_DISTINCT, ID_MIN_VALUE, ID_MAX_SKEW)."""
        if not (self.integer and self.distinct >= ID_MIN_DISTINCT and self.low >= 0):
            return False
        return self.low >= ID_MIN_VALUE or 0 < self.mean <= ID_MAX_SKEW * self.median


def is_time_column(name: str, cells: Sequence[str]) -> bool:
    """Whether a CSV column's sampled cells are timestamps (``_parse.parse_time``): all but at
    most MAX_WORD_SHARE of those that hold something, and either ISO 8601 with a time of day,
    or Unix times in a column named as times are (TIME_WORDS, not ID_NAME) whose values are
    not all compact dates (YYYYMMDDHH[MM] also reads as Unix seconds or milliseconds). Only a
    column whose first such cell is a time is read further.

    Examples
    --------
    >>> is_time_column("when", ["2024-03-01 10:00", "?"]), is_time_column("day", ["2024-03-01"])
    (True, False)
    >>> [is_time_column(n, ["1709290800"]) for n in ("eventTime", "user", "update_date_id")]
    [True, False, False]
    >>> is_time_column("date_hour", ["2024030110", "2024030111"])  # YYYYMMDDHH
    False
    """
    distinct = Counter(c for c in cells if c.strip().lower() not in MISSING_WORDS)
    if not distinct or _parse.parse_time(next(iter(distinct)).encode()) is None:
        return False
    times = [c for c in distinct if _parse.parse_time(c.encode()) is not None]
    if sum(distinct.values()) - sum(distinct[c] for c in times) > (
            MAX_WORD_SHARE * sum(distinct.values())):
        return False
    iso = ["-" in c for c in times]
    if all(iso):
        return any(len(c) > len("YYYY-MM-DD") for c in times)
    words = {w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)}
    timely = bool(words & TIME_WORDS) or any(w.endswith(("time", "timestamp")) for w in words)
    return (not any(iso) and timely and not ID_NAME.fullmatch(name)
            and not all(_compact_date(c) for c in times))


def _compact_date(cell: str) -> bool:
    """``YYYYMMDDHH`` or ``YYYYMMDDHHMM`` (years 1970-2099), as far as digits can tell."""
    if len(cell) not in (10, 12) or not cell.isdigit():
        return False
    y, m, d, h = int(cell[:4]), int(cell[4:6]), int(cell[6:8]), int(cell[8:10])
    return (1970 <= y <= 2099 and 1 <= m <= 12 and 1 <= d <= 31 and h <= 23
            and (len(cell) == 10 or int(cell[10:]) <= 59))


def infer_column(name: str, profile: ColumnProfile, time: bool = False) -> Column:
    """The kind of one feature column of a generic CSV (see :func:`infer_csv_schema`);
    ``time``: its cells are timestamps (:func:`is_time_column`)."""
    if name.lower() == "id":
        return Column(name, "skip")
    if time:
        return Column(name, "time")
    if not profile.numeric:
        return Column(name, "cat", "count")
    if profile.integer and profile.distinct < NUMERIC_MIN_DISTINCT:  # codes
        return Column(name, "cat", "int")
    if profile.integer and ID_NAME.fullmatch(name):
        return Column(name, "cat", "count")
    if profile.ids:
        # ids by their values alone: the trees keep the number, as they would an amount
        return Column(name, "cat", "int")
    if profile.distinct < NUMERIC_MIN_DISTINCT:
        return Column(name, "cat", "count")
    return Column(name, "num", lenient=True)


def infer_csv_schema(names: list[str], rows: Iterable[Sequence[str]], label: str,
                     types: Mapping[str, str] | None = None, delimiter: str = ",") -> Schema:
    """A CSV schema from its header and a sample of rows.

    Per column (empty cells and MISSING_WORDS placeholders are missing values):

    - named ``id``: skipped; the label column: the label;
    - timestamps (:func:`is_time_column`: ISO 8601 date and time under any name, Unix times
      under a name that says time): ``time``, the hour of day and weekday;
    - numbers with few distinct values (< NUMERIC_MIN_DISTINCT): categorical codes (trees get
      the integer when all are integers, else the count);
    - integers in a column whose name says id (``*id``, ``*hash*``): categorical, counts for
      the trees; integers whose values look like ids (:attr:`ColumnProfile.ids`: many
      distinct, all of 5+ digits or spread evenly, unlike counts and amounts): categorical,
      the trees get the integer;
    - other numbers: numeric and lenient: words up to MAX_WORD_SHARE of the column's values
      (``unknown``, ``?``) are read as missing values and counted, never an error;
    - anything else: categorical (trees get the count).

    ``types`` overrides the result. Rows whose cell count differs from the header's are left
    out (the parser reports them with their line number).
    """
    if label not in names:
        raise ValueError(f"label column {label!r} not in the header {names}")
    good = [r for r in rows if len(r) == len(names)]
    columns = list(zip(*good, strict=True)) if good else [() for _ in names]
    cols = [Column(name, "label") if name == label
            else infer_column(name, ColumnProfile.of(cells), is_time_column(name, cells))
            for name, cells in zip(names, columns, strict=True)]
    return Schema("csv", tuple(cols), delimiter, True).with_types(types)


def split_cells(line: str, delimiter: str) -> list[str]:
    """The cells of one line as the C tokenizer splits it: comma-separated lines may quote
    a cell (RFC 4180), other delimiters never quote."""
    if delimiter != "," or '"' not in line:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter, strict=True), [])


def split_sample(lines: Sequence[str], delimiter: str) -> list[list[str]]:
    """The cells of each sampled line, as the C tokenizer splits them; a line with bad
    quoting gives no cells (the parser reports it with its line number later)."""
    if delimiter != "," or not any('"' in ln for ln in lines):
        return [ln.split(delimiter) for ln in lines]
    try:  # one reader over all lines: far faster than one per line
        return list(csv.reader(lines, delimiter=delimiter, strict=True))
    except csv.Error:
        return [_cells_or_none(ln, delimiter) for ln in lines]


def _cells_or_none(line: str, delimiter: str) -> list[str]:
    try:
        return split_cells(line, delimiter)
    except csv.Error:
        return []


def type_sample(head: bytes, complete: bool, rows: int, blocks: Sequence[bytes] = ()
                ) -> list[bytes]:
    """The first line and a sample of ``rows`` lines after it: the first half of them, then
    the other half evenly spaced over the rest of the file, from the head when it holds the
    whole file, else from ``blocks`` of whole lines read evenly across all of it (the head
    alone when there are none). A log whose kinds change after its first rows (ids appear,
    a column fills in) is typed by all of it.

    Examples
    --------
    >>> text = b"h\\n" + b"".join(b"%d\\n" % i for i in range(100))
    >>> [int(x) for x in type_sample(text, True, 6)[1:]]
    [0, 1, 2, 3, 51, 99]
    """
    first = 1 + rows // 2
    later = [ln for block in blocks for ln in _split_lines(block, True, len(block))]
    lines = _split_lines(head, complete, first if later else len(head))
    later = later or lines[first:]
    want = min(len(later), rows - rows // 2)
    picks = np.linspace(0, len(later) - 1, want).round().astype(np.int64) if want else []
    return lines[:first] + [later[i] for i in picks]


def _split_lines(head: bytes, complete: bool, limit: int) -> list[bytes]:
    """Up to ``limit`` whole lines of ``head``, blank ones left out."""
    lines = head.split(b"\n", limit)
    if len(lines) > limit or not complete:
        lines = lines[:-1]  # the unsplit rest, or a line the head may have cut
    return [ln.rstrip(b"\r") for ln in lines if ln.strip()]


def svm_dense_ids(lines: Sequence[bytes], field_aware: bool,
                  limit: int = DENSE_AUTO_MAX) -> tuple[int, ...]:
    """The feature ids of a libsvm-like sample that become tree columns: every id seen when
    there are at most ``limit``, else the ``limit`` most frequent (ties: the smaller id)."""
    token = _FFM_ID if field_aware else _SVM_ID
    counts: Counter[int] = Counter()
    for idx, n in Counter(token.findall(b"\n".join(lines))).items():
        counts[int(idx)] += n
    if len(counts) > limit:
        counts = Counter(dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]))
    return tuple(sorted(counts))


# the id of each feature token; longer ids than 18 digits overflow the C parser's int64
_SVM_ID = re.compile(rb"(?:^|(?<=[ \t]))(\d{1,18}):[^ \t:]*(?=[ \t]|$)", re.M)
_FFM_ID = re.compile(rb"(?:^|(?<=[ \t]))\d+:(\d{1,18}):[^ \t:]*(?=[ \t]|$)", re.M)


def detect_schema(head: bytes, complete: bool, format: str = "auto", label: str | None = None,
                  types: Mapping[str, str] | None = None, delimiter: str | None = None,
                  max_features: int = DEFAULT_MAX_FEATURES, dense_features: int | None = None,
                  sample_rows: int = DEFAULT_SAMPLE_ROWS,
                  read_rest: Callable[[], Sequence[bytes]] = list) -> Schema:
    """Pick the schema of a file from its first bytes (and, to type a CSV or choose a
    libsvm-like file's tree columns, blocks of whole lines from all of it that
    ``read_rest`` reads when the head is not the whole file).

    ``format="auto"`` recognises Avazu (header names, or 24 comma fields with a 0/1 click and a
    YYMMDDHH hour), Criteo (40 or 39 tab-separated fields, or the Kaggle csv headers), libsvm
    (``idx:val`` tokens, reported as ``libsvm``; libFM files are the same) and libffm
    (``field:idx:val``) and a CSV whose label column is named as labels are
    (:func:`guess_label`); any other file needs ``format="csv"`` and a label. A sample of up to
    ``sample_rows`` lines (:func:`type_sample`) types a CSV's columns and, with
    ``dense_features=None``, chooses a libsvm-like file's tree columns (:func:`svm_dense_ids`).
    A CSV's ``delimiter`` is, by default (None), the one of DELIMITERS that splits the header
    and the first lines alike (:func:`sniff_delimiter`).
    """
    lines = _split_lines(head, complete, sample_rows + 1)
    if not lines:
        raise ValueError("no complete line in the first bytes")
    first = lines[0].decode("utf-8", "replace")
    if delimiter is None:
        delimiter = sniff_delimiter([ln.decode("utf-8", "replace")
                                     for ln in lines[:SNIFF_LINES + 1]])
    fmt = format
    if fmt == "auto":
        fmt = _detect(first, lines, label, delimiter)
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
    elif fmt in SVM_FORMATS:
        ids = () if dense_features is not None else svm_dense_ids(
            type_sample(head, complete, sample_rows, read_rest()), fmt == "libffm")
        schema = libsvm_schema(max_features, dense_features or 0, fmt, ids)
    elif fmt == "csv":
        names = split_cells(first, delimiter)
        lines = type_sample(head, complete, sample_rows, read_rest())
        text = b"\n".join(lines[1:]).decode("utf-8", "replace")
        rows = split_sample(text.split("\n") if text else [], delimiter)
        label = label or guess_label(names, rows)
        if label is None:
            raise ValueError("format='csv' needs label=COLUMN: no one column named "
                             f"{'/'.join(LABEL_NAMES)} holds only 0/1 or true/false values "
                             f"in a sample of {len(rows):,} rows")
        return infer_csv_schema(names, rows, label, types, delimiter)
    else:
        raise ValueError(f"unknown format {format!r}: {', '.join(FORMATS)}")
    if label is not None and not schema.is_svm and label != schema.label:
        raise ValueError(f"label={label!r}, but the {schema.name} label column is "
                         f"{schema.label!r}")
    return schema.with_types(types)


def _detect(first: str, lines: Sequence[bytes], label: str | None, delimiter: str) -> str:
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
    svm = _svm_format(lines[:SVM_DETECT_LINES])
    if svm is not None:
        return svm
    if label is not None or guess_label(_cells_or_none(first, delimiter), split_sample(
            [ln.decode("utf-8", "replace") for ln in lines[1:]], delimiter)) is not None:
        return "csv"
    raise ValueError("cannot detect the format (not Avazu, Criteo, libsvm/libfm, libffm, nor "
                     "a CSV with a 0/1 or true/false column named "
                     f"{'/'.join(LABEL_NAMES)}): give --format csv --label COLUMN, or another "
                     "--format")


def sniff_delimiter(lines: Sequence[str]) -> str:
    """The separator of a delimited file from its first ``lines`` (the header first): the
    first of DELIMITERS that splits the header into 2+ cells and at least SNIFF_SHARE of the
    other lines into as many; ``","`` when none does.

    Examples
    --------
    >>> sniff_delimiter(["clk;price;note", "1;3,5;a", "0;2,25;b,c"])  # decimal commas
    ';'
    >>> sniff_delimiter(["clk\\tad", "1\\tx"]), sniff_delimiter(["one", "1"])
    ('\\t', ',')
    """
    for d in DELIMITERS:
        header, *rows = (len(cells) for cells in split_sample(lines, d))
        if header >= 2 and sum(n == header for n in rows) >= SNIFF_SHARE * len(rows):
            return d
    return ","


def guess_label(names: Sequence[str], rows: Sequence[Sequence[str]]) -> str | None:
    """The label column of a CSV read without one named: the only column called as labels
    are (:data:`LABEL_NAMES`, any case) whose sampled cells are all labels (0, 1, true or
    false) or empty; else None.

    Examples
    --------
    >>> guess_label(["user_id", "Click", "price"], [["7", "0", "3.5"], ["8", "1", "2"]])
    'Click'
    >>> guess_label(["label", "target"], [["0", "1"], ["1", "0"]]) is None  # two candidates
    True
    """
    good = [r for r in rows if len(r) == len(names)]  # as infer_csv_schema reads them

    def labels(j: int) -> bool:  # empty cells aside (malformed rows later), all labels
        cells = [r[j] for r in good if r[j]]  # as the C reader sees them, spaces and all
        return bool(cells) and all(_parse.parse_label(c.encode()) is not None for c in cells)

    found = [j for j, name in enumerate(names)
             if name.strip().lower() in LABEL_NAMES and labels(j)]
    return names[found[0]] if len(found) == 1 else None


def _svm_format(lines: Sequence[bytes]) -> str | None:
    """``libsvm`` when every feature token of ``lines`` is ``idx:val``, ``libffm`` when every
    one is ``field:idx:val``, else None (each line must start with a numeric label)."""
    colons: set[int] = set()
    for line in lines:
        tokens = line.split()
        if not tokens or _parse.parse_number(tokens[0]) is None:
            return None
        colons.update(t.count(b":") for t in tokens[1:])
    return {frozenset({1}): "libsvm", frozenset({2}): "libffm"}.get(frozenset(colons))


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
