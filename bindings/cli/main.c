/*
 * main.c: the command table, dispatch, help and version, and the helpers
 * every command shares (store path, opening the store, reading stdin).
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ========================================================================
 * Flag tables
 * ======================================================================== */

/* clang-format off: it would spread these initialisers over four lines each */
#define FLAG_JSON                                                                                  \
    {                                                                                              \
        "json", CLI_BOOL, NULL, "print JSON instead of text", 0, 0                                 \
    }
#define FLAG_OUT                                                                                   \
    {                                                                                              \
        "out", CLI_STRING, "FILE", "write to FILE instead of standard output", 0, 0                \
    }
#define FLAG_SEED                                                                                  \
    {                                                                                              \
        "seed", CLI_UINT, "S", "random seed (default 1); same seed, same output", 0, 0             \
    }
#define FLAG_OFFERS                                                                                \
    {                                                                                              \
        "offers", CLI_UINT, "M", "offers in the catalog, ids o001.. (default 50)", 1, 100000       \
    }
/* clang-format on */

static const cli_flag import_flags[] = {
    CLI_FLAG_STORE,
    {"skip-invalid", CLI_STRING, "REJECTS.jsonl",
     "apply the good lines, copy each bad one with its reason to REJECTS.jsonl", 0, 0},
    {"batch-size", CLI_UINT, "N",
     "records per write transaction (default 10000 profiles, 100000 events)", 1, 10000000},
    CLI_FLAG_END,
};

static const cli_flag events_flags[] = {
    CLI_FLAG_STORE,
    {"skip-invalid", CLI_STRING, "REJECTS.jsonl",
     "apply the good lines, copy each bad one with its reason to REJECTS.jsonl", 0, 0},
    {"batch-size", CLI_UINT, "N",
     "records per write transaction (default 10000 profiles, 100000 events)", 1, 10000000},
    {"max-skew", CLI_UINT, "SECONDS",
     "how far after this machine's clock an event may be dated (default 300)", 1, 86400},
    {"catalog", CLI_STRING, "FILE", "refuse events naming an offer that is not in FILE", 0, 0},
    CLI_FLAG_END,
};

static const cli_flag rfm_flags[] = {
    CLI_FLAG_STORE,
    {"as-of", CLI_TIME, "TIME", "reference time for recency (default: now)", 0, 0},
    FLAG_JSON,
    CLI_FLAG_END,
};

static const cli_flag store_only_flags[] = {CLI_FLAG_STORE, CLI_FLAG_END};

static const cli_flag delete_flags[] = {
    CLI_FLAG_STORE,
    {"ids", CLI_STRING, "FILE", "erase the ids of FILE too, one per line ('-': standard input)", 0,
     0},
    CLI_FLAG_END,
};

static const cli_flag compact_flags[] = {
    CLI_FLAG_STORE,
    {"out", CLI_STRING, "DIR", "the new store: a new or empty directory (required)", 0, 0},
    CLI_FLAG_END,
};

static const cli_flag export_flags[] = {CLI_FLAG_STORE, FLAG_OUT, CLI_FLAG_END};

static const cli_flag stats_flags[] = {CLI_FLAG_STORE, FLAG_JSON, CLI_FLAG_END};

static const cli_flag report_experiment_flags[] = {
    CLI_FLAG_STORE,
    {"deployment", CLI_STRING, "FILE", "the deployment file (required; its policies are not read)",
     0, 0},
    {"from", CLI_TIME, "TIME", "start of the window (required)", 0, 0},
    {"to", CLI_TIME, "TIME", "end of the window, excluded (required)", 0, 0},
    {"format", CLI_STRING, "markdown|json", "what to write (default markdown)", 0, 0},
    {"out", CLI_STRING, "FILE",
     "write to FILE instead of standard output (Markdown: the chart goes to FILE.svg beside it)", 0,
     0},
    CLI_FLAG_END,
};

static const cli_flag decide_flags[] = {
    CLI_FLAG_STORE,
    CLI_FLAG_CATALOG,
    CLI_FLAG_POLICY,
    CLI_FLAG_DEPLOYMENT,
    {"customer", CLI_STRING, "ID", "customer id (required)", 0, 0},
    CLI_FLAG_PLACEMENT,
    {"session", CLI_LIST, "KEY=VALUE", "session field given to the policy", 0, 0},
    {"as-of", CLI_TIME, "TIME", "the decision's clock (default: now)", 0, 0},
    {"explain", CLI_BOOL, NULL, "list every candidate and why it was excluded", 0, 0},
    {"format", CLI_STRING, "json|text", "json (default), or text: the decision in words", 0, 0},
    CLI_FLAG_TIME_LIMIT,
    CLI_FLAG_MEMORY_LIMIT,
    {"record", CLI_BOOL, NULL, "record the chosen actions as impressions", 0, 0},
    CLI_FLAG_LOG,
    CLI_FLAG_END,
};

