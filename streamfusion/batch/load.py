"""A whole click log as compact encoded arrays, split 9:1 (the paper's batch protocol).

The log is streamed once through the C reader (``open_source``) into int32 hashed indices,
float32 values of the numeric fields only, float32 tree features and labels, kept as
*contiguous* row ranges ``[train | valid | test]`` so that every part is a view, never a copy:
a 40M-row Avazu file is about 7.6 GB in memory, a 45M-row Criteo file about 16.4 GB.

The hashed indices are then renumbered to ``0 .. table_rows - 1`` in the order of their hash
(the same collisions, no new ones), so the learners' tables are sized by the distinct values
the log holds, not by ``2**bits``: a 9k-row sample needs tables of thousands of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

READ_ROWS = 100_000  # rows per reader batch while loading
REMAP_ROWS = 1 << 20  # rows renumbered per step (bounded temporary memory)
TRIM_EVERY = 16  # chunks copied between returns of freed memory to the OS
SPLIT_TEST = 0.1  # the paper's 9:1 train/test split
SPLIT_VALID = 0.1  # share of the training part held out for early stopping
_MASK64 = (1 << 64) - 1


@dataclass
class EncodedLog:
    """A whole click log as compact encoded arrays, rows ordered ``[train | valid | test]``.

    Attributes
    ----------
    indices : int32 [n, F]
        Rows of the learner's table, ``0 <= index < table_rows``.
    values : float32 [n, len(value_cols)]
        Values of the fields that are not constant 1.0 (numeric fields); every other
        field's value is 1.0. Storing only these saves a third of the memory on Criteo.
    value_cols : int64 [m]
        Which of the F fields ``values`` holds.
    dense : float32 [n, T]
        Tree features.
    y : float32 [n]
        Labels (unlabelled rows are dropped while loading).
    n_train, n_valid : int
        Sizes of the first two parts; the test part is the rest.
    table_rows : int
        Distinct hashed (field, value) rows of the log: the learners' table size.
    bits : int
        The reader hashed (field, value) pairs into ``2**bits`` rows before renumbering.

    Examples
    --------
    >>> log = load_log("train.csv", format="avazu")  # doctest: +SKIP
    >>> log.indices[log.train].shape, log.table_rows  # doctest: +SKIP
    """

    indices: np.ndarray
    values: np.ndarray
    value_cols: np.ndarray
    dense: np.ndarray
    y: np.ndarray
    n_train: int
    n_valid: int
    field_names: list[str]
    dense_names: list[str]
    table_rows: int
    bits: int
    skipped_rows: int = 0
    format: str = "auto"
    column_kinds: dict[str, str] = field(default_factory=dict)
    unparsed_numbers: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_fields(self) -> int:
        return int(self.indices.shape[1])

    @property
    def n_test(self) -> int:
        return len(self) - self.n_train - self.n_valid

    @property
    def train(self) -> slice:
        return slice(0, self.n_train)

    @property
    def valid(self) -> slice:
        return slice(self.n_train, self.n_train + self.n_valid)

    @property
    def test(self) -> slice:
        return slice(self.n_train + self.n_valid, len(self))

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indices, self.values, self.dense, self.y))


def split_key(line: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uniform number in [0, 1) per source line (splitmix64 of line and seed).

    A function of the line alone, so the random split does not depend on batch sizes.
    """
    with np.errstate(over="ignore"):
        x = line.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) & _MASK64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class _Parts:
    """Per-part lists of encoded chunks; values kept only for columns seen not equal to 1."""

    def __init__(self, n_fields: int) -> None:
        self.chunks: list[list[tuple]] = [[], [], []]
        self.value_cols = np.zeros(n_fields, dtype=bool)

    def add(self, part: int, indices, values, dense, y) -> None:
        self.value_cols |= (values != 1.0).any(axis=0)
        cols = np.flatnonzero(self.value_cols)
        self.chunks[part].append((indices, np.ascontiguousarray(values[:, cols]), cols, dense, y))

    def assemble(self) -> tuple[np.ndarray, ...]:
        """Copy every chunk into preallocated arrays, freeing each as it goes (peak + a few)."""
        n = sum(len(c[4]) for part in self.chunks for c in part)
        first = next(c for part in self.chunks for c in part)
        final_cols = np.flatnonzero(self.value_cols)
        indices = np.empty((n, first[0].shape[1]), np.int32)
        values = np.ones((n, final_cols.size), np.float32)
        dense = np.empty((n, first[3].shape[1]), np.float32)
        y = np.empty(n, np.float32)
        del first
        pos = 0
        copied = 0
        for part in self.chunks:
            part.reverse()  # pop() from the end: O(1), and each chunk is released when copied
            while part:
                idx, val, cols, den, lab = part.pop()
                end = pos + len(lab)
                indices[pos:end] = idx
                dense[pos:end] = den
                y[pos:end] = lab
                # a chunk stored fewer value columns when later chunks revealed more numeric
                # fields; the missing ones were all 1.0 in it, as ``values`` is initialised
                where = np.searchsorted(final_cols, cols)
                values[pos:end, where] = val
                pos = end
                del idx, val, den, lab
                copied += 1
                if copied % TRIM_EVERY == 0:
                    release_free_memory()
        release_free_memory()
        return indices, values, final_cols.astype(np.int64), dense, y


