/**
 * @file nbx.h
 * @brief nbx: a next-best-action engine.
 *
 * For one customer in one session, nbx decides which offers and onsite
 * modules to show, ranked by expected contribution margin per session, under
 * hard guardrails (discount ceilings, margin floors, budgets) and frequency
 * limits. Customer profiles live in an LMDB store; the ranking logic is a
 * marketer-written Lua policy run in a sandbox that cannot escape, hang or
 * crash the host.
 *
 * This header is the whole public interface: what is not declared here is
 * not API. Every function is documented where it is declared.
 *
 * @section conventions Conventions
 * - Every fallible function returns an int: #NBX_OK (0) on success or a
 *   negative `NBX_E*` code. nbx_strerror() gives static text for a code; the
 *   handle's errmsg function gives the detail of the last failure (file:line,
 *   field, offer id), and nbx_last_errmsg() the calling thread's last failure
 *   on any handle, including a failed open.
 * - Handles are opaque. `nbx_*_close(NULL)` and `nbx_free(NULL)` are no-ops.
 * - Strings are UTF-8 and NUL-terminated unless a length is passed with them.
 * - Times are milliseconds since the Unix epoch, UTC (int64_t).
 *
 * @section threads Threads
 * - #nbx_store and #nbx_engine are shared by threads: every function on them
 *   may be called concurrently. Writes to one store are serialised by LMDB's
 *   single writer lock.
 * - #nbx_ctx (a decision context: its own Lua state and read transaction) is
 *   never used by two threads at once. You may pass it from one thread to
 *   another between calls. Open one per thread.
 * - Results returned by nbx_decide() belong to the context and are valid until
 *   the next call on that context.
 *
 * @section reload Policy and catalog reload
 * nbx_engine_load_policy() and nbx_engine_load_catalog() swap atomically:
 * each decision sees exactly one (policy, catalog) pair, decisions already
 * running finish on the version they started with, and a file that fails to
 * load is rejected while the previous version keeps serving.
 *
 * @section caveats Caveats
 * - Nothing survives fork(): open stores, engines and contexts after fork(),
 *   in the process that uses them (in nginx: init_process, not at
 *   configuration time). A handle inherited through fork() must not be used
 *   or closed by the child.
 * - A store directory may be opened by several processes at once (LMDB's
 *   lock file coordinates them), but not over a network file system.
 * - Long-lived read access (an nbx_iter left open) keeps old pages alive and
 *   makes the store file grow while writers run; iterators renew their
 *   snapshot every few thousand records for that reason.
 */
#ifndef NBX_H
#define NBX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(NBX_BUILDING_LIBRARY) && defined(__GNUC__)
#define NBX_API __attribute__((visibility("default")))
#else
#define NBX_API
#endif

/* ========================================================================
 * Version
 * ======================================================================== */

#define NBX_VERSION_MAJOR 0
#define NBX_VERSION_MINOR 2
#define NBX_VERSION_PATCH 0
/** 0xXXYYZZ: major, minor, patch. */
#define NBX_VERSION_NUM                                                        \
    ((NBX_VERSION_MAJOR << 16) | (NBX_VERSION_MINOR << 8) | NBX_VERSION_PATCH)
#define NBX_VERSION_STRING "0.2.0"

/**
 * @brief Version of the library actually linked.
 * @param[out] num if not NULL, receives the library's NBX_VERSION_NUM.
 * @return static string such as "0.2.0".
 * @note Thread-safe.
 */
NBX_API const char *nbx_version(int *num);

/**
 * @brief ABI marker: exists only in libraries compatible with this header's
 * major version, so a mismatched library fails at link time. Bindings that
 * load the library dynamically may call it to check.
 * @note Thread-safe; does nothing.
 */
NBX_API void nbx_abi_v0(void);

/* ========================================================================
 * Errors
 * ======================================================================== */

/** Status codes. Success is 0, errors are negative. */
enum nbx_status {
    NBX_OK = 0,         /**< success */
    NBX_DONE = 1,       /**< iteration finished (not an error) */
    NBX_EINVAL = -1,    /**< invalid argument or API misuse (NULL handle, ...) */
    NBX_ENOMEM = -2,    /**< out of memory */
    NBX_EIO = -3,       /**< the operating system refused a file operation */
    NBX_ENOTFOUND = -4, /**< no such profile, file or key */
    NBX_ECORRUPT = -5,  /**< a stored value cannot be decoded */
    NBX_EVERSION = -6,  /**< the store has a format this nbx does not read */
    NBX_EPARSE = -7,    /**< malformed input: JSON, catalog, event, profile, time */
    NBX_EPOLICY = -8,   /**< a policy failed to load */
    NBX_ESTORE = -9,    /**< the store (LMDB) failed */
    NBX_EFULL = -10,    /**< the store reached its size limit */
    NBX_ELIMIT = -11,   /**< a configured bound was exceeded (size, count) */
    NBX_EREADONLY = -12 /**< a write on a store or engine opened read-only */
};

/**
 * @brief Static text for a status code.
 * @return never NULL; "unknown error" for codes nbx does not define.
 * @note Thread-safe.
 */
NBX_API const char *nbx_strerror(int code);

/**
 * @brief Detail of the calling thread's last failed nbx call, whatever the
 * handle: use it when an open function fails and no handle exists.
 * @return never NULL; "" when nothing failed yet. Valid until the calling
 * thread's next nbx call.
 * @note Thread-safe: each thread has its own message.
 */
NBX_API const char *nbx_last_errmsg(void);

/**
 * @brief Free memory nbx returned to the caller (JSON strings).
 * @note Thread-safe. NULL is a no-op.
 */
NBX_API void nbx_free(void *ptr);

/* ========================================================================
 * Time
 * ======================================================================== */

/** Size of a buffer that holds any time nbx_time_format() writes. */
#define NBX_TIME_BUFSZ 32

/**
 * @brief Parse an RFC 3339 time ("2026-03-01T12:00:00Z", fractional seconds
 * and numeric offsets allowed) or epoch seconds ("1767225600", "1767225600.5").
 * @param text NUL-terminated input.
 * @param[out] out_ms milliseconds since the epoch.
 * @return NBX_OK, NBX_EINVAL (NULL argument), NBX_EPARSE (not a time, or a
 *   time outside the years 0001 to 9999).
 * @note Thread-safe.
 */
NBX_API int nbx_time_parse(const char *text, int64_t *out_ms);

/**
 * @brief Format a time as RFC 3339 UTC, with milliseconds only when non-zero.
 * @param buf at least NBX_TIME_BUFSZ bytes.
 * @return NBX_OK, NBX_EINVAL (NULL buf, or a time outside the years 0001 to
 *   9999).
 * @note Thread-safe.
 */
NBX_API int nbx_time_format(int64_t ms, char *buf);

/**
 * @brief Wall-clock time now, in milliseconds since the epoch.
 * @note Thread-safe.
 */
NBX_API int64_t nbx_time_now(void);

/* ========================================================================
 * Store: an LMDB environment (a directory) holding customer profiles,
 * exposure counters, seen event ids and metadata.
 * ======================================================================== */

typedef struct nbx_store nbx_store;

/** Flags for nbx_store_open(). */
enum nbx_store_flags {
    NBX_STORE_CREATE = 0x1,   /**< create the directory and store if missing */
    NBX_STORE_READONLY = 0x2, /**< never write; writes fail with NBX_EREADONLY */
    /** Skip the metadata fsync at commit: an OS crash may undo the last
     * committed transaction, never corrupt the store. Process crashes lose
     * nothing either way. */
    NBX_STORE_NOMETASYNC = 0x4
};

/**
 * @brief Open (and with NBX_STORE_CREATE, create) a store.
 *
 * Checks the schema version: a store written by a newer nbx is refused with
 * NBX_EVERSION. Clears stale reader slots left by dead processes.
 *
 * @param path store directory.
 * @param flags nbx_store_flags, OR-ed.
 * @param[out] out the store on success, NULL on failure (see nbx_last_errmsg()).
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND (no store and no CREATE),
 *   NBX_EIO, NBX_EVERSION, NBX_ECORRUPT, NBX_ESTORE, NBX_ENOMEM.
 * @note Thread-safe. Open a store once per process and share the handle.
 */
NBX_API int nbx_store_open(const char *path, unsigned flags, nbx_store **out);

/**
 * @brief Close a store. Every context, iterator and engine using it must be
 * closed first. NULL is a no-op.
 * @note Not thread-safe with other calls on the same store.
 */
NBX_API void nbx_store_close(nbx_store *store);

/**
 * @brief Detail of the last failure on this store in the calling thread.
 * @return never NULL; valid until the calling thread's next call on it.
 * @note Thread-safe: messages are kept per thread.
 */
NBX_API const char *nbx_store_errmsg(const nbx_store *store);

/** Counts from nbx_store_stat(). */
typedef struct nbx_store_stats {
    uint64_t profiles;       /**< profiles in the store */
    uint64_t exposure_keys;  /**< counter rows: (customer, offer) and each customer's
                                  all-offers row */
    uint64_t events_seen;    /**< event records in the store: distinct (customer, event id)
                                  pairs applied, less those erased with their customer */
    uint64_t bytes_used;     /**< bytes of pages in use */
    uint64_t map_size;       /**< current size limit in bytes (grows on demand) */
    uint32_t schema_version; /**< schema of the store */
    int64_t rfm_as_of;       /**< time of the last RFM rebuild, 0 if never */
} nbx_store_stats;

/**
 * @brief Write a compacted copy of the store to out_dir: every live record
 * of every database, from one read snapshot, appended in key order into a
 * new environment (data.mdb and its lock.mdb), which is a store of its own.
 * Runs beside readers and writers.
 *
 * After an erasure, the copy holds no byte of the erased customers: its
 * pages hold live records only, where the store's own file may still hold
 * them in freed pages, and LMDB's own compacting copy (mdb_env_copy2 with
 * MDB_CP_COMPACT) in the separator keys its branch pages keep. Compact, then
 * replace the store with the copy while writers are stopped
 * (docs/data-model.md, "Erasure").
 *
 * @param out_dir a new directory (created) or an empty one; not the store.
 * @return NBX_OK, NBX_EINVAL (NULL, not a directory, not empty, the store
 *   itself), NBX_ENOTFOUND (out_dir's parent is missing), NBX_EIO,
 *   NBX_ESTORE, NBX_EFULL, NBX_ENOMEM. On failure the partial copy is
 *   removed.
 * @note Thread-safe.
 */
