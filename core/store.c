/*
 * store.c: the LMDB environment: open, format version and upgrade,
 * transactions, profile records, erasure and suppression, compaction and
 * counts. The layouts of the records are codec.c's.
 *
 * Durability: LMDB commits are atomic and, by default, fsync'd: a process
 * killed at any point leaves the last committed transaction intact and
 * nothing of an uncommitted one. NBX_STORE_NOMETASYNC skips the metadata
 * sync: an OS crash may then undo the last committed transaction (never
 * corrupt the store). docs/data-model.md, "Durability".
 */
#include "nbx_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Address space reserved for the map; the file grows only as data is
 * written. Override with NBX_MAP_SIZE (bytes, or with a K/M/G/T suffix). */
#define NBX_DEFAULT_MAP_SIZE ((size_t)256 << 30)
#define NBX_MIN_MAP_SIZE ((size_t)1 << 20)
#define NBX_MAX_READERS 1024

/* A value that does not read as a size is refused, not replaced by the
 * default: an operator who sets a limit gets that limit or an error. */
static int map_size_from_env(size_t *out, nbx_err *e)
{
    const char *s = getenv("NBX_MAP_SIZE");
    *out = NBX_DEFAULT_MAP_SIZE;
    if (!s || !*s)
        return NBX_OK;
    char *end = (char *)s;
    unsigned long long v = 0;
    errno = 0;
    if (*s >= '0' && *s <= '9') /* strtoull would take spaces and a sign */
        v = strtoull(s, &end, 10);
    unsigned shift = 0;
    switch (*end) {
    case 'T':
    case 't':
        shift = 40;
        break;
    case 'G':
    case 'g':
        shift = 30;
        break;
    case 'M':
    case 'm':
        shift = 20;
        break;
    case 'K':
    case 'k':
        shift = 10;
        break;
    default:
        break;
    }
    if (shift) {
        end++;
        /* "64GB" and "64GiB" read as they were meant */
        if (*end == 'i' && (end[1] == 'B' || end[1] == 'b'))
            end++;
        if (*end == 'B' || *end == 'b')
            end++;
    }
    if (end == s || *end || errno || v > (SIZE_MAX >> shift) || (v << shift) < NBX_MIN_MAP_SIZE)
        return nbx_err_set(e, NBX_EINVAL,
                           "NBX_MAP_SIZE: '%.64s' is not a size of at least 1M (bytes, or a "
                           "number with a K, M, G or T suffix)",
                           s);
    *out = (size_t)(v << shift);
    return NBX_OK;
}

/* ========================================================================
 * Open and close
 * ======================================================================== */

/* Databases of the layout before `customers` (schema 1 as first written,
 * never shipped): their data is keyed differently, so such a store is
 * refused rather than misread. */
static const char *const old_layout_dbs[] = {"events", "history", "exposures"};

static int check_layout(nbx_store *s, MDB_txn *txn, nbx_err *e)
{
    for (size_t i = 0; i < NBX_ARRAY_LEN(old_layout_dbs); i++) {
        MDB_dbi dbi;
        int rc = mdb_dbi_open(txn, old_layout_dbs[i], 0, &dbi);
        if (rc == 0)
            return nbx_err_set(e, NBX_EVERSION,
                               "%s: store has the earlier layout (an '%s' database), which this "
                               "nbx does not read: create a new store and import its profiles "
                               "and events again",
                               s->path, old_layout_dbs[i]);
        if (rc != MDB_NOTFOUND)
            return nbx_err_mdb(e, rc, s->path);
    }
    return NBX_OK;
}

static int put_version(nbx_store *s, MDB_txn *txn, uint32_t version, nbx_err *e)
{
    uint8_t schema[1];
    size_t n = nbx_schema_encode(version, schema);
    return nbx_store_meta_put(s, txn, NBX_META_SCHEMA, schema, n, e);
}

/* The format version: a new store gets this nbx's; a newer one is refused;
 * an older one is read as it is, and written only once `nbx store upgrade`
 * has brought it to this version (NBX_STORE_UPGRADE, within this
 * transaction), so that an nbx of the older version never writes a store
 * whose new parts (erasures) it would ignore. */
