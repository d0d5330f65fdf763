"""``streamfusion score``: score a click log with a saved model, one CSV row per event.

The log is read and encoded by the C tokenizer exactly as replay encodes it, with the model's
schema and frozen count tables (:class:`~streamfusion.model_file.FrozenEncoder`); every stage
scores each batch and the rows are written as ``id,p_click,margin,base_margin,
residual_margin`` (the log's ``id`` column when its schema has one, else the line number).
The log may lack the label column (or leave it empty). Scoring changes nothing: the same file
scored twice gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from streamfusion import argtypes as at
from streamfusion.checkpoint import CheckpointError
from streamfusion.data import ParseError, open_source
from streamfusion.data.encoder import ST_POS
from streamfusion.data.schema import Schema, split_cells
from streamfusion.model_file import FrozenEncoder, SavedModel, load_model

OUT_COLUMNS = ("id", "p_click", "margin", "base_margin", "residual_margin")
# rows scored at once: large enough to amortise the per-batch Python work, small enough that
# the MLP's activations stay in cache-sized blocks (about 8 MB at 128-128)
SCORE_ROWS = 16_384


class _IdColumn:
    """Collects one column's cells from the exact byte ranges the tokenizer encoded.

    The tokenizer reports the range of whole lines it turned into rows; the cells are cut out
    of the same bytes with numpy (no Python loop per row), so ids cost little beside parsing.
    An id cell is read as it stands (a quoted id keeps its quotes).
    """

    def __init__(self, column: int, ncols: int, delimiter: str) -> None:
        self.column, self.last = column, column == ncols - 1
        self.delim = ord(delimiter)
        self.parts: list[tuple[np.ndarray, bytes]] = []

    def __call__(self, buf: Any, start: int, stop: int, rows: int) -> None:
        a = np.frombuffer(buf, np.uint8, count=stop - start, offset=start)
        nl = np.flatnonzero(a == 10)
        starts = np.concatenate(([0], nl + 1))
        ends = np.concatenate((nl, [len(a)]))
        ends = ends - ((ends > starts) & (a[np.maximum(ends - 1, 0)] == 13))  # CRLF
        keep = ends > starts  # blank lines are not rows
        starts, ends = starts[keep], ends[keep]
        if len(starts) != rows:
            raise ValueError(f"id column: {len(starts)} lines for {rows} rows")
        dl = np.flatnonzero(a == self.delim)
        k = np.searchsorted(dl, starts)
        lo = starts if self.column == 0 else dl[k + self.column - 1] + 1
        hi = ends if self.last else dl[k + self.column]
        lens = hi - lo
        off = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        take = np.repeat(lo - off[:-1], lens) + np.arange(off[-1])
        self.parts.append((off, a[take].tobytes()))

    def take(self, rows: int) -> Any:
        """The ids of the next ``rows`` rows, as a pyarrow string array."""
        import pyarrow as pa

        arrays, got = [], 0
        while got < rows:
            off, data = self.parts.pop(0)
            n = len(off) - 1
            if got + n > rows:  # the rest belongs to the next batch
                cut = rows - got
                self.parts.insert(0, (off[cut:] - off[cut], data[off[cut]:]))
                off, data, n = off[:cut + 1], data[:off[cut]], cut
            arrays.append(pa.StringArray.from_buffers(
                n, pa.py_buffer(off.astype(np.int32)), pa.py_buffer(data)))
            got += n
        return pa.concat_arrays(arrays) if len(arrays) != 1 else arrays[0]


class _CapturingEncoder(FrozenEncoder):
    """A frozen encoder that hands each encoded byte range to ``on_lines``."""

    on_lines: Any = None

    def parse_into(self, buf, start, end, max_rows, out, offset, state,
                   label_missing_ok=True):  # noqa: ANN001 - the Encoder's signature
        rows = super().parse_into(buf, start, end, max_rows, out, offset, state, True)
        if self.on_lines is not None and rows:
            self.on_lines(buf, start, int(state[ST_POS]), rows)
        return rows


def _first_line(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gz else open)(path, "rb") as f:
        return f.readline(1 << 20).rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf")


def log_schema(schema: Schema, path: str | os.PathLike) -> Schema:
    """``schema``, or ``schema`` without its label column when the log has none (a log to
    score usually has no labels: its first line names, or counts, every column but the
    label)."""
    if schema.is_svm or schema.label is None:
        return schema
    first = _first_line(path).decode("utf-8", "replace")
    cells = split_cells(first, schema.delimiter)
    kept = tuple(c for c in schema.columns if c.kind != "label")
    if (len(cells) != len(kept)
            or (schema.header and cells != [c.name for c in kept])):
        return schema  # the open checks the header and the rows say what is wrong
    return replace(schema, columns=kept)


def score_batches(saved: SavedModel, path: str | os.PathLike, rows: int = SCORE_ROWS,
                  on_error: str = "fail") -> Iterator[dict[str, Any]]:
    """Score the log at ``path``: yields ``{"id", "p_click", "margin", "base_margin",
    "residual_margin"}`` column blocks in file order. ``ParseError`` names a malformed row."""
    enc = saved.encoder
    schema = log_schema(enc.schema, path)
    # the same fields, salts and tree columns (a label feeds neither), the same count tables
    capturing = _CapturingEncoder(schema, enc.bits, enc.seed, enc.count_bits)
    capturing.counts, capturing.seen = enc.counts, enc.seen
    names = [c.name for c in schema.columns]
    ids = None
    if "id" in names and not schema.is_svm:
        ids = _IdColumn(names.index("id"), len(names), schema.delimiter)
        capturing.on_lines = ids
    with open_source(path, encoder=capturing, on_error=on_error) as src:
        while (batch := src.next_batch(rows)) is not None:
            s = saved.model.score(batch)
            yield {"id": batch.line if ids is None else ids.take(len(batch)),
                   "p_click": s.p, "margin": s.margin, "base_margin": s.base_margin,
                   "residual_margin": s.residual_margin}


def score_file(saved: SavedModel, path: str | os.PathLike, out: str | os.PathLike,
               rows: int = SCORE_ROWS, on_error: str = "fail") -> int:
    """Write the scores of the log at ``path`` to the CSV ``out`` (atomically); returns the
    number of rows scored."""
    import pyarrow as pa
    from pyarrow import csv

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    n = 0
    # Formatting numbers as text costs about as much as scoring them: a writer thread (pyarrow
    # releases the GIL) formats block i while the next block is parsed and scored.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        with open(tmp, "wb") as sink:
            sink.write((",".join(OUT_COLUMNS) + "\n").encode())
            writer, pending = None, None
            for block in score_batches(saved, path, rows, on_error):
                table = pa.table({k: block[k] for k in OUT_COLUMNS})
                if writer is None:
                    writer = csv.CSVWriter(sink, table.schema, write_options=csv.WriteOptions(
                        include_header=False, quoting_style="none"))
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write_table, table)
                n += table.num_rows
            if pending is not None:
                pending.result()
            if writer is not None:
                writer.close()
        os.replace(tmp, out)
    finally:
        pool.shutdown(wait=True)
        tmp.unlink(missing_ok=True)
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="PATH",
                        help="model file written by replay --save-model (default: none, "
                        "required)")
    parser.add_argument("--file", type=Path, required=True,
                        help="click log to score, in the model's format (default: none, "
                        "required)")
    parser.add_argument("--out", type=Path, required=True,
                        help="CSV of id,p_click,margin,base_margin,residual_margin (default: "
                        "none, required)")
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="a malformed row: stop with its file, line and reason, or skip "
                        "it")
    parser.add_argument("--threads", type=at.positive_int, default=os.cpu_count() or 1,
                        help="threads of the learner and tree kernels (scores do not depend "
                        "on it; default: the CPUs of this machine)")


def run(args: argparse.Namespace) -> int:
    from streamfusion.outputs import check_output

    try:
        if not args.file.is_file():
            raise ValueError(f"--file {args.file}: no such file")
        check_output(args.out, "--out")
        saved = load_model(args.model, threads=args.threads)
        n = score_file(saved, args.file, args.out, on_error=args.on_error)
    except (ParseError, CheckpointError, ValueError, OSError) as exc:
        print(f"streamfusion score: {exc}", file=sys.stderr)
        return 1
    print(f"streamfusion score: {n:,} rows -> {args.out}", file=sys.stderr)
    return 0
