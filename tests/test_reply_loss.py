"""The training loss computed on the reply positions only equals transformers' own causal-LM loss
(a tiny randomly initialised Qwen2 with a LoRA adapter, so it runs in a second; no model file)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def test_reply_loss_equals_the_full_causal_lm_loss():
    from agentkit.tune import _pad, reply_loss

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, lora)
    rows = [(list(range(5, 17)), 9), (list(range(40, 47)), 4), (list(range(100, 120)), 18)]  # (tokens, prompt)
    ids, labels, mask = _pad(rows, 0, torch)
    full = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    ours = reply_loss(model, ids, labels, mask)
    assert torch.allclose(full, ours, atol=1e-5), (float(full), float(ours))
    ours.backward()  # and it trains the adapter
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
