/*
 * sandbox_int.h: private to the sandbox's files.
 *
 *   sandbox.c         lifetime of a state: build, load the policy, run a
 *                     decision
 *   sandbox_io.c      inputs and outputs: offers, the customer, the session
 *                     and candidates into Lua, scores out
 *   sandbox_env.c     what a policy may reach: the allow-listed environment,
 *                     read-only proxies, frozen tables, reproducible
 *                     iteration, the C functions policies call
 *   sandbox_limits.c  what a policy may spend: the counting allocator, the
 *                     deadline and the time checks policy code carries
 *   sandbox_fault.c   where and why a policy failed
 *   sandbox.lua       the engine's own Lua (helpers, driver), embedded
 *
 * Listed from the top: a file calls only the files below it. Everything
 * outside these files sees the sandbox through nbx_int.h only.
 */
#ifndef NBX_SANDBOX_INT_H
#define NBX_SANDBOX_INT_H

#include "nbx_int.h"

#include <lua.h>
#include <stdarg.h>

/* Longest string a policy can make or see: every operation on a string is
 * O(its length), so this bounds what one operation costs, and with it the
 * time between two time checks (docs/sandbox.md, "Time"). Longer catalog
 * strings are not given to the policy. */
#define SB_STRING_MAX NBX_VALUE_MAX
/* Largest single allocation while policy code runs, at load and in a
 * decision: a table part, a buffer, the Lua stack. Growing a table copies
 * it in one C call, so this bounds that call's time too; the Lua stack of
 * a deep recursion needs about 512 KiB; loading may build bigger lookup
 * tables than a decision needs. */
#define SB_OBJECT_MAX_LOAD (4u << 20)
#define SB_OBJECT_MAX_RUN (1u << 20)
/* CPU time for running a policy file's top level. */
#define SB_LOAD_TIME_US 100000
/* What one work unit (lsource.c: a call, a concatenation, a comparison,
 * an arithmetic operation) may cost at worst: an operation on a string of
 * SB_STRING_MAX bytes (string.rep, upper, tonumber, or arithmetic on a
 * numeric string) takes up to about 8 us here. The time checks are spaced
 * by it: after looking at the clock, the policy may run as many units as
 * could not take it past its deadline even at this cost, and at least
 * SB_TICK_MIN; a statement does at most NBX_LSOURCE_WORK_MAX. So no run
 * ends more than (SB_TICK_MIN + NBX_LSOURCE_WORK_MAX) units past its
 * deadline, under 1 ms, while a normal decision looks at the clock a few
 * times (docs/sandbox.md, "Time"). */
#define SB_UNIT_WORST_NS 10000
/* What an explanation keeps of a policy's words: eligible()'s reason and
 * nbx.log() lines, per decision (sandbox.lua cuts them; C escapes them). */
#define SB_WHY_MAX 200
#define SB_LOG_LINES 32
#define SB_LOG_LINE_MAX 240
#define SB_TICK_MIN 16
#define SB_TICK_MAX 100000
/* Big blocks (table parts, the Lua stack, buffers of 64 KiB and more) a
 * state freed, kept with their pages mapped for its next big allocation,
 * at most this many and this many bytes (sandbox_limits.c, sb_release). */
#define SB_BLOCKS 4
#define SB_BLOCKS_BYTES (2u << 20)
/* What the allocator grants a run of policy code past a fault (a limit it
 * broke) until the next tick raises the fault: it refuses only past this,
 * since a refusal inside compiled code can crash LuaJIT (sandbox_limits.c,
 * "Faults inside compiled code"). Four times the biggest allocation a
 * decision may make (SB_OBJECT_MAX_RUN). */
#define SB_OVERDRAFT (4u << 20)
/* The same past the deadline alone, smaller: fresh memory costs time
 * (page faults) as well as bytes. A table part or Lua stack growing once
 * more (SB_OBJECT_MAX_RUN) fits. */
