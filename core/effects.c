/*
 * effects.c: what an event does to a customer, written once for every path
 * that applies events: nbx_event_apply() and nbx_record() (one event), the
 * impressions a decision records (record.c), and bulk ingest
 * (a file's events, customer by customer). Profile imports (nbx_profile_put,
 * nbx import profiles) are here too: they are the other writer of a
 * customer's purchase aggregates.
 *
 * In one write transaction, for a group of one customer's events in the
 * order they arrived:
 *
 *   0. a customer erased (nbx_profile_erase) and not restored gets nothing:
 *      every event is refused as suppressed;
 *   1. the event record (customer \0 \x02 event id) is added; an id this
 *      customer already has is a duplicate and changes nothing else;
 *   2. each new exposure counts in the customer's all-offers row and the
 *      offer's row, in the bucket of its UTC day (exposure.c);
 *   3. each new impression or accept counts in the offer's budget row of
 *      its UTC day;
 *   4. each new purchase adds to the customer's RFM aggregates (a purchase
 *      for a customer without a profile creates one);
 *   5. the event count (meta "events") grows by the new records.
 *
 * A group is applied with one read and one write per row it touches,
 * whatever its size: bulk ingest groups a file's events per customer and is
 * as fast as it was with its own copy of these rules, and a single event is
 * the group of one. Budget rows and the event count are summed over the
 * transaction and written once, in key order, by nbx_effects_end().
 * Grouping changes no result: a row's events are applied in arrival order,
 * rows of different customers are different keys, budgets and the count
 * are sums (tests/test_ingest.c compares ingest with nbx_event_apply()).
 */
#include "nbx_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Budget rows of a transaction: (UTC day, offer) -> counts
 * ======================================================================== */

static int budget_grow(nbx_effects *fx)
{
    uint32_t cap = fx->budget_cap * 2;
    nbx_fx_budget *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return NBX_ENOMEM;
    for (uint32_t i = 0; i < fx->budget_cap; i++) {
        const nbx_fx_budget *o = &fx->budgets[i];
        if (!o->used)
            continue;
        uint32_t h = (uint32_t)nbx_hash64(o->offer.ptr, o->offer.len, o->day) & (cap - 1);
        while (slots[h].used)
            h = (h + 1) & (cap - 1);
        slots[h] = *o;
    }
    if (fx->budgets != fx->budget_inline)
        free(fx->budgets);
    fx->budgets = slots;
    fx->budget_cap = cap;
    return NBX_OK;
}

static int budget_count(nbx_effects *fx, const nbx_fx_event *x)
{
    if (2 * (fx->n_budgets + 1) > fx->budget_cap && budget_grow(fx) != NBX_OK)
        return NBX_ENOMEM;
    const nbx_event *ev = &x->ev;
    uint32_t day = nbx_day_of(ev->ts_ms);
    uint32_t mask = fx->budget_cap - 1;
    uint32_t h = (uint32_t)nbx_hash64(ev->offer.ptr, ev->offer.len, day) & mask;
    nbx_fx_budget *b = fx->budgets;
    while (b[h].used && !(b[h].day == day && nbx_sv_eq(b[h].offer, ev->offer)))
        h = (h + 1) & mask;
    if (!b[h].used) {
        b[h] = (nbx_fx_budget){.offer = ev->offer, .day = day, .used = true, .event = x};
        fx->n_budgets++;
    }
    b[h].n[ev->type == NBX_EV_ACCEPT]++;
    return NBX_OK;
}

static int budget_cmp(const void *x, const void *y)
{
    const nbx_fx_budget *a = x, *b = y;
    if (a->day != b->day)
        return a->day < b->day ? -1 : 1;
    return nbx_sv_cmp(a->offer, b->offer);
}

static void budget_clear(nbx_effects *fx)
{
    if (fx->n_budgets)
        memset(fx->budgets, 0, fx->budget_cap * sizeof *fx->budgets);
    fx->n_budgets = 0;
}

