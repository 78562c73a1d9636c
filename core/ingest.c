/*
 * ingest.c: bulk import of JSONL profiles and events (nbx_import_file).
 *
 * Two passes, so that a bad line anywhere leaves the store untouched:
 *
 * 1. Validation. The calling thread reads the input in chunks of whole lines
 *    (a file or a pipe alike: standard input is read once) and hands them to
 *    parser threads. Each line is parsed with nbx_profile_parse() or
 *    nbx_event_parse() and, if good, appended in a compact binary form to a
 *    spool: an unlinked temporary file in the store directory, gone when the
 *    process is. Chunks are collected in file order, so an error names the
 *    first bad line. Profiles are spooled in file order; events in runs
 *    sorted by (customer, line), RUN_BYTES of records each
 *    (NBX_IMPORT_RUN_BYTES sets another size). The store is not written.
 * 2. Apply. A preparer thread reads the spool back one batch at a time
 *    (decoding a spooled record costs a fraction of parsing its JSON again)
 *    and encodes what does not depend on the store: profiles a batch of
 *    lines in file order, sorted by id; events the next records of a merge
 *    of the runs, so they arrive customer by customer over the whole file.
 *    The calling thread writes each batch in one transaction (or, when that
 *    is too big for LMDB, several of whole ids or customers), in key order:
 *    LMDB inserts in key order touch each page once, updates of one key are
 *    grouped into one read and one write, a batch of profile ids above every
 *    stored one is appended, and successive event batches write successive
 *    ranges of the tree, so each page is written about once per import
 *    whatever the batch size. LMDB commits are atomic, so a crash keeps
 *    every committed transaction and nothing of the one in progress; an
 *    event transaction holds whole events; re-running the file completes it.
 *
 * Grouping changes no result: the records of one key are applied in file
 * order, exactly as nbx_profile_put() or nbx_event_apply() line by line
 * would (tests/test_ingest.c compares the two); events of different
 * customers touch different keys, and budgets are sums. What an event does
 * is effects.c's: ingest hands it one customer's events at a time.
 *
 * Memory is bounded by the chunk, run and batch sizes, never by the file.
 *
 * Events are checked against the writer's clock (nbx_event_check) and, with
 * nbx_import_options.catalog, against a catalog: ingest loads one, so it
 * sits above the catalog in the layers (docs/architecture.md).
 */
#include "nbx_int.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Input bytes per validation chunk: whole lines, so more than NBX_LINE_MAX. */
#define CHUNK_CAP ((size_t)4 << 20)
/* Records per transaction by default. Events are applied in key order over
 * the whole file, so a larger transaction mostly saves commits (fsyncs);
 * memory is about 400 bytes a record, for two batches. */
#define DEFAULT_BATCH_PROFILES 10000
#define DEFAULT_BATCH_EVENTS 100000
#define BATCH_MAX 10000000
#define PROGRESS_EVERY 100000
#define PARSER_THREADS_MAX 8
/* Of a line over NBX_LINE_MAX, the rejects file gets this much. */
#define REJECT_PREFIX 1024

_Static_assert(CHUNK_CAP > NBX_LINE_MAX + 1, "a chunk must hold the longest line");

#define GROW(ptr, n) ((ptr) = realloc((ptr), (n) * sizeof *(ptr)))

NBX_API void nbx_import_options_init(nbx_import_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->batch_size = 0; /* the kind's default */
}

