/* Suite: kills (core/kills.c): kill switches on a real store: nbx_kill(),
 * nbx_unkill() and nbx_kills_read() (all or nothing, errors naming the
 * field, the history), the kill set a context reads (a kill is effective on
 * the next decision, without a reload; nothing is read again while nothing
 * changed), killed offers excluded as `killed` from candidates and
 * fallbacks, and the abort's kill of an arm. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir, *store_dir, *catalog_path;
static nbx_engine *engine;
static nbx_ctx *ctx;
static nbx_store *store; /* the engine's (one LMDB environment per process) */

/* 2026-03-10T12:00:00Z: inside every validity window of the fixture. */
#define NOW INT64_C(1773144000000)
#define POLICY_VERSION "0123456789abcdef"

static const char *FS_FIRST = "return { name = 'fs_first', score = function(o)\n"
                              "  if o.id == 'free_shipping' then return 100 end\n"
                              "  return o.price end }\n";
static const char *FAILING = "return { name = 'failing',\n"
                             "  score = function(o) error('boom on ' .. o.id) end }\n";

static void setup(void)
{
    dir = tu_tempdir("kills");
    store_dir = tu_path(dir, "store");
    const char *profiles[] = {"{\"id\":\"alice\",\"consent\":{\"personalization\":true}}", NULL};
    cr_assert_eq(tu_store_with(store_dir, profiles), 0, "%s", nbx_last_errmsg());
    catalog_path = tu_source_path("tests/data/catalog.json");
}

static void teardown(void)
{
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    ctx = NULL;
    engine = NULL;
    store = NULL;
    tu_rmtree(dir);
    free(dir);
    free(store_dir);
    free(catalog_path);
}

TestSuite(kills, .init = setup, .fini = teardown, .timeout = 120);

/* An engine on the suite's store and catalog, serving the policy file or
 * the deployment file given, and a context on it. */
static void open_serving(const char *policy, const char *deployment)
{
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store = store_dir;
    o.catalog = catalog_path;
    o.policy = policy;
    o.deployment = deployment;
    cr_assert_eq(nbx_engine_open(&o, &engine), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_ctx_open(engine, &ctx), NBX_OK, "%s", nbx_last_errmsg());
    store = nbx_engine_store(engine);
}

static void open_engine(const char *policy_src)
{
    char *policy = tu_path(dir, "policy.lua");
    cr_assert_eq(tu_write_file(policy, policy_src), 0);
    open_serving(policy, NULL);
    free(policy);
}

