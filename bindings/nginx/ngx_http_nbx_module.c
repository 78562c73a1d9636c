
/*
 * ngx_http_nbx_module: next-best-action decisions served by nginx.
 *
 * A thin layer over the public nbx API (nbx.h and nothing else):
 *
 *   nbx_decide;   GET  -> nbx_decide()     -> the decision JSON
 *   nbx_event;    POST -> nbx_record_ex()  -> 204
 *
 * Each worker opens, in init_process and never before fork, one nbx_store per
 * store directory and one nbx_engine with one nbx_ctx per distinct (store,
 * catalog, policy or deployment, limits) configuration. A worker is single-threaded, so
 * one context serves all its requests; nbx_decide() runs to completion
 * inside the handler (bounded by the policy's time limit, enforced by the
 * library with a Lua count hook, never with signals or timers).
 *
 * The master checks the policy and catalog files while it parses the
 * configuration (nbx_policy_check(), nbx_catalog_check(), then
 * nbx_engine_check() for each pair with its location's limits) and keeps
 * their bytes, from which the workers open their engines. A deployment
 * (nbx_deployment: arms, holdout, shadow policies) is read by the master
 * with its policy files into an nbx_deployment, memory only, which the
 * workers inherit and open their engines with. Each check
 * creates and destroys its own Lua state, opens no LMDB environment and
 * leaves nothing behind to be inherited through fork(). Once the whole
 * configuration is read (and with it the `user` directive), a second,
 * core module, ngx_http_nbx_check_module, has each store opened the way the
 * workers will open it, as their user, in a short-lived child process. A
 * broken file or a store the workers cannot open thus fails `nginx -t` and
 * `nginx -s reload`, and the old workers keep serving.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <grp.h>
#include <poll.h>

#include <nbx.h>

#include "ngx_http_nbx.h"


/* the largest catalog the library takes (NBX_CATALOG_FILE_MAX) */
#define NGX_HTTP_NBX_FILE_MAX        (64 << 20)

#define NGX_HTTP_NBX_DECIDE          1
#define NGX_HTTP_NBX_EVENT           2

/* How often a worker retries an engine that failed to open (store absent). */
#define NGX_HTTP_NBX_RETRY_SEC       1

/* How long the configuration check waits for a store to open (a writer). */
#define NGX_HTTP_NBX_CHECK_MSEC      10000
#define NGX_HTTP_NBX_CHECK_MSG_MAX   2048

/* Engine messages (policy failures) logged per window; the rest counted. */
#define NGX_HTTP_NBX_LOG_WINDOW      10
#define NGX_HTTP_NBX_LOG_BURST       10

#define NGX_HTTP_NBX_TIME_LIMIT_MAX  10000000     /* 10 s in microseconds */
#define NGX_HTTP_NBX_BODY_DEFAULT    16384

/* nbx_event_time: whose clock dates an event */
#define NGX_HTTP_NBX_EVENT_TIME_SERVER  1
#define NGX_HTTP_NBX_EVENT_TIME_CLIENT  2


typedef struct ngx_http_nbx_store_s  ngx_http_nbx_store_t;

/*
 * A store directory. LMDB must not open one environment twice in a process
 * (closing either would drop the other's locks), so every engine on the
 * same directory borrows one handle. Directories spelled differently are
 * matched by device and inode when they are opened.
 */
struct ngx_http_nbx_store_s {
    ngx_str_t                  path;          /* NUL-terminated */
    nbx_store                 *store;
    ngx_http_nbx_store_t      *owner;         /* who opened store, or self */
    dev_t                      dev;
    ino_t                      ino;
    unsigned                   write:1;       /* a location writes to it */
};


/* One engine and decision context per worker and configuration. */
typedef struct {
    ngx_http_nbx_store_t      *store;
    ngx_str_t                  catalog;       /* NUL-terminated */
    ngx_str_t                  policy;        /* NUL-terminated */
    ngx_str_t                  catalog_text;  /* the files as the master */
    ngx_str_t                  policy_text;   /* read them */
    ngx_str_t                  deployment;    /* NUL-terminated, or policy */
    nbx_deployment            *deployment_handle; /* as the master read it */
    ngx_uint_t                 time_limit;    /* microseconds, 0: default */
    size_t                     memory_limit;  /* bytes, 0: default */
    ngx_msec_t                 event_max_skew;

    nbx_engine                *engine;
    nbx_ctx                   *ctx;
    time_t                     retry_at;
    ngx_int_t                  failure;       /* of the last attempt */
    unsigned                   checked:1;     /* nbx_engine_check() passed */

    /* where engine messages go during a call, and their rate limit */
    ngx_log_t                 *log;
    time_t                     log_window;
    ngx_uint_t                 log_count;
    ngx_uint_t                 log_suppressed;
} ngx_http_nbx_engine_t;


typedef struct {
    ngx_array_t                stores;        /* ngx_http_nbx_store_t * */
    ngx_array_t                engines;       /* ngx_http_nbx_engine_t * */
    ngx_http_variable_t       *decision_var;  /* $nbx_decision */
} ngx_http_nbx_main_conf_t;


typedef struct {
    ngx_str_t                  key;           /* NUL-terminated */
    ngx_http_complex_value_t   value;
} ngx_http_nbx_session_t;


typedef struct {
    ngx_str_t                  store;
    ngx_str_t                  catalog;
    ngx_str_t                  policy;
    ngx_str_t                  catalog_text;
    ngx_str_t                  policy_text;
    ngx_str_t                  deployment;
    nbx_deployment            *deployment_handle;
    ngx_http_complex_value_t  *customer;
    ngx_array_t               *session;       /* ngx_http_nbx_session_t */
    ngx_flag_t                 explain;
    ngx_flag_t                 record;
    ngx_uint_t                 time_limit;
    size_t                     memory_limit;
    size_t                     event_max_body;
    ngx_uint_t                 event_time;    /* NGX_HTTP_NBX_EVENT_TIME_* */
    ngx_msec_t                 event_max_skew;

    ngx_uint_t                 handler;       /* NGX_HTTP_NBX_DECIDE, _EVENT */
    ngx_http_nbx_engine_t     *engine;
} ngx_http_nbx_loc_conf_t;


static ngx_int_t ngx_http_nbx_decide_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_nbx_decide(ngx_http_request_t *r);
static ngx_int_t ngx_http_nbx_placements(ngx_http_request_t *r,
    ngx_array_t *placements, const char **err);
static ngx_int_t ngx_http_nbx_session_fields(ngx_http_request_t *r,
    ngx_http_nbx_loc_conf_t *nlcf, ngx_array_t *fields, const char **err);
static ngx_int_t ngx_http_nbx_event_handler(ngx_http_request_t *r);
static void ngx_http_nbx_event_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_nbx_read_body(ngx_http_request_t *r, size_t max,
    ngx_str_t *body, const char **err);
static ngx_int_t ngx_http_nbx_status(int rc);
static ngx_int_t ngx_http_nbx_library_error(ngx_http_request_t *r, int rc,
    ngx_http_nbx_engine_t *engine, const char *call);
static ngx_int_t ngx_http_nbx_send_json(ngx_http_request_t *r,
    ngx_uint_t status, const u_char *json, size_t len);
static ngx_int_t ngx_http_nbx_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *message);
static ngx_int_t ngx_http_nbx_not_allowed(ngx_http_request_t *r,
    const char *allow);
static u_char *ngx_http_nbx_json_escape(u_char *dst, const u_char *src,
    size_t len);

static ngx_int_t ngx_http_nbx_engine_ready(ngx_http_nbx_engine_t *engine,
    ngx_log_t *log);
static nbx_store *ngx_http_nbx_store_get(ngx_cycle_t *cycle,
    ngx_http_nbx_store_t *store, ngx_log_t *log);
static unsigned ngx_http_nbx_store_flags(ngx_http_nbx_main_conf_t *nmcf,
    ngx_http_nbx_store_t *store, ngx_file_info_t *fi);
static void ngx_http_nbx_engine_log(void *ud, int level, const char *message);
static void ngx_http_nbx_cleanup(void *data);

static void ngx_http_nbx_engine_options(ngx_http_nbx_engine_t *engine,
    nbx_engine_options *opts);