/* ========================================================================
 * Small I/O helpers
 * ======================================================================== */

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read up to n bytes; fewer only at end of input. Returns bytes or -1. */
static ssize_t read_full(int fd, void *p, size_t n)
{
    char *c = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, c + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* An unlinked temporary file in dir: nothing to clean up after a crash. */
static int open_spool(const char *dir, nbx_err *e)
{
#ifdef O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
#endif
    char path[4096];
    snprintf(path, sizeof path, "%s/.nbx-import-XXXXXX", dir);
    int tfd = mkstemp(path);
    if (tfd < 0)
        return nbx_err_errno(e, errno, "cannot create the import spool in", dir), -1;
    unlink(path);
    return tfd;
}

/* ========================================================================
 * Spool records
 *
 * Native byte order (the spool never leaves the process). A record is
 * u32 length (all of it), u32 line within its chunk, then the payload:
 *   profile: u32 fields, id, f64 ltv, f64 churn, i64 updated_at,
 *            i64 first, i64 last, u64 orders, f64 revenue, f64 margin,
 *            u8 r, f, m, segment, i64 rfm as_of,
 *            u16 n, n x (key, u8 type, string | f64 | u8 | nothing),
 *            u16 n, n x (purpose, u8 state), u16 n, n x (key, f64)
 *   event:   u8 type, i64 ts, f64 amount, f64 margin, id, customer, offer,
 *            placement, decision_id
 * where a string is u16 length and bytes. Chunks go to the spool as frames:
 * u64 first line, u64 input offset at the end, u32 records, u32 bytes.
 * ======================================================================== */

/* Writers into room reserved beforehand: records are sized first, then
 * written with plain stores (no bounds check per field). */
typedef struct writer_cursor {
    char *p;
} wcur;

static inline void put_raw(wcur *w, const void *src, size_t n)
{
    if (n) /* empty strings may be NULL views */
        memcpy(w->p, src, n);
    w->p += n;
}
#define PUT(name, type)                                                                            \
    static inline void put_##name(wcur *w, type v)                                                 \
    {                                                                                              \
        put_raw(w, &v, sizeof v);                                                                  \
    }
PUT(u8, uint8_t)
PUT(u16, uint16_t)
PUT(u32, uint32_t)
PUT(u64, uint64_t)
PUT(i64, int64_t)
PUT(f64, double)
#undef PUT

/* Every string spooled is bounded by the parsers (NBX_VALUE_MAX at most). */
static inline void put_sv(wcur *w, nbx_sv s)
{
    put_u16(w, (uint16_t)s.len);
    put_raw(w, s.ptr, s.len);
}

/* Room for a record of size bytes in b; its header written. */
static bool record_begin(nbx_buf *b, size_t size, uint32_t line, wcur *w)
{
    if (nbx_buf_reserve(b, size) != NBX_OK)
        return false;
    w->p = b->data + b->len;
    put_u32(w, (uint32_t)size);
    put_u32(w, line);
    b->len += size;
    return true;
}

typedef struct reader {
    const char *p;
    const char *end;
    bool bad;
} reader;

static inline const char *take(reader *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    const char *at = r->p;
    r->p += n;
    return at;
}
#define GET(r, type)                                                                               \
    static inline type get_##type(reader *r)                                                       \
    {                                                                                              \
        type v = 0;                                                                                \
        const char *at = take(r, sizeof v);                                                        \
        if (at)                                                                                    \
            memcpy(&v, at, sizeof v);                                                              \
        return v;                                                                                  \
    }
GET(r, uint8_t)
GET(r, uint16_t)
GET(r, uint32_t)
GET(r, uint64_t)
GET(r, int64_t)
GET(r, double)
#undef GET

static inline nbx_sv get_sv(reader *r)
{
    nbx_sv s = {"", 0};
    uint16_t n = get_uint16_t(r);
    const char *at = take(r, n);
    if (at) {
        s.ptr = at;
        s.len = n;
    }
    return s;
}

static size_t profile_record_size(const nbx_profile *p)
{
    size_t n = 8 + 4 + 2 + p->id.len + 3 * 8 + 5 * 8 + 4 + 8 + 3 * 2;
    for (uint32_t i = 0; i < p->n_attrs; i++) {
        const nbx_attr *a = &p->attrs[i];
        n += 2 + a->key.len + 1;
        n += a->type == NBX_ATTR_STRING   ? 2 + a->string.len
             : a->type == NBX_ATTR_NUMBER ? 8
             : a->type == NBX_ATTR_BOOL   ? 1
                                          : 0;
    }
    for (uint32_t i = 0; i < p->n_consent; i++)
        n += 2 + p->consent[i].purpose.len + 1;
    for (uint32_t i = 0; i < p->n_propensity; i++)
        n += 2 + p->propensity[i].key.len + 8;
    return n;
}

static void spool_profile(nbx_buf *b, uint32_t line, const nbx_profile *p)
{
    wcur w;
    if (!record_begin(b, profile_record_size(p), line, &w))
        return;
    put_u32(&w, p->fields);
    put_sv(&w, p->id);
    put_f64(&w, p->ltv);
    put_f64(&w, p->churn);
    put_i64(&w, p->updated_at);
    const nbx_rfm *r = &p->rfm;
    put_i64(&w, r->first_purchase);
    put_i64(&w, r->last_purchase);
    put_u64(&w, r->orders);
    put_f64(&w, r->revenue);
    put_f64(&w, r->margin);
    const uint8_t scores[4] = {r->r, r->f, r->m, r->segment};
    put_raw(&w, scores, sizeof scores);
    put_i64(&w, p->rfm_base.as_of);
    put_u16(&w, (uint16_t)p->n_attrs);
    for (uint32_t i = 0; i < p->n_attrs; i++) {
        const nbx_attr *a = &p->attrs[i];
        put_sv(&w, a->key);
        put_u8(&w, a->type);
        if (a->type == NBX_ATTR_STRING)
            put_sv(&w, a->string);
        else if (a->type == NBX_ATTR_NUMBER)
            put_f64(&w, a->number);
        else if (a->type == NBX_ATTR_BOOL)
            put_u8(&w, a->boolean);
    }
    put_u16(&w, (uint16_t)p->n_consent);
    for (uint32_t i = 0; i < p->n_consent; i++) {
        put_sv(&w, p->consent[i].purpose);
        put_u8(&w, p->consent[i].state);
    }
    put_u16(&w, (uint16_t)p->n_propensity);
    for (uint32_t i = 0; i < p->n_propensity; i++) {
        put_sv(&w, p->propensity[i].key);
        put_f64(&w, p->propensity[i].value);
    }
}

/* Strings point into the record, arrays come from a. */
static int unspool_profile(const char *rec, size_t len, nbx_profile *p, nbx_arena *a)
{
    reader r = {rec + 8, rec + len, false};
    memset(p, 0, sizeof *p);
    p->fields = get_uint32_t(&r);
    p->id = get_sv(&r);
    p->ltv = get_double(&r);
    p->churn = get_double(&r);
    p->updated_at = get_int64_t(&r);
    nbx_rfm *f = &p->rfm;
    f->first_purchase = get_int64_t(&r);
    f->last_purchase = get_int64_t(&r);
    f->orders = get_uint64_t(&r);
    f->revenue = get_double(&r);
    f->margin = get_double(&r);
    f->r = get_uint8_t(&r);
    f->f = get_uint8_t(&r);
    f->m = get_uint8_t(&r);
    f->segment = get_uint8_t(&r);
    p->rfm_base.as_of = get_int64_t(&r);
    p->n_attrs = get_uint16_t(&r);
    p->attrs = nbx_arena_alloc(a, (p->n_attrs + 1) * sizeof *p->attrs);
    if (!p->attrs)
        return NBX_ENOMEM;
    for (uint32_t i = 0; i < p->n_attrs && !r.bad; i++) {
        nbx_attr *at = &p->attrs[i];
        memset(at, 0, sizeof *at);
        at->key = get_sv(&r);
        at->type = get_uint8_t(&r);
        if (at->type == NBX_ATTR_STRING)
            at->string = get_sv(&r);
        else if (at->type == NBX_ATTR_NUMBER)
            at->number = get_double(&r);
        else if (at->type == NBX_ATTR_BOOL)
            at->boolean = get_uint8_t(&r) != 0;
    }
    p->n_consent = get_uint16_t(&r);
    p->consent = nbx_arena_alloc(a, (p->n_consent + 1) * sizeof *p->consent);
    if (!p->consent)
        return NBX_ENOMEM;
    for (uint32_t i = 0; i < p->n_consent && !r.bad; i++) {
        p->consent[i].purpose = get_sv(&r);
        p->consent[i].state = get_uint8_t(&r);
    }
    p->n_propensity = get_uint16_t(&r);
    p->propensity = nbx_arena_alloc(a, (p->n_propensity + 1) * sizeof *p->propensity);
    if (!p->propensity)
        return NBX_ENOMEM;
    for (uint32_t i = 0; i < p->n_propensity && !r.bad; i++) {
        p->propensity[i].key = get_sv(&r);
        p->propensity[i].value = get_double(&r);
    }
    return r.bad ? NBX_EIO : NBX_OK;
}

static void spool_event(nbx_buf *b, uint32_t line, const nbx_event *ev)
{
    wcur w;
    size_t size = 8 + 1 + 3 * 8 + 5 * 2 + ev->id.len + ev->customer.len + ev->offer.len +
                  ev->placement.len + ev->decision_id.len;
    if (!record_begin(b, size, line, &w))
        return;
    put_u8(&w, ev->type);
    put_i64(&w, ev->ts_ms);
    put_f64(&w, ev->amount);
    put_f64(&w, ev->margin);
    put_sv(&w, ev->id);
    put_sv(&w, ev->customer);
    put_sv(&w, ev->offer);
    put_sv(&w, ev->placement);
    put_sv(&w, ev->decision_id);
}

static int unspool_event(const char *rec, size_t len, nbx_event *ev)
{
    reader r = {rec + 8, rec + len, false};
    ev->type = get_uint8_t(&r);
    ev->ts_ms = get_int64_t(&r);
    ev->amount = get_double(&r);
    ev->margin = get_double(&r);
    ev->id = get_sv(&r);
    ev->customer = get_sv(&r);
    ev->offer = get_sv(&r);
    ev->placement = get_sv(&r);
    ev->decision_id = get_sv(&r);
    return r.bad ? NBX_EIO : NBX_OK;
}

typedef struct frame_header {
    uint64_t first_line; /* 1-based line number of the chunk's first line */
    uint64_t end_offset; /* input bytes up to the end of the chunk */
    uint32_t records;
    uint32_t bytes;
} frame_header;

/* ========================================================================
 * Sort keys
 * ======================================================================== */

/* A key and the record it came from: sorting by (key, record) keeps file
 * order within one key. head holds the key's first 8 bytes (big-endian,
 * zero-padded), which settle most comparisons without a call to memcmp. */
typedef struct kref {
    const char *key;
    uint32_t len;
    uint32_t rec;
    uint64_t head;
} kref;

static inline kref kref_of(const char *key, size_t len, uint32_t rec)
{
    uint64_t h = 0;
    if (len >= 8) {
        memcpy(&h, key, 8);
        h = __builtin_bswap64(h);
    } else {
        for (size_t i = 0; i < len; i++)
            h |= (uint64_t)(uint8_t)key[i] << (56 - 8 * i);
    }
    return (kref){key, (uint32_t)len, rec, h};
}

/* Bytewise, a prefix first, then by record. Equal heads mean equal first
 * min(len, 8) bytes, the rest of the shorter key's head being zeros. */
static int kref_cmp(const void *a, const void *b)
{
    const kref *x = a, *y = b;
    if (x->head != y->head)
        return x->head < y->head ? -1 : 1;
    uint32_t n = x->len < y->len ? x->len : y->len;
    if (n > 8) {
        int c = memcmp(x->key + 8, y->key + 8, n - 8);
        if (c)
            return c;
    }
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->rec < y->rec ? -1 : x->rec > y->rec;
}

/* Sort a[0, n) as qsort with kref_cmp would, for a's rec ascending (records
 * in file order): a stable radix sort on the heads, 16 bits a pass (passes
 * where every head has the same digit are skipped), then qsort only within
 * runs of equal heads whose keys go on past 8 bytes or differ in length.
 * tmp holds n krefs. */
static int kref_sort(kref *a, kref *tmp, size_t n)
{
    if (n < 2)
        return NBX_OK;
    uint32_t *count = malloc(4 * 65536 * sizeof *count);
    if (!count)
        return NBX_ENOMEM;
    memset(count, 0, 4 * 65536 * sizeof *count);
    for (size_t i = 0; i < n; i++)
        for (int d = 0; d < 4; d++)
            count[d * 65536 + ((a[i].head >> (16 * d)) & 0xffff)]++;
    kref *src = a, *dst = tmp;
    for (int d = 0; d < 4; d++) {
        uint32_t *c = count + d * 65536;
        if (c[(src[0].head >> (16 * d)) & 0xffff] == n)
            continue; /* one digit for all */
        uint32_t sum = 0;
        for (size_t k = 0; k < 65536; k++) {
            uint32_t v = c[k];
            c[k] = sum;
            sum += v;
        }
        for (size_t i = 0; i < n; i++)
            dst[c[(src[i].head >> (16 * d)) & 0xffff]++] = src[i];
        kref *t = src;
        src = dst;
        dst = t;
    }
    free(count);
    if (src != a)
        memcpy(a, src, n * sizeof *a);
    for (size_t from = 0, to; from < n; from = to) {
        bool longer = a[from].len > 8;
        for (to = from + 1; to < n && a[to].head == a[from].head; to++)
            longer |= a[to].len > 8 || a[to].len != a[from].len;
        if (longer && to - from > 1)
            qsort(a + from, to - from, sizeof *a, kref_cmp);
    }
    return NBX_OK;
}

static inline bool kref_same(const kref *x, const kref *y)
{
    return x->head == y->head && x->len == y->len &&
           (x->len <= 8 || memcmp(x->key + 8, y->key + 8, x->len - 8) == 0);
}

/* ========================================================================
 * Pass 1: validation
 * ======================================================================== */

enum { CHUNK_FREE, CHUNK_READY, CHUNK_PARSING, CHUNK_DONE };

typedef struct chunk {
    int state;
    char *data; /* whole lines; CHUNK_CAP bytes */
    size_t len;
    bool overlong;         /* data holds the start of one line over NBX_LINE_MAX */
    uint64_t overlong_len; /* that line's length */
    uint64_t end_offset;
    /* results */
    nbx_buf spool;
    uint32_t records;
    uint32_t lines; /* lines in the chunk, blank ones included */
    uint32_t nonblank;
    nbx_buf rejects; /* u32 line, u32 length, JSON text after {"line":N */
    uint32_t n_rejects;
    int err;
    uint32_t err_line;
    char err_msg[NBX_ERRMSG_MAX];
} chunk;

typedef struct validator {
    nbx_import_kind kind;
    bool keep_going;       /* rejects_path set: record bad lines and go on */
    nbx_event_rules rules; /* events: the writer's clock, at the start */
    pthread_mutex_t mu;
    pthread_cond_t work; /* a chunk is ready, or stop */
    pthread_cond_t done; /* a chunk is parsed */
    chunk *chunks;
    unsigned n_chunks;
    uint64_t next_parse; /* sequence number of the next chunk to parse */
    uint64_t filled;     /* chunks filled so far */
    bool stop;
} validator;

static bool blank_line(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return false;
    return true;
}

static void add_reject(chunk *c, uint32_t line, const char *msg, const char *input, size_t n,
                       bool truncated)
{
    nbx_buf *b = &c->rejects;
    uint32_t head[2] = {line, 0};
    size_t at = b->len;
    nbx_buf_append(b, head, sizeof head);
    size_t text = b->len;
    nbx_buf_puts(b, ",\"error\":");
    nbx_jw_string(b, msg, strlen(msg));
    nbx_buf_puts(b, ",\"input\":");
    nbx_jw_string(b, input, n);
    if (truncated)
        nbx_buf_puts(b, ",\"truncated\":true");
    nbx_buf_puts(b, "}\n");
    if (!b->oom) {
        uint32_t len = (uint32_t)(b->len - text);
        memcpy(b->data + at + 4, &len, sizeof len);
    }
    c->n_rejects++;
}

/* A bad line: a reject, or the chunk's error (and the end of its parse). */
static bool bad_line(validator *v, chunk *c, uint32_t line, const nbx_err *e, const char *input,
                     size_t n, bool truncated)
{
    if (v->keep_going) {
        add_reject(c, line, e->msg, input, n, truncated);
        return true;
    }
    c->err = e->code;
    c->err_line = line;
    memcpy(c->err_msg, e->msg, sizeof c->err_msg);
    return false;
}

static void parse_chunk(validator *v, chunk *c, nbx_arena *arena)
{
    nbx_buf_reset(&c->spool);
    nbx_buf_reset(&c->rejects);
    c->records = c->lines = c->nonblank = c->n_rejects = 0;
    c->err = NBX_OK;
    nbx_err e = {0};
    if (c->overlong) {
        c->lines = c->nonblank = 1;
        nbx_err_set(&e, NBX_ELIMIT, "line is %llu bytes, the limit is %d (NBX_LINE_MAX)",
                    (unsigned long long)c->overlong_len, NBX_LINE_MAX);
        bad_line(v, c, 0, &e, c->data, c->len, true);
        return;
    }
    const char *p = c->data, *end = c->data + c->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t n = (size_t)(le - p);
        uint32_t line = c->lines++;
        const char *next = nl ? nl + 1 : end;
        if (blank_line(p, n)) {
            p = next;
            continue;
        }
        c->nonblank++;
        int rc;
        if (n > NBX_LINE_MAX) {
            rc = nbx_err_set(&e, NBX_ELIMIT, "line is %zu bytes, the limit is %d (NBX_LINE_MAX)", n,
                             NBX_LINE_MAX);
        } else {
            nbx_arena_reset(arena);
            if (v->kind == NBX_IMPORT_PROFILES) {
                nbx_profile patch;
                rc = nbx_profile_parse(p, n, &patch, arena, &e);
                if (rc == NBX_OK)
                    spool_profile(&c->spool, line, &patch);
            } else {
                nbx_event ev;
                rc = nbx_event_parse(p, n, 0, &ev, arena, &e);
                /* a line the writer refuses (its clock, its catalog) is a
                 * bad line like any other */
                if (rc == NBX_OK && nbx_event_check(&ev, &v->rules, &e) != NBX_OK)
                    rc = e.code = NBX_EPARSE;
                if (rc == NBX_OK)
                    spool_event(&c->spool, line, &ev);
            }
        }
        if (rc == NBX_OK) {
            c->records++;
        } else if (rc == NBX_ENOMEM) {
            /* not the line's fault: fail the import whatever the mode */
            c->err = rc;
            c->err_line = line;
            snprintf(c->err_msg, sizeof c->err_msg, "%s", e.msg);
            return;
        } else {
            bool truncated = n > NBX_LINE_MAX;
            if (!bad_line(v, c, line, &e, p, truncated ? REJECT_PREFIX : n, truncated))
                return;
        }
        p = next;
    }
    if (c->spool.oom || c->rejects.oom) {
        c->err = NBX_ENOMEM;
        c->err_line = c->lines ? c->lines - 1 : 0;
        snprintf(c->err_msg, sizeof c->err_msg, "out of memory");
    }
}

