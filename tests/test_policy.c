/* Suite: policy (core/policy.c): loading and checking policy files,
 * nbx_policy_check(), reference counting. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nbx_int.h"
#include "testutil.h"

static char *tmpdir;

static void setup(void)
{
    tmpdir = tu_tempdir("policy");
    cr_assert(tmpdir);
}

static void teardown(void)
{
    tu_rmtree(tmpdir);
    free(tmpdir);
}

TestSuite(policy, .init = setup, .fini = teardown);

static char *write_policy(const char *name, const char *src)
{
    char *path = tu_path(tmpdir, name);
    cr_assert_eq(tu_write_file(path, src), 0);
    return path;
}

static const char good_src[] = "-- a policy\n"
                               "local P = { name = 'good one', params = { k = 1 } }\n"
                               "function P.score(offer) return offer.margin end\n"
                               "function P.eligible() return true end\n"
                               "return P\n";

/* Read a policy, then run its top level in a sandbox (without a catalog),
 * as every engine does before serving it: a policy is refused at either
 * step. On failure *out is NULL. */
static int load_and_run(const char *path, nbx_policy **out, nbx_err *e)
{
    int rc = nbx_policy_load(path, out, e);
    if (rc != NBX_OK)
        return rc;
    nbx_sandbox *sb = NULL;
    rc = nbx_sandbox_open(*out, NULL, NULL, &sb, e);
    nbx_sandbox_close(sb);
    if (rc != NBX_OK) {
        nbx_policy_unref(*out);
        *out = NULL;
    }
    return rc;
}

/* Load src as name; expect failure rc with every needle in the message. */
static void expect_load_error(const char *name, const char *src, int rc_want,
                              const char *const *needles)
{
    char *path = write_policy(name, src);
    nbx_policy *p = (nbx_policy *)1;
    nbx_err e = {0};
    int rc = load_and_run(path, &p, &e);
    cr_expect_eq(rc, rc_want, "%s: expected %d, got %d (%s)", name, rc_want, rc, e.msg);
    cr_expect_null(p, "%s: out must be NULL on failure", name);
    cr_expect(strncmp(e.msg, path, strlen(path)) == 0, "%s: message must start with the path: %s",
              name, e.msg);
    for (; *needles; needles++)
        cr_expect(strstr(e.msg, *needles), "%s: expected '%s' in: %s", name, *needles, e.msg);
    free(path);
}

#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Load src as name; expect NBX_EPOLICY with a message that is the path,
 * then `after` (a position and the start of the reason). */
static void expect_load_error_at(const char *name, const char *src, const char *after)
{
    char *path = write_policy(name, src);
    nbx_policy *p = (nbx_policy *)1;
    nbx_err e = {0};
    int rc = load_and_run(path, &p, &e);
    cr_expect_eq(rc, NBX_EPOLICY, "%s: expected NBX_EPOLICY, got %d (%s)", name, rc, e.msg);
    cr_expect_null(p, "%s: out must be NULL on failure", name);
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s%s", path, after);
    cr_expect(strncmp(e.msg, prefix, strlen(prefix)) == 0, "expected '%s...', got: %s", prefix,
              e.msg);
    free(path);
}

/* ========================================================================
 * nbx_policy_load
 * ======================================================================== */

Test(policy, load_reads_name_version_and_chunkname)
{
    char *path = write_policy("good.lua", good_src);
    nbx_policy *p = NULL;
    nbx_err e = {0};
    cr_assert_eq(nbx_policy_load(path, &p, &e), NBX_OK, "%s", e.msg);
    cr_expect_str_eq(p->name, "", "reading runs nothing: the name comes with the first sandbox");
    nbx_sandbox *sb = NULL;
    cr_assert_eq(nbx_sandbox_open(p, NULL, NULL, &sb, &e), NBX_OK, "%s", e.msg);
    nbx_sandbox_close(sb);
    cr_expect_str_eq(p->name, "good one");
    cr_expect_str_eq(p->path, path);
    cr_expect_str_eq(p->chunkname, "@good.lua");
    cr_expect_eq(p->source_len, strlen(good_src));
    cr_expect_eq(memcmp(p->source, good_src, p->source_len), 0);
    char hex[17];
    nbx_hex64(nbx_hash64(good_src, strlen(good_src), 0), hex);
    cr_expect_str_eq(p->version_hex, hex);
    cr_expect_eq(p->version, nbx_hash64(good_src, strlen(good_src), 0));
    cr_expect_eq(atomic_load(&p->refs), 1);
    nbx_policy_unref(p);
    free(path);
}

