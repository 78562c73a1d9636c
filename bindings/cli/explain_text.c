/*
 * explain_text.c: an explained decision in words, for a reader who does not
 * read JSON (nbx decide --explain --format text, the examples of nbx policy
 * diff's report).
 *
 * The text is written from the result JSON, the one description of a
 * decision (docs/decisions.md, "The result"), so it cannot say anything the
 * JSON does not. Every string in it may come from a policy, a catalog or a
 * request: each goes through cli_print_escaped, so no byte of it can steer a
 * terminal, and no line of the output can start with it (which keeps a
 * Markdown code fence around the text closed where the report closes it).
 */
#include "cli.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

/* ========================================================================
 * Small writers
 * ======================================================================== */

static const char *text_of(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static double number_of(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

void cli_format_number(char *buf, size_t size, double v)
{
    if (!isfinite(v)) {
        snprintf(buf, size, "-");
        return;
    }
    double a = fabs(v);
    if (a >= 1e15 || (a > 0 && a < 1e-4)) {
        snprintf(buf, size, "%.6g", v);
        return;
    }
    snprintf(buf, size, "%.4f", v);
    char *dot = strchr(buf, '.');
    if (!dot)
        return;
    char *end = buf + strlen(buf);
    while (end > dot + 1 && end[-1] == '0')
        *--end = '\0';
    if (end == dot + 1)
        *dot = '\0';
    if (strcmp(buf, "-0") == 0)
        snprintf(buf, size, "0");
}

static void put_number(FILE *out, double v)
{
    char buf[48];
    cli_format_number(buf, sizeof buf, v);
    fputs(buf, out);
}

/* The offer id, then its catalog name in quotes when it has one. */
static void put_offer(FILE *out, const json_t *c)
{
    cli_print_escaped(out, text_of(c, "offer"));
    const char *name = json_string_value(json_object_get(c, "name"));
    if (name && *name) {
        fputs(" \"", out);
        cli_print_escaped(out, name);
        putc('"', out);
    }
}

const char *cli_propensity_source_words(const char *source, char *buf, size_t size,
                                        const char *segment)
{
    if (strcmp(source, "offer") == 0)
        return "profile propensity for this offer";
    if (strcmp(source, "category") == 0)
        return "profile propensity for its category";
    if (strcmp(source, "segment") == 0) {
        snprintf(buf, size, "segment prior (%s)", segment && *segment ? segment : "?");
        return buf;
    }
    if (strcmp(source, "base") == 0)
        return "base propensity";
    return "unknown source";
}

/* ========================================================================
 * Candidates
 * ======================================================================== */

/* Where the offer of c was chosen, if it was, in another placement. */
static const char *chosen_elsewhere(const json_t *candidates, const json_t *c)
{
    const char *offer = text_of(c, "offer"), *placement = text_of(c, "placement");
    size_t i;
    const json_t *x;
    json_array_foreach(candidates, i, x)
    {
        if (json_is_true(json_object_get(x, "chosen")) && strcmp(text_of(x, "offer"), offer) == 0 &&
            strcmp(text_of(x, "placement"), placement) != 0)
            return text_of(x, "placement");
    }
    return NULL;
}

/* P(accept) (source) x unit margin - serving cost = expected margin, and
 * the score; the equation only when it holds (a policy may give its own
 * expected margin). Only numbers and the engine's own words: nothing here
 * needs escaping. */
static void put_arithmetic_words(FILE *out, const json_t *c, const char *segment)
{
    double p = number_of(c, "propensity"), m = number_of(c, "margin");
    double cost = number_of(c, "serving_cost"), em = number_of(c, "expected_margin");
    double score = number_of(c, "score");
    char words[96];
    fputs("P(accept) ", out);
    put_number(out, p);
    fprintf(
        out, " (%s) x unit margin ",
        cli_propensity_source_words(text_of(c, "propensity_source"), words, sizeof words, segment));
    put_number(out, m);
    fputs(" - serving cost ", out);
    put_number(out, cost);
    if (isfinite(em)) {
        double formula = p * m - cost;
        /* the JSON carries 9 decimals */
        bool holds = fabs(formula - em) <= 1e-6 * (fabs(em) > 1 ? fabs(em) : 1);
        fputs(holds ? " = expected margin " : "; expected margin ", out);
        put_number(out, em);
        if (!holds)
            fputs(" (the policy's own figure)", out);
    }
    if (isfinite(score)) {
        fputs("; score ", out);
        put_number(out, score);
    }
}

static void put_arithmetic(FILE *out, const json_t *c, const char *segment)
{
    fputs("        ", out);
    put_arithmetic_words(out, c, segment);
    putc('\n', out);
}

/* Chosen, or why not: "chosen", "excluded (frequency): shown 3 times
 * ...", "shown in hero instead ...", "not chosen: ...". */
static void put_status(FILE *out, const json_t *candidates, const json_t *c, cli_put_fn put)
{
    const char *excluded = json_string_value(json_object_get(c, "excluded"));
    if (json_is_true(json_object_get(c, "chosen"))) {
        fputs("chosen", out);
    } else if (excluded) {
        fputs("excluded (", out);
        put(out, excluded);
        fputs("): ", out);
        put(out, text_of(c, "reason"));
    } else {
        const char *elsewhere = chosen_elsewhere(candidates, c);
        if (elsewhere) {
            fputs("shown in ", out);
            put(out, elsewhere);
            fputs(" instead (an offer is shown once a decision)", out);
        } else {
            fputs("not chosen: the placement's slots went to higher scores", out);
        }
    }
}

static void put_candidate(FILE *out, const json_t *candidates, const json_t *c, const char *segment)
{
    fputs("    ", out);
    put_offer(out, c);
    fputs(": ", out);
    put_status(out, candidates, c, cli_print_escaped);
    putc('\n', out);
    put_arithmetic(out, c, segment);
}

/* Rank within a placement: chosen first, then scored by score (highest
 * first), then excluded; the JSON's order (the catalog's) breaks ties. */
static int candidate_group(const json_t *c)
{
    if (json_is_true(json_object_get(c, "chosen")))
        return 0;
    return json_is_string(json_object_get(c, "excluded")) ? 2 : 1;
}

typedef struct ranked {
    const json_t *c;
    size_t order;
} ranked;

static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    int gx = candidate_group(x->c), gy = candidate_group(y->c);
    if (gx != gy)
        return gx - gy;
    double sx = number_of(x->c, "score"), sy = number_of(y->c, "score");
    if (gx == 1 && sx != sy && isfinite(sx) && isfinite(sy))
        return sx > sy ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static void put_candidates(FILE *out, const json_t *candidates, const char *segment)
{
    size_t n = json_array_size(candidates);
    if (n == 0)
        return;
    ranked *list = calloc(n, sizeof *list);
    bool *done = calloc(n, sizeof *done);
    if (!list || !done) {
        free(list);
        free(done);
        fputs("(out of memory listing the candidates)\n", out);
        return;
    }
    fprintf(out, "\nCandidates (%zu), per placement, best first\n", n);
    /* placements in the order they first appear (the catalog's) */
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        const char *placement = text_of(json_array_get(candidates, i), "placement");
        size_t k = 0;
        for (size_t j = i; j < n; j++) {
            const json_t *c = json_array_get(candidates, j);
            if (!done[j] && strcmp(text_of(c, "placement"), placement) == 0) {
                done[j] = true;
                list[k].c = c;
                list[k].order = j;
                k++;
            }
        }
        qsort(list, k, sizeof *list, cmp_ranked);
        fputs("  ", out);
        cli_print_escaped(out, placement);
        putc('\n', out);
        for (size_t j = 0; j < k; j++)
            put_candidate(out, candidates, list[j].c, segment);
    }
    free(list);
    free(done);
}

/* ========================================================================
 * The decision
 * ======================================================================== */

static void put_header(FILE *out, const json_t *d, const char *segment)
{
    const json_t *policy = json_object_get(d, "policy");
    fputs("Decision ", out);
    cli_print_escaped(out, text_of(d, "decision_id"));
    fputs(" for customer ", out);
    cli_print_escaped(out, text_of(d, "customer"));
    fputs("\n  policy ", out);
    cli_print_escaped(out, text_of(policy, "name"));
    fputs(" (version ", out);
    cli_print_escaped(out, text_of(policy, "version"));
    fputs("), catalog version ", out);
    cli_print_escaped(out, text_of(d, "catalog_version"));
    fputs("\n  clock ", out);
    cli_print_escaped(out, text_of(d, "as_of"));
    if (json_is_true(json_object_get(d, "anonymous"))) {
        fputs("; an anonymous visitor (no profile, or no consent to personalisation): "
              "decided without personal data\n",
              out);
    } else {
        fputs("; RFM segment ", out);
        cli_print_escaped(out, segment && *segment ? segment : "none");
        putc('\n', out);
    }
}

static void put_actions(FILE *out, const json_t *d)
{
    const json_t *actions = json_object_get(d, "actions");
    fputs("\nActions\n", out);
    if (json_array_size(actions) == 0)
        fputs("  none\n", out);
    size_t i;
    const json_t *a;
    json_array_foreach(actions, i, a)
    {
        fprintf(out, "  %zu. ", i + 1);
        cli_print_escaped(out, text_of(a, "placement"));
        fputs(": ", out);
        cli_print_escaped(out, text_of(a, "offer"));
        double score = number_of(a, "score");
        if (isfinite(score)) {
            fputs(", score ", out);
            put_number(out, score);
        } else {
            fputs(", a fallback action", out);
        }
        fputs(", expected margin ", out);
        put_number(out, number_of(a, "expected_margin"));
        putc('\n', out);
    }
}

static void put_fallback(FILE *out, const json_t *d)
{
    if (!json_is_true(json_object_get(d, "fallback")))
        return;
    const json_t *err = json_object_get(d, "error");
    fputs("\nThe policy failed, so the catalog's fallback actions were served", out);
    if (err) {
        fputs(" (", out);
        cli_print_escaped(out, text_of(err, "kind"));
        putc(')', out);
        if (*text_of(err, "where")) {
            fputs(" at ", out);
            cli_print_escaped(out, text_of(err, "where"));
        }
        if (*text_of(err, "offer")) {
            fputs(" while scoring ", out);
            cli_print_escaped(out, text_of(err, "offer"));
        }
        fputs(": ", out);
        cli_print_escaped(out, text_of(err, "reason"));
    }
    fputs(".\n", out);
}

static void put_log(FILE *out, const json_t *d)
{
    const json_t *log = json_object_get(d, "log");
    json_int_t dropped = json_integer_value(json_object_get(d, "log_dropped"));
    if (json_array_size(log) == 0 && dropped <= 0)
        return;
    fputs("\nPolicy log (nbx.log)\n", out);
    size_t i;
    const json_t *line;
    json_array_foreach(log, i, line)
    {
        fputs("  ", out);
        cli_print_escaped(out, json_string_value(line) ? json_string_value(line) : "");
        putc('\n', out);
    }
    if (dropped > 0)
        fprintf(out, "  (%lld more lines not kept: at most 32 a decision)\n", (long long)dropped);
}

int cli_explain_text(FILE *out, const char *json, size_t len)
{
    json_t *d = json_loadb(json, len, 0, NULL);
    if (!json_is_object(d)) {
        json_decref(d);
        return -1;
    }
    const char *segment = json_string_value(json_object_get(d, "segment"));
    put_header(out, d, segment);
    put_actions(out, d);
    put_fallback(out, d);
    put_candidates(out, json_object_get(d, "candidates"), segment);
    put_log(out, d);
    json_decref(d);
    return 0;
}

/* ========================================================================
 * One candidate, for reports
 * ======================================================================== */

const json_t *cli_find_candidate(const json_t *result, const char *offer, const char *placement)
{
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(result, "candidates"), i, c)
    {
        if (strcmp(text_of(c, "offer"), offer) == 0 &&
            strcmp(text_of(c, "placement"), placement) == 0)
            return c;
    }
    return NULL;
}

void cli_candidate_words(FILE *out, const json_t *result, const json_t *c, cli_put_fn put)
{
    if (!c) {
        fputs("not a candidate", out);
        return;
    }
    put_status(out, json_object_get(result, "candidates"), c, put);
    fputs("; ", out);
    put_arithmetic_words(out, c, json_string_value(json_object_get(result, "segment")));
}
