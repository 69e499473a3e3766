"""The inputs a training run started with, kept beside its checkpoints so that ``--resume`` can refuse changed ones.

A record holds every setting that changes what is trained (all ``TrainConfig`` fields but the bookkeeping ones
below) and the SHA-256 of the training data's content. It is written to ``OUTPUT_DIR/run_inputs.json`` when a run
starts from step 0 and copied into every checkpoint as it is saved, so each checkpoint says which inputs produced
it (a later fresh run into the same folder cannot vouch for an older run's checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from aligngpt.data.digest import file_sha256
from aligngpt.errors import UserError
from aligngpt.fileio import atomic_write
from aligngpt.training.config import TrainConfig, config_field_names

logger = logging.getLogger(__name__)
RUN_RECORD_NAME = "run_inputs.json"
DATA_DIGEST_KEY = "data_sha256"
# Settings that say where outputs go, how progress is shown, or how fast/with how much memory the same computation
# runs; changing them on a resume keeps the result of an uninterrupted run.
BOOKKEEPING_SETTINGS = frozenset(
    {
        "output_dir", "resume", "restart", "progress", "report_to", "logging_steps", "save_steps",
        "save_total_limit", "torch_threads", "dataloader_num_workers", "bad_record_report", "vision_feature_cache",
        "gradient_checkpointing", "cache_samples",
    }
)  # fmt: skip
_unknown = BOOKKEEPING_SETTINGS - set(config_field_names())
if _unknown:
    raise RuntimeError(f"BOOKKEEPING_SETTINGS names settings TrainConfig does not have: {sorted(_unknown)}")


class ResumeMismatchError(UserError, ValueError):
    """``--resume`` was asked for with inputs or settings other than those of the checkpoint's run."""


def run_inputs(config: TrainConfig) -> dict[str, Any]:
    """The record of ``config``: its result-affecting settings (JSON values) and the data's content digest."""
    settings = {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING_SETTINGS}
    return {"settings": json.loads(json.dumps(settings)), DATA_DIGEST_KEY: file_sha256(config.data)}


def write_run_record(record: dict[str, Any], folder: str | os.PathLike[str]) -> Path:
    path = Path(folder) / RUN_RECORD_NAME
    with atomic_write(path) as handle:
        json.dump(record, handle, indent=1)
        handle.write("\n")
    return path


def read_run_record(checkpoint: Path, output_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The record of ``checkpoint`` (its own copy, else the output folder's one) and where it was found."""
    for path in (checkpoint / RUN_RECORD_NAME, output_dir / RUN_RECORD_NAME):
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8")), path
            except json.JSONDecodeError:
                logger.warning("resume: %s is not valid JSON; ignoring it", path)
    return None, None


def differences(saved: dict[str, Any], current: dict[str, Any], data_path: str) -> list[str]:
    """Human-readable changes from ``saved`` to ``current`` (empty: the same inputs).

    A setting the saved record lacks (added in a later version) counts only when it is not at its default.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changes = []
    old_settings, new_settings = saved.get("settings", {}), current["settings"]
    for name, new in new_settings.items():
        if name not in old_settings:
            if new != defaults.get(name):
                changes.append(f"{name}: (not recorded) -> {new!r}")
            continue
        if old_settings[name] != new:
            changes.append(f"{name}: {old_settings[name]!r} -> {new!r}")
    old_digest, new_digest = saved.get(DATA_DIGEST_KEY), current[DATA_DIGEST_KEY]
    if old_digest != new_digest:
        changes.append(f"content of the data file {data_path} (sha256 {str(old_digest)[:12]}… -> {new_digest[:12]}…)")
    return changes


def check_resume(config: TrainConfig, checkpoint: Path, record: dict[str, Any]) -> None:
    """Raise :class:`ResumeMismatchError` naming every change when ``record`` differs from the checkpoint's."""
    output_dir = Path(config.output_dir)
    saved, where = read_run_record(checkpoint, output_dir)
    if saved is None:
        logger.warning("resume: %s has no %s (an older version wrote it); the inputs cannot be checked",
                       checkpoint, RUN_RECORD_NAME)  # fmt: skip
        return
    changes = differences(saved, record, str(config.data))
    if changes:
        raise ResumeMismatchError(
            f"cannot resume from {checkpoint}: it was trained with other inputs (recorded in {where}):\n  "
            + "\n  ".join(changes)
            + "\nResume with the recorded settings and data, or pass --restart to delete the checkpoints in "
            f"{output_dir} and start over."
        )


class RunRecordCallback(TrainerCallback):
    """Copies the run's record into each checkpoint as it is saved (main process only)."""

    def __init__(self, record: dict[str, Any]):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_run_record(self.record, folder)
