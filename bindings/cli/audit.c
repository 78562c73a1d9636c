/*
 * audit.c: the audit log of nbx decide and nbx batch (--log FILE)
 * (docs/experiments.md).
 *
 * What a line holds is the library's (nbx_result_audit_json()); this file
 * writes lines to files.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* ========================================================================
 * --log FILE
 * ======================================================================== */

int cli_log_open(const cli_command *cmd, const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        cli_error(cmd, "--log %s: %s", path, strerror(errno));
    return fd;
}

int cli_log_append(const cli_command *cmd, const char *path, int fd, const char *line, size_t len)
{
    if (!line)
        return cli_error(cmd, "--log %s: the decision has no audit line", path);
    struct iovec iov[2] = {{(void *)line, len}, {(void *)"\n", 1}};
    ssize_t want = (ssize_t)len + 1, got;
    while ((got = writev(fd, iov, 2)) < 0 && errno == EINTR)
        ;
    if (got < 0)
        return cli_error(cmd, "--log %s: %s", path, strerror(errno));
    if (got != want)
        return cli_error(cmd, "--log %s: only %zd of %zd bytes written (disk full?)", path, got,
                         want);
    return CLI_OK;
}
