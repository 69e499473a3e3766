"""``aligngpt serve --engine vllm`` (vLLM's OpenAI server with the aligngpt plugin): one image chat completion on
loopback, equal to aligngpt's answer.

Runs the vLLM environment's Python (see test_vllm_plugin.py); skipped without it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from tests.helpers import subprocess_env
from tests.inference.conftest import free_port
from tests.serving.test_vllm_plugin import VLLM_ENV, VLLM_PYTHON, make_images, sharpen_alignment, tiny_vllm_model_dir

STARTUP_TIMEOUT_S = 600
MAX_TOKENS = 8
QUESTION = "What is in the picture?"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-server")
    model_dir = tiny_vllm_model_dir(work / "tiny")
    sharpen_alignment(model_dir, 40.0, 4.0)
    image = make_images(work)["wide"]
    port = free_port()
    env = subprocess_env() | VLLM_ENV
    command = [
        sys.executable, "-m", "aligngpt.cli", "serve", "--engine", "vllm", "--vllm-python", str(VLLM_PYTHON),
        "--model", str(model_dir), "--model-name", "tiny", "--dtype", "float32", "--port", str(port),
        "--", "--enforce-eager", "--max-model-len", "512",
    ]  # fmt: skip
    log = (work / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while _get(f"http://127.0.0.1:{port}/health") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vLLM server did not start:\n{(work / 'server.log').read_text()[-6000:]}")
            time.sleep(1)
        yield port, model_dir, image
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_image_chat_completion_on_loopback_equals_aligngpt(served):
    from aligngpt import load
    from aligngpt.inference import GenerationSettings

    port, model_dir, image = served
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    body = {
        "model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}],
    }  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    text = answer["choices"][0]["message"]["content"]
    pipe = load(model_dir, dtype="float32", device="cpu")
    ours = pipe.chat(Image.open(image), QUESTION, settings=GenerationSettings(max_new_tokens=MAX_TOKENS))
    assert answer["usage"]["completion_tokens"] >= 1
    assert text.strip() == ours.text.strip()


def test_the_vllm_command_line_carries_aligngpts_defaults():
    from aligngpt.inference.cli import vllm_command

    command = vllm_command(VLLM_PYTHON, "runs/m", "127.0.0.1", 8001, "KEY", None, "vicuna_v1", "bfloat16")
    assert command[1:3] == ["-m", "aligngpt_vllm.serve"]
    pairs = dict(zip(command[3::2], command[4::2]))
    assert pairs == {"--model": "runs/m", "--host": "127.0.0.1", "--port": "8001", "--served-model-name": "m",
                     "--api-key": "KEY", "--template": "vicuna_v1", "--dtype": "bfloat16"}  # fmt: skip
