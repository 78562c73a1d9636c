/* Suite: event (core/event.c, core/exposure.c): parsing events, applying
 * them idempotently per customer, exposure counters and their windows, daily
 * budgets, RFM aggregates from purchases, the event count, erasure. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;
static nbx_store *store;
static nbx_arena arena;

static void setup(void)
{
    dir = tu_tempdir("event");
    cr_assert_not_null(dir);
    cr_assert_eq(nbx_store_open(dir, NBX_STORE_CREATE, &store), NBX_OK, "%s", nbx_last_errmsg());
}

static void teardown(void)
{
    nbx_store_close(store);
    tu_rmtree(dir);
    free(dir);
    nbx_arena_free(&arena);
}

TestSuite(event, .init = setup, .fini = teardown, .timeout = 60);

static int apply(const char *json)
{
    int applied = -1;
    int rc = nbx_event_apply(store, json, strlen(json), &applied);
    cr_assert_eq(rc, NBX_OK, "%s: %s", json, nbx_store_errmsg(store));
    return applied;
}

static void exposure(const char *id, const char *customer, const char *type, const char *offer,
                     const char *ts)
{
    char json[512];
    snprintf(
        json, sizeof json,
        "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"%s\",\"offer\":\"%s\",\"ts\":\"%s\"}",
        id, customer, type, offer, ts);
    cr_assert_eq(apply(json), 1, "%s was not applied", id);
}

static int64_t t(const char *s)
{
    int64_t ms;
    cr_assert_eq(nbx_time_parse(s, &ms), NBX_OK, "%s", s);
    return ms;
}

/* The counters of (customer, offer); offer "" is the all-offers row. */
static bool counters(const char *customer, const char *offer, nbx_exposure *x)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    char key[NBX_COUNTER_KEY_MAX];
    MDB_val k = {nbx_exposure_key(key, nbx_sv_of(customer), nbx_sv_of(offer)), key}, v;
    int rc = mdb_get(txn, store->customers, &k, &v);
    if (rc == 0)
        cr_assert_eq(nbx_exposure_decode(v.mv_data, v.mv_size, x, &arena), NBX_OK);
    mdb_txn_abort(txn);
    return rc == 0;
}

static bool budget(const char *offer, const char *day, uint64_t *impressions, uint64_t *accepts)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    char key[4 + NBX_OFFER_ID_MAX];
    MDB_val k = {nbx_budget_key(key, nbx_day_of(t(day)), nbx_sv_of(offer)), key}, v;
    int rc = mdb_get(txn, store->budgets, &k, &v);
    if (rc == 0) {
        nbx_mp m;
        nbx_mp_init(&m, v.mv_data, v.mv_size);
        cr_assert_eq(nbx_mp_array(&m), 2);
        *impressions = nbx_mp_uint(&m);
        *accepts = nbx_mp_uint(&m);
        cr_assert_not(m.bad);
    }
    mdb_txn_abort(txn);
    return rc == 0;
}

static uint64_t digest(void)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_dbi dbis[] = {store->profiles, store->customers, store->budgets, store->meta};
    uint64_t h = 0;
    for (size_t i = 0; i < sizeof dbis / sizeof dbis[0]; i++) {
        MDB_cursor *c;
        cr_assert_eq(mdb_cursor_open(txn, dbis[i], &c), 0);
        MDB_val k, v;
        while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
            h = nbx_hash64(k.mv_data, k.mv_size, h + i);
            h = nbx_hash64(v.mv_data, v.mv_size, h);
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    return h;
}

/* ------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------ */

