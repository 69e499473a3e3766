"""The OpenAI-compatible API through Starlette's TestClient: answers, streaming, batching, limits and errors."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from aligngpt.inference import GenerationSettings
from aligngpt.inference.server import ServerConfig, create_app
from aligngpt.inference.server.scheduler import BatchScheduler
from aligngpt.inference.streaming import generate_streams
from tests.inference.conftest import data_url, png_bytes

MODEL = "tiny"
TOKENS = 5
URL = "/v1/chat/completions"
WAIT_S = 20


def image_message(url: str, text: str = "What is in the picture?") -> dict:
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
    }


def body(messages, **extra) -> dict:
    return {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": TOKENS, **extra}


@pytest.fixture(scope="module")
def client(pipeline, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "pic.png").write_bytes(png_bytes())
    config = ServerConfig(model_name=MODEL, allow_dirs=(allowed,), max_image_pixels=500 * 500)
    with TestClient(create_app(pipeline, config)) as test_client:
        test_client.allowed = allowed
        yield test_client


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_completion_matches_pipeline_and_reports_gate(client, pipeline, red_image, red_data_url):
    response = client.post(URL, json=body([image_message(red_data_url)]))
    assert response.status_code == 200, response.text
    data = response.json()
    reference = pipeline.generate_batch(
        [(red_image, "What is in the picture?")], GenerationSettings(max_new_tokens=TOKENS)
    )[0]
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": reference.text}
    assert choice["finish_reason"] in ("stop", "length")
    assert data["usage"]["completion_tokens"] == len(reference.token_ids)
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + len(reference.token_ids)
    assert data["alignment"]["weights"] == pytest.approx(reference.alignment_weights)
    assert data["alignment"]["level_coefficients"] == pytest.approx(reference.level_coefficients)


def test_text_only_request_has_no_gate(client):
    data = client.post(URL, json=body([{"role": "user", "content": "hello there"}])).json()
    assert data["alignment"] is None and data["usage"]["prompt_tokens"] > 0


def test_stream_sends_role_gate_text_finish_and_done(client, red_data_url):
    plain = client.post(URL, json=body([image_message(red_data_url)])).json()
    request = body([image_message(red_data_url)], stream=True, stream_options={"include_usage": True})
    with client.stream("POST", URL, json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["alignment"]["weights"] == pytest.approx(plain["alignment"]["weights"])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == plain["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_multi_turn_and_system_prompt_shape_the_prompt(client, red_data_url):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        image_message(red_data_url),
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": "Are you sure?"},
    ]
    data = client.post(URL, json=body(messages)).json()
    single = client.post(URL, json=body([image_message(red_data_url)])).json()
    assert data["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"]
    assert data["alignment"] is not None


def test_stop_strings_cut_the_answer(client):
    first = client.post(URL, json=body([{"role": "user", "content": "hello there"}], max_tokens=10)).json()
    words = first["choices"][0]["message"]["content"].split()
    assert len(words) >= 2
    cut = client.post(URL, json=body([{"role": "user", "content": "hello there"}], max_tokens=10, stop=[words[1]]))
    data = cut.json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert words[1] not in data["choices"][0]["message"]["content"]


def test_openai_client_works_against_the_app(client, red_data_url):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client)
    assert [m.id for m in api.models.list().data] == [MODEL]
    completion = api.chat.completions.create(model=MODEL, messages=[image_message(red_data_url)], max_tokens=TOKENS)
    assert completion.choices[0].message.role == "assistant"
    assert len(completion.model_extra["alignment"]["weights"]) == 7
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in api.chat.completions.create(
            model=MODEL, messages=[image_message(red_data_url)], max_tokens=TOKENS, stream=True, temperature=0
        )
        if chunk.choices
    ]
    assert "".join(pieces).strip()


def _bad(messages=None, **extra):
    return body(messages or [{"role": "user", "content": "hi"}], **extra)


ERROR_CASES = [
    ("malformed json", b'{"model": "tiny", "messages": [', 400, "invalid_json", None),
    ("not an object", b"[1, 2]", 400, "invalid_json", None),
    ("not utf-8", b"\xff\xfe{", 400, "invalid_json", None),
    ("messages missing", {"model": MODEL}, 400, "invalid_value", "messages"),
    ("messages empty", _bad(messages=[]) | {"messages": []}, 400, "invalid_value", "messages"),
    ("temperature string", _bad(temperature="hot"), 400, "invalid_value", "temperature"),
    ("temperature too high", _bad(temperature=5), 400, "invalid_value", "temperature"),
    ("max_tokens float", _bad(max_tokens=2.5), 400, "invalid_value", "max_tokens"),
    ("max_tokens over limit", _bad(max_tokens=100000), 400, "invalid_value", "max_tokens"),
    ("stream not bool", _bad(stream="yes"), 400, "invalid_value", "stream"),
    ("stop wrong type", _bad(stop=[1, 2]), 400, "invalid_value", "stop[0]"),
    ("too many stops", _bad(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("n=2", _bad(n=2), 400, "unsupported_value", "n"),
    ("bad role", _bad(messages=[{"role": "robot", "content": "hi"}]), 400, "invalid_value", "messages[0].role"),
    ("content number", _bad(messages=[{"role": "user", "content": 3}]), 400, "invalid_value", "messages[0].content"),
    ("unknown part", _bad(messages=[{"role": "user", "content": [{"type": "audio"}]}]), 400, "invalid_value",
     "messages[0].content[0]"),
    ("image url not a string", _bad(messages=[image_message(1)]), 400, "invalid_value",
     "messages[0].content[0].image_url.url"),
    ("ends with assistant", _bad(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
     400, "invalid_value", "messages"),
    ("image placeholder in text", _bad(messages=[{"role": "user", "content": "look <image>"}]), 400, "invalid_value",
     "messages[0].content"),
    ("unknown model", _bad(model="gpt-4o"), 404, "model_not_found", "model"),
    ("bad base64", _bad(messages=[image_message("data:image/png;base64,%%%")]), 400, "invalid_base64", "messages"),
    ("undecodable image", _bad(messages=[image_message(data_url(b"GIF89a-but-not-really"))]), 400, "invalid_image",
     "messages"),
    ("image too many pixels", _bad(messages=[image_message(data_url(png_bytes((600, 600))))]), 400,
     "image_too_large", "messages"),
    ("two images", _bad(messages=[image_message(data_url(png_bytes())), image_message(data_url(png_bytes()))]),
     400, "too_many_images", "messages[1]"),
    ("path outside allowed dir", _bad(messages=[image_message("/etc/hostname")]), 403, "path_not_allowed", "messages"),
    ("remote images off", _bad(messages=[image_message("http://127.0.0.1:9/x.png")]), 403, "remote_images_disabled",
     "messages"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "payload", "status", "code", "param"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_requests_get_openai_errors(client, name, payload, status, code, param):
    if isinstance(payload, bytes):
        response = client.post(URL, content=payload, headers={"content-type": "application/json"})
    else:
        response = client.post(URL, json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["type"] in ("invalid_request_error", "not_found_error", "permission_error")
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in response.text


def test_server_keeps_serving_after_errors(client):
    for payload in (b"{", b'{"messages": 1}'):
        assert client.post(URL, content=payload).status_code == 400
    assert client.post(URL, json=body([{"role": "user", "content": "still there?"}])).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_local_image_inside_allowed_folder(client):
    for source in ("pic.png", str(client.allowed / "pic.png"), (client.allowed / "pic.png").as_uri()):
        response = client.post(URL, json=body([image_message(source)]))
        assert response.status_code == 200, (source, response.text)
        assert response.json()["alignment"] is not None


def test_routes_and_methods_errors_are_openai_shaped(client):
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = client.get(URL)
    assert wrong.status_code == 405 and "error" in wrong.json()
    assert client.get("/v1/models/other").status_code == 404
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL


def test_web_page_and_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="drop-zone"', 'id="gate-chart"', 'id="reset"', "/static/app.js"):
        assert element in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/v1/chat/completions" in script.text


def test_body_size_limit(pipeline):
    config = ServerConfig(model_name=MODEL, max_body_bytes=2000)
    with TestClient(create_app(pipeline, config)) as small:
        big = body([{"role": "user", "content": "x" * 5000}])
        response = small.post(URL, json=big)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        chunked = small.post(URL, content=(part for part in [json.dumps(big).encode()] * 1))  # no Content-Length
        assert chunked.status_code == 413
        assert small.post(URL, json=body([{"role": "user", "content": "fits"}])).status_code == 200


def test_client_leaving_mid_body_is_logged_in_one_line_without_a_traceback(pipeline, caplog):
    """Drive the ASGI app directly: the body stops half-way and the client disconnects."""
    import asyncio
    import logging

    app = create_app(pipeline, ServerConfig(model_name=MODEL))
    incoming = [{"type": "http.request", "body": b'{"messages": [', "more_body": True}]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": URL, "raw_path": URL.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    with caplog.at_level(logging.INFO, logger="aligngpt.serve"):
        asyncio.run(app(scope, receive, send))  # before the fix: ClientDisconnect escaped (uvicorn logs a traceback)
    assert [record.exc_info for record in caplog.records] == [None]
    assert "disconnected before sending the whole request" in caplog.records[0].getMessage()
    assert sent[0]["type"] == "http.response.start"


def test_prompt_token_limit(pipeline, red_data_url):
    with TestClient(create_app(pipeline, ServerConfig(model_name=MODEL, max_prompt_tokens=40))) as limited:
        response = limited.post(URL, json=body([image_message(red_data_url)]))  # image alone is 16 + 1 positions
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
        assert limited.post(URL, json=body([{"role": "user", "content": "hi"}], model=None)).status_code == 400


def test_api_key(pipeline):
    with TestClient(create_app(pipeline, ServerConfig(model_name=MODEL, api_key="s3cret"))) as secured:
        request = body([{"role": "user", "content": "hi"}])
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = secured.post(URL, json=request, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert secured.get("/v1/models").status_code == 401
        assert secured.get("/health").json()["auth_required"] is True  # health stays open
        good = {"Authorization": "Bearer s3cret"}
        assert secured.post(URL, json=request, headers=good).status_code == 200
        assert secured.get("/v1/models", headers=good).status_code == 200


class GatedRunner:
    """Runs real batches, but holds each batch until released; records batch sizes."""

    def __init__(self, pipeline, fail_first: bool = False):
        self.pipeline = pipeline
        self.release = threading.Event()
        self.sizes: list[int] = []
        self.fail_first = fail_first

    def __call__(self, requests):
        self.sizes.append(len(requests))
        assert self.release.wait(WAIT_S)
        if self.fail_first and len(self.sizes) == 1:
            raise RuntimeError("simulated failure inside generate (must not reach the client)")
        return generate_streams(self.pipeline, requests)


def _wait_until(condition, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _post_in_thread(client, payload, results, key):
    thread = threading.Thread(target=lambda: results.__setitem__(key, client.post(URL, json=payload)))
    thread.start()
    return thread


def _scheduler(runner, **kwargs):
    from aligngpt.inference.server.dispatch import report_error

    return BatchScheduler(runner, report_error, **kwargs)


def test_concurrent_requests_are_batched_and_match_single_answers(pipeline, red_data_url):
    runner = GatedRunner(pipeline)
    scheduler = _scheduler(runner, max_queue=8, max_batch_size=4, batch_wait_s=0.0)
    prompts = ["first", "What is in the picture?", "Describe it.", "hello there"]
    payloads = [body([{"role": "user", "content": prompts[0]}])]
    payloads += [body([image_message(red_data_url, text)]) for text in prompts[1:3]]
    payloads += [body([{"role": "user", "content": prompts[3]}])]
    with TestClient(create_app(pipeline, ServerConfig(model_name=MODEL), scheduler)) as batching:
        results: dict = {}
        threads = [_post_in_thread(batching, payloads[0], results, 0)]
        _wait_until(lambda: runner.sizes == [1])  # the worker holds request 0
        threads += [_post_in_thread(batching, payloads[i], results, i) for i in (1, 2, 3)]
        _wait_until(lambda: scheduler.queued == 3)
        runner.release.set()
        for thread in threads:
            thread.join(WAIT_S)
        assert runner.sizes == [1, 3]  # the three waiting requests shared one generate
        solo = [batching.post(URL, json=payload).json() for payload in payloads]
    for index in range(4):
        batched = results[index].json()
        assert batched["choices"][0]["message"]["content"] == solo[index]["choices"][0]["message"]["content"]
        assert batched["usage"] == solo[index]["usage"]
        if batched["alignment"]:
            assert batched["alignment"]["weights"] == pytest.approx(solo[index]["alignment"]["weights"], abs=1e-5)


def test_full_queue_answers_503_and_recovers(pipeline):
    runner = GatedRunner(pipeline)
    scheduler = _scheduler(runner, max_queue=1, max_batch_size=1, batch_wait_s=0.0)
    payload = body([{"role": "user", "content": "hi"}])
    with TestClient(create_app(pipeline, ServerConfig(model_name=MODEL), scheduler)) as busy:
        results: dict = {}
        threads = [_post_in_thread(busy, payload, results, "running")]
        _wait_until(lambda: runner.sizes == [1])
        threads.append(_post_in_thread(busy, payload, results, "queued"))
        _wait_until(lambda: scheduler.queued == 1)
        refused = busy.post(URL, json=payload)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"] == {
            "message": refused.json()["error"]["message"], "type": "server_error", "param": None,
            "code": "server_overloaded",
        }  # fmt: skip
        runner.release.set()
        for thread in threads:
            thread.join(WAIT_S)
        assert results["running"].status_code == 200 and results["queued"].status_code == 200
        assert busy.post(URL, json=payload).status_code == 200


def test_abandoned_requests_give_back_their_queue_slots():
    """A waiting request whose client has gone (cancelled) must not keep a later one out of a full queue."""
    from aligngpt.inference.server.scheduler import QueueFull
    from aligngpt.inference.streaming import StreamRequest

    scheduler = BatchScheduler(lambda batch: None, lambda request, err: None, max_queue=2)  # not started: all wait
    waiting = [StreamRequest("hi", None, GenerationSettings(), sink=None) for _ in range(2)]
    for request in waiting:
        scheduler.submit(request)
    with pytest.raises(QueueFull):
        scheduler.submit(StreamRequest("hi", None, GenerationSettings(), sink=None))
    waiting[0].cancelled.set()
    scheduler.submit(StreamRequest("hi", None, GenerationSettings(), sink=None))
    assert scheduler.queued == 2


def test_generation_failure_is_a_clean_500_and_the_server_goes_on(pipeline):
    runner = GatedRunner(pipeline, fail_first=True)
    runner.release.set()
    scheduler = _scheduler(runner, max_queue=4, max_batch_size=1, batch_wait_s=0.0)
    payload = body([{"role": "user", "content": "hi"}])
    with TestClient(create_app(pipeline, ServerConfig(model_name=MODEL), scheduler)) as flaky:
        failed = flaky.post(URL, json=payload)
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "internal_error"
        assert "simulated" not in failed.text and "Traceback" not in failed.text
        assert flaky.post(URL, json=payload).status_code == 200


def test_official_checkpoint_is_served_with_vicuna_template(red_data_url):
    from aligngpt import load
    from tests.helpers import OFFICIAL

    official = load(
        OFFICIAL / "checkpoints" / "aligngpt_tiny_finetune", device="cpu", vision_tower=OFFICIAL / "clip_vision_tiny"
    )
    assert official.template.name == "vicuna_v1"  # not the official CLI's llava_v0 default (docs/checkpoints.md)
    with TestClient(create_app(official, ServerConfig(model_name="official"))) as served:
        data = served.post(URL, json=body([image_message(red_data_url)], model="official")).json()
    assert data["usage"]["prompt_tokens"] > 576  # the fixture tower's 576 image positions
    assert len(data["alignment"]["weights"]) == 7
