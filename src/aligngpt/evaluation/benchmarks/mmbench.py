"""MMBench / MMBench-CN (dev): prompts, the OpenCompass upload xlsx and the offline CircularEval.

The TSV ships every question once per circular shift of its options (``index + k·10^6``); AlignGPT answers
each row once. CircularEval (OpenCompass ``eval_mmbench.py``): per question, rule-based prefetch of the
chosen letter on every pass (any wrong letter -> 0), then a GPT choice extractor for the passes the rules
cannot map (up to 3 tries, then a seeded random letter); the question scores 1 only if every pass is right.
"""

from __future__ import annotations

import io
import math
import random
import string
from pathlib import Path
from typing import Any

from aligngpt.evaluation.benchmarks.base import (
    LONG_MAX_NEW_TOKENS,
    MULTIPLE_CHOICE_SUFFIX,
    MULTIPLE_CHOICE_SUFFIX_CN,
    Benchmark,
)
from aligngpt.evaluation.io import find_file, read_predictions
from aligngpt.evaluation.items import EvalItem
from aligngpt.evaluation.judge import Judge, JudgeRequest, RecordingJudge
from aligngpt.fileio import write_bytes_atomic, write_jsonl_atomic

OPTION_LETTERS = ("A", "B", "C", "D")
CIRCULAR_STRIDE = 1_000_000
UPLOAD_FILE = "answers_upload.xlsx"
DROPPED_COLUMNS = ("hint", "source", "image", "comment")
PREDICTION_COLUMN_POSITION = 6
EXTRACTOR_MODEL = "gpt-3.5-turbo-0613"
EXTRACTOR_TEMPERATURE = 0.7  # OpenCompass OpenAI wrapper defaults
EXTRACTOR_MAX_TOKENS = 512
EXTRACTOR_TRIES = 3
RANDOM_SEED = 2680
API_FAILURE = "Failed to obtain answer via API"
SPLITS = ("full", "dev", "test")
_EXTRACTOR_TEMPLATE = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice "
    "question. You are provided with a question, several options, and an answer, and you need to find which "
    "option is most similar to the answer. If the meaning of all options are significantly different from the "
    "answer, output E. Your should output a single uppercase character in A, B, C, D (if they are valid "
    "options), and E. \nExample 1: \nQuestion: What is the main object in image?\nOptions: A. teddy bear "
    "B. rabbit C. cat D. dog\nAnswer: a cute teddy bear\nYour output: A\nExample 2: \nQuestion: What is the "
    "main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\nAnswer: Spider\nYour output: E\n"
    "Example 3: \nQuestion: {}?\nOptions: {}\nAnswer: {}\nYour output: "
)
# Letter forms accepted by the prefetch after the bare letter: (prefix, suffix) pairs, in order.
_LETTER_FORMS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                 (":", ","), (":", "."), (":", ")"), (":", ")."))  # fmt: skip
_BARE_A_MAX_TOKENS = 3  # a bare "A" in a longer answer may be the article


def is_none(value: Any) -> bool:
    """LLaVA's test for an absent TSV cell (None, NaN, 'nan', 'none')."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def _isna(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_table(path: Path) -> list[dict]:
    """TSV rows as dicts, read with pandas' defaults (its NA strings become NaN, as officially)."""
    import pandas as pd

    return [_plain(row) for row in pd.read_csv(path, sep="\t").to_dict("records")]


