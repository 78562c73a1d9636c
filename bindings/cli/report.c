/*
 * report.c: experiments on the command line: the per-arm counters of `nbx
 * stats`, and `nbx report experiment` (JSON, or Markdown with an SVG chart
 * nbx draws itself: no plotting dependency).
 *
 * Names of deployments and arms are checked by the library (A-Z, a-z, 0-9,
 * '_', '.', '-'), but everything that reaches Markdown or SVG is escaped
 * all the same: a report is opened in browsers.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * nbx stats: the arms' counters
 * ======================================================================== */

typedef struct arms_out {
    FILE *out;
    bool json;
    size_t n;
} arms_out;

static void day_of(int64_t ms, char out[16])
{
    char t[NBX_TIME_BUFSZ];
    if (nbx_time_format(ms, t) != NBX_OK)
        snprintf(t, sizeof t, "?");
    snprintf(out, 16, "%.10s", t);
}

static int print_arm(void *ud, const nbx_arm_counters *c)
{
    arms_out *o = ud;
    char first[16], last[16];
    day_of(c->first_day_ms, first);
    day_of(c->last_day_ms, last);
    double rate = c->decisions ? (double)c->accepts / (double)c->decisions : NAN;
    if (o->json) {
        fprintf(o->out, "%s{\"deployment\":", o->n ? "," : "");
        cli_print_json_string(o->out, c->deployment);
        fputs(",\"arm\":", o->out);
        cli_print_json_string(o->out, c->arm);
        fprintf(o->out,
                ",\"decisions\":%" PRIu64 ",\"fallbacks\":%" PRIu64 ",\"errors\":%" PRIu64
                ",\"impressions\":%" PRIu64 ",\"accepts\":%" PRIu64 ",\"purchases\":%" PRIu64
                ",\"expected_margin\":%.17g,\"realised_margin\":%.17g,\"accept_rate\":",
                c->decisions, c->fallbacks, c->errors, c->impressions, c->accepts, c->purchases,
                c->expected_margin, c->realised_margin);
        if (isnan(rate))
            fputs("null", o->out);
        else
            fprintf(o->out, "%.17g", rate);
        fprintf(o->out, ",\"first_day\":\"%s\",\"last_day\":\"%s\"}", first, last);
    } else {
        if (o->n == 0)
            fprintf(o->out, "arms:\n  %-16s %-16s %10s %9s %6s %11s %8s %7s %9s %12s %12s  %s\n",
                    "deployment", "arm", "decisions", "fallbacks", "errors", "impressions",
                    "accepts", "accept%", "purchases", "exp.margin", "real.margin", "days");
        char pct[16] = "-";
        if (!isnan(rate))
            snprintf(pct, sizeof pct, "%.2f", 100 * rate);
        fputs("  ", o->out);
        /* names are the library's (checked), printed escaped all the same */
        cli_print_escaped(o->out, c->deployment);
        fprintf(o->out, "%*s ", (int)(strlen(c->deployment) < 16 ? 16 - strlen(c->deployment) : 0),
                "");
        cli_print_escaped(o->out, c->arm);
        fprintf(o->out,
                "%*s %10" PRIu64 " %9" PRIu64 " %6" PRIu64 " %11" PRIu64 " %8" PRIu64
                " %7s %9" PRIu64 " %12.2f %12.2f  %s..%s\n",
                (int)(strlen(c->arm) < 16 ? 16 - strlen(c->arm) : 0), "", c->decisions,
                c->fallbacks, c->errors, c->impressions, c->accepts, pct, c->purchases,
                c->expected_margin, c->realised_margin, first, last);
    }
    o->n++;
    return 0;
}

int cli_print_arm_counters(cli_args *args, nbx_store *store, FILE *out, bool json)
{
    arms_out o = {.out = out, .json = json};
    if (json)
        fputs("[", out);
    int rc = nbx_arm_counters_read(store, NULL, 0, 0, print_arm, &o);
    if (json)
        fputs("]", out);
    else if (rc == NBX_OK && o.n == 0)
        fputs("arms:           none counted\n", out);
    return rc == NBX_OK ? CLI_OK : cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
}

