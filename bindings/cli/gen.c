/*
 * gen.c: a seeded synthetic data generator for the demo, tests and
 * benchmarks: profiles, events and catalogs.
 *
 * Pure CLI code: no JSON library and no printf on the hot path, because a
 * million profiles (about 800 MB) should take seconds. Output depends only on
 * the flags: the random generator is our own (xoshiro256**, seeded through
 * splitmix64), never rand() or the clock. Everything written is plain ASCII
 * chosen from fixed tables, so no string needs escaping.
 *
 * Shapes follow retail data: most customers buy once or never, spend is
 * heavy-tailed (log-normal order values, a Pareto tail of big spenders),
 * recency mixes active, lapsing and lapsed customers, and a few customers
 * produce most events.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Random numbers
 * ======================================================================== */

typedef struct rng {
    uint64_t s[4];
    bool has_spare;
    double spare;
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Each kind of output gets its own stream, so `gen events --seed 1` does not
 * replay the numbers of `gen profiles --seed 1`. */
static void rng_seed(rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * UINT64_C(0xd1b54a32d192ed03));
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    r->has_spare = false;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1). */
static inline double rng_unit(rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in (0, 1]: safe for log() and pow(u, negative). */
static inline double rng_open_unit(rng *r)
{
    return 1.0 - rng_unit(r);
}

static inline double rng_range(rng *r, double lo, double hi)
{
    return lo + (hi - lo) * rng_unit(r);
}

/* Uniform integer in [0, n), n > 0. The modulo bias is below 2^-32 for the
 * sizes used here. */
static inline uint64_t rng_below(rng *r, uint64_t n)
{
    return rng_next(r) % n;
}

static inline bool rng_chance(rng *r, double p)
{
    return rng_unit(r) < p;
}

static double rng_normal(rng *r)
{
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    double u = rng_open_unit(r), v = rng_unit(r);
    double radius = sqrt(-2.0 * log(u));
    r->spare = radius * sin(2.0 * M_PI * v);
    r->has_spare = true;
    return radius * cos(2.0 * M_PI * v);
}

/* Log-normal with the given median and spread (sigma of the log). */
static double rng_lognormal(rng *r, double median, double sigma)
{
    return median * exp(sigma * rng_normal(r));
}

/* Pareto with scale xm and shape alpha: heavy tail for alpha near 1. */
static double rng_pareto(rng *r, double xm, double alpha)
{
    return xm / pow(rng_open_unit(r), 1.0 / alpha);
}

/* Pick an index from cumulative weights (last entry is the total). */
static unsigned rng_weighted(rng *r, const double *cumulative, unsigned n)
{
    double x = rng_unit(r) * cumulative[n - 1];
    for (unsigned i = 0; i < n; i++)
        if (x < cumulative[i])
            return i;
    return n - 1;
}

static double clamp(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ========================================================================
 * Buffered writer
 * ======================================================================== */

typedef struct writer {
    FILE *out;
    char *buf;
    size_t len, cap;
    bool failed;
} writer;

#define WRITER_CAP (1u << 20)
/* No single primitive writes more than this; checked before each one. */
#define WRITER_SLACK 512

static void writer_flush(writer *w)
{
    if (w->len && !w->failed && fwrite(w->buf, 1, w->len, w->out) != w->len)
        w->failed = true;
    w->len = 0;
}

static inline char *writer_room(writer *w)
{
    if (w->cap - w->len < WRITER_SLACK)
        writer_flush(w);
    return w->buf + w->len;
}

static inline void put_mem(writer *w, const char *s, size_t n)
{
    if (n >= WRITER_SLACK) {
        writer_flush(w);
        if (!w->failed && fwrite(s, 1, n, w->out) != n)
            w->failed = true;
        return;
    }
    memcpy(writer_room(w), s, n);
    w->len += n;
}

#define PUT_LIT(w, lit) put_mem((w), (lit), sizeof(lit) - 1)

static inline void put_str(writer *w, const char *s)
{
    put_mem(w, s, strlen(s));
}

static inline void put_char(writer *w, char c)
{
    *writer_room(w) = c;
    w->len++;
}

static void put_u64(writer *w, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    char *p = writer_room(w);
    for (int i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    w->len += (size_t)n;
}

/* Zero-padded to width digits. */
static void put_u64_padded(writer *w, uint64_t v, unsigned width)
{
    char tmp[24];
    unsigned n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    char *p = writer_room(w);
    unsigned pad = width > n ? width - n : 0;
    for (unsigned i = 0; i < pad; i++)
        *p++ = '0';
    for (unsigned i = 0; i < n; i++)
        *p++ = tmp[n - 1 - i];
    w->len += pad + n;
}

/* A number rounded to `decimals` places, printed without exponent. */
static void put_fixed(writer *w, double v, unsigned decimals)
{
    static const double scale[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    bool negative = v < 0;
    double scaled = floor(fabs(v) * scale[decimals] + 0.5);
    if (!(scaled < 9e15))
        scaled = 9e15; /* bounded inputs never get here; keep it finite */
    uint64_t n = (uint64_t)scaled;
    uint64_t unit = (uint64_t)scale[decimals];
    if (negative && n)
        put_char(w, '-');
    put_u64(w, n / unit);
    if (decimals) {
        put_char(w, '.');
        put_u64_padded(w, n % unit, decimals);
    }
}

static void put_bool(writer *w, bool b)
{
    if (b)
        PUT_LIT(w, "true");
    else
        PUT_LIT(w, "false");
}

/* Proleptic Gregorian date of a day number (days since 1970-01-01), by the
 * era arithmetic of 400-year cycles (146097 days each). */
static void civil_from_days(int64_t days, int64_t *year, unsigned *month, unsigned *day)
{
    days += 719468; /* shift the epoch to 0000-03-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned doe = (unsigned)(days - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *day = doy - (153 * mp + 2) / 5 + 1;
    *month = mp < 10 ? mp + 3 : mp - 9;
    *year = (int64_t)yoe + era * 400 + (*month <= 2);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : (a - b + 1) / b;
}

static int64_t year_of(int64_t ms)
{
    int64_t y;
    unsigned m, d;
    civil_from_days(floor_div(ms, 86400000), &y, &m, &d);
    return y;
}

/* "2026-03-01T12:00:00Z", quoted; seconds resolution. */
static void put_time(writer *w, int64_t ms)
{
    int64_t secs = floor_div(ms, 1000);
    int64_t days = floor_div(secs, 86400);
    unsigned rem = (unsigned)(secs - days * 86400);
    int64_t y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    if (y < 0)
        y = 0;
    put_char(w, '"');
    put_u64_padded(w, (uint64_t)y, 4);
    put_char(w, '-');
    put_u64_padded(w, mo, 2);
    put_char(w, '-');
    put_u64_padded(w, d, 2);
    put_char(w, 'T');
    put_u64_padded(w, rem / 3600, 2);
    put_char(w, ':');
    put_u64_padded(w, rem / 60 % 60, 2);
    put_char(w, ':');
    put_u64_padded(w, rem % 60, 2);
    PUT_LIT(w, "Z\"");
}

/* ========================================================================
 * Output plumbing shared by the three generators
 * ======================================================================== */

typedef struct gen_out {
    writer w;
    const char *path; /* NULL: standard output */
} gen_out;

static int gen_open(cli_args *args, gen_out *g)
{
    memset(g, 0, sizeof *g);
    g->path = cli_string(args, "out", NULL);
    g->w.out = stdout;
    if (g->path) {
        g->w.out = fopen(g->path, "w");
        if (!g->w.out)
            return cli_error(args->cmd, "cannot create %s: %s", g->path, strerror(errno));
    }
    g->w.cap = WRITER_CAP;
    g->w.buf = malloc(g->w.cap);
    if (!g->w.buf) {
        if (g->path)
            fclose(g->w.out);
        return cli_error(args->cmd, "out of memory");
    }
    return CLI_OK;
}

static int gen_close(cli_args *args, gen_out *g)
{
    writer_flush(&g->w);
    int saved = errno;
    bool failed = g->w.failed;
    if (g->path) {
        if (fclose(g->w.out) != 0 && !failed) {
            failed = true;
            saved = errno;
        }
    } else if (fflush(stdout) != 0 && !failed) {
        failed = true;
        saved = errno;
    }
    free(g->w.buf);
    if (failed) {
        if (g->path)
            remove(g->path);
        return cli_error(args->cmd, "writing %s: %s", g->path ? g->path : "standard output",
                         strerror(saved));
    }
    return CLI_OK;
}

static unsigned digits_of(uint64_t n)
{
    unsigned d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

/* Ids are fixed-width so they sort in numeric order: c0000001, o001. The
 * width grows only when the count needs more digits. */
static unsigned customer_id_width(uint64_t customers)
{
    unsigned d = digits_of(customers);
    return d > 7 ? d : 7;
}

static unsigned offer_id_width(uint64_t offers)
{
    unsigned d = digits_of(offers);
    return d > 3 ? d : 3;
}

static void put_customer_id(writer *w, uint64_t n, unsigned width)
{
    PUT_LIT(w, "\"c");
    put_u64_padded(w, n, width);
    put_char(w, '"');
}

static void put_offer_id(writer *w, uint64_t n, unsigned width)
{
    PUT_LIT(w, "\"o");
    put_u64_padded(w, n, width);
    put_char(w, '"');
}

#define MS_PER_DAY INT64_C(86400000)
#define DEFAULT_OFFERS 50
/* 2026-01-01T00:00:00Z and 2026-03-01T00:00:00Z */
#define DEFAULT_START_MS INT64_C(1767225600000)
#define DEFAULT_AS_OF_MS INT64_C(1772323200000)

/* ========================================================================
 * The shared world: placements, categories, offers by index
 * ======================================================================== */

static const char *const categories[] = {"shipping",  "apparel", "electronics", "home",
                                         "beauty",    "sports",  "books",       "grocery",
                                         "retention", "loyalty"};
#define N_CATEGORIES (sizeof categories / sizeof categories[0])

enum { PL_HERO = 1, PL_RECS = 2, PL_SIDEBAR = 4 };

/* Which placements offer i (0-based) may fill. A function of the index alone,
 * so events generated with any seed name a placement the catalog offers. */
static unsigned offer_placements(uint64_t i)
{
    unsigned m;
    switch (i % 10) {
    case 0:
    case 5:
        m = PL_HERO;
        break;
    case 4:
    case 9:
        m = PL_SIDEBAR;
        break;
    default:
        m = PL_RECS;
        break;
    }
    if (i % 7 == 3)
        m |= PL_SIDEBAR;
    return m;
}

static const char *primary_placement(uint64_t i)
{
    unsigned m = offer_placements(i);
    return m & PL_HERO ? "hero" : m & PL_RECS ? "recs" : "sidebar";
}

/* Every eighth offer is an onsite module (content, no price of its own). */
static bool offer_is_module(uint64_t i)
{
    return i % 8 == 7;
}

/* ========================================================================
 * gen profiles
 * ======================================================================== */

typedef struct country {
    const char *code;
    const char *lang;
    const char *cities[4];
    double weight;
} country;

static const country countries[] = {
    {"DE", "de", {"Berlin", "Hamburg", "Munich", "Cologne"}, 24},
    {"FR", "fr", {"Paris", "Lyon", "Marseille", "Toulouse"}, 16},
    {"GB", "en", {"London", "Manchester", "Leeds", "Glasgow"}, 15},
    {"US", "en", {"New York", "Chicago", "Austin", "Seattle"}, 14},
    {"NL", "nl", {"Amsterdam", "Rotterdam", "Utrecht", "Eindhoven"}, 7},
    {"ES", "es", {"Madrid", "Barcelona", "Valencia", "Seville"}, 7},
    {"IT", "it", {"Rome", "Milan", "Naples", "Turin"}, 6},
    {"PL", "pl", {"Warsaw", "Krakow", "Gdansk", "Wroclaw"}, 5},
    {"SE", "sv", {"Stockholm", "Gothenburg", "Malmo", "Uppsala"}, 3},
    {"AT", "de", {"Vienna", "Graz", "Linz", "Salzburg"}, 3},
};
#define N_COUNTRIES (sizeof countries / sizeof countries[0])

static const char *const devices[] = {"mobile", "desktop", "tablet"};
static const double device_weights[] = {58, 92, 100};
static const char *const channels[] = {"organic", "paid_search", "social",
                                       "email",   "referral",    "affiliate"};
static const double channel_weights[] = {35, 57, 75, 85, 94, 100};
static const char *const genders[] = {"f", "m", "x"};
static const double gender_weights[] = {49, 97, 100};

typedef struct history {
    uint64_t orders; /* 0: never bought */
    double revenue, margin;
    int64_t first, last;
    double recency_days;
} history;

/* Purchase aggregates as of `as_of`. About 30% never bought; half of the
 * buyers bought once; order counts and spend have Pareto tails; recency mixes
 * active, lapsing and long-lapsed customers (one-time buyers lapse more). */
static void make_history(rng *r, int64_t as_of, history *h)
{
    memset(h, 0, sizeof *h);
    if (rng_chance(r, 0.30))
        return;
    if (rng_chance(r, 0.5))
        h->orders = 1;
    else
        h->orders = 1 + (uint64_t)fmin(rng_pareto(r, 1.0, 1.3), 400.0);
    double order_value = rng_lognormal(r, 45.0, 0.7);
    h->revenue = (double)h->orders * order_value * rng_lognormal(r, 1.0, 0.2);
    if (rng_chance(r, 0.01))
        h->revenue *= fmin(rng_pareto(r, 2.0, 1.5), 200.0);
    h->margin = h->revenue * rng_range(r, 0.12, 0.42);

    double lapsed_bias = h->orders == 1 ? 0.15 : 0.0;
    double u = rng_unit(r);
    if (u < 0.45 - lapsed_bias)
        h->recency_days = fmin(-25.0 * log(rng_open_unit(r)), 90.0);
    else if (u < 0.70 - lapsed_bias / 2)
        h->recency_days = rng_range(r, 60, 180);
    else
        h->recency_days = rng_range(r, 180, 900);
    h->last = as_of - (int64_t)(h->recency_days * (double)MS_PER_DAY);
    h->first = h->last;
    if (h->orders > 1) {
        double gap_days = rng_lognormal(r, 35.0, 0.6);
        double span = fmin(gap_days * (double)(h->orders - 1), 3000.0);
        h->first = h->last - (int64_t)(span * (double)MS_PER_DAY);
    }
}

static const char *tier_for(rng *r, const history *h)
{
    double score = h->revenue * rng_lognormal(r, 1.0, 0.5);
    return score > 2000 ? "platinum" : score > 600 ? "gold" : score > 150 ? "silver" : "bronze";
}

/* Distinct offer indices for the propensity map, ascending. */
static unsigned pick_offers(rng *r, uint64_t offers, uint64_t *out, unsigned want)
{
    if (offers <= want) {
        for (uint64_t i = 0; i < offers; i++)
            out[i] = i;
        return (unsigned)offers;
    }
    unsigned n = 0;
    while (n < want) {
        /* Popular offers (low index) appear more often, as in real data;
         * u^1.5 skews towards them without calling pow(). */
        double u = rng_unit(r);
        uint64_t idx = (uint64_t)((double)offers * u * sqrt(u));
        if (idx >= offers)
            idx = offers - 1;
        bool seen = false;
        for (unsigned j = 0; j < n; j++)
            seen |= out[j] == idx;
        if (!seen)
            out[n++] = idx;
    }
    for (unsigned i = 1; i < n; i++) {
        uint64_t v = out[i];
        unsigned j = i;
        for (; j > 0 && out[j - 1] > v; j--)
            out[j] = out[j - 1];
        out[j] = v;
    }
    return n;
}

static double propensity_value(rng *r)
{
    return clamp(rng_lognormal(r, 0.03, 1.0), 0.0001, 0.95);
}

#define PROPENSITIES 20
#define CATEGORY_PROPENSITIES 6

static void write_profile(writer *w, rng *r, uint64_t n, unsigned id_width, uint64_t offers,
                          unsigned offer_width, int64_t as_of, const double *country_cum)
{
    history h;
    make_history(r, as_of, &h);
    const country *c = &countries[rng_weighted(r, country_cum, N_COUNTRIES)];

    PUT_LIT(w, "{\"id\":");
    put_customer_id(w, n, id_width);
    PUT_LIT(w, ",\"attrs\":{\"country\":\"");
    put_str(w, c->code);
    PUT_LIT(w, "\",\"city\":\"");
    put_str(w, c->cities[rng_below(r, 4)]);
    PUT_LIT(w, "\",\"age\":");
    put_u64(w, (uint64_t)clamp(floor(rng_normal(r) * 13.0 + 39.0), 18, 90));
    PUT_LIT(w, ",\"gender\":\"");
    put_str(w, genders[rng_weighted(r, gender_weights, 3)]);
    PUT_LIT(w, "\",\"tier\":\"");
    put_str(w, tier_for(r, &h));
    bool email_consent = rng_chance(r, 0.75);
    PUT_LIT(w, "\",\"newsletter\":");
    put_bool(w, email_consent && rng_chance(r, 0.6));
    PUT_LIT(w, ",\"device\":\"");
    put_str(w, devices[rng_weighted(r, device_weights, 3)]);
    PUT_LIT(w, "\",\"lang\":\"");
    put_str(w, c->lang);
    int64_t signup = year_of(as_of) - (int64_t)fmin(-3.0 * log(rng_open_unit(r)), 11.0);
    if (h.orders && year_of(h.first) < signup)
        signup = year_of(h.first);
    PUT_LIT(w, "\",\"signup_year\":");
    put_u64(w, (uint64_t)(signup > 0 ? signup : 0));
    PUT_LIT(w, ",\"channel\":\"");
    put_str(w, channels[rng_weighted(r, channel_weights, 6)]);

    PUT_LIT(w, "\"},\"consent\":{\"personalization\":");
    put_bool(w, rng_chance(r, 0.9));
    PUT_LIT(w, ",\"email\":");
    put_bool(w, email_consent);
    PUT_LIT(w, ",\"sms\":");
    put_bool(w, rng_chance(r, 0.55));

    PUT_LIT(w, "},\"propensity\":{");
    uint64_t picked[PROPENSITIES];
    unsigned n_offers = pick_offers(r, offers, picked, PROPENSITIES - CATEGORY_PROPENSITIES);
    for (unsigned i = 0; i < n_offers; i++) {
        if (i)
            put_char(w, ',');
        put_offer_id(w, picked[i] + 1, offer_width);
        put_char(w, ':');
        put_fixed(w, propensity_value(r), 4);
    }
    /* Six distinct categories: a random rotation of the table. */
    unsigned first_cat = (unsigned)rng_below(r, N_CATEGORIES);
    for (unsigned i = 0; i < CATEGORY_PROPENSITIES; i++) {
        if (i || n_offers)
            put_char(w, ',');
        put_char(w, '"');
        put_str(w, categories[(first_cat + i) % N_CATEGORIES]);
        PUT_LIT(w, "\":");
        put_fixed(w, propensity_value(r), 4);
    }

    double ltv = h.orders
                     ? h.margin * (1.0 + sqrt((double)h.orders)) * (h.recency_days < 90 ? 1.5 : 0.6)
                     : rng_lognormal(r, 4.0, 0.8);
    double churn = h.orders ? 1.0 - exp(-h.recency_days / 150.0) : 0.5;
    churn = clamp(churn + rng_normal(r) * 0.08, 0.01, 0.99);
    PUT_LIT(w, "},\"ltv\":");
    put_fixed(w, ltv, 2);
    PUT_LIT(w, ",\"churn\":");
    put_fixed(w, churn, 3);
    if (h.orders) {
        PUT_LIT(w, ",\"rfm\":{\"first_purchase\":");
        put_time(w, h.first);
        PUT_LIT(w, ",\"last_purchase\":");
        put_time(w, h.last);
        PUT_LIT(w, ",\"orders\":");
        put_u64(w, h.orders);
        PUT_LIT(w, ",\"revenue\":");
        put_fixed(w, h.revenue, 2);
        PUT_LIT(w, ",\"margin\":");
        put_fixed(w, h.margin, 2);
        put_char(w, '}');
    }
    PUT_LIT(w, ",\"updated_at\":");
    put_time(w, as_of);
    PUT_LIT(w, "}\n");
}

int cli_run_gen_profiles(cli_args *args)
{
    if (!cli_has(args, "count"))
        return cli_usage_error(args->cmd, "--count N is required");
    uint64_t count = cli_uint(args, "count", 0);
    uint64_t offers = cli_uint(args, "offers", DEFAULT_OFFERS);
    int64_t as_of = cli_time(args, "as-of", DEFAULT_AS_OF_MS);
    rng r;
    rng_seed(&r, cli_uint(args, "seed", 1), 1);

    double country_cum[N_COUNTRIES];
    double total = 0;
    for (size_t i = 0; i < N_COUNTRIES; i++)
        country_cum[i] = (total += countries[i].weight);

    gen_out g;
    int rc = gen_open(args, &g);
    if (rc != CLI_OK)
        return rc;
    unsigned id_width = customer_id_width(count), offer_width = offer_id_width(offers);
    for (uint64_t n = 1; n <= count && !g.w.failed; n++)
        write_profile(&g.w, &r, n, id_width, offers, offer_width, as_of, country_cum);
    return gen_close(args, &g);
}

/* ========================================================================
 * gen events
 * ======================================================================== */

enum { EV_PURCHASE, EV_IMPRESSION, EV_CLICK, EV_ACCEPT, EV_DISMISS };
static const char *const event_types[] = {"purchase", "impression", "click", "accept", "dismiss"};
static const double event_weights[] = {12, 72, 86, 90, 100};

/* A prime larger than any customer count we accept, so i -> i * P mod N is a
 * permutation: the busiest customers are spread over the id range. */
#define CUSTOMER_SPREAD UINT64_C(2654435761)

int cli_run_gen_events(cli_args *args)
{
    if (!cli_has(args, "customers"))
        return cli_usage_error(args->cmd, "--customers N is required");
    if (!cli_has(args, "count"))
        return cli_usage_error(args->cmd, "--count K is required");
    uint64_t customers = cli_uint(args, "customers", 0);
    uint64_t count = cli_uint(args, "count", 0);
    uint64_t seed = cli_uint(args, "seed", 1);
    uint64_t offers = cli_uint(args, "offers", DEFAULT_OFFERS);
    int64_t start = cli_time(args, "start", DEFAULT_START_MS);
    double span_ms = (double)cli_uint(args, "days", 60) * (double)MS_PER_DAY;
    rng r;
    rng_seed(&r, seed, 2);

    gen_out g;
    int rc = gen_open(args, &g);
    if (rc != CLI_OK)
        return rc;
    writer *w = &g.w;
    unsigned id_width = customer_id_width(customers), offer_width = offer_id_width(offers);
    for (uint64_t j = 0; j < count && !w->failed; j++) {
        /* Time order: the j-th event falls in the j-th slice of the span,
         * so ts stays within [start, start + days). */
        int64_t ts = start + (int64_t)(((double)j + rng_unit(&r)) * span_ms / (double)count);
        /* A few customers produce many events. */
        double u = rng_unit(&r);
        uint64_t rank = (uint64_t)((double)customers * u * sqrt(u));
        if (rank >= customers)
            rank = customers - 1;
        uint64_t customer = rank * CUSTOMER_SPREAD % customers + 1;
        unsigned type = rng_weighted(&r, event_weights, 5);

        PUT_LIT(w, "{\"event_id\":\"e");
        put_u64(w, seed);
        put_char(w, '-');
        put_u64(w, j + 1);
        PUT_LIT(w, "\",\"customer\":");
        put_customer_id(w, customer, id_width);
        PUT_LIT(w, ",\"type\":\"");
        put_str(w, event_types[type]);
        PUT_LIT(w, "\",\"ts\":");
        put_time(w, ts);
        if (type == EV_PURCHASE) {
            double amount = rng_lognormal(&r, 45.0, 0.8);
            if (rng_chance(&r, 0.01))
                amount = fmin(rng_pareto(&r, 200.0, 1.8), 20000.0);
            PUT_LIT(w, ",\"amount\":");
            put_fixed(w, amount, 2);
            PUT_LIT(w, ",\"margin\":");
            put_fixed(w, amount * rng_range(&r, -0.05, 0.45), 2);
        } else {
            double v = rng_unit(&r);
            uint64_t offer = (uint64_t)((double)offers * v * sqrt(v));
            if (offer >= offers)
                offer = offers - 1;
            PUT_LIT(w, ",\"offer\":");
            put_offer_id(w, offer + 1, offer_width);
            PUT_LIT(w, ",\"placement\":\"");
            put_str(w, primary_placement(offer));
            put_char(w, '"');
        }
        PUT_LIT(w, "}\n");
    }
    return gen_close(args, &g);
}

/* ========================================================================
 * gen catalog
 * ======================================================================== */

static void write_window(writer *w, int64_t from, int64_t to)
{
    PUT_LIT(w, ", \"valid_from\": ");
    put_time(w, from);
    PUT_LIT(w, ", \"valid_to\": ");
    put_time(w, to);
}

static void write_placements(writer *w, unsigned mask)
{
    static const char *const names[] = {"hero", "recs", "sidebar"};
    PUT_LIT(w, "\"placements\": [");
    bool first = true;
    for (unsigned b = 0; b < 3; b++) {
        if (!(mask & (1u << b)))
            continue;
        if (!first)
            PUT_LIT(w, ", ");
        put_char(w, '"');
        put_str(w, names[b]);
        put_char(w, '"');
        first = false;
    }
    put_char(w, ']');
}

/* Prices, costs and discounts: most offers are sound, some break the
 * guardrails on purpose (discount over 30%, negative margin) so the demo and
 * tests see exclusions. Validity: most windows span `start`, some expired,
 * some in the future, some open. */
static void write_offer(writer *w, rng *r, uint64_t i, unsigned offer_width, int64_t start)
{
    bool module = offer_is_module(i);
    PUT_LIT(w, "    {\"id\": ");
    put_offer_id(w, i + 1, offer_width);
    PUT_LIT(w, ", \"kind\": \"");
    put_str(w, module ? "module" : "offer");
    PUT_LIT(w, "\", ");
    write_placements(w, offer_placements(i));

    /* A module's price and cost are those of the basket it leads to; it
     * carries no discount of its own. */
    double price, unit_cost, discount = 0;
    if (module) {
        price = clamp(rng_lognormal(r, 30.0, 0.5), 5.0, 500.0);
        unit_cost = price * rng_range(r, 0.4, 0.65);
    } else {
        price = clamp(rng_lognormal(r, 40.0, 0.8), 5.0, 2000.0);
        double cost_share =
            rng_chance(r, 0.06) ? rng_range(r, 0.85, 1.05) : rng_range(r, 0.35, 0.7);
        unit_cost = price * cost_share;
        double u = rng_unit(r);
        double pct = u < 0.70   ? rng_range(r, 0.0, 0.2)
                     : u < 0.85 ? rng_range(r, 0.2, 0.3)
                                : rng_range(r, 0.31, 0.5);
        discount = price * pct;
    }
    PUT_LIT(w, ", \"price\": ");
    put_fixed(w, price, 2);
    PUT_LIT(w, ", \"unit_cost\": ");
    put_fixed(w, unit_cost, 2);
    PUT_LIT(w, ", \"discount\": ");
    put_fixed(w, discount, 2);
    PUT_LIT(w, ", \"serving_cost\": ");
    put_fixed(w, rng_range(r, 0.005, 0.05), 3);

    double pu = rng_unit(r);
    const char *purpose = module ? (pu < 0.6 ? "personalization" : "none")
                                 : (pu < 0.60   ? "personalization"
                                    : pu < 0.75 ? "email"
                                                : "none");
    PUT_LIT(w, ", \"purpose\": \"");
    put_str(w, purpose);
    PUT_LIT(w, "\", \"category\": \"");
    /* The first offers cover every category, so even a small catalog has a
     * retention offer. */
    const char *category = categories[i < N_CATEGORIES ? i : rng_below(r, N_CATEGORIES)];
    put_str(w, category);
    PUT_LIT(w, "\", \"base_propensity\": ");
    put_fixed(w, clamp(rng_lognormal(r, 0.03, 0.6), 0.001, 0.3), 4);
    /* Win-back offers work on customers who are slipping away. */
    if (strcmp(category, "retention") == 0) {
        PUT_LIT(w, ", \"segment_propensity\": {\"at_risk\": ");
        put_fixed(w, rng_range(r, 0.1, 0.25), 3);
        PUT_LIT(w, ", \"cant_lose\": ");
        put_fixed(w, rng_range(r, 0.1, 0.2), 3);
        PUT_LIT(w, ", \"hibernating\": ");
        put_fixed(w, rng_range(r, 0.03, 0.08), 3);
        PUT_LIT(w, ", \"champions\": 0.01}");
    }

    double u = rng_unit(r);
    if (u < 0.80)
        write_window(w, start - (int64_t)rng_range(r, 30, 365) * MS_PER_DAY,
                     start + (int64_t)rng_range(r, 700, 1100) * MS_PER_DAY - 1000);
    else if (u < 0.88)
        write_window(w, start - 400 * MS_PER_DAY,
                     start - (int64_t)rng_range(r, 10, 60) * MS_PER_DAY - 1000);
    else if (u < 0.94)
        write_window(w, start + (int64_t)rng_range(r, 1200, 1500) * MS_PER_DAY,
                     start + 1800 * MS_PER_DAY - 1000);

    if (rng_chance(r, 0.75)) {
        PUT_LIT(w, ", \"caps\": {\"impressions\": {\"max\": ");
        put_u64(w, 2 + rng_below(r, 5));
        PUT_LIT(w, ", \"window_days\": ");
        put_u64(w, rng_chance(r, 0.7) ? 7 : 14);
        PUT_LIT(w, "}, \"dismiss_cooldown_days\": ");
        put_u64(w, 7 + rng_below(r, 24));
        PUT_LIT(w, ", \"accepts\": {\"max\": ");
        put_u64(w, 1 + rng_below(r, 2));
        PUT_LIT(w, ", \"window_days\": 30}}");
    }
    if (rng_chance(r, 0.3)) {
        PUT_LIT(w, ", \"budget\": {\"daily_impressions\": ");
        put_u64(w, 1000 * (1 + rng_below(r, 100)));
        PUT_LIT(w, ", \"daily_accepts\": ");
        put_u64(w, 50 * (1 + rng_below(r, 100)));
        put_char(w, '}');
    }
    put_char(w, '}');
}

/* Fallback modules need no consent and have no caps: they can always fill
 * their placement. */
static void write_fallback_module(writer *w, const char *id, const char *placement,
                                  const char *money, const char *category)
{
    PUT_LIT(w, "    {\"id\": \"");
    put_str(w, id);
    PUT_LIT(w, "\", \"kind\": \"module\", \"placements\": [\"");
    put_str(w, placement);
    PUT_LIT(w, "\"], ");
    put_str(w, money);
    PUT_LIT(w, ", \"serving_cost\": 0.001, \"purpose\": \"none\", \"category\": \"");
    put_str(w, category);
    PUT_LIT(w, "\", \"base_propensity\": 0.01}");
}

int cli_run_gen_catalog(cli_args *args)
{
    if (!cli_has(args, "offers"))
        return cli_usage_error(args->cmd, "--offers M is required");
    uint64_t offers = cli_uint(args, "offers", DEFAULT_OFFERS);
    int64_t start = cli_time(args, "start", DEFAULT_START_MS);
    rng r;
    rng_seed(&r, cli_uint(args, "seed", 1), 3);

    gen_out g;
    int rc = gen_open(args, &g);
    if (rc != CLI_OK)
        return rc;
    writer *w = &g.w;
    PUT_LIT(w, "{\n  \"placements\": [{\"id\": \"hero\", \"slots\": 1}, "
               "{\"id\": \"recs\", \"slots\": 3}, {\"id\": \"sidebar\", \"slots\": 2}],\n"
               "  \"guardrails\": {\"max_discount_pct\": 30, \"min_margin\": 0.0, "
               "\"max_contacts\": {\"max\": 5, \"window_days\": 7}},\n"
               "  \"fallback\": {\"hero\": [\"brand_banner\"], \"recs\": [\"bestsellers\"]},\n"
               "  \"offers\": [\n");
    unsigned width = offer_id_width(offers);
    for (uint64_t i = 0; i < offers && !w->failed; i++) {
        write_offer(w, &r, i, width, start);
        PUT_LIT(w, ",\n");
    }
    write_fallback_module(w, "brand_banner", "hero", "\"price\": 0, \"unit_cost\": 0", "brand");
    PUT_LIT(w, ",\n");
    write_fallback_module(w, "bestsellers", "recs", "\"price\": 25, \"unit_cost\": 15",
                          "bestsellers");
    PUT_LIT(w, "\n  ]\n}\n");
    return gen_close(args, &g);
}
