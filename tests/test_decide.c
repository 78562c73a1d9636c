/* Suite: decide (core/decide.c, core/engine.c): the pipeline end to end on a
 * real store with real policies, reload under concurrent decisions. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir, *store_dir, *catalog_path;
static nbx_engine *engine;
static nbx_ctx *ctx;

/* 2026-03-10T12:00:00Z: inside every validity window of the fixture. */
#define NOW INT64_C(1773144000000)

static const char *BY_PRICE = "return { name = 'by_price',\n"
                              "  score = function(o, c, s) return o.price end }\n";
static const char *CONSTANT = "return { name = 'constant', score = function() return 1 end }\n";
static const char *FAILING = "return { name = 'failing',\n"
                             "  score = function(o) error('boom on ' .. o.id) end }\n";
static const char *FS_FIRST = "return { name = 'fs_first', score = function(o)\n"
                              "  if o.id == 'free_shipping' then return 100 end\n"
                              "  return o.price end }\n";

static char *write_policy(const char *name, const char *src)
{
    char *path = tu_path(dir, name);
    cr_assert_eq(tu_write_file(path, src), 0);
    return path;
}

/* The suite's engine options: its store and catalog, the policy given. */
static nbx_engine_options suite_options(const char *policy)
{
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = policy;
    return o;
}

/* Open the suite's engine and context with o; both must open. */
static void open_with(const nbx_engine_options *o)
{
    cr_assert_eq(nbx_engine_open(o, &engine), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(engine, &ctx), NBX_OK, "%s", nbx_last_errmsg());
}

static void open_engine(const char *policy_src)
{
    char *policy = write_policy("policy.lua", policy_src);
    nbx_engine_options o = suite_options(policy);
    open_with(&o);
    free(policy);
}

static void setup(void)
{
    dir = tu_tempdir("decide");
    store_dir = tu_path(dir, "store");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_CREATE, &s), NBX_OK);
    const char *profiles[] = {
        "{\"id\":\"alice\",\"consent\":{\"personalization\":true},"
        "\"propensity\":{\"winback_20\":0.5}}",
        "{\"id\":\"bob\",\"consent\":{\"personalization\":false}}",
    };
    for (size_t i = 0; i < 2; i++)
        cr_assert_eq(nbx_profile_put(s, profiles[i], strlen(profiles[i])), NBX_OK);
    nbx_store_close(s);
    catalog_path = tu_source_path("tests/data/catalog.json");
}

static void teardown(void)
{
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    ctx = NULL;
    engine = NULL;
    tu_rmtree(dir);
    free(dir);
    free(store_dir);
    free(catalog_path);
}

TestSuite(decide, .init = setup, .fini = teardown);

/* A decision that must succeed. */
static const nbx_result *decide_request(const char *customer, const char **placements, size_t n,
                                        const nbx_kv *session, size_t n_session, unsigned flags,
                                        int64_t now)
{
    nbx_request r;
    nbx_request_init(&r);
    r.customer = customer;
    r.placements = placements;
    r.n_placements = n;
    r.session = session;
    r.n_session = n_session;
    r.now_ms = now;
    r.flags = flags;
    const nbx_result *res = NULL;
    int rc = nbx_decide(ctx, &r, &res);
    cr_assert_eq(rc, NBX_OK, "decide: %s", nbx_ctx_errmsg(ctx));
    return res;
}

static const nbx_result *decide_full(const char *customer, const char **placements, size_t n,
                                     unsigned flags, int64_t now)
{
    return decide_request(customer, placements, n, NULL, 0, flags, now);
}

static const nbx_result *decide(const char *customer, unsigned flags)
{
    return decide_full(customer, NULL, 0, flags, NOW);
}

static void expect_actions(const nbx_result *r, const char *const *want, size_t n)
{
    const char *json = nbx_result_json(r, NULL);
    cr_assert_eq(nbx_result_action_count(r), n, "expected %zu actions: %s", n, json);
    for (size_t i = 0; i < n; i++) {
        nbx_action a;
        cr_assert_eq(nbx_result_action(r, i, &a), NBX_OK);
        char got[300];
        snprintf(got, sizeof got, "%s/%s", a.offer, a.placement);
        cr_assert_str_eq(got, want[i], "action %zu: expected %s, got %s in %s", i, want[i], got,
                         json);
    }
}

Test(decide, ranks_fills_slots_and_guardrails_beat_the_policy)
{
    open_engine(BY_PRICE);
    const nbx_result *r = decide("alice", 0);
    /* deep_discount (price 100) scores highest but breaks the 30% discount
     * ceiling; loss_leader breaks the margin floor; email_only lacks consent. */
    const char *want[] = {"winback_20/hero", "free_shipping/recs", "carousel_new/recs",
                          "bestsellers/recs"};
    expect_actions(r, want, 4);
    cr_assert_not(nbx_result_fallback(r));
    cr_assert_not(nbx_result_anonymous(r));
    const char *json = nbx_result_json(r, NULL);
    cr_assert(strstr(json, "\"policy\":{\"name\":\"by_price\",\"version\":\"") != NULL, "%s", json);
    cr_assert(strstr(json, "\"catalog_version\":\"") != NULL);
    cr_assert(strstr(json, "\"fallback\":false") != NULL);
    cr_assert(strstr(json, "\"candidates\"") == NULL, "explain off");
}

/* The explained candidate (offer, placement) of a result, as a JSON object
 * owned by *doc (the parsed result: json_decref it). Fails if absent. */
static json_t *candidate(const nbx_result *r, const char *offer, const char *placement, json_t **doc)
{
    json_error_t jerr;
    const char *text = nbx_result_json(r, NULL);
    *doc = json_loads(text, 0, &jerr);
    cr_assert(*doc, "result JSON does not parse: %s: %s", jerr.text, text);
    json_t *c;
    size_t i;
    json_array_foreach(json_object_get(*doc, "candidates"), i, c)
    {
        if (strcmp(json_string_value(json_object_get(c, "offer")), offer) == 0 &&
            strcmp(json_string_value(json_object_get(c, "placement")), placement) == 0)
            return c;
    }
    cr_assert_fail("no candidate %s/%s in %s", offer, placement, text);
    return NULL;
}

static const char *str_field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : "(none)";
}

