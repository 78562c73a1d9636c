/*
 * exposure.c: exposure counters, bucketed by UTC day: adding events to a
 * counter row and counting a row over a window. The rows are read by
 * eligibility (caps.c) and written by the effects of events (effects.c);
 * their layout is codec.c's (docs/format.md).
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
