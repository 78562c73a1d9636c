/*
 * sandbox_io.c: a decision's inputs into the policy's state, its scores out.
 *
 * Offers and placements become Lua tables once per state. Per decision the
 * C side refills the customer's maps and the session in place, writes the
 * candidates into flat arrays the driver (sandbox.lua) reads, and reads the
 * scores back: the hot path crosses from C into Lua once per decision.
 */
#include "sandbox_int.h"

#include <jansson.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ========================================================================
 * The catalog, once per state
 * ======================================================================== */

static void sb_push_json(lua_State *L, int slots, json_t *v, int depth);

/* Every member of a JSON object but the nulls and the strings too long for
 * a policy (SB_STRING_MAX), as fields of the table at t. */
static void sb_set_json_fields(lua_State *L, int slots, int t, json_t *obj, int depth)
{
    const char *key;
    json_t *item;
    json_object_foreach(obj, key, item)
    {
        if (json_is_null(item) ||
            (json_is_string(item) && json_string_length(item) > SB_STRING_MAX))
            continue;
        lua_pushstring(L, key);
        sb_push_json(L, slots, item, depth);
        lua_rawset(L, t);
    }
}

/* A JSON value from the catalog as Lua data: objects and arrays become
 * read-only proxies, null becomes nil. Bounded by NBX_JSON_DEPTH_MAX. */
static void sb_push_json(lua_State *L, int slots, json_t *v, int depth)
{
    if (depth > NBX_JSON_DEPTH_MAX)
        luaL_error(L, "catalog value nested deeper than %d levels", NBX_JSON_DEPTH_MAX);
    luaL_checkstack(L, 4, "catalog value");
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        lua_createtable(L, 0, (int)json_object_size(v));
        sb_set_json_fields(L, slots, lua_gettop(L), v, depth + 1);
        sb_make_constant_proxy(L, slots);
        return;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            json_t *item = json_array_get(v, i);
            if (json_is_null(item) ||
                (json_is_string(item) && json_string_length(item) > SB_STRING_MAX))
                continue;
            sb_push_json(L, slots, item, depth + 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        sb_make_constant_proxy(L, slots);
        return;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        return;
    case JSON_INTEGER:
        lua_pushnumber(L, (lua_Number)json_integer_value(v));
        return;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(v));
        return;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        return;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        return;
    default:
        lua_pushnil(L);
        return;
    }
}

static void sb_set_number(lua_State *L, int t, const char *field, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, t, field);
}

/* One offer: every field of its JSON object, then the values the engine
 * uses, with the catalog's defaults applied, so nbx helpers agree with C.
 * Leaves its proxy on the stack. */
static void sb_push_offer(lua_State *L, int slots, const nbx_offer *o)
{
    json_t *obj = o->json;
    lua_createtable(L, 0, obj ? (int)json_object_size(obj) + 4 : 12);
    int t = lua_gettop(L);
    if (obj && json_is_object(obj))
        sb_set_json_fields(L, slots, t, obj, 1);
    lua_pushlstring(L, o->id.ptr, o->id.len);
    lua_setfield(L, t, "id");
    lua_pushstring(L, o->kind == NBX_KIND_MODULE ? "module" : "offer");
    lua_setfield(L, t, "kind");
    if (o->category.len) {
        lua_pushlstring(L, o->category.ptr, o->category.len);
        lua_setfield(L, t, "category");
    }
    sb_set_number(L, t, "price", o->price);
    sb_set_number(L, t, "unit_cost", o->unit_cost);
    sb_set_number(L, t, "discount", o->discount);
    sb_set_number(L, t, "serving_cost", o->serving_cost);
    sb_set_number(L, t, "base_propensity", o->base_propensity);
    sb_set_number(L, t, "margin", o->margin);
    sb_set_number(L, t, "discount_pct", o->discount_pct);
    sb_make_constant_proxy(L, slots);
}

