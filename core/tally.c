/*
 * tally.c: an engine context's count of the decisions it served per arm,
 * flushed into the store's arm counters (arms.c), and the canary abort
 * rules evaluated in the flush's transaction (docs/experiments.md,
 * "Canary abort").
 *
 * A write transaction per decision would cost an fsync and the writer lock
 * each time, so a context sums its decisions in memory and writes them
 * once a second or every NBX_TALLY_FLUSH_DECISIONS decisions, and when it
 * closes (a batch's contexts close at its end): one transaction, one row
 * write per (deployment, arm, day). The decision that makes a flush due
 * pays for it (the writer lock and a sync) once per second or 1,000
 * decisions, not every decision. Figures reach the store at most a second
 * late while the context decides (an idle context's wait for its next
 * decision or its close; a process that dies loses them), which counters
 * that steer an abort can afford; a flush that fails keeps its figures for
 * the next one.
 *
 * The abort rules read the arm's counters over its whole life as the
 * flush's transaction sees them (every process's flushes, every event
 * attributed): a rule is judged on all the evidence, by whichever context
 * flushes first once min_decisions is passed, and the kill is written in
 * the same transaction, so two processes cannot both abort an arm.
 */
#include "nbx_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define NBX_TALLY_FLUSH_US INT64_C(1000000)

void nbx_tally_count(nbx_tally *t, const nbx_deployment *d, const char *arm, int64_t now_ms,
                     int outcome, double expected_margin)
{
    if (!d || !arm || now_ms < 0)
        return;
    nbx_arm_counts *c =
        nbx_arm_deltas_at(&t->pending, nbx_sv_of(d->name), nbx_sv_of(arm), nbx_day_of(now_ms));
    if (!c) {
        t->lost++; /* out of memory: a count lost is better than a decision */
        return;
    }
    c->decisions++;
    c->fallbacks += outcome == NBX_TALLY_FALLBACK;
    c->errors += outcome == NBX_TALLY_ERROR;
    if (outcome != NBX_TALLY_ERROR && isfinite(expected_margin))
        c->expected_margin += expected_margin;
    t->decisions++;
}

bool nbx_tally_due(nbx_tally *t, int64_t mono_us)
{
    if (t->decisions == 0)
        return false;
    if (t->since_us == 0)
        t->since_us = mono_us; /* the first decision since the last flush */
    return t->decisions >= NBX_TALLY_FLUSH_DECISIONS || mono_us - t->since_us >= NBX_TALLY_FLUSH_US;
}

/* ========================================================================
 * Canary abort
 * ======================================================================== */

static double rate(uint64_t n, uint64_t of)
{
    return of ? (double)n / (double)of : NAN;
}

int nbx_abort_judge(const nbx_arm *arm, const nbx_arm_counts *c, const nbx_arm *first,
                    const nbx_arm_counts *fc, char *reason, size_t cap)
{
    const nbx_arm_abort *rule = &arm->abort;
    if (rule->min_decisions == 0 || c->decisions < rule->min_decisions)
        return 0;
    double fallback_rate = rate(c->fallbacks, c->decisions);
    if (!isnan(rule->max_fallback_rate) && fallback_rate > rule->max_fallback_rate) {
        snprintf(reason, cap,
                 "max_fallback_rate: fallback rate %.4f (%llu fallbacks of %llu decisions) is "
                 "above %g",
                 fallback_rate, (unsigned long long)c->fallbacks, (unsigned long long)c->decisions,
                 rule->max_fallback_rate);
        return 1;
    }
    /* the first arm is the reference: judged against itself it never fails,
     * and without its decisions there is nothing to compare with */
    if (!isnan(rule->min_accept_rate_ratio) && arm != first && fc->decisions > 0) {
        double mine = rate(c->accepts, c->decisions), theirs = rate(fc->accepts, fc->decisions);
        /* a rate exactly at the limit is kept, whatever the rounding of the
         * product (0.8 x 0.05 is a hair above 0.04 in binary) */
        if (mine < rule->min_accept_rate_ratio * theirs * (1 - 1e-12)) {
            snprintf(reason, cap,
                     "min_accept_rate_ratio: accept rate %.4f (%llu accepts of %llu decisions) "
                     "is below %g x %.4f, the accept rate of arm '%s' (%llu of %llu)",
                     mine, (unsigned long long)c->accepts, (unsigned long long)c->decisions,
                     rule->min_accept_rate_ratio, theirs, first->name,
                     (unsigned long long)fc->accepts, (unsigned long long)fc->decisions);
            return 1;
        }
    }
    return 0;
}

