/* Suite: replay (core/replay.c): a logged decision made again on a real
 * store is identical while nothing changed, and otherwise names what
 * changed: the policy, the profile, events since, its own impressions, a
 * request the catalog no longer takes. Lines that are not audit lines are
 * refused naming the field. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir, *store_dir, *catalog_path, *policy_path;
static nbx_engine *engine;
static nbx_ctx *ctx;

/* 2026-03-10T12:00:00Z: inside every validity window of the fixture. */
#define NOW INT64_C(1773144000000)

static const char *BY_PRICE = "return { name = 'by_price',\n"
                              "  score = function(o, c, s) return o.price end }\n";
static const char *BY_COST = "return { name = 'by_cost',\n"
                             "  score = function(o, c, s) return o.unit_cost end }\n";

static void setup(void)
{
    dir = tu_tempdir("replay");
    store_dir = tu_path(dir, "store");
    const char *profiles[] = {"{\"id\":\"alice\",\"consent\":{\"personalization\":true},"
                              "\"propensity\":{\"winback_20\":0.5}}",
                              NULL};
    cr_assert_eq(tu_store_with(store_dir, profiles), 0, "%s", nbx_last_errmsg());
    catalog_path = tu_source_path("tests/data/catalog.json");
    policy_path = tu_path(dir, "policy.lua");
    cr_assert_eq(tu_write_file(policy_path, BY_PRICE), 0);
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = policy_path;
    cr_assert_eq(nbx_engine_open(&o, &engine), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(engine, &ctx), NBX_OK, "%s", nbx_last_errmsg());
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
    free(policy_path);
}

TestSuite(replay, .init = setup, .fini = teardown);

/* A decision's audit line (malloc'd). */
static char *logged(const char *customer, unsigned flags, const char *const *placements,
                    size_t n_placements, const nbx_kv *session, size_t n_session)
{
    nbx_request r;
    nbx_request_init(&r);
    r.customer = customer;
    r.now_ms = NOW;
    r.flags = flags | NBX_DECIDE_AUDIT;
    r.placements = placements;
    r.n_placements = n_placements;
    r.session = session;
    r.n_session = n_session;
    const nbx_result *res;
    cr_assert_eq(nbx_decide(ctx, &r, &res), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    return strdup(nbx_result_audit_json(res, NULL));
}

static char *logged_simple(const char *customer)
{
    return logged(customer, 0, NULL, 0, NULL, 0);
}

/* The replay report of line, parsed (json_decref it). */
static json_t *replay(const char *line)
{
    char *text = NULL;
    size_t len = 0;
    int rc = nbx_audit_replay(ctx, line, strlen(line), &text, &len);
    cr_assert_eq(rc, NBX_OK, "replay: %s", nbx_ctx_errmsg(ctx));
    cr_assert_eq(strlen(text), len);
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, 0, &jerr);
    cr_assert(doc, "the report does not parse: %s: %s", jerr.text, text);
    nbx_free(text);
    return doc;
}

/* The reason object named so in a report, or NULL. */
static json_t *reason(json_t *report, const char *name)
{
    json_t *r;
    size_t i;
    json_array_foreach(json_object_get(report, "reasons"), i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "reason")), name) == 0)
            return r;
    }
    return NULL;
}

static bool differs_in(json_t *report, const char *field)
{
    json_t *f;
    size_t i;
    json_array_foreach(json_object_get(report, "differences"), i, f)
    {
        if (strcmp(json_string_value(f), field) == 0)
            return true;
    }
    return false;
}

static char *dump(json_t *report)
{
    return json_dumps(report, JSON_COMPACT);
}

