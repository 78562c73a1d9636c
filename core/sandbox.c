/*
 * sandbox.c: the policy sandbox, one LuaJIT state per (policy, catalog) pair
 * and context: building it, loading the policy, running a decision, and the
 * fault records that name where and why a policy failed.
 *
 * A state is built once: the engine's tables (sandbox_env.c, sandbox_io.c),
 * then the policy's top level under the load limits, then everything the
 * policy built is frozen. A decision then crosses from C into Lua once: the
 * driver (sandbox.lua) loops over the candidates inside the VM. A fault (an
 * error, the time or memory limit, a bad score) gives the fallback decision;
 * the state stays usable, so a hostile policy cannot make every decision pay
 * for rebuilding it. docs/sandbox.md has the threat model.
 */
#include "sandbox_int.h"

#include <lauxlib.h>
#include <luajit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SB_NAME_MAX 127

/* ========================================================================
 * Time: the policy's own ticks (lsource.c, sandbox_limits.c)
 * ======================================================================== */

static void sb_run_start(nbx_sandbox *sb, uint32_t budget_us, size_t object_max)
{
    sb->pcall_depth = 0;
    sb->object_max = object_max;
    sb->in_policy = true;
    sb_clock_start(sb, budget_us);
}

/* After policy code returned: true when it ran past its deadline without a
 * check noticing (one long operation). Such a run is a timeout like any
 * other: it is never reported as a normal decision. */
static bool sb_run_stop(nbx_sandbox *sb)
{
    bool late = !sb->timed_out && sb_time_up(sb);
    sb_clock_stop(sb);
    sb->in_policy = false;
    return late;
}

/* ========================================================================
 * Building a state
 * ======================================================================== */

/* Everything but the policy: runs once per state under lua_cpcall, with no
 * memory limit yet. */
static int sb_build_state(lua_State *L)
{
    nbx_sandbox *sb = lua_touserdata(L, 1);
    int slots = sb_env_build(L, sb);
    sb_share_arrays(L, sb, slots);
    sb_push_catalog(L, slots, sb->catalog);
    sb_env_finish(L, slots);
    lua_settop(L, 0);
    return 0;
}

/* ========================================================================
 * Loading the policy
 * ======================================================================== */

typedef struct sb_load {
    nbx_sandbox *sb;
    int status;                   /* of the chunk: LUA_OK or an error */
    char problem[NBX_ERRMSG_MAX]; /* a contract violation, or "" */
} sb_load;

static int sb_load_problem(sb_load *ld, const char *fmt, ...) NBX_PRINTF(2, 3);
static int sb_load_problem(sb_load *ld, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->problem, sizeof ld->problem, fmt, ap);
    va_end(ap);
    return 0;
}

static void sb_where_of_function(nbx_sandbox *sb, lua_State *L, int idx, char *out, size_t n)
{
    lua_Debug ar;
    lua_pushvalue(L, idx);
    if (lua_getinfo(L, ">S", &ar) && ar.linedefined > 0)
        snprintf(out, n, "%s:%d", sb->policy->chunkname + 1, ar.linedefined);
    else
        snprintf(out, n, "%s", sb->policy->chunkname + 1);
}

