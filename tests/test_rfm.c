/* Suite: rfm (core/rfm.c): quintile cut points, scores, segments and the
 * rebuild's bookkeeping, on real stores. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;
static nbx_store *store;
static int64_t as_of; /* 2026-03-01T00:00:00Z */

static void setup(void)
{
    dir = tu_tempdir("rfm");
    cr_assert_not_null(dir);
    cr_assert_eq(nbx_store_open(dir, NBX_STORE_CREATE, &store), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_time_parse("2026-03-01T00:00:00Z", &as_of), NBX_OK);
}

static void teardown(void)
{
    nbx_store_close(store);
    tu_rmtree(dir);
    free(dir);
}

TestSuite(rfm, .init = setup, .fini = teardown, .timeout = 120);

/* A customer whose last purchase was `days` before as_of. */
static void put_customer(const char *id, double days, uint64_t orders, double revenue)
{
    char json[512];
    if (orders == 0) {
        snprintf(json, sizeof json, "{\"id\":\"%s\",\"attrs\":{\"x\":1}}", id);
    } else {
        double secs = (double)as_of / 1000.0 - days * 86400.0;
        snprintf(json, sizeof json,
                 "{\"id\":\"%s\",\"rfm\":{\"first_purchase\":%.3f,\"last_purchase\":%.3f,"
                 "\"orders\":%llu,\"revenue\":%.17g}}",
                 id, secs - 86400.0 * 30, secs, (unsigned long long)orders, revenue);
    }
    cr_assert_eq(nbx_profile_put(store, json, strlen(json)), NBX_OK, "%s: %s", json,
                 nbx_store_errmsg(store));
}

typedef struct scores {
    int r, f, m;
    int segment;
} scores;

static scores scores_of(const char *id)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    nbx_arena a = {0};
    nbx_profile p;
    cr_assert_eq(nbx_store_profile_get(store, txn, nbx_sv_of(id), &p, &a, NULL), NBX_OK, "%s", id);
    cr_assert(p.fields & NBX_PF_RFM, "%s has no rfm after a rebuild", id);
    scores s = {p.rfm.r, p.rfm.f, p.rfm.m, p.rfm.segment};
    nbx_arena_free(&a);
    mdb_txn_abort(txn);
    return s;
}

static nbx_rfm_stats rebuild(int64_t when)
{
    nbx_rfm_stats st;
    cr_assert_eq(nbx_rfm_rebuild(store, when, &st), NBX_OK, "%s", nbx_store_errmsg(store));
    return st;
}

Test(rfm, quintiles_of_distinct_values)
{
    /* customer i: i days ago, i orders, 10 i revenue, i = 1..100 */
    for (int i = 1; i <= 100; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%03d", i);
        put_customer(id, i, (uint64_t)i, 10.0 * i);
    }
    nbx_rfm_stats st = rebuild(as_of);
    cr_assert_eq(st.customers, 100);
    cr_assert_eq(st.scored, 100);
    for (int k = 0; k < 4; k++) {
        cr_assert_float_eq(st.recency_days[k], 20.0 * (k + 1), 1e-6, "recency cut %d: %g", k,
                           st.recency_days[k]);
        cr_assert_eq(st.frequency[k], 20.0 * (k + 1), "frequency cut %d: %g", k, st.frequency[k]);
        cr_assert_eq(st.monetary[k], 200.0 * (k + 1), "monetary cut %d: %g", k, st.monetary[k]);
    }
    for (int i = 1; i <= 100; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%03d", i);
        scores s = scores_of(id);
        int q = (i - 1) / 20; /* 0..4: 20 customers per quintile */
        cr_assert_eq(s.f, 1 + q, "%s: f %d, expected %d", id, s.f, 1 + q);
        cr_assert_eq(s.m, 1 + q, "%s: m %d, expected %d", id, s.m, 1 + q);
        cr_assert_eq(s.r, 5 - q, "%s: r %d, expected %d (fewer days is better)", id, s.r, 5 - q);
    }
}

/* Most customers bought once, for one of a few amounts: scores follow
 * values, so equal values score equal and more never scores lower. */
