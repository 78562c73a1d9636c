/*
 * replay.c: a logged decision made again (nbx_audit_replay), and why it
 * came out the same or not (docs/experiments.md, "Replay").
 *
 * The audit line (audit.c) is read back, its request made again at its
 * as_of on the caller's context with NBX_DECIDE_AUDIT, and the two audit
 * lines compared field by field. A decision is a function of the request,
 * the policy, the catalog, the deployment and what the store held for the
 * customer, so a difference is explained by whichever of those changed:
 * the versions in the two lines, the arm, the profile's updated_at and the
 * hash of the customer's exposure counters that each line carries, and the
 * customer's event records (the decision's own impressions, DECISION_ID:N,
 * and events dated at or after as_of). Daily budgets are shared by every
 * customer and are not hashed: a change in the `budget` exclusions names
 * them. Reading lines is not a hot path: jansson does it.
 */
#include "nbx_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* A line of another log (nginx's access log with a prefix of its own) is
 * read from one of its first '{' to its end. */
#define OPEN_BRACES_TRIED 8

/* The request a line describes, and the lines themselves. */
typedef struct replay {
    json_t *logged;
    json_t *replayed; /* NULL when the decision could not be made again */
    const char *decision_id;
    int64_t as_of;
    char *customer;
    nbx_kv session[NBX_REQUEST_SESSION_MAX];
    size_t n_session;
    const char *placements[NBX_REQUEST_PLACEMENTS_MAX];
    size_t n_placements;
    nbx_arena arena; /* decoded hex */
    nbx_buf out;
} replay;

/* ========================================================================
 * Reading an audit line
 * ======================================================================== */

static json_t *load_line(const char *line, size_t len, nbx_err *e)
{
    json_error_t jerr;
    const char *p = line, *end = line + len;
    json_t *root = NULL;
    for (int tries = 0; tries < OPEN_BRACES_TRIED && !root; tries++) {
        p = memchr(p, '{', (size_t)(end - p));
        if (!p)
            break;
        root = json_loadb(p, (size_t)(end - p), JSON_REJECT_DUPLICATES, &jerr);
        p++;
    }
    if (!root)
        nbx_err_set(e, NBX_EPARSE, "not an audit line: %s",
                    memchr(line, '{', len) ? jerr.text : "no JSON object");
    else if (!json_is_object(root)) {
        json_decref(root);
        root = NULL;
        nbx_err_set(e, NBX_EPARSE, "not an audit line: not a JSON object");
    }
    return root;
}

static int missing(nbx_err *e, const char *field, const char *what)
{
    return nbx_err_set(e, NBX_EPARSE, "field '%s': %s", field, what);
}

static const char *string_field(json_t *o, const char *field, nbx_err *e)
{
    json_t *v = json_object_get(o, field);
    if (!json_is_string(v)) {
        missing(e, field, v ? "must be a string" : "is required");
        return NULL;
    }
    return json_string_value(v);
}

