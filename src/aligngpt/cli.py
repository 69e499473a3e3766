"""The ``aligngpt`` command line. Each sub-package contributes its commands through ``register(app)``.

Every command runs inside one error boundary (:class:`ReportUserErrors`): a fault the user can fix (see
:func:`aligngpt.errors.describe_user_error`) ends with ``error: <message>`` on stderr and exit code 1 instead of a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperCommand, TyperGroup

from aligngpt.errors import EXIT_USER_ERROR, describe_user_error, is_traceback_requested


class ReportUserErrors:
    """Mixin for click commands: user faults raised while the command runs become a short message and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as err:
            message = describe_user_error(err)
            if message is None or is_traceback_requested():
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


class CommandGroup(ReportUserErrors, TyperGroup):
    """The root group: the boundary covers every sub-command and sub-group."""


class SingleCommand(ReportUserErrors, TyperCommand):
    """For stand-alone entry points with one command (``python -m aligngpt.training``)."""


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
    "aligngpt.toyworld.cli",
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
