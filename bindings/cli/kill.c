/*
 * kill.c: `nbx kill` and `nbx unkill`: kill switches (nbx_kill(),
 * nbx_unkill()) and the list of what is killed and of every change
 * (nbx_kills_read()). Reasons are the users' text: escaped for the
 * terminal, JSON-escaped in --json.
 */
#include "cli.h"

#include <inttypes.h>
#include <string.h>

const cli_flag cli_kill_flags[] = {
    CLI_FLAG_STORE,
    {"reason", CLI_STRING, "TEXT", "why (required to kill; 1 to 1024 bytes)", 0, 0},
    {"list", CLI_BOOL, NULL, "print what is killed, when, why and by whom", 0, 0},
    {"history", CLI_BOOL, NULL, "with --list: every kill and unkill, in order", 0, 0},
    {"json", CLI_BOOL, NULL, "with --list: print JSON instead of text", 0, 0},
    CLI_FLAG_END,
};

const cli_flag cli_unkill_flags[] = {
    CLI_FLAG_STORE,
    {"reason", CLI_STRING, "TEXT", "why (optional), kept in the history", 0, 0},
    CLI_FLAG_END,
};

const char cli_kill_details[] =
    "Kills are kept in the store and take effect on the next decision of every\n"
    "process and nginx worker using it, without a reload:\n"
    "  offer ID        the offer is excluded as 'killed', fallbacks included;\n"
    "  arm DEP.ARM     the arm ARM of deployment DEP serves no one: its customers go\n"
    "                  to the first arm, or get the control treatment (the holdout's)\n"
    "                  when the first arm is killed;\n"
    "  policy VERSION  every arm serving that policy version (16 hex digits, the\n"
    "                  result's policy.version) is treated as killed.\n"
    "Killing again replaces the reason. Every kill and unkill is kept in the\n"
    "store's history: --list shows the current kills, --list --history the changes.\n"
    "Bad input (kind, name, reason) is an error naming the field; nothing is written.\n";

/* "offer" -> NBX_KILL_OFFER; 0 if none. */
static int kind_of(const char *word)
{
    for (int k = NBX_KILL_OFFER; k <= NBX_KILL_POLICY; k++)
        if (strcmp(word, nbx_kill_kind_name(k)) == 0)
            return k;
    return 0;
}

/* ========================================================================
 * --list
 * ======================================================================== */

struct list_out {
    bool json, history;
    size_t n;
};

static int print_kill(void *ud, const nbx_kill_info *k)
{
    struct list_out *o = ud;
    char at[NBX_TIME_BUFSZ];
    nbx_time_format(k->at_ms, at);
    const char *change = k->killed ? "kill" : "unkill";
    if (o->json) {
        printf("%s\n  {", o->n ? "," : "");
        if (o->history)
            printf("\"seq\":%" PRIu64 ",\"change\":\"%s\",", k->seq, change);
        printf("\"kind\":\"%s\",\"name\":", nbx_kill_kind_name(k->kind));
        cli_print_json_string(stdout, k->name);
        printf(",\"reason\":");
        cli_print_json_string(stdout, k->reason);
        printf(",\"at\":\"%s\",\"by\":", at);
        cli_print_json_string(stdout, k->by);
        printf("}");
    } else {
        if (o->history)
            printf("#%" PRIu64 " %s %-6s ", k->seq, at, change);
        printf("%-6s ", nbx_kill_kind_name(k->kind));
        cli_print_escaped(stdout, k->name);
        if (!o->history)
            printf("  since %s", at);
        printf("  by ");
        cli_print_escaped(stdout, k->by);
        if (*k->reason) {
            printf(": ");
            cli_print_escaped(stdout, k->reason);
        }
        putchar('\n');
    }
    o->n++;
    return 0;
}

static int list_kills(cli_args *args)
{
    if (args->n_positional)
        return cli_usage_error(args->cmd, "--list takes no KIND NAME");
    if (cli_has(args, "reason"))
        return cli_usage_error(args->cmd, "--reason is for a kill, not --list");
    int exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_READONLY, &exit_code);
    if (!store)
        return exit_code;
    struct list_out o = {.json = cli_has(args, "json"), .history = cli_has(args, "history")};
    if (o.json)
        printf("[");
    int rc = nbx_kills_read(store, o.history ? NBX_KILLS_HISTORY : 0, print_kill, &o);
    if (o.json)
        printf("%s]\n", o.n ? "\n" : "");
    else if (rc == NBX_OK && o.n == 0)
        printf(o.history ? "no kill or unkill yet\n" : "nothing is killed\n");
    exit_code = rc == NBX_OK ? CLI_OK : cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    nbx_store_close(store);
    return exit_code;
}

/* ========================================================================
 * kill, unkill
 * ======================================================================== */

static int change(cli_args *args, bool kill)
{
    if (args->n_positional != 2)
        return cli_usage_error(args->cmd,
                               "give what to %s: offer ID, arm [DEPLOYMENT.]ARM or "
                               "policy VERSION",
                               kill ? "kill" : "unkill");
    const char *word = args->positional[0], *name = args->positional[1];
    int kind = kind_of(word);
    if (!kind) {
        fprintf(stderr, "nbx %s: kind '", kill ? "kill" : "unkill");
        cli_print_escaped(stderr, word);
        fprintf(stderr, "' is not offer, arm or policy\n");
        return CLI_USAGE;
    }
    const char *reason = cli_string(args, "reason", NULL);
    if (kill && !reason)
        return cli_usage_error(args->cmd, "--reason TEXT is required: say why");
    int exit_code;
    nbx_store *store = cli_open_store(args, 0, &exit_code);
    if (!store)
        return exit_code;
    int rc = kill ? nbx_kill(store, kind, name, reason, "cli")
                  : nbx_unkill(store, kind, name, reason, "cli");
    if (rc == NBX_OK) {
        printf("%s %s ", kill ? "killed" : "unkilled", word);
        cli_print_escaped(stdout, name);
        putchar('\n');
        exit_code = CLI_OK;
    } else {
        exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    }
    nbx_store_close(store);
    return exit_code;
}

int cli_run_kill(cli_args *args)
{
    if (cli_has(args, "list"))
        return list_kills(args);
    if (cli_has(args, "history") || cli_has(args, "json"))
        return cli_usage_error(args->cmd, "--history and --json go with --list");
    return change(args, true);
}

int cli_run_unkill(cli_args *args)
{
    return change(args, false);
}
