"""Typing a generic CSV from a large sample: id-like names and high-cardinality integers are
categorical, a numeric column's rare words are counted missing values (never an error), the
counts survive a checkpoint, and ``types`` overrides all of it."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest

from streamfusion.data import Encoder, ParseError, infer_csv_schema, open_source, read_all, readers
from streamfusion.data.schema import (
    DEFAULT_SAMPLE_ROWS,
    ID_MAX_SKEW,
    ID_MIN_DISTINCT,
    MAX_WORD_SHARE,
    ColumnProfile,
    type_sample,
)

ROWS = 3000


def kinds(schema) -> dict[str, tuple[str, str]]:
    return {c.name: (c.kind, c.dense) for c in schema.columns}


def write_csv(tmp_path, header: list[str], rows: list[list[object]], name="t.csv"):
    path = tmp_path / name
    lines = [",".join(header), *(",".join(str(v) for v in r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def mixed_log(rng: np.random.Generator, rows: int = ROWS) -> tuple[list[str], list[list]]:
    """A log whose integer columns differ only by name or cardinality."""
    header = ["clk", "id", "user_id", "adgroupId", "itemid", "url_hash", "customer", "clicks",
              "paid", "price"]
    out = []
    for i in range(rows):
        ad = int(rng.integers(0, 60))  # 60 ids: few enough distinct to look like an amount
        out.append([i % 2, i, ad, ad * 7, ad + 3, ad * 11, 10_000 + int(rng.integers(0, 5000)),
                    int(rng.integers(0, 40)), round(float(rng.random()) * 50, 2),
                    round(float(rng.random()) * 10, 3)])
    return header, out


def test_id_like_names_and_many_distinct_integers_are_categorical(tmp_path, rng):
    header, rows = mixed_log(rng)
    path = write_csv(tmp_path, header, rows)
    got = kinds(open_source(path, label="clk").schema)
    assert got["id"] == ("skip", "none") and got["clk"] == ("label", "none")
    # same integers, named as ids: categorical, the trees get their frequency
    for name in ("user_id", "adgroupId", "itemid", "url_hash"):
        assert got[name] == ("cat", "count"), name
    # ~2,500 distinct integers of 5 digits: ids by their values, the trees keep the number
    assert got["customer"] == ("cat", "int")
    # integers that repeat (40 values) and decimals stay numbers, whatever the name ("paid")
    assert got["clicks"][0] == got["paid"][0] == got["price"][0] == "num"


def test_the_same_integers_without_an_id_name_stay_numeric(tmp_path, rng):
    header, rows = mixed_log(rng)
    header = [h if h != "user_id" else "user_level" for h in header]
    path = write_csv(tmp_path, header, rows)
    assert open_source(path, label="clk").schema.columns[2].kind == "num"


def test_cardinality_threshold_counts_distinct_values(rng):
    # as many evenly spread distinct values as the rule asks for is an id column; one fewer
    # is an amount
    n = 2 * ID_MIN_DISTINCT
    few = [str(i % (ID_MIN_DISTINCT - 1)) for i in range(n)]
    many = [str(i % ID_MIN_DISTINCT) for i in range(n)]
    schema = infer_csv_schema(["y", "a", "b"], zip(["0"] * n, few, many, strict=True), "y")
    assert [c.kind for c in schema.columns] == ["label", "num", "cat"]


def test_counts_stay_numeric_where_ids_of_the_same_cardinality_do_not(rng):
    n = 20_000
    counts = np.floor(rng.lognormal(2.0, 1.5, n)).astype(int)  # a heavy tail: mean >> median
    flat = rng.integers(0, 3000, n)  # ids 0..2999, as a label encoder writes them
    pool = np.sort(rng.integers(10**5, 10**9, 500))  # hashed ids, all of 5+ digits, the
    weights = 1.0 / np.arange(1, 501) ** 1.5  # popular ones the smallest: skewed as counts
    big = rng.choice(pool, n, p=weights / weights.sum())
    signed = rng.integers(-3000, 3000, n)  # negative values: never ids
    assert len(set(counts)) >= ID_MIN_DISTINCT
    cols = [[str(v) for v in c] for c in (counts, flat, big, signed)]
    schema = infer_csv_schema(["y", "clicks7d", "item", "creative", "delta"],
                              zip(["1"] * n, *cols, strict=True), "y")
    assert kinds(schema) == {"y": ("label", "none"), "clicks7d": ("num", "none"),
                             "item": ("cat", "int"), "creative": ("cat", "int"),
                             "delta": ("num", "none")}
    p = ColumnProfile.of(cols[0])
    assert p.mean > ID_MAX_SKEW * p.median and p.low == 0 and not p.ids
    p = ColumnProfile.of(cols[2])
    assert p.mean > ID_MAX_SKEW * p.median and p.low >= 10**5 and p.ids  # by its digits


def test_real_criteo_counts_under_other_names_stay_numeric(shared_data, tmp_path):
    # Criteo's 13 count columns, as a generic CSV: many distinct integers, but counts
    rows = [ln.split("\t") for ln in
            (shared_data / "criteo" / "sample.train").read_text().splitlines()]
    header = ["click", *(f"n{i}" for i in range(1, 14)), *(f"c{i}" for i in range(1, 27))]
    path = write_csv(tmp_path, header, rows)
    got = open_source(path, label="click").schema.column_kinds()
    assert got["n5"] == got["n2"] == got["n9"] == "num"  # 5219, 883, 847 distinct values
    assert [got[f"n{i}"] for i in range(1, 14)].count("num") == 12  # n10: 6 codes
    assert all(got[f"c{i}"] == "cat" for i in range(1, 27))


def test_kinds_come_from_far_beyond_the_first_thousand_rows(tmp_path):
    # the first 1,500 rows look like numbers; the words start later and are common
    rows = [[i % 2, i % 50] for i in range(1500)]
    rows += [[i % 2, "low" if i % 3 else i % 50] for i in range(1500)]
    path = write_csv(tmp_path, ["clk", "grade"], rows)
    assert kinds(open_source(path, label="clk").schema)["grade"] == ("cat", "count")
    # a small sample sees them too: half of it is spread over the rest of the file
    assert kinds(open_source(path, label="clk", sample_rows=1000).schema)["grade"] == (
        "cat", "count")
    assert DEFAULT_SAMPLE_ROWS >= 20_000


def test_type_sample_takes_the_first_rows_and_rows_spread_over_the_rest():
    head = b"h\n" + b"".join(b"%d\n" % i for i in range(1000))
    got = [int(x) for x in type_sample(head, True, 10)[1:]]
    assert got == [0, 1, 2, 3, 4, 5, 253, 502, 751, 999]
    # a head that is not the whole file: the second half comes from the blocks of the rest
    rest = [b"2000\n2001\n", b"5000\n", b"9000\n9001\n9002\n"]
    assert [int(x) for x in type_sample(head[:200], False, 10, rest)[1:]] == [
        0, 1, 2, 3, 4, 2000, 2001, 5000, 9001, 9002]
    assert type_sample(head, True, 5000)[1:] == head.split(b"\n")[1:-1]  # all of a short file


@pytest.mark.parametrize("gz", [False, True])
def test_a_log_longer_than_its_head_is_typed_by_blocks_from_all_of_it(tmp_path, monkeypatch,
                                                                      gz):
    """A column empty in the first half and numeric later, one numeric first and mostly words
    later: typed by blocks read across the file (not for gzip: its head only)."""
    monkeypatch.setattr(readers, "HEAD_BYTES", 32 << 10)
    monkeypatch.setattr(readers, "SPREAD_BLOCK_BYTES", 4 << 10)
    rows = [[i % 2, "" if i < 10_000 else round(i * 0.37 % 91, 2),
             i % 50 if i < 10_000 or i % 3 == 0 else "low", i] for i in range(20_000)]
    path = write_csv(tmp_path, ["clk", "score", "grade", "row"], rows)
    if gz:
        path = tmp_path / "t.csv.gz"
        path.write_bytes(gzip.compress((tmp_path / "t.csv").read_bytes()))
    got = kinds(open_source(path, label="clk").schema)
    # the gzip's first 32 KiB: no scores yet, and grades that are numbers
    assert got["score"] == (("cat", "count") if gz else ("num", "none"))
    assert got["grade"] == (("num", "none") if gz else ("cat", "count"))
    if not gz:  # blocks of whole lines, disjoint, from 1/16 of the way to the very end
        blocks = readers._read_spread(path)
        lines = [ln for b in blocks for ln in b.splitlines()]
        assert len(blocks) == readers.SPREAD_BLOCKS and len(set(lines)) == len(lines)
        assert lines[-1].endswith((b",19998", b",19999"))  # the last whole line read
    # a file only just past its head: still no block twice
    monkeypatch.setattr(readers, "HEAD_BYTES", (tmp_path / "t.csv").stat().st_size - 1)
    lines = [ln for b in readers._read_spread(tmp_path / "t.csv") for ln in b.splitlines()]
    assert len(set(lines)) == len(lines) > 0


def test_rare_words_are_missing_values_counted_and_warned_once(tmp_path, rng):
    words = {100: "unknown", 700: "?", 1900: "NA", 2500: "n.a."}
    rows = [[i % 2, words.get(i, int(rng.integers(18, 90)))] for i in range(ROWS)]
    path = write_csv(tmp_path, ["clk", "age"], rows)
    src = open_source(path, label="clk")
    assert kinds(src.schema)["age"] == ("num", "none") and src.schema.columns[1].lenient
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = read_all(path, label="clk", batch_rows=500)  # several batches: one warning
    about_age = [w for w in caught if "column 'age'" in str(w.message)]
    assert len(about_age) == 1, [str(w.message) for w in caught]
    assert len(b) == ROWS  # no row is an error
    held = np.array(sorted(words))
    assert np.isnan(b.dense[held, 0]).all() and (b.values[held, 0] == 0).all()
    assert np.isfinite(b.dense[np.setdiff1d(np.arange(ROWS), held), 0]).all()
    with open_source(path, label="clk") as src, pytest.warns(UserWarning, match="'age'"):
        while src.next_batch(1000) is not None:
            pass
        assert src.encoder.unparsed_numbers() == {"age": len(words)}


def test_frequent_words_make_a_column_categorical(tmp_path):
    share = int(1 / MAX_WORD_SHARE) // 2  # one word every `share` rows: twice the allowed share
    rows = [[i % 2, "unknown-x" if i % share == 0 else i % 70] for i in range(ROWS)]
    path = write_csv(tmp_path, ["clk", "age"], rows)
    assert kinds(open_source(path, label="clk").schema)["age"] == ("cat", "count")


def test_missing_placeholders_do_not_count_against_the_share():
    cells = ["NA"] * 500 + [str(i) for i in range(500)]
    p = ColumnProfile.of(cells)
    assert (p.values, p.words, p.distinct, p.integer) == (500, 0, 500, True)
    assert (p.low, p.median, p.mean) == (0, 249, 249.5) and p.numeric


def test_a_rejected_row_leaves_no_unparsed_count(tmp_path):
    # the word is in a row that is malformed anyway (bad label): skipped, and not counted
    rows = [[i % 2, i % 40] for i in range(400)] + [[7, "?"], [1, "?"]]
    path = write_csv(tmp_path, ["clk", "n"], rows)
    with (open_source(path, label="clk", on_error="skip") as src,
          pytest.warns(UserWarning, match="column 'n'")):
        while src.next_batch(100) is not None:
            pass
        assert src.skipped_rows == 1
        assert src.encoder.unparsed_numbers() == {"n": 1}


def test_types_override_the_inference(tmp_path, rng):
    header, rows = mixed_log(rng)
    col = header.index("price")
    for r in rows[::10]:
        r[col] = "free"  # 10% words: categorical unless the user says otherwise
    path = write_csv(tmp_path, header, rows)
    assert kinds(open_source(path, label="clk").schema)["price"][0] == "cat"
    src = open_source(path, label="clk",
                      types={"user_id": "num", "clicks": "cat", "customer": "skip",
                             "id": "num", "price": "num"})
    got = kinds(src.schema)
    assert got["user_id"][0] == "num" and got["clicks"] == ("cat", "count")
    assert got["customer"][0] == "skip" and got["id"][0] == "num" and got["price"][0] == "num"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while src.next_batch(1000) is not None:  # the forced column's words: missing values
            pass
    assert src.encoder.unparsed_numbers() == {"price": ROWS // 10}
    with pytest.raises(ParseError, match="no column 'nope'"):
        open_source(path, label="clk", types={"nope": "cat"})


def test_fixed_schemas_stay_strict(tmp_path):
    good = "0\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["ab"] * 26)
    bad = good.replace("\t1\t1\t", "\t1\tunknown\t", 1)
    path = tmp_path / "t.txt"
    path.write_text("\n".join([good, bad, good]) + "\n")
    with pytest.raises(ParseError, match=r"line 2: not a finite number in column 'I2' "
                       r"\(--types I2=num reads such values as missing"):
        read_all(path)
    with pytest.warns(UserWarning, match="column 'I2'"):
        b = read_all(path, types={"I2": "num"})  # the user's choice makes it lenient
    assert len(b) == 3 and np.isnan(b.dense[1, 1])


def test_unparsed_counts_survive_a_checkpoint(tmp_path, rng):
    rows = [[i % 2, "?" if i % 97 == 0 else round(float(rng.random()) * 500, 2)]
            for i in range(ROWS)]
    path = write_csv(tmp_path, ["clk", "amount"], rows)
    want = sum(1 for r in rows if r[1] == "?")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_source(path, label="clk") as src:
            src.next_batch(1234)
            position, state = src.position(), src.encoder.state_dict()
            assert 0 < src.encoder.unparsed[1] < want
    encoder = Encoder.from_state_dict(state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_source(path, label="clk", encoder=encoder) as src:
            src.seek(position)
            while src.next_batch(1000) is not None:
                pass
            assert src.encoder.unparsed_numbers() == {"amount": want}
    assert not caught  # warned before the checkpoint: not again after it
    fresh = Encoder(encoder.schema)
    fresh.load_state_dict(state)
    assert fresh.unparsed_numbers() == {"amount": int(state["unparsed"].sum())}
    with pytest.raises(ValueError, match="unparsed"):
        fresh.load_state_dict({**state, "unparsed": np.zeros(5, np.int64)})


def test_column_kinds_of_the_fixed_schemas():
    from streamfusion.data import avazu_schema, criteo_schema

    avazu = avazu_schema().column_kinds()
    assert (avazu["id"], avazu["click"], avazu["hour"], avazu["C21"]) == (
        "skip", "label", "hour", "cat")
    criteo = criteo_schema().column_kinds()
    assert criteo["label"] == "label" and criteo["I13"] == "num" and criteo["C26"] == "cat"
    assert len(criteo) == 40
