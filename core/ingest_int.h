/*
 * ingest_int.h: what the files of a bulk import share (ingest.c, the entry
 * point; ingest_spool.c, the spool's records and sort keys;
 * ingest_validate.c, pass 1; ingest_apply.c, pass 2). ingest.c says how an
 * import works.
 */
#ifndef NBX_INGEST_INT_H
#define NBX_INGEST_INT_H

#include "nbx_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define GROW(ptr, n) ((ptr) = realloc((ptr), (n) * sizeof *(ptr)))

/* ========================================================================
 * The spool (ingest_spool.c)
 * ======================================================================== */

/* write(2) until every byte is written: 0 or -1 (errno). */
int nbx_ingest_write_all(int fd, const void *p, size_t n);
/* Read up to n bytes; fewer only at end of input. Returns bytes or -1. */
ssize_t nbx_ingest_read_full(int fd, void *p, size_t n);
/* An unlinked temporary file in dir: nothing to clean up after a crash.
 * Returns the descriptor, or -1 with e set. */
int nbx_ingest_spool_open(const char *dir, nbx_err *e);

/* A parsed line as a spool record appended to b (b->oom on failure), and
 * back: strings point into the record, a profile's arrays come from a.
 * line: the line within its chunk. NBX_EIO for a record that does not
 * decode. */
void nbx_spool_profile(nbx_buf *b, uint32_t line, const nbx_profile *p);
int nbx_unspool_profile(const char *rec, size_t len, nbx_profile *p, nbx_arena *a);
void nbx_spool_event(nbx_buf *b, uint32_t line, const nbx_event *ev);
int nbx_unspool_event(const char *rec, size_t len, nbx_event *ev);

/* Profiles go to the spool a chunk at a time, behind this header. */
typedef struct frame_header {
    uint64_t first_line; /* 1-based line number of the chunk's first line */
    uint64_t end_offset; /* input bytes up to the end of the chunk */
    uint32_t records;
    uint32_t bytes;
} frame_header;

/* ========================================================================
 * Sort keys (ingest_spool.c)
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
static inline int kref_cmp(const void *a, const void *b)
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
 * in file order), in far fewer comparisons; tmp holds n krefs. NBX_OK or
 * NBX_ENOMEM. */
int nbx_kref_sort(kref *a, kref *tmp, size_t n);

static inline bool kref_same(const kref *x, const kref *y)
{
    return x->head == y->head && x->len == y->len &&
           (x->len <= 8 || memcmp(x->key + 8, y->key + 8, x->len - 8) == 0);
}

/* ========================================================================
 * The import's state, shared by both passes (ingest.c)
 * ======================================================================== */

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

/* Progress to the caller's callback, every PROGRESS_EVERY lines. Inline:
 * both passes and the entry point report it, and none calls another. */
#define PROGRESS_EVERY 100000

static inline void nbx_ingest_progress(importer *im, uint64_t lines, uint64_t bytes)
{
    if (!im->opts->progress || lines < im->next_progress)
        return;
    im->next_progress = (lines / PROGRESS_EVERY + 1) * PROGRESS_EVERY;
    im->opts->progress(im->opts->progress_ud, lines, bytes, im->in_total);
}

/* Each pass opens with a call of 0 lines and 0 bytes: the counts start again
 * from zero in the apply pass, and a display can name the pass it shows. */
static inline void nbx_ingest_pass_begins(importer *im)
{
    im->next_progress = PROGRESS_EVERY;
    if (im->opts->progress)
        im->opts->progress(im->opts->progress_ud, 0, 0, im->in_total);
}

/* Pass 1 (ingest_validate.c): read, parse and check every line, and spool
 * the good ones (events: in sorted runs); the store is not written. */
int nbx_ingest_validate(importer *im);
/* Pass 2 (ingest_apply.c): the spool into the store, a batch a
 * transaction. *stopped_at: the first line of the batch that failed. */
int nbx_ingest_apply(importer *im, uint64_t *stopped_at);

#endif /* NBX_INGEST_INT_H */