static void record_event(const char *json)
{
    int applied = 0;
    cr_assert_eq(nbx_record(ctx, json, strlen(json), &applied), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    cr_assert(applied);
}

/* ------------------------------------------------------------------------ */

Test(replay, nothing_changed_nothing_differs)
{
    const char *placements[] = {"recs"};
    nbx_kv session[] = {{"channel", "web"}};
    const char *lines[] = {logged_simple("alice"), logged_simple("stranger"),
                           logged("alice", 0, placements, 1, session, 1)};
    for (size_t i = 0; i < 3; i++) {
        json_t *rep = replay(lines[i]);
        char *text = dump(rep);
        cr_expect(json_is_true(json_object_get(rep, "identical")), "line %zu: %s", i, text);
        cr_expect_eq(json_array_size(json_object_get(rep, "differences")), 0, "%s", text);
        cr_expect_eq(json_array_size(json_object_get(rep, "reasons")), 0, "%s", text);
        json_t *again = json_object_get(rep, "replayed");
        cr_expect_str_neq(json_string_value(json_object_get(again, "decision_id")),
                          json_string_value(json_object_get(rep, "decision_id")), "a new decision");
        free(text);
        json_decref(rep);
        free((char *)lines[i]);
    }
}

Test(replay, a_new_policy_is_named)
{
    char *line = logged_simple("alice");
    char *path = tu_path(dir, "by_cost.lua");
    cr_assert_eq(tu_write_file(path, BY_COST), 0);
    cr_assert_eq(nbx_engine_load_policy(engine, path), NBX_OK, "%s", nbx_last_errmsg());
    json_t *rep = replay(line);
    char *text = dump(rep);
    cr_expect(json_is_false(json_object_get(rep, "identical")), "%s", text);
    cr_expect(differs_in(rep, "policy.version"), "%s", text);
    json_t *why = reason(rep, "policy_changed");
    cr_assert(why, "no policy_changed: %s", text);
    nbx_engine_info info;
    nbx_engine_info_get(engine, &info);
    cr_expect_str_eq(json_string_value(json_object_get(why, "now")), info.policy_version);
    cr_expect_str_neq(json_string_value(json_object_get(why, "logged")), info.policy_version);
    cr_expect_null(reason(rep, "unexplained"), "%s", text);
    free(text);
    json_decref(rep);
    free(path);
    free(line);
}

Test(replay, events_recorded_since_are_named)
{
    char *line = logged_simple("alice");
    /* free_shipping is capped at 3 impressions a week: it drops out */
    for (int i = 0; i < 3; i++) {
        char ev[256];
        snprintf(ev, sizeof ev,
                 "{\"event_id\":\"late%d\",\"customer\":\"alice\",\"type\":\"impression\","
                 "\"offer\":\"free_shipping\",\"ts\":\"2026-03-10T1%d:00:00Z\"}",
                 i, 2 + i);
        record_event(ev);
    }
    json_t *rep = replay(line);
    char *text = dump(rep);
    cr_expect(json_is_false(json_object_get(rep, "identical")), "%s", text);
    cr_expect(differs_in(rep, "actions"), "%s", text);
    cr_expect(differs_in(rep, "exclusions"), "%s", text);
    cr_expect_not(differs_in(rep, "policy.version"), "%s", text);
    json_t *why = reason(rep, "events_since");
    cr_assert(why, "no events_since: %s", text);
    cr_expect_eq(json_integer_value(json_object_get(why, "dated_since")), 3, "%s", text);
    cr_expect_null(reason(rep, "own_impressions"), "%s", text);
    cr_expect_null(reason(rep, "policy_changed"), "%s", text);
    free(text);
    json_decref(rep);
    free(line);
}

Test(replay, a_late_event_dated_before_the_decision_still_counts)
{
    char *line = logged_simple("alice");
    for (int i = 0; i < 3; i++) {
        char ev[256];
        snprintf(ev, sizeof ev,
                 "{\"event_id\":\"early%d\",\"customer\":\"alice\",\"type\":\"impression\","
                 "\"offer\":\"free_shipping\",\"ts\":\"2026-03-09T1%d:00:00Z\"}",
                 i, i);
        record_event(ev);
    }
    json_t *rep = replay(line);
    char *text = dump(rep);
    cr_expect(json_is_false(json_object_get(rep, "identical")), "%s", text);
    json_t *why = reason(rep, "events_since");
    cr_assert(why, "the counters changed: %s", text);
    cr_expect_eq(json_integer_value(json_object_get(why, "dated_since")), 0, "%s", text);
    free(text);
    json_decref(rep);
    free(line);
}

Test(replay, its_own_recorded_impressions_are_named_apart)
{
    char *line = logged("alice", NBX_DECIDE_RECORD, NULL, 0, NULL, 0);
    json_t *doc = json_loads(line, 0, NULL);
    size_t n_actions = json_array_size(json_object_get(doc, "actions"));
    json_decref(doc);
    cr_assert_gt(n_actions, 1);
    json_t *rep = replay(line);
    char *text = dump(rep);
    /* max_contacts 5 a week: its own 4 impressions leave one contact */
    cr_expect(json_is_false(json_object_get(rep, "identical")), "%s", text);
    json_t *own = reason(rep, "own_impressions");
    cr_assert(own, "no own_impressions: %s", text);
    cr_expect_eq((size_t)json_integer_value(json_object_get(own, "events")), n_actions, "%s", text);
    cr_expect_null(reason(rep, "events_since"), "only its own: %s", text);
    free(text);
    json_decref(rep);
    free(line);
}

Test(replay, a_profile_updated_since_is_named)
{
    char *line = logged_simple("alice");
    nbx_store *s = nbx_engine_store(engine);
    const char *patch = "{\"id\":\"alice\",\"propensity\":{\"winback_20\":0.01}}";
    cr_assert_eq(nbx_profile_put(s, patch, strlen(patch)), NBX_OK, "%s", nbx_last_errmsg());
    json_t *rep = replay(line);
    char *text = dump(rep);
    json_t *why = reason(rep, "profile_updated");
    cr_assert(why, "no profile_updated: %s", text);
    cr_expect(json_is_string(json_object_get(why, "now")), "%s", text);
    free(text);
    json_decref(rep);
    free(line);

    /* a profile that appeared since */
    line = logged_simple("newcomer");
    const char *p = "{\"id\":\"newcomer\",\"consent\":{\"personalization\":true}}";
    cr_assert_eq(nbx_profile_put(s, p, strlen(p)), NBX_OK, "%s", nbx_last_errmsg());
    rep = replay(line);
    text = dump(rep);
    cr_expect(json_is_false(json_object_get(rep, "identical")), "%s", text);
    why = reason(rep, "profile_updated");
    cr_assert(why, "no profile_updated: %s", text);
    cr_expect(json_is_null(json_object_get(why, "logged")), "%s", text);
    free(text);
    json_decref(rep);
    free(line);
}

Test(replay, a_request_the_catalog_no_longer_takes_is_a_difference)
{
    const char *placements[] = {"hero"};
    char *line = logged("alice", 0, placements, 1, NULL, 0);
    /* the same line asking for a placement the catalog does not have */
    char *moved = strdup(line);
    char *at = strstr(moved, "\"placements\":[\"hero\"]");
    cr_assert(at);
    memcpy(at, "\"placements\":[\"gone\"]", strlen("\"placements\":[\"gone\"]"));
    json_t *rep = replay(moved);
    char *text = dump(rep);
    cr_expect(json_is_false(json_object_get(rep, "identical")), "%s", text);
    const char *why = json_string_value(json_object_get(rep, "replay_error"));
    cr_assert(why, "%s", text);
    cr_expect(strstr(why, "gone") != NULL, "%s", why);
    cr_expect_null(json_object_get(rep, "replayed"));
    free(text);
    json_decref(rep);
    free(moved);
    free(line);
}

Test(replay, a_prefix_before_the_line_and_hex_bytes_are_read)
{
    char *line = logged_simple("odd\xff");
    size_t n = strlen(line) + 64;
    char *prefixed = malloc(n);
    snprintf(prefixed, n, "127.0.0.1 - [10/Mar/2026:12:00:00 +0000] %s", line);
    json_t *rep = replay(prefixed);
    char *text = dump(rep);
    cr_expect(json_is_true(json_object_get(rep, "identical")), "%s", text);
    json_t *again = json_object_get(rep, "replayed");
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(again, "hex"), "customer")),
                     "6f6464ff", "the same customer, byte for byte: %s", text);
    free(text);
    json_decref(rep);
    free(prefixed);
    free(line);
}

