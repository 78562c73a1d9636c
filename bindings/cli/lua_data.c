/*
 * lua_data.c: a Lua file read as data, never run.
 *
 * Test files of `nbx policy test` are Lua ("return { {name = ..., expect =
 * {...}}, ... }"), written by marketers, and run in CI next to secrets. They
 * are read, not executed: this parser knows the one statement a data file
 * needs (`return` and a value) and the values a case is made of (tables,
 * strings, numbers, true, false, nil), with Lua's own spelling of each
 * (both string quotes and long brackets with their escapes, decimal and hex
 * numbers, `--` and `--[[ ]]` comments, `,` and `;`), and constants
 * (`local consenting = { personalization = true }` before the `return`,
 * then `consent = consenting` in any case: a copy). Anything else
 * (a function, arithmetic, a call) is refused naming FILE:LINE,
 * so no file can read a file, reach the network or loop forever, and every
 * value keeps the line it was written on for messages about it.
 *
 * Bounds: 1 MiB of file, 64 levels of nesting, 1,000,000 values, strings of
 * 64 KiB, valid UTF-8 without NUL.
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define LD_FILE_MAX (1u << 20)
#define LD_DEPTH_MAX 64
#define LD_VALUES_MAX 1000000
#define LD_STRING_MAX (64u << 10)

#define LD_LOCALS_MAX 200

typedef struct ld_parser {
    const char *path;
    /* constants: local NAME = value, before the return */
    char *local_names[LD_LOCALS_MAX];
    struct ld_value *local_values[LD_LOCALS_MAX];
    size_t n_locals;
    const char *p, *end;
    int line;
    int depth;
    size_t values;
    char *err; /* "path:line: message", malloc'd */
} ld_parser;

static bool fail(ld_parser *ps, const char *fmt, ...) CLI_PRINTF(2, 3);
static bool fail(ld_parser *ps, const char *fmt, ...)
{
    if (ps->err)
        return false;
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = strlen(ps->path) + strlen(msg) + 32;
    ps->err = malloc(n);
    if (ps->err)
        snprintf(ps->err, n, "%s:%d: %s", ps->path, ps->line, msg);
    return false;
}

/* What stands at p, for messages: a word, or the character. */
static void describe_here(const ld_parser *ps, char *buf, size_t size)
{
    if (ps->p >= ps->end) {
        snprintf(buf, size, "the end of the file");
        return;
    }
    size_t n = 0;
    while (ps->p + n < ps->end && n < 24 && (isalnum((unsigned char)ps->p[n]) || ps->p[n] == '_'))
        n++;
    if (n == 0)
        n = 1;
    char word[32];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 5 < sizeof word; i++) {
        unsigned char c = (unsigned char)ps->p[i];
        if (c < 0x20 || c >= 0x7F)
            k += (size_t)snprintf(word + k, sizeof word - k, "\\x%02x", c);
        else
            word[k++] = (char)c;
    }
    word[k] = '\0';
    snprintf(buf, size, "'%s'", word);
}

/* ========================================================================
 * Blanks and comments
 * ======================================================================== */

/* The level of a long bracket at p ("[[" 0, "[==[" 2), or -1. */
static int long_bracket(const char *p, const char *end, char open)
{
    if (p >= end || *p != open)
        return -1;
    int level = 0;
    p++;
    while (p < end && *p == '=') {
        level++;
        p++;
    }
    return p < end && *p == open ? level : -1;
}

/* Skip past the long bracket closing level; NULL if it never closes. */
static bool skip_long(ld_parser *ps, int level, const char **body, size_t *body_len)
{
    ps->p += level + 2;
    /* a newline right after the opening bracket is not part of the string */
    if (ps->p < ps->end && (*ps->p == '\r' || *ps->p == '\n')) {
        char first = *ps->p++;
        if (ps->p < ps->end && (*ps->p == '\r' || *ps->p == '\n') && *ps->p != first)
            ps->p++;
        ps->line++;
    }
    const char *start = ps->p;
    while (ps->p < ps->end) {
        if (long_bracket(ps->p, ps->end, ']') == level) {
            if (body) {
                *body = start;
                *body_len = (size_t)(ps->p - start);
            }
            ps->p += level + 2;
            return true;
        }
        if (*ps->p == '\n')
            ps->line++;
        ps->p++;
    }
    return fail(ps, "a long string or comment never closes (no ']%.*s]')", level,
                "==========================================================");
}

