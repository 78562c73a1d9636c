/*
 * batch.c: many decisions on a pool of worker threads, results handed back
 * in submission order.
 *
 * A ring of `window` slots. The owner thread fills a free slot (submit),
 * workers claim queued slots in submission order and run nbx_decide() on
 * their own context, copying the result into the slot, and the owner takes
 * slots back in order (next). One mutex guards the ring's counters; slot
 * contents are handed over under it (queued -> running -> done), so the
 * owner and a worker never touch a slot at the same time.
 *
 * Wake-ups are batched both ways: a worker wakes a waiting owner only when
 * the oldest slot is done and a quarter of the window (at most 64) is done
 * or nothing else is running, and the owner wakes idle workers when that
 * many are queued or when it is about to wait. A futex round trip per
 * decision would cost as much as a small decision.
 *
 * Recording (NBX_DECIDE_RECORD) is done here rather than by nbx_decide():
 * nbx_decide() commits each decision's impressions in its own transaction,
 * an fsync per customer, a few hundred customers a second; a worker here
 * decides without recording and commits the impressions of up to
 * RECORD_GROUP_MAX decisions in one transaction. The rules are those of
 * nbx_decide()'s recording: a decision read its caps in a snapshot, so in
 * the write transaction (LMDB has one writer at a time, across processes)
 * its actions are checked again against the counters as they are now. Where
 * nbx_decide() drops an action that no longer fits, a decision here is made
 * again after the commit, on counters that include the other writer's
 * impressions: the customer still gets the best actions that fit. A slot is
 * handed back only once its impressions are committed. The events are those
 * nbx_decide() records: one impression per action, id DECISION_ID:INDEX, at
 * the decision's clock (core/record.c records both).
 *
 * Planning (no NBX_DECIDE_RECORD) records nothing, so the store's daily
 * budgets would never fill: a plan gave a budget of 100 to thousands of
 * customers. The batch's decisions count their actions in an in-memory
 * plan (nbx_budget_plan) that eligibility adds to the store's counts, so a
 * plan gives a budgeted offer to as many customers as a committing run.
 */
#include "nbx_int.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum slot_state { SLOT_FREE = 0, SLOT_QUEUED, SLOT_RUNNING, SLOT_DONE };

#define WAKE_MARK_MAX 64
#define WINDOW_PER_THREAD 256
/* NBX_DECIDE_RECORD: decisions whose impressions share one write
 * transaction (one fsync), and how often a decision is made again when
 * another writer moved its caps before it could be recorded. */
#define RECORD_GROUP_MAX 128
#define RECORD_RETRIES_MAX 8

typedef struct slot {
    uint8_t state;   /* slot_state, under the batch lock */
    uint8_t retries; /* NBX_DECIDE_RECORD: decided again because caps moved */
    bool stale;
    /* Input, written by the owner while the slot is FREE: the customer id,
     * then this customer's own session keys and values, NUL-terminated. */
    nbx_buf in;
    nbx_kv *session; /* merged: NBX_REQUEST_SESSION_MAX entries */
    size_t n_session;
    void *user;
    /* Output, written by a worker while RUNNING: the result JSON, decision
     * id, policy error, worker error and action strings, NUL-terminated. */
    nbx_buf out;
    nbx_action *actions;
    size_t actions_cap;
    nbx_reason_count *reasons; /* eligible()'s reasons, distinct */
    size_t reasons_cap;
    nbx_batch_item item;
} slot;

typedef struct worker {
    nbx_batch *batch;
    nbx_ctx *ctx;
    pthread_t thread;
    bool started;
    /* NBX_DECIDE_RECORD: decided slots whose impressions are not committed
     * yet, and what checking them at commit needs. */
    slot **pending;
    size_t n_pending;
    nbx_snapshot *caps_snap; /* keeps caps.catalog alive */
    nbx_caps caps;
    nbx_arena arena;
    nbx_buf scratch;
} worker;

struct nbx_batch {
    nbx_engine *engine;
    unsigned n_threads;
    size_t window;
    size_t n_slots; /* window + 1: the item handed out keeps its slot */
    size_t wake_mark;
    slot *slots;
    worker *workers;
    /* Request parts shared by every decision, owned by the batch. */
    unsigned flags;
    int64_t now_ms;
    uint32_t shard_count, shard_index;
    const char **placements;
    size_t n_placements;
    nbx_kv *base;
    size_t n_base;
    char *strings; /* placements and base session strings */

    pthread_mutex_t lock;
    pthread_cond_t work_cv; /* workers wait for queued slots */
    pthread_cond_t done_cv; /* the owner waits for the oldest slot */
    /* Sequence numbers: head <= claimed <= submitted. submitted and head
     * change only in the owner thread (under the lock, as workers read
     * them); claimed only in workers. */
    uint64_t submitted;
    uint64_t claimed;
    uint64_t head;
    bool holding; /* the slot of head - 1 is still handed out */
    unsigned idle;
    unsigned running;
    size_t done_untaken;
    bool owner_waiting;
    bool stop;

    /* A plan (no NBX_DECIDE_RECORD) counts its own actions against daily
     * budgets, in memory; NULL when recording or when no offer has one. */
    nbx_budget_plan *plan;
    nbx_batch_stats stats;
    nbx_arena scratch; /* submit_json: unescaped strings */
    nbx_err err;
};

/* ========================================================================
 * Options
 * ======================================================================== */

