/*
 * nbx_int.h: the one private header of libnbx.
 *
 * Nothing here is API. Sections follow the decision's flow: utilities, JSON,
 * store (codec, profile, exposures, events), catalog, sandbox, decisions.
 * Each section names the file that owns it.
 */
#ifndef NBX_INT_H
#define NBX_INT_H

#include "nbx.h"

#include <lmdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#define NBX_UNUSED(x) ((void)(x))
#define NBX_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NBX_LIKELY(x) __builtin_expect(!!(x), 1)
#define NBX_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NBX_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ========================================================================
 * Errors (util.c)
 *
 * Internal functions report into a caller-supplied nbx_err; public entry
 * points then publish it as the handle's message (nbx_publish), which also
 * becomes the calling thread's nbx_last_errmsg().
 * ======================================================================== */

#define NBX_ERRMSG_MAX 768

typedef struct nbx_err {
    int code;
    char msg[NBX_ERRMSG_MAX];
} nbx_err;

/* Record code and message in e (if not NULL); returns code. */
int nbx_err_set(nbx_err *e, int code, const char *fmt, ...) NBX_PRINTF(3, 4);
/* Messages are stored escaped (nbx_escape_text): no byte of outside text
 * that could steer a terminal reaches a caller through nbx_err. */
/* Prepend context ("FILE:LINE: ") to an existing message; returns e->code. */
int nbx_err_prefix(nbx_err *e, const char *fmt, ...) NBX_PRINTF(2, 3);
/* Copy n bytes of text into out (cap bytes, always NUL-terminated), with C0
 * and C1 controls, DEL and invalid UTF-8 written as \xNN; never splits a
 * character or an escape. Returns the length written. */
size_t nbx_escape_text(char *out, size_t cap, const char *in, size_t n);
/* Length of the valid UTF-8 sequence at p (1..4, ASCII is 1), 0 if invalid
 * (overlong, surrogate, beyond U+10FFFF, truncated). */
size_t nbx_utf8_len(const unsigned char *p, const unsigned char *end);
/* Map an LMDB return code; what says which operation failed. */
int nbx_err_mdb(nbx_err *e, int rc, const char *what);
/* Map errno after a failed OS call on path. */
int nbx_err_errno(nbx_err *e, int errnum, const char *what, const char *path);
/* Thread-local message for an owner handle (NULL: no handle); returns code. */
int nbx_publish(const void *owner, const nbx_err *e);
int nbx_fail(const void *owner, int code, const char *fmt, ...) NBX_PRINTF(3, 4);
void nbx_clear_error(const void *owner);
const char *nbx_errmsg_of(const void *owner);

/* ========================================================================
 * Byte buffers and arenas (util.c)
 * ======================================================================== */

typedef struct nbx_sv {
    const char *ptr;
    size_t len;
} nbx_sv;

#define NBX_SV(lit) ((nbx_sv){(lit), sizeof(lit) - 1})
static inline nbx_sv nbx_sv_of(const char *s)
{
    nbx_sv v = {s, s ? __builtin_strlen(s) : 0};
    return v;
}
/* Byte order, shorter first on a common prefix. Inline: keys and ids are
 * short and differ early, so a byte loop beats a call to memcmp (it is on
 * the decision's hot path: propensity joins, consent lookups). */
static inline int nbx_sv_cmp(nbx_sv a, nbx_sv b)
{
    const unsigned char *p = (const unsigned char *)a.ptr, *q = (const unsigned char *)b.ptr;
    size_t n = a.len < b.len ? a.len : b.len;
    for (size_t i = 0; i < n; i++)
        if (p[i] != q[i])
            return p[i] < q[i] ? -1 : 1;
    return a.len < b.len ? -1 : a.len > b.len;
}
static inline bool nbx_sv_eq(nbx_sv a, nbx_sv b)
{
    return a.len == b.len && (a.len == 0 || __builtin_memcmp(a.ptr, b.ptr, a.len) == 0);
}
static inline bool nbx_sv_eq_cstr(nbx_sv a, const char *s)
{
    return nbx_sv_eq(a, nbx_sv_of(s));
}

/* Growable buffer. On allocation failure `oom` is set and later appends are
 * dropped, so a writer can check once at the end. */
typedef struct nbx_buf {
    char *data;
    size_t len;
    size_t cap;
    bool oom;
} nbx_buf;

int nbx_buf_reserve(nbx_buf *b, size_t extra);
/* The appends' slow path: growing the buffer, or dropping after oom. */
void nbx_buf_append_grow(nbx_buf *b, const void *p, size_t n);
/* Inline, the common case (room left) a bound check and a copy: a result
 * is written in over a hundred small appends per decision, and a call, a
 * strlen and a reserve each cost more than copying a short literal, whose
 * length the compiler then knows (a batch customer's cost, by callgrind). */
static inline void nbx_buf_append(nbx_buf *b, const void *p, size_t n)
{
    if (NBX_LIKELY(!b->oom && b->cap - b->len > n)) {
        if (n)
            __builtin_memcpy(b->data + b->len, p, n);
        b->len += n;
        return;
    }
    nbx_buf_append_grow(b, p, n);
}
static inline void nbx_buf_putc(nbx_buf *b, char c)
{
    nbx_buf_append(b, &c, 1);
}
static inline void nbx_buf_puts(nbx_buf *b, const char *s)
{
    nbx_buf_append(b, s, __builtin_strlen(s));
}
void nbx_buf_putu(nbx_buf *b, uint64_t v); /* decimal digits */
void nbx_buf_printf(nbx_buf *b, const char *fmt, ...) NBX_PRINTF(2, 3);
/* NUL-terminate without counting the NUL in len. */
void nbx_buf_terminate(nbx_buf *b);
static inline void nbx_buf_reset(nbx_buf *b)
{
    b->len = 0;
    b->oom = false;
}
void nbx_buf_free(nbx_buf *b);
/* msgpack-c packer write callback over an nbx_buf. */
int nbx_buf_msgpack_write(void *data, const char *buf, size_t len);

/* Bump allocator, reset per record or per decision: the hot path allocates
 * from memory it already owns. */
typedef struct nbx_arena_chunk nbx_arena_chunk;
typedef struct nbx_arena {
    nbx_arena_chunk *chunks;
    char *ptr;
    char *end;
} nbx_arena;

void *nbx_arena_alloc(nbx_arena *a, size_t size);
char *nbx_arena_strndup(nbx_arena *a, const char *s, size_t n);
/* Keep the newest chunk for reuse, free the rest. */
void nbx_arena_reset(nbx_arena *a);
void nbx_arena_free(nbx_arena *a);

/* Read a whole (bounded) file into a malloc'd NUL-terminated buffer. */
int nbx_read_file(const char *path, size_t max, char **out, size_t *len, nbx_err *e);

/* SipHash-2-4, 128-bit output (siphash.c): a keyed hash, for ids that must
 * not be stored in the clear. */
void nbx_siphash128(const uint8_t key[16], const void *data, size_t len, uint8_t out[16]);

/* xxh64 as 16 lowercase hex digits plus NUL. */
void nbx_hex64(uint64_t v, char out[17]);
uint64_t nbx_hash64(const void *p, size_t n, uint64_t seed);

/* ========================================================================
 * Time (time.c)
 * ======================================================================== */

#define NBX_MS_PER_DAY INT64_C(86400000)
/* Times are years 0001 to 9999 (what nbx_time_format() writes); outside
 * that, NBX_EPARSE. */
#define NBX_TIME_MIN_MS INT64_C(-62135596800000) /* 0001-01-01T00:00:00Z */
#define NBX_TIME_MAX_MS INT64_C(253402300799999) /* 9999-12-31T23:59:59.999Z */
int nbx_time_parse_n(const char *s, size_t n, int64_t *out_ms);
/* Epoch seconds (JSON numbers in profiles and events) to milliseconds. */
int nbx_time_from_secs(double secs, int64_t *out_ms);
/* UTC day number (days since the epoch) of a time. */
static inline uint32_t nbx_day_of(int64_t ms)
{
    return (uint32_t)((ms >= 0 ? ms : ms - NBX_MS_PER_DAY + 1) / NBX_MS_PER_DAY);
}
int64_t nbx_monotonic_us(void);
/* A time as a JSON value: its RFC 3339 string, null outside the years
 * nbx_time_format() writes. In time.c, which reads numbers with json.c's
 * nbx_parse_double(): json.c stays below time.c. */
void nbx_jw_time(nbx_buf *b, int64_t ms);

/* ========================================================================
 * JSON (json.c)
 *
 * A strict pull reader for the hot input paths (profile and event lines):
 * zero-copy strings unless escaped, exact fast number parsing, bounded
 * nesting, UTF-8 validated, NUL rejected. And a writer into nbx_buf.
 * jansson is used where speed does not matter (catalog, CLI).
 * ======================================================================== */

typedef enum nbx_jtype {
    NBX_J_ERROR = 0,
    NBX_J_NULL,
    NBX_J_FALSE,
    NBX_J_TRUE,
    NBX_J_NUMBER,
    NBX_J_STRING,
    NBX_J_OBJECT,
    NBX_J_ARRAY,
    NBX_J_END /* no more input */
} nbx_jtype;

#define NBX_JSON_DEPTH_MAX 32

typedef struct nbx_jr {
    const char *start;
    const char *p;
    const char *end;
    nbx_arena *scratch; /* unescaped strings; may be NULL: escapes then fail */
    int depth;
    uint64_t first; /* bit per nesting level: no element read there yet */
    char err[160];
} nbx_jr;

void nbx_jr_init(nbx_jr *r, const char *data, size_t len, nbx_arena *scratch);
/* Type of the next value, without consuming it. */
nbx_jtype nbx_jr_peek(nbx_jr *r);
/* Consume one value of the given kind; return false and set err otherwise. */
bool nbx_jr_null(nbx_jr *r);
bool nbx_jr_bool(nbx_jr *r, bool *out);
bool nbx_jr_number(nbx_jr *r, double *out);
bool nbx_jr_string(nbx_jr *r, nbx_sv *out);
bool nbx_jr_skip(nbx_jr *r);
/* Objects: begin, then next_key until it returns 0 (end) or -1 (error). */
bool nbx_jr_object_begin(nbx_jr *r);
int nbx_jr_object_next(nbx_jr *r, nbx_sv *key);
bool nbx_jr_array_begin(nbx_jr *r);
int nbx_jr_array_next(nbx_jr *r);
/* Only whitespace may follow. */
bool nbx_jr_finish(nbx_jr *r);
/* 1-based column of the reader position, for messages. */
size_t nbx_jr_column(const nbx_jr *r);

void nbx_jw_string(nbx_buf *b, const char *s, size_t n);
static inline void nbx_jw_sv(nbx_buf *b, nbx_sv v)
{
    nbx_jw_string(b, v.ptr, v.len);
}
/* Shortest form that reads back to the same double; non-finite as null. */
void nbx_jw_number(nbx_buf *b, double v);
/* Fixed point, up to 9 decimals (exact form outside [1e-3, 1e9)): for
 * decision results, where speed matters more than the last bits. */
void nbx_jw_decimal(nbx_buf *b, double v);
/* Parse a double from a bounded decimal string (locale-independent). */
bool nbx_parse_double(const char *s, size_t n, double *out);

