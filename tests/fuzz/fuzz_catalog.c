/*
 * fuzz_catalog: catalog JSON (nbx_catalog_load_text, core/catalog.c).
 *
 * The input is a catalog file. A refused one must say why in an escaped
 * message; an accepted one must hold the invariants the decision path
 * relies on (offers sorted by id with index == position, placement and
 * fallback indices in range, lookups that find every id), and its offers
 * must load into a sandbox and be scored by tests/fuzz/harness.lua, since
 * every field of an offer reaches the policy.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

static nbx_policy *policy;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void policy_free(void)
{
    nbx_policy_unref(policy);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    size_t len;
    char *src = fz_source_file("tests/fuzz/harness.lua", &len);
    nbx_err e = {0};
    if (nbx_policy_load_text("harness.lua", src, len, &policy, &e) != NBX_OK)
        fz_fail("loading harness.lua: %s", e.msg);
    free(src);
    atexit(policy_free);
    return 0;
}

static void check_invariants(const nbx_catalog *c)
{
    for (uint32_t i = 0; i < c->n_offers; i++) {
        const nbx_offer *o = &c->offers[i];
        if (o->index != i)
            fz_fail("offer %u has index %u", i, o->index);
        if (i && nbx_sv_cmp(c->offers[i - 1].id, o->id) >= 0)
            fz_fail("offers not sorted at %u", i);
        if (nbx_catalog_offer(c, o->id) != o)
            fz_fail("offer '%.*s' not found by its id", (int)o->id.len, o->id.ptr);
        if (o->id.len == 0 || o->id.len > NBX_OFFER_ID_MAX || o->id.ptr[o->id.len] != '\0')
            fz_fail("offer %u: id of %zu bytes", i, o->id.len);
        for (uint32_t k = 0; k < o->n_placements; k++)
            if (o->placements[k] >= c->n_placements)
                fz_fail("offer %u: placement index %u of %u", i, o->placements[k], c->n_placements);
        if (o->category_index != UINT32_MAX && o->category_index >= c->n_categories)
            fz_fail("offer %u: category index %u of %u", i, o->category_index, c->n_categories);
        if (o->purpose_index != UINT32_MAX && o->purpose_index >= c->n_purposes)
            fz_fail("offer %u: purpose index %u of %u", i, o->purpose_index, c->n_purposes);
    }
    for (uint32_t j = 0; j < c->n_placements; j++) {
        const nbx_placement *pl = &c->placements[j];
        if (nbx_catalog_placement(c, pl->id) != (int)j)
            fz_fail("placement %u not found by its id", j);
        for (uint32_t k = 0; k < pl->n_offers; k++)
            if (pl->offers[k] >= c->n_offers)
                fz_fail("placement %u: offer index %u of %u", j, pl->offers[k], c->n_offers);
        for (uint32_t k = 0; k < pl->n_fallback; k++)
            if (pl->fallback[k] >= c->n_offers)
                fz_fail("placement %u: fallback index %u of %u", j, pl->fallback[k], c->n_offers);
    }
}

/* Every (offer, placement) pair, at most CAND_MAX, scored for an anonymous
 * customer: what a decision does with the catalog once it is loaded. */
#define CAND_MAX 64

static void run_policy(nbx_catalog *c)
{
    nbx_limits limits = {.time_us = 2000, .memory = 16u << 20};
    nbx_sandbox *sb = NULL;
    nbx_err e = {0};
    int rc = nbx_sandbox_open(policy, c, &limits, &sb, &e);
    if (rc != NBX_OK) {
        /* A catalog too big for the memory limit is refused, not a crash. */
        fz_check_message(e.msg, "nbx_sandbox_open");
        return;
    }
    nbx_candidate cand[CAND_MAX];
    size_t n = 0;
    for (uint32_t i = 0; i < c->n_offers; i++)
        for (uint32_t k = 0; k < c->offers[i].n_placements && n < CAND_MAX; k++)
            cand[n++] = (nbx_candidate){.offer = i, .placement = c->offers[i].placements[k]};
    nbx_profile anon = {.id = NBX_SV("anon")};
    nbx_sandbox_input in = {.profile = &anon,
                            .anonymous = true,
                            .now_ms = FZ_NOW_MS,
                            .seed = 1,
                            .cand = cand,
                            .n_cand = n};
    nbx_policy_error perr;
    memset(&perr, 0, sizeof perr);
    rc = nbx_sandbox_run(sb, &in, &perr);
    if (rc != NBX_OK && rc != NBX_EPOLICY)
        fz_fail("nbx_sandbox_run returned %d", rc);
    if (rc == NBX_EPOLICY) {
        fz_check_message(perr.reason, "nbx_sandbox_run");
    }
    nbx_sandbox_close(sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nbx_catalog *c = NULL;
    nbx_err e = {0};
    int rc = nbx_catalog_load_text("fuzz.json", (const char *)data, size, &c, &e);
    if (rc != NBX_OK) {
        if (c)
            fz_fail("a refused catalog was returned");
        if (e.code != rc)
            fz_fail("returned %d, message says %d", rc, e.code);
        fz_check_message(e.msg, "nbx_catalog_load_text");
        return 0;
    }
    check_invariants(c);
    run_policy(c);
    nbx_catalog_unref(c);
    return 0;
}