static char *ngx_http_nbx_read(ngx_conf_t *cf, u_char *name, ngx_str_t *text);
static char *ngx_http_nbx_deployment_open(ngx_conf_t *cf, u_char *name,
    nbx_deployment **out);
static void ngx_http_nbx_deployment_close(void *data);
static ngx_str_t *ngx_http_nbx_serving(ngx_http_nbx_engine_t *engine,
    const char **what);
static const char *ngx_http_nbx_unavailable(ngx_int_t rc);
static char *ngx_http_nbx_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_nbx_session(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_nbx_time_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_nbx_handler(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_http_nbx_engine_t *ngx_http_nbx_engine_conf(ngx_conf_t *cf,
    ngx_http_nbx_loc_conf_t *nlcf);
static ngx_int_t ngx_http_nbx_preconfiguration(ngx_conf_t *cf);
static void *ngx_http_nbx_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_nbx_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_nbx_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_nbx_init_process(ngx_cycle_t *cycle);

static char *ngx_http_nbx_check_stores(ngx_cycle_t *cycle, void *conf);
static ngx_int_t ngx_http_nbx_check_store(ngx_cycle_t *cycle,
    ngx_http_nbx_main_conf_t *nmcf, ngx_http_nbx_store_t *store);
static void ngx_http_nbx_check_child(ngx_cycle_t *cycle,
    const char *path, unsigned flags, int fd);
static ngx_int_t ngx_http_nbx_check_wait(ngx_pid_t pid, int fd, int *rc,
    u_char *msg, size_t size);


static ngx_conf_num_bounds_t  ngx_http_nbx_body_bounds = {
    ngx_conf_check_num_bounds, 1, NBX_LINE_MAX
};


static ngx_conf_enum_t  ngx_http_nbx_event_times[] = {
    { ngx_string("server"), NGX_HTTP_NBX_EVENT_TIME_SERVER },
    { ngx_string("client"), NGX_HTTP_NBX_EVENT_TIME_CLIENT },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_nbx_commands[] = {

    { ngx_string("nbx_store"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_nbx_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, store),
      NULL },

    { ngx_string("nbx_catalog"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_nbx_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, catalog),
      NULL },

    { ngx_string("nbx_policy"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_nbx_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, policy),
      NULL },

    { ngx_string("nbx_deployment"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_nbx_file,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, deployment),
      NULL },

    { ngx_string("nbx_customer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, customer),
      NULL },

    { ngx_string("nbx_session"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_nbx_session,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("nbx_explain"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, explain),
      NULL },

    { ngx_string("nbx_record"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, record),
      NULL },

    /* nbx_record's old name, kept for existing configurations */
    { ngx_string("nbx_record_impressions"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, record),
      NULL },

    { ngx_string("nbx_time_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_nbx_time_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, time_limit),
      NULL },

    { ngx_string("nbx_memory_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, memory_limit),
      NULL },

    { ngx_string("nbx_event_max_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, event_max_body),
      &ngx_http_nbx_body_bounds },

    { ngx_string("nbx_event_time"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, event_time),
      &ngx_http_nbx_event_times },

    { ngx_string("nbx_event_max_skew"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_nbx_loc_conf_t, event_max_skew),
      NULL },

    { ngx_string("nbx_decide"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_nbx_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_NBX_DECIDE,
      NULL },

    { ngx_string("nbx_event"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_nbx_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_NBX_EVENT,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_nbx_module_ctx = {
    ngx_http_nbx_preconfiguration,         /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_nbx_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_nbx_create_loc_conf,          /* create location configuration */
    ngx_http_nbx_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_nbx_module = {
    NGX_MODULE_V1,
    &ngx_http_nbx_module_ctx,              /* module context */
    ngx_http_nbx_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_nbx_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/*
 * The store check runs after the whole configuration is read, so it knows
 * the `user` directive wherever it stands: a core module's init_conf runs
 * then, and failing it refuses the configuration (`nginx -t`, start,
 * reload) without harming a running master. The module is in the same .so
 * (config: ngx_module_name).
 */
static ngx_core_module_t  ngx_http_nbx_check_module_ctx = {
    ngx_string("nbx_check"),
    NULL,                                  /* create conf */
    ngx_http_nbx_check_stores              /* init conf */
};


ngx_module_t  ngx_http_nbx_check_module = {
    NGX_MODULE_V1,
    &ngx_http_nbx_check_module_ctx,        /* module context */
    NULL,                                  /* module directives */
    NGX_CORE_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_nbx_json_type = ngx_string("application/json");
static ngx_str_t  ngx_http_nbx_placement_arg = ngx_string("placement");


/* ========================================================================
 * Decisions
 * ======================================================================== */

static ngx_int_t
ngx_http_nbx_decide_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    rc = ngx_http_nbx_decide(r);

    /* requests answered without a decision, for nbx_metrics */
    ngx_http_nbx_metrics_outcome(r, rc);

    return rc;
}


static ngx_int_t
ngx_http_nbx_decide(ngx_http_request_t *r)
{
    int                       rc;
    size_t                    len;
    u_char                   *customer;
    uint64_t                  start;
    ngx_int_t                 status, metrics;
    ngx_str_t                 value;
    const char               *json, *err;
    nbx_request               req;
    ngx_array_t               placements, fields;
    const nbx_result          *result;
    ngx_http_nbx_engine_t     *engine;
    ngx_http_nbx_loc_conf_t   *nlcf;
    ngx_http_nbx_main_conf_t  *nmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_nbx_not_allowed(r, "GET, HEAD");
    }

    status = ngx_http_discard_request_body(r);
    if (status != NGX_OK) {
        return status;
    }

    nlcf = ngx_http_get_module_loc_conf(r, ngx_http_nbx_module);

    if (ngx_http_complex_value(r, nlcf->customer, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (value.len == 0) {
        return ngx_http_nbx_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "no customer id");
    }

    if (value.len > NBX_ID_MAX
        || ngx_strlchr(value.data, value.data + value.len, '\0') != NULL)
    {
        return ngx_http_nbx_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid customer id");
    }

    customer = ngx_pnalloc(r->pool, value.len + 1);
    if (customer == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(customer, value.data, value.len);
    customer[value.len] = '\0';

    err = NULL;

    status = ngx_http_nbx_placements(r, &placements, &err);

    if (status == NGX_OK) {
        status = ngx_http_nbx_session_fields(r, nlcf, &fields, &err);
    }

    if (status != NGX_OK) {
        return err ? ngx_http_nbx_send_error(r, status, err) : status;
    }

    engine = nlcf->engine;

    rc = ngx_http_nbx_engine_ready(engine, r->connection->log);
    if (rc != NGX_OK) {
        return ngx_http_nbx_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       ngx_http_nbx_unavailable(rc));
    }

    nbx_request_init(&req);
    req.customer = (const char *) customer;
    req.placements = placements.elts;
    req.n_placements = placements.nelts;
    req.session = fields.elts;
    req.n_session = fields.nelts;

    /*
     * A fallback tells the client only its kind: the policy's file, line
     * and message are for the error log (the library logs them), or for a
     * debugging location with nbx_explain on.
     */
    if (nlcf->explain) {
        req.flags |= NBX_DECIDE_EXPLAIN;

    } else {
        req.flags |= NBX_DECIDE_ERROR_KIND_ONLY;
    }

    /* a HEAD (monitors, link checkers) shows nothing: it records nothing */
    if (nlcf->record && r->method == NGX_HTTP_GET) {
        req.flags |= NBX_DECIDE_RECORD;
    }

    /* the audit line is written only for a configuration that logs it */
    nmcf = ngx_http_get_module_main_conf(r, ngx_http_nbx_module);

    if (nmcf->decision_var->flags & NGX_HTTP_VAR_INDEXED) {
        req.flags |= NBX_DECIDE_AUDIT;
    }

    metrics = ngx_http_nbx_metrics_enabled(r);
    start = metrics ? ngx_http_nbx_metrics_clock() : 0;

    engine->log = r->connection->log;
    rc = nbx_decide(engine->ctx, &req, &result);
    engine->log = NULL;

    if (rc != NBX_OK) {
        return ngx_http_nbx_library_error(r, rc, engine, "nbx_decide()");
    }

    if (metrics) {
        ngx_http_nbx_metrics_decision(r, result,
                                      ngx_http_nbx_metrics_clock() - start);
    }

    json = nbx_result_json(result, &len);
    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* for the variables: headers (add_header) and the access log */
    if (ngx_http_nbx_keep_decision(r, result) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the result belongs to the context: send a copy */
    return ngx_http_nbx_send_json(r, NGX_HTTP_OK, (const u_char *) json, len);
}


/*
 * Every `placement` argument, unescaped and NUL-terminated, in order.
 * nginx's $arg_ variables keep only the first of repeated arguments.
 */
static ngx_int_t
ngx_http_nbx_placements(ngx_http_request_t *r, ngx_array_t *placements,
    const char **err)
{
    size_t       name_len;
    u_char      *p, *end, *arg_end, *value, *dst, *src;
    const char **slot;

    if (ngx_array_init(placements, r->pool, 4, sizeof(const char *))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    name_len = ngx_http_nbx_placement_arg.len;
    p = r->args.data;
    end = r->args.data + r->args.len;

    while (p < end) {
        arg_end = ngx_strlchr(p, end, '&');
        if (arg_end == NULL) {
            arg_end = end;
        }

        if ((size_t) (arg_end - p) > name_len
            && p[name_len] == '='
            && ngx_strncasecmp(p, ngx_http_nbx_placement_arg.data, name_len)
               == 0)
        {
            if (placements->nelts == NBX_REQUEST_PLACEMENTS_MAX) {
                *err = "too many placements";
                return NGX_HTTP_BAD_REQUEST;
            }

            src = p + name_len + 1;
            value = ngx_pnalloc(r->pool, arg_end - src + 1);
            if (value == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            dst = value;
            ngx_unescape_uri(&dst, &src, arg_end - src, 0);

            if (dst == value || ngx_strlchr(value, dst, '\0') != NULL) {
                *err = "invalid placement id";
                return NGX_HTTP_BAD_REQUEST;
            }

            *dst = '\0';

            slot = ngx_array_push(placements);
            if (slot == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            *slot = (const char *) value;
        }

        p = arg_end + 1;
    }

    return NGX_OK;
}


/* Session fields from nbx_session; a field whose value is empty is left out. */
static ngx_int_t
ngx_http_nbx_session_fields(ngx_http_request_t *r,
    ngx_http_nbx_loc_conf_t *nlcf, ngx_array_t *fields, const char **err)
{
    u_char                  *p;
    nbx_kv                  *kv;
    ngx_str_t                value;
    ngx_uint_t               i, n;
    ngx_http_nbx_session_t  *session;

    n = nlcf->session ? nlcf->session->nelts : 0;

    if (ngx_array_init(fields, r->pool, n ? n : 1, sizeof(nbx_kv)) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    session = n ? nlcf->session->elts : NULL;

    for (i = 0; i < n; i++) {
        if (ngx_http_complex_value(r, &session[i].value, &value) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (value.len == 0) {
            continue;
        }

        if (value.len > NBX_VALUE_MAX
            || ngx_strlchr(value.data, value.data + value.len, '\0') != NULL)
        {
            *err = "invalid session field";
            return NGX_HTTP_BAD_REQUEST;
        }

        p = ngx_pnalloc(r->pool, value.len + 1);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(p, value.data, value.len);
        p[value.len] = '\0';

        kv = ngx_array_push(fields);
        if (kv == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        kv->key = (const char *) session[i].key.data;
        kv->value = (const char *) p;
    }

    return NGX_OK;
}


/* ========================================================================
 * Events
 * ======================================================================== */

static ngx_int_t
ngx_http_nbx_event_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_nbx_loc_conf_t  *nlcf;

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_nbx_not_allowed(r, "POST");
    }

    nlcf = ngx_http_get_module_loc_conf(r, ngx_http_nbx_module);

    if (r->headers_in.content_length_n > (off_t) nlcf->event_max_body) {
        r->keepalive = 0;
        (void) ngx_http_discard_request_body(r);
        return ngx_http_nbx_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                       "event body too large");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_nbx_event_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_nbx_event_body(ngx_http_request_t *r)
{
    int                       rc, outcome;
    unsigned                  flags;
    ngx_int_t                 status;
    ngx_str_t                 body;
    const char               *err;
    ngx_table_elt_t          *h;
    ngx_http_nbx_engine_t    *engine;
    ngx_http_nbx_loc_conf_t  *nlcf;

    nlcf = ngx_http_get_module_loc_conf(r, ngx_http_nbx_module);

    err = NULL;

    status = ngx_http_nbx_read_body(r, nlcf->event_max_body, &body, &err);
    if (status != NGX_OK) {
        ngx_http_finalize_request(r,
            err ? ngx_http_nbx_send_error(r, status, err) : status);
        return;
    }

    engine = nlcf->engine;

    rc = ngx_http_nbx_engine_ready(engine, r->connection->log);
    if (rc != NGX_OK) {
        ngx_http_finalize_request(r,
            ngx_http_nbx_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                    ngx_http_nbx_unavailable(rc)));
        return;
    }

    /* a browser's clock is not trusted unless nbx_event_time says so */
    flags = (nlcf->event_time == NGX_HTTP_NBX_EVENT_TIME_SERVER)
            ? NBX_RECORD_SERVER_TIME : 0;
    outcome = 0;

    engine->log = r->connection->log;
    rc = nbx_record_ex(engine->ctx, (const char *) body.data, body.len, flags,
                       &outcome);
    engine->log = NULL;

    if (rc != NBX_OK) {
        ngx_http_finalize_request(r,
            ngx_http_nbx_library_error(r, rc, engine, "nbx_record_ex()"));
        return;
    }

    /*
     * a replayed event id, or an event of an erased customer, is accepted
     * and not applied: say which it was
     */
    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Nbx-Applied");
    if (outcome == NBX_RECORD_APPLIED) {
        ngx_str_set(&h->value, "1");
    } else {
        ngx_str_set(&h->value, "0");
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    ngx_http_finalize_request(r, ngx_http_send_header(r));
}


/*
 * The request body as one NUL-terminated string. Small bodies are in memory;
 * nginx spools larger ones to a temporary file, read back here up to max.
 */
static ngx_int_t
ngx_http_nbx_read_body(ngx_http_request_t *r, size_t max, ngx_str_t *body,
    const char **err)
{
    off_t         size;
    size_t        len;
    u_char       *p;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        *err = "empty request body: expected one JSON event";
        return NGX_HTTP_BAD_REQUEST;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        size = ngx_buf_size(cl->buf);

        if (size < 0 || (size_t) size > max - len) {
            *err = "event body too large";
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        len += (size_t) size;
    }

    if (len == 0) {
        *err = "empty request body: expected one JSON event";
        return NGX_HTTP_BAD_REQUEST;
    }

    body->data = ngx_pnalloc(r->pool, len + 1);
    if (body->data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = body->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        if (b->in_file && b->file_last > b->file_pos) {
            size = b->file_last - b->file_pos;

            n = ngx_read_file(b->file, p, (size_t) size, b->file_pos);
            if (n != size) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "nbx: short read of the request body file");
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            p += n;
        }
    }

    *p = '\0';
    body->len = p - body->data;

    return NGX_OK;
}


/* ========================================================================
 * Responses
 * ======================================================================== */

static ngx_int_t
ngx_http_nbx_status(int rc)
{
    switch (rc) {

    case NBX_EINVAL:
    case NBX_EPARSE:
    case NBX_ELIMIT:
        return NGX_HTTP_BAD_REQUEST;

    case NBX_EREADONLY:
        return NGX_HTTP_FORBIDDEN;

    case NBX_EFULL:
        return NGX_HTTP_INSUFFICIENT_STORAGE;

    case NBX_EIO:
    case NBX_ENOTFOUND:
    case NBX_ECORRUPT:
    case NBX_EVERSION:
    case NBX_ESTORE:
        return NGX_HTTP_SERVICE_UNAVAILABLE;

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


/*
 * A failed library call: the client learns what was wrong with its request
 * (4xx, the context's message names the field); server-side failures are
 * logged with their detail and answered without it.
 */
static ngx_int_t
ngx_http_nbx_library_error(ngx_http_request_t *r, int rc,
    ngx_http_nbx_engine_t *engine, const char *call)
{
    ngx_int_t    status;
    const char  *message;

    status = ngx_http_nbx_status(rc);
    message = nbx_ctx_errmsg(engine->ctx);

    if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "nbx: %s failed: %s: %s", call, nbx_strerror(rc),
                      message);

        message = (status == NGX_HTTP_SERVICE_UNAVAILABLE)
                  ? "nbx store unavailable" : nbx_strerror(rc);
    }

    return ngx_http_nbx_send_error(r, status, message);
}


static ngx_int_t
ngx_http_nbx_send_json(ngx_http_request_t *r, ngx_uint_t status,
    const u_char *json, size_t len)
{
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a decision is for one customer and one moment */
    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    r->headers_out.status = status;
    r->headers_out.content_type = ngx_http_nbx_json_type;
    r->headers_out.content_type_len = ngx_http_nbx_json_type.len;
    r->headers_out.content_length_n = len;

    if (r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, json, len);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_nbx_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *message)
{
    size_t   len;
    u_char  *json, *p;

    len = ngx_strlen(message);

    /* escaping at most sextuples a byte */
    json = ngx_pnalloc(r->pool, sizeof("{\"error\":\"\",\"status\":}\n") - 1
                                + len * 6 + NGX_INT_T_LEN);
    if (json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(json, "{\"error\":\"", sizeof("{\"error\":\"") - 1);
    p = ngx_http_nbx_json_escape(p, (const u_char *) message, len);
    p = ngx_sprintf(p, "\",\"status\":%ui}\n", status);

    return ngx_http_nbx_send_json(r, status, json, p - json);
}


static ngx_int_t
ngx_http_nbx_not_allowed(ngx_http_request_t *r, const char *allow)
{
    ngx_int_t         rc;
    ngx_table_elt_t  *h;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value.data = (u_char *) allow;
    h->value.len = ngx_strlen(allow);

    return ngx_http_nbx_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                   "method not allowed");
}


/*
 * JSON string escaping. Messages may quote client input, so bytes that are
 * not valid UTF-8 become '?' rather than invalid JSON.
 */
static u_char *
ngx_http_nbx_json_escape(u_char *dst, const u_char *src, size_t len)
{
    u_char          *p, *start;
    uint32_t         u;
    const u_char    *end;
    static u_char    hex[] = "0123456789abcdef";

    end = src + len;
    p = (u_char *) src;

    while (p < end) {

        if (*p >= 0x80) {
            start = p;
            u = ngx_utf8_decode(&p, end - p);

            if (u > 0x10ffff) {
                *dst++ = '?';
                p = start + 1;

            } else {
                dst = ngx_cpymem(dst, start, p - start);
            }

            continue;
        }

        switch (*p) {

        case '"':
        case '\\':
            *dst++ = '\\';
            *dst++ = *p;
            break;

        case '\n':
            *dst++ = '\\';
            *dst++ = 'n';
            break;

        case '\t':
            *dst++ = '\\';
            *dst++ = 't';
            break;

        default:
            if (*p < 0x20 || *p == 0x7f) {
                dst = ngx_cpymem(dst, "\\u00", 4);
                *dst++ = hex[*p >> 4];
                *dst++ = hex[*p & 0xf];

            } else {
                *dst++ = *p;
            }
        }

        p++;
    }

    return dst;
}


/* ========================================================================
 * Engines, per worker
 * ======================================================================== */

/* The 503 body for what ngx_http_nbx_engine_ready() returned. */
static const char *
ngx_http_nbx_unavailable(ngx_int_t rc)
{
    return rc == NGX_DECLINED ? "nbx store unavailable"
                              : "nbx engine unavailable (see the error log)";
}


/*
 * The engine's options: the catalog and the policy as the master read them
 * while parsing the configuration, so every worker of one configuration
 * serves the same versions, also a worker started after a reload that was
 * refused, or after a crash, whatever the files hold by then.
 */
static void
ngx_http_nbx_engine_options(ngx_http_nbx_engine_t *engine,
    nbx_engine_options *opts)
{
    nbx_engine_options_init(opts);

    opts->catalog = (const char *) engine->catalog.data;
    opts->catalog_text = (const char *) engine->catalog_text.data;
    opts->catalog_len = engine->catalog_text.len;

    if (engine->deployment_handle) {
        opts->deployment_handle = engine->deployment_handle;

    } else {
        opts->policy = (const char *) engine->policy.data;
        opts->policy_text = (const char *) engine->policy_text.data;
        opts->policy_len = engine->policy_text.len;
    }
    opts->time_limit_us = (uint32_t) engine->time_limit;
    opts->memory_limit = engine->memory_limit;
    opts->event_max_skew_ms = (int64_t) engine->event_max_skew;
}


/*
 * Open the engine and its context on first use and after a failure, at
 * most once per NGX_HTTP_NBX_RETRY_SEC: a store that appears later starts
 * serving without a reload, and a missing one costs no more than a stat()
 * per second. NGX_DECLINED: the store did not open; NGX_ERROR: the engine
 * or its context did not; either stands until the next attempt.
 */
static ngx_int_t
ngx_http_nbx_engine_ready(ngx_http_nbx_engine_t *engine, ngx_log_t *log)
{
    int                 rc;
    ngx_str_t          *serving;
    nbx_store          *store;
    const char         *what;
    nbx_engine_options  opts;

    if (engine->ctx != NULL) {
        return NGX_OK;
    }

    serving = ngx_http_nbx_serving(engine, &what);

    /* until the next attempt, requests are told what the last one met */
    if (ngx_time() < engine->retry_at) {
        return engine->failure;
    }

    engine->retry_at = ngx_time() + NGX_HTTP_NBX_RETRY_SEC;
    engine->failure = NGX_ERROR;

    store = ngx_http_nbx_store_get((ngx_cycle_t *) ngx_cycle, engine->store,
                                   log);
    if (store == NULL) {
        engine->failure = NGX_DECLINED;
        return NGX_DECLINED;
    }

    if (engine->engine == NULL) {
        ngx_http_nbx_engine_options(engine, &opts);
        opts.store_handle = store;
        opts.log = ngx_http_nbx_engine_log;
        opts.log_ud = engine;

        engine->log = log;
        rc = nbx_engine_open(&opts, &engine->engine);
        engine->log = NULL;

        if (rc != NBX_OK) {
            engine->engine = NULL;
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "nbx: cannot open the engine on \"%V\" "
                          "(catalog \"%V\", %s \"%V\"): %s: %s",
                          &engine->store->path, &engine->catalog, what,
                          serving, nbx_strerror(rc), nbx_last_errmsg());
            return NGX_ERROR;
        }
    }

    rc = nbx_ctx_open(engine->engine, &engine->ctx);
    if (rc != NBX_OK) {
        engine->ctx = NULL;
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "nbx: cannot open a decision context on \"%V\": %s: %s",
                      &engine->store->path, nbx_strerror(rc),
                      nbx_last_errmsg());
        return NGX_ERROR;
    }

    ngx_log_error(NGX_LOG_INFO, log, 0,
                  "nbx: serving \"%V\" with catalog \"%V\", %s \"%V\"",
                  &engine->store->path, &engine->catalog, what, serving);

    return NGX_OK;
}


static nbx_store *
ngx_http_nbx_store_get(ngx_cycle_t *cycle, ngx_http_nbx_store_t *store,
    ngx_log_t *log)
{
    int                        rc;
    ngx_uint_t                 i;
    ngx_file_info_t            fi;
    ngx_http_nbx_store_t     **stores;
    ngx_http_nbx_main_conf_t  *nmcf;

    if (store->store != NULL) {
        return store->store;
    }

    if (ngx_file_info(store->path.data, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "nbx: store \"%V\" unavailable", &store->path);
        return NULL;
    }

    nmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_nbx_module);
    stores = nmcf->stores.elts;

    for (i = 0; i < nmcf->stores.nelts; i++) {
        if (stores[i] != store
            && stores[i]->owner == stores[i]
            && stores[i]->store != NULL
            && stores[i]->dev == fi.st_dev
            && stores[i]->ino == fi.st_ino)
        {
            store->owner = stores[i];
            store->store = stores[i]->store;
            return store->store;
        }
    }

    rc = nbx_store_open((const char *) store->path.data,
                        ngx_http_nbx_store_flags(nmcf, store, &fi),
                        &store->store);
    if (rc != NBX_OK) {
        store->store = NULL;
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "nbx: cannot open store \"%V\": %s: %s",
                      &store->path, nbx_strerror(rc), nbx_last_errmsg());
        return NULL;
    }

    store->owner = store;
    store->dev = fi.st_dev;
    store->ino = fi.st_ino;

    return store->store;
}


/*
 * How workers open a store: read-write if a location on the same directory
 * records events or impressions into it, read-only otherwise (a reader needs
 * less: read access to data.mdb). A directory spelled two ways is one LMDB
 * environment per process, so what any spelling needs counts for all.
 */
static unsigned
ngx_http_nbx_store_flags(ngx_http_nbx_main_conf_t *nmcf,
    ngx_http_nbx_store_t *store, ngx_file_info_t *fi)
{
    ngx_uint_t              i;
    ngx_file_info_t         other;
    ngx_http_nbx_store_t  **stores;

    if (store->write) {
        return 0;
    }

    stores = nmcf->stores.elts;

    for (i = 0; i < nmcf->stores.nelts; i++) {
        if (stores[i] != store
            && stores[i]->write
            && ngx_file_info(stores[i]->path.data, &other) != NGX_FILE_ERROR
            && other.st_dev == fi->st_dev
            && other.st_ino == fi->st_ino)
        {
            return 0;
        }
    }

    return NBX_STORE_READONLY;
}


/*
 * The engine reports policy failures and reloads here. A policy failing on
 * every request would flood the log, so each engine logs a burst per window
 * and then counts what it drops.
 */
static void
ngx_http_nbx_engine_log(void *ud, int level, const char *message)
{
    time_t                  now;
    ngx_log_t              *log;
    ngx_uint_t              ngx_level;
    ngx_http_nbx_engine_t  *engine;

    engine = ud;
    log = engine->log ? engine->log : ngx_cycle->log;
    now = ngx_time();

    if (now - engine->log_window >= NGX_HTTP_NBX_LOG_WINDOW) {
        if (engine->log_suppressed) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "nbx: %ui similar messages suppressed in the last "
                          "%d seconds", engine->log_suppressed,
                          NGX_HTTP_NBX_LOG_WINDOW);
        }

        engine->log_window = now;
        engine->log_count = 0;
        engine->log_suppressed = 0;
    }

    if (engine->log_count >= NGX_HTTP_NBX_LOG_BURST) {
        engine->log_suppressed++;
        return;
    }

    engine->log_count++;

    switch (level) {
    case NBX_LOG_ERROR:
        ngx_level = NGX_LOG_ERR;
        break;
    case NBX_LOG_WARN:
        ngx_level = NGX_LOG_WARN;
        break;
    default:
        ngx_level = NGX_LOG_INFO;
    }

    ngx_log_error(ngx_level, log, 0, "nbx: %s", message);
}


static ngx_int_t
ngx_http_nbx_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                 i;
    ngx_pool_cleanup_t        *cln;
    ngx_http_nbx_engine_t    **engines;
    ngx_http_nbx_main_conf_t  *nmcf;

    nmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_nbx_module);
    if (nmcf == NULL || nmcf->engines.nelts == 0) {
        return NGX_OK;
    }

    /* the cache manager and loader never decide */
    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_nbx_cleanup;
    cln->data = nmcf;

    /* a failure here is retried on the first request, not fatal */
    engines = nmcf->engines.elts;

    for (i = 0; i < nmcf->engines.nelts; i++) {
        (void) ngx_http_nbx_engine_ready(engines[i], cycle->log);
    }

    return NGX_OK;
}


/* Contexts before engines before stores: each borrows from the next. */
static void
ngx_http_nbx_cleanup(void *data)
{
    ngx_http_nbx_main_conf_t  *nmcf = data;

    ngx_uint_t               i;
    ngx_http_nbx_store_t   **stores;
    ngx_http_nbx_engine_t  **engines;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "nbx: closing contexts, engines and stores");

    engines = nmcf->engines.elts;

    for (i = 0; i < nmcf->engines.nelts; i++) {
        nbx_ctx_close(engines[i]->ctx);
        engines[i]->ctx = NULL;
        nbx_engine_close(engines[i]->engine);
        engines[i]->engine = NULL;
    }

    stores = nmcf->stores.elts;

    for (i = 0; i < nmcf->stores.nelts; i++) {
        if (stores[i]->owner == stores[i]) {
            nbx_store_close(stores[i]->store);
        }

        stores[i]->store = NULL;
        stores[i]->owner = NULL;
    }
}


/*
 * The store directories this worker has open, each once, with the
 * deployments its locations serve from each: what nbx_metrics reads the
 * kill switches of at a scrape (ngx_http_nbx_metrics.c). A store that did
 * not open (yet) is left out.
 */
ngx_array_t *
ngx_http_nbx_open_stores(ngx_http_request_t *r)
{
    ngx_uint_t                   i, j;
    ngx_array_t                 *out;
    const nbx_deployment       **pd;
    ngx_http_nbx_store_t       **stores;
    ngx_http_nbx_engine_t      **engines;
    ngx_http_nbx_open_store_t   *s;
    ngx_http_nbx_main_conf_t    *nmcf;

    nmcf = ngx_http_get_module_main_conf(r, ngx_http_nbx_module);

    out = ngx_array_create(r->pool, 1, sizeof(ngx_http_nbx_open_store_t));
    if (out == NULL) {
        return NULL;
    }

    stores = nmcf->stores.elts;
    engines = nmcf->engines.elts;

    for (i = 0; i < nmcf->stores.nelts; i++) {

        /* a directory spelled two ways is one environment: its owner */
        if (stores[i]->store == NULL || stores[i]->owner != stores[i]) {
            continue;
        }

        s = ngx_array_push(out);
        if (s == NULL) {
            return NULL;
        }

        s->path = &stores[i]->path;
        s->store = stores[i]->store;

        if (ngx_array_init(&s->deployments, r->pool, 1,
                           sizeof(nbx_deployment *))
            != NGX_OK)
        {
            return NULL;
        }

        for (j = 0; j < nmcf->engines.nelts; j++) {
            if (engines[j]->deployment_handle == NULL
                || engines[j]->store->owner != stores[i])
            {
                continue;
            }

            pd = ngx_array_push(&s->deployments);
            if (pd == NULL) {
                return NULL;
            }

            *pd = engines[j]->deployment_handle;
        }
    }

    return out;
}


/* ========================================================================
 * Configuration
 * ======================================================================== */

/*
 * The whole file into the configuration's pool: the workers open their
 * engines from these bytes (the files are checked again, together and with
 * the limits, once the location is merged).
 */
static char *
ngx_http_nbx_read(ngx_conf_t *cf, u_char *name, ngx_str_t *text)
{
    off_t            size;
    size_t           got;
    ssize_t          n;
    ngx_fd_t         fd;
    ngx_file_info_t  fi;

    fd = ngx_open_file(name, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%s\" failed", name);
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    size = ngx_file_size(&fi);

    if (size > NGX_HTTP_NBX_FILE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" is larger than %d bytes", name,
                           NGX_HTTP_NBX_FILE_MAX);
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    text->data = ngx_pnalloc(cf->pool, (size_t) size + 1);
    if (text->data == NULL) {
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    for (got = 0; got < (size_t) size; got += n) {
        n = ngx_read_fd(fd, text->data + got, (size_t) size - got);

        if (n == NGX_ERROR || n == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, n ? ngx_errno : 0,
                               "reading \"%s\" failed%s", name,
                               n ? "" : ": the file shrank");
            (void) ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }
    }

    (void) ngx_close_file(fd);

    text->data[got] = '\0';
    text->len = got;

    return NGX_CONF_OK;
}


/*
 * nbx_store, nbx_catalog, nbx_policy, nbx_deployment: a path relative to the
 * configuration prefix. Catalogs, policies and deployments (with their
 * policies) are checked now, so that `nginx -t` and a reload reject a
 * broken file; stores once the whole configuration is read
 * (ngx_http_nbx_check_stores()), and opened for serving only by workers.
 */
static char *
ngx_http_nbx_file(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_nbx_loc_conf_t *nlcf = conf;

    int          rc;
    u_char      *name;
    ngx_str_t   *field, *value, *text;
    const char  *what;

    field = (ngx_str_t *) ((char *) conf + cmd->offset);

    if (field->data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "takes a non-empty path";
    }

    *field = value[1];

    if (ngx_conf_full_name(cf->cycle, field, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* own NUL-terminated copy: the library takes C strings */
    name = ngx_pnalloc(cf->pool, field->len + 1);
    if (name == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(name, field->data, field->len);
    name[field->len] = '\0';
    field->data = name;

    /*
     * `nginx -s reload|stop|quit` parses the configuration only to find the
     * master's pid: checking there would make a broken policy stop `-s stop`
     * and keep `-s reload` from reaching the master, whose own check logs
     * the error and keeps the old workers.
     */
    if (ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_CONF_OK;
    }

    /* stores are checked once the whole configuration is read */
    if (cmd->offset == offsetof(ngx_http_nbx_loc_conf_t, store)) {
        return NGX_CONF_OK;
    }

    if (cmd->offset == offsetof(ngx_http_nbx_loc_conf_t, deployment)) {
        return ngx_http_nbx_deployment_open(cf, name, &nlcf->deployment_handle);
    }

    if (cmd->offset == offsetof(ngx_http_nbx_loc_conf_t, policy)) {
        what = "policy";
        rc = nbx_policy_check((const char *) name, NULL);
        text = &nlcf->policy_text;

    } else {
        what = "catalog";
        rc = nbx_catalog_check((const char *) name, NULL);
        text = &nlcf->catalog_text;
    }

    if (rc != NBX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid nbx %s \"%s\": %s: %s", what, name,
                           nbx_strerror(rc), nbx_last_errmsg());
        return NGX_CONF_ERROR;
    }

    return ngx_http_nbx_read(cf, name, text);
}


/*
 * A deployment file and the policies it names, read once by the master into
 * memory (no file, lock or Lua state is held) that the workers inherit: every
 * worker of one configuration serves the same arms, whatever the files hold
 * by the time it starts. Released with the configuration's pool.
 */
static char *
ngx_http_nbx_deployment_open(ngx_conf_t *cf, u_char *name,
    nbx_deployment **out)
{
    int                  rc;
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    rc = nbx_deployment_open((const char *) name, 0, out);
    if (rc != NBX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid nbx deployment \"%s\": %s: %s", name,
                           nbx_strerror(rc), nbx_last_errmsg());
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_nbx_deployment_close;
    cln->data = *out;

    return NGX_CONF_OK;
}


static void
ngx_http_nbx_deployment_close(void *data)
{
    nbx_deployment_close(data);
}


/* what an engine serves, for messages: its policy or its deployment */
static ngx_str_t *
ngx_http_nbx_serving(ngx_http_nbx_engine_t *engine, const char **what)
{
    if (engine->deployment.data) {
        *what = "deployment";
        return &engine->deployment;
    }

    *what = "policy";
    return &engine->policy;
}


/* nbx_session KEY VALUE; VALUE may hold variables. */
static char *
ngx_http_nbx_session(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_nbx_loc_conf_t *nlcf = conf;

    u_char                            *key;
    ngx_str_t                         *value;
    ngx_uint_t                         i;
    ngx_http_nbx_session_t            *session;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len > NBX_KEY_MAX
        || ngx_strlchr(value[1].data, value[1].data + value[1].len, '\0'))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid nbx_session key \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (nlcf->session == NGX_CONF_UNSET_PTR) {
        nlcf->session = ngx_array_create(cf->pool, 4,
                                         sizeof(ngx_http_nbx_session_t));
        if (nlcf->session == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    session = nlcf->session->elts;

    for (i = 0; i < nlcf->session->nelts; i++) {
        if (session[i].key.len == value[1].len
            && ngx_strncmp(session[i].key.data, value[1].data,
                           value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate nbx_session key \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (nlcf->session->nelts == NBX_REQUEST_SESSION_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many nbx_session fields (at most %d)",
                           NBX_REQUEST_SESSION_MAX);
        return NGX_CONF_ERROR;
    }

    session = ngx_array_push(nlcf->session);
    if (session == NULL) {
        return NGX_CONF_ERROR;
    }

    key = ngx_pnalloc(cf->pool, value[1].len + 1);
    if (key == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(key, value[1].data, value[1].len);
    key[value[1].len] = '\0';
    session->key.data = key;
    session->key.len = value[1].len;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &session->value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* nbx_time_limit 500us | 2ms | 1s: the policy's CPU time per decision. */
static char *
ngx_http_nbx_time_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_int_t    n;
    ngx_str_t   *value, v;
    ngx_uint_t  *field;

    field = (ngx_uint_t *) (p + cmd->offset);

    if (*field != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    v = value[1];

    if (v.len > 2 && ngx_strncmp(v.data + v.len - 2, "us", 2) == 0) {
        n = ngx_atoi(v.data, v.len - 2);

    } else {
        n = ngx_parse_time(&v, 0);
        if (n != NGX_ERROR) {
            n = (n > NGX_HTTP_NBX_TIME_LIMIT_MAX / 1000)
                ? NGX_HTTP_NBX_TIME_LIMIT_MAX + 1 : n * 1000;
        }
    }

    if (n == NGX_ERROR || n <= 0 || n > NGX_HTTP_NBX_TIME_LIMIT_MAX) {
        return "takes a time from 1us to 10s, such as 500us or 2ms";
    }

    *field = (ngx_uint_t) n;

    return NGX_CONF_OK;
}


static char *
ngx_http_nbx_handler(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_nbx_loc_conf_t *nlcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (nlcf->handler) {
        return "is duplicate: a location has one nbx handler";
    }

    nlcf->handler = cmd->offset;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (nlcf->handler == NGX_HTTP_NBX_DECIDE) {
        clcf->handler = ngx_http_nbx_decide_handler;

    } else {
        clcf->handler = ngx_http_nbx_event_handler;
    }

    return NGX_CONF_OK;
}


/*
 * The engine slot a handler location uses: shared by every location with
 * the same store, catalog, policy and limits, so a worker opens each
 * configuration once.
 */
static ngx_http_nbx_engine_t *
ngx_http_nbx_engine_conf(ngx_conf_t *cf, ngx_http_nbx_loc_conf_t *nlcf)
{
    ngx_uint_t                  i;
    ngx_http_nbx_store_t       *store, **stores, **ps;
    ngx_http_nbx_engine_t      *engine, **engines, **pe;
    ngx_http_nbx_main_conf_t   *nmcf;

    nmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_nbx_module);

    store = NULL;
    stores = nmcf->stores.elts;

    for (i = 0; i < nmcf->stores.nelts; i++) {
        if (stores[i]->path.len == nlcf->store.len
            && ngx_strncmp(stores[i]->path.data, nlcf->store.data,
                           nlcf->store.len) == 0)
        {
            store = stores[i];
            break;
        }
    }

    if (store == NULL) {
        store = ngx_pcalloc(cf->pool, sizeof(ngx_http_nbx_store_t));
        if (store == NULL) {
            return NULL;
        }

        store->path = nlcf->store;

        ps = ngx_array_push(&nmcf->stores);
        if (ps == NULL) {
            return NULL;
        }

        *ps = store;
    }

    engines = nmcf->engines.elts;

    for (i = 0; i < nmcf->engines.nelts; i++) {
        engine = engines[i];

        if (engine->store == store
            && engine->time_limit == nlcf->time_limit
            && engine->memory_limit == nlcf->memory_limit
            && engine->event_max_skew == nlcf->event_max_skew
            && engine->catalog.len == nlcf->catalog.len
            && engine->policy.len == nlcf->policy.len
            && engine->deployment.len == nlcf->deployment.len
            && ngx_strncmp(engine->catalog.data, nlcf->catalog.data,
                           nlcf->catalog.len) == 0
            && ngx_strncmp(engine->policy.data, nlcf->policy.data,
                           nlcf->policy.len) == 0
            && ngx_strncmp(engine->deployment.data, nlcf->deployment.data,
                           nlcf->deployment.len) == 0)
        {
            return engine;
        }
    }

    engine = ngx_pcalloc(cf->pool, sizeof(ngx_http_nbx_engine_t));
    if (engine == NULL) {
        return NULL;
    }

    engine->store = store;
    engine->catalog = nlcf->catalog;
    engine->policy = nlcf->policy;
    engine->catalog_text = nlcf->catalog_text;
    engine->policy_text = nlcf->policy_text;
    engine->deployment = nlcf->deployment;
    engine->deployment_handle = nlcf->deployment_handle;
    engine->time_limit = nlcf->time_limit;
    engine->memory_limit = nlcf->memory_limit;
    engine->event_max_skew = nlcf->event_max_skew;

    pe = ngx_array_push(&nmcf->engines);
    if (pe == NULL) {
        return NULL;
    }

    *pe = engine;

    return engine;
}


static ngx_int_t
ngx_http_nbx_preconfiguration(ngx_conf_t *cf)
{
    ngx_http_nbx_main_conf_t  *nmcf;

    nmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_nbx_module);

    nmcf->decision_var = ngx_http_nbx_add_variables(cf);
    if (nmcf->decision_var == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void *
ngx_http_nbx_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_nbx_main_conf_t  *nmcf;

    nmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_nbx_main_conf_t));
    if (nmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&nmcf->stores, cf->pool, 2,
                       sizeof(ngx_http_nbx_store_t *))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&nmcf->engines, cf->pool, 2,
                       sizeof(ngx_http_nbx_engine_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return nmcf;
}


static void *
ngx_http_nbx_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_nbx_loc_conf_t  *nlcf;

    nlcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_nbx_loc_conf_t));
    if (nlcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     nlcf->store = { 0, NULL };
     *     nlcf->catalog = { 0, NULL };
     *     nlcf->policy = { 0, NULL };
     *     nlcf->deployment = { 0, NULL };
     *     nlcf->deployment_handle = NULL;
     *     nlcf->handler = 0;
     *     nlcf->engine = NULL;
     */

    nlcf->customer = NGX_CONF_UNSET_PTR;
    nlcf->session = NGX_CONF_UNSET_PTR;
    nlcf->explain = NGX_CONF_UNSET;
    nlcf->record = NGX_CONF_UNSET;
    nlcf->time_limit = NGX_CONF_UNSET_UINT;
    nlcf->memory_limit = NGX_CONF_UNSET_SIZE;
    nlcf->event_max_body = NGX_CONF_UNSET_SIZE;
    nlcf->event_time = NGX_CONF_UNSET_UINT;
    nlcf->event_max_skew = NGX_CONF_UNSET_MSEC;

    return nlcf;
}


static char *
ngx_http_nbx_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_nbx_loc_conf_t   *prev = parent;
    ngx_http_nbx_loc_conf_t   *conf = child;

    int                        rc;
    ngx_str_t                 *serving;
    const char                *what;
    nbx_engine_options         opts;
    ngx_http_core_loc_conf_t  *clcf;

    if (conf->store.data == NULL) {
        conf->store = prev->store;
    }

    if (conf->catalog.data == NULL) {
        conf->catalog = prev->catalog;
        conf->catalog_text = prev->catalog_text;
    }

    /* a level that names a policy or a deployment replaces what serves */
    if (conf->policy.data == NULL && conf->deployment.data == NULL) {
        conf->policy = prev->policy;
        conf->policy_text = prev->policy_text;
        conf->deployment = prev->deployment;
        conf->deployment_handle = prev->deployment_handle;
    }

    if (conf->policy.data && conf->deployment.data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "nbx_policy and nbx_deployment both given: a "
                           "deployment names its policies");
        return NGX_CONF_ERROR;
    }

    ngx_conf_merge_ptr_value(conf->customer, prev->customer, NULL);
    ngx_conf_merge_ptr_value(conf->session, prev->session, NULL);
    ngx_conf_merge_value(conf->explain, prev->explain, 0);
    ngx_conf_merge_value(conf->record, prev->record, 0);
    ngx_conf_merge_uint_value(conf->time_limit, prev->time_limit, 0);
    ngx_conf_merge_size_value(conf->memory_limit, prev->memory_limit, 0);
    ngx_conf_merge_size_value(conf->event_max_body, prev->event_max_body,
                              NGX_HTTP_NBX_BODY_DEFAULT);
    ngx_conf_merge_uint_value(conf->event_time, prev->event_time,
                              NGX_HTTP_NBX_EVENT_TIME_SERVER);
    ngx_conf_merge_msec_value(conf->event_max_skew, prev->event_max_skew,
                              NBX_DEFAULT_EVENT_SKEW_MS);

    if (conf->event_max_skew == 0
        || conf->event_max_skew > NBX_EVENT_SKEW_MAX_MS)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "nbx_event_max_skew takes a time from 1ms to 1d, "
                           "such as 5m");
        return NGX_CONF_ERROR;
    }

    /*
     * An "if" block or a "limit_except" block inside an nbx location has
     * its own location configuration: nginx runs the outer location's
     * content handler with it (if), or the block's own handler
     * (limit_except). Either way the block must carry the handler and an
     * engine of its own, as proxy_pass does.
     */
    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (conf->handler == 0 && prev->handler != 0
        && (clcf->noname || clcf->lmt_excpt))
    {
        conf->handler = prev->handler;

        if (clcf->handler == NULL) {
            clcf->handler = conf->handler == NGX_HTTP_NBX_DECIDE
                            ? ngx_http_nbx_decide_handler
                            : ngx_http_nbx_event_handler;
        }
    }

    if (conf->handler == 0) {
        return NGX_CONF_OK;
    }

    if (conf->store.data == NULL || conf->catalog.data == NULL
        || (conf->policy.data == NULL && conf->deployment.data == NULL))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s needs nbx_store, nbx_catalog and nbx_policy "
                           "(or nbx_deployment)",
                           conf->handler == NGX_HTTP_NBX_DECIDE
                           ? "nbx_decide" : "nbx_event");
        return NGX_CONF_ERROR;
    }

    if (conf->handler == NGX_HTTP_NBX_DECIDE && conf->customer == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "nbx_decide needs nbx_customer "
                           "(such as $cookie_uid or $arg_customer)");
        return NGX_CONF_ERROR;
    }

    conf->engine = ngx_http_nbx_engine_conf(cf, conf);
    if (conf->engine == NULL) {
        return NGX_CONF_ERROR;
    }

    /* the workers open this store read-write, and the check checks that */
    if (conf->handler == NGX_HTTP_NBX_EVENT || conf->record) {
        conf->engine->store->write = 1;
    }

    /*
     * The pair as the workers will open it, with this location's limits: a
     * policy that cannot load within nbx_memory_limit fails "nginx -t", not
     * every request. No store is touched here (LMDB opens after fork()).
     */
    if (!conf->engine->checked && ngx_process != NGX_PROCESS_SIGNALLER) {
        ngx_http_nbx_engine_options(conf->engine, &opts);

        rc = nbx_engine_check(&opts, NULL);
        if (rc != NBX_OK) {
            serving = ngx_http_nbx_serving(conf->engine, &what);
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "nbx %s \"%V\" with catalog \"%V\" cannot "
                               "serve: %s: %s", what, serving, &conf->catalog,
                               nbx_strerror(rc), nbx_last_errmsg());
            return NGX_CONF_ERROR;
        }

        conf->engine->checked = 1;
    }

    return NGX_CONF_OK;
}


/* ========================================================================
 * Store check, in the master, once the configuration is read
 * ======================================================================== */

/*
 * Every store must open for the workers as they will open it: as their
 * user (the `user` directive, or nginx's default, when the master runs as
 * root), read-write if a location writes to it, read-only otherwise. A store
 * they cannot open (one root created, say) is a configuration error with
 * the library's reason ("... data.mdb needs read and write access"), not a
 * 503 on every request once traffic arrives.
 *
 * The check opens the store with nbx_store_open() in a child process that
 * takes the workers' ids and environment and exits. Not in the master:
 * LMDB is opened after fork() by the workers only, so nothing of it is
 * inherited. Not access() under switched effective ids either: the master
 * would have to switch back and forth, and the permission bits are only part
 * of what makes an open fail (lock.mdb created by the first opener, the
 * schema, a damaged file); a child runs the very call the workers run. A
 * missing store is only a warning: the workers retry once a second, so a
 * store that appears later is served without a reload.
 */
static char *
ngx_http_nbx_check_stores(ngx_cycle_t *cycle, void *conf)
{
    ngx_uint_t                 i;
    ngx_http_nbx_store_t     **stores;
    ngx_http_nbx_main_conf_t  *nmcf;

    /* `nginx -s ...` reads the configuration only to find the master */
    if (ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_CONF_OK;
    }

    nmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_nbx_module);
    if (nmcf == NULL) {
        return NGX_CONF_OK;
    }

    stores = nmcf->stores.elts;

    for (i = 0; i < nmcf->stores.nelts; i++) {
        if (ngx_http_nbx_check_store(cycle, nmcf, stores[i]) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_nbx_check_store(ngx_cycle_t *cycle, ngx_http_nbx_main_conf_t *nmcf,
    ngx_http_nbx_store_t *store)
{
    int               fds[2], rc;
    u_char            msg[NGX_HTTP_NBX_CHECK_MSG_MAX];
    unsigned          flags;
    ngx_int_t         answer;
    ngx_pid_t         pid;
    const char       *user, *access;
    ngx_file_info_t   fi;
    ngx_core_conf_t  *ccf;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (ngx_file_info(store->path.data, &fi) == NGX_FILE_ERROR) {
        flags = store->write ? 0 : NBX_STORE_READONLY;

    } else {
        flags = ngx_http_nbx_store_flags(nmcf, store, &fi);
    }

    if (pipe(fds) == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "nbx store \"%V\": pipe() failed", &store->path);
        return NGX_ERROR;
    }

    pid = fork();

    if (pid == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "nbx store \"%V\": fork() failed", &store->path);
        (void) close(fds[0]);
        (void) close(fds[1]);
        return NGX_ERROR;
    }

    if (pid == 0) {
        (void) close(fds[0]);
        ngx_http_nbx_check_child(cycle, (const char *) store->path.data,
                                 flags, fds[1]);
    }

    (void) close(fds[1]);

    rc = NBX_EIO;
    answer = ngx_http_nbx_check_wait(pid, fds[0], &rc, msg, sizeof(msg));
    (void) close(fds[0]);

    if (answer == NGX_AGAIN) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "nbx store \"%V\" was not checked: opening it took "
                      "more than %d ms (a long write transaction?)",
                      &store->path, NGX_HTTP_NBX_CHECK_MSEC);
        return NGX_OK;
    }

    if (answer == NGX_OK && rc == NBX_OK) {
        return NGX_OK;
    }

    if (answer == NGX_OK && rc == NBX_ENOTFOUND) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "nbx store \"%V\" is not there yet: requests get 503 "
                      "until it is", &store->path);
        return NGX_OK;
    }

    user = (ccf->master && geteuid() == 0) ? ccf->username : NULL;
    access = (flags & NBX_STORE_READONLY)
             ? "read-only"
             : "read-write (nbx_event or nbx_record writes to it)";

    ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                  "nbx store \"%V\": the workers (%s%s%s) cannot open it "
                  "%s: %s", &store->path,
                  user ? "user \"" : "nginx's own user", user ? user : "",
                  user ? "\"" : "", access, msg);

    return NGX_ERROR;
}


