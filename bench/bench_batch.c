/*
 * bench_batch: what the batch runner (nbx_batch_*) costs over nbx_decide().
 *
 *   bench_batch --store DIR --catalog FILE --policy FILE
 *               [--customers N] [--threads T] [--rounds R]
 *
 * Takes the first N ids of the store (id order), then, R times each and
 * keeping the best round (the machine is shared and noisy):
 *   1. decide: one context, nbx_decide() in a loop on this thread;
 *   2. batch/1: the same decisions through a batch with one worker thread
 *      (the caller submits and takes results, as the CLI does);
 *   3. batch/T: the same with T worker threads.
 * Prints microseconds per decision and decisions/s for each, and the
 * runner's overhead per decision: batch/1 minus decide.
 */
#include "nbx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds of the whole process (every thread), user + system. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, int rc, const char *msg)
{
    fprintf(stderr, "bench_batch: %s: %s (%s)\n", what, msg && *msg ? msg : "", nbx_strerror(rc));
    exit(1);
}

static char **load_ids(nbx_engine *e, size_t want, size_t *n)
{
    nbx_iter *it;
    int rc = nbx_iter_open(nbx_engine_store(e), NBX_ITER_IDS, NULL, &it);
    if (rc)
        die("nbx_iter_open", rc, nbx_last_errmsg());
    char **ids = calloc(want, sizeof *ids);
    const char *id;
    *n = 0;
    while (*n < want && (rc = nbx_iter_next(it, &id, NULL, NULL)) == NBX_OK)
        ids[(*n)++] = strdup(id);
    nbx_iter_close(it);
    return ids;
}

static double run_decide(nbx_engine *e, char **ids, size_t n, int64_t now)
{
    nbx_ctx *ctx;
    int rc = nbx_ctx_open(e, &ctx);
    if (rc)
        die("nbx_ctx_open", rc, nbx_last_errmsg());
    size_t bytes = 0;
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        nbx_request req;
        nbx_request_init(&req);
        req.customer = ids[i];
        req.now_ms = now;
        const nbx_result *r;
        rc = nbx_decide(ctx, &req, &r);
        if (rc)
            die("nbx_decide", rc, nbx_ctx_errmsg(ctx));
        size_t len;
        nbx_result_json(r, &len);
        bytes += len;
    }
    double t = now_s() - t0;
    nbx_ctx_close(ctx);
    if (bytes == 0)
        die("nbx_decide", 0, "no output");
    return t;
}

static double run_batch(nbx_engine *e, char **ids, size_t n, unsigned threads, int64_t now)
{
    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.threads = threads;
    o.now_ms = now;
    nbx_batch *b;
    int rc = nbx_batch_open(e, &o, &b);
    if (rc)
        die("nbx_batch_open", rc, nbx_last_errmsg());
    size_t taken = 0, bytes = 0;
    const nbx_batch_item *it;
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        while (nbx_batch_space(b) == 0 && nbx_batch_next(b, &it) == NBX_OK) {
            bytes += it->json_len;
            taken++;
        }
        rc = nbx_batch_submit(b, ids[i], NULL, 0, NULL);
        if (rc)
            die("nbx_batch_submit", rc, nbx_batch_errmsg(b));
    }
    while (nbx_batch_next(b, &it) == NBX_OK) {
        bytes += it->json_len;
        taken++;
    }
    double t = now_s() - t0;
    nbx_batch_close(b);
    if (taken != n || bytes == 0)
        die("nbx_batch_next", 0, "lost results");
    return t;
}

int main(int argc, char **argv)
{
    const char *store = NULL, *catalog = NULL, *policy = NULL;
    size_t customers = 20000;
    unsigned threads = 2, rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--store"))
            store = argv[i + 1];
        else if (!strcmp(argv[i], "--catalog"))
            catalog = argv[i + 1];
        else if (!strcmp(argv[i], "--policy"))
            policy = argv[i + 1];
        else if (!strcmp(argv[i], "--customers"))
            customers = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--threads"))
            threads = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else
            die(argv[i], 0, "unknown flag");
    }
    if (!store || !catalog || !policy || !customers || !threads || !rounds) {
        fprintf(stderr, "usage: bench_batch --store DIR --catalog FILE --policy FILE "
                        "[--customers N] [--threads T] [--rounds R]\n");
        return 2;
    }
    nbx_engine_options eo;
    nbx_engine_options_init(&eo);
    eo.store = store;
    eo.catalog = catalog;
    eo.policy = policy;
    eo.flags = NBX_ENGINE_READONLY;
    nbx_engine *e;
    int rc = nbx_engine_open(&eo, &e);
    if (rc)
        die("nbx_engine_open", rc, nbx_last_errmsg());
    size_t n;
    char **ids = load_ids(e, customers, &n);
    int64_t now = nbx_time_now();

    /* Warm the page cache and the contexts' allocations once. */
    run_decide(e, ids, n < 2000 ? n : 2000, now);
    double best_decide = 1e30, best_b1 = 1e30, best_bt = 1e30;
    double cpu_decide = 1e30, cpu_b1 = 1e30, cpu_bt = 1e30;
    for (unsigned r = 0; r < rounds; r++) {
        double c0 = cpu_s();
        double t = run_decide(e, ids, n, now);
        double c1 = cpu_s();
        best_decide = t < best_decide ? t : best_decide;
        cpu_decide = c1 - c0 < cpu_decide ? c1 - c0 : cpu_decide;
        t = run_batch(e, ids, n, 1, now);
        double c2 = cpu_s();
        best_b1 = t < best_b1 ? t : best_b1;
        cpu_b1 = c2 - c1 < cpu_b1 ? c2 - c1 : cpu_b1;
        t = run_batch(e, ids, n, threads, now);
        double c3 = cpu_s();
        best_bt = t < best_bt ? t : best_bt;
        cpu_bt = c3 - c2 < cpu_bt ? c3 - c2 : cpu_bt;
    }
    printf("bench_batch: %zu customers, best of %u rounds\n", n, rounds);
    printf("  %-24s %8s %12s %10s\n", "", "wall us", "decisions/s", "CPU us");
    printf("  %-24s %8.2f %12.0f %10.2f\n", "decide loop, 1 thread", best_decide / n * 1e6,
           n / best_decide, cpu_decide / n * 1e6);
    printf("  %-24s %8.2f %12.0f %10.2f\n", "batch, 1 worker", best_b1 / n * 1e6, n / best_b1,
           cpu_b1 / n * 1e6);
    char label[32];
    snprintf(label, sizeof label, "batch, %u workers", threads);
    printf("  %-24s %8.2f %12.0f %10.2f\n", label, best_bt / n * 1e6, n / best_bt,
           cpu_bt / n * 1e6);
    printf("  runner overhead: %.2f us CPU per decision (batch, 1 worker - decide loop)\n",
           (cpu_b1 - cpu_decide) / n * 1e6);
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    nbx_engine_close(e);
    return 0;
}
