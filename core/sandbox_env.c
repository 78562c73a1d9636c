/*
 * sandbox_env.c: what a policy may reach.
 *
 * An allow-list: a frozen global environment with a few base functions,
 * math (deterministic random), a safe subset of string and table, and the
 * nbx helpers; inputs, libraries and catalog values are read-only proxies.
 * Once the policy's top level has run, every table it built is frozen in
 * place (sb_freeze), so nothing a decision does can outlive it: no customer's
 * data can reach the next customer's decision.
 *
 * A decision must be reproducible, so nothing a policy sees may depend on
 * the process: iteration (next, pairs) goes in a canonical key order rather
 * than LuaJIT's hash order (string hashes are seeded per state), and
 * tostring never shows an address.
 */
#include "detmath.h"
#include "sandbox_int.h"

#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sandbox_lua.h"

#define SB_PCALL_DEPTH_MAX 64

/* ========================================================================
 * Read-only proxies
 *
 * A proxy is an empty table with a metatable whose __newindex raises.
 * Policies cannot set metatables, so any table with one is ours. DATA maps
 * every proxy to the table behind it: what next, pairs, ipairs, unpack and
 * # see (LuaJIT's 5.1 mode has no __pairs or __len). ORDER caches the
 * canonical key order of proxies whose data never changes (frozen tables,
 * catalog values): false until first asked for; absent for input tables,
 * which are refilled every decision.
 * ======================================================================== */

/* Map the proxy at proxy to the data at data in DATA (and mark its order
 * cacheable in ORDER when constant). */
static void sb_register_proxy(lua_State *L, int slots, int proxy, int data, bool constant)
{
    sb_slot_get(L, slots, SLOT_DATA);
    lua_pushvalue(L, proxy);
    lua_pushvalue(L, data);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    if (constant) {
        sb_slot_get(L, slots, SLOT_ORDER);
        lua_pushvalue(L, proxy);
        lua_pushboolean(L, 0);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
}

static void sb_proxy_with(lua_State *L, int slots, bool constant)
{
    int data = lua_gettop(L);
    lua_createtable(L, 0, 0);
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, data);
    lua_setfield(L, -2, "__index");
    sb_slot_get(L, slots, SLOT_READONLY);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    sb_register_proxy(L, slots, lua_gettop(L), data, constant);
    lua_replace(L, data);
}

void sb_make_proxy(lua_State *L, int slots)
{
    sb_proxy_with(L, slots, false);
}

void sb_make_constant_proxy(lua_State *L, int slots)
{
    sb_proxy_with(L, slots, true);
}

/* Replace the value at idx by its data if it is a proxy. */
static bool sb_unwrap(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return false;
    lua_pop(L, 1);
    sb_push_slot(L, SLOT_DATA);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
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

#define SB_FROZEN_WHY                                                                              \
    "a table built when the policy loaded (such tables are read-only in decisions, so no "         \
    "decision can leave state for the next one; build a new table inside the function)"

/* Raise "attempt to <what> <table>" for the engine's table at idx. */
static int sb_raise_read_only(lua_State *L, int level, int idx, const char *what)
{
    bool frozen = false;
    if (lua_getmetatable(L, idx)) {
        sb_push_slot(L, SLOT_FROZEN_MT);
        frozen = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    return sb_raise(L, level, "attempt to %s %s", what,
                    frozen ? SB_FROZEN_WHY : "a read-only table");
}

static int sb_frozen_write(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING)
        return sb_raise(L, 1, "attempt to write field '%.64s' of " SB_FROZEN_WHY,
                        lua_tostring(L, 2));
    return sb_raise(L, 1, "attempt to write to " SB_FROZEN_WHY);
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

/* ========================================================================
 * Reproducible iteration
 *
 * The canonical order of keys: numbers ascending, then strings bytewise
 * (shorter first on a common prefix), then false, then true. Tables and
 * functions have no order that survives the process (only addresses), so a
 * table keyed by them cannot be iterated.
 * ======================================================================== */

typedef struct sb_key {
    int rank; /* 0 number, 1 string, 2 boolean */
    double num;
    const char *str;
    size_t len;
} sb_key;

static int sb_key_cmp(const void *a, const void *b)
{
    const sb_key *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    if (x->rank == 1) {
        size_t n = x->len < y->len ? x->len : y->len;
        int c = memcmp(x->str, y->str, n);
        if (c)
            return c;
        return x->len < y->len ? -1 : x->len > y->len;
    }
    return x->num < y->num ? -1 : x->num > y->num;
}

/* The key at idx as an sb_key; raises for keys without a canonical order. */
static void sb_key_of(lua_State *L, int idx, sb_key *k)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        k->rank = 0;
        k->num = lua_tonumber(L, idx);
        return;
    case LUA_TSTRING:
        k->rank = 1;
        k->str = lua_tolstring(L, idx, &k->len);
        return;
    case LUA_TBOOLEAN:
        k->rank = 2;
        k->num = lua_toboolean(L, idx);
        return;
    default:
        sb_raise(L, 2,
                 "cannot iterate a table keyed by a %s value: the order of such keys differs "
                 "between runs, so decisions would not be reproducible (key by strings or numbers)",
                 luaL_typename(L, idx));
    }
}

