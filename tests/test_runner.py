"""`agentkit run`: inputs of every kind, failure records, resuming after a real SIGKILL.

The target is a real Classify node on the ``knn`` tier (no model: a BM25 vote) inside a real
LangGraph graph, with a deliberate pause per item so that a run can be killed mid-batch."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentkit.runner import Checkpoint, Item, iter_inputs, load_target, run_batch

WORKFLOW = """
import time
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
from agentkit import Classify, Node

EXAMPLES = [
    {"input": "WINNER claim your free prize now", "expected": "spam"},
    {"input": "free prize, text CLAIM to 80086 now", "expected": "spam"},
    {"input": "are we still on for lunch tomorrow", "expected": "ham"},
    {"input": "I will call you after the meeting", "expected": "ham"},
]
node = Node(Classify(["ham", "spam"], examples=EXAMPLES, vote_k=2), ["knn"], input="input", output="label")

class State(TypedDict, total=False):
    input: object
    source: str
    label: str | None
    output: dict
    ok: bool

def pause(state):
    time.sleep(float(__import__("os").environ.get("PAUSE_S", "0")))
    return {}

def report(state):
    return {"output": {"label": state.get("label")}, "ok": state.get("label") is not None}

g = StateGraph(State)
g.add_node("pause", pause)
g.add_node("classify", node)
g.add_node("report", report)
g.add_edge(START, "pause")
g.add_edge("pause", "classify")
g.add_edge("classify", "report")
g.add_edge("report", END)
graph = g.compile()
"""


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.py"
    path.write_text(WORKFLOW)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "inbox.jsonl"
    texts = ["claim your free prize", "lunch tomorrow?", "call me after the meeting", "free entry, text now"] * 5
    with path.open("w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": f"m{i:02d}", "input": t}) + "\n")
        fh.write("{not json\n")
        fh.write(json.dumps({"id": "empty", "input": "   "}) + "\n")
    return path


def test_every_input_ends_as_a_result_or_a_failure_record(workflow, inputs, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("WINNER claim your prize")
    (folder / "b.bin").write_bytes(b"\x00\xff\x00binary")
    items = list(iter_inputs([str(inputs), str(folder), str(tmp_path / "missing.txt")]))
    node = load_target(f"{workflow}:node")
    out = tmp_path / "out.jsonl"
    summary = run_batch(node, items, out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(items) == 20 + 2 + 2 + 1
    by_id = {r["id"]: r for r in records}
    assert by_id["m00"]["ok"] and by_id["m00"]["value"] == "spam" and by_id["m00"]["tier"] == "knn"
    assert not by_id["empty"]["ok"] and "empty" in by_id["empty"]["reason"]
    assert not by_id[f"{inputs}:21"]["ok"] and "not JSON" in by_id[f"{inputs}:21"]["reason"]
    assert not by_id[str(folder / "b.bin")]["ok"] and "binary" in by_id[str(folder / "b.bin")]["reason"]
    assert "no such file" in by_id[str(tmp_path / "missing.txt")]["reason"]
    assert summary.figures()["failed"] == 4


def test_a_graph_target_reports_its_output_and_node_costs(workflow, tmp_path):
    graph = load_target(f"{workflow}:graph")
    summary = run_batch(graph, [Item("x", "free prize claim now")], tmp_path / "o.jsonl")
    (record,) = summary.records
    assert record["ok"] and record["value"] == {"label": "spam"}
    assert record["nodes"][0]["node"] == "classify" and record["nodes"][0]["tier"] == "knn"


def test_a_record_says_why_a_node_escalated(tmp_path):
    """Fake tiers (named as such): the cheap one is made unsure, which no real model does on demand."""
    from agentkit import Classify, Node, Tier
    from agentkit.testing import FakeEngine

    unsure = Tier(spec="fake:small", name="small", engine=FakeEngine(replies=["spam"], confidence=0.55))
    sure = Tier(spec="fake:large", name="large", engine=FakeEngine(replies=["spam"], confidence=0.95))
    summary = run_batch(
        Node(Classify(["ham", "spam"]), [unsure, sure]), [Item("x", "free prize")], None, stream=io.StringIO()
    )
    (node,) = summary.records[0]["nodes"]
    assert summary.records[0]["escalated"] and node["tier"] == "large"
    assert node["escalated_because"] == ["small: low_confidence: confidence 0.550 < threshold 0.8"]
    assert summary.records[0]["status"] == "accepted"


def test_an_answer_no_tier_is_sure_of_is_marked_for_review(tmp_path):
    """Fake tiers (named as such): both made unsure, which no real model does on demand. The policy's
    default (``when_unsure="best"``) keeps the best answer; it is ok, but for a person to check."""
    from agentkit import Classify, Node, Tier
    from agentkit.testing import FakeEngine

    tiers = [Tier(spec=f"fake:{n}", name=n, engine=FakeEngine(replies=["spam"], confidence=c))
             for n, c in (("small", 0.55), ("large", 0.6))]  # fmt: skip
    node = Node(Classify(["ham", "spam"]), tiers, meta="meta", output="label")
    result = node.run("free prize")
    assert result.ok and result.needs_review and result.status == "needs_review" and result.tier == "large"
    assert "small: low_confidence" in result.reason and "large: low_confidence" in result.reason
    assert result.to_record()["status"] == "needs_review"
    assert node({"input": "free prize"})["meta"]["needs_review"] is True
    summary = run_batch(node, [Item("x", "free prize"), Item("y", "")], None, stream=io.StringIO())
    assert [r["status"] for r in summary.records] == ["needs_review", "failed"]
    figures = summary.figures()
    assert (figures["ok"], figures["needs_review"], figures["failed"]) == (1, 1, 1)


def test_a_torn_last_line_is_dropped_and_redone(tmp_path):
    out = tmp_path / "o.jsonl"
    whole = '{"key": "k1", "id": "a", "ok": true, "target": "t", "config_hash": "h"}\n'
    out.write_text(whole + '{"key": "k2", "id": "b", "o')
    with Checkpoint(out, "t", "h") as checkpoint:
        assert checkpoint.last == {"k1": True}
    assert out.read_text() == whole


def test_sigkill_mid_batch_then_resume_loses_nothing_and_repeats_nothing(workflow, inputs, tmp_path):
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "agentkit.cli", "run", f"{workflow}:graph", str(inputs), "--out", str(out)]
    env = {**os.environ, "PAUSE_S": "0.15"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = out.read_text().count("\n")
    assert 5 <= first < 22, "the run was not killed mid-batch"
    again = subprocess.run(cmd, env={**env, "PAUSE_S": "0"}, capture_output=True, text=True)
    assert again.returncode == 1  # the bad lines are failures; every input was still processed
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 22
    assert "resumed" in again.stderr


@pytest.mark.slow
def test_agentkit_eval_on_real_models_writes_the_reports_and_the_threshold_run_uses(small, large, tmp_path):
    """`agentkit eval` end to end: the SMS node on both embedded tiers, 10 held-out messages."""
    root = Path(__file__).resolve().parents[1]
    target = f"{root / 'examples' / 'sms_triage.py'}:classifier"
    data = root / "examples" / "data" / "sms_inbox.jsonl"
    config = tmp_path / "agentkit.toml"
    cmd = [sys.executable, "-m", "agentkit.cli", "eval", target, "--data", str(data), "--out", str(tmp_path / "ev")]
    done = subprocess.run([*cmd, "--write-config", str(config)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n"] == 10 and report["tiers"] == ["embedded:qwen2.5-0.5b", "embedded:qwen2.5-1.5b"]
    small_only = report["all"]["tier0"]
    assert small_only["quality"]["accuracy"] >= 0.6 and small_only["escalation_rate"] == 0.0
    assert max(c["score"] for c in report["all"].values()) >= 0.8
    assert {"cascade@0.5", "cascade@0.99"} <= set(report["all"]) and "headline" in report
    assert report["reliability"]["embedded:qwen2.5-0.5b"]["n"] == 10
    assert (tmp_path / "ev" / "report.html").read_text().count("<svg") == 3
    assert len((tmp_path / "ev" / "answers.jsonl").read_text().splitlines()) == 20
    threshold = report["calibration"]["threshold"]
    assert f"threshold = {threshold!r}" in config.read_text()
    run = subprocess.run(
        [sys.executable, "-m", "agentkit.cli", "run", target, str(data), "--config", str(config)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert f"settings from {config} applied to: sms_spam" in run.stderr
    assert len(run.stdout.splitlines()) == 10
