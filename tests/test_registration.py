"""``import aligngpt`` alone makes transformers' Auto classes load our folders, and imports no torch itself.

Each check runs in a fresh interpreter: the import order is what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import tiny_model_dir

LOAD_WITH_AUTO_CLASSES = """
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
path = {path!r}
print(type(AutoConfig.from_pretrained(path)).__name__)
print(type(AutoModelForImageTextToText.from_pretrained(path)).__name__)
print(type(AutoModel.from_pretrained(path)).__name__)
"""
EXPECTED = ["AlignGPTConfig", "AlignGPTForConditionalGeneration", "AlignGPTModel"]  # AutoModel: the base model


def _python(code: str) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("registration"))


def test_import_aligngpt_loads_neither_torch_nor_transformers():
    loaded = _python("import sys, aligngpt; print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert loaded == ["False", "False"]


def test_auto_classes_work_after_import_aligngpt(model_dir):
    # LlamaForCausalLM first: transformers then imports its Auto modules while modeling_utils is half-initialised,
    # the order in which registering the model classes from an import hook would break.
    code = "import aligngpt\nfrom transformers import LlamaForCausalLM\n" + LOAD_WITH_AUTO_CLASSES.format(
        path=str(model_dir)
    )
    assert _python(code) == EXPECTED


def test_auto_classes_work_when_transformers_was_imported_first(model_dir):
    code = "from transformers import AutoConfig\nimport aligngpt\n" + LOAD_WITH_AUTO_CLASSES.format(path=str(model_dir))
    assert _python(code) == EXPECTED