static void sb_push_key(lua_State *L, const sb_key *k)
{
    if (k->rank == 0)
        lua_pushnumber(L, k->num);
    else if (k->rank == 1)
        lua_pushlstring(L, k->str, k->len);
    else
        lua_pushboolean(L, k->num != 0);
}

/* Push an array of the keys of the table at t (a data table, not a proxy)
 * in canonical order. The sort's scratch is a userdata, so the memory
 * limit counts it and an error cannot leak it. Sorting checks the clock:
 * a table built in a decision can be large. */
static void sb_sorted_keys(lua_State *L, int t)
{
    nbx_sandbox *sb = sb_of(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
    }
    sb_key *keys = lua_newuserdata(L, (n ? n : 1) * sizeof *keys);
    int scratch = lua_gettop(L);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        sb_key_of(L, -1, &keys[i++]);
    }
    if (n > 4096 && sb->in_policy)
        sb_check_time(L, sb);
    qsort(keys, n, sizeof *keys, sb_key_cmp);
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        sb_push_key(L, &keys[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_remove(L, scratch);
}

/* The canonical key order of the table at idx (a table or a proxy), cached
 * where the table never changes; leaves the data table at idx. */
static void sb_push_order(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx)) {
        sb_sorted_keys(L, idx);
        return;
    }
    lua_pop(L, 1);
    sb_push_slot(L, SLOT_ORDER);
    int order = lua_gettop(L);
    lua_pushvalue(L, idx);
    lua_rawget(L, order);
    int cached = lua_type(L, -1);
    lua_pop(L, 1);
    if (cached == LUA_TTABLE) {
        lua_pushvalue(L, idx);
        lua_rawget(L, order);
        sb_unwrap(L, idx);
        lua_remove(L, order);
        return;
    }
    lua_pushvalue(L, idx); /* the proxy, for the cache's key */
    sb_unwrap(L, idx);
    sb_sorted_keys(L, idx);
    if (cached == LUA_TBOOLEAN) {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, order);
    }
    lua_remove(L, -2);
    lua_remove(L, order);
}

/* sandbox.lua's order(t): a fresh array of t's keys (a table or a proxy)
 * in canonical order, for pairs(). A copy, so the policy can do what it
 * likes with it: the cached order of a frozen table stays the same. */
static int sb_order(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    sb_push_order(L, 1);
    int keys = lua_gettop(L);
    size_t n = lua_objlen(L, keys);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, keys, (int)i);
        lua_rawseti(L, -2, (int)i);
    }
    return 1;
}

/* next() in the canonical order: next(t) is the smallest key, next(t, k)
 * the smallest above k. Without an order at hand that is a scan of the
 * table per call (pairs() sorts once per loop; iterate with pairs). */
static int sb_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    sb_unwrap(L, 1);
    bool first = lua_isnil(L, 2);
    sb_key after = {0};
    if (!first)
        sb_key_of(L, 2, &after);
    sb_key best = {0};
    bool found = false;
    size_t scanned = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        sb_key k;
        sb_key_of(L, -1, &k);
        if ((first || sb_key_cmp(&k, &after) > 0) && (!found || sb_key_cmp(&k, &best) < 0)) {
            best = k;
            found = true;
        }
        if ((++scanned & 4095) == 0)
            sb_check_time(L, sb_of(L));
    }
    if (!found) {
        if (!first) {
            lua_pushvalue(L, 2);
            lua_rawget(L, 1);
            if (lua_isnil(L, -1))
                return luaL_error(L, "invalid key to 'next'");
        }
        lua_pushnil(L);
        return 1;
    }
    sb_push_key(L, &best);
    lua_pushvalue(L, -1);
    lua_rawget(L, 1);
    return 2;
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

/* ========================================================================
 * table.*: concat on the data behind a proxy, bounded results; insert and
 * remove only on the policy's own tables and only within them
 * ======================================================================== */

/* table.concat(t [, sep [, i [, j]]]) over the data behind a proxy,
 * stopping as soon as the result passes SB_STRING_MAX: the work is bounded
 * by the result, not by the table (a concat of 100,000 numbers would build
 * a megabyte before the limit could be checked). */
static int sb_concat(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_unwrap(L, 1);
    size_t lsep;
    const char *sep = luaL_optlstring(L, 2, "", &lsep);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    lua_Integer j = lua_isnoneornil(L, 4) ? (lua_Integer)lua_objlen(L, 1) : luaL_checkinteger(L, 4);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t total = 0;
    for (lua_Integer k = i; k <= j; k++) {
        lua_rawgeti(L, 1, (int)k);
        if (!lua_isstring(L, -1))
            return luaL_error(L, "invalid value (at index %d) in table for 'concat'", (int)k);
        size_t n = lua_objlen(L, -1);
        total += n + (k < j ? lsep : 0);
        if (total > SB_STRING_MAX)
            return sb_raise_too_big(L, "table.concat's result", (double)total, SB_STRING_MAX);
        luaL_addvalue(&b);
        if (k < j)
            luaL_addlstring(&b, sep, lsep);
        if (k == INT32_MAX)
            break;
    }
    luaL_pushresult(&b);
    return 1;
}

