"""Writing the toy world to disk exactly like a real LLaVA-format dataset.

Layout of ``out_dir``::

    images/{pretrain,finetune,eval}/NNNNNN.png      the image folder is ``out_dir/images``
    pretrain.json       [{"id", "image", "conversations": [human "<image>\\n...", gpt caption],
                          "true_alignment", "noise_kind"}]
    finetune.json       [{"id", "image"?, "conversations", "tasks", "noisy"}]  (text-only samples have no image)
    eval/caption/{questions.jsonl, annotations.jsonl}
    eval/vqa/{questions.jsonl, answers.jsonl}
    eval/pope/{questions.jsonl, labels.jsonl}
    world.json          settings, sizes, file names and summary statistics (written last)

Same settings -> byte-identical files. A finished folder is reused; an interrupted run resumes (images already
written for the same settings are kept; every file is written atomically).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from aligngpt.toyworld._io import atomic_save_png, atomic_write_json, atomic_write_jsonl
from aligngpt.toyworld.evalsets import build_eval_sets
from aligngpt.toyworld.instructions import InstructionConfig
from aligngpt.toyworld.samples import IMAGE_TOKEN, conversation, finetune_sample, pretrain_sample, scene_and_image
from aligngpt.toyworld.text import PretrainNoiseConfig
from aligngpt.toyworld.world import WorldConfig

FORMAT_VERSION = 1
IMAGE_FOLDER = "images"
WORLD_FILE = "world.json"
PARTIAL_FILE = ".world.partial.json"
ALIGNMENT_DECIMALS = 4
EVAL_FILES = {
    "caption": ("eval/caption/questions.jsonl", "eval/caption/annotations.jsonl"),
    "vqa": ("eval/vqa/questions.jsonl", "eval/vqa/answers.jsonl"),
    "pope": ("eval/pope/questions.jsonl", "eval/pope/labels.jsonl"),
}


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines the written files."""

    seed: int = 0
    n_pretrain: int = 20000
    n_finetune: int = 20000
    n_eval: int = 500
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain_noise: PretrainNoiseConfig = field(default_factory=PretrainNoiseConfig)
    instructions: InstructionConfig = field(default_factory=InstructionConfig)

    def __post_init__(self) -> None:
        for name in ("n_pretrain", "n_finetune", "n_eval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def settings(self) -> dict:
        """JSON-normalised settings (tuples become lists), used to recognise a finished folder."""
        return json.loads(json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}))


def _image_path(split: str, index: int) -> str:
    return f"{split}/{index:06d}.png"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _save_image(out_dir: Path, rel: str, image: Image.Image, resume: bool) -> None:
    target = out_dir / IMAGE_FOLDER / rel
    if not (resume and target.exists()):
        atomic_save_png(target, image)


def _pretrain_records(out_dir: Path, cfg: DatasetConfig, resume: bool, progress: bool) -> list[dict]:
    records = []
    for i in tqdm(range(cfg.n_pretrain), desc="toyworld pretrain", disable=not progress):
        sample = pretrain_sample(cfg.seed, i, cfg.world, cfg.pretrain_noise)
        rel = _image_path("pretrain", i)
        _save_image(out_dir, rel, sample.image, resume)
        records.append(
            {
                "id": f"pretrain-{i:06d}",
                "image": rel,
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_TOKEN}\n{sample.prompt}"},
                    {"from": "gpt", "value": sample.caption.text},
                ],
                "true_alignment": round(sample.caption.true_alignment, ALIGNMENT_DECIMALS),
                "noise_kind": sample.caption.kind,
            }
        )
    return records


def _finetune_records(out_dir: Path, cfg: DatasetConfig, resume: bool, progress: bool) -> list[dict]:
    records = []
    for i in tqdm(range(cfg.n_finetune), desc="toyworld finetune", disable=not progress):
        sample = finetune_sample(cfg.seed, i, cfg.world, cfg.instructions)
        record: dict = {"id": f"finetune-{i:06d}"}
        if sample.image is not None:
            record["image"] = _image_path("finetune", i)
            _save_image(out_dir, record["image"], sample.image, resume)
        record["conversations"] = conversation(sample.turns, with_image=sample.image is not None)
        record["tasks"] = [qa.task for qa in sample.turns]
        record["noisy"] = [qa.noisy for qa in sample.turns]
        records.append(record)
    return records


