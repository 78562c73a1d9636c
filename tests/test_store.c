/* Suite: store (core/store.c): opening, creating, read-only use, schema
 * versions, counts, iteration, erasure, and every public store call with
 * NULL arguments. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbx_int.h"
#include "testutil.h"

static char *dir;
static char *path; /* dir/store: does not exist until a test creates it */

static void setup(void)
{
    dir = tu_tempdir("store");
    cr_assert_not_null(dir);
    path = tu_path(dir, "store");
}

static void teardown(void)
{
    tu_rmtree(dir);
    free(path);
    free(dir);
}

TestSuite(store, .init = setup, .fini = teardown, .timeout = 120);

static nbx_store *create(void)
{
    nbx_store *s = NULL;
    cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &s), NBX_OK, "%s", nbx_last_errmsg());
    return s;
}

static void put(nbx_store *s, const char *json)
{
    cr_assert_eq(nbx_profile_put(s, json, strlen(json)), NBX_OK, "%s: %s", json,
                 nbx_store_errmsg(s));
}

static void event(nbx_store *s, const char *json)
{
    cr_assert_eq(nbx_event_apply(s, json, strlen(json), NULL), NBX_OK, "%s: %s", json,
                 nbx_store_errmsg(s));
}

/* ------------------------------------------------------------------------
 * Open, create, read-only, schema
 * ------------------------------------------------------------------------ */

Test(store, missing_store_is_not_found_and_named)
{
    nbx_store *s = (nbx_store *)1;
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_ENOTFOUND);
    cr_assert_null(s, "out must be NULL on failure");
    cr_assert(strstr(nbx_last_errmsg(), path) != NULL, "message does not name %s: %s", path,
              nbx_last_errmsg());
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &s), NBX_ENOTFOUND);
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY | NBX_STORE_CREATE, &s), NBX_ENOTFOUND,
                 "read-only never creates");
    struct stat st;
    cr_assert_neq(stat(path, &st), 0, "a failed open created %s", path);
    /* a directory that holds no store */
    cr_assert_eq(mkdir(path, 0775), 0);
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_last_errmsg(), path) != NULL, "%s", nbx_last_errmsg());
    /* a file where the store should be */
    char *file = tu_path(dir, "file");
    cr_assert_eq(tu_write_file(file, "x"), 0);
    cr_assert_eq(nbx_store_open(file, NBX_STORE_CREATE, &s), NBX_EIO);
    cr_assert(strstr(nbx_last_errmsg(), "directory") != NULL, "%s", nbx_last_errmsg());
    free(file);
}

Test(store, create_then_reopen_keeps_data)
{
    nbx_store *s = create();
    put(s, "{\"id\":\"c1\",\"ltv\":3}");
    nbx_store_close(s);
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "c1", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"ltv\":3") != NULL, "%s", json);
    nbx_free(json);
    nbx_store_close(s);
    cr_assert_eq(nbx_store_open(path, NBX_STORE_NOMETASYNC, &s), NBX_OK);
    put(s, "{\"id\":\"c2\"}");
    nbx_store_close(s);
    cr_assert_eq(nbx_store_open(path, 0x100, &s), NBX_EINVAL, "unknown flags");
}

Test(store, generation_changes_with_every_committed_write_from_any_handle)
{
    nbx_store *w, *r;
    cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &w), NBX_OK);
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &r), NBX_OK);
    uint64_t g0, g1, g2;
    cr_assert_eq(nbx_store_generation(r, &g0), NBX_OK);
    const char *p = "{\"id\":\"gen\",\"attrs\":{\"a\":1}}";
    cr_assert_eq(nbx_profile_put(w, p, strlen(p)), NBX_OK);
    cr_assert_eq(nbx_store_generation(r, &g1), NBX_OK);
    cr_expect_gt(g1, g0, "the reader sees the writer's commit");
    /* reading changes nothing */
    char *json;
    cr_assert_eq(nbx_profile_get(r, "gen", &json, NULL), NBX_OK);
    nbx_free(json);
    cr_assert_eq(nbx_store_generation(w, &g2), NBX_OK);
    cr_expect_eq(g2, g1);
    cr_expect_eq(nbx_store_generation(NULL, &g2), NBX_EINVAL);
    cr_expect_eq(nbx_store_generation(r, NULL), NBX_EINVAL);
    nbx_store_close(r);
    nbx_store_close(w);
}

Test(store, read_only_reads_and_refuses_writes)
{
    nbx_store *w = create();
    put(w, "{\"id\":\"c1\"}");
    nbx_store *s;
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &s), NBX_OK, "%s", nbx_last_errmsg());
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "c1", &json, NULL), NBX_OK);
    nbx_free(json);
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.profiles, 1);

    cr_assert_eq(nbx_profile_put(s, "{\"id\":\"c2\"}", 11), NBX_EREADONLY);
    cr_assert(strstr(nbx_store_errmsg(s), "read-only") != NULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_profile_delete(s, "c1"), NBX_EREADONLY);
    const char *ev = "{\"event_id\":\"e\",\"customer\":\"c1\",\"type\":\"click\",\"offer\":\"o\","
                     "\"ts\":1}";
    cr_assert_eq(nbx_event_apply(s, ev, strlen(ev), NULL), NBX_EREADONLY);
    char *file = tu_path(dir, "p.jsonl");
    cr_assert_eq(tu_write_file(file, "{\"id\":\"c3\"}\n"), 0);
    cr_assert_eq(nbx_import_file(s, NBX_IMPORT_PROFILES, file, NULL, NULL), NBX_EREADONLY);
    cr_assert_eq(nbx_rfm_rebuild(s, 0, NULL), NBX_EREADONLY);
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.profiles, 1, "a refused write wrote");
    nbx_store_close(s);
    nbx_store_close(w);
    free(file);
}

/* A write transaction on the suite's store with raw LMDB, as another nbx
 * (or a damaged disk) would write; raw_end() commits and closes. */
