"""The README's Python code blocks run as written (real embedded models)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_code_blocks():
    assert len(python_blocks()) >= 3


def test_readme_python_blocks_run(small, large, tmp_path, monkeypatch, capsys):
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the README's paths are relative to the repo root
    monkeypatch.chdir(tmp_path)  # … and its trace file lands here, not in the repo
    namespace: dict = {"__name__": "readme"}
    for block in python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    out = capsys.readouterr().out
    assert "spam" in out
    assert (tmp_path / "runs" / "trace.jsonl").exists()
