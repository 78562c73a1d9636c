/*
 * fuzz_profile: profile JSONL lines (nbx_profile_parse, nbx_profile_merge,
 * nbx_profile_encode, nbx_profile_decode, nbx_profile_to_json; core/
 * profile.c, core/codec.c).
 *
 * The input is one or two lines: each is parsed as a patch, merged over
 * the profile so far and settled (the aggregates an import gives are its
 * base; with no purchase recorded, the aggregates are the base), as two
 * imports of the same customer would be. Then the stored form must
 * round-trip: decode(encode(p)) encodes to the same bytes, its JSON (what
 * `nbx profile get` prints) is valid JSON, and that JSON imported as a new
 * profile gives the same stored bytes again (the base's as_of included).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_round_trip(const nbx_profile *p, nbx_arena *a)
{
    nbx_buf stored = {0}, again = {0}, json = {0}, from_json = {0};
    nbx_err e = {0};
    if (nbx_profile_encode(p, &stored) != NBX_OK)
        fz_fail("encode: out of memory");

    nbx_profile d = {.id = p->id};
    if (nbx_profile_decode(stored.data, stored.len, &d, a, &e) != NBX_OK)
        fz_fail("a profile nbx encoded does not decode: %s", e.msg);
    if (nbx_profile_encode(&d, &again) != NBX_OK)
        fz_fail("encode: out of memory");
    if (again.len != stored.len || memcmp(again.data, stored.data, stored.len) != 0)
        fz_fail("decode then encode changed the stored bytes (%zu -> %zu)", stored.len, again.len);

    nbx_profile_to_json(&d, &json);
    if (json.oom)
        fz_fail("to_json: out of memory");
    fz_check_json(json.data, json.len, "nbx_profile_to_json");

    /* What `profile get` prints, imported again, is the same profile. */
    nbx_profile patch, back;
    if (nbx_profile_parse(json.data, json.len, &patch, a, &e) != NBX_OK)
        fz_fail("nbx's own profile JSON is refused: %s: %.*s", e.msg, (int)json.len, json.data);
    if (nbx_profile_merge(NULL, &patch, &back, a) != NBX_OK)
        fz_fail("merging nbx's own profile JSON failed");
    nbx_profile_settle_base(&back);
    /* A profile no import gave figures has no base, and here no purchase:
     * it prints zero aggregates as of null, which imported are a base of
     * zeros as of 0. That base counts every purchase (all are dated after
     * 1970), as no base does: the same profile, stored with one more
     * element. Compare without it. */
    static const nbx_rfm_base zero;
    if (!(p->fields & NBX_PF_RFM_BASE) && (back.fields & NBX_PF_RFM_BASE) &&
        memcmp(&back.rfm_base, &zero, sizeof zero) == 0)
        back.fields &= ~(unsigned)NBX_PF_RFM_BASE;
    if (nbx_profile_encode(&back, &from_json) != NBX_OK)
        fz_fail("encode: out of memory");
    if (from_json.len != stored.len || memcmp(from_json.data, stored.data, stored.len) != 0)
        fz_fail("profile JSON read back differs from the stored profile: %.*s", (int)json.len,
                json.data);

    nbx_buf_free(&from_json);
    nbx_buf_free(&json);
    nbx_buf_free(&again);
    nbx_buf_free(&stored);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data, *end = text + size;
    nbx_arena a = {0};
    nbx_profile base, merged;
    bool have_base = false;
    for (int line = 0; line < 2 && text < end; line++) {
        const char *nl = memchr(text, '\n', (size_t)(end - text));
        size_t len = nl ? (size_t)(nl - text) : (size_t)(end - text);
        nbx_profile patch;
        nbx_err e = {0};
        int rc = nbx_profile_parse(text, len, &patch, &a, &e);
        text += len + (nl != NULL);
        if (rc != NBX_OK) {
            if (e.code != rc)
                fz_fail("returned %d, message says %d", rc, e.code);
            fz_check_message(e.msg, "nbx_profile_parse");
            continue;
        }
        rc = nbx_profile_patch(have_base ? &base : NULL, &patch, &merged, &a, &e);
        if (rc == NBX_ELIMIT) {
            fz_check_message(e.msg, "nbx_profile_patch");
            continue;
        }
        if (rc != NBX_OK)
            fz_fail("nbx_profile_patch: %d: %s", rc, e.msg);
        /* What every writer does before it stores a merge: the aggregates
         * become the import's base plus the purchases recorded after its
         * as_of, and a profile that is not in a store has none recorded. */
        nbx_profile_settle_base(&merged);
        base = merged;
        have_base = true;
    }
    if (have_base)
        check_round_trip(&base, &a);
    nbx_arena_free(&a);
    return 0;
}
