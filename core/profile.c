/*
 * profile.c: profiles as JSON (parse, print), merge rules, lookups, and the
 * public calls that read profiles (nbx_profile_get, the iterator). Writing
 * one (nbx_profile_put) is a profile import: effects.c.
 *
 * Merge rules (docs/data-model.md): a field given replaces the stored one, an
 * absent field stays. Maps (attrs, consent, propensity) merge per key: a key
 * given replaces, a key given as null is removed, other keys stay. rfm
 * merges per sub-field. ltv or churn given as null is cleared.
 */
#include "nbx_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ========================================================================
 * Parsing
 * ======================================================================== */

typedef struct parser {
    nbx_jr r;
    nbx_arena *a;
    nbx_err *e;
} parser;

static int jerr(parser *p, const char *field)
{
    return nbx_err_set(p->e, NBX_EPARSE, "field '%s': %s", field, p->r.err);
}

static int field_err(parser *p, const char *map, nbx_sv key, const char *problem)
{
    return nbx_err_set(p->e, NBX_EPARSE, "field '%s.%.*s': %s", map,
                       (int)(key.len > 64 ? 64 : key.len), key.ptr, problem);
}

/* A string value the reader refused: say why (invalid UTF-8, a NUL byte, a
 * bad escape), not that it is not a string. The reader stops on the byte it
 * refused. */
static int string_err(parser *p, const char *field)
{
    if (p->r.p < p->r.end && *p->r.p == '\0')
        return nbx_err_set(p->e, NBX_EPARSE, "field '%s': contains a NUL byte", field);
    return jerr(p, field);
}

/* Read a string value; *out on success. */
static int read_string(parser *p, const char *field, nbx_sv *out)
{
    if (nbx_jr_peek(&p->r) != NBX_J_STRING)
        return nbx_err_set(p->e, NBX_EPARSE, "field '%s': must be a string", field);
    return nbx_jr_string(&p->r, out) ? NBX_OK : string_err(p, field);
}

/* Objects with fixed fields keep a bit per field seen: a key given twice is
 * refused, as in the maps, rather than the last one silently winning. */
static int seen_once(parser *p, uint32_t *seen, uint32_t bit, const char *field)
{
    if (*seen & bit)
        return nbx_err_set(p->e, NBX_EPARSE, "duplicate key '%s'", field);
    *seen |= bit;
    return NBX_OK;
}

static int cmp_attr(const void *a, const void *b)
{
    return nbx_sv_cmp(((const nbx_attr *)a)->key, ((const nbx_attr *)b)->key);
}
static int cmp_consent(const void *a, const void *b)
{
    return nbx_sv_cmp(((const nbx_consent *)a)->purpose, ((const nbx_consent *)b)->purpose);
}
static int cmp_prop(const void *a, const void *b)
{
    return nbx_sv_cmp(((const nbx_prop *)a)->key, ((const nbx_prop *)b)->key);
}

/* Maps are small (tens of keys) and mostly in order: an insertion sort that
 * finds each out-of-order entry's place by bisection does one comparison
 * per entry in order and a few per entry out of place, where qsort's merge
 * sort copies and calls through a pointer every time (it was a third of the
 * parse time of a 20-key map). Large maps keep qsort's O(n log n). */
static void sort_entries(char *arr, uint32_t n, size_t size, int (*cmp)(const void *, const void *))
{
    if (n > 64) {
        qsort(arr, n, size, cmp);
        return;
    }
    max_align_t tmp[4]; /* 64 bytes: the largest entry (nbx_attr) is 48 */
    for (uint32_t i = 1; i < n; i++) {
        char *cur = arr + i * size;
        if (cmp(cur - size, cur) <= 0)
            continue;
        memcpy(tmp, cur, size);
        /* first position in [0, i - 1) whose entry sorts after tmp */
        uint32_t lo = 0, hi = i - 1;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (cmp(arr + mid * size, tmp) > 0)
                hi = mid;
            else
                lo = mid + 1;
        }
        memmove(arr + (lo + 1) * size, arr + lo * size, (i - lo) * size);
        memcpy(arr + lo * size, tmp, size);
    }
}

/* Read one map of key -> value with a per-entry callback; entries land in a
 * growing arena array of elem_size bytes, sorted afterwards. */
typedef int (*entry_fn)(parser *p, const char *map, nbx_sv key, void *elem);

