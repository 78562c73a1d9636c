/*
 * decide.c: decision contexts and the decision pipeline.
 *
 *   request -> profile (store) -> candidates (catalog) -> eligibility (caps)
 *   -> policy (sandbox) -> guardrails (caps) -> arbitration -> result
 *
 * A context owns everything a decision touches: a read transaction (renewed
 * per decision, reset after, never held idle), a Lua sandbox for the current
 * (policy, catalog) snapshot, per-offer state arrays and an arena. A steady
 * stream of decisions allocates nothing once these have grown.
 */
#include "nbx_int.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* A candidate's rank as two integers, so ranking compares integers only:
 * key orders scores (IEEE bits mapped to an order-preserving unsigned), tie
 * prefers the lower offer index (id order), then the earlier placement. */
struct rank_entry {
    uint64_t key;
    uint32_t tie;
    uint32_t cand;
};

/* A sandbox per policy of the snapshot (nbx_snapshot_policy_at: the policy,
 * or each arm's then each shadow's), and why one could not be built. */
typedef struct ctx_sandbox {
    nbx_sandbox *sb;
    int rc;
    char err[NBX_ERRMSG_MAX];
} ctx_sandbox;

/* Where arbitration puts its actions: the served decision's (the result) or
 * a shadow policy's. Only the served decision counts against a planning
 * batch's budgets. */
typedef struct choice_set {
    nbx_action *actions;
    size_t cap;
    size_t *n;
    double *expected_margin;
    bool plan;
} choice_set;

struct nbx_ctx {
    nbx_engine *engine;
    nbx_snapshot *snap;
    ctx_sandbox *sandboxes;
    uint32_t n_sandboxes;
    int force; /* trials: the arm every decision runs (-1: assignment's) */
    /* which arms kills keep from serving (NULL: none); see choose_policy */
    nbx_arm_killed_fn arm_killed;
    void *arm_killed_ud;
    nbx_caps caps;
    nbx_kills kills; /* the store's, as of the last decision's snapshot */
    MDB_txn *txn;
    nbx_arena arena;
    nbx_buf scratch;
    /* per catalog: sized at snapshot switch */
    nbx_candidate *cand;
    struct rank_entry *ranked;    /* arbitration: one heap per placement */
    uint32_t *heap_at, *heap_len; /* per placement: its heap in ranked */
    size_t cand_cap;
    uint8_t *offer_used;
    uint32_t *slots_left; /* per placement */
    uint8_t *placement_wanted;
    uint32_t channel;            /* the request's channel purpose (nbx_catalog_channel) */
    const nbx_budget_plan *plan; /* a planning batch's budgets (nbx_ctx_plan_budgets) */
    nbx_action *actions;
    uint8_t *misfit; /* per action: why recording it was refused (record.c) */
    size_t actions_cap;
    /* shadow policies: the candidates after eligibility (their common
     * input), a working copy, and each one's actions and outcome */
    nbx_candidate *shadow_base, *shadow_cand;
    nbx_action *shadow_actions; /* actions_cap per shadow */
    nbx_shadow_result *shadows;
    uint32_t shadows_cap;
    nbx_result result;
    nbx_tally tally; /* decisions per arm, not yet in the store's counters */
    nbx_err err;
    uint64_t rng[2]; /* decision ids */
    int64_t last_log_us, last_shadow_log_us;
    uint32_t suppressed_logs, suppressed_shadow_logs;
};

/* ========================================================================
 * Context lifetime
 * ======================================================================== */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void free_catalog_arrays(nbx_ctx *c)
{
    free(c->cand);
    free(c->ranked);
    free(c->heap_at);
    free(c->offer_used);
    free(c->slots_left);
    free(c->placement_wanted);
    free(c->actions);
    free(c->shadow_base);
    free(c->shadow_cand);
    free(c->shadow_actions);
    free(c->shadows);
    c->shadow_base = c->shadow_cand = NULL;
    c->shadow_actions = NULL;
    c->shadows = NULL;
    c->shadows_cap = 0;
    free(c->misfit);
    c->cand = NULL;
    c->ranked = NULL;
    c->heap_at = c->heap_len = NULL;
    c->offer_used = NULL;
    c->slots_left = NULL;
    c->placement_wanted = NULL;
    c->actions = NULL;
    c->misfit = NULL;
    c->cand_cap = c->actions_cap = 0;
    nbx_caps_free(&c->caps);
}

static int alloc_catalog_arrays(nbx_ctx *c, const nbx_catalog *cat)
{
    size_t n = 0, slots = 0;
    for (uint32_t p = 0; p < cat->n_placements; p++) {
        n += cat->placements[p].n_offers;
        slots += cat->placements[p].slots + cat->placements[p].n_fallback;
    }
    n = n ? n : 1;
    c->cand = calloc(n, sizeof *c->cand);
    c->ranked = calloc(n, sizeof *c->ranked);
    c->heap_at = calloc(2 * (size_t)cat->n_placements + 1, sizeof *c->heap_at);
    c->heap_len = c->heap_at ? c->heap_at + cat->n_placements : NULL;
    c->offer_used = calloc(cat->n_offers ? cat->n_offers : 1, 1);
    c->slots_left = calloc(cat->n_placements, sizeof *c->slots_left);
    c->placement_wanted = calloc(cat->n_placements, 1);
    c->actions = calloc(slots ? slots : 1, sizeof *c->actions);
    c->misfit = calloc(slots ? slots : 1, sizeof *c->misfit);
    c->cand_cap = n;
    c->actions_cap = slots;
    if (!c->cand || !c->ranked || !c->heap_at || !c->offer_used || !c->slots_left ||
        !c->placement_wanted || !c->actions || !c->misfit ||
        nbx_caps_init(&c->caps, cat) != NBX_OK) {
        free_catalog_arrays(c);
        return NBX_ENOMEM;
    }
    return NBX_OK;
}

/* The arrays shadow policies decide in, sized for the catalog and the
 * deployment's shadows. */
static int alloc_shadow_arrays(nbx_ctx *c, uint32_t n_shadow)
{
    if (n_shadow <= c->shadows_cap)
        return NBX_OK;
    free(c->shadow_base);
    free(c->shadow_cand);
    free(c->shadow_actions);
    free(c->shadows);
    c->shadow_base = calloc(c->cand_cap, sizeof *c->shadow_base);
    c->shadow_cand = calloc(c->cand_cap, sizeof *c->shadow_cand);
    c->shadow_actions =
        calloc((c->actions_cap ? c->actions_cap : 1) * n_shadow, sizeof *c->shadow_actions);
    c->shadows = calloc(n_shadow, sizeof *c->shadows);
    c->shadows_cap = n_shadow;
    if (!c->shadow_base || !c->shadow_cand || !c->shadow_actions || !c->shadows) {
        c->shadows_cap = 0;
        return NBX_ENOMEM;
    }
    return NBX_OK;
}

