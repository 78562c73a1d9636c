/*
 * trial.c: a policy tried on synthetic customers before it serves.
 *
 * A policy that loads can still fail for some customers only: it compares a
 * missing attribute with a number, indexes the RFM of a prospect, returns a
 * string for one segment. Such failures used to pass `nbx policy check`,
 * `nginx -t` and a reload, then fall back for a share of real customers. A
 * trial decides, in memory, for customers built to cover the catalog: an
 * anonymous visitor, a known customer with an empty profile, one per RFM
 * segment, every consent granted and refused, propensities for every offer
 * and category and none, LTV and churn at both ends, each declared channel.
 * Any fallback fails the trial, naming the customer, FILE:LINE and the
 * reason.
 */
#include "nbx_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRIAL_PREFIX "nbx-trial:"
/* Reasons listed in the message; the counts cover every fallback. */
#define TRIAL_REASONS_MAX 8

typedef struct trial_case {
    char label[64];
    nbx_buf profile;     /* JSON, or empty for the anonymous visitor */
    const char *channel; /* the session's channel, or NULL */
} trial_case;

typedef struct trial_set {
    trial_case *cases;
    size_t n, cap;
} trial_set;

static trial_case *trial_add(trial_set *t, const char *label)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 32;
        trial_case *c = realloc(t->cases, cap * sizeof *c);
        if (!c)
            return NULL;
        t->cases = c;
        t->cap = cap;
    }
    trial_case *c = &t->cases[t->n++];
    memset(c, 0, sizeof *c);
    snprintf(c->label, sizeof c->label, "%s", label);
    return c;
}

static void trial_free(trial_set *t)
{
    for (size_t i = 0; i < t->n; i++)
        nbx_buf_free(&t->cases[i].profile);
    free(t->cases);
}

/* {"id":"nbx-trial:LABEL" ... (the caller closes the object). */
static nbx_buf *trial_profile(trial_set *t, const char *label)
{
    trial_case *c = trial_add(t, label);
    if (!c)
        return NULL;
    char id[96];
    snprintf(id, sizeof id, TRIAL_PREFIX "%s", label);
    nbx_buf_puts(&c->profile, "{\"id\":");
    nbx_jw_string(&c->profile, id, strlen(id));
    return &c->profile;
}

/* A purchase history that the segment could come from. */
static void trial_rfm(nbx_buf *b, int segment)
{
    static const struct {
        int r, f, m;
    } scores[NBX_SEGMENT_COUNT] = {
        [NBX_SEGMENT_CHAMPIONS] = {5, 5, 5},   [NBX_SEGMENT_LOYAL] = {4, 4, 4},
        [NBX_SEGMENT_POTENTIAL] = {4, 2, 3},   [NBX_SEGMENT_NEW] = {5, 1, 1},
        [NBX_SEGMENT_PROMISING] = {4, 1, 2},   [NBX_SEGMENT_NEEDS_ATTENTION] = {3, 3, 3},
        [NBX_SEGMENT_AT_RISK] = {2, 4, 4},     [NBX_SEGMENT_CANT_LOSE] = {1, 5, 5},
        [NBX_SEGMENT_HIBERNATING] = {2, 2, 2}, [NBX_SEGMENT_LOST] = {1, 1, 1},
    };
    if (segment == NBX_SEGMENT_PROSPECT) {
        nbx_buf_puts(b, ",\"rfm\":{\"orders\":0,\"segment\":\"prospect\"}");
        return;
    }
    nbx_buf_printf(b,
                   ",\"rfm\":{\"first_purchase\":\"2024-03-01T10:00:00Z\","
                   "\"last_purchase\":\"2025-11-20T18:30:00Z\",\"orders\":%d,\"revenue\":%d,"
                   "\"margin\":%d,\"r\":%d,\"f\":%d,\"m\":%d,\"segment\":\"%s\"}",
                   scores[segment].f * 3, scores[segment].m * 150, scores[segment].m * 40,
                   scores[segment].r, scores[segment].f, scores[segment].m,
                   nbx_segment_name(segment));
}

/* {"purpose": granted, ...} over the catalog's purposes and the
 * personalisation purpose. */
