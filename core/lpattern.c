/*
 * lpattern.c: Lua 5.1 patterns for the policy sandbox.
 *
 * LuaJIT's string.find/match/gmatch/gsub run in C, where count hooks never
 * fire: string.find(('a'):rep(3000), '.-.-.-.-b$') runs for over 20 s and
 * nothing can stop it. This is a backtracking matcher written for the
 * sandbox instead: every step is counted, and every NBX_LP_CHECK_STEPS steps
 * the caller's check function looks at the decision's deadline and raises a
 * Lua error to abort. Recursion depth and captures are bounded, gsub refuses
 * function replacements (a callback that calls gsub again recurses through
 * the C stack, which crashes LuaJIT), and plain find uses glibc's memmem,
 * which is linear where LuaJIT's naive search is quadratic.
 *
 * Semantics follow Lua 5.1 as LuaJIT implements it (character classes are
 * ASCII, independent of the process locale); tests/test_sandbox.c compares
 * the two on a table of cases.
 */
#include "nbx_int.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>

#define LP_MAXCAPTURES 32
/* Each quantified item or capture costs one level of C recursion. */
#define LP_MAXDEPTH 200
#define LP_CHECK_STEPS 4096
#define LP_CAP_UNFINISHED (-1)
#define LP_CAP_POSITION (-2)

typedef struct lp_match {
    const char *src_init;
    const char *src_end;
    const char *pat_end;
    lua_State *L;
    const nbx_lp_limit *limit;
    int level; /* captures opened so far */
    int depth; /* C recursion */
    long budget;
    struct {
        const char *init;
        ptrdiff_t len;
    } capture[LP_MAXCAPTURES];
} lp_match;

static void lp_init(lp_match *m, lua_State *L, const nbx_lp_limit *limit, const char *s, size_t ls,
                    const char *p, size_t lp)
{
    m->src_init = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->L = L;
    m->limit = limit;
    m->level = 0;
    m->depth = 0;
    m->budget = LP_CHECK_STEPS;
}

/* Charge n steps; every LP_CHECK_STEPS, ask the owner whether time is up. */
static void lp_spend(lp_match *m, long n)
{
    m->budget -= n;
    if (NBX_UNLIKELY(m->budget < 0)) {
        m->budget = LP_CHECK_STEPS;
        if (m->limit && m->limit->check)
            m->limit->check(m->L, m->limit->ud);
    }
}

/* ========================================================================
 * Character classes (ASCII: the C library's would follow the locale)
 * ======================================================================== */

static bool lp_is_lower(int c)
{
    return c >= 'a' && c <= 'z';
}

static bool lp_is_upper(int c)
{
    return c >= 'A' && c <= 'Z';
}

static bool lp_is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool lp_is_alpha(int c)
{
    return lp_is_lower(c) || lp_is_upper(c);
}

