/*
 * batch.h: what the files of nbx batch share: batch.c, the run (input,
 * output, summary, progress), and checkpoint.c, the checkpoint protocol that
 * makes a run resumable. Private to these two files.
 */
#ifndef NBX_CLI_BATCH_H
#define NBX_CLI_BATCH_H

#include "cli.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* The streaming XXH64 of libxxhash (a build dependency of the library),
 * header-only: the customer file's fingerprint in the checkpoint. */
#define XXH_INLINE_ALL
#include <xxhash.h>

/* ========================================================================
 * State (batch.c)
 * ======================================================================== */

/* Distinct fallback reasons the summary lists (the rest are counted). */
#define FALLBACK_REASONS_MAX 5
#define FALLBACK_REASON_LEN 300

/* Where an item came from, for the checkpoint: recorded at submission,
 * read back when the item is written. */
typedef struct position {
    uint64_t input_offset; /* byte after the customer's line */
    uint64_t input_line;
    uint64_t malformed; /* lines skipped before it, this run */
    uint64_t other_shard;
} position;

/* Totals that survive a resume. */
typedef struct totals {
    uint64_t customers, decided, failed, fallbacks, anonymous, actions, malformed, other_shard;
    uint64_t exclusions[NBX_EXCLUDED_COUNT];
    double expected_margin;
    double elapsed;
} totals;

/* Why decisions fell back, this run: the most frequent first in the
 * summary. The first FALLBACK_REASONS_MAX distinct messages are kept. */
typedef struct fallback_reasons {
    size_t n;
    struct {
        char text[FALLBACK_REASON_LEN];
        char first_customer[NBX_ID_MAX + 1];
        uint64_t count;
    } reason[FALLBACK_REASONS_MAX];
    uint64_t other; /* fallbacks with another message */
} fallback_reasons;

typedef struct reader {
    const char *path;
    int fd;
    char *buf;
    size_t cap, start, end;
    bool eof;
    uint64_t offset; /* file offset of buf[start] */
    uint64_t line;   /* number of the last line returned */
    uint64_t size;   /* 0 if unknown (a pipe) */
    bool at_start;   /* opened at offset 0: line 1 may start with a BOM */
} reader;

typedef struct run {
    cli_args *args;
    const cli_command *cmd;
    /* parameters */
    const char *store_path, *catalog_path, *policy_path, *customers_path, *out_path;
    const char *checkpoint_path, *summary_path;
    char *checkpoint_tmp;  /* checkpoint_path + ".tmp", where it is written first */
    char *checkpoint_lock; /* checkpoint_path + ".lock", held for the whole run */
    int lock_fd;           /* -1: no lock held */
    bool all, csv, record, explain;
    uint32_t shard_index, shard_count;
    int64_t as_of;
    bool as_of_given;
    nbx_kv session[NBX_REQUEST_SESSION_MAX];
    size_t n_session;
    uint64_t checkpoint_every;
    double max_fallback_rate; /* fallbacks / decided allowed before CLI_FALLBACKS */
    nbx_engine_info info;
    char as_of_text[NBX_TIME_BUFSZ];
    /* resources */
    nbx_engine *engine;
    nbx_batch *batch;
    nbx_iter *iter;
    reader in;
    FILE *out;
    position *ring;
    size_t window;
    /* progress */
    uint64_t queued;    /* items submitted this run */
    uint64_t malformed; /* this run */
    uint64_t other_shard;
    uint64_t out_bytes; /* committed before this run + written since */
    totals base;        /* from the checkpoint */
    position last;      /* of the last item written */
    char last_id[NBX_ID_MAX + 1];
    uint64_t since_checkpoint;
    fallback_reasons fallbacks;
    /* xxh64 of the customer file's first input_hashed bytes: a resume
     * checks that the part already decided is still the same. */
    XXH64_state_t input_hash;
    uint64_t input_hashed;
    double started;
    double next_progress;
    bool progress_shown;
    bool tty;                /* standard error is a terminal: show progress */
    uint64_t expected_total; /* customers, for the progress bar; 0 unknown */
} run;

/* ========================================================================
 * The checkpoint (checkpoint.c)
 * ======================================================================== */

/* A checkpoint as read back by checkpoint_load(). */
typedef struct checkpoint {
    char *text; /* owns the strings below */
    bool complete;
    uint64_t output_offset, input_offset, input_line;
    uint64_t input_hash;
    bool have_input_hash;
    const char *after_id;
    totals totals;
} checkpoint;

/* Totals as of the item at p: the checkpoint's base plus this run's batch
 * statistics. */
void checkpoint_totals(run *r, const position *p, totals *t);
/* Extend the customer file's prefix hash to its first `offset` bytes.
 * Returns 0, 1 if the file ends before `offset`, -1 on a read error. */
int checkpoint_hash_input_to(run *r, uint64_t offset);
/* Commit the output written so far (up to the item at p, whose id is
 * after_id) and record it in the checkpoint file. CLI_OK or CLI_FAIL (said). */
int checkpoint_write(run *r, const position *p, const char *after_id, bool complete);
/* Hold FILE.lock for the run, waiting for another run that holds it;
 * checkpoint_unlock() releases and removes it (nothing if not held). */
int checkpoint_lock(run *r);
void checkpoint_unlock(run *r);
/* Read the checkpoint file and compare its parameters with this run's.
 * CLI_OK with *found false when there is none yet; ck->text owns its
 * strings (the caller frees it). */
int checkpoint_load(run *r, checkpoint *ck, bool *found);

#endif /* NBX_CLI_BATCH_H */
