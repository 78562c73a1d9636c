/*
 * ingest_spool.c: the import spool: its I/O, the compact binary records a
 * parsed line becomes between the two passes of an import, and the sort keys
 * that order them (ingest.c says how an import works).
 */
#include "ingest_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

/* ========================================================================
 * Small I/O helpers
 * ======================================================================== */

int nbx_ingest_write_all(int fd, const void *p, size_t n)
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
ssize_t nbx_ingest_read_full(int fd, void *p, size_t n)
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
int nbx_ingest_spool_open(const char *dir, nbx_err *e)
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
 *            placement
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

void nbx_spool_profile(nbx_buf *b, uint32_t line, const nbx_profile *p)
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
int nbx_unspool_profile(const char *rec, size_t len, nbx_profile *p, nbx_arena *a)
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

void nbx_spool_event(nbx_buf *b, uint32_t line, const nbx_event *ev)
{
    wcur w;
    size_t size =
        8 + 1 + 3 * 8 + 4 * 2 + ev->id.len + ev->customer.len + ev->offer.len + ev->placement.len;
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
}

int nbx_unspool_event(const char *rec, size_t len, nbx_event *ev)
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
    return r.bad ? NBX_EIO : NBX_OK;
}

/* ========================================================================
 * Sort keys
 * ======================================================================== */

/* Sort a[0, n) as qsort with kref_cmp would, for a's rec ascending (records
 * in file order): a stable radix sort on the heads, 16 bits a pass (passes
 * where every head has the same digit are skipped), then qsort only within
 * runs of equal heads whose keys go on past 8 bytes or differ in length.
 * tmp holds n krefs. */
int nbx_kref_sort(kref *a, kref *tmp, size_t n)
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