/* ========================================================================
 * nbx report experiment: Markdown and SVG
 * ======================================================================== */

/* Markdown: the characters that can open markup or HTML inside a line
 * are backslash-escaped (CommonMark lets any ASCII punctuation be);
 * controls never reach the page. */
static void md_text(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            fprintf(out, "\\x%02x", *p);
        else if (strchr("\\`*_{}[]()#+!|<>&~", *p))
            fprintf(out, "\\%c", *p);
        else
            putc(*p, out);
    }
}

/* XML text and attribute values. */
static void xml_text(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '&':
            fputs("&amp;", out);
            break;
        case '<':
            fputs("&lt;", out);
            break;
        case '>':
            fputs("&gt;", out);
            break;
        case '"':
            fputs("&quot;", out);
            break;
        case '\'':
            fputs("&#39;", out);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(out, "&#x%x;", *p);
            else
                putc(*p, out);
        }
    }
}

static void number(char *out, size_t n, double v, const char *fmt)
{
    if (isnan(v) || isinf(v))
        snprintf(out, n, "–");
    else
        snprintf(out, n, fmt, v);
}

/* The uplift chart: one row per arm, its estimate as a dot on its 95 %
 * interval, a line at zero (the holdout). */
#define SVG_W 640
#define SVG_LABEL 150
#define SVG_ROW 34
#define SVG_TOP 40
#define SVG_BOTTOM 40

static void svg_chart(FILE *out, const nbx_report *r, const char *deployment)
{
    size_t n = nbx_report_arm_count(r);
    double lo = 0, hi = 0;
    size_t rows = 0;
    for (size_t i = 1; i < n; i++) {
        const nbx_report_arm *a = nbx_report_arm_at(r, i);
        rows++;
        if (!a->has_uplift)
            continue;
        lo = fmin(lo, a->uplift_low);
        hi = fmax(hi, a->uplift_high);
    }
    if (hi - lo < 1e-9) {
        lo -= 1;
        hi += 1;
    }
    double pad = (hi - lo) * 0.08;
    lo -= pad;
    hi += pad;
    int height = SVG_TOP + (int)rows * SVG_ROW + SVG_BOTTOM;
    int x0 = SVG_LABEL, x1 = SVG_W - 20;
#define X(v) (x0 + ((v)-lo) / (hi - lo) * (x1 - x0))
    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"13\" role=\"img\">\n",
            SVG_W, height, SVG_W, height);
    fputs("<title>", out);
    xml_text(out, "Uplift over the holdout: ");
    xml_text(out, deployment);
    fputs("</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n", out);
    fprintf(out,
            "<text x=\"%d\" y=\"22\" font-weight=\"bold\">Margin per customer over the holdout, "
            "95 %% interval</text>\n",
            x0);
    int axis_y = SVG_TOP + (int)rows * SVG_ROW;
    fprintf(out, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#444\"/>\n", x0, axis_y,
            x1, axis_y);
    for (int k = 0; k <= 4; k++) {
        double v = lo + (hi - lo) * k / 4;
        char label[32];
        number(label, sizeof label, v, "%.2f");
        fprintf(out,
                "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#444\"/>"
                "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">",
                X(v), axis_y, X(v), axis_y + 5, X(v), axis_y + 20);
        xml_text(out, label);
        fputs("</text>\n", out);
    }
    fprintf(out,
            "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#999\" "
            "stroke-dasharray=\"4 3\"/>\n",
            X(0.0), SVG_TOP - 6, X(0.0), axis_y);
    size_t row = 0;
    for (size_t i = 1; i < n; i++, row++) {
        const nbx_report_arm *a = nbx_report_arm_at(r, i);
        int y = SVG_TOP + (int)row * SVG_ROW + SVG_ROW / 2;
        fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", x0 - 10, y + 4);
        xml_text(out, a->name);
        fputs("</text>\n", out);
        if (!a->has_uplift) {
            fprintf(out,
                    "<text x=\"%d\" y=\"%d\" fill=\"#777\">no interval (too few customers)"
                    "</text>\n",
                    x0 + 8, y + 4);
            continue;
        }
        const char *colour = a->uplift_low > 0    ? "#1a7f37"
                             : a->uplift_high < 0 ? "#cf222e"
                                                  : "#555";
        fprintf(out,
                "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" "
                "stroke-width=\"3\"/>\n<circle cx=\"%.1f\" cy=\"%d\" r=\"5\" fill=\"%s\"/>\n",
                X(a->uplift_low), y, X(a->uplift_high), y, colour, X(a->uplift), y, colour);
    }
