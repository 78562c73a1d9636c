/*
 * checkpoint.c: the checkpoint protocol of nbx batch (batch.h), which lets a
 * killed run resume with every customer in the output exactly once.
 *
 * Every --checkpoint-every customers, the output is flushed and fsync'ed,
 * then a small text file records how many output bytes are committed, where
 * in the input the last written customer ended and the running totals; it
 * is written to FILE.tmp, fsync'ed and renamed over FILE. On a rerun the
 * output is truncated to the committed bytes and the input resumes after the
 * committed customer (batch.c opens both from what checkpoint_load() read).
 * Anything written after the last checkpoint is cut off and decided again.
 * One run at a time holds FILE.lock (checkpoint_lock()), so two runs never
 * share FILE.tmp or the output.
 */
#include "batch.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECKPOINT_MAX (64u << 10)
/* 2: input_hash, time_limit_us and memory_limit. */
#define CHECKPOINT_VERSION 2
#define CHECKPOINT_VERSION_TEXT "2"

/* ========================================================================
 * Checkpoint file: "key value" lines, values percent-encoded
 * ======================================================================== */

static void put_encoded(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= ' ' || *p >= 0x7f || *p == '%' || *p == ',')
            fprintf(f, "%%%02X", *p);
        else
            fputc(*p, f);
    }
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decode in place; false on a bad escape. */
static bool decode_in_place(char *s)
{
    char *w = s;
    for (char *p = s; *p; p++) {
        if (*p != '%') {
            *w++ = *p;
            continue;
        }
        int hi = hex_value(p[1]), lo = hi < 0 ? -1 : hex_value(p[2]);
        if (hi < 0 || lo < 0)
            return false;
        *w++ = (char)(hi * 16 + lo);
        p += 2;
    }
    *w = '\0';
    return true;
}

/* An absolute form of a path, without resolving links: what the user
 * typed, made independent of the directory the rerun starts in. */
static char *absolute_path(const char *path)
{
    if (!path)
        return strdup("");
    if (path[0] == '/' || strcmp(path, "-") == 0)
        return strdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return strdup(path);
    while (path[0] == '.' && path[1] == '/')
        path += 2;
    size_t n = strlen(cwd) + strlen(path) + 2;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s/%s", cwd, path);
    return out;
}

/* The parameters that must match for a resume, in the order written. */
static void write_params(run *r, FILE *f)
{
    char *store = absolute_path(r->store_path);
    char *input = r->all ? strdup("--all") : absolute_path(r->customers_path);
    char *out = absolute_path(r->out_path);
    fprintf(f, "store ");
    put_encoded(f, store ? store : "");
    fprintf(f, "\ncatalog_version %s\npolicy_version %s\ninput ", r->info.catalog_version,
            r->info.policy_version);
    put_encoded(f, input ? input : "");
    fprintf(f, "\nplacements ");
    const cli_value *pl = cli_flag_value(r->args, "placement");
    for (size_t i = 0; i < pl->n_list; i++) {
        if (i)
            fputc(',', f);
        put_encoded(f, pl->list[i]);
    }
    fprintf(f, "\nsession ");
    for (size_t i = 0; i < r->n_session; i++) {
        if (i)
            fputc(',', f);
        put_encoded(f, r->session[i].key);
        fputs("%3D", f);
        put_encoded(f, r->session[i].value);
    }
    if (r->shard_count)
        fprintf(f, "\nshard %" PRIu32 "/%" PRIu32, r->shard_index, r->shard_count);
    else
        fprintf(f, "\nshard -");
    /* commit_exposures: --record's old name, kept so that a run started by
     * an older nbx resumes. */
    fprintf(f, "\nformat %s\ncommit_exposures %d\nexplain %d\nout ", r->csv ? "csv" : "jsonl",
            r->record, r->explain);
    put_encoded(f, out ? out : "");
    /* The policy's limits change decisions too: a decision that runs out of
     * time or memory falls back. */
    fprintf(f, "\ntime_limit_us %" PRIu64 "\nmemory_limit %" PRIu64,
            cli_uint(r->args, "time-limit-us", 0), cli_uint(r->args, "memory-limit", 0));
    fprintf(f, "\nas_of %" PRId64 "\n", r->as_of);
    free(store);
    free(input);
    free(out);
}