/* table.insert and table.remove write raw, which would bypass a proxy's
 * __newindex and change an input for every later decision. A position
 * outside 1..#t+1 is refused: LuaJIT's shifts elements one by one towards
 * it, in C, so table.insert({}, -2^31, x) ran for 16 seconds. */
static int sb_table_mutator(lua_State *L, bool insert)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getmetatable(L, 1)) {
        lua_pop(L, 1);
        return sb_raise_read_only(L, 1, 1, "modify");
    }
    int nargs = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_objlen(L, 1);
    if (insert && nargs != 2 && nargs != 3)
        return sb_raise(L, 1, "wrong number of arguments to 'insert'");
    int pos_arg = insert ? (nargs == 3 ? 2 : 0) : (nargs >= 2 ? 2 : 0);
    if (pos_arg) {
        lua_Integer pos = luaL_checkinteger(L, pos_arg);
        lua_Integer hi = insert ? n + 1 : (n > 0 ? n + 1 : 1);
        if (pos < 1 || pos > hi)
            return sb_raise(L, 1, "bad argument #2 to '%s' (position out of bounds)",
                            insert ? "insert" : "remove");
        /* A long shift runs in C, where no tick can stop it: look at the
         * clock before it starts. */
        if (n - pos > 4096)
            sb_check_time(L, sb_of(L));
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, nargs, LUA_MULTRET);
    return lua_gettop(L);
}

static int sb_table_insert(lua_State *L)
{
    return sb_table_mutator(L, true);
}

static int sb_table_remove(lua_State *L)
{
    return sb_table_mutator(L, false);
}

/* For the Lua sort: a writable table and an optional comparator; its length. */
static int sb_check_sortable(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TTABLE)
        return sb_raise(L, 2, "bad argument #1 to 'sort' (table expected, got %s)",
                        luaL_typename(L, 1));
    if (lua_getmetatable(L, 1)) {
        lua_pop(L, 1);
        return sb_raise_read_only(L, 2, 1, "sort");
    }
    if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION)
        return sb_raise(L, 2, "bad argument #2 to 'sort' (function expected, got %s)",
                        luaL_typename(L, 2));
    lua_pushinteger(L, (lua_Integer)lua_objlen(L, 1));
    return 1;
}

/* ========================================================================
 * Other functions given to policies
 * ======================================================================== */

/* The policy's pcall. A limit fault is not the policy's to handle: it is
 * raised again as soon as the protected call returns. Nesting is capped:
 * each level is a C frame (bounded recursion through C), and when a timeout
 * unwinds, each level costs a throw, so 64 levels bound that too. */