#undef X
    fputs("</svg>\n", out);
}

static void md_table(FILE *out, const nbx_report *r)
{
    fputs("| arm | customers | decisions | impressions | accepts | accept rate | purchases | "
          "margin per customer | uplift over holdout (95 % interval) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
          out);
    for (size_t i = 0; i < nbx_report_arm_count(r); i++) {
        const nbx_report_arm *a = nbx_report_arm_at(r, i);
        char rate[32], mpc[32], up[32], low[32], high[32];
        number(rate, sizeof rate, 100 * a->accept_rate, "%.2f %%");
        number(mpc, sizeof mpc, a->margin_per_customer, "%.2f");
        fputs("| ", out);
        md_text(out, a->name);
        fprintf(out,
                " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %s | %" PRIu64
                " | %s | ",
                a->customers, a->decisions, a->impressions, a->accepts, rate, a->purchases, mpc);
        if (i == 0) {
            fputs("(reference) |\n", out);
        } else if (!a->has_uplift) {
            fputs("– (too few customers) |\n", out);
        } else {
            number(up, sizeof up, a->uplift, "%+.2f");
            number(low, sizeof low, a->uplift_low, "%+.2f");
            number(high, sizeof high, a->uplift_high, "%+.2f");
            fprintf(out, "%s (%s to %s) |\n", up, low, high);
        }
    }
}

static void write_markdown(FILE *out, const nbx_report *r, const nbx_deployment *d, int64_t from,
                           int64_t to, const char *svg_link)
{
    char f[NBX_TIME_BUFSZ], t[NBX_TIME_BUFSZ];
    nbx_time_format(from, f);
    nbx_time_format(to, t);
    fputs("# Experiment report: ", out);
    md_text(out, nbx_deployment_name(d));
    fputs("\n\nDeployment ", out);
    md_text(out, nbx_deployment_name(d));
    /* inside a code span nothing is markup; the version is hex digits */
    fprintf(out, " (version `%s`), purchases from ", nbx_deployment_version(d));
    md_text(out, f);
    fputs(" to ", out);
    md_text(out, t);
    fputs(" (the end excluded).\n\n", out);
    md_table(out, r);
    uint64_t without = 0;
    for (size_t i = 0; i < nbx_report_arm_count(r); i++)
        without += nbx_report_arm_at(r, i)->purchases_without_margin;
    fputs("\n", out);
    if (svg_link) {
        fputs("![Margin per customer over the holdout, 95 % interval](", out);
        /* a relative link to the file beside this one: its name percent-encoded */
        for (const unsigned char *p = (const unsigned char *)svg_link; *p; p++)
            if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                strchr("-_.~", *p))
                putc(*p, out);
            else
                fprintf(out, "%%%02X", *p);
        fputs(")\n\n", out);
    } else {
        svg_chart(out, r, nbx_deployment_name(d));
        fputs("\n", out);
    }
    fputs("**Method.** Intent-to-treat: every customer of the store counts in the arm the "
          "deployment assigns it, whether it was decided for or not; its outcome is the "
          "contribution margin (`margin`) of its purchase events in the window, 0 without any. "
          "The uplift is the arm's mean margin per customer less the holdout's, with a 95 % "
          "interval by Welch's t (unequal variances, Welch–Satterthwaite degrees of freedom). "
          "Decisions, impressions and accepts are the arms' counters of the UTC days the window "
          "touches; the accept rate is accepts / decisions.\n",
          out);
    if (without)
        fprintf(out,
                "\n%" PRIu64 " purchase%s without `margin` counted 0: their contribution is "
                "unknown.\n",
                without, without == 1 ? "" : "s");
}

/* FILE.md -> FILE.svg, else FILE.svg appended; and the link from FILE to
 * it: its name alone (the two files sit side by side). */