/*
 * In the child: become what a worker is (environment, group, user, as
 * ngx_worker_process_init() does it), open the store, write the outcome
 * (the code, then the library's message, escaped by it) to fd and exit
 * without running anything of the master's.
 */
static void
ngx_http_nbx_check_child(ngx_cycle_t *cycle, const char *path,
    unsigned flags, int fd)
{
    int               rc;
    u_char            out[sizeof(int) + NGX_HTTP_NBX_CHECK_MSG_MAX], *p;
    nbx_store        *store;
    ngx_err_t         err;
    const char       *step;
    ngx_core_conf_t  *ccf;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    step = NULL;
    err = 0;

    /* workers see only the variables `env` names (NBX_MAP_SIZE) */
    if (ngx_set_environment(cycle, NULL) == NULL) {
        step = "setting the environment";
        err = ngx_errno;

    } else if (ccf->master && geteuid() == 0) {
        if (setgid(ccf->group) == -1) {
            step = "setgid()";

        } else if (initgroups(ccf->username, ccf->group) == -1) {
            step = "initgroups()";

        } else if (setuid(ccf->user) == -1) {
            step = "setuid()";
        }

        err = step ? ngx_errno : 0;
    }

    p = out + sizeof(int);

    if (step) {
        rc = NBX_EIO;
        p = ngx_snprintf(p, NGX_HTTP_NBX_CHECK_MSG_MAX - 1,
                         "taking the workers' ids: %s failed (%d: %s)",
                         step, err, strerror(err));

    } else {
        rc = nbx_store_open(path, flags, &store);

        if (rc == NBX_OK) {
            nbx_store_close(store);

        } else {
            p = ngx_snprintf(p, NGX_HTTP_NBX_CHECK_MSG_MAX - 1, "%s",
                             nbx_last_errmsg());
        }
    }

    ngx_memcpy(out, &rc, sizeof(int));

    /* shorter than PIPE_BUF: one write, whole or not at all */
    if (write(fd, out, p - out) != p - out) {
        _exit(1);
    }

    _exit(0);
}


