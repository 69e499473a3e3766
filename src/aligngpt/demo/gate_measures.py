"""The gate probe's instruments: gradient norms and drift during training, the gate per phrasing, the gate's input
and how well it separates loose prompts from clean ones. :mod:`aligngpt.demo.gate_probe` runs them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from aligngpt.fileio import read_jsonl

GRAD_EVERY = 10  # optimizer steps between gradient-norm records
GATE_OUTPUT = "alignment.gate.2"  # the gate's last Linear (logits over the N-1 local levels)
GROUPS = {"gate": ("alignment.gate.",), "language_model": ("language_model.", "lm_head."), "projector": ("projector.",)}
BASE_PREFIX = "model."  # module names are the saved names under the base model's prefix
PROBE_HOLDOUT = 0.5  # share of the images held out to score the nearest-centroid probe on the gate's input


def caption_eval_images(world_dir: Path) -> list:
    """The RGB images of the world's caption evaluation set, in question order."""
    from PIL import Image

    questions = read_jsonl(world_dir / "eval" / "caption" / "questions.jsonl")
    return [Image.open(world_dir / "images" / q["image"]).convert("RGB") for q in questions]


def gradient_callback():
    """A Trainer callback recording group gradient norms and the gate's drift (built lazily: imports transformers)."""
    import torch
    from transformers import TrainerCallback

    class GateGradientLog(TrainerCallback):
        def __init__(self):
            self.records: list[dict] = []
            self._start: dict[str, torch.Tensor] = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._start = {
                n: p.detach().clone()
                for n, p in model.named_parameters()
                if n.removeprefix(BASE_PREFIX).startswith(GATE_OUTPUT)
            }

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step % GRAD_EVERY:
                return
            squares = dict.fromkeys(GROUPS, 0.0)
            for name, param in model.named_parameters():
                if param.grad is None:
                    continue
                for group, prefixes in GROUPS.items():
                    if name.removeprefix(BASE_PREFIX).startswith(prefixes):
                        squares[group] += float(param.grad.detach().float().pow(2).sum())
            params = dict(model.named_parameters())
            moved = sum(float((params[n].detach() - w).pow(2).sum()) for n, w in self._start.items())
            size = sum(float(w.pow(2).sum()) for w in self._start.values())
            self.records.append({
                "step": state.global_step,
                **{f"{group}_grad_norm": math.sqrt(value) for group, value in squares.items()},
                "gate_output_drift": math.sqrt(moved / size) if size else 0.0,
            })  # fmt: skip

    return GateGradientLog()


def scale_gate_init(source: Path, target: Path, scale: float) -> Path:
    """Copy the model folder ``source`` to ``target`` (without checkpoints) with the gate's output layer x ``scale``."""
    from safetensors.torch import load_file, save_file

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"))
    weights_file = target / "model.safetensors"
    tensors = load_file(str(weights_file))
    scaled = [name for name in tensors if name.startswith(GATE_OUTPUT)]
    if not scaled:
        raise ValueError(f"{weights_file}: no {GATE_OUTPUT}.* tensors to scale (a model without a gate?)")
    for name in scaled:
        tensors[name] = tensors[name] * scale
    save_file(tensors, str(weights_file), metadata={"format": "pt"})
    return target


def gate_input_separation(inputs: dict[str, np.ndarray], loose: tuple[str, ...]) -> dict:
    """How well the gate's input tells loose prompts from clean ones.

    Args:
        inputs: per prompt, ``[n_images, num_image_tokens]`` gate inputs for the same images.
        loose: the loose prompts among ``inputs``.

    Returns ``fisher`` (per input dimension, squared difference of the loose and clean means over the mean
    within-group variance across images; the maximum over dimensions), ``relative_shift`` (norm of the mean difference
    over the mean norm of the inputs), and ``probe_accuracy``: a nearest-centroid classifier (loose vs clean) on
    inputs standardised per dimension, fitted on the first ``1 - PROBE_HOLDOUT`` of the images and scored on the rest
    (0.5 = chance; the two classes are weighted equally).
    """
    loose_rows = np.concatenate([inputs[p] for p in inputs if p in loose])
    clean_rows = np.concatenate([inputs[p] for p in inputs if p not in loose])
    within = 0.5 * (loose_rows.var(0) + clean_rows.var(0)) + 1e-12
    difference = loose_rows.mean(0) - clean_rows.mean(0)
    n_images = next(iter(inputs.values())).shape[0]
    split = int(n_images * (1 - PROBE_HOLDOUT))

    def part(prompts, rows):
        return np.concatenate([inputs[p][rows] for p in prompts])

    loose_p, clean_p = [p for p in inputs if p in loose], [p for p in inputs if p not in loose]
    fit, test = slice(0, split), slice(split, n_images)
    fitted = np.concatenate([part(loose_p, fit), part(clean_p, fit)])
    centre, scale = fitted.mean(0), fitted.std(0) + 1e-12
    centroid_loose = ((part(loose_p, fit) - centre) / scale).mean(0)
    centroid_clean = ((part(clean_p, fit) - centre) / scale).mean(0)

    def is_loose(rows):
        rows = (rows - centre) / scale
        return np.linalg.norm(rows - centroid_loose, axis=1) < np.linalg.norm(rows - centroid_clean, axis=1)

    accuracy = 0.5 * (is_loose(part(loose_p, test)).mean() + (~is_loose(part(clean_p, test))).mean())
    return {
        "fisher": float((difference**2 / within).max()),
        "relative_shift": float(np.linalg.norm(difference) / np.linalg.norm(clean_rows, axis=1).mean()),
        "probe_accuracy": float(accuracy),
        "input_std_across_images": float(np.sqrt(within).mean()),
    }


def gate_per_phrasing(model_dir: Path, world_dir: Path, prompts: tuple[str, ...]) -> dict:
    """:func:`~aligngpt.demo.analysis.gate_summary` of the gate's weights per prompt on the caption evaluation
    images, without generating (one prefill each): e.g. the gate a stage 2 starts from."""
    import aligngpt
    from aligngpt.demo.analysis import gate_summary

    pipeline = aligngpt.load(model_dir, device="cpu")
    images = caption_eval_images(world_dir)
    return {prompt: gate_summary([pipeline.alignment_weights(image, prompt) for image in images]) for prompt in prompts}


def gate_inputs(model_dir: Path, world_dir: Path, prompts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The gate's input ``[n_images, num_image_tokens]`` for each prompt on the caption evaluation images."""
    import torch

    import aligngpt

    pipeline = aligngpt.load(model_dir, device="cpu")
    gate = pipeline.model.alignment.gate
    images = caption_eval_images(world_dir)
    captured: list[torch.Tensor] = []
    handle = gate.register_forward_hook(lambda module, args, output: captured.append(args[0].detach().float()))
    try:
        result = {}
        for prompt in prompts:
            captured.clear()
            for image in images:
                pipeline.alignment_weights(image, prompt)
            result[prompt] = torch.cat(captured).numpy()
    finally:
        handle.remove()
    return result
