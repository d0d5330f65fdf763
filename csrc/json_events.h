/* JSON click events -> delimited file lines, the Kafka daemon's fast path.
 *
 * One flat JSON object per message, every feature field a string, becomes one newline-
 * terminated line for the tokenizer in parse_core.h: the schema's columns in file order, each
 * a field's value or empty (the id and label columns, and a field the event does not carry:
 * a missing value). Only a strict subset of JSON is accepted: a message that is anything else
 * (an escape anywhere, a number or null as a feature, a nested value, a duplicate key, a
 * missing id, invalid JSON or UTF-8, ...) is reported as "off the
 * fast path" and Python decodes it with the reference path, which gives exact reasons. The
 * subset is chosen so that every message accepted here decodes to exactly what the reference
 * path builds from it: being conservative costs speed, never correctness.
 *
 * Also the output side: the JSON of one scored event in the same bytes as the daemon's
 * Python formatting (streamfusion/kafka/daemon.py OUTPUT_FORMAT, json.dumps for odd ids).
 *
 * Plain C, nothing allocates; csrc/_parse.pyx owns every buffer and holds no GIL here.
 */
#ifndef SF_JSON_EVENTS_H
#define SF_JSON_EVENTS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "parse_core.h" /* sf_utf8_valid */

/* what a message's key names */
enum { SF_JK_UNKNOWN = -1, SF_JK_ID = -2, SF_JK_CLICK = -3 };

typedef struct {
    int nfields;                 /* feature fields, in schema column order */
    const unsigned char *names;  /* their names, concatenated */
    const int64_t *name_off;     /* name i is names[name_off[i] .. name_off[i + 1]) */
    unsigned char delim;
    int ncols;                   /* columns of a line */
    const int32_t *layout;       /* per column: the field written there, or -1 (empty) */
    int64_t max_bytes;           /* longer messages are off the path (reference: oversized) */
    int64_t max_id_chars;
    int64_t max_keys;            /* more keys: off the path (reference: too many fields) */
    int64_t max_string_bytes;    /* a longer key or string: off the path (reference: too long) */
} sf_jspec;

/* JSON whitespace is exactly these four */
#define SF_JWS(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r')

static inline const unsigned char *sf_jskip(const unsigned char *p, const unsigned char *e)
{
    while (p < e && SF_JWS(*p)) p++;
    return p;
}

/* p at the byte after an opening quote: returns the closing quote, or NULL when the string
 * holds an escape, a control character, `stop` (the delimiter; -1 for none) or bad UTF-8. */
static inline const unsigned char *sf_jstring(const unsigned char *p, const unsigned char *e,
                                              int stop)
{
    const unsigned char *s = p;
    unsigned char hi = 0;
    while (p < e) {
        unsigned char c = *p;
        if (c == '"') {
            if ((hi & 0x80) && !sf_utf8_valid(s, p)) return NULL;
            return p;
        }
        /* escapes: \uD800-style lone surrogates are where JSON parsers disagree; off path */
        if (c == '\\' || c < 0x20 || c == stop) return NULL;
        hi |= c;
        p++;
    }
    return NULL;
}

/* a literal (null / true / false / 0 / 1) must end where a JSON token ends */
static inline int sf_jtoken_end(const unsigned char *p, const unsigned char *e)
{
    return p < e && (SF_JWS(*p) || *p == ',' || *p == '}');
}

static inline int sf_jlit(const unsigned char *p, const unsigned char *e, const char *lit,
                          int n)
{
    return e - p > n && memcmp(p, lit, (size_t)n) == 0 && sf_jtoken_end(p + n, e);
}

/* which key: a field index, SF_JK_ID, SF_JK_CLICK or SF_JK_UNKNOWN; `guess` first (fields
 * usually arrive in schema order, so this is one memcmp per key) */
