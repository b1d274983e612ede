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
# The invariant ubatch size the setting is turned on with: verification batches (up to limits.MAX_VERIFY)
# are decoded in ubatches of at most this many tokens, and the graph cache of 0002 uses the same bound
# (one constant, kept in a module the policy layer imports without llama_cpp)
from .limits import INVARIANT_UBATCH

# 1: layer skip (0001); 2: CPU batches of up to 32 tokens are bit-identical to one-token decoding (0003);
# 3: that batch invariance is a per-context setting, off by default (set_batch_invariance);
# 4: ... and it matches one-token decodes run with the context's n_threads whatever n_threads_batch is;
# 5: ... and while it is on, llama_decode splits longer batches into invariant ubatches
ABI_VERSION = 5
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
# void llama_swift_set_batch_invariance(struct llama_context * ctx, int32_t max_batch);
_set_invariance = _bind("llama_swift_set_batch_invariance", [ctypes.c_void_p, ctypes.c_int32], None)
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


def set_batch_invariance(ctx_ptr, max_batch: int = INVARIANT_UBATCH) -> None:
    """On the CPU, batches of up to max_batch tokens give every token the logits a one-token decode
    gives it (speculative verification is then lossless), and longer ones are decoded as ubatches of
    max_batch, each so; 0, llama.cpp's default, is upstream's kernels and ubatch size for every batch
    (prompt processing stays bit-identical to an unpatched llama.cpp)."""
    _set_invariance(ctx_ptr, max_batch)


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
        names = ["CPU"] + (["GPU offload"] if gpu_offload_supported() else [])
        # RPC workers' devices, once `--rpc` / rpc_servers registered them (RPC0, RPC1, ...)
        names += [name for name, _, _, reg in devices() if reg == "RPC"]
        del info
    return names


def gpu_offload_supported() -> bool:
    """Whether this build can offload layers to a local GPU (CUDA, Metal, ...).

    llama_supports_gpu_offload() also says yes for a build with the RPC backend alone; RPC
    workers are not a local GPU (and are used only with --rpc).
    """
    devs = devices()
    if devs:
        return any(kind in (GGML_DEV_TYPE_GPU, GGML_DEV_TYPE_IGPU) and reg != "RPC" for _, _, kind, reg in devs)
    return bool(_llama_cpp.llama_supports_gpu_offload())


# Backends whose verification batches (up to 64 tokens, ubatches of 32) compute every row bit for bit as a
# one-token decode does (patch 0003). Elsewhere (CUDA: per-batch-size matmul kernels, issue #17)
# greedy speculative output can differ from plain decoding at near-ties.
EXACT_BACKENDS = ("cpu",)


def verification_is_exact(backend: str) -> bool:
    """Whether speculative output on `backend` (SwiftLlama.backend, e.g. "cpu", "CUDA0-ngl-1") is
    guaranteed to equal plain decoding's."""
    return backend.lower() in EXACT_BACKENDS


# -- llama.cpp's RPC backend (ggml-rpc, with patches/0005-rpc-errors.patch) ---------------------
# ggml's device registry and the RPC functions are looked up through libllama's handle: a wheel
# holds libggml*.so, .so.0 and .so.0.x as separate copies (zip has no symlinks), so loading one by
# name would give a second ggml with its own registry, which the model loader never sees.

GGML_DEV_TYPE_CPU, GGML_DEV_TYPE_GPU, GGML_DEV_TYPE_IGPU, GGML_DEV_TYPE_ACCEL = 0, 1, 2, 3


def _fn(name: str, argtypes: list, restype):
    """A symbol of libllama or its ggml libraries, or None when this build lacks it."""
    try:
        fn = getattr(_lib, name)
    except AttributeError:
        return None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_dev_count = _fn("ggml_backend_dev_count", [], ctypes.c_size_t)
