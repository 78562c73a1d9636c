/*
 * lsource.c: policy sources rewritten to carry their own time checks.
 *
 * The sandbox stopped a runaway policy with a count hook, but LuaJIT calls
 * hooks from the interpreter only: compiled traces never see them, so the JIT
 * had to stay off and a Lua score cost four times the built-in scorer
 * (issue 11). Instead, every policy is rewritten once, when it loads, so that
 * no path through it runs long without meeting a "tick" (NBX_LSOURCE_TICK: a
 * counter decrement and a test that compiled code cannot skip):
 *   - at the start of every function body and loop body, after labels (a
 *     backward goto is a loop), before every return and at the end of every
 *     function body;
 *   - before every statement that does work, and a statement may do at most
 *     max_work operations (calls, concatenations, order comparisons,
 *     arithmetic): more is refused, naming the line.
 * Each operation costs at most O(length of a string) and the sandbox caps
 * strings; `#e` and `a .. b` become calls to the sandbox's __nbx_len and
 * __nbx_cat. So the time between two ticks is bounded whatever the JIT does.
 * `a ^ b` becomes __nbx_pow(a, b), the sandbox's pow, whose bits are the
 * same on every machine (LuaJIT's operator calls the C library's).
 *
 * The same pass enforces the rules a policy's source must follow (names that
 * begin with __nbx are the engine's; no assignment to a local of an
 * enclosing function, so no state outlives a decision), and the output keeps
 * every newline where it was: line numbers in messages stay the policy's.
 *
 * The lexer and parser follow LuaJIT 2.1's (lj_lex.c, lj_parse.c) closely
 * enough to accept what it accepts, split tokens where it does and apply its
 * limits: nesting, locals and upvalues exactly, registers and jump lengths
 * as upper bounds of what its code generator uses. The whole input is
 * tokenised first; the parser then records edits on tokens (insertions
 * before and after, replacements), and the output is written in one pass
 * over the tokens with the text between them copied verbatim. Finally the
 * output is parsed again ("verify"): a chunk that LuaJIT would refuse once
 * instrumented (the rewrite nests calls and needs registers; ticks use
 * upvalues and lengthen loops; the prologue adds locals) is refused here,
 * with the policy's line, and a bug in the rewrite cannot produce a chunk
 * that does not parse. That pass reads each tick as one token, checked
 * against what parsing NBX_LSOURCE_TICK itself found (ls_tick_summary).
 */
#include "nbx_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* LuaJIT's limits (lj_def.h): the input must respect them to compile, and
 * the output too. */
#define LS_MAX_XLEVEL 200 /* syntactic nesting */
#define LS_MAX_LOCVAR 200 /* active locals of one function */
#define LS_MAX_UPVAL 60   /* upvalues of one function */
#define LS_MAX_SLOTS 250  /* registers of one function */
#define LS_MAX_JUMP 32767 /* instructions a jump spans (BCMAX_D less the bias) */
#define LS_STRSCAN_MAXEXP (1 << 20)
#define LS_UNARY_PRIORITY 8
/* Offsets, counts and lines are 32-bit. */
#define LS_SOURCE_MAX ((size_t)INT32_MAX)
#define LS_NONE UINT32_MAX
/* Bytes of source text quoted in a message. */
#define LS_QUOTE_MAX 40

/* ========================================================================
 * Tokens
 * ======================================================================== */

enum ls_type {
    T_EOF,
    T_NAME,
    T_NUMBER,
    T_STRING,
    /* reserved words */
    T_AND,
    T_BREAK,
    T_DO,
    T_ELSE,
    T_ELSEIF,
    T_END,
    T_FALSE,
    T_FOR,
    T_FUNCTION,
    T_GOTO,
    T_IF,
    T_IN,
    T_LOCAL,
    T_NIL,
    T_NOT,
    T_OR,
    T_REPEAT,
    T_RETURN,
    T_THEN,
    T_TRUE,
    T_UNTIL,
    T_WHILE,
    /* symbols */
    T_PLUS,
    T_MINUS,
    T_STAR,
    T_SLASH,
    T_PERCENT,
    T_CARET,
    T_HASH,
    T_EQ,
    T_NE,
    T_LT,
    T_LE,
    T_GT,
    T_GE,
    T_ASSIGN,
    T_LPAREN,
    T_RPAREN,
    T_LBRACE,
    T_RBRACE,
    T_LBRACKET,
    T_RBRACKET,
    T_SEMI,
    T_COLON,
    T_DBCOLON,
    T_COMMA,
    T_DOT,
    T_CONCAT,
    T_DOTS,
    T_TICK, /* verify pass: one of our ticks, read as a whole */
    T__COUNT
};

static const char *const ls_type_text[T__COUNT] = {
    "<eof>", "<name>", "<number>", "<string>", "and",  "break", "do",    "else",  "elseif",
    "end",   "false",  "for",      "function", "goto", "if",    "in",    "local", "nil",
    "not",   "or",     "repeat",   "return",   "then", "true",  "until", "while", "+",
    "-",     "*",      "/",        "%",        "^",    "#",     "==",    "~=",    "<",
    "<=",    ">",      ">=",       "=",        "(",    ")",     "{",     "}",     "[",
    "]",     ";",      ":",        "::",       ",",    ".",     "..",    "...",   "<tick>",
};

/* Flags of a token. */
enum {
    LS_NL_BEFORE = 1u << 0, /* a line break between the previous token and this one */
    LS_REPL_LEN = 1u << 1,  /* `#` written as __nbx_len( */
    LS_REPL_COMMA = 1u << 2 /* `..` or `^` written as , */
};

typedef struct ls_tok {
    uint32_t start, len; /* bytes of the source */
    uint32_t line;       /* where it starts */
    uint32_t name;       /* interned name (T_NAME, T_GOTO) */
    uint8_t type;        /* ls_type */
    uint8_t flags;
} ls_tok;

/* What the rewrite writes around a token (first pass only, one per token). */
typedef struct ls_edit {
    uint32_t opens;  /* openings written before it: 1 + index in ls_state.opens, 0 none */
    uint32_t closes; /* ")" written after it */
    uint8_t ticks_before, ticks_after;
    uint8_t weight; /* the first tick before it counts this much (0: 1) */
} ls_edit;

/* Texts the rewrite writes. */
typedef struct ls_text {
    const char *s;
    size_t n;
} ls_text;
enum { LS_OPEN_CAT, LS_OPEN_POW, LS_OPEN_PAREN };
static const ls_text ls_open_text[] = {{"__nbx_cat(", 10}, {"__nbx_pow(", 10}, {"(", 1}};
static const ls_text ls_tick = {NBX_LSOURCE_TICK, sizeof NBX_LSOURCE_TICK - 1};
static const ls_text ls_tick_head = {NBX_LSOURCE_TICK_HEAD, sizeof NBX_LSOURCE_TICK_HEAD - 1};
static const ls_text ls_tick_tail = {NBX_LSOURCE_TICK_TAIL, sizeof NBX_LSOURCE_TICK_TAIL - 1};
static const ls_text ls_prologue = {NBX_LSOURCE_PROLOGUE, sizeof NBX_LSOURCE_PROLOGUE - 1};
static const ls_text ls_len_open = {"__nbx_len(", 10};
static const ls_text ls_comma = {",", 1};
static const ls_text ls_close = {")", 1};
static const ls_text ls_semi = {";", 1};

typedef struct ls_open {
    uint32_t next; /* 1 + index of the next (inner) opening, 0 none */
    uint8_t kind;
} ls_open;

/* ========================================================================
 * Parser state
 * ======================================================================== */

typedef struct ls_namerec {
    const char *ptr;
    uint32_t len;
    uint32_t hash;
} ls_namerec;

/* A local variable in scope. Hidden ones (the numeric and generic for's
 * control slots) have name LS_NONE: LuaJIT counts them against its limit. */
typedef struct ls_var {
    uint32_t name;
    int32_t prev; /* the binding of the same name it shadows, -1 none */
    uint32_t fn;  /* function depth that declared it (0: the main chunk) */
} ls_var;

typedef struct ls_func {
    uint32_t var_base; /* its first local in ls_state.vars */
    uint32_t line;     /* where it is defined; 0 for the main chunk */
    uint32_t loops;    /* loops open around the current position */
    uint32_t nuv;
    uint32_t uv[LS_MAX_UPVAL]; /* upvalues: indices in ls_state.vars */
    bool vararg;
} ls_func;

/* What a block's statements left at its end. */
typedef struct ls_blockinfo {
    uint32_t ins;     /* bytecode instructions its statements may take */
    bool last_return; /* the last statement is a return */
    bool last_exit;   /* ... a return or a break */
    uint32_t trail;   /* first token of the labels (and ';') ending the
                         block, or its terminator when there are none */
} ls_blockinfo;

enum ls_kind {
    K_OTHER,
    K_NUMK,    /* a numeric constant, after constant folding */
    K_CALL,    /* a call: all its results in a multi-value position */
    K_VARARG,  /* ... */
    K_NAME,    /* a variable */
    K_INDEXED, /* a field */
    K_PAREN    /* a parenthesised expression: one value, not assignable */
};

typedef struct ls_exp {
    uint32_t work;        /* work units (saturating) */
    uint32_t regs;        /* registers it may use (ls_regs_check) */
    uint32_t ins;         /* bytecode instructions it may take (ls_jump_check) */
    uint32_t first, last; /* its tokens */
    uint8_t kind;         /* ls_kind */
    bool compare;         /* its last operation is a comparison */
    int32_t var;          /* K_NAME: the local it names, -1 for a global */
} ls_exp;

enum ls_stmt { S_OTHER, S_RETURN, S_BREAK, S_LABEL };

/* What one tick does, for the verify pass, which reads each as a single
 * token: found by parsing NBX_LSOURCE_TICK itself (ls_tick_summary), so a
 * changed tick is checked as thoroughly as the rest of the output. */
typedef struct ls_ticksum {
    int height;    /* levels it nests below the block it is in */
    uint32_t regs; /* registers it needs */
    uint32_t ins;  /* instructions it may take */
    uint32_t nnames;
    uint32_t names[8]; /* the names it reads, interned */
} ls_ticksum;

typedef struct ls_state {
    jmp_buf fail; /* errors unwind the recursive parser to one place */
    int rc;
    nbx_err *e;
    const char *chunk; /* display name */
    const unsigned char *src;
    uint32_t len;
    bool trusted;
    bool verify;      /* parsing our own output: no rules, no edits */
    bool tick_tokens; /* the lexer reads ticks as T_TICK (verify pass) */
    bool summarize;   /* parsing the tick alone: record what it needs */
    uint32_t max_work;
    uint64_t seed;

    ls_tok *tok;
    uint32_t ntok, tokcap;
    ls_edit *edit;        /* first pass: ntok of them */
    uint32_t p;           /* current token */
    uint32_t amb_skip;    /* token exempt from the ambiguous-call check */
    uint32_t prologue_at; /* byte offset of the prologue; LS_NONE: no chunk */
    int level;            /* LuaJIT's syntactic level */
    int max_level;        /* summarize: the deepest level reached */
    uint32_t max_regs;    /* summarize: the most registers a statement needs */
    uint32_t chunk_ins;   /* summarize: instructions of the whole chunk */
    ls_ticksum tick;      /* verify pass: what each T_TICK does */

    ls_namerec *names;
    uint32_t nnames, namecap;
    uint32_t *slots; /* hash of names: 1 + id, 0 free */
    uint32_t slotcap;
    int32_t *top; /* per name: innermost local of that name, -1 none */
    uint32_t id_self;
    uint32_t reserved[5]; /* the prologue's names */

    ls_var *vars;
    uint32_t nvars, varcap;
    ls_func *fs; /* LS_MAX_XLEVEL + 1 functions: each body nests a level */
    uint32_t fn;

    /* The last run of labels looked at: [run_from, run_to), trailing? */
    uint32_t run_from, run_to;
    bool run_trailing;

    ls_open *opens;
    uint32_t nopens, opencap;
    bool empty_end_tick; /* the chunk has no token: its end tick follows the start's */
} ls_state;

