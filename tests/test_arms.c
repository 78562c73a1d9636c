/* Suite: arms (core/arms.c): the per-arm counters of the store, their
 * additions in memory, sums over windows of days, and
 * nbx_arm_counters_read(). Real stores in temporary directories. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir, *path;
static nbx_store *store;

static void setup(void)
{
    dir = tu_tempdir("arms");
    path = tu_path(dir, "store");
    cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &store), NBX_OK, "%s", nbx_last_errmsg());
}

static void teardown(void)
{
    nbx_store_close(store);
    tu_rmtree(dir);
    free(path);
    free(dir);
}

TestSuite(arms, .init = setup, .fini = teardown);

/* Add d's rows in a transaction of their own. */
static void write_deltas(nbx_arm_deltas *d)
{
    MDB_txn *txn;
    nbx_err e = {0};
    cr_assert_eq(nbx_store_write_begin(store, &txn, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_arm_deltas_write(d, store, txn, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_store_commit(store, txn, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(d->n, 0, "written rows are emptied");
}

static nbx_arm_counts totals(const char *deployment, const char *arm)
{
    MDB_txn *txn;
    nbx_err e = {0};
    nbx_arm_counts c;
    cr_assert_eq(nbx_store_read_begin(store, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_arm_totals(store, txn, nbx_sv_of(deployment), nbx_sv_of(arm), &c, &e), NBX_OK,
                 "%s", e.msg);
    mdb_txn_abort(txn);
    return c;
}

#define DAY 20500u /* 2026-02-15 */

Test(arms, additions_sum_per_row_and_rows_sum_per_arm)
{
    nbx_arm_deltas d = {0};
    for (int i = 0; i < 1000; i++) {
        nbx_arm_counts *c = nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), DAY);
        cr_assert_not_null(c);
        c->decisions++;
        c->expected_margin += 0.5;
        c->fallbacks += i % 100 == 0;
    }
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), DAY + 1)->decisions = 7;
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("challenger"), DAY)->accepts = 2;
    cr_assert_eq(d.n, 3);
    write_deltas(&d);
    /* a second flush adds to the stored rows */
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), DAY)->decisions = 1;
    write_deltas(&d);

    nbx_arm_counts c = totals("q4", "champion");
    cr_assert_eq(c.decisions, 1008);
    cr_assert_eq(c.fallbacks, 10);
    cr_assert_float_eq(c.expected_margin, 500.0, 1e-9);
    cr_assert_eq(totals("q4", "challenger").accepts, 2);
    cr_assert_eq(totals("q4", "challenger").decisions, 0);
    /* another arm whose name starts with the same letters is not summed in */
    cr_assert_eq(totals("q4", "champ").decisions, 0);
    cr_assert_eq(totals("q", "champion").decisions, 0);
    nbx_arm_deltas_free(&d);
}

Test(arms, the_table_grows_and_keeps_every_row)
{
    nbx_arm_deltas d = {0};
    char name[16];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "arm%03d", i);
        for (uint32_t day = 0; day < 3; day++)
            nbx_arm_deltas_at(&d, NBX_SV("dep"), nbx_sv_of(name), DAY + day)->decisions += i + 1;
    }
    cr_assert_eq(d.n, 900);
    write_deltas(&d);
    for (int i = 0; i < 300; i += 37) {
        snprintf(name, sizeof name, "arm%03d", i);
        cr_assert_eq(totals("dep", name).decisions, 3u * (unsigned)(i + 1), "%s", name);
    }
    nbx_arm_deltas_free(&d);
}

struct seen {
    char names[16][160];
    nbx_arm_counters c[16];
    int n;
    int stop_after;
};

static int collect(void *ud, const nbx_arm_counters *c)
{
    struct seen *s = ud;
    cr_assert_lt(s->n, 16);
    snprintf(s->names[s->n], sizeof s->names[s->n], "%s/%s", c->deployment, c->arm);
    s->c[s->n] = *c;
    s->c[s->n].deployment = s->c[s->n].arm = NULL; /* valid during the call only */
    s->n++;
    return s->stop_after && s->n >= s->stop_after;
}

static void seed_two_deployments(void)
{
    nbx_arm_deltas d = {0};
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), DAY)->decisions = 10;
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), DAY + 2)->decisions = 20;
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("holdout"), DAY + 1)->decisions = 5;
    nbx_arm_counts *r = nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("challenger"), DAY + 2);
    r->purchases = 2;
    r->realised_margin = 12.5;
    nbx_arm_deltas_at(&d, NBX_SV("spring"), NBX_SV("a"), DAY)->impressions = 4;
    write_deltas(&d);
    nbx_arm_deltas_free(&d);
}

