/* Suite: catalog (core/catalog.c): loading and validation. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;

static void setup(void)
{
    dir = tu_tempdir("catalog");
    cr_assert_not_null(dir);
}

static void teardown(void)
{
    tu_rmtree(dir);
    free(dir);
}

TestSuite(catalog, .init = setup, .fini = teardown);

static nbx_catalog *load_fixture(void)
{
    char *path = tu_source_path("tests/data/catalog.json");
    nbx_err e = {0};
    nbx_catalog *c = NULL;
    int rc = nbx_catalog_load(path, &c, &e);
    cr_assert_eq(rc, NBX_OK, "load failed: %s", e.msg);
    free(path);
    return c;
}

/* Load text as a catalog; return the code and leave the message in e. */
static int load_text(const char *text, nbx_err *e)
{
    char *path = tu_path(dir, "c.json");
    cr_assert_eq(tu_write_file(path, text), 0);
    nbx_catalog *c = NULL;
    int rc = nbx_catalog_load(path, &c, e);
    nbx_catalog_unref(c);
    free(path);
    return rc;
}

Test(catalog, loads_fixture_sorted_with_derived_fields)
{
    nbx_catalog *c = load_fixture();
    cr_assert_eq(c->n_placements, 2);
    cr_assert_eq(c->n_offers, 8);
    for (uint32_t i = 1; i < c->n_offers; i++)
        cr_assert_lt(nbx_sv_cmp(c->offers[i - 1].id, c->offers[i].id), 0, "offers not sorted");
    const nbx_offer *fs = nbx_catalog_offer(c, NBX_SV("free_shipping"));
    cr_assert_not_null(fs);
    cr_assert_float_eq(fs->margin, 49.0 - 30.0 - 4.9, 1e-9);
    cr_assert_float_eq(fs->discount_pct, 10.0, 1e-9);
    cr_assert_eq(fs->impressions.max, 3);
    cr_assert_eq(fs->impressions.window_days, 7);
    cr_assert_eq(fs->dismiss_cooldown_days, 14);
    cr_assert_eq(fs->accepts.max, 1);
    cr_assert_eq(fs->budget_impressions, 100000);
    cr_assert_eq(fs->n_placements, 2);
    cr_assert(c->has_budgets);
    const nbx_offer *bb = nbx_catalog_offer(c, NBX_SV("brand_banner"));
    cr_assert_eq(bb->purpose.len, 0, "purpose none must need no consent");
    cr_assert_eq(bb->kind, NBX_KIND_MODULE);
    cr_assert_eq(bb->valid_from, INT64_MIN);
    cr_assert_null(nbx_catalog_offer(c, NBX_SV("nope")));
    int hero = nbx_catalog_placement(c, NBX_SV("hero"));
    cr_assert_eq(hero, 0);
    cr_assert_eq(c->placements[hero].n_fallback, 1);
    cr_assert_eq(c->placements[hero].fallback[0], bb->index);
    cr_assert_eq(c->placements[1].slots, 3);
    cr_assert_float_eq(c->guardrails.max_discount_pct, 30.0, 1e-9);
    cr_assert_eq(c->guardrails.max_contacts.max, 5);
    cr_assert_eq(strlen(c->version_hex), 16);
    const nbx_offer *wb = nbx_catalog_offer(c, NBX_SV("winback_20"));
    cr_assert_eq(wb->segment_prior[NBX_SEGMENT_AT_RISK], 0.2);
    cr_assert_eq(wb->segment_prior[NBX_SEGMENT_CHAMPIONS], 0.01);
    cr_assert(isnan(wb->segment_prior[NBX_SEGMENT_LOYAL]));
    /* categories: distinct, sorted, indexed from the offers */
    cr_assert_eq(c->n_categories, 4, "apparel, beauty, retention, shipping");
    for (uint32_t i = 1; i < c->n_categories; i++)
        cr_assert_lt(nbx_sv_cmp(c->categories[i - 1], c->categories[i]), 0);
    cr_assert(nbx_sv_eq(c->categories[wb->category_index], wb->category));
    cr_assert_eq(nbx_catalog_offer(c, NBX_SV("brand_banner"))->category_index, UINT32_MAX);
    /* consent purposes likewise; "none" needs no consent and has no index */
    cr_assert_eq(c->n_purposes, 2, "email, personalization");
    cr_assert(nbx_sv_eq_cstr(c->purposes[0], "email"));
    cr_assert(nbx_sv_eq_cstr(c->purposes[1], "personalization"));
    cr_assert(nbx_sv_eq(c->purposes[wb->purpose_index], wb->purpose));
    cr_assert_eq(nbx_catalog_offer(c, NBX_SV("brand_banner"))->purpose_index, UINT32_MAX);
    nbx_catalog_unref(c);
}

