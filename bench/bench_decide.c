/*
 * bench_decide: decision latency and throughput through the public API.
 *
 *   bench_decide --store DIR --catalog FILE (--policy FILE | --deployment FILE)
 *                [--audit FILE] [--decisions N] [--threads T] [--placement P]...
 *                [--no-limits] [--evict KIB]
 *
 * Customers are drawn uniformly at random from the store's ids (read once
 * with nbx_iter). Prints, for one thread: median, p90, p99, p99.9 latency
 * per decision and decisions/s; then, for T threads (one context each), the
 * aggregate rate and its ratio to the one-thread rate.
 *
 * --no-limits sets the time and memory limits out of reach; the sandbox's
 * checks still run (the public API has no way to turn them off, on purpose).
 * --deployment serves each customer by its arm (the store is then opened
 * read-write: arm counters are flushed as in production); --audit FILE asks
 * for each decision's audit line and appends it to FILE, timed with it.
 * --evict KIB writes KIB of other memory between decisions, untimed, as a
 * server's network stack and its other requests do between two decisions
 * of one worker: a decision then starts with cold caches, as it does in
 * nginx, where a decision costs more than here (docs/performance.md,
 * "nginx with retention.lua").
 */
#include "nbx.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct config {
    const char *store, *catalog, *policy, *deployment;
    const char *audit; /* --audit FILE: each decision's audit line appended */
    const char *placements[16];
    size_t n_placements;
    long decisions;
    long warmup;
    int threads;
    bool no_limits;
    size_t evict; /* bytes written between decisions */
} config;

static char **ids;
static FILE *audit_out;
static pthread_mutex_t audit_mu = PTHREAD_MUTEX_INITIALIZER;
static size_t n_ids;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_decide: %s: %s\n", what, msg);
    exit(1);
}

