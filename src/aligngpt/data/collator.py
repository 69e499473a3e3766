"""``TrainingCollator``: a list of ``EncodedSample`` -> one right-padded training batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from transformers import BatchFeature

from aligngpt.data.dataset import VISION_FEATURES_KEY
from aligngpt.processing import AlignGPTProcessor, EncodedSample


class TrainingCollator:
    """Wraps :meth:`AlignGPTProcessor.collate` (right padding, as the official training).

    Batch keys: ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``; ``pixel_values`` ``[n_images, 3, H, W]`` or,
    when the samples carry cached tower outputs, ``vision_features`` ``[n_images, T, d_vision]``; ``alignment_levels``
    ``[B]`` (stage 1, ``-1`` on text rows).
    """

    def __init__(self, processor: AlignGPTProcessor, padding_side: str = "right"):
        self.processor = processor
        self.padding_side = padding_side

    def __call__(self, samples: Sequence[EncodedSample]) -> BatchFeature:
        image_samples = [sample for sample in samples if sample.has_image]
        cached = [VISION_FEATURES_KEY in sample.meta for sample in image_samples]
        if not any(cached):
            return self.processor.collate(samples, padding_side=self.padding_side)
        if not all(cached):
            raise ValueError(
                "a batch mixes images with cached vision features and images without; rebuild the feature cache"
            )
        # processor.collate stacks each image sample's ``pixel_values`` in row order; hand it the cached features
        # in that slot and rename the result.
        stand_ins = [
            replace(sample, pixel_values=sample.meta[VISION_FEATURES_KEY]) if sample.has_image else sample
            for sample in samples
        ]
        batch = self.processor.collate(stand_ins, padding_side=self.padding_side)
        batch[VISION_FEATURES_KEY] = batch.pop("pixel_values")
        return batch
