"""``build_zoo``: train the toy world's tokenizer, CLIP and LLaMA and save them as HF model folders.

Layout of ``out_dir``::

    tokenizer/   byte-level BPE tokenizer (LM variant: ``<s>`` prepended)
    clip/        CLIPModel + CLIP tokenizer (``<s> ... </s>``) + preprocessor_config.json
    llama/       LlamaForCausalLM + LM tokenizer + generation_config.json
    zoo.json     settings, per-part timings and measured quality

Each part is cached: a rerun with the same settings reuses finished folders (see ``parts.py``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from aligngpt.toyworld._io import atomic_write_json
from aligngpt.toyworld.world import WorldConfig
from aligngpt.toyworld.zoo.clip import (
    ClipSettings,
    alignment_check,
    build_clip,
    channel_stats,
    clean_pairs,
    image_embeddings,
    retrieval_accuracy,
    text_embeddings,
    to_pixels,
    train_clip,
)
from aligngpt.toyworld.zoo.corpus import lm_texts, tokenizer_corpus
from aligngpt.toyworld.zoo.llama import LlamaSettings, build_llama, encode_texts, heldout_loss, train_llama
from aligngpt.toyworld.zoo.parts import PART_FILE, build_part, finished_part, settings_key
from aligngpt.toyworld.zoo.shipped import SHIPPED_MARKER, install_shipped_parts, remove_shipped_parts
from aligngpt.toyworld.zoo.tokenizer import train_tokenizer, wrap
from aligngpt.toyworld.zoo.training import Stopwatch, torch_threads

FORMAT_VERSION = 1
ZOO_FILE = "zoo.json"
TOKENIZER_DIR, CLIP_DIR, LLAMA_DIR = "tokenizer", "clip", "llama"
LOSS_WINDOW = 10  # steps averaged for the reported final training loss
# Two single-threaded jobs (CLIP in a worker process, LLaMA here): the models are tiny, so a second intra-op
# thread helps one job little and unsteadily on a shared 2-core machine (measurements in docs/toyworld.md).
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class ZooSettings:
    tokenizer_texts: int = 2000
    vocab_size: int = 640
    clip: ClipSettings = field(default_factory=ClipSettings)
    llama: LlamaSettings = field(default_factory=LlamaSettings)


SIZES: dict[str, ZooSettings] = {
    "default": ZooSettings(),
    # ``make demo``'s budget (<= 10 min for everything): fewer CLIP and LLaMA steps, measured in docs/toyworld.md.
    "demo": ZooSettings(clip=ClipSettings(steps=250, eval_scenes=300), llama=LlamaSettings(steps=150)),
    "smoke": ZooSettings(
        tokenizer_texts=300,
        clip=ClipSettings(steps=8, batch_size=16, pool_size=128, eval_scenes=100, spearman_samples=100),
        llama=LlamaSettings(steps=6, batch_size=4, context=64, pool_size=64, heldout_texts=16),
    ),
}


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save and name the generic fast-tokenizer class, which every transformers version resolves."""
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_json(config_path, config, indent=2)


def image_processor(size: int, mean: list[float], std: list[float]):
    """A CLIP image processor for ``size``-pixel square images (PIL backend where transformers has one)."""
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as processor_class
    return processor_class(
        do_resize=True,
        size={"shortest_edge": size},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )


def _raw_tokenizer(zoo_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(zoo_dir / TOKENIZER_DIR / "tokenizer.json"))


def _build_tokenizer(folder: Path, seed: int, world: WorldConfig, settings: ZooSettings) -> dict:
    watch = Stopwatch()
    raw = train_tokenizer(tokenizer_corpus(seed, settings.tokenizer_texts, world), settings.vocab_size)
    save_tokenizer(wrap(raw, add_eos=False, model_max_length=settings.llama.max_positions), folder)
    return {"vocab_size": raw.get_vocab_size(), "seconds": watch.seconds()}


