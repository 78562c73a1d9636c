/* Suite: errcodes: the error codes include/nbx.h lists for a function that
 * no other suite produced, each produced here on purpose by the condition
 * the header names (scripts/errcodes.py, the ctest `errcodes`, checks that
 * every documented code is produced by some test). */
#include "nbx.h"
#include "nbx_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir, *store_dir, *catalog_path, *policy_path;

/* 2026-03-10T12:00:00Z: inside every validity window of the fixture. */
#define NOW INT64_C(1773144000000)

static const char *SCORE = "return { name = 'constant', score = function() return 1 end }\n";
static const char *FAILING = "return { name = 'failing',\n"
                             "  score = function(o) error('boom on ' .. o.id) end }\n";

static char *write_file(const char *name, const char *content)
{
    char *path = tu_path(dir, name);
    cr_assert_eq(tu_write_file(path, content), 0);
    return path;
}

static void setup(void)
{
    dir = tu_tempdir("errcodes");
    cr_assert_not_null(dir);
    store_dir = tu_path(dir, "store");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_CREATE, &s), NBX_OK, "%s", nbx_last_errmsg());
    const char *p = "{\"id\":\"alice\",\"consent\":{\"personalization\":true}}";
    cr_assert_eq(nbx_profile_put(s, p, strlen(p)), NBX_OK);
    nbx_store_close(s);
    catalog_path = tu_source_path("tests/data/catalog.json");
    policy_path = write_file("policy.lua", SCORE);
}

static void teardown(void)
{
    unsetenv("NBX_MAP_SIZE");
    tu_rmtree(dir);
    free(dir);
    free(store_dir);
    free(catalog_path);
    free(policy_path);
}

TestSuite(errcodes, .init = setup, .fini = teardown, .timeout = 300);

static nbx_engine_options options(void)
{
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = policy_path;
    return o;
}

static nbx_engine *open_engine(void)
{
    nbx_engine_options o = options();
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    return e;
}

/* A request for alice at NOW. */
static nbx_request alice_request(unsigned flags)
{
    nbx_request r;
    nbx_request_init(&r);
    r.customer = "alice";
    r.now_ms = NOW;
    r.flags = flags;
    return r;
}

/* Write one value of a database of the store with raw LMDB, as damage or a
 * future nbx would. No handle of this process may have the store open. */