Test(policy, version_follows_the_source)
{
    char *a = write_policy("a.lua", good_src);
    char *b = write_policy("b.lua", good_src);
    char *c =
        write_policy("c.lua", "return { name = 'good one', score = function() return 2 end }");
    nbx_policy *pa, *pb, *pc;
    nbx_err e = {0};
    cr_assert_eq(nbx_policy_load(a, &pa, &e), NBX_OK);
    cr_assert_eq(nbx_policy_load(b, &pb, &e), NBX_OK);
    cr_assert_eq(nbx_policy_load(c, &pc, &e), NBX_OK);
    cr_expect_str_eq(pa->version_hex, pb->version_hex, "same source, same version");
    cr_expect_str_neq(pa->version_hex, pc->version_hex, "other source, other version");
    nbx_policy_unref(pa);
    nbx_policy_unref(pb);
    nbx_policy_unref(pc);
    free(a);
    free(b);
    free(c);
}

Test(policy, load_null_arguments)
{
    nbx_policy *p = (nbx_policy *)1;
    nbx_err e = {0};
    cr_expect_eq(nbx_policy_load(NULL, &p, &e), NBX_EINVAL);
    cr_expect_null(p);
    cr_expect_eq(nbx_policy_load("", &p, &e), NBX_EINVAL);
    cr_expect_eq(nbx_policy_load("x.lua", NULL, &e), NBX_EINVAL);
    cr_expect_eq(nbx_policy_load(NULL, &p, NULL), NBX_EINVAL, "e may be NULL");
}

Test(policy, load_file_errors)
{
    nbx_policy *p;
    nbx_err e = {0};
    char *missing = tu_path(tmpdir, "missing.lua");
    cr_expect_eq(nbx_policy_load(missing, &p, &e), NBX_ENOTFOUND, "%s", e.msg);
    cr_expect(strstr(e.msg, "missing.lua"), "%s", e.msg);
    cr_expect_eq(nbx_policy_load(tmpdir, &p, &e), NBX_EIO, "a directory: %s", e.msg);
    free(missing);

    /* Over NBX_POLICY_FILE_MAX. */
    size_t n = NBX_POLICY_FILE_MAX + 10;
    char *big = malloc(n + 1);
    cr_assert(big);
    memset(big, '-', n);
    big[n] = '\0';
    expect_load_error("big.lua", big, NBX_EPOLICY, NEEDLES("over the limit"));
    free(big);
}

Test(policy, load_refuses_bytecode)
{
    static const char bytecode[] = "\033LJ\002\000\000";
    char *path = tu_path(tmpdir, "bc.lua");
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    fwrite(bytecode, 1, sizeof bytecode - 1, f);
    fclose(f);
    nbx_policy *p;
    nbx_err e = {0};
    cr_expect_eq(nbx_policy_load(path, &p, &e), NBX_EPOLICY);
    cr_expect(strstr(e.msg, "bytecode"), "%s", e.msg);
    free(path);
}

Test(policy, load_reports_syntax_errors_with_line)
{
    expect_load_error_at("syntax.lua", "local P = {}\n\nP.score = function(\nreturn P\n", ":4: ");
}

Test(policy, load_reports_runtime_errors_with_line)
{
    expect_load_error_at("rt.lua", "local x = nil\nlocal y = x.field\nreturn {}\n",
                         ":2: attempt to index");
}

