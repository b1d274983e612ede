"""Tiny random-weight GGUF models of the architectures the layer-skip patch covers, for tests.

Each model has the tensor names, shapes and metadata the pinned llama.cpp expects for its
architecture (src/models/<arch>.cpp, load_arch_hparams / load_arch_tensors), a few layers,
64-wide embeddings, a ~380-token SentencePiece vocabulary made up here (byte fallback, so
any text tokenizes; `n_vocab` pads it to a real model's size, e.g. 49152 as SmolLM2's, where
logits handling should cost what it costs on a real model) and, for MoE architectures, 4
experts of which 2 are used.

Besides the N "real" random blocks, K inserted blocks are identities of the residual
stream: their attention output and FFN down projections (biases included; for MoE every
expert's and the shared expert's) are exact zeros, so both residual branches add exactly 0,
as in swift_gguf/redundancy.py (real models made redundant). Skipping exactly the inserted blocks must therefore
leave the logits bit-identical. Their indices are stored in the file under
`swift_gguf.testmodel.inserted_layers`.

CLI:  python -m swift_gguf.testmodels --arch ARCH --out PATH [--layers N] [--inserted K] [--seed S]
      [--vocab V]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGUFValueType, GGUFWriter

from .fileio import atomic_output

# Tensors whose output is added to the residual stream (matched by prefix, so biases, the
# experts' and the shared expert's down projections are included): zero in an inserted block.
ZEROED_PREFIXES = ("attn_output.", "ffn_down")
INSERTED_KEY = "swift_gguf.testmodel.inserted_layers"

# control tokens: their output rows are zero (logit exactly 0), so greedy decoding of a
# random model never stops early at an end-of-generation token
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


@dataclass(frozen=True)
class Dims:
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_ff: int = 96
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_exp: int = 32
    n_ff_shexp: int = 48
    n_ctx_train: int = 1024
    n_swa: int = 16          # small enough that short test prompts cross it
    n_embd_per_layer: int = 8  # Gemma 4's per-layer embeddings

    @property
    def q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv(self) -> int:
        return self.n_head_kv * self.head_dim


Shapes = dict[str, tuple[int, ...]]   # tensor name suffix -> shape in llama.cpp (ne0, ne1, ...) order


@dataclass(frozen=True)
class Arch:
    """What the pinned llama.cpp reads for one architecture."""
    kv: Callable[[Dims], dict]                  # "<arch>." keys (without the prefix)
    layer: Callable[[Dims, int, int], Shapes]   # (dims, layer, n_layer) -> that layer's tensors
    tied_output: bool = False                   # output = token_embd (no output.weight)
    kv_n: Callable[[Dims, int], dict] | None = None              # (dims, n_layer) -> more "<arch>." keys
    extra: Callable[[Dims, int, int], Shapes] | None = None      # (dims, n_layer, n_vocab) -> global tensors


def _attn(d: Dims, *, bias_o: bool = False) -> Shapes:
    t = {"attn_norm.weight": (d.n_embd,), "attn_q.weight": (d.n_embd, d.q),
         "attn_k.weight": (d.n_embd, d.kv), "attn_v.weight": (d.n_embd, d.kv),
         "attn_output.weight": (d.q, d.n_embd)}
    if bias_o:
        t["attn_output.bias"] = (d.n_embd,)
    return t


def _ffn(d: Dims) -> Shapes:
    return {"ffn_norm.weight": (d.n_embd,), "ffn_gate.weight": (d.n_embd, d.n_ff),
            "ffn_up.weight": (d.n_embd, d.n_ff), "ffn_down.weight": (d.n_ff, d.n_embd)}


def _moe(d: Dims) -> Shapes:
    e, f = d.n_expert, d.n_ff_exp
    return {"ffn_norm.weight": (d.n_embd,), "ffn_gate_inp.weight": (d.n_embd, e),
            "ffn_gate_exps.weight": (d.n_embd, f, e), "ffn_up_exps.weight": (d.n_embd, f, e),
            "ffn_down_exps.weight": (f, d.n_embd, e)}


def _llama4_moe(d: Dims) -> Shapes:
    f = d.n_ff_exp   # llama.cpp sizes Llama 4's shared expert like one routed expert
    return _moe(d) | {"ffn_gate_shexp.weight": (d.n_embd, f), "ffn_up_shexp.weight": (d.n_embd, f),
                      "ffn_down_shexp.weight": (f, d.n_embd)}


def _qk_norm(d: Dims) -> Shapes:
    return {"attn_q_norm.weight": (d.head_dim,), "attn_k_norm.weight": (d.head_dim,)}


def _common_kv(d: Dims) -> dict:
    return {"context_length": d.n_ctx_train, "embedding_length": d.n_embd, "feed_forward_length": d.n_ff,
            "attention.head_count": d.n_head, "attention.head_count_kv": d.n_head_kv,
            "attention.key_length": d.head_dim, "attention.value_length": d.head_dim,
            "rope.dimension_count": d.head_dim, "rope.freq_base": 10000.0,
            "attention.layer_norm_rms_epsilon": 1e-6}


def _moe_kv(d: Dims) -> dict:
    return {"expert_count": d.n_expert, "expert_used_count": d.n_expert_used,
            "expert_feed_forward_length": d.n_ff_exp}


ARCHS: dict[str, Arch] = {
    # Llama (SmolLM2, Llama 3): pre-norm attention and SwiGLU FFN, biasless
    "llama": Arch(kv=_common_kv, layer=lambda d, il, n: _attn(d) | _ffn(d)),
    # Gemma 2: post-norms after attention and FFN, alternating sliding-window / full layers,
    # soft-capped attention and final logits, output tied to the embeddings
    "gemma2": Arch(
        kv=lambda d: _common_kv(d) | {"attention.sliding_window": d.n_swa, "attn_logit_softcapping": 50.0,
                                      "final_logit_softcapping": 30.0},
        layer=lambda d, il, n: _attn(d) | _ffn(d) | {"post_attention_norm.weight": (d.n_embd,),
                                                      "post_ffw_norm.weight": (d.n_embd,)},
        tied_output=True),
    # Phi-3: fused gate+up projection (SwiGLU over 2*n_ff), biasless
    "phi3": Arch(
        kv=_common_kv,
        layer=lambda d, il, n: _attn(d) | {"ffn_norm.weight": (d.n_embd,), "ffn_up.weight": (d.n_embd, 2 * d.n_ff),
                                           "ffn_down.weight": (d.n_ff, d.n_embd)}),
    # Qwen2-MoE: routed experts plus a sigmoid-gated shared expert, q/k/v biases
    "qwen2moe": Arch(
        kv=lambda d: _common_kv(d) | _moe_kv(d) | {"expert_shared_feed_forward_length": d.n_ff_shexp},
        layer=lambda d, il, n: _attn(d) | {"attn_q.bias": (d.q,), "attn_k.bias": (d.kv,), "attn_v.bias": (d.kv,)}
        | _moe(d) | {"ffn_gate_inp_shexp.weight": (d.n_embd,), "ffn_gate_shexp.weight": (d.n_embd, d.n_ff_shexp),
                     "ffn_up_shexp.weight": (d.n_embd, d.n_ff_shexp), "ffn_down_shexp.weight": (d.n_ff_shexp, d.n_embd)}),
    # Qwen3-MoE: routed experts only, q/k RMS norms
    "qwen3moe": Arch(
        kv=lambda d: _common_kv(d) | _moe_kv(d),
        layer=lambda d, il, n: _attn(d) | _qk_norm(d) | _moe(d)),
    # Granite: scaled embeddings, residual branches and logits
    "granite": Arch(
        kv=lambda d: _common_kv(d) | {"logit_scale": 2.0, "residual_scale": 0.5, "embedding_scale": 2.0,
                                      "attention.scale": 0.25},
        layer=lambda d, il, n: _attn(d) | _ffn(d)),
    # OLMo 2: no pre-norms; RMS norms after attention and FFN, whole-width q/k norms
    "olmo2": Arch(
        kv=_common_kv,
        layer=lambda d, il, n: {k: v for k, v in _attn(d).items() if k != "attn_norm.weight"}
        | {"attn_q_norm.weight": (d.q,), "attn_k_norm.weight": (d.kv,), "post_attention_norm.weight": (d.n_embd,),
           "ffn_gate.weight": (d.n_embd, d.n_ff), "ffn_up.weight": (d.n_embd, d.n_ff),
           "ffn_down.weight": (d.n_ff, d.n_embd), "post_ffw_norm.weight": (d.n_embd,)}),
    # GLM-4: pre- and post-norms around attention and FFN, fused gate+up projection
    "glm4": Arch(
        kv=_common_kv,
        layer=lambda d, il, n: _attn(d) | {"post_attention_norm.weight": (d.n_embd,), "ffn_norm.weight": (d.n_embd,),
                                           "ffn_up.weight": (d.n_embd, 2 * d.n_ff), "ffn_down.weight": (d.n_ff, d.n_embd),
                                           "post_ffw_norm.weight": (d.n_embd,)}),
    # SmolLM3: llama-like, every 4th layer without RoPE (layer 3 here)
    "smollm3": Arch(
        kv=_common_kv,
        layer=lambda d, il, n: _attn(d) | _ffn(d)),
    # Mistral 3 (Ministral): llama-like with position-dependent attention temperature
    "mistral3": Arch(
        kv=lambda d: _common_kv(d) | {"attention.temperature_scale": 0.1},
        layer=lambda d, il, n: _attn(d) | _ffn(d)),
    # gpt-oss: alternating sliding-window / full layers with attention sinks, a MoE with biases
    # after a "post-attention" norm that is the FFN's pre-norm
    "gpt-oss": Arch(
        kv=lambda d: _common_kv(d) | _moe_kv(d) | {"attention.sliding_window": d.n_swa},
        layer=lambda d, il, n: _attn(d, bias_o=True) | {"post_attention_norm.weight": (d.n_embd,),
                                                       "attn_sinks.weight": (d.n_head,)}
        | {k: v for k, v in _moe(d).items() if k != "ffn_norm.weight"}
        | {"ffn_gate_inp.bias": (d.n_expert,), "ffn_gate_exps.bias": (d.n_ff_exp, d.n_expert),
           "ffn_up_exps.bias": (d.n_ff_exp, d.n_expert), "ffn_down_exps.bias": (d.n_embd, d.n_expert)}),
    # Llama 4: chunked attention on 3 of 4 layers (the 4th: full, no RoPE, attention temperature),
    # MoE with a shared expert on every 2nd layer
    "llama4": Arch(
        kv=lambda d: _common_kv(d) | _moe_kv(d) | {"interleave_moe_layer_step": 2},
        layer=lambda d, il, n: _attn(d) | (_llama4_moe(d) if (il + 1) % 2 == 0 else _ffn(d))),
    # DeepSeek-V2/V3 with multi-head latent attention (MLA, the K-only latent cache of current
    # GGUFs), one leading dense block, then MoE blocks with a shared expert
    "deepseek2": Arch(kv=lambda d: _deepseek2_kv(d), layer=lambda d, il, n: _deepseek2_layer(d, il)),
    # Gemma 4 (E2B/E4B-like, plus MoE blocks): sliding-window and full layers with their own head sizes
    # (full: twice as wide, proportional RoPE through rope_freqs), q/k norms and a parameter-free V
    # RMS norm, post-norms, per-layer embeddings (PLE, a residual branch after the FFN), a per-layer
    # output scale, the last 2 layers reading the KV cache of earlier ones (KV sharing), and on odd
    # layers a MoE block (shared MLP + routed experts). An inserted block's attention and FFN add
    # exactly 0, but its PLE branch and output scale are random: not an identity of the residual
    # stream, yet bypassing its sub-layers must leave the logits bit-identical (both stay computed).
    "gemma4": Arch(kv=lambda d: _gemma4_kv(d), kv_n=lambda d, n: _gemma4_kv_n(n),
                   layer=lambda d, il, n: _gemma4_layer(d, il, n), extra=lambda d, n, v: _gemma4_extra(d, n, v),
                   tied_output=True),
}

# DeepSeek-2 MLA sizes: latent ranks, and q/k heads of a no-RoPE part plus a RoPE part
_Q_RANK, _KV_RANK, _QK_NOPE, _QK_ROPE, _V_HEAD = 32, 32, 16, 16, 16


def _deepseek2_kv(d: Dims) -> dict:
    return _common_kv(d) | _moe_kv(d) | {
        "attention.head_count_kv": 1,                              # one latent "head" in the cache
        "attention.key_length": _KV_RANK + _QK_ROPE, "attention.value_length": _KV_RANK,
        "attention.key_length_mla": _QK_NOPE + _QK_ROPE, "attention.value_length_mla": _V_HEAD,
        "rope.dimension_count": _QK_ROPE,
        "attention.q_lora_rank": _Q_RANK, "attention.kv_lora_rank": _KV_RANK,
        "leading_dense_block_count": 1, "expert_shared_count": 1,
        "expert_weights_scale": 1.0, "expert_weights_norm": True}


def _deepseek2_layer(d: Dims, il: int) -> Shapes:
    h = d.n_head
    t = {"attn_norm.weight": (d.n_embd,), "attn_q_a_norm.weight": (_Q_RANK,), "attn_kv_a_norm.weight": (_KV_RANK,),
         "attn_q_a.weight": (d.n_embd, _Q_RANK), "attn_q_b.weight": (_Q_RANK, h * (_QK_NOPE + _QK_ROPE)),
         "attn_kv_a_mqa.weight": (d.n_embd, _KV_RANK + _QK_ROPE),
         "attn_k_b.weight": (_QK_NOPE, _KV_RANK, h), "attn_v_b.weight": (_KV_RANK, _V_HEAD, h),
         "attn_output.weight": (h * _V_HEAD, d.n_embd)}
    if il < 1:
        return t | _ffn(d)
    f = d.n_ff_exp
    return t | _moe(d) | {"ffn_gate_shexp.weight": (d.n_embd, f), "ffn_up_shexp.weight": (d.n_embd, f),
                          "ffn_down_shexp.weight": (f, d.n_embd)}


def gemma4_layout(n_layer: int) -> tuple[list[bool], int]:
    """Gemma 4 tiny model layout: (sliding-window flag per layer, number of shared-KV layers).
    With 4+ layers the last 2 share the KV cache: layer n-2 (full attention) reads that of layer
    n-3 (full), layer n-1 (sliding window) that of layer n-4 (sliding window), as llama.cpp maps
    them (n_layer_kv_from_start - 1 for full layers, - 2 for sliding-window ones). With the default
    4+2 layers the inserted block 3 is the KV source of the real layer 4."""
    if n_layer < 4:
        return [il % 2 == 0 for il in range(n_layer)], 0
    swa = [il % 4 != 3 for il in range(n_layer)]
    swa[n_layer - 4:] = [True, False, False, True]
    return swa, 2


def _gemma4_kv(d: Dims) -> dict:
    hd_full = 2 * d.head_dim
    return _common_kv(d) | _moe_kv(d) | {
        "attention.key_length": hd_full, "attention.value_length": hd_full, "rope.dimension_count": hd_full,
        "attention.key_length_swa": d.head_dim, "attention.value_length_swa": d.head_dim,
        "rope.dimension_count_swa": d.head_dim, "rope.freq_base_swa": 10000.0,
        "attention.sliding_window": d.n_swa, "final_logit_softcapping": 30.0,
        "embedding_length_per_layer_input": d.n_embd_per_layer}


def _gemma4_kv_n(n_layer: int) -> dict:
    swa, shared = gemma4_layout(n_layer)
    return {"attention.sliding_window_pattern": swa, "attention.shared_kv_layers": shared}


def _gemma4_layer(d: Dims, il: int, n: int) -> Shapes:
    swa, shared = gemma4_layout(n)
    hd = d.head_dim if swa[il] else 2 * d.head_dim
    e, pl = d.n_embd, d.n_embd_per_layer
    t = {"attn_norm.weight": (e,), "attn_q.weight": (e, d.n_head * hd), "attn_q_norm.weight": (hd,),
         "attn_output.weight": (d.n_head * hd, e), "post_attention_norm.weight": (e,)}
    if il < n - shared:   # a layer with its own KV cache; shared-KV layers have no K/V projections
        t |= {"attn_k.weight": (e, d.n_head_kv * hd), "attn_v.weight": (e, d.n_head_kv * hd),
              "attn_k_norm.weight": (hd,)}
    t |= _ffn(d) | {"post_ffw_norm.weight": (e,)}
    if il % 2 == 1:
        f, x = d.n_ff_exp, d.n_expert
        t |= {"ffn_gate_inp.weight": (e, x), "ffn_gate_inp.scale": (e,), "pre_ffw_norm_2.weight": (e,),
              "post_ffw_norm_1.weight": (e,), "post_ffw_norm_2.weight": (e,),
              "ffn_gate_exps.weight": (e, f, x), "ffn_up_exps.weight": (e, f, x), "ffn_down_exps.weight": (f, e, x)}
    return t | {"inp_gate.weight": (e, pl), "proj.weight": (pl, e), "post_norm.weight": (e,),
                "layer_output_scale.weight": (1,)}


def _gemma4_extra(d: Dims, n: int, n_vocab: int) -> Shapes:
    pl = d.n_embd_per_layer
    t = {"per_layer_token_embd.weight": (pl * n, n_vocab), "per_layer_model_proj.weight": (d.n_embd, pl * n),
         "per_layer_proj_norm.weight": (pl,)}
    if not all(gemma4_layout(n)[0]):
        t["rope_freqs.weight"] = (d.head_dim,)   # full layers: n_embd_head / 2 frequency factors
    return t


# ---------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------

def _vocab(size: int | None = None) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece ("llama") vocabulary: 3 control tokens, 256 byte tokens, printable
    ASCII pieces, and word-start pieces ("▁a") so ordinary text tokenizes into short ids;
    padded to `size` tokens with pieces "▁w0", "▁w1", ... where given."""
    tokens = list(SPECIAL_TOKENS)
    types = [2, 3, 3]          # UNKNOWN, CONTROL, CONTROL
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(6)        # BYTE
        scores.append(0.0)
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)] + ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    for p in pieces:
        tokens.append(p)
        types.append(1)        # NORMAL
        scores.append(-float(len(p)))
    if size is not None and size < len(tokens):
        raise ValueError(f"a vocabulary needs at least {len(tokens)} tokens, got {size}")
    for i in range((size or 0) - len(tokens)):
        tokens.append(f"\u2581w{i}")
        types.append(1)
        scores.append(-float(len(tokens[-1])))
    return tokens, scores, types


