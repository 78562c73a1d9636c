/*
 * catalog.c: load and validate the offer catalog (a JSON file), and decide
 * once per offer whether it passes the catalog's guardrails.
 *
 * The catalog is immutable once loaded and shared by every context through a
 * reference count; a reload builds a new one and swaps it in (engine.c).
 * Validation is complete up front so the decision path can trust every
 * field: an error names the offer id and the field.
 */
#include "nbx_int.h"

#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct loader {
    nbx_catalog *cat;
    const char *path;
    nbx_err *e;
} loader;

/* ========================================================================
 * Field readers: each names the offer (or section) and the field on error.
 * ======================================================================== */

/* owner NULL: a field of the catalog itself. */
static int bad(loader *l, const char *owner, const char *field, const char *problem)
{
    if (!owner)
        return nbx_err_set(l->e, NBX_EPARSE, "%s: field '%s': %s", l->path, field, problem);
    return nbx_err_set(l->e, NBX_EPARSE, "%s: %s: field '%s': %s", l->path, owner, field, problem);
}

static int get_number(loader *l, json_t *obj, const char *owner, const char *field, bool required,
                      double def, double lo, double hi, double *out)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v)) {
        if (required)
            return bad(l, owner, field, "is required");
        *out = def;
        return NBX_OK;
    }
    if (!json_is_number(v))
        return bad(l, owner, field, "must be a number");
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi) {
        char msg[128];
        snprintf(msg, sizeof msg, "%g is out of range [%g, %g]", d, lo, hi);
        return bad(l, owner, field, msg);
    }
    *out = d;
    return NBX_OK;
}

static int get_uint(loader *l, json_t *obj, const char *owner, const char *field, bool required,
                    int64_t def, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v)) {
        if (required)
            return bad(l, owner, field, "is required");
        *out = def;
        return NBX_OK;
    }
    int64_t n;
    if (json_is_integer(v)) {
        n = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        n = (int64_t)json_real_value(v);
    } else {
        return bad(l, owner, field, "must be an integer");
    }
    if (n < lo || n > hi) {
        char msg[128];
        snprintf(msg, sizeof msg, "%lld is out of range [%lld, %lld]", (long long)n, (long long)lo,
                 (long long)hi);
        return bad(l, owner, field, msg);
    }
    *out = n;
    return NBX_OK;
}

/* A string field copied into the catalog arena; empty when absent and optional. */
static int get_string(loader *l, json_t *obj, const char *owner, const char *field, bool required,
                      nbx_sv *out)
{
    json_t *v = json_object_get(obj, field);
    out->ptr = "";
    out->len = 0;
    if (!v || json_is_null(v))
        return required ? bad(l, owner, field, "is required") : NBX_OK;
    if (!json_is_string(v))
        return bad(l, owner, field, "must be a string");
    size_t n = json_string_length(v);
    if (n == 0 || n > NBX_OFFER_ID_MAX)
        return bad(l, owner, field, "must be 1 to 128 bytes");
    char *s = nbx_arena_strndup(&l->cat->arena, json_string_value(v), n);
    if (!s)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    out->ptr = s;
    out->len = n;
    return NBX_OK;
}

/* A consent purpose: a string of 1 to 128 bytes; "none" (empty out) for
 * content that needs no consent. */
static int get_purpose(loader *l, json_t *obj, const char *owner, const char *field, nbx_sv *out)
{
    int rc = get_string(l, obj, owner, field, true, out);
    if (rc == NBX_OK && nbx_sv_eq_cstr(*out, "none"))
        *out = (nbx_sv){"", 0};
    return rc;
}

static int get_time(loader *l, json_t *obj, const char *owner, const char *field, int64_t def,
                    int64_t *out)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v)) {
        *out = def;
        return NBX_OK;
    }
    if (!json_is_string(v) ||
        nbx_time_parse_n(json_string_value(v), json_string_length(v), out) != NBX_OK)
        return bad(l, owner, field, "must be an RFC 3339 time such as 2026-01-01T00:00:00Z");
    return NBX_OK;
}

/* Every key of obj must be one of known (NULL-terminated): a misspelt cap,
 * budget or guardrail would otherwise be silently absent. name prefixes the
 * key in messages ("" for none). */
static int only_keys(loader *l, json_t *obj, const char *owner, const char *name,
                     const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        size_t i = 0;
        while (known[i] && strcmp(known[i], key) != 0)
            i++;
        if (!known[i]) {
            char field[160], msg[160] = "unknown field; known:";
            snprintf(field, sizeof field, "%s%s%.64s", name, *name ? "." : "", key);
            for (i = 0; known[i]; i++) {
                size_t n = strlen(msg);
                snprintf(msg + n, sizeof msg - n, "%s %s", i ? "," : "", known[i]);
            }
            return bad(l, owner, field, msg);
        }
    }
    return NBX_OK;
}

/* A cap {"max": N, "window_days": D} at obj[field]; prefix names the
 * object in messages ("caps" for an offer's, "" for the guardrails'). */
