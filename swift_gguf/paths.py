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