static void *parser_main(void *arg)
{
    validator *v = arg;
    nbx_arena arena = {0};
    pthread_mutex_lock(&v->mu);
    while (!v->stop) {
        if (v->next_parse < v->filled) {
            chunk *c = &v->chunks[v->next_parse % v->n_chunks];
            v->next_parse++;
            c->state = CHUNK_PARSING;
            pthread_mutex_unlock(&v->mu);
            parse_chunk(v, c, &arena);
            pthread_mutex_lock(&v->mu);
            c->state = CHUNK_DONE;
            pthread_cond_broadcast(&v->done);
            continue;
        }
        pthread_cond_wait(&v->work, &v->mu);
    }
    pthread_mutex_unlock(&v->mu);
    nbx_arena_free(&arena);
    return NULL;
}

/* ------------------------------------------------------------------------
 * The import's state, shared by both passes
 * ------------------------------------------------------------------------ */

/* Events are applied customer by customer, not in file order: pass 1 cuts
 * the spool into runs sorted by (customer, line), pass 2 merges them. The
 * store then sees each customer's keys once per import, in key order, and a
 * transaction writes a range of the tree rather than pages all over it.
 * A run entry is the record's line (u64) and the spooled record. */
#define RUN_BYTES ((size_t)64 << 20)

/* NBX_IMPORT_RUN_BYTES (bytes, or with a K or M suffix) sets another run
 * size; a run takes at least one chunk's records, so a small value makes a
 * run per chunk (tests use it to merge many runs). */
