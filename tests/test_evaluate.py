"""The evaluation arithmetic against hand-computed cases: the cascade derived from per-tier
answers must be what a Node does; metrics per task type; calibration picks the right threshold
on a constructed case; the report files. Tiers here are the shipped FakeEngine (named as such:
the confidences must be set on demand); the end-to-end eval on real models is in test_runner."""

from __future__ import annotations

import itertools
import json

import pytest

from agentkit import Classify, ConfigError, Node, Policy, Tier
from agentkit.eval import (
    TierAnswer,
    answer_all,
    calibrate,
    cascade,
    configurations,
    evaluate_node,
    figures,
    headline,
    iter_answers,
    metrics,
)
from agentkit.eval.metrics import grounded_scores, squad_f1
from agentkit.stats import percentile, wilson
from agentkit.testing import FakeEngine


def fake(name: str, reply: str, confidence: float) -> Tier:
    return Tier(spec=f"fake:{name}", name=name, engine=FakeEngine(replies=[reply], confidence=confidence))


@pytest.mark.parametrize("c1,c2,th", list(itertools.product([0.55, 0.75, 0.95], [0.6, 0.9], [0.5, 0.7, 0.8, 0.99])))
def test_cascade_from_answers_equals_what_the_node_returns(c1, c2, th):
    task = Classify(["a", "b"])
    tiers = [fake("small", "a", c1), fake("large", "b", c2)]
    policy = Policy(threshold=th)
    result = Node(task, tiers, policy).run("some text")
    row = answer_all(Node(task, tiers, policy), ["some text"])[0]
    out = cascade(row, policy)
    assert out.value == result.value
    assert (tiers[out.tier].name if out.tier is not None else None) == result.tier
    assert out.escalated == result.escalated


def test_abstaining_cascade_returns_the_abstention_and_counts_it():
    row = [TierAnswer("x", True, 0.4, 1e-6, 0.1), TierAnswer("y", True, 0.5, 3e-6, 0.3)]
    out = cascade(row, Policy(threshold=0.8, when_unsure="abstain"), abstention="ABSTAIN")
    assert out.value == "ABSTAIN" and out.abstained and out.tier is None
    assert out.cost_usd == pytest.approx(4e-6)
    outs = configurations([row], Policy(when_unsure="abstain"), [0.8], abstention="ABSTAIN")["cascade@0.8"]
    f = figures(outs, [float(o.value == "ABSTAIN") for o in outs], 2)
    assert f["score"] == 1.0 and f["answered_by"] == [0.0, 0.0] and f["abstained"] == 1.0 and f["failures"] == 0


def test_a_tier_alone_is_its_own_answer_whatever_its_confidence():
    """small-only / large-only are the tiers' answers, not gated by the node's threshold (which would
    make them abstain on everything under an abstaining policy); an invalid answer still abstains."""
    rows = [[TierAnswer("x", True, 0.4, 0, 0), TierAnswer(None, False, None, 0, 0)]]
    configs = configurations(rows, Policy(threshold=0.8, when_unsure="abstain"), [0.8], abstention="ABSTAIN")
    assert configs["tier0"][0].value == "x" and configs["tier0"][0].tier == 0 and not configs["tier0"][0].abstained
    assert configs["tier1"][0].abstained and configs["tier1"][0].value == "ABSTAIN"
    assert configs["cascade@0.8"][0].abstained  # the cascade keeps the node's rules


def test_answered_by_and_escalation_rate():
    rows = [
        [TierAnswer("a", True, 0.95, 0, 0), TierAnswer("a", True, 0.9, 0, 0)],
        [TierAnswer("b", True, 0.60, 0, 0), TierAnswer("a", True, 0.9, 0, 0)],
        [TierAnswer(None, False, None, 0, 0), TierAnswer("b", True, 0.9, 0, 0)],
    ]
    configs = configurations(rows, Policy(), [0.8])
    outs = configs["cascade@0.8"]
    c = figures(outs, [float(o.value == "a") for o in outs], 2)
    assert c["answered_by"] == pytest.approx([1 / 3, 2 / 3])
    assert c["escalation_rate"] == pytest.approx(2 / 3) and c["score"] == pytest.approx(2 / 3)
    assert [o.tier for o in configs["tier0"]] == [0, 0, None]  # the small tier alone fails the invalid one


def test_sub_ladders_cascade_over_their_own_tiers():
    """stock (0) and tuned (1) small tiers, each under the same large tier (2), side by side."""
    rows = [
        [TierAnswer("a", True, 0.5, 1, 0), TierAnswer("a", True, 0.95, 1, 0), TierAnswer("b", True, 0.9, 10, 0)],
        [TierAnswer("a", True, 0.9, 1, 0), TierAnswer("b", True, 0.6, 1, 0), TierAnswer("b", True, 0.9, 10, 0)],
    ]
    configs = configurations(rows, Policy(), [0.8], ladders={"stock": [0, 2], "tuned": [1, 2]})
    assert [o.tier for o in configs["stock@0.8"]] == [2, 0] and [o.value for o in configs["stock@0.8"]] == ["b", "a"]
    assert [o.tier for o in configs["tuned@0.8"]] == [1, 2] and [o.cost_usd for o in configs["tuned@0.8"]] == [1, 11]
    with pytest.raises(ConfigError, match="outside"):
        configurations(rows, Policy(), [0.8], ladders={"bad": [0, 3]})


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