# ---------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------

def inserted_positions(n_real: int, n_inserted: int) -> list[int]:
    """Where the inserted identity blocks go among n_real + n_inserted layers: spread evenly,
    never layer 0, and the last layer is one (it exercises the output-row selection of a
    bypassed last layer)."""
    n = n_real + n_inserted
    if n_real < 1 or n_inserted < 0:
        raise ValueError("need at least one real layer and a non-negative number of inserted ones")
    pos = sorted({n - 1 - round(j * (n - 1) / (n_inserted + 1)) for j in range(n_inserted)})
    if len(pos) != n_inserted or 0 in pos:
        raise ValueError(f"cannot place {n_inserted} inserted blocks among {n_real} real ones")
    return pos


def _values(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random values of a plausible scale for the tensor's role (numpy order = reversed ne)."""
    np_shape = tuple(reversed(shape))
    if name.endswith(("norm.weight", "gate_inp.scale")):
        x = 1.0 + 0.1 * rng.standard_normal(np_shape)
    elif name == "layer_output_scale.weight":
        x = rng.uniform(0.5, 1.5, np_shape)
    elif name == "rope_freqs.weight":
        # Gemma 4's proportional RoPE as its converter writes it: a quarter of the pairs rotate,
        # the others get a huge frequency divisor (no rotation)
        x = np.full(np_shape, 1e30)
        x[: max(1, shape[0] // 4)] = 1.0
    elif name.endswith(".bias") or "sinks" in name:
        x = 0.05 * rng.standard_normal(np_shape)
    elif name == "token_embd.weight":
        x = rng.standard_normal(np_shape)
    else:
        x = rng.standard_normal(np_shape) / np.sqrt(shape[0])   # fan-in = ne0
    return x.astype(np.float32)


def build(arch: str, out: Path, n_real: int = 4, n_inserted: int = 2, seed: int = 0,
          dims: Dims = Dims(), n_vocab: int | None = None) -> dict:
    """Write a tiny model of `arch` to `out` (atomically); returns its description
    (n_layer, inserted_layers, ...). n_vocab: the vocabulary's size (default: the ~380 made-up tokens)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    spec = ARCHS[arch]
    n_layer = n_real + n_inserted
    inserted = inserted_positions(n_real, n_inserted)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab(n_vocab)
    n_vocab = len(tokens)

    out = Path(out)
    with atomic_output(out) as tmp:   # a test model is complete or absent
        w = GGUFWriter(tmp, arch=arch)
        w.add_name(f"swift-gguf test model, {n_real}+{n_inserted} layers")   # no arch: llama.cpp keys vocab quirks on names
        w.add_key_value(f"{arch}.block_count", n_layer, GGUFValueType.UINT32)
        keys = spec.kv(dims) | (spec.kv_n(dims, n_layer) if spec.kv_n else {})
        for key, value in keys.items():
            if isinstance(value, list):
                sub = GGUFValueType.BOOL if all(isinstance(v, bool) for v in value) else GGUFValueType.UINT32
                w.add_key_value(f"{arch}.{key}", value, GGUFValueType.ARRAY, sub_type=sub)
                continue
            vtype = (GGUFValueType.BOOL if isinstance(value, bool) else GGUFValueType.UINT32 if isinstance(value, int)
                     else GGUFValueType.FLOAT32 if isinstance(value, float) else GGUFValueType.STRING)
            w.add_key_value(f"{arch}.{key}", value, vtype)
        w.add_key_value(INSERTED_KEY, inserted, GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT32)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)

        embd = _values(rng, "token_embd.weight", (dims.n_embd, n_vocab))
        if spec.tied_output:
            # small rows: with tied embeddings a dominant input embedding makes the model repeat
            # its input token forever, which would make every draft right
            embd *= 0.1
            embd[: len(SPECIAL_TOKENS)] = 0.0
        w.add_tensor("token_embd.weight", embd)
        for il in range(n_layer):
            for suffix, shape in spec.layer(dims, il, n_layer).items():
                x = _values(rng, suffix, shape)
                if il in inserted and suffix.startswith(ZEROED_PREFIXES):
                    x[...] = 0.0
                w.add_tensor(f"blk.{il}.{suffix}", x)
        for name, shape in (spec.extra(dims, n_layer, n_vocab) if spec.extra else {}).items():
            w.add_tensor(name, _values(rng, name, shape))
        w.add_tensor("output_norm.weight", _values(rng, "output_norm.weight", (dims.n_embd,)))
        if not spec.tied_output:
            head = _values(rng, "output.weight", (dims.n_embd, n_vocab))
            head[: len(SPECIAL_TOKENS)] = 0.0
            w.add_tensor("output.weight", head)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"arch": arch, "out": str(out), "n_layer": n_layer, "n_real": n_real,
            "inserted_layers": inserted, "n_vocab": n_vocab, "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swift_gguf.testmodels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS), help="llama.cpp architecture name")
    ap.add_argument("--out", type=Path, required=True, help="output GGUF path")
    ap.add_argument("--layers", type=int, default=4, help="random (real) blocks (default 4)")
    ap.add_argument("--inserted", type=int, default=2, help="identity blocks inserted among them (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="vocabulary size, e.g. 49152 (default: the ~380 made-up tokens)")
    args = ap.parse_args(argv)
    try:
        meta = build(args.arch, args.out, args.layers, args.inserted, args.seed, n_vocab=args.vocab)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {meta['out']}: {meta['arch']}, {meta['n_layer']} layers "
          f"(identity blocks at {meta['inserted_layers']}), {meta['n_vocab']} tokens, {meta['bytes'] / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
