"""Calibrated confidence: isotonic maps fitted on labelled answers (per tier, per extracted field), the node
that decides on them, and eval's review bar. Engines here are the shipped FakeEngine (named as such: the
confidences must be set on demand; the same code on real models is measured in bench/classify.py)."""

from __future__ import annotations

import random

import pydantic
import pytest

from agentkit import Classify, Extract, Node, Policy, Tier
from agentkit.calibration import FieldCalibration, FieldSample, Isotonic, TierCalibration
from agentkit.config import apply, configured, load, save, save_threshold
from agentkit.errors import ConfigError
from agentkit.eval import evaluate_node
from agentkit.eval.metrics import reliability
from agentkit.testing import FakeEngine


class Receipt(pydantic.BaseModel):
    company: str
    total: str


def test_isotonic_is_monotone_and_matches_rates_where_data_is_plenty():
    rng = random.Random(0)
    scores = [rng.random() for _ in range(4000)]
    right = [rng.random() < 0.1 + 0.5 * s for s in scores]  # truly P(right) = 0.1 + 0.5 s
    fitted = Isotonic.fit(scores, right)
    grid = [fitted(x / 20) for x in range(21)]
    assert grid == sorted(grid)
    assert abs(fitted(0.1) - 0.15) < 0.06 and abs(fitted(0.9) - 0.55) < 0.06
    # calibrated on half, measured on the other half: close to the truth, where the raw score is not
    test = list(zip(scores[2000:], right[2000:], strict=True))
    half = Isotonic.fit(scores[:2000], right[:2000])
    outcomes = [float(r) for _, r in test]
    assert reliability([half(s) for s, _ in test], outcomes)["ece"] < 0.05
    assert reliability([s for s, _ in test], outcomes)["ece"] > 0.1


def test_a_small_block_is_not_read_as_certainty():
    fitted = Isotonic.fit([0.1, 0.2, 0.9], [False, False, True])
    assert fitted(0.95) < 1.0 and fitted(0.05) > 0.0


def _samples(n: int) -> list[FieldSample]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        raw = rng.random()
        out.append(FieldSample("company", "confirmed", raw, rng.random() < 0.95))
        out.append(FieldSample("company", "free", raw, rng.random() < 0.3))  # high raw scores, often wrong
        out.append(FieldSample("total", "free", raw, rng.random() < raw))
    return out


def test_field_calibration_separates_states_and_round_trips(tmp_path):
    cal = FieldCalibration.fit(_samples(200))
    assert cal.probability("company", 0.9, "confirmed") > 0.85
    assert cal.probability("company", 0.9, "free") < 0.45
    assert cal.probability("company", 0.9, "null") == cal.probability("company", 0.9, "all")  # unseen: all
    assert cal.probability("buyer", 0.9, "free") is None
    again = FieldCalibration.load(cal.save(tmp_path / "cal.json"))
    assert again.maps == cal.maps and again.data == cal.data and len(cal.data) == 64
    with pytest.raises(ConfigError, match="too few labelled fields"):
        FieldCalibration.fit(_samples(5))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="cannot read the calibration"):
        FieldCalibration.load(tmp_path / "bad.json")


def test_a_calibrated_extraction_reports_the_probability_all_fields_are_right():
    cal = FieldCalibration.fit(_samples(200))
    reply = '{"company": "ACME TRADING", "total": "12.50"}'
    task = Extract(Receipt, calibration=cal)
    tier = Tier(spec="fake:small", name="fake-0.5b", engine=FakeEngine(replies=[reply], confidence=0.9))
    result = Node(task, [tier], Policy(threshold=0.0)).run("ACME TRADING\nTOTAL 12.50")
    attempt = result.attempts[0]
    p = attempt.details["field_probability"]
    assert result.confidence == pytest.approx(p["company"] * p["total"])
    assert attempt.details["raw_confidence"] == pytest.approx(0.9)
    assert attempt.details["field_states"]["company"][1] == "free"
    assert attempt.confidence_method.startswith("calibrated:")