static int check_version(nbx_store *s, MDB_txn *txn, uint32_t *version, nbx_err *e)
{
    bool ro = s->flags & NBX_STORE_READONLY;
    MDB_val v;
    int rc = nbx_store_meta_get(s, txn, NBX_META_SCHEMA, &v, e);
    if (rc == NBX_ENOTFOUND && !ro) {
        *version = s->schema_before = NBX_SCHEMA_VERSION;
        return put_version(s, txn, NBX_SCHEMA_VERSION, e);
    }
    if (rc == NBX_ENOTFOUND)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: not an nbx store (no schema version)", s->path);
    if (rc)
        return rc;
    if (nbx_schema_decode(v.mv_data, v.mv_size, version) != NBX_OK || *version == 0)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: unreadable schema version", s->path);
    s->schema_before = *version;
    if (*version > NBX_SCHEMA_VERSION)
        return nbx_err_set(e, NBX_EVERSION,
                           "%s: store schema %u is newer than this nbx (schema %d): upgrade nbx",
                           s->path, *version, NBX_SCHEMA_VERSION);
    if (*version == NBX_SCHEMA_VERSION || ro)
        return NBX_OK;
    if (!(s->flags & NBX_STORE_UPGRADE))
        return nbx_err_set(e, NBX_EVERSION,
                           "%s: store schema %u is older than this nbx's (schema %d): it can be "
                           "read, not written; upgrade it with `nbx store upgrade --store %s` "
                           "(docs/format.md)",
                           s->path, *version, NBX_SCHEMA_VERSION, s->path);
    /* 1 -> 2: the suppressed database; 2 -> 3: the arms, kills and
     * kill_log databases (open_versioned creates them); the others read the same,
     * nothing else to rewrite */
    *version = NBX_SCHEMA_VERSION;
    return put_version(s, txn, NBX_SCHEMA_VERSION, e);
}

/* A database a format version added: absent from an older store, which
 * is read as it is (read-only), so *present stays false. */
static int open_added(nbx_store *s, MDB_txn *txn, uint32_t version, uint32_t since,
                      const char *name, MDB_dbi *dbi, bool *present, nbx_err *e)
{
    if (version < since)
        return NBX_OK;
    bool ro = s->flags & NBX_STORE_READONLY;
    int rc = mdb_dbi_open(txn, name, ro ? 0 : MDB_CREATE, dbi);
    if (rc == MDB_NOTFOUND)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: not an nbx store (no '%s' database)", s->path,
                           name);
    if (rc)
        return nbx_err_mdb(e, rc, s->path);
    *present = true;
    return NBX_OK;
}

/* The databases of formats after the first: `suppressed` (2: nobody was
 * erased with suppression before), `arms`, `kills` and `kill_log` (3: no
 * arm was counted, nothing was killed). */
static int open_versioned(nbx_store *s, MDB_txn *txn, uint32_t version, nbx_err *e)
{
    s->schema = version;
    int rc = open_added(s, txn, version, 2, "suppressed", &s->suppressed, &s->has_suppressed, e);
    if (rc == NBX_OK)
        rc = open_added(s, txn, version, 3, "arms", &s->arms, &s->has_arms, e);
    if (rc == NBX_OK)
        rc = open_added(s, txn, version, 3, "kills", &s->kills, &s->has_kills, e);
    if (rc == NBX_OK)
        rc = open_added(s, txn, version, 3, "kill_log", &s->kill_log, &s->has_kills, e);
    return rc;
}

static int open_dbis(nbx_store *s, nbx_err *e)
{
    bool ro = s->flags & NBX_STORE_READONLY;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, ro ? MDB_RDONLY : 0, &txn);
    if (rc)
        return nbx_err_mdb(e, rc, s->path);
    if ((rc = check_layout(s, txn, e)) != NBX_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    unsigned f = ro ? 0 : MDB_CREATE;
    struct {
        const char *name;
        MDB_dbi *dbi;
    } dbs[] = {{"profiles", &s->profiles},
               {"customers", &s->customers},
               {"budgets", &s->budgets},
               {"meta", &s->meta}};
    for (size_t i = 0; i < NBX_ARRAY_LEN(dbs); i++) {
        rc = mdb_dbi_open(txn, dbs[i].name, f, dbs[i].dbi);
        if (rc == MDB_NOTFOUND) {
            mdb_txn_abort(txn);
            return nbx_err_set(e, NBX_ECORRUPT, "%s: not an nbx store (no '%s' database)", s->path,
                               dbs[i].name);
        }
        if (rc) {
            mdb_txn_abort(txn);
            return nbx_err_mdb(e, rc, s->path);
        }
    }

    uint32_t version = 0;
    if ((rc = check_version(s, txn, &version, e)) == NBX_OK)
        rc = open_versioned(s, txn, version, e);
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    rc = mdb_txn_commit(txn);
    if (rc)
        return nbx_err_mdb(e, rc, s->path);
    return NBX_OK;
}

/* ------------------------------------------------------------------------
 * Why an open failed, in words: a bare EACCES does not tell a user what to
 * fix. LMDB's own conditions are put in words by nbx_err_mdb().
 * ------------------------------------------------------------------------ */

/* Which file the permission problem is about. access() uses the real ids,
 * which are the process's ids for nbx (it is never installed setuid). */
