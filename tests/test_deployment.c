/* Suite: deployment (core/deployment.c): loading, validation, assignment. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;

static const char *const policy_a = "return {name = 'a', score = function(o) return 1 end}\n";
static const char *const policy_b = "return {name = 'b', score = function(o) return 2 end}\n";

static void setup(void)
{
    dir = tu_tempdir("deployment");
    cr_assert_not_null(dir);
    char *a = tu_path(dir, "a.lua"), *b = tu_path(dir, "b.lua");
    cr_assert_eq(tu_write_file(a, policy_a), 0);
    cr_assert_eq(tu_write_file(b, policy_b), 0);
    free(a);
    free(b);
}

static void teardown(void)
{
    tu_rmtree(dir);
    free(dir);
}

TestSuite(deployment, .init = setup, .fini = teardown);

/* Write text as DIR/d.json and load it; the message stays in e. */
static int load(const char *text, unsigned flags, nbx_deployment **out, nbx_err *e)
{
    char *path = tu_path(dir, "d.json");
    cr_assert_eq(tu_write_file(path, text), 0);
    int rc = nbx_deployment_load(path, flags, out, e);
    free(path);
    return rc;
}

static nbx_deployment *load_ok(const char *text)
{
    nbx_err e = {0};
    nbx_deployment *d = NULL;
    int rc = load(text, 0, &d, &e);
    cr_assert_eq(rc, NBX_OK, "expected the deployment to load, got %d: %s", rc, e.msg);
    cr_assert_not_null(d);
    return d;
}

/* The load must fail with code, leave no deployment, and its message must
 * hold every one of the words given (NULL-terminated). */
static void refused(const char *text, int code, const char *const *words)
{
    nbx_err e = {0};
    nbx_deployment *d = (nbx_deployment *)&e; /* must be set to NULL */
    int rc = load(text, 0, &d, &e);
    cr_assert_eq(rc, code, "expected %d for %s, got %d: %s", code, text, rc, e.msg);
    cr_assert_null(d, "a refused file must yield no deployment");
    for (size_t i = 0; words[i]; i++)
        cr_assert(strstr(e.msg, words[i]), "expected '%s' in the message, got: %s", words[i],
                  e.msg);
}

#define REFUSED(text, code, ...) refused(text, code, (const char *const[]){__VA_ARGS__, NULL})

static const char *const issue_example =
    "{\"name\": \"q4\", \"salt\": \"q4-2026\",\n"
    " \"holdout\": {\"percent\": 5},\n"
    " \"arms\": [\n"
    "   {\"name\": \"champion\", \"policy\": \"a.lua\", \"percent\": 90},\n"
    "   {\"name\": \"challenger\", \"policy\": \"b.lua\", \"percent\": 10,\n"
    "    \"abort\": {\"min_decisions\": 1000, \"max_fallback_rate\": 0.01, "
    "\"min_accept_rate_ratio\": 0.8}}],\n"
    " \"shadow\": [\"b.lua\"]}\n";

/* ========================================================================
 * Loading
 * ======================================================================== */

Test(deployment, loads_the_issue_s_example)
{
    nbx_deployment *d = load_ok(issue_example);
    cr_assert_str_eq(d->name, "q4");
    cr_assert_eq(d->salt_len, 7);
    cr_assert_eq(d->holdout_buckets, 500);
    cr_assert_eq(d->n_arms, 2);
    cr_assert_str_eq(d->arms[0].name, "champion");
    cr_assert_eq(d->arms[0].percent, 9000);
    cr_assert_not_null(d->arms[1].policy);
    cr_assert_eq(d->arms[0].abort.min_decisions, 0, "the champion has no abort rules");
    cr_assert_eq(d->arms[1].abort.min_decisions, 1000);
    cr_assert_float_eq(d->arms[1].abort.max_fallback_rate, 0.01, 1e-12);
    cr_assert_float_eq(d->arms[1].abort.min_accept_rate_ratio, 0.8, 1e-12);
    cr_assert_eq(d->n_shadow, 1);
    cr_assert_not_null(d->shadow[0]);
    /* [500, 9050) champion, [9050, 10000) challenger */
    cr_assert_eq(d->arms[0].bucket_lo, 500);
    cr_assert_eq(d->arms[0].bucket_hi, 500 + 9500 * 9000 / 10000);
    cr_assert_eq(d->arms[1].bucket_lo, d->arms[0].bucket_hi);
    cr_assert_eq(d->arms[1].bucket_hi, 10000);
    char hex[17];
    nbx_hex64(nbx_hash64(issue_example, strlen(issue_example), 0), hex);
    cr_assert_str_eq(d->version_hex, hex, "the version is the xxh64 of the file");
    nbx_deployment_unref(d);
}

Test(deployment, policy_paths_are_relative_to_the_file_not_the_working_directory)
{
    char *sub = tu_path(dir, "deploy");
    char *pol = tu_path(dir, "deploy/p/x.lua");
    char *file = tu_path(dir, "deploy/d.json");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/p'", sub);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(tu_write_file(pol, policy_a), 0);
    cr_assert_eq(tu_write_file(file, "{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"only\","
                                     "\"policy\":\"p/x.lua\",\"percent\":100}]}"),
                 0);
    nbx_err e = {0};
    nbx_deployment *d = NULL;
    cr_assert_eq(nbx_deployment_load(file, 0, &d, &e), NBX_OK, "%s", e.msg);
    cr_assert_str_eq(d->arms[0].policy_path, pol);
    nbx_deployment_unref(d);
    free(sub);
    free(pol);
    free(file);
}

Test(deployment, absolute_policy_paths_stay_absolute)
{
    char *a = tu_path(dir, "a.lua");
    char json[4096];
    snprintf(json, sizeof json,
             "{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"%s\","
             "\"percent\":100}]}",
             a);
    nbx_deployment *d = load_ok(json);
    cr_assert_str_eq(d->arms[0].policy_path, a);
    nbx_deployment_unref(d);
    free(a);
}