static int get_cap(loader *l, json_t *obj, const char *owner, const char *prefix,
                   const char *field, nbx_cap *out)
{
    json_t *v = json_object_get(obj, field);
    out->max = out->window_days = 0;
    if (!v || json_is_null(v))
        return NBX_OK;
    char name[64];
    snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", field);
    if (!json_is_object(v))
        return bad(l, owner, name, "must be an object {\"max\": N, \"window_days\": D}");
    static const char *const cap_keys[] = {"max", "window_days", NULL};
    int rc = only_keys(l, v, owner, name, cap_keys);
    if (rc)
        return rc;
    int64_t max, days;
    char sub[96];
    snprintf(sub, sizeof sub, "%s.max", name);
    json_t *m = json_object_get(v, "max");
    if (!m)
        return bad(l, owner, sub, "is required");
    rc = get_uint(l, v, owner, "max", true, 0, 0, UINT32_MAX, &max);
    if (rc)
        return nbx_err_set(l->e, rc, "%s: %s: field '%s': must be an integer from 0 to %u",
                           l->path, owner, sub, UINT32_MAX);
    snprintf(sub, sizeof sub, "%s.window_days", name);
    rc = get_uint(l, v, owner, "window_days", true, 0, 1, NBX_WINDOW_DAYS_MAX, &days);
    if (rc)
        return nbx_err_set(l->e, rc, "%s: %s: field '%s': must be an integer from 1 to %d",
                           l->path, owner, sub, NBX_WINDOW_DAYS_MAX);
    out->max = (uint32_t)max;
    out->window_days = (uint32_t)days;
    return NBX_OK;
}

/* ========================================================================
 * Sections
 * ======================================================================== */

static int load_placements(loader *l, json_t *root)
{
    json_t *arr = json_object_get(root, "placements");
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return nbx_err_set(l->e, NBX_EPARSE, "%s: field 'placements': must be a non-empty array",
                           l->path);
    size_t n = json_array_size(arr);
    if (n > NBX_CATALOG_PLACEMENTS_MAX)
        return nbx_err_set(l->e, NBX_ELIMIT, "%s: field 'placements': %zu entries, limit is %d",
                           l->path, n, NBX_CATALOG_PLACEMENTS_MAX);
    nbx_catalog *c = l->cat;
    c->placements = nbx_arena_alloc(&c->arena, n * sizeof *c->placements);
    if (!c->placements)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    memset(c->placements, 0, n * sizeof *c->placements);
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(arr, i);
        char owner[64];
        snprintf(owner, sizeof owner, "placements[%zu]", i);
        if (!json_is_object(p))
            return nbx_err_set(l->e, NBX_EPARSE, "%s: %s: must be an object", l->path, owner);
        nbx_placement *pl = &c->placements[i];
        int rc = get_string(l, p, owner, "id", true, &pl->id);
        if (rc)
            return rc;
        int64_t slots;
        char pown[NBX_ID_MAX + 32];
        snprintf(pown, sizeof pown, "placement '%s'", pl->id.ptr);
        static const char *const placement_keys[] = {"id", "slots", NULL};
        if ((rc = only_keys(l, p, pown, "", placement_keys)))
            return rc;
        rc = get_uint(l, p, pown, "slots", false, 1, 1, 64, &slots);
        if (rc)
            return rc;
        pl->slots = (uint32_t)slots;
        for (size_t j = 0; j < i; j++)
            if (nbx_sv_eq(c->placements[j].id, pl->id))
                return nbx_err_set(l->e, NBX_EPARSE, "%s: placement '%s': field 'id': duplicate",
                                   l->path, pl->id.ptr);
    }
    c->n_placements = (uint32_t)n;
    return NBX_OK;
}

static int cmp_offer_json_id(const void *a, const void *b)
{
    json_t *const *x = a, *const *y = b;
    json_t *ix = json_object_get(*x, "id"), *iy = json_object_get(*y, "id");
    nbx_sv sx = {json_string_value(ix), json_string_length(ix)};
    nbx_sv sy = {json_string_value(iy), json_string_length(iy)};
    return nbx_sv_cmp(sx, sy);
}

static int cmp_sv(const void *a, const void *b)
{
    return nbx_sv_cmp(*(const nbx_sv *)a, *(const nbx_sv *)b);
}

static int cmp_channel(const void *a, const void *b)
{
    return nbx_sv_cmp(((const nbx_channel *)a)->name, ((const nbx_channel *)b)->name);
}

/* Index of a purpose in c->purposes; UINT32_MAX for none (empty) or absent. */
static uint32_t purpose_index(const nbx_catalog *c, nbx_sv purpose)
{
    const nbx_sv *hit =
        purpose.len ? bsearch(&purpose, c->purposes, c->n_purposes, sizeof(nbx_sv), cmp_sv) : NULL;
    return hit ? (uint32_t)(hit - c->purposes) : UINT32_MAX;
}

static int load_segment_propensity(loader *l, json_t *o, nbx_offer *off, const char *owner)
{
    for (int s = 0; s < NBX_SEGMENT_COUNT; s++)
        off->segment_prior[s] = NAN;
    json_t *sp = json_object_get(o, "segment_propensity");
    if (!sp || json_is_null(sp))
        return NBX_OK;
    if (!json_is_object(sp))
        return bad(l, owner, "segment_propensity", "must be an object of segment -> probability");
    const char *key;
    json_t *v;
    json_object_foreach(sp, key, v)
    {
        int seg = -1;
        for (int s = 1; s < NBX_SEGMENT_COUNT; s++)
            if (strcmp(key, nbx_segment_name(s)) == 0)
                seg = s;
        char field[NBX_KEY_MAX + 32];
        snprintf(field, sizeof field, "segment_propensity.%.256s", key);
        if (seg < 0)
            return bad(l, owner, field, "unknown segment (see docs/data-model.md)");
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1)
            return bad(l, owner, field, "must be a probability in [0, 1]");
        off->segment_prior[seg] = json_number_value(v);
    }
    return NBX_OK;
}

