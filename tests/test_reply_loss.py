"""The training loss computed on the reply positions only equals transformers' own causal-LM loss
(a tiny randomly initialised Qwen2 with a LoRA adapter, so it runs in a second; no model file)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def test_reply_loss_equals_the_full_causal_lm_loss():
    from agentkit.tune import pad_batch, reply_loss

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, lora)
    rows = [(list(range(5, 17)), 9), (list(range(40, 47)), 4), (list(range(100, 120)), 18)]  # (tokens, prompt)
    ids, labels, mask = pad_batch(rows, 0, torch)
    full = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    ours = reply_loss(model, ids, labels, mask)
    assert torch.allclose(full, ours, atol=1e-5), (float(full), float(ours))
    ours.backward()  # and it trains the adapter
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_batch_has_the_padded_batchs_loss_and_gradients(attention):
    """Rows sharing prompt prefixes, packed into one sequence (each shared prefix once, a tree mask),
    give the padded batch's loss and the same adapter gradients — the same adapter, on fewer tokens."""
    from agentkit.tune import pack, packed_reply_loss, pad_batch, reply_loss

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation=attention,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(config)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model = peft.get_peft_model(model, lora)
    prefix = [7, 8, 9, 10, 11]
    rows = [(prefix + [20, 21, 22, 30, 31], 8), (prefix + [40, 41], 6), (prefix + [50, 51, 52, 53, 54, 60], 9)]
    packed = pack(rows, torch)
    assert packed.ids.shape[1] == 5 + 5 + 2 + 6  # the prefix once, no padding

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]

    padded = reply_loss(model, *pad_batch(rows, 0, torch))
    ours = packed_reply_loss(model, packed)
    assert torch.allclose(padded, ours, atol=1e-5), (float(padded), float(ours))
    for a, b in zip(grads(padded), grads(packed_reply_loss(model, packed)), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # rows with nothing in common pack without a prefix, and still agree
    odd = [([1, 2, 3, 4], 2), ([5, 6, 7], 1)]
    assert pack(odd, torch).ids.shape[1] == 7
    assert torch.allclose(
        reply_loss(model, *pad_batch(odd, 0, torch)), packed_reply_loss(model, pack(odd, torch)), atol=1e-5
    )
    # a reader's batch: shared instructions, then two passages each shared by its questions (a prefix
    # tree: each passage once), rows out of order, one row the prefix of another, a duplicate row
    rules, one, two = [3, 4, 5], [60, 61, 62, 63], [70, 71, 72]
    tree = [
        (rules + one + [80, 81, 90], 9), (rules + two + [82, 91, 92], 8), (rules + one + [83, 90], 8),
        (rules + two + [82, 91], 7), (rules + one + [80, 81, 90], 9),
    ]  # fmt: skip
    packed = pack(tree, torch)
    assert packed.ids.shape[1] == len(rules) + len(one) + 3 + 2 + len(two) + 3
    assert len(packed.targets) == sum(len(t) - n for t, n in tree)
    padded = reply_loss(model, *pad_batch(tree, 0, torch))
    assert torch.allclose(padded, packed_reply_loss(model, packed), atol=1e-5), float(padded)
    for a, b in zip(grads(padded), grads(packed_reply_loss(model, packed)), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