NBX_API void nbx_batch_options_init(nbx_batch_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
}

static unsigned available_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static int check_options(nbx_engine *engine, const nbx_batch_options *o, nbx_err *e)
{
    if (o->size < sizeof *o)
        return nbx_err_set(e, NBX_EINVAL,
                           "nbx_batch_open: options.size is %zu, expected %zu (call "
                           "nbx_batch_options_init)",
                           o->size, sizeof *o);
    if (o->threads > NBX_BATCH_THREADS_MAX)
        return nbx_err_set(e, NBX_EINVAL, "nbx_batch_open: threads is %u, the limit is %d",
                           o->threads, NBX_BATCH_THREADS_MAX);
    if (o->window > NBX_BATCH_WINDOW_MAX)
        return nbx_err_set(e, NBX_EINVAL, "nbx_batch_open: window is %zu, the limit is %u",
                           o->window, NBX_BATCH_WINDOW_MAX);
    if (o->flags &
        ~(unsigned)(NBX_DECIDE_EXPLAIN | NBX_DECIDE_RECORD | NBX_DECIDE_AUDIT | NBX_DECIDE_REASONS))
        return nbx_err_set(e, NBX_EINVAL, "nbx_batch_open: unknown flags 0x%x", o->flags);
    if (o->now_ms < NBX_TIME_MIN_MS || o->now_ms > NBX_TIME_MAX_MS)
        return nbx_err_set(e, NBX_EINVAL,
                           "nbx_batch_open: now_ms %lld is outside the years 0001 to 9999",
                           (long long)o->now_ms);
    if (o->shard_count && o->shard_index >= o->shard_count)
        return nbx_err_set(e, NBX_EINVAL,
                           "nbx_batch_open: shard %u/%u: the index must be below "
                           "the count",
                           o->shard_index, o->shard_count);
    if ((o->flags & NBX_DECIDE_RECORD) && (engine->flags & NBX_ENGINE_READONLY))
        return nbx_err_set(e, NBX_EREADONLY, "cannot record exposures: the engine is read-only");
    /* Checked once here, so a typo fails the batch rather than every item. */
    nbx_snapshot *snap = nbx_engine_snapshot(engine);
    uint32_t channel;
    int rc = nbx_request_lists_check(snap->catalog, o->placements, o->n_placements, o->session,
                                     o->n_session, e);
    if (rc == NBX_OK)
        rc = nbx_catalog_channel(snap->catalog, o->session, o->n_session, &channel, e);
    nbx_snapshot_unref(snap);
    if (rc)
        nbx_err_prefix(e, "nbx_batch_open: ");
    return rc;
}

/* Copy placements and the base session into one allocation. */
static int copy_shared_request(nbx_batch *b, const nbx_batch_options *o)
{
    size_t bytes = 0;
    for (size_t i = 0; i < o->n_placements; i++)
        bytes += strlen(o->placements[i]) + 1;
    for (size_t i = 0; i < o->n_session; i++)
        bytes += strlen(o->session[i].key) + strlen(o->session[i].value) + 2;
    b->strings = malloc(bytes ? bytes : 1);
    b->placements = calloc(o->n_placements ? o->n_placements : 1, sizeof *b->placements);
    b->base = calloc(o->n_session ? o->n_session : 1, sizeof *b->base);
    if (!b->strings || !b->placements || !b->base)
        return NBX_ENOMEM;
    char *w = b->strings;
    for (size_t i = 0; i < o->n_placements; i++) {
        size_t n = strlen(o->placements[i]) + 1;
        memcpy(w, o->placements[i], n);
        b->placements[i] = w;
        w += n;
    }
    b->n_placements = o->n_placements;
    for (size_t i = 0; i < o->n_session; i++) {
        size_t kn = strlen(o->session[i].key) + 1, vn = strlen(o->session[i].value) + 1;
        memcpy(w, o->session[i].key, kn);
        b->base[i].key = w;
        w += kn;
        memcpy(w, o->session[i].value, vn);
        b->base[i].value = w;
        w += vn;
    }
    b->n_base = o->n_session;
    return NBX_OK;
}

/* ========================================================================
 * Workers
 * ======================================================================== */

/* The distinct reasons eligible() gave in r (with NBX_DECIDE_EXPLAIN or
 * NBX_DECIDE_REASONS), counted, appended to o as strings (each once, in
 * order of first appearance; pointers are set once o stops growing).
 * SIZE_MAX when out of memory. A decision has a handful of distinct
 * reasons: a linear search over them is cheaper than hashing. */
static size_t copy_reasons(slot *s, const nbx_result *r, nbx_buf *o)
{
    size_t n = 0;
    /* most decisions have no policy reasons: skip the scan of every
     * candidate (a tenth of the batch runner's own cost) */
    if (r->exclusions[NBX_EXCLUDED_INELIGIBLE] == 0)
        return 0;
    for (size_t i = 0; i < r->n_cand; i++) {
        const char *why = r->cand[i].why;
        if (r->cand[i].excluded != NBX_EXCLUDED_INELIGIBLE || !why)
            continue;
        size_t k = 0;
        while (k < n && strcmp(s->reasons[k].reason, why) != 0)
            k++;
        if (k < n) {
            s->reasons[k].count++;
            continue;
        }
        if (n == s->reasons_cap) {
            size_t cap = s->reasons_cap ? 2 * s->reasons_cap : 8;
            nbx_reason_count *grown = realloc(s->reasons, cap * sizeof *grown);
            if (!grown)
                return SIZE_MAX;
            s->reasons = grown;
            s->reasons_cap = cap;
        }
        /* compared against the candidate's own text until pointers into o
         * are set */
        s->reasons[n].reason = why;
        s->reasons[n++].count = 1;
    }
    for (size_t k = 0; k < n; k++)
        nbx_buf_append(o, s->reasons[k].reason, strlen(s->reasons[k].reason) + 1);
    return n;
}