static int read_map(parser *p, const char *map, size_t elem_size, entry_fn fn,
                    int (*cmp)(const void *, const void *), void **out, uint32_t *count)
{
    if (nbx_jr_peek(&p->r) != NBX_J_OBJECT)
        return nbx_err_set(p->e, NBX_EPARSE, "field '%s': must be an object", map);
    if (!nbx_jr_object_begin(&p->r))
        return jerr(p, map);
    uint32_t cap = 16, n = 0;
    char *arr = nbx_arena_alloc(p->a, cap * elem_size);
    if (!arr)
        return nbx_err_set(p->e, NBX_ENOMEM, "out of memory");
    nbx_sv key;
    int more;
    while ((more = nbx_jr_object_next(&p->r, &key)) == 1) {
        if (key.len == 0 || key.len > NBX_KEY_MAX)
            return field_err(p, map, key, "keys must be 1 to 256 bytes");
        if (n == NBX_MAP_MAX)
            return nbx_err_set(p->e, NBX_ELIMIT, "field '%s': more than %d entries", map,
                               NBX_MAP_MAX);
        if (n == cap) {
            char *bigger = nbx_arena_alloc(p->a, 2 * cap * elem_size);
            if (!bigger)
                return nbx_err_set(p->e, NBX_ENOMEM, "out of memory");
            memcpy(bigger, arr, cap * elem_size);
            arr = bigger;
            cap *= 2;
        }
        int rc = fn(p, map, key, arr + n * elem_size);
        if (rc)
            return rc;
        n++;
    }
    if (more < 0)
        return jerr(p, map);
    sort_entries(arr, n, elem_size, cmp);
    for (uint32_t i = 1; i < n; i++)
        if (cmp(arr + (i - 1) * elem_size, arr + i * elem_size) == 0) {
            /* every element type starts with its key */
            return field_err(p, map, *(nbx_sv *)(void *)(arr + i * elem_size), "duplicate key");
        }
    *out = arr;
    *count = n;
    return NBX_OK;
}

static int attr_entry(parser *p, const char *map, nbx_sv key, void *elem)
{
    nbx_attr *a = elem;
    memset(a, 0, sizeof *a);
    a->key = key;
    switch (nbx_jr_peek(&p->r)) {
    case NBX_J_STRING:
        a->type = NBX_ATTR_STRING;
        if (!nbx_jr_string(&p->r, &a->string))
            return string_err(p, map);
        if (a->string.len > NBX_VALUE_MAX)
            return field_err(p, map, key, "string longer than 4096 bytes");
        return NBX_OK;
    case NBX_J_NUMBER:
        a->type = NBX_ATTR_NUMBER;
        return nbx_jr_number(&p->r, &a->number) ? NBX_OK : jerr(p, map);
    case NBX_J_TRUE:
    case NBX_J_FALSE:
        a->type = NBX_ATTR_BOOL;
        return nbx_jr_bool(&p->r, &a->boolean) ? NBX_OK : jerr(p, map);
    case NBX_J_NULL:
        a->type = 0; /* delete */
        return nbx_jr_null(&p->r) ? NBX_OK : jerr(p, map);
    default:
        return field_err(p, map, key, "must be a string, number, boolean or null");
    }
}

static int consent_entry(parser *p, const char *map, nbx_sv key, void *elem)
{
    nbx_consent *c = elem;
    c->purpose = key;
    nbx_jtype t = nbx_jr_peek(&p->r);
    if (t == NBX_J_NULL) {
        c->state = 2;
        return nbx_jr_null(&p->r) ? NBX_OK : jerr(p, map);
    }
    if (t != NBX_J_TRUE && t != NBX_J_FALSE)
        return field_err(p, map, key, "must be true, false or null");
    bool b;
    if (!nbx_jr_bool(&p->r, &b))
        return jerr(p, map);
    c->state = b;
    return NBX_OK;
}

static int prop_entry(parser *p, const char *map, nbx_sv key, void *elem)
{
    nbx_prop *pr = elem;
    pr->key = key;
    nbx_jtype t = nbx_jr_peek(&p->r);
    if (t == NBX_J_NULL) {
        pr->value = NAN;
        return nbx_jr_null(&p->r) ? NBX_OK : jerr(p, map);
    }
    if (t != NBX_J_NUMBER)
        return field_err(p, map, key, "must be a number in [0, 1] or null");
    if (!nbx_jr_number(&p->r, &pr->value))
        return jerr(p, map);
    if (pr->value < 0 || pr->value > 1) {
        char msg[64];
        snprintf(msg, sizeof msg, "%g is outside [0, 1]", pr->value);
        return field_err(p, map, key, msg);
    }
    return NBX_OK;
}

/* A number or null; *given tells which. */
static int read_number_or_null(parser *p, const char *field, double lo, double hi, double *out,
                               bool *is_null)
{
    nbx_jtype t = nbx_jr_peek(&p->r);
    *is_null = t == NBX_J_NULL;
    if (*is_null)
        return nbx_jr_null(&p->r) ? NBX_OK : jerr(p, field);
    if (t != NBX_J_NUMBER)
        return nbx_err_set(p->e, NBX_EPARSE, "field '%s': must be a number", field);
    if (!nbx_jr_number(&p->r, out))
        return jerr(p, field);
    if (*out < lo || *out > hi)
        return nbx_err_set(p->e, NBX_EPARSE, "field '%s': %g is outside [%g, %g]", field, *out, lo,
                           hi);
    return NBX_OK;
}

