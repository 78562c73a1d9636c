/*
 * sandbox.c: the policy sandbox, one LuaJIT state per (policy, catalog) pair
 * and context.
 *
 * What a policy can reach is an allow-list: a frozen global environment with
 * a few base functions, math (deterministic random), a safe subset of string
 * and table, and the nbx helpers; inputs and libraries are read-only proxies.
 * What a policy can spend is bounded: a counting allocator caps the bytes of
 * the state, and a count hook checks a CPU deadline (the JIT is off, because
 * compiled code never calls hooks). docs/sandbox.md has the threat model and
 * the facts this design rests on.
 *
 * The hot path crosses from C into Lua once per decision: a driver function
 * (Lua, out of the policy's reach) loops over the candidates inside the VM
 * and writes scores into arrays reused from one decision to the next.
 */
#include "nbx_int.h"

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* VM instructions between two deadline checks: about 2 to 5 us of policy
 * work with the JIT off, so a timeout is detected within that much. */
#define SB_HOOK_COUNT 1000
/* CPU time for running a policy file's top level. */
#define SB_LOAD_TIME_US 100000
/* Stack levels searched for the policy's frame when locating a fault. */
#define SB_WHERE_LEVELS 256
#define SB_NAME_MAX 127
#define SB_PCALL_DEPTH_MAX 64

/* Values the C side keeps in the state, in one table referenced from the
 * registry. */
enum sb_slot {
    SLOT_DRIVER = 1,
    SLOT_MSGH,
    SLOT_CLEAR,
    SLOT_LIB,
    SLOT_ENV,
    SLOT_ENV_MT,
    SLOT_GLOBAL_WRITE,
    SLOT_READONLY,
    SLOT_OFFERS,
    SLOT_PLACES,
    SLOT_CUSTOMER, /* proxy */
    SLOT_CUST,     /* its data */
    SLOT_ATTRS,
    SLOT_CONSENT,
    SLOT_PROPENSITY,
    SLOT_RFM,
    SLOT_EXPOSURES,
    SLOT_SESSION, /* proxy */
    SLOT_SESS,    /* its data */
    SLOT_CO,      /* candidate k -> offer index + 1, negated when it has exposures */
    SLOT_CP,      /* candidate k -> placement index + 1 */
    SLOT_X,       /* exposure numbers, 7 per exposed candidate */
    SLOT_S,       /* scores out, as returned; the ineligible marker if excluded */
    SLOT_M,       /* second results out, as returned */
    SLOT_ST,      /* [1] candidate being run (negative: in eligible) */
    SLOT_MSG_TIMEOUT,
    SLOT_MSG_MEMORY,
    SLOT_COUNT
};

struct sb_cached_cand {
    double co, cp;
};

struct sb_result {
    double score, margin;
    bool eligible;
};

/* Customer maps cleared before each decision that refills them. */
enum { MAP_ATTRS, MAP_CONSENT, MAP_PROPENSITY, MAP_SESSION, MAP_COUNT };

struct nbx_sandbox {
    nbx_policy *policy;
    nbx_catalog *catalog;
    nbx_limits limits;
    lua_State *L; /* NULL: rebuilt before the next run */
    int ref_slots;

    /* Allocator. Until the policy loads, the engine's own tables (offers,
     * input tables) are built unlimited; the policy may then allocate
     * limits.memory bytes over that. */
    size_t used;
    size_t limit_abs;
    size_t engine_bytes;
    size_t policy_live; /* what the policy held after the last full collection */
    bool mem_exceeded;  /* sticky until the state is rebuilt */
    bool real_oom;

    /* Deadline (nanoseconds, CLOCK_MONOTONIC and thread CPU time). */
    int64_t budget_ns;
    int64_t sample_ns; /* wall time before the first CPU clock reading */
    int64_t wall_start;
    int64_t wall_check; /* INT64_MAX when no policy code runs */
    int64_t cpu_base;
    int64_t charged_ns;
    bool cpu_mode;
    bool timed_out;

    /* Fault record of the current run or load. */
    bool in_policy;
    bool recorded;
    char where[256];
    char reason[512];
    char short_src[LUA_IDSIZE]; /* the policy's chunk as Lua prints it */
    char score_where[256];      /* "name.lua:LINE" where score is defined */
    char eligible_where[256];

    uint64_t rng;
    int pcall_depth;
    /* score is nbx.expected_margin_score and there is no eligible(): runs
     * in C, no Lua at all */
    bool native_score;
    nbx_lp_limit lp_limit;

    size_t *live; /* per run: live candidate k -> index into in->cand */
    size_t live_cap;
    /* What CO and CP hold from the last decision: only changes are written
     * (consecutive decisions mostly see the same candidates). */
    struct sb_cached_cand *cached;
    size_t n_cached;
    /* Results read from S and M, committed to the candidates only once all
     * of them have been checked. */
    struct sb_result *results;
    bool map_dirty[MAP_COUNT];
};

/* Its address marks an ineligible candidate in S: no policy can produce a
 * light userdata, so a score can never be mistaken for it. */
static const char sb_ineligible = 0;

static inline nbx_sandbox *sb_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* ========================================================================
 * Helpers and driver written in Lua (chunk "=nbx", its own environment)
 * ======================================================================== */

/* The fast path of nbx.propensity, spliced into both helpers that need it
 * rather than called: with the JIT off, the call costs about 76 machine
 * instructions per candidate, 4% of a Lua-scored candidate (callgrind over
 * bench_sandbox's Lua margin policy). With r = orec[offer] and the customer
 * being the live one, leaves the propensity in local v. */
#define SB_FAST_PROPENSITY                                                                         \
    "    local v = pdata[r[1]]\n"                                                                  \
    "    if v == nil then\n"                                                                       \
    "      local cat = r[2]\n"                                                                     \
    "      if cat then v = pdata[cat] end\n"                                                       \
    "      if v == nil then\n"                                                                     \
    "        local sp = r[3]\n"                                                                    \
    "        if sp then\n"                                                                         \
    "          local seg = rfmdata.segment\n"                                                      \
    "          if seg ~= nil then v = sp[seg] end\n"                                               \
    "        end\n"                                                                                \
    "        if v == nil then v = r[4] end\n"                                                      \
    "      end\n"                                                                                  \
    "    end\n"

/* The start of both driver loops (with and without eligible()): candidate
 * k's offer index in `code`, its exposures and placement in the input
 * tables. Spliced, not called, for the same reason. */
#define SB_DRIVER_CANDIDATE                                                                        \
    "      local code, p = CO[k], CP[k]\n"                                                         \
    "      if code < 0 then\n"                                                                     \
    "        code = -code\n"                                                                       \
    "        exposures(xj)\n"                                                                      \
    "        xj = xj + 7\n"                                                                        \
    "      elseif dirty then\n"                                                                    \
    "        exposures(nil)\n"                                                                     \
    "      end\n"                                                                                  \
    "      if p ~= lastp then\n"                                                                   \
    "        sess.placement = places[p]\n"                                                         \
    "        lastp = p\n"                                                                          \
    "      end\n"

