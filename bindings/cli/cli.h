/*
 * cli.h: the private header of the nbx command-line tool.
 *
 * The CLI is a thin layer over include/nbx.h and never includes core/
 * internals. Commands are described by tables (cli_command, cli_flag); one
 * parser reads every command's flags, so "--flag value", "--flag=value",
 * flags before or after positional arguments, --help and the usage errors
 * behave the same everywhere.
 *
 * Exit codes: CLI_OK (0) success, CLI_FAIL (1) runtime failure, CLI_USAGE (2)
 * usage error, CLI_FALLBACKS (3) every decision made but some fell back to the
 * fallback decision (nbx batch, beyond --max-fallback-rate), CLI_DIFFERENT (4)
 * every logged decision replayed but some came out differently (nbx audit
 * replay, without --allow-different).
 */
#ifndef NBX_CLI_H
#define NBX_CLI_H

#include "nbx.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2
#define CLI_FALLBACKS 3
#define CLI_DIFFERENT 4

#define CLI_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ========================================================================
 * Command and flag tables (args.c)
 * ======================================================================== */

typedef enum cli_kind {
    CLI_BOOL = 1, /* --flag; "--flag=..." is refused */
    CLI_STRING,   /* --flag VALUE */
    CLI_LIST,     /* --flag VALUE, repeatable */
    CLI_UINT,     /* unsigned integer within [min, max] */
    CLI_BYTES,    /* unsigned integer with an optional K, M or G suffix (binary) */
    CLI_TIME,     /* RFC 3339 or epoch seconds, parsed by nbx_time_parse() */
    CLI_ALIAS     /* another spelling of the flag named by metavar, kept so that
                     scripts written for it still run; not in the usage line */
} cli_kind;

typedef struct cli_flag {
    const char *name; /* without the leading "--" */
    cli_kind kind;
    const char *metavar; /* "DIR", "N"; NULL for CLI_BOOL */
    const char *help;
    uint64_t min, max; /* CLI_UINT and CLI_BYTES; max 0 means UINT64_MAX */
} cli_flag;

#define CLI_FLAGS_MAX 32
#define CLI_POSITIONALS_MAX 64

typedef struct cli_value {
    bool set;
    const char *text;  /* last value given, as typed */
    uint64_t number;   /* CLI_UINT, CLI_BYTES */
    int64_t time_ms;   /* CLI_TIME */
    const char **list; /* CLI_LIST: every value, in order */
    size_t n_list;
} cli_value;

struct cli_command;

typedef struct cli_args {
    const struct cli_command *cmd;
    cli_value values[CLI_FLAGS_MAX]; /* parallel to cmd->flags */
    const char *positional[CLI_POSITIONALS_MAX];
    size_t n_positional;
} cli_args;

typedef struct cli_command {
    const char *group;      /* "import", "stats" */
    const char *sub;        /* "profiles", or NULL for a command without one */
    const char *positional; /* synopsis of positional arguments, "" if none */
    unsigned min_positional, max_positional;
    const cli_flag *flags; /* terminated by an entry with name NULL */
    const char *summary;   /* one line */
    const char *details;   /* paragraphs for "nbx help COMMAND", may be NULL */
    int (*run)(cli_args *args);
} cli_command;

/* Every command, in help order, terminated by an entry with group NULL. */
extern const cli_command cli_commands[];

/* Flags shared by the tables. */
/* clang-format off */
#define CLI_FLAG_STORE                                                                             \
    {"store", CLI_STRING, "DIR", "store directory (default: $NBX_STORE)", 0, 0}
#define CLI_FLAG_END {NULL, 0, NULL, NULL, 0, 0}
/* Flags of the commands that decide (decide, batch); cli_decide_flags() and
 * cli_engine_options() read them. */
#define CLI_FLAG_CATALOG {"catalog", CLI_STRING, "FILE", "catalog JSON file (required)", 0, 0}
#define CLI_FLAG_POLICY                                                                            \
    {"policy", CLI_STRING, "FILE", "policy Lua file (this or --deployment is required)", 0, 0}
#define CLI_FLAG_DEPLOYMENT                                                                        \
    {"deployment", CLI_STRING, "FILE",                                                             \
     "deployment JSON file instead of --policy: arms, holdout, shadow policies", 0, 0}
