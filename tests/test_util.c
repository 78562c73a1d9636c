/*
 * test_util.c: error messages (escaping of outside text), UTF-8 checks.
 */
#include "nbx_int.h"

#include <criterion/criterion.h>
#include <string.h>

/* ========================================================================
 * nbx_err_set, nbx_err_prefix: outside text is escaped
 * ======================================================================== */

Test(util, err_set_escapes_terminal_controls)
{
    nbx_err e = {0};
    /* An ANSI colour sequence, a carriage return and a C1 CSI (U+009B) in a
     * policy name must not reach a terminal raw. */
    int rc = nbx_err_set(&e, NBX_EPOLICY, "policy '%s' failed", "\x1b[31mred\r\xc2\x9bx");
    cr_assert_eq(rc, NBX_EPOLICY);
    cr_assert_eq(e.code, NBX_EPOLICY);
    cr_assert_str_eq(e.msg, "policy '\\x1b[31mred\\x0d\\xc2\\x9bx' failed", "got: %s", e.msg);
}

Test(util, err_set_keeps_valid_utf8_and_escapes_invalid_bytes)
{
    nbx_err e = {0};
    nbx_err_set(&e, NBX_EPARSE, "id '%s' / '%s'", "caf\xc3\xa9 \xe2\x82\xac", "bad\xff\xc3");
    cr_assert_str_eq(e.msg, "id 'caf\xc3\xa9 \xe2\x82\xac' / 'bad\\xff\\xc3'", "got: %s", e.msg);
}

Test(util, err_prefix_escapes_the_prefix_and_keeps_the_message)
{
    nbx_err e = {0};
    nbx_err_set(&e, NBX_EPARSE, "field 'ts': bad\x07");
    nbx_err_prefix(&e, "%s:%d: ", "in\x1b.jsonl", 3);
    cr_assert_str_eq(e.msg, "in\\x1b.jsonl:3: field 'ts': bad\\x07", "got: %s", e.msg);
}

Test(util, long_messages_are_cut_at_a_character_boundary)
{
    char big[2000];
    /* 3-byte characters: a cut in the middle of one would leave invalid
     * UTF-8 at the end of the message. */
    for (size_t i = 0; i + 3 < sizeof big; i += 3)
        memcpy(big + i, "\xe2\x82\xac", 3);
    big[1998] = '\0';
    nbx_err e = {0};
    nbx_err_set(&e, NBX_EPARSE, "x%s", big);
    size_t n = strlen(e.msg);
    cr_assert_lt(n, sizeof e.msg);
    const unsigned char *p = (const unsigned char *)e.msg, *end = p + n;
    while (p < end) {
        size_t k = nbx_utf8_len(p, end);
        cr_assert_gt(k, 0, "invalid UTF-8 at byte %zu of %zu",
                     (size_t)(p - (const unsigned char *)e.msg), n);
        p += k;
    }
}

Test(util, err_set_null_is_harmless)
{
    cr_assert_eq(nbx_err_set(NULL, NBX_EIO, "x"), NBX_EIO);
    cr_assert_eq(nbx_err_prefix(NULL, "x"), NBX_EINVAL);
}

/* ========================================================================
 * nbx_utf8_len
 * ======================================================================== */

static size_t len_of(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    return nbx_utf8_len(p, p + strlen(s));
}

Test(util, utf8_len_accepts_well_formed_and_refuses_the_rest)
{
    cr_assert_eq(len_of("a"), 1);
    cr_assert_eq(len_of("\xc3\xa9"), 2);
    cr_assert_eq(len_of("\xe2\x82\xac"), 3);
    cr_assert_eq(len_of("\xf0\x9f\x98\x80"), 4);
    cr_assert_eq(len_of("\xc0\xaf"), 0, "overlong");
    cr_assert_eq(len_of("\xe0\x80\xaf"), 0, "overlong");
    cr_assert_eq(len_of("\xed\xa0\x80"), 0, "surrogate");
    cr_assert_eq(len_of("\xf4\x90\x80\x80"), 0, "beyond U+10FFFF");
    cr_assert_eq(len_of("\xe2\x82"), 0, "truncated");
    cr_assert_eq(len_of("\x80"), 0, "lone continuation");
}
