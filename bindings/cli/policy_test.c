/*
 * policy_test.c: nbx policy test POLICY --catalog FILE TESTFILE... [--junit FILE]
 *
 * Does the policy do what its author meant? Each test file returns a list
 * of cases (read as data by lua_data.c, never run); each case describes a
 * customer (profile fields plus `exposures`), a session, placements and a
 * clock, and what the decision must show:
 *
 *   return {
 *     { name = "at-risk customers see the winback offer first",
 *       customer = { consent = { personalization = true },
 *                    rfm = { segment = "at_risk" },
 *                    exposures = { free_shipping = { impressions = 3 } } },
 *       placements = { "hero" }, as_of = "2026-03-10T12:00:00Z",
 *       expect = { top = { hero = "winback_20" },
 *                  excluded = { free_shipping = "frequency" } } },
 *   }
 *
 * The customer is given to an engine without a store (profile_json and
 * exposures_json of the request), so a test needs no data and gives the
 * same answer everywhere. Each case is one line, ok or not ok with what
 * differed in words; a summary follows; the exit status is 1 when a case
 * failed or a file could not be read. --junit writes the same as JUnit XML.
 */
#include "cli.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* clang-format off */
const cli_flag cli_policy_test_flags[] = {
    {"catalog", CLI_STRING, "FILE", "catalog JSON file (required)", 0, 0},
    {"junit", CLI_STRING, "FILE", "also write the results as JUnit XML to FILE (for CI)", 0, 0},
    {"as-of", CLI_TIME, "TIME", "the clock of cases that give no as_of (default: now)", 0, 0},
    {"verbose", CLI_BOOL, NULL, "show the policy's nbx.log lines of passing cases too", 0, 0},
    CLI_FLAG_TIME_LIMIT,
    CLI_FLAG_MEMORY_LIMIT,
    CLI_FLAG_END,
};
/* clang-format on */

#define CASE_KEYS "name, customer, session, placements, as_of, expect"
#define CUSTOMER_KEYS "id, attrs, consent, propensity, ltv, churn, rfm, updated_at, exposures"
#define EXPECT_KEYS "top, shown, not_shown, excluded, fallback, score_between"
/* The id of a case's customer when it gives none. */
#define DEFAULT_CUSTOMER "policy-test"

/* ========================================================================
 * Messages: a growing list of lines
 * ======================================================================== */

typedef struct lines {
    char *text; /* lines joined by '\n' */
    size_t len;
    size_t count;
    char *first;
} lines;

static void add_line(lines *l, const char *fmt, ...) CLI_PRINTF(2, 3);
static void add_line(lines *l, const char *fmt, ...)
{
    char *line = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    char *grown = realloc(l->text, l->len + (size_t)n + 2);
    if (!grown) {
        free(line);
        return;
    }
    l->text = grown;
    if (l->len)
        l->text[l->len++] = '\n';
    memcpy(l->text + l->len, line, (size_t)n + 1);
    l->len += (size_t)n;
    if (!l->first)
        l->first = line;
    else
        free(line);
    l->count++;
}

static void lines_free(lines *l)
{
    free(l->text);
    free(l->first);
}

/* ========================================================================
 * The catalog's ids, to refuse expectations that name nothing
 * ======================================================================== */

typedef struct catalog_ids {
    json_t *offers;     /* id -> name (or null) */
    json_t *placements; /* id -> true */
} catalog_ids;

static int catalog_ids_load(const char *path, catalog_ids *ids, char *err, size_t size)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    ids->offers = json_object();
    ids->placements = json_object();
    if (!root || !ids->offers || !ids->placements) {
        snprintf(err, size, "%s:%d: %s", path, jerr.line, jerr.text);
        json_decref(root);
        return -1;
    }
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(root, "offers"), i, x)
    {
        const char *id = json_string_value(json_object_get(x, "id"));
        json_t *name = json_object_get(x, "name");
        if (id)
            json_object_set(ids->offers, id, json_is_string(name) ? name : json_null());
    }
    json_array_foreach(json_object_get(root, "placements"), i, x)
    {
        const char *id = json_string_value(json_object_get(x, "id"));
        if (id)
            json_object_set_new(ids->placements, id, json_true());
    }
    json_decref(root);
    return 0;
}

static void catalog_ids_free(catalog_ids *ids)
{
    json_decref(ids->offers);
    json_decref(ids->placements);
}

/* ========================================================================
 * A case, checked and built from the test file
 * ======================================================================== */