static const cli_flag check_flags[] = {FLAG_JSON, CLI_FLAG_END};

static const cli_flag gen_profiles_flags[] = {
    {"count", CLI_UINT, "N", "profiles to generate (required)", 0, 100000000},
    FLAG_SEED,
    FLAG_OFFERS,
    {"as-of", CLI_TIME, "TIME", "end of the purchase history (default 2026-03-01T00:00:00Z)", 0, 0},
    FLAG_OUT,
    CLI_FLAG_END,
};

static const cli_flag gen_events_flags[] = {
    {"customers", CLI_UINT, "N", "customers c0000001..cN the events are about (required)", 1,
     1000000000},
    {"count", CLI_UINT, "K", "events to generate (required)", 0, UINT64_C(10000000000)},
    FLAG_SEED,
    {"start", CLI_TIME, "TIME", "first event time (default 2026-01-01T00:00:00Z)", 0, 0},
    {"days", CLI_UINT, "D", "events spread over D days from --start (default 60)", 1, 36500},
    FLAG_OFFERS,
    FLAG_OUT,
    CLI_FLAG_END,
};

static const cli_flag gen_catalog_flags[] = {
    {"offers", CLI_UINT, "M", "offers and modules besides the fallback modules (required)", 1,
     100000},
    FLAG_SEED,
    {"start", CLI_TIME, "TIME", "validity windows are laid around TIME (default 2026-01-01)", 0, 0},
    FLAG_OUT,
    CLI_FLAG_END,
};

/* ========================================================================
 * Command table
 * ======================================================================== */