/* Bytes written in hex by audit.c; NUL-terminated, without NUL inside. */
static char *from_hex(replay *rp, json_t *v, const char *field, nbx_err *e)
{
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    if (!s || n % 2 || n / 2 > NBX_VALUE_MAX) {
        missing(e, field, "must be an even number of hex digits");
        return NULL;
    }
    char *out = nbx_arena_alloc(&rp->arena, n / 2 + 1);
    if (!out) {
        nbx_err_set(e, NBX_ENOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n / 2; i++) {
        char pair[3] = {s[2 * i], s[2 * i + 1], '\0'};
        char *stop;
        long byte = strtol(pair, &stop, 16);
        if (*stop || byte == 0 || pair[0] == '-' || pair[0] == '+' || pair[0] == ' ') {
            missing(e, field, "must be hex digits of bytes other than NUL");
            return NULL;
        }
        out[i] = (char)byte;
    }
    out[n / 2] = '\0';
    return out;
}

static int read_session(replay *rp, json_t *root, json_t *hex, nbx_err *e)
{
    json_t *pairs = json_object_get(hex, "session");
    if (pairs) {
        if (!json_is_array(pairs) || json_array_size(pairs) > NBX_REQUEST_SESSION_MAX)
            return missing(e, "hex.session", "must be an array of [key, value] pairs");
        size_t i;
        json_t *pair;
        json_array_foreach(pairs, i, pair)
        {
            if (!json_is_array(pair) || json_array_size(pair) != 2)
                return missing(e, "hex.session", "must be an array of [key, value] pairs");
            rp->session[i].key = from_hex(rp, json_array_get(pair, 0), "hex.session", e);
            rp->session[i].value = from_hex(rp, json_array_get(pair, 1), "hex.session", e);
            if (!rp->session[i].key || !rp->session[i].value)
                return e->code;
        }
        rp->n_session = json_array_size(pairs);
        return NBX_OK;
    }
    json_t *session = json_object_get(root, "session");
    if (!json_is_object(session) || json_object_size(session) > NBX_REQUEST_SESSION_MAX)
        return missing(e, "session", "must be an object of at most 64 fields");
    const char *key;
    json_t *value;
    json_object_foreach(session, key, value)
    {
        if (!json_is_string(value))
            return nbx_err_set(e, NBX_EPARSE, "field 'session.%.64s': must be a string", key);
        rp->session[rp->n_session].key = key;
        rp->session[rp->n_session].value = json_string_value(value);
        rp->n_session++;
    }
    return NBX_OK;
}

static int read_request(replay *rp, nbx_err *e)
{
    json_t *root = rp->logged;
    json_t *format = json_object_get(root, "audit");
    if (!json_is_integer(format) || json_integer_value(format) < 1 ||
        json_integer_value(format) > NBX_AUDIT_FORMAT)
        return missing(e, "audit", "must be an audit line format this nbx reads (1)");
    rp->decision_id = string_field(root, "decision_id", e);
    const char *as_of = rp->decision_id ? string_field(root, "as_of", e) : NULL;
    if (!as_of)
        return e->code;
    if (nbx_time_parse(as_of, &rp->as_of) != NBX_OK)
        return missing(e, "as_of", "must be an RFC 3339 time");
    json_t *hex = json_object_get(root, "hex");
    if (hex && !json_is_object(hex))
        return missing(e, "hex", "must be an object");
    json_t *customer_hex = json_object_get(hex, "customer");
    const char *customer = customer_hex ? from_hex(rp, customer_hex, "hex.customer", e)
                                        : string_field(root, "customer", e);
    if (!customer)
        return e->code;
    rp->customer = nbx_arena_strndup(&rp->arena, customer, strlen(customer));
    if (!rp->customer)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    int rc = read_session(rp, root, hex, e);
    if (rc)
        return rc;
    json_t *placements = json_object_get(root, "placements");
    if (!json_is_array(placements) || json_array_size(placements) > NBX_REQUEST_PLACEMENTS_MAX)
        return missing(e, "placements", "must be an array of at most 64 placement ids");
    size_t i;
    json_t *p;
    json_array_foreach(placements, i, p)
    {
        if (!json_is_string(p))
            return missing(e, "placements", "must be an array of strings");
        rp->placements[i] = json_string_value(p);
    }
    rp->n_placements = json_array_size(placements);
    return NBX_OK;
}

/* ========================================================================
 * Comparing
 * ======================================================================== */

/* A member of the line by dotted path ("policy.version"). */
static json_t *member(json_t *root, const char *path)
{
    char name[64];
    const char *dot = strchr(path, '.');
    if (!dot)
        return json_object_get(root, path);
    snprintf(name, sizeof name, "%.*s", (int)(dot - path), path);
    return member(json_object_get(root, name), dot + 1);
}

/* Absent and null are the same: a field a newer line has, an older lacks. */
static bool same(json_t *a, json_t *b)
{
    if (json_is_null(a))
        a = NULL;
    if (json_is_null(b))
        b = NULL;
    return a == b || (a && b && json_equal(a, b));
}

/* The fields that make up a decision, in the order they are reported. */
static const char *const COMPARED[] = {
    "arm",   "deployment", "policy.version", "catalog_version", "actions", "fallback",
    "error", "anonymous",  "candidates",     "exclusions",      "shadow",
};

/* What changed since the decision, each a reason a replay may differ. */
static const struct {
    const char *reason;
    const char *field;
} VERSIONS[] = {
    {"policy_changed", "policy.version"},
    {"catalog_changed", "catalog_version"},
    {"deployment_changed", "deployment"},
    {"arm_changed", "arm"},
    {"profile_updated", "state.profile_updated_at"},
};

/* Every JSON value written by nbx's own writer, so that text from the line
 * is escaped as the audit line's is (jansson's writer leaves DEL and the C1
 * controls as they are). */
static void write_value(nbx_buf *b, json_t *v)
{
    const char *key;
    json_t *x;
    size_t i;
    bool first = true;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        nbx_buf_putc(b, '{');
        json_object_foreach(v, key, x)
        {
            if (!first)
                nbx_buf_putc(b, ',');
            first = false;
            nbx_jw_string(b, key, strlen(key));
            nbx_buf_putc(b, ':');
            write_value(b, x);
        }
        nbx_buf_putc(b, '}');
        break;
    case JSON_ARRAY:
        nbx_buf_putc(b, '[');
        json_array_foreach(v, i, x)
        {
            if (i)
                nbx_buf_putc(b, ',');
            write_value(b, x);
        }
        nbx_buf_putc(b, ']');
        break;
    case JSON_STRING:
        nbx_jw_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        nbx_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        nbx_jw_number(b, json_real_value(v));
        break;
    case JSON_TRUE:
        nbx_buf_puts(b, "true");
        break;
    case JSON_FALSE:
        nbx_buf_puts(b, "false");
        break;
    default:
        nbx_buf_puts(b, "null");
    }
}

