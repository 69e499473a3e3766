"""``report.md``, ``summary.json`` and the PNG plots of the toy-world study. Every number comes from the run's results.

``report.md`` opens with the computed verdict (:mod:`aligngpt.demo.verdict`) and a glossary of its metrics.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from aligngpt.demo.noisy import GATE_PLOT, NoisyStudy, plot_gate_phrasings
from aligngpt.demo.presets import ALIGNGPT, BASELINE, NUM_LEVELS, PREFIX, STAGE1_SOURCE, VARIANT_MODES, DemoPreset
from aligngpt.demo.verdict import (
    THRESHOLDS,
    Verdict,
    caption_f1,
    judge,
    level_f1,
    pope_accuracy,
    vqa_accuracy,
)
from aligngpt.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
from aligngpt.scoring.summary import summary_paths
from aligngpt.toyworld.evalsets import VQA_TASKS
from aligngpt.toyworld.instructions import CAPTION_PROMPTS, EVAL_CAPTION_PROMPT, POPE_SPLITS

SUMMARY_FILE = "summary.json"
PLOT_DPI = 120
POPE_CHANCE_MARGIN = 0.1  # a run whose mean POPE accuracy is below 0.5 + this has not learned POPE
VARIANT_TEXT = {
    ALIGNGPT: "the paper: gate-weighted alignment token (`adaptive`)",
    BASELINE: "LLaVA-1.5: no alignment token (`none`)",
    PREFIX: "control: the baseline plus one learned token after BOS that ignores the levels in both stages",
    "global": "ablation: always the highest level E[N-1] (AlignGPT's stage 1, no gate)",
    "local": "ablation: gate-weighted levels without E[N-1]",
    "uniform": "ablation: uniform weights instead of the gate",
}
KEY_METRICS = {
    "caption F1": caption_f1,
    "caption CHAIR_i (lower is better)": lambda s: s["caption"]["chair_i"],
    "VQA accuracy": vqa_accuracy,
    "POPE accuracy (mean of splits)": pope_accuracy,
}


def glossary(num_levels: int) -> list[str]:
    """Markdown lines defining each metric of the report once."""
    return [
        "**Glossary.**",
        "",
        "- *caption F1*: per caption, the F1 between the object types (colour + shape) it names and those in the "
        "image, averaged over the captions; 1 = every object named and nothing else (higher is better).",
        "- *CHAIR_i*: hallucinated mentions (object types not in the image) / all object mentions, over all "
        "captions (lower is better).",
        '- *POPE accuracy*: share of correct answers to "Is there a … in the image?" in a split: random (absent '
        "types), popular (absent partners of present objects), adversarial (present objects with colour or shape "
        "swapped); each split is half yes, half no, so 0.5 is chance. Where no split is named, the mean of the three. "
        '*yes-ratio*: share of "yes" answers (0.5 = balanced, near 1 = a model that says yes to everything).',
        f"- *gate entropy*: entropy (nats) of AlignGPT's stage-2 gate weights over the {num_levels - 1} local "
        f"levels E[0..{num_levels - 2}]; its maximum log({num_levels - 1}) = {math.log(num_levels - 1):.3f} means "
        f"uniform weights (1/{num_levels - 1} each), i.e. a gate that does not choose. The gate table gives the "
        "entropy of the mean weights and the mean of the per-sample entropies.",
    ]


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _sets(evaluations: dict, seed: int, variant: str) -> dict:
    return evaluations[f"eval/seed{seed}/{variant}"]["metrics"]["sets"]


def _final_rows(evaluations: dict, seeds: list[int], variants: tuple[str, ...]) -> list[str]:
    rows = {
        "caption F1": KEY_METRICS["caption F1"],
        "caption CHAIR_i": KEY_METRICS["caption CHAIR_i (lower is better)"],
        "caption partner-hallucination rate": lambda s: s["caption"]["partner_rate"],
        "VQA accuracy": KEY_METRICS["VQA accuracy"],
        **{f"VQA {t}": (lambda s, t=t: s["vqa"]["by_category"].get(t)) for t in VQA_TASKS},
        **{f"POPE {p} accuracy": (lambda s, p=p: s["pope"][p]["accuracy"]) for p in POPE_SPLITS},
        **{f"POPE {p} F1": (lambda s, p=p: s["pope"][p]["f1"]) for p in POPE_SPLITS},
        **{f"POPE {p} yes-ratio": (lambda s, p=p: s["pope"][p]["yes_ratio"]) for p in POPE_SPLITS},
    }
    lines = ["| metric | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for name, get in rows.items():
        cells = [_mean_std([get(_sets(evaluations, seed, v)) for seed in seeds]) for v in variants]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _paired_rows(evaluations: dict, seeds: list[int], variants: tuple[str, ...]) -> list[str]:
    """AlignGPT minus every other variant, paired by seed: mean ± std of the per-seed differences."""
    others = [v for v in variants if v != ALIGNGPT]
    lines = ["| metric | " + " | ".join(f"AlignGPT − {v}" for v in others) + " |", "|---|" + "---|" * len(others)]
    for name, get in KEY_METRICS.items():
        cells = []
        for other in others:
            diffs = [get(_sets(evaluations, s, ALIGNGPT)) - get(_sets(evaluations, s, other)) for s in seeds]
            cells.append(_mean_std(diffs) + f" ({sum(d > 0 for d in diffs)}/{len(diffs)} > 0)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _chance_runs(evaluations: dict, seeds: list[int], variants: tuple[str, ...]) -> list[str]:
    get = KEY_METRICS["POPE accuracy (mean of splits)"]
    return [f"{v}/seed{s}" for v in variants for s in seeds if get(_sets(evaluations, s, v)) < 0.5 + POPE_CHANCE_MARGIN]


def _save(figure, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")  # keep outer labels
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def _plot_levels(path: Path, sweeps: dict, seeds: list[int]) -> None:
    """Caption F1 (left) and CHAIR_i (right) of the stage-1 models against the forced level, thresholds drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = THRESHOLDS
    figure, (ax_f1, ax_chair) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for index, seed in enumerate(seeds):
        sweep = sweeps[f"level-sweep/seed{seed}/{ALIGNGPT}"]
        levels = list(range(len(sweep)))
        colour = f"C{index}"
        ax_f1.plot(levels, level_f1(sweep), "o-", color=colour, label=f"AlignGPT, seed {seed}")
        ax_chair.plot(levels, [sweep[str(k)]["chair_i"] for k in levels], "s-", color=colour,
                      label=f"AlignGPT, seed {seed}")  # fmt: skip
        baseline = sweeps.get(f"level-sweep/seed{seed}/{BASELINE}")
        if baseline is not None:
            for axis, key in ((ax_f1, "f1"), (ax_chair, "chair_i")):
                axis.axhline(baseline["none"][key], color=colour, ls="--", lw=1, alpha=0.6,
                             label=f"baseline (no token), seed {seed}")  # fmt: skip
    top = len(sweeps[f"level-sweep/seed{seeds[0]}/{ALIGNGPT}"]) - 1
    ax_f1.axhline(t.top_level_f1_min, color="tab:green", ls=":", lw=1.5,
                  label=f"grounded: F1 at level {top} ≥ {t.top_level_f1_min:.2f}")  # fmt: skip
    ax_f1.axhline(t.level0_f1_max, color="tab:red", ls=":", lw=1.5,
                  label=f"grounded: F1 at level 0 ≤ {t.level0_f1_max:.2f}")  # fmt: skip
    for axis, name, better in ((ax_f1, "caption F1", "higher"), (ax_chair, "caption CHAIR_i", "lower")):
        axis.set_ylim(-0.02, 1.02)
        axis.set_xticks(range(top + 1))
        axis.set_xlabel("forced alignment level (0 = least aligned)")
        axis.set_ylabel(f"{name} ({better} is better)")
        axis.set_title(f"Stage 1: {name} under a forced level")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, path)


