"""``aligngpt demo``: world -> zoo -> score -> pretrain -> finetune -> eval, for AlignGPT and the LLaVA-1.5 baseline.

This module is the study: which steps and jobs run, with which settings. Every step goes through the public API that
real-scale runs use (``score_dataset``, ``train``, ``run_evaluation``, ``aligngpt.load``); nothing here is a demo-only
code path. :mod:`aligngpt.demo.steps` runs them: finished steps are recorded in ``steps.json`` with their settings and
skipped on a rerun; independent trainings run two at a time in worker processes, one torch thread each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from aligngpt.demo.presets import ALIGNGPT, NUM_LEVELS, STAGE1_SOURCE, VARIANT_MODES, DemoPreset, get_preset
from aligngpt.demo.progress import DemoClock, PlannedStage
from aligngpt.demo.steps import STEPS_FILE, Job, StepLog, StepRunner, WorkerPool, set_threads

STAGE1, SWEEP, STAGE2, EVALUATION = "stage 1 (pretrain)", "stage-1 level sweep", "stage 2 (finetune)", "evaluation"
PHRASINGS = "caption phrasing sweep"  # studies with loose prompts: captions in every phrasing, with the gate
# The zoo LLaMA learned Vicuna-v1 turns without the system prompt; it also keeps the sequences short.
CHAT_TEMPLATE = "vicuna_v1_nosys"


def train_job(overrides: dict, threads: int) -> dict:
    """One ``aligngpt train`` run (in a worker process); returns a JSON-able summary."""
    set_threads(threads)
    from aligngpt.training.config import resolve_config
    from aligngpt.training.engine import train

    result = train(resolve_config(overrides=overrides))
    losses = result.losses
    return {
        "output_dir": str(result.output_dir),
        "steps": result.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def eval_job(model_dir: str, world_dir: str, out_dir: str, batch_size: int, threads: int) -> dict:
    """The toy benchmark through ``aligngpt eval``'s runner, plus the gate's weights by question type."""
    set_threads(threads)
    from aligngpt.demo.analysis import gate_statistics
    from aligngpt.evaluation.runner import run_evaluation

    metrics = run_evaluation(model_dir, ["toyworld"], world_dir, out_dir, batch_size=batch_size)["toyworld"]
    gate = gate_statistics(Path(out_dir) / "toyworld" / "answers.jsonl", Path(world_dir))
    return {"metrics": metrics, "gate": gate}


def level_sweep_job(
    model_dir: str, world_dir: str, levels: int | None, batch_size: int, tokens: int, threads: int
) -> dict:
    set_threads(threads)
    from aligngpt.demo.analysis import caption_level_sweep

    return caption_level_sweep(Path(model_dir), Path(world_dir), levels, batch_size, tokens)


def phrasing_sweep_job(model_dir: str, world_dir: str, prompts: tuple[str, ...], batch_size: int, threads: int) -> dict:
    set_threads(threads)
    from aligngpt.demo.analysis import caption_phrasing_sweep
    from aligngpt.evaluation.benchmarks.toyworld import ToyWorld

    return caption_phrasing_sweep(Path(model_dir), Path(world_dir), prompts, batch_size, ToyWorld.max_new_tokens)


def _common_train_settings(preset: DemoPreset, world: Path, seed: int, progress: bool) -> dict:
    return {
        "image_root": str(world / "images"),
        "seed": seed,
        # the sampler that sorts a step's samples into length-homogeneous accumulation rounds (all stages)
        "group_by_modality_length": True,
        "cache_vision_features": True,
        "cache_samples": True,  # 4000-5000 records seen for several epochs: tokenise each once
        "precision": "fp32",
        "gradient_checkpointing": False,
        "save_steps": 10**9,
        "logging_steps": 25,
        "torch_threads": 1,
        "dataloader_num_workers": 0,
        "length_group_steps": preset.length_group_steps,
        "progress": progress,
        "use_cpu": True,
    }


def stage1_settings(preset: DemoPreset, out: Path, world: Path, zoo: Path, scored: Path, variant: str, seed: int,
                    progress: bool) -> dict:  # fmt: skip
    return {
        **_common_train_settings(preset, world, seed, progress),
        "recipe": "pretrain",
        "global_batch_size": preset.pretrain_batch_size,
        "per_device_train_batch_size": preset.pretrain_micro_batch_size,
        "data": str(scored),
        "output_dir": str(out / "runs" / f"seed{seed}" / f"{variant}-stage1"),
        # one feature cache per data file, shared by every run (its fingerprint covers the tower and pooling)
        "vision_feature_cache": str(out / "features" / "pretrain.safetensors"),
        "vision_tower": str(zoo / "clip"),
        "llm": str(zoo / "llama"),
        "alignment_mode": VARIANT_MODES[variant],
        "num_alignment_levels": NUM_LEVELS,
        "image_pool_stride": preset.image_pool_stride,
        "chat_template_name": CHAT_TEMPLATE,
        "learning_rate": preset.pretrain_lr,
        "max_steps": preset.pretrain_steps,
        "train_llm_lr_scale": preset.llm_lr_scale,
    }


def stage2_settings(preset: DemoPreset, out: Path, world: Path, variant: str, seed: int, progress: bool) -> dict:
    start = STAGE1_SOURCE[variant]
    return {
        **_common_train_settings(preset, world, seed, progress),
        "recipe": "finetune",
        "global_batch_size": preset.finetune_batch_size,
        "per_device_train_batch_size": preset.finetune_micro_batch_size,
        "data": str(world / "finetune.json"),
        "output_dir": str(out / "runs" / f"seed{seed}" / variant),
        "vision_feature_cache": str(out / "features" / "finetune.safetensors"),
        "model": str(out / "runs" / f"seed{seed}" / f"{start}-stage1"),
        "alignment_mode": VARIANT_MODES[variant],
        "learning_rate": preset.finetune_lr,
        "max_steps": preset.finetune_steps,
    }


def run_demo(
    out: str | Path = "runs/demo",
    size: str = "default",
    seeds: int | None = None,
    full: bool = False,
    workers: int = 2,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    variants: tuple[str, ...] | None = None,
    rebuild_zoo: bool = False,
    study: str | None = None,
) -> Path:
    """Run the whole toy-world study under ``out`` and return the path of ``report.md``.

    ``study`` names a study preset (``presets.STUDIES``, e.g. ``noisy-tasks``) instead of a size.
    ``variants`` overrides the size's list (AlignGPT is always run: the ablations and the report start from it).
    The model zoo is copied from the package where it ships one for the preset's zoo (the output of the same
    ``build_zoo``); ``rebuild_zoo`` trains it here instead.
    """
    from aligngpt.demo.analysis import clip_score_quality
    from aligngpt.demo.report import write_report
    from aligngpt.scoring.run import ScoreConfig, score_dataset
    from aligngpt.toyworld.dataset import DatasetConfig, write_dataset
    from aligngpt.toyworld.instructions import CAPTION_PROMPTS, InstructionConfig
    from aligngpt.toyworld.zoo.build import build_zoo

    if study is not None and full:
        raise ValueError("--study and --full are two presets: choose one")
    size = study or ("full" if full else size)
    preset = get_preset(size)
    if variants is not None:
        unknown = sorted(set(variants) - set(VARIANT_MODES))
        if unknown:
            raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANT_MODES)}")
        preset = replace(preset, variants=(ALIGNGPT, *[v for v in dict.fromkeys(variants) if v != ALIGNGPT]))
    seed_list = list(range(seeds or preset.seeds))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = StepLog(out / STEPS_FILE)
    clock = DemoClock(echo, workers)
    pool = WorkerPool(workers)
    runner = StepRunner(log, pool, echo)
    world, zoo, scored = out / "world", out / "zoo", out / "scored" / "pretrain.json"

    weights = {"task_weights": preset.instruction_weights} if preset.instruction_weights else {}
    instructions = InstructionConfig(noise_fraction=preset.noise_fraction, noisy_tasks=preset.noisy_tasks,
                                     loose_prompts=preset.loose_prompts, loose_fraction=preset.loose_fraction,
                                     **weights)  # fmt: skip
    dataset = DatasetConfig(seed=0, n_pretrain=preset.n_pretrain, n_finetune=preset.n_finetune, n_eval=preset.n_eval,
                            instructions=instructions)  # fmt: skip
    runner.step("world", dataset.settings(), lambda: str(write_dataset(world, dataset, progress=progress)))
    clock.finished("world")
    zoo_record = runner.step(
        "zoo", {"size": preset.zoo_size, "seed": 0, "rebuilt": rebuild_zoo},
        lambda: build_zoo(zoo, seed=0, size=preset.zoo_size, threads=workers, progress=progress,
                          shipped=not rebuild_zoo),
    )  # fmt: skip
    zoo_weights = zoo_record["fingerprint"]  # every step below depends on the zoo's weights
    clock.finished("zoo")
    score_config = ScoreConfig(
        data=world / "pretrain.json", images=world / "images", clip=str(zoo / "clip"), out=scored,
        num_levels=NUM_LEVELS, batch_size=256, workers=1, progress=progress,
    )  # fmt: skip
    runner.step("score", {"data": dataset.settings(), "zoo": zoo_weights}, lambda: str(score_dataset(score_config).out))
    clip_quality = runner.step("clip-quality", {"scored": str(scored), "data": dataset.settings()},
                               lambda: clip_score_quality(scored, NUM_LEVELS))  # fmt: skip
    clock.finished("score")

    def study_job(name: str, settings: dict, fn: Callable, args: tuple) -> Job:
        """A training-side job: its result depends on its settings, the preset and the zoo's weights."""
        return Job(name, {"settings": settings, "preset": _job_preset(preset), "zoo": zoo_weights}, fn, args)

    # Every stage's jobs are built before the first runs, so the progress estimate knows which will be reused.
    stage1_variants = sorted({STAGE1_SOURCE[variant] for variant in preset.variants}, key=list(VARIANT_MODES).index)
    pretrain_jobs = []  # every seed's jobs in one pool, so no worker waits for a seed's last job
    for seed in seed_list:
        for variant in stage1_variants:
            settings = stage1_settings(preset, out, world, zoo, scored, variant, seed, progress)
            pretrain_jobs.append(study_job(f"pretrain/seed{seed}/{variant}", settings, train_job, (settings, 1)))

    sweep_jobs = []
    for seed in seed_list:
        for variant in stage1_variants:
            levels = NUM_LEVELS if variant == ALIGNGPT else None
            model_dir = str(out / "runs" / f"seed{seed}" / f"{variant}-stage1")
            args = (model_dir, str(world), levels, preset.eval_batch_size, preset.caption_tokens, 1)
            sweep_jobs.append(
                study_job(
                    f"level-sweep/seed{seed}/{variant}", {"model": model_dir, "levels": levels}, level_sweep_job, args
                )
            )

    finetune_jobs = []
    for seed in seed_list:
        for variant in preset.variants:
            settings = stage2_settings(preset, out, world, variant, seed, progress)
            finetune_jobs.append(study_job(f"finetune/seed{seed}/{variant}", settings, train_job, (settings, 1)))

    eval_jobs = []
    for seed in seed_list:
        for variant in preset.variants:
            model_dir = str(out / "runs" / f"seed{seed}" / variant)
            eval_out = str(out / "eval" / f"seed{seed}" / variant)
            args = (model_dir, str(world), eval_out, preset.eval_batch_size, 1)
            eval_jobs.append(study_job(f"eval/seed{seed}/{variant}", {"model": model_dir}, eval_job, args))

    phrasing_jobs = []
    if preset.loose_prompts:
        for seed in seed_list:
            for variant in preset.variants:
                model_dir = str(out / "runs" / f"seed{seed}" / variant)
                args = (model_dir, str(world), CAPTION_PROMPTS, preset.eval_batch_size, 1)
                settings = {"model": model_dir, "prompts": CAPTION_PROMPTS}
                phrasing_jobs.append(study_job(f"phrasings/seed{seed}/{variant}", settings, phrasing_sweep_job, args))

    stages = {
        STAGE1: (pretrain_jobs, preset.pretrain_steps),
        SWEEP: (sweep_jobs, 0),
        STAGE2: (finetune_jobs, preset.finetune_steps),
        EVALUATION: (eval_jobs, 0),
        **({PHRASINGS: (phrasing_jobs, 0)} if phrasing_jobs else {}),
    }
    clock.plan([PlannedStage(name, runner.pending(jobs), steps) for name, (jobs, steps) in stages.items()])
    try:
        stage1 = runner.stage(STAGE1, pretrain_jobs)
        # stage 1's recorded wall time (this run's, or the earlier run's for reused jobs) prices the later steps
        clock.measure(sum(log.steps[job.name]["seconds"] for job in pretrain_jobs), len(pretrain_jobs),
                      preset.pretrain_steps)  # fmt: skip
        clock.finished(STAGE1)
        sweeps = runner.stage(SWEEP, sweep_jobs)
        clock.finished(SWEEP)
        finals = runner.stage(STAGE2, finetune_jobs)
        clock.finished(STAGE2)
        evaluations = runner.stage(EVALUATION, eval_jobs)
        clock.finished(EVALUATION)
        phrasings = runner.stage(PHRASINGS, phrasing_jobs) if phrasing_jobs else {}
        if phrasing_jobs:
            clock.finished(PHRASINGS)
    finally:
        pool.close()

    report = write_report(
        out, preset=preset, size=size, seeds=seed_list, zoo=zoo_record, clip_quality=clip_quality, scored=scored,
        stage1=stage1, sweeps=sweeps, finals=finals, evaluations=evaluations, phrasings=phrasings,
        timings=_timings(log, {name: [job.name for job in jobs] for name, (jobs, _) in stages.items()}),
    )  # fmt: skip
    echo(f"[demo] report: {report}")
    echo(f"[demo] chat with the result: aligngpt chat --model {out / 'runs' / 'seed0' / ALIGNGPT} "
         f"--image {world / 'images' / 'eval' / '000000.png'}")  # fmt: skip
    return report


def _job_preset(preset: DemoPreset) -> dict:
    """The preset fields a job's result depends on: not which seeds or other variants run beside it."""
    return {key: value for key, value in asdict(preset).items() if key not in ("seeds", "variants")}


def _timings(log: StepLog, stage_jobs: dict[str, list[str]]) -> dict[str, float]:
    """Wall seconds per stage from ``steps.json``, counting only this run's jobs (not other seeds' or variants')."""
    return {
        "world": log.steps["world"]["seconds"],
        "zoo": log.steps["zoo"]["seconds"],
        "score": log.steps["score"]["seconds"] + log.steps["clip-quality"]["seconds"],
        **{name: sum(log.steps[job]["seconds"] for job in jobs) for name, jobs in stage_jobs.items()},
    }