Test(event, parse_a_purchase_and_an_exposure)
{
    nbx_event ev;
    nbx_err e = {0};
    const char *p =
        "{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"purchase\",\"amount\":19.5,"
        "\"margin\":4,\"ts\":\"2026-03-01T10:00:00Z\",\"campaign\":{\"a\":[1]}}";
    cr_assert_eq(nbx_event_parse(p, strlen(p), 0, &ev, &arena, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(ev.type, NBX_EV_PURCHASE);
    cr_assert(nbx_sv_eq_cstr(ev.id, "e1") && nbx_sv_eq_cstr(ev.customer, "c1"));
    cr_assert_eq(ev.amount, 19.5);
    cr_assert_eq(ev.margin, 4);
    cr_assert_eq(ev.ts_ms, t("2026-03-01T10:00:00Z"));
    const char *x = "{\"type\":\"dismiss\",\"ts\":1767225600.5,\"event_id\":\"e2\","
                    "\"customer\":\"c1\",\"offer\":\"o9\",\"placement\":\"hero\"}";
    cr_assert_eq(nbx_event_parse(x, strlen(x), 0, &ev, &arena, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(ev.type, NBX_EV_DISMISS);
    cr_assert_eq(ev.ts_ms, 1767225600500);
    cr_assert(nbx_sv_eq_cstr(ev.placement, "hero"));
    cr_assert(isnan(ev.margin), "margin not given is NaN");
}

Test(event, parse_errors_name_the_field)
{
    char long_id[300];
    memset(long_id, 'e', 257);
    long_id[257] = '\0';
    char long_line[700], long_pair[700];
    snprintf(long_line, sizeof long_line,
             "{\"event_id\":\"%s\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
             long_id);
    long_id[256] = '\0';
    snprintf(
        long_pair, sizeof long_pair,
        "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
        long_id, long_id);
    struct {
        const char *json;
        const char *expect;
    } cases[] = {
        {"{\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
         "field 'event_id': is required"},
        {"{\"event_id\":\"e\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
         "field 'customer': is required"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"offer\":\"o\",\"ts\":1}",
         "field 'type': is required"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\"}",
         "field 'ts': is required"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"view\",\"offer\":\"o\",\"ts\":1}",
         "field 'type': unknown event type 'view'"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":5,\"offer\":\"o\",\"ts\":1}",
         "field 'type': must be a string"},
        {"{\"event_id\":7,\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
         "field 'event_id': must be a string"},
        {"{\"event_id\":\"e\",\"customer\":\"\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
         "field 'customer': must be 1 to 256 bytes"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"ts\":1}",
         "field 'offer': is required for a click event"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"impression\",\"ts\":1}",
         "field 'offer': is required for an impression event"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"accept\",\"ts\":1}",
         "field 'offer': is required for an accept event"},
        {"{\"event_id\":\"e\",\"event_id\":\"f\",\"customer\":\"c\",\"type\":\"click\","
         "\"offer\":\"o\",\"ts\":1}",
         "duplicate key 'event_id'"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1,"
         "\"ts\":2}",
         "duplicate key 'ts'"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"channel\":\"web\",\"type\":\"click\","
         "\"offer\":\"o\",\"channel\":\"app\",\"ts\":1}",
         "duplicate key 'channel'"},
        {"{\"event_id\":\"e\xff\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
         "field 'event_id': column 15: invalid UTF-8 in string"},
        {"{\"event_id\":\"e\",\"customer\":\"c\\u0000\",\"type\":\"click\",\"offer\":\"o\","
         "\"ts\":1}",
         "field 'customer': column"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"cl\xc3\",\"offer\":\"o\",\"ts\":1}",
         "field 'type': column"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\","
         "\"ts\":\"2026\xe2\"}",
         "field 'ts': column"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"purchase\",\"ts\":1}",
         "field 'amount': is required for a purchase"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"purchase\",\"amount\":\"9\",\"ts\":1}",
         "field 'amount': must be a number"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"purchase\",\"amount\":1e13,\"ts\":1}",
         "field 'amount': 1e+13 is out of range"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"purchase\",\"amount\":1,"
         "\"margin\":null,\"ts\":1}",
         "field 'margin': must be a number"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":"
         "\"soon\"}",
         "field 'ts': must be an RFC 3339 time"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1e12}",
         "field 'ts': not a time in epoch seconds"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\","
         "\"ts\":\"1969-12-31T00:00:00Z\"}",
         "field 'ts': must be after 1970-01-01T00:00:00Z"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":-1}",
         "field 'ts': must be after 1970-01-01T00:00:00Z"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"purchase\",\"amount\":1,\"ts\":0}",
         "field 'ts': must be after 1970-01-01T00:00:00Z"},
        {long_line, "field 'event_id': must be 1 to 256 bytes (got 257)"},
        {long_pair, "field 'event_id': 256 bytes with a 256-byte customer"},
        {"[\"e\"]", "an event must be a JSON object"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1} {}",
         "unexpected"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nbx_event ev;
        nbx_err e = {0};
        int rc = nbx_event_parse(cases[i].json, strlen(cases[i].json), 0, &ev, &arena, &e);
        cr_assert_eq(rc, NBX_EPARSE, "accepted: %s", cases[i].json);
        cr_assert(strstr(e.msg, cases[i].expect) != NULL, "for %s expected '%s', got '%s'",
                  cases[i].json, cases[i].expect, e.msg);
    }
}

/* ------------------------------------------------------------------------
 * Applying
 * ------------------------------------------------------------------------ */

Test(event, a_nul_byte_in_a_string_is_named)
{
    const char json[] = "{\"event_id\":\"e\0\",\"customer\":\"c\",\"type\":\"click\","
                        "\"offer\":\"o\",\"ts\":1}";
    nbx_event ev;
    nbx_err e = {0};
    cr_assert_eq(nbx_event_parse(json, sizeof json - 1, 0, &ev, &arena, &e), NBX_EPARSE);
    cr_assert(strstr(e.msg, "field 'event_id': contains a NUL byte") != NULL, "got '%s'", e.msg);
}

Test(event, apply_is_idempotent_per_customer_and_event_id)
{
    const char *ev = "{\"event_id\":\"once\",\"customer\":\"c1\",\"type\":\"impression\","
                     "\"offer\":\"o1\",\"ts\":\"2026-03-01T10:00:00Z\"}";
    cr_assert_eq(apply(ev), 1);
    uint64_t before = digest();
    cr_assert_eq(apply(ev), 0, "a seen event id was applied again");
    /* same customer and id, other content: still a duplicate */
    cr_assert_eq(apply("{\"event_id\":\"once\",\"customer\":\"c1\",\"type\":\"purchase\","
                       "\"amount\":5,\"ts\":\"2026-03-01T10:00:00Z\"}"),
                 0);
    cr_assert_eq(digest(), before, "a duplicate changed the store");
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(store, &st), NBX_OK);
    cr_assert_eq(st.events_seen, 1);
    cr_assert_eq(st.profiles, 0, "the duplicate purchase created a profile");
}

/* Deduplication is per (customer, event id): the same id for another
 * customer is another event. */
Test(event, the_same_id_for_another_customer_is_another_event)
{
    cr_assert_eq(apply("{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"impression\","
                       "\"offer\":\"o1\",\"ts\":\"2026-03-01T10:00:00Z\"}"),
                 1);
    cr_assert_eq(apply("{\"event_id\":\"e1\",\"customer\":\"c2\",\"type\":\"purchase\","
                       "\"amount\":5,\"ts\":\"2026-03-01T10:00:00Z\"}"),
                 1, "e1 of c2 was taken for e1 of c1");
    cr_assert_eq(apply("{\"event_id\":\"e1\",\"customer\":\"c10\",\"type\":\"impression\","
                       "\"offer\":\"o1\",\"ts\":\"2026-03-01T10:00:00Z\"}"),
                 1);
    cr_assert_eq(apply("{\"event_id\":\"e1\",\"customer\":\"c2\",\"type\":\"purchase\","
                       "\"amount\":5,\"ts\":\"2026-03-01T10:00:00Z\"}"),
                 0, "e1 of c2 twice");
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(store, &st), NBX_OK);
    cr_assert_eq(st.events_seen, 3);
    cr_assert_eq(st.profiles, 1);
    cr_assert_eq(st.exposure_keys, 4, "c1 and c10: o1 and the all-offers row each");
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(store, "c2", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"orders\":1,") != NULL, "%s", json);
    nbx_free(json);
    nbx_exposure x;
    uint32_t today = nbx_day_of(t("2026-03-01T12:00:00Z"));
    cr_assert(counters("c10", "o1", &x));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 1), 1);
}

/* The record sits beside the customer's counters: customer \0 \x02 event id
 * -> [ts, type, offer, placement, amount, margin]. */
Test(event, the_record_is_kept_under_the_customer)
{
    cr_assert_eq(apply("{\"event_id\":\"k1\",\"customer\":\"c1\",\"type\":\"click\","
                       "\"offer\":\"o7\",\"placement\":\"hero\",\"ts\":\"2026-03-01T10:00:00Z\","
                       "\"channel\":\"web\"}"),
                 1);
    cr_assert_eq(apply("{\"event_id\":\"p1\",\"customer\":\"c1\",\"type\":\"purchase\","
                       "\"amount\":2.5,\"margin\":1,\"ts\":\"2026-03-01T11:00:00Z\"}"),
                 1);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_val k = {6, "c1\0\x02k1"}, v;
    cr_assert_eq(mdb_get(txn, store->customers, &k, &v), 0, "no record under c1 \\0 \\x02 k1");
    nbx_mp m;
    nbx_mp_init(&m, v.mv_data, v.mv_size);
    cr_assert_eq(nbx_mp_array(&m), 6);
    cr_assert_eq(nbx_mp_int(&m), t("2026-03-01T10:00:00Z"));
    cr_assert_eq(nbx_mp_uint(&m), NBX_EV_CLICK);
    cr_assert(nbx_sv_eq_cstr(nbx_mp_str(&m), "o7"));
    cr_assert(nbx_sv_eq_cstr(nbx_mp_str(&m), "hero"));
    cr_assert(nbx_mp_nil(&m) && nbx_mp_nil(&m), "a click has no amount or margin");
    cr_assert_not(m.bad);
    k = (MDB_val){6, "c1\0\x02p1"};
    cr_assert_eq(mdb_get(txn, store->customers, &k, &v), 0);
    nbx_mp_init(&m, v.mv_data, v.mv_size);
    cr_assert_eq(nbx_mp_array(&m), 6);
    nbx_mp_skip(&m);
    cr_assert_eq(nbx_mp_uint(&m), NBX_EV_PURCHASE);
    cr_assert(nbx_mp_nil(&m) && nbx_mp_nil(&m), "a purchase has no offer or placement");
    cr_assert_eq(nbx_mp_double(&m), 2.5);
    cr_assert_eq(nbx_mp_double(&m), 1);
    cr_assert_not(m.bad);
    /* the counters sub-range holds the counters only: o7 and the all-offers row */
    MDB_cursor *c;
    cr_assert_eq(mdb_cursor_open(txn, store->customers, &c), 0);
    k = (MDB_val){4, "c1\0\x01"};
    int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    const char *expect[] = {"c1\0\x01", "c1\0\x01o7", "c1\0\x02k1", "c1\0\x02p1"};
    size_t lens[] = {4, 6, 6, 6};
    for (size_t i = 0; i < 4; i++, rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        cr_assert_eq(rc, 0, "key %zu missing", i);
        cr_assert(k.mv_size == lens[i] && memcmp(k.mv_data, expect[i], lens[i]) == 0,
                  "key %zu is not the expected one", i);
    }
    cr_assert_eq(rc, MDB_NOTFOUND, "more keys than the customer's four");
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
}

