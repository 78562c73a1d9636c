/*
 * sandbox_limits.c: what a policy may spend.
 *
 * Memory: a counting allocator caps the bytes of the state (the policy gets
 * limits.memory over what the engine's own tables take) and the size of any
 * one allocation while policy code runs (a table part or a buffer: growing
 * one copies it in a single C call, which nothing can interrupt).
 *
 * Time: the policy's code carries its own checks. lsource.c rewrites every
 * policy so that function entries, loop iterations, returns and every
 * statement that does work count down a counter (TICKS[1]) by the work they
 * do; when it runs out, sandbox.lua's tick_check() looks at the clock (through
 * the FFI: no C call, so compiled code stays compiled) and grants more, or
 * calls sb_tick_check() once the deadline is near. The JIT compiles
 * those counters into the machine code like any other Lua, so unlike a debug
 * hook (which compiled code never calls) they hold in compiled loops too.
 * Each work unit is an operation on strings no longer than SB_STRING_MAX or
 * on a table no bigger than one allocation may be, so it costs at most
 * SB_UNIT_WORST_NS; the counter is granted what the remaining budget allows
 * at that cost, which bounds how far past its deadline a policy can run
 * (docs/sandbox.md, "Time").
 */
#include "sandbox_int.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ========================================================================
 * Allocator
 * ======================================================================== */

static void sb_publish_deadline(nbx_sandbox *sb);

/* Growth from which an allocation also checks the deadline. */
#define SB_BIG_ALLOC 65536

static void sb_refuse(nbx_sandbox *sb, bool *flag, size_t size)
{
    if (!sb->mem_exceeded && !sb->object_exceeded) {
        sb->refused = size;
        /* The error unwinds before anyone could look at the stack, and a
         * memory error calls no message handler: note the policy's line
         * now. Reading the stack allocates nothing. */
        if (sb->in_policy && sb->L && !sb->recorded)
            sb_note_where(sb, sb->L, 0);
    }
    *flag = true;
}

/* Lua's allocator contract: nsize 0 frees; shrinking never fails. LuaJIT
 * raises "not enough memory" without trying an emergency collection first,
 * so sandbox.c collects between decisions. A refusal is sticky for the rest
 * of the run: a policy that catches the error cannot go on allocating. */