static void trial_consents(nbx_buf *b, const nbx_catalog *cat, bool granted)
{
    nbx_buf_puts(b, ",\"consent\":{");
    bool first = true;
    bool has_personalization = false;
    for (uint32_t k = 0; k < cat->n_purposes; k++) {
        if (!first)
            nbx_buf_putc(b, ',');
        first = false;
        nbx_jw_sv(b, cat->purposes[k]);
        nbx_buf_puts(b, granted ? ":true" : ":false");
        if (nbx_sv_eq_cstr(cat->purposes[k], "personalization"))
            has_personalization = true;
    }
    if (!has_personalization) {
        nbx_buf_puts(b, first ? "" : ",");
        nbx_buf_puts(b, granted ? "\"personalization\":true" : "\"personalization\":false");
    }
    nbx_buf_putc(b, '}');
}

/* A propensity for every offer and category (within NBX_MAP_MAX). */
static void trial_propensities(nbx_buf *b, const nbx_catalog *cat, double value)
{
    nbx_buf_puts(b, ",\"propensity\":{");
    size_t n = 0;
    for (uint32_t k = 0; k < cat->n_offers && n < NBX_MAP_MAX; k++, n++) {
        if (n)
            nbx_buf_putc(b, ',');
        nbx_jw_sv(b, cat->offers[k].id);
        nbx_buf_putc(b, ':');
        nbx_jw_number(b, value);
    }
    for (uint32_t k = 0; k < cat->n_categories && n < NBX_MAP_MAX; k++, n++) {
        if (nbx_catalog_offer(cat, cat->categories[k])) {
            n--; /* a category named like an offer: the key is there already */
            continue;
        }
        if (n)
            nbx_buf_putc(b, ',');
        nbx_jw_sv(b, cat->categories[k]);
        nbx_buf_putc(b, ':');
        nbx_jw_number(b, value);
    }
    nbx_buf_putc(b, '}');
}

static int trial_build(trial_set *t, const nbx_catalog *cat)
{
    nbx_buf *b;
    if (!trial_add(t, "anonymous visitor"))
        return NBX_ENOMEM;
    if ((b = trial_profile(t, "empty profile")))
        nbx_buf_putc(b, '}');
    for (int s = NBX_SEGMENT_CHAMPIONS; s < NBX_SEGMENT_COUNT && b; s++) {
        char label[64];
        snprintf(label, sizeof label, "segment %s", nbx_segment_name(s));
        if ((b = trial_profile(t, label))) {
            /* consenting, so the policy sees the segment */
            trial_consents(b, cat, true);
            trial_rfm(b, s);
            nbx_buf_putc(b, '}');
        }
    }
    if (b && (b = trial_profile(t, "every consent granted"))) {
        trial_consents(b, cat, true);
        nbx_buf_putc(b, '}');
    }
    if (b && (b = trial_profile(t, "every consent refused"))) {
        trial_consents(b, cat, false);
        nbx_buf_putc(b, '}');
    }
    if (b && (b = trial_profile(t, "propensities for every offer"))) {
        trial_consents(b, cat, true);
        trial_propensities(b, cat, 0.35);
        nbx_buf_putc(b, '}');
    }
    if (b && (b = trial_profile(t, "propensities of 0 and 1"))) {
        trial_consents(b, cat, true);
        trial_propensities(b, cat, 0);
        nbx_buf_putc(b, '}');
    }
    if (b && (b = trial_profile(t, "high ltv and churn"))) {
        trial_consents(b, cat, true);
        nbx_buf_puts(b, ",\"ltv\":25000,\"churn\":1");
        trial_rfm(b, NBX_SEGMENT_AT_RISK);
        nbx_buf_putc(b, '}');
    }
    if (b && (b = trial_profile(t, "zero ltv and churn"))) {
        trial_consents(b, cat, true);
        nbx_buf_puts(b, ",\"ltv\":0,\"churn\":0");
        nbx_buf_putc(b, '}');
    }
    if (b && (b = trial_profile(t, "every field"))) {
        trial_consents(b, cat, true);
        trial_propensities(b, cat, 0.5);
        nbx_buf_puts(b, ",\"ltv\":300,\"churn\":0.3");
        trial_rfm(b, NBX_SEGMENT_LOYAL);
        nbx_buf_putc(b, '}');
    }
    /* Every declared channel, with a customer who consents to everything
     * (the channel's consent then lets every offer through). */
    for (uint32_t k = 0; b && k < cat->n_channels; k++) {
        char label[64];
        snprintf(label, sizeof label, "channel %.40s", cat->channels[k].name.ptr);
        if ((b = trial_profile(t, label))) {
            trial_consents(b, cat, true);
            nbx_buf_putc(b, '}');
            t->cases[t->n - 1].channel = cat->channels[k].name.ptr;
        }
    }
    if (!b)
        return NBX_ENOMEM;
    for (size_t i = 0; i < t->n; i++) {
        nbx_buf_terminate(&t->cases[i].profile);
        if (t->cases[i].profile.oom)
            return NBX_ENOMEM;
    }
    return NBX_OK;
}

