"""``aligngpt score`` (CLIP similarity -> alignment levels) and ``aligngpt levels`` (re-bucket scores)."""

from __future__ import annotations

from pathlib import Path

import typer

from aligngpt.data.constants import (
    DEFAULT_LEVEL_FIELD,
    DEFAULT_MAX_PIXELS,
    DEFAULT_NUM_LEVELS,
    DEFAULT_SCORE_BATCH_SIZE,
    DEFAULT_SCORE_FIELD,
    DEFAULT_SCORE_WORKERS,
    ON_BAD_RECORD,
)

EXIT_FAILED = 1


def score(
    data: Path = typer.Argument(..., help="LLaVA-format JSON array or JSONL (e.g. the 558K pre-training file)."),
    images: Path = typer.Option(..., "--images", help="Image root folder."),
    clip: str = typer.Option(..., "--clip", help="Dual encoder folder or hub id (CLIPModel, SiglipModel, ...)."),
    out: Path = typer.Option(..., "--out", help="Output copy of DATA with levels and scores."),
    levels: int = typer.Option(DEFAULT_NUM_LEVELS, "--levels", help="Number of levels N (0 lowest .. N-1 highest)."),
    batch_size: int = typer.Option(DEFAULT_SCORE_BATCH_SIZE, "--batch-size", help="Pairs per forward pass."),
    level_field: str = typer.Option(DEFAULT_LEVEL_FIELD, "--field", help="Field that receives the level."),
    score_field: str = typer.Option(DEFAULT_SCORE_FIELD, "--score-field", help="Field that receives the raw score."),
    workers: int = typer.Option(DEFAULT_SCORE_WORKERS, "--workers", help="DataLoader workers decoding images."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on cuda, fp32 on cpu), float32, float16, bfloat16."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Largest image (pixels); 0: no limit."),
    on_bad_record: str = typer.Option("error", "--on-bad-record", help="error: stop; skip: leave out and report."),
    restart: bool = typer.Option(False, "--restart", help="Discard saved partial scores and start over."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    allow_symlink_escape: bool = typer.Option(
        False,
        "--allow-symlink-escape",
        help="Accept images reached through symlinks leading outside --images.",
    ),
) -> None:
    """Score every image-caption pair with CLIP and write N equal-count alignment levels (resumable)."""
    from aligngpt.data.records import DataFileError
    from aligngpt.data.validation import BadRecordError
    from aligngpt.scoring.run import ScoreConfig, score_dataset
    from aligngpt.scoring.score_log import ScoreLogMismatchError

    if on_bad_record not in ON_BAD_RECORD:
        raise typer.BadParameter(f"expected one of {', '.join(ON_BAD_RECORD)}", param_hint="--on-bad-record")
    try:
        config = ScoreConfig(
            data=data,
            images=images,
            clip=clip,
            out=out,
            num_levels=levels,
            batch_size=batch_size,
            level_field=level_field,
            score_field=score_field,
            workers=workers,
            device=device,
            dtype=dtype,
            max_pixels=max_pixels or None,
            on_bad_record=on_bad_record,  # type: ignore[arg-type]
            restart=restart,
            progress=progress,
            allow_symlink_escape=allow_symlink_escape,
        )
        result = score_dataset(config)
    except BadRecordError as err:
        typer.echo(
            f"error: bad record (scores so far are saved; fix it or use --on-bad-record skip):\n{err}",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED) from None
    except (DataFileError, ScoreLogMismatchError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(result.summary_txt.read_text(encoding="utf-8"), nl=False)
    typer.echo(f"wrote {result.out} ({result.num_scored} scored, {result.num_text_only} text-only copied through)")
    typer.echo(f"summary: {result.summary_txt}, {result.summary_png}")
    if result.skipped_report is not None:
        typer.echo(f"{result.num_skipped} bad records skipped, listed in {result.skipped_report}")


def levels(
    scored: Path = typer.Argument(..., help="Output of `aligngpt score` (records carry the raw score)."),
    num_levels: int = typer.Option(..., "--levels", help="Number of levels N."),
    out: Path = typer.Option(..., "--out", help="Output copy with the new levels."),
    level_field: str = typer.Option(DEFAULT_LEVEL_FIELD, "--field", help="Field that receives the level."),
    score_field: str = typer.Option(DEFAULT_SCORE_FIELD, "--score-field", help="Field holding the saved score."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Re-bucket saved CLIP scores into N levels without recomputing CLIP."""
    from aligngpt.data.records import DataFileError
    from aligngpt.scoring.levels import relevel

    try:
        result = relevel(scored, out, num_levels, level_field=level_field, score_field=score_field, progress=progress)
    except (DataFileError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(result.summary_txt.read_text(encoding="utf-8"), nl=False)
    typer.echo(f"wrote {result.out}; summary: {result.summary_txt}, {result.summary_png}")


def register(app: typer.Typer) -> None:
    """Add ``score`` and ``levels`` to the root CLI."""
    app.command(name="score")(score)
    app.command(name="levels")(levels)
