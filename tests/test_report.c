/* Suite: report (core/report.c): Student's t, Welch's interval, and the
 * intent-to-treat report of a deployment over a real store: who counts
 * where, which purchases count, and an uplift planted in simulated data
 * found again. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;
static nbx_store *store;

static void setup(void)
{
    dir = tu_tempdir("report");
    char *path = tu_path(dir, "store");
    cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &store), NBX_OK, "%s", nbx_last_errmsg());
    free(path);
}

static void teardown(void)
{
    nbx_store_close(store);
    tu_rmtree(dir);
    free(dir);
}

TestSuite(report, .init = setup, .fini = teardown, .timeout = 120);

/* ========================================================================
 * Student's t and Welch
 * ======================================================================== */

Test(report, t_quantiles_match_the_tables)
{
    struct {
        double p, df, t;
    } known[] = {
        {0.975, 1, 12.706204736},  {0.975, 2, 4.302652730},    {0.975, 3, 3.182446305},
        {0.975, 5, 2.570581836},   {0.975, 10, 2.228138852},   {0.975, 30, 2.042272456},
        {0.975, 100, 1.983971519}, {0.975, 1e12, 1.959963985}, {0.95, 3, 2.353363435},
        {0.995, 20, 2.845339707},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        double t = nbx_t_quantile(known[i].p, known[i].df);
        cr_assert_float_eq(t, known[i].t, 1e-6, "t(%g, %g): expected %.9f, got %.9f", known[i].p,
                           known[i].df, known[i].t, t);
    }
    cr_assert(isnan(nbx_t_quantile(0.5, 3)));
    cr_assert(isnan(nbx_t_quantile(1, 3)));
    cr_assert(isnan(nbx_t_quantile(0.975, 0)));
    cr_assert(isnan(nbx_t_quantile(0.975, NAN)));
}

static nbx_moments moments_of(const double *x, size_t n)
{
    nbx_moments m = {0};
    for (size_t i = 0; i < n; i++)
        nbx_moments_add(&m, x[i]);
    return m;
}

Test(report, welch_is_the_difference_with_its_t_interval)
{
    const double a[] = {27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6};
    const double b[] = {27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1};
    nbx_moments ma = moments_of(a, 12), mb = moments_of(b, 12);
    /* the textbook formulas, written out */
    double mean_a = 0, mean_b = 0, va = 0, vb = 0;
    for (int i = 0; i < 12; i++) {
        mean_a += a[i] / 12;
        mean_b += b[i] / 12;
    }
    for (int i = 0; i < 12; i++) {
        va += (a[i] - mean_a) * (a[i] - mean_a) / 11;
        vb += (b[i] - mean_b) * (b[i] - mean_b) / 11;
    }
    double se2 = va / 12 + vb / 12;
    double df = se2 * se2 / ((va / 12) * (va / 12) / 11 + (vb / 12) * (vb / 12) / 11);
    nbx_interval u;
    cr_assert(nbx_welch(&ma, &mb, 0.95, &u));
    cr_assert_float_eq(u.estimate, mean_a - mean_b, 1e-12);
    cr_assert_float_eq(u.df, df, 1e-9);
    double half = nbx_t_quantile(0.975, df) * sqrt(se2);
    cr_assert_float_eq(u.low, u.estimate - half, 1e-9);
    cr_assert_float_eq(u.high, u.estimate + half, 1e-9);
    cr_assert_lt(u.low, 0);
    cr_assert_gt(u.high, 0, "these two samples do not differ at 95 %%");

    /* no spread: the difference itself */
    const double same[] = {3, 3, 3};
    nbx_moments m3 = moments_of(same, 3), m0 = {0};
    const double zeros[] = {0, 0};
    nbx_moments mz = moments_of(zeros, 2);
    cr_assert(nbx_welch(&m3, &mz, 0.95, &u));
    cr_assert(u.estimate == 3 && u.low == 3 && u.high == 3 && isinf(u.df));
    /* fewer than two values: no interval */
    nbx_moments_add(&m0, 1);
    cr_assert_not(nbx_welch(&m0, &mz, 0.95, &u));
    cr_assert_not(nbx_welch(&m3, &m0, 0.95, &u));
    cr_assert(isnan(nbx_moments_variance(&m0)));
}