static int explain_denied(nbx_err *e, const char *path, bool ro)
{
    char data[4096], lock[4096];
    snprintf(data, sizeof data, "%s/data.mdb", path);
    snprintf(lock, sizeof lock, "%s/lock.mdb", path);
    if (access(path, X_OK) != 0)
        return nbx_err_set(e, NBX_EIO, "%s: permission denied: cannot enter the store directory",
                           path);
    if (access(data, F_OK) != 0) {
        if (access(path, W_OK) != 0)
            return nbx_err_set(e, NBX_EIO,
                               "%s: permission denied: creating a store needs write access to "
                               "the directory",
                               path);
    } else if (access(data, ro ? R_OK : R_OK | W_OK) != 0) {
        return nbx_err_set(e, NBX_EIO, "%s: permission denied: %s needs %s access", path, data,
                           ro ? "read" : "read and write");
    }
    if (access(lock, F_OK) != 0) {
        if (access(path, W_OK) != 0)
            return nbx_err_set(e, NBX_EIO,
                               "%s: permission denied: opening a store creates %s (LMDB's reader "
                               "table), which needs write access to the directory",
                               path, lock);
    } else if (access(lock, R_OK | W_OK) != 0) {
        return nbx_err_set(e, NBX_EIO,
                           "%s: permission denied: %s a store needs write access to %s "
                           "(LMDB's reader table)",
                           path, ro ? "reading" : "writing", lock);
    }
    return nbx_err_set(e, NBX_EIO, "%s: permission denied", path);
}