static size_t run_bytes(void)
{
    const char *s = getenv("NBX_IMPORT_RUN_BYTES");
    if (!s || !*s)
        return RUN_BYTES;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end == 'K' || *end == 'k')
        v <<= 10;
    else if (*end == 'M' || *end == 'm')
        v <<= 20;
    return v ? (size_t)v : RUN_BYTES;
}

typedef struct run_buf {
    nbx_buf bytes;  /* spooled records of the run being collected */
    uint64_t *off;  /* per record: offset in bytes */
    uint64_t *line; /* per record: line in the file */
    kref *order;    /* sort keys */
    kref *sorted;   /* room for kref_sort */
    size_t n, cap;
    nbx_buf out; /* write buffer */
} run_buf;

typedef struct run_ref {
    uint64_t offset; /* in the spool */
    uint64_t bytes;
    uint64_t records;
} run_ref;

typedef struct importer {
    nbx_store *store;
    nbx_import_kind kind;
    const char *name; /* the path, or "<stdin>", for messages */
    const nbx_import_options *opts;
    size_t batch_size;
    int64_t max_skew_ms;
    nbx_catalog *catalog; /* events: offers must be its (opts->catalog) */
    nbx_import_stats stats;
    nbx_err err;
    /* input */
    int in_fd;
    bool in_eof;
    uint64_t in_offset;
    uint64_t in_total; /* 0 if unknown */
    char *carry;       /* a partial line left over from the last chunk */
    size_t carry_len;
    /* outputs of pass 1 */
    int spool_fd;
    uint64_t spool_records;
    uint64_t spool_bytes;
    run_buf run; /* events: the run being collected */
    size_t run_bytes;
    run_ref *runs; /* events: the sorted runs written to the spool */
    size_t n_runs, runs_cap;
    int rejects_fd;
    nbx_buf rejects_buf;
    uint64_t lines_seen; /* lines so far, blank ones included */
    uint64_t next_progress;
} importer;

