/* Suite: codec (core/codec.c): msgpack encodings of profiles and counters,
 * cross-checked against msgpack-c's own unpacker. */
#include <criterion/criterion.h>
#include <math.h>
#include <msgpack.h>
#include <string.h>

#include "nbx_int.h"

static nbx_arena arena;
static nbx_buf buf;

static void teardown(void)
{
    nbx_arena_free(&arena);
    nbx_buf_free(&buf);
}

TestSuite(codec, .fini = teardown);

static nbx_profile sample(void)
{
    static nbx_attr attrs[] = {
        {.key = {"age", 3}, .type = NBX_ATTR_NUMBER, .number = 34},
        {.key = {"city", 4}, .type = NBX_ATTR_STRING, .string = {"Berlin", 6}},
        {.key = {"vip", 3}, .type = NBX_ATTR_BOOL, .boolean = true},
        {.key = {"weight", 6}, .type = NBX_ATTR_NUMBER, .number = 71.25},
    };
    static nbx_consent consent[] = {{{"email", 5}, 0}, {{"personalization", 15}, 1}};
    static nbx_prop props[] = {{{"o1", 2}, 0.125}, {{"shipping", 8}, 0.3}};
    nbx_profile p = {
        .id = {"c1", 2},
        .attrs = attrs,
        .n_attrs = 4,
        .consent = consent,
        .n_consent = 2,
        .propensity = props,
        .n_propensity = 2,
        .ltv = 412.5,
        .churn = 0.12,
        .rfm = {.first_purchase = 1767225600000,
                .last_purchase = 1767312000123,
                .orders = 3,
                .revenue = 99.95,
                .margin = 31.5,
                .r = 5,
                .f = 2,
                .m = 4,
                .segment = NBX_SEGMENT_POTENTIAL},
        .updated_at = 1767400000000,
        .fields = NBX_PF_ATTRS | NBX_PF_CONSENT | NBX_PF_PROPENSITY | NBX_PF_LTV | NBX_PF_CHURN |
                  NBX_PF_RFM | NBX_PF_UPDATED_AT,
    };
    return p;
}

Test(codec, profile_round_trip)
{
    nbx_profile p = sample(), q = {.id = {"c1", 2}};
    cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
    nbx_err e = {0};
    cr_assert_eq(nbx_profile_decode(buf.data, buf.len, &q, &arena, &e), NBX_OK, "%s", e.msg);
    cr_assert_eq(q.n_attrs, 4);
    cr_assert(nbx_sv_eq_cstr(q.attrs[1].string, "Berlin"));
    cr_assert_eq(q.attrs[0].type, NBX_ATTR_NUMBER);
    cr_assert_eq(q.attrs[0].number, 34);
    cr_assert_eq(q.attrs[3].number, 71.25);
    cr_assert(q.attrs[2].boolean);
    cr_assert_eq(q.consent[0].state, 0);
    cr_assert_eq(q.consent[1].state, 1);
    cr_assert_eq(q.propensity[0].value, 0.125);
    cr_assert_eq(q.ltv, 412.5);
    cr_assert_eq(q.churn, 0.12);
    cr_assert(q.fields & NBX_PF_RFM);
    cr_assert_eq(q.rfm.last_purchase, 1767312000123);
    cr_assert_eq(q.rfm.orders, 3);
    cr_assert_eq(q.rfm.revenue, 99.95);
    cr_assert_eq(q.rfm.segment, NBX_SEGMENT_POTENTIAL);
    cr_assert_eq(q.updated_at, 1767400000000);
}

Test(codec, optional_fields_absent)
{
    nbx_profile p = {.id = {"x", 1}, .fields = NBX_PF_ATTRS}, q = {.id = {"x", 1}};
    cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
    cr_assert_eq(nbx_profile_decode(buf.data, buf.len, &q, &arena, NULL), NBX_OK);
    cr_assert_eq(q.fields & (NBX_PF_LTV | NBX_PF_CHURN | NBX_PF_RFM), 0);
    cr_assert_eq(q.n_attrs + q.n_consent + q.n_propensity, 0);
}

