"""Atomic outputs: a write killed half-way leaves only a hidden temporary file, and the next writer removes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from aligngpt.data.atomic import atomic_write

REPO = Path(__file__).resolve().parents[2]
KILLED_WRITE = """
import os, signal, sys
from aligngpt.data.atomic import atomic_write
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
    from aligngpt.data.atomic import _host, remove_stale_temporaries

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
