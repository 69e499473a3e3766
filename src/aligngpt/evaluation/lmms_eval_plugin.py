"""lmms-eval model plugin: ``lmms-eval --model aligngpt --model_args pretrained=PATH``.

lmms-eval (>= 0.7) finds external models through the Python entry-point group ``lmms_eval.models``; the entry point
``aligngpt = "aligngpt.evaluation.lmms_eval_plugin:manifest"`` returns the :class:`ModelManifest` naming
:class:`AlignGPTLmms`. The class implements lmms-eval's "simple" model interface (plain-text contexts, the images
from each task's ``doc_to_visual``); the AlignGPT chat template is applied here, with ``<image>`` put in front of
the question as in LLaVA-1.5 evaluation.

Request layouts (``Instance.args``) of lmms-eval's simple models:

- ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``
- ``loglikelihood``: ``(context, continuation | doc_to_target, doc_to_visual, doc_id, task, split)``, or
  ``(context, continuation)`` for the unconditional requests of ``multiple_choice`` tasks
- ``generate_until_multi_round``: ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``

This module imports lmms-eval; the rest of ``aligngpt`` never imports it.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from aligngpt.data.images import to_rgb
from aligngpt.processing.stops import cut_at_stops

MODEL_ID = "aligngpt"
CLASS_PATH = f"{__name__}.AlignGPTLmms"
DEFAULT_MAX_NEW_TOKENS = 1024  # what lmms-eval's LLaVA backends use when a task sets no limit
MULTI_IMAGE_POLICIES = ("error", "first")


def manifest():
    """Entry-point payload for the ``lmms_eval.models`` group: registers ``aligngpt`` with lmms-eval."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


@dataclass
class _Prompt:
    """One request resolved to the user message and its (at most one) image."""

    context: str
    image: Image.Image | None