/* One line of C per line of Lua, macros included. */
/* clang-format off */
static const char sb_lib_source[] =
    "local N = ...\n"
    "local ipairs, check_sortable = N.ipairs, N.check_sortable\n"
    "local state = { now = 0 }\n"
    "\n"
    "-- Stable bottom-up merge sort in Lua: the native sort calls the comparator\n"
    "-- from C, and a comparator that sorts again recurses through the C stack.\n"
    "-- Here recursion stays on the Lua stack, which is bounded.\n"
    "local RUN = 8\n"
    "local function sort(t, lt)\n"
    "  local n = check_sortable(t, lt)\n"
    "  if n < 2 then return end\n"
    "  for lo = 1, n, RUN do\n"
    "    local hi = lo + RUN - 1\n"
    "    if hi > n then hi = n end\n"
    "    for i = lo + 1, hi do\n"
    "      local v, j = t[i], i - 1\n"
    "      while j >= lo do\n"
    "        local w = t[j]\n"
    "        local before\n"
    "        if lt then before = lt(v, w) else before = v < w end\n"
    "        if not before then break end\n"
    "        t[j + 1] = w\n"
    "        j = j - 1\n"
    "      end\n"
    "      t[j + 1] = v\n"
    "    end\n"
    "  end\n"
    "  local src, dst, width = t, {}, RUN\n"
    "  while width < n do\n"
    "    for lo = 1, n, 2 * width do\n"
    "      local mid, hi = lo + width - 1, lo + 2 * width - 1\n"
    "      if mid > n then mid = n end\n"
    "      if hi > n then hi = n end\n"
    "      local i, j, k = lo, mid + 1, lo\n"
    "      while i <= mid and j <= hi do\n"
    "        local x, y = src[i], src[j]\n"
    "        local right\n"
    "        if lt then right = lt(y, x) else right = y < x end\n"
    "        if right then dst[k] = y; j = j + 1 else dst[k] = x; i = i + 1 end\n"
    "        k = k + 1\n"
    "      end\n"
    "      while i <= mid do dst[k] = src[i]; i = i + 1; k = k + 1 end\n"
    "      while j <= hi do dst[k] = src[j]; j = j + 1; k = k + 1 end\n"
    "    end\n"
    "    src, dst = dst, src\n"
    "    width = width * 2\n"
    "  end\n"
    "  if src ~= t then for i = 1, n do t[i] = src[i] end end\n"
    "end\n"
    "\n"
    "-- Set by init() once the inputs exist: the live customer proxy, the data\n"
    "-- behind its maps, and per offer proxy a plain record { id, category or\n"
    "-- false, segment_propensity data or false, base_propensity, margin,\n"
    "-- serving_cost }, so the common case never goes through a proxy.\n"
    "local customer, pdata, rfmdata\n"
    "local orec = {}\n"
    "\n"
    "local function init(t)\n"
    "  customer, pdata, rfmdata, orec = t.customer, t.pdata, t.rfmdata, t.orec\n"
    "end\n"
    "\n"
    "-- Both paths must agree with nbx_offer_propensity() in caps.c: the profile's\n"
    "-- value for the offer id, else its category, else the offer's prior for the\n"
    "-- customer's segment, else base_propensity.\n"
    "local function slow_propensity(c, o)\n"
    "  local p = c.propensity\n"
    "  if p ~= nil then\n"
    "    local v = p[o.id]\n"
    "    if v ~= nil then return v end\n"
    "    local cat = o.category\n"
    "    if cat ~= nil and cat ~= '' then\n"
    "      v = p[cat]\n"
    "      if v ~= nil then return v end\n"
    "    end\n"
    "  end\n"
    "  local rfm = c.rfm\n"
    "  local seg = rfm ~= nil and rfm.segment or nil\n"
    "  if seg ~= nil then\n"
    "    local sp = o.segment_propensity\n"
    "    if sp ~= nil then\n"
    "      local v = sp[seg]\n"
    "      if v ~= nil then return v end\n"
    "    end\n"
    "  end\n"
    "  return o.base_propensity or 0\n"
    "end\n"
    "\n"
    "local function propensity(c, o)\n"
    "  local r = orec[o]\n"
    "  if r ~= nil and c == customer then\n"
    SB_FAST_PROPENSITY
    "    return v\n"
    "  end\n"
    "  return slow_propensity(c, o)\n"
    "end\n"
    "\n"
    "-- The default policy's whole score.\n"
    "local function expected_margin(c, o)\n"
    "  local r = orec[o]\n"
    "  if r ~= nil and c == customer then\n"
    SB_FAST_PROPENSITY
    "    return v * r[5] - r[6]\n"
    "  end\n"
    "  return slow_propensity(c, o) * o.margin - (o.serving_cost or 0)\n"
    "end\n"
    "\n"
    "-- As a whole score: (expected margin, expected margin). A policy whose\n"
    "-- score is this very function is run natively by the sandbox (same\n"
    "-- arithmetic in C); called from Lua it is an ordinary helper.\n"
    "local function expected_margin_score(o, c, s)\n"
    "  local m = expected_margin(c, o)\n"
    "  return m, m\n"
    "end\n"
    "\n"
    "local function clamp(x, lo, hi)\n"
    "  if x < lo then return lo end\n"
    "  if x > hi then return hi end\n"
    "  return x\n"
    "end\n"
    "\n"
    "local function days_since(t, now)\n"
    "  if t == nil then return nil end\n"
    "  return ((now or state.now) - t) / 86400\n"
    "end\n"
    "\n"
    "local function contains(list, value)\n"
    "  if list == nil then return false end\n"
    "  for _, v in ipairs(list) do\n"
    "    if v == value then return true end\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "\n"
    "-- The per-decision loop, in two variants so a policy without eligible()\n"
    "-- pays nothing for it; every bytecode here is paid for every candidate.\n"
    "-- C has filled CO, CP, X and the input maps; the customer's scalars come as\n"
    "-- arguments (cheaper than C setting fields by name). Results go to S and M\n"
    "-- unchecked: C checks them as it reads them. ST[1] is the candidate being\n"
    "-- run, negated while in eligible(), so a fault can name the offer and the\n"
    "-- function.\n"
    "local function make_driver(score, eligible, offers, places, customer, session,\n"
    "                           cust, rfm, expo, sess, CO, CP, X, S, M, ST, INELIGIBLE)\n"
    "  local dirty = false\n"
    "  local function prepare(now, id, anonymous, ltv, churn, r, f, m, segment, first, last,\n"
    "                         orders, revenue, margin, recency)\n"
    "    cust.id = id; cust.anonymous = anonymous; cust.ltv = ltv; cust.churn = churn\n"
    "    rfm.r = r; rfm.f = f; rfm.m = m; rfm.segment = segment\n"
    "    rfm.first_purchase = first; rfm.last_purchase = last; rfm.orders = orders\n"
    "    rfm.revenue = revenue; rfm.margin = margin; rfm.recency_days = recency\n"
    "    sess.now = now\n"
    "    state.now = now\n"
    "  end\n"
    "  local function exposures(b)\n"
    "    if b then\n"
    "      expo.impressions = X[b + 1]; expo.clicks = X[b + 2]\n"
    "      expo.accepts = X[b + 3]; expo.dismisses = X[b + 4]\n"
    "      expo.last_impression = X[b + 5]; expo.last_dismiss = X[b + 6]\n"
    "      expo.last_accept = X[b + 7]\n"
    "      dirty = true\n"
    "    else\n"
    "      expo.impressions = 0; expo.clicks = 0; expo.accepts = 0; expo.dismisses = 0\n"
    "      expo.last_impression = nil; expo.last_dismiss = nil; expo.last_accept = nil\n"
    "      dirty = false\n"
    "    end\n"
    "  end\n"
    "  if eligible == nil then\n"
    "    return function(n, ...)\n"
    "      prepare(...)\n"
    "      local score, offers, places = score, offers, places\n"
    "      local customer, session = customer, session\n"
    "      local sess, CO, CP, S, M, ST = sess, CO, CP, S, M, ST\n"
    "      local xj, lastp = 0, nil\n"
    "      for k = 1, n do\n"
    "        ST[1] = k\n"
    SB_DRIVER_CANDIDATE
    "        S[k], M[k] = score(offers[code], customer, session)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return function(n, ...)\n"
    "    prepare(...)\n"
    "    local score, eligible, offers, places = score, eligible, offers, places\n"
    "    local customer, session = customer, session\n"
    "    local sess, CO, CP, S, M, ST = sess, CO, CP, S, M, ST\n"
    "    local xj, lastp = 0, nil\n"
    "    for k = 1, n do\n"
    "      ST[1] = -k\n"
    SB_DRIVER_CANDIDATE
    "      local offer = offers[code]\n"
    "      if eligible(offer, customer, session) then\n"
    "        ST[1] = k\n"
    "        S[k], M[k] = score(offer, customer, session)\n"
    "      else\n"
    "        S[k] = INELIGIBLE\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "\n"
    "return { sort = sort, propensity = propensity, expected_margin = expected_margin,\n"
    "         expected_margin_score = expected_margin_score,\n"
    "         clamp = clamp, days_since = days_since, contains = contains,\n"
    "         make_driver = make_driver, init = init }\n";
/* clang-format on */

/* ========================================================================
 * Allocator
 * ======================================================================== */

static void sb_note_where(nbx_sandbox *sb, lua_State *L, int level);

static bool sb_time_up(nbx_sandbox *sb);
static void sb_hook(lua_State *L, lua_Debug *ar);

/* Growth from which an allocation also checks the deadline. */
#define SB_BIG_ALLOC 65536

/* Lua's allocator contract: nsize 0 frees; shrinking never fails. LuaJIT
 * raises "not enough memory" without trying an emergency collection first,
 * so sb_collect_if_needed() runs between decisions. */
