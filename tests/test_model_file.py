"""Model files (`replay --save-model`) and `streamfusion score`: exact, compact, refused whole
when damaged."""

import doctest
import gzip

import numpy as np
import pyarrow.csv as pcsv
import pytest

from streamfusion import checkpoint, model_file, replay
from streamfusion.cli import build_parser, main
from streamfusion.data import open_source
from streamfusion.data.encoder import Encoder, new_state
from streamfusion.data.generate import generate
from streamfusion.data.schema import avazu_schema
from streamfusion.model_file import FrozenEncoder, load_model, save_model

ROWS = 30_000
SMALL_MODEL = ["--trees", "20", "--leaves", "15", "--refit-every", "10000", "--first-fit", "4000",
               "--window", "20000", "--hidden", "32,32", "--bits", "16", "--quiet",
               "--batch-size", "512"]
MARGINS = ("margin", "base_margin", "residual_margin")


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "avazu.csv"
    generate(path, format="avazu", rows=ROWS, seed=11)
    return path


def run_replay(path, model_path, *flags):
    """A replay in this process: its final model and encoder stay inspectable."""
    args = build_parser().parse_args(["replay", "--file", str(path), *SMALL_MODEL, *flags])
    run = replay.Replay(args)
    run.run()
    run.write_model(model_path)  # as `replay --save-model` does after the run
    return run


def own_scores(run, path):
    """The replay's final model scoring every row of ``path`` (encoder frozen)."""
    blocks = []
    with open_source(path, encoder=FrozenEncoder.of(run.source.encoder)) as src:
        while (b := src.next_batch(3000)) is not None:
            s = run.model.score(b)
            blocks.append(np.stack([s.margin, s.base_margin, s.residual_margin]))
    return np.concatenate(blocks, axis=1)


def read_scores(csv_path):
    types = {"id": "string", **{k: "float32" for k in MARGINS}, "p_click": "float64"}
    return pcsv.read_csv(csv_path, convert_options=pcsv.ConvertOptions(column_types=types))


@pytest.fixture(scope="module")
def trained(stream, tmp_path_factory):
    model_path = tmp_path_factory.mktemp("model") / "model.sfm"
    run = run_replay(stream, model_path)
    return run, model_path


def test_score_equals_the_replays_final_model_bit_for_bit(trained, stream, tmp_path, capsys):
    run, model_path = trained
    out = tmp_path / "preds.csv"
    assert main(["score", "--model", str(model_path), "--file", str(stream),
                 "--out", str(out)]) == 0
    assert "30,000 rows" in capsys.readouterr().err
    got = read_scores(out)
    want = own_scores(run, stream)
    assert got.num_rows == ROWS
    for i, name in enumerate(MARGINS):
        assert np.array_equal(got[name].to_numpy(), want[i]), name
    # the ids are the log's own id column, in file order
    ids = [line.split(",", 1)[0] for line in stream.read_text().splitlines()[1:]]
    assert got["id"].to_pylist() == ids
    p = got["p_click"].to_numpy()
    assert np.allclose(p, 1 / (1 + np.exp(-want[0].astype(np.float64))), rtol=1e-12)
    # both stages are in the model: the trees went live and the learner moved
    assert np.std(want[1]) > 0 and np.std(want[2]) > 0