const cli_command cli_commands[] = {
    {"import", "profiles", "FILE.jsonl|-", 1, 1, import_flags,
     "Import profiles from a JSONL file (one profile object per line) into a store.",
     "The store is created if missing. The whole file is checked before anything is\n"
     "written: a bad line fails the import with FILE:LINE, the field and the problem,\n"
     "and leaves the store as it was, unless --skip-invalid is given. Records are then\n"
     "written in batched transactions: a crash keeps every committed batch and no half\n"
     "batch, and running the same file again is safe (profiles merge again).\n"
     "'-' reads standard input. Progress goes to standard error when it is a terminal;\n"
     "a one-line summary is always printed at the end.\n",
     cli_run_import_profiles},
    {"import", "events", "FILE.jsonl|-", 1, 1, events_flags,
     "Apply events from a JSONL file; the same as 'nbx ingest'.", NULL, cli_run_import_events},
    {"ingest", NULL, "FILE.jsonl|-", 1, 1, events_flags,
     "Apply purchase and exposure events from a JSONL file to a store.",
     "Each line is one event: event_id (required), customer, type (purchase,\n"
     "impression, click, accept, dismiss), ts (RFC 3339 or epoch seconds); purchases\n"
     "carry amount and optionally margin, exposures carry offer and optionally\n"
     "placement. An event id the customer has had before is skipped, so re-running\n"
     "an ingest changes nothing (the same id for another customer is another event).\n"
     "An event dated more than --max-skew seconds after this machine's clock is a\n"
     "bad line (FILE:LINE, field 'ts'); older events are fine. With --catalog, so is\n"
     "an exposure naming an offer that is not in the catalog (field 'offer').\n"
     "Events are applied customer by customer. Validation, batching, --skip-invalid\n"
     "and '-' behave as in 'nbx import profiles'.\n",
     cli_run_import_events},
    {"rfm", "rebuild", "", 0, 0, rfm_flags,
     "Recompute RFM quintiles, scores and segments for every profile.",
     "Prints the number of customers and of scored customers (those with a purchase),\n"
     "the quintile cut points of recency (days), frequency (orders) and monetary\n"
     "value (revenue), and how many customers fall in each segment.\n",
     cli_run_rfm_rebuild},
    {"profile", "get", "ID", 1, 1, store_only_flags, "Print one profile as JSON.",
     "An unknown id is an error (exit status 1).\n", cli_run_profile_get},
    {"profile", "delete", "ID...|-", 0, CLI_POSITIONALS_MAX, delete_flags,
     "Erase customers: profiles, exposure counters, event records; suppress their ids.",
     "Each id's profile and everything keyed by it are erased, a batch of ids per\n"
     "transaction, and the id is suppressed: later imports, events and decisions'\n"
     "impressions for it are refused (counted as suppressed) until 'nbx profile\n"
     "restore ID'. The store keeps only a keyed hash of each erased id. Ids come\n"
     "as arguments (up to 64), one per line from --ids FILE, or from standard\n"
     "input with '-'. Prints {\"id\":...,\"records\":N} per id: the records it lost\n"
     "(0: the store held nothing for it; it is suppressed all the same). Erased\n"
     "bytes stay in the store's file until 'nbx store compact' copies it.\n",
     cli_run_profile_delete},
    {"profile", "put", "JSON|-", 1, 1, store_only_flags,
     "Merge-upsert one profile given as a JSON object ('-': read it from standard input).",
     "Fields given replace the stored ones; fields not given stay as they are.\n"
     "The store is created if missing.\n",
     cli_run_profile_put},
    {"profile", "restore", "ID", 1, 1, store_only_flags,
     "Lift an erasure (renewed consent): data for ID is taken again.",
     "What was erased stays erased. An id that is not suppressed is an error.\n",
     cli_run_profile_restore},
    {"export", "profiles", "", 0, 0, export_flags, "Write every profile as JSONL, in id order.",
     "Importing the output into an empty store reproduces the same profiles.\n",
     cli_run_export_profiles},
    {"stats", NULL, "", 0, 0, stats_flags,
     "Print the store's counts and sizes, and the experiments' per-arm counters.",
     "The per-arm counters are those of every deployment served with this store:\n"
     "decisions, fallbacks, errors and expected margin as engines flushed them, and the\n"
     "impressions, accepts and purchases (realised margin) of events that carry a\n"
     "decision id of the arm, summed over every day counted. The accept rate is\n"
     "accepts / decisions. An engine flushes every second or 1,000 decisions and when\n"
     "it stops: a running one's last decisions may not be in yet.\n",
     cli_run_stats},
    {"report", "experiment", "", 0, 0, report_experiment_flags,
     "Report each arm's incremental contribution margin over the holdout.",
     "Intent-to-treat: every customer of the store counts in the arm the deployment\n"
     "file assigns it; its outcome is the margin of its purchase events dated in\n"
     "[--from, --to), 0 without any. Per arm and for the holdout: customers,\n"
     "decisions, impressions, accepts, accept rate (the arms' counters of the UTC days\n"
     "the window touches), margin per customer, and each arm's uplift over the\n"
     "holdout with a 95 % interval (Welch's t). Markdown with an SVG chart (inline on\n"
     "standard output; with --out FILE.md, in FILE.svg beside it), or JSON with\n"
     "--format json: arms -> NAME -> customers, margin_per_customer, uplift\n"
     "{estimate, low, high} and the rest.\n",
     cli_run_report_experiment},
    {"store", "compact", "", 0, 0, compact_flags,
     "Write a compacted copy of the store to --out DIR: its live records only.",
     "Every record is copied, in key order, into a new store: after 'nbx profile\n"
     "delete', the copy holds no byte of the erased customers, which the store's\n"
     "own file may still hold in freed pages (and LMDB's own compacting copy in\n"
     "branch pages). Runs beside readers and writers (the copy is one snapshot); to\n"
     "replace the store, stop the writers and swap the directories. DIR must be new\n"
     "or empty, and not the store.\n",
     cli_run_store_compact},
    {"store", "upgrade", "", 0, 0, store_only_flags,
     "Bring a store written by an older nbx to this version's format.",
     "An older store can be read as it is, but is written only once upgraded\n"
     "(docs/format.md says what each version changed). Stop writers of the older\n"
     "version first.\n",
     cli_run_store_upgrade},
    {"decide", NULL, "", 0, 0, decide_flags,
     "Decide the next best actions for one customer and print the result JSON.",
     "Opens the store read-only (read-write with --record), loads the catalog and\n"
     "the policy, and runs one decision. A policy failure yields the fallback\n"
     "decision, which is still a success (exit status 0); a missing or invalid\n"
     "catalog, policy or store is an error (exit status 1).\n"
     "With --deployment FILE instead of --policy, the customer's arm decides (the\n"
     "result says which: \"arm\"), the holdout gets the catalog's fallback actions,\n"
     "and shadow policies decide beside (\"shadow\"). See docs/experiments.md.\n"
     "--log FILE appends the decision's audit line to FILE (docs/experiments.md);\n"
     "a log that cannot be written is an error (exit status 1, no result printed).\n"
     "--format text writes the decision in words instead of JSON; with --explain,\n"
     "every candidate per placement, best first: P(accept) and where it came from,\n"
     "unit margin, serving cost, score, expected margin, and why it was not chosen\n"
     "or excluded; then the policy's nbx.log lines.\n",
     cli_run_decide},
    {"batch", NULL, "", 0, 0, cli_batch_flags,
     "Decide for many customers (a campaign): one result per customer, in input order.",
     cli_batch_details, cli_run_batch},
    {"audit", "replay", "LOGFILE", 1, 1, cli_audit_replay_flags,
     "Make logged decisions again and report, per decision, identical or different and why.",
     cli_audit_replay_details, cli_run_audit_replay},
    {"kill", NULL, "offer ID|arm [DEPLOYMENT.]ARM|policy VERSION", 0, 2, cli_kill_flags,
     "Kill an offer, an arm or a policy version (--reason); --list what is killed.",
     cli_kill_details, cli_run_kill},
    {"unkill", NULL, "offer ID|arm [DEPLOYMENT.]ARM|policy VERSION", 2, 2, cli_unkill_flags,
     "Lift a kill; the history keeps it.", NULL, cli_run_unkill},
    {"policy", "check", "FILE", 1, 1, cli_policy_check_flags,
     "Check that a policy file loads and, with --catalog, that it decides for every customer.",
     "Without --catalog: the file must compile, follow the sandbox's rules and run its top\n"
     "level; on failure the error names FILE:LINE and the reason.\n"
     "With --catalog the policy is also tried on customers, as nginx does before it accepts\n"
     "a configuration: synthetic ones built to cover the catalog (an anonymous visitor, an\n"
     "empty profile, every RFM segment, every consent granted and refused, propensities for\n"
     "every offer and none, ...) and, with --store, real ones: --sample N of them (the same\n"
     "N every run) or the ids of --customers FILE. Any decision that falls back fails the\n"
     "check (exit status 1), naming customers, FILE:LINE and the reason, with counts per\n"
     "reason.\n",
     cli_run_policy_check},
    {"policy", "test", "POLICY TESTFILE...", 2, CLI_POSITIONALS_MAX, cli_policy_test_flags,
     "Run a policy's test cases: each a customer, a session and what the decision must show.",
     "Each TESTFILE is Lua returning a list of cases, read as data (never run):\n"
     "  return {\n"
     "    { name = \"at-risk customers see the winback offer\",\n"
     "      customer = { consent = { personalization = true }, rfm = { segment = \"at_risk\" },\n"
     "                   exposures = { free_shipping = { impressions = 3 } } },\n"
     "      session = { channel = \"web\" }, placements = { \"hero\" },\n"
     "      as_of = \"2026-03-10T12:00:00Z\",\n"
     "      expect = { top = { hero = \"winback_20\" }, excluded = { free_shipping = \"frequency\" } } },\n"
     "  }\n"
     "customer holds profile fields as in the profile JSON (id, attrs, consent, propensity,\n"
     "ltv, churn, rfm) and exposures (offer = {impressions, clicks, accepts, dismisses,\n"
     "last_impression, ...}); without customer the case is an anonymous visitor. expect\n"
     "takes any of: top = {PLACEMENT = OFFER or false}, shown = {OFFER...}, not_shown =\n"
     "{OFFER...}, excluded = {OFFER = REASON or false} (REASON: guardrail, frequency, ...,\n"
     "or \"ineligible: the policy's reason\"), fallback = true/false, score_between =\n"
     "{OFFER = {LOW, HIGH}}. A decision that falls back fails its case unless it expects\n"
     "fallback = true. Each case prints one line, ok or not ok with what differed, then\n"
     "the policy's nbx.log lines of failed cases; a summary follows. Exit status 1 when a\n"
     "case failed or a test file could not be read (the error names FILE:LINE).\n",
     cli_run_policy_test},
    {"policy", "diff", "OLD NEW", 2, 2, cli_policy_diff_flags,
     "What a policy change does: both policies decide the same customers; a report compares.",
     "Every customer of the sample (--sample N stored ones, the same N every run; or the\n"
     "ids or JSON lines of --customers FILE) is decided by OLD and by NEW on the same\n"
     "store, at the same clock (--as-of, else now, read once), for the same placements and\n"
     "session; nothing is recorded. The report (Markdown for a reader, or --format json)\n"
     "gives the policies' names and versions, the sample and clock, headline numbers, the\n"
     "share of customers whose top action changes per placement, the total expected margin\n"
     "old vs new with a 95 % interval of the difference, a table per RFM segment and per\n"
     "offer (biggest movers first), exclusions by reason, fallbacks and errors with\n"
     "FILE:LINE and counts, decision time p50/p99, and the five customers whose expected\n"
     "margin changed most, each explained in words. With --out FILE.md, two SVG charts\n"
     "(FILE.offers.svg, FILE.segments.svg) are written beside it and linked.\n"
     "Exit status 3 when NEW falls back or fails for any customer, or crosses a limit\n"
     "(--max-margin-drop PCT, --max-changed PCT), after writing the report; 1 when the\n"
     "diff could not be made (a policy that does not load names FILE:LINE; the store\n"
     "written while the diff ran).\n",
     cli_run_policy_diff},
    {"catalog", "check", "FILE", 1, 1, check_flags,
     "Check that a catalog file loads; print its version, offers and placements.",
     "On failure the error names the offer and the field.\n", cli_run_catalog_check},
    {"gen", "profiles", "", 0, 0, gen_profiles_flags,
     "Generate synthetic profiles as JSONL (deterministic for a seed).",
     "Ids c0000001..; attributes, consent, 20 propensities (offer ids o001.. and\n"
     "categories), ltv, churn and purchase aggregates with realistic skew: many\n"
     "one-time buyers, heavy-tailed spend, a mix of recent and lapsed customers.\n",
     cli_run_gen_profiles},
    {"gen", "events", "", 0, 0, gen_events_flags,
     "Generate synthetic purchase and exposure events as JSONL (deterministic for a seed).",
     "Events are in time order within [--start, --start + --days), with unique\n"
     "event ids that include the seed. A few customers produce many events.\n",
     cli_run_gen_events},
    {"gen", "catalog", "", 0, 0, gen_catalog_flags,
     "Generate a synthetic catalog JSON (deterministic for a seed).",
     "Placements hero (1 slot), recs (3) and sidebar (2); offers o001..oM, some of them\n"
     "modules, some breaking the guardrails on purpose; fallback modules brand_banner\n"
     "(hero) and bestsellers (recs).\n",
     cli_run_gen_catalog},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL, NULL},
};