typedef struct test_case {
    const ld_value *v;
    char *name;
    char *customer_id;
    char *profile_json; /* NULL: an anonymous visitor */
    size_t profile_len;
    char *exposures_json;
    size_t exposures_len;
    nbx_kv session[NBX_REQUEST_SESSION_MAX];
    char *session_text[NBX_REQUEST_SESSION_MAX]; /* owned values */
    size_t n_session;
    const char *placements[NBX_REQUEST_PLACEMENTS_MAX];
    size_t n_placements;
    int64_t now_ms;
    const ld_value *expect;
} test_case;

static void case_free(test_case *c)
{
    free(c->name);
    free(c->customer_id);
    free(c->profile_json);
    free(c->exposures_json);
    for (size_t i = 0; i < c->n_session; i++)
        free(c->session_text[i]);
}

/* A problem with the file's content: "FILE:LINE: message". */
static int problem(lines *out, const char *file, const ld_value *at, const char *fmt, ...)
    CLI_PRINTF(4, 5);
static int problem(lines *out, const char *file, const ld_value *at, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    add_line(out, "%s:%d: %s", file, at ? at->line : 0, msg);
    return -1;
}

static int check_keys(lines *out, const char *file, const ld_value *t, const char *what,
                      const char *known)
{
    if (t->n_items)
        return problem(out, file, t->items[0], "%s: a value without a name (known: %s)", what,
                       known);
    for (size_t i = 0; i < t->n_keys; i++) {
        /* a whole word of the comma-separated list */
        const char *k = t->keys[i], *p = known;
        size_t n = strlen(k);
        bool found = false;
        while ((p = strstr(p, k)) != NULL) {
            bool start = p == known || p[-1] == ' ';
            bool end = p[n] == '\0' || p[n] == ',';
            if (start && end) {
                found = true;
                break;
            }
            p += n;
        }
        if (!found)
            return problem(out, file, t->vals[i], "%s.%s: unknown field (known: %s)", what, k,
                           known);
    }
    return 0;
}

/* Lua data as JSON: a table of names is an object, a list an array (an
 * empty table is an object). */
static int write_json(FILE *f, lines *out, const char *file, const ld_value *v, const char *what)
{
    switch (v->type) {
    case LD_NIL:
        fputs("null", f);
        return 0;
    case LD_BOOL:
        fputs(v->boolean ? "true" : "false", f);
        return 0;
    case LD_NUMBER:
        if (v->number == floor(v->number) && fabs(v->number) < 9007199254740992.0)
            fprintf(f, "%.0f", v->number);
        else
            fprintf(f, "%.17g", v->number);
        return 0;
    case LD_STRING:
        cli_print_json_string(f, v->str);
        return 0;
    case LD_TABLE:
        break;
    }
    if (v->n_items && v->n_keys)
        return problem(out, file, v, "%s: a table mixes a list and named fields", what);
    if (v->n_items) {
        putc('[', f);
        for (size_t i = 0; i < v->n_items; i++) {
            if (i)
                putc(',', f);
            if (write_json(f, out, file, v->items[i], what))
                return -1;
        }
        putc(']', f);
        return 0;
    }
    putc('{', f);
    for (size_t i = 0; i < v->n_keys; i++) {
        if (i)
            putc(',', f);
        cli_print_json_string(f, v->keys[i]);
        putc(':', f);
        if (write_json(f, out, file, v->vals[i], what))
            return -1;
    }
    putc('}', f);
    return 0;
}

/* The profile JSON of the case's customer (every field but exposures) and
 * its exposures JSON. */
static int build_customer(test_case *c, lines *out, const char *file, const ld_value *cust)
{
    if (cust->type != LD_TABLE)
        return problem(out, file, cust, "customer: must be a table of profile fields, not %s",
                       ld_type_name(cust));
    if (check_keys(out, file, cust, "customer", CUSTOMER_KEYS))
        return -1;
    const ld_value *id = ld_get(cust, "id");
    if (id && id->type != LD_STRING)
        return problem(out, file, id, "customer.id: must be a string");
    c->customer_id = strdup(id ? id->str : DEFAULT_CUSTOMER);
    FILE *f = open_memstream(&c->profile_json, &c->profile_len);
    if (!f || !c->customer_id)
        return problem(out, file, cust, "out of memory");
    fputs("{\"id\":", f);
    cli_print_json_string(f, c->customer_id);
    int rc = 0;
    for (size_t i = 0; i < cust->n_keys && rc == 0; i++) {
        if (strcmp(cust->keys[i], "exposures") == 0 || strcmp(cust->keys[i], "id") == 0)
            continue;
        putc(',', f);
        cli_print_json_string(f, cust->keys[i]);
        putc(':', f);
        rc = write_json(f, out, file, cust->vals[i], "customer");
    }
    putc('}', f);
    fclose(f);
    const ld_value *x = ld_get(cust, "exposures");
    if (rc == 0 && x) {
        if (x->type != LD_TABLE)
            return problem(out, file, x,
                           "customer.exposures: must be a table (offer = {impressions = 3, ...})");
        f = open_memstream(&c->exposures_json, &c->exposures_len);
        if (!f)
            return problem(out, file, x, "out of memory");
        rc = write_json(f, out, file, x, "customer.exposures");
        fclose(f);
    }
    return rc;
}