static int open_error(nbx_err *e, int rc, const char *path, bool ro)
{
    char data[4096];
    struct stat st;
    snprintf(data, sizeof data, "%s/data.mdb", path);
    /* LMDB takes an empty data.mdb for a new store; opened read-only it
     * cannot write the first pages and fails with ENOENT or EBADF. */
    if (ro && stat(data, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: store file is empty", data);
    switch (rc) {
    case EACCES:
    case EPERM:
        return explain_denied(e, path, ro);
    case EROFS:
        return nbx_err_set(e, NBX_EIO,
                           "%s: the file system is read-only (a store needs write access to "
                           "its lock.mdb, also to read)",
                           path);
    default:
        return nbx_err_mdb(e, rc, path);
    }
}

/* LMDB maps the file and does not check it against its meta page: a page
 * past the end of a truncated file is a SIGBUS in the first reader that
 * touches it. The meta page says how many pages are in use; the file must
 * hold them all. mdb_env_info() is read before the size, so a writer
 * growing the file meanwhile can only make the file larger than needed. */
static int check_file_size(nbx_store *s, nbx_err *e)
{
    MDB_envinfo info;
    MDB_stat st;
    mdb_filehandle_t fd;
    struct stat fs;
    int rc = mdb_env_info(s->env, &info);
    if (rc == 0)
        rc = mdb_env_stat(s->env, &st);
    if (rc == 0)
        rc = mdb_env_get_fd(s->env, &fd);
    if (rc)
        return open_error(e, rc, s->path, s->flags & NBX_STORE_READONLY);
    if (fstat(fd, &fs) != 0)
        return nbx_err_errno(e, errno, "cannot stat the store file of", s->path);
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    if ((uint64_t)fs.st_size < need)
        return nbx_err_set(e, NBX_ECORRUPT,
                           "%s/data.mdb: store file is truncated: %llu bytes, the store needs "
                           "%llu",
                           s->path, (unsigned long long)fs.st_size, (unsigned long long)need);
    return NBX_OK;
}

static int store_open(const char *path, unsigned flags, nbx_store *s, nbx_err *e)
{
    struct stat st;
    bool ro = flags & NBX_STORE_READONLY;
    size_t map_size;
    int rc = map_size_from_env(&map_size, e);
    if (rc)
        return rc;
    if (stat(path, &st) != 0) {
        if (errno == EACCES)
            return nbx_err_set(e, NBX_EIO,
                               "%s: permission denied: a directory on the way cannot be entered",
                               path);
        if (errno != ENOENT || !(flags & NBX_STORE_CREATE) || ro)
            return errno == ENOENT
                       ? nbx_err_set(e, NBX_ENOTFOUND,
                                     "%s: no store here (create one with nbx import)", path)
                       : nbx_err_errno(e, errno, "cannot open store", path);
        if (mkdir(path, 0775) != 0 && errno != EEXIST)
            return nbx_err_errno(e, errno, "cannot create store directory", path);
    } else if (!S_ISDIR(st.st_mode)) {
        return nbx_err_set(e, NBX_EIO, "%s: a store is a directory, this is a file", path);
    }
    char data[4096];
    snprintf(data, sizeof data, "%s/data.mdb", path);
    if (!(flags & NBX_STORE_CREATE) && access(data, F_OK) != 0) {
        if (errno == ENOENT)
            return nbx_err_set(e, NBX_ENOTFOUND, "%s: no store here (no data.mdb)", path);
        if (errno == EACCES)
            return explain_denied(e, path, ro);
        return nbx_err_errno(e, errno, "cannot open store", path);
    }

    rc = mdb_env_create(&s->env);
    if (rc)
        return nbx_err_mdb(e, rc, path);
    mdb_env_set_maxdbs(s->env, 16);
    mdb_env_set_maxreaders(s->env, NBX_MAX_READERS);
    mdb_env_set_mapsize(s->env, map_size);
    /* NOTLS: a context's read transaction is not tied to a thread (contexts
     * move between threads; one thread may hold several). NORDAHEAD: point
     * lookups on a store larger than RAM should not read pages around.
     * Read-only opens still take a slot in lock.mdb's reader table (so a
     * writer does not reuse pages a reader sees): MDB_NOLOCK would drop that
     * protection, so a reader needs write access to lock.mdb. */
    unsigned mflags = MDB_NOTLS | MDB_NORDAHEAD;
    if (ro)
        mflags |= MDB_RDONLY;
    if (flags & NBX_STORE_NOMETASYNC)
        mflags |= MDB_NOMETASYNC;
    rc = mdb_env_open(s->env, path, mflags, 0664);
    if (rc)
        return open_error(e, rc, path, ro);
    if ((rc = check_file_size(s, e)) != NBX_OK)
        return rc;
    /* Reader slots of processes that died (a killed worker) would pin old
     * pages forever. */
    int dead = 0;
    mdb_reader_check(s->env, &dead);
    return open_dbis(s, e);
}

/* nbx_store_open() with the internal flags too. */
static int open_store(const char *path, unsigned flags, nbx_store **out)
{
    nbx_store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return nbx_fail(NULL, NBX_ENOMEM, "out of memory");
    }
    s->flags = flags;
    nbx_err e = {0};
    int rc = store_open(path, flags, s, &e);
    if (rc) {
        nbx_store_close(s);
        return nbx_publish(NULL, &e);
    }
    *out = s;
    return NBX_OK;
}

NBX_API int nbx_store_open(const char *path, unsigned flags, nbx_store **out)
{
    if (out)
        *out = NULL;
    if (!path || !out || !*path)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_store_open: path and out are required");
    if (flags & ~(unsigned)(NBX_STORE_CREATE | NBX_STORE_READONLY | NBX_STORE_NOMETASYNC))
        return nbx_fail(NULL, NBX_EINVAL, "nbx_store_open: unknown flags 0x%x", flags);
    return open_store(path, flags, out);
}

NBX_API int nbx_store_upgrade(const char *path, uint32_t *from, uint32_t *to)
{
    if (from)
        *from = 0;
    if (to)
        *to = 0;
    if (!path || !*path)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_store_upgrade: path is required");
    nbx_store *s;
    int rc = open_store(path, NBX_STORE_UPGRADE, &s);
    if (rc)
        return rc;
    if (from)
        *from = s->schema_before;
    if (to)
        *to = s->schema;
    nbx_store_close(s);
    return NBX_OK;
}

NBX_API void nbx_store_close(nbx_store *s)
{
    if (!s)
        return;
    if (s->env)
        mdb_env_close(s->env);
    free(s->path);
    free(s);
}

/* ========================================================================
 * Transactions and records
 * ======================================================================== */

int nbx_store_read_begin(nbx_store *s, MDB_txn **txn, nbx_err *e)
{
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
    return rc ? nbx_err_mdb(e, rc, s->path) : NBX_OK;
}

int nbx_store_write_begin(nbx_store *s, MDB_txn **txn, nbx_err *e)
{
    *txn = NULL;
    if (s->flags & NBX_STORE_READONLY)
        return nbx_err_set(e, NBX_EREADONLY, "%s: store opened read-only", s->path);
    int rc = mdb_txn_begin(s->env, NULL, 0, txn);
    return rc ? nbx_err_mdb(e, rc, s->path) : NBX_OK;
}

int nbx_store_commit(nbx_store *s, MDB_txn *txn, nbx_err *e)
{
    int rc = mdb_txn_commit(txn);
    return rc ? nbx_err_mdb(e, rc, s->path) : NBX_OK;
}

int nbx_store_profile_get(nbx_store *s, MDB_txn *txn, nbx_sv id, nbx_profile *p, nbx_arena *a,
                          nbx_err *e)
{
    MDB_val k = {id.len, (void *)id.ptr}, v;
    int rc = mdb_get(txn, s->profiles, &k, &v);
    /* No message: every caller but nbx_profile_get takes an absent profile
     * as an anonymous or a new one, and formatting one would cost a
     * decision for an unknown customer, or an import per new profile, a
     * vsnprintf for nothing. */
    if (rc == MDB_NOTFOUND)
        return NBX_ENOTFOUND;
    if (rc)
        return nbx_err_mdb(e, rc, "reading a profile");
    /* The value is rarely in cache: ask for all its lines at once, so the
     * misses overlap instead of arriving one by one as decoding walks it. */
    for (size_t off = 0; off < v.mv_size; off += 64)
        __builtin_prefetch((const char *)v.mv_data + off);
    p->id = id;
    return nbx_profile_decode(v.mv_data, v.mv_size, p, a, e);
}

int nbx_store_profile_put(nbx_store *s, MDB_txn *txn, const nbx_profile *p, nbx_buf *scratch,
                          nbx_err *e)
{
    nbx_buf_reset(scratch);
    if (nbx_profile_encode(p, scratch) != NBX_OK)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory encoding a profile");
    MDB_val k = {p->id.len, (void *)p->id.ptr}, v = {scratch->len, scratch->data};
    int rc = mdb_put(txn, s->profiles, &k, &v, 0);
    return rc ? nbx_err_mdb(e, rc, "writing a profile") : NBX_OK;
}

int nbx_store_meta_get(nbx_store *s, MDB_txn *txn, const char *key, MDB_val *out, nbx_err *e)
{
    MDB_val k = {strlen(key), (void *)key};
    int rc = mdb_get(txn, s->meta, &k, out);
    if (rc == MDB_NOTFOUND)
        return NBX_ENOTFOUND;
    return rc ? nbx_err_mdb(e, rc, "reading store metadata") : NBX_OK;
}

int nbx_store_meta_put(nbx_store *s, MDB_txn *txn, const char *key, const void *v, size_t n,
                       nbx_err *e)
{
    MDB_val k = {strlen(key), (void *)key}, val = {n, (void *)v};
    int rc = mdb_put(txn, s->meta, &k, &val, 0);
    return rc ? nbx_err_mdb(e, rc, "writing store metadata") : NBX_OK;
}

int nbx_store_events_seen(nbx_store *s, MDB_txn *txn, uint64_t *out, nbx_err *e)
{
    *out = 0;
    MDB_val v;
    int rc = nbx_store_meta_get(s, txn, NBX_META_EVENTS, &v, e);
    if (rc == NBX_ENOTFOUND)
        return NBX_OK;
    if (rc)
        return rc;
    if (nbx_count_decode(v.mv_data, v.mv_size, out) != NBX_OK)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: unreadable event count", s->path);
    return NBX_OK;
}

int nbx_store_events_add(nbx_store *s, MDB_txn *txn, int64_t delta, nbx_err *e)
{
    if (delta == 0)
        return NBX_OK;
    uint64_t n;
    int rc = nbx_store_events_seen(s, txn, &n, e);
    if (rc)
        return rc;
    if (delta < 0 && (uint64_t)-delta > n)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: the event count would go below zero", s->path);
    n += (uint64_t)delta;
    uint8_t buf[NBX_COUNT_VALUE_SIZE];
    size_t len = nbx_count_encode(n, buf);
    return nbx_store_meta_put(s, txn, NBX_META_EVENTS, buf, len, e);
}

/* ========================================================================
 * Erasure
 * ======================================================================== */

/* Delete every key of the customer's range (id \0 ...): counters and event
 * records. Counts the keys deleted and, of them, the event records. */
static int delete_customer(nbx_store *s, MDB_txn *txn, const char *prefix, size_t n, uint64_t *keys,
                           uint64_t *events, nbx_err *e)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->customers, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "erasing a customer");
    MDB_val k = {n, (void *)prefix}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= n && memcmp(k.mv_data, prefix, n) == 0) {
        bool event = nbx_customer_key_tag(k.mv_data, k.mv_size, n) == NBX_TAG_EVENT;
        rc = mdb_cursor_del(cur, 0);
        if (rc)
            break;
        (*keys)++;
        *events += event;
        rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
        if (rc == EINVAL || rc == MDB_NOTFOUND) /* deleted the last key */
            rc = MDB_NOTFOUND;
    }
    mdb_cursor_close(cur);
    return rc == 0 || rc == MDB_NOTFOUND ? NBX_OK : nbx_err_mdb(e, rc, "erasing a customer");
}

