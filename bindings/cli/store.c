/*
 * store.c: commands over a store: import, ingest, rfm rebuild, profile
 * get/delete/put, export, stats.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ========================================================================
 * import profiles, import events, ingest
 * ======================================================================== */

typedef struct progress {
    double started; /* of the import, for the summary */
    double pass_started;
    int pass; /* 1 validation, 2 apply */
    bool shown;
} progress;

/* Called by nbx_import_file() about every 100k lines, only when standard
 * error is a terminal: a log file should not fill with carriage returns.
 * The library opens each of its two passes with a call of 0 lines; each runs
 * to 100%, so the line says which one it is. */
static void show_progress(void *ud, uint64_t lines, uint64_t bytes, uint64_t total)
{
    progress *p = ud;
    if (lines == 0 && bytes == 0) {
        p->pass++;
        p->pass_started = cli_now_seconds();
        return;
    }
    const char *label = p->pass >= 2 ? "writing" : "checking";
    double elapsed = cli_now_seconds() - p->pass_started;
    double rate = elapsed > 0 ? (double)lines / elapsed : 0;
    if (total > 0)
        fprintf(stderr, "\r\033[K%s: %" PRIu64 " lines, %.0f lines/s, %.1f%%", label, lines, rate,
                100.0 * (double)bytes / (double)total);
    else
        fprintf(stderr, "\r\033[K%s: %" PRIu64 " lines, %.0f lines/s", label, lines, rate);
    fflush(stderr);
    p->shown = true;
}

static bool same_inode(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Checks that need no store, made before the store is opened: the command
 * creates a missing store, and a mistake on the command line must not leave
 * a new empty one behind. The library checks the rejects file again, and
 * against the store's files. */
static int check_import_files(cli_args *args, const char *path, const char *rejects)
{
    struct stat in, out;
    if (strcmp(path, "-") != 0) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return cli_error(args->cmd, "cannot open %s: %s", path, strerror(errno));
        int rc = fstat(fd, &in);
        int err = errno;
        close(fd);
        if (rc != 0)
            return cli_error(args->cmd, "cannot open %s: %s", path, strerror(err));
        if (S_ISDIR(in.st_mode))
            return cli_error(args->cmd, "%s: is a directory, not a JSONL file", path);
    } else if (fstat(STDIN_FILENO, &in) != 0) {
        return cli_error(args->cmd, "cannot read standard input: %s", strerror(errno));
    }
    if (rejects && stat(rejects, &out) == 0 && same_inode(&out, &in))
        return cli_usage_error(args->cmd,
                               "--skip-invalid %s is the input file: it would be overwritten; "
                               "choose another rejects file",
                               rejects);
    return CLI_OK;
}

static int run_import(cli_args *args, nbx_import_kind kind)
{
    const char *path = args->positional[0];
    const char *rejects = cli_string(args, "skip-invalid", NULL);
    if (!cli_store_path(args)) /* a usage error comes first */
        return CLI_USAGE;
    int exit_code = check_import_files(args, path, rejects);
    if (exit_code != CLI_OK)
        return exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_CREATE, &exit_code);
    if (!store)
        return exit_code;

    nbx_import_options opts;
    nbx_import_options_init(&opts);
    opts.rejects_path = rejects;
    opts.batch_size = (size_t)cli_uint(args, "batch-size", 0);
    if (kind == NBX_IMPORT_EVENTS) {
        opts.max_skew_ms = (int64_t)cli_uint(args, "max-skew", 0) * 1000;
        opts.catalog = cli_string(args, "catalog", NULL);
    }
    progress prog = {.started = cli_now_seconds()};
    prog.pass_started = prog.started;
    if (isatty(STDERR_FILENO)) {
        opts.progress = show_progress;
        opts.progress_ud = &prog;
    }

    nbx_import_stats st;
    memset(&st, 0, sizeof st);
    int rc = nbx_import_file(store, kind, path, &opts, &st);
    double elapsed = cli_now_seconds() - prog.started;
    if (prog.shown)
        fprintf(stderr, "\r\033[K");

    if (rc == NBX_EINVAL) /* the CLI bounds every option but the rejects file */
        exit_code = cli_usage_error(args->cmd, "%s", nbx_store_errmsg(store));
    else if (rc != NBX_OK) {
        exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    } else {
        const char *name = strcmp(path, "-") == 0 ? "stdin" : path;
        double rate = elapsed > 0 ? (double)st.lines / elapsed : 0;
        printf("%s: %" PRIu64 " lines, %" PRIu64 " applied, %" PRIu64 " duplicates, %" PRIu64
               " rejected, %" PRIu64 " suppressed in %.2f s (%.0f lines/s)\n",
               name, st.lines, st.applied, st.duplicates, st.rejected, st.suppressed, elapsed,
               rate);
        if (st.rejected > 0)
            fprintf(stderr, "%s: %" PRIu64 " rejected lines written to %s\n", name, st.rejected,
                    opts.rejects_path);
        exit_code = CLI_OK;
        /* --skip-invalid is for the odd bad line: a file of nothing but bad
         * lines (the wrong file, a changed format) is a failure */
        if (st.rejected > 0 && st.rejected == st.lines)
            exit_code = cli_error(args->cmd,
                                  "%s: every line was rejected (%" PRIu64 "): nothing was applied",
                                  name, st.lines);
    }
    nbx_store_close(store);
    return exit_code;
}

