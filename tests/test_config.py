"""Config files: save a node's settings, load them into another node, reject unknown keys."""

from __future__ import annotations

import pytest

from agentkit import Classify, ConfigError, Node, Policy
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
