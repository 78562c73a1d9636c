/* Suite: audit (core/audit.c): the audit line of a decision, written only
 * with NBX_DECIDE_AUDIT, with every field docs/experiments.md lists, safe
 * to write to a log as it is, and exact about what it cannot carry as
 * JSON text; batches hand it back per item, in submission order. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir, *store_dir, *catalog_path;
static nbx_engine *engine;
static nbx_ctx *ctx;

/* 2026-03-10T12:00:00Z: inside every validity window of the fixture. */
#define NOW INT64_C(1773144000000)

static const char *BY_PRICE = "return { name = 'by_price',\n"
                              "  score = function(o, c, s) return o.price end }\n";
static const char *FAILING = "return { name = 'failing',\n"
                             "  score = function(o) error('boom on ' .. o.id) end }\n";

static void open_engine(const char *policy_src)
{
    char *policy = tu_path(dir, "policy.lua");
    cr_assert_eq(tu_write_file(policy, policy_src), 0);
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = policy;
    cr_assert_eq(nbx_engine_open(&o, &engine), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(engine, &ctx), NBX_OK, "%s", nbx_last_errmsg());
    free(policy);
}

static void setup(void)
{
    dir = tu_tempdir("audit");
    store_dir = tu_path(dir, "store");
    const char *profiles[] = {"{\"id\":\"alice\",\"consent\":{\"personalization\":true},"
                              "\"propensity\":{\"winback_20\":0.5},"
                              "\"updated_at\":\"2026-03-01T08:00:00Z\"}",
                              NULL};
    cr_assert_eq(tu_store_with(store_dir, profiles), 0, "%s", nbx_last_errmsg());
    catalog_path = tu_source_path("tests/data/catalog.json");
    open_engine(BY_PRICE);
}

static void teardown(void)
{
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    ctx = NULL;
    engine = NULL;
    tu_rmtree(dir);
    free(dir);
    free(store_dir);
    free(catalog_path);
}

TestSuite(audit, .init = setup, .fini = teardown);

static const nbx_result *decide_with(const char *customer, const char *const *placements,
                                     size_t n_placements, const nbx_kv *session, size_t n_session,
                                     unsigned flags)
{
    nbx_request r;
    nbx_request_init(&r);
    r.customer = customer;
    r.placements = placements;
    r.n_placements = n_placements;
    r.session = session;
    r.n_session = n_session;
    r.now_ms = NOW;
    r.flags = flags;
    const nbx_result *res = NULL;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_OK, "decide: %s", nbx_ctx_errmsg(ctx));
    return res;
}

/* The audit line of r, parsed (json_decref it); it must be one line. */
static json_t *audit_of(const nbx_result *r)
{
    size_t len = 0;
    const char *line = nbx_result_audit_json(r, &len);
    cr_assert(line, "no audit line");
    cr_assert_eq(strlen(line), len, "the length is the line's");
    cr_assert_null(memchr(line, '\n', len), "a line break in the audit line: %s", line);
    json_error_t jerr;
    json_t *doc = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    cr_assert(doc, "the audit line does not parse: %s: %s", jerr.text, line);
    return doc;
}

static const char *text_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_string(v), "field '%s' is not a string", key);
    return json_string_value(v);
}

/* ------------------------------------------------------------------------ */

Test(audit, no_line_unless_asked)
{
    const nbx_result *r = decide_with("alice", NULL, 0, NULL, 0, 0);
    size_t len = 99;
    cr_expect_null(nbx_result_audit_json(r, &len));
    cr_expect_eq(len, 0);
    /* asked once, not asked again: the line does not linger */
    decide_with("alice", NULL, 0, NULL, 0, NBX_DECIDE_AUDIT);
    r = decide_with("alice", NULL, 0, NULL, 0, 0);
    cr_expect_null(nbx_result_audit_json(r, NULL));
    cr_expect_null(nbx_result_audit_json(NULL, &len));
    cr_expect_eq(len, 0);
}