static int sb_pcall(lua_State *L)
{
    nbx_sandbox *sb = sb_of(L);
    luaL_checkany(L, 1);
    if (sb->pcall_depth >= SB_PCALL_DEPTH_MAX)
        return sb_raise(L, 1, "pcall nested more than %d deep", SB_PCALL_DEPTH_MAX);
    sb->pcall_depth++;
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    sb->pcall_depth--;
    if (NBX_UNLIKELY(sb->timed_out || sb->mem_exceeded || sb->object_exceeded)) {
        sb_push_slot(L, sb->timed_out ? SLOT_MSG_TIMEOUT : SLOT_MSG_MEMORY);
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

/* sandbox.lua's too_long(what, size): a string over SB_STRING_MAX. */
static int sb_too_long(lua_State *L)
{
    const char *what = luaL_checkstring(L, 1);
    return sb_raise_too_big(L, what, luaL_checknumber(L, 2), SB_STRING_MAX);
}

/* string.format's %p prints an address: refused, decisions must not depend
 * on where the allocator put things. */
static int sb_check_format(lua_State *L)
{
    size_t n;
    const char *f = luaL_checklstring(L, 1, &n);
    for (size_t i = 0; i + 1 < n; i++) {
        if (f[i] != '%')
            continue;
        size_t j = i + 1;
        if (f[j] == '%') {
            i = j;
            continue;
        }
        while (j < n && strchr("-+ #0123456789.", f[j]))
            j++;
        if (j < n && f[j] == 'p')
            return sb_raise(L, 2,
                            "string.format: '%%p' prints an address, which differs "
                            "between runs; it is not available to policies");
        i = j;
    }
    return 0;
}

static int sb_raise_len(lua_State *L)
{
    return sb_raise(L, 2, "attempt to get length of a %s value", luaL_checkstring(L, 1));
}

/* ========================================================================
 * Building a state
 * ======================================================================== */

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

/* nbx.log()'s prefix: "file.lua:LINE:" of the policy line that called it
 * (nbx.log is level 1, its caller level 2). */
static int sb_log_where(lua_State *L)
{
    nbx_sandbox *sb = sb_of(L);
    char where[256];
    sb_policy_where_at(sb, L, 1, where, sizeof where);
    lua_pushstring(L, where[0] ? where : sb->policy->chunkname + 1);
    return 1;
}

static void sb_set_cfunction(lua_State *L, int t, const char *name, lua_CFunction fn)
{
    lua_pushcfunction(L, fn);
    lua_setfield(L, t, name);
}

/* LuaJIT's own math functions where every machine computes the same bits
 * (IEEE-exact operations); the rest are detmath.c's (sb_push_detmath). */
static const char *const sb_math_names[] = {"abs",   "ceil", "deg",   "floor", "fmod",
                                            "frexp", "huge", "ldexp", "max",   "min",
                                            "modf",  "pi",   "rad",   "sqrt",  NULL};
static const char *const sb_detmath_names[] = {"acos", "asin", "atan", "atan2", "cos",
                                               "cosh", "exp",  "log",  "log10", "pow",
                                               "sin",  "sinh", "tan",  "tanh",  NULL};

typedef double (*sb_unary_fn)(double);
typedef double (*sb_binary_fn)(double, double);

static const struct {
    const char *name;
    sb_unary_fn fn;
} sb_detmath_unary[] = {
    {"exp", nbx_detmath_exp},   {"log", nbx_detmath_log},   {"log10", nbx_detmath_log10},
    {"sin", nbx_detmath_sin},   {"cos", nbx_detmath_cos},   {"tan", nbx_detmath_tan},
    {"asin", nbx_detmath_asin}, {"acos", nbx_detmath_acos}, {"atan", nbx_detmath_atan},
    {"sinh", nbx_detmath_sinh}, {"cosh", nbx_detmath_cosh}, {"tanh", nbx_detmath_tanh},
};

static const struct {
    const char *name;
    sb_binary_fn fn;
} sb_detmath_binary[] = {
    {"pow", nbx_detmath_pow}, {"atan2", nbx_detmath_atan2}, {"log_base", nbx_detmath_log_base}};

/* ffi.cast(type, p) */
static void sb_push_cast(lua_State *L, int slots, const char *type, void *p)
{
    sb_slot_get(L, slots, SLOT_CAST);
    lua_pushstring(L, type);
    lua_pushlightuserdata(L, p);
    lua_call(L, 2, 1);
}

/* detmath.c's functions as FFI function pointers, for sandbox.lua: compiled
 * code calls a cdata function directly, where calling a lua_CFunction ends
 * the trace. Only sandbox.lua holds them; policies get its wrappers. */
static void sb_push_detmath(lua_State *L, int slots)
{
    size_t n_unary = sizeof sb_detmath_unary / sizeof sb_detmath_unary[0];
    size_t n_binary = sizeof sb_detmath_binary / sizeof sb_detmath_binary[0];
    lua_createtable(L, 0, (int)(n_unary + n_binary));
    for (size_t i = 0; i < n_unary; i++) {
        sb_push_cast(L, slots, "double (*)(double)", (void *)sb_detmath_unary[i].fn);
        lua_setfield(L, -2, sb_detmath_unary[i].name);
    }
    for (size_t i = 0; i < n_binary; i++) {
        sb_push_cast(L, slots, "double (*)(double, double)", (void *)sb_detmath_binary[i].fn);
        lua_setfield(L, -2, sb_detmath_binary[i].name);
    }
}
/* string.find/match/gmatch/gsub come from lpattern.c, rep and format from
 * sandbox.lua (bounded); dump never. The rest work in O(length) of strings
 * no longer than SB_STRING_MAX. */
static const char *const sb_string_names[] = {"byte",    "char", "len",   "lower",
                                              "reverse", "sub",  "upper", NULL};
static const char *const sb_base_names[] = {"type", "tonumber", "select", "error", "assert", NULL};

/* The helpers chunk (sandbox.lua) under its own environment, handed the
 * natives it needs; leaves the table it returns on the stack. */
static int sb_load_helpers(lua_State *L, int slots, int G, int native_string)
{
    lua_createtable(L, 0, 24);
    int natives = lua_gettop(L);
    sb_copy_fields(
        L, natives, G,
        (const char *const[]){"type", "select", "error", "tostring", "tonumber", "unpack", NULL});
    lua_getfield(L, native_string, "rep");
    lua_setfield(L, natives, "rep");
    lua_getfield(L, native_string, "format");
    lua_setfield(L, natives, "format");
    lua_getfield(L, native_string, "find");
    lua_setfield(L, natives, "find");
    sb_set_cfunction(L, natives, "check_sortable", sb_check_sortable);
    sb_set_cfunction(L, natives, "order", sb_order);
    sb_set_cfunction(L, natives, "too_long", sb_too_long);
    sb_set_cfunction(L, natives, "check_format", sb_check_format);
    sb_set_cfunction(L, natives, "raise_len", sb_raise_len);
    lua_pushnumber(L, SB_STRING_MAX);
    lua_setfield(L, natives, "string_max");
    lua_getfield(L, native_string, "sub");
    lua_setfield(L, natives, "sub");
    sb_set_cfunction(L, natives, "where", sb_log_where);
    sb_slot_get(L, slots, SLOT_LOG);
    lua_setfield(L, natives, "log");
    lua_pushnumber(L, SB_LOG_LINES);
    lua_setfield(L, natives, "log_lines");
    lua_pushnumber(L, SB_LOG_LINE_MAX);
    lua_setfield(L, natives, "log_line_max");
    sb_slot_get(L, slots, SLOT_DATA);
    lua_setfield(L, natives, "data");
    sb_slot_get(L, slots, SLOT_TICKS);
    lua_setfield(L, natives, "ticks");
    sb_slot_get(L, slots, SLOT_TICKS);
    lua_pushcclosure(L, sb_tick_check, 1);
    lua_setfield(L, natives, "check");
    sb_slot_get(L, slots, SLOT_FFI);
    lua_setfield(L, natives, "ffi");
    sb_push_cast(L, slots, "double *", sb_of(L)->deadline);
    lua_setfield(L, natives, "deadline");
    sb_push_detmath(L, slots);
    lua_setfield(L, natives, "detmath");
    lua_pushnumber(L, CLOCK_MONOTONIC);
    lua_setfield(L, natives, "clock_monotonic");
    lua_pushnumber(L, SB_UNIT_WORST_NS);
    lua_setfield(L, natives, "unit_ns");
    lua_pushnumber(L, SB_TICK_MIN);
    lua_setfield(L, natives, "tick_min");
    if (luaL_loadbuffer(L, nbx_sandbox_lua, nbx_sandbox_lua_len, "=nbx") != 0)
        return lua_error(L);
    lua_createtable(L, 0, 0);
    lua_setfenv(L, -2);
    lua_pushvalue(L, natives);
    lua_call(L, 1, 1);
    lua_remove(L, natives);
    return lua_gettop(L);
}

/* D, what policy globals resolve to: the allow-list. */
static int sb_build_globals(lua_State *L, int slots, int G, int lib, int native_math,
                            int native_string, int native_table)
{
    nbx_sandbox *sb = sb_of(L);
    lua_createtable(L, 0, 32);
    int D = lua_gettop(L);
    sb_copy_fields(L, D, G, sb_base_names);
    sb_copy_fields(L, D, lib, (const char *const[]){"tostring", NULL});
    sb_set_cfunction(L, D, "next", sb_next);
    sb_copy_fields(L, D, lib, (const char *const[]){"pairs", "ipairs", NULL});
    sb_set_cfunction(L, D, "unpack", sb_unpack);
    sb_set_cfunction(L, D, "pcall", sb_pcall);

    lua_createtable(L, 0, 32);
    sb_copy_fields(L, lua_gettop(L), native_math, sb_math_names);
    lua_getfield(L, lib, "math");
    sb_copy_fields(L, lua_gettop(L) - 1, lua_gettop(L), sb_detmath_names);
    lua_pop(L, 1);
    sb_set_cfunction(L, lua_gettop(L), "random", sb_random);
    sb_make_proxy(L, slots);
    lua_setfield(L, D, "math");

    /* The safe string table is also the strings' __index, so ("x"):rep()
     * works; getmetatable('').__index can no longer reach LuaJIT's own. */
    lua_createtable(L, 0, 16);
    int str = lua_gettop(L);
    sb_copy_fields(L, str, native_string, sb_string_names);
    sb_copy_fields(L, str, lib, (const char *const[]){"rep", "format", NULL});
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
    sb_set_cfunction(L, lua_gettop(L), "concat", sb_concat);
    lua_getfield(L, native_table, "insert");
    lua_pushcclosure(L, sb_table_insert, 1);
    lua_setfield(L, -2, "insert");
    lua_getfield(L, native_table, "remove");
    lua_pushcclosure(L, sb_table_remove, 1);
    lua_setfield(L, -2, "remove");
    lua_getfield(L, lib, "sort");
    lua_setfield(L, -2, "sort");
    sb_make_proxy(L, slots);
    lua_setfield(L, D, "table");

    lua_createtable(L, 0, 8);
    sb_copy_fields(L, lua_gettop(L), lib,
                   (const char *const[]){"propensity", "expected_margin", "expected_margin_score",
                                         "clamp", "days_since", "contains", "log", NULL});
    sb_set_cfunction(L, lua_gettop(L), "len", sb_len);
    sb_make_proxy(L, slots);
    lua_setfield(L, D, "nbx");

    /* What instrumented code calls (lsource.c's prologue reads these five
     * globals into locals; a policy can never name them). */
    sb_slot_get(L, slots, SLOT_TICKS);
    lua_setfield(L, D, "__nbx_s");
    lua_getfield(L, lib, "tick_check");
    lua_setfield(L, D, "__nbx_t");
    sb_copy_fields(L, D, lib, (const char *const[]){"len", "cat", NULL});
    lua_getfield(L, D, "len");
    lua_setfield(L, D, "__nbx_len");
    lua_getfield(L, D, "cat");
    lua_setfield(L, D, "__nbx_cat");
    lua_getfield(L, lib, "pow_op");
    lua_setfield(L, D, "__nbx_pow");
    lua_pushnil(L);
    lua_setfield(L, D, "len");
    lua_pushnil(L);
    lua_setfield(L, D, "cat");
    (void)native_table;
    return D;
}

/* E: the policy's environment, always empty. Reads fall through to D;
 * while the chunk loads, writes land in D; then E is frozen (sandbox.c). */
static void sb_build_env(lua_State *L, int slots, int D)
{
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

static void sb_build_inputs(lua_State *L, int slots)
{
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
    static const char *const zero[] = {"impressions", "clicks", "accepts", "dismisses"};
    for (size_t i = 0; i < NBX_ARRAY_LEN(zero); i++) {
        lua_pushnumber(L, 0);
        lua_setfield(L, -2, zero[i]);
    }
    lua_pop(L, 1);
    sb_input_table(L, slots, SLOT_SESS, 0, 8);
    sb_slot_set(L, slots, SLOT_SESSION);

    lua_createtable(L, 128, 0);
    sb_slot_set(L, slots, SLOT_R);
    lua_createtable(L, 2, 0);
    sb_slot_set(L, slots, SLOT_BAD);
    lua_createtable(L, 0, 8);
    sb_slot_set(L, slots, SLOT_ARRAYS);
    lua_createtable(L, 2, 0);
    sb_slot_set(L, slots, SLOT_ST);
}

/* Compiling costs time inside decisions, and code that keeps leaving its
 * traces (calls into C, many types) makes LuaJIT compile side trace after
 * side trace: a policy calling many builtins per candidate ran 10 to 50
 * times slower compiled than interpreted with the defaults, and its first
 * decisions timed out. So traces start later and branch less (a loop is
 * compiled after 200 iterations rather than 56, an exit after 100 rather
 * than 10, at most 10 side traces per trace rather than 100): hot, regular
 * code such as a scoring loop still compiles within the first decisions. */
static void sb_tune_jit(lua_State *L)
{
    lua_getglobal(L, "jit");
    lua_getfield(L, -1, "opt");
    lua_getfield(L, -1, "start");
    lua_pushliteral(L, "hotloop=200");
    lua_pushliteral(L, "hotexit=100");
    lua_pushliteral(L, "maxside=10");
    lua_call(L, 3, 0);
    lua_pop(L, 2);
}

/* The engine's part of a state (sandbox.c, sb_build_state): libraries, the
 * slots, the helpers, the policy's globals and environment, the input
 * tables; the catalog's tables come next (sandbox_io.c), then
 * sb_env_finish(). Leaves the slot table at 1 and returns its index. */
int sb_env_build(lua_State *L, nbx_sandbox *sb)
{
    lua_settop(L, 0);
    sb_open_lib(L, luaopen_base, "");
    sb_open_lib(L, luaopen_math, LUA_MATHLIBNAME);
    sb_open_lib(L, luaopen_string, LUA_STRLIBNAME);
    sb_open_lib(L, luaopen_table, LUA_TABLIBNAME);
    /* Opening the jit library is what switches the compiler on (and detects
     * the CPU's features); its `jit` global is dropped below with the other
     * functions a policy must never reach. */
    if (!(sb->limits.flags & NBX_LIMITS_NO_JIT)) {
        sb_open_lib(L, luaopen_jit, LUA_JITLIBNAME);
        sb_tune_jit(L);
    }
    /* The FFI, for the engine's own chunk alone: ffi.cast makes the pointers
     * through which the driver and C share per-candidate arrays (struct
     * sb_shared). The library table is not a global (luaopen_ffi returns
     * it) and is dropped here; policies cannot write cdata literals
     * (lsource.c refuses them), so no policy value is ever cdata. */
    lua_pushcfunction(L, luaopen_ffi);
    lua_pushliteral(L, LUA_FFILIBNAME);
    lua_call(L, 1, 1);
    int ffi = lua_gettop(L);

    lua_createtable(L, SLOT_COUNT, 0);
    int slots = lua_gettop(L);
    lua_pushvalue(L, slots);
    sb->ref_slots = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, ffi, "cast");
    sb_slot_set(L, slots, SLOT_CAST);
    lua_pushvalue(L, ffi);
    sb_slot_set(L, slots, SLOT_FFI);
    lua_remove(L, ffi);
    slots = lua_gettop(L); /* 1 */

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
    lua_createtable(L, 0, 64);
    sb_slot_set(L, slots, SLOT_DATA);
    lua_createtable(L, 0, 64);
    sb_slot_set(L, slots, SLOT_ORDER);
    lua_createtable(L, 1, 0);
    lua_pushnumber(L, SB_TICK_MIN);
    lua_rawseti(L, -2, 1);
    sb_slot_set(L, slots, SLOT_TICKS);
    lua_createtable(L, SB_LOG_LINES, 3);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "on");
    lua_pushnumber(L, 0);
    lua_setfield(L, -2, "n");
    lua_pushnumber(L, 0);
    lua_setfield(L, -2, "dropped");
    sb_slot_set(L, slots, SLOT_LOG);

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

    int lib = sb_load_helpers(L, slots, G, native_string);
    lua_pushvalue(L, lib);
    sb_slot_set(L, slots, SLOT_LIB);
    /* The one metatable of frozen tables (sb_freeze). */
    lua_createtable(L, 0, 3);
    lua_getfield(L, lib, "frozen_index");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sb_frozen_write);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    sb_slot_set(L, slots, SLOT_FROZEN_MT);
    int D = sb_build_globals(L, slots, G, lib, native_math, native_string, native_table);
    sb_build_env(L, slots, D);
    sb_build_inputs(L, slots);
    lua_settop(L, slots);
    return slots;
}

