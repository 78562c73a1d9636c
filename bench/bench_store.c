/*
 * bench_store: figures for the store: profile import, profile point lookups,
 * bytes on disk per profile, re-import (merge path), event ingest, a re-run
 * of the same events (all duplicates) and RFM rebuild. Each run uses a new
 * store; medians over the runs are printed. Not a test: it prints figures.
 *
 *   bench_store --profiles P.jsonl [--events E.jsonl] [--dir DIR] [--runs N]
 *               [--batch N] [--events-batch N] [--lookups N] [--nometasync]
 *
 * bench/store.sh generates the data with `nbx gen` and runs this.
 */
#include "nbx_int.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define RUNS_MAX 15

typedef struct config {
    const char *profiles;
    const char *events;
    const char *dir;
    int runs;
    size_t batch;        /* profiles, and events unless events_batch */
    size_t events_batch; /* 0: batch */
    size_t lookups;
    unsigned store_flags;
} config;

typedef struct run_figures {
    double import_rate; /* profiles/s */
    double file_bytes;  /* data.mdb size per profile */
    double used_bytes;  /* pages in use per profile */
    double cold_p50, cold_p99;
    double p50, p99, p999, mean; /* warm lookups, microseconds */
    double reimport_rate;
    double ingest_rate;
    double rerun_rate;
    double rfm_seconds;
    double events_file_mb; /* data.mdb after the events */
    uint64_t profiles, events_applied;
} run_figures;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    double tmp[RUNS_MAX];
    memcpy(tmp, v, (size_t)n * sizeof *v);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

/* Median over runs of the double at offset in run_figures. */
static double median_of(const run_figures *f, int runs, size_t offset)
{
    double v[RUNS_MAX];
    for (int r = 0; r < runs; r++)
        memcpy(&v[r], (const char *)&f[r] + offset, sizeof v[r]);
    return median(v, runs);
}

static void die(const char *what, nbx_store *s)
{
    fprintf(stderr, "bench_store: %s: %s\n", what, s ? nbx_store_errmsg(s) : nbx_last_errmsg());
    exit(1);
}

static double import(nbx_store *s, nbx_import_kind kind, const char *path, size_t batch,
                     nbx_import_stats *st)
{
    nbx_import_options o;
    nbx_import_options_init(&o);
    o.batch_size = batch;
    double t0 = now_s();
    if (nbx_import_file(s, kind, path, &o, st) != NBX_OK)
        die(path, s);
    return now_s() - t0;
}

/* xorshift: a fixed, reproducible lookup order */
static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

typedef struct ids {
    char *bytes;
    size_t *off;
    size_t n;
} ids;

static void load_ids(nbx_store *s, ids *out)
{
    nbx_iter *it;
    if (nbx_iter_open(s, NBX_ITER_IDS, NULL, &it) != NBX_OK)
        die("iter", s);
    nbx_buf b = {0};
    size_t cap = 1 << 20;
    out->off = malloc(cap * sizeof *out->off);
    out->n = 0;
    const char *id;
    while (nbx_iter_next(it, &id, NULL, NULL) == NBX_OK) {
        if (out->n == cap) {
            cap *= 2;
            out->off = realloc(out->off, cap * sizeof *out->off);
        }
        out->off[out->n++] = b.len;
        nbx_buf_append(&b, id, strlen(id) + 1);
    }
    nbx_iter_close(it);
    if (b.oom || !out->off)
        die("out of memory", NULL);
    out->bytes = b.data;
}

/* Point lookups: a renewed read transaction and a decoded profile each, in
 * one thread, ids in random order. Latencies in nanoseconds into lat. */
static void lookups(nbx_store *s, const ids *all, size_t n, uint64_t seed, uint64_t *lat)
{
    MDB_txn *txn;
    nbx_err e = {0};
    if (nbx_store_read_begin(s, &txn, &e) != NBX_OK)
        die(e.msg, NULL);
    mdb_txn_reset(txn);
    nbx_arena arena = {0};
    uint64_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        const char *id = all->bytes + all->off[rnd(&x) % all->n];
        nbx_sv sid = nbx_sv_of(id);
        uint64_t t0 = now_ns();
        if (mdb_txn_renew(txn) != 0)
            die("txn renew", NULL);
        nbx_arena_reset(&arena);
        nbx_profile p;
        int rc = nbx_store_profile_get(s, txn, sid, &p, &arena, &e);
        mdb_txn_reset(txn);
        uint64_t t1 = now_ns();
        if (rc != NBX_OK)
            die(e.msg, NULL);
        lat[i] = t1 - t0;
    }
    mdb_txn_abort(txn);
    nbx_arena_free(&arena);
}