/* A customer id and an event id together fill at most 509 bytes of the
 * 511-byte key (customer \0 \x02 event id). */
Test(event, customer_and_event_id_share_the_key_limit)
{
    char customer[NBX_ID_MAX + 1], id[NBX_ID_MAX + 1], json[1200];
    memset(customer, 'c', NBX_ID_MAX);
    customer[NBX_ID_MAX] = '\0';
    memset(id, 'e', NBX_ID_MAX);
    id[509 - NBX_ID_MAX] = '\0';
    snprintf(json, sizeof json,
             "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"click\",\"offer\":\"o\","
             "\"ts\":1}",
             id, customer);
    cr_assert_eq(apply(json), 1, "509 bytes together must be accepted");
    id[509 - NBX_ID_MAX] = 'e';
    id[510 - NBX_ID_MAX] = '\0';
    snprintf(json, sizeof json,
             "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"click\",\"offer\":\"o\","
             "\"ts\":1}",
             id, customer);
    cr_assert_eq(nbx_event_apply(store, json, strlen(json), NULL), NBX_EPARSE);
    cr_assert(strstr(nbx_store_errmsg(store), "limited to 509 bytes") != NULL, "%s",
              nbx_store_errmsg(store));
}

/* events_seen is a count kept in the meta database with the records: it
 * equals the records in the store through applies, duplicates and
 * erasures, and exposure_keys the counter rows. */
static void count_keys(uint64_t *events, uint64_t *counters)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_cursor *c;
    cr_assert_eq(mdb_cursor_open(txn, store->customers, &c), 0);
    MDB_val k, v;
    *events = *counters = 0;
    while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        const char *z = memchr(k.mv_data, '\0', k.mv_size);
        cr_assert(z && z + 1 < (const char *)k.mv_data + k.mv_size, "a key without a tag");
        if (z[1] == NBX_TAG_EVENT)
            (*events)++;
        else if (z[1] == NBX_TAG_COUNTERS)
            (*counters)++;
        else
            cr_assert_fail("unknown tag %d", z[1]);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
}

Test(event, events_seen_is_the_number_of_records)
{
    for (int i = 0; i < 60; i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"event_id\":\"e%d\",\"customer\":\"c%d\",\"type\":\"%s\",\"offer\":\"o%d\","
                 "\"amount\":1,\"ts\":%d}",
                 i % 25, i % 7, i % 4 ? "impression" : "purchase", i % 3, 1767225600 + i);
        int applied = -1;
        cr_assert_eq(nbx_event_apply(store, json, strlen(json), &applied), NBX_OK);
    }
    cr_assert_eq(nbx_profile_delete(store, "c3"), NBX_OK);
    cr_assert_eq(nbx_profile_delete(store, "c5"), NBX_OK);
    uint64_t events, counters;
    count_keys(&events, &counters);
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(store, &st), NBX_OK);
    cr_assert_gt(events, 0);
    cr_assert_eq(st.events_seen, events, "events_seen %llu, records %llu",
                 (unsigned long long)st.events_seen, (unsigned long long)events);
    cr_assert_eq(st.exposure_keys, counters, "exposure_keys %llu, counter rows %llu",
                 (unsigned long long)st.exposure_keys, (unsigned long long)counters);
}

Test(event, counters_and_windows)
{
    exposure("i1", "c1", "impression", "o1", "2026-02-01T10:00:00Z");
    exposure("i2", "c1", "impression", "o1", "2026-02-25T10:00:00Z");
    exposure("i3", "c1", "impression", "o1", "2026-03-01T09:00:00Z");
    exposure("i4", "c1", "impression", "o1", "2026-03-01T23:59:59Z");
    exposure("k1", "c1", "click", "o1", "2026-03-01T09:00:05Z");
    exposure("d1", "c1", "dismiss", "o1", "2026-02-20T00:00:00Z");
    exposure("a1", "c1", "accept", "o2", "2026-02-28T12:00:00Z");
    exposure("i5", "c2", "impression", "o1", "2026-03-01T09:00:00Z");

    nbx_exposure x;
    cr_assert(counters("c1", "o1", &x));
    uint32_t today = nbx_day_of(t("2026-03-01T12:00:00Z"));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 1), 2, "today");
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 5), 3, "5 days: 02-25..03-01");
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 4), 2, "4 days: 02-26..03-01");
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 28), 3, "02-02..03-01");
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 29), 4, "02-01..03-01");
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 0), 0);
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today - 1, 1), 0, "yesterday");
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_CLICK, today, 7), 1);
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_DISMISS, today, 10), 1);
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_DISMISS, today, 9), 0);
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_ACCEPT, today, 30), 0, "accept was on o2");
    cr_assert_eq(x.last[NBX_EXP_IMPRESSION], t("2026-03-01T23:59:59Z"));
    cr_assert_eq(x.last[NBX_EXP_DISMISS], t("2026-02-20T00:00:00Z"));
    cr_assert_eq(x.last[NBX_EXP_ACCEPT], 0);

    cr_assert(counters("c1", "", &x), "no all-offers row");
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 30), 4);
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_ACCEPT, today, 30), 1);
    cr_assert(counters("c1", "o2", &x));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_ACCEPT, today, 2), 1);
    cr_assert(counters("c2", "o1", &x));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 1), 1);
    cr_assert_not(counters("c2", "o2", &x));
    cr_assert_not(counters("c3", "", &x));
}

Test(event, buckets_older_than_a_year_are_pruned)
{
    exposure("old", "c1", "impression", "o1", "2024-01-01T00:00:00Z");
    exposure("mid", "c1", "impression", "o1", "2025-06-01T00:00:00Z");
    exposure("new", "c1", "impression", "o1", "2026-03-01T00:00:00Z");
    /* late arrival older than the window: counted nowhere */
    exposure("late", "c1", "impression", "o1", "2024-06-01T00:00:00Z");
    nbx_exposure x;
    cr_assert(counters("c1", "o1", &x));
    cr_assert_eq(x.n_days, 2, "expected the 2025-06 and 2026-03 buckets, got %u", x.n_days);
    cr_assert_eq(x.days[0].day, nbx_day_of(t("2025-06-01T00:00:00Z")));
    uint32_t today = nbx_day_of(t("2026-03-01T00:00:00Z"));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, NBX_WINDOW_DAYS_MAX), 2);
}

/* A day before 1970 wrapped to the far future as a 32-bit day number: it
 * became the newest bucket and pushed every real one out of the window. */
Test(event, an_event_before_1970_is_refused_and_keeps_the_counters)
{
    exposure("new", "c1", "impression", "o1", "2026-03-01T00:00:00Z");
    const char *old = "{\"event_id\":\"old\",\"customer\":\"c1\",\"type\":\"impression\","
                      "\"offer\":\"o1\",\"ts\":\"1969-12-31T00:00:00Z\"}";
    cr_assert_eq(nbx_event_apply(store, old, strlen(old), NULL), NBX_EPARSE);
    nbx_exposure x;
    cr_assert(counters("c1", "o1", &x));
    uint32_t today = nbx_day_of(t("2026-03-01T00:00:00Z"));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 1), 1,
                 "expected 1 impression today, got %u (%u buckets)",
                 nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, 1), x.n_days);
}

