/*
 * ingest_validate.c: pass 1 of an import (ingest.c): the calling thread
 * reads the input in chunks of whole lines and collects them in file order;
 * parser threads parse and check each line and spool the good ones. Bad
 * lines become rejects or the import's error; events are cut into runs
 * sorted by (customer, line). The store is not written.
 */
#include "ingest_int.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

/* Input bytes per validation chunk: whole lines, so more than NBX_LINE_MAX. */
#define CHUNK_CAP ((size_t)4 << 20)
#define PARSER_THREADS_MAX 8
/* Of a line over NBX_LINE_MAX, the rejects file gets this much. */
#define REJECT_PREFIX 1024

_Static_assert(CHUNK_CAP > NBX_LINE_MAX + 1, "a chunk must hold the longest line");

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
                    nbx_spool_profile(&c->spool, line, &patch);
            } else {
                nbx_event ev;
                rc = nbx_event_parse(p, n, 0, &ev, arena, &e);
                /* a line the writer refuses (its clock, its catalog) is a
                 * bad line like any other */
                if (rc == NBX_OK && nbx_event_check(&ev, &v->rules, &e) != NBX_OK)
                    rc = e.code = NBX_EPARSE;
                if (rc == NBX_OK)
                    nbx_spool_event(&c->spool, line, &ev);
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
        ssize_t n = nbx_ingest_read_full(im->in_fd, im->carry, CHUNK_CAP);
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
        ssize_t n = nbx_ingest_read_full(im->in_fd, c->data + have, CHUNK_CAP - have);
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
    int rc = nbx_ingest_write_all(im->rejects_fd, im->rejects_buf.data, im->rejects_buf.len);
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
        if (nbx_ingest_write_all(im->spool_fd, out->data, out->len) != 0)
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
        if (nbx_unspool_event(rec, len, &ev) != NBX_OK)
            return nbx_err_set(&im->err, NBX_EIO, "the import spool is corrupt");
        r->order[i] = kref_of(ev.customer.ptr, ev.customer.len, (uint32_t)i);
    }
    if (nbx_kref_sort(r->order, r->sorted, r->n) != NBX_OK)
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
    if (r->out.len && nbx_ingest_write_all(im->spool_fd, r->out.data, r->out.len) != 0)
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
        if (nbx_ingest_write_all(im->spool_fd, &h, sizeof h) != 0 ||
            nbx_ingest_write_all(im->spool_fd, c->spool.data, c->spool.len) != 0)
            return nbx_err_errno(&im->err, errno, "cannot write the import spool in",
                                 im->store->path);
    }
    im->spool_records += c->records;
    im->lines_seen += c->lines;
    im->stats.lines += c->nonblank;
    im->stats.rejected += c->n_rejects;
    nbx_ingest_progress(im, im->stats.lines, c->end_offset);
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
int nbx_ingest_validate(importer *im)
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
