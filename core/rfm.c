/*
 * rfm.c: recency, frequency, monetary scores and segments.
 *
 * A rebuild reads every profile's RFM aggregates (orders, revenue,
 * last_purchase), computes population quintile cut points, stores them in
 * the meta database, then rewrites each profile's r, f, m and segment in
 * batched transactions (docs/data-model.md, "RFM").
 */
#include "nbx_int.h"

#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Segments
 * ======================================================================== */

static const char *const segment_names[NBX_SEGMENT_COUNT] = {
    [NBX_SEGMENT_NONE] = "none",
    [NBX_SEGMENT_CHAMPIONS] = "champions",
    [NBX_SEGMENT_LOYAL] = "loyal",
    [NBX_SEGMENT_POTENTIAL] = "potential",
    [NBX_SEGMENT_NEW] = "new",
    [NBX_SEGMENT_PROMISING] = "promising",
    [NBX_SEGMENT_NEEDS_ATTENTION] = "needs_attention",
    [NBX_SEGMENT_AT_RISK] = "at_risk",
    [NBX_SEGMENT_CANT_LOSE] = "cant_lose",
    [NBX_SEGMENT_HIBERNATING] = "hibernating",
    [NBX_SEGMENT_LOST] = "lost",
    [NBX_SEGMENT_PROSPECT] = "prospect",
};

NBX_API const char *nbx_segment_name(int segment)
{
    if (segment < 0 || segment >= NBX_SEGMENT_COUNT)
        return NULL;
    return segment_names[segment];
}

/* ========================================================================
 * Scores
 *
 * Cut points are values, not ranks: c[k] is the value at the (k+1)/5
 * nearest rank of the sorted population, and a customer's quintile is the
 * number of cut points its value is strictly above (0..4). Equal values get
 * equal scores, so more revenue never gives a lower m however heavy the
 * ties (a value on a cut point falls in the lower group). Frequency and
 * monetary score 1 + quintile; recency (days, lower is better) 5 - quintile.
 * ======================================================================== */

#define RFM_BATCH 10000
/* Records between read-snapshot renewals in the scoring scan. */
#define RFM_RENEW 4096

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void cut_points(double *v, size_t n, double cuts[4])
{
    if (n == 0) {
        memset(cuts, 0, 4 * sizeof *cuts);
        return;
    }
    qsort(v, n, sizeof *v, cmp_double);
    for (int k = 0; k < 4; k++) {
        size_t rank = ((size_t)(k + 1) * n + 4) / 5; /* ceil((k+1) n / 5), 1-based */
        cuts[k] = v[rank - 1];
    }
}

static int quintile(double v, const double cuts[4])
{
    int q = 0;
    for (int k = 0; k < 4; k++)
        q += v > cuts[k];
    return q;
}

/* Segment by recency and the rounded-up mean of frequency and monetary
 * (docs/data-model.md, "Segments"). Rows r = 5..1, columns fm = 1..5. */
/* clang-format off */
static const uint8_t segment_map[5][5] = {
    /* r=5 */ {NBX_SEGMENT_NEW, NBX_SEGMENT_PROMISING, NBX_SEGMENT_POTENTIAL,
               NBX_SEGMENT_CHAMPIONS, NBX_SEGMENT_CHAMPIONS},
    /* r=4 */ {NBX_SEGMENT_PROMISING, NBX_SEGMENT_POTENTIAL, NBX_SEGMENT_POTENTIAL,
               NBX_SEGMENT_LOYAL, NBX_SEGMENT_CHAMPIONS},
    /* r=3 */ {NBX_SEGMENT_NEEDS_ATTENTION, NBX_SEGMENT_NEEDS_ATTENTION,
               NBX_SEGMENT_NEEDS_ATTENTION, NBX_SEGMENT_LOYAL, NBX_SEGMENT_LOYAL},
    /* r=2 */ {NBX_SEGMENT_HIBERNATING, NBX_SEGMENT_HIBERNATING, NBX_SEGMENT_AT_RISK,
               NBX_SEGMENT_AT_RISK, NBX_SEGMENT_CANT_LOSE},
    /* r=1 */ {NBX_SEGMENT_LOST, NBX_SEGMENT_LOST, NBX_SEGMENT_HIBERNATING, NBX_SEGMENT_AT_RISK,
               NBX_SEGMENT_CANT_LOSE},
};
/* clang-format on */

static uint8_t segment_of(int r, int f, int m)
{
    int fm = (f + m + 1) / 2;
    return segment_map[5 - r][fm - 1];
}

/* A customer has a purchase when orders >= 1. Recency without a
 * last_purchase date is unknown: such customers score r = 1 and stay out of
 * the recency cut points. */
static bool has_purchase(const nbx_rfm *r)
{
    return r->orders > 0;
}

