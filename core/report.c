/*
 * report.c: the incrementality report of a deployment (`nbx report
 * experiment`, docs/experiments.md "The experiment report").
 *
 * Intent-to-treat: every customer of the store counts in the arm the
 * deployment file assigns it (kills and aborts aside: they change what a
 * customer was served, not the group it was drawn into), whether it was
 * ever decided for or not. A customer's outcome is the contribution margin
 * of its purchase event records dated in the window; one without any
 * counts 0. Each arm's uplift is the difference of its mean margin per
 * customer and the holdout's, with a 95 % interval by Welch's t (unequal
 * variances, Welch-Satterthwaite degrees of freedom).
 *
 * The report reads one snapshot of the store: its figures (the customers'
 * purchases, the arms' counters) are consistent with each other, at the price of a read transaction
 * held for the scan (a few seconds per million customers).
 */
#include "nbx_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Student's t and Welch's interval
 * ======================================================================== */

/* The continued fraction of the regularised incomplete beta function,
 * evaluated by the modified Lentz method; converges quickly for
 * x < (a + 1) / (a + b + 2). */
static double beta_fraction(double a, double b, double x)
{
    const double tiny = 1e-300;
    double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(d) < tiny)
        d = tiny;
    d = 1.0 / d;
    double h = d;
    for (int m = 1; m <= 500; m++) {
        double even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
        double odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
        double step = 1.0;
        for (int k = 0; k < 2; k++) {
            double coef = k ? odd : even;
            d = 1.0 + coef * d;
            c = 1.0 + coef / c;
            if (fabs(d) < tiny)
                d = tiny;
            if (fabs(c) < tiny)
                c = tiny;
            d = 1.0 / d;
            step = c * d;
            h *= step;
        }
        if (fabs(step - 1.0) < 1e-15)
            break;
    }
    return h;
}

/* I_x(a, b). */
static double incomplete_beta(double a, double b, double x)
{
    if (x <= 0)
        return 0;
    if (x >= 1)
        return 1;
    double front = exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x));
    if (x < (a + 1) / (a + b + 2))
        return front * beta_fraction(a, b, x) / a;
    return 1.0 - front * beta_fraction(b, a, 1.0 - x) / b;
}

/* P(T > t) for t >= 0, T Student's t with df degrees of freedom. */
static double t_upper_tail(double t, double df)
{
    return 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t));
}

double nbx_t_quantile(double p, double df)
{
    if (!(p > 0.5 && p < 1) || !(df > 0))
        return NAN;
    double tail = 1 - p;
    if (df > 1e7) /* the normal distribution, to the bits that matter */
        df = 1e7;
    double lo = 0, hi = 1;
    while (t_upper_tail(hi, df) > tail && hi < 1e12)
        hi *= 2;
    for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; i++) {
        double mid = (lo + hi) / 2;
        if (t_upper_tail(mid, df) > tail)
            lo = mid;
        else
            hi = mid;
    }
    return (lo + hi) / 2;
}

void nbx_moments_add(nbx_moments *m, double x)
{
    /* Welford: no cancellation however large the mean */
    m->n++;
    double delta = x - m->mean;
    m->mean += delta / (double)m->n;
    m->m2 += delta * (x - m->mean);
}

double nbx_moments_variance(const nbx_moments *m)
{
    return m->n > 1 ? m->m2 / (double)(m->n - 1) : NAN;
}

bool nbx_welch(const nbx_moments *treated, const nbx_moments *control, double level,
               nbx_interval *out)
{
    memset(out, 0, sizeof *out);
    if (treated->n < 2 || control->n < 2)
        return false;
    double va = nbx_moments_variance(treated) / (double)treated->n;
    double vb = nbx_moments_variance(control) / (double)control->n;
    out->estimate = treated->mean - control->mean;
    double se2 = va + vb;
    if (se2 <= 0) { /* no spread at all: the difference is what it is */
        out->low = out->high = out->estimate;
        out->df = INFINITY;
        return true;
    }
    out->df = se2 * se2 / (va * va / (double)(treated->n - 1) + vb * vb / (double)(control->n - 1));
    double half = nbx_t_quantile(0.5 + level / 2, out->df) * sqrt(se2);
    out->low = out->estimate - half;
    out->high = out->estimate + half;
    return true;
}

