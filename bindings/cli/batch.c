/*
 * batch.c: nbx batch, one decision per customer for a campaign.
 *
 * The threads and the ordering are the library's (nbx_batch_*); this file
 * reads the input (a customer file or every profile), writes JSONL or CSV,
 * shows progress, prints the summary, and keeps the checkpoint that lets a
 * killed run resume with every customer in the output exactly once.
 *
 * The checkpoint protocol is checkpoint.c's; batch.h declares what the two
 * files share.
 */
#include "batch.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ========================================================================
 * Command table entry (referenced from main.c)
 * ======================================================================== */

const cli_flag cli_batch_flags[] = {
    CLI_FLAG_STORE,
    CLI_FLAG_CATALOG,
    CLI_FLAG_POLICY,
    {"customers", CLI_STRING, "FILE",
     "customer ids, one a line, or JSONL with id and session fields ('-': stdin)", 0, 0},
    {"all", CLI_BOOL, NULL, "every profile in the store, in id order", 0, 0},
    CLI_FLAG_PLACEMENT,
    {"session", CLI_LIST, "KEY=VALUE", "session field for every customer", 0, 0},
    {"as-of", CLI_TIME, "TIME", "the clock of every decision (default: now, once)", 0, 0},
    {"threads", CLI_UINT, "N", "decision threads (default: the CPUs available)", 1,
     NBX_BATCH_THREADS_MAX},
    {"shard", CLI_STRING, "I/N", "only customers with xxh64(id, seed 0) mod N = I", 0, 0},
    {"format", CLI_STRING, "jsonl|csv", "output format (default jsonl)", 0, 0},
    {"out", CLI_STRING, "FILE", "write to FILE instead of standard output", 0, 0},
    {"checkpoint", CLI_STRING, "FILE", "resumable run: progress is recorded in FILE", 0, 0},
    {"checkpoint-every", CLI_UINT, "N", "customers between checkpoints (default 100000)", 1,
     UINT64_C(1000000000)},
    {"record", CLI_BOOL, NULL, "record each chosen action as an impression (consumes caps)", 0, 0},
    {"commit-exposures", CLI_ALIAS, "record", NULL, 0, 0},
    {"explain", CLI_BOOL, NULL, "list every candidate and why it was excluded (jsonl)", 0, 0},
    {"summary", CLI_STRING, "FILE", "also write the summary as JSON to FILE", 0, 0},
    {"max-fallback-rate", CLI_STRING, "R",
     "share of decisions (0 to 1) that may fall back before the exit status is 3 (default 0)", 0,
     0},
    {"window", CLI_UINT, "N", "decisions in flight at most (default 256 per thread)", 1,
     NBX_BATCH_WINDOW_MAX},
    CLI_FLAG_TIME_LIMIT,
    CLI_FLAG_MEMORY_LIMIT,
    CLI_FLAG_END,
};

const char cli_batch_details[] =
    "Decides for every customer of --customers FILE (input order) or of the store\n"
    "(--all, id order), as 'nbx decide' would, and writes one result per customer:\n"
    "the decision JSON a line (--format jsonl), or CSV with a header and one row per\n"
    "action (customer,decision_id,rank,offer,placement,score,expected_margin,\n"
    "fallback,anonymous,policy_version,as_of; a customer without action gets one\n"
    "row with rank 0). In CSV, an id that starts with = + - @, a tab or a CR is\n"
    "written as text (a leading ' and quoted) so that spreadsheets do not run it\n"
    "as a formula. The output order does not depend on --threads.\n"
    "\n"
    "FILE holds one customer id a line, or JSON objects {\"id\": ..., FIELD: VALUE}\n"
    "whose other fields are that customer's session fields (they replace --session\n"
    "fields of the same name). A malformed line is reported as FILE:LINE and\n"
    "skipped. Unknown ids are decided as anonymous.\n"
    "\n"
    "By default the store is opened read-only: the batch plans contacts and\n"
    "consumes no caps. --record (formerly --commit-exposures) records each chosen\n"
    "action as an impression as it is decided, so a later or overlapping batch\n"
    "respects caps.\n"
    "\n"
    "--checkpoint FILE (needs --out) makes the run resumable: after a crash or a\n"
    "kill, run the same command again and the output ends up with every customer\n"
    "exactly once. A rerun with different parameters is refused; a rerun of a\n"
    "finished run does nothing; a rerun while the first still runs waits for it\n"
    "(FILE.lock). SIGINT and SIGTERM stop at a checkpoint.\n"
    "\n"
    "--shard I/N keeps the customers whose xxh64(id, seed 0) mod N is I, so N runs\n"
    "with I = 0..N-1 cover every customer once. A progress bar is shown when\n"
    "standard error is a terminal; a summary is always printed (standard error).\n"
    "When decisions fell back (the policy failed for them), the summary's first\n"
    "line says how many, and the most common reasons follow.\n"
    "\n"
    "Exit status:\n"
    "  0  every customer decided, none fell back (or no more than\n"
    "     --max-fallback-rate of them)\n"
    "  1  something went wrong: a malformed line skipped, a decision failed (also\n"
    "     an unknown channel), the run interrupted, a file unreadable or\n"
    "     unwritable, a checkpoint that does not match\n"
    "  2  usage error\n"
    "  3  every customer decided, but more decisions fell back than\n"
    "     --max-fallback-rate allows (default: none); the output is complete\n"
    "See docs/batch.md.\n";

/* ========================================================================
 * Limits
 * ======================================================================== */

#define MALFORMED_REPORTED_MAX 100
#define FAILED_REPORTED_MAX 20
/* --record: the decisions whose impressions the library commits
 * in one transaction (docs/batch.md, "Group commit"), and the window per
 * thread that keeps one group per thread in flight. */
#define COMMIT_GROUP 128

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void log_to_stderr(void *ud, int level, const char *message)
{
    (void)ud;
    if (level <= NBX_LOG_WARN)
        fprintf(stderr, "nbx batch: %s: %s\n", level == NBX_LOG_ERROR ? "error" : "warning",
                message);
}

