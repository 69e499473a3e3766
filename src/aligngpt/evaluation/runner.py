"""``aligngpt eval``: batched generation on benchmarks, resumable answer files, scoring and a results record."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from aligngpt.data.digest import file_digest
from aligngpt.evaluation.benchmarks import get_benchmark
from aligngpt.evaluation.benchmarks.base import Benchmark
from aligngpt.fileio import write_json_atomic, write_text_atomic
from aligngpt.inference.answers import answer_tasks, model_digest, run_identity
from aligngpt.prompts import IMAGE_TOKEN

ANSWERS_FILE = "answers.jsonl"
RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
_DATA_SUFFIXES = (".json", ".jsonl", ".tsv", ".csv", ".txt", ".xlsx")


def benchmark_dir(data_dir: Path, bench: Benchmark) -> Path:
    """``DATA_DIR/<benchmark folder>`` when it exists (the LLaVA ``playground/data/eval`` root), else ``DATA_DIR``."""
    nested = Path(data_dir) / bench.folder
    return nested if nested.is_dir() else Path(data_dir)


def _data_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix in _DATA_SUFFIXES]


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

    Per benchmark, ``OUT/<name>/`` holds ``answers.jsonl`` (official answer-file format, written and resumed by
    :mod:`aligngpt.inference.answers`, with its run record ``answers.run.json``), ``metrics.json`` and submission
    files from the scorer, and ``results.json`` recording every setting (template, prompt format, decoding, image
    padding, model and data checksums). ``OUT/summary.md`` lists the headline numbers. ``max_new_tokens``
    overrides the benchmarks' official limits (smoke runs only).
    """
    if pipeline is None:
        from aligngpt.inference.pipeline import load

        pipeline = load(model, dtype=dtype, device=device, template=template)
    from aligngpt.inference.pipeline import GenerationSettings

    out_dir = Path(out_dir)
    model_id = Path(model).name or str(model)
    model_checksum = model_digest(model)
    all_metrics: dict[str, dict] = {}
    for name in benchmarks:
        options = (benchmark_options or {}).get(name, {})
        bench = get_benchmark(name, only_predicted=limit is not None, **options)
        folder = benchmark_dir(Path(data_dir), bench)
        items = bench.load(folder)
        if limit is not None:
            items = bench.limit_items(items, limit)
        bench_out = out_dir / bench.name
        answers_path = bench_out / ANSWERS_FILE
        settings = GenerationSettings(max_new_tokens=max_new_tokens or bench.max_new_tokens, temperature=0.0)
        identity = run_identity(
            model, model_checksum, model_id, pipeline.template.name, settings,
            image_aspect_ratio=bench.image_aspect_ratio, options=options,
        )  # fmt: skip
        summary = answer_tasks(
            pipeline, [item.task() for item in items], answers_path, settings, identity,
            batch_size=batch_size, aspect_ratio=bench.image_aspect_ratio, desc=bench.name,
        )  # fmt: skip
        metrics = bench.score(folder, answers_path, bench_out, judge=judge)
        all_metrics[bench.name] = metrics
        results = {
            "benchmark": bench.name,
            "headline_key": bench.headline_key,
            "headline": metrics.get("headline"),
            "n_questions": len(items),
            "n_generated_this_run": summary.answered_now,
            "settings": {
                "template": pipeline.template.name,
                "system_prompt": pipeline.template.system,
                "user_message": f"{IMAGE_TOKEN}\\n + question text (question files hold the answer-format suffix)",
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