static double pct(const uint64_t *sorted, size_t n, double q)
{
    size_t i = (size_t)ceil(q * (double)n);
    return (double)sorted[i ? i - 1 : 0] / 1000.0;
}

static void one_run(const config *c, int r, run_figures *f)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/run%d", c->dir, r);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        die("rm", NULL);
    nbx_store *s;
    if (nbx_store_open(path, NBX_STORE_CREATE | c->store_flags, &s) != NBX_OK)
        die(path, NULL);
    nbx_import_stats st;
    double t = import(s, NBX_IMPORT_PROFILES, c->profiles, c->batch, &st);
    f->profiles = st.applied;
    f->import_rate = (double)st.applied / t;

    nbx_store_stats ss;
    nbx_store_stat(s, &ss);
    char data[4200];
    snprintf(data, sizeof data, "%s/data.mdb", path);
    struct stat fst;
    if (stat(data, &fst) != 0)
        die("stat data.mdb", NULL);
    f->file_bytes = (double)fst.st_blocks * 512.0 / (double)ss.profiles;
    f->used_bytes = (double)ss.bytes_used / (double)ss.profiles;

    ids all;
    load_ids(s, &all);
    size_t n = c->lookups;
    uint64_t *lat = malloc(n * sizeof *lat);
    if (!lat)
        die("out of memory", NULL);
    /* first pass: a new process touching pages of its map for the first time */
    lookups(s, &all, n, 42 + (uint64_t)r, lat);
    qsort(lat, n, sizeof *lat, cmp_u64);
    f->cold_p50 = pct(lat, n, 0.50);
    f->cold_p99 = pct(lat, n, 0.99);
    lookups(s, &all, n, 4242 + (uint64_t)r, lat);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)lat[i];
    qsort(lat, n, sizeof *lat, cmp_u64);
    f->p50 = pct(lat, n, 0.50);
    f->p99 = pct(lat, n, 0.99);
    f->p999 = pct(lat, n, 0.999);
    f->mean = sum / (double)n / 1000.0;
    free(lat);
    free(all.bytes);
    free(all.off);

    t = import(s, NBX_IMPORT_PROFILES, c->profiles, c->batch, &st);
    f->reimport_rate = (double)st.applied / t;

    if (c->events) {
        size_t eb = c->events_batch ? c->events_batch : c->batch;
        t = import(s, NBX_IMPORT_EVENTS, c->events, eb, &st);
        f->events_applied = st.applied;
        f->ingest_rate = (double)st.lines / t;
        if (stat(data, &fst) != 0)
            die("stat data.mdb", NULL);
        f->events_file_mb = (double)fst.st_blocks * 512.0 / 1e6;
        t = import(s, NBX_IMPORT_EVENTS, c->events, eb, &st);
        f->rerun_rate = (double)st.lines / t;
    }
    nbx_rfm_stats rs;
    double t0 = now_s();
    if (nbx_rfm_rebuild(s, 0, &rs) != NBX_OK)
        die("rfm rebuild", s);
    f->rfm_seconds = now_s() - t0;
    nbx_store_close(s);
    fprintf(stderr,
            "run %d: import %.0f/s, lookup p50 %.2f us p99 %.2f us, re-import %.0f/s, "
            "ingest %.0f/s, re-run %.0f/s, rfm %.2f s\n",
            r + 1, f->import_rate, f->p50, f->p99, f->reimport_rate, f->ingest_rate, f->rerun_rate,
            f->rfm_seconds);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        die("rm", NULL);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_store --profiles P.jsonl [--events E.jsonl] [--dir DIR]\n"
                    "                   [--runs N] [--batch N] [--events-batch N] [--lookups N]\n"
                    "                   [--nometasync]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    config c = {.dir = "/tmp/nbx-bench-store", .runs = 3, .lookups = 1000000};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--nometasync")) {
            c.store_flags |= NBX_STORE_NOMETASYNC;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--profiles"))
            c.profiles = v;
        else if (!strcmp(a, "--events"))
            c.events = v;
        else if (!strcmp(a, "--dir"))
            c.dir = v;
        else if (!strcmp(a, "--runs"))
            c.runs = atoi(v);
        else if (!strcmp(a, "--batch"))
            c.batch = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--events-batch"))
            c.events_batch = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--lookups"))
            c.lookups = (size_t)strtoull(v, NULL, 10);
        else
            usage();
    }
    if (!c.profiles || c.runs < 1 || c.runs > RUNS_MAX || c.lookups == 0)
        usage();
    mkdir(c.dir, 0775);

    struct utsname u;
    uname(&u);
    struct stat pst, est = {0};
    if (stat(c.profiles, &pst) != 0 || (c.events && stat(c.events, &est) != 0))
        die("input file missing", NULL);
    uint64_t t_overhead = now_ns();
    for (int i = 0; i < 1000000; i++)
        (void)now_ns();
    double timer_ns = (double)(now_ns() - t_overhead) / 1e6;

    run_figures f[RUNS_MAX];
    for (int r = 0; r < c.runs; r++)
        one_run(&c, r, &f[r]);

