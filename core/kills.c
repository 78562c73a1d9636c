/*
 * kills.c: kill switches. The store's current kills (database `kills`) and
 * the history of every kill and unkill (database `kill_log`), the one
 * function that changes them, and the kill set a decision reads.
 *
 * A kill must take effect on the next decision of every process and nginx
 * worker without a reload, and a decision must not pay for it. So every
 * change also moves a generation counter in meta, in the same transaction;
 * a context checks its set at each decision inside the read transaction it
 * decides in: nothing when the snapshot is the one it checked last (LMDB's
 * txn id), else one meta lookup, and it reads the set again only when the
 * generation moved. A decision thus sees the kills of its own snapshot,
 * like every other stored fact it uses.
 *
 * Layouts are codec.c's (docs/format.md); what a kill does to a decision is
 * the callers' (caps.c excludes killed offers, decide.c keeps killed arms
 * and policy versions from serving).
 */
#include "nbx_int.h"

#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {NULL, "offer", "arm", "policy"};

NBX_API const char *nbx_kill_kind_name(int kind)
{
    return kind >= NBX_KILL_OFFER && kind <= NBX_KILL_POLICY ? kind_names[kind] : NULL;
}

/* ========================================================================
 * What may be killed, and with what
 * ======================================================================== */

static bool lower_hex(nbx_sv v)
{
    if (v.len != 16)
        return false;
    for (size_t i = 0; i < v.len; i++) {
        char c = v.ptr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/* DEPLOYMENT.ARM split at the first '.' (a deployment's name holds none, as
 * in decision ids); false if it is not two valid names. */
static bool split_arm(nbx_sv name, nbx_sv *deployment, nbx_sv *arm)
{
    const char *dot = memchr(name.ptr, '.', name.len);
    if (!dot)
        return false;
    *deployment = (nbx_sv){name.ptr, (size_t)(dot - name.ptr)};
    *arm = (nbx_sv){dot + 1, name.len - deployment->len - 1};
    return nbx_arm_name_valid(*deployment) && nbx_arm_name_valid(*arm);
}

static int check_name(uint8_t kind, nbx_sv name, nbx_err *e)
{
    nbx_sv dep, arm;
    switch (kind) {
    case NBX_KILL_OFFER:
        if (name.len == 0 || name.len > NBX_OFFER_ID_MAX || memchr(name.ptr, '\0', name.len))
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'offer': '%.*s' is not an offer id (1 to %d bytes, no NUL)",
                               (int)(name.len > 200 ? 200 : name.len), name.ptr, NBX_OFFER_ID_MAX);
        return NBX_OK;
    case NBX_KILL_ARM:
        /* ARM alone (no '.') is that arm in every deployment; with a '.',
         * DEPLOYMENT.ARM */
        arm = name;
        if (memchr(name.ptr, '.', name.len) ? !split_arm(name, &dep, &arm)
                                            : !nbx_arm_name_valid(name))
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'arm': '%.*s' is not ARM or DEPLOYMENT.ARM (names of 1 to "
                               "%d bytes of A-Z, a-z, 0-9, '_', '.' and '-'; the deployment's "
                               "without '.', an ARM alone without '.')",
                               (int)(name.len > 200 ? 200 : name.len), name.ptr, NBX_ARM_NAME_MAX);
        if (nbx_sv_eq_cstr(arm, "holdout"))
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'arm': '%.*s': the holdout is not an arm that serves a "
                               "policy; kill the arms instead",
                               (int)name.len, name.ptr);
        return NBX_OK;
    case NBX_KILL_POLICY:
        if (!lower_hex(name))
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'policy': '%.*s' is not a policy version (16 lowercase hex "
                               "digits, as a result's policy.version)",
                               (int)(name.len > 200 ? 200 : name.len), name.ptr);
        return NBX_OK;
    default:
        return nbx_err_set(e, NBX_EINVAL, "field 'kind': %u is not offer, arm or policy", kind);
    }
}

static int check_reason(nbx_sv reason, bool required, nbx_err *e)
{
    if (reason.len == 0)
        return required ? nbx_err_set(e, NBX_EINVAL, "field 'reason': a kill needs a reason")
                        : NBX_OK;
    if (reason.len > NBX_KILL_REASON_MAX)
        return nbx_err_set(e, NBX_EINVAL, "field 'reason': %zu bytes, the limit is %d", reason.len,
                           NBX_KILL_REASON_MAX);
    const unsigned char *p = (const unsigned char *)reason.ptr, *end = p + reason.len;
    while (p < end) {
        size_t n = nbx_utf8_len(p, end);
        if (n == 0 || *p == 0)
            return nbx_err_set(e, NBX_EINVAL, "field 'reason': byte %zu is %s",
                               (size_t)(p - (const unsigned char *)reason.ptr),
                               *p ? "not UTF-8" : "NUL");
        p += n;
    }
    return NBX_OK;
}