static MDB_txn *raw_begin(MDB_env **env)
{
    cr_assert_eq(mdb_env_create(env), 0);
    mdb_env_set_maxdbs(*env, 8);
    cr_assert_eq(mdb_env_open(*env, path, MDB_NOTLS, 0664), 0);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(*env, NULL, 0, &txn), 0);
    return txn;
}

static void raw_end(MDB_env *env, MDB_txn *txn)
{
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Put one record into a database of the suite's store with raw LMDB. */
static void raw_put(const char *db, const void *key, size_t klen, const void *value, size_t len)
{
    MDB_env *env;
    MDB_txn *txn = raw_begin(&env);
    MDB_dbi dbi;
    cr_assert_eq(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v = {len, (void *)value};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    raw_end(env, txn);
}

/* Write the meta "schema" byte with raw LMDB, as a future nbx would. */
static void set_schema(const void *value, size_t len)
{
    raw_put("meta", "schema", 6, value, len);
}

Test(store, newer_schema_is_refused)
{
    nbx_store_close(create());
    uint8_t newer = NBX_SCHEMA_VERSION + 1;
    set_schema(&newer, 1);
    nbx_store *s = (nbx_store *)1;
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_EVERSION, "%s", nbx_last_errmsg());
    cr_assert_null(s);
    cr_assert(strstr(nbx_last_errmsg(), "newer") != NULL, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &s), NBX_EVERSION);

    uint8_t garbled[2] = {1, 1};
    set_schema(garbled, 2);
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_ECORRUPT, "%s", nbx_last_errmsg());

    uint8_t same = NBX_SCHEMA_VERSION;
    set_schema(&same, 1);
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_OK, "%s", nbx_last_errmsg());
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.schema_version, NBX_SCHEMA_VERSION);
    nbx_store_close(s);
}

/* A store of the first layout (schema 1 with global `events` and `history`
 * databases and counters keyed customer \0 offer), built with raw LMDB as
 * that nbx wrote it: refused, never misread, and left as it was. */
static void make_old_layout_store(const char *extra)
{
    cr_assert_eq(mkdir(path, 0775), 0);
    MDB_env *env;
    cr_assert_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    cr_assert_eq(mdb_env_open(env, path, MDB_NOTLS, 0664), 0);
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    const char *names[] = {"profiles", "budgets", "meta", extra};
    MDB_dbi dbi[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(mdb_dbi_open(txn, names[i], MDB_CREATE, &dbi[i]), 0);
    uint8_t schema = 1;
    MDB_val k = {6, "schema"}, v = {1, &schema};
    cr_assert_eq(mdb_put(txn, dbi[2], &k, &v, 0), 0);
    k = (MDB_val){6, "c1\0o01"};
    v = (MDB_val){3, "\x93\x00\x00"};
    cr_assert_eq(mdb_put(txn, dbi[3], &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

Test(store, a_store_of_the_earlier_layout_is_refused)
{
    const char *old_dbs[] = {"events", "history", "exposures"};
    for (int i = 0; i < 3; i++) {
        make_old_layout_store(old_dbs[i]);
        char *data = tu_path(path, "data.mdb");
        size_t before_len;
        char *before = tu_read_file(data, &before_len);
        cr_assert_not_null(before);
        nbx_store *s = (nbx_store *)1;
        cr_assert_eq(nbx_store_open(path, 0, &s), NBX_EVERSION, "%s: %s", old_dbs[i],
                     nbx_last_errmsg());
        cr_assert_null(s);
        char expect[64];
        snprintf(expect, sizeof expect, "earlier layout (an '%s' database)", old_dbs[i]);
        cr_assert(strstr(nbx_last_errmsg(), expect) != NULL, "expected '%s' in '%s'", expect,
                  nbx_last_errmsg());
        cr_assert(strstr(nbx_last_errmsg(), path) != NULL, "%s", nbx_last_errmsg());
        cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &s), NBX_EVERSION);
        cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &s), NBX_EVERSION);
        size_t after_len;
        char *after = tu_read_file(data, &after_len);
        cr_assert(after && after_len == before_len && memcmp(before, after, after_len) == 0,
                  "opening the old store changed it");
        free(before);
        free(after);
        free(data);
        tu_rmtree(path);
    }
}

/* A truncated data.mdb used to be mapped as it was: the first read of a page
 * past the end was a SIGBUS. It must be refused at open, read-only or not. */
Test(store, truncated_data_file_is_refused_at_open)
{
    nbx_store *s = create();
    char json[256];
    for (int i = 0; i < 500; i++) {
        snprintf(json, sizeof json, "{\"id\":\"c%04d\",\"attrs\":{\"pad\":\"%0100d\"}}", i, i);
        put(s, json);
    }
    nbx_store_close(s);
    char *data = tu_path(path, "data.mdb");
    struct stat st;
    cr_assert_eq(stat(data, &st), 0);
    cr_assert_gt(st.st_size, 40000, "the store is too small for the test: %lld bytes",
                 (long long)st.st_size);
    cr_assert_eq(truncate(data, 20000), 0);
    const unsigned modes[] = {NBX_STORE_READONLY, 0, NBX_STORE_CREATE};
    for (size_t i = 0; i < 3; i++) {
        s = NULL;
        int rc = nbx_store_open(path, modes[i], &s);
        cr_assert_eq(rc, NBX_ECORRUPT, "flags %u: expected NBX_ECORRUPT, got %d (%s)", modes[i], rc,
                     nbx_last_errmsg());
        cr_assert_null(s);
        char expect[160];
        snprintf(expect, sizeof expect,
                 "store file is truncated: 20000 bytes, the store needs %lld",
                 (long long)st.st_size);
        cr_assert(strstr(nbx_last_errmsg(), expect) != NULL, "expected '%s' in: %s", expect,
                  nbx_last_errmsg());
        cr_assert(strstr(nbx_last_errmsg(), "data.mdb") != NULL, "%s", nbx_last_errmsg());
    }
    struct stat after;
    cr_assert_eq(stat(data, &after), 0);
    cr_assert_eq(after.st_size, 20000, "an open changed the truncated file");
    free(data);
}