def test_scoring_is_pure_and_threads_do_not_change_it(trained, stream, tmp_path):
    _, model_path = trained
    outs = []
    for i, threads in enumerate(("1", "1", "2")):
        out = tmp_path / f"p{i}.csv"
        assert main(["score", "--model", str(model_path), "--file", str(stream),
                     "--out", str(out), "--threads", threads]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_round_trip_keeps_every_margin(trained, stream, tmp_path):
    run, model_path = trained
    saved = load_model(model_path)
    again = save_model(tmp_path / "again.sfm", saved.model, saved.encoder)
    reloaded = load_model(again)
    with open_source(stream, encoder=reloaded.encoder) as src:
        batch = src.next_batch(5000)
    a = saved.model.chain.margins(batch)
    b = reloaded.model.chain.margins(batch)
    c = run.model.chain.margins(batch)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert reloaded.model.chain.kinds == run.model.chain.kinds == ["trees", "deepfm"]
    assert reloaded.config == saved.config and reloaded.schema == avazu_schema()
    assert saved.meta["events_learned"] == run.model.events_learned > 0


def test_criteo_sample_without_id_column_scores_by_line(shared_data, tmp_path):
    path = shared_data / "criteo" / "sample.train"
    run = run_replay(path, tmp_path / "criteo.sfm", "--refit-every", "3000", "--window", "5000")
    out = tmp_path / "preds.csv"
    assert main(["score", "--model", str(tmp_path / "criteo.sfm"), "--file", str(path),
                 "--out", str(out)]) == 0
    got = read_scores(out)
    want = own_scores(run, path)
    assert np.array_equal(got["margin"].to_numpy(), want[0])
    assert got["id"].to_pylist()[:3] == ["1", "2", "3"]  # no id column: line numbers
    # Criteo's test files have no label column: the same rows score the same
    unlabelled = tmp_path / "test.txt"
    unlabelled.write_text("".join(line.split("\t", 1)[1] for line in
                                  path.read_text().splitlines(keepends=True)[:500]))
    assert main(["score", "--model", str(tmp_path / "criteo.sfm"), "--file", str(unlabelled),
                 "--out", str(tmp_path / "test.out")]) == 0
    assert np.array_equal(read_scores(tmp_path / "test.out")["margin"].to_numpy(), want[0][:500])


def test_model_file_grows_with_touched_rows_not_with_bits(stream, tmp_path):
    rows = "8000"
    small = tmp_path / "b14.sfm"
    big = tmp_path / "b22.sfm"
    run_replay(stream, small, "--rows", rows, "--bits", "14", "--model", "fm")
    run_replay(stream, big, "--rows", rows, "--bits", "22", "--model", "fm")
    # a 2**22-row table is 256 times a 2**14-row one; the files hold the touched rows only
    assert big.stat().st_size < 2 * small.stat().st_size
    state = checkpoint.load_file(big, magic=model_file.MAGIC, fmt=model_file.FORMAT,
                                 version=model_file.FORMAT_VERSION, what="model file")
    touched = len(state["stages"][0]["rows"])
    assert 0 < touched < 8000 * 23  # at most one row per (event, field)
    assert big.stat().st_size < 4 * 40 * touched + 200_000  # ~ (4-byte id + 9 floats) a row


def corrupt(path, tmp_path, how):
    raw = bytearray(path.read_bytes())
    bad = tmp_path / f"{how}.sfm"
    if how == "flipped":
        raw[len(raw) // 2] ^= 0x40
    elif how == "truncated":
        raw = raw[: len(raw) - 1000]
    elif how == "header":
        raw[20] ^= 0x01
    elif how == "empty":
        raw = bytearray()
    bad.write_bytes(bytes(raw))
    return bad


@pytest.mark.parametrize("how,message", [("flipped", "checksum mismatch"),
                                         ("truncated", "checksum mismatch"),
                                         ("header", "model file"),
                                         ("empty", "not a streamfusion model file")])
def test_damaged_model_file_is_refused_in_one_line(trained, stream, tmp_path, capsys, how,
                                                   message):
    _, model_path = trained
    bad = corrupt(model_path, tmp_path, how)
    out = tmp_path / "preds.csv"
    assert main(["score", "--model", str(bad), "--file", str(stream), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and str(bad) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_foreign_files_are_refused(trained, stream, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, {"kind": "replay"})
    for foreign, message in ((ckpt / checkpoint.STATE_FILE, "bad magic bytes"),
                             (stream, "bad magic bytes"),
                             (tmp_path / "missing.sfm", "does not exist"),
                             (tmp_path, "is a directory")):
        assert main(["score", "--model", str(foreign), "--file", str(stream),
                     "--out", str(tmp_path / "p.csv")]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_malformed_row_names_file_line_and_reason(trained, stream, tmp_path, capsys):
    _, model_path = trained
    lines = stream.read_text().splitlines()[:3000]
    lines[1234] = lines[1234].rsplit(",", 2)[0]  # two columns short
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("\n".join(lines) + "\n")
    out = tmp_path / "p.csv"
    assert main(["score", "--model", str(model_path), "--file", str(bad),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "bad.csv.gz, line 1235: wrong column count" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["score", "--model", str(model_path), "--file", str(bad), "--out", str(out),
                 "--on-error", "skip"]) == 0
    got = read_scores(out)
    ids = [ln.split(",", 1)[0] for i, ln in enumerate(lines) if i not in (0, 1234)]
    assert got["id"].to_pylist() == ids


def test_unlabelled_rows_are_scored(trained, stream, tmp_path):
    _, model_path = trained
    lines = stream.read_text().splitlines()[:101]
    blank = [lines[0]] + [",".join(["" if j == 1 else c for j, c in enumerate(ln.split(","))])
                          for ln in lines[1:]]
    dropped = [",".join(c for j, c in enumerate(ln.split(",")) if j != 1) for ln in lines]
    (tmp_path / "nolabel.csv").write_text("\n".join(blank) + "\n")
    (tmp_path / "label.csv").write_text("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "nocolumn.csv.gz", "wt") as f:  # no click column at all
        f.write("\n".join(dropped) + "\n")
    for name in ("nolabel.csv", "label.csv", "nocolumn.csv.gz"):
        assert main(["score", "--model", str(model_path), "--file",
                     str(tmp_path / name), "--out", str(tmp_path / f"{name}.out")]) == 0
    want = (tmp_path / "label.csv.out").read_bytes()
    assert want.count(b"\n") == 101
    assert (tmp_path / "nolabel.csv.out").read_bytes() == want
    assert (tmp_path / "nocolumn.csv.gz.out").read_bytes() == want


def test_frozen_encoding_reads_counts_and_never_writes_them():
    lines = [b"1,0,14102100,1005,0,a,b,c,d,e,f,g,h,i,1,2,3,4,5,6,7,8,9,10",
             b"2,1,14102100,1005,0,a,x,c,d,e,f,g,h,i,1,2,3,4,5,6,7,8,9,10"]
    learning = Encoder(avazu_schema(header=False), bits=12)
    out = learning.new_arrays(2)
    learning.parse_into(lines[0] + b"\n", 0, len(lines[0]) + 1, 1, out, 0, new_state())
    frozen = FrozenEncoder.of(learning)
    counts, seen = learning.counts.copy(), int(learning.seen[0])
    buf = b"\n".join(lines) + b"\n"
    fout = frozen.new_arrays(2)
    assert frozen.parse_into(buf, 0, len(buf), 2, fout, 0, new_state()) == 2
    assert np.array_equal(learning.counts, counts) and learning.seen[0] == seen
    # each frozen row gets what the learning encoder gives it as the next row seen
    for i, line in enumerate(lines):
        probe = Encoder.from_state_dict(learning.state_dict())
        pout = probe.new_arrays(1)
        probe.parse_into(line + b"\n", 0, len(line) + 1, 1, pout, 0, new_state())
        assert np.array_equal(fout["dense"][i], pout["dense"][0])
        assert np.array_equal(fout["indices"][i], pout["indices"][0])
    # a value seen once before and one never seen differ (site_domain b vs x)
    assert not np.array_equal(fout["dense"][0], fout["dense"][1])


@pytest.mark.parametrize("flags", [["--model", "gbdt"], ["--model", "lr"],
                                   ["--model", "nnres-gbdt"], ["--iterations", "2"],
                                   ["--tree-codes", "8", "--residual", "fm"],
                                   ["--no-standardize", "--model", "deepfm"]],
                         ids=lambda f: " ".join(f))
def test_every_chain_scores_as_the_replay_did(stream, tmp_path, flags):
    run = run_replay(stream, tmp_path / "m.sfm", "--rows", "9000", *flags)
    out = tmp_path / "p.csv"
    assert main(["score", "--model", str(tmp_path / "m.sfm"), "--file", str(stream),
                 "--out", str(out)]) == 0
    got = read_scores(out)
    want = own_scores(run, stream)
    for i, name in enumerate(MARGINS):
        assert np.array_equal(got[name].to_numpy(), want[i]), name


def test_libsvm_logs_score_as_the_replay_did(tmp_path):
    rng = np.random.default_rng(3)
    lines = []
    for _ in range(6000):
        ids = np.sort(rng.choice(200, size=rng.integers(3, 12), replace=False))
        y = int(rng.random() < (0.7 if 7 in ids else 0.2))
        lines.append(f"{y} " + " ".join(f"{i}:{rng.random():.3f}" for i in ids))
    path = tmp_path / "train.libsvm"
    path.write_text("\n".join(lines) + "\n")
    run = run_replay(path, tmp_path / "m.sfm", "--format", "libsvm")
    out = tmp_path / "p.csv"
    assert main(["score", "--model", str(tmp_path / "m.sfm"), "--file", str(path),
                 "--out", str(out)]) == 0
    got = read_scores(out)
    assert np.array_equal(got["margin"].to_numpy(), own_scores(run, path)[0])


def test_an_unwritable_save_model_path_is_refused_before_any_work(stream, tmp_path, capsys):
    target = tmp_path / "adir"
    target.mkdir()
    code = main(["replay", "--file", str(stream), *SMALL_MODEL, "--save-model", str(target)])
    err = capsys.readouterr().err
    assert code == 1 and "--save-model" in err and "is a directory" in err


def test_docstring_examples_run():
    result = doctest.testmod(model_file)
    assert result.attempted >= 8 and result.failed == 0


def test_a_kafka_snapshot_is_the_model_file_and_scores_alike(trained, stream):
    from streamfusion.kafka import snapshot_wire as wire

    run, _ = trained
    raw = wire.pack_model(run.model, run.source.encoder)
    model, encoder = wire.unpack_model(raw)
    # no optimizer moments, window or pending refit: a fraction of the whole state
    state = checkpoint.loads(raw, "snapshot", 1 << 30, magic=model_file.MAGIC,
                             fmt=model_file.FORMAT, version=model_file.FORMAT_VERSION)
    keys = {k for stage in state["stages"] for k in stage}
    assert not keys & {"table_m", "table_v", "dense_m", "dense_v", "window_X", "pending"}
    assert len(raw) * 4 < len(checkpoint.dumps(run.model.state_dict(), compress=True))
    assert model_file.model_from_bytes(raw, "snapshot", 1 << 30).config == run.model.config
    assert encoder.schema == run.source.encoder.schema and type(encoder) is Encoder
    blocks = []
    with open_source(stream, encoder=FrozenEncoder.of(encoder)) as src:
        while (b := src.next_batch(3000)) is not None:
            s = model.score(b)
            blocks.append(np.stack([s.margin, s.base_margin, s.residual_margin]))
    assert np.array_equal(np.concatenate(blocks, axis=1), own_scores(run, stream))
    with pytest.raises(wire.BadSnapshot, match="malformed model snapshot"):
        wire.unpack_model(raw[:-1] + bytes([raw[-1] ^ 1]))