static double recency_days(const nbx_rfm *r, int64_t as_of_ms)
{
    return (double)(as_of_ms - r->last_purchase) / (double)NBX_MS_PER_DAY;
}

typedef struct rfm_cuts {
    double r[4], f[4], m[4];
} rfm_cuts;

static void score(nbx_rfm *r, int64_t as_of_ms, const rfm_cuts *c)
{
    if (!has_purchase(r)) {
        r->r = r->f = r->m = 0;
        r->segment = NBX_SEGMENT_PROSPECT;
        return;
    }
    r->r = (uint8_t)(r->last_purchase ? 5 - quintile(recency_days(r, as_of_ms), c->r) : 1);
    r->f = (uint8_t)(1 + quintile((double)r->orders, c->f));
    r->m = (uint8_t)(1 + quintile(r->revenue, c->m));
    r->segment = segment_of(r->r, r->f, r->m);
}

/* ========================================================================
 * Rebuild
 * ======================================================================== */

typedef struct values {
    double *v;
    size_t n, cap;
} values;

static bool values_push(values *x, double v)
{
    if (x->n == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 65536;
        double *bigger = realloc(x->v, cap * sizeof *bigger);
        if (!bigger)
            return false;
        x->v = bigger;
        x->cap = cap;
    }
    x->v[x->n++] = v;
    return true;
}

/* Pass 1: every purchaser's recency, frequency and monetary value, read
 * with a snapshot renewed every RFM_RENEW records. */
static int collect(nbx_store *s, int64_t as_of_ms, values *rv, values *fv, values *mv, nbx_err *e)
{
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int rc = nbx_store_read_begin(s, &txn, e);
    if (rc)
        return rc;
    int mrc = mdb_cursor_open(txn, s->profiles, &cur);
    char last[512];
    size_t last_len = 0;
    uint32_t since = 0;
    MDB_val k, v;
    if (mrc == 0)
        mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (mrc == 0) {
        nbx_rfm r;
        bool has;
        int drc = nbx_profile_decode_rfm(v.mv_data, v.mv_size, &r, &has);
        if (drc == NBX_OK && has && has_purchase(&r)) {
            bool ok = values_push(fv, (double)r.orders) && values_push(mv, r.revenue) &&
                      (!r.last_purchase || values_push(rv, recency_days(&r, as_of_ms)));
            if (!ok) {
                rc = nbx_err_set(e, NBX_ENOMEM, "out of memory");
                break;
            }
        } else if (drc != NBX_OK) {
            rc = nbx_err_set(e, NBX_ECORRUPT, "profile '%.*s': stored value cannot be decoded",
                             (int)(k.mv_size > 256 ? 256 : k.mv_size), (const char *)k.mv_data);
            break;
        }
        if (++since < RFM_RENEW) {
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            continue;
        }
        since = 0;
        last_len = k.mv_size < sizeof last ? k.mv_size : sizeof last;
        memcpy(last, k.mv_data, last_len);
        mdb_txn_reset(txn);
        mrc = mdb_txn_renew(txn);
        if (mrc == 0)
            mrc = mdb_cursor_renew(txn, cur);
        if (mrc)
            break;
        k = (MDB_val){last_len, last};
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (mrc == 0 && k.mv_size == last_len && memcmp(k.mv_data, last, last_len) == 0)
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc == NBX_OK && mrc != MDB_NOTFOUND)
        rc = nbx_err_mdb(e, mrc, "reading profiles");
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rc;
}

static int put_meta(nbx_store *s, MDB_txn *txn, int64_t as_of_ms, const rfm_cuts *c, nbx_err *e)
{
    nbx_rfm_meta meta = {.as_of_ms = as_of_ms};
    memcpy(meta.recency, c->r, sizeof meta.recency);
    memcpy(meta.frequency, c->f, sizeof meta.frequency);
    memcpy(meta.monetary, c->m, sizeof meta.monetary);
    nbx_buf b = {0};
    int rc = nbx_rfm_meta_encode(&meta, &b) != NBX_OK
                 ? nbx_err_set(e, NBX_ENOMEM, "out of memory")
                 : nbx_store_meta_put(s, txn, NBX_META_RFM, b.data, b.len, e);
    nbx_buf_free(&b);
    return rc;
}

/* Pass 2: score every profile, RFM_BATCH per write transaction; a profile
 * whose scores do not change is not rewritten. The meta record goes with
 * the last batch, so it names a completed rebuild. */
