/*
 * json.c: a strict pull reader and a writer for JSON.
 *
 * Why not jansson here: profile and event lines are the import hot path, and
 * jansson builds a tree of hashed, separately allocated nodes (16 us for a
 * 650-byte profile line on the reference machine, against a target of
 * 6.7 us per profile for the whole import). This reader walks the bytes once,
 * returns strings as views into the input unless they hold escapes, and
 * converts numbers exactly without strtod in the common case.
 *
 * Strictness: RFC 8259 grammar, UTF-8 validated, "\u0000" refused (ids and
 * keys are C strings downstream), nesting bounded by NBX_JSON_DEPTH_MAX.
 */
#include "nbx_int.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Numbers
 * ======================================================================== */

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

/* Length of a JSON number at s (0 if none). */
static size_t number_span(const char *s, const char *end)
{
    const char *p = s;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return 0;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    return (size_t)(p - s);
}

static const double exact_pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Convert a validated JSON number. Fast path: at most 15 significant digits
 * and a decimal exponent within +-22 means mantissa and power of ten are both
 * exact doubles, so one multiply or divide rounds correctly. */
static bool convert_number(const char *s, size_t n, double *out)
{
    const char *p = s, *end = s + n;
    bool neg = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    uint64_t mant = 0;
    int ndigits = 0, exp10 = 0;
    bool fast = true;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        if (mant == 0 && *p == '0')
            continue;
        if (ndigits < 19)
            mant = mant * 10 + (uint64_t)(*p - '0');
        else
            exp10++;
        ndigits++;
    }
    if (p < end && *p == '.') {
        for (p++; p < end && *p >= '0' && *p <= '9'; p++) {
            if (mant == 0 && *p == '0') {
                exp10--;
                continue;
            }
            if (ndigits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                exp10--;
            }
            ndigits++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int esign = 1, e = 0;
        if (*p == '+' || *p == '-')
            esign = *p++ == '-' ? -1 : 1;
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (e < 100000)
                e = e * 10 + (*p - '0');
        exp10 += esign * e;
    }
    if (ndigits > 15)
        fast = false;
    if (fast && exp10 >= -22 && exp10 <= 22) {
        double v = (double)mant;
        v = exp10 < 0 ? v / exact_pow10[-exp10] : v * exact_pow10[exp10];
        *out = neg ? -v : v;
        return true;
    }
    if (mant == 0) {
        *out = neg ? -0.0 : 0.0;
        return true;
    }
    char tmp[128];
    if (n >= sizeof tmp)
        return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    pthread_once(&c_locale_once, c_locale_init);
    *out = c_locale ? strtod_l(tmp, NULL, c_locale) : strtod(tmp, NULL);
    return true;
}

bool nbx_parse_double(const char *s, size_t n, double *out)
{
    if (!s || n == 0)
        return false;
    size_t span = number_span(s, s + n);
    if (span != n)
        return false;
    return convert_number(s, n, out) && isfinite(*out);
}

/* ========================================================================
 * Reader
 * ======================================================================== */

/* Per nesting level, a bit set while no element was read at that level. */
#define FIRST_BIT(d) (UINT64_C(1) << ((d)&63))

void nbx_jr_init(nbx_jr *r, const char *data, size_t len, nbx_arena *scratch)
{
    r->start = r->p = data;
    r->end = data + len;
    r->scratch = scratch;
    r->depth = 0;
    r->first = 0;
    r->err[0] = '\0';
}

size_t nbx_jr_column(const nbx_jr *r)
{
    return (size_t)(r->p - r->start) + 1;
}

static bool fail(nbx_jr *r, const char *what)
{
    if (!r->err[0])
        snprintf(r->err, sizeof r->err, "column %zu: %s", nbx_jr_column(r), what);
    return false;
}

