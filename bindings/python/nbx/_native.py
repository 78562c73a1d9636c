"""Loading libnbx and declaring its C interface for ctypes.

Only include/nbx.h is used: the structures below mirror its public structs
field by field (sizes are checked against what the library expects where it
reports them, and every options struct carries its size).
"""
import ctypes
import ctypes.util
import os

# ---------------------------------------------------------------------------
# Finding the library
# ---------------------------------------------------------------------------

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))


def _candidates():
    """NBX_LIBRARY, then a build tree next to these sources, then the system."""
    env = os.environ.get("NBX_LIBRARY")
    if env:
        yield env
        return
    yield os.path.join(_SOURCE_DIR, "build", "libnbx.so.0")
    found = ctypes.util.find_library("nbx")
    if found:
        yield found
    yield "libnbx.so.0"


def _load():
    tried = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append(path + " (missing)")
            continue
        try:
            # CDLL releases the GIL around every call: decisions and batch
            # waits run while other Python threads keep going.
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"{path} ({e})")
    raise ImportError("nbx: cannot load libnbx; set NBX_LIBRARY to libnbx.so.0. Tried: "
                      + "; ".join(tried))


lib, library_path = _load()

try:
    lib.nbx_abi_v0  # exists only in libraries of this ABI major
except AttributeError as e:
    raise ImportError(f"nbx: {library_path} is not an ABI v0 libnbx") from e

# ---------------------------------------------------------------------------
# Constants (include/nbx.h)
# ---------------------------------------------------------------------------

NBX_OK = 0
NBX_DONE = 1
NBX_EINVAL = -1
NBX_EPARSE = -7
NBX_ENGINE_READONLY = 0x1
NBX_DECIDE_EXPLAIN = 0x1
NBX_DECIDE_RECORD = 0x2
NBX_DECIDE_AUDIT = 0x8
NBX_ITER_IDS = 0x1
NBX_EXCLUDED_COUNT = 11
NBX_TIME_BUFSZ = 32
NBX_STORE_READONLY = 0x2
NBX_KILLS_HISTORY = 0x1

# ---------------------------------------------------------------------------
# Structures
# ---------------------------------------------------------------------------

c_size_t = ctypes.c_size_t
c_char_p = ctypes.c_char_p
c_void_p = ctypes.c_void_p

LOG_FN = ctypes.CFUNCTYPE(None, c_void_p, ctypes.c_int, c_char_p)


class Kv(ctypes.Structure):
    _fields_ = [("key", c_char_p), ("value", c_char_p)]


class EngineOptions(ctypes.Structure):
    _fields_ = [
        ("size", c_size_t),
        ("store", c_char_p),
        ("store_handle", c_void_p),
        ("catalog", c_char_p),
        ("policy", c_char_p),
        ("time_limit_us", ctypes.c_uint32),
        ("memory_limit", c_size_t),
        ("flags", ctypes.c_uint),
        ("log", LOG_FN),
        ("log_ud", c_void_p),
        ("catalog_text", c_char_p),
        ("catalog_len", c_size_t),
        ("policy_text", c_char_p),
        ("policy_len", c_size_t),
        ("event_max_skew_ms", ctypes.c_int64),
        ("deployment", c_char_p),
        ("deployment_text", c_char_p),
        ("deployment_len", c_size_t),
        ("deployment_handle", c_void_p),
    ]


class EngineInfo(ctypes.Structure):
    _fields_ = [
        ("policy_name", ctypes.c_char * 128),
        ("policy_version", ctypes.c_char * 17),
        ("catalog_version", ctypes.c_char * 17),
        ("offers", ctypes.c_uint32),
        ("placements", ctypes.c_uint32),
    ]


class Request(ctypes.Structure):
    _fields_ = [
        ("size", c_size_t),
        ("customer", c_char_p),
        ("placements", ctypes.POINTER(c_char_p)),
        ("n_placements", c_size_t),
        ("session", ctypes.POINTER(Kv)),
        ("n_session", c_size_t),
        ("now_ms", ctypes.c_int64),
        ("flags", ctypes.c_uint),
        ("profile_json", c_char_p),
        ("profile_len", c_size_t),
        ("exposures_json", c_char_p),
        ("exposures_len", c_size_t),
    ]


class Action(ctypes.Structure):
    _fields_ = [
        ("offer", c_char_p),
        ("placement", c_char_p),
        ("score", ctypes.c_double),
        ("expected_margin", ctypes.c_double),
        ("probability", ctypes.c_double),
    ]


