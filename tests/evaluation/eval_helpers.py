"""Shared test helpers: paths of the golden metric fixtures and an offline judge replaying their canned replies."""

from __future__ import annotations

import json
from pathlib import Path

from aligngpt.evaluation.judge import JudgeRequest

METRICS_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "metrics"

# benchmark name -> predictions file inside the fixture's inputs/ folder
PREDICTIONS = {
    "vqav2": "answers/llava_vqav2_mscoco_test-dev2015/aligngpt-13b/merge_1.jsonl",
    "gqa": "answers/llava_gqa_testdev_balanced/aligngpt-13b/merge_1.jsonl",
    "vizwiz": "answers/aligngpt-13b.jsonl",
    "scienceqa_img": "answers/aligngpt-13b.jsonl",
    "textvqa": "answers/aligngpt-13b.jsonl",
    "pope": "answers/aligngpt-13b.jsonl",
    "mme": "answers/aligngpt-13b.jsonl",
    "mmbench": "answers/mmbench_dev_20230712/aligngpt-13b.jsonl",
    "seed_bench": "answers/aligngpt-13b/merge_1.jsonl",
    "llava_bench_in_the_wild": "answers/aligngpt-13b.jsonl",
    "mm_vet": "answers/aligngpt-13b.jsonl",
}
JUDGED = ("mmbench", "llava_bench_in_the_wild", "mm_vet")


class ReplayJudge:
    """Answers from a fixture's ``judge_replies.json``: the entry whose ``match`` occurs latest in the request's
    last message wins; its replies are served in order (the last one repeats)."""

    def __init__(self, replies_file: Path) -> None:
        self.entries = json.loads(Path(replies_file).read_text(encoding="utf-8"))
        self.served = [0] * len(self.entries)
        self.requests: list[JudgeRequest] = []

    def reply_for(self, content: str) -> str:
        best, best_pos = None, -1
        for i, entry in enumerate(self.entries):
            pos = content.rfind(entry["match"])
            if pos > best_pos:
                best, best_pos = i, pos
        if best is None:
            raise AssertionError(f"no canned reply matches request ...{content[-200:]!r}")
        replies = self.entries[best]["replies"]
        reply = replies[min(self.served[best], len(replies) - 1)]
        self.served[best] += 1
        return reply

    def complete(self, request: JudgeRequest) -> str:
        self.requests.append(request)
        return self.reply_for(request.messages[-1][1])


def fixture_dir(name: str) -> Path:
    return METRICS_FIXTURES / name


def predictions_path(name: str) -> Path:
    return fixture_dir(name) / "inputs" / PREDICTIONS[name]
