"""The server's pieces on their own: validation, conversation, token budget, image fetch, dispatch and encoding.

The whole API is tested through HTTP in test_server_api.py; these tests pin each piece's own contract.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from aligngpt.inference import GenerationSettings
from aligngpt.inference.images import ImagePolicy
from aligngpt.inference.server.budget import TokenBudget
from aligngpt.inference.server.config import ServerConfig
from aligngpt.inference.server.conversation import to_conversation
from aligngpt.inference.server.dispatch import Dispatcher, EventSink, Failed, Job, client_error, report_error
from aligngpt.inference.server.encoding import SSE_DONE, collect, stream
from aligngpt.inference.server.errors import APIError
from aligngpt.inference.server.image_fetch import fetch_image
from aligngpt.inference.server.scheduler import BatchScheduler, QueueFull
from aligngpt.inference.server.validation import parse_chat_request, validate_chat
from aligngpt.inference.streaming import Alignment, StreamRequest
from aligngpt.processing import IMAGE_TOKEN, Message
from tests.inference.conftest import data_url, png_bytes

CONFIG = ServerConfig(model_name="tiny", max_tokens_limit=100, default_max_tokens=512)
HELLO = [{"role": "user", "content": "hello"}]


def encode(**fields) -> bytes:
    return json.dumps({"messages": HELLO, **fields}).encode()


def refusal(call) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value


# --- validation -----------------------------------------------------------------------------------------------------
FIELD_ERRORS = [
    (encode(temperature="hot"), "temperature"),
    (encode(top_p=0), "top_p"),
    (encode(max_completion_tokens=0), "max_completion_tokens"),
    (encode(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (encode(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0].image_url.url"),
    (encode(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages[0].content[0].text"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "field"), FIELD_ERRORS, ids=[field for _, field in FIELD_ERRORS])
def test_validator_messages_start_with_the_field_they_are_about(payload, field):
    error = refusal(lambda: parse_chat_request(payload))
    assert (error.status, error.code, error.param) == (400, "invalid_value", field)
    assert error.message.startswith(f"{field}: ") and len(error.message) > len(field) + 2


def test_validator_names_the_field_of_its_own_checks():
    too_many = refusal(lambda: parse_chat_request(encode(stop=["a", "b", "c", "d", "e"])))
    assert (too_many.param, too_many.code) == ("stop", "invalid_value") and "4 stop strings" in too_many.message
    two = refusal(lambda: parse_chat_request(encode(n=2)))
    assert (two.param, two.code) == ("n", "unsupported_value")
    model = refusal(lambda: validate_chat(encode(model="gpt-4o"), CONFIG))
    assert (model.status, model.param) == (404, "model")
    assert "'gpt-4o'" in model.message and "'tiny'" in model.message
    limit = refusal(lambda: parse_chat_request(b'{"messages": ['))
    assert (limit.code, limit.param) == ("invalid_json", None) and "not valid JSON" in limit.message


def test_validator_fills_in_the_servers_defaults():
    chat = validate_chat(encode(model=""), CONFIG)
    assert (chat.temperature, chat.top_p) == (CONFIG.default_temperature, CONFIG.default_top_p)
    assert chat.max_tokens == CONFIG.max_tokens_limit  # the default (512) is capped by the server's limit
    assert (chat.stream, chat.include_usage, chat.stop) == (False, False, ())
    chosen = validate_chat(
        encode(temperature=0, top_p=0.5, max_tokens=7, max_completion_tokens=9, stop=["", "END"], stream=True,
               stream_options={"include_usage": True}),
        CONFIG,
    )  # fmt: skip
    assert (chosen.temperature, chosen.top_p, chosen.max_tokens) == (0, 0.5, 9)  # max_completion_tokens wins
    assert (chosen.stream, chosen.include_usage, chosen.stop) == (True, True, ("END",))
    assert validate_chat(encode(stop="END"), CONFIG).stop == ("END",)


def test_conversation_merges_turns_and_places_the_image():
    url = data_url(png_bytes())
    image = {"type": "image_url", "image_url": {"url": url}}
    request = parse_chat_request(
        encode(messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "first"}, image]},
            {"role": "user", "content": "second"},
            {"role": "developer", "content": "No lists."},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "sure?"},
        ])
    )  # fmt: skip
    conversation = to_conversation(request)
    assert conversation.system == "Be brief.\nNo lists." and conversation.image_url == url
    assert conversation.messages == [
        Message("user", f"{IMAGE_TOKEN}\nfirst\nsecond"), Message("assistant", "red"), Message("user", "sure?"),
    ]  # fmt: skip


def test_conversation_errors_name_the_message():
    url = data_url(png_bytes())
    image = {"type": "image_url", "image_url": {"url": url}}
    cases = [
        ([{"role": "assistant", "content": [image]}, {"role": "user", "content": "hi"}], "messages[0]",
         "only user messages"),
        ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hi"}], "messages", "start with a user"),
        ([{"role": "user", "content": f"look {IMAGE_TOKEN}"}], "messages[0].content", IMAGE_TOKEN),
        ([{"role": "system", "content": "only a system prompt"}], "messages", "last message"),
    ]  # fmt: skip
    for messages, param, words in cases:
        error = refusal(lambda messages=messages: to_conversation(parse_chat_request(encode(messages=messages))))
        assert (error.status, error.param) == (400, param) and words in error.message, (messages, error.message)


# --- token budget ---------------------------------------------------------------------------------------------------
def test_budget_counts_image_positions_and_caps_the_answer(pipeline):
    budget = TokenBudget.for_pipeline(pipeline, CONFIG)
    assert budget.processor.tokenizer is not pipeline.processor.tokenizer  # the worker thread keeps its own
    text = budget.count("hello")
    image_positions = budget.count(IMAGE_TOKEN) - budget.count("")
    assert image_positions == pipeline.processor.num_image_tokens + 1  # and the alignment token after BOS
    tight = TokenBudget(pipeline.processor, context_length=text + 3, max_prompt_tokens=text, max_tokens_limit=100)
    chat = validate_chat(encode(max_tokens=50, temperature=0.5, top_p=0.9, stop=["."]), CONFIG)
    settings = tight.settings(chat, text)
    assert settings == GenerationSettings(max_new_tokens=3, temperature=0.5, top_p=0.9, stop=(".",))
    full = TokenBudget(pipeline.processor, context_length=text, max_prompt_tokens=text, max_tokens_limit=100)
    assert full.settings(chat, text).max_new_tokens == 1  # no room left: still one token, never zero


def test_budget_refusals_say_the_numbers(pipeline):
    budget = TokenBudget(pipeline.processor, context_length=64, max_prompt_tokens=20, max_tokens_limit=10)
    long = refusal(lambda: budget.settings(validate_chat(encode(max_tokens=5), CONFIG), 21))
    assert (long.code, long.param) == ("context_length_exceeded", "messages")
    assert "21 tokens" in long.message and "limit is 20" in long.message
    greedy = refusal(lambda: budget.settings(validate_chat(encode(max_tokens=11), CONFIG), 5))
    assert (greedy.code, greedy.param) == ("invalid_value", "max_tokens") and "at most 10" in greedy.message
    two_images = refusal(lambda: budget.count(f"{IMAGE_TOKEN}{IMAGE_TOKEN}"))
    assert (two_images.status, two_images.code, two_images.param) == (400, "invalid_value", "messages")


def test_budget_context_comes_from_the_model_and_the_config(pipeline):
    budget = TokenBudget.for_pipeline(pipeline, ServerConfig())
    context = pipeline.model.config.text_config.max_position_embeddings
    assert budget.context_length == context
    assert budget.max_prompt_tokens == min(context, pipeline.processor.model_max_length)
    assert TokenBudget.for_pipeline(pipeline, ServerConfig(max_prompt_tokens=33)).max_prompt_tokens == 33


# --- image fetch ----------------------------------------------------------------------------------------------------
def test_image_fetch_follows_the_policy_and_answers_with_its_status(tmp_path):
    policy = ImagePolicy(allow_dirs=(tmp_path,), allow_remote=False)
    assert asyncio.run(fetch_image(None, policy)) is None
    assert asyncio.run(fetch_image(data_url(png_bytes((8, 6))), policy)).size == (8, 6)
    outside = refusal(lambda: asyncio.run(fetch_image("/etc/hostname", policy)))
    assert (outside.status, outside.code, outside.param) == (403, "path_not_allowed", "messages")
    missing = refusal(lambda: asyncio.run(fetch_image(str(tmp_path / "gone.png"), policy)))
    assert (missing.status, missing.code) == (400, "image_not_found") and "gone.png" in missing.message


# --- dispatch -------------------------------------------------------------------------------------------------------
def test_worker_failures_become_client_errors_without_details():
    busy = client_error(QueueFull("the server is shutting down"))
    assert (busy.status, busy.code, busy.message) == (503, "server_overloaded", "the server is shutting down")
    bug = client_error(RuntimeError("secret internals"))
    assert (bug.status, bug.code) == (500, "internal_error") and "secret" not in bug.message
    own = APIError(400, "as it is")
    assert client_error(own) is own


def test_dispatcher_refuses_a_full_queue_and_fails_waiting_jobs_at_shutdown():
    scheduler = BatchScheduler(lambda batch: None, report_error, max_queue=1)  # not started: every job waits

    async def scenario() -> tuple[APIError, object]:
        dispatcher = Dispatcher(None, CONFIG, scheduler)
        waiting = dispatcher.submit("prompt", None, GenerationSettings(), prompt_tokens=3)
        refused = refusal(lambda: dispatcher.submit("prompt", None, GenerationSettings(), prompt_tokens=3))
        assert dispatcher.counts()["queued"] == 1
        dispatcher.stop()
        return refused, await asyncio.wait_for(waiting.next_event(), timeout=5)

    refused, event = asyncio.run(scenario())
    assert (refused.status, refused.code) == (503, "server_overloaded")
    assert refused.message == "server busy: 1 requests are already waiting (limit 1); retry later"
    assert isinstance(event, Failed) and (event.error.status, event.error.code) == (503, "server_overloaded")


# --- encoding -------------------------------------------------------------------------------------------------------
ALIGNMENT = Alignment([0.25, 0.75], [0.25, 0.75, 1.0], "adaptive")


def _job(prompt_tokens: int = 4) -> Job:
    sink = EventSink(asyncio.get_running_loop())
    return Job(StreamRequest("prompt", None, GenerationSettings(), sink), sink, prompt_tokens)


def _answer(job: Job, pieces=(" Red", " square. ")) -> None:
    job.sink.start(ALIGNMENT, 7)
    for piece in pieces:
        job.sink.text(piece)
    job.sink.finish("stop", len(pieces))


def test_collect_builds_one_chat_completion():
    async def scenario() -> dict:
        job = _job()
        _answer(job)
        return await collect(job, "tiny")

    body = asyncio.run(scenario())
    assert body["id"].startswith("chatcmpl-") and (body["object"], body["model"]) == ("chat.completion", "tiny")
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Red square."}, "finish_reason": "stop",
         "logprobs": None},
    ]  # fmt: skip
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}  # the worker's count
    assert body["alignment"] == ALIGNMENT.as_dict()


def test_collect_raises_the_failure():
    async def scenario() -> None:
        job = _job()
        job.sink.fail(RuntimeError("boom"))
        await collect(job, "tiny")

    assert refusal(lambda: asyncio.run(scenario())).code == "internal_error"


def _events(include_usage: bool, feed) -> tuple[list, Job]:
    async def scenario() -> tuple[list, Job]:
        job = _job()
        feed(job)
        return [event async for event in stream(job, "tiny", include_usage)], job

    events, job = asyncio.run(scenario())
    assert all(event.startswith("data: ") and event.endswith("\n\n") for event in events)
    return [event if event == SSE_DONE else json.loads(event[len("data: ") :]) for event in events], job


def test_stream_sends_role_and_gate_then_text_finish_usage_and_done():
    events, job = _events(include_usage=True, feed=_answer)
    assert events[-1] == SSE_DONE and not job.stream_request.cancelled.is_set()
    role, first, second, final, usage = events[:-1]
    assert len({chunk["id"] for chunk in events[:-1]}) == 1 and {c["object"] for c in events[:-1]} == {
        "chat.completion.chunk"
    }
    assert (
        role["choices"][0]["delta"] == {"role": "assistant", "content": ""} and role["alignment"] == ALIGNMENT.as_dict()
    )
    assert [first["choices"][0]["delta"], second["choices"][0]["delta"]] == [
        {"content": " Red"},
        {"content": " square. "},
    ]
    assert final["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    without, _ = _events(include_usage=False, feed=_answer)
    assert len(without) == len(events) - 1 and "usage" not in without[-2]


def test_stream_reports_a_failure_as_an_error_event():
    events, job = _events(include_usage=True, feed=lambda job: job.sink.fail(QueueFull("the server is shutting down")))
    assert events == [
        {"error": {"message": "the server is shutting down", "type": "server_error", "param": None,
                   "code": "server_overloaded"}},
        SSE_DONE,
    ]  # fmt: skip
    assert not job.stream_request.cancelled.is_set()


def test_stream_closed_by_a_departed_client_cancels_its_job():
    async def scenario() -> Job:
        job = _job()
        _answer(job)
        events = stream(job, "tiny", include_usage=False)
        assert json.loads((await anext(events))[len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
        await events.aclose()
        return job

    assert asyncio.run(scenario()).stream_request.cancelled.is_set()