Test(event, budgets_count_impressions_and_accepts_per_day)
{
    exposure("b1", "c1", "impression", "o1", "2026-03-01T01:00:00Z");
    exposure("b2", "c2", "impression", "o1", "2026-03-01T02:00:00Z");
    exposure("b3", "c2", "accept", "o1", "2026-03-01T02:00:10Z");
    exposure("b4", "c2", "click", "o1", "2026-03-01T02:00:05Z");
    exposure("b5", "c3", "dismiss", "o1", "2026-03-01T03:00:00Z");
    exposure("b6", "c3", "impression", "o1", "2026-03-02T00:00:00Z");
    exposure("b7", "c3", "impression", "o2", "2026-03-01T00:00:00Z");
    uint64_t imp, acc;
    cr_assert(budget("o1", "2026-03-01T12:00:00Z", &imp, &acc));
    cr_assert_eq(imp, 2, "clicks and dismisses are not impressions");
    cr_assert_eq(acc, 1);
    cr_assert(budget("o1", "2026-03-02T12:00:00Z", &imp, &acc));
    cr_assert_eq(imp, 1);
    cr_assert_eq(acc, 0);
    cr_assert(budget("o2", "2026-03-01T12:00:00Z", &imp, &acc));
    cr_assert_eq(imp, 1);
    cr_assert_not(budget("o3", "2026-03-01T12:00:00Z", &imp, &acc));
}

Test(event, purchases_update_rfm_aggregates)
{
    const char *profile = "{\"id\":\"c1\",\"attrs\":{\"tier\":\"gold\"},"
                          "\"rfm\":{\"orders\":1,\"revenue\":10,\"first_purchase\":"
                          "\"2025-12-01T00:00:00Z\",\"last_purchase\":\"2025-12-01T00:00:00Z\"}}";
    cr_assert_eq(nbx_profile_put(store, profile, strlen(profile)), NBX_OK);
    cr_assert_eq(apply("{\"event_id\":\"p1\",\"customer\":\"c1\",\"type\":\"purchase\","
                       "\"amount\":20.25,\"margin\":5,\"ts\":\"2026-02-01T00:00:00Z\"}"),
                 1);
    /* the import's figures are complete up to its last_purchase: a purchase
     * dated before it arriving late is in them already */
    cr_assert_eq(apply("{\"event_id\":\"p2\",\"customer\":\"c1\",\"type\":\"purchase\","
                       "\"amount\":4.75,\"ts\":\"2025-11-01T00:00:00Z\"}"),
                 1, "an earlier purchase arriving late is recorded");
    cr_assert_eq(apply("{\"event_id\":\"p3\",\"customer\":\"c1\",\"type\":\"purchase\","
                       "\"amount\":-5,\"margin\":-1,\"ts\":\"2026-01-01T00:00:00Z\"}"),
                 1, "a refund");
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(store, "c1", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"first_purchase\":\"2025-12-01T00:00:00Z\","
                           "\"last_purchase\":\"2026-02-01T00:00:00Z\",\"orders\":3,"
                           "\"revenue\":25.25,\"margin\":4") != NULL,
              "%s", json);
    nbx_free(json);
    /* an import saying its figures are complete only up to October: the late
     * purchase counts too, from its record */
    const char *earlier = "{\"id\":\"c1\",\"rfm\":{\"as_of\":\"2025-10-01T00:00:00Z\"}}";
    cr_assert_eq(nbx_profile_put(store, earlier, strlen(earlier)), NBX_OK);
    cr_assert_eq(nbx_profile_get(store, "c1", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"first_purchase\":\"2025-11-01T00:00:00Z\","
                           "\"last_purchase\":\"2026-02-01T00:00:00Z\",\"orders\":4,"
                           "\"revenue\":30,\"margin\":4") != NULL,
              "%s", json);
    cr_assert(strstr(json, "\"attrs\":{\"tier\":\"gold\"}") != NULL, "attrs lost: %s", json);
    nbx_free(json);

    /* a purchase before the profile import creates a bare profile */
    cr_assert_eq(apply("{\"event_id\":\"p4\",\"customer\":\"new\",\"type\":\"purchase\","
                       "\"amount\":8,\"ts\":\"2026-02-02T00:00:00Z\"}"),
                 1);
    cr_assert_eq(nbx_profile_get(store, "new", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"attrs\":{},\"consent\":{},\"propensity\":{},\"rfm\":{"
                           "\"first_purchase\":\"2026-02-02T00:00:00Z\","
                           "\"last_purchase\":\"2026-02-02T00:00:00Z\",\"orders\":1,"
                           "\"revenue\":8,\"margin\":0") != NULL,
              "%s", json);
    nbx_free(json);
    /* a later profile import merges over it and keeps the aggregates */
    const char *later = "{\"id\":\"new\",\"attrs\":{\"tier\":\"silver\"}}";
    cr_assert_eq(nbx_profile_put(store, later, strlen(later)), NBX_OK);
    cr_assert_eq(nbx_profile_get(store, "new", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"orders\":1,\"revenue\":8") != NULL, "%s", json);
    nbx_free(json);
}

Test(event, erasure_removes_counters_and_event_records)
{
    exposure("x1", "c1", "impression", "o1", "2026-03-01T01:00:00Z");
    exposure("x2", "c10", "impression", "o1", "2026-03-01T01:00:00Z");
    cr_assert_eq(apply("{\"event_id\":\"x3\",\"customer\":\"c1\",\"type\":\"purchase\","
                       "\"amount\":8,\"ts\":\"2026-02-02T00:00:00Z\"}"),
                 1);
    cr_assert_eq(nbx_profile_delete(store, "c1"), NBX_OK, "%s", nbx_store_errmsg(store));
    nbx_exposure x;
    cr_assert_not(counters("c1", "o1", &x));
    cr_assert_not(counters("c1", "", &x));
    cr_assert(counters("c10", "o1", &x), "erasing c1 touched c10");
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(store, &st), NBX_OK);
    cr_assert_eq(st.events_seen, 1, "c1's event ids were not erased");
    cr_assert_eq(st.exposure_keys, 2);
    /* the erased customer stays erased: re-sent events are refused */
    const char *x1 = "{\"event_id\":\"x1\",\"customer\":\"c1\",\"type\":\"impression\","
                     "\"offer\":\"o1\",\"ts\":\"2026-03-01T01:00:00Z\"}";
    cr_assert_eq(apply(x1), 0);
    cr_assert_not(counters("c1", "", &x));
    /* restored (renewed consent), they apply again */
    cr_assert_eq(nbx_profile_restore(store, "c1"), NBX_OK);
    exposure("x1", "c1", "impression", "o1", "2026-03-01T01:00:00Z");
    cr_assert_eq(nbx_profile_delete(store, "c1"), NBX_OK, "an exposure-only customer erases");
    cr_assert_eq(nbx_profile_delete(store, "c1"), NBX_ENOTFOUND);
}