Test(codec, msgpack_c_reads_what_we_write)
{
    nbx_profile p = sample();
    cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&u, buf.data, buf.len, &off), MSGPACK_UNPACK_SUCCESS);
    cr_assert_eq(off, buf.len);
    cr_assert_eq(u.data.type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(u.data.via.array.size, 7);
    msgpack_object attrs = u.data.via.array.ptr[0];
    cr_assert_eq(attrs.type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(attrs.via.map.size, 4);
    cr_assert_eq(u.data.via.array.ptr[3].via.f64, 412.5);
    msgpack_unpacked_destroy(&u);
}

Test(codec, reader_handles_every_int_width)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int64_t vals[] = {
        0,  1,   127, 128,  255,  256,    65535,  65536,     4294967295LL, 4294967296LL,
        -1, -32, -33, -128, -129, -32768, -32769, INT64_MIN, INT64_MAX};
    size_t n = sizeof vals / sizeof vals[0];
    for (size_t i = 0; i < n; i++)
        msgpack_pack_int64(&pk, vals[i]);
    msgpack_pack_float(&pk, 1.5f);
    nbx_mp m;
    nbx_mp_init(&m, sb.data, sb.size);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(nbx_mp_int(&m), vals[i], "value %zu", i);
    cr_assert_eq(nbx_mp_double(&m), 1.5);
    cr_assert_not(m.bad);
    cr_assert_eq(m.p, m.end);
    msgpack_sbuffer_destroy(&sb);
}

Test(codec, truncated_and_garbage_are_corrupt_not_crashes)
{
    nbx_profile p = sample();
    cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
    for (size_t cut = 0; cut < buf.len; cut++) {
        nbx_profile q = {.id = {"c1", 2}};
        nbx_err e = {0};
        cr_assert_eq(nbx_profile_decode(buf.data, cut, &q, &arena, &e), NBX_ECORRUPT,
                     "truncated at %zu decoded", cut);
        cr_assert(strstr(e.msg, "profile 'c1'") != NULL, "%s", e.msg);
    }
    /* every single-byte corruption must decode or fail cleanly */
    for (size_t i = 0; i < buf.len; i++) {
        char copy[1024];
        memcpy(copy, buf.data, buf.len);
        copy[i] ^= 0x5a;
        nbx_profile q = {.id = {"c1", 2}};
        (void)nbx_profile_decode(copy, buf.len, &q, &arena, NULL);
        nbx_arena_reset(&arena);
    }
    /* hostile nesting for skip */
    char deep[4096];
    memset(deep, 0x91, sizeof deep); /* fixarray(1) forever */
    nbx_mp m;
    nbx_mp_init(&m, deep, sizeof deep);
    nbx_mp_skip(&m);
    cr_assert(m.bad);
}

Test(codec, exposure_round_trip_and_windows)
{
    nbx_exposure_day days[] = {{100, {1, 0, 0, 0}}, {105, {2, 1, 0, 1}}, {110, {3, 0, 1, 0}}};
    nbx_exposure x = {.last = {1, 2, 3, 4}, .days = days, .n_days = 3}, y;
    cr_assert_eq(nbx_exposure_encode(&x, &buf), NBX_OK);
    cr_assert_eq(nbx_exposure_decode(buf.data, buf.len, &y, &arena), NBX_OK);
    cr_assert_eq(y.n_days, 3);
    cr_assert_eq(y.last[3], 4);
    /* window of 1 day on day 110: today only */
    cr_assert_eq(nbx_exposure_count(&y, NBX_EXP_IMPRESSION, 110, 1), 3);
    /* 6 days ending 110: days 105..110 */
    cr_assert_eq(nbx_exposure_count(&y, NBX_EXP_IMPRESSION, 110, 6), 5);
    cr_assert_eq(nbx_exposure_count(&y, NBX_EXP_IMPRESSION, 110, 5), 3);
    cr_assert_eq(nbx_exposure_count(&y, NBX_EXP_IMPRESSION, 110, 365), 6);
    cr_assert_eq(nbx_exposure_count(&y, NBX_EXP_DISMISS, 105, 1), 1);
    cr_assert_eq(nbx_exposure_count(&y, NBX_EXP_IMPRESSION, 99, 30), 0);
    cr_assert_eq(nbx_exposure_count(&y, NBX_EXP_IMPRESSION, 110, 0), 0);
}

/* ------------------------------------------------------------------------
 * A damaged value never stalls a reader (issue 10, section 5)
 * ------------------------------------------------------------------------ */

static double seconds(void)
{
    return (double)nbx_monotonic_us() / 1e6;
}

/* The report: 21 bytes (a profile whose rfm claims 4294967295 elements)
 * made profile get and decide spin 7.5 to 9.7 s, one skip call per claimed
 * element. Every decoder answers NBX_ECORRUPT at once, naming the customer.
 * The bound is generous: the decode takes microseconds. */
