"""Atomic file output: write to a temporary file in the same folder, fsync, then ``os.replace``.

The package's own output files go through :func:`atomic_write`, whose temporary file is
``.<name>.<pid>@<host>.<random>.tmp``. A writer that is killed leaves it behind; the next process that writes into
the same folder removes it once it can tell that its writer is gone (same host, process no longer running).
Temporary files of live writers, of other hosts, and files of any other name are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from aligngpt.errors import name_file, writing

_OUTPUT_MODE = 0o644  # mkstemp creates 0600; outputs get ordinary permissions
TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.tmp$")
_swept: set[str] = set()  # folders this process has already cleaned
_swept_lock = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def _writer_tag() -> str:
    return f"{os.getpid()}@{_host()}"


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: it exists, under another user
        return False
    return False


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder``; returns what was removed."""
    host, removed = _host(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_NAME.match(entry.name)
        if match and match["host"] == host and _process_gone(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: Path) -> None:
    key = str(folder.resolve())
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temporaries(folder)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8", *, durable: bool = True
) -> Iterator[IO[Any]]:
    """Yield a file object; ``path`` appears (complete) only if the block finishes without an exception.

    A crash or kill at any point leaves either the previous ``path`` or none, plus at most a stray hidden
    temporary file that is never mistaken for the output (and that a later writer removes). ``durable=False``
    skips the fsyncs, for outputs that are cheap to regenerate and written by the thousand.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(target.parent)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_writer_tag()}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        os.chmod(tmp, _OUTPUT_MODE)
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            name_file(err, target)  # a failed write names no file; say which output it was
        raise
    if durable:
        _fsync_dir(target.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    with atomic_write(path, "wb", durable=durable) as f:
        f.write(data)
    return Path(path)


def replace_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.replace(source, target)`` after fsyncing ``source``, then fsync the folder: a finished output survives
    a power cut as soon as this returns (``source`` must be in the same folder, e.g. a partial output)."""
    with writing(source), open(source, "rb") as handle:
        os.fsync(handle.fileno())  # a full disk can surface here (delayed allocation): name the file
    os.replace(source, target)
    _fsync_dir(Path(target).parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
