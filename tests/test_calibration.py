"""Calibrated confidence: isotonic maps fitted on labelled fields, and an extraction that reports them."""

from __future__ import annotations

import random

import pydantic
import pytest

from agentkit import Extract, Node, Policy, Tier
from agentkit.calibration import FieldCalibration, FieldSample, Isotonic
from agentkit.errors import ConfigError
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