/* The store's secret for the keyed hash of erased ids, made (random) by the
 * first erasure. It lives in meta, with the records it keys: a store and
 * its copies recognise their erased ids, and the list read without the
 * store says nothing (docs/data-model.md, "Erasure"). */
static int suppression_secret(nbx_store *s, MDB_txn *txn, bool create,
                              uint8_t out[NBX_SUPPRESSION_SECRET_SIZE], nbx_err *e)
{
    MDB_val v;
    int rc = nbx_store_meta_get(s, txn, NBX_META_SUPPRESSION_SECRET, &v, e);
    if (rc == NBX_OK) {
        if (v.mv_size != NBX_SUPPRESSION_SECRET_SIZE)
            return nbx_err_set(e, NBX_ECORRUPT, "%s: unreadable suppression key", s->path);
        memcpy(out, v.mv_data, NBX_SUPPRESSION_SECRET_SIZE);
        return NBX_OK;
    }
    if (rc != NBX_ENOTFOUND || !create)
        return rc;
    if (getrandom(out, NBX_SUPPRESSION_SECRET_SIZE, 0) != NBX_SUPPRESSION_SECRET_SIZE)
        return nbx_err_errno(e, errno, "cannot draw a suppression key for", s->path);
    return nbx_store_meta_put(s, txn, NBX_META_SUPPRESSION_SECRET, out, NBX_SUPPRESSION_SECRET_SIZE,
                              e);
}

