"""The C JSON code gives exactly what the Python reference does: the event decoder
(``_parse.json_events``) and the output formatter (``_parse.json_outputs``).

``KafkaEncoder.decode`` (C first, the per-message Python step for what C leaves) must equal
``KafkaEncoder.decode_each`` (Python only) for every input: same runs, lines, ids, clicks and
rejects. Hypothesis writes JSON text by hand (whitespace, key order, escapes, unicode, unknown
keys, duplicates, numbers and nulls as fields, odd ids and clicks) and then damages some of
it (truncation, bad UTF-8, stray bytes).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamfusion._parse import format_g9, json_events, json_outputs
from streamfusion._parse import json_string as c_json_string

from streamfusion.data.encoder import Encoder
from streamfusion.data.schema import avazu_schema, criteo_schema
from streamfusion.kafka.encoding import Decoded, KafkaEncoder
from streamfusion.kafka.messages import MAX_ID_CHARS
from streamfusion.kafka.outputs import format_outputs, format_outputs_py
from streamfusion.online import Scores

SCHEMAS = {"avazu": avazu_schema(), "criteo": criteo_schema()}
ENCODERS = {name: KafkaEncoder(Encoder(s, bits=12, seed=3)) for name, s in SCHEMAS.items()}


def _plain_event(fmt: str, i: int) -> dict:
    enc = ENCODERS[fmt]
    ev = {"id": f"e{i}"}
    for name in enc.fields:
        ev[name] = "14102100" if name == "hour" else str(i % 7)
    return ev


def assert_same_decoded(got: Decoded, want: Decoded) -> None:
    """Field by field: the runs hold numpy arrays, which dataclass equality cannot compare."""
    assert got.rejects == want.rejects
    assert len(got.runs) == len(want.runs)
    for a, b in zip(got.runs, want.runs, strict=True):
        assert a.msg.dtype == b.msg.dtype and a.y.dtype == b.y.dtype
        np.testing.assert_array_equal(a.msg, b.msg)
        np.testing.assert_array_equal(a.y, b.y)  # NaN == NaN here
        assert a.ids == b.ids
        assert [type(i) for i in a.ids] == [type(i) for i in b.ids]
        assert a.lines == b.lines
        assert repr(a.records) == repr(b.records)  # repr: a NaN in a record equals itself


# ----------------------------------------------------------------------------- JSON by hand
_WS = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n", "  "])
_CHARS = st.sampled_from(list("ab1 ,\t\"\\/\n\r\x00\x1f\x7féß€😀") + ["\u2028", "\ud800"])
_TEXT = st.one_of(st.sampled_from(["", "1", "x", "14102100", "a,b", "é€"]),
                  st.text(_CHARS, max_size=6))
_JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=False, allow_infinity=False), _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=5)
_CLICKS = st.sampled_from([0, 1, None, "absent", 1.0, 0.0, True, False, 2, -1, "1", "-0",
                           "1e0", "01", [1], {}])
_IDS = st.one_of(
    st.sampled_from(["a", "e-1", "", "x" * MAX_ID_CHARS, "x" * (MAX_ID_CHARS + 1),
                     "é" * MAX_ID_CHARS, "é" * (MAX_ID_CHARS + 1), "😀" * MAX_ID_CHARS,
                     "a,b", "a\tb", 'a"b', 7, 0, -3, True, None, 1.5, [1]]),
    _TEXT)


@st.composite
def json_string(draw, s: str, noisy: bool = True) -> str:
    """``s`` as a JSON string literal, escaped one of several ways (or not escaped enough);
    not ``noisy``: as ``json.dumps`` writes it."""
    if not noisy:
        return json.dumps(s, ensure_ascii=False)
    how = draw(st.sampled_from(["raw", "raw", "raw", "ascii", "u-all", "unescaped"]))
    if how == "raw":
        return json.dumps(s, ensure_ascii=False)
    if how == "ascii":
        return json.dumps(s)
    if how == "u-all":  # every BMP character as \\uXXXX, also plain ASCII ones
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in s) + '"'
    return '"' + s + '"'  # quotes, backslashes and controls left bare: mostly invalid JSON


@st.composite
def json_text(draw, v, noisy: bool = True) -> str:
    """Any JSON value written with random whitespace and escapes (when ``noisy``)."""
    if isinstance(v, str):
        return draw(json_string(v, noisy))
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return draw(st.sampled_from([str(v), str(v), f"{v}.0", f"{v}e0"]))
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        items = [draw(_WS) + draw(json_text(x)) + draw(_WS) for x in v]
        return "[" + ",".join(items) + "]"
    items = [draw(_WS) + draw(json_string(k)) + draw(_WS) + ":" + draw(_WS)
             + draw(json_text(x)) + draw(_WS) for k, x in v.items()]
    return "{" + ",".join(items) + "}"


@st.composite
def message(draw, fmt: str, i: int) -> bytes | None:
    """One Kafka message value: mostly a plain event, with any of many changes."""
    if draw(st.integers(0, 30)) == 13:  # (mid-range: hypothesis favours the bounds)
        return None
    ev = _plain_event(fmt, i)
    pairs = list(ev.items())
    fields = ENCODERS[fmt].fields
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        change = draw(st.sampled_from(["field", "field", "id", "click", "click", "drop",
                                       "duplicate", "unknown", "unknown", "nothing"]))
        if change == "field":
            k = draw(st.integers(0, len(pairs) - 1))
            pairs[k] = (pairs[k][0], draw(_TEXT if draw(st.booleans()) else _JSON_VALUE))
        elif change == "id":
            pairs = [(k, v) for k, v in pairs if k != "id"] + [("id", draw(_IDS))]
        elif change == "click":
            click = draw(_CLICKS)
            pairs = [(k, v) for k, v in pairs if k != "click"]
            if click != "absent":
                pairs.append(("click", click if click not in ("1", "-0", "1e0", "01")
                              else _Raw(click)))
        elif change == "drop":
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif change == "duplicate" and pairs:
            k, v = pairs[draw(st.integers(0, len(pairs) - 1))]
            pairs.append((k, draw(st.sampled_from([v, "other"]))))
        elif change == "unknown":
            name = draw(st.one_of(st.sampled_from(["extra", "ID", "clicks", "", "hour2",
                                                   "\u0069d"]), _TEXT))
            pairs.append((name, draw(_JSON_VALUE)))
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    if fields and draw(st.integers(0, 10)) == 5:  # a field's name written with an escape
        pairs = [(k, v) for k, v in pairs if k != fields[0]] + [(_Escaped(fields[0]), "1")]
    # most messages are written plainly (else almost none would be valid JSON events)
    noisy = draw(st.integers(0, 3)) == 2
    ws = _WS if draw(st.booleans()) else st.just("")
    parts = []
    for k, v in pairs:
        key = f'"{k.text}"' if isinstance(k, _Escaped) else draw(json_string(k, noisy))
        val = v.text if isinstance(v, _Raw) else draw(json_text(v, noisy))
        parts.append(draw(ws) + key + draw(ws) + ":" + draw(ws) + val + draw(ws))
    text = draw(ws) + "{" + ",".join(parts) + draw(st.sampled_from(["", "", "", "", ","]))
    text += "}" + draw(st.sampled_from(["", "", "", "", "", " \n", " {}", "x", "\x00"]))
    data = text.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none"] * 12 + ["truncate", "byte", "insert", "bom"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage in ("byte", "insert") and data:
        at = draw(st.integers(0, len(data) - 1))
        b = bytes([draw(st.sampled_from([0x80, 0xC0, 0xFF, 0xED, 0x22, 0x2C, 0x5C, 0x7B]))])
        data = data[:at] + b + data[at + (damage == "byte"):]
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    return data


class _Raw:
    """A value written into the JSON text as is (``-0``, ``1e0``, ...)."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Escaped:
    """A key written with its first character as a \\u escape."""

    def __init__(self, name: str) -> None:
        self.text = f"\\u{ord(name[0]):04x}{name[1:]}"


