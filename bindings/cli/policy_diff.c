/*
 * policy_diff.c: nbx policy diff OLD NEW --catalog FILE --store DIR
 *
 * What does a policy change, and what does it cost? Every sampled customer
 * is decided by both policies, on the same store, at the same clock, with
 * the same placements and session, and the pairs are compared: the top
 * action per placement, the expected margin (with a paired 95 % interval),
 * per RFM segment, per offer, exclusions by reason (the policy's own
 * `ineligible: reason` included), fallbacks and errors by FILE:LINE, and
 * decision time. diff_report.c writes it for a reader (Markdown, with
 * charts from svg.c) or for a machine (JSON).
 *
 * The decisions run on the library's batches (nbx_batch_*), one per policy,
 * fed in lockstep: both hand results back in submission order, so the two
 * decisions of a customer meet without keeping either side in memory, and
 * the counts are those of `nbx batch` over the same customers. Both
 * batches plan (nothing is recorded). The store's generation is read
 * before and after: a write in between (an import, nginx recording
 * impressions) could make the two policies see different data, and fails
 * the diff rather than reporting a difference no policy made.
 */
#include "diff.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* clang-format off */
const cli_flag cli_policy_diff_flags[] = {
    {"catalog", CLI_STRING, "FILE", "catalog JSON file (required)", 0, 0},
    CLI_FLAG_STORE,
    {"sample", CLI_UINT, "N",
     "how many stored customers (default 10000; the same ones every run)", 1, 100000000},
    {"customers", CLI_STRING, "FILE",
     "these customers: ids or JSON lines with session fields, as nbx batch reads", 0, 0},
    {"as-of", CLI_TIME, "TIME", "the clock of every decision (default: now, once)", 0, 0},
    CLI_FLAG_PLACEMENT,
    {"session", CLI_LIST, "KEY=VALUE", "session field for every customer", 0, 0},
    {"out", CLI_STRING, "FILE",
     "write the report to FILE (and, in Markdown, its charts beside it)", 0, 0},
    {"format", CLI_STRING, "markdown|json", "report format (default markdown)", 0, 0},
    {"max-margin-drop", CLI_STRING, "PCT",
     "exit 3 when NEW's expected margin is more than PCT % below OLD's", 0, 0},
    {"max-changed", CLI_STRING, "PCT",
     "exit 3 when more than PCT % of the customers get another top action", 0, 0},
    {"threads", CLI_UINT, "N", "decision threads per policy (default: the CPUs available)", 1,
     NBX_BATCH_THREADS_MAX},
    CLI_FLAG_TIME_LIMIT,
    CLI_FLAG_MEMORY_LIMIT,
    CLI_FLAG_END,
};
/* clang-format on */

#define DIFF_SAMPLE_DEFAULT 10000
#define MALFORMED_REPORTED_MAX 20

/* ========================================================================
 * Counted texts
 * ======================================================================== */

static size_t slot_of(const diff_counts *c, const char *key)
{
    size_t mask = c->n_slots - 1, i = (size_t)XXH64(key, strlen(key), 0) & mask;
    while (c->slots[i] && strcmp(c->items[c->slots[i] - 1].key, key) != 0)
        i = (i + 1) & mask;
    return i;
}

static bool grow_slots(diff_counts *c)
{
    size_t n = c->n_slots ? 2 * c->n_slots : 64;
    uint32_t *slots = calloc(n, sizeof *slots);
    if (!slots)
        return false;
    free(c->slots);
    c->slots = slots;
    c->n_slots = n;
    for (size_t k = 0; k < c->n; k++)
        c->slots[slot_of(c, c->items[k].key)] = (uint32_t)(k + 1);
    return true;
}

