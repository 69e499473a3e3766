"""``aligngpt train`` and ``aligngpt merge-lora``.

``train`` has one ``--flag`` per :class:`~aligngpt.training.config.TrainConfig` field (generated from the dataclass,
so the CLI, the YAML file and the Python API cannot drift apart). Precedence: recipe defaults < ``--config`` YAML <
flags.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path

import typer
from rich.markup import escape

from aligngpt.training.config import RECIPE_DEFAULTED, REQUIRED_SETTINGS, TrainConfig


def _flag(name: str) -> str:
    return "--" + _dashed(name)


def _base_type(annotation) -> type:
    """``int | None`` -> ``int`` (dataclass annotations are strings under ``from __future__ import annotations``)."""
    hint = typing.get_type_hints(TrainConfig)[annotation] if isinstance(annotation, str) else annotation
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _shown_default(item: dataclasses.Field) -> str | None:
    """The default ``--help`` shows (every flag's own default is ``None``, "not given", so that YAML can set it)."""
    if item.name in RECIPE_DEFAULTED:
        return "the recipe's"
    if item.default is None:
        return None
    if isinstance(item.default, bool):
        return _dashed(item.name) if item.default else f"no-{_dashed(item.name)}"
    return str(item.default)


def _train_parameters() -> list[inspect.Parameter]:
    params = [
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help="YAML file of settings (keys = the long flag names)."),
            annotation=typing.Optional[Path],  # noqa: UP045 - typer needs a runtime type
        )
    ]
    for item in dataclasses.fields(TrainConfig):
        kind = _base_type(item.name)
        help_text = item.metadata.get("help", "")
        panel = item.metadata.get("group", "training").capitalize()
        names = (f"{_flag(item.name)}/--no-{_dashed(item.name)}",) if kind is bool else (_flag(item.name),)
        if item.name in REQUIRED_SETTINGS:
            help_text += " " + escape("[required: here or in --config]")
        default = _shown_default(item)
        if default is not None:
            help_text += " " + escape(f"[default: {default}]")
        option = typer.Option(None, *names, help=help_text, rich_help_panel=panel, show_default=False)
        params.append(
            inspect.Parameter(
                item.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option,
                annotation=typing.Optional[kind],  # noqa: UP045
            )
        )
    return params


def train_command(**kwargs) -> None:
    """Train an AlignGPT recipe: pretrain (stage 1), finetune (stage 2), finetune-lora or finetune-qlora."""
    from aligngpt.training.config import resolve_config
    from aligngpt.training.engine import train

    config_file = kwargs.pop("config_file", None)
    try:
        config = resolve_config(yaml_path=config_file, overrides=kwargs)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    try:
        result = train(config)  # a refused resume is a UserError: the CLI's error boundary prints it
    finally:
        _close_process_group()
    for note in result.notes:
        typer.echo(note)
    message = f"trained {result.global_step} steps; outputs in {result.output_dir}"
    if result.skipped_records:
        message += f" ({result.skipped_records} bad records skipped, see the report there)"
    typer.echo(message)


def _close_process_group() -> None:
    """Under ``torchrun`` the Trainer opened a process group; close it before the interpreter exits, or gloo's
    worker threads can abort the process at teardown (``terminate called without an active exception``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_params = _train_parameters()
train_command.__signature__ = inspect.Signature(_params)  # type: ignore[attr-defined]
train_command.__annotations__ = {param.name: param.annotation for param in _params}


def merge_lora_command(
    source: Path = typer.Argument(..., help="A finetune-lora or finetune-qlora output folder (model + lora_adapter/)."),
    destination: Path = typer.Argument(..., help="Where the merged model + processor go."),
    dtype: str | None = typer.Option(None, help="Save in this dtype (float32, bfloat16, float16)."),
) -> None:
    """Fold the LoRA adapter into the LLM weights and save an ordinary AlignGPT model folder."""
    import torch

    from aligngpt.training.lora import merge_lora

    out = merge_lora(source, destination, getattr(torch, dtype) if dtype else None)
    typer.echo(f"merged model written to {out}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``merge-lora`` to the root CLI."""
    app.command(name="train", help=train_command.__doc__)(train_command)
    app.command(name="merge-lora")(merge_lora_command)