Test(decide, explain_names_every_exclusion)
{
    open_engine(BY_PRICE);
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    json_t *doc;
    json_t *c = candidate(r, "deep_discount", "hero", &doc);
    cr_expect_float_eq(json_number_value(json_object_get(c, "score")), 100, 1e-12);
    cr_expect(json_is_null(json_object_get(c, "expected_margin")));
    cr_expect_str_eq(str_field(c, "excluded"), "guardrail");
    cr_expect_str_eq(str_field(c, "reason"), "a discount of 45% is above the 30% limit");
    json_decref(doc);
    c = candidate(r, "email_only", "recs", &doc);
    cr_expect(json_is_null(json_object_get(c, "score")), "never scored");
    cr_expect_str_eq(str_field(c, "excluded"), "consent");
    cr_expect_str_eq(str_field(c, "reason"), "no consent to 'email', which this offer needs");
    json_decref(doc);
    c = candidate(r, "loss_leader", "recs", &doc);
    cr_expect_float_eq(json_number_value(json_object_get(c, "score")), 20, 1e-12);
    cr_expect_str_eq(str_field(c, "reason"), "a unit margin of -1.00 is below the minimum of 0.00");
    json_decref(doc);
    uint32_t counts[NBX_EXCLUDED_COUNT];
    nbx_result_exclusions(r, counts);
    cr_assert_eq(counts[NBX_EXCLUDED_GUARDRAIL], 3, "deep_discount x2, loss_leader");
    cr_assert_eq(counts[NBX_EXCLUDED_CONSENT], 1);
}

Test(decide, explain_says_where_each_propensity_came_from)
{
    /* alice has a propensity for winback_20 itself; the others fall back
     * along the chain to base_propensity (she has no RFM segment) */
    open_engine(BY_PRICE);
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    json_t *doc;
    json_t *c = candidate(r, "winback_20", "hero", &doc);
    cr_expect_str_eq(str_field(c, "propensity_source"), "offer");
    cr_expect_float_eq(json_number_value(json_object_get(c, "propensity")), 0.5, 1e-12);
    cr_expect_float_eq(json_number_value(json_object_get(c, "margin")), 24, 1e-9);
    cr_expect_float_eq(json_number_value(json_object_get(c, "serving_cost")), 0.02, 1e-12);
    cr_expect(json_is_true(json_object_get(c, "chosen")));
    json_decref(doc);
    c = candidate(r, "carousel_new", "recs", &doc);
    cr_expect_str_eq(str_field(c, "propensity_source"), "base");
    cr_expect_float_eq(json_number_value(json_object_get(c, "propensity")), 0.08, 1e-12);
    json_decref(doc);
}

Test(decide, eligible_reasons_reach_the_explanation_escaped)
{
    open_engine("return { name = 'picky',\n"
                "  eligible = function(o)\n"
                "    if o.id == 'carousel_new' then return false, 'not for \\27[31mred\\27[0m' end\n"
                "    if o.id == 'bestsellers' then return false end\n"
                "    return true end,\n"
                "  score = function(o) return o.price end }\n");
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    json_t *doc;
    json_t *c = candidate(r, "carousel_new", "recs", &doc);
    cr_expect_str_eq(str_field(c, "excluded"), "ineligible");
    cr_expect_str_eq(str_field(c, "policy_reason"), "not for \\x1b[31mred\\x1b[0m",
                     "the policy's text is escaped");
    cr_expect_str_eq(str_field(c, "reason"),
                     "the policy's eligible() said no: not for \\x1b[31mred\\x1b[0m");
    json_decref(doc);
    c = candidate(r, "bestsellers", "recs", &doc);
    cr_expect_str_eq(str_field(c, "excluded"), "ineligible");
    cr_expect(json_object_get(c, "policy_reason") == NULL, "no reason given");
    cr_expect_str_eq(str_field(c, "reason"), "the policy's eligible() said no (it gave no reason)");
    json_decref(doc);
    /* without explain the reasons are not collected, the exclusion stays */
    r = decide("alice", 0);
    uint32_t counts[NBX_EXCLUDED_COUNT];
    nbx_result_exclusions(r, counts);
    cr_expect_eq(counts[NBX_EXCLUDED_INELIGIBLE], 2);
}

/* The result's "log" array, as strings, into lines (at most max). */
static size_t log_lines(const nbx_result *r, char lines[][300], size_t max, json_t **doc)
{
    json_error_t jerr;
    *doc = json_loads(nbx_result_json(r, NULL), 0, &jerr);
    cr_assert(*doc);
    json_t *log = json_object_get(*doc, "log"), *v;
    size_t i, n = 0;
    json_array_foreach(log, i, v)
    {
        if (n < max)
            snprintf(lines[n++], 300, "%s", json_string_value(v));
    }
    return n;
}

Test(decide, nbx_log_lines_show_in_explanations_only_and_are_bounded)
{
    open_engine("return { name = 'chatty', score = function(o, c)\n"
                "  nbx.log('scoring', o.id, o.price, c.segment, {}, string.rep('x', 4000))\n"
                "  return o.price end }\n");
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    char lines[40][300];
    json_t *doc;
    size_t n = log_lines(r, lines, 40, &doc);
    /* 8 offers score at up to 2 placements: fewer than the 32 lines kept */
    cr_expect_gt(n, 4);
    cr_expect_leq(n, 32);
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        cr_expect_leq(strlen(lines[i]), 240, "a line is cut: %zu bytes", strlen(lines[i]));
        if (strncmp(lines[i], "policy.lua:2: scoring free_shipping 49 nil table xxx", 52) == 0)
            found = true;
    }
    cr_expect(found, "file:line, then the values joined by spaces: %s", n ? lines[0] : "none");
    json_decref(doc);
    /* not asked for: no log at all */
    r = decide("alice", 0);
    cr_expect(strstr(nbx_result_json(r, NULL), "\"log\"") == NULL, "%s", nbx_result_json(r, NULL));
}

Test(decide, nbx_log_keeps_32_lines_and_counts_the_rest)
{
    open_engine("return { name = 'flood', score = function(o)\n"
                "  for i = 1, 10 do nbx.log(i, '\\n\\27]0;title\\7') end\n"
                "  return o.price end }\n");
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    char lines[40][300];
    json_t *doc;
    size_t n = log_lines(r, lines, 40, &doc);
    cr_expect_eq(n, 32);
    cr_expect_gt(json_integer_value(json_object_get(doc, "log_dropped")), 0);
    cr_expect_str_eq(lines[0], "policy.lua:2: 1 \\x0a\\x1b]0;title\\x07", "escaped");
    json_decref(doc);
}