/* ========================================================================
 * Profiles (profile.c, codec.c)
 * ======================================================================== */

typedef enum nbx_attr_type { NBX_ATTR_STRING = 1, NBX_ATTR_NUMBER, NBX_ATTR_BOOL } nbx_attr_type;

typedef struct nbx_attr {
    nbx_sv key;
    uint8_t type; /* nbx_attr_type; 0 in a patch means "delete this key" */
    bool boolean;
    double number;
    nbx_sv string;
} nbx_attr;

typedef struct nbx_consent {
    nbx_sv purpose;
    uint8_t state; /* 1 granted, 0 refused; 2 in a patch means "delete" */
} nbx_consent;

typedef struct nbx_prop {
    nbx_sv key;
    double value; /* NaN in a patch means "delete" */
} nbx_prop;

typedef struct nbx_rfm {
    int64_t first_purchase; /* ms; 0 = no purchase */
    int64_t last_purchase;
    uint64_t orders;
    double revenue;
    double margin;
    uint8_t r, f, m; /* 1..5, 0 = not scored */
    uint8_t segment; /* nbx_segment */
} nbx_rfm;

/* The purchase aggregates a profile import gave (a CRM's history), and the
 * time they are complete up to: purchase events dated after as_of add to
 * them, earlier ones are counted in them already. The profile's nbx_rfm
 * holds the result (docs/data-model.md, "Which source wins"). */
typedef struct nbx_rfm_base {
    int64_t as_of; /* ms; 0: covers no purchase event */
    int64_t first_purchase, last_purchase;
    uint64_t orders;
    double revenue, margin;
} nbx_rfm_base;

/* Fields present in a stored profile, or given in a patch. */
enum nbx_profile_field {
    NBX_PF_ATTRS = 1u << 0,
    NBX_PF_CONSENT = 1u << 1,
    NBX_PF_PROPENSITY = 1u << 2,
    NBX_PF_LTV = 1u << 3,
    NBX_PF_CHURN = 1u << 4,
    NBX_PF_RFM = 1u << 5,
    NBX_PF_UPDATED_AT = 1u << 6,
    /* patch only: which rfm sub-fields were given */
    NBX_PF_RFM_FIRST = 1u << 8,
    NBX_PF_RFM_LAST = 1u << 9,
    NBX_PF_RFM_ORDERS = 1u << 10,
    NBX_PF_RFM_REVENUE = 1u << 11,
    NBX_PF_RFM_MARGIN = 1u << 12,
    NBX_PF_RFM_SCORES = 1u << 13,
    NBX_PF_RFM_SEGMENT = 1u << 14,
    NBX_PF_RFM_AS_OF = 1u << 15,
    /* ltv/churn given as null: clear */
    NBX_PF_LTV_NULL = 1u << 16,
    NBX_PF_CHURN_NULL = 1u << 17,
    /* stored: an import's base of the aggregates (rfm_base) */
    NBX_PF_RFM_BASE = 1u << 18,
    /* merged, not stored: the base changed, the aggregates must be settled
     * again from it and the purchases recorded after its as_of */
    NBX_PF_RFM_REBASE = 1u << 19
};
/* The patch fields that give an import's aggregates. */
#define NBX_PF_RFM_AGGREGATES                                                                      \
    (NBX_PF_RFM_FIRST | NBX_PF_RFM_LAST | NBX_PF_RFM_ORDERS | NBX_PF_RFM_REVENUE |                 \
     NBX_PF_RFM_MARGIN)

/* Maps are sorted by key (bytewise) and keys are unique: lookups bisect. */
typedef struct nbx_profile {
    nbx_sv id;
    nbx_attr *attrs;
    uint32_t n_attrs;
    nbx_consent *consent;
    uint32_t n_consent;
    nbx_prop *propensity;
    uint32_t n_propensity;
    double ltv;
    double churn;
    nbx_rfm rfm;
    nbx_rfm_base rfm_base; /* with NBX_PF_RFM_BASE; in a patch, rfm_base.as_of */
    int64_t updated_at;
    unsigned fields; /* nbx_profile_field */
} nbx_profile;

/* Offer and placement ids are shorter than customer ids so that a counter
 * key (customer \0 \x01 offer) fits LMDB's 511-byte key limit. */
#define NBX_OFFER_ID_MAX 128

/* profile.c */
/* Parse one profile JSON object into a patch: fields as given, maps sorted,
 * deletions marked. Errors name the field. Strings point into the JSON or
 * the arena. */
int nbx_profile_parse(const char *json, size_t len, nbx_profile *patch, nbx_arena *a, nbx_err *e);
/* Apply patch over base (NULL: new profile) into out (arena-backed).
 * updated_at stays the base's unless the patch gives one: whether the write
 * changed the profile, and so dates it, is the writer's to tell
 * (nbx_profile_store). Aggregates the patch gives become out's rfm_base,
 * with NBX_PF_RFM_REBASE when it changed. */
int nbx_profile_merge(const nbx_profile *base, const nbx_profile *patch, nbx_profile *out,
                      nbx_arena *a);
/* nbx_profile_merge with its errors in words: NBX_ELIMIT (a map over
 * NBX_MAP_MAX entries) names the profile. */
int nbx_profile_patch(const nbx_profile *base, const nbx_profile *patch, nbx_profile *out,
                      nbx_arena *a, nbx_err *e);
void nbx_profile_to_json(const nbx_profile *p, nbx_buf *out);
const nbx_prop *nbx_profile_propensity(const nbx_profile *p, nbx_sv key);
const nbx_consent *nbx_profile_consent(const nbx_profile *p, nbx_sv purpose);
const nbx_attr *nbx_profile_attr(const nbx_profile *p, nbx_sv key);

/* ========================================================================
 * Store (store.c)
 * ======================================================================== */

/* Longest keys: LMDB's limit is 511 bytes, so a customer id and an event id
 * together are at most 509 bytes (docs/format.md). */
#define NBX_COUNTER_KEY_MAX (NBX_ID_MAX + 2 + NBX_OFFER_ID_MAX)
#define NBX_EVENT_KEY_MAX 511
#define NBX_EVENT_IDS_MAX (NBX_EVENT_KEY_MAX - 2)

/* nbx_store_open() flag for nbx_store_upgrade() only: bring an older format
 * to this nbx's within the open. */
#define NBX_STORE_UPGRADE 0x10000u

/* Suppression records: sizes of the store's secret, of a record's key (a
 * keyed hash) and of its value (docs/format.md). */
#define NBX_SUPPRESSION_SECRET_SIZE 16
#define NBX_SUPPRESSION_KEY_SIZE 16
#define NBX_SUPPRESSION_VALUE_MAX 16

struct nbx_store {
    MDB_env *env;
    MDB_dbi profiles;  /* id -> profile */
    MDB_dbi customers; /* id \0 tag ... -> counters, event records (above) */
    MDB_dbi budgets;   /* day (4 bytes BE) offer -> daily totals */
    MDB_dbi meta;      /* NBX_META_* */
    MDB_dbi suppressed; /* keyed hash of an erased id -> erased_at (format 2) */
    bool has_suppressed; /* false: a format-1 store read as it is */
    MDB_dbi arms;        /* deployment \0 arm \0 day -> arm counters (format 3) */
    bool has_arms;       /* false: a format-1 or 2 store read as it is */
    MDB_dbi kills;       /* kind name -> the current kill (format 3) */
    MDB_dbi kill_log;    /* sequence number (8 bytes BE) -> a kill or unkill (format 3) */
    bool has_kills;      /* false: a format-1 or 2 store read as it is */
    uint32_t schema;     /* the format version the store has */
    uint32_t schema_before; /* ... had at open (nbx_store_upgrade) */
    unsigned flags;    /* nbx_store_flags */
    char *path;
};

int nbx_store_read_begin(nbx_store *s, MDB_txn **txn, nbx_err *e);
int nbx_store_write_begin(nbx_store *s, MDB_txn **txn, nbx_err *e);
int nbx_store_commit(nbx_store *s, MDB_txn *txn, nbx_err *e);
/* Profile by id in txn; NBX_ENOTFOUND if absent. */
int nbx_store_profile_get(nbx_store *s, MDB_txn *txn, nbx_sv id, nbx_profile *p, nbx_arena *a,
                          nbx_err *e);
int nbx_store_profile_put(nbx_store *s, MDB_txn *txn, const nbx_profile *p, nbx_buf *scratch,
                          nbx_err *e);
int nbx_store_meta_get(nbx_store *s, MDB_txn *txn, const char *key, MDB_val *out, nbx_err *e);
int nbx_store_meta_put(nbx_store *s, MDB_txn *txn, const char *key, const void *v, size_t n,
                       nbx_err *e);
/* The count of event records (meta "events"), kept in the transaction
 * that adds or erases them: nbx_store_stats.events_seen. */
int nbx_store_events_seen(nbx_store *s, MDB_txn *txn, uint64_t *out, nbx_err *e);
int nbx_store_events_add(nbx_store *s, MDB_txn *txn, int64_t delta, nbx_err *e);

/* Erased customers (store.c, "Erasure"). A lookup reads the store's secret
 * once: nbx_suppressions_begin() tells whether any customer is suppressed
 * at all (the common case: none, and no id needs hashing). */
typedef struct nbx_suppressions {
    bool any;
    uint8_t secret[NBX_SUPPRESSION_SECRET_SIZE];
} nbx_suppressions;
int nbx_suppressions_begin(nbx_store *s, MDB_txn *txn, nbx_suppressions *sp, nbx_err *e);
/* 1 if the customer was erased (and not restored), 0 if not, or an error. */
int nbx_suppressed(nbx_store *s, MDB_txn *txn, const nbx_suppressions *sp, nbx_sv customer,
                   nbx_err *e);

/* ========================================================================
 * Arm counters in the store (arms.c)
 *
 * Additions are summed in memory per (deployment, arm, UTC day) and added
 * to the stored rows in one pass, in key order, within the writer's
 * transaction: the event effects' impressions, accepts and purchases, and
 * an engine's flush of its decisions (tally.c).
 * ======================================================================== */

#define NBX_ARM_NAME_MAX 64
#define NBX_ARM_KEY_MAX (2 * NBX_ARM_NAME_MAX + 2 + 4)
#define NBX_ARM_VALUE_MAX 96
typedef struct nbx_arm_counts {
    uint64_t decisions;   /* decisions served by the arm */
    uint64_t fallbacks;   /* of them, served the fallback decision (the policy failed) */
    uint64_t errors;      /* decisions that failed once the arm was known */
    uint64_t impressions; /* events carrying one of the arm's decision ids */
    uint64_t accepts;
    uint64_t purchases;
    double expected_margin; /* sum over the decisions */
    double realised_margin; /* sum of the margins of those purchases */
} nbx_arm_counts;

typedef struct nbx_arm_delta {
    char key[NBX_ARM_KEY_MAX]; /* nbx_arm_key() */
    uint8_t key_len;
    bool used;
    nbx_arm_counts counts;
} nbx_arm_delta;

/* An open-addressing table; zero-initialised is empty. */
typedef struct nbx_arm_deltas {
    nbx_arm_delta *slots;
    uint32_t cap, n;
} nbx_arm_deltas;

