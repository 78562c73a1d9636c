/* Suite: caps (core/caps.c): eligibility from real counters written by real
 * events, guardrails, and the propensity fallback chain. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;
static nbx_store *store;
static nbx_catalog *cat;
static nbx_caps caps;
static nbx_arena arena;

/* 2026-03-10T12:00:00Z */
#define NOW INT64_C(1773144000000)
#define DAY NBX_MS_PER_DAY

static void setup(void)
{
    dir = tu_tempdir("caps");
    char *sdir = tu_path(dir, "store");
    cr_assert_eq(nbx_store_open(sdir, NBX_STORE_CREATE, &store), NBX_OK, "%s", nbx_last_errmsg());
    free(sdir);
    char *path = tu_source_path("tests/data/catalog.json");
    nbx_err e = {0};
    cr_assert_eq(nbx_catalog_load(path, &cat, &e), NBX_OK, "%s", e.msg);
    free(path);
    cr_assert_eq(nbx_caps_init(&caps, cat), NBX_OK);
}

static void teardown(void)
{
    nbx_caps_free(&caps);
    nbx_catalog_unref(cat);
    nbx_store_close(store);
    nbx_arena_free(&arena);
    tu_rmtree(dir);
    free(dir);
}

TestSuite(caps, .init = setup, .fini = teardown);

static int seq;