Test(decide, nbx_log_lines_before_a_failure_are_kept)
{
    open_engine("return { name = 'dies', score = function(o)\n"
                "  nbx.log('about to fail on', o.id)\n"
                "  error('boom') end }\n");
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    cr_assert(nbx_result_fallback(r));
    char lines[40][300];
    json_t *doc;
    size_t n = log_lines(r, lines, 40, &doc);
    cr_expect_eq(n, 1, "%s", nbx_result_json(r, NULL));
    cr_expect(strstr(lines[0], "policy.lua:2: about to fail on ") == lines[0], "%s", lines[0]);
    json_decref(doc);
}

Test(decide, expected_margin_defaults_to_propensity_times_margin)
{
    open_engine(BY_PRICE);
    const nbx_result *r = decide("alice", 0);
    nbx_action a;
    cr_assert_eq(nbx_result_action(r, 0, &a), NBX_OK);
    /* winback_20: propensity 0.5 x margin (80-40-16) - serving 0.02 */
    cr_assert_float_eq(a.expected_margin, 0.5 * 24.0 - 0.02, 1e-9);
    cr_assert_float_eq(a.score, 80.0, 1e-12);
}

Test(decide, never_the_same_offer_twice)
{
    open_engine(FS_FIRST);
    const nbx_result *r = decide("alice", 0);
    const char *want[] = {"free_shipping/hero", "carousel_new/recs", "bestsellers/recs"};
    expect_actions(r, want, 3);
}

Test(decide, ties_break_by_offer_id)
{
    open_engine(CONSTANT);
    const char *hero[] = {"hero"};
    const nbx_result *r = decide_full("alice", hero, 1, 0, NOW);
    const char *want[] = {"brand_banner/hero"};
    expect_actions(r, want, 1);
}

Test(decide, anonymous_and_withdrawn_consent)
{
    open_engine(BY_PRICE);
    const nbx_result *r = decide("stranger", 0);
    cr_assert(nbx_result_anonymous(r));
    /* only purpose "none" modules remain */
    const char *want[] = {"bestsellers/recs", "brand_banner/hero"};
    expect_actions(r, want, 2);
    /* bob refused personalisation: decided as an anonymous visitor */
    r = decide("bob", 0);
    cr_assert(nbx_result_anonymous(r));
    expect_actions(r, want, 2);
}

Test(decide, policy_failure_gives_fallback_and_next_decision_runs)
{
    open_engine(FAILING);
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    cr_assert(nbx_result_fallback(r));
    const char *json = nbx_result_json(r, NULL);
    const char *want[] = {"brand_banner/hero", "bestsellers/recs"};
    expect_actions(r, want, 2);
    cr_assert_not_null(nbx_result_error(r));
    cr_assert(strstr(nbx_result_error(r), "policy.lua:2") != NULL, "%s", nbx_result_error(r));
    cr_assert(strstr(json, "\"error\":{\"policy\":\"failing\",\"version\":\"") != NULL, "%s", json);
    cr_assert(strstr(json, "\"kind\":\"runtime\"") != NULL, "%s", json);
    cr_assert(strstr(json, "\"where\":\"policy.lua:2\"") != NULL, "%s", json);
    cr_assert(strstr(json, "\"reason\":\"boom on ") != NULL, "%s", json);
    cr_assert(strstr(json, "\"excluded\":\"policy_error\"") != NULL, "%s", json);
    /* the context is unharmed: swap in a good policy and decide again */
    char *good = write_policy("good.lua", BY_PRICE);
    cr_assert_eq(nbx_engine_load_policy(engine, good), NBX_OK, "%s", nbx_engine_errmsg(engine));
    free(good);
    r = decide("alice", 0);
    cr_assert_not(nbx_result_fallback(r));
    cr_assert_null(nbx_result_error(r));
}

Test(decide, error_kind_only_keeps_the_policy_text_out_of_the_result)
{
    open_engine(FAILING);
    const nbx_result *r = decide("alice", NBX_DECIDE_ERROR_KIND_ONLY);
    cr_assert(nbx_result_fallback(r));
    const char *json = nbx_result_json(r, NULL);
    cr_assert(strstr(json, ",\"error\":{\"kind\":\"runtime\"}") != NULL, "%s", json);
    const char *hidden[] = {"policy.lua", "boom on", "\"where\"", "\"message\"", "\"reason\""};
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++)
        cr_assert(strstr(json, hidden[i]) == NULL, "%s in %s", hidden[i], json);
    /* the caller still has the detail, for its own log */
    cr_assert(strstr(nbx_result_error(r), "policy.lua:2: boom on ") != NULL, "%s",
              nbx_result_error(r));
    /* with explain too: candidates, and still only the kind */
    r = decide("alice", NBX_DECIDE_ERROR_KIND_ONLY | NBX_DECIDE_EXPLAIN);
    json = nbx_result_json(r, NULL);
    cr_assert(strstr(json, "boom on") == NULL, "%s", json);
    cr_assert(strstr(json, "\"candidates\":[") != NULL, "%s", json);
}