/* The additions of (deployment, arm, day), created zero; names valid
 * (nbx_arm_name_valid). NULL: out of memory. Valid until the next call. */
nbx_arm_counts *nbx_arm_deltas_at(nbx_arm_deltas *d, nbx_sv deployment, nbx_sv arm, uint32_t day);
/* Add every row's additions to the store's rows in txn, in key order, and
 * empty d (also on failure: the transaction is then to be aborted).
 * NBX_EREADONLY on a store of a format without arm counters. */
int nbx_arm_deltas_write(nbx_arm_deltas *d, nbx_store *s, MDB_txn *txn, nbx_err *e);
void nbx_arm_deltas_clear(nbx_arm_deltas *d);
void nbx_arm_deltas_free(nbx_arm_deltas *d);
/* to = a copy of from (to empty before); NBX_ENOMEM. */
int nbx_arm_deltas_copy(nbx_arm_deltas *to, const nbx_arm_deltas *from);
void nbx_arm_counts_add(nbx_arm_counts *to, const nbx_arm_counts *n);
/* An arm's counters over all its days, as txn sees them (zeros: none). */
int nbx_arm_totals(nbx_store *s, MDB_txn *txn, nbx_sv deployment, nbx_sv arm,
                   nbx_arm_counts *out, nbx_err *e);
/* nbx_arm_counters_read() within txn. */
int nbx_arm_counters_scan(nbx_store *s, MDB_txn *txn, const char *deployment, int64_t from_ms,
                          int64_t to_ms, nbx_arm_counters_fn fn, void *ud, nbx_err *e);

/* ========================================================================
 * Kill switches (kills.c): the store's current kills and their history,
 * and the kill set a context reads at each decision
 * ======================================================================== */

typedef struct nbx_kill_change nbx_kill_change; /* codec: a kill or unkill */

/* Apply a kill or unkill in txn, all or nothing for the caller (on an
 * error, abort txn): checked (errors name the field: 'offer', 'arm',
 * 'policy', 'reason', 'by'), the current set changed (NBX_ENOTFOUND:
 * unkilling what is not killed), the change appended to the history and the
 * kill generation moved. NBX_EREADONLY on a store of a format before 3. */
int nbx_kills_write(nbx_store *s, MDB_txn *txn, const nbx_kill_change *c, nbx_buf *scratch,
                    nbx_err *e);
/* The canary abort's kill (h-experiment): arm DEPLOYMENT.ARM killed in
 * txn, origin "abort", reason the rule and its figures (cut at
 * NBX_KILL_REASON_MAX bytes; valid UTF-8 expected). */
int nbx_kills_abort_arm(nbx_store *s, MDB_txn *txn, nbx_sv deployment, nbx_sv arm,
                        const char *reason, int64_t now_ms, nbx_buf *scratch, nbx_err *e);
/* Whether the deployment's arm is killed in txn, as DEPLOYMENT.ARM or by its
 * name alone (as nbx_arm_killed judges a context's copy): the abort does not
 * kill an arm killed already. */
bool nbx_kills_arm_killed_in(nbx_store *s, MDB_txn *txn, nbx_sv deployment, nbx_sv arm);

typedef struct nbx_kill_entry {
    uint8_t kind; /* nbx_kill_kind */
    char *name;   /* NUL-terminated; name_len bytes */
    size_t name_len;
    char *reason;
} nbx_kill_entry;

/* A context's copy of the store's current kills, in key order. Zero
 * initialised is empty. One thread at a time (a context's). */
typedef struct nbx_kills {
    nbx_kill_entry *entries;
    size_t n, cap;
    size_t n_kind[NBX_KILL_POLICY + 1];
    bool checked;        /* txn_id and generation are known */
    size_t txn_id;       /* the read snapshot last checked */
    uint64_t generation; /* meta kill_generation the set was read at */
    uint64_t version;    /* moves each time the set is read again: what
                            callers derive from it (per-offer flags) is
                            stale when their copy differs */
} nbx_kills;

/* Bring k up to the kills of txn's snapshot: nothing if txn is the snapshot
 * checked last, else one meta lookup, and the set read again only if the
 * generation moved. A store without kills (format before 3; s NULL) has
 * none. On an error (the decision fails) k is empty or as it was, and is
 * read again at the next call. */
int nbx_kills_refresh(nbx_kills *k, nbx_store *s, MDB_txn *txn, nbx_err *e);
void nbx_kills_free(nbx_kills *k);
/* The kill of kind and name; NULL if not killed. Valid until the next
 * refresh. */
const nbx_kill_entry *nbx_kills_find(const nbx_kills *k, uint8_t kind, nbx_sv name);
/* The predicates the engine applies (k NULL: nothing is killed). */
bool nbx_offer_killed(const nbx_kills *k, nbx_sv offer);
bool nbx_arm_killed(const nbx_kills *k, nbx_sv deployment, nbx_sv arm);
bool nbx_policy_killed(const nbx_kills *k, nbx_sv version_hex);

/* ========================================================================
 * Exposure counters (exposure.c)
 *
 * Counters are bucketed by UTC day so "N in the last D days" is a sum over
 * at most D buckets. Buckets more than NBX_WINDOW_DAYS_MAX days behind both
 * the row's newest bucket and the writer's clock are pruned.
 * ======================================================================== */

#define NBX_WINDOW_DAYS_MAX 365
/* Buckets a row keeps at most: a year behind the writer's clock and room
 * for days ahead of it (decisions recorded with a future clock). */
#define NBX_EXPOSURE_DAYS_MAX (2 * (NBX_WINDOW_DAYS_MAX + 1))

typedef enum nbx_event_type {
    NBX_EV_PURCHASE = 1,
    NBX_EV_IMPRESSION,
    NBX_EV_CLICK,
    NBX_EV_ACCEPT,
    NBX_EV_DISMISS
} nbx_event_type;

/* Exposure kinds index the counter arrays. */
enum { NBX_EXP_IMPRESSION = 0, NBX_EXP_CLICK, NBX_EXP_ACCEPT, NBX_EXP_DISMISS, NBX_EXP_KINDS };

typedef struct nbx_exposure_day {
    uint32_t day;
    uint32_t n[NBX_EXP_KINDS];
} nbx_exposure_day;

typedef struct nbx_exposure {
    int64_t last[NBX_EXP_KINDS]; /* ms of the latest event of each kind; 0 = never */
    nbx_exposure_day *days;      /* ascending */
    uint32_t n_days;
} nbx_exposure;

/* Events in the window of `days` UTC days ending with today (today counts). */
uint32_t nbx_exposure_count(const nbx_exposure *x, int kind, uint32_t today, uint32_t days);
/* Add n events of one kind at ts to x (arrays reallocated from a); now_ms
 * is the writer's clock, which bounds pruning (exposure.c). */
int nbx_exposure_add(nbx_exposure *x, int kind, int64_t ts, uint32_t n, int64_t now_ms,
                     nbx_arena *a);

/* ========================================================================
 * Events: parsing (event.c), effects (effects.c), import (ingest.c)
 * ======================================================================== */

typedef struct nbx_event {
    nbx_sv id;
    nbx_sv customer;
    nbx_sv decision_id; /* optional: the decision it follows (never stored) */
    nbx_sv offer;     /* exposure events */
    nbx_sv placement; /* optional */
    uint8_t type;     /* nbx_event_type */
    int64_t ts_ms;
    double amount; /* purchases */
    double margin; /* purchases; NaN if not given */
} nbx_event;

/* Parse one event. NBX_EVENT_TS_OPTIONAL: `ts` may be missing (ts_ms is
 * then 0; the caller stamps the event with its own clock). */
enum { NBX_EVENT_TS_OPTIONAL = 0x1 };
int nbx_event_parse(const char *json, size_t len, unsigned flags, nbx_event *ev, nbx_arena *a,
                    nbx_err *e);
const char *nbx_event_type_name(int type);

/* What the writer knows that an event must agree with: its clock (an event
 * may be dated at most max_skew_ms after now_ms) and, when offer_known is
 * set, its catalog (the event's offer must be one of it). offer_known is a
 * callback so that events need not know catalogs (a higher layer). */
typedef struct nbx_event_rules {
    int64_t now_ms;
    int64_t max_skew_ms;
    bool (*offer_known)(const void *offers, nbx_sv id);
    const void *offers;
} nbx_event_rules;
/* NBX_OK, or NBX_EINVAL naming the field (`ts`, `offer`). */
int nbx_event_check(const nbx_event *ev, const nbx_event_rules *r, nbx_err *e);
/* The skew an option asks for (0: the default), checked: NBX_EINVAL outside
 * 0..NBX_EVENT_SKEW_MAX_MS. */
int nbx_event_skew(int64_t given_ms, int64_t *out_ms, nbx_err *e);

/* effects.c: what an event does to a customer, for every path that applies
 * events. A transaction opens with nbx_effects_begin(), applies groups of
 * one customer's events with nbx_effects_customer(), and ends with exactly
 * one of nbx_effects_end() (writes the budget rows and the event count) or
 * nbx_effects_cancel(), before the transaction commits or aborts. */

/* One event as the effects take it: the event, its record encoded
 * (nbx_event_record_encode) under its key (nbx_event_key); the views must
 * stay valid until the transaction ends. outcome is set by
 * nbx_effects_customer(). */
typedef struct nbx_fx_event {
    nbx_event ev;
    MDB_val key;
    MDB_val val;
    uint8_t outcome; /* nbx_record_outcome */
} nbx_fx_event;

/* The longest event record: an array header, ts, type, offer and placement
 * (NBX_OFFER_ID_MAX each), amount and margin. */
#define NBX_EVENT_RECORD_MAX (64 + 2 * (NBX_OFFER_ID_MAX + 2))

/* A budget row a transaction adds to, and one new exposure of a customer
 * (sorted by offer, then arrival). */
typedef struct nbx_fx_budget {
    nbx_sv offer; /* points into the caller's events */
    uint32_t day;
    bool used;
    uint64_t n[2];             /* impressions, accepts */
    const nbx_fx_event *event; /* one counted here, for messages */
} nbx_fx_budget;
typedef struct nbx_fx_ref {
    nbx_sv offer;
    uint32_t i; /* index into the customer's events */
} nbx_fx_ref;

typedef struct nbx_effects {
    nbx_store *store;
    MDB_txn *txn;
    MDB_cursor *customers;
    MDB_cursor *profiles;  /* opened on the first purchase */
    int64_t now_ms;        /* the writer's clock: updated_at of purchases */
    nbx_arena *rows;       /* the rows a group reads, decoded: own (reset per
                              row) or the caller's (never reset) */
    nbx_arena own;
    nbx_buf *scratch;      /* borrowed: the value being written */
    uint64_t applied;      /* new events since nbx_effects_begin() */
    uint64_t suppressed;   /* events refused since then: their customer was erased */
    nbx_suppressions erased; /* read at nbx_effects_begin() */
    const nbx_fx_event *failed; /* the event a failure is about, or NULL */
    /* budget rows of the transaction: an open-addressing table, inline
     * until it outgrows a few rows */
    nbx_fx_budget *budgets;
    uint32_t budget_cap, n_budgets;
    /* arm counter rows of the transaction: events that carry an arm's
     * decision id (arms.c) */
    nbx_arm_deltas arms;
    /* one customer's new exposures, by offer */
    nbx_fx_ref *refs;
    size_t refs_cap;
    nbx_fx_budget budget_inline[8];
    nbx_fx_ref ref_inline[16];
} nbx_effects;