def test_classification_metrics_by_hand():
    m = metrics.classification(["a", "a", "b", None], ["a", "b", "b", "b"])
    assert m["accuracy"] == 0.5
    # a: precision 1/2, recall 1/1 -> F1 2/3; b: precision 1/1, recall 1/3 -> F1 1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["confusion"] == {"a": {"a": 1}, "b": {"a": 1, "b": 1, "(failed)": 1}}


def test_extraction_metrics_by_hand():
    gold = [
        {"company": "ACME SDN BHD", "total": "12.50", "date": "03/08/2018"},
        {"company": "X", "total": "1.00", "date": ""},
    ]
    predicted = [{"issuer": "acme  sdn bhd", "total": "12.5", "date": "2018-08-03"}, None]
    m = metrics.extraction(predicted, gold, kinds={"total": "amount", "date": "date"}, fields={"company": "issuer"})
    assert m["all_fields"] == 0.5
    assert m["fields"]["company"] == {"exact": 0.0, "normalized": 0.5, "n": 2}
    assert m["fields"]["total"]["exact"] == 0.0 and m["fields"]["total"]["normalized"] == 0.5
    assert m["fields"]["date"]["n"] == 1  # an empty gold value is not counted


def test_grounded_metrics_by_hand():
    expected = [
        {"answerable": True, "answers": ["Normandy"]},
        {"answerable": True, "answers": ["10th century"]},
        {"answerable": False, "answers": []},
        {"answerable": False, "answers": []},
    ]
    predicted = [
        {"answerable": True, "answer": "Normandy"},
        {"answerable": False, "answer": None},  # abstained on an answerable question
        {"answerable": False, "answer": None},  # right abstention
        {"answerable": True, "answer": "Rollo"},  # answered an unanswerable one
    ]
    m = metrics.grounded(predicted, expected)
    assert m["f1"] == 50.0 and m["f1_all"] == 50.0 and m["em"] == 50.0
    assert m["abstain_acc"] == 0.5 and m["abstain_precision"] == 0.5 and m["abstain_rate"] == 0.5


def test_reliability_and_expected_calibration_error():
    r = metrics.reliability([0.95, 0.95, 0.55, 0.55, None], [1, 0, 1, 1, 1], bins=10)
    assert [b["n"] for b in r["table"]] == [2, 2] and r["n"] == 4
    # bins: 0.55 conf vs 1.0 acc (gap 0.45), 0.95 vs 0.5 (gap 0.45) -> ECE 0.45
    assert r["ece"] == pytest.approx(0.45)


def test_percentile():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5 and percentile([], 0.9) == 0.0
    assert percentile([1.0, 10.0], 0.95) == pytest.approx(9.55)


def _point(score: float, cost: float, esc: float = 0.0) -> dict:
    return {"score": score, "cost_per_item": cost, "escalation_rate": esc}


def test_calibration_picks_the_cheapest_threshold_that_reaches_the_target():
    points = {
        "tier0": _point(0.80, 1.0),
        "tier1": _point(0.90, 10.0, 1.0),
        "cascade@0.5": _point(0.82, 2.0, 0.1),
        "cascade@0.8": _point(0.90, 4.0, 0.3),
        "cascade@0.9": _point(0.91, 6.0, 0.5),
        "cascade@0.99": _point(0.90, 9.0, 0.9),
    }
    assert calibrate(points)[0] == "cascade@0.8"  # default: cheapest within 1 point of the best
    assert calibrate(points, target=0.91)[0] == "cascade@0.9"
    assert calibrate(points, target=0.95)[0] == "cascade@0.9"  # unreachable: the best score
    assert calibrate(points, budget=3.0)[0] == "cascade@0.5"
    h = headline(points, "cascade@0.8")
    assert h["cost_vs_large_at_matched_score"] == pytest.approx(0.4)
    assert h["pgr"] == pytest.approx(1.0) and h["pgr_per_escalated"] == pytest.approx(1 / 0.3)
    # PGR vs escalation: (0,0) (.1,.2) (.3,1) (.5,1.1) (.9,1) (1,1): trapezoids .01+.12+.21+.42+.1
    assert h["apgr"] == pytest.approx(0.86)


def test_headline_says_when_the_large_tier_is_not_better():
    points = {"tier0": _point(0.9, 1), "tier1": _point(0.4, 3), "cascade@0.5": _point(0.8, 2, 0.2)}
    h = headline(points, "cascade@0.5")
    assert h["pgr"] is None and h["gap"] == pytest.approx(-0.5)


