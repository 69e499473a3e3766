"""Shared test helpers: fixture paths, tiny model builders, hooks, and checks of failing commands."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official_tiny"
REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python that runs this checkout's code: the tests' own ``PYTHONPATH`` (so a child
    imports what the tests import) plus the repository root, the hub offline, and ``extra``."""
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO_ROOT)]))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **extra}


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set to true/1), which installs every optional integration."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_optional(available: bool, what: str) -> None:
    """Skip the calling test (or module) when an optional integration is missing; under CI, which installs them all
    (``make test``), fail instead, so that a broken install step cannot turn these tests into silent skips."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is missing in CI, which installs it (make test -> the Makefile's extras step)")
    pytest.skip(f"{what} is not installed (optional; `make test` installs it)", allow_module_level=True)


def require_module(name: str) -> None:
    """:func:`require_optional` for an importable module (``deepspeed``, ``lmms_eval``, ``filelock._api``...)."""
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    require_optional(found, f"the Python module {name}")


@contextlib.contextmanager
def decoder_inputs_embeds(model):
    """Capture the ``inputs_embeds`` the language model's decoder receives."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def tiny_clip_vision_dir(path: Path, image_size: int = 16, patch_size: int = 4) -> Path:
    """A random tiny ``CLIPVisionModel`` (+ image processor) saved under ``path``; (image/patch)^2 patch tokens."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size,
    )  # fmt: skip
    CLIPVisionModel(config).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=image_size).save_pretrained(path)
    return path


def tiny_siglip_vision_dir(path: Path, image_size: int = 54, patch_size: int = 2) -> Path:
    """A random tiny ``SiglipVisionModel``: no CLS token, 27 x 27 = 729 patch tokens by default."""
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size,
    )  # fmt: skip
    SiglipVisionModel(config).save_pretrained(path)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def tiny_llama_dir(path: Path) -> Path:
    """A random tiny LLaMA with the official fixture's SentencePiece tokenizer (BOS 1, EOS 2, vocab 1000)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aligngpt.processing import load_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    load_tokenizer(OFFICIAL / "base_llm").save_pretrained(path)
    return path


def no_bos_tokenizer():
    """A word-level fast tokenizer without BOS (like Qwen2's), with ChatML special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "you",
        "are",
        "a",
        "helpful",
        "assistant",
        "what",
        "is",
        "in",
        "the",
        "picture",
        "it",
        "shows",
        "red",
        "blue",
        "green",
        "car",
        "boat",
        "dog",
        "one",
        "two",
        "three",
        "describe",
        "image",
        "tell",
        "me",
        "about",
        "cats",
        "sleep",
        "lot",
        "colors",
        "of",
        "this",
        "scene",
        "yes",
        "no",
        "system",
        "user",
        "assistant",
    ]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials + ["\n", "?", ".", ","] + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )  # fmt: skip


def tiny_qwen2_dir(path: Path) -> Path:
    """A random tiny Qwen2 with a tokenizer that has no BOS token."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = no_bos_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_model_dir(path: Path, vision: str = "clip", llm: str = "llama", **config_kwargs) -> Path:
    """Assemble and save a tiny AlignGPT (model + processor) under ``path``; returns ``path``.

    ``vision`` is ``clip`` (16 image tokens), ``clip576`` (the official fixture tower) or ``siglip`` (729 tokens);
    ``llm`` is ``llama`` (SentencePiece, BOS) or ``qwen2`` (no BOS). Extra keywords go to ``AlignGPTConfig``.
    """
    from aligngpt.modeling import build_from_pretrained_parts
    from aligngpt.processing import AlignGPTProcessor, load_image_processor, load_tokenizer

    parts = path / "parts"
    vision_dir = {
        "clip": lambda: tiny_clip_vision_dir(parts / "clip"),
        "clip576": lambda: OFFICIAL / "clip_vision_tiny",
        "siglip": lambda: tiny_siglip_vision_dir(parts / "siglip"),
    }[vision]()
    llm_dir = {
        "llama": lambda: tiny_llama_dir(parts / "llama"),
        "qwen2": lambda: tiny_qwen2_dir(parts / "qwen2"),
    }[llm]()
    if vision == "siglip":
        config_kwargs.setdefault("vision_feature_select", "all")
    if llm == "qwen2":
        config_kwargs.setdefault("chat_template_name", "chatml")
    torch.manual_seed(0)
    model = build_from_pretrained_parts(vision_dir, llm_dir, **config_kwargs)
    processor = AlignGPTProcessor.from_config(model.config, load_tokenizer(llm_dir), load_image_processor(vision_dir))
    out = path / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def clean_failure(result) -> str:
    """The output of a command that failed with a message (CliRunner keeps uncaught exceptions in ``exception``)."""
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code != 0 and "Traceback" not in result.output
    return result.output


class _FullDisk:
    """A file whose writes fail like those on a full disk (``OSError(ENOSPC)``, naming no file)."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines):
        self.write("")

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def fill_disk_for(monkeypatch, name: str) -> None:
    """Make appends and writes to files whose name starts with ``name`` fail with ENOSPC.

    Both ``open`` and ``Path.open`` (which calls ``io.open``) are covered; files opened from a descriptor (atomic
    writes through ``os.fdopen``) are not.
    """
    real_open = io.open

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and Path(file).name.startswith(name) and set(mode) & set("aw"):
            return _FullDisk(handle)
        return handle

    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr("builtins.open", fake_open)