static int build_session(test_case *c, lines *out, const char *file, const ld_value *s)
{
    if (s->type != LD_TABLE || s->n_items)
        return problem(out, file, s, "session: must be a table of names (channel = \"web\")");
    if (s->n_keys > NBX_REQUEST_SESSION_MAX)
        return problem(out, file, s, "session: more than %d fields", NBX_REQUEST_SESSION_MAX);
    for (size_t i = 0; i < s->n_keys; i++) {
        const ld_value *v = s->vals[i];
        char *text = NULL;
        if (v->type == LD_STRING)
            text = strdup(v->str);
        else if (v->type == LD_BOOL)
            text = strdup(v->boolean ? "true" : "false");
        else if (v->type == LD_NUMBER && asprintf(&text, "%.17g", v->number) < 0)
            text = NULL;
        else if (v->type != LD_NUMBER)
            return problem(out, file, v, "session.%s: must be a string, number or boolean",
                           s->keys[i]);
        if (!text)
            return problem(out, file, v, "out of memory");
        c->session_text[c->n_session] = text;
        c->session[c->n_session].key = s->keys[i];
        c->session[c->n_session++].value = text;
    }
    return 0;
}

static int build_placements(test_case *c, lines *out, const char *file, const catalog_ids *ids,
                            const ld_value *p)
{
    if (p->type != LD_TABLE || p->n_keys)
        return problem(out, file, p, "placements: must be a list ({\"hero\", \"recs\"})");
    if (p->n_items > NBX_REQUEST_PLACEMENTS_MAX)
        return problem(out, file, p, "placements: more than %d", NBX_REQUEST_PLACEMENTS_MAX);
    for (size_t i = 0; i < p->n_items; i++) {
        const ld_value *v = p->items[i];
        if (v->type != LD_STRING)
            return problem(out, file, v, "placements: must hold strings, not %s", ld_type_name(v));
        if (!json_object_get(ids->placements, v->str))
            return problem(out, file, v, "placements: '%s' is not a placement of the catalog",
                           v->str);
        c->placements[c->n_placements++] = v->str;
    }
    return 0;
}

static int build_clock(test_case *c, lines *out, const char *file, const ld_value *t)
{
    if (t->type == LD_STRING) {
        if (nbx_time_parse(t->str, &c->now_ms) == NBX_OK)
            return 0;
    } else if (t->type == LD_NUMBER && fabs(t->number) < 2.5e11) {
        c->now_ms = (int64_t)llround(t->number * 1000);
        return 0;
    }
    return problem(out, file, t,
                   "as_of: must be an RFC 3339 time (\"2026-03-10T12:00:00Z\") "
                   "or epoch seconds");
}

/* ------------------------------------------------------------------------
 * Expectations, checked before anything runs
 * ------------------------------------------------------------------------ */

static int need_offer(lines *out, const char *file, const catalog_ids *ids, const ld_value *at,
                      const char *what, const char *offer)
{
    if (json_object_get(ids->offers, offer))
        return 0;
    return problem(out, file, at, "expect.%s: '%s' is not an offer of the catalog", what, offer);
}

static bool known_exclusion(const char *reason)
{
    if (strncmp(reason, "ineligible: ", 12) == 0)
        return true;
    for (int i = 1; i < NBX_EXCLUDED_COUNT; i++)
        if (strcmp(reason, nbx_excluded_name(i)) == 0)
            return true;
    return false;
}

static int check_offer_list(lines *out, const char *file, const catalog_ids *ids, const ld_value *v,
                            const char *what)
{
    if (v->type != LD_TABLE || v->n_keys)
        return problem(out, file, v, "expect.%s: must be a list of offer ids ({\"o001\"})", what);
    for (size_t i = 0; i < v->n_items; i++) {
        if (v->items[i]->type != LD_STRING)
            return problem(out, file, v->items[i], "expect.%s: must hold offer ids (strings)",
                           what);
        if (need_offer(out, file, ids, v->items[i], what, v->items[i]->str))
            return -1;
    }
    return 0;
}