Test(event, misuse)
{
    int applied = 7;
    cr_assert_eq(nbx_event_apply(NULL, "{}", 2, &applied), NBX_EINVAL);
    cr_assert_eq(applied, 0);
    cr_assert_eq(nbx_event_apply(store, NULL, 2, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_event_apply(store, "{}", (size_t)NBX_LINE_MAX + 1, NULL), NBX_ELIMIT);
    cr_assert_eq(nbx_event_apply(store, "{\"event_id\":1}", 14, NULL), NBX_EPARSE);
    cr_assert(strstr(nbx_store_errmsg(store), "event_id") != NULL);
    nbx_store *ro;
    cr_assert_eq(nbx_store_open(dir, NBX_STORE_READONLY, &ro), NBX_OK);
    const char *ev = "{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\","
                     "\"ts\":1}";
    cr_assert_eq(nbx_event_apply(ro, ev, strlen(ev), NULL), NBX_EREADONLY);
    nbx_store_close(ro);
    cr_assert_str_eq(nbx_event_type_name(NBX_EV_ACCEPT), "accept");
    cr_assert_str_eq(nbx_event_type_name(99), "unknown");
}

/* ------------------------------------------------------------------------
 * Clocks (issue 9, section 2): no event can reset a customer's counters
 * ------------------------------------------------------------------------ */

static void iso(int64_t ms, char out[NBX_TIME_BUFSZ])
{
    cr_assert_eq(nbx_time_format(ms, out), NBX_OK);
}

/* An exposure of customer c at ms through nbx_event_apply: its return code. */
static int exposure_at(const char *id, const char *customer, const char *type, int64_t ms)
{
    char ts[NBX_TIME_BUFSZ], json[512];
    iso(ms, ts);
    snprintf(json, sizeof json,
             "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"%s\",\"offer\":\"o001\","
             "\"ts\":\"%s\"}",
             id, customer, type, ts);
    return nbx_event_apply(store, json, strlen(json), NULL);
}

/* The repro: 5 impressions put u1 at its contact cap, then a click dated a
 * year ahead (2027-06-01 in the report) erased the day buckets. Now it is
 * refused, naming ts, and changes nothing; a click a minute ahead (within
 * the skew) and an old one (a backfill) are applied. */
Test(event, an_event_dated_a_year_ahead_is_refused_naming_ts)
{
    int64_t now = nbx_time_now();
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "imp%d", i);
        cr_assert_eq(exposure_at(id, "u1", "impression", now - 3600000 + i), NBX_OK, "%s",
                     nbx_store_errmsg(store));
    }
    uint64_t before = digest();
    int64_t ahead[] = {t("2027-06-01T00:00:00Z"), now + 365 * NBX_MS_PER_DAY,
                       now + NBX_DEFAULT_EVENT_SKEW_MS + 60000};
    for (size_t i = 0; i < sizeof ahead / sizeof ahead[0]; i++) {
        if (ahead[i] <= now + NBX_DEFAULT_EVENT_SKEW_MS)
            continue; /* the report's date is in the past by now */
        int rc = exposure_at("f1", "u1", "click", ahead[i]);
        cr_assert_eq(rc, NBX_EINVAL, "case %zu: expected NBX_EINVAL, got %d", i, rc);
        cr_assert(strstr(nbx_store_errmsg(store), "field 'ts'") != NULL, "%s",
                  nbx_store_errmsg(store));
        cr_assert_eq(digest(), before, "case %zu: the refused event changed the store", i);
    }
    nbx_exposure x;
    cr_assert(counters("u1", "", &x));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, nbx_day_of(now), 7), 5);

    cr_assert_eq(exposure_at("soon", "u1", "click", now + 60000), NBX_OK, "within the skew");
    cr_assert_eq(exposure_at("old", "u1", "impression", t("2020-01-01T00:00:00Z")), NBX_OK,
                 "a backfill: %s", nbx_store_errmsg(store));
    cr_assert(counters("u1", "", &x));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, nbx_day_of(now), 7), 5);
}

/* Counters are pruned by the writer's clock, never by an event's own time:
 * even an event the skew check did not see (a decision recorded with a
 * future clock goes straight to the effects) keeps this year's buckets. */
Test(event, counters_are_never_pruned_by_an_event_s_own_time)
{
    int64_t now = t("2026-03-01T12:00:00Z");
    nbx_exposure x;
    memset(&x, 0, sizeof x);
    cr_assert_eq(
        nbx_exposure_add(&x, NBX_EXP_IMPRESSION, t("2026-02-28T10:00:00Z"), 5, now, &arena),
        NBX_OK);
    cr_assert_eq(nbx_exposure_add(&x, NBX_EXP_CLICK, t("2027-06-01T00:00:00Z"), 1, now, &arena),
                 NBX_OK);
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, nbx_day_of(now), 7), 5,
                 "the click a year ahead erased today's impressions");
    /* once the writer's clock has moved on, the old bucket goes */
    cr_assert_eq(nbx_exposure_add(&x, NBX_EXP_CLICK, t("2027-06-01T00:00:01Z"), 1,
                                  t("2027-06-01T00:00:00Z"), &arena),
                 NBX_OK);
    cr_assert_eq(x.n_days, 1);
    cr_assert_eq(x.days[0].n[NBX_EXP_CLICK], 2);

    /* through the effects, as nbx_record_impression() reaches them */
    MDB_txn *txn;
    cr_assert_eq(nbx_store_write_begin(store, &txn, NULL), NBX_OK);
    nbx_buf scratch = {0};
    const char *days[] = {"2026-02-27T10:00:00Z", "2026-02-28T10:00:00Z", "2027-06-01T00:00:00Z"};
    nbx_effects fx;
    nbx_effects_init(&fx, &arena, &scratch);
    cr_assert_eq(nbx_effects_begin(&fx, store, txn, now, NULL), NBX_OK);
    for (int i = 0; i < 3; i++) {
        char id[8], key[NBX_EVENT_KEY_MAX], val[NBX_EVENT_RECORD_MAX];
        snprintf(id, sizeof id, "d%d", i);
        nbx_buf rec = {.data = val, .cap = sizeof val};
        nbx_fx_event e = {.ev = {.id = nbx_sv_of(id),
                                 .customer = NBX_SV("u1"),
                                 .offer = NBX_SV("o001"),
                                 .type = NBX_EV_IMPRESSION,
                                 .ts_ms = t(days[i]),
                                 .amount = NAN,
                                 .margin = NAN}};
        cr_assert_eq(nbx_event_record_encode(&e.ev, &rec), NBX_OK);
        e.key = (MDB_val){nbx_event_key(key, e.ev.customer, e.ev.id), key};
        e.val = (MDB_val){rec.len, val};
        cr_assert_eq(nbx_effects_customer(&fx, &e, 1, NULL), NBX_OK);
    }
    cr_assert_eq(nbx_effects_end(&fx, NULL), NBX_OK);
    nbx_effects_free(&fx);
    nbx_buf_free(&scratch);
    cr_assert_eq(nbx_store_commit(store, txn, NULL), NBX_OK);
    cr_assert(counters("u1", "", &x));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_IMPRESSION, nbx_day_of(now), 7), 2);
}

/* Buckets ahead of the writer (one per future day a decision was recorded
 * at) cannot grow a row without bound, and the row still decodes. */
Test(event, a_row_keeps_a_bounded_number_of_buckets)
{
    int64_t now = t("2026-03-01T12:00:00Z");
    nbx_exposure x;
    memset(&x, 0, sizeof x);
    for (int d = 0; d < NBX_EXPOSURE_DAYS_MAX + 100; d++)
        cr_assert_eq(
            nbx_exposure_add(&x, NBX_EXP_IMPRESSION, now + d * NBX_MS_PER_DAY, 1, now, &arena),
            NBX_OK);
    cr_assert_eq(x.n_days, NBX_EXPOSURE_DAYS_MAX);
    cr_assert_eq(x.days[x.n_days - 1].day, nbx_day_of(now) + NBX_EXPOSURE_DAYS_MAX + 99);
    nbx_buf b = {0};
    cr_assert_eq(nbx_exposure_encode(&x, &b), NBX_OK);
    nbx_exposure y;
    cr_assert_eq(nbx_exposure_decode(b.data, b.len, &y, &arena), NBX_OK);
    cr_assert_eq(y.n_days, x.n_days);
    nbx_buf_free(&b);
}