static const char *const ls_reserved_names[5] = {"__nbx_s", "__nbx_t", "__nbx_len", "__nbx_cat",
                                                 "__nbx_pow"};

/* ========================================================================
 * Errors and memory
 * ======================================================================== */

_Noreturn static void ls_throw(ls_state *ls, int rc)
{
    ls->rc = rc;
    longjmp(ls->fail, 1);
}

_Noreturn NBX_PRINTF(3, 4) static void ls_fail(ls_state *ls, uint32_t line, const char *fmt, ...)
{
    char msg[NBX_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* A refusal of the output names the policy's line too (lines are kept)
     * and says that the rewrite is what went over the limit. */
    nbx_err_set(ls->e, NBX_EPOLICY, "%s:%u: %s%s", ls->chunk, line,
                ls->verify ? "once instrumented, " : "", msg);
    ls_throw(ls, NBX_EPOLICY);
}

_Noreturn static void ls_oom(ls_state *ls)
{
    nbx_err_set(ls->e, NBX_ENOMEM, "%s: out of memory while instrumenting the policy", ls->chunk);
    ls_throw(ls, NBX_ENOMEM);
}

/* Grow an array to hold need elements (doubling); fails the pass on
 * overflow or allocation failure. The old block stays owned by the caller's
 * pointer until realloc succeeds, so cleanup frees whichever is current. */
static void *ls_grow(ls_state *ls, void *p, uint32_t *cap, uint64_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    uint64_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap *= 2;
    if (ncap > UINT32_MAX || ncap > SIZE_MAX / elem)
        ls_oom(ls);
    void *q = realloc(p, (size_t)ncap * elem);
    if (!q)
        ls_oom(ls);
    *cap = (uint32_t)ncap;
    return q;
}

/* The source text of token i, for "near '...'" (LuaJIT's wording). */
static void ls_quote(const ls_state *ls, uint32_t i, char *out, size_t n)
{
    const ls_tok *t = &ls->tok[i];
    if (t->type == T_EOF) {
        snprintf(out, n, "<eof>");
        return;
    }
    uint32_t k = t->len > LS_QUOTE_MAX ? LS_QUOTE_MAX : t->len;
    snprintf(out, n, "%.*s%s", (int)k, (const char *)ls->src + t->start, k < t->len ? "..." : "");
}

_Noreturn static void ls_fail_near(ls_state *ls, const char *what)
{
    char near[LS_QUOTE_MAX + 8];
    ls_quote(ls, ls->p, near, sizeof near);
    ls_fail(ls, ls->tok[ls->p].line, "%s near '%s'", what, near);
}

/* LuaJIT's err_limit: "main function has more than 200 local variables";
 * why says what the instrumentation added, when it is what overflowed. */
_Noreturn static void ls_fail_limit(ls_state *ls, uint32_t line, const ls_func *f, uint32_t limit,
                                    const char *what, const char *why)
{
    char where[48];
    if (f->line == 0)
        snprintf(where, sizeof where, "main function");
    else
        snprintf(where, sizeof where, "function at line %u", f->line);
    ls_fail(ls, line, "%s has more than %u %s%s", where, limit, what, ls->verify ? why : "");
}

/* ========================================================================
 * Names
 * ======================================================================== */

static uint32_t ls_intern(ls_state *ls, const char *ptr, uint32_t len)
{
    /* Seeded per call: a policy cannot be written to make every name
     * collide, so interning stays linear. */
    uint32_t h = (uint32_t)XXH3_64bits_withSeed(ptr, len, ls->seed);
    uint32_t mask = ls->slotcap - 1;
    for (uint32_t s = h & mask;; s = (s + 1) & mask) {
        uint32_t id = ls->slots[s];
        if (id == 0)
            break;
        const ls_namerec *nm = &ls->names[id - 1];
        if (nm->hash == h && nm->len == len && memcmp(nm->ptr, ptr, len) == 0)
            return id - 1;
    }
    if ((uint64_t)(ls->nnames + 1) * 2 > ls->slotcap) {
        /* Rehash into twice the slots. */
        uint32_t ncap = ls->slotcap * 2;
        if (ncap == 0 || ncap > (UINT32_MAX >> 2))
            ls_oom(ls);
        uint32_t *ns = calloc(ncap, sizeof *ns);
        if (!ns)
            ls_oom(ls);
        for (uint32_t i = 0; i < ls->nnames; i++) {
            uint32_t s = ls->names[i].hash & (ncap - 1);
            while (ns[s])
                s = (s + 1) & (ncap - 1);
            ns[s] = i + 1;
        }
        free(ls->slots);
        ls->slots = ns;
        ls->slotcap = ncap;
        mask = ncap - 1;
    }
    uint32_t id = ls->nnames;
    ls->names = ls_grow(ls, ls->names, &ls->namecap, (uint64_t)id + 1, sizeof *ls->names);
    ls->names[id] = (ls_namerec){ptr, len, h};
    ls->nnames = id + 1;
    uint32_t s = h & mask;
    while (ls->slots[s])
        s = (s + 1) & mask;
    ls->slots[s] = id + 1;
    return id;
}

/* ========================================================================
 * Lexer (lj_lex.c)
 * ======================================================================== */

/* Character classes as LuaJIT's lexer sees them (lj_char.c): every byte
 * >= 0x80 counts as a letter. */
enum { C_IDENT = 1, C_DIGIT = 2, C_XDIGIT = 4, C_SPACE = 8 };
/* One row per 16 bytes. */
/* clang-format off */
static const uint8_t ls_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0, 0, 0, 0, 0, 0,
    0, 5, 5, 5, 5, 5, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1,
    0, 5, 5, 5, 5, 5, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};
/* clang-format on */

static inline bool ls_ident(unsigned c)
{
    return ls_class[c & 0xff] & C_IDENT;
}
static inline bool ls_digit(unsigned c)
{
    return ls_class[c & 0xff] & C_DIGIT;
}
static inline bool ls_xdigit(unsigned c)
{
    return ls_class[c & 0xff] & C_XDIGIT;
}
static inline bool ls_eol(unsigned c)
{
    return c == '\n' || c == '\r';
}
static inline bool ls_space(unsigned c)
{
    return ls_class[c & 0xff] & C_SPACE;
}

/* Past the line break at i: "\n", "\r", "\r\n" and "\n\r" are one each. */
static uint32_t ls_newline(const unsigned char *s, uint32_t i, uint32_t n)
{
    unsigned c = s[i++];
    if (i < n && ls_eol(s[i]) && s[i] != c)
        i++;
    return i;
}

/* The level of a long bracket opening at i ("[" "="* "["): its count of
 * '=', or -1 for a lone '[' and -2 for '[' and '=' not followed by '['. */
static int64_t ls_long_level(const unsigned char *s, uint32_t i, uint32_t n)
{
    uint32_t j = i + 1;
    while (j < n && s[j] == '=')
        j++;
    if (j < n && s[j] == '[')
        return (int64_t)(j - i - 1);
    return j == i + 1 ? -1 : -2;
}

/* Skip a long string or comment of the given level whose opening bracket
 * starts at i; returns the offset past its closing bracket. */
static uint32_t ls_long_body(ls_state *ls, uint32_t i, uint32_t level, uint32_t *line, bool comment)
{
    const unsigned char *s = ls->src;
    uint32_t n = ls->len, start_line = *line;
    i += level + 2;
    while (i < n) {
        unsigned c = s[i];
        if (c == ']') {
            uint32_t j = i + 1;
            while (j < n && s[j] == '=')
                j++;
            if (j < n && s[j] == ']' && j - i - 1 == level)
                return j + 1;
            i = j; /* the '=' cannot start a closing bracket */
        } else if (ls_eol(c)) {
            i = ls_newline(s, i, n);
            (*line)++;
        } else {
            i++;
        }
    }
    ls_fail(ls, *line, "unfinished long %s (starting at line %u) near '<eof>'",
            comment ? "comment" : "string", start_line);
}

/* A quoted string starting at i, with LuaJIT's escapes; returns the offset
 * past its closing quote. */
static uint32_t ls_short_string(ls_state *ls, uint32_t i, uint32_t *line)
{
    const unsigned char *s = ls->src;
    uint32_t n = ls->len;
    unsigned delim = s[i++];
    while (i < n) {
        unsigned c = s[i];
        if (c == delim)
            return i + 1;
        if (ls_eol(c))
            ls_fail(ls, *line, "unfinished string");
        if (c != '\\') {
            i++;
            continue;
        }
        if (++i >= n)
            break;
        c = s[i];
        switch (c) {
        case 'a':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
        case 'v':
        case '\\':
        case '"':
        case '\'':
            i++;
            break;
        case 'x':
            if (i + 2 >= n || !ls_xdigit(s[i + 1]) || !ls_xdigit(s[i + 2]))
                ls_fail(ls, *line, "invalid escape sequence");
            i += 3;
            break;
        case 'u': {
            if (i + 1 >= n || s[i + 1] != '{')
                ls_fail(ls, *line, "invalid escape sequence");
            i += 2;
            uint32_t v = 0;
            do {
                if (i >= n || !ls_xdigit(s[i]))
                    ls_fail(ls, *line, "invalid escape sequence");
                v = (v << 4) | (ls_digit(s[i]) ? s[i] - '0' : (s[i] | 0x20) - 'a' + 10);
                if (v >= 0x110000)
                    ls_fail(ls, *line, "invalid escape sequence");
                i++;
            } while (i < n && s[i] != '}');
            if (i >= n)
                ls_fail(ls, *line, "invalid escape sequence");
            if (v >= 0xd800 && v < 0xe000)
                ls_fail(ls, *line, "invalid escape sequence");
            i++;
            break;
        }
        case 'z':
            i++;
            while (i < n && ls_space(s[i])) {
                if (ls_eol(s[i])) {
                    i = ls_newline(s, i, n);
                    (*line)++;
                } else {
                    i++;
                }
            }
            break;
        case '\n':
        case '\r':
            i = ls_newline(s, i, n);
            (*line)++;
            break;
        default:
            if (!ls_digit(c))
                ls_fail(ls, *line, "invalid escape sequence");
            /* Up to three decimal digits, at most 255. */
            if (i + 1 < n && ls_digit(s[i + 1])) {
                if (i + 2 < n && ls_digit(s[i + 2])) {
                    unsigned v = (c - '0') * 100 + (s[i + 1] - '0') * 10 + (s[i + 2] - '0');
                    if (v > 255)
                        ls_fail(ls, *line, "invalid escape sequence");
                    i++;
                }
                i++;
            }
            i++;
            break;
        }
    }
    ls_fail(ls, *line, "unfinished string near '<eof>'");
}

enum { LS_NUM_OK, LS_NUM_BAD, LS_NUM_FFI };