static bool skip_blanks(ld_parser *ps)
{
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == '\n') {
            ps->line++;
            ps->p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
            ps->p++;
        } else if (c == '-' && ps->p + 1 < ps->end && ps->p[1] == '-') {
            ps->p += 2;
            int level = long_bracket(ps->p, ps->end, '[');
            if (level >= 0) {
                if (!skip_long(ps, level, NULL, NULL))
                    return false;
            } else {
                while (ps->p < ps->end && *ps->p != '\n')
                    ps->p++;
            }
        } else {
            break;
        }
    }
    return true;
}

static bool is_name_start(char c)
{
    return isalpha((unsigned char)c) || c == '_';
}

static size_t name_len(const ld_parser *ps)
{
    size_t n = 0;
    while (ps->p + n < ps->end && (isalnum((unsigned char)ps->p[n]) || ps->p[n] == '_'))
        n++;
    return n;
}

static bool word_is(const ld_parser *ps, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(ps->end - ps->p) >= n && memcmp(ps->p, word, n) == 0 && name_len(ps) == n;
}

/* ========================================================================
 * Values
 * ======================================================================== */

static ld_value *new_value(ld_parser *ps, ld_type type)
{
    if (++ps->values > LD_VALUES_MAX) {
        fail(ps, "more than %d values", LD_VALUES_MAX);
        return NULL;
    }
    ld_value *v = calloc(1, sizeof *v);
    if (!v) {
        fail(ps, "out of memory");
        return NULL;
    }
    v->type = type;
    v->line = ps->line;
    return v;
}

void ld_free(ld_value *v)
{
    if (!v)
        return;
    free(v->str);
    for (size_t i = 0; i < v->n_items; i++)
        ld_free(v->items[i]);
    free(v->items);
    for (size_t i = 0; i < v->n_keys; i++) {
        free(v->keys[i]);
        ld_free(v->vals[i]);
    }
    free(v->keys);
    free(v->vals);
    free(v);
}

typedef struct strbuf {
    char *data;
    size_t len, cap;
} strbuf;

