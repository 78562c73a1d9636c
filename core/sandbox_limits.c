/*
 * sandbox_limits.c: what a policy may spend.
 *
 * Memory: a counting allocator caps the bytes of the state (the policy gets
 * limits.memory over what the engine's own tables take) and the size of any
 * one allocation while policy code runs (a table part or a buffer: growing
 * one copies it in a single C call, which nothing can interrupt). Memory
 * costs time as well as bytes: the allocator looks at the clock as the
 * policy allocates, and makes the page faults of big blocks happen where a
 * check can stop them, or not at all (sb_grow_big).
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
static bool sb_time_up_before_big_work(nbx_sandbox *sb);
static bool sb_faulted(const nbx_sandbox *sb);
static bool sb_overdraw(nbx_sandbox *sb, size_t grow);
static double sb_units_max(const nbx_sandbox *sb);
static int64_t sb_clock_ns(clockid_t id);

/* Growth from which an allocation always checks the deadline first, and
 * the size of a big block (sb_grow_big). */
#define SB_BIG_ALLOC 65536
/* Bytes the policy may allocate between two looks at the clock: the pages
 * of fresh memory fault on first use, and a fault costs up to 13 us in a
 * virtual machine (docs/sandbox.md, "Time"): a policy that allocates a lot
 * per tick would otherwise spend more than a tick's worth between checks.
 * A look costs 30 ns. */
#define SB_ALLOC_CHECK (16u << 10)
/* Pages touched between two looks at the clock when a big block is new. */
#define SB_TOUCH_PAGES 8
#define SB_PAGE 4096

/* ------------------------------------------------------------------------
 * The spare
 *
 * Past a fault the allocator grants rather than refuses ("Faults inside
 * compiled code" below), and what it grants must not cost time either.
 * Fresh memory does: each page faults on first use (13 us here), and a
 * table part or Lua stack grown once more past the deadline copied itself
 * into up to 256 fresh pages, so hostile runs ended up to 2 ms past their
 * limit, every millisecond of it in page faults after the deadline. So a
 * big growth granted past a fault takes first one of the big blocks the
 * state kept, then a spare block: SB_SPARES blocks of SB_OBJECT_MAX_RUN
 * bytes (the most one allocation may be while policy code runs) whose
 * pages were written when the sandbox first ran policy code, outside any
 * decision's budget, and which are never given back. A block is handed out
 * whole and comes back when Lua frees what it holds; what holds one may
 * live on (the Lua stack a deep recursion grew, a buffer of the JIT's
 * grown past the deadline), which pins that block only. With none free,
 * after the collector had a bounded chance to free one (sb_spare_reclaim,
 * after each faulted run), a grant is fresh memory as before, within the
 * overdraft (spare_misses counts them). A small growth is not worth a
 * block: it is at most 16 pages.
 * ------------------------------------------------------------------------ */

void sb_spare_open(nbx_sandbox *sb)
{
    for (int i = 0; i < SB_SPARES; i++) {
        if (sb->spare[i].p)
            continue;
        char *p = malloc(SB_OBJECT_MAX_RUN);
        if (!p)
            return;
        /* A write, not MADV_POPULATE_WRITE: on the machine measured, a
         * page populated that way still trapped on its first write. */
        for (size_t off = 0; off < SB_OBJECT_MAX_RUN; off += SB_PAGE)
            ((volatile char *)p)[off] = 0;
        sb->spare[i] = (struct sb_spare){.p = p, .used = false};
    }
}

void sb_spare_free(nbx_sandbox *sb)
{
    for (int i = 0; i < SB_SPARES; i++) {
        free(sb->spare[i].p);
        sb->spare[i].p = NULL;
    }
}

/* The spare block p is, or -1. */
static int sb_spare_of(const nbx_sandbox *sb, const void *p)
{
    for (int i = 0; i < SB_SPARES; i++)
        if (p && sb->spare[i].p == p)
            return i;
    return -1;
}

