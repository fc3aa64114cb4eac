"""agentkit nodes inside LangGraph apps that have their own state and nodes (real 0.5B model)."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from typing import Annotated, TypedDict

import pytest
from langgraph.graph import END, START, MessagesState, StateGraph

from agentkit import Classify, Node, Tier, collect, read_jsonl
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SPAM = "WINNER!! You have been selected for a 1000 GBP prize. Call 09061701461 to claim now."
HAM = "Are we still meeting for lunch at noon? I'll bring the notes."


class HostState(TypedDict, total=False):
    ticket: str
    audit: Annotated[list[str], operator.add]
    label: str | None
    handled_by: str
    label_meta: dict
    meta: dict


SMS_POOL = list(read_jsonl(ROOT / "examples" / "data" / "sms_labelled.jsonl"))


def sms_node(engine, **kwargs) -> Node:
    task = Classify(
        ["ham", "spam"],
        instructions="Is this SMS message spam (prizes, scams, adverts) or ham (a normal message)?",
        examples=SMS_POOL,
        k=2,
        static_per_label=2,
    )
    return Node(task, [Tier(spec="test:small", name="small", engine=engine)], **kwargs)


def host_graph(node: Node, checkpointer=None):
    g = StateGraph(HostState)
    g.add_node("receive", lambda s: {"audit": ["received"]})
    g.add_node("classify", node)
    g.add_node("quarantine", lambda s: {"handled_by": "quarantine", "audit": ["quarantined"]})
    g.add_node("inbox", lambda s: {"handled_by": "inbox", "audit": ["delivered"]})
    g.add_edge(START, "receive")
    g.add_edge("receive", "classify")
    g.add_conditional_edges("classify", node.route({"spam": "quarantine", "ham": "inbox"}, default="inbox"))
    g.add_edge("quarantine", END)
    g.add_edge("inbox", END)
    return g.compile(checkpointer=checkpointer)


def test_node_in_host_graph_routes_and_leaves_state_alone(small):
    node = sms_node(small, input="ticket", output="label")
    graph = host_graph(node)
    with collect() as trace:
        out = graph.invoke({"ticket": SPAM, "audit": []})
    assert out["label"] == "spam" and out["handled_by"] == "quarantine"
    assert out["audit"] == ["received", "quarantined"]
    assert set(out) == {"ticket", "audit", "label", "handled_by"}  # no agentkit keys in the host's state
    assert len(trace.results) == 1 and trace.results[0].tier == "small"


def test_sqlite_checkpoint_round_trip(small, tmp_path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    db = tmp_path / "ckpt.sqlite"
    node = sms_node(small, input="ticket", output="label", meta="label_meta")
    with sqlite3.connect(db, check_same_thread=False) as conn:
        graph = host_graph(node, SqliteSaver(conn))
        cfg = {"configurable": {"thread_id": "t1"}}
        graph.invoke({"ticket": HAM, "audit": []}, cfg)
    with sqlite3.connect(db, check_same_thread=False) as conn:
        restored = host_graph(node, SqliteSaver(conn)).get_state({"configurable": {"thread_id": "t1"}})
    assert restored.values["label"] == "ham" and restored.values["handled_by"] == "inbox"
    assert restored.values["label_meta"]["ok"] is True
    assert restored.values["label_meta"]["tier"] == "small"


def test_ainvoke_with_async_node_on_messages_state(small):
    node = sms_node(small, input="messages.-1", output="verdict")

    class State(MessagesState):
        verdict: str | None

    g = StateGraph(State)
    g.add_node("classify", node.acall)
    g.add_edge(START, "classify")
    g.add_edge("classify", END)
    out = asyncio.run(g.compile().ainvoke({"messages": [("user", HAM), ("user", SPAM)]}))
    assert out["verdict"] == "spam"


def test_batch_and_fan_out_share_one_engine(small):
    """Two nodes on the same engine run in parallel branches (threads) over a batch; each node's
    prefix is restored under the engine lock, so results equal sequential runs."""
    spam_node = sms_node(small, input="text", output="spam")
    lang_node = Node(
        Classify(["question", "statement"], instructions="Is the message a question or a statement?"),
        [Tier(spec="test:small", name="small", engine=small)],
        input="text",
        output="form",
    )

    class S(TypedDict, total=False):
        text: str
        spam: str | None
        form: str | None

    g = StateGraph(S)
    g.add_node("spam", spam_node)
    g.add_node("form", lang_node)
    g.add_edge(START, "spam")
    g.add_edge(START, "form")
    g.add_edge("spam", END)
    g.add_edge("form", END)
    graph = g.compile()
    texts = [SPAM, HAM, "Call me when you get home.", "Did you get my email about Friday?"]
    outs = graph.batch([{"text": t} for t in texts])
    expected = [(spam_node.run(t).value, lang_node.run(t).value) for t in texts]
    assert [(o["spam"], o["form"]) for o in outs] == expected
    assert outs[0]["spam"] == "spam" and outs[1]["spam"] == "ham"


def test_building_a_graph_loads_no_model_and_failures_are_recorded(tmp_path):
    missing = tmp_path / "nope.gguf"
    node = Node(Classify(["a", "b"]), [f"gguf:{missing}"], input="ticket", output="label", meta="meta")
    graph = host_graph(node)  # nothing is loaded here
    out = graph.invoke({"ticket": "hello", "audit": []})
    assert out["label"] is None and out["handled_by"] == "inbox"
    assert "model file not found" in out["meta"]["reason"]
    out = graph.invoke({"ticket": "   ", "audit": []})
    assert "empty" in out["meta"]["reason"]
