"""Small file helpers shared by the package and native/build.py.

Standard library only: native/build.py imports this before anything is installed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

CHUNK = 1 << 20


def sha256_file(path: Path, on_block: Callable[[int], object] | None = None) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks; on_block(n) after each (a progress bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
    return digest.hexdigest()


def _temp_beside(path: Path) -> Path:
    """A hidden temporary name in path's folder (same file system, so os.replace is atomic);
    the pid keeps concurrent writers apart."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the whole file to; it becomes `path` when the block
    ends without an error (readers see the old file or the new one, never half of one), and is
    removed when it raises (an interrupt included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy src to dest so that dest is absent or complete, never partly written."""
    with atomic_output(dest) as tmp:
        shutil.copy2(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