#define SB_OVERDRAFT_LATE (1u << 20)
/* The spare: blocks of SB_OBJECT_MAX_RUN bytes whose pages were written
 * once and are kept mapped, from which the allocator grants a big growth
 * past a fault, so that the grant costs no page faults (sandbox_limits.c,
 * "The spare"). Two: what a faulted run was granted may stay in use (the
 * Lua stack it grew, a trace compiled past the deadline) when the next
 * run faults. */
#define SB_SPARES 2
/* What one work unit may allocate, amortised (a string of SB_STRING_MAX
 * and its buffer; a table's share of its doublings is far less): a grant
 * of units is capped by the bytes left below the memory limit at this
 * cost, so the policy reaches its next tick within SB_OVERDRAFT of it. */
#define SB_UNIT_WORST_BYTES (16u << 10)

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
    SLOT_DATA,        /* proxy -> the table behind it */
    SLOT_ORDER,       /* constant proxy -> its keys in canonical order, or false */
    SLOT_FROZEN_MT,   /* the metatable every frozen table shares */
    SLOT_TICKS,       /* { work units left before the next clock check } */
    SLOT_OFFERS,      /* offer index + 1 -> offer proxy */
    SLOT_OFFER_INDEX, /* offer proxy -> offer index + 1 */
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
    SLOT_MARGIN,  /* offer index + 1 -> unit margin */
    SLOT_COST,    /* offer index + 1 -> serving cost */
    SLOT_FFI,     /* the ffi library: the engine's own chunk's alone */
    SLOT_CAST,    /* ffi.cast, for the shared arrays (struct sb_shared) */
    SLOT_ARRAYS,  /* { CO, CP, X, S, M, F, PR }: the shared arrays as FFI pointers */
    SLOT_BAD,     /* { score, margin } of the candidate whose result is not a number */
    SLOT_R,       /* eligible()'s reason when it said no */
    SLOT_ST,      /* [1] candidate being run (negative: in eligible) */
    SLOT_LOG,     /* nbx.log(): { on = bool, n = lines, dropped = count, lines... } */
    SLOT_MSG_TIMEOUT,
    SLOT_MSG_MEMORY,
    SLOT_COUNT
};

/* What the driver (sandbox.lua) and C exchange per candidate, in C memory
 * the driver reads and writes through FFI pointers: no Lua API call per
 * candidate. Only the engine's own chunk holds the pointers; a policy can
 * neither reach the FFI nor make cdata (lsource.c refuses its literals).
 * Index k is candidate k (1-based; element 0 unused), PR is per offer
 * index + 1. C allocates them: they are not the policy's memory. */
enum sb_flag {
    SB_F_SCORED = 1,     /* S[k] holds the score, no expected margin */
    SB_F_SCORED_M = 2,   /* S[k] and M[k] */
    SB_F_INELIGIBLE = 3, /* eligible() said no; R[k] its reason */
    SB_F_BAD = 4         /* a result is not a number: BAD holds them, the run stopped */
};

struct sb_shared {
    int32_t *co; /* offer index + 1, negated when the candidate has exposures */
    int32_t *cp; /* placement index + 1 */
    double *x;   /* 7 exposure numbers per exposed candidate, in order */
    double *s, *m;
    uint8_t *f;  /* sb_flag, written by the driver */
    double *pr;  /* per offer: this decision's propensity */
    size_t cap;  /* candidates the per-candidate arrays hold */
    bool stale;  /* resized: the state's pointers must be made again */
};