int cli_run_import_profiles(cli_args *args)
{
    return run_import(args, NBX_IMPORT_PROFILES);
}

int cli_run_import_events(cli_args *args)
{
    return run_import(args, NBX_IMPORT_EVENTS);
}

/* ========================================================================
 * rfm rebuild
 * ======================================================================== */

static void print_cuts(const char *label, const double *cuts, bool json)
{
    if (json) {
        printf("\"%s\":[%.17g,%.17g,%.17g,%.17g]", label, cuts[0], cuts[1], cuts[2], cuts[3]);
        return;
    }
    printf("  %-14s %12.2f %12.2f %12.2f %12.2f\n", label, cuts[0], cuts[1], cuts[2], cuts[3]);
}

static void print_rfm_json(const nbx_rfm_stats *st, int64_t as_of)
{
    char when[NBX_TIME_BUFSZ];
    nbx_time_format(as_of, when);
    printf("{\"as_of\":\"%s\",\"customers\":%" PRIu64 ",\"scored\":%" PRIu64 ",\"cuts\":{", when,
           st->customers, st->scored);
    print_cuts("recency_days", st->recency_days, true);
    putchar(',');
    print_cuts("frequency", st->frequency, true);
    putchar(',');
    print_cuts("monetary", st->monetary, true);
    printf("},\"segments\":{");
    bool first = true;
    for (int s = 0; s < NBX_SEGMENT_COUNT; s++) {
        const char *name = nbx_segment_name(s);
        if (!name)
            continue;
        printf("%s\"%s\":%" PRIu64, first ? "" : ",", name, st->segments[s]);
        first = false;
    }
    printf("}}\n");
}

static void print_rfm_text(const nbx_rfm_stats *st, int64_t as_of)
{
    char when[NBX_TIME_BUFSZ];
    nbx_time_format(as_of, when);
    printf("as of:     %s\ncustomers: %" PRIu64 "\nscored:    %" PRIu64 "\n\n", when, st->customers,
           st->scored);
    printf("quintile cut points   %12s %12s %12s %12s\n", "20%", "40%", "60%", "80%");
    print_cuts("recency_days", st->recency_days, false);
    print_cuts("frequency", st->frequency, false);
    print_cuts("monetary", st->monetary, false);
    printf("\nsegments:\n");
    for (int s = 0; s < NBX_SEGMENT_COUNT; s++) {
        const char *name = nbx_segment_name(s);
        if (!name)
            continue;
        double pct = st->customers ? 100.0 * (double)st->segments[s] / (double)st->customers : 0.0;
        printf("  %-18s %12" PRIu64 " %6.1f%%\n", name, st->segments[s], pct);
    }
}

