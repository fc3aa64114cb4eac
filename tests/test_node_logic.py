"""Escalation, retry and failure logic, driven by the shipped FakeEngine (a fake, named as such):
these cases (a forced validation failure, an engine error) cannot be produced on demand by a real model."""

from __future__ import annotations

import json

import pydantic
import pytest

from agentkit import Classify, Corpus, Extract, GroundedAnswer, InputError, Node, Policy, TaskFailed, Tier, collect
from agentkit.errors import ConfigError, EngineError
from agentkit.eval import answer_all, cascade, iter_answers
from agentkit.testing import FakeEngine, failing_engine


class Receipt(pydantic.BaseModel):
    company: str
    total: str


def fake_tier(name: str, engine: FakeEngine, usd_per_hour: float = 0.2) -> Tier:
    return Tier(spec=f"fake:{name}", name=name, engine=engine, usd_per_hour=usd_per_hour)


def total_in_text(value: Receipt, text: str) -> str | None:
    return None if value.total in text else f"total {value.total} does not occur in the text"


def test_invalid_output_escalates_to_next_tier_and_costs_sum():
    small = FakeEngine(replies=['{"company": "ACME", "total": "99.00"}'])  # 99.00 is not in the text
    large = FakeEngine(replies=['{"company": "ACME", "total": "12.50"}'])
    node = Node(Extract(Receipt, validators=[total_in_text]), [fake_tier("small", small), fake_tier("large", large)])
    result = node.run("ACME store\nTOTAL 12.50")
    assert result.ok and result.tier == "large"
    assert result.value == {"company": "ACME", "total": "12.50"}
    assert [a.outcome for a in result.attempts] == ["invalid", "accepted"]
    assert "does not occur" in result.attempts[0].reason
    assert result.escalated
    assert result.cost_usd == pytest.approx(sum(a.cost_usd for a in result.attempts))
    assert result.attempts[0].cost_usd > 0  # local compute is never free


def test_schema_violation_is_caught_even_if_constraint_was_ignored():
    bad = FakeEngine(replies=['{"company": "ACME"}'])  # missing field: an unconstrained reply
    node = Node(Extract(Receipt), [fake_tier("only", bad)])
    result = node.run("ACME TOTAL 1.00")
    assert not result.ok
    assert "schema" in result.reason and "total" in result.reason
    assert result.input_text == "ACME TOTAL 1.00"  # nothing is lost


def test_truncated_output_is_a_validation_failure():
    engine = FakeEngine(replies=['{"company": "A", "total": "1"}'])
    node = Node(Extract(Receipt, max_tokens=2), [fake_tier("t", engine)])
    result = node.run("A 1")
    assert not result.ok and "token limit" in result.reason


def test_low_confidence_escalates_then_best_is_returned_when_nobody_is_sure():
    small = FakeEngine(replies=["spam"], confidence=0.55)
    large = FakeEngine(replies=["ham"], confidence=0.7)
    task = Classify(["ham", "spam"])
    node = Node(task, [fake_tier("small", small), fake_tier("large", large)], Policy(threshold=0.9))
    result = node.run("hello there")
    assert result.ok and result.accepted == "below_threshold"
    assert result.tier == "large" and result.value == "ham"
    assert [a.outcome for a in result.attempts] == ["low_confidence", "low_confidence"]

    strict = Node(task, [fake_tier("small", small)], Policy(threshold=0.9, when_unsure="fail"))
    failed = strict.run("hello there")
    assert not failed.ok and "confidence 0.550" in failed.reason


def test_a_low_confidence_extraction_names_its_doubtful_fields():
    engine = FakeEngine(replies=['{"company": "ACME", "total": "12.50"}'], confidence=0.55)
    result = Node(Extract(Receipt), [fake_tier("t", engine)], Policy(threshold=0.8)).run("ACME total 12.50")
    assert result.attempts[0].outcome == "low_confidence"
    assert result.attempts[0].reason == "confidence 0.550 < threshold 0.8 (company 0.55, total 0.55)"


