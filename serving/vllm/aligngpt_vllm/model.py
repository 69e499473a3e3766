"""AlignGPT as a vLLM model: CLIP/SigLIP tower -> projector -> alignment module + vLLM's causal LM.

Weights come from an aligngpt folder's flat layout (``vision_tower.*``, ``projector.*``, ``alignment.*``,
``language_model.model.*``, ``language_model.lm_head.*``). For each image item, :meth:`AlignGPTForVLLM.embed_multimodal`
returns one block ``[1 + num_image_tokens, d]``: the alignment embedding (the slot after BOS), then the projected
image tokens (mode ``none``: the image tokens only), computed as aligngpt's ``AlignGPTModel.embed_inputs`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn
from transformers import CLIPVisionConfig, SiglipVisionConfig
from vllm.config import VllmConfig
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.siglip import SiglipVisionModel
from vllm.model_executor.models.utils import AutoWeightsLoader, get_layer_index, init_vllm_registered_model
from vllm.multimodal import MULTIMODAL_REGISTRY

from aligngpt_vllm.config import AlignGPTVllmConfig, AlignmentMode, vision_has_cls_token
from aligngpt_vllm.processing import (
    IMAGE_PLACEHOLDER,
    AlignGPTDummyInputsBuilder,
    AlignGPTMultiModalProcessor,
    AlignGPTProcessingInfo,
)

# Saved tower names have no ``vision_model.`` level (transformers >= 5.20 saves the bare transformer); vLLM's has.
_TOWER = re.compile(r"^vision_tower\.(?!vision_model\.)")
_IGNORED = (re.compile(r"rotary_emb\.inv_freq$"),)


def projector_layers(projector_type: str, d_vision: int, d_text: int) -> list[nn.Module]:
    """``linear``, ``identity`` or ``mlp<N>x_gelu`` as aligngpt's ``Projector`` (names ``0.*``, ``2.*``, ...)."""
    if projector_type == "identity":
        return [nn.Identity()]
    if projector_type == "linear":
        depth = 1
    else:
        match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"config.json: unknown projector_type {projector_type!r}")
        depth = int(match.group(1))
    layers: list[nn.Module] = [nn.Linear(d_vision, d_text)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(d_text, d_text)]
    return layers


class AlignmentModule(nn.Module):
    """The level table ``E`` (N x d) and the gate; parameter names as aligngpt's (``level_embeddings``, ``gate.*``)."""

    def __init__(self, config: AlignGPTVllmConfig):
        super().__init__()
        levels = config.num_alignment_levels
        self.level_embeddings = nn.Parameter(torch.empty(levels, config.text_config.hidden_size))
        self.gate = nn.Sequential(
            nn.Linear(config.num_image_tokens, config.gate_hidden_size),
            nn.GELU(),
            nn.Linear(config.gate_hidden_size, levels - 1),
        )

    def forward(self, features: torch.Tensor, text_mean: torch.Tensor, mode: AlignmentMode) -> torch.Tensor:
        """``a`` ``[d]`` for one image: ``features`` ``[num_image_tokens, d]``, ``text_mean`` ``[d]``.

        adaptive: ``E[N-1] + alpha @ E[:N-1]``; local: ``alpha @ E[:N-1]``; global: ``E[N-1]``;
        uniform: ``mean(E[:N-1]) + E[N-1]``; fixed:k: ``E[k]``; ``alpha = softmax(gate(<V_k, text_mean>))``.
        """
        table = self.level_embeddings
        global_row, local_rows = table[-1], table[:-1]
        if mode.kind == "fixed":
            return table[mode.fixed_level]
        if mode.kind == "global":
            return global_row
        if mode.kind == "uniform":
            return local_rows.mean(0) + global_row
        scores = (features.unsqueeze(0) * text_mean.view(1, 1, -1)).sum(-1)
        alpha = torch.softmax(self.gate(scores), dim=-1)
        mixed = (alpha @ local_rows)[0]
        return mixed + global_row if mode.kind == "adaptive" else mixed


def _vision_tower(config: AlignGPTVllmConfig, quant_config, prefix: str) -> nn.Module:
    vision = config.vision_config
    layers = get_layer_index(config.vision_feature_layer, vision.num_hidden_layers)
    kinds = ((CLIPVisionConfig, CLIPVisionModel), (SiglipVisionConfig, SiglipVisionModel))
    for config_class, model_class in kinds:
        if isinstance(vision, config_class):
            return model_class(
                vision,
                quant_config=quant_config,
                num_hidden_layers_override=layers,
                require_post_norm=False,
                prefix=prefix,
            )
    raise ValueError(f"config.json: vision tower {vision.model_type!r} is not supported by the vLLM plugin")