/* Hand the helpers the catalog's tables; empty the real globals of what a
 * policy must never reach. */
void sb_env_finish(lua_State *L, int slots)
{
    lua_getglobal(L, "_G");
    int G = lua_gettop(L);
    lua_getfield(L, G, "string");
    int native_string = lua_gettop(L);
    sb_slot_get(L, slots, SLOT_LIB);
    int lib = lua_gettop(L);

    /* Hand the helpers what they read on the fast path. */
    lua_getfield(L, lib, "init");
    lua_createtable(L, 0, 6);
    sb_slot_get(L, slots, SLOT_CUSTOMER);
    lua_setfield(L, -2, "customer");
    sb_slot_get(L, slots, SLOT_OFFER_INDEX);
    lua_setfield(L, -2, "offer_index");
    sb_slot_get(L, slots, SLOT_ARRAYS);
    lua_getfield(L, -1, "PR");
    lua_remove(L, -2);
    lua_setfield(L, -2, "propensity");
    sb_slot_get(L, slots, SLOT_MARGIN);
    lua_setfield(L, -2, "margin");
    sb_slot_get(L, slots, SLOT_COST);
    lua_setfield(L, -2, "cost");
    lua_call(L, 1, 0);

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
    lua_settop(L, slots);
}

/* ========================================================================
 * Freezing what the policy built while loading
 *
 * After the top level has run, every table the policy can reach from what
 * it returned, its globals and its functions' upvalues is frozen: it gets a
 * proxy (an empty table sharing one metatable whose __newindex raises and
 * whose __index reads DATA[proxy]), and every reference to it, in tables,
 * upvalues and globals, is rewritten to the proxy. Reads see the same
 * values, any write raises, and the table's contents are not copied.
 * (lsource.c refuses assignments to upvalues when the policy loads, so the
 * variables themselves cannot change either.) Tables with a metatable are
 * the engine's, read-only already; the engine's own Lua functions and C
 * functions are not walked.
 * ======================================================================== */