static int budget_write(nbx_effects *fx, const nbx_fx_budget *b, nbx_err *e)
{
    char key[4 + NBX_OFFER_ID_MAX];
    MDB_val k = {nbx_budget_key(key, b->day, b->offer), key}, v;
    uint64_t counts[2] = {0, 0};
    int rc = mdb_get(fx->txn, fx->store->budgets, &k, &v);
    if (rc == 0) {
        if ((rc = nbx_budget_decode(v.mv_data, v.mv_size, b->offer, counts, e)))
            return rc;
    } else if (rc != MDB_NOTFOUND) {
        return nbx_err_mdb(e, rc, "reading budget counters");
    }
    counts[0] += b->n[0];
    counts[1] += b->n[1];
    char buf[NBX_BUDGET_VALUE_MAX];
    v.mv_size = nbx_budget_encode(counts, buf);
    v.mv_data = buf;
    rc = mdb_put(fx->txn, fx->store->budgets, &k, &v, 0);
    return rc ? nbx_err_mdb(e, rc, "writing budget counters") : NBX_OK;
}

/* The transaction's budget rows in key order (day, then offer). */
static int budgets_write(nbx_effects *fx, nbx_err *e)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < fx->budget_cap; i++)
        if (fx->budgets[i].used)
            fx->budgets[n++] = fx->budgets[i];
    if (n > 1)
        qsort(fx->budgets, n, sizeof *fx->budgets, budget_cmp);
    int rc = NBX_OK;
    for (uint32_t i = 0; i < n && rc == NBX_OK; i++) {
        rc = budget_write(fx, &fx->budgets[i], e);
        if (rc)
            fx->failed = fx->budgets[i].event;
    }
    fx->n_budgets = n; /* what budget_clear must wipe */
    budget_clear(fx);
    return rc;
}

/* ========================================================================
 * Lifetime
 * ======================================================================== */

void nbx_effects_init(nbx_effects *fx, nbx_arena *arena, nbx_buf *scratch)
{
    memset(fx, 0, sizeof *fx);
    fx->rows = arena ? arena : &fx->own;
    fx->scratch = scratch;
    fx->budgets = fx->budget_inline;
    fx->budget_cap = NBX_ARRAY_LEN(fx->budget_inline);
    fx->refs = fx->ref_inline;
    fx->refs_cap = NBX_ARRAY_LEN(fx->ref_inline);
}

void nbx_effects_free(nbx_effects *fx)
{
    if (fx->budgets != fx->budget_inline)
        free(fx->budgets);
    if (fx->refs != fx->ref_inline)
        free(fx->refs);
    fx->budgets = fx->budget_inline;
    fx->refs = fx->ref_inline;
    nbx_arena_free(&fx->own);
}

/* Room for the next row: the own arena starts again, a caller's is kept. */
static nbx_arena *row_arena(nbx_effects *fx)
{
    if (fx->rows == &fx->own)
        nbx_arena_reset(&fx->own);
    return fx->rows;
}

int nbx_effects_begin(nbx_effects *fx, nbx_store *s, MDB_txn *txn, int64_t now_ms, nbx_err *e)
{
    fx->store = s;
    fx->txn = txn;
    fx->now_ms = now_ms;
    fx->applied = fx->suppressed = 0;
    fx->failed = NULL;
    fx->profiles = fx->customers = NULL;
    budget_clear(fx);
    int rc = nbx_suppressions_begin(s, txn, &fx->erased, e);
    if (rc)
        return rc;
    rc = mdb_cursor_open(txn, s->customers, &fx->customers);
    if (rc) {
        fx->customers = NULL;
        return nbx_err_mdb(e, rc, "recording events");
    }
    return NBX_OK;
}

static void close_cursors(nbx_effects *fx)
{
    if (fx->profiles)
        mdb_cursor_close(fx->profiles);
    if (fx->customers)
        mdb_cursor_close(fx->customers);
    fx->profiles = fx->customers = NULL;
}