static void raw_put(const char *db, const void *key, size_t klen, const void *value, size_t len)
{
    MDB_env *env;
    cr_assert_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    cr_assert_eq(mdb_env_open(env, store_dir, MDB_NOTLS, 0664), 0);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    MDB_dbi dbi;
    cr_assert_eq(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v = {len, (void *)value};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void raw_meta_put(const char *key, const void *value, size_t len)
{
    raw_put("meta", key, strlen(key), value, len);
}

/* Damage a customer's event record: bytes no msgpack value starts with. */
static void damage_event_record(const char *customer, const char *event_id)
{
    char key[NBX_EVENT_KEY_MAX];
    size_t n = nbx_event_key(key, nbx_sv_of(customer), nbx_sv_of(event_id));
    raw_put("customers", key, n, "\xc1\xc1\xc1", 3);
}

static char *impression_json(const char *event_id, const char *customer)
{
    char *ev = malloc(300);
    snprintf(ev, 300,
             "{\"event_id\":\"%s\",\"customer\":\"%s\",\"type\":\"impression\","
             "\"offer\":\"free_shipping\",\"placement\":\"hero\",\"ts\":%lld}",
             event_id, customer, (long long)(NOW / 1000));
    return ev;
}

/* ------------------------------------------------------------------------
 * Files the engine and the checks read
 * ------------------------------------------------------------------------ */

/* A directory where a file is expected is a read error (EISDIR): NBX_EIO;
 * a missing file NBX_ENOTFOUND; a malformed catalog NBX_EPARSE. */
Test(errcodes, files_that_are_missing_unreadable_or_malformed)
{
    char *missing = tu_path(dir, "missing.json");
    char *bad_catalog = write_file("bad.json", "{\"placements\": [");
    nbx_engine_info info;

    cr_assert_eq(nbx_catalog_check(dir, &info), NBX_EIO, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_catalog_check(bad_catalog, &info), NBX_EPARSE, "%s", nbx_last_errmsg());

    nbx_engine_options o = options();
    o.catalog = dir;
    cr_assert_eq(nbx_engine_check(&o, &info), NBX_EIO, "%s", nbx_last_errmsg());
    o.catalog = missing;
    cr_assert_eq(nbx_engine_check(&o, &info), NBX_ENOTFOUND, "%s", nbx_last_errmsg());
    o.catalog = bad_catalog;
    cr_assert_eq(nbx_engine_check(&o, &info), NBX_EPARSE, "%s", nbx_last_errmsg());

    nbx_engine *e = NULL;
    o = options();
    o.policy = dir;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EIO, "%s", nbx_last_errmsg());
    o = options();
    o.catalog = bad_catalog;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EPARSE, "%s", nbx_last_errmsg());
    cr_assert_null(e);

    e = open_engine();
    cr_assert_eq(nbx_engine_load_catalog(e, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_engine_load_catalog(e, dir), NBX_EIO, "%s", nbx_engine_errmsg(e));
    cr_assert_eq(nbx_engine_load_catalog(e, missing), NBX_ENOTFOUND, "%s", nbx_engine_errmsg(e));
    cr_assert_eq(nbx_engine_load_policy(e, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_engine_load_policy(e, dir), NBX_EIO, "%s", nbx_engine_errmsg(e));
    cr_assert_eq(nbx_engine_load_policy(e, missing), NBX_ENOTFOUND, "%s", nbx_engine_errmsg(e));
    nbx_engine_close(e);
    free(missing);
    free(bad_catalog);
}

/* A store path that is a file, a store of a newer format, a data file that
 * is not LMDB. */
Test(errcodes, stores_that_cannot_be_opened_or_upgraded)
{
    char *file = write_file("not_a_dir", "x");
    cr_assert_eq(nbx_store_upgrade(file, NULL, NULL), NBX_EIO, "%s", nbx_last_errmsg());
    nbx_engine_options o = options();
    o.store = file;
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EIO, "%s", nbx_last_errmsg());

    uint8_t newer = NBX_SCHEMA_VERSION + 1;
    raw_meta_put(NBX_META_SCHEMA, &newer, 1);
    o = options();
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_EVERSION, "%s", nbx_last_errmsg());
    cr_assert_null(e);

    char *junk_store = tu_path(dir, "junk");
    cr_assert_eq(mkdir(junk_store, 0775), 0);
    char *data = tu_path(junk_store, "data.mdb");
    char junk[16384];
    memset(junk, 'j', sizeof junk - 1);
    junk[sizeof junk - 1] = '\0';
    cr_assert_eq(tu_write_file(data, junk), 0);
    cr_assert_eq(nbx_store_upgrade(junk_store, NULL, NULL), NBX_ECORRUPT, "%s", nbx_last_errmsg());
    free(file);
    free(junk_store);
    free(data);
}

/* compact into a directory that cannot be made (its parent is a file). */
Test(errcodes, compact_where_no_directory_can_be_made)
{
    char *file = write_file("plain", "x");
    char *under = tu_path(file, "copy");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK);
    cr_assert_eq(nbx_store_compact(s, under), NBX_EIO, "%s", nbx_store_errmsg(s));
    nbx_store_close(s);
    free(file);
    free(under);
}

/* ------------------------------------------------------------------------
 * Misuse and limits
 * ------------------------------------------------------------------------ */

Test(errcodes, null_and_out_of_range_arguments)
{
    nbx_engine_info info;
    cr_assert_eq(nbx_engine_info_get(NULL, &info), NBX_EINVAL);
    nbx_engine *e = open_engine();
    cr_assert_eq(nbx_engine_info_get(e, NULL), NBX_EINVAL);
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    nbx_request r = alice_request(0);
    const nbx_result *res;
    cr_assert_eq(nbx_decide(c, &r, &res), NBX_OK, "%s", nbx_ctx_errmsg(c));
    nbx_action a;
    cr_assert_eq(nbx_result_action(res, nbx_result_action_count(res), &a), NBX_EINVAL);
    cr_assert_eq(nbx_result_action(NULL, 0, &a), NBX_EINVAL);
    nbx_ctx_close(c);
    nbx_engine_close(e);
}

