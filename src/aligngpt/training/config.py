"""``TrainConfig``: every setting of ``aligngpt train``; defaults from the recipe, then a YAML file, then flags.

Fields left ``None`` take the recipe's official default when the config is resolved (:func:`resolve_config`). The
resolved config is written next to the outputs (``train_config.yaml``) so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from aligngpt.choices import GATE_TEXT_SPANS, IMAGE_ASPECT_RATIOS
from aligngpt.data.constants import ON_BAD_RECORD
from aligngpt.training.recipes import get_recipe

RESOLVED_CONFIG_NAME = "train_config.yaml"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# Settings whose default comes from the recipe (``RecipeDefaults``) when left unset.
RECIPE_DEFAULTED = (
    "learning_rate", "lr_scheduler_type", "warmup_ratio", "weight_decay", "num_train_epochs", "global_batch_size",
    "per_device_train_batch_size", "image_aspect_ratio", "group_by_modality_length", "model_max_length",
)  # fmt: skip
REQUIRED_SETTINGS = ("data", "output_dir")  # checked by validate_config; the model is named one of two ways


def _opt(help_text: str, default: Any = None, group: str = "training") -> Any:
    return field(default=default, metadata={"help": help_text, "group": group})


@dataclass
class TrainConfig:
    """All settings of one training run (see ``docs/training.md``)."""

    recipe: str = _opt("pretrain, finetune, finetune-lora or finetune-qlora.", "pretrain", "run")
    data: str | None = _opt("LLaVA-format JSON / JSONL training data.", None, "run")
    image_root: str | None = _opt("Folder the records' 'image' paths are relative to.", None, "run")
    output_dir: str | None = _opt(
        "Where the final model goes (resumable checkpoints: its checkpoints/ folder).", None, "run"
    )
    resume: bool = _opt(
        "Continue from the newest complete checkpoint in output_dir/checkpoints (refused when the data's content or "
        "a setting that changes the result differs from that run's).",
        False,
        "run",
    )
    restart: bool = _opt("Delete the run's checkpoints in output_dir and train from step 0.", False, "run")
    seed: int = _opt("Seed of initialisation, sampling and dropout.", 42, "run")

    # --- where the model comes from ---------------------------------------------------------------------------
    model: str | None = _opt("Start from this AlignGPT folder (ours; e.g. a stage-1 output).", None, "model")
    vision_tower: str | None = _opt("Assemble a new model: vision encoder folder (CLIP/SigLIP).", None, "model")
    llm: str | None = _opt("Assemble a new model: causal LM folder (e.g. Vicuna-7B-v1.5).", None, "model")
    stage1_adapter: str | None = _opt(
        "Stage-1 projector + level table to load: our stage1_adapter.safetensors, an official "
        "mm_projector_align.bin, or a folder holding either.",
        None,
        "model",
    )
    alignment_mode: str | None = _opt(
        "adaptive (paper), global, local, uniform, fixed:<k> or none (LLaVA-1.5 baseline).", None, "model"
    )
    gate_text: str | None = _opt(
        "Text the gate averages in training: all (official: prompt and answer) or prompt (the answer left out, as "
        "at inference); default: the model's (all for new models).",
        None,
        "model",
    )
    num_alignment_levels: int = _opt("Rows N of the level table (new models).", 8, "model")
    projector_type: str = _opt("linear, identity or mlp<N>x_gelu (new models).", "mlp2x_gelu", "model")
    image_pool_stride: int = _opt("Average-pool the patch grid by this factor (new models).", 1, "model")
    vision_feature_layer: int = _opt("Vision hidden-state layer to use (new models).", -2, "model")
    chat_template_name: str | None = _opt("Model's default chat template (new models).", None, "model")

    # --- data ---------------------------------------------------------------------------------------------------
    template: str | None = _opt("Chat template of the data (default: plain for pretrain, the model's).", None, "data")
    image_aspect_ratio: str | None = _opt("pad or square (default: square for pretrain, pad after).", None, "data")
    level_field: str = _opt("Record field holding the alignment level.", "similarity", "data")
    on_bad_record: str = _opt("error: stop at a bad record; skip: report it and use the next one.", "error", "data")
    bad_record_report: str | None = _opt("JSONL report of skipped records (default output_dir/...).", None, "data")
    model_max_length: int | None = _opt("Longest training sequence after image expansion.", None, "data")
    group_by_modality_length: bool | None = _opt("Single-modality micro-batches (docs/training.md).", None, "data")
    length_group_steps: int = _opt(
        "With modality grouping: sort the samples of every N optimizer steps by length first, so each step holds "
        "samples of similar length (less padding; 1 = the official order).",
        1,
        "data",
    )
    cache_vision_features: bool = _opt(
        "Run the frozen vision tower once per image and reuse its outputs (small data sets).", False, "data"
    )
    vision_feature_cache: str | None = _opt("File for the cached vision features (default output_dir/...).")
    cache_samples: bool = _opt(
        "Keep each tokenised sample in memory after its first epoch (small data sets trained for many epochs).",
        False,
        "data",
    )
    dataloader_num_workers: int | None = _opt("DataLoader worker processes (default 4 on GPU, 0 on CPU).")

    # --- optimisation -------------------------------------------------------------------------------------------
    learning_rate: float | None = _opt("Peak learning rate (official: 1e-3 pretrain, 2e-5 finetune).")
    lr_scheduler_type: str | None = _opt("LR schedule (official: cosine).")
    warmup_ratio: float | None = _opt("Warm-up fraction of the steps (official: 0.03).")
    weight_decay: float | None = _opt("AdamW weight decay (official: 0).")
    num_train_epochs: float | None = _opt("Epochs (official: 1).")
    max_steps: int = _opt("Stop after this many optimizer steps (-1: run the epochs).", -1)
    global_batch_size: int | None = _opt("Samples per optimizer step over all devices (official 256 / 128).")
    per_device_train_batch_size: int | None = _opt("Micro-batch per device (official 8 / 16).")
    gradient_accumulation_steps: int | None = _opt("Default: global_batch_size / (micro-batch x devices).")
    max_grad_norm: float = _opt("Gradient clipping norm.", 1.0)
    train_llm_lr_scale: float | None = _opt(
        "pretrain only: ALSO train the LLM at learning_rate x this (not the paper's recipe; toy worlds need it)."
    )
    projector_lr_scale: float | None = _opt("Projector LR multiplier (default 1; 0.1 for the LoRA recipes).")
    gate_lr_scale: float = _opt("Stage 2: the gate's LR multiplier (official: 1, the LLM's LR).", 1.0)
    lora_r: int = _opt("LoRA rank.", 128, "lora")
    lora_alpha: int = _opt("LoRA alpha.", 256, "lora")
    lora_dropout: float = _opt("LoRA dropout.", 0.05, "lora")
    lora_target_modules: str = _opt("Comma-separated LLM module names that get LoRA.", DEFAULT_LORA_TARGETS, "lora")

    # --- engine -------------------------------------------------------------------------------------------------
    precision: str = _opt("auto (bf16 where supported), bf16, fp16 or fp32.", "auto", "engine")
    gradient_checkpointing: bool = _opt("Activation checkpointing in the LLM.", True, "engine")
    logging_steps: int = _opt("Log loss and tokens/s every this many steps.", 1, "engine")
    save_steps: int = _opt("Write a checkpoint every this many steps.", 500, "engine")
    save_total_limit: int | None = _opt("Keep at most this many checkpoints.", None, "engine")
    deepspeed: str | None = _opt("DeepSpeed JSON config (configs/zero2.json, configs/zero3.json).", None, "engine")
    fsdp_config: str | None = _opt(
        "Train with FSDP, configured by this JSON/YAML file (configs/fsdp.json).", None, "engine"
    )
    torch_threads: int | None = _opt("torch intra-op threads (CPU).", None, "engine")
    use_cpu: bool = _opt("Train on CPU even when a GPU is present.", False, "engine")
    report_to: str = _opt("Trainer integrations to report to (none, tensorboard, wandb...).", "none", "engine")
    progress: bool = _opt("Show progress bars.", True, "engine")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_yaml_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML mapping; unknown keys raise ``ValueError`` naming them and the file."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    data = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(data) - set(config_field_names()))
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {', '.join(config_field_names())}")
    return data


def resolve_config(
    recipe: str | None = None,
    yaml_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Recipe defaults < YAML file < ``overrides`` (``None`` values in overrides mean "not given")."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(load_yaml_overrides(yaml_path))
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    if recipe is not None:
        values["recipe"] = recipe
    unknown = sorted(set(values) - set(config_field_names()))
    if unknown:
        raise ValueError(f"unknown settings {unknown}")
    config = TrainConfig(**values)
    defaults = get_recipe(config.recipe).defaults
    for name in RECIPE_DEFAULTED:
        if getattr(config, name) is None:
            setattr(config, name, getattr(defaults, name))
    if config.template is None:
        config.template = defaults.template
    if config.projector_lr_scale is None:
        config.projector_lr_scale = 0.1 if get_recipe(config.recipe).uses_lora else 1.0
    validate_config(config)
    return config


def _check_range(config: TrainConfig) -> None:
    if not 0 <= config.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must lie in [0, 1), got {config.warmup_ratio}")


def validate_config(config: TrainConfig) -> None:
    """Errors that can be found before anything is loaded."""
    if config.data is None:
        raise ValueError("no training data: set data (--data)")
    if config.output_dir is None:
        raise ValueError("no output folder: set output_dir (--output-dir)")
    _check_range(config)
    if config.resume and config.restart:
        raise ValueError("choose resume (continue the run in output_dir) or restart (start it over), not both")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    if config.on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {config.on_bad_record!r}")
    if config.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {config.image_aspect_ratio!r}")
    if config.gate_text is not None and config.gate_text not in GATE_TEXT_SPANS:
        raise ValueError(f"gate_text must be one of {GATE_TEXT_SPANS}, got {config.gate_text!r}")
    if config.length_group_steps < 1:
        raise ValueError(f"length_group_steps must be >= 1, got {config.length_group_steps}")
    if config.length_group_steps > 1 and not config.group_by_modality_length:
        raise ValueError("length_group_steps > 1 needs group_by_modality_length (it is an option of that sampler)")
    if config.gate_lr_scale <= 0:
        raise ValueError(f"gate_lr_scale must be > 0, got {config.gate_lr_scale}")
    if config.train_llm_lr_scale is not None and config.recipe != "pretrain":
        raise ValueError("train_llm_lr_scale is a pretrain option (stage 2 trains the LLM anyway)")
    if config.deepspeed and config.fsdp_config:
        raise ValueError("choose DeepSpeed or FSDP, not both")
    quantized = get_recipe(config.recipe).quantizes_llm
    if quantized and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"{config.recipe} needs bitsandbytes, which is not installed: pip install 'aligngpt[qlora]'")
    if quantized and config.deepspeed and deepspeed_zero_stage(config.deepspeed) == 3:
        raise ValueError(
            f"{config.recipe} cannot run under DeepSpeed ZeRO-3 ({config.deepspeed}): the 4-bit LLM is loaded whole "
            "on every device; use ZeRO-2 (configs/zero2.json) or plain torchrun (DDP)"
        )
    from_parts = config.vision_tower is not None or config.llm is not None
    if from_parts and (config.vision_tower is None or config.llm is None):
        raise ValueError("assembling a new model needs both vision_tower and llm")
    if from_parts and config.model is not None:
        raise ValueError("give either model or vision_tower + llm, not both")
    if not from_parts and config.model is None:
        raise ValueError("no model: set model (an AlignGPT folder) or vision_tower + llm")
    if config.recipe != "pretrain" and config.model is None and config.stage1_adapter is None:
        raise ValueError(
            f"{config.recipe} starts from a stage-1 result: set model (our stage-1 output) or stage1_adapter "
            "(ours or an official mm_projector_align.bin)"
        )


def deepspeed_zero_stage(path: str | os.PathLike) -> int:
    """The ZeRO stage a DeepSpeed JSON config asks for (0 when it names none); unreadable files raise ``ValueError``."""
    try:
        settings = json.loads(Path(path).read_text())
        return int(settings.get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"DeepSpeed config {path}: cannot read its zero_optimization.stage ({err})") from None


def save_resolved_config(config: TrainConfig, directory: str | os.PathLike) -> Path:
    """Write ``train_config.yaml`` atomically into ``directory``."""
    from aligngpt.fileio import atomic_write

    path = Path(directory) / RESOLVED_CONFIG_NAME
    with atomic_write(path) as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
    return path