def test_a_field_the_text_decides_does_not_lower_the_confidence():
    """A required field with one candidate is the document's choice: its tokens' probabilities (how the
    model would spell it, split over tokenizations) are not doubt. A fake engine sets them low."""

    class DoubtfulTotal(FakeEngine):
        def generate(self, messages, constraint, *, max_tokens, prefix=0):
            gen = super().generate(messages, constraint, max_tokens=max_tokens, prefix=prefix)
            words = gen.text.split(" ")
            gen.token_probs = [0.1 if "12.50" in w else 0.9 for w in words]
            return gen

    reply = '{"company": "ACME", "total": "12.50"}'
    decided = Extract(Receipt, verbatim={"total": lambda text: ["12.50"]})
    free = Extract(Receipt, verbatim={"total": lambda text: ["12.50", "3.00"]})
    assert Node(decided, [fake_tier("t", DoubtfulTotal(replies=[reply]))]).run("ACME 12.50").confidence == 0.9
    assert Node(free, [fake_tier("t", DoubtfulTotal(replies=[reply]))]).run("ACME 12.50 3.00").confidence == 0.1
    strict = Node(decided, [fake_tier("t", DoubtfulTotal(replies=[reply]))], Policy(threshold=0.95))
    assert strict.run("ACME 12.50").attempts[0].reason == "confidence 0.900 < threshold 0.95 (company 0.90)"


def test_confident_small_tier_does_not_escalate():
    small = FakeEngine(replies=["spam"], confidence=0.97)
    large = FakeEngine(replies=["ham"])
    node = Node(Classify(["ham", "spam"]), [fake_tier("small", small), fake_tier("large", large)])
    result = node.run("WIN A PRIZE")
    assert result.value == "spam" and result.tier == "small" and not result.escalated
    assert large.calls == []


def test_transient_engine_errors_are_retried_then_succeed():
    engine = failing_engine(2, "ham")
    node = Node(Classify(["ham", "spam"]), [fake_tier("t", engine)], Policy(retries=2, retry_wait_s=0.001))
    result = node.run("hi")
    assert result.ok and result.value == "ham"
    assert len(engine.calls) == 3


def test_every_tier_failing_returns_all_reasons_or_raises():
    a = FakeEngine(replies=[EngineError("boom", retryable=False)])
    b = FakeEngine(replies=[EngineError("bang", retryable=True)])
    tiers = [fake_tier("a", a), fake_tier("b", b)]
    node = Node(Classify(["x", "y"]), tiers, Policy(retries=1, retry_wait_s=0.001))
    result = node.run("text")
    assert not result.ok and "boom" in result.reason and "bang" in result.reason
    assert len(b.calls) == 2  # retried once
    raising = Node(Classify(["x", "y"]), tiers, Policy(retries=0, on_failure="raise"))
    with pytest.raises(TaskFailed) as info:
        raising.run("text")
    assert info.value.result.input_text == "text"


def test_no_confidence_is_accepted_only_at_the_last_tier():
    from agentkit import Capabilities

    blind = Capabilities(scoring=False, token_probs=False)
    first = FakeEngine(replies=["x"], capabilities=blind)
    last = FakeEngine(replies=["y"], capabilities=blind)
    node = Node(Classify(["x", "y"]), [fake_tier("first", first), fake_tier("last", last)])
    result = node.run("text")
    assert result.tier == "last" and result.confidence is None and result.accepted == "no_confidence"
    assert "no confidence" in result.attempts[0].reason


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "empty"), ("   \n\t", "empty"), (b"\xff\xfe\x00", "binary"), (12, "must be text"), ("a\x00b", "NUL")],
)
def test_bad_input_becomes_a_recorded_failure(value, message):
    engine = FakeEngine(replies=["x"])
    node = Node(Classify(["x", "y"]), [fake_tier("t", engine)])
    result = node.run(value)
    assert not result.ok and message in result.reason
    assert result.attempts[0].outcome == "input_error"
    assert engine.calls == []


