/* Suite: record (core/record.c): a decision's chosen actions recorded as
 * impressions, by nbx_decide() (NBX_DECIDE_RECORD) and by batches, on a real
 * store: the events they store, and what becomes of an action that another
 * writer made no longer fit. */
#include <criterion/criterion.h>
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
/* The fixture's contact policy: 5 contacts in 7 days. */
#define MAX_CONTACTS 5

static const char *FS_FIRST = "return { name = 'fs_first', score = function(o)\n"
                              "  if o.id == 'free_shipping' then return 100 end\n"
                              "  return o.price end }\n";
static const char *FAILING = "return { name = 'failing',\n"
                             "  score = function(o) error('boom on ' .. o.id) end }\n";

static void setup(void)
{
    dir = tu_tempdir("record");
    store_dir = tu_path(dir, "store");
    const char *profiles[] = {"{\"id\":\"alice\",\"consent\":{\"personalization\":true}}", NULL};
    cr_assert_eq(tu_store_with(store_dir, profiles), 0, "%s", nbx_last_errmsg());
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

TestSuite(record, .init = setup, .fini = teardown, .timeout = 120);

static void open_engine(const char *policy_src, nbx_log_fn log, void *log_ud)
{
    char *policy = tu_path(dir, "policy.lua");
    cr_assert_eq(tu_write_file(policy, policy_src), 0);
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = policy;
    o.log = log;
    o.log_ud = log_ud;
    cr_assert_eq(nbx_engine_open(&o, &engine), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(engine, &ctx), NBX_OK, "%s", nbx_last_errmsg());
    free(policy);
}

/* An impression of offer for the customer, at the decision's clock, through
 * nbx_record() on c: what another writer does. */
static void impression(nbx_ctx *c, const char *customer, const char *id, const char *offer)
{
    char ev[300];
    snprintf(ev, sizeof ev,
             "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"impression\","
             "\"offer\":\"%s\",\"placement\":\"hero\",\"ts\":%lld}",
             id, customer, offer, (long long)(NOW / 1000));
    int applied = 0;
    cr_assert_eq(nbx_record(c, ev, strlen(ev), &applied), NBX_OK, "%s", nbx_ctx_errmsg(c));
    cr_assert_eq(applied, 1, "impression %s not applied", id);
}

/* The customer's stored event records whose id starts with prefix, in key
 * order: their ids (malloc'd) and decoded records (offer and placement
 * copied). Returns how many. */
typedef struct stored {
    char id[128];
    nbx_event ev;
    char offer[NBX_OFFER_ID_MAX + 1], placement[NBX_OFFER_ID_MAX + 1];
} stored;

static size_t stored_events(const char *customer, const char *prefix, stored *out, size_t cap)
{
    nbx_store *s = nbx_engine_store(engine);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_cursor *cur;
    cr_assert_eq(mdb_cursor_open(txn, s->customers, &cur), 0);
    char key[NBX_EVENT_KEY_MAX];
    size_t klen = nbx_event_key(key, nbx_sv_of(customer), nbx_sv_of(prefix));
    size_t base = klen - strlen(prefix); /* where event ids start */
    MDB_val k = {klen, key}, v;
    size_t n = 0;
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < klen || memcmp(k.mv_data, key, klen) != 0)
            break;
        cr_assert_lt(n, cap, "more than %zu events under %s", cap, customer);
        stored *e = &out[n++];
        snprintf(e->id, sizeof e->id, "%.*s", (int)(k.mv_size - base), (char *)k.mv_data + base);
        cr_assert_eq(nbx_event_record_decode(v.mv_data, v.mv_size, &e->ev), NBX_OK,
                     "event %s does not decode", e->id);
        snprintf(e->offer, sizeof e->offer, "%.*s", (int)e->ev.offer.len, e->ev.offer.ptr);
        snprintf(e->placement, sizeof e->placement, "%.*s", (int)e->ev.placement.len,
                 e->ev.placement.ptr);
        e->ev.offer = e->ev.placement = (nbx_sv){"", 0}; /* they pointed into the page */
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return n;
}

/* The events a recorded decision must have left: one impression per
 * action, id DECISION_ID:INDEX in rank order, at the decision's clock, with
 * the action's offer and placement, and nothing else under that id. */
