/* Suite: json (core/json.c): the pull reader and the writer. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nbx_int.h"

static nbx_arena arena;

static void teardown(void)
{
    nbx_arena_free(&arena);
}

TestSuite(json, .fini = teardown);

static nbx_jr reader(const char *s)
{
    nbx_jr r;
    nbx_jr_init(&r, s, strlen(s), &arena);
    return r;
}

Test(json, reads_nested_object_in_order)
{
    nbx_jr r = reader(" {\"a\": 1, \"b\": [true, null, \"x\"], \"c\": {\"d\": -2.5e1}} ");
    nbx_sv k;
    double d;
    bool b;
    nbx_sv s;
    cr_assert(nbx_jr_object_begin(&r));
    cr_assert_eq(nbx_jr_object_next(&r, &k), 1);
    cr_assert(nbx_sv_eq_cstr(k, "a"));
    cr_assert(nbx_jr_number(&r, &d));
    cr_assert_eq(d, 1.0);
    cr_assert_eq(nbx_jr_object_next(&r, &k), 1);
    cr_assert(nbx_jr_array_begin(&r));
    cr_assert_eq(nbx_jr_array_next(&r), 1);
    cr_assert(nbx_jr_bool(&r, &b) && b);
    cr_assert_eq(nbx_jr_array_next(&r), 1);
    cr_assert(nbx_jr_null(&r));
    cr_assert_eq(nbx_jr_array_next(&r), 1);
    cr_assert(nbx_jr_string(&r, &s) && nbx_sv_eq_cstr(s, "x"));
    cr_assert_eq(nbx_jr_array_next(&r), 0);
    cr_assert_eq(nbx_jr_object_next(&r, &k), 1);
    cr_assert(nbx_sv_eq_cstr(k, "c"));
    cr_assert(nbx_jr_object_begin(&r));
    cr_assert_eq(nbx_jr_object_next(&r, &k), 1);
    cr_assert(nbx_jr_number(&r, &d));
    cr_assert_eq(d, -25.0);
    cr_assert_eq(nbx_jr_object_next(&r, &k), 0);
    cr_assert_eq(nbx_jr_object_next(&r, &k), 0);
    cr_assert(nbx_jr_finish(&r), "%s", r.err);
}

Test(json, empty_containers)
{
    nbx_jr r = reader("{\"a\":{},\"b\":[]}");
    nbx_sv k;
    cr_assert(nbx_jr_object_begin(&r));
    cr_assert_eq(nbx_jr_object_next(&r, &k), 1);
    cr_assert(nbx_jr_object_begin(&r));
    cr_assert_eq(nbx_jr_object_next(&r, &k), 0);
    cr_assert_eq(nbx_jr_object_next(&r, &k), 1);
    cr_assert(nbx_jr_array_begin(&r));
    cr_assert_eq(nbx_jr_array_next(&r), 0);
    cr_assert_eq(nbx_jr_object_next(&r, &k), 0);
    cr_assert(nbx_jr_finish(&r));
}

Test(json, numbers_are_exact)
{
    const char *cases[] = {"0.1", "0.3", "49.0", "1e-7", "123456789012345678901234567890",
                           "2.2250738585072014e-308", "0.30000000000000004", "-0", "1e22",
                           "9007199254740993"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nbx_jr r = reader(cases[i]);
        double d;
        cr_assert(nbx_jr_number(&r, &d), "%s: %s", cases[i], r.err);
        cr_assert_eq(d, strtod(cases[i], NULL), "%s: got %.17g", cases[i], d);
    }
}

Test(json, rejects_bad_input_with_column)
{
    const char *bad[] = {"{\"a\":}", "{\"a\" 1}", "[1,]", "01", "1.", "\"\\u0000\"", "\"a\x01\"",
                         "\"\xff\"", "\"\xed\xa0\x80\"", "{\"a\":1", "nul", "\"\\ud800\"",
                         "1e400"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nbx_jr r = reader(bad[i]);
        bool ok = nbx_jr_skip(&r) && nbx_jr_finish(&r);
        cr_assert(!ok, "accepted bad JSON: %s", bad[i]);
        cr_assert(strstr(r.err, "column ") == r.err, "message without column: %s", r.err);
    }
}

Test(json, depth_is_bounded)
{
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    nbx_jr r;
    nbx_jr_init(&r, deep, 200, &arena);
    cr_assert_not(nbx_jr_skip(&r));
    cr_assert(strstr(r.err, "nesting") != NULL, "%s", r.err);
}

Test(json, unescapes_into_scratch)
{
    nbx_jr r = reader("\"a\\n\\\"b\\u00e9\\ud83d\\ude00\"");
    nbx_sv s;
    cr_assert(nbx_jr_string(&r, &s), "%s", r.err);
    cr_assert_eq(s.len, strlen("a\n\"b\xc3\xa9\xf0\x9f\x98\x80"));
    cr_assert(memcmp(s.ptr, "a\n\"b\xc3\xa9\xf0\x9f\x98\x80", s.len) == 0);
}

Test(json, writer_round_trips_numbers_and_escapes)
{
    nbx_buf b = {0};
    double vals[] = {0.1,  1.0 / 3.0, 49.0, -2.5, 1e300, 0.30000000000000004, 123456789.125,
                     -1e300, 1e19, -9.3e18};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        nbx_buf_reset(&b);
        nbx_jw_number(&b, vals[i]);
        nbx_buf_terminate(&b);
        cr_assert_eq(strtod(b.data, NULL), vals[i], "wrote %s for %.17g", b.data, vals[i]);
    }
    nbx_buf_reset(&b);
    nbx_jw_number(&b, NAN);
    nbx_buf_terminate(&b);
    cr_assert_str_eq(b.data, "null");
    nbx_buf_reset(&b);
    nbx_jw_string(&b, "q\"\\\n\x01\xff", 6);
    nbx_buf_terminate(&b);
    cr_assert_str_eq(b.data, "\"q\\\"\\\\\\n\\u0001\\ufffd\"");
    /* DEL and the C1 controls (U+0080..U+009F) are escaped too: a terminal
     * may obey them; other characters of two bytes stay as they are */
    nbx_buf_reset(&b);
    nbx_jw_string(&b, "a\x7f\xc2\x9b\xc2\xa0\xc3\xa9", 8);
    nbx_buf_terminate(&b);
    cr_assert_str_eq(b.data, "\"a\\u007f\\u009b\xc2\xa0\xc3\xa9\"");
    nbx_buf_free(&b);
}