/* ------------------------------------------------------------------------
 * nbx_record_ex: the engine's clock and catalog
 * ------------------------------------------------------------------------ */

static nbx_engine *open_engine(int64_t skew_ms, int *rc)
{
    char *catalog = tu_source_path("tests/data/catalog.json");
    char *policy = tu_source_path("policies/margin_per_session.lua");
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store_handle = store;
    o.catalog = catalog;
    o.policy = policy;
    o.event_max_skew_ms = skew_ms;
    nbx_engine *e = NULL;
    *rc = nbx_engine_open(&o, &e);
    free(catalog);
    free(policy);
    return e;
}

/* An engine on the suite's store and a context on it; both must open. */
static nbx_ctx *open_ctx(int64_t skew_ms, nbx_engine **engine)
{
    int rc;
    *engine = open_engine(skew_ms, &rc);
    cr_assert_eq(rc, NBX_OK, "%s", nbx_last_errmsg());
    nbx_ctx *ctx;
    cr_assert_eq(nbx_ctx_open(*engine, &ctx), NBX_OK, "%s", nbx_last_errmsg());
    return ctx;
}

static int record(nbx_ctx *ctx, unsigned flags, const char *offer, const char *id, int64_t ms,
                  int *outcome)
{
    char ts[NBX_TIME_BUFSZ], json[512];
    iso(ms, ts);
    snprintf(json, sizeof json,
             "{\"event_id\":\"%s\",\"customer\":\"u1\",\"type\":\"click\",\"offer\":\"%s\","
             "\"ts\":\"%s\"}",
             id, offer, ts);
    return nbx_record_ex(ctx, json, strlen(json), flags, outcome);
}

/* The stored record of u1's event id. */
static nbx_event stored_event(const char *id)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    char key[NBX_EVENT_KEY_MAX];
    MDB_val k = {nbx_event_key(key, NBX_SV("u1"), nbx_sv_of(id)), key}, v;
    cr_assert_eq(mdb_get(txn, store->customers, &k, &v), 0, "no record of %s", id);
    nbx_event ev = {0};
    cr_assert_eq(nbx_event_record_decode(v.mv_data, v.mv_size, &ev), NBX_OK);
    ev.offer = ev.placement = (nbx_sv){"", 0}; /* they point into the page */
    mdb_txn_abort(txn);
    return ev;
}

Test(event, record_ex_refuses_a_future_ts_and_server_time_ignores_it)
{
    int rc;
    nbx_engine *engine;
    nbx_ctx *ctx = open_ctx(0, &engine);
    int64_t now = nbx_time_now();
    int outcome = 9;

    uint64_t before = digest();
    rc = record(ctx, 0, "free_shipping", "f1", now + 400 * NBX_MS_PER_DAY, &outcome);
    cr_assert_eq(rc, NBX_EINVAL);
    cr_assert_eq(outcome, 0);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "field 'ts'") != NULL, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(digest(), before);

    /* the server's clock instead of the event's: applied, dated now */
    rc = record(ctx, NBX_RECORD_SERVER_TIME, "free_shipping", "f1", now + 400 * NBX_MS_PER_DAY,
                &outcome);
    int64_t after = nbx_time_now();
    cr_assert_eq(rc, NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(outcome, NBX_RECORD_APPLIED);
    nbx_event ev = stored_event("f1");
    cr_assert(ev.ts_ms >= now && ev.ts_ms <= after, "stamped %lld, not in [%lld, %lld]",
              (long long)ev.ts_ms, (long long)now, (long long)after);
    rc = record(ctx, NBX_RECORD_SERVER_TIME, "free_shipping", "f1", now, &outcome);
    cr_assert_eq(rc, NBX_OK);
    cr_assert_eq(outcome, NBX_RECORD_DUPLICATE);

    /* with the server's clock ts may be left out; without it, not */
    const char *no_ts = "{\"event_id\":\"n1\",\"customer\":\"u1\",\"type\":\"click\","
                        "\"offer\":\"free_shipping\"}";
    cr_assert_eq(nbx_record_ex(ctx, no_ts, strlen(no_ts), 0, &outcome), NBX_EPARSE);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "field 'ts'") != NULL, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(nbx_record_ex(ctx, no_ts, strlen(no_ts), NBX_RECORD_SERVER_TIME, &outcome), NBX_OK,
                 "%s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(outcome, NBX_RECORD_APPLIED);

    /* nbx_record is nbx_record_ex with flags 0 */
    int applied = 9;
    char json[256], ts[NBX_TIME_BUFSZ];
    iso(now + 400 * NBX_MS_PER_DAY, ts);
    snprintf(json, sizeof json,
             "{\"event_id\":\"r1\",\"customer\":\"u1\",\"type\":\"click\","
             "\"offer\":\"free_shipping\",\"ts\":\"%s\"}",
             ts);
    cr_assert_eq(nbx_record(ctx, json, strlen(json), &applied), NBX_EINVAL);
    cr_assert_eq(applied, 0);

    /* misuse */
    cr_assert_eq(nbx_record_ex(ctx, no_ts, strlen(no_ts), 0x80, &outcome), NBX_EINVAL);
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "flags") != NULL);
    cr_assert_eq(nbx_record_ex(NULL, no_ts, strlen(no_ts), 0, &outcome), NBX_EINVAL);
    cr_assert_eq(nbx_record_ex(ctx, NULL, 0, 0, &outcome), NBX_EINVAL);
    cr_assert_eq(nbx_record_ex(ctx, no_ts, strlen(no_ts), NBX_RECORD_SERVER_TIME, NULL), NBX_OK);
    cr_assert_eq(nbx_record_ex(ctx, no_ts, (size_t)NBX_LINE_MAX + 1, 0, &outcome), NBX_ELIMIT);
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    /* a read-only engine records nothing */
    char *catalog = tu_source_path("tests/data/catalog.json");
    char *policy = tu_source_path("policies/margin_per_session.lua");
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = dir;
    o.catalog = catalog;
    o.policy = policy;
    o.flags = NBX_ENGINE_READONLY;
    cr_assert_eq(nbx_engine_open(&o, &engine), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(engine, &ctx), NBX_OK);
    cr_assert_eq(nbx_record_ex(ctx, no_ts, strlen(no_ts), NBX_RECORD_SERVER_TIME, &outcome),
                 NBX_EREADONLY);
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    free(catalog);
    free(policy);
}

Test(event, the_engine_s_skew_is_an_option)
{
    int rc;
    cr_assert_null(open_engine(-1, &rc));
    cr_assert_eq(rc, NBX_EINVAL);
    cr_assert(strstr(nbx_last_errmsg(), "event_max_skew_ms") != NULL, "%s", nbx_last_errmsg());
    cr_assert_null(open_engine(NBX_EVENT_SKEW_MAX_MS + 1, &rc));
    cr_assert_eq(rc, NBX_EINVAL);

    nbx_engine *engine;
    nbx_ctx *ctx = open_ctx(3600000, &engine);
    int64_t now = nbx_time_now();
    int outcome;
    cr_assert_eq(record(ctx, 0, "free_shipping", "h1", now + 1800000, &outcome), NBX_OK, "%s",
                 nbx_ctx_errmsg(ctx));
    cr_assert_eq(record(ctx, 0, "free_shipping", "h2", now + 2 * 3600000, &outcome), NBX_EINVAL);
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
}

/* The engine knows its catalog: an exposure naming another offer is refused
 * naming `offer` (it was applied, and nginx answered 204). */
