/*
 * result.c: what a decision hands back: the result JSON (docs/decisions.md,
 * "The result") and the nbx_result_* accessors.
 *
 * The pipeline (decide.c) fills struct nbx_result and describes the rest of
 * the decision in an nbx_result_view; this file only writes. An explained
 * result carries every candidate with what a reviewer needs to follow the
 * ranking without reading code: P(accept) and where it came from, unit
 * margin and serving cost, score, expected margin, and the exclusion in
 * words (caps.c words the rules it enforces).
 */
#include "nbx_int.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

/* The fields an action and an explained candidate have in common, opening
 * the object: both lists (and the audit line's actions) read alike and
 * cannot drift apart. */
void nbx_result_write_choice(nbx_buf *b, bool first, nbx_sv offer, nbx_sv placement, double score,
                             double expected_margin)
{
    nbx_buf_puts(b, first ? "{\"offer\":" : ",{\"offer\":");
    nbx_jw_sv(b, offer);
    nbx_buf_puts(b, ",\"placement\":");
    nbx_jw_sv(b, placement);
    nbx_buf_puts(b, ",\"score\":");
    nbx_jw_decimal(b, score);
    nbx_buf_puts(b, ",\"expected_margin\":");
    nbx_jw_decimal(b, expected_margin);
}

void nbx_result_write_error(nbx_buf *b, const nbx_result *r, bool kind_only)
{
    const nbx_policy *pol = r->policy;
    if (kind_only) {
        /* for clients: the policy's text (file, line, message) stays out */
        nbx_buf_puts(b, ",\"error\":{\"kind\":\"");
        nbx_buf_puts(b, r->fault_kind);
        nbx_buf_puts(b, "\"}");
        return;
    }
    nbx_buf_puts(b, ",\"error\":{\"policy\":");
    nbx_jw_string(b, pol->name, strlen(pol->name));
    nbx_buf_puts(b, ",\"version\":\"");
    nbx_buf_puts(b, pol->version_hex);
    nbx_buf_puts(b, "\",\"kind\":\"");
    nbx_buf_puts(b, r->fault_kind);
    nbx_buf_puts(b, "\",\"where\":");
    nbx_jw_string(b, r->fault.where, strlen(r->fault.where));
    nbx_buf_puts(b, ",\"offer\":");
    if (r->fault.offer[0])
        nbx_jw_string(b, r->fault.offer, strlen(r->fault.offer));
    else
        nbx_buf_puts(b, "null");
    nbx_buf_puts(b, ",\"reason\":");
    const char *reason = r->fault.reason[0] ? r->fault.reason : r->error;
    nbx_jw_string(b, reason, strlen(reason));
    nbx_buf_puts(b, ",\"message\":");
    nbx_jw_string(b, r->error, strlen(r->error));
    nbx_buf_putc(b, '}');
}

static bool chosen(const nbx_result *r, const nbx_catalog *cat, const nbx_candidate *cd)
{
    for (size_t i = 0; i < r->n_actions; i++)
        if (nbx_sv_eq(nbx_sv_of(r->actions[i].offer), cat->offers[cd->offer].id) &&
            nbx_sv_eq(nbx_sv_of(r->actions[i].placement), cat->placements[cd->placement].id))
            return true;
    return false;
}

/* One explained candidate: its choice fields, then what it was ranked on
 * and, when excluded, why. */
