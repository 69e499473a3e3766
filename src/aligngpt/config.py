"""``AlignGPTConfig``: a composite configuration (vision encoder + causal LM) plus the AlignGPT parts."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from aligngpt.choices import GATE_TEXT_SPANS, IMAGE_ASPECT_RATIOS
from aligngpt.registration import ensure_model_classes_registered

MODEL_TYPE = "aligngpt_vlm"

# The official code marks the image in ``input_ids`` with -200; folders saved before the markers became real tokens
# use -200 / -201 as their marker ids. The model accepts both sentinels as aliases of its marker ids.
LEGACY_IMAGE_TOKEN_ID = -200
LEGACY_ALIGNMENT_TOKEN_ID = -201

PROJECTOR_TYPES = ("linear", "identity", "mlpNx_gelu")
FEATURE_SELECTIONS = ("patch", "cls_patch", "all")
ALIGNMENT_KINDS = ("adaptive", "global", "local", "uniform", "fixed", "none")
_FIXED_PREFIX = "fixed:"

# Vision encoders whose sequence starts with a CLS token (SigLIP and similar have none).
_VISION_TYPES_WITHOUT_CLS = ("siglip", "siglip2")

# CLIP ViT-L/14-336, the tower of the released AlignGPT models.
_CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


@dataclass(frozen=True)
class AlignmentMode:
    """How the alignment embedding ``a`` is built; serialised as ``adaptive``, ``global``, ``local``, ``uniform``,
    ``fixed:<k>`` or ``none`` (``str(mode)`` / :meth:`parse` round-trip).

    ``kind`` is one of :data:`ALIGNMENT_KINDS`; ``fixed_level`` is ``k`` for ``fixed`` and ``None`` otherwise.
    """

    kind: str
    fixed_level: int | None = None

    def __post_init__(self):
        if self.kind not in ALIGNMENT_KINDS:
            raise ValueError(f"Unknown alignment_mode {self.kind!r}; known modes: {_known_modes()}")
        if (self.kind == "fixed") != (self.fixed_level is not None):
            raise ValueError("fixed_level is given exactly for the 'fixed' alignment mode")
        if self.fixed_level is not None and self.fixed_level < 0:
            raise ValueError(f"alignment_mode fixed:{self.fixed_level} needs a level >= 0")

    @staticmethod
    def parse(text: str) -> AlignmentMode:
        """``"fixed:7"`` -> ``AlignmentMode("fixed", 7)``, ``"adaptive"`` -> ``AlignmentMode("adaptive")``.

        Raises ``ValueError`` naming the known modes for anything else.
        """
        if not isinstance(text, str):
            raise ValueError(f"alignment_mode must be a string such as 'adaptive' or 'fixed:7', got {text!r}")
        return _parse_mode(text)

    def __str__(self) -> str:
        return f"{_FIXED_PREFIX}{self.fixed_level}" if self.kind == "fixed" else self.kind

    @property
    def uses_alignment_token(self) -> bool:
        """False for ``none`` (plain LLaVA-1.5: no alignment slot at all)."""
        return self.kind != "none"

    @property
    def uses_gate(self) -> bool:
        """Whether ``a`` depends on the gate network (``adaptive``, ``local``)."""
        return self.kind in ("adaptive", "local")

    @property
    def reads_levels(self) -> bool:
        """Whether stage 1 builds ``a = E[level]`` from each sample's level: every mode with an alignment token except
        ``fixed``, whose token is ``E[k]`` for every sample (a learned prefix token that ignores the levels)."""
        return self.uses_alignment_token and self.kind != "fixed"

    def check_levels(self, num_levels: int) -> None:
        """Raise ``ValueError`` when a fixed level lies outside the level table ``0..num_levels-1``."""
        if self.fixed_level is not None and not self.fixed_level < num_levels:
            raise ValueError(f"alignment_mode {str(self)!r} is outside 0..{num_levels - 1}")

    def level_coefficients(self, num_levels: int, alpha: Sequence[float] | None) -> list[float] | None:
        """Weight of each of the ``num_levels`` level rows in ``a`` (the last row is the global level).

        ``alpha`` is the gate's softmax over the ``num_levels - 1`` local levels; modes with a gate give ``None``
        without it, and ``none`` always does.
        """
        if self.kind == "none":
            return None
        if self.kind == "fixed":
            return [1.0 if i == self.fixed_level else 0.0 for i in range(num_levels)]
        if self.kind == "global":
            return [0.0] * (num_levels - 1) + [1.0]
        if self.kind == "uniform":
            return [1.0 / (num_levels - 1)] * (num_levels - 1) + [1.0]
        if alpha is None:
            return None
        return list(alpha) + ([1.0] if self.kind == "adaptive" else [0.0])


@functools.cache
def _parse_mode(text: str) -> AlignmentMode:
    if text.startswith(_FIXED_PREFIX):
        level = text[len(_FIXED_PREFIX) :]
        if not (level.isascii() and level.isdigit()):
            raise ValueError(f"Unknown alignment_mode {text!r}; known modes: {_known_modes()}")
        return AlignmentMode("fixed", int(level))
    if text == "fixed":
        raise ValueError(f"alignment_mode 'fixed' needs a level: {_FIXED_PREFIX}<k>")
    return AlignmentMode(text)


def _known_modes() -> str:
    return ", ".join(f"{_FIXED_PREFIX}<k>" if kind == "fixed" else kind for kind in ALIGNMENT_KINDS)


def projector_depth(projector_type: str) -> int:
    """Number of Linear layers of a projector type (0 for ``identity``)."""
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise ValueError(f"Unknown projector_type {projector_type!r}; known: linear, identity, mlp<N>x_gelu")


def vision_has_cls_token(vision_config: PreTrainedConfig) -> bool:
    """Whether the vision encoder prepends a CLS token to its patch tokens."""
    return not any(vision_config.model_type.startswith(name) for name in _VISION_TYPES_WITHOUT_CLS)


class AlignGPTConfig(PreTrainedConfig):
    """Configuration of :class:`~aligngpt.modeling.AlignGPTForConditionalGeneration`.

    Args:
        vision_config: any HF vision-encoder config (CLIP, SigLIP, ...); defaults to CLIP ViT-L/14-336.
        text_config: any HF causal-LM config; defaults to LLaMA.
        projector_type: ``linear``, ``identity`` or ``mlp<N>x_gelu`` (AlignGPT uses ``mlp2x_gelu``).
        vision_feature_layer: index into the encoder's hidden states (``-2`` = second to last layer).
        vision_feature_select: ``patch`` (drop CLS), ``cls_patch`` (keep it) or ``all`` (encoders without CLS).
        image_pool_stride: average-pool the patch grid by this factor before projection (1 = off).
        num_alignment_levels: N, rows of the alignment level table.
        alignment_mode: ``adaptive`` (paper), ``global``, ``local``, ``uniform``, ``fixed:<k>`` or ``none``
            (plain LLaVA-1.5: no alignment token at all).
        gate_hidden_size: hidden width of the gate MLP.
        gate_text: which text the gate's mean text embedding covers in training: ``all`` (the official code: the
            prompt and the answer tokens) or ``prompt`` (positions with a training label excluded, as at inference,
            where there is no answer yet). Inference is the same for both.
        image_token_id / alignment_token_id: token ids of the ``<image>`` positions and the alignment slot. By default
            the two ids after the text vocabulary; ``text_config.vocab_size`` grows to cover them (the model fills
            these positions from the image, and masks their logits so that they are never predicted). Negative ids
            (folders saved by aligngpt < 0.5: -200 / -201) mark positions without a vocabulary row.
        image_aspect_ratio: ``pad`` (pad to square with the mean colour) or ``square`` (resize + centre crop).
        chat_template_name: default chat template of this model (see :mod:`aligngpt.processing.templates`).
        model_max_length: longest sequence (after image expansion) the processor emits for training.
        use_cache: whether `generate` and `forward` keep a KV cache by default.
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model", init_kwargs=_CLIP_L_336),
        "text_config": SubConfigSpec(AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select: str = "patch"
    image_pool_stride: int = 1
    num_alignment_levels: int = 8
    alignment_mode: str = "adaptive"
    gate_hidden_size: int = 256
    gate_text: str = "all"
    image_token_id: int | None = None
    alignment_token_id: int | None = None
    image_aspect_ratio: str = "pad"
    chat_template_name: str = "vicuna_v1"
    model_max_length: int = 2048
    tie_word_embeddings: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        ensure_model_classes_registered()
        self._place_marker_tokens()
        if getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True  # the LM head lives at the top level, so tying is decided here
        projector_depth(self.projector_type)
        if self.vision_feature_select not in FEATURE_SELECTIONS:
            raise ValueError(
                f"Unknown vision_feature_select {self.vision_feature_select!r}; known: {FEATURE_SELECTIONS}"
            )
        if self.vision_feature_select != "all" and not vision_has_cls_token(self.vision_config):
            raise ValueError(
                f"vision_feature_select={self.vision_feature_select!r} needs a CLS token, but "
                f"{self.vision_config.model_type} has none; use 'all'"
            )
        if self.gate_text not in GATE_TEXT_SPANS:
            raise ValueError(f"Unknown gate_text {self.gate_text!r}; known: {GATE_TEXT_SPANS}")
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"Unknown image_aspect_ratio {self.image_aspect_ratio!r}; known: {IMAGE_ASPECT_RATIOS}")
        if self.num_alignment_levels < 2:
            raise ValueError("num_alignment_levels must be at least 2 (one global and one local level)")
        self.alignment.check_levels(self.num_alignment_levels)
        if self.patch_grid_size % self.image_pool_stride:
            raise ValueError(
                f"image_pool_stride {self.image_pool_stride} does not divide the patch grid {self.patch_grid_size}"
            )

    def _place_marker_tokens(self) -> None:
        """Give unset marker ids the next free text ids and grow ``text_config.vocab_size`` to cover every marker."""
        vocab = self.text_config.vocab_size
        if self.image_token_id is None:
            self.image_token_id = max(vocab, (self.alignment_token_id or -1) + 1)
        if self.alignment_token_id is None:
            self.alignment_token_id = max(vocab, self.image_token_id + 1)
        if self.image_token_id == self.alignment_token_id:
            raise ValueError(f"image_token_id and alignment_token_id must differ, both are {self.image_token_id}")
        self.text_config.vocab_size = max([vocab, *(marker + 1 for marker in self.marker_token_ids)])

    @property
    def marker_token_ids(self) -> tuple[int, ...]:
        """The marker ids that are rows of the text vocabulary (none for legacy negative ids)."""
        return tuple(marker for marker in (self.image_token_id, self.alignment_token_id) if marker >= 0)

    @property
    def patch_grid_size(self) -> int:
        """Side of the vision encoder's square patch grid (24 for CLIP ViT-L/14 at 336 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Image positions per image in the LLM sequence; also the gate's input width."""
        tokens = (self.patch_grid_size // self.image_pool_stride) ** 2
        keeps_cls = self.vision_feature_select == "cls_patch" or (
            self.vision_feature_select == "all" and vision_has_cls_token(self.vision_config)
        )
        return tokens + int(keeps_cls)

    def __setattr__(self, key, value):
        # Every assignment of the mode (init, ``from_pretrained(..., alignment_mode=...)``, later edits) is checked
        # here, so ``self.alignment`` never fails later; the field keeps the string form that config.json stores.
        if key == "alignment_mode":
            mode = value if isinstance(value, AlignmentMode) else AlignmentMode.parse(value)
            if "num_alignment_levels" in self.__dict__:
                mode.check_levels(self.num_alignment_levels)
            value = str(mode)
        super().__setattr__(key, value)

    @property
    def alignment(self) -> AlignmentMode:
        """The parsed ``alignment_mode``."""
        return AlignmentMode.parse(self.alignment_mode)

    @property
    def uses_alignment_token(self) -> bool:
        """False for ``alignment_mode='none'`` (plain LLaVA-1.5)."""
        return self.alignment.uses_alignment_token

    @property
    def uses_gate(self) -> bool:
        """Whether the alignment embedding depends on the gate network."""
        return self.alignment.uses_gate


AutoConfig.register(MODEL_TYPE, AlignGPTConfig, exist_ok=True)

__all__ = [
    "ALIGNMENT_KINDS",
    "LEGACY_ALIGNMENT_TOKEN_ID",
    "LEGACY_IMAGE_TOKEN_ID",
    "AlignGPTConfig",
    "AlignmentMode",
    "projector_depth",
    "vision_has_cls_token",
    "MODEL_TYPE",
]
