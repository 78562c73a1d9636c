/*
 * arms.c: the per-arm counters of the store (database `arms`): one row per
 * deployment, arm and UTC day (docs/format.md, docs/experiments.md).
 *
 * Two writers add to them, each in its own write transaction: the event
 * effects (impressions, accepts and purchases that carry a decision id of
 * an arm, effects.c) and the engines' flush of the decisions they served
 * (tally.c). Both sum their additions in memory first (nbx_arm_deltas) and
 * write each row once, in key order, whatever the number of events or
 * decisions behind it: one read and one write per (deployment, arm, day).
 *
 * Readers sum an arm's rows over a window of days: the canary's abort
 * rules (the arm's whole life) and `nbx stats`, `nbx report experiment`
 * (nbx_arm_counters_read()).
 */
#include "nbx_int.h"

#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Additions in memory: (deployment, arm, day) -> counts
 * ======================================================================== */

void nbx_arm_counts_add(nbx_arm_counts *to, const nbx_arm_counts *n)
{
    to->decisions += n->decisions;
    to->fallbacks += n->fallbacks;
    to->errors += n->errors;
    to->impressions += n->impressions;
    to->accepts += n->accepts;
    to->purchases += n->purchases;
    to->expected_margin += n->expected_margin;
    to->realised_margin += n->realised_margin;
}

static uint32_t slot_of(const nbx_arm_deltas *d, const char *key, size_t len)
{
    uint32_t mask = d->cap - 1;
    uint32_t h = (uint32_t)nbx_hash64(key, len, 0) & mask;
    while (d->slots[h].used &&
           !(d->slots[h].key_len == len && memcmp(d->slots[h].key, key, len) == 0))
        h = (h + 1) & mask;
    return h;
}

static int deltas_grow(nbx_arm_deltas *d)
{
    nbx_arm_deltas bigger = {.cap = d->cap ? 2 * d->cap : 8, .n = d->n};
    bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
    if (!bigger.slots)
        return NBX_ENOMEM;
    for (uint32_t i = 0; i < d->cap; i++)
        if (d->slots[i].used)
            bigger.slots[slot_of(&bigger, d->slots[i].key, d->slots[i].key_len)] = d->slots[i];
    free(d->slots);
    *d = bigger;
    return NBX_OK;
}

nbx_arm_counts *nbx_arm_deltas_at(nbx_arm_deltas *d, nbx_sv deployment, nbx_sv arm, uint32_t day)
{
    char key[NBX_ARM_KEY_MAX];
    size_t len = nbx_arm_key(key, deployment, arm, day);
    if (2 * (d->n + 1) > d->cap && deltas_grow(d) != NBX_OK)
        return NULL;
    nbx_arm_delta *slot = &d->slots[slot_of(d, key, len)];
    if (!slot->used) {
        memset(slot, 0, sizeof *slot);
        memcpy(slot->key, key, len);
        slot->key_len = (uint8_t)len;
        slot->used = true;
        d->n++;
    }
    return &slot->counts;
}

void nbx_arm_deltas_clear(nbx_arm_deltas *d)
{
    if (d->n)
        memset(d->slots, 0, d->cap * sizeof *d->slots);
    d->n = 0;
}

int nbx_arm_deltas_copy(nbx_arm_deltas *to, const nbx_arm_deltas *from)
{
    memset(to, 0, sizeof *to);
    if (from->cap == 0)
        return NBX_OK;
    to->slots = malloc(from->cap * sizeof *to->slots);
    if (!to->slots)
        return NBX_ENOMEM;
    memcpy(to->slots, from->slots, from->cap * sizeof *to->slots);
    to->cap = from->cap;
    to->n = from->n;
    return NBX_OK;
}

void nbx_arm_deltas_free(nbx_arm_deltas *d)
{
    free(d->slots);
    memset(d, 0, sizeof *d);
}