/* Whether LuaJIT's lj_strscan_scan reads the token as a number: decimal,
 * hex (with 'p' exponents and fractions) and binary (0b) forms, or as one of
 * the FFI's 64-bit integer and imaginary literals. The byte past the token
 * reads as 0, like the NUL LuaJIT scans up to. (LuaJIT also refuses more
 * than 2^20 fraction digits; a policy cannot be that large.) */
static int ls_number_check(const unsigned char *t, uint32_t m)
{
#define AT(k) ((k) < m ? t[k] : 0u)
    uint32_t p = 0, dig = 0;
    int base = 10;
    bool hasdig = false, dot = false, isint = true;
    if (AT(0) <= '0') {
        if (AT(0) == '0') {
            if ((AT(1) | 0x20) == 'x')
                base = 16, p = 2;
            else if ((AT(1) | 0x20) == 'b')
                base = 2, p = 2;
        }
        for (;; p++) {
            if (AT(p) == '0') {
                hasdig = true;
            } else if (AT(p) == '.') {
                if (dot)
                    return LS_NUM_BAD;
                dot = true;
            } else {
                break;
            }
        }
    }
    uint32_t digits_at = p;
    for (;; p++) {
        unsigned c = AT(p);
        if (base == 16 ? ls_xdigit(c) : ls_digit(c)) {
            dig++;
        } else if (c == '.') {
            if (dot)
                return LS_NUM_BAD;
            dot = true;
        } else {
            break;
        }
    }
    if (!hasdig && !dig)
        return LS_NUM_BAD;
    if (dot) {
        if (base == 2)
            return LS_NUM_BAD;
        isint = false;
    }
    if (base == 2) {
        if (dig > 64)
            return LS_NUM_BAD;
        for (uint32_t k = digits_at; k < p; k++)
            if ((t[k] & ~1u) != '0')
                return LS_NUM_BAD;
    }
    if (base >= 10 && (AT(p) | 0x20) == (base == 16 ? 'p' : 'e')) {
        p++;
        isint = false;
        if (AT(p) == '+' || AT(p) == '-')
            p++;
        if (!ls_digit(AT(p)))
            return LS_NUM_BAD;
        uint32_t x = AT(p) & 15u;
        for (p++; ls_digit(AT(p)); p++) {
            x = x * 10 + (AT(p) & 15u);
            if (x >= LS_STRSCAN_MAXEXP)
                return LS_NUM_BAD;
        }
    }
    if (p == m)
        return LS_NUM_OK;
    /* Suffixes: i (imaginary), LL, ULL, LLU: FFI cdata. */
    if ((AT(p) | 0x20) == 'i')
        return p + 1 == m ? LS_NUM_FFI : LS_NUM_BAD;
    if (!isint)
        return LS_NUM_BAD;
    bool u = false;
    if ((AT(p) | 0x20) == 'u')
        p++, u = true;
    if ((AT(p) | 0x20) != 'l' || (AT(p + 1) | 0x20) != 'l')
        return LS_NUM_BAD;
    p += 2;
    if (!u && (AT(p) | 0x20) == 'u')
        p++;
    return p == m ? LS_NUM_FFI : LS_NUM_BAD;
#undef AT
}

/* A numeric literal starting at i (a digit, or '.' and a digit). LuaJIT
 * reads letters, digits, '_', '.' and bytes >= 0x80 into it, and a sign
 * after the exponent letter, then scans the whole. */
static uint32_t ls_number(ls_state *ls, uint32_t i, uint32_t line)
{
    const unsigned char *s = ls->src;
    uint32_t n = ls->len, j = i;
    unsigned xp = 'e', c = s[i];
    if (c == '0' && i + 1 < n && (s[i + 1] | 0x20) == 'x')
        xp = 'p';
    while (j < n &&
           (ls_ident(s[j]) || s[j] == '.' || ((s[j] == '-' || s[j] == '+') && (c | 0x20) == xp))) {
        c = s[j];
        j++;
    }
    int rc = ls_number_check(s + i, j - i);
    if (rc == LS_NUM_OK)
        return j;
    uint32_t k = j - i > LS_QUOTE_MAX ? LS_QUOTE_MAX : j - i;
    if (rc == LS_NUM_FFI)
        ls_fail(ls, line,
                "'%.*s': 64-bit integer and imaginary number literals (1LL, 2ULL, 3i) need "
                "the FFI, which policies do not have",
                (int)k, (const char *)s + i);
    ls_fail(ls, line, "malformed number near '%.*s'", (int)k, (const char *)s + i);
}

/* The reserved word a name is, or T_NAME. */
static uint8_t ls_word(const unsigned char *p, uint32_t n)
{
#define W(text, type)                                                                              \
    if (n == sizeof text - 1 && memcmp(p, text, sizeof text - 1) == 0)                             \
        return type;
    switch (p[0]) {
    case 'a':
        W("and", T_AND);
        break;
    case 'b':
        W("break", T_BREAK);
        break;
    case 'd':
        W("do", T_DO);
        break;
    case 'e':
        W("end", T_END);
        W("else", T_ELSE);
        W("elseif", T_ELSEIF);
        break;
    case 'f':
        W("for", T_FOR);
        W("false", T_FALSE);
        W("function", T_FUNCTION);
        break;
    case 'g':
        W("goto", T_GOTO);
        break;
    case 'i':
        W("if", T_IF);
        W("in", T_IN);
        break;
    case 'l':
        W("local", T_LOCAL);
        break;
    case 'n':
        W("nil", T_NIL);
        W("not", T_NOT);
        break;
    case 'o':
        W("or", T_OR);
        break;
    case 'r':
        W("return", T_RETURN);
        W("repeat", T_REPEAT);
        break;
    case 't':
        W("then", T_THEN);
        W("true", T_TRUE);
        break;
    case 'u':
        W("until", T_UNTIL);
        break;
    case 'w':
        W("while", T_WHILE);
        break;
    }
    return T_NAME;
#undef W
}

static inline void ls_push(ls_state *ls, uint8_t type, uint32_t start, uint32_t end, uint32_t line,
                           bool nl)
{
    if (NBX_UNLIKELY(ls->ntok == ls->tokcap))
        ls->tok = ls_grow(ls, ls->tok, &ls->tokcap, (uint64_t)ls->ntok + 1, sizeof *ls->tok);
    ls->tok[ls->ntok++] = (ls_tok){.start = start,
                                   .len = end - start,
                                   .line = line,
                                   .name = LS_NONE,
                                   .type = type,
                                   .flags = nl ? LS_NL_BEFORE : 0};
}

/* Where the chunk's code starts: after a UTF-8 BOM, and after a first line
 * beginning with '#' (LuaJIT skips both). LS_NONE when that line runs to
 * the end: there is no chunk. */
static uint32_t ls_skip_header(ls_state *ls, uint32_t *line)
{
    const unsigned char *s = ls->src;
    uint32_t n = ls->len, i = 0;
    if (n >= 3 && s[0] == 0xef && s[1] == 0xbb && s[2] == 0xbf)
        i = 3;
    if (i < n && s[i] == '#') {
        while (i < n && !ls_eol(s[i]))
            i++;
        if (i == n)
            return LS_NONE;
        i = ls_newline(s, i, n);
        (*line)++;
    }
    return i;
}

/* The end of a tick written at i (HEAD, a weight of 1 to 3 digits, TAIL),
 * or i when there is none. */
static uint32_t ls_tick_token(const unsigned char *s, uint32_t n, uint32_t i)
{
    uint32_t j = i;
    if (n - j < ls_tick_head.n || memcmp(s + j, ls_tick_head.s, ls_tick_head.n) != 0)
        return i;
    j += (uint32_t)ls_tick_head.n;
    uint32_t digits = j;
    while (j < n && j - digits < 3 && ls_digit(s[j]))
        j++;
    if (j == digits || n - j < ls_tick_tail.n || memcmp(s + j, ls_tick_tail.s, ls_tick_tail.n) != 0)
        return i;
    return j + (uint32_t)ls_tick_tail.n;
}

static void ls_lex(ls_state *ls)
{
    const unsigned char *s = ls->src;
    uint32_t n = ls->len, line = 1;
    uint32_t i = ls_skip_header(ls, &line);
    ls->prologue_at = i;
    if (i == LS_NONE)
        i = n;
    bool nl = false;
    for (;;) {
        /* Blanks and comments. */
        while (i < n) {
            unsigned c = s[i];
            if (ls_eol(c)) {
                i = ls_newline(s, i, n);
                line++;
                nl = true;
            } else if (c == ' ' || c == '\t' || c == '\v' || c == '\f') {
                i++;
            } else if (c == '-' && i + 1 < n && s[i + 1] == '-') {
                i += 2;
                if (i < n && s[i] == '[') {
                    int64_t lv = ls_long_level(s, i, n);
                    if (lv >= 0) {
                        uint32_t l0 = line;
                        i = ls_long_body(ls, i, (uint32_t)lv, &line, true);
                        nl |= line != l0;
                        continue;
                    }
                }
                while (i < n && !ls_eol(s[i]))
                    i++;
            } else {
                break;
            }
        }
        if (i >= n) {
            ls_push(ls, T_EOF, n, n, line, nl);
            return;
        }
        uint32_t start = i, tline = line;
        unsigned c = s[i];
        uint8_t type;
        if (ls_ident(c)) {
            if (ls_digit(c)) {
                i = ls_number(ls, i, line);
                type = T_NUMBER;
            } else if (ls->tick_tokens && (i = ls_tick_token(s, n, start)) != start) {
                type = T_TICK;
            } else {
                while (i < n && ls_ident(s[i]))
                    i++;
                type = ls_word(s + start, i - start);
                if (!ls->trusted && !ls->verify && i - start >= 5 &&
                    memcmp(s + start, "__nbx", 5) == 0)
                    ls_fail(ls, line,
                            "the name '%.*s' is reserved: names beginning with __nbx belong "
                            "to the engine",
                            (int)(i - start > LS_QUOTE_MAX ? LS_QUOTE_MAX : i - start),
                            (const char *)s + start);
            }
        } else {
            i++;
            switch (c) {
            case '"':
            case '\'':
                i = ls_short_string(ls, start, &line);
                type = T_STRING;
                break;
            case '[': {
                int64_t lv = ls_long_level(s, start, n);
                if (lv >= 0) {
                    i = ls_long_body(ls, start, (uint32_t)lv, &line, false);
                    type = T_STRING;
                } else if (lv == -1) {
                    type = T_LBRACKET;
                } else {
                    ls_fail(ls, line, "invalid long string delimiter");
                }
                break;
            }
            case '=':
                type = i < n && s[i] == '=' ? (i++, T_EQ) : T_ASSIGN;
                break;
            case '<':
                type = i < n && s[i] == '=' ? (i++, T_LE) : T_LT;
                break;
            case '>':
                type = i < n && s[i] == '=' ? (i++, T_GE) : T_GT;
                break;
            case '~':
                if (i >= n || s[i] != '=')
                    ls_fail(ls, line, "unexpected symbol near '~'");
                i++;
                type = T_NE;
                break;
            case ':':
                type = i < n && s[i] == ':' ? (i++, T_DBCOLON) : T_COLON;
                break;
            case '.':
                if (i < n && s[i] == '.') {
                    i++;
                    type = i < n && s[i] == '.' ? (i++, T_DOTS) : T_CONCAT;
                } else if (i < n && ls_digit(s[i])) {
                    i = ls_number(ls, start, line);
                    type = T_NUMBER;
                } else {
                    type = T_DOT;
                }
                break;
            case '+':
                type = T_PLUS;
                break;
            case '-':
                type = T_MINUS;
                break;
            case '*':
                type = T_STAR;
                break;
            case '/':
                type = T_SLASH;
                break;
            case '%':
                type = T_PERCENT;
                break;
            case '^':
                type = T_CARET;
                break;
            case '#':
                type = T_HASH;
                break;
            case '(':
                type = T_LPAREN;
                break;
            case ')':
                type = T_RPAREN;
                break;
            case '{':
                type = T_LBRACE;
                break;
            case '}':
                type = T_RBRACE;
                break;
            case ']':
                type = T_RBRACKET;
                break;
            case ';':
                type = T_SEMI;
                break;
            case ',':
                type = T_COMMA;
                break;
            default: {
                /* LuaJIT's parser refuses any other byte as a token. */
                char shown[16];
                if (c >= 0x20 && c < 0x7f)
                    snprintf(shown, sizeof shown, "%c", c);
                else
                    snprintf(shown, sizeof shown, "char(%u)", c);
                ls_fail(ls, line, "unexpected symbol near '%s'", shown);
            }
            }
        }
        ls_push(ls, type, start, i, tline, nl);
        if (type == T_NAME || type == T_GOTO)
            ls->tok[ls->ntok - 1].name = ls_intern(ls, (const char *)s + start, i - start);
        nl = false;
    }
}

