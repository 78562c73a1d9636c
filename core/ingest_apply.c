/*
 * ingest_apply.c: pass 2 of an import (ingest.c): a preparer thread reads
 * the spool back a batch at a time (profiles in file order, events merged
 * from the sorted runs customer by customer) and encodes what does not
 * depend on the store; the calling thread writes each batch in one
 * transaction, in key order, events through the effects (effects.c).
 */
#include "ingest_int.h"

#include <errno.h>
#include <unistd.h>

/* ========================================================================
 * Pass 2: apply
 * ======================================================================== */

/* A value encoded by the preparer: offset and length in batch->vals. */
typedef struct val_ref {
    size_t off;
    size_t len;
} val_ref;

enum { BATCH_FREE, BATCH_FULL };

typedef struct batch {
    int state;
    int status;      /* preparer's error, or NBX_DONE after the last batch */
    nbx_err err;     /* its message */
    uint32_t n;      /* records */
    nbx_buf bytes;   /* spooled records, copied */
    size_t *rec_off; /* record i at bytes.data + rec_off[i] */
    uint64_t *line;  /* record i's line in the file */
    uint64_t end_offset;
    int64_t now_ms;
    nbx_arena arena;
    nbx_buf vals; /* values encoded ahead */
    /* What one transaction takes whole, in key order: profiles the records
     * of one id (index into by_id), events of one customer (index into w);
     * where each unit starts, then n. */
    uint32_t *units;
    uint32_t n_units;
    /* profiles */
    nbx_profile *patch;
    kref *by_id;
    val_ref *fresh; /* per record: the group's value as a new profile (first of group) */
    int *fresh_rc;
    /* events, in (customer, line) order */
    nbx_event *ev;    /* strings point into bytes */
    nbx_fx_event *fx; /* the same, as the effects take them: one customer's
                         in file order, customers in key order, each with
                         its record encoded (the writer walks them in
                         sequence instead of jumping about the batch) */
    nbx_buf wbytes;   /* their keys, values and offer ids, in the same order */
    size_t cap;       /* records the arrays above hold */
} batch;

/* One sorted run of the spool, read through a buffer. */
typedef struct run_reader {
    uint64_t pos, end; /* spool offsets still to read */
    uint64_t left;     /* records not yet taken */
    char *buf;
    size_t cap, len, at; /* buffer size, bytes in it, the current entry's offset */
    /* the current entry */
    uint64_t line;
    const char *rec;
    uint32_t rec_len;
    kref key; /* its customer */
} run_reader;

typedef struct applier {
    importer *im;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    batch batches[2];
    bool abort;
    /* preparer's spool reading: profiles */
    nbx_buf frame;
    size_t frame_pos;
    uint32_t frame_left;
    frame_header hdr;
    /* events: a merge of the sorted runs, a heap of readers by (customer, line) */
    run_reader *readers;
    run_reader **heap;
    size_t n_heap;
} applier;

/* Merge budget for the run readers' buffers, and the least each gets. */
#define MERGE_BYTES ((size_t)64 << 20)
#define READER_MIN ((size_t)64 << 10)

static void batch_free(batch *b)
{
    nbx_buf_free(&b->bytes);
    nbx_buf_free(&b->vals);
    nbx_arena_free(&b->arena);
    free(b->rec_off);
    free(b->line);
    free(b->patch);
    free(b->by_id);
    free(b->fresh);
    free(b->fresh_rc);
    free(b->ev);
    free(b->fx);
    nbx_buf_free(&b->wbytes);
    free(b->units);
}

static int batch_reserve(batch *b, nbx_import_kind kind, size_t n)
{
    if (b->cap >= n)
        return NBX_OK;
    bool ok = GROW(b->rec_off, n) && GROW(b->line, n) && GROW(b->units, n + 1);
    if (ok && kind == NBX_IMPORT_PROFILES)
        ok = GROW(b->patch, n) && GROW(b->by_id, n) && GROW(b->fresh, n) && GROW(b->fresh_rc, n);
    if (ok && kind == NBX_IMPORT_EVENTS)
        ok = GROW(b->ev, n) && GROW(b->fx, n);
    if (!ok)
        return NBX_ENOMEM;
    b->cap = n;
    return NBX_OK;
}

