"""The AlignGPT folder config (``model_type`` ``aligngpt_vlm``) for the transformers version vLLM pins.

aligngpt's own ``AlignGPTConfig`` needs transformers >= 5.20; this one reads the same ``config.json`` fields under
vLLM's transformers and derives the few quantities the plugin needs. The alignment modes are parsed here too; the
equality tests (tests/serving/test_vllm_plugin.py) check every mode against aligngpt's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING

MODEL_TYPE = "aligngpt_vlm"
ALIGNMENT_KINDS = ("adaptive", "global", "local", "uniform", "fixed", "none")
FIXED_PREFIX = "fixed:"
FEATURE_SELECTIONS = ("patch", "cls_patch", "all")
IMAGE_ASPECT_RATIOS = ("pad", "square")
_VISION_TYPES_WITHOUT_CLS = ("siglip", "siglip2")


@dataclass(frozen=True)
class AlignmentMode:
    """``adaptive``, ``global``, ``local``, ``uniform``, ``fixed:<k>`` or ``none``; ``code()`` is the ``[2]`` integer
    form the processor hands to the model (kind index, fixed level or -1)."""

    kind: str
    fixed_level: int | None = None

    @staticmethod
    def parse(text: object) -> AlignmentMode:
        """``"fixed:3"`` -> ``AlignmentMode("fixed", 3)``; a ``ValueError`` naming the known modes otherwise."""
        known = ", ".join(f"{FIXED_PREFIX}<k>" if kind == "fixed" else kind for kind in ALIGNMENT_KINDS)
        if isinstance(text, str) and text.startswith(FIXED_PREFIX):
            level = text[len(FIXED_PREFIX) :]
            if level.isascii() and level.isdigit():
                return AlignmentMode("fixed", int(level))
        elif isinstance(text, str) and text in ALIGNMENT_KINDS and text != "fixed":
            return AlignmentMode(text)
        raise ValueError(f"Unknown alignment_mode {text!r}; known modes: {known}")

    @staticmethod
    def from_code(kind_index: int, level: int) -> AlignmentMode:
        kind = ALIGNMENT_KINDS[kind_index]
        return AlignmentMode(kind, level if kind == "fixed" else None)

    def code(self) -> tuple[int, int]:
        return ALIGNMENT_KINDS.index(self.kind), -1 if self.fixed_level is None else self.fixed_level

    def __str__(self) -> str:
        return f"{FIXED_PREFIX}{self.fixed_level}" if self.kind == "fixed" else self.kind

    @property
    def uses_alignment_token(self) -> bool:
        return self.kind != "none"

    @property
    def uses_gate(self) -> bool:
        return self.kind in ("adaptive", "local")


def vision_has_cls_token(vision_config: PreTrainedConfig) -> bool:
    """Whether the vision encoder prepends a CLS token to its patch tokens (CLIP yes, SigLIP no)."""
    return not any(vision_config.model_type.startswith(name) for name in _VISION_TYPES_WITHOUT_CLS)


def _sub_config(value: dict | PreTrainedConfig | None, default_type: str) -> PreTrainedConfig:
    if isinstance(value, PreTrainedConfig):
        return value
    value = dict(value or {})
    model_type = value.pop("model_type", default_type)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"config.json: sub-config model_type {model_type!r} is unknown to this transformers")
    return CONFIG_MAPPING[model_type](**value)


class AlignGPTVllmConfig(PreTrainedConfig):
    """The fields of an aligngpt ``config.json`` (see aligngpt's ``AlignGPTConfig`` for their meaning)."""

    model_type = MODEL_TYPE
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select: str = "patch"
    image_pool_stride: int = 1
    num_alignment_levels: int = 8
    alignment_mode: str = "adaptive"
    gate_hidden_size: int = 256
    image_token_id: int | None = None
    alignment_token_id: int | None = None
    image_aspect_ratio: str = "pad"
    chat_template_name: str = "vicuna_v1"
    model_max_length: int = 2048
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _sub_config(self.vision_config, "clip_vision_model")
        self.text_config = _sub_config(self.text_config, "llama")
        if getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        vocab = self.text_config.vocab_size
        if self.image_token_id is None:  # aligngpt's default: the ids right after the text vocabulary
            self.image_token_id = max(vocab, (self.alignment_token_id or -1) + 1)
        if self.alignment_token_id is None:
            self.alignment_token_id = max(vocab, self.image_token_id + 1)
        super().__post_init__(**kwargs)

    def check(self) -> None:
        """Refuse what the plugin cannot serve, naming the field (called when a model is built)."""
        self.alignment  # noqa: B018 - parses alignment_mode
        if self.image_token_id is None or self.image_token_id < 0:
            raise ValueError(
                f"config.json: image_token_id {self.image_token_id!r} is not a vocabulary id; folders saved by "
                "aligngpt < 0.5 (markers -200/-201) must be re-saved with the current aligngpt first"
            )
        if self.alignment.uses_alignment_token and (self.alignment_token_id is None or self.alignment_token_id < 0):
            raise ValueError(f"config.json: alignment_token_id {self.alignment_token_id!r} is not a vocabulary id")
        if self.vision_feature_select not in FEATURE_SELECTIONS:
            raise ValueError(f"config.json: unknown vision_feature_select {self.vision_feature_select!r}")
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"config.json: unknown image_aspect_ratio {self.image_aspect_ratio!r}")

    @property
    def alignment(self) -> AlignmentMode:
        return AlignmentMode.parse(self.alignment_mode)

    @property
    def marker_token_ids(self) -> tuple[int, ...]:
        return tuple(t for t in (self.image_token_id, self.alignment_token_id) if t is not None and t >= 0)

    @property
    def patch_grid_size(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Image positions per image in the LLM sequence; also the gate's input width."""
        tokens = (self.patch_grid_size // self.image_pool_stride) ** 2
        keeps_cls = self.vision_feature_select == "cls_patch" or (
            self.vision_feature_select == "all" and vision_has_cls_token(self.vision_config)
        )
        return tokens + int(keeps_cls)


def register_config() -> None:
    """Make ``AutoConfig`` (and so vLLM) read ``model_type: aligngpt_vlm`` folders; idempotent."""
    AutoConfig.register(MODEL_TYPE, AlignGPTVllmConfig, exist_ok=True)