static void close_sandboxes(nbx_ctx *c)
{
    for (uint32_t i = 0; i < c->n_sandboxes; i++)
        nbx_sandbox_close(c->sandboxes[i].sb);
    free(c->sandboxes);
    c->sandboxes = NULL;
    c->n_sandboxes = 0;
}

/* A sandbox for each policy of the snapshot. One that cannot be built
 * leaves its reason: its decisions fall back (nbx_ctx_open refuses a
 * serving policy's; a shadow's reports it in its results). */
static int open_sandboxes(nbx_ctx *c, nbx_snapshot *s)
{
    close_sandboxes(c);
    uint32_t n = nbx_snapshot_policy_count(s);
    c->sandboxes = calloc(n, sizeof *c->sandboxes);
    if (!c->sandboxes)
        return NBX_ENOMEM;
    c->n_sandboxes = n;
    for (uint32_t i = 0; i < n; i++) {
        ctx_sandbox *x = &c->sandboxes[i];
        nbx_policy *pol = nbx_snapshot_policy_at(s, i);
        nbx_err serr = {0};
        x->rc = nbx_sandbox_open(pol, s->catalog, &c->engine->limits, &x->sb, &serr);
        snprintf(x->err, sizeof x->err, "%s", serr.msg);
        if (x->rc)
            nbx_engine_log(c->engine, NBX_LOG_ERROR, "policy %s: %s", pol->name, serr.msg);
    }
    return NBX_OK;
}

/* Move the context to the engine's current snapshot if it changed. */
static int ctx_refresh(nbx_ctx *c, nbx_err *e)
{
    nbx_engine *eng = c->engine;
    uint64_t gen = atomic_load_explicit(&eng->generation, memory_order_acquire);
    if (c->snap && c->snap->generation == gen)
        return NBX_OK;
    nbx_snapshot *s = nbx_engine_snapshot(eng);
    bool catalog_changed = !c->snap || c->snap->catalog != s->catalog;
    bool policy_changed =
        !c->snap || c->snap->policy != s->policy || c->snap->deployment != s->deployment;
    if (catalog_changed) {
        free_catalog_arrays(c);
        if (alloc_catalog_arrays(c, s->catalog) != NBX_OK) {
            nbx_snapshot_unref(s);
            return nbx_err_set(e, NBX_ENOMEM, "out of memory sizing for the catalog");
        }
        c->caps.plan = c->plan && c->plan->catalog == s->catalog ? c->plan : NULL;
    }
    int rc = NBX_OK;
    if (s->deployment && s->deployment->n_shadow)
        rc = alloc_shadow_arrays(c, s->deployment->n_shadow);
    if (rc == NBX_OK && (catalog_changed || policy_changed || !c->sandboxes))
        rc = open_sandboxes(c, s);
    if (rc) {
        /* keep nothing of s: the next decision tries again */
        free_catalog_arrays(c);
        close_sandboxes(c);
        nbx_snapshot_unref(c->snap);
        c->snap = NULL;
        nbx_snapshot_unref(s);
        return nbx_err_set(e, NBX_ENOMEM, "out of memory opening the policies' sandboxes");
    }
    nbx_snapshot_unref(c->snap);
    c->snap = s;
    return NBX_OK;
}

static bool arm_killed(void *ud, const nbx_arm *arm); /* the kills' hook (Deployments) */

NBX_API int nbx_ctx_open(nbx_engine *engine, nbx_ctx **out)
{
    if (out)
        *out = NULL;
    if (!engine || !out)
        return nbx_fail(engine, NBX_EINVAL, "nbx_ctx_open: NULL argument");
    nbx_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return nbx_fail(engine, NBX_ENOMEM, "out of memory");
    c->engine = engine;
    uint64_t seed[2] = {0, 0};
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uintptr_t)c;
    }
    c->rng[0] = seed[0];
    c->rng[1] = seed[1];
    c->force = -1;
    c->arm_killed = arm_killed;
    c->arm_killed_ud = c;
    nbx_err e = {0};
    int rc = ctx_refresh(c, &e);
    /* the policies that serve must run; a shadow that cannot only reports
     * it in its results (it never affects what is served) */
    uint32_t serving =
        c->snap && c->snap->deployment ? c->snap->deployment->n_arms : c->n_sandboxes;
    for (uint32_t i = 0; rc == NBX_OK && i < serving; i++)
        if (c->sandboxes[i].rc)
            rc = nbx_err_set(&e, c->sandboxes[i].rc, "%s", c->sandboxes[i].err);
    if (rc == NBX_OK && engine->store) {
        rc = nbx_store_read_begin(engine->store, &c->txn, &e);
        if (rc == NBX_OK)
            mdb_txn_reset(c->txn); /* hold no snapshot while idle */
    }
    if (rc) {
        nbx_ctx_close(c);
        return nbx_publish(engine, &e);
    }
    *out = c;
    return NBX_OK;
}

void nbx_ctx_plan_budgets(nbx_ctx *c, const nbx_budget_plan *plan)
{
    c->plan = plan;
    c->caps.plan = plan && c->snap && plan->catalog == c->snap->catalog ? plan : NULL;
}

/* Write the context's per-arm counts (tally.c), where the canary abort
 * rules are judged. A failure does not fail the decision: it is logged, and
 * the counts wait for the next flush. */
static void flush_tally(nbx_ctx *c)
{
    nbx_err e = {0};
    const nbx_deployment *d = c->snap ? c->snap->deployment : NULL;
    if (nbx_tally_flush(&c->tally, c->engine->store, d, nbx_time_now(), &e) != NBX_OK)
        nbx_engine_log(c->engine, NBX_LOG_WARN,
                       "per-arm counters not written yet (kept for the next flush): %s", e.msg);
    for (uint32_t i = 0; i < c->tally.aborted_n; i++)
        nbx_engine_log(c->engine, NBX_LOG_WARN, "deployment '%s': arm '%s' aborted (killed): %s",
                       d ? d->name : "?", c->tally.aborted[i].arm, c->tally.aborted[i].reason);
}

NBX_API void nbx_ctx_close(nbx_ctx *c)
{
    if (!c)
        return;
    if (c->txn)
        mdb_txn_abort(c->txn);
    flush_tally(c);
    nbx_tally_free(&c->tally);
    close_sandboxes(c);
    nbx_snapshot_unref(c->snap);
    free_catalog_arrays(c);
    nbx_kills_free(&c->kills);
    nbx_arena_free(&c->arena);
    nbx_buf_free(&c->scratch);
    nbx_buf_free(&c->result.json);
    nbx_buf_free(&c->result.audit);
    free(c);
}