static void event(const char *customer, const char *type, const char *offer, int64_t ts)
{
    char json[512];
    snprintf(json, sizeof json,
             "{\"event_id\":\"e%d\",\"customer\":\"%s\",\"type\":\"%s\",\"offer\":\"%s\","
             "\"ts\":%.3f}",
             ++seq, customer, type, offer, (double)ts / 1000.0);
    int applied = 0;
    cr_assert_eq(nbx_event_apply(store, json, strlen(json), &applied), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(applied, 1);
}

static void profile(const char *json)
{
    cr_assert_eq(nbx_profile_put(store, json, strlen(json)), NBX_OK, "%s",
                 nbx_store_errmsg(store));
}

/* Load state for customer at now through a session channel (NULL: none),
 * return the exclusion for offer id. */
static int check_on(const char *channel, const char *customer, const char *offer, int64_t now)
{
    MDB_txn *txn;
    nbx_err e = {0};
    cr_assert_eq(nbx_store_read_begin(store, &txn, &e), NBX_OK);
    nbx_profile p = {.id = nbx_sv_of(customer)};
    int rc = nbx_store_profile_get(store, txn, p.id, &p, &arena, &e);
    if (rc == NBX_ENOTFOUND) {
        memset(&p, 0, sizeof p);
        p.id = nbx_sv_of(customer);
    }
    nbx_kv session = {"channel", channel};
    uint32_t purpose;
    cr_assert_eq(nbx_catalog_channel(cat, &session, channel ? 1 : 0, &purpose, &e), NBX_OK, "%s",
                 e.msg);
    cr_assert_eq(nbx_caps_load(&caps, store, txn, &p, purpose, now, &arena, &e), NBX_OK, "%s",
                 e.msg);
    const nbx_offer *o = nbx_catalog_offer(cat, nbx_sv_of(offer));
    cr_assert_not_null(o, "no offer %s", offer);
    int why = nbx_caps_check(&caps, o, now);
    mdb_txn_abort(txn);
    return why;
}

static int check(const char *customer, const char *offer, int64_t now)
{
    return check_on(NULL, customer, offer, now);
}

#define CONSENTED(id) profile("{\"id\":\"" id "\",\"consent\":{\"personalization\":true}}")

/* Replace the suite's catalog (and caps sized for it) by the file at path;
 * frees path. */
static void use_catalog(char *path)
{
    nbx_caps_free(&caps);
    nbx_catalog_unref(cat);
    nbx_err e = {0};
    cr_assert_eq(nbx_catalog_load(path, &cat, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_caps_init(&caps, cat), NBX_OK);
    free(path);
}

Test(caps, frequency_cap_counts_the_window)
{
    CONSENTED("c1");
    cr_assert_eq(check("c1", "free_shipping", NOW), NBX_EXCLUDED_NONE);
    event("c1", "impression", "free_shipping", NOW - 6 * DAY);
    event("c1", "impression", "free_shipping", NOW - 2 * DAY);
    cr_assert_eq(check("c1", "free_shipping", NOW), NBX_EXCLUDED_NONE, "2 of 3");
    event("c1", "impression", "free_shipping", NOW - 1000);
    cr_assert_eq(check("c1", "free_shipping", NOW), NBX_EXCLUDED_FREQUENCY, "3 of 3");
    /* a week later the oldest ones left the 7-day window */
    cr_assert_eq(check("c1", "free_shipping", NOW + 5 * DAY), NBX_EXCLUDED_NONE);
    /* other offers are unaffected (contacts: 3 of 5) */
    cr_assert_eq(check("c1", "winback_20", NOW), NBX_EXCLUDED_NONE);
}

Test(caps, accept_cap_and_dismiss_cooldown)
{
    CONSENTED("c2");
    event("c2", "accept", "free_shipping", NOW - 20 * DAY);
    cr_assert_eq(check("c2", "free_shipping", NOW), NBX_EXCLUDED_FREQUENCY, "accepts 1 of 1");
    cr_assert_eq(check("c2", "free_shipping", NOW + 11 * DAY), NBX_EXCLUDED_NONE, "30 days on");
    CONSENTED("c3");
    event("c3", "dismiss", "free_shipping", NOW - 13 * DAY);
    cr_assert_eq(check("c3", "free_shipping", NOW), NBX_EXCLUDED_COOLDOWN);
    cr_assert_eq(check("c3", "free_shipping", NOW + DAY), NBX_EXCLUDED_NONE, "14 days passed");
}

Test(caps, a_replay_before_a_dismiss_is_not_in_its_cooldown)
{
    CONSENTED("c8");
    event("c8", "dismiss", "free_shipping", NOW + 2 * DAY);
    cr_assert_eq(check("c8", "free_shipping", NOW), NBX_EXCLUDED_NONE,
                 "the dismiss comes after the decision's clock");
    cr_assert_eq(check("c8", "free_shipping", NOW + 3 * DAY), NBX_EXCLUDED_COOLDOWN);
    cr_assert_eq(caps.summary[nbx_catalog_offer(cat, NBX_SV("free_shipping"))->index].last_dismiss,
                 NOW + 2 * DAY);
    check("c8", "free_shipping", NOW);
    cr_assert_eq(caps.summary[nbx_catalog_offer(cat, NBX_SV("free_shipping"))->index].last_dismiss,
                 0, "a last time after now reads as never");
    /* an earlier dismiss within the cooldown still counts (known to the day) */
    CONSENTED("c9");
    event("c9", "dismiss", "free_shipping", NOW - 3 * DAY);
    event("c9", "dismiss", "free_shipping", NOW + 2 * DAY);
    cr_assert_eq(check("c9", "free_shipping", NOW), NBX_EXCLUDED_COOLDOWN);
}

Test(caps, contacts_across_offers)
{
    CONSENTED("c4");
    const char *offers[] = {"winback_20", "carousel_new", "email_only", "loss_leader",
                            "deep_discount"};
    for (int i = 0; i < 4; i++)
        event("c4", "impression", offers[i], NOW - i * DAY);
    cr_assert_eq(check("c4", "free_shipping", NOW), NBX_EXCLUDED_NONE, "4 of 5 contacts");
    event("c4", "impression", offers[4], NOW - 6 * DAY);
    cr_assert_eq(check("c4", "free_shipping", NOW), NBX_EXCLUDED_CONTACTS, "5 of 5 contacts");
    cr_assert_eq(check("c4", "bestsellers", NOW), NBX_EXCLUDED_CONTACTS,
                 "modules are ranked and counted like offers");
    cr_assert_eq(check("c4", "free_shipping", NOW + DAY), NBX_EXCLUDED_NONE,
                 "the oldest contact left the 7-day window");
}

Test(caps, consent_and_validity)
{
    profile("{\"id\":\"c5\",\"consent\":{\"personalization\":false,\"email\":true}}");
    cr_assert_eq(check("c5", "free_shipping", NOW), NBX_EXCLUDED_CONSENT);
    cr_assert_eq(check("c5", "email_only", NOW), NBX_EXCLUDED_NONE);
    cr_assert_eq(check("c5", "brand_banner", NOW), NBX_EXCLUDED_NONE, "purpose none");
    cr_assert_eq(check("nobody", "free_shipping", NOW), NBX_EXCLUDED_CONSENT,
                 "no profile: no consent");
    CONSENTED("c6");
    int64_t before = NOW - 365 * DAY;
    cr_assert_eq(check("c6", "free_shipping", before), NBX_EXCLUDED_VALIDITY);
    cr_assert_eq(check("c6", "winback_20", before), NBX_EXCLUDED_NONE, "no validity window");
    /* withdrawn consent takes effect on the next check */
    profile("{\"id\":\"c6\",\"consent\":{\"personalization\":false}}");
    cr_assert_eq(check("c6", "free_shipping", NOW), NBX_EXCLUDED_CONSENT);
}

/* guardrails.consent_default: a purpose the profile does not mention is
 * granted; one it refuses stays refused. */
Test(caps, consent_default_applies_to_missing_purposes_only)
{
    char *path = tu_path(dir, "consent_default.json");
    cr_assert_eq(tu_write_file(path,
                               "{\"placements\":[{\"id\":\"hero\"}],\"offers\":["
                               "{\"id\":\"e\",\"placements\":[\"hero\"],\"price\":10,"
                               "\"unit_cost\":1,\"purpose\":\"email\"},"
                               "{\"id\":\"p\",\"placements\":[\"hero\"],\"price\":10,"
                               "\"unit_cost\":1,\"purpose\":\"personalization\"},"
                               "{\"id\":\"s\",\"placements\":[\"hero\"],\"price\":10,"
                               "\"unit_cost\":1,\"purpose\":\"sms\"}],"
                               "\"guardrails\":{\"consent_default\":true}}"),
                 0);
    use_catalog(path);
    profile("{\"id\":\"d1\",\"consent\":{\"email\":false,\"personalization\":true}}");
    cr_assert_eq(check("d1", "e", NOW), NBX_EXCLUDED_CONSENT, "refused");
    cr_assert_eq(check("d1", "p", NOW), NBX_EXCLUDED_NONE, "granted");
    cr_assert_eq(check("d1", "s", NOW), NBX_EXCLUDED_NONE, "not mentioned: the default");
    cr_assert_eq(check("nobody", "e", NOW), NBX_EXCLUDED_NONE, "no profile: the default");
    /* the next customer's consents replace the last one's */
    cr_assert_eq(check("d1", "e", NOW), NBX_EXCLUDED_CONSENT);
}

/* A decision through a channel uses the data for the channel's purpose:
 * without that consent nothing is shown, whatever the offer's purpose. */
Test(caps, a_channel_needs_its_consent_for_every_offer)
{
    char *path = tu_path(dir, "channels.json");
    cr_assert_eq(tu_write_file(path, "{\"placements\":[{\"id\":\"hero\"}],\"offers\":["
                                     "{\"id\":\"n\",\"placements\":[\"hero\"],\"price\":10,"
                                     "\"unit_cost\":1,\"purpose\":\"none\"},"
                                     "{\"id\":\"p\",\"placements\":[\"hero\"],\"price\":10,"
                                     "\"unit_cost\":1,\"purpose\":\"personalization\"}],"
                                     "\"channels\":{\"email\":{\"purpose\":\"email\"},"
                                     "\"web\":{\"purpose\":null}}}"),
                 0);
    use_catalog(path);
    profile("{\"id\":\"m1\",\"consent\":{\"email\":false,\"personalization\":true}}");
    profile("{\"id\":\"m2\",\"consent\":{\"email\":true,\"personalization\":true}}");
    profile("{\"id\":\"m3\",\"consent\":{\"personalization\":true}}");
    cr_assert_eq(check_on("email", "m1", "n", NOW), NBX_EXCLUDED_CONSENT, "refused, purpose none");
    cr_assert_eq(check_on("email", "m1", "p", NOW), NBX_EXCLUDED_CONSENT, "refused");
    cr_assert_eq(check_on("web", "m1", "n", NOW), NBX_EXCLUDED_NONE, "web needs no consent");
    cr_assert_eq(check_on("web", "m1", "p", NOW), NBX_EXCLUDED_NONE);
    cr_assert_eq(check("m1", "p", NOW), NBX_EXCLUDED_NONE, "no channel");
    cr_assert_eq(check_on("email", "m2", "n", NOW), NBX_EXCLUDED_NONE, "granted");
    cr_assert_eq(check_on("email", "m2", "p", NOW), NBX_EXCLUDED_NONE);
    cr_assert_eq(check_on("email", "m3", "n", NOW), NBX_EXCLUDED_CONSENT,
                 "not mentioned: consent_default (false)");
    cr_assert_eq(check_on("email", "nobody", "n", NOW), NBX_EXCLUDED_CONSENT, "no profile");
    /* the next decision's channel replaces the last one's */
    cr_assert_eq(check_on("web", "m1", "n", NOW), NBX_EXCLUDED_NONE);
}

/* The personalisation purpose is read like any other: a refusal, a grant,
 * or for a purpose the profile does not mention, consent_default. */
Test(caps, personalized_follows_the_purpose_and_consent_default)
{
    profile("{\"id\":\"q1\",\"consent\":{\"personalization\":true}}");
    profile("{\"id\":\"q2\",\"consent\":{\"personalization\":false,\"email\":true}}");
    profile("{\"id\":\"q3\",\"consent\":{\"email\":true}}");
    const char *ids[] = {"q1", "q2", "q3", "nobody"};
    const bool fixture[] = {true, false, false, false};
    const bool by_default[] = {true, false, true, true};
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < 4; i++) {
            check(ids[i], "brand_banner", NOW);
            bool want = pass ? by_default[i] : fixture[i];
            cr_assert_eq(nbx_caps_personalized(&caps), want, "pass %d, %s: expected %d", pass,
                         ids[i], want);
        }
        char *fixture_path = tu_source_path("tests/data/catalog.json");
        char *text = tu_read_file(fixture_path, NULL);
        free(fixture_path);
        char *at = strstr(text, "\"guardrails\": {");
        cr_assert_not_null(at);
        char *path = tu_path(dir, "consent_default_true.json");
        FILE *f = fopen(path, "w");
        fprintf(f, "%.*s\"guardrails\": {\"consent_default\": true, %s", (int)(at - text), text,
                at + strlen("\"guardrails\": {"));
        fclose(f);
        free(text);
        use_catalog(path);
    }
    /* a catalog whose personalisation needs no consent */
    char *path = tu_path(dir, "no_purpose.json");
    cr_assert_eq(tu_write_file(path, "{\"placements\":[{\"id\":\"hero\"}],\"offers\":["
                                     "{\"id\":\"n\",\"placements\":[\"hero\"],\"price\":10,"
                                     "\"unit_cost\":1,\"purpose\":\"none\"}],"
                                     "\"guardrails\":{\"personalization_purpose\":\"none\"}}"),
                 0);
    use_catalog(path);
    check("q2", "n", NOW);
    cr_assert(nbx_caps_personalized(&caps), "purpose none: no consent needed");
}