void sb_push_catalog(lua_State *L, int slots, const nbx_catalog *c)
{
    int n_offers = c ? (int)c->n_offers : 0;
    lua_createtable(L, n_offers, 0);
    int offers = lua_gettop(L);
    lua_createtable(L, 0, n_offers);
    int index = lua_gettop(L);
    lua_createtable(L, n_offers, 0);
    int margin = lua_gettop(L);
    lua_createtable(L, n_offers, 0);
    int cost = lua_gettop(L);
    for (int i = 0; i < n_offers; i++) {
        const nbx_offer *o = &c->offers[i];
        sb_push_offer(L, slots, o);
        lua_pushvalue(L, -1);
        lua_rawseti(L, offers, i + 1);
        lua_pushnumber(L, i + 1);
        lua_rawset(L, index);
        lua_pushnumber(L, o->margin);
        lua_rawseti(L, margin, i + 1);
        lua_pushnumber(L, o->serving_cost);
        lua_rawseti(L, cost, i + 1);
    }
    sb_slot_set(L, slots, SLOT_COST);
    sb_slot_set(L, slots, SLOT_MARGIN);
    sb_slot_set(L, slots, SLOT_OFFER_INDEX);
    sb_slot_set(L, slots, SLOT_OFFERS);
    lua_createtable(L, c ? (int)c->n_placements : 0, 0);
    for (uint32_t i = 0; c && i < c->n_placements; i++) {
        lua_pushlstring(L, c->placements[i].id.ptr, c->placements[i].id.len);
        lua_rawseti(L, -2, (int)i + 1);
    }
    sb_slot_set(L, slots, SLOT_PLACES);
}

/* ========================================================================
 * One decision's inputs
 * ======================================================================== */

/* Push the input map in `slot`, emptied if an earlier decision filled it,
 * and note whether this decision fills it. Returns its stack index. */
static int sb_refill_map(lua_State *L, nbx_sandbox *sb, int slots, int slot, int map, bool filling)
{
    sb_slot_get(L, slots, slot);
    int t = lua_gettop(L);
    if (sb->map_dirty[map]) {
        sb_slot_get(L, slots, SLOT_CLEAR);
        lua_pushvalue(L, t);
        lua_call(L, 1, 0);
    }
    sb->map_dirty[map] = filling;
    return t;
}

static void sb_fill_profile_maps(lua_State *L, nbx_sandbox *sb, int slots, const nbx_profile *p)
{
    static const nbx_profile empty;
    if (!p)
        p = &empty;
    int t = sb_refill_map(L, sb, slots, SLOT_ATTRS, MAP_ATTRS, p->n_attrs > 0);
    for (uint32_t i = 0; i < p->n_attrs; i++) {
        const nbx_attr *a = &p->attrs[i];
        lua_pushlstring(L, a->key.ptr, a->key.len);
        if (a->type == NBX_ATTR_STRING)
            lua_pushlstring(L, a->string.ptr, a->string.len);
        else if (a->type == NBX_ATTR_NUMBER)
            lua_pushnumber(L, a->number);
        else if (a->type == NBX_ATTR_BOOL)
            lua_pushboolean(L, a->boolean);
        else
            lua_pushnil(L);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);

    t = sb_refill_map(L, sb, slots, SLOT_CONSENT, MAP_CONSENT, p->n_consent > 0);
    for (uint32_t i = 0; i < p->n_consent; i++) {
        lua_pushlstring(L, p->consent[i].purpose.ptr, p->consent[i].purpose.len);
        lua_pushboolean(L, p->consent[i].state == 1);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);

    t = sb_refill_map(L, sb, slots, SLOT_PROPENSITY, MAP_PROPENSITY, p->n_propensity > 0);
    for (uint32_t i = 0; i < p->n_propensity; i++) {
        lua_pushlstring(L, p->propensity[i].key.ptr, p->propensity[i].key.len);
        lua_pushnumber(L, p->propensity[i].value);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);
}

static void sb_fill_session(lua_State *L, nbx_sandbox *sb, int slots, const nbx_sandbox_input *in)
{
    int t = sb_refill_map(L, sb, slots, SLOT_SESS, MAP_SESSION, in->n_session > 0);
    for (size_t i = 0; i < in->n_session; i++) {
        if (!in->session[i].key || !in->session[i].value)
            continue;
        lua_pushstring(L, in->session[i].key);
        lua_pushstring(L, in->session[i].value);
        lua_rawset(L, t);
    }
    lua_pop(L, 1);
}

