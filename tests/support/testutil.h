/* Helpers shared by the Criterion suites: temporary directories, files. */
#ifndef NBX_TESTUTIL_H
#define NBX_TESTUTIL_H

#include <stddef.h>

/* Create a fresh directory under $TMPDIR (or /tmp); returns a malloc'd path. */
char *tu_tempdir(const char *tag);
/* Remove a directory tree (best effort). */
void tu_rmtree(const char *path);
/* Write a file; returns 0 or -1. */
int tu_write_file(const char *path, const char *content);
/* Join dir and name into a malloc'd path. */
char *tu_path(const char *dir, const char *name);
/* Read a whole file; malloc'd, NUL-terminated; NULL on failure. */
char *tu_read_file(const char *path, size_t *len);
/* Path under the source tree (NBX_SOURCE_DIR); malloc'd. */
char *tu_source_path(const char *rel);

#endif

/* Create a store at store_dir holding the profiles (JSON, NULL-terminated
 * list). 0, or -1 with nbx_last_errmsg() saying why. */
int tu_store_with(const char *store_dir, const char *const *profiles);
