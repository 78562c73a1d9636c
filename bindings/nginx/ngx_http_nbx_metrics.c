
/*
 * ngx_http_nbx_metrics_module: decision metrics in Prometheus' text
 * exposition format (docs/nginx.md, "Metrics").
 *
 *   location = /metrics { nbx_metrics; }
 *
 * A configuration with an nbx_metrics location gets a shared memory zone,
 * "nbx_metrics", that every worker's decisions add to with atomic
 * increments; the handler reads it, so what it serves is summed over the
 * workers whichever one answers. A reload with the same module keeps the
 * zone and its counts (counters do not go back); a restart starts at zero.
 *
 * Counted: decisions by arm and policy (name and version), fallbacks by
 * the kind of policy failure, requests answered without a decision by
 * what the client was told, exclusions by reason, and the time nbx_decide()
 * took as a histogram. Labels are escaped as the format asks (\\, \", \n).
 *
 * Kill switches and canary aborts are not counted here: they live in the
 * store, written by any process (`nbx kill`, a batch's abort, any worker's
 * abort), and every worker sees the same store. So the scrape reads them
 * from the store (nbx_kills_read()): what is killed now by kind, the kills
 * and unkills of the history, and the aborts it records by arm. A zone
 * counter per worker would count one abort once per worker that saw it, or
 * miss the aborts of other processes.
 */


#include "ngx_http_nbx.h"

#include <time.h>


/* (arm, policy, version) series; more are counted as overflow */
#define NGX_HTTP_NBX_METRICS_SERIES   128

/* a policy's name is cut to this many bytes in a label (at a character) */
#define NGX_HTTP_NBX_METRICS_NAME     128

#define NGX_HTTP_NBX_METRICS_ARM      64
#define NGX_HTTP_NBX_METRICS_VERSION  16

/* changes when the zone's layout does: a zone of another layout is reset */
#define NGX_HTTP_NBX_METRICS_MAGIC    0x6e62786d00000001


typedef struct {
    ngx_atomic_t               decisions;
    u_char                     arm[NGX_HTTP_NBX_METRICS_ARM + 1];
    u_char                     policy[NGX_HTTP_NBX_METRICS_NAME + 1];
    u_char                     version[NGX_HTTP_NBX_METRICS_VERSION + 1];
} ngx_http_nbx_series_t;


/* the kinds of nbx_fault.kind, then anything else */
static const char  *ngx_http_nbx_fallback_kinds[] = {
    "runtime", "timeout", "memory", "result", "unavailable", "other"
};

#define NGX_HTTP_NBX_FALLBACK_KINDS                                          \
    (sizeof(ngx_http_nbx_fallback_kinds) / sizeof(char *))


/* requests answered without a decision, by the status the client got */
typedef struct {
    ngx_uint_t                 status;        /* 0: any other */
    const char                *kind;
} ngx_http_nbx_error_kind_t;

static ngx_http_nbx_error_kind_t  ngx_http_nbx_error_kinds[] = {
    { NGX_HTTP_BAD_REQUEST, "request" },
    { NGX_HTTP_FORBIDDEN, "forbidden" },
    { NGX_HTTP_NOT_ALLOWED, "method" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable" },
    { NGX_HTTP_INSUFFICIENT_STORAGE, "store_full" },
    { 0, "internal" }
};

#define NGX_HTTP_NBX_ERROR_KINDS                                             \
    (sizeof(ngx_http_nbx_error_kinds) / sizeof(ngx_http_nbx_error_kind_t))


/* upper bounds of the decision time buckets, in microseconds */
static ngx_uint_t  ngx_http_nbx_time_buckets[] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
    250000, 1000000
};

#define NGX_HTTP_NBX_TIME_BUCKETS                                            \
    (sizeof(ngx_http_nbx_time_buckets) / sizeof(ngx_uint_t))


typedef struct {
    uint64_t                   magic;
    ngx_atomic_t               n_series;      /* published entries */
    ngx_atomic_t               overflow;      /* decisions of no series */
    ngx_atomic_t               fallbacks[NGX_HTTP_NBX_FALLBACK_KINDS];
    ngx_atomic_t               errors[NGX_HTTP_NBX_ERROR_KINDS];
    ngx_atomic_t               exclusions[NBX_EXCLUDED_COUNT];
    ngx_atomic_t               time[NGX_HTTP_NBX_TIME_BUCKETS + 1];
    ngx_atomic_t               time_sum_us;
    ngx_http_nbx_series_t      series[NGX_HTTP_NBX_METRICS_SERIES];
} ngx_http_nbx_metrics_t;


