/* fuzz_support.c: see fuzz_support.h. */
#include "fuzz_support.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

void fz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("nbx fuzz: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

char *fz_source_file(const char *rel, size_t *len)
{
    char *path = NULL;
    if (asprintf(&path, "%s/%s", NBX_SOURCE_DIR, rel) < 0)
        fz_fail("out of memory");
    char *text = tu_read_file(path, len);
    if (!text)
        fz_fail("cannot read %s", path);
    free(path);
    return text;
}

void fz_check_message(const char *msg, const char *what)
{
    if (!msg || !*msg)
        fz_fail("%s failed without a message", what);
    const unsigned char *p = (const unsigned char *)msg, *end = p + strlen(msg);
    while (p < end) {
        size_t n = nbx_utf8_len(p, end);
        if (n == 0)
            fz_fail("%s: message has invalid UTF-8 at byte %zu: %s", what,
                    (size_t)(p - (const unsigned char *)msg), msg);
        /* C0 and DEL as one byte, C1 as U+0080..U+009F (0xC2 0x80..0x9F) */
        if (*p < 0x20 || *p == 0x7f || (n == 2 && p[0] == 0xc2 && p[1] < 0xa0))
            fz_fail("%s: message has a control character at byte %zu: %s", what,
                    (size_t)(p - (const unsigned char *)msg), msg);
        p += n;
    }
}

void fz_check_json(const char *json, size_t len, const char *what)
{
    json_error_t err;
    json_t *v = json_loadb(json, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (!v && strstr(err.text, "NUL byte in object key")) {
        /* "\u0000" in a key is valid JSON that jansson declines to hold (a
         * damaged store can have such keys; nbx escapes them). Check the rest
         * with those escapes made "\u0001". */
        char *copy = fz_strndup((const uint8_t *)json, len);
        for (char *p = copy; (p = strstr(p, "\\u0000")) != NULL; p += 6)
            p[5] = '1';
        v = json_loadb(copy, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        free(copy);
    }
    if (!v)
        fz_fail("%s wrote invalid JSON (%s at column %d): %.*s", what, err.text, err.column,
                (int)(len > 2000 ? 2000 : len), json);
    json_decref(v);
}

char *fz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        fz_fail("out of memory");
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

int fz_decide(fz_engine *fe, nbx_request *req, const int *ok, const nbx_result **out)
{
    req->now_ms = FZ_NOW_MS;
    const nbx_result *r = NULL;
    int rc = nbx_decide(fe->ctx, req, &r);
    *out = rc == NBX_OK ? r : NULL;
    if (rc == NBX_OK) {
        size_t len = 0;
        const char *json = nbx_result_json(r, &len);
        if (!json)
            fz_fail("a decision without JSON");
        fz_check_json(json, len, "nbx_decide");
        if (nbx_result_fallback(r))
            fz_check_message(nbx_result_error(r), "a fallback decision's error");
        for (size_t i = 0; i < nbx_result_action_count(r); i++) {
            nbx_action a;
            if (nbx_result_action(r, i, &a) != NBX_OK || !a.offer || !a.placement)
                fz_fail("action %zu unreadable", i);
        }
        return rc;
    }
    while (*ok != NBX_OK && *ok != rc)
        ok++;
    if (*ok == NBX_OK)
        fz_fail("nbx_decide returned %d: %s", rc, nbx_ctx_errmsg(fe->ctx));
    fz_check_message(nbx_ctx_errmsg(fe->ctx), "nbx_decide");
    return rc;
}

/* ========================================================================
 * The engine over a temp store
 * ======================================================================== */

/* Customers the harnesses' inputs name: alice has every field, bob little,
 * carol a purchase history; any other id decides as anonymous. */
static const char *const profiles[] = {
    "{\"id\":\"alice\",\"attrs\":{\"country\":\"DE\",\"vip\":true,\"visits\":12},"
    "\"consent\":{\"personalization\":true,\"email\":false},"
    "\"propensity\":{\"apparel\":0.2,\"free_shipping\":0.4},\"ltv\":900,\"churn\":0.7,"
    "\"rfm\":{\"first_purchase\":\"2024-01-02T00:00:00Z\",\"last_purchase\":"
    "\"2026-02-01T00:00:00Z\",\"orders\":7,\"revenue\":350.5,\"margin\":120.25,"
    "\"r\":4,\"f\":3,\"m\":4,\"segment\":\"loyal\"}}",
    "{\"id\":\"bob\",\"consent\":{\"personalization\":true}}",
    "{\"id\":\"carol\",\"attrs\":{\"country\":\"FR\"},\"consent\":{\"personalization\":true,"
    "\"email\":true},\"rfm\":{\"first_purchase\":1700000000,\"last_purchase\":1760000000,"
    "\"orders\":2,\"revenue\":80}}",
};

static fz_engine the_engine;

static void engine_close(fz_engine *fe)
{
    nbx_ctx_close(fe->ctx);
    nbx_engine_close(fe->engine);
    nbx_store_close(fe->store);
    fe->ctx = NULL;
    fe->engine = NULL;
    fe->store = NULL;
    if (fe->dir) {
        tu_rmtree(fe->dir);
        free(fe->dir);
        fe->dir = NULL;
    }
}

static void engine_at_exit(void)
{
    engine_close(&the_engine);
}

static void engine_open(fz_engine *fe)
{
    fe->dir = tu_tempdir("fuzz");
    if (!fe->dir)
        fz_fail("cannot make a temp dir");
    char *store = tu_path(fe->dir, "store");
    /* No fsync: the store is thrown away, and a harness that writes must
     * still run thousands of inputs a second. */
    if (nbx_store_open(store, NBX_STORE_CREATE | NBX_STORE_NOMETASYNC, &fe->store) != NBX_OK)
        fz_fail("opening the store: %s", nbx_last_errmsg());
    free(store);
    mdb_env_set_flags(fe->store->env, MDB_NOSYNC, 1);
    for (size_t i = 0; i < NBX_ARRAY_LEN(profiles); i++)
        if (nbx_profile_put(fe->store, profiles[i], strlen(profiles[i])) != NBX_OK)
            fz_fail("profile %zu: %s", i, nbx_store_errmsg(fe->store));

    size_t catalog_len, policy_len;
    char *catalog = fz_source_file("tests/data/catalog.json", &catalog_len);
    char *policy = fz_source_file("tests/fuzz/harness.lua", &policy_len);
    nbx_engine_options o;
    nbx_engine_options_init(&o);
    o.store_handle = fe->store;
    o.catalog = "catalog.json";
    o.catalog_text = catalog;
    o.catalog_len = catalog_len;
    o.policy = "harness.lua";
    o.policy_text = policy;
    o.policy_len = policy_len;
    if (nbx_engine_open(&o, &fe->engine) != NBX_OK)
        fz_fail("opening the engine: %s", nbx_last_errmsg());
    free(catalog);
    free(policy);
    if (nbx_ctx_open(fe->engine, &fe->ctx) != NBX_OK)
        fz_fail("opening a context: %s", nbx_last_errmsg());
}

fz_engine *fz_engine_get(void)
{
    if (!the_engine.ctx) {
        engine_open(&the_engine);
        atexit(engine_at_exit);
    }
    return &the_engine;
}

void fz_engine_trim(fz_engine *fe)
{
    nbx_store_stats st;
    if (nbx_store_stat(fe->store, &st) != NBX_OK)
        fz_fail("store stat: %s", nbx_store_errmsg(fe->store));
    if (st.bytes_used < (32u << 20))
        return;
    engine_close(fe);
    engine_open(fe);
}