static const uint8_t damaged[21] = {0x97, 0x80, 0x80, 0x80, 0xc0, 0xc0,
                                    0xdd, 0xff, 0xff, 0xff, 0xff};
/* the same with a nil tenth element (no import base): the decoder then
 * skipped the 4294967285 elements left, each call a no-op once out of bytes */
static const uint8_t damaged_nil[21] = {0x97, 0x80, 0x80, 0x80, 0xc0, 0xc0, 0xdd,
                                        0xff, 0xff, 0xff, 0xff, 0,    0,    0,
                                        0,    0,    0,    0,    0,    0,    0xc0};

Test(codec, a_count_larger_than_the_value_is_corrupt_at_once, .timeout = 30)
{
    double t0 = seconds();
    const uint8_t *values[] = {damaged, damaged_nil};
    for (int i = 0; i < 2; i++) {
        nbx_profile p = {.id = {"c1", 2}};
        nbx_err e = {0};
        cr_assert_eq(nbx_profile_decode(values[i], 21, &p, &arena, &e), NBX_ECORRUPT);
        cr_assert(strstr(e.msg, "profile 'c1'") != NULL, "%s", e.msg);
        nbx_rfm r;
        bool has;
        cr_assert_eq(nbx_profile_decode_rfm(values[i], 21, &r, &has), NBX_ECORRUPT);
    }
    double took = seconds() - t0;
    cr_assert_lt(took, 2.0, "decoding 21 bytes took %.2f s", took);

    /* the same claim in every container a decoder walks */
    static const uint8_t claims[][12] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff, 0, 0, 0},                /* array32 */
        {0xdf, 0xff, 0xff, 0xff, 0xff, 0, 0, 0},                /* map32 */
        {0xdc, 0xff, 0xff, 0, 0, 0, 0, 0},                      /* array16 */
        {0x95, 0, 0, 0, 0, 0xdd, 0x7f, 0xff, 0xff, 0xff, 0, 0}, /* counters: cells */
    };
    for (size_t i = 0; i < sizeof claims / sizeof claims[0]; i++) {
        nbx_mp m;
        nbx_mp_init(&m, claims[i], sizeof claims[i]);
        nbx_mp_skip(&m);
        cr_assert(m.bad, "claim %zu: skipped as if whole", i);
        nbx_exposure x;
        cr_assert_eq(nbx_exposure_decode(claims[i], sizeof claims[i], &x, &arena), NBX_ECORRUPT,
                     "claim %zu", i);
        nbx_event ev = {0};
        cr_assert_eq(nbx_event_record_decode(claims[i], sizeof claims[i], &ev), NBX_ECORRUPT);
    }
    took = seconds() - t0;
    cr_assert_lt(took, 2.0, "took %.2f s", took);
}

/* Every prefix and every single-byte change of every stored value decodes
 * or fails, and a skip over it never runs past its bytes. */
Test(codec, every_decoder_stops_within_the_value, .timeout = 60)
{
    nbx_profile p = sample();
    p.fields |= NBX_PF_RFM_BASE;
    p.rfm_base = (nbx_rfm_base){.as_of = 1767225600000, .orders = 3, .revenue = 12.5};
    cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
    nbx_exposure_day days[] = {{100, {1, 0, 0, 0}}, {105, {2, 1, 0, 1}}};
    nbx_exposure x = {.last = {1, 2, 3, 4}, .days = days, .n_days = 2};
    nbx_buf counters = {0}, record = {0};
    cr_assert_eq(nbx_exposure_encode(&x, &counters), NBX_OK);
    nbx_event ev = {
        .offer = NBX_SV("o1"), .type = NBX_EV_CLICK, .ts_ms = 5, .amount = NAN, .margin = NAN};
    cr_assert_eq(nbx_event_record_encode(&ev, &record), NBX_OK);
    char arm_value[NBX_ARM_VALUE_MAX];
    nbx_arm_counts arm_counts = {.decisions = 300, .accepts = 2, .expected_margin = 0.5};
    nbx_buf arm = {.data = arm_value, .len = nbx_arm_counts_encode(&arm_counts, arm_value)};
    const nbx_buf *values[] = {&buf, &counters, &record, &arm};
    for (size_t v = 0; v < 4; v++) {
        for (size_t i = 0; i < values[v]->len; i++)
            for (int bit = 0; bit < 8; bit++) {
                char copy[1024];
                memcpy(copy, values[v]->data, values[v]->len);
                copy[i] ^= (char)(1 << bit);
                for (size_t cut = i; cut <= values[v]->len; cut += values[v]->len - i) {
                    nbx_profile q = {.id = {"c1", 2}};
                    nbx_rfm r;
                    bool has;
                    nbx_exposure y;
                    nbx_event e = {0};
                    (void)nbx_profile_decode(copy, cut, &q, &arena, NULL);
                    (void)nbx_profile_decode_rfm(copy, cut, &r, &has);
                    (void)nbx_exposure_decode(copy, cut, &y, &arena);
                    (void)nbx_event_record_decode(copy, cut, &e);
                    (void)nbx_arm_counts_decode(copy, cut, &arm_counts);
                    nbx_mp m;
                    nbx_mp_init(&m, copy, cut);
                    nbx_mp_skip(&m);
                    cr_assert(m.p <= m.end, "skip ran past the value");
                    nbx_arena_reset(&arena);
                    if (cut == values[v]->len)
                        break;
                }
            }
    }
    nbx_buf_free(&counters);
    nbx_buf_free(&record);
}