/* Depth of a JSON value as the sandbox builds it (a scalar is 1); stops
 * counting past NBX_JSON_DEPTH_MAX. */
static int json_depth(json_t *v, int depth)
{
    if (depth > NBX_JSON_DEPTH_MAX)
        return depth;
    int deepest = depth;
    size_t i;
    const char *key;
    json_t *item;
    if (json_is_object(v)) {
        json_object_foreach(v, key, item)
        {
            int d = json_depth(item, depth + 1);
            deepest = d > deepest ? d : deepest;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, item)
        {
            int d = json_depth(item, depth + 1);
            deepest = d > deepest ? d : deepest;
        }
    }
    return deepest;
}

/* ------------------------------------------------------------------------
 * An offer's free fields
 *
 * Any field an offer has beyond the engine's is handed to the policy, so a
 * misspelt one (`base_propensty`) would be a free field, silently, and the
 * engine would use the default. A free field must therefore be more than a
 * slip of the keyboard away from every field the engine reads: at most two
 * edits for names of 7 characters or more, one for 3 to 6, none but letter
 * case for shorter ones (`id`: "ad" or "url" are fine free fields, "ID" is
 * refused). docs/decisions.md, "The catalog".
 * ------------------------------------------------------------------------ */

/* clang-format off */
static const char *const offer_fields[] = {
    "id", "kind", "placements", "price", "unit_cost", "discount", "serving_cost", "purpose",
    "category", "base_propensity", "segment_propensity", "valid_from", "valid_to", "caps",
    "budget", NULL};
/* clang-format on */

/* Set by the engine in the policy's offer table, from the fields above: a
 * catalog value of the same name would never reach the policy. */
static const char *const derived_fields[] = {"margin", "discount_pct", NULL};

static size_t edits_allowed(size_t known_len)
{
    return known_len <= 2 ? 0 : known_len <= 6 ? 1 : 2;
}

static unsigned char ascii_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

#define NAME_MAX_EDITS 24 /* longer than any known name plus the edits allowed */

/* Edits (insert, delete, replace, swap two neighbours) from a to b, letter
 * case ignored; any value above limit means "more than limit". */
static size_t edit_distance(const char *a, size_t na, const char *b, size_t nb, size_t limit)
{
    if ((na > nb ? na - nb : nb - na) > limit || na >= NAME_MAX_EDITS || nb >= NAME_MAX_EDITS)
        return limit + 1;
    size_t d[NAME_MAX_EDITS + 1][NAME_MAX_EDITS + 1];
    for (size_t i = 0; i <= na; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= nb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= na; i++) {
        for (size_t j = 1; j <= nb; j++) {
            unsigned char x = ascii_lower((unsigned char)a[i - 1]);
            unsigned char y = ascii_lower((unsigned char)b[j - 1]);
            size_t best = d[i - 1][j - 1] + (x != y);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && x == ascii_lower((unsigned char)b[j - 2]) &&
                ascii_lower((unsigned char)a[i - 2]) == y && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[na][nb];
}

static bool in_list(const char *const *list, const char *key)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], key) == 0)
            return true;
    return false;
}

/* A field of an offer is one the engine reads, or a free field for the
 * policy that cannot be mistaken for one. */
static int check_offer_field(loader *l, const char *owner, const char *key)
{
    if (in_list(offer_fields, key))
        return NBX_OK;
    char field[80], msg[200];
    snprintf(field, sizeof field, "%.64s", key);
    if (in_list(derived_fields, key))
        return bad(l, owner, field,
                   "is computed by the engine (margin = price - unit_cost - discount, "
                   "discount_pct = 100 x discount / price): a value given here would never "
                   "reach the policy; remove it or give it another name");
    size_t n = strlen(key);
    for (size_t i = 0; offer_fields[i]; i++) {
        size_t known = strlen(offer_fields[i]);
        size_t limit = edits_allowed(known);
        size_t d = edit_distance(key, n, offer_fields[i], known, limit);
        if (d > limit)
            continue;
        if (d == 0)
            snprintf(msg, sizeof msg,
                     "unknown field; did you mean '%s'? (names are case-sensitive)",
                     offer_fields[i]);
        else
            snprintf(msg, sizeof msg,
                     "unknown field within %zu edit%s of '%s': a misspelling? A field of your "
                     "own for the policy needs a name further from the engine's",
                     d, d == 1 ? "" : "s", offer_fields[i]);
        return bad(l, owner, field, msg);
    }
    return NBX_OK;
}