typedef struct {
    ngx_shm_zone_t            *zone;          /* NULL: no nbx_metrics */
} ngx_http_nbx_metrics_conf_t;


/* the automatic aborts of an arm, as a store's kill history records them */
typedef struct {
    ngx_str_t                  deployment;    /* NUL-terminated */
    ngx_str_t                  arm;           /* NUL-terminated */
    ngx_uint_t                 aborts;
} ngx_http_nbx_aborts_t;


/* what a store's kill switches say at a scrape */
typedef struct {
    ngx_str_t                 *store;         /* its path, as configured */
    ngx_pool_t                *pool;
    ngx_uint_t                 killed[NBX_KILL_POLICY + 1];     /* by kind */
    ngx_uint_t                 changes[NBX_KILL_POLICY + 1][2]; /* unkill,
                                                                   kill */
    ngx_array_t                aborts;        /* ngx_http_nbx_aborts_t */
    size_t                     names;         /* bytes of the arms' names */
    unsigned                   nomem:1;
} ngx_http_nbx_kill_figures_t;


static ngx_int_t ngx_http_nbx_metrics_handler(ngx_http_request_t *r);
static ngx_http_nbx_metrics_t *ngx_http_nbx_metrics_get(
    ngx_http_request_t *r, ngx_slab_pool_t **shpool);
static ngx_http_nbx_series_t *ngx_http_nbx_metrics_series(
    ngx_http_nbx_metrics_t *m, ngx_slab_pool_t *shpool, const u_char *arm,
    const u_char *policy, const u_char *version);
static void ngx_http_nbx_metrics_label(u_char *dst, const char *src,
    size_t max);
static u_char *ngx_http_nbx_metrics_escape(u_char *p, u_char *last,
    const u_char *s);
static ngx_array_t *ngx_http_nbx_metrics_kills(ngx_http_request_t *r,
    size_t *size);
static ngx_int_t ngx_http_nbx_metrics_abort(ngx_http_nbx_kill_figures_t *f,
    const char *deployment, size_t deployment_len, const char *arm,
    size_t arm_len, ngx_uint_t n);
static int ngx_http_nbx_metrics_current_kill(void *ud,
    const nbx_kill_info *k);
static int ngx_http_nbx_metrics_kill_change(void *ud,
    const nbx_kill_info *k);
static u_char *ngx_http_nbx_metrics_kill_series(u_char *p, u_char *last,
    ngx_array_t *kills);
static ngx_int_t ngx_http_nbx_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static char *ngx_http_nbx_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void *ngx_http_nbx_metrics_create_conf(ngx_conf_t *cf);


