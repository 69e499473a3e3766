"""``AlignGPTProcessor``: conversations and images -> model inputs (ids, labels, masks, pixels).

Sequence layout of an image sample (right padding shown)::

    [BOS] [ALIGN] text ... [IMG] x num_image_tokens ... text [PAD]...

Text is tokenised chunk-wise around ``<image>`` (each chunk on its own, one BOS), which reproduces the official
token ids exactly. Tokenizers without BOS put the alignment slot at position 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.image_utils import load_image
from transformers.utils import PROCESSOR_NAME

from aligngpt.config import AlignGPTConfig
from aligngpt.modeling.aligngpt import IGNORE_INDEX
from aligngpt.processing.image import preprocess_images
from aligngpt.processing.jinja_templates import DEFAULT_KEY, jinja_chat_templates, jinja_template
from aligngpt.processing.layout import expand_image, pad_rows
from aligngpt.processing.stops import cut_at_stops
from aligngpt.processing.templates import (
    ChatTemplate,
    Segment,
    get_template,
    normalize_messages,
    resolve_template_name,
)
from aligngpt.processing.tokenizer import check_marker_tokens, load_tokenizer
from aligngpt.prompts import IMAGE_TOKEN

PROCESSOR_CONFIG = PROCESSOR_NAME  # processor_config.json: our settings + processor_class
LEGACY_PROCESSOR_CONFIG = "aligngpt_processor.json"  # what aligngpt wrote before it followed transformers' layout
PADDING_SIDES = ("left", "right")
RETURN_TENSORS = ("pt", None)
NO_OFFSET = (0, 0)  # offsets of ids with no characters of their own: BOS, image and alignment markers, padding
# What ``processor_config.json`` stores: the ``__init__`` keywords besides the sub-processors and templates.
SETTING_NAMES = (
    "num_image_tokens", "image_token_id", "alignment_token_id", "template", "image_aspect_ratio",
    "use_alignment_token", "model_max_length",
)  # fmt: skip
REQUIRED_SETTINGS = ("num_image_tokens", "image_token_id", "alignment_token_id")
# ``from_pretrained`` keywords for locating files (handed to the tokenizer / image-processor loaders) and those that
# transformers' AutoProcessor adds for its own bookkeeping (accepted, not used). ``pipeline`` also hands over the
# model's keywords (``model_kwargs``): with ``_from_pipeline`` set, every keyword that is no setting is ignored.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "proxies", "subfolder")
AUTO_KWARGS = ("_from_auto", "trust_remote_code", "code_revision")


@dataclass
class EncodedSample:
    """One tokenised sample: ``input_ids`` and ``labels`` are 1-D lists of equal length.

    ``offsets`` (only when asked for): per id, its ``(start, end)`` characters in the encoded text; ``(0, 0)`` for
    ids without characters (BOS, image and alignment markers).
    """

    input_ids: list[int]
    labels: list[int]
    has_image: bool
    pixel_values: torch.Tensor | None = None  # [3, H, W]
    alignment_level: int | None = None
    meta: dict = field(default_factory=dict)
    offsets: list[tuple[int, int]] | None = None


class AlignGPTProcessor(ProcessorMixin):
    """Turns text (with ``<image>``) and images into inputs of ``AlignGPTForConditionalGeneration``.

    A transformers ``ProcessorMixin`` (sub-processors ``tokenizer`` and ``image_processor``): ``save_pretrained``
    writes ``processor_config.json`` (the settings below), ``chat_template.jinja`` (the default template) and
    ``additional_chat_templates/<name>.jinja`` (every template by name) next to the tokenizer and image-processor
    files, and ``AutoProcessor.from_pretrained`` loads it after ``import aligngpt``.

    Args:
        tokenizer: the LLM's fast tokenizer.
        image_processor: the vision encoder's image processor.
        num_image_tokens: image positions per image (``config.num_image_tokens``).
        image_token_id / alignment_token_id: the ids marking those positions.
        template: default chat template name.
        image_aspect_ratio: ``pad`` or ``square``.
        use_alignment_token: False for plain LLaVA-1.5 (``alignment_mode="none"``).
        model_max_length: training sequences are cut to this length (after image expansion).
        chat_template: Jinja chat templates (a string for the default, or a dict by name with ``"default"``);
            default: those generated from the Python templates (:mod:`aligngpt.processing.jinja_templates`).
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
        chat_template: str | Mapping[str, str] | None = None,
    ):
        if alignment_token_id is not None:
            check_marker_tokens(tokenizer, image_token_id, alignment_token_id)
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id
        self.alignment_token_id = alignment_token_id
        self.template = get_template(template)
        self.image_aspect_ratio = image_aspect_ratio
        self.use_alignment_token = use_alignment_token and alignment_token_id is not None
        self.model_max_length = model_max_length
        templates = jinja_chat_templates(self.template.name)
        if isinstance(chat_template, str):
            templates[DEFAULT_KEY] = chat_template
        elif chat_template is not None:
            templates.update(chat_template)
        super().__init__(tokenizer, image_processor, chat_template=templates)
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
        """The settings ``processor_config.json`` stores (the ``__init__`` keywords besides the sub-processors)."""
        settings = {name: getattr(self, name) for name in SETTING_NAMES}
        return {**settings, "template": self.template.name}

    def to_dict(self) -> dict:
        return {**self.settings(), "processor_class": type(self).__name__}

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Write the tokenizer, ``preprocessor_config.json``, the chat templates and ``processor_config.json``."""
        os.makedirs(save_directory, exist_ok=True)
        self.image_processor.save_pretrained(save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> AlignGPTProcessor:
        """Load a saved processor (a folder or a hub id); extra keywords override saved settings (``template=...``).

        Folders written before the processor followed transformers' layout (settings in ``aligngpt_processor.json``,
        no chat-template files) load too; their Jinja templates are generated from the Python ones.
        """
        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        for key in AUTO_KWARGS:
            kwargs.pop(key, None)
        if kwargs.pop("_from_pipeline", None) is not None:
            kwargs = {key: value for key, value in kwargs.items() if key in SETTING_NAMES}
        source = str(pretrained_model_name_or_path)
        folder = Path(source)
        if folder.is_dir() and not (folder / PROCESSOR_CONFIG).is_file():
            legacy = folder / LEGACY_PROCESSOR_CONFIG
            if not legacy.is_file():
                raise FileNotFoundError(
                    f"{folder / PROCESSOR_CONFIG} not found: not an aligngpt processor/model directory"
                )
            settings, chat_template, origin = _read_settings(legacy), None, legacy
        else:
            settings, _ = cls.get_processor_dict(source, **hub)
            chat_template = settings.pop("chat_template", None)
            origin = folder / PROCESSOR_CONFIG if folder.is_dir() else f"{source}: {PROCESSOR_CONFIG}"
            if settings.pop("processor_class", cls.__name__) != cls.__name__:
                raise ValueError(f"{origin}: not an {cls.__name__} (processor_class is another class)")
        _check_settings(settings, origin)
        chat_template = kwargs.pop("chat_template", chat_template)
        processor = cls(
            load_tokenizer(source, **hub),
            load_image_processor(source, **hub),
            **{**settings, **kwargs},
            chat_template=chat_template,
        )
        if "template" in kwargs:
            processor.chat_template[DEFAULT_KEY] = processor.chat_template[processor.template.name]
        return processor

    # --- text --------------------------------------------------------------------------------------------------
    def _tokenize_segments(
        self, segments: Sequence[Segment], add_bos: bool = True
    ) -> tuple[list[int], list[int], list[tuple[int, int]], int]:
        """Chunk-wise tokenisation of the joined segments.

        Returns ``(ids, labels, offsets, n_images)`` where each ``<image>`` is one ``image_token_id`` (not yet
        expanded) and ``offsets`` holds each id's characters in the joined text.
        """
        text = "".join(segment.text for segment in segments)
        supervised_spans = []
        cursor = 0
        for segment in segments:
            if segment.supervised:
                supervised_spans.append((cursor, cursor + len(segment.text)))
            cursor += len(segment.text)

        ids: list[int] = [self.bos_token_id] if add_bos and self.bos_token_id is not None else []
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        offsets: list[tuple[int, int]] = [NO_OFFSET] * len(ids)
        chunk_start = 0
        chunks = text.split(IMAGE_TOKEN)
        for index, chunk in enumerate(chunks):
            if index > 0:
                ids.append(self.image_token_id)
                labels.append(IGNORE_INDEX)
                offsets.append(NO_OFFSET)
            if chunk:
                encoded = self.tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
                for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
                    start, end = start + chunk_start, end + chunk_start
                    supervised = end > start and any(
                        start < s_end and end > s_start for s_start, s_end in supervised_spans
                    )
                    ids.append(token)
                    labels.append(token if supervised else IGNORE_INDEX)
                    offsets.append((start, end))
            chunk_start += len(chunk) + len(IMAGE_TOKEN)
        return ids, labels, offsets, len(chunks) - 1

    def encode_segments(
        self,
        segments: Sequence[Segment],
        truncate: bool = False,
        add_bos: bool = True,
        return_offsets: bool = False,
    ) -> EncodedSample:
        """Tokenise rendered segments, expand the image placeholder and insert the alignment slot.

        At most one ``<image>`` per sample. With ``truncate``, sequences longer than ``model_max_length`` are cut at
        the end; a cut that would remove image positions raises ``ValueError``. ``add_bos=False`` leaves out the
        tokenizer's BOS (the alignment slot then comes first); ``return_offsets`` fills ``offsets``.
        """
        ids, labels, offsets, n_images = self._tokenize_segments(segments, add_bos)
        if n_images > 1:
            raise ValueError(f"a sample may hold one {IMAGE_TOKEN}, found {n_images}")
        if n_images:
            expand_image(
                ids,
                labels,
                ids.index(self.image_token_id),
                image_token_id=self.image_token_id,
                num_image_tokens=self.num_image_tokens,
                alignment_token_id=self.alignment_token_id if self.use_alignment_token else None,
                alignment_slot=1 if add_bos and self.bos_token_id is not None else 0,
                columns=[(offsets, NO_OFFSET)],
            )
        if truncate and len(ids) > self.model_max_length:
            if n_images and ids[self.model_max_length - 1 :].count(self.image_token_id) > 0:
                raise ValueError(
                    f"sample of {len(ids)} tokens exceeds model_max_length {self.model_max_length} inside its image"
                )
            ids, labels = ids[: self.model_max_length], labels[: self.model_max_length]
            offsets = offsets[: self.model_max_length]
        return EncodedSample(ids, labels, bool(n_images), offsets=offsets if return_offsets else None)

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
        batch = {
            "input_ids": pad_rows([s.input_ids for s in samples], self.tokenizer.pad_token_id, padding_side),
            "attention_mask": pad_rows([[1] * len(s.input_ids) for s in samples], 0, padding_side),
            "labels": pad_rows([s.labels for s in samples], IGNORE_INDEX, padding_side),
        }
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
        text: str | Sequence[str] | None = None,
        images=None,
        padding_side: str = "left",
        aspect_ratio: str | None = None,
        *,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        return_text_replacement_offsets: bool = False,
        videos=None,
        audio=None,
    ) -> BatchFeature:
        """Inference inputs for prompts that already went through a template (``<image>`` marks the image).

        ``images[i]`` belongs to ``text[i]`` (``None`` for a text-only prompt; a list per prompt, as transformers'
        ``apply_chat_template`` passes them, holds at most one image). Images may be PIL images, paths or URLs. The
        call also takes transformers' keyword form (``processor(images=..., text=..., return_tensors="pt")``, images
        first when positional).

        Returns ``input_ids`` / ``attention_mask`` ``[B, L]`` (left padding by default, ready for batched
        ``generate``) and ``pixel_values`` ``[n_images, 3, H, W]`` for the prompts with an image, in row order.
        ``return_tensors=None`` gives lists for the ids (``pixel_values`` stays a tensor); ``padding=False`` leaves
        rows unpadded (lists only); ``add_special_tokens=False`` leaves out BOS; ``return_offsets_mapping`` adds each
        id's ``(start, end)`` characters in its prompt (``(0, 0)`` for BOS, markers and padding).
        ``return_text_replacement_offsets`` is accepted for ``apply_chat_template`` and adds nothing: offsets already
        refer to the prompt text, before the image expansion.
        """
        if videos is not None or audio is not None:
            raise ValueError(f"{type(self).__name__} takes text and images only (got videos or audio)")
        if text is None or not _is_text(text):
            if _is_text(images):  # transformers' positional order: images, then text
                text, images = images, text
            else:
                raise ValueError("pass the prompt text (a string or a list of strings) as `text`")
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(f"return_tensors must be one of {RETURN_TENSORS}, got {return_tensors!r}")
        pad = _padding_flag(padding)
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = _images_per_prompt(images, len(texts))
        real_images = [image for image in per_prompt if image is not None]
        pixels = iter(self.preprocess_images(real_images, aspect_ratio) if real_images else [])
        samples = []
        for prompt, image in zip(texts, per_prompt):
            sample = self.encode_segments([Segment(prompt)], add_bos=add_special_tokens, return_offsets=True)
            if sample.has_image != (image is not None):
                raise ValueError(f"prompt {prompt[:40]!r}...: an image must be given exactly when it holds <image>")
            if image is not None:
                sample.pixel_values = next(pixels)
            samples.append(sample)
        if pad:
            batch = self.collate(samples, padding_side=padding_side)
            del batch["labels"]
            if return_offsets_mapping:
                batch["offset_mapping"] = torch.tensor(
                    _padded_offsets(samples, batch["input_ids"].shape[1], padding_side)
                )
        else:
            if return_tensors is not None and len({len(sample.input_ids) for sample in samples}) > 1:
                raise ValueError("prompts of different lengths need padding=True to become tensors")
            batch = {
                "input_ids": [sample.input_ids for sample in samples],
                "attention_mask": [[1] * len(sample.input_ids) for sample in samples],
            }
            if return_offsets_mapping:
                batch["offset_mapping"] = [sample.offsets for sample in samples]
            pixel_rows = [sample.pixel_values for sample in samples if sample.has_image]
            if pixel_rows:
                batch["pixel_values"] = torch.stack(pixel_rows)
            batch = BatchFeature(batch, tensor_type=return_tensors)
        if return_tensors is None:
            for key in ("input_ids", "attention_mask", "offset_mapping"):
                if isinstance(batch.get(key), torch.Tensor):
                    batch[key] = batch[key].tolist()
        return batch

    # --- chat templates (transformers' apply_chat_template) -----------------------------------------------------
    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """transformers' ``apply_chat_template`` with our templates: ``chat_template`` may also be a template name
        (``"plain"``, ``"chatml"``, an alias like ``"v1"``); unknown names raise ``ValueError``. Tokenised, the ids
        equal the processor's own (image expansion, alignment slot); ``return_assistant_tokens_mask`` marks the
        tokens the labels of :meth:`encode_conversation` supervise."""
        if chat_template is not None and chat_template not in self.chat_template and not _is_jinja(chat_template):
            name = resolve_template_name(chat_template)
            chat_template = self.chat_template.get(name) or jinja_template(name)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    # --- decoding ----------------------------------------------------------------------------------------------
    def _without_markers(self, token_ids) -> list:
        """``token_ids`` (1-D or 2-D, list or tensor) as lists without image / alignment markers."""
        rows = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        markers = {self.image_token_id, self.alignment_token_id}
        if rows and not isinstance(rows[0], int):
            return [[token for token in row if token not in markers] for row in rows]
        return [token for token in rows if token not in markers]

    def decode(self, token_ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True, **kwargs) -> str:
        """Decode generated ids, dropping markers, special tokens and stop strings, stripped."""
        text = self.tokenizer.decode(
            self._without_markers(token_ids), skip_special_tokens=skip_special_tokens, **kwargs
        )
        # A whitespace-only stop (the plain template's newline) is left to generate's stopping: cut here, a leading
        # newline would empty the answer.
        return cut_at_stops(text, [stop for stop in self.template.stop_strings if stop.strip()]).strip()

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        """The tokenizer's ``batch_decode`` of ``[B, L]`` ids, image / alignment markers dropped first."""
        return self.tokenizer.batch_decode(self._without_markers(sequences), **kwargs)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Decode ``generate`` output (the ``image-text-to-text`` pipeline's step), markers dropped."""
        ids = self._without_markers(generated_outputs)
        if ids and not isinstance(ids[0], int):
            return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)


