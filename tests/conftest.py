"""Shared fixtures: the real embedded models (each loaded once per session) and the datasets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("AGENTKIT_DATASETS", ROOT.parent / "shared" / "datasets"))


def _engine(spec: str):
    from agentkit import Tier

    tier = Tier(spec)
    try:
        tier.engine.count_tokens("warm up")  # assembles + loads the model once
    except Exception as e:  # noqa: BLE001 - reported below
        if os.environ.get("CI") == "true":
            pytest.fail(f"{spec} failed to load under CI: {e}")
        pytest.skip(f"{spec} unavailable: {e}")
    return tier.engine


@pytest.fixture(scope="session")
def small():
    """The embedded 0.5B engine (real llama.cpp)."""
    return _engine("embedded:qwen2.5-0.5b")


@pytest.fixture(scope="session")
def large():
    """The embedded 1.5B engine (real llama.cpp)."""
    return _engine("embedded:qwen2.5-1.5b")


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"datasets not found at {DATASETS}")
        pytest.skip(f"datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def vllm_env() -> tuple[Path, Path]:
    """vLLM's CPU environment (``make vllm``) and the embedded 0.5B model converted for it (a
    safetensors folder, converted once and cached): ``(python, model_dir)``."""
    from agentkit.embedded import cache_dir, model_path

    python = Path(os.environ.get("AGENTKIT_VLLM_PYTHON", ROOT / ".vllm-venv" / "bin" / "python"))
    if not python.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no vLLM environment at {python} (make vllm)")
        pytest.skip(f"no vLLM environment at {python} (make vllm)")
    hf = cache_dir() / "hf" / "qwen2.5-0.5b"
    convert = [str(python), str(ROOT / "agentkit" / "gguf_to_hf.py"), str(model_path("qwen2.5-0.5b")), str(hf)]
    done = subprocess.run(convert, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return python, hf


from agentkit.testing import VLLM_ENV  # noqa: E402,F401 - the tests import it from here
