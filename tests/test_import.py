"""`import agentkit` stays cheap: no model backend is imported until a model is used; and every
module's public names are exactly its ``__all__``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import types

import pytest

import agentkit


def test_import_agentkit_loads_no_backend():
    code = (
        "import sys, agentkit\n"
        "heavy = [m for m in ('llama_cpp', 'torch', 'transformers', 'openai', 'vllm', 'outlines', 'instructor')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_exact():
    """``agentkit.__all__`` is every public name the package binds (submodules aside), and only those."""
    public = {
        name
        for name, value in vars(agentkit).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert len(set(agentkit.__all__)) == len(agentkit.__all__), "a name is listed twice"
    assert sorted(agentkit.__all__) == sorted(public)
    assert "Node" in agentkit.__all__ and "Classify" in agentkit.__all__


def _module_names() -> list[str]:
    """Every module of the package, ``__main__`` modules aside (importing one runs the command)."""
    return [
        info.name
        for info in pkgutil.walk_packages(agentkit.__path__, "agentkit.")
        if info.name.rsplit(".", 1)[-1] != "__main__"
    ]


@pytest.mark.parametrize("name", _module_names())
def test_module_all_is_exact(name: str):
    """Each module's ``__all__`` exists, names only what exists and is public, and lists every public
    class and function the module defines. A package whose ``__init__`` only documents it may have none."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:  # an optional package this environment lacks
        if e.name and e.name.split(".")[0] != "agentkit":
            pytest.skip(f"{name} needs {e.name}")
        raise
    own = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(v) or inspect.isroutine(v))
        and getattr(v, "__module__", None) == name
    }
    if not hasattr(module, "__all__") and hasattr(module, "__path__"):
        bound = [n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)]
        assert not bound, f"package {name} binds {bound} but has no __all__"
        return
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = list(module.__all__)
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    assert not [n for n in exported if n.startswith("_")], f"{name}.__all__ lists private names"
    assert not [n for n in exported if not hasattr(module, n)], f"{name}.__all__ lists names it does not have"
    assert not sorted(own - set(exported)), f"{name} defines public names missing from __all__"
