/*
 * fuzz_request: nginx request arguments, through the functions the module
 * calls (bindings/nginx/ngx_http_nbx_module.c): the customer id, the
 * placements and the session fields given to nbx_decide(), and the event
 * body given to nbx_record(), on a real engine over a temp store.
 *
 * The module passes NUL-free strings (it answers 400 to a NUL in an id, a
 * placement or a session value), so the input is NUL-separated:
 *
 *   FLAGS \0 CUSTOMER \0 PLACEMENTS \0 SESSION \0 EVENT BODY
 *
 * FLAGS: its first byte's low bits are NBX_DECIDE_EXPLAIN (nbx_explain on)
 * and NBX_DECIDE_RECORD (nbx_record_impressions on, GET). PLACEMENTS: ids
 * separated by '&' (repeated `placement` arguments). SESSION: key=value
 * pairs separated by '&' (a pair without '=' has an empty value, which the
 * module leaves out, as it does). EVENT BODY: the rest, any bytes, the
 * POST body of an nbx_event location. Missing parts are empty.
 *
 * A decision comes back with valid JSON or a refusal with an escaped
 * message, never anything else; so does an event.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_engine_get();
    return 0;
}

/* The next NUL-separated part of [*p, end); the last part takes the rest. */
static char *next_part(const char **p, const char *end, size_t *len, bool rest)
{
    const char *start = *p;
    const char *nul = rest ? NULL : memchr(start, '\0', (size_t)(end - start));
    size_t n = nul ? (size_t)(nul - start) : (size_t)(end - start);
    *p = nul ? nul + 1 : end;
    *len = n;
    return fz_strndup((const uint8_t *)start, n);
}

/* Split s in place at sep; up to max pieces (the module refuses more
 * placements than NBX_REQUEST_PLACEMENTS_MAX; the harness passes one more to
 * see the library refuse them too). */
static size_t split(char *s, char sep, char **out, size_t max)
{
    size_t n = 0;
    if (!*s)
        return 0;
    for (char *p = s; n < max;) {
        out[n++] = p;
        char *q = strchr(p, sep);
        if (!q)
            break;
        *q = '\0';
        p = q + 1;
    }
    return n;
}

static void decide(fz_engine *fe, unsigned flags, const char *customer, const char *const *pl,
                   size_t n_pl, const nbx_kv *kv, size_t n_kv)
{
    static const int refusals[] = {NBX_EINVAL, NBX_ELIMIT, NBX_OK};
    nbx_request req;
    nbx_request_init(&req);
    req.customer = customer;
    req.placements = pl;
    req.n_placements = n_pl;
    req.session = kv;
    req.n_session = n_kv;
    req.flags = flags;
    const nbx_result *r;
    fz_decide(fe, &req, refusals, &r);
}

static void record(fz_engine *fe, const char *body, size_t len)
{
    int applied = -1;
    int rc = nbx_record(fe->ctx, body, len, &applied);
    if (rc == NBX_OK) {
        if (applied != 0 && applied != 1)
            fz_fail("nbx_record: applied = %d", applied);
        return;
    }
    if (rc != NBX_EPARSE && rc != NBX_EINVAL && rc != NBX_ELIMIT)
        fz_fail("nbx_record returned %d: %s", rc, nbx_ctx_errmsg(fe->ctx));
    fz_check_message(nbx_ctx_errmsg(fe->ctx), "nbx_record");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_engine *fe = fz_engine_get();
    const char *p = (const char *)data, *end = p + size;
    size_t flags_len, customer_len, pl_len, session_len, body_len;
    char *flags_s = next_part(&p, end, &flags_len, false);
    char *customer = next_part(&p, end, &customer_len, false);
    char *pl_s = next_part(&p, end, &pl_len, false);
    char *session_s = next_part(&p, end, &session_len, false);
    char *body = next_part(&p, end, &body_len, true);

    unsigned flags = flags_len ? (unsigned)(unsigned char)flags_s[0] & 3u : 0;
    char *pl[NBX_REQUEST_PLACEMENTS_MAX + 1];
    size_t n_pl = split(pl_s, '&', pl, NBX_ARRAY_LEN(pl));
    char *pairs[NBX_REQUEST_SESSION_MAX + 1];
    size_t n_pairs = split(session_s, '&', pairs, NBX_ARRAY_LEN(pairs));
    nbx_kv kv[NBX_REQUEST_SESSION_MAX + 1];
    size_t n_kv = 0;
    for (size_t i = 0; i < n_pairs; i++) {
        char *eq = strchr(pairs[i], '=');
        if (!eq || !eq[1])
            continue;
        *eq = '\0';
        kv[n_kv++] = (nbx_kv){pairs[i], eq + 1};
    }

    /* The module refuses an empty id itself (400 "no customer id"). */
    if (customer_len)
        decide(fe, flags, customer, (const char *const *)pl, n_pl, kv, n_kv);
    if (body_len)
        record(fe, body, body_len);

    free(body);
    free(session_s);
    free(pl_s);
    free(customer);
    free(flags_s);
    if (flags & NBX_DECIDE_RECORD || body_len)
        fz_engine_trim(fe);
    return 0;
}
