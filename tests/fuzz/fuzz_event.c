/*
 * fuzz_event: event JSONL lines (nbx_event_parse, nbx_event_record_encode,
 * core/event.c), then applied to a real store (nbx_event_apply) as an
 * import would, and the customer's profile read back (nbx_profile_get).
 *
 * The input is one event line. A refused line must say why in an escaped
 * message and change nothing; an accepted one must encode, apply (or be
 * skipped as a duplicate), and leave a profile whose JSON is valid.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_parsed(const nbx_event *ev)
{
    if (ev->type < NBX_EV_PURCHASE || ev->type > NBX_EV_DISMISS || !nbx_event_type_name(ev->type))
        fz_fail("event type %u", ev->type);
    if (ev->customer.len == 0 || ev->customer.len > NBX_ID_MAX || ev->id.len == 0 ||
        ev->customer.len + ev->id.len > NBX_EVENT_IDS_MAX)
        fz_fail("ids of %zu and %zu bytes accepted", ev->customer.len, ev->id.len);
    if (ev->ts_ms < NBX_TIME_MIN_MS || ev->ts_ms > NBX_TIME_MAX_MS)
        fz_fail("ts %lld accepted", (long long)ev->ts_ms);
    char key[NBX_EVENT_KEY_MAX];
    if (nbx_event_key(key, ev->customer, ev->id) > NBX_EVENT_KEY_MAX)
        fz_fail("event key longer than %d bytes", NBX_EVENT_KEY_MAX);
    nbx_buf rec = {0};
    if (nbx_event_record_encode(ev, &rec) != NBX_OK)
        fz_fail("nbx_event_record_encode: out of memory");
    nbx_buf_free(&rec);
}

static void apply(const uint8_t *data, size_t size, const nbx_event *ev)
{
    fz_engine *fe = fz_engine_get();
    int applied = -1;
    int rc = nbx_event_apply(fe->store, (const char *)data, size, &applied);
    if (rc != NBX_OK) {
        fz_check_message(nbx_store_errmsg(fe->store), "nbx_event_apply");
        return;
    }
    if (applied != 0 && applied != 1)
        fz_fail("nbx_event_apply: applied = %d", applied);
    char *id = fz_strndup((const uint8_t *)ev->customer.ptr, ev->customer.len);
    char *json = NULL;
    size_t len = 0;
    rc = nbx_profile_get(fe->store, id, &json, &len);
    if (rc == NBX_OK)
        fz_check_json(json, len, "nbx_profile_get after an event");
    else if (rc != NBX_ENOTFOUND)
        fz_check_message(nbx_store_errmsg(fe->store), "nbx_profile_get");
    /* applied 0: the customer had the id before, maybe for another type */
    if (ev->type == NBX_EV_PURCHASE && applied == 1 && rc == NBX_ENOTFOUND)
        fz_fail("a purchase was applied and its customer has no profile");
    nbx_free(json);
    free(id);
    fz_engine_trim(fe);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nbx_arena a = {0};
    nbx_event ev;
    nbx_err e = {0};
    int rc = nbx_event_parse((const char *)data, size, 0, &ev, &a, &e);
    if (rc != NBX_OK) {
        if (e.code != rc)
            fz_fail("returned %d, message says %d", rc, e.code);
        fz_check_message(e.msg, "nbx_event_parse");
        /* the public call must refuse it the same way */
        fz_engine *fe = fz_engine_get();
        if (nbx_event_apply(fe->store, (const char *)data, size, NULL) == NBX_OK)
            fz_fail("nbx_event_apply took an event nbx_event_parse refused: %s", e.msg);
    } else {
        check_parsed(&ev);
        apply(data, size, &ev);
    }
    nbx_arena_free(&a);
    return 0;
}