static inline void skip_ws(nbx_jr *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

nbx_jtype nbx_jr_peek(nbx_jr *r)
{
    if (r->err[0])
        return NBX_J_ERROR;
    skip_ws(r);
    if (r->p >= r->end)
        return NBX_J_END;
    switch (*r->p) {
    case 'n':
        return NBX_J_NULL;
    case 't':
        return NBX_J_TRUE;
    case 'f':
        return NBX_J_FALSE;
    case '"':
        return NBX_J_STRING;
    case '{':
        return NBX_J_OBJECT;
    case '[':
        return NBX_J_ARRAY;
    default:
        if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9'))
            return NBX_J_NUMBER;
        return NBX_J_ERROR;
    }
}

static bool literal(nbx_jr *r, const char *word, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return fail(r, "invalid literal");
    r->p += n;
    return true;
}

bool nbx_jr_null(nbx_jr *r)
{
    if (nbx_jr_peek(r) != NBX_J_NULL)
        return fail(r, "expected null");
    return literal(r, "null", 4);
}

bool nbx_jr_bool(nbx_jr *r, bool *out)
{
    nbx_jtype t = nbx_jr_peek(r);
    if (t == NBX_J_TRUE) {
        *out = true;
        return literal(r, "true", 4);
    }
    if (t == NBX_J_FALSE) {
        *out = false;
        return literal(r, "false", 5);
    }
    return fail(r, "expected true or false");
}

bool nbx_jr_number(nbx_jr *r, double *out)
{
    if (nbx_jr_peek(r) != NBX_J_NUMBER)
        return fail(r, "expected a number");
    size_t n = number_span(r->p, r->end);
    if (n == 0)
        return fail(r, "invalid number");
    if (n > 100)
        return fail(r, "number longer than 100 characters");
    if (!convert_number(r->p, n, out))
        return fail(r, "invalid number");
    if (!isfinite(*out))
        return fail(r, "number out of range");
    r->p += n;
    return true;
}

static int hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode an escaped string body [s, e) into the arena. */
static bool unescape(nbx_jr *r, const char *s, const char *e, nbx_sv *out)
{
    if (!r->scratch)
        return fail(r, "escaped string not supported here");
    char *o = nbx_arena_alloc(r->scratch, (size_t)(e - s) + 1);
    if (!o)
        return fail(r, "out of memory");
    char *w = o;
    for (const char *p = s; p < e;) {
        if (*p != '\\') {
            *w++ = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case '"':
        case '\\':
        case '/':
            *w++ = *p++;
            break;
        case 'b':
            *w++ = '\b';
            p++;
            break;
        case 'f':
            *w++ = '\f';
            p++;
            break;
        case 'n':
            *w++ = '\n';
            p++;
            break;
        case 'r':
            *w++ = '\r';
            p++;
            break;
        case 't':
            *w++ = '\t';
            p++;
            break;
        case 'u': {
            int hi = hex4(p + 1, e);
            if (hi < 0)
                return fail(r, "invalid \\u escape");
            p += 5;
            uint32_t cp = (uint32_t)hi;
            if (hi >= 0xD800 && hi <= 0xDBFF) {
                int lo = (e - p >= 6 && p[0] == '\\' && p[1] == 'u') ? hex4(p + 2, e) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return fail(r, "unpaired surrogate in \\u escape");
                cp = 0x10000 + (((uint32_t)hi - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
                p += 6;
            } else if (hi >= 0xDC00 && hi <= 0xDFFF) {
                return fail(r, "unpaired surrogate in \\u escape");
            }
            if (cp == 0)
                return fail(r, "\\u0000 is not allowed in strings");
            w += put_utf8(w, cp);
            break;
        }
        default:
            return fail(r, "invalid escape");
        }
    }
    *w = '\0';
    out->ptr = o;
    out->len = (size_t)(w - o);
    return true;
}

bool nbx_jr_string(nbx_jr *r, nbx_sv *out)
{
    if (nbx_jr_peek(r) != NBX_J_STRING)
        return fail(r, "expected a string");
    const char *s = ++r->p;
    bool escaped = false;
    const unsigned char *p = (const unsigned char *)s, *end = (const unsigned char *)r->end;
    while (p < end) {
        unsigned char c = *p;
        if (c == '"')
            break;
        if (c == '\\') {
            escaped = true;
            if (p + 1 >= end)
                break;
            p += 2;
            continue;
        }
        if (c < 0x20) {
            r->p = (const char *)p;
            return fail(r, "control character in string");
        }
        if (c >= 0x80) {
            size_t n = nbx_utf8_len(p, end);
            if (n == 0) {
                r->p = (const char *)p;
                return fail(r, "invalid UTF-8 in string");
            }
            p += n;
            continue;
        }
        p++;
    }
    if (p >= end) {
        r->p = (const char *)p;
        return fail(r, "unterminated string");
    }
    const char *e = (const char *)p;
    r->p = e + 1;
    if (!escaped) {
        out->ptr = s;
        out->len = (size_t)(e - s);
        return true;
    }
    return unescape(r, s, e, out);
}

static bool open_container(nbx_jr *r, char c)
{
    skip_ws(r);
    if (r->p >= r->end || *r->p != c)
        return fail(r, c == '{' ? "expected an object" : "expected an array");
    if (r->depth >= NBX_JSON_DEPTH_MAX)
        return fail(r, "nesting deeper than 32 levels");
    r->p++;
    r->depth++;
    r->first |= FIRST_BIT(r->depth);
    return true;
}

bool nbx_jr_object_begin(nbx_jr *r)
{
    return open_container(r, '{');
}

bool nbx_jr_array_begin(nbx_jr *r)
{
    return open_container(r, '[');
}

/* Shared step for objects and arrays: 1 another element, 0 closed, -1 error. */
static int container_next(nbx_jr *r, char close)
{
    if (r->err[0])
        return -1;
    skip_ws(r);
    if (r->p >= r->end)
        return fail(r, "unexpected end of input"), -1;
    bool first = (r->first & FIRST_BIT(r->depth)) != 0;
    if (*r->p == close) {
        r->p++;
        r->depth--;
        return 0;
    }
    if (!first) {
        if (*r->p != ',')
            return fail(r, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'"), -1;
        r->p++;
        skip_ws(r);
    }
    r->first &= ~FIRST_BIT(r->depth);
    return 1;
}

int nbx_jr_object_next(nbx_jr *r, nbx_sv *key)
{
    int rc = container_next(r, '}');
    if (rc != 1)
        return rc;
    if (nbx_jr_peek(r) != NBX_J_STRING)
        return fail(r, "expected a string key"), -1;
    if (!nbx_jr_string(r, key))
        return -1;
    skip_ws(r);
    if (r->p >= r->end || *r->p != ':')
        return fail(r, "expected ':'"), -1;
    r->p++;
    return 1;
}

int nbx_jr_array_next(nbx_jr *r)
{
    return container_next(r, ']');
}

bool nbx_jr_skip(nbx_jr *r)
{
    nbx_sv sv;
    double d;
    bool b;
    switch (nbx_jr_peek(r)) {
    case NBX_J_NULL:
        return nbx_jr_null(r);
    case NBX_J_TRUE:
    case NBX_J_FALSE:
        return nbx_jr_bool(r, &b);
    case NBX_J_NUMBER:
        return nbx_jr_number(r, &d);
    case NBX_J_STRING:
        return nbx_jr_string(r, &sv);
    case NBX_J_OBJECT: {
        if (!nbx_jr_object_begin(r))
            return false;
        int rc;
        while ((rc = nbx_jr_object_next(r, &sv)) == 1)
            if (!nbx_jr_skip(r))
                return false;
        return rc == 0;
    }
    case NBX_J_ARRAY: {
        if (!nbx_jr_array_begin(r))
            return false;
        int rc;
        while ((rc = nbx_jr_array_next(r)) == 1)
            if (!nbx_jr_skip(r))
                return false;
        return rc == 0;
    }
    case NBX_J_END:
        return fail(r, "unexpected end of input");
    default:
        return fail(r, "unexpected character");
    }
}

bool nbx_jr_finish(nbx_jr *r)
{
    if (r->err[0])
        return false;
    skip_ws(r);
    if (r->p != r->end)
        return fail(r, "unexpected data after the JSON value");
    return true;
}

/* ========================================================================
 * Writer
 * ======================================================================== */

void nbx_jw_string(nbx_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (nbx_buf_reserve(b, n + 2) != NBX_OK)
        return;
    nbx_buf_putc(b, '"');
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    const unsigned char *run = p;
    while (p < end) {
        unsigned char c = *p;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f) {
            p++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = nbx_utf8_len(p, end);
            /* C1 controls (U+0080..U+009F) are valid JSON as they are, but
             * a terminal showing the text may obey them: escaped, as C0 */
            if (k == 2 && c == 0xC2 && p[1] < 0xA0) {
                nbx_buf_append(b, run, (size_t)(p - run));
                char u[6] = {'\\', 'u', '0', '0', hex[p[1] >> 4], hex[p[1] & 15]};
                nbx_buf_append(b, u, 6);
                p += 2;
                run = p;
                continue;
            }
            if (k) {
                p += k;
                continue;
            }
        }
        nbx_buf_append(b, run, (size_t)(p - run));
        switch (c) {
        case '"':
            nbx_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            nbx_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            nbx_buf_append(b, "\\n", 2);
            break;
        case '\r':
            nbx_buf_append(b, "\\r", 2);
            break;
        case '\t':
            nbx_buf_append(b, "\\t", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                nbx_buf_append(b, u, 6);
            } else {
                /* invalid UTF-8 from a caller: keep the output valid JSON */
                nbx_buf_append(b, "\\ufffd", 6);
            }
        }
        p++;
        run = p;
    }
    nbx_buf_append(b, run, (size_t)(p - run));
    nbx_buf_putc(b, '"');
}

/* printf's decimal point follows LC_NUMERIC, which the embedding process
 * owns; JSON needs '.'. */
static void fix_decimal_point(char *s)
{
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || *s == '-' || *s == '+' || *s == 'e' || *s == 'E'))
            *s = '.';
}

void nbx_jw_number(nbx_buf *b, double v)
{
    if (!isfinite(v)) {
        nbx_buf_append(b, "null", 4);
        return;
    }
    char tmp[40];
    /* Range first: converting a double outside int64_t is undefined. */
    if (fabs(v) < 1e15 && v == (double)(int64_t)v) {
        int64_t i = (int64_t)v;
        char *e = tmp + sizeof tmp, *p = e;
        uint64_t u = i < 0 ? (uint64_t)(-i) : (uint64_t)i;
        do {
            *--p = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (i < 0 || (i == 0 && signbit(v)))
            *--p = '-';
        nbx_buf_append(b, p, (size_t)(e - p));
        return;
    }
    pthread_once(&c_locale_once, c_locale_init);
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        fix_decimal_point(tmp);
        double back = c_locale ? strtod_l(tmp, NULL, c_locale) : strtod(tmp, NULL);
        if (back == v || prec == 17)
            break;
    }
    nbx_buf_puts(b, tmp);
}

/* llround(x) for 0 <= x < 2^63, inline: a decision result prints three
 * numbers per action, and the call cost more than the digits. Exact: x's
 * fraction below the units holds fewer bits than x, so x - trunc(x) is
 * exact (0 once x >= 2^52, where every double is whole). */
static inline int64_t round_half_away(double x)
{
    int64_t whole = (int64_t)x;
    return whole + (x - (double)whole >= 0.5);
}

/* Decision results print money and scores on every request: fixed point
 * with up to 9 decimals from integer arithmetic, instead of printf's exact
 * conversion (a third of the result's cost, measured). Values outside the
 * range where that keeps 6 significant digits take the exact path. */
void nbx_jw_decimal(nbx_buf *b, double v)
{
    double a = fabs(v);
    if (!isfinite(v) || a >= 1e9 || (a < 1e-3 && a != 0)) {
        nbx_jw_number(b, v);
        return;
    }
    int64_t scaled = round_half_away(a * 1e9);
    uint64_t ip = (uint64_t)scaled / 1000000000u, fp = (uint64_t)scaled % 1000000000u;
    char tmp[32];
    char *e = tmp + sizeof tmp, *p = e;
    if (fp) {
        int digits = 9;
        while (fp % 10 == 0) {
            fp /= 10;
            digits--;
        }
        for (int i = 0; i < digits; i++) {
            *--p = (char)('0' + fp % 10);
            fp /= 10;
        }
        *--p = '.';
    }
    do {
        *--p = (char)('0' + ip % 10);
        ip /= 10;
    } while (ip);
    if (v < 0 && scaled != 0)
        *--p = '-';
    nbx_buf_append(b, p, (size_t)(e - p));
}