/* RFC 3339 string or epoch seconds; null gives 0 ("none"). */
static int read_time(parser *p, const char *field, int64_t *out)
{
    nbx_jtype t = nbx_jr_peek(&p->r);
    if (t == NBX_J_NULL) {
        *out = 0;
        return nbx_jr_null(&p->r) ? NBX_OK : jerr(p, field);
    }
    if (t == NBX_J_NUMBER) {
        double secs;
        if (!nbx_jr_number(&p->r, &secs))
            return jerr(p, field);
        if (nbx_time_from_secs(secs, out) != NBX_OK)
            return nbx_err_set(p->e, NBX_EPARSE,
                               "field '%s': not a time in epoch seconds (years 0001 to 9999): %g",
                               field, secs);
        return NBX_OK;
    }
    nbx_sv s;
    if (t == NBX_J_STRING && !nbx_jr_string(&p->r, &s))
        return string_err(p, field);
    if (t != NBX_J_STRING || nbx_time_parse_n(s.ptr, s.len, out) != NBX_OK)
        return nbx_err_set(p->e, NBX_EPARSE,
                           "field '%s': must be an RFC 3339 time or epoch seconds", field);
    return NBX_OK;
}

/* 1 to 5, or null. 0 is how the store writes "none", so a 0 given would be
 * read back as null: it is refused, not silently changed. */
static int read_score(parser *p, const char *field, uint8_t *out)
{
    double v;
    bool is_null;
    nbx_jtype t = nbx_jr_peek(&p->r);
    if (t != NBX_J_NUMBER && t != NBX_J_NULL)
        return nbx_err_set(p->e, NBX_EPARSE, "field '%s': must be an integer from 1 to 5 or null",
                           field);
    int rc = read_number_or_null(p, field, -INFINITY, INFINITY, &v, &is_null);
    if (rc)
        return rc;
    if (!is_null && (v < 1 || v > 5 || v != floor(v)))
        return nbx_err_set(p->e, NBX_EPARSE, "field '%s': %g is not an integer from 1 to 5", field,
                           v);
    *out = is_null ? 0 : (uint8_t)v;
    return NBX_OK;
}

static int read_rfm(parser *p, nbx_profile *out)
{
    if (nbx_jr_peek(&p->r) != NBX_J_OBJECT)
        return nbx_err_set(p->e, NBX_EPARSE, "field 'rfm': must be an object");
    if (!nbx_jr_object_begin(&p->r))
        return jerr(p, "rfm");
    nbx_rfm *r = &out->rfm;
    nbx_sv key;
    int more = 0, rc = NBX_OK;
    uint32_t seen = 0;
    bool is_null;
    double d;
    while (rc == NBX_OK && (more = nbx_jr_object_next(&p->r, &key)) == 1) {
        if (nbx_sv_eq_cstr(key, "first_purchase")) {
            if ((rc = seen_once(p, &seen, 1u << 0, "rfm.first_purchase")) != NBX_OK)
                continue;
            rc = read_time(p, "rfm.first_purchase", &r->first_purchase);
            out->fields |= NBX_PF_RFM_FIRST;
        } else if (nbx_sv_eq_cstr(key, "last_purchase")) {
            if ((rc = seen_once(p, &seen, 1u << 1, "rfm.last_purchase")) != NBX_OK)
                continue;
            rc = read_time(p, "rfm.last_purchase", &r->last_purchase);
            out->fields |= NBX_PF_RFM_LAST;
        } else if (nbx_sv_eq_cstr(key, "orders")) {
            if ((rc = seen_once(p, &seen, 1u << 2, "rfm.orders")) != NBX_OK)
                continue;
            rc = read_number_or_null(p, "rfm.orders", 0, 9e15, &d, &is_null);
            if (rc == NBX_OK && !is_null && d != floor(d))
                rc = nbx_err_set(p->e, NBX_EPARSE, "field 'rfm.orders': must be an integer");
            /* converted only once known to be in range: 2e74 or inf as an
             * integer is undefined behaviour */
            if (rc == NBX_OK)
                r->orders = is_null ? 0 : (uint64_t)d;
            out->fields |= NBX_PF_RFM_ORDERS;
        } else if (nbx_sv_eq_cstr(key, "revenue")) {
            if ((rc = seen_once(p, &seen, 1u << 3, "rfm.revenue")) != NBX_OK)
                continue;
            rc = read_number_or_null(p, "rfm.revenue", -1e15, 1e15, &r->revenue, &is_null);
            if (is_null)
                r->revenue = 0;
            out->fields |= NBX_PF_RFM_REVENUE;
        } else if (nbx_sv_eq_cstr(key, "margin")) {
            if ((rc = seen_once(p, &seen, 1u << 4, "rfm.margin")) != NBX_OK)
                continue;
            rc = read_number_or_null(p, "rfm.margin", -1e15, 1e15, &r->margin, &is_null);
            if (is_null)
                r->margin = 0;
            out->fields |= NBX_PF_RFM_MARGIN;
        } else if (nbx_sv_eq_cstr(key, "r")) {
            if ((rc = seen_once(p, &seen, 1u << 5, "rfm.r")) != NBX_OK)
                continue;
            rc = read_score(p, "rfm.r", &r->r);
            out->fields |= NBX_PF_RFM_SCORES;
        } else if (nbx_sv_eq_cstr(key, "f")) {
            if ((rc = seen_once(p, &seen, 1u << 6, "rfm.f")) != NBX_OK)
                continue;
            rc = read_score(p, "rfm.f", &r->f);
            out->fields |= NBX_PF_RFM_SCORES;
        } else if (nbx_sv_eq_cstr(key, "m")) {
            if ((rc = seen_once(p, &seen, 1u << 7, "rfm.m")) != NBX_OK)
                continue;
            rc = read_score(p, "rfm.m", &r->m);
            out->fields |= NBX_PF_RFM_SCORES;
        } else if (nbx_sv_eq_cstr(key, "as_of")) {
            if ((rc = seen_once(p, &seen, 1u << 9, "rfm.as_of")) != NBX_OK)
                continue;
            rc = read_time(p, "rfm.as_of", &out->rfm_base.as_of);
            out->fields |= NBX_PF_RFM_AS_OF;
        } else if (nbx_sv_eq_cstr(key, "segment")) {
            if ((rc = seen_once(p, &seen, 1u << 8, "rfm.segment")) != NBX_OK)
                continue;
            nbx_sv s;
            out->fields |= NBX_PF_RFM_SEGMENT;
            if (nbx_jr_peek(&p->r) == NBX_J_NULL) {
                r->segment = NBX_SEGMENT_NONE;
                if (!nbx_jr_null(&p->r))
                    rc = jerr(p, "rfm.segment");
                continue;
            }
            if ((rc = read_string(p, "rfm.segment", &s)) != NBX_OK)
                continue;
            int seg = -1;
            for (int i = 0; i < NBX_SEGMENT_COUNT; i++)
                if (nbx_sv_eq_cstr(s, nbx_segment_name(i)))
                    seg = i;
            if (seg < 0)
                rc = nbx_err_set(p->e, NBX_EPARSE, "field 'rfm.segment': unknown segment '%.*s'",
                                 (int)(s.len > 64 ? 64 : s.len), s.ptr);
            r->segment = (uint8_t)(seg < 0 ? 0 : seg);
        } else {
            rc = nbx_err_set(p->e, NBX_EPARSE, "field 'rfm.%.*s': unknown field",
                             (int)(key.len > 64 ? 64 : key.len), key.ptr);
        }
    }
    if (rc)
        return rc;
    if (more < 0)
        return jerr(p, "rfm");
    return NBX_OK;
}

