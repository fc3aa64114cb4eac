"""Calibrated confidence: a raw score (a label's probability, a vote share, a field's token probability)
mapped to the probability that the answer is right, fitted on labelled records by isotonic regression.

:class:`TierCalibration` maps each tier's confidence as a whole (``agentkit eval`` fits it; a
:class:`~agentkit.node.Node` given one decides on the calibrated value). :class:`FieldCalibration` goes one
level down, for extraction: a copied address can be written at 0.93 and be wrong, a total picked at 0.6
among printed amounts be right. It learns, per field and per *state* of the value (``confirmed`` by a
labelled document of the same issuer, ``free``, ``null``, or ``settled`` by the text), how often values at
each raw score were right; an :class:`~agentkit.tasks.extract.Extract` given one reports the product of its
fields' probabilities as the answer's confidence (the raw score stays in the details).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentkit.errors import ConfigError

__all__ = [
    "MIN_SAMPLES",
    "Agreement",
    "agreement",
    "FieldCalibration",
    "FieldSample",
    "Isotonic",
    "State",
    "TierCalibration",
]

State = Literal["confirmed", "free", "null", "settled"]
"""How a field's value came about: a labelled example has it (``confirmed``), the model wrote it
(``free``), it is null (not printed, or dropped), or the text decided it (``settled``)."""

MIN_SAMPLES = 30
"""Fewer labelled fields than this per field is refused: a step map fitted on fewer says little."""


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing step map from a raw score in [0, 1] to a probability, fitted by
    pool-adjacent-violators on (score, right) pairs. Each block's probability is smoothed toward
    the overall rate with ``prior`` pseudo-counts, so a block of three is not read as certainty."""

    upper: tuple[float, ...]
    """The highest raw score of each block, ascending."""
    probs: tuple[float, ...]
    counts: tuple[int, ...]

    @classmethod
    def fit(
        cls, scores: Sequence[float], right: Sequence[bool], *, prior: float = 2.0, base: float | None = None
    ) -> Isotonic:
        """``prior`` pseudo-answers at rate ``base`` (default: the samples' own rate) smooth each block."""
        if not scores or len(scores) != len(right):
            raise ValueError("isotonic fit needs as many outcomes as scores, at least one")
        tied: dict[float, list[float]] = {}  # equal scores are one point: a step map cannot split them
        for s, r in zip(scores, right, strict=True):
            tied.setdefault(float(s), [0.0, 0.0])
            tied[float(s)][0] += float(r)
            tied[float(s)][1] += 1.0
        base = sum(right) / len(right) if base is None else base
        blocks: list[list[float]] = []  # [sum right, count, upper score]
        for s, (hits, n) in sorted(tied.items()):
            blocks.append([hits, n, s])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
                hits, n, top = blocks.pop()
                blocks[-1][0] += hits
                blocks[-1][1] += n
                blocks[-1][2] = top
        smoothed = [(hits + prior * base) / (n + prior) for hits, n, _ in blocks]
        probs = tuple(max(smoothed[: i + 1]) for i in range(len(smoothed)))  # smoothing kept non-decreasing
        return cls(tuple(b[2] for b in blocks), probs, tuple(int(b[1]) for b in blocks))

    def __call__(self, score: float) -> float:
        for top, p in zip(self.upper, self.probs, strict=True):
            if score <= top:
                return p
        return self.probs[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"upper": list(self.upper), "probs": list(self.probs), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Isotonic:
        return cls(tuple(data["upper"]), tuple(data["probs"]), tuple(data["counts"]))


@dataclass(frozen=True)
class FieldSample:
    """One labelled field of one answer: its raw confidence, its state, and whether it was right."""

    field: str
    state: State
    raw: float
    right: bool


@dataclass
class FieldCalibration:
    """Per field (and state of its value), the probability that the value is right given its raw score."""

    maps: dict[str, dict[str, Isotonic]]
    """field -> state -> map; a state never seen for a field falls back to the field's ``all`` map."""
    data: str = ""
    """sha256 of the samples it was fitted on."""
    n: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fields(self) -> list[str]:
        return list(self.maps)

    @classmethod
    def fit(
        cls, samples: Iterable[FieldSample], *, min_samples: int = MIN_SAMPLES, meta: Mapping[str, Any] | None = None
    ) -> FieldCalibration:
        """Fit one map per field and state (and one per field over all states) from labelled samples.
        Fields with fewer than ``min_samples`` samples are refused with a :class:`ConfigError`."""
        rows = list(samples)
        by_field: dict[str, list[FieldSample]] = {}
        for s in rows:
            by_field.setdefault(s.field, []).append(s)
        groups = {f: [(s.raw, s.right, s.state) for s in v] for f, v in by_field.items()}
        hint = "label more records, or lower min_samples knowing the fit is then rough"
        maps = _fit_maps(groups, min_samples=min_samples, per="field", unit="fields", hint=hint)
        digest = hashlib.sha256(json.dumps([list(vars(s).values()) for s in rows]).encode()).hexdigest()
        return cls(maps, digest, len(rows), dict(meta or {}))

    def probability(self, name: str, raw: float, state: State) -> float | None:
        """P(right) of a value of field ``name`` in ``state`` at raw score ``raw`` (None: field not calibrated)."""
        maps = self.maps.get(name)
        if maps is None:
            return None
        return (maps.get(state) or maps["all"])(raw)

    def confidence(self, scores: Mapping[str, tuple[float, State]]) -> tuple[float, dict[str, float]]:
        """P(every calibrated field right), taken as the product of the fields' probabilities, and each
        field's probability. ``scores``: field -> (raw score, state); a calibrated field missing from it
        counts as null at score 0."""
        probs = {}
        for name in self.maps:
            raw, state = scores.get(name, (0.0, "null"))
            p = self.probability(name, raw, state)
            assert p is not None
            probs[name] = p
        return math.prod(probs.values()), probs

    def save(self, path: str | Path) -> Path:
        maps = {f: {s: m.as_dict() for s, m in states.items()} for f, states in self.maps.items()}
        return _save(path, {"data": self.data, "n": self.n, "meta": self.meta, "maps": maps})

    @classmethod
    def load(cls, path: str | Path) -> FieldCalibration:
        body = _load(path, "maps")
        return cls(body["maps"], body.get("data", ""), body.get("n", 0), body.get("meta", {}))


Agreement = Literal["agrees", "differs"]
"""An answer against the answer of the tier asked before it: the same value, or another (or none)."""


def agreement(before: tuple[bool, Any] | None, value: Any) -> Agreement | None:
    """How a valid answer ``value`` stands to ``before``, the (valid, value) of the tier asked before it: the
    one rule :class:`~agentkit.node.Node` and ``agentkit eval`` share. ``None`` for the first tier asked."""
    if before is None:
        return None
    return "agrees" if before[0] and before[1] == value else "differs"


MIN_STATE_SAMPLES = 10
"""Below this many labelled answers in one agreement state, the state's map is drawn toward the tier's overall
rate with as many pseudo-answers."""


@dataclass
class TierCalibration:
    """Per tier of a ladder, the probability that its answer is right given the confidence it reports and
    whether it agrees with the tier asked before it.

    Fitted by ``agentkit eval`` on labelled records (:meth:`fit`); a :class:`~agentkit.node.Node` given one
    replaces each answer's confidence by its calibrated value (the raw one stays in the details), so the
    policy's thresholds read as probabilities of being right. A tier without a map keeps its raw score.
    Agreement matters because a tier above the first is asked about the inputs the tiers below were unsure
    of: where it repeats their answer it is right far more often than where it overrules them."""

    maps: dict[str, dict[str, Isotonic]]
    """tier name -> ``all`` | ``agrees`` | ``differs`` -> map (``all``: whatever the agreement)."""
    data: str = ""
    """sha256 of the (tier, confidence, right, agreement) samples it was fitted on."""
    meta: dict[str, Any] = field(default_factory=dict)
    source: Path | None = field(default=None, compare=False)
    """The file it was loaded from or saved to (what a config file names)."""

    @classmethod
    def fit(
        cls,
        samples: Mapping[str, Sequence[tuple[float, bool, Agreement | None]]],
        *,
        min_samples: int = MIN_SAMPLES,
        meta: Mapping[str, Any] | None = None,
    ) -> TierCalibration:
        """Maps per tier from its (confidence, right, agreement with the tier before) samples: one over all,
        and one per agreement state seen (see :data:`MIN_STATE_SAMPLES`). Any tier with fewer than
        ``min_samples`` samples refuses the whole fit with a :class:`ConfigError`."""
        hint = "label more records, or evaluate on more of them"
        maps = _fit_maps(
            samples, min_samples=min_samples, per="tier", unit="answers", hint=hint, shrink_below=MIN_STATE_SAMPLES
        )
        every = sorted((t, float(c), bool(r), a or "") for t, v in samples.items() for c, r, a in v)
        digest = hashlib.sha256(json.dumps(every).encode()).hexdigest()
        return cls(maps, digest, {"n": {t: len(v) for t, v in samples.items()}, **(meta or {})})

    def probability(self, tier: str, confidence: float, agreement: Agreement | None = None) -> float | None:
        """P(right) of ``tier``'s answer at ``confidence`` (and ``agreement`` with the tier before, when that
        state has a map); ``None`` when the tier has no map."""
        maps = self.maps.get(tier)
        if maps is None:
            return None
        return (maps.get(agreement or "all") or maps["all"])(confidence)

    def save(self, path: str | Path) -> Path:
        maps = {t: {a: m.as_dict() for a, m in states.items()} for t, states in self.maps.items()}
        self.source = _save(path, {"data": self.data, "meta": self.meta, "tiers": maps}).resolve()
        return self.source

    def fitted_on(self, tiers: Sequence[str]) -> bool:
        """Whether it was fitted on this ladder (tier names, cheapest first): an upper tier's maps depend on
        the tier below it."""
        return list(self.maps) == list(tiers)

    @classmethod
    def load(cls, path: str | Path) -> TierCalibration:
        body = _load(path, "tiers")
        return cls(body["tiers"], body.get("data", ""), body.get("meta", {}), Path(path).resolve())


def _fit_maps(
    groups: Mapping[str, Sequence[tuple[float, bool, str | None]]],
    *,
    min_samples: int,
    per: str,
    unit: str,
    hint: str,
    shrink_below: int = 0,
) -> dict[str, dict[str, Isotonic]]:
    """Per group (a field, a tier) of (raw score, right, state) samples: a map over all of them and one per state
    seen; a state with fewer than ``shrink_below`` samples is drawn toward the group's rate with as many
    pseudo-samples. A group with fewer than ``min_samples`` refuses the whole fit with a :class:`ConfigError`."""
    short = {g: len(v) for g, v in groups.items() if len(v) < min_samples}
    if not groups or short:
        raise ConfigError(
            f"too few labelled {unit} to calibrate: {short or 'none'} (at least {min_samples} per {per})", hint=hint
        )
    maps: dict[str, dict[str, Isotonic]] = {}
    for name, rows in groups.items():
        maps[name] = {"all": Isotonic.fit([c for c, _, _ in rows], [r for _, r, _ in rows])}
        rate = sum(r for _, r, _ in rows) / len(rows)
        for state in sorted({st for _, _, st in rows if st is not None}):
            part = [(c, r) for c, r, st in rows if st == state]
            few = len(part) < shrink_below
            maps[name][state] = Isotonic.fit(
                [c for c, _ in part],
                [r for _, r in part],
                prior=float(shrink_below) if few else 2.0,
                base=rate if few else None,
            )
    return maps


def _save(path: str | Path, body: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    return path


def _load(path: str | Path, key: str) -> dict[str, Any]:
    """A saved calibration's body, its two-level table of maps under ``key`` read back; a clear error when
    it cannot be read."""
    try:
        body: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        body[key] = {k: {state: Isotonic.from_dict(m) for state, m in v.items()} for k, v in body[key].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"cannot read the calibration {path}: {e}") from None
    return body