Test(catalog, placement_lists_its_offers_in_id_order)
{
    nbx_catalog *c = load_fixture();
    const nbx_placement *recs = &c->placements[1];
    cr_assert_eq(recs->n_offers, 6);
    for (uint32_t i = 1; i < recs->n_offers; i++)
        cr_assert_lt(recs->offers[i - 1], recs->offers[i]);
    nbx_catalog_unref(c);
}

#define OFFER_OK                                                                              \
    "\"id\":\"a\",\"placements\":[\"hero\"],\"price\":10,\"unit_cost\":5,\"purpose\":\"none\""

Test(catalog, errors_name_offer_and_field)
{
    struct {
        const char *text;
        const char *expect;
    } cases[] = {
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK ",\"price\":\"x\"}]}",
         "c.json"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{\"id\":\"a\",\"placements\":[\"hero\"],"
         "\"price\":\"x\",\"unit_cost\":5,\"purpose\":\"none\"}]}",
         "offer 'a': field 'price': must be a number"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{\"id\":\"a\",\"placements\":[\"side\"],"
         "\"price\":1,\"unit_cost\":5,\"purpose\":\"none\"}]}",
         "offer 'a': field 'placements': unknown placement 'side'"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"caps\":{\"impressions\":{\"max\":3,\"window_days\":0}}}]}",
         "offer 'a': field 'caps.impressions.window_days'"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"base_propensity\":1.5}]}",
         "offer 'a': field 'base_propensity': 1.5 is out of range"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{\"id\":\"a\",\"placements\":[\"hero\"],"
         "\"price\":1,\"unit_cost\":5}]}",
         "offer 'a': field 'purpose': is required"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK "},{" OFFER_OK "}]}",
         "offer 'a': field 'id': duplicate"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"kind\":\"banner\"}]}",
         "offer 'a': field 'kind'"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"valid_from\":\"2026-02-01T00:00:00Z\",\"valid_to\":\"2026-01-01T00:00:00Z\"}]}",
         "offer 'a': field 'valid_to': must be after valid_from"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"valid_to\":\"tomorrow\"}]}",
         "offer 'a': field 'valid_to': must be an RFC 3339 time"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         "}],\"fallback\":{\"hero\":[\"zzz\"]}}",
         "fallback.hero[0]"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         "}],\"guardrails\":{\"max_discount_pct\":130}}",
         "guardrails: field 'max_discount_pct'"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"segment_propensity\":{\"whales\":0.2}}]}",
         "segment_propensity.whales': unknown segment"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"caps\":{\"impresions\":{\"max\":3,\"window_days\":7}}}]}",
         "offer 'a': field 'caps.impresions': unknown field; known: impressions, accepts"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"caps\":{\"impressions\":{\"max\":3,\"days\":7}}}]}",
         "offer 'a': field 'caps.impressions.days': unknown field"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"budget\":{\"daily_clicks\":5}}]}",
         "offer 'a': field 'budget.daily_clicks': unknown field"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"budget\":{\"daily_accepts\":-1}}]}",
         "offer 'a': field 'budget.daily_accepts': must be an integer >= 0"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         "}],\"guardrails\":{\"max_contacts\":{\"max\":5,\"window_days\":0}}}",
         "guardrails: field 'max_contacts.window_days'"},
        {"{\"placements\":[{\"id\":\"hero\"},{\"id\":\"recs\"}],\"offers\":[{" OFFER_OK
         "}],\"fallback\":{\"recs\":[\"a\"]}}",
         "field 'fallback.recs[0]': offer 'a' does not list placement 'recs'"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"headline\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}",
         "offer 'a': field 'headline': nested deeper than 32 levels"},
        /* misspelt keys outside offers would silently drop a guardrail or a
         * placement's slots: refused like misspelt caps */
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         "}],\"guardrail\":{\"max_discount_pct\":30}}",
         "c.json: field 'guardrail': unknown field; known: placements, offers, fallback, guardrails"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         "}],\"guardrails\":{\"max_discount\":30}}",
         "guardrails: field 'max_discount': unknown field; known: max_discount_pct"},
        {"{\"placements\":[{\"id\":\"hero\",\"slot\":3}],\"offers\":[{" OFFER_OK "}]}",
         "placement 'hero': field 'slot': unknown field; known: id, slots"},
        {"{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
         ",\"caps\":{\"impressions\":{\"max\":5000000000,\"window_days\":7}}}]}",
         "offer 'a': field 'caps.impressions.max': must be an integer from 0 to 4294967295"},
        {"{\"placements\":[],\"offers\":[]}", "field 'placements'"},
        {"{\"placements\":[{\"id\":\"hero\"}],\n\"offers\": [ }", "c.json:2:"},
        {"[1,2]", "must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nbx_err e = {0};
        int rc = load_text(cases[i].text, &e);
        cr_assert_neq(rc, NBX_OK, "case %zu accepted", i);
        cr_assert(strstr(e.msg, cases[i].expect) != NULL, "case %zu: expected '%s' in '%s'", i,
                  cases[i].expect, e.msg);
    }
}

Test(catalog, missing_file_is_not_found)
{
    nbx_err e = {0};
    nbx_catalog *c = NULL;
    cr_assert_eq(nbx_catalog_load("/nonexistent/catalog.json", &c, &e), NBX_ENOTFOUND);
    cr_assert_null(c);
    cr_assert(strstr(e.msg, "/nonexistent/catalog.json") != NULL, "%s", e.msg);
}

Test(catalog, public_check)
{
    char *path = tu_source_path("tests/data/catalog.json");
    nbx_engine_info info = {0};
    cr_assert_eq(nbx_catalog_check(path, &info), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(info.offers, 8);
    cr_assert_eq(info.placements, 2);
    cr_assert_eq(strlen(info.catalog_version), 16);
    cr_assert_eq(nbx_catalog_check(NULL, &info), NBX_EINVAL);
    cr_assert_eq(nbx_catalog_check("/nonexistent.json", NULL), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_last_errmsg(), "/nonexistent.json") != NULL);
    free(path);
}

Test(catalog, values_as_deep_as_the_sandbox_takes_load)
{
    /* 32 levels (31 arrays around a scalar... the sandbox's limit) load,
     * and the sandbox builds them (see test_sandbox for the 33rd) */
    char text[512];
    snprintf(text, sizeof text,
             "{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK
             ",\"headline\":%s1%s}]}",
             "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    nbx_err e = {0};
    cr_assert_eq(load_text(text, &e), NBX_OK, "%s", e.msg);
}

/* ========================================================================
 * Consent: channels and the personalisation purpose
 * ======================================================================== */

/* The catalog made of the one-offer catalog and tail (the rest of the top
 * object, its closing brace included) must be refused with expect in the
 * message. */
static void expect_refused(const char *tail, const char *expect)
{
    char text[1024];
    snprintf(text, sizeof text, "{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK "%s",
             tail);
    nbx_err e = {0};
    cr_assert_eq(load_text(text, &e), NBX_EPARSE, "accepted: %s", text);
    cr_assert(strstr(e.msg, expect) != NULL, "expected '%s' in '%s'", expect, e.msg);
}

/* Load text, which must load. */
static nbx_catalog *load_ok(const char *text)
{
    char *path = tu_path(dir, "ok.json");
    cr_assert_eq(tu_write_file(path, text), 0);
    nbx_err e = {0};
    nbx_catalog *c = NULL;
    cr_assert_eq(nbx_catalog_load(path, &c, &e), NBX_OK, "%s", e.msg);
    free(path);
    return c;
}

/* The purpose index a session channel maps to; the code in *rc. */
static uint32_t channel_purpose(const nbx_catalog *c, const char *channel, int *rc, nbx_err *e)
{
    nbx_kv session[] = {{"device", "phone"}, {"channel", channel}};
    uint32_t purpose = 12345;
    *rc = nbx_catalog_channel(c, session, channel ? 2 : 1, &purpose, e);
    return purpose;
}

static const char *purpose_name(const nbx_catalog *c, uint32_t i)
{
    cr_assert_lt(i, c->n_purposes, "purpose index %u of %u", i, c->n_purposes);
    return c->purposes[i].ptr;
}

Test(catalog, channels_map_to_purposes_known_with_the_offers_ones)
{
    nbx_catalog *c =
        load_ok("{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK "}],"
                "\"channels\":{\"web\":{\"purpose\":null},\"email\":{\"purpose\":\"email\"},"
                "\"sms\":{\"purpose\":\"sms\"},\"kiosk\":{\"purpose\":\"none\"}}}");
    cr_assert(c->channels_declared);
    cr_assert_eq(c->n_channels, 4);
    for (uint32_t i = 1; i < c->n_channels; i++)
        cr_assert_lt(nbx_sv_cmp(c->channels[i - 1].name, c->channels[i].name), 0, "not sorted");
    /* purposes: the channels' and the default personalisation purpose,
     * though no offer names them */
    cr_assert_eq(c->n_purposes, 3, "email, personalization, sms: %u", c->n_purposes);
    cr_assert_str_eq(purpose_name(c, c->personalization_index), "personalization");
    nbx_err e = {0};
    int rc;
    cr_assert_str_eq(purpose_name(c, channel_purpose(c, "email", &rc, &e)), "email");
    cr_assert_eq(rc, NBX_OK);
    cr_assert_str_eq(purpose_name(c, channel_purpose(c, "sms", &rc, &e)), "sms");
    cr_assert_eq(channel_purpose(c, "web", &rc, &e), UINT32_MAX, "purpose null: no consent");
    cr_assert_eq(channel_purpose(c, "kiosk", &rc, &e), UINT32_MAX, "purpose none: no consent");
    cr_assert_eq(channel_purpose(c, NULL, &rc, &e), UINT32_MAX, "no channel field");
    cr_assert_eq(rc, NBX_OK);
    /* declared: any other channel is an error naming the field and value */
    channel_purpose(c, "fax", &rc, &e);
    cr_assert_eq(rc, NBX_EINVAL);
    cr_assert(strstr(e.msg, "field 'session.channel': 'fax' is not a channel of the catalog "
                            "(channels: email, kiosk, sms, web)") != NULL,
              "%s", e.msg);
    channel_purpose(c, "Email", &rc, &e);
    cr_assert_eq(rc, NBX_EINVAL, "channel names are exact");
    nbx_catalog_unref(c);
}

Test(catalog, without_channels_a_channel_named_like_a_purpose_needs_it)
{
    nbx_catalog *c = load_fixture();
    cr_assert_not(c->channels_declared);
    nbx_err e = {0};
    int rc;
    cr_assert_str_eq(purpose_name(c, channel_purpose(c, "email", &rc, &e)), "email");
    cr_assert_eq(channel_purpose(c, "web", &rc, &e), UINT32_MAX);
    cr_assert_eq(rc, NBX_OK, "undeclared channels are not errors: %s", e.msg);
    nbx_catalog_unref(c);
}

Test(catalog, personalization_purpose_default_custom_and_none)
{
    nbx_catalog *c = load_fixture();
    cr_assert_str_eq(purpose_name(c, c->personalization_index), "personalization");
    nbx_catalog_unref(c);
    c = load_ok("{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK "}],"
                "\"guardrails\":{\"personalization_purpose\":\"profiling\"}}");
    cr_assert_eq(c->n_purposes, 1);
    cr_assert_str_eq(purpose_name(c, c->personalization_index), "profiling");
    nbx_catalog_unref(c);
    const char *none[] = {"\"none\"", "null"};
    for (size_t i = 0; i < 2; i++) {
        char text[512];
        snprintf(text, sizeof text,
                 "{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK "}],"
                 "\"guardrails\":{\"personalization_purpose\":%s}}",
                 none[i]);
        c = load_ok(text);
        cr_assert_eq(c->personalization_index, UINT32_MAX, "%s: needs no consent", none[i]);
        cr_assert_eq(c->n_purposes, 0);
        nbx_catalog_unref(c);
    }
}

