"""The report's verdict on constructed results: grounded or not, converged or not, and what the seed count allows."""

from __future__ import annotations

import json

import pytest

from aligngpt.demo.pipeline import _timings
from aligngpt.demo.progress import NO_ESTIMATE_YET, DemoClock, PlannedStage
from aligngpt.demo.report import SUMMARY_FILE, study_summary
from aligngpt.demo.steps import StepLog
from aligngpt.demo.verdict import THRESHOLDS, Stage1Check, Stage2Check, Thresholds, judge

GROUNDED = (0.15, 0.43, 0.62, 0.72, 0.81, 0.90, 0.90, 0.91)  # the --full run's seed 0 (docs/toyworld.md)
CONVERGED = {"caption_f1": 0.94, "pope": 0.85, "vqa": 0.65}


def _sets(caption_f1: float, pope: float, vqa: float) -> dict:
    return {
        "caption": {"f1": caption_f1, "chair_i": 0.05},
        "vqa": {"accuracy": vqa},
        "pope": {split: {"accuracy": pope} for split in ("random", "popular", "adversarial")},
    }


def _results(f1_by_seed: dict[int, tuple], stage2: dict[tuple[int, str], dict]) -> tuple[dict, dict]:
    sweeps = {
        f"level-sweep/seed{s}/aligngpt": {str(k): {"f1": f} for k, f in enumerate(f1)} for s, f1 in f1_by_seed.items()
    }
    for seed in f1_by_seed:
        sweeps[f"level-sweep/seed{seed}/baseline"] = {"none": {"f1": 0.8 + seed / 100}}
    evaluations = {f"eval/seed{s}/{v}": {"metrics": {"sets": _sets(**m)}} for (s, v), m in stage2.items()}
    return sweeps, evaluations


def _verdict(f1_by_seed, stage2, size="default", thresholds=THRESHOLDS):
    sweeps, evaluations = _results(f1_by_seed, stage2)
    variants = tuple(dict.fromkeys(v for _, v in stage2))
    return judge(sweeps=sweeps, evaluations=evaluations, seeds=sorted(f1_by_seed), variants=variants, size=size,
                 thresholds=thresholds)  # fmt: skip


def test_stage1_grounded_needs_a_high_top_level_a_low_level_zero_and_a_rising_curve():
    assert Stage1Check(0, GROUNDED).grounded
    assert Stage1Check(0, (0.30, *GROUNDED[1:-1], 0.85)).grounded  # both bounds are inclusive

    low_top = Stage1Check(0, (*GROUNDED[:-1], 0.84))
    assert not low_top.grounded and low_top.failures == ["F1 at level 7 0.840 < 0.85"]
    high_start = Stage1Check(0, (0.31, *GROUNDED[1:]))
    assert high_start.failures == ["F1 at level 0 0.310 > 0.30"]
    # high at the top, low at level 0, but a zig-zag in between: Spearman(level, F1) = 0.75 < 0.8
    zigzag = Stage1Check(0, (0.1, 0.7, 0.2, 0.6, 0.8, 0.3, 0.9, 0.9))
    assert zigzag.failures == ["not rising: Spearman(level, F1) 0.755 < 0.8"]
    flat = Stage1Check(0, (0.0,) * 8)  # the smoke demo's untrained model
    assert flat.failures == [
        "F1 at level 7 0.000 < 0.85",
        "not rising: Spearman(level, F1) 0.000 < 0.8 and F1[7] 0.000 ≤ F1[0] 0.000",
    ]


def test_stage2_converged_needs_every_metric_at_its_threshold():
    assert Stage2Check(0, "aligngpt", 0.90, 0.80, 0.60).converged  # inclusive
    run = Stage2Check(0, "baseline", 0.899, 0.5, 0.7)
    assert run.failures == ["caption F1 0.899 < 0.90", "POPE accuracy 0.500 < 0.80"]
    assert Stage2Check(0, "local", 0.95, 0.85, 0.588).failures == ["VQA accuracy 0.588 < 0.60"]


def test_one_seed_converged_claims_the_level_effect_but_no_difference_between_variants():
    verdict = _verdict({0: GROUNDED}, {(0, "aligngpt"): CONVERGED, (0, "baseline"): {**CONVERGED, "pope": 0.81}})
    assert verdict.converged
    lines = verdict.lines()
    assert lines[0].startswith("**Verdict: converged.**")
    text = "\n".join(lines)
    assert "**Seeds: 1.** One seed allows no claim about a difference between variants" in text
    assert "seed spread of `aligngpt demo --full`" in text
    assert "**Answer to (1):** undecided: one seed" in text
    assert "**Answer to (2):** yes in this seed: caption F1 from level 0 to level 7: 0.15 → 0.91." in text


def test_a_run_below_threshold_makes_the_study_not_converged_and_points_to_full():
    stage2 = {(0, "aligngpt"): CONVERGED, (0, "baseline"): {**CONVERGED, "caption_f1": 0.48}}
    verdict = _verdict({0: GROUNDED}, stage2)
    assert verdict.grounded and not verdict.converged
    assert verdict.lines()[0] == (
        "**Verdict: not converged.** 1 of 2 stage-2 runs did not converge (thresholds below), so question (1) stays "
        "open; for the converged study run `aligngpt demo --full`."
    )
    text = "\n".join(verdict.lines())
    assert "baseline/seed0 **not converged** (caption F1 0.480 < 0.90)" in text and "aligngpt/seed0 converged" in text
    assert "**Answer to (1):** undecided: not every run converged." in text

    ungrounded = _verdict({0: GROUNDED, 1: (0.5,) * 8}, {(s, "aligngpt"): CONVERGED for s in (0, 1)}, size="full")
    assert not ungrounded.converged
    first = ungrounded.lines()[0]
    assert "Stage 1 is not grounded in 1 of 2 seeds" in first and "answers neither question" in first
    assert "even this `--full` run did not reach them" in first
    assert "**Answer to (2):** not shown: stage 1 is not grounded in seed 1." in "\n".join(ungrounded.lines())


