"""The Engine: decisions, events and batches over one libnbx engine."""
import collections
import collections.abc
import ctypes
import datetime
import json
import logging
import os
import threading
import weakref

from . import _native as N
from .audit import AuditLog
from .errors import Error, InvalidArgument, error_for

_log = logging.getLogger("nbx")
# Open engines by their store directory's (device, inode): LMDB allows one
# environment per directory and process, so nbx.kill(path) goes through
# the store of an engine of this process on that directory.
_open_engines = weakref.WeakKeyDictionary()
_open_engines_lock = threading.Lock()
_LOG_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO}
_ON_ERROR = ("raise", "skip", "return")
# Epoch seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
_EPOCH_MIN, _EPOCH_MAX = -62135596800, 253402300799
_THREADS_MAX = 256       # NBX_BATCH_THREADS_MAX
_WINDOW_MAX = 1 << 20    # NBX_BATCH_WINDOW_MAX
# The C fields' ranges: ctypes would wrap a value outside them silently.
_TIME_LIMIT_MAX = 0xFFFFFFFF                            # uint32_t time_limit_us
_MEMORY_LIMIT_MAX = (1 << 8 * ctypes.sizeof(ctypes.c_size_t)) - 1  # size_t memory_limit


def _text(value, what):
    """str or bytes -> bytes for C; anything else is a caller mistake. C
    strings end at NUL, so "a\\0b" would silently become "a": refused."""
    if isinstance(value, str):
        try:
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise InvalidArgument(f"{what} is not valid text: {e}") from None
    elif isinstance(value, bytes):
        data = value
    else:
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    if b"\0" in data:
        raise InvalidArgument(f"{what} must not contain NUL: {value!r}")
    return data


def _count(value, what, most):
    """threads, window, limits: None (or 0) for the default, else an int
    1..most."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer from 1 to {most} (or None for the "
                              f"default), got {value!r}")
    if value == 0:
        return 0
    if not 1 <= value <= most:
        raise InvalidArgument(f"{what} must be from 1 to {most} (or None for the default), "
                              f"got {value}")
    return value


def _shard(shard):
    """shard=(i, n) -> (i, n), checked: n >= 1 and 0 <= i < n."""
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise InvalidArgument(f"shard must be a pair (i, n), got {shard!r}") from None
    for v in (index, count):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidArgument(f"shard must be a pair of integers (i, n), got {shard!r}")
    if not 1 <= count <= 0xFFFFFFFF:
        raise InvalidArgument(f"shard {index}/{count}: the count must be from 1 to 2^32-1")
    if not 0 <= index < count:
        raise InvalidArgument(f"shard {index}/{count}: the index must be in 0..{count - 1}")
    return index, count


def _session_value(value):
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return repr(value).encode()
    return _text(value, "a session value")


def _session_array(session, what="session"):
    """A mapping -> (Kv array, count). None values are left out, as a JSON
    null is on the CLI."""
    if session is None:
        return None, 0
    if not isinstance(session, collections.abc.Mapping):
        raise InvalidArgument(f"{what} must be a mapping of field names to values (a dict), "
                              f"got {type(session).__name__}")
    encoded = [(_text(k, "a session key"), _session_value(v))
               for k, v in session.items() if v is not None]
    if not encoded:
        return None, 0
    arr = (N.Kv * len(encoded))()
    for i, (k, v) in enumerate(encoded):
        arr[i].key = k
        arr[i].value = v
    # ctypes keeps the bytes objects alive through the array's _objects.
    return arr, len(encoded)


def _placement_array(placements):
    """An id or an iterable of ids -> (char * array, count); None: all."""
    if placements is None:
        return None, 0
    if isinstance(placements, (str, bytes)):
        placements = [placements]
    try:
        encoded = [_text(p, "a placement") for p in placements]
    except TypeError:
        raise InvalidArgument(f"placements must be a list of placement ids, got "
                              f"{type(placements).__name__}") from None
    if not encoded:
        return None, 0
    return (ctypes.c_char_p * len(encoded))(*encoded), len(encoded)


def _request_fields(req, placements, session, as_of, explain, record):
    """The fields nbx_request and nbx_batch_options share, checked. The
    arrays are kept alive by the struct (ctypes' _objects)."""
    pl, req.n_placements = _placement_array(placements)
    if pl is not None:
        req.placements = pl
    kv, req.n_session = _session_array(session)
    if kv is not None:
        req.session = kv
    req.now_ms = as_of_ms(as_of)
    req.flags = (N.NBX_DECIDE_EXPLAIN if explain else 0) | (N.NBX_DECIDE_RECORD if record else 0)


def as_of_ms(as_of):
    """The decision clock in milliseconds since the epoch (0: now).

    Accepts None (now), a datetime (naive means UTC), an RFC 3339 string or
    epoch seconds as a string ("2026-03-01T12:00:00Z", "1767225600"), or a
    number of epoch seconds (int or float).
    """
    if as_of is None:
        return 0
    if isinstance(as_of, datetime.datetime):
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=datetime.timezone.utc)
        return int(round(as_of.timestamp() * 1000))
    if isinstance(as_of, bool):
        raise InvalidArgument("as_of must be a time, not a bool")
    if isinstance(as_of, (int, float)):
        # The range RFC 3339 times can have (years 0001-9999); NaN fails it.
        if not _EPOCH_MIN <= as_of <= _EPOCH_MAX:
            raise InvalidArgument(f"as_of: {as_of!r} epoch seconds is not a time from year 1 "
                                  f"to 9999")
        return int(round(as_of * 1000))
    out = ctypes.c_int64()
    rc = N.nbx_time_parse(_text(as_of, "as_of"), ctypes.byref(out))
    if rc != N.NBX_OK:
        raise error_for(rc, f"as_of: '{as_of}' is not a time: use RFC 3339 or epoch seconds")
    return out.value


