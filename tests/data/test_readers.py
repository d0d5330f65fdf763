"""Streaming readers: real samples, bad input, gzip, seek/position, chunking, Kafka records."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion import _parse
from streamfusion.data import Encoder, ParseError, avazu_schema, open_source, read_all
from streamfusion.data.readers import log_schema
from streamfusion.data.schema import AVAZU_COLUMNS

HEADER = ",".join(AVAZU_COLUMNS)
HEXES = ["1fbe01fe", "f3845767", "28905ebd", "ecad2386", "7801e8d9", "07d7df22", "a99f214a",
         "ddd2926e", "44956a24"]


def avazu_line(i: int, hour: int = 14102100, click: int | None = None) -> str:
    """A deterministic Avazu row with varied categories."""
    hexes = [h[:-2] + f"{(i * (k + 3)) % 13:02x}" for k, h in enumerate(HEXES)]
    c = i % 2 if click is None else click
    return (f"{1000 + i},{c},{hour},1005,{i % 2},{','.join(hexes)},1,{i % 3},"
            f"{15000 + i % 7},320,50,1722,0,35,{-1 if i % 4 else 100084},79")


def avazu_text(n: int, start_hour: int = 14102100) -> str:
    return HEADER + "\n" + "".join(avazu_line(i, start_hour + (i * 24 // n)) + "\n"
                                   for i in range(n))


def same_batches(a, b):
    for name in ("indices", "values", "dense", "y", "line", "time"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# ----------------------------------------------------------------- real samples
@pytest.mark.parametrize("rel,rows,positives,fmt", [
    ("avazu/train", 8999, 1563, "avazu"),
    ("avazu/test", 1000, 143, "avazu"),
    ("avazu/avazu_sample.txt", 100, 20, "avazu"),
    ("criteo/sample.train", 10000, 2182, "criteo"),
    ("criteo/train.tiny.csv", 1999, 418, "criteo"),
    ("criteo/criteo_sample.txt", 200, 49, "criteo"),
])
def test_real_samples_parse_fully(shared_data, rel, rows, positives, fmt):
    with open_source(shared_data / rel) as src:
        assert src.schema.name == fmt
        b = read_all(shared_data / rel)
    assert len(b) == rows
    assert int(b.y.sum()) == positives
    assert np.isfinite(b.values).all()
    assert not np.isinf(b.dense).any()  # NaN: a missing number, for the trees
    assert (b.indices >= 0).all() and (b.indices < 2**20).all()
    if fmt == "avazu":
        assert (b.time == 14102100).all()


def test_real_criteo_unlabelled_and_train_tiny_equal_train(shared_data):
    test = read_all(shared_data / "criteo/sample.test")
    assert len(test) == 10000 and np.isnan(test.y).all()
    tiny = read_all(shared_data / "criteo/train.tiny.csv")
    train = read_all(shared_data / "criteo/sample.train")
    # SOURCES.md: train.tiny.csv holds the rows of sample.train[:1999]
    np.testing.assert_array_equal(tiny.indices, train.indices[:1999])
    np.testing.assert_array_equal(tiny.dense, train.dense[:1999])
    np.testing.assert_array_equal(tiny.y, train.y[:1999])


def test_real_csv_with_label(shared_data):
    b = read_all(shared_data / "taobao_ad_display/train_sample.csv", label="clk")
    assert len(b) == 100 and int(b.y.sum()) == 4


# ----------------------------------------------------------------- bad input
BAD_ROWS = {
    "wrong column count": avazu_line(5).rsplit(",", 1)[0],
    "bad label": avazu_line(5).replace(",1,14102100,", ",2,14102100,", 1),
    "bad hour": avazu_line(5).replace(",14102100,", ",14102199,", 1),
    "non-UTF-8": avazu_line(5).replace("1005", "10\xff5"),
}


def write_with_bad(tmp_path, bad: bytes, name="bad.csv"):
    lines = [HEADER.encode()] + [avazu_line(i).encode() for i in range(4)] + [bad] + \
        [avazu_line(i).encode() for i in range(6, 9)]
    p = tmp_path / name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


@pytest.mark.parametrize("reason,bad", [
    (r"wrong column count \(got 23, want 24\)", BAD_ROWS["wrong column count"].encode()),
    (r"bad label \(must be 0, 1, true or false\) in column 'click'",
     BAD_ROWS["bad label"].encode()),
    (r"bad hour \(want YYMMDDHH\) in column 'hour'", BAD_ROWS["bad hour"].encode()),
    ("non-UTF-8 bytes", avazu_line(5).encode().replace(b"1005", b"10\xff5")),
])
def test_bad_row_fail_and_skip(tmp_path, reason, bad):
    p = write_with_bad(tmp_path, bad)
    src = open_source(p)
    first = src.next_batch(100)  # the good rows before the bad one come first
    assert len(first) == 4
    with pytest.raises(ParseError, match=reason) as exc:
        src.next_batch(100)
    assert str(p) in str(exc.value) and "line 6" in str(exc.value)
    assert exc.value.line == 6
    with open_source(p, on_error="skip") as src:
        b = src.next_batch(100)
        assert src.next_batch(100) is None
        assert src.skipped_rows == 1
    assert len(b) == 7 and list(b.line) == [2, 3, 4, 5, 7, 8, 9]


def test_non_numeric_numeric_criteo(tmp_path):
    good = "0\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["ab"] * 26)
    bad = good.replace("\t1\t1\t", "\t1\tx7\t", 1)
    p = tmp_path / "t.txt"
    p.write_text("\n".join([good, good, bad, good]) + "\n")
    with pytest.raises(ParseError, match=r"line 3: not a finite number in column 'I2'"):
        read_all(p)
    b = read_all(p, on_error="skip")
    assert list(b.line) == [1, 2, 4]


def test_skip_mode_leaves_no_trace_in_counts(tmp_path):
    # a bad row's categories must not be counted: phase 1 validates before anything is written
    bad = avazu_line(3).replace(",1,14102100,", ",7,14102100,", 1)
    p1 = write_with_bad(tmp_path, bad.encode(), "a.csv")
    p2 = tmp_path / "b.csv"
    p2.write_text("\n".join(ln for ln in p1.read_text().splitlines() if ln != bad) + "\n")
    a, b = read_all(p1, on_error="skip"), read_all(p2)
    np.testing.assert_array_equal(a.dense, b.dense)


def test_empty_file(tmp_path):
    for name, data in (("e.csv", b""), ("w.csv", b"\n \n"), ("e.gz", gzip.compress(b""))):
        p = tmp_path / name
        p.write_bytes(data)
        for mode in ("fail", "skip"):
            with pytest.raises(ParseError, match="empty file") as exc:
                open_source(p, on_error=mode)
            assert str(p) in str(exc.value)


def test_gzip_is_transparent_by_magic_bytes(tmp_path):
    text = avazu_text(300)
    plain = tmp_path / "a.csv"
    plain.write_text(text)
    disguised = tmp_path / "b.csv"  # gzip content without a .gz name
    disguised.write_bytes(gzip.compress(text.encode()))
    multi = tmp_path / "c.gz"  # concatenated members, as `cat a.gz b.gz` makes
    raw = text.encode()
    multi.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    ref = read_all(plain)
    for p in (disguised, multi):
        same_batches(read_all(p, chunk_bytes=1000), ref)


def test_truncated_gzip(tmp_path):
    text = avazu_text(2000).encode()
    p = tmp_path / "cut.csv.gz"
    p.write_bytes(gzip.compress(text)[:-4000])
    src = open_source(p, chunk_bytes=4096)
    rows = 0
    with pytest.raises(ParseError, match="truncated gzip stream") as exc:
        while (b := src.next_batch(256)) is not None:
            rows += len(b)
    assert str(p) in str(exc.value) and exc.value.line == rows + 2
    assert 0 < rows < 2000
    with open_source(p, on_error="skip", chunk_bytes=4096) as src:
        with pytest.warns(UserWarning, match="truncated"):
            n = sum(len(b) for b in iter(lambda: src.next_batch(256), None))
        assert n == rows and src.skipped_rows == 1 and src.truncated


def test_header_mismatch(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text(HEADER.replace("site_id", "site") + "\n" + avazu_line(1) + "\n")
    with pytest.raises(ParseError, match="line 1: .*header does not match"):
        open_source(p, format="avazu")
    # not Avazu: a CSV whose label is its 0/1 column named click
    with pytest.warns(UserWarning, match="the label column is 'click'"):
        assert log_schema(p).name == "csv"
    assert log_schema(p, label="click").name == "csv"  # any CSV with a label


def test_crlf_blank_lines_and_missing_final_newline(tmp_path):
    lines = avazu_text(20).splitlines()
    p = tmp_path / "crlf.csv"
    p.write_bytes(("\r\n".join(lines[:10]) + "\r\n\r\n" + "\n".join(lines[10:])).encode())
    b = read_all(p)
    ref = read_all(_write(tmp_path / "ref.csv", "\n".join(lines) + "\n"))
    np.testing.assert_array_equal(b.indices, ref.indices)
    assert list(b.line[8:10]) == [10, 12]  # the blank line still counts as a line


def _write(p, text):
    p.write_text(text)
    return p


# ----------------------------------------------------------------- position / seek / chunks
@pytest.mark.parametrize("compress", [False, True])
def test_seek_position_round_trip(tmp_path, compress):
    raw = avazu_text(500).encode()
    p = tmp_path / ("a.csv.gz" if compress else "a.csv")
    p.write_bytes(gzip.compress(raw) if compress else raw)
    src = open_source(p, chunk_bytes=3000)
    src.next_batch(123)
    pos, enc_state = src.position(), src.encoder.state_dict()
    after = [src.next_batch(77) for _ in range(3)]
    assert pos["line"] == 124 and pos["rows"] == 123
    # same source
    src.seek(pos)
    src.encoder.load_state_dict(enc_state)
    for want in after:
        same_batches(src.next_batch(77), want)
    # a fresh source, as a resume does: encoder from the checkpoint, then seek
    fresh = open_source(p, encoder=Encoder.from_state_dict(enc_state), chunk_bytes=5000)
    fresh.seek(pos)
    for want in after:
        same_batches(fresh.next_batch(77), want)
    assert fresh.position() == src.position()


def test_seek_rejects_foreign_position(tmp_path):
    src = open_source(_write(tmp_path / "a.csv", avazu_text(10)))
    with pytest.raises(ValueError):
        src.seek({"bytes": 10})
    with pytest.raises(ValueError, match="format"):
        src.seek({**src.position(), "format": "criteo"})


REF_TEXT = avazu_text(400)


@given(st.integers(1, 20000), st.integers(1, 500), st.booleans())
def test_chunk_boundaries_do_not_change_results(tmp_path_factory, chunk, batch_rows, compress):
    d = tmp_path_factory.mktemp("chunks")
    raw = REF_TEXT.encode()
    p = d / "a.csv"
    p.write_bytes(gzip.compress(raw) if compress else raw)
    ref = read_all(p, chunk_bytes=1 << 22, batch_rows=4096)
    with open_source(p, chunk_bytes=chunk) as src:
        got = list(iter(lambda: src.next_batch(batch_rows), None))
    assert all(len(b) <= batch_rows for b in got)
    same_batches(type(ref).concat(got), ref)


def test_out_of_order_is_counted_not_fatal(tmp_path):
    hours = [14102100, 14102101, 14102100, 14102103, 14102102, 14102103]
    text = HEADER + "\n" + "".join(avazu_line(i, h) + "\n" for i, h in enumerate(hours))
    with open_source(_write(tmp_path / "o.csv", text)) as src:
        b = src.next_batch(100)
        assert len(b) == 6 and src.out_of_order == 2
        assert list(b.time) == hours


# ----------------------------------------------------------------- Kafka records
def to_record(line: str) -> dict:
    cells = line.split(",")
    rec: dict = dict(zip(AVAZU_COLUMNS, cells, strict=True))
    for k in ("click", "hour", "C1", "banner_pos", "C14", "C20"):
        rec[k] = int(rec[k])  # numbers may arrive as JSON numbers
    return rec


def test_encode_records_equals_file_parsing(tmp_path):
    text = avazu_text(200)
    ref = read_all(_write(tmp_path / "a.csv", text))
    records = [to_record(ln) for ln in text.splitlines()[1:]]
    enc = Encoder(avazu_schema())
    b1, err1 = enc.encode_records(records[:120])
    b2, err2 = enc.encode_records(records[120:])
    assert err1 == [] and err2 == []
    got = type(b1).concat([b1, b2])
    for name in ("indices", "values", "dense", "y", "time"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    assert list(b1.line) == list(range(120))
    assert b1.ids[:2] == ["1000", "1001"]


def test_encode_records_errors_and_missing_label():
    enc = Encoder(avazu_schema())
    good = to_record(avazu_line(1))
    unlabelled = {k: v for k, v in good.items() if k != "click"}
    records = [
        good,
        {k: v for k, v in good.items() if k != "site_id"},          # missing = missing value
        {**good, "site_id": "a,b"},                                  # quoted, as in a CSV
        {**good, "device_ip": "x\ny"},                               # newline inside
        {**good, "C1": [1005]},                                      # wrong type
        {**good, "C14": 1.5},                                        # non-integer code
        {**good, "hour": 14109999},                                  # bad hour (C pass)
        {**good, "click": 3},                                        # bad label (C pass)
        unlabelled,
        {**good, "site_id": None, "C1": 1005.0},                     # None = missing token
        "not a dict",
    ]
    batch, errors = enc.encode_records(records)
    assert [p for p, _ in errors] == [3, 4, 5, 6, 7, 10]
    reasons = dict(errors)
    assert "line break" in reasons[3]
    assert "wrong type" in reasons[4] and "wrong type" in reasons[5]
    assert "bad hour" in reasons[6] and "bad label" in reasons[7]
    assert list(batch.line) == [0, 1, 2, 8, 9]
    assert batch.y[0] == 1 and np.isnan(batch.y[3])
    f = avazu_schema().field_names.index("site_id")
    assert batch.indices[1, f] == _parse.hash_value(f, b"", 20, 0)  # absent: missing
    assert batch.indices[2, f] == _parse.hash_value(f, b"a,b", 20, 0)
    assert batch.indices[4, f] == _parse.hash_value(f, b"", 20, 0)


# ----------------------------------------------------------------- bounded memory, state
def test_count_table_is_fixed_and_saturates(tmp_path):
    enc = Encoder(avazu_schema(), count_bits=10)
    lines = [avazu_line(i).replace(HEXES[7][:-2], f"{i:06x}") for i in range(5000)]
    src = open_source(_write(tmp_path / "m.csv", HEADER + "\n" + "\n".join(lines) + "\n"),
                      encoder=enc)
    while src.next_batch(1000) is not None:
        pass
    assert enc.counts.shape == (1024,) and enc.counts.dtype == np.int32
    # saturation: the slot of device_ip "x" sits at the int32 maximum and stays there
    f = avazu_schema().field_names.index("device_ip")
    slot = _parse.hash64(b"x", _parse.field_salt(f, 0)) & 1023
    enc.counts[slot] = np.iinfo(np.int32).max - 1
    rec = {**to_record(avazu_line(1)), "device_ip": "x"}
    enc.seen[0] = 2**40  # the share's denominator: rows seen
    b, _ = enc.encode_records([rec, rec, rec])
    d = avazu_schema().dense_names.index("device_ip")
    top = np.iinfo(np.int32).max
    assert b.dense[:, d].tolist() == [np.float32(top * (1e6 / (2**40 + i))) for i in (1, 2, 3)]
    assert enc.counts[slot] == np.iinfo(np.int32).max


def test_encoder_state_dict_validation():
    enc = Encoder(avazu_schema(), bits=16, seed=3, count_bits=8)
    enc.counts[5] = 9
    enc.seen[0] = 12
    state = enc.state_dict()
    other = Encoder(avazu_schema(), bits=16, seed=3, count_bits=8)
    other.load_state_dict(state)
    assert other.counts[5] == 9 and other.seen[0] == 12
    for bad in ({**state, "bits": 17}, {**state, "seed": 4}, {**state, "version": 99},
                {**state, "counts": state["counts"][:-1]},
                {**state, "counts": state["counts"].astype(np.int64)},
                {**state, "schema": {**state["schema"], "header": False}},
                {**state, "seen": -1}, {**state, "seen": 1.5}, {**state, "seen": None}):
        fresh = Encoder(avazu_schema(), bits=16, seed=3, count_bits=8)
        with pytest.raises(ValueError):
            fresh.load_state_dict(bad)
        assert fresh.counts.sum() == 0 and fresh.seen[0] == 0  # nothing half-loaded


def test_quoted_csv_fields(tmp_path):
    """RFC 4180 quoting: a quoted cell is one field whatever commas it holds, and a quoted
    plain value is the same value as its bare form."""
    head = "a,target,colour,n\n"
    rows = [f'{i},{i % 2},"c{i % 3}, dark",{i % 7}' for i in range(40)]
    quoted = tmp_path / "quoted.csv"
    quoted.write_text(head + "\n".join(rows) + '\n41,1,"say ""hi""","3"\n')
    bare = tmp_path / "bare.csv"
    bare.write_text(head + "\n".join(r.replace('"', "").replace(", ", "_") for r in rows)
                    + '\n41,1,say ""hi"",3\n')
    q, b = read_all(quoted, label="target"), read_all(bare, label="target")
    assert len(q) == 41 and q.y.tolist() == b.y.tolist()
    # same fields apart from the colour's spelling: the quoted number parses as a number
    colour = open_source(quoted, label="target").schema.field_names.index("colour")
    cols = [f for f in range(q.indices.shape[1]) if f != colour]
    assert (q.indices[:, cols] == b.indices[:, cols]).all()
    assert len(set(q.indices[:40, colour].tolist())) == 3  # "cK, dark": one value per K
    assert np.array_equal(q.values, b.values)


@pytest.mark.parametrize("line", ['1,1,"open', '1,1,"closed"late', '1,"1"x,2'])
def test_bad_quoting_names_line_and_column(tmp_path, line):
    p = tmp_path / "bad.csv"
    p.write_text("a,target,c\n1,0,x\n" + line + "\n")
    with pytest.raises(ParseError, match=r"bad.csv, line 3: bad quoting .* in column"):
        read_all(p, label="target")


def test_kafka_record_with_a_comma_matches_the_quoted_file_line(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text(HEADER + "\n" + avazu_line(1).replace(",1fbe01", ',"1f,be01', 1)
                 .replace(",f384", '",f384', 1) + "\n")
    from_file = read_all(p)
    enc = Encoder(avazu_schema(), bits=20)
    rec = dict(zip(AVAZU_COLUMNS, avazu_line(1).split(","), strict=True))
    rec["site_id"] = "1f," + rec["site_id"][2:]
    batch, errors = enc.encode_records([rec])
    assert errors == [] and np.array_equal(batch.indices, from_file.indices)