Test(deployment, without_policies_the_files_are_not_read)
{
    nbx_err e = {0};
    nbx_deployment *d = NULL;
    int rc = load("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":"
                  "\"gone.lua\",\"percent\":100}],\"shadow\":[\"gone2.lua\"]}",
                  NBX_DEPLOYMENT_NO_POLICIES, &d, &e);
    cr_assert_eq(rc, NBX_OK, "%s", e.msg);
    cr_assert_null(d->arms[0].policy);
    cr_assert_null(d->shadow[0]);
    nbx_deployment_unref(d);
}

Test(deployment, holdout_and_shadow_are_optional)
{
    nbx_deployment *d = load_ok("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\","
                                "\"policy\":\"a.lua\",\"percent\":100}]}");
    cr_assert_eq(d->holdout_buckets, 0);
    cr_assert_eq(d->n_shadow, 0);
    nbx_deployment_unref(d);
}

/* ========================================================================
 * Refusals: each names the file, the arm and the field
 * ======================================================================== */

#define ARM_A "{\"name\":\"x\",\"policy\":\"a.lua\",\"percent\":100}"

Test(deployment, refuses_what_is_not_a_deployment)
{
    REFUSED("{\"name\": ", NBX_EPARSE, "d.json:1:");
    REFUSED("[1]", NBX_EPARSE, "d.json", "must be a JSON object");
    REFUSED("{\"name\":\"r\",\"name\":\"s\"}", NBX_EPARSE, "d.json", "duplicate");
}

Test(deployment, refuses_bad_names)
{
    REFUSED("{\"salt\":\"s\",\"arms\":[" ARM_A "]}", NBX_EPARSE, "field 'name'", "required");
    REFUSED("{\"name\":\"q 4\",\"salt\":\"s\",\"arms\":[" ARM_A "]}", NBX_EPARSE, "field 'name'",
            "A-Z");
    REFUSED("{\"name\":\"\",\"salt\":\"s\",\"arms\":[" ARM_A "]}", NBX_EPARSE, "field 'name'");
    char longname[200];
    snprintf(longname, sizeof longname, "{\"name\":\"%065d\",\"salt\":\"s\",\"arms\":[" ARM_A "]}",
             0);
    REFUSED(longname, NBX_EPARSE, "field 'name'", "1 to 64");
    /* decision ids split at the first '.' after the UUID: an arm's name may
     * hold one, the deployment's not */
    REFUSED("{\"name\":\"q4.v2\",\"salt\":\"s\",\"arms\":[" ARM_A "]}", NBX_EPARSE,
            "field 'name'", "must not contain '.'");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"a/b\",\"policy\":\"a.lua\","
            "\"percent\":100}]}",
            NBX_EPARSE, "arms[0]", "field 'name'");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"holdout\",\"policy\":\"a.lua\","
            "\"percent\":100}]}",
            NBX_EPARSE, "arm 'holdout'", "reserved");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
            "\"percent\":50},{\"name\":\"x\",\"policy\":\"b.lua\",\"percent\":50}]}",
            NBX_EPARSE, "arm 'x'", "field 'name'", "duplicate");
}

Test(deployment, refuses_a_missing_or_bad_salt)
{
    REFUSED("{\"name\":\"r\",\"arms\":[" ARM_A "]}", NBX_EPARSE, "field 'salt'", "required");
    REFUSED("{\"name\":\"r\",\"salt\":\"\",\"arms\":[" ARM_A "]}", NBX_EPARSE, "field 'salt'");
    REFUSED("{\"name\":\"r\",\"salt\":7,\"arms\":[" ARM_A "]}", NBX_EPARSE, "field 'salt'");
}

Test(deployment, refuses_unknown_fields_naming_the_known_ones)
{
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arm\":[]}", NBX_EPARSE, "field 'arm'",
            "unknown field", "arms");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
            "\"percent\":100,\"weight\":1}]}",
            NBX_EPARSE, "arm 'x'", "field 'weight'", "unknown");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"holdout\":{\"pct\":5},\"arms\":[" ARM_A "]}",
            NBX_EPARSE, "holdout", "field 'pct'", "percent");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[" ARM_A ",{\"name\":\"y\",\"policy\":"
            "\"b.lua\",\"percent\":0,\"abort\":{\"min_decisions\":5,\"max_fallbacks\":1}}]}",
            NBX_EPARSE, "arm 'y'", "field 'abort.max_fallbacks'", "max_fallback_rate");
}

Test(deployment, refuses_percents_that_do_not_share_the_customers)
{
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
            "\"percent\":60},{\"name\":\"y\",\"policy\":\"b.lua\",\"percent\":30}]}",
            NBX_EPARSE, "field 'arms'", "90.00, not 100");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
            "\"percent\":101}]}",
            NBX_EPARSE, "arm 'x'", "field 'percent'", "0 to 100");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
            "\"percent\":-1}]}",
            NBX_EPARSE, "arm 'x'", "field 'percent'");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
            "\"percent\":\"100\"}]}",
            NBX_EPARSE, "arm 'x'", "field 'percent'");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
            "\"percent\":99.995},{\"name\":\"y\",\"policy\":\"b.lua\",\"percent\":0.005}]}",
            NBX_EPARSE, "arm 'x'", "field 'percent'", "two decimals");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\"}]}",
            NBX_EPARSE, "arm 'x'", "field 'percent'", "required");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"holdout\":{\"percent\":100.5},\"arms\":[" ARM_A "]}",
            NBX_EPARSE, "holdout", "field 'percent'");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"holdout\":5,\"arms\":[" ARM_A "]}", NBX_EPARSE,
            "field 'holdout'", "object");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[]}", NBX_EPARSE, "field 'arms'", "non-empty");
}