static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    nbx_sandbox *sb = ud;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        sb->used -= osize;
        return NULL;
    }
    if (nsize > osize) {
        size_t grow = nsize - osize;
        if (sb->mem_exceeded || sb->used > sb->limit_abs || grow > sb->limit_abs - sb->used) {
            if (!sb->mem_exceeded) {
                sb->mem_exceeded = true;
                /* The error unwinds before anyone could look at the stack,
                 * and a memory error calls no message handler: note the
                 * policy's line now. Reading the stack allocates nothing. */
                if (sb->in_policy && sb->L && !sb->recorded)
                    sb_note_where(sb, sb->L, 0);
            }
            return NULL;
        }
        /* Hooks count VM instructions, but one instruction can run a long
         * C function (string.rep, ..), and those allocate: a big allocation
         * checks the deadline too, and past it is refused. The hook then
         * fires on the next instruction, so a pcall cannot absorb it. */
        if (grow >= SB_BIG_ALLOC && sb->in_policy && sb->L && (sb->timed_out || sb_time_up(sb))) {
            if (!sb->timed_out) {
                sb->timed_out = true;
                if (!sb->recorded)
                    sb_note_where(sb, sb->L, 0);
                lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT, 1);
            }
            return NULL;
        }
    }
    void *p = realloc(ptr, nsize);
    if (!p) {
        if (nsize <= osize)
            return ptr;
        sb->real_oom = true;
        return NULL;
    }
    sb->used = sb->used - osize + nsize;
    return p;
}

/* ========================================================================
 * Deadline
 *
 * The limit is on the thread's CPU time, so a thread preempted mid-decision
 * is not blamed for time it did not run. But CLOCK_THREAD_CPUTIME_ID is a
 * system call on Linux (about 730 ns here, no vDSO) where CLOCK_MONOTONIC
 * costs 30 ns, and a decision should take about 20 us. So checks read the
 * cheap clock, and the CPU clock is first read once SB_CPU_SAMPLE_NS of wall
 * time have passed: a normal decision never reads it. That unmeasured start
 * is charged as wall time, capped at twice the window (preemption there
 * costs the policy at most that). From the first reading on, CPU time
 * decides; the next check is due no sooner than the remaining budget, since
 * CPU time cannot run ahead of wall time.
 * ======================================================================== */

#define SB_CPU_SAMPLE_NS INT64_C(100000)

static int64_t sb_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sb_clock_start(nbx_sandbox *sb, uint32_t budget_us)
{
    sb->timed_out = false;
    sb->cpu_mode = false;
    if (sb->limits.flags & NBX_LIMITS_NO_HOOK) {
        sb->wall_check = INT64_MAX;
        return;
    }
    /* A full count per run: where the first check falls must not depend on
     * what ran before (cheap: the dispatch mode does not change). */
    lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT, SB_HOOK_COUNT);
    sb->budget_ns = (int64_t)budget_us * 1000;
    sb->sample_ns = sb->budget_ns / 4 < SB_CPU_SAMPLE_NS ? sb->budget_ns / 4 : SB_CPU_SAMPLE_NS;
    sb->wall_start = sb_clock_ns(CLOCK_MONOTONIC);
    sb->wall_check = sb->wall_start + sb->sample_ns;
}

static void sb_clock_stop(nbx_sandbox *sb)
{
    sb->wall_check = INT64_MAX;
}

static bool sb_time_up(nbx_sandbox *sb)
{
    int64_t now = sb_clock_ns(CLOCK_MONOTONIC);
    if (NBX_LIKELY(now < sb->wall_check))
        return false;
    int64_t cpu = sb_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (!sb->cpu_mode) {
        sb->cpu_mode = true;
        sb->cpu_base = cpu;
        sb->charged_ns = now - sb->wall_start;
        if (sb->charged_ns > 2 * sb->sample_ns)
            sb->charged_ns = 2 * sb->sample_ns;
    }
    int64_t spent = sb->charged_ns + (cpu - sb->cpu_base);
    if (spent >= sb->budget_ns)
        return true;
    sb->wall_check = now + (sb->budget_ns - spent);
    return false;
}

/* Called by the hook and by the pattern functions: raise once time is up,
 * and from then on on every VM instruction, so pcall cannot swallow it. */
static void sb_check_time(lua_State *L, nbx_sandbox *sb)
{
    if (!sb->timed_out) {
        if (NBX_LIKELY(!sb_time_up(sb)))
            return;
        sb->timed_out = true;
        if (!sb->recorded)
            sb_note_where(sb, L, 0);
        lua_sethook(L, sb_hook, LUA_MASKCOUNT, 1);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, sb->ref_slots);
    lua_rawgeti(L, -1, SLOT_MSG_TIMEOUT);
    lua_error(L);
}

static void sb_hook(lua_State *L, lua_Debug *ar)
{
    NBX_UNUSED(ar);
    sb_check_time(L, sb_of(L));
}

static void sb_pattern_check(lua_State *L, void *ud)
{
    sb_check_time(L, ud);
}

/* ========================================================================
 * Fault records
 * ======================================================================== */

/* "name.lua:LINE" of the innermost policy frame at or above level; "" when
 * there is none (a tail call leaves no frame of its caller): nbx_sandbox_run
 * then falls back to the definition of the function being run. */
static bool sb_policy_where(nbx_sandbox *sb, lua_State *L, int level, char *out, size_t n)
{
    lua_Debug ar;
    const char *chunk = sb->policy->chunkname;
    for (int i = level; i < level + SB_WHERE_LEVELS && lua_getstack(L, i, &ar); i++) {
        if (!lua_getinfo(L, "Sl", &ar) || !ar.source)
            continue;
        if (ar.currentline > 0 && strcmp(ar.source, chunk) == 0) {
            snprintf(out, n, "%s:%d", chunk + 1, ar.currentline);
            return true;
        }
    }
    out[0] = '\0';
    return false;
}

static void sb_note_where(nbx_sandbox *sb, lua_State *L, int level)
{
    sb->recorded = true;
    sb_policy_where(sb, L, level, sb->where, sizeof sb->where);
}

/* If msg starts with "<src>:<digits>: ", return the position after it. */
static const char *sb_skip_position(const char *msg, size_t len, const char *src, size_t *line_len)
{
    size_t sl = strlen(src);
    if (len <= sl + 1 || memcmp(msg, src, sl) != 0 || msg[sl] != ':')
        return NULL;
    const char *p = msg + sl + 1, *end = msg + len, *digits = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    if (p == digits || p >= end || *p != ':')
        return NULL;
    *line_len = (size_t)(p - digits);
    p++;
    if (p < end && *p == ' ')
        p++;
    return p;
}

/* Record where and why from an error object (at idx) and the live stack. */
static void sb_describe_error(nbx_sandbox *sb, lua_State *L, int idx)
{
    sb->recorded = true;
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING) {
        sb_policy_where(sb, L, 0, sb->where, sizeof sb->where);
        if (t == LUA_TNUMBER)
            snprintf(sb->reason, sizeof sb->reason, "%.17g", lua_tonumber(L, idx));
        else
            snprintf(sb->reason, sizeof sb->reason,
                     "error object is a %s value (raise a string with error())",
                     lua_typename(L, t));
        return;
    }
    size_t len, line_len;
    const char *msg = lua_tolstring(L, idx, &len);
    const char *rest = sb_skip_position(msg, len, sb->short_src, &line_len);
    if (rest) {
        /* The message names its own position (error("...", 2) points at the
         * caller): trust it over the stack. */
        snprintf(sb->where, sizeof sb->where, "%s:%.*s", sb->policy->chunkname + 1, (int)line_len,
                 msg + strlen(sb->short_src) + 1);
    } else {
        sb_policy_where(sb, L, 0, sb->where, sizeof sb->where);
        rest = sb_skip_position(msg, len, "nbx", &line_len); /* our helpers' chunk */
        if (!rest)
            rest = msg;
    }
    snprintf(sb->reason, sizeof sb->reason, "%.*s", (int)(len - (size_t)(rest - msg)), rest);
}

/* Message handler of the protected calls into policy code. Memory errors
 * never reach it; timeouts were located by the hook. */
static int sb_msgh(lua_State *L)
{
    nbx_sandbox *sb = sb_of(L);
    if (!sb->recorded && !sb->timed_out && !sb->mem_exceeded)
        sb_describe_error(sb, L, 1);
    lua_settop(L, 1);
    return 1;
}

static void sb_fault_reset(nbx_sandbox *sb)
{
    sb->recorded = false;
    sb->where[0] = '\0';
    sb->reason[0] = '\0';
}

/* ========================================================================
 * Functions given to policies
 * ======================================================================== */

/* Raise with the position of the caller `level` frames up. */
static int sb_raise(lua_State *L, int level, const char *fmt, ...) NBX_PRINTF(3, 4);
static int sb_raise(lua_State *L, int level, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    luaL_where(L, level);
    lua_pushstring(L, msg);
    lua_concat(L, 2);
    return lua_error(L);
}