/* ========================================================================
 * Shared helpers
 * ======================================================================== */

const char *cli_store_path(cli_args *args)
{
    const char *path = cli_string(args, "store", NULL);
    if (!path) {
        path = getenv("NBX_STORE");
        if (path && !*path)
            path = NULL;
    }
    if (!path)
        cli_usage_error(args->cmd, "no store given: pass --store DIR or set NBX_STORE");
    return path;
}

nbx_store *cli_open_store(cli_args *args, unsigned flags, int *exit_code)
{
    const char *path = cli_store_path(args);
    if (!path) {
        *exit_code = CLI_USAGE;
        return NULL;
    }
    nbx_store *store = NULL;
    int rc = nbx_store_open(path, flags, &store);
    if (rc != NBX_OK) {
        const char *detail = nbx_last_errmsg();
        if (rc == NBX_ENOTFOUND && !*detail)
            cli_error(args->cmd, "no store at %s", path);
        else
            cli_nbx_error(args->cmd, rc, detail);
        *exit_code = CLI_FAIL;
        return NULL;
    }
    *exit_code = CLI_OK;
    return store;
}

int cli_decide_flags(cli_args *args, nbx_kv *session, size_t *n_session)
{
    const cli_value *pl = cli_flag_value(args, "placement");
    if (pl->n_list > NBX_REQUEST_PLACEMENTS_MAX)
        return cli_usage_error(args->cmd, "--placement given %zu times; at most %d", pl->n_list,
                               NBX_REQUEST_PLACEMENTS_MAX);
    const cli_value *v = cli_flag_value(args, "session");
    *n_session = 0;
    if (v->n_list > NBX_REQUEST_SESSION_MAX)
        return cli_usage_error(args->cmd, "--session given %zu times; at most %d fields", v->n_list,
                               NBX_REQUEST_SESSION_MAX);
    for (size_t i = 0; i < v->n_list; i++) {
        char *text = (char *)v->list[i];
        char *eq = strchr(text, '=');
        if (!eq || eq == text)
            return cli_usage_error(args->cmd, "--session: '%s' is not KEY=VALUE", text);
        *eq = '\0';
        session[i].key = text;
        session[i].value = eq + 1;
        (*n_session)++;
    }
    return CLI_OK;
}