class BatchOptions(ctypes.Structure):
    _fields_ = [
        ("size", c_size_t),
        ("threads", ctypes.c_uint),
        ("window", c_size_t),
        ("placements", ctypes.POINTER(c_char_p)),
        ("n_placements", c_size_t),
        ("session", ctypes.POINTER(Kv)),
        ("n_session", c_size_t),
        ("now_ms", ctypes.c_int64),
        ("flags", ctypes.c_uint),
        ("shard_count", ctypes.c_uint32),
        ("shard_index", ctypes.c_uint32),
    ]


class BatchItem(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint64),
        ("customer", c_void_p),
        ("user", c_void_p),
        ("status", ctypes.c_int),
        ("errmsg", c_void_p),
        ("json", c_void_p),
        ("json_len", c_size_t),
        ("decision_id", c_void_p),
        ("actions", ctypes.POINTER(Action)),
        ("n_actions", c_size_t),
        ("fallback", ctypes.c_int),
        ("anonymous", ctypes.c_int),
        ("policy_error", c_void_p),
        ("expected_margin", ctypes.c_double),
        ("exclusions", ctypes.c_uint32 * NBX_EXCLUDED_COUNT),
        ("arm", c_void_p),
        ("policy_version", c_void_p),
        ("audit", c_void_p),
        ("audit_len", c_size_t),
    ]


class BatchStats(ctypes.Structure):
    _fields_ = [
        ("submitted", ctypes.c_uint64),
        ("other_shard", ctypes.c_uint64),
        ("taken", ctypes.c_uint64),
        ("decided", ctypes.c_uint64),
        ("failed", ctypes.c_uint64),
        ("fallbacks", ctypes.c_uint64),
        ("anonymous", ctypes.c_uint64),
        ("actions", ctypes.c_uint64),
        ("exclusions", ctypes.c_uint64 * NBX_EXCLUDED_COUNT),
        ("expected_margin", ctypes.c_double),
    ]


class KillInfo(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("name", c_char_p),
        ("reason", c_char_p),
        ("by", c_char_p),
        ("at_ms", ctypes.c_int64),
        ("killed", ctypes.c_int),
        ("seq", ctypes.c_uint64),
    ]


KILL_FN = ctypes.CFUNCTYPE(ctypes.c_int, c_void_p, ctypes.POINTER(KillInfo))


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------

def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


P = ctypes.POINTER
c_int = ctypes.c_int
c_uint = ctypes.c_uint

nbx_version = _fn("nbx_version", c_char_p, P(c_int))
nbx_strerror = _fn("nbx_strerror", c_char_p, c_int)
nbx_last_errmsg = _fn("nbx_last_errmsg", c_char_p)
nbx_time_parse = _fn("nbx_time_parse", c_int, c_char_p, P(ctypes.c_int64))

nbx_engine_options_init = _fn("nbx_engine_options_init", None, P(EngineOptions))
nbx_engine_open = _fn("nbx_engine_open", c_int, P(EngineOptions), P(c_void_p))
nbx_engine_close = _fn("nbx_engine_close", None, c_void_p)
nbx_engine_errmsg = _fn("nbx_engine_errmsg", c_char_p, c_void_p)
nbx_engine_info_get = _fn("nbx_engine_info_get", c_int, c_void_p, P(EngineInfo))
nbx_engine_load_policy = _fn("nbx_engine_load_policy", c_int, c_void_p, c_char_p)
nbx_engine_load_catalog = _fn("nbx_engine_load_catalog", c_int, c_void_p, c_char_p)
nbx_engine_store = _fn("nbx_engine_store", c_void_p, c_void_p)

nbx_ctx_open = _fn("nbx_ctx_open", c_int, c_void_p, P(c_void_p))
nbx_ctx_close = _fn("nbx_ctx_close", None, c_void_p)
nbx_ctx_errmsg = _fn("nbx_ctx_errmsg", c_char_p, c_void_p)
nbx_request_init = _fn("nbx_request_init", None, P(Request))
nbx_decide = _fn("nbx_decide", c_int, c_void_p, P(Request), P(c_void_p))
nbx_record = _fn("nbx_record", c_int, c_void_p, c_char_p, c_size_t, P(c_int))
nbx_result_json = _fn("nbx_result_json", c_void_p, c_void_p, P(c_size_t))
nbx_result_audit_json = _fn("nbx_result_audit_json", c_void_p, c_void_p, P(c_size_t))
nbx_audit_replay = _fn("nbx_audit_replay", c_int, c_void_p, c_char_p, c_size_t, P(c_void_p),
                       P(c_size_t))