Test(store, not_an_lmdb_file_is_said_in_words)
{
    cr_assert_eq(mkdir(path, 0775), 0);
    char *data = tu_path(path, "data.mdb");
    char junk[16384];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)('a' + i % 26);
    junk[sizeof junk - 1] = '\0';
    cr_assert_eq(tu_write_file(data, junk), 0);
    const unsigned modes[] = {NBX_STORE_READONLY, 0};
    for (size_t i = 0; i < 2; i++) {
        nbx_store *s = NULL;
        int rc = nbx_store_open(path, modes[i], &s);
        cr_assert_eq(rc, NBX_ECORRUPT, "expected NBX_ECORRUPT, got %d (%s)", rc, nbx_last_errmsg());
        cr_assert(strstr(nbx_last_errmsg(), "not an nbx store (data.mdb is not an LMDB file)"),
                  "%s", nbx_last_errmsg());
        cr_assert_null(strstr(nbx_last_errmsg(), "MDB_"), "LMDB's text leaked: %s",
                       nbx_last_errmsg());
    }
    /* an empty data.mdb, read-only: LMDB would take it for a new store */
    cr_assert_eq(tu_write_file(data, ""), 0);
    nbx_store *s = NULL;
    int rc = nbx_store_open(path, NBX_STORE_READONLY, &s);
    cr_assert_eq(rc, NBX_ECORRUPT, "expected NBX_ECORRUPT, got %d (%s)", rc, nbx_last_errmsg());
    cr_assert(strstr(nbx_last_errmsg(), "store file is empty"), "%s", nbx_last_errmsg());
    free(data);
}

/* A value that is not a size used to be replaced by the 256 GiB default in
 * silence ("1.5G" and "100" opened with no limit the operator meant). */
Test(store, map_size_from_the_environment_is_checked)
{
    const char *bad[] = {"abc",  "1.5G",  "100",  "1023K", " 64M",         "-1G",
                         "+64M", "64GBx", "64G ", "64B",   "99999999999T", "18446744073709551616"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("NBX_MAP_SIZE", bad[i], 1);
        nbx_store *s = NULL;
        int rc = nbx_store_open(path, NBX_STORE_CREATE, &s);
        cr_assert_eq(rc, NBX_EINVAL, "'%s': expected NBX_EINVAL, got %d (%s)", bad[i], rc,
                     nbx_last_errmsg());
        cr_assert_null(s);
        cr_assert(strstr(nbx_last_errmsg(), "NBX_MAP_SIZE") != NULL, "%s", nbx_last_errmsg());
        cr_assert_neq(access(path, F_OK), 0, "'%s': the store directory was created", bad[i]);
    }
    const struct {
        const char *text;
        size_t bytes;
    } good[] = {{"64M", (size_t)64 << 20},
                {"1048576", 1048576},
                {"1g", (size_t)1 << 30},
                {"2GB", (size_t)2 << 30},
                {"3GiB", (size_t)3 << 30}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        setenv("NBX_MAP_SIZE", good[i].text, 1);
        nbx_store *s = NULL;
        cr_assert_eq(nbx_store_open(path, NBX_STORE_CREATE, &s), NBX_OK, "'%s': %s", good[i].text,
                     nbx_last_errmsg());
        MDB_envinfo info;
        cr_assert_eq(mdb_env_info(s->env, &info), 0);
        cr_assert_eq(info.me_mapsize, good[i].bytes, "'%s': map of %zu bytes", good[i].text,
                     info.me_mapsize);
        nbx_store_close(s);
    }
    unsetenv("NBX_MAP_SIZE");
}

/* The open path and later calls map LMDB's conditions through one function:
 * the same code and words wherever a condition arises (a version mismatch
 * was NBX_EVERSION at open, NBX_ECORRUPT after). */
Test(store, lmdb_conditions_map_to_one_code_and_words)
{
    struct {
        int rc;
        int code;
        const char *words;
    } cases[] = {
        {MDB_VERSION_MISMATCH, NBX_EVERSION, "incompatible LMDB version"},
        {MDB_INVALID, NBX_ECORRUPT, "not an nbx store (data.mdb is not an LMDB file)"},
        {MDB_CORRUPTED, NBX_ECORRUPT, "the store file is damaged"},
        {MDB_PAGE_NOTFOUND, NBX_ECORRUPT, "the store file is damaged"},
        {MDB_MAP_FULL, NBX_EFULL, "NBX_MAP_SIZE"},
        {MDB_READERS_FULL, NBX_ESTORE, "reader table is full"},
        {MDB_TXN_FULL, NBX_ESTORE, "write transaction is too large"},
        {MDB_NOTFOUND, NBX_ENOTFOUND, "No matching key/data pair found"},
        {MDB_BAD_VALSIZE, NBX_ESTORE, "Unsupported size of key/DB name/data"},
        {EACCES, NBX_EIO, "ermission denied"},
        {ENOMEM, NBX_ENOMEM, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nbx_err e = {0};
        cr_assert_eq(nbx_err_mdb(&e, cases[i].rc, "/s"), cases[i].code, "rc %d: got %d (%s)",
                     cases[i].rc, e.code, e.msg);
        cr_assert_eq(e.code, cases[i].code);
        cr_assert(strncmp(e.msg, "/s: ", 4) == 0, "rc %d: %s", cases[i].rc, e.msg);
        cr_assert(strstr(e.msg, cases[i].words) != NULL, "rc %d: expected '%s', got '%s'",
                  cases[i].rc, cases[i].words, e.msg);
        cr_assert_null(strstr(e.msg, "MDB_"), "LMDB's text leaked: %s", e.msg);
    }
}

/* An absent profile is the common case on the decision path (an unknown
 * customer) and in imports (a new profile): it is said with the code alone,
 * no message formatted; the public nbx_profile_get still names the id. */
Test(store, absent_profile_is_a_code_without_a_message)
{
    nbx_store *s = create();
    MDB_txn *txn;
    nbx_err e = {0};
    nbx_arena a = {0};
    cr_assert_eq(nbx_store_read_begin(s, &txn, &e), NBX_OK, "%s", e.msg);
    nbx_profile p = {.id = NBX_SV("nobody")};
    cr_assert_eq(nbx_store_profile_get(s, txn, p.id, &p, &a, &e), NBX_ENOTFOUND);
    cr_assert_eq(e.code, 0, "a message was formatted: %s", e.msg);
    cr_assert_str_empty(e.msg);
    mdb_txn_abort(txn);
    nbx_arena_free(&a);
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "nobody", &json, NULL), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_store_errmsg(s), "no profile 'nobody'") != NULL, "%s",
              nbx_store_errmsg(s));
    nbx_store_close(s);
}