NBX_API int nbx_store_compact(nbx_store *store, const char *out_dir);

/**
 * @brief Bring a store written by an older nbx to this one's format
 * (docs/format.md). An older store opens read-only as it is; a read-write
 * open refuses it with NBX_EVERSION until it is upgraded, so that a store
 * is never written by two versions that disagree on it.
 * @param[out] from, to if not NULL, the format before and after (equal
 *   when there was nothing to do).
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_EIO, NBX_EVERSION (newer
 *   than this nbx), NBX_ECORRUPT, NBX_ESTORE, NBX_ENOMEM.
 * @note Stop writers of other versions first.
 */
NBX_API int nbx_store_upgrade(const char *path, uint32_t *from, uint32_t *to);

/**
 * @brief Read the store's counts.
 * @return NBX_OK, NBX_EINVAL, NBX_ESTORE.
 * @note Thread-safe.
 */
NBX_API int nbx_store_stat(nbx_store *store, nbx_store_stats *out);

/**
 * @brief The store's write generation: a number that changes (grows)
 * whenever a write to the store commits, from any process. Two readings
 * that are equal mean nothing was written in between: `nbx policy diff`
 * uses it to tell that both policies saw the same data.
 * @return NBX_OK, NBX_EINVAL, NBX_ESTORE.
 * @note Thread-safe.
 */
NBX_API int nbx_store_generation(nbx_store *store, uint64_t *out);

/* ------------------------------------------------------------------------
 * Profiles. JSON field names are those of docs/data-model.md.
 * ------------------------------------------------------------------------ */

/** Bounds on profile input; longer or larger input is refused. */
#define NBX_ID_MAX 256          /**< bytes in a customer id */
#define NBX_KEY_MAX 256         /**< bytes in an attribute/propensity key */
#define NBX_VALUE_MAX 4096      /**< bytes in a string attribute */
#define NBX_MAP_MAX 1024        /**< entries in attrs, consent or propensity */
#define NBX_LINE_MAX (1 << 20)  /**< bytes in one JSONL line */

/**
 * @brief Read one profile as JSON.
 * @param id customer id (1..NBX_ID_MAX bytes).
 * @param[out] json malloc'd NUL-terminated JSON, free with nbx_free().
 * @param[out] len if not NULL, its length.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_ECORRUPT, NBX_ESTORE, NBX_ENOMEM.
 * @note Thread-safe.
 */
NBX_API int nbx_profile_get(nbx_store *store, const char *id, char **json, size_t *len);

/**
 * @brief Upsert one profile from JSON, merging: fields given replace the
 * stored ones, absent fields stay (docs/data-model.md, "Merge rules"). RFM
 * aggregates given are the import's figures as of `rfm.as_of` (default: its
 * last_purchase); purchase events dated later add to them and are never
 * rolled back ("Which source wins"). A put that changes nothing writes
 * nothing, updated_at included.
 * @return NBX_OK, NBX_EINVAL (NULL argument; an erased customer, see
 *   nbx_profile_erase()), NBX_EPARSE (message names the field),
 *   NBX_ELIMIT, NBX_EREADONLY, NBX_ECORRUPT (the stored profile is
 *   damaged), NBX_EFULL, NBX_ESTORE, NBX_ENOMEM.
 * @note Thread-safe; commits before returning.
 */
NBX_API int nbx_profile_put(nbx_store *store, const char *json, size_t len);

/**
 * @brief Erase customers: for each id, in one transaction for the whole
 * list, its profile and everything keyed by it (exposure counters, event
 * records), leaving a suppression record: a keyed hash of the id, no byte
 * of personal data (docs/data-model.md, "Erasure").
 *
 * Until nbx_profile_restore(), everything later sent for a suppressed id is
 * refused and counted as suppressed: profile imports (nbx_import_file()
 * skips its lines, nbx_profile_put() fails), events (nbx_event_apply()
 * applies nothing, nbx_record_ex() reports NBX_RECORD_SUPPRESSED) and the
 * impressions decisions record. An id the store holds nothing for is
 * suppressed all the same (0 records).
 *
 * Erased bytes stay in the store's file until LMDB reuses their pages: see
 * nbx_store_compact().
 *
 * @param ids n customer ids, each 1..NBX_ID_MAX bytes; the same id twice
 *   is erased once.
 * @param[out] records if not NULL, n counts: the records each id lost
 *   (its profile, counter rows and event records); zeros on failure.
 * @return NBX_OK (also for ids that held nothing); NBX_EINVAL (NULL
 *   argument, a bad id: the message names its index; nothing is erased);
 *   NBX_EREADONLY (also a store of an older format, which opens read-only
 *   only: see nbx_store_upgrade()); NBX_EIO (no randomness for the store's
 *   first key); NBX_ESTORE (also a list too large for one transaction:
 *   erase it in parts); NBX_EFULL; NBX_ECORRUPT (the store's key is
 *   damaged).
 * @note Thread-safe.
 */
NBX_API int nbx_profile_erase(nbx_store *store, const char *const *ids, size_t n,
                              uint64_t *records);

/**
 * @brief nbx_profile_erase() of one id.
 * @return as nbx_profile_erase(), and NBX_ENOTFOUND when the store held
 *   nothing for the id (it is suppressed all the same).
 * @note Thread-safe.
 */
NBX_API int nbx_profile_delete(nbx_store *store, const char *id);

/**
 * @brief Lift an erasure (renewed consent): the id's suppression record is
 * removed, and data sent for it is taken again. What was erased stays
 * erased.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND (the id is not suppressed),
 *   NBX_EREADONLY, NBX_ECORRUPT, NBX_ESTORE.
 * @note Thread-safe.
 */
NBX_API int nbx_profile_restore(nbx_store *store, const char *id);

/* ------------------------------------------------------------------------
 * Events: purchases and exposures (impression, click, accept, dismiss)
 * ------------------------------------------------------------------------ */

/** How far after the writer's clock an event may be dated (`ts`) by
 * default: further ahead it is refused, naming `ts`. Older events
 * (backfills, late arrivals) are always taken. */
#define NBX_DEFAULT_EVENT_SKEW_MS 300000
/** The largest skew an option may allow (one day). */
#define NBX_EVENT_SKEW_MAX_MS 86400000

/**
 * @brief Apply one event (the JSON object `nbx ingest` reads) and commit.
 * Deduplication is per customer: an event whose event_id this customer has
 * had before is skipped and changes nothing, whatever its other fields (the
 * first one wins); the same event_id for another customer is another event.
 * The event's `ts` may be at most NBX_DEFAULT_EVENT_SKEW_MS after this
 * process's clock; counters are never pruned by an event's own time.
 * @param[out] applied if not NULL, 1 if applied, 0 if skipped as a duplicate.
 * @return NBX_OK, NBX_EINVAL (NULL argument; `ts` too far ahead of the
 *   clock: the message names `ts`), NBX_EPARSE, NBX_ELIMIT, NBX_EREADONLY,
 *   NBX_ECORRUPT (a damaged stored value of the customer), NBX_EFULL,
 *   NBX_ESTORE.
 * @note Thread-safe.
 */
NBX_API int nbx_event_apply(nbx_store *store, const char *json, size_t len, int *applied);

/* ------------------------------------------------------------------------
 * Bulk import of JSONL files
 * ------------------------------------------------------------------------ */

/** What a JSONL file holds. */
typedef enum nbx_import_kind {
    NBX_IMPORT_PROFILES = 1, /**< one profile per line, merged as nbx_profile_put() */
    NBX_IMPORT_EVENTS = 2    /**< one event per line, as nbx_event_apply() */
} nbx_import_kind;

/** Progress callback: lines read so far, bytes read, file size (0 if
 * unknown). An import makes two passes over the file (checking, then
 * writing); each opens with a call of 0 lines and 0 bytes. */
typedef void (*nbx_progress_fn)(void *ud, uint64_t lines, uint64_t bytes, uint64_t total);

/** Options for nbx_import_file(). Initialise with nbx_import_options_init(). */
typedef struct nbx_import_options {
    size_t size;              /**< sizeof(nbx_import_options) */
    const char *rejects_path; /**< NULL: any bad line fails the whole file and
                                   nothing is written. Else bad lines are copied
                                   here with their reason and the rest applied. */
    size_t batch_size;        /**< records per write transaction (0: 10000 for
                                   profiles, 100000 for events) */
    nbx_progress_fn progress; /**< called about every 100k lines; may be NULL */
    void *progress_ud;
    int64_t max_skew_ms;      /**< events: how far after the importing process's
                                   clock an event may be dated (0:
                                   NBX_DEFAULT_EVENT_SKEW_MS; at most
                                   NBX_EVENT_SKEW_MAX_MS); a later `ts` is a bad line */
    const char *catalog;      /**< events: a catalog file; an exposure naming an
                                   offer not in it is a bad line (field `offer`).
                                   NULL: offers are not checked */
} nbx_import_options;

/** Counts from nbx_import_file(). */
typedef struct nbx_import_stats {
    uint64_t lines;      /**< non-blank lines read */
    uint64_t applied;    /**< records written */
    uint64_t duplicates; /**< events skipped: their customer had their id before */
    uint64_t rejected;   /**< bad lines copied to rejects_path */
    uint64_t suppressed; /**< records refused: their customer was erased
                              (nbx_profile_erase()) */
} nbx_import_stats;

/** @brief Set defaults. @note Thread-safe. */
NBX_API void nbx_import_options_init(nbx_import_options *opts);

