"""End-to-end scoring with tiny CLIP / SigLIP models: exact scores, levels, resume, atomic output, re-bucketing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aligngpt.data.images import load_image
from aligngpt.data.validation import BadRecordError
from aligngpt.scoring.bucketing import assign_levels, level_sizes
from aligngpt.scoring.levels import relevel
from aligngpt.scoring.run import ScoreConfig, score_dataset
from aligngpt.scoring.score_log import ScoreLog, ScoreLogMismatchError

from .conftest import MAX_TEXT, make_dataset

N_IMAGES, N_TEXT, BATCH, LEVELS = 22, 3, 4, 4


def _load_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]


def _config(data: Path, root: Path, clip: Path, out: Path, **kw) -> ScoreConfig:
    kw.setdefault("batch_size", BATCH)
    kw.setdefault("num_levels", LEVELS)
    kw.setdefault("workers", 0)
    return ScoreConfig(data=data, images=root, clip=str(clip), out=out, progress=False, **kw)


def _direct_scores(model_dir: Path, records: list[dict], root: Path, pad_to_max: bool) -> dict[str, float]:
    """Reference: per-pair cosine of get_image_features / get_text_features, computed by hand."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    proc = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    out = {}
    with torch.no_grad():
        for rec in records:
            if "image" not in rec:
                continue
            image = load_image(root, rec["image"])
            pixels = proc(images=[image], return_tensors="pt")["pixel_values"]
            text = tok(
                [rec["conversations"][1]["value"]],
                truncation=True,
                max_length=MAX_TEXT,
                padding="max_length" if pad_to_max else "longest",
                return_tensors="pt",
            )
            img = model.get_image_features(pixel_values=pixels)
            txt = model.get_text_features(**text)
            img = img if isinstance(img, torch.Tensor) else img.pooler_output
            txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
            out[rec["id"]] = torch.nn.functional.cosine_similarity(img, txt).item()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_clip_dir):
    """One uninterrupted run that several tests compare against."""
    folder = tmp_path_factory.mktemp("ref")
    data, root = make_dataset(folder, N_IMAGES, n_text=N_TEXT)
    out = folder / "out" / "leveled.json"
    result = score_dataset(_config(data, root, tiny_clip_dir, out, workers=2))
    return {"data": data, "root": root, "out": out, "result": result}


def test_scores_equal_direct_clip_computation(reference, tiny_clip_dir):
    records = _load_json(reference["data"])
    expected = _direct_scores(tiny_clip_dir, records, reference["root"], pad_to_max=False)
    got = {r["id"]: r["clip_score"] for r in _load_json(reference["out"]) if "clip_score" in r}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-5)


def test_levels_are_equal_count_monotone_and_text_only_is_untouched(reference):
    records, leveled = _load_json(reference["data"]), _load_json(reference["out"])
    assert len(leveled) == len(records)
    scored = [r for r in leveled if "image" in r]
    levels = np.array([r["similarity"] for r in scored])
    scores = np.array([r["clip_score"] for r in scored])
    assert np.bincount(levels, minlength=LEVELS).tolist() == level_sizes(N_IMAGES, LEVELS)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(levels[order]) >= 0)
    for before, after in zip(records, leveled, strict=True):
        if "image" not in before:
            assert after == before  # copied through: no level, no score
        else:
            assert {k: v for k, v in after.items() if k not in ("similarity", "clip_score")} == before


def test_summary_text_and_plot_are_written(reference):
    result = reference["result"]
    text = result.summary_txt.read_text()
    assert f"text-only records copied through unchanged (no level): {N_TEXT}" in text
    for level, size in enumerate(level_sizes(N_IMAGES, LEVELS)):
        assert any(line.split()[:2] == [str(level), str(size)] for line in text.splitlines())
    assert result.summary_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.summary_txt.parent == reference["out"].parent
    assert not (reference["out"].parent / "leveled.json.scores.partial.jsonl").exists()  # log removed when done