static int rescore(nbx_store *s, int64_t as_of_ms, const rfm_cuts *c, nbx_rfm_stats *st, nbx_err *e)
{
    nbx_arena arena = {0};
    nbx_buf scratch = {0};
    char last[512];
    size_t last_len = 0;
    bool started = false, done = false;
    int rc = NBX_OK;
    while (rc == NBX_OK && !done) {
        MDB_txn *txn;
        MDB_cursor *cur;
        rc = nbx_store_write_begin(s, &txn, e);
        if (rc)
            break;
        int mrc = mdb_cursor_open(txn, s->profiles, &cur);
        MDB_val k = {last_len, last}, v;
        if (mrc == 0) {
            mrc = mdb_cursor_get(cur, &k, &v, started ? MDB_SET_RANGE : MDB_FIRST);
            if (mrc == 0 && started && k.mv_size == last_len &&
                memcmp(k.mv_data, last, last_len) == 0)
                mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        started = true;
        for (uint32_t n = 0; mrc == 0 && n < RFM_BATCH; n++) {
            nbx_arena_reset(&arena);
            nbx_profile p = {.id = {k.mv_data, k.mv_size}};
            rc = nbx_profile_decode(v.mv_data, v.mv_size, &p, &arena, e);
            if (rc)
                break;
            nbx_rfm before = p.rfm;
            bool had = p.fields & NBX_PF_RFM;
            if (!had)
                memset(&p.rfm, 0, sizeof p.rfm);
            score(&p.rfm, as_of_ms, c);
            p.fields |= NBX_PF_RFM;
            st->customers++;
            st->scored += p.rfm.segment != NBX_SEGMENT_PROSPECT;
            st->segments[p.rfm.segment]++;
            last_len = k.mv_size < sizeof last ? k.mv_size : sizeof last;
            memcpy(last, k.mv_data, last_len);
            if (!had || before.r != p.rfm.r || before.f != p.rfm.f || before.m != p.rfm.m ||
                before.segment != p.rfm.segment) {
                nbx_buf_reset(&scratch);
                if (nbx_profile_encode(&p, &scratch) != NBX_OK) {
                    rc = nbx_err_set(e, NBX_ENOMEM, "out of memory");
                    break;
                }
                /* k points into the page the put rewrites: pass a copy */
                MDB_val key = {last_len, last}, val = {scratch.len, scratch.data};
                mrc = mdb_cursor_put(cur, &key, &val, MDB_CURRENT);
                if (mrc)
                    break;
            }
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
        if (rc == NBX_OK && mrc == MDB_NOTFOUND) {
            done = true;
            rc = put_meta(s, txn, as_of_ms, c, e);
        } else if (rc == NBX_OK && mrc) {
            rc = nbx_err_mdb(e, mrc, "scoring profiles");
        }
        if (rc == NBX_OK)
            rc = nbx_store_commit(s, txn, e);
        else
            mdb_txn_abort(txn);
    }
    nbx_arena_free(&arena);
    nbx_buf_free(&scratch);
    return rc;
}

NBX_API int nbx_rfm_rebuild(nbx_store *s, int64_t as_of_ms, nbx_rfm_stats *stats)
{
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (!s)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_rfm_rebuild: NULL store");
    if (s->flags & NBX_STORE_READONLY)
        return nbx_fail(s, NBX_EREADONLY, "%s: store opened read-only", s->path);
    /* Recorded in meta and printed by nbx store stat: a time nbx can write. */
    if (as_of_ms < NBX_TIME_MIN_MS || as_of_ms > NBX_TIME_MAX_MS)
        return nbx_fail(s, NBX_EINVAL,
                        "nbx_rfm_rebuild: as_of_ms %lld is outside the years 0001 to 9999",
                        (long long)as_of_ms);
    if (as_of_ms == 0)
        as_of_ms = nbx_time_now();
    nbx_err e = {0};
    values rv = {0}, fv = {0}, mv = {0};
    nbx_rfm_stats st;
    memset(&st, 0, sizeof st);
    rfm_cuts cuts;
    int rc = collect(s, as_of_ms, &rv, &fv, &mv, &e);
    if (rc == NBX_OK) {
        cut_points(rv.v, rv.n, cuts.r);
        cut_points(fv.v, fv.n, cuts.f);
        cut_points(mv.v, mv.n, cuts.m);
        free(rv.v);
        free(fv.v);
        free(mv.v);
        rv.v = fv.v = mv.v = NULL;
        rc = rescore(s, as_of_ms, &cuts, &st, &e);
    }
    free(rv.v);
    free(fv.v);
    free(mv.v);
    if (rc)
        return nbx_publish(s, &e);
    memcpy(st.recency_days, cuts.r, sizeof cuts.r);
    memcpy(st.frequency, cuts.f, sizeof cuts.f);
    memcpy(st.monetary, cuts.m, sizeof cuts.m);
    if (stats)
        *stats = st;
    nbx_clear_error(s);
    return NBX_OK;
}