/**
 * @brief Import a JSONL file of profiles or events.
 *
 * Streams in constant memory. The whole file is validated before anything is
 * written, so a bad line (reported as FILE:LINE, field and problem) leaves the
 * store untouched unless rejects_path is set. Records are then applied in
 * transactions of batch_size records: a crash leaves every committed
 * transaction intact and nothing of the one in progress; re-running the same
 * file is safe (profiles merge again, events seen for their customer are
 * skipped).
 *
 * Profiles are applied in file order, batch after batch. Events are applied
 * customer by customer (each customer's in file order, the result being that
 * of nbx_event_apply() line by line): after an interruption any part of the
 * file may be in the store, never part of an event. Deduplication is per
 * (customer, event_id), within the file and against the store. A transaction
 * too big for the store (LMDB's dirty-page limit, or a map too full for it)
 * is written as smaller ones of whole profiles or whole customers' events;
 * NBX_EFULL only when the store really is full.
 *
 * @param path file, or "-" for standard input (spooled to a temporary file
 *   for the validation pass).
 * @param opts may be NULL for defaults.
 * @param[out] stats may be NULL.
 * @return NBX_OK, NBX_EINVAL (also: rejects_path is the input file or a file
 *   of the store), NBX_ENOTFOUND, NBX_EIO, NBX_EPARSE, NBX_ELIMIT,
 *   NBX_EREADONLY, NBX_ECORRUPT (a damaged stored value), NBX_EFULL,
 *   NBX_ESTORE, NBX_ENOMEM.
 * @note Thread-safe; concurrent imports serialise on the store's writer.
 */
NBX_API int nbx_import_file(nbx_store *store, nbx_import_kind kind, const char *path,
                            const nbx_import_options *opts, nbx_import_stats *stats);

/* ------------------------------------------------------------------------
 * Iteration (export, batch --all)
 * ------------------------------------------------------------------------ */

typedef struct nbx_iter nbx_iter;

/** Flags for nbx_iter_open(). */
enum nbx_iter_flags {
    NBX_ITER_IDS = 0x1 /**< ids only: nbx_iter_next() leaves json NULL */
};

/**
 * @brief Iterate over all profiles in id order (bytewise).
 * @param after if not NULL, start after this id (resume point).
 * @return NBX_OK, NBX_EINVAL, NBX_ESTORE, NBX_ENOMEM.
 * @note The iterator belongs to one thread at a time.
 */
NBX_API int nbx_iter_open(nbx_store *store, unsigned flags, const char *after, nbx_iter **out);

/**
 * @brief Next profile.
 * @param[out] id NUL-terminated id, valid until the next call on the iterator.
 * @param[out] json NUL-terminated profile JSON (NULL with NBX_ITER_IDS), same
 *   lifetime.
 * @return NBX_OK, NBX_DONE at the end, NBX_EINVAL, NBX_ECORRUPT, NBX_ESTORE,
 *   NBX_ENOMEM.
 */
NBX_API int nbx_iter_next(nbx_iter *it, const char **id, const char **json, size_t *json_len);

/** @brief Close an iterator. NULL is a no-op. */
NBX_API void nbx_iter_close(nbx_iter *it);

/* ------------------------------------------------------------------------
 * RFM
 * ------------------------------------------------------------------------ */

/** RFM segments (docs/data-model.md). */
typedef enum nbx_segment {
    NBX_SEGMENT_NONE = 0, /**< not yet scored (no rebuild since first purchase) */
    NBX_SEGMENT_CHAMPIONS,
    NBX_SEGMENT_LOYAL,
    NBX_SEGMENT_POTENTIAL,
    NBX_SEGMENT_NEW,
    NBX_SEGMENT_PROMISING,
    NBX_SEGMENT_NEEDS_ATTENTION,
    NBX_SEGMENT_AT_RISK,
    NBX_SEGMENT_CANT_LOSE,
    NBX_SEGMENT_HIBERNATING,
    NBX_SEGMENT_LOST,
    NBX_SEGMENT_PROSPECT, /**< no purchase */
    NBX_SEGMENT_COUNT
} nbx_segment;

/**
 * @brief JSON name of a segment ("champions", "at_risk", ...).
 * @return static string; NULL for an out-of-range value.
 * @note Thread-safe.
 */
NBX_API const char *nbx_segment_name(int segment);

/** Result of nbx_rfm_rebuild(). */
typedef struct nbx_rfm_stats {
    uint64_t customers;                   /**< profiles visited */
    uint64_t scored;                      /**< profiles with a purchase */
    uint64_t segments[NBX_SEGMENT_COUNT]; /**< profiles per segment */
    double recency_days[4];               /**< quintile cut points, days */
    double frequency[4];                  /**< quintile cut points, orders */
    double monetary[4];                   /**< quintile cut points, revenue */
} nbx_rfm_stats;

/**
 * @brief Recompute population quintiles and every profile's r, f, m and
 * segment as of a time, in batched transactions.
 * @param as_of_ms reference time for recency (0: now); years 0001 to 9999,
 *   else NBX_EINVAL.
 * @param[out] stats may be NULL.
 * @return NBX_OK, NBX_EINVAL, NBX_EREADONLY, NBX_ECORRUPT, NBX_EFULL, NBX_ESTORE,
 *   NBX_ENOMEM.
 * @note Thread-safe; other writers wait between batches.
 */
NBX_API int nbx_rfm_rebuild(nbx_store *store, int64_t as_of_ms, nbx_rfm_stats *stats);

/* ========================================================================
 * Engine: a store, a catalog and a policy, shared by threads.
 * ======================================================================== */

typedef struct nbx_engine nbx_engine;
/** A deployment: arms, a holdout and shadow policies (see "Deployments"). */
typedef struct nbx_deployment nbx_deployment;

/** Log levels passed to nbx_log_fn. */
enum nbx_log_level { NBX_LOG_ERROR = 0, NBX_LOG_WARN = 1, NBX_LOG_INFO = 2 };

/** Log callback: may be called from any thread that uses the engine. */
typedef void (*nbx_log_fn)(void *ud, int level, const char *message);

/** Flags for nbx_engine_options.flags. */
enum nbx_engine_flags {
    NBX_ENGINE_READONLY = 0x1, /**< open the store read-only: nbx_record() fails */
    /** No store at all (store and store_handle are ignored): a decision
     * reads the customer from nbx_request.profile_json, or decides for an
     * anonymous visitor; counters and budgets are empty and nothing is
     * recorded (NBX_DECIDE_RECORD and nbx_record() fail with
     * NBX_EREADONLY). For trials and tests of a policy (nbx_engine_trial(),
     * `nbx policy check`, `nbx policy test`). */
    NBX_ENGINE_NO_STORE = 0x2
};

/** Default policy limits. */
#define NBX_DEFAULT_TIME_LIMIT_US 2000
#define NBX_DEFAULT_MEMORY_LIMIT (32u << 20)

/** Options for nbx_engine_open(). Initialise with nbx_engine_options_init(). */
typedef struct nbx_engine_options {
    size_t size;              /**< sizeof(nbx_engine_options) */
    const char *store;        /**< store directory (required) */
    nbx_store *store_handle;  /**< or an open store to borrow (then store is ignored);
                                   it must outlive the engine */
    const char *catalog;      /**< catalog JSON file (required) */
    const char *policy;       /**< policy Lua file (required) */
    uint32_t time_limit_us;   /**< policy CPU time per decision (0: default) */
    size_t memory_limit;      /**< policy Lua state bytes (0: default) */
    unsigned flags;           /**< nbx_engine_flags */
    nbx_log_fn log;           /**< policy failures and reloads; NULL: none */
    void *log_ud;
    /** The catalog's JSON itself instead of reading the file `catalog`, which
     * then only names it in messages (len bytes, need not end in NUL). For
     * hosts that read files once, such as nginx's master process. */
    const char *catalog_text;
    size_t catalog_len;
    /** The policy's Lua source itself; `policy` then names it (chunk name,
     * messages). The version is the xxh64 of these bytes, as of a file's. */
    const char *policy_text;
    size_t policy_len;
    /** How far after the engine's clock an event given to nbx_record() may
     * be dated (0: NBX_DEFAULT_EVENT_SKEW_MS; at most NBX_EVENT_SKEW_MAX_MS,
     * else NBX_EINVAL). */
    int64_t event_max_skew_ms;
    /** A deployment file instead of `policy` (docs/experiments.md): each
     * customer is served by the policy of the arm assignment gives them,
     * the holdout gets the control treatment, shadow policies decide
     * beside. policy must then be NULL. Added in 0.2. */
    const char *deployment;
    /** The deployment file's JSON itself; `deployment` then names it and
     * anchors its relative policy paths (the policy files are read). */
    const char *deployment_text;
    size_t deployment_len;
    /** Or a deployment already loaded (nbx_deployment_open(); borrowed: the
     * engine takes its own reference), for hosts that read files once,
     * before fork(), such as nginx's master. Then deployment is ignored. */
    nbx_deployment *deployment_handle;
} nbx_engine_options;

/** @brief Set defaults. @note Thread-safe. */
NBX_API void nbx_engine_options_init(nbx_engine_options *opts);

/**
 * @brief Open an engine: the store, then the catalog, then the policy, then
 * a trial sandbox for the pair with the engine's limits (so a broken policy,
 * or one that cannot hold this catalog within its memory limit, fails here,
 * not on every decision).
 * @param[out] out the engine, NULL on failure (see nbx_last_errmsg()).
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_EIO, NBX_EPARSE (catalog),
 *   NBX_EPOLICY, NBX_EVERSION, NBX_ESTORE, NBX_ENOMEM.
 * @note Thread-safe.
 */
NBX_API int nbx_engine_open(const nbx_engine_options *opts, nbx_engine **out);

/**
 * @brief Close an engine. All its contexts must be closed first. NULL is a no-op.
 * @note Not thread-safe with other calls on the same engine.
 */
NBX_API void nbx_engine_close(nbx_engine *engine);

/**
 * @brief Detail of the last failure on this engine in the calling thread.
 * @note Thread-safe.
 */
NBX_API const char *nbx_engine_errmsg(const nbx_engine *engine);

/**
 * @brief Load a policy file and swap it in atomically, after a trial
 * sandbox with the current catalog and the engine's limits. On failure the
 * current policy keeps serving.
 * @return NBX_OK, NBX_EINVAL (also while the engine serves a deployment,
 *   which names its policies: load a changed deployment file instead),
 *   NBX_ENOTFOUND, NBX_EIO, NBX_EPOLICY, NBX_ENOMEM.
 * @note Thread-safe, also while contexts decide.
 */
NBX_API int nbx_engine_load_policy(nbx_engine *engine, const char *path);

/**
 * @brief Load a catalog file and swap it in atomically, after a trial
 * sandbox with the current policy (with a deployment: each arm's and each
 * shadow's) and the engine's limits. On failure the
 * current catalog keeps serving.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_EIO, NBX_EPARSE, NBX_ENOMEM.
 * @note Thread-safe, also while contexts decide.
 */
NBX_API int nbx_engine_load_catalog(nbx_engine *engine, const char *path);

