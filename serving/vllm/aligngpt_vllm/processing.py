"""vLLM's multimodal processing for AlignGPT: pixels as aligngpt's processor makes them, the ``<image>`` expansion,
the alignment slot after BOS, and the gate's text ids.

Layout of an image prompt (as aligngpt's processor emits it)::

    [BOS] [ALIGN] text ... [IMG] x num_image_tokens ... text

vLLM applies one prompt update per multimodal item and wants one contiguous placeholder per item, so the item's
placeholder runs from the alignment slot to the last image position, with embeddings only at the slot and the
image positions (``is_embed``). The slot is thus part of the item: prefix caching hashes it with the item and
chunked prefill runs the encoder when a chunk reaches it.

The alignment embedding depends on the prompt's text (the gate reads the mean text embedding), so each image item
carries the prompt's gate text ids, and its hash (the identity of the processor cache, the encoder cache and the
prefix cache) mixes those ids and the alignment mode into the image's hash: the same image under another question is
another item.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence

import torch
from PIL import Image
from transformers import AutoImageProcessor, BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalFieldElem, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.multimodal.processing.processor import MultiModalProcessingResult, PlaceholderFeaturesInfo

from aligngpt_vllm.config import AlignGPTVllmConfig, AlignmentMode

IMAGE_PLACEHOLDER = "<image>"
MODALITY = "image"
# Per-request option (``mm_processor_kwargs``): one of the inference-time alignment modes, overriding the folder's.
ALIGNMENT_MODE_KWARG = "alignment_mode"
TRANSPARENT_BACKGROUND = (255, 255, 255)  # aligngpt composites transparent pixels onto white
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as aligngpt's loader makes it for 8-bit images (transparency composited onto white)."""
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def mean_colour(image_mean: Sequence[float]) -> tuple[int, ...]:
    """The padding colour: ``int(255 * mean)`` per channel ((122, 116, 104) for OpenAI CLIP)."""
    return tuple(int(255 * m) for m in image_mean)


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Centre ``image`` on a square canvas of side ``max(W, H)`` filled with ``fill``."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def preprocess_images(images: Sequence[Image.Image], image_processor, aspect_ratio: str) -> torch.Tensor:
    """``[n, 3, H, W]`` pixel values: RGB, padded to a square in the mean colour (``pad``), then the encoder's
    image processor (``square``: the processor alone: resize + centre crop)."""
    rgb = [to_rgb(image) for image in images]
    if aspect_ratio == "pad":
        fill = mean_colour(image_processor.image_mean)
        rgb = [pad_to_square(image, fill) for image in rgb]
    return image_processor(images=rgb, return_tensors="pt")["pixel_values"]


def request_mode(config: AlignGPTVllmConfig, mm_kwargs: Mapping[str, object]) -> AlignmentMode:
    """The request's alignment mode (``mm_processor_kwargs["alignment_mode"]``) or the folder's; a mode the folder
    cannot compute raises ``ValueError``."""
    text = mm_kwargs.get(ALIGNMENT_MODE_KWARG)
    mode = config.alignment if text is None else AlignmentMode.parse(text)
    if mode.uses_alignment_token and not config.alignment.uses_alignment_token:
        raise ValueError(f"alignment_mode {str(mode)!r}: this model was saved without an alignment module")
    if mode.fixed_level is not None and mode.fixed_level >= config.num_alignment_levels:
        raise ValueError(f"alignment_mode {str(mode)!r} is outside 0..{config.num_alignment_levels - 1}")
    return mode


class AlignGPTProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> AlignGPTVllmConfig:
        return self.ctx.get_hf_config(AlignGPTVllmConfig)

    @functools.cached_property
    def image_processor(self):
        """The vision encoder's image processor saved in the folder, PIL backend (as aligngpt loads it)."""
        return AutoImageProcessor.from_pretrained(self.ctx.model_config.model, backend="pil")

    def get_hf_processor(self, **kwargs: object):
        return self.image_processor

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MODALITY: 1}  # aligngpt: one image per prompt

    @property
    def bos_token_id(self) -> int | None:
        tokenizer = self.get_tokenizer()
        probe = tokenizer.encode("a", add_special_tokens=True)
        bos = tokenizer.bos_token_id
        return bos if probe and bos is not None and probe[0] == bos else None