Test(rfm, monotonic_under_heavy_ties)
{
    enum { N = 1000 };
    static double revenue[N], days[N];
    static uint64_t orders[N];
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "t%04d", i);
        orders[i] = i < 700 ? 1 : (uint64_t)(2 + i % 5);
        revenue[i] = i < 600 ? 25.0 : i < 800 ? 50.0 : 50.0 + i;
        days[i] = (double)(i % 3 == 0 ? 7 : 7 + i % 11);
        put_customer(id, days[i], orders[i], revenue[i]);
    }
    rebuild(as_of);
    static scores s[N];
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "t%04d", i);
        s[i] = scores_of(id);
        cr_assert(s[i].r >= 1 && s[i].r <= 5 && s[i].f >= 1 && s[i].f <= 5 && s[i].m >= 1 &&
                      s[i].m <= 5,
                  "%s: scores out of range", id);
    }
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            if (revenue[i] > revenue[j])
                cr_assert_geq(s[i].m, s[j].m, "revenue %g > %g but m %d < %d", revenue[i],
                              revenue[j], s[i].m, s[j].m);
            if (revenue[i] == revenue[j])
                cr_assert_eq(s[i].m, s[j].m, "equal revenue %g, m %d and %d", revenue[i], s[i].m,
                             s[j].m);
            if (orders[i] > orders[j])
                cr_assert_geq(s[i].f, s[j].f);
            if (orders[i] == orders[j])
                cr_assert_eq(s[i].f, s[j].f);
            if (days[i] < days[j])
                cr_assert_geq(s[i].r, s[j].r, "more recent but lower r");
        }
    cr_assert_eq(s[0].f, 1, "one-time buyers are the least frequent");
    cr_assert_gt(s[N - 1].m, s[0].m, "the biggest spender outscores the 25.0 crowd");
}

Test(rfm, customers_without_a_purchase_are_prospects)
{
    put_customer("buyer1", 3, 2, 40);
    put_customer("buyer2", 30, 1, 10);
    put_customer("browser", 0, 0, 0);
    const char *zero = "{\"id\":\"zero\",\"rfm\":{\"orders\":0,\"revenue\":0}}";
    cr_assert_eq(nbx_profile_put(store, zero, strlen(zero)), NBX_OK);
    nbx_rfm_stats st = rebuild(as_of);
    cr_assert_eq(st.customers, 4);
    cr_assert_eq(st.scored, 2);
    cr_assert_eq(st.segments[NBX_SEGMENT_PROSPECT], 2);
    uint64_t total = 0;
    for (int i = 0; i < NBX_SEGMENT_COUNT; i++)
        total += st.segments[i];
    cr_assert_eq(total, 4, "segment counts add up to customers");
    scores b = scores_of("browser");
    cr_assert_eq(b.segment, NBX_SEGMENT_PROSPECT);
    cr_assert(b.r == 0 && b.f == 0 && b.m == 0, "a prospect has no scores");
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(store, "browser", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"r\":null,\"f\":null,\"m\":null,\"segment\":\"prospect\"") != NULL,
              "%s", json);
    nbx_free(json);
    cr_assert_neq(scores_of("buyer1").segment, NBX_SEGMENT_PROSPECT);
}

Test(rfm, as_of_moves_recency_and_is_recorded)
{
    for (int i = 1; i <= 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%02d", i);
        put_customer(id, i * 10, 1, 10);
    }
    nbx_rfm_stats a = rebuild(as_of);
    nbx_store_stats ss;
    cr_assert_eq(nbx_store_stat(store, &ss), NBX_OK);
    cr_assert_eq(ss.rfm_as_of, as_of);
    nbx_rfm_stats b = rebuild(as_of + 5 * NBX_MS_PER_DAY);
    for (int k = 0; k < 4; k++)
        cr_assert_float_eq(b.recency_days[k] - a.recency_days[k], 5.0, 1e-9, "cut %d: %g then %g",
                           k, a.recency_days[k], b.recency_days[k]);
    cr_assert_eq(nbx_store_stat(store, &ss), NBX_OK);
    cr_assert_eq(ss.rfm_as_of, as_of + 5 * NBX_MS_PER_DAY);

    /* the meta record: [as_of, r cuts, f cuts, m cuts] */
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_val v;
    cr_assert_eq(nbx_store_meta_get(store, txn, "rfm", &v, NULL), NBX_OK);
    nbx_mp m;
    nbx_mp_init(&m, v.mv_data, v.mv_size);
    cr_assert_eq(nbx_mp_array(&m), 4);
    cr_assert_eq(nbx_mp_int(&m), as_of + 5 * NBX_MS_PER_DAY);
    const double *cuts[3] = {b.recency_days, b.frequency, b.monetary};
    for (int d = 0; d < 3; d++) {
        cr_assert_eq(nbx_mp_array(&m), 4);
        for (int k = 0; k < 4; k++)
            cr_assert_eq(nbx_mp_double(&m), cuts[d][k]);
    }
    cr_assert_not(m.bad);
    mdb_txn_abort(txn);

    /* 0 means now */
    int64_t before = nbx_time_now();
    rebuild(0);
    cr_assert_eq(nbx_store_stat(store, &ss), NBX_OK);
    cr_assert_geq(ss.rfm_as_of, before);
    cr_assert_leq(ss.rfm_as_of, nbx_time_now());
}