int nbx_effects_end(nbx_effects *fx, nbx_err *e)
{
    close_cursors(fx);
    int rc = budgets_write(fx, e);
    if (rc == NBX_OK)
        rc = nbx_store_events_add(fx->store, fx->txn, (int64_t)fx->applied, e);
    return rc;
}

void nbx_effects_cancel(nbx_effects *fx)
{
    close_cursors(fx);
    budget_clear(fx);
}

/* ========================================================================
 * One customer's events
 * ======================================================================== */

int nbx_event_exposure_kind(int type)
{
    return type == NBX_EV_IMPRESSION ? NBX_EXP_IMPRESSION
           : type == NBX_EV_CLICK    ? NBX_EXP_CLICK
           : type == NBX_EV_ACCEPT   ? NBX_EXP_ACCEPT
                                     : NBX_EXP_DISMISS;
}

static int fail_at(nbx_effects *fx, const nbx_fx_event *x, int rc)
{
    fx->failed = x;
    return rc;
}

/* New exposures by offer, then arrival: the rows are written in key order
 * and each row's events in arrival order. */
static int ref_cmp(const void *x, const void *y)
{
    const nbx_fx_ref *a = x, *b = y;
    int c = nbx_sv_cmp(a->offer, b->offer);
    return c ? c : (a->i > b->i) - (a->i < b->i);
}

/* Most customers bring a handful of exposures: an insertion sort does one
 * comparison each when they are in order, without qsort's calls. */
static void refs_sort(nbx_fx_ref *r, uint32_t n)
{
    if (n > 16) {
        qsort(r, n, sizeof *r, ref_cmp);
        return;
    }
    for (uint32_t i = 1; i < n; i++) {
        nbx_fx_ref t = r[i];
        uint32_t j = i;
        while (j > 0 && ref_cmp(&r[j - 1], &t) > 0) {
            r[j] = r[j - 1];
            j--;
        }
        r[j] = t;
    }
}

static int refs_reserve(nbx_effects *fx, size_t n)
{
    if (n <= fx->refs_cap)
        return NBX_OK;
    nbx_fx_ref *bigger = malloc(n * sizeof *bigger);
    if (!bigger)
        return NBX_ENOMEM;
    if (fx->refs != fx->ref_inline)
        free(fx->refs);
    fx->refs = bigger;
    fx->refs_cap = n;
    return NBX_OK;
}

/* One counter row of the customer (offer empty: the all-offers row): one
 * read, the new exposures refs[from, to) in arrival order, one write. */
static int write_counters(nbx_effects *fx, const nbx_fx_event *evs, nbx_sv customer, nbx_sv offer,
                          uint32_t from, uint32_t to, nbx_err *e)
{
    const nbx_fx_event *first = &evs[fx->refs[from].i];
    char key[NBX_COUNTER_KEY_MAX];
    size_t klen = nbx_exposure_key(key, customer, offer);
    MDB_val k = {klen, key}, v;
    int found = mdb_cursor_get(fx->customers, &k, &v, MDB_SET_KEY);
    if (found != 0 && found != MDB_NOTFOUND)
        return fail_at(fx, first, nbx_err_mdb(e, found, "reading exposure counters"));
    nbx_arena *a = row_arena(fx);
    nbx_exposure x;
    memset(&x, 0, sizeof x);
    if (found == 0 && nbx_exposure_decode(v.mv_data, v.mv_size, &x, a) != NBX_OK)
        return fail_at(fx, first,
                       nbx_err_set(e, NBX_ECORRUPT, "exposure counters of '%.*s' cannot be decoded",
                                   (int)customer.len, customer.ptr));
    for (uint32_t j = from; j < to; j++) {
        const nbx_event *ev = &evs[fx->refs[j].i].ev;
        if (nbx_exposure_add(&x, nbx_event_exposure_kind(ev->type), ev->ts_ms, 1, fx->now_ms, a) !=
            NBX_OK)
            return fail_at(fx, first, nbx_err_set(e, NBX_ENOMEM, "out of memory"));
    }
    nbx_buf_reset(fx->scratch);
    if (nbx_exposure_encode(&x, fx->scratch) != NBX_OK)
        return fail_at(fx, first, nbx_err_set(e, NBX_ENOMEM, "out of memory"));
    MDB_val val = {fx->scratch->len, fx->scratch->data};
    /* after a hit, k points into the page the put rewrites */
    k = (MDB_val){klen, key};
    int rc = mdb_cursor_put(fx->customers, &k, &val, found == 0 ? MDB_CURRENT : 0);
    return rc ? fail_at(fx, first, nbx_err_mdb(e, rc, "writing exposure counters")) : NBX_OK;
}