/* A read-only proxy is an empty table whose metatable holds the data at
 * [1] (and as __index). Policies cannot set metatables, so any table with
 * one is ours. Replace the value at idx by its data if it is a proxy. */
static bool sb_unwrap(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return false;
    lua_rawgeti(L, -1, 1);
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 2);
        return false;
    }
    lua_replace(L, idx);
    lua_pop(L, 1);
    return true;
}

static int sb_readonly_write(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING)
        return sb_raise(L, 1, "attempt to write field '%.64s' of a read-only table",
                        lua_tostring(L, 2));
    return sb_raise(L, 1, "attempt to write to a read-only table");
}

static int sb_global_write(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING)
        return sb_raise(L, 1,
                        "assignment to global '%.64s' (globals are frozen once the "
                        "policy has loaded; use a local)",
                        lua_tostring(L, 2));
    return sb_raise(L, 1, "assignment to a global (globals are frozen once the policy has loaded)");
}

/* next, pairs, ipairs, unpack and nbx.len see through proxies (LuaJIT's
 * 5.1 mode has no __pairs or __len) without ever handing out the data
 * table itself. */
static int sb_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    sb_unwrap(L, 1);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int sb_pairs(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushvalue(L, lua_upvalueindex(1)); /* sb_next */
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int sb_inext(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer i = luaL_checkinteger(L, 2) + 1;
    sb_unwrap(L, 1);
    lua_pushinteger(L, i);
    lua_rawgeti(L, 1, (int)i);
    return lua_isnil(L, -1) ? 0 : 2;
}

static int sb_ipairs(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushvalue(L, lua_upvalueindex(1)); /* sb_inext */
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    return 3;
}

static int sb_unpack(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_unwrap(L, 1);
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer j = lua_isnoneornil(L, 3) ? (lua_Integer)lua_objlen(L, 1) : luaL_checkinteger(L, 3);
    if (i > j)
        return 0;
    /* In unsigned arithmetic: j - i overflows a signed count for a range
     * like (-2^62, 2^62). */
    uint64_t span = (uint64_t)j - (uint64_t)i;
    if (span >= 7999 || !lua_checkstack(L, (int)span + 1))
        return sb_raise(L, 1, "too many results to unpack");
    int n = (int)span + 1;
    for (lua_Integer k = i; k <= j; k++)
        lua_rawgeti(L, 1, (int)k);
    return n;
}

static int sb_len(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING) {
        lua_pushinteger(L, (lua_Integer)lua_objlen(L, 1));
        return 1;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_unwrap(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_objlen(L, 1));
    return 1;
}

/* table.concat on the data behind a proxy; the native one reads raw. */
static int sb_concat(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_unwrap(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* table.insert and table.remove write raw, which would bypass a proxy's
 * __newindex and change an input for every later decision. */
static int sb_table_mutator(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getmetatable(L, 1))
        return sb_raise(L, 1, "attempt to modify a read-only table");
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* For the Lua sort: a writable table and an optional comparator; its length. */
static int sb_check_sortable(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TTABLE)
        return sb_raise(L, 2, "bad argument #1 to 'sort' (table expected, got %s)",
                        luaL_typename(L, 1));
    if (lua_getmetatable(L, 1))
        return sb_raise(L, 2, "attempt to sort a read-only table");
    if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION)
        return sb_raise(L, 2, "bad argument #2 to 'sort' (function expected, got %s)",
                        luaL_typename(L, 2));
    lua_pushinteger(L, (lua_Integer)lua_objlen(L, 1));
    return 1;
}

/* The policy's pcall. A limit fault is not the policy's to handle: it is
 * raised again as soon as the protected call returns. Nesting is capped:
 * each level is a C frame (bounded recursion through C), and when a timeout
 * unwinds, each level costs a throw, so 64 levels bound that too (LuaJIT's
 * own pcall nests as deep as the Lua stack, thousands of levels, and
 * unwinding a timeout through them took over 70 ms). */
static int sb_pcall(lua_State *L)
{
    nbx_sandbox *sb = sb_of(L);
    luaL_checkany(L, 1);
    if (sb->pcall_depth >= SB_PCALL_DEPTH_MAX)
        return sb_raise(L, 1, "pcall nested more than %d deep", SB_PCALL_DEPTH_MAX);
    sb->pcall_depth++;
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sb->pcall_depth--;
    if (NBX_UNLIKELY(sb->timed_out || sb->mem_exceeded)) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, sb->ref_slots);
        lua_rawgeti(L, -1, sb->timed_out ? SLOT_MSG_TIMEOUT : SLOT_MSG_MEMORY);
        return lua_error(L);
    }
    lua_pushboolean(L, st == 0);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* splitmix64: tiny state, good enough statistics, and reseeded per decision
 * from the request's seed so a decision is reproducible. */
static double sb_random_double(nbx_sandbox *sb)
{
    uint64_t z = (sb->rng += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static int sb_random(lua_State *L)
{
    double r = sb_random_double(sb_of(L));
    switch (lua_gettop(L)) {
    case 0:
        lua_pushnumber(L, r);
        return 1;
    case 1: {
        double m = floor(luaL_checknumber(L, 1));
        luaL_argcheck(L, 1 <= m, 1, "interval is empty");
        lua_pushnumber(L, floor(r * m) + 1);
        return 1;
    }
    case 2: {
        double lo = floor(luaL_checknumber(L, 1)), hi = floor(luaL_checknumber(L, 2));
        luaL_argcheck(L, lo <= hi, 2, "interval is empty");
        lua_pushnumber(L, floor(r * (hi - lo + 1)) + lo);
        return 1;
    }
    default:
        return luaL_error(L, "wrong number of arguments");
    }
}

/* ========================================================================
 * Building a state
 * ======================================================================== */

static void sb_slot_set(lua_State *L, int slots, int slot)
{
    lua_rawseti(L, slots, slot);
}

static void sb_slot_get(lua_State *L, int slots, int slot)
{
    lua_rawgeti(L, slots, slot);
}

/* Replace the data table on top of the stack by a read-only proxy of it. */
static void sb_make_proxy(lua_State *L, int slots)
{
    lua_createtable(L, 0, 0);
    lua_createtable(L, 1, 3);
    lua_pushvalue(L, -3);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    sb_slot_get(L, slots, SLOT_READONLY);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_remove(L, -2);
}

static void sb_open_lib(lua_State *L, lua_CFunction open, const char *name)
{
    lua_pushcfunction(L, open);
    lua_pushstring(L, name);
    lua_call(L, 1, 0);
}

/* Copy the named fields of the table at src into the table at dst. */
static void sb_copy_fields(lua_State *L, int dst, int src, const char *const *names)
{
    for (; *names; names++) {
        lua_getfield(L, src, *names);
        lua_setfield(L, dst, *names);
    }
}

static void sb_push_closure_with(lua_State *L, lua_CFunction fn, lua_CFunction up)
{
    lua_pushcfunction(L, up);
    lua_pushcclosure(L, fn, 1);
}

static void sb_push_json(lua_State *L, int slots, json_t *v, int depth);

/* Every member of a JSON object but the nulls, as fields of the table at t. */
static void sb_set_json_fields(lua_State *L, int slots, int t, json_t *obj, int depth)
{
    const char *key;
    json_t *item;
    json_object_foreach(obj, key, item)
    {
        if (json_is_null(item))
            continue;
        lua_pushstring(L, key);
        sb_push_json(L, slots, item, depth);
        lua_rawset(L, t);
    }
}

/* A JSON value from the catalog as Lua data: objects and arrays become
 * read-only proxies, null becomes nil. Bounded by NBX_JSON_DEPTH_MAX. */
static void sb_push_json(lua_State *L, int slots, json_t *v, int depth)
{
    if (depth > NBX_JSON_DEPTH_MAX)
        luaL_error(L, "catalog value nested deeper than %d levels", NBX_JSON_DEPTH_MAX);
    luaL_checkstack(L, 4, "catalog value");
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        lua_createtable(L, 0, (int)json_object_size(v));
        sb_set_json_fields(L, slots, lua_gettop(L), v, depth + 1);
        sb_make_proxy(L, slots);
        return;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            json_t *item = json_array_get(v, i);
            if (json_is_null(item))
                continue;
            sb_push_json(L, slots, item, depth + 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        sb_make_proxy(L, slots);
        return;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        return;
    case JSON_INTEGER:
        lua_pushnumber(L, (lua_Number)json_integer_value(v));
        return;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(v));
        return;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        return;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        return;
    default:
        lua_pushnil(L);
        return;
    }
}

static void sb_array_number(lua_State *L, int t, int i, double v)
{
    lua_pushnumber(L, v);
    lua_rawseti(L, t, i);
}

static void sb_set_number(lua_State *L, int t, const char *field, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, t, field);
}