/*
 * The child's answer: NGX_OK with its code in *rc and its message in msg
 * (NUL-terminated); NGX_AGAIN when it gave none within
 * NGX_HTTP_NBX_CHECK_MSEC (it is killed); NGX_ERROR when it died without
 * one (msg says how).
 */
static ngx_int_t
ngx_http_nbx_check_wait(ngx_pid_t pid, int fd, int *rc, u_char *msg,
    size_t size)
{
    int              n, status, timeout;
    u_char           buf[sizeof(int) + NGX_HTTP_NBX_CHECK_MSG_MAX];
    size_t           got;
    ssize_t          r;
    ngx_int_t        answer;
    struct pollfd    pfd;
    struct timespec  now, end;

    (void) clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += NGX_HTTP_NBX_CHECK_MSEC / 1000;

    got = 0;
    answer = NGX_ERROR;

    for ( ;; ) {
        (void) clock_gettime(CLOCK_MONOTONIC, &now);
        timeout = (int) ((end.tv_sec - now.tv_sec) * 1000
                         + (end.tv_nsec - now.tv_nsec) / 1000000);

        if (timeout <= 0) {
            answer = NGX_AGAIN;
            break;
        }

        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;

        n = poll(&pfd, 1, timeout);

        if (n == -1 && ngx_errno == NGX_EINTR) {
            continue;
        }

        if (n == 0) {
            answer = NGX_AGAIN;
            break;
        }

        if (n == -1) {
            break;
        }

        r = read(fd, buf + got, sizeof(buf) - got);

        if (r == -1 && ngx_errno == NGX_EINTR) {
            continue;
        }

        if (r <= 0) {
            break;
        }

        got += r;

        if (got == sizeof(buf)) {
            break;
        }
    }

    if (answer == NGX_AGAIN) {
        (void) kill(pid, SIGKILL);
    }

    status = 0;

    while (waitpid(pid, &status, 0) == -1 && ngx_errno == NGX_EINTR) {
        /* void */
    }

    if (answer == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (got < sizeof(int)) {
        if (WIFSIGNALED(status)) {
            ngx_snprintf(msg, size, "the check process was killed by "
                         "signal %d while opening it%Z", WTERMSIG(status));

        } else {
            ngx_snprintf(msg, size, "the check process ended without an "
                         "answer%Z");
        }

        return NGX_ERROR;
    }

    ngx_memcpy(rc, buf, sizeof(int));

    got -= sizeof(int);
    got = ngx_min(got, size - 1);
    ngx_memcpy(msg, buf + sizeof(int), got);
    msg[got] = '\0';

    return NGX_OK;
}