def _build_clip(
    folder: Path, zoo_dir: Path, seed: int, world: WorldConfig, settings: ClipSettings, progress: bool
) -> dict:
    watch = Stopwatch()
    tokenizer = wrap(_raw_tokenizer(zoo_dir), add_eos=True, model_max_length=settings.max_text_length)
    train = clean_pairs(seed, "zoo-clip", settings.pool_size, world, progress)
    mean, std = channel_stats(train.images)
    torch.manual_seed(seed)
    model = build_clip(settings, tokenizer, world)
    losses = train_clip(model, tokenizer, to_pixels(train.images, mean, std), train.captions, settings, seed, progress)
    train_seconds = watch.seconds()
    heldout = clean_pairs(seed, "zoo-heldout", settings.eval_scenes, world)
    retrieval = retrieval_accuracy(
        image_embeddings(model, to_pixels(heldout.images, mean, std)),
        text_embeddings(model, tokenizer, heldout.captions, settings.max_text_length),
        heldout.captions,
    )
    metrics = {
        "retrieval_accuracy_100way": retrieval,
        "retrieval_scenes": settings.eval_scenes,
        **alignment_check(model, tokenizer, settings, seed, world, mean, std),
        "final_train_loss": sum(losses[-LOSS_WINDOW:]) / len(losses[-LOSS_WINDOW:]),
    }
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    image_processor(world.image_size, mean, std).save_pretrained(folder)
    return {
        "metrics": metrics,
        "train_seconds": train_seconds,
        "seconds": watch.seconds(),
        "cpu_seconds": watch.cpu_seconds(),
    }


def _build_llama(
    folder: Path, zoo_dir: Path, seed: int, world: WorldConfig, settings: LlamaSettings, progress: bool
) -> dict:
    watch = Stopwatch()
    tokenizer = wrap(_raw_tokenizer(zoo_dir), add_eos=False, model_max_length=settings.max_positions)
    train = encode_texts(tokenizer, list(lm_texts(seed, "zoo-llm", settings.pool_size, world)), settings.max_positions)
    heldout = encode_texts(
        tokenizer, list(lm_texts(seed, "zoo-llm-heldout", settings.heldout_texts, world)), settings.max_positions
    )
    torch.manual_seed(seed)
    model = build_llama(settings, tokenizer)
    losses = train_llama(model, train, settings, seed, progress)
    train_seconds = watch.seconds()
    metrics = {
        **heldout_loss(model, heldout, tokenizer.pad_token_id),
        "final_train_loss": sum(losses[-LOSS_WINDOW:]) / len(losses[-LOSS_WINDOW:]),
    }
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return {
        "metrics": metrics,
        "train_seconds": train_seconds,
        "seconds": watch.seconds(),
        "cpu_seconds": watch.cpu_seconds(),
    }


def _model_part(
    part_dir: str,
    build: Callable[..., dict],
    zoo_dir: Path,
    key: str,
    part_settings: dict,
    seed: int,
    world: WorldConfig,
    settings: ClipSettings | LlamaSettings,
    progress: bool,
    threads: int,
) -> dict:
    """Build (or reuse) the CLIP or LLaMA part with ``build`` (:func:`_build_clip` / :func:`_build_llama`); a
    top-level function so a worker process can run it."""
    with torch_threads(threads):
        return build_part(
            zoo_dir / part_dir, key, part_settings, lambda d: build(d, zoo_dir, seed, world, settings, progress)
        )