static char *svg_path_for(const char *md_path)
{
    size_t n = strlen(md_path);
    if (n > 3 && strcmp(md_path + n - 3, ".md") == 0)
        n -= 3;
    char *p = malloc(n + 5);
    if (p) {
        memcpy(p, md_path, n);
        memcpy(p + n, ".svg", 5);
    }
    return p;
}

static int write_svg_file(cli_args *args, const char *path, const nbx_report *r,
                          const char *deployment)
{
    cli_out svg = {.path = path, .out = stdout};
    int exit_code = cli_out_open(args, &svg);
    if (exit_code != CLI_OK) {
        free(svg.final);
        return exit_code;
    }
    svg_chart(svg.out, r, deployment);
    return cli_out_close(args, &svg, ferror(svg.out) ? CLI_FAIL : CLI_OK);
}

int cli_run_report_experiment(cli_args *args)
{
    const char *deployment_path = cli_string(args, "deployment", NULL);
    const char *format = cli_string(args, "format", "markdown");
    if (!cli_store_path(args))
        return CLI_USAGE;
    if (!deployment_path)
        return cli_usage_error(args->cmd, "--deployment FILE is required");
    if (!cli_has(args, "from") || !cli_has(args, "to"))
        return cli_usage_error(args->cmd, "--from TIME and --to TIME are required");
    bool json = strcmp(format, "json") == 0;
    if (!json && strcmp(format, "markdown") != 0)
        return cli_usage_error(args->cmd, "--format: '%s' is not markdown or json", format);
    int64_t from = cli_time(args, "from", 0), to = cli_time(args, "to", 0);
    if (from >= to)
        return cli_usage_error(args->cmd, "--from must be before --to");
    if (from < 0)
        return cli_usage_error(args->cmd, "--from must be after 1970-01-01T00:00:00Z");

    nbx_deployment *d = NULL;
    int rc = nbx_deployment_open(deployment_path, NBX_DEPLOYMENT_NO_POLICIES, &d);
    if (rc != NBX_OK)
        return cli_check_failed(args, rc, deployment_path);
    int exit_code;
    nbx_store *store = cli_open_store(args, NBX_STORE_READONLY, &exit_code);
    nbx_report *r = NULL;
    if (store && (rc = nbx_report_experiment(store, d, from, to, &r)) != NBX_OK)
        exit_code = cli_nbx_error(args->cmd, rc, nbx_store_errmsg(store));
    cli_out target = {.path = cli_string(args, "out", NULL), .out = stdout};
    if (r && target.path && (exit_code = cli_out_open(args, &target)) != CLI_OK) {
        free(target.final);
        target.path = NULL;
        nbx_report_close(r);
        r = NULL;
    }
    if (r) {
        char *svg = NULL;
        if (json) {
            size_t len;
            const char *text = nbx_report_json(r, &len);
            fwrite(text, 1, len, target.out);
            putc('\n', target.out);
        } else if (target.path && !(svg = svg_path_for(target.path))) {
            exit_code = cli_error(args->cmd, "out of memory");
        } else {
            const char *slash = svg ? strrchr(svg, '/') : NULL;
            write_markdown(target.out, r, d, from, to, svg ? (slash ? slash + 1 : svg) : NULL);
            if (svg)
                exit_code = write_svg_file(args, svg, r, nbx_deployment_name(d));
        }
        if (ferror(target.out) && exit_code == CLI_OK)
            exit_code = cli_error(args->cmd, "writing %s: %s",
                                  target.path ? target.path : "standard output", strerror(errno));
        if (target.path)
            exit_code = cli_out_close(args, &target, exit_code);
        else if (fflush(stdout) != 0 && exit_code == CLI_OK)
            exit_code = cli_error(args->cmd, "writing standard output: %s", strerror(errno));
        if (exit_code == CLI_OK && target.path)
            fprintf(stderr, "%s%s%s\n", target.path, svg ? ", " : "", svg ? svg : "");
        free(svg);
    }
    nbx_report_close(r);
    nbx_store_close(store);
    nbx_deployment_close(d);
    return exit_code;
}