/* ========================================================================
 * Edits (recorded by the parser, written by ls_emit)
 * ======================================================================== */

/* A tick before token t that counts `work` operations (at least 1). */
static void ls_tick_before(ls_state *ls, uint32_t t, uint32_t work)
{
    if (!ls->edit)
        return;
    ls->edit[t].ticks_before++;
    if (work > ls->edit[t].weight)
        ls->edit[t].weight = (uint8_t)(work > 255 ? 255 : work);
}

static void ls_tick_after(ls_state *ls, uint32_t t)
{
    if (ls->edit)
        ls->edit[t].ticks_after++;
}

/* Openings are recorded innermost first (an enclosing expression is known
 * only once its parts are parsed) and written outermost first: prepend. */
static void ls_open_before(ls_state *ls, uint32_t t, uint8_t kind)
{
    if (!ls->edit)
        return;
    ls->opens = ls_grow(ls, ls->opens, &ls->opencap, (uint64_t)ls->nopens + 1, sizeof *ls->opens);
    ls->opens[ls->nopens] = (ls_open){.next = ls->edit[t].opens, .kind = kind};
    ls->edit[t].opens = ++ls->nopens;
}

static void ls_close_after(ls_state *ls, uint32_t t)
{
    if (ls->edit)
        ls->edit[t].closes++;
}

/* ========================================================================
 * Scopes: locals, functions, upvalues
 * ======================================================================== */

static ls_func *ls_cur(ls_state *ls)
{
    return &ls->fs[ls->fn];
}

static uint32_t ls_nactvar(ls_state *ls)
{
    return ls->nvars - ls_cur(ls)->var_base;
}

/* LuaJIT checks the count as it declares k new locals at once. */
static void ls_locals_room(ls_state *ls, uint32_t k, uint32_t line)
{
    if ((uint64_t)ls_nactvar(ls) + k > LS_MAX_LOCVAR)
        ls_fail_limit(ls, line, ls_cur(ls), LS_MAX_LOCVAR, "local variables",
                      " (the engine adds 5 locals to the main function)");
}

static void ls_declare(ls_state *ls, uint32_t name)
{
    ls->vars = ls_grow(ls, ls->vars, &ls->varcap, (uint64_t)ls->nvars + 1, sizeof *ls->vars);
    int32_t v = (int32_t)ls->nvars++;
    ls->vars[v] = (ls_var){.name = name, .prev = -1, .fn = ls->fn};
    if (name != LS_NONE) {
        ls->vars[v].prev = ls->top[name];
        ls->top[name] = v;
    }
}

/* Declare the local named by token t. Even trusted code may not shadow the
 * prologue's names: the ticks would then use its variable. */
static void ls_declare_tok(ls_state *ls, uint32_t t)
{
    uint32_t name = ls->tok[t].name;
    if (!ls->verify)
        for (size_t k = 0; k < NBX_ARRAY_LEN(ls->reserved); k++)
            if (ls->reserved[k] == name)
                ls_fail(ls, ls->tok[t].line, "'%s' is the engine's own name and cannot be declared",
                        ls_reserved_names[k]);
    ls_declare(ls, name);
}

static void ls_scope_end(ls_state *ls, uint32_t base)
{
    while (ls->nvars > base) {
        const ls_var *v = &ls->vars[--ls->nvars];
        if (v->name != LS_NONE)
            ls->top[v->name] = v->prev;
    }
}

/* A local of an enclosing function becomes an upvalue of every function
 * between it and here (LuaJIT's var_lookup_). Each function's list is at
 * most LS_MAX_UPVAL long, and the walk stops at the first function that
 * already has it, so a lookup costs O(LS_MAX_UPVAL). */
static void ls_upvalue(ls_state *ls, int32_t v)
{
    for (uint32_t k = ls->fn; k > ls->vars[v].fn; k--) {
        ls_func *f = &ls->fs[k];
        for (uint32_t i = 0; i < f->nuv; i++)
            if (f->uv[i] == (uint32_t)v)
                return;
        if (f->nuv >= LS_MAX_UPVAL)
            ls_fail_limit(ls, ls->tok[ls->p].line, f, LS_MAX_UPVAL, "upvalues",
                          " (the engine's time checks use up to 4 of them)");
        f->uv[f->nuv++] = (uint32_t)v;
    }
}

/* The local a name refers to here (-1: a global). */
static int32_t ls_resolve(ls_state *ls, uint32_t name)
{
    if (NBX_UNLIKELY(ls->summarize)) {
        for (uint32_t k = 0;; k++) {
            if (k == ls->tick.nnames) {
                if (k == NBX_ARRAY_LEN(ls->tick.names))
                    ls_fail(ls, 1, "uses too many names");
                ls->tick.names[ls->tick.nnames++] = name;
                break;
            }
            if (ls->tick.names[k] == name)
                break;
        }
    }
    int32_t v = ls->top[name];
    if (v >= 0 && ls->vars[v].fn < ls->fn)
        ls_upvalue(ls, v);
    return v;
}

/* ========================================================================
 * Parser helpers
 * ======================================================================== */

static inline uint8_t ls_t(const ls_state *ls)
{
    return ls->tok[ls->p].type;
}

static inline uint32_t ls_line(const ls_state *ls)
{
    return ls->tok[ls->p].line;
}

static inline void ls_next(ls_state *ls)
{
    if (ls->tok[ls->p].type != T_EOF)
        ls->p++;
}

static bool ls_opt(ls_state *ls, uint8_t type)
{
    if (ls_t(ls) != type)
        return false;
    ls_next(ls);
    return true;
}

_Noreturn static void ls_expected(ls_state *ls, uint8_t type)
{
    char what[32];
    snprintf(what, sizeof what, "'%s' expected", ls_type_text[type]);
    ls_fail_near(ls, what);
}

static void ls_check(ls_state *ls, uint8_t type)
{
    if (!ls_opt(ls, type))
        ls_expected(ls, type);
}

/* The closing token of a construct opened at line (LuaJIT's lex_match). */
static void ls_match(ls_state *ls, uint8_t what, uint8_t who, uint32_t line)
{
    if (ls_opt(ls, what))
        return;
    if (line == ls_line(ls))
        ls_expected(ls, what);
    char msg[96];
    snprintf(msg, sizeof msg, "'%s' expected (to close '%s' at line %u)", ls_type_text[what],
             ls_type_text[who], line);
    ls_fail_near(ls, msg);
}

/* LuaJIT accepts `goto` as a name wherever a name is expected. */
static inline bool ls_is_name(uint8_t type)
{
    return type == T_NAME || type == T_GOTO;
}

/* A name token; returns its index. */
static uint32_t ls_name(ls_state *ls)
{
    if (!ls_is_name(ls_t(ls)))
        ls_expected(ls, T_NAME);
    return ls->p++;
}

static bool ls_block_end(uint8_t type)
{
    return type == T_EOF || type == T_END || type == T_ELSE || type == T_ELSEIF || type == T_UNTIL;
}

_Noreturn static void ls_fail_nesting(ls_state *ls)
{
    ls_fail(ls, ls_line(ls),
            "the code nests too deeply: LuaJIT accepts %d levels of blocks, functions, "
            "brackets and operators%s",
            LS_MAX_XLEVEL,
            ls->verify ? " (the rewrite of '..', '#' and '^' into calls adds levels): split the "
                         "expression"
                       : "");
}

static void ls_level_enter(ls_state *ls)
{
    if (++ls->level >= LS_MAX_XLEVEL)
        ls_fail_nesting(ls);
    if (ls->level > ls->max_level)
        ls->max_level = ls->level;
}

static uint32_t ls_add(uint32_t a, uint32_t b)
{
    uint32_t s = a + b;
    return s < a ? UINT32_MAX : s;
}

/* Refuse a statement doing more than max_work operations; returns whether
 * it does any (and so needs a tick before it). */
static bool ls_work_check(ls_state *ls, uint32_t first, uint32_t work)
{
    if (ls->verify)
        return false;
    if (work > ls->max_work)
        ls_fail(ls, ls->tok[first].line,
                "this statement does %u operations (calls, concatenations, comparisons, "
                "arithmetic); the limit is %u: split it into smaller statements",
                work, ls->max_work);
    return work > 0;
}

static void ls_stmt_work(ls_state *ls, uint32_t first, uint32_t work)
{
    if (ls_work_check(ls, first, work))
        ls_tick_before(ls, first, work);
}

/* LuaJIT gives a function 250 register slots (LJ_MAX_SLOTS): its active
 * locals and the temporaries of the statement being compiled. `regs` is an
 * upper bound of the latter that follows LuaJIT's allocation (operands wait
 * in registers, call arguments take consecutive ones). The rewrite needs
 * more than the original (a call takes three slots where `..` took one; the
 * prologue's locals count in the main function), hence the check on the
 * output too. */
/* A loop or an if statement is compiled with jumps across its bodies, which
 * LuaJIT encodes in 16 bits. `ins` is an upper bound of the instructions
 * it compiles to (a load per operand, one per operation, five for a
 * comparison's value, ...). The ticks add instructions to every body, so an
 * original within the range may not be once instrumented. */
static uint32_t ls_jump_check(ls_state *ls, uint32_t first, uint32_t ins)
{
    if (ls->verify && ins > LS_MAX_JUMP)
        ls_fail(ls, ls->tok[first].line,
                "this statement may compile to %u bytecode instructions, more than the %d a "
                "LuaJIT jump spans: move part of its body into a function",
                ins, LS_MAX_JUMP);
    return ins;
}

static void ls_regs_check(ls_state *ls, uint32_t first, uint32_t regs)
{
    uint64_t need = (uint64_t)ls_nactvar(ls) + regs;
    if (regs > ls->max_regs)
        ls->max_regs = regs;
    if (need >= LS_MAX_SLOTS)
        ls_fail(ls, ls->tok[first].line,
                "this statement needs %llu registers, with the locals in scope; LuaJIT allows "
                "%d%s: split it into smaller statements",
                (unsigned long long)need, LS_MAX_SLOTS - 1,
                ls->verify
                    ? " (the calls that replace '..', '#' and '^' take more than the operators)"
                    : "");
}

/* ========================================================================
 * Expressions (lj_parse.c: expr_binop and below)
 * ======================================================================== */

