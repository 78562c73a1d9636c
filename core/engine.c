/*
 * engine.c: the engine handle: a store, and the current (policy, catalog)
 * snapshot, swapped atomically on reload.
 *
 * Reload model: a snapshot is immutable and reference counted. The engine
 * holds the current one under a mutex and bumps a generation counter on
 * every swap. A context compares the generation (one atomic load) at the
 * start of each decision and only then takes the mutex to pick up the new
 * snapshot; a decision in flight keeps its own reference, so it finishes on
 * the version it started with.
 */
#include "nbx_int.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Snapshots
 * ======================================================================== */

static nbx_snapshot *snapshot_new(nbx_policy *policy, nbx_catalog *catalog, uint64_t generation)
{
    nbx_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->policy = nbx_policy_ref(policy);
    s->catalog = nbx_catalog_ref(catalog);
    s->generation = generation;
    return s;
}

void nbx_snapshot_unref(nbx_snapshot *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        nbx_policy_unref(s->policy);
        nbx_catalog_unref(s->catalog);
        free(s);
    }
}

nbx_snapshot *nbx_engine_snapshot(nbx_engine *e)
{
    pthread_mutex_lock(&e->lock);
    nbx_snapshot *s = e->current;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&e->lock);
    return s;
}

/* Build the sandbox every context will build for (policy, catalog) with
 * these limits, and close it. Done once at open and at each reload, so a
 * pair that cannot run together (a policy over its memory limit once the
 * catalog's offer tables are in its state, say) is refused there with the
 * reason, instead of serving fallbacks on every decision. */
static int trial(nbx_policy *policy, nbx_catalog *catalog, const nbx_limits *limits, nbx_err *e)
{
    nbx_sandbox *sb = NULL;
    int rc = nbx_sandbox_open(policy, catalog, limits, &sb, e);
    nbx_sandbox_close(sb);
    return rc;
}

/* Install a new snapshot built from the current one with one part replaced
 * (exactly one of policy, catalog is given), after a trial of the new part
 * with the current other part. The trial runs outside the lock; if another
 * reload swapped the other part meanwhile, it runs again with that one. */
static int engine_swap(nbx_engine *e, nbx_policy *policy, nbx_catalog *catalog, nbx_err *err)
{
    for (;;) {
        nbx_snapshot *cur = nbx_engine_snapshot(e);
        int rc =
            trial(policy ? policy : cur->policy, catalog ? catalog : cur->catalog, &e->limits, err);
        if (rc) {
            nbx_snapshot_unref(cur);
            return rc;
        }
        pthread_mutex_lock(&e->lock);
        nbx_snapshot *old = e->current;
        bool other_changed = policy ? old->catalog != cur->catalog : old->policy != cur->policy;
        nbx_snapshot_unref(cur); /* e->current or our ref keeps old alive */
        if (other_changed) {
            pthread_mutex_unlock(&e->lock);
            continue;
        }
        nbx_snapshot *s = snapshot_new(policy ? policy : old->policy,
                                       catalog ? catalog : old->catalog, old->generation + 1);
        if (!s) {
            pthread_mutex_unlock(&e->lock);
            return nbx_err_set(err, NBX_ENOMEM, "out of memory");
        }
        e->current = s;
        atomic_store_explicit(&e->generation, s->generation, memory_order_release);
        pthread_mutex_unlock(&e->lock);
        nbx_snapshot_unref(old);
        return NBX_OK;
    }
}