Test(decide, recorded_impressions_reach_the_frequency_cap)
{
    open_engine(FS_FIRST);
    for (int i = 0; i < 3; i++) {
        char ev[256];
        snprintf(ev, sizeof ev,
                 "{\"event_id\":\"i%d\",\"customer\":\"alice\",\"type\":\"impression\","
                 "\"offer\":\"free_shipping\",\"placement\":\"hero\",\"ts\":%lld}",
                 i, (long long)(NOW / 1000 - 3600));
        const nbx_result *r = decide("alice", 0);
        nbx_action a;
        nbx_result_action(r, 0, &a);
        cr_assert_str_eq(a.offer, "free_shipping", "before impression %d", i);
        int applied;
        cr_assert_eq(nbx_record(ctx, ev, strlen(ev), &applied), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
        cr_assert_eq(applied, 1);
        cr_assert_eq(nbx_record(ctx, ev, strlen(ev), &applied), NBX_OK);
        cr_assert_eq(applied, 0, "duplicate event id applied twice");
    }
    const nbx_result *r = decide("alice", NBX_DECIDE_EXPLAIN);
    json_t *doc;
    json_t *c = candidate(r, "free_shipping", "hero", &doc);
    cr_expect(json_is_null(json_object_get(c, "score")));
    cr_expect_str_eq(str_field(c, "excluded"), "frequency");
    cr_expect_str_eq(str_field(c, "reason"), "shown 3 times in the last 7 days; the cap is 3");
    json_decref(doc);
    nbx_action a;
    nbx_result_action(r, 0, &a);
    cr_assert_str_eq(a.offer, "winback_20");
}

Test(decide, record_flag_commits_exposures)
{
    open_engine(FS_FIRST);
    const char *hero[] = {"hero"};
    for (int i = 0; i < 3; i++) {
        const nbx_result *r = decide_full("alice", hero, 1, NBX_DECIDE_RECORD, NOW + i * 1000);
        nbx_action a;
        nbx_result_action(r, 0, &a);
        cr_assert_str_eq(a.offer, "free_shipping");
    }
    const nbx_result *r = decide_full("alice", hero, 1, 0, NOW + 5000);
    nbx_action a;
    nbx_result_action(r, 0, &a);
    cr_assert_str_eq(a.offer, "winback_20", "cap of 3 reached through recorded decisions");
}

/* Recording on a read-only engine is refused whether or not the decision
 * would choose anything: a caller learns it on the first call. */
Test(decide, record_on_a_read_only_engine_is_refused_even_without_actions)
{
    char *policy = write_policy("none.lua", "return { name = 'none',\n"
                                            "  eligible = function() return false end,\n"
                                            "  score = function() return 1 end }\n");
    nbx_engine_options o = suite_options(policy);
    o.flags = NBX_ENGINE_READONLY;
    open_with(&o);
    free(policy);
    const nbx_result *r = decide("alice", 0);
    cr_assert_eq(nbx_result_action_count(r), 0, "%s", nbx_result_json(r, NULL));
    cr_assert_not(nbx_result_fallback(r), "%s", nbx_result_json(r, NULL));
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "alice";
    req.now_ms = NOW;
    req.flags = NBX_DECIDE_RECORD;
    const nbx_result *res = NULL;
    cr_assert_eq(nbx_decide(ctx, &req, &res), NBX_EREADONLY, "got %d", nbx_decide(ctx, &req, &res));
    cr_assert_null(res);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "read-only") != NULL, "%s", nbx_ctx_errmsg(ctx));
}

Test(decide, replay_with_as_of_is_identical)
{
    open_engine("return { name = 'rand', score = function(o) return math.random() end }\n");
    const nbx_result *r = decide("alice", 0);
    char first[4096];
    snprintf(first, sizeof first, "%s", strstr(nbx_result_json(r, NULL), "\"actions\""));
    r = decide("alice", 0);
    cr_assert_str_eq(strstr(nbx_result_json(r, NULL), "\"actions\""), first);
    r = decide_full("alice", NULL, 0, 0, NOW + 1);
    cr_assert_str_neq(strstr(nbx_result_json(r, NULL), "\"actions\""), first,
                      "a different clock should reseed math.random");
}

Test(decide, bad_requests_name_the_field)
{
    open_engine(BY_PRICE);
    nbx_request r;
    nbx_request_init(&r);
    const nbx_result *res;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_EINVAL);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "customer") != NULL, "%s", nbx_ctx_errmsg(ctx));
    const char *bad[] = {"sidebar"};
    r.customer = "alice";
    r.placements = bad;
    r.n_placements = 1;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_EINVAL);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "'sidebar'") != NULL, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_null(res);
    cr_assert_eq(nbx_decide(NULL, &r, &res), NBX_EINVAL);
    cr_assert_eq(nbx_decide(ctx, NULL, &res), NBX_EINVAL);
    cr_assert_eq(nbx_decide(ctx, &r, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_record(ctx, "{\"event_id\":\"x\"}", 16, NULL), NBX_EPARSE);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "customer") != NULL, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(nbx_record(NULL, "{}", 2, NULL), NBX_EINVAL);
    /* session keys the engine sets, and a key given twice */
    r.placements = NULL;
    r.n_placements = 0;
    nbx_kv engine_set[] = {{"channel", "web"}, {"now", "2020-01-01T00:00:00Z"}};
    r.session = engine_set;
    r.n_session = 2;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_EINVAL);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "'session.now': set by the engine") != NULL, "%s",
              nbx_ctx_errmsg(ctx));
    nbx_kv twice[] = {{"channel", "web"}, {"channel", "email"}};
    r.session = twice;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_EINVAL);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "'session.channel': given twice") != NULL, "%s",
              nbx_ctx_errmsg(ctx));
    /* a clock outside the years nbx can write (the result's as_of) */
    r.session = NULL;
    r.n_session = 0;
    int64_t clocks[] = {NBX_TIME_MAX_MS + 1, NBX_TIME_MIN_MS - 1, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
        r.now_ms = clocks[i];
        cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_EINVAL, "now_ms %lld", (long long)clocks[i]);
        cr_assert(strstr(nbx_ctx_errmsg(ctx), "field 'now_ms'") != NULL, "%s", nbx_ctx_errmsg(ctx));
    }
    r.now_ms = NBX_TIME_MAX_MS;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert(strstr(nbx_result_json(res, NULL), "\"as_of\":\"9999-12-31T23:59:59.999Z\"") != NULL,
              "%s", nbx_result_json(res, NULL));
    r.now_ms = NBX_TIME_MIN_MS;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert(strstr(nbx_result_json(res, NULL), "\"as_of\":\"0001-01-01T00:00:00") != NULL, "%s",
              nbx_result_json(res, NULL));
    /* the context still works */
    const nbx_result *ok = decide("alice", 0);
    cr_assert_eq(nbx_result_action_count(ok), 4);
}

Test(decide, engine_open_errors)
{
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    nbx_engine *e = (nbx_engine *)1;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EINVAL);
    cr_assert_null(e);
    char *policy = write_policy("p.lua", BY_PRICE);
    o.store = store_dir;
    o.catalog = "/nonexistent/catalog.json";
    o.policy = policy;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_last_errmsg(), "/nonexistent/catalog.json") != NULL);
    o.catalog = catalog_path;
    o.store = "/nonexistent/store";
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_last_errmsg(), "/nonexistent/store") != NULL, "%s", nbx_last_errmsg());
    o.store = store_dir;
    char *broken = write_policy("broken.lua", "return { name = 'x', score = ");
    o.policy = broken;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EPOLICY);
    cr_assert(strstr(nbx_last_errmsg(), "broken.lua") != NULL, "%s", nbx_last_errmsg());
    free(policy);
    free(broken);
    nbx_engine_close(NULL);
    nbx_ctx_close(NULL);
    cr_assert_eq(nbx_ctx_open(NULL, &ctx), NBX_EINVAL);
}