/* ========================================================================
 * The scan: every customer, its arm, its margin in the window
 * ======================================================================== */

struct nbx_report {
    nbx_deployment *deployment;
    int64_t from_ms, to_ms;
    size_t n_arms; /* the holdout first, then the deployment's arms */
    nbx_report_arm *arms;
    nbx_moments *moments;
    nbx_buf json;
};

/* Index in r->arms of the customer's assigned arm. */
static size_t arm_index(const nbx_report *r, nbx_sv customer)
{
    uint32_t arm = nbx_deployment_arm_of(r->deployment, customer);
    return arm == NBX_ARM_INDEX_HOLDOUT ? 0 : (size_t)arm + 1;
}

/* One customer's purchases, read from its event records. */
typedef struct customer_sum {
    double margin;
    uint64_t purchases, without_margin;
} customer_sum;

static void customer_done(nbx_report *r, nbx_sv customer, const customer_sum *c)
{
    size_t i = arm_index(r, customer);
    nbx_report_arm *a = &r->arms[i];
    a->customers++;
    a->buyers += c->purchases > 0;
    a->purchases += c->purchases;
    a->purchases_without_margin += c->without_margin;
    a->margin += c->margin;
    nbx_moments_add(&r->moments[i], c->margin);
}

static int cmp_id(nbx_sv a, const MDB_val *k)
{
    return nbx_sv_cmp(a, (nbx_sv){k->mv_data, k->mv_size});
}

/* The customers database in key order, grouped by customer (id \0 ...),
 * merged with the profiles database (also in id order: "c1\0" sorts
 * before "c10" as "c1" does), so a customer with a profile and no event,
 * or events and no profile, counts once. */
static int scan(nbx_report *r, nbx_store *s, MDB_txn *txn, nbx_err *e)
{
    MDB_cursor *pc = NULL, *cc = NULL;
    int rc = mdb_cursor_open(txn, s->profiles, &pc);
    if (rc == 0)
        rc = mdb_cursor_open(txn, s->customers, &cc);
    if (rc) {
        if (pc)
            mdb_cursor_close(pc);
        return nbx_err_mdb(e, rc, "reading the customers");
    }
    MDB_val pk, pv, ck, cv;
    int prc = mdb_cursor_get(pc, &pk, &pv, MDB_FIRST);
    int crc = mdb_cursor_get(cc, &ck, &cv, MDB_FIRST);
    char id_buf[NBX_ID_MAX];
    int out = NBX_OK;
    while (out == NBX_OK && crc == 0) {
        const char *k = ck.mv_data;
        const char *nul = memchr(k, '\0', ck.mv_size);
        if (!nul || nul == k || (size_t)(nul - k) > NBX_ID_MAX) {
            out = nbx_err_set(e, NBX_ECORRUPT, "%s: a key of the customers database is not one",
                              s->path);
            break;
        }
        size_t n = (size_t)(nul - k);
        memcpy(id_buf, k, n);
        nbx_sv id = {id_buf, n};
        /* profiles of customers without a key here come first */
        while (prc == 0 && cmp_id(id, &pk) > 0) {
            customer_sum none = {0};
            customer_done(r, (nbx_sv){pk.mv_data, pk.mv_size}, &none);
            prc = mdb_cursor_get(pc, &pk, &pv, MDB_NEXT);
        }
        if (prc == 0 && cmp_id(id, &pk) == 0)
            prc = mdb_cursor_get(pc, &pk, &pv, MDB_NEXT);
        customer_sum sum = {0};
        for (; crc == 0 && ck.mv_size > n && memcmp(ck.mv_data, id_buf, n) == 0 &&
               ((const char *)ck.mv_data)[n] == '\0';
             crc = mdb_cursor_get(cc, &ck, &cv, MDB_NEXT)) {
            if (nbx_customer_key_tag(ck.mv_data, ck.mv_size, n + 1) != NBX_TAG_EVENT)
                continue;
            nbx_event ev = {.customer = id};
            if (nbx_event_record_decode(cv.mv_data, cv.mv_size, &ev) != NBX_OK) {
                out = nbx_err_set(e, NBX_ECORRUPT,
                                  "customer '%.*s': an event record cannot be decoded", (int)n,
                                  id_buf);
                break;
            }
            if (ev.type != NBX_EV_PURCHASE || ev.ts_ms < r->from_ms || ev.ts_ms >= r->to_ms)
                continue;
            sum.purchases++;
            if (isnan(ev.margin))
                sum.without_margin++;
            else
                sum.margin += ev.margin;
        }
        if (out == NBX_OK)
            customer_done(r, id, &sum);
    }
    for (; out == NBX_OK && prc == 0; prc = mdb_cursor_get(pc, &pk, &pv, MDB_NEXT)) {
        customer_sum none = {0};
        customer_done(r, (nbx_sv){pk.mv_data, pk.mv_size}, &none);
    }
    if (out == NBX_OK && ((crc && crc != MDB_NOTFOUND) || (prc && prc != MDB_NOTFOUND)))
        out = nbx_err_mdb(e, crc && crc != MDB_NOTFOUND ? crc : prc, "reading the customers");
    mdb_cursor_close(cc);
    mdb_cursor_close(pc);
    return out;
}