Test(caps, daily_budget_is_global_and_per_day)
{
    char *path = tu_path(dir, "budget.json");
    cr_assert_eq(tu_write_file(path,
                               "{\"placements\":[{\"id\":\"hero\"}],\"offers\":[{\"id\":\"b\","
                               "\"placements\":[\"hero\"],\"price\":10,\"unit_cost\":1,"
                               "\"purpose\":\"none\",\"budget\":{\"daily_impressions\":2,"
                               "\"daily_accepts\":1}},{\"id\":\"c\",\"placements\":[\"hero\"],"
                               "\"price\":10,\"unit_cost\":1,\"purpose\":\"none\"}]}"),
                 0);
    use_catalog(path);
    event("x1", "impression", "b", NOW - 3600000);
    cr_assert_eq(check("x3", "b", NOW), NBX_EXCLUDED_NONE);
    event("x2", "impression", "b", NOW - 60000);
    cr_assert_eq(check("x3", "b", NOW), NBX_EXCLUDED_BUDGET, "2 of 2 today, other customers");
    cr_assert_eq(check("x3", "c", NOW), NBX_EXCLUDED_NONE);
    cr_assert_eq(check("x3", "b", NOW + DAY), NBX_EXCLUDED_NONE, "a new day");
    event("x1", "accept", "b", NOW + DAY);
    cr_assert_eq(check("x3", "b", NOW + DAY), NBX_EXCLUDED_BUDGET, "accept budget 1 of 1");
}