def test_evaluate_node_splits_calibrates_and_resumes(tmp_path):
    # small: right on "a"-texts with high confidence, wrong (says a) on "b"-texts with low confidence
    class Scripted(FakeEngine):
        def score(self, messages, continuations, *, prefix=0, margin=None):
            text = messages[-1]["content"]
            self.replies = ["a"]
            self.confidence = 0.95 if "alpha" in text else 0.6
            return super().score(messages, continuations, prefix=prefix)

    small = Tier(spec="fake:small", name="small", engine=Scripted(replies=["a"]), usd_per_mtok_in=1.0)
    large = Tier(
        spec="fake:large", name="large", engine=FakeEngine(replies=["b"], confidence=0.9), usd_per_mtok_in=10.0
    )
    records = [{"input": f"alpha {i}", "expected": "a"} for i in range(20)]
    records += [{"input": f"beta {i}", "expected": "b"} for i in range(20)]
    node = Node(Classify(["a", "b"]), [small, large], name="toy")
    cache = tmp_path / "answers.jsonl"
    report = evaluate_node(node, records, thresholds=[0.5, 0.9], cache=cache)
    assert report["n"] == 40 and not report["interrupted"]
    assert report["all"]["tier0"]["score"] == 0.5 and report["all"]["tier1"]["score"] == 0.5
    assert report["all"]["cascade@0.9"]["score"] == 1.0 and report["all"]["cascade@0.9"]["escalation_rate"] == 0.5
    assert report["calibration"]["picked"] == "cascade@0.9" and report["calibration"]["threshold"] == 0.9
    assert report["test"]["cascade@0.9"]["quality"]["accuracy"] == 1.0
    assert len(cache.read_text().splitlines()) == 80  # every tier's answer to every item, kept
    calls = []
    small.engine.score = lambda *a, **k: calls.append(1)  # a rerun must not ask again
    again = evaluate_node(node, records, thresholds=[0.5, 0.9], cache=cache)
    assert not calls and again["all"]["cascade@0.9"]["score"] == 1.0


def test_cached_answers_are_reused_only_for_the_same_task_and_tier(tmp_path):
    cache = tmp_path / "answers.jsonl"
    tier = fake("small", "a", 0.9)
    inputs = ["one text", "another text"]
    list(iter_answers(Node(Classify(["a", "b"]), [tier]), inputs, cache=cache))
    tier.engine.calls.clear()
    list(iter_answers(Node(Classify(["a", "b"]), [tier]), inputs, cache=cache))
    assert tier.engine.calls == []  # same settings: read back, not asked
    list(iter_answers(Node(Classify(["a", "b"], instructions="Other words."), [tier]), inputs, cache=cache))
    assert len(tier.engine.calls) == 2  # the node changed: asked again, not read back stale
    retuned = Tier(spec="fake:small", name="small", engine=tier.engine)
    retuned.__dict__["provenance"] = {"sha256": "a new adapter"}  # a fake has no adapter file to hash
    tier.engine.calls.clear()
    list(iter_answers(Node(Classify(["a", "b"]), [retuned]), inputs, cache=cache))
    assert len(tier.engine.calls) == 2  # same name, another adapter: asked again
    legacy = tmp_path / "legacy.jsonl"  # written before answers carried their settings: not trusted
    lines = [json.loads(x) for x in cache.read_text().splitlines()][:2]
    legacy.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "config"}) + "\n" for r in lines))
    tier.engine.calls.clear()
    list(iter_answers(Node(Classify(["a", "b"], instructions="Other words."), [tier]), inputs, cache=legacy))
    assert len(tier.engine.calls) == 2


def test_records_in_the_example_pool_are_left_out():
    pool = [{"input": "alpha 1", "expected": "a"}, {"input": "beta 1", "expected": "b"}]
    node = Node(Classify(["a", "b"], examples=pool), [fake("small", "a", 0.9)])
    report = evaluate_node(node, pool + [{"input": "alpha 2", "expected": "a"}])
    assert report["n"] == 1 and report["left_out_in_pool"] == 2


def test_report_files(tmp_path):
    from agentkit.eval.report import write_html, write_json

    node = Node(Classify(["a", "b"]), [fake("small", "a", 0.7), fake("large", "a", 0.9)], name="toy")
    records = [{"input": f"text {i}", "expected": "a" if i % 3 else "b"} for i in range(12)]
    report = evaluate_node(node, records, thresholds=[0.5, 0.8])
    page = write_html(report, tmp_path / "r.html").read_text()
    assert page.count("<svg") == 3 and "cascade@0.8" in page
    data = json.loads(write_json(report, tmp_path / "r.json").read_text())
    assert data["all"]["tier0"]["quality"]["accuracy"] == pytest.approx(8 / 12)
