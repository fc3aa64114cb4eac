"""Best-first label scoring (``TokenEngine.score(..., margin=...)``) against decoding every label, on a toy
model (a fake, named as such): a model whose next-token distribution is a seeded random function of the
tokens so far, so that hundreds of label sets and distributions, flat and sharp, can be checked exactly.
The same properties on the real 0.5B are in test_real_models."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from agentkit.backends.tokens import EXACT_WITHIN, TokenEngine
from agentkit.engine import Capabilities

ALPHABET = "abcd|"  # one token per character; '|' ends a reply


class ToyModelEngine(TokenEngine):
    """A fake model: logits after a token sequence are drawn from a generator seeded by that sequence."""

    def __init__(self, sharpness: float, intended: str = "") -> None:
        super().__init__()
        self.name = "toy"
        self.capabilities = Capabilities(constrained=False, token_probs=True, scoring=True, context=4096)
        self._n_ctx = 4096
        self._n_vocab = len(ALPHABET) + 32
        self.sharpness = sharpness
        self.seed = 0
        self.calls = 0
        """Model calls (decode batches) so far."""
        self.intended = intended
        """A reply the model leans towards (by 8 nats a token), as a confident classifier does."""

    def _load(self) -> None:
        pass

    def _tokenize(self, text: str, *, first: bool) -> list[int]:
        return [ALPHABET.index(c) if c in ALPHABET else len(ALPHABET) + ord(c) % 32 for c in text]

    def _chat(self, messages, *, add_generation_prompt):  # type: ignore[no-untyped-def]
        text = "".join(f"{m['role']}: {m['content']}|" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")

    def _logits(self, tokens: list[int]) -> np.ndarray:
        key = zlib.crc32(bytes([self.seed % 256, *tokens]))
        logits = np.random.default_rng(key).normal(size=self._n_vocab).astype(np.float32) * self.sharpness
        start = self._tokenize("assistant: ", first=False)
        ends = [i + len(start) for i in range(len(tokens)) if tokens[i : i + len(start)] == start]
        want = self._tokenize(self.intended + "|", first=False)
        reply = tokens[ends[-1] :] if ends else None
        if self.intended and reply is not None and reply == want[: len(reply)] and len(reply) < len(want):
            logits[want[len(reply)]] += 8.0
        return logits

    def _extend_model(self, new: list[int], pos: int, rows: int) -> np.ndarray:
        self.calls += 1
        seq = self._tokens[:pos]
        out = []
        for t in new:
            seq = [*seq, t]
            out.append(self._logits(seq))
        return np.stack(out[-rows:])

    def _cut_cache(self, n: int) -> None:
        pass

    def _cache_state(self):  # type: ignore[no-untyped-def]
        return None

    def _set_cache_state(self, state) -> bool:  # type: ignore[no-untyped-def]
        return True


def _labels(rng: np.random.Generator, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(list("abcd"), size=int(rng.integers(1, 5)))))
    return sorted(words)


def _share(logps: list[float], i: int) -> float:
    top = max(logps)
    return math.exp(logps[i] - top) / sum(math.exp(v - top) for v in logps)


@pytest.mark.parametrize("sharpness", [1.0, 4.0])
@pytest.mark.parametrize("margin", [2.0, 6.0])
def test_best_first_finds_the_best_label_exactly_and_never_overstates_its_share(sharpness, margin):
    engine = ToyModelEngine(sharpness)
    rng = np.random.default_rng(7)
    decoded = {"exact": 0, "best_first": 0}
    for case in range(150):
        engine.seed = case
        labels = _labels(rng, int(rng.integers(2, 30)))
        msgs = [{"role": "user", "content": f"question {case}"}]
        exact = engine.score(msgs, labels)
        searched = engine.score(msgs, labels, margin=margin)
        best = int(np.argmax(exact.logprobs))
        assert int(np.argmax(searched.logprobs)) == best
        assert searched.logprobs[best] == pytest.approx(exact.logprobs[best], abs=1e-4)
        for e, s in zip(exact.logprobs, searched.logprobs, strict=True):
            assert s >= e - 1e-4  # exact, or an upper bound
            if margin >= EXACT_WITHIN and e >= exact.logprobs[best] - EXACT_WITHIN:
                assert s == pytest.approx(e, abs=1e-4)  # a close second is decoded: the share depends on it
        assert _share(searched.logprobs, best) <= _share(exact.logprobs, best) + 1e-6
        decoded["exact"] += exact.usage.completion_tokens
        decoded["best_first"] += searched.usage.completion_tokens
    assert decoded["best_first"] < decoded["exact"], decoded


def test_a_sharp_model_decodes_little_more_than_its_answer():
    """A confident model among many labels: the search decodes a few tokens, not every label."""
    engine = ToyModelEngine(sharpness=1.0)
    rng = np.random.default_rng(3)
    decoded = {"exact": 0, "best_first": 0, "answer": 0}
    for case in range(40):
        engine.seed = 1000 + case
        labels = _labels(rng, 40)
        engine.intended = labels[case % len(labels)]
        msgs = [{"role": "user", "content": "q"}]
        scored = engine.score(msgs, labels, margin=6.0)
        decoded["best_first"] += scored.usage.completion_tokens
        decoded["exact"] += engine.score(msgs, labels).usage.completion_tokens
        assert labels[int(np.argmax(scored.logprobs))] == engine.intended
        decoded["answer"] += len(engine.intended)
    assert decoded["best_first"] < 3 * decoded["answer"], decoded
    assert decoded["best_first"] < decoded["exact"] / 4, decoded


def test_scores_are_the_same_with_and_without_a_cached_neighbour():
    """A prefix decoded for one call is not reused by the next call's search as if it were its own."""
    engine = ToyModelEngine(sharpness=2.0)
    labels = ["ab", "abc", "b", "bcd", "c"]
    first = engine.score([{"role": "user", "content": "x"}], labels, margin=3.0)
    engine.score([{"role": "user", "content": "y"}], labels)
    again = engine.score([{"role": "user", "content": "x"}], labels, margin=3.0)
    assert again.logprobs == pytest.approx(first.logprobs)


