/*
 * event.c: events (purchases and exposures) as they arrive: parse and
 * validate one JSON event, and nbx_event_apply(), which applies it in its
 * own transaction. What an event does to the store is effects.c's.
 */
#include "nbx_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    uint8_t type;
} event_types[] = {{"purchase", NBX_EV_PURCHASE},
                   {"impression", NBX_EV_IMPRESSION},
                   {"click", NBX_EV_CLICK},
                   {"accept", NBX_EV_ACCEPT},
                   {"dismiss", NBX_EV_DISMISS}};

const char *nbx_event_type_name(int type)
{
    for (size_t i = 0; i < NBX_ARRAY_LEN(event_types); i++)
        if (event_types[i].type == type)
            return event_types[i].name;
    return "unknown";
}

/* ========================================================================
 * Parse
 * ======================================================================== */

/* A string value: "must be a string" only when it is not one; a string the
 * reader refused gets the reader's reason (invalid UTF-8, a NUL byte, a bad
 * escape). The reader stops on the byte it refused. */
static int read_string(nbx_jr *r, const char *field, nbx_sv *out, nbx_err *e)
{
    if (nbx_jr_peek(r) != NBX_J_STRING)
        return nbx_err_set(e, NBX_EPARSE, "field '%s': must be a string", field);
    if (nbx_jr_string(r, out))
        return NBX_OK;
    if (r->p < r->end && *r->p == '\0')
        return nbx_err_set(e, NBX_EPARSE, "field '%s': contains a NUL byte", field);
    return nbx_err_set(e, NBX_EPARSE, "field '%s': %s", field, r->err);
}

static int read_id(nbx_jr *r, const char *field, size_t max, nbx_sv *out, nbx_err *e)
{
    int rc = read_string(r, field, out, e);
    if (rc)
        return rc;
    if (out->len == 0 || out->len > max)
        return nbx_err_set(e, NBX_EPARSE, "field '%s': must be 1 to %zu bytes (got %zu)", field,
                           max, out->len);
    return NBX_OK;
}

/* A time after the epoch: counters and budgets count UTC days from
 * 1970-01-01 in 32 bits, so an earlier day would wrap to the far future and
 * push every real bucket out of the window; and 0 is RFM's "no purchase". */
static int read_ts(nbx_jr *r, int64_t *out, nbx_err *e)
{
    nbx_jtype t = nbx_jr_peek(r);
    if (t == NBX_J_NUMBER) {
        double secs;
        if (!nbx_jr_number(r, &secs) || nbx_time_from_secs(secs, out) != NBX_OK)
            return nbx_err_set(e, NBX_EPARSE, "field 'ts': not a time in epoch seconds");
    } else {
        nbx_sv s;
        if (t == NBX_J_STRING && read_string(r, "ts", &s, e) != NBX_OK)
            return NBX_EPARSE;
        if (t != NBX_J_STRING || nbx_time_parse_n(s.ptr, s.len, out))
            return nbx_err_set(e, NBX_EPARSE,
                               "field 'ts': must be an RFC 3339 time or epoch seconds");
    }
    if (*out <= 0)
        return nbx_err_set(e, NBX_EPARSE, "field 'ts': must be after 1970-01-01T00:00:00Z");
    return NBX_OK;
}

/* A decision id as nbx writes them (a UUIDv7, with ".DEPLOYMENT.ARM"
 * under a deployment): no other text may pass for one, whatever follows it
 * (a log line, a metric label, a report). */
static int read_decision_id(nbx_jr *r, nbx_sv *out, nbx_err *e)
{
    int rc = read_id(r, "decision_id", NBX_DECISION_ID_MAX, out, e);
    if (rc)
        return rc;
    for (size_t i = 0; i < out->len; i++)
        if (!nbx_name_byte((unsigned char)out->ptr[i]))
            return nbx_err_set(e, NBX_EPARSE,
                               "field 'decision_id': byte %zu is not one of a decision id "
                               "(A-Z, a-z, 0-9, '_', '.', '-')",
                               i + 1);
    return NBX_OK;
}

static int read_amount(nbx_jr *r, const char *field, double *out, nbx_err *e)
{
    if (nbx_jr_peek(r) != NBX_J_NUMBER || !nbx_jr_number(r, out))
        return nbx_err_set(e, NBX_EPARSE, "field '%s': must be a number", field);
    if (fabs(*out) > 1e12)
        return nbx_err_set(e, NBX_EPARSE, "field '%s': %g is out of range", field, *out);
    return NBX_OK;
}

/* The fields nbx reads, in the order of their bit in a parse's "seen" mask. */
static const char *const event_fields[] = {"event_id", "customer", "offer",  "placement",  "type",
                                           "ts",       "amount",   "margin", "decision_id"};

static int field_of(nbx_sv key)
{
    for (size_t i = 0; i < NBX_ARRAY_LEN(event_fields); i++)
        if (nbx_sv_eq_cstr(key, event_fields[i]))
            return (int)i;
    return -1;
}

static int cmp_sv(const void *a, const void *b)
{
    return nbx_sv_cmp(*(const nbx_sv *)a, *(const nbx_sv *)b);
}

