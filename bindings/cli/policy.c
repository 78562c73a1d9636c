/*
 * policy.c: nbx policy check.
 *
 * Without --catalog: the file loads (syntax, the sandbox's rules, its top
 * level runs) and names itself. With --catalog it is also tried on
 * customers, as nginx does before accepting a configuration: synthetic ones
 * built to cover the catalog (nbx_engine_trial) and, with --store, real
 * ones (a deterministic --sample, or the ids of --customers). Any decision
 * that falls back fails the check, naming the customer, FILE:LINE and the
 * reason, with counts per reason.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* clang-format off */
const cli_flag cli_policy_check_flags[] = {
    {"catalog", CLI_STRING, "FILE", "also try the policy on customers of this catalog", 0, 0},
    CLI_FLAG_STORE,
    {"sample", CLI_UINT, "N",
     "with --store: how many stored customers to try (default 1000; the same ones every run)",
     1, 10000000},
    {"customers", CLI_STRING, "FILE", "with --store: try these customer ids (one per line)", 0, 0},
    {"as-of", CLI_TIME, "TIME", "the decisions' clock (RFC 3339 or epoch seconds; default now)",
     0, 0},
    CLI_FLAG_TIME_LIMIT,
    CLI_FLAG_MEMORY_LIMIT,
    {"json", CLI_BOOL, NULL, "print the outcome as JSON", 0, 0},
    CLI_FLAG_END,
};
/* clang-format on */

/* Reasons reported one by one (the counts cover all), customers named per
 * reason. */
#define CHECK_REASONS_MAX 32
#define CHECK_NAMED_MAX 5
#define CHECK_SAMPLE_DEFAULT 1000

typedef struct check_reason {
    char *text; /* "FILE:LINE: reason" */
    char *kind;
    uint64_t count;
    char *customers[CHECK_NAMED_MAX];
    size_t n_customers;
} check_reason;

typedef struct check_tally {
    check_reason reasons[CHECK_REASONS_MAX];
    size_t n_reasons;
    uint64_t decisions, fallbacks, unlisted;
    uint64_t synthetic, sampled;
} check_tally;

static void tally_free(check_tally *t)
{
    for (size_t i = 0; i < t->n_reasons; i++) {
        free(t->reasons[i].text);
        free(t->reasons[i].kind);
        for (size_t k = 0; k < t->reasons[i].n_customers; k++)
            free(t->reasons[i].customers[k]);
    }
}

static void tally(check_tally *t, const char *customer, const nbx_result *r)
{
    t->decisions++;
    nbx_fault f;
    if (nbx_result_fault(r, &f) != NBX_OK)
        return;
    t->fallbacks++;
    size_t n = strlen(f.where) + strlen(f.reason) + 3;
    char *text = malloc(n);
    if (!text)
        return;
    snprintf(text, n, "%s%s%s", f.where, *f.where ? ": " : "", f.reason);
    check_reason *x = NULL;
    for (size_t i = 0; i < t->n_reasons && !x; i++)
        if (strcmp(t->reasons[i].text, text) == 0)
            x = &t->reasons[i];
    if (!x) {
        if (t->n_reasons == CHECK_REASONS_MAX) {
            t->unlisted++;
            free(text);
            return;
        }
        x = &t->reasons[t->n_reasons++];
        x->text = text;
        x->kind = strdup(f.kind);
        text = NULL;
    }
    free(text);
    x->count++;
    if (x->n_customers < CHECK_NAMED_MAX)
        x->customers[x->n_customers++] = strdup(customer);
}

static void on_trial(void *ud, const char *label, const nbx_result *r)
{
    check_tally *t = ud;
    t->synthetic++;
    char who[96];
    snprintf(who, sizeof who, "trial: %s", label);
    tally(t, who, r);
}

/* ------------------------------------------------------------------------
 * Real customers: a deterministic sample, or a file of ids
 * ------------------------------------------------------------------------ */

static int try_customers(cli_args *args, nbx_engine *engine, const cli_customer *ids, size_t n,
                         int64_t now, check_tally *t)
{
    nbx_ctx *ctx;
    int rc = nbx_ctx_open(engine, &ctx);
    if (rc != NBX_OK)
        return cli_nbx_error(args->cmd, rc, nbx_last_errmsg());
    int status = CLI_OK;
    for (size_t i = 0; i < n; i++) {
        nbx_request req;
        nbx_request_init(&req);
        req.customer = ids[i].id;
        req.now_ms = now;
        const nbx_result *r;
        rc = nbx_decide(ctx, &req, &r);
        if (rc == NBX_EINVAL) {
            /* a line of --customers that is not an id: said, not fatal */
            fprintf(stderr, "nbx policy check: customer %zu: %s\n", i + 1, nbx_ctx_errmsg(ctx));
            continue;
        }
        if (rc != NBX_OK) {
            status = cli_nbx_error(args->cmd, rc, nbx_ctx_errmsg(ctx));
            break;
        }
        t->sampled++;
        tally(t, ids[i].id, r);
    }
    nbx_ctx_close(ctx);
    return status;
}

/* ------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------ */