/**
 * @brief Load a deployment file and swap it in atomically (it replaces the
 * policy or the deployment serving), after a trial sandbox of each arm's
 * and each shadow's policy with the current catalog and the engine's
 * limits. On failure (the message names the file, the arm and the field,
 * or the policy) what serves now keeps serving.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_EIO, NBX_EPARSE,
 *   NBX_EPOLICY, NBX_ELIMIT, NBX_ENOMEM.
 * @note Thread-safe, also while contexts decide: a decision in flight
 *   finishes on the deployment it started with.
 */
NBX_API int nbx_engine_load_deployment(nbx_engine *engine, const char *path);

/**
 * @brief The deployment the engine serves now.
 * @return a new reference (release it with nbx_deployment_close()), or
 *   NULL when the engine serves a single policy (or engine is NULL).
 * @note Thread-safe.
 */
NBX_API nbx_deployment *nbx_engine_deployment(nbx_engine *engine);

/** Identity of what an engine serves; see nbx_engine_info(). */
typedef struct nbx_engine_info {
    char policy_name[128];    /**< with a deployment: its first arm's policy */
    char policy_version[17];  /**< xxh64 of the policy source, 16 hex digits */
    char catalog_version[17]; /**< xxh64 of the catalog file, 16 hex digits */
    uint32_t offers;          /**< offers and modules in the catalog */
    uint32_t placements;
} nbx_engine_info;

/**
 * @brief What the engine serves now.
 * @return NBX_OK or NBX_EINVAL.
 * @note Thread-safe.
 */
NBX_API int nbx_engine_info_get(nbx_engine *engine, nbx_engine_info *out);

/**
 * @brief The engine's store, for profile and event calls.
 * @return borrowed; valid until nbx_engine_close(). NULL if engine is NULL.
 * @note Thread-safe.
 */
NBX_API nbx_store *nbx_engine_store(nbx_engine *engine);

/**
 * @brief Check a policy file without an engine: it compiles in the sandbox,
 * returns a table with a `name` and a `score` function.
 * @param[out] info if not NULL, receives policy_name and policy_version.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_EIO, NBX_EPOLICY (see
 *   nbx_last_errmsg() for file:line and reason).
 * @note Thread-safe. Creates and destroys its own Lua state: safe to call
 *   before fork().
 */
NBX_API int nbx_policy_check(const char *path, nbx_engine_info *info);

/**
 * @brief Check a catalog file without an engine.
 * @param[out] info if not NULL, receives catalog_version, offers, placements.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_EIO, NBX_EPARSE (see
 *   nbx_last_errmsg(): offer id and field).
 * @note Thread-safe; safe to call before fork().
 */
NBX_API int nbx_catalog_check(const char *path, nbx_engine_info *info);

/**
 * @brief Check what nbx_engine_open() would load, without a store: the
 * catalog, the policy, and a sandbox built for the pair with the options'
 * limits (a policy that cannot load within its memory limit with this
 * catalog fails here), then the trial of nbx_engine_trial(): a policy that
 * falls back for a synthetic customer fails here. With a deployment: every
 * arm's policy is tried (also an arm of 0 %), named in the message; shadow
 * policies need only load. store and store_handle are ignored.
 * @param[out] info if not NULL, receives what an engine would serve.
 * @return NBX_OK, NBX_EINVAL, NBX_ENOTFOUND, NBX_EIO, NBX_EPARSE (catalog),
 *   NBX_EPOLICY, NBX_ENOMEM; nbx_last_errmsg() names the file and reason.
 * @note Thread-safe. Creates and destroys its own Lua state and touches no
 *   store: safe to call before fork().
 */
NBX_API int nbx_engine_check(const nbx_engine_options *opts, nbx_engine_info *info);

/* ========================================================================
 * Decisions
 * ======================================================================== */

typedef struct nbx_ctx nbx_ctx;
typedef struct nbx_result nbx_result;

/** A session field: what the caller passes (channel, device, page, ...). */
typedef struct nbx_kv {
    const char *key;
    const char *value;
} nbx_kv;

/** Flags for nbx_request.flags. */
enum nbx_decide_flags {
    NBX_DECIDE_EXPLAIN = 0x1, /**< add every candidate and why it was excluded */
    /** Record each chosen action as an impression in the store, in the same
     * call, so overlapping campaigns cannot over-contact a customer. The
     * switch is "record" everywhere: `nbx decide --record`,
     * `nbx batch --record` (old spelling `--commit-exposures`), nginx
     * `nbx_record on` (old spelling `nbx_record_impressions`), Python
     * `record=True`. */
    NBX_DECIDE_RECORD = 0x2,
    /** On a policy failure the result JSON's "error" holds only "kind", not
     * the policy's name, file, line and message: for results shown to
     * clients (the nginx module unless nbx_explain is on). nbx_result_error()
     * still gives the message. nbx_decide() only, not batches. */
    NBX_DECIDE_ERROR_KIND_ONLY = 0x4,
    /** Also write the decision's audit line (nbx_result_audit_json()):
     * what an audit log keeps and `nbx audit replay` reads. Without it no
     * audit line is written: a caller that does not log pays nothing. */
    NBX_DECIDE_AUDIT = 0x8,
    /** Collect eligible()'s reasons (and nbx.log() lines), as an explained
     * decision does, without writing the candidates into the result JSON:
     * a batch hands the reasons back counted (nbx_batch_item.reasons), for
     * reports over many decisions (`nbx policy diff`). */
    NBX_DECIDE_REASONS = 0x10
};

/** Limits on one request. */
#define NBX_REQUEST_PLACEMENTS_MAX 64
#define NBX_REQUEST_SESSION_MAX 64

/** One decision request. Initialise with nbx_request_init(). */
typedef struct nbx_request {
    size_t size;                   /**< sizeof(nbx_request) */
    const char *customer;          /**< customer id (required) */
    const char *const *placements; /**< placement ids; n_placements 0: all */
    size_t n_placements;
    const nbx_kv *session;         /**< session fields, given to the policy */
    size_t n_session;
    int64_t now_ms;                /**< the decision's clock (epoch ms, years 0001 to 9999,
                                        else NBX_EINVAL); 0: now */
    unsigned flags;                /**< nbx_decide_flags */
    /** The customer's profile as a JSON object (the names of
     * docs/data-model.md; its "id", if given, must be `customer`), used
     * instead of the store's: a what-if, a test case, a trial. NULL: the
     * store's profile (anonymous if none). profile_len bytes, need not end
     * in NUL. Added in 0.2: a caller built against an older nbx.h (a
     * smaller size) never sets it. */
    const char *profile_json;
    size_t profile_len;
    /** The customer's exposure counters as a JSON object, used instead of
     * the store's (a test case, a what-if): offer id -> {"impressions",
     * "clicks", "accepts", "dismisses": counts 0..1000000;
     * "last_impression", "last_click", "last_accept", "last_dismiss": RFC
     * 3339 times or epoch seconds}. Each kind's events are dated at its
     * last_* time, else at the decision's clock; caps, cooldowns and the
     * contact policy (the sum of every offer's impressions) count them in
     * their windows as they count stored events. An offer not in the
     * catalog, an unknown field or a bad value is NBX_EINVAL naming it
     * ('exposures.o001.impressions'). NULL: the store's counters (none
     * without a store). exposures_len bytes, need not end in NUL. Added in
     * 0.2, like profile_json. Budgets still come from the store. */
    const char *exposures_json;
    size_t exposures_len;
} nbx_request;

/** @brief Set defaults. @note Thread-safe. */
NBX_API void nbx_request_init(nbx_request *req);

/**
 * @brief Open a decision context on an engine: a Lua state and a read
 * transaction of its own.
 * @param[out] out the context, NULL on failure (see nbx_last_errmsg()).
 * @return NBX_OK, NBX_EINVAL, NBX_EPOLICY, NBX_ESTORE, NBX_ENOMEM.
 * @note Thread-safe on the engine; the context belongs to one thread at a time.
 */
NBX_API int nbx_ctx_open(nbx_engine *engine, nbx_ctx **out);

/** @brief Close a context. NULL is a no-op. */
NBX_API void nbx_ctx_close(nbx_ctx *ctx);

/**
 * @brief Detail of the last failure on this context.
 * @return never NULL; valid until the next call on the context.
 */
NBX_API const char *nbx_ctx_errmsg(const nbx_ctx *ctx);

/**
 * @brief Decide for one customer and session.
 *
 * request -> profile -> candidates -> eligibility -> policy -> guardrails ->
 * arbitration -> result (docs/decisions.md). An unknown customer gets an
 * anonymous profile, and so does, for the policy, a customer without
 * consent to personalisation (docs/decisions.md, "Consent"). A policy that
 * raises, exceeds a limit or returns a
 * non-finite score yields the fallback decision: a result with
 * nbx_result_fallback() true and an error record, and NBX_OK is returned.
 *
 * @param[out] out the result, owned by the context, valid until the next call
 *   on it.
 * @return NBX_OK (also on fallback), NBX_EINVAL (bad request: message names
 *   the field, e.g. a session `channel` the catalog's `channels` lacks),
 *   NBX_ELIMIT, NBX_ECORRUPT, NBX_ESTORE, NBX_EFULL (RECORD),
 *   NBX_EREADONLY (RECORD), NBX_ENOMEM.
 */
NBX_API int nbx_decide(nbx_ctx *ctx, const nbx_request *req, const nbx_result **out);

/** Flags for nbx_record_ex(). */
enum nbx_record_flags {
    /** Stamp the event with the engine's clock: its own `ts` is not trusted
     * (it may be left out; if given it must still be a time). For events
     * from browsers and other clients whose clocks nbx cannot trust. */
    NBX_RECORD_SERVER_TIME = 0x1
};

/** What nbx_record_ex() did with an event. */
enum nbx_record_outcome {
    NBX_RECORD_APPLIED = 1,   /**< new: recorded, counters and aggregates updated */
    NBX_RECORD_DUPLICATE = 2, /**< this customer had the event id before: nothing changed */
    NBX_RECORD_SUPPRESSED = 3 /**< the customer was erased: refused, nothing stored */
};

