"""patch 0003: on the CPU, a verification batch (Runtime.verify: the setting on for that decode)
computes each token bit for bit as a one-token decode does, for every weight type and with or
without flash attention; every other batch runs upstream's kernels.

Speculative verification is lossless only if the verifier's logits for a drafted position are
exactly the logits plain decoding would compute there. Upstream's CPU backend sums in another
order for batches (llamafile sgemm for n >= 2, the tiled K-quant path for n >= 8, repacked gemm
for n >= 4, mmla 2x2 dot products): measured before the patch, rows differed from one-token
decoding by up to 1.3 in logits on gemma-3-270m Q4_K_M (with and without flash attention) and
on SmolLM2 without flash attention, so greedy speculative output could differ from plain output.

SmolLM2 Q4_1 exercises the multi-column Q4_1 kernel and the Q8_0 output matrix; gemma-3-270m
Q4_K_M exercises Q4_K (repacked), Q5_0, Q6_K (tiled) and Q8_0.
"""
from __future__ import annotations

import numpy as np
import pytest

from swift_gguf.api import SwiftLlama
from swift_gguf.models import resolve_model
from swift_gguf.sampling import SamplingParams
from swift_gguf.skipset import SkipSet

BATCH_SIZES = (2, 5, 9, 17, 32)   # 32 = native.INVARIANT_MAX_BATCH (Runtime.verify)


def _load(name: str, flash_attn: bool, n_ctx: int = 1024) -> SwiftLlama:
    path = resolve_model(name, progress=False)
    return SwiftLlama(str(path), n_ctx=n_ctx, n_threads=2, n_threads_batch=2, flash_attn=flash_attn,
                      profile=None, spec="off")


def batch_and_single(llm: SwiftLlama, prefix: list[int], cont: list[int], *,
                     verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits of cont evaluated as one batch after prefix (a verification batch, or a plain one
    with upstream's kernels), and one token at a time."""
    rt = llm.rt
    rt.clear()
    rt.decode(prefix, 0)
    n0 = len(prefix)
    if verify:
        rt.verify(cont, n0)
    else:
        rt.decode(cont, n0, all_logits=True)
    batch = rt.logits_rows(len(cont)).copy()
    rt.remove(0, n0, -1)
    single = []
    for i, t in enumerate(cont):
        rt.decode([t], n0 + i)
        single.append(rt.logits(-1).copy())
    rt.clear()
    return batch, np.array(single)


def _continuation(llm: SwiftLlama, text: str, n: int) -> list[int]:
    """n tokens that read like text (repeated as needed)."""
    toks = llm.tokenize((" " + text).encode(), add_bos=False)
    return (toks * (n // len(toks) + 1))[:n]


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "no-fa"])
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_verification_batches_equal_one_token_decoding(name, flash_attn, bench_prompts):
    llm = _load(name, flash_attn)
    try:
        for p in bench_prompts[::8]:   # chat, code, summarize
            prefix = llm.tokenize(p["prompt"].encode())
            for n in BATCH_SIZES:
                batch, single = batch_and_single(llm, prefix, _continuation(llm, p["prompt"], n))
                diff = float(np.abs(batch - single).max())
                assert diff == 0.0, f"{name} fa={flash_attn} prompt {p['id']} batch {n}: max |diff| {diff}"
    finally:
        llm.close()


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "no-fa"])
def test_only_verification_batches_are_invariant(flash_attn, bench_prompts):
    """Invariance is a setting Runtime.verify turns on for its decode alone: any other batch (a
    prompt) runs upstream's kernels, bit for bit what an unpatched llama.cpp computes, and those
    sum in another order than one-token decoding (Gemma 3's K-quants: the tiled and repacked paths)."""
    llm = _load("gemma3-270m", flash_attn, n_ctx=2048)
    try:
        p = bench_prompts[0]["prompt"]
        prefix, cont = llm.tokenize(p.encode()), _continuation(llm, p, 9)
        batch, single = batch_and_single(llm, prefix, cont, verify=False)
        assert float(np.abs(batch - single).max()) > 1e-3
        batch, single = batch_and_single(llm, prefix, cont)
        assert float(np.abs(batch - single).max()) == 0.0
        # and a plain batch after a verification is upstream's again
        batch, single = batch_and_single(llm, prefix, cont, verify=False)
        assert float(np.abs(batch - single).max()) > 1e-3
    finally:
        llm.close()


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_long_context_attention_is_batch_invariant(name, bench_prompts):
    """Past 256 used KV cells (llama.cpp pads to 512+) upstream splits a one-token decode's
    attention into one chunk of cells per thread, and the chunks depend on the padded cell count;
    the patch computes each row of a verification batch with its own decode's chunks. The
    prefixes make batches cross the 256, 512 and 768 padding boundaries and stay inside one."""
    llm = _load(name, True, n_ctx=2048)
    try:
        text = " ".join(p["prompt"] for p in bench_prompts)
        for n_prefix, n in ((250, 9), (505, 17), (760, 32), (900, 9)):
            prefix = _continuation(llm, text, n_prefix)
            batch, single = batch_and_single(llm, prefix, _continuation(llm, "The answer is", n))
            diff = float(np.abs(batch - single).max())
            assert diff == 0.0, f"{name}: prefix {n_prefix}, batch {n}: max |diff| {diff}"
    finally:
        llm.close()


def test_gemma3_speculative_greedy_equals_plain(bench_prompts):
    """The consequence on a K-quant model: swift greedy output is plain greedy output."""
    llm = _load("gemma3-270m", True)
    rng = np.random.default_rng(3)
    skip = SkipSet.from_indices(llm.rt.n_layer, rng.choice(2 * (llm.rt.n_layer - 2), size=8, replace=False))
    cfg = llm.engine.config
    try:
        drafted = 0
        for p in bench_prompts[::6]:   # chat, story, math, rewrite
            toks = llm.tokenize(p["prompt"].encode())
            outs = {}
            for mode in ("off", "swift"):
                cfg.mode, cfg.skip, cfg.draft_max = mode, skip, 6
                llm.reset()
                outs[mode] = [t.id for t in llm.generate_tokens(toks, SamplingParams(), max_tokens=64)]
            assert outs["swift"] == outs["off"], p["id"]
            drafted += llm.last_stats.drafted
        assert drafted > 0
    finally:
        llm.close()