/* Inputs over NBX_LINE_MAX: an event, a profile, a profile given with a
 * request, a batch line. */
Test(errcodes, inputs_over_the_line_limit)
{
    size_t n = (size_t)NBX_LINE_MAX + 16;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    big[n] = '\0';

    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK);
    cr_assert_eq(nbx_profile_put(s, big, n), NBX_ELIMIT, "%s", nbx_store_errmsg(s));
    nbx_store_close(s);

    nbx_engine *e = open_engine();
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    int applied = -1;
    cr_assert_eq(nbx_record(c, big, n, &applied), NBX_ELIMIT, "%s", nbx_ctx_errmsg(c));

    nbx_request r = alice_request(0);
    r.profile_json = big;
    r.profile_len = n;
    const nbx_result *res;
    cr_assert_eq(nbx_decide(c, &r, &res), NBX_ELIMIT, "%s", nbx_ctx_errmsg(c));
    nbx_ctx_close(c);

    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.now_ms = NOW;
    nbx_batch *b;
    cr_assert_eq(nbx_batch_open(e, &o, &b), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_batch_submit_json(b, big, n, NULL), NBX_ELIMIT, "%s", nbx_last_errmsg());
    nbx_batch_close(b);
    nbx_engine_close(e);
    free(big);
}

/* The trial of a policy that fails on the trial customers. */
Test(errcodes, a_trial_that_falls_back)
{
    free(policy_path);
    policy_path = write_file("failing.lua", FAILING);
    nbx_engine_options o = options();
    o.flags = NBX_ENGINE_NO_STORE;
    o.store = NULL;
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_engine_trial(e, NULL, NULL), NBX_EPOLICY, "%s", nbx_engine_errmsg(e));
    nbx_engine_close(e);
}

/* ------------------------------------------------------------------------
 * Damaged stored values
 * ------------------------------------------------------------------------ */

/* The event count (meta "events") and the suppression key damaged: the
 * writes that update them refuse, naming the store. */
Test(errcodes, damaged_meta_values_are_refused_by_writers)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK);
    const char *ids[] = {"alice"};
    cr_assert_eq(nbx_profile_erase(s, ids, 1, NULL), NBX_OK, "%s", nbx_store_errmsg(s));
    nbx_store_close(s);
    raw_meta_put(NBX_META_SUPPRESSION_SECRET, "short", 5);
    raw_meta_put(NBX_META_EVENTS, "\xc1\xc1\xc1", 3);

    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_profile_delete(s, "bob"), NBX_ECORRUPT, "%s", nbx_store_errmsg(s));
    char *events = write_file("events.jsonl", "");
    char *ev = impression_json("e1", "carol");
    FILE *f = fopen(events, "w");
    fprintf(f, "%s\n", ev);
    fclose(f);
    nbx_import_options io;
    nbx_import_options_init(&io);
    nbx_import_stats st;
    cr_assert_eq(nbx_import_file(s, NBX_IMPORT_EVENTS, events, &io, &st), NBX_ECORRUPT, "%s",
                 nbx_store_errmsg(s));
    nbx_store_close(s);

    nbx_engine *e = open_engine();
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    int applied = -1, outcome = -1;
    cr_assert_eq(nbx_record(c, ev, strlen(ev), &applied), NBX_ECORRUPT, "%s", nbx_ctx_errmsg(c));
    cr_assert_eq(nbx_record_ex(c, ev, strlen(ev), NBX_RECORD_SERVER_TIME, &outcome), NBX_ECORRUPT,
                 "%s", nbx_ctx_errmsg(c));
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(events);
    free(ev);
}

/* ------------------------------------------------------------------------
 * A full store
 * ------------------------------------------------------------------------ */

/* Fill a store of a 1 MiB map until even a small profile does not fit:
 * every write after that fails with NBX_EFULL and changes nothing. */