bool diff_counts_add(diff_counts *c, const char *key, int side, uint64_t n)
{
    if ((c->n + 1) * 2 > c->n_slots && !grow_slots(c))
        return false;
    size_t i = slot_of(c, key);
    if (!c->slots[i]) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 32;
            diff_count *grown = realloc(c->items, cap * sizeof *grown);
            if (!grown)
                return false;
            c->items = grown;
            c->cap = cap;
        }
        char *copy = strdup(key);
        if (!copy)
            return false;
        c->items[c->n] = (diff_count){copy, {0, 0}};
        c->slots[i] = (uint32_t)++c->n;
    }
    c->items[c->slots[i] - 1].n[side] += n;
    return true;
}

const diff_count *diff_counts_find(const diff_counts *c, const char *key)
{
    if (!c->n_slots)
        return NULL;
    size_t i = slot_of(c, key);
    return c->slots[i] ? &c->items[c->slots[i] - 1] : NULL;
}

void diff_counts_free(diff_counts *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->items[i].key);
    free(c->items);
    free(c->slots);
    memset(c, 0, sizeof *c);
}

/* ========================================================================
 * One pair of decisions
 * ======================================================================== */

static const char *top_at(const nbx_batch_item *it, const char *placement)
{
    for (size_t i = 0; i < it->n_actions; i++)
        if (strcmp(it->actions[i].placement, placement) == 0)
            return it->actions[i].offer;
    return NULL;
}

static bool count_side(diff *d, int side, const nbx_batch_item *it)
{
    diff_side *s = &d->side[side];
    if (it->status != NBX_OK) {
        s->errors++;
        return diff_counts_add(&d->failures, it->errmsg, side, 1);
    }
    s->decided++;
    if (s->n_times == s->cap_times) {
        size_t cap = s->cap_times ? 2 * s->cap_times : 4096;
        uint64_t *grown = realloc(s->times_ns, cap * sizeof *grown);
        if (!grown)
            return false;
        s->times_ns = grown;
        s->cap_times = cap;
    }
    s->times_ns[s->n_times++] = it->decide_ns;
    if (it->fallback) {
        s->fallbacks++;
        if (!diff_counts_add(&d->faults, it->policy_error ? it->policy_error : "unknown", side, 1))
            return false;
    }
    for (int r = 1; r < NBX_EXCLUDED_COUNT; r++)
        if (it->exclusions[r] && r != NBX_EXCLUDED_INELIGIBLE &&
            !diff_counts_add(&d->exclusions, nbx_excluded_name(r), side, it->exclusions[r]))
            return false;
    /* ineligible, split by the policy's reasons; the rest gave none */
    uint64_t with_reason = 0;
    for (size_t i = 0; i < it->n_reasons; i++) {
        char key[256];
        snprintf(key, sizeof key, "ineligible: %s", it->reasons[i].reason);
        with_reason += it->reasons[i].count;
        if (!diff_counts_add(&d->exclusions, key, side, it->reasons[i].count))
            return false;
    }
    uint64_t plain = it->exclusions[NBX_EXCLUDED_INELIGIBLE];
    plain = plain > with_reason ? plain - with_reason : 0;
    if (plain && !diff_counts_add(&d->exclusions, "ineligible", side, plain))
        return false;
    for (size_t i = 0; i < it->n_actions; i++)
        if (!diff_counts_add(&d->offers, it->actions[i].offer, side, 1))
            return false;
    return true;
}

/* Keep the DIFF_TOP customers whose expected margin changed most (ties:
 * the smaller id), sorted, largest change first. */
static bool consider_top(diff *d, const char *input, const char *id, double old_m, double new_m)
{
    double change = fabs(new_m - old_m);
    if (change == 0)
        return true;
    size_t at = d->n_top;
    while (at > 0 && (d->top[at - 1].change < change ||
                      (d->top[at - 1].change == change && strcmp(d->top[at - 1].id, id) > 0)))
        at--;
    if (at >= DIFF_TOP)
        return true;
    char *in = strdup(input), *copy = strdup(id);
    if (!in || !copy) {
        free(in);
        free(copy);
        return false;
    }
    if (d->n_top == DIFF_TOP) {
        free(d->top[DIFF_TOP - 1].input);
        free(d->top[DIFF_TOP - 1].id);
        d->n_top--;
    }
    memmove(&d->top[at + 1], &d->top[at], (d->n_top - at) * sizeof *d->top);
    d->top[at] = (diff_top){.input = in, .id = copy, .margin = {old_m, new_m}, .change = change};
    d->n_top++;
    return true;
}

