"""The patched llama.cpp symbols swift-gguf adds (patches/0001-layer-skip.patch and later).

This module alone owns them. Importing it checks that the loaded library has them
and, if not, says which library was loaded and how to build the patched one.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from .errors import NativeLibraryError

# 1: layer skip (0001); 2: CPU batches of up to 32 tokens are bit-identical to one-token decoding (0003)
ABI_VERSION = 2
BUILD_HINT = "python native/build.py   (or ./bootstrap.sh, which also sets up .venv)"

try:
    import llama_cpp
    from llama_cpp import llama_cpp as _llama_cpp
except ImportError as e:  # pragma: no cover - depends on the environment
    raise NativeLibraryError(
        f"llama-cpp-python is not installed in {sys.prefix} ({e}).\n"
        f"Fix: build and install the patched library: {BUILD_HINT}") from None

_lib: ctypes.CDLL = _llama_cpp._lib


def library_path() -> str:
    """The file of the loaded llama shared library."""
    return str(getattr(_lib, "_name", "?"))


def _bind(name: str, argtypes: list, restype):
    try:
        fn = getattr(_lib, name)
    except AttributeError:
        raise NativeLibraryError(
            f"the loaded llama.cpp library has no symbol {name}: it is not swift-gguf's patched build.\n"
            f"Loaded: {library_path()} (llama-cpp-python {llama_cpp.__version__}).\n"
            f"Fix: {BUILD_HINT}") from None
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


# int32_t llama_swift_abi_version(void);
_abi_version = _bind("llama_swift_abi_version", [], ctypes.c_int32)
# bool llama_swift_layer_skip_supported(const struct llama_model * model);
_supported = _bind("llama_swift_layer_skip_supported", [ctypes.c_void_p], ctypes.c_bool)
# int32_t llama_swift_layer_skip_architectures(const char ** names, int32_t n_names);
_archs = _bind("llama_swift_layer_skip_architectures",
               [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int32], ctypes.c_int32)
# int32_t llama_swift_set_layer_skip(struct llama_context * ctx, const uint8_t * mask, int32_t n_mask);
_set_skip = _bind("llama_swift_set_layer_skip",
                  [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int32], ctypes.c_int32)
# void llama_swift_clear_layer_skip(struct llama_context * ctx);
_clear_skip = _bind("llama_swift_clear_layer_skip", [ctypes.c_void_p], None)
# int32_t llama_swift_get_layer_skip(const struct llama_context * ctx, uint8_t * mask, int32_t n_mask);
_get_skip = _bind("llama_swift_get_layer_skip",
                  [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int32], ctypes.c_int32)
# void llama_swift_graph_stats(const struct llama_context * ctx, int64_t * n_built, int64_t * n_reused);
_graph_stats = _bind("llama_swift_graph_stats",
                     [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64)], None)

if _abi_version() != ABI_VERSION:
    raise NativeLibraryError(
        f"the patched llama.cpp library speaks layer-skip ABI {_abi_version()}, this swift-gguf needs "
        f"{ABI_VERSION}. Loaded: {library_path()}.\nFix: rebuild it: {BUILD_HINT}")

# enum llama_swift_status (results of llama_swift_set_layer_skip)
LLAMA_SWIFT_OK = 0
LLAMA_SWIFT_ERR_UNSUPPORTED_ARCH = -1
LLAMA_SWIFT_ERR_INVALID_MASK = -2
_SET_ERRORS = {
    LLAMA_SWIFT_ERR_UNSUPPORTED_ARCH: "this model's architecture does not honour the layer-skip mask",
    LLAMA_SWIFT_ERR_INVALID_MASK: "the mask has the wrong length or unknown bits",
}


def layer_skip_supported(model_ptr) -> bool:
    """Whether the model's graph builder honours the skip mask."""
    return bool(_supported(model_ptr))


