/*
 * time.c: RFC 3339 and epoch-seconds times, as milliseconds since the epoch,
 * read and written (also as JSON values).
 *
 * No libc time functions: timegm/strptime depend on the process's TZ and
 * locale, which an embedding server owns, not us.
 */
#include "nbx_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Days from 1970-01-01 to a proleptic Gregorian date (civil calendar). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yy + (*m <= 2));
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Read exactly n digits. */
static bool digits(const char **p, const char *end, int n, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        if (*p >= end || (*p)[0] < '0' || (*p)[0] > '9')
            return false;
        v = v * 10 + (unsigned)((*p)[0] - '0');
        (*p)++;
    }
    *out = v;
    return true;
}

static bool expect(const char **p, const char *end, char c)
{
    if (*p >= end || **p != c)
        return false;
    (*p)++;
    return true;
}

int nbx_time_from_secs(double secs, int64_t *out_ms)
{
    /* Compared before converting: NaN, infinities and values far out of
     * range never reach llround. A value out of range is usually a unit
     * mix-up (milliseconds given as seconds). */
    if (!(secs >= NBX_TIME_MIN_MS / 1000.0 && secs <= NBX_TIME_MAX_MS / 1000.0))
        return NBX_EPARSE;
    int64_t ms = (int64_t)llround(secs * 1000.0);
    if (ms < NBX_TIME_MIN_MS || ms > NBX_TIME_MAX_MS)
        return NBX_EPARSE;
    *out_ms = ms;
    return NBX_OK;
}

static int parse_epoch(const char *s, size_t n, int64_t *out_ms)
{
    double secs;
    if (!nbx_parse_double(s, n, &secs))
        return NBX_EPARSE;
    return nbx_time_from_secs(secs, out_ms);
}

int nbx_time_parse_n(const char *s, size_t n, int64_t *out_ms)
{
    if (!s || !out_ms)
        return NBX_EINVAL;
    const char *p = s, *end = s + n;
    if (n == 0)
        return NBX_EPARSE;
    /* A date has '-' at index 4; anything else numeric is epoch seconds. */
    if (!(n >= 10 && s[4] == '-'))
        return parse_epoch(s, n, out_ms);

    unsigned year, mon, day, hh = 0, mm = 0, ss = 0;
    if (!digits(&p, end, 4, &year) || !expect(&p, end, '-') || !digits(&p, end, 2, &mon) ||
        !expect(&p, end, '-') || !digits(&p, end, 2, &day))
        return NBX_EPARSE;
    if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon))
        return NBX_EPARSE;
    int64_t ms_frac = 0;
    int64_t offset_min = 0;
    if (p < end) {
        if (*p != 'T' && *p != 't' && *p != ' ')
            return NBX_EPARSE;
        p++;
        if (!digits(&p, end, 2, &hh) || !expect(&p, end, ':') || !digits(&p, end, 2, &mm) ||
            !expect(&p, end, ':') || !digits(&p, end, 2, &ss))
            return NBX_EPARSE;
        /* 60 is a leap second: counted as the next second's start. */
        if (hh > 23 || mm > 59 || ss > 60)
            return NBX_EPARSE;
        if (p < end && *p == '.') {
            p++;
            int nd = 0;
            int64_t scale = 100;
            while (p < end && *p >= '0' && *p <= '9') {
                if (nd < 3)
                    ms_frac += (*p - '0') * scale;
                scale /= 10;
                nd++;
                p++;
            }
            if (nd == 0 || nd > 9)
                return NBX_EPARSE;
        }
        if (p >= end)
            return NBX_EPARSE; /* RFC 3339 requires a zone */
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p == '-' ? -1 : 1;
            unsigned oh, om;
            p++;
            if (!digits(&p, end, 2, &oh) || !expect(&p, end, ':') || !digits(&p, end, 2, &om) ||
                oh > 23 || om > 59)
                return NBX_EPARSE;
            offset_min = sign * (int64_t)(oh * 60 + om);
        } else {
            return NBX_EPARSE;
        }
    }
    if (p != end)
        return NBX_EPARSE;
    int64_t days = days_from_civil(year, mon, day);
    int64_t secs = days * 86400 + hh * 3600 + mm * 60 + ss - offset_min * 60;
    int64_t ms = secs * 1000 + ms_frac;
    /* An offset can carry a date at either end past the range. */
    if (ms < NBX_TIME_MIN_MS || ms > NBX_TIME_MAX_MS)
        return NBX_EPARSE;
    *out_ms = ms;
    return NBX_OK;
}

NBX_API int nbx_time_parse(const char *text, int64_t *out_ms)
{
    if (!text || !out_ms)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_time_parse: NULL argument");
    int rc = nbx_time_parse_n(text, strlen(text), out_ms);
    if (rc != NBX_OK)
        return nbx_fail(NULL, rc, "'%.64s' is not a time: use RFC 3339 (2026-03-01T12:00:00Z) "
                                  "or epoch seconds",
                        text);
    return NBX_OK;
}

NBX_API int nbx_time_format(int64_t ms, char *buf)
{
    if (!buf)
        return NBX_EINVAL;
    /* Floor division by remainders: ms - 999 or secs * 1000 would
     * overflow near INT64_MIN. */
    int milli = (int)(ms % 1000);
    if (milli < 0)
        milli += 1000;
    int64_t secs = ms / 1000 - (milli != 0 && ms < 0);
    int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t rem = secs - days * 86400;
    int y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 1 || y > 9999)
        return NBX_EINVAL;
    unsigned hh = (unsigned)(rem / 3600), mm = (unsigned)(rem / 60 % 60),
             ss = (unsigned)(rem % 60);
    /* By hand: every decision result carries a time, and printf was a
     * visible share of a decision. */
    char *p = buf;
    unsigned fields[6] = {(unsigned)y, m, d, hh, mm, ss};
    static const char seps[6] = {'-', '-', 'T', ':', ':', '\0'};
    for (int i = 0; i < 6; i++) {
        unsigned v = fields[i];
        if (i == 0) {
            *p++ = (char)('0' + v / 1000);
            *p++ = (char)('0' + v / 100 % 10);
        }
        *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        if (seps[i])
            *p++ = seps[i];
    }
    if (milli) {
        *p++ = '.';
        *p++ = (char)('0' + milli / 100);
        *p++ = (char)('0' + milli / 10 % 10);
        *p++ = (char)('0' + milli % 10);
    }
    *p++ = 'Z';
    *p = '\0';
    return NBX_OK;
}

void nbx_jw_time(nbx_buf *b, int64_t ms)
{
    char t[NBX_TIME_BUFSZ];
    if (nbx_time_format(ms, t) != NBX_OK) {
        nbx_buf_append(b, "null", 4);
        return;
    }
    nbx_buf_putc(b, '"');
    nbx_buf_puts(b, t);
    nbx_buf_putc(b, '"');
}

NBX_API int64_t nbx_time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t nbx_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