static int delta_cmp(const void *x, const void *y)
{
    const nbx_arm_delta *a = x, *b = y;
    size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
    int c = memcmp(a->key, b->key, n);
    return c ? c : (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

/* One row: read, add, write. */
static int row_add(nbx_store *s, MDB_txn *txn, const nbx_arm_delta *dl, nbx_err *e)
{
    MDB_val k = {dl->key_len, (void *)dl->key}, v;
    nbx_arm_counts c;
    memset(&c, 0, sizeof c);
    int rc = mdb_get(txn, s->arms, &k, &v);
    if (rc == 0 && nbx_arm_counts_decode(v.mv_data, v.mv_size, &c) != NBX_OK) {
        nbx_sv dep, arm;
        uint32_t day;
        nbx_arm_key_parse(dl->key, dl->key_len, &dep, &arm, &day);
        return nbx_err_set(e, NBX_ECORRUPT,
                           "counters of arm '%.*s' of deployment '%.*s' cannot "
                           "be decoded",
                           (int)arm.len, arm.ptr, (int)dep.len, dep.ptr);
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        return nbx_err_mdb(e, rc, "reading arm counters");
    nbx_arm_counts_add(&c, &dl->counts);
    char buf[NBX_ARM_VALUE_MAX];
    v = (MDB_val){nbx_arm_counts_encode(&c, buf), buf};
    k = (MDB_val){dl->key_len, (void *)dl->key};
    rc = mdb_put(txn, s->arms, &k, &v, 0);
    return rc ? nbx_err_mdb(e, rc, "writing arm counters") : NBX_OK;
}

int nbx_arm_deltas_write(nbx_arm_deltas *d, nbx_store *s, MDB_txn *txn, nbx_err *e)
{
    if (d->n == 0)
        return NBX_OK;
    if (!s->has_arms)
        return nbx_err_set(e, NBX_EREADONLY, "%s: the store's format has no arm counters", s->path);
    uint32_t n = 0;
    for (uint32_t i = 0; i < d->cap; i++)
        if (d->slots[i].used)
            d->slots[n++] = d->slots[i];
    qsort(d->slots, n, sizeof *d->slots, delta_cmp);
    int rc = NBX_OK;
    for (uint32_t i = 0; i < n && rc == NBX_OK; i++)
        rc = row_add(s, txn, &d->slots[i], e);
    d->n = n; /* what clearing must wipe */
    nbx_arm_deltas_clear(d);
    return rc;
}

/* ========================================================================
 * Reading: sums over a window of days
 * ======================================================================== */

/* Every row of the prefix (a deployment's, or an arm's, or the whole
 * database's with an empty prefix) whose day is in [from_day, to_day],
 * summed per (deployment, arm) in key order: fn gets each sum once its
 * rows are read. */
typedef int (*arm_sum_fn)(void *ud, nbx_sv deployment, nbx_sv arm, const nbx_arm_counts *sum,
                          uint32_t first_day, uint32_t last_day);

static int arms_scan(nbx_store *s, MDB_txn *txn, const char *prefix, size_t plen, uint32_t from_day,
                     uint32_t to_day, arm_sum_fn fn, void *ud, nbx_err *e)
{
    if (!s->has_arms)
        return NBX_OK;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->arms, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "reading arm counters");
    char cur_key[NBX_ARM_KEY_MAX];
    nbx_sv dep = {cur_key, 0}, arm = {cur_key, 0};
    nbx_arm_counts sum;
    uint32_t first = 0, last = 0;
    bool open = false;
    MDB_val k = {plen, (void *)prefix}, v;
    int mrc = mdb_cursor_get(cur, &k, &v, plen ? MDB_SET_RANGE : MDB_FIRST);
    for (; mrc == 0 && rc == NBX_OK && k.mv_size >= plen && memcmp(k.mv_data, prefix, plen) == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        nbx_sv d, a;
        uint32_t day;
        nbx_arm_counts c;
        if (!nbx_arm_key_parse(k.mv_data, k.mv_size, &d, &a, &day) ||
            nbx_arm_counts_decode(v.mv_data, v.mv_size, &c) != NBX_OK) {
            rc = nbx_err_set(e, NBX_ECORRUPT, "%s: an arm counter row cannot be decoded", s->path);
            break;
        }
        if (day < from_day || day > to_day)
            continue;
        if (open && !(nbx_sv_eq(d, dep) && nbx_sv_eq(a, arm))) {
            rc = fn(ud, dep, arm, &sum, first, last);
            open = false;
        }
        if (!open) {
            /* the key's own bytes: the page may go once the cursor moves */
            memcpy(cur_key, d.ptr, d.len);
            memcpy(cur_key + d.len, a.ptr, a.len);
            dep = (nbx_sv){cur_key, d.len};
            arm = (nbx_sv){cur_key + d.len, a.len};
            memset(&sum, 0, sizeof sum);
            first = day;
            open = true;
        }
        nbx_arm_counts_add(&sum, &c);
        last = day;
    }
    mdb_cursor_close(cur);
    if (rc == NBX_OK && mrc != 0 && mrc != MDB_NOTFOUND)
        rc = nbx_err_mdb(e, mrc, "reading arm counters");
    if (rc == NBX_OK && open)
        rc = fn(ud, dep, arm, &sum, first, last);
    return rc;
}

static int take_sum(void *ud, nbx_sv deployment, nbx_sv arm, const nbx_arm_counts *sum,
                    uint32_t first_day, uint32_t last_day)
{
    NBX_UNUSED(deployment);
    NBX_UNUSED(arm);
    NBX_UNUSED(first_day);
    NBX_UNUSED(last_day);
    *(nbx_arm_counts *)ud = *sum;
    return NBX_OK;
}

int nbx_arm_totals(nbx_store *s, MDB_txn *txn, nbx_sv deployment, nbx_sv arm, nbx_arm_counts *out,
                   nbx_err *e)
{
    memset(out, 0, sizeof *out);
    char prefix[NBX_ARM_KEY_MAX];
    /* the key of day 0 less its day: deployment \0 arm \0 */
    size_t plen = nbx_arm_key(prefix, deployment, arm, 0) - 4;
    return arms_scan(s, txn, prefix, plen, 0, UINT32_MAX, take_sum, out, e);
}

/* ========================================================================
 * nbx_arm_counters_read
 * ======================================================================== */

struct read_ctx {
    nbx_arm_counters_fn fn;
    void *ud;
    bool stopped;
};

static int report_sum(void *ud, nbx_sv deployment, nbx_sv arm, const nbx_arm_counts *sum,
                      uint32_t first_day, uint32_t last_day)
{
    struct read_ctx *r = ud;
    char dep[NBX_ARM_NAME_MAX + 1], name[NBX_ARM_NAME_MAX + 1];
    memcpy(dep, deployment.ptr, deployment.len);
    dep[deployment.len] = '\0';
    memcpy(name, arm.ptr, arm.len);
    name[arm.len] = '\0';
    nbx_arm_counters c = {
        .deployment = dep,
        .arm = name,
        .decisions = sum->decisions,
        .fallbacks = sum->fallbacks,
        .errors = sum->errors,
        .impressions = sum->impressions,
        .accepts = sum->accepts,
        .purchases = sum->purchases,
        .expected_margin = sum->expected_margin,
        .realised_margin = sum->realised_margin,
        .first_day_ms = (int64_t)first_day * NBX_MS_PER_DAY,
        .last_day_ms = (int64_t)last_day * NBX_MS_PER_DAY,
    };
    if (r->fn(r->ud, &c) != 0) {
        r->stopped = true;
        return NBX_DONE;
    }
    return NBX_OK;
}

int nbx_arm_counters_scan(nbx_store *s, MDB_txn *txn, const char *deployment, int64_t from_ms,
                          int64_t to_ms, nbx_arm_counters_fn fn, void *ud, nbx_err *e)
{
    char prefix[NBX_ARM_NAME_MAX + 1];
    size_t plen = 0;
    if (deployment) {
        if (!nbx_arm_name_valid(nbx_sv_of(deployment)))
            return nbx_err_set(e, NBX_EINVAL,
                               "deployment '%.64s': a name is 1 to %d bytes of A-Z, a-z, 0-9, "
                               "'_', '.' and '-'",
                               deployment, NBX_ARM_NAME_MAX);
        plen = strlen(deployment);
        memcpy(prefix, deployment, plen);
        prefix[plen++] = '\0';
    }
    if (to_ms == 0)
        to_ms = NBX_TIME_MAX_MS;
    if (from_ms < 0 || to_ms > NBX_TIME_MAX_MS || from_ms >= to_ms)
        return nbx_err_set(e, NBX_EINVAL,
                           "the window [%lld, %lld) ms is not one of the years 1970 to 9999 "
                           "(from before to)",
                           (long long)from_ms, (long long)to_ms);
    struct read_ctx r = {.fn = fn, .ud = ud};
    int rc = arms_scan(s, txn, prefix, plen, nbx_day_of(from_ms), nbx_day_of(to_ms - 1), report_sum,
                       &r, e);
    return r.stopped ? NBX_OK : rc;
}

NBX_API int nbx_arm_counters_read(nbx_store *s, const char *deployment, int64_t from_ms,
                                  int64_t to_ms, nbx_arm_counters_fn fn, void *ud)
{
    if (!s || !fn)
        return nbx_fail(s, NBX_EINVAL, "nbx_arm_counters_read: NULL argument");
    nbx_err e = {0};
    MDB_txn *txn;
    int rc = nbx_store_read_begin(s, &txn, &e);
    if (rc == NBX_OK) {
        rc = nbx_arm_counters_scan(s, txn, deployment, from_ms, to_ms, fn, ud, &e);
        mdb_txn_abort(txn);
    }
    return rc ? nbx_publish(s, &e) : NBX_OK;
}
