"""The zoo shipped with the package: today's builder output, used only where its settings match, rebuildable."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel

from aligngpt.toyworld.world import WorldConfig
from aligngpt.toyworld.zoo import SIZES, build_zoo
from aligngpt.toyworld.zoo import shipped as shipped_module
from aligngpt.toyworld.zoo.build import ZOO_FILE, part_settings
from aligngpt.toyworld.zoo.parts import finished_part
from aligngpt.toyworld.zoo.shipped import SHIPPED, SHIPPED_MARKER, install_shipped_parts, shipped_dir

# A rebuild on another machine may differ in the last bits of its float sums; its quality must not.
RETRIEVAL_TOLERANCE = 0.05
SPEARMAN_TOLERANCE = 0.05
LM_LOSS_TOLERANCE = 0.02


@pytest.mark.parametrize(("size", "seed"), SHIPPED)
def test_every_shipped_part_matches_the_builders_current_settings(size, seed):
    """A zoo setting changed without refreshing the shipped files would silently never be used: fail here."""
    for name, (key, _) in part_settings(seed, SIZES[size], WorldConfig()).items():
        assert finished_part(shipped_dir(size, seed) / name, key) is not None, (
            f"shipped {size} zoo part {name!r} is stale: run `python -m aligngpt.toyworld.zoo.refresh`"
        )


def test_shipped_demo_zoo_is_copied_not_trained_and_loads(tmp_path):
    record = build_zoo(tmp_path, seed=0, size="demo", shipped=True, progress=False)
    assert all(part["shipped"] and part["reused"] for part in record["parts"].values())
    assert record["build_seconds"] < 30  # nothing trained: a copy
    shipped_record = json.loads((shipped_dir("demo", 0) / ZOO_FILE).read_text())
    assert record["quality"] == shipped_record["quality"]
    assert isinstance(CLIPModel.from_pretrained(tmp_path / "clip"), CLIPModel)
    AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    assert AutoTokenizer.from_pretrained(tmp_path / "llama").eos_token_id == 3


def test_only_parts_with_matching_settings_are_copied_and_a_plain_build_retrains_them(smoke_zoo, tmp_path,
                                                                                      monkeypatch):  # fmt: skip
    zoo, _ = smoke_zoo
    fake_root = tmp_path / "package"
    shutil.copytree(zoo, fake_root / "smoke-seed0")
    monkeypatch.setattr(shipped_module, "SHIPPED_ROOT", fake_root)
    monkeypatch.setattr(shipped_module, "SHIPPED", (("smoke", 0),))
    smoke = SIZES["smoke"]
    changed = replace(smoke, llama=replace(smoke.llama, steps=2))
    keys = part_settings(0, changed, WorldConfig())
    out = tmp_path / "zoo"
    assert install_shipped_parts(out, keys) == ["tokenizer", "clip"]  # the LLaMA's settings differ
    assert (out / "clip" / SHIPPED_MARKER).is_file() and not (out / "llama").exists()

    record = build_zoo(out, seed=0, size=changed, progress=False, shipped=True)
    assert record["parts"]["clip"]["shipped"] and not record["parts"]["llama"]["shipped"]
    assert not record["parts"]["llama"]["reused"]

    rebuilt = build_zoo(out, seed=0, size=changed, progress=False)  # shipped=False: train what was copied
    assert not rebuilt["parts"]["clip"]["reused"] and not rebuilt["parts"]["clip"]["shipped"]
    assert rebuilt["parts"]["llama"]["reused"]
    assert not (out / "clip" / SHIPPED_MARKER).exists()


@pytest.mark.slow
def test_a_rebuilt_demo_zoo_reaches_the_shipped_quality(tmp_path):
    """``aligngpt demo --rebuild-zoo`` trains the zoo here: it must be as good as the one the package ships."""
    shipped_quality = json.loads((shipped_dir("demo", 0) / ZOO_FILE).read_text())["quality"]
    record = build_zoo(tmp_path, seed=0, size="demo", threads=2, progress=False)
    assert not any(part["shipped"] or part["reused"] for part in record["parts"].values())
    quality = record["quality"]
    assert quality["clip_retrieval_accuracy_100way"] >= (
        shipped_quality["clip_retrieval_accuracy_100way"] - RETRIEVAL_TOLERANCE
    )
    assert quality["clip_spearman_cosine_vs_true_alignment"] >= (
        shipped_quality["clip_spearman_cosine_vs_true_alignment"] - SPEARMAN_TOLERANCE
    )
    assert quality["llama_heldout_loss"] <= shipped_quality["llama_heldout_loss"] + LM_LOSS_TOLERANCE