int nbx_suppressions_begin(nbx_store *s, MDB_txn *txn, nbx_suppressions *sp, nbx_err *e)
{
    memset(sp, 0, sizeof *sp);
    if (!s->has_suppressed)
        return NBX_OK;
    MDB_stat st;
    int rc = mdb_stat(txn, s->suppressed, &st);
    if (rc)
        return nbx_err_mdb(e, rc, "reading the erased customers");
    if (st.ms_entries == 0)
        return NBX_OK;
    rc = suppression_secret(s, txn, false, sp->secret, e);
    if (rc == NBX_ENOTFOUND)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: erased customers but no suppression key", s->path);
    sp->any = rc == NBX_OK;
    return rc;
}

int nbx_suppressed(nbx_store *s, MDB_txn *txn, const nbx_suppressions *sp, nbx_sv customer,
                   nbx_err *e)
{
    if (!sp->any)
        return 0;
    uint8_t key[NBX_SUPPRESSION_KEY_SIZE];
    nbx_suppression_key(key, sp->secret, customer);
    MDB_val k = {sizeof key, key}, v;
    int rc = mdb_get(txn, s->suppressed, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    return rc ? nbx_err_mdb(e, rc, "reading the erased customers") : 1;
}

/* One id's erasure in txn: its profile, its key range, and its
 * suppression record. *records: how many records it lost. */
static int erase_one(nbx_store *s, MDB_txn *txn, const uint8_t *secret, nbx_sv id, int64_t now_ms,
                     uint64_t *records, uint64_t *events, nbx_err *e)
{
    *records = 0;
    MDB_val k = {id.len, (void *)id.ptr};
    int mrc = mdb_del(txn, s->profiles, &k, NULL);
    if (mrc == 0)
        (*records)++;
    else if (mrc != MDB_NOTFOUND)
        return nbx_err_mdb(e, mrc, "erasing a profile");
    char prefix[NBX_ID_MAX + 1];
    size_t n = nbx_customer_prefix(prefix, id);
    int rc = delete_customer(s, txn, prefix, n, records, events, e);
    if (rc)
        return rc;
    uint8_t key[NBX_SUPPRESSION_KEY_SIZE];
    char val[NBX_SUPPRESSION_VALUE_MAX];
    nbx_suppression_key(key, secret, id);
    MDB_val sk = {sizeof key, key}, sv = {nbx_suppression_encode(now_ms, val), val};
    mrc = mdb_put(txn, s->suppressed, &sk, &sv, 0);
    return mrc ? nbx_err_mdb(e, mrc, "recording an erasure") : NBX_OK;
}

/* A store of an older format opens read-only only: writable means it has
 * the suppressed database. */
static int writable(nbx_store *s)
{
    if (s->flags & NBX_STORE_READONLY)
        return nbx_fail(s, NBX_EREADONLY, "%s: store opened read-only", s->path);
    return NBX_OK;
}

NBX_API int nbx_profile_erase(nbx_store *s, const char *const *ids, size_t n, uint64_t *records)
{
    if (!s || (!ids && n))
        return nbx_fail(s, NBX_EINVAL, "nbx_profile_erase: NULL argument");
    if (records && n)
        memset(records, 0, n * sizeof *records);
    nbx_err e = {0};
    for (size_t i = 0; i < n; i++) {
        if (!ids[i])
            return nbx_fail(s, NBX_EINVAL, "nbx_profile_erase: ids[%zu] is NULL", i);
        if (!nbx_id_valid(nbx_sv_of(ids[i]), &e)) {
            nbx_err_prefix(&e, "ids[%zu]: ", i);
            e.code = NBX_EINVAL;
            return nbx_publish(s, &e);
        }
    }
    int rc = writable(s);
    if (rc || n == 0)
        return rc;
    MDB_txn *txn;
    if ((rc = nbx_store_write_begin(s, &txn, &e)) != NBX_OK)
        return nbx_publish(s, &e);
    uint8_t secret[NBX_SUPPRESSION_SECRET_SIZE];
    uint64_t events = 0;
    int64_t now = nbx_time_now();
    rc = suppression_secret(s, txn, true, secret, &e);
    for (size_t i = 0; rc == NBX_OK && i < n; i++) {
        uint64_t lost;
        rc = erase_one(s, txn, secret, nbx_sv_of(ids[i]), now, &lost, &events, &e);
        if (rc == NBX_OK && records)
            records[i] = lost;
    }
    if (rc == NBX_OK)
        rc = nbx_store_events_add(s, txn, -(int64_t)events, &e);
    if (rc == NBX_OK)
        rc = nbx_store_commit(s, txn, &e);
    else
        mdb_txn_abort(txn);
    if (rc && records)
        memset(records, 0, n * sizeof *records);
    return rc ? nbx_publish(s, &e) : NBX_OK;
}

NBX_API int nbx_profile_delete(nbx_store *s, const char *id)
{
    if (!s || !id)
        return nbx_fail(s, NBX_EINVAL, "nbx_profile_delete: NULL argument");
    uint64_t lost = 0;
    int rc = nbx_profile_erase(s, &id, 1, &lost);
    if (rc == NBX_OK && lost == 0)
        return nbx_fail(s, NBX_ENOTFOUND, "no profile '%s' (the id is suppressed all the same)",
                        id);
    return rc;
}

NBX_API int nbx_profile_restore(nbx_store *s, const char *id)
{
    if (!s || !id)
        return nbx_fail(s, NBX_EINVAL, "nbx_profile_restore: NULL argument");
    nbx_err e = {0};
    nbx_sv sid = nbx_sv_of(id);
    if (!nbx_id_valid(sid, &e)) {
        e.code = NBX_EINVAL;
        return nbx_publish(s, &e);
    }
    int rc = writable(s);
    if (rc)
        return rc;
    MDB_txn *txn;
    if ((rc = nbx_store_write_begin(s, &txn, &e)) != NBX_OK)
        return nbx_publish(s, &e);
    nbx_suppressions sp;
    rc = nbx_suppressions_begin(s, txn, &sp, &e);
    if (rc == NBX_OK) {
        uint8_t key[NBX_SUPPRESSION_KEY_SIZE];
        nbx_suppression_key(key, sp.secret, sid);
        MDB_val k = {sizeof key, key};
        int mrc = sp.any ? mdb_del(txn, s->suppressed, &k, NULL) : MDB_NOTFOUND;
        if (mrc == MDB_NOTFOUND)
            rc = nbx_err_set(&e, NBX_ENOTFOUND, "'%s' is not an erased customer", id);
        else if (mrc)
            rc = nbx_err_mdb(&e, mrc, "restoring a customer");
    }
    if (rc == NBX_OK)
        rc = nbx_store_commit(s, txn, &e);
    else
        mdb_txn_abort(txn);
    return rc ? nbx_publish(s, &e) : NBX_OK;
}

/* ========================================================================
 * Compaction
 * ======================================================================== */

static bool dir_is_empty(const char *path, bool *empty)
{
    DIR *d = opendir(path);
    if (!d)
        return false;
    *empty = true;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            *empty = false;
    closedir(d);
    return true;
}

/* Records per write transaction of the copy: appends fill pages in order,
 * so this is a few thousand pages, far below LMDB's dirty-page limit. */
#define COPY_BATCH 100000

/* Every record of db, in key order, appended to the same database of dst. */
static int copy_db(nbx_store *s, MDB_txn *src, MDB_dbi from, MDB_env *dst, const char *name,
                   nbx_err *e)
{
    MDB_cursor *in;
    int rc = mdb_cursor_open(src, from, &in);
    if (rc)
        return nbx_err_mdb(e, rc, s->path);
    MDB_val k, v;
    int more = mdb_cursor_get(in, &k, &v, MDB_FIRST);
    do {
        MDB_txn *txn;
        MDB_dbi to;
        if ((rc = mdb_txn_begin(dst, NULL, 0, &txn)) != 0)
            break;
        if ((rc = mdb_dbi_open(txn, name, MDB_CREATE, &to)) != 0) {
            mdb_txn_abort(txn);
            break;
        }
        for (uint32_t n = 0; more == 0 && n < COPY_BATCH; n++) {
            if ((rc = mdb_put(txn, to, &k, &v, MDB_APPEND)) != 0)
                break;
            more = mdb_cursor_get(in, &k, &v, MDB_NEXT);
        }
        if (rc) {
            mdb_txn_abort(txn);
            break;
        }
        if ((rc = mdb_txn_commit(txn)) != 0)
            break;
    } while (more == 0);
    mdb_cursor_close(in);
    if (rc == 0 && more != MDB_NOTFOUND)
        rc = more;
    return rc ? nbx_err_mdb(e, rc, "copying the store") : NBX_OK;
}

/* The compacted copy is a new environment that every record is appended to,
 * database by database, from one read snapshot. Not mdb_env_copy2()'s
 * compacting copy: that copies branch pages as they are, and a branch page
 * keeps the key of a deleted record as a separator until the tree changes
 * around it, so erased customer ids survived in it (1,032 of 2,858 erased
 * ids in a test of 20,000 customers; no attribute value did). A tree built
 * anew from the live records holds no byte of a deleted one. */
static int copy_store(nbx_store *s, const char *out_dir, nbx_err *e)
{
    MDB_envinfo info;
    MDB_env *dst = NULL;
    MDB_txn *src = NULL;
    int rc = mdb_env_info(s->env, &info);
    if (rc == 0)
        rc = mdb_env_create(&dst);
    if (rc == 0) {
        mdb_env_set_maxdbs(dst, 16);
        mdb_env_set_mapsize(dst, info.me_mapsize);
        /* one sync at the end instead of one per batch */
        rc = mdb_env_open(dst, out_dir, MDB_NOSYNC, 0664);
    }
    if (rc == 0)
        rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &src);
    if (rc) {
        rc = nbx_err_mdb(e, rc, out_dir);
        goto done;
    }
    struct {
        const char *name;
        MDB_dbi dbi;
        bool present;
    } dbs[] = {{"profiles", s->profiles, true},
               {"customers", s->customers, true},
               {"budgets", s->budgets, true},
               {"meta", s->meta, true},
               {"suppressed", s->suppressed, s->has_suppressed},
               {"arms", s->arms, s->has_arms},
               {"kills", s->kills, s->has_kills},
               {"kill_log", s->kill_log, s->has_kills}};
    for (size_t i = 0; rc == NBX_OK && i < NBX_ARRAY_LEN(dbs); i++)
        if (dbs[i].present)
            rc = copy_db(s, src, dbs[i].dbi, dst, dbs[i].name, e);
    if (rc == NBX_OK && (rc = mdb_env_sync(dst, 1)) != 0)
        rc = nbx_err_mdb(e, rc, out_dir);
done:
    mdb_txn_abort(src);
    if (dst)
        mdb_env_close(dst);
    return rc;
}

