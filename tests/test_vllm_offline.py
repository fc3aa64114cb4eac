"""The ``vllm-offline`` tier (``vllm.LLM`` in-process) on the embedded 0.5B model, run inside vLLM's
CPU environment (``make vllm`` installs agentkit there) by tests/vllm_offline_check.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentkit import Tier
from agentkit.errors import ModelUnavailableError
from agentkit.testing import serving, vllm_server_command
from tests.conftest import ROOT, VLLM_ENV

pytestmark = pytest.mark.server
SPAM = "WINNER!! You have won a 1000 pound cash prize. Call 09061701461 now to claim."  # as in the check script


def run_check(vllm_env, out, *adapter):
    """tests/vllm_offline_check.py in the vLLM environment; its results (a JSON file)."""
    python, hf = vllm_env
    command = [str(python), str(ROOT / "tests" / "vllm_offline_check.py"), str(hf), str(out), *map(str, adapter)]
    for _ in range(2):  # vLLM's CPU build now and then aborts while it starts its engine (seen once in three runs)
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **VLLM_ENV}, cwd=ROOT,
                              timeout=900)  # fmt: skip
        if not (done.returncode == -6 and "terminate called without an active exception" in done.stderr):
            break
    said = f"{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"exit {done.returncode} with {_available()} free:\n{said}"
    return json.loads(out.read_text())


def _available() -> str:
    """MemAvailable from /proc/meminfo (a vLLM engine that runs out of memory dies without saying so)."""
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return "unknown memory"
    return f"{int(line.split()[1]) / 2**20:.1f} GiB"


@pytest.fixture(scope="module")
def offline(vllm_env, tmp_path_factory):
    return run_check(vllm_env, tmp_path_factory.mktemp("vllm_offline") / "results.json")


def test_labels_are_scored_from_prompt_logprobs(offline, small):
    """The same prompt scored by llama.cpp on the same weights (Q4 there, bf16 here) gives about the
    same distribution (measured: P(ham) 0.593 vs 0.601; zero-shot, the 0.5B is unsure here)."""
    from agentkit import Classify

    c = offline["classify"]
    assert c["ok"] and c["method"] == "label-scoring"
    assert abs(sum(c["distribution"].values()) - 1) < 1e-6 and 0.5 < c["confidence"] <= 1
    task = Classify(["ham", "spam"], instructions="Is this SMS spam or ham?")
    reference = task.answer(small, SPAM).details["distribution"]
    assert abs(reference["ham"] - c["distribution"]["ham"]) < 0.05 and c["value"] == max(reference, key=reference.get)


def test_the_constraint_is_live_and_token_probabilities_come_back(offline):
    canary = offline["canary"]
    assert canary["text"] in ("qv7zx", "kj3wp") and canary["finish"] == "stop"  # impossible unconstrained
    assert canary["probs"] and all(0 < p <= 1 for p in canary["probs"])


def test_extraction_is_constrained_and_validated(offline):
    e = offline["extract"]
    assert e["ok"], e["reason"]
    assert e["value"]["company"].upper().startswith("ACME") and 0 < e["confidence"] <= 1


def test_concurrent_calls_are_gathered_into_fewer_generate_calls(offline):
    b = offline["batch"]
    assert b["order"] and b["ok"]
    assert sum(b["generate_calls"]) == 16  # 8 items × 2 labels scored
    assert len(b["generate_calls"]) < 8, b["generate_calls"]  # vLLM saw batches, not one call per item


@pytest.fixture(scope="module")
def random_adapter(vllm_env, tmp_path_factory):
    """A real PEFT LoRA adapter on the model's attention projections, with small random weights (no
    training: any non-zero adapter moves the distribution, which is what is checked here)."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    _, hf = vllm_env
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("adapter") / "random-lora"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def peft_distribution(vllm_env, random_adapter):
    """The SMS label distribution from transformers + peft with the adapter (the reference)."""
    from agentkit import Classify

    _, hf = vllm_env
    task = Classify(["ham", "spam"], instructions="Is this SMS spam or ham?")
    return task.answer(Tier(f"hf:{hf}?adapter={random_adapter}").engine, SPAM).details["distribution"]


def test_a_lora_adapter_is_served_in_process_and_agrees_with_peft(vllm_env, random_adapter, offline, peft_distribution):
    """vLLM's CPU build serves the LoRA adapter (``enable_lora``): the label distribution moves from the
    base model's, to what transformers + peft give with the same adapter on the same weights."""
    served = run_check(vllm_env, random_adapter.parent / "served.json", random_adapter)
    assert served["ok"] and served["tier"]["sha256"], served  # the adapter's hash is in the trace
    base = offline["classify"]["distribution"]["ham"]
    assert abs(served["distribution"]["ham"] - base) > 0.05, (served, base)  # the adapter is applied
    assert abs(served["distribution"]["ham"] - peft_distribution["ham"]) < 0.05, (served, peft_distribution)


def test_a_vllm_server_serves_the_adapter_as_a_model(vllm_env, random_adapter, peft_distribution, tmp_path):
    """``--enable-lora --lora-modules NAME=DIR``: the tier names the adapter as its model."""
    from agentkit import Classify, Node

    python, hf = vllm_env
    cmd = vllm_server_command(python, hf, max_model_len=2048, lora={"random-lora": random_adapter})
    with serving(cmd, tmp_path / "server.log", env={**os.environ, **VLLM_ENV}, timeout_s=400) as url:
        node = Node(
            Classify(["ham", "spam"], instructions="Is this SMS spam or ham?"),
            [f"vllm:{url}?model=random-lora&scoring=true"],
        )
        r = node.run(SPAM)
    assert r.ok and r.attempts[0].confidence_method == "label-scoring", r.reason
    assert abs(r.attempts[0].details["distribution"]["ham"] - peft_distribution["ham"]) < 0.05


def test_without_vllm_the_error_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ModelUnavailableError, match="vllm"):
        Tier("vllm-offline:/nonexistent/model").engine.count_tokens("x")