static int load_offer(loader *l, json_t *o, nbx_offer *off)
{
    nbx_catalog *c = l->cat;
    char owner[NBX_ID_MAX + 16];
    snprintf(owner, sizeof owner, "offer '%s'", off->id.ptr);
    int rc;
    const char *key;
    json_t *field;
    json_object_foreach(o, key, field)
    {
        if ((rc = check_offer_field(l, owner, key)))
            return rc;
        if (json_depth(field, 1) > NBX_JSON_DEPTH_MAX) {
            char msg[96];
            snprintf(msg, sizeof msg, "nested deeper than %d levels", NBX_JSON_DEPTH_MAX);
            char name[80];
            snprintf(name, sizeof name, "%.64s", key);
            return bad(l, owner, name, msg);
        }
    }
    json_t *kind = json_object_get(o, "kind");
    if (!kind || json_is_null(kind))
        off->kind = NBX_KIND_OFFER;
    else if (json_is_string(kind) && strcmp(json_string_value(kind), "offer") == 0)
        off->kind = NBX_KIND_OFFER;
    else if (json_is_string(kind) && strcmp(json_string_value(kind), "module") == 0)
        off->kind = NBX_KIND_MODULE;
    else
        return bad(l, owner, "kind", "must be \"offer\" or \"module\"");

    json_t *pls = json_object_get(o, "placements");
    if (!json_is_array(pls) || json_array_size(pls) == 0)
        return bad(l, owner, "placements", "must be a non-empty array of placement ids");
    size_t np = json_array_size(pls);
    if (np > c->n_placements)
        return bad(l, owner, "placements", "lists more placements than the catalog has");
    off->placements = nbx_arena_alloc(&c->arena, np * sizeof(uint32_t));
    if (!off->placements)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    for (size_t i = 0; i < np; i++) {
        json_t *p = json_array_get(pls, i);
        if (!json_is_string(p))
            return bad(l, owner, "placements", "must hold placement id strings");
        nbx_sv pid = {json_string_value(p), json_string_length(p)};
        int idx = nbx_catalog_placement(c, pid);
        if (idx < 0) {
            char msg[NBX_ID_MAX + 64];
            snprintf(msg, sizeof msg, "unknown placement '%s'", pid.ptr);
            return bad(l, owner, "placements", msg);
        }
        for (size_t j = 0; j < i; j++)
            if (off->placements[j] == (uint32_t)idx)
                return bad(l, owner, "placements", "lists a placement twice");
        off->placements[i] = (uint32_t)idx;
    }
    off->n_placements = (uint32_t)np;

    if ((rc = get_number(l, o, owner, "price", true, 0, 0, 1e12, &off->price)) ||
        (rc = get_number(l, o, owner, "unit_cost", true, 0, 0, 1e12, &off->unit_cost)) ||
        (rc = get_number(l, o, owner, "discount", false, 0, 0, 1e12, &off->discount)) ||
        (rc = get_number(l, o, owner, "serving_cost", false, 0, 0, 1e12, &off->serving_cost)) ||
        (rc = get_number(l, o, owner, "base_propensity", false, 0, 0, 1, &off->base_propensity)))
        return rc;
    off->margin = off->price - off->unit_cost - off->discount;
    off->discount_pct = off->price > 0   ? 100.0 * off->discount / off->price
                        : off->discount > 0 ? INFINITY
                                            : 0.0;

    if ((rc = get_purpose(l, o, owner, "purpose", &off->purpose)))
        return rc;
    if ((rc = get_string(l, o, owner, "category", false, &off->category)))
        return rc;
    if ((rc = get_time(l, o, owner, "valid_from", INT64_MIN, &off->valid_from)) ||
        (rc = get_time(l, o, owner, "valid_to", INT64_MAX, &off->valid_to)))
        return rc;
    if (off->valid_from >= off->valid_to)
        return bad(l, owner, "valid_to", "must be after valid_from");

    json_t *caps = json_object_get(o, "caps");
    if (caps && !json_is_null(caps)) {
        if (!json_is_object(caps))
            return bad(l, owner, "caps", "must be an object");
        int64_t cool;
        static const char *const caps_keys[] = {"impressions", "accepts",
                                                "dismiss_cooldown_days", NULL};
        if ((rc = only_keys(l, caps, owner, "caps", caps_keys)) ||
            (rc = get_cap(l, caps, owner, "caps", "impressions", &off->impressions)) ||
            (rc = get_cap(l, caps, owner, "caps", "accepts", &off->accepts)))
            return rc;
        rc = get_uint(l, caps, owner, "dismiss_cooldown_days", false, 0, 0, NBX_WINDOW_DAYS_MAX,
                      &cool);
        if (rc)
            return nbx_err_set(l->e, rc,
                               "%s: %s: field 'caps.dismiss_cooldown_days': must be an integer "
                               "from 0 to %d",
                               l->path, owner, NBX_WINDOW_DAYS_MAX);
        off->dismiss_cooldown_days = (uint32_t)cool;
    }
    off->budget_impressions = off->budget_accepts = -1;
    json_t *budget = json_object_get(o, "budget");
    if (budget && !json_is_null(budget)) {
        if (!json_is_object(budget))
            return bad(l, owner, "budget", "must be an object");
        static const char *const budget_keys[] = {"daily_impressions", "daily_accepts", NULL};
        if ((rc = only_keys(l, budget, owner, "budget", budget_keys)))
            return rc;
        if ((rc = get_uint(l, budget, owner, "daily_impressions", false, -1, 0, INT64_C(1) << 40,
                           &off->budget_impressions)))
            return nbx_err_set(l->e, rc,
                               "%s: %s: field 'budget.daily_impressions': must be an integer "
                               ">= 0",
                               l->path, owner);
        if ((rc = get_uint(l, budget, owner, "daily_accepts", false, -1, 0, INT64_C(1) << 40,
                           &off->budget_accepts)))
            return nbx_err_set(l->e, rc,
                               "%s: %s: field 'budget.daily_accepts': must be an integer >= 0",
                               l->path, owner);
        if (off->budget_impressions >= 0 || off->budget_accepts >= 0)
            c->has_budgets = true;
    }
    return load_segment_propensity(l, o, off, owner);
}

