"""The span constraint's token mask (pure logic over token ids) and, with the real model, its output."""

from __future__ import annotations

import numpy as np
import pytest

from agentkit.engine import Constraint

SOURCE = [10, 11, 12, 11, 13]  # e.g. " the", " red", " fox", " red", " hat"
END = [0]


def processor():
    from agentkit.backends.llamacpp import SpanProcessor

    return SpanProcessor(SOURCE, lead=[7, 8], stops=[[5]], end=END)


def test_head_allows_the_stop_or_the_lead_only():
    p = processor()
    assert p.allowed([]) == [5, 7]
    assert p.allowed([5]) == END  # "no" then end of reply
    assert p.allowed([7]) == [8]
    assert p.allowed([9]) == []


def test_after_the_lead_only_contiguous_runs_of_the_source():
    p = processor()
    assert p.allowed([7, 8]) == [10, 11, 12, 13]  # any source token starts a span
    assert p.allowed([7, 8, 11]) == [0, 12, 13]  # " red" is followed by " fox" or " hat", or ends
    assert p.allowed([7, 8, 11, 12]) == [0, 11]
    assert p.allowed([7, 8, 13]) == END  # the last token can only end
    assert p.allowed([7, 8, 12, 12]) == []


def test_mask_keeps_allowed_logits_and_reads_state_from_ids():
    p = processor()
    p.reset()
    logits = np.arange(16, dtype=np.float32)
    first = p(np.array([99, 98]), logits)  # the prompt: nothing generated yet
    assert np.isfinite(first).nonzero()[0].tolist() == [5, 7]
    nxt = p(np.array([99, 98, 7, 8, 11]), logits)
    assert np.isfinite(nxt).nonzero()[0].tolist() == [0, 12, 13]


def test_span_regex_fallback_for_engines_without_spans():
    c = Constraint.span("The red fox.", lead="yes:", stops=["no"])
    assert c.kind == "span" and c.span_regex().spec == r"(no|yes:[^\n]{1,300})"


@pytest.mark.slow
def test_real_model_output_is_a_span_of_the_source(small):
    source = (
        "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy,"
        " a region in France."
    )
    msgs = [
        {"role": "system", "content": f"Answer from this passage with 'yes:' and an exact span, or 'no'.\n\n{source}"},
        {"role": "user", "content": "In what country is Normandy?"},
    ]
    gen = small.generate(msgs, Constraint.span(source, lead="yes:", stops=["no"]), max_tokens=16)
    assert gen.finish_reason == "stop"
    assert gen.text == "no" or (gen.text.startswith("yes:") and gen.text[4:].strip() in source)
    assert all(0 < p <= 1 for p in gen.token_probs)


def test_spans_start_and_end_at_word_boundaries():
    from agentkit.backends.llamacpp import SpanProcessor, word_boundaries

    pieces = [" in", " the", " 10", "th", " century"]
    boundaries = word_boundaries(pieces)
    assert boundaries == [True, True, True, False, True, True]
    p = SpanProcessor([1, 2, 3, 4, 5], lead=[], stops=[], end=END, boundaries=boundaries)
    assert 4 not in p.allowed([])  # "th" cannot start a span
    assert p.allowed([3]) == [4]  # "10" must go on to "10th": no end after a piece of a word
    assert p.allowed([3, 4]) == [0, 5]
