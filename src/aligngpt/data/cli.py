"""``aligngpt data check``: validate a LLaVA-format data file and its images."""

from __future__ import annotations

from pathlib import Path

import typer

from aligngpt.data.constants import DEFAULT_LEVEL_FIELD, DEFAULT_MAX_PIXELS, DEFAULT_NUM_LEVELS, STAGES

EXIT_BAD_RECORDS = 1
EXIT_BAD_FILE = 2

data_app = typer.Typer(help="Inspect and validate LLaVA-format training data.", no_args_is_help=True)


@data_app.command("check")
def check(
    data: Path = typer.Argument(..., help="LLaVA-format JSON array or JSONL file."),
    images: Path = typer.Option(..., "--images", help="Image root folder (record 'image' paths are relative to it)."),
    stage: str | None = typer.Option(
        None, "--stage", help="pretrain (level required, no text-only records) or finetune."
    ),
    levels: int = typer.Option(DEFAULT_NUM_LEVELS, "--levels", help="Number of alignment levels N (0..N-1)."),
    level_field: str = typer.Option(DEFAULT_LEVEL_FIELD, "--field", help="Name of the level field."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Largest image (pixels); 0: no limit."),
    decode: bool = typer.Option(True, "--decode/--no-decode", help="Fully decode images (finds truncated files)."),
    report: Path | None = typer.Option(None, "--report", help="Write the bad records here as JSON Lines."),
    workers: int = typer.Option(0, "--workers", help="Check records in this many processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    allow_symlink_escape: bool = typer.Option(
        False,
        "--allow-symlink-escape",
        help="Accept images reached through symlinks leading outside --images.",
    ),
) -> None:
    """Name every bad record (file:line, index, id, problem) and count problems; exit 1 if any is bad."""
    from tqdm.auto import tqdm

    from aligngpt.data.records import DataFileError, RecordFile
    from aligngpt.data.validation import RecordReport, RecordValidator, ValidationConfig, validate_records

    if stage is not None and stage not in STAGES:
        raise typer.BadParameter(f"expected one of {', '.join(STAGES)}", param_hint="--stage")
    if not images.is_dir():
        raise typer.BadParameter(f"{images} is not a folder", param_hint="--images")
    try:
        records = RecordFile(data, level_field=level_field)
    except DataFileError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_BAD_FILE) from None
    config = ValidationConfig(
        image_root=images,
        stage=stage,  # type: ignore[arg-type]
        num_levels=levels,
        max_pixels=max_pixels or None,
        decode_images=decode,
        allow_symlink_escape=allow_symlink_escape,
    )

    def show(bad: RecordReport) -> None:
        tqdm.write(bad.describe())

    result = validate_records(
        records,
        RecordValidator(config),
        on_bad_record="skip",
        report_path=report,
        workers=workers,
        progress=progress,
        on_bad=show,
    )
    typer.echo(result.summary())
    if report is not None:
        typer.echo(f"report: {report}")
    if result.num_bad:
        raise typer.Exit(EXIT_BAD_RECORDS)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the root CLI."""
    app.add_typer(data_app, name="data")
