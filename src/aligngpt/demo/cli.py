"""``aligngpt demo``: the offline toy world end to end."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder (reruns reuse finished steps)."),
    seeds: int = typer.Option(None, "--seeds", min=1, help="Seeds per variant (default: 1, or 3 with --full)."),
    full: bool = typer.Option(
        False,
        "--full",
        help="3 seeds and the global/local/uniform ablations with the default recipe; about 23 min on 2 cores "
        "(docs/toyworld.md). Add the prefix control with --variants.",
    ),
    size: str = typer.Option("default", "--size", help="default, or smoke (tiny sizes, a few steps: a quick check)."),
    study: str = typer.Option(
        None,
        "--study",
        help="A study preset instead of a size: noisy-tasks (one caption phrasing answered like stage-1 partial "
        "captions; 3 seeds, all six variants, captions in every phrasing and the gate per phrasing; 48 min "
        "measured on 2 cores, docs/toyworld.md), or noisy-smoke (the same at smoke size).",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Trainings run in parallel, one torch thread each."),
    rebuild_zoo: bool = typer.Option(
        False,
        "--rebuild-zoo",
        help="Train the tokenizer, CLIP and LLaMA here instead of using the copies shipped with the package (the "
        "output of the same builder); about 2.5 min on 2 cores.",
    ),
    variants: str = typer.Option(
        None,
        "--variants",
        help="Comma-separated subset of aligngpt, baseline, prefix, global, local, uniform (default: the size's; "
        "aligngpt is always included).",
    ),
) -> None:
    """World -> zoo -> CLIP levels -> stage 1 -> stage 2 -> eval, for AlignGPT and LLaVA-1.5; writes report.md."""
    from aligngpt.demo.pipeline import run_demo

    chosen = tuple(name.strip() for name in variants.split(",") if name.strip()) if variants else None
    report = run_demo(out, size=size, seeds=seeds, full=full, workers=workers, variants=chosen,
                      rebuild_zoo=rebuild_zoo, study=study)  # fmt: skip
    typer.echo(f"report written to {report}")


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