Test(store, corrupt_profile_value_is_reported)
{
    nbx_store *s = create();
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, 0, &txn), 0);
    MDB_val k = {3, "bad"}, v = {3, "\x93\x01\x02"};
    cr_assert_eq(mdb_put(txn, s->profiles, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "bad", &json, NULL), NBX_ECORRUPT);
    cr_assert(strstr(nbx_store_errmsg(s), "'bad'") != NULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_profile_put(s, "{\"id\":\"bad\"}", 12), NBX_ECORRUPT,
                 "merging over an undecodable value must fail, not overwrite it");
    cr_assert_eq(nbx_rfm_rebuild(s, 0, NULL), NBX_ECORRUPT);
    nbx_store_close(s);
}

/* ------------------------------------------------------------------------
 * NULL and misuse, every public store call
 * ------------------------------------------------------------------------ */

Test(store, null_arguments_everywhere)
{
    nbx_store *s = create();
    nbx_store *out = (nbx_store *)1;
    cr_assert_eq(nbx_store_open(NULL, 0, &out), NBX_EINVAL);
    cr_assert_null(out);
    cr_assert_eq(nbx_store_open(path, 0, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_store_open("", NBX_STORE_CREATE, &out), NBX_EINVAL);
    nbx_store_close(NULL);
    cr_assert_not_null(nbx_store_errmsg(NULL));
    cr_assert_not_null(nbx_store_errmsg(s));

    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(NULL, &st), NBX_EINVAL);
    cr_assert_eq(nbx_store_stat(s, NULL), NBX_EINVAL);

    char *json = (char *)1;
    cr_assert_eq(nbx_profile_get(NULL, "c", &json, NULL), NBX_EINVAL);
    cr_assert_null(json);
    cr_assert_eq(nbx_profile_get(s, NULL, &json, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_profile_get(s, "c", NULL, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_profile_put(NULL, "{}", 2), NBX_EINVAL);
    cr_assert_eq(nbx_profile_put(s, NULL, 0), NBX_EINVAL);
    cr_assert_eq(nbx_profile_delete(NULL, "c"), NBX_EINVAL);
    cr_assert_eq(nbx_profile_delete(s, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_event_apply(NULL, "{}", 2, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_event_apply(s, NULL, 0, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_import_file(NULL, NBX_IMPORT_EVENTS, "x", NULL, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_import_file(s, NBX_IMPORT_EVENTS, NULL, NULL, NULL), NBX_EINVAL);
    nbx_import_options_init(NULL);
    cr_assert_eq(nbx_rfm_rebuild(NULL, 0, NULL), NBX_EINVAL);

    nbx_iter *it = (nbx_iter *)1;
    cr_assert_eq(nbx_iter_open(NULL, 0, NULL, &it), NBX_EINVAL);
    cr_assert_null(it);
    cr_assert_eq(nbx_iter_open(s, 0, NULL, NULL), NBX_EINVAL);
    char long_after[NBX_ID_MAX + 2];
    memset(long_after, 'a', sizeof long_after - 1);
    long_after[sizeof long_after - 1] = '\0';
    cr_assert_eq(nbx_iter_open(s, 0, long_after, &it), NBX_EINVAL);
    cr_assert_eq(nbx_iter_next(NULL, NULL, NULL, NULL), NBX_EINVAL);
    nbx_iter_close(NULL);
    nbx_store_close(s);
}

/* ------------------------------------------------------------------------
 * Counts
 * ------------------------------------------------------------------------ */

Test(store, stat_counts)
{
    nbx_store *s = create();
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.profiles, 0);
    cr_assert_eq(st.schema_version, NBX_SCHEMA_VERSION);
    cr_assert_eq(st.rfm_as_of, 0);
    cr_assert_gt(st.map_size, 0);
    put(s, "{\"id\":\"c1\"}");
    put(s, "{\"id\":\"c2\"}");
    event(s, "{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"impression\",\"offer\":\"o1\","
             "\"ts\":1767225600}");
    event(s, "{\"event_id\":\"e2\",\"customer\":\"c1\",\"type\":\"impression\",\"offer\":\"o2\","
             "\"ts\":1767225600}");
    event(s, "{\"event_id\":\"e3\",\"customer\":\"c3\",\"type\":\"purchase\",\"amount\":1,"
             "\"ts\":1767225600}");
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.profiles, 3, "the purchase created c3");
    cr_assert_eq(st.exposure_keys, 3, "c1/o1, c1/o2 and c1's all-offers row");
    cr_assert_eq(st.events_seen, 3);
    cr_assert_gt(st.bytes_used, 0);
    cr_assert_leq(st.bytes_used, st.map_size);
    cr_assert_eq(nbx_rfm_rebuild(s, 1767225600000, NULL), NBX_OK);
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.rfm_as_of, 1767225600000);
    nbx_store_close(s);
}

/* ------------------------------------------------------------------------
 * Iteration
 * ------------------------------------------------------------------------ */

Test(store, iteration_order_and_resume_after)
{
    nbx_store *s = create();
    const char *ids[] = {"b", "a", "B", "ab", "a\xc3\xa9", "c", "aa"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char json[64];
        snprintf(json, sizeof json, "{\"id\":\"%s\",\"ltv\":%zu}", ids[i], i);
        put(s, json);
    }
    const char *order[] = {"B", "a", "aa", "ab", "a\xc3\xa9", "b", "c"};
    nbx_iter *it;
    cr_assert_eq(nbx_iter_open(s, 0, NULL, &it), NBX_OK);
    const char *id, *json;
    size_t len;
    for (size_t i = 0; i < 7; i++) {
        cr_assert_eq(nbx_iter_next(it, &id, &json, &len), NBX_OK);
        cr_assert_str_eq(id, order[i], "position %zu", i);
        cr_assert_not_null(json);
        cr_assert_eq(strlen(json), len);
        cr_assert(strncmp(json, "{\"id\":", 6) == 0, "%s", json);
    }
    cr_assert_eq(nbx_iter_next(it, &id, &json, &len), NBX_DONE);
    cr_assert_eq(nbx_iter_next(it, &id, &json, &len), NBX_DONE, "DONE stays DONE");
    nbx_iter_close(it);

    /* resume after an existing id, after one that is not there, after the last */
    cr_assert_eq(nbx_iter_open(s, NBX_ITER_IDS, "ab", &it), NBX_OK);
    cr_assert_eq(nbx_iter_next(it, &id, &json, NULL), NBX_OK);
    cr_assert_str_eq(id, "a\xc3\xa9");
    cr_assert_null(json, "NBX_ITER_IDS gives no JSON");
    nbx_iter_close(it);
    cr_assert_eq(nbx_iter_open(s, NBX_ITER_IDS, "abc", &it), NBX_OK);
    cr_assert_eq(nbx_iter_next(it, &id, NULL, NULL), NBX_OK);
    cr_assert_str_eq(id, "a\xc3\xa9");
    nbx_iter_close(it);
    cr_assert_eq(nbx_iter_open(s, NBX_ITER_IDS, "c", &it), NBX_OK);
    cr_assert_eq(nbx_iter_next(it, &id, NULL, NULL), NBX_DONE);
    nbx_iter_close(it);
    nbx_store_close(s);
}

/* An iterator renews its snapshot every 4096 records: it sees every record
 * once, in order, and after a renewal it sees writes made meanwhile. */
Test(store, iterator_across_snapshot_renewals)
{
    nbx_store *s = create();
    enum { N = 10000 };
    char *file = tu_path(dir, "p.jsonl");
    FILE *f = fopen(file, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < N; i++)
        fprintf(f, "{\"id\":\"p%05d\",\"attrs\":{\"i\":%d}}\n", i, i);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(nbx_import_file(s, NBX_IMPORT_PROFILES, file, NULL, NULL), NBX_OK);

    nbx_iter *it;
    cr_assert_eq(nbx_iter_open(s, 0, NULL, &it), NBX_OK);
    const char *id, *json;
    char prev[NBX_ID_MAX + 1] = "";
    int n = 0;
    bool saw_late = false;
    int rc;
    while ((rc = nbx_iter_next(it, &id, &json, NULL)) == NBX_OK) {
        cr_assert_gt(strcmp(id, prev), 0, "%s after %s", id, prev);
        snprintf(prev, sizeof prev, "%s", id);
        if (strcmp(id, "zzz") == 0) {
            saw_late = true;
            continue;
        }
        cr_assert_neq(strcmp(id, "p09999"), 0, "p09999 was deleted before the renewal");
        char expect[32];
        snprintf(expect, sizeof expect, "\"attrs\":{\"i\":%d}", atoi(id + 1));
        cr_assert(strstr(json, expect) != NULL, "%s: %s", id, json);
        if (++n == 100) {
            put(s, "{\"id\":\"zzz\"}");
            cr_assert_eq(nbx_profile_delete(s, "p09999"), NBX_OK);
        }
    }
    cr_assert_eq(rc, NBX_DONE, "%s", nbx_store_errmsg(s));
    cr_assert_eq(n, N - 1);
    cr_assert(saw_late, "a write made during the scan never became visible");
    nbx_iter_close(it);
    free(file);
    nbx_store_close(s);
}

/* ------------------------------------------------------------------------
 * Erasure
 * ------------------------------------------------------------------------ */

static size_t count_prefix(nbx_store *s, MDB_dbi dbi, const char *prefix, size_t n)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_cursor *c;
    cr_assert_eq(mdb_cursor_open(txn, dbi, &c), 0);
    MDB_val k = {n, (void *)prefix}, v;
    size_t count = 0;
    int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= n && memcmp(k.mv_data, prefix, n) == 0) {
        count++;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return count;
}

/* Erasure takes the profile and the customer's whole range (counters and
 * event records) in one transaction, and nothing of a customer whose id
 * extends it (c10 beside c1). */
Test(store, profile_delete_removes_counters_and_events)
{
    nbx_store *s = create();
    put(s, "{\"id\":\"c1\",\"attrs\":{\"email\":\"a@example.com\"}}");
    put(s, "{\"id\":\"c10\"}");
    for (int i = 0; i < 30; i++) {
        char ev[256];
        snprintf(ev, sizeof ev,
                 "{\"event_id\":\"e%d\",\"customer\":\"%s\",\"type\":\"%s\",\"offer\":\"o%d\","
                 "\"amount\":3,\"ts\":%d}",
                 i, i % 3 == 0 ? "c10" : "c1", i % 5 == 0 ? "purchase" : "impression", i % 4,
                 1767225600 + i * 3600);
        event(s, ev);
    }
    cr_assert_eq(count_prefix(s, s->customers, "c1\0\x01", 4), 5,
                 "4 offers and the all-offers row");
    cr_assert_eq(count_prefix(s, s->customers, "c1\0\x02", 4), 20);
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.events_seen, 30);
    cr_assert_eq(nbx_profile_delete(s, "c1"), NBX_OK, "%s", nbx_store_errmsg(s));
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "c1", &json, NULL), NBX_ENOTFOUND);
    cr_assert_eq(count_prefix(s, s->customers, "c1", 3), 0, "counters or events left behind");
    cr_assert_eq(count_prefix(s, s->customers, "c10\0\x02", 5), 10, "c10's events were touched");
    cr_assert_gt(count_prefix(s, s->customers, "c10\0\x01", 5), 0);
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.events_seen, 10, "c1's 20 event records are gone, c10's 10 stay");
    cr_assert_eq(nbx_profile_get(s, "c10", &json, NULL), NBX_OK);
    nbx_free(json);
    cr_assert_eq(nbx_profile_delete(s, "c1"), NBX_ENOTFOUND);
    cr_assert(strstr(nbx_store_errmsg(s), "c1") != NULL);
    /* the erased customer stays erased: the same events sent again are
     * refused (issue 9: a replay brought the profile back) */
    const char *again = "{\"event_id\":\"e1\",\"customer\":\"c1\",\"type\":\"impression\","
                        "\"offer\":\"o1\",\"ts\":1767225600}";
    int applied = 7;
    cr_assert_eq(nbx_event_apply(s, again, strlen(again), &applied), NBX_OK);
    cr_assert_eq(applied, 0);
    cr_assert_eq(count_prefix(s, s->customers, "c1", 3), 0);
    /* until it is restored */
    cr_assert_eq(nbx_profile_restore(s, "c1"), NBX_OK, "%s", nbx_store_errmsg(s));
    event(s, again);
    cr_assert_eq(count_prefix(s, s->customers, "c1\0\x02", 4), 1);
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.events_seen, 11);
    nbx_store_close(s);
}

