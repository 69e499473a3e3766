"""Checks on a model folder before anything is loaded, and quiet loading.

* :func:`check_model_source`: a ``--model`` that is neither a folder nor a hub id that can be had is refused at once,
  before torch and transformers are even imported;
* :func:`verify_model_folder`: truncated or damaged weight and JSON files are named, instead of failing deep inside
  safetensors or torch with a message that names no file;
* :func:`without_weight_progress_bars`: no "Loading weights" / "Writing model shards" progress bars while a model
  loads or saves.

Only the standard library is imported at module level (the checks must be fast).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

from aligngpt.errors import UserError

HUB_LOOKUP_TIMEOUT_S = 10.0
WEIGHTS_INDEX_SUFFIX = ".index.json"  # model.safetensors.index.json, pytorch_model.bin.index.json
_SAFETENSORS_LENGTH_BYTES = 8  # little-endian u64 header length, then the JSON header, then the tensor data
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format; older pickled .bin files are not checked


class ModelNotFoundError(UserError, FileNotFoundError):
    """The model named is not a folder here (nor a model the hub can provide)."""


class DamagedModelError(UserError, ValueError):
    """A file of a model folder is truncated or not what its name says; the message names the file."""


def check_model_source(name: str | os.PathLike) -> None:
    """Refuse ``name`` unless it is a folder, or a hub id that is cached or (online) exists on the hub."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ModelNotFoundError(f"{text} is a file; a model is a folder (config.json, weights, processor files)")
    missing = f"model folder {text} does not exist"
    why_not_hub = _hub_problem(text)
    if why_not_hub is not None:
        raise ModelNotFoundError(f"{missing}{why_not_hub}")


def _hub_problem(name: str) -> str | None:
    """``None`` when ``name`` can be loaded from the hub (cache included), else why not (appended to a message)."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return ""  # a path, not a hub id
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return " (HF_HUB_OFFLINE is set, so it was not looked up as a hub id either)"
    try:
        model_info(name, timeout=HUB_LOOKUP_TIMEOUT_S)
    except GatedRepoError:
        return None  # it exists; transformers explains how to get access
    except RepositoryNotFoundError:
        return ", and there is no model of that id on the Hugging Face hub"
    except Exception as err:  # no network, a proxy, an outage: the hub cannot provide it either
        return f", and the Hugging Face hub could not be asked for it as a hub id ({type(err).__name__}: {err})"
    return None


def verify_model_folder(folder: str | os.PathLike) -> None:
    """Raise :class:`DamagedModelError` naming the first truncated or damaged file of a local model folder.

    JSON files must parse; every shard a ``*.index.json`` lists must exist; every ``*.safetensors`` file must be as
    long as its header says; zip-format ``*.bin`` files must have their central directory (a truncated one has not).
    """
    folder = Path(folder)
    for path in sorted(folder.glob("*.json")):
        _check_json(path)
    for index in sorted(folder.glob(f"*{WEIGHTS_INDEX_SUFFIX}")):
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise DamagedModelError(f"{folder / shard} is missing (listed in {index})")
    for path in sorted(folder.glob("*.safetensors")):
        _check_safetensors(path)
    for path in sorted(folder.glob("*.bin")):
        _check_torch_zip(path)


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DamagedModelError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DamagedModelError(
            f"{path} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(_SAFETENSORS_LENGTH_BYTES)
        if len(prefix) < _SAFETENSORS_LENGTH_BYTES:
            raise DamagedModelError(f"{path} is truncated ({size} bytes, not even a safetensors header)")
        (header_length,) = struct.unpack("<Q", prefix)
        data_start = _SAFETENSORS_LENGTH_BYTES + header_length
        if data_start > size:
            raise DamagedModelError(
                f"{path} is truncated or not a safetensors file: its header claims {header_length} bytes, "
                f"the file has {size}"
            )
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DamagedModelError(f"{path} is damaged: its safetensors header is not valid JSON") from None
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = data_start + max(ends, default=0)
    if size < expected:
        raise DamagedModelError(f"{path} is truncated: {size} bytes of the {expected} its header describes")
    if size > expected:
        raise DamagedModelError(f"{path} is damaged: {size} bytes, more than the {expected} its header describes")


def _check_torch_zip(path: Path) -> None:
    with path.open("rb") as handle:
        if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return
    try:
        with zipfile.ZipFile(path):
            pass
    except zipfile.BadZipFile as err:
        raise DamagedModelError(f"{path} is truncated or damaged ({err})") from None


@contextlib.contextmanager
def without_weight_progress_bars() -> Iterator[None]:
    """Load or save weights without transformers' progress bars; the hub's download progress bars are kept."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    bars_were_on, hub_bars_were_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # also switches the hub's bars off ...
    if hub_bars_were_on:
        enable_progress_bars()  # ... which downloads should keep
    try:
        yield
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
        if not hub_bars_were_on:
            disable_progress_bars()