/* Next spooled record, copied into b->bytes. Returns 1, 0 at the end of the
 * spool, or an error. */
static int next_record(applier *ap, batch *b, int fd)
{
    if (ap->frame_left == 0) {
        ssize_t n = nbx_ingest_read_full(fd, &ap->hdr, sizeof ap->hdr);
        if (n == 0)
            return 0;
        if (n != (ssize_t)sizeof ap->hdr)
            return nbx_err_set(&b->err, NBX_EIO, "the import spool is truncated");
        nbx_buf_reset(&ap->frame);
        if (nbx_buf_reserve(&ap->frame, ap->hdr.bytes) != NBX_OK)
            return nbx_err_set(&b->err, NBX_ENOMEM, "out of memory");
        if (nbx_ingest_read_full(fd, ap->frame.data, ap->hdr.bytes) != (ssize_t)ap->hdr.bytes)
            return nbx_err_set(&b->err, NBX_EIO, "the import spool is truncated");
        ap->frame.len = ap->hdr.bytes;
        ap->frame_pos = 0;
        ap->frame_left = ap->hdr.records;
    }
    const char *rec = ap->frame.data + ap->frame_pos;
    uint32_t len, line;
    if (ap->frame.len - ap->frame_pos < 8)
        return nbx_err_set(&b->err, NBX_EIO, "the import spool is corrupt");
    memcpy(&len, rec, 4);
    memcpy(&line, rec + 4, 4);
    if (len < 8 || len > ap->frame.len - ap->frame_pos)
        return nbx_err_set(&b->err, NBX_EIO, "the import spool is corrupt");
    b->rec_off[b->n] = b->bytes.len;
    b->line[b->n] = ap->hdr.first_line + line;
    nbx_buf_append(&b->bytes, rec, len);
    b->end_offset = ap->hdr.end_offset;
    b->n++;
    ap->frame_pos += len;
    ap->frame_left--;
    return 1;
}

/* Read more of the reader's run into its buffer, keeping the unread bytes. */
static int reader_fill(run_reader *r, int fd, nbx_err *e)
{
    size_t have = r->len - r->at;
    memmove(r->buf, r->buf + r->at, have);
    r->len = have;
    r->at = 0;
    size_t want = r->cap - have;
    if (want > r->end - r->pos)
        want = (size_t)(r->end - r->pos);
    if (want == 0)
        return nbx_err_set(e, NBX_EIO, "the import spool is truncated");
    ssize_t n;
    do
        n = pread(fd, r->buf + have, want, (off_t)r->pos);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return nbx_err_set(e, NBX_EIO, "the import spool is truncated");
    r->pos += (uint64_t)n;
    r->len += (size_t)n;
    return NBX_OK;
}

/* Make the reader's current entry the next one of its run: 1, 0 at the end
 * of the run, or an error. */
static int reader_next(run_reader *r, int fd, nbx_err *e)
{
    if (r->rec)
        r->at += 8 + r->rec_len;
    r->rec = NULL;
    if (r->left == 0)
        return 0;
    uint32_t len = 0;
    for (;;) {
        size_t have = r->len - r->at;
        if (have >= 12) {
            memcpy(&len, r->buf + r->at + 8, 4);
            if (len < 8 || 8 + (size_t)len > r->cap)
                return nbx_err_set(e, NBX_EIO, "the import spool is corrupt");
            if (have >= 8 + (size_t)len)
                break;
        }
        int rc = reader_fill(r, fd, e);
        if (rc)
            return rc;
    }
    memcpy(&r->line, r->buf + r->at, 8);
    r->rec = r->buf + r->at + 8;
    r->rec_len = len;
    nbx_event ev;
    if (nbx_unspool_event(r->rec, r->rec_len, &ev) != NBX_OK)
        return nbx_err_set(e, NBX_EIO, "the import spool is corrupt");
    r->key = kref_of(ev.customer.ptr, ev.customer.len, 0);
    r->left--;
    return 1;
}

static inline bool reader_before(const run_reader *x, const run_reader *y)
{
    kref a = x->key, b = y->key;
    a.rec = b.rec = 0;
    int c = kref_cmp(&a, &b);
    return c ? c < 0 : x->line < y->line;
}

