/*
 * codec.c: every stored layout: the keys and values of each database, and
 * the msgpack reader they are decoded with. docs/format.md describes them;
 * no other file packs or unpacks a stored byte.
 *
 * Writing uses msgpack-c's packer. Reading uses the small cursor below: a
 * decision decodes a profile on every request, and walking the bytes once
 * into arena arrays, with strings left in the LMDB page, costs a fraction of
 * building a msgpack-c object tree first (docs/performance.md).
 *
 * Profile: array [attrs map, consent map, propensity map, ltv|nil,
 * churn|nil, rfm|nil, updated_at]; rfm is array [first_purchase,
 * last_purchase, orders, revenue, margin, r, f, m, segment (, base)], base
 * being [as_of, first_purchase, last_purchase, orders, revenue, margin], the
 * aggregates an import gave, or [as_of] when they are the aggregates. Maps are written sorted by
 * key. Decoders accept longer arrays and ignore the extra elements, so a later format can append
 * fields.
 */
#include "nbx_int.h"

#include <math.h>
#include <msgpack.h>
#include <string.h>

/* ========================================================================
 * Reader
 * ======================================================================== */

void nbx_mp_init(nbx_mp *m, const void *data, size_t len)
{
    m->p = data;
    m->end = m->p + len;
    m->bad = false;
}

static inline bool need(nbx_mp *m, size_t n)
{
    if (NBX_UNLIKELY((size_t)(m->end - m->p) < n)) {
        m->bad = true;
        return false;
    }
    return true;
}

static inline uint64_t be(const uint8_t *p, int n)
{
    switch (n) {
    case 8: {
        uint64_t v;
        memcpy(&v, p, 8);
        return __builtin_bswap64(v);
    }
    case 4: {
        uint32_t v;
        memcpy(&v, p, 4);
        return __builtin_bswap32(v);
    }
    case 2:
        return (uint64_t)p[0] << 8 | p[1];
    default:
        return p[0];
    }
}

static inline int mp_type(const nbx_mp *m)
{
    if (m->bad || m->p >= m->end)
        return -1;
    uint8_t b = *m->p;
    if (b <= 0x7f || (b >= 0xcc && b <= 0xcf))
        return MSGPACK_OBJECT_POSITIVE_INTEGER;
    if (b >= 0xe0 || (b >= 0xd0 && b <= 0xd3))
        return MSGPACK_OBJECT_NEGATIVE_INTEGER;
    if ((b & 0xf0) == 0x80 || b == 0xde || b == 0xdf)
        return MSGPACK_OBJECT_MAP;
    if ((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd)
        return MSGPACK_OBJECT_ARRAY;
    if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb))
        return MSGPACK_OBJECT_STR;
    switch (b) {
    case 0xc0:
        return MSGPACK_OBJECT_NIL;
    case 0xc2:
    case 0xc3:
        return MSGPACK_OBJECT_BOOLEAN;
    case 0xca:
        return MSGPACK_OBJECT_FLOAT32;
    case 0xcb:
        return MSGPACK_OBJECT_FLOAT64;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        return MSGPACK_OBJECT_BIN;
    default:
        return MSGPACK_OBJECT_EXT;
    }
}

/* A container's element count, checked against the bytes that follow:
 * every element takes at least one byte (a map entry two), so a count the
 * value cannot hold is corrupt here, before any caller loops over it (a
 * damaged count of 4294967295 kept readers busy for seconds). */
static inline uint32_t container(nbx_mp *m, uint8_t fix_mask, uint8_t fix_tag, uint8_t tag16,
                                 unsigned bytes_per_element)
{
    if (!need(m, 1))
        return 0;
    uint8_t b = *m->p;
    uint32_t n;
    if ((b & fix_mask) == fix_tag) {
        m->p++;
        n = b & (uint8_t)~fix_mask;
    } else if (b == tag16 && need(m, 3)) {
        m->p += 3;
        n = (uint32_t)be(m->p - 2, 2);
    } else if (b == tag16 + 1 && need(m, 5)) {
        m->p += 5;
        n = (uint32_t)be(m->p - 4, 4);
    } else {
        m->bad = true;
        return 0;
    }
    if ((uint64_t)n * bytes_per_element > (uint64_t)(m->end - m->p)) {
        m->bad = true;
        return 0;
    }
    return n;
}

