/*
 * diff_report.c: what `nbx policy diff` measured (policy_diff.c), written
 * for a reader who does not read code (Markdown) or for a machine (JSON).
 *
 * Every text that comes from a policy, a catalog, a store or a command line
 * (names, offer ids, paths, reasons, error messages) goes through md_put:
 * it can neither break the report's tables nor inject HTML or links into a
 * renderer (GitLab, GitHub), and control bytes are written as \xNN as the
 * terminal sees them. The JSON goes through cli_print_json_string.
 */
#include "diff.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Writers
 * ======================================================================== */

/* Markdown text: & < > as entities (no HTML reaches the renderer), the
 * punctuation that starts emphasis, code, links, images, table cells,
 * math or autolinks backslash-escaped (CommonMark allows it for any ASCII
 * punctuation), controls and bytes that are not UTF-8 as the text \xNN.
 * An input never starts a line of the report, so the characters that
 * matter only there (# - + 1.) need nothing. */
static void md_put(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        bool plain;
        size_t n = cli_text_unit(p, &plain);
        if (!plain) {
            for (size_t i = 0; i < n; i++)
                fprintf(out, "\\\\x%02x", p[i]);
        } else if (*p == '&') {
            fputs("&amp;", out);
        } else if (*p == '<') {
            fputs("&lt;", out);
        } else if (*p == '>') {
            fputs("&gt;", out);
        } else if (n == 1 && *p < 0x80 && strchr("\\`*_{}[]()!|~:$", *p)) {
            putc('\\', out);
            putc(*p, out);
        } else {
            fwrite(p, 1, n, out);
        }
        p += n;
    }
}

static void put_num(FILE *out, double v)
{
    char buf[48];
    cli_format_number(buf, sizeof buf, v);
    fputs(buf, out);
}

/* A signed difference: "+3.5", "-2", "0". */
static void put_signed(FILE *out, double v)
{
    if (v > 0)
        putc('+', out);
    put_num(out, v);
}

static double pct(double part, double whole)
{
    return whole != 0 ? 100.0 * part / whole : 0;
}

static void put_pct(FILE *out, double part, double whole)
{
    fprintf(out, "%.1f %%", pct(part, whole));
}

static const char *offer_name(const diff *d, const char *id)
{
    return json_string_value(json_object_get(d->offer_names, id));
}

/* The offer id, and its catalog name when it has one. */
static void md_offer(FILE *out, const diff *d, const char *id)
{
    md_put(out, id);
    const char *name = offer_name(d, id);
    if (name && *name) {
        fputs(" (", out);
        md_put(out, name);
        putc(')', out);
    }
}

void diff_interval(const diff *d, double *lo, double *hi)
{
    double n = (double)d->customers;
    *lo = *hi = d->sum_d;
    if (n < 2)
        return;
    double mean = d->sum_d / n;
    double var = (d->sum_d2 - n * mean * mean) / (n - 1);
    double half = 1.96 * sqrt((var > 0 ? var : 0) * n);
    *lo = d->sum_d - half;
    *hi = d->sum_d + half;
}

/* Counted texts by |new - old|, largest first; ties by key. */
static int cmp_moved(const void *a, const void *b)
{
    const diff_count *x = *(const diff_count *const *)a, *y = *(const diff_count *const *)b;
    double dx = fabs((double)x->n[1] - (double)x->n[0]);
    double dy = fabs((double)y->n[1] - (double)y->n[0]);
    if (dx != dy)
        return dx < dy ? 1 : -1;
    return strcmp(x->key, y->key);
}

const diff_count **diff_sorted(const diff_counts *c)
{
    const diff_count **v = malloc((c->n ? c->n : 1) * sizeof *v);
    if (!v)
        return NULL;
    for (size_t i = 0; i < c->n; i++)
        v[i] = &c->items[i];
    qsort(v, c->n, sizeof *v, cmp_moved);
    return v;
}

/* ========================================================================
 * Markdown
 * ======================================================================== */