static int load_offers(loader *l, json_t *root)
{
    nbx_catalog *c = l->cat;
    json_t *arr = json_object_get(root, "offers");
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return nbx_err_set(l->e, NBX_EPARSE, "%s: field 'offers': must be a non-empty array",
                           l->path);
    size_t n = json_array_size(arr);
    if (n > NBX_CATALOG_OFFERS_MAX)
        return nbx_err_set(l->e, NBX_ELIMIT, "%s: field 'offers': %zu entries, limit is %d",
                           l->path, n, NBX_CATALOG_OFFERS_MAX);
    json_t **sorted = malloc(n * sizeof *sorted);
    if (!sorted)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    int rc = NBX_OK;
    for (size_t i = 0; i < n && rc == NBX_OK; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *id = json_object_get(o, "id");
        if (!json_is_object(o))
            rc = nbx_err_set(l->e, NBX_EPARSE, "%s: offers[%zu]: must be an object", l->path, i);
        else if (!json_is_string(id) || json_string_length(id) == 0 ||
                 json_string_length(id) > NBX_OFFER_ID_MAX)
            rc = nbx_err_set(l->e, NBX_EPARSE,
                             "%s: offers[%zu]: field 'id': must be a string of 1 to 128 bytes",
                             l->path, i);
        sorted[i] = o;
    }
    if (rc == NBX_OK) {
        /* Sorted by id: tie-breaks and joins against stored counters (also
         * sorted by offer id) need no hashing. */
        qsort(sorted, n, sizeof *sorted, cmp_offer_json_id);
        c->offers = nbx_arena_alloc(&c->arena, n * sizeof *c->offers);
        if (!c->offers)
            rc = nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    }
    for (size_t i = 0; i < n && rc == NBX_OK; i++) {
        nbx_offer *off = &c->offers[i];
        memset(off, 0, sizeof *off);
        json_t *id = json_object_get(sorted[i], "id");
        off->id.len = json_string_length(id);
        off->id.ptr = nbx_arena_strndup(&c->arena, json_string_value(id), off->id.len);
        off->index = (uint32_t)i;
        off->json = sorted[i];
        if (!off->id.ptr)
            rc = nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
        else if (i > 0 && nbx_sv_eq(c->offers[i - 1].id, off->id))
            rc = nbx_err_set(l->e, NBX_EPARSE, "%s: offer '%s': field 'id': duplicate", l->path,
                             off->id.ptr);
        else
            rc = load_offer(l, sorted[i], off);
    }
    free(sorted);
    if (rc == NBX_OK)
        c->n_offers = (uint32_t)n;
    return rc;
}

static const nbx_sv *sv_at(const nbx_offer *o, size_t offset)
{
    return (const nbx_sv *)(const void *)((const char *)o + offset);
}

/* The distinct non-empty values of an offer field (the nbx_sv at offset
 * field) and of extra[0..n_extra), sorted, and each offer's index into them
 * (the uint32_t at offset index; UINT32_MAX where the field is empty):
 * categories, purposes. */
static int index_distinct(loader *l, size_t field, size_t index, const nbx_sv *extra,
                          uint32_t n_extra, nbx_sv **out, uint32_t *n_out)
{
    nbx_catalog *c = l->cat;
    size_t cap = (size_t)c->n_offers + n_extra;
    nbx_sv *values = nbx_arena_alloc(&c->arena, (cap ? cap : 1) * sizeof(nbx_sv));
    if (!values)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->n_offers; i++)
        if (sv_at(&c->offers[i], field)->len)
            values[n++] = *sv_at(&c->offers[i], field);
    for (uint32_t i = 0; i < n_extra; i++)
        if (extra[i].len)
            values[n++] = extra[i];
    qsort(values, n, sizeof(nbx_sv), cmp_sv);
    uint32_t unique = 0;
    for (uint32_t i = 0; i < n; i++)
        if (unique == 0 || !nbx_sv_eq(values[unique - 1], values[i]))
            values[unique++] = values[i];
    for (uint32_t i = 0; i < c->n_offers; i++) {
        const nbx_sv *v = sv_at(&c->offers[i], field);
        const nbx_sv *hit = v->len ? bsearch(v, values, unique, sizeof(nbx_sv), cmp_sv) : NULL;
        uint32_t at = hit ? (uint32_t)(hit - values) : UINT32_MAX;
        memcpy((char *)&c->offers[i] + index, &at, sizeof at);
    }
    *out = values;
    *n_out = unique;
    return NBX_OK;
}