static int check_by(nbx_sv by, nbx_err *e)
{
    if (by.len == 0 || by.len > NBX_KILL_BY_MAX)
        return nbx_err_set(e, NBX_EINVAL, "field 'by': 1 to %d bytes", NBX_KILL_BY_MAX);
    for (size_t i = 0; i < by.len; i++)
        if (!nbx_name_byte((unsigned char)by.ptr[i]))
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'by': byte %zu is not one of A-Z, a-z, 0-9, '_', '.', '-'",
                               i);
    return NBX_OK;
}

static int check_change(const nbx_kill_change *c, nbx_err *e)
{
    int rc = check_name(c->kind, c->name, e);
    if (rc == NBX_OK)
        rc = check_reason(c->reason, c->killed, e);
    if (rc == NBX_OK)
        rc = check_by(c->by, e);
    return rc;
}

/* ========================================================================
 * Writing: the current set, the history and the generation, together
 * ======================================================================== */

static int next_log_seq(nbx_store *s, MDB_txn *txn, uint64_t *seq, nbx_err *e)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->kill_log, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "reading the kill history");
    MDB_val k, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) {
        *seq = 1;
        return NBX_OK;
    }
    if (rc)
        return nbx_err_mdb(e, rc, "reading the kill history");
    uint64_t last = nbx_kill_log_seq(k.mv_data, k.mv_size);
    if (last == 0)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: a kill history key of %zu bytes", s->path,
                           k.mv_size);
    *seq = last + 1;
    return NBX_OK;
}

/* Meta kill_generation as txn sees it (absent: 0, nothing changed yet). */
static int read_generation(nbx_store *s, MDB_txn *txn, uint64_t *gen, nbx_err *e)
{
    MDB_val v;
    *gen = 0;
    int rc = nbx_store_meta_get(s, txn, NBX_META_KILL_GENERATION, &v, e);
    if (rc == NBX_ENOTFOUND)
        return NBX_OK;
    if (rc == NBX_OK && nbx_count_decode(v.mv_data, v.mv_size, gen) != NBX_OK)
        return nbx_err_set(e, NBX_ECORRUPT, "%s: unreadable kill generation", s->path);
    return rc;
}

static int bump_generation(nbx_store *s, MDB_txn *txn, nbx_err *e)
{
    uint64_t gen;
    int rc = read_generation(s, txn, &gen, e);
    if (rc)
        return rc;
    uint8_t buf[NBX_COUNT_VALUE_SIZE];
    size_t n = nbx_count_encode(gen + 1, buf);
    return nbx_store_meta_put(s, txn, NBX_META_KILL_GENERATION, buf, n, e);
}

int nbx_kills_write(nbx_store *s, MDB_txn *txn, const nbx_kill_change *c, nbx_buf *scratch,
                    nbx_err *e)
{
    int rc = check_change(c, e);
    if (rc)
        return rc;
    if (!s->has_kills)
        return nbx_err_set(e, NBX_EREADONLY,
                           "%s: store schema %u has no kill switches: upgrade it with `nbx store "
                           "upgrade --store %s`",
                           s->path, s->schema, s->path);
    char key[NBX_KILL_KEY_MAX];
    MDB_val k = {nbx_kill_key(key, c->kind, c->name), key}, v;
    const char *what = nbx_kill_kind_name(c->kind);
    if (c->killed) {
        nbx_buf_reset(scratch);
        if (nbx_kill_encode(c, scratch) != NBX_OK)
            return nbx_err_set(e, NBX_ENOMEM, "out of memory");
        v = (MDB_val){scratch->len, scratch->data};
        rc = mdb_put(txn, s->kills, &k, &v, 0);
    } else {
        rc = mdb_del(txn, s->kills, &k, NULL);
        if (rc == MDB_NOTFOUND)
            return nbx_err_set(e, NBX_ENOTFOUND, "field '%s': '%.*s' is not killed", what,
                               (int)c->name.len, c->name.ptr);
    }
    if (rc)
        return nbx_err_mdb(e, rc, "writing a kill");
    uint64_t seq = 0;
    if ((rc = next_log_seq(s, txn, &seq, e)) != NBX_OK)
        return rc;
    uint8_t lkey[NBX_KILL_LOG_KEY_SIZE];
    nbx_kill_log_key(lkey, seq);
    nbx_buf_reset(scratch);
    if (nbx_kill_log_encode(c, scratch) != NBX_OK)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    k = (MDB_val){sizeof lkey, lkey};
    v = (MDB_val){scratch->len, scratch->data};
    rc = mdb_put(txn, s->kill_log, &k, &v, MDB_APPEND);
    if (rc)
        return nbx_err_mdb(e, rc, "writing the kill history");
    return bump_generation(s, txn, e);
}

