"""The package's file I/O, one copy for every layer: atomic writes, JSONL reading and appending.

Atomic outputs: write to a temporary file in the same folder, fsync, then ``os.replace``. The temporary file is
``.<name>.<pid>@<host>.<random>.tmp``. A writer that is killed leaves it behind; the next process that writes into
the same folder removes it once it can tell that its writer is gone (same host, process no longer running).
Temporary files of live writers, of other hosts, and files of any other name are left alone.

JSONL files are read with one parser, :func:`read_jsonl_log`. Append-only files (answer files, partial outputs,
resumable logs) are written one flushed, fsynced line at a time (:class:`JsonlAppender`), so an interrupted run
leaves at most one *torn* line: the bytes after the last newline. A torn line is never kept when resuming, even
when it happens to parse (a kill between the record and its newline): appending to it would glue the next record
onto it; :func:`cut_torn_tail` removes exactly that tail and keeps every complete line before it. Input files read
with :func:`read_jsonl` keep a final line that merely lacks its newline and drop only a torn one (not valid JSON),
with a warning; a damaged complete line is an error naming the file and line.

Nothing here imports the rest of the package except :mod:`aligngpt.errors`, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from aligngpt.errors import UserError, name_file, writing

logger = logging.getLogger(__name__)

NEWLINE = b"\n"
JSON_INDENT = 1  # the indent of the package's JSON outputs

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


def write_text_atomic(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def json_text(obj: Any, indent: int | None = JSON_INDENT) -> str:
    """``obj`` as the package writes JSON files: non-ASCII kept, one trailing newline."""
    return json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"


def jsonl_line(record: Any) -> str:
    """One JSONL line (non-ASCII kept, newline included)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = JSON_INDENT, durable: bool = True
) -> Path:
    """Write ``obj`` as a JSON file with :func:`atomic_write`."""
    return write_text_atomic(path, json_text(obj, indent), durable=durable)


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[Any], *, durable: bool = True) -> Path:
    """Write ``records`` one JSON line each with :func:`atomic_write`."""
    return write_text_atomic(path, "".join(jsonl_line(r) for r in records), durable=durable)


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


class MissingDataError(UserError, FileNotFoundError):
    """A data file is missing; the message names what and where it was expected."""


class BadRecordError(UserError, ValueError):
    """A record of a data or answer file is malformed; the message names the file and line."""


@dataclass
class JsonlLog:
    """What a JSONL file holds: its complete, valid lines and what follows the last newline.

    Attributes:
        records: the parsed complete lines, in file order (blank lines left out).
        record_lines: the 1-based line number of each of ``records``.
        bad_lines: 1-based numbers of complete lines that are not valid JSON.
        tail: the bytes after the last newline (empty: the file ends cleanly); never part of ``records``.
        tail_line: the 1-based line number of ``tail``.
    """

    path: Path
    records: list[Any] = field(default_factory=list)
    record_lines: list[int] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    tail: bytes = b""
    tail_line: int = 0

    @property
    def torn_bytes(self) -> int:
        """How many bytes followed the last newline (0: the file ends cleanly)."""
        return len(self.tail)

    @property
    def clean(self) -> bool:
        """Every line is complete and valid: appending to the file is safe and its lines are exactly ``records``."""
        return not self.bad_lines and not self.tail


def read_jsonl_log(path: str | os.PathLike[str]) -> JsonlLog:
    """Parse ``path`` line by line without changing it; a missing file reads as empty."""
    log = JsonlLog(Path(path))
    if not log.path.is_file():
        return log
    with log.path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(NEWLINE):
                log.tail, log.tail_line = line, number
                break
            if not line.strip():
                continue
            try:
                log.records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.bad_lines.append(number)
            else:
                log.record_lines.append(number)
    return log


def cut_torn_tail(log: JsonlLog) -> None:
    """Truncate the file of ``log`` to its last newline (the torn line goes; complete lines stay), durably."""
    if not log.tail:
        return
    size = log.path.stat().st_size
    with writing(log.path), log.path.open("r+b") as handle:
        handle.truncate(size - len(log.tail))
        handle.flush()
        os.fsync(handle.fileno())
    log.tail = b""


def read_jsonl(path: str | os.PathLike[str], what: str = "file") -> list[Any]:
    """The records of an input JSONL file, strictly (see :func:`read_jsonl_lines`)."""
    return [record for _, record in read_jsonl_lines(path, what)]


def read_jsonl_lines(path: str | os.PathLike[str], what: str = "file") -> list[tuple[int, Any]]:
    """``(line number, record)`` for each record of an input JSONL file, strictly.

    A missing file raises :class:`MissingDataError` (``what`` names it) and a damaged complete line
    :class:`BadRecordError`, both naming the file (and line). A final line without its newline is kept when it is
    valid JSON; when it is not, it is a torn line (a writer killed mid-line) and only it is dropped, with a warning.
    """
    log = read_jsonl_log(path)
    if not log.path.is_file():
        raise MissingDataError(f"{what} not found: {log.path}")
    if log.bad_lines:
        number = log.bad_lines[0]
        raise BadRecordError(f"{log.path}:{number}: not valid JSON ({_parse_error(log.path, number)})")
    numbered = list(zip(log.record_lines, log.records))
    tail = parse_tail(log)
    if tail is not None:
        numbered.append((log.tail_line, tail))
    elif log.tail.strip():
        logger.warning("%s:%d: torn last line (no newline, not valid JSON) dropped", log.path, log.tail_line)
    return numbered


def parse_tail(log: JsonlLog) -> Any | None:
    """The record on the final line without a newline, when there is one and it is valid JSON; else ``None``."""
    if not log.tail.strip():
        return None
    try:
        return json.loads(log.tail)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _parse_error(path: Path, number: int) -> str:
    with path.open("rb") as handle:
        for current, line in enumerate(handle, start=1):
            if current == number:
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    return err.msg
                except UnicodeDecodeError as err:
                    return f"not UTF-8: {err.reason}"
    return "damaged line"


class JsonlAppender:
    """Append records to a JSONL file, one line each; :meth:`sync` fsyncs what was written.

    Use as a context manager; the file (and its folder) is created when missing. Each line goes out in a single
    ``write`` to a file opened for appending, so processes appending to the same file never interleave within a
    line. Errors of the operating system name the file. Lines written since the last :meth:`sync` may be lost (or
    one torn) by a power cut; everything before it survives.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> JsonlAppender:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with writing(self.path):
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _OUTPUT_MODE)
        return self

    def write(self, record: Any) -> None:
        """Append one record as one line."""
        data = jsonl_line(record).encode("utf-8")
        with writing(self.path):
            while data:
                data = data[os.write(self._descriptor(), data) :]

    def sync(self) -> None:
        """fsync: every record written so far survives a kill or a power cut."""
        with writing(self.path):
            os.fsync(self._descriptor())

    def _descriptor(self) -> int:
        if self._fd is None:
            raise RuntimeError("use JsonlAppender as a context manager")
        return self._fd

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