Test(deployment, two_decimals_are_honoured)
{
    nbx_deployment *d = load_ok(
        "{\"name\":\"r\",\"salt\":\"s\",\"holdout\":{\"percent\":0.5},\"arms\":[{\"name\":\"x\","
        "\"policy\":\"a.lua\",\"percent\":99.99},{\"name\":\"y\",\"policy\":\"b.lua\","
        "\"percent\":0.01}]}");
    cr_assert_eq(d->holdout_buckets, 50);
    cr_assert_eq(d->arms[0].percent, 9999);
    cr_assert_eq(d->arms[1].percent, 1);
    nbx_deployment_unref(d);
}

Test(deployment, refuses_too_many_arms_and_shadows)
{
    char json[8192];
    int n = snprintf(json, sizeof json, "{\"name\":\"r\",\"salt\":\"s\",\"arms\":[");
    for (int i = 0; i <= NBX_DEPLOYMENT_ARMS_MAX; i++)
        n += snprintf(json + n, sizeof json - (size_t)n,
                      "%s{\"name\":\"a%d\",\"policy\":\"a.lua\",\"percent\":%d}", i ? "," : "", i,
                      i ? 0 : 100);
    snprintf(json + n, sizeof json - (size_t)n, "]}");
    REFUSED(json, NBX_ELIMIT, "field 'arms'", "limit is 16");
    n = snprintf(json, sizeof json,
                 "{\"name\":\"r\",\"salt\":\"s\",\"arms\":[" ARM_A "],"
                 "\"shadow\":[");
    for (int i = 0; i <= NBX_DEPLOYMENT_SHADOW_MAX; i++)
        n += snprintf(json + n, sizeof json - (size_t)n, "%s\"a.lua\"", i ? "," : "");
    snprintf(json + n, sizeof json - (size_t)n, "]}");
    REFUSED(json, NBX_ELIMIT, "field 'shadow'", "limit is 8");
}

Test(deployment, refuses_bad_abort_rules)
{
#define WITH_ABORT(rules)                                                                          \
    "{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"champ\",\"policy\":\"a.lua\","           \
    "\"percent\":90},{\"name\":\"chal\",\"policy\":\"b.lua\",\"percent\":10,\"abort\":" rules      \
    "}]}"
    REFUSED(WITH_ABORT("{\"max_fallback_rate\":0.1}"), NBX_EPARSE, "arm 'chal'",
            "field 'abort.min_decisions'", "required");
    REFUSED(WITH_ABORT("{\"min_decisions\":0,\"max_fallback_rate\":0.1}"), NBX_EPARSE, "arm 'chal'",
            "field 'abort.min_decisions'");
    REFUSED(WITH_ABORT("{\"min_decisions\":10}"), NBX_EPARSE, "arm 'chal'", "field 'abort'",
            "no rule");
    REFUSED(WITH_ABORT("{\"min_decisions\":10,\"max_fallback_rate\":1.5}"), NBX_EPARSE,
            "arm 'chal'", "field 'abort.max_fallback_rate'");
    REFUSED(WITH_ABORT("{\"min_decisions\":10,\"min_accept_rate_ratio\":-1}"), NBX_EPARSE,
            "arm 'chal'", "field 'abort.min_accept_rate_ratio'");
    REFUSED(WITH_ABORT("7"), NBX_EPARSE, "arm 'chal'", "field 'abort'", "object");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"champ\",\"policy\":\"a.lua\","
            "\"percent\":100,\"abort\":{\"min_decisions\":5,\"min_accept_rate_ratio\":0.8}}]}",
            NBX_EPARSE, "arm 'champ'", "field 'abort.min_accept_rate_ratio'", "first arm");
#undef WITH_ABORT
}

Test(deployment, refuses_a_missing_or_broken_policy_naming_the_arm)
{
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"percent\":100}]}",
            NBX_EPARSE, "arm 'x'", "field 'policy'", "required");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"\","
            "\"percent\":100}]}",
            NBX_EPARSE, "arm 'x'", "field 'policy'");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"gone.lua\","
            "\"percent\":100}]}",
            NBX_ENOTFOUND, "d.json: arm 'x': field 'policy'", "gone.lua");
    char *broken = tu_path(dir, "broken.lua");
    cr_assert_eq(tu_write_file(broken, "return {name = 'x',\n score = function(o) return 1 +"), 0);
    free(broken);
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[" ARM_A "],\"shadow\":[\"broken.lua\"]}",
            NBX_EPOLICY, "d.json: field 'shadow[0]'", "broken.lua:");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[" ARM_A "],\"shadow\":\"a.lua\"}", NBX_EPARSE,
            "field 'shadow'", "array");
    REFUSED("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[" ARM_A "],\"shadow\":[3]}", NBX_EPARSE,
            "field 'shadow[0]'");
}

Test(deployment, refuses_what_is_not_a_regular_file)
{
    nbx_err e = {0};
    nbx_deployment *d = NULL;
    cr_assert_neq(nbx_deployment_load(dir, 0, &d, &e), NBX_OK);
    cr_assert_null(d);
    cr_assert(strstr(e.msg, "not a regular file"), "got: %s", e.msg);
    cr_assert_eq(nbx_deployment_load("/nonexistent/d.json", 0, &d, &e), NBX_ENOTFOUND);
}

/* ========================================================================
 * Assignment
 * ======================================================================== */

/* The formula as docs/experiments.md gives it, written with xxHash itself. */
static uint32_t formula_bucket(const char *salt, const char *id)
{
    XXH64_hash_t seed = XXH64(salt, strlen(salt), 0);
    return (uint32_t)(XXH64(id, strlen(id), seed) % 10000);
}

Test(deployment, buckets_follow_the_documented_formula)
{
    nbx_deployment *d = load_ok(issue_example);
    char id[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(id, sizeof id, "c%08d", i);
        uint32_t want = formula_bucket("q4-2026", id);
        cr_assert_eq(nbx_deployment_bucket(d, nbx_sv_of(id)), want, "bucket of %s", id);
        cr_assert_eq(nbx_assign_bucket("q4-2026", 7, id, strlen(id)), want, "public bucket");
        /* holdout first, then the arms' ranges in file order */
        const char *arm = nbx_deployment_assign(d, id, strlen(id));
        const char *expect = want < 500 ? "holdout" : want < 9050 ? "champion" : "challenger";
        cr_assert_str_eq(arm, expect, "customer %s, bucket %u", id, want);
    }
    nbx_deployment_unref(d);
}