/* 25 customers: recency rank a = i / 5, frequency and monetary rank b =
 * i % 5, so r = 5 - a and f = m = b + 1 exactly; the segment must follow
 * the table in docs/data-model.md. */
Test(rfm, segment_map)
{
    static const char *const expected[5][5] = {
        /* r=5 */ {"new", "promising", "potential", "champions", "champions"},
        /* r=4 */ {"promising", "potential", "potential", "loyal", "champions"},
        /* r=3 */ {"needs_attention", "needs_attention", "needs_attention", "loyal", "loyal"},
        /* r=2 */ {"hibernating", "hibernating", "at_risk", "at_risk", "cant_lose"},
        /* r=1 */ {"lost", "lost", "hibernating", "at_risk", "cant_lose"},
    };
    for (int i = 0; i < 25; i++) {
        char id[16];
        snprintf(id, sizeof id, "g%02d", i);
        int a = i / 5, b = i % 5;
        put_customer(id, 10.0 * (a + 1), (uint64_t)(b + 1), 100.0 * (b + 1));
    }
    nbx_rfm_stats st = rebuild(as_of);
    for (int i = 0; i < 25; i++) {
        char id[16];
        snprintf(id, sizeof id, "g%02d", i);
        int a = i / 5, b = i % 5;
        scores s = scores_of(id);
        cr_assert_eq(s.r, 5 - a, "%s r", id);
        cr_assert_eq(s.f, b + 1, "%s f", id);
        cr_assert_eq(s.m, b + 1, "%s m", id);
        cr_assert_str_eq(nbx_segment_name(s.segment), expected[a][b], "%s: r=%d fm=%d", id, s.r,
                         b + 1);
    }
    cr_assert_eq(st.segments[NBX_SEGMENT_CHAMPIONS], 3);
    cr_assert_eq(st.segments[NBX_SEGMENT_CANT_LOSE], 2);

    /* f and m disagree: fm is their mean rounded up. With a sixth 500 the
     * monetary cuts become 200, 300, 400, 500, so 500 scores m = 4. */
    put_customer("mixed", 10, 1, 500);
    st = rebuild(as_of);
    cr_assert_eq(st.monetary[0], 200);
    cr_assert_eq(st.monetary[3], 500);
    scores s = scores_of("mixed");
    cr_assert_eq(s.f, 1);
    cr_assert_eq(s.m, 4);
    cr_assert_str_eq(nbx_segment_name(s.segment), "potential", "r=5 fm=3");
}

Test(rfm, purchases_from_events_are_scored)
{
    const char *ev[] = {
        "{\"event_id\":\"p1\",\"customer\":\"c1\",\"type\":\"purchase\",\"amount\":100,"
        "\"ts\":\"2026-02-27T00:00:00Z\"}",
        "{\"event_id\":\"p2\",\"customer\":\"c1\",\"type\":\"purchase\",\"amount\":50,"
        "\"ts\":\"2026-02-28T00:00:00Z\"}",
        "{\"event_id\":\"p3\",\"customer\":\"c2\",\"type\":\"purchase\",\"amount\":5,"
        "\"ts\":\"2025-06-01T00:00:00Z\"}",
    };
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(nbx_event_apply(store, ev[i], strlen(ev[i]), NULL), NBX_OK);
    nbx_rfm_stats st = rebuild(as_of);
    cr_assert_eq(st.scored, 2);
    scores c1 = scores_of("c1"), c2 = scores_of("c2");
    cr_assert_gt(c1.r, c2.r);
    cr_assert_gt(c1.f, c2.f);
    cr_assert_gt(c1.m, c2.m);
}

