"""The ``aligngpt`` command line. Each sub-package contributes its commands through ``register(app)``.

Every command runs inside one error boundary (:class:`aligngpt.commands.ReportUserErrors`): a fault the user can
fix ends with ``error: <message>`` on stderr and exit code 1 instead of a traceback.
"""

from __future__ import annotations

import importlib

import typer

from aligngpt.commands import CommandGroup

app = typer.Typer(
    cls=CommandGroup,
    name="aligngpt",
    help="AlignGPT: score, train, chat, serve, evaluate, convert and demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Sub-packages that define ``register(app: typer.Typer) -> None`` in their ``cli`` module.
_COMMAND_MODULES = (
    "aligngpt.convert.cli",
    "aligngpt.data.cli",
    "aligngpt.scoring.cli",
    "aligngpt.training.cli",
    "aligngpt.inference.cli",
    "aligngpt.evaluation.cli",
    "aligngpt.demo.cli",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that part of the package is not written yet
                continue
            raise
        module.register(app)


@app.callback()
def main() -> None:
    """AlignGPT command line."""


@app.command()
def version() -> None:
    """Print the installed aligngpt version."""
    from aligngpt import __version__

    typer.echo(__version__)


_register_all()

if __name__ == "__main__":
    app()
