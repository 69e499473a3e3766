"""``AlignmentMode``: one typed value for ``alignment_mode``, parsed in one place; config.json keeps the string."""

from __future__ import annotations

import json

import pytest

from aligngpt.config import ALIGNMENT_KINDS, AlignGPTConfig, AlignmentMode

MODES = ["adaptive", "global", "local", "uniform", "none", "fixed:0", "fixed:7"]


@pytest.mark.parametrize("text", MODES)
def test_parse_and_str_round_trip(text):
    mode = AlignmentMode.parse(text)
    assert str(mode) == text
    assert AlignmentMode.parse(str(mode)) == mode
    assert mode.kind in ALIGNMENT_KINDS


def test_properties_of_each_kind():
    fixed = AlignmentMode.parse("fixed:7")
    assert (fixed.kind, fixed.fixed_level) == ("fixed", 7)
    assert AlignmentMode.parse("adaptive").fixed_level is None
    gated = {text for text in MODES if AlignmentMode.parse(text).uses_gate}
    assert gated == {"adaptive", "local"}
    without_token = {text for text in MODES if not AlignmentMode.parse(text).uses_alignment_token}
    assert without_token == {"none"}
    reading_levels = {text for text in MODES if AlignmentMode.parse(text).reads_levels}
    assert reading_levels == {"adaptive", "global", "local", "uniform"}


@pytest.mark.parametrize("bad", ["adaptve", "fixed", "fixed:", "fixed:x", "fixed:-1", "fixed:１", "", "Adaptive"])
def test_unknown_modes_name_the_allowed_ones(bad):
    with pytest.raises(ValueError, match=r"adaptive.*global.*local.*uniform.*fixed:<k>.*none|fixed:<k>"):
        AlignmentMode.parse(bad)


def test_non_strings_and_inconsistent_values_are_refused():
    with pytest.raises(ValueError, match="must be a string"):
        AlignmentMode.parse(7)
    with pytest.raises(ValueError, match="known modes"):
        AlignmentMode("gated")
    with pytest.raises(ValueError, match="fixed_level"):
        AlignmentMode("fixed")
    with pytest.raises(ValueError, match="fixed_level"):
        AlignmentMode("global", 3)


def test_level_coefficients_follow_the_formulas():
    alpha = [0.5, 0.25, 0.25]
    assert AlignmentMode.parse("adaptive").level_coefficients(4, alpha) == [0.5, 0.25, 0.25, 1.0]
    assert AlignmentMode.parse("local").level_coefficients(4, alpha) == [0.5, 0.25, 0.25, 0.0]
    assert AlignmentMode.parse("global").level_coefficients(4, None) == [0.0, 0.0, 0.0, 1.0]
    assert AlignmentMode.parse("uniform").level_coefficients(4, None) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert AlignmentMode.parse("fixed:2").level_coefficients(4, None) == [0.0, 0.0, 1.0, 0.0]
    assert AlignmentMode.parse("adaptive").level_coefficients(4, None) is None
    assert AlignmentMode.parse("none").level_coefficients(4, alpha) is None


def test_config_holds_the_typed_mode_and_saves_the_string(tmp_path):
    config = AlignGPTConfig(alignment_mode="fixed:7")
    assert config.alignment == AlignmentMode("fixed", 7)
    assert not config.uses_gate and config.uses_alignment_token
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["alignment_mode"] == "fixed:7"
    assert AlignGPTConfig.from_pretrained(tmp_path).alignment == AlignmentMode("fixed", 7)
    assert AlignGPTConfig(alignment_mode=AlignmentMode("global")).alignment_mode == "global"


def test_config_checks_every_assignment(tmp_path):
    config = AlignGPTConfig()
    config.alignment_mode = "local"
    assert config.alignment.uses_gate
    with pytest.raises(ValueError, match="known modes"):
        config.alignment_mode = "adaptve"
    with pytest.raises(ValueError, match=r"outside 0\.\.7"):
        config.alignment_mode = "fixed:8"
    assert config.alignment_mode == "local"  # a refused assignment changes nothing
    with pytest.raises(ValueError, match=r"outside 0\.\.7"):
        AlignGPTConfig(alignment_mode="fixed:9")
    AlignGPTConfig(num_alignment_levels=10, alignment_mode="fixed:9")
    AlignGPTConfig().save_pretrained(tmp_path)
    # Overrides given to from_pretrained are set after __init__: they are checked too.
    with pytest.raises(ValueError, match=r"outside 0\.\.7"):
        AlignGPTConfig.from_pretrained(tmp_path, alignment_mode="fixed:9")
    assert AlignGPTConfig.from_pretrained(tmp_path, alignment_mode="none").alignment.kind == "none"