static void write_totals(FILE *f, const char *prefix, const totals *t)
{
    fprintf(f,
            "%scustomers %" PRIu64 "\n%sdecided %" PRIu64 "\n%sfailed %" PRIu64
            "\n%sfallbacks %" PRIu64 "\n%sanonymous %" PRIu64 "\n%sactions %" PRIu64
            "\n%smalformed %" PRIu64 "\n%sother_shard %" PRIu64 "\n%sexpected_margin %.17g\n"
            "%selapsed %.3f\n",
            prefix, t->customers, prefix, t->decided, prefix, t->failed, prefix, t->fallbacks,
            prefix, t->anonymous, prefix, t->actions, prefix, t->malformed, prefix, t->other_shard,
            prefix, t->expected_margin, prefix, t->elapsed);
    for (int i = 1; i < NBX_EXCLUDED_COUNT; i++)
        fprintf(f, "%sexcluded.%s %" PRIu64 "\n", prefix, nbx_excluded_name(i), t->exclusions[i]);
}

/* Totals as of the last item written: the checkpoint's base plus this
 * run's batch statistics (which count exactly the items taken). */
void checkpoint_totals(run *r, const position *p, totals *t)
{
    *t = r->base;
    nbx_batch_stats st;
    memset(&st, 0, sizeof st);
    if (r->batch)
        nbx_batch_stats_get(r->batch, &st);
    t->customers += st.taken;
    t->decided += st.decided;
    t->failed += st.failed;
    t->fallbacks += st.fallbacks;
    t->anonymous += st.anonymous;
    t->actions += st.actions;
    t->expected_margin += st.expected_margin;
    for (int i = 0; i < NBX_EXCLUDED_COUNT; i++)
        t->exclusions[i] += st.exclusions[i];
    t->malformed += p->malformed;
    t->other_shard += p->other_shard;
    t->elapsed += cli_now_seconds() - r->started;
}

static int fsync_directory_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    char *slash = strrchr(copy, '/');
    const char *dir = ".";
    if (slash == copy)
        dir = "/";
    else if (slash) {
        *slash = '\0';
        dir = copy;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd < 0 ? -1 : fsync(fd);
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

/* Extend the customer file's prefix hash to its first `offset` bytes.
 * Returns 0, 1 if the file ends before `offset`, -1 on a read error. */
int checkpoint_hash_input_to(run *r, uint64_t offset)
{
    char buf[1 << 16];
    while (r->input_hashed < offset) {
        uint64_t left = offset - r->input_hashed;
        size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
        ssize_t got = pread(r->in.fd, buf, want, (off_t)r->input_hashed);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            return 1;
        XXH64_update(&r->input_hash, buf, (size_t)got);
        r->input_hashed += (uint64_t)got;
    }
    return 0;
}

/* Commit the output written so far and record it. */
int checkpoint_write(run *r, const position *p, const char *after_id, bool complete)
{
    if (fflush(r->out) != 0 || fdatasync(fileno(r->out)) != 0)
        return cli_error(r->cmd, "%s: %s", r->out_path, strerror(errno));
    const char *tmp = r->checkpoint_tmp;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return cli_error(r->cmd, "%s: %s", tmp, strerror(errno));
    int hrc = r->all ? 0 : checkpoint_hash_input_to(r, p->input_offset);
    if (hrc != 0) {
        int rc = cli_error(r->cmd, "%s: %s", r->in.path,
                           hrc < 0 ? strerror(errno) : "changed while it was being read");
        fclose(f);
        unlink(tmp);
        return rc;
    }
    totals t;
    checkpoint_totals(r, p, &t);
    fprintf(f, "nbx-batch-checkpoint %d\n", CHECKPOINT_VERSION);
    write_params(r, f);
    fprintf(f,
            "complete %d\noutput_offset %" PRIu64 "\ninput_offset %" PRIu64 "\ninput_line %" PRIu64
            "\n",
            complete, r->out_bytes, p->input_offset, p->input_line);
    if (r->all)
        fprintf(f, "input_hash -\n");
    else
        fprintf(f, "input_hash %016" PRIx64 "\n", (uint64_t)XXH64_digest(&r->input_hash));
    fprintf(f, "after_id ");
    put_encoded(f, after_id);
    fputc('\n', f);
    write_totals(f, "total.", &t);
    int rc = CLI_OK;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        rc = cli_error(r->cmd, "%s: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && rc == CLI_OK)
        rc = cli_error(r->cmd, "%s: %s", tmp, strerror(errno));
    if (rc == CLI_OK && rename(tmp, r->checkpoint_path) != 0)
        rc = cli_error(r->cmd, "renaming %s: %s", tmp, strerror(errno));
    if (rc == CLI_OK)
        fsync_directory_of(r->checkpoint_path);
    r->since_checkpoint = 0;
    return rc;
}

/* ------------------------------------------------------------------------
 * One run per checkpoint
 *
 * Two processes on one checkpoint (a resume started while the killed run
 * still lives: `kill -9` of a shell wrapper leaves its nbx running) write
 * the same output and rename each other's FILE.tmp ("renaming FILE.tmp: No
 * such file or directory"). So a run holds an exclusive lock on FILE.lock
 * from before it reads the checkpoint until it exits; a second run waits
 * for the first to stop, then reads what it left: a finished run ("already
 * complete"), or a checkpoint to resume from. The kernel drops the lock when
 * its holder dies, however it dies. The holder removes the file when it is
 * done, so a waiter that gets the lock checks that the file it locked is
 * still the one at the path (else it locks again).
 * ------------------------------------------------------------------------ */

int checkpoint_lock(run *r)
{
    const char *path = r->checkpoint_lock;
    bool told = false;
    for (;;) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return cli_error(r->cmd, "%s: %s", path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK) {
                int rc = cli_error(r->cmd, "locking %s: %s", path, strerror(errno));
                close(fd);
                return rc;
            }
            if (!told) {
                char pid[32] = "";
                ssize_t got = pread(fd, pid, sizeof pid - 1, 0);
                pid[got > 0 ? got : 0] = '\0';
                pid[strcspn(pid, "\n")] = '\0';
                fprintf(stderr,
                        "nbx batch: %s is in use by another nbx batch%s%s%s; waiting for it to "
                        "stop\n",
                        r->checkpoint_path, *pid ? " (pid " : "", pid, *pid ? ")" : "");
                told = true;
            }
            int rc;
            while ((rc = flock(fd, LOCK_EX)) != 0 && errno == EINTR)
                ;
            if (rc != 0) {
                rc = cli_error(r->cmd, "locking %s: %s", path, strerror(errno));
                close(fd);
                return rc;
            }
        }
        struct stat held, now;
        if (fstat(fd, &held) == 0 && stat(path, &now) == 0 && held.st_dev == now.st_dev &&
            held.st_ino == now.st_ino) {
            char pid[32];
            int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
            bool noted = ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) == n;
            (void)noted; /* the pid only serves a waiter's message */
            r->lock_fd = fd;
            return CLI_OK;
        }
        close(fd); /* its holder removed it on the way out: lock the new one */
    }
}