/**
 * @brief Apply one event through the context's engine; the next decision on
 * any context sees it. Deduplication is per customer, as for
 * nbx_event_apply().
 *
 * Refused with NBX_EINVAL, the message naming the field: an event dated
 * more than nbx_engine_options.event_max_skew_ms after the engine's clock
 * (`ts`; not with NBX_RECORD_SERVER_TIME), and an exposure naming an offer
 * that is not in the engine's current catalog (`offer`).
 *
 * @param flags nbx_record_flags, OR-ed.
 * @param[out] outcome if not NULL, an nbx_record_outcome on NBX_OK, else 0.
 * @return NBX_OK (also for a duplicate or a suppressed customer: see
 *   outcome), NBX_EINVAL (NULL argument, unknown flags, `ts`, `offer`),
 *   NBX_EPARSE, NBX_ELIMIT, NBX_EREADONLY (read-only engine), NBX_ECORRUPT
 *   (a damaged stored value), NBX_EFULL, NBX_ESTORE, NBX_ENOMEM.
 * @note The context belongs to one thread at a time.
 */
NBX_API int nbx_record_ex(nbx_ctx *ctx, const char *json, size_t len, unsigned flags,
                          int *outcome);

/**
 * @brief nbx_record_ex() with flags 0.
 * @param[out] applied if not NULL, 1 if applied, 0 if not (a duplicate, or
 *   a suppressed customer).
 * @return as nbx_record_ex().
 */
NBX_API int nbx_record(nbx_ctx *ctx, const char *json, size_t len, int *applied);

/** Why a candidate was excluded (explain output and nbx_result_exclusions()). */
typedef enum nbx_excluded {
    NBX_EXCLUDED_NONE = 0,
    NBX_EXCLUDED_CONSENT,
    NBX_EXCLUDED_FREQUENCY,
    NBX_EXCLUDED_COOLDOWN,
    NBX_EXCLUDED_CONTACTS,
    NBX_EXCLUDED_BUDGET,
    NBX_EXCLUDED_VALIDITY,
    NBX_EXCLUDED_INELIGIBLE,
    NBX_EXCLUDED_GUARDRAIL,
    NBX_EXCLUDED_POLICY_ERROR,
    NBX_EXCLUDED_KILLED, /**< the offer is killed (nbx_kill(); since 0.2) */
    NBX_EXCLUDED_COUNT
} nbx_excluded;

/**
 * @brief JSON name of an exclusion reason ("consent", "frequency", ...).
 * @return static string; NULL for NBX_EXCLUDED_NONE or out of range.
 * @note Thread-safe.
 */
NBX_API const char *nbx_excluded_name(int reason);

/** One chosen action. Strings are owned by the result. */
typedef struct nbx_action {
    const char *offer;
    const char *placement;
    double score;
    double expected_margin;
    /** The probability the action was chosen with: 1 for the deterministic
     * ranking, fallbacks and the control treatment (added in 0.2). */
    double probability;
} nbx_action;

/**
 * @brief The result as JSON (docs/decisions.md: decision_id, customer,
 * policy {name, version}, catalog_version, actions, fallback, error,
 * candidates with explain).
 * @param[out] len if not NULL, the length.
 * @return NUL-terminated JSON owned by the result; NULL if r is NULL.
 */
NBX_API const char *nbx_result_json(const nbx_result *r, size_t *len);

/** @brief Number of actions. 0 if r is NULL. */
NBX_API size_t nbx_result_action_count(const nbx_result *r);

/**
 * @brief Action i (0-based, in rank order).
 * @return NBX_OK, NBX_EINVAL (NULL or i out of range).
 */
NBX_API int nbx_result_action(const nbx_result *r, size_t i, nbx_action *out);

/** @brief 1 if this is the fallback decision, else 0. */
NBX_API int nbx_result_fallback(const nbx_result *r);

/** @brief 1 if decided as an anonymous visitor (the customer has no profile,
 * or has not consented to the catalog's personalisation purpose), else 0. */
NBX_API int nbx_result_anonymous(const nbx_result *r);

/** @brief The policy error message on fallback, else NULL. */
NBX_API const char *nbx_result_error(const nbx_result *r);

/** Why a decision fell back, field by field (the result JSON's "error"). */
typedef struct nbx_fault {
    const char *kind;   /**< "runtime", "timeout", "memory", "result", "unavailable" */
    const char *where;  /**< "file.lua:LINE", or "" when unknown */
    const char *offer;  /**< the offer being scored, or "" */
    const char *reason; /**< in words; policy text is escaped */
} nbx_fault;

/**
 * @brief The fault of a fallback decision.
 * @param[out] out strings owned by the result, valid as long as it is.
 * @return NBX_OK; NBX_ENOTFOUND when the decision did not fall back;
 *   NBX_EINVAL (NULL argument).
 * @note Like the result, belongs to the context's thread.
 */
NBX_API int nbx_result_fault(const nbx_result *r, nbx_fault *out);

/**
 * @brief The RFM segment of the profile the policy saw (an nbx_segment):
 * NBX_SEGMENT_NONE for an anonymous visitor (also a customer without
 * consent to personalisation) and for a profile not scored yet. Explained
 * results carry it as "segment".
 * @return NBX_SEGMENT_NONE if r is NULL.
 */
NBX_API int nbx_result_segment(const nbx_result *r);

/** Longest decision id: a UUIDv7 (36 characters), then with a deployment
 * "." deployment name "." arm name (docs/experiments.md). */
#define NBX_DECISION_ID_MAX (36 + 2 + 2 * NBX_DEPLOYMENT_NAME_MAX)

/** @brief The decision id (unique, at most NBX_DECISION_ID_MAX bytes). */
NBX_API const char *nbx_result_decision_id(const nbx_result *r);

/**
 * @brief The arm whose treatment the decision served, with a deployment:
 * an arm's name, or NBX_ARM_HOLDOUT for the control treatment (customers
 * held out, and those whose arm and first arm are killed).
 * @return owned by the result; NULL without a deployment (or r NULL).
 */
NBX_API const char *nbx_result_arm(const nbx_result *r);

/**
 * @brief The arm the deployment file assigns the customer to (kills not
 * applied): differs from nbx_result_arm() when a kill moved the customer.
 * @return owned by the result; NULL without a deployment.
 */
NBX_API const char *nbx_result_assigned_arm(const nbx_result *r);

/**
 * @brief The deployment a decision was made under.
 * @param[out] version if not NULL, its version (16 hex digits), owned by
 *   the result.
 * @return its name, owned by the result; NULL without a deployment.
 */
NBX_API const char *nbx_result_deployment(const nbx_result *r, const char **version);

/**
 * @brief The policy that decided (the arm's, with a deployment).
 * @param[out] version if not NULL, its version (16 hex digits).
 * @return its name, owned by the result; NULL for the control treatment
 *   (no policy ran) or r NULL.
 */
NBX_API const char *nbx_result_policy(const nbx_result *r, const char **version);

/**
 * @brief The version of the catalog the decision was made on (16 hex
 * digits, as "catalog_version" in the result JSON).
 * @return owned by the result; NULL for r NULL.
 */
NBX_API const char *nbx_result_catalog_version(const nbx_result *r);

/** @brief Sum of expected_margin over the actions. */
NBX_API double nbx_result_expected_margin(const nbx_result *r);

/**
 * @brief Candidates excluded, counted by reason.
 * @param[out] counts NBX_EXCLUDED_COUNT entries; counts[0] is the number of
 *   candidates not excluded.
 */
NBX_API void nbx_result_exclusions(const nbx_result *r, uint32_t *counts);

/* ========================================================================
 * Trials
 * ======================================================================== */

/**
 * @brief Callback of nbx_engine_trial(): one trial customer's decision.
 * @param label what the customer stands for ("anonymous", "segment
 *   at_risk", "no consent", ...); r the result, valid during the call.
 */
typedef void (*nbx_trial_fn)(void *ud, const char *label, const nbx_result *r);

/**
 * @brief Run the engine's policy over synthetic customers built to cover
 * its catalog: an anonymous visitor, a known customer with an empty
 * profile, one customer per RFM segment, customers with every consent
 * purpose granted and refused, with propensities for every offer and
 * category and without, with and without LTV and churn, and each declared
 * channel. Decided in memory (no store is read or written), at every
 * placement, at the engine's clock.
 *
 * A policy that falls back for any of them fails with NBX_EPOLICY: the
 * message names the first customer, FILE:LINE and the reason, and counts
 * the fallbacks per reason. nbx_engine_check() runs the same trial.
 * With a deployment, each arm's policy in turn over every customer (fn
 * sees each arm's results; nbx_result_arm() says which), the message
 * prefixed with the deployment file and the arm; shadows are not tried.
 *
 * @param fn called for each customer (may be NULL).
 * @return NBX_OK (no fallback), NBX_EPOLICY, NBX_EINVAL, NBX_ENOMEM.
 * @note Thread-safe on the engine; uses a context of its own.
 */
NBX_API int nbx_engine_trial(nbx_engine *engine, nbx_trial_fn fn, void *ud);

/* ========================================================================
 * Batches: many decisions on a pool of threads, results in submission order
 *
 * A batch owns worker threads, each with its own decision context, and a
 * window of slots. The caller submits customers and takes results back in
 * the order it submitted them, whatever the number of threads; memory is
 * bounded by the window, not by the number of customers. The CLI
 * (`nbx batch`) and the Python binding are built on it. A driver loop:
 *
 *     while (more input) {
 *         while (nbx_batch_space(b) == 0 && nbx_batch_next(b, &item) == NBX_OK)
 *             consume(item);
 *         nbx_batch_submit(b, id, NULL, 0, NULL);
 *     }
 *     while (nbx_batch_next(b, &item) == NBX_OK)
 *         consume(item);
 * ======================================================================== */

typedef struct nbx_batch nbx_batch;

/** Bounds on nbx_batch_options. */
#define NBX_BATCH_THREADS_MAX 256
#define NBX_BATCH_WINDOW_MAX (1u << 20)