static void open_reason(replay *rp, bool *first, const char *reason)
{
    nbx_buf_puts(&rp->out, *first ? "{\"reason\":\"" : ",{\"reason\":\"");
    nbx_buf_puts(&rp->out, reason);
    nbx_buf_putc(&rp->out, '"');
    *first = false;
}

/* The customer's event records: the decision's own impressions, and the
 * other events dated at or after its clock. */
static int count_events(nbx_store *s, const replay *rp, uint64_t *own, uint64_t *since, nbx_err *e)
{
    *own = *since = 0;
    MDB_txn *txn;
    int rc = nbx_store_read_begin(s, &txn, e);
    if (rc)
        return rc;
    char prefix[NBX_ID_MAX + 2];
    nbx_sv customer = nbx_sv_of(rp->customer);
    size_t plen = nbx_customer_prefix(prefix, customer);
    prefix[plen++] = NBX_TAG_EVENT;
    size_t id_len = strlen(rp->decision_id);
    MDB_cursor *cur;
    int mrc = mdb_cursor_open(txn, s->customers, &cur);
    if (mrc) {
        mdb_txn_abort(txn);
        return nbx_err_mdb(e, mrc, "reading event records");
    }
    MDB_val k = {plen, prefix}, v;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); mrc == 0 && rc == NBX_OK;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)
            break;
        const char *event_id = (const char *)k.mv_data + plen;
        size_t event_len = k.mv_size - plen;
        if (event_len > id_len && memcmp(event_id, rp->decision_id, id_len) == 0 &&
            event_id[id_len] == ':') {
            (*own)++;
            continue;
        }
        nbx_event ev = {.id = {event_id, event_len}, .customer = customer};
        if (nbx_event_record_decode(v.mv_data, v.mv_size, &ev) != NBX_OK)
            rc = nbx_err_set(e, NBX_ECORRUPT, "customer '%.64s': a damaged event record",
                             rp->customer);
        else if (ev.ts_ms >= rp->as_of)
            (*since)++;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc == NBX_OK && mrc && mrc != MDB_NOTFOUND)
        rc = nbx_err_mdb(e, mrc, "reading event records");
    return rc;
}

