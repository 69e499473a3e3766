"""``aligngpt chat``, ``aligngpt predict`` and ``aligngpt serve``.

Heavy imports (torch, transformers, fastapi) happen inside the commands so ``aligngpt --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

ModelOption = Annotated[str, typer.Option("--model", "-m", help="Model folder (ours or an official checkpoint).")]
TemplateOption = Annotated[
    str | None, typer.Option(help="Chat template; default: the model config's (vicuna_v1 for official checkpoints).")
]
DtypeOption = Annotated[
    str | None, typer.Option(help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU).")
]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: cuda when available).")]
VisionTowerOption = Annotated[
    str | None, typer.Option(help="Official checkpoints only: vision tower folder overriding mm_vision_tower.")
]
ThreadsOption = Annotated[
    int | None, typer.Option(min=1, help="CPU threads for torch (1 is often fastest on a busy machine).")
]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DTYPES = ("float32", "bfloat16", "float16")


def check_model_options(model: str, dtype: str | None, template: str | None) -> None:
    """Refuse a missing model folder, an unknown dtype or template before the model (or torch) is loaded."""
    from aligngpt.model_files import check_model_source

    check_model_source(model)
    if dtype is not None and dtype not in DTYPES:
        raise typer.BadParameter(f"expected one of {', '.join(DTYPES)}", param_hint="--dtype")
    if template is not None:
        from aligngpt.processing.templates import get_template

        try:
            get_template(template)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--template") from None


def _load(
    model: str,
    dtype: str | None,
    device: str | None,
    template: str | None,
    vision_tower: str | None,
    threads: int | None = None,
):
    import torch

    from aligngpt.errors import describe_user_error
    from aligngpt.inference.pipeline import load

    if threads:
        torch.set_num_threads(threads)
    try:
        return load(model, dtype=dtype, device=device, template=template, vision_tower=vision_tower)
    except OSError as err:  # transformers reports folders and hub ids it cannot load as OSError
        if describe_user_error(err) is not None:
            raise
        raise typer.BadParameter(f"cannot load {model}: {err}", param_hint="--model") from err


def chat(
    model: ModelOption,
    image: Annotated[
        str | None, typer.Option(help="Image file, http(s)/data: URL, or a folder (switch with /image N).")
    ] = None,
    template: TemplateOption = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy decoding.")] = 0.2,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass (when sampling).")] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 512,
    show_alignment: Annotated[
        bool, typer.Option(help="Print the gate weights α as a bar chart after answers.")
    ] = False,
    dtype: DtypeOption = None,
    device: DeviceOption = None,
    vision_tower: VisionTowerOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Chat about an image in the terminal; answers stream as they are generated. /help lists commands."""
    check_model_options(model, dtype, template)
    from aligngpt.inference.chat import ChatSession, ImageChoice, run_chat
    from aligngpt.inference.images import ImageError, load_image
    from aligngpt.inference.pipeline import GenerationSettings

    try:
        choice = ImageChoice.from_argument(image)
        picture = load_image(choice.source) if choice.source else None
    except (ImageError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--image") from err
    pipeline = _load(model, dtype, device, template, vision_tower, threads)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    session = ChatSession(pipeline, picture, settings)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    where = f"image: {choice.source}" if choice.source else "no image"
    write(f"AlignGPT chat ({where}; template {pipeline.template.name}). /help lists commands, Ctrl-D leaves.\n")

    def read_line() -> str:
        write("USER: ")  # written here, not by input(): readline would send it to stderr
        return input()

    run_chat(session, choice, read_line, write, show_alignment=show_alignment)
    write("\n")


def predict(
    model: ModelOption,
    questions: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Question JSONL (LLaVA eval format).")],
    out: Annotated[Path, typer.Option(help="Answer JSONL; rerunning skips the ids already answered.")],
    images: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="Folder the 'image' fields are relative to.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    template: TemplateOption = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy decoding (the evaluation default).")] = 0.0,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    model_id: Annotated[str | None, typer.Option(help="model_id written into answers (default: folder name).")] = None,
    dtype: DtypeOption = None,
    device: DeviceOption = None,
    vision_tower: VisionTowerOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Answer a question file in batches; resumable, written atomically."""
    check_model_options(model, dtype, template)
    from aligngpt.inference.pipeline import GenerationSettings
    from aligngpt.inference.predict import predict_file, read_questions

    try:
        read_questions(questions)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--questions") from err
    pipeline = _load(model, dtype, device, template, vision_tower, threads)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    try:
        summary = predict_file(
            pipeline, questions, out, images, settings, batch_size, model_id or Path(model).resolve().name, model=model
        )
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(
        f"{summary.answered_now} answered now, {summary.already_answered} already answered, {summary.total} in {out}"
    )


def serve(
    ctx: typer.Context,
    model: ModelOption,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    allow_dir: Annotated[
        list[Path] | None, typer.Option(help="Folder local image paths / file: URLs may come from (repeatable).")
    ] = None,
    allow_remote_images: Annotated[bool, typer.Option(help="Let requests make the server fetch http(s) URLs.")] = False,
    api_key: Annotated[
        str | None, typer.Option(envvar="ALIGNGPT_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1.")
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Model id clients use (default: folder name).")] = None,
    template: TemplateOption = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most requests batched into one generate.")] = 8,
    max_queue: Annotated[int, typer.Option(min=1, help="Waiting requests before answering 503.")] = 64,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, help="How long a request waits for companions.")] = 10.0,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")] = 1024,
    max_image_pixels: Annotated[int, typer.Option(min=1)] = 4096 * 4096,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body in MiB.")] = 32.0,
    dtype: DtypeOption = None,
    device: DeviceOption = None,
    vision_tower: VisionTowerOption = None,
    threads: ThreadsOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    engine: Annotated[
        str, typer.Option(help="aligngpt (this server) or vllm (vLLM's OpenAI server with the aligngpt plugin).")
    ] = "aligngpt",
    vllm_python: Annotated[
        Path,
        typer.Option(envvar="ALIGNGPT_VLLM_PYTHON", help="Python of the vLLM environment (scripts/build-vllm-env.sh)."),
    ] = Path(".venv-vllm/bin/python"),
) -> None:
    """OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, /health) with a web page at /.

    With --engine vllm, options after `--` go to vLLM's server (e.g. `-- --enforce-eager --tensor-parallel-size 2`).
    """
    check_model_options(model, dtype, template)
    if ctx.args and engine != "vllm":
        raise typer.BadParameter(
            f"unexpected arguments {' '.join(ctx.args)!r} (only --engine vllm passes extra options on)"
        )
    if engine not in ENGINES:
        raise typer.BadParameter(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}", param_hint="--engine")
    if engine == "vllm":
        command = vllm_command(vllm_python, model, host, port, api_key, model_name, template, dtype) + list(ctx.args)
        raise typer.Exit(_run_vllm(vllm_python, command))
    import uvicorn

    from aligngpt.inference.server import ServerConfig, create_app
    from aligngpt.inference.server.config import MIB

    for folder in allow_dir or []:
        if not folder.is_dir():
            raise typer.BadParameter(f"{folder} is not a folder", param_hint="--allow-dir")
    if host not in LOOPBACK_HOSTS and not api_key:
        typer.echo(f"warning: listening on {host} without --api-key: anyone who can reach it can use it", err=True)
    pipeline = _load(model, dtype, device, template, vision_tower, threads)
    config = ServerConfig(
        model_name=model_name or Path(model).resolve().name,
        api_key=api_key,
        allow_dirs=tuple(allow_dir or ()),
        allow_remote_images=allow_remote_images,
        max_body_bytes=int(max_body_mb * MIB),
        max_image_pixels=max_image_pixels,
        max_tokens_limit=max_tokens_limit,
        max_queue=max_queue,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
    )
    app = create_app(pipeline, config)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


ENGINES = ("aligngpt", "vllm")


def vllm_command(
    python: Path, model: str, host: str, port: int, api_key: str | None, model_name: str | None,
    template: str | None, dtype: str | None,
) -> list[str]:  # fmt: skip
    """The ``aligngpt_vllm.serve`` command line (vLLM's server with aligngpt's tokenizer mode, the chat template saved
    in the folder and its stop strings); a template alias is passed as the name it stands for."""
    from aligngpt.processing.templates import resolve_template_name

    command = [
        str(python), "-m", "aligngpt_vllm.serve", "--model", str(model), "--host", host, "--port", str(port),
        "--served-model-name", model_name or Path(model).resolve().name,
    ]  # fmt: skip
    if api_key:
        command += ["--api-key", api_key]
    if template:
        command += ["--template", resolve_template_name(template)]
    if dtype:
        command += ["--dtype", dtype]
    return command


def _run_vllm(python: Path, command: list[str]) -> int:
    """Replace this process with vLLM's server (signals such as Ctrl-C and SIGTERM reach it directly)."""
    if not python.is_file():
        raise typer.BadParameter(
            f"{python} does not exist: build the vLLM environment with scripts/build-vllm-env.sh",
            param_hint="--vllm-python",
        )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    os.execve(str(python), command, env)
    return 0  # not reached


def register(app: typer.Typer) -> None:
    """Add ``chat``, ``predict`` and ``serve`` to the root command line."""
    app.command(name="chat")(chat)
    app.command(name="predict")(predict)
    app.command(name="serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)
