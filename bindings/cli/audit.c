/*
 * audit.c: the audit log of nbx decide and nbx batch (--log FILE), and nbx
 * audit replay, which makes logged decisions again (docs/experiments.md).
 *
 * What a line holds and how a replay compares are the library's
 * (nbx_result_audit_json(), nbx_audit_replay()); this file writes lines to
 * files and reports on them.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <jansson.h>

/* ========================================================================
 * --log FILE
 * ======================================================================== */

int cli_log_open(const cli_command *cmd, const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        cli_error(cmd, "--log %s: %s", path, strerror(errno));
    return fd;
}

int cli_log_append(const cli_command *cmd, const char *path, int fd, const char *line, size_t len)
{
    if (!line)
        return cli_error(cmd, "--log %s: the decision has no audit line", path);
    struct iovec iov[2] = {{(void *)line, len}, {(void *)"\n", 1}};
    ssize_t want = (ssize_t)len + 1, got;
    while ((got = writev(fd, iov, 2)) < 0 && errno == EINTR)
        ;
    if (got < 0)
        return cli_error(cmd, "--log %s: %s", path, strerror(errno));
    if (got != want)
        return cli_error(cmd, "--log %s: only %zd of %zd bytes written (disk full?)", path, got,
                         want);
    return CLI_OK;
}

/* ========================================================================
 * nbx audit replay
 * ======================================================================== */

const cli_flag cli_audit_replay_flags[] = {
    CLI_FLAG_STORE,
    CLI_FLAG_CATALOG,
    CLI_FLAG_POLICY,
    CLI_FLAG_DEPLOYMENT,
    {"json", CLI_BOOL, NULL, "print one JSON report a decision, then a summary object", 0, 0},
    {"allow-different", CLI_BOOL, NULL, "exit 0 even when decisions came out differently", 0, 0},
    CLI_FLAG_TIME_LIMIT,
    CLI_FLAG_MEMORY_LIMIT,
    CLI_FLAG_END,
};

const char cli_audit_replay_details[] =
    "Reads LOGFILE ('-': standard input), an audit log written by nbx decide --log,\n"
    "nbx batch --log, the Python binding's log= or nginx's $nbx_decision, one\n"
    "decision a line (on a line with a prefix of nginx's, the JSON object that ends\n"
    "it). Each decision is made again at its as_of, with its customer, session and\n"
    "placements, on the store (opened read-only) and the catalog and the policy or\n"
    "deployment given (with a deployment, the customer's arm is assigned again):\n"
    "nothing is recorded. The report says, per decision, identical or different,\n"
    "which fields differ (actions, arm, fallback, exclusions, versions, ...) and what\n"
    "changed since: policy_changed, catalog_changed, deployment_changed, arm_changed,\n"
    "profile_updated (the profile's updated_at is not the one the decision read),\n"
    "events_since (the customer's exposure counters changed: events recorded since),\n"
    "own_impressions (the decision recorded its impressions, which the counters now\n"
    "hold), budgets (the daily budget exclusions differ), or unexplained. Lines\n"
    "without a decision (blank, or nginx's with an empty or '-' last field) are\n"
    "counted and skipped; a\n"
    "line that is not an audit line is reported as LOGFILE:LINE and skipped.\n"
    "\n"
    "Exit status:\n"
    "  0  every decision identical (or --allow-different)\n"
    "  1  a line unreadable, or the store, catalog, policy or deployment failed\n"
    "  2  usage error\n"
    "  4  every line replayed, but some decisions came out differently\n"
    "See docs/experiments.md, \"Replay\".\n";

/* Reasons counted for the summary, in the order the library names them. */
static const char *const REASONS[] = {
    "policy_changed",  "catalog_changed", "deployment_changed",
    "arm_changed",     "profile_updated", "events_since",
    "own_impressions", "budgets",         "unexplained",
};
#define N_REASONS (sizeof REASONS / sizeof REASONS[0])

typedef struct replay_run {
    cli_args *args;
    bool json;
    uint64_t decisions, identical, different, skipped, unreadable;
    uint64_t reasons[N_REASONS];
} replay_run;

/* A line without a decision: blank, or without a JSON object and with its
 * last field empty or "-": how nginx writes $nbx_decision on a request that
 * made none (a 400, another location), with escape=none or without. */
