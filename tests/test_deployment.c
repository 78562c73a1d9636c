/* Suite: deployment (core/deployment.c): loading, validation, assignment. */
#include <criterion/criterion.h>
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