Test(policy, load_checks_the_returned_table)
{
    expect_load_error("nil.lua", "local x = 1", NBX_EPOLICY, NEEDLES("must return a table", "nil"));
    expect_load_error("num.lua", "return 3", NBX_EPOLICY, NEEDLES("must return a table", "number"));
    expect_load_error("noname.lua", "return { score = function() return 1 end }", NBX_EPOLICY,
                      NEEDLES("needs a 'name' string"));
    expect_load_error("numname.lua", "return { name = 5, score = function() return 1 end }",
                      NBX_EPOLICY, NEEDLES("needs a 'name' string", "number"));
    expect_load_error("empty.lua", "return { name = '', score = function() return 1 end }",
                      NBX_EPOLICY, NEEDLES("1 to 127 bytes"));
    expect_load_error("long.lua",
                      "return { name = ('n'):rep(128), score = function() return 1 end }",
                      NBX_EPOLICY, NEEDLES("1 to 127 bytes"));
    expect_load_error("nul.lua", "return { name = 'a\\0b', score = function() return 1 end }",
                      NBX_EPOLICY, NEEDLES("printable"));
    expect_load_error("esc.lua",
                      "return { name = 'a\\27[31mred', score = function() return 1 end }",
                      NBX_EPOLICY, NEEDLES("no control characters"));
    expect_load_error("noscore.lua", "return { name = 'x' }", NBX_EPOLICY,
                      NEEDLES("needs a 'score' function", "nil"));
    expect_load_error("strscore.lua", "return { name = 'x', score = 'high' }", NBX_EPOLICY,
                      NEEDLES("needs a 'score' function", "string"));
    expect_load_error("elig.lua", "return { name = 'x', score = print or tostring, eligible = 1 }",
                      NBX_EPOLICY, NEEDLES("'eligible' must be a function"));
    expect_load_error("params.lua", "return { name = 'x', score = tostring, params = true }",
                      NBX_EPOLICY, NEEDLES("'params' must be a table"));
}

Test(policy, name_of_127_bytes_and_c_function_score_are_fine)
{
    char *path = write_policy("edge.lua", "return { name = ('n'):rep(127), score = tostring }");
    nbx_policy *p = NULL;
    nbx_err e = {0};
    cr_assert_eq(load_and_run(path, &p, &e), NBX_OK, "%s", e.msg);
    cr_expect_eq(strlen(p->name), 127);
    nbx_policy_unref(p);
    free(path);
}

Test(policy, load_is_bounded_in_time_and_memory, .timeout = 60)
{
    int64_t t0 = nbx_monotonic_us();
    expect_load_error("spin.lua", "local n = 0\nwhile true do n = n + 1 end\n", NBX_EPOLICY,
                      NEEDLES("spin.lua:2: ", "load time limit"));
    double ms = (double)(nbx_monotonic_us() - t0) / 1000.0;
    cr_expect_lt(ms, 1000, "a 100 ms load budget took %.0f ms", ms);
    /* A table that grows past the largest single object the load allows:
     * refused at once, whatever the machine's speed, so the time limit
     * cannot come first. */
    /* Found by the allocator, which cannot read the stack of compiled code
     * (sandbox_limits.c, sb_refuse): the path, without a line. */
    expect_load_error("hog.lua", "local t = {}\nfor i = 1, 1e9 do t[i] = i end\n", NBX_EPOLICY,
                      NEEDLES("hog.lua: the policy exceeded its memory limit"));
    expect_load_error("longstr.lua", "local s = ('x'):rep(4097)\nreturn {}\n", NBX_EPOLICY,
                      NEEDLES("longstr.lua:1: ", "string.rep would be 4097 bytes"));
    expect_load_error("pcallspin.lua", "while true do pcall(function() while true do end end) end",
                      NBX_EPOLICY, NEEDLES("load time limit"));
}

Test(policy, globals_may_be_defined_while_loading_only)
{
    char *path = write_policy("glob.lua", "threshold = 0.5\n"
                                          "function helper(x) return x * 2 end\n"
                                          "return { name = 'g', score = function(o)\n"
                                          "  return helper(threshold)\n"
                                          "end }\n");
    nbx_policy *p = NULL;
    nbx_err e = {0};
    cr_expect_eq(load_and_run(path, &p, &e), NBX_OK, "%s", e.msg);
    nbx_policy_unref(p);
    free(path);
}

/* ========================================================================
 * nbx_policy_load_text
 * ======================================================================== */

