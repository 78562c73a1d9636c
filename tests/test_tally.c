/* Suite: tally (core/tally.c): an engine context's decisions counted per
 * arm and flushed into the store's arm counters (every 1,000 decisions or
 * second, and when the context closes), on real stores with real engines;
 * and the canary abort's rules. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

/* 2026-03-10T12:00:00Z: inside every validity window of the fixture. */
#define NOW INT64_C(1773144000000)

static char *dir, *store_dir, *catalog_path;

static void setup(void)
{
    dir = tu_tempdir("tally");
    store_dir = tu_path(dir, "store");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_CREATE, &s), NBX_OK, "%s", nbx_last_errmsg());
    nbx_store_close(s);
    catalog_path = tu_source_path("tests/data/catalog.json");
    char *p = tu_path(dir, "by_price.lua");
    cr_assert_eq(tu_write_file(p, "return {name = 'by_price',\n"
                                  "  score = function(o) return o.price, o.margin end}\n"),
                 0);
    free(p);
    /* fails for customers whose profile says flaky: synthetic customers
     * (trials) have no such attribute, so the engine opens */
    p = tu_path(dir, "flaky.lua");
    cr_assert_eq(tu_write_file(p, "return {name = 'flaky', score = function(o, c)\n"
                                  "  if c.attrs.flaky then error('flaky customer') end\n"
                                  "  return o.price, o.margin end}\n"),
                 0);
    free(p);
}

static void teardown(void)
{
    tu_rmtree(dir);
    free(dir);
    free(store_dir);
    free(catalog_path);
}

TestSuite(tally, .init = setup, .fini = teardown, .timeout = 300);

#define DEPLOYMENT(abort)                                                                          \
    "{\"name\":\"q4\",\"salt\":\"q4-2026\",\"holdout\":{\"percent\":10},\"arms\":["                \
    "{\"name\":\"champion\",\"policy\":\"by_price.lua\",\"percent\":50},"                          \
    "{\"name\":\"challenger\",\"policy\":\"flaky.lua\",\"percent\":50" abort "}]}"

static nbx_engine *open_engine(const char *deployment_json, unsigned flags)
{
    char *path = tu_path(dir, "q4.json");
    cr_assert_eq(tu_write_file(path, deployment_json), 0);
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.deployment = path;
    o.flags = flags;
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "engine: %s", nbx_last_errmsg());
    free(path);
    return e;
}

/* Every 20th customer (c00000, c00020, ...) has a profile that makes the
 * flaky policy fail: 5 %. */
static void put_flaky_profiles(int n)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    for (int i = 0; i < n; i += 20) {
        char json[160];
        snprintf(json, sizeof json,
                 "{\"id\":\"c%05d\",\"consent\":{\"personalization\":true},"
                 "\"attrs\":{\"flaky\":true}}",
                 i);
        cr_assert_eq(nbx_profile_put(s, json, strlen(json)), NBX_OK, "%s", nbx_store_errmsg(s));
    }
    nbx_store_close(s);
}

typedef struct arm_figures {
    nbx_arm_counts arms[3]; /* holdout, champion, challenger */
    int rows;
} arm_figures;

static int take(void *ud, const nbx_arm_counters *c)
{
    arm_figures *f = ud;
    int i = strcmp(c->arm, "holdout") == 0 ? 0 : strcmp(c->arm, "champion") == 0 ? 1 : 2;
    f->arms[i] = (nbx_arm_counts){.decisions = c->decisions,
                                  .fallbacks = c->fallbacks,
                                  .errors = c->errors,
                                  .expected_margin = c->expected_margin};
    f->rows++;
    return 0;
}

static arm_figures stored(void)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_READONLY, &s), NBX_OK);
    arm_figures f;
    memset(&f, 0, sizeof f);
    cr_assert_eq(nbx_arm_counters_read(s, "q4", 0, 0, take, &f), NBX_OK, "%s", nbx_store_errmsg(s));
    nbx_store_close(s);
    return f;
}

