"""Run inside the vLLM environment by tests/test_vllm_offline.py (vLLM pins its own torch, so it does
not share the test suite's environment): the ``vllm-offline`` tier on a real model, results as one
JSON file (vLLM logs to stdout). Usage: ``python tests/vllm_offline_check.py MODEL_DIR OUT.json [ADAPTER_DIR]``
(with an adapter: only the SMS label distribution, served with the LoRA adapter on top)."""

from __future__ import annotations

import json
import sys

import pydantic

from agentkit import Classify, Constraint, Extract, Node, Tier

SPAM = "WINNER!! You have won a 1000 pound cash prize. Call 09061701461 now to claim."


def classify_spam(tier: Tier) -> dict:
    """The SMS label distribution for SPAM on ``tier``, with how it was computed and the tier's provenance."""
    r = Node(Classify(["ham", "spam"], instructions="Is this SMS spam or ham?"), [tier]).run(SPAM)
    a = r.attempts[0]
    return {"ok": r.ok, "value": r.value, "confidence": r.confidence, "method": a.confidence_method,
            "distribution": a.details.get("distribution"), "tier": a.details.get("tier")}  # fmt: skip


def with_adapter(model_dir: str, out_path: str, adapter: str) -> None:
    tier = Tier(f"vllm-offline:{model_dir}?context=2048&scoring=true&adapter={adapter}")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(classify_spam(tier), f)


def main(model_dir: str, out_path: str) -> None:
    tier = Tier(f"vllm-offline:{model_dir}?context=2048&scoring=true")  # labels scored from prompt_logprobs
    engine = tier.engine.inner
    calls = []
    llm_generate = None

    out = {"classify": classify_spam(tier)}

    msgs = [{"role": "user", "content": "Reply with exactly the word: hello"}]
    gen = engine.generate(msgs, Constraint.choice(["qv7zx", "kj3wp"]), max_tokens=8)
    out["canary"] = {"text": gen.text, "probs": gen.token_probs, "finish": gen.finish_reason}

    class Receipt(pydantic.BaseModel):
        company: str
        total: str

    r = Node(Extract(Receipt, max_tokens=80), [tier]).run("ACME SDN BHD\nCoffee 3.50\nTOTAL RM 12.50")
    out["extract"] = {"ok": r.ok, "value": r.value, "reason": r.reason, "confidence": r.confidence}

    llm_generate = engine._llm.generate

    def counting(prompts, *args, **kwargs):
        calls.append(len(prompts))
        return llm_generate(prompts, *args, **kwargs)

    engine._llm.generate = counting
    chooser = Node(Classify(["ham", "spam"], instructions="Spam or ham?"), [tier])
    texts = [f"message number {i}: see you at {i} pm" for i in range(8)]
    results = chooser.batch(texts, concurrency=8)
    out["batch"] = {"order": [x.input_text for x in results] == texts, "ok": all(x.ok for x in results),
                    "generate_calls": calls}  # fmt: skip
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        with_adapter(*sys.argv[1:4])
    else:
        main(sys.argv[1], sys.argv[2])