def test_several_seeds_read_differences_against_their_spread():
    seeds = (0, 1, 2)
    f1 = {s: GROUNDED for s in seeds}
    # AlignGPT ahead on POPE in every seed by far more than the spread; caption F1 mixed in sign
    stage2 = {}
    for s, (pope_gain, f1_gain) in zip(seeds, ((0.05, 0.01), (0.06, -0.01), (0.05, 0.002))):
        stage2[(s, "aligngpt")] = {"caption_f1": 0.93 + f1_gain, "pope": 0.82 + pope_gain, "vqa": 0.65}
        stage2[(s, "baseline")] = {"caption_f1": 0.93, "pope": 0.82, "vqa": 0.65 - 0.001 * s}
    verdict = _verdict(f1, stage2)
    assert verdict.converged
    effects = {d.metric: d.is_effect for d in verdict.differences}
    assert effects == {"caption F1": False, "POPE accuracy": True, "VQA accuracy": False}  # VQA: 0, +0.001, +0.002
    text = "\n".join(verdict.lines())
    assert "**Seeds: 3.** A difference between variants counts only if every seed agrees in sign" in text
    assert "POPE accuracy +0.053 ± 0.006 (an effect)" in text
    assert "caption F1 +0.001 ± 0.010 (within the seed spread)" in text
    assert "yes in all 3 seeds" in text


def test_the_thresholds_are_the_ones_judged_by():
    stage2 = {(0, "aligngpt"): CONVERGED}
    assert _verdict({0: GROUNDED}, stage2).converged
    assert not _verdict({0: GROUNDED}, stage2, thresholds=Thresholds(caption_f1_min=0.95)).converged
    with pytest.raises(AttributeError):
        THRESHOLDS.caption_f1_min = 0.1  # frozen: defined once


def test_summary_holds_exactly_the_documented_keys(tmp_path):
    sweeps, evaluations = _results({0: GROUNDED}, {(0, "aligngpt"): CONVERGED, (0, "baseline"): CONVERGED})
    verdict = judge(sweeps=sweeps, evaluations=evaluations, seeds=[0], variants=("aligngpt", "baseline"),
                    size="default")  # fmt: skip
    summary = study_summary(seeds=[0], sweeps=sweeps, evaluations=evaluations, timings={"a": 1.5, "b": 2.0},
                            verdict=verdict)  # fmt: skip
    assert summary == {
        "seconds_total": 3.5,
        "stage1_level_sweep": {"aligngpt": list(GROUNDED)},
        "stage1_baseline_f1": 0.8,
        "stage2": {
            "aligngpt": {"caption_f1": 0.94, "pope_accuracy": pytest.approx(0.85), "vqa_accuracy": 0.65},
            "baseline": {"caption_f1": 0.94, "pope_accuracy": pytest.approx(0.85), "vqa_accuracy": 0.65},
        },
        "converged": True,
    }
    assert SUMMARY_FILE == "summary.json"


def test_progress_estimate_prices_stage_2_from_stage_1_and_skips_reused_jobs():
    now = [100.0]
    lines = []
    clock = DemoClock(lines.append, workers=2, clock=lambda: now[0])
    now[0] = 130.0
    clock.finished("world")
    assert lines[-1] == f"[demo] progress: world finished, 0:30 elapsed; {NO_ESTIMATE_YET}"
    clock.plan([PlannedStage("stage 1", 2, 600), PlannedStage("sweep", 2), PlannedStage("stage 2", 3, 150),
                PlannedStage("evaluation", 0)])  # fmt: skip
    clock.measure(seconds=240.0, jobs=2, steps=600)  # 2 jobs on 2 workers: one round of 600 steps -> 0.4 s per step
    now[0] = 400.0
    clock.finished("stage 1")
    # stage 2: 3 jobs on 2 workers = 2 rounds x 150 steps x 0.4 s = 120 s; the evaluation is reused
    assert lines[-1] == (
        "[demo] progress: stage 1 finished, 5:00 elapsed; at least 2:00 left "
        "(stage 2 at stage 1's 0.40 s per step; sweep not estimated)"
    )
    clock.finished("sweep")
    clock.finished("stage 2")
    assert lines[-1].endswith("nothing left to run")


def test_timings_count_only_this_runs_jobs(tmp_path):
    steps = {name: {"digest": "x", "seconds": seconds, "result": None} for name, seconds in (
        ("world", 1.0), ("zoo", 2.0), ("score", 3.0), ("clip-quality", 0.5), ("pretrain/seed0/aligngpt", 10.0),
        ("pretrain/seed1/aligngpt", 99.0),  # an earlier --full run's seed, not part of this run
    )}  # fmt: skip
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    timings = _timings(StepLog(tmp_path / "steps.json"), {"stage 1 (pretrain)": ["pretrain/seed0/aligngpt"]})
    assert timings == {"world": 1.0, "zoo": 2.0, "score": 3.5, "stage 1 (pretrain)": 10.0}