/* What the results said, per arm. */
typedef struct served {
    uint64_t decisions[3], fallbacks[3];
    double expected_margin[3];
} served;

static void decide_n(nbx_ctx *c, int from, int to, served *out)
{
    for (int i = from; i < to; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%05d", i);
        nbx_request req;
        nbx_request_init(&req);
        req.customer = id;
        req.now_ms = NOW;
        const nbx_result *r;
        cr_assert_eq(nbx_decide(c, &req, &r), NBX_OK, "%s: %s", id, nbx_ctx_errmsg(c));
        const char *arm = nbx_result_arm(r);
        int k = strcmp(arm, "holdout") == 0 ? 0 : strcmp(arm, "champion") == 0 ? 1 : 2;
        out->decisions[k]++;
        out->fallbacks[k] += nbx_result_fallback(r) != 0;
        out->expected_margin[k] += nbx_result_expected_margin(r);
    }
}

Test(tally, a_context_s_decisions_reach_the_arm_counters_when_it_closes)
{
    put_flaky_profiles(600);
    nbx_engine *e = open_engine(DEPLOYMENT(""), 0);
    arm_figures f = stored();
    cr_assert_eq(f.rows, 0, "the engine's trials at open count for no arm");
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    served s;
    memset(&s, 0, sizeof s);
    decide_n(c, 0, 600, &s);
    nbx_ctx_close(c);
    f = stored();
    cr_assert_eq(f.rows, 3);
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(f.arms[k].decisions, s.decisions[k], "arm %d: %llu stored, %llu served", k,
                     (unsigned long long)f.arms[k].decisions, (unsigned long long)s.decisions[k]);
        cr_assert_eq(f.arms[k].fallbacks, s.fallbacks[k], "arm %d: fallbacks", k);
        cr_assert_float_eq(f.arms[k].expected_margin, s.expected_margin[k], 1e-6, "arm %d", k);
        cr_assert_eq(f.arms[k].errors, 0);
    }
    cr_assert_gt(s.fallbacks[2], 0, "the flaky arm failed for some");
    cr_assert_eq(s.fallbacks[1], 0);
    cr_assert_eq(s.fallbacks[0], 0, "the holdout's control treatment is no fallback");
    nbx_engine_close(e);
}

/* A running context never holds back 1,000 decisions or more: whatever
 * the clock does, after each decision fewer than 1,000 are unflushed. */
Test(tally, a_running_context_flushes_every_thousand_decisions_at_most)
{
    nbx_engine *e = open_engine(DEPLOYMENT(""), 0);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    served s;
    memset(&s, 0, sizeof s);
    decide_n(c, 0, 2500, &s);
    arm_figures f = stored();
    uint64_t in_store = f.arms[0].decisions + f.arms[1].decisions + f.arms[2].decisions;
    cr_assert_geq(in_store, 2500 - 999, "%llu of 2500 decisions in the store",
                  (unsigned long long)in_store);
    cr_assert_leq(in_store, 2500);
    nbx_ctx_close(c);
    f = stored();
    cr_assert_eq(f.arms[0].decisions + f.arms[1].decisions + f.arms[2].decisions, 2500);
    nbx_engine_close(e);
}

Test(tally, a_read_only_engine_decides_and_writes_no_counter)
{
    nbx_engine *e = open_engine(DEPLOYMENT(""), NBX_ENGINE_READONLY);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    served s;
    memset(&s, 0, sizeof s);
    decide_n(c, 0, 1500, &s);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    cr_assert_eq(stored().rows, 0);
}

/* ========================================================================
 * The abort rules
 * ======================================================================== */

static nbx_arm arm_with(const char *name, uint64_t min, double max_fallback, double ratio)
{
    nbx_arm a;
    memset(&a, 0, sizeof a);
    snprintf(a.name, sizeof a.name, "%s", name);
    a.abort = (nbx_arm_abort){min, max_fallback, ratio};
    return a;
}

