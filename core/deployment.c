/*
 * deployment.c: what serves whom. A deployment file (JSON) names a holdout
 * share, arms (a policy each, with its share of the customers not held
 * out) and shadow policies; assignment puts every customer in one of them,
 * deterministically, the same way in every binding (docs/experiments.md).
 *
 * A deployment is immutable once loaded and shared by engines and their
 * contexts through a reference count, like catalogs and policies. Loading
 * is all or nothing: a file with any error yields no deployment, so a
 * reload that fails leaves the one serving untouched. It holds memory only
 * (no file, lock or Lua state): one loaded before fork() may be used by
 * the children (nginx's master loads, its workers serve).
 */
#include "nbx_int.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A deployment file is a few arms and paths: anything larger is a mistake. */
#define NBX_DEPLOYMENT_FILE_MAX (1u << 20)
#define NBX_DEPLOYMENT_SALT_MAX 256
#define NBX_DEPLOYMENT_PATH_MAX 4096

typedef struct loader {
    nbx_deployment *d;
    const char *path;
    unsigned flags;
    nbx_err *e;
} loader;

/* ========================================================================
 * Field readers: each names the file, the arm (or section) and the field.
 * ======================================================================== */

/* owner NULL: a field of the deployment itself. */
static int bad(loader *l, const char *owner, const char *field, const char *problem)
{
    if (!owner)
        return nbx_err_set(l->e, NBX_EPARSE, "%s: field '%s': %s", l->path, field, problem);
    return nbx_err_set(l->e, NBX_EPARSE, "%s: %s: field '%s': %s", l->path, owner, field, problem);
}

/* Every key of obj must be one of known (NULL-terminated): a misspelt
 * `abort` rule would otherwise be silently absent. */
static int only_keys(loader *l, json_t *obj, const char *owner, const char *prefix,
                     const char *const *known)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        size_t i = 0;
        while (known[i] && strcmp(known[i], key) != 0)
            i++;
        if (known[i])
            continue;
        char field[160], msg[200] = "unknown field; known:";
        snprintf(field, sizeof field, "%s%.64s", prefix, key);
        for (i = 0; known[i]; i++) {
            size_t n = strlen(msg);
            snprintf(msg + n, sizeof msg - n, "%s %s", i ? "," : "", known[i]);
        }
        return bad(l, owner, field, msg);
    }
    return NBX_OK;
}

bool nbx_deployment_name_valid(nbx_sv name)
{
    return name.len <= NBX_DEPLOYMENT_NAME_MAX && nbx_arm_name_valid(name);
}

/* A name that travels inside decision ids and metric labels. */
static int get_name(loader *l, json_t *obj, const char *owner,
                    char out[NBX_DEPLOYMENT_NAME_MAX + 1])
{
    json_t *v = json_object_get(obj, "name");
    if (!v)
        return bad(l, owner, "name", "is required");
    if (!json_is_string(v) ||
        !nbx_deployment_name_valid((nbx_sv){json_string_value(v), json_string_length(v)}))
        return bad(l, owner, "name",
                   "must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-' (it travels in "
                   "decision ids and metric labels)");
    /* A decision id is UUID.DEPLOYMENT.ARM, split at the first dot after
     * the UUID: the deployment's name may not hold one, an arm's may. */
    if (!owner && memchr(json_string_value(v), '.', json_string_length(v)))
        return bad(l, owner, "name",
                   "must not contain '.' (decision ids are UUID.DEPLOYMENT.ARM, split at the "
                   "first dot after the UUID)");
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return NBX_OK;
}

/* A percent with at most two decimals, as hundredths: shares are cut over
 * 10,000 buckets, so a finer share could not be honoured. */
static int get_percent(loader *l, json_t *obj, const char *owner, const char *field,
                       uint32_t *hundredths)
{
    json_t *v = json_object_get(obj, field);
    if (!v)
        return bad(l, owner, field, "is required");
    double p = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(p >= 0 && p <= 100))
        return bad(l, owner, field, "must be a number from 0 to 100");
    double h = round(p * 100);
    if (fabs(h - p * 100) > 1e-6)
        return bad(l, owner, field,
                   "has more than two decimals (customers are cut into 10,000 buckets)");
    *hundredths = (uint32_t)h;
    return NBX_OK;
}