static void md_policies(FILE *out, const diff *d)
{
    fputs("## The policies\n\n| | file | name | version |\n|---|---|---|---|\n", out);
    static const char *label[2] = {"old", "new"};
    for (int s = 0; s < 2; s++) {
        fprintf(out, "| %s | ", label[s]);
        md_put(out, d->side[s].path);
        fputs(" | ", out);
        md_put(out, d->side[s].info.policy_name);
        fprintf(out, " | %s |\n", d->side[s].info.policy_version);
    }
    char when[40];
    nbx_time_format(d->now_ms, when);
    fputs("\nCatalog: ", out);
    md_put(out, d->catalog_path);
    fprintf(out, " (version %s). Store: ", d->side[0].info.catalog_version);
    md_put(out, d->store_path);
    fprintf(out, " (%llu profiles, unchanged while the diff ran).\n\n",
            (unsigned long long)d->store_profiles);
    if (strcmp(d->sample_kind, "customers") == 0) {
        fprintf(out, "Customers: the %llu lines of ", (unsigned long long)d->sample_size);
        md_put(out, cli_string(d->args, "customers", ""));
        fputs(".", out);
    } else {
        fprintf(out,
                "Sample: %llu stored customers, chosen by a hash of their id (the same ones "
                "every run).",
                (unsigned long long)d->sample_size);
    }
    fprintf(out, " Clock: %s for every decision of both policies. Placements: ", when);
    for (size_t p = 0; p < d->n_placements; p++) {
        fputs(p ? ", " : "", out);
        md_put(out, d->placements[p].id);
    }
    if (d->n_session) {
        fputs(". Session: ", out);
        for (size_t i = 0; i < d->n_session; i++) {
            fputs(i ? ", " : "", out);
            md_put(out, d->session[i].key);
            fputs(" \\= ", out);
            md_put(out, d->session[i].value);
        }
    }
    fputs(".\n\n", out);
}

static void md_headline(FILE *out, const diff *d)
{
    const diff_side *o = &d->side[DIFF_OLD], *n = &d->side[DIFF_NEW];
    double lo, hi;
    diff_interval(d, &lo, &hi);
    fputs("## Headline\n\n", out);
    if (d->n_verdict) {
        fputs("**NEW should not go live as it is:**\n\n", out);
        for (size_t i = 0; i < d->n_verdict; i++) {
            fputs("- ", out);
            md_put(out, d->verdict[i]);
            putc('\n', out);
        }
        putc('\n', out);
    } else {
        fputs("**No fallback, no error, no limit crossed.**\n\n", out);
    }
    fprintf(out, "- %llu of %llu customers (", (unsigned long long)d->changed_customers,
            (unsigned long long)d->customers);
    put_pct(out, (double)d->changed_customers, (double)d->customers);
    fputs(") get another top action in at least one placement.\n", out);
    fputs("- Expected margin: ", out);
    put_num(out, o->margin);
    fputs(" (old) -> ", out);
    put_num(out, n->margin);
    fputs(" (new), a difference of ", out);
    put_signed(out, n->margin - o->margin);
    if (o->margin != 0) {
        fputs(" (", out);
        put_signed(out, round(pct(n->margin - o->margin, fabs(o->margin)) * 100) / 100);
        fputs(" %)", out);
    }
    fputs("; 95 % interval ", out);
    put_num(out, lo);
    fputs(" to ", out);
    put_num(out, hi);
    fputs(".\n", out);
    fprintf(out, "- Fallbacks: old %llu, new %llu. Errors: old %llu, new %llu.\n\n",
            (unsigned long long)o->fallbacks, (unsigned long long)n->fallbacks,
            (unsigned long long)o->errors, (unsigned long long)n->errors);
}

static void md_placements(FILE *out, const diff *d)
{
    fputs("## Top action changes per placement\n\n"
          "| placement | customers with another top action | share |\n|---|---:|---:|\n",
          out);
    for (size_t p = 0; p < d->n_placements; p++) {
        fputs("| ", out);
        md_put(out, d->placements[p].id);
        fprintf(out, " | %llu | ", (unsigned long long)d->placements[p].changed);
        put_pct(out, (double)d->placements[p].changed, (double)d->customers);
        fputs(" |\n", out);
    }
    putc('\n', out);
}

static void md_margin(FILE *out, const diff *d)
{
    double lo, hi, n = d->customers ? (double)d->customers : 1;
    diff_interval(d, &lo, &hi);
    double old_m = d->side[DIFF_OLD].margin, new_m = d->side[DIFF_NEW].margin;
    fputs("## Expected margin\n\n| | total | per customer |\n|---|---:|---:|\n| old | ", out);
    put_num(out, old_m);
    fputs(" | ", out);
    put_num(out, old_m / n);
    fputs(" |\n| new | ", out);
    put_num(out, new_m);
    fputs(" | ", out);
    put_num(out, new_m / n);
    fputs(" |\n| difference | ", out);
    put_signed(out, new_m - old_m);
    fputs(" | ", out);
    put_signed(out, (new_m - old_m) / n);
    fputs(" |\n\nThe expected margin of a decision is the sum over its actions of P(accept) "
          "x (unit margin) - serving cost. With 95 % confidence the difference for customers "
          "like these lies between ",
          out);
    put_num(out, lo);
    fputs(" and ", out);
    put_num(out, hi);
    fputs(" (a paired interval: each customer is compared with themself).\n\n", out);
}