/* ========================================================================
 * The report over a store
 * ======================================================================== */

static nbx_deployment *deployment(const char *json)
{
    char *path = tu_path(dir, "d.json");
    cr_assert_eq(tu_write_file(path, json), 0);
    nbx_deployment *d;
    cr_assert_eq(nbx_deployment_open(path, NBX_DEPLOYMENT_NO_POLICIES, &d), NBX_OK, "%s",
                 nbx_last_errmsg());
    free(path);
    return d;
}

/* The first id c<N> the deployment assigns to arm, from c<*next> on. */
static void id_in(const nbx_deployment *d, const char *arm, int *next, char out[32])
{
    for (;; (*next)++) {
        snprintf(out, 32, "c%d", *next);
        if (strcmp(nbx_deployment_assign(d, out, strlen(out)), arm) == 0) {
            (*next)++;
            return;
        }
    }
}

static void apply(const char *fmt, ...) NBX_PRINTF(1, 2);
static void apply(const char *fmt, ...)
{
    char json[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json, sizeof json, fmt, ap);
    va_end(ap);
    int applied;
    cr_assert_eq(nbx_event_apply(store, json, strlen(json), &applied), NBX_OK, "%s: %s", json,
                 nbx_store_errmsg(store));
    cr_assert_eq(applied, 1, "%s", json);
}

static int64_t t(const char *s)
{
    int64_t ms;
    cr_assert_eq(nbx_time_parse(s, &ms), NBX_OK);
    return ms;
}

static const nbx_report_arm *arm_named(const nbx_report *r, const char *name)
{
    for (size_t i = 0; i < nbx_report_arm_count(r); i++)
        if (strcmp(nbx_report_arm_at(r, i)->name, name) == 0)
            return nbx_report_arm_at(r, i);
    cr_assert_fail("no arm %s in the report", name);
    return NULL;
}

#define HALF                                                                                       \
    "{\"name\":\"r\",\"salt\":\"s1\",\"holdout\":{\"percent\":50},"                                \
    "\"arms\":[{\"name\":\"all\",\"policy\":\"p.lua\",\"percent\":100}]}"

/* Every customer counts once in its assigned arm: with a profile and no
 * event, with events and no profile; only purchases dated in [from, to)
 * count; a purchase without margin counts 0; an erased customer not at
 * all. */
