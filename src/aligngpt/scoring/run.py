"""``aligngpt score`` as a function: CLIP similarity of every image–caption pair, then levels by rank.

Flow: find the image records -> cut them into fixed batches -> skip the batches already in the score log ->
prepare the rest in DataLoader workers while the model runs in the main process -> append each batch's scores
to the log (fsynced) -> bucket all scores -> write the output copy atomically -> write the summary -> delete
the log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligngpt.data.constants import (
    DEFAULT_LEVEL_FIELD,
    DEFAULT_MAX_PIXELS,
    DEFAULT_NUM_LEVELS,
    DEFAULT_SCORE_BATCH_SIZE,
    DEFAULT_SCORE_FIELD,
    DEFAULT_SCORE_WORKERS,
    ON_BAD_RECORD,
)
from aligngpt.data.digest import file_sha256
from aligngpt.data.records import RecordFile
from aligngpt.data.validation import BadRecordError, OnBadRecord
from aligngpt.fileio import atomic_write
from aligngpt.scoring.bucketing import assign_levels
from aligngpt.scoring.output import sidecar, write_leveled_copy
from aligngpt.scoring.score_log import BatchScores, ScoreLog
from aligngpt.scoring.summary import LevelSummary

LOG_FORMAT = "aligngpt-clip-scores/2"


@dataclass
class ScoreConfig:
    """Settings of one scoring run (the CLI options of ``aligngpt score``)."""

    data: Path
    images: Path
    clip: str
    out: Path
    num_levels: int = DEFAULT_NUM_LEVELS
    batch_size: int = DEFAULT_SCORE_BATCH_SIZE
    level_field: str = DEFAULT_LEVEL_FIELD
    score_field: str = DEFAULT_SCORE_FIELD
    workers: int = DEFAULT_SCORE_WORKERS
    device: str | None = None
    dtype: str = "auto"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    on_bad_record: OnBadRecord = "error"
    restart: bool = False
    progress: bool = True
    allow_symlink_escape: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.num_levels}")
        if self.on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"on_bad_record must be one of {', '.join(ON_BAD_RECORD)}")
        if Path(self.out).resolve() == Path(self.data).resolve():
            raise ValueError("the output file must differ from the input data file")

    @property
    def log_path(self) -> Path:
        return self.out.with_name(self.out.name + ".scores.partial.jsonl")


@dataclass
class ScoreResult:
    out: Path
    summary_txt: Path
    summary_png: Path
    num_scored: int
    num_text_only: int
    num_skipped: int
    skipped_report: Path | None


def image_record_indices(records: RecordFile) -> list[int]:
    """Indices of records with an ``image`` entry (malformed ones included: they are reported when loaded)."""
    return [i for i in range(len(records)) if isinstance(obj := records.raw(i), dict) and obj.get("image") is not None]


def score_dataset(config: ScoreConfig, encoder: Any = None) -> ScoreResult:
    """Run (or resume) scoring with a loaded ``DualEncoder`` (loaded from ``config.clip`` if None)."""
    records = RecordFile(config.data, level_field=config.level_field)
    image_indices = image_record_indices(records)
    batches = [image_indices[k : k + config.batch_size] for k in range(0, len(image_indices), config.batch_size)]
    log = ScoreLog(config.log_path, _header(config, records, len(image_indices), encoder))
    done = log.open(restart=config.restart)
    pending = [k for k in range(len(batches)) if k not in done]
    if pending:
        if encoder is None:
            from aligngpt.scoring.encoder import DualEncoder

            encoder = DualEncoder.load(config.clip, device=config.device, dtype=config.dtype)
        score_batches(config, records, batches, pending, encoder, log)
    return _finish(config, records, image_indices, log)


def _header(config: ScoreConfig, records: RecordFile, num_images: int, encoder: Any) -> dict[str, Any]:
    if encoder is not None:
        device, dtype = encoder.device, encoder.dtype
    else:
        from aligngpt.scoring.encoder import resolve_device_dtype

        device, dtype = resolve_device_dtype(config.device, config.dtype)
    clip = Path(config.clip)
    return {
        "format": LOG_FORMAT,
        "data": str(records.path.resolve()),
        "data_sha256": file_sha256(records.path),
        "images": str(Path(config.images).resolve()),
        "num_records": len(records),
        "num_image_records": num_images,
        "clip": str(clip.resolve()) if clip.exists() else config.clip,
        "batch_size": config.batch_size,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "max_pixels": config.max_pixels,
    }


def _keep(item: Any) -> Any:
    return item


def score_batches(
    config: ScoreConfig,
    records: RecordFile,
    batches: list[list[int]],
    pending: list[int],
    encoder: Any,
    log: ScoreLog,
) -> None:
    """Score batches ``pending`` (numbers into ``batches``) and append each to ``log`` as soon as it is done.

    Workers read, decode and preprocess batch k+1.. while the model runs on batch k in this process.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from aligngpt.scoring.batches import ScoringBatches

    dataset = ScoringBatches(
        records,
        batches,
        pending,
        config.images,
        encoder.preprocess,
        encoder.tokenize,
        max_pixels=config.max_pixels,
        allow_symlink_escape=config.allow_symlink_escape,
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=config.workers,
        collate_fn=_keep,
        pin_memory=encoder.device.type == "cuda",
    )
    total = sum(len(batches[k]) for k in pending)
    with tqdm(total=total, desc="scoring", unit="pair", disable=not config.progress, dynamic_ncols=True) as bar:
        for prepared in loader:
            if prepared.bad and config.on_bad_record == "error":
                raise BadRecordError(prepared.bad[0])
            scores: list[float] = []
            if prepared.pixel_values is not None:
                scores = encoder.similarity(prepared.pixel_values, prepared.text_inputs).tolist()
            log.append(
                BatchScores(
                    batch=prepared.batch,
                    scores=list(zip(prepared.indices, prepared.ids, scores, strict=True)),
                    skipped=[r.to_json() for r in prepared.bad],
                )
            )
            bar.update(len(prepared.indices) + len(prepared.bad))


def _finish(config: ScoreConfig, records: RecordFile, image_indices: list[int], log: ScoreLog) -> ScoreResult:
    scores: dict[int, float] = {}
    skipped: list[dict[str, Any]] = []
    for number in sorted(log.done):
        batch = log.done[number]
        scores.update((index, score) for index, _, score in batch.scores)
        skipped += batch.skipped
    order = sorted(scores)
    levels_array = assign_levels([scores[i] for i in order], config.num_levels)
    levels = dict(zip(order, levels_array.tolist(), strict=True))
    dropped = {int(r["index"]) for r in skipped}
    write_leveled_copy(
        records,
        config.out,
        levels=levels,
        scores=scores,
        drop=dropped,
        score_field=config.score_field,
        progress=config.progress,
    )
    report = None
    if skipped:
        report = sidecar(config.out, ".skipped.jsonl")
        with atomic_write(report) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in skipped)
    import numpy as np

    summary = LevelSummary(
        num_levels=config.num_levels,
        scores=np.asarray([scores[i] for i in order], dtype=np.float64),
        levels=levels_array,
        total_records=len(records),
        text_only=len(records) - len(image_indices),
        skipped=len(skipped),
    )
    txt, png = summary.write(config.out)
    log.remove()
    return ScoreResult(
        out=config.out,
        summary_txt=txt,
        summary_png=png,
        num_scored=len(scores),
        num_text_only=summary.text_only,
        num_skipped=len(skipped),
        skipped_report=report,
    )