Test(deployment, proportions_within_half_a_percent_over_100000_customers)
{
    nbx_deployment *d = load_ok(issue_example);
    enum { N = 100000 };
    uint32_t counts[3] = {0, 0, 0}; /* holdout, champion, challenger */
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "c%08d", i);
        uint32_t arm = nbx_deployment_arm_of(d, nbx_sv_of(id));
        counts[arm == NBX_ARM_INDEX_HOLDOUT ? 0 : arm + 1]++;
    }
    /* of all customers: 5 % held out; 90 % and 10 % of the other 95 % */
    const double want[3] = {5.0, 0.95 * 90.0, 0.95 * 10.0};
    const char *names[3] = {"holdout", "champion", "challenger"};
    for (int k = 0; k < 3; k++) {
        double got = 100.0 * counts[k] / N;
        cr_assert(fabs(got - want[k]) <= 0.5, "%s: %.3f %% of customers, the file says %.3f %%",
                  names[k], got, want[k]);
    }
    nbx_deployment_unref(d);
}

Test(deployment, assignment_is_deterministic_across_loads_and_depends_on_the_salt)
{
    nbx_deployment *a = load_ok(issue_example);
    nbx_deployment *b = load_ok(issue_example);
    char id[32];
    int moved = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "cust-%d", i);
        cr_assert_str_eq(nbx_deployment_assign(a, id, strlen(id)),
                         nbx_deployment_assign(b, id, strlen(id)), "%s moved between loads", id);
        cr_assert_str_eq(nbx_deployment_assign(a, id, strlen(id)),
                         nbx_deployment_assign(a, id, strlen(id)));
        moved += nbx_assign_bucket("q4-2026", 7, id, strlen(id)) !=
                 nbx_assign_bucket("q5-2026", 7, id, strlen(id));
    }
    cr_assert_gt(moved, 4500, "another salt must shuffle the buckets (%d of 5000 moved)", moved);
    nbx_deployment_unref(a);
    nbx_deployment_unref(b);
}

Test(deployment, every_customer_held_out_at_100_percent_and_none_at_0)
{
    nbx_deployment *all = load_ok("{\"name\":\"r\",\"salt\":\"s\",\"holdout\":{\"percent\":100},"
                                  "\"arms\":[" ARM_A "]}");
    nbx_deployment *none = load_ok("{\"name\":\"r\",\"salt\":\"s\",\"holdout\":{\"percent\":0},"
                                   "\"arms\":[" ARM_A "]}");
    char id[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(id, sizeof id, "%d", i);
        cr_assert_str_eq(nbx_deployment_assign(all, id, strlen(id)), "holdout");
        cr_assert_str_eq(nbx_deployment_assign(none, id, strlen(id)), "x");
    }
    nbx_deployment_unref(all);
    nbx_deployment_unref(none);
}

Test(deployment, a_zero_percent_arm_gets_nobody)
{
    nbx_deployment *d =
        load_ok("{\"name\":\"r\",\"salt\":\"s\",\"arms\":[{\"name\":\"x\",\"policy\":\"a.lua\","
                "\"percent\":100},{\"name\":\"y\",\"policy\":\"b.lua\",\"percent\":0}]}");
    cr_assert_eq(d->arms[1].bucket_lo, d->arms[1].bucket_hi);
    char id[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(id, sizeof id, "%d", i);
        cr_assert_str_eq(nbx_deployment_assign(d, id, strlen(id)), "x");
    }
    nbx_deployment_unref(d);
}

/* The kill hook: a predicate over arms (name or policy version), as the
 * kill set will answer it. ud: the names killed, NULL-terminated. */
static bool killed_by_name(void *ud, const nbx_arm *arm)
{
    for (const char *const *k = ud; *k; k++)
        if (strcmp(*k, arm->name) == 0)
            return true;
    return false;
}

Test(deployment, a_killed_arm_s_customers_go_to_the_first_arm_then_to_the_control)
{
    nbx_deployment *d = load_ok(issue_example);
    const char *none[] = {NULL}, *challenger[] = {"challenger", NULL},
               *champion[] = {"champion", NULL}, *both[] = {"champion", "challenger", NULL};
    uint32_t H = NBX_ARM_INDEX_HOLDOUT;
    /* nothing killed (or no predicate): the file's assignment */
    cr_assert_eq(nbx_deployment_serving_arm(d, 1, NULL, NULL), 1);
    cr_assert_eq(nbx_deployment_serving_arm(d, 1, killed_by_name, none), 1);
    cr_assert_eq(nbx_deployment_serving_arm(d, 0, killed_by_name, none), 0);
    cr_assert_eq(nbx_deployment_serving_arm(d, H, killed_by_name, both), H,
                 "the holdout stays held out");
    cr_assert_eq(nbx_deployment_serving_arm(d, 1, killed_by_name, challenger), 0);
    cr_assert_eq(nbx_deployment_serving_arm(d, 0, killed_by_name, challenger), 0);
    cr_assert_eq(nbx_deployment_serving_arm(d, 0, killed_by_name, champion), H);
    cr_assert_eq(nbx_deployment_serving_arm(d, 1, killed_by_name, champion), 1);
    cr_assert_eq(nbx_deployment_serving_arm(d, 1, killed_by_name, both), H);
    nbx_deployment_unref(d);
}

/* ========================================================================
 * Public calls
 * ======================================================================== */