static inline uint32_t mp_array(nbx_mp *m)
{
    return container(m, 0xf0, 0x90, 0xdc, 1);
}

static inline uint32_t mp_map(nbx_mp *m)
{
    return container(m, 0xf0, 0x80, 0xde, 2);
}

static inline bool mp_nil(nbx_mp *m)
{
    if (m->p < m->end && *m->p == 0xc0) {
        m->p++;
        return true;
    }
    return false;
}

static inline int64_t mp_int(nbx_mp *m)
{
    if (!need(m, 1))
        return 0;
    uint8_t b = *m->p++;
    if (b <= 0x7f)
        return b;
    if (b >= 0xe0)
        return (int8_t)b;
    int n;
    bool sign;
    switch (b) {
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        n = 1 << (b - 0xcc);
        sign = false;
        break;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3:
        n = 1 << (b - 0xd0);
        sign = true;
        break;
    default:
        m->bad = true;
        return 0;
    }
    if (!need(m, (size_t)n))
        return 0;
    uint64_t v = be(m->p, n);
    m->p += n;
    if (sign && n < 8 && (v >> (n * 8 - 1)))
        v |= ~UINT64_C(0) << (n * 8); /* sign-extend */
    return (int64_t)v;
}

static inline uint64_t mp_uint(nbx_mp *m)
{
    int64_t v = mp_int(m);
    if (v < 0)
        m->bad = true;
    return v < 0 ? 0 : (uint64_t)v;
}

static inline double mp_double(nbx_mp *m)
{
    if (!need(m, 1))
        return 0;
    uint8_t b = *m->p;
    if (b == 0xcb && need(m, 9)) {
        uint64_t bits = be(m->p + 1, 8);
        double d;
        memcpy(&d, &bits, sizeof d);
        m->p += 9;
        return d;
    }
    if (b == 0xca && need(m, 5)) {
        uint32_t bits = (uint32_t)be(m->p + 1, 4);
        float f;
        memcpy(&f, &bits, sizeof f);
        m->p += 5;
        return f;
    }
    return (double)mp_int(m);
}

static inline bool mp_bool(nbx_mp *m)
{
    if (!need(m, 1))
        return false;
    uint8_t b = *m->p++;
    if (b == 0xc3)
        return true;
    if (b != 0xc2)
        m->bad = true;
    return false;
}

static inline nbx_sv mp_str(nbx_mp *m)
{
    nbx_sv s = {"", 0};
    if (!need(m, 1))
        return s;
    uint8_t b = *m->p;
    size_t n, hdr;
    if ((b & 0xe0) == 0xa0) {
        n = b & 0x1f;
        hdr = 1;
    } else if (b == 0xd9 && need(m, 2)) {
        n = m->p[1];
        hdr = 2;
    } else if (b == 0xda && need(m, 3)) {
        n = (size_t)be(m->p + 1, 2);
        hdr = 3;
    } else if (b == 0xdb && need(m, 5)) {
        n = (size_t)be(m->p + 1, 4);
        hdr = 5;
    } else {
        m->bad = true;
        return s;
    }
    if (!need(m, hdr + n))
        return s;
    s.ptr = (const char *)m->p + hdr;
    s.len = n;
    m->p += hdr + n;
    return s;
}

