"""The evaluation arithmetic: the cascade derived from per-tier answers must be what a Node
does, SQuAD scoring, Wilson intervals. Tiers are the shipped FakeEngine (named as such)."""

from __future__ import annotations

import itertools

import pytest

from agentkit import Classify, Node, Policy, Tier
from agentkit.evaluate import TierAnswer, answer_all, cascade, grounded_scores, squad_f1, summarize, wilson
from agentkit.testing import FakeEngine


def fake(name: str, reply: str, confidence: float) -> Tier:
    return Tier(spec=f"fake:{name}", name=name, engine=FakeEngine(replies=[reply], confidence=confidence))


@pytest.mark.parametrize("c1,c2,th", list(itertools.product([0.55, 0.75, 0.95], [0.6, 0.9], [0.5, 0.7, 0.8, 0.99])))
def test_cascade_from_answers_equals_what_the_node_returns(c1, c2, th):
    task = Classify(["a", "b"])
    tiers = [fake("small", "a", c1), fake("large", "b", c2)]
    policy = Policy(threshold=th)
    result = Node(task, tiers, policy).run("some text")
    row = answer_all(task, tiers, ["some text"])[0]
    out = cascade(row, policy)
    assert out.value == result.value
    assert (tiers[out.tier].name if out.tier is not None else None) == result.tier
    assert out.escalated == result.escalated


def test_abstaining_cascade_returns_the_abstention_and_counts_it():
    row = [TierAnswer("x", True, 0.4, 1e-6, 0.1), TierAnswer("y", True, 0.5, 3e-6, 0.3)]
    out = cascade(row, Policy(threshold=0.8, when_unsure="abstain"), abstention="ABSTAIN")
    assert out.value == "ABSTAIN" and out.abstained and out.tier is None
    assert out.cost_usd == pytest.approx(4e-6)
    s = summarize([row], lambda v, i: v == "ABSTAIN", Policy(when_unsure="abstain"), [0.8], abstention="ABSTAIN")
    assert s["cascade"][0]["acc"] == 1.0 and s["cascade"][0]["answered_by"] == [0.0, 0.0]


def test_answered_by_and_escalation_rate():
    rows = [
        [TierAnswer("a", True, 0.95, 0, 0), TierAnswer("a", True, 0.9, 0, 0)],
        [TierAnswer("b", True, 0.60, 0, 0), TierAnswer("a", True, 0.9, 0, 0)],
        [TierAnswer(None, False, None, 0, 0), TierAnswer("b", True, 0.9, 0, 0)],
    ]
    s = summarize(rows, lambda v, i: v == "a", Policy(), [0.8])
    c = s["cascade"][0]
    assert c["answered_by"] == pytest.approx([1 / 3, 2 / 3])
    assert c["escalation_rate"] == pytest.approx(2 / 3) and c["acc"] == pytest.approx(2 / 3)
    assert s["tiers"][0]["invalid"] == pytest.approx(1 / 3)


def test_squad_scoring():
    assert squad_f1("the Normans", "Normans") == 1.0
    assert squad_f1("in the 10th century", "10th century") == pytest.approx(0.8)
    assert grounded_scores(None, []) == (1.0, 1.0)  # right abstention
    assert grounded_scores(None, ["France"]) == (0.0, 0.0)
    assert grounded_scores("France", []) == (0.0, 0.0)  # answered an unanswerable question
    assert grounded_scores("france.", ["France", "in France"]) == (1.0, 1.0)


def test_wilson_interval():
    lo, hi = wilson(299, 300)
    assert lo == pytest.approx(0.9814, abs=1e-3) and hi == pytest.approx(0.9994, abs=1e-3)
    assert wilson(0, 0) == (0.0, 0.0)