/* The fixed-point digits of v as llround(|v| * 1e9) gives them: the
 * writer's own rounding must agree, half-way cases included. */
static void decimal_reference(double v, char *out, size_t cap)
{
    long long scaled = llround(fabs(v) * 1e9);
    int n = snprintf(out, cap, "%s%lld.%09lld", v < 0 && scaled ? "-" : "", scaled / 1000000000,
                     scaled % 1000000000);
    while (n > 0 && out[n - 1] == '0')
        out[--n] = '\0';
    if (n > 0 && out[n - 1] == '.')
        out[--n] = '\0';
}

Test(json, decimal_writer_rounds_half_away_from_zero_as_llround)
{
    /* half-way at the ninth decimal, a binary step either side of it,
     * whole numbers, the top of the fixed-point range, and a value whose
     * billionths are an odd whole number above 2^52 (adding 0.5 to it
     * rounds to even, one up) */
    double bases[] = {0.0015, 2.0000000005, 1.0000000025,   7.5,
                      1,      999999999.5,  123.4567890125, 4503599.627370497};
    nbx_buf b = {0};
    char want[64];
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        double around[] = {bases[i], nextafter(bases[i], 0), nextafter(bases[i], 1e10), -bases[i]};
        for (size_t k = 0; k < sizeof around / sizeof around[0]; k++) {
            nbx_buf_reset(&b);
            nbx_jw_decimal(&b, around[k]);
            nbx_buf_terminate(&b);
            decimal_reference(around[k], want, sizeof want);
            cr_assert_str_eq(b.data, want, "%.17g: got %s, want %s", around[k], b.data, want);
        }
    }
    nbx_buf_free(&b);
}

Test(json, decimal_writer_fixed_point_and_fallback)
{
    struct {
        double v;
        const char *want;
    } cases[] = {{0, "0"},          {1, "1"},           {-2.5, "-2.5"},
                 {0.1, "0.1"},      {1.0 / 3, "0.333333333"}, {12.0199999999, "12.02"},
                 {123456789.5, "123456789.5"}, {1e-9, "1e-09"},
                 {2e9, "2000000000"}, {-0.0004999, "-0.0004999"}};
    nbx_buf b = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nbx_buf_reset(&b);
        nbx_jw_decimal(&b, cases[i].v);
        nbx_buf_terminate(&b);
        cr_assert_str_eq(b.data, cases[i].want, "%.17g: got %s, want %s", cases[i].v, b.data,
                         cases[i].want);
    }
    nbx_buf_free(&b);
}