static void write_candidate(nbx_buf *b, const nbx_result *r, const nbx_result_view *v,
                            const nbx_candidate *cd, bool first)
{
    const nbx_catalog *cat = v->catalog;
    const nbx_offer *o = &cat->offers[cd->offer];
    nbx_result_write_choice(b, first, o->id, cat->placements[cd->placement].id,
                            cd->scored ? cd->score : NAN, cd->expected_margin);
    json_t *name = o->json ? json_object_get(o->json, "name") : NULL;
    if (json_is_string(name)) {
        nbx_buf_puts(b, ",\"name\":");
        nbx_jw_string(b, json_string_value(name), json_string_length(name));
    }
    nbx_buf_puts(b, ",\"propensity\":");
    nbx_jw_decimal(b, v->caps->propensity[cd->offer]);
    const char *source = nbx_propensity_source_name(v->caps->propensity_source[cd->offer]);
    nbx_buf_puts(b, ",\"propensity_source\":");
    if (source) {
        nbx_buf_putc(b, '"');
        nbx_buf_puts(b, source);
        nbx_buf_putc(b, '"');
    } else {
        nbx_buf_puts(b, "null");
    }
    nbx_buf_puts(b, ",\"margin\":");
    nbx_jw_decimal(b, o->margin);
    nbx_buf_puts(b, ",\"serving_cost\":");
    nbx_jw_decimal(b, o->serving_cost);
    nbx_buf_puts(b, ",\"chosen\":");
    nbx_buf_puts(b, chosen(r, cat, cd) ? "true" : "false");
    nbx_buf_puts(b, ",\"excluded\":");
    const char *why = nbx_excluded_name(cd->excluded);
    if (!why) {
        nbx_buf_puts(b, "null}");
        return;
    }
    nbx_buf_putc(b, '"');
    nbx_buf_puts(b, why);
    nbx_buf_putc(b, '"');
    if (cd->excluded == NBX_EXCLUDED_INELIGIBLE && cd->why) {
        nbx_buf_puts(b, ",\"policy_reason\":");
        nbx_jw_string(b, cd->why, strlen(cd->why));
    }
    char words[256];
    nbx_caps_explain(v->caps, o, cd->excluded, cd->why, v->now_ms, words, sizeof words);
    nbx_buf_puts(b, ",\"reason\":");
    nbx_jw_string(b, words, strlen(words));
    nbx_buf_putc(b, '}');
}

void nbx_result_write_arm(nbx_buf *b, const nbx_result *r)
{
    if (!r->deployment) {
        nbx_buf_puts(b, ",\"arm\":null");
        return;
    }
    /* names are [A-Za-z0-9_.-]: nothing to escape */
    nbx_buf_puts(b, ",\"deployment\":{\"name\":\"");
    nbx_buf_puts(b, r->deployment->name);
    nbx_buf_puts(b, "\",\"version\":\"");
    nbx_buf_puts(b, r->deployment->version_hex);
    nbx_buf_puts(b, "\"},\"arm\":\"");
    nbx_buf_puts(b, r->arm);
    nbx_buf_putc(b, '"');
    if (strcmp(r->arm, r->assigned) != 0) {
        nbx_buf_puts(b, ",\"assigned\":\"");
        nbx_buf_puts(b, r->assigned);
        nbx_buf_putc(b, '"');
    }
}

/* {"name": ..., "version": ...}, or null for the control treatment. */
void nbx_result_write_policy(nbx_buf *b, const nbx_policy *pol)
{
    if (!pol) {
        nbx_buf_puts(b, "null");
        return;
    }
    nbx_buf_puts(b, "{\"name\":");
    nbx_jw_string(b, pol->name, strlen(pol->name));
    nbx_buf_puts(b, ",\"version\":\"");
    nbx_buf_puts(b, pol->version_hex);
    nbx_buf_puts(b, "\"}");
}

void nbx_result_write_actions(nbx_buf *b, const nbx_action *actions, size_t n)
{
    nbx_buf_puts(b, "\"actions\":[");
    for (size_t i = 0; i < n; i++) {
        const nbx_action *a = &actions[i];
        nbx_result_write_choice(b, i == 0, nbx_sv_of(a->offer), nbx_sv_of(a->placement), a->score,
                                a->expected_margin);
        nbx_buf_puts(b, ",\"probability\":");
        nbx_jw_decimal(b, a->probability);
        nbx_buf_putc(b, '}');
    }
    nbx_buf_putc(b, ']');
}

/* What each shadow policy decided (docs/experiments.md, "Shadow
 * policies"); for clients (NBX_DECIDE_ERROR_KIND_ONLY) a failure's kind
 * only, as for the served policy. */
