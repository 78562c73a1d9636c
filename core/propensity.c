/*
 * propensity.c: how a customer's propensity for an offer is resolved, the
 * one definition of the fallback chain: the profile's value for the offer
 * id, else for its category, else the offer's prior for the customer's RFM
 * segment, else the offer's base_propensity.
 *
 * Eligibility (caps.c) resolves every offer of the catalog once per
 * decision and hands the values, with where each came from, to the policy
 * and the explanation; the sandbox resolves one offer here only for a
 * caller that gave it no values (its own tests and trials). Both sit above
 * this file, which reads the profile and the catalog and nothing else.
 */
#include "nbx_int.h"

#include <math.h>

/* by_offer and by_category are the profile's values (NaN when it has
 * none); source, if not NULL, receives where the result came from. */
static double chain(const nbx_profile *p, const nbx_offer *o, double by_offer, double by_category,
                    uint8_t *source)
{
    uint8_t from;
    double v;
    if (!isnan(by_offer)) {
        from = NBX_PSRC_OFFER, v = by_offer;
    } else if (!isnan(by_category)) {
        from = NBX_PSRC_CATEGORY, v = by_category;
    } else if (p->rfm.segment && p->rfm.segment < NBX_SEGMENT_COUNT &&
               !isnan(o->segment_prior[p->rfm.segment])) {
        from = NBX_PSRC_SEGMENT, v = o->segment_prior[p->rfm.segment];
    } else {
        from = NBX_PSRC_BASE, v = o->base_propensity;
    }
    if (source)
        *source = from;
    return v;
}

double nbx_offer_propensity(const nbx_profile *p, const nbx_offer *o)
{
    const nbx_prop *by_offer = nbx_profile_propensity(p, o->id);
    const nbx_prop *by_category = o->category.len ? nbx_profile_propensity(p, o->category) : NULL;
    return chain(p, o, by_offer ? by_offer->value : NAN, by_category ? by_category->value : NAN,
                 NULL);
}

const char *nbx_propensity_source_name(int source)
{
    static const char *const names[] = {NULL, "offer", "category", "segment", "base"};
    return source > 0 && source < (int)NBX_ARRAY_LEN(names) ? names[source] : NULL;
}

/* out[j] = the profile's value for keys[j] (sorted), NaN when absent. */
static void join_keys(const nbx_profile *p, const nbx_sv *keys, size_t stride, uint32_t n,
                      double *out)
{
    uint32_t i = 0, j = 0;
    while (j < n) {
        const nbx_sv *key = (const nbx_sv *)(const void *)((const char *)keys + j * stride);
        int cmp = i < p->n_propensity ? nbx_sv_cmp(p->propensity[i].key, *key) : 1;
        if (cmp < 0) {
            i++;
        } else {
            out[j++] = cmp == 0 ? p->propensity[i].value : NAN;
        }
    }
}

void nbx_propensities(const nbx_catalog *cat, const nbx_profile *p, double *out, uint8_t *source,
                      double *category_scratch)
{
    join_keys(p, &cat->offers[0].id, sizeof(nbx_offer), cat->n_offers, out);
    join_keys(p, cat->categories, sizeof(nbx_sv), cat->n_categories, category_scratch);
    for (uint32_t k = 0; k < cat->n_offers; k++) {
        /* the common case first: the profile has the offer's own value */
        if (!isnan(out[k])) {
            source[k] = NBX_PSRC_OFFER;
            continue;
        }
        const nbx_offer *o = &cat->offers[k];
        double by_category =
            o->category_index != UINT32_MAX ? category_scratch[o->category_index] : NAN;
        out[k] = chain(p, o, out[k], by_category, &source[k]);
    }
}