/* ========================================================================
 * Input: a bounded line reader with byte offsets
 * ======================================================================== */

static int reader_open(reader *r, const char *path, uint64_t offset, uint64_t line)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->cap = (size_t)NBX_LINE_MAX + 2;
    r->buf = malloc(r->cap);
    if (!r->buf)
        return -1;
    if (strcmp(path, "-") == 0) {
        r->fd = STDIN_FILENO;
        r->path = "stdin";
    } else {
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0)
            return -1;
        struct stat st;
        if (fstat(r->fd, &st) == 0 && S_ISREG(st.st_mode))
            r->size = (uint64_t)st.st_size;
        if (offset && lseek(r->fd, (off_t)offset, SEEK_SET) < 0)
            return -1;
    }
    r->offset = offset;
    r->line = line;
    r->at_start = offset == 0;
    return 0;
}

static void reader_close(reader *r)
{
    if (r->fd > STDIN_FILENO)
        close(r->fd);
    free(r->buf);
    r->buf = NULL;
}

/* Next line, without its "\n" or "\r\n". Returns 1 and the line, 0 at the
 * end, -1 on a read error (errno). A line longer than NBX_LINE_MAX is
 * returned empty with *too_long set, its bytes skipped. */
static int reader_next(reader *r, const char **line, size_t *len, bool *too_long)
{
    *too_long = false;
    for (;;) {
        char *start = r->buf + r->start;
        char *nl = memchr(start, '\n', r->end - r->start);
        if (nl || (r->eof && r->end > r->start)) {
            size_t n = nl ? (size_t)(nl - start) : r->end - r->start;
            size_t used = nl ? n + 1 : n;
            r->start += used;
            r->offset += used;
            r->line++;
            if (n && start[n - 1] == '\r')
                n--;
            *line = start;
            *len = *too_long ? 0 : n;
            return 1;
        }
        if (r->eof) {
            if (*too_long) {
                r->line++;
                *line = r->buf;
                *len = 0;
                return 1;
            }
            return 0;
        }
        if (r->end - r->start >= r->cap - 1) {
            /* No newline in a full buffer: drop what we have of the line. */
            *too_long = true;
            r->offset += r->end - r->start;
            r->start = r->end = 0;
        } else if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            r->end -= r->start;
            r->start = 0;
        }
        ssize_t got = read(r->fd, r->buf + r->end, r->cap - 1 - r->end);
        if (got < 0) {
            if (errno == EINTR && !stop_requested)
                continue;
            return -1;
        }
        if (got == 0)
            r->eof = true;
        r->end += (size_t)got;
    }
}

/* ========================================================================
 * Output
 * ======================================================================== */

/* Numbers as the result JSON writes them, so that the CSV and the JSONL of
 * one run agree to the digit: from 0.001 up to 1e9, fixed point with up to
 * nine decimals (trailing zeros dropped, from the value scaled by 1e9 and
 * rounded); outside that range, the shortest form that reads back to the
 * same double. */
static void format_number(char *buf, size_t size, double v)
{
    double a = fabs(v);
    if (!isfinite(v)) {
        buf[0] = '\0';
        return;
    }
    if (a >= 1e9 || (a < 1e-3 && a != 0)) {
        for (int precision = 15; precision <= 17; precision++) {
            snprintf(buf, size, "%.*g", precision, v);
            if (strtod(buf, NULL) == v)
                return;
        }
        return;
    }
    long long scaled = llround(a * 1e9);
    long long ip = scaled / 1000000000LL, fp = scaled % 1000000000LL;
    int digits = 9;
    while (fp && fp % 10 == 0) {
        fp /= 10;
        digits--;
    }
    const char *sign = v < 0 && scaled != 0 ? "-" : "";
    if (fp)
        snprintf(buf, size, "%s%lld.%0*lld", sign, ip, digits, fp);
    else
        snprintf(buf, size, "%s%lld", sign, ip);
}

/* A CSV row is built in memory, then written with one fwrite: its length
 * is what the checkpoint counts. Every field is bounded (ids 256 bytes,
 * offer and placement ids 128, numbers 24), so a fixed buffer holds a row
 * even with every character quoted and an apostrophe in front. */
typedef struct row {
    char data[4096];
    size_t len;
} row;

static void row_add(row *w, const char *s, size_t n)
{
    if (n > sizeof w->data - w->len)
        n = sizeof w->data - w->len;
    memcpy(w->data + w->len, s, n);
    w->len += n;
}

static void row_puts(row *w, const char *s)
{
    row_add(w, s, strlen(s));
}

/* A spreadsheet takes a cell that starts with one of these for a formula
 * (OWASP, "CSV Injection"): `=HYPERLINK(...)` in a customer id would run
 * when a CRM user opens the file. */
static bool formula_start(char c)
{
    return c == '=' || c == '+' || c == '-' || c == '@' || c == '\t' || c == '\r';
}

/* A text field (an id: outside input): RFC 4180 quoting for `,` `"` and
 * line breaks, and a field that a spreadsheet would evaluate is written
 * as text instead, with a leading apostrophe and quoted, as OWASP
 * recommends: `=1+2` becomes `"'=1+2"`. Numbers the batch computes go
 * through row_puts, never here, so a negative score stays a number. */
static void row_field(row *w, const char *s)
{
    bool neutralise = formula_start(s[0]);
    if (!neutralise && !strpbrk(s, ",\"\r\n")) {
        row_puts(w, s);
        return;
    }
    row_add(w, neutralise ? "\"'" : "\"", neutralise ? 2 : 1);
    for (; *s; s++) {
        if (*s == '"')
            row_add(w, "\"", 1);
        row_add(w, s, 1);
    }
    row_add(w, "\"", 1);
}

static const char CSV_HEADER[] = "customer,decision_id,rank,offer,placement,score,"
                                 "expected_margin,fallback,anonymous,policy_version,as_of\n";

