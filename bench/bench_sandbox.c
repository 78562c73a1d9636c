/*
 * bench_sandbox: per-decision latency of the policy sandbox.
 *
 * Builds a 100-offer catalog in a temporary directory, loads a policy
 * (policies/margin_per_session.lua unless one is given) and times
 * nbx_sandbox_run() over 100 candidates, in three set-ups:
 *
 *   production     limits on (the policy's ticks, the memory limit), JIT on
 *   no time limit  ticks never look at the clock (what the time limit costs)
 *   interpreter    limits on, JIT off (what the JIT gains)
 *
 * Four customers take turns (different propensities, segments and exposed
 * offers), so no decision sees the same inputs as the one before. The set-ups
 * run in alternating rounds, so a change in machine load hits all three.
 *
 * Usage: bench_sandbox [policy.lua or -] [decisions]
 * Without a policy: the default policy (native score), the same formula as
 * a Lua score, and policies/retention.lua.
 * Prints median and p99 wall-clock microseconds per decision, the mean
 * thread CPU time per decision (unaffected by other load on the machine),
 * and ratios.
 */
#include "nbx_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N_OFFERS 100
#define CUSTOMERS 4
#define ROUNDS 10
#define WARMUP 1000

static const char *const categories[] = {"apparel",   "shoes",    "beauty", "home",
                                         "retention", "shipping", "toys",   "garden"};
static const char *const placements[] = {"hero", "recs", "sidebar", "checkout"};