int cli_run_rfm_rebuild(cli_args *args)
{
    int exit_code;
    nbx_store *store = cli_open_store(args, 0, &exit_code);
    if (!store)
        return exit_code;
    int64_t as_of = cli_time(args, "as-of", 0);
    if (as_of == 0)
        as_of = nbx_time_now();
    nbx_rfm_stats st;
    memset(&st, 0, sizeof st);
    int rc = nbx_rfm_rebuild(store, as_of, &st);
    if (rc != NBX_OK) {
        exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    } else {
        if (cli_has(args, "json"))
            print_rfm_json(&st, as_of);
        else
            print_rfm_text(&st, as_of);
        exit_code = CLI_OK;
    }
    nbx_store_close(store);
    return exit_code;
}

/* ========================================================================
 * profile get, delete, put
 * ======================================================================== */

int cli_run_profile_get(cli_args *args)
{
    const char *id = args->positional[0];
    int exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_READONLY, &exit_code);
    if (!store)
        return exit_code;
    char *json = NULL;
    size_t len = 0;
    int rc = nbx_profile_get(store, id, &json, &len);
    if (rc == NBX_ENOTFOUND) {
        exit_code = cli_error(args->cmd, "no profile with id '%s'", id);
    } else if (rc != NBX_OK) {
        exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    } else {
        fwrite(json, 1, len, stdout);
        putchar('\n');
        exit_code = CLI_OK;
    }
    nbx_free(json);
    nbx_store_close(store);
    return exit_code;
}

/* Erasures per transaction: a list of millions of ids is not one
 * transaction too big for LMDB, and each committed batch stands. */
#define ERASE_BATCH 1000

typedef struct id_list {
    char **ids;
    size_t n, cap;
    char *owned; /* the text the ids of a file point into */
} id_list;

static int id_add(id_list *l, char *id)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **bigger = realloc(l->ids, cap * sizeof *bigger);
        if (!bigger)
            return -1;
        l->ids = bigger;
        l->cap = cap;
    }
    l->ids[l->n++] = id;
    return 0;
}

/* One id per line of path ("-": standard input); blank lines are skipped,
 * an id is refused here with its line when it cannot be one (empty after
 * trailing spaces or a CR, too long), before anything is erased. */
static int read_ids(cli_args *args, const char *path, id_list *l)
{
    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!in)
        return cli_error(args->cmd, "cannot open %s: %s", path, strerror(errno));
    const char *name = in == stdin ? "<stdin>" : path;
    char *text = NULL;
    size_t len = 0;
    int rc = cli_read_stream(in, (size_t)1 << 30, &text, &len);
    int err = errno;
    if (in != stdin)
        fclose(in);
    if (rc != 0)
        return cli_error(args->cmd, "reading %s: %s", name, strerror(err));
    l->owned = text;
    size_t line = 0;
    for (char *p = text; p < text + len;) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        char *end = nl ? nl : text + len;
        line++;
        while (end > p && (end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t'))
            end--;
        char *next = nl ? nl + 1 : text + len;
        if (end > p) {
            if (memchr(p, '\0', (size_t)(end - p)) || end - p > NBX_ID_MAX)
                return cli_error(args->cmd, "%s:%zu: not a customer id (1 to %d bytes, no NUL)",
                                 name, line, NBX_ID_MAX);
            *end = '\0';
            if (id_add(l, p) != 0)
                return cli_error(args->cmd, "out of memory");
        }
        p = next;
    }
    return CLI_OK;
}