static const nbx_result *decide(void)
{
    nbx_request req;
    nbx_request_init(&req);
    req.customer = "alice";
    req.now_ms = NOW;
    req.flags = NBX_DECIDE_EXPLAIN;
    const nbx_result *r;
    cr_assert_eq(nbx_decide(ctx, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
    return r;
}

static bool serves(const nbx_result *r, const char *offer)
{
    for (size_t i = 0; i < nbx_result_action_count(r); i++) {
        nbx_action a;
        cr_assert_eq(nbx_result_action(r, i, &a), NBX_OK);
        if (strcmp(a.offer, offer) == 0)
            return true;
    }
    return false;
}

/* Everything nbx_kills_read() hands, as "kind name by killed reason" lines. */
static int collect(void *ud, const nbx_kill_info *k)
{
    char line[1200];
    snprintf(line, sizeof line, "%s %s %s %d %s\n", nbx_kill_kind_name(k->kind), k->name, k->by,
             k->killed, k->reason);
    strcat(ud, line);
    cr_assert_gt(k->at_ms, 0, "%s: no time", k->name);
    return 0;
}

static char *listing(nbx_store *s, unsigned flags)
{
    static char out[8192];
    out[0] = '\0';
    cr_assert_eq(nbx_kills_read(s, flags, collect, out), NBX_OK, "%s", nbx_store_errmsg(s));
    return out;
}

/* ========================================================================
 * Writing and reading
 * ======================================================================== */

Test(kills, kill_unkill_and_the_history)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_kill(s, NBX_KILL_OFFER, "winback_20", "legal asked", "cli"), NBX_OK, "%s",
                 nbx_store_errmsg(s));
    cr_assert_eq(nbx_kill(s, NBX_KILL_ARM, "q4.challenger", "looks wrong", NULL), NBX_OK, "%s",
                 nbx_store_errmsg(s));
    cr_assert_eq(nbx_kill(s, NBX_KILL_POLICY, POLICY_VERSION, "bad release", "cli"), NBX_OK);
    /* killing again replaces the reason; both kills are in the history */
    cr_assert_eq(nbx_kill(s, NBX_KILL_OFFER, "winback_20", "legal asked twice", "cli"), NBX_OK);
    cr_assert_str_eq(listing(s, 0), "offer winback_20 cli 1 legal asked twice\n"
                                    "arm q4.challenger api 1 looks wrong\n"
                                    "policy " POLICY_VERSION " cli 1 bad release\n");
    cr_assert_eq(nbx_unkill(s, NBX_KILL_OFFER, "winback_20", NULL, "cli"), NBX_OK, "%s",
                 nbx_store_errmsg(s));
    cr_assert_eq(nbx_unkill(s, NBX_KILL_ARM, "q4.challenger", "fixed", "cli"), NBX_OK);
    cr_assert_str_eq(listing(s, 0), "policy " POLICY_VERSION " cli 1 bad release\n");
    cr_assert_str_eq(listing(s, NBX_KILLS_HISTORY), "offer winback_20 cli 1 legal asked\n"
                                                    "arm q4.challenger api 1 looks wrong\n"
                                                    "policy " POLICY_VERSION " cli 1 bad release\n"
                                                    "offer winback_20 cli 1 legal asked twice\n"
                                                    "offer winback_20 cli 0 \n"
                                                    "arm q4.challenger cli 0 fixed\n");
    nbx_store_close(s);
    /* the kills are in the store: another handle (process) sees them */
    cr_assert_eq(nbx_store_open(store_dir, NBX_STORE_READONLY, &s), NBX_OK);
    cr_assert_str_eq(listing(s, 0), "policy " POLICY_VERSION " cli 1 bad release\n");
    cr_assert_eq(nbx_kill(s, NBX_KILL_OFFER, "o1", "r", NULL), NBX_EREADONLY);
    nbx_store_close(s);
}

/* Each bad argument is refused with the field named, and nothing is written:
 * neither the current set nor the history. */