struct sb_result {
    size_t why; /* offset in sb->text of eligible()'s reason; SIZE_MAX: none */
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
    size_t policy_live;   /* what the policy held after the last full collection */
    size_t object_max;    /* one allocation while policy code runs */
    size_t refused;       /* the size of the allocation refused, for messages */
    bool mem_exceeded;    /* the memory limit: set until the next run */
    bool object_exceeded; /* one object over object_max or SB_STRING_MAX */
    bool real_oom;
    size_t alloc_credit; /* bytes the policy may allocate before a clock check */
    size_t overdraft;    /* bytes granted since the run faulted (SB_OVERDRAFT) */
    size_t overdrawn;    /* refusals past SB_OVERDRAFT in this state's life */
    struct sb_block {
        void *p; /* NULL: free slot */
        size_t size;
    } blocks[SB_BLOCKS];
    size_t blocks_bytes;
    struct sb_spare {
        char *p;   /* SB_OBJECT_MAX_RUN bytes, pages written; NULL until Lua first runs */
        bool used; /* handed out, not yet freed by Lua */
    } spare[SB_SPARES];
    uint64_t spare_grants; /* big growths past a fault a spare block held */
    uint64_t spare_misses; /* big growths past a fault with no spare block free */

    /* Deadline (nanoseconds, CLOCK_MONOTONIC and thread CPU time). */
    int64_t budget_ns;
    int64_t sample_ns; /* wall time before the first CPU clock reading */
    int64_t wall_start;
    int64_t wall_check; /* INT64_MAX when no policy code runs */
    int64_t cpu_base;
    int64_t charged_ns;
    int64_t last_now; /* CLOCK_MONOTONIC at the last look */
    bool cpu_mode;
    bool timed_out;
    /* What sandbox.lua's tick check reads (through an FFI pointer) to look
     * at the clock without calling C: [0] the next time C must look
     * (CLOCK_MONOTONIC ns; -inf once timed out), [1] the time the budget
     * left is measured to, [2] the most units one grant gives. Kept by
     * sb_publish_deadline() whenever the fields above change. */
    double deadline[3];

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
    bool warmed; /* the JIT has seen the policy run (sb_warm_up) */
    nbx_lp_limit lp_limit;

    /* The decision being run, for the C functions policies call. */
    const nbx_sandbox_input *in;

    size_t *live; /* per run: live candidate k -> index into in->cand */
    size_t live_cap;
    struct sb_shared shared;
    /* Per live candidate, what C keeps of its result beyond the arrays. */
    struct sb_result *results;
    bool map_dirty[MAP_COUNT];

    /* An explained run's words: reasons and log lines, escaped, in text;
     * log holds pointers into it. */
    nbx_buf text;
    size_t *log_off;
    const char **log;
    size_t n_log;
    uint32_t log_dropped;
    bool log_on; /* what LOG.on holds in the state */
};

static inline nbx_sandbox *sb_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

static inline void sb_slot_set(lua_State *L, int slots, int slot)
{
    lua_rawseti(L, slots, slot);
}

static inline void sb_slot_get(lua_State *L, int slots, int slot)
{
    lua_rawgeti(L, slots, slot);
}

/* Push slot `slot` of the state's slot table. */
static inline void sb_push_slot(lua_State *L, int slot)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, sb_of(L)->ref_slots);
    lua_rawgeti(L, -1, slot);
    lua_remove(L, -2);
}

/* sandbox_limits.c */
void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Free the big blocks kept for reuse (after lua_close). */
void sb_blocks_free(nbx_sandbox *sb);
/* Make the spare (once per sandbox, before Lua first runs policy code;
 * costs its page faults there). Without memory for it the sandbox works,
 * its grants past a fault coming from fresh memory. */
void sb_spare_open(nbx_sandbox *sb);
/* Free the spare (after lua_close: nothing of it is in use). */
void sb_spare_free(nbx_sandbox *sb);
/* Every spare block is in use (the next fault's big grants would be fresh
 * memory): the garbage of faulted runs holds them until a collection. */
bool sb_spare_exhausted(const nbx_sandbox *sb);
/* Collect, within a bound on time, until a spare block is free (after a
 * faulted run, outside policy code). */