/* ------------------------------------------------------------------------
 * Erasure lasts (issue 9, section 4)
 * ------------------------------------------------------------------------ */

/* SipHash-2-4 with a 128-bit output, against vectors of another
 * implementation (libsodium's crypto_shorthash_siphashx24; the first is
 * the reference's published vector): key 00..0f, message 00..(n-1). */
Test(store, the_keyed_hash_is_siphash_2_4_128)
{
    static const struct {
        size_t n;
        const char *hex;
    } vectors[] = {
        {0, "a3817f04ba25a8e66df67214c7550293"},  {1, "da87c1d86b99af44347659119b22fc45"},
        {7, "a1f1ebbed8dbc153c0b84aa61ff08239"},  {8, "3b62a9ba6258f5610f83e264f31497b4"},
        {15, "5493e99933b0a8117e08ec0f97cfc3d9"}, {16, "6ee2a4ca67b054bbfd3315bf85230577"},
        {19, "78017731cf65fab074d5208952512eb1"}};
    uint8_t key[16], msg[32], out[16];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 32; i++)
        msg[i] = (uint8_t)i;
    for (size_t v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        nbx_siphash128(key, msg, vectors[v].n, out);
        char hex[33];
        for (int i = 0; i < 16; i++)
            snprintf(hex + 2 * i, 3, "%02x", out[i]);
        cr_assert_str_eq(hex, vectors[v].hex, "length %zu", vectors[v].n);
    }
}