Test(decide, failed_reload_keeps_serving_the_old_version)
{
    open_engine(BY_PRICE);
    nbx_engine_info before, after;
    nbx_engine_info_get(engine, &before);
    char *broken = write_policy("broken.lua", "return 42");
    cr_assert_eq(nbx_engine_load_policy(engine, broken), NBX_EPOLICY);
    cr_assert(strstr(nbx_engine_errmsg(engine), "broken.lua") != NULL, "%s",
              nbx_engine_errmsg(engine));
    char *bad_catalog = write_policy("bad.json", "{\"placements\": 3}");
    cr_assert_eq(nbx_engine_load_catalog(engine, bad_catalog), NBX_EPARSE);
    nbx_engine_info_get(engine, &after);
    cr_assert_str_eq(before.policy_version, after.policy_version);
    cr_assert_str_eq(before.catalog_version, after.catalog_version);
    const nbx_result *r = decide("alice", 0);
    cr_assert_eq(nbx_result_action_count(r), 4);
    free(broken);
    free(bad_catalog);
}

/* Reload under load: two threads decide while the main thread swaps policies. */
struct worker {
    nbx_engine *engine;
    char v1[17], v2[17];
    int decisions, with_v1, with_v2, bad;
    volatile int *stop;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    nbx_ctx *c;
    if (nbx_ctx_open(w->engine, &c) != NBX_OK) {
        w->bad++;
        return NULL;
    }
    nbx_request r;
    nbx_request_init(&r);
    r.customer = "alice";
    r.now_ms = NOW;
    while (!*w->stop) {
        const nbx_result *res;
        if (nbx_decide(c, &r, &res) != NBX_OK || nbx_result_fallback(res)) {
            w->bad++;
            continue;
        }
        const char *json = nbx_result_json(res, NULL);
        bool h1 = strstr(json, w->v1) != NULL, h2 = strstr(json, w->v2) != NULL;
        if (h1 == h2)
            w->bad++;
        w->with_v1 += h1;
        w->with_v2 += h2;
        w->decisions++;
    }
    nbx_ctx_close(c);
    return NULL;
}

Test(decide, reload_under_concurrent_decisions)
{
    open_engine(BY_PRICE);
    char *p1 = write_policy("v1.lua", BY_PRICE);
    char *p2 = write_policy("v2.lua", "-- v2\nreturn { name = 'by_price',\n"
                                      "  score = function(o, c, s) return o.price end }\n");
    nbx_engine_info i1, i2;
    cr_assert_eq(nbx_policy_check(p1, &i1), NBX_OK);
    cr_assert_eq(nbx_policy_check(p2, &i2), NBX_OK);
    cr_assert_str_neq(i1.policy_version, i2.policy_version);
    volatile int stop = 0;
    struct worker w[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].engine = engine;
        memcpy(w[i].v1, i1.policy_version, 17);
        memcpy(w[i].v2, i2.policy_version, 17);
        w[i].stop = &stop;
        pthread_create(&t[i], NULL, work, &w[i]);
    }
    for (int k = 0; k < 200; k++) {
        cr_assert_eq(nbx_engine_load_policy(engine, k % 2 ? p1 : p2), NBX_OK);
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
    }
    stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(w[i].bad, 0, "thread %d: %d results without exactly one version", i, w[i].bad);
        cr_assert_gt(w[i].with_v1, 0, "thread %d never saw v1", i);
        cr_assert_gt(w[i].with_v2, 0, "thread %d never saw v2", i);
    }
    free(p1);
    free(p2);
}

Test(decide, a_decision_never_passes_the_contact_limit)
{
    /* the fixture allows 5 contacts a week; make it 2 */
    char *fixture = tu_read_file(catalog_path, NULL);
    char *at = strstr(fixture, "\"max_contacts\": {\"max\": 5");
    cr_assert_not_null(at);
    at[strlen("\"max_contacts\": {\"max\": ")] = '2';
    free(catalog_path);
    catalog_path = tu_path(dir, "two_contacts.json");
    cr_assert_eq(tu_write_file(catalog_path, fixture), 0);
    free(fixture);
    open_engine(BY_PRICE);
    const nbx_result *r = decide("alice", 0);
    const char *want[] = {"winback_20/hero", "free_shipping/recs"};
    expect_actions(r, want, 2);
    /* the recs slots the contact policy leaves empty say why */
    r = decide("alice", NBX_DECIDE_EXPLAIN);
    expect_actions(r, want, 2);
    cr_assert(strstr(nbx_result_json(r, NULL),
                     "\"offer\":\"carousel_new\",\"placement\":\"recs\",\"score\":30,"
                     "\"expected_margin\":") != NULL,
              "%s", nbx_result_json(r, NULL));
    cr_assert(strstr(nbx_result_json(r, NULL), "\"excluded\":\"contacts\"") != NULL, "%s",
              nbx_result_json(r, NULL));
    r = decide_full("alice", NULL, 0, NBX_DECIDE_RECORD, NOW);
    expect_actions(r, want, 2);
    r = decide("alice", NBX_DECIDE_EXPLAIN);
    cr_assert_eq(nbx_result_action_count(r), 0, "2 of 2 contacts used: %s",
                 nbx_result_json(r, NULL));
    cr_assert(strstr(nbx_result_json(r, NULL), "\"excluded\":\"contacts\"") != NULL);
}

Test(decide, decision_ids_are_unique_uuidv7)
{
    open_engine(BY_PRICE);
    char seen[200][37];
    for (int i = 0; i < 200; i++) {
        const nbx_result *r = decide("alice", 0);
        const char *id = nbx_result_decision_id(r);
        cr_assert_eq(strlen(id), 36, "%s", id);
        cr_assert(id[8] == '-' && id[13] == '-' && id[18] == '-' && id[23] == '-', "%s", id);
        cr_assert_eq(id[14], '7', "version nibble: %s", id);
        cr_assert(strchr("89ab", id[19]) != NULL, "variant nibble: %s", id);
        cr_assert(strstr(nbx_result_json(r, NULL), id) != NULL);
        for (int k = 0; k < i; k++)
            cr_assert_str_neq(seen[k], id, "duplicate decision id");
        memcpy(seen[i], id, 37);
    }
}

Test(decide, negative_and_zero_scores_rank_in_order)
{
    /* -price: cheapest first; brand_banner scores -0, which ranks as 0 */
    open_engine("return { name = 'cheap', score = function(o) return -o.price end }\n");
    const nbx_result *r = decide("alice", 0);
    const char *want[] = {"brand_banner/hero", "bestsellers/recs", "carousel_new/recs",
                          "free_shipping/recs"};
    expect_actions(r, want, 4);
}

/* The reference for arbitration: sort the explain output's unexcluded
 * candidates by score (higher first), then offer id, then placement in
 * catalog order, and fill slots greedily, each offer once, up to the
 * contacts left. Random scores in {0..3} make ties common. */