def test_traces_are_written_and_collected(tmp_path):
    path = tmp_path / "trace.jsonl"
    engine = FakeEngine(replies=["x"])
    node = Node(Classify(["x", "y"]), [fake_tier("t", engine)], trace=path)
    with collect() as run:
        node.run("one", input_id="1")
        node.run("", input_id="2")
    assert [r.input_id for r in run.results] == ["1", "2"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [rec["ok"] for rec in lines] == [True, False]
    first = lines[0]
    assert first["config_hash"] == node.config_hash()
    attempt = first["attempts"][0]
    for key in ("tier", "raw", "prompt_tokens", "latency_s", "cost_usd", "confidence", "outcome", "reason"):
        assert key in attempt
    summary = run.summary()
    assert summary["items"] == 2 and summary["failed"] == 1


def test_input_selection_from_state():
    from agentkit.node import select

    class Msg:
        content = "last message"

    assert select({"a": {"b": "deep"}}, "a.b") == "deep"
    assert select({"messages": [Msg(), Msg()]}, "messages.-1") == "last message"
    assert select({"x": 1}, lambda s: str(s["x"])) == "1"
    with pytest.raises(InputError):
        select({"a": 1}, "missing")


def test_config_hash_changes_with_settings():
    engine = FakeEngine(replies=["x"])
    a = Node(Classify(["x", "y"]), [fake_tier("t", engine)], Policy(threshold=0.8))
    b = Node(Classify(["x", "y"]), [fake_tier("t", engine)], Policy(threshold=0.9))
    assert a.config_hash() != b.config_hash()


def test_a_broken_validator_or_engine_bug_is_recorded_not_raised():
    def broken(value: Receipt, text: str) -> str | None:
        raise KeyError("oops")

    engine = FakeEngine(replies=['{"company": "A", "total": "1"}'])
    result = Node(Extract(Receipt, validators=[broken]), [fake_tier("t", engine)]).run("A 1")
    assert not result.ok and "validator 'broken' raised KeyError" in result.reason

    crashing = FakeEngine(replies=[ZeroDivisionError("bug")])
    result = Node(Classify(["x", "y"]), [fake_tier("t", crashing)]).run("text")
    assert not result.ok and "unexpected ZeroDivisionError: bug" in result.reason


def test_verbatim_fields_narrow_the_schema_to_values_in_the_text():
    task = Extract(Receipt, verbatim={"total": "amount"})
    schema = json.loads(task.constraint_for("Coffee 3.50\nTOTAL RM 12.50\nCASH 20.00").spec)
    assert schema["properties"]["total"]["enum"] == ["3.50", "12.50", "20.00"]
    assert "enum" not in schema["properties"]["company"]
    free = json.loads(task.constraint_for("no amounts here").spec)
    assert "enum" not in free["properties"]["total"]


def test_an_optional_verbatim_field_must_be_written_but_may_be_null():
    class Bill(pydantic.BaseModel):
        company: str
        number: str | None = None

    task = Extract(Bill, verbatim={"number": lambda text: ["A-17"] if "A-17" in text else []})
    schema = json.loads(task.constraint_for("Bill A-17").spec)
    assert schema["properties"]["number"] == {"anyOf": [{"type": "string", "enum": ["A-17"]}, {"type": "null"}]}
    assert "number" in schema["required"]  # not left out by imitating examples that lack it
    engine = FakeEngine(replies=['{"company": "Acme", "number": null}'])
    assert Node(task, [fake_tier("t", engine)]).run("Bill A-17").ok  # null is a valid pick


def test_a_copied_field_is_set_to_the_printed_words_it_nearly_matches():
    text = "HAXINCONE RESOURCES SDN BHD\n16A, JALAN ASTAKA U8/83,\nBUKIT JELUTONG\nTOTAL 12.50"
    reply = '{"company": "HAXINCONE RESOURCES SDN. BHD.", "total": "12.50"}'
    task = Extract(Receipt, copied=["company"])
    result = Node(task, [fake_tier("t", FakeEngine(replies=[reply]))]).run(text)
    assert result.value["company"] == "HAXINCONE RESOURCES SDN BHD"
    invented = '{"company": "ACME TRADING", "total": "12.50"}'
    assert Node(task, [fake_tier("t", FakeEngine(replies=[invented]))]).run(text).value["company"] == "ACME TRADING"
    with pytest.raises(ConfigError, match="copied fields not in the schema"):
        Extract(Receipt, copied=["address"])


def test_an_unstated_field_is_null_or_its_default_never_a_guess():
    """An optional verbatim field with no candidate in the text is written null (the constraint allows
    nothing else), is not counted in the confidence, and is recorded as unstated; with a default it takes
    the default. A model that writes a value anyway (its engine dropped the constraint) is caught."""

    class Bill(pydantic.BaseModel):
        company: str
        currency: str | None = None

    def markers(text: str) -> list[str]:
        return ["EUR"] if "€" in text else []

    task = Extract(Bill, verbatim={"currency": markers})
    schema = json.loads(task.constraint_for("Acme, total 12.50").spec)
    assert schema["properties"]["currency"] == {"type": "null"} and "currency" in schema["required"]

    class DoubtfulNull(FakeEngine):  # the forced null's tokens at a low probability: not doubt
        def generate(self, messages, constraint, *, max_tokens, prefix=0):
            gen = super().generate(messages, constraint, max_tokens=max_tokens, prefix=prefix)
            gen.token_probs = [0.1 if "null" in w else 0.9 for w in gen.text.split(" ")]
            return gen

    result = Node(task, [fake_tier("t", DoubtfulNull(replies=['{"company": "Acme", "currency": null}']))]).run("x")
    assert result.ok and result.value["currency"] is None and result.confidence == 0.9
    assert result.attempts[0].details["unstated"] == ["currency"]
    guessed = Node(task, [fake_tier("t", FakeEngine(replies=['{"company": "Acme", "currency": "USD"}']))]).run("x")
    assert not guessed.ok and "currency 'USD' is not printed in the document" in guessed.reason
    defaulted = Extract(Bill, verbatim={"currency": markers}, defaults={"currency": "MYR"})
    schema = json.loads(defaulted.constraint_for("Acme, total 12.50").spec)
    assert schema["properties"]["currency"] == {"type": "string", "enum": ["MYR"]}
    assert json.loads(defaulted.constraint_for("Acme € 12.50").spec)["properties"]["currency"]["anyOf"][0]["enum"] == [
        "EUR"
    ]
    with pytest.raises(ConfigError, match="not verbatim"):
        Extract(Bill, defaults={"company": "Acme"})


# ---- knn tier (no model: a real BM25 vote, nothing faked) ------------------------------


def test_knn_tier_votes_among_the_nearest_examples():
    examples = [
        {"input": "WINNER! claim your free prize now", "expected": "spam"},
        {"input": "free prize waiting, claim now by text", "expected": "spam"},
        {"input": "claim your prize: call now, free entry", "expected": "spam"},
        {"input": "see you at lunch tomorrow?", "expected": "ham"},
        {"input": "I'll call you after the meeting", "expected": "ham"},
    ]
    task = Classify(["ham", "spam"], examples=examples, vote_k=3)
    large = FakeEngine(replies=["ham"], confidence=0.95)
    node = Node(task, ["knn", fake_tier("large", large)], Policy(threshold=0.9))
    sure = node.run("claim your free prize now")
    assert sure.ok and sure.value == "spam" and sure.tier == "knn" and sure.confidence == 1.0
    assert sure.attempts[0].confidence_method == "knn-vote:3" and not large.calls
    split = node.run("call now about lunch")  # neighbours disagree: below threshold, escalates
    assert split.attempts[0].confidence < 0.9 and split.tier == "large"


def test_knn_tier_without_examples_is_a_recorded_config_error():
    node = Node(Classify(["a", "b"]), ["knn"])
    result = node.run("anything")
    assert not result.ok and "needs labelled examples" in result.reason


# ---- abstention (GroundedAnswer) ---------------------------------------------------------


@pytest.fixture
def tiny_corpus():
    from agentkit.corpus import Corpus

    corpus = Corpus()
    corpus.add_documents(
        [
            {"doc_id": "refunds", "text": "Refunds are paid within 5 working days to the original card."},
            {"doc_id": "hours", "text": "The support desk is open from 9:00 to 17:00, Monday to Friday."},
        ]
    )
    return corpus


def test_unsupported_answers_escalate_and_then_the_node_abstains(tiny_corpus):
    from agentkit.tasks.grounded import GroundedAnswer

    invent = FakeEngine(replies=["yes: 30 days"], confidence=0.99)  # not a span of any passage
    node = Node(GroundedAnswer(tiny_corpus, k=2), [fake_tier("small", invent), fake_tier("large", invent)])
    result = node.run("How long do refunds take?")
    assert result.ok and result.accepted == "abstained" and result.tier is None
    assert result.value == {"answerable": False, "answer": None, "citations": [], "retrieved": []}
    assert [a.outcome for a in result.attempts] == ["invalid", "invalid"]
    assert "not a span of the cited passage" in result.reason


def test_supported_answer_cites_the_passage_it_came_from(tiny_corpus):
    from agentkit.tasks.grounded import GroundedAnswer

    engine = FakeEngine(replies=["yes: within 5 working days"], confidence=0.97)
    result = Node(GroundedAnswer(tiny_corpus, k=2), [fake_tier("small", engine)]).run("How long do refunds take?")
    assert result.ok and result.accepted == "confident"
    assert result.value["answer"] == "within 5 working days"
    assert result.value["citations"] == ["refunds#0"] and result.value["retrieved"][0] == "refunds#0"


def test_joint_mode_citations_are_positions_mapped_to_retrieved_ids(tiny_corpus):
    from agentkit.engine import Capabilities
    from agentkit.tasks.grounded import GroundedAnswer

    api_like = FakeEngine(
        replies=['{"answerable": true, "citations": [1, 7], "answer": "9:00 to 17:00"}'],
        capabilities=Capabilities(token_probs=False, scoring=False),
    )
    node = Node(GroundedAnswer(tiny_corpus, k=2), [fake_tier("api", api_like)])
    result = node.run("When is the support desk open?")
    assert result.value["retrieved"][0] == "hours#0"
    assert result.ok and result.value["citations"] == ["hours#0"]  # position 7 was never retrieved
    assert result.confidence is None and result.accepted == "no_confidence"


def test_abstention_is_not_available_to_tasks_that_cannot_abstain():
    from agentkit.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot abstain"):
        Node(Classify(["a", "b"]), [fake_tier("s", FakeEngine())], Policy(when_unsure="abstain"))


def test_grounded_bad_questions_are_recorded_failures(tiny_corpus):
    from agentkit.tasks.grounded import GroundedAnswer

    engine = FakeEngine(replies=["no"])
    node = Node(GroundedAnswer(tiny_corpus), [fake_tier("small", engine)])
    empty, huge, binary = node.run("   "), node.run("why? " * 5000), node.run(b"\x00\x01")
    assert not empty.ok and "empty" in empty.reason
    assert not huge.ok and "limit is 2000" in huge.reason and huge.input_text.startswith("why?")
    assert not binary.ok and ("NUL" in binary.reason or "binary" in binary.reason)
    assert not engine.calls  # no tier was asked


def test_grounded_verify_takes_only_its_named_checks(tiny_corpus):
    from agentkit.tasks.grounded import GroundedAnswer

    for ok in (False, True, "answer", "passage"):
        assert GroundedAnswer(tiny_corpus, verify=ok).settings()["verify"] == ok
    with pytest.raises(ConfigError, match="verify must be"):
        GroundedAnswer(tiny_corpus, verify="span")  # type: ignore[arg-type]
    task = GroundedAnswer(tiny_corpus)
    assert task.variant(verify="passage").settings()["verify"] == "passage"  # a tier's own setting
    with pytest.raises(ConfigError, match="verify must be"):
        task.variant(verify="span")


def test_question_sharing_no_term_with_the_corpus_abstains_without_a_model_call(tiny_corpus):
    from agentkit.tasks.grounded import GroundedAnswer

    engine = FakeEngine(replies=["yes: 9:00"])
    result = Node(GroundedAnswer(tiny_corpus), [fake_tier("small", engine)]).run("Quelle heure est-il à Tokyo?")
    assert result.ok and result.value["answerable"] is False and result.confidence == 1.0
    assert not engine.calls


def test_field_spans_stop_at_output_cut_inside_a_key():
    from agentkit.tasks.extract import field_spans

    assert field_spans('{"company": "A B", "da') == {"company": (12, 17)}


def test_a_verbatim_pick_outside_the_candidates_is_a_problem():
    # the engine may drop the constraint (llama-cpp-python swallows processor errors): checked after parsing
    engine = FakeEngine(replies=['{"company": "A", "date": "01/02/2019", "address": "X", "total": "99.99"}'])
    task = Extract(Receipt, verbatim={"total": "amount"})
    answer = task.answer(engine, "A\nX\n01/02/2019\nTOTAL 12.50")
    assert any("total '99.99' is not one of its 1 candidates" in p for p in answer.problems)


def _grounded_tiers(small_conf: float) -> tuple[GroundedAnswer, list[Tier]]:
    corpus = Corpus()
    text = "To close your account, open Settings and choose Close account."
    corpus.add_documents([{"doc_id": "close", "text": text}])
    small = FakeEngine(replies=["no"], confidence=small_conf)  # the passage does not answer it, says the small tier
    large = FakeEngine(replies=["yes: open Settings and choose Close account."])
    return GroundedAnswer(corpus, k=1), [fake_tier("small", small), fake_tier("large", large)]


@pytest.mark.parametrize("escalate", [False, True])
def test_a_cheaper_tiers_abstention_escalates_only_when_the_policy_says_so(escalate):
    task, tiers = _grounded_tiers(small_conf=0.9)
    policy = Policy(threshold=0.5, when_unsure="abstain", escalate_abstentions=escalate)
    result = Node(task, tiers, policy).run("How do I close my account?")
    if escalate:
        assert result.tier == "large" and result.value["answerable"] and result.escalated
        assert result.attempts[0].outcome == "low_confidence" and "escalates abstentions" in result.attempts[0].reason
    else:  # a confident "not in these passages" is accepted from the cheapest tier
        assert result.tier == "small" and result.value["answerable"] is False and not result.escalated
    # eval derives the same outcome from the tiers' answers
    row = answer_all(Node(task, tiers, policy), ["How do I close my account?"])[0]
    out = cascade(row, policy, task.abstention(""), task.is_abstention)
    assert out.value["answerable"] == result.value["answerable"] and out.escalated == result.escalated


def test_an_abstained_result_keeps_the_passages_the_tier_retrieved():
    task, tiers = _grounded_tiers(small_conf=0.3)  # unsure "no"; the large tier answers but is made unsure too
    tiers[1].engine.confidence = 0.3
    result = Node(task, tiers, Policy(threshold=0.95, when_unsure="abstain")).run("How do I close my account?")
    assert result.accepted == "abstained" and result.value["answerable"] is False
    assert result.value["retrieved"] == ["close#0"]


def test_a_tier_can_write_the_labels_in_its_own_words():
    """A tuned tier trained on the label names answers in them while the stock tier writes them with
    spaces: the words are a per-tier task setting (FakeEngine: scripted replies, no model)."""
    labels = ["card_arrival", "top_up_failed"]
    spaced = {label: label.replace("_", " ") for label in labels}
    task = Classify(labels, verbalizer=spaced)
    stock = FakeEngine(replies=["top up failed"])
    tuned = FakeEngine(replies=["top_up_failed"])
    tuned_tier = Tier(spec="fake:tuned", name="tuned", engine=tuned, task={"verbalizer": {x: x for x in labels}})
    for tier, engine, word in (
        (fake_tier("stock", stock), stock, "top up failed"),
        (tuned_tier, tuned, "top_up_failed"),
    ):
        result = Node(task, [tier], Policy(threshold=0.5)).run("my top-up did not go through")
        assert result.ok and result.value == "top_up_failed", result.reason
        assert result.attempts[0].raw == word
        assert f"- {word}" in engine.calls[-1][0]["content"]  # and its prompt lists the labels in its words
    assert (
        task.verbalizer == spaced
        and task.variant(verbalizer={x: x for x in labels}).verbalizer["card_arrival"] == "card_arrival"
    )
    with pytest.raises(ConfigError):
        task.variant(verbalizer={"card_arrival": "same", "top_up_failed": "same"})


class _ChoiceRecordingEngine(FakeEngine):
    """A fake engine that records whether it was asked to score as a choice (no model)."""

    def score(self, messages, continuations, *, prefix=0, margin=None, choice=False):  # type: ignore[no-untyped-def]
        self.choice_asked = choice
        return super().score(messages, continuations, prefix=prefix, margin=margin)


def test_a_tier_can_score_labels_as_a_choice():
    """``scoring="choice"`` (a per-tier setting, as a tuned tier is bound) reaches the engine and is named in the
    answer's method and the config hash; the default asks engines nothing new; a bad value is a ConfigError."""
    task = Classify(["ham", "spam"])
    stock, tuned = _ChoiceRecordingEngine(replies=["ham"]), _ChoiceRecordingEngine(replies=["spam"])
    tuned_tier = Tier(spec="fake:tuned", name="tuned", engine=tuned, task={"scoring": "choice"})
    stock_result = Node(task, [fake_tier("stock", stock)], Policy(threshold=0.5)).run("lunch at 1?")
    tuned_result = Node(task, [tuned_tier], Policy(threshold=0.5)).run("WIN a prize now")
    assert stock.choice_asked is False and tuned.choice_asked is True
    assert tuned_result.value == "spam" and tuned_result.attempts[0].confidence_method.endswith("+choice")
    assert not stock_result.attempts[0].confidence_method.endswith("+choice")
    assert task.config_hash() != task.variant(scoring="choice").config_hash()
    with pytest.raises(ConfigError):
        Classify(["ham", "spam"], scoring="greedy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        task.variant(scoring="greedy")


def test_llamacpp_extra_weight_buffers_follow_the_environment(monkeypatch):
    """AMX CPUs load without llama.cpp's extra buffers (they segfault there); the variable decides either way."""
    from agentkit.backends.llamacpp import _avoid_extra_buffers

    monkeypatch.setenv("AGENTKIT_LLAMA_EXTRA_BUFFERS", "0")
    assert _avoid_extra_buffers()
    monkeypatch.setenv("AGENTKIT_LLAMA_EXTRA_BUFFERS", "1")
    assert not _avoid_extra_buffers()
    monkeypatch.setenv("AGENTKIT_LLAMA_EXTRA_BUFFERS", "")  # set but empty: as if unset, the CPU decides
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        amx = any(line.startswith("flags") and " amx_int8" in line for line in f)
    assert _avoid_extra_buffers() == amx


def test_a_variant_is_built_anew_so_its_joint_citations_follow_its_k():
    """A tier's own ``k`` builds the task again: the joint reply's citation choice covers 1..k of the
    variant, not of the task it came from (it once kept the original's)."""
    from agentkit.engine import Capabilities

    corpus = Corpus()
    corpus.add_documents(
        [{"doc_id": f"d{i}", "text": f"Account help {i}: close the account in Settings."} for i in range(6)]
    )
    task = GroundedAnswer(corpus, k=2, mode="joint")
    wide = task.variant(k=5)
    assert wide is not task and (task.k, wide.k) == (2, 5) and task.variant(k=5) is wide

    class Recording(FakeEngine):
        def generate(self, messages, constraint, *, max_tokens, prefix=0):
            self.constraints.append(constraint)
            return super().generate(messages, constraint, max_tokens=max_tokens, prefix=prefix)

    engine = Recording(replies=['{"answerable": true, "citations": [5], "answer": "close the account in Settings"}'],
                       capabilities=Capabilities(token_probs=False, scoring=False))  # fmt: skip
    engine.constraints = []
    answer = wide.answer(engine, "How do I close the account?")
    schema = json.loads(engine.constraints[-1].spec)
    assert schema["properties"]["citations"]["items"]["enum"] == [1, 2, 3, 4, 5]
    assert not answer.problems and answer.value["citations"] == [answer.value["retrieved"][4]]


def test_an_inputs_deadline_stops_retries_and_the_tiers_after_it():
    """``Policy(deadline_s=...)``: a tier that keeps failing transiently is not retried past the input's
    deadline, and the tiers above it are not asked once it has passed — the input still ends as a record."""
    down = FakeEngine(replies=[EngineError("fake: server busy", retryable=True)])  # fails every time
    large = FakeEngine(replies=["b"])
    tiers = [Tier(spec="down", name="down", engine=down), Tier(spec="large", name="large", engine=large)]
    policy = Policy(retries=1000, retry_wait_s=0.02, deadline_s=0.3)
    result = Node(Classify(["a", "b"]), tiers, policy).run("some text")
    assert not result.ok and 1 < len(down.calls) < 1000 and not large.calls
    assert "deadline of 0.3 s passed" in result.attempts[1].reason


def test_a_servers_retry_after_is_waited_for():
    """An engine error that carries the server's ``Retry-After`` is retried no sooner than that."""
    import time

    busy = EngineError("fake: 429 too many requests", retryable=True)
    busy.retry_after_s = 0.25  # what a server's Retry-After header says
    engine = FakeEngine(replies=[busy, "a"])
    started = time.perf_counter()
    result = Node(Classify(["a", "b"]), [Tier(spec="x", name="x", engine=engine)], Policy(retry_wait_s=0.001)).run("t")
    assert result.ok and len(engine.calls) == 2 and time.perf_counter() - started >= 0.25


@pytest.mark.parametrize("value", ["caf\udce9", "\u200b\u200b", "\x01\x02"])
def test_text_that_is_not_text_ends_as_a_failure_with_its_reason(value, tmp_path):
    """A lone surrogate is refused before any tier (and the trace is still written); an input of only invisible
    or control characters cleanses to nothing, which is a failure, not an empty success."""
    from agentkit import Cleanse

    result = Node(Cleanse(), ["rules"], trace=tmp_path / "t.jsonl").run(value)
    assert not result.ok and result.reason and (tmp_path / "t.jsonl").read_text().count("\n") == 1


def test_an_example_pool_with_no_word_to_index_is_a_config_error():
    with pytest.raises(ConfigError, match="no word to index"):
        Classify(["a", "b"], examples=[{"input": "!!!", "expected": "a"}, {"input": "the", "expected": "b"}])


def test_calibrated_answers_stay_calibrated_under_threads():
    """The content-free prior is computed without flipping a shared flag: answers from four threads at once are
    all calibrated (they once came back uncalibrated while another thread computed the prior)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    class Slow(FakeEngine):  # a fake: scoring takes a while, as a model's does, so the threads overlap
        def score(self, *args, **kwargs):
            time.sleep(0.01)
            return super().score(*args, **kwargs)

    engines = [Slow(replies=["a"], confidence=0.7) for _ in range(8)]
    task = Classify(["a", "b"], calibrate=True)
    tiers = [Tier(spec=f"fake{i}", name=f"fake{i}", engine=e) for i, e in enumerate(engines)]
    with ThreadPoolExecutor(4) as pool:  # each engine's prior is computed on first use, while others answer
        results = list(pool.map(lambda t: Node(task, [t]).run("some text"), tiers * 4))
    assert all(r.ok and r.attempts[0].confidence_method.endswith("+calibrated") for r in results)


def test_eval_keeps_no_transient_error_in_its_answers_cache(tmp_path):
    """A tier that failed transiently (after the node's retries) is asked again on the next evaluation; an answer
    is kept. An unexpected exception in a task is a recorded invalid answer, not a crash of the evaluation."""
    cache = tmp_path / "answers.jsonl"
    flaky = FakeEngine(replies=[EngineError("fake: connection reset", retryable=True), "a"])
    node = Node(Classify(["a", "b"]), [Tier(spec="flaky", name="flaky", engine=flaky)], Policy(retries=0))
    (first,) = [row for _, row in iter_answers(node, ["some text"], cache=cache)]
    assert not first[0].valid and first[0].transient and (not cache.exists() or cache.read_text() == "")
    (second,) = [row for _, row in iter_answers(node, ["some text"], cache=cache)]
    assert second[0].valid and second[0].value == "a" and cache.read_text().count("\n") == 1

    broken = FakeEngine(replies=[ZeroDivisionError("fake: a bug in a plug-in engine")])
    node = Node(Classify(["a", "b"]), [Tier(spec="broken", name="broken", engine=broken)])
    (row,) = [row for _, row in iter_answers(node, ["some text"])]
    assert not row[0].valid and "ZeroDivisionError" in row[0].error