void sb_spare_reclaim(nbx_sandbox *sb);
/* Start a run's clock and grant its first work units (needs sb->L). */
void sb_clock_start(nbx_sandbox *sb, uint32_t budget_us);
void sb_clock_stop(nbx_sandbox *sb);
bool sb_time_up(nbx_sandbox *sb);
/* Raise the timeout once time is up (and from then on); else return. */
void sb_check_time(lua_State *L, nbx_sandbox *sb);
/* The check instrumented code calls when its tick counter runs out and
 * sandbox.lua's fast check found the deadline near (or past). */
int sb_tick_check(lua_State *L);
void sb_pattern_check(lua_State *L, void *ud);
void sb_pattern_too_big(lua_State *L, void *ud, const char *what, size_t size);
/* Raise the memory fault for an object over a size limit. */
int sb_raise_too_big(lua_State *L, const char *what, double size, double limit);

/* sandbox_fault.c */
/* The message handler of protected calls into policy code. */
int sb_msgh(lua_State *L);
void sb_note_where(nbx_sandbox *sb, lua_State *L, int level);
/* "file.lua:LINE" of the first policy frame from `level` up; false (and
 * out empty) when there is none. */
bool sb_policy_where_at(nbx_sandbox *sb, lua_State *L, int level, char *out, size_t n);
/* Record where and why from the error object at idx and the live stack. */
void sb_describe_error(nbx_sandbox *sb, lua_State *L, int idx);
void sb_fault_reset(nbx_sandbox *sb);
int sb_raise(lua_State *L, int level, const char *fmt, ...) NBX_PRINTF(3, 4);

/* sandbox_env.c */
/* Replace the data table on top of the stack by a read-only proxy of it;
 * the constant kind for values that never change (catalog objects), whose
 * key order is then worked out once. */
void sb_make_proxy(lua_State *L, int slots);
void sb_make_constant_proxy(lua_State *L, int slots);
/* The engine's part of a state, before the catalog's tables (which
 * sandbox_io.c adds); leaves the slot table at 1 and returns its index. */
int sb_env_build(lua_State *L, nbx_sandbox *sb);
/* After the catalog's tables: hand them to the helpers, empty the real
 * globals of what a policy must never reach. */
void sb_env_finish(lua_State *L, int slots);
/* Freeze every table the policy's top level left reachable from the value
 * at root and from the environment: root is replaced by its frozen proxy.
 * Raises with the reason when the policy keeps something it may not (a
 * string over SB_STRING_MAX). */
void sb_freeze(lua_State *L, int slots, int root);

/* sandbox_io.c */
typedef struct sb_run {
    nbx_sandbox *sb;
    const nbx_sandbox_input *in;
    uint32_t budget_us; /* CPU time of this run */
    size_t n;           /* live candidates */
    int status;         /* of the driver call */
    int bad_result;     /* 0 ok, 1 bad score, 2 bad expected margin */
    char bad_value[96]; /* description of a rejected result */
    size_t current;     /* 1-based live candidate at a fault, 0 if none */
    bool in_eligible;   /* the fault happened in eligible(), not score() */
} sb_run;

/* Offers and placements as Lua tables, once per state (in sb_build_state). */
void sb_push_catalog(lua_State *L, int slots, const nbx_catalog *c);
/* (Re)make the FFI pointers of the shared arrays in SLOT_ARRAYS. */
void sb_share_arrays(lua_State *L, nbx_sandbox *sb, int slots);
/* Fill the inputs of one decision and push the driver's arguments. */
int sb_push_inputs(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r);
/* Read S, M and R into the candidates (or note the first bad result). */
void sb_read_results(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r);
/* Switch nbx.log() on or off for the next run. */
void sb_log_switch(lua_State *L, nbx_sandbox *sb, int slots, bool on);
/* Take the lines nbx.log() collected in this run (and empty the table). */
void sb_read_log(lua_State *L, nbx_sandbox *sb, int slots);

#endif /* NBX_SANDBOX_INT_H */