def renumber_rows(indices: np.ndarray, bits: int) -> int:
    """Renumber hashed rows in place to ``0 .. distinct - 1`` (in hash order); returns the
    number of distinct rows. Equal hashes stay equal and distinct ones distinct."""
    used = np.zeros(1 << bits, dtype=bool)
    for a in range(0, indices.shape[0], REMAP_ROWS):
        used[indices[a:a + REMAP_ROWS]] = True
    new = (np.cumsum(used, dtype=np.int64) - 1).astype(np.int32)
    for a in range(0, indices.shape[0], REMAP_ROWS):
        indices[a:a + REMAP_ROWS] = new[indices[a:a + REMAP_ROWS]]
    return int(np.count_nonzero(used))


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Reader chunks of ~20 MB land on the heap once glibc's dynamic mmap threshold has grown,
    and memory freed below the top of the heap is not returned by itself: without this the
    peak while assembling would be the chunks *plus* the final arrays, twice the data.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def load_log(path: str, format: str = "auto", label: str | None = None, bits: int = 20,
             seed: int = 0, rows: int | None = None, split: str = "random",
             on_error: str = "fail", progress: Callable[[int], None] | None = None,
             **source: Any) -> EncodedLog:
    """Stream a click log through ``open_source`` into an ``EncodedLog`` (never a DataFrame).

    ``source`` holds further ``open_source`` options (``types``, ``max_features``,
    ``dense_features``, ...).

    ``split="random"``: each line goes to test with probability 0.1 and to the validation
    slice with probability 0.09 (a seeded hash of its line number); ``"chrono"``: the last 10%
    of the file (logs are written in time order) is the test part and the 10% of rows before
    it the validation slice. Rows without a label are dropped.
    """
    from streamfusion.data import open_source

    if split not in ("random", "chrono"):
        raise ValueError(f"split must be 'random' or 'chrono', got {split!r}")
    parts: _Parts | None = None
    seen = 0
    with open_source(path, format=format, label=label, bits=bits, seed=seed,
                     on_error=on_error, **source) as src:
        while rows is None or seen < rows:
            want = READ_ROWS if rows is None else min(READ_ROWS, rows - seen)
            batch = src.next_batch(want)
            if batch is None:
                break
            if len(batch) > want:  # a reader may return whole blocks
                batch = batch.take(slice(0, want))
            seen += len(batch)
            if progress is not None:
                progress(len(batch))
            keep = ~np.isnan(batch.y)
            if parts is None:
                parts = _Parts(batch.indices.shape[1])
            if split == "random":
                u = split_key(batch.line, seed)
                valid_edge = SPLIT_TEST + SPLIT_VALID * (1 - SPLIT_TEST)
                part = np.where(u < SPLIT_TEST, 2, np.where(u < valid_edge, 1, 0))
            else:
                part = np.zeros(len(batch), np.int64)
            for p in (0, 1, 2):
                sel = keep & (part == p)
                if sel.any():
                    parts.add(p, batch.indices[sel], batch.values[sel], batch.dense[sel],
                              batch.y[sel].astype(np.float32))
        field_names = list(src.schema.field_names)
        dense_names = list(src.schema.dense_names)
        skipped = int(getattr(src, "skipped_rows", 0) or 0)
        fmt = str(getattr(src.schema, "name", None) or getattr(src, "format", None) or format)
        kinds = src.schema.column_kinds()
        unparsed = src.encoder.unparsed_numbers()
    if parts is None or not any(parts.chunks):
        raise ValueError(f"{path}: no labelled rows to reproduce on")
    sizes = [sum(len(c[4]) for c in part) for part in parts.chunks]
    indices, values, value_cols, dense, y = parts.assemble()
    n = len(y)
    if split == "chrono":
        n_test = max(1, int(round(n * SPLIT_TEST)))
        n_valid = max(1, int(round((n - n_test) * SPLIT_VALID)))
        n_train, n_valid = n - n_test - n_valid, n_valid
    else:
        n_train, n_valid = sizes[0], sizes[1]
    if n_train < 2 or n_valid < 1 or n - n_train - n_valid < 1:
        raise ValueError(f"{path}: {n} labelled rows are too few to split 9:1")
    table_rows = renumber_rows(indices, bits)
    return EncodedLog(indices, values, value_cols, dense, y, n_train, n_valid, field_names,
                      dense_names, table_rows, bits, skipped, fmt, kinds, unparsed)