Test(tally, abort_rules_judge_past_min_decisions_only)
{
    nbx_arm first = arm_with("champion", 0, NAN, NAN);
    nbx_arm canary = arm_with("challenger", 1000, 0.01, 0.8);
    nbx_arm_counts fc = {.decisions = 10000, .accepts = 500}; /* 5 % */
    char why[512] = "";
    /* 5 % fallbacks, but only 999 decisions: not judged yet */
    nbx_arm_counts c = {.decisions = 999, .fallbacks = 50, .accepts = 50};
    cr_assert_eq(nbx_abort_judge(&canary, &c, &first, &fc, why, sizeof why), 0);
    c.decisions = 1000;
    cr_assert_eq(nbx_abort_judge(&canary, &c, &first, &fc, why, sizeof why), 1);
    cr_assert(strstr(why, "max_fallback_rate: fallback rate 0.0500 (50 fallbacks of 1000 "
                          "decisions) is above 0.01"),
              "%s", why);
    /* at the limit: kept */
    c.fallbacks = 10;
    cr_assert_eq(nbx_abort_judge(&canary, &c, &first, &fc, why, sizeof why), 0);
    /* accept rate 3.9 % against 0.8 x 5 % = 4 %: aborted */
    c.accepts = 39;
    cr_assert_eq(nbx_abort_judge(&canary, &c, &first, &fc, why, sizeof why), 1);
    cr_assert(strstr(why, "min_accept_rate_ratio: accept rate 0.0390 (39 accepts of 1000 "
                          "decisions) is below 0.8 x 0.0500, the accept rate of arm 'champion' "
                          "(500 of 10000)"),
              "%s", why);
    c.accepts = 40;
    cr_assert_eq(nbx_abort_judge(&canary, &c, &first, &fc, why, sizeof why), 0);
    /* without the first arm's decisions there is nothing to compare with */
    nbx_arm_counts none = {0};
    c.accepts = 0;
    cr_assert_eq(nbx_abort_judge(&canary, &c, &first, &none, why, sizeof why), 0);
    /* rules not set: never judged */
    nbx_arm plain = arm_with("plain", 0, NAN, NAN);
    c.fallbacks = 1000;
    cr_assert_eq(nbx_abort_judge(&plain, &c, &first, &fc, why, sizeof why), 0);
    nbx_arm fallback_only = arm_with("fb", 10, 0.5, NAN);
    cr_assert_eq(nbx_abort_judge(&fallback_only, &c, &first, &fc, why, sizeof why), 1);
    c.fallbacks = 0;
    cr_assert_eq(nbx_abort_judge(&fallback_only, &c, &first, &fc, why, sizeof why), 0,
                 "no accept rule: a low accept rate is no abort");
    /* the first arm against itself: its accept rule never fires */
    nbx_arm first_ruled = arm_with("champion", 10, NAN, 0.8);
    cr_assert_eq(nbx_abort_judge(&first_ruled, &c, &first_ruled, &c, why, sizeof why), 0);
}

/* ========================================================================
 * Canary abort, end to end
 * ======================================================================== */

typedef struct kill_seen {
    int n;
    char name[160], by[32], reason[1100];
} kill_seen;

static int take_kill(void *ud, const nbx_kill_info *k)
{
    kill_seen *s = ud;
    if (k->kind == NBX_KILL_ARM) {
        snprintf(s->name, sizeof s->name, "%s", k->name);
        snprintf(s->by, sizeof s->by, "%s", k->by);
        snprintf(s->reason, sizeof s->reason, "%s", k->reason);
        s->n++;
    }
    return 0;
}

static kill_seen arm_kills(unsigned flags)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_READONLY, &s), NBX_OK);
    kill_seen k;
    memset(&k, 0, sizeof k);
    cr_assert_eq(nbx_kills_read(s, flags, take_kill, &k), NBX_OK, "%s", nbx_store_errmsg(s));
    nbx_store_close(s);
    return k;
}

/* A batch of n customers c00000.. on two threads; returns how many the
 * challenger served. */