bool sb_spare_exhausted(const nbx_sandbox *sb)
{
    for (int i = 0; i < SB_SPARES; i++)
        if (sb->spare[i].p && !sb->spare[i].used)
            return false;
    return sb->spare[0].p != NULL;
}

/* Collect in steps until a spare block is free again, for at most
 * SB_SPARE_RECLAIM_NS: a full collection of a state that a hostile run
 * filled with small tables took 1.6 ms here, all of it in the faulted
 * decision's wait. A cycle that ends with every block still in use means
 * live data holds them: stop there. */
#define SB_SPARE_RECLAIM_NS 200000

void sb_spare_reclaim(nbx_sandbox *sb)
{
    int64_t until = sb_clock_ns(CLOCK_MONOTONIC) + SB_SPARE_RECLAIM_NS;
    while (sb_spare_exhausted(sb) && sb_clock_ns(CLOCK_MONOTONIC) < until)
        if (lua_gc(sb->L, LUA_GCSTEP, 64))
            break;
}

/* A free spare block for size bytes; NULL when none. */
static void *sb_spare_take(nbx_sandbox *sb, size_t size)
{
    for (int i = 0; size <= SB_OBJECT_MAX_RUN && i < SB_SPARES; i++) {
        if (sb->spare[i].p && !sb->spare[i].used) {
            sb->spare[i].used = true;
            sb->spare_grants++;
            return sb->spare[i].p;
        }
    }
    sb->spare_misses++;
    return NULL;
}

/* Is this growth a grant past a fault (sb_alloc_refused said yes to it)? */
static bool sb_granting(const nbx_sandbox *sb)
{
    return sb->in_policy && sb->L && (sb->timed_out || sb->mem_exceeded || sb->object_exceeded);
}

/* ------------------------------------------------------------------------
 * Big blocks
 *
 * A block of fresh memory is slow to fill the first time: every 4 KiB page
 * faults. On the (virtual) machine the sandbox was measured on a fault
 * costs 13 us, whatever prefaulting does (MADV_POPULATE_WRITE maps the
 * pages, yet the first write to each still traps), so growing a table part
 * to 512 KiB spent 1.7 ms in page faults inside one copy, and so did the
 * Lua stack of a deep recursion: timeouts fired up to 2 ms late. So a big
 * block comes from the blocks this state freed before, whose pages are
 * still mapped (a hostile policy that faults on every decision grows the
 * same blocks every time), or else is touched page by page with looks at
 * the clock in between, before anything is copied into it.
 * ------------------------------------------------------------------------ */

/* The smallest kept block of at least size bytes, taken out; NULL if none. */
static void *sb_block_take(nbx_sandbox *sb, size_t size)
{
    int best = -1;
    for (int i = 0; i < SB_BLOCKS; i++)
        if (sb->blocks[i].p && sb->blocks[i].size >= size &&
            (best < 0 || sb->blocks[i].size < sb->blocks[best].size))
            best = i;
    if (best < 0)
        return NULL;
    void *p = sb->blocks[best].p;
    sb->blocks_bytes -= sb->blocks[best].size;
    sb->blocks[best].p = NULL;
    return p;
}

/* Free a block, or keep it when it is big and there is room: a full cache
 * gives up its smallest block for a bigger one. A kept block is not the
 * policy's memory (its bytes left sb->used when Lua freed it); at most
 * SB_BLOCKS_BYTES a state. */