static ngx_command_t  ngx_http_nbx_metrics_commands[] = {

    { ngx_string("nbx_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_nbx_metrics,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_nbx_metrics_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_nbx_metrics_create_conf,      /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_nbx_metrics_module = {
    NGX_MODULE_V1,
    &ngx_http_nbx_metrics_module_ctx,      /* module context */
    ngx_http_nbx_metrics_commands,         /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_nbx_metrics_name = ngx_string("nbx_metrics");
static ngx_str_t  ngx_http_nbx_metrics_type =
    ngx_string("text/plain; version=0.0.4; charset=utf-8");


/* ========================================================================
 * Counting
 * ======================================================================== */

uint64_t
ngx_http_nbx_metrics_clock(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


ngx_int_t
ngx_http_nbx_metrics_enabled(ngx_http_request_t *r)
{
    ngx_http_nbx_metrics_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_nbx_metrics_module);

    return mcf->zone != NULL;
}


void
ngx_http_nbx_metrics_decision(ngx_http_request_t *r, const nbx_result *result,
    uint64_t us)
{
    int                      i;
    u_char                   arm[NGX_HTTP_NBX_METRICS_ARM + 1];
    u_char                   policy[NGX_HTTP_NBX_METRICS_NAME + 1];
    u_char                   version[NGX_HTTP_NBX_METRICS_VERSION + 1];
    uint32_t                 excluded[NBX_EXCLUDED_COUNT];
    nbx_fault                fault;
    ngx_uint_t               k;
    const char              *name, *v;
    ngx_slab_pool_t         *shpool;
    ngx_http_nbx_series_t   *s;
    ngx_http_nbx_metrics_t  *m;

    m = ngx_http_nbx_metrics_get(r, &shpool);
    if (m == NULL) {
        return;
    }

    v = NULL;
    name = nbx_result_policy(result, &v);

    ngx_http_nbx_metrics_label(arm, nbx_result_arm(result),
                               NGX_HTTP_NBX_METRICS_ARM);
    ngx_http_nbx_metrics_label(policy, name, NGX_HTTP_NBX_METRICS_NAME);
    ngx_http_nbx_metrics_label(version, v, NGX_HTTP_NBX_METRICS_VERSION);

    s = ngx_http_nbx_metrics_series(m, shpool, arm, policy, version);

    (void) ngx_atomic_fetch_add(s ? &s->decisions : &m->overflow, 1);

    if (nbx_result_fallback(result)
        && nbx_result_fault(result, &fault) == NBX_OK)
    {
        for (k = 0; k < NGX_HTTP_NBX_FALLBACK_KINDS - 1; k++) {
            if (ngx_strcmp(fault.kind, ngx_http_nbx_fallback_kinds[k]) == 0) {
                break;
            }
        }

        (void) ngx_atomic_fetch_add(&m->fallbacks[k], 1);
    }

    nbx_result_exclusions(result, excluded);

    for (i = 1; i < NBX_EXCLUDED_COUNT; i++) {
        if (excluded[i]) {
            (void) ngx_atomic_fetch_add(&m->exclusions[i], excluded[i]);
        }
    }

    for (k = 0; k < NGX_HTTP_NBX_TIME_BUCKETS; k++) {
        if (us <= ngx_http_nbx_time_buckets[k]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&m->time[k], 1);
    (void) ngx_atomic_fetch_add(&m->time_sum_us, us);
}


void
ngx_http_nbx_metrics_outcome(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_uint_t               status, k;
    ngx_http_nbx_metrics_t  *m;

    status = (rc >= NGX_HTTP_SPECIAL_RESPONSE) ? (ngx_uint_t) rc
                                               : r->headers_out.status;

    if (status < NGX_HTTP_BAD_REQUEST && rc != NGX_ERROR) {
        return;
    }

    m = ngx_http_nbx_metrics_get(r, NULL);
    if (m == NULL) {
        return;
    }

    for (k = 0; k < NGX_HTTP_NBX_ERROR_KINDS - 1; k++) {
        if (ngx_http_nbx_error_kinds[k].status == status) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&m->errors[k], 1);
}


static ngx_http_nbx_metrics_t *
ngx_http_nbx_metrics_get(ngx_http_request_t *r, ngx_slab_pool_t **shpool)
{
    ngx_http_nbx_metrics_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_nbx_metrics_module);

    if (mcf->zone == NULL || mcf->zone->data == NULL) {
        return NULL;
    }

    if (shpool) {
        *shpool = (ngx_slab_pool_t *) mcf->zone->shm.addr;
    }

    return mcf->zone->data;
}


/*
 * The series of (arm, policy, version). Entries are only ever added, each
 * written whole before n_series counts it, so a lookup reads without the
 * lock; adding one takes the zone's mutex, once per new series.
 */
static ngx_http_nbx_series_t *
ngx_http_nbx_metrics_series(ngx_http_nbx_metrics_t *m, ngx_slab_pool_t *shpool,
    const u_char *arm, const u_char *policy, const u_char *version)
{
    ngx_uint_t              i, n;
    ngx_http_nbx_series_t  *s;

    n = m->n_series;
    ngx_memory_barrier();

    for (i = 0; i < n; i++) {
        s = &m->series[i];

        if (ngx_strcmp(s->version, version) == 0
            && ngx_strcmp(s->arm, arm) == 0
            && ngx_strcmp(s->policy, policy) == 0)
        {
            return s;
        }
    }

    ngx_shmtx_lock(&shpool->mutex);

    /* another worker may have added it meanwhile */
    for (n = m->n_series; i < n; i++) {
        s = &m->series[i];

        if (ngx_strcmp(s->version, version) == 0
            && ngx_strcmp(s->arm, arm) == 0
            && ngx_strcmp(s->policy, policy) == 0)
        {
            ngx_shmtx_unlock(&shpool->mutex);
            return s;
        }
    }

    if (n == NGX_HTTP_NBX_METRICS_SERIES) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NULL;
    }

    s = &m->series[n];
    ngx_cpystrn(s->arm, (u_char *) arm, sizeof(s->arm));
    ngx_cpystrn(s->policy, (u_char *) policy, sizeof(s->policy));
    ngx_cpystrn(s->version, (u_char *) version, sizeof(s->version));

    ngx_memory_barrier();
    m->n_series = n + 1;

    ngx_shmtx_unlock(&shpool->mutex);

    return s;
}


/* src (NULL: "") cut to at most max bytes, not inside a UTF-8 character */
static void
ngx_http_nbx_metrics_label(u_char *dst, const char *src, size_t max)
{
    size_t  len;

    len = src ? ngx_strlen(src) : 0;

    if (len > max) {
        len = max;

        while (len && ((u_char) src[len] & 0xc0) == 0x80) {
            len--;
        }
    }

    ngx_memcpy(dst, src, len);
    dst[len] = '\0';
}


/* ========================================================================
 * The exposition
 * ======================================================================== */

/* a label value: backslash, double quote and line feed escaped */
static u_char *
ngx_http_nbx_metrics_escape(u_char *p, u_char *last, const u_char *s)
{
    for ( /* void */ ; *s && p + 2 <= last; s++) {

        switch (*s) {

        case '\\':
            *p++ = '\\';
            *p++ = '\\';
            break;

        case '"':
            *p++ = '\\';
            *p++ = '"';
            break;

        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;

        default:
            *p++ = *s;
        }
    }

    return p;
}


#define ngx_http_nbx_metrics_head(p, last, name, type, help)                 \
    ngx_slprintf(p, last, "# HELP " name " " help "\n# TYPE " name " "        \
                 type "\n")


static ngx_int_t
ngx_http_nbx_metrics_handler(ngx_http_request_t *r)
{
    int                      i;
    size_t                   size;
    u_char                  *p, *last;
    uint64_t                 cumulative;
    ngx_int_t                rc;
    ngx_buf_t               *b;
    ngx_uint_t               k, n;
    ngx_array_t             *kills;
    ngx_chain_t              out;
    const char              *reason;
    ngx_http_nbx_series_t   *s;
    ngx_http_nbx_metrics_t  *m;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    m = ngx_http_nbx_metrics_get(r, NULL);
    if (m == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    kills = ngx_http_nbx_metrics_kills(r, &size);
    if (kills == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = m->n_series;
    ngx_memory_barrier();

    /* every label escaped takes at most twice its bytes */
    size += 8192 + n * (128 + 2 * (NGX_HTTP_NBX_METRICS_ARM
                                   + NGX_HTTP_NBX_METRICS_NAME
                                   + NGX_HTTP_NBX_METRICS_VERSION));

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->pos;
    last = b->end;

    p = ngx_http_nbx_metrics_head(p, last, "nbx_decisions_total", "counter",
            "Decisions made, by arm (empty without a deployment) and policy.");

    for (k = 0; k < n; k++) {
        s = &m->series[k];

        p = ngx_slprintf(p, last, "nbx_decisions_total{arm=\"");
        p = ngx_http_nbx_metrics_escape(p, last, s->arm);
        p = ngx_slprintf(p, last, "\",policy=\"");
        p = ngx_http_nbx_metrics_escape(p, last, s->policy);
        p = ngx_slprintf(p, last, "\",policy_version=\"");
        p = ngx_http_nbx_metrics_escape(p, last, s->version);
        p = ngx_slprintf(p, last, "\"} %uA\n", s->decisions);
    }

    p = ngx_http_nbx_metrics_head(p, last,
            "nbx_decisions_unlabelled_total", "counter",
            "Decisions counted without labels: more arm and policy "
            "combinations than the zone holds.");
    p = ngx_slprintf(p, last, "nbx_decisions_unlabelled_total %uA\n",
                     m->overflow);

    p = ngx_http_nbx_metrics_head(p, last, "nbx_fallbacks_total", "counter",
            "Decisions that fell back to the catalog's fallback actions, "
            "by kind of policy failure.");

    for (k = 0; k < NGX_HTTP_NBX_FALLBACK_KINDS; k++) {
        p = ngx_slprintf(p, last, "nbx_fallbacks_total{kind=\"%s\"} %uA\n",
                         ngx_http_nbx_fallback_kinds[k], m->fallbacks[k]);
    }

    p = ngx_http_nbx_metrics_head(p, last, "nbx_errors_total", "counter",
            "Decision requests answered without a decision, by what the "
            "client was told.");

    for (k = 0; k < NGX_HTTP_NBX_ERROR_KINDS; k++) {
        p = ngx_slprintf(p, last, "nbx_errors_total{kind=\"%s\"} %uA\n",
                         ngx_http_nbx_error_kinds[k].kind, m->errors[k]);
    }

    p = ngx_http_nbx_metrics_head(p, last, "nbx_exclusions_total", "counter",
            "Candidates excluded before or after the policy, by reason.");

    for (i = 1; i < NBX_EXCLUDED_COUNT; i++) {
        reason = nbx_excluded_name(i);
        p = ngx_slprintf(p, last, "nbx_exclusions_total{reason=\"%s\"} %uA\n",
                         reason ? reason : "unknown", m->exclusions[i]);
    }

    p = ngx_http_nbx_metrics_head(p, last, "nbx_decision_seconds",
            "histogram", "Time nbx_decide() took, in seconds.");

    cumulative = 0;

    for (k = 0; k < NGX_HTTP_NBX_TIME_BUCKETS; k++) {
        cumulative += m->time[k];
        p = ngx_slprintf(p, last,
                         "nbx_decision_seconds_bucket{le=\"%ui.%06ui\"} %uL\n",
                         ngx_http_nbx_time_buckets[k] / 1000000,
                         ngx_http_nbx_time_buckets[k] % 1000000, cumulative);
    }

    cumulative += m->time[k];

    p = ngx_slprintf(p, last,
                     "nbx_decision_seconds_bucket{le=\"+Inf\"} %uL\n"
                     "nbx_decision_seconds_sum %uA.%06uA\n"
                     "nbx_decision_seconds_count %uL\n",
                     cumulative, m->time_sum_us / 1000000,
                     m->time_sum_us % 1000000, cumulative);

    p = ngx_http_nbx_metrics_kill_series(p, last, kills);

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_type = ngx_http_nbx_metrics_type;
    r->headers_out.content_type_len = ngx_http_nbx_metrics_type.len;
    r->headers_out.content_length_n = b->last - b->pos;

    if (r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* ========================================================================
 * Kill switches and aborts, read from the stores at a scrape
 * ======================================================================== */

/*
 * The figures of every store this worker has open (ngx_http_nbx_open_stores)
 * and, added to *size, the bytes their series take at most. A store that
 * cannot be read is logged and left out of this scrape. Two snapshots per
 * store, one of the current kills and one of the history: a walk over
 * every change ever made (about 0.5 ms for 10,000 changes), small for a
 * history of human kills and aborts. NULL: out of memory.
 */
static ngx_array_t *
ngx_http_nbx_metrics_kills(ngx_http_request_t *r, size_t *size)
{
    int                           rc;
    size_t                        i;
    ngx_uint_t                    k, j;
    const char                   *name, *arm;
    ngx_array_t                  *stores, *out;
    const nbx_deployment        **deployments;
    ngx_http_nbx_open_store_t    *s;
    ngx_http_nbx_kill_figures_t  *f;

    *size = 0;

    stores = ngx_http_nbx_open_stores(r);
    if (stores == NULL) {
        return NULL;
    }

    out = ngx_array_create(r->pool, stores->nelts ? stores->nelts : 1,
                           sizeof(ngx_http_nbx_kill_figures_t));
    if (out == NULL) {
        return NULL;
    }

    s = stores->elts;

    for (k = 0; k < stores->nelts; k++) {
        f = ngx_array_push(out);
        if (f == NULL) {
            return NULL;
        }

        ngx_memzero(f, sizeof(ngx_http_nbx_kill_figures_t));
        f->store = s[k].path;
        f->pool = r->pool;

        if (ngx_array_init(&f->aborts, r->pool, 4,
                           sizeof(ngx_http_nbx_aborts_t))
            != NGX_OK)
        {
            return NULL;
        }

        /*
         * the arms served from the store, at 0 before their first abort:
         * a counter that exists before it moves lets rate() and increase()
         * see its first step
         */
        deployments = s[k].deployments.elts;

        for (j = 0; j < s[k].deployments.nelts; j++) {
            name = nbx_deployment_name(deployments[j]);

            for (i = 0; i < nbx_deployment_arm_count(deployments[j]); i++) {
                arm = nbx_deployment_arm_name(deployments[j], i);

                if (ngx_http_nbx_metrics_abort(f, name, ngx_strlen(name),
                                               arm, ngx_strlen(arm), 0)
                    != NGX_OK)
                {
                    return NULL;
                }
            }
        }

        rc = nbx_kills_read(s[k].store, 0,
                            ngx_http_nbx_metrics_current_kill, f);

        if (rc == NBX_OK) {
            rc = nbx_kills_read(s[k].store, NBX_KILLS_HISTORY,
                                ngx_http_nbx_metrics_kill_change, f);
        }

        if (f->nomem) {
            return NULL;
        }

        if (rc != NBX_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "nbx_metrics: cannot read the kill switches of "
                          "store \"%V\", left out: %s: %s", f->store,
                          nbx_strerror(rc), nbx_store_errmsg(s[k].store));
            out->nelts--;
            continue;
        }

        /* 9 series of kinds and every arm's, with the labels escaped */
        *size += (9 + f->aborts.nelts) * (160 + 2 * f->store->len)
                 + 2 * f->names;
    }

    return out;
}


/* add n to the aborts of DEPLOYMENT.ARM, a series of its own from its first */
static ngx_int_t
ngx_http_nbx_metrics_abort(ngx_http_nbx_kill_figures_t *f,
    const char *deployment, size_t deployment_len, const char *arm,
    size_t arm_len, ngx_uint_t n)
{
    ngx_uint_t              i;
    ngx_http_nbx_aborts_t  *a;

    a = f->aborts.elts;

    for (i = 0; i < f->aborts.nelts; i++) {
        if (a[i].deployment.len == deployment_len
            && a[i].arm.len == arm_len
            && ngx_memcmp(a[i].deployment.data, deployment, deployment_len)
               == 0
            && ngx_memcmp(a[i].arm.data, arm, arm_len) == 0)
        {
            a[i].aborts += n;
            return NGX_OK;
        }
    }

    a = ngx_array_push(&f->aborts);
    if (a == NULL) {
        return NGX_ERROR;
    }

    a->deployment.data = ngx_pnalloc(f->pool, deployment_len + 1);
    a->arm.data = ngx_pnalloc(f->pool, arm_len + 1);

    if (a->deployment.data == NULL || a->arm.data == NULL) {
        f->aborts.nelts--;
        return NGX_ERROR;
    }

    a->deployment.len = deployment_len;
    a->arm.len = arm_len;
    ngx_memcpy(a->deployment.data, deployment, deployment_len);
    ngx_memcpy(a->arm.data, arm, arm_len);
    a->deployment.data[deployment_len] = '\0';
    a->arm.data[arm_len] = '\0';
    a->aborts = n;

    f->names += deployment_len + arm_len;

    return NGX_OK;
}


/* nbx_kills_read() of the current kills: counted by kind */
static int
ngx_http_nbx_metrics_current_kill(void *ud, const nbx_kill_info *k)
{
    ngx_http_nbx_kill_figures_t  *f = ud;

    if (k->kind >= NBX_KILL_OFFER && k->kind <= NBX_KILL_POLICY) {
        f->killed[k->kind]++;
    }

    return 0;
}


/*
 * nbx_kills_read() of the history: every change counted by kind, and the
 * kills of an arm written by "abort" (the canary abort's origin) by arm
 */
static int
ngx_http_nbx_metrics_kill_change(void *ud, const nbx_kill_info *k)
{
    ngx_http_nbx_kill_figures_t  *f = ud;

    const char  *dot;

    if (k->kind < NBX_KILL_OFFER || k->kind > NBX_KILL_POLICY) {
        return 0;
    }

    f->changes[k->kind][k->killed ? 1 : 0]++;

    if (!k->killed || k->kind != NBX_KILL_ARM
        || ngx_strcmp(k->by, "abort") != 0)
    {
        return 0;
    }

    /* DEPLOYMENT.ARM: a deployment's name holds no '.' */
    dot = strchr(k->name, '.');
    if (dot == NULL) {
        return 0;
    }

    if (ngx_http_nbx_metrics_abort(f, k->name, dot - k->name, dot + 1,
                                   ngx_strlen(dot + 1), 1)
        != NGX_OK)
    {
        f->nomem = 1;
        return 1;
    }

    return 0;
}


static u_char *
ngx_http_nbx_metrics_kill_series(u_char *p, u_char *last, ngx_array_t *kills)
{
    int                           kind, killed;
    ngx_uint_t                    i, k;
    ngx_http_nbx_aborts_t        *a;
    ngx_http_nbx_kill_figures_t  *f;

    f = kills->elts;

    p = ngx_http_nbx_metrics_head(p, last, "nbx_killed", "gauge",
            "What is killed now, by kind: the store's kill switches, read "
            "at the scrape.");

    for (i = 0; i < kills->nelts; i++) {
        for (kind = NBX_KILL_OFFER; kind <= NBX_KILL_POLICY; kind++) {
            p = ngx_slprintf(p, last, "nbx_killed{store=\"");
            p = ngx_http_nbx_metrics_escape(p, last, f[i].store->data);
            p = ngx_slprintf(p, last, "\",kind=\"%s\"} %ui\n",
                             nbx_kill_kind_name(kind), f[i].killed[kind]);
        }
    }

    p = ngx_http_nbx_metrics_head(p, last, "nbx_kill_changes_total",
            "counter",
            "Kills and unkills in the store's history, by kind, made by "
            "any process.");

    for (i = 0; i < kills->nelts; i++) {
        for (kind = NBX_KILL_OFFER; kind <= NBX_KILL_POLICY; kind++) {
            for (killed = 1; killed >= 0; killed--) {
                p = ngx_slprintf(p, last, "nbx_kill_changes_total{store=\"");
                p = ngx_http_nbx_metrics_escape(p, last, f[i].store->data);
                p = ngx_slprintf(p, last,
                                 "\",kind=\"%s\",change=\"%s\"} %ui\n",
                                 nbx_kill_kind_name(kind),
                                 killed ? "kill" : "unkill",
                                 f[i].changes[kind][killed]);
            }
        }
    }

    p = ngx_http_nbx_metrics_head(p, last, "nbx_aborts_total", "counter",
            "Automatic canary aborts in the store's history, by deployment "
            "and arm, made by any process.");

    for (i = 0; i < kills->nelts; i++) {
        a = f[i].aborts.elts;

        for (k = 0; k < f[i].aborts.nelts; k++) {
            p = ngx_slprintf(p, last, "nbx_aborts_total{store=\"");
            p = ngx_http_nbx_metrics_escape(p, last, f[i].store->data);
            p = ngx_slprintf(p, last, "\",deployment=\"");
            p = ngx_http_nbx_metrics_escape(p, last, a[k].deployment.data);
            p = ngx_slprintf(p, last, "\",arm=\"");
            p = ngx_http_nbx_metrics_escape(p, last, a[k].arm.data);
            p = ngx_slprintf(p, last, "\"} %ui\n", a[k].aborts);
        }
    }

    return p;
}


/* ========================================================================
 * Configuration
 * ======================================================================== */

static ngx_int_t
ngx_http_nbx_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_nbx_metrics_t  *odata = data;

    ngx_slab_pool_t         *shpool;
    ngx_http_nbx_metrics_t  *m;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    /* a reload: the counts go on */
    if (odata && odata->magic == NGX_HTTP_NBX_METRICS_MAGIC) {
        shm_zone->data = odata;
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    m = ngx_slab_calloc(shpool, sizeof(ngx_http_nbx_metrics_t));
    if (m == NULL) {
        return NGX_ERROR;
    }

    m->magic = NGX_HTTP_NBX_METRICS_MAGIC;

    shpool->data = m;
    shm_zone->data = m;

    return NGX_OK;
}


static char *
ngx_http_nbx_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    size_t                        size;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_nbx_metrics_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_nbx_metrics_module);

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_nbx_metrics_handler) {
        return "is duplicate";
    }

    if (clcf->handler != NULL) {
        return "cannot share a location with another handler";
    }

    clcf->handler = ngx_http_nbx_metrics_handler;

    if (mcf->zone) {
        return NGX_CONF_OK;
    }

    /* the counters, the slab pool's own pages and bookkeeping */
    size = ngx_align(sizeof(ngx_http_nbx_metrics_t), ngx_pagesize)
           + 8 * ngx_pagesize;

    mcf->zone = ngx_shared_memory_add(cf, &ngx_http_nbx_metrics_name, size,
                                      &ngx_http_nbx_metrics_module);
    if (mcf->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    mcf->zone->init = ngx_http_nbx_metrics_init_zone;

    return NGX_CONF_OK;
}


static void *
ngx_http_nbx_metrics_create_conf(ngx_conf_t *cf)
{
    /* set by ngx_pcalloc(): zone = NULL */
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_nbx_metrics_conf_t));
}