/* arena NULL: rows read are decoded into the effects' own arena, reset per
 * row (bulk ingest: memory bounded by a row). Else into the caller's, which
 * is never reset: it may hold what the effects still read (a parsed
 * event's unescaped strings); a few events grow it by a few rows. scratch
 * is the caller's; its content is not kept. */
void nbx_effects_init(nbx_effects *fx, nbx_arena *arena, nbx_buf *scratch);
void nbx_effects_free(nbx_effects *fx);
int nbx_effects_begin(nbx_effects *fx, nbx_store *s, MDB_txn *txn, int64_t now_ms, nbx_err *e);
/* evs[0, n): events of one customer, in arrival order. */
int nbx_effects_customer(nbx_effects *fx, nbx_fx_event *evs, size_t n, nbx_err *e);
int nbx_effects_end(nbx_effects *fx, nbx_err *e);
void nbx_effects_cancel(nbx_effects *fx);
/* The counter kind (NBX_EXP_*) of an exposure event type. */
int nbx_event_exposure_kind(int type);

/* Purchase aggregates after a merge that changed the import's base
 * (NBX_PF_RFM_REBASE): the base plus the customer's purchases recorded
 * after its as_of (a scan of the customer's event records); _base: the
 * base alone, for a profile new to the store (it has no records). */
int nbx_profile_settle(nbx_store *s, MDB_txn *txn, nbx_profile *p, nbx_err *e);
void nbx_profile_settle_base(nbx_profile *p);
/* Write p, an import merged over the profile stored (NULL: none; its value
 * stored_value) at cur (a profiles cursor on it), with its aggregates
 * settled. Unchanged: nothing is written, updated_at included. Changed:
 * dated now_ms unless the import gave updated_at (dated). append: the id
 * sorts after every stored one. */
int nbx_profile_store(nbx_store *s, MDB_txn *txn, MDB_cursor *cur, const nbx_profile *stored,
                      const MDB_val *stored_value, nbx_profile *p, bool dated, int64_t now_ms,
                      bool append, nbx_buf *scratch, nbx_err *e);
/* nbx_profile_put() within txn: one patch over the stored profile. */
int nbx_profile_import_txn(nbx_store *s, MDB_txn *txn, const nbx_profile *patch, int64_t now_ms,
                           nbx_arena *a, nbx_buf *scratch, nbx_err *e);
/* One event in txn, through the effects above; *outcome is an
 * nbx_record_outcome. */
int nbx_event_apply_txn(nbx_store *s, MDB_txn *txn, const nbx_event *ev, int *outcome,
                        nbx_arena *a, nbx_buf *scratch, nbx_err *e);

/* ========================================================================
 * Stored layouts (codec.c; docs/format.md)
 *
 * Every key and value of the store is packed and unpacked here and nowhere
 * else. Decoded strings point into the source bytes (an LMDB page: valid
 * until the transaction ends); arrays come from the arena.
 * ======================================================================== */

/* The store's format version (meta "schema"). A store of a newer version
 * is refused; an older one is read, but written only after `nbx store
 * upgrade`. docs/format.md says what each version added. */
#define NBX_SCHEMA_VERSION 3

/* Keys of the meta database. */
#define NBX_META_SCHEMA "schema"
#define NBX_META_EVENTS "events"
#define NBX_META_RFM "rfm"
#define NBX_META_SUPPRESSION_SECRET "suppression_key"
#define NBX_META_KILL_GENERATION "kill_generation"

/* Everything keyed by one customer but the profile lives under its prefix
 * (id \0) in `customers`, in tagged sub-ranges, so an event touches that
 * customer's neighbourhood only:
 *   id \0 \x01 offer     exposure counters of one offer
 *   id \0 \x01           counters over all offers (the contact policy)
 *   id \0 \x02 event id  the event record: seen ids and the exposure log */
#define NBX_TAG_COUNTERS '\x01'
#define NBX_TAG_EVENT '\x02'

/* Keys: out needs NBX_ID_MAX + 1 (prefix), NBX_COUNTER_KEY_MAX (counters;
 * an empty offer keys the all-offers row), NBX_EVENT_KEY_MAX (event
 * records) or 4 + NBX_OFFER_ID_MAX (budgets) bytes. */
size_t nbx_customer_prefix(char *out, nbx_sv customer);
size_t nbx_exposure_key(char *out, nbx_sv customer, nbx_sv offer);
size_t nbx_event_key(char *out, nbx_sv customer, nbx_sv event_id);
size_t nbx_budget_key(char *out, uint32_t day, nbx_sv offer);
/* A customer id is 1..NBX_ID_MAX bytes without NUL (false: e names the
 * field 'id' and the problem, NBX_EPARSE). */
bool nbx_id_valid(nbx_sv id, nbx_err *e);
/* The tag of a key in `customers` after a prefix of prefix_len bytes, or
 * -1 if the key is the prefix itself. */
int nbx_customer_key_tag(const void *key, size_t len, size_t prefix_len);

int nbx_profile_encode(const nbx_profile *p, nbx_buf *out);
/* With NBX_PF_RFM_BASE: no purchase was counted after the import's base, so
 * the aggregates are the base (stored as [as_of] alone). */
bool nbx_rfm_base_is_aggregates(const nbx_profile *p);
int nbx_profile_decode(const void *data, size_t len, nbx_profile *p, nbx_arena *a, nbx_err *e);
/* Only the purchase aggregates (first, last, orders, revenue) of a stored
 * profile; *has false when it has none. NBX_OK or NBX_ECORRUPT. */
int nbx_profile_decode_rfm(const void *data, size_t len, nbx_rfm *r, bool *has);

int nbx_exposure_encode(const nbx_exposure *x, nbx_buf *out);
int nbx_exposure_decode(const void *data, size_t len, nbx_exposure *x, nbx_arena *a);

/* The event record (appended to out; the customer and the event id are in
 * its key). Decoding keeps ev->id and ev->customer as the caller set them. */
int nbx_event_record_encode(const nbx_event *ev, nbx_buf *out);
int nbx_event_record_decode(const void *data, size_t len, nbx_event *ev);

/* A budget row's value: [impressions, accepts] (missing counts are 0). */
#define NBX_BUDGET_VALUE_MAX 32
size_t nbx_budget_encode(const uint64_t counts[2], char out[NBX_BUDGET_VALUE_MAX]);
int nbx_budget_decode(const void *data, size_t size, nbx_sv offer, uint64_t counts[2], nbx_err *e);

/* Meta values: the format version (one byte), the event count (a msgpack
 * uint64, always 9 bytes) and the last RFM rebuild. */
size_t nbx_schema_encode(uint32_t version, uint8_t out[1]);
int nbx_schema_decode(const void *data, size_t len, uint32_t *version);
#define NBX_COUNT_VALUE_SIZE 9
size_t nbx_count_encode(uint64_t n, uint8_t out[NBX_COUNT_VALUE_SIZE]);
int nbx_count_decode(const void *data, size_t len, uint64_t *n);
/* Suppression records (database `suppressed`): the keyed hash of an erased
 * customer's id (nbx_siphash128 with the store's secret, meta
 * "suppression_key") -> [erased_at]. No byte of the id is stored. */
void nbx_suppression_key(uint8_t out[NBX_SUPPRESSION_KEY_SIZE],
                         const uint8_t secret[NBX_SUPPRESSION_SECRET_SIZE], nbx_sv customer);
size_t nbx_suppression_encode(int64_t erased_at_ms, char out[NBX_SUPPRESSION_VALUE_MAX]);
int nbx_suppression_decode(const void *data, size_t len, int64_t *erased_at_ms);

/* Arm counters (database `arms`, format 3; nbx_arm_counts above): one row
 * per deployment, arm and UTC day, key deployment \0 arm \0 day (4 bytes,
 * big-endian), so one cursor range reads an arm's days and another a
 * deployment's arms. Names are those of a deployment file.
 *
 * The bytes of names and decision ids: [A-Za-z0-9_.-]. They travel in
 * decision ids, store keys, metric labels and file names unescaped. */
static inline bool nbx_name_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}
/* A deployment or arm name: 1..NBX_ARM_NAME_MAX name bytes. */
bool nbx_arm_name_valid(nbx_sv name);
size_t nbx_arm_key(char *out, nbx_sv deployment, nbx_sv arm, uint32_t day);
/* The parts of an arm key; false if it is not one. */
bool nbx_arm_key_parse(const void *key, size_t len, nbx_sv *deployment, nbx_sv *arm,
                       uint32_t *day);
size_t nbx_arm_counts_encode(const nbx_arm_counts *c, char out[NBX_ARM_VALUE_MAX]);
int nbx_arm_counts_decode(const void *data, size_t len, nbx_arm_counts *c);
/* Decision ids: a UUIDv7 (NBX_UUID_LEN characters), or, for a decision of
 * a deployment, UUIDv7 "." deployment "." arm (the deployment's name holds
 * no '.'; the arm's may). Splits the second form; false for any other
 * (then the id names no arm). */
#define NBX_UUID_LEN 36
/* NBX_DECISION_ID_MAX (nbx.h): NBX_UUID_LEN + 2 + 2 x NBX_ARM_NAME_MAX */
_Static_assert(NBX_DECISION_ID_MAX == NBX_UUID_LEN + 2 + 2 * NBX_ARM_NAME_MAX,
               "decision ids: UUID.DEPLOYMENT.ARM");
bool nbx_decision_id_arm(nbx_sv id, nbx_sv *deployment, nbx_sv *arm);

/* Kills (databases `kills` and `kill_log`, format 3; kills.c): the
 * current kill set, key kind (one byte, nbx_kill_kind) then the name ->
 * [reason, at, by]; and the history, key a sequence number from 1 (8 bytes,
 * big-endian, so appends go last) -> [at, killed, kind, name, reason|nil,
 * by]. Meta NBX_META_KILL_GENERATION (a count, nbx_count_encode) changes
 * with every change: readers reload the set only when it did. */
#define NBX_KILL_NAME_MAX (2 * NBX_ARM_NAME_MAX + 1) /* DEPLOYMENT.ARM; offer ids: 128 */
#define NBX_KILL_KEY_MAX (1 + NBX_KILL_NAME_MAX)
#define NBX_KILL_BY_MAX 64
#define NBX_KILL_LOG_KEY_SIZE 8
struct nbx_kill_change {
    uint8_t kind; /* nbx_kill_kind */
    bool killed;  /* a kill; false: an unkill */
    nbx_sv name;
    nbx_sv reason; /* may be empty (an unkill without one) */
    nbx_sv by;
    int64_t at_ms;
};
size_t nbx_kill_key(char out[NBX_KILL_KEY_MAX], uint8_t kind, nbx_sv name);
/* The parts of a kills key; false if it is not one. */
bool nbx_kill_key_parse(const void *key, size_t len, uint8_t *kind, nbx_sv *name);
/* A current kill: reason, at_ms and by of c. */
int nbx_kill_encode(const nbx_kill_change *c, nbx_buf *out);
/* Into c: reason, at_ms, by (pointing into data). */
int nbx_kill_decode(const void *data, size_t len, nbx_kill_change *c);
void nbx_kill_log_key(uint8_t out[NBX_KILL_LOG_KEY_SIZE], uint64_t seq);
/* 0 if the key is not one. */
uint64_t nbx_kill_log_seq(const void *key, size_t len);
int nbx_kill_log_encode(const nbx_kill_change *c, nbx_buf *out);
int nbx_kill_log_decode(const void *data, size_t len, nbx_kill_change *c);

