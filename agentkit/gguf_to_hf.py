"""Convert a GGUF model into a Hugging Face folder (safetensors, dequantized), for the engines that
cannot read GGUF: a vLLM server on CPU, transformers, LoRA training.

Runs in an environment with torch and transformers (for example the vLLM one); it imports nothing
from agentkit, so it can be run by path::

    .vllm-venv/bin/python agentkit/gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bfloat16]

OUT_DIR is written as a temporary folder beside it, every file synced to disk, and renamed into place
at the end, with a manifest (``agentkit-manifest.json``: each file's size and sha256, the source file
and the dtype). A cached folder is reused only if every file it lists still has its size and hash
(checked each time it is reused, that is once per model load; a few seconds for a 1 GB model): a
folder that fails, or that has no manifest, is converted again. The temporary folder of a conversion
that was killed is removed by the next one (a running conversion holds a lock inside its folder).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MANIFEST", "convert", "main", "verified"]

MANIFEST = "agentkit-manifest.json"
"""The file, inside a converted folder, that lists its files' sizes and sha256."""

_LOCK = ".converting.lock"
_STALE_AFTER_S = 60.0


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """Dequantize ``gguf`` into ``out`` (model + tokenizer); returns ``out``. A folder already there
    is reused when :func:`verified`, converted again otherwise."""
    if verified(out, dtype):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_folders(out)
    with _temporary_folder(out) as tmp:
        _dequantize(gguf, tmp, dtype)
        _write_manifest(tmp, gguf, dtype)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        _sync_folder(out.parent)
    return out


def verified(out: Path, dtype: str | None = None) -> bool:
    """``out`` is a complete conversion (in ``dtype``, if given) whose files all match its manifest."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if dtype is not None and manifest.get("dtype") != dtype:
            return False
        if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
            return False
        for name, want in files.items():
            path = out / name
            if path.stat().st_size != want["size"] or _sha256(path) != want["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _dequantize(gguf: Path, folder: Path, dtype: str) -> None:
    """The model and tokenizer of ``gguf``, dequantized to ``dtype``, saved into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=getattr(torch, dtype))
    # dequantized on load: save it as a plain model (transformers' types do not declare the attribute it sets)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_manifest(folder: Path, gguf: Path, dtype: str) -> None:
    """Every file of ``folder`` synced to disk and listed, with its size and sha256, in its manifest."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _LOCK):
        with path.open("rb") as f:
            os.fsync(f.fileno())
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"source": {"file": gguf.name, "size": gguf.stat().st_size}, "dtype": dtype, "files": files}
    with (folder / MANIFEST).open("w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # POSIX only: a folder cannot be opened on Windows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- temporary folders: a killed conversion's folder is removed by the next one ----------------


def _prefix(out: Path) -> str:
    return f".{out.name}.converting-"


@contextmanager
def _temporary_folder(out: Path) -> Iterator[Path]:
    """A new folder beside ``out``, locked (a lock file inside it) while it is written; removed
    unless it was renamed to ``out``."""
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(out), dir=out.parent))
    try:
        with (tmp / _LOCK).open("wb") as lock:
            _lock(lock.fileno())
            yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            (out / _LOCK).unlink()  # renamed along with the folder


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: an open file's folder cannot be removed, which is the lock
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def _abandoned(folder: Path) -> bool:
    """No conversion is writing ``folder``: its lock is free and it was not created just now."""
    lock = folder / _LOCK
    try:
        if time.time() - folder.stat().st_mtime < _STALE_AFTER_S:
            return False
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return True  # old enough and never locked: left by a conversion killed at its start
    except OSError:
        return False
    try:
        import fcntl
    except ImportError:
        os.close(fd)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _remove_stale_folders(out: Path) -> list[Path]:
    """Remove the temporary folders killed conversions of ``out`` left beside it; returns those removed."""
    removed = []
    for folder in sorted(out.parent.glob(_prefix(out) + "*")):
        if folder.is_dir() and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


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