void checkpoint_unlock(run *r)
{
    if (r->lock_fd < 0)
        return;
    unlink(r->checkpoint_lock);
    close(r->lock_fd);
    r->lock_fd = -1;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return false;
    *out = v;
    return true;
}

static bool parse_input_hash(const char *s, checkpoint *ck)
{
    if (strcmp(s, "-") == 0)
        return true;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 16);
    if (errno || strlen(s) != 16 || *end)
        return false;
    ck->input_hash = v;
    ck->have_input_hash = true;
    return true;
}

static bool read_total(const char *key, const char *value, totals *t)
{
    struct {
        const char *name;
        uint64_t *field;
    } fields[] = {{"customers", &t->customers}, {"decided", &t->decided},
                  {"failed", &t->failed},       {"fallbacks", &t->fallbacks},
                  {"anonymous", &t->anonymous}, {"actions", &t->actions},
                  {"malformed", &t->malformed}, {"other_shard", &t->other_shard}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strcmp(key, fields[i].name) == 0)
            return parse_u64(value, fields[i].field);
    if (strcmp(key, "expected_margin") == 0 || strcmp(key, "elapsed") == 0) {
        char *end;
        double d = strtod(value, &end);
        if (end == value || *end)
            return false;
        *(strcmp(key, "elapsed") == 0 ? &t->elapsed : &t->expected_margin) = d;
        return true;
    }
    if (strncmp(key, "excluded.", 9) == 0) {
        for (int i = 1; i < NBX_EXCLUDED_COUNT; i++)
            if (strcmp(key + 9, nbx_excluded_name(i)) == 0)
                return parse_u64(value, &t->exclusions[i]);
    }
    return false;
}

/* Read FILE and compare its parameters with this run's. Returns CLI_OK
 * with *found false when there is no checkpoint yet. */
