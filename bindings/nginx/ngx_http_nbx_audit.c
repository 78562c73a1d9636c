
/*
 * The decision variables of ngx_http_nbx_module (docs/nginx.md, "Audit
 * log"): $nbx_decision_id, $nbx_arm, $nbx_policy_version,
 * $nbx_catalog_version, and $nbx_decision, the decision's audit line, so
 * that nginx's own log_format and access_log (buffering, rotation, syslog)
 * carry the audit log wherever the site ships its logs.
 *
 * The audit line is JSON without a line break whose strings the library
 * has escaped, control characters included (nbx_result_audit_json()): it
 * is meant for a log_format with escape=none, where it stays one JSON
 * object a line. nginx's default escaping would turn its quotes into \x22.
 *
 * The library writes the line only when asked (NBX_DECIDE_AUDIT), and the
 * decide handler asks only when the configuration uses $nbx_decision: a
 * site that does not log it pays nothing.
 */


#include "ngx_http_nbx.h"


typedef struct {
    ngx_str_t                  decision_id;
    ngx_str_t                  arm;
    ngx_str_t                  policy_version;
    ngx_str_t                  catalog_version;
    ngx_str_t                  decision;
} ngx_http_nbx_ctx_t;


static ngx_int_t ngx_http_nbx_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_nbx_keep(ngx_http_request_t *r, ngx_str_t *dst,
    const char *src, size_t len);


/*
 * Not cacheable: a variable read before the decision (a `set` in the
 * rewrite phase) must not leave "not found" behind for the access log.
 */
static ngx_http_variable_t  ngx_http_nbx_vars[] = {

    { ngx_string("nbx_decision_id"), NULL, ngx_http_nbx_variable,
      offsetof(ngx_http_nbx_ctx_t, decision_id), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("nbx_arm"), NULL, ngx_http_nbx_variable,
      offsetof(ngx_http_nbx_ctx_t, arm), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("nbx_policy_version"), NULL, ngx_http_nbx_variable,
      offsetof(ngx_http_nbx_ctx_t, policy_version),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("nbx_catalog_version"), NULL, ngx_http_nbx_variable,
      offsetof(ngx_http_nbx_ctx_t, catalog_version),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("nbx_decision"), NULL, ngx_http_nbx_variable,
      offsetof(ngx_http_nbx_ctx_t, decision), NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_http_variable_t *
ngx_http_nbx_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v, *decision;

    decision = NULL;

    for (v = ngx_http_nbx_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NULL;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;

        if (v->data == offsetof(ngx_http_nbx_ctx_t, decision)) {
            decision = var;
        }
    }

    return decision;
}


ngx_int_t
ngx_http_nbx_keep_decision(ngx_http_request_t *r, const nbx_result *result)
{
    size_t               len;
    const char          *version, *audit;
    ngx_http_nbx_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_nbx_ctx_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    version = NULL;
    (void) nbx_result_policy(result, &version);

    audit = nbx_result_audit_json(result, &len);

    /* an absent value stays NULL, "not found": no arm without a
     * deployment, no policy version for the control treatment */
    if (ngx_http_nbx_keep(r, &ctx->decision_id,
                          nbx_result_decision_id(result), 0) != NGX_OK
        || ngx_http_nbx_keep(r, &ctx->arm, nbx_result_arm(result), 0)
           != NGX_OK
        || ngx_http_nbx_keep(r, &ctx->policy_version, version, 0) != NGX_OK
        || ngx_http_nbx_keep(r, &ctx->catalog_version,
                             nbx_result_catalog_version(result), 0)
           != NGX_OK
        || ngx_http_nbx_keep(r, &ctx->decision, audit, len) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_nbx_module);

    return NGX_OK;
}


static ngx_int_t
ngx_http_nbx_keep(ngx_http_request_t *r, ngx_str_t *dst, const char *src,
    size_t len)
{
    if (src == NULL) {
        return NGX_OK;
    }

    if (len == 0) {
        len = ngx_strlen(src);
    }

    dst->data = ngx_pnalloc(r->pool, len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, src, len);
    dst->len = len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_nbx_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_str_t           *s;
    ngx_http_nbx_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_nbx_module);

    if (ctx == NULL) {
        /* no decision in this request (refused before it, or another
         * location): "-" in a log line; `access_log ... if=$nbx_decision`
         * writes no line */
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((u_char *) ctx + data);

    if (s->data == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = s->data;

    return NGX_OK;
}
