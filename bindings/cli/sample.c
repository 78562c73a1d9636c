/*
 * sample.c: which customers a command tries (policy check, policy diff):
 * a deterministic sample of the store, or the lines of a file.
 *
 * The sample is the N ids whose xxh64 (nbx_shard_of) is smallest, in id
 * order: the same N customers every run, whatever order the store lists
 * them in, spread over the whole id range, and a larger N holds a smaller
 * one.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A max-heap on key of the n smallest keys seen: the sample is the ids
 * whose hash is smallest, whatever order the store lists them in. */
static void heap_down(cli_customer *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l].key > h[m].key)
            m = l;
        if (r < n && h[r].key > h[m].key)
            m = r;
        if (m == i)
            return;
        cli_customer tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

static void heap_up(cli_customer *h, size_t i)
{
    while (i > 0 && h[(i - 1) / 2].key < h[i].key) {
        cli_customer tmp = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
}

static int cmp_entries(const void *a, const void *b)
{
    const cli_customer *x = a, *y = b;
    return strcmp(x->id, y->id);
}

int cli_sample_store(cli_args *args, nbx_store *store, size_t want, cli_customer **out,
                      size_t *n_out)
{
    cli_customer *h = calloc(want ? want : 1, sizeof *h);
    if (!h)
        return cli_error(args->cmd, "out of memory");
    nbx_iter *it;
    int rc = nbx_iter_open(store, NBX_ITER_IDS, NULL, &it);
    if (rc != NBX_OK) {
        free(h);
        return cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    }
    size_t n = 0;
    const char *id;
    while ((rc = nbx_iter_next(it, &id, NULL, NULL)) == NBX_OK) {
        uint32_t key = nbx_shard_of(id, UINT32_MAX);
        if (n < want) {
            h[n].key = key;
            h[n].id = strdup(id);
            heap_up(h, n++);
        } else if (key < h[0].key) {
            free(h[0].id);
            h[0].key = key;
            h[0].id = strdup(id);
            heap_down(h, n, 0);
        }
    }
    nbx_iter_close(it);
    if (rc != NBX_DONE) {
        for (size_t i = 0; i < n; i++)
            free(h[i].id);
        free(h);
        return cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    }
    qsort(h, n, sizeof *h, cmp_entries);
    *out = h;
    *n_out = n;
    return CLI_OK;
}

int cli_customer_file(cli_args *args, const char *path, cli_customer **out, size_t *n_out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return cli_error(args->cmd, "--customers %s: %s", path, strerror(errno));
    cli_customer *ids = NULL;
    size_t n = 0, cap = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    int rc = CLI_OK;
    uint64_t line_no = 0;
    while ((len = getline(&line, &line_cap, f)) >= 0) {
        line_no++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            cli_customer *grown = realloc(ids, cap * sizeof *ids);
            if (!grown) {
                rc = cli_error(args->cmd, "out of memory");
                break;
            }
            ids = grown;
        }
        ids[n].key = 0;
        ids[n].line = line_no;
        ids[n++].id = strdup(line);
    }
    if (rc == CLI_OK && ferror(f))
        rc = cli_error(args->cmd, "--customers %s: %s", path, strerror(errno));
    free(line);
    fclose(f);
    *out = ids;
    *n_out = n;
    return rc;
}

void cli_customers_free(cli_customer *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(c[i].id);
    free(c);
}