def test_an_answer_accepted_below_the_review_threshold_is_marked_and_not_escalated():
    small = FakeEngine(replies=['{"company": "ACME", "total": "12.50"}'], confidence=0.7)
    large = FakeEngine(replies=['{"company": "ACME", "total": "12.50"}'])
    tiers = [
        Tier(spec="fake:small", name="fake-small", engine=small),
        Tier(spec="fake:large", name="fake-large", engine=large),
    ]
    result = Node(Extract(Receipt), tiers, Policy(threshold=0.5, review_threshold=0.9)).run("ACME 12.50")
    assert result.ok and result.needs_review and result.status == "needs_review" and result.tier == "fake-small"
    assert large.calls == []
    assert "< review threshold 0.9" in result.reason
    sure = FakeEngine(replies=['{"company": "ACME", "total": "12.50"}'], confidence=0.95)
    confident = Node(
        Extract(Receipt), [Tier(spec="fake:small", name="fake-small", engine=sure)], Policy(review_threshold=0.9)
    ).run("ACME")
    assert confident.status == "accepted"
    with pytest.raises(ConfigError, match="review_threshold"):
        Policy(review_threshold=1.5)


class Overconfident(FakeEngine):
    """Says "a" to everything: at 0.9 to alpha texts (right), at 0.8 to beta texts (wrong, they are b),
    and says "b" at 0.7 to gamma texts (right)."""

    def score(self, messages, continuations, *, prefix=0, margin=None):
        text = messages[-1]["content"]
        self.replies = ["b"] if "gamma" in text else ["a"]
        self.confidence = 0.9 if "alpha" in text else 0.8 if "beta" in text else 0.7
        return super().score(messages, continuations, prefix=prefix)


def overconfident() -> Node:
    tier = Tier(spec="fake:small", name="fake-small", engine=Overconfident())
    return Node(Classify(["a", "b"]), [tier], Policy(threshold=0.0), name="toy")


RECORDS = [
    {"input": f"{word} {i}", "expected": label}
    for i in range(40)
    for word, label in (("alpha", "a"), ("beta", "b"), ("gamma", "b"))
]


def test_tier_calibration_round_trips_and_refuses_too_few(tmp_path):
    fitted = TierCalibration.fit({"small": [(0.9, True, None), (0.8, False, None)] * 20})
    again = TierCalibration.load(fitted.save(tmp_path / "c.json"))
    assert again.maps == fitted.maps and again.data == fitted.data and again.source == tmp_path / "c.json"
    assert again.probability("small", 0.9) > 0.9 > 0.1 > again.probability("small", 0.8)
    assert again.probability("another tier", 0.9) is None
    with pytest.raises(ConfigError, match="too few labelled answers"):
        TierCalibration.fit({"small": [(0.9, True, None)] * 10})
    with pytest.raises(ConfigError, match="cannot read the calibration"):
        TierCalibration.load(tmp_path / "missing.json")


def test_eval_calibrates_each_tier_and_a_node_decides_on_it(tmp_path):
    from agentkit.eval.report import write_html

    report = evaluate_node(overconfident(), RECORDS, max_error=0.03)
    page = write_html(report, tmp_path / "report.html").read_text()
    assert "fake-small calibrated (ECE" in page and "fake-small raw (ECE" in page  # the diagram, before and after
    assert report["confidence"]["calibrated"]
    raw, calibrated = report["reliability_raw"]["fake-small"], report["reliability"]["fake-small"]
    assert raw["n"] == calibrated["n"] < len(RECORDS)  # judged on the test split only
    assert raw["ece"] > 0.2 and calibrated["ece"] < 0.1
    fitted = report["fitted"]
    assert fitted.probability("fake-small", 0.9) > 0.9  # alpha: always right
    assert 0.3 < fitted.probability("fake-small", 0.8) < 0.7  # beta and gamma pooled: half right
    op = report["operating_point"]
    assert fitted.probability("fake-small", 0.8) < op["review_threshold"] <= fitted.probability("fake-small", 0.9)
    t = op["on_test"]
    assert t["accepted_error"] == 0.0 and 0.5 < t["review_rate"] < 0.8 and t["accepted_share"] + t["review_rate"] == 1
    assert op["ece_raw"] > 0.2 and op["ece"] < 0.1
    node = overconfident().replace(
        calibration=fitted, policy=Policy(threshold=0.0, review_threshold=op["review_threshold"])
    )
    sure, unsure = node.run("alpha 99"), node.run("beta 99")
    assert sure.status == "accepted" and unsure.status == "needs_review" and unsure.value == "a"
    attempt = unsure.attempts[0]
    assert attempt.details["raw_confidence"] == pytest.approx(0.8)
    assert attempt.confidence == pytest.approx(fitted.probability("fake-small", 0.8))
    assert "+calibrated:" in attempt.confidence_method
    assert "< review threshold" in unsure.reason
    assert node.config_hash() != overconfident().config_hash()


