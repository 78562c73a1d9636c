/*
 * caps.c: eligibility (consent, frequency caps, dismiss cooldown, contact
 * policy, daily budgets, validity), and exclusions in words. The guardrails
 * enforced after the policy depend on the offer alone: catalog.c decides
 * them once per catalog load.
 *
 * Everything here reads state gathered once per decision by nbx_caps_load:
 * the customer's consent per purpose, one cursor range over the customer's
 * counters and, when the catalog has budgets, one range over today's budget
 * keys, both joined against the catalog in offer-id order. No per-offer lookups, no allocation per
 * offer.
 */
#include "nbx_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Window for counts given to the policy when an offer sets no cap. */
#define NBX_DEFAULT_WINDOW_DAYS 30

int nbx_caps_init(nbx_caps *c, const nbx_catalog *catalog)
{
    memset(c, 0, sizeof *c);
    c->catalog = catalog;
    size_t n = catalog->n_offers ? catalog->n_offers : 1;
    c->summary = calloc(n, sizeof *c->summary);
    c->has_summary = calloc(n, 1);
    c->consented = calloc(catalog->n_purposes ? catalog->n_purposes : 1, 1);
    c->propensity = calloc(n, sizeof *c->propensity);
    c->propensity_source = calloc(n, 1);
    c->category_propensity =
        calloc(catalog->n_categories ? catalog->n_categories : 1, sizeof *c->category_propensity);
    c->budget_impressions = calloc(n, sizeof *c->budget_impressions);
    c->budget_accepts = calloc(n, sizeof *c->budget_accepts);
    c->killed = calloc(n, 1);
    if (!c->summary || !c->has_summary || !c->consented || !c->propensity ||
        !c->category_propensity || !c->budget_impressions || !c->budget_accepts || !c->killed) {
        nbx_caps_free(c);
        return NBX_ENOMEM;
    }
    return NBX_OK;
}

void nbx_caps_free(nbx_caps *c)
{
    free(c->summary);
    free(c->has_summary);
    free(c->consented);
    free(c->propensity);
    free(c->propensity_source);
    free(c->category_propensity);
    free(c->budget_impressions);
    free(c->budget_accepts);
    free(c->killed);
    memset(c, 0, sizeof *c);
}

/* Advance *j over catalog offers until offers[*j].id >= id; true on a match. */
static bool join_offer(const nbx_catalog *cat, uint32_t *j, nbx_sv id)
{
    while (*j < cat->n_offers) {
        int cmp = nbx_sv_cmp(cat->offers[*j].id, id);
        if (cmp == 0)
            return true;
        if (cmp > 0)
            return false;
        (*j)++;
    }
    return false;
}

/* Counts in the offer's windows up to today, and the last times: a last
 * time after the decision's clock (a replay with --as-of) is not known as
 * of then, so it reads as never (the day counts still hold what happened up
 * to today). */
static void summarise(const nbx_offer *o, const nbx_exposure *x, uint32_t today, int64_t now_ms,
                      nbx_exposure_summary *s)
{
    uint32_t imp_days =
        o->impressions.window_days ? o->impressions.window_days : NBX_DEFAULT_WINDOW_DAYS;
    uint32_t acc_days = o->accepts.window_days ? o->accepts.window_days : NBX_DEFAULT_WINDOW_DAYS;
    uint32_t dis_days =
        o->dismiss_cooldown_days ? o->dismiss_cooldown_days : NBX_DEFAULT_WINDOW_DAYS;
    s->impressions = nbx_exposure_count(x, NBX_EXP_IMPRESSION, today, imp_days);
    s->clicks = nbx_exposure_count(x, NBX_EXP_CLICK, today, imp_days);
    s->accepts = nbx_exposure_count(x, NBX_EXP_ACCEPT, today, acc_days);
    s->dismisses = nbx_exposure_count(x, NBX_EXP_DISMISS, today, dis_days);
    s->last_impression = x->last[NBX_EXP_IMPRESSION] <= now_ms ? x->last[NBX_EXP_IMPRESSION] : 0;
    s->last_accept = x->last[NBX_EXP_ACCEPT] <= now_ms ? x->last[NBX_EXP_ACCEPT] : 0;
    s->last_dismiss = x->last[NBX_EXP_DISMISS] <= now_ms ? x->last[NBX_EXP_DISMISS] : 0;
    s->dismiss_later = x->last[NBX_EXP_DISMISS] > now_ms;
}

