/* Tokenizer + hasher for click logs: whole lines in, encoded Batch arrays out.
 *
 * Plain C so the hot loop has no Python in it; csrc/_parse.pyx owns every buffer and calls
 * these functions inside one `with nogil:` block. Nothing here allocates.
 *
 * Hash: MurmurHash64A (Austin Appleby, public domain) over the value bytes, seeded with a
 * per-field salt derived from the one user seed through splitmix64. The learner row is the
 * top `bits` bits of the hash, the count-table slot its low `count_bits` bits, so one hash
 * serves both and the two indices are nearly independent.
 */
#ifndef SF_PARSE_CORE_H
#define SF_PARSE_CORE_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* column kinds (Python mirror in streamfusion/data/schema.py) */
enum { SF_SKIP = 0, SF_LABEL = 1, SF_NUM = 2, SF_CAT = 3, SF_HOUR = 4, SF_TIME = 5 };
/* what a categorical column gives the trees */
enum { SF_DENSE_NONE = 0, SF_DENSE_INT = 1, SF_DENSE_COUNT = 2 };
/* per-row error codes (Python mirror: streamfusion/data/encoder.py REASONS) */
enum {
    SF_OK = 0, SF_E_COLUMNS = 1, SF_E_NUMERIC = 2, SF_E_LABEL = 3, SF_E_HOUR = 4,
    SF_E_UTF8 = 5, SF_E_TOO_MANY = 6, SF_E_TOKEN = 7, SF_E_QUOTE = 8
};
/* slots of the int64 state array shared with Python */
enum {
    SF_ST_POS = 0,       /* offset of the first byte not yet consumed */
    SF_ST_LINE = 1,      /* number of the last line consumed (1-based) */
    SF_ST_ERR = 2,       /* error code of the row that stopped the pass, 0 if none */
    SF_ST_ERR_LINE = 3,  /* its line number */
    SF_ST_ERR_NEXT = 4,  /* offset just past it (where skip mode resumes) */
    SF_ST_MAX_TIME = 5,  /* largest event time seen so far */
    SF_ST_OOO = 6,       /* rows whose time was below SF_ST_MAX_TIME */
    SF_ST_ERR_COL = 7,   /* column index of the error (or column count seen) */
    SF_ST_SIZE = 8
};

#define SF_MURMUR_M 0xc6a4a7935bd1e995ULL
#define SF_MURMUR_R 47

static inline uint64_t sf_murmur64(const unsigned char *p, int64_t len, uint64_t seed)
{
    uint64_t h = seed ^ ((uint64_t)len * SF_MURMUR_M);
    const unsigned char *end = p + (len & ~(int64_t)7);
    while (p != end) {
        uint64_t k;
        memcpy(&k, p, 8); /* little-endian load on x86/arm64; twins assume it */
        k *= SF_MURMUR_M;
        k ^= k >> SF_MURMUR_R;
        k *= SF_MURMUR_M;
        h ^= k;
        h *= SF_MURMUR_M;
        p += 8;
    }
    switch (len & 7) {
    case 7: h ^= (uint64_t)p[6] << 48; /* fall through */
    case 6: h ^= (uint64_t)p[5] << 40; /* fall through */
    case 5: h ^= (uint64_t)p[4] << 32; /* fall through */
    case 4: h ^= (uint64_t)p[3] << 24; /* fall through */
    case 3: h ^= (uint64_t)p[2] << 16; /* fall through */
    case 2: h ^= (uint64_t)p[1] << 8;  /* fall through */
    case 1: h ^= (uint64_t)p[0]; h *= SF_MURMUR_M;
    }
    h ^= h >> SF_MURMUR_R;
    h *= SF_MURMUR_M;
    h ^= h >> SF_MURMUR_R;
    return h;
}

static inline uint64_t sf_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Field salts are a pure function of (seed, field index): no table to checkpoint. */
static inline uint64_t sf_salt(uint64_t seed, int64_t field)
{
    return sf_mix64(sf_mix64(seed) ^ (uint64_t)(field + 1));
}

static inline int32_t sf_row(uint64_t h, int bits) { return (int32_t)(h >> (64 - bits)); }

static const double sf_pow10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#define SF_ISDIGIT(c) ((unsigned char)((c) - '0') < 10)