static void ls_chunk(ls_state *ls, ls_blockinfo *bi);
static void ls_expr(ls_state *ls, ls_exp *v);
static void ls_body(ls_state *ls, bool needself, uint32_t line);

enum ls_op {
    OP_NONE,
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_MOD,
    OP_POW,
    OP_CONCAT,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_AND,
    OP_OR
};

/* Left and right priorities (lj_parse.c): `^` and `..` are right
 * associative, `..` binds looser than `+ -` and tighter than comparisons. */
static const struct {
    uint8_t left, right;
} ls_prio[] = {{0, 0}, {6, 6}, {6, 6}, {7, 7}, {7, 7}, {7, 7}, {10, 9}, {5, 4},
               {3, 3}, {3, 3}, {3, 3}, {3, 3}, {3, 3}, {3, 3}, {2, 2},  {1, 1}};

static int ls_binop(uint8_t type)
{
    switch (type) {
    case T_PLUS:
        return OP_ADD;
    case T_MINUS:
        return OP_SUB;
    case T_STAR:
        return OP_MUL;
    case T_SLASH:
        return OP_DIV;
    case T_PERCENT:
        return OP_MOD;
    case T_CARET:
        return OP_POW;
    case T_CONCAT:
        return OP_CONCAT;
    case T_EQ:
        return OP_EQ;
    case T_NE:
        return OP_NE;
    case T_LT:
        return OP_LT;
    case T_LE:
        return OP_LE;
    case T_GT:
        return OP_GT;
    case T_GE:
        return OP_GE;
    case T_AND:
        return OP_AND;
    case T_OR:
        return OP_OR;
    default:
        return OP_NONE;
    }
}

static bool ls_multi(const ls_exp *v)
{
    return v->kind == K_CALL || v->kind == K_VARARG;
}

/* The last argument of a call created by the rewrite: a call or `...` there
 * would pass all its values, where the operator took one. */
static void ls_one_value(ls_state *ls, const ls_exp *v)
{
    if (ls_multi(v)) {
        ls_open_before(ls, v->first, LS_OPEN_PAREN);
        ls_close_after(ls, v->last);
    }
}

static uint32_t ls_max(uint32_t a, uint32_t b)
{
    return a > b ? a : b;
}

/* An expression list, each value in the next register (LuaJIT's expr_list):
 * the i-th (from 0) is evaluated with i registers taken. */
typedef struct ls_list {
    uint32_t work, regs, ins, count;
    ls_exp last;
} ls_list;

static void ls_explist(ls_state *ls, ls_list *l)
{
    *l = (ls_list){0};
    for (;;) {
        ls_expr(ls, &l->last);
        l->work = ls_add(l->work, l->last.work);
        l->regs = ls_max(l->regs, ls_add(l->count, l->last.regs));
        l->ins = ls_add(l->ins, l->last.ins);
        l->count++;
        if (!ls_opt(ls, T_COMMA))
            break;
    }
}

/* Table constructor: adds its fields' work to *work, returns the registers
 * it may use (the table, a key, a value; each field's are freed after it). */
static uint32_t ls_table(ls_state *ls, uint32_t *work, uint32_t *ins)
{
    uint32_t line = ls_line(ls), w = 0, field_regs = 0, in = 1; /* TNEW */
    ls_check(ls, T_LBRACE);
    while (ls_t(ls) != T_RBRACE) {
        ls_exp k, v;
        uint32_t key_regs = 0;
        if (ls_t(ls) == T_LBRACKET) {
            ls_next(ls);
            ls_expr(ls, &k);
            w = ls_add(w, k.work);
            key_regs = k.regs;
            in = ls_add(in, k.ins);
            ls_check(ls, T_RBRACKET);
            ls_check(ls, T_ASSIGN);
        } else if (ls_is_name(ls_t(ls))) {
            /* LuaJIT looks one token ahead for `name =`; a '(' read that way
             * escapes its ambiguous-call check ({f\n(x)} is a call). */
            if (ls->tok[ls->p + 1].type == T_ASSIGN)
                ls->p += 2;
            else
                ls->amb_skip = ls->p + 1;
        }
        ls_expr(ls, &v);
        w = ls_add(w, v.work);
        in = ls_add(in, ls_add(v.ins, 1)); /* and its store */
        /* A value in a register and its key in another (a constant key
         * needs one too past LuaJIT's 256 inline ones). */
        uint32_t f = ls_max(v.regs, 2);
        if (key_regs)
            f = ls_max(key_regs, ls_add(f, 1));
        field_regs = ls_max(field_regs, f);
        if (!ls_opt(ls, T_COMMA) && !ls_opt(ls, T_SEMI))
            break;
    }
    ls_match(ls, T_RBRACE, T_LBRACE, line);
    *work = ls_add(*work, w);
    *ins = ls_add(*ins, in);
    return ls_add(field_regs, 1);
}

/* Call arguments: adds their work to *work, returns the registers they may
 * use above the call's own (function and frame slots). */
static uint32_t ls_args(ls_state *ls, uint32_t *work, uint32_t *ins)
{
    switch (ls_t(ls)) {
    case T_LPAREN: {
        const ls_tok *t = &ls->tok[ls->p];
        if ((t->flags & LS_NL_BEFORE) && ls->p != ls->amb_skip)
            ls_fail_near(ls, "ambiguous syntax (function call x new statement)");
        uint32_t line = t->line, regs = 0;
        ls_next(ls);
        if (ls_t(ls) != T_RPAREN) {
            ls_list l;
            ls_explist(ls, &l);
            *work = ls_add(*work, l.work);
            *ins = ls_add(*ins, l.ins);
            regs = l.regs;
        }
        ls_match(ls, T_RPAREN, T_LPAREN, line);
        return regs;
    }
    case T_LBRACE:
        return ls_table(ls, work, ins);
    case T_STRING:
        ls_next(ls);
        *ins = ls_add(*ins, 1);
        return 1;
    default:
        ls_fail_near(ls, "function arguments expected");
    }
}

/* A key LuaJIT encodes in the instruction itself: a literal integer 0..255
 * (t[1]). Other constants may need a load: LuaJIT inlines only the first
 * 256 constants of a function. */
static bool ls_byte_key(const ls_state *ls, const ls_exp *k)
{
    if (k->first != k->last || ls->tok[k->first].type != T_NUMBER)
        return false;
    const ls_tok *t = &ls->tok[k->first];
    if (t->len > 3)
        return false;
    unsigned v = 0;
    for (uint32_t i = 0; i < t->len; i++) {
        unsigned c = ls->src[t->start + i];
        if (!(c >= '0' && c <= '9'))
            return false;
        v = v * 10 + (c - '0');
    }
    return v <= 255;
}

/* A prefix expression and its suffixes (LuaJIT's expr_primary).
 * Registers: an object stays in one while its key is evaluated; a call
 * takes the function's and the frame's (LuaJIT 2.1 on 64-bit, LJ_FR2) and
 * places argument i in the i-th after them; a method call a third, self. */
static void ls_primary(ls_state *ls, ls_exp *v)
{
    uint32_t first = ls->p;
    *v = (ls_exp){.first = first, .regs = 1, .ins = 1, .kind = K_OTHER, .var = -1};
    if (ls_t(ls) == T_LPAREN) {
        uint32_t line = ls_line(ls);
        ls_next(ls);
        ls_exp in;
        ls_expr(ls, &in);
        ls_match(ls, T_RPAREN, T_LPAREN, line);
        v->work = in.work;
        v->regs = in.regs;
        v->ins = in.ins;
        /* (1) is still a constant; (f()) and (...) give one value. */
        v->kind = in.kind == K_NUMK ? K_NUMK : K_PAREN;
    } else if (ls_is_name(ls_t(ls))) {
        v->kind = K_NAME;
        v->var = ls_resolve(ls, ls->tok[ls->p].name);
        ls_next(ls);
    } else {
        ls_fail_near(ls, "unexpected symbol");
    }
    for (;;) {
        switch (ls_t(ls)) {
        case T_DOT:
            ls_next(ls);
            ls_name(ls);
            v->kind = K_INDEXED;
            v->ins = ls_add(v->ins, 1);
            continue;
        case T_LBRACKET: {
            ls_next(ls);
            ls_exp k;
            ls_expr(ls, &k);
            v->work = ls_add(v->work, k.work);
            v->regs = ls_max(v->regs, ls_add(k.regs, 1));
            v->ins = ls_add(v->ins, ls_add(ls_byte_key(ls, &k) ? 0 : k.ins, 1));
            ls_check(ls, T_RBRACKET);
            v->kind = K_INDEXED;
            continue;
        }
        case T_COLON:
            ls_next(ls);
            ls_name(ls);
            v->regs = ls_max(v->regs, ls_max(4, ls_add(ls_args(ls, &v->work, &v->ins), 3)));
            v->ins = ls_add(v->ins, 2); /* the method and self */
            break;
        case T_LPAREN:
        case T_STRING:
        case T_LBRACE:
            v->regs = ls_max(v->regs, ls_add(ls_args(ls, &v->work, &v->ins), 2));
            break;
        default:
            v->last = ls->p - 1;
            return;
        }
        v->work = ls_add(v->work, 1);
        v->ins = ls_add(v->ins, 1);
        v->kind = K_CALL;
    }
}

static void ls_simple(ls_state *ls, ls_exp *v)
{
    *v = (ls_exp){.first = ls->p, .last = ls->p, .regs = 1, .ins = 1, .kind = K_OTHER, .var = -1};
    switch (ls_t(ls)) {
    case T_NUMBER:
        v->kind = K_NUMK;
        break;
    case T_STRING:
    case T_NIL:
    case T_TRUE:
    case T_FALSE:
        break;
    case T_DOTS:
        if (!ls_cur(ls)->vararg)
            ls_fail_near(ls, "cannot use '...' outside a vararg function");
        v->kind = K_VARARG;
        break;
    case T_LBRACE:
        v->ins = 0;
        v->regs = ls_table(ls, &v->work, &v->ins);
        v->last = ls->p - 1;
        return;
    case T_FUNCTION: {
        uint32_t line = ls_line(ls);
        ls_next(ls);
        ls_body(ls, false, line);
        v->last = ls->p - 1;
        return;
    }
    default:
        ls_primary(ls, v);
        return;
    }
    ls_next(ls);
}

/* Binary expressions with priority above limit (LuaJIT's expr_binop, with
 * expr_unop inlined). Constant folding follows LuaJIT's: arithmetic on
 * numeric constants costs nothing at run time. */