typedef struct nbx_rfm_meta {
    int64_t as_of_ms;
    double recency[4], frequency[4], monetary[4]; /* cut points */
} nbx_rfm_meta;
int nbx_rfm_meta_encode(const nbx_rfm_meta *r, nbx_buf *out);
int nbx_rfm_meta_decode(const void *data, size_t len, nbx_rfm_meta *r);

/* A minimal bounds-checked msgpack reader: the decision path decodes
 * without building msgpack-c object trees. */
typedef struct nbx_mp {
    const uint8_t *p;
    const uint8_t *end;
    bool bad;
} nbx_mp;
void nbx_mp_init(nbx_mp *m, const void *data, size_t len);
uint32_t nbx_mp_array(nbx_mp *m);
uint32_t nbx_mp_map(nbx_mp *m);
bool nbx_mp_nil(nbx_mp *m); /* consumes a nil if next; true if it did */
double nbx_mp_double(nbx_mp *m); /* float or int */
int64_t nbx_mp_int(nbx_mp *m);
uint64_t nbx_mp_uint(nbx_mp *m);
bool nbx_mp_bool(nbx_mp *m);
nbx_sv nbx_mp_str(nbx_mp *m);
int nbx_mp_type(const nbx_mp *m); /* msgpack_object_type of the next value */
void nbx_mp_skip(nbx_mp *m);

/* ========================================================================
 * Catalog (catalog.c)
 * ======================================================================== */

typedef enum nbx_offer_kind { NBX_KIND_OFFER = 1, NBX_KIND_MODULE = 2 } nbx_offer_kind;

typedef struct nbx_cap {
    uint32_t max;         /* 0 with window_days 0: no cap */
    uint32_t window_days; /* 1..NBX_WINDOW_DAYS_MAX */
} nbx_cap;

typedef struct nbx_offer {
    nbx_sv id; /* NUL-terminated */
    uint32_t index;
    uint8_t kind;
    uint32_t *placements; /* placement indices */
    uint32_t n_placements;
    double price, unit_cost, discount, serving_cost, base_propensity;
    double margin;       /* price - unit_cost - discount */
    double discount_pct; /* 100 * discount / price */
    nbx_sv purpose;      /* empty: needs no consent ("none") */
    uint32_t purpose_index; /* into catalog->purposes; UINT32_MAX: needs no consent */
    nbx_sv category;     /* may be empty */
    int64_t valid_from;  /* ms; INT64_MIN when open */
    int64_t valid_to;    /* ms; INT64_MAX when open */
    nbx_cap impressions;
    nbx_cap accepts;
    uint32_t dismiss_cooldown_days;
    int64_t budget_impressions; /* per UTC day; -1: none */
    int64_t budget_accepts;
    double segment_prior[NBX_SEGMENT_COUNT]; /* P(accept) by RFM segment; NaN: none */
    uint32_t category_index; /* into catalog->categories; UINT32_MAX: no category */
    bool passes_guardrails;  /* nbx_guardrails_pass(): fixed for the catalog's life */
    void *json; /* json_t *: the offer object as loaded (every field) */
} nbx_offer;

typedef struct nbx_placement {
    nbx_sv id;
    uint32_t slots;
    uint32_t *offers; /* offers that may fill it, by offer index */
    uint32_t n_offers;
    uint32_t *fallback; /* fallback offers, in catalog order */
    uint32_t n_fallback;
} nbx_placement;

typedef struct nbx_guardrails {
    double max_discount_pct; /* NaN: none */
    double min_margin;       /* NaN: none */
    nbx_cap max_contacts;    /* max 0: none */
    bool consent_default;    /* a purpose missing from the profile: granted? */
    /* The purpose without which the policy sees the customer as an
     * anonymous visitor; empty: personalisation needs no consent. */
    nbx_sv personalization_purpose;
} nbx_guardrails;

/* A session channel (the session field `channel`) and the consent purpose
 * a decision through it needs. */
typedef struct nbx_channel {
    nbx_sv name;
    nbx_sv purpose;         /* empty: needs no consent */
    uint32_t purpose_index; /* into catalog->purposes; UINT32_MAX: needs no consent */
} nbx_channel;

typedef struct nbx_catalog {
    atomic_int refs;
    char *path;
    uint64_t version;
    char version_hex[17];
    nbx_offer *offers; /* sorted by id; offers[i].index == i */
    uint32_t n_offers;
    nbx_placement *placements; /* file order */
    uint32_t n_placements;
    nbx_sv *categories; /* distinct offer categories, sorted */
    uint32_t n_categories;
    /* Every consent purpose the catalog names (offers, channels,
     * personalisation), distinct and sorted: a decision reads each once. */
    nbx_sv *purposes;
    uint32_t n_purposes;
    nbx_guardrails guardrails;
    uint32_t personalization_index; /* into purposes; UINT32_MAX: needs no consent */
    nbx_channel *channels;          /* sorted by name */
    uint32_t n_channels;
    bool channels_declared; /* the catalog has `channels`: others are refused */
    bool has_budgets;
    void *root;        /* json_t * of the whole file */
    nbx_arena arena;   /* owns the arrays above */
} nbx_catalog;

#define NBX_CATALOG_OFFERS_MAX 100000
#define NBX_CATALOG_PLACEMENTS_MAX 256
#define NBX_CATALOG_CHANNELS_MAX 256
#define NBX_CATALOG_FILE_MAX (64u << 20)

int nbx_catalog_load(const char *path, nbx_catalog **out, nbx_err *e);
/* The same from the catalog's JSON in memory; path names it in messages. */
int nbx_catalog_load_text(const char *path, const char *text, size_t len, nbx_catalog **out,
                          nbx_err *e);
nbx_catalog *nbx_catalog_ref(nbx_catalog *c);
void nbx_catalog_unref(nbx_catalog *c);
const nbx_offer *nbx_catalog_offer(const nbx_catalog *c, nbx_sv id);
int nbx_catalog_placement(const nbx_catalog *c, nbx_sv id); /* index or -1 */
/* The guardrails that hold whatever the policy scored: discount ceiling and
 * margin floor. They depend on the offer alone: decided once per offer at
 * catalog load (passes_guardrails). nbx_guardrail_failed() says which one
 * an offer fails first, for explanations. */
enum nbx_guardrail { NBX_GUARDRAIL_NONE = 0, NBX_GUARDRAIL_DISCOUNT, NBX_GUARDRAIL_MARGIN };
int nbx_guardrail_failed(const nbx_catalog *c, const nbx_offer *o);
bool nbx_guardrails_pass(const nbx_catalog *c, const nbx_offer *o);
/* The consent purpose a request's session channel needs (index into
 * c->purposes, UINT32_MAX for none or no `channel` field). With `channels`
 * declared an unknown channel is NBX_EINVAL naming it; without, a channel
 * named like one of the catalog's purposes needs that purpose. */
int nbx_catalog_channel(const nbx_catalog *c, const nbx_kv *session, size_t n_session,
                        uint32_t *purpose, nbx_err *e);

/* ========================================================================
 * Propensities (propensity.c): the one definition of the fallback chain
 * ======================================================================== */

/* Where a propensity came from, in the order the chain tries them. */
enum nbx_propensity_source {
    NBX_PSRC_OFFER = 1, /* the profile's value for the offer id */
    NBX_PSRC_CATEGORY,  /* the profile's value for the offer's category */
    NBX_PSRC_SEGMENT,   /* the offer's prior for the customer's RFM segment */
    NBX_PSRC_BASE       /* the offer's base_propensity */
};
/* "offer", "category", "segment", "base"; NULL otherwise. */
const char *nbx_propensity_source_name(int source);
/* Propensity of a customer for an offer: the profile's value for the offer
 * id, else its category, else the offer's prior for the customer's segment,
 * else base_propensity. */
double nbx_offer_propensity(const nbx_profile *p, const nbx_offer *o);
/* The same for every offer of the catalog at once: out[i] and source[i]
 * (nbx_propensity_source) per offer index, category_scratch one double per
 * catalog category. Two merge joins of the profile's sorted keys against the
 * sorted offer ids and categories, instead of two bisections per offer. */
void nbx_propensities(const nbx_catalog *cat, const nbx_profile *p, double *out, uint8_t *source,
                      double *category_scratch);

/* ========================================================================
 * Policies and the sandbox (policy.c, sandbox.c)
 * ======================================================================== */

/* A policy's source, immutable once loaded, shared by contexts. */
typedef struct nbx_policy {
    atomic_int refs;
    char *path;      /* as given, for messages */
    char *chunkname; /* "@" basename: Lua error positions read "name.lua:12" */
    char *source;
    size_t source_len;
    /* What sandboxes compile: the source as lsource.c instrumented it (its
     * own time checks; same lines). */
    char *exec_source;
    size_t exec_len;
    uint64_t version; /* xxh64 of the source */
    char version_hex[17];
    char name[128]; /* the table's `name` field, once a sandbox has loaded it */
} nbx_policy;

/* Parsing and instrumenting are linear in the size: this bounds their time
 * (docs/sandbox.md, "Time"). */
#define NBX_POLICY_FILE_MAX (256u << 10)

/* Read a policy: it must compile (syntax errors name FILE:LINE); it is
 * instrumented for the sandbox. Running its top level is the sandbox's
 * (nbx_sandbox_open, which also names it). */
int nbx_policy_load(const char *path, nbx_policy **out, nbx_err *e);
/* The same from the policy's source in memory (copied); path names it. */
int nbx_policy_load_text(const char *path, const char *text, size_t len, nbx_policy **out,
                         nbx_err *e);
nbx_policy *nbx_policy_ref(nbx_policy *p);
void nbx_policy_unref(nbx_policy *p);

typedef struct nbx_limits {
    uint32_t time_us; /* CPU time per decision (0: NBX_DEFAULT_TIME_LIMIT_US) */
    size_t memory;    /* bytes the policy may allocate (0: NBX_DEFAULT_MEMORY_LIMIT) */
    unsigned flags;   /* nbx_limits_flags; 0 in production */
    /* CPU time of the top level (0: 100 ms, what engines use). For tests
     * about something else than time, on slow or sanitised builds. */
    uint32_t load_time_us;
} nbx_limits;

/* For benchmarks only. */
enum nbx_limits_flags {
    NBX_LIMITS_NO_DEADLINE = 0x1, /* no time limit (removes a protection) */
    NBX_LIMITS_NO_JIT = 0x2       /* the interpreter only (for comparison) */
};

