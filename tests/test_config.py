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


# ---- a file found, not named, keeps inputs on this machine ------------------------------------------


@pytest.mark.parametrize(
    "tier",
    [
        "server:http://10.1.2.3:8000/v1?model=m",
        "vllm:https://inference.example.com/v1?model=m",
        "api:gpt-4o-mini",  # no base_url: OpenAI's
        {"spec": "api:m?base_url=https://api.example.com/v1", "task": {"k": 0}},
    ],
)
def test_a_found_config_may_not_send_inputs_off_this_machine(tmp_path, tier):
    path = tmp_path / "agentkit.toml"
    save(path, {"spam": {"tiers": ["rules", tier]}})
    with pytest.raises(ConfigError, match="found, not named") as e:
        load(path, explicit=False)
    assert f"--config {path}" in str(e.value) and "'spam'" in str(e.value)
    assert set(load(path, explicit=True)) == {"spam"}  # named by the user: applied


def test_a_found_config_may_use_servers_on_this_machine(tmp_path):
    path = tmp_path / "agentkit.toml"
    local = ["server:http://127.0.0.1:8000/v1?model=m", "vllm:http://localhost:8000/v1?model=m",
             "server:http://[::1]:8000/v1?model=m", "api:m?base_url=http://127.0.0.2:9000/v1",
             "embedded:qwen2.5-0.5b"]  # fmt: skip
    save(path, {"spam": {"tiers": local}})
    assert load(path, explicit=False)["spam"]["tiers"] == local


def test_the_refusal_does_not_show_credentials(tmp_path):
    path = tmp_path / "agentkit.toml"
    save(path, {"spam": {"tiers": ["server:https://me:s3cret-pass@llm.example.com/v1?model=m"]}})
    with pytest.raises(ConfigError) as e:
        load(path, explicit=False)
    assert "llm.example.com" in str(e.value) and "s3cret-pass" not in str(e.value)


def test_apply_names_every_tier_it_replaces(tmp_path):
    path = tmp_path / "agentkit.toml"
    save(path, {"spam": {"tiers": ["knn", "rules"]}, "other": {"threshold": 0.5}})
    spam, other = make("spam"), make("other")
    assert apply(path, [spam, other]) == ["spam (tiers rules -> knn, rules)", "other"]
    assert [t.spec for t in spam.tiers] == ["knn", "rules"] and other.policy.threshold == 0.5


# ---- bad values are errors that name the file and the node -------------------------------------------


@pytest.mark.parametrize("value", ["1.5", "-0.1", '"high"'])
def test_a_bad_threshold_names_the_file_and_the_node(tmp_path, value):
    path = tmp_path / "agentkit.toml"
    path.write_text(f"[nodes.spam]\nthreshold = {value}\n")
    for call in (lambda: load(path), lambda: apply(path, [make("spam")])):
        with pytest.raises(ConfigError, match="threshold") as e:
            call()
        assert str(path) in str(e.value) and "'spam'" in str(e.value)


def test_configured_names_the_node_whose_settings_are_wrong():
    from agentkit.config import configured

    with pytest.raises(ConfigError, match=r"node 'spam': threshold must be in \[0, 1\], got 1.5"):
        configured(make("spam"), {"threshold": 1.5})
    with pytest.raises(ConfigError, match="node 'spam'"):
        configured(make("spam"), {"retries": "two"})


def test_a_bad_tier_spec_names_the_file_and_the_node(tmp_path):
    path = tmp_path / "agentkit.toml"
    path.write_text('[nodes.spam]\ntiers = ["embeded:qwen2.5-0.5b"]\n')
    with pytest.raises(ConfigError, match="unknown tier spec") as e:
        load(path)
    assert str(path) in str(e.value) and "'spam'" in str(e.value)


# ---- saving keeps the rest of the file ----------------------------------------------------------------

PYPROJECT = """\
# a project file that also holds node settings
[project]
name = "shop"   # the distribution
dependencies = [
  "agentkit",
  # a comment in an array
]

[tool.ruff]
line-length = 120
notes = '''
[nodes.spam]
not a table: a multi-line string
'''

# the spam filter, calibrated by agentkit eval
[nodes.spam]
tiers = ["rules"]
threshold = 0.7  # an old value

[nodes.spam.task]
k = 1

# the other node: keep
[nodes."other node"]
tiers = [
  "rules",  # [nodes.spam] in a comment
]

[tool.other]
x = 1
"""


def test_save_rewrites_only_the_saved_nodes_tables(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    save(path, [make("spam", 0.93)])
    text = path.read_text()
    before, after = PYPROJECT.split("# the spam filter, calibrated by agentkit eval\n")
    assert text.startswith(before + "# the spam filter, calibrated by agentkit eval\n[nodes.spam]\n")
    assert text.endswith("\n\n" + after[after.index("# the other node: keep") :])
    assert "threshold = 0.93" in text and "0.7" not in text and "an old value" not in text
    assert text.count("[nodes.spam.task]") == 1 and "k = 3" in text
    target = make("spam")
    apply(path, [target])
    assert target.policy.threshold == 0.93 and target.task.k == 3
    assert set(load(path)) == {"spam", "other node"}
    save(path, [make("spam", 0.93)])
    assert path.read_text() == text  # saving the same settings again changes nothing

    save(path, [make("new")])  # a node the file does not have: appended
    appended = path.read_text().removeprefix(text)
    assert appended.startswith("\n[nodes.new]\n") and "\n\n[nodes.new.task]\n" in appended and "\nk = 3\n" in appended


def test_save_keeps_windows_line_endings(tmp_path):
    path = tmp_path / "agentkit.toml"
    path.write_bytes(b"# settings\r\n[nodes.spam]\r\nthreshold = 0.5\r\n\r\n[other]\r\nx = 1\r\n")
    save(path, [make("spam", 0.9)])
    data = path.read_bytes()
    assert data.startswith(b"# settings\r\n[nodes.spam]\r\n") and data.endswith(b"\r\n\r\n[other]\r\nx = 1\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_a_node_written_another_way_is_not_overwritten(tmp_path):
    path = tmp_path / "agentkit.toml"
    original = "[nodes]\nspam = { threshold = 0.5 }\n"
    path.write_text(original)
    with pytest.raises(ConfigError, match="cannot update"):
        save(path, [make("spam", 0.9)])
    assert path.read_text() == original
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="cannot update"):
        save(path, [make("spam", 0.9)])
    assert path.read_text() == "not toml ["