Test(policy, load_text_is_a_file_load_from_memory)
{
    /* Only len bytes count: what follows them in the buffer is not read. */
    char buf[sizeof good_src + 16];
    snprintf(buf, sizeof buf, "%s%s", good_src, "error('x')");
    nbx_policy *p = NULL;
    nbx_err e = {0};
    cr_assert_eq(nbx_policy_load_text("conf/good.lua", buf, strlen(good_src), &p, &e), NBX_OK, "%s",
                 e.msg);
    nbx_sandbox *sb = NULL;
    cr_assert_eq(nbx_sandbox_open(p, NULL, NULL, &sb, &e), NBX_OK, "%s", e.msg);
    nbx_sandbox_close(sb);
    cr_expect_str_eq(p->name, "good one");
    cr_expect_str_eq(p->path, "conf/good.lua");
    cr_expect_str_eq(p->chunkname, "@good.lua");
    cr_expect_eq(p->source_len, strlen(good_src));
    cr_expect_neq(p->source, buf, "the text is copied");
    cr_expect_eq(memcmp(p->source, good_src, p->source_len), 0);
    cr_expect_eq(p->source[p->source_len], '\0');

    /* The same version as the same source read from a file. */
    char *path = write_policy("good.lua", good_src);
    nbx_policy *f = NULL;
    cr_assert_eq(nbx_policy_load(path, &f, &e), NBX_OK, "%s", e.msg);
    cr_expect_str_eq(p->version_hex, f->version_hex);
    nbx_policy_unref(f);
    nbx_policy_unref(p);
    free(path);
}

Test(policy, load_text_null_arguments)
{
    nbx_policy *p = (nbx_policy *)1;
    nbx_err e = {0};
    cr_expect_eq(nbx_policy_load_text("x.lua", good_src, strlen(good_src), NULL, &e), NBX_EINVAL);
    cr_expect(strstr(e.msg, "out is NULL"), "%s", e.msg);
    cr_expect_eq(nbx_policy_load_text(NULL, good_src, strlen(good_src), &p, &e), NBX_EINVAL);
    cr_expect_null(p, "out must be NULL after a failed load");
    cr_expect_eq(nbx_policy_load_text("", good_src, strlen(good_src), &p, &e), NBX_EINVAL);
    cr_expect_eq(nbx_policy_load_text("x.lua", NULL, 0, &p, &e), NBX_EINVAL);
    cr_expect_eq(nbx_policy_load_text("x.lua", NULL, 0, &p, NULL), NBX_EINVAL, "e may be NULL");
}

Test(policy, load_text_errors_name_the_path)
{
    static const struct {
        const char *src;
        size_t len; /* 0: strlen(src) */
        const char *want;
    } cases[] = {
        {"\033LJ\002", 0, ": precompiled bytecode is not accepted"},
        {"local P = {}\n\nP.score = function(\nreturn P\n", 0, ":4: "},
        {"local x = nil\nlocal y = x.field\nreturn {}\n", 0, ":2: attempt to index"},
        {"return { name = 'x' }", 0, ": the policy table needs a 'score' function"},
        {"", 0, ": the policy must return a table (it returned nil)"},
        {"-- length checked before reading", NBX_POLICY_FILE_MAX + 1,
         ": the policy is over the limit"},
    };
    for (size_t i = 0; i < NBX_ARRAY_LEN(cases); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].src);
        nbx_policy *p = (nbx_policy *)1;
        nbx_err e = {0};
        int rc = nbx_policy_load_text("conf/bad.lua", cases[i].src, len, &p, &e);
        if (rc == NBX_OK) {
            nbx_sandbox *sb = NULL;
            rc = nbx_sandbox_open(p, NULL, NULL, &sb, &e);
            nbx_sandbox_close(sb);
            nbx_policy_unref(p);
            p = rc == NBX_OK ? p : NULL;
        }
        cr_expect_eq(rc, NBX_EPOLICY, "case %zu: expected NBX_EPOLICY, got %d (%s)", i, rc, e.msg);
        cr_expect_null(p, "case %zu: out must be NULL on failure", i);
        char prefix[256];
        snprintf(prefix, sizeof prefix, "conf/bad.lua%s", cases[i].want);
        cr_expect(strncmp(e.msg, prefix, strlen(prefix)) == 0,
                  "case %zu: expected '%s...', got: %s", i, prefix, e.msg);
    }
}