static void sb_push_time(lua_State *L, int64_t ms)
{
    if (ms)
        lua_pushnumber(L, (double)ms / 1000.0);
    else
        lua_pushnil(L);
}

/* ========================================================================
 * The arrays the driver and C share
 * ======================================================================== */

static void sb_share(lua_State *L, int arrays, int cast, const char *field, const char *type,
                     void *p)
{
    lua_pushvalue(L, cast);
    lua_pushstring(L, type);
    lua_pushlightuserdata(L, p);
    lua_call(L, 2, 1);
    lua_setfield(L, arrays, field);
}

void sb_share_arrays(lua_State *L, nbx_sandbox *sb, int slots)
{
    struct sb_shared *a = &sb->shared;
    sb_slot_get(L, slots, SLOT_ARRAYS);
    int arrays = lua_gettop(L);
    sb_slot_get(L, slots, SLOT_CAST);
    int cast = lua_gettop(L);
    sb_share(L, arrays, cast, "CO", "int32_t *", a->co);
    sb_share(L, arrays, cast, "CP", "int32_t *", a->cp);
    sb_share(L, arrays, cast, "X", "double *", a->x);
    sb_share(L, arrays, cast, "S", "double *", a->s);
    sb_share(L, arrays, cast, "M", "double *", a->m);
    sb_share(L, arrays, cast, "F", "uint8_t *", a->f);
    sb_share(L, arrays, cast, "PR", "double *", a->pr);
    lua_settop(L, arrays - 1);
    a->stale = false;
}

static double sb_time_value(int64_t ms)
{
    return ms ? (double)ms / 1000.0 : 0;
}

/* CO, CP and X for the live candidates. */
static void sb_fill_candidates(nbx_sandbox *sb, sb_run *r)
{
    struct sb_shared *a = &sb->shared;
    size_t xj = 0;
    for (size_t k = 0; k < r->n; k++) {
        const nbx_candidate *c = &r->in->cand[sb->live[k]];
        const nbx_exposure_summary *s = c->exposure;
        a->co[k + 1] = s ? -(int32_t)c->offer - 1 : (int32_t)c->offer + 1;
        a->cp[k + 1] = (int32_t)c->placement + 1;
        if (!s)
            continue;
        double *x = a->x + xj + 1;
        xj += 7;
        x[0] = s->impressions;
        x[1] = s->clicks;
        x[2] = s->accepts;
        x[3] = s->dismisses;
        x[4] = sb_time_value(s->last_impression);
        x[5] = sb_time_value(s->last_dismiss);
        x[6] = sb_time_value(s->last_accept);
    }
}

/* PR: the customer's propensity for every offer, as caps.c resolved them
 * (nbx_caps_propensities), else resolved here by the same chain. */
static void sb_fill_propensities(nbx_sandbox *sb, sb_run *r)
{
    const nbx_sandbox_input *in = r->in;
    const nbx_catalog *c = sb->catalog;
    if (!c || c->n_offers == 0)
        return;
    if (in->propensity) {
        memcpy(sb->shared.pr + 1, in->propensity, c->n_offers * sizeof *in->propensity);
        return;
    }
    static const nbx_profile empty;
    const nbx_profile *p = in->profile ? in->profile : &empty;
    for (uint32_t i = 0; i < c->n_offers; i++)
        sb->shared.pr[i + 1] = nbx_offer_propensity(p, &c->offers[i]);
}