struct ref_cand {
    const char *offer, *placement;
    double score;
    int placement_index;
};

static int ref_cmp(const void *a, const void *b)
{
    const struct ref_cand *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    int c = strcmp(x->offer, y->offer);
    return c ? c : x->placement_index - y->placement_index;
}

Test(decide, arbitration_fills_slots_greedily_in_rank_order)
{
    open_engine("return { name = 'dice', score = function() return math.random(0, 3) end }\n");
    for (int k = 0; k < 300; k++) {
        char customer[32];
        snprintf(customer, sizeof customer, k % 3 == 0 ? "alice" : "anon%d", k);
        const nbx_result *r = decide_full(customer, NULL, 0, NBX_DECIDE_EXPLAIN, NOW + k * 1000);
        const char *text = nbx_result_json(r, NULL);
        json_error_t jerr;
        json_t *doc = json_loads(text, 0, &jerr);
        cr_assert_not_null(doc, "%s: %s", jerr.text, text);
        json_t *cands = json_object_get(doc, "candidates");
        struct ref_cand ref[64];
        size_t n = 0;
        for (size_t i = 0; i < json_array_size(cands); i++) {
            json_t *cd = json_array_get(cands, i);
            if (!json_is_null(json_object_get(cd, "excluded")))
                continue;
            cr_assert_lt(n, 64);
            ref[n].offer = json_string_value(json_object_get(cd, "offer"));
            ref[n].placement = json_string_value(json_object_get(cd, "placement"));
            ref[n].score = json_number_value(json_object_get(cd, "score"));
            ref[n].placement_index = strcmp(ref[n].placement, "hero") == 0 ? 0 : 1;
            n++;
        }
        qsort(ref, n, sizeof ref[0], ref_cmp);
        int slots[2] = {1, 3};
        const char *used[8];
        size_t n_used = 0, want = 0;
        for (size_t i = 0; i < n && want < 5; i++) {
            bool dup = false;
            for (size_t u = 0; u < n_used; u++)
                dup = dup || strcmp(used[u], ref[i].offer) == 0;
            if (dup || slots[ref[i].placement_index] == 0)
                continue;
            slots[ref[i].placement_index]--;
            used[n_used++] = ref[i].offer;
            nbx_action a;
            cr_assert_eq(nbx_result_action(r, want, &a), NBX_OK, "missing action %zu: %s", want,
                         text);
            cr_assert_str_eq(a.offer, ref[i].offer, "action %zu: %s", want, text);
            cr_assert_str_eq(a.placement, ref[i].placement, "action %zu: %s", want, text);
            want++;
        }
        cr_assert_eq(nbx_result_action_count(r), want, "%s", text);
        json_decref(doc);
    }
}

Test(decide, engine_from_texts_and_engine_check)
{
    char *catalog_text = tu_read_file(catalog_path, NULL);
    nbx_engine_options o = suite_options("by_price.lua");
    o.catalog = "catalog (in memory)";
    o.catalog_text = catalog_text;
    o.catalog_len = strlen(catalog_text);
    o.policy_text = BY_PRICE;
    o.policy_len = strlen(BY_PRICE);
    nbx_engine_info info;
    cr_assert_eq(nbx_engine_check(&o, &info), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_str_eq(info.policy_name, "by_price");
    cr_assert_eq(info.offers, 8);

    /* the same bytes from a file give the same versions */
    char *policy = write_policy("by_price.lua", BY_PRICE);
    nbx_engine_options f = suite_options(policy);
    nbx_engine_info from_files;
    cr_assert_eq(nbx_engine_check(&f, &from_files), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_str_eq(info.policy_version, from_files.policy_version);
    cr_assert_str_eq(info.catalog_version, from_files.catalog_version);

    /* an engine opened from the texts decides; errors name the given name */
    open_with(&o);
    cr_assert_gt(nbx_result_action_count(decide("alice", 0)), 0);
    o.policy_text = "return { name = 'x', score = ";
    o.policy_len = strlen(o.policy_text);
    cr_assert_eq(nbx_engine_check(&o, NULL), NBX_EPOLICY);
    cr_assert(strstr(nbx_last_errmsg(), "by_price.lua:1:") != NULL, "%s", nbx_last_errmsg());
    /* an older caller's smaller options struct still works */
    nbx_engine_options old = f;
    old.size = offsetof(nbx_engine_options, catalog_text);
    cr_assert_eq(nbx_engine_check(&old, NULL), NBX_OK, "%s", nbx_last_errmsg());
    old.size = offsetof(nbx_engine_options, log);
    cr_assert_eq(nbx_engine_check(&old, NULL), NBX_EINVAL);
    free(policy);
    free(catalog_text);
}

Test(decide, a_policy_over_the_engines_memory_limit_is_refused_at_open_and_at_reload)
{
    /* fits the default 32 MiB (nbx_policy_check passes), not the engine's 256 KiB */
    static const char *HEAVY = "local t = {}\n"
                               "for i = 1, 100000 do t[i] = i end\n"
                               "return { name = 'heavy', score = function() return #t end }\n";
    char *heavy = write_policy("heavy.lua", HEAVY);
    cr_assert_eq(nbx_policy_check(heavy, NULL), NBX_OK, "%s", nbx_last_errmsg());
    char *light = write_policy("light.lua", BY_PRICE);
    nbx_engine_options o = suite_options(heavy);
    o.memory_limit = 256u << 10;
    cr_assert_eq(nbx_engine_check(&o, NULL), NBX_EPOLICY);
    cr_assert(strstr(nbx_last_errmsg(), "heavy.lua") != NULL &&
                  strstr(nbx_last_errmsg(), "memory limit (256 KiB)") != NULL,
              "%s", nbx_last_errmsg());
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EPOLICY);
    cr_assert_null(e);

    /* serving the light policy, a reload to the heavy one is refused and the
     * light one keeps serving, deciding normally */
    o.policy = light;
    open_with(&o);
    nbx_engine_info before, after;
    nbx_engine_info_get(engine, &before);
    cr_assert_eq(nbx_engine_load_policy(engine, heavy), NBX_EPOLICY);
    cr_assert(strstr(nbx_engine_errmsg(engine), "memory limit") != NULL, "%s",
              nbx_engine_errmsg(engine));
    nbx_engine_info_get(engine, &after);
    cr_assert_str_eq(before.policy_version, after.policy_version);
    const nbx_result *r = decide("alice", 0);
    cr_assert_not(nbx_result_fallback(r), "%s", nbx_result_json(r, NULL));
    free(heavy);
    free(light);
}

static char logged[4096];
static void capture_log(void *ud, int level, const char *message)
{
    (void)ud;
    (void)level;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", message);
}

Test(decide, policy_text_in_log_lines_is_escaped)
{
    /* an error message with a newline and an ANSI escape (a name with
     * control characters is refused when the policy loads: test_policy) */
    char *policy = write_policy("inj.lua", "return { name = 'inj', score = function() "
                                           "error('\\27[31mred\\nFAKE LINE') end }\n");
    nbx_engine_options o = suite_options(policy);
    o.log = capture_log;
    logged[0] = '\0';
    open_with(&o);
    const nbx_result *r = decide("alice", 0);
    cr_assert(nbx_result_fallback(r));
    cr_assert(strstr(logged, "\\x1b[31mred\\x0aFAKE LINE") != NULL, "%s", logged);
    /* one line per message: every newline ends a message */
    for (const char *p = logged; *p; p++) {
        cr_assert((unsigned char)*p >= 0x20 || *p == '\n', "control byte 0x%02x in the log",
                  (unsigned char)*p);
        if (*p == '\n')
            cr_assert(p[1] == '\0' || strncmp(p + 1, "FAKE", 4) != 0, "%s", logged);
    }
    free(policy);
}

/* The log escapes as every message does (nbx_escape_text): a customer id
 * of the request, named in a fallback's log line, with C1 controls (U+009B,
 * a terminal's CSI) and a byte that is not UTF-8. */
Test(decide, request_text_in_log_lines_is_escaped)
{
    char *policy = write_policy("fails.lua", FAILING);
    nbx_engine_options o = suite_options(policy);
    o.log = capture_log;
    logged[0] = '\0';
    open_with(&o);
    const nbx_result *r = decide("mallory\xc2\x9b" "2J\x1b]0;t\x07\xff", 0);
    cr_assert(nbx_result_fallback(r));
    cr_assert(strstr(logged, "customer mallory\\xc2\\x9b2J\\x1b]0;t\\x07\\xff: ") != NULL, "%s",
              logged);
    for (const unsigned char *p = (const unsigned char *)logged; *p; p++)
        cr_assert((*p >= 0x20 && *p < 0x7f) || *p == '\n', "byte 0x%02x in the log: %s", *p,
                  logged);
    free(policy);
}

/* ========================================================================
 * Consent: channels and personalisation
 * ======================================================================== */

/* The fixture catalog with `replace` (a line of it) replaced by `with`,
 * as the suite's catalog. */
static void use_fixture_with(const char *replace, const char *with)
{
    char *fixture = tu_read_file(catalog_path, NULL);
    char *at = strstr(fixture, replace);
    cr_assert_not_null(at, "no '%s' in the fixture", replace);
    char *path = tu_path(dir, "consent.json");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "%.*s%s%s", (int)(at - fixture), fixture, with, at + strlen(replace));
    fclose(f);
    free(fixture);
    free(catalog_path);
    catalog_path = path;
}

