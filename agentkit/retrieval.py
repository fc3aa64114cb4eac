"""BM25 retrieval of labelled examples (bm25s), for few-shot prompts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentkit.errors import ConfigError


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class ExampleIndex:
    """Labelled examples (``{"input": ..., "expected": ...}``) searchable by BM25."""

    def __init__(self, examples: Sequence[Mapping[str, Any]]) -> None:
        try:
            import bm25s
        except ImportError as e:  # pragma: no cover - core dependency
            raise ConfigError("bm25s is not installed", hint="pip install bm25s") from e
        self.examples = [dict(e) for e in examples]
        if not self.examples:
            raise ConfigError("example pool is empty")
        for e in self.examples:
            if "input" not in e or "expected" not in e:
                raise ConfigError("each example needs 'input' and 'expected'")
        corpus = [_text(e["input"]) for e in self.examples]
        self._bm25s = bm25s
        self._retriever = bm25s.BM25()
        self._retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)

    def __len__(self) -> int:
        return len(self.examples)

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        """The ``k`` most similar examples, most similar first."""
        k = min(k, len(self.examples))
        if k <= 0:
            return []
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        docs, scores = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [self.examples[int(i)] for i, s in zip(docs[0], scores[0], strict=True)]
