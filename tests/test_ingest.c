/* Suite: ingest (core/ingest.c): nbx_import_file() for profiles and events on
 * real stores: validation before any write, rejects, standard input, batch
 * boundaries, re-runs, equivalence with line-by-line application, and a
 * SIGKILL in the middle of an import. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;
static nbx_store *store;

static void setup(void)
{
    dir = tu_tempdir("ingest");
    cr_assert_not_null(dir);
    char *path = tu_path(dir, "store");
    cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &store), NBX_OK, "%s", nbx_last_errmsg());
    free(path);
}

static void teardown(void)
{
    nbx_store_close(store);
    tu_rmtree(dir);
    free(dir);
}

TestSuite(ingest, .init = setup, .fini = teardown, .timeout = 120);

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

static char *write_tmp(const char *name, const char *content)
{
    char *path = tu_path(dir, name);
    cr_assert_eq(tu_write_file(path, content), 0, "cannot write %s", path);
    return path;
}

static int import(nbx_import_kind kind, const char *path, size_t batch, const char *rejects,
                  nbx_import_stats *st)
{
    nbx_import_options o;
    nbx_import_options_init(&o);
    o.batch_size = batch;
    o.rejects_path = rejects;
    return nbx_import_file(store, kind, path, &o, st);
}

static char *get(const char *id)
{
    char *json = NULL;
    int rc = nbx_profile_get(store, id, &json, NULL);
    cr_assert_eq(rc, NBX_OK, "get %s: %s", id, nbx_store_errmsg(store));
    return json;
}

static nbx_store_stats stat_of(void)
{
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(store, &st), NBX_OK);
    return st;
}

/* A digest of every key and value of the databases dbis[0, n). */
static uint64_t digest_of(nbx_store *s, const MDB_dbi *dbis, size_t n)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), 0);
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) {
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

/* Every database: "the store is unchanged" means this is equal. */
static uint64_t store_digest(nbx_store *s)
{
    MDB_dbi dbis[] = {s->profiles, s->customers, s->budgets, s->meta, s->arms};
    return digest_of(s, dbis, sizeof dbis / sizeof dbis[0]);
}

/* The databases events write (profiles aside). */
static uint64_t events_digest(nbx_store *s)
{
    MDB_dbi dbis[] = {s->customers, s->budgets, s->meta, s->arms};
    return digest_of(s, dbis, sizeof dbis / sizeof dbis[0]);
}

/* Exposure counters of (customer, offer) as the decision path reads them. */
static uint32_t exposure_count(const char *customer, const char *offer, int kind, int64_t now,
                               uint32_t days)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    char key[NBX_COUNTER_KEY_MAX];
    MDB_val k = {nbx_exposure_key(key, nbx_sv_of(customer), nbx_sv_of(offer)), key}, v;
    uint32_t n = 0;
    if (mdb_get(txn, store->customers, &k, &v) == 0) {
        nbx_arena a = {0};
        nbx_exposure x;
        cr_assert_eq(nbx_exposure_decode(v.mv_data, v.mv_size, &x, &a), NBX_OK);
        n = nbx_exposure_count(&x, kind, nbx_day_of(now), days);
        nbx_arena_free(&a);
    }
    mdb_txn_abort(txn);
    return n;
}

static const char *good_profiles =
    "{\"id\":\"c1\",\"attrs\":{\"country\":\"NL\",\"age\":40},\"consent\":{\"email\":true},"
    "\"propensity\":{\"o1\":0.25},\"ltv\":120.5}\n"
    "\n"
    "{\"id\":\"c2\",\"attrs\":{\"country\":\"DE\"},\"churn\":0.4}\n"
    "{\"id\":\"c1\",\"attrs\":{\"age\":41,\"tier\":\"gold\",\"country\":null}}\n";

/* ------------------------------------------------------------------------
 * Good input
 * ------------------------------------------------------------------------ */

Test(ingest, good_profiles_file_merges_in_file_order)
{
    char *path = write_tmp("p.jsonl", good_profiles);
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.lines, 3, "blank lines are not counted: got %llu",
                 (unsigned long long)st.lines);
    cr_assert_eq(st.applied, 3);
    cr_assert_eq(st.rejected, 0);
    cr_assert_eq(stat_of().profiles, 2);
    char *c1 = get("c1");
    cr_assert(strstr(c1, "\"attrs\":{\"age\":41,\"tier\":\"gold\"}") != NULL, "%s", c1);
    cr_assert(strstr(c1, "\"consent\":{\"email\":true}") != NULL, "%s", c1);
    cr_assert(strstr(c1, "\"ltv\":120.5") != NULL, "%s", c1);
    nbx_free(c1);
    char *c2 = get("c2");
    cr_assert(strstr(c2, "\"churn\":0.4") != NULL, "%s", c2);
    nbx_free(c2);
    free(path);
}

Test(ingest, crlf_and_missing_final_newline)
{
    char *path = write_tmp("p.jsonl", "{\"id\":\"a\"}\r\n  \r\n{\"id\":\"b\",\"ltv\":1}");
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.lines, 2);
    cr_assert_eq(stat_of().profiles, 2);
    free(path);
}

Test(ingest, empty_file_is_fine)
{
    char *path = write_tmp("empty.jsonl", "");
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 0, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.lines, 0);
    cr_assert_eq(st.applied, 0);
    free(path);
}

static const char *good_events =
    "{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"impression\",\"offer\":\"o1\","
    "\"ts\":\"2026-03-01T10:00:00Z\",\"placement\":\"hero\"}\n"
    "{\"event_id\":\"e2\",\"customer\":\"c1\",\"type\":\"impression\",\"offer\":\"o1\","
    "\"ts\":\"2026-03-02T10:00:00Z\"}\n"
    "{\"event_id\":\"e3\",\"customer\":\"c1\",\"type\":\"click\",\"offer\":\"o1\","
    "\"ts\":\"2026-03-02T10:00:05Z\"}\n"
    "{\"event_id\":\"e4\",\"customer\":\"c1\",\"type\":\"impression\",\"offer\":\"o2\","
    "\"ts\":\"2026-03-02T11:00:00Z\"}\n"
    "{\"event_id\":\"e5\",\"customer\":\"c2\",\"type\":\"accept\",\"offer\":\"o1\","
    "\"ts\":\"2026-03-02T12:00:00Z\"}\n"
    "{\"event_id\":\"e6\",\"customer\":\"c1\",\"type\":\"purchase\",\"amount\":50,"
    "\"margin\":10,\"ts\":\"2026-03-02T13:00:00Z\"}\n"
    "{\"event_id\":\"e7\",\"customer\":\"c1\",\"type\":\"purchase\",\"amount\":25.5,"
    "\"ts\":\"2026-02-01T13:00:00Z\",\"channel\":\"web\"}\n"
    "{\"event_id\":\"e2\",\"customer\":\"c1\",\"type\":\"impression\",\"offer\":\"o1\","
    "\"ts\":\"2026-03-02T10:00:00Z\"}\n";

Test(ingest, good_events_file_updates_counters_budgets_and_rfm)
{
    char *path = write_tmp("e.jsonl", good_events);
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 0, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.lines, 8);
    cr_assert_eq(st.applied, 7);
    cr_assert_eq(st.duplicates, 1, "e2 twice in one file: expected 1 duplicate, got %llu",
                 (unsigned long long)st.duplicates);
    int64_t now;
    cr_assert_eq(nbx_time_parse("2026-03-02T23:00:00Z", &now), NBX_OK);
    cr_assert_eq(exposure_count("c1", "o1", NBX_EXP_IMPRESSION, now, 1), 1);
    cr_assert_eq(exposure_count("c1", "o1", NBX_EXP_IMPRESSION, now, 2), 2);
    cr_assert_eq(exposure_count("c1", "o1", NBX_EXP_CLICK, now, 30), 1);
    cr_assert_eq(exposure_count("c1", "", NBX_EXP_IMPRESSION, now, 30), 3,
                 "the all-offers row counts every offer");
    cr_assert_eq(exposure_count("c2", "o1", NBX_EXP_ACCEPT, now, 30), 1);
    cr_assert_eq(exposure_count("c2", "o1", NBX_EXP_IMPRESSION, now, 30), 0);

    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    char key[4 + NBX_OFFER_ID_MAX];
    MDB_val k = {nbx_budget_key(key, nbx_day_of(now), NBX_SV("o1")), key}, v;
    cr_assert_eq(mdb_get(txn, store->budgets, &k, &v), 0, "no budget row for o1 on 2026-03-02");
    nbx_mp m;
    nbx_mp_init(&m, v.mv_data, v.mv_size);
    cr_assert_eq(nbx_mp_array(&m), 2);
    cr_assert_eq(nbx_mp_uint(&m), 1, "impressions of o1 on 2026-03-02");
    cr_assert_eq(nbx_mp_uint(&m), 1, "accepts of o1 on 2026-03-02");
    mdb_txn_abort(txn);

    char *c1 = get("c1");
    cr_assert(strstr(c1, "\"first_purchase\":\"2026-02-01T13:00:00Z\","
                         "\"last_purchase\":\"2026-03-02T13:00:00Z\",\"orders\":2,"
                         "\"revenue\":75.5,\"margin\":10") != NULL,
              "%s", c1);
    nbx_free(c1);
    cr_assert_eq(stat_of().events_seen, 7);
    free(path);
}

