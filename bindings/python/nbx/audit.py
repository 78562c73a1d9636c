"""The audit log: where the decisions' audit lines go (log= of Engine.decide
and Engine.batch), one JSON line per decision (docs/experiments.md).

The lines are the library's (nbx_result_audit_json()); this module only
writes them: to a path, appended with one write per line (so that lines of
processes sharing the file never interleave), or to an open file object.
A line that cannot be written raises: an audit log does not lose lines
quietly.
"""
import io
import os

from .errors import IOFailure, InvalidArgument


class AuditLog:
    """An open destination for audit lines: a path (str, bytes or
    os.PathLike; created if missing, appended to) or a file object with
    write() (text or binary; flushing and closing it are the caller's)."""

    def __init__(self, target):
        self._file = None
        self._fd = -1
        if isinstance(target, (str, bytes, os.PathLike)):
            self.name = os.fsdecode(target)
            try:
                self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o644)
            except OSError as e:
                raise IOFailure(f"log {self.name}: {e.strerror}") from None
        elif callable(getattr(target, "write", None)):
            self._file = target
            self.name = getattr(target, "name", repr(target))
            self._text = isinstance(target, io.TextIOBase) or (
                "b" not in getattr(target, "mode", "b")
                and not isinstance(target, (io.RawIOBase, io.BufferedIOBase)))
        else:
            raise InvalidArgument(f"log must be a path or a file object with write(), got "
                                  f"{type(target).__name__}")

    def write(self, line):
        """Append one audit line (bytes, without its line break)."""
        data = line + b"\n"
        if self._file is not None:
            self._file.write(data.decode("utf-8") if self._text else data)
            return
        try:
            n = os.write(self._fd, data)
        except OSError as e:
            raise IOFailure(f"log {self.name}: {e.strerror}") from None
        if n != len(data):
            raise IOFailure(f"log {self.name}: only {n} of {len(data)} bytes written "
                            f"(disk full?)")

    def close(self):
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
