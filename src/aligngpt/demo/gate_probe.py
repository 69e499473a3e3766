"""Why does the gate stay uniform? Stage-2 reruns of the noisy-tasks study with one gate setting changed at a time.

``python -m aligngpt.demo.gate_probe --study runs/noisy --out runs/noisy/gate-probe`` takes a finished (or at
least stage-1-finished) ``aligngpt demo --study noisy-tasks`` folder and, for each change in :data:`CHANGES`, reruns
AlignGPT's stage 2 from the study's stage-1 model (same data, steps, seed and recipe otherwise) while measuring:

* the gradient norms of the gate, the LLM and the projector every ``GRAD_EVERY`` optimizer steps (after clipping;
  clipping scales every group alike, so their ratio is the one the optimizer saw), and how far the gate's output
  layer moved from its starting weights (relative Frobenius distance);
* afterwards, the phrasing sweep (captions in every phrasing scored against the clean scenes, the gate's weights per
  phrasing: :func:`aligngpt.demo.analysis.caption_phrasing_sweep`);
* the gate's input: the ``num_image_tokens`` products ``s_k = <V_k, mean text embedding>`` that the gate reads, per
  phrasing, and how well they tell the loose phrasing from the clean ones (:func:`gate_input_separation`).

Changes: the study's recipe itself (the reference, measured with the same instruments), the gate's learning rate x10
and x100 (``--gate-lr-scale``; the official recipe trains it at the LLM's LR), and its initialisation scale (the output
layer's weights and bias x10 in a copy of the stage-1 model, so the initial logits spread 10x more), and its input
(``gate_text="prompt"``: in training the mean text embedding leaves the answer out, as at inference). Each finished
change is recorded in ``probe.json`` at once (a rerun skips it); ``probe.md`` and ``gate_gradients.png`` summarise.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aligngpt.demo.gate_measures import (
    gate_input_separation,
    gate_inputs,
    gate_per_phrasing,
    gradient_callback,
    scale_gate_init,
)
from aligngpt.demo.pipeline import stage2_settings
from aligngpt.demo.presets import ALIGNGPT, NUM_LEVELS, get_preset
from aligngpt.demo.steps import Job, StepLog, StepRunner, WorkerPool, set_threads
from aligngpt.fileio import write_json_atomic, write_text_atomic
from aligngpt.toyworld.instructions import CAPTION_PROMPTS

STUDY = "noisy-tasks"
PROBE_FILE = "probe.json"
PROBE_STAGE = "gate probe"
LEVELS_FILE = "levels.json"
START_FILE = "start.json"


@dataclass(frozen=True)
class GateChange:
    """One stage-2 rerun: the study's recipe with ``gate_lr_scale``, ``gate_init_scale`` and ``gate_text`` set."""

    name: str
    description: str
    gate_lr_scale: float = 1.0
    gate_init_scale: float = 1.0  # multiplies the gate's output layer (weights and bias) before stage 2
    gate_text: str = "all"  # the model's gate_text in stage 2: "prompt" leaves the answer out of the gate's input


CHANGES = (
    GateChange("recipe", "the study's recipe (gate at the LLM's learning rate, default initialisation)"),
    GateChange("gate-lr-x10", "gate learning rate x 10", gate_lr_scale=10.0),
    GateChange("gate-lr-x100", "gate learning rate x 100", gate_lr_scale=100.0),
    GateChange("init-x10", "gate output layer initialised x 10", gate_init_scale=10.0),
    GateChange("prompt-input", "gate input from the prompt only in training, as at inference", gate_text="prompt"),
)


def start_gates_job(model_dirs: dict[str, str], world_dir: str, threads: int) -> dict:
    set_threads(threads)
    return {name: gate_per_phrasing(Path(d), Path(world_dir), CAPTION_PROMPTS) for name, d in model_dirs.items()}


