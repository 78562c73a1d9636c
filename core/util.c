/*
 * util.c: error codes and messages, buffers, arenas, hashing, file reading.
 */
#include "nbx_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* ========================================================================
 * Version
 * ======================================================================== */

NBX_API const char *nbx_version(int *num)
{
    if (num)
        *num = NBX_VERSION_NUM;
    return NBX_VERSION_STRING;
}

NBX_API void nbx_abi_v0(void) {}

/* ========================================================================
 * Errors
 * ======================================================================== */

NBX_API const char *nbx_strerror(int code)
{
    switch (code) {
    case NBX_OK:
        return "success";
    case NBX_DONE:
        return "no more items";
    case NBX_EINVAL:
        return "invalid argument";
    case NBX_ENOMEM:
        return "out of memory";
    case NBX_EIO:
        return "I/O error";
    case NBX_ENOTFOUND:
        return "not found";
    case NBX_ECORRUPT:
        return "stored data is corrupt";
    case NBX_EVERSION:
        return "store format not readable by this version of nbx";
    case NBX_EPARSE:
        return "malformed input";
    case NBX_EPOLICY:
        return "policy error";
    case NBX_ESTORE:
        return "store error";
    case NBX_EFULL:
        return "store is full";
    case NBX_ELIMIT:
        return "limit exceeded";
    case NBX_EREADONLY:
        return "opened read-only";
    default:
        return "unknown error";
    }
}

/* Messages carry text from outside: ids, paths, policy names and the
 * policy's own error strings. They reach terminals, logs and browsers, so
 * every byte that could steer a terminal or is not UTF-8 is written as
 * \xNN: C0 controls, DEL, C1 controls (U+0080..U+009F) and invalid UTF-8. */
