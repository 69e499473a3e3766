"""The stage-1 adapter (projector + level table): export in our and the official layout, and import of either.

* ours: ``stage1_adapter.safetensors`` with our checkpoint names (``projector.*``, ``alignment.level_embeddings``: the
  module names without the base model's ``model.`` prefix);
* official: ``mm_projector_align.bin`` (``torch.save`` dict; ``mm_projector.*``, ``align_indicators.indicator_embs``;
  docs/training.md), which the official stage-2 script loads with ``--pretrain_mm_mlp_align``.

Loading works on a plain model and under DeepSpeed ZeRO-3 (partitioned parameters are gathered, written on every
rank from the same file, and re-partitioned).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from aligngpt.convert.official import STAGE1_ADAPTER, rename_official_key
from aligngpt.errors import UserError
from aligngpt.fileio import atomic_write

OUR_ADAPTER = "stage1_adapter.safetensors"
LEVEL_TABLE_KEY = "alignment.level_embeddings"
_BASE_PREFIX = "model."
LEVEL_TABLE_PARAMETER = _BASE_PREFIX + LEVEL_TABLE_KEY
_OFFICIAL_NAMES = {LEVEL_TABLE_KEY: "align_indicators.indicator_embs"}


class AdapterError(UserError, ValueError):
    """A stage-1 adapter that does not fit the model; the message names the file and keys."""


def is_adapter_key(name: str) -> bool:
    return name.startswith("projector.") or name == LEVEL_TABLE_KEY


def adapter_name(module_name: str) -> str:
    """The adapter name of a model parameter (``model.projector.0.weight`` -> ``projector.0.weight``)."""
    return module_name.removeprefix(_BASE_PREFIX)


def adapter_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The projector and level-table entries of a (consolidated) model state dict, detached, on CPU, by adapter
    name."""
    named = ((adapter_name(name), tensor) for name, tensor in state_dict.items())
    return {name: tensor.detach().cpu().contiguous() for name, tensor in named if is_adapter_key(name)}


def official_key(name: str) -> str:
    """Our adapter name -> the official one (``projector.0.weight`` -> ``mm_projector.0.weight``)."""
    if name in _OFFICIAL_NAMES:
        return _OFFICIAL_NAMES[name]
    if name.startswith("projector."):
        return "mm_" + name
    raise AdapterError(f"{name!r} is not a stage-1 adapter parameter")


def save_stage1_adapter(state_dict: Mapping[str, torch.Tensor], directory: str | os.PathLike) -> list[Path]:
    """Write both adapter files into ``directory`` (atomically); returns their paths."""
    from safetensors.torch import save

    adapter = adapter_state_dict(state_dict)
    if not any(name.startswith("projector.") for name in adapter):
        raise AdapterError("the state dict holds no projector parameters")
    directory = Path(directory)
    ours, official = directory / OUR_ADAPTER, directory / STAGE1_ADAPTER
    with atomic_write(ours, "wb") as handle:
        handle.write(save(adapter, metadata={"format": "aligngpt-stage1-adapter"}))
    with atomic_write(official, "wb") as handle:
        torch.save({official_key(name): tensor for name, tensor in adapter.items()}, handle)
    return [ours, official]


def resolve_adapter_file(path: str | os.PathLike) -> Path:
    """A file as given, or inside a folder: ours first, then the official name."""
    path = Path(path)
    if path.is_dir():
        for name in (OUR_ADAPTER, STAGE1_ADAPTER):
            if (path / name).is_file():
                return path / name
        raise AdapterError(f"{path}: holds neither {OUR_ADAPTER} nor {STAGE1_ADAPTER}")
    if not path.is_file():
        raise AdapterError(f"stage-1 adapter {path} does not exist")
    return path


def read_stage1_adapter(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The adapter tensors under our names, from our safetensors file or an official ``.bin``."""
    file = resolve_adapter_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(file))
    else:
        raw = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict):
            raise AdapterError(f"{file}: expected a dict of tensors, got {type(raw).__name__}")
        tensors = {}
        for key, tensor in raw.items():
            name = rename_official_key(key)
            if name is not None:
                tensors[adapter_name(name)] = tensor
    foreign = sorted(name for name in tensors if not is_adapter_key(name))
    if foreign:
        raise AdapterError(f"{file}: not a stage-1 adapter (unexpected keys {foreign[:5]})")
    return tensors


def load_stage1_adapter(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy an adapter into ``model`` (projector strictly; the level table when the model has one).

    Returns notes (e.g. a level table ignored by a model without alignment token). Shape or key mismatches raise
    ``AdapterError`` naming the file and the keys.
    """
    file = resolve_adapter_file(path)
    tensors = read_stage1_adapter(file)
    params = {adapter_name(name): param for name, param in model.named_parameters()}
    wanted = {name for name in params if is_adapter_key(name)}
    notes = []
    if LEVEL_TABLE_KEY in tensors and LEVEL_TABLE_KEY not in wanted:
        tensors.pop(LEVEL_TABLE_KEY)
        notes.append(f"{file}: level table ignored (the model has no alignment token)")
    missing, unexpected = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
    if missing or unexpected:
        raise AdapterError(f"{file}: missing {missing}; unexpected {unexpected} for this model")
    targets = [params[name] for name in sorted(tensors)]
    with _gathered(targets), torch.no_grad():
        for name, param in zip(sorted(tensors), targets):
            tensor = tensors[name]
            if tuple(tensor.shape) != tuple(param.shape):
                raise AdapterError(f"{file}: {name} has shape {tuple(tensor.shape)}, the model {tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))
    return notes


@contextlib.contextmanager
def _gathered(params: list[nn.Parameter]):
    """Under DeepSpeed ZeRO-3, gather partitioned parameters for writing (then re-partition); else nothing."""
    if not any(hasattr(param, "ds_id") for param in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield
