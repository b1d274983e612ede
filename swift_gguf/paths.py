"""Where swift-gguf keeps its files: models, built wheels, skip profiles."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """Root of swift-gguf's cache: $SWIFT_GGUF_HOME, else the user cache directory."""
    if os.environ.get("SWIFT_GGUF_HOME"):
        return Path(os.environ["SWIFT_GGUF_HOME"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "swift-gguf"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swift-gguf"


def models_dir() -> Path:
    return cache_dir() / "models"


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