Test(report, every_customer_counts_once_in_its_assigned_arm)
{
    nbx_deployment *d = deployment(HALF);
    int next = 1;
    char a[32], b[32], c[32], dd[32], gone[32];
    id_in(d, "all", &next, a);
    id_in(d, "all", &next, b);
    id_in(d, "holdout", &next, c);
    id_in(d, "holdout", &next, dd);
    id_in(d, "all", &next, gone);
    char profile[64];
    snprintf(profile, sizeof profile, "{\"id\":\"%s\",\"ltv\":3}", a);
    cr_assert_eq(nbx_profile_put(store, profile, strlen(profile)), NBX_OK);
#define PURCHASE "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"purchase\",\"amount\":50"
    apply(PURCHASE ",\"margin\":10,\"ts\":\"2026-03-02T00:00:00Z\"}", "p1", b);
    apply(PURCHASE ",\"margin\":6,\"ts\":\"2026-03-31T23:59:59.999Z\"}", "p2", b);
    apply(PURCHASE ",\"ts\":\"2026-03-10T00:00:00Z\"}", "p3", b);
    apply(PURCHASE ",\"margin\":100,\"ts\":\"2026-02-28T23:59:59Z\"}", "early", b);
    apply(PURCHASE ",\"margin\":100,\"ts\":\"2026-04-01T00:00:00Z\"}", "late", b);
    apply("{\"event_id\":\"x\",\"customer\":\"%s\",\"type\":\"impression\",\"offer\":\"o1\","
          "\"ts\":\"2026-03-05T00:00:00Z\"}",
          c);
    apply(PURCHASE ",\"margin\":4,\"ts\":\"2026-03-05T00:00:00Z\"}", "p1", dd);
    apply(PURCHASE ",\"margin\":1000,\"ts\":\"2026-03-05T00:00:00Z\"}", "p1", gone);
    const char *erase[] = {gone};
    cr_assert_eq(nbx_profile_erase(store, erase, 1, NULL), NBX_OK);
    /* the arms' counters: days in the window and one outside */
    nbx_arm_deltas deltas = {0};
    nbx_arm_deltas_at(&deltas, NBX_SV("r"), NBX_SV("all"), nbx_day_of(t("2026-03-03T00:00:00Z")))
        ->decisions = 40;
    nbx_arm_counts *x = nbx_arm_deltas_at(&deltas, NBX_SV("r"), NBX_SV("all"),
                                          nbx_day_of(t("2026-03-31T00:00:00Z")));
    x->decisions = 10;
    x->accepts = 5;
    nbx_arm_deltas_at(&deltas, NBX_SV("r"), NBX_SV("all"), nbx_day_of(t("2026-04-01T00:00:00Z")))
        ->decisions = 1000;
    MDB_txn *txn;
    nbx_err e = {0};
    cr_assert_eq(nbx_store_write_begin(store, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_arm_deltas_write(&deltas, store, txn, &e), NBX_OK);
    cr_assert_eq(nbx_store_commit(store, txn, &e), NBX_OK);
    nbx_arm_deltas_free(&deltas);

    nbx_report *r;
    cr_assert_eq(
        nbx_report_experiment(store, d, t("2026-03-01T00:00:00Z"), t("2026-04-01T00:00:00Z"), &r),
        NBX_OK, "%s", nbx_store_errmsg(store));
    cr_assert_eq(nbx_report_arm_count(r), 2);
    cr_assert_str_eq(nbx_report_arm_at(r, 0)->name, "holdout");
    const nbx_report_arm *all = arm_named(r, "all"), *hold = arm_named(r, "holdout");
    cr_assert_eq(all->customers, 2, "a (profile only) and b; the erased one not");
    cr_assert_eq(all->buyers, 1);
    cr_assert_eq(all->purchases, 3);
    cr_assert_eq(all->purchases_without_margin, 1);
    cr_assert_float_eq(all->margin, 16, 1e-12);
    cr_assert_float_eq(all->margin_per_customer, 8, 1e-12);
    cr_assert_eq(all->decisions, 50, "the day after the window is not counted");
    cr_assert_eq(all->accepts, 5);
    cr_assert_float_eq(all->accept_rate, 0.1, 1e-12);
    cr_assert_eq(hold->customers, 2, "c (events, no profile) and d");
    cr_assert_float_eq(hold->margin_per_customer, 2, 1e-12);
    cr_assert_eq(hold->decisions, 0);
    cr_assert(isnan(hold->accept_rate));
    cr_assert_not(hold->has_uplift);
    cr_assert(all->has_uplift);
    cr_assert_float_eq(all->uplift, 6, 1e-12);
    cr_assert_lt(all->uplift_low, 6);
    cr_assert_gt(all->uplift_high, 6);

    /* the JSON says the same */
    size_t len;
    const char *text = nbx_report_json(r, &len);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    cr_assert_not_null(root, "%s: %s", jerr.text, text);
    json_t *arms = json_object_get(root, "arms");
    json_t *ja = json_object_get(arms, "all");
    cr_assert_eq(json_integer_value(json_object_get(ja, "customers")), 2);
    cr_assert_float_eq(json_number_value(json_object_get(ja, "margin_per_customer")), 8, 1e-9);
    json_t *up = json_object_get(ja, "uplift");
    cr_assert_float_eq(json_number_value(json_object_get(up, "estimate")), 6, 1e-9);
    cr_assert(json_is_number(json_object_get(up, "low")) &&
              json_is_number(json_object_get(up, "high")));
    cr_assert(json_is_null(json_object_get(json_object_get(arms, "holdout"), "uplift")));
    cr_assert(json_is_null(json_object_get(json_object_get(arms, "holdout"), "accept_rate")));
    cr_assert_str_eq(json_string_value(json_object_get(root, "from")), "2026-03-01T00:00:00Z");
    json_decref(root);
    nbx_report_close(r);
    nbx_deployment_close(d);
}

/* Simulated purchases whose margin depends on the arm: the interval of
 * each arm's uplift holds what was planted, and excludes 0 where the
 * planted uplift is large against the noise. The generator is seeded: the
 * data, and so the result, are the same every run. */
Test(report, an_uplift_planted_in_simulated_data_is_found)
{
    nbx_deployment *d =
        deployment("{\"name\":\"sim\",\"salt\":\"sim-1\",\"holdout\":{\"percent\":20},\"arms\":["
                   "{\"name\":\"same\",\"policy\":\"p.lua\",\"percent\":50},"
                   "{\"name\":\"better\",\"policy\":\"p.lua\",\"percent\":50}]}");
    char *path = tu_path(dir, "events.jsonl");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    uint64_t seed = 42;
    for (int i = 0; i < 6000; i++) {
        char id[16];
        snprintf(id, sizeof id, "s%05d", i);
        const char *arm = nbx_deployment_assign(d, id, strlen(id));
        double planted = strcmp(arm, "better") == 0 ? 5.0 : 0.0;
        /* margins of 5 to 35 around 20, uniform, plus the arm's uplift */
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        double noise = (double)(seed >> 11) / 9007199254740992.0 * 30.0 - 15.0;
        fprintf(f,
                "{\"event_id\":\"p-%d\",\"customer\":\"%s\",\"type\":\"purchase\",\"amount\":80,"
                "\"margin\":%.4f,\"ts\":\"2026-03-%02dT12:00:00Z\"}\n",
                i, id, 20.0 + planted + noise, 1 + i % 28);
    }
    cr_assert_eq(fclose(f), 0);
    nbx_import_stats st;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, path, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 6000);
    nbx_report *r;
    cr_assert_eq(
        nbx_report_experiment(store, d, t("2026-03-01T00:00:00Z"), t("2026-04-01T00:00:00Z"), &r),
        NBX_OK, "%s", nbx_store_errmsg(store));
    const nbx_report_arm *same = arm_named(r, "same"), *better = arm_named(r, "better"),
                         *hold = arm_named(r, "holdout");
    cr_assert_eq(same->customers + better->customers + hold->customers, 6000);
    cr_assert_float_eq((double)hold->customers / 6000, 0.20, 0.02);
    cr_assert(better->has_uplift && same->has_uplift);
    cr_assert(better->uplift_low <= 5.0 && 5.0 <= better->uplift_high,
              "planted 5, interval [%.3f, %.3f]", better->uplift_low, better->uplift_high);
    cr_assert_gt(better->uplift_low, 0, "a planted 5 against a noise of sd 8.7: found");
    cr_assert(same->uplift_low <= 0.0 && 0.0 <= same->uplift_high,
              "planted 0, interval [%.3f, %.3f]", same->uplift_low, same->uplift_high);
    /* about 2 x 1.96 x 8.66 x sqrt(1/1200 + 1/2400): 1.2 wide */
    cr_assert_lt(better->uplift_high - better->uplift_low, 2.0);
    nbx_report_close(r);
    nbx_deployment_close(d);
    free(path);
}