static void md_segments(FILE *out, const diff *d, const char *chart)
{
    fputs("## Per RFM segment\n\n", out);
    if (chart) {
        fputs("![Expected margin change per segment](", out);
        md_put(out, chart);
        fputs(")\n\n", out);
    }
    fputs("| segment | customers | top action changed | changed % | expected margin old | "
          "expected margin new | difference |\n|---|---:|---:|---:|---:|---:|---:|\n",
          out);
    for (int s = 0; s < NBX_SEGMENT_COUNT; s++) {
        const diff_segment *g = &d->segments[s];
        if (!g->customers)
            continue;
        fprintf(out, "| %s | %llu | %llu | ", nbx_segment_name(s), (unsigned long long)g->customers,
                (unsigned long long)g->changed);
        put_pct(out, (double)g->changed, (double)g->customers);
        fputs(" | ", out);
        put_num(out, g->margin[0]);
        fputs(" | ", out);
        put_num(out, g->margin[1]);
        fputs(" | ", out);
        put_signed(out, g->margin[1] - g->margin[0]);
        fputs(" |\n", out);
    }
    putc('\n', out);
}

static void md_counts_table(FILE *out, const diff *d, const diff_counts *c, bool offers)
{
    const diff_count **v = diff_sorted(c);
    if (!v)
        return;
    for (size_t i = 0; i < c->n; i++) {
        fputs("| ", out);
        if (offers)
            md_offer(out, d, v[i]->key);
        else
            md_put(out, v[i]->key);
        fprintf(out, " | %llu | %llu | ", (unsigned long long)v[i]->n[0],
                (unsigned long long)v[i]->n[1]);
        put_signed(out, (double)v[i]->n[1] - (double)v[i]->n[0]);
        if (offers) {
            fputs(" | ", out);
            put_pct(out, (double)v[i]->n[0], (double)d->customers);
            fputs(" | ", out);
            put_pct(out, (double)v[i]->n[1], (double)d->customers);
        }
        fputs(" |\n", out);
    }
    free(v);
    putc('\n', out);
}

static void md_offers(FILE *out, const diff *d, const char *chart)
{
    fputs("## Per offer\n\nTimes shown (every placement counted), the biggest gainers and "
          "losers first.\n\n",
          out);
    if (chart) {
        fputs("![Offer shares old vs new](", out);
        md_put(out, chart);
        fputs(")\n\n", out);
    }
    if (!d->offers.n) {
        fputs("No offer was shown by either policy.\n\n", out);
        return;
    }
    fputs("| offer | shown old | shown new | difference | share old | share new |\n"
          "|---|---:|---:|---:|---:|---:|\n",
          out);
    md_counts_table(out, d, &d->offers, true);
}

static void md_exclusions(FILE *out, const diff *d)
{
    fputs("## Exclusions by reason\n\nCandidates left out, by why (`ineligible: ...` is the "
          "policy's own reason).\n\n",
          out);
    if (!d->exclusions.n) {
        fputs("No candidate was excluded by either policy.\n\n", out);
        return;
    }
    fputs("| reason | old | new | difference |\n|---|---:|---:|---:|\n", out);
    md_counts_table(out, d, &d->exclusions, false);
}

static void md_faults(FILE *out, const diff *d)
{
    fputs("## Fallbacks and errors\n\n", out);
    if (!d->faults.n && !d->failures.n) {
        fputs("Neither policy fell back or failed.\n\n", out);
        return;
    }
    fputs("A fallback is a decision the policy could not make: the catalog's fallback "
          "offers were shown instead.\n\n| what | where and why | old | new |\n"
          "|---|---|---:|---:|\n",
          out);
    const diff_counts *c[2] = {&d->faults, &d->failures};
    static const char *what[2] = {"fallback", "error"};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < c[k]->n; i++) {
            fprintf(out, "| %s | ", what[k]);
            md_put(out, c[k]->items[i].key);
            fprintf(out, " | %llu | %llu |\n", (unsigned long long)c[k]->items[i].n[0],
                    (unsigned long long)c[k]->items[i].n[1]);
        }
    putc('\n', out);
}