/* One offer: every field of its JSON object, then the values the engine
 * uses, with the catalog's defaults applied, so nbx helpers agree with C.
 * Leaves the proxy on the stack, and the helpers' plain record of it in
 * orec[proxy]: { id, category or false, segment_propensity data or false,
 * base_propensity, margin, serving_cost }. */
static void sb_push_offer(lua_State *L, int slots, const nbx_offer *o, int orec)
{
    json_t *obj = o->json;
    lua_createtable(L, 0, obj ? (int)json_object_size(obj) + 4 : 12);
    int t = lua_gettop(L);
    if (obj && json_is_object(obj))
        sb_set_json_fields(L, slots, t, obj, 1);
    lua_pushlstring(L, o->id.ptr, o->id.len);
    lua_setfield(L, t, "id");
    lua_pushstring(L, o->kind == NBX_KIND_MODULE ? "module" : "offer");
    lua_setfield(L, t, "kind");
    if (o->category.len) {
        lua_pushlstring(L, o->category.ptr, o->category.len);
        lua_setfield(L, t, "category");
    }
    sb_set_number(L, t, "price", o->price);
    sb_set_number(L, t, "unit_cost", o->unit_cost);
    sb_set_number(L, t, "discount", o->discount);
    sb_set_number(L, t, "serving_cost", o->serving_cost);
    sb_set_number(L, t, "base_propensity", o->base_propensity);
    sb_set_number(L, t, "margin", o->margin);
    sb_set_number(L, t, "discount_pct", o->discount_pct);
    lua_createtable(L, 6, 0);
    int rec = lua_gettop(L);
    lua_pushlstring(L, o->id.ptr, o->id.len);
    lua_rawseti(L, rec, 1);
    if (o->category.len)
        lua_pushlstring(L, o->category.ptr, o->category.len);
    else
        lua_pushboolean(L, 0);
    lua_rawseti(L, rec, 2);
    /* The data behind the segment_propensity proxy, if it is a table. */
    lua_getfield(L, t, "segment_propensity");
    if (!(lua_type(L, -1) == LUA_TTABLE && sb_unwrap(L, lua_gettop(L)))) {
        lua_pop(L, 1);
        lua_pushboolean(L, 0);
    }
    lua_rawseti(L, rec, 3);
    sb_array_number(L, rec, 4, o->base_propensity);
    sb_array_number(L, rec, 5, o->margin);
    sb_array_number(L, rec, 6, o->serving_cost);

    lua_pushvalue(L, t);
    sb_make_proxy(L, slots);
    lua_pushvalue(L, -1);
    lua_pushvalue(L, rec);
    lua_rawset(L, orec);
    lua_replace(L, t);
    lua_settop(L, t);
}

/* Data table plus proxy for one input table; the data goes to data_slot,
 * the proxy stays on the stack. */
static void sb_input_table(lua_State *L, int slots, int data_slot, int narr, int nrec)
{
    lua_createtable(L, narr, nrec);
    lua_pushvalue(L, -1);
    sb_slot_set(L, slots, data_slot);
    sb_make_proxy(L, slots);
}

static const char *const sb_math_names[] = {
    "abs",   "acos", "asin",  "atan", "atan2", "ceil", "cos",   "cosh", "deg", "exp",
    "floor", "fmod", "frexp", "huge", "ldexp", "log",  "log10", "max",  "min", "modf",
    "pi",    "pow",  "rad",   "sin",  "sinh",  "sqrt", "tan",   "tanh", NULL};
/* string.find/match/gmatch/gsub come from lpattern.c; dump never. */
static const char *const sb_string_names[] = {"byte", "char",    "format", "len",   "lower",
                                              "rep",  "reverse", "sub",    "upper", NULL};
static const char *const sb_base_names[] = {"type",  "tostring", "tonumber", "select",
                                            "error", "assert",   NULL};

/* Everything but the policy: runs once per state under lua_cpcall, with no
 * memory limit yet. */