static bool compare_pair(diff *d, const char *input, const nbx_batch_item *a,
                         const nbx_batch_item *b)
{
    if (!count_side(d, DIFF_OLD, a) || !count_side(d, DIFF_NEW, b))
        return false;
    if (a->status != NBX_OK || b->status != NBX_OK)
        return true; /* a failed decision has nothing to compare */
    d->customers++;
    bool changed = false;
    for (size_t p = 0; p < d->n_placements; p++) {
        const char *x = top_at(a, d->placements[p].id), *y = top_at(b, d->placements[p].id);
        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0)) {
            d->placements[p].changed++;
            changed = true;
        }
    }
    d->changed_customers += changed;
    double diff_m = b->expected_margin - a->expected_margin;
    d->side[DIFF_OLD].margin += a->expected_margin;
    d->side[DIFF_NEW].margin += b->expected_margin;
    d->sum_d += diff_m;
    d->sum_d2 += diff_m * diff_m;
    int seg = a->segment >= 0 && a->segment < NBX_SEGMENT_COUNT ? a->segment : 0;
    d->segments[seg].customers++;
    d->segments[seg].changed += changed;
    d->segments[seg].margin[DIFF_OLD] += a->expected_margin;
    d->segments[seg].margin[DIFF_NEW] += b->expected_margin;
    return consider_top(d, input, a->customer, a->expected_margin, b->expected_margin);
}

/* ========================================================================
 * Running both policies in lockstep
 * ======================================================================== */

static int open_engine(diff *d, int side, nbx_store *store)
{
    cli_args *args = d->args;
    nbx_engine_options opts;
    nbx_engine_options_init(&opts);
    opts.store_handle = store;
    opts.catalog = d->catalog_path;
    opts.policy = d->side[side].path;
    opts.time_limit_us = (uint32_t)cli_uint(args, "time-limit-us", 0);
    opts.memory_limit = (size_t)cli_uint(args, "memory-limit", 0);
    opts.flags = NBX_ENGINE_READONLY;
    int rc = nbx_engine_open(&opts, &d->side[side].engine);
    if (rc != NBX_OK)
        return cli_check_failed(args, rc, d->side[side].path);
    nbx_engine_info_get(d->side[side].engine, &d->side[side].info);
    return CLI_OK;
}

static int open_batches(diff *d, unsigned flags, unsigned threads, nbx_batch *b[2])
{
    cli_args *args = d->args;
    const cli_value *pl = cli_flag_value(args, "placement");
    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.threads = threads;
    o.placements = pl->list;
    o.n_placements = pl->n_list;
    o.session = d->session;
    o.n_session = d->n_session;
    o.now_ms = d->now_ms;
    o.flags = flags;
    for (int side = 0; side < 2; side++) {
        if (nbx_batch_open(d->side[side].engine, &o, &b[side]) != NBX_OK) {
            if (side)
                nbx_batch_close(b[0]);
            b[0] = b[1] = NULL;
            return cli_nbx_error(args->cmd, NBX_EINVAL, nbx_last_errmsg());
        }
    }
    return CLI_OK;
}

/* Submit one customer to a batch: a JSON line with session fields, or an
 * id. NBX_OK, or the library's code (the message in the batch). */
static int submit(nbx_batch *b, const char *input, void *user)
{
    if (input[0] == '{')
        return nbx_batch_submit_json(b, input, strlen(input), user);
    return nbx_batch_submit(b, input, NULL, 0, user);
}