nbx_free = _fn("nbx_free", None, c_void_p)

nbx_profile_erase = _fn("nbx_profile_erase", c_int, c_void_p, P(c_char_p), c_size_t,
                        P(ctypes.c_uint64))
nbx_profile_restore = _fn("nbx_profile_restore", c_int, c_void_p, c_char_p)
nbx_store_errmsg = _fn("nbx_store_errmsg", c_char_p, c_void_p)

nbx_iter_open = _fn("nbx_iter_open", c_int, c_void_p, c_uint, c_char_p, P(c_void_p))
nbx_iter_next = _fn("nbx_iter_next", c_int, c_void_p, P(c_char_p), P(c_char_p), P(c_size_t))
nbx_iter_close = _fn("nbx_iter_close", None, c_void_p)

nbx_batch_options_init = _fn("nbx_batch_options_init", None, P(BatchOptions))
nbx_batch_open = _fn("nbx_batch_open", c_int, c_void_p, P(BatchOptions), P(c_void_p))
nbx_batch_space = _fn("nbx_batch_space", c_size_t, c_void_p)
nbx_batch_pending = _fn("nbx_batch_pending", c_size_t, c_void_p)
nbx_batch_submit = _fn("nbx_batch_submit", c_int, c_void_p, c_char_p, P(Kv), c_size_t, c_void_p)
nbx_batch_next = _fn("nbx_batch_next", c_int, c_void_p, P(P(BatchItem)))
nbx_batch_stats_get = _fn("nbx_batch_stats_get", c_int, c_void_p, P(BatchStats))
nbx_batch_errmsg = _fn("nbx_batch_errmsg", c_char_p, c_void_p)
nbx_batch_close = _fn("nbx_batch_close", None, c_void_p)
nbx_shard_of = _fn("nbx_shard_of", ctypes.c_uint32, c_char_p, ctypes.c_uint32)
nbx_excluded_name = _fn("nbx_excluded_name", c_char_p, c_int)

nbx_engine_load_deployment = _fn("nbx_engine_load_deployment", c_int, c_void_p, c_char_p)
nbx_engine_deployment = _fn("nbx_engine_deployment", c_void_p, c_void_p)
nbx_deployment_close = _fn("nbx_deployment_close", None, c_void_p)
nbx_deployment_name = _fn("nbx_deployment_name", c_char_p, c_void_p)
nbx_deployment_version = _fn("nbx_deployment_version", c_char_p, c_void_p)
nbx_deployment_assign = _fn("nbx_deployment_assign", c_char_p, c_void_p, c_char_p, c_size_t)
nbx_store_open = _fn("nbx_store_open", c_int, c_char_p, c_uint, P(c_void_p))
nbx_store_close = _fn("nbx_store_close", None, c_void_p)
nbx_time_format = _fn("nbx_time_format", c_int, ctypes.c_int64, c_char_p)
nbx_kill = _fn("nbx_kill", c_int, c_void_p, c_int, c_char_p, c_char_p, c_char_p)
nbx_unkill = _fn("nbx_unkill", c_int, c_void_p, c_int, c_char_p, c_char_p, c_char_p)
nbx_kills_read = _fn("nbx_kills_read", c_int, c_void_p, c_uint, KILL_FN, c_void_p)
nbx_kill_kind_name = _fn("nbx_kill_kind_name", c_char_p, c_int)
nbx_assign_bucket = _fn("nbx_assign_bucket", ctypes.c_uint32, c_char_p, c_size_t, c_char_p,
                        c_size_t)


# ---------------------------------------------------------------------------
# The options structs must be the library's size: its *_init() writes that
# many bytes, so a struct mirrored short here would be overrun (a crash, not
# an error). Checked once, on a buffer large enough for any version.
# ---------------------------------------------------------------------------

def _check_struct_sizes():
    for init, struct in (("nbx_engine_options_init", EngineOptions),
                         ("nbx_request_init", Request),
                         ("nbx_batch_options_init", BatchOptions)):
        buf = ctypes.create_string_buffer(4096)
        fn = lib[init]  # a fresh function object: the typed one above is kept
        fn.restype, fn.argtypes = None, [c_void_p]
        fn(ctypes.cast(buf, c_void_p))
        size = c_size_t.from_buffer(buf).value
        if size != ctypes.sizeof(struct):
            raise ImportError(f"nbx: {library_path}: {init}() sets a struct of {size} bytes, "
                              f"this binding's {struct.__name__} has {ctypes.sizeof(struct)}: "
                              f"the binding and the library are from different versions")


_check_struct_sizes()