/* ========================================================================
 * Purchase aggregates: an import's base and the purchases after it
 *
 * Two sources write a customer's purchase aggregates: profile imports (a
 * CRM's history) and purchase events. An import's figures are kept as the
 * profile's base, complete up to its as_of; the aggregates are the base
 * plus every purchase event dated after as_of (earlier ones are in the base
 * already). So importing the same file again changes nothing, and an import
 * never rolls back purchases that events added after its as_of
 * (docs/data-model.md, "Which source wins").
 * ======================================================================== */

static void aggregates_add(nbx_rfm *r, const nbx_event *ev)
{
    r->orders++;
    r->revenue += ev->amount;
    if (!isnan(ev->margin))
        r->margin += ev->margin;
    if (!r->first_purchase || ev->ts_ms < r->first_purchase)
        r->first_purchase = ev->ts_ms;
    if (ev->ts_ms > r->last_purchase)
        r->last_purchase = ev->ts_ms;
}

/* Does this purchase count in the aggregates, or is it in the base? */
static bool after_base(const nbx_profile *p, const nbx_event *ev)
{
    return !(p->fields & NBX_PF_RFM_BASE) || ev->ts_ms > p->rfm_base.as_of;
}

void nbx_profile_settle_base(nbx_profile *p)
{
    if (!(p->fields & NBX_PF_RFM_REBASE))
        return;
    p->fields &= ~(unsigned)NBX_PF_RFM_REBASE;
    const nbx_rfm_base *b = &p->rfm_base;
    nbx_rfm *r = &p->rfm;
    r->first_purchase = b->first_purchase;
    r->last_purchase = b->last_purchase;
    r->orders = b->orders;
    r->revenue = b->revenue;
    r->margin = b->margin;
}

int nbx_profile_settle(nbx_store *s, MDB_txn *txn, nbx_profile *p, nbx_err *e)
{
    if (!(p->fields & NBX_PF_RFM_REBASE))
        return NBX_OK;
    nbx_profile_settle_base(p);
    char prefix[NBX_ID_MAX + 2];
    size_t n = nbx_customer_prefix(prefix, p->id);
    prefix[n++] = NBX_TAG_EVENT;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->customers, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "reading a customer's purchases");
    MDB_val k = {n, prefix}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; rc == 0 && k.mv_size >= n && memcmp(k.mv_data, prefix, n) == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        nbx_event ev = {0};
        if (nbx_event_record_decode(v.mv_data, v.mv_size, &ev) != NBX_OK) {
            mdb_cursor_close(cur);
            return nbx_err_set(e, NBX_ECORRUPT,
                               "customer '%.*s': an event record cannot be decoded", (int)p->id.len,
                               p->id.ptr);
        }
        if (ev.type == NBX_EV_PURCHASE && after_base(p, &ev))
            aggregates_add(&p->rfm, &ev);
    }
    mdb_cursor_close(cur);
    return rc == 0 || rc == MDB_NOTFOUND ? NBX_OK
                                         : nbx_err_mdb(e, rc, "reading a customer's purchases");
}

/* A purchase event's effect on the profile (exists false: p holds only its
 * id and becomes a new profile). false: it is in the import's base. */
