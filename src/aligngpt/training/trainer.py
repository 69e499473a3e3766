"""``AlignGPTTrainer``: HF ``Trainer`` with the recipe's parameter groups, our samplers and tokens/s logging.

Only four hooks are overridden:

* ``compute_loss`` asks the model for the LM head at supervised positions only (``loss_positions="supervised"``);
* ``create_optimizer`` builds AdamW groups from the recipe (per-group LR multipliers, no decay on biases/norms);
* ``_get_train_sampler`` returns a seeded sampler (modality-length grouped when asked), identical on every rank so
  runs are reproducible and resumable;
* ``log`` adds ``tokens_per_second`` (non-padding tokens, all ranks, since the previous log).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import torch
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback

from aligngpt.data.sampler import ModalityLengthGroupedSampler
from aligngpt.training.recipes import ParamGroup

# Wrapper segments that FSDP / activation checkpointing / DDP insert into parameter names.
_WRAPPER_SEGMENTS = re.compile(r"(^|\.)(_fsdp_wrapped_module|_checkpoint_wrapped_module|module|_orig_mod)(?=\.)")


def canonical_name(name: str) -> str:
    """A parameter name without wrapper segments (``module.``, ``_fsdp_wrapped_module.``...)."""
    previous = None
    while previous != name:
        previous, name = name, _WRAPPER_SEGMENTS.sub(r"\1", name).lstrip(".")
    return name


class SeededRandomSampler(Sampler[int]):
    """A random permutation drawn from ``(seed, epoch)`` only: the same order on every rank and after a resume."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class AlignGPTTrainer(Trainer):
    """HF Trainer for AlignGPT recipes.

    Args:
        param_groups: trainable parameters and LR multipliers from :meth:`Recipe.apply`.
        modality_lengths: signed lengths per sample for the modality-grouped sampler (``None``: plain shuffling).
        length_group_steps: the sampler's ``length_group_steps`` (sort runs of that many steps by length).
        Everything else goes to ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args,
        param_groups: Sequence[ParamGroup],
        modality_lengths: Sequence[int] | None = None,
        length_group_steps: int = 1,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.param_groups_spec = list(param_groups)
        self.modality_lengths = modality_lengths
        self.length_group_steps = length_group_steps
        self._tokens_at_last_log: int | None = None
        self._time_at_last_log: float | None = None
        self.add_callback(_ThroughputClock(self))

    # --- loss --------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        has_images = "pixel_values" in inputs or "vision_features" in inputs
        inputs = {**inputs, "loss_positions": "supervised"}
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if has_images:
            return result
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self._zero_image_path_term(loss)
        return (loss, outputs) if return_outputs else loss

    def _zero_image_path_term(self, loss: torch.Tensor) -> torch.Tensor:
        """``0 x`` the projector's and gate's outputs on zeros, for micro-batches without images.

        Keeps every trainable parameter in the graph on every rank (DDP without ``find_unused_parameters``, ZeRO-3
        parameter gathering stays in step across ranks); numerically a no-op. The official code's "dummy forward"
        did the same job (docs/training.md).
        """
        model = self.accelerator.unwrap_model(self.model)
        config = model.config
        term = loss.new_zeros(())
        probes = [(model.projector, config.vision_config.hidden_size)]
        if model.alignment is not None:
            probes.append((model.alignment.gate, config.num_image_tokens))
        for module, width in probes:
            params = list(module.parameters())
            if params and any(param.requires_grad for param in params):
                term = term + 0.0 * module(params[0].new_zeros(1, width)).sum()
        return term.to(loss.dtype)

    # --- optimizer ---------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay_names = {canonical_name(name) for name in self.get_decay_parameter_names(opt_model)}
        scale_of = {name: group.lr_scale for group in self.param_groups_spec for name, _ in group.params}
        buckets: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            key = canonical_name(name)
            if key not in scale_of:
                raise RuntimeError(f"parameter {key} trains but belongs to no recipe group")
            buckets.setdefault((scale_of[key], key in decay_names), []).append(param)
        groups = [
            {
                "params": params,
                "lr": self.args.learning_rate * scale,
                "weight_decay": self.args.weight_decay if decay else 0.0,
            }
            for (scale, decay), params in sorted(buckets.items(), key=lambda item: (-item[0][0], not item[0][1]))
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # --- sampling ----------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.modality_lengths is not None:
            return ModalityLengthGroupedSampler(
                self.modality_lengths,
                self.args.per_device_train_batch_size,
                world_size=self.args.world_size,
                grad_accum=self.args.gradient_accumulation_steps,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                length_group_steps=self.length_group_steps,
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return SeededRandomSampler(len(dataset), seed)

    # --- logging -----------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        now, tokens = time.perf_counter(), self.state.num_input_tokens_seen
        if "loss" in logs and self._time_at_last_log is not None and now > self._time_at_last_log:
            logs["tokens_per_second"] = round((tokens - self._tokens_at_last_log) / (now - self._time_at_last_log), 1)
        if "loss" in logs:
            self._tokens_at_last_log, self._time_at_last_log = tokens, now
        super().log(logs, start_time)


class _ThroughputClock(TrainerCallback):
    """Starts the tokens/s clock when training (or a resumed run) begins."""

    def __init__(self, trainer: AlignGPTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._tokens_at_last_log = state.num_input_tokens_seen
        self.trainer._time_at_last_log = time.perf_counter()
