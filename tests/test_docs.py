"""The docs name what the code does: every chat template, every error code the server answers with, eval's options."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from aligngpt.processing.templates import TEMPLATES

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SERVER_SOURCES = [
    REPO / "src/aligngpt/inference/images.py",
    *sorted((REPO / "src/aligngpt/inference/server").glob("*.py")),
]
# Positional index of the ``code`` argument of each error type.
CODE_ARGUMENT = {"ImageError": 1, "APIError": 2}


def _table_names(markdown: str, heading: str) -> set[str]:
    """First-column code spans of the table under ``heading``."""
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)`", section, flags=re.M))


def _server_error_codes() -> set[str]:
    codes = set()
    for path in SERVER_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CODE_ARGUMENT):
                continue
            index = CODE_ARGUMENT[node.func.id]
            values = [node.args[index]] if len(node.args) > index else []
            values += [keyword.value for keyword in node.keywords if keyword.arg == "code"]
            codes |= {value.value for value in values if isinstance(value, ast.Constant) and value.value}
    return codes


def test_every_chat_template_is_documented():
    documented = _table_names((DOCS / "serving.md").read_text(), "## Chat templates")
    assert documented == set(TEMPLATES)


def test_every_server_error_code_is_in_the_error_table():
    serving = (DOCS / "serving.md").read_text()
    table = serving.split("**Limits and errors.**", 1)[1].split("\n\n", 2)[1]
    codes = _server_error_codes()
    assert {"local_files_disabled", "path_not_allowed", "model_not_found"} <= codes  # the scan finds them
    missing = sorted(code for code in codes if f"`{code}`" not in table)
    assert not missing, missing


def test_evaluation_docs_list_eval_s_judge_and_model_options():
    evaluation = (DOCS / "evaluation.md").read_text()
    assert "has no judge options" not in evaluation
    for option in ("--judge-base-url", "--judge-model", "--dtype", "--device", "--threads", "--template"):
        assert option in evaluation.split("## Which numbers need", 1)[0], option