/* Fields nbx does not read are skipped, but a key given twice is refused
 * there too, as everywhere: the keys are collected (rarely more than a few)
 * and compared once sorted. */
typedef struct extra_keys {
    nbx_sv *keys;
    size_t n, cap;
} extra_keys;

static int extra_add(extra_keys *x, nbx_sv key, nbx_arena *a, nbx_err *e)
{
    if (x->n == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 8;
        nbx_sv *bigger = a ? nbx_arena_alloc(a, cap * sizeof *bigger) : NULL;
        if (!bigger)
            return nbx_err_set(e, NBX_ENOMEM, "out of memory");
        if (x->n)
            memcpy(bigger, x->keys, x->n * sizeof *bigger);
        x->keys = bigger;
        x->cap = cap;
    }
    x->keys[x->n++] = key;
    return NBX_OK;
}

static int extra_check(extra_keys *x, nbx_err *e)
{
    if (x->n < 2)
        return NBX_OK;
    qsort(x->keys, x->n, sizeof *x->keys, cmp_sv);
    for (size_t i = 1; i < x->n; i++)
        if (nbx_sv_cmp(x->keys[i - 1], x->keys[i]) == 0)
            return nbx_err_set(e, NBX_EPARSE, "duplicate key '%.*s'",
                               (int)(x->keys[i].len > 64 ? 64 : x->keys[i].len), x->keys[i].ptr);
    return NBX_OK;
}

static const char *article(const char *word)
{
    return strchr("aeiou", word[0]) ? "an" : "a";
}

int nbx_event_parse(const char *json, size_t len, unsigned flags, nbx_event *ev, nbx_arena *a,
                    nbx_err *e)
{
    memset(ev, 0, sizeof *ev);
    ev->margin = NAN;
    ev->amount = NAN;
    nbx_jr r;
    nbx_jr_init(&r, json, len, a);
    if (nbx_jr_peek(&r) != NBX_J_OBJECT || !nbx_jr_object_begin(&r))
        return nbx_err_set(e, NBX_EPARSE, "an event must be a JSON object");
    nbx_sv key, type = {0};
    bool have_ts = false, have_type = false;
    int more = 0, rc = NBX_OK;
    uint32_t seen = 0;
    extra_keys extra = {0};
    while (rc == NBX_OK && (more = nbx_jr_object_next(&r, &key)) == 1) {
        int field = field_of(key);
        if (field >= 0 && (seen & (1u << field))) {
            rc = nbx_err_set(e, NBX_EPARSE, "duplicate key '%s'", event_fields[field]);
            break;
        }
        if (field >= 0)
            seen |= 1u << field;
        if (nbx_sv_eq_cstr(key, "event_id"))
            rc = read_id(&r, "event_id", NBX_ID_MAX, &ev->id, e);
        else if (nbx_sv_eq_cstr(key, "customer"))
            rc = read_id(&r, "customer", NBX_ID_MAX, &ev->customer, e);
        else if (nbx_sv_eq_cstr(key, "offer"))
            rc = read_id(&r, "offer", NBX_OFFER_ID_MAX, &ev->offer, e);
        else if (nbx_sv_eq_cstr(key, "placement"))
            rc = read_id(&r, "placement", NBX_OFFER_ID_MAX, &ev->placement, e);
        else if (nbx_sv_eq_cstr(key, "type")) {
            have_type = true;
            rc = read_string(&r, "type", &type, e);
        } else if (nbx_sv_eq_cstr(key, "ts")) {
            have_ts = true;
            rc = read_ts(&r, &ev->ts_ms, e);
        } else if (nbx_sv_eq_cstr(key, "amount"))
            rc = read_amount(&r, "amount", &ev->amount, e);
        else if (nbx_sv_eq_cstr(key, "margin"))
            rc = read_amount(&r, "margin", &ev->margin, e);
        else if (nbx_sv_eq_cstr(key, "decision_id"))
            rc = read_decision_id(&r, &ev->decision_id, e);
        else if (!nbx_jr_skip(&r)) /* extra fields (channel, campaign...) are kept out */
            rc = nbx_err_set(e, NBX_EPARSE, "%s", r.err);
        else
            rc = extra_add(&extra, key, a, e);
    }
    if (rc == NBX_OK)
        rc = extra_check(&extra, e);
    if (rc)
        return rc;
    if (more < 0 || !nbx_jr_finish(&r))
        return nbx_err_set(e, NBX_EPARSE, "%s", r.err);
    if (!ev->id.len)
        return nbx_err_set(e, NBX_EPARSE, "field 'event_id': is required");
    if (!ev->customer.len)
        return nbx_err_set(e, NBX_EPARSE, "field 'customer': is required");
    if (memchr(ev->customer.ptr, '\0', ev->customer.len) || memchr(ev->id.ptr, '\0', ev->id.len))
        return nbx_err_set(e, NBX_EPARSE, "ids must not contain NUL");
    /* The record's key (customer \0 \x02 event id) must fit LMDB's 511-byte keys. */
    if (ev->customer.len + ev->id.len > NBX_EVENT_IDS_MAX)
        return nbx_err_set(e, NBX_EPARSE,
                           "field 'event_id': %zu bytes with a %zu-byte customer; the two "
                           "together are limited to %d bytes",
                           ev->id.len, ev->customer.len, NBX_EVENT_IDS_MAX);
    if (!have_type)
        return nbx_err_set(e, NBX_EPARSE, "field 'type': is required");
    for (size_t i = 0; i < NBX_ARRAY_LEN(event_types); i++)
        if (nbx_sv_eq_cstr(type, event_types[i].name))
            ev->type = event_types[i].type;
    if (!ev->type)
        return nbx_err_set(e, NBX_EPARSE,
                           "field 'type': unknown event type '%.*s' (purchase, impression, "
                           "click, accept, dismiss)",
                           (int)(type.len > 64 ? 64 : type.len), type.ptr);
    if (!have_ts && !(flags & NBX_EVENT_TS_OPTIONAL))
        return nbx_err_set(e, NBX_EPARSE, "field 'ts': is required");
    if (ev->type == NBX_EV_PURCHASE) {
        if (isnan(ev->amount))
            return nbx_err_set(e, NBX_EPARSE, "field 'amount': is required for a purchase");
    } else {
        if (!ev->offer.len)
            return nbx_err_set(e, NBX_EPARSE, "field 'offer': is required for %s %s event",
                               article(nbx_event_type_name(ev->type)),
                               nbx_event_type_name(ev->type));
    }
    return NBX_OK;
}

