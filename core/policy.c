/*
 * policy.c: load a policy file, check it, share it between contexts.
 *
 * A policy is immutable once loaded: its source, version (xxh64 of the
 * source) and name. Every context compiles it into its own sandbox
 * (sandbox.c); loading compiles it once in a throwaway sandbox with no
 * catalog, so a broken file is refused before anything serves it.
 */
#include "nbx_int.h"

#include <stdlib.h>
#include <string.h>

static void policy_free(nbx_policy *p)
{
    if (!p)
        return;
    free(p->path);
    free(p->chunkname);
    free(p->source);
    free(p);
}

/* "@" and the file's basename: Lua prints positions as "name.lua:12". */
static char *policy_chunkname(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!*base)
        base = path;
    size_t n = strlen(base);
    char *name = malloc(n + 2);
    if (!name)
        return NULL;
    name[0] = '@';
    memcpy(name + 1, base, n + 1);
    return name;
}

static int policy_from_source(const char *path, char *source, size_t len, nbx_policy **out,
                              nbx_err *e);

int nbx_policy_load(const char *path, nbx_policy **out, nbx_err *e)
{
    if (!out)
        return nbx_err_set(e, NBX_EINVAL, "nbx_policy_load: out is NULL");
    *out = NULL;
    if (!path || !*path)
        return nbx_err_set(e, NBX_EINVAL, "nbx_policy_load: no path");
    char *source = NULL;
    size_t len = 0;
    int rc = nbx_read_file(path, NBX_POLICY_FILE_MAX, &source, &len, e);
    if (rc == NBX_ELIMIT)
        return nbx_err_set(e, NBX_EPOLICY, "%s: the policy file is over the limit of %u bytes",
                           path, NBX_POLICY_FILE_MAX);
    if (rc != NBX_OK)
        return rc;
    return policy_from_source(path, source, len, out, e);
}

int nbx_policy_load_text(const char *path, const char *text, size_t len, nbx_policy **out,
                         nbx_err *e)
{
    if (!out)
        return nbx_err_set(e, NBX_EINVAL, "nbx_policy_load_text: out is NULL");
    *out = NULL;
    if (!path || !*path || !text)
        return nbx_err_set(e, NBX_EINVAL, "nbx_policy_load_text: no name or no text");
    if (len > NBX_POLICY_FILE_MAX)
        return nbx_err_set(e, NBX_EPOLICY, "%s: the policy is over the limit of %u bytes", path,
                           NBX_POLICY_FILE_MAX);
    char *source = malloc(len + 1);
    if (!source)
        return nbx_err_set(e, NBX_ENOMEM, "%s: out of memory", path);
    memcpy(source, text, len);
    source[len] = '\0';
    return policy_from_source(path, source, len, out, e);
}

/* Takes ownership of source (NUL-terminated, len bytes before the NUL). */
static int policy_from_source(const char *path, char *source, size_t len, nbx_policy **out,
                              nbx_err *e)
{
    int rc;
    if (len > 0 && source[0] == '\033') {
        free(source);
        return nbx_err_set(e, NBX_EPOLICY,
                           "%s: precompiled bytecode is not accepted; give the Lua source", path);
    }
    nbx_policy *p = calloc(1, sizeof *p);
    if (!p || !(p->path = strdup(path)) || !(p->chunkname = policy_chunkname(path))) {
        free(source);
        policy_free(p);
        return nbx_err_set(e, NBX_ENOMEM, "%s: out of memory", path);
    }
    atomic_init(&p->refs, 1);
    p->source = source;
    p->source_len = len;
    p->version = nbx_hash64(source, len, 0);
    nbx_hex64(p->version, p->version_hex);

    /* Compile and run the top level once: the sandbox fills in p->name. */
    nbx_sandbox *sb = NULL;
    rc = nbx_sandbox_open(p, NULL, NULL, &sb, e);
    if (rc != NBX_OK) {
        nbx_policy_unref(p);
        return rc;
    }
    nbx_sandbox_close(sb);
    *out = p;
    return NBX_OK;
}

nbx_policy *nbx_policy_ref(nbx_policy *p)
{
    if (p)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void nbx_policy_unref(nbx_policy *p)
{
    if (p && atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        policy_free(p);
}

NBX_API int nbx_policy_check(const char *path, nbx_engine_info *info)
{
    if (!path)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_policy_check: path is NULL");
    nbx_err e = {0};
    nbx_policy *p;
    int rc = nbx_policy_load(path, &p, &e);
    if (rc != NBX_OK)
        return nbx_publish(NULL, &e);
    if (info) {
        memcpy(info->policy_name, p->name, sizeof info->policy_name);
        memcpy(info->policy_version, p->version_hex, sizeof info->policy_version);
    }
    nbx_policy_unref(p);
    nbx_clear_error(NULL);
    return NBX_OK;
}