/* More profiles than one write batch; a second rebuild with the same as_of
 * rewrites nothing. */
Test(rfm, batches_and_idempotence)
{
    char *path = tu_path(dir, "p.jsonl");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 25000; i++) {
        if (i % 4 == 0)
            fprintf(f, "{\"id\":\"b%05d\"}\n", i);
        else
            fprintf(f,
                    "{\"id\":\"b%05d\",\"rfm\":{\"last_purchase\":%d,\"orders\":%d,"
                    "\"revenue\":%d}}\n",
                    i, 1760000000 + i * 100, 1 + i % 9, 10 + i % 1000);
    }
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_PROFILES, path, NULL, NULL), NBX_OK);
    nbx_rfm_stats st = rebuild(as_of);
    cr_assert_eq(st.customers, 25000);
    cr_assert_eq(st.scored, 25000 - 6250);
    cr_assert_eq(st.segments[NBX_SEGMENT_PROSPECT], 6250);
    cr_assert_eq(st.segments[NBX_SEGMENT_NONE], 0);

    MDB_envinfo before, after;
    cr_assert_eq(mdb_env_info(store->env, &before), 0);
    nbx_rfm_stats again = rebuild(as_of);
    cr_assert_eq(mdb_env_info(store->env, &after), 0);
    cr_assert_eq(memcmp(&st, &again, sizeof st), 0, "a second rebuild gave other results");
    cr_assert_lt(after.me_last_pgno - before.me_last_pgno, 20,
                 "a rebuild that changes nothing rewrote profiles (%zu new pages)",
                 (size_t)(after.me_last_pgno - before.me_last_pgno));
    free(path);
}

Test(rfm, empty_store_and_misuse)
{
    nbx_rfm_stats st;
    memset(&st, 0xff, sizeof st);
    cr_assert_eq(nbx_rfm_rebuild(store, as_of, &st), NBX_OK);
    cr_assert_eq(st.customers, 0);
    cr_assert_eq(st.monetary[3], 0);
    cr_assert_eq(nbx_rfm_rebuild(store, as_of, NULL), NBX_OK);
    cr_assert_eq(nbx_rfm_rebuild(NULL, as_of, &st), NBX_EINVAL);
    /* a reference time nbx cannot write back was recorded as the rebuild's */
    const int64_t bad[] = {INT64_MIN, INT64_C(-62135596800001), INT64_C(253402300800000),
                           INT64_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(nbx_rfm_rebuild(store, bad[i], &st), NBX_EINVAL, "as_of %lld",
                     (long long)bad[i]);
        cr_assert(strstr(nbx_store_errmsg(store), "as_of_ms") != NULL, "%s",
                  nbx_store_errmsg(store));
    }
    nbx_store_stats stats;
    cr_assert_eq(nbx_store_stat(store, &stats), NBX_OK);
    cr_assert_eq(stats.rfm_as_of, as_of, "a refused rebuild was recorded");
    nbx_store *ro;
    cr_assert_eq(nbx_store_open(dir, NBX_STORE_READONLY, &ro), NBX_OK);
    cr_assert_eq(nbx_rfm_rebuild(ro, as_of, &st), NBX_EREADONLY);
    cr_assert(strstr(nbx_store_errmsg(ro), "read-only") != NULL);
    nbx_store_close(ro);
}

Test(rfm, segment_names)
{
    cr_assert_str_eq(nbx_segment_name(NBX_SEGMENT_CHAMPIONS), "champions");
    cr_assert_str_eq(nbx_segment_name(NBX_SEGMENT_NEEDS_ATTENTION), "needs_attention");
    cr_assert_str_eq(nbx_segment_name(NBX_SEGMENT_CANT_LOSE), "cant_lose");
    cr_assert_str_eq(nbx_segment_name(NBX_SEGMENT_PROSPECT), "prospect");
    cr_assert_null(nbx_segment_name(-1));
    cr_assert_null(nbx_segment_name(NBX_SEGMENT_COUNT));
}