int cli_serving_flags(cli_args *args)
{
    bool policy = cli_has(args, "policy"), deployment = cli_has(args, "deployment");
    if (policy && deployment)
        return cli_usage_error(args->cmd, "give --policy FILE or --deployment FILE, not both (a "
                                          "deployment names its policies)");
    if (!policy && !deployment)
        return cli_usage_error(args->cmd, "--policy FILE or --deployment FILE is required");
    return CLI_OK;
}

void cli_engine_options(cli_args *args, const char *store, bool write, nbx_engine_options *opts)
{
    nbx_engine_options_init(opts);
    opts->store = store;
    opts->catalog = cli_string(args, "catalog", NULL);
    opts->policy = cli_string(args, "policy", NULL);
    opts->deployment = cli_string(args, "deployment", NULL);
    opts->time_limit_us = (uint32_t)cli_uint(args, "time-limit-us", 0);
    opts->memory_limit = (size_t)cli_uint(args, "memory-limit", 0);
    /* a deployment's engine writes its arms' counters, where the canary
     * abort rules are judged (docs/experiments.md, "Canary abort") */
    opts->flags = write || opts->deployment ? 0 : NBX_ENGINE_READONLY;
}

double cli_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int cli_read_stream(FILE *in, size_t max, char **out, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
    for (;;) {
        if (cap - n < 2) {
            if (cap > max + 1) {
                free(buf);
                errno = EFBIG;
                return -1;
            }
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                return -1;
            }
            buf = grown;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, in);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(in) || n > max) {
        int saved = ferror(in) ? EIO : EFBIG;
        free(buf);
        errno = saved;
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

size_t cli_utf8_len(const unsigned char *p, size_t avail)
{
    unsigned c = p[0];
    size_t n;
    unsigned min, cp;
    if (avail == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, min = 0x80, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, min = 0x800, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* The sequence at p of a NUL-terminated string (the NUL bounds it). */
static size_t utf8_sequence(const unsigned char *p)
{
    return cli_utf8_len(p, strnlen((const char *)p, 4));
}

size_t cli_text_unit(const unsigned char *p, bool *plain)
{
    size_t n = *p < 0x80 ? 1 : utf8_sequence(p);
    /* C0 controls, DEL and C1 controls (U+0080..U+009F: C2 80..C2 9F)
     * steer terminals; bytes that are not UTF-8 may start one. */
    bool control = n == 1 ? (*p < 0x20 || *p == 0x7F) : n == 2 && p[0] == 0xC2 && p[1] < 0xA0;
    *plain = n != 0 && !control;
    return n ? n : 1;
}

int cli_check_failed(cli_args *args, int rc, const char *path)
{
    const char *msg = nbx_last_errmsg();
    if (!msg || !*msg)
        msg = nbx_strerror(rc);
    if (strstr(msg, path))
        return cli_error(args->cmd, "%s", msg);
    return cli_error(args->cmd, "%s: %s", path, msg);
}

void cli_print_json_string(FILE *out, const char *s)
{
    putc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        if (*p == '"' || *p == '\\') {
            putc('\\', out);
            putc(*p++, out);
        } else if (*p < 0x20 || *p == 0x7F) {
            fprintf(out, "\\u%04x", *p++);
        } else if (*p < 0x80) {
            putc(*p++, out);
        } else {
            size_t n = utf8_sequence(p);
            if (n) {
                fwrite(p, 1, n, out);
                p += n;
            } else {
                fputs("\\ufffd", out);
                p++;
            }
        }
    }
    putc('"', out);
}

void cli_print_escaped(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        bool plain;
        size_t n = cli_text_unit(p, &plain);
        if (plain)
            fwrite(p, 1, n, out);
        else
            for (size_t i = 0; i < n; i++)
                fprintf(out, "\\x%02x", p[i]);
        p += n;
    }
}

void cli_print_xml(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        bool plain;
        size_t n = cli_text_unit(p, &plain);
        /* XML 1.0 has no escape for most controls: they are written as
         * text, as the terminal sees them */
        if (!plain) {
            for (size_t i = 0; i < n; i++)
                fprintf(out, "\\x%02x", p[i]);
        } else if (*p == '&') {
            fputs("&amp;", out);
        } else if (*p == '<') {
            fputs("&lt;", out);
        } else if (*p == '>') {
            fputs("&gt;", out);
        } else if (*p == '"') {
            fputs("&quot;", out);
        } else if (*p == '\'') {
            fputs("&apos;", out);
        } else {
            fwrite(p, 1, n, out);
        }
        p += n;
    }
}