static int load_exposures(nbx_caps *c, nbx_store *s, MDB_txn *txn, nbx_sv customer, uint32_t today,
                          int64_t now_ms, nbx_arena *a, nbx_err *e)
{
    const nbx_catalog *cat = c->catalog;
    memset(c->has_summary, 0, cat->n_offers);
    c->contacts = 0;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->customers, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "reading exposure counters");
    /* the counters sub-range only: the customer's event records follow it */
    char prefix[NBX_ID_MAX + 2];
    size_t plen = nbx_exposure_key(prefix, customer, (nbx_sv){"", 0});
    MDB_val k = {plen, prefix}, v;
    uint32_t j = 0;
    int status = NBX_OK;
    uint64_t h = 0;
    bool any = false;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
            break;
        if (c->hash_exposures) {
            h = nbx_hash64(k.mv_data, k.mv_size, h);
            h = nbx_hash64(v.mv_data, v.mv_size, h);
            any = true;
        }
        nbx_sv offer = {(const char *)k.mv_data + plen, k.mv_size - plen};
        bool all_offers = offer.len == 0;
        if (!all_offers && !join_offer(cat, &j, offer))
            continue; /* counters of an offer no longer in the catalog */
        nbx_exposure x;
        if (nbx_exposure_decode(v.mv_data, v.mv_size, &x, a) != NBX_OK) {
            status = nbx_err_set(e, NBX_ECORRUPT, "exposure counters of '%.*s' cannot be decoded",
                                 (int)customer.len, customer.ptr);
            break;
        }
        if (all_offers) {
            const nbx_cap *mc = &cat->guardrails.max_contacts;
            if (mc->window_days)
                c->contacts = nbx_exposure_count(&x, NBX_EXP_IMPRESSION, today, mc->window_days);
        } else {
            summarise(&cat->offers[j], &x, today, now_ms, &c->summary[j]);
            c->has_summary[j] = 1;
        }
    }
    if (status == NBX_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = nbx_err_mdb(e, rc, "reading exposure counters");
    mdb_cursor_close(cur);
    /* 0 stands for "no counters"; a real hash of 0 is taken as 1 */
    c->exposures_hash = any ? (h ? h : 1) : 0;
    return status;
}

static int load_budgets(nbx_caps *c, nbx_store *s, MDB_txn *txn, uint32_t today, nbx_err *e)
{
    const nbx_catalog *cat = c->catalog;
    size_t txn_id = mdb_txn_id(txn);
    if (c->budget_valid && c->budget_txn_id == txn_id && c->budget_day == today)
        return NBX_OK;
    memset(c->budget_impressions, 0, cat->n_offers * sizeof *c->budget_impressions);
    memset(c->budget_accepts, 0, cat->n_offers * sizeof *c->budget_accepts);
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->budgets, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "reading budgets");
    char prefix[4];
    nbx_budget_key(prefix, today, (nbx_sv){"", 0});
    MDB_val k = {4, prefix}, v;
    uint32_t j = 0;
    int status = NBX_OK;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < 4 || memcmp(k.mv_data, prefix, 4) != 0)
            break;
        nbx_sv offer = {(const char *)k.mv_data + 4, k.mv_size - 4};
        if (!join_offer(cat, &j, offer))
            continue;
        uint64_t counts[2];
        if ((status = nbx_budget_decode(v.mv_data, v.mv_size, offer, counts, e)))
            break;
        c->budget_impressions[j] = counts[0];
        c->budget_accepts[j] = counts[1];
    }
    if (status == NBX_OK && rc != 0 && rc != MDB_NOTFOUND)
        status = nbx_err_mdb(e, rc, "reading budgets");
    mdb_cursor_close(cur);
    if (status == NBX_OK) {
        c->budget_valid = true;
        c->budget_txn_id = txn_id;
        c->budget_day = today;
    }
    return status;
}