/* The arms' counters of the days the window touches. */
static int take_counters(void *ud, const nbx_arm_counters *c)
{
    nbx_report *r = ud;
    for (size_t i = 0; i < r->n_arms; i++) {
        nbx_report_arm *a = &r->arms[i];
        if (strcmp(a->name, c->arm) == 0) {
            a->decisions = c->decisions;
            a->impressions = c->impressions;
            a->accepts = c->accepts;
        }
    }
    return 0;
}

static void finish(nbx_report *r)
{
    const nbx_moments *control = &r->moments[0];
    for (size_t i = 0; i < r->n_arms; i++) {
        nbx_report_arm *a = &r->arms[i];
        const nbx_moments *m = &r->moments[i];
        a->margin_per_customer = m->n ? m->mean : NAN;
        a->margin_sd = sqrt(nbx_moments_variance(m));
        a->accept_rate = a->decisions ? (double)a->accepts / (double)a->decisions : NAN;
        nbx_interval u;
        if (i > 0 && nbx_welch(m, control, 0.95, &u)) {
            a->has_uplift = 1;
            a->uplift = u.estimate;
            a->uplift_low = u.low;
            a->uplift_high = u.high;
            a->uplift_df = u.df;
        } else {
            a->uplift = a->uplift_low = a->uplift_high = a->uplift_df = NAN;
        }
    }
}

/* ========================================================================
 * JSON
 * ======================================================================== */

static void json_count(nbx_buf *b, const char *key, uint64_t n)
{
    nbx_buf_printf(b, ",\"%s\":%llu", key, (unsigned long long)n);
}

static void json_number(nbx_buf *b, const char *key, double v)
{
    nbx_buf_printf(b, ",\"%s\":", key);
    nbx_jw_number(b, v); /* NaN: null */
}

static void write_json(nbx_report *r)
{
    nbx_buf *b = &r->json;
    nbx_buf_puts(b, "{\"deployment\":{\"name\":");
    nbx_jw_string(b, nbx_deployment_name(r->deployment),
                  strlen(nbx_deployment_name(r->deployment)));
    nbx_buf_printf(b, ",\"version\":\"%s\"},\"from\":", nbx_deployment_version(r->deployment));
    nbx_jw_time(b, r->from_ms);
    nbx_buf_puts(b, ",\"to\":");
    nbx_jw_time(b, r->to_ms);
    nbx_buf_puts(b, ",\"method\":\"intent-to-treat; uplift: difference in mean margin per "
                    "customer with the holdout, 95 % Welch t interval\",\"arms\":{");
    for (size_t i = 0; i < r->n_arms; i++) {
        const nbx_report_arm *a = &r->arms[i];
        if (i)
            nbx_buf_putc(b, ',');
        nbx_jw_string(b, a->name, strlen(a->name));
        nbx_buf_printf(b, ":{\"customers\":%llu", (unsigned long long)a->customers);
        json_count(b, "decisions", a->decisions);
        json_count(b, "impressions", a->impressions);
        json_count(b, "accepts", a->accepts);
        json_number(b, "accept_rate", a->accept_rate);
        json_count(b, "buyers", a->buyers);
        json_count(b, "purchases", a->purchases);
        json_count(b, "purchases_without_margin", a->purchases_without_margin);
        json_number(b, "margin", a->margin);
        json_number(b, "margin_per_customer", a->margin_per_customer);
        json_number(b, "margin_sd", a->margin_sd);
        nbx_buf_puts(b, ",\"uplift\":");
        if (a->has_uplift) {
            nbx_buf_puts(b, "{\"estimate\":");
            nbx_jw_number(b, a->uplift);
            json_number(b, "low", a->uplift_low);
            json_number(b, "high", a->uplift_high);
            json_number(b, "df", isinf(a->uplift_df) ? NAN : a->uplift_df);
            nbx_buf_putc(b, '}');
        } else {
            nbx_buf_puts(b, "null");
        }
        nbx_buf_putc(b, '}');
    }
    nbx_buf_puts(b, "}}");
    nbx_buf_terminate(b);
}