static bool lp_is_space(int c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static bool lp_is_cntrl(int c)
{
    return c < 32 || c == 127;
}

static bool lp_is_punct(int c)
{
    return c > 32 && c < 127 && !lp_is_alpha(c) && !lp_is_digit(c);
}

static bool lp_is_xdigit(int c)
{
    return lp_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Does c belong to %<cl>? An unknown letter stands for itself. */
static bool lp_class(int c, int cl)
{
    bool in;
    switch (cl | 0x20) {
    case 'a':
        in = lp_is_alpha(c);
        break;
    case 'c':
        in = lp_is_cntrl(c);
        break;
    case 'd':
        in = lp_is_digit(c);
        break;
    case 'l':
        in = lp_is_lower(c);
        break;
    case 'p':
        in = lp_is_punct(c);
        break;
    case 's':
        in = lp_is_space(c);
        break;
    case 'u':
        in = lp_is_upper(c);
        break;
    case 'w':
        in = lp_is_alpha(c) || lp_is_digit(c);
        break;
    case 'x':
        in = lp_is_xdigit(c);
        break;
    case 'z':
        in = c == 0;
        break;
    default:
        return cl == c;
    }
    return lp_is_upper(cl) ? !in : in;
}

/* Set [...]: open points at '[', close at its ']'. */
static bool lp_set(lp_match *m, int c, const char *open, const char *close)
{
    const char *p = open + 1;
    bool negate = false;
    if (*p == '^') {
        negate = true;
        p++;
    }
    lp_spend(m, (close - p) / 8);
    while (p < close) {
        if (*p == '%' && p + 1 < close) {
            if (lp_class(c, (unsigned char)p[1]))
                return !negate;
            p += 2;
        } else if (p + 2 < close && p[1] == '-') {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
                return !negate;
            p += 3;
        } else {
            if ((unsigned char)*p == c)
                return !negate;
            p++;
        }
    }
    return negate;
}

/* End of the single-character class starting at p (p < pat_end). */
static const char *lp_class_end(lp_match *m, const char *p)
{
    const char *end = m->pat_end;
    char c = *p++;
    if (c == '%') {
        if (p >= end)
            luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c != '[')
        return p;
    if (p < end && *p == '^')
        p++;
    /* The first character of a set is literal even when it is ']'. */
    for (bool first = true;; first = false) {
        if (p >= end)
            luaL_error(m->L, "malformed pattern (missing ']')");
        if (!first && *p == ']')
            return p + 1;
        if (*p == '%') {
            p++;
            if (p >= end)
                luaL_error(m->L, "malformed pattern (missing ']')");
        }
        p++;
    }
}

/* Does the character at s match the class [p, ep)? */
static bool lp_single(lp_match *m, const char *s, const char *p, const char *ep)
{
    if (s >= m->src_end)
        return false;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return true;
    case '%':
        return lp_class(c, (unsigned char)p[1]);
    case '[':
        return lp_set(m, c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* ========================================================================
 * Matcher
 * ======================================================================== */

static const char *lp_do_match(lp_match *m, const char *s, const char *p);

static const char *lp_max_expand(lp_match *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t i = 0;
    while (lp_single(m, s + i, p, ep))
        i++;
    lp_spend(m, i);
    /* Longest first, then give back one character at a time. */
    for (; i >= 0; i--) {
        const char *r = lp_do_match(m, s + i, ep + 1);
        if (r)
            return r;
    }
    return NULL;
}

static const char *lp_min_expand(lp_match *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = lp_do_match(m, s, ep + 1);
        if (r)
            return r;
        if (!lp_single(m, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *lp_start_capture(lp_match *m, const char *s, const char *p, ptrdiff_t what)
{
    if (m->level >= LP_MAXCAPTURES)
        luaL_error(m->L, "too many captures");
    m->capture[m->level].init = s;
    m->capture[m->level].len = what;
    m->level++;
    const char *r = lp_do_match(m, s, p);
    if (!r)
        m->level--;
    return r;
}

static const char *lp_end_capture(lp_match *m, const char *s, const char *p)
{
    int l = m->level - 1;
    while (l >= 0 && m->capture[l].len != LP_CAP_UNFINISHED)
        l--;
    if (l < 0)
        luaL_error(m->L, "invalid pattern capture");
    m->capture[l].len = s - m->capture[l].init;
    const char *r = lp_do_match(m, s, p);
    if (!r)
        m->capture[l].len = LP_CAP_UNFINISHED;
    return r;
}

/* %bxy: p points at x. */
static const char *lp_balance(lp_match *m, const char *s, const char *p)
{
    if (p + 1 >= m->pat_end)
        luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != p[0])
        return NULL;
    int open = p[0], close = p[1];
    long depth = 1;
    const char *start = s;
    while (++s < m->src_end) {
        if (*s == close) {
            if (--depth == 0) {
                lp_spend(m, s - start);
                return s + 1;
            }
        } else if (*s == open) {
            depth++;
        }
    }
    lp_spend(m, s - start);
    return NULL;
}

/* %1..%9: the text of an earlier, closed capture again. */
static const char *lp_back_reference(lp_match *m, const char *s, int digit)
{
    int l = digit - '1';
    if (l < 0 || l >= m->level || m->capture[l].len == LP_CAP_UNFINISHED)
        luaL_error(m->L, "invalid capture index");
    ptrdiff_t len = m->capture[l].len;
    if (len < 0) /* a position capture has no text */
        return NULL;
    lp_spend(m, len / 8);
    if (m->src_end - s >= len && memcmp(m->capture[l].init, s, (size_t)len) == 0)
        return s + len;
    return NULL;
}

/* The pattern loop: items without a quantifier advance in place; each
 * quantifier or capture recurses for the rest of the pattern. */
static const char *lp_match_here(lp_match *m, const char *s, const char *p)
{
    for (;;) {
        lp_spend(m, 1);
        if (p >= m->pat_end)
            return s;
        switch (*p) {
        case '(':
            if (p + 1 < m->pat_end && p[1] == ')')
                return lp_start_capture(m, s, p + 2, LP_CAP_POSITION);
            return lp_start_capture(m, s, p + 1, LP_CAP_UNFINISHED);
        case ')':
            return lp_end_capture(m, s, p + 1);
        case '$':
            if (p + 1 == m->pat_end)
                return s == m->src_end ? s : NULL;
            break; /* elsewhere '$' is an ordinary character */
        case '%':
            if (p + 1 >= m->pat_end)
                break; /* lp_class_end reports the malformed pattern */
            if (p[1] == 'b') {
                s = lp_balance(m, s, p + 2);
                if (!s)
                    return NULL;
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                p += 2;
                if (p >= m->pat_end || *p != '[')
                    luaL_error(m->L, "missing '[' after '%%f' in pattern");
                const char *ep = lp_class_end(m, p);
                int prev = s == m->src_init ? 0 : (unsigned char)s[-1];
                int cur = s < m->src_end ? (unsigned char)*s : 0;
                if (lp_set(m, prev, p, ep - 1) || !lp_set(m, cur, p, ep - 1))
                    return NULL;
                p = ep;
                continue;
            }
            if (lp_is_digit((unsigned char)p[1])) {
                s = lp_back_reference(m, s, (unsigned char)p[1]);
                if (!s)
                    return NULL;
                p += 2;
                continue;
            }
            break;
        default:
            break;
        }
        const char *ep = lp_class_end(m, p);
        bool hit = lp_single(m, s, p, ep);
        switch (ep < m->pat_end ? *ep : '\0') {
        case '?':
            if (hit) {
                const char *r = lp_do_match(m, s + 1, ep + 1);
                if (r)
                    return r;
            }
            p = ep + 1;
            continue;
        case '*':
            return lp_max_expand(m, s, p, ep);
        case '+':
            return hit ? lp_max_expand(m, s + 1, p, ep) : NULL;
        case '-':
            return lp_min_expand(m, s, p, ep);
        default:
            if (!hit)
                return NULL;
            s++;
            p = ep;
            continue;
        }
    }
}

static const char *lp_do_match(lp_match *m, const char *s, const char *p)
{
    if (++m->depth > LP_MAXDEPTH)
        luaL_error(m->L, "pattern too complex");
    const char *r = lp_match_here(m, s, p);
    m->depth--;
    return r;
}

/* ========================================================================
 * Captures
 * ======================================================================== */

static void lp_push_capture(lp_match *m, int i, const char *s, const char *e)
{
    if (i >= m->level) {
        if (i != 0)
            luaL_error(m->L, "invalid capture index");
        lua_pushlstring(m->L, s, (size_t)(e - s)); /* the whole match */
        return;
    }
    ptrdiff_t len = m->capture[i].len;
    if (len == LP_CAP_UNFINISHED)
        luaL_error(m->L, "unfinished capture");
    if (len == LP_CAP_POSITION)
        lua_pushinteger(m->L, m->capture[i].init - m->src_init + 1);
    else
        lua_pushlstring(m->L, m->capture[i].init, (size_t)len);
}

/* Push every capture, or the whole match [s, e) if there are none and s is
 * not NULL. Returns the number pushed. */
static int lp_push_captures(lp_match *m, const char *s, const char *e)
{
    int n = (m->level == 0 && s) ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        lp_push_capture(m, i, s, e);
    return n;
}

/* ========================================================================
 * Library functions
 * ======================================================================== */

static const nbx_lp_limit *lp_limit_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* 1-based, negative from the end, clamped as Lua 5.1 does. */
static size_t lp_start(lua_State *L, int arg, size_t len)
{
    lua_Integer init = luaL_optinteger(L, arg, 1);
    if (init < 0)
        init += (lua_Integer)len + 1;
    if (init < 1)
        init = 1;
    if ((size_t)init > len + 1)
        init = (lua_Integer)len + 1;
    return (size_t)init - 1;
}

static bool lp_has_specials(const char *p, size_t lp)
{
    static const char specials[] = "^$*+?.([%-";
    for (size_t i = 0; i < lp; i++)
        if (memchr(specials, p[i], sizeof specials - 1))
            return true;
    return false;
}

static int lp_find_aux(lua_State *L, bool find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = lp_start(L, 3, ls);
    /* '^' anchors only at the start of the pattern; a plain find ignores it. */
    bool anchor = lp > 0 && *p == '^';
    const char *pat = anchor ? p + 1 : p;
    lp_match m;
    lp_init(&m, L, lp_limit_of(L), s, ls, pat, lp - anchor);
    if (find && (lua_toboolean(L, 4) || !lp_has_specials(p, lp))) {
        /* memmem is glibc's two-way search: linear, unlike a naive loop. */
        lp_spend(&m, (long)((ls - init) / 64));
        const char *hit = lp ? memmem(s + init, ls - init, p, lp) : s + init;
        if (hit) {
            lua_pushinteger(L, hit - s + 1);
            lua_pushinteger(L, hit - s + (lua_Integer)lp);
            return 2;
        }
        lua_pushnil(L);
        return 1;
    }
    const char *s1 = s + init;
    for (;;) {
        m.level = 0;
        m.depth = 0;
        const char *e = lp_do_match(&m, s1, pat);
        if (e) {
            if (!find)
                return lp_push_captures(&m, s1, e);
            lua_pushinteger(L, s1 - s + 1);
            lua_pushinteger(L, e - s);
            return lp_push_captures(&m, NULL, NULL) + 2;
        }
        if (anchor || s1 >= m.src_end)
            break;
        s1++;
    }
    lua_pushnil(L);
    return 1;
}

static int lp_find(lua_State *L)
{
    return lp_find_aux(L, true);
}

static int lp_match_fn(lua_State *L)
{
    return lp_find_aux(L, false);
}

/* Upvalues: limit, subject, pattern, next start offset. */
static int lp_gmatch_next(lua_State *L)
{
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(3), &lp);
    size_t pos = (size_t)lua_tointeger(L, lua_upvalueindex(4));
    lp_match m;
    lp_init(&m, L, lp_limit_of(L), s, ls, p, lp);
    for (const char *src = s + pos; src <= m.src_end; src++) {
        m.level = 0;
        m.depth = 0;
        const char *e = lp_do_match(&m, src, p);
        if (e) {
            /* An empty match moves on by one, or it would repeat forever. */
            size_t next = (size_t)(e - s) + (e == src);
            lua_pushinteger(L, (lua_Integer)next);
            lua_replace(L, lua_upvalueindex(4));
            return lp_push_captures(&m, src, e);
        }
    }
    return 0;
}

static int lp_gmatch(lua_State *L)
{
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, lp_gmatch_next, 4);
    return 1;
}

/* Append the replacement for the match [s, e) to b. */
static void lp_add_value(lp_match *m, luaL_Buffer *b, const char *s, const char *e, int rtype)
{
    lua_State *L = m->L;
    if (rtype == LUA_TTABLE) {
        lp_push_capture(m, 0, s, e);
        /* Honours __index tables, so read-only proxies work; no user
         * metatable can exist in the sandbox, so no Lua code runs here. */
        lua_gettable(L, 3);
        if (!lua_toboolean(L, -1)) {
            lua_pop(L, 1);
            luaL_addlstring(b, s, (size_t)(e - s)); /* keep the original */
            return;
        }
        if (!lua_isstring(L, -1))
            luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
        luaL_addvalue(b);
        return;
    }
    size_t lr;
    const char *r = lua_tolstring(L, 3, &lr);
    lp_spend(m, (long)(lr / 8));
    for (size_t i = 0; i < lr; i++) {
        if (r[i] != '%' || i + 1 >= lr) {
            luaL_addchar(b, r[i]);
            continue;
        }
        i++;
        if (!lp_is_digit((unsigned char)r[i])) {
            luaL_addchar(b, r[i]); /* "%%" and, as in 5.1, "%x" give the character */
        } else if (r[i] == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else {
            lp_push_capture(m, r[i] - '1', s, e);
            luaL_addvalue(b);
        }
    }
}

static int lp_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int rtype = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    if (rtype == LUA_TFUNCTION)
        return luaL_error(L, "gsub: function replacements are not allowed in policies "
                             "(use a string or a table)");
    luaL_argcheck(L, rtype == LUA_TNUMBER || rtype == LUA_TSTRING || rtype == LUA_TTABLE, 3,
                  "string or table expected");
    bool anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    lp_match m;
    lp_init(&m, L, lp_limit_of(L), s, ls, p, lp);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *src = s;
    lua_Integer n = 0;
    while (n < max_n) {
        m.level = 0;
        m.depth = 0;
        const char *e = lp_do_match(&m, src, p);
        if (e) {
            n++;
            lp_add_value(&m, &b, src, e, rtype);
        }
        if (e && e > src)
            src = e;
        else if (src < m.src_end)
            luaL_addchar(&b, *src++);
        else
            break;
        if (anchor)
            break;
    }
    luaL_addlstring(&b, src, (size_t)(m.src_end - src));
    luaL_pushresult(&b);
    const nbx_lp_limit *limit = lp_limit_of(L);
    if (limit && limit->max_result && lua_objlen(L, -1) > limit->max_result) {
        if (limit->too_big)
            limit->too_big(L, limit->ud, "gsub's result", lua_objlen(L, -1));
        return luaL_error(L, "gsub's result would be %d bytes (the limit is %d)",
                          (int)lua_objlen(L, -1), (int)limit->max_result);
    }
    lua_pushinteger(L, n);
    return 2;
}

void nbx_lpattern_push(lua_State *L, const nbx_lp_limit *limit)
{
    static const struct {
        const char *name;
        lua_CFunction fn;
    } fns[] = {{"find", lp_find}, {"match", lp_match_fn}, {"gmatch", lp_gmatch}, {"gsub", lp_gsub}};
    lua_createtable(L, 0, (int)NBX_ARRAY_LEN(fns));
    for (size_t i = 0; i < NBX_ARRAY_LEN(fns); i++) {
        lua_pushlightuserdata(L, (void *)limit);
        lua_pushcclosure(L, fns[i].fn, 1);
        lua_setfield(L, -2, fns[i].name);
    }
}