static bool add_purchase(nbx_profile *p, bool exists, const nbx_event *ev, int64_t now_ms)
{
    if (!exists) {
        /* Purchases may arrive before the CRM's profile import. */
        nbx_sv id = p->id;
        memset(p, 0, sizeof *p);
        p->id = id;
        p->fields = NBX_PF_ATTRS | NBX_PF_CONSENT | NBX_PF_PROPENSITY;
    }
    if (!after_base(p, ev))
        return false;
    nbx_rfm *r = &p->rfm;
    if (!(p->fields & NBX_PF_RFM))
        memset(r, 0, sizeof *r);
    p->fields |= NBX_PF_RFM;
    aggregates_add(r, ev);
    p->updated_at = now_ms;
    return true;
}

/* The customer's new purchases among evs[0, n): one read of the profile,
 * each purchase in arrival order, one write. */
static int write_purchases(nbx_effects *fx, const nbx_fx_event *evs, size_t n, nbx_sv customer,
                           nbx_err *e)
{
    const nbx_fx_event *first = NULL;
    for (size_t j = 0; j < n && !first; j++)
        if (evs[j].outcome == NBX_RECORD_APPLIED && evs[j].ev.type == NBX_EV_PURCHASE)
            first = &evs[j];
    if (!fx->profiles) {
        int rc = mdb_cursor_open(fx->txn, fx->store->profiles, &fx->profiles);
        if (rc) {
            fx->profiles = NULL;
            return fail_at(fx, first, nbx_err_mdb(e, rc, "recording a purchase"));
        }
    }
    MDB_val k = {customer.len, (void *)customer.ptr}, v;
    int found = mdb_cursor_get(fx->profiles, &k, &v, MDB_SET_KEY);
    if (found != 0 && found != MDB_NOTFOUND)
        return fail_at(fx, first, nbx_err_mdb(e, found, "reading a profile"));
    nbx_arena *a = row_arena(fx);
    nbx_profile p = {.id = customer};
    if (found == 0) {
        int rc = nbx_profile_decode(v.mv_data, v.mv_size, &p, a, e);
        if (rc)
            return fail_at(fx, first, rc);
    }
    bool exists = found == 0, changed = false;
    for (size_t j = 0; j < n; j++) {
        if (evs[j].outcome == NBX_RECORD_APPLIED && evs[j].ev.type == NBX_EV_PURCHASE) {
            changed |= add_purchase(&p, exists, &evs[j].ev, fx->now_ms);
            exists = true;
        }
    }
    if (!changed) /* every purchase is in the import's base already */
        return NBX_OK;
    nbx_buf_reset(fx->scratch);
    if (nbx_profile_encode(&p, fx->scratch) != NBX_OK)
        return fail_at(fx, first, nbx_err_set(e, NBX_ENOMEM, "out of memory"));
    MDB_val val = {fx->scratch->len, fx->scratch->data};
    k = (MDB_val){customer.len, (void *)customer.ptr};
    int rc = mdb_cursor_put(fx->profiles, &k, &val, found == 0 ? MDB_CURRENT : 0);
    return rc ? fail_at(fx, first, nbx_err_mdb(e, rc, "writing a profile")) : NBX_OK;
}