Test(deployment, public_calls_answer_null_and_misuse)
{
    nbx_deployment *d = (nbx_deployment *)dir;
    cr_assert_eq(nbx_deployment_open(NULL, 0, &d), NBX_EINVAL);
    cr_assert_null(d);
    cr_assert_eq(nbx_deployment_open("x.json", 0, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_deployment_open("x.json", 0x80, &d), NBX_EINVAL);
    cr_assert(strstr(nbx_last_errmsg(), "unknown flags"));
    nbx_deployment_close(NULL);
    cr_assert_null(nbx_deployment_name(NULL));
    cr_assert_null(nbx_deployment_version(NULL));
    cr_assert_eq(nbx_deployment_arm_count(NULL), 0);
    cr_assert_null(nbx_deployment_arm_name(NULL, 0));
    cr_assert_null(nbx_deployment_assign(NULL, "c", 1));
    cr_assert_eq(nbx_assign_bucket(NULL, 3, "c", 1), UINT32_MAX);
    cr_assert_eq(nbx_assign_bucket("s", 1, NULL, 1), UINT32_MAX);
    cr_assert_lt(nbx_assign_bucket("", 0, "", 0), 10000);
}

Test(deployment, public_open_gives_names_and_version)
{
    char *path = tu_path(dir, "d.json");
    cr_assert_eq(tu_write_file(path, issue_example), 0);
    nbx_deployment *d = NULL;
    cr_assert_eq(nbx_deployment_open(path, 0, &d), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_str_eq(nbx_deployment_name(d), "q4");
    cr_assert_eq(strlen(nbx_deployment_version(d)), 16);
    cr_assert_eq(nbx_deployment_arm_count(d), 2);
    cr_assert_str_eq(nbx_deployment_arm_name(d, 0), "champion");
    cr_assert_str_eq(nbx_deployment_arm_name(d, 1), "challenger");
    cr_assert_null(nbx_deployment_arm_name(d, 2));
    cr_assert_null(nbx_deployment_assign(d, NULL, 0));
    nbx_deployment_close(d);
    cr_assert_eq(tu_write_file(path, "{\"name\":\"q4\"}"), 0);
    cr_assert_eq(nbx_deployment_open(path, 0, &d), NBX_EPARSE);
    cr_assert_null(d);
    cr_assert(strstr(nbx_last_errmsg(), "d.json: field 'salt'"), "got %s", nbx_last_errmsg());
    free(path);
}

/* ========================================================================
 * Serving: engines that open with a deployment (core/engine.c, decide.c)
 * ======================================================================== */

/* 2026-03-10T12:00:00Z: inside every validity window of the fixture. */
#define NOW INT64_C(1773144000000)

static char *store_dir, *catalog_path;

/* Policies of distinct names, so a result says which one decided. */
static const char *const BY_PRICE = "return {name = 'by_price',\n"
                                    "  score = function(o) return o.price end}\n";
static const char *const BY_MARGIN = "return {name = 'by_margin',\n"
                                     "  score = function(o) return o.margin end}\n";
/* prefers what by_price ranks last: a shadow that disagrees */
static const char *const CHEAPEST = "return {name = 'cheapest',\n"
                                    "  score = function(o) return -o.price end}\n";
static const char *const FAILING = "return {name = 'failing',\n"
                                   "  score = function(o) error('boom on ' .. o.id) end}\n";
/* fails for anonymous visitors only: a trial catches it */
static const char *const PICKY = "return {name = 'picky', score = function(o, c)\n"
                                 "  if c.anonymous then error('no anonymous please') end\n"
                                 "  return 1 end}\n";

static void serving_setup(void)
{
    setup();
    store_dir = tu_path(dir, "store");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_CREATE, &s), NBX_OK);
    nbx_store_close(s);
    catalog_path = tu_source_path("tests/data/catalog.json");
    const char *names[] = {"by_price.lua", "by_margin.lua", "cheapest.lua", "failing.lua",
                           "picky.lua"};
    const char *srcs[] = {BY_PRICE, BY_MARGIN, CHEAPEST, FAILING, PICKY};
    for (size_t i = 0; i < 5; i++) {
        char *p = tu_path(dir, names[i]);
        cr_assert_eq(tu_write_file(p, srcs[i]), 0);
        free(p);
    }
}

static void serving_teardown(void)
{
    free(store_dir);
    free(catalog_path);
    teardown();
}

TestSuite(serving, .init = serving_setup, .fini = serving_teardown);

/* DIR/NAME.json holding text; malloc'd path. */
static char *write_deployment(const char *name, const char *text)
{
    char file[128];
    snprintf(file, sizeof file, "%s.json", name);
    char *path = tu_path(dir, file);
    cr_assert_eq(tu_write_file(path, text), 0);
    return path;
}

static nbx_engine *open_deployed(const char *deployment_path)
{
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.deployment = deployment_path;
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "engine: %s", nbx_last_errmsg());
    return e;
}

static const nbx_result *decide_for(nbx_ctx *c, const char *customer, unsigned flags)
{
    nbx_request req;
    nbx_request_init(&req);
    req.customer = customer;
    req.now_ms = NOW;
    req.flags = flags;
    const nbx_result *r = NULL;
    int rc = nbx_decide(c, &req, &r);
    cr_assert_eq(rc, NBX_OK, "decide %s: %s", customer, nbx_ctx_errmsg(c));
    return r;
}

static json_t *result_json(const nbx_result *r)
{
    size_t len;
    const char *text = nbx_result_json(r, &len);
    json_error_t err;
    json_t *j = json_loadb(text, len, 0, &err);
    cr_assert_not_null(j, "result is not JSON (%s): %s", err.text, text);
    return j;
}

#define AB_SPLIT                                                                                   \
    "{\"name\":\"q4\",\"salt\":\"q4-2026\",\"holdout\":{\"percent\":20},\"arms\":["                \
    "{\"name\":\"champion\",\"policy\":\"by_price.lua\",\"percent\":50},"                          \
    "{\"name\":\"challenger\",\"policy\":\"by_margin.lua\",\"percent\":50}]}"

