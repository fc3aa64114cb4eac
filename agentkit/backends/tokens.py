"""The decoding loop shared by the engines that run a model in this process (llama.cpp, transformers).

An engine subclasses :class:`TokenEngine` and supplies its model's primitives — tokenize, a chat
prompt, decode tokens after the cached ones, cut the cache, save and restore a prefix's cache — and
gets, written once: longest-common-prefix reuse of the cache on every call, each node's fixed prefix
kept warm, greedy decoding under an Outlines (or span) constraint with every chosen token's
probability read from the constrained distribution, and label scoring whose continuations share
their decoded prefixes.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

from agentkit.engine import Capabilities, Constraint, Generation, Message, Scores, Usage
from agentkit.errors import EngineError, InputError, ModelUnavailableError

__all__ = ["EXACT_WITHIN", "SpanProcessor", "TokenEngine", "marked_chat", "tokenize_marked", "word_boundaries"]

_CONSTRAINTS = 64
"""Compiled constraints kept per engine (a node's fixed constraint stays; per-input ones rotate)."""
EXACT_WITHIN = 3.0
"""Best-first scoring decodes a continuation exactly when its bound is within this many nats of the best
(a bound e**-3 below the best moves the best's share by at most ~5%, and in practice by the probability
that the model would not finish a continuation it has started, ~0)."""


def _lcp(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


class TokenEngine:
    """Base of the in-process engines. Subclasses set ``name``, ``capabilities``, ``_n_ctx`` and
    implement the primitives marked *model* below; the public API is :meth:`generate`, :meth:`score`,
    :meth:`count_tokens`."""

    name: str
    capabilities: Capabilities
    _n_ctx: int
    _n_vocab: int

    def __init__(self, *, prefix_cache: bool = True, prefix_states: int = 64) -> None:
        self.prefix_cache = prefix_cache
        self.prefix_states = prefix_states
        self._lock = threading.RLock()
        self._tokens: list[int] = []
        """What the model's cache holds now."""
        self._prefix_states: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._processors: OrderedDict[Constraint, Any] = OrderedDict()
        self._backend: Any = None
        self._eot: str | None = None

    # ---- model primitives (subclasses) ---------------------------------------------

    def _load(self) -> None:
        """Load the model if it is not loaded yet."""
        raise NotImplementedError

    def _tokenize(self, text: str, *, first: bool) -> list[int]:
        """Token ids of ``text``; ``first``: it starts the prompt (add BOS if the model wants one)."""
        raise NotImplementedError

    def _chat(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        """The chat template applied to ``messages``, as text."""
        raise NotImplementedError

    def _tokenize_text(self, text: str) -> list[int]:
        """Token ids of ``text`` read as plain text: a control token's spelling in it (``<|im_end|>``) is
        text, never the control token. Engines whose tokenizer parses control tokens override it."""
        return self._tokenize(text, first=False)

    def _extend_model(self, new: list[int], pos: int, rows: int) -> np.ndarray:
        """Run ``new`` after the ``pos`` cached tokens; the logits of its last ``rows`` tokens, ``(rows, vocab)``."""
        raise NotImplementedError

    def _cut_cache(self, n: int) -> None:
        """Drop the model's cache after its first ``n`` tokens."""
        raise NotImplementedError

    def _cache_state(self) -> Any:
        """A copy of the model's cache as it is now (to restore a node's prefix later)."""
        raise NotImplementedError

    def _set_cache_state(self, state: Any) -> bool:
        """Make ``state`` the model's cache; ``False`` if it could not be restored."""
        raise NotImplementedError

    def _token_bytes(self, token: int) -> bytes:
        raise NotImplementedError

    def _is_end(self, token: int) -> bool:
        """Whether ``token`` ends a reply (end of sequence, end of turn, ...)."""
        raise NotImplementedError

    def _eos(self) -> int | None:
        """The end-of-sequence token id, if the model has one."""
        raise NotImplementedError

    def _outlines_model(self) -> Any:
        """The model wrapped by Outlines (for its tokenizer; processors are run on NumPy arrays)."""
        raise NotImplementedError

    # ---- tokens and prompts --------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._lock:
            self._load()
            return len(self._tokenize_text(text))

    def _prompt_tokens(self, messages: list[Message], prefix: int) -> tuple[list[int], int]:
        """Tokens of the chat prompt and how many of them belong to the fixed prefix. The template's own
        text is read with its control tokens; the messages' contents as plain text (:meth:`_tokenize_text`),
        so that a message cannot close its turn or open another by spelling the control tokens."""

        def template(text: str, first: bool) -> list[int]:
            return self._tokenize(text, first=first)

        def render(msgs: list[Message], add_generation_prompt: bool) -> str:
            return self._chat(msgs, add_generation_prompt=add_generation_prompt)

        full, spans = marked_chat(render, messages, True, template, self._tokenize_text)
        if 0 < prefix < len(messages):
            head, _ = marked_chat(render, messages[:prefix], False, template, self._tokenize_text)
            if full.startswith(head):
                head_tokens = tokenize_marked(full, spans, 0, len(head), template, self._tokenize_text, first=True)
                rest = tokenize_marked(full, spans, len(head), len(full), template, self._tokenize_text, first=False)
                return head_tokens + rest, len(head_tokens)
        return tokenize_marked(full, spans, 0, len(full), template, self._tokenize_text, first=True), 0

    def _end_of_turn(self) -> str:
        """The text that closes an assistant reply in this model's chat template (e.g. ``<|im_end|>``)."""
        if self._eot is None:
            sentinel = "\x00reply\x00"
            messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}]
            text = self._chat(messages, add_generation_prompt=False)
            self._eot = text.split(sentinel, 1)[1].rstrip() if sentinel in text else ""
        return self._eot

    # ---- the cache -----------------------------------------------------------------

    def _truncate(self, n: int) -> None:
        self._tokens = self._tokens[:n]
        self._cut_cache(n)

    def _extend(self, new: list[int], *, rows: int = 1) -> np.ndarray:
        """Append ``new`` to the cache; the logits after each of its last ``rows`` tokens, ``(rows, vocab)``."""
        pos = len(self._tokens)
        self._cut_cache(pos)
        logits = self._extend_model(new, pos, rows)
        self._tokens.extend(new)
        return logits

    def _save_prefix(self, key: tuple[int, ...]) -> None:
        self._prefix_states[key] = self._cache_state()
        while len(self._prefix_states) > self.prefix_states:
            self._prefix_states.popitem(last=False)

    def _restore_prefix(self, key: tuple[int, ...]) -> bool:
        state = self._prefix_states.get(key)
        if state is None:
            return False
        self._truncate(0)
        if not self._set_cache_state(state):
            self._truncate(0)
            return False
        self._tokens = list(key)
        self._prefix_states.move_to_end(key)
        return True

    def _feed(self, tokens: list[int], prefix_len: int, tail: list[int] | None = None) -> tuple[np.ndarray, int]:
        """Make the cache hold ``tokens`` (then ``tail``, if given); return the logits after the
        prompt's last token (and after each token of ``tail``), ``(1 + len(tail), vocab)``, and how
        many of the prompt's tokens were reused."""
        tail = tail or []
        everything = tokens + tail
        if len(everything) >= self._n_ctx:
            scored = f" + {len(tail)} to score" if tail else ""
            raise InputError(f"prompt is {len(tokens)} tokens{scored}, the context is {self._n_ctx}")
        rows = 1 + len(tail)
        if not self.prefix_cache:
            self._truncate(0)
            prefix_len = 0
        common = _lcp(self._tokens, everything)
        if 0 < prefix_len < len(tokens) and common < prefix_len:
            key = tuple(tokens[:prefix_len])
            if self._restore_prefix(key):
                common = prefix_len
            else:
                self._truncate(common)
                self._extend(tokens[common:prefix_len])
                self._save_prefix(key)
                reused = common
                self._truncate(prefix_len)
                return self._extend(everything[prefix_len:], rows=rows), reused
        common = min(common, len(tokens) - 1)  # fresh logits for the prompt's last token and the tail
        self._truncate(common)
        return self._extend(everything[common:], rows=rows), common

    # ---- constraints ---------------------------------------------------------------

    def _processor(self, constraint: Constraint) -> Any:
        if constraint.kind == "text":
            return None
        proc = self._processors.get(constraint)
        if proc is not None:
            self._processors.move_to_end(constraint)
            return proc
        if constraint.kind == "span":
            spec = json.loads(constraint.spec)
            end = set(self._tokenize(self._end_of_turn(), first=False))
            if (eos := self._eos()) is not None:
                end.add(eos)
            source = self._tokenize_text(spec["source"])
            pieces = [self._token_bytes(t).decode("utf-8", errors="ignore") for t in source]
            proc = SpanProcessor(
                source,
                lead=self._tokenize(spec["lead"], first=False) if spec["lead"] else [],
                stops=[self._tokenize(x, first=False) for x in spec["stops"]],
                end=sorted(end),
                boundaries=word_boundaries(pieces),
            )
        else:
            backend = self._outlines_backend()
            if constraint.kind == "json":
                proc = backend.get_json_schema_logits_processor(constraint.spec, r"[ ]?")
            elif constraint.kind == "regex":
                proc = backend.get_regex_logits_processor(constraint.spec)
            elif constraint.kind == "choice":
                options = json.loads(constraint.spec)
                proc = backend.get_regex_logits_processor("|".join(f"({re.escape(o)})" for o in options))
            else:
                raise ValueError(f"unknown constraint kind {constraint.kind!r}")
        self._processors[constraint] = proc
        while len(self._processors) > _CONSTRAINTS:
            self._processors.popitem(last=False)
        return proc

    def _outlines_backend(self) -> Any:
        if self._backend is None:
            try:
                from outlines.backends.outlines_core import OutlinesCoreBackend
            except ImportError as e:
                raise ModelUnavailableError("outlines is not installed", hint="pip install 'agentkit[local]'") from e
            backend = OutlinesCoreBackend(self._outlines_model())
            backend.tensor_library_name = "numpy"  # the loop below hands processors NumPy logits
            self._backend = backend
        return self._backend

    # ---- public API ----------------------------------------------------------------

    def generate(
        self, messages: list[Message], constraint: Constraint, *, max_tokens: int, prefix: int = 0
    ) -> Generation:
        """Greedy decoding under ``constraint``; per-token probabilities under the constraint."""
        with self._lock:
            self._load()
            t0 = time.perf_counter()
            tokens, prefix_len = self._prompt_tokens(messages, prefix)
            if len(tokens) + max_tokens > self._n_ctx:
                raise InputError(
                    f"prompt of {len(tokens)} tokens + {max_tokens} to generate exceeds the context of {self._n_ctx}"
                )
            logits, reused = self._feed(tokens, prefix_len)
            logits = logits[-1]
            proc = self._processor(constraint)
            if proc is not None:
                proc.reset()
            out: list[int] = []
            probs: list[float] = []
            finish: Literal["stop", "length"] = "length"
            stop_prob: float | None = None
            for _ in range(max_tokens):
                if proc is not None:
                    ids = np.asarray(tokens + out, dtype=np.int64)
                    try:
                        logits = np.asarray(proc(ids, logits.astype(np.float32)))
                    except Exception as e:  # the constraint itself broke: not retryable
                        raise EngineError(f"constraint failed: {e}") from e
                tok = int(np.argmax(logits))
                top = float(logits[tok])
                if not np.isfinite(top):
                    raise EngineError("constraint allows no token")
                p = 1.0 / float(np.exp(logits - top).sum())
                if self._is_end(tok):
                    finish, stop_prob = "stop", p
                    break
                out.append(tok)
                probs.append(p)
                logits = self._extend([tok])[-1]
            raw = b""
            offsets: list[int] = []
            for tok in out:
                offsets.append(len(raw.decode("utf-8", errors="ignore")))
                raw += self._token_bytes(tok)
            usage = Usage(
                prompt_tokens=len(tokens),
                cached_tokens=reused,
                completion_tokens=len(out),
                seconds=time.perf_counter() - t0,
            )
            return Generation(
                text=raw.decode("utf-8", errors="replace"),
                finish_reason=finish,
                token_probs=probs,
                tokens=out,
                offsets=offsets,
                usage=usage,
                stop_prob=stop_prob,
            )

    def score(
        self,
        messages: list[Message],
        continuations: list[str],
        *,
        prefix: int = 0,
        margin: float | None = None,
        choice: bool = False,
    ) -> Scores:
        """Log-probability that the assistant's reply is exactly each continuation
        (its tokens and the end-of-turn marker); ``choice``: as a choice among the continuations
        (:func:`~agentkit.engine.choice_logprobs`: only the tokens where continuations part are
        scored, so a continuation's tokens after its last parting point are never decoded).

        Without a ``margin`` every continuation is decoded; continuations that share leading
        tokens share their decoded cache entries. With a ``margin`` the continuations are searched
        best first over their shared token prefixes (a prefix's log-probability bounds every
        continuation that starts with it, and only falls as tokens are added): the likeliest
        continuation is found and scored exactly, and a prefix is decoded further only while it
        could hold the best one, holds several continuations within ``margin`` nats of it, or holds
        one within :data:`EXACT_WITHIN` nats. Every other continuation is reported at the upper
        bound its prefix gives, so the best one's share of the probability is never overstated (a
        prefix left at ``margin`` nats below the best moves it by at most ``e**-margin``). A
        confident model decodes little more than its own answer, whatever the number of
        continuations.

        The first continuation is taken as the caller's guess at the likeliest one: its tokens are
        decoded in the same call as the prompt (a right guess costs no call of its own, a wrong one
        a few tokens in the prompt's batch)."""
        with self._lock:
            self._load()
            t0 = time.perf_counter()
            tokens, prefix_len = self._prompt_tokens(messages, prefix)
            eot = self._end_of_turn()
            encoded = [self._tokenize(c + eot, first=False) for c in continuations]
            for c, ct in zip(continuations, encoded, strict=True):
                if not ct:
                    raise ValueError(f"continuation {c!r} has no tokens")
            search = _PrefixSearch(self, len(tokens), encoded, choice=choice)
            guess = search.wanted(encoded[0]) if encoded else []  # decoded with the prompt, in the same call
            logits, reused = self._feed(tokens, prefix_len, guess)
            search.seed(_log_softmax(logits), guess)
            totals = search.exact(encoded) if margin is None else search.best_first(encoded, margin)
            self._truncate(len(tokens))
            usage = Usage(
                prompt_tokens=len(tokens),
                cached_tokens=reused,
                completion_tokens=search.decoded,
                seconds=time.perf_counter() - t0,
            )
            return Scores(logprobs=totals, usage=usage)

    def _reset(self) -> None:
        """Forget everything derived from the loaded model (after a subclass unloads it)."""
        self._tokens = []
        self._prefix_states.clear()
        self._processors.clear()
        self._backend = None
        self._eot = None


class _PrefixSearch:
    """Scores token sequences that continue an engine's cached prompt (which ends at ``base``).

    The log-softmax row after each decoded prefix is kept, so a prefix shared by several
    continuations is decoded once, and a prefix still in the cache is never decoded again.
    ``choice``: a token counts only where the sequences part, renormalized over the tokens they
    part into (see :func:`~agentkit.engine.choice_logprobs`); the rest is never decoded."""

    def __init__(self, engine: TokenEngine, base: int, encoded: list[list[int]], *, choice: bool = False) -> None:
        self.engine = engine
        self.base = base
        self.rows: dict[tuple[int, ...], np.ndarray] = {}
        self.decoded = 0
        """Tokens decoded after the prompt."""
        self.forks: dict[tuple[int, ...], list[int]] | None = None
        """``choice``: the prefixes where sequences part, and the tokens they part into."""
        if choice:
            nexts: dict[tuple[int, ...], set[int]] = {}
            for ct in encoded:
                for j in range(len(ct)):
                    nexts.setdefault(tuple(ct[:j]), set()).add(ct[j])
            self.forks = {node: sorted(tokens) for node, tokens in nexts.items() if len(tokens) > 1}

    def wanted(self, ct: list[int]) -> list[int]:
        """The tokens of ``ct`` to decode to score it: all but its last, or (``choice``) up to its last fork."""
        if self.forks is None:
            return ct[:-1]
        return ct[: max((j for j in range(len(ct)) if tuple(ct[:j]) in self.forks), default=0)]

    def seed(self, fed: np.ndarray, guess: list[int]) -> None:
        """``fed``: the log-probability rows after the prompt and after each token of ``guess``,
        which the cache holds after the prompt."""
        self.rows.update({tuple(guess[:j]): fed[j] for j in range(len(guess) + 1)})
        self.decoded += len(guess)

    def row_after(self, path: tuple[int, ...]) -> np.ndarray:
        """Log-probabilities of the next token after ``path``; decodes what the cache lacks."""
        row = self.rows.get(path)
        if row is not None:
            return row
        engine = self.engine
        keep = min(_lcp(engine._tokens[self.base :], list(path)), len(path) - 1)
        engine._truncate(self.base + keep)
        out = _log_softmax(engine._extend(list(path[keep:]), rows=len(path) - keep))
        for j in range(keep, len(path)):
            self.rows[path[: j + 1]] = out[j - keep]
        self.decoded += len(path) - keep
        last: np.ndarray = out[-1]
        return last

    def step(self, node: tuple[int, ...], token: int) -> float:
        """The log-probability of ``token`` after ``node`` (``choice``: 0 where it is the only way on)."""
        if self.forks is not None and node not in self.forks:
            return 0.0
        row = self.row_after(node)
        if self.forks is None:
            return float(row[token])
        among = row[self.forks[node]]
        top = float(among.max())
        return float(row[token]) - top - math.log(float(np.exp(among - top).sum()))

    def logprob(self, ct: list[int], start: int = 0, bound: float = 0.0) -> float:
        """``bound`` (the log-probability of ``ct[:start]``) plus that of the rest of ``ct``."""
        self.row_after(tuple(self.wanted(ct)))  # decodes every missing prefix of ct in one call
        steps: Iterable[int] = range(start, len(ct))
        if self.forks is not None:
            steps = [j for j in steps if tuple(ct[:j]) in self.forks]
        return bound + sum(self.step(tuple(ct[:j]), ct[j]) for j in steps)

    def exact(self, encoded: list[list[int]]) -> list[float]:
        """Every sequence decoded (in token order, so neighbours share the cache)."""
        totals = [0.0] * len(encoded)
        for i in sorted(range(len(encoded)), key=lambda i: encoded[i]):
            totals[i] = self.logprob(encoded[i])
        return totals

    def best_first(self, encoded: list[list[int]], margin: float) -> list[float]:
        """The likeliest sequence exactly; the others exact or at an upper bound (see ``score``)."""
        totals: list[float | None] = [None] * len(encoded)
        heap: list[tuple[float, int, tuple[int, ...], list[int]]] = []
        count = 0

        def push(bound: float, node: tuple[int, ...], members: list[int]) -> None:
            nonlocal count
            heapq.heappush(heap, (-bound, count, node, members))
            count += 1

        def branch(bound: float, node: tuple[int, ...], members: list[int]) -> None:
            children: dict[int, list[int]] = {}
            for i in members:
                children.setdefault(encoded[i][len(node)], []).append(i)
            for token, ids in children.items():
                push(bound + self.step(node, token), (*node, token), ids)

        branch(0.0, (), list(range(len(encoded))))
        best: float | None = None
        while heap:
            bound, node = -heap[0][0], heap[0][2]
            if best is not None and bound < best - margin:
                break
            members = heapq.heappop(heap)[3]
            ongoing = []
            for i in members:
                if len(encoded[i]) == len(node):  # the whole sequence: its bound is its score
                    totals[i] = bound
                    if best is None:  # the first whole sequence popped is the likeliest
                        best = bound
                else:
                    ongoing.append(i)
            if not ongoing:
                continue
            if len(ongoing) == 1:
                (i,) = ongoing
                if best is None:  # it may be the likeliest: score it, and let the search decide
                    push(self.logprob(encoded[i], len(node), bound), tuple(encoded[i]), [i])
                elif bound >= best - EXACT_WITHIN:  # a close second: exact, as the share depends on it
                    totals[i] = self.logprob(encoded[i], len(node), bound)
                else:  # the only sequence below: its bound is never low, and too far to move the share much
                    totals[i] = bound
                continue
            branch(bound, node, ongoing)
        for negative, _, _, members in heap:
            for i in members:
                totals[i] = -negative
        return [t if t is not None else -math.inf for t in totals]


def word_boundaries(pieces: list[str]) -> list[bool]:
    """For token texts ``pieces``: whether a word boundary lies before each token (and at the end)."""

    def word_char(c: str) -> bool:
        return c.isalnum() or c in "_'"

    out = [True]
    for prev, cur in zip(pieces, pieces[1:], strict=False):
        out.append(not (prev and cur and word_char(prev[-1]) and word_char(cur[0])))
    out.append(True)
    return out[: len(pieces) + 1]


class SpanProcessor:
    """Logits mask for :meth:`Constraint.span`: one of ``stops`` exactly, or ``lead`` then a
    contiguous run of the source's tokens, then an end token. Same interface as Outlines'
    processors (``reset()``, ``__call__(ids, logits)``); the state is read from ``ids``."""

    def __init__(
        self,
        source: list[int],
        *,
        lead: list[int],
        stops: list[list[int]],
        end: list[int],
        boundaries: list[bool] | None = None,
    ) -> None:
        """``boundaries[i]``: a word boundary lies before source token ``i`` (``len(source) + 1``
        entries); a span starts and ends only at boundaries, so "10" cannot be cut from "10th"."""
        if not source:
            raise ValueError("span constraint over an empty source")
        self.source, self.lead, self.stops, self.end = source, lead, [s for s in stops if s], end
        self.boundaries = boundaries or [True] * (len(source) + 1)
        if len(self.boundaries) != len(source) + 1:
            raise ValueError("boundaries needs one entry per source token, plus one")
        self._positions: dict[int, list[int]] = {}
        for i, tok in enumerate(source):
            self._positions.setdefault(tok, []).append(i)
        self._starts = sorted({t for i, t in enumerate(source) if self.boundaries[i]})
        self._prompt: int | None = None

    def reset(self) -> None:
        self._prompt = None

    def allowed(self, out: list[int]) -> list[int]:
        """Token ids allowed after ``out`` (the tokens generated so far)."""
        allowed: set[int] = set()
        for stop in self.stops:
            if out == stop:
                allowed.update(self.end)
            elif len(out) < len(stop) and stop[: len(out)] == out:
                allowed.add(stop[len(out)])
        n = len(self.lead)
        if len(out) < n:
            if self.lead[: len(out)] == out:
                allowed.add(self.lead[len(out)])
            return sorted(allowed)
        if out[:n] != self.lead:
            return sorted(allowed)
        span = out[n:]
        if not span:
            allowed.update(self._starts)
            return sorted(allowed)
        m = len(span)
        for p in self._positions.get(span[0], []):
            if self.boundaries[p] and self.source[p : p + m] == span:
                if p + m < len(self.source):
                    allowed.add(self.source[p + m])
                if self.boundaries[p + m]:
                    allowed.update(self.end)
        return sorted(allowed)

    def __call__(self, ids: Any, logits: Any) -> Any:
        if self._prompt is None:
            self._prompt = len(ids)
        allowed = self.allowed([int(t) for t in ids[self._prompt :]])
        masked = np.full_like(logits, -np.inf)
        if allowed:
            masked[allowed] = logits[allowed]
        return masked


def marked_chat(
    render: Callable[[list[Message], bool], str],
    messages: list[Message],
    add_generation_prompt: bool,
    template_tokens: Callable[[str, bool], list[int]],
    text_tokens: Callable[[str], list[int]],
) -> tuple[str, list[tuple[int, int]]]:
    """The prompt ``render`` (a chat template) makes of ``messages``, and where each message's content lies in it,
    so that :func:`tokenize_marked` reads the contents as plain text and the template's own text with its control
    tokens. Found by rendering a placeholder per message; a template that changes a message's text (so that it
    cannot be found as written) refuses a message that spells a control token (:class:`InputError`)."""
    marks = [f"\x00agentkit-content-{i}\x00" for i in range(len(messages))]
    rendered = render([{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)], add_generation_prompt)
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = length = 0
    for message, mark in zip(messages, marks, strict=True):
        at = rendered.find(mark, pos)
        if at < 0 or rendered.count(mark) != 1:
            for m in messages:
                if template_tokens(m["content"], False) != text_tokens(m["content"]):
                    raise InputError(
                        "the input spells the model's control tokens, and this model's chat template changes message"
                        " text, so they cannot be kept as text",
                        hint="remove them from the input, or use a model whose template keeps messages as written",
                    )
            return render(messages, add_generation_prompt), []
        pieces += [rendered[pos:at], message["content"]]
        length += at - pos
        spans.append((length, length + len(message["content"])))
        length += len(message["content"])
        pos = at + len(mark)
    pieces.append(rendered[pos:])
    return "".join(pieces), spans


def tokenize_marked(
    text: str,
    spans: list[tuple[int, int]],
    start: int,
    end: int,
    template_tokens: Callable[[str, bool], list[int]],
    text_tokens: Callable[[str], list[int]],
    *,
    first: bool,
) -> list[int]:
    """Tokens of ``text[start:end]``: the parts inside ``spans`` (:func:`marked_chat`) as plain text, the rest as
    template text; ``first``: it starts the prompt (a BOS where the model wants one)."""
    tokens: list[int] = []
    pos = start
    for a, b in [*spans, (end, end)]:
        a, b = max(a, start), min(b, end)
        if b < a or a < pos:
            continue
        if a > pos:
            tokens += template_tokens(text[pos:a], first and not tokens)
        if b > a:
            piece = text_tokens(text[a:b])
            if first and not tokens:
                piece = template_tokens("", True) + piece
            tokens += piece
        pos = max(pos, b)
    return tokens