Test(errcodes, a_full_store_refuses_every_write)
{
    char *full = tu_path(dir, "full");
    setenv("NBX_MAP_SIZE", "1M", 1);
    nbx_store *s;
    cr_assert_eq(nbx_store_open(full, NBX_STORE_CREATE, &s), NBX_OK, "%s", nbx_last_errmsg());
    const char *seed = "{\"id\":\"alice\",\"consent\":{\"personalization\":true}}";
    cr_assert_eq(nbx_profile_put(s, seed, strlen(seed)), NBX_OK);
    char *pad = malloc(4000);
    char *json = malloc(4200);
    int rc = NBX_OK;
    for (size_t size = 3000; size >= 10; size /= 4) {
        memset(pad, 'x', size);
        pad[size] = '\0';
        for (int i = 0; rc == NBX_OK; i++) {
            snprintf(json, 4200, "{\"id\":\"p%zu_%06d\",\"attrs\":{\"pad\":\"%s\"}}", size, i, pad);
            rc = nbx_profile_put(s, json, strlen(json));
        }
        cr_assert_eq(rc, NBX_EFULL, "%s", nbx_store_errmsg(s));
        rc = NBX_OK;
    }
    const char *small = "{\"id\":\"z\"}";
    cr_assert_eq(nbx_profile_put(s, small, strlen(small)), NBX_EFULL, "%s", nbx_store_errmsg(s));
    char *ev = impression_json("e1", "alice");
    cr_assert_eq(nbx_event_apply(s, ev, strlen(ev), NULL), NBX_EFULL, "%s", nbx_store_errmsg(s));
    const char *ids[] = {"alice"};
    cr_assert_eq(nbx_profile_erase(s, ids, 1, NULL), NBX_EFULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_profile_delete(s, "alice"), NBX_EFULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_rfm_rebuild(s, NOW, NULL), NBX_EFULL, "%s", nbx_store_errmsg(s));
    nbx_store_close(s);

    nbx_engine_options o = options();
    o.store = full;
    nbx_engine *e = NULL;
    cr_assert_eq(nbx_engine_open(&o, &e), NBX_OK, "%s", nbx_last_errmsg());
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    int applied = -1, outcome = -1;
    cr_assert_eq(nbx_record(c, ev, strlen(ev), &applied), NBX_EFULL, "%s", nbx_ctx_errmsg(c));
    cr_assert_eq(nbx_record_ex(c, ev, strlen(ev), 0, &outcome), NBX_EFULL, "%s", nbx_ctx_errmsg(c));
    nbx_request r = alice_request(NBX_DECIDE_RECORD);
    const nbx_result *res;
    cr_assert_eq(nbx_decide(c, &r, &res), NBX_EFULL, "%s", nbx_ctx_errmsg(c));
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(pad);
    free(json);
    free(ev);
    free(full);
}

/* ------------------------------------------------------------------------
 * Deployments
 * ------------------------------------------------------------------------ */

/* DIR/NAME.json: one arm serving policy (a path relative to DIR), with the
 * shadow array given (JSON) or none. */
static char *deployment_file(const char *name, const char *policy, const char *shadow)
{
    char json[1024], file[64];
    snprintf(json, sizeof json,
             "{\"name\":\"q4\",\"salt\":\"q4-2026\",\"arms\":[{\"name\":\"only\",\"policy\":"
             "\"%s\",\"percent\":100}]%s%s}",
             policy, shadow ? ",\"shadow\":" : "", shadow ? shadow : "");
    snprintf(file, sizeof file, "%s.json", name);
    return write_file(file, json);
}

static void assert_message_has(const char *msg, const char *words)
{
    cr_assert(strstr(msg, words), "expected '%s' in: %s", words, msg);
}

/* A missing file, a directory, a file over the 1 MiB a deployment may
 * have, and an arm whose policy file is not Lua. */
