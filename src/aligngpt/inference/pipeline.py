"""``aligngpt.load``: a ready model + processor + template, with batched generation and the gate's decision."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from aligngpt.model_files import check_model_source, verify_model_folder, without_weight_progress_bars
from aligngpt.modeling import AlignGPTForConditionalGeneration
from aligngpt.processing import IMAGE_TOKEN, AlignGPTProcessor, ChatTemplate, get_template
from aligngpt.processing.stops import end_token_ids

OFFICIAL_MODEL_TYPES = ("aligngpt", "llava_llama", "llava")


@dataclass
class Answer:
    """One generated answer.

    ``alignment_weights``: the gate softmax over the N-1 local levels for the prompt (``None`` without a gate);
    ``level_coefficients``: the weight of every level row ``E[0..N-1]`` in the alignment embedding.
    """

    text: str
    token_ids: list[int]
    alignment_weights: list[float] | None = None
    level_coefficients: list[float] | None = None


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None
    stop: Sequence[str] = ()

    def generate_kwargs(self) -> dict:
        sample = self.temperature > 0
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        if sample:
            kwargs["temperature"] = self.temperature
            kwargs["top_p"] = 1.0 if self.top_p is None else self.top_p
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


def is_official_checkpoint(path: Path) -> bool:
    """An official AlignGPT / LLaVA-1.5 folder: flat LLaMA config with ``mm_vision_tower``."""
    config_path = path / "config.json"
    if not config_path.is_file():
        return False
    config = json.loads(config_path.read_text())
    return config.get("model_type") in OFFICIAL_MODEL_TYPES and "mm_vision_tower" in config


class AlignGPTPipeline:
    """Model, processor and chat template together.

    Use :func:`load` to build one. ``template`` defaults to the model config's ``chat_template_name``.
    """

    def __init__(
        self,
        model: AlignGPTForConditionalGeneration,
        processor: AlignGPTProcessor,
        template: str | None = None,
    ):
        self.model = model.eval()
        self.processor = processor
        self.template: ChatTemplate = get_template(template or model.config.chat_template_name)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- prompts -----------------------------------------------------------------------------------------------
    def build_prompt(self, message: str, has_image: bool, history: Sequence[tuple[str, str]] = ()) -> str:
        """Template text for ``message``; the image placeholder goes in front of the first user turn."""
        if has_image and IMAGE_TOKEN not in message and not any(IMAGE_TOKEN in q for q, _ in history):
            if history:
                history = [(f"{IMAGE_TOKEN}\n{history[0][0]}", history[0][1]), *history[1:]]
            else:
                message = f"{IMAGE_TOKEN}\n{message}"
        return self.template.generation_prompt(message, list(history))

    def encode(
        self, prompts: Sequence[str], images: Sequence[Image.Image | None], aspect_ratio: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Left-padded model inputs on the model's device."""
        batch = self.processor(list(prompts), list(images), padding_side="left", aspect_ratio=aspect_ratio)
        dtype = self.model.dtype
        return {
            key: value.to(self.device, dtype=dtype if key == "pixel_values" else None) for key, value in batch.items()
        }

    def _stop_kwargs(self, stop: Sequence[str]) -> dict:
        stops = [s for s in (*self.template.stop_strings, *stop) if s]
        eos = self.processor.tokenizer.eos_token
        extra = [s for s in stops if s != eos]
        kwargs = {"pad_token_id": self.processor.tokenizer.pad_token_id}
        if extra:
            kwargs.update(stop_strings=extra, tokenizer=self.processor.tokenizer)
        return kwargs

    # --- generation --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_batch(
        self,
        requests: Sequence[tuple[Image.Image | None, str]],
        settings: GenerationSettings | None = None,
        *,
        apply_template: bool = True,
        aspect_ratio: str | None = None,
        alignment_levels: Sequence[int] | None = None,
    ) -> list[Answer]:
        """Answers for ``(image, message)`` pairs in one batched ``generate``.

        Args:
            requests: the image (or ``None``) and the user message (or, with ``apply_template=False``, the full
                prompt text containing ``<image>``).
            settings: decoding settings (greedy by default).
            aspect_ratio: override the processor's ``pad``/``square`` (some benchmarks evaluate without padding).
            alignment_levels: force the alignment token to ``E[level]`` per request (level sweeps).
        """
        settings = settings or GenerationSettings()
        images = [image for image, _ in requests]
        prompts = [self.build_prompt(text, image is not None) if apply_template else text for image, text in requests]
        batch = self.encode(prompts, images, aspect_ratio)
        if alignment_levels is not None:
            batch["alignment_levels"] = torch.tensor(list(alignment_levels), device=self.device)
        with _capture_alignment_weights(self.model) as captured:
            output = self.model.generate(**batch, **settings.generate_kwargs(), **self._stop_kwargs(settings.stop))
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        weights = captured.get("weights")
        answers = []
        for row, tokens in enumerate(new_tokens):
            ids = _strip_padding(tokens.tolist(), self.processor.tokenizer)
            alpha = weights[row].tolist() if weights is not None and images[row] is not None else None
            answers.append(Answer(self.processor.decode(ids), ids, alpha, self.level_coefficients(alpha)))
        return answers

    def chat(
        self,
        image: Image.Image | None,
        message: str,
        history: Sequence[tuple[str, str]] = (),
        settings: GenerationSettings | None = None,
    ) -> Answer:
        """One answer to ``message`` after ``history`` (pairs of earlier user and assistant texts)."""
        prompt = self.build_prompt(message, image is not None, history)
        return self.generate_batch([(image, prompt)], settings, apply_template=False)[0]

    def stream_chat(
        self,
        image: Image.Image | None,
        message: str,
        history: Sequence[tuple[str, str]] = (),
        settings: GenerationSettings | None = None,
    ) -> Iterator[str]:
        """Yield the answer text piece by piece as tokens are generated."""
        from threading import Thread

        from transformers import TextIteratorStreamer

        settings = settings or GenerationSettings()
        prompt = self.build_prompt(message, image is not None, history)
        batch = self.encode([prompt], [image])
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {
            **batch,
            **settings.generate_kwargs(),
            **self._stop_kwargs(settings.stop),
            "streamer": streamer,
        }
        worker = Thread(target=_generate_no_grad, args=(self.model, kwargs), daemon=True)
        worker.start()
        pending = ""
        stops = [s for s in (*self.template.stop_strings, *settings.stop) if s.strip()]
        for piece in streamer:
            pending += piece
            cut = min((pending.find(s) for s in stops if s in pending), default=-1)
            if cut >= 0:
                if pending[:cut]:
                    yield pending[:cut]
                break
            hold = max((len(s) - 1 for s in stops), default=0)
            emit, pending = (pending[: len(pending) - hold], pending[len(pending) - hold :]) if hold else (pending, "")
            if emit:
                yield emit
        else:
            if pending:
                yield pending
        worker.join()

    @torch.inference_mode()
    def alignment_weights(self, image: Image.Image, message: str) -> list[float] | None:
        """The gate's weights for one prompt, without generating."""
        batch = self.encode([self.build_prompt(message, True)], [image])
        weights = self.model(**batch, logits_to_keep=1).alignment_weights
        return None if weights is None else weights[0].tolist()

    def level_coefficients(self, alpha: Sequence[float] | None) -> list[float] | None:
        """Weight of each level row in the alignment embedding, from the gate weights and the alignment mode."""
        config = self.model.config
        return config.alignment.level_coefficients(config.num_alignment_levels, alpha)


