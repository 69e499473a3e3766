"""Judge client: OpenAI wire format, errors, and the on-disk cache that makes reruns free."""

from __future__ import annotations

import json

import pytest
from eval_helpers import ReplayJudge, fixture_dir, predictions_path
from eval_judge_server import ReplayServer

from aligngpt.evaluation.benchmarks import get_benchmark
from aligngpt.evaluation.judge import CachedJudge, JudgeError, JudgeRequest, OpenAIJudge

LLAVA_W = "llava_bench_in_the_wild"


def test_openai_judge_speaks_chat_completions(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    replay = ReplayJudge(fixture_dir(LLAVA_W) / "inputs" / "judge_replies.json")
    request = JudgeRequest.user(
        "gpt-4-0314", "[Assistant 2]\nThe restaurant is called Ippudo.\n\n[End of Assistant 2]", 0.2, 1024, system="sys"
    )
    with ReplayServer(replay) as server:
        reply = OpenAIJudge(server.base_url, model="local-judge").complete(request)
    assert reply == "9,3\nAssistant 2 names the wrong restaurant."
    payload = server.payloads[0]
    assert payload["model"] == "local-judge"  # --judge-model overrides the official model
    assert payload["temperature"] == 0.2 and payload["max_tokens"] == 1024
    assert payload["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": request.messages[1][1]},
    ]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_openai_judge_reports_http_errors():
    with ReplayServer(status=400) as server:
        judge = OpenAIJudge(server.base_url, max_retries=0)
        with pytest.raises(JudgeError, match="HTTP 400"):
            judge.complete(JudgeRequest.user("m", "hi", 0.0, 3))


class CountingJudge:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def complete(self, request):
        self.calls += 1
        return self.inner.complete(request)


def test_rerun_uses_the_cache_and_never_re_asks(tmp_path):
    bench = get_benchmark(LLAVA_W, judge_cache_dir=tmp_path / "cache")
    judge = CountingJudge(ReplayJudge(fixture_dir(LLAVA_W) / "inputs" / "judge_replies.json"))
    first = bench.score(fixture_dir(LLAVA_W) / "inputs", predictions_path(LLAVA_W), tmp_path / "a", judge=judge)
    assert judge.calls == 24
    second = bench.score(fixture_dir(LLAVA_W) / "inputs", predictions_path(LLAVA_W), tmp_path / "b", judge=judge)
    assert judge.calls == 24  # every reply came from the cache
    third = bench.score(fixture_dir(LLAVA_W) / "inputs", predictions_path(LLAVA_W), tmp_path / "c", judge=None)
    assert first["printed"] == second["printed"] == third["printed"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 24


def test_missing_judge_is_a_clear_error(tmp_path):
    with pytest.raises(JudgeError, match="judge"):
        get_benchmark("mm_vet").score(fixture_dir("mm_vet") / "inputs", predictions_path("mm_vet"), tmp_path)


def test_cache_key_depends_on_request_fields():
    base = JudgeRequest.user("m", "hi", 0.0, 3)
    assert base.cache_key() == JudgeRequest.user("m", "hi", 0.0, 3).cache_key()
    for other in (JudgeRequest.user("m", "hi", 0.5, 3), JudgeRequest.user("m", "hi!", 0.0, 3),
                  JudgeRequest.user("m", "hi", 0.0, 3, nonce=1)):  # fmt: skip
        assert other.cache_key() != base.cache_key()


def test_cached_judge_stores_request_and_reply(tmp_path):
    judge = CachedJudge(ReplayJudge(fixture_dir("mmbench") / "inputs" / "judge_replies.json"), tmp_path)
    request = JudgeRequest.user("gpt-3.5-turbo-0613", "Answer: b\nYour output: ", 0.7, 512)
    assert judge.complete(request) == "B"
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert stored["reply"] == "B" and stored["request"]["messages"][0]["content"].startswith("Answer: b")