static int check_expect(lines *out, const char *file, const catalog_ids *ids, const ld_value *e)
{
    if (e->type != LD_TABLE)
        return problem(out, file, e, "expect: must be a table (known: %s)", EXPECT_KEYS);
    if (check_keys(out, file, e, "expect", EXPECT_KEYS))
        return -1;
    const ld_value *v;
    if ((v = ld_get(e, "top"))) {
        if (v->type != LD_TABLE || v->n_items)
            return problem(out, file, v, "expect.top: must name placements (hero = \"o001\")");
        for (size_t i = 0; i < v->n_keys; i++) {
            const ld_value *x = v->vals[i];
            if (!json_object_get(ids->placements, v->keys[i]))
                return problem(out, file, x, "expect.top: '%s' is not a placement of the catalog",
                               v->keys[i]);
            if (x->type == LD_BOOL && !x->boolean)
                continue;
            if (x->type != LD_STRING)
                return problem(out, file, x,
                               "expect.top.%s: must be an offer id, or false for nothing shown",
                               v->keys[i]);
            if (need_offer(out, file, ids, x, "top", x->str))
                return -1;
        }
    }
    if ((v = ld_get(e, "shown")) && check_offer_list(out, file, ids, v, "shown"))
        return -1;
    if ((v = ld_get(e, "not_shown")) && check_offer_list(out, file, ids, v, "not_shown"))
        return -1;
    if ((v = ld_get(e, "excluded"))) {
        if (v->type != LD_TABLE || v->n_items)
            return problem(out, file, v,
                           "expect.excluded: must name offers (o003 = \"guardrail\")");
        for (size_t i = 0; i < v->n_keys; i++) {
            const ld_value *x = v->vals[i];
            if (need_offer(out, file, ids, x, "excluded", v->keys[i]))
                return -1;
            if (x->type == LD_BOOL && !x->boolean)
                continue;
            if (x->type != LD_STRING || !known_exclusion(x->str))
                return problem(out, file, x,
                               "expect.excluded.%s: must be false or a reason: consent, "
                               "frequency, cooldown, contacts, budget, validity, ineligible, "
                               "\"ineligible: THE POLICY'S REASON\", guardrail, policy_error",
                               v->keys[i]);
        }
    }
    if ((v = ld_get(e, "fallback")) && v->type != LD_BOOL)
        return problem(out, file, v, "expect.fallback: must be true or false");
    if ((v = ld_get(e, "score_between"))) {
        if (v->type != LD_TABLE || v->n_items)
            return problem(out, file, v,
                           "expect.score_between: must name offers (o001 = {0.1, 0.5})");
        for (size_t i = 0; i < v->n_keys; i++) {
            const ld_value *x = v->vals[i];
            if (need_offer(out, file, ids, x, "score_between", v->keys[i]))
                return -1;
            if (x->type != LD_TABLE || x->n_keys || x->n_items != 2 ||
                x->items[0]->type != LD_NUMBER || x->items[1]->type != LD_NUMBER ||
                x->items[0]->number > x->items[1]->number)
                return problem(out, file, x,
                               "expect.score_between.%s: must be {LOW, HIGH}, two numbers with "
                               "LOW <= HIGH",
                               v->keys[i]);
        }
    }
    return 0;
}

static int build_case(test_case *c, size_t index, lines *out, const char *file,
                      const catalog_ids *ids, const ld_value *v, int64_t default_now)
{
    memset(c, 0, sizeof *c);
    c->v = v;
    c->now_ms = default_now;
    if (v->type != LD_TABLE)
        return problem(out, file, v, "case %zu: must be a table (known: %s), not %s", index,
                       CASE_KEYS, ld_type_name(v));
    const ld_value *name = ld_get(v, "name");
    if (name && name->type == LD_STRING)
        c->name = strdup(name->str);
    else if (asprintf(&c->name, "case %zu", index) < 0)
        c->name = NULL;
    if (!c->name)
        return problem(out, file, v, "out of memory");
    if (name && name->type != LD_STRING)
        return problem(out, file, name, "name: must be a string");
    if (check_keys(out, file, v, "case", CASE_KEYS))
        return -1;
    const ld_value *x;
    if ((x = ld_get(v, "customer")) && build_customer(c, out, file, x))
        return -1;
    if ((x = ld_get(v, "session")) && build_session(c, out, file, x))
        return -1;
    if ((x = ld_get(v, "placements")) && build_placements(c, out, file, ids, x))
        return -1;
    if ((x = ld_get(v, "as_of")) && build_clock(c, out, file, x))
        return -1;
    c->expect = ld_get(v, "expect");
    if (!c->expect)
        return problem(out, file, v, "case '%s': no expect (known: %s)", c->name, EXPECT_KEYS);
    return check_expect(out, file, ids, c->expect);
}