/* Per placement, the offers that may fill it, in id order. */
static int index_placements(loader *l)
{
    nbx_catalog *c = l->cat;
    for (uint32_t p = 0; p < c->n_placements; p++) {
        nbx_placement *pl = &c->placements[p];
        uint32_t count = 0;
        for (uint32_t i = 0; i < c->n_offers; i++)
            for (uint32_t k = 0; k < c->offers[i].n_placements; k++)
                count += c->offers[i].placements[k] == p;
        pl->offers = nbx_arena_alloc(&c->arena, (count ? count : 1) * sizeof(uint32_t));
        if (!pl->offers)
            return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
        for (uint32_t i = 0; i < c->n_offers; i++)
            for (uint32_t k = 0; k < c->offers[i].n_placements; k++)
                if (c->offers[i].placements[k] == p)
                    pl->offers[pl->n_offers++] = i;
    }
    return NBX_OK;
}

static int load_fallback(loader *l, json_t *root)
{
    nbx_catalog *c = l->cat;
    json_t *fb = json_object_get(root, "fallback");
    if (!fb || json_is_null(fb))
        return NBX_OK;
    if (!json_is_object(fb))
        return nbx_err_set(l->e, NBX_EPARSE,
                           "%s: field 'fallback': must be an object of placement -> [offer ids]",
                           l->path);
    const char *key;
    json_t *v;
    json_object_foreach(fb, key, v)
    {
        int p = nbx_catalog_placement(c, nbx_sv_of(key));
        if (p < 0)
            return nbx_err_set(l->e, NBX_EPARSE, "%s: field 'fallback.%.256s': unknown placement",
                               l->path, key);
        if (!json_is_array(v))
            return nbx_err_set(l->e, NBX_EPARSE,
                               "%s: field 'fallback.%.256s': must be an array of offer ids",
                               l->path, key);
        nbx_placement *pl = &c->placements[p];
        size_t n = json_array_size(v);
        if (n > NBX_CATALOG_OFFERS_MAX)
            return nbx_err_set(l->e, NBX_ELIMIT, "%s: field 'fallback.%.256s': too many entries",
                               l->path, key);
        pl->fallback = nbx_arena_alloc(&c->arena, (n ? n : 1) * sizeof(uint32_t));
        if (!pl->fallback)
            return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
        for (size_t i = 0; i < n; i++) {
            json_t *id = json_array_get(v, i);
            const nbx_offer *o =
                json_is_string(id)
                    ? nbx_catalog_offer(c, (nbx_sv){json_string_value(id), json_string_length(id)})
                    : NULL;
            if (!o)
                return nbx_err_set(l->e, NBX_EPARSE,
                                   "%s: field 'fallback.%.256s[%zu]': not an offer id of the "
                                   "catalog",
                                   l->path, key, i);
            bool placed = false;
            for (uint32_t k = 0; k < o->n_placements; k++)
                placed = placed || o->placements[k] == (uint32_t)p;
            if (!placed)
                return nbx_err_set(l->e, NBX_EPARSE,
                                   "%s: field 'fallback.%.256s[%zu]': offer '%s' does not list "
                                   "placement '%.256s' in its placements",
                                   l->path, key, i, o->id.ptr, key);
            pl->fallback[pl->n_fallback++] = o->index;
        }
    }
    return NBX_OK;
}

static int load_guardrails(loader *l, json_t *root)
{
    nbx_guardrails *g = &l->cat->guardrails;
    g->max_discount_pct = NAN;
    g->min_margin = NAN;
    g->consent_default = false;
    g->personalization_purpose = NBX_SV("personalization");
    json_t *gr = json_object_get(root, "guardrails");
    if (!gr || json_is_null(gr))
        return NBX_OK;
    if (!json_is_object(gr))
        return nbx_err_set(l->e, NBX_EPARSE, "%s: field 'guardrails': must be an object", l->path);
    static const char *const guardrail_keys[] = {
        "max_discount_pct",        "min_margin", "max_contacts", "consent_default",
        "personalization_purpose", NULL};
    int rc;
    if ((rc = only_keys(l, gr, "guardrails", "", guardrail_keys)) ||
        (rc = get_number(l, gr, "guardrails", "max_discount_pct", false, NAN, 0, 100,
                         &g->max_discount_pct)) ||
        (rc = get_number(l, gr, "guardrails", "min_margin", false, NAN, -1e12, 1e12,
                         &g->min_margin)) ||
        (rc = get_cap(l, gr, "guardrails", "", "max_contacts", &g->max_contacts)))
        return rc;
    json_t *cd = json_object_get(gr, "consent_default");
    if (cd && !json_is_null(cd)) {
        if (!json_is_boolean(cd))
            return bad(l, "guardrails", "consent_default", "must be true or false");
        g->consent_default = json_is_true(cd);
    }
    /* Absent: the default purpose. null or "none", as for a channel: the
     * catalog says personalisation needs no consent. */
    json_t *pp = json_object_get(gr, "personalization_purpose");
    if (pp && json_is_null(pp))
        g->personalization_purpose = (nbx_sv){"", 0};
    else if (pp && (rc = get_purpose(l, gr, "guardrails", "personalization_purpose",
                                     &g->personalization_purpose)))
        return rc;
    return NBX_OK;
}