int nbx_profile_parse(const char *json, size_t len, nbx_profile *out, nbx_arena *a, nbx_err *e)
{
    memset(out, 0, sizeof *out);
    parser p = {.a = a, .e = e};
    nbx_jr_init(&p.r, json, len, a);
    if (nbx_jr_peek(&p.r) != NBX_J_OBJECT)
        return nbx_err_set(e, NBX_EPARSE, "a profile must be a JSON object");
    if (!nbx_jr_object_begin(&p.r))
        return jerr(&p, "profile");
    nbx_sv key;
    int more = 0, rc = NBX_OK;
    uint32_t seen = 0;
    bool have_id = false, is_null;
    while (rc == NBX_OK && (more = nbx_jr_object_next(&p.r, &key)) == 1) {
        if (nbx_sv_eq_cstr(key, "id")) {
            if ((rc = seen_once(&p, &seen, 1u << 0, "id")) != NBX_OK)
                continue;
            if ((rc = read_string(&p, "id", &out->id)) == NBX_OK && !nbx_id_valid(out->id, e))
                rc = NBX_EPARSE;
            have_id = true;
        } else if (nbx_sv_eq_cstr(key, "attrs")) {
            if ((rc = seen_once(&p, &seen, 1u << 1, "attrs")) != NBX_OK)
                continue;
            rc = read_map(&p, "attrs", sizeof(nbx_attr), attr_entry, cmp_attr, (void **)&out->attrs,
                          &out->n_attrs);
            out->fields |= NBX_PF_ATTRS;
        } else if (nbx_sv_eq_cstr(key, "consent")) {
            if ((rc = seen_once(&p, &seen, 1u << 2, "consent")) != NBX_OK)
                continue;
            rc = read_map(&p, "consent", sizeof(nbx_consent), consent_entry, cmp_consent,
                          (void **)&out->consent, &out->n_consent);
            out->fields |= NBX_PF_CONSENT;
        } else if (nbx_sv_eq_cstr(key, "propensity")) {
            if ((rc = seen_once(&p, &seen, 1u << 3, "propensity")) != NBX_OK)
                continue;
            rc = read_map(&p, "propensity", sizeof(nbx_prop), prop_entry, cmp_prop,
                          (void **)&out->propensity, &out->n_propensity);
            out->fields |= NBX_PF_PROPENSITY;
        } else if (nbx_sv_eq_cstr(key, "ltv")) {
            if ((rc = seen_once(&p, &seen, 1u << 4, "ltv")) != NBX_OK)
                continue;
            rc = read_number_or_null(&p, "ltv", -1e15, 1e15, &out->ltv, &is_null);
            out->fields |= is_null ? NBX_PF_LTV_NULL : NBX_PF_LTV;
        } else if (nbx_sv_eq_cstr(key, "churn")) {
            if ((rc = seen_once(&p, &seen, 1u << 5, "churn")) != NBX_OK)
                continue;
            rc = read_number_or_null(&p, "churn", 0, 1, &out->churn, &is_null);
            out->fields |= is_null ? NBX_PF_CHURN_NULL : NBX_PF_CHURN;
        } else if (nbx_sv_eq_cstr(key, "rfm")) {
            if ((rc = seen_once(&p, &seen, 1u << 6, "rfm")) != NBX_OK)
                continue;
            rc = read_rfm(&p, out);
        } else if (nbx_sv_eq_cstr(key, "updated_at")) {
            if ((rc = seen_once(&p, &seen, 1u << 7, "updated_at")) != NBX_OK)
                continue;
            rc = read_time(&p, "updated_at", &out->updated_at);
            out->fields |= NBX_PF_UPDATED_AT;
        } else {
            rc = nbx_err_set(e, NBX_EPARSE, "field '%.*s': unknown field (see docs/data-model.md)",
                             (int)(key.len > 64 ? 64 : key.len), key.ptr);
        }
    }
    if (rc)
        return rc;
    if (more < 0 || !nbx_jr_finish(&p.r))
        return nbx_err_set(e, NBX_EPARSE, "%s", p.r.err);
    if (!have_id)
        return nbx_err_set(e, NBX_EPARSE, "field 'id': is required");
    /* Checked when the object gives both: the stored values are not known
     * here, and a merge refused at write time would stop an import half-way. */
    const nbx_rfm *r = &out->rfm;
    if ((out->fields & NBX_PF_RFM_FIRST) && (out->fields & NBX_PF_RFM_LAST) && r->first_purchase &&
        r->last_purchase && r->first_purchase > r->last_purchase)
        return nbx_err_set(e, NBX_EPARSE,
                           "field 'rfm.first_purchase': later than rfm.last_purchase");
    return NBX_OK;
}

