/*
 * exposure.c: per-customer exposure counters and per-day offer budgets.
 *
 * Keys (docs/data-model.md, "Store layout"):
 *   customers: customer \0 \x01 offer -> counters for that offer
 *              customer \0 \x01       -> counters over all offers (contacts)
 *   budgets:   day (4 bytes, big-endian) offer -> [impressions, accepts]
 * Both sort so that one cursor range reads everything a decision needs: a
 * customer's counters in offer-id order (the customer's event records sort
 * after them, under \x02), and a day's budgets in offer-id order, joined
 * against the catalog (also in offer-id order).
 */
#include "nbx_int.h"

#include <string.h>

/* Add n events of one kind at ts to x, keeping buckets sorted and at most
 * NBX_WINDOW_DAYS_MAX days behind the newest one. The result does not depend
 * on the order events are added in, which lets bulk ingest group them. */
int nbx_exposure_add(nbx_exposure *x, int kind, int64_t ts, uint32_t n, nbx_arena *a)
{
    uint32_t day = nbx_day_of(ts);
    if (ts > x->last[kind])
        x->last[kind] = ts;
    uint32_t i = x->n_days;
    while (i > 0 && x->days[i - 1].day > day)
        i--;
    if (i > 0 && x->days[i - 1].day == day) {
        x->days[i - 1].n[kind] += n;
    } else {
        nbx_exposure_day *days = nbx_arena_alloc(a, (x->n_days + 1) * sizeof *days);
        if (!days)
            return NBX_ENOMEM;
        if (x->n_days) /* x->days may be NULL when empty: no memcpy from NULL */
            memcpy(days, x->days, i * sizeof *days);
        memset(&days[i], 0, sizeof *days);
        days[i].day = day;
        days[i].n[kind] = n;
        if (x->n_days)
            memcpy(days + i + 1, x->days + i, (x->n_days - i) * sizeof *days);
        x->days = days;
        x->n_days++;
    }
    uint32_t newest = x->days[x->n_days - 1].day;
    uint32_t drop = 0;
    while (drop < x->n_days && newest - x->days[drop].day > NBX_WINDOW_DAYS_MAX)
        drop++;
    x->days += drop;
    x->n_days -= drop;
    return NBX_OK;
}

int nbx_exposure_bump(nbx_store *s, MDB_txn *txn, nbx_sv customer, nbx_sv offer, int kind,
                      int64_t ts, nbx_arena *a, nbx_buf *scratch, nbx_err *e)
{
    char key[NBX_COUNTER_KEY_MAX];
    MDB_val k = {nbx_exposure_key(key, customer, offer), key}, v;
    nbx_exposure x;
    int rc = mdb_get(txn, s->customers, &k, &v);
    if (rc == MDB_NOTFOUND) {
        memset(&x, 0, sizeof x);
    } else if (rc) {
        return nbx_err_mdb(e, rc, "reading exposure counters");
    } else if ((rc = nbx_exposure_decode(v.mv_data, v.mv_size, &x, a)) != NBX_OK) {
        return nbx_err_set(e, rc, "exposure counters of '%.*s' cannot be decoded",
                           (int)customer.len, customer.ptr);
    }
    if (nbx_exposure_add(&x, kind, ts, 1, a) != NBX_OK)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    nbx_buf_reset(scratch);
    if (nbx_exposure_encode(&x, scratch) != NBX_OK)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    v.mv_size = scratch->len;
    v.mv_data = scratch->data;
    rc = mdb_put(txn, s->customers, &k, &v, 0);
    return rc ? nbx_err_mdb(e, rc, "writing exposure counters") : NBX_OK;
}

int nbx_budget_bump(nbx_store *s, MDB_txn *txn, nbx_sv offer, int64_t ts, bool accept,
                    nbx_err *e)
{
    return nbx_budget_add(s, txn, offer, nbx_day_of(ts), accept ? 0 : 1, accept ? 1 : 0, e);
}

int nbx_budget_add(nbx_store *s, MDB_txn *txn, nbx_sv offer, uint32_t day, uint64_t impressions,
                   uint64_t accepts, nbx_err *e)
{
    char key[4 + NBX_OFFER_ID_MAX];
    MDB_val k = {nbx_budget_key(key, day, offer), key}, v;
    uint64_t counts[2] = {0, 0};
    int rc = mdb_get(txn, s->budgets, &k, &v);
    if (rc == 0) {
        if ((rc = nbx_budget_decode(v.mv_data, v.mv_size, offer, counts, e)))
            return rc;
    } else if (rc != MDB_NOTFOUND) {
        return nbx_err_mdb(e, rc, "reading budget counters");
    }
    counts[0] += impressions;
    counts[1] += accepts;
    char buf[NBX_BUDGET_VALUE_MAX];
    v.mv_size = nbx_budget_encode(counts, buf);
    v.mv_data = buf;
    rc = mdb_put(txn, s->budgets, &k, &v, 0);
    return rc ? nbx_err_mdb(e, rc, "writing budget counters") : NBX_OK;
}

uint32_t nbx_exposure_count(const nbx_exposure *x, int kind, uint32_t today, uint32_t days)
{
    if (days == 0)
        return 0;
    uint32_t first = today >= days - 1 ? today - (days - 1) : 0;
    uint32_t sum = 0;
    /* Buckets ascend: walk back from the newest. */
    for (uint32_t i = x->n_days; i-- > 0;) {
        uint32_t d = x->days[i].day;
        if (d < first)
            break;
        if (d <= today)
            sum += x->days[i].n[kind];
    }
    return sum;
}