Test(ingest, rerun_changes_nothing)
{
    char *path = write_tmp("e.jsonl", good_events);
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 2, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    uint64_t before = store_digest(store);
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 3, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 0);
    cr_assert_eq(st.duplicates, 8);
    cr_assert_eq(store_digest(store), before, "a re-run changed the store");

    char *ppath = write_tmp(
        "p.jsonl", "{\"id\":\"p1\",\"attrs\":{\"a\":1},\"updated_at\":\"2026-01-01T00:00:00Z\"}\n");
    cr_assert_eq(import(NBX_IMPORT_PROFILES, ppath, 0, NULL, &st), NBX_OK);
    before = store_digest(store);
    cr_assert_eq(import(NBX_IMPORT_PROFILES, ppath, 0, NULL, &st), NBX_OK);
    cr_assert_eq(store_digest(store), before, "re-importing a profile changed it");
    free(path);
    free(ppath);
}

/* Ids repeated across and within batches of 3: the last line wins, as
 * line-by-line puts would give. */
Test(ingest, batch_boundaries)
{
    char buf[4096] = "";
    for (int i = 0; i < 20; i++) {
        char line[128];
        snprintf(line, sizeof line, "{\"id\":\"k%02d\",\"attrs\":{\"n\":%d,\"first\":%d}}\n", i % 7,
                 i, i < 7 ? i : -1);
        strcat(buf, line);
    }
    char *path = write_tmp("p.jsonl", buf);
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 3, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 20);
    cr_assert_eq(stat_of().profiles, 7);
    for (int id = 0; id < 7; id++) {
        int last = id + 14 < 20 ? id + 14 : id + 7;
        char name[8], expect[64];
        snprintf(name, sizeof name, "k%02d", id);
        snprintf(expect, sizeof expect, "\"attrs\":{\"first\":-1,\"n\":%d}", last);
        char *json = get(name);
        cr_assert(strstr(json, expect) != NULL, "%s: expected %s in %s", name, expect, json);
        nbx_free(json);
    }
    free(path);
}

/* Events of 40 customers, ids reused across customers (distinct events)
 * and lines repeated (duplicates), written to path. Customer ids of one to
 * twelve bytes, some sharing their first 8 (the sort's fast path). A third
 * of them carry the decision id of one of three arms. */
static void write_mixed_events(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    const char *types[] = {"impression", "impression", "click", "accept", "dismiss", "purchase"};
    const char *prefixes[] = {"c", "customer", "customer-"};
    unsigned seed = 7;
    char prev[384] = "";
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        int t = (int)((seed >> 16) % 6), c = (int)((seed >> 8) % 40), o = (int)(seed % 9);
        long ts = 1735689600L + (long)((seed >> 4) % (400 * 86400)); /* 2025-01-01 on */
        char line[384], decision[96] = "";
        if (i % 3 == 0)
            snprintf(decision, sizeof decision,
                     "\"decision_id\":\"01890a5d-ac96-7abc-8def-%012d.q4.arm%d\",", i, c % 3);
        if (t == 5)
            snprintf(line, sizeof line,
                     "{\"event_id\":\"x%d\",%s\"customer\":\"%s%d\",\"type\":\"purchase\","
                     "\"amount\":%d.25,\"margin\":%d.5,\"ts\":%ld}\n",
                     i % 2800, decision, prefixes[c % 3], c, i % 97, i % 13, ts);
        else
            snprintf(line, sizeof line,
                     "{\"event_id\":\"x%d\",%s\"customer\":\"%s%d\",\"type\":\"%s\","
                     "\"offer\":\"o%d\",\"ts\":%ld}\n",
                     i % 2800, decision, prefixes[c % 3], c, types[t], o, ts);
        fputs(line, f);
        if (i % 50 == 7 && prev[0]) /* an earlier line again */
            fputs(prev, f);
        if (i % 10 == 3)
            snprintf(prev, sizeof prev, "%s", line);
    }
    cr_assert_eq(fclose(f), 0);
}

/* The grouped, sorted apply gives byte for byte the event records, counters,
 * budgets and event count that nbx_event_apply() line by line gives, for
 * batches of any size: 500, and 7 (a customer's events then span several
 * transactions). */
Test(ingest, same_result_as_line_by_line)
{
    char *path = tu_path(dir, "many.jsonl");
    write_mixed_events(path, 3000);
    size_t batches[] = {500, 7};
    for (int k = 0; k < 2; k++) {
        nbx_store_close(store);
        char *store_path = tu_path(dir, k ? "store7" : "store500");
        cr_assert_eq(nbx_store_open(store_path, NBX_STORE_CREATE, &store), NBX_OK);
        free(store_path);
        nbx_import_stats st;
        cr_assert_eq(import(NBX_IMPORT_EVENTS, path, batches[k], NULL, &st), NBX_OK, "%s",
                     nbx_store_errmsg(store));

        char *other_path = tu_path(dir, "other");
        nbx_store *other;
        cr_assert_eq(nbx_store_open(other_path, NBX_STORE_CREATE, &other), NBX_OK);
        size_t len;
        char *text = tu_read_file(path, &len);
        uint64_t applied = 0;
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            int ok;
            cr_assert_eq(nbx_event_apply(other, line, strlen(line), &ok), NBX_OK, "%s",
                         nbx_store_errmsg(other));
            applied += ok;
        }
        cr_assert_eq(st.applied, applied);
        cr_assert_eq(st.duplicates, st.lines - applied);
        cr_assert_gt(st.duplicates, 50, "the file repeats lines: %llu duplicates",
                     (unsigned long long)st.duplicates);
        cr_assert_gt(applied, 2800, "ids reused for other customers are other events");

        MDB_txn *ta, *tb;
        cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &ta), 0);
        cr_assert_eq(mdb_txn_begin(other->env, NULL, MDB_RDONLY, &tb), 0);
        MDB_dbi da[] = {store->customers, store->budgets, store->meta, store->arms};
        MDB_dbi db[] = {other->customers, other->budgets, other->meta, other->arms};
        const char *names[] = {"customers", "budgets", "meta", "arms"};
        for (int i = 0; i < 4; i++) {
            MDB_cursor *ca, *cb;
            cr_assert_eq(mdb_cursor_open(ta, da[i], &ca), 0);
            cr_assert_eq(mdb_cursor_open(tb, db[i], &cb), 0);
            MDB_val ka, va, kb, vb;
            int ra = mdb_cursor_get(ca, &ka, &va, MDB_FIRST),
                rb = mdb_cursor_get(cb, &kb, &vb, MDB_FIRST);
            size_t n = 0;
            while (ra == 0 && rb == 0) {
                cr_assert(ka.mv_size == kb.mv_size &&
                              memcmp(ka.mv_data, kb.mv_data, ka.mv_size) == 0,
                          "%s: key %zu differs", names[i], n);
                cr_assert(va.mv_size == vb.mv_size &&
                              memcmp(va.mv_data, vb.mv_data, va.mv_size) == 0,
                          "%s: value of key %zu differs", names[i], n);
                ra = mdb_cursor_get(ca, &ka, &va, MDB_NEXT);
                rb = mdb_cursor_get(cb, &kb, &vb, MDB_NEXT);
                n++;
            }
            cr_assert(ra == MDB_NOTFOUND && rb == MDB_NOTFOUND, "%s: record counts differ",
                      names[i]);
            cr_assert_gt(n, 0, "%s is empty", names[i]);
            mdb_cursor_close(ca);
            mdb_cursor_close(cb);
        }
        /* profiles: equal RFM aggregates (updated_at is the clock) */
        nbx_arena arena = {0};
        const char *prefixes[] = {"c", "customer", "customer-"};
        for (int c = 0; c < 40; c++) {
            char id[16];
            snprintf(id, sizeof id, "%s%d", prefixes[c % 3], c);
            nbx_profile pa = {0}, pb = {0};
            int rca = nbx_store_profile_get(store, ta, nbx_sv_of(id), &pa, &arena, NULL);
            int rcb = nbx_store_profile_get(other, tb, nbx_sv_of(id), &pb, &arena, NULL);
            cr_assert_eq(rca, rcb, "%s: present in one store only", id);
            if (rca)
                continue;
            cr_assert_eq(pa.rfm.orders, pb.rfm.orders, "%s orders", id);
            cr_assert_eq(pa.rfm.revenue, pb.rfm.revenue, "%s revenue", id);
            cr_assert_eq(pa.rfm.first_purchase, pb.rfm.first_purchase, "%s first", id);
            cr_assert_eq(pa.rfm.last_purchase, pb.rfm.last_purchase, "%s last", id);
        }
        nbx_arena_free(&arena);
        mdb_txn_abort(ta);
        mdb_txn_abort(tb);
        nbx_store_close(other);
        tu_rmtree(other_path);
        free(text);
        free(other_path);
    }
    free(path);
}

/* ------------------------------------------------------------------------
 * Bad input: FILE:LINE, the field, and nothing written
 * ------------------------------------------------------------------------ */