Test(arms, read_sums_each_arm_over_the_days_of_the_window_in_name_order)
{
    seed_two_deployments();
    struct seen s = {0};
    cr_assert_eq(nbx_arm_counters_read(store, NULL, 0, 0, collect, &s), NBX_OK, "%s",
                 nbx_store_errmsg(store));
    cr_assert_eq(s.n, 4);
    cr_assert_str_eq(s.names[0], "q4/challenger");
    cr_assert_str_eq(s.names[1], "q4/champion");
    cr_assert_str_eq(s.names[2], "q4/holdout");
    cr_assert_str_eq(s.names[3], "spring/a");
    cr_assert_eq(s.c[1].decisions, 30);
    cr_assert_eq(s.c[1].first_day_ms, (int64_t)DAY * NBX_MS_PER_DAY);
    cr_assert_eq(s.c[1].last_day_ms, (int64_t)(DAY + 2) * NBX_MS_PER_DAY);
    cr_assert_float_eq(s.c[0].realised_margin, 12.5, 1e-12);
    cr_assert_eq(s.c[0].purchases, 2);

    /* one deployment; a window touching the first two days only */
    memset(&s, 0, sizeof s);
    int64_t from = (int64_t)DAY * NBX_MS_PER_DAY + 3600000; /* within the first day */
    int64_t to = (int64_t)(DAY + 2) * NBX_MS_PER_DAY;       /* the third day excluded */
    cr_assert_eq(nbx_arm_counters_read(store, "q4", from, to, collect, &s), NBX_OK);
    cr_assert_eq(s.n, 2, "challenger counted on the third day only");
    cr_assert_str_eq(s.names[0], "q4/champion");
    cr_assert_eq(s.c[0].decisions, 10);
    cr_assert_str_eq(s.names[1], "q4/holdout");

    /* the callback may stop */
    memset(&s, 0, sizeof s);
    s.stop_after = 1;
    cr_assert_eq(nbx_arm_counters_read(store, NULL, 0, 0, collect, &s), NBX_OK);
    cr_assert_eq(s.n, 1);

    /* a deployment without rows: no call */
    memset(&s, 0, sizeof s);
    cr_assert_eq(nbx_arm_counters_read(store, "q", 0, 0, collect, &s), NBX_OK);
    cr_assert_eq(s.n, 0);
}

Test(arms, read_refuses_misuse_naming_it)
{
    struct seen s = {0};
    cr_assert_eq(nbx_arm_counters_read(NULL, NULL, 0, 0, collect, &s), NBX_EINVAL);
    cr_assert_eq(nbx_arm_counters_read(store, NULL, 0, 0, NULL, &s), NBX_EINVAL);
    cr_assert_eq(nbx_arm_counters_read(store, "q 4", 0, 0, collect, &s), NBX_EINVAL);
    cr_assert(strstr(nbx_store_errmsg(store), "deployment 'q 4'") != NULL, "%s",
              nbx_store_errmsg(store));
    cr_assert_eq(nbx_arm_counters_read(store, "", 0, 0, collect, &s), NBX_EINVAL);
    cr_assert_eq(nbx_arm_counters_read(store, NULL, 5000, 5000, collect, &s), NBX_EINVAL);
    cr_assert_eq(nbx_arm_counters_read(store, NULL, -1, 0, collect, &s), NBX_EINVAL);
    cr_assert_eq(nbx_arm_counters_read(store, NULL, 0, NBX_TIME_MAX_MS + 1, collect, &s),
                 NBX_EINVAL);
    cr_assert_eq(s.n, 0);
}

Test(arms, a_damaged_row_is_corrupt_naming_the_arm)
{
    seed_two_deployments();
    MDB_txn *txn;
    nbx_err e = {0};
    char key[NBX_ARM_KEY_MAX];
    MDB_val k = {nbx_arm_key(key, NBX_SV("q4"), NBX_SV("champion"), DAY), key};
    MDB_val v = {3, "\x93\x01\x02"};
    cr_assert_eq(nbx_store_write_begin(store, &txn, &e), NBX_OK);
    cr_assert_eq(mdb_put(txn, store->arms, &k, &v, 0), 0);
    cr_assert_eq(nbx_store_commit(store, txn, &e), NBX_OK);

    struct seen s = {0};
    cr_assert_eq(nbx_arm_counters_read(store, NULL, 0, 0, collect, &s), NBX_ECORRUPT);
    nbx_arm_deltas d = {0};
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), DAY)->decisions = 1;
    cr_assert_eq(nbx_store_write_begin(store, &txn, &e), NBX_OK);
    cr_assert_eq(nbx_arm_deltas_write(&d, store, txn, &e), NBX_ECORRUPT);
    cr_assert(strstr(e.msg, "arm 'champion' of deployment 'q4'") != NULL, "%s", e.msg);
    mdb_txn_abort(txn);
    nbx_arm_deltas_free(&d);
}

/* A store of format 2 has no arm counters: read as it is, nothing to list;
 * `nbx store upgrade` adds the database. */
Test(arms, an_older_store_has_none_until_upgraded)
{
    seed_two_deployments();
    nbx_store_close(store);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    cr_assert_eq(mdb_env_open(env, path, 0, 0664), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "arms", 0, &dbi), 0);
    cr_assert_eq(mdb_drop(txn, dbi, 1), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    uint8_t two = 2;
    MDB_val k = {6, "schema"}, v = {1, &two};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    cr_assert_eq(nbx_store_open(path, 0, &store), NBX_EVERSION);
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &store), NBX_OK, "%s", nbx_last_errmsg());
    struct seen s = {0};
    cr_assert_eq(nbx_arm_counters_read(store, NULL, 0, 0, collect, &s), NBX_OK);
    cr_assert_eq(s.n, 0);
    nbx_store_close(store);
    uint32_t from, to;
    cr_assert_eq(nbx_store_upgrade(path, &from, &to), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(from, 2);
    cr_assert_eq(to, 3);
    cr_assert_eq(nbx_store_open(path, 0, &store), NBX_OK, "%s", nbx_last_errmsg());
    nbx_arm_deltas d = {0};
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), DAY)->decisions = 1;
    write_deltas(&d);
    nbx_arm_deltas_free(&d);
    cr_assert_eq(totals("q4", "champion").decisions, 1);
}
