/* Suite: given (core/given.c): exposure counters given with a request
 * (nbx_request.exposures_json) instead of the store's, as `nbx policy test`
 * builds a customer's history: caps, cooldowns and the contact policy count
 * them as they count stored events, the policy reads them, explanations
 * word them, and bad input is refused naming the field. */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

#define NOW INT64_C(1773144000000) /* 2026-03-10T12:00:00Z */

static char *dir, *catalog_path;
static nbx_engine *engine;
static nbx_ctx *ctx;

/* customer.exposures as the policy reads them, returned as the score of
 * free_shipping; every other offer scores 0. */
static const char *READS_EXPOSURES =
    "return { name = 'reads', score = function(o, c)\n"
    "  if o.id ~= 'free_shipping' then return 0 end\n"
    "  local x = c.exposures\n"
    "  return x.impressions * 1000 + x.clicks * 100 + x.dismisses * 10 + x.accepts\n"
    "    + (x.last_impression and 0.5 or 0) end }\n";

static void open_engine(const char *store)
{
    char *policy = tu_path(dir, "reads.lua");
    cr_assert_eq(tu_write_file(policy, READS_EXPOSURES), 0);
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.catalog = catalog_path;
    o.policy = policy;
    o.store = store;
    o.flags = store ? 0 : NBX_ENGINE_NO_STORE;
    cr_assert_eq(nbx_engine_open(&o, &engine), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(engine, &ctx), NBX_OK, "%s", nbx_last_errmsg());
    free(policy);
}

static void setup(void)
{
    dir = tu_tempdir("given");
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
    free(catalog_path);
}

TestSuite(given, .init = setup, .fini = teardown);

static const char PROFILE[] = "{\"id\":\"gina\",\"consent\":{\"personalization\":true}}";

static int decide_with(const char *exposures, unsigned flags, const nbx_result **r)
{
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "gina";
    req.now_ms = NOW;
    req.flags = flags | NBX_DECIDE_EXPLAIN;
    req.profile_json = PROFILE;
    req.profile_len = strlen(PROFILE);
    req.exposures_json = exposures;
    req.exposures_len = exposures ? strlen(exposures) : 0;
    return nbx_decide(ctx, &req, r);
}

static const nbx_result *decided(const char *exposures)
{
    const nbx_result *r;
    cr_assert_eq(decide_with(exposures, 0, &r), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    return r;
}

/* The explained candidate free_shipping at hero, as text: "excluded" and
 * "reason" or "score". */
static const char *shipping(const nbx_result *r)
{
    const char *json = nbx_result_json(r, NULL);
    const char *c = strstr(json, "{\"offer\":\"free_shipping\",\"placement\":\"hero\"");
    cr_assert_not_null(c, "%s", json);
    return c;
}

Test(given, impressions_in_the_cap_window_exclude_the_offer_in_words)
{
    open_engine(NULL);
    /* free_shipping: at most 3 impressions in 7 days */
    const nbx_result *r = decided("{\"free_shipping\":{\"impressions\":3,"
                                  "\"last_impression\":\"2026-03-08T09:00:00Z\"}}");
    cr_expect(strstr(shipping(r), "\"excluded\":\"frequency\",\"reason\":\"shown 3 times in the "
                                  "last 7 days; the cap is 3\""),
              "%s", shipping(r));
    /* two impressions: under the cap, and the policy reads them */
    r = decided("{\"free_shipping\":{\"impressions\":2,\"clicks\":1,"
                "\"last_impression\":\"2026-03-08T09:00:00Z\"}}");
    cr_expect(strstr(shipping(r), "\"score\":2100.5,"), "%s", shipping(r));
    /* three, but ten days ago: outside the window */
    r = decided("{\"free_shipping\":{\"impressions\":3,\"last_impression\":1772280000}}");
    cr_expect(strstr(shipping(r), "\"excluded\":null"), "%s", shipping(r));
    /* without a time they are dated at the decision's clock */
    r = decided("{\"free_shipping\":{\"impressions\":3}}");
    cr_expect(strstr(shipping(r), "\"excluded\":\"frequency\""), "%s", shipping(r));
}

Test(given, a_recent_dismiss_is_a_cooldown)
{
    open_engine(NULL);
    /* free_shipping: 14 days of cooldown after a dismiss */
    const nbx_result *r =
        decided("{\"free_shipping\":{\"dismisses\":1,\"last_dismiss\":\"2026-03-05T00:00:00Z\"}}");
    cr_expect(strstr(shipping(r), "\"excluded\":\"cooldown\""), "%s", shipping(r));
    r = decided("{\"free_shipping\":{\"dismisses\":1,\"last_dismiss\":\"2026-02-01T00:00:00Z\"}}");
    cr_expect(strstr(shipping(r), "\"excluded\":null"), "%s", shipping(r));
}

Test(given, impressions_of_every_offer_count_against_the_contact_policy)
{
    open_engine(NULL);
    /* at most 5 contacts in 7 days, over all offers */
    const nbx_result *r = decided("{\"winback_20\":{\"impressions\":2},\"carousel_new\":"
                                  "{\"impressions\":2},\"bestsellers\":{\"impressions\":1}}");
    cr_expect_eq(nbx_result_action_count(r), 0, "%s", nbx_result_json(r, NULL));
    cr_expect(strstr(shipping(r), "\"excluded\":\"contacts\""), "%s", shipping(r));
    r = decided("{\"winback_20\":{\"impressions\":2},\"carousel_new\":{\"impressions\":2}}");
    cr_expect_eq(nbx_result_action_count(r), 1, "one contact left: %s", nbx_result_json(r, NULL));
}

Test(given, given_counters_replace_the_store_s)
{
    char *store_dir = tu_path(dir, "store");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_CREATE, &s), NBX_OK);
    for (int i = 0; i < 3; i++) {
        char ev[256];
        snprintf(ev, sizeof ev,
                 "{\"event_id\":\"e%d\",\"customer\":\"gina\",\"type\":\"impression\","
                 "\"offer\":\"free_shipping\",\"ts\":\"2026-03-0%dT10:00:00Z\"}",
                 i, 7 + i);
        cr_assert_eq(nbx_event_apply(s, ev, strlen(ev), NULL), NBX_OK, "%s", nbx_last_errmsg());
    }
    nbx_store_close(s);
    open_engine(store_dir);
    const nbx_result *r = decided(NULL);
    cr_expect(strstr(shipping(r), "\"excluded\":\"frequency\""), "the store's: %s", shipping(r));
    r = decided("{}");
    cr_expect(strstr(shipping(r), "\"excluded\":null"), "none given: %s", shipping(r));
    free(store_dir);
}

