
/*
 * What the files of ngx_http_nbx_module share: ngx_http_nbx_module.c (the
 * handlers and directives), ngx_http_nbx_audit.c (the decision variables)
 * and ngx_http_nbx_metrics.c (ngx_http_nbx_metrics_module: the
 * nbx_metrics handler and its zone).
 */


#ifndef _NGX_HTTP_NBX_H_INCLUDED_
#define _NGX_HTTP_NBX_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <nbx.h>


extern ngx_module_t  ngx_http_nbx_module;


/* ngx_http_nbx_module.c: the stores, for what nbx_metrics reads of them */

typedef struct {
    ngx_str_t                 *path;          /* as configured */
    nbx_store                 *store;
    ngx_array_t                deployments;   /* const nbx_deployment * */
} ngx_http_nbx_open_store_t;

/*
 * The store directories this worker has open, each once (a directory
 * spelled two ways is one LMDB environment), with the deployments served
 * from each: an array of ngx_http_nbx_open_store_t in r's pool; NULL if
 * out of memory.
 */
ngx_array_t *ngx_http_nbx_open_stores(ngx_http_request_t *r);


/* ngx_http_nbx_audit.c */

/*
 * Adds $nbx_decision_id, $nbx_arm, $nbx_policy_version,
 * $nbx_catalog_version and $nbx_decision (preconfiguration). Returns
 * $nbx_decision's variable, whose NGX_HTTP_VAR_INDEXED flag says, once the
 * configuration is read, whether anything uses it; NULL on failure.
 */
ngx_http_variable_t *ngx_http_nbx_add_variables(ngx_conf_t *cf);

/*
 * Keeps what the variables show of a decision in the request's pool: the
 * result belongs to the worker's context and the next decision replaces
 * it, while the access log is written after the response.
 */
ngx_int_t ngx_http_nbx_keep_decision(ngx_http_request_t *r,
    const nbx_result *result);


/* ngx_http_nbx_metrics.c: what decisions add to the nbx_metrics zone */

/* whether the configuration has an nbx_metrics location to count for */
ngx_int_t ngx_http_nbx_metrics_enabled(ngx_http_request_t *r);

/* a monotonic clock in microseconds, for the decision time */
uint64_t ngx_http_nbx_metrics_clock(void);

/* a decision made: its series, fallback, exclusions and time */
void ngx_http_nbx_metrics_decision(ngx_http_request_t *r,
    const nbx_result *result, uint64_t us);

/* the decide handler's outcome: an error status is counted by its kind */
void ngx_http_nbx_metrics_outcome(ngx_http_request_t *r, ngx_int_t rc);


#endif /* _NGX_HTTP_NBX_H_INCLUDED_ */