def _plain(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if hasattr(v, "item") and not isinstance(v, str):
            v = v.item()  # numpy scalar -> Python
        out[k] = v
    return out


def infer_letter(answer: str, choices: dict[str, str]) -> str | None:
    """OpenCompass ``can_infer``: a letter form, else a unique option text inside the lower-cased answer."""
    letter = _infer_option(answer)
    return letter if letter else _infer_text(answer, choices)


def _infer_option(answer: str, letters: str = "ABCDE") -> str | None:
    if API_FAILURE in answer:
        return None
    tokens = [t.strip() for t in answer.split()]
    bare = [c for c in letters if c in tokens]
    if len(bare) == 1 and not ("A" in tokens and len(tokens) > _BARE_A_MAX_TOKENS):
        return bare[0]
    for prefix, suffix in _LETTER_FORMS:
        found = [c for c in letters if prefix + c + suffix in tokens]
        if len(found) == 1:
            return found[0]
    return None


def _infer_text(answer: str, choices: dict[str, str]) -> str | None:
    answer = answer.lower()
    candidates = [k for k, v in choices.items() if str(v).lower() in answer]
    return candidates[0] if len(candidates) == 1 else None


def _choices(row: dict) -> dict[str, Any]:
    return {c: row[c] for c in OPTION_LETTERS if not _isna(row.get(c))}


def extractor_prompt(row: dict) -> str:
    """The GPT choice-extractor prompt for one xlsx row (options up to the first missing one)."""
    options = "There are several options: \n"
    for c in OPTION_LETTERS:
        if c not in row or _isna(row[c]):
            break
        options += f"{c}. {row[c]}\n"
    return _EXTRACTOR_TEMPLATE.format(row["question"], options, row["prediction"])


class CircularEvaluator:
    """Replays OpenCompass CircularEval over the rows read back from the upload xlsx."""

    def __init__(self, judge: Judge | None, model: str) -> None:
        self.judge = judge
        self.model = model
        self.rng = random.Random(RANDOM_SEED)
        self.calls = 0

    def extract(self, row: dict) -> str:
        choices = _choices(row)
        letter = infer_letter(row["prediction"], choices)
        if letter:
            return letter
        prompt = extractor_prompt(row)
        for attempt in range(EXTRACTOR_TRIES):
            if self.judge is None:
                raise RuntimeError("MMBench CircularEval needs the GPT choice extractor: pass a judge")
            self.calls += 1
            # Each try is a fresh sample at temperature 0.7 (officially a new API call), so it gets its own cache
            # entry; the first try keeps the plain key.
            request = JudgeRequest.user(self.model, prompt, EXTRACTOR_TEMPERATURE, EXTRACTOR_MAX_TOKENS, nonce=attempt)
            reply = self.judge.complete(request).strip()
            if API_FAILURE in reply:
                continue
            letter = infer_letter(reply, choices)
            if letter:
                return letter
        letters = string.ascii_uppercase[: sum(c in row for c in OPTION_LETTERS)] + "E"
        return letters[self.rng.randint(0, len(letters) - 1)]

    def question(self, rows: list[dict], answers: dict) -> tuple[int, list, list]:
        """(hit, GT, PRED) for the passes of one question, stopping where the official code returns."""
        gt, pred = [], []
        for row in rows:
            gt.append(answers[row["index"]])
            pred.append(infer_letter(row["prediction"], _choices(row)) or False)
            if pred[-1] and pred[-1] != gt[-1]:
                return 0, gt, pred
        for i, row in enumerate(rows):
            if pred[i]:
                continue
            pred[i] = self.extract(row)
            if pred[i] != gt[i]:
                return 0, gt, pred
        return 1, gt, pred


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def report(rows: list[dict], group: str | None) -> dict[str, list]:
    """Accuracy table per split (full/dev/test), overall or per group value (sorted)."""
    table: dict[str, list] = {"split": list(SPLITS)}
    keys = ["overall"] if group is None else sorted({r[group] for r in rows})
    for key in keys:
        sub = rows if group is None else [r for r in rows if r[group] == key]
        table[key] = [_mean([r["hit"] for r in sub if split == "full" or r["split"] == split]) for split in SPLITS]
    return table


class MMBench(Benchmark):
    name = "mmbench"
    folder = "mmbench"
    aliases = ("mmbench_en", "mmbench-en")
    max_new_tokens = LONG_MAX_NEW_TOKENS
    image_aspect_ratio = "pad"
    judge_model = EXTRACTOR_MODEL
    question_files = ("mmbench_dev_20230712.tsv",)
    lang = "en"
    headline_key = "circular_accuracy"

    def __init__(self, *, all_rounds: bool = False, question_file: str | None = None, **options) -> None:
        super().__init__(**options)
        self.all_rounds = all_rounds
        self.question_file_names = (question_file,) if question_file else self.question_files

    def table_path(self, data_dir: Path) -> Path:
        return find_file(data_dir, self.question_file_names, f"{self.name} TSV")

    def load(self, data_dir: Path) -> list[EvalItem]:
        suffix = MULTIPLE_CHOICE_SUFFIX_CN if self.lang == "cn" else MULTIPLE_CHOICE_SUFFIX
        items = []
        for row in read_table(self.table_path(data_dir)):
            options = []
            for c in OPTION_LETTERS:
                if is_none(row.get(c)):
                    break
                options.append(str(row[c]))
            chars = list(OPTION_LETTERS[: len(options)])
            for round_id in range(len(options) if self.all_rounds else 1):
                question = str(row["question"])
                if not is_none(row.get("hint")):
                    question = str(row["hint"]) + "\n" + question
                for c, option in zip(chars[:], options, strict=True):
                    question = question + "\n" + c + ". " + option
                fields = {
                    "round_id": round_id,
                    "prompt": question,
                    "options": list(options),
                    "option_char": list(chars),
                }
                meta = {"image_base64": row["image"], "answer_fields": fields, "index": row["index"]}
                items.append(EvalItem(int(row["index"]), None, question + "\n" + suffix, meta))
                options = options[1:] + options[:1]
                chars = chars[1:] + chars[:1]
        return items

    def _score(self, data_dir: Path, predictions_path: Path, out_dir: Path, judge: Judge | None) -> dict:
        import pandas as pd

        meta = read_table(self.table_path(data_dir))
        upload = self._upload_rows(meta, read_predictions(predictions_path).records)
        columns = list(upload[0]) if upload else []
        _write_xlsx_atomic(pd.DataFrame(upload, columns=columns), out_dir / UPLOAD_FILE)
        metrics: dict[str, Any] = {"files": [UPLOAD_FILE], "rows": len(upload), "circular_accuracy": None}
        if not meta or "answer" not in meta[0] or all(_isna(r.get("answer")) for r in meta):
            metrics["note"] = "no answers in the TSV (test split): submit the xlsx to the MMBench server"
            return metrics
        recorder = RecordingJudge(judge) if judge is not None else None
        metrics.update(self._circular_eval(out_dir / UPLOAD_FILE, meta, recorder, out_dir))
        if recorder is not None and recorder.log:
            write_jsonl_atomic(
                out_dir / "judge_requests.jsonl",
                [{"model": r.model, "prompt": r.messages[-1][1], "reply": reply} for r, reply in recorder.log],
            )
        return metrics

    def _upload_rows(self, meta: list[dict], predictions: list[dict]) -> list[dict]:
        """The official converter's table: TSV minus hint/source/image/comment, ``prediction`` at column 6."""
        text_by_index: dict = {}
        for p in predictions:
            text_by_index[p["question_id"]] = p["text"]
        rows = []
        for r in meta:
            kept = [(k, v) for k, v in r.items() if k not in DROPPED_COLUMNS]
            kept.insert(PREDICTION_COLUMN_POSITION, ("prediction", text_by_index.get(r["index"])))
            rows.append(dict(kept))
        if self.only_predicted:
            rows = [r for r in rows if r["index"] % CIRCULAR_STRIDE in {i % CIRCULAR_STRIDE for i in text_by_index}]
        return rows

    def _circular_eval(self, xlsx: Path, meta: list[dict], judge: Judge | None, out_dir: Path) -> dict:
        import pandas as pd

        data = [_plain(r) for r in pd.read_excel(xlsx).to_dict("records")]  # the official xlsx round trip
        for r in data:
            r["prediction"] = str(r["prediction"])
        data = [{(k.lower() if k not in "ABCD" else k): v for k, v in r.items()} for r in data]
        data.sort(key=lambda r: r["index"])
        answers = {r["index"]: r["answer"] for r in meta}
        info = {r["index"]: r for r in meta}
        evaluator = CircularEvaluator(judge, self.judge_model)
        per_question = []
        for main in [r for r in data if r["index"] < CIRCULAR_STRIDE]:
            idx = main["index"]
            passes = [r for r in data if r["index"] % CIRCULAR_STRIDE == idx]
            hit, gt, pred = evaluator.question(passes, answers)
            per_question.append(
                {"index": idx, "hit": hit, "category": info[idx]["category"], "l2-category": info[idx]["l2-category"],
                 "split": info[idx]["split"], "GT": gt, "PRED": pred}
            )  # fmt: skip
        write_jsonl_atomic(out_dir / "per_question.jsonl", per_question)
        prediction = {r["index"]: r["prediction"] for r in data}
        write_jsonl_atomic(
            out_dir / "per_row.jsonl",
            [{"index": i, "base_index": i % CIRCULAR_STRIDE, "pass": i // CIRCULAR_STRIDE, "answer": answers[i],
              "prediction": prediction[i]} for i in (r["index"] for r in meta) if i in prediction],
        )  # fmt: skip
        overall = report(per_question, None)
        return {
            "circular_accuracy": overall["overall"][0],
            "questions": len(per_question),
            "gpt_calls": evaluator.calls,
            "overall_csv": overall,
            "l2_csv": report(per_question, "l2-category"),
            "leaf_csv": report(per_question, "category"),
        }


class MMBenchCN(MMBench):
    name = "mmbench_cn"
    folder = "mmbench_cn"
    aliases = ("mmbench-cn",)
    question_files = ("mmbench_dev_cn_20231003.tsv",)
    lang = "cn"


def _write_xlsx_atomic(frame, path: Path) -> None:
    buffer = io.BytesIO()
    frame.to_excel(buffer, index=False, engine="openpyxl")
    write_bytes_atomic(path, buffer.getvalue())