/* ========================================================================
 * References
 * ======================================================================== */

Test(policy, ref_and_unref)
{
    char *path = write_policy("good.lua", good_src);
    nbx_policy *p = NULL;
    nbx_err e = {0};
    cr_assert_eq(nbx_policy_load(path, &p, &e), NBX_OK);
    cr_expect_eq(nbx_policy_ref(p), p);
    cr_expect_eq(atomic_load(&p->refs), 2);
    nbx_policy_unref(p);
    cr_expect_eq(atomic_load(&p->refs), 1);
    cr_expect_eq(memcmp(p->source, good_src, p->source_len), 0, "still alive with one reference");
    nbx_policy_unref(p); /* frees: AddressSanitizer checks */
    cr_expect_null(nbx_policy_ref(NULL));
    nbx_policy_unref(NULL);
    free(path);
}

/* ========================================================================
 * nbx_policy_check (public)
 * ======================================================================== */

Test(policy, check_fills_name_and_version)
{
    char *path = write_policy("good.lua", good_src);
    nbx_engine_info info;
    memset(&info, 0x55, sizeof info);
    cr_assert_eq(nbx_policy_check(path, &info), NBX_OK, "%s", nbx_last_errmsg());
    cr_expect_str_eq(info.policy_name, "good one");
    char hex[17];
    nbx_hex64(nbx_hash64(good_src, strlen(good_src), 0), hex);
    cr_expect_str_eq(info.policy_version, hex);
    cr_expect_eq(info.offers, 0x55555555u, "catalog fields are left alone");
    cr_expect_eq(nbx_policy_check(path, NULL), NBX_OK, "info may be NULL");
    free(path);
}

Test(policy, check_shipped_policies)
{
    static const char *const files[] = {"policies/margin_per_session.lua",
                                        "policies/retention.lua"};
    static const char *const names[] = {"margin_per_session", "retention"};
    for (size_t i = 0; i < NBX_ARRAY_LEN(files); i++) {
        char *path = tu_source_path(files[i]);
        nbx_engine_info info;
        cr_expect_eq(nbx_policy_check(path, &info), NBX_OK, "%s: %s", files[i], nbx_last_errmsg());
        cr_expect_str_eq(info.policy_name, names[i]);
        cr_expect_eq(strlen(info.policy_version), 16);
        free(path);
    }
}

Test(policy, check_errors_go_to_last_errmsg)
{
    cr_expect_eq(nbx_policy_check(NULL, NULL), NBX_EINVAL);
    cr_expect(strstr(nbx_last_errmsg(), "NULL"), "%s", nbx_last_errmsg());
    char *missing = tu_path(tmpdir, "nope.lua");
    cr_expect_eq(nbx_policy_check(missing, NULL), NBX_ENOTFOUND);
    cr_expect(strstr(nbx_last_errmsg(), "nope.lua"), "%s", nbx_last_errmsg());
    cr_expect_eq(nbx_policy_check(tmpdir, NULL), NBX_EIO);
    free(missing);

    char *path = write_policy("broken.lua", "return {\n  name = 'b',\n  score = 1 + nil,\n}\n");
    nbx_engine_info info = {0};
    cr_expect_eq(nbx_policy_check(path, &info), NBX_EPOLICY);
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s:3: attempt to perform arithmetic", path);
    cr_expect(strncmp(nbx_last_errmsg(), prefix, strlen(prefix)) == 0, "expected '%s...', got: %s",
              prefix, nbx_last_errmsg());
    cr_expect_eq(info.policy_name[0], '\0', "info untouched on failure");
    /* A later success clears the message. */
    char *good = write_policy("good.lua", good_src);
    cr_expect_eq(nbx_policy_check(good, NULL), NBX_OK);
    cr_expect_str_eq(nbx_last_errmsg(), "");
    free(path);
    free(good);
}
