/*
 * decide.c: decide, catalog check.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ========================================================================
 * decide
 * ======================================================================== */

/* Policy failures and reloads reach standard error, so a fallback decision
 * says why without --explain. */
static void log_to_stderr(void *ud, int level, const char *message)
{
    const char *name = ud;
    const char *label = level == NBX_LOG_ERROR  ? "error"
                        : level == NBX_LOG_WARN ? "warning"
                                                : "info";
    if (level <= NBX_LOG_WARN)
        fprintf(stderr, "%s: %s: %s\n", name, label, message);
}

static int require_flag(cli_args *args, const char *name, const char *metavar)
{
    if (cli_has(args, name))
        return CLI_OK;
    return cli_usage_error(args->cmd, "--%s %s is required", name, metavar);
}

int cli_run_decide(cli_args *args)
{
    int rc = require_flag(args, "catalog", "FILE");
    if (rc == CLI_OK)
        rc = cli_serving_flags(args);
    if (rc == CLI_OK)
        rc = require_flag(args, "customer", "ID");
    if (rc != CLI_OK)
        return rc;
    const char *store_path = cli_store_path(args);
    if (!store_path)
        return CLI_USAGE;

    const char *format = cli_string(args, "format", "json");
    bool text = strcmp(format, "text") == 0;
    if (!text && strcmp(format, "json") != 0)
        return cli_usage_error(args->cmd, "--format: '%s' is not json or text", format);

    nbx_kv session[NBX_REQUEST_SESSION_MAX];
    size_t n_session = 0;
    rc = cli_decide_flags(args, session, &n_session);
    if (rc != CLI_OK)
        return rc;

    bool record = cli_has(args, "record");
    nbx_engine_options opts;
    cli_engine_options(args, store_path, record, &opts);
    opts.log = log_to_stderr;
    opts.log_ud = (void *)"nbx decide";

    nbx_engine *engine = NULL;
    nbx_ctx *ctx = NULL;
    int exit_code = CLI_FAIL;
    const char *log_path = cli_string(args, "log", NULL);
    int log_fd = log_path ? cli_log_open(args->cmd, log_path) : -1;
    if (log_path && log_fd < 0)
        return CLI_FAIL;
    rc = nbx_engine_open(&opts, &engine);
    if (rc != NBX_OK) {
        cli_nbx_error(args->cmd, rc, nbx_last_errmsg());
        goto done;
    }
    rc = nbx_ctx_open(engine, &ctx);
    if (rc != NBX_OK) {
        cli_nbx_error(args->cmd, rc, nbx_last_errmsg());
        goto done;
    }

    nbx_request req;
    nbx_request_init(&req);
    req.customer = cli_string(args, "customer", NULL);
    const cli_value *placements = cli_flag_value(args, "placement");
    req.placements = placements->list;
    req.n_placements = placements->n_list;
    req.session = session;
    req.n_session = n_session;
    req.now_ms = cli_time(args, "as-of", 0);
    req.flags = (cli_has(args, "explain") ? NBX_DECIDE_EXPLAIN : 0u) |
                (record ? NBX_DECIDE_RECORD : 0u) | (log_path ? NBX_DECIDE_AUDIT : 0u);

    const nbx_result *result = NULL;
    rc = nbx_decide(ctx, &req, &result);
    if (rc != NBX_OK) {
        cli_nbx_error(args->cmd, rc, nbx_ctx_errmsg(ctx));
        goto done;
    }
    size_t len = 0;
    const char *json = nbx_result_json(result, &len);
    if (!json) {
        cli_error(args->cmd, "the decision produced no result");
        goto done;
    }
    if (log_path) {
        size_t audit_len = 0;
        const char *audit = nbx_result_audit_json(result, &audit_len);
        if (cli_log_append(args->cmd, log_path, log_fd, audit, audit_len) != CLI_OK)
            goto done;
    }
    if (text) {
        if (cli_explain_text(stdout, json, len) != 0) {
            cli_error(args->cmd, "the decision's result could not be read");
            goto done;
        }
    } else {
        fwrite(json, 1, len, stdout);
        putchar('\n');
    }
    exit_code = CLI_OK;
done:
    nbx_ctx_close(ctx);
    nbx_engine_close(engine);
    if (log_fd >= 0 && close(log_fd) != 0 && exit_code == CLI_OK)
        exit_code = cli_error(args->cmd, "--log %s: %s", log_path, strerror(errno));
    return exit_code;
}

/* ========================================================================
 * catalog check
 * ======================================================================== */

int cli_run_catalog_check(cli_args *args)
{
    const char *path = args->positional[0];
    nbx_engine_info info;
    memset(&info, 0, sizeof info);
    int rc = nbx_catalog_check(path, &info);
    if (rc != NBX_OK)
        return cli_check_failed(args, rc, path);
    if (cli_has(args, "json")) {
        fputs("{\"file\":", stdout);
        cli_print_json_string(stdout, path);
        printf(",\"version\":\"%s\",\"offers\":%u,\"placements\":%u}\n", info.catalog_version,
               (unsigned)info.offers, (unsigned)info.placements);
    } else {
        printf("%s: ok\nversion:    %s\noffers:     %u\nplacements: %u\n", path,
               info.catalog_version, (unsigned)info.offers, (unsigned)info.placements);
    }
    return CLI_OK;
}