static void write_csv_row(run *r, const nbx_batch_item *it, size_t rank, const nbx_action *a)
{
    row w;
    w.len = 0;
    char number[40];
    row_field(&w, it->customer);
    row_add(&w, ",", 1);
    row_puts(&w, it->decision_id);
    snprintf(number, sizeof number, ",%zu,", rank);
    row_puts(&w, number);
    if (a) {
        row_field(&w, a->offer);
        row_add(&w, ",", 1);
        row_field(&w, a->placement);
        row_add(&w, ",", 1);
        format_number(number, sizeof number, a->score);
        row_puts(&w, number);
        row_add(&w, ",", 1);
        format_number(number, sizeof number, a->expected_margin);
        row_puts(&w, number);
    } else {
        row_puts(&w, ",,,");
    }
    row_puts(&w, it->fallback ? ",true" : ",false");
    row_puts(&w, it->anonymous ? ",true," : ",false,");
    row_puts(&w, r->info.policy_version);
    row_add(&w, ",", 1);
    row_puts(&w, r->as_of_text);
    row_add(&w, "\n", 1);
    fwrite(w.data, 1, w.len, r->out);
    r->out_bytes += w.len;
}

static void write_item(run *r, const nbx_batch_item *it)
{
    if (!r->csv) {
        fwrite(it->json, 1, it->json_len, r->out);
        fputc('\n', r->out);
        r->out_bytes += it->json_len + 1;
    } else if (it->n_actions == 0) {
        write_csv_row(r, it, 0, NULL);
    } else {
        for (size_t i = 0; i < it->n_actions; i++)
            write_csv_row(r, it, i + 1, &it->actions[i]);
    }
}

/* ========================================================================
 * Summary and progress
 * ======================================================================== */

static bool fallbacks_exceeded(const run *r, const totals *t)
{
    return (double)t->fallbacks > r->max_fallback_rate * (double)t->decided;
}

/* The exit status of a run with these totals: anything that went wrong
 * first (the output is then incomplete), then fallbacks beyond the
 * allowance (the output is complete, but the policy failed for them). */
static int run_status(const run *r, const totals *t, bool interrupted)
{
    if (interrupted || t->malformed || t->failed)
        return CLI_FAIL;
    return fallbacks_exceeded(r, t) ? CLI_FALLBACKS : CLI_OK;
}

static void note_fallback(run *r, const nbx_batch_item *it)
{
    fallback_reasons *fr = &r->fallbacks;
    const char *why = it->policy_error ? it->policy_error : "unknown";
    for (size_t i = 0; i < fr->n; i++) {
        if (strncmp(fr->reason[i].text, why, FALLBACK_REASON_LEN - 1) == 0) {
            fr->reason[i].count++;
            return;
        }
    }
    if (fr->n == FALLBACK_REASONS_MAX) {
        fr->other++;
        return;
    }
    snprintf(fr->reason[fr->n].text, FALLBACK_REASON_LEN, "%s", why);
    snprintf(fr->reason[fr->n].first_customer, NBX_ID_MAX + 1, "%s", it->customer);
    fr->reason[fr->n].count = 1;
    fr->n++;
}