static void sb_release(nbx_sandbox *sb, void *p, size_t size)
{
    if (!p)
        return;
    int spare = sb_spare_of(sb, p);
    if (spare >= 0) {
        sb->spare[spare].used = false;
        return;
    }
    if (size >= SB_BIG_ALLOC && size <= SB_BLOCKS_BYTES) {
        int slot = -1, smallest = -1;
        for (int i = 0; i < SB_BLOCKS && slot < 0; i++) {
            if (!sb->blocks[i].p)
                slot = i;
            else if (smallest < 0 || sb->blocks[i].size < sb->blocks[smallest].size)
                smallest = i;
        }
        if (slot < 0 && sb->blocks[smallest].size < size) {
            free(sb->blocks[smallest].p);
            sb->blocks_bytes -= sb->blocks[smallest].size;
            sb->blocks[smallest].p = NULL;
            slot = smallest;
        }
        if (slot >= 0 && sb->blocks_bytes + size <= SB_BLOCKS_BYTES) {
            sb->blocks[slot] = (struct sb_block){.p = p, .size = size};
            sb->blocks_bytes += size;
            return;
        }
    }
    free(p);
}

/* Move ptr's osize bytes to p (when there is a p), releasing ptr. */
static void *sb_move(nbx_sandbox *sb, void *p, void *ptr, size_t osize)
{
    if (p && ptr) {
        memcpy(p, ptr, osize);
        sb_release(sb, ptr, osize);
    }
    return p;
}

void sb_blocks_free(nbx_sandbox *sb)
{
    for (int i = 0; i < SB_BLOCKS; i++) {
        free(sb->blocks[i].p);
        sb->blocks[i].p = NULL;
    }
    sb->blocks_bytes = 0;
}

/* Past the deadline: mark the run timed out and say so (the line is not
 * noted: see sb_alloc). cpu_now: read the CPU clock now even in the first
 * window, before work that may take long. */
static bool sb_alloc_late(nbx_sandbox *sb, bool cpu_now)
{
    if (sb->timed_out)
        return true;
    if (!(cpu_now ? sb_time_up_before_big_work(sb) : sb_time_up(sb)))
        return false;
    sb->timed_out = true;
    sb_publish_deadline(sb);
    return true;
}

/* Write to every page of a new block, looking at the clock every
 * SB_TOUCH_PAGES pages while policy code runs. Past a fault the block is
 * left as it is: it is a grant (the spare could not hold it), and touching
 * would cost the same faults. Returns the bytes mapped: less than size
 * when time ran out on the way. */
static size_t sb_touch(nbx_sandbox *sb, void *p, size_t size)
{
    volatile char *b = p;
    bool timed = sb->in_policy && sb->L;
    if (timed && sb_faulted(sb))
        return size;
    for (size_t off = 0, k = 1; off < size; off += SB_PAGE, k++) {
        b[off] = 0;
        if (timed && k % SB_TOUCH_PAGES == 0 && sb_alloc_late(sb, false))
            return off;
    }
    return size;
}

/* Grow ptr (osize bytes, or NULL) to a big block of nsize bytes: a kept
 * block, the spare past a fault, or a new one touched first. Time running
 * out while touching is a fault too: the growth is then granted if the
 * overdraft allows it ("Faults inside compiled code"), from the spare if
 * it fits, else as the new block is (its pages left fault only if used,
 * and the next tick ends the run). NULL with *late set: refused. */
static void *sb_grow_big(nbx_sandbox *sb, void *ptr, size_t osize, size_t nsize, bool *late)
{
    void *p = sb_block_take(sb, nsize);
    if (!p && sb_granting(sb))
        p = sb_spare_take(sb, nsize);
    if (!p) {
        p = malloc(nsize);
        if (!p)
            return NULL;
        size_t mapped = sb_touch(sb, p, nsize);
        if (mapped < nsize) {
            /* The part already mapped is kept as a block, which the next
             * big allocation can then have without faults. */
            if (!sb_overdraw(sb, nsize)) {
                sb_release(sb, p, mapped);
                *late = true;
                return NULL;
            }
            void *q = sb_spare_take(sb, nsize);
            if (q) {
                sb_release(sb, p, mapped);
                p = q;
            }
        }
    }
    return sb_move(sb, p, ptr, osize);
}