Test(serving, each_customer_is_served_by_the_arm_assignment_gives)
{
    char *path = write_deployment("ab", AB_SPLIT);
    nbx_engine *e = open_deployed(path);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    nbx_deployment *d = nbx_engine_deployment(e);
    cr_assert_not_null(d);
    int seen[3] = {0, 0, 0};
    char id[32];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "c%05d", i);
        const nbx_result *r = decide_for(c, id, 0);
        const char *want = nbx_deployment_assign(d, id, strlen(id));
        cr_assert_str_eq(nbx_result_arm(r), want, "customer %s", id);
        cr_assert_str_eq(nbx_result_assigned_arm(r), want);
        const char *version = NULL;
        cr_assert_str_eq(nbx_result_deployment(r, &version), "q4");
        cr_assert_str_eq(version, nbx_deployment_version(d));
        /* the id names the deployment and the arm: UUID.q4.ARM */
        char suffix[96];
        snprintf(suffix, sizeof suffix, ".q4.%s", want);
        const char *did = nbx_result_decision_id(r);
        cr_assert_eq(strlen(did), 36 + strlen(suffix), "decision id %s", did);
        cr_assert_str_eq(did + 36, suffix);
        const char *pol = nbx_result_policy(r, NULL);
        json_t *j = result_json(r);
        cr_assert_str_eq(json_string_value(json_object_get(j, "arm")), want);
        cr_assert_null(json_object_get(j, "assigned"), "no kill: assigned equals arm");
        cr_assert_str_eq(
            json_string_value(json_object_get(json_object_get(j, "deployment"), "name")), "q4");
        json_t *actions = json_object_get(j, "actions");
        cr_assert_gt(json_array_size(actions), 0);
        for (size_t k = 0; k < json_array_size(actions); k++)
            cr_assert_float_eq(
                json_number_value(json_object_get(json_array_get(actions, k), "probability")), 1.0,
                1e-12);
        if (strcmp(want, "holdout") == 0) {
            seen[0]++;
            cr_assert_null(pol, "the holdout runs no policy");
            cr_assert(json_is_null(json_object_get(j, "policy")));
        } else if (strcmp(want, "champion") == 0) {
            seen[1]++;
            cr_assert_str_eq(pol, "by_price");
        } else {
            seen[2]++;
            cr_assert_str_eq(pol, "by_margin");
        }
        cr_assert(!nbx_result_fallback(r));
        json_decref(j);
    }
    cr_assert(seen[0] && seen[1] && seen[2], "300 customers reach every arm (%d %d %d)", seen[0],
              seen[1], seen[2]);
    nbx_deployment_close(d);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(path);
}

/* A customer of the given arm under d (searching ids c0, c1, ...). */
static void customer_of(const char *deployment_text, const char *arm, char *out, size_t cap)
{
    nbx_err e = {0};
    nbx_deployment *d = NULL;
    cr_assert_eq(nbx_deployment_load_text("x.json", deployment_text, strlen(deployment_text),
                                          NBX_DEPLOYMENT_NO_POLICIES, &d, &e),
                 NBX_OK, "%s", e.msg);
    for (int i = 0; i < 100000; i++) {
        snprintf(out, cap, "c%d", i);
        if (strcmp(nbx_deployment_assign(d, out, strlen(out)), arm) == 0) {
            nbx_deployment_unref(d);
            return;
        }
    }
    cr_assert_fail("no customer of arm %s", arm);
}

Test(serving, the_holdout_gets_the_catalog_s_fallback_actions_and_no_policy)
{
    char *path = write_deployment("ab", AB_SPLIT);
    nbx_engine *e = open_deployed(path);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    char id[32];
    customer_of(AB_SPLIT, "holdout", id, sizeof id);
    const nbx_result *r = decide_for(c, id, NBX_DECIDE_EXPLAIN);
    cr_assert_str_eq(nbx_result_arm(r), "holdout");
    cr_assert(!nbx_result_fallback(r), "the control treatment is no failure");
    cr_assert_null(nbx_result_error(r));
    /* fallback: hero brand_banner, recs bestsellers (tests/data/catalog.json) */
    cr_assert_eq(nbx_result_action_count(r), 2);
    nbx_action a;
    nbx_result_action(r, 0, &a);
    cr_assert_str_eq(a.offer, "brand_banner");
    cr_assert_float_eq(a.probability, 1.0, 1e-12);
    nbx_result_action(r, 1, &a);
    cr_assert_str_eq(a.offer, "bestsellers");
    /* eligibility still ran: the explanation says why others were out */
    json_t *j = result_json(r);
    cr_assert_gt(json_array_size(json_object_get(j, "candidates")), 2);
    json_decref(j);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(path);
}

#define WITH_SHADOWS(shadows)                                                                      \
    "{\"name\":\"sh\",\"salt\":\"s\",\"arms\":[{\"name\":\"only\",\"policy\":\"by_price.lua\","    \
    "\"percent\":100}],\"shadow\":" shadows "}"

