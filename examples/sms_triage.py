"""SMS triage on the embedded models: cleanse → classify (spam/ham) → route, as a LangGraph graph.

    python examples/sms_triage.py [--inbox examples/data/sms_inbox.jsonl]

The classifier scores both labels with the 0.5B model, with the most similar labelled messages
in the prompt; answers under the confidence threshold escalate to the 1.5B model.
Every message ends as a routed result or a recorded failure; a cost/escalation summary closes the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from agentkit import Classify, Cleanse, Node, Policy, collect, read_jsonl

HERE = Path(__file__).parent


class Message(TypedDict, total=False):
    id: str
    text: str
    clean: str | None
    label: str | None
    label_meta: dict
    outcome: str


def classifier(examples: list[dict] | None = None) -> Node:
    """The spam/ham node on its own (``agentkit eval examples/sms_triage.py:classifier --data ...``)."""
    if examples is None:
        examples = list(read_jsonl(HERE / "data" / "sms_labelled.jsonl"))
    return Node(
        Classify(
            ["ham", "spam"],
            instructions="Is this SMS message spam (unsolicited adverts, prizes, scams) or ham (a normal message)?",
            examples=examples,
            k=2,
            static_per_label=4,
        ),
        policy=Policy(threshold=0.8),  # from bench/classify.py: 95% at 37% escalation on 120 held-out SMS
        name="sms_spam",
        input="clean",
        output="label",
        meta="label_meta",
    )


def build_graph(examples: list[dict] | None = None) -> object:
    cleanse = Node(Cleanse(), ["rules"], input="text", output="clean")
    classify = classifier(examples)
    g = StateGraph(Message)
    g.add_node("cleanse", cleanse)
    g.add_node("classify", classify)
    g.add_node("deliver", lambda s: {"outcome": "delivered"})
    g.add_node("drop", lambda s: {"outcome": "dropped as spam"})
    g.add_node("flag", lambda s: {"outcome": f"flagged: {s['label_meta']['reason'][:80]}"})
    g.add_edge(START, "cleanse")
    g.add_edge("cleanse", "classify")
    g.add_conditional_edges("classify", classify.route({"ham": "deliver", "spam": "drop"}, default="flag"))
    for end in ("deliver", "drop", "flag"):
        g.add_edge(end, END)
    return g.compile()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inbox", type=Path, default=HERE / "data" / "sms_inbox.jsonl")
    p.add_argument("--examples", type=Path, default=HERE / "data" / "sms_labelled.jsonl")
    args = p.parse_args()
    graph = build_graph(list(read_jsonl(args.examples)))
    inbox = list(read_jsonl(args.inbox))
    with collect() as trace:
        for msg in inbox:
            out = graph.invoke({"id": str(msg.get("id", "")), "text": msg["input"]})
            meta = out.get("label_meta", {})
            conf = meta.get("confidence")
            print(
                f"{out['id']:>5}  {str(out.get('label')):5}  {out['outcome']:16} tier={meta.get('tier')}  "
                f"conf={conf if conf is None else round(conf, 3)}  {msg['input'][:60]!r}"
            )
    classify_results = [r for r in trace.results if r.node == "sms_spam"]
    right = sum(r.value == m.get("expected") for r, m in zip(classify_results, inbox, strict=True))
    summary = trace.summary(node="sms_spam")
    summary["accuracy_vs_gold"] = right / len(inbox)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