static uint64_t run_batch(nbx_engine *e, int n)
{
    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.threads = 2;
    o.now_ms = NOW;
    nbx_batch *b;
    cr_assert_eq(nbx_batch_open(e, &o, &b), NBX_OK, "%s", nbx_last_errmsg());
    uint64_t challenger = 0;
    const nbx_batch_item *it;
    for (int i = 0; i < n; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%05d", i);
        while (nbx_batch_space(b) == 0 && nbx_batch_next(b, &it) == NBX_OK)
            challenger += it->arm && strcmp(it->arm, "challenger") == 0;
        cr_assert_eq(nbx_batch_submit(b, id, NULL, 0, NULL), NBX_OK, "%s", nbx_batch_errmsg(b));
    }
    while (nbx_batch_next(b, &it) == NBX_OK) {
        cr_assert_eq(it->status, NBX_OK, "%s: %s", it->customer, it->errmsg);
        challenger += it->arm && strcmp(it->arm, "challenger") == 0;
    }
    nbx_batch_close(b);
    return challenger;
}

/* The test: a challenger that fails for 5 % of its customers, with
 * max_fallback_rate 1 %, is killed by the abort once it has served
 * min_decisions, in the batch, with the rule and figures as reason; its
 * customers then go to the first arm, in the next batch too. */
Test(tally, a_challenger_failing_for_five_percent_is_aborted_in_a_batch)
{
    put_flaky_profiles(4000);
    nbx_engine *e =
        open_engine(DEPLOYMENT(",\"abort\":{\"min_decisions\":500,\"max_fallback_rate\":0.01}"), 0);
    cr_assert_eq(arm_kills(0).n, 0);
    uint64_t by_challenger = run_batch(e, 4000);
    cr_assert_geq(by_challenger, 500, "the challenger served %llu: not enough to judge",
                  (unsigned long long)by_challenger);
    kill_seen k = arm_kills(0);
    cr_assert_eq(k.n, 1, "the challenger is not killed after %llu decisions",
                 (unsigned long long)by_challenger);
    cr_assert_str_eq(k.name, "q4.challenger");
    cr_assert_str_eq(k.by, "abort");
    cr_assert(strstr(k.reason, "max_fallback_rate: fallback rate 0.0") &&
                  strstr(k.reason, "is above 0.01"),
              "reason: %s", k.reason);
    /* and `nbx kill --list` shows it */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s/nbx' kill --list --store '%s'", NBX_BINARY_DIR, store_dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char out[4096];
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = '\0';
    cr_assert_eq(pclose(p), 0, "%s: %s", cmd, out);
    cr_assert(strstr(out, "q4.challenger") && strstr(out, "by abort: max_fallback_rate"),
              "nbx kill --list: %s", out);
    /* once: later flushes do not abort it again */
    cr_assert_eq(arm_kills(NBX_KILLS_HISTORY).n, 1);
    arm_figures f = stored();
    cr_assert_geq(f.arms[2].decisions, 500);
    cr_assert_gt(f.arms[2].fallbacks * 100, f.arms[2].decisions, "above 1 %% of fallbacks");
    /* its customers return to the first arm */
    nbx_deployment *d = nbx_engine_deployment(e);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    int checked = 0;
    for (int i = 0; i < 200; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%05d", i);
        if (strcmp(nbx_deployment_assign(d, id, strlen(id)), "challenger") != 0)
            continue;
        nbx_request req;
        nbx_request_init(&req);
        req.customer = id;
        req.now_ms = NOW;
        const nbx_result *r;
        cr_assert_eq(nbx_decide(c, &req, &r), NBX_OK);
        cr_assert_str_eq(nbx_result_arm(r), "champion", "%s after the abort", id);
        checked++;
    }
    cr_assert_gt(checked, 0);
    nbx_deployment_close(d); /* nbx_engine_deployment() gave a reference */
    nbx_ctx_close(c);
    nbx_engine_close(e);
    /* a batch again: the arm stays killed, once */
    e = open_engine(DEPLOYMENT(",\"abort\":{\"min_decisions\":500,\"max_fallback_rate\":0.01}"), 0);
    cr_assert_eq(run_batch(e, 1000), 0, "a killed arm serves no one");
    nbx_engine_close(e);
    cr_assert_eq(arm_kills(NBX_KILLS_HISTORY).n, 1);
}

