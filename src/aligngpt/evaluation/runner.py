"""``aligngpt eval``: batched generation on benchmarks, resumable answer files, scoring and a results record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from aligngpt.data.digest import update_with_file
from aligngpt.errors import writing
from aligngpt.evaluation.benchmarks import get_benchmark
from aligngpt.evaluation.benchmarks.base import Benchmark
from aligngpt.evaluation.items import EvalItem, answer_record
from aligngpt.fileio import cut_torn_tail, read_jsonl_log, write_json_atomic, write_text_atomic

ANSWERS_FILE = "answers.jsonl"
RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
RUN_FILE = "answers.run.json"  # which model and settings wrote answers.jsonl
STALE_ANSWERS_FILE = "answers.stale.jsonl"
_DATA_SUFFIXES = (".json", ".jsonl", ".tsv", ".csv", ".txt", ".xlsx")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def benchmark_dir(data_dir: Path, bench: Benchmark) -> Path:
    """``DATA_DIR/<benchmark folder>`` when it exists (the LLaVA ``playground/data/eval`` root), else ``DATA_DIR``."""
    nested = Path(data_dir) / bench.folder
    return nested if nested.is_dir() else Path(data_dir)


def _item_key(question_id: Any) -> str:
    return json.dumps(question_id)


def read_answered(path: Path) -> list[dict]:
    """Answer lines already written, with the file made safe to append to.

    A torn last line (a kill or a full disk before its newline) is cut off and redone, even when it parses; a
    damaged complete line is dropped from the file (rewritten atomically, with a warning) and only its answer is
    redone. Every other answer is kept as it is.
    """
    log = read_jsonl_log(path)
    cut_torn_tail(log)
    records = [r for r in log.records if isinstance(r, dict) and "question_id" in r]
    if log.bad_lines or len(records) != len(log.records):
        damaged = len(log.bad_lines) + len(log.records) - len(records)
        tqdm.write(f"{path}: {damaged} damaged line(s) dropped (not answer records); their answers are redone")
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


def file_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the contents of ``paths`` in sorted order (names included)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        update_with_file(digest, path)
    return digest.hexdigest()


def _model_files(model: str | os.PathLike) -> list[Path]:
    folder = Path(model)
    return [p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()] if folder.is_dir() else []


def _data_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix in _DATA_SUFFIXES]


def _retire_stale_answers(answers_path: Path, identity: dict) -> None:
    run_file = answers_path.with_name(RUN_FILE)
    recorded = json.loads(run_file.read_text()) if run_file.is_file() else None
    if answers_path.is_file() and recorded != identity:
        stale = answers_path.with_name(STALE_ANSWERS_FILE)
        os.replace(answers_path, stale)
        tqdm.write(f"{answers_path} was written by another model or settings; moved to {stale}, starting over")
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, identity)


def _batches(items: Sequence[EvalItem], size: int) -> Iterable[Sequence[EvalItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_answers(
    pipeline,
    bench: Benchmark,
    items: Sequence[EvalItem],
    answers_path: Path,
    model_id: str,
    batch_size: int = 1,
    max_new_tokens: int | None = None,
    run_identity: dict | None = None,
) -> int:
    """Append answers for the items not yet in ``answers_path`` (flushed per batch); returns how many were new.

    The file keeps the items' order, so a resumed run produces the same file as an uninterrupted one. Answers written
    by another model or other settings (``run_identity``, recorded beside the file) are never resumed: they are moved
    to ``answers.stale.jsonl`` and generation starts over.
    """
    from aligngpt.inference.pipeline import GenerationSettings

    _retire_stale_answers(answers_path, run_identity or {})
    done = {_item_key(record["question_id"]) for record in read_answered(answers_path)}
    todo = [item for item in items if _item_key(item.question_id) not in done]
    settings = GenerationSettings(max_new_tokens=max_new_tokens or bench.max_new_tokens, temperature=0.0)
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        writing(answers_path),
        answers_path.open("a") as handle,
        tqdm(total=len(items), initial=len(items) - len(todo), desc=bench.name, unit="q") as progress,
    ):
        for chunk in _batches(todo, batch_size):
            images = [item.open_image() for item in chunk]
            answers = pipeline.generate_batch(
                [(image, item.prompt) for image, item in zip(images, chunk)],
                settings,
                aspect_ratio=bench.image_aspect_ratio,
            )
            for item, answer in zip(chunk, answers):
                record = answer_record(item, answer.text, model_id)
                record["metadata"] = {"alignment_weights": answer.alignment_weights}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            progress.update(len(chunk))
    return len(todo)


def run_evaluation(
    model: str | os.PathLike,
    benchmarks: Sequence[str],
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch_size: int = 1,
    limit: int | None = None,
    pipeline=None,
    judge=None,
    dtype: str | None = None,
    device: str | None = None,
    template: str | None = None,
    benchmark_options: dict | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, dict]:
    """Generate and score ``benchmarks``; returns ``{name: metrics}``.

    Per benchmark, ``OUT/<name>/`` holds ``answers.jsonl`` (official answer-file format, written incrementally and
    resumed on rerun), ``metrics.json`` and submission files from the scorer, and ``results.json`` recording every
    setting (template, prompt format, decoding, image padding, model and data checksums). ``OUT/summary.md`` lists
    the headline numbers. ``max_new_tokens`` overrides the benchmarks' official limits (smoke runs only).
    """
    if pipeline is None:
        from aligngpt.inference.pipeline import load

        pipeline = load(model, dtype=dtype, device=device, template=template)
    out_dir = Path(out_dir)
    model_id = Path(model).name or str(model)
    model_checksum = file_digest(_model_files(model)) if _model_files(model) else None
    all_metrics: dict[str, dict] = {}
    for name in benchmarks:
        bench = get_benchmark(name, only_predicted=limit is not None, **(benchmark_options or {}).get(name, {}))
        folder = benchmark_dir(Path(data_dir), bench)
        items = bench.load(folder)
        if limit is not None:
            items = bench.limit_items(items, limit)
        bench_out = out_dir / bench.name
        answers_path = bench_out / ANSWERS_FILE
        identity = {
            "model": str(model),
            "model_sha256": model_checksum,
            "template": pipeline.template.name,
            "max_new_tokens": max_new_tokens or bench.max_new_tokens,
            "options": (benchmark_options or {}).get(name, {}),
        }
        new = generate_answers(pipeline, bench, items, answers_path, model_id, batch_size, max_new_tokens, identity)
        metrics = bench.score(folder, answers_path, bench_out, judge=judge)
        all_metrics[bench.name] = metrics
        results = {
            "benchmark": bench.name,
            "headline_key": bench.headline_key,
            "headline": metrics.get("headline"),
            "n_questions": len(items),
            "n_generated_this_run": new,
            "settings": {
                "template": pipeline.template.name,
                "system_prompt": pipeline.template.system,
                "user_message": "<image>\\n + question text (question files hold the answer-format suffix)",
                "decoding": "greedy",
                "max_new_tokens": max_new_tokens or bench.max_new_tokens,
                "image_aspect_ratio": bench.image_aspect_ratio,
                "batch_size": batch_size,
                "limit": limit,
                "dtype": str(pipeline.model.dtype),
                "device": str(pipeline.device),
            },
            "model": {"path": str(model), "sha256": model_checksum},
            "data": {"path": str(folder), "sha256": file_digest(_data_files(folder))},
            "metrics": metrics,
        }
        write_json_atomic(bench_out / RESULTS_FILE, results)
    write_text_atomic(out_dir / SUMMARY_FILE, summary_markdown(all_metrics, model_id))
    return all_metrics


def summary_markdown(all_metrics: dict[str, dict], model_id: str) -> str:
    lines = [f"# Evaluation of {model_id}", "", "| benchmark | headline |", "|---|---|"]
    for name, metrics in all_metrics.items():
        headline = metrics.get("headline")
        lines.append(f"| {name} | {headline:.4g} |" if isinstance(headline, float) else f"| {name} | {headline} |")
    return "\n".join(lines) + "\n"
