"""Import of official AlignGPT (and LLaVA-1.5) checkpoints, and replay of official input batches.

Official layout (docs/checkpoints.md): LLaMA ``config.json`` with ``mm_*`` fields and ``model_type: aligngpt``; weights
``pytorch_model.bin`` (or shards + index) with keys ``model.*``, ``lm_head.*``, ``mm_projector.{0,2}.*``,
``align_indicators.indicator_embs``, ``gated_weight_layer.mlp.{0,2}.*`` and optionally
``vision_tower.vision_tower.vision_model.*``. The stage-1 form is ``config.json`` + ``mm_projector_align.bin``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

from aligngpt.config import LEGACY_ALIGNMENT_TOKEN_ID, LEGACY_IMAGE_TOKEN_ID, AlignGPTConfig
from aligngpt.errors import UserError
from aligngpt.modeling import IGNORE_INDEX, AlignGPTForConditionalGeneration, init_marker_rows
from aligngpt.processing import AlignGPTProcessor, add_marker_tokens, load_image_processor, load_tokenizer
from aligngpt.processing.layout import expand_image, pad_rows

OFFICIAL_IMAGE_TOKEN = LEGACY_IMAGE_TOKEN_ID
OFFICIAL_NUM_IMAGE_TOKENS = 576  # the official gate's hard-coded input width
STAGE1_ADAPTER = "mm_projector_align.bin"

# Ordered (pattern, replacement) pairs: official key -> our module name. LLaVA-1.5 keys live under ``model.``.
_RENAMES = (
    (r"^(?:model\.)?vision_tower\.vision_tower\.(?:vision_model\.)?", "model.vision_tower."),
    (r"^(?:model\.)?mm_projector\.", "model.projector."),
    (r"^align_indicators\.indicator_embs$", "model.alignment.level_embeddings"),
    (r"^gated_weight_layer\.mlp\.", "model.alignment.gate."),
    (r"^model\.", "model.language_model."),
    (r"^lm_head\.", "lm_head."),
)
# The official vocabulary tables, which grow by the marker tokens' rows.
_VOCAB_TABLES = ("model.language_model.embed_tokens.weight", "lm_head.weight")
_DROPPED = re.compile(r"rotary_emb\.inv_freq$")
_MM_FIELDS = (
    "mm_vision_tower", "use_mm_proj", "mm_projector_type", "mm_hidden_size", "mm_vision_select_layer",
    "mm_vision_select_feature", "image_aspect_ratio", "tokenizer_padding_side", "tokenizer_model_max_length",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "mm_use_im_start_end", "mm_projector_lr",
    "mm_use_im_patch_token", "n_indicators", "use_s2", "s2_scales", "mm_patch_merge_type", "image_grid_pinpoints",
)  # fmt: skip


class ConversionError(UserError, ValueError):
    """An official checkpoint could not be converted; the message names the file or keys."""


def rename_official_key(key: str) -> str | None:
    """Our parameter name for an official one (``None`` for buffers that are dropped)."""
    if _DROPPED.search(key):
        return None
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    raise ConversionError(f"unknown official checkpoint key {key!r}")


_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
_INDEX_FILES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")


def load_official_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an official checkpoint folder (single or sharded ``.bin``, or safetensors)."""
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return _load_file(directory / name)
    for index_name in _INDEX_FILES:
        index_path = directory / index_name
        if index_path.is_file():
            shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_file(directory / shard))
            return state
    raise ConversionError(f"{directory}: no {', '.join(_WEIGHT_FILES + _INDEX_FILES)} found")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConversionError(f"missing weight file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_vision_tower(official: dict, vision_tower: str | os.PathLike | None) -> str:
    """``--vision-tower`` if given, else ``mm_vision_tower`` (a relative path resolves against the current dir)."""
    name = str(vision_tower) if vision_tower is not None else official.get("mm_vision_tower")
    if not name:
        raise ConversionError("config.json has no mm_vision_tower; pass --vision-tower")
    local = Path(name)
    return str(local.resolve()) if local.exists() else name


def config_from_official(
    official: dict,
    vision_tower: str,
    num_levels: int,
    alignment_mode: str = "adaptive",
    marker_ids: tuple[int, int] | None = None,
) -> AlignGPTConfig:
    """Our composite config from an official flat one; the vision config comes from ``vision_tower``.

    ``marker_ids`` (image, alignment) are the tokenizer's marker token ids; by default the two ids after the official
    vocabulary, which grows to cover them.
    """
    image_id, alignment_id = marker_ids if marker_ids is not None else (None, None)
    text = {k: v for k, v in official.items() if k not in _MM_FIELDS and not k.startswith("_")}
    text.pop("architectures", None)
    text["model_type"] = "llama"
    text_config = AutoConfig.for_model(**text)
    vision_config = AutoConfig.from_pretrained(vision_tower)
    if hasattr(vision_config, "vision_config"):
        vision_config = vision_config.vision_config
    return AlignGPTConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        projector_type=official.get("mm_projector_type", "linear"),
        vision_feature_layer=official.get("mm_vision_select_layer", -2),
        vision_feature_select=official.get("mm_vision_select_feature", "patch"),
        num_alignment_levels=num_levels,
        alignment_mode=alignment_mode,
        image_aspect_ratio=official.get("image_aspect_ratio", "pad"),
        model_max_length=official.get("tokenizer_model_max_length", 2048),
        chat_template_name="vicuna_v1",
        image_token_id=image_id,
        alignment_token_id=alignment_id,
    )


