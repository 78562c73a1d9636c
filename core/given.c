/*
 * given.c: exposure counters a request gives instead of the store's
 * (nbx_request.exposures_json): a test case of `nbx policy test`, a
 * what-if. The customer's history is written as the counts a reader thinks
 * in ("shown 3 times, the last on March 1st") and turned into the day
 * buckets the store keeps (exposure.c), so eligibility and the policy read
 * it exactly as they read stored counters: the same windows, the same caps,
 * the same words in explanations.
 *
 *   {"o001": {"impressions": 3, "last_impression": "2026-03-01T10:00:00Z",
 *             "clicks": 1, "accepts": 0, "dismisses": 1,
 *             "last_dismiss": "2026-02-20T00:00:00Z"}}
 *
 * Each kind's events are dated at its last_* time, or at the decision's
 * clock when none is given. The all-offers row (the contact policy) is the
 * sum of every offer's impressions, as the store's is.
 */
#include "nbx_int.h"

#include <string.h>

/* Counts per kind: far beyond any cap, small enough that sums stay exact. */
#define GIVEN_COUNT_MAX 1000000

static const char *const count_names[NBX_EXP_KINDS] = {"impressions", "clicks", "accepts",
                                                       "dismisses"};
static const char *const last_names[NBX_EXP_KINDS] = {"last_impression", "last_click",
                                                      "last_accept", "last_dismiss"};

typedef struct given_row {
    uint32_t n[NBX_EXP_KINDS];
    int64_t last[NBX_EXP_KINDS]; /* ms; 0: not given */
    bool has_last[NBX_EXP_KINDS];
} given_row;

static int field_error(nbx_jr *r, nbx_sv offer, const char *field, nbx_err *e)
{
    return nbx_err_set(e, NBX_EINVAL, "field 'exposures.%.*s%s%s': %s", (int)offer.len,
                       offer.ptr, field ? "." : "", field ? field : "", r->err);
}

static int read_time(nbx_jr *r, nbx_sv offer, const char *field, int64_t *out, nbx_err *e)
{
    nbx_jtype t = nbx_jr_peek(r);
    if (t == NBX_J_NUMBER) {
        double secs;
        if (!nbx_jr_number(r, &secs))
            return field_error(r, offer, field, e);
        if (nbx_time_from_secs(secs, out) == NBX_OK)
            return NBX_OK;
    } else if (t == NBX_J_STRING) {
        nbx_sv s;
        if (!nbx_jr_string(r, &s))
            return field_error(r, offer, field, e);
        if (nbx_time_parse_n(s.ptr, s.len, out) == NBX_OK)
            return NBX_OK;
    }
    return nbx_err_set(e, NBX_EINVAL,
                       "field 'exposures.%.*s.%s': must be an RFC 3339 time or epoch seconds "
                       "(years 0001 to 9999)",
                       (int)offer.len, offer.ptr, field);
}

static int read_count(nbx_jr *r, nbx_sv offer, const char *field, uint32_t *out, nbx_err *e)
{
    double v;
    if (nbx_jr_peek(r) != NBX_J_NUMBER || !nbx_jr_number(r, &v) || v < 0 ||
        v > GIVEN_COUNT_MAX || v != (double)(uint32_t)v)
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'exposures.%.*s.%s': must be a whole number from 0 to %d",
                           (int)offer.len, offer.ptr, field, GIVEN_COUNT_MAX);
    *out = (uint32_t)v;
    return NBX_OK;
}