static bool sb_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* Check the table the top level returned (at P); note what the driver needs. */
static int sb_check_contract(lua_State *L, nbx_sandbox *sb, sb_load *ld, int P)
{
    if (lua_type(L, P) != LUA_TTABLE)
        return sb_load_problem(ld, "the policy must return a table (it returned %s)",
                               luaL_typename(L, P));
    lua_getfield(L, P, "name");
    size_t name_len = 0;
    const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &name_len) : NULL;
    if (!name)
        return sb_load_problem(ld, "the policy table needs a 'name' string (got %s)",
                               luaL_typename(L, -1));
    /* The name is printed on terminals, in logs and in every result. */
    if (name_len == 0 || name_len > SB_NAME_MAX || strlen(name) != name_len ||
        !sb_printable(name, name_len))
        return sb_load_problem(ld,
                               "the policy's 'name' must be 1 to %d bytes of printable UTF-8 "
                               "text (no control characters)",
                               SB_NAME_MAX);
    for (size_t i = 0; i < name_len;) {
        size_t k =
            nbx_utf8_len((const unsigned char *)name + i, (const unsigned char *)name + name_len);
        if (k == 0 ||
            (k == 2 && (unsigned char)name[i] == 0xc2 && (unsigned char)name[i + 1] < 0xa0))
            return sb_load_problem(ld,
                                   "the policy's 'name' must be 1 to %d bytes of printable UTF-8 "
                                   "text (no control characters)",
                                   SB_NAME_MAX);
        i += k;
    }
    lua_getfield(L, P, "score");
    int score = lua_gettop(L);
    if (lua_type(L, score) != LUA_TFUNCTION)
        return sb_load_problem(ld, "the policy table needs a 'score' function (got %s)",
                               luaL_typename(L, score));
    lua_getfield(L, P, "eligible");
    int eligible = lua_gettop(L);
    if (!lua_isnil(L, eligible) && lua_type(L, eligible) != LUA_TFUNCTION)
        return sb_load_problem(ld, "the policy's 'eligible' must be a function (got %s)",
                               luaL_typename(L, eligible));
    lua_getfield(L, P, "params");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TTABLE)
        return sb_load_problem(ld, "the policy's 'params' must be a table (got %s)",
                               luaL_typename(L, -1));
    lua_pop(L, 1);
    /* The first load of a policy (before it is shared) names it; later
     * sandboxes only read the name. */
    if (sb->policy->name[0] == '\0')
        memcpy(sb->policy->name, name, name_len + 1);
    sb_where_of_function(sb, L, score, sb->score_where, sizeof sb->score_where);
    if (!lua_isnil(L, eligible))
        sb_where_of_function(sb, L, eligible, sb->eligible_where, sizeof sb->eligible_where);
    return 1;
}

/* The driver over score (at score) and eligible (at eligible). */
static void sb_make_driver(lua_State *L, int slots, int score, int eligible)
{
    sb_slot_get(L, slots, SLOT_LIB);
    lua_getfield(L, -1, "make_driver");
    lua_pushvalue(L, score);
    lua_pushvalue(L, eligible);
    static const int args[] = {SLOT_OFFERS, SLOT_PLACES,    SLOT_CUSTOMER, SLOT_SESSION,
                               SLOT_CUST,   SLOT_RFM,       SLOT_EXPOSURES, SLOT_SESS,
                               SLOT_ARRAYS, SLOT_R,         SLOT_ST,        SLOT_BAD};
    for (size_t i = 0; i < NBX_ARRAY_LEN(args); i++)
        sb_slot_get(L, slots, args[i]);
    lua_call(L, 2 + (int)NBX_ARRAY_LEN(args), 1);
    sb_slot_set(L, slots, SLOT_DRIVER);
    lua_pop(L, 1);
}

/* Compile and run the policy's top level under the load limits, check the
 * table it returns, freeze what it built, freeze its environment and build
 * the driver. */
static int sb_load_policy(lua_State *L)
{
    sb_load *ld = lua_touserdata(L, 1);
    nbx_sandbox *sb = ld->sb;
    nbx_policy *pol = sb->policy;
    lua_settop(L, 0);
    lua_checkstack(L, 32);
    sb_fault_reset(sb);
    lua_rawgeti(L, LUA_REGISTRYINDEX, sb->ref_slots);
    int slots = 1;
    sb_slot_get(L, slots, SLOT_MSGH); /* 2 */
    /* Text only: a binary chunk is unverified bytecode. */
    int st = luaL_loadbufferx(L, pol->exec_source, pol->exec_len, pol->chunkname, "t");
    if (st != 0) {
        ld->status = st;
        if (st == LUA_ERRSYNTAX)
            sb_describe_error(sb, L, -1);
        return 0;
    }
    int chunk = lua_gettop(L); /* 3 */
    sb_slot_get(L, slots, SLOT_ENV);
    lua_setfenv(L, chunk);

    sb->rng = 0;
    sb_run_start(sb, sb->limits.load_time_us, SB_OBJECT_MAX_LOAD);
    st = lua_pcall(L, 0, 1, 2);
    bool late = false;
    if (st == 0 && !sb->timed_out && !sb->mem_exceeded && !sb->object_exceeded) {
        int P = lua_gettop(L);
        /* Freezing runs on the load's clock, as engine work (no object cap). */
        sb->in_policy = false;
        if (sb_check_contract(L, sb, ld, P) && !ld->problem[0]) {
            lua_getfield(L, P, "score");
            lua_getfield(L, P, "eligible");
            sb_freeze(L, slots, P);
            sb_slot_get(L, slots, SLOT_LIB);
            lua_getfield(L, -1, "expected_margin_score");
            sb->native_score = lua_isnil(L, -3) && lua_rawequal(L, -1, -4);
            lua_pop(L, 2);
            sb_make_driver(L, slots, lua_gettop(L) - 1, lua_gettop(L));
        }
        sb->in_policy = true;
    }
    late = sb_run_stop(sb);
    if (late)
        sb->timed_out = true;
    if (st != 0 || sb->timed_out || sb->mem_exceeded || sb->object_exceeded) {
        ld->status = st ? st : LUA_ERRRUN;
        return 0;
    }
    if (ld->problem[0])
        return 0;
    /* Globals are frozen from here on. */
    sb_slot_get(L, slots, SLOT_ENV_MT);
    sb_slot_get(L, slots, SLOT_GLOBAL_WRITE);
    lua_setfield(L, -2, "__newindex");
    lua_settop(L, 0);
    return 0;
}