static int sb_build_state(lua_State *L)
{
    nbx_sandbox *sb = lua_touserdata(L, 1);
    lua_settop(L, 0);
    sb_open_lib(L, luaopen_base, "");
    sb_open_lib(L, luaopen_math, LUA_MATHLIBNAME);
    sb_open_lib(L, luaopen_string, LUA_STRLIBNAME);
    sb_open_lib(L, luaopen_table, LUA_TABLIBNAME);
    /* The JIT compiler is switched on by its library; production states
     * never open it (and turn the engine off besides). The `jit` global is
     * dropped below either way. */
    if (sb->limits.flags & NBX_LIMITS_JIT)
        sb_open_lib(L, luaopen_jit, LUA_JITLIBNAME);

    lua_createtable(L, SLOT_COUNT, 0);
    int slots = lua_gettop(L); /* 1 */
    lua_pushvalue(L, slots);
    sb->ref_slots = luaL_ref(L, LUA_REGISTRYINDEX);

    lua_pushcfunction(L, sb_readonly_write);
    sb_slot_set(L, slots, SLOT_READONLY);
    lua_pushcfunction(L, sb_global_write);
    sb_slot_set(L, slots, SLOT_GLOBAL_WRITE);
    lua_pushcfunction(L, sb_msgh);
    sb_slot_set(L, slots, SLOT_MSGH);
    lua_pushfstring(L, "policy exceeded its CPU time limit (%d us)", (int)sb->limits.time_us);
    sb_slot_set(L, slots, SLOT_MSG_TIMEOUT);
    lua_pushfstring(L, "policy exceeded its memory limit (%d KiB)", (int)(sb->limits.memory >> 10));
    sb_slot_set(L, slots, SLOT_MSG_MEMORY);

    /* LuaJIT's table.clear, reached through its preload entry (package is
     * never opened), for refilling input tables without reallocating. */
    lua_getfield(L, LUA_REGISTRYINDEX, "_PRELOAD");
    lua_getfield(L, -1, "table.clear");
    lua_call(L, 0, 1);
    sb_slot_set(L, slots, SLOT_CLEAR);
    lua_pop(L, 1);

    lua_getglobal(L, "_G");
    int G = lua_gettop(L); /* the real globals: never reachable by a policy */
    lua_getfield(L, G, "math");
    int native_math = lua_gettop(L);
    lua_getfield(L, G, "string");
    int native_string = lua_gettop(L);
    lua_getfield(L, G, "table");
    int native_table = lua_gettop(L);

    /* The helpers chunk and its private environment. */
    lua_createtable(L, 0, 8);
    int natives = lua_gettop(L);
    lua_pushcfunction(L, sb_check_sortable);
    lua_setfield(L, natives, "check_sortable");
    sb_push_closure_with(L, sb_ipairs, sb_inext);
    lua_setfield(L, natives, "ipairs");
    if (luaL_loadbuffer(L, sb_lib_source, sizeof sb_lib_source - 1, "=nbx") != 0)
        return lua_error(L);
    lua_createtable(L, 0, 0);
    lua_setfenv(L, -2);
    lua_pushvalue(L, natives);
    lua_call(L, 1, 1);
    int lib = lua_gettop(L);
    lua_pushvalue(L, lib);
    sb_slot_set(L, slots, SLOT_LIB);

    /* D: what policy globals resolve to. */
    lua_createtable(L, 0, 24);
    int D = lua_gettop(L);
    sb_copy_fields(L, D, G, sb_base_names);
    lua_pushcfunction(L, sb_next);
    lua_setfield(L, D, "next");
    sb_push_closure_with(L, sb_pairs, sb_next);
    lua_setfield(L, D, "pairs");
    sb_push_closure_with(L, sb_ipairs, sb_inext);
    lua_setfield(L, D, "ipairs");
    lua_pushcfunction(L, sb_unpack);
    lua_setfield(L, D, "unpack");
    lua_pushcfunction(L, sb_pcall);
    lua_setfield(L, D, "pcall");

    lua_createtable(L, 0, 32);
    sb_copy_fields(L, lua_gettop(L), native_math, sb_math_names);
    lua_pushcfunction(L, sb_random);
    lua_setfield(L, -2, "random");
    sb_make_proxy(L, slots);
    lua_setfield(L, D, "math");

    /* The safe string table is also the strings' __index, so ("x"):rep()
     * works; getmetatable('').__index can no longer reach LuaJIT's own. */
    lua_createtable(L, 0, 16);
    int str = lua_gettop(L);
    sb_copy_fields(L, str, native_string, sb_string_names);
    nbx_lpattern_push(L, &sb->lp_limit);
    sb_copy_fields(L, str, lua_gettop(L),
                   (const char *const[]){"find", "match", "gmatch", "gsub", NULL});
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushvalue(L, str);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
    lua_pushvalue(L, str);
    sb_make_proxy(L, slots);
    lua_setfield(L, D, "string");
    lua_pop(L, 1); /* str */

    lua_createtable(L, 0, 4);
    lua_getfield(L, native_table, "concat");
    lua_pushcclosure(L, sb_concat, 1);
    lua_setfield(L, -2, "concat");
    lua_getfield(L, native_table, "insert");
    lua_pushcclosure(L, sb_table_mutator, 1);
    lua_setfield(L, -2, "insert");
    lua_getfield(L, native_table, "remove");
    lua_pushcclosure(L, sb_table_mutator, 1);
    lua_setfield(L, -2, "remove");
    lua_getfield(L, lib, "sort");
    lua_setfield(L, -2, "sort");
    sb_make_proxy(L, slots);
    lua_setfield(L, D, "table");

    lua_createtable(L, 0, 8);
    sb_copy_fields(L, lua_gettop(L), lib,
                   (const char *const[]){"propensity", "expected_margin", "expected_margin_score",
                                         "clamp", "days_since", "contains", NULL});
    lua_pushcfunction(L, sb_len);
    lua_setfield(L, -2, "len");
    sb_make_proxy(L, slots);
    lua_setfield(L, D, "nbx");

    /* E: the policy's environment, always empty. Reads fall through to D;
     * while the chunk loads, writes land in D; then E is frozen. */
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, D);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, D);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    sb_slot_set(L, slots, SLOT_ENV_MT);
    lua_setmetatable(L, -2);
    sb_slot_set(L, slots, SLOT_ENV);

    /* Inputs: customer and session tables, reused by every decision. */
    lua_createtable(L, 0, 10);
    int cust = lua_gettop(L);
    lua_pushvalue(L, cust);
    sb_slot_set(L, slots, SLOT_CUST);
    sb_input_table(L, slots, SLOT_ATTRS, 0, 8);
    lua_setfield(L, cust, "attrs");
    sb_input_table(L, slots, SLOT_CONSENT, 0, 4);
    lua_setfield(L, cust, "consent");
    sb_input_table(L, slots, SLOT_PROPENSITY, 0, 8);
    lua_setfield(L, cust, "propensity");
    sb_input_table(L, slots, SLOT_RFM, 0, 10);
    lua_setfield(L, cust, "rfm");
    sb_input_table(L, slots, SLOT_EXPOSURES, 0, 8);
    lua_setfield(L, cust, "exposures");
    lua_pushboolean(L, 1);
    lua_setfield(L, cust, "anonymous");
    sb_make_proxy(L, slots);
    sb_slot_set(L, slots, SLOT_CUSTOMER);
    lua_rawgeti(L, slots, SLOT_EXPOSURES);
    sb_set_number(L, lua_gettop(L), "impressions", 0);
    sb_set_number(L, lua_gettop(L), "clicks", 0);
    sb_set_number(L, lua_gettop(L), "accepts", 0);
    sb_set_number(L, lua_gettop(L), "dismisses", 0);
    lua_pop(L, 1);
    sb_input_table(L, slots, SLOT_SESS, 0, 8);
    sb_slot_set(L, slots, SLOT_SESSION);

    static const int per_candidate[] = {SLOT_CO, SLOT_CP, SLOT_X, SLOT_S, SLOT_M};
    for (size_t i = 0; i < NBX_ARRAY_LEN(per_candidate); i++) {
        lua_createtable(L, 128, 0);
        sb_slot_set(L, slots, per_candidate[i]);
    }
    lua_createtable(L, 2, 0);
    sb_slot_set(L, slots, SLOT_ST);

    /* Offers and placements, built once per state. */
    const nbx_catalog *c = sb->catalog;
    int n_offers = c ? (int)c->n_offers : 0;
    lua_createtable(L, 0, n_offers);
    int orec = lua_gettop(L);
    lua_createtable(L, n_offers, 0);
    for (int i = 0; i < n_offers; i++) {
        sb_push_offer(L, slots, &c->offers[i], orec);
        lua_rawseti(L, -2, i + 1);
    }
    sb_slot_set(L, slots, SLOT_OFFERS);

    /* Hand the helpers their fast-path data. */
    lua_getfield(L, lib, "init");
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, orec);
    lua_setfield(L, -2, "orec");
    sb_slot_get(L, slots, SLOT_CUSTOMER);
    lua_setfield(L, -2, "customer");
    sb_slot_get(L, slots, SLOT_PROPENSITY);
    lua_setfield(L, -2, "pdata");
    sb_slot_get(L, slots, SLOT_RFM);
    lua_setfield(L, -2, "rfmdata");
    lua_call(L, 1, 0);
    lua_pop(L, 1); /* orec */
    lua_createtable(L, c ? (int)c->n_placements : 0, 0);
    for (uint32_t i = 0; c && i < c->n_placements; i++) {
        lua_pushlstring(L, c->placements[i].id.ptr, c->placements[i].id.len);
        lua_rawseti(L, -2, (int)i + 1);
    }
    sb_slot_set(L, slots, SLOT_PLACES);

    /* Nothing the policy needs is left in the real globals' reach except
     * through D; drop LuaJIT's copies of dangerous functions anyway. */
    static const char *const drop[] = {
        "load",         "loadstring",     "dofile",    "loadfile", "getfenv", "setfenv",
        "newproxy",     "collectgarbage", "coroutine", "require",  "module",  "rawset",
        "setmetatable", "getmetatable",   "debug",     "jit",      NULL};
    for (const char *const *d = drop; *d; d++) {
        lua_pushnil(L);
        lua_setfield(L, G, *d);
    }
    lua_pushnil(L);
    lua_setfield(L, native_string, "dump");
    lua_settop(L, 0);
    return 0;
}

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

/* Compile and run the policy file's top level under the limits, check the
 * table it returns, freeze its environment and build the driver. */
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
    int st = luaL_loadbufferx(L, pol->source, pol->source_len, pol->chunkname, "t");
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
    sb->pcall_depth = 0;
    sb->in_policy = true;
    sb_clock_start(sb, SB_LOAD_TIME_US);
    st = lua_pcall(L, 0, 1, 2);
    sb_clock_stop(sb);
    sb->in_policy = false;
    if (st != 0 || sb->timed_out || sb->mem_exceeded) {
        ld->status = st ? st : LUA_ERRRUN;
        return 0;
    }
    int P = lua_gettop(L);
    if (lua_type(L, P) != LUA_TTABLE)
        return sb_load_problem(ld, "the policy must return a table (it returned %s)",
                               luaL_typename(L, P));
    lua_getfield(L, P, "name");
    size_t name_len = 0;
    const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &name_len) : NULL;
    if (!name)
        return sb_load_problem(ld, "the policy table needs a 'name' string (got %s)",
                               luaL_typename(L, -1));
    if (name_len == 0 || name_len > SB_NAME_MAX || strlen(name) != name_len)
        return sb_load_problem(ld, "the policy's 'name' must be 1 to %d bytes without NUL",
                               SB_NAME_MAX);
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
    /* The first load of a policy (nbx_policy_load, before it is shared)
     * names it; later sandboxes only read the name. */
    if (pol->name[0] == '\0')
        memcpy(pol->name, name, name_len + 1);
    sb_where_of_function(sb, L, score, sb->score_where, sizeof sb->score_where);
    sb_slot_get(L, slots, SLOT_LIB);
    lua_getfield(L, -1, "expected_margin_score");
    sb->native_score = lua_isnil(L, eligible) && lua_rawequal(L, -1, score);
    lua_pop(L, 2);
    if (!lua_isnil(L, eligible))
        sb_where_of_function(sb, L, eligible, sb->eligible_where, sizeof sb->eligible_where);

    sb_slot_get(L, slots, SLOT_ENV_MT);
    sb_slot_get(L, slots, SLOT_GLOBAL_WRITE);
    lua_setfield(L, -2, "__newindex");
    lua_pop(L, 1);

    sb_slot_get(L, slots, SLOT_LIB);
    lua_getfield(L, -1, "make_driver");
    lua_pushvalue(L, score);
    lua_pushvalue(L, eligible);
    static const int args[] = {SLOT_OFFERS, SLOT_PLACES,    SLOT_CUSTOMER, SLOT_SESSION, SLOT_CUST,
                               SLOT_RFM,    SLOT_EXPOSURES, SLOT_SESS,     SLOT_CO,      SLOT_CP,
                               SLOT_X,      SLOT_S,         SLOT_M,        SLOT_ST};
    for (size_t i = 0; i < NBX_ARRAY_LEN(args); i++)
        sb_slot_get(L, slots, args[i]);
    lua_pushlightuserdata(L, (void *)&sb_ineligible);
    lua_call(L, 3 + (int)NBX_ARRAY_LEN(args), 1);
    sb_slot_set(L, slots, SLOT_DRIVER);
    lua_settop(L, 0);
    return 0;
}

