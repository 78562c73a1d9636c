/*
 * sandbox_fault.c: where and why a policy failed.
 *
 * The lowest of the sandbox's files: the limits, the environment and the
 * driver all record faults here. A record names the policy's line (from the
 * message's own position, else the innermost policy frame on the stack) and
 * the reason, which is the policy's own text and is escaped when it becomes
 * an error message.
 */
#include "sandbox_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

/* Stack levels searched for the policy's frame when locating a fault. */
#define SB_WHERE_LEVELS 256

/* ========================================================================
 * Fault records
 * ======================================================================== */

/* "name.lua:LINE" of the innermost policy frame at or above level; "" when
 * there is none (a tail call leaves no frame of its caller): nbx_sandbox_run
 * then falls back to the definition of the function being run. */
bool sb_policy_where_at(nbx_sandbox *sb, lua_State *L, int level, char *out, size_t n)
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

void sb_note_where(nbx_sandbox *sb, lua_State *L, int level)
{
    sb->recorded = true;
    sb_policy_where_at(sb, L, level, sb->where, sizeof sb->where);
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
void sb_describe_error(nbx_sandbox *sb, lua_State *L, int idx)
{
    sb->recorded = true;
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING) {
        sb_policy_where_at(sb, L, 0, sb->where, sizeof sb->where);
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
    /* Line 0 is no position: LuaJIT reports a stack overflow met while
     * entering a compiled frame at line 0 (seen on traces of a recursive
     * comparator); the stack knows better. */
    if (rest && line_len == 1 && msg[strlen(sb->short_src) + 1] == '0')
        rest = NULL;
    if (rest) {
        /* The message names its own position (error("...", 2) points at the
         * caller): trust it over the stack. */
        snprintf(sb->where, sizeof sb->where, "%s:%.*s", sb->policy->chunkname + 1, (int)line_len,
                 msg + strlen(sb->short_src) + 1);
    } else {
        sb_policy_where_at(sb, L, 0, sb->where, sizeof sb->where);
        rest = sb_skip_position(msg, len, sb->short_src, &line_len);
        if (!rest)
            rest = sb_skip_position(msg, len, "nbx", &line_len); /* our helpers' chunk */
        if (!rest)
            rest = msg;
    }
    /* The reason is the policy's own text: escaped when it is stored as an
     * error message (nbx_err, nbx_policy_error). */
    snprintf(sb->reason, sizeof sb->reason, "%.*s", (int)(len - (size_t)(rest - msg)), rest);
}

/* Message handler of the protected calls into policy code. Memory errors
 * never reach it; timeouts were located where they were detected. */
int sb_msgh(lua_State *L)
{
    nbx_sandbox *sb = sb_of(L);
    if (!sb->recorded && !sb->timed_out && !sb->mem_exceeded && !sb->object_exceeded)
        sb_describe_error(sb, L, 1);
    lua_settop(L, 1);
    return 1;
}

void sb_fault_reset(nbx_sandbox *sb)
{
    sb->recorded = false;
    sb->where[0] = '\0';
    sb->reason[0] = '\0';
}

/* Raise with the position of the caller `level` frames up. */
int sb_raise(lua_State *L, int level, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    luaL_where(L, level);
    lua_pushstring(L, msg);
    lua_concat(L, 2);
    return lua_error(L);
}