Test(caps, guardrails)
{
    cr_assert(nbx_guardrails_pass(cat, nbx_catalog_offer(cat, NBX_SV("free_shipping"))));
    cr_assert_not(nbx_guardrails_pass(cat, nbx_catalog_offer(cat, NBX_SV("deep_discount"))),
                  "45%% discount over the 30%% ceiling");
    cr_assert_not(nbx_guardrails_pass(cat, nbx_catalog_offer(cat, NBX_SV("loss_leader"))),
                  "negative margin under the floor");
    /* decided once at load, for the decision path */
    for (uint32_t i = 0; i < cat->n_offers; i++)
        cr_assert_eq(cat->offers[i].passes_guardrails, nbx_guardrails_pass(cat, &cat->offers[i]),
                     "offer %s: passes_guardrails %d", cat->offers[i].id.ptr,
                     cat->offers[i].passes_guardrails);
}

Test(caps, an_offer_exactly_at_a_guardrail_passes)
{
    /* 9.99 / 33.3 is 30.000000000000004 % in binary floating point, and
     * 3.3 - 3.0 - 0.3 is -1.7e-16: both are exactly at the limits */
    char *path = tu_path(dir, "edge.json");
    cr_assert_eq(tu_write_file(path,
        "{\"placements\":[{\"id\":\"hero\"}],\"offers\":["
        "{\"id\":\"at_30\",\"placements\":[\"hero\"],\"price\":33.3,\"unit_cost\":1,"
        "\"discount\":9.99,\"purpose\":\"none\"},"
        "{\"id\":\"tiny_at_30\",\"placements\":[\"hero\"],\"price\":0.7,\"unit_cost\":0,"
        "\"discount\":0.21,\"purpose\":\"none\"},"
        "{\"id\":\"zero_margin\",\"placements\":[\"hero\"],\"price\":3.3,\"unit_cost\":3.0,"
        "\"discount\":0.3,\"purpose\":\"none\"},"
        "{\"id\":\"over_30\",\"placements\":[\"hero\"],\"price\":33.3,\"unit_cost\":1,"
        "\"discount\":10,\"purpose\":\"none\"},"
        "{\"id\":\"cent_under\",\"placements\":[\"hero\"],\"price\":3.3,\"unit_cost\":3.01,"
        "\"discount\":0.3,\"purpose\":\"none\"}],"
        "\"guardrails\":{\"max_discount_pct\":30,\"min_margin\":0}}"), 0);
    nbx_catalog *edge;
    nbx_err e = {0};
    cr_assert_eq(nbx_catalog_load(path, &edge, &e), NBX_OK, "%s", e.msg);
    cr_assert(nbx_guardrails_pass(edge, nbx_catalog_offer(edge, NBX_SV("at_30"))));
    cr_assert(nbx_guardrails_pass(edge, nbx_catalog_offer(edge, NBX_SV("tiny_at_30"))));
    cr_assert(nbx_guardrails_pass(edge, nbx_catalog_offer(edge, NBX_SV("zero_margin"))));
    cr_assert_not(nbx_guardrails_pass(edge, nbx_catalog_offer(edge, NBX_SV("over_30"))));
    cr_assert_not(nbx_guardrails_pass(edge, nbx_catalog_offer(edge, NBX_SV("cent_under"))));
    nbx_catalog_unref(edge);
    free(path);
}