static void progress(importer *im, uint64_t lines, uint64_t bytes)
{
    if (!im->opts->progress || lines < im->next_progress)
        return;
    im->next_progress = (lines / PROGRESS_EVERY + 1) * PROGRESS_EVERY;
    im->opts->progress(im->opts->progress_ud, lines, bytes, im->in_total);
}

/* Each pass opens with a call of 0 lines and 0 bytes: the counts start again
 * from zero in the apply pass, and a display can name the pass it shows. */
static void progress_pass_begins(importer *im)
{
    im->next_progress = PROGRESS_EVERY;
    if (im->opts->progress)
        im->opts->progress(im->opts->progress_ud, 0, 0, im->in_total);
}

static int input_error(importer *im, int errnum)
{
    return nbx_err_errno(&im->err, errnum, "cannot read", im->name);
}

/* Skip the rest of a line over NBX_LINE_MAX, in constant memory whatever
 * its length; c keeps its first REJECT_PREFIX bytes for the rejects file.
 * What follows the line's newline becomes the carry. */
static int skip_long_line(importer *im, chunk *c, size_t have)
{
    c->overlong = true;
    c->overlong_len = have;
    c->len = REJECT_PREFIX;
    for (;;) {
        ssize_t n = read_full(im->in_fd, im->carry, CHUNK_CAP);
        if (n < 0)
            return input_error(im, errno);
        im->in_offset += (uint64_t)n;
        if ((size_t)n < CHUNK_CAP)
            im->in_eof = true;
        char *nl = n > 0 ? memchr(im->carry, '\n', (size_t)n) : NULL;
        if (nl) {
            c->overlong_len += (uint64_t)(nl - im->carry);
            im->carry_len = (size_t)(im->carry + n - (nl + 1));
            memmove(im->carry, nl + 1, im->carry_len);
            return NBX_OK;
        }
        c->overlong_len += (uint64_t)n;
        if (im->in_eof)
            return NBX_OK;
    }
}

/* Fill c with whole lines: the carry, then input up to CHUNK_CAP bytes, cut
 * after the last newline. c->len is 0 at the end of the input. */
static int fill_chunk(importer *im, chunk *c)
{
    c->overlong = false;
    memcpy(c->data, im->carry, im->carry_len);
    size_t have = im->carry_len;
    im->carry_len = 0;
    if (!im->in_eof) {
        ssize_t n = read_full(im->in_fd, c->data + have, CHUNK_CAP - have);
        if (n < 0)
            return input_error(im, errno);
        im->in_offset += (uint64_t)n;
        have += (size_t)n;
        if (have < CHUNK_CAP)
            im->in_eof = true;
    }
    c->len = have;
    if (have == 0 || im->in_eof) {
        c->end_offset = im->in_offset;
        return NBX_OK; /* the last line may lack its newline */
    }
    char *nl = memrchr(c->data, '\n', have);
    if (!nl) {
        int rc = skip_long_line(im, c, have);
        c->end_offset = im->in_offset - im->carry_len;
        return rc;
    }
    c->len = (size_t)(nl + 1 - c->data);
    im->carry_len = have - c->len;
    memcpy(im->carry, nl + 1, im->carry_len);
    c->end_offset = im->in_offset - im->carry_len;
    return NBX_OK;
}

static int flush_rejects(importer *im)
{
    if (im->rejects_buf.len == 0)
        return NBX_OK;
    if (im->rejects_buf.oom)
        return nbx_err_set(&im->err, NBX_ENOMEM, "out of memory");
    int rc = write_all(im->rejects_fd, im->rejects_buf.data, im->rejects_buf.len);
    nbx_buf_reset(&im->rejects_buf);
    return rc ? nbx_err_errno(&im->err, errno, "cannot write", im->opts->rejects_path) : NBX_OK;
}

static int spool_error(importer *im)
{
    return nbx_err_errno(&im->err, errno, "cannot write the import spool in", im->store->path);
}

static int run_write(importer *im, const void *p, size_t n)
{
    nbx_buf *out = &im->run.out;
    if (out->len + n > ((size_t)1 << 20) && out->len > 0) {
        if (write_all(im->spool_fd, out->data, out->len) != 0)
            return spool_error(im);
        out->len = 0;
    }
    nbx_buf_append(out, p, n);
    return out->oom ? nbx_err_set(&im->err, NBX_ENOMEM, "out of memory") : NBX_OK;
}