/* Copy what the owner needs out of the context's result: the context
 * reuses it on the next decision, and a catalog reload may free the action
 * strings while the slot waits to be taken. */
static void copy_result(slot *s, int rc, const nbx_result *r, const char *errmsg)
{
    nbx_batch_item *it = &s->item;
    nbx_buf *o = &s->out;
    nbx_buf_reset(o);
    it->status = rc;
    it->n_actions = 0;
    it->fallback = it->anonymous = 0;
    it->expected_margin = 0;
    it->segment = NBX_SEGMENT_NONE;
    it->decide_ns = 0;
    it->reasons = NULL;
    it->n_reasons = 0;
    memset(it->exclusions, 0, sizeof it->exclusions);
    if (rc != NBX_OK) {
        nbx_buf_puts(o, errmsg && *errmsg ? errmsg : nbx_strerror(rc));
        nbx_buf_putc(o, '\0');
        if (o->oom) {
            it->errmsg = nbx_strerror(rc);
            o->len = 0;
        } else {
            it->errmsg = o->data;
        }
        it->json = NULL;
        it->json_len = 0;
        it->audit = NULL;
        it->audit_len = 0;
        it->decision_id = "";
        it->policy_error = NULL;
        it->actions = NULL;
        it->arm = it->policy_version = NULL;
        return;
    }
    size_t n = nbx_result_action_count(r);
    if (n > s->actions_cap) {
        nbx_action *grown = realloc(s->actions, n * sizeof *grown);
        if (!grown) {
            copy_result(s, NBX_ENOMEM, NULL, "out of memory copying a batch result");
            return;
        }
        s->actions = grown;
        s->actions_cap = n;
    }
    /* Offsets first: the buffer may move while it grows. */
    size_t json_len = 0, audit_len = 0;
    const char *json = nbx_result_json(r, &json_len);
    const char *audit = nbx_result_audit_json(r, &audit_len);
    const char *perr = nbx_result_error(r);
    nbx_buf_append(o, json, json_len);
    nbx_buf_putc(o, '\0');
    size_t audit_at = o->len;
    if (audit) {
        nbx_buf_append(o, audit, audit_len);
        nbx_buf_putc(o, '\0');
    }
    size_t id_at = o->len;
    nbx_buf_puts(o, nbx_result_decision_id(r));
    nbx_buf_putc(o, '\0');
    size_t perr_at = o->len;
    if (perr) {
        nbx_buf_puts(o, perr);
        nbx_buf_putc(o, '\0');
    }
    /* arm and policy version: names and hex, both short */
    const char *arm = nbx_result_arm(r), *version = NULL;
    nbx_result_policy(r, &version);
    size_t arm_at = o->len;
    if (arm)
        nbx_buf_append(o, arm, strlen(arm) + 1);
    size_t version_at = o->len;
    if (version)
        nbx_buf_append(o, version, strlen(version) + 1);
    size_t strings_at = o->len;
    for (size_t i = 0; i < n; i++) {
        nbx_action a;
        nbx_result_action(r, i, &a);
        s->actions[i] = a;
        nbx_buf_append(o, a.offer, strlen(a.offer) + 1);
        nbx_buf_append(o, a.placement, strlen(a.placement) + 1);
    }
    size_t reasons_at = o->len;
    size_t n_reasons = copy_reasons(s, r, o);
    if (o->oom || n_reasons == SIZE_MAX) {
        copy_result(s, NBX_ENOMEM, NULL, "out of memory copying a batch result");
        return;
    }
    const char *p = o->data + strings_at;
    for (size_t i = 0; i < n; i++) {
        s->actions[i].offer = p;
        p += strlen(p) + 1;
        s->actions[i].placement = p;
        p += strlen(p) + 1;
    }
    p = o->data + reasons_at;
    for (size_t i = 0; i < n_reasons; i++) {
        s->reasons[i].reason = p;
        p += strlen(p) + 1;
    }
    it->reasons = n_reasons ? s->reasons : NULL;
    it->n_reasons = n_reasons;
    it->segment = nbx_result_segment(r);
    it->errmsg = "";
    it->json = o->data;
    it->json_len = json_len;
    it->audit = audit ? o->data + audit_at : NULL;
    it->audit_len = audit_len;
    it->decision_id = o->data + id_at;
    it->policy_error = perr ? o->data + perr_at : NULL;
    it->arm = arm ? o->data + arm_at : NULL;
    it->policy_version = version ? o->data + version_at : NULL;
    it->actions = s->actions;
    it->n_actions = n;
    it->fallback = nbx_result_fallback(r);
    it->anonymous = nbx_result_anonymous(r);
    it->expected_margin = nbx_result_expected_margin(r);
    nbx_result_exclusions(r, it->exclusions);
}

