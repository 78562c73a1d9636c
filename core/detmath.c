/*
 * detmath.c: exp, log, pow, the trigonometric and hyperbolic functions,
 * computed with IEEE-exact operations only (+ - * / sqrt, frexp/ldexp,
 * integer arithmetic), so the bits of every result are the same on every
 * x86-64 machine whatever its CPU features. This file is compiled with
 * -ffp-contract=off (CMakeLists.txt): a fused multiply-add rounds once where
 * the code below expects two roundings, and would change results between
 * builds. No long double, no x87.
 *
 * Method. Results are formed as a double-double (an unevaluated sum hi + lo
 * carrying about 106 bits; Dekker's exact product with Veltkamp's split,
 * Knuth's exact sum) and rounded once at the end, so the last rounding is
 * nearly the only error: about half an ulp, against glibc within one.
 *   - exp: x = k ln2 + r, |r| <= ln2/2, ln2 in three parts whose first two
 *     have trailing zeros (k * part is exact); exp(r) - 1 by its Taylor
 *     series to r^14 (the tail is below 2^-57), its first terms in
 *     double-double.
 *   - log: x = 2^k m, m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s) with
 *     s = (m - 1)/(m + 1), |s| <= 0.172, by its series to s^29. For pow the
 *     first terms are in double-double: about 2^-70 relative, which large
 *     exponents need; log and log10 keep only s in double-double.
 *   - pow: exp(y log|x|) with the product in double-double; exponents
 *     beyond 2^64 only decide overflow or underflow.
 *   - sin, cos, tan: x = k pi/2 + r; Cody-Waite with pi/2 in four parts for
 *     |x| < 2^20, Payne-Hanek (the bits of 2/pi in integers) beyond that
 *     or when r came out too small to trust; Taylor kernels on |r| <= pi/4.
 *   - atan: atan(u) = atan(j/8) + atan((u - j/8)/(1 + u j/8)), the second
 *     argument under 1/16; atan2, asin, acos go through the same angle of a
 *     pair (asin x = angle of (x, sqrt(1 - x^2))).
 *   - sinh, cosh, tanh: from exp's reduction, with exp(x) - 1 kept exact
 *     near zero so small arguments do not cancel.
 * The constants (ln2 and pi/2 splits, atan(j/8), 2/pi's bits) were computed
 * with mpmath at 400 bits; tests/test_detmath.c checks results against
 * glibc over random arguments and against a table of fixed bits.
 */
#include "detmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ========================================================================
 * Double-double arithmetic
 * ======================================================================== */

typedef struct {
    double hi, lo;
} dd;