NBX_API const char *nbx_ctx_errmsg(const nbx_ctx *c)
{
    if (!c)
        return "NULL context";
    return c->err.msg;
}

static int ctx_fail(nbx_ctx *c, const nbx_err *e)
{
    c->err = *e;
    return nbx_publish(c, e);
}

int nbx_ctx_fail(nbx_ctx *c, const nbx_err *e)
{
    return ctx_fail(c, e);
}

nbx_engine *nbx_ctx_engine(const nbx_ctx *c)
{
    return c->engine;
}

/* ========================================================================
 * Requests
 * ======================================================================== */

NBX_API void nbx_request_init(nbx_request *r)
{
    if (!r)
        return;
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
}

int nbx_session_field_check(const nbx_kv *kv, size_t i, nbx_err *e)
{
    if (!kv->key || !kv->value || !*kv->key)
        return nbx_err_set(e, NBX_EINVAL, "field 'session': entry %zu has no key or value", i);
    if (strlen(kv->key) > NBX_KEY_MAX || strlen(kv->value) > NBX_VALUE_MAX)
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'session.%.64s': key or value too long (limits %d and %d bytes)",
                           kv->key, NBX_KEY_MAX, NBX_VALUE_MAX);
    return NBX_OK;
}

int nbx_request_lists_check(const nbx_catalog *cat, const char *const *placements,
                            size_t n_placements, const nbx_kv *session, size_t n_session,
                            nbx_err *e)
{
    if (n_placements > NBX_REQUEST_PLACEMENTS_MAX)
        return nbx_err_set(e, NBX_EINVAL, "field 'placement': %zu given, the limit is %d",
                           n_placements, NBX_REQUEST_PLACEMENTS_MAX);
    if (n_placements && !placements)
        return nbx_err_set(e, NBX_EINVAL, "field 'placement': n_placements set, list is NULL");
    if (n_session > NBX_REQUEST_SESSION_MAX)
        return nbx_err_set(e, NBX_EINVAL, "field 'session': %zu keys, the limit is %d", n_session,
                           NBX_REQUEST_SESSION_MAX);
    if (n_session && !session)
        return nbx_err_set(e, NBX_EINVAL, "field 'session': n_session set, list is NULL");
    for (size_t i = 0; i < n_session; i++) {
        int rc = nbx_session_field_check(&session[i], i, e);
        if (rc)
            return rc;
        /* the engine sets these two: a caller's value would be dropped */
        if (strcmp(session[i].key, "placement") == 0 || strcmp(session[i].key, "now") == 0)
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'session.%s': set by the engine (the placement being "
                               "scored, the decision's clock: use placements and now_ms)",
                               session[i].key);
        for (size_t j = 0; j < i; j++)
            if (strcmp(session[j].key, session[i].key) == 0)
                return nbx_err_set(e, NBX_EINVAL, "field 'session.%.64s': given twice",
                                   session[i].key);
    }
    for (size_t i = 0; i < n_placements; i++) {
        const char *p = placements[i];
        if (!p || nbx_catalog_placement(cat, nbx_sv_of(p)) < 0)
            return nbx_err_set(e, NBX_EINVAL,
                               "field 'placement': '%.128s' is not a placement of the catalog",
                               p ? p : "(null)");
    }
    return NBX_OK;
}

/* The request's profile_json, if its size says it has the field (a caller
 * built against an 0.1 nbx.h passes a smaller request). */
static const char *request_profile(const nbx_request *r, size_t *len)
{
    if (r->size < offsetof(nbx_request, profile_len) + sizeof r->profile_len)
        return NULL;
    *len = r->profile_len;
    return r->profile_json;
}

/* The request's exposures_json, likewise. */
static const char *request_exposures(const nbx_request *r, size_t *len)
{
    if (r->size < offsetof(nbx_request, exposures_len) + sizeof r->exposures_len)
        return NULL;
    *len = r->exposures_len;
    return r->exposures_json;
}

static int check_request(nbx_ctx *c, const nbx_request *r, nbx_err *e)
{
    if (!r)
        return nbx_err_set(e, NBX_EINVAL, "nbx_decide: request is NULL");
    if (r->size < offsetof(nbx_request, profile_json))
        return nbx_err_set(e, NBX_EINVAL,
                           "nbx_decide: request.size is %zu, expected %zu (call nbx_request_init)",
                           r->size, sizeof *r);
    size_t plen = 0;
    if (request_profile(r, &plen) && plen > NBX_LINE_MAX)
        return nbx_err_set(e, NBX_ELIMIT, "field 'profile_json': %zu bytes, the limit is %d", plen,
                           NBX_LINE_MAX);
    if (request_exposures(r, &plen) && plen > NBX_LINE_MAX)
        return nbx_err_set(e, NBX_ELIMIT, "field 'exposures_json': %zu bytes, the limit is %d",
                           plen, NBX_LINE_MAX);
    if (!r->customer)
        return nbx_err_set(e, NBX_EINVAL, "field 'customer': is required");
    if (!nbx_id_valid(nbx_sv_of(r->customer), e)) {
        e->code = NBX_EINVAL;
        return nbx_err_prefix(e, "customer: ");
    }
    if (r->flags & ~(unsigned)(NBX_DECIDE_EXPLAIN | NBX_DECIDE_RECORD | NBX_DECIDE_ERROR_KIND_ONLY |
                               NBX_DECIDE_AUDIT | NBX_DECIDE_REASONS))
        return nbx_err_set(e, NBX_EINVAL, "nbx_decide: unknown flags 0x%x", r->flags);
    /* Misuse, answered whether or not this decision would choose anything. */
    if ((r->flags & NBX_DECIDE_RECORD) && (c->engine->flags & NBX_ENGINE_READONLY))
        return nbx_err_set(e, NBX_EREADONLY, "cannot record: the engine is read-only");
    if ((r->flags & NBX_DECIDE_RECORD) && !c->engine->store)
        return nbx_err_set(e, NBX_EREADONLY, "cannot record: the engine has no store");
    if ((r->flags & NBX_DECIDE_RECORD) && request_exposures(r, &plen))
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'exposures_json': given counters are a what-if; a decision "
                           "on them is not recorded (NBX_DECIDE_RECORD)");
    /* Day numbers, cooldowns and the result's as_of hold for these years. */
    if (r->now_ms < NBX_TIME_MIN_MS || r->now_ms > NBX_TIME_MAX_MS)
        return nbx_err_set(e, NBX_EINVAL, "field 'now_ms': %lld is outside the years 0001 to 9999",
                           (long long)r->now_ms);
    int rc = nbx_request_lists_check(c->snap->catalog, r->placements, r->n_placements, r->session,
                                     r->n_session, e);
    if (rc == NBX_OK)
        rc = nbx_catalog_channel(c->snap->catalog, r->session, r->n_session, &c->channel, e);
    if (rc)
        return rc;
    const nbx_catalog *cat = c->snap->catalog;
    memset(c->placement_wanted, 0, cat->n_placements);
    for (size_t i = 0; i < r->n_placements; i++)
        c->placement_wanted[nbx_catalog_placement(cat, nbx_sv_of(r->placements[i]))] = 1;
    if (r->n_placements == 0)
        memset(c->placement_wanted, 1, cat->n_placements);
    return NBX_OK;
}