def convert_official(
    source: str | os.PathLike,
    destination: str | os.PathLike | None,
    vision_tower: str | os.PathLike | None = None,
    base_llm: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[AlignGPTForConditionalGeneration, AlignGPTProcessor, list[str]]:
    """Convert an official full or stage-1 checkpoint into our format under ``destination`` (safetensors).

    With ``destination=None`` nothing is written (in-memory import, as :func:`aligngpt.load` does).

    Returns the model, the processor and notes (parameters a stage-1 checkpoint does not hold, which keep their
    documented fresh initialisation). Missing or unexpected keys otherwise raise :class:`ConversionError` by name.
    """
    source = Path(source)
    config_path = source / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{config_path} not found: not an official checkpoint folder")
    official = json.loads(config_path.read_text())
    stage1 = (source / STAGE1_ADAPTER).is_file() and not _has_full_weights(source)
    if stage1:
        if base_llm is None:
            raise ConversionError(f"{source} is a stage-1 checkpoint ({STAGE1_ADAPTER}); pass --base-llm")
        state = load_official_state_dict(Path(base_llm))
        state.update(_load_file(source / STAGE1_ADAPTER))
    else:
        state = load_official_state_dict(source)
    tower = resolve_vision_tower(official, vision_tower)
    is_llava = not any(key.startswith("align_indicators.") for key in state)
    levels = state["align_indicators.indicator_embs"].shape[0] if not is_llava else 8
    tokenizer_dir = source if (source / "tokenizer_config.json").is_file() else Path(base_llm or source)
    tokenizer = load_tokenizer(tokenizer_dir)
    image_id, alignment_id = add_marker_tokens(tokenizer)
    config = config_from_official(
        official, tower, levels, "none" if is_llava else "adaptive", marker_ids=(image_id, alignment_id)
    )
    original_vocab = official["vocab_size"]
    renamed = {}
    for key, tensor in state.items():
        new_key = rename_official_key(key)
        if new_key is not None:
            renamed[new_key] = tensor
    if not any(key.startswith("model.vision_tower.") for key in renamed):
        tower_model = AutoModel.from_pretrained(tower)
        tower_model = getattr(tower_model, "vision_model", tower_model)
        renamed.update({f"model.vision_tower.{k}": v for k, v in tower_model.state_dict().items()})
    for name in _VOCAB_TABLES:
        if name in renamed:
            table = renamed[name]
            grown = table.new_zeros(config.text_config.vocab_size - table.shape[0], table.shape[1])
            renamed[name] = torch.cat([table, grown])

    model = AlignGPTForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(renamed))
    unexpected = sorted(set(renamed) - expected)
    notes = []
    if stage1:
        gate = [key for key in missing if key.startswith("model.alignment.gate.")]
        missing = [key for key in missing if key not in gate]
        if gate:
            notes.append(f"stage-1 checkpoint has no gate; {', '.join(gate)} keep PyTorch's default Linear init")
    if missing or unexpected:
        raise ConversionError(f"{source}: missing keys {missing}; unexpected keys {unexpected}")
    model.load_state_dict(renamed, strict=False)
    init_marker_rows(model.get_input_embeddings().weight, model.get_output_embeddings().weight, original_vocab)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()

    processor = AlignGPTProcessor.from_config(config, tokenizer, load_image_processor(tower))
    if destination is not None:
        model.save_pretrained(destination)
        processor.save_pretrained(destination)
    return model, processor, notes