int nbx_effects_customer(nbx_effects *fx, nbx_fx_event *evs, size_t n, nbx_err *e)
{
    if (n == 0)
        return NBX_OK;
    nbx_sv customer = evs[0].ev.customer;
    fx->failed = NULL;
    int erased = nbx_suppressed(fx->store, fx->txn, &fx->erased, customer, e);
    if (erased < 0)
        return fail_at(fx, &evs[0], erased);
    if (erased) {
        for (size_t j = 0; j < n; j++)
            evs[j].outcome = NBX_RECORD_SUPPRESSED;
        fx->suppressed += n;
        return NBX_OK;
    }
    if (refs_reserve(fx, n) != NBX_OK)
        return fail_at(fx, &evs[0], nbx_err_set(e, NBX_ENOMEM, "out of memory"));

    /* 1. the records: which events are new */
    uint32_t n_exposures = 0;
    bool purchases = false;
    for (size_t j = 0; j < n; j++) {
        nbx_fx_event *x = &evs[j];
        MDB_val k = x->key, v = x->val;
        int rc = mdb_cursor_put(fx->customers, &k, &v, MDB_NOOVERWRITE);
        if (rc == MDB_KEYEXIST) {
            x->outcome = NBX_RECORD_DUPLICATE;
            continue;
        }
        if (rc)
            return fail_at(fx, x, nbx_err_mdb(e, rc, "recording an event"));
        x->outcome = NBX_RECORD_APPLIED;
        fx->applied++;
        if (x->ev.type == NBX_EV_PURCHASE)
            purchases = true;
        else
            fx->refs[n_exposures++] = (nbx_fx_ref){x->ev.offer, (uint32_t)j};
    }

    /* 2, 3. counters (the all-offers row, then each offer's: key order)
     * and budgets */
    int rc = NBX_OK;
    if (n_exposures) {
        refs_sort(fx->refs, n_exposures);
        rc = write_counters(fx, evs, customer, (nbx_sv){"", 0}, 0, n_exposures, e);
        for (uint32_t g = 0, h; rc == NBX_OK && g < n_exposures; g = h) {
            for (h = g + 1; h < n_exposures && nbx_sv_eq(fx->refs[h].offer, fx->refs[g].offer);)
                h++;
            rc = write_counters(fx, evs, customer, fx->refs[g].offer, g, h, e);
        }
        for (uint32_t j = 0; rc == NBX_OK && j < n_exposures; j++) {
            const nbx_fx_event *x = &evs[fx->refs[j].i];
            if ((x->ev.type == NBX_EV_IMPRESSION || x->ev.type == NBX_EV_ACCEPT) &&
                budget_count(fx, x) != NBX_OK)
                rc = fail_at(fx, x, nbx_err_set(e, NBX_ENOMEM, "out of memory"));
        }
    }

    /* 4. purchases */
    if (rc == NBX_OK && purchases)
        rc = write_purchases(fx, evs, n, customer, e);
    return rc;
}

/* ========================================================================
 * Profile imports
 * ======================================================================== */

int nbx_profile_store(nbx_store *s, MDB_txn *txn, MDB_cursor *cur, const nbx_profile *stored,
                      const MDB_val *stored_value, nbx_profile *p, bool dated, int64_t now_ms,
                      bool append, nbx_buf *scratch, nbx_err *e)
{
    int rc = stored ? nbx_profile_settle(s, txn, p, e) : (nbx_profile_settle_base(p), NBX_OK);
    if (rc)
        return rc;
    int64_t updated_at = dated ? p->updated_at : now_ms;
    nbx_buf_reset(scratch);
    if (stored) {
        /* An import that changes nothing leaves every byte, updated_at too,
         * even when it gives one: updated_at is when the profile last
         * changed, and importing a file again must be harmless. */
        p->updated_at = stored->updated_at;
        if (nbx_profile_encode(p, scratch) != NBX_OK)
            return nbx_err_set(e, NBX_ENOMEM, "out of memory");
        if (scratch->len == stored_value->mv_size &&
            memcmp(scratch->data, stored_value->mv_data, scratch->len) == 0)
            return NBX_OK;
        nbx_buf_reset(scratch);
    }
    p->updated_at = updated_at;
    if (nbx_profile_encode(p, scratch) != NBX_OK)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    MDB_val k = {p->id.len, (void *)p->id.ptr}, v = {scratch->len, scratch->data};
    rc = mdb_cursor_put(cur, &k, &v, stored ? MDB_CURRENT : append ? MDB_APPEND : 0);
    return rc ? nbx_err_mdb(e, rc, "writing a profile") : NBX_OK;
}