void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
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
        if (sb->mem_exceeded || sb->object_exceeded) {
            return NULL;
        }
        if (sb->used > sb->limit_abs || grow > sb->limit_abs - sb->used) {
            sb_refuse(sb, &sb->mem_exceeded, nsize);
            return NULL;
        }
        if (sb->in_policy && nsize > sb->object_max) {
            sb_refuse(sb, &sb->object_exceeded, nsize);
            return NULL;
        }
        /* A big allocation is about to be filled by one C call: past the
         * deadline, refuse it. */
        if (grow >= SB_BIG_ALLOC && sb->in_policy && sb->L && (sb->timed_out || sb_time_up(sb))) {
            if (!sb->timed_out) {
                sb->timed_out = true;
                sb_publish_deadline(sb);
                if (!sb->recorded)
                    sb_note_where(sb, sb->L, 0);
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

int sb_raise_too_big(lua_State *L, const char *what, double size, double limit)
{
    nbx_sandbox *sb = sb_of(L);
    if (!sb->recorded)
        sb_note_where(sb, L, 1);
    sb->refused = size >= 0 && size < 0x1p63 ? (size_t)size : SIZE_MAX;
    /* The message handler does not describe memory faults: the reason is
     * set here. The message is pushed before the fault is marked, since
     * from then on every allocation is refused. */
    snprintf(sb->reason, sizeof sb->reason,
             "policy exceeded its memory limit: %s would be %.0f bytes (strings a policy makes "
             "are limited to %.0f)",
             what, size, limit);
    lua_pushstring(L, sb->reason);
    sb->object_exceeded = true;
    return lua_error(L);
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

/* Units the policy may run before the next look at the clock: as many as
 * cannot take it past its deadline even if each costs SB_UNIT_WORST_NS. */
static double sb_grant(const nbx_sandbox *sb, int64_t remaining_ns)
{
    if (sb->limits.flags & NBX_LIMITS_NO_DEADLINE)
        return 1e300;
    double units = (double)remaining_ns / SB_UNIT_WORST_NS;
    if (units < SB_TICK_MIN)
        units = SB_TICK_MIN;
    if (units > SB_TICK_MAX)
        units = SB_TICK_MAX;
    return units;
}

/* Tell sandbox.lua's tick check what C decided (see deadline[] in
 * sandbox_int.h): while CLOCK_MONOTONIC is below deadline[0] it grants
 * (deadline[1] - now) / SB_UNIT_WORST_NS units, clamped as sb_grant does,
 * which is what sb_tick_check would grant; at or past it, C decides. */
static void sb_publish_deadline(nbx_sandbox *sb)
{
    double *d = sb->deadline;
    if (sb->limits.flags & NBX_LIMITS_NO_DEADLINE) {
        d[0] = HUGE_VAL;
        d[1] = HUGE_VAL;
        d[2] = 1e300;
    } else if (sb->timed_out || sb->wall_check == INT64_MAX) {
        d[0] = -HUGE_VAL; /* C decides: raise again, or no run is on */
    } else {
        d[0] = (double)sb->wall_check;
        d[1] = sb->cpu_mode ? (double)sb->wall_check : (double)(sb->wall_start + sb->budget_ns);
        d[2] = SB_TICK_MAX;
    }
}

static void sb_set_ticks(nbx_sandbox *sb, lua_State *L, double units)
{
    sb_push_slot(L, SLOT_TICKS);
    lua_pushnumber(L, units);
    lua_rawseti(L, -2, 1);
    lua_pop(L, 1);
}

void sb_clock_start(nbx_sandbox *sb, uint32_t budget_us)
{
    sb->timed_out = false;
    sb->cpu_mode = false;
    sb->budget_ns = (int64_t)budget_us * 1000;
    if (sb->limits.flags & NBX_LIMITS_NO_DEADLINE) {
        sb->wall_check = INT64_MAX;
    } else {
        sb->sample_ns = sb->budget_ns / 4 < SB_CPU_SAMPLE_NS ? sb->budget_ns / 4 : SB_CPU_SAMPLE_NS;
        sb->wall_start = sb_clock_ns(CLOCK_MONOTONIC);
        sb->wall_check = sb->wall_start + sb->sample_ns;
    }
    sb_publish_deadline(sb);
    sb_set_ticks(sb, sb->L, sb_grant(sb, sb->budget_ns));
}

void sb_clock_stop(nbx_sandbox *sb)
{
    sb->wall_check = INT64_MAX;
    sb_publish_deadline(sb);
}

/* What is left of the budget at most (CPU time cannot run ahead of wall
 * time): wall time is what the cheap clock gives. */
static int64_t sb_remaining_ns(const nbx_sandbox *sb, int64_t now)
{
    if (sb->cpu_mode)
        return sb->wall_check - now;
    return sb->budget_ns - (now - sb->wall_start);
}

bool sb_time_up(nbx_sandbox *sb)
{
    int64_t now = sb_clock_ns(CLOCK_MONOTONIC);
    sb->last_now = now;
    if (NBX_LIKELY(now < sb->wall_check))
        return false;
    if (sb->wall_check == INT64_MAX)
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
    sb_publish_deadline(sb);
    return false;
}

/* Raise once time is up, and from then on at every check: a pcall cannot
 * swallow it (sb_pcall raises it again too). */
void sb_check_time(lua_State *L, nbx_sandbox *sb)
{
    if (!sb->timed_out) {
        if (NBX_LIKELY(!sb_time_up(sb)))
            return;
        sb->timed_out = true;
        sb_publish_deadline(sb);
        if (!sb->recorded)
            sb_note_where(sb, L, 0);
    }
    sb_push_slot(L, SLOT_MSG_TIMEOUT);
    lua_error(L);
}

/* __nbx_t: the tick counter (upvalue 1, TICKS) ran out. Look at the clock,
 * then grant what the rest of the budget allows. */
int sb_tick_check(lua_State *L)
{
    nbx_sandbox *sb = sb_of(L);
    sb_check_time(L, sb);
    double units = SB_TICK_MIN;
    if (sb->wall_check != INT64_MAX || (sb->limits.flags & NBX_LIMITS_NO_DEADLINE))
        units = sb_grant(sb, sb_remaining_ns(sb, sb->last_now));
    lua_pushnumber(L, units);
    lua_rawseti(L, lua_upvalueindex(1), 1);
    return 0;
}

void sb_pattern_check(lua_State *L, void *ud)
{
    sb_check_time(L, ud);
}

void sb_pattern_too_big(lua_State *L, void *ud, const char *what, size_t size)
{
    NBX_UNUSED(ud);
    sb_raise_too_big(L, what, (double)size, SB_STRING_MAX);
}