@pytest.mark.parametrize("margin", [None, 6.0])
def test_the_first_continuation_is_decoded_with_the_prompt(margin):
    """The caller's guess (the first continuation) comes in the prompt's call: a right guess costs no call
    of its own, and whichever label comes first, the scores are the same."""
    engine = ToyModelEngine(sharpness=1.0, intended="bca")
    labels = ["bca", "ab", "abc", "d"]
    msgs = [{"role": "user", "content": "q"}]
    engine.calls = 0
    right = engine.score(msgs, labels, margin=margin)
    right_calls, engine.calls = engine.calls, 0
    wrong = engine.score([{"role": "user", "content": "q "}], labels[1:] + labels[:1], margin=margin)
    assert labels[int(np.argmax(right.logprobs))] == "bca"
    if margin is not None:
        assert right_calls == 1  # the prompt and the whole answer in one batch, nothing else decoded
        assert engine.calls > right_calls
    fresh = ToyModelEngine(sharpness=1.0, intended="bca")
    reordered = fresh.score(msgs, labels[::-1], margin=margin)
    assert reordered.logprobs[::-1] == pytest.approx(right.logprobs, abs=1e-5)
    assert len(wrong.logprobs) == len(labels)


def _choice_by_hand(engine: ToyModelEngine, msgs, labels: list[str]) -> list[float]:
    """Each label's probability of being chosen by constrained greedy sampling, from the raw logits:
    at every prefix where the labels part, the next token's softmax restricted to the parting tokens."""
    prompt = engine._tokenize(engine._chat(msgs, add_generation_prompt=True), first=True)
    encoded = [engine._tokenize(w + "|", first=False) for w in labels]
    out = []
    for ct in encoded:
        total = 0.0
        for j in range(len(ct)):
            options = sorted({o[j] for o in encoded if o[:j] == ct[:j] and len(o) > j})
            if len(options) > 1:
                row = engine._logits(prompt + ct[:j])
                lp = row - row.max() - np.log(np.exp(row - row.max()).sum())
                total += float(lp[ct[j]] - np.log(np.exp(lp[options]).sum()))
        out.append(total)
    return out


@pytest.mark.parametrize("margin", [None, 2.0, 6.0])
def test_choice_scoring_is_the_constrained_choice_and_decodes_only_where_labels_part(margin):
    engine = ToyModelEngine(sharpness=2.0)
    rng = np.random.default_rng(11)
    for case in range(60):
        engine.seed = case
        labels = _labels(rng, int(rng.integers(2, 20)))
        msgs = [{"role": "user", "content": f"question {case}"}]
        want = _choice_by_hand(engine, msgs, labels)
        got = engine.score(msgs, labels, margin=margin, choice=True)
        best = int(np.argmax(want))
        assert int(np.argmax(got.logprobs)) == best
        assert got.logprobs[best] == pytest.approx(want[best], abs=1e-4)
        for w, g in zip(want, got.logprobs, strict=True):
            assert g >= w - 1e-4  # exact, or an upper bound
        if margin is None:  # every label scored: exact, a distribution, and no token past a label's last fork
            assert got.logprobs == pytest.approx(want, abs=1e-4)
            assert sum(math.exp(v) for v in got.logprobs) == pytest.approx(1.0, abs=1e-4)
            assert got.usage.completion_tokens <= engine.score(msgs, labels).usage.completion_tokens


def test_choice_scoring_decodes_nothing_after_the_labels_part():
    """Labels that part at their first token: the prompt's call is the only one, with no label token in it."""
    engine = ToyModelEngine(sharpness=1.0, intended="bca")
    labels = ["bca", "abcd", "dab"]
    engine.calls = 0
    scored = engine.score([{"role": "user", "content": "q"}], labels, margin=6.0, choice=True)
    assert labels[int(np.argmax(scored.logprobs))] == "bca"
    assert engine.calls == 1 and scored.usage.completion_tokens == 0


def test_choice_logprobs_from_per_token_logprobs_matches_the_engines():
    """The helper the server engines use (per-token log-probabilities in, choice scores out) agrees with
    the in-process search on the same toy model."""
    from agentkit.engine import choice_logprobs

    engine = ToyModelEngine(sharpness=2.0)
    msgs = [{"role": "user", "content": "z"}]
    labels = ["ab", "abc", "b", "bcd", "c", "cd"]
    prompt = engine._tokenize(engine._chat(msgs, add_generation_prompt=True), first=True)
    encoded = [engine._tokenize(w + "|", first=False) for w in labels]
    per_token = []
    for ct in encoded:
        rows = []
        for j in range(len(ct)):
            row = engine._logits(prompt + ct[:j])
            rows.append(float(row[ct[j]] - row.max() - np.log(np.exp(row - row.max()).sum())))
        per_token.append(rows)
    assert choice_logprobs(encoded, per_token) == pytest.approx(
        engine.score(msgs, labels, choice=True).logprobs, abs=1e-4
    )
    assert choice_logprobs(encoded, per_token) == pytest.approx(_choice_by_hand(engine, msgs, labels), abs=1e-4)
