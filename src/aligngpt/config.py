"""``AlignGPTConfig``: a composite configuration (vision encoder + causal LM) plus the AlignGPT parts."""

from __future__ import annotations

import re

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MODEL_TYPE = "aligngpt_vlm"

# Marker ids of image positions and the alignment slot in ``input_ids``. They lie outside every vocabulary (the model
# scatters features there and never embeds them); -200 is also the official code's image sentinel.
IMAGE_TOKEN_ID = -200
ALIGNMENT_TOKEN_ID = -201

PROJECTOR_TYPES = ("linear", "identity", "mlpNx_gelu")
FEATURE_SELECTIONS = ("patch", "cls_patch", "all")
ALIGNMENT_MODES = ("adaptive", "global", "local", "uniform", "fixed:<k>", "none")
IMAGE_ASPECT_RATIOS = ("pad", "square")

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


def parse_alignment_mode(mode: str) -> tuple[str, int | None]:
    """Split ``"fixed:<k>"`` into ``("fixed", k)``; other known modes give ``(mode, None)``.

    Raises ``ValueError`` naming the known modes for anything else.
    """
    if mode in ("adaptive", "global", "local", "uniform", "none"):
        return mode, None
    match = re.fullmatch(r"fixed:(\d+)", mode)
    if match:
        return "fixed", int(match.group(1))
    raise ValueError(f"Unknown alignment_mode {mode!r}; known modes: {', '.join(ALIGNMENT_MODES)}")


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
        image_token_id / alignment_token_id: ids the processor writes at image / alignment positions (default -200 and
            -201); they are never looked up in the LLM's embedding table.
        image_aspect_ratio: ``pad`` (pad to square with the mean colour) or ``square`` (resize + centre crop).
        chat_template_name: default chat template of this model (see :mod:`aligngpt.processing.templates`).
        model_max_length: longest sequence (after image expansion) the processor emits for training.
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
    image_token_id: int = IMAGE_TOKEN_ID
    alignment_token_id: int = ALIGNMENT_TOKEN_ID
    image_aspect_ratio: str = "pad"
    chat_template_name: str = "vicuna_v1"
    model_max_length: int = 2048
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        projector_depth(self.projector_type)
        parse_alignment_mode(self.alignment_mode)
        if self.vision_feature_select not in FEATURE_SELECTIONS:
            raise ValueError(
                f"Unknown vision_feature_select {self.vision_feature_select!r}; known: {FEATURE_SELECTIONS}"
            )
        if self.vision_feature_select != "all" and not vision_has_cls_token(self.vision_config):
            raise ValueError(
                f"vision_feature_select={self.vision_feature_select!r} needs a CLS token, but "
                f"{self.vision_config.model_type} has none; use 'all'"
            )
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"Unknown image_aspect_ratio {self.image_aspect_ratio!r}; known: {IMAGE_ASPECT_RATIOS}")
        if self.num_alignment_levels < 2:
            raise ValueError("num_alignment_levels must be at least 2 (one global and one local level)")
        kind, level = parse_alignment_mode(self.alignment_mode)
        if kind == "fixed" and not 0 <= level < self.num_alignment_levels:
            raise ValueError(f"alignment_mode {self.alignment_mode!r} is outside 0..{self.num_alignment_levels - 1}")
        if self.patch_grid_size % self.image_pool_stride:
            raise ValueError(
                f"image_pool_stride {self.image_pool_stride} does not divide the patch grid {self.patch_grid_size}"
            )

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

    @property
    def uses_alignment_token(self) -> bool:
        """False for ``alignment_mode='none'`` (plain LLaVA-1.5)."""
        return self.alignment_mode != "none"

    @property
    def uses_gate(self) -> bool:
        """Whether the alignment embedding depends on the gate network."""
        return parse_alignment_mode(self.alignment_mode)[0] in ("adaptive", "local")


__all__ = [
    "ALIGNMENT_TOKEN_ID",
    "IMAGE_TOKEN_ID",
    "AlignGPTConfig",
    "parse_alignment_mode",
    "projector_depth",
    "vision_has_cls_token",
    "MODEL_TYPE",
]