/* ========================================================================
 * Pipeline
 * ======================================================================== */

/* Candidates: each requested placement (catalog order) x its offers. */
static size_t build_candidates(nbx_ctx *c)
{
    const nbx_catalog *cat = c->snap->catalog;
    size_t n = 0;
    for (uint32_t p = 0; p < cat->n_placements; p++) {
        if (!c->placement_wanted[p])
            continue;
        const nbx_placement *pl = &cat->placements[p];
        for (uint32_t i = 0; i < pl->n_offers; i++) {
            nbx_candidate *cd = &c->cand[n++];
            cd->offer = pl->offers[i];
            cd->placement = p;
            cd->excluded = NBX_EXCLUDED_NONE;
            cd->scored = false;
            cd->score = NAN;
            cd->expected_margin = NAN;
            cd->exposure = NULL;
        }
    }
    return n;
}

static void apply_guardrails(nbx_ctx *c, nbx_candidate *cand, size_t n)
{
    const nbx_catalog *cat = c->snap->catalog;
    for (size_t i = 0; i < n; i++) {
        nbx_candidate *cd = &cand[i];
        if (cd->excluded)
            continue;
        const nbx_offer *o = &cat->offers[cd->offer];
        if (!o->passes_guardrails)
            cd->excluded = NBX_EXCLUDED_GUARDRAIL;
        else if (isnan(cd->expected_margin))
            cd->expected_margin = c->caps.propensity[cd->offer] * o->margin - o->serving_cost;
    }
}

_Static_assert(((uint64_t)NBX_CATALOG_OFFERS_MAX << 8) < UINT32_MAX &&
                   NBX_CATALOG_PLACEMENTS_MAX <= 256,
               "offer and placement indices must pack into a 32-bit tie-break");

static inline uint64_t score_key(double score)
{
    if (score == 0)
        score = 0; /* -0 and +0 rank alike */
    uint64_t u;
    memcpy(&u, &score, sizeof u);
    return (u >> 63) ? ~u : u | (UINT64_C(1) << 63);
}

static inline bool ranks_higher(const struct rank_entry *a, const struct rank_entry *b)
{
    return a->key != b->key ? a->key > b->key : a->tie > b->tie;
}

static void sift_down(struct rank_entry *h, size_t n, size_t i)
{
    for (;;) {
        size_t best = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ranks_higher(&h[l], &h[best]))
            best = l;
        if (r < n && ranks_higher(&h[r], &h[best]))
            best = r;
        if (best == i)
            return;
        struct rank_entry t = h[i];
        h[i] = h[best];
        h[best] = t;
        i = best;
    }
}

static void add_action(nbx_ctx *c, const choice_set *set, const nbx_offer *o, uint32_t placement,
                       double score, double margin)
{
    if (*set->n >= set->cap)
        return;
    nbx_action *a = &set->actions[(*set->n)++];
    a->offer = o->id.ptr;
    a->placement = c->snap->catalog->placements[placement].id.ptr;
    a->score = score;
    a->expected_margin = margin;
    a->probability = 1; /* the ranking is deterministic */
    *set->expected_margin += margin;
    c->offer_used[o->index] = 1;
    c->slots_left[placement]--;
}

static void reset_slots(nbx_ctx *c)
{
    const nbx_catalog *cat = c->snap->catalog;
    memset(c->offer_used, 0, cat->n_offers);
    for (uint32_t p = 0; p < cat->n_placements; p++)
        c->slots_left[p] = c->placement_wanted[p] ? cat->placements[p].slots : 0;
}

/* Greedy by rank: the best remaining candidate takes a slot of its
 * placement if one is free and the offer is not shown elsewhere. Slots are
 * few and candidates many: each placement's candidates (contiguous, from
 * build_candidates) become a max-heap in O(candidates), and each step pops
 * the best top among the placements that still have a free slot. A full
 * placement's candidates are never popped, so the work is the slots filled
 * (plus offers already shown elsewhere) times log(candidates), whatever the
 * number of candidates; the order of actions is the global rank order, as a
 * single heap would give. */
static void arbitrate(nbx_ctx *c, nbx_candidate *cand, size_t n, const choice_set *set)
{
    const nbx_catalog *cat = c->snap->catalog;
    reset_slots(c);
    uint32_t contacts = nbx_caps_contacts_left(&c->caps);
    struct rank_entry *h = c->ranked;
    memset(c->heap_len, 0, cat->n_placements * sizeof *c->heap_len);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const nbx_candidate *cd = &cand[i];
        if (cd->excluded)
            continue;
        if (c->heap_len[cd->placement]++ == 0)
            c->heap_at[cd->placement] = (uint32_t)m;
        assert(c->heap_at[cd->placement] + c->heap_len[cd->placement] == m + 1);
        h[m].key = score_key(cd->score);
        h[m].tie = UINT32_MAX - ((cd->offer << 8) | cd->placement);
        h[m].cand = (uint32_t)i;
        m++;
    }
    for (uint32_t p = 0; p < cat->n_placements; p++)
        for (size_t i = c->heap_len[p] / 2; i-- > 0;)
            sift_down(h + c->heap_at[p], c->heap_len[p], i);
    while (contacts > 0) {
        uint32_t best = UINT32_MAX;
        for (uint32_t p = 0; p < cat->n_placements; p++) {
            if (c->slots_left[p] == 0 || c->heap_len[p] == 0)
                continue;
            if (best == UINT32_MAX || ranks_higher(&h[c->heap_at[p]], &h[c->heap_at[best]]))
                best = p;
        }
        if (best == UINT32_MAX)
            break;
        struct rank_entry *top = h + c->heap_at[best];
        nbx_candidate *cd = &cand[top[0].cand];
        top[0] = top[--c->heap_len[best]];
        sift_down(top, c->heap_len[best], 0);
        if (c->offer_used[cd->offer])
            continue;
        /* a planning batch's own actions used the offer's budget up */
        if (set->plan && !nbx_caps_plan_impression(&c->caps, &cat->offers[cd->offer], false)) {
            cd->excluded = NBX_EXCLUDED_BUDGET;
            continue;
        }
        add_action(c, set, &cat->offers[cd->offer], cd->placement, cd->score, cd->expected_margin);
        contacts--;
    }
    if (contacts > 0)
        return;
    /* The contact policy ran out with slots still free: the candidates that
     * would have filled them are excluded for it (explain shows why the
     * placement stayed empty). */
    for (uint32_t p = 0; p < cat->n_placements; p++) {
        if (c->slots_left[p] == 0)
            continue;
        const struct rank_entry *top = h + c->heap_at[p];
        for (uint32_t i = 0; i < c->heap_len[p]; i++) {
            nbx_candidate *cd = &cand[top[i].cand];
            if (!c->offer_used[cd->offer])
                cd->excluded = NBX_EXCLUDED_CONTACTS;
        }
    }
}

