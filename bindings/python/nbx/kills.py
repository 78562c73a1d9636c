"""Kill switches from Python (docs/experiments.md, "Kill switches"): kill
an offer, an arm of a deployment or a policy version in a store, lift a
kill, list what is killed and every change ever made. Over nbx_kill(),
nbx_unkill() and nbx_kills_read() (include/nbx.h).

    nbx.kill("store", "offer", "winback_20", reason="legal hold")
    nbx.kills("store")        # [{"kind": "offer", "name": "winback_20", ...}]
    nbx.unkill("store", "offer", "winback_20")

A kill is effective on the next decision of every process and nginx worker
using the store, without a reload. `store` is a store directory or an open
nbx.Engine (engine.kill(...) is the same call). LMDB allows one environment
per directory and process, so a directory that an Engine of this process
has open is reached through that engine's store, whichever way the path is
spelled; otherwise it is opened for the call and closed again.
"""
import ctypes
import os

from . import _native as N
from .engine import Engine, _engine_on, _text
from .errors import InvalidArgument, ReadOnly, error_for

#: the kinds, as nbx_kill_kind
KINDS = {"offer": 1, "arm": 2, "policy": 3}


def _kind(kind):
    if isinstance(kind, str) and kind in KINDS:
        return KINDS[kind]
    raise InvalidArgument(f"kind must be 'offer', 'arm' or 'policy', got {kind!r}")


def _optional(value, what):
    return None if value is None else _text(value, what)


class _Store:
    """The nbx_store of `store` (a path or an Engine) for one call: borrowed
    from an engine, else opened here and closed on exit."""

    def __init__(self, store, readonly):
        self.handle, self.owned, self.engine = None, False, None
        if isinstance(store, Engine):
            self.engine = store
        elif isinstance(store, (str, bytes, os.PathLike)):
            self.engine = _engine_on(store)
            if self.engine is None:
                out = ctypes.c_void_p()
                path = _text(os.fspath(store), "store")
                rc = N.nbx_store_open(path, N.NBX_STORE_READONLY if readonly else 0,
                                      ctypes.byref(out))
                if rc != N.NBX_OK:
                    msg = (N.nbx_last_errmsg() or b"").decode("utf-8", "replace")
                    raise error_for(rc, msg or f"store {os.fsdecode(store)}: "
                                    f"{N.nbx_strerror(rc).decode()}")
                self.handle, self.owned = out.value, True
        else:
            raise InvalidArgument(f"store must be a store directory or an nbx.Engine, got "
                                  f"{type(store).__name__}")
        if self.engine is not None:
            self.handle = self.engine._store_handle()

    def error(self, rc):
        err = error_for(rc, (N.nbx_store_errmsg(self.handle) or b"").decode("utf-8", "replace"))
        if isinstance(err, ReadOnly) and self.engine is not None and self.engine.readonly:
            err = ReadOnly(f"{err.message}: the nbx.Engine of this process on this store was "
                           f"opened with readonly=True (one LMDB environment per process): "
                           f"change kills through an engine opened read-write")
        return err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.owned:
            N.nbx_store_close(self.handle)
        self.handle = None


def _change(store, kind, name, reason, by, killed):
    kind = _kind(kind)
    name = _text(name, "name")
    reason = _optional(reason, "reason")
    by = _optional(by, "by")
    with _Store(store, readonly=False) as s:
        fn = N.nbx_kill if killed else N.nbx_unkill
        rc = fn(s.handle, kind, name, reason, by)
        if rc != N.NBX_OK:
            raise s.error(rc)


def kill(store, kind, name, reason, by="python"):
    """Kill what kind and name designate, or kill it again with a new
    reason; the change is appended to the store's history.

    store: a store directory (opened writable; it must exist) or an open
    nbx.Engine not opened read-only. kind: "offer", "arm" or "policy".
    name: the offer id, DEPLOYMENT.ARM ("q4.challenger") or an arm's name
    alone ("challenger": that arm in every deployment), or policy version
    (16 lowercase hex digits, a result's policy.version); it need not
    exist anywhere yet. reason: why, 1 to 1024 bytes of text (required).
    by: the origin kept with it (1 to 64 of A-Z, a-z, 0-9, "_", ".", "-").

    Raises InvalidArgument naming the field (kind, offer, arm, policy,
    reason, by) and what is wrong; ReadOnly (an engine opened read-only, a
    store of a format before 3: `nbx store upgrade`); NotFound (no store
    there). Nothing is written on failure.
    """
    _change(store, kind, name, reason, by, True)


def unkill(store, kind, name, reason=None, by="python"):
    """Lift a kill (arguments as kill(); reason optional, kept in the
    history). Raises NotFound when it is not killed."""
    _change(store, kind, name, reason, by, False)


def kills(store, history=False):
    """What is killed now, by kind (offers, arms, policies) then name, or
    with history=True every kill and unkill in the order they were made.

    store: a store directory (opened read-only) or an nbx.Engine. Each entry
    is a dict with the fields of `nbx kill --list --json`: "kind", "name",
    "reason" ("" if none), "at" (RFC 3339, milliseconds, UTC) and "by";
    history entries add "seq" (from 1) and "change" ("kill" or "unkill").
    Reasons are the users' text: escape them before a terminal or a page.
    """
    out, failure = [], []
    at = ctypes.create_string_buffer(N.NBX_TIME_BUFSZ)

    def each(_ud, k):
        try:
            k = k.contents
            # a time outside the years 1-9999 (a writer's broken clock): None
            when = at.value.decode() if N.nbx_time_format(k.at_ms, at) == N.NBX_OK else None
            entry = {"kind": N.nbx_kill_kind_name(k.kind).decode(),
                     "name": k.name.decode("utf-8", "surrogateescape"),
                     "reason": k.reason.decode("utf-8", "replace"),
                     "at": when, "by": k.by.decode("utf-8", "replace")}
            if history:
                entry = {"seq": k.seq, "change": "kill" if k.killed else "unkill", **entry}
            out.append(entry)
            return 0
        except BaseException as e:  # must not unwind into C: stop, raise after
            failure.append(e)
            return 1

    callback = N.KILL_FN(each)
    with _Store(store, readonly=True) as s:
        rc = N.nbx_kills_read(s.handle, N.NBX_KILLS_HISTORY if history else 0, callback, None)
        if rc != N.NBX_OK:
            raise s.error(rc)
    if failure:
        raise failure[0]
    return out
