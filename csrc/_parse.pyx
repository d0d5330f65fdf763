# cython: language_level=3
"""Tokenize + hash click-log lines in one nogil pass (the C is in parse_core.h).

Python (streamfusion/data/encoder.py) owns every array: the outputs of a Batch, the count
table, the compiled schema and a small int64 state array through which the pass reports
where it stopped, the line number, out-of-order counts and the first malformed row.
Each inline C helper has a Python-visible twin for tests: ``hash_value``, ``field_salt``,
``parse_number``, ``parse_label``, ``utf8_valid``, ``parse_hour``, ``parse_time``,
``dense_slot``, ``format_g9``.

``json_events`` (C in json_events.h) turns a Kafka batch of JSON events into lines for the
tokenizer; ``json_events([value], ...)`` is its one-message twin.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t

import numpy as np


cdef extern from "parse_core.h" nogil:
    int SF_ST_SIZE
    int32_t sf_bin(double x)
    ctypedef struct sf_spec:
        int ncols
        unsigned char delim
        int F
        int T
        int bits
        int count_bits
        int label_missing_ok
        const int32_t *kind
        const int32_t *field
        const int32_t *dslot
        const int32_t *dmode
        const uint64_t *salt
        const int32_t *num_row
        const int32_t *lenient
        int32_t *counts
        int64_t *seen
        int64_t *unparsed
        int frozen

    uint64_t sf_murmur64(const unsigned char *p, int64_t n, uint64_t seed)
    uint64_t sf_salt(uint64_t seed, int64_t field)
    int32_t sf_row(uint64_t h, int bits)
    int sf_parse_num(const unsigned char *p, const unsigned char *e, double *out)
    int sf_parse_label(const unsigned char *p, const unsigned char *e, double *out)
    int sf_utf8_valid(const unsigned char *p, const unsigned char *e)
    int sf_parse_hour(const unsigned char *p, const unsigned char *e, int64_t *t, int *hod,
                      int *wd)
    int sf_parse_time(const unsigned char *p, const unsigned char *e, int64_t *t, int *hod,
                      int *wd)
    int64_t sf_parse_delim(const sf_spec *s, const unsigned char *buf, int64_t start,
                           int64_t end, int64_t max_rows, int32_t *ind, float *val,
                           float *dense, float *y, int64_t *line_out, int64_t *time_out,
                           const unsigned char **fs, const unsigned char **fe, double *num,
                           int64_t *st)
    int64_t sf_dense_slot(int64_t idx, const int64_t *ids, int64_t T)
    int64_t sf_parse_svm(const unsigned char *buf, int64_t start, int64_t end,
                         int64_t max_rows, int F, int T, int bits, uint64_t seed,
                         int field_aware, const int64_t *dense_ids, int32_t pad_row,
                         int32_t *ind, float *val, float *dense, float *y,
                         int64_t *line_out, int64_t *time_out, int64_t *st)

cdef extern from "json_events.h" nogil:
    ctypedef struct sf_jspec:
        int nfields
        const unsigned char *names
        const int64_t *name_off
        unsigned char delim
        int ncols
        const int32_t *layout
        int64_t max_bytes
        int64_t max_id_chars
        int64_t max_keys
        int64_t max_string_bytes

    int64_t sf_json_event(const sf_jspec *s, const unsigned char *msg, int64_t len,
                          const unsigned char **vs, const unsigned char **ve,
                          unsigned char *seen, unsigned char *out, int64_t *id_start,
                          int64_t *id_len, float *click)
    int SF_OUT_NUM_MAX
    int SF_OUT_FIXED
    int sf_fmt_g9(char *o, double x)
    int64_t sf_json_str(char *o, const void *data, int kind, int64_t n)
    int64_t sf_json_output(char *o, const void *id, int kind, int64_t id_len, double p,
                           double margin, double base, double resid, const char *version,
                           int version_len)

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8


cdef extern from "Python.h":
    # the code points of a str, read in place (PEP 393 layout)
    int PyUnicode_KIND(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
from libc.stdlib cimport free, malloc

STATE_SIZE = SF_ST_SIZE

cdef const unsigned char EMPTY[1]


cdef inline const unsigned char *_ptr(const unsigned char[::1] b) noexcept:
    return &b[0] if b.shape[0] > 0 else EMPTY


# --------------------------------------------------------------------------- twins
def field_salt(int64_t field_index, uint64_t seed) -> int:
    """The 64-bit salt of learner field ``field_index`` under ``seed``."""
    return sf_salt(seed, field_index)


def hash64(const unsigned char[::1] value, uint64_t salt) -> int:
    """MurmurHash64A of ``value`` seeded with ``salt`` (the C function itself)."""
    return sf_murmur64(_ptr(value), value.shape[0], salt)


def hash_value(int64_t field_index, const unsigned char[::1] value, int bits,
               uint64_t seed) -> int:
    """Learner row of ``(field_index, value)`` in a table of ``2**bits`` rows."""
    if not 1 <= bits <= 31:
        raise ValueError(f"bits must be in [1, 31], got {bits}")
    return sf_row(sf_murmur64(_ptr(value), value.shape[0], sf_salt(seed, field_index)), bits)


ctypedef int (*number_parser)(const unsigned char *, const unsigned char *,
                              double *) noexcept nogil
ctypedef int (*time_parser)(const unsigned char *, const unsigned char *, int64_t *, int *,
                            int *) noexcept nogil


cdef object _number_with(number_parser parse, const unsigned char[::1] text):
    cdef double out = 0
    cdef const unsigned char *p = _ptr(text)
    return out if parse(p, p + text.shape[0], &out) else None


cdef object _time_with(time_parser parse, const unsigned char[::1] text):
    cdef int64_t t = 0
    cdef int hod = 0, wd = 0
    cdef const unsigned char *p = _ptr(text)
    return (t, hod, wd) if parse(p, p + text.shape[0], &t, &hod, &wd) else None


def parse_number(const unsigned char[::1] text):
    """The C number parser: a float, or None when ``text`` is not a number it accepts."""
    return _number_with(sf_parse_num, text)


def number_bin(double x) -> int:
    """Twin of the learner's bin of a number (hashed as 4 little-endian bytes with the salt of
    the field after the number's value field; a missing number's bin is -2**31)."""
    return sf_bin(x)


def parse_label(const unsigned char[::1] text):
    """A CSV label as 0.0 or 1.0 (0, 1, true or false, any case), or None."""
    return _number_with(sf_parse_label, text)


def utf8_valid(const unsigned char[::1] text) -> bool:
    """True when ``text`` is valid UTF-8 (the C validator)."""
    cdef const unsigned char *p = _ptr(text)
    return bool(sf_utf8_valid(p, p + text.shape[0]))


def parse_hour(const unsigned char[::1] text):
    """``(time, hour_of_day, weekday)`` of an Avazu YYMMDDHH value, or None when invalid."""
    return _time_with(sf_parse_hour, text)


def parse_time(const unsigned char[::1] text):
    """``(time, hour_of_day, weekday)`` of a timestamp (ISO 8601 date and time, or Unix
    seconds or milliseconds; time = YYYYMMDDHH), or None when it is not one."""
    return _time_with(sf_parse_time, text)


def dense_slot(int64_t idx, const int64_t[::1] ids, int64_t width) -> int:
    """The tree column of libsvm feature id ``idx`` (-1: none): ``idx`` itself below
    ``width`` when ``ids`` is empty, else its position in the sorted ``ids``."""
    if ids.shape[0]:
        return sf_dense_slot(idx, &ids[0], ids.shape[0])
    return sf_dense_slot(idx, NULL, width)


# --------------------------------------------------------------------------- kernels
def parse_delim(const int32_t[::1] kind, const int32_t[::1] field, const int32_t[::1] dslot,
                const int32_t[::1] dmode, const uint64_t[::1] salt, const int32_t[::1] num_row,
                const int32_t[::1] lenient, int32_t[::1] counts, int64_t[::1] seen,
                int64_t[::1] unparsed, int delim, int bits, int count_bits,
                bint label_missing_ok,
                const unsigned char[::1] buf, int64_t start, int64_t end, int64_t max_rows,
                int32_t[:, ::1] indices, float[:, ::1] values, float[:, ::1] dense,
                float[::1] y, int64_t[::1] line, int64_t[::1] time, int64_t[::1] state,
                bint frozen=False) -> int:
    """Parse delimited lines of ``buf[start:end]`` into the output rows; see parse_core.h.

    Returns the number of rows written. ``state`` (int64 [STATE_SIZE]) carries the line
    number and time bookkeeping in and out, and the first malformed row if any; ``unparsed``
    (int64 [ncols]) counts the words read as missing in ``lenient`` numeric columns.
    ``frozen``: ``counts`` and ``seen`` are read, never written (scoring with a saved model);
    a row's count feature is the one it would get as the next row seen.
    """
    cdef sf_spec s
    cdef int64_t rows, n = max_rows
    cdef int ncols = kind.shape[0]
    if (field.shape[0] != ncols or dslot.shape[0] != ncols or dmode.shape[0] != ncols
            or lenient.shape[0] != ncols or unparsed.shape[0] != ncols
            or salt.shape[0] != indices.shape[1] or num_row.shape[0] != indices.shape[1]):
        raise ValueError("inconsistent compiled schema arrays")
    if (counts.shape[0] != (1 << count_bits) or seen.shape[0] != 1
            or state.shape[0] != SF_ST_SIZE):
        raise ValueError("count table, seen counter or state array of the wrong size")
    if not (0 <= start <= end <= buf.shape[0]):
        raise ValueError("start/end outside the buffer")
    n = min(n, indices.shape[0], values.shape[0], dense.shape[0], y.shape[0], line.shape[0],
            time.shape[0])
    if values.shape[1] != indices.shape[1]:
        raise ValueError("indices and values differ in width")
    s.ncols = ncols
    s.delim = <unsigned char>delim
    s.F = indices.shape[1]
    s.T = dense.shape[1]
    s.bits = bits
    s.count_bits = count_bits
    s.label_missing_ok = label_missing_ok
    s.kind = &kind[0]
    s.field = &field[0]
    s.dslot = &dslot[0]
    s.dmode = &dmode[0]
    s.salt = &salt[0] if salt.shape[0] else NULL
    s.num_row = &num_row[0] if num_row.shape[0] else NULL
    s.lenient = &lenient[0]
    s.counts = &counts[0]
    s.seen = &seen[0]
    s.unparsed = &unparsed[0]
    s.frozen = frozen
    cdef const unsigned char **fs = <const unsigned char **>malloc(ncols * sizeof(void *))
    cdef const unsigned char **fe = <const unsigned char **>malloc(ncols * sizeof(void *))
    cdef double *num = <double *>malloc(ncols * sizeof(double))
    cdef float dummy_f = 0
    cdef float *dptr = &dense[0, 0] if dense.shape[0] and dense.shape[1] else &dummy_f
    if fs == NULL or fe == NULL or num == NULL:
        free(fs); free(fe); free(num)
        raise MemoryError()
    if n <= 0 or start == end:
        free(fs); free(fe); free(num)
        state[0] = start
        state[2] = 0
        return 0
    with nogil:
        rows = sf_parse_delim(&s, &buf[0], start, end, n, &indices[0, 0], &values[0, 0],
                              dptr, &y[0], &line[0], &time[0], fs, fe, num, &state[0])
    free(fs); free(fe); free(num)
    return rows


def parse_svm(const unsigned char[::1] buf, int64_t start, int64_t end, int64_t max_rows,
              int bits, uint64_t seed, bint field_aware, const int64_t[::1] dense_ids,
              int32_t pad_row, int32_t[:, ::1] indices, float[:, ::1] values,
              float[:, ::1] dense, float[::1] y, int64_t[::1] line, int64_t[::1] time,
              int64_t[::1] state) -> int:
    """Parse libsvm / libFM (``field_aware`` false) or libffm lines of ``buf[start:end]``.

    ``dense_ids`` (sorted) are the feature ids that fill the ``dense`` columns, in order;
    empty: the ids below ``dense.shape[1]`` fill their own column. See parse_core.h.
    """
    cdef int64_t rows, n = max_rows
    cdef float dummy_f = 0
    cdef float *dptr = &dense[0, 0] if dense.shape[0] and dense.shape[1] else &dummy_f
    cdef const int64_t *ids = &dense_ids[0] if dense_ids.shape[0] else NULL
    if state.shape[0] != SF_ST_SIZE:
        raise ValueError("state array of the wrong size")
    if dense_ids.shape[0] not in (0, dense.shape[1]):
        raise ValueError("dense_ids and the dense width differ")
    if not (0 <= start <= end <= buf.shape[0]):
        raise ValueError("start/end outside the buffer")
    if indices.shape[1] < 1 or values.shape[1] != indices.shape[1]:
        raise ValueError("need at least one feature slot")
    n = min(n, indices.shape[0], values.shape[0], dense.shape[0], y.shape[0], line.shape[0],
            time.shape[0])
    if n <= 0 or start == end:
        state[0] = start
        state[2] = 0
        return 0
    with nogil:
        rows = sf_parse_svm(&buf[0], start, end, n, <int>indices.shape[1], <int>dense.shape[1],
                            bits, seed, field_aware, ids, pad_row, &indices[0, 0],
                            &values[0, 0], dptr, &y[0], &line[0], &time[0], &state[0])
    return rows


# --------------------------------------------------------------------------- Kafka JSON events
def json_events(list values, const unsigned char[::1] names, const int64_t[::1] name_off,
                int delim, const int32_t[::1] layout, int64_t max_bytes, int64_t max_id_chars,
                int64_t max_keys=1 << 62, int64_t max_string_bytes=1 << 62):
    """Flat JSON events -> newline-terminated delimited lines, in one nogil pass.

    Parameters
    ----------
    values : list of bytes
        Message values; anything but ``bytes`` (``None``) is off the fast path.
    names, name_off : uint8 array, int64 array
        The feature fields' UTF-8 names concatenated; name ``i`` is
        ``names[name_off[i]:name_off[i + 1]]`` (schema column order).
    delim : int
        The delimiter byte; a value holding it is off the fast path.
    layout : int32 array
        The columns of a line in file order: the field written in each, or -1 for an empty
        cell (the id and label columns). A field the message lacks is an empty cell too.
    max_bytes, max_id_chars : int
        Longer messages, and ids of more characters, are off the fast path.
    max_keys, max_string_bytes : int, optional
        Messages with more keys, or a key or string value of more bytes, are off the fast
        path (the reference path names the bound they break).

    The messages are read without the GIL: ``values`` must not change during the call.

    Returns
    -------
    (lines, ends, ids, y, on)
        ``lines`` the lines of the messages on the fast path, in message order; message
        ``i``'s line ends at ``ends[i]`` (int64; an off-path message adds nothing);
        ``ids`` its id (str; None off the path); ``y`` its click (float32, NaN when absent,
        null or off the path); ``on`` (bool) whether it is on the fast path.
    """
    cdef Py_ssize_t n = len(values), i
    cdef int nf = name_off.shape[0] - 1
    cdef sf_jspec s
    cdef int64_t bound = 0, pos = 0, got
    cdef object v
    cdef Py_ssize_t ncols = layout.shape[0]
    if nf < 1 or names.shape[0] != name_off[nf]:
        raise ValueError("names and name_off disagree")
    if ncols < 1 or any(f < -1 or f >= nf for f in layout):
        raise ValueError("layout names a field that does not exist")
    ends = np.zeros(n, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int64)
    lens = np.zeros(n, dtype=np.int64)
    y = np.full(n, np.nan, dtype=np.float32)
    on = np.zeros(n, dtype=np.bool_)
    cdef int64_t[::1] ends_v = ends, id_s = starts, id_n = lens
    cdef float[::1] y_v = y
    cdef unsigned char[::1] on_v = on.view(np.uint8)
    cdef const unsigned char **msg = <const unsigned char **>malloc((n + 1) * sizeof(void *))
    cdef int64_t *mlen = <int64_t *>malloc((n + 1) * sizeof(int64_t))
    cdef const unsigned char **vs = <const unsigned char **>malloc(nf * sizeof(void *))
    cdef const unsigned char **ve = <const unsigned char **>malloc(nf * sizeof(void *))
    cdef unsigned char *seen = <unsigned char *>malloc(nf + 2)
    cdef unsigned char *out = NULL
    try:
        if msg == NULL or mlen == NULL or vs == NULL or ve == NULL or seen == NULL:
            raise MemoryError()
        for i in range(n):
            v = values[i]
            if type(v) is bytes:
                msg[i] = <const unsigned char *>PyBytes_AS_STRING(v)
                mlen[i] = PyBytes_GET_SIZE(v)
                # a line is never longer than its message (each field costs the message its
                # quoted name, a colon and quotes) plus a delimiter per column
                if mlen[i] <= max_bytes:
                    bound += mlen[i] + ncols + 1
            else:
                msg[i] = NULL
                mlen[i] = 0
        out = <unsigned char *>malloc(bound + 1)
        if out == NULL:
            raise MemoryError()
        s.nfields = nf
        s.names = &names[0]
        s.name_off = &name_off[0]
        s.delim = <unsigned char>delim
        s.ncols = <int>ncols
        s.layout = &layout[0]
        s.max_bytes = max_bytes
        s.max_id_chars = max_id_chars
        s.max_keys = max_keys
        s.max_string_bytes = max_string_bytes
        with nogil:
            for i in range(n):
                if msg[i] != NULL:
                    got = sf_json_event(&s, msg[i], mlen[i], vs, ve, seen, out + pos,
                                        &id_s[i], &id_n[i], &y_v[i])
                    if got >= 0:
                        pos += got
                        on_v[i] = 1
                ends_v[i] = pos
        ids = [PyUnicode_DecodeUTF8(<const char *>msg[i] + id_s[i], id_n[i], NULL)
               if on_v[i] else None for i in range(n)]
        lines = PyBytes_FromStringAndSize(<const char *>out, pos)
    finally:
        free(msg); free(mlen); free(vs); free(ve); free(seen); free(out)
    return lines, ends, ids, y, on


def format_g9(double x) -> bytes:
    """The C twin of Python's ``b"%.9g" % x`` (``nan`` for every NaN)."""
    cdef char buf[64]
    cdef int n = sf_fmt_g9(buf, x)
    return buf[:n]