/* Exposure counts of one offer in its caps windows, given to the policy. */
typedef struct nbx_exposure_summary {
    uint32_t impressions; /* in caps.impressions.window_days (default 30) */
    uint32_t clicks;      /* same window as impressions */
    uint32_t accepts;     /* in caps.accepts.window_days (default 30) */
    uint32_t dismisses;   /* in dismiss_cooldown_days (default 30) */
    int64_t last_impression, last_dismiss, last_accept; /* ms, 0 = never (or after now) */
    bool dismiss_later; /* the last dismiss is after now (a replay) */
} nbx_exposure_summary;

/* One (offer, placement) pair under consideration. */
typedef struct nbx_candidate {
    uint32_t offer;     /* index into catalog->offers */
    uint32_t placement; /* index into catalog->placements */
    uint8_t excluded;   /* nbx_excluded; the policy sees only NONE */
    bool scored;
    double score;
    double expected_margin; /* NaN when the policy did not return one */
    const nbx_exposure_summary *exposure; /* NULL: never exposed */
    /* eligible()'s reason when it said no, escaped, with in->explain only;
     * owned by the sandbox, valid until its next run. NULL: none given. */
    const char *why;
} nbx_candidate;

typedef struct nbx_sandbox_input {
    const nbx_profile *profile; /* anonymous profiles have n_* == 0 */
    bool anonymous;
    const nbx_kv *session;
    size_t n_session;
    int64_t now_ms;
    uint64_t seed; /* math.random: from customer, clock and policy version */
    const double *propensity; /* per offer (nbx_caps_propensities), or NULL */
    nbx_candidate *cand;
    size_t n_cand;
    /* Collect what explanations show: eligible()'s reasons (cand[].why)
     * and nbx.log() lines (nbx_sandbox_log); without it nbx.log() does
     * nothing. */
    bool explain;
} nbx_sandbox_input;

typedef enum nbx_policy_fault {
    NBX_FAULT_NONE = 0,
    NBX_FAULT_RUNTIME, /* the policy raised */
    NBX_FAULT_TIMEOUT, /* CPU time limit */
    NBX_FAULT_MEMORY,  /* memory limit */
    NBX_FAULT_RESULT   /* non-number or non-finite score, bad eligible() */
} nbx_policy_fault;

typedef struct nbx_policy_error {
    uint8_t fault;   /* nbx_policy_fault */
    char where[256]; /* "name.lua:12", or "" if unknown */
    char reason[512];
    char offer[NBX_ID_MAX + 1]; /* offer being scored, "" if none */
} nbx_policy_error;

typedef struct nbx_sandbox nbx_sandbox;

/* A Lua state for one (policy, catalog) pair: allow-listed environment,
 * offer tables built once. Holds references to both. */
int nbx_sandbox_open(nbx_policy *policy, nbx_catalog *catalog, const nbx_limits *limits,
                     nbx_sandbox **out, nbx_err *e);
void nbx_sandbox_close(nbx_sandbox *sb);
/* Run eligible() and score() over every candidate with excluded == NONE, in
 * one call into Lua. Sets score/expected_margin/scored, or excluded =
 * INELIGIBLE. On a fault returns NBX_EPOLICY with err filled; the sandbox
 * stays usable (it rebuilds its state itself after a limit fault). */
int nbx_sandbox_run(nbx_sandbox *sb, const nbx_sandbox_input *in, nbx_policy_error *err);
size_t nbx_sandbox_memory(const nbx_sandbox *sb);
/* Lines the last run's policy logged with nbx.log() (an explained run
 * only, also one that faulted), escaped; owned by the sandbox, valid until
 * its next run. *dropped: lines over the limit, not kept. */
size_t nbx_sandbox_log(const nbx_sandbox *sb, const char *const **lines, uint32_t *dropped);
const nbx_policy *nbx_sandbox_policy(const nbx_sandbox *sb);
const nbx_catalog *nbx_sandbox_catalog(const nbx_sandbox *sb);

/* lpattern.c: Lua 5.1 patterns (find, match, gmatch, gsub) written for the
 * sandbox. LuaJIT's own run in C where hooks never fire, so a pathological
 * pattern could run for minutes; these count steps and call check(L, ud)
 * every few thousand steps, which raises a Lua error to abort. Recursion
 * depth and captures are bounded; gsub refuses function replacements
 * (recursion through C crashes LuaJIT); plain find is memmem (linear). */
struct lua_State;
typedef struct nbx_lp_limit {
    void (*check)(struct lua_State *L, void *ud); /* may be NULL */
    /* Raises for a result over max_result (may be NULL: a plain error). */
    void (*too_big)(struct lua_State *L, void *ud, const char *what, size_t size);
    void *ud;
    size_t max_result; /* longest string gsub may build (0: no limit) */
} nbx_lp_limit;
/* Push a new table {find, match, gmatch, gsub}; limit (may be NULL) must
 * outlive the Lua state. */
void nbx_lpattern_push(struct lua_State *L, const nbx_lp_limit *limit);

/* ========================================================================
 * Eligibility (caps.c)
 * ======================================================================== */

/* A planning batch's impressions per offer (it records nothing): counted
 * against daily budgets as a committing run's recorded ones are, so a plan
 * gives a budgeted offer to as many customers as a committing run would.
 * Shared by the batch's worker threads, in memory, never in the store. */
typedef struct nbx_budget_plan {
    nbx_catalog *catalog;          /* holds a reference; offers index the counts */
    _Atomic uint64_t *impressions; /* per offer, planned by this batch */
} nbx_budget_plan;

int nbx_budget_plan_open(nbx_catalog *catalog, nbx_budget_plan **out);
void nbx_budget_plan_close(nbx_budget_plan *p);

/* What eligibility knows about one customer and today's budgets. Arrays are
 * per catalog offer, owned by a context, sized at catalog switch. */
typedef struct nbx_caps {
    const nbx_catalog *catalog;
    nbx_exposure_summary *summary; /* per offer; valid where has_summary */
    uint8_t *has_summary;
    uint32_t contacts;          /* impressions over all offers in the contacts window */
    uint8_t *consented;         /* per catalog purpose, from the profile */
    bool channel_refused;       /* the session's channel lacks its consent: nothing is shown */
    uint32_t channel;           /* the purpose the session's channel needs; UINT32_MAX: none */
    double *propensity;         /* per offer: nbx_caps_propensities() */
    uint8_t *propensity_source; /* per offer: where it came from (nbx_propensity_source) */
    double *category_propensity; /* per catalog category, scratch */
    uint64_t *budget_impressions; /* per offer, today (UTC) */
    uint64_t *budget_accepts;
    /* Budgets change only when a write commits: reuse them while the read
     * snapshot (txn id) and the day are the same. */
    size_t budget_txn_id;
    uint32_t budget_day;
    bool budget_valid;
    const nbx_budget_plan *plan; /* a planning batch's; NULL otherwise */
    /* per offer: killed (nbx_caps_kills), kept across decisions while the
     * kill set's version is the same */
    uint8_t *killed;
    const nbx_kills *kills; /* the set they came from (explanations) */
    uint64_t kills_version;
    bool killed_valid;
    /* Set by the caller before nbx_caps_load for an audited decision: the
     * load then hashes every counter row it reads (keys and values, in key
     * order, rows of offers no longer in the catalog included) into
     * exposures_hash, 0 for none: what `nbx audit replay` compares. Hashing
     * while reading costs a few ns a row; a second cursor over the same
     * range cost about 1 us a decision. */
    bool hash_exposures;
    uint64_t exposures_hash;
} nbx_caps;

int nbx_caps_init(nbx_caps *c, const nbx_catalog *catalog);
void nbx_caps_free(nbx_caps *c);
/* Read the customer's consents (once per catalog purpose, not per offer),
 * counters (one cursor range) and today's budgets. channel: the purpose the
 * session's channel needs (nbx_catalog_channel), UINT32_MAX for none. */
int nbx_caps_load(nbx_caps *c, nbx_store *s, MDB_txn *txn, const nbx_profile *p, uint32_t channel,
                  int64_t now_ms, nbx_arena *a, nbx_err *e);
/* The catalog's offers that k kills (NULL: none), worked out again only
 * when k or the catalog changed since the last call. */
void nbx_caps_kills(nbx_caps *c, const nbx_kills *k);
/* Counters given in place of the store's (given.c): forget the loaded
 * ones, then set one offer's row and the all-offers row (contacts). */
void nbx_caps_clear_exposures(nbx_caps *c);
void nbx_caps_set_exposure(nbx_caps *c, const nbx_offer *o, const nbx_exposure *x, uint32_t today,
                           int64_t now_ms);
void nbx_caps_set_contacts(nbx_caps *c, const nbx_exposure *all, uint32_t today);
/* given.c: read a request's exposures_json (offer id -> counts and last
 * times) into c, replacing the counters nbx_caps_load() read. NBX_EINVAL
 * naming the field ('exposures.OFFER.FIELD'), NBX_ENOMEM. */
int nbx_given_exposures(nbx_caps *c, const char *json, size_t len, int64_t now_ms, nbx_arena *a,
                        nbx_err *e);
/* First reason the offer may not be shown to the customer loaded now, or
 * NONE: killed, validity, consent (the offer's purpose and the channel's),
 * contacts, frequency, cooldown, budget. */
int nbx_caps_check(const nbx_caps *c, const nbx_offer *o, int64_t now_ms);
/* nbx_caps_check() of each candidate into its excluded, and its exposure
 * summary (NULL: never exposed) into its exposure. */
void nbx_caps_check_candidates(const nbx_caps *c, nbx_candidate *cand, size_t n, int64_t now_ms);
/* Whether the customer loaded now consented to the catalog's
 * personalisation purpose (a missing consent counts as consent_default);
 * without it the policy sees an anonymous visitor. */
bool nbx_caps_personalized(const nbx_caps *c);
/* An action of a planning batch (c->plan set) about to be placed: take one
 * impression of the offer's daily budget in the plan, if the budget has
 * room for it counting the store's impressions and the plan's; a fallback
 * action is counted without the check, as recording it would be. Always
 * true without a plan or a budget. Atomic: worker threads share the plan. */
bool nbx_caps_plan_impression(const nbx_caps *c, const nbx_offer *o, bool fallback);
/* Actions a decision may still place under the contact policy (every action
 * is a contact); UINT32_MAX when the catalog sets none. */
uint32_t nbx_caps_contacts_left(const nbx_caps *c);
/* The rules an action must pass when it is recorded, with c loaded in the
 * write transaction (the latest counters, writers ordered): a contact left,
 * and unless it is a fallback action, its caps and budget. Called by
 * record.c, the one recording path (nbx_decide, batches). */
int nbx_caps_recheck(const nbx_caps *c, const nbx_offer *o, int64_t now_ms, bool fallback,
                     uint32_t contacts_left);

/* Every offer's propensity for the customer into c->propensity and
 * c->propensity_source (nbx_propensities). */
void nbx_caps_propensities(nbx_caps *c, const nbx_profile *p);
/* Why the offer was excluded for `reason`, in words for a reader of an
 * explanation ("shown 3 times in the last 7 days; the cap is 3"), from the
 * state loaded now; policy_reason: what eligible() said (escaped), if
 * anything. Writes at most cap bytes (NUL-terminated); "" when there is
 * nothing to say. */