/* "reasons": what changed since the decision, whether or not the decision
 * changed with it. */
static int write_reasons(replay *rp, nbx_engine *engine, bool different, nbx_err *e)
{
    nbx_buf *b = &rp->out;
    bool first = true;
    nbx_buf_puts(b, ",\"reasons\":[");
    json_t *now = rp->replayed;
    nbx_engine_info info;
    json_t *served = NULL;
    if (!now) {
        /* not decided: what the engine serves stands for the new line */
        nbx_engine_info_get(engine, &info);
        served = json_pack("{s:{s:s},s:s}", "policy", "version", info.policy_version,
                           "catalog_version", info.catalog_version);
        now = served;
    }
    for (size_t i = 0; i < NBX_ARRAY_LEN(VERSIONS); i++) {
        json_t *was = member(rp->logged, VERSIONS[i].field), *is = member(now, VERSIONS[i].field);
        if (same(was, is) || (!rp->replayed && i > 1))
            continue;
        open_reason(rp, &first, VERSIONS[i].reason);
        nbx_buf_puts(b, ",\"logged\":");
        write_value(b, was ? was : json_null());
        nbx_buf_puts(b, ",\"now\":");
        write_value(b, is ? is : json_null());
        nbx_buf_putc(b, '}');
    }
    json_decref(served);
    int rc = NBX_OK;
    if (rp->replayed &&
        !same(member(rp->logged, "state.exposures"), member(rp->replayed, "state.exposures"))) {
        uint64_t own = 0, since = 0;
        rc = count_events(engine->store, rp, &own, &since, e);
        if (rc == NBX_OK && own) {
            open_reason(rp, &first, "own_impressions");
            nbx_buf_printf(b, ",\"events\":%llu}", (unsigned long long)own);
        }
        /* a late event dated before as_of changes the counters as well */
        if (rc == NBX_OK && (since || !own)) {
            open_reason(rp, &first, "events_since");
            nbx_buf_printf(b, ",\"dated_since\":%llu}", (unsigned long long)since);
        }
    }
    if (rp->replayed &&
        !same(member(rp->logged, "exclusions.budget"), member(rp->replayed, "exclusions.budget"))) {
        open_reason(rp, &first, "budgets");
        nbx_buf_putc(b, '}');
    }
    if (different && first) {
        open_reason(rp, &first, "unexplained");
        nbx_buf_putc(b, '}');
    }
    nbx_buf_putc(b, ']');
    return rc;
}

static int write_report(replay *rp, nbx_engine *engine, const char *replay_error, nbx_err *e)
{
    nbx_buf *b = &rp->out;
    nbx_buf_puts(b, "{\"decision_id\":");
    nbx_jw_string(b, rp->decision_id, strlen(rp->decision_id));
    nbx_buf_puts(b, ",\"customer\":");
    nbx_jw_string(b, rp->customer, strlen(rp->customer));
    nbx_buf_puts(b, ",\"as_of\":");
    nbx_jw_time(b, rp->as_of);
    bool different = replay_error != NULL;
    nbx_buf_puts(b, ",\"differences\":[");
    for (size_t i = 0; rp->replayed && i < NBX_ARRAY_LEN(COMPARED); i++) {
        if (same(member(rp->logged, COMPARED[i]), member(rp->replayed, COMPARED[i])))
            continue;
        nbx_buf_puts(b, different ? ",\"" : "\"");
        nbx_buf_puts(b, COMPARED[i]);
        nbx_buf_putc(b, '"');
        different = true;
    }
    nbx_buf_puts(b, different ? "],\"identical\":false" : "],\"identical\":true");
    int rc = write_reasons(rp, engine, different, e);
    if (replay_error) {
        nbx_buf_puts(b, ",\"replay_error\":");
        nbx_jw_string(b, replay_error, strlen(replay_error));
    } else {
        nbx_buf_puts(b, ",\"replayed\":");
        write_value(b, rp->replayed);
    }
    nbx_buf_putc(b, '}');
    nbx_buf_terminate(b);
    if (rc == NBX_OK && b->oom)
        rc = nbx_err_set(e, NBX_ENOMEM, "out of memory writing the replay report");
    return rc;
}