Test(audit, the_line_holds_the_decision_and_its_request)
{
    const char *placements[] = {"recs", "hero"};
    nbx_kv session[] = {{"channel", "web"}, {"page", "home"}};
    const nbx_result *r = decide_with("alice", placements, 2, session, 2, NBX_DECIDE_AUDIT);
    json_t *doc = audit_of(r);
    nbx_engine_info info;
    cr_assert_eq(nbx_engine_info_get(engine, &info), NBX_OK);

    cr_expect_eq(json_integer_value(json_object_get(doc, "audit")), NBX_AUDIT_FORMAT);
    cr_expect_str_eq(text_at(doc, "decision_id"), nbx_result_decision_id(r));
    cr_expect_str_eq(text_at(doc, "as_of"), "2026-03-10T12:00:00Z");
    cr_expect_str_eq(text_at(doc, "customer"), "alice");
    cr_expect(json_is_null(json_object_get(doc, "arm")), "no deployment: arm null");
    json_t *policy = json_object_get(doc, "policy");
    cr_expect_str_eq(text_at(policy, "name"), "by_price");
    cr_expect_str_eq(text_at(policy, "version"), info.policy_version);
    cr_expect_str_eq(text_at(doc, "catalog_version"), info.catalog_version);

    json_t *s = json_object_get(doc, "session");
    cr_expect_eq(json_object_size(s), 2);
    cr_expect_str_eq(text_at(s, "channel"), "web");
    cr_expect_str_eq(text_at(s, "page"), "home");
    json_t *p = json_object_get(doc, "placements");
    cr_assert_eq(json_array_size(p), 2, "placements as requested");
    cr_expect_str_eq(json_string_value(json_array_get(p, 0)), "recs");
    cr_expect_str_eq(json_string_value(json_array_get(p, 1)), "hero");

    json_t *actions = json_object_get(doc, "actions");
    cr_assert_eq(json_array_size(actions), nbx_result_action_count(r));
    cr_assert_gt(json_array_size(actions), 0);
    for (size_t i = 0; i < json_array_size(actions); i++) {
        nbx_action a;
        cr_assert_eq(nbx_result_action(r, i, &a), NBX_OK);
        json_t *x = json_array_get(actions, i);
        cr_expect_str_eq(text_at(x, "offer"), a.offer);
        cr_expect_str_eq(text_at(x, "placement"), a.placement);
        cr_expect_float_eq(json_number_value(json_object_get(x, "score")), a.score, 1e-6);
        cr_expect_float_eq(json_number_value(json_object_get(x, "expected_margin")),
                           a.expected_margin, 1e-6);
        cr_expect_eq(json_number_value(json_object_get(x, "probability")), 1.0);
    }
    cr_expect_float_eq(json_number_value(json_object_get(doc, "expected_margin")),
                       nbx_result_expected_margin(r), 1e-6);

    uint32_t counts[NBX_EXCLUDED_COUNT];
    nbx_result_exclusions(r, counts);
    json_t *ex = json_object_get(doc, "exclusions");
    uint32_t total = counts[0];
    for (int i = 1; i < NBX_EXCLUDED_COUNT; i++) {
        json_t *n = json_object_get(ex, nbx_excluded_name(i));
        cr_expect_eq(n ? (uint32_t)json_integer_value(n) : 0, counts[i], "exclusions.%s",
                     nbx_excluded_name(i));
        total += counts[i];
    }
    cr_expect_gt(counts[NBX_EXCLUDED_GUARDRAIL], 0, "the fixture breaks the guardrails");
    cr_expect_eq(json_integer_value(json_object_get(doc, "candidates")), total);
    cr_expect(json_is_false(json_object_get(doc, "fallback")));
    cr_expect(json_is_false(json_object_get(doc, "anonymous")));
    cr_expect(json_is_null(json_object_get(doc, "error")));

    json_t *st = json_object_get(doc, "state");
    cr_expect_str_eq(text_at(st, "profile"), "store");
    cr_expect_str_eq(text_at(st, "profile_updated_at"), "2026-03-01T08:00:00Z");
    cr_expect_str_eq(text_at(st, "exposures"), "0000000000000000", "no counters yet");
    cr_expect_null(json_object_get(doc, "hex"), "every text is UTF-8");
    json_decref(doc);
}

