/*
 * args.c: one flag parser for every command, usage and help text.
 *
 * Flags may come before, between or after positional arguments; "--" ends
 * the flags. Values are checked here (numbers, sizes, times), so a command's
 * run function only sees well-formed input.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Messages
 * ======================================================================== */

void cli_command_name(const cli_command *cmd, char *buf, size_t size)
{
    if (cmd->sub)
        snprintf(buf, size, "nbx %s %s", cmd->group, cmd->sub);
    else
        snprintf(buf, size, "nbx %s", cmd->group);
}

static void vreport(const cli_command *cmd, const char *fmt, va_list ap)
{
    char name[64];
    cli_command_name(cmd, name, sizeof name);
    fprintf(stderr, "%s: ", name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    char name[64];
    cli_command_name(cmd, name, sizeof name);
    cli_print_usage(stderr, cmd);
    fprintf(stderr, "Run '%s --help' for details.\n", name);
    return CLI_USAGE;
}

int cli_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(cmd, fmt, ap);
    va_end(ap);
    return CLI_FAIL;
}

int cli_nbx_error(const cli_command *cmd, int rc, const char *detail)
{
    if (detail && *detail)
        return cli_error(cmd, "%s", detail);
    return cli_error(cmd, "%s", nbx_strerror(rc));
}

/* ========================================================================
 * Usage and help
 * ======================================================================== */

void cli_print_usage(FILE *out, const cli_command *cmd)
{
    char name[64];
    cli_command_name(cmd, name, sizeof name);
    fprintf(out, "usage: %s", name);
    if (cmd->positional && *cmd->positional)
        fprintf(out, " %s", cmd->positional);
    for (const cli_flag *f = cmd->flags; f && f->name; f++) {
        if (f->kind == CLI_ALIAS)
            continue;
        if (f->kind == CLI_BOOL)
            fprintf(out, " [--%s]", f->name);
        else if (f->kind == CLI_LIST)
            fprintf(out, " [--%s %s]...", f->name, f->metavar);
        else
            fprintf(out, " [--%s %s]", f->name, f->metavar);
    }
    fputc('\n', out);
}

void cli_print_help(FILE *out, const cli_command *cmd)
{
    cli_print_usage(out, cmd);
    fprintf(out, "\n%s\n", cmd->summary);
    if (cmd->details)
        fprintf(out, "\n%s", cmd->details);
    fprintf(out, "\nFlags:\n");
    for (const cli_flag *f = cmd->flags; f && f->name; f++) {
        char left[64];
        if (f->kind == CLI_ALIAS) {
            snprintf(left, sizeof left, "--%s", f->name);
            fprintf(out, "  %-30s the old spelling of --%s\n", left, f->metavar);
            continue;
        }
        if (f->kind == CLI_BOOL)
            snprintf(left, sizeof left, "--%s", f->name);
        else
            snprintf(left, sizeof left, "--%s %s", f->name, f->metavar);
        fprintf(out, "  %-30s %s%s\n", left, f->help, f->kind == CLI_LIST ? " (repeatable)" : "");
    }
    fprintf(out, "  %-30s %s\n", "--help", "show this help");
}

/* ========================================================================
 * Values
 * ======================================================================== */

static int flag_index(const cli_command *cmd, const char *name, size_t len)
{
    for (int i = 0; cmd->flags && cmd->flags[i].name; i++)
        if (strlen(cmd->flags[i].name) == len && memcmp(cmd->flags[i].name, name, len) == 0)
            return i;
    return -1;
}

/* Strict unsigned decimal: digits only, no sign, no blanks, no overflow. An
 * optional K, M or G suffix (binary multiples) when sizes are allowed. */
static bool parse_unsigned(const char *text, bool size_suffix, uint64_t *out)
{
    const char *p = text;
    uint64_t v = 0;
    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    if (*p && size_suffix) {
        unsigned shift;
        switch (*p) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        default:
            return false;
        }
        p++;
        if (*p == 'B' || *p == 'b')
            p++;
        if (v > (UINT64_MAX >> shift))
            return false;
        v <<= shift;
    }
    if (*p)
        return false;
    *out = v;
    return true;
}