Test(caps, propensity_fallback_chain)
{
    nbx_profile p;
    nbx_err e = {0};
    const char *json = "{\"id\":\"c\",\"propensity\":{\"free_shipping\":0.4,\"apparel\":0.2},"
                       "\"rfm\":{\"segment\":\"at_risk\"}}";
    cr_assert_eq(nbx_profile_parse(json, strlen(json), &p, &arena, &e), NBX_OK, "%s", e.msg);
    p.rfm.segment = NBX_SEGMENT_AT_RISK;
    cr_assert_eq(nbx_offer_propensity(&p, nbx_catalog_offer(cat, NBX_SV("free_shipping"))), 0.4,
                 "own id");
    cr_assert_eq(nbx_offer_propensity(&p, nbx_catalog_offer(cat, NBX_SV("carousel_new"))), 0.2,
                 "category");
    cr_assert_eq(nbx_offer_propensity(&p, nbx_catalog_offer(cat, NBX_SV("winback_20"))), 0.2,
                 "segment prior");
    p.rfm.segment = NBX_SEGMENT_LOYAL;
    cr_assert_eq(nbx_offer_propensity(&p, nbx_catalog_offer(cat, NBX_SV("winback_20"))), 0.05,
                 "base propensity");
}

/* The all-offers join gives exactly what one lookup per offer gives. */
Test(caps, propensities_join_equals_lookup)
{
    const char *profiles[] = {
        "{\"id\":\"c\"}",
        "{\"id\":\"c\",\"propensity\":{\"free_shipping\":0.4,\"apparel\":0.2,\"zz\":0.9}}",
        "{\"id\":\"c\",\"propensity\":{\"a\":0.1,\"bestsellers\":0.3,\"retention\":0.7,"
        "\"winback_20\":0.6}}",
        "{\"id\":\"c\",\"propensity\":{\"beauty\":0.11,\"shipping\":0.12}}",
    };
    int segments[] = {0, NBX_SEGMENT_AT_RISK, NBX_SEGMENT_CHAMPIONS, NBX_SEGMENT_LOST};
    for (size_t i = 0; i < sizeof profiles / sizeof profiles[0]; i++)
        for (size_t k = 0; k < sizeof segments / sizeof segments[0]; k++) {
            nbx_profile p;
            cr_assert_eq(nbx_profile_parse(profiles[i], strlen(profiles[i]), &p, &arena, NULL),
                         NBX_OK);
            p.rfm.segment = (uint8_t)segments[k];
            nbx_caps_propensities(&caps, &p);
            for (uint32_t o = 0; o < cat->n_offers; o++)
                cr_assert_eq(caps.propensity[o], nbx_offer_propensity(&p, &cat->offers[o]),
                             "profile %zu segment %d offer %s", i, segments[k],
                             cat->offers[o].id.ptr);
        }
}