static void ls_subexpr(ls_state *ls, ls_exp *v, int limit)
{
    ls_level_enter(ls);
    uint32_t first = ls->p;
    uint8_t t = ls_t(ls);
    if (t == T_NOT || t == T_MINUS || t == T_HASH) {
        ls_next(ls);
        ls_exp o;
        ls_subexpr(ls, &o, LS_UNARY_PRIORITY);
        *v = (ls_exp){.first = first,
                      .last = o.last,
                      .regs = o.regs,
                      .ins = ls_add(o.ins, 1),
                      .kind = K_OTHER,
                      .var = -1};
        if (t == T_NOT) {
            v->work = o.work;
        } else if (t == T_MINUS) {
            v->work = o.kind == K_NUMK ? o.work : ls_add(o.work, 1);
            v->kind = o.kind == K_NUMK ? K_NUMK : K_OTHER;
        } else {
            /* #e -> __nbx_len(e): the operand is everything the operator
             * took (`#a^2` is #(a^2)), and a call becomes a primary, which
             * binds at least as tightly as the operator did. */
            v->work = ls_add(o.work, 1);
            if (!ls->verify)
                ls->tok[first].flags |= LS_REPL_LEN;
            ls_one_value(ls, &o);
            ls_close_after(ls, o.last);
        }
    } else {
        ls_simple(ls, v);
    }
    int op = ls_binop(ls_t(ls));
    while (op != OP_NONE && ls_prio[op].left > limit) {
        uint32_t optok = ls->p;
        ls_next(ls);
        ls_exp v2;
        ls_subexpr(ls, &v2, ls_prio[op].right);
        uint32_t w = ls_add(v->work, v2.work);
        uint8_t kind = K_OTHER;
        /* A comparison's value takes a test, a jump and three to load the
         * boolean; and/or a test, a jump and a move. */
        uint32_t op_ins = op >= OP_EQ && op <= OP_GE ? 5 : op >= OP_AND ? 4 : 1;
        v->ins = ls_add(ls_add(v->ins, v2.ins), op_ins);
        v->compare = op >= OP_EQ && op <= OP_GE;
        if (op == OP_CONCAT || op == OP_POW) {
            /* a .. b -> __nbx_cat(a, b), a ^ b -> __nbx_pow(a, b), even of
             * constants (LuaJIT would fold those with the C library's pow,
             * whose bits depend on the CPU). Right-associative chains nest
             * to the right because b took every later `..` or `^`; a unary
             * operator before a took the whole power (-a^b is -(a^b)). */
            w = ls_add(w, 1);
            ls_open_before(ls, v->first, op == OP_POW ? LS_OPEN_POW : LS_OPEN_CAT);
            if (!ls->verify)
                ls->tok[optok].flags |= LS_REPL_COMMA;
            ls_one_value(ls, &v2);
            ls_close_after(ls, v2.last);
        } else if (op < OP_POW) {
            if (v->kind == K_NUMK && v2.kind == K_NUMK)
                kind = K_NUMK;
            else
                w = ls_add(w, 1);
        } else if (op >= OP_LT && op <= OP_GE) {
            w = ls_add(w, 1);
        }
        /* The left operand waits in a register while the right one runs. */
        v->regs = ls_max(v->regs, ls_add(v2.regs, 1));
        v->work = w;
        v->kind = kind;
        v->var = -1;
        v->last = v2.last;
        op = ls_binop(ls_t(ls));
    }
    ls->level--;
}

static void ls_expr(ls_state *ls, ls_exp *v)
{
    ls_subexpr(ls, v, 0);
}

/* ========================================================================
 * Statements (lj_parse.c: parse_stmt and below)
 * ======================================================================== */

static void ls_block(ls_state *ls, ls_blockinfo *bi)
{
    uint32_t base = ls->nvars;
    ls_chunk(ls, bi);
    ls_scope_end(ls, base);
}

/* A loop's body; returns its instructions. */
static uint32_t ls_loop_block(ls_state *ls)
{
    ls_blockinfo bi;
    ls_cur(ls)->loops++;
    ls_block(ls, &bi);
    ls_cur(ls)->loops--;
    return bi.ins;
}

/* Function parameters and body, from '(' to 'end'. */
static void ls_body(ls_state *ls, bool needself, uint32_t line)
{
    if (ls->fn + 1 > LS_MAX_XLEVEL) /* each body nests a level: not reached */
        ls_fail_near(ls, "functions nested too deeply");
    ls->fn++;
    ls_func *f = ls_cur(ls);
    *f = (ls_func){.var_base = ls->nvars, .line = line};
    ls_check(ls, T_LPAREN);
    if (needself)
        ls_declare(ls, ls->id_self);
    if (ls_t(ls) != T_RPAREN) {
        do {
            if (ls_is_name(ls_t(ls))) {
                ls_locals_room(ls, 1, ls_line(ls));
                ls_declare_tok(ls, ls->p);
                ls_next(ls);
            } else if (ls_t(ls) == T_DOTS) {
                ls_next(ls);
                f->vararg = true;
                break;
            } else {
                ls_fail_near(ls, "<name> or '...' expected");
            }
        } while (ls_opt(ls, T_COMMA));
    }
    uint32_t rparen = ls->p;
    ls_check(ls, T_RPAREN);
    ls_tick_after(ls, rparen);
    ls_blockinfo bi;
    ls_chunk(ls, &bi);
    /* Every way out of a function passes a tick (a return has its own), so
     * a deep recursion unwinding ticks once per frame; what a return
     * computes after its own call comes back is not covered (see
     * docs/lsource.md). Before trailing labels, which must stay last. */
    if (!bi.last_return)
        ls_tick_before(ls, bi.trail, 1);
    ls_match(ls, T_END, T_FUNCTION, line);
    ls_scope_end(ls, f->var_base);
    ls->fn--;
}

/* Whether the labels starting at token `from` are followed only by labels
 * and ';' up to the end of their block. LuaJIT treats such trailing labels
 * as outside the scope of the block's locals, so `goto continue` may jump
 * over a local to them; a tick after one would end that. One scan serves
 * the whole run. */
static bool ls_labels_trailing(ls_state *ls, uint32_t from)
{
    if (from >= ls->run_from && from < ls->run_to)
        return ls->run_trailing;
    const ls_tok *t = ls->tok;
    uint32_t q = from;
    for (;;) {
        if (t[q].type == T_SEMI)
            q++;
        else if (t[q].type == T_DBCOLON && ls_is_name(t[q + 1].type) && t[q + 2].type == T_DBCOLON)
            q += 3;
        else
            break;
    }
    ls->run_from = from;
    ls->run_to = q;
    ls->run_trailing = ls_block_end(t[q].type);
    return ls->run_trailing;
}

/* `::name::`, and the labels that follow it directly: LuaJIT parses those
 * recursively, one level each. */
static uint32_t ls_labels(ls_state *ls)
{
    bool trailing = ls_labels_trailing(ls, ls->p);
    int nested = 0;
    uint32_t ins = 0;
    for (;;) {
        ls_check(ls, T_DBCOLON);
        ls_name(ls);
        uint32_t close = ls->p;
        ls_check(ls, T_DBCOLON);
        if (!trailing)
            ls_tick_after(ls, close);
        ins = ls_add(ins, 1); /* upvalues may be closed there */
        if (ls_t(ls) != T_DBCOLON)
            break;
        ls_level_enter(ls);
        nested++;
    }
    ls->level -= nested;
    return ins;
}

/* A condition's instructions: a comparison there is a test and a jump, not
 * a boolean value. */
static uint32_t ls_cond_ins(const ls_exp *c)
{
    return c->compare ? c->ins - 3 : c->ins;
}

static uint32_t ls_if(ls_state *ls)
{
    uint32_t first = ls->p, line = ls_line(ls), work = 0, ins = 0;
    do {
        ls_next(ls); /* if, elseif */
        ls_exp c;
        ls_expr(ls, &c);
        ls_regs_check(ls, first, c.regs);
        work = ls_add(work, c.work);
        ls_check(ls, T_THEN);
        ls_blockinfo bi;
        ls_block(ls, &bi);
        ins = ls_add(ins, ls_add(ls_add(ls_cond_ins(&c), bi.ins), 3)); /* test, jump, escape */
    } while (ls_t(ls) == T_ELSEIF);
    if (ls_opt(ls, T_ELSE)) {
        ls_blockinfo bi;
        ls_block(ls, &bi);
        ins = ls_add(ins, ls_add(bi.ins, 1));
    }
    ls_match(ls, T_END, T_IF, line);
    ls_stmt_work(ls, first, work);
    return ls_jump_check(ls, first, ins);
}

static uint32_t ls_while(ls_state *ls)
{
    uint32_t first = ls->p, line = ls_line(ls);
    ls_next(ls);
    ls_exp c;
    ls_expr(ls, &c);
    ls_regs_check(ls, first, c.regs);
    uint32_t do_tok = ls->p;
    ls_check(ls, T_DO);
    ls_tick_after(ls, do_tok);
    uint32_t body = ls_loop_block(ls);
    ls_match(ls, T_END, T_WHILE, line);
    ls_stmt_work(ls, first, c.work);
    return ls_jump_check(ls, first, ls_add(ls_add(ls_cond_ins(&c), body), 4));
}

static uint32_t ls_for(ls_state *ls)
{
    uint32_t first = ls->p, line = ls_line(ls), work = 0, ins = 4;
    uint32_t base = ls->nvars;
    ls_next(ls);
    uint32_t var = ls_name(ls);
    if (ls_t(ls) == T_ASSIGN) {
        ls_locals_room(ls, 4, line); /* 3 hidden control slots and the variable */
        ls_next(ls);
        /* Start, stop and step go to three registers, then the variable. */
        ls_exp e;
        ls_expr(ls, &e);
        work = e.work;
        ins = ls_add(ins, e.ins);
        uint32_t regs = ls_max(e.regs, 4);
        ls_check(ls, T_COMMA);
        ls_expr(ls, &e);
        work = ls_add(work, e.work);
        ins = ls_add(ins, e.ins);
        regs = ls_max(regs, ls_add(e.regs, 1));
        if (ls_opt(ls, T_COMMA)) {
            ls_expr(ls, &e);
            work = ls_add(work, e.work);
            ins = ls_add(ins, e.ins);
            regs = ls_max(regs, ls_add(e.regs, 2));
        }
        ls_regs_check(ls, first, regs);
        for (int k = 0; k < 3; k++)
            ls_declare(ls, LS_NONE);
        ls_declare_tok(ls, var);
    } else if (ls_t(ls) == T_COMMA || ls_t(ls) == T_IN) {
        uint32_t names[LS_MAX_LOCVAR]; /* their tokens */
        uint32_t n = 0;
        names[n++] = var;
        ls_locals_room(ls, 3 + n, line);
        while (ls_opt(ls, T_COMMA)) {
            ls_locals_room(ls, 3 + n + 1, ls_line(ls));
            names[n++] = ls_name(ls);
        }
        ls_check(ls, T_IN);
        ls_list l;
        ls_explist(ls, &l);
        work = l.work;
        ins = ls_add(ins, ls_add(l.ins, 1));
        /* Three control slots, and the iterator's call frame (4 slots) or
         * the variables above them. */
        ls_regs_check(ls, first, ls_max(l.regs, ls_max(7, 3 + n)));
        for (int k = 0; k < 3; k++)
            ls_declare(ls, LS_NONE);
        for (uint32_t k = 0; k < n; k++)
            ls_declare_tok(ls, names[k]);
    } else {
        ls_fail_near(ls, "'=' or 'in' expected");
    }
    uint32_t do_tok = ls->p;
    ls_check(ls, T_DO);
    ls_tick_after(ls, do_tok);
    ins = ls_add(ins, ls_loop_block(ls));
    ls_match(ls, T_END, T_FOR, line);
    ls_scope_end(ls, base);
    ls_stmt_work(ls, first, work);
    return ls_jump_check(ls, first, ins);
}

