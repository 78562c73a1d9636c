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
 *
 * This file is the entry point and the state both passes share; pass 1 is
 * ingest_validate.c, pass 2 ingest_apply.c, the spool's records and sort
 * keys ingest_spool.c (ingest_int.h declares what they share).
 */
#include "ingest_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* Records per transaction by default. Events are applied in key order over
 * the whole file, so a larger transaction mostly saves commits (fsyncs);
 * memory is about 400 bytes a record, for two batches. */
#define DEFAULT_BATCH_PROFILES 10000
#define DEFAULT_BATCH_EVENTS 100000
#define BATCH_MAX 10000000

NBX_API void nbx_import_options_init(nbx_import_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->batch_size = 0; /* the kind's default */
}

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
    if (rc == NBX_OK && (im.spool_fd = nbx_ingest_spool_open(store->path, &im.err)) < 0)
        rc = im.err.code;
    if (rc == NBX_OK) {
        nbx_ingest_pass_begins(&im);
        rc = nbx_ingest_validate(&im);
    }
    if (rc == NBX_OK && lseek(im.spool_fd, 0, SEEK_SET) != 0)
        rc = nbx_err_errno(&im.err, errno, "cannot rewind the import spool in", store->path);
    if (rc == NBX_OK && im.spool_records > 0)
        rc = nbx_ingest_apply(&im, &stopped_at);
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
