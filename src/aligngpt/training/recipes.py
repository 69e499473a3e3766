"""Training recipes: which parameters train, at which learning-rate scale, and how the alignment token is built.

A recipe is applied to a built model; it never changes which modules exist. Four recipes:

* ``pretrain`` (stage 1): projector + level table train, token ``A = E[level]`` from the data; all else frozen.
  ``train_llm_lr_scale`` also trains the LLM at ``lr x scale`` (an explicit toy-scale option, not the paper's recipe).
* ``finetune`` (stage 2): LLM + projector + gate train; level table and vision tower frozen; ``A`` from the
  model's ``alignment_mode`` (``adaptive`` = paper; ``global``/``local``/``uniform`` ablations; ``none`` = LLaVA-1.5).
* ``finetune-lora``: as ``finetune`` but the LLM trains through LoRA adapters (peft); projector and gate fully.
* ``finetune-qlora``: as ``finetune-lora`` with the LLM's linear layers held in 4 bits (``aligngpt.training.qlora``).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aligngpt.data.constants import Stage

if TYPE_CHECKING:  # keep ``aligngpt --help`` free of torch / transformers imports
    from torch import nn

    from aligngpt.modeling import AlignGPTForConditionalGeneration


@dataclass(frozen=True)
class ParamGroup:
    """Trainable parameters sharing one learning-rate multiplier (``lr = learning_rate x lr_scale``)."""

    name: str
    params: tuple[tuple[str, nn.Parameter], ...]
    lr_scale: float = 1.0


@dataclass(frozen=True)
class RecipeDefaults:
    """The official hyper-parameters of a stage (docs/training.md; LoRA: LLaVA-1.5's ``finetune_lora.sh``)."""

    learning_rate: float
    global_batch_size: int
    per_device_train_batch_size: int
    template: str | None  # None: the model's own chat template
    image_aspect_ratio: str
    group_by_modality_length: bool
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    num_train_epochs: float = 1.0
    model_max_length: int = 2048


class Recipe(abc.ABC):
    """Base class: subclasses set ``name``, ``stage``, ``defaults`` and implement ``param_groups``."""

    name: str
    stage: Stage
    defaults: RecipeDefaults
    uses_lora: bool = False
    quantizes_llm: bool = False  # the LLM is loaded in 4 bits before LoRA is applied (QLoRA)

    def uses_levels(self, model: AlignGPTForConditionalGeneration) -> bool:
        """Whether every image sample must carry an alignment level: stage 1 with an alignment token, except
        ``fixed:<k>``, whose token is ``E[k]`` for every sample (a learned prefix token that ignores the levels)."""
        return self.stage == "pretrain" and model.config.alignment.reads_levels

    @abc.abstractmethod
    def param_groups(self, model: nn.Module, options: RecipeOptions) -> list[ParamGroup]:
        """The parameters this recipe trains, in optimizer groups."""

    def apply(self, model: nn.Module, options: RecipeOptions) -> list[ParamGroup]:
        """Freeze everything, then enable exactly the recipe's parameters; returns the groups for the optimizer."""
        model.requires_grad_(False)
        groups = [group for group in self.param_groups(model, options) if group.params]
        for group in groups:
            for _, param in group.params:
                param.requires_grad_(True)
        if not groups:
            raise ValueError(f"recipe {self.name!r} found no parameters to train")
        return groups

    def describe(self) -> str:
        return (self.__doc__ or "").strip().splitlines()[0]


@dataclass(frozen=True)
class RecipeOptions:
    """Recipe knobs that are not plain Trainer hyper-parameters."""

    train_llm_lr_scale: float | None = None  # pretrain: also train the LLM at this LR multiplier (toy worlds)
    projector_lr_scale: float = 1.0  # multiplier of the projector's LR (LoRA default 0.1: 2e-5 vs 2e-4)
    gate_lr_scale: float = 1.0  # stage 2: multiplier of the gate's LR (official: the LLM's LR)


def _named(module: nn.Module | None, prefix: str) -> tuple[tuple[str, nn.Parameter], ...]:
    if module is None:
        return ()
    return tuple((f"{prefix}.{name}", param) for name, param in module.named_parameters())


def _projector(model: AlignGPTForConditionalGeneration) -> tuple[tuple[str, nn.Parameter], ...]:
    return _named(model.projector, "model.projector")


def _language_model(model: AlignGPTForConditionalGeneration) -> tuple[tuple[str, nn.Parameter], ...]:
    """The LLM: its decoder and the LM head (the head is a top-level module, as in transformers' llava)."""
    return _named(model.language_model, "model.language_model") + _named(model.lm_head, "lm_head")


def _level_table(model: AlignGPTForConditionalGeneration) -> tuple[tuple[str, nn.Parameter], ...]:
    if model.alignment is None:
        return ()
    return (("model.alignment.level_embeddings", model.alignment.level_embeddings),)


def _gate(model: AlignGPTForConditionalGeneration) -> tuple[tuple[str, nn.Parameter], ...]:
    if model.alignment is None or not model.config.uses_gate:
        return ()  # global/uniform/fixed/none never run the gate: keep it frozen (no unused DDP parameters)
    return _named(model.alignment.gate, "model.alignment.gate")


class PretrainRecipe(Recipe):
    """Stage 1: train the projector and the level table E with A = E[level]; LLM and vision tower frozen."""

    name = "pretrain"
    stage = "pretrain"
    defaults = RecipeDefaults(
        learning_rate=1e-3,
        global_batch_size=256,
        per_device_train_batch_size=8,
        template="plain",
        image_aspect_ratio="square",
        group_by_modality_length=False,
    )

    def param_groups(self, model, options):
        groups = [
            ParamGroup("projector", _projector(model)),
            ParamGroup("level_table", _level_table(model)),
        ]
        if options.train_llm_lr_scale is not None:
            if options.train_llm_lr_scale <= 0:
                raise ValueError(f"train_llm_lr_scale must be > 0, got {options.train_llm_lr_scale}")
            llm = _language_model(model)
            groups.append(ParamGroup("language_model", llm, options.train_llm_lr_scale))
        return groups


class FinetuneRecipe(Recipe):
    """Stage 2: train the LLM, the projector and the gate; level table and vision tower frozen."""

    name = "finetune"
    stage = "finetune"
    defaults = RecipeDefaults(
        learning_rate=2e-5,
        global_batch_size=128,
        per_device_train_batch_size=16,
        template=None,
        image_aspect_ratio="pad",
        group_by_modality_length=True,
    )

    def param_groups(self, model, options):
        return [
            ParamGroup("language_model", _language_model(model)),
            ParamGroup("projector", _projector(model), options.projector_lr_scale),
            ParamGroup("gate", _gate(model), options.gate_lr_scale),
        ]


class FinetuneLoraRecipe(FinetuneRecipe):
    """Stage 2 with LoRA on the LLM's linear layers; projector and gate trained fully; level table frozen."""

    name = "finetune-lora"
    uses_lora = True
    defaults = dataclasses.replace(FinetuneRecipe.defaults, learning_rate=2e-4)

    def param_groups(self, model, options):
        lora = tuple(
            (f"model.language_model.{name}", param)
            for name, param in model.language_model.named_parameters()
            if "lora_" in name
        )
        if not lora:
            raise ValueError(f"{self.name}: the language model has no LoRA parameters (apply LoRA first)")
        return [
            ParamGroup("lora", lora),
            ParamGroup("projector", _projector(model), options.projector_lr_scale),
            ParamGroup("gate", _gate(model), options.gate_lr_scale),
        ]


class FinetuneQloraRecipe(FinetuneLoraRecipe):
    """Stage 2 with LoRA on a 4-bit (NF4) LLM; projector and gate trained fully (full precision); level table frozen."""

    name = "finetune-qlora"
    quantizes_llm = True


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe for recipe in (PretrainRecipe(), FinetuneRecipe(), FinetuneLoraRecipe(), FinetuneQloraRecipe())
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; unknown names raise ``ValueError`` listing the known ones."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]