static void heap_down(applier *ap, size_t i)
{
    run_reader **h = ap->heap;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < ap->n_heap && reader_before(h[l], h[m]))
            m = l;
        if (l + 1 < ap->n_heap && reader_before(h[l + 1], h[m]))
            m = l + 1;
        if (m == i)
            return;
        run_reader *t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Readers for every run, each at its first entry, in a heap. */
static int merge_open(applier *ap, nbx_err *e)
{
    importer *im = ap->im;
    size_t n = im->n_runs;
    ap->readers = calloc(n ? n : 1, sizeof *ap->readers);
    ap->heap = calloc(n ? n : 1, sizeof *ap->heap);
    if (!ap->readers || !ap->heap)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    size_t cap = n ? MERGE_BYTES / n : MERGE_BYTES;
    if (cap < READER_MIN)
        cap = READER_MIN;
    for (size_t i = 0; i < n; i++) {
        run_reader *r = &ap->readers[i];
        r->pos = im->runs[i].offset;
        r->end = im->runs[i].offset + im->runs[i].bytes;
        r->left = im->runs[i].records;
        r->cap = cap < r->end - r->pos ? cap : (size_t)(r->end - r->pos);
        if (r->cap < READER_MIN)
            r->cap = READER_MIN;
        if (!(r->buf = malloc(r->cap)))
            return nbx_err_set(e, NBX_ENOMEM, "out of memory");
        int rc = reader_next(r, im->spool_fd, e);
        if (rc < 0)
            return rc;
        if (rc == 1)
            ap->heap[ap->n_heap++] = r;
    }
    for (size_t i = ap->n_heap; i-- > 0;)
        heap_down(ap, i);
    return NBX_OK;
}

static void merge_close(applier *ap)
{
    for (size_t i = 0; ap->readers && i < ap->im->n_runs; i++)
        free(ap->readers[i].buf);
    free(ap->readers);
    free(ap->heap);
}

/* The next event in (customer, line) order, copied into b->bytes: 1, 0 when
 * every run is taken, or an error. */
static int next_event(applier *ap, batch *b)
{
    if (ap->n_heap == 0)
        return 0;
    run_reader *r = ap->heap[0];
    b->rec_off[b->n] = b->bytes.len;
    b->line[b->n] = r->line;
    nbx_buf_append(&b->bytes, r->rec, r->rec_len);
    b->n++;
    int rc = reader_next(r, ap->im->spool_fd, &b->err);
    if (rc < 0)
        return rc;
    if (rc == 0)
        ap->heap[0] = ap->heap[--ap->n_heap];
    heap_down(ap, 0);
    return 1;
}

static inline uint32_t record_len(const batch *b, uint32_t i)
{
    uint32_t len;
    memcpy(&len, b->bytes.data + b->rec_off[i], sizeof len);
    return len;
}

/* The patches of one id (by_id[from, to)) merged in file order over base
 * (NULL: a new profile), as nbx_profile_put() line by line would. *dated:
 * some patch gave updated_at. */
static int merge_group(const batch *b, uint32_t from, uint32_t to, const nbx_profile *base,
                       nbx_profile *out, bool *dated, nbx_arena *a, nbx_err *e)
{
    if (from >= to) /* groups are never empty */
        return nbx_err_set(e, NBX_EINVAL, "internal error: empty group");
    /* two results in turn: a merge never reads and writes one struct */
    nbx_profile step[2];
    int k = 0;
    *dated = false;
    for (uint32_t j = from; j < to; j++, k ^= 1) {
        const nbx_profile *patch = &b->patch[b->by_id[j].rec];
        int rc = nbx_profile_patch(base, patch, &step[k], a, e);
        if (rc)
            return rc;
        *dated |= (patch->fields & NBX_PF_UPDATED_AT) != 0;
        base = &step[k];
    }
    *out = *base;
    return NBX_OK;
}

static uint32_t group_end(const kref *k, uint32_t from, uint32_t n)
{
    uint32_t to = from + 1;
    while (to < n && kref_same(&k[from], &k[to]))
        to++;
    return to;
}

/* Profiles: decode, sort by id, and for each id encode the merge of its
 * patches over nothing: what a new profile gets, the common case. */
