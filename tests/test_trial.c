/* Suite: trial (core/trial.c, the storeless path of core/decide.c): policies
 * tried on synthetic customers before they serve (nbx_engine_trial,
 * nbx_engine_check), decisions for a profile given in the request, engines
 * without a store, nbx_result_fault. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

#define NOW INT64_C(1773144000000) /* 2026-03-10T12:00:00Z */

static char *dir, *catalog_path;

static void setup(void)
{
    dir = tu_tempdir("trial");
    catalog_path = tu_source_path("tests/data/catalog.json");
}

static void teardown(void)
{
    tu_rmtree(dir);
    free(dir);
    free(catalog_path);
}

TestSuite(trial, .init = setup, .fini = teardown);

static char *write_policy(const char *name, const char *src)
{
    char *path = tu_path(dir, name);
    cr_assert_eq(tu_write_file(path, src), 0);
    return path;
}

static nbx_engine_options options(const char *policy, unsigned flags)
{
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.catalog = catalog_path;
    o.policy = policy;
    o.flags = flags;
    return o;
}

/* nbx_engine_check on src: the code, and the message in *msg (static). */
static int check(const char *name, const char *src, const char **msg)
{
    char *path = write_policy(name, src);
    nbx_engine_options o = options(path, 0);
    int rc = nbx_engine_check(&o, NULL);
    *msg = nbx_last_errmsg();
    free(path);
    return rc;
}

/* ========================================================================
 * Failures that only some customers meet are found before serving
 * ======================================================================== */

Test(trial, check_refuses_a_policy_that_falls_back_for_some_customers)
{
    /* Compares two attributes that most customers do not have: loads, and
     * used to pass every check, then fell back for a share of customers. */
    const char *msg;
    int rc = check("nilcmp.lua",
                   "return { name = 'nilcmp',\n"
                   "  eligible = function(o, c) return c.attrs.age < c.attrs.limit end,\n"
                   "  score = function(o) return o.margin end }\n",
                   &msg);
    cr_expect_eq(rc, NBX_EPOLICY, "%s", msg);
    cr_expect(strstr(msg, "nilcmp.lua:2: attempt to compare"), "%s", msg);
    cr_expect(strstr(msg, "trial customers"), "%s", msg);
    cr_expect(strstr(msg, "first: anonymous visitor"), "the first customer is named: %s", msg);
}

Test(trial, check_refuses_print_and_string_scores)
{
    const char *msg;
    cr_expect_eq(check("print.lua",
                       "return { name = 'p', score = function(o) print(o.id) return 1 end }\n",
                       &msg),
                 NBX_EPOLICY, "print is not there: %s", msg);
    cr_expect(strstr(msg, "print.lua:1:"), "%s", msg);
    cr_expect_eq(
        check("str.lua", "return { name = 's', score = function(o) return 'high' end }\n", &msg),
        NBX_EPOLICY, "a string score: %s", msg);
    cr_expect(strstr(msg, "must return a finite number"), "%s", msg);
}

Test(trial, check_refuses_a_failure_of_one_segment_only)
{
    const char *msg;
    int rc = check("seg.lua",
                   "return { name = 'seg', score = function(o, c)\n"
                   "  if c.rfm.segment == 'cant_lose' then return nil end\n"
                   "  return o.margin end }\n",
                   &msg);
    cr_expect_eq(rc, NBX_EPOLICY, "%s", msg);
    cr_expect(strstr(msg, "first: segment cant_lose"), "%s", msg);
    cr_expect(strstr(msg, "fell back for 1 of"), "that segment only: %s", msg);
}

Test(trial, check_accepts_the_shipped_policies)
{
    static const char *const files[] = {"policies/margin_per_session.lua",
                                        "policies/retention.lua"};
    for (size_t i = 0; i < NBX_ARRAY_LEN(files); i++) {
        char *path = tu_source_path(files[i]);
        nbx_engine_options o = options(path, 0);
        nbx_engine_info info;
        cr_expect_eq(nbx_engine_check(&o, &info), NBX_OK, "%s: %s", files[i], nbx_last_errmsg());
        free(path);
    }
}

typedef struct seen {
    char labels[64][64];
    size_t n;
    size_t fallbacks;
} seen;

static void collect(void *ud, const char *label, const nbx_result *r)
{
    seen *s = ud;
    if (s->n < 64)
        snprintf(s->labels[s->n++], sizeof s->labels[0], "%s", label);
    if (nbx_result_fallback(r))
        s->fallbacks++;
}

static bool has_label(const seen *s, const char *label)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->labels[i], label) == 0)
            return true;
    return false;
}