def _write_eval(out_dir: Path, cfg: DatasetConfig, resume: bool, progress: bool) -> dict[str, int]:
    scenes = []
    for i in tqdm(range(cfg.n_eval), desc="toyworld eval", disable=not progress):
        scene, image = scene_and_image(cfg.seed, "eval", i, cfg.world)
        rel = _image_path("eval", i)
        _save_image(out_dir, rel, image, resume)
        scenes.append((rel, scene))
    sets = build_eval_sets(scenes, cfg.seed)
    pairs = {
        "caption": (sets.caption_questions, sets.caption_annotations),
        "vqa": (sets.vqa_questions, sets.vqa_answers),
        "pope": (sets.pope_questions, sets.pope_labels),
    }
    for name, (questions, truth) in pairs.items():
        question_file, truth_file = EVAL_FILES[name]
        atomic_write_jsonl(out_dir / question_file, questions)
        atomic_write_jsonl(out_dir / truth_file, truth)
    return {name: len(questions) for name, (questions, _) in pairs.items()}


def _stats(pretrain: list[dict], finetune: list[dict]) -> dict:
    kinds = Counter(r["noise_kind"] for r in pretrain)
    tasks = Counter(t for r in finetune for t in r["tasks"])
    noisy = sum(n for r in finetune for n in r["noisy"])
    turns = sum(len(r["tasks"]) for r in finetune)
    mean_alignment = sum(r["true_alignment"] for r in pretrain) / len(pretrain) if pretrain else 0.0
    return {
        "pretrain_noise_kinds": dict(sorted(kinds.items())),
        "pretrain_mean_true_alignment": round(mean_alignment, ALIGNMENT_DECIMALS),
        "finetune_tasks": dict(sorted(tasks.items())),
        "finetune_turns": turns,
        "finetune_noisy_turns": noisy,
        "finetune_text_only": sum("image" not in r for r in finetune),
    }


def write_dataset(out_dir: str | Path, config: DatasetConfig | None = None, progress: bool = True, **overrides) -> Path:
    """Write the toy-world dataset to ``out_dir``; returns the path of ``world.json``.

    ``overrides`` replace fields of ``config`` (e.g. ``seed=3, n_pretrain=1000``).
    """
    cfg = replace(config or DatasetConfig(), **overrides)
    out_dir = Path(out_dir)
    settings = cfg.settings()
    world_file = out_dir / WORLD_FILE
    finished = _read_json(world_file)
    if finished is not None and finished.get("settings") == settings:
        return world_file
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = _read_json(out_dir / PARTIAL_FILE)
    resume = partial is not None and partial.get("settings") == settings
    world_file.unlink(missing_ok=True)
    atomic_write_json(out_dir / PARTIAL_FILE, {"settings": settings})

    pretrain = _pretrain_records(out_dir, cfg, resume, progress)
    atomic_write_json(out_dir / "pretrain.json", pretrain)
    finetune = _finetune_records(out_dir, cfg, resume, progress)
    atomic_write_json(out_dir / "finetune.json", finetune)
    eval_counts = _write_eval(out_dir, cfg, resume, progress)

    atomic_write_json(
        world_file,
        {
            "settings": settings,
            "image_folder": IMAGE_FOLDER,
            "files": {
                "pretrain": "pretrain.json",
                "finetune": "finetune.json",
                "eval": {name: {"questions": q, "truth": t} for name, (q, t) in EVAL_FILES.items()},
            },
            "counts": {"pretrain": len(pretrain), "finetune": len(finetune), "eval_questions": eval_counts},
            "stats": _stats(pretrain, finetune),
        },
    )
    (out_dir / PARTIAL_FILE).unlink(missing_ok=True)
    return world_file