/* The fallback decision: the catalog's fallback actions for the requested
 * placements that are live, not killed, consented, pass the guardrails and
 * fit the contact policy. Frequency caps and budgets do not apply: fallbacks
 * are the generic content shown when personalisation is unavailable. */
static void fallback_actions(nbx_ctx *c, int64_t now, const choice_set *set)
{
    const nbx_catalog *cat = c->snap->catalog;
    reset_slots(c);
    uint32_t left = nbx_caps_contacts_left(&c->caps);
    for (uint32_t pi = 0; pi < cat->n_placements; pi++) {
        const nbx_placement *pl = &cat->placements[pi];
        if (!c->placement_wanted[pi])
            continue;
        for (uint32_t k = 0; k < pl->n_fallback && c->slots_left[pi] && left; k++) {
            const nbx_offer *o = &cat->offers[pl->fallback[k]];
            int why = nbx_caps_check(&c->caps, o, now);
            bool safe = why != NBX_EXCLUDED_VALIDITY && why != NBX_EXCLUDED_CONSENT &&
                        why != NBX_EXCLUDED_KILLED;
            if (!safe || !o->passes_guardrails || c->offer_used[o->index])
                continue;
            if (set->plan)
                nbx_caps_plan_impression(&c->caps, o, true);
            add_action(c, set, o, pi, NAN,
                       c->caps.propensity[o->index] * o->margin - o->serving_cost);
            left--;
        }
    }
}

/* With a deployment the id names it and the arm served (UUID "." name "."
 * arm), so an event carrying it is attributed to its arm by the event
 * alone, with no lookup and no write per decision. */
