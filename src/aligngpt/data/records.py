"""Lazy reading of LLaVA-format training data (a JSON array or JSON Lines).

Opening a file makes one streaming pass that checks the JSON syntax and stores, per record, only its byte
offset, byte length and line number (three ``array('q')``; 24 bytes per record). ``len`` and random access by
index then need no further pass: ``records.raw(i)`` reads and parses exactly one record.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aligngpt.data.constants import DEFAULT_LEVEL_FIELD
from aligngpt.data.problems import Problem, ProblemKind, RecordFormatError
from aligngpt.errors import UserError

HUMAN, GPT = "human", "gpt"
FileFormat = Literal["json", "jsonl"]

_CHUNK_CHARS = 1 << 22  # characters decoded per read while indexing a JSON array
# A decode error this close to the end of the buffer may just mean the record continues in the next chunk
# (longest such token: a "\uXXXX" escape or the literal "false").
_TAIL_MARGIN = 16
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_JSONL_SUFFIXES = {".jsonl", ".ndjson"}


class DataFileError(UserError, ValueError):
    """The data file is not valid JSON / JSON Lines; the message names the file, line and column."""


@dataclass(frozen=True)
class Message:
    """One conversation turn: ``role`` is ``"human"`` or ``"gpt"`` (as written in the file)."""

    role: str
    value: str


@dataclass(frozen=True)
class Record:
    """One parsed LLaVA record.

    ``level`` is the alignment level when the level field holds an integer, else None (validation reports
    why). ``raw`` is the record's JSON object as read, for copying it through unchanged.
    """

    index: int
    id: str
    image: str | None
    conversations: tuple[Message, ...]
    level: int | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    level_field: str = field(default=DEFAULT_LEVEL_FIELD, repr=False, compare=False)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def caption(self) -> str | None:
        """The first ``gpt`` turn (the caption in pre-training data), or None."""
        return next((m.value for m in self.conversations if m.role == GPT), None)

    @classmethod
    def from_raw(cls, raw: Any, index: int, level_field: str = DEFAULT_LEVEL_FIELD) -> Record:
        """Build a record from its JSON value; raises ``RecordFormatError`` if the shape is wrong."""
        if not isinstance(raw, dict):
            raise RecordFormatError(
                [Problem(ProblemKind.MALFORMED, f"record is a JSON {type(raw).__name__}, not an object")]
            )
        problems: list[Problem] = []
        rid = raw.get("id", f"#{index}")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            problems.append(Problem(ProblemKind.MALFORMED, f"'id' must be a string, got {rid!r}"))
        image = raw.get("image")
        if isinstance(image, list):
            problems.append(
                Problem(ProblemKind.MULTIPLE_IMAGES, f"'image' lists {len(image)} images; one is supported")
            )
        elif image is not None and not isinstance(image, str):
            problems.append(Problem(ProblemKind.MALFORMED, f"'image' must be a string path, got {image!r}"))
        messages = _parse_conversations(raw.get("conversations"), problems)
        if problems:
            raise RecordFormatError(problems)
        level = raw.get(level_field)
        return cls(
            index=index,
            id=str(rid),
            image=image,
            conversations=messages,
            level=level if isinstance(level, int) and not isinstance(level, bool) else None,
            raw=raw,
            level_field=level_field,
        )


def _parse_conversations(conv: Any, problems: list[Problem]) -> tuple[Message, ...]:
    if conv is None:
        problems.append(Problem(ProblemKind.MALFORMED, "'conversations' is missing"))
        return ()
    if not isinstance(conv, list):
        problems.append(Problem(ProblemKind.MALFORMED, "'conversations' must be a list"))
        return ()
    out = []
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict):
            problems.append(Problem(ProblemKind.MALFORMED, f"turn {t} is not an object"))
            continue
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(role, str):
            problems.append(Problem(ProblemKind.MALFORMED, f"turn {t}: 'from' must be a string, got {role!r}"))
        if not isinstance(value, str):
            problems.append(Problem(ProblemKind.MALFORMED, f"turn {t}: 'value' must be a string, got {value!r}"))
        if isinstance(role, str) and isinstance(value, str):
            out.append(Message(role, value))
    return tuple(out)


def detect_format(path: Path) -> FileFormat:
    """JSON Lines for ``.jsonl``/``.ndjson``; otherwise sniff: ``[`` starts a JSON array, ``{`` JSON Lines."""
    if path.suffix.lower() in _JSONL_SUFFIXES:
        return "jsonl"
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl"
    if not head:
        raise DataFileError(f"{path}: file is empty; expected a JSON array or JSON Lines")
    raise DataFileError(f"{path}: line 1: expected a JSON array ('[') or JSON Lines ('{{' per line)")


class RecordFile(Sequence[Record]):
    """A LLaVA-format data file with lazy, random access to its records.

    ``records[i]`` parses record ``i`` into a ``Record`` (raising ``RecordFormatError`` for a wrongly shaped
    one); ``records.raw(i)`` gives its JSON value. Safe to pickle into DataLoader workers (file handles are
    per process).
    """

    def __init__(self, path: str | os.PathLike[str], *, level_field: str = DEFAULT_LEVEL_FIELD):
        self.path = Path(path)
        self.level_field = level_field
        if not self.path.is_file():
            raise DataFileError(f"{self.path}: no such data file")
        self.format: FileFormat = detect_format(self.path)
        self._offsets = array("q")
        self._lengths = array("q")
        self._lines = array("q")
        if self.format == "json":
            self._index_json_array()
        else:
            self._index_jsonl()
        self._fh: Any = None
        self._fh_pid = -1

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        index = self._check_index(index)
        return Record.from_raw(self.raw(index), index, self.level_field)

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"], state["_fh_pid"] = None, -1
        return state

    def raw(self, index: int) -> Any:
        """The JSON value of record ``index`` (parses only that record)."""
        index = self._check_index(index)
        return json.loads(self.raw_bytes(index))

    def raw_bytes(self, index: int) -> bytes:
        """The exact bytes of record ``index`` in the file."""
        index = self._check_index(index)
        if self._fh is None or self._fh_pid != os.getpid():
            self._fh, self._fh_pid = self.path.open("rb"), os.getpid()
        self._fh.seek(self._offsets[index])
        return self._fh.read(self._lengths[index])

    def line_of(self, index: int) -> int:
        """1-based line where record ``index`` starts."""
        return self._lines[self._check_index(index)]

    def location(self, index: int) -> str:
        """``file:line`` of record ``index``, for messages."""
        return f"{self.path}:{self.line_of(index)}"

    def _check_index(self, index: int) -> int:
        n = len(self._offsets)
        if not -n <= index < n:
            raise IndexError(f"record index {index} out of range for {self.path} ({n} records)")
        return index % n if n else index

    # -- indexing passes ----------------------------------------------------------------------------

    def _index_jsonl(self) -> None:
        offset = 0  # byte offset of the current line
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, start=1):
                body, start = line.rstrip(b"\r\n"), offset
                offset += len(line)
                if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):
                    body, start = body[3:], start + 3
                if not body.strip():
                    continue
                try:
                    json.loads(body)
                except UnicodeDecodeError as err:
                    raise DataFileError(f"{self.path}: line {lineno}: invalid UTF-8 ({err.reason})") from None
                except json.JSONDecodeError as err:
                    raise DataFileError(
                        f"{self.path}: line {lineno}, column {err.colno}: invalid JSON ({err.msg})"
                    ) from None
                self._offsets.append(start)
                self._lengths.append(len(body))
                self._lines.append(lineno)

    def _index_json_array(self) -> None:
        _ArrayIndexer(self).run()


class _ArrayIndexer:
    """One streaming pass over a top-level JSON array, recording where each element lies."""

    def __init__(self, owner: RecordFile):
        self.owner = owner
        self.decoder = json.JSONDecoder()
        self.f = owner.path.open("rb")
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.buf_ascii = True
        self.pos = 0  # char position in buf
        self.byte_pos = 0  # byte offset of buf[pos] in the file
        self.line = 1  # line number of buf[pos]
        self.eof = False

    def run(self) -> None:
        try:
            self._read_more()
            if self.buf.startswith("\ufeff"):
                self.pos, self.byte_pos = 1, 3
            self._skip_ws()
            self._expect("[", "expected '[' at the start of a JSON array")
            self._skip_ws()
            if self._peek() == "]":
                self._advance(1)
                self._expect_end()
                return
            while True:
                self._skip_ws()
                sep = self._read_element()
                if sep == ",":
                    self._skip_ws()
                    if self._peek() == "]":
                        self._fail("trailing comma before ']'")
                elif sep == "]":
                    self._expect_end()
                    return
                elif sep == "":
                    self._fail("file ends inside the JSON array (missing ']')")
                else:
                    self._fail(f"expected ',' or ']' after record {len(self.owner)}, found {sep!r}")
        finally:
            self.f.close()

    def _read_more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(_CHUNK_CHARS)
        self.eof = not chunk
        try:
            text = self.utf8.decode(chunk, final=self.eof)
        except UnicodeDecodeError as err:
            self._fail(f"invalid UTF-8 ({err.reason})")
        self.buf = self.buf[self.pos :] + text
        self.buf_ascii = self.buf.isascii()
        self.pos = 0
        return True

    def _peek(self) -> str:
        while self.pos >= len(self.buf):
            if not self._read_more():
                return ""
        return self.buf[self.pos]

    def _advance(self, n_chars: int) -> None:
        piece = self.buf[self.pos : self.pos + n_chars]
        self.byte_pos += n_chars if self.buf_ascii else len(piece.encode("utf-8"))
        self.line += piece.count("\n")
        self.pos += n_chars

    def _skip_ws(self) -> None:
        while True:
            end = _WHITESPACE.match(self.buf, self.pos).end()
            self._advance(end - self.pos)
            if self.pos < len(self.buf) or not self._read_more():
                return

    def _expect(self, ch: str, why: str) -> None:
        if self._peek() != ch:
            self._fail(why)
        self._advance(1)

    def _expect_end(self) -> None:
        self._skip_ws()
        if self._peek() != "":
            self._fail("extra data after the closing ']'")

    def _read_element(self) -> str:
        """Index the element at ``pos``, step over the separator after it and return that separator."""
        while True:
            try:
                _, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                maybe_truncated = err.pos >= len(self.buf) - _TAIL_MARGIN or err.msg.startswith("Unterminated")
                if maybe_truncated and self._read_more():
                    continue
                self._fail(f"invalid JSON ({err.msg})", at=err.pos)
            break
        buf, pos = self.buf, self.pos
        n_bytes = end - pos if self.buf_ascii else len(buf[pos:end].encode("utf-8"))
        self.owner._offsets.append(self.byte_pos)
        self.owner._lines.append(self.line)
        self.owner._lengths.append(n_bytes)
        sep = _SEPARATOR.match(buf, end)
        if sep is not None and sep.end() < len(buf):  # fast path: separator and following blanks all in buf
            self.line += buf.count("\n", pos, sep.end())
            self.byte_pos += n_bytes + sep.end() - end
            self.pos = sep.end()
            return sep.group(1)
        self.line += buf.count("\n", pos, end)
        self.byte_pos += n_bytes
        self.pos = end
        self._skip_ws()
        ch = self._peek()
        if ch in (",", "]"):
            self._advance(1)
        return ch

    def _fail(self, why: str, at: int | None = None) -> None:
        """Raise a ``DataFileError`` naming the line and column of buffer position ``at`` (default: here)."""
        at = self.pos if at is None else at
        prefix = self.buf[self.pos : at] if at >= self.pos else ""
        line = self.line + prefix.count("\n")
        col = len(prefix) - prefix.rfind("\n") if "\n" in prefix else self._column_here() + len(prefix)
        raise DataFileError(f"{self.owner.path}: line {line}, column {col}: {why}") from None

    def _column_here(self) -> int:
        """1-based column (in characters) of ``buf[pos]``, reading back into the file if needed."""
        nl = self.buf.rfind("\n", 0, self.pos)
        if nl >= 0:
            return self.pos - nl
        with self.owner.path.open("rb") as f:
            start = max(0, self.byte_pos - (1 << 20))
            f.seek(start)
            head = f.read(self.byte_pos - start)
        line_head = head[head.rfind(b"\n") + 1 :].decode("utf-8", errors="replace").lstrip("\ufeff")
        return len(line_head) + 1