#define MEDIAN(field) median_of(f, c.runs, offsetof(run_figures, field))
    printf("nbx store benchmark (bench/bench_store.c): %s %s, %ld cores\n", u.sysname, u.release,
           sysconf(_SC_NPROCESSORS_ONLN));
    printf("  profiles: %s (%llu profiles, %.0f MB)\n", c.profiles,
           (unsigned long long)f[0].profiles, (double)pst.st_size / 1e6);
    if (c.events)
        printf("  events:   %s (%llu applied, %.0f MB)\n", c.events,
               (unsigned long long)f[0].events_applied, (double)est.st_size / 1e6);
    char batch[64] = "default (profiles 10000, events 100000)";
    if (c.batch || c.events_batch)
        snprintf(batch, sizeof batch, "profiles %zu, events %zu", c.batch ? c.batch : 10000,
                 c.events_batch ? c.events_batch
                 : c.batch      ? c.batch
                                : 100000);
    printf("  %d runs, medians; batch %s; sync %s; NBX_IMPORT_THREADS %s\n\n", c.runs, batch,
           c.store_flags & NBX_STORE_NOMETASYNC ? "NBX_STORE_NOMETASYNC" : "default (fsync)",
           getenv("NBX_IMPORT_THREADS") ? getenv("NBX_IMPORT_THREADS") : "default");
    printf("  import profiles        %10.0f profiles/s\n", MEDIAN(import_rate));
    printf("  bytes on disk          %10.0f bytes/profile (data.mdb), %.0f in used pages\n",
           MEDIAN(file_bytes), MEDIAN(used_bytes));
    printf("  lookup, decoded        p50 %.2f us  p99 %.2f us  p99.9 %.2f us  mean %.2f us "
           "(%zu lookups, renewed read txn, 1 thread; timer %.0f ns)\n",
           MEDIAN(p50), MEDIAN(p99), MEDIAN(p999), MEDIAN(mean), c.lookups, timer_ns);
    printf("  lookup, first touch    p50 %.2f us  p99 %.2f us (pages not yet mapped in)\n",
           MEDIAN(cold_p50), MEDIAN(cold_p99));
    printf("  re-import (merge)      %10.0f profiles/s\n", MEDIAN(reimport_rate));
    if (c.events) {
        printf("  ingest events          %10.0f events/s\n", MEDIAN(ingest_rate));
        printf("  ingest again (dups)    %10.0f events/s\n", MEDIAN(rerun_rate));
        printf("  store after events     %10.0f MB (data.mdb)\n", MEDIAN(events_file_mb));
    }
    printf("  rfm rebuild            %10.2f s\n", MEDIAN(rfm_seconds));
    return 0;
}