Test(errcodes, deployment_files_unreadable_oversized_or_naming_a_broken_policy)
{
    nbx_deployment *d = NULL;
    char *missing = tu_path(dir, "missing.json");
    cr_assert_eq(nbx_deployment_open(missing, 0, &d), NBX_ENOTFOUND, "%s", nbx_last_errmsg());
    assert_message_has(nbx_last_errmsg(), "missing.json");
    cr_assert_eq(nbx_deployment_open(dir, 0, &d), NBX_EIO, "%s", nbx_last_errmsg());
    assert_message_has(nbx_last_errmsg(), "not a regular file");

    char *big = write_file("big.json", "");
    cr_assert_eq(truncate(big, (1 << 20) + 1), 0);
    cr_assert_eq(nbx_deployment_open(big, 0, &d), NBX_ELIMIT, "%s", nbx_last_errmsg());
    assert_message_has(nbx_last_errmsg(), "over the limit");

    free(write_file("broken.lua", "return {name = 'x',\n score = function(o) return 1 +"));
    char *broken = deployment_file("broken", "broken.lua", NULL);
    cr_assert_eq(nbx_deployment_open(broken, 0, &d), NBX_EPOLICY, "%s", nbx_last_errmsg());
    assert_message_has(nbx_last_errmsg(), "broken.json: arm 'only': field 'policy'");
    cr_assert_null(d);
    free(missing);
    free(big);
    free(broken);
}

/* A reload from a directory, of a deployment with more shadows than the
 * limit, and of one whose arm's policy fails its trial (its sandbox does
 * not build: the chunk raises an error): each refused, and the policy the
 * engine was opened with keeps serving. */
Test(errcodes, deployment_reloads_that_are_refused)
{
    nbx_engine *e = open_engine();
    cr_assert_eq(nbx_engine_load_deployment(e, dir), NBX_EIO, "%s", nbx_engine_errmsg(e));
    assert_message_has(nbx_engine_errmsg(e), "not a regular file");

    char shadow[512] = "[";
    for (int i = 0; i <= NBX_DEPLOYMENT_SHADOW_MAX; i++)
        strcat(shadow, i ? ",\"policy.lua\"" : "\"policy.lua\"");
    strcat(shadow, "]");
    char *crowded = deployment_file("crowded", "policy.lua", shadow);
    cr_assert_eq(nbx_engine_load_deployment(e, crowded), NBX_ELIMIT, "%s", nbx_engine_errmsg(e));
    assert_message_has(nbx_engine_errmsg(e), "crowded.json: field 'shadow'");

    free(write_file("failing.lua", "error('broken at the top level')\n"));
    char *failing = deployment_file("failing", "failing.lua", NULL);
    cr_assert_eq(nbx_engine_load_deployment(e, failing), NBX_EPOLICY, "%s", nbx_engine_errmsg(e));
    assert_message_has(nbx_engine_errmsg(e), "failing.json: arm 'only': ");
    assert_message_has(nbx_engine_errmsg(e), "broken at the top level");
    cr_assert_null(nbx_engine_deployment(e), "a refused deployment serves");
    nbx_engine_close(e);
    free(crowded);
    free(failing);
}

/* ------------------------------------------------------------------------
 * Audit lines and experiment reports
 * ------------------------------------------------------------------------ */

/* A JSON object that is not an audit line; then a real line replayed after
 * the customer's event record since was damaged (the event changed her
 * exposure counters, so the replay reads her event records to say why). */
Test(errcodes, audit_lines_malformed_or_over_damaged_event_records)
{
    nbx_engine *e = open_engine();
    nbx_ctx *c;
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    char *report = NULL;
    const char *other = "{\"audit\":1,\"decision_id\":\"x\"}";
    cr_assert_eq(nbx_audit_replay(c, other, strlen(other), &report, NULL), NBX_EPARSE, "%s",
                 nbx_ctx_errmsg(c));
    assert_message_has(nbx_ctx_errmsg(c), "field 'as_of'");

    nbx_request r = alice_request(NBX_DECIDE_AUDIT);
    const nbx_result *res;
    cr_assert_eq(nbx_decide(c, &r, &res), NBX_OK, "%s", nbx_ctx_errmsg(c));
    char *line = strdup(nbx_result_audit_json(res, NULL));
    char *ev = impression_json("e1", "alice");
    int applied = 0;
    cr_assert_eq(nbx_record(c, ev, strlen(ev), &applied), NBX_OK, "%s", nbx_ctx_errmsg(c));
    cr_assert(applied);
    nbx_ctx_close(c);
    nbx_engine_close(e);

    damage_event_record("alice", "e1");
    e = open_engine();
    cr_assert_eq(nbx_ctx_open(e, &c), NBX_OK);
    cr_assert_eq(nbx_audit_replay(c, line, strlen(line), &report, NULL), NBX_ECORRUPT, "%s",
                 nbx_ctx_errmsg(c));
    assert_message_has(nbx_ctx_errmsg(c), "customer 'alice': a damaged event record");
    cr_assert_null(report);
    nbx_ctx_close(c);
    nbx_engine_close(e);
    free(line);
    free(ev);
}