/* Catalogs have a handful of purposes and many offers: a lookup per
 * purpose here (offers', channels' and personalisation's alike), not one
 * per candidate. */
static void load_consents(nbx_caps *c, const nbx_profile *p)
{
    const nbx_catalog *cat = c->catalog;
    for (uint32_t k = 0; k < cat->n_purposes; k++) {
        const nbx_consent *x = nbx_profile_consent(p, cat->purposes[k]);
        c->consented[k] = x ? x->state == 1 : cat->guardrails.consent_default;
    }
}

void nbx_caps_clear_exposures(nbx_caps *c)
{
    memset(c->has_summary, 0, c->catalog->n_offers);
    c->contacts = 0;
}

void nbx_caps_set_exposure(nbx_caps *c, const nbx_offer *o, const nbx_exposure *x, uint32_t today,
                           int64_t now_ms)
{
    summarise(o, x, today, now_ms, &c->summary[o->index]);
    c->has_summary[o->index] = 1;
}

void nbx_caps_set_contacts(nbx_caps *c, const nbx_exposure *all, uint32_t today)
{
    const nbx_cap *mc = &c->catalog->guardrails.max_contacts;
    c->contacts =
        mc->window_days ? nbx_exposure_count(all, NBX_EXP_IMPRESSION, today, mc->window_days) : 0;
}

int nbx_caps_load(nbx_caps *c, nbx_store *s, MDB_txn *txn, const nbx_profile *p, uint32_t channel,
                  int64_t now_ms, nbx_arena *a, nbx_err *e)
{
    uint32_t today = nbx_day_of(now_ms);
    load_consents(c, p);
    c->exposures_hash = 0;
    c->channel = channel;
    c->channel_refused = channel != UINT32_MAX && !c->consented[channel];
    if (!s || !txn) {
        /* No store (a trial, a test): nothing shown, nothing spent. */
        memset(c->has_summary, 0, c->catalog->n_offers);
        c->contacts = 0;
        memset(c->budget_impressions, 0, c->catalog->n_offers * sizeof *c->budget_impressions);
        memset(c->budget_accepts, 0, c->catalog->n_offers * sizeof *c->budget_accepts);
        c->budget_valid = false;
        return NBX_OK;
    }
    int rc = load_exposures(c, s, txn, p->id, today, now_ms, a, e);
    if (rc == NBX_OK && c->catalog->has_budgets)
        rc = load_budgets(c, s, txn, today, e);
    return rc;
}

/* ========================================================================
 * Checks
 * ======================================================================== */

static uint64_t planned_impressions(const nbx_caps *c, const nbx_offer *o)
{
    return c->plan ? atomic_load_explicit(&c->plan->impressions[o->index], memory_order_relaxed)
                   : 0;
}

void nbx_caps_kills(nbx_caps *c, const nbx_kills *k)
{
    c->kills = k;
    uint64_t version = k ? k->version : 0;
    if (c->killed_valid && c->kills_version == version)
        return;
    const nbx_catalog *cat = c->catalog;
    bool any = k && k->n_kind[NBX_KILL_OFFER];
    for (uint32_t i = 0; i < cat->n_offers; i++)
        c->killed[i] = any && nbx_offer_killed(k, cat->offers[i].id);
    c->kills_version = version;
    c->killed_valid = true;
}

