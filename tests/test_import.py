"""`import agentkit` stays cheap: no model backend is imported until a model is used."""

from __future__ import annotations

import subprocess
import sys


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
    import agentkit

    assert sorted(agentkit.__all__) == sorted(n for n in agentkit.__all__ if hasattr(agentkit, n))
    assert "Node" in agentkit.__all__ and "Classify" in agentkit.__all__
