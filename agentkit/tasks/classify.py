"""Classify: pick one label, with a normalized distribution over labels as confidence."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from agentkit.engine import Constraint, Engine, Message, Usage
from agentkit.errors import ConfigError
from agentkit.retrieval import ExampleIndex, Retrieval
from agentkit.task import Answer, Task

__all__ = ["Classify"]


class Classify(Task):
    """Choose one of ``labels`` for a text.

    The answer is read from the model's probability of each label's *full* token sequence
    (every label scored, then normalized), not from one greedy token. With ``examples``,
    the ``k`` most similar labelled examples (BM25) are put in the prompt as chat turns;
    with many labels and examples, only labels seen among the retrieved examples are scored
    (``shortlist``), which is what makes 77-way classification fast.

    On a tier with no model (``knn``) the answer is the majority label of the ``vote_k``
    nearest examples and the confidence its share of the vote: free, and on data with
    near-duplicates (SMS spam) or many similar phrasings (Banking77) right most of the time
    it is unanimous, so it makes a good first rung before the models.
    """

    kind = "classify"
    knobs = frozenset(
        {"k", "shortlist", "example_chars", "vote_k", "list_labels", "static_per_label", "verbalizer", "score_margin",
         "scoring", "calibrate"}
    )  # fmt: skip

    def __init__(
        self,
        labels: Sequence[str] | Mapping[str, str],
        *,
        instructions: str = "Classify the text.",
        examples: Sequence[Mapping[str, Any]] | ExampleIndex | None = None,
        k: int = 8,
        static_per_label: int = 0,
        shortlist: int | None = 12,
        example_chars: int = 300,
        verbalizer: Mapping[str, str] | None = None,
        calibrate: bool = False,
        vote_k: int = 4,
        retrieval: Retrieval = "bm25",
        seed: int = 0,
        abstain_label: str | None = None,
        list_labels: bool = True,
        score_margin: float | None = 10.0,
        scoring: Literal["sequence", "choice"] = "sequence",
    ) -> None:
        """
        Args:
            labels: the labels, or a mapping label → description.
            instructions: what the classification is about (one or two sentences).
            examples: labelled pool, records with ``input`` and ``expected`` (or an
                :class:`~agentkit.retrieval.ExampleIndex` built from them, shared as it is).
            k: examples retrieved per input and put in the prompt (re-read on every call).
            static_per_label: examples per label placed as chat turns in the fixed prefix, which
                stays in the KV cache (read once per process, not per call); chosen by a seeded
                shuffle of the pool.
            shortlist: when there are more labels than this and examples are given, score only
                the labels of retrieved examples (at least 2 distinct). ``None``: always all.
            verbalizer: label → the word the model is asked to write (e.g. ``{"ask": "yes"}``).
            calibrate: divide each label's probability by its probability for a content-free
                input (contextual calibration, Zhao et al. 2021).
            vote_k: neighbours that vote on a ``knn`` tier.
            retrieval: how examples are found: ``bm25``, ``dense`` (MiniLM, ``agentkit[dense]``)
                or ``hybrid`` (both, rank-fused).
            abstain_label: the value of an abstention (``Policy(when_unsure="abstain")``), e.g.
                ``"oos"``: out of scope when no tier is confident. It is not a label the model scores.
            list_labels: list the labels in the system prompt. A tuned model has learnt them: without
                the list (``Tier(..., task={"list_labels": False})``) its prompt is a few tokens, not
                hundreds, which is what makes 77-way tuning and answering fast.
            score_margin: labels are scored best first over their shared first tokens: the best
                label exactly, and the others decoded only while their first tokens keep them within
                this many nats of it (else their probability is bounded by their first tokens'; the
                confidence reported is never higher than the exact one). A confident model decodes
                little more than its answer, however many labels. ``None``: decode every label.
            scoring: a label's probability is its whole token sequence's (``sequence``), or that of
                choosing it among the scored labels token by token (``choice``: each token where the
                labels part renormalized over the tokens they part into, as constrained decoding
                would choose; the tokens after a label's last parting point are never decoded). A
                model tuned on the labels puts nearly all its probability on them, so both agree
                for it, and ``choice`` decodes a token or two where ``sequence`` decodes the whole
                label (:func:`~agentkit.engine.choice_logprobs`).
        """
        if isinstance(labels, Mapping):
            self.descriptions = {str(k_): str(v) for k_, v in labels.items()}
        else:
            self.descriptions = {str(label): "" for label in labels}
        self.labels = list(self.descriptions)
        self.abstain_label = abstain_label
        if abstain_label is not None and abstain_label in self.descriptions:
            raise ConfigError(f"abstain_label {abstain_label!r} is also a label", hint="leave it out of the labels")
        if len(self.labels) < 2:
            raise ConfigError("Classify needs at least two labels")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels must be unique")
        self.instructions = instructions
        self.list_labels = list_labels
        self.score_margin = score_margin
        self.k = k
        self.shortlist = shortlist
        self.example_chars = example_chars
        self.static_per_label = static_per_label
        self.verbalizer = dict(verbalizer or {})
        self.scoring = scoring
        self._set_words()
        self.calibrate = calibrate
        self.vote_k = vote_k
        self._prior: dict[int, dict[str, float]] = {}
        self.index: ExampleIndex | None = None
        self.static: list[dict[str, Any]] = []
        if isinstance(examples, ExampleIndex):
            self.index = examples
        elif examples:
            examples = [e for e in examples if abstain_label is None or str(e["expected"]) != abstain_label]
            self.index = ExampleIndex(examples, retrieval=retrieval)
        if self.index is not None:
            unknown = {str(e["expected"]) for e in self.index.examples} - set(self.labels)
            if unknown:
                raise ConfigError(f"examples use labels not in the label set: {sorted(unknown)[:5]}")
            self.static = _static_examples(self.index.examples, static_per_label, seed)
        self._seed = seed
        self._fixed: list[Message] | None = None

    def abstention(self, reason: str) -> Any:
        if self.abstain_label is None:
            return super().abstention(reason)
        return self.abstain_label

    def _set_words(self) -> None:
        """Check how labels are scored, complete ``verbalizer`` (a label without a word is written as
        itself) and derive from it."""
        if self.scoring not in ("sequence", "choice"):
            raise ConfigError(f"scoring must be 'sequence' or 'choice', not {self.scoring!r}")
        self.verbalizer = {label: str(self.verbalizer.get(label, label)) for label in self.labels}
        if len(set(self.verbalizer.values())) != len(self.labels):
            raise ConfigError("verbalizer must map labels to distinct words")
        self._label_of = {word: label for label, word in self.verbalizer.items()}
        self._constraint = Constraint.choice(list(self.verbalizer.values()))

    def _shared(self) -> dict[str, Any]:
        return {"examples": self.index} if self.index is not None else {}

    def system_prompt(self) -> str:
        if not self.list_labels:
            return self.instructions.strip()
        lines = [self.instructions.strip(), "", "Answer with exactly one of these labels:"]
        for label, desc in self.descriptions.items():
            word = self.verbalizer[label]
            lines.append(f"- {word}: {desc}" if desc else f"- {word}")
        return "\n".join(lines)

    def _cut(self, text: Any) -> str:
        flat = " ".join(str(text).split())
        return flat if len(flat) <= self.example_chars else flat[: self.example_chars] + "…"

    def messages(self, text: str) -> tuple[list[Message], list[dict[str, Any]]]:
        """The prompt for ``text`` and the examples retrieved for it (more than ``k`` when a
        shortlist of labels is drawn from them)."""
        want = max(self.k, 8 if self.shortlist is not None else 0)
        found = self.index.search(text, want) if self.index is not None and want > 0 else []
        return self.prompt(text, found), found

    def prompt(self, text: str, found: list[dict[str, Any]] | None = None, *, unseen: bool = False) -> list[Message]:
        """The messages sent for ``text``: the fixed part, the ``k`` most similar examples of
        ``found`` (retrieved here if not given; ``unseen``: not an example with ``text`` itself, as
        for a training prompt built from the pool), the text."""
        if found is None:
            want = self.k if self.index is not None else 0
            found = self.index.search(text, want, unseen=unseen) if want > 0 else []  # type: ignore[union-attr]
        msgs = self.fixed_messages() + self._turns(reversed(found[: self.k]))  # most similar closest to the text
        msgs.append({"role": "user", "content": text})
        return msgs

    def fixed_messages(self) -> list[Message]:
        """The part of the prompt that is the same for every input (kept in the KV cache)."""
        if self._fixed is None:
            self._fixed = [{"role": "system", "content": self.system_prompt()}, *self._turns(self.static)]
        return list(self._fixed)

    def _turns(self, examples: Any) -> list[Message]:
        msgs: list[Message] = []
        for ex in examples:
            msgs.append({"role": "user", "content": self._cut(ex["input"])})
            msgs.append({"role": "assistant", "content": self.verbalizer[str(ex["expected"])]})
        return msgs

    def candidates(self, shots: list[dict[str, Any]]) -> list[str]:
        """The labels scored for an input whose nearest labelled examples are ``shots``, the nearest
        example's label first (the engine decodes its guess at the likeliest label with the prompt)."""
        if self.shortlist is None or len(self.labels) <= self.shortlist or not shots:
            nearest = str(shots[0]["expected"]) if shots else None
            return sorted(self.labels, key=lambda c: c != nearest)
        seen: list[str] = []
        for ex in shots:
            label = str(ex["expected"])
            if label not in seen:
                seen.append(label)
        if len(seen) < 2 and self.index is not None:
            for ex in self.index.search(str(shots[0]["input"]), 4 * len(shots)):
                label = str(ex["expected"])
                if label not in seen:
                    seen.append(label)
                if len(seen) >= 2:
                    break
        return seen

    def _distribution(
        self, engine: Engine, msgs: list[Message], labels: list[str], *, calibrate: bool
    ) -> tuple[dict[str, float], Any]:
        margin = None if calibrate else self.score_margin  # calibration reorders: bounds would not hold
        words = [self.verbalizer[c] for c in labels]
        extra = {"choice": True} if self.scoring == "choice" else {}  # engines written before it need not know it
        scored = engine.score(msgs, words, prefix=len(self.fixed_messages()), margin=margin, **extra)
        logps = dict(zip(labels, scored.logprobs, strict=True))
        if calibrate:
            prior = self.prior(engine)
            logps = {c: lp - math.log(max(prior[c], 1e-12)) for c, lp in logps.items()}
        top = max(logps.values())
        weights = {c: math.exp(lp - top) for c, lp in logps.items()}
        total = sum(weights.values())
        return {c: w / total for c, w in weights.items()}, scored.usage

    def prior(self, engine: Engine) -> dict[str, float]:
        """P(label) for a content-free input under the fixed prompt (computed once per engine)."""
        key = id(engine)
        if key not in self._prior:
            msgs = [*self.fixed_messages(), {"role": "user", "content": "N/A"}]
            self._prior[key] = self._distribution(engine, msgs, self.labels, calibrate=False)[0]
        return self._prior[key]

    def vote(self, text: str) -> Answer:
        """The majority label of the ``vote_k`` nearest examples; confidence = its vote share."""
        t0 = time.perf_counter()
        if self.index is None:
            raise ConfigError("a knn tier needs labelled examples", hint="Classify(..., examples=[...])")
        found = self.index.search(text, self.vote_k)
        counts = Counter(str(e["expected"]) for e in found)
        if not counts:
            return Answer(None, "", None, "knn-vote", Usage(seconds=time.perf_counter() - t0), ["no neighbours"])
        ranked = counts.most_common()
        best, n = ranked[0]
        return Answer(
            value=best,
            raw=best,
            confidence=n / len(found),
            method=f"knn-vote:{len(found)}",
            usage=Usage(seconds=time.perf_counter() - t0),
            details={"votes": dict(ranked)},
        )

    def answer(self, engine: Engine, text: str) -> Answer:
        caps = engine.capabilities
        if not caps.model:  # the knn tier: a vote of the nearest labelled examples
            return self.vote(text)
        msgs, shots = self.messages(text)
        prefix = len(self.fixed_messages())
        if caps.scoring:
            cands = self.candidates(shots)
            dist, usage = self._distribution(engine, msgs, cands, calibrate=self.calibrate)
            best = max(dist, key=dist.__getitem__)
            method = "label-scoring" if len(cands) == len(self.labels) else f"label-scoring:shortlist{len(cands)}"
            if self.scoring == "choice":
                method += "+choice"
            if self.calibrate:
                method += "+calibrated"
            return Answer(
                value=best,
                raw=self.verbalizer[best],
                confidence=dist[best],
                method=method,
                usage=usage,
                details={"distribution": dict(sorted(dist.items(), key=lambda kv: -kv[1])[:5])},
            )
        gen = engine.generate(msgs, self._constraint, max_tokens=32, prefix=prefix)
        word = gen.text.strip()
        value = self._label_of.get(word)
        problems = [] if value is not None else [f"{word!r} is not one of the labels"]
        if gen.finish_reason == "length":
            problems.append("output cut at the token limit")
        conf = math.prod(gen.token_probs) if gen.token_probs else None
        return Answer(
            value=value,
            raw=gen.text,
            confidence=conf if caps.token_probs else None,
            method="choice-token-probs" if caps.token_probs else "none",
            usage=gen.usage,
            problems=problems,
        )

    def settings(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "labels": self.descriptions,
            "instructions": self.instructions,
            "k": self.k,
            "list_labels": self.list_labels,
            "shortlist": self.shortlist,
            "score_margin": self.score_margin,
            "static_per_label": self.static_per_label,
            "example_chars": self.example_chars,
            "verbalizer": self.verbalizer,
            "calibrate": self.calibrate,
            "vote_k": self.vote_k,
            "abstain_label": self.abstain_label,
            "retrieval": self.index.retrieval if self.index else None,
            "examples": len(self.index) if self.index else 0,
            **({"scoring": self.scoring} if self.scoring != "sequence" else {}),  # older configs keep their hash
        }

    def training_reply(self, value: Any) -> str:
        """The word the model is trained to write for the label ``value`` (its :attr:`verbalizer` word)."""
        from agentkit.errors import InputError

        if str(value) not in self.verbalizer:
            raise InputError(f"{value!r} is not one of the labels")
        return self.verbalizer[str(value)]


def _static_examples(examples: Sequence[Mapping[str, Any]], per_label: int, seed: int) -> list[dict[str, Any]]:
    """``per_label`` examples of each label, picked by a seeded shuffle, interleaved by label."""
    if per_label <= 0:
        return []
    import random

    pool = [dict(e) for e in examples]
    random.Random(seed).shuffle(pool)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for e in pool:
        bucket = by_label.setdefault(str(e["expected"]), [])
        if len(bucket) < per_label:
            bucket.append(e)
    rounds = [[b[i] for b in by_label.values() if i < len(b)] for i in range(per_label)]
    return [e for r in rounds for e in r]