/* Decimal number: [+-]digits[.digits][(e|E)[+-]digits]. No nan/inf, no spaces. Exact for the
 * integers and short decimals of click logs (mantissa < 2**53 divided by an exact power of
 * ten); values beyond float32 range are refused because the outputs are float32. */
static inline int sf_parse_num(const unsigned char *p, const unsigned char *e, double *out)
{
    int neg = 0, any = 0, nd = 0, exp10 = 0;
    uint64_t mant = 0;
    double v;
    if (p < e && (*p == '-' || *p == '+')) { neg = (*p == '-'); p++; }
    while (p < e && SF_ISDIGIT(*p)) {
        if (nd < 19) { mant = mant * 10 + (uint64_t)(*p - '0'); if (mant) nd++; }
        else exp10++;
        p++; any = 1;
    }
    if (p < e && *p == '.') {
        p++;
        while (p < e && SF_ISDIGIT(*p)) {
            if (nd < 19) { mant = mant * 10 + (uint64_t)(*p - '0'); if (mant) nd++; exp10--; }
            p++; any = 1;
        }
    }
    if (!any) return 0;
    if (p < e && (*p == 'e' || *p == 'E')) {
        int eneg = 0, ev = 0;
        p++;
        if (p < e && (*p == '-' || *p == '+')) { eneg = (*p == '-'); p++; }
        if (p == e || !SF_ISDIGIT(*p)) return 0;
        while (p < e && SF_ISDIGIT(*p)) { if (ev < 100000) ev = ev * 10 + (*p - '0'); p++; }
        exp10 += eneg ? -ev : ev;
    }
    if (p != e) return 0;
    v = (double)mant;
    if (mant != 0) {
        if (exp10 > 0) v = exp10 <= 22 ? v * sf_pow10[exp10] : v * pow(10.0, exp10);
        else if (exp10 < 0) v = exp10 >= -22 ? v / sf_pow10[-exp10] : v / pow(10.0, -exp10);
    }
    if (!(fabs(v) <= FLT_MAX)) return 0;
    *out = neg ? -v : v;
    return 1;
}

/* A CSV label: 0 or 1 as a number, or true / false in any case (as pandas writes a bool). */
static inline int sf_parse_label(const unsigned char *p, const unsigned char *e, double *out)
{
    static const char *const words[2] = {"false", "true"};
    int v, i, n;
    if (sf_parse_num(p, e, out)) return *out == 0.0 || *out == 1.0;
    for (v = 0; v < 2; v++) {
        n = (int)strlen(words[v]);
        if (e - p != n) continue;
        for (i = 0; i < n && (p[i] | 0x20) == words[v][i]; i++) {} /* ASCII lower case */
        if (i == n) { *out = v; return 1; }
    }
    return 0;
}

/* Learner value of a number: symmetric log1p keeps counts like Criteo's I5 (up to ~1e6) in a
 * range where FM products stay tame, and is monotone so order survives. */
static inline float sf_scale(double x)
{
    return (float)(x >= 0 ? log1p(x) : -log1p(-x));
}

/* The learner's bin of a number: steps of SF_BIN_WIDTH in symmetric log1p space, so small
 * integers keep their own bins (0, 1, 2, 3 -> 0, 3, 5, 6) and counts up to 1e6 share about
 * 70 bins, coarser as they grow (what Criteo's winners did with floor(log(x)^2)). */
