"""``AlignGPTProcessor``: conversations and images -> model inputs (ids, labels, masks, pixels).

Sequence layout of an image sample (right padding shown)::

    [BOS] [ALIGN] text ... [IMG] x num_image_tokens ... text [PAD]...

Text is tokenised chunk-wise around ``<image>`` (each chunk on its own, one BOS), which reproduces the official
token ids exactly. Tokenizers without BOS put the alignment slot at position 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, BatchFeature, PreTrainedTokenizerBase

from aligngpt.config import AlignGPTConfig
from aligngpt.modeling.aligngpt import IGNORE_INDEX
from aligngpt.processing.image import preprocess_images
from aligngpt.processing.templates import (
    IMAGE_PLACEHOLDER,
    ChatTemplate,
    Segment,
    get_template,
    normalize_messages,
)
from aligngpt.processing.tokenizer import check_marker_tokens, load_tokenizer

PROCESSOR_CONFIG = "aligngpt_processor.json"
PADDING_SIDES = ("left", "right")


@dataclass
class EncodedSample:
    """One tokenised sample: ``input_ids`` and ``labels`` are 1-D lists of equal length."""

    input_ids: list[int]
    labels: list[int]
    has_image: bool
    pixel_values: torch.Tensor | None = None  # [3, H, W]
    alignment_level: int | None = None
    meta: dict = field(default_factory=dict)


class AlignGPTProcessor:
    """Turns text (with ``<image>``) and images into inputs of ``AlignGPTForConditionalGeneration``.

    Args:
        tokenizer: the LLM's fast tokenizer.
        image_processor: the vision encoder's image processor.
        num_image_tokens: image positions per image (``config.num_image_tokens``).
        image_token_id / alignment_token_id: the ids marking those positions.
        template: default chat template name.
        image_aspect_ratio: ``pad`` or ``square``.
        use_alignment_token: False for plain LLaVA-1.5 (``alignment_mode="none"``).
        model_max_length: training sequences are cut to this length (after image expansion).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor,
        num_image_tokens: int,
        image_token_id: int,
        alignment_token_id: int | None,
        template: str = "vicuna_v1",
        image_aspect_ratio: str = "pad",
        use_alignment_token: bool = True,
        model_max_length: int = 2048,
    ):
        if alignment_token_id is not None:
            check_marker_tokens(tokenizer, image_token_id, alignment_token_id)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id
        self.alignment_token_id = alignment_token_id
        self.template = get_template(template)
        self.image_aspect_ratio = image_aspect_ratio
        self.use_alignment_token = use_alignment_token and alignment_token_id is not None
        self.model_max_length = model_max_length
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.bos_token_id = tokenizer.bos_token_id if probe and probe[0] == tokenizer.bos_token_id else None

    # --- construction / persistence ----------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: AlignGPTConfig, tokenizer: PreTrainedTokenizerBase, image_processor, **overrides
    ) -> AlignGPTProcessor:
        """Processor matching a model config (token ids, image token count, template, aspect ratio)."""
        settings = dict(
            num_image_tokens=config.num_image_tokens,
            image_token_id=config.image_token_id,
            alignment_token_id=config.alignment_token_id,
            template=config.chat_template_name,
            image_aspect_ratio=config.image_aspect_ratio,
            use_alignment_token=config.uses_alignment_token,
            model_max_length=config.model_max_length,
        )
        settings.update(overrides)
        return cls(tokenizer, image_processor, **settings)

    def settings(self) -> dict:
        return {
            "num_image_tokens": self.num_image_tokens,
            "image_token_id": self.image_token_id,
            "alignment_token_id": self.alignment_token_id,
            "template": self.template.name,
            "image_aspect_ratio": self.image_aspect_ratio,
            "use_alignment_token": self.use_alignment_token,
            "model_max_length": self.model_max_length,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(self.settings(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> AlignGPTProcessor:
        directory = Path(directory)
        path = directory / PROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not an aligngpt processor/model directory")
        settings = json.loads(path.read_text())
        settings.update(overrides)
        return cls(load_tokenizer(directory), load_image_processor(directory), **settings)

    # --- text --------------------------------------------------------------------------------------------------
    def _tokenize_segments(self, segments: Sequence[Segment]) -> tuple[list[int], list[int], int]:
        """Chunk-wise tokenisation of the joined segments.

        Returns ``(ids, labels, n_images)`` where each ``<image>`` is one ``image_token_id`` (not yet expanded).
        """
        text = "".join(segment.text for segment in segments)
        supervised_spans = []
        cursor = 0
        for segment in segments:
            if segment.supervised:
                supervised_spans.append((cursor, cursor + len(segment.text)))
            cursor += len(segment.text)

        ids: list[int] = [] if self.bos_token_id is None else [self.bos_token_id]
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        chunk_start = 0
        chunks = text.split(IMAGE_PLACEHOLDER)
        for index, chunk in enumerate(chunks):
            if index > 0:
                ids.append(self.image_token_id)
                labels.append(IGNORE_INDEX)
            if chunk:
                encoded = self.tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
                for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
                    start, end = start + chunk_start, end + chunk_start
                    supervised = end > start and any(
                        start < s_end and end > s_start for s_start, s_end in supervised_spans
                    )
                    ids.append(token)
                    labels.append(token if supervised else IGNORE_INDEX)
            chunk_start += len(chunk) + len(IMAGE_PLACEHOLDER)
        return ids, labels, len(chunks) - 1

    def encode_segments(self, segments: Sequence[Segment], truncate: bool = False) -> EncodedSample:
        """Tokenise rendered segments, expand the image placeholder and insert the alignment slot.

        At most one ``<image>`` per sample. With ``truncate``, sequences longer than ``model_max_length`` are cut at
        the end; a cut that would remove image positions raises ``ValueError``.
        """
        ids, labels, n_images = self._tokenize_segments(segments)
        if n_images > 1:
            raise ValueError(f"a sample may hold one {IMAGE_PLACEHOLDER}, found {n_images}")
        if n_images:
            at = ids.index(self.image_token_id)
            ids[at : at + 1] = [self.image_token_id] * self.num_image_tokens
            labels[at : at + 1] = [IGNORE_INDEX] * self.num_image_tokens
            if self.use_alignment_token:
                slot = 1 if self.bos_token_id is not None else 0
                ids.insert(slot, self.alignment_token_id)
                labels.insert(slot, IGNORE_INDEX)
        if truncate and len(ids) > self.model_max_length:
            if n_images and ids[self.model_max_length - 1 :].count(self.image_token_id) > 0:
                raise ValueError(
                    f"sample of {len(ids)} tokens exceeds model_max_length {self.model_max_length} inside its image"
                )
            ids, labels = ids[: self.model_max_length], labels[: self.model_max_length]
        return EncodedSample(ids, labels, bool(n_images))

    def render(self, conversation: Sequence[Mapping], template: str | ChatTemplate | None = None) -> list[Segment]:
        """Render LLaVA/OpenAI-style turns with a template (default: the processor's)."""
        chat = self._template(template)
        system, messages = normalize_messages(conversation)
        if not messages:
            raise ValueError("empty conversation")
        return chat.render(messages, system)

    def encode_conversation(
        self,
        conversation: Sequence[Mapping],
        image: Image.Image | None = None,
        template: str | ChatTemplate | None = None,
        alignment_level: int | None = None,
        truncate: bool = True,
    ) -> EncodedSample:
        """A training sample: ids + labels from message boundaries, and pixels when ``image`` is given."""
        sample = self.encode_segments(self.render(conversation, template), truncate=truncate)
        if sample.has_image != (image is not None):
            raise ValueError("an image must be given exactly when the conversation holds <image>")
        if image is not None:
            sample.pixel_values = self.preprocess_images([image])[0]
        sample.alignment_level = alignment_level
        return sample

    def _template(self, template: str | ChatTemplate | None) -> ChatTemplate:
        if template is None:
            return self.template
        return template if isinstance(template, ChatTemplate) else get_template(template)

    def generation_prompt(
        self,
        message: str,
        history: Sequence[tuple[str, str]] = (),
        template: str | ChatTemplate | None = None,
    ) -> str:
        """The prompt text asking for the next assistant answer."""
        return self._template(template).generation_prompt(message, list(history))

    # --- images ------------------------------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Image.Image], aspect_ratio: str | None = None) -> torch.Tensor:
        """``[n, 3, H, W]`` pixel values (``pad`` or ``square`` as configured unless overridden)."""
        return preprocess_images(images, self.image_processor, aspect_ratio or self.image_aspect_ratio)

    # --- batching ----------------------------------------------------------------------------------------------
    def collate(self, samples: Sequence[EncodedSample], padding_side: str = "right") -> BatchFeature:
        """Pad a list of samples into a batch.

        Returns ``input_ids``/``attention_mask``/``labels`` ``[B, L]``, ``pixel_values`` ``[n_images, 3, H, W]`` for
        the image samples in row order (absent if none), and ``alignment_levels`` ``[B]`` when every image sample
        carries one (``-1`` for text-only rows).
        """
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        length = max(len(sample.input_ids) for sample in samples)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            span = slice(0, n) if padding_side == "right" else slice(length - n, length)
            input_ids[row, span] = torch.tensor(sample.input_ids)
            labels[row, span] = torch.tensor(sample.labels)
            attention_mask[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixels = [sample.pixel_values for sample in samples if sample.has_image]
        if pixels:
            if any(p is None for p in pixels):
                raise ValueError("an image sample has no pixel_values")
            batch["pixel_values"] = torch.stack(pixels)
        levels = [sample.alignment_level for sample in samples if sample.has_image]
        if levels and all(level is not None for level in levels):
            batch["alignment_levels"] = torch.tensor(
                [sample.alignment_level if sample.has_image else -1 for sample in samples], dtype=torch.long
            )
        return BatchFeature(batch)

    def __call__(
        self,
        text: str | Sequence[str],
        images: Image.Image | Sequence[Image.Image | None] | None = None,
        padding_side: str = "left",
        aspect_ratio: str | None = None,
    ) -> BatchFeature:
        """Inference inputs for prompts that already went through a template (``<image>`` marks the image).

        ``images[i]`` belongs to ``text[i]`` (``None`` for a text-only prompt). Left padding by default, ready for
        batched ``generate``.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if images is None:
            images = [None] * len(texts)
        elif isinstance(images, Image.Image):
            images = [images]
        if len(images) != len(texts):
            raise ValueError(f"pass one image (or None) per prompt: {len(texts)} prompts, {len(images)} images")
        real_images = [image for image in images if image is not None]
        pixels = iter(self.preprocess_images(real_images, aspect_ratio) if real_images else [])
        samples = []
        for prompt, image in zip(texts, images):
            sample = self.encode_segments([Segment(prompt)])
            if sample.has_image != (image is not None):
                raise ValueError(f"prompt {prompt[:40]!r}...: an image must be given exactly when it holds <image>")
            if image is not None:
                sample.pixel_values = next(pixels)
            samples.append(sample)
        batch = self.collate(samples, padding_side=padding_side)
        del batch["labels"]
        return batch

    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Decode generated ids, dropping special tokens and stop strings, stripped."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        for stop in self.template.stop_strings:
            if stop.strip() and stop in text:
                text = text.split(stop)[0]
        return text.strip()


def load_image_processor(path: str | Path):
    """The vision encoder's image processor, PIL backend (no torchvision needed)."""
    return AutoImageProcessor.from_pretrained(str(path), backend="pil")