void nbx_mp_skip(nbx_mp *m)
{
    /* Iterative: a pending count instead of recursion, so hostile nesting
     * cannot exhaust the stack. */
    uint64_t pending = 1;
    while (pending > 0 && !m->bad) {
        pending--;
        int t = mp_type(m);
        switch (t) {
        case MSGPACK_OBJECT_NIL:
            m->p++;
            break;
        case MSGPACK_OBJECT_BOOLEAN:
            mp_bool(m);
            break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            mp_int(m);
            break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            mp_double(m);
            break;
        case MSGPACK_OBJECT_STR:
            mp_str(m);
            break;
        case MSGPACK_OBJECT_ARRAY:
            pending += mp_array(m);
            break;
        case MSGPACK_OBJECT_MAP:
            pending += 2 * (uint64_t)mp_map(m);
            break;
        default:
            m->bad = true;
        }
    }
}

/* The exported reader; codec.c's own decoders use the inline versions. */
int nbx_mp_type(const nbx_mp *m)
{
    return mp_type(m);
}

int64_t nbx_mp_int(nbx_mp *m)
{
    return mp_int(m);
}

uint64_t nbx_mp_uint(nbx_mp *m)
{
    return mp_uint(m);
}

double nbx_mp_double(nbx_mp *m)
{
    return mp_double(m);
}

bool nbx_mp_bool(nbx_mp *m)
{
    return mp_bool(m);
}

nbx_sv nbx_mp_str(nbx_mp *m)
{
    return mp_str(m);
}

bool nbx_mp_nil(nbx_mp *m)
{
    return mp_nil(m);
}

uint32_t nbx_mp_array(nbx_mp *m)
{
    return mp_array(m);
}

uint32_t nbx_mp_map(nbx_mp *m)
{
    return mp_map(m);
}

/* ========================================================================
 * Profiles
 * ======================================================================== */

/* msgpack-c calls its writer for every element: copy inline while the
 * buffer has room (a reused scratch buffer always has) and leave growth to
 * nbx_buf. */
static int pack_write(void *data, const char *buf, size_t len)
{
    nbx_buf *b = data;
    if (NBX_LIKELY(b->cap - b->len > len)) {
        memcpy(b->data + b->len, buf, len);
        b->len += len;
        return 0;
    }
    return nbx_buf_msgpack_write(data, buf, len);
}

static void pack_sv(msgpack_packer *pk, nbx_sv s)
{
    msgpack_pack_str(pk, s.len);
    msgpack_pack_str_body(pk, s.ptr, s.len);
}

/* Integral values pack as ints: smaller, and exact either way. */
static void pack_number(msgpack_packer *pk, double v)
{
    if (v == floor(v) && fabs(v) < 9007199254740992.0 && !(v == 0 && signbit(v)))
        msgpack_pack_int64(pk, (int64_t)v);
    else
        msgpack_pack_double(pk, v);
}

bool nbx_rfm_base_is_aggregates(const nbx_profile *p)
{
    const nbx_rfm_base *b = &p->rfm_base;
    const nbx_rfm *r = &p->rfm;
    /* bitwise: -0.0 and 0 are stored as different bytes */
    return b->first_purchase == r->first_purchase && b->last_purchase == r->last_purchase &&
           b->orders == r->orders && memcmp(&b->revenue, &r->revenue, sizeof b->revenue) == 0 &&
           memcmp(&b->margin, &r->margin, sizeof b->margin) == 0;
}