/* ========================================================================
 * Merge
 * ======================================================================== */

/* Merge two sorted arrays of elements keyed by their leading nbx_sv: patch
 * wins, deleted(patch elem) drops the key. */
static void *merge_sorted(const void *base, uint32_t nb, const void *patch, uint32_t np,
                          size_t size, bool (*deleted)(const void *), nbx_arena *a, uint32_t *n)
{
    char *out = nbx_arena_alloc(a, (nb + np ? nb + np : 1) * size);
    if (!out)
        return NULL;
    const char *b = base, *p = patch;
    uint32_t i = 0, j = 0, k = 0;
    while (i < nb || j < np) {
        int c;
        if (i == nb)
            c = 1;
        else if (j == np)
            c = -1;
        else
            c = nbx_sv_cmp(*(const nbx_sv *)(const void *)(b + i * size),
                           *(const nbx_sv *)(const void *)(p + j * size));
        const char *take;
        if (c < 0) {
            take = b + i++ * size;
        } else {
            take = p + j++ * size;
            if (c == 0)
                i++;
            if (deleted(take))
                continue;
        }
        memcpy(out + k++ * size, take, size);
    }
    *n = k;
    return out;
}

static bool attr_deleted(const void *x)
{
    return ((const nbx_attr *)x)->type == 0;
}
static bool consent_deleted(const void *x)
{
    return ((const nbx_consent *)x)->state == 2;
}
static bool prop_deleted(const void *x)
{
    return isnan(((const nbx_prop *)x)->value);
}

static bool same_base(const nbx_rfm_base *a, const nbx_rfm_base *b)
{
    /* bitwise: a revenue of 0.1 + 0.2 is another base than 0.3 */
    return memcmp(a, b, sizeof *a) == 0;
}

/* The rfm sub-fields. Aggregates an import gives form the base (an import's
 * history as of a time), never the result directly: purchases recorded
 * after that time are added to it when it is settled (effects.c), so a file
 * imported again cannot roll back what events advanced. The base's as_of is
 * the one given, else the last_purchase given, else the base's so far. */
static void merge_rfm(const nbx_profile *base, const nbx_profile *patch, nbx_profile *out)
{
    const nbx_rfm *pr = &patch->rfm;
    nbx_rfm *r = &out->rfm;
    unsigned rf = patch->fields;
    if (rf & (NBX_PF_RFM_AGGREGATES | NBX_PF_RFM_AS_OF)) {
        nbx_rfm_base b;
        if (base->fields & NBX_PF_RFM_BASE)
            b = base->rfm_base;
        else
            memset(&b, 0, sizeof b);
        if (rf & NBX_PF_RFM_FIRST)
            b.first_purchase = pr->first_purchase;
        if (rf & NBX_PF_RFM_LAST)
            b.last_purchase = pr->last_purchase;
        if (rf & NBX_PF_RFM_ORDERS)
            b.orders = pr->orders;
        if (rf & NBX_PF_RFM_REVENUE)
            b.revenue = pr->revenue;
        if (rf & NBX_PF_RFM_MARGIN)
            b.margin = pr->margin;
        if (rf & NBX_PF_RFM_AS_OF)
            b.as_of = patch->rfm_base.as_of;
        else if ((rf & NBX_PF_RFM_LAST) && pr->last_purchase)
            b.as_of = pr->last_purchase;
        if (!(base->fields & NBX_PF_RFM_BASE) || !same_base(&b, &base->rfm_base))
            out->fields |= NBX_PF_RFM_REBASE;
        out->rfm_base = b;
        out->fields |= NBX_PF_RFM_BASE | NBX_PF_RFM;
        if (!(base->fields & NBX_PF_RFM))
            memset(r, 0, sizeof *r);
    }
    if (rf & NBX_PF_RFM_SCORES) {
        r->r = pr->r;
        r->f = pr->f;
        r->m = pr->m;
    }
    if (rf & NBX_PF_RFM_SEGMENT)
        r->segment = pr->segment;
    if (rf & (NBX_PF_RFM_SCORES | NBX_PF_RFM_SEGMENT))
        out->fields |= NBX_PF_RFM;
}