/* What the policy holds: the state beyond the engine's own tables. */
static size_t sb_policy_bytes(const nbx_sandbox *sb)
{
    return sb->used > sb->engine_bytes ? sb->used - sb->engine_bytes : 0;
}

static void sb_tune_gc(nbx_sandbox *sb);

/* LuaJIT raises "not enough memory" without trying a collection first, so
 * garbage must never be what reaches the limit: collect fully, outside the
 * policy's time, once garbage has used half the headroom the policy's live
 * data leaves. */
static void sb_collect_if_needed(nbx_sandbox *sb)
{
    size_t live = sb->policy_live;
    size_t headroom = sb->limits.memory > live ? sb->limits.memory - live : 0;
    if (sb_policy_bytes(sb) <= live + headroom / 2)
        return;
    lua_gc(sb->L, LUA_GCCOLLECT, 0);
    sb->policy_live = sb_policy_bytes(sb);
    sb_tune_gc(sb);
}

static void sb_close_state(nbx_sandbox *sb)
{
    if (sb->L)
        lua_close(sb->L);
    sb->L = NULL;
    sb->used = 0;
    sb->n_cached = 0;
}

/* Keep collection ahead of the limit: LuaJIT starts a cycle when the heap
 * reaches pause% of what the last one left, so with a large catalog the
 * default 200% would let garbage alone reach the policy's limit. */