static void new_decision_id(nbx_ctx *c, int64_t wall_ms, char out[NBX_DECISION_ID_MAX + 1])
{
    /* UUIDv7 layout: 48-bit wall-clock milliseconds, version 7, then random
     * bits with the RFC 4122 variant. Written by hand: printf was a visible
     * share of a decision. */
    static const char hex[] = "0123456789abcdef";
    uint64_t hi = ((uint64_t)wall_ms << 16) | 0x7000 | (splitmix64(&c->rng[0]) & 0x0fff);
    uint64_t lo = (splitmix64(&c->rng[1]) & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;
    char *p = out;
    for (int i = 0; i < 32; i++) {
        if (i == 8 || i == 12 || i == 16 || i == 20)
            *p++ = '-';
        uint64_t word = i < 16 ? hi : lo;
        *p++ = hex[(word >> (60 - 4 * (i % 16))) & 0xf];
    }
    const nbx_result *r = &c->result;
    if (r->deployment) {
        size_t dn = strlen(r->deployment->name), an = strlen(r->arm);
        *p++ = '.';
        memcpy(p, r->deployment->name, dn);
        p += dn;
        *p++ = '.';
        memcpy(p, r->arm, an);
        p += an;
    }
    *p = '\0';
}

/* ========================================================================
 * Policy failures
 * ======================================================================== */

/* At most one line a second per context (and one for shadow policies): a
 * broken policy under load must not flood the host's log. */
static void log_policy_failure(nbx_ctx *c, const nbx_policy *pol, bool shadow, const char *customer,
                               const char *msg)
{
    int64_t now = nbx_monotonic_us();
    int64_t *last = shadow ? &c->last_shadow_log_us : &c->last_log_us;
    uint32_t *suppressed = shadow ? &c->suppressed_shadow_logs : &c->suppressed_logs;
    if (now - *last < 1000000) {
        (*suppressed)++;
        return;
    }
    char more[64] = "";
    if (*suppressed)
        snprintf(more, sizeof more, " (%u more failures not logged)", *suppressed);
    nbx_engine_log(c->engine, NBX_LOG_ERROR, "%spolicy %s (version %s) failed, %s %.64s: %s%s",
                   shadow ? "shadow " : "", pol->name, pol->version_hex,
                   shadow ? "nothing served from it for customer" : "fallback served for customer",
                   customer, msg, more);
    *last = now;
    *suppressed = 0;
}

/* The fault of a failed run: its kind, and "where: reason" in msg. perr
 * NULL: the sandbox could not be built (why: its reason). */
static const char *fault_record(const nbx_policy_error *perr, const char *why,
                                nbx_policy_error *fault, char *msg, size_t cap)
{
    static const char *const kinds[] = {"none", "runtime", "timeout", "memory", "result"};
    if (perr) {
        snprintf(msg, cap, "%.255s%s%.511s", perr->where, perr->where[0] ? ": " : "", perr->reason);
        *fault = *perr;
        return perr->fault < NBX_ARRAY_LEN(kinds) ? kinds[perr->fault] : "unavailable";
    }
    snprintf(msg, cap, "policy unavailable: %.700s", why);
    memset(fault, 0, sizeof *fault);
    snprintf(fault->reason, sizeof fault->reason, "%.511s", msg);
    return "unavailable";
}

static void take_fallback(nbx_ctx *c, size_t n, int64_t now, const char *customer,
                          const nbx_policy_error *perr, const char *why)
{
    nbx_result *r = &c->result;
    r->fallback = true;
    r->has_error = true;
    r->fault_kind = fault_record(perr, why, &r->fault, r->error, sizeof r->error);
    for (size_t i = 0; i < n; i++)
        if (!c->cand[i].excluded) {
            c->cand[i].excluded = NBX_EXCLUDED_POLICY_ERROR;
            c->cand[i].scored = false;
        }
    r->n_actions = 0;
    r->expected_margin = 0;
    choice_set set = {c->actions, c->actions_cap, &r->n_actions, &r->expected_margin, true};
    fallback_actions(c, now, &set);
    log_policy_failure(c, r->policy, false, customer, r->error);
}

/* ========================================================================
 * Recording chosen actions (NBX_DECIDE_RECORD)
 * ======================================================================== */

/* Drop action i: another writer got there first. Its candidate says why. */
static void drop_action(nbx_ctx *c, size_t n, size_t i, int why)
{
    nbx_result *r = &c->result;
    const nbx_action *a = &r->actions[i];
    for (size_t k = 0; k < n; k++) {
        nbx_candidate *cd = &c->cand[k];
        const nbx_catalog *cat = c->snap->catalog;
        if (!cd->excluded && strcmp(cat->offers[cd->offer].id.ptr, a->offer) == 0 &&
            strcmp(cat->placements[cd->placement].id.ptr, a->placement) == 0)
            cd->excluded = (uint8_t)why;
    }
    r->expected_margin -= a->expected_margin;
    memmove(&r->actions[i], &r->actions[i + 1], (r->n_actions - i - 1) * sizeof *r->actions);
    r->n_actions--;
}

/* Record the chosen actions as impressions (record.c): an action that no
 * longer fits the customer's caps as they are now, under the writer lock,
 * is dropped and the others are recorded. */
static int record_actions(nbx_ctx *c, const nbx_profile *p, size_t n, int64_t now, nbx_err *e)
{
    nbx_result *r = &c->result;
    if (r->n_actions == 0)
        return NBX_OK;
    nbx_recorder rec = {.store = c->engine->store,
                        .catalog = c->snap->catalog,
                        .caps = &c->caps,
                        .arena = &c->arena,
                        .scratch = &c->scratch};
    nbx_decision_record d = {.id = r->decision_id,
                             .profile = p,
                             .channel = c->channel,
                             .now_ms = now,
                             .fallback = r->fallback || r->control,
                             .actions = r->actions,
                             .n_actions = r->n_actions};
    int rc = nbx_store_write_begin(rec.store, &rec.txn, e);
    if (rc)
        return rc;
    rc = nbx_record_decision(&rec, &d, c->misfit, e);
    if (rc) {
        mdb_txn_abort(rec.txn);
        return rc;
    }
    rc = nbx_store_commit(rec.store, rec.txn, e);
    size_t recorded = 0, decided = r->n_actions;
    for (size_t i = 0; i < decided && rc == NBX_OK; i++) {
        if (c->misfit[i])
            drop_action(c, n, recorded, c->misfit[i]);
        else
            recorded++;
    }
    return rc;
}

/* ========================================================================
 * Deployments: the arm that serves, the control treatment, shadows
 * ======================================================================== */

/* Kills keep an arm from serving when its DEPLOYMENT.ARM or its policy's
 * version is killed (the context's kill set, as of this decision's
 * snapshot); nbx_deployment_serving_arm() says who serves instead. */
static bool policy_killed(const nbx_ctx *c, const nbx_policy *p)
{
    return p && nbx_policy_killed(&c->kills, nbx_sv_of(p->version_hex));
}

static bool arm_killed(void *ud, const nbx_arm *arm)
{
    const nbx_ctx *c = ud;
    return nbx_arm_killed(&c->kills, nbx_sv_of(c->snap->deployment->name), nbx_sv_of(arm->name)) ||
           policy_killed(c, arm->policy);
}

/* Which sandbox serves this decision (-1: none, the control treatment),
 * and the result's deployment fields. Without a deployment, the policy. */
static int choose_policy(nbx_ctx *c, nbx_sv customer)
{
    nbx_result *r = &c->result;
    const nbx_deployment *d = c->snap->deployment;
    r->deployment = d;
    r->arm = r->assigned = NULL;
    r->control = false;
    r->policy = c->snap->policy;
    if (!d && !policy_killed(c, r->policy))
        return 0;
    if (!d) { /* its one policy is killed: the control treatment */
        r->control = true;
        r->policy = NULL;
        return -1;
    }
    if (c->force >= 0 && (uint32_t)c->force < d->n_arms) {
        /* a trial: every customer on one arm */
        r->arm = r->assigned = d->arms[c->force].name;
        r->policy = d->arms[c->force].policy;
        return c->force;
    }
    uint32_t assigned = nbx_deployment_arm_of(d, customer);
    uint32_t serving = nbx_deployment_serving_arm(d, assigned, c->arm_killed, c->arm_killed_ud);
    r->assigned = assigned == NBX_ARM_INDEX_HOLDOUT ? NBX_ARM_HOLDOUT : d->arms[assigned].name;
    if (serving == NBX_ARM_INDEX_HOLDOUT) {
        r->arm = NBX_ARM_HOLDOUT;
        r->control = true;
        r->policy = NULL;
        return -1;
    }
    r->arm = d->arms[serving].name;
    r->policy = d->arms[serving].policy;
    return (int)serving;
}

/* The control treatment (the holdout's): the catalog's fallback actions,
 * as a fallback decision would show them, with no policy run and no
 * failure: a baseline without personalised choice. */
static void control_treatment(nbx_ctx *c, int64_t now)
{
    nbx_result *r = &c->result;
    choice_set set = {c->actions, c->actions_cap, &r->n_actions, &r->expected_margin, true};
    fallback_actions(c, now, &set);
}

/* Shadow policy k decides on the served decision's input (candidates after
 * eligibility, profile, session, clock, seed) into its own arrays: it is
 * never served or recorded, and counts against no budget, not even a
 * planning batch's. A failure is its own: its result says so. */
static void run_shadow(nbx_ctx *c, uint32_t k, const nbx_sandbox_input *served_in, int64_t now)
{
    const nbx_deployment *d = c->snap->deployment;
    ctx_sandbox *x = &c->sandboxes[d->n_arms + k];
    nbx_shadow_result *sh = &c->shadows[k];
    sh->policy = d->shadow[k];
    sh->actions = c->shadow_actions + (size_t)k * c->actions_cap;
    sh->n_actions = 0;
    sh->expected_margin = 0;
    sh->fallback = false;
    choice_set set = {sh->actions, c->actions_cap, &sh->n_actions, &sh->expected_margin, false};
    memcpy(c->shadow_cand, c->shadow_base, served_in->n_cand * sizeof *c->shadow_cand);
    nbx_sandbox_input in = *served_in;
    in.cand = c->shadow_cand;
    in.explain = false;
    nbx_policy_error perr;
    memset(&perr, 0, sizeof perr);
    if (x->sb && nbx_sandbox_run(x->sb, &in, &perr) == NBX_OK) {
        apply_guardrails(c, c->shadow_cand, in.n_cand);
        arbitrate(c, c->shadow_cand, in.n_cand, &set);
        return;
    }
    char msg[1024];
    sh->fallback = true;
    sh->fault_kind = fault_record(x->sb ? &perr : NULL, x->err, &sh->fault, msg, sizeof msg);
    fallback_actions(c, now, &set);
    log_policy_failure(c, sh->policy, true, in.profile->id.ptr, msg);
}

static void run_shadows(nbx_ctx *c, const nbx_sandbox_input *in, int64_t now)
{
    const nbx_deployment *d = c->snap->deployment;
    nbx_result *r = &c->result;
    r->shadows = c->shadows;
    r->n_shadows = 0;
    if (!d || !d->n_shadow || c->force >= 0)
        return;
    for (uint32_t k = 0; k < d->n_shadow; k++)
        run_shadow(c, k, in, now);
    r->n_shadows = d->n_shadow;
}

void nbx_ctx_force_policy(nbx_ctx *c, int index)
{
    c->force = index;
}

/* ========================================================================
 * Decide
 * ======================================================================== */

/* The customer's profile: the request's own (profile_json), else the
 * store's; NBX_ENOTFOUND when neither has one (an anonymous visitor). */
static int load_profile(nbx_ctx *c, const nbx_request *req, nbx_profile *p, nbx_err *e)
{
    size_t len = 0;
    const char *json = request_profile(req, &len);
    if (!json) {
        if (!c->engine->store)
            return NBX_ENOTFOUND;
        return nbx_store_profile_get(c->engine->store, c->txn, p->id, p, &c->arena, e);
    }
    nbx_profile patch;
    int rc = nbx_profile_parse(json, len, &patch, &c->arena, e);
    if (rc != NBX_OK) {
        e->code = NBX_EINVAL;
        return nbx_err_prefix(e, "field 'profile_json': ");
    }
    if (patch.id.len && !nbx_sv_eq(patch.id, p->id))
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'profile_json': its id '%.*s' is not the customer '%.*s'",
                           (int)patch.id.len, patch.id.ptr, (int)p->id.len, p->id.ptr);
    patch.id = p->id;
    rc = nbx_profile_patch(NULL, &patch, p, &c->arena, e);
    /* no store, no purchase records: the aggregates given are the ones served */
    if (rc == NBX_OK)
        nbx_profile_settle_base(p);
    return rc;
}