/* ========================================================================
 * Help and dispatch
 * ======================================================================== */

static void print_overview(FILE *out)
{
    fprintf(out, "usage: nbx COMMAND [ARGS] [--store DIR] [FLAGS]\n\n"
                 "nbx decides the next best actions for a customer from profiles in an LMDB\n"
                 "store, a catalog and a Lua policy.\n\nCommands:\n");
    for (const cli_command *c = cli_commands; c->group; c++) {
        char name[64];
        cli_command_name(c, name, sizeof name);
        fprintf(out, "  %-22s %s\n", name + 4, c->summary);
    }
    fprintf(out, "\n  %-22s %s\n  %-22s %s\n\n", "help [COMMAND]", "describe a command",
            "--version", "print the version");
    fprintf(out, "Store commands take --store DIR (default: $NBX_STORE). Flags may come before\n"
                 "or after arguments, even before the command ('nbx --store DIR stats'), as\n"
                 "'--flag value' or '--flag=value'.\n"
                 "Exit status: 0 success, 1 failure, 2 usage error.\n");
}

static const cli_command *find_command(const char *group, const char *sub)
{
    for (const cli_command *c = cli_commands; c->group; c++) {
        if (strcmp(c->group, group) != 0)
            continue;
        if (!c->sub || (sub && strcmp(c->sub, sub) == 0))
            return c;
    }
    return NULL;
}