static int prepare_profiles(batch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        if (nbx_unspool_profile(b->bytes.data + b->rec_off[i], record_len(b, i), &b->patch[i],
                                &b->arena) != NBX_OK)
            return nbx_err_set(&b->err, NBX_EIO, "the import spool is corrupt");
        b->by_id[i] = kref_of(b->patch[i].id.ptr, b->patch[i].id.len, i);
    }
    qsort(b->by_id, b->n, sizeof *b->by_id, kref_cmp);
    b->n_units = 0;
    for (uint32_t from = 0, to; from < b->n; from = to) {
        to = group_end(b->by_id, from, b->n);
        b->units[b->n_units++] = from;
        nbx_profile merged;
        nbx_err e = {0};
        bool dated;
        b->fresh_rc[from] = merge_group(b, from, to, NULL, &merged, &dated, &b->arena, &e);
        if (b->fresh_rc[from] != NBX_OK)
            continue; /* the writer redoes it and reports, if it needs it */
        if (!dated)
            merged.updated_at = b->now_ms;
        nbx_profile_settle_base(&merged); /* a new customer has no purchases recorded */
        size_t off = b->vals.len;
        if (nbx_profile_encode(&merged, &b->vals) != NBX_OK)
            return nbx_err_set(&b->err, NBX_ENOMEM, "out of memory");
        b->fresh[from] = (val_ref){off, b->vals.len - off};
    }
    b->units[b->n_units] = b->n;
    return b->vals.oom ? nbx_err_set(&b->err, NBX_ENOMEM, "out of memory") : NBX_OK;
}

/* Events arrive from the merge in (customer, line) order: decode them and
 * lay them out with their keys and values encoded. The writer takes one
 * customer at a time, and everything an event writes but its day's budget
 * lies in that customer's neighbourhood. A customer's records may continue
 * in the next batch. */
static int prepare_events(batch *b)
{
    size_t room = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        nbx_event *ev = &b->ev[i];
        if (nbx_unspool_event(b->bytes.data + b->rec_off[i], record_len(b, i), ev) != NBX_OK)
            return nbx_err_set(&b->err, NBX_EIO, "the import spool is corrupt");
        /* key, the record (at most 36 bytes besides its strings), the offer */
        room += ev->customer.len + 2 + ev->id.len + 36 + 2 * ev->offer.len + ev->placement.len;
    }
    /* reserved once: the views into wbytes stay valid */
    nbx_buf_reset(&b->wbytes);
    if (nbx_buf_reserve(&b->wbytes, room) != NBX_OK)
        return nbx_err_set(&b->err, NBX_ENOMEM, "out of memory");
    b->n_units = 0;
    for (uint32_t j = 0; j < b->n; j++) {
        const nbx_event *ev = &b->ev[j];
        if (j > 0 && nbx_sv_cmp(b->ev[j - 1].customer, ev->customer) > 0)
            return nbx_err_set(&b->err, NBX_EIO, "the import spool is out of order");
        if (j == 0 || !nbx_sv_eq(b->ev[j - 1].customer, ev->customer))
            b->units[b->n_units++] = j;
        nbx_fx_event *r = &b->fx[j];
        char *key = b->wbytes.data + b->wbytes.len;
        size_t klen = nbx_event_key(key, ev->customer, ev->id);
        b->wbytes.len += klen;
        char *val = b->wbytes.data + b->wbytes.len;
        nbx_event_record_encode(ev, &b->wbytes);
        size_t vlen = (size_t)(b->wbytes.data + b->wbytes.len - val);
        char *offer = b->wbytes.data + b->wbytes.len;
        nbx_buf_append(&b->wbytes, ev->offer.ptr, ev->offer.len);
        if (b->wbytes.len > room)
            return nbx_err_set(&b->err, NBX_EINVAL, "internal error: event records overran");
        r->ev = *ev;
        r->ev.customer = (nbx_sv){key, ev->customer.len};
        r->ev.id = (nbx_sv){key + ev->customer.len + 2, ev->id.len};
        r->ev.offer = (nbx_sv){offer, ev->offer.len};
        r->ev.placement = (nbx_sv){"", 0};
        r->key = (MDB_val){klen, key};
        r->val = (MDB_val){vlen, val};
        r->outcome = 0;
    }
    b->units[b->n_units] = b->n;
    return NBX_OK;
}