/* A policy path, relative to the deployment file's directory unless
 * absolute; malloc'd. */
static int resolve_path(loader *l, json_t *v, const char *owner, const char *field, char **out)
{
    *out = NULL;
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > NBX_DEPLOYMENT_PATH_MAX ||
        strlen(json_string_value(v)) != json_string_length(v))
        return bad(l, owner, field, "must be a policy file's path (1 to 4096 bytes, no NUL)");
    const char *rel = json_string_value(v);
    const char *slash = strrchr(l->path, '/');
    size_t dir = rel[0] == '/' || !slash ? 0 : (size_t)(slash - l->path) + 1;
    size_t n = strlen(rel);
    char *p = malloc(dir + n + 1);
    if (!p)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    memcpy(p, l->path, dir);
    memcpy(p + dir, rel, n + 1);
    *out = p;
    return NBX_OK;
}

/* Read and check the policy file (nbx_policy_load); its errors are
 * prefixed with where the deployment names it. */
static int load_policy(loader *l, const char *path, const char *owner, const char *field,
                       nbx_policy **out)
{
    *out = NULL;
    if (l->flags & NBX_DEPLOYMENT_NO_POLICIES)
        return NBX_OK;
    int rc = nbx_policy_load(path, out, l->e);
    if (rc == NBX_OK)
        return NBX_OK;
    if (owner)
        return nbx_err_prefix(l->e, "%s: %s: field '%s': ", l->path, owner, field);
    return nbx_err_prefix(l->e, "%s: field '%s': ", l->path, field);
}

/* ========================================================================
 * Sections
 * ======================================================================== */

static int load_holdout(loader *l, json_t *root)
{
    json_t *h = json_object_get(root, "holdout");
    if (!h || json_is_null(h))
        return NBX_OK;
    if (!json_is_object(h))
        return bad(l, NULL, "holdout", "must be an object {\"percent\": P}");
    static const char *const keys[] = {"percent", NULL};
    int rc = only_keys(l, h, "holdout", "", keys);
    if (rc == NBX_OK)
        rc = get_percent(l, h, "holdout", "percent", &l->d->holdout_buckets);
    return rc;
}

static int load_abort(loader *l, json_t *arm, const char *owner, bool first, nbx_arm_abort *out)
{
    out->min_decisions = 0;
    out->max_fallback_rate = NAN;
    out->min_accept_rate_ratio = NAN;
    json_t *a = json_object_get(arm, "abort");
    if (!a || json_is_null(a))
        return NBX_OK;
    if (!json_is_object(a))
        return bad(l, owner, "abort", "must be an object");
    static const char *const keys[] = {"min_decisions", "max_fallback_rate",
                                       "min_accept_rate_ratio", NULL};
    int rc = only_keys(l, a, owner, "abort.", keys);
    if (rc)
        return rc;
    json_t *v = json_object_get(a, "min_decisions");
    if (!v)
        return bad(l, owner, "abort.min_decisions", "is required with abort rules");
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > INT64_C(1000000000000))
        return bad(l, owner, "abort.min_decisions", "must be an integer from 1 to 10^12");
    out->min_decisions = (uint64_t)json_integer_value(v);
    v = json_object_get(a, "max_fallback_rate");
    if (v) {
        double r = json_is_number(v) ? json_number_value(v) : NAN;
        if (!(r >= 0 && r <= 1))
            return bad(l, owner, "abort.max_fallback_rate", "must be a number from 0 to 1");
        out->max_fallback_rate = r;
    }
    v = json_object_get(a, "min_accept_rate_ratio");
    if (v) {
        double r = json_is_number(v) ? json_number_value(v) : NAN;
        if (!(r >= 0 && r <= 1e6))
            return bad(l, owner, "abort.min_accept_rate_ratio",
                       "must be a number from 0 (an accept rate ratio)");
        if (first)
            return bad(l, owner, "abort.min_accept_rate_ratio",
                       "compares an arm with the first arm: the first arm cannot have it");
        out->min_accept_rate_ratio = r;
    }
    if (isnan(out->max_fallback_rate) && isnan(out->min_accept_rate_ratio))
        return bad(l, owner, "abort", "has no rule (max_fallback_rate, min_accept_rate_ratio)");
    return NBX_OK;
}

