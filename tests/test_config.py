"""Config files: save a node's settings, load them into another node, reject unknown keys."""

from __future__ import annotations

import pytest

from agentkit import Classify, ConfigError, Node, Policy, Tier
from agentkit.config import apply, load, node_settings, save


def make(name: str, threshold: float = 0.8) -> Node:
    return Node(Classify(["a", "b"], k=3), ["rules"], Policy(threshold=threshold), name=name)


def test_round_trip(tmp_path):
    path = tmp_path / "agentkit.toml"
    save(path, [make("spam", 0.93)])
    save(path, [make("other", 0.5)])  # updates, keeps the first node
    target = make("spam")
    target.task.k = 1
    assert apply(path, [target, make("unrelated")]) == ["spam"]
    assert target.policy.threshold == 0.93 and target.task.k == 3
    assert [t.spec for t in target.tiers] == ["rules"]
    assert set(load(path)) == {"spam", "other"}
    assert node_settings(target) == load(path)["spam"]


def test_unknown_keys_and_bad_files_are_clear_errors(tmp_path):
    path = tmp_path / "agentkit.toml"
    path.write_text("[nodes.x]\nthreshhold = 0.9\n")
    with pytest.raises(ConfigError, match="threshhold"):
        load(path)
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="cannot read"):
        load(path)


def test_a_tier_may_run_the_task_with_its_own_settings(tmp_path):
    """A tuned tier without retrieved examples or a label list, under stock tiers that keep theirs."""
    task = Classify(["ham", "spam"], instructions="Spam?", k=4)
    tuned = Tier("knn", task={"k": 0, "list_labels": False}, name="tuned")
    node = Node(task, [tuned, "rules"], name="sms")
    variant = tuned.adapt(node.task)
    assert variant.k == 0 and variant.system_prompt() == "Spam?" and task.k == 4 and "- ham" in task.system_prompt()
    assert tuned.adapt(task) is variant and node.tiers[1].adapt(task) is task  # made once
    save(tmp_path / "agentkit.toml", [node])
    text = (tmp_path / "agentkit.toml").read_text()
    assert '{ spec = "knn", task = { k = 0, list_labels = false } }' in text
    other = Node(Classify(["ham", "spam"], instructions="Spam?", k=4), ["rules"], name="sms")
    apply(tmp_path / "agentkit.toml", [other])
    assert other.tiers[0].task == {"k": 0, "list_labels": False} and other.tiers[1].spec == "rules"
    with pytest.raises(ConfigError, match="no setting"):
        task.variant(labels=["x"])
    with pytest.raises(ConfigError, match="tier table"):
        Tier.parse({"task": {"k": 0}})


def test_a_tier_may_drop_the_fixed_examples():
    """``static_per_label`` is a tier setting too: a tuned tier answers without the stock prefix's examples."""
    pool = [{"input": f"please send the file {i}", "expected": "ask"} for i in range(6)]
    pool += [{"input": f"the meeting moved to {i} pm", "expected": "not_ask"} for i in range(6)]
    task = Classify(["ask", "not_ask"], instructions="Ask?", examples=pool, k=0, static_per_label=2)
    bare = task.variant(static_per_label=0)
    assert len(task.fixed_messages()) == 1 + 2 * 4 and bare.fixed_messages() == [task.fixed_messages()[0]]
    back = bare.variant(static_per_label=2)
    assert back.fixed_messages() == task.fixed_messages()  # the same seeded pick
