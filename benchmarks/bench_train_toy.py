"""The real training engine (``aligngpt.training.train``: HF Trainer, dataset, collator, sampler, optimizer) on the
toy world's models and data, timed per optimizer step: a baseline setting against a changed one, in one process.

    python benchmarks/bench_train.py --preset toy [--change per_device_train_batch_size=32] [--steps 12]
        [--repeats 3] [--stage pretrain|finetune|both] [--profile]

Both settings run ``repeats`` times each, interleaved (A B A B ...), each run ``steps`` optimizer steps of the
demo's batch. A run's step time is the median of its steps after the first ``WARMUP_STEPS`` (model building, feature
caching and the first steps' allocations excluded), in CPU seconds of this process unless ``--wall``: other jobs on a
shared machine disturb CPU time far less than wall time, and with one torch thread the two agree on an idle machine.
The printed ratio is median(changed) / median(base): below 1 the change is faster. ``--profile`` instead runs the
setting once under ``torch.profiler`` and prints where a step's time goes, by operator (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import TrainerCallback

WARMUP_STEPS = 3
N_PRETRAIN, N_FINETUNE = 1024, 1024


class StepClock(TrainerCallback):
    """Time of every optimizer step (from one step's end to the next): CPU seconds of this process by default,
    which other jobs on a shared machine disturb far less than wall time (with one torch thread they are the same on
    an idle machine); ``wall=True`` measures wall time."""

    def __init__(self, wall: bool = False) -> None:
        self.clock = time.perf_counter if wall else time.process_time
        self.times: list[float] = []
        self._last: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            self._last = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.times.append(now - self._last)
        self._last = now


def prepare(root: Path) -> dict[str, Path]:
    """A small toy world, the shipped demo zoo and CLIP levels: the inputs of both stages."""
    from aligngpt.scoring.run import ScoreConfig, score_dataset
    from aligngpt.toyworld.dataset import write_dataset
    from aligngpt.toyworld.zoo.build import build_zoo

    world, zoo, scored = root / "world", root / "zoo", root / "scored" / "pretrain.json"
    write_dataset(world, seed=0, n_pretrain=N_PRETRAIN, n_finetune=N_FINETUNE, n_eval=1, progress=False)
    build_zoo(zoo, seed=0, size="demo", shipped=True, progress=False)
    score_dataset(ScoreConfig(data=world / "pretrain.json", images=world / "images", clip=str(zoo / "clip"),
                              out=scored, workers=0, progress=False))  # fmt: skip
    return {"root": root, "world": world, "zoo": zoo, "scored": scored}


def stage_settings(paths: dict[str, Path], stage: str, steps: int, changes: dict) -> dict:
    """The demo's settings of ``stage`` (``aligngpt.demo.pipeline``), with ``changes`` applied."""
    from aligngpt.demo.pipeline import stage1_settings, stage2_settings
    from aligngpt.demo.presets import get_preset

    preset = replace(get_preset("default"), pretrain_steps=steps, finetune_steps=steps)
    root = paths["root"]
    if stage == "pretrain":
        settings = stage1_settings(preset, root, paths["world"], paths["zoo"], paths["scored"], "aligngpt", 0, False)
    else:
        settings = stage2_settings(preset, root, paths["world"], "aligngpt", 0, False)
    return {**settings, "logging_steps": 10**6, **changes}


WALL = False  # set by --wall


class ProfilerSteps(TrainerCallback):
    """Advances a ``torch.profiler`` schedule at every optimizer step."""

    def __init__(self, profiler) -> None:
        self.profiler = profiler

    def on_step_end(self, args, state, control, **kwargs):
        self.profiler.step()


def timed_run(settings: dict, output_dir: Path, extra_callbacks: tuple = ()) -> list[float]:
    """Train with ``settings`` into ``output_dir``; returns the step times (seconds) after the warm-up steps."""
    from aligngpt.training import engine, trainer
    from aligngpt.training.config import resolve_config

    clock = StepClock(wall=WALL)
    original = trainer.AlignGPTTrainer

    class ClockedTrainer(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for callback in (clock, *extra_callbacks):
                self.add_callback(callback)

    trainer.AlignGPTTrainer = ClockedTrainer  # train() imports it at call time
    try:
        engine.train(resolve_config(overrides={**settings, "output_dir": str(output_dir)}))
    finally:
        trainer.AlignGPTTrainer = original
    return clock.times[WARMUP_STEPS:]


def parse_changes(items: list[str]) -> dict:
    """``name=value`` pairs; values are read as JSON where they parse (numbers, booleans), else as strings."""
    changes = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            changes[name] = value
    return changes


def compare(paths: dict[str, Path], stage: str, steps: int, repeats: int, changes: dict) -> None:
    base_times, new_times = [], []
    for repeat in range(repeats):
        for label, times in (("base", base_times), ("new", new_times)):
            settings = stage_settings(paths, stage, steps, changes if label == "new" else {})
            run = timed_run(settings, paths["root"] / "runs" / f"{stage}-{label}-{repeat}")
            times.append(statistics.median(run))
    base, new = statistics.median(base_times), statistics.median(new_times)
    runs = f"base {' '.join(f'{t * 1e3:.0f}' for t in base_times)}, new {' '.join(f'{t * 1e3:.0f}' for t in new_times)}"
    print(f"{stage:<9} base {base * 1e3:7.1f} ms/step  new {new * 1e3:7.1f} ms/step  ratio new/base {new / base:.3f}  "
          f"(medians of {repeats} interleaved runs x {steps - WARMUP_STEPS} steps; runs: {runs})")  # fmt: skip


# Operator name -> category of the breakdown (first match wins); everything else counts as other tensor ops.
PROFILE_CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
    ("attention (SDPA kernels)", ("scaled_dot_product",)),
    ("optimizer (fused AdamW) and gradient clipping", ("Optimizer.", "_fused_adam", "foreach", "clip_grad",
                                                       "linalg_vector_norm")),
    ("Python between operators (model code, Trainer loop)", ("ProfilerStep",)),
    ("autograd engine bookkeeping", ("autograd::engine",)),
    ("data: dataset, collator (Python)", ("enumerate(DataLoader)",)),
    ("elementwise: mul/add/silu/rsqrt/pow/mean...", ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt",
                                                   "aten::pow", "aten::mean", "aten::neg", "aten::div", "aten::gelu",
                                                   "aten::sub", "aten::exp", "aten::cos", "aten::sin")),
    ("copies, casts, indexing, cat", ("aten::copy_", "aten::to", "aten::cat", "aten::index", "aten::gather",
                                      "aten::scatter", "aten::where", "aten::slice", "aten::fill_", "aten::zero_")),
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy")),
)  # fmt: skip