/* An import's base of the purchase aggregates: stored whole when events
 * added to it, as [as_of] alone when it is the aggregates (most customers). */
Test(codec, the_rfm_base_round_trips_in_both_forms)
{
    nbx_profile p = sample();
    p.fields |= NBX_PF_RFM | NBX_PF_RFM_BASE;
    p.rfm.orders = 4;
    p.rfm.revenue = 384.6;
    p.rfm.last_purchase = 1767780000000;
    p.rfm_base = (nbx_rfm_base){.as_of = 1746748800000,
                                .first_purchase = p.rfm.first_purchase,
                                .last_purchase = 1746748800000,
                                .orders = 3,
                                .revenue = 300.1,
                                .margin = p.rfm.margin};
    size_t whole = 0;
    for (int same = 0; same < 2; same++) {
        if (same)
            p.rfm_base = (nbx_rfm_base){p.rfm_base.as_of, p.rfm.first_purchase, p.rfm.last_purchase,
                                        p.rfm.orders,     p.rfm.revenue,        p.rfm.margin};
        nbx_buf_reset(&buf);
        cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
        nbx_profile q = {.id = {"c1", 2}};
        cr_assert_eq(nbx_profile_decode(buf.data, buf.len, &q, &arena, NULL), NBX_OK);
        cr_assert(q.fields & NBX_PF_RFM_BASE);
        cr_assert_eq(memcmp(&q.rfm_base, &p.rfm_base, sizeof q.rfm_base), 0, "same %d", same);
        cr_assert_eq(q.rfm.orders, p.rfm.orders);
        if (same)
            cr_assert_lt(buf.len, whole - 30, "[as_of] alone: %zu bytes against %zu", buf.len,
                         whole);
        whole = buf.len;
    }
}

/* Found by tests/fuzz (fuzz_stored, corpus regress-profile-time-out-of-range.bin
 * and regress-exposure-time-out-of-range.bin): a stored time outside the
 * years 0001 to 9999 decoded, and a decision then overflowed int64 in
 * now - last_purchase (sandbox) or now - last_dismiss (caps). Such values
 * are damage: NBX_ECORRUPT. */
Test(codec, times_outside_years_1_to_9999_are_corrupt)
{
    const int64_t bad[] = {INT64_MIN, NBX_TIME_MIN_MS - 1, NBX_TIME_MAX_MS + 1, INT64_MAX};
    for (size_t i = 0; i < NBX_ARRAY_LEN(bad); i++) {
        for (int field = 0; field < 3; field++) {
            nbx_profile p = sample(), q = {.id = {"c1", 2}};
            int64_t *t = field == 0   ? &p.rfm.first_purchase
                         : field == 1 ? &p.rfm.last_purchase
                                      : &p.updated_at;
            *t = bad[i];
            nbx_buf_reset(&buf);
            cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
            nbx_err e = {0};
            int rc = nbx_profile_decode(buf.data, buf.len, &q, &arena, &e);
            cr_assert_eq(rc, NBX_ECORRUPT, "time field %d = %lld: expected NBX_ECORRUPT, got %d",
                         field, (long long)bad[i], rc);
            cr_assert(strstr(e.msg, "profile 'c1'") != NULL, "%s", e.msg);
        }
        nbx_exposure_day days[] = {{100, {1, 0, 0, 0}}};
        nbx_exposure x = {.last = {1, 2, bad[i], 4}, .days = days, .n_days = 1}, y;
        nbx_buf_reset(&buf);
        cr_assert_eq(nbx_exposure_encode(&x, &buf), NBX_OK);
        int rc = nbx_exposure_decode(buf.data, buf.len, &y, &arena);
        cr_assert_eq(rc, NBX_ECORRUPT, "exposure last = %lld: expected NBX_ECORRUPT, got %d",
                     (long long)bad[i], rc);
    }
    /* the bounds themselves are times a store may hold */
    nbx_profile p = sample(), q = {.id = {"c1", 2}};
    p.rfm.first_purchase = NBX_TIME_MIN_MS;
    p.rfm.last_purchase = NBX_TIME_MAX_MS;
    nbx_buf_reset(&buf);
    cr_assert_eq(nbx_profile_encode(&p, &buf), NBX_OK);
    cr_assert_eq(nbx_profile_decode(buf.data, buf.len, &q, &arena, NULL), NBX_OK);
    cr_assert_eq(q.rfm.last_purchase, NBX_TIME_MAX_MS);
}

