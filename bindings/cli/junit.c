/*
 * junit.c: test results as JUnit XML, the format CI systems (GitLab,
 * GitHub Actions reporters, Jenkins) show in merge requests.
 *
 * One <testsuite> per test file, one <testcase> per case; a failed case
 * carries <failure> with its first difference as the message and every
 * difference (and the policy's log) as the body; a file that could not be
 * read is one <testcase> with <error>. Every name and message comes from a
 * test file or a policy: all of it is escaped (cli_print_xml). The file is
 * written beside its final name and renamed over it once complete, so CI
 * never picks up half a report.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void write_case(FILE *f, const char *suite, const cli_junit_case *c)
{
    fputs("    <testcase classname=\"", f);
    cli_print_xml(f, suite);
    fputs("\" name=\"", f);
    cli_print_xml(f, c->name);
    fprintf(f, "\" file=\"");
    cli_print_xml(f, c->file);
    fprintf(f, "\" line=\"%d\" time=\"%.6f\"", c->line, c->seconds);
    if (c->status == CLI_JUNIT_PASSED) {
        fputs("/>\n", f);
        return;
    }
    const char *tag = c->status == CLI_JUNIT_FAILED ? "failure" : "error";
    fprintf(f, ">\n      <%s message=\"", tag);
    cli_print_xml(f, c->message ? c->message : "");
    fputs("\">", f);
    /* the body keeps its lines; each is escaped */
    for (const char *p = c->details; p && *p;) {
        const char *nl = strchr(p, '\n');
        char *line = strndup(p, nl ? (size_t)(nl - p) : strlen(p));
        if (line)
            cli_print_xml(f, line);
        free(line);
        if (nl)
            putc('\n', f);
        p = nl ? nl + 1 : NULL;
    }
    fprintf(f, "</%s>\n    </testcase>\n", tag);
}

static void write_suites(FILE *f, const cli_junit_suite *suites, size_t n)
{
    size_t tests = 0, failures = 0, errors = 0;
    double seconds = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < suites[i].n_cases; k++) {
            tests++;
            failures += suites[i].cases[k].status == CLI_JUNIT_FAILED;
            errors += suites[i].cases[k].status == CLI_JUNIT_ERROR;
            seconds += suites[i].cases[k].seconds;
        }
    }
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<testsuites name=\"nbx policy test\" tests=\"%zu\" failures=\"%zu\" errors=\"%zu\" "
            "time=\"%.6f\">\n",
            tests, failures, errors, seconds);
    for (size_t i = 0; i < n; i++) {
        const cli_junit_suite *s = &suites[i];
        size_t fails = 0, errs = 0;
        double t = 0;
        for (size_t k = 0; k < s->n_cases; k++) {
            fails += s->cases[k].status == CLI_JUNIT_FAILED;
            errs += s->cases[k].status == CLI_JUNIT_ERROR;
            t += s->cases[k].seconds;
        }
        fputs("  <testsuite name=\"", f);
        cli_print_xml(f, s->name);
        fprintf(f, "\" tests=\"%zu\" failures=\"%zu\" errors=\"%zu\" time=\"%.6f\">\n", s->n_cases,
                fails, errs, t);
        for (size_t k = 0; k < s->n_cases; k++)
            write_case(f, s->name, &s->cases[k]);
        fputs("  </testsuite>\n", f);
    }
    fputs("</testsuites>\n", f);
}

int cli_junit_write(const char *path, const cli_junit_suite *suites, size_t n, char *err,
                    size_t err_size)
{
    size_t len = strlen(path) + 16;
    char *tmp = malloc(len);
    if (!tmp) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    snprintf(tmp, len, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(err, err_size, "%s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    write_suites(f, suites, n);
    int failed = ferror(f);
    if (fclose(f) != 0 || failed) {
        snprintf(err, err_size, "writing %s: %s", tmp, strerror(errno ? errno : EIO));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, err_size, "%s: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}