static int load_arm(loader *l, json_t *a, size_t i, nbx_arm *arm)
{
    char owner[96];
    snprintf(owner, sizeof owner, "arms[%zu]", i);
    if (!json_is_object(a))
        return nbx_err_set(l->e, NBX_EPARSE, "%s: %s: must be an object", l->path, owner);
    int rc = get_name(l, a, owner, arm->name);
    if (rc)
        return rc;
    snprintf(owner, sizeof owner, "arm '%s'", arm->name);
    if (strcmp(arm->name, NBX_ARM_HOLDOUT) == 0)
        return bad(l, owner, "name", "'holdout' is reserved for the holdout");
    for (size_t k = 0; k < i; k++)
        if (strcmp(l->d->arms[k].name, arm->name) == 0)
            return bad(l, owner, "name", "duplicate");
    static const char *const keys[] = {"name", "policy", "percent", "abort", NULL};
    if ((rc = only_keys(l, a, owner, "", keys)) ||
        (rc = get_percent(l, a, owner, "percent", &arm->percent)) ||
        (rc = load_abort(l, a, owner, i == 0, &arm->abort)))
        return rc;
    json_t *p = json_object_get(a, "policy");
    if (!p)
        return bad(l, owner, "policy", "is required");
    if ((rc = resolve_path(l, p, owner, "policy", &arm->policy_path)))
        return rc;
    return load_policy(l, arm->policy_path, owner, "policy", &arm->policy);
}

/* Arms cut the buckets the holdout leaves, [H, 10000), into consecutive
 * ranges in file order, each proportional to its percent; the last ends at
 * 10000 exactly, so every bucket has one arm. */
static void cut_buckets(nbx_deployment *d)
{
    uint32_t h = d->holdout_buckets, left = NBX_ASSIGN_BUCKETS - h;
    uint64_t cum = 0;
    for (uint32_t i = 0; i < d->n_arms; i++) {
        d->arms[i].bucket_lo = h + (uint32_t)(left * cum / 10000);
        cum += d->arms[i].percent;
        d->arms[i].bucket_hi = h + (uint32_t)(left * cum / 10000);
    }
}

static int load_arms(loader *l, json_t *root)
{
    json_t *arms = json_object_get(root, "arms");
    if (!json_is_array(arms) || json_array_size(arms) == 0)
        return bad(l, NULL, "arms", "must be a non-empty array");
    if (json_array_size(arms) > NBX_DEPLOYMENT_ARMS_MAX)
        return nbx_err_set(l->e, NBX_ELIMIT, "%s: field 'arms': %zu arms, the limit is %d", l->path,
                           json_array_size(arms), NBX_DEPLOYMENT_ARMS_MAX);
    nbx_deployment *d = l->d;
    d->arms = calloc(json_array_size(arms), sizeof *d->arms);
    if (!d->arms)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    uint32_t sum = 0;
    for (size_t i = 0; i < json_array_size(arms); i++) {
        int rc = load_arm(l, json_array_get(arms, i), i, &d->arms[i]);
        d->n_arms = (uint32_t)i + 1; /* freed with the deployment, also half-built */
        if (rc)
            return rc;
        sum += d->arms[i].percent;
    }
    if (sum != 10000)
        return nbx_err_set(l->e, NBX_EPARSE,
                           "%s: field 'arms': the arms' percents add up to %u.%02u, not 100 "
                           "(they share the customers not held out)",
                           l->path, sum / 100, sum % 100);
    cut_buckets(d);
    return NBX_OK;
}

