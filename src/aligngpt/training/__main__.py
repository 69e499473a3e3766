"""``python -m aligngpt.training ...`` = ``aligngpt train ...`` (handy under ``torchrun``)."""

import typer

from aligngpt.commands import SingleCommand
from aligngpt.training.cli import train_command


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(cls=SingleCommand)(train_command)
    app()


if __name__ == "__main__":
    main()