Test(kills, bad_input_names_the_field_and_writes_nothing)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    char long_id[200], long_reason[NBX_KILL_REASON_MAX + 2];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    memset(long_reason, 'r', sizeof long_reason - 1);
    long_reason[sizeof long_reason - 1] = '\0';
    const struct {
        int kind;
        const char *name, *reason, *by, *field;
    } bad[] = {
        {NBX_KILL_OFFER, "", "r", NULL, "'offer'"},
        {NBX_KILL_OFFER, long_id, "r", NULL, "'offer'"},
        {NBX_KILL_ARM, "chal lenger", "r", NULL, "'arm'"},
        {NBX_KILL_ARM, "holdout", "r", NULL, "'arm'"},
        {NBX_KILL_ARM, "q4.", "r", NULL, "'arm'"},
        {NBX_KILL_ARM, "q4.chal lenger", "r", NULL, "'arm'"},
        {NBX_KILL_ARM, "q4.holdout", "r", NULL, "'arm'"},
        {NBX_KILL_POLICY, "0123456789ABCDEF", "r", NULL, "'policy'"},
        {NBX_KILL_POLICY, "0123", "r", NULL, "'policy'"},
        {9, "x", "r", NULL, "'kind'"},
        {NBX_KILL_OFFER, "o1", "", NULL, "'reason'"},
        {NBX_KILL_OFFER, "o1", long_reason, NULL, "'reason'"},
        {NBX_KILL_OFFER, "o1", "bad \xff byte", NULL, "'reason'"},
        {NBX_KILL_OFFER, "o1", "r", "", "'by'"},
        {NBX_KILL_OFFER, "o1", "r", "c l i", "'by'"},
    };
    for (size_t i = 0; i < NBX_ARRAY_LEN(bad); i++) {
        int rc = nbx_kill(s, bad[i].kind, bad[i].name, bad[i].reason, bad[i].by);
        cr_assert_eq(rc, NBX_EINVAL, "case %zu: got %d", i, rc);
        cr_assert(strstr(nbx_store_errmsg(s), bad[i].field) != NULL, "case %zu: %s", i,
                  nbx_store_errmsg(s));
    }
    cr_assert_eq(nbx_kill(s, NBX_KILL_OFFER, "o1", NULL, NULL), NBX_EINVAL);
    cr_assert(strstr(nbx_store_errmsg(s), "'reason'") != NULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_unkill(s, NBX_KILL_OFFER, "o1", NULL, NULL), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_store_errmsg(s), "'offer': 'o1' is not killed") != NULL, "%s",
              nbx_store_errmsg(s));
    cr_assert_eq(nbx_kill(NULL, NBX_KILL_OFFER, "o1", "r", NULL), NBX_EINVAL);
    cr_assert_eq(nbx_unkill(s, NBX_KILL_OFFER, NULL, NULL, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_kills_read(s, 0, NULL, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_kills_read(s, 0x10, collect, NULL), NBX_EINVAL);
    cr_assert_null(nbx_kill_kind_name(0));
    cr_assert_str_eq(listing(s, 0), "");
    cr_assert_str_eq(listing(s, NBX_KILLS_HISTORY), "", "a refused change reached the history");
    nbx_store_close(s);
}

/* ========================================================================
 * Decisions
 * ======================================================================== */

/* Killed between two decisions of the same context: the next one excludes
 * the offer as `killed`, with the reason in its explanation; unkilled, it is
 * served again. No reload in between. */
Test(kills, a_kill_is_effective_on_the_next_decision)
{
    open_engine(FS_FIRST);
    cr_assert(serves(decide(), "free_shipping"));
    cr_assert_eq(nbx_kill(store, NBX_KILL_OFFER, "free_shipping", "wrong \x1b[31mprice", "cli"),
                 NBX_OK, "%s", nbx_store_errmsg(store));
    const nbx_result *r = decide();
    cr_assert(!serves(r, "free_shipping"), "%s", nbx_result_json(r, NULL));
    uint32_t counts[NBX_EXCLUDED_COUNT];
    nbx_result_exclusions(r, counts);
    cr_assert_eq(counts[NBX_EXCLUDED_KILLED], 2, "free_shipping in hero and recs: %u",
                 counts[NBX_EXCLUDED_KILLED]);
    cr_assert_str_eq(nbx_excluded_name(NBX_EXCLUDED_KILLED), "killed");
    const char *json = nbx_result_json(r, NULL);
    cr_assert(strstr(json, "\"excluded\":\"killed\"") != NULL, "%s", json);
    /* the reason, escaped: no escape sequence reaches a terminal */
    cr_assert(strstr(json, "killed: wrong \\\\x1b[31mprice") != NULL, "%s", json);

    cr_assert_eq(nbx_unkill(store, NBX_KILL_OFFER, "free_shipping", "fixed", "cli"), NBX_OK);
    cr_assert(serves(decide(), "free_shipping"));
}

/* A fallback that is killed is not shown either. */
Test(kills, fallbacks_are_killed_too)
{
    open_engine(FAILING);
    const nbx_result *r = decide();
    cr_assert(nbx_result_fallback(r));
    cr_assert(serves(r, "brand_banner"), "%s", nbx_result_json(r, NULL));
    cr_assert_eq(nbx_kill(store, NBX_KILL_OFFER, "brand_banner", "expired artwork", "cli"), NBX_OK);
    r = decide();
    cr_assert(nbx_result_fallback(r));
    cr_assert(!serves(r, "brand_banner"), "%s", nbx_result_json(r, NULL));
    cr_assert(serves(r, "bestsellers"), "the other fallback stays: %s", nbx_result_json(r, NULL));
}

/* The set is read again only when the generation moved: another write
 * (a profile) changes the snapshot but not the set. */
Test(kills, the_set_is_read_again_only_when_it_changed)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    nbx_kills k = {0};
    nbx_err e = {0};
    MDB_txn *txn;
    cr_assert_eq(nbx_store_read_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_kills_refresh(&k, s, txn, &e), NBX_OK, "%s", e.msg);
    uint64_t v0 = k.version;
    cr_assert_eq(nbx_kills_refresh(&k, s, txn, &e), NBX_OK);
    cr_assert_eq(k.version, v0, "read again on the same snapshot");
    mdb_txn_abort(txn);

    cr_assert_eq(nbx_profile_put(s, "{\"id\":\"bob\"}", 12), NBX_OK);
    cr_assert_eq(nbx_store_read_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_kills_refresh(&k, s, txn, &e), NBX_OK);
    cr_assert_eq(k.version, v0, "read again after an unrelated write");
    mdb_txn_abort(txn);

    cr_assert_eq(nbx_kill(s, NBX_KILL_ARM, "q4.challenger", "r", NULL), NBX_OK);
    cr_assert_eq(nbx_kill(s, NBX_KILL_POLICY, POLICY_VERSION, "r", NULL), NBX_OK);
    cr_assert_eq(nbx_store_read_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_kills_refresh(&k, s, txn, &e), NBX_OK);
    mdb_txn_abort(txn);
    cr_assert_neq(k.version, v0, "not read again after a kill");
    cr_assert(nbx_arm_killed(&k, NBX_SV("q4"), NBX_SV("challenger")));
    cr_assert(!nbx_arm_killed(&k, NBX_SV("q5"), NBX_SV("challenger")));
    cr_assert(!nbx_arm_killed(&k, NBX_SV("q4"), NBX_SV("champion")));
    cr_assert(nbx_policy_killed(&k, NBX_SV(POLICY_VERSION)));
    cr_assert(!nbx_policy_killed(&k, NBX_SV("fedcba9876543210")));
    cr_assert(!nbx_offer_killed(&k, NBX_SV("challenger")));
    cr_assert(!nbx_offer_killed(NULL, NBX_SV("o1")));

    /* an arm by its name alone: that arm in every deployment; a name with a
     * '.' is DEPLOYMENT.ARM, never an arm's name alone */
    cr_assert_eq(nbx_kill(s, NBX_KILL_ARM, "canary", "r", NULL), NBX_OK, "%s",
                 nbx_store_errmsg(s));
    cr_assert_eq(nbx_kill(s, NBX_KILL_ARM, "v1.2", "r", NULL), NBX_OK, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_store_read_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_kills_refresh(&k, s, txn, &e), NBX_OK);
    mdb_txn_abort(txn);
    cr_assert(nbx_arm_killed(&k, NBX_SV("q4"), NBX_SV("canary")));
    cr_assert(nbx_arm_killed(&k, NBX_SV("q5"), NBX_SV("canary")));
    cr_assert(!nbx_arm_killed(&k, NBX_SV("q5"), NBX_SV("challenger")));
    cr_assert(nbx_arm_killed(&k, NBX_SV("v1"), NBX_SV("2")));
    cr_assert(!nbx_arm_killed(&k, NBX_SV("q4"), NBX_SV("v1.2")),
              "q4's arm v1.2 taken for deployment v1's arm 2");
    cr_assert(!nbx_offer_killed(&k, NBX_SV("canary")));
    cr_assert_eq(nbx_unkill(s, NBX_KILL_ARM, "canary", NULL, NULL), NBX_OK);
    cr_assert_eq(nbx_store_read_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_kills_refresh(&k, s, txn, &e), NBX_OK);
    mdb_txn_abort(txn);
    cr_assert(!nbx_arm_killed(&k, NBX_SV("q4"), NBX_SV("canary")), "unkilled, still killed");
    nbx_kills_free(&k);
    nbx_store_close(s);
}