static void md_times(FILE *out, const diff *d)
{
    fputs("## Decision time\n\n| | p50 | p99 |\n|---|---:|---:|\n", out);
    static const char *label[2] = {"old", "new"};
    for (int s = 0; s < 2; s++)
        fprintf(out, "| %s | %.1f µs | %.1f µs |\n", label[s], d->side[s].p50_us,
                d->side[s].p99_us);
    fputs("\nMeasured on this machine while both policies ran side by side; compare the two, "
          "not with production.\n\n",
          out);
}

/* One placement of a top customer: what each policy chose, and why. */
static void md_top_placement(FILE *out, const diff *d, const char *placement, json_t *r[2])
{
    static const char *label[2] = {"old", "new"};
    fputs("- ", out);
    md_put(out, placement);
    fputs(":\n", out);
    for (int s = 0; s < 2; s++) {
        const char *chosen = NULL;
        size_t i;
        json_t *a;
        json_array_foreach(json_object_get(r[s], "actions"), i, a)
        {
            const char *pl = json_string_value(json_object_get(a, "placement"));
            if (pl && strcmp(pl, placement) == 0) {
                chosen = json_string_value(json_object_get(a, "offer"));
                break;
            }
        }
        fprintf(out, "  - %s: ", label[s]);
        if (!r[s]) {
            fputs("not decided again\n", out);
            continue;
        }
        if (!chosen) {
            fputs("nothing shown\n", out);
            continue;
        }
        md_offer(out, d, chosen);
        fputs(": ", out);
        cli_candidate_words(out, r[s], cli_find_candidate(r[s], chosen, placement), md_put);
        putc('\n', out);
    }
}

static void md_top(FILE *out, const diff *d)
{
    if (!d->n_top) {
        fputs("## The customers whose expected margin changed most\n\n"
              "No customer's expected margin changed.\n\n",
              out);
        return;
    }
    fprintf(out, "## The %zu customers whose expected margin changed most\n\n", d->n_top);
    for (size_t k = 0; k < d->n_top; k++) {
        const diff_top *t = &d->top[k];
        json_t *r[2];
        for (int s = 0; s < 2; s++)
            r[s] = t->json[s] ? json_loads(t->json[s], 0, NULL) : NULL;
        fprintf(out, "### %zu. Customer ", k + 1);
        md_put(out, t->id);
        fputs("\n\nExpected margin ", out);
        put_num(out, t->margin[0]);
        fputs(" -> ", out);
        put_num(out, t->margin[1]);
        fputs(" (", out);
        put_signed(out, t->margin[1] - t->margin[0]);
        fputs(")", out);
        const char *seg = json_string_value(json_object_get(r[0], "segment"));
        if (seg) {
            fputs("; segment ", out);
            md_put(out, seg);
        }
        fputs(".\n\n", out);
        for (size_t p = 0; p < d->n_placements; p++)
            md_top_placement(out, d, d->placements[p].id, r);
        putc('\n', out);
        json_decref(r[0]);
        json_decref(r[1]);
    }
}

int diff_write_markdown(FILE *out, const diff *d, const char *chart_offers,
                        const char *chart_segments)
{
    fputs("# Policy diff: ", out);
    md_put(out, d->side[DIFF_OLD].info.policy_name);
    fputs(" -> ", out);
    md_put(out, d->side[DIFF_NEW].info.policy_name);
    fputs("\n\n", out);
    md_policies(out, d);
    md_headline(out, d);
    md_placements(out, d);
    md_margin(out, d);
    md_segments(out, d, chart_segments);
    md_offers(out, d, chart_offers);
    md_exclusions(out, d);
    md_faults(out, d);
    md_times(out, d);
    md_top(out, d);
    return ferror(out) ? -1 : 0;
}

/* ========================================================================
 * JSON
 * ======================================================================== */

static void js_num(FILE *out, double v)
{
    if (isfinite(v))
        fprintf(out, "%.17g", v);
    else
        fputs("null", out);
}

/* {"KEY":{"old":N,"new":N},...} in the order counted. */
static void js_counts(FILE *out, const diff_counts *c)
{
    putc('{', out);
    for (size_t i = 0; i < c->n; i++) {
        fputs(i ? "," : "", out);
        cli_print_json_string(out, c->items[i].key);
        fprintf(out, ":{\"old\":%llu,\"new\":%llu}", (unsigned long long)c->items[i].n[0],
                (unsigned long long)c->items[i].n[1]);
    }
    putc('}', out);
}

