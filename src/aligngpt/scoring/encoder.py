"""A generic CLIP-style dual encoder (CLIPModel, SiglipModel, ...) loaded with the Auto classes.

Scores are cosine similarities between ``get_image_features`` and ``get_text_features`` outputs, computed in
float32 whatever the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

# Text towers trained on fixed-length, max-padded input (their pooled token is the last position).
_MAX_PADDED_TEXT_MODELS = {"siglip", "siglip2"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Images more elongated than this are centre-cropped to it before the processor's own resize + centre crop:
# the crop keeps the processor's final crop region while avoiding a huge intermediate resize (e.g. 1×5000 px).
MAX_ASPECT_RATIO = 4.0


def resolve_device_dtype(device: str | None, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``device=None`` picks CUDA when available; ``dtype="auto"`` is float16 on CUDA, float32 on CPU."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available on this machine")
    if dtype == "auto":
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {', '.join(DTYPES)}")
    return dev, DTYPES[dtype]


def _features(output: Any) -> torch.Tensor:
    """Features from ``get_*_features``: a tensor (transformers 4.x) or ``.pooler_output`` (5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class CaptionTokenizer:
    """Callable turning captions into model text inputs; picklable into DataLoader workers."""

    tokenizer: Any
    max_length: int
    pad_to_max: bool

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                captions,
                padding="max_length" if self.pad_to_max else "longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )


@dataclass
class ImagePreprocessor:
    """Callable turning RGB PIL images into ``pixel_values [B, 3, H, W]`` float32; picklable."""

    image_processor: Any

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        images = [limit_aspect_ratio(im) for im in images]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


def limit_aspect_ratio(image: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Centre-crop the long side so that long/short <= ``max_ratio`` (no-op for ordinary images)."""
    w, h = image.size
    short = min(w, h)
    longest = int(short * max_ratio)
    if max(w, h) <= longest:
        return image
    if w > h:
        left = (w - longest) // 2
        return image.crop((left, 0, left + longest, h))
    top = (h - longest) // 2
    return image.crop((0, top, w, top + longest))


class DualEncoder:
    """Image/text dual encoder + its tokenizer and (PIL) image processor."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, device: torch.device, dtype: torch.dtype):
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(model, method):
                raise TypeError(f"{type(model).__name__} has no {method}(); a CLIP-style dual encoder is needed")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, dtype
        text_config = getattr(model.config, "text_config", model.config)
        self.tokenize = CaptionTokenizer(
            tokenizer,
            max_length=int(text_config.max_position_embeddings),
            pad_to_max=getattr(model.config, "model_type", "") in _MAX_PADDED_TEXT_MODELS,
        )
        self.preprocess = ImagePreprocessor(image_processor)

    @classmethod
    def load(cls, path: str, *, device: str | None = None, dtype: str = "auto") -> DualEncoder:
        """Load model, tokenizer and a PIL-backed image processor from a folder or hub id."""
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        dev, torch_dtype = resolve_device_dtype(device, dtype)
        model = AutoModel.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        return cls(model, tokenizer, image_processor, dev, torch_dtype)

    @torch.inference_mode()
    def similarity(self, pixel_values: torch.Tensor, text_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cosine similarity of matching pairs: ``pixel_values [B,3,H,W]``, text ``[B,T]`` -> ``[B]`` fp32."""
        pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
        text_inputs = {k: v.to(self.device, non_blocking=True) for k, v in text_inputs.items()}
        image = _features(self.model.get_image_features(pixel_values=pixel_values)).float()
        text = _features(self.model.get_text_features(**text_inputs)).float()
        image = torch.nn.functional.normalize(image, dim=-1)
        text = torch.nn.functional.normalize(text, dim=-1)
        return (image * text).sum(dim=-1).cpu()