Test(report, misuse_is_refused)
{
    nbx_deployment *d = deployment(HALF);
    nbx_report *r = (nbx_report *)1;
    cr_assert_eq(nbx_report_experiment(NULL, d, 0, 1, &r), NBX_EINVAL);
    cr_assert_null(r);
    cr_assert_eq(nbx_report_experiment(store, NULL, 0, 1, &r), NBX_EINVAL);
    cr_assert_eq(nbx_report_experiment(store, d, 0, 1, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_report_experiment(store, d, 5, 5, &r), NBX_EINVAL);
    cr_assert(strstr(nbx_store_errmsg(store), "window") != NULL, "%s", nbx_store_errmsg(store));
    cr_assert_eq(nbx_report_experiment(store, d, -1, 5, &r), NBX_EINVAL);
    cr_assert_eq(nbx_report_arm_count(NULL), 0);
    cr_assert_null(nbx_report_arm_at(NULL, 0));
    cr_assert_null(nbx_report_json(NULL, NULL));
    nbx_report_close(NULL);
    /* an empty store: every arm with no customer, no uplift */
    cr_assert_eq(nbx_report_experiment(store, d, 0, 1, &r), NBX_OK);
    cr_assert_eq(nbx_report_arm_at(r, 1)->customers, 0);
    cr_assert(isnan(nbx_report_arm_at(r, 1)->margin_per_customer));
    cr_assert_not(nbx_report_arm_at(r, 1)->has_uplift);
    cr_assert_null(nbx_report_arm_at(r, 2));
    nbx_report_close(r);
    nbx_deployment_close(d);
}