/* Every key and value of a database, concatenated. */
static char *db_bytes(nbx_store *s, MDB_dbi dbi, size_t *len)
{
    MDB_txn *txn;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), 0);
    MDB_cursor *c;
    cr_assert_eq(mdb_cursor_open(txn, dbi, &c), 0);
    nbx_buf b = {0};
    MDB_val k, v;
    while (mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        nbx_buf_append(&b, k.mv_data, k.mv_size);
        nbx_buf_append(&b, v.mv_data, v.mv_size);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    nbx_buf_terminate(&b); /* an empty database: still a buffer, not NULL */
    cr_assert_not(b.oom);
    *len = b.len;
    return b.data;
}

/* The report: after `nbx profile delete c0000002`, ingesting the old events
 * again brought the profile back (orders: 1). */
Test(store, an_erased_customer_stays_erased_until_restored)
{
    nbx_store *s = create();
    put(s, "{\"id\":\"c0000002\",\"attrs\":{\"email\":\"ann@example.com\"}}");
    put(s, "{\"id\":\"c0000003\"}");
    const char *purchase = "{\"event_id\":\"o1\",\"customer\":\"c0000002\",\"type\":\"purchase\","
                           "\"amount\":12,\"ts\":1767225600}";
    const char *click = "{\"event_id\":\"k1\",\"customer\":\"c0000002\",\"type\":\"click\","
                        "\"offer\":\"o1\",\"ts\":1767225600}";
    event(s, purchase);
    event(s, click);
    const char *ids[] = {"c0000002", "c0000003", "nobody", "c0000002"};
    uint64_t records[4] = {9, 9, 9, 9};
    cr_assert_eq(nbx_profile_erase(s, ids, 4, records), NBX_OK, "%s", nbx_store_errmsg(s));
    /* profile, 2 event records, the offer's and the all-offers rows */
    cr_assert_eq(records[0], 5);
    cr_assert_eq(records[1], 1);
    cr_assert_eq(records[2], 0);
    cr_assert_eq(records[3], 0, "erased once");

    /* the suppression record holds no byte of the id, nor does the store */
    MDB_txn *txn;
    MDB_stat ms;
    cr_assert_eq(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), 0);
    cr_assert_eq(mdb_stat(txn, s->suppressed, &ms), 0);
    mdb_txn_abort(txn);
    cr_assert_eq(ms.ms_entries, 3, "one record per distinct id");
    size_t len;
    char *bytes;
    MDB_dbi all[] = {s->profiles, s->customers, s->budgets, s->meta, s->suppressed};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        bytes = db_bytes(s, all[i], &len);
        cr_assert_null(memmem(bytes, len, "c0000002", 8), "database %zu holds the id", i);
        cr_assert_null(memmem(bytes, len, "ann@example.com", 15));
        free(bytes);
    }

    /* a replay, an import, a put: refused */
    int applied = 9;
    cr_assert_eq(nbx_event_apply(s, purchase, strlen(purchase), &applied), NBX_OK);
    cr_assert_eq(applied, 0);
    cr_assert_eq(nbx_event_apply(s, click, strlen(click), &applied), NBX_OK);
    cr_assert_eq(applied, 0);
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "c0000002", &json, NULL), NBX_ENOTFOUND, "it came back");
    const char *again = "{\"id\":\"c0000002\",\"attrs\":{\"email\":\"ann@example.com\"}}";
    cr_assert_eq(nbx_profile_put(s, again, strlen(again)), NBX_EINVAL);
    cr_assert(strstr(nbx_store_errmsg(s), "erased") != NULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_profile_get(s, "c0000002", &json, NULL), NBX_ENOTFOUND);
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.events_seen, 0);

    /* renewed consent */
    cr_assert_eq(nbx_profile_restore(s, "c0000002"), NBX_OK, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_profile_restore(s, "c0000002"), NBX_ENOTFOUND);
    cr_assert_eq(nbx_profile_restore(s, "c0000004"), NBX_ENOTFOUND);
    put(s, again);
    event(s, purchase);
    cr_assert_eq(nbx_profile_get(s, "c0000002", &json, NULL), NBX_OK);
    cr_assert(strstr(json, "\"orders\":1") != NULL, "%s", json);
    nbx_free(json);
    /* the others stay suppressed */
    const char *nobody = "{\"event_id\":\"x\",\"customer\":\"nobody\",\"type\":\"click\","
                         "\"offer\":\"o1\",\"ts\":1767225600}";
    cr_assert_eq(nbx_event_apply(s, nobody, strlen(nobody), &applied), NBX_OK);
    cr_assert_eq(applied, 0);
    nbx_store_close(s);
}