/* The canary abort's kill: in the caller's transaction, origin "abort",
 * the rule and the figures as reason; rolled back with it. */
Test(kills, an_abort_kills_the_arm_in_its_transaction)
{
    nbx_store *s;
    cr_assert_eq(nbx_store_open(store_dir, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    nbx_err e = {0};
    nbx_buf scratch = {0};
    MDB_txn *txn;
    const char *why = "fallback rate 0.052 > max_fallback_rate 0.01 after 1000 decisions";
    cr_assert_eq(nbx_store_write_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(
        nbx_kills_abort_arm(s, txn, NBX_SV("q4"), NBX_SV("challenger"), why, NOW, &scratch, &e),
        NBX_OK, "%s", e.msg);
    mdb_txn_abort(txn);
    cr_assert_str_eq(listing(s, NBX_KILLS_HISTORY), "", "an aborted transaction kept its kill");

    cr_assert_eq(nbx_store_write_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(
        nbx_kills_abort_arm(s, txn, NBX_SV("q4"), NBX_SV("challenger"), why, NOW, &scratch, &e),
        NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_store_commit(s, txn, &e), NBX_OK);
    char want[256];
    snprintf(want, sizeof want, "arm q4.challenger abort 1 %s\n", why);
    cr_assert_str_eq(listing(s, 0), want);
    cr_assert_str_eq(listing(s, NBX_KILLS_HISTORY), want);

    /* figures beyond the limit are cut at a character's start, not refused */
    char longer[NBX_KILL_REASON_MAX + 100] = "x";
    size_t n = 1;
    while (n + 2 < sizeof longer) { /* é after x: byte 1024 is inside one */
        memcpy(longer + n, "\xc3\xa9", 2);
        n += 2;
    }
    longer[n] = '\0';
    cr_assert_eq(nbx_store_write_begin(s, &txn, &e), NBX_OK);
    cr_assert_eq(
        nbx_kills_abort_arm(s, txn, NBX_SV("q4"), NBX_SV("canary"), longer, NOW, &scratch, &e),
        NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_store_commit(s, txn, &e), NBX_OK);
    nbx_buf_free(&scratch);
    nbx_store_close(s);
}

/* ========================================================================
 * Arms and policy versions
 * ======================================================================== */

static const char *PRICE = "return { name = 'price', score = function(o) return o.price end }\n";

#define CUSTOMERS 200

/* Each customer's served and assigned arm, and the policy version that
 * decided ("" for the control treatment). */
struct arms {
    char served[CUSTOMERS][16], assigned[CUSTOMERS][16], version[CUSTOMERS][17];
};

static void decide_all(struct arms *a)
{
    for (int i = 0; i < CUSTOMERS; i++) {
        char id[16];
        snprintf(id, sizeof id, "c%03d", i);
        nbx_request req;
        nbx_request_init(&req);
        req.customer = id;
        req.now_ms = NOW;
        const nbx_result *r;
        cr_assert_eq(nbx_decide(ctx, &req, &r), NBX_OK, "%s", nbx_ctx_errmsg(ctx));
        const char *version = NULL;
        const char *policy = nbx_result_policy(r, &version);
        snprintf(a->served[i], sizeof a->served[i], "%s", nbx_result_arm(r));
        snprintf(a->assigned[i], sizeof a->assigned[i], "%s", nbx_result_assigned_arm(r));
        snprintf(a->version[i], sizeof a->version[i], "%s", policy ? version : "");
        if (!policy)
            cr_assert(nbx_result_action_count(r) > 0, "%s: the control treatment shows fallbacks",
                      id);
    }
}

/* A killed arm's customers go to the first arm; when the first arm is
 * killed too (by name or by its policy version) to the control treatment;
 * a killed policy version kills the arm serving it. Each on the next
 * decision of the same context. */
Test(kills, killed_arms_send_their_customers_to_the_first_arm_or_the_control)
{
    char *champ = tu_path(dir, "champ.lua"), *chal = tu_path(dir, "chal.lua");
    char *dep = tu_path(dir, "q4.json");
    cr_assert_eq(tu_write_file(champ, FS_FIRST), 0);
    cr_assert_eq(tu_write_file(chal, PRICE), 0);
    cr_assert_eq(tu_write_file(dep,
                               "{\"name\":\"q4\",\"salt\":\"s\",\"arms\":["
                               "{\"name\":\"champion\",\"policy\":\"champ.lua\",\"percent\":50},"
                               "{\"name\":\"challenger\",\"policy\":\"chal.lua\","
                               "\"percent\":50}]}"),
                 0);
    open_serving(NULL, dep);

    static struct arms a;
    decide_all(&a);
    int challengers = 0;
    char chal_version[17] = "", champ_version[17] = "";
    for (int i = 0; i < CUSTOMERS; i++) {
        cr_assert_str_eq(a.served[i], a.assigned[i], "c%03d moved with nothing killed", i);
        if (strcmp(a.served[i], "challenger") == 0) {
            challengers++;
            memcpy(chal_version, a.version[i], sizeof chal_version);
        } else {
            memcpy(champ_version, a.version[i], sizeof champ_version);
        }
    }
    cr_assert(challengers > 50 && challengers < 150, "%d challengers of %d", challengers,
              CUSTOMERS);

    /* the arm by name, by its name alone (every deployment's), then by its
     * policy version: the same */
    const struct {
        int kind;
        const char *name;
    } ways[] = {
        {NBX_KILL_ARM, "q4.challenger"},
        {NBX_KILL_ARM, "challenger"},
        {NBX_KILL_POLICY, chal_version},
    };
    for (size_t w = 0; w < NBX_ARRAY_LEN(ways); w++) {
        int kind = ways[w].kind;
        const char *name = ways[w].name;
        cr_assert_eq(nbx_kill(store, kind, name, "canary looks wrong", "cli"), NBX_OK, "%s",
                     nbx_store_errmsg(store));
        decide_all(&a);
        for (int i = 0; i < CUSTOMERS; i++) {
            cr_assert_str_eq(a.served[i], "champion", "c%03d (%s) with %s killed", i, a.assigned[i],
                             name);
            cr_assert_str_eq(a.version[i], champ_version, "c%03d", i);
        }
        cr_assert_eq(nbx_unkill(store, kind, name, NULL, "cli"), NBX_OK);
    }

    /* the first arm killed too: everyone gets the control treatment */
    cr_assert_eq(nbx_kill(store, NBX_KILL_ARM, "q4.challenger", "r", "cli"), NBX_OK);
    cr_assert_eq(nbx_kill(store, NBX_KILL_POLICY, champ_version, "r", "cli"), NBX_OK);
    decide_all(&a);
    for (int i = 0; i < CUSTOMERS; i++) {
        cr_assert_str_eq(a.served[i], "holdout", "c%03d (%s)", i, a.assigned[i]);
        cr_assert_str_eq(a.version[i], "", "c%03d: a policy decided", i);
    }
    /* the challenger back, the first arm still killed: its own customers
     * are served again, the first arm's get the control */
    cr_assert_eq(nbx_unkill(store, NBX_KILL_ARM, "q4.challenger", NULL, "cli"), NBX_OK);
    decide_all(&a);
    for (int i = 0; i < CUSTOMERS; i++)
        cr_assert_str_eq(a.served[i],
                         strcmp(a.assigned[i], "challenger") == 0 ? "challenger" : "holdout",
                         "c%03d (%s)", i, a.assigned[i]);
    free(champ);
    free(chal);
    free(dep);
}

/* Without a deployment, a killed version of the engine's one policy leaves
 * the control treatment: the catalog's fallback actions, no policy run. */
Test(kills, a_killed_policy_version_serves_the_control_treatment)
{
    open_engine(FS_FIRST);
    const nbx_result *r = decide();
    const char *version = NULL;
    cr_assert_not_null(nbx_result_policy(r, &version));
    char v[17];
    snprintf(v, sizeof v, "%s", version);
    cr_assert_eq(nbx_kill(store, NBX_KILL_POLICY, v, "bad release", "cli"), NBX_OK);
    r = decide();
    cr_assert_null(nbx_result_policy(r, NULL), "%s", nbx_result_json(r, NULL));
    cr_assert(serves(r, "brand_banner") && serves(r, "bestsellers"), "%s",
              nbx_result_json(r, NULL));
    cr_assert(!serves(r, "free_shipping"), "%s", nbx_result_json(r, NULL));
    cr_assert_eq(nbx_unkill(store, NBX_KILL_POLICY, v, NULL, "cli"), NBX_OK);
    cr_assert(serves(decide(), "free_shipping"));
}