int cli_run_profile_delete(cli_args *args)
{
    id_list l = {0};
    int exit_code = CLI_OK;
    const char *file = cli_string(args, "ids", NULL);
    bool stdin_used = file && strcmp(file, "-") == 0;
    for (size_t i = 0; exit_code == CLI_OK && i < args->n_positional; i++) {
        char *id = (char *)args->positional[i];
        if (strcmp(id, "-") == 0 && !stdin_used) {
            stdin_used = true;
            exit_code = read_ids(args, "-", &l);
        } else if (strcmp(id, "-") == 0) {
            exit_code = cli_usage_error(args->cmd, "standard input is given twice");
        } else if (id_add(&l, id) != 0) {
            exit_code = cli_error(args->cmd, "out of memory");
        }
    }
    char *owned_args = l.owned;
    l.owned = NULL;
    if (exit_code == CLI_OK && file)
        exit_code = read_ids(args, file, &l);
    if (exit_code == CLI_OK && args->n_positional == 0 && !file)
        exit_code = cli_usage_error(args->cmd, "no ids: give them as arguments, or --ids FILE");
    nbx_store *store = exit_code == CLI_OK ? cli_open_store(args, 0, &exit_code) : NULL;
    uint64_t records[ERASE_BATCH], erased = 0, held = 0;
    for (size_t from = 0; store && exit_code == CLI_OK && from < l.n; from += ERASE_BATCH) {
        size_t n = l.n - from < ERASE_BATCH ? l.n - from : ERASE_BATCH;
        int rc = nbx_profile_erase(store, (const char *const *)l.ids + from, n, records);
        if (rc != NBX_OK) {
            exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
            if (from > 0) /* the batches before this one are committed */
                cli_error(args->cmd, "the first %zu ids were erased", from);
            break;
        }
        /* one JSON object per id: ids are any UTF-8, and stay escaped */
        for (size_t i = 0; i < n; i++) {
            fputs("{\"id\":", stdout);
            cli_print_json_string(stdout, l.ids[from + i]);
            printf(",\"records\":%" PRIu64 "}\n", records[i]);
            held += records[i] > 0;
        }
        erased += n;
    }
    if (store && exit_code == CLI_OK)
        fprintf(stderr,
                "%" PRIu64 " ids erased (%" PRIu64 " of them held records) and suppressed "
                "until restored\n",
                erased, held);
    nbx_store_close(store);
    free(owned_args);
    free(l.owned);
    free(l.ids);
    return exit_code;
}

int cli_run_profile_restore(cli_args *args)
{
    const char *id = args->positional[0];
    int exit_code;
    nbx_store *store = cli_open_store(args, 0, &exit_code);
    if (!store)
        return exit_code;
    int rc = nbx_profile_restore(store, id);
    exit_code = rc == NBX_OK ? CLI_OK : cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    nbx_store_close(store);
    return exit_code;
}

int cli_run_profile_put(cli_args *args)
{
    const char *arg = args->positional[0];
    char *owned = NULL;
    const char *json = arg;
    size_t len = strlen(arg);
    if (strcmp(arg, "-") == 0) {
        if (cli_read_stream(stdin, NBX_LINE_MAX, &owned, &len) != 0)
            return cli_error(args->cmd, "reading standard input: %s",
                             errno == EFBIG ? "longer than the 1 MiB a profile may take"
                                            : strerror(errno));
        json = owned;
    }
    int exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_CREATE, &exit_code);
    if (store) {
        int rc = nbx_profile_put(store, json, len);
        exit_code = rc == NBX_OK ? CLI_OK : cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
        nbx_store_close(store);
    }
    free(owned);
    return exit_code;
}

/* ========================================================================
 * export profiles
 * ======================================================================== */