/* Arguments of the driver: n, now, then the customer's scalars. */
static int sb_push_driver_args(lua_State *L, const sb_run *r)
{
    const nbx_sandbox_input *in = r->in;
    const nbx_profile *p = in->profile;
    const nbx_rfm *rfm = p ? &p->rfm : NULL;
    lua_pushnumber(L, (double)r->n);
    lua_pushnumber(L, (double)in->now_ms / 1000.0);
    if (p && p->id.ptr)
        lua_pushlstring(L, p->id.ptr, p->id.len);
    else
        lua_pushnil(L);
    lua_pushboolean(L, in->anonymous || !p);
    if (p && (p->fields & NBX_PF_LTV))
        lua_pushnumber(L, p->ltv);
    else
        lua_pushnil(L);
    if (p && (p->fields & NBX_PF_CHURN))
        lua_pushnumber(L, p->churn);
    else
        lua_pushnil(L);
    lua_pushnumber(L, rfm ? rfm->r : 0);
    lua_pushnumber(L, rfm ? rfm->f : 0);
    lua_pushnumber(L, rfm ? rfm->m : 0);
    const char *seg = rfm && rfm->segment ? nbx_segment_name(rfm->segment) : NULL;
    if (seg)
        lua_pushstring(L, seg);
    else
        lua_pushnil(L);
    sb_push_time(L, rfm ? rfm->first_purchase : 0);
    sb_push_time(L, rfm ? rfm->last_purchase : 0);
    lua_pushnumber(L, rfm ? (double)rfm->orders : 0);
    lua_pushnumber(L, rfm ? rfm->revenue : 0);
    lua_pushnumber(L, rfm ? rfm->margin : 0);
    if (rfm && rfm->last_purchase)
        lua_pushnumber(L, (double)(in->now_ms - rfm->last_purchase) / (double)NBX_MS_PER_DAY);
    else
        lua_pushnil(L);
    return 16;
}

int sb_push_inputs(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r)
{
    sb_fill_profile_maps(L, sb, slots, r->in->profile);
    sb_fill_session(L, sb, slots, r->in);
    sb_fill_candidates(sb, r);
    sb_fill_propensities(sb, r);
    sb_slot_get(L, slots, SLOT_DRIVER);
    return sb_push_driver_args(L, r);
}

/* ========================================================================
 * Scores out
 * ======================================================================== */