/* Read the next batch from the spool and prepare it. NBX_DONE when the
 * spool is exhausted. */
static int fill_batch(applier *ap, batch *b)
{
    importer *im = ap->im;
    b->n = 0;
    nbx_buf_reset(&b->bytes);
    nbx_buf_reset(&b->vals);
    nbx_arena_reset(&b->arena);
    if (batch_reserve(b, im->kind, im->batch_size) != NBX_OK)
        return nbx_err_set(&b->err, NBX_ENOMEM, "out of memory");
    while (b->n < im->batch_size) {
        int rc =
            im->kind == NBX_IMPORT_EVENTS ? next_event(ap, b) : next_record(ap, b, im->spool_fd);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
    }
    if (b->bytes.oom)
        return nbx_err_set(&b->err, NBX_ENOMEM, "out of memory");
    if (b->n == 0)
        return NBX_DONE;
    b->now_ms = nbx_time_now();
    return im->kind == NBX_IMPORT_PROFILES ? prepare_profiles(b) : prepare_events(b);
}

static void *preparer_main(void *arg)
{
    applier *ap = arg;
    for (uint64_t k = 0;; k++) {
        batch *b = &ap->batches[k % 2];
        pthread_mutex_lock(&ap->mu);
        while (b->state != BATCH_FREE && !ap->abort)
            pthread_cond_wait(&ap->cond, &ap->mu);
        bool abort = ap->abort;
        pthread_mutex_unlock(&ap->mu);
        if (abort)
            return NULL;
        int rc = fill_batch(ap, b);
        pthread_mutex_lock(&ap->mu);
        b->status = rc;
        b->state = BATCH_FULL;
        pthread_cond_broadcast(&ap->cond);
        pthread_mutex_unlock(&ap->mu);
        if (rc != NBX_OK)
            return NULL;
    }
}

/* ------------------------------------------------------------------------
 * Writers: one transaction per batch, keys in order
 * ------------------------------------------------------------------------ */

typedef struct writer {
    importer *im;
    MDB_txn *txn;
    nbx_arena arena;
    nbx_buf scratch;
    uint64_t fail_line; /* line of the record that failed, 0 if none */
    uint32_t units_max; /* units per transaction once one was too big; 0: any */
    nbx_effects fx;     /* events */
} writer;

static int mdb_fail(writer *w, int rc, const char *what, uint64_t line)
{
    w->fail_line = line;
    return nbx_err_mdb(&w->im->err, rc, what);
}

/* The ids [u0, u1) of the batch, each its patches merged over the stored
 * profile (or the one prepared as new), in the open transaction. */