static bool group_has_subcommands(const char *group)
{
    for (const cli_command *c = cli_commands; c->group; c++)
        if (strcmp(c->group, group) == 0)
            return c->sub != NULL;
    return false;
}

static bool group_exists(const char *group)
{
    for (const cli_command *c = cli_commands; c->group; c++)
        if (strcmp(c->group, group) == 0)
            return true;
    return false;
}

/* One line per subcommand, its words and arguments, then its summary; the
 * flags are in each subcommand's own help. */
static void print_group_help(FILE *out, const char *group)
{
    fprintf(out, "usage: nbx %s SUBCOMMAND [ARGS] [FLAGS]\n\nSubcommands:\n", group);
    for (const cli_command *c = cli_commands; c->group; c++) {
        if (strcmp(c->group, group) != 0)
            continue;
        fprintf(out, "  %s%s%s\n      %s\n", c->sub, *c->positional ? " " : "", c->positional,
                c->summary);
    }
    fprintf(out, "\nRun 'nbx %s SUBCOMMAND --help' for details.\n", group);
}

static void list_subcommands(char *buf, size_t size, const char *group)
{
    size_t n = 0;
    buf[0] = '\0';
    for (const cli_command *c = cli_commands; c->group && n < size; c++) {
        if (strcmp(c->group, group) == 0)
            n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? ", " : "", c->sub);
    }
}

/* Does a command of the group (any command: group NULL) take this flag
 * with a value? Used to skip a flag's value while looking for the command
 * or subcommand word; flags before the command word are looked up in every
 * table, as the command is not known yet, and then checked by it like any
 * other. */
static bool flag_takes_value(const char *group, const char *arg)
{
    const char *name = arg + 2;
    if (strchr(name, '='))
        return false;
    for (const cli_command *c = cli_commands; c->group; c++) {
        if (group && strcmp(c->group, group) != 0)
            continue;
        for (const cli_flag *f = c->flags; f->name; f++)
            if (strcmp(f->name, name) == 0 && f->kind != CLI_BOOL)
                return true;
    }
    return false;
}

static int help_command(int argc, char **argv)
{
    if (argc == 0) {
        print_overview(stdout);
        return CLI_OK;
    }
    if (!group_exists(argv[0])) {
        fprintf(stderr, "nbx help: unknown command '%s'; run 'nbx help' for the list\n", argv[0]);
        return CLI_USAGE;
    }
    if (!group_has_subcommands(argv[0])) {
        cli_print_help(stdout, find_command(argv[0], NULL));
        return CLI_OK;
    }
    if (argc == 1) {
        print_group_help(stdout, argv[0]);
        return CLI_OK;
    }
    const cli_command *c = find_command(argv[0], argv[1]);
    if (!c) {
        char subs[256];
        list_subcommands(subs, sizeof subs, argv[0]);
        fprintf(stderr, "nbx help: unknown subcommand '%s %s'; one of: %s\n", argv[0], argv[1],
                subs);
        return CLI_USAGE;
    }
    cli_print_help(stdout, c);
    return CLI_OK;
}