static int set_value(const cli_command *cmd, int idx, const char *text, int argc, cli_value *v)
{
    const cli_flag *f = &cmd->flags[idx];
    v->set = true;
    v->text = text;
    switch (f->kind) {
    case CLI_BOOL:
    case CLI_STRING:
    case CLI_ALIAS:
        return CLI_OK;
    case CLI_LIST:
        if (!v->list) {
            v->list = calloc((size_t)argc + 1, sizeof *v->list);
            if (!v->list)
                return cli_error(cmd, "out of memory");
        }
        v->list[v->n_list++] = text;
        return CLI_OK;
    case CLI_UINT:
    case CLI_BYTES: {
        uint64_t max = f->max ? f->max : UINT64_MAX;
        uint64_t n;
        if (!parse_unsigned(text, f->kind == CLI_BYTES, &n))
            return cli_usage_error(
                cmd, "--%s: '%s' is not %s", f->name, text,
                f->kind == CLI_BYTES ? "a size in bytes (a whole number, optionally with K, M or G)"
                                     : "a whole number");
        if (n < f->min || n > max)
            return cli_usage_error(cmd, "--%s must be between %llu and %llu, got %s", f->name,
                                   (unsigned long long)f->min, (unsigned long long)max, text);
        v->number = n;
        return CLI_OK;
    }
    case CLI_TIME:
        if (nbx_time_parse(text, &v->time_ms) != NBX_OK)
            return cli_usage_error(cmd,
                                   "--%s: '%s' is not a time: use RFC 3339 "
                                   "(2026-03-01T12:00:00Z) or epoch seconds",
                                   f->name, text);
        return CLI_OK;
    }
    return cli_error(cmd, "internal error: flag --%s has no kind", f->name);
}

/* ========================================================================
 * Parser
 * ======================================================================== */

static bool is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

int cli_parse(const cli_command *cmd, int argc, char **argv, cli_args *out)
{
    memset(out, 0, sizeof *out);
    out->cmd = cmd;

    /* --help wins over any other mistake on the line. */
    for (int i = 0; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (is_help(argv[i])) {
            cli_print_help(stdout, cmd);
            return -1;
        }
    }

    bool flags_done = false;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!flags_done && strcmp(arg, "--") == 0) {
            flags_done = true;
            continue;
        }
        if (!flags_done && arg[0] == '-' && arg[1] == '-') {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            int idx = flag_index(cmd, name, len);
            if (idx < 0)
                return cli_usage_error(cmd, "unknown flag --%.*s", (int)len, name);
            if (cmd->flags[idx].kind == CLI_ALIAS)
                idx = flag_index(cmd, cmd->flags[idx].metavar, strlen(cmd->flags[idx].metavar));
            if (idx < 0 || cmd->flags[idx].kind == CLI_ALIAS)
                return cli_error(cmd, "internal error: --%.*s is an alias of no flag", (int)len,
                                 name);
            const cli_flag *f = &cmd->flags[idx];
            const char *value;
            if (f->kind == CLI_BOOL) {
                if (eq)
                    return cli_usage_error(cmd, "--%.*s takes no value", (int)len, name);
                value = "1";
            } else if (eq) {
                value = eq + 1;
            } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                value = argv[++i];
            } else {
                return cli_usage_error(cmd, "--%s needs a value (%s)", f->name, f->metavar);
            }
            if (f->kind != CLI_BOOL && *value == '\0')
                return cli_usage_error(cmd, "--%s needs a value (%s), got an empty one", f->name,
                                       f->metavar);
            int rc = set_value(cmd, idx, value, argc, &out->values[idx]);
            if (rc != CLI_OK)
                return rc;
            continue;
        }
        if (!flags_done && arg[0] == '-' && arg[1] != '\0')
            return cli_usage_error(cmd, "unknown flag %s", arg);
        if (out->n_positional >= cmd->max_positional || out->n_positional >= CLI_POSITIONALS_MAX) {
            return cli_usage_error(cmd, "unexpected argument '%s'", arg);
        }
        out->positional[out->n_positional++] = arg;
    }
    if (out->n_positional < cmd->min_positional)
        return cli_usage_error(cmd, "missing argument: expected %s", cmd->positional);
    return CLI_OK;
}

void cli_args_free(cli_args *args)
{
    for (size_t i = 0; i < CLI_FLAGS_MAX; i++)
        free(args->values[i].list);
    memset(args, 0, sizeof *args);
}

/* ========================================================================
 * Accessors
 * ======================================================================== */

const cli_value *cli_flag_value(const cli_args *args, const char *name)
{
    int idx = flag_index(args->cmd, name, strlen(name));
    if (idx < 0) {
        /* A programming error in a command table, not a user mistake. */
        fprintf(stderr, "nbx: internal error: command has no flag --%s\n", name);
        abort();
    }
    return &args->values[idx];
}

bool cli_has(const cli_args *args, const char *name)
{
    return cli_flag_value(args, name)->set;
}

const char *cli_string(const cli_args *args, const char *name, const char *fallback)
{
    const cli_value *v = cli_flag_value(args, name);
    return v->set ? v->text : fallback;
}

uint64_t cli_uint(const cli_args *args, const char *name, uint64_t fallback)
{
    const cli_value *v = cli_flag_value(args, name);
    return v->set ? v->number : fallback;
}

int64_t cli_time(const cli_args *args, const char *name, int64_t fallback)
{
    const cli_value *v = cli_flag_value(args, name);
    return v->set ? v->time_ms : fallback;
}