static int export_to(cli_args *args, nbx_store *store, FILE *out, const char *out_name,
                     uint64_t *count)
{
    nbx_iter *it = NULL;
    int rc = nbx_iter_open(store, 0, NULL, &it);
    if (rc != NBX_OK)
        return cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    int exit_code = CLI_OK;
    for (;;) {
        const char *id, *json;
        size_t len;
        rc = nbx_iter_next(it, &id, &json, &len);
        if (rc == NBX_DONE)
            break;
        if (rc != NBX_OK) {
            exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
            break;
        }
        if (fwrite(json, 1, len, out) != len || putc('\n', out) == EOF) {
            exit_code = cli_error(args->cmd, "writing %s: %s", out_name, strerror(errno));
            break;
        }
        (*count)++;
    }
    nbx_iter_close(it);
    return exit_code;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* --out must not name a file of the store: the export would replace
 * data.mdb (the store lost) or lock.mdb. Compared by inode, so a link or
 * another spelling of the path is caught too. */
static int check_out_is_not_the_store(cli_args *args, const char *out_path, const struct stat *out)
{
    static const char *const store_files[] = {"data.mdb", "lock.mdb"};
    for (size_t i = 0; i < sizeof store_files / sizeof store_files[0]; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", cli_store_path(args), store_files[i]);
        if (stat(path, &st) == 0 && same_inode(out, &st))
            return cli_usage_error(args->cmd,
                                   "--out %s is the store's %s: it would be overwritten; "
                                   "choose another file",
                                   out_path, store_files[i]);
    }
    return CLI_OK;
}

int cli_out_open(cli_args *args, cli_out *t)
{
    struct stat st;
    bool exists = stat(t->path, &st) == 0;
    if (!exists && errno != ENOENT)
        return cli_error(args->cmd, "cannot create %s: %s", t->path, strerror(errno));
    int exit_code = exists ? check_out_is_not_the_store(args, t->path, &st) : CLI_OK;
    if (exit_code != CLI_OK)
        return exit_code;
    struct stat lst;
    bool dangling = !exists && lstat(t->path, &lst) == 0;
    if ((exists && !S_ISREG(st.st_mode)) || dangling) {
        t->out = fopen(t->path, "w");
        if (!t->out)
            return cli_error(args->cmd, "cannot create %s: %s", t->path, strerror(errno));
        return CLI_OK;
    }
    /* Through a symbolic link the rename must replace the file it names. */
    t->final = exists ? realpath(t->path, NULL) : strdup(t->path);
    if (!t->final)
        return cli_error(args->cmd, "cannot create %s: %s", t->path, strerror(errno));
    char *dir = dir_of(t->final);
    if (!dir || asprintf(&t->temp, "%s/.nbx-export-XXXXXX", dir) < 0)
        t->temp = NULL;
    free(dir);
    if (!t->temp)
        return cli_error(args->cmd, "cannot create %s: %s", t->path, strerror(ENOMEM));
    int fd = mkstemp(t->temp);
    if (fd < 0) {
        int err = errno;
        free(t->temp);
        t->temp = NULL;
        return cli_error(args->cmd, "cannot create %s: %s", t->path, strerror(err));
    }
    /* mkstemp makes 0600; keep the mode of the file replaced, or what a new
     * file would get. */
    mode_t mode;
    if (exists) {
        mode = st.st_mode & 07777;
    } else {
        mode_t mask = umask(0);
        umask(mask);
        mode = 0666 & ~mask;
    }
    if (fchmod(fd, mode) != 0 || !(t->out = fdopen(fd, "w"))) {
        int err = errno;
        close(fd);
        unlink(t->temp);
        free(t->temp);
        t->temp = NULL;
        return cli_error(args->cmd, "cannot create %s: %s", t->path, strerror(err));
    }
    return CLI_OK;
}

/* Close the output; on success move the temporary file into place, on
 * failure remove it (and nothing else). */
int cli_out_close(cli_args *args, cli_out *t, int exit_code)
{
    if (fflush(t->out) != 0 && exit_code == CLI_OK)
        exit_code = cli_error(args->cmd, "writing %s: %s", t->path, strerror(errno));
    if (t->temp && exit_code == CLI_OK && fsync(fileno(t->out)) != 0)
        exit_code = cli_error(args->cmd, "writing %s: %s", t->path, strerror(errno));
    if (fclose(t->out) != 0 && exit_code == CLI_OK)
        exit_code = cli_error(args->cmd, "writing %s: %s", t->path, strerror(errno));
    if (t->temp) {
        if (exit_code == CLI_OK && rename(t->temp, t->final) != 0)
            exit_code = cli_error(args->cmd, "cannot replace %s: %s", t->path, strerror(errno));
        if (exit_code != CLI_OK)
            unlink(t->temp);
    }
    free(t->temp);
    free(t->final);
    return exit_code;
}

int cli_run_export_profiles(cli_args *args)
{
    int exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_READONLY, &exit_code);
    if (!store)
        return exit_code;
    cli_out target = {.path = cli_string(args, "out", NULL), .out = stdout};
    if (target.path && (exit_code = cli_out_open(args, &target)) != CLI_OK) {
        free(target.final); /* cli_out_open frees its temporary name itself */
        nbx_store_close(store);
        return exit_code;
    }
    static char buffer[1 << 20];
    setvbuf(target.out, buffer, _IOFBF, sizeof buffer);
    uint64_t count = 0;
    exit_code =
        export_to(args, store, target.out, target.path ? target.path : "standard output", &count);
    if (target.path) {
        exit_code = cli_out_close(args, &target, exit_code);
        if (exit_code == CLI_OK)
            fprintf(stderr, "%s: %" PRIu64 " profiles\n", target.path, count);
    }
    nbx_store_close(store);
    return exit_code;
}