void nbx_result_write_shadows(nbx_buf *b, const nbx_result *r, bool kind_only)
{
    nbx_buf_puts(b, ",\"shadow\":[");
    for (uint32_t k = 0; k < r->n_shadows; k++) {
        const nbx_shadow_result *sh = &r->shadows[k];
        nbx_buf_puts(b, k ? ",{\"policy\":" : "{\"policy\":");
        nbx_result_write_policy(b, sh->policy);
        nbx_buf_putc(b, ',');
        nbx_result_write_actions(b, sh->actions, sh->n_actions);
        nbx_buf_puts(b, ",\"fallback\":");
        nbx_buf_puts(b, sh->fallback ? "true" : "false");
        if (sh->fallback) {
            nbx_buf_puts(b, ",\"error\":{\"kind\":\"");
            nbx_buf_puts(b, sh->fault_kind);
            nbx_buf_putc(b, '"');
            if (!kind_only) {
                nbx_buf_puts(b, ",\"where\":");
                nbx_jw_string(b, sh->fault.where, strlen(sh->fault.where));
                nbx_buf_puts(b, ",\"reason\":");
                nbx_jw_string(b, sh->fault.reason, strlen(sh->fault.reason));
            }
            nbx_buf_putc(b, '}');
        }
        nbx_buf_puts(b, ",\"expected_margin\":");
        nbx_jw_decimal(b, sh->expected_margin);
        nbx_buf_putc(b, '}');
    }
    nbx_buf_putc(b, ']');
}

void nbx_result_write(nbx_result *r, const nbx_result_view *v)
{
    const nbx_catalog *cat = v->catalog;
    const nbx_request *req = v->req;
    nbx_buf *b = &r->json;
    nbx_buf_reset(b);
    nbx_buf_puts(b, "{\"decision_id\":\"");
    nbx_buf_puts(b, r->decision_id);
    nbx_buf_puts(b, "\",\"customer\":");
    nbx_jw_string(b, req->customer, strlen(req->customer));
    nbx_result_write_arm(b, r);
    nbx_buf_puts(b, ",\"policy\":");
    nbx_result_write_policy(b, r->policy);
    nbx_buf_puts(b, ",\"catalog_version\":\"");
    nbx_buf_puts(b, cat->version_hex);
    nbx_buf_puts(b, "\",\"as_of\":");
    nbx_jw_time(b, v->now_ms);
    nbx_buf_putc(b, ',');
    r->json_actions_at = b->len;
    nbx_result_write_actions(b, r->actions, r->n_actions);
    r->json_actions_len = b->len - r->json_actions_at;
    nbx_buf_puts(b, ",\"fallback\":");
    nbx_buf_puts(b, r->fallback ? "true" : "false");
    nbx_buf_puts(b, ",\"anonymous\":");
    nbx_buf_puts(b, r->anonymous ? "true" : "false");
    if (r->has_error)
        nbx_result_write_error(b, r, (req->flags & NBX_DECIDE_ERROR_KIND_ONLY) != 0);
    if (r->deployment && r->deployment->n_shadow)
        nbx_result_write_shadows(b, r, (req->flags & NBX_DECIDE_ERROR_KIND_ONLY) != 0);
    if (req->flags & NBX_DECIDE_EXPLAIN) {
        /* the customer's segment as the policy saw it, which segment
         * priors were read for (null: anonymous, or not scored yet) */
        const char *segment = r->segment ? nbx_segment_name(r->segment) : NULL;
        nbx_buf_puts(b, ",\"segment\":");
        if (segment) {
            nbx_buf_putc(b, '"');
            nbx_buf_puts(b, segment);
            nbx_buf_putc(b, '"');
        } else {
            nbx_buf_puts(b, "null");
        }
        nbx_buf_puts(b, ",\"candidates\":[");
        for (size_t i = 0; i < v->n_cand; i++)
            write_candidate(b, r, v, &v->cand[i], i == 0);
        nbx_buf_puts(b, "],\"log\":[");
        for (size_t i = 0; i < v->n_log; i++) {
            if (i)
                nbx_buf_putc(b, ',');
            nbx_jw_string(b, v->log[i], strlen(v->log[i]));
        }
        nbx_buf_putc(b, ']');
        if (v->log_dropped)
            nbx_buf_printf(b, ",\"log_dropped\":%u", v->log_dropped);
    }
    nbx_buf_putc(b, '}');
    nbx_buf_terminate(b);
}