static bool sb_is_engine_function(lua_State *L, int idx)
{
    if (lua_iscfunction(L, idx))
        return true;
    lua_Debug ar;
    lua_pushvalue(L, idx);
    if (!lua_getinfo(L, ">S", &ar))
        return true;
    return ar.source && strcmp(ar.source, "=nbx") == 0;
}

typedef struct sb_walk {
    int stack; /* values still to visit (array) */
    int n;
    int seen;   /* value -> true */
    int proxy;  /* policy table -> its proxy */
    int tables; /* the policy's tables, in visit order (array) */
    int n_tables;
    int funcs; /* the policy's Lua functions (array) */
    int n_funcs;
} sb_walk;

/* Queue the value at idx for the walk. */
static void sb_walk_push(lua_State *L, sb_walk *w, int idx)
{
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING) {
        size_t len = lua_objlen(L, idx);
        if (len > SB_STRING_MAX)
            luaL_error(L,
                       "the policy keeps a string of %d bytes after loading; strings a policy "
                       "holds are limited to %d bytes",
                       (int)len, SB_STRING_MAX);
        return;
    }
    if (t != LUA_TTABLE && t != LUA_TFUNCTION)
        return;
    lua_pushvalue(L, idx);
    lua_rawseti(L, w->stack, ++w->n);
}