/* ------------------------------------------------------------------------
 * Faults inside compiled code
 *
 * An allocation refused while a trace runs (a table grown by compiled
 * code: lj_tab_newkey -> lj_tab_resize -> lj_mem_realloc) raises through
 * lj_err_mem, which reads the current function from L->base. Inside a
 * trace L->base is stale (only G->jit_base is kept), and Debian 12's
 * libluajit-5.1-2 has the line that reads it (upstream ca8d3257, "Ensure
 * correct stack top for OOM error message") without the fix that sets
 * L->base from jit_base first (upstream 2d8300c1, "Fix frame for on-trace
 * out-of-memory error"): it follows whatever the stale slot holds and
 * crashes (docs/sandbox.md, "Facts"). So while policy code runs, a limit
 * broken by an allocation is marked, not refused: the allocation is
 * granted, the deadline is published as passed, and the next tick calls
 * sb_tick_check, a C function, which raises the fault: a safe point. What
 * the policy allocates between the fault and that tick is bounded by
 * SB_OVERDRAFT; past it the allocator refuses, as the last resort.
 * ------------------------------------------------------------------------ */

static bool sb_faulted(const nbx_sandbox *sb)
{
    return sb->timed_out || sb->mem_exceeded || sb->object_exceeded;
}

/* A memory limit broke (flag: which one): let the next tick raise it. */
static void sb_mark_fault(nbx_sandbox *sb, bool *flag, size_t size)
{
    if (!sb->mem_exceeded && !sb->object_exceeded)
        sb->refused = size;
    *flag = true;
    sb_publish_deadline(sb);
}

/* Grant grow bytes past a fault while policy code runs, within
 * SB_OVERDRAFT; false: refuse. */
static bool sb_overdraw(nbx_sandbox *sb, size_t grow)
{
    if (!sb->in_policy || !sb->L)
        return false;
    size_t most = sb->mem_exceeded || sb->object_exceeded ? SB_OVERDRAFT : SB_OVERDRAFT_LATE;
    if (grow > most - sb->overdraft) {
        sb->overdrawn++;
        return false;
    }
    sb->overdraft += grow;
    return true;
}

/* ------------------------------------------------------------------------
 * The allocator
 * ------------------------------------------------------------------------ */

/* Which limit growing to nsize breaks, marked: false when none does or
 * the growth may be granted past the fault ("Faults inside compiled
 * code"), true to refuse. The allocator never reads the Lua stack (to note
 * the policy's line): an allocation may come from compiled code, whose
 * frames exist only once it exits to the interpreter, and reading them
 * before crashed LuaJIT (lua_getinfo on a frame a trace had not written,
 * in a 50 ms hostile run growing tables). A fault found here is located at
 * the definition of the function being run (nbx_sandbox_run), or by the
 * next tick. */
static bool sb_alloc_refused(nbx_sandbox *sb, size_t grow, size_t nsize)
{
    bool policy = sb->in_policy && sb->L;
    if (sb->used > sb->limit_abs || grow > sb->limit_abs - sb->used)
        sb_mark_fault(sb, &sb->mem_exceeded, nsize);
    else if (policy && nsize > sb->object_max)
        sb_mark_fault(sb, &sb->object_exceeded, nsize);
    /* Allocating is work: it looks at the clock as the policy allocates
     * (SB_ALLOC_CHECK), and before a big allocation, which one C call is
     * about to fill. */
    if (policy && !sb->timed_out) {
        bool big = grow >= SB_BIG_ALLOC;
        if (big || grow >= sb->alloc_credit) {
            sb->alloc_credit = SB_ALLOC_CHECK;
            if (!sb_alloc_late(sb, big) && !(sb->limits.flags & NBX_LIMITS_NO_DEADLINE))
                sb->deadline[2] = sb_units_max(sb);
        } else {
            sb->alloc_credit -= grow;
        }
    }
    /* Once policy code has returned, a timeout no longer stops the
     * engine's own work (reading the log, recovering). */
    bool faulted = sb->mem_exceeded || sb->object_exceeded || (policy && sb->timed_out);
    return faulted && !sb_overdraw(sb, grow);
}