#define CLI_FLAG_PLACEMENT {"placement", CLI_LIST, "P", "placement to fill (default: all)", 0, 0}
#define CLI_FLAG_TIME_LIMIT                                                                        \
    {"time-limit-us", CLI_UINT, "N", "policy CPU time per decision in microseconds", 1, 60000000}
#define CLI_FLAG_MEMORY_LIMIT                                                                      \
    {"memory-limit", CLI_BYTES, "BYTES", "policy Lua state size (K, M, G suffixes allowed)",       \
     65536, UINT64_C(1) << 40}
/* clang-format on */

/* Parse argv (everything after the command words) for cmd into out.
 * Returns CLI_OK, CLI_USAGE (message printed), or -1 when --help was given
 * and the help was printed. */
int cli_parse(const cli_command *cmd, int argc, char **argv, cli_args *out);
void cli_args_free(cli_args *args);

/* Flag values by name; the name must exist in the command's table. */
const cli_value *cli_flag_value(const cli_args *args, const char *name);
bool cli_has(const cli_args *args, const char *name);
const char *cli_string(const cli_args *args, const char *name, const char *fallback);
uint64_t cli_uint(const cli_args *args, const char *name, uint64_t fallback);
int64_t cli_time(const cli_args *args, const char *name, int64_t fallback);

/* "nbx import profiles" */
void cli_command_name(const cli_command *cmd, char *buf, size_t size);
void cli_print_usage(FILE *out, const cli_command *cmd);
void cli_print_help(FILE *out, const cli_command *cmd);
/* Print "nbx CMD: message", the usage line and a hint; returns CLI_USAGE. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);
/* Print "nbx CMD: message" on stderr; returns CLI_FAIL. */
int cli_error(const cli_command *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);
/* Report a failed nbx call: the detail message if there is one, else the
 * code's text. Returns CLI_FAIL. */
int cli_nbx_error(const cli_command *cmd, int rc, const char *detail);

/* ========================================================================
 * Shared helpers (main.c)
 * ======================================================================== */

/* --store, else $NBX_STORE; NULL after printing a usage error. */
const char *cli_store_path(cli_args *args);
/* Open the store named by --store/$NBX_STORE. On failure prints the error,
 * sets *exit_code and returns NULL. */
nbx_store *cli_open_store(cli_args *args, unsigned flags, int *exit_code);
/* The flags decide and batch share, checked: --placement at most
 * NBX_REQUEST_PLACEMENTS_MAX times, and each --session KEY=VALUE split in
 * place into session (room for NBX_REQUEST_SESSION_MAX). Returns CLI_OK or
 * CLI_USAGE (message printed). */
int cli_decide_flags(cli_args *args, nbx_kv *session, size_t *n_session);
/* What serves: exactly one of --policy FILE and --deployment FILE.
 * Returns CLI_OK or CLI_USAGE (message printed). */
int cli_serving_flags(cli_args *args);
/* Engine options from --catalog, --policy or --deployment, --time-limit-us,
 * --memory-limit and the store path; read-only unless write. */
void cli_engine_options(cli_args *args, const char *store, bool write, nbx_engine_options *opts);
/* Monotonic seconds, for elapsed times and rates. */
double cli_now_seconds(void);
/* Read a whole stream (up to max bytes) into a malloc'd NUL-terminated buffer.
 * Returns 0, or -1 with errno set (EFBIG when longer than max). */
int cli_read_stream(FILE *in, size_t max, char **out, size_t *len);
/* Write s as a JSON string, quotes included: control characters escaped,
 * bytes that are not UTF-8 written as U+FFFD (paths and policy names are
 * arbitrary bytes; the output must still parse). */
void cli_print_json_string(FILE *out, const char *s);
/* Write s for a terminal or a log: C0 and C1 controls, DEL and bytes that
 * are not UTF-8 as \xNN (text from policies and inputs must not steer the
 * terminal). */
void cli_print_escaped(FILE *out, const char *s);
/* Length of the UTF-8 sequence at p (1..4; ASCII is 1) within avail
 * bytes, 0 if it is not one (overlong, surrogate, past U+10FFFF, cut). */