/** Options for nbx_batch_open(). Initialise with nbx_batch_options_init(). */
typedef struct nbx_batch_options {
    size_t size;                   /**< sizeof(nbx_batch_options) */
    unsigned threads;              /**< worker threads, 1..NBX_BATCH_THREADS_MAX (0: the
                                        CPUs this process may run on) */
    size_t window;                 /**< decisions submitted and not yet taken back, at most
                                        (0: 256 per thread); bounds the memory */
    const char *const *placements; /**< placements of every decision; n_placements 0: all */
    size_t n_placements;
    const nbx_kv *session;         /**< session fields of every decision; a customer's own
                                        field with the same key replaces one of these */
    size_t n_session;
    int64_t now_ms;                /**< the clock of every decision, as nbx_request's
                                        (0: the wall clock at nbx_batch_open(), the same for
                                        the whole batch) */
    unsigned flags;                /**< nbx_decide_flags: NBX_DECIDE_EXPLAIN,
                                        NBX_DECIDE_REASONS, NBX_DECIDE_RECORD (needs a
                                        read-write engine; see nbx_batch_open()),
                                        NBX_DECIDE_AUDIT */
    uint32_t shard_count;          /**< 0: decide every customer submitted; else only those
                                        with nbx_shard_of(id, shard_count) == shard_index */
    uint32_t shard_index;          /**< 0..shard_count-1 */
} nbx_batch_options;

/** A reason and how many candidates of a decision got it. */
typedef struct nbx_reason_count {
    const char *reason;
    uint32_t count;
} nbx_reason_count;

/**
 * One decision of a batch, as nbx_batch_next() hands it back. The fields
 * are those of the nbx_result the decision produced (see nbx_result_json()
 * and the nbx_result_* accessors), copied out of the worker's context.
 * More fields may be added at the end; the batch allocates the item.
 */
typedef struct nbx_batch_item {
    uint64_t index;            /**< submission number, from 0 */
    const char *customer;      /**< the customer id submitted */
    void *user;                /**< the pointer given to nbx_batch_submit() */
    int status;                /**< NBX_OK, or what nbx_decide() returned for it */
    const char *errmsg;        /**< when status is not NBX_OK, why; else "" */
    const char *json;          /**< nbx_result_json(); NULL when status is not NBX_OK */
    size_t json_len;
    const char *decision_id;   /**< "" when status is not NBX_OK */
    const nbx_action *actions; /**< in rank order */
    size_t n_actions;
    int fallback;              /**< nbx_result_fallback() */
    int anonymous;             /**< nbx_result_anonymous(): decided without personal
                                    data (no profile, or no consent to personalisation) */
    const char *policy_error;  /**< nbx_result_error(): NULL unless fallback */
    double expected_margin;    /**< nbx_result_expected_margin() */
    uint32_t exclusions[NBX_EXCLUDED_COUNT]; /**< nbx_result_exclusions() */
    const char *arm;            /**< nbx_result_arm(): NULL without a deployment or
                                     when status is not NBX_OK (added in 0.2) */
    const char *policy_version; /**< of nbx_result_policy(): NULL for the control
                                     treatment or when status is not NBX_OK */
    const char *audit;          /**< nbx_result_audit_json(), with NBX_DECIDE_AUDIT in the
                                     options' flags; NULL without it, or when status is
                                     not NBX_OK */
    size_t audit_len;
    /* Added in 0.2. */
    uint64_t decide_ns;        /**< how long nbx_decide() took for it, in the worker thread
                                    (monotonic clock; 0 when status is not NBX_OK) */
    int segment;               /**< nbx_result_segment(): the RFM segment the policy saw */
    /** With NBX_DECIDE_REASONS or NBX_DECIDE_EXPLAIN: the reasons eligible()
     * gave for the candidates it refused, each once with the number of
     * candidates that got it (escaped, at most 200 bytes each; a refusal
     * without a reason is not listed). Owned by the batch, as the item. */
    const nbx_reason_count *reasons;
    size_t n_reasons;
} nbx_batch_item;

/** Totals over the items nbx_batch_next() has handed back. */
typedef struct nbx_batch_stats {
    uint64_t submitted; /**< queued by nbx_batch_submit*() */
    uint64_t other_shard; /**< not queued: another shard's customers */
    uint64_t taken;     /**< handed back by nbx_batch_next() (decided + failed) */
    uint64_t decided;   /**< taken with status NBX_OK */
    uint64_t failed;    /**< taken with another status */
    uint64_t fallbacks; /**< decided with the fallback decision */
    uint64_t anonymous; /**< decided as anonymous visitors (nbx_result_anonymous()) */
    uint64_t actions;   /**< actions over all decisions */
    uint64_t exclusions[NBX_EXCLUDED_COUNT]; /**< candidates by reason, summed */
    double expected_margin; /**< sum of nbx_result_expected_margin() */
} nbx_batch_stats;

/** @brief Set defaults. @note Thread-safe. */
NBX_API void nbx_batch_options_init(nbx_batch_options *opts);

/**
 * @brief Start a batch on an engine: open one context per worker thread and
 * start the threads.
 *
 * Options are copied: placements and session may be freed after the call.
 * Placements are checked against the engine's current catalog.
 *
 * With NBX_DECIDE_RECORD the chosen actions are recorded as the same
 * impression events nbx_decide() records (id DECISION_ID:INDEX, at the
 * decision's clock), re-checked the same way against the caps as they are
 * in the write transaction, so overlapping campaigns, even running at the
 * same time, never record more than the caps allow. Two differences matter
 * for campaigns: the impressions of many decisions are committed in one
 * transaction (one fsync per group, not per customer); and a decision that
 * another writer (another batch, another process) made stale is not cut
 * down but made again on the new counters, so the customer still gets the
 * best actions that fit. An item is handed back only once its impressions
 * are committed; a decision still stale after 8 attempts fails with
 * NBX_ELIMIT, unrecorded.
 *
 * Without NBX_DECIDE_RECORD the batch plans: it records nothing, but counts
 * its own actions against the offers' daily impression budgets (in memory,
 * shared by its threads, on top of the store's counts), so a budgeted offer
 * reaches as many customers as a recording batch would give it.
 *
 * @param engine the engine; must outlive the batch (close the batch first).
 * @param opts may be NULL for defaults.
 * @param[out] out the batch, NULL on failure (see nbx_last_errmsg()).
 * @return NBX_OK; NBX_EINVAL (NULL engine or out, opts->size too small,
 *   threads or window out of range, unknown flags, shard_index not below
 *   shard_count, an unknown placement, a bad session field: the message
 *   names it); NBX_EREADONLY
 *   (NBX_DECIDE_RECORD on a read-only engine); NBX_EPOLICY, NBX_ESTORE,
 *   NBX_ENOMEM (opening a context or starting a thread).
 * @note Thread-safe on the engine. The returned batch belongs to one thread
 *   at a time (see nbx_batch_next()). Its worker threads block every signal.
 *   Like every handle, a batch does not survive fork(): its threads do not
 *   exist in the child.
 */
NBX_API int nbx_batch_open(nbx_engine *engine, const nbx_batch_options *opts, nbx_batch **out);

/**
 * @brief How many more customers nbx_batch_submit() accepts before results
 * must be taken with nbx_batch_next().
 * @return free slots of the window; 0 if b is NULL.
 */
NBX_API size_t nbx_batch_space(const nbx_batch *b);

/**
 * @brief Submitted customers whose results have not been taken yet.
 * @return 0 if b is NULL.
 */
NBX_API size_t nbx_batch_pending(const nbx_batch *b);

/**
 * @brief Queue one decision. Never blocks.
 *
 * The customer and the session are copied. The session is merged over
 * nbx_batch_options.session (same key: this one wins).
 *
 * @param customer customer id, 1..NBX_ID_MAX bytes, no NUL.
 * @param session this customer's session fields, may be NULL if n_session is 0.
 * @param user handed back unchanged in nbx_batch_item.user; nbx never reads it.
 * @return NBX_OK; NBX_DONE (not an error: the customer belongs to another
 *   shard, see nbx_batch_options.shard_count; nothing is queued);
 *   NBX_EINVAL (NULL batch or customer, a bad id, a session
 *   field without key or value or too long, more than
 *   NBX_REQUEST_SESSION_MAX fields once merged: nothing is queued, see
 *   nbx_batch_errmsg()); NBX_ELIMIT (the window is full: take results first);
 *   NBX_ENOMEM.
 * @note Not thread-safe on the batch: see nbx_batch_next().
 */
NBX_API int nbx_batch_submit(nbx_batch *b, const char *customer, const nbx_kv *session,
                             size_t n_session, void *user);

/**
 * @brief Queue one decision given as a JSON object: "id" (the customer, a
 * string) and the customer's session fields, whose values are strings,
 * numbers (passed as written) or booleans ("true"/"false"); a null value
 * leaves the field out. Never blocks.
 *
 * Example: {"id": "c0000042", "channel": "email", "day": 3}
 *
 * @param json the object (one line of a JSONL file); len its length.
 * @return NBX_OK; NBX_DONE (another shard's customer, as nbx_batch_submit());
 *   NBX_EPARSE (not such an object: the message gives the
 *   column or names the field; nothing is queued); NBX_ELIMIT (window full,
 *   or len > NBX_LINE_MAX); NBX_EINVAL (NULL argument, too many fields);
 *   NBX_ENOMEM.
 * @note Not thread-safe on the batch: see nbx_batch_next().
 */
NBX_API int nbx_batch_submit_json(nbx_batch *b, const char *json, size_t len, void *user);

/**
 * @brief Take the result of the oldest submitted decision not taken yet,
 * waiting for it if it is still running.
 *
 * A decision that fails (nbx_decide() returned an error) is still handed
 * back, in its place, with item->status and item->errmsg set: one bad
 * customer does not stop the batch.
 *
 * @param[out] out the item, owned by the batch; valid until the next call of
 *   nbx_batch_next() or nbx_batch_close() on this batch.
 * @return NBX_OK; NBX_DONE when every submitted decision has been taken
 *   (*out is NULL); NBX_EINVAL (NULL argument).
 * @note A batch belongs to one thread at a time: nbx_batch_submit*(),
 *   nbx_batch_next(), nbx_batch_stats_get() and nbx_batch_close() must not
 *   run concurrently on it. Decisions run on the batch's own threads.
 */
NBX_API int nbx_batch_next(nbx_batch *b, const nbx_batch_item **out);

/**
 * @brief Totals over the items taken so far.
 * @return NBX_OK or NBX_EINVAL.
 */
NBX_API int nbx_batch_stats_get(const nbx_batch *b, nbx_batch_stats *out);

/**
 * @brief Detail of the last failed call on this batch (submit, next).
 * @return never NULL; valid until the next call on the batch.
 */
NBX_API const char *nbx_batch_errmsg(const nbx_batch *b);