static inline int sf_jkey(const sf_jspec *s, const unsigned char *k, int64_t n, int guess)
{
    int i;
    if (n == 2 && k[0] == 'i' && k[1] == 'd') return SF_JK_ID;
    if (n == 5 && memcmp(k, "click", 5) == 0) return SF_JK_CLICK;
    if (guess >= 0 && guess < s->nfields && s->name_off[guess + 1] - s->name_off[guess] == n
        && memcmp(k, s->names + s->name_off[guess], (size_t)n) == 0)
        return guess;
    for (i = 0; i < s->nfields; i++) {
        if (s->name_off[i + 1] - s->name_off[i] == n
            && memcmp(k, s->names + s->name_off[i], (size_t)n) == 0)
            return i;
    }
    return SF_JK_UNKNOWN;
}

/* One message. On the fast path: writes its line at `out` and returns its length, sets the
 * id's byte range and the click (NaN when absent or null). Off it: returns -1.
 * `vs` / `ve` (nfields each) and `seen` (nfields + 2) are scratch. */
static int64_t sf_json_event(const sf_jspec *s, const unsigned char *msg, int64_t len,
                             const unsigned char **vs, const unsigned char **ve,
                             unsigned char *seen, unsigned char *out, int64_t *id_start,
                             int64_t *id_len, float *click)
{
    const unsigned char *p = msg, *e = msg + len, *k, *ke, *q;
    int nf = s->nfields, guess = 0, key, i;
    int64_t chars, n, nkeys = 0;
    unsigned char *o;
    float clk = NAN;
    if (len > s->max_bytes) return -1;
    memset(seen, 0, (size_t)nf + 2);
    p = sf_jskip(p, e);
    if (p >= e || *p != '{') return -1;
    p = sf_jskip(p + 1, e);
    if (p >= e || *p != '"') return -1; /* also {}: no fields */
    for (;;) {
        /* key */
        k = p + 1;
        ke = sf_jstring(k, e, -1);
        if (ke == NULL || ++nkeys > s->max_keys || ke - k > s->max_string_bytes) return -1;
        key = sf_jkey(s, k, ke - k, guess);
        p = sf_jskip(ke + 1, e);
        if (p >= e || *p != ':') return -1;
        p = sf_jskip(p + 1, e);
        if (p >= e) return -1;
        /* value */
        if (key >= 0 || key == SF_JK_ID) {
            int slot = key >= 0 ? key : nf;
            if (*p != '"' || seen[slot]) return -1; /* a non-string, or a duplicate key */
            seen[slot] = 1;
            q = sf_jstring(p + 1, e, key >= 0 ? s->delim : -1);
            if (q == NULL || q - (p + 1) > s->max_string_bytes) return -1;
            if (key >= 0) {
                vs[key] = p + 1;
                ve[key] = q;
                guess = key + 1;
            } else {
                *id_start = (p + 1) - msg;
                *id_len = q - (p + 1);
            }
            p = q + 1;
        } else if (key == SF_JK_CLICK) {
            if (seen[nf + 1]) return -1;
            seen[nf + 1] = 1;
            /* 0, 1 or null; 1.0, true, -0, ... take the reference path */
            if (sf_jlit(p, e, "null", 4)) { clk = NAN; p += 4; }
            else if (sf_jlit(p, e, "0", 1)) { clk = 0.0f; p += 1; }
            else if (sf_jlit(p, e, "1", 1)) { clk = 1.0f; p += 1; }
            else return -1;
        } else {
            /* an unknown key: skipped when its value is a plain string or literal; nested
             * values and numbers take the reference path. Its name must not be a field's
             * spelled with an escape: escapes in keys were refused above. */
            if (*p == '"') {
                q = sf_jstring(p + 1, e, -1);
                if (q == NULL || q - (p + 1) > s->max_string_bytes) return -1;
                p = q + 1;
            } else if (sf_jlit(p, e, "null", 4) || sf_jlit(p, e, "true", 4)) {
                p += 4;
            } else if (sf_jlit(p, e, "false", 5)) {
                p += 5;
            } else {
                return -1;
            }
        }
        p = sf_jskip(p, e);
        if (p >= e) return -1;
        if (*p == '}') break;
        if (*p != ',') return -1;
        p = sf_jskip(p + 1, e);
        if (p >= e || *p != '"') return -1; /* also a trailing comma */
    }
    if (sf_jskip(p + 1, e) != e) return -1; /* anything after the object */
    if (!seen[nf]) return -1; /* no id */
    /* the id: 1..max_id_chars characters (code points, as Python's len) */
    chars = 0;
    for (n = 0; n < *id_len; n++) chars += (msg[*id_start + n] & 0xC0) != 0x80;
    if (chars < 1 || chars > s->max_id_chars) return -1;
    o = out;
    for (i = 0; i < s->ncols; i++) {
        key = s->layout[i];
        if (key >= 0 && seen[key]) { /* else an empty cell: the column's missing value */
            n = ve[key] - vs[key];
            memcpy(o, vs[key], (size_t)n);
            o += n;
        }
        *o++ = i + 1 < s->ncols ? s->delim : '\n';
    }
    *click = clk;
    return o - out;
}

