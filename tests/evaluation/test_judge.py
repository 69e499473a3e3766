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


def test_mmbench_extractor_retries_are_new_judge_calls_and_cached_as_such(tmp_path):
    """An extractor reply naming no option is re-asked (officially up to 3 tries): the retry must reach the judge,
    not come back from the cache as the same invalid reply, and a cache-only rerun must replay both replies."""
    replies = json.loads((fixture_dir("mmbench") / "inputs" / "judge_replies.json").read_text())
    for entry in replies:
        if entry["match"] == "Answer: b\n":
            entry["replies"] = ["I cannot tell from the picture.", "B"]
    replies_file = tmp_path / "replies.json"
    replies_file.write_text(json.dumps(replies))
    inner = ReplayJudge(replies_file)
    bench = get_benchmark("mmbench", judge_cache_dir=tmp_path / "cache")
    data, answers = fixture_dir("mmbench") / "inputs", predictions_path("mmbench")
    first = bench.score(data, answers, tmp_path / "a", judge=inner)
    asked = [r for r in inner.requests if "Answer: b\n" in r.messages[-1][1]]
    assert len(asked) == 2 and asked[0].cache_key() != asked[1].cache_key()
    expected = json.loads((fixture_dir("mmbench") / "expected" / "metrics.json").read_text())
    assert first["circular_accuracy"] == expected["circular_accuracy"]  # the retry's "B" is the right letter
    assert first["gpt_calls"] == len(inner.requests)
    replay = bench.score(data, answers, tmp_path / "b", judge=None)  # cache only: both replies are stored
    assert replay["circular_accuracy"] == first["circular_accuracy"]