/* ========================================================================
 * Replay
 * ======================================================================== */

static int decide_again(replay *rp, nbx_ctx *ctx, const char **replay_error, nbx_err *e)
{
    *replay_error = NULL;
    if (rp->as_of == 0) {
        /* nbx_request.now_ms 0 means "now" */
        *replay_error = "as_of is 1970-01-01T00:00:00Z, which a request cannot ask for";
        return NBX_OK;
    }
    nbx_request req;
    nbx_request_init(&req);
    req.customer = rp->customer;
    req.placements = rp->placements;
    req.n_placements = rp->n_placements;
    req.session = rp->session;
    req.n_session = rp->n_session;
    req.now_ms = rp->as_of;
    req.flags = NBX_DECIDE_AUDIT;
    const nbx_result *r;
    int rc = nbx_decide(ctx, &req, &r);
    if (rc == NBX_EINVAL || rc == NBX_ELIMIT) {
        /* the request no longer fits the catalog (a placement or a channel
         * removed): a difference, not a failure of the replay */
        *replay_error = nbx_ctx_errmsg(ctx);
        return NBX_OK;
    }
    if (rc)
        return nbx_err_set(e, rc, "%s", nbx_ctx_errmsg(ctx));
    size_t len;
    const char *line = nbx_result_audit_json(r, &len);
    json_error_t jerr;
    rp->replayed = json_loadb(line, len, 0, &jerr);
    if (!rp->replayed)
        return nbx_err_set(e, NBX_ENOMEM, "reading the replayed decision: %s", jerr.text);
    return NBX_OK;
}

NBX_API int nbx_audit_replay(nbx_ctx *ctx, const char *line, size_t len, char **report,
                             size_t *report_len)
{
    if (report)
        *report = NULL;
    if (report_len)
        *report_len = 0;
    if (!ctx || !line || !report)
        return nbx_fail(ctx, NBX_EINVAL, "nbx_audit_replay: NULL argument");
    nbx_err e = {0};
    if (len > NBX_LINE_MAX) {
        nbx_err_set(&e, NBX_ELIMIT, "audit line of %zu bytes, the limit is %d", len, NBX_LINE_MAX);
        return nbx_ctx_fail(ctx, &e);
    }
    replay rp;
    memset(&rp, 0, sizeof rp);
    const char *replay_error = NULL;
    int rc = NBX_OK;
    rp.logged = load_line(line, len, &e);
    if (!rp.logged)
        rc = e.code;
    if (rc == NBX_OK)
        rc = read_request(&rp, &e);
    /* the context's message may be the replay error: copied before the
     * report is written, as writing it calls into the engine */
    char decide_msg[NBX_ERRMSG_MAX];
    if (rc == NBX_OK)
        rc = decide_again(&rp, ctx, &replay_error, &e);
    if (replay_error) {
        snprintf(decide_msg, sizeof decide_msg, "%s", replay_error);
        replay_error = decide_msg;
    }
    if (rc == NBX_OK)
        rc = write_report(&rp, nbx_ctx_engine(ctx), replay_error, &e);
    json_decref(rp.logged);
    json_decref(rp.replayed);
    nbx_arena_free(&rp.arena);
    if (rc) {
        nbx_buf_free(&rp.out);
        return nbx_ctx_fail(ctx, &e);
    }
    *report = rp.out.data;
    if (report_len)
        *report_len = rp.out.len;
    return NBX_OK;
}