/* Lua's allocator contract: nsize 0 frees; shrinking never fails. LuaJIT
 * raises "not enough memory" without trying an emergency collection first,
 * so sandbox.c collects between decisions. A fault is sticky for the rest
 * of the run: a policy that catches the error cannot go on allocating. */
void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    nbx_sandbox *sb = ud;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        sb_release(sb, ptr, osize);
        sb->used -= osize;
        return NULL;
    }
    if (nsize > osize && sb_alloc_refused(sb, nsize - osize, nsize))
        return NULL;
    bool late = false, spare = sb_spare_of(sb, ptr) >= 0;
    void *p;
    if (spare && nsize <= SB_OBJECT_MAX_RUN)
        p = ptr; /* a spare block is whole: it grows and shrinks in place */
    else if (nsize >= SB_BIG_ALLOC && nsize > osize)
        p = sb_grow_big(sb, ptr, osize, nsize, &late);
    else if (spare) /* copied out: realloc would give the block itself back */
        p = sb_move(sb, malloc(nsize), ptr, osize);
    else
        p = realloc(ptr, nsize);
    if (!p) {
        if (nsize <= osize)
            return ptr;
        if (!late)
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

/* The most units one grant gives: SB_TICK_MAX, or fewer near the memory
 * limit, so that a policy that allocates at every unit meets its next tick
 * (which raises a memory fault) within SB_OVERDRAFT of the limit. */
static double sb_units_max(const nbx_sandbox *sb)
{
    if (!sb->in_policy || sb->used >= sb->limit_abs)
        return SB_TICK_MIN;
    double units = (double)((sb->limit_abs - sb->used) / SB_UNIT_WORST_BYTES);
    if (units < SB_TICK_MIN)
        units = SB_TICK_MIN;
    return units < SB_TICK_MAX ? units : SB_TICK_MAX;
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
    double most = sb_units_max(sb);
    return units < most ? units : most;
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
    } else if (sb_faulted(sb) || sb->wall_check == INT64_MAX) {
        d[0] = -HUGE_VAL; /* C decides: raise the fault, or no run is on */
    } else {
        d[0] = (double)sb->wall_check;
        d[1] = sb->cpu_mode ? (double)sb->wall_check : (double)(sb->wall_start + sb->budget_ns);
        d[2] = sb_units_max(sb);
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
    sb->alloc_credit = SB_ALLOC_CHECK;
    sb->overdraft = 0;
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

/* sb_time_up, with the CPU clock read now even within the first window:
 * the start of a run is charged as wall time only up to twice the window,
 * so work that may take long (a big allocation) must not fall into it
 * unmeasured. One system call, against the tens of microseconds such an
 * allocation costs. */
static bool sb_time_up_before_big_work(nbx_sandbox *sb)
{
    if (!sb->cpu_mode && sb->wall_check != INT64_MAX)
        sb->wall_check = INT64_MIN;
    return sb_time_up(sb);
}

/* Raise once time is up, and from then on at every check: a pcall cannot
 * swallow it (sb_pcall raises it again too). Also a memory fault the
 * allocator marked: this is the safe point it waits for. */
void sb_check_time(lua_State *L, nbx_sandbox *sb)
{
    if (NBX_UNLIKELY(sb->mem_exceeded || sb->object_exceeded)) {
        sb_push_slot(L, SLOT_MSG_MEMORY);
        lua_error(L);
    }
    if (!sb->timed_out) {
        if (NBX_LIKELY(!sb_time_up(sb)))
            return;
        sb->timed_out = true;
        sb_publish_deadline(sb);
    }
    /* Also when the allocator found the deadline: it cannot read the
     * stack, this check (called from the interpreter) can. */
    if (!sb->recorded)
        sb_note_where(sb, L, 0);
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
