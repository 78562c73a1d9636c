/*
 * rfm.c: recency, frequency, monetary scores and segments.
 */
#include "nbx_int.h"

/* ========================================================================
 * Segments
 * ======================================================================== */

static const char *const segment_names[NBX_SEGMENT_COUNT] = {
    [NBX_SEGMENT_NONE] = "none",
    [NBX_SEGMENT_CHAMPIONS] = "champions",
    [NBX_SEGMENT_LOYAL] = "loyal",
    [NBX_SEGMENT_POTENTIAL] = "potential",
    [NBX_SEGMENT_NEW] = "new",
    [NBX_SEGMENT_PROMISING] = "promising",
    [NBX_SEGMENT_NEEDS_ATTENTION] = "needs_attention",
    [NBX_SEGMENT_AT_RISK] = "at_risk",
    [NBX_SEGMENT_CANT_LOSE] = "cant_lose",
    [NBX_SEGMENT_HIBERNATING] = "hibernating",
    [NBX_SEGMENT_LOST] = "lost",
    [NBX_SEGMENT_PROSPECT] = "prospect",
};

NBX_API const char *nbx_segment_name(int segment)
{
    if (segment < 0 || segment >= NBX_SEGMENT_COUNT)
        return NULL;
    return segment_names[segment];
}