/* Take one decision from each batch (the same customer) and compare. */
static int take_pair(diff *d, nbx_batch *b[2], const cli_customer *customers)
{
    const nbx_batch_item *x, *y;
    if (nbx_batch_next(b[DIFF_OLD], &x) != NBX_OK || nbx_batch_next(b[DIFF_NEW], &y) != NBX_OK)
        return cli_error(d->args->cmd, "the two batches lost step (a bug)");
    size_t i = (size_t)(uintptr_t)x->user;
    if (!compare_pair(d, customers[i].id, x, y))
        return cli_error(d->args->cmd, "out of memory");
    return CLI_OK;
}

static int run_pairs(diff *d, nbx_batch *b[2], const cli_customer *customers, size_t n,
                     const char *file)
{
    int status = CLI_OK;
    for (size_t i = 0; i < n && status == CLI_OK; i++) {
        while (status == CLI_OK &&
               (nbx_batch_space(b[DIFF_OLD]) == 0 || nbx_batch_space(b[DIFF_NEW]) == 0))
            status = take_pair(d, b, customers);
        if (status != CLI_OK)
            break;
        int rc = submit(b[DIFF_OLD], customers[i].id, (void *)(uintptr_t)i);
        if (rc == NBX_EPARSE || rc == NBX_EINVAL || rc == NBX_ELIMIT) {
            /* the same line is refused by both: report and skip it */
            if (d->malformed++ < MALFORMED_REPORTED_MAX) {
                fprintf(stderr, "nbx policy diff: %s:%llu: ", file ? file : "store",
                        (unsigned long long)customers[i].line);
                cli_print_escaped(stderr, nbx_batch_errmsg(b[DIFF_OLD]));
                fputc('\n', stderr);
            }
            continue;
        }
        if (rc != NBX_OK)
            return cli_nbx_error(d->args->cmd, rc, nbx_batch_errmsg(b[DIFF_OLD]));
        rc = submit(b[DIFF_NEW], customers[i].id, (void *)(uintptr_t)i);
        if (rc != NBX_OK)
            return cli_nbx_error(d->args->cmd, rc, nbx_batch_errmsg(b[DIFF_NEW]));
    }
    while (status == CLI_OK && nbx_batch_pending(b[DIFF_OLD]) > 0)
        status = take_pair(d, b, customers);
    return status;
}

/* The customers whose margin changed most, decided again with
 * explanations (a batch of their own per policy, same clock, placements
 * and session). */
static int explain_top(diff *d)
{
    if (d->n_top == 0)
        return CLI_OK;
    nbx_batch *b[2];
    int rc = open_batches(d, NBX_DECIDE_EXPLAIN, 1, b);
    if (rc != CLI_OK)
        return rc;
    for (int side = 0; side < 2 && rc == CLI_OK; side++) {
        for (size_t i = 0; i < d->n_top && rc == CLI_OK; i++)
            if (submit(b[side], d->top[i].input, (void *)(uintptr_t)i) != NBX_OK)
                rc = cli_nbx_error(d->args->cmd, NBX_EINVAL, nbx_batch_errmsg(b[side]));
        const nbx_batch_item *it;
        while (rc == CLI_OK && nbx_batch_next(b[side], &it) == NBX_OK) {
            size_t i = (size_t)(uintptr_t)it->user;
            if (it->status == NBX_OK && !(d->top[i].json[side] = strdup(it->json)))
                rc = cli_error(d->args->cmd, "out of memory");
        }
    }
    nbx_batch_close(b[0]);
    nbx_batch_close(b[1]);
    return rc;
}

/* ========================================================================
 * Results
 * ======================================================================== */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void percentiles(diff_side *s)
{
    if (s->n_times == 0)
        return;
    qsort(s->times_ns, s->n_times, sizeof *s->times_ns, cmp_u64);
    s->p50_us = (double)s->times_ns[(s->n_times - 1) / 2] / 1e3;
    size_t k = (size_t)ceil(0.99 * (double)s->n_times);
    s->p99_us = (double)s->times_ns[k ? k - 1 : 0] / 1e3;
}