/* Sort the run collected so far by (customer, line) and append it to the
 * spool. */
static int run_flush(importer *im)
{
    run_buf *r = &im->run;
    if (r->n == 0)
        return NBX_OK;
    for (size_t i = 0; i < r->n; i++) {
        nbx_event ev;
        const char *rec = r->bytes.data + r->off[i];
        uint32_t len;
        memcpy(&len, rec, sizeof len);
        if (unspool_event(rec, len, &ev) != NBX_OK)
            return nbx_err_set(&im->err, NBX_EIO, "the import spool is corrupt");
        r->order[i] = kref_of(ev.customer.ptr, ev.customer.len, (uint32_t)i);
    }
    if (kref_sort(r->order, r->sorted, r->n) != NBX_OK)
        return nbx_err_set(&im->err, NBX_ENOMEM, "out of memory");
    if (im->n_runs == im->runs_cap) {
        size_t cap = im->runs_cap ? 2 * im->runs_cap : 16;
        run_ref *runs = realloc(im->runs, cap * sizeof *runs);
        if (!runs)
            return nbx_err_set(&im->err, NBX_ENOMEM, "out of memory");
        im->runs = runs;
        im->runs_cap = cap;
    }
    run_ref *ref = &im->runs[im->n_runs++];
    *ref = (run_ref){im->spool_bytes, 0, r->n};
    nbx_buf_reset(&r->out);
    for (size_t j = 0; j < r->n; j++) {
        /* a gather from all over the run: ask for the lines ahead (the
         * record's offset 16 ahead, the record 8 ahead) */
        if (j + 16 < r->n) {
            uint32_t ahead = r->order[j + 16].rec;
            __builtin_prefetch(&r->off[ahead]);
            __builtin_prefetch(&r->line[ahead]);
        }
        if (j + 8 < r->n)
            __builtin_prefetch(r->bytes.data + r->off[r->order[j + 8].rec]);
        uint32_t i = r->order[j].rec;
        const char *rec = r->bytes.data + r->off[i];
        uint32_t len;
        memcpy(&len, rec, sizeof len);
        int rc = run_write(im, &r->line[i], sizeof r->line[i]);
        if (rc == NBX_OK)
            rc = run_write(im, rec, len);
        if (rc)
            return rc;
        ref->bytes += sizeof r->line[i] + len;
    }
    if (r->out.len && write_all(im->spool_fd, r->out.data, r->out.len) != 0)
        return spool_error(im);
    nbx_buf_reset(&r->out);
    im->spool_bytes += ref->bytes;
    nbx_buf_reset(&r->bytes);
    r->n = 0;
    return NBX_OK;
}

/* A chunk's event records join the run; a run that would pass run_bytes is
 * written first. */
static int run_add(importer *im, const chunk *c, uint64_t first_line)
{
    run_buf *r = &im->run;
    if (r->n > 0 && r->bytes.len + c->spool.len > im->run_bytes) {
        int rc = run_flush(im);
        if (rc)
            return rc;
    }
    if (r->n + c->records > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->n + c->records)
            cap *= 2;
        if (!GROW(r->off, cap) || !GROW(r->line, cap) || !GROW(r->order, cap) ||
            !GROW(r->sorted, cap))
            return nbx_err_set(&im->err, NBX_ENOMEM, "out of memory");
        r->cap = cap;
    }
    size_t base = r->bytes.len;
    nbx_buf_append(&r->bytes, c->spool.data, c->spool.len);
    if (r->bytes.oom)
        return nbx_err_set(&im->err, NBX_ENOMEM, "out of memory");
    for (size_t at = 0; at < c->spool.len;) {
        uint32_t len, line;
        memcpy(&len, c->spool.data + at, 4);
        memcpy(&line, c->spool.data + at + 4, 4);
        r->off[r->n] = base + at;
        r->line[r->n] = first_line + line;
        r->n++;
        at += len;
    }
    return NBX_OK;
}

static void run_buf_free(run_buf *r)
{
    nbx_buf_free(&r->bytes);
    nbx_buf_free(&r->out);
    free(r->off);
    free(r->line);
    free(r->order);
    free(r->sorted);
}

/* Take a parsed chunk in file order: its records to the spool (events: to
 * the run being collected), its bad lines to the rejects file, or its error
 * to the caller. */
static int collect_chunk(importer *im, chunk *c)
{
    uint64_t first_line = im->lines_seen + 1;
    if (c->err) {
        im->err.code = c->err;
        snprintf(im->err.msg, sizeof im->err.msg, "%s", c->err_msg);
        return nbx_err_prefix(&im->err, "%s:%llu: ", im->name,
                              (unsigned long long)(first_line + c->err_line));
    }
    const char *p = c->rejects.data, *end = p + c->rejects.len;
    while (p < end) {
        uint32_t line, len;
        memcpy(&line, p, 4);
        memcpy(&len, p + 4, 4);
        nbx_buf_printf(&im->rejects_buf, "{\"line\":%llu", (unsigned long long)(first_line + line));
        nbx_buf_append(&im->rejects_buf, p + 8, len);
        p += 8 + len;
        if (im->rejects_buf.len >= (1u << 16) && flush_rejects(im) != NBX_OK)
            return im->err.code;
    }
    if (c->records > 0 && im->kind == NBX_IMPORT_EVENTS) {
        int rc = run_add(im, c, first_line);
        if (rc)
            return rc;
    } else if (c->records > 0) {
        frame_header h = {first_line, c->end_offset, c->records, (uint32_t)c->spool.len};
        if (write_all(im->spool_fd, &h, sizeof h) != 0 ||
            write_all(im->spool_fd, c->spool.data, c->spool.len) != 0)
            return nbx_err_errno(&im->err, errno, "cannot write the import spool in",
                                 im->store->path);
    }
    im->spool_records += c->records;
    im->lines_seen += c->lines;
    im->stats.lines += c->nonblank;
    im->stats.rejected += c->n_rejects;
    progress(im, im->stats.lines, c->end_offset);
    return NBX_OK;
}