static int write_profiles(writer *w, const batch *b, uint32_t u0, uint32_t u1)
{
    nbx_store *s = w->im->store;
    nbx_err *e = &w->im->err;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(w->txn, s->profiles, &cur);
    if (rc)
        return mdb_fail(w, rc, "writing profiles", 0);
    /* Ids above every stored one (a first import of a sorted file) are
     * appended: no search, and pages filled instead of split in half. */
    MDB_val k, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    bool append = rc == MDB_NOTFOUND;
    if (rc == 0) {
        const kref *id = &b->by_id[b->units[u0]];
        nbx_sv last = {k.mv_data, k.mv_size}, first = {id->key, id->len};
        append = nbx_sv_cmp(first, last) > 0;
    } else if (rc != MDB_NOTFOUND) {
        mdb_cursor_close(cur);
        return mdb_fail(w, rc, "writing profiles", 0);
    }
    nbx_suppressions erased;
    rc = nbx_suppressions_begin(s, w->txn, &erased, e);
    for (uint32_t u = u0; rc == NBX_OK && u < u1; u++) {
        uint32_t from = b->units[u], to = b->units[u + 1];
        const kref *id = &b->by_id[from];
        uint64_t line = b->line[id->rec];
        int gone = nbx_suppressed(s, w->txn, &erased, (nbx_sv){id->key, id->len}, e);
        if (gone) { /* an erased customer's lines are refused, or an error */
            if (gone < 0) {
                rc = gone;
                w->fail_line = line;
            } else
                w->im->stats.suppressed += to - from;
            continue;
        }
        k = (MDB_val){id->len, (void *)id->key};
        int found = append ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_SET_KEY);
        if (found != 0 && found != MDB_NOTFOUND) {
            rc = mdb_fail(w, found, "reading a profile", line);
            break;
        }
        nbx_arena_reset(&w->arena);
        if (found == MDB_NOTFOUND && b->fresh_rc[from] == NBX_OK) {
            MDB_val val = {b->fresh[from].len, b->vals.data + b->fresh[from].off};
            int mrc = mdb_cursor_put(cur, &k, &val, append ? MDB_APPEND : 0);
            if (mrc)
                rc = mdb_fail(w, mrc, "writing a profile", line);
        } else {
            nbx_profile base = {.id = {id->key, id->len}}, merged;
            bool dated = false;
            if (found == 0)
                rc = nbx_profile_decode(v.mv_data, v.mv_size, &base, &w->arena, e);
            if (rc == NBX_OK)
                rc = merge_group(b, from, to, found == 0 ? &base : NULL, &merged, &dated, &w->arena,
                                 e);
            if (rc == NBX_OK)
                rc = nbx_profile_store(s, w->txn, cur, found == 0 ? &base : NULL, &v, &merged,
                                       dated, b->now_ms, append, &w->scratch, e);
            if (rc)
                w->fail_line = line;
        }
        if (rc == NBX_OK)
            w->im->stats.applied += to - from;
    }
    mdb_cursor_close(cur);
    return rc;
}

/* ------------------------------------------------------------------------
 * Events: one customer at a time, through the effects of events
 * ------------------------------------------------------------------------ */

/* Customers [u0, u1) of the batch in the open transaction, with their
 * budget counts and the event count: every committed transaction holds
 * whole events. */
static int write_events(writer *w, batch *b, uint32_t u0, uint32_t u1)
{
    importer *im = w->im;
    int rc = nbx_effects_begin(&w->fx, im->store, w->txn, b->now_ms, &im->err);
    for (uint32_t u = u0; rc == NBX_OK && u < u1; u++)
        rc = nbx_effects_customer(&w->fx, &b->fx[b->units[u]], b->units[u + 1] - b->units[u],
                                  &im->err);
    if (rc == NBX_OK)
        rc = nbx_effects_end(&w->fx, &im->err);
    else
        nbx_effects_cancel(&w->fx);
    if (rc && w->fx.failed)
        w->fail_line = b->line[w->fx.failed - b->fx];
    if (rc == NBX_OK) {
        im->stats.applied += w->fx.applied;
        im->stats.suppressed += w->fx.suppressed;
        im->stats.duplicates += (b->units[u1] - b->units[u0]) - w->fx.applied - w->fx.suppressed;
    }
    return rc;
}

/* Units [u0, u1) of the batch in one transaction. On failure nothing of it
 * is in the store, nor in the counts. */
static int write_txn(writer *w, batch *b, uint32_t u0, uint32_t u1)
{
    importer *im = w->im;
    uint64_t applied = im->stats.applied, duplicates = im->stats.duplicates,
             suppressed = im->stats.suppressed;
    w->fail_line = 0;
    int rc = nbx_store_write_begin(im->store, &w->txn, &im->err);
    if (rc)
        return rc;
    rc = im->kind == NBX_IMPORT_EVENTS ? write_events(w, b, u0, u1) : write_profiles(w, b, u0, u1);
    if (rc == NBX_OK)
        rc = nbx_store_commit(im->store, w->txn, &im->err);
    else
        mdb_txn_abort(w->txn);
    w->txn = NULL;
    if (rc) {
        im->stats.applied = applied;
        im->stats.duplicates = duplicates;
        im->stats.suppressed = suppressed;
        /* the budgets, the count or the commit: name the transaction's first record */
        if (w->fail_line == 0)
            w->fail_line = im->kind == NBX_IMPORT_EVENTS ? b->line[b->units[u0]]
                                                         : b->line[b->by_id[b->units[u0]].rec];
    }
    return rc;
}