static void add_verdict(diff *d, const char *fmt, ...) CLI_PRINTF(2, 3);
static void add_verdict(diff *d, const char *fmt, ...)
{
    if (d->n_verdict == 4)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->verdict[d->n_verdict++], sizeof d->verdict[0], fmt, ap);
    va_end(ap);
}

/* The text NEW met most often (the first counted of equals); NULL when NEW
 * met none. */
static const diff_count *most_common_new(const diff_counts *c)
{
    const diff_count *best = NULL;
    for (size_t i = 0; i < c->n; i++)
        if (c->items[i].n[DIFF_NEW] && (!best || c->items[i].n[DIFF_NEW] > best->n[DIFF_NEW]))
            best = &c->items[i];
    return best;
}

/* Why NEW may not go on: its fallbacks and errors, the limits crossed. */
static void judge(diff *d)
{
    const diff_side *n = &d->side[DIFF_NEW];
    const diff_count *why = most_common_new(&d->faults);
    if (n->fallbacks)
        add_verdict(d, "NEW fell back for %llu customers; most often (%llu): %s",
                    (unsigned long long)n->fallbacks, (unsigned long long)why->n[DIFF_NEW],
                    why->key);
    why = most_common_new(&d->failures);
    if (n->errors)
        add_verdict(d, "NEW failed to decide for %llu customers; most often (%llu): %s",
                    (unsigned long long)n->errors, (unsigned long long)why->n[DIFF_NEW], why->key);
    double old_m = d->side[DIFF_OLD].margin, new_m = d->side[DIFF_NEW].margin;
    if (!isnan(d->max_margin_drop) && new_m < old_m) {
        double drop = old_m != 0 ? 100.0 * (old_m - new_m) / fabs(old_m) : INFINITY;
        if (drop > d->max_margin_drop)
            add_verdict(d, "expected margin drops by %.2f %%, more than --max-margin-drop %g", drop,
                        d->max_margin_drop);
    }
    if (!isnan(d->max_changed) && d->customers) {
        double share = 100.0 * (double)d->changed_customers / (double)d->customers;
        if (share > d->max_changed)
            add_verdict(d,
                        "%.2f %% of the customers get another top action, more than "
                        "--max-changed %g",
                        share, d->max_changed);
    }
}

/* ========================================================================
 * Options
 * ======================================================================== */

static int percent_flag(cli_args *args, const char *name, double *out)
{
    *out = NAN;
    const char *text = cli_string(args, name, NULL);
    if (!text)
        return CLI_OK;
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !isfinite(v) || v < 0)
        return cli_usage_error(args->cmd, "--%s: '%s' is not a percentage (a number >= 0)", name,
                               text);
    *out = v;
    return CLI_OK;
}

/* Placements compared: --placement, else every placement of the catalog
 * (read from the file: the engine checks it properly). */
static int load_catalog_facts(diff *d)
{
    json_error_t jerr;
    json_t *root = json_load_file(d->catalog_path, 0, &jerr);
    if (!root)
        return cli_error(d->args->cmd, "%s:%d: %s", d->catalog_path, jerr.line, jerr.text);
    d->offer_names = json_object();
    const cli_value *pl = cli_flag_value(d->args, "placement");
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(root, "offers"), i, x)
    {
        const char *id = json_string_value(json_object_get(x, "id"));
        json_t *name = json_object_get(x, "name");
        if (id && json_is_string(name))
            json_object_set(d->offer_names, id, name);
    }
    size_t n = pl->n_list ? pl->n_list : json_array_size(json_object_get(root, "placements"));
    d->placements = calloc(n ? n : 1, sizeof *d->placements);
    for (i = 0; d->placements && i < n; i++) {
        const char *id = pl->n_list
                             ? pl->list[i]
                             : json_string_value(json_object_get(
                                   json_array_get(json_object_get(root, "placements"), i), "id"));
        d->placements[d->n_placements++].id = strdup(id ? id : "?");
    }
    json_decref(root);
    if (!d->placements)
        return cli_error(d->args->cmd, "out of memory");
    return CLI_OK;
}