#define FIXTURE_GUARDRAILS "\"guardrails\": {"
#define WITH_CHANNELS                                                                              \
    "\"channels\": {\"email\": {\"purpose\": \"email\"}, \"web\": {\"purpose\": null}},\n"         \
    "  \"guardrails\": {"

static const nbx_result *decide_session(const char *customer, const nbx_kv *session, size_t n,
                                        unsigned flags)
{
    return decide_request(customer, NULL, 0, session, n, flags, NOW);
}

static void put_profile(const char *json)
{
    nbx_store *s = nbx_engine_store(engine);
    cr_assert_eq(nbx_profile_put(s, json, strlen(json)), NBX_OK, "%s", nbx_store_errmsg(s));
}

/* Issue 9: a batch through the email channel reached customers who had
 * refused email. A decision through a channel needs its consent. */
Test(decide, a_channel_without_its_consent_shows_nothing)
{
    use_fixture_with(FIXTURE_GUARDRAILS, WITH_CHANNELS);
    open_engine(BY_PRICE);
    put_profile("{\"id\":\"erin\",\"consent\":{\"personalization\":true,\"email\":false}}");
    put_profile("{\"id\":\"finn\",\"consent\":{\"personalization\":true,\"email\":true}}");
    nbx_kv email[] = {{"channel", "email"}}, web[] = {{"channel", "web"}};
    const char *who[] = {"erin", "alice", "stranger"}; /* refused, not mentioned, no profile */
    for (size_t i = 0; i < 3; i++) {
        const nbx_result *r = decide_session(who[i], email, 1, NBX_DECIDE_EXPLAIN);
        cr_assert_eq(nbx_result_action_count(r), 0, "%s by email: %s", who[i],
                     nbx_result_json(r, NULL));
        uint32_t counts[NBX_EXCLUDED_COUNT];
        nbx_result_exclusions(r, counts);
        /* all 10 candidates, purpose "none" included */
        cr_assert_eq(counts[NBX_EXCLUDED_CONSENT], 10, "%s: %s", who[i], nbx_result_json(r, NULL));
        cr_assert_eq(nbx_result_action_count(decide_session(who[i], web, 1, 0)) > 0, 1,
                     "%s on the web", who[i]);
    }
    const nbx_result *r = decide_session("finn", email, 1, 0);
    const char *want[] = {"winback_20/hero", "email_only/recs", "free_shipping/recs",
                          "carousel_new/recs"};
    expect_actions(r, want, 4);
    /* recording through a channel rechecks its consent like the rest */
    r = decide_session("finn", email, 1, NBX_DECIDE_RECORD);
    cr_assert_eq(nbx_result_action_count(r), 4, "%s", nbx_result_json(r, NULL));
}

Test(decide, an_unknown_channel_is_an_error_naming_it)
{
    use_fixture_with(FIXTURE_GUARDRAILS, WITH_CHANNELS);
    open_engine(BY_PRICE);
    nbx_kv fax[] = {{"device", "desk"}, {"channel", "fax"}};
    nbx_request r;
    nbx_request_init(&r);
    r.customer = "alice";
    r.session = fax;
    r.n_session = 2;
    r.now_ms = NOW;
    const nbx_result *res = (const nbx_result *)1;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_EINVAL);
    cr_assert_null(res);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "field 'session.channel': 'fax' is not a channel of "
                                          "the catalog (channels: email, web)") != NULL,
              "%s", nbx_ctx_errmsg(ctx));
    /* without `channels`, any channel is accepted */
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    ctx = NULL;
    engine = NULL;
    free(catalog_path);
    catalog_path = tu_source_path("tests/data/catalog.json");
    open_engine(BY_PRICE);
    cr_assert_eq(nbx_result_action_count(decide_session("alice", fax, 2, 0)), 4);
}

