"""``TrainingDataset``: LLaVA records -> validated, tokenised ``EncodedSample`` s, read lazily one record at a time.

Each ``dataset[i]`` parses record ``i``, checks it (``aligngpt.data.validation``), loads its image safely, renders the
conversation with the stage's template and tokenises it with the processor. Bad records follow ``on_bad_record``:
``error`` raises a message naming the file, line, record and problem; ``skip`` writes the record to the report file
and returns the next usable record instead (deterministically, so runs and resumes stay reproducible).

Image placement is normalised as the official training does (docs/data.md): every turn holding ``<image>`` becomes
``"<image>\\n" + rest.strip()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.data import Dataset

from aligngpt.data.constants import DEFAULT_LEVEL_FIELD, DEFAULT_MAX_PIXELS, DEFAULT_NUM_LEVELS, Stage
from aligngpt.data.images import ImageLoadError, load_image
from aligngpt.data.problems import Problem, ProblemKind
from aligngpt.data.records import DataFileError, Record, RecordFile
from aligngpt.data.sampler import word_count_length
from aligngpt.data.validation import BadRecordPolicy, RecordValidator, ValidationConfig
from aligngpt.processing import AlignGPTProcessor, EncodedSample
from aligngpt.prompts import IMAGE_TOKEN

STAGE_TEMPLATES = {"pretrain": "plain"}
VISION_FEATURES_KEY = "vision_features"  # EncodedSample.meta key of cached tower outputs [T, d_vision]


def normalize_image_turns(record: Record) -> list[dict[str, str]]:
    """LLaVA turns with ``<image>`` moved to the front of its turn: ``"<image>\\n" + rest.strip()``."""
    turns = []
    for message in record.conversations:
        value = message.value
        if record.has_image and IMAGE_TOKEN in value:
            value = IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()
        turns.append({"from": message.role, "value": value})
    return turns


class _SampleBuilder(RecordValidator):
    """A validator that also does the dataset's work (image decode, tokenisation) so every failure is reported once.

    After a successful ``check`` the built sample is kept in ``self.built`` (keyed by record index).
    """

    def __init__(self, config: ValidationConfig, dataset: TrainingDataset):
        super().__init__(config)
        self.dataset = dataset
        self.built: dict[int, EncodedSample] = {}

    def check(self, record: Record) -> list[Problem]:
        problems = super().check(record)
        if problems:
            return problems
        if self.dataset.stage == "pretrain" and not record.has_image:
            return [Problem(ProblemKind.TEXT_ONLY_IN_PRETRAIN, "pre-training data must have an image in every record")]
        try:
            sample = self.dataset.build_sample(record)
        except ImageLoadError as err:
            return [Problem(err.kind, str(err))]
        except ValueError as err:
            return [Problem(ProblemKind.LENGTH_ERROR, f"cannot tokenise: {err}")]
        self.built[record.index] = sample
        return []


class TrainingDataset(Dataset):
    """A map-style dataset of ``EncodedSample`` for one training stage.

    Args:
        records: a ``RecordFile`` or the path of a LLaVA JSON / JSONL file.
        processor: the model's processor (tokenizer, image processor, image token count, alignment slot).
        stage: ``pretrain`` (template ``plain``, levels on every image record when the model has an alignment token,
            no text-only records) or ``finetune``.
        image_root: folder the ``image`` paths are relative to.
        template: chat template; default ``plain`` for pretrain, the processor's own for finetune.
        image_aspect_ratio: ``pad`` / ``square``; default the processor's.
        require_levels: default: ``stage == "pretrain"`` and the processor inserts an alignment token.
        on_bad_record / report_path: the bad-record policy (see ``aligngpt.data.validation``).
        vision_features: optional mapping image path -> cached vision-tower output ``[T, d_vision]``; images found
            there are neither decoded nor preprocessed.
        cache_samples: keep every sample after it was first built (validated, tokenised) and serve it from memory
            later: for small data sets seen for many epochs. Samples are never modified after they are built.
    """

    def __init__(
        self,
        records: RecordFile | str | os.PathLike,
        processor: AlignGPTProcessor,
        stage: Stage,
        image_root: str | os.PathLike | None = None,
        *,
        template: str | None = None,
        image_aspect_ratio: str | None = None,
        require_levels: bool | None = None,
        num_levels: int = DEFAULT_NUM_LEVELS,
        level_field: str = DEFAULT_LEVEL_FIELD,
        on_bad_record: str = "error",
        report_path: str | os.PathLike | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        vision_features: Mapping[str, torch.Tensor] | None = None,
        cache_samples: bool = False,
    ):
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"unknown stage {stage!r}; expected pretrain or finetune")
        self.records = records if isinstance(records, RecordFile) else RecordFile(records, level_field=level_field)
        self.processor = processor
        self.stage = stage
        self.image_root = Path(image_root) if image_root is not None else None
        self.template = template or STAGE_TEMPLATES.get(stage) or processor.template.name
        self.image_aspect_ratio = image_aspect_ratio or processor.image_aspect_ratio
        if require_levels is None:
            require_levels = stage == "pretrain" and processor.use_alignment_token
        self.require_levels = require_levels
        self.max_pixels = max_pixels
        self.vision_features = vision_features
        config = ValidationConfig(
            image_root=None,  # images are loaded (once) by _SampleBuilder
            stage="pretrain" if require_levels else None,
            num_levels=num_levels,
            max_pixels=max_pixels,
        )
        self._builder = _SampleBuilder(config, self)
        self.policy = BadRecordPolicy(self._builder, on_bad_record, report_path)  # type: ignore[arg-type]
        self._lengths: list[int] | None = None
        self._samples: dict[int, EncodedSample] | None = {} if cache_samples else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> EncodedSample:
        if self._samples is not None and index in self._samples:
            return self._samples[index]
        n = len(self.records)
        for offset in range(n):
            candidate = (index + offset) % n
            if self.policy.admit(self.records, candidate) is not None:
                sample = self._builder.built.pop(candidate)
                if self._samples is not None:
                    self._samples[index] = sample
                return sample
        raise DataFileError(
            f"{self.records.path}: no usable record left (all {n} were skipped as bad; "
            f"see {self.policy.report_path or 'the bad-record report'})"
        )

    @property
    def skipped(self) -> int:
        """Records skipped as bad so far in this process."""
        return self.policy.skipped

    def start_report(self) -> None:
        """A run from step 0: the bad-record report starts empty (a resumed run keeps and extends it)."""
        self.policy.start_report()

    def finish_report(self) -> int:
        """One line per skipped record in the report, merged over DataLoader workers; returns the count."""
        return self.policy.finish_report()

    def build_sample(self, record: Record) -> EncodedSample:
        """Tokenise one (already validated) record and attach its pixels or cached features.

        Raises ``ImageLoadError`` for an image that cannot be loaded and ``ValueError`` when the conversation cannot
        be tokenised (e.g. the length cut would fall inside the image).
        """
        segments = self.processor.render(normalize_image_turns(record), self.template)
        sample = self.processor.encode_segments(segments, truncate=True)
        if sample.has_image != record.has_image:
            raise ValueError("the rendered conversation and the record disagree about having an image")
        sample.meta = {"id": record.id, "index": record.index}
        if self.require_levels and record.has_image:
            sample.alignment_level = record.level
        if record.has_image:
            cached = self.vision_features.get(record.image) if self.vision_features is not None else None
            if cached is not None:
                sample.meta[VISION_FEATURES_KEY] = cached
            else:
                sample.pixel_values = self.load_pixels(record.image)
        return sample

    def load_pixels(self, image_path: str) -> torch.Tensor:
        """``[3, H, W]`` pixel values of one image (safe path resolution, any PIL mode, aspect-ratio handling)."""
        if self.image_root is None:
            raise ImageLoadError(f"record needs image {image_path!r} but no image root was given")
        image = load_image(self.image_root, image_path, max_pixels=self.max_pixels)
        return self.processor.preprocess_images([image], self.image_aspect_ratio)[0]

    def image_paths(self) -> list[str]:
        """Distinct image paths in file order (one pass over the raw records)."""
        seen: dict[str, None] = {}
        for index in range(len(self.records)):
            raw = self.records.raw(index)
            image = raw.get("image") if isinstance(raw, dict) else None
            if isinstance(image, str):
                seen.setdefault(image, None)
        return list(seen)

    @property
    def lengths(self) -> list[int]:
        """Signed word-count lengths for the modality-grouped sampler (+ image, - text-only), one pass, cached."""
        if self._lengths is None:
            lengths = []
            for index in range(len(self.records)):
                raw = self.records.raw(index)
                lengths.append(word_count_length(raw) if isinstance(raw, dict) else 1)
            self._lengths = lengths
        return self._lengths


__all__ = ["TrainingDataset", "VISION_FEATURES_KEY", "normalize_image_turns"]