@functools.lru_cache(maxsize=1)
def layer_skip_architectures() -> tuple[str, ...]:
    """The architectures (GGUF general.architecture names) whose graphs honour the skip mask,
    as the loaded library says: the one list, kept in the patch next to the call sites."""
    n = _archs(None, 0)
    names = (ctypes.c_char_p * n)()
    _archs(names, n)
    return tuple(name.decode() for name in names)


@contextlib.contextmanager
def context_env(**values: str | None) -> Iterator[None]:
    """Set environment variables (None removes one) while a llama.cpp context is created:
    llama.cpp reads LLAMA_SWIFT_GRAPH_CACHE and LLAMA_GRAPH_REUSE_DISABLE in its constructor."""
    old = {k: os.environ.get(k) for k in values}
    _put_env(values)
    try:
        yield
    finally:
        _put_env(old)


def _put_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@functools.lru_cache(maxsize=8)
def _u8_array(n: int) -> type:
    """ctypes.c_uint8 * n, made once per length (making an array type costs tens of us per draft cycle)."""
    return ctypes.c_uint8 * n


def set_layer_skip(ctx_ptr, mask: bytes | bytearray | None) -> None:
    """Set the skip mask (one byte per layer: ATTN | FFN bits) for following decodes."""
    if not mask:
        _clear_skip(ctx_ptr)
        return
    buf = _u8_array(len(mask)).from_buffer_copy(bytes(mask))
    rc = _set_skip(ctx_ptr, buf, len(mask))
    if rc != LLAMA_SWIFT_OK:
        raise ValueError(f"llama_swift_set_layer_skip: {_SET_ERRORS.get(rc, f'error {rc}')}")


def clear_layer_skip(ctx_ptr) -> None:
    _clear_skip(ctx_ptr)


def get_layer_skip(ctx_ptr, n_layer: int) -> bytes:
    """The current mask (empty when none is set)."""
    buf = (ctypes.c_uint8 * max(n_layer, 1))()
    n = _get_skip(ctx_ptr, buf, n_layer)
    return bytes(buf[:n])


def graph_stats(ctx_ptr) -> tuple[int, int]:
    """(graphs built, graphs reused) by this context since its creation."""
    built, reused = ctypes.c_int64(), ctypes.c_int64()
    _graph_stats(ctx_ptr, ctypes.byref(built), ctypes.byref(reused))
    return built.value, reused.value


def build_info() -> dict:
    """What native/build.py recorded when it installed the library (empty if unknown)."""
    try:
        return json.loads((Path(sys.prefix) / "swift-gguf-native.json").read_text())
    except (OSError, ValueError):
        return {}


def backends() -> list[str]:
    """Names of the ggml backend devices the library can use (e.g. CPU, CUDA0, Metal)."""
    names = []
    try:
        n = _llama_cpp.ggml_backend_dev_count()
        for i in range(n):
            dev = _llama_cpp.ggml_backend_dev_get(i)
            names.append(_llama_cpp.ggml_backend_dev_name(dev).decode())
    except AttributeError:
        info = _llama_cpp.llama_print_system_info().decode()
        names = ["CPU"] + (["GPU offload"] if _llama_cpp.llama_supports_gpu_offload() else [])
        del info
    return names


def gpu_offload_supported() -> bool:
    """Whether this build can offload layers to a GPU (CUDA, Metal, ...)."""
    return bool(_llama_cpp.llama_supports_gpu_offload())


# Backends whose verification batches (up to 32 tokens) compute every row bit for bit as a
# one-token decode does (patch 0003). Elsewhere (CUDA: per-batch-size matmul kernels, issue #17)
# greedy speculative output can differ from plain decoding at near-ties.
EXACT_BACKENDS = ("cpu",)


def verification_is_exact(backend: str) -> bool:
    """Whether speculative output on `backend` (SwiftLlama.backend, e.g. "cpu", "CUDA0-ngl-1") is
    guaranteed to equal plain decoding's."""
    return backend.lower() in EXACT_BACKENDS