def run_start_gates(study_dir: Path, out: Path, seeds: list[int], changes: tuple[GateChange, ...] = CHANGES) -> Path:
    """The gate each probe run started from, per phrasing (``start.json``): the study's stage-1 model, or its copy with
    the gate's output layer scaled."""
    study_dir, out = Path(study_dir), Path(out)
    dirs = {}
    for seed in seeds:
        for change in changes:
            stage1 = study_dir / "runs" / f"seed{seed}" / f"{ALIGNGPT}-stage1"
            if change.gate_init_scale != 1.0:
                stage1 = out / "stage1" / f"seed{seed}-gate-init-x{change.gate_init_scale:g}"
                if not (stage1 / "model.safetensors").is_file():
                    scale_gate_init(study_dir / "runs" / f"seed{seed}" / f"{ALIGNGPT}-stage1", stage1,
                                    change.gate_init_scale)  # fmt: skip
            dirs[f"seed{seed}/{change.name}"] = str(stage1)
    result = start_gates_job(dirs, str(study_dir / "world"), 1)
    path = out / START_FILE
    write_json_atomic(path, result)
    return path


def probe_job(
    settings: dict, change: dict, world_dir: str, loose: tuple[str, ...], batch_size: int, threads: int
) -> dict:
    """One change: stage 2 with gradient logging, then the phrasing sweep and the gate-input separation."""
    set_threads(threads)
    from aligngpt.demo.analysis import caption_phrasing_sweep
    from aligngpt.evaluation.benchmarks.toyworld import ToyWorld
    from aligngpt.training.config import resolve_config
    from aligngpt.training.engine import train

    log = gradient_callback()
    result = train(resolve_config(overrides=settings), callbacks=[log])
    model_dir, world = Path(result.output_dir), Path(world_dir)
    return {
        "change": change,
        "gradients": log.records,
        "last_loss": result.losses[-1] if result.losses else None,
        "phrasings": caption_phrasing_sweep(model_dir, world, CAPTION_PROMPTS, batch_size, ToyWorld.max_new_tokens),
        "gate_input": gate_input_separation(gate_inputs(model_dir, world, CAPTION_PROMPTS), loose),
    }


def run_probe(study_dir: Path, out: Path, seeds: list[int], changes: tuple[GateChange, ...] = CHANGES,
              workers: int = 2, study: str = STUDY, echo=print) -> Path:  # fmt: skip
    """Run every change not yet in ``out/probe.json`` (``workers`` at a time); returns the path of ``probe.md``.

    ``study`` names the study preset the folder ``study_dir`` was run with.
    """
    preset = get_preset(study)
    if not preset.loose_prompts:
        raise ValueError(f"study {study!r} has no loose prompts: the probe compares loose and clean phrasings")
    study_dir, out = Path(study_dir), Path(out)
    world = study_dir / "world"
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in seeds:
        stage1 = study_dir / "runs" / f"seed{seed}" / f"{ALIGNGPT}-stage1"
        if not (stage1 / "model.safetensors").is_file():
            raise FileNotFoundError(f"{stage1}: no finished stage-1 model; run `aligngpt demo --study {study}` first")
        for change in changes:
            settings = stage2_settings(preset, study_dir, world, ALIGNGPT, seed, progress=False)
            settings["output_dir"] = str(out / "runs" / f"seed{seed}" / change.name)
            settings["gate_lr_scale"] = change.gate_lr_scale
            settings["gate_text"] = change.gate_text
            if change.gate_init_scale != 1.0:
                start = out / "stage1" / f"seed{seed}-gate-init-x{change.gate_init_scale:g}"
                if not (start / "model.safetensors").is_file():
                    scale_gate_init(stage1, start, change.gate_init_scale)
                settings["model"] = str(start)
            args = (settings, asdict(change), str(world), preset.loose_prompts, preset.eval_batch_size, 1)
            key = {"settings": settings, "change": asdict(change)}
            jobs.append(Job(f"seed{seed}/{change.name}", key, probe_job, args))
    log = StepLog(out / PROBE_FILE)
    pool = WorkerPool(workers)
    try:
        StepRunner(log, pool, echo, tag="probe").stage(PROBE_STAGE, jobs)
    finally:
        pool.close()
    return write_probe_report(out, log.steps, preset.loose_prompts)