static void diff_free(diff *d)
{
    for (int side = 0; side < 2; side++) {
        nbx_engine_close(d->side[side].engine);
        free(d->side[side].times_ns);
    }
    for (size_t i = 0; i < d->n_placements; i++)
        free(d->placements[i].id);
    free(d->placements);
    for (size_t i = 0; i < d->n_top; i++) {
        free(d->top[i].input);
        free(d->top[i].id);
        free(d->top[i].json[0]);
        free(d->top[i].json[1]);
    }
    diff_counts_free(&d->offers);
    diff_counts_free(&d->exclusions);
    diff_counts_free(&d->faults);
    diff_counts_free(&d->failures);
    json_decref(d->offer_names);
}

/* ========================================================================
 * Writing
 * ======================================================================== */

/* FILE.md -> FILE.offers.svg: the charts sit beside the report. */
static char *chart_path(const char *report, const char *what)
{
    const char *slash = strrchr(report, '/');
    const char *dot = strrchr(report, '.');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - report) : strlen(report);
    char *out = NULL;
    if (asprintf(&out, "%.*s.%s.svg", (int)stem, report, what) < 0)
        return NULL;
    return out;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int write_report(diff *d, bool json)
{
    cli_args *args = d->args;
    const char *out_path = cli_string(args, "out", NULL);
    char *offers_svg = NULL, *segments_svg = NULL;
    if (out_path && !json) {
        offers_svg = chart_path(out_path, "offers");
        segments_svg = chart_path(out_path, "segments");
        if (!offers_svg || !segments_svg || diff_svg_offers(offers_svg, d) != 0 ||
            diff_svg_segments(segments_svg, d) != 0) {
            int status =
                cli_error(args->cmd, "writing the charts beside %s: %s", out_path, strerror(errno));
            free(offers_svg);
            free(segments_svg);
            return status;
        }
    }
    FILE *f = stdout;
    char *tmp = NULL;
    if (out_path) {
        if (asprintf(&tmp, "%s.tmp", out_path) < 0 || !(f = fopen(tmp, "w"))) {
            int status = cli_error(args->cmd, "%s: %s", tmp ? tmp : out_path, strerror(errno));
            free(tmp);
            free(offers_svg);
            free(segments_svg);
            return status;
        }
    }
    if (json)
        diff_write_json(f, d);
    else
        diff_write_markdown(f, d, offers_svg ? base_name(offers_svg) : NULL,
                            segments_svg ? base_name(segments_svg) : NULL);
    int status = CLI_OK;
    if (out_path) {
        bool bad = ferror(f) != 0;
        if (fclose(f) != 0 || bad || rename(tmp, out_path) != 0) {
            status = cli_error(args->cmd, "writing %s: %s", out_path, strerror(errno));
            unlink(tmp);
        }
    }
    free(tmp);
    free(offers_svg);
    free(segments_svg);
    return status;
}

/* ========================================================================
 * The command
 * ======================================================================== */

static int check_usage(cli_args *args, diff *d)
{
    if (!d->catalog_path)
        return cli_usage_error(args->cmd, "--catalog FILE is required");
    if (cli_has(args, "sample") && cli_has(args, "customers"))
        return cli_usage_error(args->cmd, "give --sample or --customers, not both");
    const char *format = cli_string(args, "format", "markdown");
    if (strcmp(format, "markdown") != 0 && strcmp(format, "json") != 0)
        return cli_usage_error(args->cmd, "--format: '%s' is not markdown or json", format);
    int rc = cli_decide_flags(args, d->session, &d->n_session);
    if (rc == CLI_OK)
        rc = percent_flag(args, "max-margin-drop", &d->max_margin_drop);
    if (rc == CLI_OK)
        rc = percent_flag(args, "max-changed", &d->max_changed);
    return rc;
}