static void print_text(const char *path, const nbx_engine_info *info, const check_tally *t,
                       const char *store)
{
    printf("%s: %s\nname:    ", path, t->fallbacks ? "FAILED" : "ok");
    cli_print_escaped(stdout, info->policy_name);
    printf("\nversion: %s\n", info->policy_version);
    printf("tried:   %llu synthetic customers", (unsigned long long)t->synthetic);
    if (store) {
        printf(", %llu from ", (unsigned long long)t->sampled);
        cli_print_escaped(stdout, store);
    }
    printf("\nfallbacks: %llu of %llu decisions\n", (unsigned long long)t->fallbacks,
           (unsigned long long)t->decisions);
    for (size_t i = 0; i < t->n_reasons; i++) {
        const check_reason *x = &t->reasons[i];
        printf("  %llu  %s  ", (unsigned long long)x->count, x->kind);
        cli_print_escaped(stdout, x->text);
        fputs("\n      customers: ", stdout);
        for (size_t k = 0; k < x->n_customers; k++) {
            if (k)
                fputs(", ", stdout);
            cli_print_escaped(stdout, x->customers[k]);
        }
        if (x->count > x->n_customers)
            fputs(", ...", stdout);
        putchar('\n');
    }
    if (t->unlisted)
        printf("  %llu more fallbacks for other reasons\n", (unsigned long long)t->unlisted);
}

static void print_json(const char *path, const nbx_engine_info *info, const check_tally *t)
{
    fputs("{\"file\":", stdout);
    cli_print_json_string(stdout, path);
    fputs(",\"name\":", stdout);
    cli_print_json_string(stdout, info->policy_name);
    printf(",\"version\":\"%s\",\"ok\":%s,\"synthetic\":%llu,\"sampled\":%llu,"
           "\"decisions\":%llu,\"fallbacks\":%llu,\"reasons\":[",
           info->policy_version, t->fallbacks ? "false" : "true", (unsigned long long)t->synthetic,
           (unsigned long long)t->sampled, (unsigned long long)t->decisions,
           (unsigned long long)t->fallbacks);
    for (size_t i = 0; i < t->n_reasons; i++) {
        const check_reason *x = &t->reasons[i];
        printf("%s{\"kind\":", i ? "," : "");
        cli_print_json_string(stdout, x->kind);
        fputs(",\"reason\":", stdout);
        cli_print_json_string(stdout, x->text);
        printf(",\"count\":%llu,\"customers\":[", (unsigned long long)x->count);
        for (size_t k = 0; k < x->n_customers; k++) {
            if (k)
                putchar(',');
            cli_print_json_string(stdout, x->customers[k]);
        }
        fputs("]}", stdout);
    }
    printf("],\"unlisted\":%llu}\n", (unsigned long long)t->unlisted);
}

/* Without --catalog: it loads and names itself. */
static int check_alone(cli_args *args, const char *path)
{
    nbx_engine_info info;
    memset(&info, 0, sizeof info);
    int rc = nbx_policy_check(path, &info);
    if (rc != NBX_OK)
        return cli_check_failed(args, rc, path);
    if (cli_has(args, "json")) {
        /* The path and the policy's name are any bytes: escaped. */
        fputs("{\"file\":", stdout);
        cli_print_json_string(stdout, path);
        fputs(",\"name\":", stdout);
        cli_print_json_string(stdout, info.policy_name);
        printf(",\"version\":\"%s\"}\n", info.policy_version);
    } else {
        printf("%s: ok\nname:    ", path);
        cli_print_escaped(stdout, info.policy_name);
        printf("\nversion: %s\n", info.policy_version);
    }
    return CLI_OK;
}

int cli_run_policy_check(cli_args *args)
{
    const char *path = args->positional[0];
    bool sampling = cli_has(args, "sample") || cli_has(args, "customers");
    if (!cli_has(args, "catalog")) {
        if (sampling || cli_has(args, "store"))
            return cli_usage_error(args->cmd, "--store, --sample and --customers need --catalog");
        return check_alone(args, path);
    }
    if (cli_has(args, "sample") && cli_has(args, "customers"))
        return cli_usage_error(args->cmd, "give --sample or --customers, not both");
    const char *store = cli_string(args, "store", NULL);
    if (sampling && !store)
        return cli_usage_error(args->cmd, "--sample and --customers need --store DIR");

    nbx_engine_options opts;
    nbx_engine_options_init(&opts);
    opts.store = store;
    opts.catalog = cli_string(args, "catalog", NULL);
    opts.policy = path;
    opts.time_limit_us = (uint32_t)cli_uint(args, "time-limit-us", 0);
    opts.memory_limit = (size_t)cli_uint(args, "memory-limit", 0);
    opts.flags = store ? NBX_ENGINE_READONLY : NBX_ENGINE_NO_STORE;
    nbx_engine *engine;
    int rc = nbx_engine_open(&opts, &engine);
    if (rc != NBX_OK)
        return cli_check_failed(args, rc, path);
    nbx_engine_info info;
    nbx_engine_info_get(engine, &info);

    check_tally t = {0};
    int status = CLI_OK;
    rc = nbx_engine_trial(engine, on_trial, &t);
    if (rc != NBX_OK && rc != NBX_EPOLICY)
        status = cli_nbx_error(args->cmd, rc, nbx_engine_errmsg(engine));
    cli_customer *ids = NULL;
    size_t n_ids = 0;
    if (status == CLI_OK && store) {
        const char *file = cli_string(args, "customers", NULL);
        status =
            file ? cli_customer_file(args, file, &ids, &n_ids)
                 : cli_sample_store(args, nbx_engine_store(engine),
                              (size_t)cli_uint(args, "sample", CHECK_SAMPLE_DEFAULT), &ids, &n_ids);
        if (status == CLI_OK)
            status = try_customers(args, engine, ids, n_ids, cli_time(args, "as-of", 0), &t);
    }
    if (status == CLI_OK) {
        if (cli_has(args, "json"))
            print_json(path, &info, &t);
        else
            print_text(path, &info, &t, store);
        if (t.fallbacks)
            status = CLI_FAIL;
    }
    cli_customers_free(ids, n_ids);
    tally_free(&t);
    nbx_engine_close(engine);
    return status;
}