int nbx_profile_merge(const nbx_profile *base, const nbx_profile *patch, nbx_profile *out,
                      nbx_arena *a)
{
    static const nbx_profile empty = {0};
    if (!base)
        base = &empty;
    *out = *base;
    out->id = patch->id;
    out->fields = base->fields &
                  (NBX_PF_LTV | NBX_PF_CHURN | NBX_PF_RFM | NBX_PF_RFM_BASE | NBX_PF_RFM_REBASE);
    out->fields |= NBX_PF_ATTRS | NBX_PF_CONSENT | NBX_PF_PROPENSITY | NBX_PF_UPDATED_AT;
    if (patch->fields & NBX_PF_ATTRS) {
        out->attrs = merge_sorted(base->attrs, base->n_attrs, patch->attrs, patch->n_attrs,
                                  sizeof(nbx_attr), attr_deleted, a, &out->n_attrs);
        if (!out->attrs)
            return NBX_ENOMEM;
    }
    if (patch->fields & NBX_PF_CONSENT) {
        out->consent =
            merge_sorted(base->consent, base->n_consent, patch->consent, patch->n_consent,
                         sizeof(nbx_consent), consent_deleted, a, &out->n_consent);
        if (!out->consent)
            return NBX_ENOMEM;
    }
    if (patch->fields & NBX_PF_PROPENSITY) {
        out->propensity = merge_sorted(base->propensity, base->n_propensity, patch->propensity,
                                       patch->n_propensity, sizeof(nbx_prop), prop_deleted, a,
                                       &out->n_propensity);
        if (!out->propensity)
            return NBX_ENOMEM;
    }
    if (out->n_attrs > NBX_MAP_MAX || out->n_consent > NBX_MAP_MAX ||
        out->n_propensity > NBX_MAP_MAX)
        return NBX_ELIMIT;
    if (patch->fields & NBX_PF_LTV) {
        out->ltv = patch->ltv;
        out->fields |= NBX_PF_LTV;
    } else if (patch->fields & NBX_PF_LTV_NULL) {
        out->fields &= ~(unsigned)NBX_PF_LTV;
    }
    if (patch->fields & NBX_PF_CHURN) {
        out->churn = patch->churn;
        out->fields |= NBX_PF_CHURN;
    } else if (patch->fields & NBX_PF_CHURN_NULL) {
        out->fields &= ~(unsigned)NBX_PF_CHURN;
    }
    merge_rfm(base, patch, out);
    if (patch->fields & NBX_PF_UPDATED_AT)
        out->updated_at = patch->updated_at;
    return NBX_OK;
}

int nbx_profile_patch(const nbx_profile *base, const nbx_profile *patch, nbx_profile *out,
                      nbx_arena *a, nbx_err *e)
{
    int rc = nbx_profile_merge(base, patch, out, a);
    if (rc == NBX_ELIMIT)
        return nbx_err_set(e, rc, "profile '%.*s': a map would exceed %d entries",
                           (int)patch->id.len, patch->id.ptr, NBX_MAP_MAX);
    if (rc)
        return nbx_err_set(e, rc, "out of memory merging a profile");
    return NBX_OK;
}

/* ========================================================================
 * Printing and lookups
 * ======================================================================== */

/* The time the printed aggregates are complete up to, so that importing
 * the output (into this store or a new one, before the same events) counts
 * no purchase twice: an import's as_of while no purchase was counted after
 * it; else the later of that and the last purchase, which no counted one
 * is after. Printed for every profile, so that the output imported again
 * prints the same. Without it an import took the last purchase, and a
 * purchase the CRM's figures cover after that counted again. */
static int64_t printed_as_of(const nbx_profile *p)
{
    if (!(p->fields & NBX_PF_RFM_BASE))
        return p->rfm.last_purchase;
    int64_t as_of = p->rfm_base.as_of;
    if (nbx_rfm_base_is_aggregates(p) || p->rfm.last_purchase < as_of)
        return as_of;
    return p->rfm.last_purchase;
}