int nbx_profile_encode(const nbx_profile *p, nbx_buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pack_write);
    msgpack_pack_array(&pk, 7);

    msgpack_pack_map(&pk, p->n_attrs);
    for (uint32_t i = 0; i < p->n_attrs; i++) {
        const nbx_attr *a = &p->attrs[i];
        pack_sv(&pk, a->key);
        if (a->type == NBX_ATTR_STRING)
            pack_sv(&pk, a->string);
        else if (a->type == NBX_ATTR_BOOL)
            a->boolean ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
        else
            pack_number(&pk, a->number);
    }
    msgpack_pack_map(&pk, p->n_consent);
    for (uint32_t i = 0; i < p->n_consent; i++) {
        pack_sv(&pk, p->consent[i].purpose);
        p->consent[i].state ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    }
    msgpack_pack_map(&pk, p->n_propensity);
    for (uint32_t i = 0; i < p->n_propensity; i++) {
        pack_sv(&pk, p->propensity[i].key);
        msgpack_pack_double(&pk, p->propensity[i].value);
    }
    if (p->fields & NBX_PF_LTV)
        pack_number(&pk, p->ltv);
    else
        msgpack_pack_nil(&pk);
    if (p->fields & NBX_PF_CHURN)
        msgpack_pack_double(&pk, p->churn);
    else
        msgpack_pack_nil(&pk);
    if (p->fields & NBX_PF_RFM) {
        const nbx_rfm *r = &p->rfm;
        bool base = p->fields & NBX_PF_RFM_BASE;
        msgpack_pack_array(&pk, base ? 10 : 9);
        msgpack_pack_int64(&pk, r->first_purchase);
        msgpack_pack_int64(&pk, r->last_purchase);
        msgpack_pack_uint64(&pk, r->orders);
        pack_number(&pk, r->revenue);
        pack_number(&pk, r->margin);
        msgpack_pack_uint8(&pk, r->r);
        msgpack_pack_uint8(&pk, r->f);
        msgpack_pack_uint8(&pk, r->m);
        msgpack_pack_uint8(&pk, r->segment);
        if (base) {
            /* Most imported customers have no purchase after the import's
             * as_of: their base is their aggregates, and [as_of] says so
             * in 10 bytes instead of 50. */
            const nbx_rfm_base *b = &p->rfm_base;
            bool same = nbx_rfm_base_is_aggregates(p);
            msgpack_pack_array(&pk, same ? 1 : 6);
            msgpack_pack_int64(&pk, b->as_of);
            if (!same) {
                msgpack_pack_int64(&pk, b->first_purchase);
                msgpack_pack_int64(&pk, b->last_purchase);
                msgpack_pack_uint64(&pk, b->orders);
                pack_number(&pk, b->revenue);
                pack_number(&pk, b->margin);
            }
        }
    } else {
        msgpack_pack_nil(&pk);
    }
    msgpack_pack_int64(&pk, p->updated_at);
    return out->oom ? NBX_ENOMEM : NBX_OK;
}

static void *arena_array(nbx_arena *a, uint32_t n, size_t size)
{
    return nbx_arena_alloc(a, (n ? n : 1) * size);
}

/* Every writer stores times of the years 0001 to 9999 (parsing refuses
 * others); one outside them is damage, and would overflow the readers'
 * arithmetic (now - last_purchase in the sandbox, now - last_dismiss in
 * caps). */
static inline bool stored_time_ok(int64_t ms)
{
    return ms >= NBX_TIME_MIN_MS && ms <= NBX_TIME_MAX_MS;
}

