/*
 * exposure.c: exposure counters, bucketed by UTC day: adding events to a
 * counter row and counting a row over a window. The rows are read by
 * eligibility (caps.c) and written by the effects of events (effects.c);
 * their layout is codec.c's (docs/format.md).
 */
#include "nbx_int.h"

#include <string.h>

/* Add n events of one kind at ts to x, keeping buckets sorted.
 *
 * Pruning: a bucket is dropped when it is more than NBX_WINDOW_DAYS_MAX days
 * older than the newest bucket AND than the writer's day (now_ms), never
 * because of an event's own time alone: one event dated a year ahead
 * (a wrong clock, a hostile client) must not erase the customer's counters
 * for the days that count now. Rows keep at most NBX_EXPOSURE_DAYS_MAX
 * buckets (the oldest go first), so buckets ahead of the writer's clock (a
 * decision recorded with a future clock) cannot grow a row without bound.
 * Either way the result does not depend on the order events are added in,
 * for one now_ms, which lets bulk ingest group them. */
int nbx_exposure_add(nbx_exposure *x, int kind, int64_t ts, uint32_t n, int64_t now_ms,
                     nbx_arena *a)
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
    uint32_t newest = x->days[x->n_days - 1].day, today = nbx_day_of(now_ms);
    uint32_t anchor = newest < today ? newest : today;
    uint32_t drop = 0;
    while (drop < x->n_days && x->days[drop].day < anchor &&
           anchor - x->days[drop].day > NBX_WINDOW_DAYS_MAX)
        drop++;
    if (x->n_days - drop > NBX_EXPOSURE_DAYS_MAX)
        drop = x->n_days - NBX_EXPOSURE_DAYS_MAX;
    x->days += drop;
    x->n_days -= drop;
    return NBX_OK;
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
