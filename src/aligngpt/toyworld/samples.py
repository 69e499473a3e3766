"""In-memory samples of the toy world, each addressable by (seed, split, index).

Splits use separate random streams, so the pre-training, fine-tuning, evaluation and model-zoo scenes never
share random draws.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from aligngpt.prompts import IMAGE_TOKEN
from aligngpt.toyworld.instructions import PRETRAIN_PROMPTS, QA, InstructionConfig, make_conversation, make_text_only
from aligngpt.toyworld.render import render_scene
from aligngpt.toyworld.text import NoisyCaption, PretrainNoiseConfig, noisy_caption
from aligngpt.toyworld.world import Scene, WorldConfig, sample_scene, stream_rng


@dataclass(frozen=True)
class PretrainSample:
    scene: Scene
    image: Image.Image
    prompt: str
    caption: NoisyCaption


@dataclass(frozen=True)
class FinetuneSample:
    scene: Scene | None  # None for a text-only sample
    image: Image.Image | None
    turns: tuple[QA, ...]


def scene_and_image(seed: int, split: str, index: int, world: WorldConfig) -> tuple[Scene, Image.Image]:
    """The scene and its rendering for sample ``index`` of ``split``."""
    rng = stream_rng(seed, f"{split}-scene", index)
    scene = sample_scene(rng, world)
    return scene, render_scene(scene, rng, world)


def pretrain_sample(
    seed: int, index: int, world: WorldConfig, noise: PretrainNoiseConfig, split: str = "pretrain"
) -> PretrainSample:
    scene, image = scene_and_image(seed, split, index, world)
    rng = stream_rng(seed, f"{split}-text", index)
    prompt = PRETRAIN_PROMPTS[int(rng.integers(len(PRETRAIN_PROMPTS)))]
    return PretrainSample(scene, image, prompt, noisy_caption(scene, rng, world, noise))


def finetune_sample(
    seed: int, index: int, world: WorldConfig, config: InstructionConfig, split: str = "finetune"
) -> FinetuneSample:
    rng = stream_rng(seed, f"{split}-text", index)
    if rng.random() < config.text_only_fraction:
        return FinetuneSample(None, None, (make_text_only(rng),))
    scene, image = scene_and_image(seed, split, index, world)
    return FinetuneSample(scene, image, tuple(make_conversation(scene, rng, config)))


def conversation(turns: tuple[QA, ...] | list[QA], with_image: bool) -> list[dict[str, str]]:
    """LLaVA-format turns; ``<image>`` opens the first human turn of an image sample."""
    messages = []
    for number, qa in enumerate(turns):
        question = f"{IMAGE_TOKEN}\n{qa.question}" if with_image and number == 0 else qa.question
        messages.append({"from": "human", "value": question})
        messages.append({"from": "gpt", "value": qa.answer})
    return messages
