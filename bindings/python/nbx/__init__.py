"""nbx: next-best-action decisions from Python, over libnbx (ctypes).

    import nbx

    with nbx.Engine(store="store", catalog="catalog.json",
                    policy="policies/margin_per_session.lua", readonly=True) as engine:
        result = engine.decide("c0000042", session={"channel": "email"})
        for r in engine.batch(engine.customer_ids(), threads=2):
            ...

The library is found through $NBX_LIBRARY, else build/libnbx.so.0 in the
source tree this package sits in, else the system's libnbx.so.0.
See docs/batch.md for the API and an example job, docs/experiments.md for
deployments and the kill switches (nbx.kill, nbx.unkill, nbx.kills).
"""
from . import _native
from .audit import AuditLog
from .engine import Engine, as_of_ms, assign_bucket, shard_of
from .kills import kill, kills, unkill
from .errors import (Corrupt, Error, InvalidArgument, IOFailure, LimitExceeded, NotFound,
                     OutOfMemory, ParseError, PolicyError, ReadOnly, StoreError, StoreFull,
                     VersionMismatch, error_for)

library_path = _native.library_path


def version():
    """The version of the libnbx loaded, e.g. "0.1.0"."""
    return _native.nbx_version(None).decode()


def excluded_names():
    """The exclusion reasons, in nbx_excluded order (index 1 = consent, ...)."""
    return [(_native.nbx_excluded_name(i) or b"").decode() for i in range(1, _native.NBX_EXCLUDED_COUNT)]


__all__ = ["Engine", "AuditLog", "Error", "InvalidArgument", "OutOfMemory", "IOFailure", "NotFound",
           "Corrupt", "VersionMismatch", "ParseError", "PolicyError", "StoreError", "StoreFull",
           "LimitExceeded", "ReadOnly", "error_for", "shard_of", "assign_bucket", "as_of_ms", "version",
           "excluded_names", "library_path", "kill", "unkill", "kills"]
