/*
 * fuzz_support.h: what the libFuzzer harnesses share (docs/fuzzing.md).
 *
 * A harness reports a finding by crashing: fz_fail() prints what broke and
 * aborts, which libFuzzer records as a crash with the input that caused it.
 * Everything here is made once (LLVMFuzzerInitialize) and removed at exit.
 */
#ifndef NBX_FUZZ_SUPPORT_H
#define NBX_FUZZ_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#include "nbx_int.h"

/* The clock of every decision and event the harnesses make: decisions are
 * reproducible from the input alone. 2026-03-01T12:00:00Z. */
#define FZ_NOW_MS INT64_C(1772366400000)

/* Print "nbx fuzz: " and the message on stderr, then abort(). */
void fz_fail(const char *fmt, ...) NBX_PRINTF(1, 2) __attribute__((noreturn));

/* A file of the source tree (relative to it), read whole; aborts if missing. */
char *fz_source_file(const char *rel, size_t *len);

/* Messages reach terminals, logs and browsers: every nbx message must be
 * escaped (no C0/C1 control, no DEL, valid UTF-8) and not empty after a
 * failure. what names the call for the report. */
void fz_check_message(const char *msg, const char *what);

/* Output nbx writes as JSON must be valid JSON (jansson parses it). */
void fz_check_json(const char *json, size_t len, const char *what);

/* The engine the request, customers and stored harnesses drive: a store in a
 * temp dir with a few profiles, tests/data/catalog.json and
 * tests/fuzz/harness.lua, one context. */
typedef struct fz_engine {
    char *dir;
    nbx_store *store;
    nbx_engine *engine;
    nbx_ctx *ctx;
} fz_engine;

/* Open it (aborts on failure) and register its removal at exit. */
fz_engine *fz_engine_get(void);
/* Start again from a fresh store once this one has grown past a few tens of
 * MB: harnesses that record events would otherwise fill the disk over a
 * long run. Handles held by the caller are invalid afterwards. */
void fz_engine_trim(fz_engine *fe);

/* nbx_decide on fe's context at FZ_NOW_MS. A result must have valid JSON,
 * readable actions and, if it is a fallback, an escaped error; a failure
 * must return one of the codes in ok (terminated by NBX_OK) with an escaped
 * message. Returns the code; *out is the result or NULL. */
int fz_decide(fz_engine *fe, nbx_request *req, const int *ok, const nbx_result **out);

/* The input as a NUL-terminated copy (free() it); interior NULs stay. */
char *fz_strndup(const uint8_t *data, size_t size);

#endif /* NBX_FUZZ_SUPPORT_H */
