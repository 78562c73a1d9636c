"""nbx errors: one exception class per nbx status code.

Every exception carries the library's detail message (``message``: file and
line, field, offer id) and the negative status code (``code``), and its
class says which code it is, so callers catch what they can handle:

    try:
        engine.decide("c0000042", placements=["nowhere"])
    except nbx.InvalidArgument as e:
        print(e.code, e.message)   # -1 field 'placement': 'nowhere' is not ...
"""


class Error(Exception):
    """Base class of every error nbx raises."""

    #: the nbx status code (a negative NBX_E* value)
    code = 0
    #: the C name of the code
    name = "NBX_ERROR"

    def __init__(self, message, code=None):
        if code is not None:
            self.code = code
        self.message = message
        super().__init__(message)

    def __repr__(self):
        return f"{type(self).__name__}({self.message!r}, code={self.code})"


class InvalidArgument(Error, ValueError):
    code, name = -1, "NBX_EINVAL"


class OutOfMemory(Error):
    code, name = -2, "NBX_ENOMEM"


class IOFailure(Error, OSError):
    code, name = -3, "NBX_EIO"


class NotFound(Error, LookupError):
    code, name = -4, "NBX_ENOTFOUND"


class Corrupt(Error):
    code, name = -5, "NBX_ECORRUPT"


class VersionMismatch(Error):
    code, name = -6, "NBX_EVERSION"


class ParseError(Error, ValueError):
    code, name = -7, "NBX_EPARSE"


class PolicyError(Error):
    code, name = -8, "NBX_EPOLICY"


class StoreError(Error):
    code, name = -9, "NBX_ESTORE"


class StoreFull(Error):
    code, name = -10, "NBX_EFULL"


class LimitExceeded(Error):
    code, name = -11, "NBX_ELIMIT"


class ReadOnly(Error):
    code, name = -12, "NBX_EREADONLY"


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, OutOfMemory, IOFailure, NotFound, Corrupt,
                                       VersionMismatch, ParseError, PolicyError, StoreError,
                                       StoreFull, LimitExceeded, ReadOnly)}


def error_for(code, message):
    """The exception for an nbx status code and message (Error if unknown)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return Error(message, code)
    return cls(message)