static int decide(nbx_ctx *c, const nbx_request *req, const nbx_result **out)
{
    nbx_result *r = &c->result;
    nbx_buf_reset(&r->audit);
    nbx_err e = {0};
    int rc = ctx_refresh(c, &e);
    if (rc == NBX_OK)
        rc = check_request(c, req, &e);
    if (rc)
        return ctx_fail(c, &e);

    r->n_actions = 0;
    r->actions = c->actions;
    r->fallback = r->anonymous = r->has_error = false;
    r->error[0] = '\0';
    r->expected_margin = 0;
    r->n_shadows = 0;
    int64_t wall = nbx_time_now();
    int64_t now = req->now_ms ? req->now_ms : wall;
    nbx_sv customer = nbx_sv_of(req->customer);
    nbx_arena_reset(&c->arena);

    nbx_store *store = c->engine->store;
    if (c->txn) {
        int mrc = mdb_txn_renew(c->txn);
        if (mrc) {
            nbx_err_mdb(&e, mrc, "starting a read");
            return ctx_fail(c, &e);
        }
        /* kills as of this snapshot: next decision after a kill, no reload */
        if ((rc = nbx_kills_refresh(&c->kills, store, c->txn, &e)) != NBX_OK) {
            mdb_txn_reset(c->txn);
            return ctx_fail(c, &e);
        }
    }
    nbx_caps_kills(&c->caps, &c->kills);
    int served = choose_policy(c, customer);
    new_decision_id(c, wall, r->decision_id);
    nbx_profile profile = {.id = customer};
    rc = load_profile(c, req, &profile, &e);
    size_t given_len;
    nbx_audit_state audit = {.profile = request_profile(req, &given_len) ? NBX_AUDIT_PROFILE_REQUEST
                                                                         : NBX_AUDIT_PROFILE_STORE,
                             .profile_updated_at = profile.updated_at};
    if (rc == NBX_ENOTFOUND) {
        memset(&profile, 0, sizeof profile);
        profile.id = customer;
        r->anonymous = true;
        audit.profile = NBX_AUDIT_PROFILE_NONE;
        rc = NBX_OK;
    }
    /* what replay will compare: the counters this decision read */
    c->caps.hash_exposures = (req->flags & NBX_DECIDE_AUDIT) != 0;
    if (rc == NBX_OK)
        rc = nbx_caps_load(&c->caps, store, c->txn, &profile, c->channel, now, &c->arena, &e);
    /* only this load: recording's reload of the counters hashes nothing */
    c->caps.hash_exposures = false;
    audit.exposures = c->caps.exposures_hash;
    size_t exposures_len = 0;
    const char *exposures = request_exposures(req, &exposures_len);
    if (rc == NBX_OK && exposures)
        rc = nbx_given_exposures(&c->caps, exposures, exposures_len, now, &c->arena, &e);
    if (rc) {
        if (c->txn)
            mdb_txn_reset(c->txn);
        return ctx_fail(c, &e);
    }
    /* Without consent to personalisation the customer is ranked as an
     * anonymous visitor: eligibility above used their consents and
     * counters, scoring below sees none of their data (docs/decisions.md). */
    nbx_profile visitor = {.id = customer};
    const nbx_profile *seen = &profile;
    if (!nbx_caps_personalized(&c->caps)) {
        seen = &visitor;
        r->anonymous = true;
    }
    r->segment = seen->rfm.segment < NBX_SEGMENT_COUNT ? seen->rfm.segment : NBX_SEGMENT_NONE;

    size_t n = build_candidates(c);
    nbx_caps_check_candidates(&c->caps, c->cand, n, now);
    nbx_caps_propensities(&c->caps, seen);
    if (c->snap->deployment && c->snap->deployment->n_shadow)
        memcpy(c->shadow_base, c->cand, n * sizeof *c->cand);
    nbx_sandbox_input in = {
        .profile = seen,
        .anonymous = r->anonymous,
        .session = req->session,
        .n_session = req->n_session,
        .now_ms = now,
        .seed = nbx_hash64(customer.ptr, customer.len,
                           (r->policy ? r->policy->version : 0) ^ (uint64_t)now),
        .propensity = c->caps.propensity,
        .cand = c->cand,
        .n_cand = n,
        .explain = (req->flags & (NBX_DECIDE_EXPLAIN | NBX_DECIDE_REASONS)) != 0,
    };
    nbx_sandbox *sb = served >= 0 ? c->sandboxes[served].sb : NULL;
    nbx_policy_error perr;
    memset(&perr, 0, sizeof perr);
    if (served < 0) {
        control_treatment(c, now);
    } else if (!sb || nbx_sandbox_run(sb, &in, &perr) != NBX_OK) {
        take_fallback(c, n, now, req->customer, sb ? &perr : NULL, c->sandboxes[served].err);
    } else {
        apply_guardrails(c, c->cand, n);
        choice_set set = {c->actions, c->actions_cap, &r->n_actions, &r->expected_margin, true};
        arbitrate(c, c->cand, n, &set);
    }
    run_shadows(c, &in, now);
    /* Recording reads the profile (consent), whose strings live in the read
     * snapshot: record before the snapshot is released. */
    if (req->flags & NBX_DECIDE_RECORD)
        rc = record_actions(c, &profile, n, now, &e);
    if (c->txn)
        mdb_txn_reset(c->txn);
    if (rc)
        return ctx_fail(c, &e);

    memset(r->exclusions, 0, sizeof r->exclusions);
    for (size_t i = 0; i < n; i++)
        r->exclusions[c->cand[i].excluded]++;
    r->catalog = c->snap->catalog;
    r->cand = c->cand;
    r->n_cand = n;
    nbx_result_view view = {.req = req,
                            .catalog = c->snap->catalog,
                            .caps = &c->caps,
                            .cand = c->cand,
                            .n_cand = n,
                            .now_ms = now};
    if ((req->flags & NBX_DECIDE_EXPLAIN) && sb)
        view.n_log = nbx_sandbox_log(sb, &view.log, &view.log_dropped);
    nbx_result_write(r, &view);
    if (req->flags & NBX_DECIDE_AUDIT)
        nbx_audit_write(r, &view, &audit);
    if (r->json.oom || r->audit.oom) {
        nbx_err_set(&e, NBX_ENOMEM, "out of memory writing the result");
        return ctx_fail(c, &e);
    }
    c->err.code = NBX_OK;
    c->err.msg[0] = '\0';
    *out = r;
    return NBX_OK;
}