def test_eval_leaves_confidence_raw_when_too_few_records_and_says_so():
    report = evaluate_node(overconfident(), RECORDS[:30], max_error=0.03)
    assert not report["confidence"]["calibrated"] and "too few" in report["confidence"]["note"]
    assert "fitted" not in report and report["operating_point"]["ece"] == report["operating_point"]["ece_raw"]


def test_a_config_file_carries_the_threshold_review_bar_and_calibration(tmp_path):
    fitted = evaluate_node(overconfident(), RECORDS, max_error=0.03)["fitted"]
    (tmp_path / "eval").mkdir()
    fitted.save(tmp_path / "eval" / "calibration.json")

    def rules() -> Node:
        return Node(Classify(["a", "b"]), ["rules"], name="toy")

    config = tmp_path / "agentkit.toml"
    save_threshold(config, rules(), 0.3, review_threshold=0.9, calibration=fitted.source)
    assert 'calibration = "eval/calibration.json"' in config.read_text()  # relative to the file: it can move
    node = rules()
    assert apply(config, [node]) == ["toy"]
    assert node.calibration is not None and node.calibration.data == fitted.data
    assert node.policy.threshold == 0.3 and node.policy.review_threshold == 0.9
    save(config, [node])  # a node written back keeps its calibration, named relative to the file
    assert 'calibration = "eval/calibration.json"' in config.read_text()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "agentkit.toml").write_text(config.read_text())
    with pytest.raises(ConfigError, match="cannot read the calibration"):  # the file it names is not there
        apply(moved / "agentkit.toml", [rules()])
    save_threshold(config, node, 0.5)  # chosen on raw confidences: the calibration and review bar go
    assert "calibration" not in load(config)["toy"] and "review_threshold" not in load(config)["toy"]
    other = Node(Classify(["a", "b"]), ["rules"], name="toy", calibration=fitted)
    other.policy = Policy(threshold=0.3)
    assert configured(other, {"tiers": ["knn"]}).calibration is None  # fitted on another ladder: dropped
    with pytest.raises(ConfigError, match="TierCalibration"):
        Node(Classify(["a", "b"]), ["rules"], calibration=FieldCalibration({}))


def test_an_upper_tier_is_calibrated_by_whether_it_agrees_with_the_tier_below():
    """The large tier says b at 0.9 to everything: right where the small one said b too (gamma texts),
    wrong where it overrules the small one (alpha texts, which are a). One map over both would say 0.5."""
    large = Tier(spec="fake:large", name="fake-large", engine=FakeEngine(replies=["b"], confidence=0.9))
    records = [r for r in RECORDS if not r["input"].startswith("beta")]
    node = overconfident().replace(tiers=[overconfident().tiers[0], large], policy=Policy(threshold=0.99))
    fitted = evaluate_node(node, records)["fitted"]
    agrees, differs = (fitted.probability("fake-large", 0.9, a) for a in ("agrees", "differs"))
    assert agrees > 0.9 > 0.1 > differs
    assert 0.3 < fitted.probability("fake-large", 0.9) < 0.7
    unsure = {"all": Isotonic((1.0,), (0.5,), (40,))}  # the small tier at 0.5 whatever it says: always escalates
    run = node.replace(calibration=TierCalibration({"fake-small": unsure, "fake-large": fitted.maps["fake-large"]}))
    for text, state in (("gamma 99", "agrees"), ("alpha 99", "differs")):
        result = run.run(text)
        attempt = result.attempts[1]
        assert attempt.value == "b" and attempt.details["raw_confidence"] == pytest.approx(0.9)
        assert attempt.confidence == pytest.approx(fitted.probability("fake-large", 0.9, state))  # type: ignore[arg-type]
        assert result.needs_review == (state == "differs")


def test_leave_one_out_answers_the_pool_without_itself():
    """A knn tier (a real part, no model) over a labelled pool: without leave-one-out every pool record is
    left out of the evaluation; with it each is answered by its neighbours, never by itself."""
    from agentkit.retrieval import ExampleIndex

    pool = [{"input": f"{w} {i} {w}", "expected": w} for i in range(30) for w in ("apple", "pear")]
    pool.append({"input": "apple pear lonely", "expected": "plum"})  # its only same-label example is itself
    index = ExampleIndex(pool)
    assert index.search("apple pear lonely", 1)[0]["expected"] == "plum"
    with index.leaving_out("apple pear lonely"):
        assert index.search("apple pear lonely", 1)[0]["expected"] != "plum"
        # nor through another query (a shortlist's second look searches with a neighbour's text)
        assert "plum" not in {e["expected"] for e in index.search("apple 3 apple pear", len(pool))}
    assert index.search("apple pear lonely", 1)[0]["expected"] == "plum"  # the block ends: back as it was
    node = Node(Classify(["apple", "pear", "plum"], examples=pool, vote_k=3), ["knn"], name="fruit")
    assert evaluate_node(node, pool)["n"] == 0
    report = evaluate_node(node, pool, leave_one_out=True)
    assert report["n"] == len(pool) and report["leave_one_out"]
    assert report["all"]["tier0"]["score"] == pytest.approx(60 / 61)  # the plum cannot be voted for


