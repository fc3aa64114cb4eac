"""The specialization loop on the real 0.5B model: a training set from labelled records and the
node's own traces (gold vs distilled, dedup, split hygiene), a short real LoRA run (interrupted and
resumed), the adapter converted to GGUF and applied by llama.cpp to the quantized model — agreeing
with transformers + peft on the same adapter — bound to the node and compared side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentkit import Classify, Node, Policy, Tier, collect
from agentkit.data import normalize_text, read_jsonl, split_of
from agentkit.errors import ConfigError, ModelUnavailableError

pytestmark = pytest.mark.slow

INSTRUCTIONS = "Is this SMS message spam (adverts, prizes, scams) or ham (a normal message)?"
STOCK = "embedded:qwen2.5-0.5b"


@pytest.fixture(scope="module", autouse=True)
def release_what_this_module_loaded():
    """Close the engines these tests load (the tuned llama.cpp model, the fp32 reference in
    transformers) and hand freed memory back to the system, so the vLLM tests after them have room."""
    import contextlib
    import ctypes
    import gc

    from agentkit.backends.registry import close_engines, engine_keys

    before = engine_keys()
    yield
    close_engines(keep=before.__contains__)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(scope="module")
def sms(datasets):
    records = list(read_jsonl(datasets / "sms_spam_collection" / "dev.jsonl"))
    train = [r for r in records if split_of(r["input"]) == "train"]
    test = [r for r in records if split_of(r["input"]) == "test"]
    spam = [r for r in train if r["expected"] == "spam"][:16]
    ham = [r for r in train if r["expected"] == "ham"][:16]
    return {"train": spam + ham, "test": test}


@pytest.fixture(scope="module")
def node(small, large):
    ladder = [Tier(STOCK), Tier("embedded:qwen2.5-1.5b")]
    return Node(Classify(["ham", "spam"], instructions=INSTRUCTIONS, k=0), ladder, Policy(threshold=0.9), name="sms")


@pytest.fixture(scope="module")
def traces(node, sms, tmp_path_factory):
    """Real traces: the node run on a few messages from both sides of the split (the 0.5B is unsure
    zero-shot, so most escalate and the 1.5B answers)."""
    path = tmp_path_factory.mktemp("traces") / "trace.jsonl"
    texts = [r["input"] for r in sms["train"][16:22]] + [r["input"] for r in sms["test"][:3]]
    with collect(path):
        for text in texts:
            node.run(text)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_set_from_gold_and_traces(node, sms, traces):
    from agentkit.tune import training_set

    gold = sms["train"][:16]
    heldout = sms["test"][:2]
    found = training_set(node.task, records=gold + heldout, traces=traces, node="sms", exclude=[gold[0]["input"]])
    by_input = {normalize_text(e.input): e for e in found.examples}
    assert found.counts["excluded"] == 1 and normalize_text(gold[0]["input"]) not in by_input
    assert found.counts["held_out"] >= len(heldout)  # the evaluation side is never trained on
    assert all(split_of(e.input) == "train" for e in found.examples)
    for r in gold[1:]:
        ex = by_input[normalize_text(r["input"])]
        assert ex.source == "gold" and ex.reply == r["expected"]
        assert ex.messages == node.task.messages(r["input"])[0]  # the node's exact prompt
    distilled = [e for e in found.examples if e.source == "distilled"]
    escalated = [
        t for t in traces if t["ok"] and t["accepted"] == "confident" and t["tier"] != t["attempts"][0]["tier"]
    ]
    expected = {normalize_text(t["input_text"]) for t in escalated if split_of(t["input_text"]) == "train"}
    assert {normalize_text(e.input) for e in distilled} == expected - {normalize_text(r["input"]) for r in gold}
    assert all(e.origin == "trace:embedded:qwen2.5-1.5b" for e in distilled)
    # a gold label for an input that a trace also gives replaces the distilled answer
    overlap = [{"input": t["input_text"], "expected": "spam"} for t in escalated if t["input_text"] in expected]
    if overlap:
        again = training_set(node.task, records=overlap, traces=traces, node="sms")
        assert {e.source for e in again.examples if e.input == overlap[0]["input"]} == {"gold"}
        assert again.counts["duplicates"] >= 1


def test_training_set_for_an_extractor_uses_its_exact_prompt(datasets):
    """Extract nodes are tunable too: the reply is the record as JSON, the prompt the extractor's
    own (system prompt with the schema, the retrieved receipts, the text) — no model needed."""
    from agentkit import Extract
    from agentkit.tune import training_set
    from schemas.receipt import Receipt

    records = list(read_jsonl(datasets / "sroie2019" / "dev.jsonl"))[:40]
    train = [r for r in records if split_of(r["input"]) == "train"]
    task = Extract(Receipt, examples=train[:10], k=1)
    found = training_set(task, records=records)
    assert found.counts["gold"] == len({normalize_text(r["input"]) for r in train}) > 0
    assert found.counts["held_out"] == len(records) - len(train)
    for ex in found.examples:
        record = next(r for r in train if r["input"] == ex.input)
        assert json.loads(ex.reply) == record["expected"]
        assert ex.messages == task.messages(ex.input, unseen=True)
        assert ex.messages[0]["role"] == "system" and ex.messages[-1] == {"role": "user", "content": ex.input}
        assert len(ex.messages) == 4  # system, one retrieved receipt and its fields, the text
        shot = ex.messages[1]["content"]
        assert shot != ex.input  # a receipt in the pool is not shown its own fields as the example
        if any(r["input"] == ex.input for r in train[:10]):
            assert task.messages(ex.input)[1]["content"] == ex.input  # (at inference it would be)


def test_an_epoch_keeps_rows_that_share_a_prompt_together():
    import random

    from agentkit.tune import epoch_order

    groups = ["a", "b", "a", "c", "b", "a", "c", "c", "d"]
    order = epoch_order(groups, random.Random(0))
    assert sorted(order) == list(range(len(groups)))
    runs = [groups[i] for i in order]
    assert len([g for i, g in enumerate(runs) if i == 0 or runs[i - 1] != g]) == len(set(groups))  # one run each
    assert {tuple(epoch_order(groups, random.Random(s))) for s in range(5)} != {tuple(order)}  # and random


@pytest.fixture(scope="module")
def tuned(node, sms, tmp_path_factory):
    """A real LoRA run of 8 steps, interrupted after 3 and resumed."""
    from agentkit.tune import TuneConfig, base_model, train, training_set

    out = tmp_path_factory.mktemp("tuned")
    data = training_set(node.task, records=sms["train"])
    config = TuneConfig(steps=8, batch=4, rank=4, alpha=16, lr=1e-3, max_len=192, warmup=1, save_every=100)
    bind = {"tier_index": 0, "stock_spec": STOCK, "task": {"k": 0}}

    def stop_at_3(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, base_model(STOCK), out, config, on_step=stop_at_3, bind=bind)
    assert (out / "checkpoint" / "state.pt").is_file()
    report = train(data, base_model(STOCK), out, config, bind=bind)
    return out, report, data


def test_training_resumes_and_records_what_it_trained_on(tuned):
    out, report, data = tuned
    assert report.resumed_from == 3 and report.steps == 8 and len(report.losses) == 8
    assert report.data_sha256 == data.digest() and report.examples == len(data.examples)
    assert report.peak_rss_gb > 0.5 and report.s_per_step > 0
    assert not (out / "checkpoint").exists()
    meta = json.loads((out / "tune.json").read_text())
    assert meta["bind"]["stock_spec"] == STOCK and meta["config"]["rank"] == 4
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter.gguf").is_file()
    assert (out / "merged.gguf").is_file()


def test_the_gguf_adapter_changes_llamacpp_and_agrees_with_peft(tuned, small, sms):
    from agentkit.tune import tuned_tier

    out, _, _ = tuned
    task = Classify(["ham", "spam"], instructions=INSTRUCTIONS, k=0)
    served = tuned_tier(out, merged=False)  # the GGUF LoRA on the original Q4 model, in llama.cpp
    assert served.spec.startswith(f"{STOCK}?adapter=") and served.task == {"k": 0}
    merged = tuned_tier(out)  # the adapter folded into a copy of the model: what is served by default
    assert merged.spec == f"gguf:{out.resolve() / 'merged.gguf'}" and merged.task == {"k": 0}
    reference = tuned_tier(out, engine="hf")  # the same adapter through transformers + peft
    moved = 0
    for r in sms["test"][:3]:
        stock = task.answer(small, r["input"]).details["distribution"]["spam"]
        lora = task.answer(served.engine, r["input"]).details["distribution"]["spam"]
        folded = task.answer(merged.engine, r["input"]).details["distribution"]["spam"]
        peft = task.answer(reference.engine, r["input"]).details["distribution"]["spam"]
        assert abs(lora - peft) < 0.08, (lora, peft)  # the conversion is right (Q4 vs fp32 base: close)
        assert abs(folded - lora) < 0.03, (folded, lora)  # merging is right (Q8_0 rounding of the sum)
        moved += abs(lora - stock) > 0.02
    assert moved >= 2  # eight steps at lr 1e-3 move the label distribution
    assert merged.provenance["tune"]["data_sha256"] and len(merged.provenance["sha256"]) == 64


def test_bound_to_the_node_with_provenance_and_compared_side_by_side(tuned, node, sms):
    from agentkit.eval import evaluate_node
    from agentkit.tune import bind, comparison

    out, report, _ = tuned
    twin, ladders = comparison(node, out)
    assert [t.name for t in twin.tiers] == [STOCK, f"tuned:{out.name}", "embedded:qwen2.5-1.5b"]
    assert ladders == {"stock": [0, 2], "tuned": [1, 2]}
    result = twin.run(sms["test"][5]["input"])
    provenance = result.attempts[0].details.get("tier") or {}
    assert not provenance  # the stock tier has none
    tuned_attempt = Node(twin.task, [twin.tiers[1]]).run(sms["test"][5]["input"]).attempts[0]
    assert tuned_attempt.details["tier"]["tune"]["data_sha256"] == report.data_sha256
    assert len(tuned_attempt.details["tier"]["sha256"]) == 64
    held = sms["test"][10:16]
    rep = evaluate_node(twin, held, thresholds=[0.9], ladders=ladders)
    for key in ("tier0", "tier1", "tier2", "stock@0.9", "tuned@0.9", "cascade@0.9"):
        assert key in rep["all"], key
    assert rep["all"]["stock@0.9"]["answered_by"][1] == 0  # the stock ladder never uses the tuned tier
    ladder = [Tier(STOCK), Tier("embedded:qwen2.5-1.5b")]
    mine = Node(Classify(["ham", "spam"], instructions=INSTRUCTIONS, k=0), ladder, name="sms")
    bound = bind(mine, out)
    assert bound.tiers[0].name == f"tuned:{out.name}" and mine.tiers[0].spec == STOCK  # a new node
    with pytest.raises(ConfigError, match="no tier"):
        bind(Node(mine.task, ["embedded:qwen2.5-1.5b"], name="other"), out)


def test_agentkit_tune_cli_end_to_end(tmp_path, sms):
    """The command: labelled data in, adapter + tune.json out, the tuned tier named in agentkit.toml."""
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sms["train"][:12]))
    app = tmp_path / "app.py"
    app.write_text(
        "from agentkit import Classify, Node\n"
        f"node = Node(Classify(['ham', 'spam'], instructions={INSTRUCTIONS!r}), ['{STOCK}'], name='sms')\n"
    )
    cmd = [sys.executable, "-m", "agentkit.cli", "tune", f"{app}:node", "--data", str(data), "--out",
           str(tmp_path / "tuned"), "--steps", "2", "--batch", "2", "--rank", "2", "--write-config",
           str(tmp_path / "agentkit.toml")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training examples: " in done.stderr and "2 steps" in done.stderr
    config = (tmp_path / "agentkit.toml").read_text()
    assert "merged.gguf" in config and "k = 0" in config
    from agentkit.config import apply
    from agentkit.runner import load_target

    node = load_target(f"{app}:node")
    apply(tmp_path / "agentkit.toml", [node])
    assert node.tiers[0].spec.endswith("merged.gguf")
    assert node.tiers[0].task == {"k": 0, "static_per_label": 0, "scoring": "choice"}


def test_the_time_budget_stops_training_and_keeps_the_adapter(node, sms, tmp_path):
    from agentkit.tune import TuneConfig, base_model, train, training_set

    data = training_set(node.task, records=sms["train"][:8])
    config = TuneConfig(steps=50, batch=2, rank=2, max_len=192, minutes=0.0001, layers=2)  # 6 ms: one step
    report = train(data, base_model(STOCK), tmp_path, config, gguf=False)
    assert report.steps == 1 and len(report.losses) == 1
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == [22, 23]  # the last 2 of the 0.5B's 24 layers
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        names = weights.keys()
    assert {name.split(".layers.")[1].split(".")[0] for name in names} == {"22", "23"}


def test_adapting_more_layers_than_the_model_has_is_a_clear_error():
    import peft

    from agentkit.tune import TuneConfig, lora_config

    assert lora_config(peft, TuneConfig(layers=4), 24).layers_to_transform == [20, 21, 22, 23]
    with pytest.raises(ConfigError, match="24 decoder layers"):
        lora_config(peft, TuneConfig(layers=30), 24)


def test_tuning_without_the_extra_is_a_clear_error(monkeypatch):
    from agentkit.tune.training import _require_training

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ModelUnavailableError, match=r"agentkit\[hf\]"):
        _require_training()