static int load_shadow(loader *l, json_t *root)
{
    json_t *s = json_object_get(root, "shadow");
    if (!s || json_is_null(s))
        return NBX_OK;
    if (!json_is_array(s))
        return bad(l, NULL, "shadow", "must be an array of policy paths");
    if (json_array_size(s) > NBX_DEPLOYMENT_SHADOW_MAX)
        return nbx_err_set(l->e, NBX_ELIMIT, "%s: field 'shadow': %zu policies, the limit is %d",
                           l->path, json_array_size(s), NBX_DEPLOYMENT_SHADOW_MAX);
    nbx_deployment *d = l->d;
    size_t n = json_array_size(s);
    d->shadow_paths = calloc(n ? n : 1, sizeof *d->shadow_paths);
    d->shadow = calloc(n ? n : 1, sizeof *d->shadow);
    if (!d->shadow_paths || !d->shadow)
        return nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    for (size_t i = 0; i < n; i++) {
        char field[32];
        snprintf(field, sizeof field, "shadow[%zu]", i);
        d->n_shadow = (uint32_t)i + 1;
        int rc = resolve_path(l, json_array_get(s, i), NULL, field, &d->shadow_paths[i]);
        if (rc == NBX_OK)
            rc = load_policy(l, d->shadow_paths[i], NULL, field, &d->shadow[i]);
        if (rc)
            return rc;
    }
    return NBX_OK;
}

static int deployment_parse(loader *l, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return nbx_err_set(l->e, NBX_EPARSE, "%s:%d:%d: %s", l->path, jerr.line, jerr.column,
                           jerr.text);
    int rc = NBX_OK;
    static const char *const keys[] = {"name", "salt", "holdout", "arms", "shadow", NULL};
    nbx_deployment *d = l->d;
    json_t *salt = json_object_get(root, "salt");
    if (!json_is_object(root))
        rc = nbx_err_set(l->e, NBX_EPARSE, "%s: the deployment must be a JSON object", l->path);
    else if ((rc = only_keys(l, root, NULL, "", keys)) || (rc = get_name(l, root, NULL, d->name)))
        ;
    else if (strchr(d->name, '.'))
        /* decision ids are UUID.DEPLOYMENT.ARM, split at the first '.' after
         * the UUID, so an event names its arm by its id alone */
        rc = bad(l, NULL, "name", "must not contain '.' (an arm's name may)");
    else if (!salt)
        rc = bad(l, NULL, "salt", "is required (the same salt keeps customers in their arms)");
    else if (!json_is_string(salt) || json_string_length(salt) == 0 ||
             json_string_length(salt) > NBX_DEPLOYMENT_SALT_MAX)
        rc = bad(l, NULL, "salt", "must be a string of 1 to 256 bytes");
    else if (!(d->salt = malloc(json_string_length(salt) + 1)))
        rc = nbx_err_set(l->e, NBX_ENOMEM, "%s: out of memory", l->path);
    if (rc == NBX_OK) {
        d->salt_len = json_string_length(salt);
        memcpy(d->salt, json_string_value(salt), d->salt_len + 1);
        d->seed = nbx_hash64(d->salt, d->salt_len, 0);
        if ((rc = load_holdout(l, root)) == NBX_OK && (rc = load_arms(l, root)) == NBX_OK)
            rc = load_shadow(l, root);
    }
    json_decref(root);
    return rc;
}

/* ========================================================================
 * Lifetime
 * ======================================================================== */

static void deployment_free(nbx_deployment *d)
{
    if (!d)
        return;
    for (uint32_t i = 0; i < d->n_arms; i++) {
        free(d->arms[i].policy_path);
        nbx_policy_unref(d->arms[i].policy);
    }
    for (uint32_t i = 0; i < d->n_shadow; i++) {
        free(d->shadow_paths[i]);
        nbx_policy_unref(d->shadow[i]);
    }
    free(d->arms);
    free(d->shadow_paths);
    free(d->shadow);
    free(d->salt);
    free(d->path);
    free(d);
}

int nbx_deployment_load_text(const char *path, const char *text, size_t len, unsigned flags,
                             nbx_deployment **out, nbx_err *e)
{
    *out = NULL;
    if (len > NBX_DEPLOYMENT_FILE_MAX)
        return nbx_err_set(e, NBX_ELIMIT, "%s: the deployment is over the limit of %u bytes", path,
                           (unsigned)NBX_DEPLOYMENT_FILE_MAX);
    nbx_deployment *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        return nbx_err_set(e, NBX_ENOMEM, "%s: out of memory", path);
    }
    atomic_init(&d->refs, 1);
    d->version = nbx_hash64(text, len, 0);
    nbx_hex64(d->version, d->version_hex);
    loader l = {d, path, flags, e};
    int rc = deployment_parse(&l, text, len);
    if (rc) {
        deployment_free(d);
        return rc;
    }
    *out = d;
    return NBX_OK;
}

