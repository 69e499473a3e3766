"""A tiny CLIP trained contrastively on clean (image, caption) pairs of the toy world.

Vision: ViT on 36x36 images with 6x6 patches (36 patch tokens + CLS). Text: a small causal transformer pooled at
the first ``</s>`` (the CLIP tokenizer appends it). Image normalisation statistics are measured on the training
images and written to ``preprocessor_config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from aligngpt.toyworld.render import image_to_array
from aligngpt.toyworld.samples import pretrain_sample, scene_and_image
from aligngpt.toyworld.text import PretrainNoiseConfig, clean_caption
from aligngpt.toyworld.world import WorldConfig
from aligngpt.toyworld.zoo.stats import spearman
from aligngpt.toyworld.zoo.training import cosine_with_warmup

STATS_DECIMALS = 4
RETRIEVAL_GROUP = 100  # n-way retrieval
MAX_GRAD_NORM = 1.0
ENCODE_BATCH = 256


@dataclass(frozen=True)
class ClipSettings:
    """Architecture and training settings of the tiny CLIP."""

    steps: int = 400
    batch_size: int = 128
    pool_size: int = 8192  # distinct training scenes (re-used across steps)
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 20
    patch_size: int = 6
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 64
    max_text_length: int = 64
    eval_scenes: int = 500  # held-out scenes for retrieval (groups of RETRIEVAL_GROUP)
    spearman_samples: int = 2000  # noisy pre-training pairs for the CLIP-vs-true-alignment check


@dataclass(frozen=True)
class Pairs:
    """Images as uint8 (N, H, W, 3) with their captions."""

    images: np.ndarray
    captions: list[str]


def clean_pairs(seed: int, split: str, count: int, world: WorldConfig, progress: bool = False) -> Pairs:
    images, captions = [], []
    for i in tqdm(range(count), desc=f"render {split}", disable=not progress, leave=False):
        scene, image = scene_and_image(seed, split, i, world)
        images.append(image_to_array(image))
        captions.append(clean_caption(scene))
    return Pairs(np.stack(images), captions)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, H, W, 3) on the [0, 1] scale, rounded."""
    scaled = images.reshape(-1, 3).astype(np.float64) / 255.0
    mean = [round(float(v), STATS_DECIMALS) for v in scaled.mean(axis=0)]
    std = [round(float(v), STATS_DECIMALS) for v in scaled.std(axis=0)]
    return mean, std


def to_pixels(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), as ``CLIPImageProcessor`` computes it."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def build_clip(settings: ClipSettings, tokenizer: PreTrainedTokenizerFast, world: WorldConfig) -> CLIPModel:
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": settings.text_hidden,
        "intermediate_size": 4 * settings.text_hidden,
        "num_hidden_layers": settings.text_layers,
        "num_attention_heads": settings.text_heads,
        "max_position_embeddings": settings.max_text_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "image_size": world.image_size,
        "patch_size": settings.patch_size,
        "hidden_size": settings.vision_hidden,
        "intermediate_size": 4 * settings.vision_hidden,
        "num_hidden_layers": settings.vision_layers,
        "num_attention_heads": settings.vision_heads,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=settings.projection_dim)
    return CLIPModel(config)


def _tokenize(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def train_clip(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerFast,
    pixels: torch.Tensor,
    captions: list[str],
    settings: ClipSettings,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Contrastive training on (pixels (N, 3, H, W), captions); returns the loss per step."""
    encoded = _tokenize(tokenizer, captions, settings.max_text_length)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = cosine_with_warmup(optimizer, settings.warmup, settings.steps)
    model.train()
    losses = []
    bar = tqdm(range(settings.steps), desc="train CLIP", disable=not progress)
    for _ in bar:
        batch = torch.randperm(len(captions), generator=generator)[: settings.batch_size]
        length = int(mask[batch].sum(dim=1).max())
        out = model(
            input_ids=ids[batch, :length],
            attention_mask=mask[batch, :length],
            pixel_values=pixels[batch],
            return_loss=True,
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def image_embeddings(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings (N, projection_dim)."""
    chunks = [
        model.get_image_features(pixel_values=pixels[i : i + ENCODE_BATCH]) for i in range(0, len(pixels), ENCODE_BATCH)
    ]
    return torch.nn.functional.normalize(torch.cat([_pooled(c) for c in chunks]), dim=-1)


@torch.no_grad()
def text_embeddings(
    model: CLIPModel, tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int
) -> torch.Tensor:
    """Unit-norm text embeddings (N, projection_dim)."""
    chunks = []
    for i in range(0, len(texts), ENCODE_BATCH):
        encoded = _tokenize(tokenizer, texts[i : i + ENCODE_BATCH], max_length)
        chunks.append(_pooled(model.get_text_features(**encoded)))
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def _pooled(features: torch.Tensor | object) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4.x and a model output in 5.x."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def retrieval_accuracy(
    image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], group: int = RETRIEVAL_GROUP
) -> float:
    """Mean ``group``-way image->text retrieval accuracy over consecutive groups (identical captions count)."""
    hits, total = 0, 0
    for start in range(0, len(captions) - group + 1, group):
        sims = image_emb[start : start + group] @ text_emb[start : start + group].T
        best = sims.argmax(dim=1).tolist()
        hits += sum(captions[start + b] == captions[start + i] for i, b in enumerate(best))
        total += group
    if total == 0:
        raise ValueError(f"need at least {group} held-out pairs for {group}-way retrieval, got {len(captions)}")
    return hits / total


def alignment_check(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerFast,
    settings: ClipSettings,
    seed: int,
    world: WorldConfig,
    mean: list[float],
    std: list[float],
) -> dict[str, float]:
    """Spearman correlation of CLIP cosine with ``true_alignment`` on held-out noisy pre-training pairs."""
    samples = [
        pretrain_sample(seed, i, world, PretrainNoiseConfig(), split="zoo-clip-check")
        for i in range(settings.spearman_samples)
    ]
    pixels = to_pixels(np.stack([image_to_array(s.image) for s in samples]), mean, std)
    cosine = (
        image_embeddings(model, pixels)
        * text_embeddings(model, tokenizer, [s.caption.text for s in samples], settings.max_text_length)
    ).sum(-1)
    truth = [s.caption.true_alignment for s in samples]
    by_kind: dict[str, list[float]] = {}
    for sample, value in zip(samples, cosine.tolist()):
        by_kind.setdefault(sample.caption.kind, []).append(value)
    return {
        "spearman_cosine_vs_true_alignment": spearman(cosine.tolist(), truth),
        **{f"mean_cosine_{kind}": float(np.mean(v)) for kind, v in sorted(by_kind.items())},
        "samples": len(samples),
    }
