"""What the vLLM plugin tests share: the vLLM environment's Python, the tiny model folders and the runner scripts.

vLLM lives in its own environment (scripts/build-vllm-env.sh): the tests compute aligngpt's reference here and run
the scripts in serving/vllm/tests/ with that environment's Python (``ALIGNGPT_VLLM_PYTHON``, default
``.venv-vllm/bin/python``). Without it every module importing this one is skipped, unless
``ALIGNGPT_REQUIRE_VLLM=1`` (CI), which makes it fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import OFFICIAL, REPO_ROOT, subprocess_env
from tests.serving.models import VLLM_HEAD_SIZE

RUNNERS = REPO_ROOT / "serving" / "vllm" / "tests"
VLLM_TIMEOUT_S = 900
# vLLM's CPU backend otherwise reserves nearly all free memory for its KV cache (21 GiB of 24 seen here).
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
# Scales that make the alignment token decide the tiny random model's greedy tokens: a peaked, text-dependent gate
# and level rows as large as the token embeddings.
GATE_SCALE = 40.0
LEVEL_SCALE = 4.0
OFFICIAL_FINETUNE = OFFICIAL / "checkpoints" / "aligngpt_tiny_finetune"
OFFICIAL_TOWER = OFFICIAL / "clip_vision_tiny"


def vllm_python() -> Path:
    path = Path(os.environ.get("ALIGNGPT_VLLM_PYTHON", REPO_ROOT / ".venv-vllm" / "bin" / "python"))
    if path.is_file():
        return path
    if os.environ.get("ALIGNGPT_REQUIRE_VLLM") == "1":
        pytest.fail(f"ALIGNGPT_REQUIRE_VLLM=1 but {path} does not exist (scripts/build-vllm-env.sh builds it)")
    pytest.skip(f"no vLLM environment at {path} (scripts/build-vllm-env.sh builds it)", allow_module_level=True)


VLLM_PYTHON = vllm_python()


def vllm_env_run(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS...`` in the vLLM environment (aligngpt's ``PYTHONPATH`` left out), output captured."""
    env = {key: value for key, value in subprocess_env().items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(VLLM_PYTHON), *args], env={**env, **VLLM_ENV}, capture_output=True, text=True, timeout=VLLM_TIMEOUT_S
    )


def run_in_vllm_env(script: str, *args: str) -> None:
    """Run ``serving/vllm/tests/<script>`` in the vLLM environment; fails with its output."""
    done = vllm_env_run(str(RUNNERS / script), *args)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"


def converted_official_dir(path: Path) -> Path:
    """The official fixture's fine-tuned checkpoint (official layout: ``pytorch_model.bin``, ``align_indicators.*``,
    the tokenizer's SentencePiece model) with one attention head of size 64, converted by ``aligngpt convert
    official``; returns the converted folder (576 image tokens)."""
    from typer.testing import CliRunner

    from aligngpt.cli import app

    source = path / "official"
    shutil.copytree(OFFICIAL_FINETUNE, source)
    config_path = source / "config.json"
    config_path.chmod(0o644)
    config = json.loads(config_path.read_text())
    assert config["hidden_size"] == VLLM_HEAD_SIZE
    config.update(num_attention_heads=1, num_key_value_heads=1)  # the same weights, read as one head of size 64
    config_path.write_text(json.dumps(config))
    out = path / "converted"
    command = ["convert", "official", str(source), str(out), "--vision-tower", str(OFFICIAL_TOWER)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    return out


def sharpen_alignment(model_dir: Path, gate_scale: float, level_scale: float) -> None:
    """Rescale the gate's last layer and the level table of a saved folder in place."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    weights = load_file(path)
    weights["alignment.gate.2.weight"] = weights["alignment.gate.2.weight"] * gate_scale
    weights["alignment.level_embeddings"] = weights["alignment.level_embeddings"] * level_scale
    save_file(weights, path, metadata={"format": "pt"})


def make_images(folder: Path) -> dict[str, Path]:
    """Two random PNGs, one wide (40 x 24) and one tall (18 x 36), so that padding to a square matters."""
    generator = torch.Generator().manual_seed(0)
    paths = {}
    for name, size in (("wide", (40, 24)), ("tall", (18, 36))):
        pixels = (torch.rand(size[1], size[0], 3, generator=generator) * 255).to(torch.uint8).numpy()
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
    return paths
