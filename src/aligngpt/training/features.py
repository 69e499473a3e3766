"""Cache of frozen vision-tower outputs: each image runs through the tower once, training reuses the result.

Meant for small data sets (toy worlds, debugging), where the frozen tower dominates the step cost. The cache is one
safetensors file keyed by image path; its metadata fingerprints everything the features depend on (tower config and
weights' dtype, feature layer and selection, pooling, aspect ratio, image-processor settings), and a mismatching file
is recomputed rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aligngpt.data.dataset import TrainingDataset
from aligngpt.data.images import ImageLoadError
from aligngpt.modeling import AlignGPTForConditionalGeneration

FINGERPRINT_KEY = "aligngpt_vision_fingerprint"


def feature_fingerprint(model: AlignGPTForConditionalGeneration, dataset: TrainingDataset) -> str:
    config = model.config
    parts = {
        "vision": config.vision_config.to_dict(),
        "layer": config.vision_feature_layer,
        "select": config.vision_feature_select,
        "pool": config.image_pool_stride,
        "aspect": dataset.image_aspect_ratio,
        "image_processor": dataset.processor.image_processor.to_dict(),
        "tower_checksum": _tower_checksum(model),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _tower_checksum(model: AlignGPTForConditionalGeneration) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().sum().item().hex().encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def compute_vision_features(
    model: AlignGPTForConditionalGeneration, dataset: TrainingDataset, batch_size: int = 64, progress: bool = True
) -> dict[str, torch.Tensor]:
    """``{image path: [num_image_tokens, d_vision]}`` for every loadable image of ``dataset`` (bad ones are left out:
    the dataset reports them when it reaches their records)."""
    paths = dataset.image_paths()
    features: dict[str, torch.Tensor] = {}
    device = next(model.vision_tower.parameters()).device
    bar = tqdm(total=len(paths), desc="vision features", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch_paths, pixels = [], []
        for path in paths[start : start + batch_size]:
            try:
                pixels.append(dataset.load_pixels(path))
                batch_paths.append(path)
            except ImageLoadError:
                continue
        if pixels:
            out = model.get_vision_features(torch.stack(pixels).to(device)).cpu()
            features.update({path: out[i].clone() for i, path in enumerate(batch_paths)})
        bar.update(len(paths[start : start + batch_size]))
    bar.close()
    return features


def load_or_compute_vision_features(
    path: str | os.PathLike,
    model: AlignGPTForConditionalGeneration,
    dataset: TrainingDataset,
    *,
    write: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Reuse ``path`` when its fingerprint matches, else compute (and, with ``write``, save atomically)."""
    from safetensors import safe_open
    from safetensors.torch import save

    from aligngpt.fileio import atomic_write

    path = Path(path)
    fingerprint = feature_fingerprint(model, dataset)
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get(FINGERPRINT_KEY) == fingerprint:
                return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    features = compute_vision_features(model, dataset, progress=progress)
    if write:
        with atomic_write(path, "wb") as handle:
            handle.write(save(features, metadata={FINGERPRINT_KEY: fingerprint}))
    return features