def test_answers_marked_for_review_route_to_their_own_branch():
    engine = FakeEngine(replies=["spam"], confidence=0.7)
    tier = Tier(spec="fake:small", name="fake-small", engine=engine)
    policy = Policy(threshold=0.5, review_threshold=0.9)
    node = Node(Classify(["spam", "ham"]), [tier], policy, input="text", output="label", meta="label_meta")
    router = node.route({"spam": "drop", "ham": "inbox"}, default="inbox", review="person")
    state = {"text": "WIN a prize"}
    assert router(state | node(state)) == "person"
    engine.confidence = 0.95
    assert router(state | node(state)) == "drop"
    with pytest.raises(ConfigError, match="records no meta"):
        Node(Classify(["spam", "ham"]), [tier], policy).route(review="person")


def test_a_review_bar_from_costs_reviews_where_a_wrong_answer_would_cost_more():
    report = evaluate_node(overconfident(), RECORDS, costs=(1.0, 4.0))  # review when P(right) < 0.75
    op, fitted = report["operating_point"], report["fitted"]
    assert op["review_threshold"] == 0.75 and op["costs"] == (1.0, 4.0)
    assert fitted.probability("fake-small", 0.8) < 0.75 < fitted.probability("fake-small", 0.9)
    assert op["on_test"]["accepted_error"] == 0.0 and op["on_test"]["review_rate"] > 0.5
    with pytest.raises(ConfigError, match="costs"):
        evaluate_node(overconfident(), RECORDS, costs=(5.0, 1.0))


def test_agentkit_eval_writes_a_calibration_and_review_bar_that_agentkit_run_applies(tmp_path):
    """End to end through the CLI on a real knn tier (no model): eval calibrates the vote share, chooses a review
    bar, writes them; run with that config marks the unsure inputs for review."""
    import json
    import subprocess
    import sys

    app = tmp_path / "app.py"
    app.write_text(
        "from agentkit import Classify, Node\n"
        "POOL = [{'input': f'{w} {i} {w} {v}', 'expected': w} for i in range(40)"
        " for w, v in (('apple', 'red'), ('pear', 'green'))]\n"
        "POOL += [{'input': f'apple pear {i}', 'expected': 'apple' if i % 2 else 'pear'} for i in range(40)]\n"
        "node = Node(Classify(['apple', 'pear'], examples=POOL, vote_k=4), ['knn'], name='fruit')\n"
    )
    records = [
        {"input": f"{w} {i} {w} {v}", "expected": w}
        for i in range(100, 140)
        for w, v in (("apple", "red"), ("pear", "green"))
    ]
    records += [{"input": f"apple pear {i}", "expected": "apple" if i % 3 else "pear"} for i in range(100, 140)]
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = tmp_path / "agentkit.toml"
    cli = [sys.executable, "-m", "agentkit.cli"]
    done = subprocess.run(
        [*cli, "eval", f"{app}:node", "--data", str(data), "--out", str(tmp_path / "ev"), "--max-error", "0.05",
         "--write-config", str(config)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["confidence"]["calibrated"] and "operating_point" in report
    assert (tmp_path / "ev" / "calibration.json").is_file()
    text = config.read_text()
    assert 'calibration = "ev/calibration.json"' in text and "review_threshold" in text
    run = subprocess.run(
        [*cli, "run", f"{app}:node", str(data), "--config", str(config)], capture_output=True, text=True, cwd=tmp_path
    )
    written = [json.loads(line) for line in run.stdout.splitlines()]
    statuses = [r["status"] for r in written]
    assert len(statuses) == len(records) and "needs_review" in statuses and "accepted" in statuses
    maps = json.loads((tmp_path / "ev" / "calibration.json").read_text())["tiers"]["knn"]
    calibrated = {p for states in maps.values() for p in states["probs"]}
    assert {r["confidence"] for r in written} <= calibrated  # read through the calibration, not vote shares