/* DEPLOYMENT.ARM, written in buf; empty if the two do not fit (names
 * longer than a deployment's and an arm's can be). */
static nbx_sv join_arm(nbx_sv deployment, nbx_sv arm, char buf[NBX_KILL_NAME_MAX])
{
    if (deployment.len + 1 + arm.len > NBX_KILL_NAME_MAX)
        return (nbx_sv){buf, 0};
    memcpy(buf, deployment.ptr, deployment.len);
    buf[deployment.len] = '.';
    memcpy(buf + deployment.len + 1, arm.ptr, arm.len);
    return (nbx_sv){buf, deployment.len + 1 + arm.len};
}

/* The names of the kills that stop a deployment's arm: DEPLOYMENT.ARM
 * (joined in buf), and ARM alone, the arm in every deployment, for a name
 * without '.' (with one, a kill's name is read as DEPLOYMENT.ARM). The one
 * place that says so: the decision's check (nbx_arm_killed) and the abort's
 * (nbx_kills_arm_killed_in) both ask here. Returns how many, 0 to 2. */
static size_t arm_kill_names(nbx_sv deployment, nbx_sv arm, char buf[NBX_KILL_NAME_MAX],
                             nbx_sv names[2])
{
    size_t n = 0;
    if (!memchr(arm.ptr, '.', arm.len))
        names[n++] = arm;
    nbx_sv joined = join_arm(deployment, arm, buf);
    if (joined.len)
        names[n++] = joined;
    return n;
}

bool nbx_kills_arm_killed_in(nbx_store *s, MDB_txn *txn, nbx_sv deployment, nbx_sv arm)
{
    char buf[NBX_KILL_NAME_MAX], key[NBX_KILL_KEY_MAX];
    nbx_sv names[2];
    size_t n = arm_kill_names(deployment, arm, buf, names);
    for (size_t i = 0; i < n; i++) {
        MDB_val k = {nbx_kill_key(key, NBX_KILL_ARM, names[i]), key}, v;
        if (mdb_get(txn, s->kills, &k, &v) == 0)
            return true;
    }
    return false;
}

int nbx_kills_abort_arm(nbx_store *s, MDB_txn *txn, nbx_sv deployment, nbx_sv arm,
                        const char *reason, int64_t now_ms, nbx_buf *scratch, nbx_err *e)
{
    char buf[NBX_KILL_NAME_MAX];
    nbx_sv name = join_arm(deployment, arm, buf);
    if (name.len == 0)
        return nbx_err_set(e, NBX_EINVAL, "field 'arm': names too long");
    size_t rlen = strlen(reason);
    if (rlen > NBX_KILL_REASON_MAX) { /* cut, never refused: at a character's start */
        rlen = NBX_KILL_REASON_MAX;
        while (rlen > 0 && ((unsigned char)reason[rlen] & 0xc0) == 0x80)
            rlen--;
    }
    nbx_kill_change c = {
        .kind = NBX_KILL_ARM,
        .killed = true,
        .name = name,
        .reason = {reason, rlen}, /* the rule and its figures */
        .by = NBX_SV("abort"),
        .at_ms = now_ms,
    };
    return nbx_kills_write(s, txn, &c, scratch, e);
}

static int change_public(nbx_store *s, int kind, const char *name, const char *reason,
                         const char *by, bool killed, const char *fn)
{
    if (!s || !name)
        return nbx_fail(s, NBX_EINVAL, "%s: NULL argument", fn);
    if (s->flags & NBX_STORE_READONLY)
        return nbx_fail(s, NBX_EREADONLY, "%s: store opened read-only", s->path);
    nbx_err e = {0};
    nbx_kill_change c = {
        .kind = kind >= NBX_KILL_OFFER && kind <= NBX_KILL_POLICY ? (uint8_t)kind : 0,
        .killed = killed,
        .name = nbx_sv_of(name),
        .reason = reason ? nbx_sv_of(reason) : (nbx_sv){"", 0},
        .by = nbx_sv_of(by ? by : "api"),
        .at_ms = nbx_time_now(),
    };
    if (check_change(&c, &e) != NBX_OK)
        return nbx_publish(s, &e);
    MDB_txn *txn;
    nbx_buf scratch = {0};
    int rc = nbx_store_write_begin(s, &txn, &e);
    if (rc)
        return nbx_publish(s, &e);
    rc = nbx_kills_write(s, txn, &c, &scratch, &e);
    if (rc == NBX_OK)
        rc = nbx_store_commit(s, txn, &e);
    else
        mdb_txn_abort(txn);
    nbx_buf_free(&scratch);
    return rc ? nbx_publish(s, &e) : NBX_OK;
}

