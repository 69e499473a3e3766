"""Tiny dual encoders (CLIP, SigLIP) built offline and a small image-caption dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

WORDS = [
    "a",
    "the",
    "photo",
    "of",
    "red",
    "green",
    "blue",
    "small",
    "big",
    "cat",
    "dog",
    "car",
    "tree",
    "house",
    "on",
    "in",
    "with",
    "near",
    "two",
    "one",
]
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
MAX_TEXT = 16
IMAGE_SIZE = 32


def _save_tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_TEXT,
    )
    tok.save_pretrained(folder)
    return len(vocab)


def _text_config(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TEXT,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )


def _vision_config() -> dict:
    return dict(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    folder = tmp_path_factory.mktemp("tiny_clip")
    vocab_size = _save_tokenizer(folder)
    torch.manual_seed(0)
    config = CLIPConfig(text_config=_text_config(vocab_size), vision_config=_vision_config(), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    folder = tmp_path_factory.mktemp("tiny_siglip")
    vocab_size = _save_tokenizer(folder)
    torch.manual_seed(0)
    text = _text_config(vocab_size)
    text.pop("bos_token_id")
    config = SiglipConfig(text_config=text, vision_config=_vision_config())
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def make_dataset(
    folder: Path, n_images: int, *, n_text: int = 2, fmt: str = "json", seed: int = 0, indent: int | None = 1
) -> tuple[Path, Path]:
    """Write ``n_images`` random images + captions and ``n_text`` text-only records; returns (data, image root)."""
    rng = random.Random(seed)
    root = folder / "images"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    records = []
    text_slots = set(rng.sample(range(n_images + n_text), n_text))
    img_no = 0
    for i in range(n_images + n_text):
        caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))  # some longer than MAX_TEXT
        if i in text_slots:
            records.append(
                {"id": f"t{i}", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": caption}]}
            )
            continue
        w, h = rng.randint(16, 64), rng.randint(16, 64)  # aspect <= 4: no pre-crop (see limit_aspect_ratio)
        pixels = bytes(rng.randrange(256) for _ in range(w * h * 3))
        rel = f"sub/{img_no}.png"
        Image.frombytes("RGB", (w, h), pixels).save(root / rel)
        img_no += 1
        records.append(
            {
                "id": f"r{i}",
                "image": rel,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
    data = folder / f"data.{fmt}"
    if fmt == "json":
        data.write_text(json.dumps(records, indent=indent), encoding="utf-8")
    else:
        data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return data, root
