#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "testutil.h"

#include "nbx.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *tu_tempdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char *tmpl = NULL;
    if (asprintf(&tmpl, "%s/nbx-%s-XXXXXX", base && *base ? base : "/tmp", tag) < 0)
        return NULL;
    if (!mkdtemp(tmpl)) {
        free(tmpl);
        return NULL;
    }
    return tmpl;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tu_rmtree(const char *path)
{
    if (path)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int tu_write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t n = strlen(content);
    int ok = fwrite(content, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

char *tu_path(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        return NULL;
    return p;
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

char *tu_source_path(const char *rel)
{
    const char *src = getenv("NBX_SOURCE_DIR");
#ifdef NBX_SOURCE_DIR
    if (!src)
        src = NBX_SOURCE_DIR;
#endif
    return tu_path(src ? src : ".", rel);
}

int tu_store_with(const char *store_dir, const char *const *profiles)
{
    nbx_store *s;
    if (nbx_store_open(store_dir, NBX_STORE_CREATE, &s) != NBX_OK)
        return -1;
    int rc = 0;
    for (; *profiles && rc == 0; profiles++)
        rc = nbx_profile_put(s, *profiles, strlen(*profiles)) == NBX_OK ? 0 : -1;
    nbx_store_close(s);
    return rc;
}
