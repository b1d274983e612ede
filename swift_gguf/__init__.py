"""swift-gguf: self-speculative decoding by layer skipping (SWIFT) for GGUF models on llama.cpp.

The heavy imports (llama_cpp and the patched native library) happen on first use,
so `swift_gguf.paths`, `swift_gguf.models` and the build driver work before the
patched library is installed.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "SwiftLlama": ("api", "SwiftLlama"),
    "SamplingParams": ("sampling", "SamplingParams"),
    "SkipSet": ("skipset", "SkipSet"),
    "SpecConfig": ("engine", "SpecConfig"),
    "GenStats": ("engine", "GenStats"),
    "Token": ("engine", "Token"),
    "SearchConfig": ("search", "SearchConfig"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
