/*
 * bench_assign: the cost of assigning a customer to a deployment's arm
 * (xxh64 of the id under the salt's seed, then the arm whose bucket range
 * holds it: docs/experiments.md, "Assignment"), per call, over ids of the
 * shape `nbx gen` writes. Not a test: it prints figures.
 *
 *   bench_assign [--ids N] [--arms N] [--runs N]
 */
#include "nbx_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A deployment of n arms sharing 100 % evenly (the last takes the rest),
 * 5 % held out; read without policies, as only assignment is measured. */
static nbx_deployment *make_deployment(unsigned n)
{
    char json[4096];
    int len = snprintf(json, sizeof json,
                       "{\"name\":\"bench\",\"salt\":\"bench-2026\",\"holdout\":{\"percent\":5},"
                       "\"arms\":[");
    unsigned each = 10000 / n;
    for (unsigned i = 0; i < n; i++) {
        unsigned share = i + 1 < n ? each : 10000 - each * (n - 1);
        len += snprintf(json + len, sizeof json - (size_t)len,
                        "%s{\"name\":\"arm%u\",\"policy\":\"p.lua\",\"percent\":%u.%02u}",
                        i ? "," : "", i, share / 100, share % 100);
    }
    len += snprintf(json + len, sizeof json - (size_t)len, "]}");
    nbx_deployment *d = NULL;
    nbx_err e = {0};
    if (nbx_deployment_load_text("bench.json", json, (size_t)len, NBX_DEPLOYMENT_NO_POLICIES, &d,
                                 &e) != NBX_OK)
        fprintf(stderr, "bench_assign: %s\n", e.msg);
    return d;
}

int main(int argc, char **argv)
{
    size_t n_ids = 1000000;
    unsigned arms = 2;
    int runs = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ids") == 0 && i + 1 < argc)
            n_ids = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--arms") == 0 && i + 1 < argc)
            arms = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_assign [--ids N] [--arms N] [--runs N]\n");
            return 2;
        }
    }
    if (n_ids == 0 || arms == 0 || arms > NBX_DEPLOYMENT_ARMS_MAX || runs < 1 || runs > 99) {
        fprintf(stderr, "bench_assign: --ids >= 1, --arms 1..%d, --runs 1..99\n",
                NBX_DEPLOYMENT_ARMS_MAX);
        return 2;
    }
    nbx_deployment *d = make_deployment(arms);
    if (!d)
        return 1;
    char(*ids)[16] = malloc(n_ids * sizeof *ids);
    size_t *lens = malloc(n_ids * sizeof *lens);
    if (!ids || !lens)
        return 1;
    for (size_t i = 0; i < n_ids; i++)
        lens[i] = (size_t)snprintf(ids[i], sizeof ids[i], "c%08zu", i);
    double per_call[99];
    uint64_t sink = 0, held = 0;
    for (int r = 0; r < runs; r++) {
        double t0 = now_ns();
        for (size_t i = 0; i < n_ids; i++)
            sink += nbx_deployment_arm_of(d, (nbx_sv){ids[i], lens[i]});
        per_call[r] = (now_ns() - t0) / (double)n_ids;
    }
    for (size_t i = 0; i < n_ids; i++)
        held += nbx_deployment_arm_of(d, (nbx_sv){ids[i], lens[i]}) == NBX_ARM_INDEX_HOLDOUT;
    qsort(per_call, (size_t)runs, sizeof *per_call, cmp_double);
    printf("assignment: %zu ids x %d runs, %u arms, 5%% holdout\n", n_ids, runs, arms);
    printf("  ns per assignment: median %.1f, best %.1f, worst %.1f\n", per_call[runs / 2],
           per_call[0], per_call[runs - 1]);
    printf("  held out: %.2f%% (checksum %llu)\n", 100.0 * (double)held / (double)n_ids,
           (unsigned long long)sink);
    free(ids);
    free(lens);
    nbx_deployment_unref(d);
    return 0;
}