Test(audit, a_fallback_keeps_the_whole_error_record)
{
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    open_engine(FAILING);
    nbx_request r;
    nbx_request_init(&r);
    r.customer = "alice";
    r.now_ms = NOW;
    /* what a client is shown does not limit what the audit log keeps */
    r.flags = NBX_DECIDE_AUDIT | NBX_DECIDE_ERROR_KIND_ONLY;
    const nbx_result *res;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert(nbx_result_fallback(res));
    json_t *doc = audit_of(res);
    cr_expect(json_is_true(json_object_get(doc, "fallback")));
    json_t *err = json_object_get(doc, "error");
    cr_assert(json_is_object(err), "an error record");
    cr_expect_str_eq(text_at(err, "kind"), "runtime");
    cr_expect_str_eq(text_at(err, "where"), "policy.lua:2");
    cr_expect(strstr(text_at(err, "reason"), "boom on") != NULL, "%s", text_at(err, "reason"));
    cr_expect_str_eq(text_at(err, "policy"), "failing");
    json_t *ex = json_object_get(doc, "exclusions");
    cr_expect_gt(json_integer_value(json_object_get(ex, "policy_error")), 0);
    json_decref(doc);
    /* the client's JSON stays as it was */
    cr_expect(strstr(nbx_result_json(res, NULL), "\"where\"") == NULL);
}

Test(audit, text_from_requests_cannot_steer_a_log_or_a_terminal)
{
    /* C0 (ESC, CR, LF), DEL, a C1 CSI (U+009B), quotes and backslashes */
    const char *nasty = "a\x1b[31m\r\n\x7f\xc2\x9b\"\\z";
    nbx_kv session[] = {{"note", nasty}};
    const nbx_result *r = decide_with("alice", NULL, 0, session, 1, NBX_DECIDE_AUDIT);
    size_t len;
    const char *line = nbx_result_audit_json(r, &len);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        cr_assert(c >= 0x20 && c != 0x7f, "raw control byte 0x%02x at %zu: %s", c, i, line);
        cr_assert(!(c == 0xc2 && i + 1 < len && (unsigned char)line[i + 1] < 0xa0),
                  "raw C1 control at %zu: %s", i, line);
    }
    json_t *doc = audit_of(r);
    cr_expect_str_eq(text_at(json_object_get(doc, "session"), "note"), nasty,
                     "escaped, not changed");
    json_decref(doc);
}

Test(audit, bytes_that_are_not_utf8_travel_in_hex)
{
    nbx_kv session[] = {{"device", "ok"}, {"agent", "x\xff"}};
    const nbx_result *r = decide_with("bad\xfe", NULL, 0, session, 2, NBX_DECIDE_AUDIT);
    json_t *doc = audit_of(r);
    json_t *hex = json_object_get(doc, "hex");
    cr_assert(json_is_object(hex), "a hex record");
    cr_expect_str_eq(text_at(hex, "customer"), "626164fe");
    json_t *pairs = json_object_get(hex, "session");
    cr_assert_eq(json_array_size(pairs), 2, "the whole session, in order");
    cr_expect_str_eq(json_string_value(json_array_get(json_array_get(pairs, 0), 0)),
                     "646576696365");
    cr_expect_str_eq(json_string_value(json_array_get(json_array_get(pairs, 1), 1)), "78ff");
    /* the text fields stay readable */
    cr_expect_str_eq(text_at(doc, "customer"), "bad\xef\xbf\xbd");
    json_decref(doc);

    r = decide_with("plain", NULL, 0, session, 1, NBX_DECIDE_AUDIT);
    doc = audit_of(r);
    cr_expect_null(json_object_get(doc, "hex"), "only when needed");
    json_decref(doc);
}

Test(audit, an_unknown_customer_has_no_profile_and_no_counters)
{
    const nbx_result *r = decide_with("stranger", NULL, 0, NULL, 0, NBX_DECIDE_AUDIT);
    json_t *doc = audit_of(r);
    json_t *st = json_object_get(doc, "state");
    cr_expect(json_is_null(json_object_get(st, "profile")));
    cr_expect(json_is_null(json_object_get(st, "profile_updated_at")));
    cr_expect(json_is_true(json_object_get(doc, "anonymous")));
    json_decref(doc);
}

