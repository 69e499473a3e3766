"""Shared fixtures: one tiny model (built once per session), its pipeline, images and a test server app."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import tiny_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[2]


def png_bytes(size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def pipeline(tiny_model):
    from aligngpt import load

    return load(tiny_model, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def red_image() -> Image.Image:
    return Image.open(io.BytesIO(png_bytes())).convert("RGB")


@pytest.fixture(scope="session")
def red_data_url() -> str:
    return data_url(png_bytes())


@pytest.fixture
def artifact_dir() -> Path:
    """Where tests leave files for people to look at (screenshots): $ALIGNGPT_TEST_ARTIFACTS or runs/."""
    folder = Path(os.environ.get("ALIGNGPT_TEST_ARTIFACTS", REPO_ROOT / "runs" / "test-artifacts")) / "inference"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