NBX_API int nbx_kill(nbx_store *s, int kind, const char *name, const char *reason, const char *by)
{
    if (!reason && s && name)
        return nbx_fail(s, NBX_EINVAL, "field 'reason': a kill needs a reason");
    return change_public(s, kind, name, reason, by, true, "nbx_kill");
}

NBX_API int nbx_unkill(nbx_store *s, int kind, const char *name, const char *reason, const char *by)
{
    return change_public(s, kind, name, reason, by, false, "nbx_unkill");
}

/* ========================================================================
 * Reading: nbx_kills_read
 * ======================================================================== */

/* A NUL-terminated copy of v in buf (cap bytes). */
static const char *cstr(char *buf, size_t cap, nbx_sv v)
{
    size_t n = v.len < cap ? v.len : cap - 1;
    memcpy(buf, v.ptr, n);
    buf[n] = '\0';
    return buf;
}

static int report(nbx_kill_fn fn, void *ud, const nbx_kill_change *c, uint64_t seq, bool *stop)
{
    char name[NBX_KILL_NAME_MAX + 1], reason[NBX_KILL_REASON_MAX + 1], by[NBX_KILL_BY_MAX + 1];
    nbx_kill_info k = {
        .kind = c->kind,
        .name = cstr(name, sizeof name, c->name),
        .reason = cstr(reason, sizeof reason, c->reason),
        .by = cstr(by, sizeof by, c->by),
        .at_ms = c->at_ms,
        .killed = c->killed,
        .seq = seq,
    };
    *stop = fn(ud, &k) != 0;
    return NBX_OK;
}

static int read_db(nbx_store *s, MDB_txn *txn, bool history, nbx_kill_fn fn, void *ud, nbx_err *e)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, history ? s->kill_log : s->kills, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "reading kills");
    MDB_val k, v;
    bool stop = false;
    int mrc;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0 && !stop;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        nbx_kill_change c = {.killed = true};
        uint64_t seq = 0;
        bool ok;
        if (history) {
            seq = nbx_kill_log_seq(k.mv_data, k.mv_size);
            ok = seq && nbx_kill_log_decode(v.mv_data, v.mv_size, &c) == NBX_OK;
        } else {
            ok = nbx_kill_key_parse(k.mv_data, k.mv_size, &c.kind, &c.name) &&
                 nbx_kill_decode(v.mv_data, v.mv_size, &c) == NBX_OK;
        }
        if (!ok) {
            rc = nbx_err_set(e, NBX_ECORRUPT, "%s: a damaged %s record", s->path,
                             history ? "kill history" : "kill");
            break;
        }
        report(fn, ud, &c, seq, &stop);
    }
    mdb_cursor_close(cur);
    if (rc == NBX_OK && mrc != 0 && mrc != MDB_NOTFOUND)
        rc = nbx_err_mdb(e, mrc, "reading kills");
    return rc;
}

NBX_API int nbx_kills_read(nbx_store *s, unsigned flags, nbx_kill_fn fn, void *ud)
{
    if (!s || !fn)
        return nbx_fail(s, NBX_EINVAL, "nbx_kills_read: NULL argument");
    if (flags & ~NBX_KILLS_HISTORY)
        return nbx_fail(s, NBX_EINVAL, "nbx_kills_read: unknown flags 0x%x", flags);
    if (!s->has_kills)
        return NBX_OK;
    nbx_err e = {0};
    MDB_txn *txn;
    int rc = nbx_store_read_begin(s, &txn, &e);
    if (rc)
        return nbx_publish(s, &e);
    rc = read_db(s, txn, flags & NBX_KILLS_HISTORY, fn, ud, &e);
    mdb_txn_abort(txn);
    return rc ? nbx_publish(s, &e) : NBX_OK;
}

/* ========================================================================
 * The kill set a decision reads
 * ======================================================================== */

static void entries_free(nbx_kills *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->entries[i].name);
        free(k->entries[i].reason);
    }
    k->n = 0;
    memset(k->n_kind, 0, sizeof k->n_kind);
}