static uint64_t bits_of(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static double double_of(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* 2^n for -1022 <= n <= 1023, exactly. */
static double pow2(int n)
{
    return double_of((uint64_t)(n + 1023) << 52);
}

/* a + b exactly (Knuth). */
static dd two_sum(double a, double b)
{
    double s = a + b;
    double bb = s - a;
    return (dd){s, (a - (s - bb)) + (b - bb)};
}

/* a + b exactly when |a| >= |b| or a is 0 (Dekker). */
static dd fast_two_sum(double a, double b)
{
    double s = a + b;
    return (dd){s, b - (s - a)};
}

/* a * b exactly, |a|, |b| < 2^995 (Veltkamp's split, Dekker's product). */
static dd two_prod(double a, double b)
{
    const double split = 134217729.0; /* 2^27 + 1 */
    double ca = split * a, cb = split * b;
    double ah = ca - (ca - a), al = a - ah;
    double bh = cb - (cb - b), bl = b - bh;
    double p = a * b;
    return (dd){p, ((ah * bh - p) + ah * bl + al * bh) + al * bl};
}

static dd dd_add(dd a, dd b)
{
    dd s = two_sum(a.hi, b.hi);
    return fast_two_sum(s.hi, s.lo + (a.lo + b.lo));
}

static dd dd_neg(dd a)
{
    return (dd){-a.hi, -a.lo};
}

static dd dd_mul(dd a, dd b)
{
    dd p = two_prod(a.hi, b.hi);
    return fast_two_sum(p.hi, p.lo + (a.hi * b.lo + a.lo * b.hi));
}

static dd dd_mul_d(dd a, double b)
{
    dd p = two_prod(a.hi, b);
    return fast_two_sum(p.hi, p.lo + a.lo * b);
}

/* a / b: the quotient, then the remainder's quotient. */
static dd dd_div(dd a, dd b)
{
    double q = a.hi / b.hi;
    dd p = two_prod(q, b.hi);
    double r = (((a.hi - p.hi) - p.lo) + a.lo) - q * b.lo;
    return fast_two_sum(q, r / b.hi);
}

static dd dd_sqrt(dd a)
{
    if (a.hi <= 0)
        return (dd){0, 0};
    double h = sqrt(a.hi);
    dd p = two_prod(h, h);
    return fast_two_sum(h, (((a.hi - p.hi) - p.lo) + a.lo) / (2 * h));
}

/* ========================================================================
 * Constants
 * ======================================================================== */

/* ln2 = LN2_HI + LN2_MID + LN2_LO; the first two have 42 significant bits,
 * so k * part is exact for |k| < 2^11. */
static const double LN2_HI = 0x1.62e42fefa3800p-1;
static const double LN2_MID = 0x1.ef35793c76800p-45;
static const double LN2_LO = -0x1.9ff0342542fc3p-90;
static const double INV_LN2 = 0x1.71547652b82fep+0;
static const dd INV_LN10 = {0x1.bcb7b1526e50ep-2, 0x1.95355baaafad3p-57};
static const double SQRT2 = 0x1.6a09e667f3bcdp+0;

/* pi/2 in four parts, the first three of 33 bits: k * part is exact for
 * |k| < 2^20. */
static const double PIO2_1 = 0x1.921fb54400000p+0;
static const double PIO2_2 = 0x1.0b4611a600000p-34;
static const double PIO2_3 = 0x1.3198a2e000000p-69;
static const double PIO2_4 = 0x1.b839a252049c1p-104;
static const double INV_PIO2 = 0x1.45f306dc9c883p-1;
static const dd PIO2 = {0x1.921fb54442d18p+0, 0x1.1a62633145c07p-54};
static const dd PI = {0x1.921fb54442d18p+1, 0x1.1a62633145c07p-53};
static const double PIO4 = 0x1.921fb54442d18p-1;

/* Adding then subtracting 1.5 * 2^52 rounds a double below 2^51 to the
 * nearest integer (ties to even), in IEEE arithmetic. */
static const double ROUND_SHIFT = 0x1.8p52;

/* atan(j/8), j = 0..8. */
static const dd ATAN_EIGHTHS[9] = {
    {0, 0},
    {0x1.fd5ba9aac2f6ep-4, -0x1.cd37686760c17p-59},
    {0x1.f5b75f92c80ddp-3, 0x1.8ab6e3cf7afbdp-57},
    {0x1.6f61941e4def1p-2, -0x1.c63aae6f6e918p-56},
    {0x1.dac670561bb4fp-2, 0x1.a2b7f222f65e2p-56},
    {0x1.1e00babdefeb4p-1, -0x1.928df287a668fp-58},
    {0x1.4978fa3269ee1p-1, 0x1.2419a87f2a458p-56},
    {0x1.700a7c5784634p-1, -0x1.8c34d25aadef6p-56},
    {0x1.921fb54442d18p-1, 0x1.1a62633145c07p-55},
};

/* 2/pi's first 1280 bits after the point, most significant first: enough
 * for the largest double (exponent 1023) and a 192-bit window past it. */
static const uint64_t TWO_OVER_PI[20] = {
    0xa2f9836e4e441529u, 0xfc2757d1f534ddc0u, 0xdb6295993c439041u, 0xfe5163abdebbc561u,
    0xb7246e3a424dd2e0u, 0x06492eea09d1921cu, 0xfe1deb1cb129a73eu, 0xe88235f52ebb4484u,
    0xe99c7026b45f7e41u, 0x3991d639835339f4u, 0x9c845f8bbdf9283bu, 0x1ff897ffde05980fu,
    0xef2f118b5a0a6d1fu, 0x6d367ecf27cb09b7u, 0x4f463f669e5fea2du, 0x7527bac7ebe5f17bu,
    0x3d0739f78a5292eau, 0x6bfb5fb11f8d5d08u, 0x56033046fc7b6babu, 0xf0cfbc209af4361du,
};

/* ========================================================================
 * exp and its reduction
 * ======================================================================== */

/* exp(a + b) = 2^k (1 + p): returns k, sets p. |a| < 750, |b| tiny beside
 * a (b is the low part of a double-double). */
static int exp_reduce(double a, double b, dd *p)
{
    double kd = (a * INV_LN2 + ROUND_SHIFT) - ROUND_SHIFT;
    double r0 = a - kd * LN2_HI; /* exact: k * LN2_HI is, and Sterbenz */
    dd r = two_sum(r0, -kd * LN2_MID);
    r = two_sum(r.hi, r.lo + (b - kd * LN2_LO));
    double x = r.hi;
    /* exp(x) - 1 = x + x^2/2 + x^3/6 + x^4 (1/4! + x/5! + ... + x^10/14!):
     * the first three terms in double-double, so pow's results are nearly
     * always correctly rounded (pow(x, 2) is x * x); the rest in double. */
    dd z = two_prod(x, x);
    double q = 1.0 / 87178291200.0;
    q = 1.0 / 6227020800.0 + x * q;
    q = 1.0 / 479001600.0 + x * q;
    q = 1.0 / 39916800.0 + x * q;
    q = 1.0 / 3628800.0 + x * q;
    q = 1.0 / 362880.0 + x * q;
    q = 1.0 / 40320.0 + x * q;
    q = 1.0 / 5040.0 + x * q;
    q = 1.0 / 720.0 + x * q;
    q = 1.0 / 120.0 + x * q;
    q = 1.0 / 24.0 + x * q;
    static const dd one_sixth = {0x1.5555555555555p-3, 0x1.5555555555555p-57};
    dd cube = dd_mul(dd_mul_d(z, x), one_sixth);
    dd s = dd_add((dd){0.5 * z.hi, 0.5 * z.lo}, cube);
    s.lo += z.hi * z.hi * q;
    /* exp(x + lo) = exp(x)(1 + lo + ...): the low part's share. */
    s.lo += r.lo * (1 + x);
    dd sum = two_sum(x, s.hi);
    *p = fast_two_sum(sum.hi, sum.lo + s.lo);
    return (int)kd;
}

/* y * 2^k with one rounding, also when the result is subnormal. */
static double scale2(double y, int k)
{
    if (k > 1023)
        return (y * pow2(k - 1000)) * 0x1p1000;
    if (k < -1022)
        return (y * pow2(k + 1000)) * 0x1p-1000;
    return y * pow2(k);
}

/* 2^k (1 + p) rounded. */
static double exp_finish(int k, dd p)
{
    dd a = two_sum(1.0, p.hi);
    return scale2(a.hi + (a.lo + p.lo), k);
}

/* exp(a) as a double-double (|a| < 700, so no scaling leaves the range). */
static dd exp_dd(double a)
{
    dd p;
    int k = exp_reduce(a, 0, &p);
    dd one_p = two_sum(1.0, p.hi);
    one_p = fast_two_sum(one_p.hi, one_p.lo + p.lo);
    double s = pow2(k);
    return (dd){one_p.hi * s, one_p.lo * s};
}

/* exp(a) - 1 for |a| < ln2/2, where the reduction leaves k = 0: p itself,
 * accurate relative to its own size. */
static dd expm1_small(double a)
{
    dd p;
    (void)exp_reduce(a, 0, &p);
    return fast_two_sum(p.hi, p.lo);
}

double nbx_detmath_exp(double x)
{
    if (isnan(x))
        return x + x;
    if (x > 710)
        return HUGE_VAL;
    if (x < -746)
        return 0;
    dd p;
    int k = exp_reduce(x, 0, &p);
    return exp_finish(k, p);
}

/* ========================================================================
 * log
 * ======================================================================== */

/* x = 2^k m, m in [sqrt(1/2), sqrt(2)), for finite x > 0: returns m. */
static double log_split(double x, int *k)
{
    uint64_t u = bits_of(x);
    *k = 0;
    if (u < 0x0010000000000000u) { /* subnormal: make it normal */
        x *= 0x1p54;
        u = bits_of(x);
        *k = -54;
    }
    *k += (int)(u >> 52) - 1023;
    double m = double_of((u & 0x000fffffffffffffu) | 0x3ff0000000000000u);
    if (m > SQRT2) {
        m *= 0.5;
        ++*k;
    }
    return m;
}

/* s = (m - 1)/(m + 1) as a double-double: m - 1 is exact (Sterbenz), m + 1
 * is not, so it stays double-double. */
static dd log_ratio(double m)
{
    return dd_div((dd){m - 1.0, 0}, two_sum(m, 1.0));
}

/* k ln2 + lm, k ln2 in three parts. */
static dd log_add_k(int k, dd lm)
{
    double kd = k;
    dd r = two_sum(kd * LN2_HI, lm.hi);
    return fast_two_sum(r.hi, r.lo + (kd * LN2_MID + (lm.lo + kd * LN2_LO)));
}

/* log(x) for finite x > 0, relative error about 2^-59: what log and log10
 * need, at a third of log_dd's cost. The series' terms after 2s are under
 * 1% of the whole, so they are computed in double. */
static dd log_fast(double x)
{
    int k;
    dd s = log_ratio(log_split(x, &k));
    double z = s.hi * s.hi;
    double t = 1.0 / 27;
    t = 1.0 / 25 + z * t;
    t = 1.0 / 23 + z * t;
    t = 1.0 / 21 + z * t;
    t = 1.0 / 19 + z * t;
    t = 1.0 / 17 + z * t;
    t = 1.0 / 15 + z * t;
    t = 1.0 / 13 + z * t;
    t = 1.0 / 11 + z * t;
    t = 1.0 / 9 + z * t;
    t = 1.0 / 7 + z * t;
    t = 1.0 / 5 + z * t;
    t = 1.0 / 3 + z * t;
    dd lm = fast_two_sum(2 * s.hi, 2 * (s.lo + s.hi * z * t));
    return k == 0 ? lm : log_add_k(k, lm);
}

/* log(x) for finite x > 0, relative error about 2^-70: pow's. */
static dd log_dd(double x)
{
    int k;
    dd s = log_ratio(log_split(x, &k));
    dd z = dd_mul(s, s);
    double zh = z.hi;
    /* atanh(s)/s = 1 + z/3 + z^2/5 + ...: from z^3/7 on in double (it is
     * under 2^-17 of the whole), the first three terms in double-double. */
    double t = 1.0 / 29;
    t = 1.0 / 27 + zh * t;
    t = 1.0 / 25 + zh * t;
    t = 1.0 / 23 + zh * t;
    t = 1.0 / 21 + zh * t;
    t = 1.0 / 19 + zh * t;
    t = 1.0 / 17 + zh * t;
    t = 1.0 / 15 + zh * t;
    t = 1.0 / 13 + zh * t;
    t = 1.0 / 11 + zh * t;
    t = 1.0 / 9 + zh * t;
    t = 1.0 / 7 + zh * t;
    static const dd one_fifth = {0x1.999999999999ap-3, -0x1.999999999999ap-57};
    static const dd one_third = {0x1.5555555555555p-2, 0x1.5555555555555p-56};
    dd acc = dd_add(one_fifth, dd_mul_d(z, t));
    acc = dd_add(one_third, dd_mul(z, acc));
    acc = dd_add((dd){1, 0}, dd_mul(z, acc));
    dd lm = dd_mul(s, acc);
    lm.hi *= 2;
    lm.lo *= 2;
    return k == 0 ? lm : log_add_k(k, lm);
}

/* The special values every logarithm shares; 0 when x is an ordinary
 * positive number. */
static int log_special(double x, double *out)
{
    if (isnan(x)) {
        *out = x + x;
    } else if (x < 0) {
        *out = NAN;
    } else if (x == 0) {
        *out = -HUGE_VAL;
    } else if (isinf(x)) {
        *out = x;
    } else {
        return 0;
    }
    return 1;
}

double nbx_detmath_log(double x)
{
    double special;
    if (log_special(x, &special))
        return special;
    return log_fast(x).hi;
}

double nbx_detmath_log10(double x)
{
    double special;
    if (log_special(x, &special))
        return special;
    return dd_mul(log_fast(x), INV_LN10).hi;
}

double nbx_detmath_log_base(double x, double base)
{
    if (isfinite(x) && x > 0 && isfinite(base) && base > 0 && base != 1)
        return dd_div(log_dd(x), log_dd(base)).hi;
    /* What the quotient of the two logarithms gives: NaN, infinities, 0. */
    return nbx_detmath_log(x) / nbx_detmath_log(base);
}

/* ========================================================================
 * pow
 * ======================================================================== */

/* y is an integer, and odd. */
static int is_odd_integer(double y)
{
    if (!isfinite(y) || fabs(y) >= 0x1p53 || floor(y) != y)
        return 0;
    return floor(y * 0.5) != y * 0.5;
}

static int is_integer(double y)
{
    return isfinite(y) && floor(y) == y;
}

/* C99 F.9.4.4's cases of a zero, infinite or negative base. */
static double pow_of_zero(double x, double y)
{
    int odd = is_odd_integer(y);
    if (y < 0)
        return odd ? copysign(HUGE_VAL, x) : HUGE_VAL;
    return odd ? x : 0.0;
}

static double pow_of_inf(double x, double y)
{
    int odd = is_odd_integer(y);
    if (x > 0)
        return y < 0 ? 0.0 : HUGE_VAL;
    if (y < 0)
        return odd ? -0.0 : 0.0;
    return odd ? -HUGE_VAL : HUGE_VAL;
}

double nbx_detmath_pow(double x, double y)
{
    if (y == 0 || x == 1)
        return 1.0;
    if (isnan(x) || isnan(y))
        return x + y;
    double ax = fabs(x);
    if (isinf(y)) {
        if (ax == 1)
            return 1.0;
        return (ax < 1) == (y < 0) ? HUGE_VAL : 0.0;
    }
    if (x == 0)
        return pow_of_zero(x, y);
    if (isinf(x))
        return pow_of_inf(x, y);
    /* The exponents where one IEEE operation is the correctly rounded
     * result (and what LuaJIT's x^2 and x^0.5 compiled to): cheap, and pow
     * agrees with x * x and sqrt(x) exactly. */
    if (y == 2)
        return x * x;
    if (y == 1)
        return x;
    if (y == -1)
        return 1 / x;
    if (y == 0.5 && x > 0)
        return sqrt(x);
    double sign = 1;
    if (x < 0) {
        if (!is_integer(y))
            return NAN;
        if (is_odd_integer(y))
            sign = -1;
    }
    dd l = log_dd(ax);
    dd p;
    if (fabs(y) >= 0x1p64) {
        /* |y log|x|| >= 2^64 2^-53 since |x| != 1: only the sign matters. */
        p = (dd){y * l.hi, 0};
    } else {
        p = dd_mul_d(l, y);
    }
    if (p.hi > 710)
        return sign * HUGE_VAL;
    if (p.hi < -746)
        return sign * 0.0;
    dd e;
    int k = exp_reduce(p.hi, p.lo, &e);
    return sign * exp_finish(k, e);
}

/* ========================================================================
 * sin, cos, tan
 * ======================================================================== */

/* 64 bits of 2/pi from bit i on (bit 1 is the first after the point;
 * bits before it are 0). */
static uint64_t two_over_pi_bits(int i)
{
    int j = i - 1;
    if (j <= -64)
        return 0;
    if (j < 0)
        return TWO_OVER_PI[0] >> -j;
    int w = j / 64, s = j % 64;
    uint64_t v = TWO_OVER_PI[w] << s;
    if (s && w + 1 < 20)
        v |= TWO_OVER_PI[w + 1] >> (64 - s);
    return v;
}

/* Payne-Hanek: x = k pi/2 + r for any finite x; returns k mod 4. x is
 * M 2^e with M a 53-bit integer; x 2/pi's bits worth 4 or more are a
 * multiple of 4 and dropped, so only 192 bits of 2/pi from bit e - 1 on
 * count: x 2/pi = M W 2^-190 (mod 4). */
static int reduce_large(double x, dd *r)
{
    if (x < 0) { /* sin and tan are odd: reduce |x| and mirror */
        int k = reduce_large(-x, r);
        *r = dd_neg(*r);
        return -k & 3;
    }
    uint64_t u = bits_of(x);
    int biased = (int)((u >> 52) & 0x7ff);
    uint64_t mant = u & 0x000fffffffffffffu;
    int e;
    if (biased == 0) {
        e = -1074;
    } else {
        mant |= 1ull << 52;
        e = biased - 1075;
    }
    int i0 = e - 1;
    uint64_t w0 = two_over_pi_bits(i0), w1 = two_over_pi_bits(i0 + 64),
             w2 = two_over_pi_bits(i0 + 128);
    unsigned __int128 p2 = (unsigned __int128)mant * w2;
    unsigned __int128 p1 = (unsigned __int128)mant * w1 + (uint64_t)(p2 >> 64);
    uint64_t top = (uint64_t)((unsigned __int128)mant * w0) + (uint64_t)(p1 >> 64);
    uint64_t mid = (uint64_t)p1, low = (uint64_t)p2;
    /* The product is top:mid:low; the point sits below bit 62 of top. */
    int k = (int)(top >> 62);
    uint64_t fh = (top << 2) | (mid >> 62);
    uint64_t fl = (mid << 2) | (low >> 62);
    int neg = 0;
    if (fh >> 63) { /* fraction >= 1/2: round k up, take 1 - fraction */
        k++;
        neg = 1;
        fh = ~fh;
        fl = ~fl + 1;
        if (fl == 0)
            fh++;
    }
    if (fh == 0 && fl == 0) {
        *r = (dd){0, 0};
        return k & 3;
    }
    /* The 128-bit fraction fh:fl * 2^-128 as a double-double. */
    int shift = 0;
    while (!(fh >> 63)) { /* at most 127 steps, only for a tiny fraction */
        fh = (fh << 1) | (fl >> 63);
        fl <<= 1;
        shift++;
    }
    double a = (double)(fh >> 11) * pow2(-53 - shift);
    double b = (double)(((fh & 0x7ff) << 53) | (fl >> 11)) * pow2(-117 - shift);
    dd f = dd_mul(fast_two_sum(a, b), PIO2);
    *r = neg ? dd_neg(f) : f;
    return k & 3;
}

/* x = k pi/2 + r, |r| <= about pi/4; returns k mod 4. x finite. */
static int reduce_quadrant(double x, dd *r)
{
    if (fabs(x) < 0x1p20) {
        double kd = (x * INV_PIO2 + ROUND_SHIFT) - ROUND_SHIFT;
        double t = x - kd * PIO2_1; /* exact */
        dd a = two_sum(t, -kd * PIO2_2);
        dd b = two_sum(a.hi, -kd * PIO2_3);
        *r = two_sum(b.hi, (a.lo + b.lo) - kd * PIO2_4);
        /* The absolute error is about 2^-100: relative, it is small enough
         * unless x is very near a multiple of pi/2. */
        if (fabs(r->hi) > 0x1p-30)
            return (int)((int64_t)kd & 3);
    }
    return reduce_large(x, r);
}

/* sin(r), |r| <= pi/4, as an unevaluated sum whose hi is the rounding. */
static dd sin_kernel(dd r)
{
    double x = r.hi, z = x * x;
    double p = -1.0 / 121645100408832000.0; /* -1/19! */
    p = 1.0 / 355687428096000.0 + z * p;
    p = -1.0 / 1307674368000.0 + z * p;
    p = 1.0 / 6227020800.0 + z * p;
    p = -1.0 / 39916800.0 + z * p;
    p = 1.0 / 362880.0 + z * p;
    p = -1.0 / 5040.0 + z * p;
    p = 1.0 / 120.0 + z * p;
    double t = x * z * (-1.0 / 6 + z * p);
    return fast_two_sum(x, t + r.lo * (1 - 0.5 * z));
}

/* cos(r), |r| <= pi/4. */
static dd cos_kernel(dd r)
{
    double x = r.hi;
    dd z = two_prod(x, x);
    double hz = 0.5 * z.hi;
    double w = 1.0 - hz;
    double p = 1.0 / 2432902008176640000.0; /* 1/20! */
    p = -1.0 / 6402373705728000.0 + z.hi * p;
    p = 1.0 / 20922789888000.0 + z.hi * p;
    p = -1.0 / 87178291200.0 + z.hi * p;
    p = 1.0 / 479001600.0 + z.hi * p;
    p = -1.0 / 3628800.0 + z.hi * p;
    p = 1.0 / 40320.0 + z.hi * p;
    p = -1.0 / 720.0 + z.hi * p;
    p = 1.0 / 24.0 + z.hi * p;
    /* (1 - w) - hz is the rounding error of w, exactly. */
    double tail = (((1.0 - w) - hz) - 0.5 * z.lo) + (z.hi * z.hi * p - x * r.lo);
    return fast_two_sum(w, tail);
}

/* Below this, sin, tan, asin, atan, sinh and tanh of x round to x. */
#define DM_TINY 0x1p-27

double nbx_detmath_sin(double x)
{
    if (!isfinite(x))
        return x - x;
    if (fabs(x) < DM_TINY)
        return x;
    if (fabs(x) <= PIO4)
        return sin_kernel((dd){x, 0}).hi;
    dd r;
    switch (reduce_quadrant(x, &r)) {
    case 0:
        return sin_kernel(r).hi;
    case 1:
        return cos_kernel(r).hi;
    case 2:
        return -sin_kernel(r).hi;
    default:
        return -cos_kernel(r).hi;
    }
}

double nbx_detmath_cos(double x)
{
    if (!isfinite(x))
        return x - x;
    if (fabs(x) <= PIO4)
        return cos_kernel((dd){x, 0}).hi;
    dd r;
    switch (reduce_quadrant(x, &r)) {
    case 0:
        return cos_kernel(r).hi;
    case 1:
        return -sin_kernel(r).hi;
    case 2:
        return -cos_kernel(r).hi;
    default:
        return sin_kernel(r).hi;
    }
}

double nbx_detmath_tan(double x)
{
    if (!isfinite(x))
        return x - x;
    if (fabs(x) < DM_TINY)
        return x;
    dd r = {x, 0};
    int k = fabs(x) <= PIO4 ? 0 : reduce_quadrant(x, &r);
    dd s = sin_kernel(r), c = cos_kernel(r);
    return k & 1 ? -dd_div(c, s).hi : dd_div(s, c).hi;
}

/* ========================================================================
 * atan, atan2, asin, acos
 * ======================================================================== */

/* atan(u) for 0 <= u <= 1: atan(j/8) + atan(t), t = (u - c)/(1 + u c),
 * c = j/8 the nearest eighth, so |t| <= 1/16. */
static dd atan_unit(dd u)
{
    int j = (int)(u.hi * 8 + 0.5);
    double c = j * 0.125;
    dd num = two_sum(u.hi - c, u.lo); /* u.hi - c is exact (Sterbenz) */
    dd uc = two_prod(u.hi, c);
    dd den = two_sum(1.0, uc.hi);
    den = fast_two_sum(den.hi, den.lo + (uc.lo + u.lo * c));
    dd t = dd_div(num, den);
    double x = t.hi, z = x * x;
    double p = 1.0 / 17;
    p = -1.0 / 15 + z * p;
    p = 1.0 / 13 + z * p;
    p = -1.0 / 11 + z * p;
    p = 1.0 / 9 + z * p;
    p = -1.0 / 7 + z * p;
    p = 1.0 / 5 + z * p;
    p = -1.0 / 3 + z * p;
    /* atan(x + lo) = atan(x) + lo/(1 + x^2) + ... */
    double tail = x * z * p + t.lo * (1 - z);
    dd res = two_sum(ATAN_EIGHTHS[j].hi, x);
    return fast_two_sum(res.hi, res.lo + (ATAN_EIGHTHS[j].lo + tail));
}

/* The angle of the point (x, y), both >= 0, not both 0, of moderate size
 * (their quotient and its remainder stay normal): in [0, pi/2]. */
static dd angle(dd y, dd x)
{
    if (y.hi <= x.hi)
        return atan_unit(dd_div(y, x));
    return dd_add(PIO2, dd_neg(atan_unit(dd_div(x, y))));
}

double nbx_detmath_atan(double x)
{
    if (isnan(x))
        return x + x;
    double a = fabs(x);
    if (a < DM_TINY)
        return x;
    if (a >= 0x1p53) /* pi/2 - 1/a rounds to pi/2's double */
        return copysign(PIO2.hi, x);
    dd r;
    if (a <= 1) {
        r = atan_unit((dd){a, 0});
    } else {
        double q = 1 / a;
        dd p = two_prod(q, a);
        r = dd_add(PIO2, dd_neg(atan_unit((dd){q, ((1 - p.hi) - p.lo) / a})));
    }
    return copysign(r.hi, x);
}

double nbx_detmath_atan2(double y, double x)
{
    if (isnan(x) || isnan(y))
        return x + y;
    double ax = fabs(x), ay = fabs(y);
    dd theta;
    if (ay == 0) {
        theta = (dd){0, 0};
    } else if (ax == 0) {
        theta = PIO2;
    } else if (isinf(ay)) {
        theta = isinf(ax) ? (dd){PIO2.hi * 0.5, PIO2.lo * 0.5} : PIO2;
        if (isinf(ax) && x < 0)
            theta = dd_add(PI, dd_neg(theta));
        return copysign(theta.hi, y);
    } else if (isinf(ax)) {
        theta = (dd){0, 0};
    } else {
        int ex, ey;
        (void)frexp(ax, &ex);
        (void)frexp(ay, &ey);
        if (ey - ex < -60) {
            theta = (dd){ay / ax, 0}; /* atan(u) rounds to u */
        } else if (ey - ex > 60) {
            theta = dd_add(PIO2, (dd){-(ax / ay), 0});
        } else {
            /* Scale both so the larger is near 1: exact, the smaller
             * stays normal, and the products in the division cannot
             * overflow. */
            int e = ex > ey ? ex : ey;
            theta = angle((dd){ldexp(ay, -e), 0}, (dd){ldexp(ax, -e), 0});
        }
    }
    if (x < 0 || (x == 0 && signbit(x) && ay == 0))
        theta = dd_add(PI, dd_neg(theta));
    return copysign(theta.hi, y);
}

/* sqrt(1 - a^2) for 0 <= a <= 1, as a double-double. */
static dd cosine_of_sine(double a)
{
    dd w;
    if (a >= 0.5) {
        /* (1 - a)(1 + a): 1 - a is exact. */
        w = dd_mul_d(two_sum(1.0, a), 1.0 - a);
    } else {
        dd sq = two_prod(a, a);
        w = two_sum(1.0, -sq.hi);
        w = fast_two_sum(w.hi, w.lo - sq.lo);
    }
    return dd_sqrt(w);
}

double nbx_detmath_asin(double x)
{
    if (isnan(x))
        return x + x;
    double a = fabs(x);
    if (a > 1)
        return NAN;
    if (a < DM_TINY)
        return x;
    return copysign(angle((dd){a, 0}, cosine_of_sine(a)).hi, x);
}

double nbx_detmath_acos(double x)
{
    if (isnan(x))
        return x + x;
    double a = fabs(x);
    if (a > 1)
        return NAN;
    dd theta = angle(cosine_of_sine(a), (dd){a, 0});
    if (x < 0)
        theta = dd_add(PI, dd_neg(theta));
    return theta.hi;
}

/* ========================================================================
 * sinh, cosh, tanh
 * ======================================================================== */

/* Below this |x|, exp's reduction leaves k = 0 (ln2/2 = 0.3466). */
#define DM_K0 0.34

double nbx_detmath_cosh(double x)
{
    if (isnan(x))
        return x + x;
    double a = fabs(x);
    if (a > 711)
        return HUGE_VAL;
    if (a < DM_TINY)
        return 1.0;
    if (a >= 22) { /* e^-a is below 2^-63 of e^a: e^a / 2 */
        dd p;
        int k = exp_reduce(a, 0, &p);
        return exp_finish(k - 1, p);
    }
    dd e = exp_dd(a);
    dd sum = dd_add(e, dd_div((dd){1, 0}, e));
    return sum.hi * 0.5;
}

double nbx_detmath_sinh(double x)
{
    if (isnan(x))
        return x + x;
    double a = fabs(x);
    if (a < DM_TINY)
        return x;
    if (a > 711)
        return copysign(HUGE_VAL, x);
    double r;
    if (a < DM_K0) {
        /* (m + m/(1 + m))/2, m = e^a - 1: no cancellation near 0. */
        dd m = expm1_small(a);
        dd q = dd_div(m, dd_add((dd){1, 0}, m));
        r = dd_add(m, q).hi * 0.5;
    } else if (a < 22) {
        dd e = exp_dd(a);
        r = dd_add(e, dd_neg(dd_div((dd){1, 0}, e))).hi * 0.5;
    } else {
        dd p;
        int k = exp_reduce(a, 0, &p);
        r = exp_finish(k - 1, p);
    }
    return copysign(r, x);
}

double nbx_detmath_tanh(double x)
{
    if (isnan(x))
        return x + x;
    double a = fabs(x);
    if (a < DM_TINY)
        return x;
    if (a >= 22) /* 1 - 2e^-2a rounds to 1 */
        return copysign(1.0, x);
    double r;
    if (a < DM_K0 / 2) {
        /* m/(m + 2), m = e^2a - 1 */
        dd m = expm1_small(2 * a);
        r = dd_div(m, dd_add(m, (dd){2, 0})).hi;
    } else {
        dd e = exp_dd(2 * a);
        r = dd_div(dd_add(e, (dd){-1, 0}), dd_add(e, (dd){1, 0})).hi;
    }
    return copysign(r, x);
}