int nbx_profile_import_txn(nbx_store *s, MDB_txn *txn, const nbx_profile *patch, int64_t now_ms,
                           nbx_arena *a, nbx_buf *scratch, nbx_err *e)
{
    nbx_suppressions erased;
    int rc = nbx_suppressions_begin(s, txn, &erased, e);
    if (rc == NBX_OK && (rc = nbx_suppressed(s, txn, &erased, patch->id, e)) == 1)
        rc = nbx_err_set(e, NBX_EINVAL,
                         "customer '%.*s' was erased: data for it is refused until it is "
                         "restored (nbx profile restore)",
                         (int)patch->id.len, patch->id.ptr);
    if (rc)
        return rc;
    MDB_cursor *cur;
    rc = mdb_cursor_open(txn, s->profiles, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "writing a profile");
    MDB_val k = {patch->id.len, (void *)patch->id.ptr}, v;
    int found = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY);
    nbx_profile base = {.id = patch->id}, merged;
    if (found == 0)
        rc = nbx_profile_decode(v.mv_data, v.mv_size, &base, a, e);
    else if (found != MDB_NOTFOUND)
        rc = nbx_err_mdb(e, found, "reading a profile");
    if (rc == NBX_OK)
        rc = nbx_profile_patch(found == 0 ? &base : NULL, patch, &merged, a, e);
    if (rc == NBX_OK)
        rc = nbx_profile_store(s, txn, cur, found == 0 ? &base : NULL, &v, &merged,
                               patch->fields & NBX_PF_UPDATED_AT, now_ms, false, scratch, e);
    mdb_cursor_close(cur);
    return rc;
}

NBX_API int nbx_profile_put(nbx_store *store, const char *json, size_t len)
{
    if (!store || !json)
        return nbx_fail(store, NBX_EINVAL, "nbx_profile_put: NULL argument");
    if (len > NBX_LINE_MAX)
        return nbx_fail(store, NBX_ELIMIT, "profile JSON is %zu bytes, the limit is %d", len,
                        NBX_LINE_MAX);
    nbx_err e = {0};
    nbx_arena arena = {0};
    nbx_buf scratch = {0};
    nbx_profile patch;
    MDB_txn *txn = NULL;
    int rc = nbx_profile_parse(json, len, &patch, &arena, &e);
    if (rc == NBX_OK)
        rc = nbx_store_write_begin(store, &txn, &e);
    if (rc == NBX_OK)
        rc = nbx_profile_import_txn(store, txn, &patch, nbx_time_now(), &arena, &scratch, &e);
    if (rc == NBX_OK) {
        rc = nbx_store_commit(store, txn, &e);
        txn = NULL;
    }
    mdb_txn_abort(txn);
    nbx_arena_free(&arena);
    nbx_buf_free(&scratch);
    return rc ? nbx_publish(store, &e) : NBX_OK;
}

/* ========================================================================
 * One event
 * ======================================================================== */

int nbx_event_apply_txn(nbx_store *s, MDB_txn *txn, const nbx_event *ev, int *outcome, nbx_arena *a,
                        nbx_buf *scratch, nbx_err *e)
{
    *outcome = 0;
    /* The record fits on the stack: its strings are bounded by the parser
     * (offer and placement ids) and its numbers are at most 9 bytes each. */
    if (ev->offer.len > NBX_OFFER_ID_MAX || ev->placement.len > NBX_OFFER_ID_MAX ||
        ev->customer.len + ev->id.len > NBX_EVENT_IDS_MAX)
        return nbx_err_set(e, NBX_EINVAL, "event: an id is longer than the store's keys allow");
    char key[NBX_EVENT_KEY_MAX];
    char val[NBX_EVENT_RECORD_MAX];
    nbx_buf record = {.data = val, .cap = sizeof val};
    if (nbx_event_record_encode(ev, &record) != NBX_OK)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    nbx_fx_event x = {.ev = *ev,
                      .key = {nbx_event_key(key, ev->customer, ev->id), key},
                      .val = {record.len, val}};
    nbx_effects fx;
    nbx_effects_init(&fx, a, scratch);
    int rc = nbx_effects_begin(&fx, s, txn, nbx_time_now(), e);
    if (rc == NBX_OK)
        rc = nbx_effects_customer(&fx, &x, 1, e);
    if (rc == NBX_OK)
        rc = nbx_effects_end(&fx, e);
    else
        nbx_effects_cancel(&fx);
    nbx_effects_free(&fx);
    if (rc == NBX_OK)
        *outcome = x.outcome;
    return rc;
}
