/*
 * fuzz_policy: policy sources through the sandbox (nbx_policy_load_text,
 * core/policy.c; nbx_sandbox_open and nbx_sandbox_run, core/sandbox.c and
 * core/lpattern.c), over the candidates of tests/data/catalog.json.
 *
 * The input is a policy file. Loading it either fails with an escaped
 * message or gives a policy; that policy is opened in a sandbox with small
 * limits and run for a known and an anonymous customer, twice each. A
 * refusal, a runtime error, a time or memory fault is a normal outcome; a
 * crash, a sanitizer report, a hang (libFuzzer's -timeout) or a decision
 * that comes back unscored without a fault is a finding.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAND_MAX 32

static nbx_catalog *catalog;

static void catalog_free(void)
{
    nbx_catalog_unref(catalog);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    size_t len;
    char *text = fz_source_file("tests/data/catalog.json", &len);
    nbx_err e = {0};
    if (nbx_catalog_load_text("catalog.json", text, len, &catalog, &e) != NBX_OK)
        fz_fail("catalog: %s", e.msg);
    free(text);
    atexit(catalog_free);
    return 0;
}

static nbx_attr attrs[] = {
    {.key = NBX_SV("country"), .type = NBX_ATTR_STRING, .string = NBX_SV("DE")},
    {.key = NBX_SV("vip"), .type = NBX_ATTR_BOOL, .boolean = true},
    {.key = NBX_SV("visits"), .type = NBX_ATTR_NUMBER, .number = 12},
};
static nbx_consent consent[] = {{NBX_SV("email"), 0}, {NBX_SV("personalization"), 1}};
static nbx_prop props[] = {{NBX_SV("apparel"), 0.2}, {NBX_SV("free_shipping"), 0.4}};
static const nbx_kv session[] = {{"channel", "web"}, {"page", "/home"}};

static void run(nbx_sandbox *sb, bool anonymous)
{
    nbx_profile known = {.id = NBX_SV("alice"),
                         .attrs = attrs,
                         .n_attrs = NBX_ARRAY_LEN(attrs),
                         .consent = consent,
                         .n_consent = NBX_ARRAY_LEN(consent),
                         .propensity = props,
                         .n_propensity = NBX_ARRAY_LEN(props),
                         .ltv = 900,
                         .churn = 0.7,
                         .rfm = {.first_purchase = INT64_C(1700000000000),
                                 .last_purchase = INT64_C(1760000000500),
                                 .orders = 7,
                                 .revenue = 350.5,
                                 .margin = 120.25,
                                 .r = 4,
                                 .f = 3,
                                 .m = 4,
                                 .segment = NBX_SEGMENT_LOYAL},
                         .updated_at = FZ_NOW_MS,
                         .fields = NBX_PF_ATTRS | NBX_PF_CONSENT | NBX_PF_PROPENSITY | NBX_PF_LTV |
                                   NBX_PF_CHURN | NBX_PF_RFM | NBX_PF_UPDATED_AT};
    nbx_profile anon = {.id = NBX_SV("anon")};
    static const nbx_exposure_summary seen = {
        .impressions = 2, .clicks = 1, .last_impression = FZ_NOW_MS - 86400000};
    nbx_candidate cand[CAND_MAX];
    size_t n = 0;
    for (uint32_t i = 0; i < catalog->n_offers; i++)
        for (uint32_t k = 0; k < catalog->offers[i].n_placements && n < CAND_MAX; k++)
            cand[n++] = (nbx_candidate){.offer = i,
                                        .placement = catalog->offers[i].placements[k],
                                        .exposure = i % 2 ? &seen : NULL};
    nbx_sandbox_input in = {.profile = anonymous ? &anon : &known,
                            .anonymous = anonymous,
                            .session = session,
                            .n_session = NBX_ARRAY_LEN(session),
                            .now_ms = FZ_NOW_MS,
                            .seed = 42,
                            .cand = cand,
                            .n_cand = n};
    nbx_policy_error err;
    memset(&err, 0, sizeof err);
    int rc = nbx_sandbox_run(sb, &in, &err);
    if (rc == NBX_EPOLICY) {
        if (err.fault == NBX_FAULT_NONE || err.fault > NBX_FAULT_RESULT)
            fz_fail("NBX_EPOLICY with fault %u", err.fault);
        return;
    }
    if (rc != NBX_OK)
        fz_fail("nbx_sandbox_run returned %d", rc);
    for (size_t i = 0; i < n; i++) {
        const nbx_candidate *c = &cand[i];
        if (c->excluded == NBX_EXCLUDED_NONE && !c->scored)
            fz_fail("candidate %zu neither scored nor excluded, and no fault", i);
        if (c->excluded != NBX_EXCLUDED_NONE && c->excluded != NBX_EXCLUDED_INELIGIBLE)
            fz_fail("candidate %zu excluded as %u by the sandbox", i, c->excluded);
        if (c->scored && (c->score != c->score || c->score - c->score != 0))
            fz_fail("candidate %zu has a non-finite score and no fault", i);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nbx_policy *p = NULL;
    nbx_err e = {0};
    int rc = nbx_policy_load_text("fuzz.lua", (const char *)data, size, &p, &e);
    if (rc != NBX_OK) {
        if (p)
            fz_fail("a refused policy was returned");
        fz_check_message(e.msg, "nbx_policy_load_text");
        return 0;
    }
    /* Small limits: a fault is an answer, and the fuzzer gets more inputs. */
    nbx_limits limits = {.time_us = 1000, .memory = 8u << 20};
    nbx_sandbox *sb = NULL;
    rc = nbx_sandbox_open(p, catalog, &limits, &sb, &e);
    if (rc != NBX_OK) {
        fz_check_message(e.msg, "nbx_sandbox_open");
    } else {
        run(sb, false);
        run(sb, true);
        run(sb, false);
        nbx_sandbox_close(sb);
    }
    nbx_policy_unref(p);
    return 0;
}
