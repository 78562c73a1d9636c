/*
 * svg.c: the charts of `nbx policy diff`'s report, drawn by nbx as SVG (a
 * text format every browser and code host shows), so a report needs no
 * plotting package. Offer ids and names are written through cli_print_xml:
 * a catalog's text cannot add elements or scripts to the picture.
 */
#include "diff.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHART_WIDTH 760
#define LABEL_WIDTH 240
#define BAR_AREA (CHART_WIDTH - LABEL_WIDTH - 80)
#define OFFERS_SHOWN 30
#define OLD_COLOUR "#9e9e9e"
#define NEW_COLOUR "#1f6fb2"
#define GAIN_COLOUR "#2e7d32"
#define LOSS_COLOUR "#c62828"

static void header(FILE *f, int height, const char *title)
{
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">%s</text>\n",
            CHART_WIDTH, height, CHART_WIDTH, height, title);
}

/* A label cut to fit, written as XML text. */
static void label(FILE *f, double y, const char *text)
{
    char cut[40];
    size_t n = strlen(text);
    if (n >= sizeof cut) {
        /* cut at a character boundary, then mark the cut */
        size_t at = 0;
        while (at < sizeof cut - 4) {
            bool plain;
            size_t u = cli_text_unit((const unsigned char *)text + at, &plain);
            if (at + u > sizeof cut - 4)
                break;
            at += u;
        }
        memcpy(cut, text, at);
        memcpy(cut + at, "...", 4);
        text = cut;
    }
    fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">", LABEL_WIDTH - 6, y);
    cli_print_xml(f, text);
    fputs("</text>\n", f);
}

static int finish(FILE *f)
{
    fputs("</svg>\n", f);
    bool bad = ferror(f) != 0;
    int saved = errno;
    if (fclose(f) != 0 || bad) {
        errno = bad ? (saved ? saved : EIO) : errno;
        return -1;
    }
    return 0;
}

int diff_svg_offers(const char *path, const diff *d)
{
    const diff_count **v = diff_sorted(&d->offers);
    if (!v)
        return -1;
    size_t n = d->offers.n < OFFERS_SHOWN ? d->offers.n : OFFERS_SHOWN;
    double customers = d->customers ? (double)d->customers : 1, top = 0;
    for (size_t i = 0; i < n; i++)
        top = fmax(top, fmax((double)v[i]->n[0], (double)v[i]->n[1]) / customers);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(v);
        return -1;
    }
    int row = 30, height = 70 + (int)n * row;
    header(f, height,
           d->offers.n > OFFERS_SHOWN ? "Offer shares, old vs new (the 30 that moved most)"
                                      : "Offer shares, old vs new");
    fprintf(f,
            "<rect x=\"%d\" y=\"30\" width=\"12\" height=\"10\" fill=\"" OLD_COLOUR "\"/>"
            "<text x=\"%d\" y=\"39\">old</text>"
            "<rect x=\"%d\" y=\"30\" width=\"12\" height=\"10\" fill=\"" NEW_COLOUR "\"/>"
            "<text x=\"%d\" y=\"39\">new (share of customers shown the offer)</text>\n",
            LABEL_WIDTH, LABEL_WIDTH + 16, LABEL_WIDTH + 60, LABEL_WIDTH + 76);
    for (size_t i = 0; i < n; i++) {
        double y = 50 + (double)i * row;
        const char *name = json_string_value(json_object_get(d->offer_names, v[i]->key));
        char text[160];
        snprintf(text, sizeof text, "%s%s%s", v[i]->key, name ? " " : "", name ? name : "");
        label(f, y + 15, text);
        for (int s = 0; s < 2; s++) {
            double share = (double)v[i]->n[s] / customers;
            double w = top > 0 ? BAR_AREA * share / top : 0;
            fprintf(f,
                    "<rect x=\"%d\" y=\"%.1f\" width=\"%.1f\" height=\"11\" fill=\"%s\"/>"
                    "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">%.1f %%</text>\n",
                    LABEL_WIDTH, y + 2 + s * 12, w, s ? NEW_COLOUR : OLD_COLOUR,
                    LABEL_WIDTH + w + 4, y + 11 + s * 12, 100 * share);
        }
    }
    free(v);
    return finish(f);
}

int diff_svg_segments(const char *path, const diff *d)
{
    int shown = 0;
    double top = 0;
    for (int s = 0; s < NBX_SEGMENT_COUNT; s++)
        if (d->segments[s].customers) {
            shown++;
            top = fmax(top, fabs(d->segments[s].margin[1] - d->segments[s].margin[0]));
        }
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int row = 24, height = 60 + shown * row;
    header(f, height, "Expected margin change per RFM segment (new - old)");
    double axis = LABEL_WIDTH + BAR_AREA / 2.0, half = BAR_AREA / 2.0 - 10;
    fprintf(f,
            "<line x1=\"%.1f\" y1=\"32\" x2=\"%.1f\" y2=\"%d\" stroke=\"#444\" "
            "stroke-width=\"1\"/>\n",
            axis, axis, height - 10);
    int i = 0;
    for (int s = 0; s < NBX_SEGMENT_COUNT; s++) {
        const diff_segment *g = &d->segments[s];
        if (!g->customers)
            continue;
        double y = 38 + (double)i++ * row, change = g->margin[1] - g->margin[0];
        double w = top > 0 ? half * fabs(change) / top : 0;
        char value[48];
        cli_format_number(value, sizeof value, change);
        label(f, y + 13, nbx_segment_name(s));
        fprintf(f,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"16\" fill=\"%s\"/>"
                "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"%s\">%s%s</text>\n",
                change < 0 ? axis - w : axis, y, w, change < 0 ? LOSS_COLOUR : GAIN_COLOUR,
                change < 0 ? axis - w - 4 : axis + w + 4, y + 12, change < 0 ? "end" : "start",
                change > 0 ? "+" : "", value);
    }
    return finish(f);
}
