"""Image features from any HF vision encoder: layer selection, CLS handling and optional pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.utils import ModelOutput

from aligngpt.config import AlignGPTConfig, vision_has_cls_token


def build_vision_tower(config: AlignGPTConfig) -> nn.Module:
    """The bare vision encoder (e.g. ``CLIPVisionModel``, ``SiglipVisionModel``) built from ``config.vision_config``."""
    return AutoModel.from_config(config.vision_config)


def select_image_features(hidden_states: torch.Tensor, config: AlignGPTConfig) -> torch.Tensor:
    """Pick tokens from one encoder layer and pool the patch grid.

    Args:
        hidden_states: ``[n_images, seq, d_vision]`` output of the layer ``config.vision_feature_layer``.

    Returns:
        ``[n_images, config.num_image_tokens, d_vision]``.
    """
    has_cls = vision_has_cls_token(config.vision_config)
    cls_token = hidden_states[:, :1] if has_cls else None
    patches = hidden_states[:, 1:] if has_cls else hidden_states
    stride = config.image_pool_stride
    if stride > 1:
        n, _, d = patches.shape
        side = config.patch_grid_size
        grid = patches.transpose(1, 2).reshape(n, d, side, side)
        patches = F.avg_pool2d(grid, kernel_size=stride, stride=stride).flatten(2).transpose(1, 2)
    keep_cls = config.vision_feature_select == "cls_patch" or (config.vision_feature_select == "all" and has_cls)
    if keep_cls:
        return torch.cat([cls_token, patches], dim=1)
    return patches


def run_vision_tower(vision_tower: nn.Module, pixel_values: torch.Tensor, **kwargs) -> ModelOutput:
    """The tower's outputs on ``pixel_values`` ``[n_images, 3, H, W]``, with every layer's hidden states.

    The tower runs without autograd when none of its parameters train (the usual, frozen case). ``kwargs`` go to the
    tower (``output_attentions``, ...).
    """
    first_param = next(vision_tower.parameters())
    trains = any(p.requires_grad for p in vision_tower.parameters()) and torch.is_grad_enabled()
    with torch.set_grad_enabled(trains):
        return vision_tower(pixel_values.to(first_param.dtype), output_hidden_states=True, return_dict=True, **kwargs)