typedef struct bad_case {
    nbx_import_kind kind;
    const char *line;
    const char *expect; /* in the message after FILE:LINE */
    int code;
} bad_case;

static const char *ok_event = "{\"event_id\":\"g%d\",\"customer\":\"c%d\",\"type\":\"impression\","
                              "\"offer\":\"o1\",\"ts\":1767225600}\n";
static const char *ok_profile = "{\"id\":\"c%d\",\"attrs\":{\"n\":%d}}\n";

/* A file of good lines with the bad one at line `at` (1-based). */
static char *file_with_bad_line(const bad_case *bc, int lines, int at)
{
    char *path = tu_path(dir, "bad.jsonl");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 1; i <= lines; i++) {
        if (i == at)
            fprintf(f, "%s\n", bc->line);
        else if (bc->kind == NBX_IMPORT_EVENTS)
            fprintf(f, ok_event, i, i);
        else
            fprintf(f, ok_profile, i, i);
    }
    cr_assert_eq(fclose(f), 0);
    return path;
}

static void check_bad(const bad_case *bc, int lines, int at, size_t batch)
{
    uint64_t before = store_digest(store);
    char *path = file_with_bad_line(bc, lines, at);
    nbx_import_stats st;
    int rc = import(bc->kind, path, batch, NULL, &st);
    cr_assert_eq(rc, bc->code, "%s: expected %s, got %d (%s)", bc->line, nbx_strerror(bc->code), rc,
                 nbx_store_errmsg(store));
    char where[4200];
    snprintf(where, sizeof where, "%s:%d: ", path, at);
    const char *msg = nbx_store_errmsg(store);
    cr_assert(strncmp(msg, where, strlen(where)) == 0,
              "expected the message to start with '%s', got '%s'", where, msg);
    cr_assert(strstr(msg, bc->expect) != NULL, "expected '%s' in '%s'", bc->expect, msg);
    cr_assert_eq(st.applied, 0);
    cr_assert_eq(store_digest(store), before, "%s: the store changed", bc->line);
    free(path);
}

static const bad_case bad_cases[] = {
    {NBX_IMPORT_PROFILES, "{\"id\":\"c\",\"attrs\":{\"a\":1}", "column", NBX_EPARSE},
    {NBX_IMPORT_PROFILES, "{\"id\":7}", "field 'id': must be a string", NBX_EPARSE},
    {NBX_IMPORT_PROFILES, "{\"attrs\":{\"a\":1}}", "field 'id': is required", NBX_EPARSE},
    {NBX_IMPORT_PROFILES, "{\"id\":\"c\",\"propensity\":{\"o1\":1.2}}",
     "field 'propensity.o1': 1.2 is outside [0, 1]", NBX_EPARSE},
    {NBX_IMPORT_PROFILES, "{\"id\":\"c\",\"ltv\":\"high\"}", "field 'ltv': must be a number",
     NBX_EPARSE},
    {NBX_IMPORT_EVENTS, "{\"event_id\":\"x\",\"customer\":\"c\",\"type\":\"view\",\"ts\":1}",
     "field 'type': unknown event type 'view'", NBX_EPARSE},
    {NBX_IMPORT_EVENTS, "{\"event_id\":\"x\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
     "field 'customer': is required", NBX_EPARSE},
    {NBX_IMPORT_EVENTS, "{\"event_id\":\"x\",\"customer\":\"c\",\"type\":\"purchase\",\"ts\":1}",
     "field 'amount': is required", NBX_EPARSE},
    {NBX_IMPORT_EVENTS,
     "{\"event_id\":\"x\",\"customer\":\"c\",\"type\":\"click\",\"offer\":\"o\","
     "\"ts\":\"yesterday\"}",
     "field 'ts'", NBX_EPARSE},
    {NBX_IMPORT_EVENTS, "[1,2]", "must be a JSON object", NBX_EPARSE},
};

Test(ingest, each_bad_input_names_file_line_field_and_writes_nothing)
{
    /* something already in the store, which must stay as it is */
    char *seed = write_tmp("seed.jsonl", good_profiles);
    cr_assert_eq(import(NBX_IMPORT_PROFILES, seed, 0, NULL, NULL), NBX_OK);
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        check_bad(&bad_cases[i], 5, 3, 0);
        check_bad(&bad_cases[i], 40, 40, 4); /* after many batches' worth of good lines */
        check_bad(&bad_cases[i], 3, 1, 0);
    }
    free(seed);
}

Test(ingest, id_too_long)
{
    char line[1024], id[300];
    memset(id, 'x', 257);
    id[257] = '\0';
    snprintf(line, sizeof line, "{\"id\":\"%s\"}", id);
    bad_case p = {NBX_IMPORT_PROFILES, line, "field 'id': 257 bytes, the limit is 256", NBX_EPARSE};
    check_bad(&p, 4, 2, 0);
    snprintf(line, sizeof line,
             "{\"event_id\":\"e\",\"customer\":\"%s\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}",
             id);
    bad_case e = {NBX_IMPORT_EVENTS, line, "field 'customer': must be 1 to 256 bytes", NBX_EPARSE};
    check_bad(&e, 4, 4, 0);
}

/* A line over NBX_LINE_MAX: one that fits a read chunk, and one longer than
 * a chunk (skipped without being held in memory). Lines after it keep their
 * numbers. */
Test(ingest, line_over_the_limit)
{
    size_t sizes[] = {NBX_LINE_MAX + 10, (size_t)9 << 20};
    for (int i = 0; i < 2; i++) {
        char *path = tu_path(dir, "long.jsonl");
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        fprintf(f, ok_profile, 1, 1);
        fputs("{\"id\":\"big\",\"attrs\":{\"s\":\"", f);
        for (size_t n = 0; n < sizes[i]; n++)
            fputc('a', f);
        fputs("\"}}\n", f);
        fprintf(f, ok_profile, 3, 3);
        fputs("{\"id\":3}\n", f);
        cr_assert_eq(fclose(f), 0);

        uint64_t before = store_digest(store);
        int rc = import(NBX_IMPORT_PROFILES, path, 0, NULL, NULL);
        cr_assert_eq(rc, NBX_ELIMIT, "got %d: %s", rc, nbx_store_errmsg(store));
        char where[4200];
        snprintf(where, sizeof where, "%s:2: line is ", path);
        cr_assert(strstr(nbx_store_errmsg(store), where) != NULL, "%s", nbx_store_errmsg(store));
        cr_assert(strstr(nbx_store_errmsg(store), "NBX_LINE_MAX") != NULL);
        cr_assert_eq(store_digest(store), before);

        /* with rejects: the long line and line 4 rejected, 1 and 3 applied */
        char *rejects = tu_path(dir, "rejects.jsonl");
        nbx_import_stats st;
        cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, rejects, &st), NBX_OK, "%s",
                     nbx_store_errmsg(store));
        cr_assert_eq(st.rejected, 2);
        cr_assert_eq(st.applied, 2);
        json_error_t je;
        json_t *first = json_load_file(rejects, JSON_DISABLE_EOF_CHECK, &je);
        cr_assert_not_null(first, "rejects file is not JSON: %s", je.text);
        cr_assert_eq(json_integer_value(json_object_get(first, "line")), 2);
        cr_assert(json_is_true(json_object_get(first, "truncated")));
        cr_assert_leq(strlen(json_string_value(json_object_get(first, "input"))), 1024);
        json_decref(first);
        free(rejects);
        free(path);
    }
}

/* ------------------------------------------------------------------------
 * Rejects
 * ------------------------------------------------------------------------ */

Test(ingest, rejects_file_gets_bad_lines_and_the_rest_is_applied)
{
    char *path = write_tmp("mixed.jsonl", "{\"id\":\"a\"}\n"
                                          "{\"id\":\"b\",\"propensity\":{\"o\":2}}\n"
                                          "not json\n"
                                          "\n"
                                          "{\"id\":\"c\",\"churn\":0.5}\n"
                                          "{\"id\":\"d\",\"nickname\":\"x\\u00e9\"}\n");
    char *rejects = tu_path(dir, "rejects.jsonl");
    cr_assert_eq(tu_write_file(rejects, "stale content\n"), 0);
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, rejects, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.lines, 5);
    cr_assert_eq(st.applied, 2);
    cr_assert_eq(st.rejected, 3);
    cr_assert_eq(stat_of().profiles, 2);

    size_t len;
    char *text = tu_read_file(rejects, &len);
    cr_assert_not_null(text);
    int expect_lines[] = {2, 3, 6};
    const char *expect_error[] = {"field 'propensity.o': 2 is outside [0, 1]",
                                  "must be a JSON object", "field 'nickname': unknown field"};
    const char *expect_input[] = {"{\"id\":\"b\",\"propensity\":{\"o\":2}}", "not json",
                                  "{\"id\":\"d\",\"nickname\":\"x\\u00e9\"}"};
    int n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), n++) {
        cr_assert_lt(n, 3, "more than 3 rejects: %s", line);
        json_error_t je;
        json_t *r = json_loads(line, 0, &je);
        cr_assert_not_null(r, "reject %d is not JSON: %s", n, line);
        cr_assert_eq(json_integer_value(json_object_get(r, "line")), expect_lines[n], "%s", line);
        cr_assert(strstr(json_string_value(json_object_get(r, "error")), expect_error[n]) != NULL,
                  "%s", line);
        cr_assert_str_eq(json_string_value(json_object_get(r, "input")), expect_input[n]);
        cr_assert_null(json_object_get(r, "truncated"));
        json_decref(r);
    }
    cr_assert_eq(n, 3);
    free(text);
    free(rejects);
    free(path);
}

