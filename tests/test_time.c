/* Suite: time (core/time.c): RFC 3339 and epoch seconds. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "nbx_int.h"

Test(time, parses_rfc3339_forms_and_epoch_seconds)
{
    struct {
        const char *text;
        int64_t ms;
    } ok[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"2026-03-01T12:00:00Z", 1772366400000},
        {"2026-03-01t12:00:00z", 1772366400000},
        {"2026-03-01 12:00:00Z", 1772366400000},
        {"2026-03-01T13:30:00+01:30", 1772366400000},
        {"2026-03-01T10:00:00-02:00", 1772366400000},
        {"2026-03-01T12:00:00.250Z", 1772366400250},
        {"2026-03-01T12:00:00.123456789Z", 1772366400123},
        {"2024-02-29T00:00:00Z", 1709164800000},
        {"2026-03-01", 1772323200000},
        {"1969-12-31T23:59:59Z", -1000},
        {"1772366400", 1772366400000},
        {"1772366400.5", 1772366400500},
        {"-1", -1000},
        {"-62135596800", -62135596800000},
        {"0001-01-01T00:00:00Z", -62135596800000},
        {"9999-12-31T23:59:59.999Z", 253402300799999},
        {"0001-01-01T00:30:00+00:30", -62135596800000},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t ms = 42;
        cr_assert_eq(nbx_time_parse(ok[i].text, &ms), NBX_OK, "%s: %s", ok[i].text,
                     nbx_last_errmsg());
        cr_assert_eq(ms, ok[i].ms, "%s: got %lld", ok[i].text, (long long)ms);
    }
}

Test(time, rejects_what_is_not_a_time)
{
    const char *bad[] = {"",
                         "yesterday",
                         "2026-02-30T00:00:00Z",
                         "2025-02-29T00:00:00Z",
                         "2026-13-01T00:00:00Z",
                         "2026-03-01T24:00:00Z",
                         "2026-03-01T12:00:00",
                         "2026-03-01T12:00Z",
                         "2026-03-01T12:00:00+0100",
                         "2026-03-01T12:00:00.Z",
                         "2026-03-01T12:00:00Zjunk",
                         "1e400",
                         "99999999999999",
                         /* outside years 0001-9999: could not be written back */
                         "-62135596801",
                         "253402300800",
                         "0001-01-01T00:00:00+00:01",
                         "9999-12-31T23:59:59-00:01",
                         "9999-12-31T23:59:60Z"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms;
        cr_assert_eq(nbx_time_parse(bad[i], &ms), NBX_EPARSE, "accepted '%s'", bad[i]);
    }
    cr_assert(strstr(nbx_last_errmsg(), "RFC 3339") != NULL, "%s", nbx_last_errmsg());
    cr_assert_eq(nbx_time_parse(NULL, NULL), NBX_EINVAL);
}

Test(time, formats_utc_with_milliseconds_only_when_needed)
{
    struct {
        int64_t ms;
        const char *text;
    } cases[] = {
        {0, "1970-01-01T00:00:00Z"},
        {1772366400000, "2026-03-01T12:00:00Z"},
        {1772366400250, "2026-03-01T12:00:00.250Z"},
        {1772366400007, "2026-03-01T12:00:00.007Z"},
        {-1, "1969-12-31T23:59:59.999Z"},
        {1709164800000, "2024-02-29T00:00:00Z"},
        {253402300799000, "9999-12-31T23:59:59Z"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[NBX_TIME_BUFSZ];
        cr_assert_eq(nbx_time_format(cases[i].ms, buf), NBX_OK);
        cr_assert_str_eq(buf, cases[i].text);
        int64_t back;
        cr_assert_eq(nbx_time_parse(buf, &back), NBX_OK);
        cr_assert_eq(back, cases[i].ms, "round trip of %s", buf);
    }
    char buf[NBX_TIME_BUFSZ];
    cr_assert_eq(nbx_time_format(INT64_C(253402300800000), buf), NBX_EINVAL, "year 10000");
    cr_assert_eq(nbx_time_format(INT64_C(-62135596800001), buf), NBX_EINVAL, "year 0");
    /* the extremes must not overflow on the way (UBSan build) */
    cr_assert_eq(nbx_time_format(INT64_MIN, buf), NBX_EINVAL);
    cr_assert_eq(nbx_time_format(INT64_MAX, buf), NBX_EINVAL);
    cr_assert_eq(nbx_time_format(0, NULL), NBX_EINVAL);
}

Test(time, epoch_seconds_in_range_only)
{
    int64_t ms = 42;
    cr_assert_eq(nbx_time_from_secs(1772366400.5, &ms), NBX_OK);
    cr_assert_eq(ms, 1772366400500);
    cr_assert_eq(nbx_time_from_secs(-62135596800.0, &ms), NBX_OK);
    cr_assert_eq(ms, -62135596800000);
    double bad[] = {-62135596801.0, 253402300800.0, NAN, INFINITY, -INFINITY, 1e300};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ms = 42;
        cr_assert_eq(nbx_time_from_secs(bad[i], &ms), NBX_EPARSE, "accepted %g", bad[i]);
        cr_assert_eq(ms, 42, "%g changed the output", bad[i]);
    }
}

Test(time, day_numbers_floor_before_the_epoch)
{
    cr_assert_eq(nbx_day_of(0), 0);
    cr_assert_eq(nbx_day_of(NBX_MS_PER_DAY - 1), 0);
    cr_assert_eq(nbx_day_of(NBX_MS_PER_DAY), 1);
    cr_assert_eq(nbx_day_of(1772366400000), 20513);
}