/* A transaction that fails on a store error may just be too big: LMDB's
 * dirty-page list per transaction (MDB_TXN_FULL), or a map too full to hold
 * the new copies of the pages while the old ones are still in use. It is
 * rolled back and its units written as two halves, down to one unit (an id,
 * a customer) per transaction, where the error is reported. After a
 * dirty-page overflow later transactions of the import take at most half as
 * many units. */
static int write_range(writer *w, batch *b, uint32_t u0, uint32_t u1)
{
    int rc = write_txn(w, b, u0, u1);
    if (rc == NBX_OK || (rc != NBX_EFULL && rc != NBX_ESTORE) || u1 - u0 < 2)
        return rc;
    uint32_t half = (u1 - u0) / 2;
    if (rc == NBX_ESTORE && (w->units_max == 0 || half < w->units_max))
        w->units_max = half;
    rc = write_range(w, b, u0, u0 + half);
    if (rc == NBX_OK)
        rc = write_range(w, b, u0 + half, u1);
    return rc;
}

/* The batch in one transaction, or in several of whole units (above). */
static int write_batch(writer *w, batch *b)
{
    int rc = NBX_OK;
    for (uint32_t u = 0, next; rc == NBX_OK && u < b->n_units; u = next) {
        next = w->units_max && b->n_units - u > w->units_max ? u + w->units_max : b->n_units;
        rc = write_range(w, b, u, next);
    }
    return rc;
}

/* A preparer thread reads and prepares batch k + 1 while the calling thread
 * writes batch k. */
int nbx_ingest_apply(importer *im, uint64_t *stopped_at)
{
    applier ap = {.im = im};
    writer w = {.im = im};
    nbx_effects_init(&w.fx, NULL, &w.scratch);
    pthread_mutex_init(&ap.mu, NULL);
    pthread_cond_init(&ap.cond, NULL);
    pthread_t thread;
    int rc = NBX_OK;
    uint64_t taken = 0;
    *stopped_at = 0;
    if (im->kind == NBX_IMPORT_EVENTS && (rc = merge_open(&ap, &im->err)) != NBX_OK)
        goto done;
    if (pthread_create(&thread, NULL, preparer_main, &ap) != 0) {
        rc = nbx_err_set(&im->err, NBX_ENOMEM, "cannot start the import's preparer thread");
        goto done;
    }
    nbx_ingest_pass_begins(im);
    for (uint64_t k = 0;; k++) {
        batch *b = &ap.batches[k % 2];
        pthread_mutex_lock(&ap.mu);
        while (b->state != BATCH_FULL)
            pthread_cond_wait(&ap.cond, &ap.mu);
        pthread_mutex_unlock(&ap.mu);
        if (b->status == NBX_DONE)
            break;
        if (b->status != NBX_OK) {
            im->err = b->err;
            rc = b->status;
            break;
        }
        rc = write_batch(&w, b);
        if (rc) {
            *stopped_at = b->line[0];
            if (w.fail_line)
                nbx_err_prefix(&im->err, "%s:%llu: ", im->name, (unsigned long long)w.fail_line);
            break;
        }
        taken += b->n;
        if (im->kind == NBX_IMPORT_EVENTS) /* customer order: the share of records taken */
            nbx_ingest_progress(
                im, taken,
                (uint64_t)((double)im->in_total * (double)taken / (double)im->spool_records));
        else
            nbx_ingest_progress(im, b->line[b->n - 1], b->end_offset);
        pthread_mutex_lock(&ap.mu);
        b->state = BATCH_FREE;
        pthread_cond_broadcast(&ap.cond);
        pthread_mutex_unlock(&ap.mu);
    }
    pthread_mutex_lock(&ap.mu);
    ap.abort = true;
    pthread_cond_broadcast(&ap.cond);
    pthread_mutex_unlock(&ap.mu);
    pthread_join(thread, NULL);
done:
    batch_free(&ap.batches[0]);
    batch_free(&ap.batches[1]);
    nbx_buf_free(&ap.frame);
    merge_close(&ap);
    nbx_arena_free(&w.arena);
    nbx_buf_free(&w.scratch);
    nbx_effects_free(&w.fx);
    pthread_cond_destroy(&ap.cond);
    pthread_mutex_destroy(&ap.mu);
    return rc;
}