Test(ingest, rejects_file_that_cannot_be_created)
{
    char *path = write_tmp("p.jsonl", good_profiles);
    int rc = import(NBX_IMPORT_PROFILES, path, 0, "/nonexistent-dir/rejects.jsonl", NULL);
    cr_assert_eq(rc, NBX_ENOTFOUND, "got %d", rc);
    cr_assert(strstr(nbx_store_errmsg(store), "/nonexistent-dir/rejects.jsonl") != NULL);
    cr_assert_eq(stat_of().profiles, 0);
    free(path);
}

Test(ingest, rejects_file_that_is_the_input_or_the_store_is_refused)
{
    const char *text = "{\"id\":\"a\"}\n{\"id\":\"b\",\"ltv\":\"x\"}\n";
    char *path = write_tmp("p.jsonl", text);
    char *link = tu_path(dir, "link.jsonl");
    cr_assert_eq(symlink(path, link), 0);
    char *data = tu_path(dir, "store/data.mdb");
    char *lock = tu_path(dir, "store/lock.mdb");
    uint64_t before = store_digest(store);
    const char *const rejects[] = {path, link, data, lock};
    const char *const expect[] = {"is the input", "is the input", "data.mdb", "lock.mdb"};
    for (size_t i = 0; i < 4; i++) {
        for (int kind = NBX_IMPORT_PROFILES; kind <= NBX_IMPORT_EVENTS; kind++) {
            nbx_import_stats st;
            int rc = import((nbx_import_kind)kind, path, 0, rejects[i], &st);
            cr_assert_eq(rc, NBX_EINVAL, "rejects %s: expected NBX_EINVAL, got %d (%s)", rejects[i],
                         rc, nbx_store_errmsg(store));
            cr_assert(strstr(nbx_store_errmsg(store), expect[i]) != NULL, "message: %s",
                      nbx_store_errmsg(store));
        }
    }
    char *after = tu_read_file(path, NULL);
    cr_assert_str_eq(after, text, "the input was changed");
    cr_assert_eq(store_digest(store), before, "the store was changed");
    nbx_store_stats st = stat_of();
    cr_assert_eq(st.profiles, 0);
    free(after);
    free(lock);
    free(data);
    free(link);
    free(path);
}

typedef struct progress_log {
    uint64_t lines[64], bytes[64];
    size_t n;
} progress_log;

static void log_progress(void *ud, uint64_t lines, uint64_t bytes, uint64_t total)
{
    progress_log *log = ud;
    (void)total;
    if (log->n < 64) {
        log->lines[log->n] = lines;
        log->bytes[log->n] = bytes;
        log->n++;
    }
}

/* Both passes count from zero to the end of the file: each opens with a
 * call of 0 lines and 0 bytes, so a display can say which pass it shows. */
Test(ingest, progress_opens_each_pass_with_a_call_of_zero_lines)
{
    const int count = 230000;
    char *path = tu_path(dir, "many.jsonl");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < count; i++)
        fprintf(f, "{\"id\":\"c%07d\"}\n", i);
    cr_assert_eq(fclose(f), 0);
    progress_log log = {0};
    nbx_import_options o;
    nbx_import_options_init(&o);
    o.progress = log_progress;
    o.progress_ud = &log;
    nbx_import_stats st;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_PROFILES, path, &o, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, (uint64_t)count);
    size_t starts[2], n_starts = 0;
    for (size_t i = 0; i < log.n; i++)
        if (log.lines[i] == 0) {
            cr_assert_eq(log.bytes[i], 0, "a call of 0 lines with %llu bytes",
                         (unsigned long long)log.bytes[i]);
            cr_assert_lt(n_starts, 2, "more than two passes began");
            starts[n_starts++] = i;
        }
    cr_assert_eq(n_starts, 2, "expected 2 calls of 0 lines (one per pass), got %zu", n_starts);
    cr_assert_eq(starts[0], 0, "the first call does not open the validation pass");
    cr_assert_gt(starts[1], 1, "no progress during validation");
    cr_assert_gt(log.n, starts[1] + 1, "no progress while applying");
    for (size_t i = 1; i < log.n; i++)
        if (i != starts[1])
            cr_assert_gt(log.lines[i], log.lines[i - 1],
                         "lines went back within a pass: %llu, %llu",
                         (unsigned long long)log.lines[i - 1], (unsigned long long)log.lines[i]);
    free(path);
}

/* ------------------------------------------------------------------------
 * Standard input
 * ------------------------------------------------------------------------ */

static int with_stdin(const char *file, nbx_import_kind kind, nbx_import_stats *st)
{
    int saved = dup(STDIN_FILENO);
    int fd = open(file, O_RDONLY);
    cr_assert(saved >= 0 && fd >= 0);
    cr_assert_eq(dup2(fd, STDIN_FILENO), STDIN_FILENO);
    close(fd);
    int rc = import(kind, "-", 0, NULL, st);
    cr_assert_eq(dup2(saved, STDIN_FILENO), STDIN_FILENO);
    close(saved);
    return rc;
}

Test(ingest, stdin_is_read_once_and_spooled)
{
    char *path = write_tmp("e.jsonl", good_events);
    nbx_import_stats st;
    cr_assert_eq(with_stdin(path, NBX_IMPORT_EVENTS, &st), NBX_OK, "%s", nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 7);
    cr_assert_eq(stat_of().events_seen, 7);
    free(path);

    /* through a pipe, which cannot seek */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(fds[0]);
        for (int i = 0; i < 20000; i++) {
            char line[128];
            int n = snprintf(line, sizeof line, ok_profile, i, i);
            if (write(fds[1], line, (size_t)n) != n)
                _exit(1);
        }
        _exit(0);
    }
    close(fds[1]);
    int saved = dup(STDIN_FILENO);
    cr_assert_eq(dup2(fds[0], STDIN_FILENO), STDIN_FILENO);
    close(fds[0]);
    int rc = import(NBX_IMPORT_PROFILES, "-", 0, NULL, &st);
    dup2(saved, STDIN_FILENO);
    close(saved);
    waitpid(pid, NULL, 0);
    cr_assert_eq(rc, NBX_OK, "%s", nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 20000);
    cr_assert_eq(stat_of().profiles, 20000);
}

Test(ingest, stdin_errors_name_stdin)
{
    bad_case bc = {NBX_IMPORT_PROFILES, "{\"id\":\"c\",\"churn\":3}", "field 'churn'", NBX_EPARSE};
    char *path = file_with_bad_line(&bc, 3, 2);
    uint64_t before = store_digest(store);
    nbx_import_stats st;
    cr_assert_eq(with_stdin(path, NBX_IMPORT_PROFILES, &st), NBX_EPARSE);
    cr_assert(strncmp(nbx_store_errmsg(store), "<stdin>:2: field 'churn'", 24) == 0, "%s",
              nbx_store_errmsg(store));
    cr_assert_eq(store_digest(store), before);
    free(path);
}

/* ------------------------------------------------------------------------
 * Progress, misuse
 * ------------------------------------------------------------------------ */

/* calls[0]: calls opening a pass (0 lines, 0 bytes); calls[1]: the others */
static void count_progress(void *ud, uint64_t lines, uint64_t bytes, uint64_t total)
{
    uint64_t *calls = ud;
    cr_assert_leq(bytes, total);
    if (lines == 0)
        cr_assert_eq(bytes, 0, "a call of 0 lines with %llu bytes", (unsigned long long)bytes);
    calls[lines == 0 ? 0 : 1]++;
}

Test(ingest, progress_is_reported)
{
    char *path = tu_path(dir, "many.jsonl");
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 250000; i++)
        fprintf(f, ok_event, i, i % 1000);
    cr_assert_eq(fclose(f), 0);
    nbx_import_options o;
    nbx_import_options_init(&o);
    uint64_t calls[2] = {0, 0};
    o.progress = count_progress;
    o.progress_ud = calls;
    o.batch_size = 50000;
    nbx_import_stats st;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, path, &o, &st), NBX_OK);
    cr_assert_eq(st.applied, 250000);
    /* one opening each pass; 2 in validation (100k, 200k) and 2 while applying */
    cr_assert_eq(calls[0], 2, "%llu calls of 0 lines", (unsigned long long)calls[0]);
    cr_assert_geq(calls[1], 4, "progress called %llu times", (unsigned long long)calls[1]);
    cr_assert_leq(calls[1], 6, "progress called %llu times", (unsigned long long)calls[1]);
    free(path);
}

