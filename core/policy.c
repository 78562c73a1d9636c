/*
 * policy.c: read a policy, compile-check it, instrument it, share it.
 *
 * A policy is immutable once loaded: its source, version (xxh64 of the
 * source), the instrumented text sandboxes compile (lsource.c), and its name
 * once a sandbox has run its top level. Reading checks what can be checked
 * without running anything: size, text (no bytecode), syntax (with LuaJIT's
 * own messages, FILE:LINE) and lsource.c's rules. Running the top level is
 * the sandbox's job (sandbox.c), one layer up.
 */
#include "nbx_int.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

static void policy_free(nbx_policy *p)
{
    if (!p)
        return;
    free(p->path);
    free(p->chunkname);
    free(p->exec_source);
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

/* Compile (not run) the source in a throwaway state: a syntax error is
 * reported as LuaJIT words it, with the file's path and line. */
static int policy_syntax(const nbx_policy *p, nbx_err *e)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return nbx_err_set(e, NBX_ENOMEM, "%s: cannot create a Lua state", p->path);
    int st = luaL_loadbufferx(L, p->source, p->source_len, p->chunkname, "t");
    int rc = NBX_OK;
    if (st == LUA_ERRMEM) {
        rc = nbx_err_set(e, NBX_ENOMEM, "%s: out of memory compiling the policy", p->path);
    } else if (st != 0) {
        /* "name.lua:12: msg" -> "PATH:12: msg" */
        const char *msg = lua_tostring(L, -1);
        const char *base = p->chunkname + 1;
        size_t bl = strlen(base);
        if (msg && strncmp(msg, base, bl) == 0 && msg[bl] == ':')
            rc = nbx_err_set(e, NBX_EPOLICY, "%s%s", p->path, msg + bl);
        else
            rc = nbx_err_set(e, NBX_EPOLICY, "%s: %s", p->path, msg ? msg : "syntax error");
    }
    lua_close(L);
    return rc;
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

/* The text sandboxes compile: the source with lsource.c's time checks
 * (same lines), after its rules (no assignment to an enclosing function's
 * locals, bounded statements, no reserved names) passed. Its messages name
 * the path and line. */
static int policy_instrument(nbx_policy *p, nbx_err *e)
{
    nbx_buf out = {0};
    int rc = nbx_lsource_instrument(p->path, p->source, p->source_len, NULL, &out, e);
    if (rc == NBX_OK) {
        nbx_buf_terminate(&out);
        if (out.oom)
            rc = nbx_err_set(e, NBX_ENOMEM, "%s: out of memory instrumenting the policy", p->path);
    }
    if (rc != NBX_OK) {
        nbx_buf_free(&out);
        return rc;
    }
    p->exec_source = out.data;
    p->exec_len = out.len;
    return NBX_OK;
}

/* Takes ownership of source (NUL-terminated, len bytes before the NUL). */
static int policy_from_source(const char *path, char *source, size_t len, nbx_policy **out,
                              nbx_err *e)
{
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
    int rc = policy_syntax(p, e);
    if (rc == NBX_OK)
        rc = policy_instrument(p, e);
    if (rc != NBX_OK) {
        policy_free(p);
        return rc;
    }
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