static inline int check_offer(const nbx_caps *c, const nbx_offer *o, int64_t now_ms)
{
    const nbx_catalog *cat = c->catalog;
    if (c->killed[o->index])
        return NBX_EXCLUDED_KILLED;
    if (now_ms < o->valid_from || now_ms > o->valid_to)
        return NBX_EXCLUDED_VALIDITY;
    /* A contact through a channel uses the data for the channel's purpose
     * too: an email needs the email consent whatever the offer. */
    if (c->channel_refused || (o->purpose_index != UINT32_MAX && !c->consented[o->purpose_index]))
        return NBX_EXCLUDED_CONSENT;
    const nbx_cap *mc = &cat->guardrails.max_contacts;
    if (mc->window_days && c->contacts >= mc->max)
        return NBX_EXCLUDED_CONTACTS;
    if (c->has_summary[o->index]) {
        const nbx_exposure_summary *s = &c->summary[o->index];
        if (o->impressions.window_days && s->impressions >= o->impressions.max)
            return NBX_EXCLUDED_FREQUENCY;
        if (o->accepts.window_days && s->accepts >= o->accepts.max)
            return NBX_EXCLUDED_FREQUENCY;
        if (o->dismiss_cooldown_days && s->last_dismiss &&
            now_ms - s->last_dismiss < (int64_t)o->dismiss_cooldown_days * NBX_MS_PER_DAY)
            return NBX_EXCLUDED_COOLDOWN;
        /* replaying before the last dismiss: whether an earlier one falls in
         * the cooldown is known to the day, from the counts */
        if (o->dismiss_cooldown_days && !s->last_dismiss && s->dismiss_later && s->dismisses)
            return NBX_EXCLUDED_COOLDOWN;
    }
    if (o->budget_impressions >= 0 && c->budget_impressions[o->index] + planned_impressions(c, o) >=
                                          (uint64_t)o->budget_impressions)
        return NBX_EXCLUDED_BUDGET;
    if (o->budget_accepts >= 0 && c->budget_accepts[o->index] >= (uint64_t)o->budget_accepts)
        return NBX_EXCLUDED_BUDGET;
    return NBX_EXCLUDED_NONE;
}

int nbx_caps_check(const nbx_caps *c, const nbx_offer *o, int64_t now_ms)
{
    return check_offer(c, o, now_ms);
}

/* One call for a decision's candidates, the check inlined: there are a
 * hundred and more, and a call for each cost a quarter of the checks
 * (callgrind, a batch customer). */
void nbx_caps_check_candidates(const nbx_caps *c, nbx_candidate *cand, size_t n, int64_t now_ms)
{
    const nbx_offer *offers = c->catalog->offers;
    for (size_t i = 0; i < n; i++) {
        nbx_candidate *cd = &cand[i];
        cd->excluded = (uint8_t)check_offer(c, &offers[cd->offer], now_ms);
        if (c->has_summary[cd->offer])
            cd->exposure = &c->summary[cd->offer];
    }
}

