"""Shared fixtures: the real embedded models (each loaded once per session) and the datasets."""

from __future__ import annotations

import os
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