void nbx_engine_log(nbx_engine *e, int level, const char *fmt, ...)
{
    if (!e->log)
        return;
    char raw[1024], msg[1024 * 4 + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    /* Messages carry outside text (a policy's name and error messages, a
     * customer id, a path): escaped as every message is (nbx_escape_text:
     * C0 and C1 controls, DEL, invalid UTF-8), so neither a policy nor a
     * request can forge log lines or drive a terminal. */
    nbx_escape_text(msg, sizeof msg, raw, strlen(raw));
    e->log(e->log_ud, level, msg);
}

/* ========================================================================
 * Public calls
 * ======================================================================== */

NBX_API void nbx_engine_options_init(nbx_engine_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->time_limit_us = NBX_DEFAULT_TIME_LIMIT_US;
    o->memory_limit = NBX_DEFAULT_MEMORY_LIMIT;
}

void nbx_engine_fill_info(nbx_engine_info *info, const nbx_policy *policy,
                          const nbx_catalog *catalog)
{
    memset(info, 0, sizeof *info);
    snprintf(info->policy_name, sizeof info->policy_name, "%s", policy->name);
    memcpy(info->policy_version, policy->version_hex, sizeof info->policy_version);
    memcpy(info->catalog_version, catalog->version_hex, sizeof info->catalog_version);
    info->offers = catalog->n_offers;
    info->placements = catalog->n_placements;
}

/* The caller's options, completed: an older caller's smaller struct (its
 * size field) gets zeros for the fields added since. */
static int engine_options(const nbx_engine_options *in, const char *fn, nbx_engine_options *o)
{
    if (!in)
        return nbx_fail(NULL, NBX_EINVAL, "%s: options are required", fn);
    if (in->size < offsetof(nbx_engine_options, catalog_text))
        return nbx_fail(NULL, NBX_EINVAL,
                        "%s: options.size is %zu, expected %zu (call nbx_engine_options_init)", fn,
                        in->size, sizeof *o);
    memset(o, 0, sizeof *o);
    memcpy(o, in, in->size < sizeof *o ? in->size : sizeof *o);
    if (!o->catalog || !o->policy)
        return nbx_fail(NULL, NBX_EINVAL,
                        "%s: catalog and policy are required (file paths, or names with "
                        "catalog_text and policy_text)",
                        fn);
    nbx_err e = {0};
    if (nbx_event_skew(o->event_max_skew_ms, &o->event_max_skew_ms, &e) != NBX_OK)
        return nbx_fail(NULL, NBX_EINVAL, "%s: event_max_skew_ms: %s", fn, e.msg);
    return NBX_OK;
}

static void engine_limits(const nbx_engine_options *o, nbx_limits *l)
{
    memset(l, 0, sizeof *l);
    l->time_us = o->time_limit_us ? o->time_limit_us : NBX_DEFAULT_TIME_LIMIT_US;
    l->memory = o->memory_limit ? o->memory_limit : NBX_DEFAULT_MEMORY_LIMIT;
}

/* Catalog and policy from their files or from the texts given, then the
 * trial of the pair with these limits. */
static int load_pair(const nbx_engine_options *o, const nbx_limits *limits, nbx_catalog **catalog,
                     nbx_policy **policy, nbx_err *err)
{
    *catalog = NULL;
    *policy = NULL;
    int rc = o->catalog_text
                 ? nbx_catalog_load_text(o->catalog, o->catalog_text, o->catalog_len, catalog, err)
                 : nbx_catalog_load(o->catalog, catalog, err);
    if (rc == NBX_OK)
        rc = o->policy_text
                 ? nbx_policy_load_text(o->policy, o->policy_text, o->policy_len, policy, err)
                 : nbx_policy_load(o->policy, policy, err);
    if (rc == NBX_OK)
        rc = trial(*policy, *catalog, limits, err);
    if (rc) {
        nbx_policy_unref(*policy);
        nbx_catalog_unref(*catalog);
        *catalog = NULL;
        *policy = NULL;
    }
    return rc;
}

NBX_API int nbx_engine_open(const nbx_engine_options *opts, nbx_engine **out)
{
    if (out)
        *out = NULL;
    nbx_engine_options o;
    int rc = engine_options(opts, "nbx_engine_open", &o);
    if (rc)
        return rc;
    if (!out)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_engine_open: out is NULL");
    bool no_store = o.flags & NBX_ENGINE_NO_STORE;
    if (!no_store && !o.store && !o.store_handle)
        return nbx_fail(NULL, NBX_EINVAL,
                        "nbx_engine_open: store or store_handle is required (or "
                        "NBX_ENGINE_NO_STORE)");
    if (o.flags & ~(unsigned)(NBX_ENGINE_READONLY | NBX_ENGINE_NO_STORE))
        return nbx_fail(NULL, NBX_EINVAL, "nbx_engine_open: unknown flags 0x%x", o.flags);
    nbx_engine *e = calloc(1, sizeof *e);
    if (!e)
        return nbx_fail(NULL, NBX_ENOMEM, "out of memory");
    pthread_mutex_init(&e->lock, NULL);
    engine_limits(&o, &e->limits);
    e->flags = o.flags;
    e->event_max_skew_ms = o.event_max_skew_ms;
    e->log = o.log;
    e->log_ud = o.log_ud;

    nbx_err err = {0};
    nbx_catalog *catalog = NULL;
    nbx_policy *policy = NULL;
    if (no_store) {
        e->store = NULL;
    } else if (o.store_handle) {
        e->store = o.store_handle;
    } else {
        unsigned sflags = (o.flags & NBX_ENGINE_READONLY) ? NBX_STORE_READONLY : 0;
        rc = nbx_store_open(o.store, sflags, &e->store);
        if (rc)
            nbx_err_set(&err, rc, "%s", nbx_last_errmsg());
        e->own_store = true;
    }
    if (rc == NBX_OK)
        rc = load_pair(&o, &e->limits, &catalog, &policy, &err);
    if (rc == NBX_OK && !(e->current = snapshot_new(policy, catalog, 1)))
        rc = nbx_err_set(&err, NBX_ENOMEM, "out of memory");
    nbx_policy_unref(policy);
    nbx_catalog_unref(catalog);
    if (rc) {
        nbx_engine_close(e);
        return nbx_publish(NULL, &err);
    }
    atomic_init(&e->generation, 1);
    *out = e;
    return NBX_OK;
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
    /* Running the top level in a sandbox names the policy. */
    rc = trial(p, NULL, NULL, &e);
    if (rc == NBX_OK && info) {
        memcpy(info->policy_name, p->name, sizeof info->policy_name);
        memcpy(info->policy_version, p->version_hex, sizeof info->policy_version);
    }
    nbx_policy_unref(p);
    if (rc != NBX_OK)
        return nbx_publish(NULL, &e);
    nbx_clear_error(NULL);
    return NBX_OK;
}

NBX_API void nbx_engine_close(nbx_engine *e)
{
    if (!e)
        return;
    nbx_snapshot_unref(e->current);
    if (e->own_store)
        nbx_store_close(e->store);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

NBX_API const char *nbx_engine_errmsg(const nbx_engine *e)
{
    return nbx_errmsg_of(e);
}

NBX_API int nbx_engine_load_policy(nbx_engine *e, const char *path)
{
    if (!e || !path)
        return nbx_fail(e, NBX_EINVAL, "nbx_engine_load_policy: NULL argument");
    nbx_err err = {0};
    nbx_policy *p;
    int rc = nbx_policy_load(path, &p, &err);
    if (rc == NBX_OK)
        rc = engine_swap(e, p, NULL, &err);
    if (rc == NBX_OK)
        nbx_engine_log(e, NBX_LOG_INFO, "policy %s loaded: %s version %s", path, p->name,
                       p->version_hex);
    else
        nbx_engine_log(e, NBX_LOG_ERROR, "policy %s rejected, the current one keeps serving: %s",
                       path, err.msg);
    nbx_policy_unref(p);
    return rc ? nbx_publish(e, &err) : NBX_OK;
}

NBX_API int nbx_engine_load_catalog(nbx_engine *e, const char *path)
{
    if (!e || !path)
        return nbx_fail(e, NBX_EINVAL, "nbx_engine_load_catalog: NULL argument");
    nbx_err err = {0};
    nbx_catalog *c;
    int rc = nbx_catalog_load(path, &c, &err);
    if (rc == NBX_OK)
        rc = engine_swap(e, NULL, c, &err);
    if (rc == NBX_OK)
        nbx_engine_log(e, NBX_LOG_INFO, "catalog %s loaded: version %s, %u offers", path,
                       c->version_hex, c->n_offers);
    else
        nbx_engine_log(e, NBX_LOG_ERROR, "catalog %s rejected, the current one keeps serving: %s",
                       path, err.msg);
    nbx_catalog_unref(c);
    return rc ? nbx_publish(e, &err) : NBX_OK;
}

NBX_API int nbx_engine_info_get(nbx_engine *e, nbx_engine_info *info)
{
    if (!e || !info)
        return nbx_fail(e, NBX_EINVAL, "nbx_engine_info_get: NULL argument");
    nbx_snapshot *s = nbx_engine_snapshot(e);
    nbx_engine_fill_info(info, s->policy, s->catalog);
    nbx_snapshot_unref(s);
    return NBX_OK;
}

NBX_API nbx_store *nbx_engine_store(nbx_engine *e)
{
    return e ? e->store : NULL;
}