size_t cli_utf8_len(const unsigned char *p, size_t avail);
/* One unit of a NUL-terminated text at p: its length (at least 1) and
 * whether it may be written as it is (*plain), or must be escaped byte by
 * byte: a control character (C0, DEL, C1) or a byte that is not UTF-8. The
 * walk every escaper shares (terminal, XML, SVG, Markdown). */
size_t cli_text_unit(const unsigned char *p, bool *plain);
/* Write s as XML text or attribute value (JUnit, SVG): & < > " ' as
 * entities, controls and bytes that are not UTF-8 as the text \xNN. */
void cli_print_xml(FILE *out, const char *s);
/* A check that failed: the library's message, naming path if it does not. */
int cli_check_failed(cli_args *args, int rc, const char *path);

/* Where --out goes (store.c). A regular file (or a new one) is written to a
 * temporary file beside it and renamed into place on success, so a failed
 * command leaves the old file as it was and only ever removes what it
 * created. Any other kind of file (a device, a FIFO, a dangling link) is
 * written directly and never removed: it is not nbx's to delete. A file of
 * the store (--store) is refused. Set path (and out = stdout for no path). */
typedef struct cli_out {
    const char *path; /* as given */
    char *final;      /* the file the temporary one replaces; NULL: direct */
    char *temp;       /* NULL: direct */
    FILE *out;
} cli_out;
/* Open t->out for t->path; CLI_OK or the exit code (message printed). */
int cli_out_open(cli_args *args, cli_out *t);
/* Close it; on success move the temporary file into place, on failure
 * remove it (and nothing else). Returns exit_code, or CLI_FAIL. */
int cli_out_close(cli_args *args, cli_out *t, int exit_code);

/* ========================================================================
 * Command entry points
 * ======================================================================== */

/* store.c */
int cli_run_import_profiles(cli_args *args);
int cli_run_import_events(cli_args *args);
int cli_run_rfm_rebuild(cli_args *args);
int cli_run_profile_get(cli_args *args);
int cli_run_profile_delete(cli_args *args);
int cli_run_profile_restore(cli_args *args);
int cli_run_store_compact(cli_args *args);
int cli_run_store_upgrade(cli_args *args);
int cli_run_profile_put(cli_args *args);
int cli_run_export_profiles(cli_args *args);
int cli_run_stats(cli_args *args);

/* decide.c */
int cli_run_decide(cli_args *args);
extern const cli_flag cli_policy_check_flags[];
int cli_run_policy_check(cli_args *args);
int cli_run_catalog_check(cli_args *args);

/* policy_test.c */
extern const cli_flag cli_policy_test_flags[];
int cli_run_policy_test(cli_args *args);

/* policy_diff.c */
extern const cli_flag cli_policy_diff_flags[];
int cli_run_policy_diff(cli_args *args);

/* sample.c: the customers a command tries. */
typedef struct cli_customer {
    uint32_t key;  /* the sample's hash */
    uint64_t line; /* of --customers FILE; 0 for the store's */
    char *id;      /* an id, or a line of the file as it is (a JSON object) */
} cli_customer;
/* The `want` stored ids with the smallest xxh64, in id order. */
int cli_sample_store(cli_args *args, nbx_store *store, size_t want, cli_customer **out,
                     size_t *n_out);
/* The non-blank lines of a file (CR and LF cut). */
int cli_customer_file(cli_args *args, const char *path, cli_customer **out, size_t *n_out);
void cli_customers_free(cli_customer *c, size_t n);

/* explain_text.c: a result JSON (explained or not) in words for a reader,
 * every string escaped for the terminal; -1 if json is not a result. */
int cli_explain_text(FILE *out, const char *json, size_t len);
/* A number as a reader wants it: at most 4 decimals, no trailing zeros,
 * "-" for NaN. */
void cli_format_number(char *buf, size_t size, double v);
/* Where P(accept) came from, in words ("segment prior (at_risk)"); buf
 * holds the words when they need the segment. */
const char *cli_propensity_source_words(const char *source, char *buf, size_t size,
                                        const char *segment);

/* lua_data.c: a Lua data file (test files), parsed, never run. Values keep
 * the line they were written on. Tables hold positional items and string
 * keys (in the order written). */