/* ========================================================================
 * stats
 * ======================================================================== */

int cli_run_stats(cli_args *args)
{
    int exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_READONLY, &exit_code);
    if (!store)
        return exit_code;
    nbx_store_stats st;
    memset(&st, 0, sizeof st);
    int rc = nbx_store_stat(store, &st);
    if (rc != NBX_OK) {
        exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
        nbx_store_close(store);
        return exit_code;
    }
    char rfm[NBX_TIME_BUFSZ] = "never";
    if (st.rfm_as_of)
        nbx_time_format(st.rfm_as_of, rfm);
    if (cli_has(args, "json")) {
        printf("{\"profiles\":%" PRIu64 ",\"exposure_keys\":%" PRIu64 ",\"events_seen\":%" PRIu64
               ",\"bytes_used\":%" PRIu64 ",\"map_size\":%" PRIu64 ",\"schema_version\":%" PRIu32
               ",\"rfm_as_of\":",
               st.profiles, st.exposure_keys, st.events_seen, st.bytes_used, st.map_size,
               st.schema_version);
        if (st.rfm_as_of)
            printf("\"%s\"", rfm);
        else
            printf("null");
        printf(",\"arms\":");
        exit_code = cli_print_arm_counters(args, store, stdout, true);
        printf("}\n");
    } else {
        printf("store:          %s\n"
               "profiles:       %" PRIu64 "\n"
               "exposure keys:  %" PRIu64 "\n"
               "events seen:    %" PRIu64 "\n"
               "bytes used:     %" PRIu64 " (%.1f MiB)\n"
               "map size:       %" PRIu64 " (%.1f MiB)\n"
               "schema version: %" PRIu32 "\n"
               "rfm as of:      %s\n",
               cli_store_path(args), st.profiles, st.exposure_keys, st.events_seen, st.bytes_used,
               (double)st.bytes_used / 1048576.0, st.map_size, (double)st.map_size / 1048576.0,
               st.schema_version, rfm);
        exit_code = cli_print_arm_counters(args, store, stdout, false);
    }
    nbx_store_close(store);
    return exit_code;
}

/* ========================================================================
 * store compact, store upgrade
 * ======================================================================== */

int cli_run_store_compact(cli_args *args)
{
    const char *out = cli_string(args, "out", NULL);
    if (!cli_store_path(args))
        return CLI_USAGE;
    if (!out)
        return cli_usage_error(args->cmd, "--out DIR is required");
    int exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_READONLY, &exit_code);
    if (!store)
        return exit_code;
    int rc = nbx_store_compact(store, out);
    if (rc == NBX_EINVAL)
        exit_code = cli_usage_error(args->cmd, "%s", nbx_store_errmsg(store));
    else if (rc != NBX_OK)
        exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    else
        fprintf(stderr, "%s: compacted copy of %s\n", out, cli_store_path(args));
    nbx_store_close(store);
    return exit_code;
}

int cli_run_store_upgrade(cli_args *args)
{
    const char *path = cli_store_path(args);
    if (!path)
        return CLI_USAGE;
    uint32_t from, to;
    int rc = nbx_store_upgrade(path, &from, &to);
    if (rc != NBX_OK)
        return cli_nbx_error(args->cmd, rc, nbx_last_errmsg());
    if (from == to)
        printf("%s: format %" PRIu32 ", nothing to do\n", path, to);
    else
        printf("%s: format %" PRIu32 " -> %" PRIu32 "\n", path, from, to);
    return CLI_OK;
}