int nbx_profile_decode(const void *data, size_t len, nbx_profile *p, nbx_arena *a, nbx_err *e)
{
    nbx_sv id = p->id;
    memset(p, 0, sizeof *p);
    p->id = id;
    nbx_mp m;
    nbx_mp_init(&m, data, len);
    uint32_t n = mp_array(&m);
    if (m.bad || n < 7)
        goto corrupt;

    uint32_t k = mp_map(&m);
    if (k > NBX_MAP_MAX || !(p->attrs = arena_array(a, k, sizeof *p->attrs)))
        goto corrupt;
    for (uint32_t i = 0; i < k && !m.bad; i++) {
        nbx_attr *at = &p->attrs[i];
        at->key = mp_str(&m);
        int t = mp_type(&m);
        if (t == MSGPACK_OBJECT_STR) {
            at->type = NBX_ATTR_STRING;
            at->string = mp_str(&m);
        } else if (t == MSGPACK_OBJECT_BOOLEAN) {
            at->type = NBX_ATTR_BOOL;
            at->boolean = mp_bool(&m);
        } else {
            at->type = NBX_ATTR_NUMBER;
            at->number = mp_double(&m);
        }
    }
    p->n_attrs = k;

    k = mp_map(&m);
    if (k > NBX_MAP_MAX || !(p->consent = arena_array(a, k, sizeof *p->consent)))
        goto corrupt;
    for (uint32_t i = 0; i < k && !m.bad; i++) {
        p->consent[i].purpose = mp_str(&m);
        p->consent[i].state = mp_bool(&m);
    }
    p->n_consent = k;

    k = mp_map(&m);
    if (k > NBX_MAP_MAX || !(p->propensity = arena_array(a, k, sizeof *p->propensity)))
        goto corrupt;
    for (uint32_t i = 0; i < k && !m.bad; i++) {
        p->propensity[i].key = mp_str(&m);
        p->propensity[i].value = mp_double(&m);
    }
    p->n_propensity = k;
    p->fields = NBX_PF_ATTRS | NBX_PF_CONSENT | NBX_PF_PROPENSITY | NBX_PF_UPDATED_AT;

    if (!mp_nil(&m)) {
        p->ltv = mp_double(&m);
        p->fields |= NBX_PF_LTV;
    }
    if (!mp_nil(&m)) {
        p->churn = mp_double(&m);
        p->fields |= NBX_PF_CHURN;
    }
    if (!mp_nil(&m)) {
        uint32_t rn = mp_array(&m);
        if (rn < 9)
            goto corrupt;
        nbx_rfm *r = &p->rfm;
        r->first_purchase = mp_int(&m);
        r->last_purchase = mp_int(&m);
        r->orders = mp_uint(&m);
        r->revenue = mp_double(&m);
        r->margin = mp_double(&m);
        r->r = (uint8_t)mp_uint(&m);
        r->f = (uint8_t)mp_uint(&m);
        r->m = (uint8_t)mp_uint(&m);
        r->segment = (uint8_t)mp_uint(&m);
        if (rn > 9 && !mp_nil(&m)) {
            nbx_rfm_base *b = &p->rfm_base;
            uint32_t bn = mp_array(&m);
            if (bn < 1 || (bn > 1 && bn < 6))
                goto corrupt;
            b->as_of = mp_int(&m);
            if (bn == 1) { /* the base is the aggregates */
                b->first_purchase = r->first_purchase;
                b->last_purchase = r->last_purchase;
                b->orders = r->orders;
                b->revenue = r->revenue;
                b->margin = r->margin;
            } else {
                b->first_purchase = mp_int(&m);
                b->last_purchase = mp_int(&m);
                b->orders = mp_uint(&m);
                b->revenue = mp_double(&m);
                b->margin = mp_double(&m);
            }
            for (uint32_t i = 6; i < bn && !m.bad; i++)
                nbx_mp_skip(&m);
            p->fields |= NBX_PF_RFM_BASE;
        }
        for (uint32_t i = 10; i < rn && !m.bad; i++)
            nbx_mp_skip(&m);
        if (r->segment >= NBX_SEGMENT_COUNT || r->r > 5 || r->f > 5 || r->m > 5)
            goto corrupt;
        p->fields |= NBX_PF_RFM;
    }
    p->updated_at = mp_int(&m);
    if (m.bad || !stored_time_ok(p->updated_at) || !stored_time_ok(p->rfm.first_purchase) ||
        !stored_time_ok(p->rfm.last_purchase))
        goto corrupt;
    return NBX_OK;
corrupt:
    return nbx_err_set(e, NBX_ECORRUPT, "profile '%.*s': stored value cannot be decoded",
                       (int)(p->id.len > 256 ? 256 : p->id.len), p->id.ptr ? p->id.ptr : "");
}

/* Just the purchase aggregates of a stored profile, for a scan of every
 * profile (RFM rebuild): the maps are skipped, not decoded. *has is false
 * when the profile has no rfm element. */