/* ========================================================================
 * Comparing a decision with what was expected
 * ======================================================================== */

static const char *str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* Text from the decision or the test file, as it may reach a terminal, a
 * log or XML: escaped once here (and again by XML, harmlessly). */
static char *escaped(const char *s)
{
    char *out = NULL;
    size_t len;
    FILE *f = open_memstream(&out, &len);
    if (!f)
        return NULL;
    cli_print_escaped(f, s);
    fclose(f);
    return out;
}

/* "o003 at hero: excluded (frequency: shown 3 times ...)" and the like:
 * what happened to one candidate. */
static void describe(char *buf, size_t size, const json_t *c)
{
    char score[48];
    cli_format_number(score, sizeof score, json_number_value(json_object_get(c, "score")));
    char *offer = escaped(str(c, "offer")), *placement = escaped(str(c, "placement"));
    char *reason = escaped(str(c, "reason"));
    const char *excluded = json_string_value(json_object_get(c, "excluded"));
    if (json_is_true(json_object_get(c, "chosen")))
        snprintf(buf, size, "%s at %s was shown (score %s)", offer, placement, score);
    else if (excluded)
        snprintf(buf, size, "%s at %s was excluded as %s (%s)", offer, placement, excluded,
                 reason ? reason : "");
    else
        snprintf(buf, size, "%s at %s was not chosen (score %s, below the chosen ones)", offer,
                 placement, score);
    free(offer);
    free(placement);
    free(reason);
}

static bool exclusion_matches(const json_t *c, const char *want)
{
    const char *got = json_string_value(json_object_get(c, "excluded"));
    if (!got)
        return false;
    if (strncmp(want, "ineligible: ", 12) != 0)
        return strcmp(got, want) == 0;
    /* the engine keeps the policy's reason escaped: compare it escaped */
    char *reason = escaped(want + 12);
    bool same =
        reason && strcmp(got, "ineligible") == 0 && strcmp(str(c, "policy_reason"), reason) == 0;
    free(reason);
    return same;
}

typedef struct decision {
    json_t *doc;
    const json_t *actions, *candidates;
} decision;

/* The first action at a placement, or NULL. */
static const json_t *top_of(const decision *d, const char *placement)
{
    size_t i;
    const json_t *a;
    json_array_foreach(d->actions, i, a) if (strcmp(str(a, "placement"), placement) == 0) return a;
    return NULL;
}

static bool placement_decided(const test_case *c, const char *placement)
{
    if (c->n_placements == 0)
        return true;
    for (size_t i = 0; i < c->n_placements; i++)
        if (strcmp(c->placements[i], placement) == 0)
            return true;
    return false;
}

static void expect_top(const test_case *c, const decision *d, const ld_value *top, lines *diff)
{
    for (size_t i = 0; i < top->n_keys; i++) {
        const char *placement = top->keys[i];
        const ld_value *want = top->vals[i];
        char *pl = escaped(placement);
        if (!placement_decided(c, placement)) {
            add_line(diff, "%s was not decided: the case's placements leave it out", pl);
            free(pl);
            continue;
        }
        const json_t *a = top_of(d, placement);
        char *got = a ? escaped(str(a, "offer")) : NULL;
        char *exp = want->type == LD_STRING ? escaped(want->str) : NULL;
        if (!exp && got)
            add_line(diff, "top of %s is %s, expected nothing shown", pl, got);
        else if (exp && !got)
            add_line(diff, "nothing shown at %s, expected %s", pl, exp);
        else if (exp && got && strcmp(str(a, "offer"), want->str) != 0)
            add_line(diff, "top of %s is %s, expected %s", pl, got, exp);
        free(got);
        free(exp);
        free(pl);
    }
}

/* Every candidate of an offer, described, for "was not shown" lines. */
static void describe_offer(const decision *d, const char *offer, char *buf, size_t size)
{
    size_t n = 0, i;
    const json_t *x;
    buf[0] = '\0';
    json_array_foreach(d->candidates, i, x)
    {
        if (strcmp(str(x, "offer"), offer) != 0 || n + 4 >= size)
            continue;
        char one[512];
        describe(one, sizeof one, x);
        n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? "; " : "", one);
    }
    if (n == 0)
        snprintf(buf, size, "it is not a candidate at the placements decided");
}