static void sb_describe_value(lua_State *L, int idx, char *out, size_t n)
{
    int t = lua_type(L, idx);
    if (t == LUA_TNUMBER) {
        double v = lua_tonumber(L, idx);
        snprintf(out, n, "%s", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
    } else if (t == LUA_TSTRING) {
        snprintf(out, n, "a string (\"%.40s\")", lua_tostring(L, idx));
    } else if (t == LUA_TNIL || t == LUA_TNONE) {
        snprintf(out, n, "nil");
    } else {
        snprintf(out, n, "a %s", lua_typename(L, t));
    }
}

static void sb_describe_number(double v, char *out, size_t n)
{
    snprintf(out, n, "%s", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
}

/* Candidate k's results were not numbers: BAD holds them (the driver
 * stopped there). Which one, and what it was. */
static void sb_describe_bad(lua_State *L, int slots, sb_run *r, size_t k)
{
    sb_slot_get(L, slots, SLOT_BAD);
    int bad = lua_gettop(L);
    lua_rawgeti(L, bad, 1);
    bool score_bad = lua_type(L, -1) != LUA_TNUMBER;
    if (!score_bad) {
        lua_pop(L, 1);
        lua_rawgeti(L, bad, 2);
    }
    r->bad_result = score_bad ? 1 : 2;
    sb_describe_value(L, -1, r->bad_value, sizeof r->bad_value);
    lua_pop(L, 1);
    /* let go of what the policy returned: it must not outlive the decision */
    lua_pushnil(L);
    lua_rawseti(L, bad, 1);
    lua_pushnil(L);
    lua_rawseti(L, bad, 2);
    lua_pop(L, 1);
    r->current = k;
}

static void sb_read_reasons(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r);

/* Check the results the driver left in the shared arrays; commit them to
 * the candidates only if every score is a finite number and every expected
 * margin nil or one. Otherwise note the first offending candidate and
 * leave the candidates untouched. */
void sb_read_results(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r)
{
    const struct sb_shared *a = &sb->shared;
    bool reasons = false;
    for (size_t k = 1; k <= r->n; k++) {
        uint8_t f = a->f[k];
        if (f == SB_F_INELIGIBLE) {
            sb->results[k - 1].why = SIZE_MAX;
            reasons = true;
            continue;
        }
        if (f == SB_F_BAD) {
            sb_describe_bad(L, slots, r, k);
            return;
        }
        if (f != SB_F_SCORED && f != SB_F_SCORED_M) { /* cannot happen: the driver ran them all */
            r->bad_result = 1;
            snprintf(r->bad_value, sizeof r->bad_value, "nothing");
            r->current = k;
            return;
        }
        if (!isfinite(a->s[k])) {
            r->bad_result = 1;
            sb_describe_number(a->s[k], r->bad_value, sizeof r->bad_value);
            r->current = k;
            return;
        }
        if (f == SB_F_SCORED_M && !isfinite(a->m[k])) {
            r->bad_result = 2;
            sb_describe_number(a->m[k], r->bad_value, sizeof r->bad_value);
            r->current = k;
            return;
        }
    }
    if (reasons) {
        if (r->in->explain)
            sb_read_reasons(L, sb, slots, r);
        sb_slot_get(L, slots, SLOT_CLEAR);
        sb_slot_get(L, slots, SLOT_R);
        lua_call(L, 1, 0);
    }
    for (size_t k = 1; k <= r->n; k++) {
        nbx_candidate *c = &r->in->cand[sb->live[k - 1]];
        uint8_t f = a->f[k];
        c->scored = f != SB_F_INELIGIBLE;
        if (c->scored) {
            c->score = a->s[k];
            c->expected_margin = f == SB_F_SCORED_M ? a->m[k] : NAN;
        } else {
            size_t why = sb->results[k - 1].why;
            c->excluded = NBX_EXCLUDED_INELIGIBLE;
            c->why = why == SIZE_MAX || sb->text.oom ? NULL : sb->text.data + why;
        }
    }
}

/* ========================================================================
 * Words for explanations: eligible()'s reasons, nbx.log() lines
 * ======================================================================== */

/* Append the string at idx to sb->text, escaped and NUL-terminated;
 * returns its offset (SIZE_MAX when out of memory). Policy text: escaped
 * here, once, so no caller can forget. */
static size_t sb_keep_text(nbx_sandbox *sb, lua_State *L, int idx, size_t max)
{
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (len > max)
        len = max;
    size_t cap = 4 * len + 1; /* every byte may become \xNN */
    if (nbx_buf_reserve(&sb->text, cap) != NBX_OK)
        return SIZE_MAX;
    size_t off = sb->text.len;
    sb->text.len += nbx_escape_text(sb->text.data + off, cap, s, len) + 1;
    return off;
}

/* R[k] for the candidates eligible() turned down: a string or a number is
 * the reason (cut to SB_WHY_MAX bytes); anything else is no reason. */
static void sb_read_reasons(lua_State *L, nbx_sandbox *sb, int slots, sb_run *r)
{
    sb_slot_get(L, slots, SLOT_R);
    int rt = lua_gettop(L);
    for (size_t k = 0; k < r->n; k++) {
        struct sb_result *res = &sb->results[k];
        if (sb->shared.f[k + 1] != SB_F_INELIGIBLE)
            continue;
        lua_rawgeti(L, rt, (int)k + 1);
        int t = lua_type(L, -1);
        if (t == LUA_TSTRING || t == LUA_TNUMBER)
            res->why = sb_keep_text(sb, L, -1, SB_WHY_MAX);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

void sb_log_switch(lua_State *L, nbx_sandbox *sb, int slots, bool on)
{
    if (sb->log_on == on)
        return;
    sb_slot_get(L, slots, SLOT_LOG);
    lua_pushboolean(L, on);
    lua_setfield(L, -2, "on");
    lua_pop(L, 1);
    sb->log_on = on;
}

void sb_read_log(lua_State *L, nbx_sandbox *sb, int slots)
{
    sb_slot_get(L, slots, SLOT_LOG);
    int t = lua_gettop(L);
    lua_getfield(L, t, "n");
    size_t n = (size_t)lua_tonumber(L, -1);
    lua_getfield(L, t, "dropped");
    sb->log_dropped = (uint32_t)lua_tonumber(L, -1);
    lua_pop(L, 2);
    if (n > SB_LOG_LINES)
        n = SB_LOG_LINES;
    sb->n_log = 0;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, t, (int)i + 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t off = sb_keep_text(sb, L, -1, SB_LOG_LINE_MAX);
            if (off != SIZE_MAX)
                sb->log_off[sb->n_log++] = off;
        }
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawseti(L, t, (int)i + 1);
    }
    lua_pushnumber(L, 0);
    lua_setfield(L, t, "n");
    lua_pushnumber(L, 0);
    lua_setfield(L, t, "dropped");
    lua_pop(L, 1);
}