/* Replace the value at idx by its proxy if it is one of the policy's
 * tables; true if it did. */
static bool sb_walk_proxy_of(lua_State *L, const sb_walk *w, int idx)
{
    if (idx < 0)
        idx = lua_gettop(L) + idx + 1;
    if (lua_type(L, idx) != LUA_TTABLE)
        return false;
    lua_pushvalue(L, idx);
    lua_rawget(L, w->proxy);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return false;
    }
    lua_replace(L, idx);
    return true;
}

/* Phase 1: find every table and function of the policy's, give each table
 * its proxy. */
static void sb_walk_collect(lua_State *L, int slots, sb_walk *w)
{
    nbx_sandbox *sb = sb_of(L);
    size_t steps = 0;
    while (w->n > 0) {
        lua_rawgeti(L, w->stack, w->n);
        lua_pushnil(L);
        lua_rawseti(L, w->stack, w->n--);
        int v = lua_gettop(L);
        lua_pushvalue(L, v);
        lua_rawget(L, w->seen);
        bool visited = !lua_isnil(L, -1);
        lua_pop(L, 1);
        if (visited) {
            lua_pop(L, 1);
            continue;
        }
        lua_pushvalue(L, v);
        lua_pushboolean(L, 1);
        lua_rawset(L, w->seen);
        if ((++steps & 1023) == 0 && sb_time_up(sb))
            luaL_error(L, "freezing the policy's tables took longer than the load time limit");
        if (lua_type(L, v) == LUA_TTABLE) {
            if (lua_getmetatable(L, v)) {
                lua_pop(L, 2); /* the engine's */
                continue;
            }
            lua_pushnil(L);
            while (lua_next(L, v)) {
                sb_walk_push(L, w, -2);
                sb_walk_push(L, w, -1);
                lua_pop(L, 1);
            }
            lua_pushvalue(L, v);
            lua_rawseti(L, w->tables, ++w->n_tables);
            lua_pushvalue(L, v);
            lua_createtable(L, 0, 0);
            sb_slot_get(L, slots, SLOT_FROZEN_MT);
            lua_setmetatable(L, -2);
            lua_rawset(L, w->proxy);
        } else if (!sb_is_engine_function(L, v)) {
            for (int i = 1; lua_getupvalue(L, v, i); i++) {
                sb_walk_push(L, w, -1);
                lua_pop(L, 1);
            }
            lua_pushvalue(L, v);
            lua_rawseti(L, w->funcs, ++w->n_funcs);
        }
        lua_pop(L, 1);
    }
}