def json_string(str text) -> bytes:
    """The C twin of ``json.dumps(text).encode()`` (ASCII, escapes as Python's json)."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef char *buf = <char *>malloc(12 * n + 2)
    if buf == NULL:
        raise MemoryError()
    try:
        return buf[:sf_json_str(buf, PyUnicode_DATA(text), PyUnicode_KIND(text), n)]
    finally:
        free(buf)


def json_outputs(list ids, const double[::1] p, const double[::1] margin,
                 const double[::1] base, const double[::1] resid, int64_t version):
    """The output message of each scored event, formatted in one nogil pass.

    Returns the list of message values, byte for byte what
    ``streamfusion.kafka.daemon.OUTPUT_FORMAT`` gives with ``json.dumps`` of each id; None
    when an id is not a ``str`` (int ids are formatted in Python). The ids are read without
    the GIL: ``ids`` must not change during the call.
    """
    cdef Py_ssize_t n = len(ids), i
    cdef int64_t bound = 0, pos = 0
    cdef object ident
    if not (p.shape[0] == margin.shape[0] == base.shape[0] == resid.shape[0] == n):
        raise ValueError("ids and scores differ in length")
    cdef bytes vtext = str(version).encode()
    cdef const char *vptr = vtext
    cdef int vlen = len(vtext)
    cdef const void **data = <const void **>malloc((n + 1) * sizeof(void *))
    cdef int64_t *meta = <int64_t *>malloc(2 * (n + 1) * sizeof(int64_t))
    cdef int64_t *ends = <int64_t *>malloc((n + 1) * sizeof(int64_t))
    cdef char *out = NULL
    try:
        if data == NULL or meta == NULL or ends == NULL:
            raise MemoryError()
        for i in range(n):
            ident = ids[i]
            if type(ident) is not str:
                return None
            data[i] = PyUnicode_DATA(ident)
            meta[2 * i] = PyUnicode_KIND(ident)
            meta[2 * i + 1] = PyUnicode_GET_LENGTH(ident)
            bound += 12 * meta[2 * i + 1] + SF_OUT_FIXED + vlen
        out = <char *>malloc(bound + 1)
        if out == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                pos += sf_json_output(out + pos, data[i], <int>meta[2 * i], meta[2 * i + 1],
                                      p[i], margin[i], base[i], resid[i], vptr, vlen)
                ends[i] = pos
        values = [None] * n
        pos = 0
        for i in range(n):
            values[i] = PyBytes_FromStringAndSize(out + pos, ends[i] - pos)
            pos = ends[i]
        return values
    finally:
        free(data); free(meta); free(ends); free(out)