int nbx_profile_decode_rfm(const void *data, size_t len, nbx_rfm *r, bool *has)
{
    nbx_mp m;
    nbx_mp_init(&m, data, len);
    memset(r, 0, sizeof *r);
    *has = false;
    if (mp_array(&m) < 7)
        return NBX_ECORRUPT;
    for (int i = 0; i < 5; i++) /* attrs, consent, propensity, ltv, churn */
        nbx_mp_skip(&m);
    if (mp_nil(&m))
        return m.bad ? NBX_ECORRUPT : NBX_OK;
    if (mp_array(&m) < 9)
        return NBX_ECORRUPT;
    r->first_purchase = mp_int(&m);
    r->last_purchase = mp_int(&m);
    r->orders = mp_uint(&m);
    r->revenue = mp_double(&m);
    if (m.bad)
        return NBX_ECORRUPT;
    /* the rest of it must be there too, as for nbx_profile_decode */
    for (int i = 4; i < 9 && !m.bad; i++)
        nbx_mp_skip(&m);
    if (m.bad)
        return NBX_ECORRUPT;
    *has = true;
    return NBX_OK;
}

/* ========================================================================
 * Keys of the customers database: id \0 tag ...
 * ======================================================================== */

size_t nbx_customer_prefix(char *out, nbx_sv customer)
{
    memcpy(out, customer.ptr, customer.len);
    out[customer.len] = '\0';
    return customer.len + 1;
}

size_t nbx_exposure_key(char *out, nbx_sv customer, nbx_sv offer)
{
    size_t n = nbx_customer_prefix(out, customer);
    out[n++] = NBX_TAG_COUNTERS;
    if (offer.len)
        memcpy(out + n, offer.ptr, offer.len);
    return n + offer.len;
}

size_t nbx_event_key(char *out, nbx_sv customer, nbx_sv event_id)
{
    size_t n = nbx_customer_prefix(out, customer);
    out[n++] = NBX_TAG_EVENT;
    memcpy(out + n, event_id.ptr, event_id.len);
    return n + event_id.len;
}

/* What a customer id may be, as every key built from one needs it. */
bool nbx_id_valid(nbx_sv id, nbx_err *e)
{
    if (id.len == 0) {
        nbx_err_set(e, NBX_EPARSE, "field 'id': must not be empty");
        return false;
    }
    if (id.len > NBX_ID_MAX) {
        nbx_err_set(e, NBX_EPARSE, "field 'id': %zu bytes, the limit is %d", id.len, NBX_ID_MAX);
        return false;
    }
    if (memchr(id.ptr, '\0', id.len)) {
        nbx_err_set(e, NBX_EPARSE, "field 'id': must not contain NUL");
        return false;
    }
    return true;
}

int nbx_customer_key_tag(const void *key, size_t len, size_t prefix_len)
{
    return len > prefix_len ? ((const unsigned char *)key)[prefix_len] : -1;
}

/* ========================================================================
 * Exposure counters: [last x4, [day, n x4]...]
 * ======================================================================== */

int nbx_exposure_encode(const nbx_exposure *x, nbx_buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pack_write);
    msgpack_pack_array(&pk, NBX_EXP_KINDS + 1);
    for (int k = 0; k < NBX_EXP_KINDS; k++)
        msgpack_pack_int64(&pk, x->last[k]);
    msgpack_pack_array(&pk, x->n_days * (1 + NBX_EXP_KINDS));
    for (uint32_t i = 0; i < x->n_days; i++) {
        msgpack_pack_uint32(&pk, x->days[i].day);
        for (int k = 0; k < NBX_EXP_KINDS; k++)
            msgpack_pack_uint32(&pk, x->days[i].n[k]);
    }
    return out->oom ? NBX_ENOMEM : NBX_OK;
}