void nbx_caps_explain(const nbx_caps *c, const nbx_offer *o, int reason, const char *policy_reason,
                      int64_t now_ms, char *out, size_t cap);

/* ========================================================================
 * Deployments (deployment.c): what serves whom
 *
 * A deployment names a holdout share, arms (a policy each, with a share of
 * the customers not held out) and shadow policies (docs/experiments.md).
 * Immutable once loaded, reference counted like catalogs and policies.
 * ======================================================================== */

/* Abort rules of an arm (h-experiment evaluates them): min_decisions 0
 * means none; a NaN rate means that rule is not set. */
typedef struct nbx_arm_abort {
    uint64_t min_decisions;
    double max_fallback_rate;     /* fallbacks / decisions above this: abort */
    double min_accept_rate_ratio; /* accept rate below this x the first arm's: abort */
} nbx_arm_abort;

typedef struct nbx_arm {
    char name[NBX_DEPLOYMENT_NAME_MAX + 1];
    char *policy_path;  /* resolved against the deployment file's directory */
    nbx_policy *policy; /* NULL when loaded with NBX_DEPLOYMENT_NO_POLICIES */
    uint32_t percent;   /* hundredths of a percent of the customers not held out */
    uint32_t bucket_lo, bucket_hi; /* its buckets: [lo, hi) of NBX_ASSIGN_BUCKETS */
    nbx_arm_abort abort;
} nbx_arm;

struct nbx_deployment {
    atomic_int refs;
    char *path; /* as given, for messages */
    char name[NBX_DEPLOYMENT_NAME_MAX + 1];
    char *salt;
    size_t salt_len;
    uint64_t seed; /* xxh64(salt, 0): the seed of every customer's bucket */
    uint64_t version; /* xxh64 of the file */
    char version_hex[17];
    uint32_t holdout_buckets; /* buckets [0, holdout_buckets) are held out */
    nbx_arm *arms;
    uint32_t n_arms;
    char **shadow_paths;
    nbx_policy **shadow; /* entries NULL with NBX_DEPLOYMENT_NO_POLICIES */
    uint32_t n_shadow;
};

/* nbx_deployment_arm_of() for a customer held out. */
#define NBX_ARM_INDEX_HOLDOUT UINT32_MAX

/* Read, validate and (unless NBX_DEPLOYMENT_NO_POLICIES) load the policies
 * of a deployment file; errors name the file, the arm and the field. All or
 * nothing: on failure *out is NULL. _text: the file's bytes given, path
 * names it and anchors relative policy paths. */
int nbx_deployment_load(const char *path, unsigned flags, nbx_deployment **out, nbx_err *e);
int nbx_deployment_load_text(const char *path, const char *text, size_t len, unsigned flags,
                             nbx_deployment **out, nbx_err *e);
nbx_deployment *nbx_deployment_ref(nbx_deployment *d);
void nbx_deployment_unref(nbx_deployment *d);
/* 1..64 bytes of [A-Za-z0-9_.-]: deployment and arm names. */
bool nbx_deployment_name_valid(nbx_sv name);
/* The customer's bucket: xxh64(id, seed) mod NBX_ASSIGN_BUCKETS. */
uint32_t nbx_deployment_bucket(const nbx_deployment *d, nbx_sv customer);
/* The customer's arm as the file assigns it (kills not applied): an index
 * into d->arms, or NBX_ARM_INDEX_HOLDOUT. */
uint32_t nbx_deployment_arm_of(const nbx_deployment *d, nbx_sv customer);
/* Whether an arm may not serve: its name or its policy's version is killed
 * (the kill set answers; ud is its state). */
typedef bool (*nbx_arm_killed_fn)(void *ud, const nbx_arm *arm);
/* The arm that serves a customer the file assigns to `assigned` (an index
 * or NBX_ARM_INDEX_HOLDOUT) once kills apply: the arm itself unless
 * killed(ud, arm); a killed arm's customers go to the first arm, and when
 * the first arm is killed too, to the control treatment
 * (NBX_ARM_INDEX_HOLDOUT). killed NULL: nothing is killed. */
uint32_t nbx_deployment_serving_arm(const nbx_deployment *d, uint32_t assigned,
                                    nbx_arm_killed_fn killed, void *ud);

/* ========================================================================
 * Per-arm tally of an engine context (tally.c): its decisions per arm,
 * counted in memory and flushed into the arm counters, where the canary
 * abort rules are judged
 * ======================================================================== */

/* Flush after this many decisions, or a second after the first unflushed. */
#define NBX_TALLY_FLUSH_DECISIONS 1000
#define NBX_TALLY_ABORTS_MAX 4

/* What became of a decision, for its arm's counters. */
enum { NBX_TALLY_SERVED, NBX_TALLY_FALLBACK, NBX_TALLY_ERROR };

typedef struct nbx_tally {
    nbx_arm_deltas pending; /* decisions, fallbacks, errors, expected margin */
    uint32_t decisions;     /* counted since the last flush */
    int64_t since_us;       /* monotonic time of the first of them (0: none) */
    uint64_t lost;          /* counts dropped for want of memory */
    nbx_buf scratch;
    /* the arms the last flush aborted, for the engine's log */
    struct {
        char arm[NBX_DEPLOYMENT_NAME_MAX + 1];
        char reason[512];
    } aborted[NBX_TALLY_ABORTS_MAX];
    uint32_t aborted_n;
} nbx_tally;

/* Count a decision of arm (a name of d's, or NBX_ARM_HOLDOUT) at the
 * decision's clock. d NULL (no deployment): nothing. */
void nbx_tally_count(nbx_tally *t, const nbx_deployment *d, const char *arm, int64_t now_ms,
                     int outcome, double expected_margin);
/* Whether a flush is due: NBX_TALLY_FLUSH_DECISIONS counted, or a second
 * since the first of them. */
bool nbx_tally_due(nbx_tally *t, int64_t mono_us);
/* Add the counts to the store's arm counters in one write transaction and
 * judge d's abort rules in it (d NULL: none), killing the arms that break
 * theirs (t->aborted says which). A store that is read-only or has no arm
 * counters: the counts are dropped. On failure the counts are kept for the
 * next flush and nothing is written. */
int nbx_tally_flush(nbx_tally *t, nbx_store *s, const nbx_deployment *d, int64_t now_ms,
                    nbx_err *e);
void nbx_tally_free(nbx_tally *t);
/* Whether counters c of arm break its abort rules (min_decisions passed;
 * fallback rate above max_fallback_rate, or accept rate below
 * min_accept_rate_ratio x the first arm's, fc); 1 with the rule and its
 * figures in reason, else 0. */
int nbx_abort_judge(const nbx_arm *arm, const nbx_arm_counts *c, const nbx_arm *first,
                    const nbx_arm_counts *fc, char *reason, size_t cap);

/* ========================================================================
 * Recording a decision (record.c): its chosen actions as impressions, for
 * nbx_decide() with NBX_DECIDE_RECORD and for batches that record
 * ======================================================================== */

/* Where a decision is recorded, and with what. */
typedef struct nbx_recorder {
    nbx_store *store;
    MDB_txn *txn;               /* a write transaction: writers are ordered */
    const nbx_catalog *catalog; /* the decision's */
    nbx_caps *caps;             /* sized for catalog; loaded again in txn */
    nbx_arena *arena;
    nbx_buf *scratch;
} nbx_recorder;

/* A decision as it is recorded. */
typedef struct nbx_decision_record {
    const char *id;             /* the decision id: its events are ID:INDEX */
    const nbx_profile *profile; /* the customer (id, consents) */
    uint32_t channel;           /* the session's channel purpose (nbx_catalog_channel) */
    int64_t now_ms;             /* the decision's clock, the impressions' time */
    bool fallback;              /* fallback actions (or the control treatment's) are
                                   checked for contacts only */
    const nbx_action *actions;  /* in rank order */
    size_t n_actions;
} nbx_decision_record;

/* nbx_record_decision(): an action no longer fits; nothing was recorded. */
#define NBX_DECISION_STALE 1

/* Record the decision's actions as impressions in r->txn, after checking
 * them in rank order against the customer's caps loaded again in r->txn
 * (nbx_caps_recheck: a contact left, and unless a fallback, the offer's
 * caps and budget; an offer r->catalog lacks does not fit).
 * misfit NULL: all or nothing; if an action does not fit, nothing is
 * recorded and NBX_DECISION_STALE is returned (a batch decides again).
 * misfit given (n_actions entries): misfit[i] is why action i does not fit
 * (NBX_EXCLUDED_*; 0: recorded); the others are recorded, the k-th one
 * recorded as ID:k, its index once the caller drops the misfits
 * (nbx_decide). Returns NBX_OK, NBX_DECISION_STALE or an error; on an error
 * the caller aborts r->txn. */
int nbx_record_decision(const nbx_recorder *r, const nbx_decision_record *d, uint8_t *misfit,
                        nbx_err *e);

/* ========================================================================
 * Results (result.c): what a decision hands back
 * ======================================================================== */

/* What a shadow policy decided beside the served decision: never served,
 * recorded or counted (docs/experiments.md, "Shadow policies"). */
typedef struct nbx_shadow_result {
    const nbx_policy *policy;
    nbx_action *actions;
    size_t n_actions;
    double expected_margin;
    bool fallback;          /* it failed: actions are the fallback's */
    const char *fault_kind; /* static; with fallback */
    nbx_policy_error fault;
} nbx_shadow_result;

struct nbx_result {
    nbx_buf json;
    /* where json holds "actions":[...]: the audit line has the same text,
     * copied rather than written twice (a third of the line's cost) */
    size_t json_actions_at, json_actions_len;
    nbx_action *actions;
    size_t n_actions;
    bool fallback;
    bool anonymous;
    bool has_error;
    /* With a deployment: the arm served (NULL: no deployment), the arm the
     * file assigns, and whether the control treatment was served (no
     * policy ran: policy is NULL). */
    const nbx_deployment *deployment;
    const char *arm;
    const char *assigned;
    bool control;
    const nbx_policy *policy; /* the policy that decided; NULL: control */
    const nbx_shadow_result *shadows;
    uint32_t n_shadows;
    char decision_id[NBX_DECISION_ID_MAX + 1];
    char error[1024];
    const char *fault_kind; /* static; with has_error */
    nbx_policy_error fault;
    uint32_t exclusions[NBX_EXCLUDED_COUNT];
    double expected_margin;
    nbx_buf audit; /* NBX_DECIDE_AUDIT: the audit line (audit.c); len 0 otherwise */
    /* the catalog decided on: the context's snapshot holds it as long as
     * the result */
    const nbx_catalog *catalog;
    uint8_t segment; /* nbx_segment of the profile the policy saw */
    /* the decision's candidates (the context's), for batches; their why
     * is set with NBX_DECIDE_EXPLAIN or NBX_DECIDE_REASONS */
    const nbx_candidate *cand;
    size_t n_cand;
};

/* What the result JSON is written from: the decision as the pipeline
 * (decide.c) leaves it. */