Test(given, bad_counters_are_refused_naming_the_field)
{
    open_engine(NULL);
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"[]", "field 'exposures': must be an object"},
        {"{\"nope\":{}}", "field 'exposures.nope': not an offer of the catalog"},
        {"{\"free_shipping\":3}", "field 'exposures.free_shipping': must be an object"},
        {"{\"free_shipping\":{\"shown\":3}}", "field 'exposures.free_shipping.shown': unknown"},
        {"{\"free_shipping\":{\"impressions\":-1}}",
         "field 'exposures.free_shipping.impressions': must be a whole number"},
        {"{\"free_shipping\":{\"impressions\":2.5}}",
         "field 'exposures.free_shipping.impressions': must be a whole number"},
        {"{\"free_shipping\":{\"impressions\":\"3\"}}",
         "field 'exposures.free_shipping.impressions': must be a whole number"},
        {"{\"free_shipping\":{\"last_dismiss\":\"yesterday\"}}",
         "field 'exposures.free_shipping.last_dismiss': must be an RFC 3339 time"},
        {"{\"free_shipping\":{},\"free_shipping\":{}}",
         "field 'exposures.free_shipping': given twice"},
        {"{\"free_shipping\":{}} x", "field 'exposures': "},
        {"{\"free_shipping\":{\"impressions\":1", "field 'exposures.free_shipping': "},
    };
    for (size_t i = 0; i < NBX_ARRAY_LEN(cases); i++) {
        const nbx_result *r;
        cr_expect_eq(decide_with(cases[i].json, 0, &r), NBX_EINVAL, "case %zu", i);
        cr_expect(strstr(nbx_ctx_errmsg(ctx), cases[i].want), "case %zu: %s", i,
                  nbx_ctx_errmsg(ctx));
    }
    /* and the context decides normally afterwards */
    cr_expect_eq(decided("{}") != NULL, 1);
}

Test(given, given_counters_are_never_recorded)
{
    char *store_dir = tu_path(dir, "store");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_CREATE, &s), NBX_OK);
    nbx_store_close(s);
    open_engine(store_dir);
    const nbx_result *r;
    cr_expect_eq(decide_with("{}", NBX_DECIDE_RECORD, &r), NBX_EINVAL);
    cr_expect(strstr(nbx_ctx_errmsg(ctx), "exposures_json"), "%s", nbx_ctx_errmsg(ctx));
    free(store_dir);
}

Test(given, a_request_of_an_older_size_never_reads_them)
{
    open_engine(NULL);
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "gina";
    req.now_ms = NOW;
    req.profile_json = PROFILE;
    req.profile_len = strlen(PROFILE);
    req.size = offsetof(nbx_request, exposures_json);
    req.exposures_json = "garbage that must not be read";
    req.exposures_len = 29;
    const nbx_result *r;
    cr_expect_eq(nbx_decide(ctx, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
}
