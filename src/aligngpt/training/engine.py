"""``train(config)``: one recipe run on HF Trainer, from start (or the last checkpoint) to the saved outputs.

Outputs in ``output_dir``: the model and processor in our HF format (safetensors), ``train_config.yaml`` (the
resolved settings), ``run_inputs.json`` (what ``--resume`` checks, see ``run_record``), ``trainer_state.json``;
after stage 1 also the adapter as ``stage1_adapter.safetensors`` (ours) and ``mm_projector_align.bin`` (official
layout); after ``finetune-lora`` and ``finetune-qlora`` the base model (in full precision) plus ``lora_adapter/``.
Checkpoints ``checkpoints/checkpoint-<step>`` hold the whole model (level table included), optimizer, scheduler and
RNG states and a copy of ``run_inputs.json``; they stay in their own folder so that the model folder holds only
what loading the model needs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from aligngpt.model_files import without_weight_progress_bars
from aligngpt.training.config import TrainConfig, save_resolved_config
from aligngpt.training.recipes import RecipeOptions, get_recipe
from aligngpt.training.run_record import RunRecordCallback, check_resume, run_inputs, write_run_record

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINER_LEFTOVERS = ("training_args.bin",)  # what Trainer.save_model adds to a model folder besides the model
DEFAULT_BAD_RECORD_REPORT = "bad_records.jsonl"
DEFAULT_FEATURE_CACHE = "vision_features.safetensors"
GPU_DATALOADER_WORKERS = 4


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    log_history: list[dict]
    skipped_records: int
    notes: list[str]

    @property
    def losses(self) -> list[float]:
        return [entry["loss"] for entry in self.log_history if "loss" in entry]


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    """Where the resumable ``checkpoint-N`` folders of a run go."""
    return Path(output_dir) / CHECKPOINTS_DIR


def find_resume_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest *complete* ``checkpoint-N`` of a run; ``None`` if none.

    Complete: its RNG state and a readable ``trainer_state.json`` (HF writes that file last) are there. Looks in
    ``output_dir/checkpoints/`` and, for runs written before checkpoints had their own folder, in ``output_dir``.
    """
    found = []
    for folder in (checkpoints_dir(output_dir), Path(output_dir)):
        if folder.is_dir():
            found += [
                (int(m.group(1)), child) for child in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(child.name))
            ]
    for _, checkpoint in sorted(found, reverse=True):
        problem = _incomplete(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("resume: skipping %s (%s)", checkpoint, problem)
    return None


def _incomplete(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or ``None`` when it can."""
    if not ((checkpoint / "rng_state.pth").is_file() or any(checkpoint.glob("rng_state_*.pth"))):
        return "no RNG state: the save was interrupted"
    state = checkpoint / TRAINER_STATE_NAME
    try:
        text = state.read_text(encoding="utf-8")
        parsed = json.loads(text)
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME}: the save was interrupted"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        empty = isinstance(err, json.JSONDecodeError) and not text.strip()
        return f"{TRAINER_STATE_NAME} is empty" if empty else f"{TRAINER_STATE_NAME} is unreadable ({err})"
    return None if isinstance(parsed, dict) else f"{TRAINER_STATE_NAME} does not hold a JSON object"


def _delete_checkpoints(output_dir: Path) -> None:
    """``restart``: remove the ``checkpoint-N`` folders of an earlier run, from ``output_dir/checkpoints/`` and,
    for runs written before checkpoints had their own folder, from ``output_dir`` itself."""
    for folder in (checkpoints_dir(output_dir), output_dir):
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if CHECKPOINT_PATTERN.match(child.name) and child.is_dir():
                shutil.rmtree(child)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def batch_layout(config: TrainConfig) -> tuple[int, int]:
    """``(per_device_batch, grad_accum)`` that give ``global_batch_size`` on ``WORLD_SIZE`` devices."""
    devices = world_size()
    per_device = config.per_device_train_batch_size
    if config.gradient_accumulation_steps is not None:
        return per_device, config.gradient_accumulation_steps
    if per_device * devices > config.global_batch_size:
        per_device = max(1, config.global_batch_size // devices)
    if config.global_batch_size % (per_device * devices):
        raise ValueError(
            f"global_batch_size {config.global_batch_size} is not a multiple of micro-batch {per_device} x "
            f"{devices} device(s); set per_device_train_batch_size or gradient_accumulation_steps"
        )
    return per_device, config.global_batch_size // (per_device * devices)


def _precision(config: TrainConfig, on_gpu: bool) -> dict:
    if config.precision == "auto":
        bf16 = on_gpu and torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": False, "tf32": True if on_gpu and bf16 else None}
    return {"bf16": config.precision == "bf16", "fp16": config.precision == "fp16", "tf32": True if on_gpu else None}


def training_arguments(config: TrainConfig):
    """The ``transformers.TrainingArguments`` of a run."""
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available() and not config.use_cpu
    per_device, accumulation = batch_layout(config)
    workers = config.dataloader_num_workers
    if workers is None:
        workers = GPU_DATALOADER_WORKERS if on_gpu else 0
    fsdp_kwargs = {"fsdp": True, "fsdp_config": _read_mapping(config.fsdp_config)} if config.fsdp_config else {}
    return TrainingArguments(
        output_dir=str(checkpoints_dir(config.output_dir)),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        dataloader_num_workers=workers,
        dataloader_pin_memory=on_gpu,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        report_to=[] if config.report_to == "none" else config.report_to.split(","),
        disable_tqdm=not config.progress,
        use_cpu=config.use_cpu or not torch.cuda.is_available(),
        deepspeed=config.deepspeed,
        ddp_find_unused_parameters=False,
        **_precision(config, on_gpu),
        **fsdp_kwargs,
    )


def _read_mapping(path: str) -> dict:
    import json

    import yaml

    text = Path(path).read_text()
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Run ``config`` (already resolved, see :func:`aligngpt.training.config.resolve_config`).

    ``callbacks`` are added to the Trainer (e.g. a measurement of gradient norms; they must not change training).
    """
    from aligngpt.data.collator import TrainingCollator
    from aligngpt.data.dataset import TrainingDataset
    from aligngpt.data.records import RecordFile
    from aligngpt.training.adapter import save_stage1_adapter
    from aligngpt.training.features import load_or_compute_vision_features
    from aligngpt.training.lora import apply_lora, save_lora_adapter, strip_lora
    from aligngpt.training.model_init import build_starting_point
    from aligngpt.training.trainer import AlignGPTTrainer

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    recipe = get_recipe(config.recipe)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = find_resume_checkpoint(output_dir) if config.resume else None
    if config.resume and checkpoint is None:
        logger.warning("resume: no complete checkpoint in %s; starting from the beginning", output_dir)
    records = RecordFile(config.data, level_field=config.level_field)  # a broken data file fails before the model loads
    record = run_inputs(config)
    if checkpoint is not None:
        check_resume(config, checkpoint, record)  # before anything in output_dir is overwritten
    elif is_main_process():
        if config.restart:
            _delete_checkpoints(output_dir)
        write_run_record(record, output_dir)

    args = training_arguments(config)  # before the model: under ZeRO-3 the model is then built partitioned
    if config.deepspeed and args.world_size > 1:
        import deepspeed

        deepspeed.init_distributed()  # ZeRO-3's partitioned loading needs DeepSpeed's view of the process group
    from transformers import set_seed

    set_seed(config.seed)
    start = build_starting_point(config, recipe)
    model, processor = start.model, start.processor
    full_precision_llm = None  # QLoRA: the LLM the 4-bit copy replaced, saved as the output's base model
    if recipe.quantizes_llm:
        from aligngpt.training.qlora import compute_dtype, quantize_language_model

        full_precision_llm = quantize_language_model(model, args.device, compute_dtype(args.bf16, args.fp16))
    if recipe.uses_lora:
        targets = [name.strip() for name in config.lora_target_modules.split(",") if name.strip()]
        apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, targets)
    options = RecipeOptions(
        train_llm_lr_scale=config.train_llm_lr_scale,
        projector_lr_scale=config.projector_lr_scale,
        gate_lr_scale=config.gate_lr_scale,
    )
    groups = recipe.apply(model, options)
    model.language_model.config.use_cache = False

    dataset = TrainingDataset(
        records,
        processor,
        recipe.stage,
        config.image_root,
        template=config.template,
        image_aspect_ratio=config.image_aspect_ratio,
        require_levels=recipe.uses_levels(model),
        num_levels=model.config.num_alignment_levels,
        level_field=config.level_field,
        on_bad_record=config.on_bad_record,
        report_path=config.bad_record_report or output_dir / DEFAULT_BAD_RECORD_REPORT,
        cache_samples=config.cache_samples,
    )
    if checkpoint is None and is_main_process():
        dataset.start_report()
    if config.cache_vision_features:
        cache_path = config.vision_feature_cache or output_dir / DEFAULT_FEATURE_CACHE
        dataset.vision_features = load_or_compute_vision_features(
            cache_path, model, dataset, write=is_main_process(), progress=config.progress
        )
    if is_main_process():
        save_resolved_config(config, output_dir)

    trainer = AlignGPTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=TrainingCollator(processor),
        processing_class=processor,
        param_groups=groups,
        modality_lengths=dataset.lengths if config.group_by_modality_length else None,
        length_group_steps=config.length_group_steps,
    )
    trainer.add_callback(RunRecordCallback(record))  # copies run_inputs.json into each checkpoint
    for callback in callbacks:
        trainer.add_callback(callback)
    with without_weight_progress_bars():  # the checkpoint saves' bars; the Trainer's own bar stays
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    model.language_model.config.use_cache = True
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # consolidated on every backend
    notes = list(start.notes)
    if recipe.stage == "pretrain" and is_main_process():
        paths = save_stage1_adapter(state, output_dir)
        notes.append(f"stage-1 adapter: {', '.join(str(path) for path in paths)}")
    if recipe.uses_lora:
        if is_main_process():
            save_lora_adapter(trainer.accelerator.unwrap_model(trainer.model_wrapped), output_dir, state)
        strip_lora(model)
    if full_precision_llm is not None:
        model.model.language_model = full_precision_llm
    with without_weight_progress_bars():
        trainer.save_model(str(output_dir))
    skipped = dataset.skipped
    if is_main_process():
        for name in TRAINER_LEFTOVERS:
            (output_dir / name).unlink(missing_ok=True)
        trainer.state.save_to_json(str(output_dir / TRAINER_STATE_NAME))
        skipped = dataset.finish_report()
    return TrainResult(output_dir, trainer.state.global_step, trainer.state.log_history, skipped, notes)