def _last_error(rc):
    msg = N.nbx_last_errmsg() or b""
    return error_for(rc, msg.decode("utf-8", "replace") or N.nbx_strerror(rc).decode())


def shard_of(customer, n):
    """The shard (0..n-1) of a customer id: xxh64(id bytes, seed 0) mod n,
    the same partition as ``nbx batch --shard I/N``."""
    if not isinstance(n, int) or n < 1 or n > 0xFFFFFFFF:
        raise InvalidArgument(f"shard count must be an integer from 1 to 2^32-1, got {n!r}")
    return N.nbx_shard_of(_text(customer, "customer"), n)


def assign_bucket(salt, customer):
    """The customer's assignment bucket (0..9999) for a deployment's salt:
    XXH64(customer, seed = XXH64(salt, 0)) mod 10000, as every binding
    computes it (docs/experiments.md, "Assignment")."""
    salt, customer = _text(salt, "salt"), _text(customer, "customer")
    return N.nbx_assign_bucket(salt, len(salt), customer, len(customer))


class Engine:
    """An nbx engine: a store, a catalog and a policy, or a deployment (arms,
    a holdout and shadow policies: docs/experiments.md) instead of the policy.

    Thread-safe: any thread may call decide(), record() and batch(); each
    thread gets its own decision context (an nbx_ctx belongs to one thread),
    opened on first use and closed by close(). close() itself must not run
    while other threads still use the engine.

    Use it as a context manager, or call close() (idempotent). An engine does
    not survive fork(): open it in the process that uses it (in a Dask task,
    a worker process, ...).
    """

    def __init__(self, store, catalog, policy=None, readonly=False, time_limit_us=0,
                 memory_limit=0, log=None, deployment=None):
        self._handle = None
        if (policy is None) == (deployment is None):
            raise InvalidArgument("give policy or deployment (a deployment file names its "
                                  "policies), exactly one of them")
        time_limit_us = _count(time_limit_us, "time_limit_us", _TIME_LIMIT_MAX)
        memory_limit = _count(memory_limit, "memory_limit", _MEMORY_LIMIT_MAX)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._contexts = []
        self._batches = weakref.WeakSet()
        self._log = log
        self._log_cb = N.LOG_FN(self._on_log)
        serving = policy if deployment is None else deployment
        self._keep = [_text(os.fspath(store), "store"), _text(os.fspath(catalog), "catalog"),
                      _text(os.fspath(serving), "policy" if deployment is None else "deployment")]
        opts = N.EngineOptions()
        N.nbx_engine_options_init(ctypes.byref(opts))
        opts.store, opts.catalog = self._keep[:2]
        if deployment is None:
            opts.policy = self._keep[2]
        else:
            opts.deployment = self._keep[2]
        opts.time_limit_us = time_limit_us
        opts.memory_limit = memory_limit
        opts.flags = N.NBX_ENGINE_READONLY if readonly else 0
        opts.log = self._log_cb
        handle = ctypes.c_void_p()
        rc = N.nbx_engine_open(ctypes.byref(opts), ctypes.byref(handle))
        if rc != N.NBX_OK:
            raise _last_error(rc)
        self._handle = handle.value
        self.readonly = bool(readonly)
        try:
            st = os.stat(self._keep[0])
        except OSError:
            pass
        else:
            with _open_engines_lock:
                _open_engines[self] = (st.st_dev, st.st_ino)

    # -- lifetime ---------------------------------------------------------

    def close(self):
        """Close batches, contexts and the engine. Calling it again does nothing."""
        if self._handle is None:
            return
        for b in list(self._batches):
            b.close()
        with self._lock:
            contexts, self._contexts = self._contexts, []
            handle, self._handle = self._handle, None
        if os.getpid() != self._pid:
            return  # inherited through fork(): never touch the parent's handles
        for ctx in contexts:
            N.nbx_ctx_close(ctx)
        N.nbx_engine_close(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    @property
    def closed(self):
        return self._handle is None

    def _check(self):
        if self._handle is None:
            raise InvalidArgument("the engine is closed")
        if os.getpid() != self._pid:
            raise InvalidArgument("the engine was opened in another process: open it after "
                                  "fork(), in the process that uses it")
        return self._handle

    def _ctx(self):
        handle = self._check()
        ctx = getattr(self._local, "ctx", None)
        if ctx is not None and self._local.engine == handle:
            return ctx
        out = ctypes.c_void_p()
        rc = N.nbx_ctx_open(handle, ctypes.byref(out))
        if rc != N.NBX_OK:
            raise _last_error(rc)
        with self._lock:
            self._contexts.append(out.value)
        self._local.ctx = out.value
        self._local.engine = handle
        return out.value

    def _on_log(self, ud, level, message):
        # Called from any thread that decides, with the GIL taken by ctypes.
        try:
            text = message.decode("utf-8", "replace")
            if self._log is not None:
                self._log(level, text)
            else:
                _log.log(_LOG_LEVELS.get(level, logging.INFO), "%s", text)
        except Exception:  # an exception must not unwind into C
            pass

    # -- engine -----------------------------------------------------------

    def info(self):
        """What the engine serves: policy name and version, catalog version,
        offer and placement counts."""
        info = N.EngineInfo()
        rc = N.nbx_engine_info_get(self._check(), ctypes.byref(info))
        if rc != N.NBX_OK:
            raise _last_error(rc)
        out = {"policy_name": info.policy_name.decode(),
               "policy_version": info.policy_version.decode(),
               "catalog_version": info.catalog_version.decode(),
               "offers": info.offers, "placements": info.placements, "deployment": None}
        d = N.nbx_engine_deployment(self._check())
        if d:
            out["deployment"] = {"name": N.nbx_deployment_name(d).decode(),
                                 "version": N.nbx_deployment_version(d).decode()}
            N.nbx_deployment_close(d)
        return out

    def arm_of(self, customer):
        """The arm the deployment serving assigns the customer to ("holdout"
        for those held out; kill switches not applied), or None when the
        engine serves a single policy."""
        customer = _text(customer, "customer")
        d = N.nbx_engine_deployment(self._check())
        if not d:
            return None
        try:
            return N.nbx_deployment_assign(d, customer, len(customer)).decode()
        finally:
            N.nbx_deployment_close(d)

    def load_deployment(self, path):
        """Swap in a deployment file atomically (it replaces the policy or the
        deployment serving) after a trial of every arm's and shadow's policy;
        on failure what serves keeps serving."""
        rc = N.nbx_engine_load_deployment(self._check(), _text(os.fspath(path), "path"))
        if rc != N.NBX_OK:
            raise _last_error(rc)

    def load_policy(self, path):
        """Swap in a new policy file atomically; on failure the old one serves."""
        rc = N.nbx_engine_load_policy(self._check(), _text(os.fspath(path), "path"))
        if rc != N.NBX_OK:
            raise _last_error(rc)

    def load_catalog(self, path):
        """Swap in a new catalog file atomically; on failure the old one serves."""
        rc = N.nbx_engine_load_catalog(self._check(), _text(os.fspath(path), "path"))
        if rc != N.NBX_OK:
            raise _last_error(rc)

    # -- decisions ----------------------------------------------------------

    def decide(self, customer, session=None, placements=None, explain=False, as_of=None,
               record=False, raw=False, log=None):
        """Decide for one customer: the result as a dict (docs/decisions.md).

        session: dict of session fields (str, numbers and bools are passed as
        text). placements: list of placement ids (default: all). explain:
        add every candidate and why it was excluded. as_of: the decision's
        clock (see as_of_ms). record: record the chosen actions as
        impressions (needs an engine not opened read-only). raw: return the
        result JSON text instead of a dict (parsing it is most of the
        binding's cost per decision). log: append the decision's audit line
        to this path, file object or nbx.AuditLog (docs/experiments.md); a
        line that cannot be written raises nbx.IOFailure (a path is opened
        before deciding, so a log that cannot be opened decides nothing).
        """
        ctx = self._ctx()
        req = N.Request()
        req.size = ctypes.sizeof(N.Request)
        req.customer = _text(customer, "customer")
        _request_fields(req, placements, session, as_of, explain, record)
        audit = _open_log(log)
        try:
            if audit is not None:
                req.flags |= N.NBX_DECIDE_AUDIT
            result = ctypes.c_void_p()
            rc = N.nbx_decide(ctx, ctypes.byref(req), ctypes.byref(result))
            if rc != N.NBX_OK:
                raise error_for(rc, (N.nbx_ctx_errmsg(ctx) or b"").decode("utf-8", "replace"))
            size = ctypes.c_size_t()
            if audit is not None:
                line = N.nbx_result_audit_json(result, ctypes.byref(size))
                audit.write(ctypes.string_at(line, size.value))
            text = ctypes.string_at(N.nbx_result_json(result, ctypes.byref(size)), size.value)
        finally:
            if audit is not None and audit is not log:
                audit.close()
        return text.decode() if raw else json.loads(text)

    def replay(self, line):
        """Make the decision of one audit line again (docs/experiments.md,
        "Replay") with this engine: its report as a dict, with "identical",
        "differences" and "reasons". line: str or bytes."""
        ctx = self._ctx()
        data = _text(line, "line") if isinstance(line, str) else bytes(line)
        out, size = ctypes.c_void_p(), ctypes.c_size_t()
        rc = N.nbx_audit_replay(ctx, data, len(data), ctypes.byref(out), ctypes.byref(size))
        if rc != N.NBX_OK:
            raise error_for(rc, (N.nbx_ctx_errmsg(ctx) or b"").decode("utf-8", "replace"))
        try:
            return json.loads(ctypes.string_at(out, size.value))
        finally:
            N.nbx_free(out)

    def record(self, event):
        """Apply one event (a dict or a JSON string: impression, click,
        accept, dismiss, purchase). Returns True if applied, False if its
        customer had its event_id before, or was erased (see delete())."""
        ctx = self._ctx()
        if isinstance(event, dict):
            data = json.dumps(event, separators=(",", ":")).encode()
        else:
            data = _text(event, "event")
        applied = ctypes.c_int()
        rc = N.nbx_record(ctx, data, len(data), ctypes.byref(applied))
        if rc != N.NBX_OK:
            raise error_for(rc, (N.nbx_ctx_errmsg(ctx) or b"").decode("utf-8", "replace"))
        return bool(applied.value)

    # -- the store ------------------------------------------------------------

    def customer_ids(self, shard=None, after=None):
        """Every profile id in the store, in id order (a generator). shard=(i, n)
        keeps the ids with shard_of(id, n) == i; after resumes after an id."""
        store = N.nbx_engine_store(self._check())
        if shard is not None:
            index, count = _shard(shard)
        it = ctypes.c_void_p()
        rc = N.nbx_iter_open(store, N.NBX_ITER_IDS,
                             None if after is None else _text(after, "after"), ctypes.byref(it))
        if rc != N.NBX_OK:
            raise _last_error(rc)
        try:
            cid = ctypes.c_char_p()
            while True:
                rc = N.nbx_iter_next(it, ctypes.byref(cid), None, None)
                if rc == N.NBX_DONE:
                    return
                if rc != N.NBX_OK:
                    raise _last_error(rc)
                raw = cid.value
                if shard is None or N.nbx_shard_of(raw, count) == index:
                    yield raw.decode("utf-8", "surrogateescape")
        finally:
            N.nbx_iter_close(it)

    def delete(self, *ids):
        """Erase customers (GDPR erasure): each id's profile, exposure
        counters and event records, in one transaction, leaving a
        suppression record (a keyed hash of the id): later imports, events
        and record() calls for the id are refused until restore(id).
        Returns {id: records erased} (0: the store held nothing for the id;
        it is suppressed all the same). Needs an engine not opened
        read-only."""
        if len(ids) == 1 and not isinstance(ids[0], (str, bytes)):
            ids = tuple(ids[0])  # delete(["a", "b"]) as well as delete("a", "b")
        raw = [_text(i, "id") for i in ids]
        if not raw:
            return {}
        store = N.nbx_engine_store(self._check())
        arr = (ctypes.c_char_p * len(raw))(*raw)
        counts = (ctypes.c_uint64 * len(raw))()
        rc = N.nbx_profile_erase(store, arr, len(raw), counts)
        if rc != N.NBX_OK:
            raise error_for(rc, (N.nbx_store_errmsg(store) or b"").decode("utf-8", "replace"))
        return {i if isinstance(i, str) else i.decode("utf-8", "surrogateescape"): counts[n]
                for n, i in enumerate(ids)}

    def restore(self, customer):
        """Lift an erasure (renewed consent): data for the id is taken again.
        Raises NotFound if the id is not suppressed."""
        store = N.nbx_engine_store(self._check())
        rc = N.nbx_profile_restore(store, _text(customer, "customer"))
        if rc != N.NBX_OK:
            raise error_for(rc, (N.nbx_store_errmsg(store) or b"").decode("utf-8", "replace"))

    def _store_handle(self):
        store = N.nbx_engine_store(self._check())
        if not store:
            raise InvalidArgument("the engine has no store")
        return store

    # -- kill switches ----------------------------------------------------------
    # nbx.kills imports this module: imported when called

    def kill(self, kind, name, reason, by="python"):
        """nbx.kill() on this engine's store: kill an offer, an arm
        ("q4.challenger", or "challenger" in every deployment) or a policy
        version; effective on the next decision
        of every process using the store (needs an engine not opened
        read-only)."""
        from .kills import kill
        kill(self, kind, name, reason, by)

    def unkill(self, kind, name, reason=None, by="python"):
        """nbx.unkill() on this engine's store: lift a kill (NotFound if it
        is not killed)."""
        from .kills import unkill
        unkill(self, kind, name, reason, by)

    def kills(self, history=False):
        """nbx.kills() on this engine's store: what is killed now, or every
        kill and unkill with history=True, as a list of dicts."""
        from .kills import kills
        return kills(self, history)

    # -- batches --------------------------------------------------------------

    def batch(self, customers, threads=None, session=None, placements=None, as_of=None,
              explain=False, record=False, shard=None, window=None, on_error="raise",
              raw=False, log=None):
        """Decide for many customers on the library's worker threads; yields
        the results in input order (a generator, consumed by one thread).

        customers: an iterable of ids, or of dicts with "id" and that
        customer's session fields (they replace `session` fields of the same
        name). threads: worker threads (default: the CPUs available).
        as_of: one clock for the whole batch (default: now, fixed when the
        batch starts). shard=(i, n): decide only the customers with
        shard_of(id, n) == i, skipping the others. record: record each chosen
        action as an impression (read-write engine). window: decisions in
        flight (default 256 per thread). raw: yield the result JSON text
        instead of a dict. log: append each decision's audit line to this
        path, file object or nbx.AuditLog, in input order, as its result is
        yielded (a line that cannot be written raises nbx.IOFailure).

        on_error: what a customer that cannot be decided (a bad id, a failed
        decision) yields: "raise" raises its nbx.Error when its turn comes,
        "skip" yields nothing for it, "return" yields
        {"customer": id, "error": {"code", "name", "message"}} ("customer"
        is None for a dict item without "id").

        record=True and stopping early: customers are decided (and their
        impressions recorded) up to `window` ahead of the one being
        yielded. A bad item stops the reading, so with on_error="raise"
        nothing after it is decided; a decision that fails is raised after
        the results already decided behind it have been yielded, so every
        recorded customer reaches the consumer. But a consumer that leaves
        the loop early (break, close(), an exception of its own) leaves up
        to window - 1 customers recorded and never seen: pass a small
        window (window=1: none) when that matters.
        """
        if on_error not in _ON_ERROR:
            raise InvalidArgument(f"on_error must be one of {', '.join(_ON_ERROR)}")
        if isinstance(customers, (str, bytes)):
            raise InvalidArgument("customers must be an iterable of ids or dicts, not a single "
                                  "string (batch([id]) for one customer)")
        handle = self._check()
        opts = N.BatchOptions()
        N.nbx_batch_options_init(ctypes.byref(opts))
        opts.threads = _count(threads, "threads", _THREADS_MAX)
        opts.window = _count(window, "window", _WINDOW_MAX)
        _request_fields(opts, placements, session, as_of, explain, record)
        if shard is not None:
            index, count = _shard(shard)
            opts.shard_count, opts.shard_index = count, index
        try:
            source = iter(customers)
        except TypeError:
            raise InvalidArgument(f"customers must be an iterable of ids or dicts, got "
                                  f"{type(customers).__name__}") from None
        audit = _open_log(log)
        if audit is not None:
            opts.flags |= N.NBX_DECIDE_AUDIT
        out = ctypes.c_void_p()
        rc = N.nbx_batch_open(handle, ctypes.byref(opts), ctypes.byref(out))
        if rc != N.NBX_OK:
            if audit is not None and audit is not log:
                audit.close()
            raise _last_error(rc)
        b = _Batch(out.value, audit, audit is not log)
        self._batches.add(b)
        return _run_batch(self, b, source, on_error, raw)


def _engine_on(path):
    """An open Engine of this process on the store directory `path`
    (however it is spelled), one opened read-write first; None if none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    with _open_engines_lock:
        found = [e for e, key in _open_engines.items() if key == (st.st_dev, st.st_ino)]
    for e in sorted(found, key=lambda e: e.readonly):
        if not e.closed and e._pid == os.getpid():
            return e
    return None


def _open_log(log):
    """log= of decide() and batch(): None, an AuditLog, or what opens one."""
    if log is None or isinstance(log, AuditLog):
        return log
    return AuditLog(log)


class _Batch:
    """Owns an nbx_batch handle (and the audit log it opened); closed by
    the generator or by Engine.close()."""

    def __init__(self, handle, log=None, own_log=False):
        self.handle = handle
        self.log = log
        self.own_log = own_log

    def close(self):
        handle, self.handle = self.handle, None
        if handle is not None:
            N.nbx_batch_close(handle)
        if self.own_log:
            self.own_log = False
            self.log.close()


def _error_record(customer, err):
    return {"customer": customer,
            "error": {"code": err.code, "name": getattr(err, "name", "NBX_ERROR"),
                      "message": err.message}}


class _Failed:
    """An item that could not be queued, handed out in its place."""

    __slots__ = ("customer", "error", "fatal")

    def __init__(self, customer, error, fatal=False):
        self.customer, self.error, self.fatal = customer, error, fatal


def _submit(handle, item, index):
    """Queue one customer; returns (rc, customer id) or raises Error."""
    if isinstance(item, collections.abc.Mapping):
        if "id" not in item:
            raise error_for(N.NBX_EPARSE, f"item {index} has no id")
        customer = item["id"]
        fields = {k: v for k, v in item.items() if k != "id"}
        kv, n = _session_array(fields, f"item {index}")
        return N.nbx_batch_submit(handle, _text(customer, "customer id"), kv, n, None), customer
    return N.nbx_batch_submit(handle, _text(item, "customer id"), None, 0, None), item


def _item_customer(item):
    if isinstance(item, collections.abc.Mapping):
        return item.get("id")
    return item


def _run_batch(engine, b, source, on_error, raw):
    # `engine` is held so that the engine outlives the generator even when
    # the caller keeps no other reference to it.
    item_ptr = ctypes.POINTER(N.BatchItem)()
    try:
        window = N.nbx_batch_space(b.handle)
        # In order: None for a queued decision, else a _Failed to hand out
        # in its place. Bounded: queued decisions by the window, errors by
        # stopping the reading at twice the window.
        pending = collections.deque()
        in_flight = 0
        index = 0
        exhausted = False
        # A decision that failed with on_error="raise": raised once the
        # decisions queued behind it (decided, perhaps recorded) are yielded.
        deferred = None
        while True:
            while not exhausted and in_flight < window and len(pending) < 2 * window:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                if b.handle is None:
                    raise InvalidArgument("the engine was closed during the batch")
                index += 1
                try:
                    rc, customer = _submit(b.handle, item, index - 1)
                except Error as e:
                    rc, customer, err = e.code, _item_customer(item), e
                else:
                    if rc == N.NBX_OK:
                        pending.append(None)
                        in_flight += 1
                        continue
                    if rc == N.NBX_DONE:
                        continue  # another shard's customer
                    msg = (N.nbx_batch_errmsg(b.handle) or b"").decode("utf-8", "replace")
                    err = error_for(rc, msg)
                fatal = rc not in (N.NBX_EINVAL, N.NBX_EPARSE)  # the batch cannot go on
                pending.append(_Failed(customer, err, fatal))
                if fatal or on_error == "raise":
                    # Nothing after it is decided (or recorded): the error
                    # is raised in its turn, after the results before it.
                    exhausted = True
            if not pending:
                if deferred is not None:
                    raise deferred
                return
            head = pending.popleft()
            if head is not None:
                if deferred is not None:
                    continue
                if head.fatal or on_error == "raise":
                    raise head.error
                if on_error == "return":
                    yield _error_record(head.customer, head.error)
                continue
            if b.handle is None:
                raise InvalidArgument("the engine was closed during the batch")
            rc = N.nbx_batch_next(b.handle, ctypes.byref(item_ptr))
            if rc != N.NBX_OK:
                raise _last_error(rc)
            in_flight -= 1
            it = item_ptr.contents
            if it.status != N.NBX_OK:
                customer = ctypes.string_at(it.customer).decode("utf-8", "surrogateescape")
                err = error_for(it.status, ctypes.string_at(it.errmsg).decode("utf-8", "replace"))
                if on_error == "raise":
                    if deferred is None:
                        deferred = err
                        exhausted = True
                    continue
                if on_error == "return":
                    yield _error_record(customer, err)
                continue
            text = ctypes.string_at(it.json, it.json_len)
            if b.log is not None:
                b.log.write(ctypes.string_at(it.audit, it.audit_len))
            yield text.decode() if raw else json.loads(text)
    finally:
        b.close()