Test(ingest, misuse)
{
    nbx_import_options o;
    nbx_import_options_init(NULL);
    nbx_import_options_init(&o);
    cr_assert_eq(o.size, sizeof o);
    cr_assert_eq(o.batch_size, 0, "0: the kind's default");
    cr_assert_null(o.rejects_path);
    char *path = write_tmp("p.jsonl", good_profiles);
    nbx_import_stats st = {.lines = 99};
    cr_assert_eq(nbx_import_file(NULL, NBX_IMPORT_PROFILES, path, NULL, &st), NBX_EINVAL);
    cr_assert_eq(st.lines, 0, "stats are cleared on failure");
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_PROFILES, NULL, NULL, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_import_file(store, (nbx_import_kind)7, path, NULL, NULL), NBX_EINVAL);
    o.size = 0;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_PROFILES, path, &o, NULL), NBX_EINVAL);
    cr_assert(strstr(nbx_store_errmsg(store), "nbx_import_options_init") != NULL);
    nbx_import_options_init(&o);
    o.batch_size = 100000000;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_PROFILES, path, &o, NULL), NBX_EINVAL);
    /* defaults with NULL options */
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_PROFILES, path, NULL, NULL), NBX_OK);

    char *missing = tu_path(dir, "missing.jsonl");
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, missing, NULL, NULL), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_store_errmsg(store), missing) != NULL, "%s", nbx_store_errmsg(store));
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, dir, NULL, NULL), NBX_EIO);
    free(missing);

    nbx_store *ro;
    cr_assert_eq(nbx_store_open(store->path, NBX_STORE_READONLY, &ro), NBX_OK);
    cr_assert_eq(nbx_import_file(ro, NBX_IMPORT_PROFILES, path, NULL, NULL), NBX_EREADONLY);
    nbx_store_close(ro);
    free(path);
}

/* ------------------------------------------------------------------------
 * A SIGKILL while batches are being applied
 * ------------------------------------------------------------------------ */

/* Import path with the given batch size in a child process and SIGKILL it
 * once the store holds at least `least` profiles (or events); the store is
 * closed meanwhile and reopened after. */
static void kill_an_import(nbx_import_kind kind, const char *path, size_t batch, uint64_t least)
{
    const char *what = kind == NBX_IMPORT_PROFILES ? "profiles" : "events";
    char *store_path = strdup(store->path);
    nbx_store_close(store);
    store = NULL;
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        nbx_store *s;
        if (nbx_store_open(store_path, 0, &s) != NBX_OK)
            _exit(2);
        nbx_import_options o;
        nbx_import_options_init(&o);
        o.batch_size = batch;
        _exit(nbx_import_file(s, kind, path, &o, NULL) == NBX_OK ? 0 : 1);
    }
    /* wait until some batches are committed, then kill */
    nbx_store *watch;
    cr_assert_eq(nbx_store_open(store_path, NBX_STORE_READONLY, &watch), NBX_OK);
    uint64_t seen = 0;
    for (int i = 0; i < 600000 && seen < least; i++) {
        nbx_store_stats st;
        cr_assert_eq(nbx_store_stat(watch, &st), NBX_OK);
        seen = kind == NBX_IMPORT_PROFILES ? st.profiles : st.events_seen;
        if (seen < least)
            usleep(100);
    }
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    nbx_store_close(watch);
    cr_assert(WIFSIGNALED(status), "the import finished before it was killed (%llu %s)",
              (unsigned long long)seen, what);
    cr_assert_eq(nbx_store_open(store_path, 0, &store), NBX_OK, "%s", nbx_last_errmsg());
    free(store_path);
}

Test(ingest, sigkill_keeps_whole_batches_and_a_rerun_completes, .timeout = 300)
{
    enum { LINES = 300000, BATCH = 1000 };
    char *path = tu_path(dir, "big.jsonl");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < LINES; i++)
        fprintf(f,
                "{\"id\":\"k%07d\",\"attrs\":{\"n\":%d,\"s\":\"some text\"},"
                "\"propensity\":{\"o1\":0.5,\"o2\":0.25}}\n",
                i, i);
    cr_assert_eq(fclose(f), 0);
    kill_an_import(NBX_IMPORT_PROFILES, path, BATCH, 5 * BATCH);

    nbx_store_stats after = stat_of();
    cr_assert_geq(after.profiles, 5 * BATCH);
    cr_assert_lt(after.profiles, LINES, "the import was not interrupted");
    cr_assert_eq(after.profiles % BATCH, 0, "a half batch is in the store: %llu profiles",
                 (unsigned long long)after.profiles);
    char *last = NULL;
    char id[16];
    snprintf(id, sizeof id, "k%07llu", (unsigned long long)after.profiles - 1);
    cr_assert_eq(nbx_profile_get(store, id, &last, NULL), NBX_OK, "%s missing", id);
    nbx_free(last);

    nbx_import_stats ist;
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, BATCH, NULL, &ist), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(stat_of().profiles, LINES);
    free(path);
}

/* ------------------------------------------------------------------------
 * Events: per-customer deduplication, consistency after a SIGKILL,
 * transactions too big for the map
 * ------------------------------------------------------------------------ */

Test(ingest, an_event_id_is_a_duplicate_only_for_its_customer)
{
    char *path = write_tmp(
        "e.jsonl",
        "{\"event_id\":\"e1\",\"customer\":\"a\",\"type\":\"click\",\"offer\":\"o\",\"ts\":1}\n"
        "{\"event_id\":\"e1\",\"customer\":\"b\",\"type\":\"purchase\",\"amount\":2,\"ts\":1}\n"
        "{\"event_id\":\"e1\",\"customer\":\"a\",\"type\":\"purchase\",\"amount\":9,\"ts\":1}\n"
        "{\"event_id\":\"e1\",\"customer\":\"b\",\"type\":\"purchase\",\"amount\":3,\"ts\":1}\n");
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 0, NULL, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 2, "e1 of a and e1 of b: got %llu", (unsigned long long)st.applied);
    cr_assert_eq(st.duplicates, 2);
    cr_assert_eq(stat_of().events_seen, 2);
    char *b = get("b");
    cr_assert(strstr(b, "\"orders\":1,\"revenue\":2,") != NULL, "the first e1 of b wins: %s", b);
    nbx_free(b);
    char *none = NULL;
    cr_assert_eq(nbx_profile_get(store, "a", &none, NULL), NBX_ENOTFOUND,
                 "a's second e1 (a purchase) was applied");
    free(path);
}

/* Exposure events only (profiles would carry the wall clock): nu customers,
 * offers o0..o4, all within a year (no bucket is pruned). */
static void write_exposures(const char *path, int n, int customers, const char *prefix)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    const char *types[] = {"impression", "click", "accept", "dismiss", "impression"};
    for (int i = 0; i < n; i++) {
        unsigned h = (unsigned)i * 2654435761u;
        fprintf(f,
                "{\"event_id\":\"%s%d\",\"customer\":\"u%06u\",\"type\":\"%s\","
                "\"offer\":\"o%u\",\"ts\":%u}\n",
                prefix, i, (h >> 8) % (unsigned)customers, types[(h >> 3) % 5], h % 5,
                1767225600u + (h >> 12) % (200 * 86400));
    }
    cr_assert_eq(fclose(f), 0);
}

/* Every event applied whole: for each customer, its records and its
 * counters agree (per offer and in the all-offers row), the budgets count
 * the impressions and accepts recorded, and events_seen the records. */
static void check_consistent(nbx_store *s)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_cursor *c;
    cr_assert_eq(mdb_cursor_open(txn, s->customers, &c), 0);
    MDB_val k, v;
    uint64_t records = 0, budgeted = 0;
    uint64_t recorded[8][NBX_EXP_KINDS]; /* per offer (o0..o4, and all in [7]) */
    char customer[NBX_ID_MAX + 1] = "";
    nbx_arena a = {0};
    int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    while (rc == 0) {
        /* one customer: counters first (\x01), then records (\x02) */
        size_t clen = strlen((const char *)k.mv_data);
        memcpy(customer, k.mv_data, clen);
        customer[clen] = '\0';
        uint64_t counted[8][NBX_EXP_KINDS];
        memset(counted, 0, sizeof counted);
        memset(recorded, 0, sizeof recorded);
        for (; rc == 0 && k.mv_size > clen && memcmp(k.mv_data, customer, clen + 1) == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            const char *tail = (const char *)k.mv_data + clen + 1;
            size_t tlen = k.mv_size - clen - 1;
            if (tail[0] == NBX_TAG_COUNTERS) {
                int o = tlen == 1 ? 7 : tail[2] - '0';
                nbx_exposure x;
                nbx_arena_reset(&a);
                cr_assert_eq(nbx_exposure_decode(v.mv_data, v.mv_size, &x, &a), NBX_OK);
                for (uint32_t d = 0; d < x.n_days; d++)
                    for (int kind = 0; kind < NBX_EXP_KINDS; kind++)
                        counted[o][kind] += x.days[d].n[kind];
            } else {
                cr_assert_eq(tail[0], NBX_TAG_EVENT);
                nbx_mp m;
                nbx_mp_init(&m, v.mv_data, v.mv_size);
                cr_assert_eq(nbx_mp_array(&m), 6);
                nbx_mp_skip(&m);
                int kind = nbx_event_exposure_kind((int)nbx_mp_uint(&m));
                nbx_sv offer = nbx_mp_str(&m);
                cr_assert_not(m.bad);
                recorded[offer.ptr[1] - '0'][kind]++;
                recorded[7][kind]++;
                budgeted += kind == NBX_EXP_IMPRESSION || kind == NBX_EXP_ACCEPT;
                records++;
            }
        }
        cr_assert(memcmp(counted, recorded, sizeof counted) == 0,
                  "%s: counters and event records disagree: a half-applied event", customer);
    }
    mdb_cursor_close(c);
    uint64_t budgets = 0;
    cr_assert_eq(mdb_cursor_open(txn, s->budgets, &c), 0);
    while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        nbx_mp m;
        nbx_mp_init(&m, v.mv_data, v.mv_size);
        cr_assert_eq(nbx_mp_array(&m), 2);
        budgets += nbx_mp_uint(&m);
        budgets += nbx_mp_uint(&m);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    nbx_arena_free(&a);
    cr_assert_eq(budgets, budgeted, "budgets count %llu, records %llu", (unsigned long long)budgets,
                 (unsigned long long)budgeted);
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.events_seen, records, "events_seen %llu, records %llu",
                 (unsigned long long)st.events_seen, (unsigned long long)records);
}