Test(catalog, bad_channels_and_personalization_purpose_are_refused)
{
    struct {
        const char *tail;
        const char *expect;
    } cases[] = {
        {",\"channels\":[\"email\"]}", "field 'channels': must be an object"},
        {",\"channels\":{\"email\":\"email\"}}", "channel 'email': field 'purpose': the channel "
                                                 "must be an object"},
        {",\"channels\":{\"email\":{}}}", "channel 'email': field 'purpose': is required"},
        {",\"channels\":{\"email\":{\"purpose\":3}}}",
         "channel 'email': field 'purpose': must be a string"},
        {",\"channels\":{\"email\":{\"purpose\":\"\"}}}",
         "channel 'email': field 'purpose': must be 1 to 128 bytes"},
        {",\"channels\":{\"email\":{\"purpose\":\"email\",\"consent\":true}}}",
         "channel 'email': field 'consent': unknown field; known: purpose"},
        {",\"channels\":{\"\":{\"purpose\":null}}}",
         "field 'channels': a channel name must be 1 to 128 bytes"},
        {",\"guardrails\":{\"personalization_purpose\":true}}",
         "guardrails: field 'personalization_purpose': must be a string"},
        {",\"guardrails\":{\"personalisation_purpose\":\"p\"}}",
         "guardrails: field 'personalisation_purpose': unknown field"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char tail[512];
        snprintf(tail, sizeof tail, "}]%s", cases[i].tail);
        expect_refused(tail, cases[i].expect);
    }
}

/* ========================================================================
 * Free fields of an offer
 * ======================================================================== */

/* Issue 10: a misspelt `base_propensty` passed `catalog check` as a free
 * field, and the offer ran on the default propensity. */
Test(catalog, a_free_field_near_a_known_name_is_refused_naming_both)
{
    struct {
        const char *field, *known, *edits;
    } cases[] = {
        {"base_propensty", "base_propensity", "within 1 edit"},
        {"base_porpensity", "base_propensity", "within 1 edit"}, /* a swap is one edit */
        {"placement", "placements", "within 1 edit"},
        {"unit-cost", "unit_cost", "within 1 edit"},
        {"valid_form", "valid_from", "within 1 edit"},
        {"sgement_propensty", "segment_propensity", "within 2 edits"},
        {"purpse", "purpose", "within 1 edit"},
        {"servng_cst", "serving_cost", "within 2 edits"},
        {"prices", "price", "within 1 edit"},
        {"Price", "price", "did you mean"},
        {"ID", "id", "did you mean"},
        {"kinds", "kind", "within 1 edit"},
        {"cap", "caps", "within 1 edit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char tail[128], want[256];
        snprintf(tail, sizeof tail, ",\"%s\":0.2}]}", cases[i].field);
        snprintf(want, sizeof want, "offer 'a': field '%s': unknown field", cases[i].field);
        expect_refused(tail, want);
        snprintf(want, sizeof want, "%s of '%s'", cases[i].edits, cases[i].known);
        if (strcmp(cases[i].edits, "did you mean") == 0)
            snprintf(want, sizeof want, "did you mean '%s'?", cases[i].known);
        expect_refused(tail, want);
    }
}

/* Short known names allow fewer edits, so that ordinary free fields load:
 * `ad` and `url` are not misspellings of `id`, `tags` and `link` not of
 * `caps` and `kind`. */
Test(catalog, free_fields_for_the_policy_load)
{
    const char *fields[] = {"headline",      "tags",       "link",  "ad",    "url",   "x",
                            "sku",           "name",       "title", "image", "brand", "widget",
                            "priority",      "price_eur",  "valid", "cost",  "rank",  "purchase",
                            "discount_code", "categories", "idx"};
    char text[2048];
    size_t n = (size_t)snprintf(text, sizeof text,
                                "{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{" OFFER_OK);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, ",\"%s\":1", fields[i]);
    snprintf(text + n, sizeof text - n, "}]}");
    nbx_err e = {0};
    cr_assert_eq(load_text(text, &e), NBX_OK, "%s", e.msg);
}

/* margin and discount_pct are computed: a catalog value would be replaced
 * before the policy sees it. */
Test(catalog, fields_the_engine_computes_are_refused)
{
    const char *fields[] = {"margin", "discount_pct"};
    for (size_t i = 0; i < 2; i++) {
        char tail[64], want[128];
        snprintf(tail, sizeof tail, ",\"%s\":12}]}", fields[i]);
        snprintf(want, sizeof want, "offer 'a': field '%s': is computed by the engine", fields[i]);
        expect_refused(tail, want);
    }
}
