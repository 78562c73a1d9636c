/*
 * fuzz_stored: stored msgpack values, as a damaged or hostile data.mdb
 * would hand them to a reader (core/codec.c: nbx_profile_decode,
 * nbx_exposure_decode, nbx_mp_skip; core/exposure.c: nbx_budget_decode;
 * core/store.c: the event count and the RFM time in the metadata).
 *
 * The first byte picks the kind of value, the rest is the value. It is
 * decoded directly, then written raw into a real store under the key that
 * kind lives at, and read back the ways a reader meets it: `profile get`,
 * a decision (the nginx worker's path), recording an event, store stats.
 * Each must answer (a result, or NBX_ECORRUPT with an escaped message)
 * quickly: libFuzzer's -timeout makes a stalled reader a finding. A value
 * that decodes must survive encode -> decode -> encode unchanged.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { KIND_PROFILE, KIND_EXPOSURE, KIND_BUDGET, KIND_META, KINDS };

/* The customer whose stored values the input replaces; it has no profile
 * of its own unless the input is one. */
#define DAMAGED "damaged"
#define OFFER "free_shipping"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_engine_get();
    return 0;
}

/* ========================================================================
 * Decoding alone
 * ======================================================================== */

static void same_bytes(const nbx_buf *a, const nbx_buf *b, const char *what)
{
    if (a->len != b->len || memcmp(a->data, b->data, a->len) != 0)
        fz_fail("%s: decode then encode changed the value (%zu -> %zu bytes)", what, a->len,
                b->len);
}

static void decode_profile(const uint8_t *v, size_t n, nbx_arena *a)
{
    nbx_profile p = {.id = NBX_SV(DAMAGED)};
    nbx_err e = {0};
    int rc = nbx_profile_decode(v, n, &p, a, &e);
    if (rc != NBX_OK) {
        if (rc != NBX_ECORRUPT)
            fz_fail("nbx_profile_decode returned %d", rc);
        fz_check_message(e.msg, "nbx_profile_decode");
        return;
    }
    nbx_buf once = {0}, twice = {0}, json = {0};
    if (nbx_profile_encode(&p, &once) != NBX_OK)
        fz_fail("encode: out of memory");
    nbx_profile q = {.id = p.id};
    if (nbx_profile_decode(once.data, once.len, &q, a, &e) != NBX_OK)
        fz_fail("a profile nbx encoded does not decode: %s", e.msg);
    if (nbx_profile_encode(&q, &twice) != NBX_OK)
        fz_fail("encode: out of memory");
    same_bytes(&once, &twice, "profile");
    nbx_profile_to_json(&q, &json);
    fz_check_json(json.data, json.len, "nbx_profile_to_json of a decoded profile");
    nbx_buf_free(&json);
    nbx_buf_free(&twice);
    nbx_buf_free(&once);
}

static void decode_exposure(const uint8_t *v, size_t n, nbx_arena *a)
{
    nbx_exposure x;
    if (nbx_exposure_decode(v, n, &x, a) != NBX_OK)
        return;
    uint32_t today = nbx_day_of(FZ_NOW_MS);
    for (int k = 0; k < NBX_EXP_KINDS; k++) {
        (void)nbx_exposure_count(&x, k, today, 1);
        (void)nbx_exposure_count(&x, k, today, NBX_WINDOW_DAYS_MAX);
        (void)nbx_exposure_count(&x, k, UINT32_MAX, UINT32_MAX);
    }
    nbx_buf once = {0}, twice = {0};
    if (nbx_exposure_encode(&x, &once) != NBX_OK)
        fz_fail("encode: out of memory");
    nbx_exposure y;
    if (nbx_exposure_decode(once.data, once.len, &y, a) != NBX_OK)
        fz_fail("exposure counters nbx encoded do not decode");
    if (nbx_exposure_encode(&y, &twice) != NBX_OK)
        fz_fail("encode: out of memory");
    same_bytes(&once, &twice, "exposure counters");
    /* what an impression does to the row: add, then it must still encode */
    if (nbx_exposure_add(&x, NBX_EXP_IMPRESSION, FZ_NOW_MS, 1, FZ_NOW_MS, a) == NBX_OK) {
        nbx_buf_reset(&once);
        if (nbx_exposure_encode(&x, &once) != NBX_OK)
            fz_fail("encode: out of memory");
    }
    nbx_buf_free(&twice);
    nbx_buf_free(&once);
}