/* An arm killed by hand by its name alone (every deployment's arm of that
 * name) is killed already: the abort, judging its counters later, does not
 * kill it a second time as DEPLOYMENT.ARM. */
Test(tally, an_arm_killed_by_its_name_alone_is_not_aborted_again)
{
    put_flaky_profiles(4000);
    /* counters that break the rule, judged only past 100,000 decisions */
    nbx_engine *e = open_engine(
        DEPLOYMENT(",\"abort\":{\"min_decisions\":100000,\"max_fallback_rate\":0.01}"), 0);
    cr_assert_geq(run_batch(e, 4000), 500);
    nbx_engine_close(e);
    cr_assert_eq(arm_kills(0).n, 0);

    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_kill(s, NBX_KILL_ARM, "challenger", "looks wrong", "cli"), NBX_OK, "%s",
                 nbx_store_errmsg(s));
    nbx_store_close(s);

    /* the same counters judged past 500 decisions: broken, but killed */
    e = open_engine(DEPLOYMENT(",\"abort\":{\"min_decisions\":500,\"max_fallback_rate\":0.01}"),
                    0);
    cr_assert_eq(run_batch(e, 1000), 0, "an arm killed by its name alone served");
    nbx_engine_close(e);
    kill_seen k = arm_kills(NBX_KILLS_HISTORY);
    cr_assert_eq(k.n, 1, "killed again (last: %s by %s)", k.name, k.by);
    cr_assert_str_eq(k.name, "challenger");
    cr_assert_str_eq(k.by, "cli");
}

/* A challenger within its rules is left alone; one whose accept rate falls
 * below the ratio of the first arm's is aborted. */
Test(tally, accept_rates_are_compared_with_the_first_arm_s)
{
    nbx_engine *e =
        open_engine(DEPLOYMENT(",\"abort\":{\"min_decisions\":100,\"max_fallback_rate\":0.5,"
                               "\"min_accept_rate_ratio\":0.8}"),
                    0);
    /* accepts attributed by decision id: the champion 10 of its first
     * decisions, the challenger none */
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    int champion_accepts = 0;
    for (int i = 0; i < 400; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%05d", i);
        nbx_request req;
        nbx_request_init(&req);
        req.customer = id;
        req.now_ms = NOW;
        const nbx_result *r;
        cr_assert_eq(nbx_decide(c, &req, &r), NBX_OK);
        nbx_action a;
        if (strcmp(nbx_result_arm(r), "champion") == 0 && champion_accepts < 10 &&
            nbx_result_action(r, 0, &a) == NBX_OK) {
            char ev[400];
            snprintf(ev, sizeof ev,
                     "{\"event_id\":\"a%d\",\"customer\":\"%s\",\"type\":\"accept\","
                     "\"offer\":\"%s\",\"decision_id\":\"%s\",\"ts\":%lld}",
                     i, id, a.offer, nbx_result_decision_id(r), (long long)(NOW / 1000));
            int applied;
            cr_assert_eq(nbx_record(c, ev, strlen(ev), &applied), NBX_OK, "%s", nbx_ctx_errmsg(c));
            champion_accepts++;
        }
    }
    nbx_ctx_close(c);
    cr_assert_eq(champion_accepts, 10);
    kill_seen k = arm_kills(0);
    cr_assert_eq(k.n, 1);
    cr_assert(strstr(k.reason, "min_accept_rate_ratio: accept rate 0.0000 (0 accepts of "),
              "reason: %s", k.reason);
    /* judged at a flush: the champion's accepts as they were by then */
    cr_assert(strstr(k.reason, "the accept rate of arm 'champion' ("), "reason: %s", k.reason);
    nbx_engine_close(e);
}
