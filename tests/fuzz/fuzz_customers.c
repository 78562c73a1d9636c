/*
 * fuzz_customers: customers files of batches, through the public batch API
 * on a real engine (nbx_batch_submit_json, nbx_batch_submit, nbx_batch_next;
 * core/batch.c, then core/decide.c for each customer).
 *
 * The input is a customers file. Each line goes where `nbx batch` sends it
 * (bindings/cli/batch.c): a line starting with `{`, `[` or `"` to
 * nbx_batch_submit_json(), any other non-blank line to nbx_batch_submit()
 * as an id. The CLI refuses some id lines itself (whitespace, too long,
 * NUL); here they go to the library anyway, which must refuse them too.
 * Every submitted customer comes back, in order, as a decision with valid
 * JSON or as a failure with an escaped message.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

static nbx_batch *batch;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void batch_close(void)
{
    nbx_batch_close(batch);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_engine *fe = fz_engine_get();
    static const nbx_kv session[] = {{"channel", "web"}, {"page", "/home"}};
    nbx_batch_options o;
    nbx_batch_options_init(&o);
    o.threads = 1; /* the machine is shared; one worker still runs the real path */
    o.window = 16;
    o.now_ms = FZ_NOW_MS;
    o.session = session;
    o.n_session = NBX_ARRAY_LEN(session);
    o.flags = NBX_DECIDE_EXPLAIN;
    if (nbx_batch_open(fe->engine, &o, &batch) != NBX_OK)
        fz_fail("nbx_batch_open: %s", nbx_last_errmsg());
    atexit(batch_close);
    return 0;
}

static uint64_t taken;

static void take_one(void)
{
    const nbx_batch_item *it;
    int rc = nbx_batch_next(batch, &it);
    if (rc != NBX_OK)
        fz_fail("nbx_batch_next: %d with decisions pending", rc);
    if (it->index != taken)
        fz_fail("item %llu handed back in place of %llu", (unsigned long long)it->index,
                (unsigned long long)taken);
    taken++;
    if (it->status == NBX_OK) {
        if (!it->json)
            fz_fail("a decision without JSON");
        fz_check_json(it->json, it->json_len, "a batch decision");
    } else {
        fz_check_message(it->errmsg, "a batch decision");
    }
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static void submit(const char *line, size_t len)
{
    size_t lead = 0;
    while (lead < len && is_space(line[lead]))
        lead++;
    if (lead == len)
        return;
    while (nbx_batch_space(batch) == 0)
        take_one();
    uint64_t before = nbx_batch_pending(batch);
    int rc;
    if (line[lead] == '{' || line[lead] == '[' || line[lead] == '"') {
        rc = nbx_batch_submit_json(batch, line, len, NULL);
    } else {
        char *id = fz_strndup((const uint8_t *)line, len);
        rc = nbx_batch_submit(batch, id, NULL, 0, NULL);
        free(id);
    }
    if (rc == NBX_OK) {
        if (nbx_batch_pending(batch) != before + 1)
            fz_fail("submitted, but %llu pending after %llu",
                    (unsigned long long)nbx_batch_pending(batch), (unsigned long long)before);
        return;
    }
    if (nbx_batch_pending(batch) != before)
        fz_fail("refused (%d), but queued", rc);
    if (rc == NBX_DONE)
        fz_fail("NBX_DONE without shards");
    if (rc != NBX_EPARSE && rc != NBX_EINVAL && rc != NBX_ELIMIT)
        fz_fail("submit returned %d", rc);
    fz_check_message(nbx_batch_errmsg(batch), "nbx_batch_submit");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data, *end = text + size;
    while (text < end) {
        const char *nl = memchr(text, '\n', (size_t)(end - text));
        size_t len = nl ? (size_t)(nl - text) : (size_t)(end - text);
        size_t used = len + (nl != NULL);
        if (len && text[len - 1] == '\r')
            len--;
        submit(text, len);
        text += used;
    }
    while (nbx_batch_pending(batch) > 0)
        take_one();
    return 0;
}