Test(store, erase_misuse)
{
    nbx_store *s = create();
    put(s, "{\"id\":\"c1\"}");
    uint64_t records[2] = {7, 7};
    const char *ids[] = {"c1", ""};
    cr_assert_eq(nbx_profile_erase(NULL, ids, 1, records), NBX_EINVAL);
    cr_assert_eq(nbx_profile_erase(s, NULL, 1, records), NBX_EINVAL);
    cr_assert_eq(nbx_profile_erase(s, ids, 2, records), NBX_EINVAL);
    cr_assert(strstr(nbx_store_errmsg(s), "ids[1]") != NULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(records[0], 0);
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "c1", &json, NULL), NBX_OK, "a bad list erased something");
    nbx_free(json);
    const char *null_id[] = {NULL};
    cr_assert_eq(nbx_profile_erase(s, null_id, 1, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_profile_erase(s, NULL, 0, NULL), NBX_OK);
    cr_assert_eq(nbx_profile_restore(NULL, "c1"), NBX_EINVAL);
    cr_assert_eq(nbx_profile_restore(s, NULL), NBX_EINVAL);
    cr_assert_eq(nbx_profile_restore(s, ""), NBX_EINVAL);
    /* a damaged key of the erased ids' hashes is reported, not used */
    cr_assert_eq(nbx_profile_erase(s, ids, 1, NULL), NBX_OK);
    nbx_store_close(s);
    raw_put("meta", NBX_META_SUPPRESSION_SECRET, strlen(NBX_META_SUPPRESSION_SECRET), "short", 5);
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_OK);
    const char *c2[] = {"c2"};
    cr_assert_eq(nbx_profile_erase(s, c2, 1, NULL), NBX_ECORRUPT);
    cr_assert(strstr(nbx_store_errmsg(s), "suppression key") != NULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_profile_restore(s, "c1"), NBX_ECORRUPT);
    int applied;
    const char *ev = "{\"event_id\":\"e\",\"customer\":\"c2\",\"type\":\"click\","
                     "\"offer\":\"o1\",\"ts\":1767225600}";
    cr_assert_eq(nbx_event_apply(s, ev, strlen(ev), &applied), NBX_ECORRUPT);
    nbx_store_close(s);
    nbx_store *ro;
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &ro), NBX_OK);
    cr_assert_eq(nbx_profile_erase(ro, ids, 1, NULL), NBX_EREADONLY);
    cr_assert_eq(nbx_profile_restore(ro, "c1"), NBX_EREADONLY);
    nbx_store_close(ro);
}

/* A store of format 1 (as the nbx before erasure wrote it: no `suppressed`
 * database) is read as it is and written only after `nbx store upgrade`. */
Test(store, an_older_format_is_read_and_written_after_upgrade)
{
    nbx_store *s = create();
    put(s, "{\"id\":\"c1\",\"ltv\":5}");
    nbx_store_close(s);
    MDB_env *env;
    MDB_txn *txn = raw_begin(&env);
    MDB_dbi dbi;
    cr_assert_eq(mdb_dbi_open(txn, "suppressed", 0, &dbi), 0);
    cr_assert_eq(mdb_drop(txn, dbi, 1), 0);
    for (size_t i = 0; i < 3; i++) { /* format 3's */
        cr_assert_eq(mdb_dbi_open(txn, (const char *[]){"arms", "kills", "kill_log"}[i], 0, &dbi),
                     0);
        cr_assert_eq(mdb_drop(txn, dbi, 1), 0);
    }
    raw_end(env, txn);
    uint8_t one = 1;
    set_schema(&one, 1);

    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_EVERSION);
    cr_assert(strstr(nbx_last_errmsg(), "nbx store upgrade --store") != NULL, "%s",
              nbx_last_errmsg());
    cr_assert_eq(nbx_store_open(path, NBX_STORE_READONLY, &s), NBX_OK, "%s", nbx_last_errmsg());
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "c1", &json, NULL), NBX_OK);
    nbx_free(json);
    nbx_store_stats st;
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.schema_version, 1);
    const char *id = "c1";
    cr_assert_eq(nbx_profile_erase(s, &id, 1, NULL), NBX_EREADONLY);
    cr_assert_eq(nbx_kill(s, NBX_KILL_OFFER, "o1", "r", NULL), NBX_EREADONLY);
    nbx_store_close(s);

    uint32_t from = 9, to = 9;
    cr_assert_eq(nbx_store_upgrade(path, &from, &to), NBX_OK, "%s", nbx_last_errmsg());
    cr_assert_eq(from, 1);
    cr_assert_eq(to, NBX_SCHEMA_VERSION);
    cr_assert_eq(nbx_store_upgrade(path, &from, &to), NBX_OK);
    cr_assert_eq(from, NBX_SCHEMA_VERSION, "nothing to do the second time");
    s = create();
    cr_assert_eq(nbx_profile_erase(s, &id, 1, NULL), NBX_OK, "%s", nbx_store_errmsg(s));
    /* the upgrade made format 3's kill switches too */
    cr_assert_eq(nbx_kill(s, NBX_KILL_OFFER, "o1", "r", NULL), NBX_OK, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_store_stat(s, &st), NBX_OK);
    cr_assert_eq(st.schema_version, NBX_SCHEMA_VERSION);
    nbx_store_close(s);

    uint8_t newer = NBX_SCHEMA_VERSION + 1;
    set_schema(&newer, 1);
    cr_assert_eq(nbx_store_upgrade(path, NULL, NULL), NBX_EVERSION);
    cr_assert_eq(nbx_store_upgrade(NULL, NULL, NULL), NBX_EINVAL);
    char *missing = tu_path(dir, "missing");
    cr_assert_eq(nbx_store_upgrade(missing, NULL, NULL), NBX_ENOTFOUND);
    free(missing);
}