size_t nbx_escape_text(char *out, size_t cap, const char *in, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return 0;
    const unsigned char *p = (const unsigned char *)in, *end = p + n;
    while (p < end) {
        size_t seq = nbx_utf8_len(p, end);
        bool ok = seq > 0 && !(seq == 1 && (*p < 0x20 || *p == 0x7f)) &&
                  !(seq == 2 && p[0] == 0xc2 && p[1] < 0xa0);
        if (ok) {
            if (o + seq >= cap)
                break;
            memcpy(out + o, p, seq);
            o += seq;
            p += seq;
            continue;
        }
        size_t k = seq ? seq : 1;
        if (o + 4 * k >= cap)
            break;
        for (size_t i = 0; i < k; i++, p++) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return o;
}

/* Length of the valid UTF-8 sequence at p (1..4), 0 if invalid. */
size_t nbx_utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    unsigned cp = c & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

static void err_store(nbx_err *e, const char *text, size_t n)
{
    nbx_escape_text(e->msg, sizeof e->msg, text, n);
}

int nbx_err_set(nbx_err *e, int code, const char *fmt, ...)
{
    if (!e)
        return code;
    e->code = code;
    char raw[NBX_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    err_store(e, raw, (size_t)n < sizeof raw ? (size_t)n : sizeof raw - 1);
    return code;
}

int nbx_err_prefix(nbx_err *e, const char *fmt, ...)
{
    if (!e)
        return NBX_EINVAL;
    char prefix[NBX_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n < 0)
        return e->code;
    /* Truncation is fine: the prefix (the where) matters most. The message
     * is escaped already; only the prefix is new text. */
    char escaped[NBX_ERRMSG_MAX];
    size_t m = nbx_escape_text(escaped, sizeof escaped, prefix,
                               (size_t)n < sizeof prefix ? (size_t)n : sizeof prefix - 1);
    char joined[2 * NBX_ERRMSG_MAX];
    int len = snprintf(joined, sizeof joined, "%.*s%s", (int)m, escaped, e->msg);
    /* Text only, so this copies and cuts at a character boundary. */
    err_store(e, joined,
              len < 0                       ? 0
              : (size_t)len < sizeof joined ? (size_t)len
                                            : sizeof joined - 1);
    return e->code;
}

int nbx_err_mdb(nbx_err *e, int rc, const char *what)
{
    /* One place for LMDB's conditions, at open and after: the code, and in
     * words what they mean for a store, where LMDB's own texts name its
     * constants ("MDB_CORRUPTED: Located page was wrong type"). */
    int code = NBX_ESTORE;
    const char *why = NULL;
    switch (rc) {
    case MDB_NOTFOUND:
    case ENOENT:
        code = NBX_ENOTFOUND;
        break;
    case MDB_MAP_FULL:
        code = NBX_EFULL;
        why = "the store reached its size limit (NBX_MAP_SIZE)";
        break;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
        code = NBX_ECORRUPT;
        why = "the store file is damaged (a page is not what the tree expects)";
        break;
    case MDB_INVALID:
        code = NBX_ECORRUPT;
        why = "not an nbx store (data.mdb is not an LMDB file)";
        break;
    case MDB_VERSION_MISMATCH:
        code = NBX_EVERSION;
        why = "the store was written by an incompatible LMDB version";
        break;
    case MDB_READERS_FULL:
        why = "too many processes and threads read the store at once (LMDB's reader table "
              "is full)";
        break;
    case MDB_TXN_FULL:
        why = "the write transaction is too large";
        break;
    case MDB_MAP_RESIZED:
        why = "another process grew the store's map; reopen the store";
        break;
    case MDB_PANIC:
        why = "a fatal error earlier left the store handle unusable; reopen the store";
        break;
    case ENOMEM:
        code = NBX_ENOMEM;
        break;
    case EACCES:
    case EROFS:
    case EIO:
    case ENOSPC:
        code = NBX_EIO;
        break;
    default:
        break;
    }
    if (!why && rc > 0) {
        why = strerror(rc);
    } else if (!why) {
        /* The rest keep LMDB's words without the constant's name. */
        why = mdb_strerror(rc);
        const char *colon = strncmp(why, "MDB_", 4) == 0 ? strstr(why, ": ") : NULL;
        if (colon)
            why = colon + 2;
    }
    return nbx_err_set(e, code, "%s: %s", what, why);
}

int nbx_err_errno(nbx_err *e, int errnum, const char *what, const char *path)
{
    int code = errnum == ENOENT ? NBX_ENOTFOUND : errnum == ENOMEM ? NBX_ENOMEM : NBX_EIO;
    return nbx_err_set(e, code, "%s %s: %s", what, path, strerror(errnum));
}

/* One message per thread: shared handles (store, engine) are used by many
 * threads at once, so a per-handle buffer would race. The owner pointer
 * makes it per handle as well. */
static _Thread_local struct {
    const void *owner;
    char msg[NBX_ERRMSG_MAX];
} last_error;

int nbx_publish(const void *owner, const nbx_err *e)
{
    last_error.owner = owner;
    snprintf(last_error.msg, sizeof last_error.msg, "%s",
             e->msg[0] ? e->msg : nbx_strerror(e->code));
    return e->code;
}

int nbx_fail(const void *owner, int code, const char *fmt, ...)
{
    last_error.owner = owner;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error.msg, sizeof last_error.msg, fmt, ap);
    va_end(ap);
    return code;
}

void nbx_clear_error(const void *owner)
{
    if (last_error.owner == owner)
        last_error.msg[0] = '\0';
}

const char *nbx_errmsg_of(const void *owner)
{
    return last_error.owner == owner ? last_error.msg : "";
}

NBX_API const char *nbx_last_errmsg(void)
{
    return last_error.msg;
}

NBX_API const char *nbx_store_errmsg(const nbx_store *store)
{
    return nbx_errmsg_of(store);
}

NBX_API void nbx_free(void *ptr)
{
    free(ptr);
}

/* ========================================================================
 * String views and buffers
 * ======================================================================== */

int nbx_buf_reserve(nbx_buf *b, size_t extra)
{
    if (b->oom)
        return NBX_ENOMEM;
    if (b->cap - b->len > extra)
        return NBX_OK;
    size_t need = b->len + extra + 1;
    if (need < b->len) {
        b->oom = true;
        return NBX_ENOMEM;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = true;
        return NBX_ENOMEM;
    }
    b->data = p;
    b->cap = cap;
    return NBX_OK;
}

void nbx_buf_append_grow(nbx_buf *b, const void *p, size_t n)
{
    if (nbx_buf_reserve(b, n) != NBX_OK)
        return;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* Counts in lines written per decision: printf's parsing would cost more
 * than the digits. */
void nbx_buf_putu(nbx_buf *b, uint64_t v)
{
    char tmp[20], *e = tmp + sizeof tmp, *p = e;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    nbx_buf_append(b, p, (size_t)(e - p));
}

void nbx_buf_printf(nbx_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        nbx_buf_append(b, small, (size_t)n);
        return;
    }
    if (nbx_buf_reserve(b, (size_t)n) != NBX_OK)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void nbx_buf_terminate(nbx_buf *b)
{
    if (nbx_buf_reserve(b, 1) == NBX_OK)
        b->data[b->len] = '\0';
}

void nbx_buf_free(nbx_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}

int nbx_buf_msgpack_write(void *data, const char *buf, size_t len)
{
    nbx_buf *b = data;
    nbx_buf_append(b, buf, len);
    return b->oom ? -1 : 0;
}

/* ========================================================================
 * Arena
 * ======================================================================== */

struct nbx_arena_chunk {
    nbx_arena_chunk *next;
    size_t size;
    max_align_t data[];
};

#define NBX_ARENA_CHUNK 16384

void *nbx_arena_alloc(nbx_arena *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    if (size == 0)
        size = 16;
    if ((size_t)(a->end - a->ptr) < size) {
        size_t want = size > NBX_ARENA_CHUNK ? size : NBX_ARENA_CHUNK;
        nbx_arena_chunk *c = malloc(sizeof *c + want);
        if (!c)
            return NULL;
        c->next = a->chunks;
        c->size = want;
        a->chunks = c;
        a->ptr = (char *)c->data;
        a->end = a->ptr + want;
    }
    void *p = a->ptr;
    a->ptr += size;
    return p;
}

char *nbx_arena_strndup(nbx_arena *a, const char *s, size_t n)
{
    char *p = nbx_arena_alloc(a, n + 1);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void nbx_arena_reset(nbx_arena *a)
{
    nbx_arena_chunk *keep = a->chunks;
    if (!keep)
        return;
    /* Keep the largest chunk, so a steady workload stops allocating. */
    nbx_arena_chunk *c = keep->next;
    for (; c; c = c->next)
        if (c->size > keep->size)
            keep = c;
    c = a->chunks;
    while (c) {
        nbx_arena_chunk *next = c->next;
        if (c != keep)
            free(c);
        c = next;
    }
    keep->next = NULL;
    a->chunks = keep;
    a->ptr = (char *)keep->data;
    a->end = a->ptr + keep->size;
}

void nbx_arena_free(nbx_arena *a)
{
    nbx_arena_chunk *c = a->chunks;
    while (c) {
        nbx_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->chunks = NULL;
    a->ptr = a->end = NULL;
}

/* ========================================================================
 * Files and hashing
 * ======================================================================== */

int nbx_read_file(const char *path, size_t max, char **out, size_t *len, nbx_err *e)
{
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO for reading waits for a writer, before any
     * check could refuse it (nbx, nginx -t and reloads hung on one). It
     * changes nothing for the regular files read below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return nbx_err_errno(e, errno, "cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return nbx_err_errno(e, err, "cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return nbx_err_set(e, NBX_EIO, "%s: not a regular file (%s)", path,
                           S_ISFIFO(st.st_mode)   ? "a FIFO"
                           : S_ISDIR(st.st_mode)  ? "a directory"
                           : S_ISCHR(st.st_mode)  ? "a character device"
                           : S_ISBLK(st.st_mode)  ? "a block device"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                                                  : "not a file");
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return nbx_err_set(e, NBX_ELIMIT, "%s: file is %lld bytes, over the limit of %zu", path,
                           (long long)st.st_size, max);
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return nbx_err_set(e, NBX_ENOMEM, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            free(buf);
            close(fd);
            return nbx_err_errno(e, err, "cannot read", path);
        }
        if (n == 0)
            break; /* truncated while reading: use what is there */
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    if (len)
        *len = got;
    return NBX_OK;
}

uint64_t nbx_hash64(const void *p, size_t n, uint64_t seed)
{
    return XXH64(p, n, seed);
}

void nbx_hex64(uint64_t v, char out[17])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        out[i] = digits[v & 0xf];
        v >>= 4;
    }
    out[16] = '\0';
}