class AlignGPTLmms(lmms):
    """AlignGPT as an lmms-eval model.

    Model arguments (``--model_args key=value,...``):
        pretrained: model folder (ours or an official AlignGPT / LLaVA-1.5 checkpoint); required.
        device: ``cuda``, ``cuda:1``, ``cpu``...; default ``cuda`` when available (``cuda:LOCAL_RANK`` under
            ``accelerate launch`` / ``torchrun``).
        dtype: ``float16``, ``bfloat16``, ``float32``; default bfloat16 on GPU, float32 on CPU.
        batch_size: requests per forward / generate call.
        template: chat template override (default: the model's).
        aspect_ratio: ``pad`` or ``square`` override (default: the model's; a task's ``image_aspect_ratio``
            generation kwarg wins).
        max_new_tokens: limit when a task sets none.
        multi_image: ``error`` (default) or ``first`` for documents with several images (AlignGPT takes one).
        max_batch_size: accepted for lmms-eval's ``--max_batch_size`` and ignored (no automatic batch size).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        template: str | None = None,
        aspect_ratio: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        multi_image: str = "error",
        max_batch_size: int | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            raise TypeError(f"aligngpt: unknown model_args {sorted(unused)}; see AlignGPTLmms's docstring")
        if multi_image not in MULTI_IMAGE_POLICIES:
            raise ValueError(f"aligngpt: multi_image must be one of {MULTI_IMAGE_POLICIES}, got {multi_image!r}")
        from aligngpt.inference.pipeline import load

        self.batch_size = _parse_batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.multi_image = multi_image
        self.aspect_ratio = aspect_ratio
        self.pipeline = load(str(pretrained), dtype=dtype, device=_resolve_device(device), template=template)

    @property
    def model(self):
        return self.pipeline.model

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    # --- requests -> prompts ----------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _prompt(self, context: str, doc_to_visual: Callable | None, doc_id: int, task: str, split: str) -> _Prompt:
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else None
        return _Prompt(context, self._single_image(visuals, f"task {task!r} doc {doc_id}"))

    def _single_image(self, visuals: Any, where: str) -> Image.Image | None:
        """The document's image as RGB, ``None`` for text-only documents; anything else is a clear error."""
        if visuals is None:
            return None
        if isinstance(visuals, Image.Image):
            visuals = [visuals]
        visuals = [visual for visual in _flatten(visuals) if visual is not None]
        if not visuals:
            return None
        not_images = [type(visual).__name__ for visual in visuals if not isinstance(visual, Image.Image)]
        if not_images:
            raise ValueError(f"aligngpt: {where}: only images are supported, got {', '.join(not_images)} visuals")
        if len(visuals) > 1 and self.multi_image == "error":
            raise ValueError(
                f"aligngpt: {where} has {len(visuals)} images; AlignGPT takes one per prompt "
                "(pass multi_image=first in --model_args to keep the first)"
            )
        return to_rgb(visuals[0])

    # --- generation -------------------------------------------------------------------------------------------
    def _settings(self, gen_kwargs: dict) -> tuple[Any, list[str], str | None]:
        """``(GenerationSettings, until, aspect_ratio)`` from a task's generation kwargs."""
        from aligngpt.inference.pipeline import GenerationSettings

        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, list | tuple):
            raise ValueError(f"aligngpt: gen_kwargs['until'] must be a string or a list, got {type(until).__name__}")
        if int(gen_kwargs.get("num_beams") or 1) > 1:
            raise ValueError("aligngpt: beam search (num_beams > 1) is not supported")
        sample = gen_kwargs.get("do_sample", True) is not False
        temperature = float(gen_kwargs.get("temperature") or 0.0) if sample else 0.0
        top_p = gen_kwargs.get("top_p")
        settings = GenerationSettings(
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            temperature=temperature,
            top_p=None if top_p is None else float(top_p),
            stop=tuple(until),
        )
        return settings, list(until), gen_kwargs.get("image_aspect_ratio") or self.aspect_ratio

    def _generate(self, prompts: Sequence[_Prompt], gen_kwargs: dict) -> list[str]:
        settings, until, aspect_ratio = self._settings(gen_kwargs)
        answers = self.pipeline.generate_batch(
            [(prompt.image, prompt.context) for prompt in prompts], settings, aspect_ratio=aspect_ratio
        )
        return [cut_at_stops(answer.text, until) for answer in answers]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batched generation; requests are grouped by generation kwargs and sorted by length inside a group."""
        args = [request.args for request in requests]
        results: list[str | None] = [None] * len(args)
        progress = tqdm(total=len(args), desc="aligngpt generate_until", disable=self.rank != 0)
        for gen_kwargs, indices in _group_by_kwargs(args, key_index=1):
            indices.sort(key=lambda i: -len(args[i][0]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                prompts = [self._prompt(args[i][0], *args[i][2:6]) for i in chunk]
                for i, text in zip(chunk, self._generate(prompts, gen_kwargs)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (args[i][0], args[i][1]), text)
                progress.update(len(chunk))
        progress.close()
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Multi-round tasks: after each answer the task's ``doc_to_text`` gives the next round or stops.

        ``doc_to_text(doc, previous_output=..., round_idx=..., previous_round_info=...)`` returns
        ``(visuals, context, stop, round_outputs, round_info)``; each round is a fresh single-turn prompt (the task
        folds earlier answers into the context). Returns the answers of every round per request.
        """
        results = []
        for request in tqdm(requests, desc="aligngpt multi-round", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            gen_kwargs = {key: value for key, value in gen_kwargs.items() if key != "until"}
            doc = self._doc(task, split, doc_id)
            where = f"task {task!r} doc {doc_id}"
            image = self._single_image(doc_to_visual(doc), where)
            outputs: list[str] = []
            info = None
            for round_idx in itertools.count():
                if round_idx:
                    visuals, context, stop, outputs, info = doc_to_text(
                        doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=info
                    )
                    outputs = list(outputs)
                    if stop:
                        break
                    image = self._single_image(visuals, where)
                outputs.append(self._generate([_Prompt(context, image)], gen_kwargs)[0])
            results.append(outputs)
        return results

    # --- scoring ----------------------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation tokens | context, image), whether greedy decoding yields them)``.

        The continuation follows the assistant prefix of the chat template (``... ASSISTANT:`` + ``" yes"``);
        its tokens are those of the joint tokenisation that overlap the continuation's characters.
        """
        results: list[tuple[float, bool]] = []
        progress = tqdm(total=len(requests), desc="aligngpt loglikelihood", disable=self.rank != 0)
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            pairs = [self._scoring_pair(request.args) for request in chunk]
            results.extend(self.score_continuations(pairs))
            progress.update(len(chunk))
        progress.close()
        return results

    def _scoring_pair(self, args: tuple) -> tuple[_Prompt, str]:
        if len(args) == 2:  # unconditional request of multiple_choice tasks: no document, no image
            return _Prompt(args[0], None), args[1]
        context, target, doc_to_visual, doc_id, task, split = args
        continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
        if isinstance(continuation, list | tuple):
            if len(continuation) != 1:
                raise ValueError(f"aligngpt: task {task!r} doc {doc_id}: expected one target, got {continuation!r}")
            continuation = continuation[0]
        return self._prompt(context, doc_to_visual, doc_id, task, split), str(continuation)

    @torch.inference_mode()
    def score_continuations(self, pairs: Sequence[tuple[_Prompt, str]]) -> list[tuple[float, bool]]:
        """Score ``(prompt, continuation)`` pairs in one right-padded forward pass."""
        from aligngpt.modeling.aligngpt import IGNORE_INDEX
        from aligngpt.processing.templates import Segment

        processor = self.pipeline.processor
        samples = []
        for prompt, continuation in pairs:
            text = self.pipeline.build_prompt(prompt.context, prompt.image is not None)
            sample = processor.encode_segments([Segment(text), Segment(continuation, supervised=True)])
            if prompt.image is not None:
                sample.pixel_values = processor.preprocess_images([prompt.image], self.aspect_ratio)[0]
            samples.append(sample)
        batch = processor.collate(samples, padding_side="right")
        labels = batch.pop("labels")
        inputs = {
            key: value.to(self.device, dtype=self.model.dtype if key == "pixel_values" else None)
            for key, value in batch.items()
        }
        logits = self.model(**inputs).logits[:, :-1].float()  # [B, L-1, V]: position t predicts token t+1
        targets = labels[:, 1:].to(logits.device)  # [B, L-1]
        scored = targets != IGNORE_INDEX
        log_probs = torch.log_softmax(logits[scored], dim=-1)  # [n_scored, V]
        wanted = targets[scored]
        token_scores = log_probs.gather(-1, wanted.unsqueeze(-1)).squeeze(-1)  # [n_scored]
        token_greedy = log_probs.argmax(-1) == wanted
        rows = scored.nonzero()[:, 0]
        results = []
        for row in range(len(samples)):
            mine = rows == row
            results.append((float(token_scores[mine].sum()), bool(token_greedy[mine].all())))
        return results


def _group_by_kwargs(args: Sequence[tuple], key_index: int) -> list[tuple[dict, list[int]]]:
    """Request indices grouped by identical generation kwargs, in order of first appearance."""
    groups: dict[str, tuple[dict, list[int]]] = {}
    for index, request in enumerate(args):
        kwargs = request[key_index] or {}
        key = json.dumps(kwargs, sort_keys=True, default=str)
        groups.setdefault(key, (dict(kwargs), []))[1].append(index)
    return list(groups.values())


def _flatten(visuals: Any) -> list:
    flat = []
    for visual in visuals:
        flat.extend(_flatten(visual) if isinstance(visual, list | tuple) else [visual])
    return flat


def _parse_batch_size(value: int | str) -> int:
    if isinstance(value, str) and value.startswith("auto"):
        raise ValueError("aligngpt: automatic batch size is not supported; pass --batch_size N")
    size = int(value)
    if size < 1:
        raise ValueError(f"aligngpt: batch_size must be >= 1, got {size}")
    return size


def _resolve_device(device: str | None) -> str | None:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` when launched with one process per GPU."""
    local_rank = os.environ.get("LOCAL_RANK")
    wants_cuda = device in (None, "cuda") and torch.cuda.is_available()
    if wants_cuda and local_rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(local_rank)}"
    return device
