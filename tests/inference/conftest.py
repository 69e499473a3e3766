"""Shared fixtures: one tiny model (built once per session), its pipeline, images and a test server app."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import subprocess_env, tiny_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVED_MODEL = "tiny-served"
STARTUP_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30


def png_bytes(
    size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30), mode: str = "RGB"
) -> bytes:
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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and far faster than two on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``aligngpt serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, log: Path, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable, "-m", "aligngpt.cli", "serve", "--model", str(model), "--port", str(self.port),
            "--model-name", SERVED_MODEL, "--log-level", "warning", *extra,
        ]  # fmt: skip
        env = subprocess_env()
        with open(log, "w") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self.base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start in {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM (uvicorn shuts down gracefully, then re-raises the signal); returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session", autouse=True)
def served(request, tmp_path_factory):
    """Start the real server early (its imports take a while) when the session runs the server-process tests."""
    if not any("test_server_process" in item.nodeid for item in request.session.items):
        yield None
        return
    model = request.getfixturevalue("tiny_model")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = ServerProcess(model, log, "--batch-wait-ms", "200", "--max-batch-size", "8", "--threads", "1")
    yield process
    status = process.stop()
    assert status in (0, -signal.SIGTERM), f"server ended with {status}:\n{log.read_text()}"
    assert "Traceback" not in log.read_text(), log.read_text()
