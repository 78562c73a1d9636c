/*
 * fuzz_leakcheck: not a fuzz target but the proof that the fuzzers still
 * find leaks in our code with tests/fuzz/lsan.supp in force (ctest
 * fuzz_leaks_reported, tests/fuzz/leakcheck.sh; docs/fuzzing.md, "Leaks").
 *
 * Each input makes a few decisions on the harnesses' engine, as the engine
 * harnesses do, then, if it starts with "leak", drops the JSON
 * nbx_profile_get() allocated. Run by tests/fuzz/run.sh like every harness,
 * libFuzzer must report exactly that one leak (LeakSanitizer reports the
 * blocks of one call site as one leak): none means the suppression hides
 * our own allocations; one in sb_alloc, that it is not in force. That it
 * covers LuaJIT's IR buffer is shown by the engine harnesses themselves,
 * which fail without it.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz_support.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_engine_get();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int ok[] = {NBX_OK};
    fz_engine *fe = fz_engine_get();
    for (int i = 0; i < 10; i++) {
        nbx_request req;
        nbx_request_init(&req);
        req.customer = "alice";
        const nbx_result *r;
        fz_decide(fe, &req, ok, &r);
    }
    bool leak = size >= 4 && memcmp(data, "leak", 4) == 0;
    /* Many blocks: LeakSanitizer scans the stack conservatively, and a copy
     * of the last pointer left in a dead frame can keep a block
     * "reachable". */
    for (int i = 0; i < 32; i++) {
        char *json = NULL;
        size_t len;
        if (nbx_profile_get(fe->store, "alice", &json, &len) != NBX_OK)
            fz_fail("profile get: %s", nbx_store_errmsg(fe->store));
        if (!leak)
            nbx_free(json);
    }
    return 0;
}