static int run_command(const cli_command *cmd, int argc, char **argv)
{
    cli_args args;
    int rc = cli_parse(cmd, argc, argv, &args);
    if (rc == -1)
        rc = CLI_OK; /* --help */
    else if (rc == CLI_OK)
        rc = cmd->run(&args);
    cli_args_free(&args);
    if (fflush(stdout) != 0 && rc == CLI_OK) {
        char name[64];
        cli_command_name(cmd, name, sizeof name);
        fprintf(stderr, "%s: writing standard output: %s\n", name, strerror(errno));
        rc = CLI_FAIL;
    }
    return rc;
}

/* Commands with subcommands: the subcommand is the first word that is
 * neither a flag nor a flag's value, so flags may precede it. */
static int dispatch_group(const char *group, int argc, char **argv)
{
    int sub_at = -1;
    bool help = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            help = true;
            continue;
        }
        if (strncmp(argv[i], "--", 2) == 0) {
            if (flag_takes_value(group, argv[i]))
                i++;
            continue;
        }
        sub_at = i;
        break;
    }
    char subs[256];
    list_subcommands(subs, sizeof subs, group);
    if (sub_at < 0) {
        if (help) {
            print_group_help(stdout, group);
            return CLI_OK;
        }
        fprintf(stderr, "nbx %s: missing subcommand: one of %s\n", group, subs);
        fprintf(stderr, "Run 'nbx help %s' for details.\n", group);
        return CLI_USAGE;
    }
    const cli_command *cmd = find_command(group, argv[sub_at]);
    if (!cmd) {
        fprintf(stderr, "nbx %s: unknown subcommand '%s': one of %s\n", group, argv[sub_at], subs);
        fprintf(stderr, "Run 'nbx help %s' for details.\n", group);
        return CLI_USAGE;
    }
    /* Remove the subcommand word; the rest are the command's arguments. */
    for (int i = sub_at; i + 1 < argc; i++)
        argv[i] = argv[i + 1];
    return run_command(cmd, argc - 1, argv);
}

static bool is_help_or_version(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0 || strcmp(arg, "--version") == 0;
}

/* "nbx --store S import profiles -": flags before the command word are moved
 * after it (ahead of the command's own arguments, so a flag repeated later
 * still wins). Returns the index of the command word (1 once moved), of a
 * --help or --version that came first, or argc if there is none. */
static int hoist_leading_flags(int argc, char **argv)
{
    int word = 1;
    while (word < argc && strncmp(argv[word], "--", 2) == 0 && argv[word][2] &&
           !is_help_or_version(argv[word]))
        word += flag_takes_value(NULL, argv[word]) && word + 1 < argc ? 2 : 1;
    if (word == 1 || word >= argc || is_help_or_version(argv[word]))
        return word;
    char *command = argv[word];
    memmove(argv + 2, argv + 1, (size_t)(word - 1) * sizeof *argv);
    argv[1] = command;
    return 1;
}

static void print_version(void)
{
    int num = 0;
    const char *lib = nbx_version(&num);
    printf("nbx %s (libnbx %s)\n", NBX_VERSION_STRING, lib);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_overview(stderr);
        return CLI_USAGE;
    }
    int at = hoist_leading_flags(argc, argv);
    if (at >= argc) {
        fprintf(stderr, "nbx: missing command after the flags; run 'nbx help' for the list\n");
        return CLI_USAGE;
    }
    const char *word = argv[at];
    if (strcmp(word, "--version") == 0 || strcmp(word, "version") == 0) {
        print_version();
        return CLI_OK;
    }
    if (strcmp(word, "help") == 0 || strcmp(word, "--help") == 0 || strcmp(word, "-h") == 0)
        return help_command(argc - at - 1, argv + at + 1);
    if (!group_exists(word)) {
        fprintf(stderr, "nbx: unknown command '%s'; run 'nbx help' for the list\n", word);
        return CLI_USAGE;
    }
    if (group_has_subcommands(word))
        return dispatch_group(word, argc - 2, argv + 2);
    return run_command(find_command(word, NULL), argc - 2, argv + 2);
}
