"""patch 0003: on the CPU, a verification batch (Runtime.verify: the setting on for that decode)
computes each token bit for bit as a one-token decode does, for every weight type, with or
without flash attention, whatever the thread counts; every other batch runs upstream's kernels.

Speculative verification is lossless only if the verifier's logits for a drafted position are
exactly the logits plain decoding would compute there. Upstream's CPU backend sums in another
order for batches (llamafile sgemm for n >= 2, the tiled K-quant path for n >= 8, repacked gemm
for n >= 4, mmla 2x2 dot products): measured before the patch, rows differed from one-token
decoding by up to 1.3 in logits on gemma-3-270m Q4_K_M (with and without flash attention) and
on SmolLM2 without flash attention, so greedy speculative output could differ from plain output.
Past 256 KV cells a one-token decode splits flash attention into one chunk of cells per thread,
and batches run with n_threads_batch, one-token decodes with n_threads (llama-cpp-python's
defaults differ: half the cores / all of them): before ABI 4 every such row differed by 0.5-1.5.

SmolLM2 Q4_1 exercises the multi-column Q4_1 kernel and the Q8_0 output matrix; gemma-3-270m
Q4_K_M exercises Q4_K (repacked), Q5_0, Q6_K (tiled) and Q8_0, and sliding-window attention.
The same check over the instruction-set levels this host can execute: tests/test_isa_levels.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from swift_gguf.api import SwiftLlama
from swift_gguf.models import resolve_model
from swift_gguf.sampling import SamplingParams
from swift_gguf.selfcheck import Setting, check_setting, compare_rows, context_tokens
from swift_gguf.skipset import SkipSet

MODELS = ["smollm2-135m", "gemma3-270m"]
# (one-token decodes, batches); None: llama-cpp-python's default (half the cores / all of them), the
# CLI's and the library's default. 3/2 and 2/3: more decode chunks than batch threads and the reverse
# (more threads than this 2-core host has: the numbers, not the speed, are what is checked)
THREADS = {"default": (None, None), "1/2": (1, 2), "2/1": (2, 1), "2/2": (2, 2), "3/2": (3, 2), "2/3": (2, 3)}
# KV positions where verification batches start: short; crossing 256 (the padding step, and from
# there on one-token decodes take the split-KV attention); crossing 512; past 1024
POSITIONS = (100, 250, 505, 1020)
SIZES = (1, 2, 9, 17)   # 1: a plain step through the verification kernels (runtime.StepKernels)


@pytest.mark.parametrize("threads", list(THREADS))
@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "no-fa"])
@pytest.mark.parametrize("name", MODELS)
def test_verification_rows_equal_one_token_decodes(name, flash_attn, threads):
    """Every row of verification batches of 1, 2, 9 and 17 tokens, at contexts up to 1037 tokens, has
    exactly the logits of the one-token decode of its token, with the thread counts decodes and
    batches really run with."""
    n_threads, n_threads_batch = THREADS[threads]
    result = check_setting(resolve_model(name, progress=False), Setting(flash_attn, n_threads, n_threads_batch),
                           positions=POSITIONS, sizes=SIZES)
    assert result.error is None, result.error
    assert result.rows == len(POSITIONS) * sum(SIZES)
    assert result.passed, result.summary() + f"; first rows: {result.mismatches[:5]}"


# every other setting that shapes a one-token decode or a batch: a quantized KV cache (other
# attention kernels: no split path, K converted per row), ubatches smaller than a verification
# (a batch of 17 runs as 8 + 8 + 1), a sliding-window cache of the window's size (Gemma 3)
OTHER = {
    "kv-q8_0": (True, (("type_k", 8), ("type_v", 8))),   # GGML_TYPE_Q8_0
    "k-q8_0-no-fa": (False, (("type_k", 8),)),          # a quantized V cache needs flash attention
    "ubatch-8": (True, (("n_ubatch", 8),)),
    "swa-window": (True, (("swa_full", False),)),
}


# verifications longer than one invariant ubatch (limits.INVARIANT_UBATCH = 32): llama.cpp decodes
# them as ubatches of 32 and the rest (patch 0003, ABI 5), the second reading the K/V the first wrote;
# 33 (a one-token tail), 40, 64 (limits.MAX_VERIFY: two full ubatches), starting below and across 256
# and 512 cells
LONG_SIZES = (33, 40, 64)


@pytest.mark.parametrize("threads", ["default", "2/2"])
@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "no-fa"])
@pytest.mark.parametrize("name", MODELS)
def test_long_verifications_split_into_invariant_ubatches(name, flash_attn, threads):
    n_threads, n_threads_batch = THREADS[threads]
    result = check_setting(resolve_model(name, progress=False), Setting(flash_attn, n_threads, n_threads_batch),
                           positions=(100, 230, 480), sizes=LONG_SIZES)
    assert result.error is None, result.error
    assert result.rows == 3 * sum(LONG_SIZES)
    assert result.passed, result.summary() + f"; first rows: {result.mismatches[:5]}"


@pytest.mark.parametrize("other", list(OTHER))
@pytest.mark.parametrize("name", MODELS)
def test_verification_rows_with_other_settings(name, other):
    flash_attn, extra = OTHER[other]
    result = check_setting(resolve_model(name, progress=False), Setting(flash_attn, None, None, extra),
                           positions=(250, 1020), sizes=(9, 17))
    assert result.error is None, result.error
    assert result.passed, result.summary() + f"; first rows: {result.mismatches[:5]}"


def test_the_check_catches_a_batch_that_is_not_invariant():
    """The negative control: the same comparison with a plain batch decode (upstream's batched
    kernels) in place of Runtime.verify must find differing rows, or the checks above prove nothing."""
    llm = SwiftLlama(str(resolve_model("gemma3-270m", progress=False)), n_ctx=1024, flash_attn=True,
                     spec="off", profile=None)
    try:
        def plain_batch(tokens, pos0):
            llm.rt.decode(tokens, pos0, all_logits=True)
        rows, bad = compare_rows(llm, context_tokens(llm, 300), positions=(100, 280), sizes=(9, 17),
                                 verify=plain_batch)
        assert rows == 52 and len(bad) >= rows // 2, (rows, bad[:3])
        rows, bad = compare_rows(llm, context_tokens(llm, 300), positions=(100, 280), sizes=(9, 17))
        assert rows == 52 and not bad
    finally:
        llm.close()


BATCH_SIZES = (2, 5, 9, 17, 32, 33, 64)   # 32: one invariant ubatch; 64: limits.MAX_VERIFY (two)


def _load(name: str, flash_attn: bool, n_ctx: int = 1024) -> SwiftLlama:
    """The model with llama-cpp-python's default thread counts (unequal wherever there are 2+ cores)."""
    path = resolve_model(name, progress=False)
    return SwiftLlama(str(path), n_ctx=n_ctx, flash_attn=flash_attn, profile=None, spec="off")


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