int nbx_exposure_decode(const void *data, size_t len, nbx_exposure *x, nbx_arena *a)
{
    memset(x, 0, sizeof *x);
    nbx_mp m;
    nbx_mp_init(&m, data, len);
    uint32_t n = mp_array(&m);
    if (n < NBX_EXP_KINDS + 1)
        return NBX_ECORRUPT;
    for (int k = 0; k < NBX_EXP_KINDS; k++)
        if (!stored_time_ok(x->last[k] = mp_int(&m)))
            return NBX_ECORRUPT;
    uint32_t cells = mp_array(&m);
    if (m.bad || cells % (1 + NBX_EXP_KINDS) != 0 ||
        cells / (1 + NBX_EXP_KINDS) > NBX_EXPOSURE_DAYS_MAX)
        return NBX_ECORRUPT;
    x->n_days = cells / (1 + NBX_EXP_KINDS);
    x->days = arena_array(a, x->n_days, sizeof *x->days);
    if (!x->days)
        return NBX_ENOMEM;
    for (uint32_t i = 0; i < x->n_days; i++) {
        x->days[i].day = (uint32_t)mp_uint(&m);
        for (int k = 0; k < NBX_EXP_KINDS; k++)
            x->days[i].n[k] = (uint32_t)mp_uint(&m);
    }
    return m.bad ? NBX_ECORRUPT : NBX_OK;
}

/* ========================================================================
 * Event records: [ts, type, offer|nil, placement|nil, amount|nil,
 * margin|nil]; the customer and the event id are in the key
 * ======================================================================== */

static void pack_sv_or_nil(msgpack_packer *pk, nbx_sv s)
{
    if (!s.len) {
        msgpack_pack_nil(pk);
        return;
    }
    pack_sv(pk, s);
}

static void pack_double_or_nil(msgpack_packer *pk, double v)
{
    if (isnan(v))
        msgpack_pack_nil(pk);
    else
        msgpack_pack_double(pk, v);
}

int nbx_event_record_encode(const nbx_event *ev, nbx_buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pack_write);
    msgpack_pack_array(&pk, 6);
    msgpack_pack_int64(&pk, ev->ts_ms);
    msgpack_pack_uint8(&pk, ev->type);
    pack_sv_or_nil(&pk, ev->offer);
    pack_sv_or_nil(&pk, ev->placement);
    pack_double_or_nil(&pk, ev->amount);
    pack_double_or_nil(&pk, ev->margin);
    return out->oom ? NBX_ENOMEM : NBX_OK;
}

static nbx_sv str_or_nil(nbx_mp *m)
{
    return mp_nil(m) ? (nbx_sv){"", 0} : mp_str(m);
}

static double double_or_nil(nbx_mp *m)
{
    return mp_nil(m) ? NAN : mp_double(m);
}

int nbx_event_record_decode(const void *data, size_t len, nbx_event *ev)
{
    nbx_sv id = ev->id, customer = ev->customer;
    memset(ev, 0, sizeof *ev);
    ev->id = id;
    ev->customer = customer;
    nbx_mp m;
    nbx_mp_init(&m, data, len);
    if (mp_array(&m) < 6)
        return NBX_ECORRUPT;
    ev->ts_ms = mp_int(&m);
    uint64_t type = mp_uint(&m);
    ev->offer = str_or_nil(&m);
    ev->placement = str_or_nil(&m);
    ev->amount = double_or_nil(&m);
    ev->margin = double_or_nil(&m);
    if (m.bad || type < NBX_EV_PURCHASE || type > NBX_EV_DISMISS)
        return NBX_ECORRUPT;
    ev->type = (uint8_t)type;
    return NBX_OK;
}

/* ========================================================================
 * Budgets: day (4 bytes, big-endian) offer -> [impressions, accepts]
 * ======================================================================== */

size_t nbx_budget_key(char *out, uint32_t day, nbx_sv offer)
{
    out[0] = (char)(day >> 24);
    out[1] = (char)(day >> 16);
    out[2] = (char)(day >> 8);
    out[3] = (char)day;
    memcpy(out + 4, offer.ptr, offer.len);
    return 4 + offer.len;
}

size_t nbx_budget_encode(const uint64_t counts[2], char out[NBX_BUDGET_VALUE_MAX])
{
    nbx_buf b = {.data = out, .cap = NBX_BUDGET_VALUE_MAX}; /* never grows: 19 bytes at most */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, pack_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, counts[0]);
    msgpack_pack_uint64(&pk, counts[1]);
    return b.len;
}