/* A decision of a deployment's arm counts for it (tally.c): served, a
 * fallback or, once the arm was known, an error. Trials run arms on
 * synthetic customers: they count for none. */
static void tally_decision(nbx_ctx *c, const nbx_request *req, int rc)
{
    const nbx_result *r = &c->result;
    if (!r->deployment || !r->arm || c->force >= 0)
        return;
    int outcome = rc ? NBX_TALLY_ERROR : r->fallback ? NBX_TALLY_FALLBACK : NBX_TALLY_SERVED;
    nbx_tally_count(&c->tally, r->deployment, r->arm, req->now_ms ? req->now_ms : nbx_time_now(),
                    outcome, r->expected_margin);
    if (nbx_tally_due(&c->tally, nbx_monotonic_us()))
        flush_tally(c);
}

NBX_API int nbx_decide(nbx_ctx *c, const nbx_request *req, const nbx_result **out)
{
    if (out)
        *out = NULL;
    if (!c || !out)
        return nbx_fail(c, NBX_EINVAL, "nbx_decide: NULL argument");
    c->result.deployment = NULL; /* set once the arm is known */
    c->result.arm = NULL;
    int rc = decide(c, req, out);
    if (req)
        tally_decision(c, req, rc);
    return rc;
}

static bool offer_in_catalog(const void *catalog, nbx_sv id)
{
    return nbx_catalog_offer(catalog, id) != NULL;
}

NBX_API int nbx_record_ex(nbx_ctx *c, const char *json, size_t len, unsigned flags, int *outcome)
{
    if (outcome)
        *outcome = 0;
    if (!c || !json)
        return nbx_fail(c, NBX_EINVAL, "nbx_record_ex: NULL argument");
    nbx_err e = {0};
    if (flags & ~(unsigned)NBX_RECORD_SERVER_TIME) {
        nbx_err_set(&e, NBX_EINVAL, "nbx_record_ex: unknown flags 0x%x", flags);
        return ctx_fail(c, &e);
    }
    if (c->engine->flags & NBX_ENGINE_READONLY) {
        nbx_err_set(&e, NBX_EREADONLY, "cannot record: the engine is read-only");
        return ctx_fail(c, &e);
    }
    if (!c->engine->store) {
        nbx_err_set(&e, NBX_EREADONLY, "cannot record: the engine has no store");
        return ctx_fail(c, &e);
    }
    if (len > NBX_LINE_MAX) {
        nbx_err_set(&e, NBX_ELIMIT, "event JSON is %zu bytes, the limit is %d", len, NBX_LINE_MAX);
        return ctx_fail(c, &e);
    }
    nbx_arena_reset(&c->arena);
    nbx_event ev;
    MDB_txn *txn = NULL;
    int done = 0;
    nbx_store *s = c->engine->store;
    bool server_time = flags & NBX_RECORD_SERVER_TIME;
    /* The catalog the engine serves now (the context's own snapshot may be
     * older until its next decision). */
    nbx_snapshot *snap = nbx_engine_snapshot(c->engine);
    nbx_event_rules rules = {.now_ms = nbx_time_now(),
                             .max_skew_ms = c->engine->event_max_skew_ms,
                             .offer_known = offer_in_catalog,
                             .offers = snap->catalog};
    int rc =
        nbx_event_parse(json, len, server_time ? NBX_EVENT_TS_OPTIONAL : 0, &ev, &c->arena, &e);
    if (rc == NBX_OK && server_time)
        ev.ts_ms = rules.now_ms;
    if (rc == NBX_OK)
        rc = nbx_event_check(&ev, &rules, &e);
    nbx_snapshot_unref(snap);
    if (rc == NBX_OK)
        rc = nbx_store_write_begin(s, &txn, &e);
    if (rc == NBX_OK)
        rc = nbx_event_apply_txn(s, txn, &ev, &done, &c->arena, &c->scratch, &e);
    if (rc == NBX_OK) {
        rc = nbx_store_commit(s, txn, &e);
        txn = NULL;
    }
    if (txn)
        mdb_txn_abort(txn);
    if (rc)
        return ctx_fail(c, &e);
    if (outcome)
        *outcome = done;
    return NBX_OK;
}

NBX_API int nbx_record(nbx_ctx *c, const char *json, size_t len, int *applied)
{
    int outcome = 0;
    int rc = nbx_record_ex(c, json, len, 0, &outcome);
    if (applied)
        *applied = rc == NBX_OK && outcome == NBX_RECORD_APPLIED;
    return rc;
}