/* Kill the arm for the abort in txn: the one place an abort reaches the
 * kill switches. */
static int kill_arm(nbx_store *s, MDB_txn *txn, const nbx_deployment *d, const nbx_arm *arm,
                    const char *reason, int64_t now_ms, nbx_buf *scratch, nbx_err *e)
{
    return nbx_kills_abort_arm(s, txn, nbx_sv_of(d->name), nbx_sv_of(arm->name), reason, now_ms,
                               scratch, e);
}

/* Every arm of d with abort rules, judged on its counters in txn; an arm
 * broken and not killed yet is killed (t->aborted lists them for the
 * engine's log). */
static int judge_arms(nbx_tally *t, nbx_store *s, MDB_txn *txn, const nbx_deployment *d,
                      int64_t now_ms, nbx_err *e)
{
    nbx_arm_counts first;
    bool have_first = false;
    for (uint32_t i = 0; i < d->n_arms; i++) {
        const nbx_arm *arm = &d->arms[i];
        if (arm->abort.min_decisions == 0)
            continue;
        /* killed already, by hand or by another process's abort */
        if (nbx_kills_arm_killed_in(s, txn, nbx_sv_of(d->name), nbx_sv_of(arm->name)))
            continue;
        nbx_arm_counts c;
        int rc = nbx_arm_totals(s, txn, nbx_sv_of(d->name), nbx_sv_of(arm->name), &c, e);
        if (rc == NBX_OK && !have_first) {
            rc = nbx_arm_totals(s, txn, nbx_sv_of(d->name), nbx_sv_of(d->arms[0].name), &first, e);
            have_first = true;
        }
        if (rc)
            return rc;
        char reason[512];
        if (!nbx_abort_judge(arm, &c, &d->arms[0], &first, reason, sizeof reason))
            continue;
        rc = kill_arm(s, txn, d, arm, reason, now_ms, &t->scratch, e);
        if (rc)
            return rc;
        if (t->aborted_n < NBX_TALLY_ABORTS_MAX) {
            snprintf(t->aborted[t->aborted_n].arm, sizeof t->aborted[0].arm, "%s", arm->name);
            snprintf(t->aborted[t->aborted_n].reason, sizeof t->aborted[0].reason, "%s", reason);
            t->aborted_n++;
        }
    }
    return NBX_OK;
}

/* ========================================================================
 * Flush
 * ======================================================================== */

int nbx_tally_flush(nbx_tally *t, nbx_store *s, const nbx_deployment *d, int64_t now_ms, nbx_err *e)
{
    t->aborted_n = 0;
    if (t->decisions == 0 || !s || (s->flags & NBX_STORE_READONLY) || !s->has_arms) {
        /* nowhere to write: forget, so memory does not grow */
        nbx_arm_deltas_clear(&t->pending);
        t->decisions = 0;
        t->since_us = 0;
        return NBX_OK;
    }
    MDB_txn *txn;
    int rc = nbx_store_write_begin(s, &txn, e);
    if (rc)
        return rc; /* the figures stay for the next flush */
    /* a copy to write: a failed transaction must not lose the figures */
    nbx_arm_deltas work = {0};
    rc = nbx_arm_deltas_copy(&work, &t->pending);
    if (rc == NBX_OK)
        rc = nbx_arm_deltas_write(&work, s, txn, e);
    else
        nbx_err_set(e, rc, "out of memory");
    if (rc == NBX_OK && d && s->has_kills)
        rc = judge_arms(t, s, txn, d, now_ms, e);
    if (rc == NBX_OK)
        rc = nbx_store_commit(s, txn, e);
    else
        mdb_txn_abort(txn);
    nbx_arm_deltas_free(&work);
    if (rc == NBX_OK) {
        nbx_arm_deltas_clear(&t->pending);
        t->decisions = 0;
        t->since_us = 0;
    } else {
        t->aborted_n = 0;
    }
    return rc;
}

void nbx_tally_free(nbx_tally *t)
{
    nbx_arm_deltas_free(&t->pending);
    nbx_buf_free(&t->scratch);
    memset(t, 0, sizeof *t);
}