Test(trial, trial_covers_segments_consents_and_anonymous_visitors)
{
    char *path = tu_source_path("policies/retention.lua");
    nbx_engine_options o = options(path, NBX_ENGINE_NO_STORE);
    nbx_engine *e;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    seen s = {0};
    cr_expect_eq(nbx_engine_trial(e, collect, &s), NBX_OK, "%s", nbx_engine_errmsg(e));
    cr_expect_eq(s.fallbacks, 0);
    static const char *const want[] = {
        "anonymous visitor",     "empty profile",
        "segment champions",     "segment prospect",
        "segment lost",          "every consent granted",
        "every consent refused", "propensities for every offer",
        "high ltv and churn",
    };
    for (size_t i = 0; i < NBX_ARRAY_LEN(want); i++)
        cr_expect(has_label(&s, want[i]), "no trial customer '%s'", want[i]);
    cr_expect_eq(nbx_engine_trial(NULL, NULL, NULL), NBX_EINVAL);
    nbx_engine_close(e);
    free(path);
}

/* ========================================================================
 * Decisions for a given profile; engines without a store
 * ======================================================================== */

static char *result_without_id(const nbx_result *r)
{
    json_error_t err;
    json_t *j = json_loads(nbx_result_json(r, NULL), 0, &err);
    cr_assert(j, "%s", err.text);
    json_object_del(j, "decision_id");
    char *s = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(j);
    return s;
}

Test(trial, a_given_profile_s_purchase_aggregates_reach_the_policy)
{
    /* An import's aggregates become the profile's base; with no store (no
     * purchase records) the base is what the policy sees. */
    char *policy = tu_path(dir, "orders.lua");
    cr_assert_eq(tu_write_file(policy, "return { name = 'orders', score = function(o, c)\n"
                                       "  return c.rfm.orders * 10 + c.rfm.revenue end }\n"),
                 0);
    nbx_engine_options o = options(policy, NBX_ENGINE_NO_STORE);
    nbx_engine *bare;
    cr_assert_eq(nbx_engine_open(&o, &bare), NBX_OK, "%s", nbx_last_errmsg());
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(bare, &c), NBX_OK);
    static const char profile[] = "{\"id\":\"dora\",\"consent\":{\"personalization\":true},"
                                  "\"rfm\":{\"orders\":3,\"revenue\":120.5,"
                                  "\"last_purchase\":\"2026-02-01T00:00:00Z\"}}";
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "dora";
    req.now_ms = NOW;
    req.profile_json = profile;
    req.profile_len = strlen(profile);
    const nbx_result *r;
    cr_assert_eq(nbx_decide(c, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(c));
    nbx_action a;
    cr_assert_eq(nbx_result_action(r, 0, &a), NBX_OK, "%s", nbx_result_json(r, NULL));
    cr_expect_float_eq(a.score, 150.5, 1e-9, "%s", nbx_result_json(r, NULL));
    nbx_ctx_close(c);
    nbx_engine_close(bare);
    free(policy);
}

Test(trial, a_given_profile_decides_as_the_stored_one)
{
    static const char profile[] = "{\"id\":\"carol\",\"consent\":{\"personalization\":true},"
                                  "\"propensity\":{\"winback_20\":0.7},\"ltv\":500,\"churn\":0.8,"
                                  "\"rfm\":{\"orders\":3,\"segment\":\"at_risk\"}}";
    char *store_dir = tu_path(dir, "store");
    nbx_store *st;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_CREATE, &st), NBX_OK);
    cr_assert_eq(nbx_profile_put(st, profile, strlen(profile)), NBX_OK);
    nbx_store_close(st);
    char *policy = tu_source_path("policies/retention.lua");

    nbx_engine_options o = options(policy, 0);
    o.store = store_dir;
    nbx_engine *stored, *bare;
    cr_assert_eq(nbx_engine_open(&o, &stored), NBX_OK, "%s", nbx_last_errmsg());
    o = options(policy, NBX_ENGINE_NO_STORE);
    cr_assert_eq(nbx_engine_open(&o, &bare), NBX_OK, "%s", nbx_last_errmsg());
    nbx_ctx *c1, *c2;
    cr_assert_eq(nbx_ctx_open(stored, &c1), NBX_OK);
    cr_assert_eq(nbx_ctx_open(bare, &c2), NBX_OK);

    nbx_request req;
    nbx_request_init(&req);
    req.customer = "carol";
    req.now_ms = NOW;
    req.flags = NBX_DECIDE_EXPLAIN;
    const nbx_result *r1, *r2;
    cr_assert_eq(nbx_decide(c1, &req, &r1), NBX_OK, "%s", nbx_ctx_errmsg(c1));
    char *a = result_without_id(r1);
    req.profile_json = profile;
    req.profile_len = strlen(profile);
    cr_assert_eq(nbx_decide(c2, &req, &r2), NBX_OK, "%s", nbx_ctx_errmsg(c2));
    char *b = result_without_id(r2);
    cr_expect_str_eq(a, b);
    cr_expect_eq(nbx_result_anonymous(r2), 0);

    /* Without a profile, an engine without a store decides for an
     * anonymous visitor. */
    req.profile_json = NULL;
    cr_assert_eq(nbx_decide(c2, &req, &r2), NBX_OK, "%s", nbx_ctx_errmsg(c2));
    cr_expect_eq(nbx_result_anonymous(r2), 1);

    free(a);
    free(b);
    nbx_ctx_close(c1);
    nbx_ctx_close(c2);
    nbx_engine_close(stored);
    nbx_engine_close(bare);
    free(policy);
    free(store_dir);
}