static void expect_shown(const decision *d, const ld_value *list, bool shown, lines *diff)
{
    for (size_t i = 0; i < list->n_items; i++) {
        const char *offer = list->items[i]->str;
        const json_t *hit = NULL;
        size_t k;
        const json_t *a;
        json_array_foreach(d->actions, k, a) if (!hit && strcmp(str(a, "offer"), offer) == 0) hit =
            a;
        char *o = escaped(offer);
        if (shown && !hit) {
            char what[2048];
            describe_offer(d, offer, what, sizeof what);
            add_line(diff, "%s was not shown: %s", o, what);
        } else if (!shown && hit) {
            char *pl = escaped(str(hit, "placement"));
            char score[48];
            cli_format_number(score, sizeof score,
                              json_number_value(json_object_get(hit, "score")));
            add_line(diff, "%s was shown at %s (score %s), expected not shown", o, pl, score);
            free(pl);
        }
        free(o);
    }
}

static void expect_excluded(const decision *d, const ld_value *table, lines *diff)
{
    for (size_t i = 0; i < table->n_keys; i++) {
        const char *offer = table->keys[i];
        const ld_value *want = table->vals[i];
        size_t k, n = 0;
        const json_t *x;
        json_array_foreach(d->candidates, k, x)
        {
            if (strcmp(str(x, "offer"), offer) != 0)
                continue;
            n++;
            bool excluded = json_is_string(json_object_get(x, "excluded"));
            bool ok = want->type == LD_STRING ? exclusion_matches(x, want->str) : !excluded;
            if (ok)
                continue;
            char what[1024];
            describe(what, sizeof what, x);
            char *exp = want->type == LD_STRING ? escaped(want->str) : NULL;
            if (exp)
                add_line(diff, "%s, expected excluded as %s", what, exp);
            else
                add_line(diff, "%s, expected not excluded", what);
            free(exp);
        }
        if (n == 0) {
            char *o = escaped(offer);
            add_line(diff, "%s is not a candidate at the placements decided", o);
            free(o);
        }
    }
}

static void expect_scores(const decision *d, const ld_value *table, lines *diff)
{
    for (size_t i = 0; i < table->n_keys; i++) {
        const char *offer = table->keys[i];
        const ld_value *range = table->vals[i];
        double lo = range->items[0]->number, hi = range->items[1]->number;
        char los[48], his[48];
        cli_format_number(los, sizeof los, lo);
        cli_format_number(his, sizeof his, hi);
        size_t k, n = 0;
        const json_t *x;
        json_array_foreach(d->candidates, k, x)
        {
            if (strcmp(str(x, "offer"), offer) != 0)
                continue;
            n++;
            const json_t *score = json_object_get(x, "score");
            char *o = escaped(offer), *pl = escaped(str(x, "placement"));
            if (!json_is_number(score)) {
                const char *why = json_string_value(json_object_get(x, "excluded"));
                add_line(diff,
                         "%s at %s was not scored (excluded as %s), expected a score "
                         "between %s and %s",
                         o, pl, why ? why : "?", los, his);
            } else if (json_number_value(score) < lo || json_number_value(score) > hi) {
                char got[48];
                cli_format_number(got, sizeof got, json_number_value(score));
                add_line(diff, "score of %s at %s is %s, expected between %s and %s", o, pl, got,
                         los, his);
            }
            free(o);
            free(pl);
        }
        if (n == 0) {
            char *o = escaped(offer);
            add_line(diff, "%s is not a candidate at the placements decided", o);
            free(o);
        }
    }
}

static void expect_fallback(const decision *d, const ld_value *want, lines *diff)
{
    bool fell = json_is_true(json_object_get(d->doc, "fallback"));
    bool expected = want && want->boolean;
    if (fell == expected)
        return;
    if (!fell) {
        add_line(diff, "the decision did not fall back, expected the fallback decision");
        return;
    }
    const json_t *err = json_object_get(d->doc, "error");
    char *msg = escaped(str(err, "message"));
    /* a fallback nobody expected fails the case, said once */
    add_line(diff, "the policy failed and the fallback decision was served: %s", msg ? msg : "");
    free(msg);
}

static void compare(const test_case *c, const decision *d, lines *diff)
{
    const ld_value *e = c->expect, *v;
    expect_fallback(d, ld_get(e, "fallback"), diff);
    if ((v = ld_get(e, "top")))
        expect_top(c, d, v, diff);
    if ((v = ld_get(e, "shown")))
        expect_shown(d, v, true, diff);
    if ((v = ld_get(e, "not_shown")))
        expect_shown(d, v, false, diff);
    if ((v = ld_get(e, "excluded")))
        expect_excluded(d, v, diff);
    if ((v = ld_get(e, "score_between")))
        expect_scores(d, v, diff);
}

/* ========================================================================
 * Running
 * ======================================================================== */

typedef struct run {
    cli_args *args;
    nbx_ctx *ctx;
    catalog_ids ids;
    bool verbose;
    size_t passed, failed, bad_files, number;
    cli_junit_suite *suites;
    size_t n_suites;
} run;