@st.composite
def batch(draw, fmt: str) -> list[bytes | None]:
    n = draw(st.integers(1, 12))
    return [draw(message(fmt, i)) for i in range(n)]


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("fmt", ["avazu", "criteo"])
@settings(max_examples=200)
@given(data=st.data())
def test_decode_equals_the_reference_for_any_messages(fmt, data) -> None:
    values = data.draw(batch(fmt))
    enc = ENCODERS[fmt]
    decoded = enc.decode(values)
    assert_same_decoded(decoded, enc.decode_each(values))
    if json_events(values, *enc._spec)[4].all():  # all in one C call: one run of lines
        assert len(decoded.runs) == 1 and decoded.runs[0].records is None


@pytest.mark.parametrize("fmt", ["avazu", "criteo"])
@settings(max_examples=50)
@given(data=st.data())
def test_encode_equals_the_reference_for_any_messages(fmt, data) -> None:
    values = data.draw(batch(fmt))
    schema = SCHEMAS[fmt]
    fast = KafkaEncoder(Encoder(schema, bits=12, seed=3))
    each = KafkaEncoder(Encoder(schema, bits=12, seed=3))
    got, want = fast.encode(values), each.encode_each(values)
    assert got.rejects == want.rejects
    np.testing.assert_array_equal(got.index, want.index)
    for name in ("indices", "values", "dense", "time", "y"):
        np.testing.assert_array_equal(getattr(got.batch, name), getattr(want.batch, name))
    assert got.batch.ids == want.batch.ids
    np.testing.assert_array_equal(fast.encoder.counts, each.encoder.counts)


