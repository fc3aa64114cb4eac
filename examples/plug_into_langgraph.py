"""agentkit nodes added to an existing LangGraph app that has its own state and nodes.

    python examples/plug_into_langgraph.py

The host app is a support desk: it looks up the customer, decides a priority, and writes a reply. It knows
nothing about agentkit. Two agentkit nodes slot in: one classifies the message (knn vote → 0.5B → 1.5B),
one answers it from the help centre (grounded, with citations, abstaining when the help centre has no
answer). They read from and write to keys the host chooses; their traces are collected outside the state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from agentkit import Classify, Corpus, GroundedAnswer, Node, collect, read_jsonl

HERE = Path(__file__).resolve().parent


class Desk(TypedDict, total=False):
    """The host app's own state: agentkit only adds the keys it is told to."""

    customer_id: str
    message: str
    plan: str
    priority: str
    topic: str | None  # written by agentkit
    help: dict | None  # written by agentkit
    reply: str


def lookup_customer(state: Desk) -> dict:
    return {"plan": "premium" if state["customer_id"].startswith("P") else "basic"}


def prioritise(state: Desk) -> dict:
    return {"priority": "high" if state["plan"] == "premium" or state.get("topic") == "action_request" else "normal"}


def write_reply(state: Desk) -> dict:
    found = state.get("help") or {}
    if found.get("answerable"):
        return {"reply": f"{found['answer']} (see {', '.join(found['citations'])})"}
    return {"reply": f"A colleague will get back to you ({state['priority']} priority)."}


def build():
    topic = Node(
        Classify(
            ["support_question", "action_request", "spam", "other", "invoice"],
            instructions="What kind of message is this?",
            examples=list(read_jsonl(HERE / "data" / "emails_labelled.jsonl")),
            k=4,
        ),
        ["knn", "embedded:qwen2.5-0.5b", "embedded:qwen2.5-1.5b"],
        input="message",
        output="topic",
    )
    help_centre = Node(GroundedAnswer(Corpus.build(HERE / "kb"), k=2), input="message", output="help")

    g = StateGraph(Desk)
    g.add_node("lookup_customer", lookup_customer)
    g.add_node("topic", topic)
    g.add_node("prioritise", prioritise)
    g.add_node("help_centre", help_centre)
    g.add_node("write_reply", write_reply)
    g.add_edge(START, "lookup_customer")
    g.add_edge("lookup_customer", "topic")
    g.add_edge("topic", "prioritise")
    g.add_conditional_edges("prioritise", topic.route({"support_question": "help_centre"}, default="write_reply"))
    g.add_edge("help_centre", "write_reply")
    g.add_edge("write_reply", END)
    return g.compile(checkpointer=InMemorySaver())  # the host's checkpointer: agentkit values are plain JSON


def main() -> None:
    desk = build()
    messages = [
        ("P-1001", "How long does it take for a new card to arrive?"),
        ("B-2002", "Can you send me the signed contract by Friday?"),
    ]
    with collect() as trace:
        for n, (customer, text) in enumerate(messages):
            out = desk.invoke({"customer_id": customer, "message": text}, {"configurable": {"thread_id": str(n)}})
            print(f"{customer}: topic={out['topic']} priority={out['priority']}\n  reply: {out['reply']}")
    print(trace.summary())


if __name__ == "__main__":
    main()