def test_gemma3_speculative_greedy_equals_plain(bench_prompts):
    """The consequence on a K-quant model: swift greedy output is plain greedy output."""
    llm = _load("gemma3-270m", True)
    rng = np.random.default_rng(3)
    skip = SkipSet.from_indices(llm.rt.n_layer, rng.choice(2 * (llm.rt.n_layer - 2), size=8, replace=False))
    try:
        drafted = 0
        for p in bench_prompts[::6]:   # chat, story, math, rewrite
            toks = llm.tokenize(p["prompt"].encode())
            outs = {}
            for mode in ("off", "swift"):
                llm.reset()
                with llm.speculation(mode, skip=skip, draft_max=6):
                    outs[mode] = [t.id for t in llm.generate_tokens(toks, SamplingParams(), max_tokens=64)]
            assert outs["swift"] == outs["off"], p["id"]
            drafted += llm.last_stats.drafted
        assert drafted > 0
    finally:
        llm.close()


PASSAGE = ("The committee met on Tuesday to review the budget for the new library. After a long discussion, "
           "the members agreed to fund the children's reading room, the digital archive and a small cafe "
           "near the entrance, and asked the architect to present revised drawings at the next meeting in March.")


@pytest.mark.parametrize("n_batch", [512, 16])
def test_lookup_drafts_longer_than_one_ubatch_are_lossless(n_batch):
    """A copied passage: lookup drafts of up to 60 tokens, verified in one call of two invariant ubatches
    (at least one cycle accepts 32+ tokens), give plain decoding's output; with n_batch 16 a verification
    must fit one llama_decode call of 16 (Runtime.max_verify), and drafts stay within it."""
    llm = SwiftLlama(str(resolve_model("smollm2-135m", progress=False)), n_ctx=1024, n_batch=n_batch,
                     profile=None, spec="off")
    try:
        prompt = llm.tokenize(f"Copy this text exactly, word for word:\n\n{PASSAGE}\n\nCopy:\n".encode())
        outs = {}
        for mode, kw in (("off", {}), ("swift", dict(spec_type="ngram", draft_max=60))):
            llm.reset()
            with llm.speculation(mode, **kw):
                outs[mode] = [t.id for t in llm.generate_tokens(prompt, SamplingParams(), max_tokens=120)]
        longest = max(i for i, c in enumerate(llm.last_stats.accepted_hist) if c)
        assert outs["swift"] == outs["off"]
        assert llm.rt.max_verify == min(n_batch, 64)
        if n_batch == 512:
            assert longest >= 32, llm.last_stats.accepted_hist   # a verification of 33+ tokens
        else:
            assert 8 <= longest <= 15, llm.last_stats.accepted_hist
    finally:
        llm.close()