Test(serving, shadows_decide_beside_the_served_decision_and_change_nothing_of_it)
{
    char *plain = write_deployment("plain", WITH_SHADOWS("[]"));
    char *shadowed =
        write_deployment("shadowed", WITH_SHADOWS("[\"cheapest.lua\",\"failing.lua\"]"));
    nbx_engine *e1 = open_deployed(plain), *e2 = open_deployed(shadowed);
    nbx_ctx *c1, *c2;
    cr_assert_eq(nbx_ctx_open(e1, &c1), NBX_OK);
    cr_assert_eq(nbx_ctx_open(e2, &c2), NBX_OK);
    const char *ids[] = {"alice", "bob", "carol", "dave"};
    for (size_t i = 0; i < 4; i++) {
        json_t *a = result_json(decide_for(c1, ids[i], NBX_DECIDE_EXPLAIN));
        const nbx_result *r2 = decide_for(c2, ids[i], NBX_DECIDE_EXPLAIN);
        cr_assert(!nbx_result_fallback(r2), "a failing shadow must not fail the served decision");
        json_t *b = result_json(r2);
        cr_assert(json_equal(json_object_get(a, "actions"), json_object_get(b, "actions")),
                  "served actions differ with shadows");
        cr_assert(json_equal(json_object_get(a, "candidates"), json_object_get(b, "candidates")),
                  "shadows changed the served candidates");
        cr_assert_eq(json_array_size(json_object_get(a, "shadow")), 0);
        json_t *shadow = json_object_get(b, "shadow");
        cr_assert_eq(json_array_size(shadow), 2);
        json_t *cheap = json_array_get(shadow, 0), *bad = json_array_get(shadow, 1);
        cr_assert_str_eq(
            json_string_value(json_object_get(json_object_get(cheap, "policy"), "name")),
            "cheapest");
        cr_assert(json_is_false(json_object_get(cheap, "fallback")));
        cr_assert_null(json_object_get(cheap, "error"));
        json_t *served = json_object_get(b, "actions"), *theirs = json_object_get(cheap, "actions");
        cr_assert_gt(json_array_size(theirs), 0);
        cr_assert(!json_equal(served, theirs), "the shadow ranks the other way round");
        cr_assert(json_is_number(json_object_get(cheap, "expected_margin")));
        cr_assert(json_is_true(json_object_get(bad, "fallback")));
        json_t *err = json_object_get(bad, "error");
        cr_assert_str_eq(json_string_value(json_object_get(err, "kind")), "runtime");
        cr_assert(strstr(json_string_value(json_object_get(err, "reason")), "boom"));
        json_decref(a);
        json_decref(b);
    }
    nbx_ctx_close(c1);
    nbx_ctx_close(c2);
    nbx_engine_close(e1);
    nbx_engine_close(e2);
    free(plain);
    free(shadowed);
}

Test(serving, shadows_are_never_recorded)
{
    char *path = write_deployment("shadowed", WITH_SHADOWS("[\"cheapest.lua\"]"));
    nbx_engine *e = open_deployed(path);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    uint64_t recorded = 0;
    const char *ids[] = {"alice", "bob", "carol"};
    for (size_t i = 0; i < 3; i++)
        recorded += nbx_result_action_count(decide_for(c, ids[i], NBX_DECIDE_RECORD));
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(nbx_engine_store(e), &st), NBX_OK);
    cr_assert_eq(st.events_seen, recorded, "recorded %llu events for %llu served actions",
                 (unsigned long long)st.events_seen, (unsigned long long)recorded);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(path);
}

Test(serving, shadows_take_nothing_of_a_planning_batch_s_budgets)
{
    /* free_shipping has a daily budget; the served policy never picks it
     * for hero (winback_20 is dearer), the shadow always does: were the
     * shadow's choices counted, the budget would run out for it. */
    const char *catalog = "{\"placements\":[{\"id\":\"hero\",\"slots\":1}],\"offers\":["
                          "{\"id\":\"cheap\",\"placements\":[\"hero\"],\"price\":5,\"unit_cost\":1,"
                          "\"purpose\":\"none\",\"budget\":{\"daily_impressions\":2}},"
                          "{\"id\":\"dear\",\"placements\":[\"hero\"],\"price\":50,\"unit_cost\":1,"
                          "\"purpose\":\"none\"}]}";
    char *cat = tu_path(dir, "budget.json");
    cr_assert_eq(tu_write_file(cat, catalog), 0);
    char *path = write_deployment("shadowed", WITH_SHADOWS("[\"cheapest.lua\"]"));
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = cat;
    o.deployment = path;
    nbx_engine *e;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    nbx_batch_options bo;
    nbx_batch_options_init(&bo);
    bo.threads = 1;
    bo.now_ms = NOW;
    nbx_batch *b;
    cr_assert_eq(nbx_batch_open(e, &bo, &b), NBX_OK, "%s", nbx_last_errmsg());
    char id[16];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "c%d", i);
        cr_assert_eq(nbx_batch_submit(b, id, NULL, 0, NULL), NBX_OK);
    }
    const nbx_batch_item *it;
    int n = 0;
    while (nbx_batch_next(b, &it) == NBX_OK) {
        cr_assert_eq(it->status, NBX_OK, "%s", it->errmsg);
        cr_assert_str_eq(it->arm, "only");
        cr_assert_str_eq(it->actions[0].offer, "dear");
        json_error_t err;
        json_t *j = json_loadb(it->json, it->json_len, 0, &err);
        json_t *sh = json_array_get(json_object_get(j, "shadow"), 0);
        json_t *first = json_array_get(json_object_get(sh, "actions"), 0);
        cr_assert_str_eq(json_string_value(json_object_get(first, "offer")), "cheap",
                         "customer %d: the shadow's choice ran out of budget", n);
        json_decref(j);
        n++;
    }
    cr_assert_eq(n, 6);
    nbx_batch_close(b);
    nbx_engine_close(e);
    free(cat);
    free(path);
}