static int read_row(nbx_jr *r, nbx_sv offer, given_row *row, nbx_err *e)
{
    memset(row, 0, sizeof *row);
    if (nbx_jr_peek(r) != NBX_J_OBJECT || !nbx_jr_object_begin(r))
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'exposures.%.*s': must be an object of counts and times",
                           (int)offer.len, offer.ptr);
    nbx_sv key;
    int more;
    while ((more = nbx_jr_object_next(r, &key)) == 1) {
        int kind = -1, rc = NBX_OK;
        for (int k = 0; k < NBX_EXP_KINDS && kind < 0; k++) {
            if (nbx_sv_eq_cstr(key, count_names[k])) {
                kind = k;
                rc = read_count(r, offer, count_names[k], &row->n[k], e);
            } else if (nbx_sv_eq_cstr(key, last_names[k])) {
                kind = k;
                rc = read_time(r, offer, last_names[k], &row->last[k], e);
                row->has_last[k] = true;
            }
        }
        if (kind < 0)
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'exposures.%.*s.%.*s': unknown (known: impressions, clicks, "
                               "accepts, dismisses, last_impression, last_click, last_accept, "
                               "last_dismiss)",
                               (int)offer.len, offer.ptr, (int)(key.len > 64 ? 64 : key.len),
                               key.ptr);
        if (rc)
            return rc;
    }
    return more == 0 ? NBX_OK : field_error(r, offer, NULL, e);
}

/* The row as the store would hold it after these events. */
static int row_exposure(const given_row *row, int64_t now_ms, nbx_exposure *x, nbx_exposure *all,
                        nbx_arena *a)
{
    memset(x, 0, sizeof *x);
    for (int k = 0; k < NBX_EXP_KINDS; k++) {
        if (!row->n[k] && !row->has_last[k])
            continue;
        int64_t at = row->has_last[k] ? row->last[k] : now_ms;
        if (nbx_exposure_add(x, k, at, row->n[k], now_ms, a) != NBX_OK)
            return NBX_ENOMEM;
        if (k == NBX_EXP_IMPRESSION && nbx_exposure_add(all, k, at, row->n[k], now_ms, a) != NBX_OK)
            return NBX_ENOMEM;
    }
    return NBX_OK;
}

int nbx_given_exposures(nbx_caps *c, const char *json, size_t len, int64_t now_ms, nbx_arena *a,
                        nbx_err *e)
{
    const nbx_catalog *cat = c->catalog;
    nbx_jr r;
    nbx_jr_init(&r, json, len, a);
    if (nbx_jr_peek(&r) != NBX_J_OBJECT || !nbx_jr_object_begin(&r))
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'exposures': must be an object of offer id -> counts (%s)",
                           r.err[0] ? r.err : "not an object");
    nbx_exposure all;
    memset(&all, 0, sizeof all);
    uint8_t *seen = nbx_arena_alloc(a, cat->n_offers ? cat->n_offers : 1);
    if (!seen)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory reading exposures");
    memset(seen, 0, cat->n_offers);
    nbx_caps_clear_exposures(c);
    uint32_t today = nbx_day_of(now_ms);
    nbx_sv offer;
    int more;
    while ((more = nbx_jr_object_next(&r, &offer)) == 1) {
        const nbx_offer *o = nbx_catalog_offer(cat, offer);
        if (!o)
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'exposures.%.*s': not an offer of the catalog",
                               (int)(offer.len > 128 ? 128 : offer.len), offer.ptr);
        if (seen[o->index])
            return nbx_err_set(e, NBX_EINVAL, "field 'exposures.%.*s': given twice",
                               (int)offer.len, offer.ptr);
        seen[o->index] = 1;
        given_row row;
        nbx_exposure x;
        int rc = read_row(&r, offer, &row, e);
        if (rc == NBX_OK && row_exposure(&row, now_ms, &x, &all, a) != NBX_OK)
            rc = nbx_err_set(e, NBX_ENOMEM, "out of memory reading exposures");
        if (rc)
            return rc;
        nbx_caps_set_exposure(c, o, &x, today, now_ms);
    }
    if (more != 0 || !nbx_jr_finish(&r))
        return nbx_err_set(e, NBX_EINVAL, "field 'exposures': %s (column %zu)", r.err,
                           nbx_jr_column(&r));
    nbx_caps_set_contacts(c, &all, today);
    return NBX_OK;
}