static void print_lines(const char *indent, const char *text)
{
    /* text is escaped already: its newlines separate lines */
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        printf("%s%.*s\n", indent, (int)n, p);
        p = nl ? nl + 1 : NULL;
    }
}

/* Decide one case and compare; fills jc. */
static void run_case(run *r, const char *file, test_case *c, cli_junit_case *jc)
{
    lines diff = {0}, log = {0};
    double t0 = cli_now_seconds();
    nbx_request req;
    nbx_request_init(&req);
    req.customer = c->customer_id ? c->customer_id : DEFAULT_CUSTOMER;
    req.profile_json = c->profile_json;
    req.profile_len = c->profile_len;
    req.exposures_json = c->exposures_json;
    req.exposures_len = c->exposures_len;
    req.session = c->session;
    req.n_session = c->n_session;
    req.placements = c->placements;
    req.n_placements = c->n_placements;
    req.now_ms = c->now_ms;
    req.flags = NBX_DECIDE_EXPLAIN;
    const nbx_result *res;
    int rc = nbx_decide(r->ctx, &req, &res);
    decision d = {0};
    if (rc != NBX_OK) {
        char *msg = escaped(nbx_ctx_errmsg(r->ctx));
        add_line(&diff, "%s:%d: the case's request was refused: %s", file, c->v->line,
                 msg ? msg : "");
        free(msg);
    } else {
        size_t len;
        const char *json = nbx_result_json(res, &len);
        d.doc = json_loadb(json, len, 0, NULL);
        d.actions = json_object_get(d.doc, "actions");
        d.candidates = json_object_get(d.doc, "candidates");
        compare(c, &d, &diff);
        size_t i;
        const json_t *line;
        json_array_foreach(json_object_get(d.doc, "log"), i, line)
        {
            char *l = escaped(json_string_value(line) ? json_string_value(line) : "");
            add_line(&log, "%s", l ? l : "");
            free(l);
        }
    }
    jc->seconds = cli_now_seconds() - t0;
    char *name = escaped(c->name);
    r->number++;
    if (diff.count == 0) {
        r->passed++;
        printf("ok %zu - %s\n", r->number, name ? name : "");
        if (r->verbose && log.count)
            print_lines("    log: ", log.text);
        jc->status = CLI_JUNIT_PASSED;
    } else {
        r->failed++;
        printf("not ok %zu - %s (%s:%d)\n", r->number, name ? name : "", file, c->v->line);
        print_lines("    ", diff.text);
        if (log.count)
            print_lines("    log: ", log.text);
        jc->status = CLI_JUNIT_FAILED;
        jc->message = diff.first ? strdup(diff.first) : NULL;
        if (asprintf(&jc->details, "%s:%d\n%s%s%s", file, c->v->line, diff.text,
                     log.count ? "\npolicy log:\n" : "", log.count ? log.text : "") < 0)
            jc->details = NULL;
    }
    free(name);
    json_decref(d.doc);
    lines_free(&diff);
    lines_free(&log);
}

