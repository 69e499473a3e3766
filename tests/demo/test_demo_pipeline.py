"""The demo end to end at smoke size: every artefact and every report number is produced; reruns reuse steps."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.modeling import AlignGPTForConditionalGeneration


def test_smoke_demo_produces_every_artefact_and_reuses_finished_steps(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--size", "smoke", "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    for section in ("Time per stage", "CLIP score as an alignment measure", "level-conditioned captioning",
                    "AlignGPT vs the LLaVA-1.5 baseline", "The gate", "Toy recipe note"):  # fmt: skip
        assert section in report, section
    assert re.search(r"Spearman correlation .*\*\*-?\d\.\d{3}\*\*", report)
    for level in range(8):
        assert re.search(rf"^\| {level} \| \d\.\d{{3}} / \d\.\d{{3}} \|$", report, re.M), level
    for metric in ("caption F1", "caption CHAIR_i", "VQA position", "POPE adversarial accuracy", "POPE popular F1",
                   "POPE random yes-ratio"):  # fmt: skip
        assert re.search(rf"^\| {metric} \| \d\.\d{{3}} \| \d\.\d{{3}} \| \d\.\d{{3}} \|$", report, re.M), metric
    for metric in ("caption F1", "VQA accuracy", "POPE accuracy \\(mean of splits\\)"):  # AlignGPT minus the others
        assert re.search(rf"^\| {metric} \| -?\d\.\d{{3}} \(\d/1 > 0\) \| -?\d\.\d{{3}} \(\d/1 > 0\) \|$", report, re.M)
    assert re.search(r"^\| prefix control \(token without levels\) \| \d\.\d{3} / \d\.\d{3} \|$", report, re.M)
    assert "Runs whose mean POPE accuracy stayed within" in report
    assert re.search(r"^\| pope \| \d+ \| (0\.\d\d ){6}0\.\d\d \|", report, re.M)
    assert (out / "levels.png").stat().st_size > 0 and (out / "gate.png").stat().st_size > 0
    assert "![CLIP score levels](scored/pretrain.summary.png)" in report
    assert (out / "scored" / "pretrain.summary.png").stat().st_size > 0

    # the verdict opens the report: a smoke run cannot converge, and one seed allows no claim between variants
    first = report.splitlines()[2]
    assert first.startswith("**Verdict: not converged.** Stage 1 is not grounded in 1 of 1 seeds and 3 of 3 stage-2")
    assert first.endswith("for the converged study run `aligngpt demo --full`.")
    assert "**Seeds: 1.** One seed allows no claim about a difference between variants" in report
    assert report.index("**Glossary.**") < report.index("## Time per stage")
    for term in ("*caption F1*", "*CHAIR_i*", "*POPE accuracy*", "*yes-ratio*", "*gate entropy*"):
        assert term in report
    assert "log(7) = 1.946" in report
    assert re.search(r"^llama_heldout_loss: \d+\.\d{3}$", report, re.M)  # zoo numbers rounded

    # progress: elapsed time after every stage, an estimate from stage 1 on
    assert re.search(
        r"^\[demo\] progress: zoo finished, \d+:\d\d elapsed; estimate after stage 1$", result.output, re.M
    )
    assert re.search(
        r"^\[demo\] progress: stage 1 \(pretrain\) finished, \d+:\d\d elapsed; at least \d+:\d\d left \(stage 2 "
        r"\(finetune\) at stage 1's \d+\.\d\d s per step; stage-1 level sweep, evaluation not estimated\)$",
        result.output,
        re.M,
    )
    assert re.search(r"^\[demo\] progress: evaluation finished, .*; nothing left to run$", result.output, re.M)

    aligngpt = AlignGPTForConditionalGeneration.from_pretrained(out / "runs" / "seed0" / "aligngpt")
    baseline = AlignGPTForConditionalGeneration.from_pretrained(out / "runs" / "seed0" / "baseline")
    assert aligngpt.config.alignment_mode == "adaptive" and baseline.config.alignment_mode == "none"
    prefix = AlignGPTForConditionalGeneration.from_pretrained(out / "runs" / "seed0" / "prefix")
    assert prefix.config.alignment_mode == "fixed:7"
    assert aligngpt.config.num_image_tokens == 9  # 6x6 patches pooled by 2
    steps = json.loads((out / "steps.json").read_text())
    assert {
        "world",
        "zoo",
        "score",
        "pretrain/seed0/aligngpt",
        "finetune/seed0/baseline",
        "eval/seed0/aligngpt",
    } <= set(steps)

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"seconds_total", "stage1_level_sweep", "stage1_baseline_f1", "stage2", "converged"}
    assert summary["converged"] is False
    assert summary["seconds_total"] == pytest.approx(sum(step["seconds"] for step in steps.values()))
    sweep = steps["level-sweep/seed0/aligngpt"]["result"]
    assert summary["stage1_level_sweep"] == {"aligngpt": [sweep[str(level)]["f1"] for level in range(8)]}
    assert summary["stage1_baseline_f1"] == steps["level-sweep/seed0/baseline"]["result"]["none"]["f1"]
    assert set(summary["stage2"]) == {"aligngpt", "baseline"}
    for variant, values in summary["stage2"].items():
        sets = steps[f"eval/seed0/{variant}"]["result"]["metrics"]["sets"]
        assert values == {
            "caption_f1": sets["caption"]["f1"],
            "pope_accuracy": pytest.approx(
                sum(sets["pope"][p]["accuracy"] for p in ("random", "popular", "adversarial")) / 3
            ),
            "vqa_accuracy": sets["vqa"]["accuracy"],
        }

    # the chat command the demo prints at the end works on its result
    image = out / "world" / "images" / "eval" / "000000.png"
    chat = CliRunner().invoke(
        app,
        ["chat", "--model", str(out / "runs" / "seed0" / "aligngpt"), "--image", str(image), "--temperature", "0",
         "--max-new-tokens", "4", "--show-alignment"],
        input="Describe the image in detail.\n/quit\n",
    )  # fmt: skip
    assert chat.exit_code == 0, chat.output
    assert chat.output.count("ASSISTANT: ") == 1 and re.search(r"^  level 6 ", chat.output, re.M)

    again = CliRunner().invoke(app, ["demo", "--size", "smoke", "--out", str(out), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert "..." not in again.output  # nothing re-ran
    assert again.output.count("reused") >= len(steps)
    assert again.output.count("nothing left to run") == 4  # after stage 1, the sweep, stage 2 and the evaluation


def test_unknown_variant_is_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(
        app, ["demo", "--size", "smoke", "--out", str(tmp_path / "d"), "--variants", "prefix,bogus"]
    )
    assert result.exit_code != 0
    assert "unknown variants ['bogus']" in str(result.exception)
    assert not (tmp_path / "d" / "steps.json").exists()