/* A SIGKILL in the middle of an event ingest keeps whole transactions (each
 * a batch of whole events: no event half-applied), and running the file
 * again completes it: the store is then the one an uninterrupted ingest
 * gives. The killed ingest and the re-run merge a run per 4 MiB chunk of
 * the file (NBX_IMPORT_RUN_BYTES), the uninterrupted one a single run. */
Test(ingest, sigkill_during_events_leaves_whole_events_and_a_rerun_completes, .timeout = 300)
{
    enum { LINES = 300000, BATCH = 1000 };
    char *path = tu_path(dir, "events.jsonl");
    write_exposures(path, LINES, 20000, "k");
    setenv("NBX_IMPORT_RUN_BYTES", "1", 1);
    kill_an_import(NBX_IMPORT_EVENTS, path, BATCH, 5 * BATCH);

    nbx_store_stats after = stat_of();
    cr_assert_geq(after.events_seen, 5 * BATCH);
    cr_assert_lt(after.events_seen, LINES, "the ingest was not interrupted");
    cr_assert_eq(after.events_seen % BATCH, 0, "a part of a batch is in the store: %llu events",
                 (unsigned long long)after.events_seen);
    check_consistent(store);

    nbx_import_stats ist;
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, BATCH, NULL, &ist), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(ist.applied + ist.duplicates, LINES);
    cr_assert_eq(ist.duplicates, after.events_seen);
    check_consistent(store);

    unsetenv("NBX_IMPORT_RUN_BYTES");
    char *whole_path = tu_path(dir, "whole");
    nbx_store *whole;
    cr_assert_eq(nbx_store_open(whole_path, NBX_STORE_CREATE, &whole), NBX_OK);
    cr_assert_eq(nbx_import_file(whole, NBX_IMPORT_EVENTS, path, NULL, NULL), NBX_OK);
    cr_assert_eq(events_digest(store), events_digest(whole),
                 "killed and re-run differs from an uninterrupted ingest");
    nbx_store_close(whole);
    free(whole_path);
    free(path);
}

static nbx_store *open_with_map(const char *name, const char *map_size)
{
    char *path = tu_path(dir, name);
    setenv("NBX_MAP_SIZE", map_size, 1);
    nbx_store *s;
    cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &s), NBX_OK, "%s", nbx_last_errmsg());
    unsetenv("NBX_MAP_SIZE");
    free(path);
    return s;
}

static size_t last_txn(nbx_store *s)
{
    MDB_envinfo info;
    cr_assert_eq(mdb_env_info(s->env, &info), 0);
    return info.me_last_txnid;
}

static int import_kind_into(nbx_store *s, nbx_import_kind kind, const char *path, size_t batch,
                            nbx_import_stats *st)
{
    nbx_import_options o;
    nbx_import_options_init(&o);
    o.batch_size = batch;
    return nbx_import_file(s, kind, path, &o, st);
}

static int import_into(nbx_store *s, const char *path, size_t batch, nbx_import_stats *st)
{
    return import_kind_into(s, NBX_IMPORT_EVENTS, path, batch, st);
}

/* A batch whose transaction needs more pages than the map has free (its
 * new pages while the old ones are still in use) is written as smaller
 * transactions of whole customers: the import succeeds, and the store is
 * the one a roomy map gives. The same path takes a transaction over LMDB's
 * dirty-page limit (MDB_TXN_FULL). */
Test(ingest, a_transaction_too_big_for_the_map_is_split)
{
    char *first = tu_path(dir, "first.jsonl"), *second = tu_path(dir, "second.jsonl");
    write_exposures(first, 20000, 2000, "a");
    write_exposures(second, 20000, 2000, "b");
    nbx_store *tight = open_with_map("tight", "4M");
    nbx_import_stats st;
    cr_assert_eq(import_into(tight, first, 1000, &st), NBX_OK, "%s", nbx_store_errmsg(tight));
    size_t before = last_txn(tight);
    cr_assert_eq(import_into(tight, second, 1000000, &st), NBX_OK, "%s", nbx_store_errmsg(tight));
    cr_assert_eq(st.applied, 20000);
    cr_assert_gt(last_txn(tight) - before, 1, "one batch, one transaction: nothing was split");
    check_consistent(tight);

    nbx_store *roomy = open_with_map("roomy", "64M");
    cr_assert_eq(import_into(roomy, first, 1000, NULL), NBX_OK);
    before = last_txn(roomy);
    cr_assert_eq(import_into(roomy, second, 1000000, NULL), NBX_OK);
    cr_assert_eq(last_txn(roomy) - before, 1, "a roomy map takes the batch in one transaction");
    cr_assert_eq(events_digest(tight), events_digest(roomy));
    nbx_store_close(tight);
    nbx_store_close(roomy);
    free(first);
    free(second);
}

/* n profiles c000000.. with a 200-byte attribute; updated_at given, so two
 * stores importing the file hold the same bytes. */
static void write_profiles(const char *path, int n, const char *tier)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < n; i++)
        fprintf(f,
                "{\"id\":\"c%06d\",\"attrs\":{\"tier\":\"%s\",\"note\":\"%0200d\"},"
                "\"updated_at\":\"2026-03-01T00:00:00Z\"}\n",
                i, tier, i);
    cr_assert_eq(fclose(f), 0);
}

/* Profiles take the same path as events: a batch of updates whose
 * transaction needs more pages than the map has free (the old copies stay
 * in use until it commits) is written as smaller transactions of whole ids.
 * It failed, and running the file again failed the same way. */
Test(ingest, a_profile_transaction_too_big_for_the_map_is_split)
{
    char *first = tu_path(dir, "first.jsonl"), *second = tu_path(dir, "second.jsonl");
    write_profiles(first, 6000, "a");
    write_profiles(second, 6000, "b");
    nbx_store *tight = open_with_map("tight", "3M");
    nbx_import_stats st;
    cr_assert_eq(import_kind_into(tight, NBX_IMPORT_PROFILES, first, 500, &st), NBX_OK, "%s",
                 nbx_store_errmsg(tight));
    size_t before = last_txn(tight);
    cr_assert_eq(import_kind_into(tight, NBX_IMPORT_PROFILES, second, 1000000, &st), NBX_OK, "%s",
                 nbx_store_errmsg(tight));
    cr_assert_eq(st.applied, 6000);
    cr_assert_gt(last_txn(tight) - before, 1, "one batch, one transaction: nothing was split");

    nbx_store *roomy = open_with_map("roomy", "64M");
    cr_assert_eq(import_kind_into(roomy, NBX_IMPORT_PROFILES, first, 500, NULL), NBX_OK);
    before = last_txn(roomy);
    cr_assert_eq(import_kind_into(roomy, NBX_IMPORT_PROFILES, second, 1000000, NULL), NBX_OK);
    cr_assert_eq(last_txn(roomy) - before, 1, "a roomy map takes the batch in one transaction");
    cr_assert_eq(store_digest(tight), store_digest(roomy));
    nbx_store_close(tight);
    nbx_store_close(roomy);
    free(first);
    free(second);
}

/* A store that is really full: the import fails with NBX_EFULL naming a
 * line, keeps whole events only, and completes when run again with room. */