# ------------------------------------------------------------------------- the C path is taken

@pytest.mark.parametrize("fmt", ["avazu", "criteo"])
def test_plain_events_take_the_c_path_in_any_key_order_and_spacing(fmt) -> None:
    enc = ENCODERS[fmt]
    rng = np.random.default_rng(0)
    values = []
    for i in range(50):
        pairs = list(_plain_event(fmt, i).items())
        if i % 3:
            pairs.append(("click", int(rng.integers(0, 2))))
        if i % 5 == 0:
            pairs = [pairs[j] for j in rng.permutation(len(pairs))]
        sep = (", ", ": ") if i % 2 else (",", ":")
        values.append(json.dumps(dict(pairs), separators=sep, ensure_ascii=False).encode())
    values[7] = values[7].replace(b'"e7"', "\"\u00e9\u20ac\U0001f600\"".encode())
    # ids are counted in characters, as Python's len, not in bytes
    values[8] = values[8].replace(b'"e8"', ('"' + chr(0xE9) * MAX_ID_CHARS + '"').encode())
    values[9] = values[9].replace(b'"e9"', ('"' + chr(0x1F600) * MAX_ID_CHARS + '"').encode())
    _, _, _, _, on = json_events(values, *enc._spec)
    assert on.all()
    decoded = enc.decode(values)
    assert len(decoded.runs) == 1 and decoded.runs[0].records is None
    assert_same_decoded(decoded, enc.decode_each(values))


def test_a_missing_field_is_an_empty_cell_in_the_c_decoder_and_the_reference() -> None:
    enc = ENCODERS["avazu"]
    value = b'{"id":"a","hour":"14102100","C1":"1005"}'
    lines, _, ids, _, on = json_events([value], *enc._spec)
    cells = ["", "", "14102100", "1005"] + [""] * (len(enc.fields) - 2)
    assert list(on) == [True] and ids == ["a"] and lines == (",".join(cells) + "\n").encode()
    assert_same_decoded(enc.decode([value]), enc.decode_each([value]))
    got = enc.encode([value])
    assert not got.rejects and len(got.batch) == 1


