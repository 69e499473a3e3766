from typer.testing import CliRunner

from aligngpt import __version__
from aligngpt.cli import app


def test_version_command_prints_package_version():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_user_faults_get_a_message_and_bugs_do_not():
    import errno

    from aligngpt.data.records import DataFileError
    from aligngpt.errors import describe_user_error

    full = OSError(errno.ENOSPC, "No space left on device")
    full.filename = "/out/answers.jsonl"
    assert describe_user_error(full) == (
        "no space left on device while writing /out/answers.jsonl. Free some space and run the command again."
    )
    assert describe_user_error(PermissionError(errno.EACCES, "Permission denied", "/ro/x")) == (
        "Permission denied: /ro/x"
    )
    assert describe_user_error(DataFileError("d.json: line 3, column 2: invalid JSON")) == (
        "d.json: line 3, column 2: invalid JSON"
    )
    for bug in (KeyError("k"), ValueError("v"), TypeError("t"), RuntimeError("r"), OSError("no errno")):
        assert describe_user_error(bug) is None


def test_an_error_re_raised_from_a_dataloader_worker_keeps_only_its_message():
    from aligngpt.data.validation import BadRecordError
    from aligngpt.errors import describe_user_error

    # what torch's ExceptionWrapper.reraise builds: exc_type(msg), msg holding the worker's traceback text
    text = (
        "Caught BadRecordError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "worker.py", line 374, in _worker_loop\n    data = fetcher.fetch(index)\n'
        "aligngpt.data.validation.BadRecordError: d.json:24: record 1 (id 'x'): missing_image: no such file\n"
    )
    assert describe_user_error(BadRecordError(text)) == "d.json:24: record 1 (id 'x'): missing_image: no such file"


def test_the_boundary_leaves_click_usage_errors_alone():
    result = CliRunner().invoke(app, ["predict", "--bogus"])
    assert result.exit_code == 2 and "No such option" in result.output