static bool no_decision(const char *line, size_t len)
{
    if (memchr(line, '{', len))
        return false;
    while (len && line[len - 1] == '\r')
        len--;
    if (len == 0 || line[len - 1] == ' ' || line[len - 1] == '\t')
        return true;
    return line[len - 1] == '-' && (len == 1 || line[len - 2] == ' ' || line[len - 2] == '\t');
}

static void print_text_report(json_t *report)
{
    json_t *id = json_object_get(report, "decision_id");
    json_t *customer = json_object_get(report, "customer");
    bool identical = json_is_true(json_object_get(report, "identical"));
    cli_print_escaped(stdout, json_string_value(id) ? json_string_value(id) : "?");
    fputs("  ", stdout);
    cli_print_escaped(stdout, json_string_value(customer) ? json_string_value(customer) : "?");
    fputs(identical ? "  identical\n" : "  different", stdout);
    if (identical)
        return;
    json_t *v;
    size_t i;
    fputs(" (", stdout);
    json_array_foreach(json_object_get(report, "differences"), i, v)
    {
        fputs(i ? ", " : "", stdout);
        cli_print_escaped(stdout, json_string_value(v) ? json_string_value(v) : "?");
    }
    const char *error = json_string_value(json_object_get(report, "replay_error"));
    if (error) {
        fputs(i ? ", " : "", stdout);
        fputs("not decided: ", stdout);
        cli_print_escaped(stdout, error);
    }
    fputs("): ", stdout);
    json_array_foreach(json_object_get(report, "reasons"), i, v)
    {
        fputs(i ? ", " : "", stdout);
        const char *reason = json_string_value(json_object_get(v, "reason"));
        cli_print_escaped(stdout, reason ? reason : "?");
        json_t *was = json_object_get(v, "logged"), *now = json_object_get(v, "now");
        json_t *events = json_object_get(v, "events");
        json_t *dated = json_object_get(v, "dated_since");
        if (json_is_string(was) || json_is_string(now)) {
            fputs(" (", stdout);
            cli_print_escaped(stdout, json_is_string(was) ? json_string_value(was) : "none");
            fputs(" -> ", stdout);
            cli_print_escaped(stdout, json_is_string(now) ? json_string_value(now) : "none");
            fputc(')', stdout);
        } else if (json_is_integer(events)) {
            printf(" (%" JSON_INTEGER_FORMAT " recorded)", json_integer_value(events));
        } else if (json_is_integer(dated)) {
            printf(" (%" JSON_INTEGER_FORMAT " dated at or after as_of)",
                   json_integer_value(dated));
        }
    }
    fputc('\n', stdout);
}

static void count_report(replay_run *rr, json_t *report)
{
    rr->decisions++;
    if (json_is_true(json_object_get(report, "identical"))) {
        rr->identical++;
        return;
    }
    rr->different++;
    json_t *v;
    size_t i;
    json_array_foreach(json_object_get(report, "reasons"), i, v)
    {
        const char *reason = json_string_value(json_object_get(v, "reason"));
        for (size_t k = 0; reason && k < N_REASONS; k++)
            if (strcmp(reason, REASONS[k]) == 0)
                rr->reasons[k]++;
    }
}

/* One line; CLI_OK also for a line that is not an audit line (reported and
 * counted), CLI_FAIL when the replay itself failed. */
static int replay_line(replay_run *rr, nbx_ctx *ctx, const char *path, uint64_t number,
                       const char *line, size_t len)
{
    if (no_decision(line, len)) {
        rr->skipped++;
        return CLI_OK;
    }
    char *text = NULL;
    size_t text_len = 0;
    int rc = nbx_audit_replay(ctx, line, len, &text, &text_len);
    if (rc == NBX_EPARSE || rc == NBX_ELIMIT) {
        rr->unreadable++;
        fprintf(stderr, "nbx audit replay: %s:%" PRIu64 ": ", path, number);
        cli_print_escaped(stderr, nbx_ctx_errmsg(ctx));
        fputs("; line skipped\n", stderr);
        return CLI_OK;
    }
    if (rc != NBX_OK)
        return cli_error(rr->args->cmd, "%s:%" PRIu64 ": %s", path, number, nbx_ctx_errmsg(ctx));
    json_t *report = json_loadb(text, text_len, 0, NULL);
    if (!report) {
        nbx_free(text);
        return cli_error(rr->args->cmd, "%s:%" PRIu64 ": unreadable report", path, number);
    }
    count_report(rr, report);
    if (rr->json) {
        fwrite(text, 1, text_len, stdout);
        fputc('\n', stdout);
    } else {
        print_text_report(report);
    }
    json_decref(report);
    nbx_free(text);
    return CLI_OK;
}