/* ------------------------------------------------------------------------
 * Running it
 * ------------------------------------------------------------------------ */

typedef struct trial_reason {
    char text[384]; /* "FILE:LINE: reason" */
    char first[64]; /* the first customer it happened to */
    unsigned count;
} trial_reason;

typedef struct trial_tally {
    trial_reason reasons[TRIAL_REASONS_MAX];
    size_t n_reasons;
    unsigned fallbacks, other; /* other: reasons beyond the list */
} trial_tally;

static void tally(trial_tally *t, const char *label, const nbx_result *r)
{
    nbx_fault f;
    if (nbx_result_fault(r, &f) != NBX_OK)
        return;
    t->fallbacks++;
    char text[384];
    snprintf(text, sizeof text, "%s%s%s", f.where, f.where[0] ? ": " : "", f.reason);
    for (size_t i = 0; i < t->n_reasons; i++) {
        if (strcmp(t->reasons[i].text, text) == 0) {
            t->reasons[i].count++;
            return;
        }
    }
    if (t->n_reasons == TRIAL_REASONS_MAX) {
        t->other++;
        return;
    }
    trial_reason *x = &t->reasons[t->n_reasons++];
    snprintf(x->text, sizeof x->text, "%s", text);
    snprintf(x->first, sizeof x->first, "%s", label);
    x->count = 1;
}

static int trial_report(const trial_tally *t, size_t customers, const char *path, nbx_err *e)
{
    char msg[NBX_ERRMSG_MAX];
    size_t n = (size_t)snprintf(msg, sizeof msg,
                                "%s: the policy fell back for %u of %zu trial customers: ", path,
                                t->fallbacks, customers);
    for (size_t i = 0; i < t->n_reasons && n < sizeof msg; i++)
        n += (size_t)snprintf(msg + n, sizeof msg - n, "%s%s (%u, first: %s)", i ? "; " : "",
                              t->reasons[i].text, t->reasons[i].count, t->reasons[i].first);
    if (t->other && n < sizeof msg)
        snprintf(msg + n, sizeof msg - n, "; and %u more", t->other);
    return nbx_err_set(e, NBX_EPOLICY, "%s", msg);
}

/* Every trial customer on the context's policy (or the one forced). */
static int trial_cases(nbx_ctx *ctx, const trial_set *set, trial_tally *t, nbx_trial_fn fn,
                       void *ud, nbx_err *e)
{
    for (size_t i = 0; i < set->n; i++) {
        const trial_case *c = &set->cases[i];
        char id[96];
        snprintf(id, sizeof id, TRIAL_PREFIX "%s", c->label);
        nbx_request req;
        nbx_request_init(&req);
        req.customer = id;
        if (c->profile.len) {
            req.profile_json = c->profile.data;
            req.profile_len = c->profile.len;
        }
        nbx_kv channel = {"channel", c->channel};
        if (c->channel) {
            req.session = &channel;
            req.n_session = 1;
        }
        const nbx_result *r;
        int rc = nbx_decide(ctx, &req, &r);
        if (rc != NBX_OK)
            return nbx_err_set(e, rc, "trial customer '%s': %s", c->label, nbx_ctx_errmsg(ctx));
        tally(t, c->label, r);
        if (fn)
            fn(ud, c->label, r);
    }
    return NBX_OK;
}