/* ========================================================================
 * Public calls
 * ======================================================================== */

NBX_API void nbx_report_close(nbx_report *r)
{
    if (!r)
        return;
    nbx_deployment_unref(r->deployment);
    free(r->arms);
    free(r->moments);
    nbx_buf_free(&r->json);
    free(r);
}

NBX_API int nbx_report_experiment(nbx_store *s, const nbx_deployment *d, int64_t from_ms,
                                  int64_t to_ms, nbx_report **out)
{
    if (out)
        *out = NULL;
    if (!s || !d || !out)
        return nbx_fail(s, NBX_EINVAL, "nbx_report_experiment: NULL argument");
    if (from_ms < 0 || to_ms > NBX_TIME_MAX_MS || from_ms >= to_ms)
        return nbx_fail(s, NBX_EINVAL,
                        "nbx_report_experiment: the window must be 1970 <= from < to <= 9999 "
                        "(got %lld to %lld ms)",
                        (long long)from_ms, (long long)to_ms);
    nbx_report *r = calloc(1, sizeof *r);
    if (!r)
        return nbx_fail(s, NBX_ENOMEM, "out of memory");
    r->deployment = nbx_deployment_ref((nbx_deployment *)d); /* the count is not its content */
    r->from_ms = from_ms;
    r->to_ms = to_ms;
    r->n_arms = d->n_arms + 1;
    r->arms = calloc(r->n_arms, sizeof *r->arms);
    r->moments = calloc(r->n_arms, sizeof *r->moments);
    nbx_err e = {0};
    int rc = r->arms && r->moments ? NBX_OK : nbx_err_set(&e, NBX_ENOMEM, "out of memory");
    for (size_t i = 0; rc == NBX_OK && i < r->n_arms; i++)
        r->arms[i].name = i ? d->arms[i - 1].name : NBX_ARM_HOLDOUT;
    MDB_txn *txn = NULL;
    if (rc == NBX_OK)
        rc = nbx_store_read_begin(s, &txn, &e);
    if (rc == NBX_OK)
        rc = scan(r, s, txn, &e);
    if (rc == NBX_OK)
        rc = nbx_arm_counters_scan(s, txn, d->name, from_ms, to_ms, take_counters, r, &e);
    mdb_txn_abort(txn);
    if (rc == NBX_OK) {
        finish(r);
        write_json(r);
        if (r->json.oom)
            rc = nbx_err_set(&e, NBX_ENOMEM, "out of memory writing the report");
    }
    if (rc) {
        nbx_report_close(r);
        return nbx_publish(s, &e);
    }
    *out = r;
    return NBX_OK;
}

NBX_API size_t nbx_report_arm_count(const nbx_report *r)
{
    return r ? r->n_arms : 0;
}

NBX_API const nbx_report_arm *nbx_report_arm_at(const nbx_report *r, size_t i)
{
    return r && i < r->n_arms ? &r->arms[i] : NULL;
}

NBX_API const char *nbx_report_json(const nbx_report *r, size_t *len)
{
    if (len)
        *len = r ? r->json.len : 0;
    return r ? r->json.data : NULL;
}