void nbx_kills_free(nbx_kills *k)
{
    if (!k)
        return;
    entries_free(k);
    free(k->entries);
    memset(k, 0, sizeof *k);
}

static char *dup_sv(nbx_sv v)
{
    char *p = malloc(v.len + 1);
    if (p) {
        memcpy(p, v.ptr, v.len);
        p[v.len] = '\0';
    }
    return p;
}

/* The whole set again, in key order (kind, then name bytewise): lookups
 * search it in that order. */
static int load_set(nbx_kills *k, nbx_store *s, MDB_txn *txn, nbx_err *e)
{
    entries_free(k);
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->kills, &cur);
    if (rc)
        return nbx_err_mdb(e, rc, "reading kills");
    MDB_val key, v;
    int mrc;
    for (mrc = mdb_cursor_get(cur, &key, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(cur, &key, &v, MDB_NEXT)) {
        nbx_kill_change c;
        if (!nbx_kill_key_parse(key.mv_data, key.mv_size, &c.kind, &c.name) ||
            nbx_kill_decode(v.mv_data, v.mv_size, &c) != NBX_OK) {
            rc = nbx_err_set(e, NBX_ECORRUPT, "%s: a damaged kill record", s->path);
            break;
        }
        if (k->n == k->cap) {
            size_t cap = k->cap ? 2 * k->cap : 8;
            nbx_kill_entry *more = realloc(k->entries, cap * sizeof *more);
            if (!more) {
                rc = nbx_err_set(e, NBX_ENOMEM, "out of memory reading kills");
                break;
            }
            k->entries = more;
            k->cap = cap;
        }
        nbx_kill_entry *en = &k->entries[k->n];
        en->kind = c.kind;
        en->name_len = c.name.len;
        en->name = dup_sv(c.name);
        en->reason = dup_sv(c.reason);
        if (!en->name || !en->reason) {
            free(en->name);
            free(en->reason);
            rc = nbx_err_set(e, NBX_ENOMEM, "out of memory reading kills");
            break;
        }
        k->n++;
        k->n_kind[c.kind]++;
    }
    mdb_cursor_close(cur);
    if (rc == NBX_OK && mrc != MDB_NOTFOUND)
        rc = nbx_err_mdb(e, mrc, "reading kills");
    if (rc)
        entries_free(k);
    return rc;
}

int nbx_kills_refresh(nbx_kills *k, nbx_store *s, MDB_txn *txn, nbx_err *e)
{
    if (!s || !txn || !s->has_kills)
        return NBX_OK;
    size_t id = mdb_txn_id(txn);
    if (k->checked && k->txn_id == id)
        return NBX_OK;
    uint64_t gen;
    int rc = read_generation(s, txn, &gen, e);
    if (rc)
        return rc;
    if (!k->checked || gen != k->generation) {
        if ((rc = load_set(k, s, txn, e)) != NBX_OK)
            return rc;
        k->generation = gen;
        k->version++;
    }
    k->checked = true;
    k->txn_id = id;
    return NBX_OK;
}

static int entry_cmp(uint8_t kind, nbx_sv name, const nbx_kill_entry *en)
{
    if (kind != en->kind)
        return kind < en->kind ? -1 : 1;
    size_t n = name.len < en->name_len ? name.len : en->name_len;
    int c = memcmp(name.ptr, en->name, n);
    if (c)
        return c;
    return name.len < en->name_len ? -1 : name.len > en->name_len;
}

const nbx_kill_entry *nbx_kills_find(const nbx_kills *k, uint8_t kind, nbx_sv name)
{
    if (!k || kind > NBX_KILL_POLICY || k->n_kind[kind] == 0)
        return NULL;
    size_t lo = 0, hi = k->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = entry_cmp(kind, name, &k->entries[mid]);
        if (c == 0)
            return &k->entries[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

bool nbx_offer_killed(const nbx_kills *k, nbx_sv offer)
{
    return nbx_kills_find(k, NBX_KILL_OFFER, offer) != NULL;
}

bool nbx_arm_killed(const nbx_kills *k, nbx_sv deployment, nbx_sv arm)
{
    if (!k || k->n_kind[NBX_KILL_ARM] == 0)
        return false;
    char buf[NBX_KILL_NAME_MAX];
    nbx_sv names[2];
    size_t n = arm_kill_names(deployment, arm, buf, names);
    for (size_t i = 0; i < n; i++)
        if (nbx_kills_find(k, NBX_KILL_ARM, names[i]))
            return true;
    return false;
}

bool nbx_policy_killed(const nbx_kills *k, nbx_sv version_hex)
{
    return nbx_kills_find(k, NBX_KILL_POLICY, version_hex) != NULL;
}
