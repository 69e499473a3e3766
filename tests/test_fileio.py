"""Atomic outputs: a write killed half-way leaves only a hidden temporary file, and the next writer removes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from aligngpt.fileio import atomic_write

REPO = Path(__file__).resolve().parents[2]
KILLED_WRITE = """
import os, signal, sys
from aligngpt.fileio import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write("half of the output")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(path)], env=env, check=False)
    assert process.returncode == -signal.SIGKILL


def test_a_rerun_removes_the_temporary_files_of_killed_writes(tmp_path):
    out = tmp_path / "metrics.json"
    _killed_write(out)
    first = [p.name for p in tmp_path.iterdir()]
    assert len(first) == 1 and first[0].startswith(".metrics.json.") and first[0].endswith(".tmp")
    assert not out.exists()  # nothing half-written looks complete
    _killed_write(out)  # the rerun removes the first one's file (and leaves its own: it is killed too)
    second = [p.name for p in tmp_path.iterdir()]
    assert len(second) == 1 and second != first
    with atomic_write(tmp_path / "other.json") as f:  # any later write into the folder cleans it
        f.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_temporaries_of_live_writers_other_hosts_and_other_files_are_kept(tmp_path):
    from aligngpt.fileio import _host, remove_stale_temporaries

    keep = [
        f".a.json.{os.getppid()}@{_host()}.abcd1234.tmp",  # a live process on this host
        f".a.json.{os.getpid()}@not-{_host()}.abcd1234.tmp",  # another host (or container)
        ".a.json.abcd1234.tmp",  # no writer recorded
        "notes.tmp",
    ]
    for name in keep:
        (tmp_path / name).write_text("")
    assert remove_stale_temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_read_jsonl_drops_only_a_torn_final_line(tmp_path, caplog):
    from aligngpt.fileio import read_jsonl, read_jsonl_lines

    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": 3}')
    assert read_jsonl_lines(path) == [(1, {"a": 1}), (3, {"a": 2}), (4, {"a": 3})]  # no newline but valid: kept
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    with caplog.at_level("WARNING"):
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert f"{path}:3: torn last line" in caplog.text


def test_read_jsonl_names_a_damaged_line_and_a_missing_file(tmp_path):
    import pytest

    from aligngpt.fileio import BadRecordError, MissingDataError, read_jsonl

    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(BadRecordError, match=rf"{path}:2: not valid JSON \(Expecting value\)"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(BadRecordError, match=rf"{path}:2: not valid JSON \(not UTF-8"):
        read_jsonl(path)
    with pytest.raises(MissingDataError, match=f"questions not found: {tmp_path / 'b.jsonl'}"):
        read_jsonl(tmp_path / "b.jsonl", "questions")


def test_appended_lines_survive_and_a_resume_cuts_only_the_torn_tail(tmp_path):
    from aligngpt.fileio import JsonlAppender, cut_torn_tail, read_jsonl_log

    path = tmp_path / "sub" / "log.jsonl"
    with JsonlAppender(path) as log:
        log.write({"n": 1, "é": "ü"})
        log.write({"n": 2})
        log.sync()
    with path.open("ab") as handle:
        handle.write(b'{"n": 3}')  # parses, but has no newline: a resume never trusts it
    read = read_jsonl_log(path)
    assert read.records == [{"n": 1, "é": "ü"}, {"n": 2}] and read.torn_bytes == len(b'{"n": 3}')
    cut_torn_tail(read)
    assert path.read_bytes() == '{"n": 1, "é": "ü"}\n{"n": 2}\n'.encode()
