/*
 * audit.c: the audit line of a decision (docs/experiments.md, "The audit
 * log"): one JSON object a line, with what an auditor needs to follow the
 * decision and what `nbx audit replay` (replay.c) needs to make it again.
 *
 * Written only for a request with NBX_DECIDE_AUDIT, after the result, from
 * the same view of the decision: a caller that does not log pays nothing.
 *
 * Every string is JSON-escaped by nbx_jw_string(), which also escapes DEL
 * and the C1 controls: a line goes into logs as it is (nginx's access log
 * with escape=none), so no byte of it may steer a terminal or end a line.
 * Ids and session text that are not valid UTF-8 cannot travel as JSON
 * strings (the writer puts U+FFFD in their place); their exact bytes are
 * added in hex ("hex"), so a replay decides for the same customer.
 */
#include "nbx_int.h"

#include <string.h>

/* ========================================================================
 * The line
 * ======================================================================== */

static bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        size_t k = nbx_utf8_len(p, end);
        if (!k)
            return false;
        p += k;
    }
    return true;
}

static void write_hex(nbx_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    nbx_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char two[2] = {hex[c >> 4], hex[c & 15]};
        nbx_buf_append(b, two, 2);
    }
    nbx_buf_putc(b, '"');
}

static void write_hex_string(nbx_buf *b, const char *s)
{
    write_hex(b, s, strlen(s));
}

static bool session_is_text(const nbx_request *req)
{
    for (size_t i = 0; i < req->n_session; i++)
        if (!utf8_valid(req->session[i].key, strlen(req->session[i].key)) ||
            !utf8_valid(req->session[i].value, strlen(req->session[i].value)))
            return false;
    return true;
}

/* The exact bytes of what JSON strings could not carry: the customer id,
 * and the session as [key, value] pairs, each in hex. */
static void write_exact_bytes(nbx_buf *b, const nbx_request *req)
{
    bool customer = !utf8_valid(req->customer, strlen(req->customer));
    bool session = !session_is_text(req);
    if (!customer && !session)
        return;
    nbx_buf_puts(b, ",\"hex\":{");
    if (customer) {
        nbx_buf_puts(b, "\"customer\":");
        write_hex_string(b, req->customer);
    }
    if (session) {
        nbx_buf_puts(b, customer ? ",\"session\":[" : "\"session\":[");
        for (size_t i = 0; i < req->n_session; i++) {
            nbx_buf_puts(b, i ? ",[" : "[");
            write_hex_string(b, req->session[i].key);
            nbx_buf_putc(b, ',');
            write_hex_string(b, req->session[i].value);
            nbx_buf_putc(b, ']');
        }
        nbx_buf_putc(b, ']');
    }
    nbx_buf_putc(b, '}');
}

static void write_request(nbx_buf *b, const nbx_request *req)
{
    nbx_buf_puts(b, ",\"session\":{");
    for (size_t i = 0; i < req->n_session; i++) {
        if (i)
            nbx_buf_putc(b, ',');
        nbx_jw_string(b, req->session[i].key, strlen(req->session[i].key));
        nbx_buf_putc(b, ':');
        nbx_jw_string(b, req->session[i].value, strlen(req->session[i].value));
    }
    /* as requested: [] asks for every placement of the catalog */
    nbx_buf_puts(b, "},\"placements\":[");
    for (size_t i = 0; i < req->n_placements; i++) {
        if (i)
            nbx_buf_putc(b, ',');
        nbx_jw_string(b, req->placements[i], strlen(req->placements[i]));
    }
    nbx_buf_putc(b, ']');
}

static void write_actions(nbx_buf *b, const nbx_result *r)
{
    /* each action with the probability it was chosen with: the result's
     * own text (nbx_result_write_actions, written just before) */
    nbx_buf_putc(b, ',');
    if (!r->json.oom && r->json_actions_len &&
        r->json_actions_at + r->json_actions_len <= r->json.len)
        nbx_buf_append(b, r->json.data + r->json_actions_at, r->json_actions_len);
    else
        nbx_result_write_actions(b, r->actions, r->n_actions);
    nbx_buf_puts(b, ",\"expected_margin\":");
    nbx_jw_decimal(b, r->expected_margin);
}