int nbx_deployment_load(const char *path, unsigned flags, nbx_deployment **out, nbx_err *e)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = nbx_read_file(path, NBX_DEPLOYMENT_FILE_MAX, &text, &len, e);
    if (rc)
        return rc;
    rc = nbx_deployment_load_text(path, text, len, flags, out, e);
    free(text);
    return rc;
}

nbx_deployment *nbx_deployment_ref(nbx_deployment *d)
{
    if (d)
        atomic_fetch_add_explicit(&d->refs, 1, memory_order_relaxed);
    return d;
}

void nbx_deployment_unref(nbx_deployment *d)
{
    if (d && atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) == 1)
        deployment_free(d);
}

/* ========================================================================
 * Assignment
 * ======================================================================== */

uint32_t nbx_deployment_bucket(const nbx_deployment *d, nbx_sv customer)
{
    return (uint32_t)(nbx_hash64(customer.ptr, customer.len, d->seed) % NBX_ASSIGN_BUCKETS);
}

uint32_t nbx_deployment_arm_of(const nbx_deployment *d, nbx_sv customer)
{
    uint32_t b = nbx_deployment_bucket(d, customer);
    if (b < d->holdout_buckets)
        return NBX_ARM_INDEX_HOLDOUT;
    for (uint32_t i = 0; i < d->n_arms; i++)
        if (b < d->arms[i].bucket_hi)
            return i;
    return d->n_arms - 1; /* unreachable: the last arm ends at 10000 */
}

uint32_t nbx_deployment_serving_arm(const nbx_deployment *d, uint32_t assigned,
                                    nbx_arm_killed_fn killed, void *ud)
{
    if (assigned == NBX_ARM_INDEX_HOLDOUT || !killed || !killed(ud, &d->arms[assigned]))
        return assigned;
    /* the first arm is the champion: the known-good treatment */
    if (assigned != 0 && !killed(ud, &d->arms[0]))
        return 0;
    return NBX_ARM_INDEX_HOLDOUT;
}

/* ========================================================================
 * Public calls
 * ======================================================================== */

NBX_API int nbx_deployment_open(const char *path, unsigned flags, nbx_deployment **out)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_deployment_open: NULL argument");
    if (flags & ~(unsigned)NBX_DEPLOYMENT_NO_POLICIES)
        return nbx_fail(NULL, NBX_EINVAL, "nbx_deployment_open: unknown flags 0x%x", flags);
    nbx_err e = {0};
    int rc = nbx_deployment_load(path, flags, out, &e);
    if (rc)
        return nbx_publish(NULL, &e);
    nbx_clear_error(NULL);
    return NBX_OK;
}

NBX_API void nbx_deployment_close(nbx_deployment *d)
{
    nbx_deployment_unref(d);
}

NBX_API const char *nbx_deployment_name(const nbx_deployment *d)
{
    return d ? d->name : NULL;
}

NBX_API const char *nbx_deployment_version(const nbx_deployment *d)
{
    return d ? d->version_hex : NULL;
}

NBX_API size_t nbx_deployment_arm_count(const nbx_deployment *d)
{
    return d ? d->n_arms : 0;
}

NBX_API const char *nbx_deployment_arm_name(const nbx_deployment *d, size_t i)
{
    return d && i < d->n_arms ? d->arms[i].name : NULL;
}

NBX_API uint32_t nbx_assign_bucket(const char *salt, size_t salt_len, const char *customer,
                                   size_t len)
{
    if ((!salt && salt_len) || (!customer && len))
        return UINT32_MAX;
    uint64_t seed = nbx_hash64(salt, salt_len, 0);
    return (uint32_t)(nbx_hash64(customer, len, seed) % NBX_ASSIGN_BUCKETS);
}

NBX_API const char *nbx_deployment_assign(const nbx_deployment *d, const char *customer, size_t len)
{
    if (!d || !customer)
        return NULL;
    uint32_t arm = nbx_deployment_arm_of(d, (nbx_sv){customer, len});
    return arm == NBX_ARM_INDEX_HOLDOUT ? NBX_ARM_HOLDOUT : d->arms[arm].name;
}