@MULTIMODAL_REGISTRY.register_processor(
    AlignGPTMultiModalProcessor, info=AlignGPTProcessingInfo, dummy_inputs=AlignGPTDummyInputsBuilder
)
class AlignGPTForVLLM(nn.Module, SupportsMultiModal):
    """vLLM model class of ``AlignGPTForConditionalGeneration`` folders."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        raise ValueError("AlignGPT takes images only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: AlignGPTVllmConfig = vllm_config.model_config.hf_config
        config.check()
        self.config = config
        self.configure_mm_token_handling(
            vocab_size=config.text_config.vocab_size, mm_token_ids=list(config.marker_token_ids)
        )
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = _vision_tower(config, vllm_config.quant_config, f"{prefix}vision_tower")
            self.projector = nn.Sequential(
                *projector_layers(
                    config.projector_type, config.vision_config.hidden_size, config.text_config.hidden_size
                )
            )
            self.alignment = AlignmentModule(config) if config.alignment.uses_alignment_token else None
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config, prefix=f"{prefix}language_model"
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # --- images -----------------------------------------------------------------------------------------------
    def _select(self, hidden: torch.Tensor) -> torch.Tensor:
        """aligngpt's feature selection on ``[n, seq, d_vision]``: CLS handling and pooling of the patch grid."""
        config = self.config
        has_cls = vision_has_cls_token(config.vision_config)
        cls_token = hidden[:, :1] if has_cls else None
        patches = hidden[:, 1:] if has_cls else hidden
        stride = config.image_pool_stride
        if stride > 1:
            n, _, d = patches.shape
            side = config.patch_grid_size
            grid = patches.transpose(1, 2).reshape(n, d, side, side)
            patches = nn.functional.avg_pool2d(grid, kernel_size=stride, stride=stride).flatten(2).transpose(1, 2)
        keep_cls = config.vision_feature_select == "cls_patch" or (config.vision_feature_select == "all" and has_cls)
        return torch.cat([cls_token, patches], dim=1) if keep_cls else patches

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One ``[1 + num_image_tokens, d]`` block per image item (``[num_image_tokens, d]`` in mode ``none``)."""
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        texts = _as_list(kwargs["gate_text_ids"])
        modes = [AlignmentMode.from_code(*code.tolist()) for code in _as_list(kwargs["alignment_mode"])]
        tower = self.vision_tower
        hidden = tower(pixel_values.to(tower.dtype), feature_select_strategy="full")
        features = self.projector(self._select(hidden))
        embed = self.language_model.embed_input_ids
        blocks = []
        for image_features, text_ids, mode in zip(features, texts, modes):
            if not mode.uses_alignment_token:
                blocks.append(image_features)
                continue
            text = embed(text_ids.to(image_features.device))
            text_mean = text.sum(0) / (text.shape[0] + 1e-8)
            align = self.alignment(image_features.to(text.dtype), text_mean, mode)
            blocks.append(torch.cat([align.unsqueeze(0).to(image_features.dtype), image_features]))
        return blocks

    # --- text -------------------------------------------------------------------------------------------------
    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """The LM's logits with the marker ids at the dtype's minimum (never predicted, as in aligngpt)."""
        logits = self.language_model.compute_logits(hidden_states)
        if logits is not None:
            markers = [marker for marker in self.config.marker_token_ids if marker < logits.shape[-1]]
            logits[..., markers] = torch.finfo(logits.dtype).min
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load aligngpt's flat names (the tower under ``vision_model.``; its unused post-layernorm and layers past
        the feature layer are skipped)."""

        def renamed():
            for name, tensor in weights:
                if any(pattern.search(name) for pattern in _IGNORED):
                    continue
                name = _TOWER.sub("vision_tower.vision_model.", name)
                if name.startswith("vision_tower.vision_model.post_layernorm."):
                    continue
                if name.startswith("alignment.") and self.alignment is None:
                    continue
                yield name, tensor

        return AutoWeightsLoader(self).load_weights(renamed())


def _as_list(value) -> list[torch.Tensor]:
    """A batched field as one tensor per item (vLLM stacks equal shapes and lists unequal ones)."""
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0))
    return list(value)