_dev_get = _fn("ggml_backend_dev_get", [ctypes.c_size_t], ctypes.c_void_p)
_dev_name = _fn("ggml_backend_dev_name", [ctypes.c_void_p], ctypes.c_char_p)
_dev_description = _fn("ggml_backend_dev_description", [ctypes.c_void_p], ctypes.c_char_p)
_dev_type = _fn("ggml_backend_dev_type", [ctypes.c_void_p], ctypes.c_int)
_dev_reg = _fn("ggml_backend_dev_backend_reg", [ctypes.c_void_p], ctypes.c_void_p)
_reg_name = _fn("ggml_backend_reg_name", [ctypes.c_void_p], ctypes.c_char_p)
_reg_dev_count = _fn("ggml_backend_reg_dev_count", [ctypes.c_void_p], ctypes.c_size_t)
_reg_dev_get = _fn("ggml_backend_reg_dev_get", [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p)
_register = _fn("ggml_backend_register", [ctypes.c_void_p], None)

# ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint);
_rpc_add_server = _fn("ggml_backend_rpc_add_server", [ctypes.c_char_p], ctypes.c_void_p)
# void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir, size_t n_threads,
#                                    size_t n_devices, ggml_backend_dev_t * devices);
_rpc_start_server = _fn("ggml_backend_rpc_start_server",
                        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                         ctypes.POINTER(ctypes.c_void_p)], None)
# patch 0005: uint64_t ggml_backend_rpc_error_count(void); size_t ggml_backend_rpc_last_error(char *, size_t);
_rpc_error_count = _fn("ggml_backend_rpc_error_count", [], ctypes.c_uint64)
_rpc_last_error = _fn("ggml_backend_rpc_last_error", [ctypes.c_char_p, ctypes.c_size_t], ctypes.c_size_t)


def rpc_supported() -> bool:
    """Whether this build has llama.cpp's RPC backend with swift-gguf's error reporting (0005)."""
    return None not in (_rpc_add_server, _rpc_start_server, _rpc_error_count, _register, _reg_dev_get)


def rpc_unsupported_reason() -> str:
    if _rpc_add_server is None:
        return (f"this llama.cpp build has no RPC backend ({library_path()}).\n"
                f"Fix: rebuild with it (on by default on Linux and macOS): {BUILD_HINT}")
    return (f"this llama.cpp build's RPC backend lacks swift-gguf's error reporting (patch 0005).\n"
            f"Fix: rebuild: {BUILD_HINT}")


def devices() -> list[tuple[str, str, int, str]]:
    """(name, description, type, backend registry name) of every registered ggml device."""
    if _dev_count is None:
        return []
    out = []
    for i in range(_dev_count()):
        dev = _dev_get(i)
        out.append((_dev_name(dev).decode(), _dev_description(dev).decode(), _dev_type(dev),
                    _reg_name(_dev_reg(dev)).decode()))
    return out


def rpc_add_server(endpoint: str) -> list[str]:
    """Register a worker's devices (llama.cpp's `--rpc`): later model loads offload layers to them.

    Returns the new devices' names; an empty list when the worker did not answer (see
    rpc_last_error). Registering an endpoint twice would duplicate its devices: callers keep
    track (swift_gguf.rpc does).
    """
    reg = _rpc_add_server(endpoint.encode())
    if not reg:
        return []
    _register(reg)
    return [_dev_name(_reg_dev_get(reg, i)).decode() for i in range(_reg_dev_count(reg))]


def rpc_start_server(endpoint: str, n_threads: int, device_names: list[str]) -> None:
    """Serve the named devices to RPC clients; returns only if the server stops (e.g. bind failed)."""
    by_name = {_dev_name(_dev_get(i)).decode(): _dev_get(i) for i in range(_dev_count())}
    devs = (ctypes.c_void_p * len(device_names))(*[by_name[n] for n in device_names])
    _rpc_start_server(endpoint.encode(), None, n_threads, len(device_names), devs)


def rpc_error_count() -> int:
    """RPC connection failures in this process so far (0 without the RPC backend)."""
    return int(_rpc_error_count()) if _rpc_error_count is not None else 0


def rpc_last_error() -> str:
    """The latest RPC connection failure, e.g. 'RPC server 127.0.0.1:50052: connection lost during GET_TENSOR ...'."""
    if _rpc_last_error is None:
        return ""
    buf = ctypes.create_string_buffer(1024)
    _rpc_last_error(buf, len(buf))
    return buf.value.decode(errors="replace")
