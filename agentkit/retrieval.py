"""Retrieval of labelled examples for few-shot prompts and kNN votes: BM25 (bm25s), dense
(all-MiniLM-L6-v2 in NumPy, ``agentkit[dense]``) or both fused by reciprocal rank."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

from agentkit.errors import ConfigError

__all__ = ["ExampleIndex", "Retrieval", "cached_embeddings", "fuse"]

Retrieval = Literal["bm25", "dense", "hybrid"]
_RRF_K = 60
"""Reciprocal-rank-fusion constant (Cormack et al. 2009)."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def cached_embeddings(texts: Sequence[str]) -> np.ndarray:
    """Embeddings of ``texts`` with the default embedder, cached on disk by content hash
    (``$AGENTKIT_CACHE/embeddings``), so a pool is embedded once per machine, not per process."""
    from agentkit.embedded import cache_dir
    from agentkit.embeddings import default_embedder

    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:24]
    path = cache_dir() / "embeddings" / f"minilm-{digest}.npy"
    if path.is_file():
        vectors: np.ndarray = np.load(path)
        if vectors.shape == (len(texts), 384):
            return vectors
    vectors = default_embedder().embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


def fuse(rankings: Sequence[Sequence[int]], k: int) -> list[int]:
    """Reciprocal rank fusion of several rankings (lists of ids, best first); the top ``k``."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking):
            scores[i] = scores.get(i, 0.0) + 1.0 / (_RRF_K + rank + 1)
    return sorted(scores, key=lambda i: -scores[i])[:k]


class ExampleIndex:
    """Labelled examples (``{"input": ..., "expected": ...}``), searchable by similarity."""

    def __init__(self, examples: Sequence[Mapping[str, Any]], *, retrieval: Retrieval = "bm25") -> None:
        """``retrieval``: ``bm25`` (lexical), ``dense`` (MiniLM cosine) or ``hybrid`` (both, fused)."""
        if retrieval not in ("bm25", "dense", "hybrid"):
            raise ConfigError(f"unknown retrieval {retrieval!r}", hint="bm25, dense or hybrid")
        self.examples = [dict(e) for e in examples]
        if not self.examples:
            raise ConfigError("example pool is empty")
        for e in self.examples:
            if "input" not in e or "expected" not in e:
                raise ConfigError("each example needs 'input' and 'expected'")
        self.retrieval = retrieval
        corpus = [_text(e["input"]) for e in self.examples]
        self._retriever: Any = None
        self._vectors: np.ndarray | None = None
        self._texts: Counter[str] | None = None  # normalized input -> count, for ``unseen`` searches
        self._pool_rows: dict[str, int] | None = None  # input -> its row of the dense vectors
        self._left_out: str | None = None  # normalized text no search returns (leave-one-out)
        if retrieval != "dense":
            import bm25s

            self._bm25s = bm25s
            self._retriever = bm25s.BM25()
            tokenized = bm25s.tokenize(corpus, stopwords="en", show_progress=False)
            if not tokenized.vocab:  # bm25s cannot index it (it fails on a division by zero)
                raise ConfigError("the example pool has no word to index", hint="give examples with words in them")
            self._retriever.index(tokenized, show_progress=False)
        if retrieval != "bm25":
            self._vectors = cached_embeddings(corpus)

    def __len__(self) -> int:
        return len(self.examples)

    def _bm25(self, query: str, k: int) -> list[int]:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        docs, _ = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [int(i) for i in docs[0]]

    def _dense(self, query: str, k: int) -> list[int]:
        from agentkit.embeddings import default_embedder

        assert self._vectors is not None
        if self._pool_rows is None:
            self._pool_rows = {_text(e["input"]): i for i, e in enumerate(self.examples)}
        row = self._pool_rows.get(query)  # an example's own text (a shortlist's second look): embedded already
        vector = self._vectors[row] if row is not None else default_embedder().embed([query])[0]
        sims = self._vectors @ vector
        top = np.argpartition(-sims, k - 1)[:k]
        return [int(i) for i in top[np.argsort(-sims[top])]]

    @contextmanager
    def leaving_out(self, text: str) -> Iterator[None]:
        """Inside the block no search returns an example whose text is ``text`` (nor the query's own text), so a
        labelled example can be answered as if it were new: the pool is both the examples and the records a
        node is evaluated on (leave-one-out)."""
        from agentkit.data import normalize_text

        before, self._left_out = self._left_out, normalize_text(_text(text))
        try:
            yield
        finally:
            self._left_out = before

    def search(self, query: str, k: int, *, unseen: bool = False) -> list[dict[str, Any]]:
        """The ``k`` most similar examples, most similar first. ``unseen``: leave out examples whose
        text is the query's, as if it were a new input (for training prompts built from the pool)."""
        if not unseen and self._left_out is None:
            return self._search(query, k)
        from agentkit.data import normalize_text

        if self._texts is None:
            self._texts = Counter(normalize_text(_text(e["input"])) for e in self.examples)
        hidden = {self._left_out} if self._left_out is not None else set()
        if unseen:
            hidden.add(normalize_text(_text(query)))
        found = self._search(query, k + sum(self._texts[key] for key in hidden))
        return [e for e in found if normalize_text(_text(e["input"])) not in hidden][:k]

    def _search(self, query: str, k: int) -> list[dict[str, Any]]:
        k = min(k, len(self.examples))
        if k <= 0:
            return []
        if self.retrieval == "bm25":
            ids = self._bm25(query, k)
        elif self.retrieval == "dense":
            ids = self._dense(query, k)
        else:
            depth = min(len(self.examples), max(2 * k, 20))
            ids = fuse([self._dense(query, depth), self._bm25(query, depth)], k)
        return [self.examples[i] for i in ids]