static void sb_tune_gc(nbx_sandbox *sb)
{
    size_t live = sb->used ? sb->used : 1;
    double pause = 100.0 + 50.0 * (double)sb->limits.memory / (double)live;
    if (pause > 200)
        pause = 200;
    if (pause < 110)
        pause = 110;
    lua_gc(sb->L, LUA_GCSETPAUSE, (int)pause);
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

static int sb_build(nbx_sandbox *sb, nbx_err *e)
{
    const char *path = sb->policy->path;
    sb->used = 0;
    sb->limit_abs = SIZE_MAX;
    sb->mem_exceeded = false;
    sb->real_oom = false;
    sb->timed_out = false;
    sb->wall_check = INT64_MAX;
    memset(sb->map_dirty, 0, sizeof sb->map_dirty);
    lua_State *L = lua_newstate(sb_alloc, sb);
    if (!L)
        return nbx_err_set(e, NBX_ENOMEM, "%s: cannot create a Lua state", path);
    sb->L = L;
    if (!(sb->limits.flags & NBX_LIMITS_JIT))
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
    } else if (sb->mem_exceeded) {
        code = sb_load_error(e, sb, "the policy exceeded its memory limit (%zu KiB) while loading",
                             sb->limits.memory >> 10);
    } else if (sb->timed_out) {
        code = sb_load_error(e, sb, "the policy's top level exceeded the load time limit (%d ms)",
                             SB_LOAD_TIME_US / 1000);
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
    lua_gc(L, LUA_GCCOLLECT, 0);
    sb->policy_live = sb_policy_bytes(sb);
    sb_tune_gc(sb);
    sb_fault_reset(sb);
    return NBX_OK;
}

/* ========================================================================
 * Public (internal) interface
 * ======================================================================== */

int nbx_sandbox_open(nbx_policy *policy, nbx_catalog *catalog, const nbx_limits *limits,
                     nbx_sandbox **out, nbx_err *e)
{
    if (!out)
        return nbx_err_set(e, NBX_EINVAL, "nbx_sandbox_open: out is NULL");
    *out = NULL;
    if (!policy || !policy->source || !policy->chunkname || !policy->path)
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
    sb->policy = nbx_policy_ref(policy);
    sb->catalog = nbx_catalog_ref(catalog);
    sb->lp_limit.check = sb_pattern_check;
    sb->lp_limit.ud = sb;
    sb->wall_check = INT64_MAX;
    sb_short_src(policy->chunkname, sb->short_src, sizeof sb->short_src);
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
    nbx_policy_unref(sb->policy);
    nbx_catalog_unref(sb->catalog);
    free(sb->live);
    free(sb->cached);
    free(sb->results);
    free(sb);
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

typedef struct sb_run {
    nbx_sandbox *sb;
    const nbx_sandbox_input *in;
    size_t n;           /* live candidates */
    int status;         /* of the driver call */
    int bad_result;     /* 0 ok, 1 bad score, 2 bad expected margin */
    char bad_value[96]; /* description of a rejected result */
    size_t current;     /* 1-based live candidate at a fault, 0 if none */
    bool in_eligible;   /* the fault happened in eligible(), not score() */
} sb_run;

/* Push the input map in `slot`, emptied if an earlier decision filled it,
 * and note whether this decision fills it. Returns its stack index. */
static int sb_refill_map(lua_State *L, nbx_sandbox *sb, int slots, int slot, int map, bool filling)
{
    sb_slot_get(L, slots, slot);
    int t = lua_gettop(L);
    if (sb->map_dirty[map]) {
        sb_slot_get(L, slots, SLOT_CLEAR);
        lua_pushvalue(L, t);
        lua_call(L, 1, 0);
    }
    sb->map_dirty[map] = filling;
    return t;
}

static void sb_fill_profile_maps(lua_State *L, nbx_sandbox *sb, int slots, const nbx_profile *p)
{
    static const nbx_profile empty;
    if (!p)
        p = &empty;
    int t = sb_refill_map(L, sb, slots, SLOT_ATTRS, MAP_ATTRS, p->n_attrs > 0);
    for (uint32_t i = 0; i < p->n_attrs; i++) {
        const nbx_attr *a = &p->attrs[i];
        lua_pushlstring(L, a->key.ptr, a->key.len);
        if (a->type == NBX_ATTR_STRING)
            lua_pushlstring(L, a->string.ptr, a->string.len);
        else if (a->type == NBX_ATTR_NUMBER)
            lua_pushnumber(L, a->number);
        else if (a->type == NBX_ATTR_BOOL)
            lua_pushboolean(L, a->boolean);
        else
            lua_pushnil(L);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);

    t = sb_refill_map(L, sb, slots, SLOT_CONSENT, MAP_CONSENT, p->n_consent > 0);
    for (uint32_t i = 0; i < p->n_consent; i++) {
        lua_pushlstring(L, p->consent[i].purpose.ptr, p->consent[i].purpose.len);
        lua_pushboolean(L, p->consent[i].state == 1);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);

    t = sb_refill_map(L, sb, slots, SLOT_PROPENSITY, MAP_PROPENSITY, p->n_propensity > 0);
    for (uint32_t i = 0; i < p->n_propensity; i++) {
        lua_pushlstring(L, p->propensity[i].key.ptr, p->propensity[i].key.len);
        lua_pushnumber(L, p->propensity[i].value);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);
}

static void sb_fill_session(lua_State *L, nbx_sandbox *sb, int slots, const nbx_sandbox_input *in)
{
    int t = sb_refill_map(L, sb, slots, SLOT_SESS, MAP_SESSION, in->n_session > 0);
    for (size_t i = 0; i < in->n_session; i++) {
        if (!in->session[i].key || !in->session[i].value)
            continue;
        lua_pushstring(L, in->session[i].key);
        lua_pushstring(L, in->session[i].value);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);
}

static void sb_push_time(lua_State *L, int64_t ms)
{
    if (ms)
        lua_pushnumber(L, (double)ms / 1000.0);
    else
        lua_pushnil(L);
}

/* CO/CP/X for the live candidates. CO and CP entries are written only
 * where they differ from the last decision's. */
static void sb_fill_candidates(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r)
{
    sb_slot_get(L, slots, SLOT_CO);
    int co = lua_gettop(L);
    sb_slot_get(L, slots, SLOT_CP);
    int cp = lua_gettop(L);
    sb_slot_get(L, slots, SLOT_X);
    int x = lua_gettop(L);
    int xj = 0;
    for (size_t k = 0; k < r->n; k++) {
        const nbx_candidate *c = &r->in->cand[sb->live[k]];
        const nbx_exposure_summary *s = c->exposure;
        double vco = s ? -(double)c->offer - 1 : (double)c->offer + 1;
        double vcp = (double)c->placement + 1;
        struct sb_cached_cand *m = &sb->cached[k];
        if (k >= sb->n_cached || m->co != vco) {
            lua_pushnumber(L, vco);
            lua_rawseti(L, co, (int)k + 1);
            m->co = vco;
        }
        if (k >= sb->n_cached || m->cp != vcp) {
            lua_pushnumber(L, vcp);
            lua_rawseti(L, cp, (int)k + 1);
            m->cp = vcp;
        }
        if (!s)
            continue;
        int b = xj * 7;
        xj++;
        lua_pushnumber(L, s->impressions);
        lua_rawseti(L, x, b + 1);
        lua_pushnumber(L, s->clicks);
        lua_rawseti(L, x, b + 2);
        lua_pushnumber(L, s->accepts);
        lua_rawseti(L, x, b + 3);
        lua_pushnumber(L, s->dismisses);
        lua_rawseti(L, x, b + 4);
        sb_push_time(L, s->last_impression);
        lua_rawseti(L, x, b + 5);
        sb_push_time(L, s->last_dismiss);
        lua_rawseti(L, x, b + 6);
        sb_push_time(L, s->last_accept);
        lua_rawseti(L, x, b + 7);
    }
    if (r->n > sb->n_cached)
        sb->n_cached = r->n;
    lua_pop(L, 3);
}

/* Arguments of the driver: n, now, then the customer's scalars. */
static int sb_push_driver_args(lua_State *L, const sb_run *r)
{
    const nbx_sandbox_input *in = r->in;
    const nbx_profile *p = in->profile;
    const nbx_rfm *rfm = p ? &p->rfm : NULL;
    lua_pushnumber(L, (double)r->n);
    lua_pushnumber(L, (double)in->now_ms / 1000.0);
    if (p && p->id.ptr)
        lua_pushlstring(L, p->id.ptr, p->id.len);
    else
        lua_pushnil(L);
    lua_pushboolean(L, in->anonymous || !p);
    if (p && (p->fields & NBX_PF_LTV))
        lua_pushnumber(L, p->ltv);
    else
        lua_pushnil(L);
    if (p && (p->fields & NBX_PF_CHURN))
        lua_pushnumber(L, p->churn);
    else
        lua_pushnil(L);
    lua_pushnumber(L, rfm ? rfm->r : 0);
    lua_pushnumber(L, rfm ? rfm->f : 0);
    lua_pushnumber(L, rfm ? rfm->m : 0);
    const char *seg = rfm && rfm->segment ? nbx_segment_name(rfm->segment) : NULL;
    if (seg)
        lua_pushstring(L, seg);
    else
        lua_pushnil(L);
    sb_push_time(L, rfm ? rfm->first_purchase : 0);
    sb_push_time(L, rfm ? rfm->last_purchase : 0);
    lua_pushnumber(L, rfm ? (double)rfm->orders : 0);
    lua_pushnumber(L, rfm ? rfm->revenue : 0);
    lua_pushnumber(L, rfm ? rfm->margin : 0);
    if (rfm && rfm->last_purchase)
        lua_pushnumber(L, (double)(in->now_ms - rfm->last_purchase) / (double)NBX_MS_PER_DAY);
    else
        lua_pushnil(L);
    return 16;
}

static void sb_describe_value(lua_State *L, int idx, char *out, size_t n)
{
    int t = lua_type(L, idx);
    if (t == LUA_TNUMBER) {
        double v = lua_tonumber(L, idx);
        snprintf(out, n, "%s", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
    } else if (t == LUA_TSTRING) {
        snprintf(out, n, "a string (\"%.40s\")", lua_tostring(L, idx));
    } else if (t == LUA_TNIL || t == LUA_TNONE) {
        snprintf(out, n, "nil");
    } else {
        snprintf(out, n, "a %s", lua_typename(L, t));
    }
}

/* Read S and M in one pass of API calls into sb->results; commit them to
 * the candidates only if every score is a finite number and every expected
 * margin nil or one. Otherwise note the first offending candidate and
 * leave the candidates untouched. */
static void sb_read_results(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r)
{
    sb_slot_get(L, slots, SLOT_S);
    int s = lua_gettop(L);
    sb_slot_get(L, slots, SLOT_M);
    int m = lua_gettop(L);
    for (size_t k = 0; k < r->n; k++) {
        struct sb_result *out = &sb->results[k];
        lua_rawgeti(L, s, (int)k + 1);
        int t = lua_type(L, -1);
        if (t == LUA_TNUMBER) {
            out->score = lua_tonumber(L, -1);
            out->eligible = true;
            if (!isfinite(out->score)) {
                r->bad_result = 1;
            } else {
                lua_rawgeti(L, m, (int)k + 1);
                t = lua_type(L, -1);
                if (t == LUA_TNUMBER)
                    out->margin = lua_tonumber(L, -1);
                else
                    out->margin = NAN;
                if ((t == LUA_TNUMBER && !isfinite(out->margin)) ||
                    (t != LUA_TNUMBER && t != LUA_TNIL))
                    r->bad_result = 2;
            }
        } else if (t == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == &sb_ineligible) {
            out->eligible = false;
        } else {
            r->bad_result = 1;
        }
        if (r->bad_result) {
            sb_describe_value(L, -1, r->bad_value, sizeof r->bad_value);
            r->current = k + 1;
            return;
        }
        lua_settop(L, m);
    }
    for (size_t k = 0; k < r->n; k++) {
        nbx_candidate *c = &r->in->cand[sb->live[k]];
        const struct sb_result *res = &sb->results[k];
        c->scored = res->eligible;
        if (res->eligible) {
            c->score = res->score;
            c->expected_margin = res->margin;
        } else {
            c->excluded = NBX_EXCLUDED_INELIGIBLE;
        }
    }
}

static int sb_run_body(lua_State *L)
{
    sb_run *r = lua_touserdata(L, 1);
    nbx_sandbox *sb = r->sb;
    lua_settop(L, 0);
    lua_checkstack(L, 40);
    lua_rawgeti(L, LUA_REGISTRYINDEX, sb->ref_slots);
    int slots = 1;
    sb_fill_profile_maps(L, sb, slots, r->in->profile);
    sb_fill_session(L, sb, slots, r->in);
    sb_fill_candidates(L, sb, slots, r);
    sb_slot_get(L, slots, SLOT_MSGH); /* 2 */
    sb_slot_get(L, slots, SLOT_DRIVER);
    int nargs = sb_push_driver_args(L, r);

    sb->rng = r->in->seed;
    sb->pcall_depth = 0;
    sb->in_policy = true;
    sb_clock_start(sb, sb->limits.time_us);
    r->status = lua_pcall(L, nargs, 0, 2);
    sb_clock_stop(sb);
    sb->in_policy = false;
    lua_settop(L, slots);

    sb_slot_get(L, slots, SLOT_ST);
    lua_rawgeti(L, -1, 1);
    lua_Integer cur = lua_tointeger(L, -1);
    lua_pop(L, 2);
    if (r->status != 0 || sb->timed_out || sb->mem_exceeded) {
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
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->reason, sizeof err->reason, fmt, ap);
    va_end(ap);
}

static const char *sb_current_offer(const nbx_sandbox *sb, const sb_run *r)
{
    if (r->current == 0 || r->current > r->n)
        return "";
    const nbx_candidate *c = &r->in->cand[sb->live[r->current - 1]];
    return sb->catalog->offers[c->offer].id.ptr;
}

/* nbx.expected_margin_score in C: the arithmetic of the Lua helper, with
 * nbx_offer_propensity() (which the helper mirrors), so results are the
 * same to the bit. It cannot fail: every input is a finite catalog or
 * profile number. */
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

    size_t n = 0;
    if (in->n_cand > sb->live_cap) {
        size_t cap = in->n_cand < 64 ? 64 : in->n_cand;
        size_t *live = realloc(sb->live, cap * sizeof *live);
        if (live)
            sb->live = live;
        struct sb_cached_cand *cached = live ? realloc(sb->cached, cap * sizeof *cached) : NULL;
        if (cached)
            sb->cached = cached;
        struct sb_result *results = cached ? realloc(sb->results, cap * sizeof *results) : NULL;
        if (!results) {
            sb_error(err, NBX_FAULT_NONE, NULL, NULL, "out of memory");
            return NBX_ENOMEM;
        }
        sb->results = results;
        sb->live_cap = cap;
    }
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
    lua_State *L = sb->L;
    sb_fault_reset(sb);
    sb_run r = {.sb = sb, .in = in, .n = n};
    int st = lua_cpcall(L, sb_run_body, &r);
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

    if (sb->real_oom || sb->mem_exceeded || sb->timed_out || st != 0) {
        /* The state may hold whatever the policy piled up, and the hook
         * fires on every instruction: start afresh on the next run. */
        sb_close_state(sb);
        return rc;
    }
    lua_settop(L, 0);
    sb_collect_if_needed(sb);
    return rc;
}
