"""Optional integrations (DeepSpeed, bitsandbytes, lmms-eval): their tests skip where they are not installed, but
fail under CI, which installs them all, so a broken install step cannot hide as skips."""

from __future__ import annotations

import pytest

from tests.helpers import require_module

MISSING = "aligngpt_no_such_module"


def test_a_missing_integration_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed"):
        require_module(MISSING)
    with pytest.raises(pytest.skip.Exception, match=rf"{MISSING}\._api is not installed"):
        require_module(f"{MISSING}._api")  # a submodule of a missing package


@pytest.mark.parametrize("value", ["true", "1", "True"])
def test_a_missing_integration_fails_in_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is missing in CI"):
        require_module(MISSING)
    require_module("json")  # present: nothing happens
