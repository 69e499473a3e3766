"""``aligngpt eval``: run generation + scoring, or re-score an existing answer file (``aligngpt eval score``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from aligngpt.inference.cli import DeviceOption, DtypeOption, TemplateOption, ThreadsOption, check_model_options

eval_app = typer.Typer(
    help="Evaluate on the 12 AlignGPT benchmarks (official LLaVA-1.5 protocol).",
    invoke_without_command=True,
    add_completion=False,
)

EXIT_USAGE = 2
EXIT_FAILURE = 1
REQUIRED = escape("[required]")  # shown in --help; not enforced by click, so that `eval score` works without them


def _parse_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs -> constructor keywords; values are read as JSON when possible (``3``, ``true``)."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        key, value = pair.split("=", 1)
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


def _fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@eval_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", help=f"Model folder or hub id to evaluate. {REQUIRED}"),
    benchmark: str = typer.Option(None, "--benchmark", help=f"Benchmark name(s), comma-separated. {REQUIRED}"),
    data_dir: Path = typer.Option(
        None, "--data-dir", help=f"Root of the LLaVA eval data (playground/data/eval). {REQUIRED}"
    ),
    out: Path = typer.Option(None, "--out", help=f"Output folder (answers, metrics, submission files). {REQUIRED}"),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Generation batch size."),
    limit: int = typer.Option(
        None,
        "--limit",
        min=1,
        help="Only the first N questions per benchmark (per set for toyworld). " + escape("[default: all]"),
    ),
    max_new_tokens: int = typer.Option(
        None,
        "--max-new-tokens",
        min=1,
        help="Override the benchmarks' official answer lengths (smoke runs only). "
        + escape("[default: each benchmark's]"),
    ),
    judge_base_url: str = typer.Option(None, "--judge-base-url", help="OpenAI-compatible endpoint for GPT judging."),
    judge_model: str = typer.Option(None, "--judge-model", help="Judge model (default: the official one)."),
    template: TemplateOption = None,
    dtype: DtypeOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Generate answers with MODEL on each benchmark, then score them (or use a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    given = [model, benchmark, data_dir, out]
    if all(v is None for v in given):
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if any(v is None for v in given):
        raise _fail("--model, --benchmark, --data-dir and --out are all required", EXIT_USAGE)
    check_model_options(model, dtype, template)
    from aligngpt.evaluation.benchmarks import UnknownBenchmarkError, canonical_name

    try:
        names = [canonical_name(n) for n in benchmark.split(",") if n.strip()]
    except UnknownBenchmarkError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    try:
        from aligngpt.evaluation.runner import run_evaluation
    except ModuleNotFoundError as err:
        if err.name != "aligngpt.evaluation.runner":
            raise
        raise _fail("generation is not available in this install (aligngpt.evaluation.runner is missing)") from err
    from aligngpt.evaluation.judge import JudgeError, OpenAIJudge
    from aligngpt.fileio import BadRecordError, MissingDataError

    if threads:
        import torch

        torch.set_num_threads(threads)
    extra = {"max_new_tokens": max_new_tokens}
    if judge_base_url:
        extra["judge"] = OpenAIJudge(judge_base_url, model=judge_model)
    try:
        all_metrics = run_evaluation(
            model=model, benchmarks=names, data_dir=data_dir, out_dir=out, batch_size=batch_size, limit=limit,
            dtype=dtype, device=device, template=template, **extra,
        )  # fmt: skip
    except (MissingDataError, BadRecordError, JudgeError, FileNotFoundError) as err:
        raise _fail(f"{err} (answers generated so far are kept under {out}; rerun to continue)") from err
    from aligngpt.evaluation.benchmarks import get_benchmark
    from aligngpt.evaluation.runner import SUMMARY_FILE

    for name, metrics in all_metrics.items():
        _echo_headline(name, get_benchmark(name).headline_key, metrics)
    typer.echo(f"results written to {out} (summary: {Path(out) / SUMMARY_FILE})")


def _echo_headline(name: str, headline_key: str, metrics: dict) -> None:
    """``name: key = value`` for one benchmark's metrics, then its warnings on stderr."""
    typer.echo(f"{name}: {headline_key} = {metrics.get('headline')}")
    for warning in metrics.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)


@eval_app.command("score")
def score(
    benchmark: str = typer.Option(..., "--benchmark", help="Benchmark name."),
    data_dir: Path = typer.Option(..., "--data-dir", help="The benchmark's data folder (official layout)."),
    predictions: Path = typer.Option(..., "--predictions", help="Answer file (official JSONL)."),
    out: Path = typer.Option(..., "--out", help="Output folder for metrics.json and submission files."),
    judge_base_url: str = typer.Option(None, "--judge-base-url", help="OpenAI-compatible endpoint for GPT judging."),
    judge_model: str = typer.Option(None, "--judge-model", help="Judge model (default: the official one)."),
    judge_cache: Path = typer.Option(None, "--judge-cache", help="Judge reply cache (default: OUT/judge_cache)."),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Benchmark option KEY=VALUE, e.g. pair_by=question_id."
    ),
) -> None:
    """Re-score an answer file: writes OUT/metrics.json plus the benchmark's submission files."""
    from aligngpt.evaluation.benchmarks import UnknownBenchmarkError, get_benchmark
    from aligngpt.evaluation.judge import JudgeError, OpenAIJudge
    from aligngpt.fileio import BadRecordError, MissingDataError

    options = _parse_options(option)
    if judge_cache is not None:
        options["judge_cache_dir"] = judge_cache
    try:
        bench = get_benchmark(benchmark, **options)
    except (UnknownBenchmarkError, TypeError, ValueError) as err:
        raise _fail(str(err), EXIT_USAGE) from err
    if not Path(data_dir).is_dir():
        raise _fail(f"data folder not found: {data_dir}")
    judge = OpenAIJudge(judge_base_url, model=judge_model) if judge_base_url else None
    try:
        metrics = bench.score(data_dir, predictions, out, judge=judge)
    except (MissingDataError, BadRecordError, JudgeError) as err:
        raise _fail(str(err)) from err
    _echo_headline(bench.name, bench.headline_key, metrics)
    typer.echo(f"metrics written to {Path(out) / 'metrics.json'}")


def register(app: typer.Typer) -> None:
    """Add the ``eval`` group to the root ``aligngpt`` app."""
    app.add_typer(eval_app, name="eval")