void nbx_profile_to_json(const nbx_profile *p, nbx_buf *b)
{
    nbx_buf_puts(b, "{\"id\":");
    nbx_jw_sv(b, p->id);
    nbx_buf_puts(b, ",\"attrs\":{");
    for (uint32_t i = 0; i < p->n_attrs; i++) {
        const nbx_attr *a = &p->attrs[i];
        if (i)
            nbx_buf_putc(b, ',');
        nbx_jw_sv(b, a->key);
        nbx_buf_putc(b, ':');
        if (a->type == NBX_ATTR_STRING)
            nbx_jw_sv(b, a->string);
        else if (a->type == NBX_ATTR_BOOL)
            nbx_buf_puts(b, a->boolean ? "true" : "false");
        else
            nbx_jw_number(b, a->number);
    }
    nbx_buf_puts(b, "},\"consent\":{");
    for (uint32_t i = 0; i < p->n_consent; i++) {
        if (i)
            nbx_buf_putc(b, ',');
        nbx_jw_sv(b, p->consent[i].purpose);
        nbx_buf_puts(b, p->consent[i].state ? ":true" : ":false");
    }
    nbx_buf_puts(b, "},\"propensity\":{");
    for (uint32_t i = 0; i < p->n_propensity; i++) {
        if (i)
            nbx_buf_putc(b, ',');
        nbx_jw_sv(b, p->propensity[i].key);
        nbx_buf_putc(b, ':');
        nbx_jw_number(b, p->propensity[i].value);
    }
    nbx_buf_putc(b, '}');
    if (p->fields & NBX_PF_LTV) {
        nbx_buf_puts(b, ",\"ltv\":");
        nbx_jw_number(b, p->ltv);
    }
    if (p->fields & NBX_PF_CHURN) {
        nbx_buf_puts(b, ",\"churn\":");
        nbx_jw_number(b, p->churn);
    }
    if (p->fields & NBX_PF_RFM) {
        const nbx_rfm *r = &p->rfm;
        nbx_buf_puts(b, ",\"rfm\":{\"first_purchase\":");
        if (r->first_purchase)
            nbx_jw_time(b, r->first_purchase);
        else
            nbx_buf_puts(b, "null");
        nbx_buf_puts(b, ",\"last_purchase\":");
        if (r->last_purchase)
            nbx_jw_time(b, r->last_purchase);
        else
            nbx_buf_puts(b, "null");
        nbx_buf_printf(b, ",\"orders\":%llu,\"revenue\":", (unsigned long long)r->orders);
        nbx_jw_number(b, r->revenue);
        nbx_buf_puts(b, ",\"margin\":");
        nbx_jw_number(b, r->margin);
        const uint8_t scores[3] = {r->r, r->f, r->m};
        const char *names[3] = {"r", "f", "m"};
        for (int i = 0; i < 3; i++) {
            if (scores[i])
                nbx_buf_printf(b, ",\"%s\":%u", names[i], scores[i]);
            else
                nbx_buf_printf(b, ",\"%s\":null", names[i]);
        }
        nbx_buf_puts(b, ",\"segment\":");
        if (r->segment)
            nbx_jw_string(b, nbx_segment_name(r->segment), strlen(nbx_segment_name(r->segment)));
        else
            nbx_buf_puts(b, "null");
        int64_t as_of = printed_as_of(p);
        nbx_buf_puts(b, ",\"as_of\":");
        if (as_of)
            nbx_jw_time(b, as_of);
        else
            nbx_buf_puts(b, "null");
        nbx_buf_putc(b, '}');
    }
    nbx_buf_puts(b, ",\"updated_at\":");
    nbx_jw_time(b, p->updated_at);
    nbx_buf_putc(b, '}');
}