int cli_run_policy_diff(cli_args *args)
{
    diff d = {.args = args};
    d.side[DIFF_OLD].path = args->positional[0];
    d.side[DIFF_NEW].path = args->positional[1];
    d.catalog_path = cli_string(args, "catalog", NULL);
    int status = check_usage(args, &d);
    if (status != CLI_OK)
        return status;
    nbx_store *store = cli_open_store(args, NBX_STORE_READONLY, &status);
    if (!store)
        return status;
    d.store_path = cli_store_path(args);
    d.now_ms = cli_time(args, "as-of", 0);
    if (d.now_ms == 0)
        d.now_ms = nbx_time_now(); /* once: both policies decide at this clock */
    cli_customer *customers = NULL;
    size_t n = 0;
    nbx_batch *b[2] = {NULL, NULL};
    const char *file = cli_string(args, "customers", NULL);
    status = load_catalog_facts(&d);
    for (int side = 0; side < 2 && status == CLI_OK; side++)
        status = open_engine(&d, side, store);
    nbx_store_stats st;
    if (status == CLI_OK && nbx_store_stat(store, &st) == NBX_OK)
        d.store_profiles = st.profiles;
    if (status == CLI_OK && nbx_store_generation(store, &d.generation) != NBX_OK)
        status = cli_nbx_error(args->cmd, NBX_ESTORE, nbx_store_errmsg(store));
    if (status == CLI_OK) {
        d.sample_kind = file ? "customers" : "sample";
        status = file ? cli_customer_file(args, file, &customers, &n)
                      : cli_sample_store(args, store,
                                         (size_t)cli_uint(args, "sample", DIFF_SAMPLE_DEFAULT),
                                         &customers, &n);
        d.sample_size = n;
    }
    unsigned threads = (unsigned)cli_uint(args, "threads", 0);
    if (status == CLI_OK)
        status = open_batches(&d, NBX_DECIDE_REASONS, threads, b);
    if (status == CLI_OK)
        status = run_pairs(&d, b, customers, n, file);
    nbx_batch_close(b[0]);
    nbx_batch_close(b[1]);
    if (status == CLI_OK)
        status = explain_top(&d);
    uint64_t after = 0;
    if (status == CLI_OK && nbx_store_generation(store, &after) == NBX_OK && after != d.generation)
        status = cli_error(args->cmd,
                           "%s was written while the diff ran (generation %llu -> %llu): the two "
                           "policies may have seen different data. Stop the writers, or diff a "
                           "copy: nbx store compact --store %s --out COPY",
                           d.store_path, (unsigned long long)d.generation,
                           (unsigned long long)after, d.store_path);
    if (status == CLI_OK) {
        percentiles(&d.side[DIFF_OLD]);
        percentiles(&d.side[DIFF_NEW]);
        judge(&d);
        status = write_report(&d, strcmp(cli_string(args, "format", "markdown"), "json") == 0);
    }
    if (status == CLI_OK && d.malformed)
        status = cli_error(args->cmd, "%llu lines of %s were skipped (see above)",
                           (unsigned long long)d.malformed, file);
    if (status == CLI_OK && d.n_verdict) {
        for (size_t i = 0; i < d.n_verdict; i++) {
            fputs("nbx policy diff: ", stderr);
            cli_print_escaped(stderr, d.verdict[i]); /* holds a policy's message */
            fputc('\n', stderr);
        }
        status = CLI_FALLBACKS;
    }
    cli_customers_free(customers, n);
    diff_free(&d);
    nbx_store_close(store);
    return status;
}