static int by_count(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Fallbacks come first: a job's log shows them even when it keeps only
 * the head of the output. */
static void print_fallbacks(run *r, const totals *t, int status)
{
    if (t->fallbacks == 0 || t->decided == 0)
        return;
    double share = 100.0 * (double)t->fallbacks / (double)t->decided;
    fprintf(stderr,
            "nbx batch: %" PRIu64 " of %" PRIu64 " decisions fell back to the fallback decision "
            "(%.2f %%), %s --max-fallback-rate (%g %%)%s\n",
            t->fallbacks, t->decided, share, fallbacks_exceeded(r, t) ? "more than" : "within",
            100 * r->max_fallback_rate, status == CLI_FALLBACKS ? ": exit status 3" : "");
    fallback_reasons *fr = &r->fallbacks;
    if (fr->n == 0)
        return;
    /* (count, index) pairs, most frequent first */
    uint64_t order[FALLBACK_REASONS_MAX][2];
    for (size_t i = 0; i < fr->n; i++) {
        order[i][0] = fr->reason[i].count;
        order[i][1] = i;
    }
    qsort(order, fr->n, sizeof order[0], by_count);
    fprintf(stderr, "nbx batch: fallback reasons%s:\n",
            r->base.customers ? " (customers decided since the resume)" : "");
    for (size_t k = 0; k < fr->n; k++) {
        size_t i = (size_t)order[k][1];
        fprintf(stderr, "nbx batch:   %" PRIu64 " x ", fr->reason[i].count);
        cli_print_escaped(stderr, fr->reason[i].text);
        fputs(" (first: ", stderr);
        cli_print_escaped(stderr, fr->reason[i].first_customer);
        fputs(")\n", stderr);
    }
    if (fr->other)
        fprintf(stderr, "nbx batch:   %" PRIu64 " with other reasons\n", fr->other);
}

static void print_summary(run *r, const totals *t, bool interrupted, int status)
{
    print_fallbacks(r, t, status);
    double rate = t->elapsed > 0 ? (double)t->customers / t->elapsed : 0;
    fprintf(stderr,
            "nbx batch: %" PRIu64 " customers: %" PRIu64 " decided, %" PRIu64 " failed, %" PRIu64
            " fallbacks, %" PRIu64 " anonymous; %" PRIu64 " malformed lines skipped",
            t->customers, t->decided, t->failed, t->fallbacks, t->anonymous, t->malformed);
    if (r->shard_count)
        fprintf(stderr, "; %" PRIu64 " in other shards (shard %" PRIu32 "/%" PRIu32 ")",
                t->other_shard, r->shard_index, r->shard_count);
    fprintf(stderr,
            "\nnbx batch: %" PRIu64 " actions, expected margin %.2f\nnbx batch: exclusions:",
            t->actions, t->expected_margin);
    for (int i = 1; i < NBX_EXCLUDED_COUNT; i++)
        fprintf(stderr, "%s %s %" PRIu64, i > 1 ? "," : "", nbx_excluded_name(i), t->exclusions[i]);
    fprintf(stderr, "\nnbx batch: %.2f s, %.0f customers/s%s\n", t->elapsed, rate,
            interrupted ? "; interrupted" : "");
}

/* A JSON number, or null when v is not finite: JSON has no inf or NaN (a
 * sum of finite margins can overflow). The library's JSON writer's rule. */
static void json_number(FILE *f, const char *fmt, double v)
{
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fputs("null", f);
}

static const char *status_name(int status, bool interrupted)
{
    if (status == CLI_OK)
        return "ok";
    if (status == CLI_FALLBACKS)
        return "fallbacks";
    return interrupted ? "interrupted" : "failed";
}

static int write_summary_json(run *r, const totals *t, bool complete, bool interrupted, int status)
{
    FILE *f = fopen(r->summary_path, "w");
    if (!f)
        return cli_error(r->cmd, "%s: %s", r->summary_path, strerror(errno));
    /* What the job needs to know first: how it went. */
    fprintf(f, "{\"status\":\"%s\",\"exit_status\":%d,\"fallback_rate\":",
            status_name(status, interrupted), status);
    json_number(f, "%.17g", t->decided ? (double)t->fallbacks / (double)t->decided : 0.0);
    fputs(",\"max_fallback_rate\":", f);
    json_number(f, "%.17g", r->max_fallback_rate);
    fprintf(f,
            ",\"customers\":%" PRIu64 ",\"decided\":%" PRIu64 ",\"failed\":%" PRIu64
            ",\"fallbacks\":%" PRIu64 ",\"anonymous\":%" PRIu64 ",\"malformed\":%" PRIu64
            ",\"other_shard\":%" PRIu64 ",\"actions\":%" PRIu64 ",\"expected_margin\":",
            t->customers, t->decided, t->failed, t->fallbacks, t->anonymous, t->malformed,
            t->other_shard, t->actions);
    json_number(f, "%.17g", t->expected_margin);
    fputs(",\"exclusions\":{", f);
    for (int i = 1; i < NBX_EXCLUDED_COUNT; i++)
        fprintf(f, "%s\"%s\":%" PRIu64, i > 1 ? "," : "", nbx_excluded_name(i), t->exclusions[i]);
    fputs("},\"fallback_reasons\":[", f);
    const fallback_reasons *fr = &r->fallbacks;
    for (size_t i = 0; i < fr->n; i++) {
        fputs(i ? ",{\"reason\":" : "{\"reason\":", f);
        cli_print_json_string(f, fr->reason[i].text);
        fprintf(f, ",\"count\":%" PRIu64 ",\"first_customer\":", fr->reason[i].count);
        cli_print_json_string(f, fr->reason[i].first_customer);
        fputc('}', f);
    }
    fprintf(f, "],\"other_fallback_reasons\":%" PRIu64 ",\"elapsed_s\":", fr->other);
    json_number(f, "%.3f", t->elapsed);
    fputs(",\"rate\":", f);
    json_number(f, "%.1f", t->elapsed > 0 ? (double)t->customers / t->elapsed : 0.0);
    fprintf(f,
            ",\"complete\":%s,\"policy_version\":\"%s\",\"catalog_version\":\"%s\","
            "\"as_of\":\"%s\"}\n",
            complete ? "true" : "false", r->info.policy_version, r->info.catalog_version,
            r->as_of_text);
    if (fclose(f) != 0)
        return cli_error(r->cmd, "%s: %s", r->summary_path, strerror(errno));
    return CLI_OK;
}

static void show_progress(run *r, bool force)
{
    double now = cli_now_seconds();
    if (!force && now < r->next_progress)
        return;
    r->next_progress = now + 0.25;
    nbx_batch_stats st;
    nbx_batch_stats_get(r->batch, &st);
    double elapsed = now - r->started;
    double rate = elapsed > 0 ? (double)st.taken / elapsed : 0;
    uint64_t done = r->base.customers + st.taken;
    double fraction = -1;
    if (!r->all && r->in.size > 0)
        fraction = (double)r->in.offset / (double)r->in.size;
    else if (r->all && r->expected_total > 0)
        fraction = (double)done / (double)r->expected_total;
    if (fraction > 1)
        fraction = 1;
    char bar[32] = "";
    char eta[32] = "";
    if (fraction >= 0) {
        int filled = (int)(fraction * 20);
        for (int i = 0; i < 20; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[20] = '\0';
        if (rate > 0 && fraction > 0) {
            double left = elapsed * (1 - fraction) / fraction;
            snprintf(eta, sizeof eta, " ETA %d:%02d", (int)(left / 60), (int)left % 60);
        }
        fprintf(stderr, "\r\033[K[%s] %5.1f%% %" PRIu64 " customers, %.0f/s%s", bar, 100 * fraction,
                done, rate, eta);
    } else {
        fprintf(stderr, "\r\033[K%" PRIu64 " customers, %.0f/s", done, rate);
    }
    fflush(stderr);
    r->progress_shown = true;
}

/* ========================================================================
 * The run
 * ======================================================================== */

static int take_one(run *r)
{
    const nbx_batch_item *it;
    if (nbx_batch_next(r->batch, &it) != NBX_OK)
        return CLI_OK;
    const position *p = &r->ring[it->index % r->window];
    if (it->status != NBX_OK) {
        nbx_batch_stats st;
        nbx_batch_stats_get(r->batch, &st);
        if (st.failed <= FAILED_REPORTED_MAX) {
            fprintf(stderr, "%snbx batch: customer ", r->progress_shown ? "\r\033[K" : "");
            cli_print_escaped(stderr, it->customer);
            fprintf(stderr, ": %s\n", it->errmsg);
        }
    } else {
        if (it->fallback)
            note_fallback(r, it);
        write_item(r, it);
        if (ferror(r->out))
            return cli_error(r->cmd, "writing %s: %s", r->out_path ? r->out_path : "output",
                             strerror(errno));
    }
    r->last = *p;
    snprintf(r->last_id, sizeof r->last_id, "%s", it->customer);
    r->since_checkpoint++;
    if (r->checkpoint_path && r->since_checkpoint >= r->checkpoint_every) {
        int rc = checkpoint_write(r, &r->last, r->last_id, false);
        if (rc != CLI_OK)
            return rc;
    }
    return CLI_OK;
}

static void report_malformed(run *r, const char *msg)
{
    r->malformed++;
    if (r->malformed <= MALFORMED_REPORTED_MAX)
        fprintf(stderr, "%s%s:%" PRIu64 ": %s; line skipped\n", r->progress_shown ? "\r\033[K" : "",
                r->in.path, r->in.line, msg);
    else if (r->malformed == MALFORMED_REPORTED_MAX + 1)
        fprintf(stderr, "nbx batch: more malformed lines; only the first %d are reported\n",
                MALFORMED_REPORTED_MAX);
}

/* Queue one customer: an id, or a JSON line from the customer file. */
static int submit(run *r, const char *id, const char *json, size_t json_len)
{
    while (nbx_batch_space(r->batch) == 0) {
        int rc = take_one(r);
        if (rc != CLI_OK)
            return rc;
    }
    int rc = json ? nbx_batch_submit_json(r->batch, json, json_len, NULL)
                  : nbx_batch_submit(r->batch, id, NULL, 0, NULL);
    if (rc == NBX_OK) {
        position *p = &r->ring[r->queued % r->window];
        p->input_offset = r->in.offset;
        p->input_line = r->in.line;
        p->malformed = r->malformed;
        p->other_shard = r->other_shard;
        r->queued++;
        return CLI_OK;
    }
    if (rc == NBX_DONE) {
        r->other_shard++;
        return CLI_OK;
    }
    if (rc == NBX_EPARSE || rc == NBX_EINVAL) {
        if (r->all)
            return cli_error(r->cmd, "profile id '%s': %s", id, nbx_batch_errmsg(r->batch));
        report_malformed(r, nbx_batch_errmsg(r->batch));
        return CLI_OK;
    }
    return cli_nbx_error(r->cmd, rc, nbx_batch_errmsg(r->batch));
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static int feed_customer_file(run *r)
{
    const char *line;
    size_t len;
    bool too_long;
    int got = 0;
    while (!stop_requested && (got = reader_next(&r->in, &line, &len, &too_long)) == 1) {
        if (too_long) {
            char msg[64];
            snprintf(msg, sizeof msg, "longer than %d bytes", NBX_LINE_MAX);
            report_malformed(r, msg);
            continue;
        }
        if (r->in.line == 1 && r->in.at_start && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
            line += 3; /* a UTF-8 byte order mark, as some Windows tools write */
            len -= 3;
        }
        size_t lead = 0;
        while (lead < len && is_space(line[lead]))
            lead++;
        if (lead == len)
            continue; /* blank line */
        int rc;
        if (line[lead] == '{' || line[lead] == '[' || line[lead] == '"') {
            /* JSON; anything but an object is refused by the library, rather
             * than `["c1"]` or `"c1"` being decided as a literal id. */
            rc = submit(r, NULL, line, len);
        } else if (lead > 0 || is_space(line[len - 1])) {
            /* Most likely a formatting accident; deciding " c1" as an
             * anonymous customer would hide it. */
            report_malformed(r, "id has leading or trailing whitespace; use JSONL to pass such "
                                "an id");
            rc = CLI_OK;
        } else if (len > NBX_ID_MAX) {
            char msg[64];
            snprintf(msg, sizeof msg, "customer id longer than %d bytes", NBX_ID_MAX);
            report_malformed(r, msg);
            rc = CLI_OK;
        } else if (memchr(line, '\0', len)) {
            report_malformed(r, "customer id contains a NUL byte");
            rc = CLI_OK;
        } else {
            char id[NBX_ID_MAX + 1];
            memcpy(id, line, len);
            id[len] = '\0';
            rc = submit(r, id, NULL, 0);
        }
        if (rc != CLI_OK)
            return rc;
        if (r->tty)
            show_progress(r, false);
    }
    if (!stop_requested && got < 0)
        return cli_error(r->cmd, "reading %s: %s", r->in.path, strerror(errno));
    return CLI_OK;
}

static int feed_all_profiles(run *r)
{
    const char *id;
    int rc = NBX_DONE;
    while (!stop_requested && (rc = nbx_iter_next(r->iter, &id, NULL, NULL)) == NBX_OK) {
        int src = submit(r, id, NULL, 0);
        if (src != CLI_OK)
            return src;
        if (r->tty)
            show_progress(r, false);
    }
    if (!stop_requested && rc != NBX_DONE)
        return cli_nbx_error(r->cmd, rc, nbx_last_errmsg());
    return CLI_OK;
}

static int drain(run *r)
{
    while (nbx_batch_pending(r->batch) > 0) {
        int rc = take_one(r);
        if (rc != CLI_OK)
            return rc;
        if (r->progress_shown)
            show_progress(r, false);
    }
    return CLI_OK;
}

/* ========================================================================
 * Set-up
 * ======================================================================== */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int parse_shard(run *r, const char *text)
{
    /* Digits only: strtoul() alone would also take " 0", "+0" and "-0". */
    char *end;
    errno = 0;
    unsigned long i = strtoul(text, &end, 10);
    if (errno || !is_digit(text[0]) || *end != '/')
        return cli_usage_error(r->cmd, "--shard: '%s' is not I/N", text);
    const char *ntext = end + 1;
    unsigned long n = strtoul(ntext, &end, 10);
    if (errno || !is_digit(ntext[0]) || *end || n == 0 || n > UINT32_MAX)
        return cli_usage_error(r->cmd, "--shard: '%s' is not I/N with N from 1 to %u", text,
                               UINT32_MAX);
    if (i >= n)
        return cli_usage_error(r->cmd, "--shard %s: I must be below N (0..%lu)", text, n - 1);
    r->shard_index = (uint32_t)i;
    r->shard_count = (uint32_t)n;
    return CLI_OK;
}

/* ------------------------------------------------------------------------
 * Files that must be distinct
 * ------------------------------------------------------------------------ */

/* One file the run reads or writes, and who named it. */
typedef struct named_file {
    const char *what; /* "--out", "the store's data.mdb", ... */
    const char *path; /* as given; NULL for standard output */
    bool written;
    bool exists, regular;
    dev_t dev;
    ino_t ino;
    char *resolved; /* a file not there yet: its directory resolved, plus its name */
} named_file;

static void identify_file(named_file *f)
{
    struct stat st;
    int rc = f->path ? stat(f->path, &st) : fstat(STDOUT_FILENO, &st);
    if (rc == 0) {
        f->exists = true;
        f->regular = S_ISREG(st.st_mode);
        f->dev = st.st_dev;
        f->ino = st.st_ino;
        return;
    }
    if (!f->path)
        return;
    char *copy = strdup(f->path);
    if (!copy)
        return;
    char *slash = strrchr(copy, '/');
    const char *name = slash ? slash + 1 : copy;
    const char *dir = slash == copy ? "/" : slash ? copy : ".";
    if (slash && slash != copy)
        *slash = '\0';
    char *real = realpath(dir, NULL);
    if (real) {
        size_t n = strlen(real) + strlen(name) + 2;
        f->resolved = malloc(n);
        if (f->resolved)
            snprintf(f->resolved, n, "%s/%s", real, name);
        free(real);
    }
    free(copy);
}

/* Existing files are the same when they are the same inode (links and
 * different spellings included); devices and pipes (/dev/null) may be
 * shared. Files not there yet are the same when their resolved paths are. */
static bool same_file(const named_file *a, const named_file *b)
{
    if (a->exists || b->exists)
        return a->exists && b->exists && a->regular && b->regular && a->dev == b->dev &&
               a->ino == b->ino;
    return a->resolved && b->resolved && strcmp(a->resolved, b->resolved) == 0;
}

/* Refuse a run whose output would overwrite one of its inputs or another of
 * its outputs: `--customers x --out x` would truncate the customer list
 * before reading it, `--out o --checkpoint o` would replace the output by
 * the checkpoint. Checked before anything is opened for writing. */
static int check_distinct_files(run *r)
{
    char *store_data = NULL;
    named_file files[10];
    size_t n = 0;
    memset(files, 0, sizeof files);
    if (r->out_path)
        files[n++] = (named_file){.what = "--out", .path = r->out_path, .written = true};
    else
        files[n++] = (named_file){.what = "standard output", .path = NULL, .written = true};
    if (r->checkpoint_path) {
        files[n++] =
            (named_file){.what = "--checkpoint", .path = r->checkpoint_path, .written = true};
        files[n++] = (named_file){
            .what = "--checkpoint's temporary file", .path = r->checkpoint_tmp, .written = true};
        files[n++] = (named_file){
            .what = "--checkpoint's lock file", .path = r->checkpoint_lock, .written = true};
    }
    if (r->summary_path)
        files[n++] = (named_file){.what = "--summary", .path = r->summary_path, .written = true};
    if (r->customers_path && strcmp(r->customers_path, "-") != 0)
        files[n++] = (named_file){.what = "--customers", .path = r->customers_path};
    files[n++] = (named_file){.what = "--catalog", .path = r->catalog_path};
    files[n++] = (named_file){.what = "--policy", .path = r->policy_path};
    size_t len = strlen(r->store_path) + sizeof "/data.mdb";
    store_data = malloc(len);
    if (store_data) {
        snprintf(store_data, len, "%s/data.mdb", r->store_path);
        files[n++] = (named_file){.what = "the store's data.mdb", .path = store_data};
    }
    for (size_t i = 0; i < n; i++)
        identify_file(&files[i]);
    int rc = CLI_OK;
    for (size_t i = 0; i < n && rc == CLI_OK; i++) {
        for (size_t j = i + 1; j < n && rc == CLI_OK; j++) {
            if ((files[i].written || files[j].written) && same_file(&files[i], &files[j]))
                rc = cli_usage_error(r->cmd,
                                     "%s and %s are the same file (%s): nothing was "
                                     "written; give each its own file",
                                     files[i].what, files[j].what,
                                     files[i].path ? files[i].path : files[j].path);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(files[i].resolved);
    free(store_data);
    return rc;
}

static int parse_parameters(run *r)
{
    cli_args *args = r->args;
    if (!cli_has(args, "catalog"))
        return cli_usage_error(r->cmd, "--catalog FILE is required");
    if (!cli_has(args, "policy"))
        return cli_usage_error(r->cmd, "--policy FILE is required");
    r->all = cli_has(args, "all");
    r->customers_path = cli_string(args, "customers", NULL);
    if (r->all == (r->customers_path != NULL))
        return cli_usage_error(r->cmd, "give either --customers FILE or --all");
    r->store_path = cli_store_path(args);
    if (!r->store_path)
        return CLI_USAGE;
    r->catalog_path = cli_string(args, "catalog", NULL);
    r->policy_path = cli_string(args, "policy", NULL);
    r->out_path = cli_string(args, "out", NULL);
    r->checkpoint_path = cli_string(args, "checkpoint", NULL);
    r->summary_path = cli_string(args, "summary", NULL);
    r->record = cli_has(args, "record");
    r->explain = cli_has(args, "explain");
    r->checkpoint_every = cli_uint(args, "checkpoint-every", 100000);
    /* Committed impressions of customers not yet in a checkpoint are lost
     * to a kill (the resume decides them again on spent caps): checkpoint
     * at every group the library commits. */
    if (r->record && r->checkpoint_every > COMMIT_GROUP)
        r->checkpoint_every = COMMIT_GROUP;
    const char *format = cli_string(args, "format", "jsonl");
    if (strcmp(format, "csv") == 0)
        r->csv = true;
    else if (strcmp(format, "jsonl") != 0)
        return cli_usage_error(r->cmd, "--format: '%s' is not jsonl or csv", format);
    if (r->csv && r->explain)
        return cli_usage_error(r->cmd, "--explain needs --format jsonl");
    if (r->checkpoint_path && !r->out_path)
        return cli_usage_error(r->cmd, "--checkpoint needs --out FILE (standard output cannot "
                                       "be truncated on resume)");
    if (r->checkpoint_path && r->customers_path && strcmp(r->customers_path, "-") == 0)
        return cli_usage_error(r->cmd, "--checkpoint needs a customer file, not standard input");
    if (r->checkpoint_path) {
        size_t len = strlen(r->checkpoint_path) + sizeof ".tmp";
        r->checkpoint_tmp = malloc(len);
        if (!r->checkpoint_tmp)
            return cli_error(r->cmd, "out of memory");
        snprintf(r->checkpoint_tmp, len, "%s.tmp", r->checkpoint_path);
        len = strlen(r->checkpoint_path) + sizeof ".lock";
        r->checkpoint_lock = malloc(len);
        if (!r->checkpoint_lock)
            return cli_error(r->cmd, "out of memory");
        snprintf(r->checkpoint_lock, len, "%s.lock", r->checkpoint_path);
    }
    if (cli_has(args, "shard")) {
        int rc = parse_shard(r, cli_string(args, "shard", NULL));
        if (rc != CLI_OK)
            return rc;
    }
    if (cli_has(args, "max-fallback-rate")) {
        const char *text = cli_string(args, "max-fallback-rate", NULL);
        char *end;
        errno = 0;
        r->max_fallback_rate = strtod(text, &end);
        if (errno || end == text || *end || !(r->max_fallback_rate >= 0) ||
            r->max_fallback_rate > 1)
            return cli_usage_error(r->cmd,
                                   "--max-fallback-rate: '%s' is not a number from 0 to 1 (a "
                                   "share of the decisions: 0.01 allows 1 %%)",
                                   text);
    }
    r->as_of_given = cli_has(args, "as-of");
    r->as_of = r->as_of_given ? cli_time(args, "as-of", 0) : nbx_time_now();
    int rc = cli_decide_flags(args, r->session, &r->n_session);
    if (rc == CLI_OK)
        rc = check_distinct_files(r);
    return rc;
}

static int open_engine(run *r)
{
    nbx_engine_options opts;
    cli_engine_options(r->args, r->store_path, r->record, &opts);
    opts.log = log_to_stderr;
    int rc = nbx_engine_open(&opts, &r->engine);
    if (rc != NBX_OK)
        return cli_nbx_error(r->cmd, rc, nbx_last_errmsg());
    nbx_engine_info_get(r->engine, &r->info);
    return CLI_OK;
}

/* Open the output: fresh, or truncated to what the checkpoint committed. */
static int open_output(run *r, const checkpoint *ck, bool resume)
{
    if (!r->out_path) {
        r->out = stdout;
    } else {
        int fd = open(r->out_path, O_WRONLY | O_CREAT | O_CLOEXEC | (resume ? 0 : O_TRUNC), 0644);
        if (fd < 0)
            return cli_error(r->cmd, "%s: %s", r->out_path, strerror(errno));
        if (resume) {
            struct stat st;
            if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < ck->output_offset) {
                close(fd);
                return cli_error(r->cmd,
                                 "%s is shorter than the %" PRIu64 " bytes %s says were written; "
                                 "delete %s to start over",
                                 r->out_path, ck->output_offset, r->checkpoint_path,
                                 r->checkpoint_path);
            }
            if (ftruncate(fd, (off_t)ck->output_offset) != 0 ||
                lseek(fd, (off_t)ck->output_offset, SEEK_SET) < 0) {
                close(fd);
                return cli_error(r->cmd, "%s: %s", r->out_path, strerror(errno));
            }
        }
        r->out = fdopen(fd, "w");
        if (!r->out) {
            close(fd);
            return cli_error(r->cmd, "%s: %s", r->out_path, strerror(errno));
        }
    }
    /* Full buffering: a line per customer would be a write per customer. */
    setvbuf(r->out, NULL, _IOFBF, 1 << 20);
    r->out_bytes = resume ? ck->output_offset : 0;
    if (r->csv && r->out_bytes == 0) {
        fputs(CSV_HEADER, r->out);
        r->out_bytes += sizeof CSV_HEADER - 1;
    }
    return CLI_OK;
}

static int open_input(run *r, const checkpoint *ck, bool resume)
{
    if (r->all) {
        nbx_store *store = nbx_engine_store(r->engine);
        const char *after = resume && ck->after_id && *ck->after_id ? ck->after_id : NULL;
        int rc = nbx_iter_open(store, NBX_ITER_IDS, after, &r->iter);
        if (rc != NBX_OK)
            return cli_nbx_error(r->cmd, rc, nbx_last_errmsg());
        nbx_store_stats st;
        if (nbx_store_stat(store, &st) == NBX_OK)
            r->expected_total = r->shard_count ? st.profiles / r->shard_count : st.profiles;
        return CLI_OK;
    }
    uint64_t offset = resume ? ck->input_offset : 0, line = resume ? ck->input_line : 0;
    if (reader_open(&r->in, r->customers_path, offset, line) != 0)
        return cli_error(r->cmd, "%s: %s", r->customers_path, strerror(errno));
    XXH64_reset(&r->input_hash, 0);
    r->input_hashed = 0;
    if (!resume)
        return CLI_OK;
    /* Resuming at a byte offset is right only if the lines before it are
     * the ones decided: an edited or replaced file would resume mid-line. */
    int hrc = checkpoint_hash_input_to(r, offset);
    if (hrc < 0)
        return cli_error(r->cmd, "%s: %s", r->customers_path, strerror(errno));
    if (hrc > 0 || XXH64_digest(&r->input_hash) != ck->input_hash)
        return cli_error(r->cmd, "%s changed since the checkpoint; delete %s to start over",
                         r->customers_path, r->checkpoint_path);
    return CLI_OK;
}

static unsigned cpus_available(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static int open_batch(run *r)
{
    const cli_value *pl = cli_flag_value(r->args, "placement");
    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.threads = (unsigned)cli_uint(r->args, "threads", 0);
    o.window = (size_t)cli_uint(r->args, "window", 0);
    if (r->record && r->checkpoint_path && o.window == 0)
        o.window = (size_t)COMMIT_GROUP * (o.threads ? o.threads : cpus_available());
    o.placements = pl->list;
    o.n_placements = pl->n_list;
    o.session = r->session;
    o.n_session = r->n_session;
    o.now_ms = r->as_of;
    o.flags = (r->record ? NBX_DECIDE_RECORD : 0u) | (r->explain ? NBX_DECIDE_EXPLAIN : 0u);
    o.shard_count = r->shard_count;
    o.shard_index = r->shard_index;
    int rc = nbx_batch_open(r->engine, &o, &r->batch);
    if (rc != NBX_OK)
        return cli_nbx_error(r->cmd, rc, nbx_last_errmsg());
    /* nbx_batch_space() counts the window; never more than that pending. */
    r->window = nbx_batch_space(r->batch);
    r->ring = calloc(r->window, sizeof *r->ring);
    if (!r->ring)
        return cli_error(r->cmd, "out of memory");
    return CLI_OK;
}

static void install_stop_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void release(run *r)
{
    nbx_batch_close(r->batch);
    nbx_iter_close(r->iter);
    nbx_engine_close(r->engine);
    if (r->in.buf)
        reader_close(&r->in);
    if (r->out && r->out != stdout)
        fclose(r->out);
    free(r->ring);
    checkpoint_unlock(r);
    free(r->checkpoint_tmp);
    free(r->checkpoint_lock);
}

int cli_run_batch(cli_args *args)
{
    run r;
    memset(&r, 0, sizeof r);
    r.args = args;
    r.cmd = args->cmd;
    r.started = cli_now_seconds();
    r.tty = isatty(STDERR_FILENO) != 0;
    r.lock_fd = -1;
    int rc = parse_parameters(&r);
    if (rc == CLI_OK && r.checkpoint_path)
        rc = checkpoint_lock(&r);
    if (rc == CLI_OK)
        rc = open_engine(&r);

    checkpoint ck;
    memset(&ck, 0, sizeof ck);
    bool resume = false;
    if (rc == CLI_OK && r.checkpoint_path)
        rc = checkpoint_load(&r, &ck, &resume);
    nbx_time_format(r.as_of, r.as_of_text);
    if (rc == CLI_OK && resume && ck.complete) {
        /* The exit status is the finished run's, so a job retried after it
         * succeeded succeeds and one whose input had errors still says so. */
        rc = run_status(&r, &ck.totals, false);
        print_summary(&r, &ck.totals, false, rc);
        fprintf(stderr,
                "nbx batch: %s: this run is already complete; nothing done (exit %d, as the run "
                "that finished); delete it to run again\n",
                r.checkpoint_path, rc);
        free(ck.text);
        release(&r);
        return rc;
    }
    if (resume) {
        r.base = ck.totals;
        r.last.input_offset = ck.input_offset;
        r.last.input_line = ck.input_line;
        snprintf(r.last_id, sizeof r.last_id, "%s", ck.after_id ? ck.after_id : "");
        fprintf(stderr, "nbx batch: resuming from %s after %" PRIu64 " customers\n",
                r.checkpoint_path, ck.totals.customers);
    }
    /* The input first: a resume is refused before the output is touched. */
    if (rc == CLI_OK)
        rc = open_input(&r, &ck, resume);
    if (rc == CLI_OK)
        rc = open_output(&r, &ck, resume);
    if (rc == CLI_OK)
        rc = open_batch(&r);
    free(ck.text);
    if (rc != CLI_OK) {
        release(&r);
        return rc;
    }

    stop_requested = 0;
    install_stop_handlers();
    /* The input position of the last customer written, for a checkpoint
     * taken before any customer of this run is written. */
    r.last.malformed = 0;
    r.last.other_shard = 0;
    rc = r.all ? feed_all_profiles(&r) : feed_customer_file(&r);
    int drain_rc = drain(&r);
    if (rc == CLI_OK)
        rc = drain_rc;
    bool interrupted = stop_requested != 0;
    if (r.progress_shown)
        fprintf(stderr, "\r\033[K");

    /* At the end of the input, the whole input is accounted for. */
    position end = r.last;
    bool complete = rc == CLI_OK && !interrupted;
    if (complete) {
        end.input_offset = r.in.offset;
        end.input_line = r.in.line;
        end.malformed = r.malformed;
        end.other_shard = r.other_shard;
    }
    if (rc == CLI_OK && fflush(r.out) != 0)
        rc =
            cli_error(r.cmd, "writing %s: %s", r.out_path ? r.out_path : "output", strerror(errno));
    if (rc == CLI_OK && r.checkpoint_path)
        rc = checkpoint_write(&r, &end, r.last_id, complete);

    totals t;
    checkpoint_totals(&r, &end, &t);
    if (rc == CLI_OK)
        rc = run_status(&r, &t, interrupted);
    print_summary(&r, &t, interrupted, rc);
    if (r.summary_path) {
        int src = write_summary_json(&r, &t, complete, interrupted, rc);
        if (src != CLI_OK)
            rc = src;
    }
    if (interrupted)
        fprintf(stderr, "nbx batch: interrupted%s\n",
                r.checkpoint_path ? "; run the same command again to resume" : "");
    release(&r);
    return rc;
}