/* Phase 2 for one table (at t): references to the policy's tables become
 * their proxies. Values are replaced in place; table keys are re-keyed once
 * the traversal is over (no new keys may appear during one). */
static void sb_walk_rewrite_table(lua_State *L, const sb_walk *w, int t)
{
    lua_createtable(L, 0, 0);
    int rekey = lua_gettop(L);
    int n_rekey = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int v = lua_gettop(L), k = v - 1;
        if (sb_walk_proxy_of(L, w, v)) {
            lua_pushvalue(L, k);
            lua_pushvalue(L, v);
            lua_rawset(L, t);
        }
        if (lua_type(L, k) == LUA_TTABLE) {
            lua_pushvalue(L, k);
            lua_rawseti(L, rekey, ++n_rekey);
        }
        lua_pop(L, 1);
    }
    for (int i = 1; i <= n_rekey; i++) {
        lua_rawgeti(L, rekey, i);
        int k = lua_gettop(L);
        lua_pushvalue(L, k);
        lua_rawget(L, t);
        int v = lua_gettop(L);
        lua_pushvalue(L, k);
        if (sb_walk_proxy_of(L, w, lua_gettop(L))) {
            lua_pushvalue(L, k);
            lua_pushnil(L);
            lua_rawset(L, t);
            lua_pushvalue(L, v);
            lua_rawset(L, t);
        } else {
            lua_pop(L, 1);
        }
        lua_settop(L, k - 1);
    }
    lua_pop(L, 1);
}

void sb_freeze(lua_State *L, int slots, int root)
{
    lua_checkstack(L, 24);
    if (root < 0)
        root = lua_gettop(L) + root + 1;
    sb_walk w = {0};
    lua_createtable(L, 64, 0);
    w.stack = lua_gettop(L);
    lua_createtable(L, 0, 64);
    w.seen = lua_gettop(L);
    lua_createtable(L, 0, 64);
    w.proxy = lua_gettop(L);
    lua_createtable(L, 64, 0);
    w.tables = lua_gettop(L);
    lua_createtable(L, 64, 0);
    w.funcs = lua_gettop(L);
    /* The tick counter is the engine's and must stay writable. */
    sb_slot_get(L, slots, SLOT_TICKS);
    lua_pushboolean(L, 1);
    lua_rawset(L, w.seen);
    sb_walk_push(L, &w, root);
    /* The policy's globals: whatever its top level assigned lands in D. */
    sb_slot_get(L, slots, SLOT_ENV_MT);
    lua_getfield(L, -1, "__index");
    int D = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, D)) {
        sb_walk_push(L, &w, -1);
        lua_pop(L, 1);
    }
    sb_walk_collect(L, slots, &w);

    /* Phase 2: rewrite every reference, then register the proxies. */
    sb_walk_rewrite_table(L, &w, D);
    for (int i = 1; i <= w.n_tables; i++) {
        lua_rawgeti(L, w.tables, i);
        sb_walk_rewrite_table(L, &w, lua_gettop(L));
        lua_pop(L, 1);
    }
    for (int i = 1; i <= w.n_funcs; i++) {
        lua_rawgeti(L, w.funcs, i);
        int f = lua_gettop(L);
        for (int u = 1; lua_getupvalue(L, f, u); u++) {
            if (sb_walk_proxy_of(L, &w, -1))
                lua_setupvalue(L, f, u);
            else
                lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    for (int i = 1; i <= w.n_tables; i++) {
        lua_rawgeti(L, w.tables, i);
        int data = lua_gettop(L);
        lua_pushvalue(L, data);
        lua_rawget(L, w.proxy);
        sb_register_proxy(L, slots, lua_gettop(L), data, true);
        lua_pop(L, 2);
    }
    sb_walk_proxy_of(L, &w, root);
    lua_settop(L, w.stack - 1);
}
