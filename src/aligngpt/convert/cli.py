"""``aligngpt convert official SRC DST``."""

from __future__ import annotations

from pathlib import Path

import typer

convert_app = typer.Typer(help="Import checkpoints from other formats.", no_args_is_help=True)


@convert_app.command("official")
def convert_official_command(
    source: Path = typer.Argument(..., help="Official AlignGPT (or LLaVA-1.5) folder: full, or stage-1 adapter."),
    destination: Path = typer.Argument(..., help="Output folder (safetensors + processor)."),
    vision_tower: str | None = typer.Option(
        None,
        help="Vision tower folder or hub id; overrides mm_vision_tower (relative paths resolve against the cwd).",
    ),
    base_llm: Path | None = typer.Option(
        None, help="Base LLM folder, needed for a stage-1 (mm_projector_align.bin) source."
    ),
    dtype: str | None = typer.Option(None, help="Cast weights, e.g. bfloat16 or float16 (default: as stored)."),
) -> None:
    """Convert an official checkpoint into this project's format."""
    import torch

    from aligngpt.convert.official import ConversionError, convert_official

    try:
        model, _, notes = convert_official(
            source,
            destination,
            vision_tower=vision_tower,
            base_llm=base_llm,
            dtype=getattr(torch, dtype) if dtype else None,
        )
    except (ConversionError, FileNotFoundError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    for note in notes:
        typer.echo(f"note: {note}")
    config = model.config
    typer.echo(
        f"wrote {destination}: alignment_mode={config.alignment_mode}, levels={config.num_alignment_levels}, "
        f"image tokens={config.num_image_tokens}, template={config.chat_template_name}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
