"""Click/Typer command classes with the project's error boundary (:class:`ReportUserErrors`): a fault the user can fix
(see :func:`aligngpt.errors.describe_user_error`) ends with ``error: <message>`` on stderr and exit code 1 instead of a
traceback; anything else is a bug and keeps its traceback. Below every package, so any entry point may use them.
"""

from __future__ import annotations

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
