"""Importing the shipped workflows builds nothing (no example index, no node, no graph): each graph is
built on first use. Model-free: the check runs in a fresh interpreter and never builds a graph."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

IMPORT_BOTH = """
import json, sys, time
import agentkit
t = time.perf_counter()
import workflows.email, workflows.invoice
seconds = time.perf_counter() - t
modules = (workflows.invoice, workflows.email)
print(json.dumps({
    "seconds": seconds,
    "graph_in_module": [m.__name__ for m in modules if "graph" in vars(m)],
    "graphs_cached": [
        m.__name__ for m in modules if hasattr(m, "shipped_graph") and m.shipped_graph.cache_info().currsize
    ],
    "bm25s_imported": "bm25s" in sys.modules,  # an example index or a corpus imports it when it is built
}))
"""


def test_importing_the_workflows_builds_nothing():
    done = subprocess.run([sys.executable, "-c", IMPORT_BOTH], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["graph_in_module"] == [] and found["graphs_cached"] == []
    assert not found["bm25s_imported"]
    assert found["seconds"] < 0.5, f"importing the workflows took {found['seconds']:.2f} s"


@pytest.mark.parametrize("name", ["invoice", "email"])
def test_the_shipped_graph_is_built_on_first_access_then_reused(name, monkeypatch):
    module = importlib.import_module(f"workflows.{name}")
    built: list[object] = []
    monkeypatch.setattr(module, "build", lambda: built.append(object()) or built[-1])  # stands in for a graph
    module.shipped_graph.cache_clear()
    try:
        assert module.graph is module.make_graph({"configurable": {}}) is module.shipped_graph() is built[0]
        assert len(built) == 1
    finally:
        module.shipped_graph.cache_clear()


def test_every_file_the_workflows_read_ships_in_the_package():
    """The package data patterns in pyproject.toml cover every file under workflows/data (a calibration file
    left out of the wheel would silently leave an installed workflow uncalibrated)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["workflows"]
    files = [f for f in (root / "workflows" / "data").rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    assert files
    for f in files:
        inside = f.relative_to(root / "workflows").as_posix()
        assert any(fnmatch.fnmatch(inside, p) for p in patterns), f"{inside} is not package data"
