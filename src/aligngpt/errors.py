"""Faults a user can cause and fix, told apart from bugs, and the short message the command line prints for them.

``UserError`` is the base of this project's own error types for bad input (a damaged data file, a missing model
folder, an unreadable image...). ``describe_user_error`` recognises those and the operating-system faults of the
environment (a full disk, a read-only folder, a missing file) and returns a one- or two-line message; for anything
else it returns ``None``, so that a genuine bug still ends with its traceback. Nothing here imports the rest of the
package.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

EXIT_USER_ERROR = 1
TRACEBACK_ENV = "ALIGNGPT_TRACEBACK"  # set to 1 to get the full traceback of a user fault too
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# OSErrors that say something about the files and folders a user named, not about the code.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}
)
# torch re-raises a DataLoader worker's exception with the worker's traceback text inside its message.
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"


class UserError(Exception):
    """An error the user can fix (bad input, missing or damaged files); its message says what and where.

    Subclasses also derive from the built-in type that fits (``ValueError``, ``FileNotFoundError``...), so code that
    catches those keeps working. The command line prints the message without a traceback.
    """


def is_traceback_requested() -> bool:
    """``ALIGNGPT_TRACEBACK=1``: show tracebacks of user faults too (for bug reports)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes")


def describe_user_error(err: BaseException) -> str | None:
    """A short message for an expected fault (our ``UserError`` s, a full disk, a missing file); ``None`` for a bug."""
    if isinstance(err, UserError):
        return _without_worker_traceback(str(err))
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        where = f" while writing {err.filename}" if err.filename else ""
        return f"no space left on device{where}. Free some space and run the command again."
    if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS and err.filename:
        return f"{err.strerror}: {err.filename}"
    return None


def _without_worker_traceback(message: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (its last line, without the type)."""
    if _WORKER_TRACEBACK not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    _, colon, text = last.partition(": ")
    return text if colon else last


def name_file(err: OSError, path: str | os.PathLike) -> None:
    """Give ``err`` the file name ``path`` when it has none (a failed ``write`` or ``fsync`` names no file).

    Only errors of the operating system (with an ``errno``) are named; an ``OSError`` subclass raised with a
    message of its own (``FileNotFoundError("image ... not found")``) is left as it is.
    """
    if err.errno is not None and err.filename is None:
        err.filename = os.fspath(path)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """OSErrors raised inside the block name ``path`` (see :func:`name_file`)."""
    try:
        yield
    except OSError as err:
        name_file(err, path)
        raise