def test_the_c_decoder_writes_the_line_and_the_click() -> None:
    enc = ENCODERS["avazu"]
    ev = {name: "" for name in enc.fields}
    ev.update(C1="1005", hour="14102100")
    text = json.dumps(ev)[:-1] + ', "click":1,"id":"e9", "extra": null, "more": "x y"}'
    lines, ends, ids, y, on = json_events([b"\n " + text.encode() + b" \r\n"], *enc._spec)
    assert list(on) == [True] and ids == ["e9"] and list(y) == [1.0]
    cells = ["", ""] + [ev[name] for name in enc.fields]
    assert lines == (",".join(cells) + "\n").encode() and list(ends) == [len(lines)]


@pytest.mark.parametrize("value", [
    b'{"id":"a","click":1,"click":0}',  # a duplicate key
    b'{"C1":"1"}',  # no id
    b'{"id":"\\u0061"}',  # any escape
    b'{"id":"a"',  # truncated
    b'',
    None,
])
def test_the_c_decoder_leaves_what_it_cannot_vouch_for(value) -> None:
    enc = ENCODERS["avazu"]
    full = {name: "1" for name in enc.fields}
    if value is not None and value.startswith(b'{"id":"a","click"'):
        value = json.dumps({**full, "id": "a"})[:-1].encode() + b',"click":1,"click":0}'
    lines, ends, ids, _, on = json_events([value], *enc._spec)
    assert list(on) == [False] and ids == [None] and lines == b"" and list(ends) == [0]


# ----------------------------------------------------------------------------- outputs
_FLOATS = st.one_of(st.floats(width=32), st.floats(), st.sampled_from(
    [0.0, -0.0, 1e-45, 3.4028235e38, 0.1, 1 / 3, 5e-324, 1e16, 123456789.0, 1e-5]))


@settings(max_examples=200)
@given(ids=st.lists(st.one_of(st.text(max_size=8), st.sampled_from(
    ["e1", "a b", "x" * 300, "\x7f\x00\x1f\"\\\n\t\b\f/é€😀\udfff\ud800x\U0010ffff"])),
                    min_size=1, max_size=6),
       data=st.data(), version=st.integers(0, 2**62))
def test_c_outputs_are_the_python_outputs_byte_for_byte(ids, data, version) -> None:
    n = len(ids)
    cols = [np.array(data.draw(st.lists(_FLOATS, min_size=n, max_size=n)),
                     dtype=data.draw(st.sampled_from([np.float32, np.float64])))
            for _ in range(4)]
    scores = Scores(margin=cols[1], base_margin=cols[2], residual_margin=cols[3], p=cols[0],
                    stage_margins=np.zeros((1, n)))
    got, keys = format_outputs(ids, scores, version)
    want, want_keys = format_outputs_py(ids, scores, version)
    assert got == [w.encode() for w in want] and keys == want_keys
    finite = np.isfinite(np.stack(cols)).all(axis=0)
    for ident, value, p, ok in zip(ids, got, cols[0], finite, strict=True):
        if ok:  # (NaN / inf are not JSON: Python's formatting writes them bare)
            out = json.loads(value)
            assert out["id"] == ident and out["model_version"] == version
            if p.dtype == np.float32:  # %.9g round-trips a float32
                assert np.float32(out["p_click"]) == p


def test_int_ids_keep_the_python_formatting() -> None:
    scores = Scores(margin=np.array([0.5]), base_margin=np.array([0.25]),
                    residual_margin=np.array([0.25]), p=np.array([0.62]),
                    stage_margins=np.zeros((1, 1)))
    assert json_outputs([12], *(np.zeros(1),) * 4, 1) is None
    values, keys = format_outputs([12], scores, 3)
    assert keys == ["12"] and json.loads(values[0]) == {
        "id": 12, "p_click": 0.62, "margin": 0.5, "base_margin": 0.25,
        "residual_margin": 0.25, "model_version": 3}


@given(x=_FLOATS)
def test_format_g9_twin_is_pythons_percent_g9(x) -> None:
    assert format_g9(x) == b"%.9g" % x


@given(text=st.text())
def test_json_string_twin_is_json_dumps(text) -> None:
    assert c_json_string(text) == json.dumps(text).encode()