/* ------------------------------------------------------------------------
 * Arm counters and decision ids (issue 13)
 * ------------------------------------------------------------------------ */

Test(codec, arm_keys_sort_by_deployment_arm_day_and_parse_back)
{
    char a[NBX_ARM_KEY_MAX], b[NBX_ARM_KEY_MAX];
    size_t na = nbx_arm_key(a, NBX_SV("q4"), NBX_SV("champion"), 20500);
    size_t nb = nbx_arm_key(b, NBX_SV("q4"), NBX_SV("champion"), 20501);
    cr_assert_eq(na, 2 + 1 + 8 + 1 + 4);
    cr_assert_lt(memcmp(a, b, na), 0, "days sort in order");
    nbx_sv dep, arm;
    uint32_t day;
    cr_assert(nbx_arm_key_parse(b, nb, &dep, &arm, &day));
    cr_assert(nbx_sv_eq_cstr(dep, "q4") && nbx_sv_eq_cstr(arm, "champion") && day == 20501);
    /* "q4" and "champion" sort before "q4" and "champion2", before "q40" */
    char c[NBX_ARM_KEY_MAX], d[NBX_ARM_KEY_MAX];
    size_t nc = nbx_arm_key(c, NBX_SV("q4"), NBX_SV("champion2"), 0);
    size_t nd = nbx_arm_key(d, NBX_SV("q40"), NBX_SV("a"), 0);
    cr_assert_lt(memcmp(b, c, nb < nc ? nb : nc), 0);
    cr_assert_lt(memcmp(c, d, nc < nd ? nc : nd), 0);
    /* not keys: too short, no separator, a name with a bad byte */
    cr_assert_not(nbx_arm_key_parse(b, 7, &dep, &arm, &day));
    cr_assert_not(nbx_arm_key_parse("q4champion\0\0\0\0\1", 15, &dep, &arm, &day));
    char bad[NBX_ARM_KEY_MAX];
    size_t nbad = nbx_arm_key(bad, NBX_SV("q 4"), NBX_SV("a"), 1);
    cr_assert_not(nbx_arm_key_parse(bad, nbad, &dep, &arm, &day));
}

Test(codec, arm_names_are_64_bytes_of_a_small_alphabet)
{
    cr_assert(nbx_arm_name_valid(NBX_SV("champion")));
    cr_assert(nbx_arm_name_valid(NBX_SV("v1.2_b-3")));
    cr_assert_not(nbx_arm_name_valid(NBX_SV("")));
    cr_assert_not(nbx_arm_name_valid(NBX_SV("a b")));
    cr_assert_not(nbx_arm_name_valid(NBX_SV("a/b")));
    cr_assert_not(nbx_arm_name_valid(NBX_SV("\xc3\xa9t\xc3\xa9")));
    char name[NBX_ARM_NAME_MAX + 1];
    memset(name, 'a', sizeof name);
    cr_assert(nbx_arm_name_valid((nbx_sv){name, NBX_ARM_NAME_MAX}));
    cr_assert_not(nbx_arm_name_valid((nbx_sv){name, NBX_ARM_NAME_MAX + 1}));
}