static void print_summary(const replay_run *rr, const char *path)
{
    if (rr->json) {
        printf("{\"summary\":{\"decisions\":%" PRIu64 ",\"identical\":%" PRIu64
               ",\"different\":%" PRIu64 ",\"skipped\":%" PRIu64 ",\"unreadable\":%" PRIu64
               ",\"reasons\":{",
               rr->decisions, rr->identical, rr->different, rr->skipped, rr->unreadable);
        for (size_t k = 0; k < N_REASONS; k++)
            printf("%s\"%s\":%" PRIu64, k ? "," : "", REASONS[k], rr->reasons[k]);
        printf("}}}\n");
        return;
    }
    fprintf(stderr,
            "nbx audit replay: %s: %" PRIu64 " decisions: %" PRIu64 " identical, %" PRIu64
            " different",
            path, rr->decisions, rr->identical, rr->different);
    bool any = false;
    for (size_t k = 0; k < N_REASONS; k++) {
        if (!rr->reasons[k])
            continue;
        fprintf(stderr, "%s%s %" PRIu64, any ? ", " : " (", REASONS[k], rr->reasons[k]);
        any = true;
    }
    fprintf(stderr, "%s; %" PRIu64 " lines without a decision, %" PRIu64 " unreadable\n",
            any ? ")" : "", rr->skipped, rr->unreadable);
}

static int replay_stream(replay_run *rr, nbx_ctx *ctx, FILE *in, const char *path)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    uint64_t number = 0;
    int rc = CLI_OK;
    errno = 0;
    while (rc == CLI_OK && (got = getline(&line, &cap, in)) >= 0) {
        number++;
        size_t len = (size_t)got;
        if (len && line[len - 1] == '\n')
            len--;
        rc = replay_line(rr, ctx, path, number, line, len);
    }
    if (rc == CLI_OK && ferror(in))
        rc = cli_error(rr->args->cmd, "reading %s: %s", path, strerror(errno));
    free(line);
    return rc;
}

int cli_run_audit_replay(cli_args *args)
{
    if (!cli_has(args, "catalog"))
        return cli_usage_error(args->cmd, "--catalog FILE is required");
    if (cli_serving_flags(args) != CLI_OK)
        return CLI_USAGE;
    const char *store_path = cli_store_path(args);
    if (!store_path)
        return CLI_USAGE;
    const char *path = args->positional[0];
    bool from_stdin = strcmp(path, "-") == 0;
    FILE *in = from_stdin ? stdin : fopen(path, "r");
    if (!in)
        return cli_error(args->cmd, "%s: %s", path, strerror(errno));

    replay_run rr;
    memset(&rr, 0, sizeof rr);
    rr.args = args;
    rr.json = cli_has(args, "json");
    nbx_engine_options opts;
    cli_engine_options(args, store_path, false, &opts);
    nbx_engine *engine = NULL;
    nbx_ctx *ctx = NULL;
    int rc = nbx_engine_open(&opts, &engine);
    if (rc == NBX_OK)
        rc = nbx_ctx_open(engine, &ctx);
    int exit_code;
    if (rc != NBX_OK)
        exit_code = cli_nbx_error(args->cmd, rc, nbx_last_errmsg());
    else
        exit_code = replay_stream(&rr, ctx, in, from_stdin ? "stdin" : path);
    if (exit_code == CLI_OK) {
        print_summary(&rr, from_stdin ? "stdin" : path);
        if (rr.unreadable)
            exit_code = CLI_FAIL;
        else if (rr.different && !cli_has(args, "allow-different"))
            exit_code = CLI_DIFFERENT;
    }
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    if (!from_stdin)
        fclose(in);
    return exit_code;
}