Test(trial, an_engine_without_a_store_records_nothing)
{
    char *policy = tu_source_path("policies/margin_per_session.lua");
    nbx_engine_options o = options(policy, NBX_ENGINE_NO_STORE);
    nbx_engine *e;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    cr_expect_null(nbx_engine_store(e));
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "dave";
    req.flags = NBX_DECIDE_RECORD;
    const nbx_result *r;
    cr_expect_eq(nbx_decide(c, &req, &r), NBX_EREADONLY);
    cr_expect(strstr(nbx_ctx_errmsg(c), "no store"), "%s", nbx_ctx_errmsg(c));
    static const char ev[] = "{\"event_id\":\"e1\",\"customer\":\"dave\",\"type\":\"impression\","
                             "\"offer\":\"winback_20\",\"ts\":\"2026-03-10T11:00:00Z\"}";
    int applied = 1;
    cr_expect_eq(nbx_record(c, ev, strlen(ev), &applied), NBX_EREADONLY);
    cr_expect_eq(applied, 0);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    /* Without the flag a store is still required. */
    o.flags = 0;
    cr_expect_eq(nbx_engine_open(&o, &e), NBX_EINVAL);
    cr_expect(strstr(nbx_last_errmsg(), "NBX_ENGINE_NO_STORE"), "%s", nbx_last_errmsg());
    free(policy);
}

Test(trial, a_bad_profile_in_the_request_is_refused_naming_it)
{
    char *policy = tu_source_path("policies/margin_per_session.lua");
    nbx_engine_options o = options(policy, NBX_ENGINE_NO_STORE);
    nbx_engine *e;
    nbx_ctx *c;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "erin";
    const nbx_result *r;
    static const struct {
        const char *json;
        const char *want;
    } cases[] = {
        {"{\"id\":\"someone-else\"}", "is not the customer"},
        {"{\"id\":\"erin\",\"ltv\":\"lots\"}", "field 'profile_json': "},
        {"[1]", "field 'profile_json': "},
    };
    for (size_t i = 0; i < NBX_ARRAY_LEN(cases); i++) {
        req.profile_json = cases[i].json;
        req.profile_len = strlen(cases[i].json);
        cr_expect_eq(nbx_decide(c, &req, &r), NBX_EINVAL, "case %zu", i);
        cr_expect(strstr(nbx_ctx_errmsg(c), cases[i].want), "case %zu: %s", i, nbx_ctx_errmsg(c));
    }
    /* A request built against nbx.h 0.1 (no profile fields) still works. */
    nbx_request_init(&req);
    req.customer = "erin";
    req.size = offsetof(nbx_request, profile_json);
    req.profile_json = "garbage that must not be read";
    cr_expect_eq(nbx_decide(c, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(c));
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(policy);
}

Test(trial, result_fault_names_kind_where_offer_reason)
{
    char *policy =
        write_policy("boom.lua", "return { name = 'boom',\n"
                                 "  score = function(o) error('boom on ' .. o.id) end }\n");
    nbx_engine_options o = options(policy, NBX_ENGINE_NO_STORE);
    nbx_engine *e;
    nbx_ctx *c;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "frank";
    const nbx_result *r;
    cr_assert_eq(nbx_decide(c, &req, &r), NBX_OK);
    nbx_fault f;
    cr_assert_eq(nbx_result_fault(r, &f), NBX_OK);
    cr_expect_str_eq(f.kind, "runtime");
    cr_expect_str_eq(f.where, "boom.lua:2");
    cr_expect_neq(f.offer[0], '\0');
    cr_expect(strstr(f.reason, "boom on "), "%s", f.reason);
    cr_expect_eq(nbx_result_fault(NULL, &f), NBX_EINVAL);
    cr_expect_eq(nbx_result_fault(r, NULL), NBX_EINVAL);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(policy);

    /* No fault on a normal decision. */
    policy = tu_source_path("policies/margin_per_session.lua");
    o = options(policy, NBX_ENGINE_NO_STORE);
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK);
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    cr_assert_eq(nbx_decide(c, &req, &r), NBX_OK);
    cr_expect_eq(nbx_result_fault(r, &f), NBX_ENOTFOUND);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(policy);
}