def _plot_gate(path: Path, evaluations: dict, seeds: list[int]) -> None:
    """Mean gate weight per question type and level; the colour scale is centred on the uniform weight 1/(N-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    gate = evaluations[f"eval/seed{seeds[0]}/{ALIGNGPT}"]["gate"]
    tasks = [t for t in gate if t != "max_entropy"]
    if not tasks:
        return
    matrix = np.array([gate[t]["mean"] for t in tasks])  # [tasks, N-1]
    levels = matrix.shape[1]
    uniform = 1.0 / levels
    top = max(2 * uniform, float(matrix.max()))
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(tasks) + 1.6))
    image = axis.imshow(matrix, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(uniform, vmin=0.0, vmax=top))
    for row, column in np.ndindex(matrix.shape):
        axis.text(column, row, f"{matrix[row, column]:.2f}", ha="center", va="center", fontsize=7)
    axis.set_yticks(range(len(tasks)), tasks)
    axis.set_xticks(range(levels), [f"E[{i}]" for i in range(levels)])
    axis.set_xlabel("local alignment level (the gate's weight on each level embedding)")
    axis.set_ylabel("question type")
    axis.set_title(f"Stage 2: AlignGPT's mean gate weights, seed {seeds[0]} (white = uniform)")
    bar = figure.colorbar(image, ax=axis)
    bar.set_ticks([0.0, uniform, top], labels=["0", f"{uniform:.3f} = 1/{levels} (uniform)", f"{top:.3f}"])
    bar.ax.axhline(uniform, color="black", lw=1)
    bar.set_label("mean gate weight")
    figure.tight_layout()
    _save(figure, path)


def study_summary(*, seeds: list[int], sweeps: dict, evaluations: dict, timings: dict[str, float],
                  verdict: Verdict) -> dict:  # fmt: skip
    """The content of ``summary.json``: seed ``seeds[0]``'s headline numbers, the total time and the verdict.

    A variant that was not run (the baseline under ``--variants``) has ``null`` values.
    """
    seed = seeds[0]

    def stage2(variant: str) -> dict | None:
        evaluation = evaluations.get(f"eval/seed{seed}/{variant}")
        if evaluation is None:
            return None
        sets = evaluation["metrics"]["sets"]
        return {
            "caption_f1": caption_f1(sets),
            "pope_accuracy": pope_accuracy(sets),
            "vqa_accuracy": vqa_accuracy(sets),
        }

    baseline_sweep = sweeps.get(f"level-sweep/seed{seed}/{BASELINE}")
    return {
        "seconds_total": sum(timings.values()),
        "stage1_level_sweep": {ALIGNGPT: list(level_f1(sweeps[f"level-sweep/seed{seed}/{ALIGNGPT}"]))},
        "stage1_baseline_f1": baseline_sweep["none"]["f1"] if baseline_sweep is not None else None,
        "stage2": {ALIGNGPT: stage2(ALIGNGPT), BASELINE: stage2(BASELINE)},
        "converged": verdict.converged,
    }


def _rounded(value: object) -> object:
    return f"{value:.3f}" if isinstance(value, float) else value


def write_report(
    out: Path, *, preset: DemoPreset, size: str, seeds: list[int], zoo: dict, clip_quality: dict, scored: Path,
    stage1: dict, sweeps: dict, finals: dict, evaluations: dict, timings: dict[str, float],
    phrasings: dict | None = None,
) -> Path:  # fmt: skip
    """Write ``out/report.md`` with ``levels.png`` and ``gate.png``, and ``out/summary.json``; returns the report path.

    ``size`` is the preset's name, ``scored`` the scored pre-training file (its level summary plot is linked).
    ``phrasings`` (a study with loose prompts) are the caption phrasing sweeps; the study's verdict then opens the
    report and its section and ``gate_phrasings.png`` are added.
    """
    out = Path(out)
    verdict = judge(sweeps=sweeps, evaluations=evaluations, seeds=seeds, variants=preset.variants, size=size)
    noisy = None
    if phrasings:
        noisy = NoisyStudy(phrasings, seeds, preset.variants, CAPTION_PROMPTS, preset.loose_prompts,
                           EVAL_CAPTION_PROMPT)  # fmt: skip
        if noisy.level_shifts() is not None:
            plot_gate_phrasings(out / GATE_PLOT, noisy, _save)
    _plot_levels(out / "levels.png", sweeps, seeds)
    _plot_gate(out / "gate.png", evaluations, seeds)
    scoring_plot = summary_paths(scored)[1]  # written by the demo's ``aligngpt score`` step
    scoring_link = (
        [f"Level summary of the scoring run (`aligngpt score`): "
         f"![CLIP score levels]({Path(os.path.relpath(scoring_plot, out)).as_posix()})", ""]
        if scoring_plot.is_file()
        else []
    )  # fmt: skip
    lines = [
        "# AlignGPT toy-world study" + (f" `{size}`" if noisy else ""),
        "",
        *([*noisy.verdict_lines(), ""] if noisy else []),
        *verdict.lines(),
        "",
        *glossary(NUM_LEVELS),
        "",
        f"Seeds: {len(seeds)}; variants: {', '.join(preset.variants)}; stage 1 {preset.pretrain_steps} steps of "
        f"{preset.pretrain_batch_size} samples, stage 2 {preset.finetune_steps} steps of {preset.finetune_batch_size}; "
        f"{preset.n_pretrain} pre-training captions, "
        f"{preset.n_finetune} instruction samples, {preset.n_eval} evaluation images.",
        "",
        f"**Toy recipe note.** Stage 1 here also trains the LLM at {preset.llm_lr_scale} × the learning rate "
        "(`--train-llm-lr-scale`): a tiny LM that never saw images cannot be steered by projected image tokens "
        "alone. The paper recipes (`aligngpt train --recipe pretrain`) keep the LLM frozen.",
        "",
        "## Time per stage (seconds, wall)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()],
        f"| **total** | **{sum(timings.values()):.0f}** |",
        "",
        "## Local model zoo",
        "",
        "```",
        *[f"{k}: {_rounded(v)}" for k, v in sorted((zoo.get("quality") or zoo).items())
          if not isinstance(v, dict | list)],
        "```",
        "",
        "## CLIP score as an alignment measure",
        "",
        f"Spearman correlation between the CLIP cosine and the true alignment fraction of {clip_quality['n']} "
        f"pre-training pairs: **{clip_quality['spearman']:.3f}**.",
        "",
        "| level | pairs | mean true alignment | mean CLIP score |",
        "|---|---|---|---|",
        *[f"| {r['level']} | {r['count']} | {r['mean_true_alignment']:.3f} | {r['mean_clip_score']:.3f} |"
          for r in clip_quality["per_level"] if r["count"]],
        "",
        "Mean CLIP score by caption kind: "
        + ", ".join(f"{k} {v:.3f}" for k, v in clip_quality["mean_score_by_kind"].items()),
        "",
        *scoring_link,
        "## Stage 1: level-conditioned captioning",
        "",
        "The alignment token of the stage-1 model is forced to each level while captioning the evaluation images.",
        "",
        "![levels](levels.png)",
        "",
        "| level | " + " | ".join(f"seed {s} F1 / CHAIR_i" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]  # fmt: skip
    first = sweeps[f"level-sweep/seed{seeds[0]}/{ALIGNGPT}"]
    for level in sorted(first, key=int):
        cells = []
        for seed in seeds:
            row = sweeps[f"level-sweep/seed{seed}/{ALIGNGPT}"][level]
            cells.append(f"{row['f1']:.3f} / {row['chair_i']:.3f}")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    for variant, label in ((BASELINE, "baseline (no token)"), (PREFIX, "prefix control (token without levels)")):
        if f"level-sweep/seed{seeds[0]}/{variant}" not in sweeps:
            continue
        cells = []
        for seed in seeds:
            row = sweeps[f"level-sweep/seed{seed}/{variant}"]["none"]
            cells.append(f"{row['f1']:.3f} / {row['chair_i']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [
        f"Example captions (seed {seeds[0]}): level 0 «{first['0']['example']}», "
        f"level {max(first, key=int)} «{first[max(first, key=int)]['example']}».",
        "",
        "## Stage 2: AlignGPT vs the LLaVA-1.5 baseline",
        "",
        "Variants (stage 2 starts from the stage-1 model named in brackets):",
        "",
        *[f"- `{v}` [{STAGE1_SOURCE[v]}]: {VARIANT_TEXT.get(v, VARIANT_MODES[v])}" for v in preset.variants],
        "",
        "Mean ± std over seeds (a single value for one seed). POPE at 0.5 accuracy is chance.",
        "",
        *_final_rows(evaluations, seeds, preset.variants),
        "",
        "AlignGPT minus each other variant, paired by seed (mean ± std of the differences; in brackets, how many "
        "seeds give a positive difference — good for AlignGPT except on CHAIR_i):",
        "",
        *_paired_rows(evaluations, seeds, preset.variants),
        "",
        "Runs whose mean POPE accuracy stayed within "
        f"{POPE_CHANCE_MARGIN} of chance: {', '.join(_chance_runs(evaluations, seeds, preset.variants)) or 'none'}.",
        "",
        "Training losses (first → last logged; pretrain = stage 1, finetune = stage 2): "
        + "; ".join(
            f"{name} {r['first_loss']:.3f} → {r['last_loss']:.3f}"
            for name, r in {**stage1, **finals}.items() if r.get("first_loss") is not None
        ),
        "",
        *(noisy.section_lines() if noisy else []),
        "## The gate",
        "",
        "![gate](gate.png)",
        "",
    ]  # fmt: skip
    gate = evaluations[f"eval/seed{seeds[0]}/{ALIGNGPT}"]["gate"]
    if gate:
        lines += [
            f"Maximum entropy over {len(next(v for k, v in gate.items() if k != 'max_entropy')['mean'])} levels: "
            f"{gate['max_entropy']:.3f}.",
            "",
            "| question type | n | mean weights | entropy of mean | mean entropy | KL from uniform | mean level | "
            "per-sample std |",
            "|---|---|---|---|---|---|---|---|",
            *[f"| {t} | {g['n']} | {' '.join(f'{w:.2f}' for w in g['mean'])} | {g['entropy_of_mean']:.3f} | "
              f"{g['mean_entropy']:.3f} | {g['kl_from_uniform']:.4f} | {g['mean_level']:.3f} | "
              f"{g['per_sample_std']:.4f} |" for t, g in gate.items() if t != "max_entropy"],
        ]  # fmt: skip
    summary = study_summary(seeds=seeds, sweeps=sweeps, evaluations=evaluations, timings=timings, verdict=verdict)
    write_json_atomic(out / SUMMARY_FILE, summary)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