Test(event, record_ex_refuses_an_offer_not_in_the_catalog)
{
    int rc;
    nbx_engine *engine;
    nbx_ctx *ctx = open_ctx(0, &engine);
    int64_t now = nbx_time_now();
    int outcome = 9;
    uint64_t before = digest();
    for (unsigned flags = 0; flags <= NBX_RECORD_SERVER_TIME; flags++) {
        rc = record(ctx, flags, "NOPE", "x1", now, &outcome);
        cr_assert_eq(rc, NBX_EINVAL, "flags %u: got %d", flags, rc);
        cr_assert_eq(outcome, 0);
        cr_assert(strstr(nbx_ctx_errmsg(ctx), "field 'offer': 'NOPE'") != NULL, "%s",
                  nbx_ctx_errmsg(ctx));
    }
    cr_assert_eq(digest(), before);
    cr_assert_eq(record(ctx, 0, "free_shipping", "x1", now, &outcome), NBX_OK);
    cr_assert_eq(outcome, NBX_RECORD_APPLIED);
    /* a purchase names no offer */
    const char *purchase = "{\"event_id\":\"p\",\"customer\":\"u1\",\"type\":\"purchase\","
                           "\"amount\":5,\"ts\":\"2026-01-01T00:00:00Z\"}";
    cr_assert_eq(nbx_record_ex(ctx, purchase, strlen(purchase), 0, &outcome), NBX_OK, "%s",
                 nbx_ctx_errmsg(ctx));
    cr_assert_eq(outcome, NBX_RECORD_APPLIED);
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
}

/* An erased customer's events through nbx_record_ex: refused, reported as
 * suppressed, nothing stored; a decision recorded for them stores nothing
 * either. */