def _category(name: str) -> str:
    for category, patterns in PROFILE_CATEGORIES:
        if any(pattern in name for pattern in patterns):
            return category
    return "other tensor ops"


def profile(paths: dict[str, Path], stage: str, steps: int, changes: dict) -> None:
    """Profile ``steps`` optimizer steps after the warm-up: self CPU time by category and by operator; what no
    operator accounts for is Python between the operators (model code, Trainer loop, callbacks)."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    settings = stage_settings(paths, stage, WARMUP_STEPS + 1 + steps, changes)
    timed_run(settings, paths["root"] / "runs" / f"{stage}-warm")  # imports and caches outside the profile
    with torch_profile(activities=[ProfilerActivity.CPU],
                       schedule=schedule(wait=WARMUP_STEPS, warmup=1, active=steps, repeat=1)) as prof:  # fmt: skip
        times = timed_run(settings, paths["root"] / "runs" / f"{stage}-profiled", (ProfilerSteps(prof),))
    step_seconds = sum(times[1:])  # the profiled steps: after the warm-up steps and the profiler's own warm-up
    events = prof.key_averages()
    by_category: dict[str, float] = {}
    for event in events:
        by_category[_category(event.key)] = by_category.get(_category(event.key), 0.0) + event.self_cpu_time_total
    total = sum(by_category.values())  # the profiler's own (wall) clock; ProfilerStep* holds the Python in between
    print(f"{stage}: {steps} steps, {step_seconds / steps * 1e3:.1f} ms CPU per step under the profiler "
          f"({total / 1e3 / steps:.1f} ms by the profiler's clock)")  # fmt: skip
    for category, micros in sorted(by_category.items(), key=lambda item: -item[1]):
        print(f"  {category:<55} {micros / 1e3 / steps:7.1f} ms/step  {micros / total:6.1%}")
    print("  top operators:")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
        print(f"    {event.key[:60]:<60} {event.self_cpu_time_total / 1e3 / steps:7.2f} ms/step  calls/step "
              f"{event.count / steps:.0f}  [{_category(event.key)}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--change", action="append", default=[], help="name=value of a train setting (repeatable)")
    parser.add_argument("--stage", default="both", choices=["pretrain", "finetune", "both"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--wall", action="store_true", help="time wall seconds instead of CPU seconds")
    parser.add_argument("--workdir", default=None, help="keep the world, zoo and runs here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global WALL
    WALL = args.wall
    changes = parse_changes(args.change)
    stages = ["pretrain", "finetune"] if args.stage == "both" else [args.stage]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        paths = prepare(root)
        if "finetune" in stages:  # stage 2 starts from a stage-1 folder
            timed_run({**stage_settings(paths, "pretrain", 1, {}), "max_steps": 1},
                      root / "runs" / "seed0" / "aligngpt-stage1")  # fmt: skip
        print(f"threads {torch.get_num_threads()}, change {changes or '(none)'}, {'wall' if WALL else 'CPU'} time")
        for stage in stages:
            if args.profile:
                profile(paths, stage, args.steps, changes)
            else:
                compare(paths, stage, args.steps, args.repeats, changes)


if __name__ == "__main__":
    main()