static void js_side(FILE *out, const diff_side *s)
{
    fputs("{\"file\":", out);
    cli_print_json_string(out, s->path);
    fputs(",\"name\":", out);
    cli_print_json_string(out, s->info.policy_name);
    fprintf(out, ",\"version\":\"%s\"}", s->info.policy_version);
}

int diff_write_json(FILE *out, const diff *d)
{
    const diff_side *o = &d->side[DIFF_OLD], *n = &d->side[DIFF_NEW];
    char when[40];
    nbx_time_format(d->now_ms, when);
    double lo, hi;
    diff_interval(d, &lo, &hi);
    fputs("{\"policies\":{\"old\":", out);
    js_side(out, o);
    fputs(",\"new\":", out);
    js_side(out, n);
    fputs("},\"catalog\":", out);
    cli_print_json_string(out, d->catalog_path);
    fprintf(out, ",\"catalog_version\":\"%s\",\"store\":", o->info.catalog_version);
    cli_print_json_string(out, d->store_path);
    fprintf(out, ",\"as_of\":\"%s\",\"sample\":{\"kind\":\"%s\",\"size\":%llu}", when,
            d->sample_kind, (unsigned long long)d->sample_size);
    fprintf(out, ",\"customers\":%llu,\"changed_customers\":%llu,\"changed_top\":{",
            (unsigned long long)d->customers, (unsigned long long)d->changed_customers);
    for (size_t p = 0; p < d->n_placements; p++) {
        fputs(p ? "," : "", out);
        cli_print_json_string(out, d->placements[p].id);
        fprintf(out, ":%llu", (unsigned long long)d->placements[p].changed);
    }
    fputs("},\"expected_margin\":{\"old\":", out);
    js_num(out, o->margin);
    fputs(",\"new\":", out);
    js_num(out, n->margin);
    fputs(",\"difference\":", out);
    js_num(out, n->margin - o->margin);
    fputs(",\"interval_95\":[", out);
    js_num(out, lo);
    putc(',', out);
    js_num(out, hi);
    fputs("]},\"segments\":{", out);
    bool first = true;
    for (int s = 0; s < NBX_SEGMENT_COUNT; s++) {
        const diff_segment *g = &d->segments[s];
        if (!g->customers)
            continue;
        fprintf(out, "%s\"%s\":{\"customers\":%llu,\"changed\":%llu,\"expected_margin\":{\"old\":",
                first ? "" : ",", nbx_segment_name(s), (unsigned long long)g->customers,
                (unsigned long long)g->changed);
        js_num(out, g->margin[0]);
        fputs(",\"new\":", out);
        js_num(out, g->margin[1]);
        fputs("}}", out);
        first = false;
    }
    fputs("},\"offers\":", out);
    js_counts(out, &d->offers);
    fputs(",\"exclusions\":", out);
    js_counts(out, &d->exclusions);
    fprintf(out, ",\"fallbacks\":{\"old\":%llu,\"new\":%llu}", (unsigned long long)o->fallbacks,
            (unsigned long long)n->fallbacks);
    fprintf(out, ",\"errors\":{\"old\":%llu,\"new\":%llu}", (unsigned long long)o->errors,
            (unsigned long long)n->errors);
    fputs(",\"fallback_reasons\":", out);
    js_counts(out, &d->faults);
    fputs(",\"error_reasons\":", out);
    js_counts(out, &d->failures);
    fputs(",\"decision_time_us\":{", out);
    static const char *label[2] = {"old", "new"};
    for (int s = 0; s < 2; s++) {
        fprintf(out, "%s\"%s\":{\"p50\":", s ? "," : "", label[s]);
        js_num(out, d->side[s].p50_us);
        fputs(",\"p99\":", out);
        js_num(out, d->side[s].p99_us);
        putc('}', out);
    }
    fputs("},\"top_customers\":[", out);
    for (size_t k = 0; k < d->n_top; k++) {
        fputs(k ? ",{\"id\":" : "{\"id\":", out);
        cli_print_json_string(out, d->top[k].id);
        fputs(",\"expected_margin\":{\"old\":", out);
        js_num(out, d->top[k].margin[0]);
        fputs(",\"new\":", out);
        js_num(out, d->top[k].margin[1]);
        fputs("}}", out);
    }
    fputs("],\"limits_crossed\":[", out);
    for (size_t i = 0; i < d->n_verdict; i++) {
        fputs(i ? "," : "", out);
        cli_print_json_string(out, d->verdict[i]);
    }
    fputs("]}\n", out);
    return ferror(out) ? -1 : 0;
}