/* With a deployment, every arm's policy and every shadow's is tried on
 * every trial customer (whatever their arm would be), one after another;
 * the first that falls back fails the trial, named in the message. */
int nbx_trial_run(nbx_engine *engine, nbx_trial_fn fn, void *ud, nbx_err *e)
{
    nbx_snapshot *snap = nbx_engine_snapshot(engine);
    const nbx_deployment *d = snap->deployment;
    trial_set set = {0};
    int rc = trial_build(&set, snap->catalog);
    nbx_ctx *ctx = NULL;
    if (rc != NBX_OK) {
        nbx_err_set(e, rc, "out of memory building the trial customers");
    } else if ((rc = nbx_ctx_open(engine, &ctx)) != NBX_OK) {
        nbx_err_set(e, rc, "%s", nbx_last_errmsg());
    }
    uint32_t n_policies = d ? nbx_snapshot_policy_count(snap) : 1;
    for (uint32_t k = 0; rc == NBX_OK && k < n_policies; k++) {
        trial_tally t = {0};
        if (d)
            nbx_ctx_force_policy(ctx, (int)k);
        rc = trial_cases(ctx, &set, &t, fn, ud, e);
        if (rc == NBX_OK && t.fallbacks) {
            rc = trial_report(&t, set.n, nbx_snapshot_policy_at(snap, k)->path, e);
            if (d && k < d->n_arms)
                nbx_err_prefix(e, "%s: arm '%s': ", d->path, d->arms[k].name);
            else if (d)
                nbx_err_prefix(e, "%s: shadow[%u]: ", d->path, k - d->n_arms);
        }
    }
    nbx_ctx_close(ctx);
    trial_free(&set);
    nbx_snapshot_unref(snap);
    return rc;
}

NBX_API int nbx_engine_trial(nbx_engine *engine, nbx_trial_fn fn, void *ud)
{
    if (!engine)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_engine_trial: engine is NULL");
    nbx_err e = {0};
    int rc = nbx_trial_run(engine, fn, ud, &e);
    if (rc != NBX_OK)
        return nbx_publish(engine, &e);
    nbx_clear_error(engine);
    return NBX_OK;
}

NBX_API int nbx_engine_check(const nbx_engine_options *opts, nbx_engine_info *info)
{
    if (!opts)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_engine_check: options are required");
    if (opts->size < offsetof(nbx_engine_options, catalog_text))
        return nbx_fail(NULL, NBX_EINVAL,
                        "nbx_engine_check: options.size is %zu, expected %zu (call "
                        "nbx_engine_options_init)",
                        opts->size, sizeof *opts);
    /* What nbx_engine_open() would load, without touching a store, then
     * the trial of the pair. */
    nbx_engine_options o;
    memset(&o, 0, sizeof o);
    memcpy(&o, opts, opts->size < sizeof o ? opts->size : sizeof o);
    o.size = sizeof o;
    o.flags = (o.flags & ~(unsigned)NBX_ENGINE_READONLY) | NBX_ENGINE_NO_STORE;
    o.store = NULL;
    o.store_handle = NULL;
    o.log = NULL;
    nbx_engine *engine;
    int rc = nbx_engine_open(&o, &engine);
    if (rc != NBX_OK) {
        /* Messages read as nbx_engine_check's, not nbx_engine_open's. */
        nbx_err e = {0};
        const char *m = nbx_last_errmsg();
        if (strncmp(m, "nbx_engine_open:", 16) == 0)
            nbx_err_set(&e, rc, "nbx_engine_check:%s", m + 16);
        else
            nbx_err_set(&e, rc, "%s", m);
        return nbx_publish(NULL, &e);
    }
    nbx_err e = {0};
    rc = nbx_trial_run(engine, NULL, NULL, &e);
    if (rc == NBX_OK && info) {
        nbx_snapshot *s = nbx_engine_snapshot(engine);
        nbx_engine_fill_info(info, s->policy, s->catalog);
        nbx_snapshot_unref(s);
    }
    nbx_engine_close(engine);
    if (rc != NBX_OK)
        return nbx_publish(NULL, &e);
    nbx_clear_error(NULL);
    return NBX_OK;
}