Test(serving, a_broken_reload_is_refused_and_the_deployment_serving_stays)
{
    char *path = write_deployment("ab", AB_SPLIT);
    nbx_engine *e = open_deployed(path);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    char id[32];
    customer_of(AB_SPLIT, "challenger", id, sizeof id);
    cr_assert_str_eq(nbx_result_arm(decide_for(c, id, 0)), "challenger");
    /* percents that do not add up, then an arm whose policy is missing */
    char *broken = write_deployment(
        "broken", "{\"name\":\"q5\",\"salt\":\"q4-2026\",\"arms\":[{\"name\":\"champion\","
                  "\"policy\":\"by_price.lua\",\"percent\":60}]}");
    cr_assert_eq(nbx_engine_load_deployment(e, broken), NBX_EPARSE);
    cr_assert(strstr(nbx_engine_errmsg(e), "broken.json: field 'arms'"), "%s",
              nbx_engine_errmsg(e));
    char *missing = write_deployment(
        "missing", "{\"name\":\"q5\",\"salt\":\"q4-2026\",\"arms\":[{\"name\":\"champion\","
                   "\"policy\":\"gone.lua\",\"percent\":100}]}");
    cr_assert_eq(nbx_engine_load_deployment(e, missing), NBX_ENOTFOUND);
    const nbx_result *r = decide_for(c, id, 0);
    cr_assert_str_eq(nbx_result_arm(r), "challenger");
    cr_assert_str_eq(nbx_result_deployment(r, NULL), "q4");
    /* a good one serves from the next decision on */
    char *next = write_deployment(
        "next", "{\"name\":\"q5\",\"salt\":\"q4-2026\",\"arms\":[{\"name\":\"all\","
                "\"policy\":\"by_margin.lua\",\"percent\":100}]}");
    cr_assert_eq(nbx_engine_load_deployment(e, next), NBX_OK, "%s", nbx_engine_errmsg(e));
    r = decide_for(c, id, 0);
    cr_assert_str_eq(nbx_result_arm(r), "all");
    cr_assert_str_eq(nbx_result_deployment(r, NULL), "q5");
    cr_assert_str_eq(nbx_result_policy(r, NULL), "by_margin");
    /* a deployment names its policies: loading one behind it is refused */
    char *pol = tu_path(dir, "by_price.lua");
    cr_assert_eq(nbx_engine_load_policy(e, pol), NBX_EINVAL);
    cr_assert(strstr(nbx_engine_errmsg(e), "deployment"));
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(pol);
    free(path);
    free(broken);
    free(missing);
    free(next);
}

Test(serving, the_check_tries_every_arm_and_every_shadow)
{
    char *good = write_deployment("good", WITH_SHADOWS("[\"cheapest.lua\"]"));
    char *arm = write_deployment(
        "arm", "{\"name\":\"x\",\"salt\":\"s\",\"holdout\":{\"percent\":99},\"arms\":["
               "{\"name\":\"champion\",\"policy\":\"by_price.lua\",\"percent\":99.99},"
               "{\"name\":\"rare\",\"policy\":\"picky.lua\",\"percent\":0.01}]}");
    char *shadow = write_deployment("shadow", WITH_SHADOWS("[\"cheapest.lua\",\"picky.lua\"]"));
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.catalog = catalog_path;
    o.deployment = good;
    nbx_engine_info info;
    cr_assert_eq(nbx_engine_check(&o, &info), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_str_eq(info.policy_name, "by_price", "the first arm's policy");
    /* an arm nobody may be assigned to is tried all the same */
    o.deployment = arm;
    cr_assert_eq(nbx_engine_check(&o, NULL), NBX_EPOLICY);
    cr_assert(strstr(nbx_last_errmsg(), "arm.json: arm 'rare': "), "%s", nbx_last_errmsg());
    cr_assert(strstr(nbx_last_errmsg(), "no anonymous please"), "%s", nbx_last_errmsg());
    o.deployment = shadow;
    cr_assert_eq(nbx_engine_check(&o, NULL), NBX_EPOLICY);
    cr_assert(strstr(nbx_last_errmsg(), "shadow.json: shadow[1]: "), "%s", nbx_last_errmsg());
    free(good);
    free(arm);
    free(shadow);
}

Test(serving, options_say_what_serves)
{
    char *path = write_deployment("ab", AB_SPLIT);
    char *pol = tu_path(dir, "by_price.lua");
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = pol;
    o.deployment = path;
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EINVAL);
    cr_assert(strstr(nbx_last_errmsg(), "policy and deployment both given"));
    o.policy = NULL;
    o.deployment = NULL;
    o.deployment_text = AB_SPLIT;
    o.deployment_len = strlen(AB_SPLIT);
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EINVAL);
    cr_assert(strstr(nbx_last_errmsg(), "deployment_text needs deployment"));
    /* the text, named by a path whose directory holds the policies */
    o.deployment = path;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    nbx_engine_close(e);
    /* a handle loaded once (nginx's master), the engine keeps its own ref */
    nbx_deployment *d;
    cr_assert_eq(nbx_deployment_open(path, 0, &d), NBX_OK);
    o.deployment = NULL;
    o.deployment_text = NULL;
    o.deployment_handle = d;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    nbx_deployment_close(d);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    cr_assert_str_eq(nbx_result_deployment(decide_for(c, "alice", 0), NULL), "q4");
    nbx_ctx_close(c);
    nbx_engine_close(e);
    /* one read without its policies cannot serve */
    cr_assert_eq(nbx_deployment_open(path, NBX_DEPLOYMENT_NO_POLICIES, &d), NBX_OK);
    o.deployment_handle = d;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EINVAL);
    cr_assert(strstr(nbx_last_errmsg(), "without its policies"), "%s", nbx_last_errmsg());
    nbx_deployment_close(d);
    free(path);
    free(pol);
}

Test(serving, without_a_deployment_arm_is_null)
{
    char *pol = tu_path(dir, "by_price.lua");
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = pol;
    nbx_engine *e;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_null(nbx_engine_deployment(e));
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    const nbx_result *r = decide_for(c, "alice", 0);
    cr_assert_null(nbx_result_arm(r));
    cr_assert_null(nbx_result_deployment(r, NULL));
    cr_assert_eq(strlen(nbx_result_decision_id(r)), 36);
    json_t *j = result_json(r);
    cr_assert(json_is_null(json_object_get(j, "arm")));
    cr_assert_null(json_object_get(j, "deployment"));
    cr_assert_null(json_object_get(j, "shadow"));
    json_decref(j);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(pol);
    cr_assert_null(nbx_result_arm(NULL));
    cr_assert_null(nbx_result_assigned_arm(NULL));
    cr_assert_null(nbx_result_policy(NULL, NULL));
    cr_assert_null(nbx_engine_deployment(NULL));
    cr_assert_eq(nbx_engine_load_deployment(NULL, "x"), NBX_EINVAL);
}
