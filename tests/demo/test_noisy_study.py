"""The noisy-tasks study: gate statistics, the computed verdict, and `aligngpt demo --study noisy-smoke` end to end."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from aligngpt.cli import app
from aligngpt.demo.analysis import gate_summary
from aligngpt.demo.noisy import NoisyStudy
from aligngpt.demo.presets import ALIGNGPT, ALL_VARIANTS, BASELINE, get_preset
from aligngpt.toyworld.instructions import CAPTION_PROMPTS, EVAL_CAPTION_PROMPT

LEVELS = 7
LOOSE = (CAPTION_PROMPTS[2],)


def test_gate_summary_kl_and_mean_level():
    uniform = gate_summary([[1 / LEVELS] * LEVELS] * 4)
    assert uniform["kl_from_uniform"] == pytest.approx(0.0, abs=1e-9)
    assert uniform["mean_level"] == pytest.approx((LEVELS - 1) / 2)
    assert uniform["per_sample_std"] == pytest.approx(0.0)
    low = gate_summary([[1.0] + [0.0] * (LEVELS - 1), [0.5, 0.5] + [0.0] * (LEVELS - 2)])
    assert low["mean_level"] == pytest.approx(0.25)  # mean weights (0.75, 0.25, 0, ...)
    assert low["kl_from_uniform"] == pytest.approx(math.log(LEVELS) + 0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert low["per_sample_std"] == pytest.approx((0.25 + 0.25) / LEVELS)
    assert low["n"] == 2


def _gate(weights):
    return gate_summary([weights])


def _phrasings(seeds, loose_weights, f1):
    """Recorded phrasing sweeps: clean phrasings get uniform gate weights, the loose one ``loose_weights``."""
    uniform = [1 / LEVELS] * LEVELS
    out = {}
    for seed in seeds:
        for variant in (ALIGNGPT, BASELINE):
            out[f"phrasings/seed{seed}/{variant}"] = {
                p: {
                    "f1": f1[variant][seed] - (0.3 if p in LOOSE else 0.0),
                    "chair_i": 0.1,
                    "n": 150,
                    "example": "A red circle.",
                    "gate": (_gate(loose_weights if p in LOOSE else uniform) if variant == ALIGNGPT else None),
                }
                for p in CAPTION_PROMPTS
            }
    return out


def _study(phrasings, seeds):
    return NoisyStudy(phrasings, seeds, (ALIGNGPT, BASELINE), CAPTION_PROMPTS, LOOSE, EVAL_CAPTION_PROMPT)


def test_verdict_says_the_gate_adapts_when_the_loose_phrasing_leans_to_low_levels():
    seeds = [0, 1, 2]
    f1 = {ALIGNGPT: [0.95, 0.94, 0.96], BASELINE: [0.90, 0.91, 0.90]}
    study = _study(_phrasings(seeds, [0.4, 0.3, 0.1, 0.1, 0.05, 0.03, 0.02], f1), seeds)
    assert study.adapts()
    assert study.level_shifts() == pytest.approx([3.0 - 1.27] * 3)
    text = "\n".join(study.verdict_lines())
    assert "**Does the gate adapt?** **yes**" in text
    # 0.05, 0.03, 0.06: same sign, mean 0.047 > std 0.015 -> an effect
    assert re.search(r"caption F1 on the clean phrasings:\*\* baseline \+0\.047 ± 0\.015 \(an effect\)", text)
    section = "\n".join(study.section_lines())
    assert "gate_phrasings.png" in section
    assert re.search(r"^\| 0 \| «What is in this image\? Describe all objects\.» \(loose\) \| 0\.400 0\.300 ", section,
                     re.M)  # fmt: skip


def test_verdict_says_the_gate_stays_uniform():
    seeds = [0, 1]
    f1 = {ALIGNGPT: [0.95, 0.90], BASELINE: [0.92, 0.92]}
    study = _study(_phrasings(seeds, [1 / LEVELS] * LEVELS, f1), seeds)
    assert not study.adapts() and study.max_kl() < 1e-9
    text = "\n".join(study.verdict_lines())
    assert "**no, the gate stays uniform**" in text
    assert "baseline +0.005 ± 0.035 (within the seed spread)" in text  # differences +0.03 and -0.02


def test_study_presets():
    study = get_preset("noisy-tasks")
    assert study.variants == ALL_VARIANTS and study.seeds >= 3 and study.loose_prompts == LOOSE
    full = get_preset("full")
    assert (study.pretrain_steps, study.finetune_steps, study.n_finetune) == (
        full.pretrain_steps, full.finetune_steps, full.n_finetune)  # fmt: skip
    with pytest.raises(ValueError, match="studies: noisy-tasks"):
        get_preset("noisy")


def test_smoke_study_end_to_end(tmp_path):
    out = tmp_path / "study"
    result = CliRunner().invoke(app, ["demo", "--study", "noisy-smoke", "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    lines = report.splitlines()
    assert lines[0] == "# AlignGPT toy-world study `noisy-smoke`"
    assert lines[2].startswith("**Noisy-tasks question.**")  # the study's verdict opens the report
    assert lines[4].startswith("- **Does the gate adapt?** **")
    # then the demo's verdict, which points to this study's results rather than to --full
    assert re.search(r"^\*\*Verdict: not converged\.\*\* .* the `noisy-smoke` study uses the `--full` recipe "
                     r"\(docs/toyworld\.md reports its runs\)\.$", report, re.M)  # fmt: skip
    for variant in ALL_VARIANTS:
        assert f"AlignGPT − {variant}" in report or variant == ALIGNGPT
    for prompt in CAPTION_PROMPTS:
        assert re.search(rf"^\| 0 \| «{re.escape(prompt)}» .*\| (0\.\d{{3}} ){{6}}0\.\d{{3}} \| \d\.\d{{4}} \|", report,
                         re.M), prompt  # fmt: skip
    assert (out / "gate_phrasings.png").stat().st_size > 0
    steps = json.loads((out / "steps.json").read_text())
    assert {f"phrasings/seed0/{v}" for v in ALL_VARIANTS} <= set(steps)
    finetune = json.loads((out / "world" / "finetune.json").read_text())
    loose = [r for r in finetune if any(LOOSE[0] in turn["value"] for turn in r["conversations"])]
    assert loose and all(r["noisy"] == [True] for r in loose)

    # the gate probe reruns stage 2 from this study's stage 1; a 100x gate LR moves the gate further in 3 steps
    from aligngpt.demo.gate_probe import CHANGES, run_probe

    changes = tuple(c for c in CHANGES if c.name in ("recipe", "gate-lr-x100", "prompt-input"))
    probe = run_probe(out, tmp_path / "probe", [0], changes, workers=1, study="noisy-smoke", echo=lambda _: None)
    done = json.loads((tmp_path / "probe" / "probe.json").read_text())
    recipe, fast = (done[f"seed0/{name}"]["result"] for name in ("recipe", "gate-lr-x100"))
    assert recipe["phrasings"] == steps["phrasings/seed0/aligngpt"]["result"]  # the measurement changes nothing
    kl = [r["phrasings"][LOOSE[0]]["gate"]["kl_from_uniform"] for r in (recipe, fast)]
    assert kl[1] > 10 * kl[0]
    first = recipe["gradients"][0]
    assert first["step"] == 0 and first["gate_grad_norm"] > 0 and first["language_model_grad_norm"] > 0
    # the prompt-only gate input trains a model saved with it, and already the first gate gradient differs
    prompt_run = tmp_path / "probe" / "runs" / "seed0" / "prompt-input"
    assert json.loads((prompt_run / "config.json").read_text())["gate_text"] == "prompt"
    prompt_first = done["seed0/prompt-input"]["result"]["gradients"][0]
    assert prompt_first["gate_grad_norm"] != pytest.approx(first["gate_grad_norm"], rel=1e-4)
    assert re.search(r"^\| seed0/gate-lr-x100 \| \d\.\d\de-\d\d \|", probe.read_text(), re.M)

    from aligngpt.demo.gate_probe import run_forced_levels, run_start_gates

    start = json.loads(run_start_gates(out, tmp_path / "probe", [0], changes).read_text())
    assert start["seed0/recipe"] == start["seed0/gate-lr-x100"]  # both start from the study's stage-1 model
    assert start["seed0/recipe"] == start["seed0/prompt-input"]  # gate_text changes training, not inference
    assert set(start["seed0/recipe"]) == set(CAPTION_PROMPTS)

    levels = run_forced_levels(out, tmp_path / "probe", [0], workers=1, study="noisy-smoke", echo=lambda _: None)
    for prompt in CAPTION_PROMPTS:
        assert re.search(rf"^\| seed0 \| «{re.escape(prompt)}» \|( \d\.\d{{3}} / \d\.\d{{3}} \|){{8}}$",
                         levels.read_text(), re.M)  # fmt: skip


def test_study_and_full_together_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--study", "noisy-smoke", "--full", "--out", str(tmp_path / "d")])
    assert result.exit_code != 0
    assert "--study and --full" in str(result.exception)
    assert not (tmp_path / "d").exists()


def test_gate_input_separation_finds_a_shifted_dimension_and_not_noise():
    from aligngpt.demo.gate_measures import gate_input_separation

    rng = np.random.default_rng(0)
    images = rng.normal(size=(200, 9))  # the same images under every prompt
    clean = {CAPTION_PROMPTS[0]: images, CAPTION_PROMPTS[1]: images + 0.01 * rng.normal(size=(200, 9))}
    shifted = images.copy()
    shifted[:, 3] += 3.0
    separable = gate_input_separation({**clean, LOOSE[0]: shifted}, LOOSE)
    assert separable["probe_accuracy"] > 0.9 and separable["fisher"] > 2.0
    same = gate_input_separation({**clean, LOOSE[0]: images + 0.01 * rng.normal(size=(200, 9))}, LOOSE)
    assert 0.35 < same["probe_accuracy"] < 0.65 and same["fisher"] < 0.01


def test_scale_gate_init_scales_only_the_output_layer(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from aligngpt.demo.gate_measures import scale_gate_init

    source = tmp_path / "stage1"
    source.mkdir()
    (source / "checkpoints").mkdir()
    (source / "config.json").write_text("{}")
    tensors = {"alignment.gate.0.weight": torch.ones(4, 9), "alignment.gate.2.weight": torch.ones(7, 4),
               "alignment.gate.2.bias": torch.full((7,), 0.5)}  # fmt: skip
    save_file(tensors, str(source / "model.safetensors"))
    target = scale_gate_init(source, tmp_path / "scaled", 10.0)
    scaled = load_file(str(target / "model.safetensors"))
    assert torch.equal(scaled["alignment.gate.0.weight"], tensors["alignment.gate.0.weight"])
    assert torch.equal(scaled["alignment.gate.2.weight"], 10 * tensors["alignment.gate.2.weight"])
    assert torch.equal(scaled["alignment.gate.2.bias"], torch.full((7,), 5.0))
    assert (target / "config.json").is_file() and not (target / "checkpoints").exists()
    save_file({"projector.weight": torch.ones(2)}, str(source / "model.safetensors"))
    with pytest.raises(ValueError, match="no alignment.gate.2"):
        scale_gate_init(source, tmp_path / "again", 10.0)