NBX_API int nbx_store_compact(nbx_store *s, const char *out_dir)
{
    if (!s || !out_dir || !*out_dir)
        return nbx_fail(s, NBX_EINVAL, "nbx_store_compact: store and out_dir are required");
    nbx_err e = {0};
    struct stat out, self;
    bool made = false;
    if (stat(out_dir, &out) == 0) {
        bool empty;
        if (!S_ISDIR(out.st_mode))
            return nbx_fail(s, NBX_EINVAL, "%s: not a directory", out_dir);
        if (stat(s->path, &self) == 0 && self.st_dev == out.st_dev && self.st_ino == out.st_ino)
            return nbx_fail(s, NBX_EINVAL, "%s is the store itself: compact into a new directory",
                            out_dir);
        if (!dir_is_empty(out_dir, &empty))
            return nbx_fail(s, nbx_err_errno(&e, errno, "cannot read", out_dir), "%s", e.msg);
        if (!empty)
            return nbx_fail(s, NBX_EINVAL, "%s is not empty: compact into a new or empty directory",
                            out_dir);
    } else if (errno != ENOENT || mkdir(out_dir, 0775) != 0) {
        return nbx_fail(s, nbx_err_errno(&e, errno, "cannot create", out_dir), "%s", e.msg);
    } else {
        made = true;
    }
    int rc = copy_store(s, out_dir, &e);
    if (rc == NBX_OK)
        return NBX_OK;
    /* leave nothing half-written behind */
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < NBX_ARRAY_LEN(files); i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", out_dir, files[i]);
        unlink(path);
    }
    if (made)
        rmdir(out_dir);
    return nbx_publish(s, &e);
}