#define SF_BINS_PER_UNIT 5.0
static inline int32_t sf_bin(double x)
{
    double b = floor((double)sf_scale(x) * SF_BINS_PER_UNIT);
    return (int32_t)(b > 1e6 ? 1e6 : b < -1e6 ? -1e6 : b);
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Only called on lines that have a
 * byte >= 0x80, so plain ASCII logs never pay for it. */
static int sf_utf8_valid(const unsigned char *p, const unsigned char *e)
{
    while (p < e) {
        unsigned char c = *p;
        if (c < 0x80) { p++; continue; }
        if (c >= 0xC2 && c <= 0xDF) {
            if (e - p < 2 || (p[1] & 0xC0) != 0x80) return 0;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (e - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && p[1] < 0xA0) return 0;
            if (c == 0xED && p[1] > 0x9F) return 0;
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (e - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80
                || (p[3] & 0xC0) != 0x80) return 0;
            if (c == 0xF0 && p[1] < 0x90) return 0;
            if (c == 0xF4 && p[1] > 0x8F) return 0;
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Whether y-m-d is a date of the Gregorian calendar (years 1970-2099 here). */
static inline int sf_date_ok(int y, int m, int d)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || y > 2099 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1]) return 0;
    return !(m == 2 && d == 29 && (y % 4 != 0 || (y % 100 == 0 && y % 400 != 0)));
}

/* Day of the week of a valid date, Monday = 0 as Python (Sakamoto's method). */
static inline int sf_weekday(int y, int m, int d)
{
    static const int sak[12] = {0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4};
    if (m < 3) y -= 1;
    return ((y + y / 4 - y / 100 + y / 400 + sak[m - 1] + d) % 7 + 6) % 7;
}

/* Avazu hour YYMMDDHH (20YY) -> time key, hour of day, weekday (Monday = 0, as Python). */
static inline int sf_parse_hour(const unsigned char *p, const unsigned char *e,
                                int64_t *t, int *hod, int *wd)
{
    int i, yy, mm, dd, hh;
    if (e - p != 8) return 0;
    for (i = 0; i < 8; i++) if (!SF_ISDIGIT(p[i])) return 0;
    yy = (p[0] - '0') * 10 + (p[1] - '0');
    mm = (p[2] - '0') * 10 + (p[3] - '0');
    dd = (p[4] - '0') * 10 + (p[5] - '0');
    hh = (p[6] - '0') * 10 + (p[7] - '0');
    if (!sf_date_ok(2000 + yy, mm, dd) || hh > 23) return 0;
    *t = (int64_t)yy * 1000000 + mm * 10000 + dd * 100 + hh;
    *hod = hh;
    *wd = sf_weekday(2000 + yy, mm, dd);
    return 1;
}

/* Reads exactly `n` digits at *pp as a number (advancing *pp); 0 when fewer are there. */
static inline int sf_digits(const unsigned char **pp, const unsigned char *e, int n, int *out)
{
    const unsigned char *p = *pp;
    int i, v = 0;
    if (e - p < n) return 0;
    for (i = 0; i < n; i++) {
        if (!SF_ISDIGIT(p[i])) return 0;
        v = v * 10 + (p[i] - '0');
    }
    *pp = p + n;
    *out = v;
    return 1;
}

/* A timestamp of a generic log -> time key YYYYMMDDHH, hour of day, weekday (Monday = 0), up
 * to 2099:
 * - ISO 8601 `YYYY-MM-DD`, then optionally `T` or a space and `HH[:MM[:SS[.frac]]]`, then
 *   optionally `Z` or an offset `+HH[[:]MM]` / `-HH[[:]MM]`: read as written, the clock time
 *   of its own zone (when a user clicks is what hour of day means), from 1970;
 * - Unix time in seconds (9-10 digits) or milliseconds (12-13 digits), with an optional
 *   fraction: UTC, from 1973-03-03 (9 digits). */
static inline int sf_parse_time(const unsigned char *p, const unsigned char *e,
                                int64_t *t, int *hod, int *wd)
{
    const unsigned char *q = p;
    int y, mo, d, h = 0, mi, sec;
    while (q < e && SF_ISDIGIT(*q)) q++;
    if (q - p == 4 && q < e && *q == '-') { /* ISO 8601 */
        q = p;
        if (!sf_digits(&q, e, 4, &y) || *q++ != '-' || !sf_digits(&q, e, 2, &mo)
            || q >= e || *q++ != '-' || !sf_digits(&q, e, 2, &d)) return 0;
        if (q < e && (*q == 'T' || *q == ' ')) {
            q++;
            if (!sf_digits(&q, e, 2, &h) || h > 23) return 0;
            if (q < e && *q == ':') {
                q++;
                if (!sf_digits(&q, e, 2, &mi) || mi > 59) return 0;
                if (q < e && *q == ':') {
                    q++;
                    if (!sf_digits(&q, e, 2, &sec) || sec > 60) return 0;
                    if (q < e && (*q == '.' || *q == ',')) {
                        const unsigned char *f = ++q;
                        while (q < e && SF_ISDIGIT(*q)) q++;
                        if (q == f) return 0;
                    }
                }
            }
            if (q < e && *q == 'Z') q++;
            else if (q < e && (*q == '+' || *q == '-')) {
                int oh, om;
                q++;
                if (!sf_digits(&q, e, 2, &oh) || oh > 23) return 0;
                if (q < e && *q == ':') {
                    q++;
                    if (!sf_digits(&q, e, 2, &om) || om > 59) return 0; /* +HH:MM */
                } else if (q < e && (!sf_digits(&q, e, 2, &om) || om > 59)) {
                    return 0; /* +HHMM */
                }
            }
        }
        if (q != e || !sf_date_ok(y, mo, d)) return 0;
        *wd = sf_weekday(y, mo, d);
    } else { /* Unix time */
        int64_t secs = 0, days, z, era, doe, yoe, doy, mp;
        const unsigned char *r;
        int n = (int)(q - p);
        if (!(n == 9 || n == 10 || n == 12 || n == 13)) return 0;
        for (r = p; r < q; r++) secs = secs * 10 + (*r - '0');
        if (q < e && *q == '.') {
            const unsigned char *f = ++q;
            while (q < e && SF_ISDIGIT(*q)) q++;
            if (q == f) return 0;
        }
        if (q != e) return 0;
        if (n >= 12) secs /= 1000;
        days = secs / 86400;
        h = (int)(secs % 86400 / 3600);
        /* the civil date of a day count (H. Hinnant's days_from_civil, inverted) */
        z = days + 719468;
        era = z / 146097;
        doe = z - era * 146097;
        yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        mp = (5 * doy + 2) / 153;
        d = (int)(doy - (153 * mp + 2) / 5 + 1);
        mo = (int)(mp < 10 ? mp + 3 : mp - 9);
        y = (int)(yoe + era * 400 + (mo <= 2));
        if (y > 2099) return 0;
        *wd = (int)((days + 3) % 7); /* 1970-01-01 was a Thursday */
    }
    *t = (int64_t)y * 1000000 + mo * 10000 + d * 100 + h;
    *hod = h;
    return 1;
}

/* The compiled form of a delimited schema (built by streamfusion/data/encoder.py). */
typedef struct {
    int ncols;            /* input columns per line */
    unsigned char delim;
    int F, T;             /* learner fields, tree features */
    int bits, count_bits;
    int label_missing_ok; /* empty label -> y NaN (Kafka) instead of an error (files) */
    const int32_t *kind;  /* [ncols] SF_SKIP..SF_TIME */
    const int32_t *field; /* [ncols] learner slot (HOUR, TIME: hour of day, weekday = +1) or -1 */
    const int32_t *dslot; /* [ncols] dense slot (HOUR, TIME: hour of day, weekday = +1) or -1 */
    const int32_t *dmode; /* [ncols] SF_DENSE_* for SF_CAT */
    const uint64_t *salt; /* [F] per learner field */
    const int32_t *num_row; /* [F] learner row of a numeric field (hash of the field alone) */
    const int32_t *lenient; /* [ncols] SF_NUM: a word in the cell is missing, not an error */
    int32_t *counts;      /* [2**count_bits] saturating frequency counts */
    int64_t *seen;        /* [1] rows encoded so far: counts become shares of them */
    int64_t *unparsed;    /* [ncols] lenient cells read as missing, per column */
    int frozen;           /* score with a saved model: read counts and seen, never write
                           * them; each row is encoded as if it were the next one seen */
} sf_spec;

/* Parse whole lines of buf[start:end) into rows [0, max_rows) of the outputs. Stops at the
 * first malformed row (state ERR*), at max_rows or at end. `fs`/`fe`/`num` are scratch of
 * ncols entries. Returns the number of rows written. */
static int64_t sf_parse_delim(const sf_spec *s, const unsigned char *buf, int64_t start,
                              int64_t end, int64_t max_rows, int32_t *ind, float *val,
                              float *dense, float *y, int64_t *line_out, int64_t *time_out,
                              const unsigned char **fs, const unsigned char **fe, double *num,
                              int64_t *st)
{
    const unsigned char *p = buf + start, *e = buf + end;
    const int ncols = s->ncols, F = s->F, T = s->T;
    const uint64_t cmask = ((uint64_t)1 << s->count_bits) - 1;
    int64_t rows = 0, line = st[SF_ST_LINE];
    int64_t max_time = st[SF_ST_MAX_TIME], ooo = st[SF_ST_OOO];
    st[SF_ST_ERR] = SF_OK;

    while (rows < max_rows && p < e) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(e - p));
        const unsigned char *le = nl ? nl : e, *next = nl ? nl + 1 : e;
        const unsigned char *q, *f0;
        unsigned char hi = 0, delim = s->delim;
        const int quoting = delim == ',';
        int nc = 0, c, err = SF_OK, errcol = 0, hod = 0, wd = 0, timed = 0;
        int64_t t = -1;
        double label = NAN;
        line++;
        if (le > p && le[-1] == '\r') le--;
        if (le == p) { p = next; continue; } /* blank line: not a row */

        /* phase 1: split and validate; nothing is written, so a bad row leaves no trace
         * (in particular no count-table update). A comma-separated field that starts with
         * a double quote is quoted (RFC 4180): its value is what lies between the quotes,
         * with any doubled quote inside kept as is (hashing needs identity, not unescaping). */
        for (q = p;;) {
            f0 = q;
            if (quoting && q < le && *q == '"') {
                const unsigned char *r = q + 1;
                while (r < le && (*r != '"' || (r + 1 < le && r[1] == '"'))) {
                    hi |= *r;
                    r += (*r == '"') ? 2 : 1;
                }
                if (r >= le || (r + 1 < le && r[1] != delim)) { err = SF_E_QUOTE; break; }
                if (nc < ncols) { fs[nc] = q + 1; fe[nc] = r; }
                q = r + 1;
            } else {
                while (q < le && *q != delim) hi |= *q++;
                if (nc < ncols) { fs[nc] = f0; fe[nc] = q; }
            }
            nc++;
            if (q >= le) break;
            q++; /* past the delimiter: a field follows, possibly empty */
        }
        if (err != SF_OK) errcol = nc;
        else if ((hi & 0x80) && !sf_utf8_valid(p, le)) err = SF_E_UTF8;
        else if (nc != ncols) { err = SF_E_COLUMNS; errcol = nc; }
        for (c = 0; c < ncols && err == SF_OK; c++) {
            int k = s->kind[c];
            if (k == SF_NUM) {
                if (fs[c] == fe[c]) num[c] = NAN; /* missing */
                else if (!sf_parse_num(fs[c], fe[c], &num[c])) {
                    /* a rare word in a numeric column ("?", "unknown") is a missing value
                     * there; phase 2 counts it, so a row rejected later leaves no count */
                    if (s->lenient[c]) num[c] = NAN;
                    else { err = SF_E_NUMERIC; errcol = c; }
                }
            } else if (k == SF_LABEL) {
                if (fs[c] == fe[c]) {
                    if (!s->label_missing_ok) { err = SF_E_LABEL; errcol = c; }
                } else if (!sf_parse_label(fs[c], fe[c], &label)) {
                    err = SF_E_LABEL; errcol = c;
                }
            } else if (k == SF_HOUR) {
                if (!sf_parse_hour(fs[c], fe[c], &t, &hod, &wd)) { err = SF_E_HOUR; errcol = c; }
            }
        }
        if (err != SF_OK) {
            st[SF_ST_ERR] = err;
            st[SF_ST_ERR_LINE] = line;
            st[SF_ST_ERR_NEXT] = next - buf;
            st[SF_ST_ERR_COL] = errcol;
            line--;
            break;
        }

        /* phase 2: hash and write row `rows` */
        {
            int32_t *ri = ind + rows * F;
            float *rv = val + rows * F, *rd = dense + rows * T;
            /* a count as a share of the rows seen (per million) stays comparable as the
             * stream grows: trees fitted on one window still mean the same ids later */
            const double per_row = 1e6 / (double)(s->frozen ? *s->seen + 1 : ++*s->seen);
            for (c = 0; c < ncols; c++) {
                int k = s->kind[c], f = s->field[c], d = s->dslot[c];
                if (k == SF_CAT) {
                    uint64_t h = sf_murmur64(fs[c], fe[c] - fs[c], s->salt[f]);
                    ri[f] = sf_row(h, s->bits);
                    rv[f] = 1.0f;
                    if (d >= 0) {
                        if (s->dmode[c] == SF_DENSE_COUNT) {
                            int32_t *cnt = s->counts + (h & cmask);
                            if (s->frozen) { /* the count this row would have had */
                                rd[d] = (float)((double)(*cnt < INT32_MAX ? *cnt + 1 : *cnt)
                                                * per_row);
                            } else {
                                if (*cnt < INT32_MAX) (*cnt)++; /* saturate, never wrap */
                                rd[d] = (float)((double)*cnt * per_row);
                            }
                        } else {
                            double x;
                            rd[d] = sf_parse_num(fs[c], fe[c], &x) ? (float)x : 0.0f;
                        }
                    }
                } else if (k == SF_NUM) {
                    double x = num[c];
                    int miss = isnan(x);
                    if (miss && fs[c] != fe[c]) s->unparsed[c]++; /* non-empty, not a number */
                    ri[f] = s->num_row[f];
                    rv[f] = miss ? 0.0f : sf_scale(x);
                    /* and the number's bin as a category of its own: a weight per range
                     * learns what one slope cannot (counts, ages, U-shapes) */
                    {
                        int32_t bin = miss ? INT32_MIN : sf_bin(x);
                        ri[f + 1] = sf_row(sf_murmur64((const unsigned char *)&bin, 4,
                                                       s->salt[f + 1]), s->bits);
                        rv[f + 1] = 1.0f;
                    }
                    /* the learner gets the paper's fill rule (0); the trees see the gap as
                     * NaN, LightGBM's missing value, since missingness itself can predict */
                    if (d >= 0) rd[d] = miss ? NAN : (float)x;
                } else if (k == SF_HOUR) {
                    unsigned char wdc = (unsigned char)('0' + wd);
                    ri[f] = sf_row(sf_murmur64(fs[c] + 6, 2, s->salt[f]), s->bits);
                    rv[f] = 1.0f;
                    ri[f + 1] = sf_row(sf_murmur64(&wdc, 1, s->salt[f + 1]), s->bits);
                    rv[f + 1] = 1.0f;
                    if (d >= 0) { rd[d] = (float)hod; rd[d + 1] = (float)wd; }
                } else if (k == SF_TIME) {
                    /* as HOUR's fields; a cell that is not a time is missing there (the
                     * empty token, NaN for the trees) and counted when not empty. The first
                     * time column is the row's time. */
                    int64_t tc = -1;
                    int th = 0, tw = 0;
                    const int ok = sf_parse_time(fs[c], fe[c], &tc, &th, &tw);
                    const unsigned char hc[2] = {(unsigned char)('0' + th / 10),
                                                 (unsigned char)('0' + th % 10)};
                    const unsigned char wc = (unsigned char)('0' + tw);
                    if (!ok && fs[c] != fe[c]) s->unparsed[c]++;
                    ri[f] = sf_row(sf_murmur64(hc, ok ? 2 : 0, s->salt[f]), s->bits);
                    rv[f] = 1.0f;
                    ri[f + 1] = sf_row(sf_murmur64(&wc, ok ? 1 : 0, s->salt[f + 1]), s->bits);
                    rv[f + 1] = 1.0f;
                    if (d >= 0) {
                        rd[d] = ok ? (float)th : NAN;
                        rd[d + 1] = ok ? (float)tw : NAN;
                    }
                    if (!timed) t = tc; /* the first time column's, -1 when missing */
                    timed = 1;
                }
            }
            y[rows] = (float)label;
            line_out[rows] = line;
            time_out[rows] = t;
            if (t >= 0) {
                if (t < max_time) ooo++;
                else max_time = t;
            }
        }
        rows++;
        p = next;
    }
    st[SF_ST_POS] = p - buf;
    st[SF_ST_LINE] = line;
    st[SF_ST_MAX_TIME] = max_time;
    st[SF_ST_OOO] = ooo;
    return rows;
}