/* ========================================================================
 * Accessors
 * ======================================================================== */

NBX_API const char *nbx_excluded_name(int reason)
{
    static const char *const names[NBX_EXCLUDED_COUNT] = {
        NULL,       "consent",    "frequency", "cooldown",     "contacts", "budget",
        "validity", "ineligible", "guardrail", "policy_error", "killed"};
    if (reason <= 0 || reason >= NBX_EXCLUDED_COUNT)
        return NULL;
    return names[reason];
}

NBX_API const char *nbx_result_json(const nbx_result *r, size_t *len)
{
    if (!r)
        return NULL;
    if (len)
        *len = r->json.len;
    return r->json.data;
}

NBX_API size_t nbx_result_action_count(const nbx_result *r)
{
    return r ? r->n_actions : 0;
}

NBX_API int nbx_result_action(const nbx_result *r, size_t i, nbx_action *out)
{
    if (!r || !out || i >= r->n_actions)
        return NBX_EINVAL;
    *out = r->actions[i];
    return NBX_OK;
}

NBX_API int nbx_result_fallback(const nbx_result *r)
{
    return r && r->fallback;
}

NBX_API int nbx_result_anonymous(const nbx_result *r)
{
    return r && r->anonymous;
}

NBX_API const char *nbx_result_error(const nbx_result *r)
{
    return r && r->has_error ? r->error : NULL;
}

NBX_API int nbx_result_fault(const nbx_result *r, nbx_fault *out)
{
    if (!r || !out)
        return NBX_EINVAL;
    if (!r->has_error)
        return NBX_ENOTFOUND;
    out->kind = r->fault_kind;
    out->where = r->fault.where;
    out->offer = r->fault.offer;
    out->reason = r->fault.reason[0] ? r->fault.reason : r->error;
    return NBX_OK;
}

NBX_API int nbx_result_segment(const nbx_result *r)
{
    return r ? r->segment : NBX_SEGMENT_NONE;
}

NBX_API const char *nbx_result_decision_id(const nbx_result *r)
{
    return r ? r->decision_id : NULL;
}

NBX_API const char *nbx_result_arm(const nbx_result *r)
{
    return r ? r->arm : NULL;
}

NBX_API const char *nbx_result_assigned_arm(const nbx_result *r)
{
    return r ? r->assigned : NULL;
}

NBX_API const char *nbx_result_deployment(const nbx_result *r, const char **version)
{
    const nbx_deployment *d = r ? r->deployment : NULL;
    if (version)
        *version = d ? d->version_hex : NULL;
    return d ? d->name : NULL;
}

NBX_API const char *nbx_result_policy(const nbx_result *r, const char **version)
{
    const nbx_policy *p = r ? r->policy : NULL;
    if (version)
        *version = p ? p->version_hex : NULL;
    return p ? p->name : NULL;
}

NBX_API const char *nbx_result_catalog_version(const nbx_result *r)
{
    return r && r->catalog ? r->catalog->version_hex : NULL;
}

NBX_API double nbx_result_expected_margin(const nbx_result *r)
{
    return r ? r->expected_margin : 0;
}

NBX_API void nbx_result_exclusions(const nbx_result *r, uint32_t *counts)
{
    if (!counts)
        return;
    if (!r) {
        memset(counts, 0, NBX_EXCLUDED_COUNT * sizeof *counts);
        return;
    }
    memcpy(counts, r->exclusions, sizeof r->exclusions);
}