/* ========================================================================
 * Counts
 * ======================================================================== */

NBX_API int nbx_store_stat(nbx_store *s, nbx_store_stats *out)
{
    if (!s || !out)
        return nbx_fail(s, NBX_EINVAL, "nbx_store_stat: NULL argument");
    memset(out, 0, sizeof *out);
    nbx_err e = {0};
    MDB_txn *txn;
    int rc = nbx_store_read_begin(s, &txn, &e);
    if (rc)
        return nbx_publish(s, &e);
    MDB_stat st;
    if (mdb_stat(txn, s->profiles, &st) == 0)
        out->profiles = st.ms_entries;
    /* customers holds counter rows and event records, nothing else */
    if (nbx_store_events_seen(s, txn, &out->events_seen, NULL) == NBX_OK &&
        mdb_stat(txn, s->customers, &st) == 0 && st.ms_entries >= out->events_seen)
        out->exposure_keys = st.ms_entries - out->events_seen;
    MDB_envinfo info;
    MDB_stat envst;
    if (mdb_env_info(s->env, &info) == 0 && mdb_env_stat(s->env, &envst) == 0) {
        out->bytes_used = (uint64_t)(info.me_last_pgno + 1) * envst.ms_psize;
        out->map_size = info.me_mapsize;
    }
    MDB_val v;
    uint32_t version;
    out->schema_version = NBX_SCHEMA_VERSION;
    if (nbx_store_meta_get(s, txn, NBX_META_SCHEMA, &v, NULL) == NBX_OK &&
        nbx_schema_decode(v.mv_data, v.mv_size, &version) == NBX_OK)
        out->schema_version = version;
    nbx_rfm_meta rfm;
    if (nbx_store_meta_get(s, txn, NBX_META_RFM, &v, NULL) == NBX_OK &&
        nbx_rfm_meta_decode(v.mv_data, v.mv_size, &rfm) == NBX_OK)
        out->rfm_as_of = rfm.as_of_ms;
    mdb_txn_abort(txn);
    return NBX_OK;
}

NBX_API int nbx_store_generation(nbx_store *s, uint64_t *out)
{
    if (!s || !out)
        return nbx_fail(s, NBX_EINVAL, "nbx_store_generation: NULL argument");
    /* LMDB numbers committed write transactions; the meta page it reads
     * is shared by every process that has the store open */
    MDB_envinfo info;
    int rc = mdb_env_info(s->env, &info);
    if (rc) {
        nbx_err e = {0};
        nbx_err_mdb(&e, rc, "reading the store's generation");
        return nbx_publish(s, &e);
    }
    *out = (uint64_t)info.me_last_txnid;
    return NBX_OK;
}