int checkpoint_load(run *r, checkpoint *ck, bool *found)
{
    memset(ck, 0, sizeof *ck);
    *found = false;
    FILE *f = fopen(r->checkpoint_path, "r");
    if (!f) {
        if (errno == ENOENT)
            return CLI_OK;
        return cli_error(r->cmd, "%s: %s", r->checkpoint_path, strerror(errno));
    }
    size_t len = 0;
    int rrc = cli_read_stream(f, CHECKPOINT_MAX, &ck->text, &len);
    fclose(f);
    if (rrc != 0)
        return cli_error(r->cmd, "%s: %s", r->checkpoint_path, strerror(errno));

    /* This run's parameters, rendered the same way. The as_of of a run that
     * did not give --as-of is the checkpoint's: a resumed run keeps its clock. */
    char *mine = NULL;
    size_t mine_len = 0;
    FILE *m = open_memstream(&mine, &mine_len);
    if (!m)
        return cli_error(r->cmd, "out of memory");
    write_params(r, m);
    fclose(m);

    int rc = CLI_OK;
    bool header = false, have_offsets = false;
    char *save = NULL, *mine_save = NULL;
    char *mine_line = strtok_r(mine, "\n", &mine_save);
    for (char *line = strtok_r(ck->text, "\n", &save); line && rc == CLI_OK;
         line = strtok_r(NULL, "\n", &save)) {
        char *value = strchr(line, ' ');
        if (value)
            *value++ = '\0';
        else
            value = line + strlen(line);
        if (!header) {
            if (strcmp(line, "nbx-batch-checkpoint") != 0)
                rc = cli_error(r->cmd, "%s: not an nbx batch checkpoint", r->checkpoint_path);
            else if (strcmp(value, CHECKPOINT_VERSION_TEXT) != 0)
                rc = cli_error(r->cmd,
                               "%s: a checkpoint of version %s, this nbx reads version %d; "
                               "finish the run with the nbx that started it, or delete %s to "
                               "start over",
                               r->checkpoint_path, value, CHECKPOINT_VERSION, r->checkpoint_path);
            header = true;
            continue;
        }
        if (mine_line) {
            /* Parameters come first, in write_params() order. */
            char *mine_value = strchr(mine_line, ' ');
            *mine_value++ = '\0';
            if (strcmp(line, mine_line) != 0) {
                rc = cli_error(r->cmd, "%s: unexpected line '%s'", r->checkpoint_path, line);
            } else if (strcmp(line, "as_of") == 0 && !r->as_of_given) {
                uint64_t v = 0;
                if (!parse_u64(value, &v) || v > INT64_MAX)
                    rc = cli_error(r->cmd, "%s: bad as_of '%s'", r->checkpoint_path, value);
                else
                    r->as_of = (int64_t)v;
            } else if (strcmp(value, mine_value) != 0) {
                decode_in_place(value);
                decode_in_place(mine_value);
                rc = cli_error(r->cmd,
                               "%s was written by a different command: %s was '%s', now '%s'; "
                               "rerun the same command to resume, or delete %s to start over",
                               r->checkpoint_path, line, value, mine_value, r->checkpoint_path);
            }
            mine_line = strtok_r(NULL, "\n", &mine_save);
            continue;
        }
        bool ok = true;
        if (strcmp(line, "complete") == 0)
            ck->complete = strcmp(value, "1") == 0;
        else if (strcmp(line, "output_offset") == 0)
            ok = parse_u64(value, &ck->output_offset), have_offsets = true;
        else if (strcmp(line, "input_offset") == 0)
            ok = parse_u64(value, &ck->input_offset);
        else if (strcmp(line, "input_line") == 0)
            ok = parse_u64(value, &ck->input_line);
        else if (strcmp(line, "input_hash") == 0)
            ok = parse_input_hash(value, ck);
        else if (strcmp(line, "after_id") == 0)
            ok = decode_in_place(value), ck->after_id = value;
        else if (strncmp(line, "total.", 6) == 0)
            ok = read_total(line + 6, value, &ck->totals);
        else
            ok = false;
        if (!ok)
            rc = cli_error(r->cmd, "%s: bad line '%s %s'", r->checkpoint_path, line, value);
    }
    free(mine);
    if (rc == CLI_OK &&
        (!header || mine_line || !have_offsets || (!r->all && !ck->have_input_hash)))
        rc = cli_error(r->cmd, "%s: truncated checkpoint", r->checkpoint_path);
    if (rc == CLI_OK)
        *found = true;
    return rc;
}