/* ========================================================================
 * Checks against the writer: its clock, its catalog
 * ======================================================================== */

/* The writer's clock is the one clock nbx trusts: an event dated ahead of
 * it by more than the skew is refused (a client's clock cannot reach into
 * the future of the counters), while old events (backfills, late arrivals)
 * are fine. */
int nbx_event_check(const nbx_event *ev, const nbx_event_rules *r, nbx_err *e)
{
    if (ev->ts_ms > r->now_ms && ev->ts_ms - r->now_ms > r->max_skew_ms) {
        char ts[NBX_TIME_BUFSZ], now[NBX_TIME_BUFSZ];
        nbx_time_format(ev->ts_ms, ts);
        nbx_time_format(r->now_ms, now);
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'ts': %s is ahead of this writer's clock (%s) by more than "
                           "the %lld s an event may be",
                           ts, now, (long long)(r->max_skew_ms / 1000));
    }
    if (r->offer_known && ev->offer.len && !r->offer_known(r->offers, ev->offer))
        return nbx_err_set(e, NBX_EINVAL, "field 'offer': '%.*s' is not an offer of the catalog",
                           (int)(ev->offer.len > 128 ? 128 : ev->offer.len), ev->offer.ptr);
    return NBX_OK;
}

int nbx_event_skew(int64_t given_ms, int64_t *out_ms, nbx_err *e)
{
    if (given_ms < 0 || given_ms > NBX_EVENT_SKEW_MAX_MS)
        return nbx_err_set(e, NBX_EINVAL,
                           "the clock skew allowed to events is %lld ms; it must be 0 (the "
                           "default, %d s) to %d ms",
                           (long long)given_ms, NBX_DEFAULT_EVENT_SKEW_MS / 1000,
                           NBX_EVENT_SKEW_MAX_MS);
    *out_ms = given_ms ? given_ms : NBX_DEFAULT_EVENT_SKEW_MS;
    return NBX_OK;
}

/* ========================================================================
 * nbx_event_apply
 * ======================================================================== */

NBX_API int nbx_event_apply(nbx_store *s, const char *json, size_t len, int *applied)
{
    if (applied)
        *applied = 0;
    if (!s || !json)
        return nbx_fail(s, NBX_EINVAL, "nbx_event_apply: NULL argument");
    if (len > NBX_LINE_MAX)
        return nbx_fail(s, NBX_ELIMIT, "event JSON is %zu bytes, the limit is %d", len,
                        NBX_LINE_MAX);
    nbx_err e = {0};
    nbx_arena arena = {0};
    nbx_buf scratch = {0};
    nbx_event ev;
    MDB_txn *txn = NULL;
    int outcome = 0;
    const nbx_event_rules rules = {.now_ms = nbx_time_now(),
                                   .max_skew_ms = NBX_DEFAULT_EVENT_SKEW_MS};
    int rc = nbx_event_parse(json, len, 0, &ev, &arena, &e);
    if (rc == NBX_OK)
        rc = nbx_event_check(&ev, &rules, &e);
    if (rc == NBX_OK)
        rc = nbx_store_write_begin(s, &txn, &e);
    if (rc == NBX_OK)
        rc = nbx_event_apply_txn(s, txn, &ev, &outcome, &arena, &scratch, &e);
    if (rc == NBX_OK) {
        rc = nbx_store_commit(s, txn, &e);
        txn = NULL;
    }
    mdb_txn_abort(txn);
    nbx_arena_free(&arena);
    nbx_buf_free(&scratch);
    if (rc)
        return nbx_publish(s, &e);
    if (applied)
        *applied = outcome == NBX_RECORD_APPLIED;
    return NBX_OK;
}