def _generate_no_grad(model, kwargs) -> None:
    with torch.inference_mode():
        model.generate(**kwargs)


def _strip_padding(ids: list[int], tokenizer) -> list[int]:
    """Drop everything from the first EOS / pad after the answer."""
    ends = end_token_ids(tokenizer)
    for position, token in enumerate(ids):
        if token in ends:
            return ids[:position]
    return ids


@contextlib.contextmanager
def _capture_alignment_weights(model) -> Iterator[dict]:
    """Keep the ``alignment_weights`` of the prefill forward during ``generate``."""
    captured: dict = {}

    def hook(module, args, output):
        if getattr(output, "alignment_weights", None) is not None and "weights" not in captured:
            captured["weights"] = output.alignment_weights.float().cpu()

    handle = model.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def load(
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    template: str | None = None,
    vision_tower: str | os.PathLike | None = None,
) -> AlignGPTPipeline:
    """Load a model folder (ours, or an official AlignGPT / LLaVA-1.5 checkpoint converted in memory).

    Raises :class:`~aligngpt.model_files.ModelNotFoundError` for a folder that does not exist and
    :class:`~aligngpt.model_files.DamagedModelError` naming a truncated or damaged file.

    Args:
        path: a local folder (hub ids work where the hub is reachable).
        dtype: e.g. ``torch.bfloat16`` or ``"float16"``; default float32 on CPU, bfloat16 on GPU.
        device: default ``cuda`` when available, else ``cpu``.
        template: chat template override (default: the model's own; official checkpoints use ``vicuna_v1``).
        vision_tower: for official checkpoints, overrides ``mm_vision_tower``.
    """
    check_model_source(path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    local = Path(path)
    if local.is_dir():
        verify_model_folder(local)
    with without_weight_progress_bars():
        if local.is_dir() and is_official_checkpoint(local):
            from aligngpt.convert.official import convert_official

            model, processor, _ = convert_official(local, None, vision_tower=vision_tower, dtype=dtype)
        else:
            model = AlignGPTForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
            processor = AlignGPTProcessor.from_pretrained(path)
    return AlignGPTPipeline(model.to(device), processor, template)
