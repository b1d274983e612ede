"""Small file helpers shared by the package and native/build.py.

Standard library only: native/build.py imports this before anything is installed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

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


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy src to dest so that dest is absent or complete, never partly written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(dest)
    try:
        shutil.copy2(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