/* Bisect an array whose elements start with an nbx_sv key. */
static const void *bisect(const void *arr, uint32_t n, size_t size, nbx_sv key)
{
    const char *base = arr;
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const char *elem = base + mid * size;
        int c = nbx_sv_cmp(*(const nbx_sv *)(const void *)elem, key);
        if (c == 0)
            return elem;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const nbx_prop *nbx_profile_propensity(const nbx_profile *p, nbx_sv key)
{
    return bisect(p->propensity, p->n_propensity, sizeof(nbx_prop), key);
}

const nbx_consent *nbx_profile_consent(const nbx_profile *p, nbx_sv purpose)
{
    return bisect(p->consent, p->n_consent, sizeof(nbx_consent), purpose);
}

const nbx_attr *nbx_profile_attr(const nbx_profile *p, nbx_sv key)
{
    return bisect(p->attrs, p->n_attrs, sizeof(nbx_attr), key);
}

/* ========================================================================
 * Public calls
 * ======================================================================== */

NBX_API int nbx_profile_get(nbx_store *store, const char *id, char **json, size_t *len)
{
    if (json)
        *json = NULL;
    if (!store || !id || !json)
        return nbx_fail(store, NBX_EINVAL, "nbx_profile_get: NULL argument");
    nbx_err e = {0};
    nbx_sv sid = nbx_sv_of(id);
    if (!nbx_id_valid(sid, &e))
        return nbx_publish(store, &e);
    MDB_txn *txn = NULL;
    nbx_arena arena = {0};
    nbx_buf out = {0};
    nbx_profile p = {.id = sid};
    int rc = nbx_store_read_begin(store, &txn, &e);
    if (rc == NBX_OK)
        rc = nbx_store_profile_get(store, txn, sid, &p, &arena, &e);
    if (rc == NBX_ENOTFOUND)
        nbx_err_set(&e, rc, "no profile '%s'", id);
    if (rc == NBX_OK) {
        nbx_profile_to_json(&p, &out);
        nbx_buf_terminate(&out);
        if (out.oom)
            rc = nbx_err_set(&e, NBX_ENOMEM, "out of memory");
    }
    mdb_txn_abort(txn);
    nbx_arena_free(&arena);
    if (rc) {
        nbx_buf_free(&out);
        return nbx_publish(store, &e);
    }
    *json = out.data;
    if (len)
        *len = out.len;
    return NBX_OK;
}

/* ========================================================================
 * Iteration
 * ======================================================================== */

/* Records between snapshot renewals: a scan of millions must not pin one
 * snapshot (and old pages) for its whole duration. */
#define NBX_ITER_RENEW 4096

struct nbx_iter {
    nbx_store *store;
    unsigned flags;
    MDB_txn *txn;
    MDB_cursor *cur;
    bool positioned; /* the cursor is on it->id */
    bool done;
    uint32_t since_renew;
    char id[NBX_ID_MAX + 1];
    size_t id_len;
    nbx_buf json;
    nbx_arena arena;
};

NBX_API int nbx_iter_open(nbx_store *s, unsigned flags, const char *after, nbx_iter **out)
{
    if (out)
        *out = NULL;
    if (!s || !out)
        return nbx_fail(s, NBX_EINVAL, "nbx_iter_open: NULL argument");
    if (after && strlen(after) > NBX_ID_MAX)
        return nbx_fail(s, NBX_EINVAL, "nbx_iter_open: 'after' is longer than %d bytes",
                        NBX_ID_MAX);
    nbx_iter *it = calloc(1, sizeof *it);
    if (!it)
        return nbx_fail(s, NBX_ENOMEM, "out of memory");
    it->store = s;
    it->flags = flags;
    nbx_err e = {0};
    int rc = nbx_store_read_begin(s, &it->txn, &e);
    if (rc == NBX_OK && (rc = mdb_cursor_open(it->txn, s->profiles, &it->cur)) != 0)
        rc = nbx_err_mdb(&e, rc, "opening an iterator");
    if (rc) {
        nbx_iter_close(it);
        return nbx_publish(s, &e);
    }
    if (after && *after) {
        it->id_len = strlen(after);
        memcpy(it->id, after, it->id_len + 1);
    }
    *out = it;
    return NBX_OK;
}

/* Position on the first key after it->id (the first key if none yet). */
static int iter_seek(nbx_iter *it, MDB_val *k, MDB_val *v)
{
    if (it->id_len == 0)
        return mdb_cursor_get(it->cur, k, v, MDB_FIRST);
    k->mv_size = it->id_len;
    k->mv_data = it->id;
    int rc = mdb_cursor_get(it->cur, k, v, MDB_SET_RANGE);
    if (rc == 0 && k->mv_size == it->id_len && memcmp(k->mv_data, it->id, it->id_len) == 0)
        rc = mdb_cursor_get(it->cur, k, v, MDB_NEXT);
    return rc;
}

NBX_API int nbx_iter_next(nbx_iter *it, const char **id, const char **json, size_t *json_len)
{
    if (!it)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_iter_next: NULL iterator");
    if (id)
        *id = NULL;
    if (json)
        *json = NULL;
    if (it->done)
        return NBX_DONE;
    nbx_err e = {0};
    MDB_val k, v;
    int rc;
    if (!it->positioned) {
        rc = iter_seek(it, &k, &v);
    } else if (++it->since_renew >= NBX_ITER_RENEW) {
        it->since_renew = 0;
        mdb_txn_reset(it->txn);
        rc = mdb_txn_renew(it->txn);
        if (rc == 0)
            rc = mdb_cursor_renew(it->txn, it->cur);
        if (rc)
            return nbx_fail(it->store, nbx_err_mdb(&e, rc, "renewing an iterator"), "%s", e.msg);
        rc = iter_seek(it, &k, &v);
    } else {
        rc = mdb_cursor_get(it->cur, &k, &v, MDB_NEXT);
    }
    it->positioned = true;
    if (rc == MDB_NOTFOUND) {
        it->done = true;
        return NBX_DONE;
    }
    if (rc)
        return nbx_fail(it->store, nbx_err_mdb(&e, rc, "iterating"), "%s", e.msg);
    if (k.mv_size > NBX_ID_MAX)
        return nbx_fail(it->store, NBX_ECORRUPT, "profile key longer than %d bytes", NBX_ID_MAX);
    memcpy(it->id, k.mv_data, k.mv_size);
    it->id[k.mv_size] = '\0';
    it->id_len = k.mv_size;
    if (!(it->flags & NBX_ITER_IDS)) {
        nbx_profile p = {.id = {it->id, it->id_len}};
        nbx_arena_reset(&it->arena);
        nbx_buf_reset(&it->json);
        rc = nbx_profile_decode(v.mv_data, v.mv_size, &p, &it->arena, &e);
        if (rc)
            return nbx_publish(it->store, &e);
        nbx_profile_to_json(&p, &it->json);
        nbx_buf_terminate(&it->json);
        if (it->json.oom)
            return nbx_fail(it->store, NBX_ENOMEM, "out of memory");
        if (json)
            *json = it->json.data;
        if (json_len)
            *json_len = it->json.len;
    }
    if (id)
        *id = it->id;
    return NBX_OK;
}

NBX_API void nbx_iter_close(nbx_iter *it)
{
    if (!it)
        return;
    if (it->cur)
        mdb_cursor_close(it->cur);
    if (it->txn)
        mdb_txn_abort(it->txn);
    nbx_buf_free(&it->json);
    nbx_arena_free(&it->arena);
    free(it);
}