Test(ingest, a_full_map_fails_with_whole_events_and_a_rerun_completes)
{
    char *path = tu_path(dir, "first.jsonl");
    write_exposures(path, 20000, 2000, "a");
    nbx_store *full = open_with_map("full", "2M");
    nbx_import_stats st;
    int rc = import_into(full, path, 1000, &st);
    cr_assert_eq(rc, NBX_EFULL, "got %d: %s", rc, nbx_store_errmsg(full));
    const char *msg = nbx_store_errmsg(full);
    cr_assert(strncmp(msg, path, strlen(path)) == 0 && msg[strlen(path)] == ':',
              "the message does not name FILE:LINE: %s", msg);
    cr_assert(strstr(msg, "NBX_MAP_SIZE") != NULL, "%s", msg);
    cr_assert(strstr(msg, "running the file again completes it") != NULL, "%s", msg);
    cr_assert_gt(st.applied, 0);
    cr_assert_lt(st.applied, 20000);
    check_consistent(full);
    char *full_path = strdup(full->path);
    nbx_store_close(full);

    setenv("NBX_MAP_SIZE", "64M", 1);
    cr_assert_eq(nbx_store_open(full_path, 0, &full), NBX_OK, "%s", nbx_last_errmsg());
    unsetenv("NBX_MAP_SIZE");
    cr_assert_eq(import_into(full, path, 1000, &st), NBX_OK, "%s", nbx_store_errmsg(full));
    check_consistent(full);
    nbx_store *roomy = open_with_map("roomy", "64M");
    cr_assert_eq(import_into(roomy, path, 1000, NULL), NBX_OK);
    cr_assert_eq(events_digest(full), events_digest(roomy));
    nbx_store_close(full);
    nbx_store_close(roomy);
    free(full_path);
    free(path);
}

/* Maps arrive in any order: small ones (sorted by insertion) and large ones
 * (qsort) come out sorted, and a duplicate key is refused either way. */
Test(ingest, maps_in_any_order)
{
    int sizes[] = {40, 200};
    for (int s = 0; s < 2; s++) {
        int n = sizes[s];
        char *path = tu_path(dir, "maps.jsonl");
        FILE *f = fopen(path, "w");
        cr_assert_not_null(f);
        fprintf(f, "{\"id\":\"m%d\",\"propensity\":{", n);
        for (int i = 0; i < n; i++) /* a scrambled order */
            fprintf(f, "%s\"k%03d\":0.5", i ? "," : "", (i * 37) % n);
        fprintf(f, "}}\n{\"id\":\"dup%d\",\"attrs\":{", n);
        for (int i = 0; i < n; i++)
            fprintf(f, "%s\"a%03d\":%d", i ? "," : "", n - 1 - i, i);
        fprintf(f, ",\"a%03d\":1}}\n", n / 2);
        cr_assert_eq(fclose(f), 0);
        char *rejects = tu_path(dir, "rejects.jsonl");
        nbx_import_stats st;
        cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, rejects, &st), NBX_OK);
        cr_assert_eq(st.rejected, 1);
        char *text = tu_read_file(rejects, NULL);
        char expect[64];
        snprintf(expect, sizeof expect, "field 'attrs.a%03d': duplicate key", n / 2);
        cr_assert(strstr(text, expect) != NULL, "%s", text);
        free(text);
        char id[16];
        snprintf(id, sizeof id, "m%d", n);
        char *json = get(id);
        const char *p = strstr(json, "\"propensity\":{");
        cr_assert_not_null(p);
        for (int i = 0; i < n; i++) {
            char key[16];
            snprintf(key, sizeof key, "\"k%03d\"", i);
            const char *at = strstr(p, key);
            cr_assert(at != NULL && at > p, "%s missing or out of order in %s", key, json);
            p = at;
        }
        nbx_free(json);
        free(rejects);
        free(path);
    }
}

/* ------------------------------------------------------------------------
 * The writer's clock (issue 9, section 2)
 * ------------------------------------------------------------------------ */

static int64_t t_ms(const char *text)
{
    int64_t ms;
    cr_assert_eq(nbx_time_parse(text, &ms), NBX_OK, "%s", text);
    return ms;
}

/* A click of c1 at ms, as a JSONL line. */
static void click_line(char *out, size_t n, const char *id, int64_t ms)
{
    char ts[NBX_TIME_BUFSZ];
    cr_assert_eq(nbx_time_format(ms, ts), NBX_OK);
    snprintf(out, n,
             "{\"event_id\":\"%s\",\"customer\":\"c1\",\"type\":\"click\",\"offer\":\"o1\","
             "\"ts\":\"%s\"}\n",
             id, ts);
}

Test(ingest, an_event_ahead_of_the_clock_names_file_line_and_ts)
{
    int64_t now = nbx_time_now();
    char a[256], b[256], c[256], text[1024];
    click_line(a, sizeof a, "k1", now - 3600000);
    click_line(b, sizeof b, "k2", now + 365 * NBX_MS_PER_DAY);
    click_line(c, sizeof c, "k3", t_ms("2020-01-01T00:00:00Z"));
    snprintf(text, sizeof text, "%s%s%s", a, b, c);
    char *path = write_tmp("ahead.jsonl", text);
    uint64_t before = store_digest(store);
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 0, NULL, &st), NBX_EPARSE);
    char where[4200];
    snprintf(where, sizeof where, "%s:2: field 'ts'", path);
    cr_assert(strncmp(nbx_store_errmsg(store), where, strlen(where)) == 0,
              "expected '%s...', got '%s'", where, nbx_store_errmsg(store));
    cr_assert_eq(store_digest(store), before, "a refused file wrote something");

    /* with --skip-invalid the line goes to the rejects, the backfill is applied */
    char *rejects = tu_path(dir, "rejects.jsonl");
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 0, rejects, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 2);
    cr_assert_eq(st.rejected, 1);
    char *r = tu_read_file(rejects, NULL);
    cr_assert(strstr(r, "\"line\":2,") && strstr(r, "field 'ts'"), "%s", r);
    free(r);

    /* the skew is an option */
    char d[256];
    click_line(d, sizeof d, "k4", now + 3600000);
    char *later = write_tmp("later.jsonl", d);
    cr_assert_eq(import(NBX_IMPORT_EVENTS, later, 0, NULL, &st), NBX_EPARSE);
    nbx_import_options o;
    nbx_import_options_init(&o);
    o.max_skew_ms = 2 * 3600000;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, later, &o, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 1);
    o.max_skew_ms = -1;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, later, &o, &st), NBX_EINVAL);
    cr_assert(strstr(nbx_store_errmsg(store), "max_skew_ms") != NULL, "%s",
              nbx_store_errmsg(store));
    o.max_skew_ms = NBX_EVENT_SKEW_MAX_MS + 1;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, later, &o, &st), NBX_EINVAL);
    free(later);
    free(rejects);
    free(path);
}

/* Options from a caller built against the header before max_skew_ms: its
 * smaller struct is taken, the newer fields get their defaults. */
Test(ingest, options_of_an_older_caller_are_taken)
{
    char *path = write_tmp("p.jsonl", good_profiles);
    nbx_import_options o;
    nbx_import_options_init(&o);
    o.size = offsetof(nbx_import_options, max_skew_ms);
    o.max_skew_ms = -5; /* beyond the caller's struct: not read */
    nbx_import_stats st;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_PROFILES, path, &o, &st), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(st.applied, 3);
    free(path);
}

/* ------------------------------------------------------------------------
 * Imports lose nothing (issue 9, section 5)
 * ------------------------------------------------------------------------ */

/* Every profile as nbx export prints it. */
static char *export_all(void)
{
    nbx_iter *it;
    cr_assert_eq(nbx_iter_open(store, 0, NULL, &it), NBX_OK);
    nbx_buf out = {0};
    const char *id, *json;
    size_t len;
    while (nbx_iter_next(it, &id, &json, &len) == NBX_OK) {
        nbx_buf_append(&out, json, len);
        nbx_buf_putc(&out, '\n');
    }
    nbx_iter_close(it);
    nbx_buf_terminate(&out);
    return out.data;
}

/* The report: the nightly sequence (import profiles, ingest events, rebuild
 * RFM) run a second time with a profiles file carrying rfm turned orders 4,
 * last_purchase 2026-01-07 into orders 3, last_purchase 2025-05-09, for
 * good (the purchase's event id is marked seen). */
