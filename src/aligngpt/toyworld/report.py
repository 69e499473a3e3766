"""``report.md`` and its PNG plots for the toy-world study. Every number comes from the run's own results."""

from __future__ import annotations

import statistics
from pathlib import Path

from aligngpt.toyworld._io import atomic_write_text
from aligngpt.toyworld.presets import ALIGNGPT, BASELINE, PREFIX, STAGE1_SOURCE, VARIANT_MODES, DemoPreset

POPE_SPLITS = ("random", "popular", "adversarial")
VQA_TYPES = ("count_all", "count_shape", "colour", "shape", "position")
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
    "caption F1": lambda s: s["caption"]["f1"],
    "caption CHAIR_i (lower is better)": lambda s: s["caption"]["chair_i"],
    "VQA accuracy": lambda s: s["vqa"]["accuracy"],
    "POPE accuracy (mean of splits)": lambda s: statistics.mean(s["pope"][p]["accuracy"] for p in POPE_SPLITS),
}


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
        **{f"VQA {t}": (lambda s, t=t: s["vqa"]["by_category"].get(t)) for t in VQA_TYPES},
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


def _plot_levels(path: Path, sweeps: dict, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.4))
    for seed in seeds:
        sweep = sweeps[f"level-sweep/seed{seed}/{ALIGNGPT}"]
        levels = sorted(int(k) for k in sweep)
        axis.plot(
            levels, [sweep[str(k)]["f1"] for k in levels], "o-", color="tab:blue", label="F1" if seed == 0 else None
        )
        axis.plot(levels, [sweep[str(k)]["chair_i"] for k in levels], "s--", color="tab:red",
                  label="CHAIR_i" if seed == 0 else None)  # fmt: skip
        baseline = sweeps[f"level-sweep/seed{seed}/{BASELINE}"]["none"]
        axis.axhline(baseline["f1"], color="tab:blue", alpha=0.4, lw=1, label="baseline F1" if seed == 0 else None)
    axis.set_xlabel("forced alignment level (0 = least aligned captions)")
    axis.set_ylabel("caption score")
    axis.set_title("Stage 1: captions under a forced alignment level")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_gate(path: Path, evaluations: dict, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    gate = evaluations[f"eval/seed{seeds[0]}/{ALIGNGPT}"]["gate"]
    tasks = [t for t in gate if t != "max_entropy"]
    if not tasks:
        return
    matrix = np.array([gate[t]["mean"] for t in tasks])
    figure, axis = plt.subplots(figsize=(5.5, 0.45 * len(tasks) + 1.2))
    image = axis.imshow(matrix, aspect="auto", cmap="viridis")
    axis.set_yticks(range(len(tasks)), tasks)
    axis.set_xticks(range(matrix.shape[1]), [f"E[{i}]" for i in range(matrix.shape[1])])
    axis.set_title("Stage 2: mean gate weight per question type")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    out: Path, *, preset: DemoPreset, seeds: list[int], zoo: dict, clip_quality: dict, stage1: dict, sweeps: dict,
    finals: dict, evaluations: dict, timings: dict[str, float],
) -> Path:  # fmt: skip
    """Write ``out/report.md`` with ``levels.png`` and ``gate.png``; returns the report path."""
    out = Path(out)
    _plot_levels(out / "levels.png", sweeps, seeds)
    _plot_gate(out / "gate.png", evaluations, seeds)
    lines = [
        "# AlignGPT toy-world study",
        "",
        f"Seeds: {len(seeds)}; variants: {', '.join(preset.variants)}; stage 1 {preset.pretrain_steps} steps, stage 2 "
        f"{preset.finetune_steps} steps, batch {preset.batch_size}; {preset.n_pretrain} pre-training captions, "
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
        *[f"{k}: {v}" for k, v in sorted((zoo.get("quality") or zoo).items()) if not isinstance(v, dict | list)],
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
            "| question type | n | mean weights | entropy of mean | mean entropy | per-sample std |",
            "|---|---|---|---|---|---|",
            *[f"| {t} | {g['n']} | {' '.join(f'{w:.2f}' for w in g['mean'])} | {g['entropy_of_mean']:.3f} | "
              f"{g['mean_entropy']:.3f} | {g['per_sample_std']:.3f} |" for t, g in gate.items() if t != "max_entropy"],
        ]  # fmt: skip
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