class AlignGPTDummyInputsBuilder(BaseDummyInputsBuilder[AlignGPTProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get(MODALITY, 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        side = self.info.get_hf_config().vision_config.image_size
        overrides = mm_options.get(MODALITY) if mm_options else None
        images = self._get_dummy_images(
            width=side, height=side, num_images=mm_counts.get(MODALITY, 0), overrides=overrides
        )
        return {MODALITY: images}


def gate_text_ids(prompt: Sequence[int], config: AlignGPTVllmConfig, bos_id: int | None) -> list[int]:
    """The ids whose embeddings the gate averages: the prompt without the first-position BOS and the markers."""
    markers = set(config.marker_token_ids)
    start = 1 if bos_id is not None and prompt and prompt[0] == bos_id else 0
    return [token for token in prompt[start:] if token not in markers]


class AlignGPTMultiModalProcessor(BaseMultiModalProcessor[AlignGPTProcessingInfo]):
    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched(MODALITY),
            "gate_text_ids": MultiModalFieldConfig.batched(MODALITY),
            "alignment_mode": MultiModalFieldConfig.batched(MODALITY),
        }

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        config = self.info.get_hf_config()
        images = hf_data.get("images") or []
        pixels = preprocess_images(images, self.info.image_processor, config.image_aspect_ratio)
        return BatchFeature({"pixel_values": pixels})

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        # What vLLM validates (one update per item); the prompt itself is rewritten by _apply_prompt_updates.
        config = self.info.get_hf_config()
        return [
            PromptReplacement(
                modality=MODALITY,
                target=[config.image_token_id],
                replacement=[config.image_token_id] * config.num_image_tokens,
            )
        ]

    def _get_mm_hashes(self, inputs):
        hashes = super()._get_mm_hashes(inputs)
        config = self.info.get_hf_config()
        mode = request_mode(config, inputs.hf_processor_mm_kwargs)
        text = gate_text_ids(inputs.prompt, config, self.info.bos_token_id)
        context = f"{mode}|{','.join(map(str, text))}".encode()
        return {
            modality: [hashlib.sha256(item.encode() + b"|" + context).hexdigest() for item in items]
            for modality, items in hashes.items()
        }

    def _cached_apply_hf_processor(self, inputs, timing_ctx) -> MultiModalProcessingResult:
        # The items depend on the prompt (gate text, mode); _get_mm_hashes keys them by it, and pixel processing
        # is cheap next to the model, so every request processes its image.
        result = self._apply_hf_processor(inputs, timing_ctx)
        config = self.info.get_hf_config()
        mode = request_mode(config, inputs.hf_processor_mm_kwargs)
        text = torch.tensor(gate_text_ids(inputs.prompt, config, self.info.bos_token_id), dtype=torch.long)
        for item in result.kwargs.get(MODALITY, []):
            field = item["pixel_values"].field
            item["gate_text_ids"] = MultiModalFieldElem(data=text, field=field)
            item["alignment_mode"] = MultiModalFieldElem(data=torch.tensor(mode.code(), dtype=torch.long), field=field)
        return result

    def apply(self, inputs, timing_ctx):
        config = self.info.get_hf_config()
        tokenizer = self.info.get_tokenizer()
        has_image = inputs.mm_data_items.get_all_counts().get(MODALITY, 0)
        if has_image and tokenizer is not None and not getattr(tokenizer, "aligngpt_chunkwise", False):
            raise ValueError(
                "AlignGPT models need vLLM's tokenizer_mode='aligngpt' (--tokenizer-mode aligngpt): "
                "the default mode tokenises prompts differently from aligngpt around <image>"
            )
        if inputs.prompt.count(config.image_token_id) > 1:
            raise ValueError(f"a prompt may hold one {IMAGE_PLACEHOLDER}")
        return super().apply(inputs, timing_ctx)

    def _maybe_apply_prompt_updates(self, mm_items, mm_res):
        """Expand ``<image>``, insert the alignment slot after BOS and widen the item's placeholder over both."""
        self._validate_mm_kwargs(mm_res.kwargs, mm_items.get_all_counts())
        (item,) = mm_res.kwargs[MODALITY]
        mode = AlignmentMode.from_code(*item["alignment_mode"].data.tolist())
        ids, start, end = expand_prompt(
            list(mm_res.prompt_ids), self.info.get_hf_config(), mode, self.info.bos_token_id
        )
        count = self.info.get_hf_config().num_image_tokens
        is_embed = torch.zeros(end - start, dtype=torch.bool)
        is_embed[0] = True
        is_embed[-count:] = True
        placeholder = PlaceholderFeaturesInfo(
            modality=MODALITY, item_idx=0, start_idx=start, tokens=ids[start:end], is_embed=is_embed
        )
        return ids, {MODALITY: [placeholder]}


def expand_prompt(
    token_ids: list[int], config: AlignGPTVllmConfig, mode: AlignmentMode, bos_id: int | None
) -> tuple[list[int], int, int]:
    """aligngpt's layout of an image prompt: ``<image>`` expanded, the alignment slot after BOS (position 0 without
    BOS; none for mode ``none``). Returns ``(ids, start, end)``: the item's placeholder is ``ids[start:end]``."""
    image_id, count = config.image_token_id, config.num_image_tokens
    if token_ids.count(image_id) != 1:
        raise ValueError(f"an image needs exactly one {IMAGE_PLACEHOLDER} in its prompt")
    at = token_ids.index(image_id)
    ids = token_ids[:at] + [image_id] * count + token_ids[at + 1 :]
    start, end = at, at + count
    if mode.uses_alignment_token:
        start = 1 if bos_id is not None and ids and ids[0] == bos_id else 0
        ids.insert(start, config.alignment_token_id)
        end += 1
    return ids, start, end
