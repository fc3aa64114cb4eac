"""Convert a GGUF model into a Hugging Face folder (safetensors, dequantized), for the engines that
cannot read GGUF: a vLLM server on CPU, transformers, LoRA training.

Runs in an environment with torch and transformers (for example the vLLM one); it imports nothing
from agentkit, so it can be run by path::

    .vllm-venv/bin/python agentkit/gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bfloat16]

OUT_DIR is written atomically (a temporary folder renamed at the end) and left alone if it is
already complete, so a cache of it is safe to reuse.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["convert", "main"]


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """Dequantize ``gguf`` into ``out`` (model + tokenizer); returns ``out``."""
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    # dequantized on load: save it as a plain model (transformers' types do not declare the attribute it sets)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gguf", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    args = p.parse_args()
    if not args.gguf.is_file():
        sys.exit(f"no such GGUF file: {args.gguf}")
    print(convert(args.gguf, args.out, args.dtype))


if __name__ == "__main__":
    main()