/* "channels": {"email": {"purpose": "email"}, "web": {"purpose": null}}.
 * Sorted by name so that a decision finds its channel by bisection. */
static int load_channels(loader *l, json_t *root)
{
    nbx_catalog *c = l->cat;
    json_t *ch = json_object_get(root, "channels");
    if (!ch || json_is_null(ch))
        return NBX_OK;
    if (!json_is_object(ch))
        return nbx_err_set(l->e, NBX_EPARSE,
                           "%s: field 'channels': must be an object of channel -> "
                           "{\"purpose\": P}",
                           l->path);
    size_t n = json_object_size(ch);
    if (n > NBX_CATALOG_CHANNELS_MAX)
        return nbx_err_set(l->e, NBX_ELIMIT, "%s: field 'channels': %zu entries, limit is %d",
                           l->path, n, NBX_CATALOG_CHANNELS_MAX);
    c->channels = nbx_arena_alloc(&c->arena, (n ? n : 1) * sizeof *c->channels);
    if (!c->channels)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    c->channels_declared = true;
    const char *key;
    json_t *v;
    json_object_foreach(ch, key, v)
    {
        char owner[NBX_OFFER_ID_MAX + 32];
        snprintf(owner, sizeof owner, "channel '%.128s'", key);
        size_t len = strlen(key);
        if (len == 0 || len > NBX_OFFER_ID_MAX)
            return nbx_err_set(l->e, NBX_EPARSE,
                               "%s: field 'channels': a channel name must be 1 to %d bytes",
                               l->path, NBX_OFFER_ID_MAX);
        if (!json_is_object(v))
            return bad(l, owner, "purpose",
                       "the channel must be an object {\"purpose\": P} (null or \"none\": no "
                       "consent needed)");
        static const char *const channel_keys[] = {"purpose", NULL};
        int rc = only_keys(l, v, owner, "", channel_keys);
        if (rc)
            return rc;
        json_t *p = json_object_get(v, "purpose");
        if (!p)
            return bad(l, owner, "purpose",
                       "is required (null or \"none\" for a channel that needs no consent)");
        nbx_channel *out = &c->channels[c->n_channels++];
        out->name.ptr = nbx_arena_strndup(&c->arena, key, len);
        out->name.len = len;
        out->purpose = (nbx_sv){"", 0};
        out->purpose_index = UINT32_MAX; /* set by index_purposes() */
        if (!out->name.ptr)
            return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
        if (!json_is_null(p) && (rc = get_purpose(l, v, owner, "purpose", &out->purpose)))
            return rc;
    }
    qsort(c->channels, c->n_channels, sizeof *c->channels, cmp_channel);
    return NBX_OK;
}

/* Every purpose the catalog names, each offer's, each channel's and the
 * personalisation purpose's index into them: a decision then reads each
 * purpose's consent once and every check is an array lookup. */
static int index_purposes(loader *l)
{
    nbx_catalog *c = l->cat;
    uint32_t n_extra = c->n_channels + 1;
    nbx_sv *extra = malloc(n_extra * sizeof *extra);
    if (!extra)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    for (uint32_t i = 0; i < c->n_channels; i++)
        extra[i] = c->channels[i].purpose;
    extra[c->n_channels] = c->guardrails.personalization_purpose;
    int rc = index_distinct(l, offsetof(nbx_offer, purpose), offsetof(nbx_offer, purpose_index),
                            extra, n_extra, &c->purposes, &c->n_purposes);
    free(extra);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < c->n_channels; i++)
        c->channels[i].purpose_index = purpose_index(c, c->channels[i].purpose);
    c->personalization_index = purpose_index(c, c->guardrails.personalization_purpose);
    return NBX_OK;
}

/* ========================================================================
 * Load, lookups, lifetime
 * ======================================================================== */

static void catalog_free(nbx_catalog *c)
{
    if (!c)
        return;
    json_decref(c->root);
    nbx_arena_free(&c->arena);
    free(c->path);
    free(c);
}

static int catalog_parse(const char *path, const char *text, size_t len, nbx_catalog *c,
                         nbx_err *e)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    c->root = root;
    if (!root)
        return nbx_err_set(e, NBX_EPARSE, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    if (!json_is_object(root))
        return nbx_err_set(e, NBX_EPARSE, "%s: the catalog must be a JSON object", path);
    loader l = {c, path, e};
    static const char *const catalog_keys[] = {"placements", "offers",   "fallback",
                                               "guardrails", "channels", NULL};
    int rc;
    if ((rc = only_keys(&l, root, NULL, "", catalog_keys)) || (rc = load_placements(&l, root)) ||
        (rc = load_offers(&l, root)) || (rc = load_guardrails(&l, root)) ||
        (rc = load_channels(&l, root)) ||
        (rc = index_distinct(&l, offsetof(nbx_offer, category), offsetof(nbx_offer, category_index),
                             NULL, 0, &c->categories, &c->n_categories)) ||
        (rc = index_purposes(&l)) || (rc = index_placements(&l)) || (rc = load_fallback(&l, root)))
        return rc;
    /* Offers and guardrails are both fixed once loaded: decide once here
     * rather than for every candidate of every decision. */
    for (uint32_t i = 0; i < c->n_offers; i++)
        c->offers[i].passes_guardrails = nbx_guardrails_pass(c, &c->offers[i]);
    return NBX_OK;
}