Test(ingest, the_nightly_sequence_twice_is_the_nightly_sequence_once)
{
    char *profiles = write_tmp(
        "crm.jsonl",
        "{\"id\":\"c0000002\",\"attrs\":{\"tier\":\"gold\"},\"rfm\":{\"first_purchase\":"
        "\"2024-03-01T00:00:00Z\",\"last_purchase\":\"2025-05-09T00:00:00Z\",\"orders\":3,"
        "\"revenue\":300.1,\"margin\":30}}\n"
        "{\"id\":\"c0000003\",\"attrs\":{\"tier\":\"silver\"}}\n");
    char *events = write_tmp(
        "events.jsonl",
        "{\"event_id\":\"o-1\",\"customer\":\"c0000002\",\"type\":\"purchase\",\"amount\":84.5,"
        "\"margin\":8.45,\"ts\":\"2026-01-07T10:00:00Z\"}\n"
        "{\"event_id\":\"o-2\",\"customer\":\"c0000003\",\"type\":\"purchase\",\"amount\":12,"
        "\"ts\":\"2026-01-08T10:00:00Z\"}\n"
        "{\"event_id\":\"i-1\",\"customer\":\"c0000003\",\"type\":\"impression\","
        "\"offer\":\"o1\",\"ts\":\"2026-01-08T10:00:00Z\"}\n");
    int64_t as_of = t_ms("2026-02-01T00:00:00Z");
    char *after[2];
    uint64_t digest[2];
    for (int run = 0; run < 2; run++) {
        nbx_import_stats st;
        cr_assert_eq(import(NBX_IMPORT_PROFILES, profiles, 0, NULL, &st), NBX_OK);
        cr_assert_eq(import(NBX_IMPORT_EVENTS, events, 0, NULL, &st), NBX_OK);
        cr_assert_eq(st.applied, run ? 0 : 3);
        cr_assert_eq(nbx_rfm_rebuild(store, as_of, NULL), NBX_OK);
        after[run] = export_all();
        digest[run] = store_digest(store);
        char *c2 = get("c0000002");
        cr_assert(strstr(c2, "\"first_purchase\":\"2024-03-01T00:00:00Z\","
                             "\"last_purchase\":\"2026-01-07T10:00:00Z\",\"orders\":4,") != NULL,
                  "run %d rolled the purchase back: %s", run + 1, c2);
        nbx_free(c2);
    }
    cr_assert_str_eq(after[1], after[0]);
    cr_assert_eq(digest[1], digest[0], "the second run changed some byte of the store");

    /* the CRM's next file counts the purchase itself (as of its last one):
     * no double count */
    char *next = write_tmp(
        "crm2.jsonl",
        "{\"id\":\"c0000002\",\"rfm\":{\"last_purchase\":\"2026-01-07T10:00:00Z\",\"orders\":4,"
        "\"revenue\":384.6}}\n");
    cr_assert_eq(import(NBX_IMPORT_PROFILES, next, 0, NULL, NULL), NBX_OK);
    char *c2 = get("c0000002");
    cr_assert(strstr(c2, "\"orders\":4,\"revenue\":384.6,") != NULL, "%s", c2);
    nbx_free(c2);
    /* and a purchase after it adds */
    char *more = write_tmp("more.jsonl",
                           "{\"event_id\":\"o-3\",\"customer\":\"c0000002\",\"type\":\"purchase\","
                           "\"amount\":10,\"ts\":\"2026-01-20T10:00:00Z\"}\n");
    cr_assert_eq(import(NBX_IMPORT_EVENTS, more, 0, NULL, NULL), NBX_OK);
    c2 = get("c0000002");
    cr_assert(strstr(c2, "\"last_purchase\":\"2026-01-20T10:00:00Z\",\"orders\":5,") != NULL, "%s",
              c2);
    nbx_free(c2);
    free(more);
    free(next);
    free(after[0]);
    free(after[1]);
    free(events);
    free(profiles);
}

/* A profile that an import does not change keeps every byte: updated_at is
 * the time of the last change, not of the last import. */
Test(ingest, importing_the_same_file_twice_changes_no_byte)
{
    char *path = write_tmp("p.jsonl", good_profiles);
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, NULL, NULL), NBX_OK);
    uint64_t once = store_digest(store);
    char *c1 = get("c1");
    usleep(20000); /* a later clock: updated_at would move */
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, NULL, &st), NBX_OK);
    cr_assert_eq(st.applied, 3);
    cr_assert_eq(store_digest(store), once, "the same file again changed the store");
    /* a change dates the profile again */
    char *change = write_tmp("change.jsonl", "{\"id\":\"c1\",\"attrs\":{\"age\":42}}\n");
    cr_assert_eq(import(NBX_IMPORT_PROFILES, change, 0, NULL, NULL), NBX_OK);
    char *again = get("c1");
    cr_assert_str_neq(again, c1);
    cr_assert(strcmp(strstr(again, "\"updated_at\""), strstr(c1, "\"updated_at\"")) != 0,
              "changed, not dated again: %s", again);
    nbx_free(again);
    nbx_free(c1);
    free(change);
    free(path);
}

Test(ingest, a_catalog_names_the_offers_events_may_have)
{
    char *catalog = tu_source_path("tests/data/catalog.json");
    char *path = write_tmp(
        "offers.jsonl",
        "{\"event_id\":\"a\",\"customer\":\"c1\",\"type\":\"click\",\"offer\":\"free_shipping\","
        "\"ts\":\"2026-01-08T10:00:00Z\"}\n"
        "{\"event_id\":\"b\",\"customer\":\"c1\",\"type\":\"purchase\",\"amount\":1,"
        "\"ts\":\"2026-01-08T10:00:00Z\"}\n"
        "{\"event_id\":\"c\",\"customer\":\"c1\",\"type\":\"click\",\"offer\":\"NOPE\","
        "\"ts\":\"2026-01-08T10:00:00Z\"}\n");
    nbx_import_options o;
    nbx_import_options_init(&o);
    o.catalog = catalog;
    uint64_t before = store_digest(store);
    nbx_import_stats st;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, path, &o, &st), NBX_EPARSE);
    char where[4200];
    snprintf(where, sizeof where, "%s:3: field 'offer': 'NOPE'", path);
    cr_assert(strncmp(nbx_store_errmsg(store), where, strlen(where)) == 0,
              "expected '%s...', got '%s'", where, nbx_store_errmsg(store));
    cr_assert_eq(store_digest(store), before);
    /* without a catalog the file is taken as it is */
    cr_assert_eq(import(NBX_IMPORT_EVENTS, path, 0, NULL, &st), NBX_OK);
    cr_assert_eq(st.applied, 3);
    /* a catalog that does not load is the import's error */
    char *missing = tu_path(dir, "no-catalog.json");
    o.catalog = missing;
    cr_assert_eq(nbx_import_file(store, NBX_IMPORT_EVENTS, path, &o, &st), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_store_errmsg(store), "no-catalog.json") != NULL, "%s",
              nbx_store_errmsg(store));
    free(missing);
    free(path);
    free(catalog);
}

/* Imports of an erased customer's lines are refused and counted. */
Test(ingest, an_erased_customer_s_lines_are_counted_suppressed)
{
    char *profiles = write_tmp("p.jsonl", good_profiles); /* c1 twice, c2 */
    char *events = write_tmp(
        "e.jsonl", "{\"event_id\":\"a\",\"customer\":\"c1\",\"type\":\"click\",\"offer\":\"o1\","
                   "\"ts\":\"2026-01-08T10:00:00Z\"}\n"
                   "{\"event_id\":\"b\",\"customer\":\"c1\",\"type\":\"purchase\",\"amount\":1,"
                   "\"ts\":\"2026-01-08T10:00:00Z\"}\n"
                   "{\"event_id\":\"c\",\"customer\":\"c2\",\"type\":\"purchase\",\"amount\":1,"
                   "\"ts\":\"2026-01-08T10:00:00Z\"}\n");
    nbx_import_stats st;
    cr_assert_eq(import(NBX_IMPORT_PROFILES, profiles, 0, NULL, &st), NBX_OK);
    cr_assert_eq(import(NBX_IMPORT_EVENTS, events, 0, NULL, &st), NBX_OK);
    cr_assert_eq(st.applied, 3);
    cr_assert_eq(nbx_profile_delete(store, "c1"), NBX_OK);
    uint64_t before = store_digest(store);
    for (size_t batch = 1; batch <= 1000; batch *= 1000) {
        cr_assert_eq(import(NBX_IMPORT_PROFILES, profiles, batch, NULL, &st), NBX_OK);
        cr_assert_eq(st.suppressed, 2, "c1's two lines");
        cr_assert_eq(st.applied, 1);
        cr_assert_eq(import(NBX_IMPORT_EVENTS, events, batch, NULL, &st), NBX_OK);
        cr_assert_eq(st.suppressed, 2);
        cr_assert_eq(st.duplicates, 1, "c2's purchase");
        cr_assert_eq(st.applied, 0);
        cr_assert_eq(store_digest(store), before, "the erased customer came back");
    }
    free(events);
    free(profiles);
}

/* rfm.as_of travels through the import's spool like every other field. */
Test(ingest, an_import_s_rfm_as_of_is_kept)
{
    char *path = write_tmp(
        "asof.jsonl", "{\"id\":\"c1\",\"rfm\":{\"orders\":2,\"revenue\":10,\"as_of\":"
                      "\"2025-10-01T00:00:00Z\",\"last_purchase\":\"2025-12-01T00:00:00Z\"}}\n");
    cr_assert_eq(import(NBX_IMPORT_PROFILES, path, 0, NULL, NULL), NBX_OK);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    nbx_arena a = {0};
    nbx_profile p = {0};
    cr_assert_eq(nbx_store_profile_get(store, txn, NBX_SV("c1"), &p, &a, NULL), NBX_OK);
    cr_assert(p.fields & NBX_PF_RFM_BASE);
    cr_assert_eq(p.rfm_base.as_of, t_ms("2025-10-01T00:00:00Z"), "as_of %lld",
                 (long long)p.rfm_base.as_of);
    mdb_txn_abort(txn);
    nbx_arena_free(&a);
    /* a purchase between as_of and last_purchase counts */
    char *ev =
        write_tmp("ev.jsonl", "{\"event_id\":\"o\",\"customer\":\"c1\",\"type\":\"purchase\","
                              "\"amount\":5,\"ts\":\"2025-11-01T00:00:00Z\"}\n");
    cr_assert_eq(import(NBX_IMPORT_EVENTS, ev, 0, NULL, NULL), NBX_OK);
    char *json = get("c1");
    cr_assert(strstr(json, "\"orders\":3,\"revenue\":15") != NULL, "%s", json);
    nbx_free(json);
    free(ev);
    free(path);
}