static void load_ids(nbx_store *s)
{
    nbx_iter *it;
    if (nbx_iter_open(s, NBX_ITER_IDS, NULL, &it) != NBX_OK)
        die("iter", nbx_store_errmsg(s));
    size_t cap = 1 << 16;
    ids = malloc(cap * sizeof *ids);
    const char *id;
    while (nbx_iter_next(it, &id, NULL, NULL) == NBX_OK) {
        if (n_ids == cap)
            ids = realloc(ids, (cap *= 2) * sizeof *ids);
        ids[n_ids++] = strdup(id);
    }
    nbx_iter_close(it);
    if (!n_ids)
        die("store", "no profiles");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct run {
    const config *cfg;
    nbx_engine *engine;
    long decisions;
    double *lat; /* per decision, may be NULL */
    double elapsed_us;
    long fallbacks;
    uint64_t seed;
} run;

static void *decide_loop(void *arg)
{
    run *r = arg;
    nbx_ctx *ctx;
    if (nbx_ctx_open(r->engine, &ctx) != NBX_OK)
        die("ctx", nbx_last_errmsg());
    nbx_request req;
    nbx_request_init(&req);
    req.placements = r->cfg->placements;
    req.n_placements = r->cfg->n_placements;
    nbx_kv session[] = {{"channel", "web"}, {"device", "mobile"}};
    req.session = session;
    req.n_session = 2;
    if (r->cfg->audit)
        req.flags |= NBX_DECIDE_AUDIT;
    /* Written a cache line at a time; the time it takes is taken out of
     * the elapsed time below, so the rate stays the decisions'. */
    volatile char *evict = r->cfg->evict ? calloc(1, r->cfg->evict) : NULL;
    if (r->cfg->evict && !evict)
        die("--evict", "out of memory");
    double evicting = 0;
    double start = now_us();
    for (long i = 0; i < r->decisions; i++) {
        if (evict) {
            double e0 = now_us();
            for (size_t off = 0; off < r->cfg->evict; off += 64)
                evict[off] = (char)i;
            evicting += now_us() - e0;
        }
        req.customer = ids[xorshift(&r->seed) % n_ids];
        const nbx_result *res;
        double t0 = r->lat ? now_us() : 0;
        if (nbx_decide(ctx, &req, &res) != NBX_OK)
            die("decide", nbx_ctx_errmsg(ctx));
        if (audit_out) { /* as a log would: one buffered line per decision */
            size_t len;
            const char *line = nbx_result_audit_json(res, &len);
            pthread_mutex_lock(&audit_mu);
            fwrite(line, 1, len, audit_out);
            fputc('\n', audit_out);
            pthread_mutex_unlock(&audit_mu);
        }
        if (r->lat)
            r->lat[i] = now_us() - t0;
        if (nbx_result_fallback(res) && r->fallbacks++ < 3)
            fprintf(stderr, "fallback for %s: %s\n", req.customer, nbx_result_error(res));
    }
    r->elapsed_us = now_us() - start - evicting;
    free((void *)evict);
    nbx_ctx_close(ctx);
    return NULL;
}

int main(int argc, char **argv)
{
    config cfg = {.decisions = 200000, .warmup = 20000, .threads = 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-limits")) {
            cfg.no_limits = true;
            continue;
        }
        if (!v)
            die(a, "missing value");
        i++;
        if (!strcmp(a, "--store"))
            cfg.store = v;
        else if (!strcmp(a, "--catalog"))
            cfg.catalog = v;
        else if (!strcmp(a, "--policy"))
            cfg.policy = v;
        else if (!strcmp(a, "--deployment"))
            cfg.deployment = v;
        else if (!strcmp(a, "--audit"))
            cfg.audit = v;
        else if (!strcmp(a, "--decisions"))
            cfg.decisions = atol(v);
        else if (!strcmp(a, "--warmup"))
            cfg.warmup = atol(v);
        else if (!strcmp(a, "--threads"))
            cfg.threads = atoi(v);
        else if (!strcmp(a, "--evict")) {
            char *end;
            unsigned long kib = strtoul(v, &end, 10);
            if (end == v || *end || v[0] == '-' || kib > (1ul << 20))
                die(a, "expected KiB to write between decisions, 0 to 1048576");
            cfg.evict = (size_t)kib << 10;
        } else if (!strcmp(a, "--placement") && cfg.n_placements < 16)
            cfg.placements[cfg.n_placements++] = v;
        else
            die(a, "unknown flag");
    }
    if (!cfg.store || !cfg.catalog || !cfg.policy == !cfg.deployment || cfg.decisions <= 0 ||
        cfg.threads < 1)
        die("usage", "--store DIR --catalog FILE (--policy FILE | --deployment FILE) "
                     "[--audit FILE] [--decisions N] [--threads T]");
    if (cfg.audit && !(audit_out = fopen(cfg.audit, "w")))
        die(cfg.audit, "cannot be written");
    /* a log's buffer, as nginx's access_log buffer=256k (docs/nginx.md),
     * not stdio's 4 KiB: one write per ~230 lines, not per ~4 */
    static char audit_buf[256 * 1024];
    if (audit_out && setvbuf(audit_out, audit_buf, _IOFBF, sizeof audit_buf) != 0)
        die(cfg.audit, "cannot be buffered");

    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = cfg.store;
    o.catalog = cfg.catalog;
    o.policy = cfg.policy;
    o.deployment = cfg.deployment;
    /* A deployment's engine counts decisions per arm and flushes them to the
     * store every second or 1,000 decisions, as in production (the store
     * must then be writable); otherwise the store is only read. */
    o.flags = cfg.deployment ? 0 : NBX_ENGINE_READONLY;
    if (cfg.no_limits) {
        /* Limits out of reach; the hook still runs (see the top of the file). */
        o.time_limit_us = UINT32_MAX;
        o.memory_limit = (size_t)1 << 40;
    }
    nbx_engine *engine;
    if (nbx_engine_open(&o, &engine) != NBX_OK)
        die("engine", nbx_last_errmsg());
    load_ids(nbx_engine_store(engine));
    nbx_engine_info info;
    nbx_engine_info_get(engine, &info);
    printf("store %s: %zu profiles; catalog %u offers over %u placements; %s %s %s%s\n", cfg.store,
           n_ids, info.offers, info.placements, cfg.deployment ? "deployment" : "policy",
           cfg.deployment ? cfg.deployment : info.policy_name,
           cfg.deployment ? "" : info.policy_version, cfg.audit ? "; audit log on" : "");

    /* warm up: page cache, Lua state, arenas */
    run warm = {.cfg = &cfg, .engine = engine, .decisions = cfg.warmup, .seed = 7};
    decide_loop(&warm);

    run one = {.cfg = &cfg, .engine = engine, .decisions = cfg.decisions, .seed = 42};
    one.lat = malloc(cfg.decisions * sizeof *one.lat);
    decide_loop(&one);
    qsort(one.lat, cfg.decisions, sizeof *one.lat, cmp_double);
    double rate1 = cfg.decisions / (one.elapsed_us / 1e6);
    printf("1 thread:  %ld decisions  p50 %.1f us  p90 %.1f us  p99 %.1f us  p99.9 %.1f us  "
           "%.0f decisions/s  fallbacks %ld\n",
           cfg.decisions, one.lat[cfg.decisions / 2], one.lat[cfg.decisions * 9 / 10],
           one.lat[cfg.decisions * 99 / 100], one.lat[cfg.decisions * 999 / 1000], rate1,
           one.fallbacks);

    if (cfg.threads > 1) {
        run *runs = calloc(cfg.threads, sizeof *runs);
        pthread_t *t = calloc(cfg.threads, sizeof *t);
        double start = now_us();
        for (int i = 0; i < cfg.threads; i++) {
            runs[i] =
                (run){.cfg = &cfg, .engine = engine, .decisions = cfg.decisions, .seed = 1000 + i};
            pthread_create(&t[i], NULL, decide_loop, &runs[i]);
        }
        for (int i = 0; i < cfg.threads; i++)
            pthread_join(t[i], NULL);
        double elapsed = now_us() - start;
        double rate = cfg.threads * (double)cfg.decisions / (elapsed / 1e6);
        printf("%d threads: %.0f decisions/s  = %.2fx one thread\n", cfg.threads, rate,
               rate / rate1);
        free(runs);
        free(t);
    }
    free(one.lat);
    nbx_engine_close(engine);
    return 0;
}