static void write_exclusions(nbx_buf *b, const nbx_result *r, size_t n_cand)
{
    nbx_buf_puts(b, ",\"candidates\":");
    nbx_buf_putu(b, n_cand);
    nbx_buf_puts(b, ",\"exclusions\":{");
    bool first = true;
    for (int i = 1; i < NBX_EXCLUDED_COUNT; i++) {
        if (!r->exclusions[i])
            continue;
        nbx_buf_puts(b, first ? "\"" : ",\"");
        nbx_buf_puts(b, nbx_excluded_name(i));
        nbx_buf_puts(b, "\":");
        nbx_buf_putu(b, r->exclusions[i]);
        first = false;
    }
    nbx_buf_putc(b, '}');
}

static void write_state(nbx_buf *b, const nbx_audit_state *st)
{
    static const char *const sources[] = {"null", "\"store\"", "\"request\""};
    nbx_buf_puts(b, ",\"state\":{\"profile\":");
    nbx_buf_puts(b, sources[st->profile < NBX_ARRAY_LEN(sources) ? st->profile : 0]);
    nbx_buf_puts(b, ",\"profile_updated_at\":");
    if (st->profile == NBX_AUDIT_PROFILE_STORE)
        nbx_jw_time(b, st->profile_updated_at);
    else
        nbx_buf_puts(b, "null");
    char hex[17];
    nbx_hex64(st->exposures, hex);
    nbx_buf_puts(b, ",\"exposures\":\"");
    nbx_buf_puts(b, hex);
    nbx_buf_puts(b, "\"}");
}

void nbx_audit_write(nbx_result *r, const nbx_result_view *v, const nbx_audit_state *st)
{
    const nbx_request *req = v->req;
    nbx_buf *b = &r->audit;
    nbx_buf_reset(b);
    nbx_buf_puts(b, "{\"audit\":");
    nbx_buf_putu(b, NBX_AUDIT_FORMAT);
    nbx_buf_puts(b, ",\"decision_id\":\"");
    nbx_buf_puts(b, r->decision_id);
    nbx_buf_puts(b, "\",\"as_of\":");
    nbx_jw_time(b, v->now_ms);
    nbx_buf_puts(b, ",\"customer\":");
    nbx_jw_string(b, req->customer, strlen(req->customer));
    nbx_result_write_arm(b, r);
    if (!r->deployment)
        nbx_buf_puts(b, ",\"deployment\":null");
    /* null for the control treatment: no policy ran */
    nbx_buf_puts(b, ",\"policy\":");
    nbx_result_write_policy(b, r->policy);
    nbx_buf_puts(b, ",\"catalog_version\":\"");
    nbx_buf_puts(b, v->catalog->version_hex);
    nbx_buf_putc(b, '"');
    write_request(b, req);
    write_actions(b, r);
    write_exclusions(b, r, v->n_cand);
    nbx_buf_puts(b, r->fallback ? ",\"fallback\":true" : ",\"fallback\":false");
    nbx_buf_puts(b, r->anonymous ? ",\"anonymous\":true" : ",\"anonymous\":false");
    /* the whole record: an audit log is for the operator, not the client */
    if (r->has_error)
        nbx_result_write_error(b, r, false);
    else
        nbx_buf_puts(b, ",\"error\":null");
    /* as in the result: only under a deployment with shadow policies */
    if (r->deployment && r->deployment->n_shadow)
        nbx_result_write_shadows(b, r, false);
    write_state(b, st);
    write_exact_bytes(b, req);
    nbx_buf_putc(b, '}');
    nbx_buf_terminate(b);
}

NBX_API const char *nbx_result_audit_json(const nbx_result *r, size_t *len)
{
    if (len)
        *len = 0;
    if (!r || r->audit.len == 0)
        return NULL;
    if (len)
        *len = r->audit.len;
    return r->audit.data;
}