static uint32_t ls_repeat(ls_state *ls)
{
    uint32_t first = ls->p, line = ls_line(ls);
    uint32_t base = ls->nvars;
    ls_next(ls);
    ls_tick_after(ls, first);
    ls_blockinfo bi;
    ls_cur(ls)->loops++;
    ls_chunk(ls, &bi); /* its locals stay in scope for the condition */
    ls_cur(ls)->loops--;
    uint32_t until = ls->p;
    ls_match(ls, T_UNTIL, T_REPEAT, line);
    ls_exp c;
    ls_expr(ls, &c);
    ls_regs_check(ls, until, c.regs);
    /* The condition runs after the body's last tick: it gets its own,
     * unless the body always leaves before it. */
    if (ls_work_check(ls, until, c.work) && !bi.last_exit)
        ls_tick_before(ls, bi.trail, 1);
    ls_scope_end(ls, base);
    return ls_jump_check(ls, first, ls_add(ls_add(bi.ins, ls_cond_ins(&c)), 5));
}

/* An assignment target: a variable or a field. Assigning a local of an
 * enclosing function would keep state from one decision to the next. */
static void ls_target(ls_state *ls, const ls_exp *v)
{
    if (v->kind == K_NAME) {
        if (v->var >= 0 && ls->vars[v->var].fn < ls->fn && !ls->trusted && !ls->verify) {
            const ls_tok *t = &ls->tok[v->first];
            ls_fail(ls, t->line,
                    "assignment to '%.*s', a local of an enclosing function: a policy may not "
                    "keep state between decisions (use a local inside this function, or a "
                    "table created in it)",
                    (int)(t->len > LS_QUOTE_MAX ? LS_QUOTE_MAX : t->len),
                    (const char *)ls->src + t->start);
        }
    } else if (v->kind != K_INDEXED) {
        ls_fail_near(ls, "syntax error");
    }
}

/* A call or an assignment (LuaJIT's parse_call_assign). */
static uint32_t ls_exprstat(ls_state *ls)
{
    uint32_t first = ls->p, work, regs, ins;
    ls_exp v;
    ls_primary(ls, &v);
    if (ls_t(ls) == T_ASSIGN || ls_t(ls) == T_COMMA) {
        /* A field target keeps its object and key in registers until the
         * values are stored. */
        ls_target(ls, &v);
        work = v.work;
        regs = v.regs;
        ins = v.ins;
        uint32_t held = v.kind == K_INDEXED ? 2 : 0, nvars = 1;
        for (; ls_opt(ls, T_COMMA); nvars++) {
            ls_exp t;
            ls_primary(ls, &t);
            ls_target(ls, &t);
            if ((uint64_t)ls->level + nvars >= LS_MAX_XLEVEL)
                ls_fail_limit(ls, ls->tok[t.first].line, ls_cur(ls), LS_MAX_XLEVEL,
                              "variable names", "");
            work = ls_add(work, t.work);
            ins = ls_add(ins, t.ins);
            regs = ls_max(regs, ls_add(held, t.regs));
            held += t.kind == K_INDEXED ? 2 : 0;
        }
        ls_check(ls, T_ASSIGN);
        ls_list l;
        ls_explist(ls, &l);
        work = ls_add(work, l.work);
        regs = ls_max(regs, ls_add(held, ls_max(l.regs, nvars)));
        /* A target's own instruction is its store; then nils for missing
         * values, and moves where a target's table is also assigned. */
        ins = ls_add(ls_add(ins, l.ins), nvars > 1 ? nvars + 1 : 1);
    } else if (v.kind == K_CALL) {
        work = v.work;
        regs = v.regs;
        ins = v.ins;
    } else if (v.kind == K_NAME || v.kind == K_INDEXED) {
        ls_expected(ls, T_ASSIGN);
    } else {
        ls_fail_near(ls, "syntax error");
    }
    ls_regs_check(ls, first, regs);
    ls_stmt_work(ls, first, work);
    return ins;
}

/* `function a.b:c() end`: an assignment to a when the name is plain. */
static uint32_t ls_function_stmt(ls_state *ls)
{
    uint32_t line = ls_line(ls), ins = 3; /* the name's load, the closure, the store */
    ls_next(ls);
    ls_exp v = {.first = ls->p, .kind = K_NAME};
    uint32_t name = ls_name(ls);
    v.var = ls_resolve(ls, ls->tok[name].name);
    bool needself = false;
    while (ls_opt(ls, T_DOT)) {
        ls_name(ls);
        v.kind = K_INDEXED;
        ins = ls_add(ins, 1);
    }
    if (ls_opt(ls, T_COLON)) {
        ls_name(ls);
        v.kind = K_INDEXED;
        needself = true;
    }
    ls_target(ls, &v);
    ls_body(ls, needself, line);
    return ins;
}

static uint32_t ls_local(ls_state *ls)
{
    uint32_t first = ls->p;
    ls_next(ls);
    if (ls_opt(ls, T_FUNCTION)) {
        /* In scope in its own body. */
        uint32_t line = ls->tok[ls->p - 1].line;
        uint32_t name = ls_name(ls);
        ls_locals_room(ls, 1, ls->tok[name].line);
        ls_declare_tok(ls, name);
        ls_body(ls, false, line);
        return 2;
    }
    uint32_t from = ls->p, n = 0, work = 0;
    do {
        uint32_t name = ls_name(ls);
        n++;
        ls_locals_room(ls, n, ls->tok[name].line);
    } while (ls_opt(ls, T_COMMA));
    uint32_t to = ls->p, regs = n, ins = ls_add(n, 1);
    if (ls_opt(ls, T_ASSIGN)) {
        ls_list l;
        ls_explist(ls, &l);
        work = l.work;
        regs = ls_max(regs, l.regs);
        ins = ls_add(ins, l.ins);
    }
    ls_regs_check(ls, first, regs);
    /* In scope after the statement: `local x = x` reads the outer x. */
    for (uint32_t k = from; k < to; k++)
        if (ls_is_name(ls->tok[k].type))
            ls_declare_tok(ls, k);
    ls_stmt_work(ls, first, work);
    return ins;
}

static uint32_t ls_return(ls_state *ls)
{
    uint32_t first = ls->p, work = 0, ins = 2; /* closing upvalues, returning */
    ls_next(ls);
    if (!ls_block_end(ls_t(ls)) && ls_t(ls) != T_SEMI) {
        ls_list l;
        ls_explist(ls, &l);
        work = l.work;
        ins = ls_add(ins, l.ins);
        ls_regs_check(ls, first, l.regs);
    }
    ls_work_check(ls, first, work);
    ls_tick_before(ls, first, work);
    return ins;
}

/* A tick in the verify pass: what parsing it would check, from the
 * summary of NBX_LSOURCE_TICK. */
static uint32_t ls_tick_stmt(ls_state *ls)
{
    if (ls->level + ls->tick.height >= LS_MAX_XLEVEL)
        ls_fail_nesting(ls);
    ls_regs_check(ls, ls->p, ls->tick.regs);
    for (uint32_t k = 0; k < ls->tick.nnames; k++)
        ls_resolve(ls, ls->tick.names[k]);
    ls_next(ls);
    return ls->tick.ins;
}

/* One statement; sets *last when nothing may follow it in its block and
 * *ins to the instructions it may take. Returns its ls_stmt kind. */
static int ls_statement(ls_state *ls, bool *last, uint32_t *ins)
{
    uint32_t line = ls_line(ls);
    switch (ls_t(ls)) {
    case T_IF:
        *ins = ls_if(ls);
        break;
    case T_WHILE:
        *ins = ls_while(ls);
        break;
    case T_DO: {
        ls_next(ls);
        ls_blockinfo bi;
        ls_block(ls, &bi);
        ls_match(ls, T_END, T_DO, line);
        *ins = ls_add(bi.ins, 1);
        break;
    }
    case T_FOR:
        *ins = ls_for(ls);
        break;
    case T_REPEAT:
        *ins = ls_repeat(ls);
        break;
    case T_FUNCTION:
        *ins = ls_function_stmt(ls);
        break;
    case T_LOCAL:
        *ins = ls_local(ls);
        break;
    case T_RETURN:
        *ins = ls_return(ls);
        *last = true;
        return S_RETURN;
    case T_BREAK:
        if (ls_cur(ls)->loops == 0)
            ls_fail(ls, line, "no loop to break");
        ls_next(ls);
        *ins = 2;
        *last = true; /* LuaJIT (Lua 5.1 mode): break ends its block */
        return S_BREAK;
    case T_DBCOLON:
        *ins = ls_labels(ls);
        return S_LABEL;
    case T_TICK:
        *ins = ls_tick_stmt(ls);
        break;
    case T_GOTO:
        if (ls->tok[ls->p + 1].type == T_NAME) {
            ls->p += 2;
            *ins = 2;
            break;
        }
        /* `goto` is a name here; LuaJIT looked ahead, so a '(' next is not
         * checked for ambiguity. */
        ls->amb_skip = ls->p + 1;
        *ins = ls_exprstat(ls);
        break;
    default:
        *ins = ls_exprstat(ls);
        break;
    }
    return S_OTHER;
}

/* Statements up to the end of a block (LuaJIT's parse_chunk). LuaJIT in
 * Lua 5.1 mode takes one optional ';' after each statement and no empty
 * statement. */
static void ls_chunk(ls_state *ls, ls_blockinfo *bi)
{
    ls_level_enter(ls);
    bool last = false;
    int kind = S_OTHER;
    uint32_t run = LS_NONE;
    bi->ins = 0;
    while (!last && !ls_block_end(ls_t(ls))) {
        uint32_t start = ls->p, ins = 0;
        kind = ls_statement(ls, &last, &ins);
        bi->ins = ls_add(bi->ins, ins);
        if (kind != S_LABEL)
            run = LS_NONE;
        else if (run == LS_NONE)
            run = start;
        ls_opt(ls, T_SEMI);
    }
    bi->last_return = kind == S_RETURN;
    bi->last_exit = kind == S_RETURN || kind == S_BREAK;
    bi->trail = run != LS_NONE ? run : ls->p;
    ls->level--;
}

static void ls_main(ls_state *ls)
{
    ls->fn = 0;
    ls->fs[0] = (ls_func){.var_base = 0, .line = 0, .vararg = true};
    ls_blockinfo bi;
    ls_chunk(ls, &bi);
    ls->chunk_ins = bi.ins;
    if (ls_t(ls) != T_EOF)
        ls_expected(ls, T_EOF);
    if (bi.last_return || ls->verify)
        return;
    /* The main chunk's end tick: before trailing labels, else after the
     * last token (never after a trailing comment, which would swallow it). */
    if (ls->tok[bi.trail].type != T_EOF)
        ls_tick_before(ls, bi.trail, 1);
    else if (ls->ntok > 1)
        ls_tick_after(ls, ls->ntok - 2);
    else
        ls->empty_end_tick = true;
}

/* ========================================================================
 * Output
 * ======================================================================== */

typedef struct ls_writer {
    char *o;            /* next byte; the buffer was sized by ls_emit_size */
    unsigned char last; /* last byte written */
    bool inserted;      /* ... and it ended an insertion */
} ls_writer;

/* Whether b written right after a would join them into one token (or a
 * comment): then an insertion needs a space. */
static bool ls_glue(unsigned a, unsigned b)
{
    if ((ls_ident(a) || a == '.') && (ls_ident(b) || b == '.'))
        return true;
    if (a == '-' && b == '-')
        return true;
    if (a == '[' && (b == '[' || b == '='))
        return true;
    if ((a == '=' || a == '<' || a == '>' || a == '~') && b == '=')
        return true;
    return a == ':' && b == ':';
}

static inline void ls_write(ls_writer *w, const char *p, size_t n, bool inserted)
{
    if (n == 0)
        return;
    if ((inserted || w->inserted) && ls_glue(w->last, (unsigned char)p[0]))
        *w->o++ = ' ';
    memcpy(w->o, p, n);
    w->o += n;
    w->last = (unsigned char)p[n - 1];
    w->inserted = inserted;
}

