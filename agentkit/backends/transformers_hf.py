"""transformers engine: a Hugging Face causal LM in this process (``pip install 'agentkit[hf]'``),
optionally with a PEFT (LoRA) adapter — the tier a tuned model is bound through before it is
converted for llama.cpp, and the one for any HF-format model.

The decode loop is :class:`~agentkit.backends.tokens.TokenEngine`'s, as for llama.cpp: the model's
``DynamicCache`` is reused for the longest common token prefix, each node's fixed prefix is kept as a
cache copy, constraints are Outlines' logits processors (built from ``outlines.from_transformers``),
chosen-token probabilities are read under the constraint, and labels are scored whole. Greedy, on
the CPU unless ``device`` says otherwise. torch is imported on first use, never at ``import agentkit``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from agentkit.backends.tokens import TokenEngine
from agentkit.engine import Capabilities, Message
from agentkit.errors import EngineError, ModelUnavailableError

__all__ = ["TransformersEngine", "dequantized"]


class TransformersEngine(TokenEngine):
    """A model folder (``config.json`` + safetensors) or a GGUF file (dequantized on load), plus an
    optional PEFT adapter folder."""

    def __init__(
        self,
        model: str | Path,
        *,
        adapter: str | Path | None = None,
        name: str | None = None,
        n_ctx: int = 4096,
        dtype: str = "float32",
        device: str = "cpu",
        threads: int | None = None,
        prefix_states: int = 8,
    ) -> None:
        """
        Args:
            model: a Hugging Face model folder, or a ``.gguf`` file (dequantized once and cached:
                :func:`dequantized`).
            adapter: a PEFT adapter folder (``adapter_config.json``), applied on top of ``model``.
            dtype: ``float32`` (CPU default), ``bfloat16`` or ``float16``.
            threads: torch's intra-op threads (default: ``$AGENTKIT_THREADS``, else torch's own).
            prefix_states: fixed prefixes kept as cache copies (each ~24 KB per token for the 0.5B in fp32).
        """
        super().__init__(prefix_states=prefix_states)
        self.model_path = Path(model).expanduser()
        self.adapter_path = Path(adapter).expanduser() if adapter else None
        self.name = name or self.model_path.stem + (f"+{self.adapter_path.name}" if self.adapter_path else "")
        self.capabilities = Capabilities(constrained=True, token_probs=True, scoring=True, context=n_ctx)
        self._n_ctx = n_ctx
        self._dtype, self._device = dtype, device
        self._threads = threads or int(os.environ.get("AGENTKIT_THREADS") or 0) or None
        self._model: Any = None
        self._tok: Any = None
        self._cache: Any = None
        self._ends: set[int] = set()

    # ---- loading -------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ModelUnavailableError(
                "the transformers tier needs torch and transformers", hint="pip install 'agentkit[hf]'"
            ) from e
        if not self.model_path.exists():
            raise ModelUnavailableError(f"model not found: {self.model_path}")
        if self._threads:
            torch.set_num_threads(self._threads)
        try:
            where = str(dequantized(self.model_path, self._dtype) if self.model_path.is_file() else self.model_path)
            tok = AutoTokenizer.from_pretrained(where)
            # Any: the model or its PEFT wrapper, and transformers types ``model.to`` as a plain function
            model: Any = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, self._dtype))
        except (OSError, ValueError, ImportError) as e:
            raise ModelUnavailableError(f"transformers could not load {self.model_path}: {e}") from e
        if self.adapter_path is not None:
            try:
                from peft import PeftModel
            except ImportError as e:
                raise ModelUnavailableError("an adapter needs peft", hint="pip install 'agentkit[hf]'") from e
            if not (self.adapter_path / "adapter_config.json").is_file():
                raise ModelUnavailableError(f"not a PEFT adapter folder: {self.adapter_path}")
            model = PeftModel.from_pretrained(model, str(self.adapter_path))
        model.to(self._device).eval()
        if getattr(tok, "chat_template", None) is None:
            raise ModelUnavailableError(f"{self.model_path} has no chat template")
        ends = model.generation_config.eos_token_id if model.generation_config is not None else None
        ends = [ends] if isinstance(ends, int) else list(ends or [])
        if tok.eos_token_id is not None:
            ends.append(tok.eos_token_id)
        import inspect

        base = getattr(model, "get_base_model", lambda: model)()
        params = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        self._tok, self._model = tok, model
        self._ends = set(ends) | set(self._tokenize(self._end_of_turn(), first=False))
        self._n_vocab = int(model.get_output_embeddings().weight.shape[0])

    # ---- the primitives TokenEngine builds on --------------------------------------

    def _chat(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        prompt: str = self._tok.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return prompt

    def _tokenize(self, text: str, *, first: bool) -> list[int]:
        return list(self._tok(text, add_special_tokens=first and self._tok.bos_token is not None).input_ids)

    def _tokenize_text(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False, split_special_tokens=True).input_ids)

    def _token_bytes(self, token: int) -> bytes:
        piece: str = self._tok.decode([token], skip_special_tokens=True)
        return piece.encode("utf-8")

    def _is_end(self, token: int) -> bool:
        return token in self._ends

    def _eos(self) -> int | None:
        eos: int | None = self._tok.eos_token_id
        return eos

    def _outlines_model(self) -> Any:
        import outlines

        base = getattr(self._model, "get_base_model", lambda: self._model)()
        return outlines.from_transformers(base, self._tok)

    def _cut_cache(self, n: int) -> None:
        if self._cache is not None and (have := self._cache.get_seq_length()) > n:
            self._cache.crop(n - have)  # a negative count: tokens to drop (every transformers version takes it)

    def _extend_model(self, new: list[int], pos: int, rows: int) -> np.ndarray:
        import torch
        from transformers import DynamicCache

        if self._cache is None or pos == 0:
            self._cache = DynamicCache()
        ids = torch.tensor([new], dtype=torch.long, device=self._device)
        try:
            with torch.inference_mode():
                out = self._model(input_ids=ids, use_cache=True, logits_to_keep=rows, **{self._cache_arg: self._cache})
        except RuntimeError as e:
            self._cut_cache(pos)
            raise EngineError(f"transformers forward failed: {e}", retryable=False) from e
        logits: np.ndarray = out.logits[0, -rows:].float().cpu().numpy()
        return logits

    def _cache_state(self) -> Any:
        import copy

        return copy.deepcopy(self._cache)

    def _set_cache_state(self, state: Any) -> bool:
        import copy

        self._cache = copy.deepcopy(state)
        return True

    def close(self) -> None:
        with self._lock:
            self._model = self._tok = self._cache = None
            self._reset()


def dequantized(gguf: Path, dtype: str = "float32") -> Path:
    """``gguf`` as a Hugging Face folder in ``dtype``, converted once (transformers dequantizes a
    GGUF in about 100 s on 2 cores; the cached folder loads in seconds) and cached by file identity."""
    import hashlib

    from agentkit.embedded import cache_dir
    from agentkit.gguf_to_hf import convert

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return convert(gguf, cache_dir() / "hf" / f"{gguf.stem}-{key}-{dtype}", dtype)
