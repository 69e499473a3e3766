"""The vision -> language projector (``linear``, ``identity`` or ``mlp<N>x_gelu``)."""

from __future__ import annotations

from torch import nn

from aligngpt.config import AlignGPTConfig, projector_depth


class Projector(nn.Sequential):
    """Maps ``[..., d_vision]`` image features to ``[..., d_text]``.

    ``mlp<N>x_gelu`` is Linear(d_vision -> d_text) followed by N-1 x [GELU (exact erf), Linear(d_text -> d_text)];
    parameter names are therefore ``0.*``, ``2.*``, ... as in the official checkpoints.
    """

    def __init__(self, config: AlignGPTConfig):
        depth = projector_depth(config.projector_type)
        d_vision = config.vision_config.hidden_size
        d_text = config.text_config.hidden_size
        if depth == 0:
            if d_vision != d_text:
                raise ValueError(f"identity projector needs equal widths, got vision {d_vision} and text {d_text}")
            super().__init__(nn.Identity())
            return
        layers: list[nn.Module] = [nn.Linear(d_vision, d_text)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(d_text, d_text)]
        super().__init__(*layers)