int nbx_budget_decode(const void *data, size_t size, nbx_sv offer, uint64_t counts[2], nbx_err *e)
{
    nbx_mp m;
    nbx_mp_init(&m, data, size);
    counts[0] = counts[1] = 0;
    if (mp_array(&m) >= 2) {
        counts[0] = mp_uint(&m);
        counts[1] = mp_uint(&m);
    }
    if (m.bad)
        return nbx_err_set(e, NBX_ECORRUPT, "budget counters of '%.*s' cannot be decoded",
                           (int)offer.len, offer.ptr);
    return NBX_OK;
}

/* ========================================================================
 * Meta values
 * ======================================================================== */

size_t nbx_schema_encode(uint32_t version, uint8_t out[1])
{
    out[0] = (uint8_t)version;
    return 1;
}

int nbx_schema_decode(const void *data, size_t len, uint32_t *version)
{
    if (len != 1)
        return NBX_ECORRUPT;
    *version = ((const uint8_t *)data)[0];
    return NBX_OK;
}

/* Always the 9-byte uint64 form, so the value never changes size. */
size_t nbx_count_encode(uint64_t n, uint8_t out[NBX_COUNT_VALUE_SIZE])
{
    out[0] = 0xcf;
    for (int i = 0; i < 8; i++)
        out[1 + i] = (uint8_t)(n >> (56 - 8 * i));
    return NBX_COUNT_VALUE_SIZE;
}

int nbx_count_decode(const void *data, size_t len, uint64_t *n)
{
    nbx_mp m;
    nbx_mp_init(&m, data, len);
    *n = mp_uint(&m);
    return m.bad ? NBX_ECORRUPT : NBX_OK;
}

int nbx_rfm_meta_encode(const nbx_rfm_meta *r, nbx_buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pack_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int64(&pk, r->as_of_ms);
    const double *cuts[3] = {r->recency, r->frequency, r->monetary};
    for (int i = 0; i < 3; i++) {
        msgpack_pack_array(&pk, 4);
        for (int k = 0; k < 4; k++)
            msgpack_pack_double(&pk, cuts[i][k]);
    }
    return out->oom ? NBX_ENOMEM : NBX_OK;
}

int nbx_rfm_meta_decode(const void *data, size_t len, nbx_rfm_meta *r)
{
    memset(r, 0, sizeof *r);
    nbx_mp m;
    nbx_mp_init(&m, data, len);
    if (mp_array(&m) < 4)
        return NBX_ECORRUPT;
    r->as_of_ms = mp_int(&m);
    double *cuts[3] = {r->recency, r->frequency, r->monetary};
    for (int i = 0; i < 3 && !m.bad; i++) {
        if (mp_array(&m) < 4)
            return NBX_ECORRUPT;
        for (int k = 0; k < 4; k++)
            cuts[i][k] = mp_double(&m);
    }
    return m.bad ? NBX_ECORRUPT : NBX_OK;
}

/* ========================================================================
 * Suppression records: keyed hash of a customer id -> [erased_at]
 * ======================================================================== */

void nbx_suppression_key(uint8_t out[NBX_SUPPRESSION_KEY_SIZE],
                         const uint8_t secret[NBX_SUPPRESSION_SECRET_SIZE], nbx_sv customer)
{
    nbx_siphash128(secret, customer.ptr, customer.len, out);
}

size_t nbx_suppression_encode(int64_t erased_at_ms, char out[NBX_SUPPRESSION_VALUE_MAX])
{
    nbx_buf b = {.data = out, .cap = NBX_SUPPRESSION_VALUE_MAX}; /* 10 bytes at most */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, pack_write);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_int64(&pk, erased_at_ms);
    return b.len;
}

int nbx_suppression_decode(const void *data, size_t len, int64_t *erased_at_ms)
{
    nbx_mp m;
    nbx_mp_init(&m, data, len);
    if (mp_array(&m) < 1)
        return NBX_ECORRUPT;
    *erased_at_ms = mp_int(&m);
    return m.bad ? NBX_ECORRUPT : NBX_OK;
}