Test(codec, arm_counts_round_trip_and_damage_is_corrupt)
{
    nbx_arm_counts c = {.decisions = 1000000,
                        .fallbacks = 12,
                        .errors = 1,
                        .impressions = 900000,
                        .accepts = 4000,
                        .purchases = 310,
                        .expected_margin = 1234.5,
                        .realised_margin = -17.25},
                   d;
    char v[NBX_ARM_VALUE_MAX];
    size_t n = nbx_arm_counts_encode(&c, v);
    cr_assert_eq(nbx_arm_counts_decode(v, n, &d), NBX_OK);
    cr_assert_eq(memcmp(&c, &d, sizeof c), 0);
    /* the reader takes integers up to INT64_MAX */
    nbx_arm_counts big = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX,
                          INT64_MAX, INT64_MAX, -1e300,    1e300};
    n = nbx_arm_counts_encode(&big, v);
    cr_assert_leq(n, NBX_ARM_VALUE_MAX);
    cr_assert_eq(nbx_arm_counts_decode(v, n, &d), NBX_OK);
    cr_assert_eq(memcmp(&big, &d, sizeof big), 0);
    for (size_t cut = 0; cut < n; cut++)
        cr_assert_eq(nbx_arm_counts_decode(v, cut, &d), NBX_ECORRUPT, "cut at %zu", cut);
    /* a negative count, a non-finite margin */
    static const uint8_t negative[] = {0x98, 0xff, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(nbx_arm_counts_decode(negative, sizeof negative, &d), NBX_ECORRUPT);
    static const uint8_t inf[] = {0x98, 0, 0, 0, 0, 0, 0, 0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(nbx_arm_counts_decode(inf, sizeof inf, &d), NBX_ECORRUPT);
    /* a later format's longer array reads the same */
    static const uint8_t longer[] = {0x99, 1, 2, 3, 4, 5, 6, 7, 8, 0xc0};
    cr_assert_eq(nbx_arm_counts_decode(longer, sizeof longer, &d), NBX_OK);
    cr_assert_eq(d.decisions, 1);
    cr_assert_eq(d.realised_margin, 8);
}

Test(codec, a_decision_id_names_its_deployment_and_arm)
{
    nbx_sv dep, arm;
    cr_assert(nbx_decision_id_arm(NBX_SV("01890a5d-ac96-7abc-8def-0123456789ab.q4.champion"), &dep,
                                  &arm));
    cr_assert(nbx_sv_eq_cstr(dep, "q4") && nbx_sv_eq_cstr(arm, "champion"));
    /* the arm may hold dots, the deployment may not: split at the first */
    cr_assert(
        nbx_decision_id_arm(NBX_SV("01890a5d-ac96-7abc-8def-0123456789ab.q4.v1.2"), &dep, &arm));
    cr_assert(nbx_sv_eq_cstr(dep, "q4") && nbx_sv_eq_cstr(arm, "v1.2"));
    cr_assert(
        nbx_decision_id_arm(NBX_SV("01890a5d-ac96-7abc-8def-0123456789ab.q4.holdout"), &dep, &arm));
    cr_assert(nbx_sv_eq_cstr(arm, "holdout"));
    const char *none[] = {
        "01890a5d-ac96-7abc-8def-0123456789ab",        /* no deployment */
        "01890a5d-ac96-7abc-8def-0123456789ab.q4",     /* no arm */
        "01890a5d-ac96-7abc-8def-0123456789ab.q4.",    /* an empty arm */
        "01890a5d-ac96-7abc-8def-0123456789ab..a",     /* an empty deployment */
        "01890a5d-ac96-7abc-8def-0123456789AB.q4.a",   /* not nbx's hex */
        "01890a5dxac96-7abc-8def-0123456789ab.q4.a",   /* not a UUID */
        "01890a5d-ac96-7abc-8def-0123456789ab.q4.a b", /* not a name */
        "e-9f1c",
        "",
    };
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        cr_assert_not(nbx_decision_id_arm(nbx_sv_of(none[i]), &dep, &arm), "%s", none[i]);
    char longest[NBX_DECISION_ID_MAX + 2];
    memcpy(longest, "01890a5d-ac96-7abc-8def-0123456789ab.", 37);
    memset(longest + 37, 'd', 64);
    longest[101] = '.';
    memset(longest + 102, 'a', 64);
    cr_assert(nbx_decision_id_arm((nbx_sv){longest, NBX_DECISION_ID_MAX}, &dep, &arm));
    cr_assert_eq(arm.len, 64);
    longest[166] = 'a';
    cr_assert_not(nbx_decision_id_arm((nbx_sv){longest, NBX_DECISION_ID_MAX + 1}, &dep, &arm));
}
