"""A peft LoRA adapter for llama.cpp: written as a GGUF LoRA (with the ``gguf`` package's own
tensor-name map), which llama.cpp applies to the original quantized model
(``embedded:qwen2.5-0.5b?adapter=ADAPTER.gguf``), or folded into a copy of that model (what a tuned
tier serves: no per-token LoRA work). gguf is imported inside the functions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentkit.embedded import sha256_file
from agentkit.errors import ConfigError, ModelUnavailableError

__all__ = ["adapter_to_gguf", "merge_to_gguf"]


def adapter_to_gguf(adapter_dir: str | Path, out: str | Path, base: str | Path) -> Path:
    """Write a peft LoRA adapter as a GGUF LoRA adapter for the GGUF model ``base`` (llama.cpp's
    ``lora_path``): tensors renamed with the ``gguf`` package's map for the base's architecture,
    ``lora_a``/``lora_b`` in float32, ``adapter.lora.alpha`` from the adapter's config."""
    try:
        import gguf
        import numpy as np
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ModelUnavailableError(
            "converting an adapter needs gguf and safetensors", hint="pip install 'agentkit[hf]'"
        ) from e
    adapter_dir, out = Path(adapter_dir), Path(out)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise ConfigError("only plain LoRA adapters convert to GGUF (not DoRA / rsLoRA)")
    reader = gguf.GGUFReader(str(base))
    arch = _field(reader, "general.architecture")
    n_layers = int(_field(reader, f"{arch}.block_count"))
    arch_id = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_id, n_layers)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
    written = 0
    for key in sorted(tensors):
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise ConfigError(f"unexpected adapter tensor {key}")
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise ConfigError(f"no GGUF name for {module} in a {arch} model")
        suffix = ".lora_a" if part == "A.weight" else ".lora_b"
        writer.add_tensor(target + suffix, np.ascontiguousarray(tensors[key].astype(np.float32)))
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if not written:
        raise ConfigError(f"{adapter_dir} holds no LoRA tensors")
    return out


def merge_to_gguf(adapter_gguf: str | Path, base: str | Path, out: str | Path) -> Path:
    """Fold a GGUF LoRA into a copy of its GGUF model: each adapted weight becomes
    ``W + alpha/r * B @ A`` (``W`` dequantized), stored as Q8_0; every other tensor and all metadata
    are copied as they are. The merged model answers as the adapter on the base does (to within
    Q8_0 rounding) without llama.cpp's two extra matrix products per adapted weight and token."""
    try:
        import gguf
        import numpy as np
    except ImportError as e:
        raise ModelUnavailableError("merging an adapter needs gguf", hint="pip install 'agentkit[hf]'") from e
    adapter_gguf, base, out = Path(adapter_gguf), Path(base), Path(out)
    lora = gguf.GGUFReader(str(adapter_gguf))
    alpha = float(_field(lora, gguf.Keys.Adapter.LORA_ALPHA))
    parts = {t.name: np.asarray(t.data, dtype=np.float32) for t in lora.tensors}
    reader = gguf.GGUFReader(str(base))
    arch = _field(reader, "general.architecture")
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.alignment":
            writer.add_custom_alignment(int(f.contents()))
            continue
        vtype = f.types[0]
        sub_type = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), vtype, sub_type=sub_type)
    writer.add_string("agentkit.merged_adapter.sha256", sha256_file(adapter_gguf))
    merged = 0
    q8 = gguf.GGMLQuantizationType.Q8_0
    for t in reader.tensors:
        a, b = parts.get(t.name + ".lora_a"), parts.get(t.name + ".lora_b")
        if a is None or b is None:
            quantized = t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type if quantized else None)
            continue
        weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        delta = (alpha / a.shape[0]) * (b @ a)
        if delta.shape != weight.shape:
            raise ConfigError(f"adapter tensor for {t.name} has shape {delta.shape}, the model {weight.shape}")
        writer.add_tensor(t.name, gguf.quants.quantize(weight + delta, q8), raw_dtype=q8)
        merged += 1
    if not merged:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{adapter_gguf} adapts no tensor of {base.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        raise ConfigError(f"the base GGUF has no {key}")
    value = f.parts[f.data[0]]
    return bytes(value).decode() if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value[0]
