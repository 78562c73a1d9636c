/*
 * record.c: recording a decision, the one place where a decision's chosen
 * actions become impressions in the store.
 *
 * Both ways of recording come through here: nbx_decide() with
 * NBX_DECIDE_RECORD (one decision, one transaction) and batches that record
 * (up to a group of decisions in one transaction). A decision read its caps
 * in a read snapshot; by the time it is recorded another context or process
 * (an overlapping campaign) may have recorded for the same customer. So in
 * the write transaction, which orders all writers, the customer's caps are
 * loaded again and each action is checked in rank order against them before
 * anything is recorded: two campaigns can never both take a customer's last
 * contact. What the impressions then do to the store is the effects' concern
 * (effects.c), as for any other event.
 *
 * The callers differ only in what an action that no longer fits costs:
 * nbx_decide() drops it and records the others; a batch records nothing of
 * that decision and decides it again on the new counters.
 */
#include "nbx_int.h"

#include <math.h>
#include <stdio.h>

/* Action i of a decision as an impression: event id DECISION_ID:I, at the
 * decision's clock. The one event shape of every recording path; the ids
 * make a retried recording of the same decision idempotent. */
static int record_impression(const nbx_recorder *r, const nbx_decision_record *d, size_t i,
                             const nbx_offer *o, const nbx_action *a, nbx_err *e)
{
    char eid[64];
    int len = snprintf(eid, sizeof eid, "%s:%zu", d->id, i);
    nbx_event ev = {
        .id = {eid, (size_t)len},
        .customer = d->profile->id,
        .offer = o->id,
        .placement = nbx_sv_of(a->placement),
        .type = NBX_EV_IMPRESSION,
        .ts_ms = d->now_ms,
        .amount = NAN,
        .margin = NAN,
    };
    int applied;
    return nbx_event_apply_txn(r->store, r->txn, &ev, &applied, r->arena, r->scratch, e);
}

/* Why action a may no longer be recorded (NBX_EXCLUDED_NONE: it may), with
 * the caps loaded in the write transaction and `left` contacts left for
 * this decision. An offer the decision's catalog lacks (a batch that saw a
 * reload) is not live. */
static int misfit_of(const nbx_recorder *r, const nbx_decision_record *d, const nbx_action *a,
                     uint32_t left, const nbx_offer **offer)
{
    *offer = nbx_catalog_offer(r->catalog, nbx_sv_of(a->offer));
    if (!*offer)
        return NBX_EXCLUDED_VALIDITY;
    return nbx_caps_recheck(r->caps, *offer, d->now_ms, d->fallback, left);
}

int nbx_record_decision(const nbx_recorder *r, const nbx_decision_record *d, uint8_t *misfit,
                        nbx_err *e)
{
    if (d->n_actions == 0)
        return NBX_OK;
    int rc =
        nbx_caps_load(r->caps, r->store, r->txn, d->profile, d->channel, d->now_ms, r->arena, e);
    /* Loaded inside a write: not a committed snapshot's budgets to reuse. */
    r->caps->budget_valid = false;
    if (rc)
        return rc;
    const nbx_offer *o;
    uint32_t left = nbx_caps_contacts_left(r->caps);
    if (!misfit) {
        /* All or nothing: check every action before recording any. */
        for (size_t i = 0; i < d->n_actions; i++, left--)
            if (misfit_of(r, d, &d->actions[i], left, &o) != NBX_EXCLUDED_NONE)
                return NBX_DECISION_STALE;
        for (size_t i = 0; i < d->n_actions && rc == NBX_OK; i++) {
            o = nbx_catalog_offer(r->catalog, nbx_sv_of(d->actions[i].offer));
            rc = record_impression(r, d, i, o, &d->actions[i], e);
        }
        return rc;
    }
    /* Misfits are skipped; the k-th recorded action is DECISION_ID:k, its
     * index once the caller has dropped the misfits. */
    size_t k = 0;
    for (size_t i = 0; i < d->n_actions && rc == NBX_OK; i++) {
        misfit[i] = (uint8_t)misfit_of(r, d, &d->actions[i], left, &o);
        if (misfit[i] != NBX_EXCLUDED_NONE)
            continue;
        rc = record_impression(r, d, k++, o, &d->actions[i], e);
        left--;
    }
    return rc;
}