static cli_junit_suite *new_suite(run *r, const char *file)
{
    cli_junit_suite *grown = realloc(r->suites, (r->n_suites + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    r->suites = grown;
    cli_junit_suite *s = &r->suites[r->n_suites++];
    memset(s, 0, sizeof *s);
    s->name = strdup(file);
    return s;
}

static cli_junit_case *new_case(cli_junit_suite *s, const char *name, const char *file, int line)
{
    cli_junit_case *grown = realloc(s->cases, (s->n_cases + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    s->cases = grown;
    cli_junit_case *c = &s->cases[s->n_cases++];
    memset(c, 0, sizeof *c);
    c->name = strdup(name);
    c->file = strdup(file);
    c->line = line;
    return c;
}

/* A file that cannot be used at all: one error line, one JUnit error. */
static void bad_file(run *r, cli_junit_suite *s, const char *file, const char *message)
{
    r->bad_files++;
    char *msg = escaped(message);
    printf("not ok - %s: %s\n", file, msg ? msg : "");
    cli_junit_case *jc = s ? new_case(s, "reading the test file", file, 0) : NULL;
    if (jc) {
        jc->status = CLI_JUNIT_ERROR;
        jc->message = msg ? strdup(msg) : NULL;
        jc->details = msg ? strdup(msg) : NULL;
    }
    free(msg);
}

static void run_file(run *r, const char *file, int64_t default_now)
{
    cli_junit_suite *s = new_suite(r, file);
    char *err = NULL;
    ld_value *root = ld_load(file, &err);
    if (!root) {
        bad_file(r, s, file, err ? err : "out of memory");
        free(err);
        return;
    }
    if (root->type != LD_TABLE || root->n_keys || root->n_items == 0) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "%s:%d: a test file returns a list of cases ({ {name = ..., expect = ...}, "
                 "... }), not %s",
                 file, root->line,
                 root->type == LD_TABLE ? (root->n_keys ? "a table of names" : "an empty list")
                                        : ld_type_name(root));
        bad_file(r, s, file, msg);
        ld_free(root);
        return;
    }
    printf("%s\n", file);
    for (size_t i = 0; i < root->n_items; i++) {
        test_case c;
        lines problems = {0};
        const ld_value *v = root->items[i];
        int rc = build_case(&c, i + 1, &problems, file, &r->ids, v, default_now);
        cli_junit_case *jc = s ? new_case(s, c.name ? c.name : "?", file, v->line) : NULL;
        cli_junit_case scratch = {0};
        if (!jc)
            jc = &scratch;
        if (rc == 0) {
            run_case(r, file, &c, jc);
        } else {
            char *name = escaped(c.name ? c.name : "?");
            char *msg = escaped(problems.text ? problems.text : "");
            r->number++;
            r->failed++;
            printf("not ok %zu - %s\n    %s\n", r->number, name ? name : "", msg ? msg : "");
            jc->status = CLI_JUNIT_ERROR;
            jc->message = msg ? strdup(msg) : NULL;
            jc->details = msg;
            free(name);
        }
        if (jc == &scratch) {
            free(scratch.message);
            free(scratch.details);
        }
        lines_free(&problems);
        case_free(&c);
    }
    ld_free(root);
}

static void free_suites(run *r)
{
    for (size_t i = 0; i < r->n_suites; i++) {
        for (size_t k = 0; k < r->suites[i].n_cases; k++) {
            cli_junit_case *c = &r->suites[i].cases[k];
            free(c->name);
            free(c->file);
            free(c->message);
            free(c->details);
        }
        free(r->suites[i].cases);
        free(r->suites[i].name);
    }
    free(r->suites);
}

int cli_run_policy_test(cli_args *args)
{
    const char *policy = args->positional[0];
    const char *catalog = cli_string(args, "catalog", NULL);
    if (!catalog)
        return cli_usage_error(args->cmd, "--catalog FILE is required");
    run r = {.args = args, .verbose = cli_has(args, "verbose")};
    char err[512];
    nbx_engine_options opts;
    nbx_engine_options_init(&opts);
    opts.catalog = catalog;
    opts.policy = policy;
    opts.time_limit_us = (uint32_t)cli_uint(args, "time-limit-us", 0);
    opts.memory_limit = (size_t)cli_uint(args, "memory-limit", 0);
    opts.flags = NBX_ENGINE_NO_STORE;
    nbx_engine *engine = NULL;
    int rc = nbx_engine_open(&opts, &engine);
    if (rc != NBX_OK)
        return cli_check_failed(args, rc, policy);
    rc = nbx_ctx_open(engine, &r.ctx);
    if (rc != NBX_OK) {
        nbx_engine_close(engine);
        return cli_nbx_error(args->cmd, rc, nbx_last_errmsg());
    }
    if (catalog_ids_load(catalog, &r.ids, err, sizeof err) != 0) {
        nbx_ctx_close(r.ctx);
        nbx_engine_close(engine);
        catalog_ids_free(&r.ids);
        return cli_error(args->cmd, "%s", err);
    }
    nbx_engine_info info;
    nbx_engine_info_get(engine, &info);
    printf("policy ");
    cli_print_escaped(stdout, info.policy_name);
    printf(" (version %s), catalog version %s\n", info.policy_version, info.catalog_version);
    int64_t now = cli_time(args, "as-of", 0);
    if (now == 0)
        now = nbx_time_now();
    for (size_t i = 1; i < args->n_positional; i++)
        run_file(&r, args->positional[i], now);

    printf("\n%zu cases: %zu passed, %zu failed", r.passed + r.failed, r.passed, r.failed);
    if (r.bad_files)
        printf("; %zu test %s could not be read", r.bad_files, r.bad_files == 1 ? "file" : "files");
    putchar('\n');
    int status = r.failed || r.bad_files ? CLI_FAIL : CLI_OK;
    const char *junit = cli_string(args, "junit", NULL);
    if (junit && cli_junit_write(junit, r.suites, r.n_suites, err, sizeof err) != 0)
        status = cli_error(args->cmd, "--junit %s", err);
    free_suites(&r);
    catalog_ids_free(&r.ids);
    nbx_ctx_close(r.ctx);
    nbx_engine_close(engine);
    return status;
}
