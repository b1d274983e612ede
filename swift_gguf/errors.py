"""Errors users see. Each message names the cause and the fix."""
from __future__ import annotations


class SwiftGGUFError(Exception):
    """Base class: a user-facing error whose message says what is wrong and what to do."""


class NativeLibraryError(SwiftGGUFError):
    """The loaded llama.cpp library lacks swift-gguf's patch."""


class ModelFileError(SwiftGGUFError):
    """A model file is missing, unreadable, not GGUF, or truncated."""


class ModelFetchError(SwiftGGUFError):
    """A model could not be fetched (package index, Hugging Face)."""


class DecodeError(SwiftGGUFError):
    """llama_decode failed; the message translates its return code."""


class ContextFullError(SwiftGGUFError):
    """The prompt does not fit in the context window."""


class RpcError(SwiftGGUFError):
    """An RPC worker (llama.cpp's RPC backend) is unreachable, refused, or was lost mid-generation."""