static void decode_other(const uint8_t *v, size_t n)
{
    uint64_t counts[2];
    nbx_err e = {0};
    if (nbx_budget_decode(v, n, NBX_SV(OFFER), counts, &e) != NBX_OK)
        fz_check_message(e.msg, "nbx_budget_decode");
    nbx_mp m;
    nbx_mp_init(&m, v, n);
    nbx_mp_skip(&m);
    if (!m.bad && (m.p < (const uint8_t *)v || m.p > (const uint8_t *)v + n))
        fz_fail("nbx_mp_skip left the value");
}

/* ========================================================================
 * Through a store
 * ======================================================================== */

static void raw_write(fz_engine *fe, MDB_dbi dbi, const void *key, size_t klen, const void *v,
                      size_t n)
{
    MDB_txn *txn;
    nbx_err e = {0};
    if (nbx_store_write_begin(fe->store, &txn, &e) != NBX_OK)
        fz_fail("write txn: %s", e.msg);
    MDB_val k = {klen, (void *)key}, val = {n, (void *)v};
    int rc = v ? mdb_put(txn, dbi, &k, &val, 0) : mdb_del(txn, dbi, &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND)
        fz_fail("raw %s: %s", v ? "put" : "del", mdb_strerror(rc));
    if (nbx_store_commit(fe->store, txn, &e) != NBX_OK)
        fz_fail("commit: %s", e.msg);
}

/* A decision for id: a result, or NBX_ECORRUPT (NBX_ELIMIT: a map over its
 * bound). Returns the impressions it recorded (each one an event in the
 * metadata count). */
static uint64_t decide(fz_engine *fe, const char *id, unsigned flags)
{
    static const int damage[] = {NBX_ECORRUPT, NBX_ELIMIT, NBX_OK};
    nbx_request req;
    nbx_request_init(&req);
    req.customer = id;
    req.flags = flags;
    const nbx_result *r;
    if (fz_decide(fe, &req, damage, &r) != NBX_OK || !(flags & NBX_DECIDE_RECORD))
        return 0;
    return nbx_result_action_count(r);
}

/* Returns 1 if the event was applied (and counted in the metadata). */
static int record(fz_engine *fe, const char *customer, const char *type)
{
    static unsigned long serial;
    char ev[256];
    int n = snprintf(ev, sizeof ev,
                     "{\"event_id\":\"fz-%lu\",\"customer\":\"%s\",\"type\":\"%s\","
                     "\"offer\":\"" OFFER "\",\"amount\":10,\"ts\":%lld}",
                     ++serial, customer, type, (long long)(FZ_NOW_MS / 1000));
    int applied = 0;
    int rc = nbx_record(fe->ctx, ev, (size_t)n, &applied);
    if (rc != NBX_OK && rc != NBX_ECORRUPT)
        fz_fail("nbx_record over a damaged value returned %d: %s", rc, nbx_ctx_errmsg(fe->ctx));
    if (rc != NBX_OK)
        fz_check_message(nbx_ctx_errmsg(fe->ctx), "nbx_record");
    return rc == NBX_OK && applied;
}

static uint64_t events_seen(fz_engine *fe)
{
    MDB_txn *txn;
    nbx_err e = {0};
    uint64_t n;
    if (nbx_store_read_begin(fe->store, &txn, &e) != NBX_OK ||
        nbx_store_events_seen(fe->store, txn, &n, &e) != NBX_OK)
        fz_fail("event count: %s", e.msg);
    mdb_txn_abort(txn);
    return n;
}