/**
 * @brief Stop the batch: decisions still queued are dropped, decisions
 * running finish, the threads are joined and the contexts closed. With
 * NBX_DECIDE_RECORD, impressions of items not handed back may already be
 * committed (a group is committed before its items are handed back);
 * decisions whose group was not committed yet are not recorded. NULL is a
 * no-op.
 * @note Not thread-safe with other calls on the same batch.
 */
NBX_API void nbx_batch_close(nbx_batch *b);

/**
 * @brief The shard of a customer id: xxh64 of the id's bytes (no NUL) with
 * seed 0, modulo n. N tasks that each take the ids with shard I (0..N-1)
 * cover every customer exactly once; `nbx batch --shard I/N` uses it, and
 * any tool with an xxh64 (XXH64 from xxHash) reproduces it.
 * @return 0..n-1; UINT32_MAX if id is NULL or n is 0.
 * @note Thread-safe.
 */
NBX_API uint32_t nbx_shard_of(const char *id, uint32_t n);

/* ========================================================================
 * Deployments: what serves whom (docs/experiments.md)
 *
 * A deployment file (JSON) names a holdout share, arms (a policy each, with
 * a share of the customers not held out) and shadow policies:
 *
 *     {"name": "q4", "salt": "q4-2026", "holdout": {"percent": 5},
 *      "arms": [{"name": "champion", "policy": "margin.lua", "percent": 90},
 *               {"name": "challenger", "policy": "retention.lua", "percent": 10,
 *                "abort": {"min_decisions": 1000, "max_fallback_rate": 0.01}}],
 *      "shadow": ["next_idea.lua"]}
 *
 * Assignment is deterministic and the same in every binding:
 *
 *     bucket = XXH64(customer id bytes, seed = XXH64(salt bytes, seed 0)) mod 10000
 *
 * A bucket below holdout.percent x 100 is the holdout. The buckets left,
 * [H, 10000), are cut into consecutive ranges in arm order: arm i has
 * [H + (10000 - H) x C(i-1) / 10000, H + (10000 - H) x C(i) / 10000), with
 * C(i) the sum of the first i arms' percents in hundredths (integer
 * division), so the last arm ends at 10000.
 * ======================================================================== */

/** Buckets customers are hashed into: a percent has at most two decimals. */
#define NBX_ASSIGN_BUCKETS 10000
/** The arm name of customers held out (reserved: no arm may take it). */
#define NBX_ARM_HOLDOUT "holdout"
/** Bounds on a deployment file. Names (the deployment's and each arm's) are
 * 1..NBX_DEPLOYMENT_NAME_MAX bytes of [A-Za-z0-9_.-], the deployment's
 * without '.': they travel in decision ids (UUID.DEPLOYMENT.ARM, split at
 * the first dot after the UUID) and metric labels. */
#define NBX_DEPLOYMENT_NAME_MAX 64
#define NBX_DEPLOYMENT_ARMS_MAX 16
#define NBX_DEPLOYMENT_SHADOW_MAX 8

/** Flags for nbx_deployment_open(). */
enum nbx_deployment_flags {
    /** Do not read the policy files: for assignment only (reports, audits
     * of an old deployment whose policies have moved on). An engine cannot
     * serve such a deployment. */
    NBX_DEPLOYMENT_NO_POLICIES = 0x1
};

/**
 * @brief Read and validate a deployment file and the policy files it names
 * (paths relative to the deployment file's directory): each must load as
 * nbx_policy_check() would read it (syntax, the sandbox's rules). Nothing is
 * run: an engine's open runs the trials.
 *
 * All or nothing: a file with any error yields no deployment. The message
 * (nbx_last_errmsg()) names the file, the arm and the field
 * ("q4.json: arm 'challenger': field 'percent': must be a number from 0 to
 * 100"), or the policy file and line.
 *
 * @param flags nbx_deployment_flags, OR-ed.
 * @param[out] out the deployment, NULL on failure; close with
 *   nbx_deployment_close().
 * @return NBX_OK, NBX_EINVAL (NULL argument, unknown flags), NBX_ENOTFOUND,
 *   NBX_EIO, NBX_EPARSE (the deployment), NBX_EPOLICY (a policy file),
 *   NBX_ELIMIT (a file too large, too many arms or shadows), NBX_ENOMEM.
 * @note Thread-safe. A deployment holds memory only (no file, lock or Lua
 *   state): unlike other handles it may be opened before fork() and used
 *   in the children (nbx_engine_options.deployment_handle), and is
 *   immutable, so threads may share it.
 */
NBX_API int nbx_deployment_open(const char *path, unsigned flags, nbx_deployment **out);

/**
 * @brief Release a deployment. Engines opened with it keep their own
 * reference: it may be closed as soon as nbx_engine_open() returns. NULL is
 * a no-op.
 * @note Thread-safe.
 */
NBX_API void nbx_deployment_close(nbx_deployment *d);

/** @brief The deployment's name; NULL if d is NULL. Owned by d. */
NBX_API const char *nbx_deployment_name(const nbx_deployment *d);

/** @brief Its version: the xxh64 of the file, 16 hex digits; NULL if d is
 * NULL. Owned by d. */
NBX_API const char *nbx_deployment_version(const nbx_deployment *d);

/** @brief Number of arms (the holdout is not one); 0 if d is NULL. */
NBX_API size_t nbx_deployment_arm_count(const nbx_deployment *d);

/** @brief Name of arm i (file order; arm 0 is the first arm, the reference
 * of canaries and where a killed arm's customers go); NULL if out of
 * range. Owned by d. */
NBX_API const char *nbx_deployment_arm_name(const nbx_deployment *d, size_t i);

/**
 * @brief The bucket of a customer for a salt: XXH64(customer, seed =
 * XXH64(salt, 0)) mod NBX_ASSIGN_BUCKETS, over the bytes given (no NUL).
 * @return 0..9999; UINT32_MAX for a NULL pointer with a non-zero length.
 * @note Thread-safe.
 */
NBX_API uint32_t nbx_assign_bucket(const char *salt, size_t salt_len, const char *customer,
                                   size_t len);

/**
 * @brief The arm the deployment file assigns a customer to (kill switches
 * are not applied: see nbx_result_arm() for the arm a decision served).
 * @param customer the id's bytes; len its length.
 * @return the arm's name, or NBX_ARM_HOLDOUT; owned by d (NBX_ARM_HOLDOUT
 *   is static). NULL if d or customer is NULL.
 * @note Thread-safe.
 */
NBX_API const char *nbx_deployment_assign(const nbx_deployment *d, const char *customer,
                                          size_t len);

/* ========================================================================
 * Audit log and replay
 *
 * A decision made with NBX_DECIDE_AUDIT carries its audit line: one JSON
 * object, without a line break, holding what is needed to audit the
 * decision and to make it again (docs/experiments.md, "The audit log"):
 * its id and clock (`as_of`), the customer, the arm and deployment, the
 * policy and catalog versions, the request's session fields and
 * placements, the actions with score, expected margin and probability,
 * the exclusions by reason, fallback and error, and what the decision
 * read that may change later (`state`: the profile's updated_at, a hash of
 * the customer's exposure counters). Text from requests and policies is
 * JSON-escaped, control characters (C0, DEL, C1) included, so a line is
 * safe to write to a log as it is. `nbx decide --log`, `nbx batch --log`,
 * the Python binding's log= and nginx's $nbx_decision write it.
 * ======================================================================== */

/**
 * @brief The decision's audit line.
 * @param[out] len if not NULL, its length (0 when there is none).
 * @return NUL-terminated JSON without a line break, owned by the result
 *   and valid as long as it is; NULL when r is NULL or the decision was
 *   made without NBX_DECIDE_AUDIT.
 * @note Like the result, belongs to the context's thread.
 */
NBX_API const char *nbx_result_audit_json(const nbx_result *r, size_t *len);

/**
 * @brief Make a logged decision again and say whether it is the same.
 *
 * The decision of one audit line (as nbx_result_audit_json() wrote it; on a
 * line of another log, the JSON object that ends the line) is made again on
 * the context, at the line's `as_of`, with its customer, session fields and
 * placements, with the engine's policy, catalog and deployment and the
 * store as they are now, recording nothing. The two decisions are compared
 * (arm, deployment, policy and catalog versions, actions with their scores,
 * margins and probabilities, fallback, error, anonymous, exclusions),
 * and what changed since is looked up: the policy, catalog, deployment or
 * arm; the profile (its updated_at differs from the one the decision read);
 * the customer's exposure counters (events recorded since; the decision's
 * own recorded impressions, DECISION_ID:N, are named apart); the daily
 * budgets. The report is one JSON object (docs/experiments.md, "Replay"):
 * {"decision_id", "customer", "as_of", "identical": bool, "differences":
 * [field, ...], "reasons": [{"reason": ..., ...}, ...], "replayed": the new
 * decision's audit line, or "replay_error": why it could not be made}.
 *
 * @param ctx a context of the engine to replay with (its decision is
 *   replaced, as by nbx_decide()).
 * @param line, len the audit line (need not end in NUL).
 * @param[out] report malloc'd NUL-terminated JSON, free with nbx_free().
 * @param[out] report_len if not NULL, its length.
 * @return NBX_OK (also when the decisions differ, or the decision cannot
 *   be made any more: see the report); NBX_EINVAL (NULL argument);
 *   NBX_EPARSE (not an audit line: nbx_ctx_errmsg() names the field);
 *   NBX_ELIMIT (len > NBX_LINE_MAX); NBX_ECORRUPT, NBX_ESTORE (reading the
 *   customer's records); NBX_ENOMEM.
 * @note The context belongs to one thread at a time.
 */
NBX_API int nbx_audit_replay(nbx_ctx *ctx, const char *line, size_t len, char **report,
                             size_t *report_len);

/* ========================================================================
 * Experiments: per-arm counters
 *
 * For each deployment and arm the store counts, per UTC day, the decisions
 * the arm served, its fallbacks and errors, its expected margin, and the
 * impressions, accepts and purchases of events that carry one of its
 * decision ids (docs/experiments.md, "Counters").
 * ======================================================================== */