/* What the policy holds: the state beyond the engine's own tables. */
static size_t sb_policy_bytes(const nbx_sandbox *sb)
{
    return sb->used > sb->engine_bytes ? sb->used - sb->engine_bytes : 0;
}

/* Keep collection ahead of the limit. LuaJIT starts a cycle when the heap
 * reaches pause% of what the last one left, and then works stepmul% as fast
 * as the program allocates; it never collects on an allocation failure.
 * So a cycle starts halfway between what is live and the limit, and must
 * get through the live heap (marking, then sweeping: about twice its size)
 * before allocation eats the other half. */
static void sb_tune_gc(nbx_sandbox *sb)
{
    double live = sb->used ? (double)sb->used : 1;
    double headroom = sb->limit_abs > sb->used ? (double)(sb->limit_abs - sb->used) : 0;
    double pause = 100.0 * (live + headroom / 2) / live;
    if (pause > 200)
        pause = 200;
    if (pause < 110)
        pause = 110;
    double start = live * pause / 100;
    double runway = (double)sb->limit_abs - start;
    double stepmul = runway > 0 ? 100.0 * 2.5 * live / runway : 1000;
    if (stepmul < 200)
        stepmul = 200;
    if (stepmul > 1000)
        stepmul = 1000;
    lua_gc(sb->L, LUA_GCSETPAUSE, (int)pause);
    lua_gc(sb->L, LUA_GCSETSTEPMUL, (int)stepmul);
}

/* A full collection sets the next cycle's start from the pause in force
 * when it ends: tune before (from what is in use now), collect, then tune
 * again from what is live. */
static void sb_full_gc(nbx_sandbox *sb)
{
    sb_tune_gc(sb);
    lua_gc(sb->L, LUA_GCCOLLECT, 0);
    sb->policy_live = sb_policy_bytes(sb);
    sb_tune_gc(sb);
}

/* LuaJIT raises "not enough memory" without trying a collection first, so
 * garbage must never be what reaches the limit: collect fully, outside the
 * policy's time, once garbage has used half the headroom the policy's live
 * data leaves. A decision can only leave garbage (sb_freeze), and no more
 * than it could allocate within its time, so this costs what the decision
 * did. */
static void sb_collect_if_needed(nbx_sandbox *sb, bool force)
{
    size_t live = sb->policy_live;
    size_t headroom = sb->limits.memory > live ? sb->limits.memory - live : 0;
    if (!force && sb_policy_bytes(sb) <= live + headroom / 2)
        return;
    sb_full_gc(sb);
}

static void sb_close_state(nbx_sandbox *sb)
{
    if (sb->L)
        lua_close(sb->L);
    sb->L = NULL;
    sb->used = 0;
    sb_blocks_free(sb);
}

/* How Lua abbreviates a "@file" chunk name in messages ("...tail" when long). */
static void sb_short_src(const char *chunkname, char *out, size_t n)
{
    const char *src = chunkname + 1;
    size_t len = strlen(src);
    if (len >= n)
        snprintf(out, n, "...%s", src + len - (n - 4));
    else
        snprintf(out, n, "%s", src);
}