typedef struct nbx_result_view {
    const nbx_request *req;
    const nbx_catalog *catalog;
    const nbx_caps *caps;      /* eligibility and propensities as decided */
    const nbx_candidate *cand; /* explain: every candidate */
    size_t n_cand;
    const char *const *log; /* nbx.log() lines (explain only), escaped */
    size_t n_log;
    uint32_t log_dropped;
    int64_t now_ms;
} nbx_result_view;

/* Write r->json (docs/decisions.md, "The result"); r->json.oom on failure. */
void nbx_result_write(nbx_result *r, const nbx_result_view *v);
/* Pieces the audit line writes as the result does: an action's or a
 * candidate's opening fields ({"offer",..,"expected_margin":..), the
 * "deployment", "arm" (null without a deployment) and "assigned" (when a
 * kill moved the customer) fields, a policy ({"name","version"} or null), "actions":[...] with probabilities, the
 * error record of r->policy (kind_only: {"kind"} alone, for clients) and
 * the "shadow" array. */
void nbx_result_write_choice(nbx_buf *b, bool first, nbx_sv offer, nbx_sv placement, double score,
                             double expected_margin);
void nbx_result_write_arm(nbx_buf *b, const nbx_result *r);
void nbx_result_write_policy(nbx_buf *b, const nbx_policy *pol);
void nbx_result_write_actions(nbx_buf *b, const nbx_action *actions, size_t n);
void nbx_result_write_error(nbx_buf *b, const nbx_result *r, bool kind_only);
void nbx_result_write_shadows(nbx_buf *b, const nbx_result *r, bool kind_only);

/* ========================================================================
 * Audit lines (audit.c): one JSON line per decision, docs/experiments.md
 * ======================================================================== */

/* The audit line's format version (its "audit" field): replay reads lines
 * of this version and older. */
#define NBX_AUDIT_FORMAT 1

/* What the decision read that may change after it: replay compares it with
 * what the store holds then, to say why a decision came out differently. */
enum nbx_audit_profile {
    NBX_AUDIT_PROFILE_NONE = 0, /* no profile: an anonymous visitor */
    NBX_AUDIT_PROFILE_STORE,    /* the store's */
    NBX_AUDIT_PROFILE_REQUEST   /* the request's profile_json */
};
typedef struct nbx_audit_state {
    uint8_t profile;            /* nbx_audit_profile */
    int64_t profile_updated_at; /* the stored profile's updated_at */
    uint64_t exposures;         /* hash of the customer's counter rows (keys and values); 0:
                                   none */
} nbx_audit_state;

/* The hash of the customer's exposure counter rows in txn (one cursor
 * range, as eligibility reads them): any event recorded for the customer
 * since changes it. */
/* Write r->audit from the decision; r->audit.oom on failure. */
void nbx_audit_write(nbx_result *r, const nbx_result_view *v, const nbx_audit_state *st);

/* ========================================================================
 * Engine and decisions (engine.c, decide.c)
 * ======================================================================== */

/* What one decision sees: a (policy, catalog) pair, or a (deployment,
 * catalog) pair; with a deployment, policy is its first arm's. Immutable. */
typedef struct nbx_snapshot {
    atomic_int refs;
    nbx_policy *policy;
    nbx_deployment *deployment; /* NULL: the policy serves everyone */
    nbx_catalog *catalog;
    uint64_t generation;
} nbx_snapshot;

/* The policies a snapshot runs, in the order contexts build their sandboxes:
 * the policy alone, or each arm's then each shadow's. */
uint32_t nbx_snapshot_policy_count(const nbx_snapshot *s);
nbx_policy *nbx_snapshot_policy_at(const nbx_snapshot *s, uint32_t i);

struct nbx_engine {
    nbx_store *store;
    bool own_store;
    pthread_mutex_t lock; /* guards current */
    nbx_snapshot *current;
    atomic_uint_fast64_t generation; /* current->generation, readable without the lock */
    nbx_limits limits;
    unsigned flags;
    int64_t event_max_skew_ms; /* nbx_record(): how far ahead an event may be */
    nbx_log_fn log;
    void *log_ud;
};

/* Checks shared by every way a request arrives (nbx_decide, batches):
 * bounds and presence of placements and session fields; placement ids must
 * be the catalog's. Messages name the field. */
int nbx_request_lists_check(const nbx_catalog *cat, const char *const *placements,
                            size_t n_placements, const nbx_kv *session, size_t n_session,
                            nbx_err *e);
int nbx_session_field_check(const nbx_kv *kv, size_t i, nbx_err *e);

void nbx_engine_fill_info(nbx_engine_info *info, const nbx_policy *policy,
                          const nbx_catalog *catalog);

/* trial.c: nbx_engine_trial() with its message in e. */
int nbx_trial_run(nbx_engine *engine, nbx_trial_fn fn, void *ud, nbx_err *e);

/* The context's engine; a failure recorded as the context's message
 * (nbx_ctx_errmsg()) and the thread's, for entry points outside decide.c
 * that work on a context (replay.c). Returns e->code. */
nbx_engine *nbx_ctx_engine(const nbx_ctx *c);
int nbx_ctx_fail(nbx_ctx *c, const nbx_err *e);

/* Count this context's decisions against a planning batch's budgets (NULL:
 * stop); the plan must outlive the context's use of it. Applies while the
 * context decides on the plan's catalog. */
void nbx_ctx_plan_budgets(nbx_ctx *c, const nbx_budget_plan *plan);

/* Trials: every decision of the context is served by the deployment's arm
 * at index, whatever the customer's arm; shadows do not run. -1:
 * assignment again. */
void nbx_ctx_force_policy(nbx_ctx *c, int index);

/* A new reference to the current snapshot. */
nbx_snapshot *nbx_engine_snapshot(nbx_engine *e);
void nbx_snapshot_unref(nbx_snapshot *s);
void nbx_engine_log(nbx_engine *e, int level, const char *fmt, ...) NBX_PRINTF(3, 4);

/* ========================================================================
 * The experiment report (report.c): intent-to-treat means per arm and
 * Welch's interval of each arm's uplift over the holdout
 * ======================================================================== */

/* Count, mean and sum of squared deviations (Welford). Zero is empty. */
typedef struct nbx_moments {
    uint64_t n;
    double mean, m2;
} nbx_moments;
void nbx_moments_add(nbx_moments *m, double x);
/* The sample variance; NaN below two values. */
double nbx_moments_variance(const nbx_moments *m);

typedef struct nbx_interval {
    double estimate, low, high;
    double df; /* Welch-Satterthwaite degrees of freedom; INFINITY without spread */
} nbx_interval;
/* The difference of the means treated - control with its Welch t interval
 * at level (0.95); false when either has fewer than two values. */
bool nbx_welch(const nbx_moments *treated, const nbx_moments *control, double level,
               nbx_interval *out);
/* The p quantile (0.5 < p < 1) of Student's t with df > 0 degrees of
 * freedom, to about 12 digits; NaN outside. */
double nbx_t_quantile(double p, double df);

/* ========================================================================
 * Policy source analysis (lsource.c)
 *
 * LuaJIT never calls debug hooks from compiled code, so a policy that runs
 * with the JIT on must carry its own time checks. Before it loads, a
 * policy's source is rewritten: a "tick" (decrement a counter, call
 * __nbx_t() when it goes negative) at the start of every function and loop
 * body, after labels, before returns, at the end of function bodies and
 * before every statement that does work; `#e` becomes __nbx_len(e) and
 * `a .. b` __nbx_cat(a, b), so the sandbox bounds those operations (and
 * `a ^ b` __nbx_pow(a, b), the sandbox's deterministic pow); and a
 * statement doing more than max_work operations is refused. The work
 * between two ticks is then bounded whatever the JIT compiles.
 * docs/lsource.md has the rules, their messages and the reasoning.
 * ======================================================================== */

/* Inserted first thing in the chunk (after a '#' first line, which LuaJIT
 * skips): the five values the sandbox provides as globals of the chunk's
 * environment become locals, which a policy can never name. */
#define NBX_LSOURCE_PROLOGUE                                                                       \
    "local __nbx_s,__nbx_t,__nbx_len,__nbx_cat,__nbx_pow=__nbx_s,__nbx_t,__nbx_len,__nbx_cat,"     \
    "__nbx_pow;"
/* One time check. It must stay on one line, start with a name, end with a
 * space and be plain statements (no local, function, return, break, goto or
 * label): it is inserted between statements on existing lines. The
 * instrumentation refuses to run with one that breaks this. */
#define NBX_LSOURCE_TICK NBX_LSOURCE_TICK_HEAD "1" NBX_LSOURCE_TICK_TAIL
/* A tick counts down by the work of the statement it stands before (1 to
 * max_work; 1 at function entries, loop iterations, labels and ends): the
 * text is HEAD, the weight in decimal, TAIL. The sandbox looks at the clock
 * when the count runs out, so it does so every so many operations, not
 * every so many statements (docs/sandbox.md, "Time"). */
#define NBX_LSOURCE_TICK_HEAD "__nbx_s[1]=__nbx_s[1]-"
#define NBX_LSOURCE_TICK_TAIL " if __nbx_s[1]<0 then __nbx_t() end "
/* Operations one statement may do unless nbx_lsource_opts says otherwise. */
#define NBX_LSOURCE_WORK_MAX 64

typedef struct nbx_lsource_opts {
    bool trusted;      /* the engine's own Lua helpers: identifiers __nbx* allowed,
                          the upvalue-assignment rule not applied */
    uint32_t max_work; /* work units allowed in one statement (0: NBX_LSOURCE_WORK_MAX) */
} nbx_lsource_opts;

/* Read a Lua chunk (Lua 5.1 syntax with LuaJIT 2.1's extensions), check the
 * policy rules and append the instrumented chunk to out.
 *
 * name: the chunk's display name for messages ("retention.lua"; NULL or ""
 * reads "policy"). src, len: the source, not NUL-terminated (src may be NULL
 * when len is 0). opts: NULL for the defaults (untrusted, 64 units).
 *
 * Callers compile the original source with LuaJIT first, so that syntax
 * errors carry LuaJIT's own messages; this function still refuses whatever
 * it cannot parse, and what LuaJIT would refuse once instrumented: nesting,
 * locals, upvalues, registers and jump lengths are checked on the output
 * (messages then read "NAME:LINE: once instrumented, ..."). Not checked:
 * goto targets and duplicate labels (the rewrite keeps them valid when they
 * were) and a goto across more than 32767 instructions of straight code;
 * the caller loads the instrumented chunk and reports any refusal.
 *
 * Returns NBX_OK; NBX_EPOLICY with e->msg "NAME:LINE: reason" for a rule
 * violation, a statement over max_work, a 64-bit or imaginary number literal,
 * input that does not parse, one of LuaJIT's limits exceeded (before or
 * after instrumentation) or a source over 2 GiB;
 * NBX_EINVAL for out NULL or src NULL with len > 0; NBX_ENOMEM.
 * On failure out's contents are as they were (its capacity may have grown).
 * Time and memory are linear in len; recursion is bounded by LuaJIT's 200
 * nesting levels, whatever the input.
 * @note Thread-safe: no state outside the call. */
int nbx_lsource_instrument(const char *name, const char *src, size_t len,
                           const nbx_lsource_opts *opts, nbx_buf *out, nbx_err *e);

#endif /* NBX_INT_H */