static void run_one(nbx_batch *b, worker *w, slot *s)
{
    nbx_request req;
    nbx_request_init(&req);
    req.customer = s->in.data;
    req.placements = b->placements;
    req.n_placements = b->n_placements;
    req.session = s->session;
    req.n_session = s->n_session;
    req.now_ms = b->now_ms;
    req.flags = b->flags & ~(unsigned)NBX_DECIDE_RECORD; /* recorded by record_group() */
    const nbx_result *r = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = nbx_decide(w->ctx, &req, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    copy_result(s, rc, r, rc ? nbx_ctx_errmsg(w->ctx) : NULL);
    if (s->item.status == NBX_OK)
        s->item.decide_ns =
            (uint64_t)((t1.tv_sec - t0.tv_sec) * INT64_C(1000000000) + (t1.tv_nsec - t0.tv_nsec));
}

/* Called with the lock held. */
static bool owner_should_wake(const nbx_batch *b)
{
    if (b->slots[b->head % b->n_slots].state != SLOT_DONE)
        return false;
    return b->done_untaken >= b->wake_mark || (b->running == 0 && b->claimed == b->submitted);
}

/* Called with the lock held: the slot's result may be taken. */
static void mark_done(nbx_batch *b, slot *s)
{
    s->state = SLOT_DONE;
    b->running--;
    b->done_untaken++;
    if (b->owner_waiting && owner_should_wake(b))
        pthread_cond_signal(&b->done_cv);
}

/* ------------------------------------------------------------------------
 * Recording (NBX_DECIDE_RECORD)
 * ------------------------------------------------------------------------ */

static int worker_caps_for(worker *w, nbx_snapshot *snap)
{
    if (w->caps_snap && w->caps_snap->catalog == snap->catalog) {
        nbx_snapshot_unref(snap);
        return NBX_OK;
    }
    nbx_caps_free(&w->caps);
    nbx_snapshot_unref(w->caps_snap);
    w->caps_snap = NULL;
    int rc = nbx_caps_init(&w->caps, snap->catalog);
    if (rc) {
        nbx_snapshot_unref(snap);
        return rc;
    }
    w->caps_snap = snap;
    return NBX_OK;
}

/* Record one decision in txn (record.c), all or nothing: the customer's
 * profile and counters as they are in txn, where nbx_decide() would drop an
 * action that no longer fits, make the decision stale. Returns NBX_OK
 * (recorded), NBX_DECISION_STALE (decide again) or an error. */
static int record_one(nbx_batch *b, worker *w, MDB_txn *txn, slot *s, nbx_err *e)
{
    const nbx_batch_item *it = &s->item;
    if (it->n_actions == 0)
        return NBX_OK;
    nbx_recorder rec = {.store = b->engine->store,
                        .txn = txn,
                        .catalog = w->caps_snap->catalog,
                        .caps = &w->caps,
                        .arena = &w->arena,
                        .scratch = &w->scratch};
    nbx_sv customer = nbx_sv_of(s->in.data);
    nbx_arena_reset(&w->arena);
    nbx_profile p = {.id = customer};
    int rc = nbx_store_profile_get(rec.store, txn, customer, &p, &w->arena, e);
    if (rc == NBX_ENOTFOUND) {
        memset(&p, 0, sizeof p);
        p.id = customer;
        rc = NBX_OK;
    }
    if (rc)
        return rc;
    /* the control treatment shows fallbacks: checked as fallbacks are */
    bool control = it->arm && strcmp(it->arm, NBX_ARM_HOLDOUT) == 0;
    nbx_decision_record d = {.id = it->decision_id,
                             .profile = &p,
                             .now_ms = b->now_ms,
                             .fallback = it->fallback || control,
                             .actions = it->actions,
                             .n_actions = it->n_actions};
    if (nbx_catalog_channel(rec.catalog, s->session, s->n_session, &d.channel, e) != NBX_OK)
        return NBX_DECISION_STALE; /* reloaded without the channel: decide again, and fail */
    return nbx_record_decision(&rec, &d, NULL, e);
}

/* Commit the impressions of the worker's pending decisions in one
 * transaction; hand back the recorded ones, decide the stale ones again
 * (they stay pending). Called without the lock. */
static void record_group(nbx_batch *b, worker *w)
{
    nbx_err e = {0};
    nbx_store *store = b->engine->store;
    MDB_txn *txn = NULL;
    int rc = worker_caps_for(w, nbx_engine_snapshot(b->engine));
    if (rc)
        nbx_err_set(&e, rc, "out of memory recording exposures");
    if (rc == NBX_OK)
        rc = nbx_store_write_begin(store, &txn, &e);
    for (size_t i = 0; i < w->n_pending && rc == NBX_OK; i++) {
        int v = record_one(b, w, txn, w->pending[i], &e);
        w->pending[i]->stale = v == NBX_DECISION_STALE;
        if (v < 0)
            rc = v;
    }
    if (txn && rc == NBX_OK)
        rc = nbx_store_commit(store, txn, &e);
    else if (txn)
        mdb_txn_abort(txn);
    if (rc)
        nbx_err_prefix(&e, "recording exposures: ");

    size_t keep = 0;
    for (size_t i = 0; i < w->n_pending; i++) {
        slot *s = w->pending[i];
        bool done = true;
        if (rc) {
            copy_result(s, rc, NULL, e.msg);
        } else if (s->stale && ++s->retries > RECORD_RETRIES_MAX) {
            copy_result(s, NBX_ELIMIT, NULL,
                        "recording exposures: the customer's caps kept changing under "
                        "concurrent writers; not recorded");
        } else if (s->stale) {
            run_one(b, w, s);
            done = s->item.status != NBX_OK;
        }
        if (done) {
            pthread_mutex_lock(&b->lock);
            mark_done(b, s);
            pthread_mutex_unlock(&b->lock);
        } else {
            w->pending[keep++] = s;
        }
    }
    w->n_pending = keep;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    nbx_batch *b = w->batch;
    bool record = (b->flags & NBX_DECIDE_RECORD) != 0;
    pthread_mutex_lock(&b->lock);
    for (;;) {
        if (b->stop)
            break; /* pending decisions are dropped unrecorded */
        if (w->n_pending && (b->claimed == b->submitted || w->n_pending >= RECORD_GROUP_MAX)) {
            /* Before going idle, or when the group is full. */
            pthread_mutex_unlock(&b->lock);
            record_group(b, w);
            pthread_mutex_lock(&b->lock);
            continue;
        }
        if (b->claimed == b->submitted) {
            b->idle++;
            pthread_cond_wait(&b->work_cv, &b->lock);
            b->idle--;
            continue;
        }
        slot *s = &b->slots[b->claimed % b->n_slots];
        b->claimed++;
        s->state = SLOT_RUNNING;
        s->retries = 0;
        b->running++;
        pthread_mutex_unlock(&b->lock);

        run_one(b, w, s);

        if (record && s->item.status == NBX_OK) {
            w->pending[w->n_pending++] = s;
            pthread_mutex_lock(&b->lock);
            continue;
        }
        pthread_mutex_lock(&b->lock);
        mark_done(b, s);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

/* ========================================================================
 * Open and close
 * ======================================================================== */

static void batch_free(nbx_batch *b)
{
    if (b->workers) {
        pthread_mutex_lock(&b->lock);
        b->stop = true;
        pthread_cond_broadcast(&b->work_cv);
        pthread_mutex_unlock(&b->lock);
        for (unsigned i = 0; i < b->n_threads; i++)
            if (b->workers[i].started)
                pthread_join(b->workers[i].thread, NULL);
        for (unsigned i = 0; i < b->n_threads; i++) {
            worker *w = &b->workers[i];
            nbx_ctx_close(w->ctx); /* before the plan it counts in */
            free(w->pending);
            nbx_caps_free(&w->caps);
            nbx_snapshot_unref(w->caps_snap);
            nbx_arena_free(&w->arena);
            nbx_buf_free(&w->scratch);
        }
        free(b->workers);
    }
    if (b->slots) {
        for (size_t i = 0; i < b->n_slots; i++) {
            nbx_buf_free(&b->slots[i].in);
            nbx_buf_free(&b->slots[i].out);
            free(b->slots[i].session);
            free(b->slots[i].actions);
            free(b->slots[i].reasons);
        }
        free(b->slots);
    }
    nbx_budget_plan_close(b->plan);
    pthread_cond_destroy(&b->done_cv);
    pthread_cond_destroy(&b->work_cv);
    pthread_mutex_destroy(&b->lock);
    nbx_arena_free(&b->scratch);
    free(b->strings);
    free(b->placements);
    free(b->base);
    free(b);
}

/* The plan counts for the catalog the batch starts with: a catalog
 * reloaded during the batch counts the store's budgets only (its offers
 * are other objects; the CLI never reloads). */
static int open_plan(nbx_batch *b)
{
    nbx_snapshot *snap = nbx_engine_snapshot(b->engine);
    int rc = snap->catalog->has_budgets ? nbx_budget_plan_open(snap->catalog, &b->plan) : NBX_OK;
    nbx_snapshot_unref(snap);
    return rc;
}

static int start_workers(nbx_batch *b, nbx_err *e)
{
    for (unsigned i = 0; i < b->n_threads; i++) {
        worker *w = &b->workers[i];
        w->batch = b;
        if (b->flags & NBX_DECIDE_RECORD) {
            w->pending = calloc(RECORD_GROUP_MAX, sizeof *w->pending);
            if (!w->pending)
                return nbx_err_set(e, NBX_ENOMEM, "out of memory starting a batch");
        }
        int rc = nbx_ctx_open(b->engine, &w->ctx);
        if (rc) {
            nbx_err_set(e, rc, "%s", nbx_last_errmsg());
            return nbx_err_prefix(e, "opening a context for batch thread %u: ", i + 1);
        }
        nbx_ctx_plan_budgets(w->ctx, b->plan);
    }
    /* Signals go to the application's threads, never to a worker that runs
     * a policy. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = NBX_OK;
    for (unsigned i = 0; i < b->n_threads && rc == NBX_OK; i++) {
        int err = pthread_create(&b->workers[i].thread, NULL, worker_main, &b->workers[i]);
        if (err)
            rc = nbx_err_set(e, NBX_ENOMEM, "starting batch thread %u: %s", i + 1, strerror(err));
        else
            b->workers[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

NBX_API int nbx_batch_open(nbx_engine *engine, const nbx_batch_options *opts, nbx_batch **out)
{
    if (out)
        *out = NULL;
    if (!engine || !out)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_batch_open: NULL argument");
    nbx_batch_options defaults;
    nbx_batch_options_init(&defaults);
    const nbx_batch_options *o = opts ? opts : &defaults;
    nbx_err e = {0};
    int rc = check_options(engine, o, &e);
    if (rc)
        return nbx_publish(NULL, &e);

    nbx_batch *b = calloc(1, sizeof *b);
    if (!b)
        return nbx_fail(NULL, NBX_ENOMEM, "out of memory");
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->work_cv, NULL);
    pthread_cond_init(&b->done_cv, NULL);
    b->engine = engine;
    b->n_threads = o->threads ? o->threads : available_cpus();
    if (b->n_threads > NBX_BATCH_THREADS_MAX)
        b->n_threads = NBX_BATCH_THREADS_MAX;
    b->window = o->window ? o->window : (size_t)WINDOW_PER_THREAD * b->n_threads;
    b->n_slots = b->window + 1;
    b->wake_mark = b->window / 4 ? b->window / 4 : 1;
    if (b->wake_mark > WAKE_MARK_MAX)
        b->wake_mark = WAKE_MARK_MAX;
    b->flags = o->flags;
    b->shard_count = o->shard_count;
    b->shard_index = o->shard_index;
    b->now_ms = o->now_ms ? o->now_ms : nbx_time_now();

    rc = copy_shared_request(b, o);
    if (rc == NBX_OK && !(b->flags & NBX_DECIDE_RECORD))
        rc = open_plan(b);
    if (rc == NBX_OK) {
        b->slots = calloc(b->n_slots, sizeof *b->slots);
        b->workers = calloc(b->n_threads, sizeof *b->workers);
        if (!b->slots || !b->workers)
            rc = NBX_ENOMEM;
    }
    for (size_t i = 0; rc == NBX_OK && i < b->n_slots; i++) {
        b->slots[i].session = calloc(NBX_REQUEST_SESSION_MAX, sizeof(nbx_kv));
        if (!b->slots[i].session)
            rc = NBX_ENOMEM;
    }
    if (rc)
        nbx_err_set(&e, rc, "out of memory for a batch window of %zu", b->window);
    else
        rc = start_workers(b, &e);
    if (rc) {
        batch_free(b);
        return nbx_publish(NULL, &e);
    }
    *out = b;
    return NBX_OK;
}

NBX_API void nbx_batch_close(nbx_batch *b)
{
    if (b)
        batch_free(b);
}

/* ========================================================================
 * Submit
 * ======================================================================== */

static int batch_fail(nbx_batch *b, const nbx_err *e)
{
    b->err = *e;
    return nbx_publish(b, e);
}

NBX_API size_t nbx_batch_space(const nbx_batch *b)
{
    if (!b)
        return 0;
    return b->window - (size_t)(b->submitted - b->head);
}

NBX_API size_t nbx_batch_pending(const nbx_batch *b)
{
    return b ? (size_t)(b->submitted - b->head) : 0;
}

/* Hand a filled slot to the workers. */
static void enqueue(nbx_batch *b, slot *s)
{
    pthread_mutex_lock(&b->lock);
    s->state = SLOT_QUEUED;
    b->submitted++;
    if (b->idle && b->submitted - b->claimed >= b->wake_mark)
        pthread_cond_signal(&b->work_cv);
    pthread_mutex_unlock(&b->lock);
}

static slot *free_slot(nbx_batch *b, nbx_err *e)
{
    if (nbx_batch_space(b) == 0) {
        nbx_err_set(e, NBX_ELIMIT,
                    "the batch window (%zu) is full: take results with nbx_batch_next() first",
                    b->window);
        return NULL;
    }
    return &b->slots[b->submitted % b->n_slots];
}

/* Merge the base session and the customer's own fields (already copied
 * into s->in after the id, n_own key/value pairs) into s->session. */
static int merge_session(nbx_batch *b, slot *s, size_t n_own, nbx_err *e)
{
    nbx_kv own[NBX_REQUEST_SESSION_MAX];
    const char *p = s->in.data;
    p += strlen(p) + 1; /* the customer id */
    for (size_t i = 0; i < n_own; i++) {
        own[i].key = p;
        p += strlen(p) + 1;
        own[i].value = p;
        p += strlen(p) + 1;
    }
    size_t n = 0;
    for (size_t i = 0; i < b->n_base; i++) {
        bool replaced = false;
        for (size_t j = 0; j < n_own && !replaced; j++)
            replaced = strcmp(b->base[i].key, own[j].key) == 0;
        if (!replaced)
            s->session[n++] = b->base[i];
    }
    if (n + n_own > NBX_REQUEST_SESSION_MAX)
        return nbx_err_set(e, NBX_EINVAL,
                           "field 'session': %zu keys with the batch's own, the "
                           "limit is %d",
                           n + n_own, NBX_REQUEST_SESSION_MAX);
    memcpy(s->session + n, own, n_own * sizeof *own);
    s->n_session = n + n_own;
    return NBX_OK;
}

static int check_customer(nbx_sv id, nbx_err *e)
{
    if (id.len > NBX_ID_MAX)
        return nbx_err_set(e, NBX_EINVAL, "customer: longer than %d bytes", NBX_ID_MAX);
    if (!nbx_id_valid(id, e)) {
        e->code = NBX_EINVAL;
        return nbx_err_prefix(e, "customer: ");
    }
    return NBX_OK;
}

NBX_API int nbx_batch_submit(nbx_batch *b, const char *customer, const nbx_kv *session,
                             size_t n_session, void *user)
{
    if (!b || !customer)
        return nbx_fail(b, NBX_EINVAL, "nbx_batch_submit: NULL argument");
    nbx_err e = {0};
    slot *s = free_slot(b, &e);
    if (!s)
        return batch_fail(b, &e);
    size_t id_len = strnlen(customer, NBX_ID_MAX + 1);
    if (check_customer((nbx_sv){customer, id_len}, &e))
        return batch_fail(b, &e);
    if (b->shard_count && nbx_hash64(customer, id_len, 0) % b->shard_count != b->shard_index) {
        b->stats.other_shard++;
        return NBX_DONE;
    }
    if (n_session > NBX_REQUEST_SESSION_MAX) {
        nbx_err_set(&e, NBX_EINVAL, "field 'session': %zu keys, the limit is %d", n_session,
                    NBX_REQUEST_SESSION_MAX);
        return batch_fail(b, &e);
    }
    if (n_session && !session) {
        nbx_err_set(&e, NBX_EINVAL, "field 'session': n_session set, list is NULL");
        return batch_fail(b, &e);
    }
    nbx_buf *in = &s->in;
    nbx_buf_reset(in);
    nbx_buf_append(in, customer, id_len);
    nbx_buf_putc(in, '\0');
    for (size_t i = 0; i < n_session; i++) {
        if (nbx_session_field_check(&session[i], i, &e)) {
            nbx_err_prefix(&e, "nbx_batch_submit: ");
            return batch_fail(b, &e);
        }
        nbx_buf_append(in, session[i].key, strlen(session[i].key) + 1);
        nbx_buf_append(in, session[i].value, strlen(session[i].value) + 1);
    }
    if (in->oom) {
        nbx_err_set(&e, NBX_ENOMEM, "out of memory queueing a decision");
        return batch_fail(b, &e);
    }
    if (merge_session(b, s, n_session, &e))
        return batch_fail(b, &e);
    s->user = user;
    enqueue(b, s);
    return NBX_OK;
}

/* One field of a customer line: its value as session text. */
static int read_field_value(nbx_jr *r, nbx_sv key, nbx_sv *value, bool *present, nbx_err *e)
{
    *present = true;
    nbx_jtype t = nbx_jr_peek(r);
    bool ok = true;
    switch (t) {
    case NBX_J_STRING:
        ok = nbx_jr_string(r, value);
        break;
    case NBX_J_NUMBER: {
        const char *start = r->p;
        double d;
        ok = nbx_jr_number(r, &d);
        *value = (nbx_sv){start, (size_t)(r->p - start)};
        break;
    }
    case NBX_J_TRUE:
    case NBX_J_FALSE: {
        bool v;
        ok = nbx_jr_bool(r, &v);
        *value = v ? NBX_SV("true") : NBX_SV("false");
        break;
    }
    case NBX_J_NULL:
        ok = nbx_jr_null(r);
        *present = false;
        break;
    case NBX_J_OBJECT:
    case NBX_J_ARRAY:
        return nbx_err_set(e, NBX_EPARSE, "field '%.*s': must be a string, number or boolean",
                           (int)(key.len > 64 ? 64 : key.len), key.ptr);
    default:
        /* No value starts here (a stray byte, or the line ends): peeking
         * leaves the reader without a message of its own. */
        return nbx_err_set(e, NBX_EPARSE, "field '%.*s': expected a value at column %zu",
                           (int)(key.len > 64 ? 64 : key.len), key.ptr, nbx_jr_column(r));
    }
    if (!ok)
        return nbx_err_set(e, NBX_EPARSE, "%s", r->err);
    if (*present && value->len > NBX_VALUE_MAX)
        return nbx_err_set(e, NBX_EPARSE, "field '%.*s': %zu bytes, the limit is %d",
                           (int)(key.len > 64 ? 64 : key.len), key.ptr, value->len, NBX_VALUE_MAX);
    if (*present && memchr(value->ptr, '\0', value->len))
        return nbx_err_set(e, NBX_EPARSE, "field '%.*s': must not contain NUL",
                           (int)(key.len > 64 ? 64 : key.len), key.ptr);
    return NBX_OK;
}

static int parse_customer_line(nbx_batch *b, const char *json, size_t len, nbx_sv *id, nbx_kv *kv,
                               size_t *n_kv, nbx_err *e)
{
    /* Keys and values point into the line or the scratch arena; they are
     * NUL-terminated by copying into the arena. */
    nbx_arena_reset(&b->scratch);
    nbx_jr r;
    nbx_jr_init(&r, json, len, &b->scratch);
    if (nbx_jr_peek(&r) != NBX_J_OBJECT)
        return nbx_err_set(e, NBX_EPARSE, "expected a JSON object with \"id\"");
    if (!nbx_jr_object_begin(&r))
        return nbx_err_set(e, NBX_EPARSE, "%s", r.err);
    bool have_id = false;
    *n_kv = 0;
    nbx_sv key;
    int more;
    while ((more = nbx_jr_object_next(&r, &key)) == 1) {
        if (nbx_sv_eq_cstr(key, "id")) {
            if (have_id)
                return nbx_err_set(e, NBX_EPARSE, "field 'id': given twice");
            if (nbx_jr_peek(&r) != NBX_J_STRING)
                return nbx_err_set(e, NBX_EPARSE, "field 'id': must be a string");
            if (!nbx_jr_string(&r, id))
                return nbx_err_set(e, NBX_EPARSE, "%s", r.err);
            if (!nbx_id_valid(*id, e))
                return NBX_EPARSE;
            have_id = true;
            continue;
        }
        if (key.len == 0 || key.len > NBX_KEY_MAX || memchr(key.ptr, '\0', key.len))
            return nbx_err_set(e, NBX_EPARSE, "field '%.*s': a session key must be 1 to %d bytes",
                               (int)(key.len > 64 ? 64 : key.len), key.ptr, NBX_KEY_MAX);
        for (size_t i = 0; i < *n_kv; i++)
            if (nbx_sv_eq_cstr(key, kv[i].key))
                return nbx_err_set(e, NBX_EPARSE, "field '%.*s': given twice",
                                   (int)(key.len > 64 ? 64 : key.len), key.ptr);
        nbx_sv value;
        bool present;
        if (read_field_value(&r, key, &value, &present, e))
            return NBX_EPARSE;
        if (!present)
            continue;
        if (*n_kv >= NBX_REQUEST_SESSION_MAX)
            return nbx_err_set(e, NBX_EPARSE, "more than %d session fields",
                               NBX_REQUEST_SESSION_MAX);
        kv[*n_kv].key = nbx_arena_strndup(&b->scratch, key.ptr, key.len);
        kv[*n_kv].value = nbx_arena_strndup(&b->scratch, value.ptr, value.len);
        if (!kv[*n_kv].key || !kv[*n_kv].value)
            return nbx_err_set(e, NBX_ENOMEM, "out of memory reading a customer line");
        (*n_kv)++;
    }
    if (more < 0 || !nbx_jr_finish(&r))
        return nbx_err_set(e, NBX_EPARSE, "%s", r.err);
    if (!have_id)
        return nbx_err_set(e, NBX_EPARSE, "field 'id': is required");
    return NBX_OK;
}

NBX_API int nbx_batch_submit_json(nbx_batch *b, const char *json, size_t len, void *user)
{
    if (!b || !json)
        return nbx_fail(b, NBX_EINVAL, "nbx_batch_submit_json: NULL argument");
    nbx_err e = {0};
    if (len > NBX_LINE_MAX) {
        nbx_err_set(&e, NBX_ELIMIT, "customer line is %zu bytes, the limit is %d", len,
                    NBX_LINE_MAX);
        return batch_fail(b, &e);
    }
    if (!free_slot(b, &e))
        return batch_fail(b, &e);
    nbx_sv id = {NULL, 0};
    nbx_kv kv[NBX_REQUEST_SESSION_MAX];
    size_t n_kv = 0;
    if (parse_customer_line(b, json, len, &id, kv, &n_kv, &e))
        return batch_fail(b, &e);
    char customer[NBX_ID_MAX + 1];
    memcpy(customer, id.ptr, id.len);
    customer[id.len] = '\0';
    return nbx_batch_submit(b, customer, kv, n_kv, user);
}

/* ========================================================================
 * Next
 * ======================================================================== */

static void count_item(nbx_batch_stats *st, const nbx_batch_item *it)
{
    st->taken++;
    if (it->status != NBX_OK) {
        st->failed++;
        return;
    }
    st->decided++;
    st->fallbacks += it->fallback != 0;
    st->anonymous += it->anonymous != 0;
    st->actions += it->n_actions;
    st->expected_margin += it->expected_margin;
    for (int i = 0; i < NBX_EXCLUDED_COUNT; i++)
        st->exclusions[i] += it->exclusions[i];
}

NBX_API int nbx_batch_next(nbx_batch *b, const nbx_batch_item **out)
{
    if (out)
        *out = NULL;
    if (!b || !out)
        return nbx_fail(b, NBX_EINVAL, "nbx_batch_next: NULL argument");
    pthread_mutex_lock(&b->lock);
    if (b->holding) {
        b->slots[(b->head - 1) % b->n_slots].state = SLOT_FREE;
        b->holding = false;
    }
    if (b->head == b->submitted) {
        pthread_mutex_unlock(&b->lock);
        return NBX_DONE;
    }
    slot *s = &b->slots[b->head % b->n_slots];
    if (s->state != SLOT_DONE) {
        if (b->idle && b->claimed < b->submitted)
            pthread_cond_broadcast(&b->work_cv);
        b->owner_waiting = true;
        while (s->state != SLOT_DONE)
            pthread_cond_wait(&b->done_cv, &b->lock);
        b->owner_waiting = false;
    }
    s->item.index = b->head;
    b->head++;
    b->done_untaken--;
    b->holding = true;
    pthread_mutex_unlock(&b->lock);

    s->item.customer = s->in.data;
    s->item.user = s->user;
    count_item(&b->stats, &s->item);
    *out = &s->item;
    return NBX_OK;
}

NBX_API int nbx_batch_stats_get(const nbx_batch *b, nbx_batch_stats *out)
{
    if (!b || !out)
        return nbx_fail(b, NBX_EINVAL, "nbx_batch_stats_get: NULL argument");
    *out = b->stats;
    out->submitted = b->submitted;
    return NBX_OK;
}

NBX_API const char *nbx_batch_errmsg(const nbx_batch *b)
{
    if (!b)
        return "NULL batch";
    return b->err.msg;
}

/* ========================================================================
 * Sharding
 * ======================================================================== */

NBX_API uint32_t nbx_shard_of(const char *id, uint32_t n)
{
    if (!id || n == 0)
        return UINT32_MAX;
    return (uint32_t)(nbx_hash64(id, strlen(id), 0) % n);
}