Test(store, compact_writes_a_store_and_refuses_its_own_or_a_full_directory)
{
    nbx_store *s = create();
    for (int i = 0; i < 200; i++) {
        char json[128];
        snprintf(json, sizeof json, "{\"id\":\"c%03d\",\"attrs\":{\"secret\":\"s-%03d\"}}", i, i);
        put(s, json);
    }
    const char *gone[] = {"c007", "c100"};
    cr_assert_eq(nbx_profile_erase(s, gone, 2, NULL), NBX_OK);
    /* arm counters travel with the copy too */
    nbx_arm_deltas d = {0};
    nbx_arm_deltas_at(&d, NBX_SV("q4"), NBX_SV("champion"), 20500)->decisions = 3;
    MDB_txn *wtxn;
    nbx_err e = {0};
    cr_assert_eq(nbx_store_write_begin(s, &wtxn, &e), NBX_OK);
    cr_assert_eq(nbx_arm_deltas_write(&d, s, wtxn, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(nbx_store_commit(s, wtxn, &e), NBX_OK);
    nbx_arm_deltas_free(&d);
    char *out = tu_path(dir, "copy");
    cr_assert_eq(nbx_store_compact(s, out), NBX_OK, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_store_compact(s, out), NBX_EINVAL, "a full directory");
    cr_assert(strstr(nbx_store_errmsg(s), "not empty") != NULL, "%s", nbx_store_errmsg(s));
    cr_assert_eq(nbx_store_compact(s, path), NBX_EINVAL, "the store itself");
    char *file = tu_path(dir, "file");
    cr_assert_eq(tu_write_file(file, "x"), 0);
    cr_assert_eq(nbx_store_compact(s, file), NBX_EINVAL);
    char *nowhere = tu_path(dir, "no/such/dir");
    cr_assert_eq(nbx_store_compact(s, nowhere), NBX_ENOTFOUND);
    cr_assert_eq(nbx_store_compact(NULL, out), NBX_EINVAL);
    cr_assert_eq(nbx_store_compact(s, NULL), NBX_EINVAL);

    /* the copy is the store: same records, erasures kept */
    nbx_store *c;
    cr_assert_eq(nbx_store_open(out, 0, &c), NBX_OK, "%s", nbx_last_errmsg());
    MDB_dbi a[] = {s->profiles, s->customers, s->budgets, s->meta, s->suppressed, s->arms};
    MDB_dbi b[] = {c->profiles, c->customers, c->budgets, c->meta, c->suppressed, c->arms};
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) {
        size_t la, lb;
        char *x = db_bytes(s, a[i], &la), *y = db_bytes(c, b[i], &lb);
        cr_assert(la == lb && (la == 0 || memcmp(x, y, la) == 0), "database %zu differs", i);
        free(x);
        free(y);
    }
    const char *again = "{\"id\":\"c007\"}";
    cr_assert_eq(nbx_profile_put(c, again, strlen(again)), NBX_EINVAL, "c007 came back");
    nbx_store_close(c);
    free(nowhere);
    free(file);
    free(out);
    nbx_store_close(s);
}

/* ------------------------------------------------------------------------
 * Damaged values (issue 10, section 5)
 * ------------------------------------------------------------------------ */

/* The report's 21 bytes (with a nil tenth element): profile get, export
 * and the RFM rebuild spun for seconds before reporting it. Each answers
 * NBX_ECORRUPT naming the customer, at once (a generous bound: decoding 21
 * bytes takes microseconds). */
Test(store, a_damaged_profile_is_reported_at_once, .timeout = 60)
{
    static const uint8_t damaged[21] = {0x97, 0x80, 0x80, 0x80, 0xc0, 0xc0, 0xdd,
                                        0xff, 0xff, 0xff, 0xff, 0,    0,    0,
                                        0,    0,    0,    0,    0,    0,    0xc0};
    nbx_store_close(create());
    raw_put("profiles", "c0000007", 8, damaged, sizeof damaged);
    nbx_store *s;
    cr_assert_eq(nbx_store_open(path, 0, &s), NBX_OK);
    int64_t t0 = nbx_monotonic_us();
    char *json = NULL;
    cr_assert_eq(nbx_profile_get(s, "c0000007", &json, NULL), NBX_ECORRUPT);
    cr_assert(strstr(nbx_store_errmsg(s), "profile 'c0000007'") != NULL, "%s", nbx_store_errmsg(s));
    nbx_iter *it;
    cr_assert_eq(nbx_iter_open(s, 0, NULL, &it), NBX_OK);
    const char *id, *text;
    cr_assert_eq(nbx_iter_next(it, &id, &text, NULL), NBX_ECORRUPT);
    nbx_iter_close(it);
    cr_assert_eq(nbx_rfm_rebuild(s, 0, NULL), NBX_ECORRUPT);
    cr_assert(strstr(nbx_store_errmsg(s), "c0000007") != NULL, "%s", nbx_store_errmsg(s));
    double took = (double)(nbx_monotonic_us() - t0) / 1e6;
    cr_assert_lt(took, 5.0, "reporting a damaged value took %.1f s", took);
    nbx_store_close(s);
}
