/*
 * detmath.h: elementary functions with the same bits on every machine
 * (detmath.c). Policies reach them instead of the C library's: glibc picks
 * a different exp, pow, sin... on CPUs with and without FMA, and a decision
 * must replay bit for bit across processes, machines and LuaJIT packages.
 *
 * Each function follows C99 Annex F for special values (NaN, infinities,
 * signed zeros, overflow to infinity, underflow to zero) and stays within
 * about one ulp of the exact result (measured figures: tests/test_detmath.c
 * and docs/sandbox.md). They never set errno, read no global state and are
 * safe from any thread.
 */
#ifndef NBX_DETMATH_H
#define NBX_DETMATH_H

double nbx_detmath_exp(double x);
double nbx_detmath_log(double x);
/* log(x) / log(base) (LuaJIT 2.1's math.log(x, base)), rounded once. */
double nbx_detmath_log_base(double x, double base);
double nbx_detmath_log10(double x);
double nbx_detmath_pow(double x, double y);
double nbx_detmath_sin(double x);
double nbx_detmath_cos(double x);
double nbx_detmath_tan(double x);
double nbx_detmath_asin(double x);
double nbx_detmath_acos(double x);
double nbx_detmath_atan(double x);
double nbx_detmath_atan2(double y, double x);
double nbx_detmath_sinh(double x);
double nbx_detmath_cosh(double x);
double nbx_detmath_tanh(double x);

#endif