def _is_text(value) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, str) for item in value)
    )


def _is_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template


def _padding_flag(padding: bool | str) -> bool:
    """``True`` / ``"longest"``: pad to the longest row; ``False`` / ``"do_not_pad"``: no padding."""
    if padding in (True, "longest"):
        return True
    if padding in (False, None, "do_not_pad"):
        return False
    raise ValueError(f"padding must be True/'longest' or False/'do_not_pad', got {padding!r}")


def _load(image):
    """A PIL image from a PIL image, a path or a URL."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(str(image))
    raise TypeError(f"an image must be a PIL image, a path or a URL, got {type(image).__name__}")


def _images_per_prompt(images, n_prompts: int) -> list:
    """One image or ``None`` per prompt from ``None``, one image, a flat list or a list of lists (one per prompt)."""
    if images is None:
        return [None] * n_prompts
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) != n_prompts:
        raise ValueError(f"pass one image (or None) per prompt: {n_prompts} prompts, {len(images)} images")
    per_prompt = []
    for index, item in enumerate(images):
        if isinstance(item, (list, tuple)):
            if len(item) > 1:
                raise ValueError(f"prompt {index}: a prompt may hold one image, got {len(item)}")
            item = item[0] if item else None
        per_prompt.append(None if item is None else _load(item))
    return per_prompt


def _padded_offsets(samples: Sequence[EncodedSample], length: int, padding_side: str) -> list[list[tuple[int, int]]]:
    rows = []
    for sample in samples:
        padding = [NO_OFFSET] * (length - len(sample.offsets))
        rows.append(sample.offsets + padding if padding_side == "right" else padding + sample.offsets)
    return rows


def _read_settings(path: Path) -> dict:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object of processor settings")
    return settings


def _check_settings(settings: dict, origin) -> None:
    unknown = sorted(set(settings) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"{origin}: unknown processor settings {unknown}; known: {list(SETTING_NAMES)}")
    missing = [name for name in REQUIRED_SETTINGS if name not in settings]
    if missing:
        raise ValueError(f"{origin}: processor settings {missing} are missing")


def load_image_processor(path: str | Path, **kwargs):
    """The vision encoder's image processor, PIL backend (no torchvision needed)."""
    return AutoImageProcessor.from_pretrained(str(path), backend="pil", **kwargs)


AutoProcessor.register(AlignGPTConfig, AlignGPTProcessor, exist_ok=True)
