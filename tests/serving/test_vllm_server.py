"""``aligngpt serve --engine vllm`` (vLLM's OpenAI server with the aligngpt plugin) on a converted official
checkpoint with a template other than the folder's: one image chat completion on loopback, token for token equal to
aligngpt's chat answer with that template.

Runs the vLLM environment's Python (see tests/serving/vllm_env.py); skipped without it.
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
from tests.serving.vllm_env import VLLM_ENV, VLLM_PYTHON, converted_official_dir, make_images

STARTUP_TIMEOUT_S = 600
MAX_TOKENS = 8
QUESTION = "What is in the picture?"
TEMPLATE = "qwen"  # an alias of chatml: not the folder's vicuna_v1, and the CLI resolves the alias


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("vllm-server")
    model_dir = converted_official_dir(work)
    image = make_images(work)["wide"]
    port = free_port()
    env = subprocess_env() | VLLM_ENV
    command = [
        sys.executable, "-m", "aligngpt.cli", "serve", "--engine", "vllm", "--vllm-python", str(VLLM_PYTHON),
        "--model", str(model_dir), "--model-name", "tiny", "--dtype", "float32", "--port", str(port),
        "--template", TEMPLATE, "--", "--enforce-eager", "--max-model-len", "1024",
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
        "model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}],
    }  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    pipe = load(model_dir, dtype="float32", device="cpu", template=TEMPLATE)
    prompt = pipe.build_prompt(QUESTION, has_image=True)
    prompt_ids = pipe.encode([prompt], [Image.open(image)])["input_ids"][0].tolist()
    ours = pipe.chat(Image.open(image), QUESTION, settings=GenerationSettings(max_new_tokens=MAX_TOKENS))
    tokenizer = pipe.processor.tokenizer
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    ids = answer["choices"][0]["token_ids"]
    ids = ids[: next((i for i, token in enumerate(ids) if token in ends), len(ids))]
    assert answer["prompt_token_ids"] == prompt_ids
    assert len(ours.token_ids) >= 1
    assert ids == ours.token_ids
    assert answer["choices"][0]["message"]["content"].strip() == ours.text


def test_the_vllm_command_line_carries_aligngpts_defaults():
    from aligngpt.inference.cli import vllm_command

    command = vllm_command(VLLM_PYTHON, "runs/m", "127.0.0.1", 8001, "KEY", None, "v1", "bfloat16")
    assert command[1:3] == ["-m", "aligngpt_vllm.serve"]
    pairs = dict(zip(command[3::2], command[4::2]))
    assert pairs == {"--model": "runs/m", "--host": "127.0.0.1", "--port": "8001", "--served-model-name": "m",
                     "--api-key": "KEY", "--template": "vicuna_v1", "--dtype": "bfloat16"}  # fmt: skip