int nbx_guardrail_failed(const nbx_catalog *c, const nbx_offer *o)
{
    /* Money in binary floating point: 9.99 / 33.3 is 30.000000000000004 %
     * and 0.3 - 0.1 - 0.2 is -2.8e-17. An offer exactly at a limit passes:
     * the comparisons allow the rounding error of the arithmetic (about
     * 1e-16 of the amounts involved), far below a cent. */
    const nbx_guardrails *g = &c->guardrails;
    if (!isnan(g->max_discount_pct) && o->discount_pct > g->max_discount_pct + 1e-9)
        return NBX_GUARDRAIL_DISCOUNT;
    double scale = o->price + o->unit_cost + o->discount;
    if (!isnan(g->min_margin) && o->margin < g->min_margin - 1e-12 * (scale > 1 ? scale : 1))
        return NBX_GUARDRAIL_MARGIN;
    return NBX_GUARDRAIL_NONE;
}

bool nbx_guardrails_pass(const nbx_catalog *c, const nbx_offer *o)
{
    return nbx_guardrail_failed(c, o) == NBX_GUARDRAIL_NONE;
}

int nbx_catalog_load(const char *path, nbx_catalog **out, nbx_err *e)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = nbx_read_file(path, NBX_CATALOG_FILE_MAX, &text, &len, e);
    if (rc)
        return rc;
    rc = nbx_catalog_load_text(path, text, len, out, e);
    free(text);
    return rc;
}

int nbx_catalog_load_text(const char *path, const char *text, size_t len, nbx_catalog **out,
                          nbx_err *e)
{
    *out = NULL;
    if (len > NBX_CATALOG_FILE_MAX)
        return nbx_err_set(e, NBX_ELIMIT, "%s: the catalog is over the limit of %u bytes", path,
                           (unsigned)NBX_CATALOG_FILE_MAX);
    nbx_catalog *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return nbx_err_set(e, NBX_ENOMEM, "%s: out of memory", path);
    }
    atomic_init(&c->refs, 1);
    c->version = nbx_hash64(text, len, 0);
    nbx_hex64(c->version, c->version_hex);
    int rc = catalog_parse(path, text, len, c, e);
    if (rc) {
        catalog_free(c);
        return rc;
    }
    *out = c;
    return NBX_OK;
}

nbx_catalog *nbx_catalog_ref(nbx_catalog *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void nbx_catalog_unref(nbx_catalog *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        catalog_free(c);
}

const nbx_offer *nbx_catalog_offer(const nbx_catalog *c, nbx_sv id)
{
    uint32_t lo = 0, hi = c->n_offers;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int cmp = nbx_sv_cmp(c->offers[mid].id, id);
        if (cmp == 0)
            return &c->offers[mid];
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int nbx_catalog_placement(const nbx_catalog *c, nbx_sv id)
{
    for (uint32_t i = 0; i < c->n_placements; i++)
        if (nbx_sv_eq(c->placements[i].id, id))
            return (int)i;
    return -1;
}

int nbx_catalog_channel(const nbx_catalog *c, const nbx_kv *session, size_t n_session,
                        uint32_t *purpose, nbx_err *e)
{
    *purpose = UINT32_MAX;
    const char *channel = NULL;
    for (size_t i = 0; i < n_session && !channel; i++)
        if (session[i].key && session[i].value && strcmp(session[i].key, "channel") == 0)
            channel = session[i].value;
    if (!channel)
        return NBX_OK;
    nbx_sv name = nbx_sv_of(channel);
    if (!c->channels_declared) {
        *purpose = purpose_index(c, name);
        return NBX_OK;
    }
    uint32_t lo = 0, hi = c->n_channels;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int cmp = nbx_sv_cmp(c->channels[mid].name, name);
        if (cmp == 0) {
            *purpose = c->channels[mid].purpose_index;
            return NBX_OK;
        }
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    char known[512] = "";
    for (uint32_t i = 0; i < c->n_channels; i++) {
        size_t n = strlen(known);
        if (n + c->channels[i].name.len + 8 >= sizeof known) {
            snprintf(known + n, sizeof known - n, ", ...");
            break;
        }
        snprintf(known + n, sizeof known - n, "%s%s", i ? ", " : "", c->channels[i].name.ptr);
    }
    return nbx_err_set(e, NBX_EINVAL,
                       "field 'session.channel': '%.128s' is not a channel of the catalog "
                       "(channels: %s)",
                       channel, known);
}

NBX_API int nbx_catalog_check(const char *path, nbx_engine_info *info)
{
    if (!path)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_catalog_check: path is NULL");
    nbx_err e = {0};
    nbx_catalog *c;
    int rc = nbx_catalog_load(path, &c, &e);
    if (rc)
        return nbx_publish(NULL, &e);
    if (info) {
        memcpy(info->catalog_version, c->version_hex, sizeof info->catalog_version);
        info->offers = c->n_offers;
        info->placements = c->n_placements;
    }
    nbx_catalog_unref(c);
    nbx_clear_error(NULL);
    return NBX_OK;
}