bool nbx_caps_plan_impression(const nbx_caps *c, const nbx_offer *o, bool fallback)
{
    if (!c->plan || o->budget_impressions < 0)
        return true;
    _Atomic uint64_t *planned = &c->plan->impressions[o->index];
    if (fallback) {
        atomic_fetch_add_explicit(planned, 1, memory_order_relaxed);
        return true;
    }
    /* Compare and swap, not add then undo: another thread must never see a
     * count above the budget that no decision keeps. */
    uint64_t budget = (uint64_t)o->budget_impressions, stored = c->budget_impressions[o->index];
    uint64_t n = atomic_load_explicit(planned, memory_order_relaxed);
    do {
        if (stored + n >= budget)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(planned, &n, n + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    return true;
}

int nbx_budget_plan_open(nbx_catalog *catalog, nbx_budget_plan **out)
{
    *out = NULL;
    nbx_budget_plan *p = calloc(1, sizeof *p);
    if (!p)
        return NBX_ENOMEM;
    size_t n = catalog->n_offers ? catalog->n_offers : 1;
    p->impressions = calloc(n, sizeof *p->impressions);
    if (!p->impressions) {
        free(p);
        return NBX_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        atomic_init(&p->impressions[i], 0);
    p->catalog = nbx_catalog_ref(catalog);
    *out = p;
    return NBX_OK;
}

void nbx_budget_plan_close(nbx_budget_plan *p)
{
    if (!p)
        return;
    nbx_catalog_unref(p->catalog);
    free(p->impressions);
    free(p);
}

bool nbx_caps_personalized(const nbx_caps *c)
{
    uint32_t k = c->catalog->personalization_index;
    return k == UINT32_MAX || c->consented[k];
}

uint32_t nbx_caps_contacts_left(const nbx_caps *c)
{
    const nbx_cap *mc = &c->catalog->guardrails.max_contacts;
    if (!mc->window_days)
        return UINT32_MAX;
    return mc->max > c->contacts ? mc->max - c->contacts : 0;
}

int nbx_caps_recheck(const nbx_caps *c, const nbx_offer *o, int64_t now_ms, bool fallback,
                     uint32_t contacts_left)
{
    if (contacts_left == 0)
        return NBX_EXCLUDED_CONTACTS;
    return fallback ? NBX_EXCLUDED_NONE : nbx_caps_check(c, o, now_ms);
}

void nbx_caps_propensities(nbx_caps *c, const nbx_profile *p)
{
    nbx_propensities(c->catalog, p, c->propensity, c->propensity_source, c->category_propensity);
}

/* ========================================================================
 * Explanations: each rule above, in words
 * ======================================================================== */

static const char *plural(uint64_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

/* The frequency cap that excluded the offer, as nbx_caps_check() found it. */
static void explain_frequency(const nbx_caps *c, const nbx_offer *o, char *out, size_t cap)
{
    const nbx_exposure_summary *s = c->has_summary[o->index] ? &c->summary[o->index] : NULL;
    uint32_t imp = s ? s->impressions : 0, acc = s ? s->accepts : 0;
    if (o->impressions.window_days && imp >= o->impressions.max)
        snprintf(out, cap, "shown %u %s in the last %u %s; the cap is %u", imp,
                 plural(imp, "time", "times"), o->impressions.window_days,
                 plural(o->impressions.window_days, "day", "days"), o->impressions.max);
    else
        snprintf(out, cap, "accepted %u %s in the last %u %s; the cap is %u", acc,
                 plural(acc, "time", "times"), o->accepts.window_days,
                 plural(o->accepts.window_days, "day", "days"), o->accepts.max);
}

static void explain_consent(const nbx_caps *c, const nbx_offer *o, char *out, size_t cap)
{
    const nbx_catalog *cat = c->catalog;
    if (c->channel_refused && c->channel < cat->n_purposes) {
        nbx_sv p = cat->purposes[c->channel];
        snprintf(out, cap, "no consent to '%.*s', which this channel needs", (int)p.len, p.ptr);
    } else if (o->purpose_index < cat->n_purposes) {
        snprintf(out, cap, "no consent to '%.*s', which this offer needs", (int)o->purpose.len,
                 o->purpose.ptr);
    } else {
        snprintf(out, cap, "no consent");
    }
}

static void explain_validity(const nbx_offer *o, int64_t now_ms, char *out, size_t cap)
{
    char t[NBX_TIME_BUFSZ];
    if (now_ms < o->valid_from) {
        nbx_time_format(o->valid_from, t);
        snprintf(out, cap, "not valid before %s", t);
    } else {
        nbx_time_format(o->valid_to, t);
        snprintf(out, cap, "expired on %s", t);
    }
}

static void explain_budget(const nbx_caps *c, const nbx_offer *o, char *out, size_t cap)
{
    if (o->budget_impressions >= 0 && c->budget_impressions[o->index] + planned_impressions(c, o) >=
                                          (uint64_t)o->budget_impressions)
        snprintf(out, cap, "today's budget of %lld %s is spent", (long long)o->budget_impressions,
                 plural((uint64_t)o->budget_impressions, "impression", "impressions"));
    else if (o->budget_accepts >= 0)
        snprintf(out, cap, "today's budget of %lld %s is spent", (long long)o->budget_accepts,
                 plural((uint64_t)o->budget_accepts, "accept", "accepts"));
    else
        snprintf(out, cap, "today's budget is spent");
}

static void explain_guardrail(const nbx_caps *c, const nbx_offer *o, char *out, size_t cap)
{
    const nbx_guardrails *g = &c->catalog->guardrails;
    int failed = nbx_guardrail_failed(c->catalog, o);
    if (failed == NBX_GUARDRAIL_DISCOUNT)
        snprintf(out, cap, "a discount of %.4g%% is above the %.4g%% limit", o->discount_pct,
                 g->max_discount_pct);
    else if (failed == NBX_GUARDRAIL_MARGIN)
        snprintf(out, cap, "a unit margin of %.2f is below the minimum of %.2f", o->margin,
                 g->min_margin);
    else
        snprintf(out, cap, "outside the guardrails");
}

void nbx_caps_explain(const nbx_caps *c, const nbx_offer *o, int reason, const char *policy_reason,
                      int64_t now_ms, char *out, size_t cap)
{
    out[0] = '\0';
    const nbx_cap *mc = &c->catalog->guardrails.max_contacts;
    const nbx_exposure_summary *s = c->has_summary[o->index] ? &c->summary[o->index] : NULL;
    switch (reason) {
    case NBX_EXCLUDED_CONSENT:
        explain_consent(c, o, out, cap);
        break;
    case NBX_EXCLUDED_FREQUENCY:
        explain_frequency(c, o, out, cap);
        break;
    case NBX_EXCLUDED_COOLDOWN:
        if (s && s->last_dismiss)
            snprintf(out, cap, "dismissed %.1f days ago; the cooldown is %u %s",
                     (double)(now_ms - s->last_dismiss) / (double)NBX_MS_PER_DAY,
                     o->dismiss_cooldown_days, plural(o->dismiss_cooldown_days, "day", "days"));
        else
            snprintf(out, cap, "dismissed within the %u-day cooldown", o->dismiss_cooldown_days);
        break;
    case NBX_EXCLUDED_CONTACTS:
        if (mc->window_days && c->contacts >= mc->max)
            snprintf(out, cap, "contacted %u %s in the last %u %s; the limit is %u", c->contacts,
                     plural(c->contacts, "time", "times"), mc->window_days,
                     plural(mc->window_days, "day", "days"), mc->max);
        else if (mc->window_days)
            snprintf(out, cap,
                     "the limit of %u %s in %u %s is taken by this decision's higher-ranked "
                     "actions (%u before it)",
                     mc->max, plural(mc->max, "contact", "contacts"), mc->window_days,
                     plural(mc->window_days, "day", "days"), c->contacts);
        else
            snprintf(out, cap, "the contact limit is reached");
        break;
    case NBX_EXCLUDED_BUDGET:
        explain_budget(c, o, out, cap);
        break;
    case NBX_EXCLUDED_VALIDITY:
        explain_validity(o, now_ms, out, cap);
        break;
    case NBX_EXCLUDED_INELIGIBLE:
        if (policy_reason && policy_reason[0])
            snprintf(out, cap, "the policy's eligible() said no: %s", policy_reason);
        else
            snprintf(out, cap, "the policy's eligible() said no (it gave no reason)");
        break;
    case NBX_EXCLUDED_GUARDRAIL:
        explain_guardrail(c, o, out, cap);
        break;
    case NBX_EXCLUDED_POLICY_ERROR:
        snprintf(out, cap, "the policy failed: the fallback decision was served");
        break;
    case NBX_EXCLUDED_KILLED: {
        const nbx_kill_entry *k = nbx_kills_find(c->kills, NBX_KILL_OFFER, o->id);
        char why[NBX_KILL_REASON_MAX + 1];
        nbx_escape_text(why, sizeof why, k ? k->reason : "", k ? strlen(k->reason) : 0);
        snprintf(out, cap, "killed: %s", why);
        break;
    }
    default:
        break;
    }
}