def weights_fingerprint(zoo_dir: Path) -> str:
    """A hash of the zoo's tokenizer and model weights: what the steps downstream of the zoo depend on."""
    digest = hashlib.sha256()
    for name in (TOKENIZER_DIR, CLIP_DIR, LLAMA_DIR):
        for path in sorted((zoo_dir / name).glob("*")):
            if path.suffix in (".safetensors", ".json") and path.name != PART_FILE:
                digest.update(f"{name}/{path.name}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _resolve_size(size: str | ZooSettings) -> tuple[ZooSettings, str]:
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown zoo size {size!r}; expected one of {sorted(SIZES)}")
        return SIZES[size], size
    return size, "custom"


def part_settings(seed: int, settings: ZooSettings, world: WorldConfig) -> dict[str, tuple[str, dict]]:
    """``{part folder: (key, settings)}``: everything that determines each part, and its hash."""
    common = {"format_version": FORMAT_VERSION, "seed": seed, "world": asdict(world)}
    tok_settings = {
        **common,
        "tokenizer_texts": settings.tokenizer_texts,
        "vocab_size": settings.vocab_size,
        "max_positions": settings.llama.max_positions,
    }
    tok_key = settings_key(tok_settings)
    clip_settings = {**common, "tokenizer": tok_key, "clip": asdict(settings.clip)}
    llama_settings = {**common, "tokenizer": tok_key, "llama": asdict(settings.llama)}
    return {
        TOKENIZER_DIR: (tok_key, tok_settings),
        CLIP_DIR: (settings_key(clip_settings), clip_settings),
        LLAMA_DIR: (settings_key(llama_settings), llama_settings),
    }


def build_zoo(
    out_dir: str | Path,
    seed: int = 0,
    size: str | ZooSettings = "default",
    threads: int | None = None,
    world: WorldConfig | None = None,
    progress: bool = True,
    shipped: bool = False,
) -> dict:
    """Build (or reuse) the tokenizer, CLIP and LLaMA under ``out_dir``; returns the ``zoo.json`` record.

    ``size`` is a name in ``SIZES`` ("default", "demo", "smoke") or explicit settings. ``threads`` (default
    ``DEFAULT_THREADS``) is the CPU budget: with 1 the models train one after the other on one torch thread;
    with ``n >= 2`` CLIP trains in a worker process on ``n // 2`` threads while LLaMA trains here on the rest.
    ``shipped=True`` first copies in the parts of the zoo shipped with the package (the output of this function
    for the same settings, see ``aligngpt.toyworld.zoo.shipped``) where they match, so only what differs is built;
    without it every part missing from ``out_dir`` is trained here.
    """
    settings, size_name = _resolve_size(size)
    world = world or WorldConfig()
    threads = DEFAULT_THREADS if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    zoo_dir = Path(out_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()
    keys = part_settings(seed, settings, world)
    copied = install_shipped_parts(zoo_dir, keys) if shipped else []
    if not shipped:
        remove_shipped_parts(zoo_dir)
    tok_key, tok_settings = keys[TOKENIZER_DIR]
    parts = {
        "tokenizer": build_part(
            zoo_dir / TOKENIZER_DIR, tok_key, tok_settings, lambda d: _build_tokenizer(d, seed, world, settings)
        ),
    }
    clip_args = (CLIP_DIR, _build_clip, zoo_dir, *keys[CLIP_DIR], seed, world, settings.clip, progress)
    llama_args = (LLAMA_DIR, _build_llama, zoo_dir, *keys[LLAMA_DIR], seed, world, settings.llama, progress)
    both_missing = (
        finished_part(zoo_dir / CLIP_DIR, clip_args[3]) is None
        and finished_part(zoo_dir / LLAMA_DIR, llama_args[3]) is None
    )
    if threads >= 2 and both_missing:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            clip_job = pool.submit(_model_part, *clip_args, threads // 2)
            parts["llama"] = _model_part(*llama_args, threads - threads // 2)
            parts["clip"] = clip_job.result()
    else:
        parts["clip"] = _model_part(*clip_args, threads)
        parts["llama"] = _model_part(*llama_args, threads)
    for name in ("tokenizer", "clip", "llama"):
        parts[name]["shipped"] = name in copied or (zoo_dir / name / SHIPPED_MARKER).is_file()
    record = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "size": size_name,
        "threads": threads,
        "parallel": threads >= 2 and both_missing,
        "build_seconds": watch.seconds(),
        "quality": {
            "clip_retrieval_accuracy_100way": parts["clip"]["metrics"]["retrieval_accuracy_100way"],
            "clip_spearman_cosine_vs_true_alignment": parts["clip"]["metrics"]["spearman_cosine_vs_true_alignment"],
            "llama_heldout_loss": parts["llama"]["metrics"]["heldout_loss"],
        },
        "paths": {"tokenizer": TOKENIZER_DIR, "clip": CLIP_DIR, "llama": LLAMA_DIR},
        "parts": {
            name: {k: v for k, v in parts[name].items() if k != "settings"} for name in ("tokenizer", "clip", "llama")
        },
        "settings": {"world": asdict(world), "zoo": asdict(settings)},
        "fingerprint": weights_fingerprint(zoo_dir),
    }
    atomic_write_json(zoo_dir / ZOO_FILE, record, indent=2)
    return record