static void expect_recorded(const char *customer, const char *decision_id,
                            const nbx_action *actions, size_t n)
{
    stored got[16];
    size_t m = stored_events(customer, decision_id, got, 16);
    cr_assert_eq(m, n, "decision %s: %zu events stored for %zu actions", decision_id, m, n);
    for (size_t i = 0; i < n; i++) {
        char want[128];
        snprintf(want, sizeof want, "%s:%zu", decision_id, i);
        cr_assert_str_eq(got[i].id, want, "event %zu: expected id %s, got %s", i, want, got[i].id);
        cr_assert_eq(got[i].ev.type, NBX_EV_IMPRESSION, "event %s: type %d", want, got[i].ev.type);
        cr_assert_eq(got[i].ev.ts_ms, NOW, "event %s: at %lld, not the decision's clock", want,
                     (long long)got[i].ev.ts_ms);
        cr_assert_str_eq(got[i].offer, actions[i].offer, "event %s: offer", want);
        cr_assert_str_eq(got[i].placement, actions[i].placement, "event %s: placement", want);
    }
}

static uint32_t contacts_this_week(const char *customer)
{
    nbx_store *s = nbx_engine_store(engine);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), 0);
    char key[NBX_COUNTER_KEY_MAX];
    MDB_val k = {nbx_exposure_key(key, nbx_sv_of(customer), NBX_SV("")), key}, v;
    uint32_t n = 0;
    if (mdb_get(txn, s->customers, &k, &v) == 0) {
        nbx_arena a = {0};
        nbx_exposure x;
        cr_assert_eq(nbx_exposure_decode(v.mv_data, v.mv_size, &x, &a), NBX_OK);
        n = nbx_exposure_count(&x, NBX_EXP_IMPRESSION, nbx_day_of(NOW), 7);
        nbx_arena_free(&a);
    }
    mdb_txn_abort(txn);
    return n;
}

/* ------------------------------------------------------------------------
 * What is stored
 * ------------------------------------------------------------------------ */