/* ---------------------------------------------------------------- outputs */

/* One number in the bytes of Python's '%.9g' % x (which round-trips a float32 exactly);
 * Python spells every NaN "nan" where C may write "-nan". At most SF_OUT_NUM_MAX bytes. */
#define SF_OUT_NUM_MAX 32

static inline int sf_fmt_g9(char *o, double x)
{
    if (isnan(x)) { memcpy(o, "nan", 3); return 3; }
    return snprintf(o, SF_OUT_NUM_MAX, "%.9g", x);
}

/* A string as json.dumps (ensure_ascii) writes it: code points of Python's kind 1/2/4 layout
 * in, ASCII out; at most 12 bytes per code point (a surrogate pair) plus the quotes. */
static inline int64_t sf_json_str(char *o, const void *data, int kind, int64_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *start = o;
    int64_t i;
    *o++ = '"';
    for (i = 0; i < n; i++) {
        uint32_t c = kind == 1 ? ((const uint8_t *)data)[i]
                   : kind == 2 ? ((const uint16_t *)data)[i] : ((const uint32_t *)data)[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') { *o++ = (char)c; continue; }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; continue;
        case '\\': *o++ = '\\'; continue;
        case '\n': *o++ = 'n'; continue;
        case '\r': *o++ = 'r'; continue;
        case '\t': *o++ = 't'; continue;
        case '\b': *o++ = 'b'; continue;
        case '\f': *o++ = 'f'; continue;
        }
        if (c >= 0x10000) { /* a surrogate pair, as Python's json writes it */
            uint32_t v = c - 0x10000, hi = 0xD800 | (v >> 10), lo = 0xDC00 | (v & 0x3FF);
            *o++ = 'u';
            *o++ = hex[hi >> 12]; *o++ = hex[(hi >> 8) & 15];
            *o++ = hex[(hi >> 4) & 15]; *o++ = hex[hi & 15];
            *o++ = '\\';
            c = lo;
        }
        *o++ = 'u';
        *o++ = hex[c >> 12]; *o++ = hex[(c >> 8) & 15];
        *o++ = hex[(c >> 4) & 15]; *o++ = hex[c & 15];
    }
    *o++ = '"';
    return o - start;
}

/* Bytes one output may need beyond its id's 12 per code point: the keys and punctuation
 * (about 80), four numbers and the version. */
#define SF_OUT_FIXED (128 + 4 * SF_OUT_NUM_MAX)

/* The output JSON of one scored event, byte for byte what daemon.OUTPUT_FORMAT gives. */
static inline int64_t sf_json_output(char *o, const void *id, int kind, int64_t id_len,
                                     double p, double margin, double base, double resid,
                                     const char *version, int version_len)
{
    char *start = o;
#define SF_PUT(lit) (memcpy(o, lit, sizeof(lit) - 1), o += sizeof(lit) - 1)
    SF_PUT("{\"id\":");
    o += sf_json_str(o, id, kind, id_len);
    SF_PUT(",\"p_click\":");
    o += sf_fmt_g9(o, p);
    SF_PUT(",\"margin\":");
    o += sf_fmt_g9(o, margin);
    SF_PUT(",\"base_margin\":");
    o += sf_fmt_g9(o, base);
    SF_PUT(",\"residual_margin\":");
    o += sf_fmt_g9(o, resid);
    SF_PUT(",\"model_version\":");
#undef SF_PUT
    memcpy(o, version, (size_t)version_len);
    o += version_len;
    *o++ = '}';
    return o - start;
}

#endif
