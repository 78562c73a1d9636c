/*
 * diff.h: what `nbx policy diff` measures (policy_diff.c) and writes
 * (diff_report.c: Markdown and JSON; svg.c: the charts). Private to those
 * files.
 */
#ifndef NBX_CLI_DIFF_H
#define NBX_CLI_DIFF_H

#include "cli.h"

#include <jansson.h>

enum { DIFF_OLD = 0, DIFF_NEW = 1 };

/* Texts counted per side: offers shown, exclusion reasons, fallback and
 * error messages. Open addressing on xxh64; `items` keeps the order in
 * which texts were first counted. */
typedef struct diff_count {
    char *key;
    uint64_t n[2];
} diff_count;

typedef struct diff_counts {
    diff_count *items; /* in insertion order */
    size_t n, cap;
    uint32_t *slots; /* index + 1 into items; 0 empty */
    size_t n_slots;
} diff_counts;

/* Adds n to key's count of side; false when out of memory. */
bool diff_counts_add(diff_counts *c, const char *key, int side, uint64_t n);
const diff_count *diff_counts_find(const diff_counts *c, const char *key);
void diff_counts_free(diff_counts *c);

/* One policy's side of the diff. */
typedef struct diff_side {
    const char *path;
    nbx_engine *engine;
    nbx_engine_info info;
    uint64_t decided, errors, fallbacks;
    double margin; /* sum of expected margin over the paired customers */
    uint64_t *times_ns;
    size_t n_times, cap_times;
    double p50_us, p99_us;
} diff_side;

typedef struct diff_segment {
    uint64_t customers, changed;
    double margin[2];
} diff_segment;

/* A customer among those whose expected margin changed most, and what the
 * report says about them. */
#define DIFF_TOP 5
typedef struct diff_top {
    char *input; /* the customer as submitted: an id, or a JSON line */
    char *id;
    double margin[2];
    double change;
    char *json[2]; /* the explained decisions, decided again */
} diff_top;

typedef struct diff_placement {
    char *id;
    uint64_t changed; /* customers whose top action there differs */
} diff_placement;

typedef struct diff {
    cli_args *args;
    diff_side side[2];
    const char *store_path;
    const char *catalog_path;
    int64_t now_ms;
    nbx_kv session[NBX_REQUEST_SESSION_MAX]; /* --session, split in place */
    size_t n_session;
    const char *sample_kind; /* "sample", "customers" */
    uint64_t sample_size;    /* asked for (--sample) or lines of --customers */
    uint64_t store_profiles;
    uint64_t generation;
    /* paired: customers both policies decided */
    uint64_t customers, changed_customers, malformed;
    double sum_d, sum_d2; /* d = new - old expected margin per customer */
    diff_placement *placements;
    size_t n_placements;
    diff_segment segments[NBX_SEGMENT_COUNT];
    diff_counts offers;     /* times shown */
    diff_counts exclusions; /* candidates by reason, "ineligible: why" */
    diff_counts faults;     /* fallbacks by "file:line: reason" */
    diff_counts failures;   /* decisions that failed, by message */
    diff_top top[DIFF_TOP];
    size_t n_top;
    json_t *offer_names; /* catalog: offer id -> name */
    /* limits the reviewer set; NAN when not given */
    double max_margin_drop, max_changed;
    char verdict[4][512]; /* why the exit status is not 0 */
    size_t n_verdict;
} diff;

/* diff_report.c */
int diff_write_markdown(FILE *out, const diff *d, const char *chart_offers,
                        const char *chart_segments);
int diff_write_json(FILE *out, const diff *d);
/* The 95 % interval of the paired difference of the totals. */
void diff_interval(const diff *d, double *lo, double *hi);
/* Counted texts by |new - old|, largest first, ties by key: an array of
 * pointers into c (free() it); NULL when out of memory. */
const diff_count **diff_sorted(const diff_counts *c);

/* svg.c: charts drawn by nbx, no plotting dependency. 0 or -1 (errno). */
int diff_svg_offers(const char *path, const diff *d);
int diff_svg_segments(const char *path, const diff *d);

#endif /* NBX_CLI_DIFF_H */