static char *write_catalog(const char *dir)
{
    char *path = NULL;
    if (asprintf(&path, "%s/catalog.json", dir) < 0)
        return NULL;
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fprintf(f, "{\"placements\": [");
    for (size_t i = 0; i < NBX_ARRAY_LEN(placements); i++)
        fprintf(f, "%s{\"id\": \"%s\", \"slots\": %d}", i ? ", " : "", placements[i],
                i == 1 ? 4 : 1);
    fprintf(f, "],\n\"offers\": [\n");
    for (int i = 0; i < N_OFFERS; i++) {
        double price = 10 + (i * 7) % 90;
        fprintf(f,
                "%s{\"id\": \"offer_%03d\", \"kind\": \"%s\", \"placements\": [\"%s\"],"
                " \"price\": %.2f, \"unit_cost\": %.2f, \"discount\": %.2f,"
                " \"serving_cost\": 0.01, \"purpose\": \"personalization\","
                " \"category\": \"%s\", \"base_propensity\": %.3f,"
                " \"segment_propensity\": {\"at_risk\": %.3f, \"champions\": %.3f},"
                " \"caps\": {\"impressions\": {\"max\": 3, \"window_days\": 7}},"
                " \"headline\": \"Offer number %d\", \"tags\": [\"a\", \"b\"]}\n",
                i ? "," : "", i, i % 10 == 9 ? "module" : "offer",
                placements[i % NBX_ARRAY_LEN(placements)], price, price * 0.5,
                (i % 4) * price * 0.05, categories[i % NBX_ARRAY_LEN(categories)],
                0.01 + (i % 13) * 0.005, 0.02 + (i % 5) * 0.01, 0.01 + (i % 3) * 0.01, i);
    }
    fprintf(f, "]}\n");
    fclose(f);
    return path;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------------
 * Customers
 * ------------------------------------------------------------------------ */

static nbx_attr attrs[] = {
    {.key = {"country", 7}, .type = NBX_ATTR_STRING, .string = {"DE", 2}},
    {.key = {"device", 6}, .type = NBX_ATTR_STRING, .string = {"ios", 3}},
    {.key = {"newsletter", 10}, .type = NBX_ATTR_BOOL, .boolean = true},
    {.key = {"visits", 6}, .type = NBX_ATTR_NUMBER, .number = 42},
};
static nbx_consent consent[] = {{{"email", 5}, 1}, {{"personalization", 15}, 1}};
static nbx_prop props[CUSTOMERS][32];
static char keys[CUSTOMERS][32][16];
static char ids[CUSTOMERS][16];
static nbx_profile profiles[CUSTOMERS];
static nbx_exposure_summary seen = {
    .impressions = 2, .clicks = 1, .last_impression = INT64_C(1767000000000)};

static void make_customers(void)
{
    static const int segments[CUSTOMERS] = {NBX_SEGMENT_LOYAL, NBX_SEGMENT_AT_RISK,
                                            NBX_SEGMENT_CHAMPIONS, NBX_SEGMENT_NEW};
    for (int c = 0; c < CUSTOMERS; c++) {
        /* Sorted keys: two categories, then every fifth offer id. */
        uint32_t np = 0;
        snprintf(keys[c][np], 16, "apparel");
        props[c][np] = (nbx_prop){{keys[c][np], strlen(keys[c][np])}, 0.07 + 0.01 * c};
        np++;
        snprintf(keys[c][np], 16, "beauty");
        props[c][np] = (nbx_prop){{keys[c][np], strlen(keys[c][np])}, 0.05};
        np++;
        for (int i = c; i < N_OFFERS; i += 5) {
            snprintf(keys[c][np], 16, "offer_%03d", i);
            props[c][np] = (nbx_prop){{keys[c][np], strlen(keys[c][np])}, 0.01 * (i % 17)};
            np++;
        }
        snprintf(ids[c], sizeof ids[c], "customer-%04d", c);
        profiles[c] = (nbx_profile){.id = {ids[c], strlen(ids[c])},
                                    .attrs = attrs,
                                    .n_attrs = NBX_ARRAY_LEN(attrs),
                                    .consent = consent,
                                    .n_consent = NBX_ARRAY_LEN(consent),
                                    .propensity = props[c],
                                    .n_propensity = np,
                                    .ltv = 640 + c,
                                    .churn = 0.3,
                                    .fields = NBX_PF_ATTRS | NBX_PF_CONSENT | NBX_PF_PROPENSITY |
                                              NBX_PF_LTV | NBX_PF_CHURN | NBX_PF_RFM};
        profiles[c].rfm = (nbx_rfm){.first_purchase = INT64_C(1700000000000),
                                    .last_purchase = INT64_C(1765000000000) - c * INT64_C(86400000),
                                    .orders = 9,
                                    .revenue = 812.4,
                                    .margin = 301.2,
                                    .r = 3,
                                    .f = 4,
                                    .m = 4,
                                    .segment = (uint8_t)segments[c]};
    }
}

/* ------------------------------------------------------------------------
 * Timing
 * ------------------------------------------------------------------------ */

typedef struct setup {
    const char *label;
    nbx_limits limits;
    nbx_sandbox *sb;
    double *lat;
    int n;
    double cpu_ms; /* thread CPU time over the timed decisions */
} setup;

static double thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Each customer's propensity per offer, resolved once as decide.c does
 * per decision (caps.c): the sandbox reads them, it does not resolve them. */
static double propensities[CUSTOMERS][N_OFFERS];

static void resolve_propensities(const nbx_catalog *catalog)
{
    nbx_caps caps;
    if (nbx_caps_init(&caps, catalog) != NBX_OK)
        exit(1);
    for (int c = 0; c < CUSTOMERS; c++) {
        nbx_caps_propensities(&caps, &profiles[c]);
        memcpy(propensities[c], caps.propensity, catalog->n_offers * sizeof(double));
    }
    nbx_caps_free(&caps);
}

static void run_decisions(setup *s, const nbx_catalog *catalog, int count, int first, bool keep)
{
    double cpu0 = thread_cpu_ms();
    nbx_candidate cand[N_OFFERS];
    nbx_kv session[] = {{"channel", "web"}, {"page", "/home"}};
    nbx_sandbox_input in = {.session = session,
                            .n_session = NBX_ARRAY_LEN(session),
                            .now_ms = INT64_C(1767225600000),
                            .cand = cand,
                            .n_cand = catalog->n_offers};
    for (int d = first; d < first + count; d++) {
        int c = d % CUSTOMERS;
        /* Each customer has seen a different tenth of the offers. */
        for (uint32_t i = 0; i < catalog->n_offers; i++)
            cand[i] = (nbx_candidate){.offer = i,
                                      .placement = catalog->offers[i].placements[0],
                                      .exposure = i % 10 == (uint32_t)c ? &seen : NULL};
        in.profile = &profiles[c];
        in.propensity = propensities[c];
        in.seed = (uint64_t)d;
        nbx_policy_error pe;
        int64_t t0 = now_ns();
        int rc = nbx_sandbox_run(s->sb, &in, &pe);
        int64_t t1 = now_ns();
        if (rc != NBX_OK) {
            fprintf(stderr, "%s: decision %d: %s at %s\n", s->label, d, pe.reason, pe.where);
            exit(1);
        }
        if (keep)
            s->lat[s->n++] = (double)(t1 - t0) / 1000.0;
    }
    if (keep)
        s->cpu_ms += thread_cpu_ms() - cpu0;
}

static double percentile(const setup *s, double p)
{
    return s->lat[(size_t)((s->n - 1) * p)];
}

static double clock_cost_ns(clockid_t id)
{
    struct timespec ts;
    int n = 200000;
    int64_t t0 = now_ns();
    for (int i = 0; i < n; i++)
        clock_gettime(id, &ts);
    return (double)(now_ns() - t0) / n;
}

/* Time one policy in the three set-ups and print the table. */
static void bench_policy(const char *policy_path, nbx_catalog *catalog, int decisions)
{
    nbx_err e = {0};
    nbx_policy *policy = NULL;
    if (nbx_policy_load(policy_path, &policy, &e) != NBX_OK) {
        fprintf(stderr, "%s\n", e.msg);
        exit(1);
    }
    setup setups[] = {
        {.label = "production (limits on, JIT on)"},
        {.label = "no time limit (JIT on)", .limits.flags = NBX_LIMITS_NO_DEADLINE},
        {.label = "interpreter (limits on, JIT off)", .limits.flags = NBX_LIMITS_NO_JIT},
    };
    /* BENCH_SANDBOX_SETUPS=N: only the first N set-ups (a profile of one) */
    size_t n_setups = NBX_ARRAY_LEN(setups);
    const char *only = getenv("BENCH_SANDBOX_SETUPS");
    if (only && atoi(only) >= 1 && (size_t)atoi(only) < n_setups)
        n_setups = (size_t)atoi(only);
    for (size_t i = 0; i < NBX_ARRAY_LEN(setups); i++) {
        setup *s = &setups[i];
        if (nbx_sandbox_open(policy, catalog, &s->limits, &s->sb, &e) != NBX_OK) {
            fprintf(stderr, "%s: %s\n", s->label, e.msg);
            exit(1);
        }
        s->lat = malloc(sizeof(double) * (size_t)decisions);
        if (!s->lat)
            exit(1);
        run_decisions(s, catalog, WARMUP, 0, false);
    }
    int per_round = decisions / ROUNDS;
    for (int r = 0; r < ROUNDS; r++)
        for (size_t i = 0; i < n_setups; i++)
            run_decisions(&setups[i], catalog, per_round, WARMUP + r * per_round, true);

    printf("\npolicy %s (%s): %d decisions per set-up\n", policy->name, policy_path,
           per_round * ROUNDS);
    printf("%-34s %8s %8s %8s %8s %10s %9s\n", "set-up", "p50 us", "p99 us", "mean us", "cpu us",
           "ns/cand", "state KB");
    for (size_t i = 0; i < n_setups; i++) {
        setup *s = &setups[i];
        double sum = 0;
        for (int d = 0; d < s->n; d++)
            sum += s->lat[d];
        qsort(s->lat, (size_t)s->n, sizeof *s->lat, cmp_double);
        printf("%-34s %8.2f %8.2f %8.2f %8.2f %10.0f %9zu\n", s->label, percentile(s, 0.5),
               percentile(s, 0.99), sum / s->n, s->cpu_ms * 1000 / s->n,
               percentile(s, 0.5) * 1000 / catalog->n_offers, nbx_sandbox_memory(s->sb) >> 10);
    }
    if (n_setups < NBX_ARRAY_LEN(setups)) {
        for (size_t i = 0; i < NBX_ARRAY_LEN(setups); i++) {
            nbx_sandbox_close(setups[i].sb);
            free(setups[i].lat);
        }
        nbx_policy_unref(policy);
        return;
    }
    printf("limits on / limits off: %.2f (CPU time), %.2f (p50), %.2f (p99)\n",
           setups[0].cpu_ms / setups[1].cpu_ms,
           percentile(&setups[0], 0.5) / percentile(&setups[1], 0.5),
           percentile(&setups[0], 0.99) / percentile(&setups[1], 0.99));
    printf("limits on / JIT on:     %.2f (CPU time), %.2f (p50), %.2f (p99)\n",
           setups[0].cpu_ms / setups[2].cpu_ms,
           percentile(&setups[0], 0.5) / percentile(&setups[2], 0.5),
           percentile(&setups[0], 0.99) / percentile(&setups[2], 0.99));
    for (size_t i = 0; i < NBX_ARRAY_LEN(setups); i++) {
        nbx_sandbox_close(setups[i].sb);
        free(setups[i].lat);
    }
    nbx_policy_unref(policy);
}

/* The default policy's formula as a Lua function: what any policy that is
 * not the built-in expected_margin_score pays. */
static const char lua_margin_policy[] =
    "local expected_margin = nbx.expected_margin\n"
    "return { name = 'margin_per_session (Lua score)', score = function(offer, customer)\n"
    "  local m = expected_margin(customer, offer)\n"
    "  return m, m\n"
    "end }\n";

int main(int argc, char **argv)
{
    const char *given = argc > 1 && strcmp(argv[1], "-") != 0 ? argv[1] : NULL;
    int decisions = argc > 2 ? atoi(argv[2]) : 20000;
    if (decisions < ROUNDS * 10)
        decisions = ROUNDS * 10;
    char dir[] = "/tmp/nbx-bench-sandbox-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char *catalog_path = write_catalog(dir);
    char *lua_path = NULL;
    if (asprintf(&lua_path, "%s/margin_per_session_lua.lua", dir) < 0)
        return 1;
    FILE *f = fopen(lua_path, "w");
    if (!f || fputs(lua_margin_policy, f) < 0 || fclose(f) != 0) {
        perror(lua_path);
        return 1;
    }
    nbx_err e = {0};
    nbx_catalog *catalog = NULL;
    if (nbx_catalog_load(catalog_path, &catalog, &e) != NBX_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    make_customers();
    resolve_propensities(catalog);
    printf("%u offers, %u candidates per decision, %d customers in turn\n", catalog->n_offers,
           catalog->n_offers, CUSTOMERS);
    printf("clock_gettime: CLOCK_MONOTONIC %.0f ns, CLOCK_THREAD_CPUTIME_ID %.0f ns\n",
           clock_cost_ns(CLOCK_MONOTONIC), clock_cost_ns(CLOCK_THREAD_CPUTIME_ID));
    if (given) {
        bench_policy(given, catalog, decisions);
    } else {
        bench_policy(NBX_SOURCE_DIR "/policies/margin_per_session.lua", catalog, decisions);
        bench_policy(lua_path, catalog, decisions);
        bench_policy(NBX_SOURCE_DIR "/policies/retention.lua", catalog, decisions);
    }
    unlink(lua_path);
    unlink(catalog_path);
    rmdir(dir);
    free(lua_path);
    free(catalog_path);
    nbx_catalog_unref(catalog);
    return 0;
}