Test(event, record_ex_reports_an_erased_customer_as_suppressed)
{
    nbx_engine *engine;
    nbx_ctx *ctx = open_ctx(0, &engine);
    int64_t now = nbx_time_now();
    int outcome = 0;
    cr_assert_eq(record(ctx, 0, "free_shipping", "s1", now, &outcome), NBX_OK);
    cr_assert_eq(outcome, NBX_RECORD_APPLIED);
    cr_assert_eq(nbx_profile_delete(store, "u1"), NBX_OK, "%s", nbx_store_errmsg(store));
    uint64_t before = digest();
    for (unsigned flags = 0; flags <= NBX_RECORD_SERVER_TIME; flags++) {
        cr_assert_eq(record(ctx, flags, "free_shipping", "s1", now, &outcome), NBX_OK);
        cr_assert_eq(outcome, NBX_RECORD_SUPPRESSED);
        cr_assert_eq(record(ctx, flags, "free_shipping", "s2", now, &outcome), NBX_OK);
        cr_assert_eq(outcome, NBX_RECORD_SUPPRESSED);
    }
    int applied = 9;
    const char *ev = "{\"event_id\":\"s3\",\"customer\":\"u1\",\"type\":\"click\","
                     "\"offer\":\"free_shipping\",\"ts\":\"2026-01-01T00:00:00Z\"}";
    cr_assert_eq(nbx_record(ctx, ev, strlen(ev), &applied), NBX_OK);
    cr_assert_eq(applied, 0);
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "u1";
    req.flags = NBX_DECIDE_RECORD;
    const nbx_result *r;
    cr_assert_eq(nbx_decide(ctx, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(digest(), before, "something of the erased customer was stored");
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
}

/* A decision for a customer whose stored profile is damaged (the report's
 * 21 bytes, with a nil tenth element) fails at once with NBX_ECORRUPT
 * naming the customer; it spun for seconds. */
Test(event, a_decision_over_a_damaged_profile_fails_at_once, .timeout = 60)
{
    static const uint8_t damaged[21] = {0x97, 0x80, 0x80, 0x80, 0xc0, 0xc0, 0xdd,
                                        0xff, 0xff, 0xff, 0xff, 0,    0,    0,
                                        0,    0,    0,    0,    0,    0,    0xc0};
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, 0, &txn), 0);
    MDB_val k = {2, "u9"}, v = {sizeof damaged, (void *)damaged};
    cr_assert_eq(mdb_put(txn, store->profiles, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    nbx_engine *engine;
    nbx_ctx *ctx = open_ctx(0, &engine);
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "u9";
    const nbx_result *r;
    int64_t t0 = nbx_monotonic_us();
    cr_assert_eq(nbx_decide(ctx, &req, &r), NBX_ECORRUPT);
    double took = (double)(nbx_monotonic_us() - t0) / 1e6;
    cr_assert(strstr(nbx_ctx_errmsg(ctx), "profile 'u9'") != NULL, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_lt(took, 5.0, "took %.1f s", took);
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
}

/* The effects decode rows into an arena. Given the caller's (nbx_record's
 * context arena, which holds the parsed event: an escaped customer id is
 * unescaped into it), they must not reset it: the customer's id would be
 * overwritten by the profile decoded after it. */
Test(event, applying_an_event_keeps_the_caller_s_arena)
{
    const char *profile = "{\"id\":\"\\u00e9ve\",\"attrs\":{\"a\":\"aaaaaaaaaaaaaaaaaaaaaaaa\","
                          "\"b\":\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\",\"c\":1,\"d\":2,\"e\":3}}";
    cr_assert_eq(nbx_profile_put(store, profile, strlen(profile)), NBX_OK);
    nbx_engine *engine;
    nbx_ctx *ctx = open_ctx(0, &engine);
    const char *events[] = {
        "{\"event_id\":\"p1\",\"customer\":\"\\u00e9ve\",\"type\":\"purchase\",\"amount\":5,"
        "\"ts\":\"2026-01-01T00:00:00Z\"}",
        "{\"event_id\":\"k1\",\"customer\":\"\\u00e9ve\",\"type\":\"click\","
        "\"offer\":\"free_shipping\",\"ts\":\"2026-01-01T00:00:00Z\"}"};
    for (int i = 0; i < 2; i++) {
        int outcome;
        cr_assert_eq(nbx_record_ex(ctx, events[i], strlen(events[i]), 0, &outcome), NBX_OK, "%s",
                     nbx_ctx_errmsg(ctx));
        cr_assert_eq(outcome, NBX_RECORD_APPLIED);
    }
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(store, "\xc3\xa9ve", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"orders\":1") != NULL, "%s", json);
    nbx_free(json);
    nbx_exposure x;
    cr_assert(counters("\xc3\xa9ve", "free_shipping", &x), "the click counted elsewhere");
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(store, &st), NBX_OK);
    cr_assert_eq(st.profiles, 1, "a profile under another key");
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
}

/* ------------------------------------------------------------------------
 * Events that follow a decision of an arm (issue 13: decision_id)
 * ------------------------------------------------------------------------ */

#define DID "01890a5d-ac96-7abc-8def-0123456789ab"

Test(event, decision_id_is_optional_and_checked)
{
    nbx_event ev;
    nbx_err e = {0};
    const char *ok =
        "{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"accept\",\"offer\":\"o1\","
        "\"ts\":1,\"decision_id\":\"" DID ".q4.challenger\"}";
    cr_assert_eq(nbx_event_parse(ok, strlen(ok), 0, &ev, &arena, &e), NBX_OK, "%s", e.msg);
    cr_assert(nbx_sv_eq_cstr(ev.decision_id, DID ".q4.challenger"));
    const char *plain = "{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"accept\","
                        "\"offer\":\"o1\",\"ts\":1,\"decision_id\":\"" DID "\"}";
    cr_assert_eq(nbx_event_parse(plain, strlen(plain), 0, &ev, &arena, &e), NBX_OK, "%s", e.msg);
    const char *none = "{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"accept\","
                       "\"offer\":\"o1\",\"ts\":1}";
    cr_assert_eq(nbx_event_parse(none, strlen(none), 0, &ev, &arena, &e), NBX_OK);
    cr_assert_eq(ev.decision_id.len, 0);

    char longest[NBX_DECISION_ID_MAX + 2];
    memset(longest, 'a', sizeof longest);
    longest[NBX_DECISION_ID_MAX + 1] = '\0';
    char too_long[400];
    snprintf(too_long, sizeof too_long,
             "{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"accept\",\"offer\":\"o\",\"ts\":1,"
             "\"decision_id\":\"%s\"}",
             longest);
    struct {
        const char *json, *expect;
    } cases[] = {
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"accept\",\"offer\":\"o\",\"ts\":1,"
         "\"decision_id\":7}",
         "field 'decision_id': must be a string"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"accept\",\"offer\":\"o\",\"ts\":1,"
         "\"decision_id\":\"\"}",
         "field 'decision_id': must be 1 to 166 bytes (got 0)"},
        {too_long, "field 'decision_id': must be 1 to 166 bytes (got 167)"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"accept\",\"offer\":\"o\",\"ts\":1,"
         "\"decision_id\":\"" DID ".q4.a b\"}",
         "field 'decision_id': byte 42 is not one of a decision id"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"accept\",\"offer\":\"o\",\"ts\":1,"
         "\"decision_id\":\"d\\u001b[31m\"}",
         "field 'decision_id': byte 2 is not one"},
        {"{\"event_id\":\"e\",\"customer\":\"c\",\"type\":\"accept\",\"offer\":\"o\",\"ts\":1,"
         "\"decision_id\":\"a\",\"decision_id\":\"b\"}",
         "duplicate key 'decision_id'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = nbx_event_parse(cases[i].json, strlen(cases[i].json), 0, &ev, &arena, &e);
        cr_assert_eq(rc, NBX_EPARSE, "accepted: %s", cases[i].json);
        cr_assert(strstr(e.msg, cases[i].expect) != NULL, "for %s expected '%s', got '%s'",
                  cases[i].json, cases[i].expect, e.msg);
    }
    /* nothing of a refused event is written */
    int applied = 9;
    cr_assert_eq(nbx_event_apply(store, cases[3].json, strlen(cases[3].json), &applied),
                 NBX_EPARSE);
    cr_assert_eq(applied, 0);
}

/* The arm's counters of one day, or of every day with day NULL. */
static nbx_arm_counts arm_counts(const char *arm, const char *day)
{
    nbx_arm_counts c;
    memset(&c, 0, sizeof c);
    MDB_txn *txn;
    nbx_err e = {0};
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    if (!day) {
        cr_assert_eq(nbx_arm_totals(store, txn, NBX_SV("q4"), nbx_sv_of(arm), &c, &e), NBX_OK);
    } else {
        char key[NBX_ARM_KEY_MAX];
        MDB_val k = {nbx_arm_key(key, NBX_SV("q4"), nbx_sv_of(arm), nbx_day_of(t(day))), key}, v;
        if (mdb_get(txn, store->arms, &k, &v) == 0)
            cr_assert_eq(nbx_arm_counts_decode(v.mv_data, v.mv_size, &c), NBX_OK);
    }
    mdb_txn_abort(txn);
    return c;
}

static size_t arm_rows(void)
{
    MDB_txn *txn;
    MDB_stat st;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    cr_assert_eq(mdb_stat(txn, store->arms, &st), 0);
    mdb_txn_abort(txn);
    return st.ms_entries;
}

static int attributed(const char *id, const char *customer, const char *type, const char *decision,
                      const char *ts, const char *extra)
{
    char json[768];
    snprintf(json, sizeof json,
             "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"%s\",\"decision_id\":\"%s\","
             "\"ts\":\"%s\"%s}",
             id, customer, type, decision, ts, extra);
    return apply(json);
}

#define OFFER ",\"offer\":\"o1\""

Test(event, impressions_accepts_and_purchases_count_for_the_arm_of_their_decision)
{
    const char *ch = DID ".q4.challenger", *day = "2026-03-01T10:00:00Z";
    cr_assert_eq(attributed("i1", "c1", "impression", ch, day, OFFER), 1);
    cr_assert_eq(attributed("a1", "c1", "accept", ch, day, OFFER), 1);
    cr_assert_eq(attributed("p1", "c1", "purchase", ch, day, ",\"amount\":30,\"margin\":7.5"), 1);
    cr_assert_eq(attributed("p2", "c1", "purchase", ch, day, ",\"amount\":10"), 1);
    /* clicks and dismisses are not among an arm's counters */
    cr_assert_eq(attributed("k1", "c1", "click", ch, day, OFFER), 1);
    cr_assert_eq(attributed("d1", "c1", "dismiss", ch, day, OFFER), 1);
    /* the next day's accept is that day's row */
    cr_assert_eq(attributed("a2", "c2", "accept", ch, "2026-03-02T00:00:01Z", OFFER), 1);

    nbx_arm_counts c = arm_counts("challenger", day);
    cr_assert_eq(c.impressions, 1);
    cr_assert_eq(c.accepts, 1);
    cr_assert_eq(c.purchases, 2);
    cr_assert_float_eq(c.realised_margin, 7.5, 1e-12, "a purchase without margin adds 0");
    cr_assert_eq(c.decisions, 0, "events count no decision");
    cr_assert_eq(arm_counts("challenger", "2026-03-02T00:00:00Z").accepts, 1);
    cr_assert_eq(arm_counts("challenger", NULL).accepts, 2);
    cr_assert_eq(arm_rows(), 2);

    /* a duplicate changes nothing, whatever it says */
    cr_assert_eq(attributed("a1", "c1", "accept", ch, day, OFFER), 0);
    cr_assert_eq(attributed("p1", "c1", "purchase", DID ".q4.champion", day, ",\"amount\":5"), 0);
    cr_assert_eq(arm_counts("challenger", NULL).accepts, 2);
    cr_assert_eq(arm_counts("champion", NULL).purchases, 0);

    /* an id without an arm attributes nothing, and is no error */
    cr_assert_eq(attributed("a3", "c1", "accept", DID, day, OFFER), 1);
    cr_assert_eq(attributed("a4", "c1", "accept", "e-42", day, OFFER), 1);
    cr_assert_eq(arm_rows(), 2);
    /* the rest of the event is applied as ever */
    nbx_exposure x;
    cr_assert(counters("c1", "o1", &x));
    cr_assert_eq(nbx_exposure_count(&x, NBX_EXP_ACCEPT, nbx_day_of(t(day)), 1), 3);
}

Test(event, an_erased_customer_s_events_count_for_no_arm)
{
    const char *ch = DID ".q4.challenger", *day = "2026-03-01T10:00:00Z";
    cr_assert_eq(attributed("a1", "c1", "accept", ch, day, OFFER), 1);
    cr_assert_eq(nbx_profile_delete(store, "c1"), NBX_OK, "%s", nbx_store_errmsg(store));
    /* the arm's counts hold no personal data: they stay */
    cr_assert_eq(arm_counts("challenger", NULL).accepts, 1);
    cr_assert_eq(attributed("a2", "c1", "accept", ch, day, OFFER), 0);
    cr_assert_eq(attributed("p1", "c1", "purchase", ch, day, ",\"amount\":3,\"margin\":1"), 0);
    nbx_arm_counts c = arm_counts("challenger", NULL);
    cr_assert_eq(c.accepts, 1);
    cr_assert_eq(c.purchases, 0);
}