static inline void ls_insert(ls_writer *w, ls_text t)
{
    ls_write(w, t.s, t.n, true);
}

/* Bytes the output may take: the source, every insertion and a space
 * before each (ls_write adds one where texts would join). */
static size_t ls_emit_size(const ls_state *ls)
{
    size_t n = (size_t)ls->len + ls_prologue.n + 3 * (ls_tick.n + 1);
    for (uint32_t i = 0; i + 1 < ls->ntok; i++) {
        const ls_edit *d = &ls->edit[i];
        n += ((size_t)d->ticks_before + d->ticks_after) * (ls_tick.n + 3);
        n += (size_t)d->closes * (ls_close.n + 1) + ls_semi.n + 1;
        for (uint32_t o = d->opens; o; o = ls->opens[o - 1].next)
            n += ls_open_text[ls->opens[o - 1].kind].n + 1;
        if (ls->tok[i].flags & LS_REPL_LEN)
            n += ls_len_open.n + 1;
    }
    return n;
}

/* Write the source with the edits the first pass recorded: the text
 * between tokens verbatim, so every line break stays where it was. */
static void ls_emit(ls_state *ls, nbx_buf *out)
{
    const char *s = (const char *)ls->src;
    if (ls->prologue_at == LS_NONE) {
        nbx_buf_append(out, s, ls->len);
        return;
    }
    if (nbx_buf_reserve(out, ls_emit_size(ls)) != NBX_OK)
        return;
    /* The BOM and '#' line LuaJIT skips, then the prologue: it starts the
     * chunk, whatever byte precedes it. */
    ls_writer w = {.o = out->data + out->len, .last = '\n'};
    memcpy(w.o, s, ls->prologue_at);
    w.o += ls->prologue_at;
    ls_insert(&w, ls_prologue);
    ls_insert(&w, ls_tick);
    if (ls->empty_end_tick)
        ls_insert(&w, ls_tick);
    uint32_t pos = ls->prologue_at;
    for (uint32_t i = 0; i + 1 < ls->ntok; i++) {
        const ls_tok *t = &ls->tok[i];
        const ls_edit *d = &ls->edit[i];
        ls_write(&w, s + pos, t->start - pos, false);
        for (uint8_t k = 0; k < d->ticks_before; k++) {
            if (k == 0 && d->weight > 1) {
                char tick[sizeof NBX_LSOURCE_TICK + 4];
                int tn = snprintf(tick, sizeof tick, "%s%u%s", NBX_LSOURCE_TICK_HEAD,
                                  (unsigned)d->weight, NBX_LSOURCE_TICK_TAIL);
                ls_insert(&w, (ls_text){tick, (size_t)tn});
            } else {
                ls_insert(&w, ls_tick);
            }
        }
        for (uint32_t o = d->opens; o; o = ls->opens[o - 1].next)
            ls_insert(&w, ls_open_text[ls->opens[o - 1].kind]);
        if (t->flags & LS_REPL_LEN)
            ls_insert(&w, ls_len_open);
        else if (t->flags & LS_REPL_COMMA)
            ls_insert(&w, ls_comma);
        else
            ls_write(&w, s + t->start, t->len, false);
        for (uint32_t k = 0; k < d->closes; k++)
            ls_insert(&w, ls_close);
        /* `x = 1 .. 2 (f)()` was two statements: now that `2` ends in ')',
         * the '(' would call it. */
        if (d->closes > 0 && ls->tok[i + 1].type == T_LPAREN)
            ls_insert(&w, ls_semi);
        for (uint8_t k = 0; k < d->ticks_after; k++)
            ls_insert(&w, ls_tick);
        pos = t->start + t->len;
    }
    ls_write(&w, s + pos, ls->len - pos, false);
    out->len = (size_t)(w.o - out->data);
}

/* ========================================================================
 * Passes
 * ======================================================================== */

static void ls_reset(ls_state *ls, const char *src, uint32_t len, bool verify)
{
    ls->src = (const unsigned char *)src;
    ls->len = len;
    ls->verify = verify;
    ls->tick_tokens = verify && !ls->summarize;
    ls->ntok = 0;
    ls->p = 0;
    ls->amb_skip = LS_NONE;
    ls->level = ls->max_level = 0;
    ls->max_regs = 0;
    ls->nnames = 0;
    if (ls->slots)
        memset(ls->slots, 0, (size_t)ls->slotcap * sizeof *ls->slots);
    ls->nvars = 0;
    ls->fn = 0;
    ls->run_from = ls->run_to = 0;
    ls->run_trailing = false;
    free(ls->edit);
    ls->edit = NULL;
    ls->nopens = 0;
    ls->empty_end_tick = false;
}

static void ls_free(ls_state *ls)
{
    if (!ls)
        return;
    free(ls->tok);
    free(ls->edit);
    free(ls->names);
    free(ls->slots);
    free(ls->top);
    free(ls->vars);
    free(ls->fs);
    free(ls->opens);
    free(ls);
}

static ls_state *ls_new(nbx_err *e, const char *chunk)
{
    ls_state *ls = calloc(1, sizeof *ls);
    ls_func *fs = calloc(LS_MAX_XLEVEL + 1, sizeof *fs);
    if (!ls || !fs) {
        free(ls);
        free(fs);
        return NULL;
    }
    ls->fs = fs;
    ls->e = e;
    ls->chunk = chunk;
    ls->seed = (uint64_t)nbx_monotonic_us() ^ (uint64_t)(uintptr_t)ls;
    return ls;
}

static int ls_pass(ls_state *ls);

/* Parse NBX_LSOURCE_TICK alone and record, in ls->tick, what the verify
 * pass must check for each tick: its nesting below its block, its
 * registers, the names it reads. It must be plain statements on one line:
 * no locals, functions, returns, jumps or labels, which would change the
 * code around it. */
static void ls_tick_summary(ls_state *ls)
{
    ls_state *t = ls_new(NULL, "tick");
    if (!t)
        ls_oom(ls);
    nbx_err te = {0};
    t->e = &te;
    t->summarize = true;
    t->trusted = true;
    ls_reset(t, ls_tick.s, (uint32_t)ls_tick.n, true);
    int rc = ls_pass(t);
    const char *bad = NULL;
    for (uint32_t i = 0; rc == NBX_OK && i < t->ntok && !bad; i++) {
        switch (t->tok[i].type) {
        case T_LOCAL:
        case T_FUNCTION:
        case T_RETURN:
        case T_BREAK:
        case T_GOTO:
        case T_DBCOLON:
        case T_DOTS:
            bad = ls_type_text[t->tok[i].type];
            break;
        }
    }
    /* Starting with a name, a tick cannot continue the expression before it
     * (a '(' would call it); ending with a space, nothing after it can
     * continue the tick's last word. */
    if (rc == NBX_OK && !bad &&
        (memchr(ls_tick.s, '\n', ls_tick.n) || memchr(ls_tick.s, '\r', ls_tick.n)))
        bad = "a line break";
    if (rc == NBX_OK && !bad &&
        (ls_tick.n < 2 || !ls_ident((unsigned char)ls_tick.s[0]) ||
         ls_digit((unsigned char)ls_tick.s[0]) || ls_tick.s[ls_tick.n - 1] != ' '))
        bad = "it must start with a name and end with a space";
    if (rc == NBX_OK && !bad) {
        ls->tick.height = t->max_level - 1; /* the chunk's own level is the block's */
        ls->tick.regs = t->max_regs;
        ls->tick.ins = t->chunk_ins;
        for (uint32_t k = 0; k < t->tick.nnames; k++) {
            const ls_namerec *nm = &t->names[t->tick.names[k]];
            ls->tick.names[k] = ls_intern(ls, nm->ptr, nm->len);
        }
        ls->tick.nnames = t->tick.nnames;
    }
    ls_free(t);
    if (rc == NBX_ENOMEM)
        ls_oom(ls);
    if (rc != NBX_OK || bad) {
        nbx_err_set(ls->e, NBX_EPOLICY, "%s: NBX_LSOURCE_TICK is not a plain statement: %s",
                    ls->chunk, bad ? bad : te.msg);
        ls_throw(ls, NBX_EPOLICY);
    }
}

/* Tokenise and parse src; on success (first pass) ls->edit holds the
 * edits. */
static int ls_pass(ls_state *ls)
{
    if (setjmp(ls->fail))
        return ls->rc;
    if (!ls->slots) {
        ls->slotcap = 1024;
        ls->slots = calloc(ls->slotcap, sizeof *ls->slots);
        if (!ls->slots)
            ls_oom(ls);
    }
    for (size_t k = 0; k < NBX_ARRAY_LEN(ls_reserved_names); k++)
        ls->reserved[k] =
            ls_intern(ls, ls_reserved_names[k], (uint32_t)strlen(ls_reserved_names[k]));
    ls->id_self = ls_intern(ls, "self", 4);
    if (ls->tick_tokens)
        ls_tick_summary(ls);
    ls_lex(ls);
    if (!ls->verify) {
        ls->edit = calloc(ls->ntok, sizeof *ls->edit);
        if (!ls->edit)
            ls_oom(ls);
    }
    free(ls->top);
    ls->top = malloc(((size_t)ls->nnames + 1) * sizeof *ls->top);
    if (!ls->top)
        ls_oom(ls);
    for (uint32_t k = 0; k < ls->nnames; k++)
        ls->top[k] = -1;
    ls_main(ls);
    return NBX_OK;
}

int nbx_lsource_instrument(const char *name, const char *src, size_t len,
                           const nbx_lsource_opts *opts, nbx_buf *out, nbx_err *e)
{
    if (!out)
        return nbx_err_set(e, NBX_EINVAL, "nbx_lsource_instrument: out is NULL");
    if (!src && len > 0)
        return nbx_err_set(e, NBX_EINVAL, "nbx_lsource_instrument: src is NULL");
    const char *chunk = name && *name ? name : "policy";
    if (len > LS_SOURCE_MAX)
        return nbx_err_set(e, NBX_EPOLICY, "%s: the policy is too large to instrument (%zu bytes)",
                           chunk, len);
    if (!src)
        src = "";
    ls_state *ls = ls_new(e, chunk);
    if (!ls)
        return nbx_err_set(e, NBX_ENOMEM, "%s: out of memory while instrumenting the policy",
                           chunk);
    ls->trusted = opts && opts->trusted;
    ls->max_work = opts && opts->max_work ? opts->max_work : NBX_LSOURCE_WORK_MAX;

    size_t mark = out->len;
    bool oom = out->oom;
    ls_reset(ls, src, (uint32_t)len, false);
    int rc = ls_pass(ls);
    if (rc == NBX_OK) {
        ls_emit(ls, out);
        if (out->oom)
            rc = nbx_err_set(e, NBX_ENOMEM, "%s: out of memory while instrumenting the policy",
                             chunk);
        else if (out->len - mark > LS_SOURCE_MAX)
            rc = nbx_err_set(e, NBX_EPOLICY,
                             "%s: the policy is too large to instrument (%zu bytes once "
                             "instrumented)",
                             chunk, out->len - mark);
    }
    if (rc == NBX_OK) {
        ls_reset(ls, out->data + mark, (uint32_t)(out->len - mark), true);
        rc = ls_pass(ls);
    }
    if (rc != NBX_OK) {
        out->len = mark;
        out->oom = oom;
    }
    ls_free(ls);
    return rc;
}