static void through_store(int kind, const uint8_t *v, size_t n)
{
    fz_engine *fe = fz_engine_get();
    nbx_store *s = fe->store;
    char key[NBX_COUNTER_KEY_MAX];
    size_t klen;
    MDB_dbi dbi;
    switch (kind) {
    case KIND_PROFILE:
        dbi = s->profiles;
        klen = strlen(DAMAGED);
        memcpy(key, DAMAGED, klen);
        break;
    case KIND_EXPOSURE:
        dbi = s->customers;
        klen = nbx_exposure_key(key, NBX_SV(DAMAGED), NBX_SV(OFFER));
        break;
    case KIND_BUDGET:
        dbi = s->budgets;
        klen = nbx_budget_key(key, nbx_day_of(FZ_NOW_MS), NBX_SV(OFFER));
        break;
    default:
        dbi = s->meta;
        klen = strlen("events");
        memcpy(key, "events", klen);
        break;
    }
    /* Counters are read for a customer who passes consent (an anonymous one
     * stops there), so that the caps arithmetic meets them. */
    static const char profile[] =
        "{\"id\":\"" DAMAGED "\",\"consent\":{\"personalization\":true,\"email\":true}}";
    if (kind == KIND_EXPOSURE && nbx_profile_put(s, profile, strlen(profile)) != NBX_OK)
        fz_fail("profile %s: %s", DAMAGED, nbx_store_errmsg(s));
    /* The event count the store had: damaging it must not leave the store
     * inconsistent for the next input (the harness restores it below). */
    uint64_t events = kind == KIND_META ? events_seen(fe) : 0;
    /* An empty value is stored as one: damaged like any other. */
    raw_write(fe, dbi, key, klen, v ? v : (const uint8_t *)"", n);

    char *json = NULL;
    size_t len;
    int rc = nbx_profile_get(s, DAMAGED, &json, &len);
    if (rc == NBX_OK)
        fz_check_json(json, len, "nbx_profile_get of a damaged value");
    else if (rc == NBX_ECORRUPT)
        fz_check_message(nbx_store_errmsg(s), "nbx_profile_get");
    else if (rc != NBX_ENOTFOUND)
        fz_fail("nbx_profile_get of a damaged value returned %d: %s", rc, nbx_store_errmsg(s));
    nbx_free(json);

    decide(fe, DAMAGED, NBX_DECIDE_EXPLAIN);
    events += decide(fe, "alice", NBX_DECIDE_RECORD);
    events += (uint64_t)record(fe, DAMAGED, "impression");
    events += (uint64_t)record(fe, DAMAGED, "purchase");
    if (kind == KIND_META) {
        nbx_store_stats st;
        if (nbx_store_stat(s, &st) != NBX_OK)
            fz_check_message(nbx_store_errmsg(s), "nbx_store_stat");
        uint8_t count[9] = {0xcf}; /* msgpack uint64, as store.c writes it */
        for (int i = 0; i < 8; i++)
            count[1 + i] = (uint8_t)(events >> (56 - 8 * i));
        raw_write(fe, dbi, key, klen, count, sizeof count);
        /* the RFM time lives in the metadata too */
        raw_write(fe, dbi, "rfm", 3, v ? v : (const uint8_t *)"", n);
        if (nbx_store_stat(s, &st) != NBX_OK)
            fz_check_message(nbx_store_errmsg(s), "nbx_store_stat");
        raw_write(fe, dbi, "rfm", 3, NULL, 0);
    } else {
        raw_write(fe, dbi, key, klen, NULL, 0);
    }
    /* the customer's own rows go too, so the next input starts clean; the
     * erasure leaves DAMAGED suppressed (every later put or event for it
     * refused), so it is lifted again */
    rc = nbx_profile_delete(s, DAMAGED);
    if (rc != NBX_OK && rc != NBX_ENOTFOUND)
        fz_fail("deleting %s: %d: %s", DAMAGED, rc, nbx_store_errmsg(s));
    if (nbx_profile_restore(s, DAMAGED) != NBX_OK)
        fz_fail("restoring %s: %s", DAMAGED, nbx_store_errmsg(s));
    fz_engine_trim(fe);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int kind = data[0] % KINDS;
    const uint8_t *v = data + 1;
    size_t n = size - 1;
    /* An exact-size copy: ASan then sees a read one byte past the value. */
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy)
        fz_fail("out of memory");
    if (n)
        memcpy(copy, v, n);
    nbx_arena a = {0};
    switch (kind) {
    case KIND_PROFILE:
        decode_profile(copy, n, &a);
        break;
    case KIND_EXPOSURE:
        decode_exposure(copy, n, &a);
        break;
    default:
        decode_other(copy, n);
        break;
    }
    nbx_arena_free(&a);
    through_store(kind, copy, n);
    free(copy);
    return 0;
}