typedef enum ld_type { LD_NIL, LD_BOOL, LD_NUMBER, LD_STRING, LD_TABLE } ld_type;
typedef struct ld_value {
    ld_type type;
    int line;
    bool boolean;
    double number;
    char *str; /* LD_STRING: UTF-8, no NUL */
    size_t len;
    struct ld_value **items; /* LD_TABLE: positional */
    size_t n_items;
    char **keys; /* LD_TABLE: keyed, parallel to vals */
    struct ld_value **vals;
    size_t n_keys;
} ld_value;
/* The value the file returns; NULL with *err = "FILE:LINE: message"
 * (malloc'd; NULL only when out of memory). */
ld_value *ld_load(const char *path, char **err);
ld_value *ld_parse(const char *path, const char *text, size_t len, char **err);
void ld_free(ld_value *v);
/* The value of a string key of a table; NULL if absent, nil or not a table. */
const ld_value *ld_get(const ld_value *t, const char *key);
/* "a string", "a table", ... for messages. */
const char *ld_type_name(const ld_value *v);

/* junit.c: results as JUnit XML for CI. */
enum { CLI_JUNIT_PASSED = 0, CLI_JUNIT_FAILED = 1, CLI_JUNIT_ERROR = 2 };
typedef struct cli_junit_case {
    char *name;
    char *file;
    int line;
    double seconds;
    int status;    /* CLI_JUNIT_* */
    char *message; /* failed or error: one line */
    char *details; /* failed or error: every line */
} cli_junit_case;
typedef struct cli_junit_suite {
    char *name; /* the test file */
    cli_junit_case *cases;
    size_t n_cases;
} cli_junit_suite;
/* Write path (through path.tmp, renamed once complete). 0, or -1 with err. */
int cli_junit_write(const char *path, const cli_junit_suite *suites, size_t n, char *err,
                    size_t err_size);

/* explain_text.c, for reports: one candidate of an explained result (the
 * result JSON parsed by jansson) in words ("chosen; P(accept) 0.2 (segment
 * prior (at_risk)) x unit margin 24 - serving cost 0.02 = expected margin
 * 4.78; score 4.78"), its text escaped by put (the report's escaper).
 * NULL candidate: "not a candidate". */
struct json_t;
typedef void (*cli_put_fn)(FILE *out, const char *text);
const struct json_t *cli_find_candidate(const struct json_t *result, const char *offer,
                                        const char *placement);
void cli_candidate_words(FILE *out, const struct json_t *result, const struct json_t *candidate,
                         cli_put_fn put);

/* gen.c */
int cli_run_gen_profiles(cli_args *args);
int cli_run_gen_events(cli_args *args);
int cli_run_gen_catalog(cli_args *args);

/* audit.c: the audit log (--log FILE) and nbx audit replay */
/* clang-format off */
#define CLI_FLAG_LOG                                                                               \
    {"log", CLI_STRING, "FILE", "append each decision's audit line to FILE (JSONL)", 0, 0}
/* clang-format on */
/* Open FILE to append audit lines to (created 0644 if missing): before
 * anything is decided, so a log that cannot be written stops the command
 * first. Returns the descriptor, or -1 after printing why, naming FILE. */
int cli_log_open(const cli_command *cmd, const char *path);
/* Append one audit line and its line break with one write(), so lines of
 * processes appending to the same file never interleave. CLI_OK, or
 * CLI_FAIL after printing why, naming FILE. */
int cli_log_append(const cli_command *cmd, const char *path, int fd, const char *line, size_t len);
extern const cli_flag cli_audit_replay_flags[];
extern const char cli_audit_replay_details[];
int cli_run_audit_replay(cli_args *args);
/* report.c */
int cli_run_report_experiment(cli_args *args);
/* The store's per-arm counters, after the other figures of `nbx stats`:
 * a table, or (json) a JSON array. CLI_OK or CLI_FAIL (message printed). */
int cli_print_arm_counters(cli_args *args, nbx_store *store, FILE *out, bool json);

/* kill.c: kill switches; flag tables and help text live with them */
extern const cli_flag cli_kill_flags[];
extern const cli_flag cli_unkill_flags[];
extern const char cli_kill_details[];
int cli_run_kill(cli_args *args);
int cli_run_unkill(cli_args *args);

/* batch.c: its flag table and help text live with it */
extern const cli_flag cli_batch_flags[];
extern const char cli_batch_details[];
int cli_run_batch(cli_args *args);

#endif /* NBX_CLI_H */