Test(record, a_recorded_decision_stores_one_impression_per_action)
{
    open_engine(FS_FIRST, NULL, NULL);
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "alice";
    req.now_ms = NOW;
    req.flags = NBX_DECIDE_RECORD;
    const nbx_result *r = NULL;
    cr_assert_eq(nbx_decide(ctx, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    size_t n = nbx_result_action_count(r);
    cr_assert_gt(n, 1, "the fixture fills more than one slot: %s", nbx_result_json(r, NULL));
    nbx_action actions[16];
    for (size_t i = 0; i < n; i++)
        nbx_result_action(r, i, &actions[i]);
    expect_recorded("alice", nbx_result_decision_id(r), actions, n);
    cr_assert_eq(contacts_this_week("alice"), n, "the counters count each impression once");
}

Test(record, a_recording_batch_stores_the_same_events)
{
    open_engine(FS_FIRST, NULL, NULL);
    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.threads = 1;
    o.now_ms = NOW;
    o.flags = NBX_DECIDE_RECORD;
    nbx_batch *b;
    cr_assert_eq(nbx_batch_open(engine, &o, &b), NBX_OK, "%s", nbx_last_errmsg());
    const char *customers[] = {"alice", "carol"}; /* carol: no profile */
    for (size_t i = 0; i < 2; i++)
        cr_assert_eq(nbx_batch_submit(b, customers[i], NULL, 0, NULL), NBX_OK, "%s",
                     nbx_batch_errmsg(b));
    const nbx_batch_item *it;
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(nbx_batch_next(b, &it), NBX_OK);
        cr_assert_eq(it->status, NBX_OK, "%s: %s", it->customer, it->errmsg);
        cr_assert_gt(it->n_actions, 0, "%s: %s", it->customer, it->json);
        expect_recorded(it->customer, it->decision_id, it->actions, it->n_actions);
        cr_assert_eq(contacts_this_week(it->customer), it->n_actions);
    }
    cr_assert_eq(nbx_batch_next(b, &it), NBX_DONE);
    nbx_batch_close(b);
}

/* ------------------------------------------------------------------------
 * Another writer got there first
 * ------------------------------------------------------------------------ */

/* The log callback runs inside nbx_decide(), between the decision's read
 * and its recording: another writer's impressions land exactly there. */
typedef struct race {
    nbx_ctx *other;
    int impressions;
    int calls;
} race;

static void record_in_between(void *ud, int level, const char *message)
{
    race *rc = ud;
    if (rc->calls++ || !rc->other)
        return;
    for (int i = 0; i < rc->impressions; i++) {
        char id[16];
        snprintf(id, sizeof id, "other%d", i);
        impression(rc->other, "alice", id, "free_shipping");
    }
}

/* The fallback decision (the policy fails) fills both placements with
 * their fallback modules, which count as contacts. Another writer takes
 * all but one of alice's contacts while nbx_decide() runs: the first action
 * is recorded as DECISION_ID:0, the second is dropped from the result. */
Test(record, decide_drops_an_action_that_no_longer_fits_and_records_the_rest)
{
    race rc = {.impressions = MAX_CONTACTS - 1};
    open_engine(FAILING, record_in_between, &rc);
    cr_assert_eq(nbx_ctx_open(engine, &rc.other), NBX_OK, "%s", nbx_last_errmsg());
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "alice";
    req.now_ms = NOW;
    req.flags = NBX_DECIDE_RECORD;
    const nbx_result *r = NULL;
    cr_assert_eq(nbx_decide(ctx, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(rc.calls, 1, "the policy failure was logged once");
    cr_assert(nbx_result_fallback(r));
    const char *json = nbx_result_json(r, NULL);
    cr_assert_eq(nbx_result_action_count(r), 1, "one contact was left: %s", json);
    nbx_action a;
    nbx_result_action(r, 0, &a);
    cr_assert_str_eq(a.offer, "brand_banner", "%s", json);
    cr_assert_null(strstr(json, "bestsellers"), "the dropped action is in the result: %s", json);
    expect_recorded("alice", nbx_result_decision_id(r), &a, 1);
    cr_assert_eq(contacts_this_week("alice"), MAX_CONTACTS);
    nbx_ctx_close(rc.other);
}

/* A write transaction for rec and alice's profile as it is in it. */
static void begin(nbx_recorder *rec, nbx_profile *p)
{
    nbx_err e = {0};
    cr_assert_eq(nbx_store_write_begin(rec->store, &rec->txn, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_store_profile_get(rec->store, rec->txn, NBX_SV("alice"), p, rec->arena, &e),
                 NBX_OK, "%s", e.msg);
}

/* nbx_record_decision() itself: misfits reported (nbx_decide) or the whole
 * decision stale (batches), for each reason an action stops fitting. */
Test(record, record_decision_reports_misfits_or_records_nothing)
{
    open_engine(FS_FIRST, NULL, NULL);
    for (int i = 0; i < 3; i++) { /* free_shipping's cap: 3 in 7 days */
        char id[16];
        snprintf(id, sizeof id, "seen%d", i);
        impression(ctx, "alice", id, "free_shipping");
    }
    nbx_snapshot *snap = nbx_engine_snapshot(engine);
    nbx_store *store = nbx_engine_store(engine);
    nbx_caps caps;
    cr_assert_eq(nbx_caps_init(&caps, snap->catalog), NBX_OK);
    nbx_arena arena = {0};
    nbx_buf scratch = {0};
    nbx_recorder rec = {.store = store,
                        .catalog = snap->catalog,
                        .caps = &caps,
                        .arena = &arena,
                        .scratch = &scratch};
    const nbx_action actions[] = {
        {.offer = "free_shipping", .placement = "hero"}, /* over its frequency cap now */
        {.offer = "bestsellers", .placement = "recs"},
        {.offer = "withdrawn", .placement = "recs"}, /* not in the catalog */
        {.offer = "carousel_new", .placement = "recs"},
    };
    nbx_profile p;
    nbx_decision_record d = {.id = "D",
                             .profile = &p,
                             .channel = UINT32_MAX,
                             .now_ms = NOW,
                             .actions = actions,
                             .n_actions = 4};
    nbx_err e = {0};

    /* all or nothing */
    begin(&rec, &p);
    cr_assert_eq(nbx_record_decision(&rec, &d, NULL, &e), NBX_DECISION_STALE, "%s", e.msg);
    cr_assert_eq(nbx_store_commit(store, rec.txn, &e), NBX_OK, "%s", e.msg);
    stored got[8];
    cr_assert_eq(stored_events("alice", "D:", got, 8), 0, "a stale decision recorded actions");

    /* misfits dropped, the others renumbered as the caller keeps them */
    uint8_t misfit[4];
    memset(misfit, 0xff, sizeof misfit);
    begin(&rec, &p);
    cr_assert_eq(nbx_record_decision(&rec, &d, misfit, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_store_commit(store, rec.txn, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(misfit[0], NBX_EXCLUDED_FREQUENCY, "got %d", misfit[0]);
    cr_assert_eq(misfit[1], NBX_EXCLUDED_NONE, "got %d", misfit[1]);
    cr_assert_eq(misfit[2], NBX_EXCLUDED_VALIDITY, "got %d", misfit[2]);
    cr_assert_eq(misfit[3], NBX_EXCLUDED_NONE, "got %d", misfit[3]);
    const nbx_action kept[] = {actions[1], actions[3]};
    expect_recorded("alice", "D", kept, 2);

    /* the contact policy: 3 + 2 recorded is the limit; a fallback is
     * checked for contacts only, and none is left */
    d.fallback = true;
    d.id = "F";
    begin(&rec, &p);
    cr_assert_eq(nbx_record_decision(&rec, &d, misfit, &e), NBX_OK, "%s", e.msg);
    mdb_txn_abort(rec.txn);
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(misfit[i], i == 2 ? NBX_EXCLUDED_VALIDITY : NBX_EXCLUDED_CONTACTS,
                     "action %zu: %d", i, misfit[i]);

    nbx_buf_free(&scratch);
    nbx_arena_free(&arena);
    nbx_caps_free(&caps);
    nbx_snapshot_unref(snap);
}

/* The impressions a decision records carry its decision id: an arm's
 * decision (UUID.DEPLOYMENT.ARM) counts its impressions in the arm's row;
 * a decision without a deployment counts for no arm. */
Test(record, a_deployment_s_decision_counts_its_impressions_for_its_arm)
{
    open_engine(FS_FIRST, NULL, NULL);
    nbx_snapshot *snap = nbx_engine_snapshot(engine);
    nbx_store *store = nbx_engine_store(engine);
    nbx_caps caps;
    cr_assert_eq(nbx_caps_init(&caps, snap->catalog), NBX_OK);
    nbx_arena arena = {0};
    nbx_buf scratch = {0};
    nbx_recorder rec = {.store = store,
                        .catalog = snap->catalog,
                        .caps = &caps,
                        .arena = &arena,
                        .scratch = &scratch};
    const nbx_action actions[] = {
        {.offer = "bestsellers", .placement = "recs"},
        {.offer = "carousel_new", .placement = "recs"},
    };
    nbx_profile p;
    nbx_decision_record d = {.id = "01890a5d-ac96-7abc-8def-0123456789ab.q4.champion",
                             .profile = &p,
                             .channel = UINT32_MAX,
                             .now_ms = NOW,
                             .actions = actions,
                             .n_actions = 2};
    nbx_err e = {0};
    begin(&rec, &p);
    cr_assert_eq(nbx_record_decision(&rec, &d, NULL, &e), NBX_OK, "%s", e.msg);
    d.id = "01890a5d-ac96-7abc-8def-0123456789ac"; /* no deployment */
    d.n_actions = 1;
    cr_assert_eq(nbx_record_decision(&rec, &d, NULL, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_store_commit(store, rec.txn, &e), NBX_OK, "%s", e.msg);
    expect_recorded("alice", "01890a5d-ac96-7abc-8def-0123456789ab.q4.champion", actions, 2);

    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(store->env, NULL, MDB_RDONLY, &txn), 0);
    nbx_arm_counts c;
    cr_assert_eq(nbx_arm_totals(store, txn, NBX_SV("q4"), NBX_SV("champion"), &c, &e), NBX_OK, "%s",
                 e.msg);
    MDB_stat st;
    cr_assert_eq(mdb_stat(txn, store->arms, &st), 0);
    mdb_txn_abort(txn);
    cr_assert_eq(c.impressions, 2, "got %llu", (unsigned long long)c.impressions);
    cr_assert_eq(st.ms_entries, 1, "%zu arm rows: the decision without a deployment counted",
                 (size_t)st.ms_entries);

    nbx_buf_free(&scratch);
    nbx_arena_free(&arena);
    nbx_caps_free(&caps);
    nbx_snapshot_unref(snap);
}