def _has_full_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in _WEIGHT_FILES + _INDEX_FILES)


def batch_from_official(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    align_ids: torch.Tensor | None = None,
    *,
    num_image_tokens: int = OFFICIAL_NUM_IMAGE_TOKENS,
    bos_token_id: int | None = 1,
    pad_token_id: int = 0,
    image_token_id: int = LEGACY_IMAGE_TOKEN_ID,
    alignment_token_id: int | None = LEGACY_ALIGNMENT_TOKEN_ID,
) -> dict[str, torch.Tensor]:
    """Map an official batch to keyword arguments of :meth:`AlignGPTForConditionalGeneration.forward`.

    Args:
        input_ids: ``[B, T]`` official ids, ``-200`` marking the image, right padded.
        attention_mask: ``[B, T]``. labels: ``[B, T]`` or None.
        pixel_values: ``[B, 3, H, W]``, one per row (zeros for text-only rows, as the official dataset supplies).
        align_ids: ``[B]`` stage-1 levels or None.
        alignment_token_id: ``None`` for LLaVA-1.5 models (no alignment slot).

    Returns:
        ``input_ids``, ``attention_mask`` (and ``labels``) ``[B, L]`` right padded in input row order, the layout the
        official model builds (BOS, alignment slot, text, image positions, text); ``pixel_values`` for image rows;
        ``alignment_levels`` ``[B]`` (``-1`` on text rows) when ``align_ids`` is given.
    """
    rows, row_labels, image_rows = [], [], []
    for row in range(input_ids.shape[0]):
        valid = attention_mask[row].bool()
        ids = input_ids[row][valid].tolist()
        labs = labels[row][valid].tolist() if labels is not None else [IGNORE_INDEX] * len(ids)
        if OFFICIAL_IMAGE_TOKEN in ids:
            if ids.count(OFFICIAL_IMAGE_TOKEN) > 1:
                raise ValueError(f"row {row}: more than one image placeholder")
            expand_image(
                ids,
                labs,
                ids.index(OFFICIAL_IMAGE_TOKEN),
                image_token_id=image_token_id,
                num_image_tokens=num_image_tokens,
                alignment_token_id=alignment_token_id,
                alignment_slot=1 if bos_token_id is not None and ids[0] == bos_token_id else 0,
            )
            image_rows.append(row)
        rows.append(ids)
        row_labels.append(labs)
    batch = {"input_ids": pad_rows(rows, pad_token_id), "attention_mask": pad_rows([[1] * len(r) for r in rows], 0)}
    if labels is not None:
        batch["labels"] = pad_rows(row_labels, IGNORE_INDEX)
    if pixel_values is not None and image_rows:
        batch["pixel_values"] = pixel_values[image_rows]
    if align_ids is not None:
        levels = torch.full((input_ids.shape[0],), -1, dtype=torch.long)
        levels[image_rows] = align_ids[image_rows].long()
        batch["alignment_levels"] = levels
    return batch