/* Dense slot of feature id `idx`: the ids below T themselves when `ids` is NULL, else the
 * position of idx in the T sorted `ids` (binary search: T is a few hundred at most); -1 when
 * the trees do not see it. */
static inline int64_t sf_dense_slot(int64_t idx, const int64_t *ids, int64_t T)
{
    int64_t lo = 0, hi = T;
    if (ids == NULL) return idx < T ? idx : -1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (ids[mid] < idx) lo = mid + 1;
        else hi = mid;
    }
    return lo < T && ids[lo] == idx ? lo : -1;
}

/* libsvm / libFM (`label idx:val ...`) and libffm (`label field:idx:val ...`) lines. Each
 * feature goes to one of F slots in order; the rest get `pad_row` with value 0. The index
 * token is hashed as bytes with the salt of its field (0 without fields); values are used as
 * given. A label is 0/1 or -1/+1 (-1 is 0). Feature ids the trees see (sf_dense_slot) fill
 * their dense column; an absent feature is 0 there, libsvm's own meaning of a sparse gap. */
static int64_t sf_parse_svm(const unsigned char *buf, int64_t start, int64_t end,
                            int64_t max_rows, int F, int T, int bits, uint64_t seed,
                            int field_aware, const int64_t *dense_ids, int32_t pad_row,
                            int32_t *ind, float *val, float *dense, float *y,
                            int64_t *line_out, int64_t *time_out, int64_t *st)
{
    const unsigned char *p = buf + start, *e = buf + end;
    int64_t rows = 0, line = st[SF_ST_LINE];
    const uint64_t salt0 = sf_salt(seed, 0);
    st[SF_ST_ERR] = SF_OK;

    while (rows < max_rows && p < e) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(e - p));
        const unsigned char *le = nl ? nl : e, *next = nl ? nl + 1 : e;
        const unsigned char *q = p, *t0;
        int32_t *ri = ind + rows * F;
        float *rv = val + rows * F, *rd = dense + rows * T;
        unsigned char hi = 0;
        int err = SF_OK, nf = 0, i;
        double label = 0;
        line++;
        if (le > p && le[-1] == '\r') le--;
        for (t0 = p; t0 < le; t0++) hi |= *t0;
        while (q < le && (*q == ' ' || *q == '\t')) q++;
        if (q == le) { p = next; continue; } /* blank line */
        if ((hi & 0x80) && !sf_utf8_valid(p, le)) err = SF_E_UTF8;
        for (i = 0; i < T; i++) rd[i] = 0.0f;
        /* label: 0/1, or -1/+1 as libsvm and libFM write it */
        t0 = q;
        while (q < le && *q != ' ' && *q != '\t') q++;
        if (err == SF_OK && (!sf_parse_num(t0, q, &label) || (label != 0 && label != 1 && label != -1)))
            err = SF_E_LABEL;
        if (label < 0) label = 0;
        while (err == SF_OK && q < le) {
            const unsigned char *c1 = NULL, *c2 = NULL, *s0, *ie;
            uint64_t salt = salt0;
            double x;
            while (q < le && (*q == ' ' || *q == '\t')) q++;
            if (q == le) break;
            s0 = q;
            while (q < le && *q != ' ' && *q != '\t') {
                if (*q == ':') { if (!c1) c1 = q; else if (!c2) c2 = q; else { err = SF_E_TOKEN; break; } }
                q++;
            }
            if (err) break;
            if (field_aware) {
                double fld;
                if (!c2 || !sf_parse_num(s0, c1, &fld) || fld < 0 || fld != floor(fld)) { err = SF_E_TOKEN; break; }
                salt = sf_salt(seed, (int64_t)fld);
                s0 = c1 + 1; ie = c2;
            } else {
                if (!c1 || c2) { err = SF_E_TOKEN; break; }
                ie = c1;
            }
            if (ie == s0) { err = SF_E_TOKEN; break; }
            for (t0 = s0; t0 < ie; t0++) if (!SF_ISDIGIT(*t0)) break;
            if (t0 != ie) { err = SF_E_TOKEN; break; }
            if (!sf_parse_num(ie + 1, q, &x)) { err = SF_E_NUMERIC; break; }
            if (nf >= F) { err = SF_E_TOO_MANY; break; }
            ri[nf] = sf_row(sf_murmur64(s0, ie - s0, salt), bits);
            rv[nf] = (float)x;
            nf++;
            if (T > 0 && ie - s0 <= 18) { /* longer ids overflow int64: never a tree column */
                int64_t idx = 0, slot;
                for (t0 = s0; t0 < ie; t0++) idx = idx * 10 + (*t0 - '0');
                slot = sf_dense_slot(idx, dense_ids, T);
                if (slot >= 0) rd[slot] = (float)x;
            }
        }
        if (err != SF_OK) {
            st[SF_ST_ERR] = err;
            st[SF_ST_ERR_LINE] = line;
            st[SF_ST_ERR_NEXT] = next - buf;
            st[SF_ST_ERR_COL] = nf;
            line--;
            break;
        }
        for (i = nf; i < F; i++) { ri[i] = pad_row; rv[i] = 0.0f; }
        y[rows] = (float)label;
        line_out[rows] = line;
        time_out[rows] = -1;
        rows++;
        p = next;
    }
    st[SF_ST_POS] = p - buf;
    st[SF_ST_LINE] = line;
    return rows;
}

#endif /* SF_PARSE_CORE_H */