/* The replay of line must fail with code, its message naming field. */
static void refused(const char *line, int code, const char *field)
{
    char *text = (char *)"unchanged";
    int rc = nbx_audit_replay(ctx, line, strlen(line), &text, NULL);
    cr_expect_eq(rc, code, "%s: expected %d, got %d", line, code, rc);
    cr_expect_null(text, "no report on failure");
    cr_expect(strstr(nbx_ctx_errmsg(ctx), field) != NULL, "expected '%s' in '%s'", field,
              nbx_ctx_errmsg(ctx));
}

Test(replay, lines_that_are_not_audit_lines_are_refused)
{
    refused("not json at all", NBX_EPARSE, "not an audit line");
    refused("{\"audit\":1,", NBX_EPARSE, "not an audit line");
    refused("{\"decision_id\":\"x\"}", NBX_EPARSE, "'audit'");
    refused("{\"audit\":99,\"decision_id\":\"x\"}", NBX_EPARSE, "'audit'");
    refused("{\"audit\":1,\"decision_id\":\"x\",\"as_of\":\"yesterday\"}", NBX_EPARSE, "'as_of'");
    refused("{\"audit\":1,\"decision_id\":\"x\",\"as_of\":\"2026-03-10T12:00:00Z\"}", NBX_EPARSE,
            "'customer'");
    refused("{\"audit\":1,\"decision_id\":\"x\",\"as_of\":\"2026-03-10T12:00:00Z\","
            "\"customer\":\"a\",\"session\":{\"k\":1},\"placements\":[]}",
            NBX_EPARSE, "'session.k'");
    refused("{\"audit\":1,\"decision_id\":\"x\",\"as_of\":\"2026-03-10T12:00:00Z\","
            "\"customer\":\"a\",\"session\":{},\"placements\":\"hero\"}",
            NBX_EPARSE, "'placements'");
    refused("{\"audit\":1,\"decision_id\":\"x\",\"as_of\":\"2026-03-10T12:00:00Z\","
            "\"customer\":\"a\",\"hex\":{\"customer\":\"6100\"},\"session\":{},\"placements\":[]}",
            NBX_EPARSE, "'hex.customer'");
}

Test(replay, null_and_oversized_arguments_are_misuse)
{
    char *text = NULL;
    cr_expect_eq(nbx_audit_replay(NULL, "{}", 2, &text, NULL), NBX_EINVAL);
    cr_expect_eq(nbx_audit_replay(ctx, NULL, 2, &text, NULL), NBX_EINVAL);
    cr_expect_eq(nbx_audit_replay(ctx, "{}", 2, NULL, NULL), NBX_EINVAL);
    cr_expect_eq(nbx_audit_replay(ctx, "{}", (size_t)NBX_LINE_MAX + 1, &text, NULL), NBX_ELIMIT);
    cr_expect_null(text);
}