/** One arm's counters over a window, as nbx_arm_counters_read() hands them. */
typedef struct nbx_arm_counters {
    const char *deployment;  /**< the deployment's name */
    const char *arm;         /**< the arm's name, or "holdout" */
    uint64_t decisions;      /**< decisions the arm served */
    uint64_t fallbacks;      /**< of them, the fallback decision (its policy failed) */
    uint64_t errors;         /**< decisions that failed (no result) once the arm was known */
    uint64_t impressions;    /**< impression events carrying one of its decision ids */
    uint64_t accepts;        /**< accept events carrying one */
    uint64_t purchases;      /**< purchase events carrying one */
    double expected_margin;  /**< sum of the decisions' expected margin */
    double realised_margin;  /**< sum of those purchases' margin */
    int64_t first_day_ms;    /**< start of the first UTC day counted in the window */
    int64_t last_day_ms;     /**< start of the last one */
} nbx_arm_counters;

/**
 * Callback of nbx_arm_counters_read(): one arm. c and its strings are
 * valid during the call only. Return 0 to go on, anything else to stop.
 */
typedef int (*nbx_arm_counters_fn)(void *ud, const nbx_arm_counters *c);

/**
 * @brief The per-arm counters of the store, summed over the UTC days that
 * the window [from_ms, to_ms) touches, one call per (deployment, arm) in
 * name order (bytewise: deployment, then arm).
 *
 * Counters are written by engines on a writable store (flushed every
 * second or 1,000 decisions and when a context closes) and by events
 * carrying a `decision_id`; what a running engine counted since its last
 * flush is not in the store yet. A store of a format before 3 has none
 * (no call).
 *
 * @param deployment only this deployment's arms; NULL: every deployment.
 * @param from_ms, to_ms the window (epoch ms); 0 and 0: every day.
 * @return NBX_OK (also when fn stopped early), NBX_EINVAL (NULL store or
 *   fn, a name that cannot be a deployment's, a window that is not
 *   0 <= from_ms < to_ms within the year 9999), NBX_ECORRUPT, NBX_ESTORE.
 * @note Thread-safe. Reads one snapshot of the store.
 */
NBX_API int nbx_arm_counters_read(nbx_store *store, const char *deployment, int64_t from_ms,
                                  int64_t to_ms, nbx_arm_counters_fn fn, void *ud);

/* ========================================================================
 * Experiments: the incrementality report
 *
 * Intent-to-treat: every customer of the store counts in the arm the
 * deployment assigns it (nbx_deployment_assign()), decided for or not; its
 * outcome is the contribution margin of its purchase events dated in the
 * window (0 without any). Each arm's uplift is its mean margin per
 * customer less the holdout's, with a 95 % interval by Welch's t
 * (docs/experiments.md, "The experiment report").
 * ======================================================================== */

typedef struct nbx_report nbx_report;

/** One arm of a report (or the holdout), owned by the report. More fields
 * may be added at the end. */
typedef struct nbx_report_arm {
    const char *name;            /**< the arm's name, or "holdout" */
    uint64_t customers;          /**< customers of the store assigned to it */
    uint64_t buyers;             /**< of them, with a purchase in the window */
    uint64_t purchases;          /**< their purchase events in the window */
    uint64_t purchases_without_margin; /**< of them, without `margin` (counted as 0) */
    double margin;               /**< the sum of those purchases' margin */
    double margin_per_customer;  /**< margin / customers; NaN without customers */
    double margin_sd;            /**< standard deviation of a customer's margin; NaN
                                      below two customers */
    uint64_t decisions;          /**< the arm's counters (nbx_arm_counters_read()) of
                                      the UTC days the window touches */
    uint64_t impressions;
    uint64_t accepts;
    double accept_rate;          /**< accepts / decisions; NaN without decisions */
    int has_uplift;              /**< 0 for the holdout, and when the arm or the
                                      holdout has fewer than two customers */
    double uplift;               /**< margin_per_customer - the holdout's */
    double uplift_low;           /**< its 95 % interval (Welch) */
    double uplift_high;
    double uplift_df;            /**< Welch-Satterthwaite degrees of freedom (INFINITY
                                      when no customer's margin differs) */
} nbx_report_arm;

/**
 * @brief The incrementality report of a deployment over the window
 * [from_ms, to_ms): one read of every customer of the store (one snapshot).
 * @param d the deployment (policies need not be loaded:
 *   NBX_DEPLOYMENT_NO_POLICIES); the report keeps a reference.
 * @param[out] out the report, NULL on failure; close with
 *   nbx_report_close().
 * @return NBX_OK, NBX_EINVAL (NULL argument, a window that is not
 *   1970 <= from < to <= 9999), NBX_ECORRUPT (a damaged record: the message
 *   names the customer), NBX_ESTORE, NBX_ENOMEM.
 * @note Thread-safe on the store. Takes time linear in the store's records.
 */
NBX_API int nbx_report_experiment(nbx_store *store, const nbx_deployment *d, int64_t from_ms,
                                  int64_t to_ms, nbx_report **out);

/** @brief The report's arms: the holdout first, then the deployment's arms
 * in file order; 0 if r is NULL. */
NBX_API size_t nbx_report_arm_count(const nbx_report *r);

/** @brief Arm i; NULL if out of range. Valid until nbx_report_close(). */
NBX_API const nbx_report_arm *nbx_report_arm_at(const nbx_report *r, size_t i);

/**
 * @brief The report as JSON: {"deployment": {"name", "version"}, "from",
 * "to", "method", "arms": {NAME: {"customers", "decisions", "impressions",
 * "accepts", "accept_rate", "buyers", "purchases",
 * "purchases_without_margin", "margin", "margin_per_customer", "margin_sd",
 * "uplift": {"estimate", "low", "high", "df"} or null}}}, the arms in the
 * order of nbx_report_arm_at(); numbers that are not defined are null.
 * @return NUL-terminated, owned by the report; NULL if r is NULL.
 */
NBX_API const char *nbx_report_json(const nbx_report *r, size_t *len);

/** @brief Free a report. NULL is a no-op. */
NBX_API void nbx_report_close(nbx_report *r);

/* ========================================================================
 * Kill switches
 *
 * An offer, an arm of a deployment or a policy version can be killed: kept
 * from serving, in every process and nginx worker using the store, from
 * their next decision on, without a reload. A killed offer is excluded
 * with NBX_EXCLUDED_KILLED (fallbacks included); a killed arm's customers,
 * or those of an arm whose policy version is killed, go to the first arm
 * not killed, and to the control treatment when the first arm is killed
 * (docs/experiments.md, "Kill switches"). Every kill and unkill is kept in
 * the store's history, which nothing deletes.
 * ======================================================================== */

/** What a kill names. */
typedef enum nbx_kill_kind {
    NBX_KILL_OFFER = 1,  /**< an offer id: 1..128 bytes, no NUL */
    NBX_KILL_ARM = 2,    /**< DEPLOYMENT.ARM, that deployment's arm, or ARM
                              alone, the arm of that name in every deployment:
                              names of 1..64 bytes of [A-Za-z0-9_.-] (a
                              deployment's name, and an ARM alone, hold no
                              '.'); not the holdout */
    NBX_KILL_POLICY = 3, /**< a policy version: 16 lowercase hex digits, as the
                              result's policy.version */
} nbx_kill_kind;

/** Longest kill reason, in bytes (valid UTF-8, no NUL). */
#define NBX_KILL_REASON_MAX 1024

/** A kill (current) or a change of the history, as nbx_kills_read() hands it. */
typedef struct nbx_kill_info {
    int kind;           /**< nbx_kill_kind */
    const char *name;   /**< the offer id, [DEPLOYMENT.]ARM or policy version */
    const char *reason; /**< as given: escape it before a terminal; "" if none */
    const char *by;     /**< the origin: "cli", "abort", ... */
    int64_t at_ms;      /**< when (the writer's clock, epoch ms) */
    int killed;         /**< 1 a kill; 0 an unkill (history only) */
    uint64_t seq;       /**< history: the change's number, from 1; current: 0 */
} nbx_kill_info;

/**
 * @brief Kill what kind and name designate, or kill it again with a new
 * reason; appends the change to the history. All or nothing.
 * @param store opened writable, of format 3 (nbx store upgrade).
 * @param kind nbx_kill_kind.
 * @param name the offer id, [DEPLOYMENT.]ARM or policy version (see
 *   nbx_kill_kind); it need not exist anywhere yet.
 * @param reason why: 1..NBX_KILL_REASON_MAX bytes of UTF-8, no NUL.
 * @param by the origin recorded with it: 1..64 bytes of [A-Za-z0-9_.-]
 *   ("cli"; an abort writes "abort"); NULL: "api".
 * @return NBX_OK; NBX_EINVAL (NULL store, a bad kind, name, reason or by:
 *   the message names the field), NBX_EREADONLY (read-only store, or one of
 *   a format before 3), NBX_ESTORE. Nothing is written on failure.
 * @note Thread-safe; effective on the next decision of every engine on the
 *   store.
 */
NBX_API int nbx_kill(nbx_store *store, int kind, const char *name, const char *reason,
                     const char *by);

/**
 * @brief Lift a kill; appends the change to the history. All or nothing.
 * @param reason optional (NULL or ""), else as nbx_kill()'s.
 * @return as nbx_kill(), and NBX_ENOTFOUND when it is not killed (nothing
 *   written).
 * @note Thread-safe.
 */
NBX_API int nbx_unkill(nbx_store *store, int kind, const char *name, const char *reason,
                       const char *by);

/** Callback of nbx_kills_read(); k and its strings are valid during the
 * call only. Return 0 to go on, anything else to stop. */
typedef int (*nbx_kill_fn)(void *ud, const nbx_kill_info *k);

/** nbx_kills_read(): the history instead of the current kills. */
#define NBX_KILLS_HISTORY 1u

/**
 * @brief The current kills (by kind: offers, arms, policies; then name,
 * bytewise), or with NBX_KILLS_HISTORY every kill and unkill in the order
 * they were made.
 * @return NBX_OK (also when fn stopped early; a store of a format before 3
 *   has none: no call), NBX_EINVAL (NULL store or fn, unknown flags),
 *   NBX_ECORRUPT, NBX_ESTORE.
 * @note Thread-safe. Reads one snapshot of the store.
 */
NBX_API int nbx_kills_read(nbx_store *store, unsigned flags, nbx_kill_fn fn, void *ud);

/**
 * @brief The name of a kind ("offer", "arm", "policy"); NULL if unknown.
 * @note Thread-safe.
 */
NBX_API const char *nbx_kill_kind_name(int kind);

#ifdef __cplusplus
}
#endif
#endif /* NBX_H */