/* "<path>:<line>: " when the fault has a line, else "<path>: ". */
static int sb_load_error(nbx_err *e, const nbx_sandbox *sb, const char *fmt, ...) NBX_PRINTF(3, 4);
static int sb_load_error(nbx_err *e, const nbx_sandbox *sb, const char *fmt, ...)
{
    char reason[NBX_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    const char *colon = strrchr(sb->where, ':');
    if (colon && colon[1])
        return nbx_err_set(e, NBX_EPOLICY, "%s:%s: %s", sb->policy->path, colon + 1, reason);
    return nbx_err_set(e, NBX_EPOLICY, "%s: %s", sb->policy->path, reason);
}

static void sb_reset_flags(nbx_sandbox *sb)
{
    sb->mem_exceeded = false;
    sb->object_exceeded = false;
    sb->real_oom = false;
    sb->timed_out = false;
}

static int sb_build(nbx_sandbox *sb, nbx_err *e)
{
    const char *path = sb->policy->path;
    sb->used = 0;
    sb->limit_abs = SIZE_MAX;
    sb_reset_flags(sb);
    sb->wall_check = INT64_MAX;
    sb->warmed = false;
    sb->log_on = false;
    memset(sb->map_dirty, 0, sizeof sb->map_dirty);
    lua_State *L = lua_newstate(sb_alloc, sb);
    if (!L)
        return nbx_err_set(e, NBX_ENOMEM, "%s: cannot create a Lua state", path);
    sb->L = L;
    /* The JIT is on: the policy's ticks are in the code it compiles
     * (sandbox_limits.c), so compiled loops look at the clock too. */
    if (sb->limits.flags & NBX_LIMITS_NO_JIT)
        luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    int st = lua_cpcall(L, sb_build_state, sb);
    if (st != 0) {
        int code = st == LUA_ERRMEM ? NBX_ENOMEM : NBX_EPOLICY;
        nbx_err_set(e, code, "%s: cannot build the sandbox: %s", path,
                    lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
        sb_close_state(sb);
        return code;
    }
    /* The build's garbage is not the engine's: collect it first. */
    lua_gc(L, LUA_GCCOLLECT, 0);
    sb->engine_bytes = sb->used;
    sb->limit_abs = sb->engine_bytes + sb->limits.memory;

    sb_load ld = {.sb = sb};
    st = lua_cpcall(L, sb_load_policy, &ld);
    int code = NBX_OK;
    if (sb->real_oom) {
        code = nbx_err_set(e, NBX_ENOMEM, "%s: out of memory loading the policy", path);
    } else if (sb->object_exceeded) {
        code = sb_load_error(e, sb, "the policy exceeded its memory limit while loading: %s",
                             sb->reason[0] ? sb->reason : "one object is too big");
        if (!sb->reason[0])
            code = sb_load_error(e, sb,
                                 "the policy exceeded its memory limit while loading: one table "
                                 "or string of %zu bytes (the limit for one is %u)",
                                 sb->refused, SB_OBJECT_MAX_LOAD);
    } else if (sb->mem_exceeded) {
        code = sb_load_error(e, sb, "the policy exceeded its memory limit (%zu KiB) while loading",
                             sb->limits.memory >> 10);
    } else if (sb->timed_out) {
        code = sb_load_error(e, sb, "the policy's top level exceeded the load time limit (%u ms)",
                             sb->limits.load_time_us / 1000);
    } else if (st != 0) {
        code = nbx_err_set(e, NBX_EPOLICY, "%s: cannot load the policy: %s", path,
                           lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
    } else if (ld.status != 0) {
        code = sb_load_error(e, sb, "%s", sb->reason[0] ? sb->reason : "the policy failed to load");
    } else if (ld.problem[0]) {
        code = nbx_err_set(e, NBX_EPOLICY, "%s: %s", path, ld.problem);
    }
    if (code != NBX_OK) {
        sb_close_state(sb);
        return code;
    }
    lua_settop(L, 0);
    sb_full_gc(sb);
    sb_fault_reset(sb);
    return NBX_OK;
}

/* ========================================================================
 * Public (internal) interface
 * ======================================================================== */

/* Grow a shared array to hold elements 0..cap (index k is candidate k). */
static bool sb_grow(void *pp, size_t cap, size_t size)
{
    void *p = realloc(*(void **)pp, (cap + 1) * size);
    if (!p)
        return false;
    *(void **)pp = p;
    return true;
}

/* Room for n candidates: the per-run C arrays and the shared ones (whose
 * FFI pointers the next run makes again when they moved). */
static int sb_reserve(nbx_sandbox *sb, size_t n)
{
    if (n <= sb->live_cap)
        return NBX_OK;
    size_t cap = n < 64 ? 64 : n;
    struct sb_shared *a = &sb->shared;
    if (!sb_grow(&sb->live, cap, sizeof *sb->live) ||
        !sb_grow(&sb->results, cap, sizeof *sb->results) ||
        !sb_grow(&a->co, cap, sizeof *a->co) || !sb_grow(&a->cp, cap, sizeof *a->cp) ||
        !sb_grow(&a->x, 7 * cap, sizeof *a->x) || !sb_grow(&a->s, cap, sizeof *a->s) ||
        !sb_grow(&a->m, cap, sizeof *a->m) || !sb_grow(&a->f, cap, sizeof *a->f))
        return NBX_ENOMEM;
    a->cap = cap;
    a->stale = true;
    sb->live_cap = cap;
    return NBX_OK;
}

int nbx_sandbox_open(nbx_policy *policy, nbx_catalog *catalog, const nbx_limits *limits,
                     nbx_sandbox **out, nbx_err *e)
{
    if (!out)
        return nbx_err_set(e, NBX_EINVAL, "nbx_sandbox_open: out is NULL");
    *out = NULL;
    if (!policy || !policy->source || !policy->exec_source || !policy->chunkname || !policy->path)
        return nbx_err_set(e, NBX_EINVAL, "nbx_sandbox_open: no policy");
    nbx_sandbox *sb = calloc(1, sizeof *sb);
    if (!sb)
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    if (limits)
        sb->limits = *limits;
    if (sb->limits.time_us == 0)
        sb->limits.time_us = NBX_DEFAULT_TIME_LIMIT_US;
    if (sb->limits.memory == 0)
        sb->limits.memory = NBX_DEFAULT_MEMORY_LIMIT;
    if (sb->limits.load_time_us == 0)
        sb->limits.load_time_us = SB_LOAD_TIME_US;
    sb->policy = nbx_policy_ref(policy);
    sb->catalog = nbx_catalog_ref(catalog);
    sb->lp_limit.check = sb_pattern_check;
    sb->lp_limit.too_big = sb_pattern_too_big;
    sb->lp_limit.ud = sb;
    sb->lp_limit.max_result = SB_STRING_MAX;
    sb->wall_check = INT64_MAX;
    sb_short_src(policy->chunkname, sb->short_src, sizeof sb->short_src);
    size_t n_offers = catalog ? catalog->n_offers : 0, pairs = 0;
    for (size_t i = 0; i < n_offers; i++)
        pairs += catalog->offers[i].n_placements;
    sb->shared.pr = calloc(n_offers + 1, sizeof *sb->shared.pr);
    sb->log_off = calloc(SB_LOG_LINES, sizeof *sb->log_off);
    sb->log = calloc(SB_LOG_LINES, sizeof *sb->log);
    if (!sb->shared.pr || !sb->log_off || !sb->log || sb_reserve(sb, pairs) != NBX_OK) {
        nbx_sandbox_close(sb);
        return nbx_err_set(e, NBX_ENOMEM, "out of memory");
    }
    int rc = sb_build(sb, e);
    if (rc != NBX_OK) {
        nbx_sandbox_close(sb);
        return rc;
    }
    *out = sb;
    return NBX_OK;
}

void nbx_sandbox_close(nbx_sandbox *sb)
{
    if (!sb)
        return;
    sb_close_state(sb);
    sb_spare_free(sb);
    nbx_policy_unref(sb->policy);
    nbx_catalog_unref(sb->catalog);
    free(sb->live);
    free(sb->results);
    free(sb->shared.co);
    free(sb->shared.cp);
    free(sb->shared.x);
    free(sb->shared.s);
    free(sb->shared.m);
    free(sb->shared.f);
    free(sb->shared.pr);
    nbx_buf_free(&sb->text);
    free(sb->log_off);
    free(sb->log);
    free(sb);
}

size_t nbx_sandbox_log(const nbx_sandbox *sb, const char *const **lines, uint32_t *dropped)
{
    if (dropped)
        *dropped = sb ? sb->log_dropped : 0;
    if (!sb || sb->n_log == 0) {
        if (lines)
            *lines = NULL;
        return 0;
    }
    /* pointers made now: the text may have moved while it grew */
    for (size_t i = 0; i < sb->n_log; i++)
        sb->log[i] = sb->text.data + sb->log_off[i];
    if (lines)
        *lines = sb->log;
    return sb->n_log;
}

size_t nbx_sandbox_memory(const nbx_sandbox *sb)
{
    return sb && sb->L ? sb->used : 0;
}

const nbx_policy *nbx_sandbox_policy(const nbx_sandbox *sb)
{
    return sb ? sb->policy : NULL;
}

const nbx_catalog *nbx_sandbox_catalog(const nbx_sandbox *sb)
{
    return sb ? sb->catalog : NULL;
}

/* ------------------------------------------------------------------------
 * One decision
 * ------------------------------------------------------------------------ */

static int sb_run_body(lua_State *L)
{
    sb_run *r = lua_touserdata(L, 1);
    nbx_sandbox *sb = r->sb;
    lua_settop(L, 0);
    lua_checkstack(L, 40);
    lua_rawgeti(L, LUA_REGISTRYINDEX, sb->ref_slots);
    int slots = 1;
    sb_slot_get(L, slots, SLOT_MSGH); /* 2 */
    if (sb->shared.stale)
        sb_share_arrays(L, sb, slots);
    sb_log_switch(L, sb, slots, r->in->explain);
    int nargs = sb_push_inputs(L, sb, slots, r);

    sb->rng = r->in->seed;
    sb_run_start(sb, r->budget_us, SB_OBJECT_MAX_RUN);
    r->status = lua_pcall(L, nargs, 0, 2);
    if (sb_run_stop(sb))
        sb->timed_out = true;
    lua_settop(L, slots);
    /* also after a fault: what the policy logged on its way there is what
     * its author needs */
    if (r->in->explain)
        sb_read_log(L, sb, slots);

    sb_slot_get(L, slots, SLOT_ST);
    lua_rawgeti(L, -1, 1);
    lua_Integer cur = lua_tointeger(L, -1);
    lua_pop(L, 2);
    if (r->status != 0 || sb->timed_out || sb->mem_exceeded || sb->object_exceeded) {
        r->current = (size_t)(cur < 0 ? -cur : cur);
        r->in_eligible = cur < 0;
        return 0;
    }
    sb_read_results(L, sb, slots, r);
    lua_settop(L, 0);
    return 0;
}

static void sb_error(nbx_policy_error *err, int fault, const char *where, const char *offer,
                     const char *fmt, ...) NBX_PRINTF(5, 6);
static void sb_error(nbx_policy_error *err, int fault, const char *where, const char *offer,
                     const char *fmt, ...)
{
    err->fault = (uint8_t)fault;
    snprintf(err->where, sizeof err->where, "%s", where ? where : "");
    snprintf(err->offer, sizeof err->offer, "%s", offer ? offer : "");
    char raw[sizeof err->reason];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    /* The policy's own text: never raw to a terminal, log or browser. */
    nbx_escape_text(err->reason, sizeof err->reason, raw,
                    n < 0                    ? 0
                    : (size_t)n < sizeof raw ? (size_t)n
                                             : sizeof raw - 1);
}

static const char *sb_current_offer(const nbx_sandbox *sb, const sb_run *r)
{
    if (r->current == 0 || r->current > r->n)
        return "";
    const nbx_candidate *c = &r->in->cand[sb->live[r->current - 1]];
    return sb->catalog->offers[c->offer].id.ptr;
}

/* nbx.expected_margin_score in C: the arithmetic of the Lua helper over
 * the same resolved propensities (propensity.c), so results are the same to
 * the bit. It cannot fail: every input is a finite catalog or profile
 * number. */
static void sb_native_score(nbx_sandbox *sb, const nbx_sandbox_input *in, size_t n)
{
    static const nbx_profile empty;
    const nbx_profile *p = in->profile ? in->profile : &empty;
    for (size_t k = 0; k < n; k++) {
        nbx_candidate *c = &in->cand[sb->live[k]];
        const nbx_offer *o = &sb->catalog->offers[c->offer];
        double pr = in->propensity ? in->propensity[c->offer] : nbx_offer_propensity(p, o);
        double m = pr * o->margin - o->serving_cost;
        c->score = m;
        c->expected_margin = m;
        c->scored = true;
    }
}

static int sb_validate_input(nbx_sandbox *sb, const nbx_sandbox_input *in, nbx_policy_error *err)
{
    if (in->n_cand && !in->cand) {
        sb_error(err, NBX_FAULT_NONE, NULL, NULL, "nbx_sandbox_run: cand is NULL");
        return NBX_EINVAL;
    }
    if (in->n_session && !in->session) {
        sb_error(err, NBX_FAULT_NONE, NULL, NULL, "nbx_sandbox_run: session is NULL");
        return NBX_EINVAL;
    }
    if (in->n_cand > (size_t)INT32_MAX / 8) {
        sb_error(err, NBX_FAULT_NONE, NULL, NULL, "nbx_sandbox_run: too many candidates");
        return NBX_EINVAL;
    }
    const nbx_catalog *c = sb->catalog;
    for (size_t i = 0; i < in->n_cand; i++) {
        if (!c || in->cand[i].offer >= c->n_offers || in->cand[i].placement >= c->n_placements) {
            sb_error(err, NBX_FAULT_NONE, NULL, NULL,
                     "nbx_sandbox_run: candidate %zu is not in the sandbox's catalog", i);
            return NBX_EINVAL;
        }
    }
    return NBX_OK;
}


/* What a fault leaves is garbage, not damage: the next decision must not
 * pay for a rebuild (re-running the top level). After a memory fault the
 * garbage fills the state, and LuaJIT never collects on a failed
 * allocation: collect it now. Otherwise the usual rule applies. Either way
 * the collection costs what the decision could allocate within its time.
 * Then, when the faulted runs' garbage holds every spare block, which the
 * next fault needs, a few steps more (sandbox_limits.c, "The spare"). */
static void sb_recover(nbx_sandbox *sb)
{
    bool full = sb->mem_exceeded || sb->object_exceeded;
    sb_reset_flags(sb);
    lua_settop(sb->L, 0);
    sb_collect_if_needed(sb, full);
    sb_spare_reclaim(sb);
}

/* The JIT compiles a policy's hot paths while they run, and compiling takes
 * time (a trace costs tens to hundreds of microseconds): in a fresh state
 * the first decisions would pay for it out of their 2 ms. So before its
 * first decision a state runs a few on every candidate of the catalog, for
 * an anonymous visitor, each on the policy's own time limit; whatever they
 * find is thrown away, and the first fault ends the warm-up (a policy that
 * falls back or runs out of time would only waste more). */
#define SB_WARM_UP_RUNS 4
#define SB_WARM_UP_CANDIDATES 4096

static void sb_warm_up(nbx_sandbox *sb, int64_t now_ms)
{
    sb->warmed = true;
    const nbx_catalog *c = sb->catalog;
    size_t n = 0;
    for (uint32_t i = 0; c && i < c->n_offers; i++)
        n += c->offers[i].n_placements;
    if (n > SB_WARM_UP_CANDIDATES)
        n = SB_WARM_UP_CANDIDATES;
    nbx_candidate *cand = calloc(n ? n : 1, sizeof *cand);
    if (!cand || sb_reserve(sb, n) != NBX_OK) {
        free(cand);
        return;
    }
    size_t k = 0;
    for (uint32_t i = 0; c && i < c->n_offers && k < n; i++)
        for (uint32_t j = 0; j < c->offers[i].n_placements && k < n; j++)
            cand[k++] = (nbx_candidate){.offer = i, .placement = c->offers[i].placements[j]};
    nbx_sandbox_input in = {.anonymous = true, .now_ms = now_ms, .cand = cand, .n_cand = n};
    for (int run = 0; run < SB_WARM_UP_RUNS && n; run++) {
        for (size_t i = 0; i < n; i++)
            sb->live[i] = i;
        in.seed = (uint64_t)run;
        sb_fault_reset(sb);
        sb_run r = {.sb = sb, .in = &in, .n = n, .budget_us = sb->limits.time_us};
        sb->in = &in;
        int st = lua_cpcall(sb->L, sb_run_body, &r);
        sb->in = NULL;
        if (st != 0 || sb->real_oom) {
            sb_close_state(sb);
            break;
        }
        bool faulted = r.status != 0 || sb->timed_out || sb->mem_exceeded || sb->object_exceeded;
        sb_recover(sb);
        if (faulted)
            break;
    }
    free(cand);
}

int nbx_sandbox_run(nbx_sandbox *sb, const nbx_sandbox_input *in, nbx_policy_error *err)
{
    nbx_policy_error scratch;
    if (!err)
        err = &scratch;
    memset(err, 0, sizeof *err);
    if (!sb || !in) {
        sb_error(err, NBX_FAULT_NONE, NULL, NULL, "nbx_sandbox_run: NULL argument");
        return NBX_EINVAL;
    }
    int rc = sb_validate_input(sb, in, err);
    if (rc != NBX_OK)
        return rc;
    if (sb_reserve(sb, in->n_cand) != NBX_OK) {
        sb_error(err, NBX_FAULT_NONE, NULL, NULL, "out of memory");
        return NBX_ENOMEM;
    }
    nbx_buf_reset(&sb->text);
    sb->n_log = 0;
    sb->log_dropped = 0;
    size_t n = 0;
    for (size_t i = 0; i < in->n_cand; i++)
        if (in->cand[i].excluded == NBX_EXCLUDED_NONE)
            sb->live[n++] = i;
    if (n == 0)
        return NBX_OK;
    if (sb->native_score) {
        sb_native_score(sb, in, n);
        return NBX_OK;
    }

    if (!sb->L) {
        nbx_err e = {0};
        rc = sb_build(sb, &e);
        if (rc != NBX_OK) {
            sb_error(err, rc == NBX_ENOMEM ? NBX_FAULT_MEMORY : NBX_FAULT_RUNTIME, NULL, NULL, "%s",
                     e.msg);
            return rc == NBX_ENOMEM ? NBX_ENOMEM : NBX_EPOLICY;
        }
    }
    if (!sb->warmed) {
        /* Like the warm-up, before the first decision's budget starts. */
        sb_spare_open(sb);
        sb_warm_up(sb, in->now_ms);
        if (!sb->L) {
            nbx_err e = {0};
            rc = sb_build(sb, &e);
            if (rc != NBX_OK) {
                sb_error(err, rc == NBX_ENOMEM ? NBX_FAULT_MEMORY : NBX_FAULT_RUNTIME, NULL, NULL,
                         "%s", e.msg);
                return rc == NBX_ENOMEM ? NBX_ENOMEM : NBX_EPOLICY;
            }
        }
        for (size_t i = 0, j = 0; i < in->n_cand; i++)
            if (in->cand[i].excluded == NBX_EXCLUDED_NONE)
                sb->live[j++] = i;
    }
    lua_State *L = sb->L;
    sb_fault_reset(sb);
    sb_run r = {.sb = sb, .in = in, .n = n, .budget_us = sb->limits.time_us};
    sb->in = in;
    int st = lua_cpcall(L, sb_run_body, &r);
    sb->in = NULL;
    const char *offer = sb_current_offer(sb, &r);

    /* No policy frame on the stack (a tail call, or no room to look): the
     * definition of the function the driver was in. */
    if (!sb->where[0] && r.current)
        snprintf(sb->where, sizeof sb->where, "%s",
                 r.in_eligible ? sb->eligible_where : sb->score_where);
    rc = NBX_EPOLICY;
    if (sb->real_oom) {
        sb_error(err, NBX_FAULT_MEMORY, sb->where, offer, "out of memory");
        rc = NBX_ENOMEM;
    } else if (sb->object_exceeded) {
        if (sb->reason[0]) /* from sb_raise_too_big; the error may have turned into LUA_ERRMEM */
            sb_error(err, NBX_FAULT_MEMORY, sb->where, offer, "%s", sb->reason);
        else
            sb_error(err, NBX_FAULT_MEMORY, sb->where, offer,
                     "policy exceeded its memory limit: one table or string of %zu bytes (the "
                     "limit for one is %u)",
                     sb->refused, SB_OBJECT_MAX_RUN);
    } else if (sb->mem_exceeded) {
        sb_error(err, NBX_FAULT_MEMORY, sb->where, offer,
                 "policy exceeded its memory limit (%zu KiB)", sb->limits.memory >> 10);
    } else if (sb->timed_out) {
        sb_error(err, NBX_FAULT_TIMEOUT, sb->where, offer,
                 "policy exceeded its CPU time limit (%u us)", sb->limits.time_us);
    } else if (st != 0) {
        sb_error(err, NBX_FAULT_RUNTIME, NULL, offer, "sandbox error: %s",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "unknown");
    } else if (r.status == LUA_ERRERR) {
        /* No message handler ran: LuaJIT refuses to grow a stack still
         * extended from an earlier overflow (one the policy caught). No
         * policy code handles errors, so this is always a stack overflow. */
        sb_error(err, NBX_FAULT_RUNTIME, sb->where, offer, "stack overflow");
    } else if (r.status != 0) {
        sb_error(err, NBX_FAULT_RUNTIME, sb->where, offer, "%s",
                 sb->reason[0] ? sb->reason : "the policy raised an error");
    } else if (r.bad_result == 1) {
        sb_error(err, NBX_FAULT_RESULT, sb->score_where, offer,
                 "score returned %s; it must return a finite number", r.bad_value);
    } else if (r.bad_result == 2) {
        sb_error(err, NBX_FAULT_RESULT, sb->score_where, offer,
                 "score's second result (expected margin) is %s; it must be nil or a finite "
                 "number",
                 r.bad_value);
    } else {
        rc = NBX_OK;
    }

    if (sb->real_oom || st != 0) {
        /* The state may be past repair: start afresh on the next run. */
        sb_close_state(sb);
        return rc;
    }
    if (rc != NBX_OK && err->fault != NBX_FAULT_RESULT) {
        sb_recover(sb);
        return rc;
    }
    lua_settop(L, 0);
    sb_collect_if_needed(sb, false);
    return rc;
}