def forced_levels_job(model_dir: str, world_dir: str, prompts: tuple[str, ...], batch_size: int, threads: int) -> dict:
    set_threads(threads)
    from aligngpt.demo.analysis import forced_level_phrasings
    from aligngpt.evaluation.benchmarks.toyworld import ToyWorld

    return forced_level_phrasings(Path(model_dir), Path(world_dir), prompts, NUM_LEVELS, batch_size,
                                  ToyWorld.max_new_tokens)  # fmt: skip


def run_forced_levels(study_dir: Path, out: Path, seeds: list[int], workers: int = 2, study: str = STUDY,
                      echo=print) -> Path:  # fmt: skip
    """The study's AlignGPT stage-2 models, each phrasing, the token forced to every level: ``levels.json`` and
    ``levels.md`` in ``out``. Does the alignment token still steer the captions after stage 2?"""
    preset = get_preset(study)
    study_dir, out = Path(study_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LEVELS_FILE
    done = json.loads(path.read_text()) if path.is_file() else {}
    todo = [s for s in seeds if f"seed{s}" not in done]
    jobs = [(forced_levels_job, (str(study_dir / "runs" / f"seed{s}" / ALIGNGPT), str(study_dir / "world"),
                                 CAPTION_PROMPTS, preset.eval_batch_size, 1)) for s in todo]  # fmt: skip
    pool = WorkerPool(workers)
    try:
        for index, result in pool.run(jobs):
            done[f"seed{todo[index]}"] = result
            write_json_atomic(path, done)
            echo(f"[probe] forced levels, seed{todo[index]}: done")
    finally:
        pool.close()
    lines = [
        "# AlignGPT after stage 2, the alignment token forced to each level",
        "",
        "Caption F1 / CHAIR_i against the clean scenes, per phrasing (loose: "
        + ", ".join(f"«{p}»" for p in preset.loose_prompts)
        + "), `a = E[level]` instead of the gate's mixture.",
        "",
        "| seed | phrasing | " + " | ".join(f"level {k}" for k in range(NUM_LEVELS)) + " |",
        "|---|---|" + "---|" * NUM_LEVELS,
    ]
    for seed_name, result in sorted(done.items()):
        for prompt, by_level in result.items():
            cells = [f"{by_level[str(k)]['f1']:.3f} / {by_level[str(k)]['chair_i']:.3f}" for k in range(NUM_LEVELS)]
            lines.append(f"| {seed_name} | «{prompt}» | " + " | ".join(cells) + " |")
    report = out / "levels.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report


def _summary_rows(done: dict, loose: tuple[str, ...]) -> list[str]:
    rows = [
        "| seed/change | gate ‖g‖ / LLM ‖g‖ (median) | gate output drift at the end | KL loose / clean (nats) | "
        "mean level clean − loose | per-sample std loose | caption F1 clean / loose | gate-input probe acc. | "
        "input Fisher (max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in done.items():
        r = entry["result"]
        grads = r["gradients"]
        ratio = float(np.median([g["gate_grad_norm"] / g["language_model_grad_norm"] for g in grads
                                 if g["language_model_grad_norm"] > 0])) if grads else float("nan")  # fmt: skip
        drift = grads[-1]["gate_output_drift"] if grads else float("nan")
        phr = r["phrasings"]
        clean = [p for p in phr if p not in loose]
        kl_loose = np.mean([phr[p]["gate"]["kl_from_uniform"] for p in loose])
        kl_clean = np.mean([phr[p]["gate"]["kl_from_uniform"] for p in clean])
        shift = np.mean([phr[p]["gate"]["mean_level"] for p in clean]) - np.mean([phr[p]["gate"]["mean_level"]
                                                                                  for p in loose])  # fmt: skip
        spread = np.mean([phr[p]["gate"]["per_sample_std"] for p in loose])
        f1_clean, f1_loose = np.mean([phr[p]["f1"] for p in clean]), np.mean([phr[p]["f1"] for p in loose])
        gi = r["gate_input"]
        rows.append(
            f"| {name} | {ratio:.2e} | {drift:.3f} | {kl_loose:.4f} / {kl_clean:.4f} | {shift:+.4f} | {spread:.4f} | "
            f"{f1_clean:.3f} / {f1_loose:.3f} | {gi['probe_accuracy']:.3f} | {gi['fisher']:.3f} |"
        )
    return rows


def write_probe_report(out: Path, done: dict, loose: tuple[str, ...]) -> Path:
    """``probe.md`` (one row per seed and change) and ``gate_gradients.png`` (gate / LLM gradient norm over steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aligngpt.demo.report import _save

    figure, (ax_ratio, ax_drift) = plt.subplots(1, 2, figsize=(11, 3.8))
    for index, (name, entry) in enumerate(done.items()):
        grads = entry["result"]["gradients"]
        steps = [g["step"] for g in grads]
        ratio = [g["gate_grad_norm"] / max(g["language_model_grad_norm"], 1e-30) for g in grads]
        ax_ratio.semilogy(steps, ratio, color=f"C{index}", label=name)
        ax_drift.plot(steps, [g["gate_output_drift"] for g in grads], color=f"C{index}", label=name)
    ax_ratio.set_title("gate gradient norm / LLM gradient norm")
    ax_drift.set_title("gate output layer: ‖W − W_start‖ / ‖W_start‖")
    for axis in (ax_ratio, ax_drift):
        axis.set_xlabel("stage-2 optimizer step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, out / "gate_gradients.png")
    lines = [
        "# Why the gate stays uniform: one change at a time",
        "",
        "Each row reruns AlignGPT's stage 2 of the noisy-tasks study from its stage-1 model with one gate setting "
        "changed. *KL*: KL(mean gate weights || uniform) on the loose and the clean phrasings; *mean level clean − "
        "loose* > 0 means more weight on low levels for the loose phrasing; *gate-input probe*: held-out accuracy "
        "of a nearest-centroid classifier telling the loose phrasing from the clean ones from the gate's input "
        "(0.5 = chance); *input Fisher*: the best input dimension's squared mean difference over its variance "
        "across images.",
        "",
        *_summary_rows(done, loose),
        "",
        "![gate gradients](gate_gradients.png)",
        "",
    ]
    path = out / "probe.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="the `aligngpt demo --study noisy-tasks` folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--changes", default=",".join(c.name for c in CHANGES),
                        help="comma-separated subset of: " + ", ".join(c.name for c in CHANGES))  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--preset", default=STUDY, help=f"the study preset of --study (default {STUDY})")
    parser.add_argument("--forced-levels", action="store_true",
                        help="instead: caption with the study's AlignGPT stage-2 models, the token forced to each "
                        "level, in every phrasing (levels.md)")  # fmt: skip
    parser.add_argument(
        "--start-gates",
        action="store_true",
        help="instead: the gate weights per phrasing of the model each change starts from (start.json)",
    )
    args = parser.parse_args(argv)
    known = {c.name: c for c in CHANGES}
    wanted = [name.strip() for name in args.changes.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        parser.error(f"unknown changes {unknown}; known: {', '.join(known)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.start_gates:
        print(f"[probe] start gates: {run_start_gates(args.study, args.out, seeds, tuple(known[n] for n in wanted))}")
        return
    if args.forced_levels:
        print(f"[probe] report: {run_forced_levels(args.study, args.out, seeds, args.workers, args.preset)}")
        return
    report = run_probe(args.study, args.out, seeds, tuple(known[n] for n in wanted), args.workers, args.preset)
    print(f"[probe] report: {report}")


if __name__ == "__main__":
    main()