/* A policy that reads everything a profile holds into its score. */
static const char *DATA_HUNGRY =
    "return { name = 'data_hungry', score = function(o, c, s)\n"
    "  local v = o.price + nbx.propensity(c, o) * 1000\n"
    "  v = v + (c.propensity[o.id] or 0) * 100 + (c.ltv or 0) + (c.churn or 0) * 10\n"
    "  v = v + c.rfm.orders + c.rfm.r + (c.rfm.segment and 5000 or 0)\n"
    "  v = v + (c.attrs.tier or 0) + (c.anonymous and 0 or 7)\n"
    "  for k in pairs(c.consent) do v = v + 3 end\n"
    "  return v, nbx.expected_margin(c, o) end }\n";

#define RICH_DATA                                                                                  \
    "\"attrs\":{\"tier\":40},\"ltv\":900,\"churn\":0.7,"                                           \
    "\"propensity\":{\"free_shipping\":0.9,\"winback_20\":0.8,\"bestsellers\":0.7,"                \
    "\"brand_banner\":0.6,\"apparel\":0.5,\"carousel_new\":0.4},"                                  \
    "\"rfm\":{\"orders\":12,\"revenue\":800,\"r\":5,\"f\":5,\"m\":5,\"segment\":\"at_risk\"}"

/* The result JSON without the two fields that name the decision and the
 * customer. */
static char *without_ids(const char *json)
{
    json_error_t jerr;
    json_t *doc = json_loads(json, 0, &jerr);
    cr_assert_not_null(doc, "%s: %s", jerr.text, json);
    json_object_del(doc, "decision_id");
    json_object_del(doc, "customer");
    char *out = json_dumps(doc, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(doc);
    return out;
}

static void expect_same_as_stranger(const char *customer, const nbx_kv *session, size_t n)
{
    char *mine = without_ids(
        nbx_result_json(decide_session(customer, session, n, NBX_DECIDE_EXPLAIN), NULL));
    char *theirs = without_ids(
        nbx_result_json(decide_session("stranger", session, n, NBX_DECIDE_EXPLAIN), NULL));
    cr_assert_str_eq(mine, theirs, "%s is not decided as an unknown customer:\n%s\n%s", customer,
                     mine, theirs);
    free(mine);
    free(theirs);
}

/* Issue 9: a customer who refused personalisation was still ranked on their
 * own propensities. The policy (Lua or the native scorer) sees them as an
 * anonymous visitor: exactly an unknown customer's actions and scores. */
Test(decide, without_personalisation_consent_the_decision_is_an_unknown_customers)
{
    char *native = tu_source_path("policies/margin_per_session.lua");
    const char *policies[] = {DATA_HUNGRY, NULL};
    for (int k = 0; k < 2; k++) {
        if (policies[k]) {
            open_engine(policies[k]);
        } else {
            nbx_engine_options o = suite_options(native);
            open_with(&o);
        }
        /* consents an unknown customer has too (none of the catalog's
         * purposes), so that eligibility matches */
        put_profile(
            "{\"id\":\"dora\",\"consent\":{\"personalization\":false,\"sms\":true}," RICH_DATA "}");
        put_profile("{\"id\":\"ella\",\"consent\":{\"sms\":true}," RICH_DATA "}");
        put_profile("{\"id\":\"gabe\",\"consent\":{\"personalization\":true}," RICH_DATA "}");
        /* refused, and not mentioned (consent_default false) */
        expect_same_as_stranger("dora", NULL, 0);
        expect_same_as_stranger("ella", NULL, 0);
        cr_assert(nbx_result_anonymous(decide("dora", 0)));
        /* the control: with consent the same data changes the decision */
        char *mine = without_ids(nbx_result_json(decide("gabe", NBX_DECIDE_EXPLAIN), NULL));
        char *theirs = without_ids(nbx_result_json(decide("stranger", NBX_DECIDE_EXPLAIN), NULL));
        cr_assert_str_neq(mine, theirs, "gabe's data should change the decision");
        free(mine);
        free(theirs);
        nbx_ctx_close(ctx);
        nbx_engine_close(engine);
        ctx = NULL;
        engine = NULL;
    }
    free(native);
}

/* With consent_default true and a purpose of its own, a customer who
 * refused that purpose still gets every other offer, ranked as a visitor:
 * the same as an unknown customer, for whom the default grants all. */
Test(decide, a_refused_personalisation_purpose_of_the_catalogs_own)
{
    use_fixture_with(FIXTURE_GUARDRAILS, "\"guardrails\": {\"consent_default\": true, "
                                         "\"personalization_purpose\": \"profiling\", ");
    open_engine(DATA_HUNGRY);
    put_profile("{\"id\":\"hana\",\"consent\":{\"profiling\":false}," RICH_DATA "}");
    nbx_kv web[] = {{"channel", "web"}};
    expect_same_as_stranger("hana", web, 1);
    const nbx_result *r = decide("hana", NBX_DECIDE_EXPLAIN);
    cr_assert(nbx_result_anonymous(r));
    cr_assert_gt(nbx_result_action_count(r), 2, "personalisation offers still shown: %s",
                 nbx_result_json(r, NULL));
}

/* Ranked as a visitor, the customer's own counters still bind: the contact
 * policy (5 a week) stops them, not the unknown customer. */
Test(decide, without_personalisation_consent_caps_still_bind)
{
    open_engine(BY_PRICE);
    const nbx_result *r = decide_full("bob", NULL, 0, NBX_DECIDE_RECORD, NOW);
    cr_assert_eq(nbx_result_action_count(r), 2, "%s", nbx_result_json(r, NULL));
    for (int i = 1; i < 3; i++)
        decide_full("bob", NULL, 0, NBX_DECIDE_RECORD, NOW + i);
    /* six impressions recorded would pass the limit: 2 + 2 + 1 */
    r = decide_full("bob", NULL, 0, NBX_DECIDE_EXPLAIN, NOW + 10);
    cr_assert_eq(nbx_result_action_count(r), 0, "contacts used up: %s", nbx_result_json(r, NULL));
    cr_assert(strstr(nbx_result_json(r, NULL), "\"excluded\":\"contacts\"") != NULL, "%s",
              nbx_result_json(r, NULL));
    cr_assert_eq(nbx_result_action_count(decide_full("stranger", NULL, 0, 0, NOW + 10)), 2);
}