/* The report reads every customer's event records: a damaged one is
 * refused naming the customer. */
Test(errcodes, an_experiment_report_over_a_damaged_event_record)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK);
    char *ev = impression_json("e1", "alice");
    cr_assert_eq(nbx_event_apply(s, ev, strlen(ev), NULL), NBX_OK, "%s", nbx_store_errmsg(s));
    nbx_store_close(s);
    damage_event_record("alice", "e1");

    char *path = deployment_file("q4", "policy.lua", NULL);
    nbx_deployment *d;
    cr_assert_eq(nbx_deployment_open(path, NBX_DEPLOYMENT_NO_POLICIES, &d), NBX_OK, "%s",
                 nbx_last_errmsg());
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_READONLY, &s), NBX_OK);
    nbx_report *rep = NULL;
    cr_assert_eq(nbx_report_experiment(s, d, NOW - 86400000, NOW + 86400000, &rep), NBX_ECORRUPT,
                 "%s", nbx_store_errmsg(s));
    assert_message_has(nbx_store_errmsg(s), "customer 'alice': an event record cannot be decoded");
    cr_assert_null(rep);
    nbx_store_close(s);
    nbx_deployment_close(d);
    free(path);
    free(ev);
}

/* ------------------------------------------------------------------------
 * Kill switches
 * ------------------------------------------------------------------------ */

static int count_kill(void *ud, const nbx_kill_info *k)
{
    (void)k;
    (*(int *)ud)++;
    return 0;
}

/* An unkill on a read-only store writes nothing; a damaged kill, then a
 * damaged change of the history, are refused by the reader of each. */
Test(errcodes, a_read_only_unkill_and_damaged_kill_records)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK);
    cr_assert_eq(nbx_kill(s, NBX_KILL_OFFER, "free_shipping", "legal asked", "cli"), NBX_OK, "%s",
                 nbx_store_errmsg(s));
    nbx_store_close(s);

    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_READONLY, &s), NBX_OK);
    cr_assert_eq(nbx_unkill(s, NBX_KILL_OFFER, "free_shipping", NULL, "cli"), NBX_EREADONLY, "%s",
                 nbx_store_errmsg(s));
    assert_message_has(nbx_store_errmsg(s), "read-only");
    int n = 0;
    cr_assert_eq(nbx_kills_read(s, 0, count_kill, &n), NBX_OK, "%s", nbx_store_errmsg(s));
    cr_assert_eq(n, 1, "the refused unkill lifted the kill");
    nbx_store_close(s);

    char key[NBX_KILL_KEY_MAX];
    raw_put("kills", key, nbx_kill_key(key, NBX_KILL_OFFER, nbx_sv_of("free_shipping")),
            "\xc1\xc1\xc1", 3);
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_READONLY, &s), NBX_OK);
    cr_assert_eq(nbx_kills_read(s, 0, count_kill, &n), NBX_ECORRUPT, "%s", nbx_store_errmsg(s));
    assert_message_has(nbx_store_errmsg(s), "a damaged kill record");
    n = 0;
    cr_assert_eq(nbx_kills_read(s, NBX_KILLS_HISTORY, count_kill, &n), NBX_OK, "%s",
                 nbx_store_errmsg(s));
    cr_assert_eq(n, 1);
    nbx_store_close(s);

    uint8_t seq[NBX_KILL_LOG_KEY_SIZE];
    nbx_kill_log_key(seq, 1);
    raw_put("kill_log", seq, sizeof seq, "\xc1\xc1\xc1", 3);
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_READONLY, &s), NBX_OK);
    cr_assert_eq(nbx_kills_read(s, NBX_KILLS_HISTORY, count_kill, &n), NBX_ECORRUPT, "%s",
                 nbx_store_errmsg(s));
    assert_message_has(nbx_store_errmsg(s), "a damaged kill history record");
    nbx_store_close(s);
}