Test(audit, a_profile_given_in_the_request_says_so)
{
    nbx_request r;
    nbx_request_init(&r);
    r.customer = "alice";
    r.now_ms = NOW;
    r.flags = NBX_DECIDE_AUDIT;
    const char *profile = "{\"id\":\"alice\",\"consent\":{\"personalization\":true}}";
    r.profile_json = profile;
    r.profile_len = strlen(profile);
    const nbx_result *res;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    json_t *doc = audit_of(res);
    json_t *st = json_object_get(doc, "state");
    cr_expect_str_eq(text_at(st, "profile"), "request");
    cr_expect(json_is_null(json_object_get(st, "profile_updated_at")));
    json_decref(doc);
}

/* state.exposures of a fresh decision for customer */
static char *exposures_of(const char *customer)
{
    json_t *doc = audit_of(decide_with(customer, NULL, 0, NULL, 0, NBX_DECIDE_AUDIT));
    char *hex = strdup(text_at(json_object_get(doc, "state"), "exposures"));
    json_decref(doc);
    return hex;
}

static void record_event(const char *json)
{
    int applied = 0;
    cr_assert_eq(nbx_record(ctx, json, strlen(json), &applied), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert(applied);
}

Test(audit, the_exposure_hash_changes_with_the_customer_s_events_only)
{
    char *before = exposures_of("alice");
    record_event("{\"event_id\":\"b1\",\"customer\":\"bob\",\"type\":\"impression\","
                 "\"offer\":\"free_shipping\",\"ts\":\"2026-03-10T09:00:00Z\"}");
    char *other = exposures_of("alice");
    cr_expect_str_eq(other, before, "another customer's event");
    record_event("{\"event_id\":\"a1\",\"customer\":\"alice\",\"type\":\"impression\","
                 "\"offer\":\"free_shipping\",\"ts\":\"2026-03-10T09:00:00Z\"}");
    char *after = exposures_of("alice");
    cr_expect_str_neq(after, before, "alice's own event");
    cr_expect_str_neq(after, "0000000000000000");
    char *again = exposures_of("alice");
    cr_expect_str_eq(again, after, "nothing recorded since");
    free(before);
    free(other);
    free(after);
    free(again);
}

Test(audit, a_batch_hands_each_item_its_line_in_order)
{
    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.threads = 2;
    o.now_ms = NOW;
    o.flags = NBX_DECIDE_AUDIT;
    nbx_batch *b;
    cr_assert_eq(nbx_batch_open(engine, &o, &b), NBX_OK, "%s", nbx_last_errmsg());
    char ids[40][16];
    for (int i = 0; i < 40; i++) {
        snprintf(ids[i], sizeof ids[i], i % 3 ? "c%03d" : "alice%03d", i);
        cr_assert_eq(nbx_batch_submit(b, ids[i], NULL, 0, NULL), NBX_OK);
    }
    const nbx_batch_item *it;
    int n = 0;
    while (nbx_batch_next(b, &it) == NBX_OK) {
        cr_assert_eq(it->status, NBX_OK, "%s", it->errmsg);
        cr_assert(it->audit, "item %d has no audit line", n);
        json_t *doc = json_loadb(it->audit, it->audit_len, 0, NULL);
        cr_assert(doc, "item %d: %s", n, it->audit);
        cr_expect_str_eq(text_at(doc, "customer"), ids[n]);
        cr_expect_str_eq(text_at(doc, "decision_id"), it->decision_id);
        json_decref(doc);
        n++;
    }
    cr_expect_eq(n, 40);
    nbx_batch_close(b);

    o.flags = 0;
    cr_assert_eq(nbx_batch_open(engine, &o, &b), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_batch_submit(b, "alice", NULL, 0, NULL), NBX_OK);
    cr_assert_eq(nbx_batch_next(b, &it), NBX_OK);
    cr_expect_null(it->audit, "not asked");
    cr_expect_eq(it->audit_len, 0);
    nbx_batch_close(b);
}