static bool sb_put(ld_parser *ps, strbuf *b, const char *s, size_t n)
{
    if (b->len + n > LD_STRING_MAX)
        return fail(ps, "a string longer than %u bytes", LD_STRING_MAX);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return fail(ps, "out of memory");
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

/* Code point as UTF-8 (Lua's \u{XXX}); false past U+10FFFF or a surrogate. */
static bool put_utf8(ld_parser *ps, strbuf *b, unsigned long cp)
{
    char out[4];
    size_t n;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return fail(ps, "\\u{%lx} is not a character", cp);
    if (cp < 0x80) {
        out[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12), out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        out[0] = (char)(0xF0 | cp >> 18), out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    }
    return sb_put(ps, b, out, n);
}

/* One escape after a backslash in a quoted string. */
static bool read_escape(ld_parser *ps, strbuf *b)
{
    if (ps->p >= ps->end)
        return fail(ps, "a string never closes");
    char c = *ps->p++;
    static const char from[] = "abfnrtv\\\"'", to[] = "\a\b\f\n\r\t\v\\\"'";
    const char *simple = strchr(from, c);
    if (c && simple)
        return sb_put(ps, b, &to[simple - from], 1);
    if (c == '\n' || c == '\r') {
        ps->line++;
        if (ps->p < ps->end && (*ps->p == '\n' || *ps->p == '\r') && *ps->p != c)
            ps->p++;
        return sb_put(ps, b, "\n", 1);
    }
    if (c == 'z') {
        while (ps->p < ps->end && isspace((unsigned char)*ps->p)) {
            if (*ps->p == '\n')
                ps->line++;
            ps->p++;
        }
        return true;
    }
    if (c == 'x') {
        if (ps->end - ps->p < 2 || !isxdigit((unsigned char)ps->p[0]) ||
            !isxdigit((unsigned char)ps->p[1]))
            return fail(ps, "\\x needs two hexadecimal digits");
        char hex[3] = {ps->p[0], ps->p[1], '\0'};
        ps->p += 2;
        char byte = (char)strtoul(hex, NULL, 16);
        return sb_put(ps, b, &byte, 1);
    }
    if (isdigit((unsigned char)c)) {
        unsigned v = (unsigned)(c - '0');
        for (int i = 0; i < 2 && ps->p < ps->end && isdigit((unsigned char)*ps->p); i++)
            v = v * 10 + (unsigned)(*ps->p++ - '0');
        if (v > 255)
            return fail(ps, "\\%u is not a byte (at most \\255)", v);
        char byte = (char)v;
        return sb_put(ps, b, &byte, 1);
    }
    if (c == 'u' && ps->p < ps->end && *ps->p == '{') {
        char *endp;
        errno = 0;
        unsigned long cp = strtoul(ps->p + 1, &endp, 16);
        if (endp == ps->p + 1 || endp >= ps->end || *endp != '}' || errno)
            return fail(ps, "\\u{...} needs hexadecimal digits and a '}'");
        ps->p = endp + 1;
        return put_utf8(ps, b, cp);
    }
    return fail(ps, "unknown escape '\\%c' in a string", isprint((unsigned char)c) ? c : '?');
}

/* The string's bytes must be text: UTF-8 without NUL. */
static bool check_text(ld_parser *ps, const strbuf *b, int line)
{
    const unsigned char *s = (const unsigned char *)b->data;
    for (size_t i = 0; i < b->len;) {
        size_t n = cli_utf8_len(s + i, b->len - i);
        if (n == 0 || s[i] == 0) {
            ps->line = line;
            return fail(ps, "a string with a byte that is not UTF-8 text (\\x%02x)", s[i]);
        }
        i += n;
    }
    return true;
}

static ld_value *read_string(ld_parser *ps)
{
    int line = ps->line;
    strbuf b = {0};
    sb_put(ps, &b, "", 0);
    int level = long_bracket(ps->p, ps->end, '[');
    if (level >= 0) {
        const char *body;
        size_t len;
        if (!skip_long(ps, level, &body, &len) || !sb_put(ps, &b, body, len))
            goto fail;
    } else {
        char quote = *ps->p++;
        for (;;) {
            if (ps->p >= ps->end || *ps->p == '\n' || *ps->p == '\r') {
                ps->line = line;
                fail(ps, "a string never closes (a %c without its closing %c on the same line)",
                     quote, quote);
                goto fail;
            }
            char c = *ps->p++;
            if (c == quote)
                break;
            if (c == '\\' ? !read_escape(ps, &b) : !sb_put(ps, &b, &c, 1))
                goto fail;
        }
    }
    if (!check_text(ps, &b, line))
        goto fail;
    ld_value *v = new_value(ps, LD_STRING);
    if (!v)
        goto fail;
    v->line = line;
    v->str = b.data;
    v->len = b.len;
    return v;
fail:
    free(b.data);
    return NULL;
}

static ld_value *read_number(ld_parser *ps, bool negative)
{
    const char *start = ps->p;
    size_t n = 0;
    while (ps->p + n < ps->end && (isalnum((unsigned char)ps->p[n]) || ps->p[n] == '.' ||
                                   ((ps->p[n] == '+' || ps->p[n] == '-') && n > 0 &&
                                    (ps->p[n - 1] == 'e' || ps->p[n - 1] == 'E' ||
                                     ps->p[n - 1] == 'p' || ps->p[n - 1] == 'P'))))
        n++;
    char text[80];
    if (n >= sizeof text)
        return fail(ps, "a number longer than %zu characters", sizeof text - 1), NULL;
    memcpy(text, start, n);
    text[n] = '\0';
    char *endp;
    errno = 0;
    double v = strtod(text, &endp);
    if (endp != text + n || n == 0 || !isfinite(v) || errno == ERANGE)
        return fail(ps, "'%s' is not a number this file can hold", text), NULL;
    ps->p += n;
    ld_value *x = new_value(ps, LD_NUMBER);
    if (x)
        x->number = negative ? -v : v;
    return x;
}

static ld_value *read_value(ld_parser *ps);
static bool table_add(ld_parser *ps, ld_value *t, char *key, int key_line, ld_value *v);

/* A constant used as a value: a copy, dated where it is used. */
static ld_value *copy_value(ld_parser *ps, const ld_value *v)
{
    ld_value *c = new_value(ps, v->type);
    if (!c)
        return NULL;
    c->boolean = v->boolean;
    c->number = v->number;
    if (v->str && !(c->str = strndup(v->str, v->len))) {
        ld_free(c);
        return fail(ps, "out of memory"), NULL;
    }
    c->len = v->len;
    for (size_t i = 0; i < v->n_items; i++) {
        ld_value *x = copy_value(ps, v->items[i]);
        if (!x || !table_add(ps, c, NULL, ps->line, x)) {
            ld_free(c);
            return NULL;
        }
    }
    for (size_t i = 0; i < v->n_keys; i++) {
        ld_value *x = copy_value(ps, v->vals[i]);
        char *key = x ? strdup(v->keys[i]) : NULL;
        if (!key) {
            ld_free(x);
            ld_free(c);
            return fail(ps, "out of memory"), NULL;
        }
        if (!table_add(ps, c, key, ps->line, x)) {
            ld_free(c);
            return NULL;
        }
    }
    return c;
}

static const ld_value *find_local(const ld_parser *ps, const char *name, size_t n)
{
    for (size_t i = ps->n_locals; i-- > 0;)
        if (strlen(ps->local_names[i]) == n && memcmp(ps->local_names[i], name, n) == 0)
            return ps->local_values[i];
    return NULL;
}

static bool table_add(ld_parser *ps, ld_value *t, char *key, int key_line, ld_value *v)
{
    if (key) {
        for (size_t i = 0; i < t->n_keys; i++) {
            if (strcmp(t->keys[i], key) == 0) {
                ps->line = key_line;
                fail(ps, "'%.64s' is given twice in one table (the first, line %d, would be lost)",
                     key, t->vals[i]->line);
                free(key);
                ld_free(v);
                return false;
            }
        }
        char **keys = realloc(t->keys, (t->n_keys + 1) * sizeof *keys);
        ld_value **vals = keys ? realloc(t->vals, (t->n_keys + 1) * sizeof *vals) : NULL;
        if (keys)
            t->keys = keys;
        if (!vals) {
            free(key);
            ld_free(v);
            return fail(ps, "out of memory");
        }
        t->vals = vals;
        t->keys[t->n_keys] = key;
        t->vals[t->n_keys++] = v;
        return true;
    }
    ld_value **items = realloc(t->items, (t->n_items + 1) * sizeof *items);
    if (!items) {
        ld_free(v);
        return fail(ps, "out of memory");
    }
    t->items = items;
    t->items[t->n_items++] = v;
    return true;
}

/* A field's key, if the field has one: NAME = or ["string"] =. */
static bool read_key(ld_parser *ps, char **key, int *key_line)
{
    *key = NULL;
    *key_line = ps->line;
    if (is_name_start(*ps->p)) {
        size_t n = name_len(ps);
        const char *q = ps->p + n;
        while (q < ps->end && (*q == ' ' || *q == '\t'))
            q++;
        if (q < ps->end && *q == '=' && (q + 1 >= ps->end || q[1] != '=')) {
            *key = strndup(ps->p, n);
            if (!*key)
                return fail(ps, "out of memory");
            ps->p = q + 1;
        }
        return true;
    }
    if (*ps->p == '[' && long_bracket(ps->p, ps->end, '[') < 0) {
        ps->p++;
        if (!skip_blanks(ps))
            return false;
        if (ps->p >= ps->end || (*ps->p != '"' && *ps->p != '\''))
            return fail(ps, "a key in brackets must be a string ([\"o-1\"] = ...)");
        ld_value *k = read_string(ps);
        if (!k)
            return false;
        if (!skip_blanks(ps) || ps->p >= ps->end || *ps->p != ']') {
            ld_free(k);
            return fail(ps, "expected ']' after the key");
        }
        ps->p++;
        if (!skip_blanks(ps) || ps->p >= ps->end || *ps->p != '=') {
            ld_free(k);
            return fail(ps, "expected '=' after the key");
        }
        ps->p++;
        *key = k->str;
        k->str = NULL;
        ld_free(k);
    }
    return true;
}

static ld_value *read_table(ld_parser *ps)
{
    if (++ps->depth > LD_DEPTH_MAX)
        return fail(ps, "tables nested more than %d deep", LD_DEPTH_MAX), NULL;
    ld_value *t = new_value(ps, LD_TABLE);
    if (!t)
        return NULL;
    ps->p++; /* { */
    for (;;) {
        if (!skip_blanks(ps))
            goto fail;
        if (ps->p >= ps->end) {
            fail(ps, "the table opened on line %d never closes (no '}')", t->line);
            goto fail;
        }
        if (*ps->p == '}') {
            ps->p++;
            break;
        }
        char *key;
        int key_line;
        if (!read_key(ps, &key, &key_line))
            goto fail;
        ld_value *v = read_value(ps);
        if (!v) {
            free(key);
            goto fail;
        }
        if (!table_add(ps, t, key, key_line, v))
            goto fail;
        if (!skip_blanks(ps))
            goto fail;
        if (ps->p < ps->end && (*ps->p == ',' || *ps->p == ';')) {
            ps->p++;
        } else if (ps->p < ps->end && *ps->p != '}') {
            char here[48];
            describe_here(ps, here, sizeof here);
            fail(ps, "expected ',' or '}' in the table opened on line %d, found %s", t->line, here);
            goto fail;
        }
    }
    ps->depth--;
    return t;
fail:
    ld_free(t);
    return NULL;
}

static ld_value *read_value(ld_parser *ps)
{
    if (!skip_blanks(ps))
        return NULL;
    if (ps->p >= ps->end)
        return fail(ps, "expected a value, found the end of the file"), NULL;
    char c = *ps->p;
    if (c == '{')
        return read_table(ps);
    if (c == '"' || c == '\'' || long_bracket(ps->p, ps->end, '[') >= 0)
        return read_string(ps);
    if (isdigit((unsigned char)c) ||
        (c == '.' && ps->p + 1 < ps->end && isdigit((unsigned char)ps->p[1])))
        return read_number(ps, false);
    if (c == '-') {
        ps->p++;
        if (!skip_blanks(ps))
            return NULL;
        if (ps->p < ps->end && (isdigit((unsigned char)*ps->p) || *ps->p == '.'))
            return read_number(ps, true);
        return fail(ps, "'-' may only stand before a number"), NULL;
    }
    ld_value *v = NULL;
    if (word_is(ps, "true") || word_is(ps, "false")) {
        if ((v = new_value(ps, LD_BOOL)))
            v->boolean = *ps->p == 't';
        ps->p += v && v->boolean ? 4 : 5;
        return v;
    }
    if (word_is(ps, "nil")) {
        ps->p += 3;
        return new_value(ps, LD_NIL);
    }
    if (is_name_start(c)) {
        size_t n = name_len(ps);
        const ld_value *constant = find_local(ps, ps->p, n);
        if (constant) {
            ps->p += n;
            return copy_value(ps, constant);
        }
    }
    char here[48];
    describe_here(ps, here, sizeof here);
    if (is_name_start(c))
        fail(ps,
             "found %s: a test file holds data only (tables, strings, numbers, true, false, nil, "
             "and names defined above with 'local NAME = value'), no functions or calls",
             here);
    else
        fail(ps, "expected a value (a table, a string, a number, true, false or nil), found %s",
             here);
    return NULL;
}

/* local NAME = value */
static bool read_local(ld_parser *ps)
{
    ps->p += 5;
    if (!skip_blanks(ps))
        return false;
    size_t n = ps->p < ps->end && is_name_start(*ps->p) ? name_len(ps) : 0;
    if (n == 0)
        return fail(ps, "expected a name after 'local'");
    if (ps->n_locals == LD_LOCALS_MAX)
        return fail(ps, "more than %d names defined with 'local'", LD_LOCALS_MAX);
    char *name = strndup(ps->p, n);
    if (!name)
        return fail(ps, "out of memory");
    ps->p += n;
    if (!skip_blanks(ps) || ps->p >= ps->end || *ps->p != '=') {
        fail(ps, "expected '=' after 'local %.64s' (a name is defined once, with a value)", name);
        free(name);
        return false;
    }
    ps->p++;
    ld_value *v = read_value(ps);
    if (!v) {
        free(name);
        return false;
    }
    ps->local_names[ps->n_locals] = name;
    ps->local_values[ps->n_locals++] = v;
    if (skip_blanks(ps) && ps->p < ps->end && *ps->p == ';')
        ps->p++;
    return true;
}

ld_value *ld_parse(const char *path, const char *text, size_t len, char **err)
{
    ld_parser ps = {.path = path, .p = text, .end = text + len, .line = 1};
    *err = NULL;
    /* a first line "#!..." is skipped by Lua too */
    if (len >= 1 && text[0] == '#')
        while (ps.p < ps.end && *ps.p != '\n')
            ps.p++;
    ld_value *v = NULL;
    while (skip_blanks(&ps) && word_is(&ps, "local") && read_local(&ps))
        ;
    if (!ps.err) {
        if (!word_is(&ps, "return")) {
            char here[48];
            describe_here(&ps, here, sizeof here);
            fail(&ps,
                 "a test file is 'return {' and its cases (after comments and 'local NAME = "
                 "value' lines), found %s",
                 here);
        } else {
            ps.p += 6;
            v = read_value(&ps);
        }
    }
    if (v && skip_blanks(&ps) && ps.p < ps.end && *ps.p == ';')
        ps.p++;
    if (v && skip_blanks(&ps) && ps.p < ps.end) {
        char here[48];
        describe_here(&ps, here, sizeof here);
        fail(&ps, "found %s after the returned value: nothing may follow it", here);
    }
    for (size_t i = 0; i < ps.n_locals; i++) {
        free(ps.local_names[i]);
        ld_free(ps.local_values[i]);
    }
    if (ps.err) {
        ld_free(v);
        *err = ps.err;
        return NULL;
    }
    return v;
}

ld_value *ld_load(const char *path, char **err)
{
    *err = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (asprintf(err, "%s: %s", path, strerror(errno)) < 0)
            *err = NULL;
        return NULL;
    }
    char *text;
    size_t len;
    int rc = cli_read_stream(f, LD_FILE_MAX, &text, &len);
    int saved = errno;
    fclose(f);
    if (rc != 0) {
        if (asprintf(err, "%s: %s", path, saved == EFBIG ? "larger than 1 MiB" : strerror(saved)) <
            0)
            *err = NULL;
        return NULL;
    }
    ld_value *v = ld_parse(path, text, len, err);
    free(text);
    return v;
}

const ld_value *ld_get(const ld_value *t, const char *key)
{
    if (!t || t->type != LD_TABLE)
        return NULL;
    for (size_t i = 0; i < t->n_keys; i++)
        if (strcmp(t->keys[i], key) == 0)
            return t->vals[i]->type == LD_NIL ? NULL : t->vals[i];
    return NULL;
}

const char *ld_type_name(const ld_value *v)
{
    static const char *const names[] = {"nil", "a boolean", "a number", "a string", "a table"};
    return v ? names[v->type] : "nil";
}
