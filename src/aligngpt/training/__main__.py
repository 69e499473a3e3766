"""``python -m aligngpt.training ...`` = ``aligngpt train ...`` (handy under ``torchrun``)."""

import logging
import os
import sys

import typer

from aligngpt.commands import SingleCommand
from aligngpt.training.cli import train_command

LAUNCHER_ENV = "LOCAL_RANK"  # set by torchrun, the DeepSpeed launcher and accelerate for every process they start


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(cls=SingleCommand)(train_command)
    try:
        app()
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    if LAUNCHER_ENV in os.environ:
        # Everything is written and the process group is closed; skip interpreter teardown, where a native library's
        # worker thread can abort a rank now and then ("terminate called without an active exception", seen with
        # gloo on 2 CPU ranks), which torchrun would report as a failed run.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