def test_resume_after_kill_9_gives_identical_output(reference, tiny_clip_dir, tmp_path):
    out = tmp_path / "killed.json"
    log = out.with_name(out.name + ".scores.partial.jsonl")
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, time\n"
        "from aligngpt.scoring import score_log\n"
        "append = score_log.ScoreLog.append\n"
        "def slow(self, batch):\n"
        "    append(self, batch)\n"
        "    time.sleep(0.3)\n"
        "score_log.ScoreLog.append = slow\n"
        "from aligngpt.cli import app\n"
        "sys.argv = ['aligngpt'] + sys.argv[1:]\n"
        "app()\n"
    )
    args = [sys.executable, str(driver), "score", str(reference["data"]), "--images", str(reference["root"])]
    args += ["--clip", str(tiny_clip_dir), "--out", str(out), "--levels", str(LEVELS)]
    args += ["--batch-size", str(BATCH), "--workers", "0", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= 3:  # header + at least 2 finished batches
            break
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert not out.exists()  # a killed run never leaves something that looks like output
    saved = log.read_bytes().count(b"\n") - 1
    assert 2 <= saved < -(-N_IMAGES // BATCH)

    computed = []
    original = ScoreLog.append

    def counting(self, batch):
        computed.append(batch.batch)
        original(self, batch)

    ScoreLog.append = counting
    try:
        score_dataset(_config(reference["data"], reference["root"], tiny_clip_dir, out))
    finally:
        ScoreLog.append = original
    assert len(computed) == -(-N_IMAGES // BATCH) - saved  # only the missing batches were recomputed
    assert out.read_bytes() == reference["out"].read_bytes()
    assert out.with_name("killed.summary.txt").read_text() == reference["result"].summary_txt.read_text()


def test_torn_log_line_is_cut_and_recomputed(reference, tiny_clip_dir, tmp_path):
    out = tmp_path / "torn.json"
    log = out.with_name(out.name + ".scores.partial.jsonl")
    config = _config(reference["data"], reference["root"], tiny_clip_dir, out)
    original = ScoreLog.append
    calls = []

    def die_after_two(self, batch):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(batch.batch)
        original(self, batch)

    ScoreLog.append = die_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            score_dataset(config)
    finally:
        ScoreLog.append = original
    with log.open("ab") as f:
        f.write(b'{"batch": 2, "scores": [[9, "r9", 0.12')  # a line cut short by a kill
    score_dataset(config)
    assert out.read_bytes() == reference["out"].read_bytes()


def test_changed_settings_are_refused_until_restart(tiny_clip_dir, tmp_path):
    data, root = make_dataset(tmp_path, 3, n_text=0, seed=11)
    out = tmp_path / "changed.json"
    log = ScoreLog(out.with_name(out.name + ".scores.partial.jsonl"), {"format": "x", "batch_size": 99})
    log.open()
    with pytest.raises(ScoreLogMismatchError, match="batch_size"):
        score_dataset(_config(data, root, tiny_clip_dir, out))
    assert not out.exists()
    result = score_dataset(_config(data, root, tiny_clip_dir, out, restart=True))
    assert result.num_scored == 3 and not log.path.exists()


def test_resume_refuses_data_edited_to_the_same_size_and_images_moved(tiny_clip_dir, tmp_path):
    """The saved scores belong to the data's content: a caption edited to a same-size text is a changed input."""
    data, root = make_dataset(tmp_path, 6, n_text=0, seed=12)
    out = tmp_path / "edited.json"
    config = _config(data, root, tiny_clip_dir, out, batch_size=2)
    original = ScoreLog.append

    def die_after_one(self, batch):
        if self.done:
            raise KeyboardInterrupt
        original(self, batch)

    ScoreLog.append = die_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            score_dataset(config)
    finally:
        ScoreLog.append = original
    caption = json.dumps(json.loads(data.read_text())[0]["conversations"][1]["value"])
    size, text = data.stat().st_size, data.read_text()
    data.write_text(text.replace(caption, caption.upper(), 1))  # same length, other words
    assert data.stat().st_size == size and data.read_text() != text
    with pytest.raises(ScoreLogMismatchError, match=r"data_sha256.*--restart"):
        score_dataset(config)
    moved = tmp_path / "moved"
    root.rename(moved)
    with pytest.raises(ScoreLogMismatchError, match="images"):
        score_dataset(_config(data, moved, tiny_clip_dir, out, batch_size=2))
    result = score_dataset(_config(data, moved, tiny_clip_dir, out, batch_size=2, restart=True))
    assert result.num_scored == 6


def test_output_is_written_atomically(reference, tiny_clip_dir, tmp_path, monkeypatch):
    out = tmp_path / "atomic.json"
    out.write_text("previous complete output")
    import aligngpt.scoring.output as output_module

    real_dumps, calls = json.dumps, []

    def failing_dumps(obj, **kw):
        calls.append(1)
        if len(calls) > 5:
            raise OSError("disk full")
        return real_dumps(obj, **kw)

    monkeypatch.setattr(output_module.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="disk full"):
        score_dataset(_config(reference["data"], reference["root"], tiny_clip_dir, out))
    assert out.read_text() == "previous complete output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.json", "atomic.json.scores.partial.jsonl"]
    monkeypatch.setattr(output_module.json, "dumps", real_dumps)
    score_dataset(_config(reference["data"], reference["root"], tiny_clip_dir, out))  # resumes from the log
    assert out.read_bytes() == reference["out"].read_bytes()


def test_levels_rebuckets_saved_scores(reference, tmp_path):
    out = tmp_path / "three.json"
    result = relevel(reference["out"], out, 3, progress=False)
    before, after = _load_json(reference["out"]), _load_json(out)
    scored = [i for i, r in enumerate(before) if "clip_score" in r]
    expected = assign_levels([before[i]["clip_score"] for i in scored], 3)
    assert [after[i]["similarity"] for i in scored] == expected.tolist()
    assert [after[i]["clip_score"] for i in scored] == [before[i]["clip_score"] for i in scored]
    assert all(after[i] == before[i] for i in range(len(before)) if i not in scored)
    assert result.num_scored == N_IMAGES and result.num_unscored == N_TEXT
    # back to the original N reproduces the scoring run's levels exactly
    relevel(out, tmp_path / "four.json", LEVELS, progress=False)
    assert (tmp_path / "four.json").read_bytes() == reference["out"].read_bytes()


def test_cli_score_jsonl_and_levels(tiny_clip_dir, tmp_path):
    from aligngpt.cli import app

    data, root = make_dataset(tmp_path, 6, n_text=1, fmt="jsonl", seed=3)
    out = tmp_path / "scored.jsonl"
    runner = CliRunner()
    args = ["score", str(data), "--images", str(root), "--clip", str(tiny_clip_dir), "--out", str(out)]
    res = runner.invoke(app, [*args, "--levels", "2", "--batch-size", "4", "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "text-only records copied through unchanged (no level): 1" in res.output
    lines = out.read_text().splitlines()
    assert len(lines) == 7 and all(isinstance(json.loads(x), dict) for x in lines)  # JSONL in, JSONL out
    assert sorted(json.loads(x).get("similarity") for x in lines if "image" in x) == [0, 0, 0, 1, 1, 1]
    res = runner.invoke(app, ["levels", str(out), "--levels", "3", "--out", str(tmp_path / "l3.jsonl")])
    assert res.exit_code == 0, res.output
    levels3 = [json.loads(x).get("similarity") for x in (tmp_path / "l3.jsonl").read_text().splitlines()]
    assert sorted(v for v in levels3 if v is not None) == [0, 0, 1, 1, 2, 2]


def test_bad_records_stop_or_are_skipped(tiny_clip_dir, tmp_path):
    data, root = make_dataset(tmp_path, 6, n_text=0, seed=5)
    records = _load_json(data)
    records[2]["image"] = "sub/missing.png"
    records[4]["image"] = "../outside.png"
    data.write_text(json.dumps(records))
    out = tmp_path / "out.json"
    with pytest.raises(BadRecordError, match="r2"):
        score_dataset(_config(data, root, tiny_clip_dir, out))
    result = score_dataset(_config(data, root, tiny_clip_dir, out, on_bad_record="skip", restart=True))
    assert result.num_skipped == 2 and result.num_scored == 4
    assert [r["id"] for r in _load_json(out)] == ["r0", "r1", "r3", "r5"]
    report = [json.loads(x) for x in result.skipped_report.read_text().splitlines()]
    assert [(r["index"], r["problems"][0]["kind"]) for r in report] == [(2, "missing_image"), (4, "unsafe_image_path")]
    assert "bad image records skipped" in result.summary_txt.read_text()


def test_siglip_scores_equal_direct_computation(tiny_siglip_dir, tmp_path):
    data, root = make_dataset(tmp_path, 5, n_text=1, seed=7)
    out = tmp_path / "siglip.json"
    score_dataset(_config(data, root, tiny_siglip_dir, out, num_levels=2))
    expected = _direct_scores(tiny_siglip_dir, _load_json(data), root, pad_to_max=True)
    got = {r["id"]: r["clip_score"] for r in _load_json(out) if "clip_score" in r}
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-5)