static unsigned parser_threads(void)
{
    const char *s = getenv("NBX_IMPORT_THREADS");
    long n = s && *s ? strtol(s, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > PARSER_THREADS_MAX ? PARSER_THREADS_MAX : (unsigned)n;
}

/* The parser threads look offers up in a catalog they only read. */
static bool offer_in_catalog(const void *catalog, nbx_sv id)
{
    return nbx_catalog_offer(catalog, id) != NULL;
}

/* The calling thread reads and collects; parser threads parse. */
static int validate(importer *im)
{
    validator v = {.kind = im->kind,
                   .keep_going = im->opts->rejects_path != NULL,
                   .rules = {.now_ms = nbx_time_now(), .max_skew_ms = im->max_skew_ms}};
    if (im->catalog) {
        v.rules.offer_known = offer_in_catalog;
        v.rules.offers = im->catalog;
    }
    unsigned n_threads = parser_threads();
    v.n_chunks = n_threads + 2;
    pthread_t threads[PARSER_THREADS_MAX];
    unsigned started = 0;
    int rc = NBX_OK;
    pthread_mutex_init(&v.mu, NULL);
    pthread_cond_init(&v.work, NULL);
    pthread_cond_init(&v.done, NULL);
    v.chunks = calloc(v.n_chunks, sizeof *v.chunks);
    im->carry = malloc(CHUNK_CAP);
    if (!v.chunks || !im->carry)
        rc = nbx_err_set(&im->err, NBX_ENOMEM, "out of memory");
    for (unsigned i = 0; rc == NBX_OK && i < v.n_chunks; i++)
        if (!(v.chunks[i].data = malloc(CHUNK_CAP)))
            rc = nbx_err_set(&im->err, NBX_ENOMEM, "out of memory");
    while (rc == NBX_OK && started < n_threads) {
        if (pthread_create(&threads[started], NULL, parser_main, &v) != 0)
            rc = nbx_err_set(&im->err, NBX_ENOMEM, "cannot start a parser thread");
        else
            started++;
    }

    uint64_t collected = 0;
    bool input_done = false;
    while (rc == NBX_OK) {
        pthread_mutex_lock(&v.mu);
        chunk *next = NULL;
        bool fill = false;
        for (;;) {
            if (collected < v.filled && v.chunks[collected % v.n_chunks].state == CHUNK_DONE) {
                next = &v.chunks[collected % v.n_chunks];
                break;
            }
            if (!input_done && v.filled - collected < v.n_chunks) {
                next = &v.chunks[v.filled % v.n_chunks];
                fill = true;
                break;
            }
            if (input_done && collected == v.filled)
                break;
            pthread_cond_wait(&v.done, &v.mu);
        }
        pthread_mutex_unlock(&v.mu);
        if (!next)
            break;
        if (fill) {
            rc = fill_chunk(im, next);
            if (rc != NBX_OK)
                break;
            if (next->len == 0 && !next->overlong) {
                input_done = true;
                continue;
            }
            if (im->in_eof && im->carry_len == 0)
                input_done = true;
            pthread_mutex_lock(&v.mu);
            next->state = CHUNK_READY;
            v.filled++;
            pthread_cond_signal(&v.work);
            pthread_mutex_unlock(&v.mu);
        } else {
            rc = collect_chunk(im, next);
            pthread_mutex_lock(&v.mu);
            next->state = CHUNK_FREE;
            pthread_mutex_unlock(&v.mu);
            collected++;
        }
    }

    pthread_mutex_lock(&v.mu);
    v.stop = true;
    pthread_cond_broadcast(&v.work);
    pthread_mutex_unlock(&v.mu);
    for (unsigned i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (rc == NBX_OK && im->kind == NBX_IMPORT_EVENTS)
        rc = run_flush(im);
    run_buf_free(&im->run);
    if (rc == NBX_OK && v.keep_going)
        rc = flush_rejects(im);
    for (unsigned i = 0; v.chunks && i < v.n_chunks; i++) {
        free(v.chunks[i].data);
        nbx_buf_free(&v.chunks[i].spool);
        nbx_buf_free(&v.chunks[i].rejects);
    }
    free(v.chunks);
    free(im->carry);
    im->carry = NULL;
    pthread_cond_destroy(&v.done);
    pthread_cond_destroy(&v.work);
    pthread_mutex_destroy(&v.mu);
    return rc;
}

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
        ssize_t n = read_full(fd, &ap->hdr, sizeof ap->hdr);
        if (n == 0)
            return 0;
        if (n != (ssize_t)sizeof ap->hdr)
            return nbx_err_set(&b->err, NBX_EIO, "the import spool is truncated");
        nbx_buf_reset(&ap->frame);
        if (nbx_buf_reserve(&ap->frame, ap->hdr.bytes) != NBX_OK)
            return nbx_err_set(&b->err, NBX_ENOMEM, "out of memory");
        if (read_full(fd, ap->frame.data, ap->hdr.bytes) != (ssize_t)ap->hdr.bytes)
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
    if (unspool_event(r->rec, r->rec_len, &ev) != NBX_OK)
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
        if (unspool_profile(b->bytes.data + b->rec_off[i], record_len(b, i), &b->patch[i],
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
        if (unspool_event(b->bytes.data + b->rec_off[i], record_len(b, i), ev) != NBX_OK)
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
static int apply(importer *im, uint64_t *stopped_at)
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
    progress_pass_begins(im);
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
            progress(im, taken,
                     (uint64_t)((double)im->in_total * (double)taken / (double)im->spool_records));
        else
            progress(im, b->line[b->n - 1], b->end_offset);
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

/* ========================================================================
 * Public entry point
 * ======================================================================== */

static int open_input(importer *im, const char *path)
{
    if (strcmp(path, "-") == 0) {
        im->in_fd = STDIN_FILENO;
        im->name = "<stdin>";
    } else {
        im->in_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (im->in_fd < 0)
            return nbx_err_errno(&im->err, errno, "cannot open", path);
    }
    struct stat st;
    if (fstat(im->in_fd, &st) != 0)
        return nbx_err_errno(&im->err, errno, "cannot stat", im->name);
    if (S_ISDIR(st.st_mode))
        return nbx_err_set(&im->err, NBX_EIO, "%s: is a directory, not a JSONL file", im->name);
    if (S_ISREG(st.st_mode)) {
        im->in_total = (uint64_t)st.st_size;
        posix_fadvise(im->in_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    return NBX_OK;
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* The rejects file is truncated before the input is read: it must name
 * neither the input nor a file of the store. Compared by device and inode,
 * so another spelling of the path or a link to the file is caught too. */
static int check_rejects_path(importer *im, const char *rejects)
{
    struct stat r, other;
    if (stat(rejects, &r) != 0)
        return NBX_OK; /* a new file (or one open() will report) */
    if (fstat(im->in_fd, &other) == 0 && same_file(&r, &other))
        return nbx_err_set(&im->err, NBX_EINVAL,
                           "the rejects file %s is the input %s: it would be overwritten; "
                           "choose another rejects file",
                           rejects, im->name);
    static const char *const store_files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < NBX_ARRAY_LEN(store_files); i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", im->store->path, store_files[i]);
        if (stat(path, &other) == 0 && same_file(&r, &other))
            return nbx_err_set(&im->err, NBX_EINVAL,
                               "the rejects file %s is the store's %s: it would be overwritten; "
                               "choose another rejects file",
                               rejects, path);
    }
    return NBX_OK;
}

NBX_API int nbx_import_file(nbx_store *store, nbx_import_kind kind, const char *path,
                            const nbx_import_options *opts, nbx_import_stats *stats)
{
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (!store || !path)
        return nbx_fail(store, NBX_EINVAL, "nbx_import_file: store and path are required");
    if (kind != NBX_IMPORT_PROFILES && kind != NBX_IMPORT_EVENTS)
        return nbx_fail(store, NBX_EINVAL, "nbx_import_file: unknown kind %d", (int)kind);
    /* An older caller's smaller struct (its size field) gets zeros for the
     * fields added since. */
    nbx_import_options given;
    nbx_import_options_init(&given);
    if (opts && opts->size < offsetof(nbx_import_options, max_skew_ms))
        return nbx_fail(store, NBX_EINVAL,
                        "nbx_import_file: options not set up with nbx_import_options_init()");
    if (opts) {
        memset(&given, 0, sizeof given);
        memcpy(&given, opts, opts->size < sizeof given ? opts->size : sizeof given);
    }
    opts = &given;
    if (opts->batch_size > BATCH_MAX)
        return nbx_fail(store, NBX_EINVAL, "nbx_import_file: batch_size %zu is over %d",
                        opts->batch_size, BATCH_MAX);
    nbx_err oe = {0};
    int64_t max_skew_ms;
    if (nbx_event_skew(opts->max_skew_ms, &max_skew_ms, &oe) != NBX_OK)
        return nbx_fail(store, NBX_EINVAL, "nbx_import_file: max_skew_ms: %s", oe.msg);
    if (store->flags & NBX_STORE_READONLY)
        return nbx_fail(store, NBX_EREADONLY, "%s: store opened read-only", store->path);

    importer im = {.store = store,
                   .kind = kind,
                   .name = path,
                   .opts = opts,
                   .batch_size = opts->batch_size            ? opts->batch_size
                                 : kind == NBX_IMPORT_EVENTS ? DEFAULT_BATCH_EVENTS
                                                             : DEFAULT_BATCH_PROFILES,
                   .max_skew_ms = max_skew_ms,
                   .in_fd = -1,
                   .spool_fd = -1,
                   .rejects_fd = -1,
                   .next_progress = PROGRESS_EVERY,
                   .run_bytes = run_bytes()};
    uint64_t stopped_at = 0;
    int rc = open_input(&im, path);
    if (rc == NBX_OK && kind == NBX_IMPORT_EVENTS && opts->catalog)
        rc = nbx_catalog_load(opts->catalog, &im.catalog, &im.err);
    if (rc == NBX_OK && opts->rejects_path)
        rc = check_rejects_path(&im, opts->rejects_path);
    if (rc == NBX_OK && opts->rejects_path) {
        im.rejects_fd = open(opts->rejects_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (im.rejects_fd < 0)
            rc = nbx_err_errno(&im.err, errno, "cannot create", opts->rejects_path);
    }
    if (rc == NBX_OK && (im.spool_fd = open_spool(store->path, &im.err)) < 0)
        rc = im.err.code;
    if (rc == NBX_OK) {
        progress_pass_begins(&im);
        rc = validate(&im);
    }
    if (rc == NBX_OK && lseek(im.spool_fd, 0, SEEK_SET) != 0)
        rc = nbx_err_errno(&im.err, errno, "cannot rewind the import spool in", store->path);
    if (rc == NBX_OK && im.spool_records > 0)
        rc = apply(&im, &stopped_at);
    char note[160] = "";
    if (rc && kind == NBX_IMPORT_EVENTS && im.stats.applied + im.stats.duplicates > 0)
        snprintf(note, sizeof note,
                 " (events are applied customer by customer: some of the file's are in the "
                 "store; running the file again completes it)");
    else if (rc && kind == NBX_IMPORT_PROFILES && stopped_at > 1)
        snprintf(note, sizeof note,
                 " (lines before %llu are in the store; running the file again completes it)",
                 (unsigned long long)stopped_at);
    if (note[0]) {
        size_t n = strlen(im.err.msg);
        snprintf(im.err.msg + n, sizeof im.err.msg - n, "%s", note);
    }

    if (im.rejects_fd >= 0 && close(im.rejects_fd) != 0 && rc == NBX_OK)
        rc = nbx_err_errno(&im.err, errno, "cannot write", opts->rejects_path);
    if (im.spool_fd >= 0)
        close(im.spool_fd);
    free(im.runs);
    if (im.in_fd >= 0 && im.in_fd != STDIN_FILENO)
        close(im.in_fd);
    nbx_buf_free(&im.rejects_buf);
    nbx_catalog_unref(im.catalog);
    if (stats)
        *stats = im.stats;
    if (rc)
        return nbx_publish(store, &im.err);
    nbx_clear_error(store);
    return NBX_OK;
}
