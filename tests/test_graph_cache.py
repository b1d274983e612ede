"""patch 0002: the small-ubatch graph cache of the patched llama.cpp.

Drafts (1-token graphs with a skip mask) and verifications ((d+1)-token graphs without one)
alternate; each keeps its built graph in a cache slot with its own scheduler, so switching
back needs no rebuild. These tests check that the cache never changes a result (every call
equals the same call on a context that rebuilds every graph), that a steady alternation stops
building graphs, that the cache stays bounded and that LLAMA_SWIFT_GRAPH_CACHE=0 turns it off;
and (patch 0008) that graphs of equal node and leaf counts are not allocated on each other's plan.

They skip when the loaded library predates patch 0002 (no llama_swift_graph_cache_size).
"""
from __future__ import annotations

import ctypes
import random

import numpy as np
import pytest
from llama_cpp import llama_cpp as C

from swift_gguf import native
from swift_gguf.native import context_env
from swift_gguf.api import SwiftLlama
from swift_gguf.fetch import resolve_model
from swift_gguf.skipset import SkipSet

PROMPT = ("The quick brown fox jumps over the lazy dog. Then it ran into the forest, where the old "
          "owl was waiting for the night to fall and the stars to come out over the hills.")

DEFAULT_SLOTS = 8        # patch 0002's default number of slots
MAX_CACHED_TOKENS = 32   # ubatches above this use the main scheduler, not the cache
THREADS = 1              # bitwise comparisons need no parallelism; one thread stays fast on a busy machine

try:
    _cache_size = native._lib.llama_swift_graph_cache_size
    _cache_size.argtypes = [ctypes.c_void_p]
    _cache_size.restype = ctypes.c_int32
except AttributeError:
    _cache_size = None

pytestmark = pytest.mark.skipif(
    _cache_size is None,
    reason=f"the loaded llama.cpp library ({native.library_path()}) has no llama_swift_graph_cache_size: "
           "it predates patches/0002-graph-cache.patch (rebuild with python native/build.py)")


def cache_size(llm: SwiftLlama) -> int:
    return int(_cache_size(llm.rt.ctx))


def load(path, *, cache: str | None = None, reuse: bool = True, n_ctx: int = 512) -> SwiftLlama:
    with context_env(LLAMA_SWIFT_GRAPH_CACHE=cache, LLAMA_GRAPH_REUSE_DISABLE=None if reuse else "1"):
        return SwiftLlama(str(path), n_ctx=n_ctx, n_threads=THREADS, n_threads_batch=THREADS, profile=None, spec="off")


def masks_for(n_layer: int) -> list[bytes]:
    return [
        SkipSet.from_indices(n_layer, range(1, n_layer - 1, 3)).mask(),
        SkipSet.from_lists(n_layer, attention=range(4, 12), ffn=range(14, 20)).mask(),
        SkipSet.from_lists(n_layer, ffn=range(2, n_layer - 2, 2)).mask(),
    ]


def make_script(vocab: list[int], n_layer: int, n_prompt: int, n_cycles: int, seed: int = 7) -> list[tuple]:
    """An engine-like call sequence: drafts of 1 token under one of 3 masks (or none), their KV
    removed, a verification of d+1 tokens, the rejected positions removed; a restart with a
    prompt-sized batch half-way. Positions advance across the n_kv = 256 boundary."""
    rng = random.Random(seed)
    masks = masks_for(n_layer) + [b""]
    script: list[tuple] = [("decode", b"", vocab[:n_prompt], 0, False), ]
    n_past = n_prompt
    for cycle in range(n_cycles):
        if cycle == n_cycles // 2:   # a new request: clear, prompt-sized batch, continue
            script.append(("remove", 0))
            n_prompt2 = n_prompt + 7
            script.append(("decode", b"", vocab[3:3 + n_prompt2], 0, False))
            n_past = n_prompt2
        mask = rng.choice(masks)
        d = rng.choice([1, 2, 4, 4, 4, 8])
        last = vocab[(n_past * 13) % len(vocab)]
        drafts = [vocab[(n_past * 7 + i * 31) % len(vocab)] for i in range(d)]
        for i, tok in enumerate([last] + drafts[:-1]):
            script.append(("decode", mask, [tok], n_past + i, False))
        script.append(("remove", n_past))
        script.append(("decode", b"", [last] + drafts, n_past, True))
        n_acc = rng.randint(0, d)
        script.append(("remove", n_past + n_acc + 1))
        n_past += n_acc + 1
    return script


def run_script(llm: SwiftLlama, script: list[tuple]) -> list[np.ndarray]:
    """Runs the calls; returns a copy of the logits of every decode (all rows when requested)."""
    rt = llm.rt
    rt.remove(-1, 0, -1)
    out = []
    for step in script:
        if step[0] == "remove":
            rt.remove(0, step[1], -1)
            continue
        _, mask, toks, pos, all_rows = step
        with rt.skipping(mask):
            rt.decode(toks, pos, all_logits=all_rows)
        out.append(rt.logits_rows(len(toks)).copy() if all_rows else rt.logits(-1).copy())
    rt.remove(-1, 0, -1)
    return out


@pytest.fixture(scope="module")
def vocab(model_path) -> list[int]:
    llm = load(model_path, n_ctx=256)
    try:
        toks = llm.tokenize(PROMPT.encode())
    finally:
        llm.close()
    return (toks * 20)[:400]


def test_alternating_masks_and_shapes_match_fresh_graphs(model_path, vocab):
    """150+ engine-like calls (3 masks + none, verifications of 2..9 tokens, KV removals, changing
    positions crossing n_kv = 256, a prompt-sized restart) give exactly the logits of the same calls
    on a context that builds a fresh graph for every call (LLAMA_GRAPH_REUSE_DISABLE=1)."""
    probe = load(model_path, n_ctx=256)
    n_layer = probe.rt.n_layer
    probe.close()
    script = make_script(vocab, n_layer, n_prompt=200, n_cycles=40)
    n_calls = sum(1 for s in script if s[0] == "decode")
    assert n_calls >= 100

    ref = load(model_path, reuse=False)
    try:
        expected = run_script(ref, script)
        built_ref, reused_ref = native.graph_stats(ref.rt.ctx)
        assert reused_ref == 0 and cache_size(ref) == 0
    finally:
        ref.close()

    llm = load(model_path)
    try:
        got = run_script(llm, script)
        built, reused = native.graph_stats(llm.rt.ctx)
        assert 0 < cache_size(llm) <= DEFAULT_SLOTS
    finally:
        llm.close()

    calls = [s for s in script if s[0] == "decode"]
    for i, (g, e, call) in enumerate(zip(got, expected, calls)):
        assert np.array_equal(g, e), (f"call {i}: {len(call[2])} tokens at {call[3]}, "
                                      f"mask {'set' if call[1] else 'none'}: max diff {np.abs(g - e).max()}")
    assert built_ref == n_calls
    assert built + reused == n_calls and reused > n_calls // 2, (built, reused, n_calls)


def _steady_cycles(llm: SwiftLlama, mask: bytes, prompt: list[int], n_cycles: int, d: int = 4):
    """Prompt (> MAX_CACHED_TOKENS, main scheduler), then n_cycles of d one-token drafts under
    mask and a (d+1)-token verification, accepting one draft per cycle; yields graph stats after
    each cycle."""
    rt = llm.rt
    rt.remove(-1, 0, -1)
    rt.decode(prompt, 0)
    n_past = len(prompt)
    last = prompt[-1]
    for _ in range(n_cycles):
        with rt.skipping(mask):
            for i in range(d):
                rt.decode([last], n_past + i)
        rt.remove(0, n_past, -1)
        rt.verify([last] * (d + 1), n_past)
        rt.remove(0, n_past + 2, -1)
        n_past += 2
        yield native.graph_stats(rt.ctx)
    rt.remove(-1, 0, -1)


def test_steady_alternation_builds_no_graph_after_the_first_cycle(model_path, vocab):
    llm = load(model_path)
    try:
        mask = masks_for(llm.rt.n_layer)[0]
        prompt = vocab[:40]
        assert len(prompt) > MAX_CACHED_TOKENS
        stats = list(_steady_cycles(llm, mask, prompt, n_cycles=20))
        built_first, reused_first = stats[0]
        built_last, reused_last = stats[-1]
        assert built_last == built_first, stats
        assert reused_last - reused_first == 19 * 5   # 4 drafts + 1 verification per cycle
        # the draft graph and the verification graph; the prompt used the main scheduler
        assert cache_size(llm) == 2
    finally:
        llm.close()


def test_disabled_cache_rebuilds_every_switch(model_path, vocab):
    llm = load(model_path, cache="0")
    try:
        mask = masks_for(llm.rt.n_layer)[0]
        stats = list(_steady_cycles(llm, mask, vocab[:40], n_cycles=10))
        built = [b for b, _ in stats]
        # per cycle: the draft graph (then reused by the 3 next drafts) and the verification graph
        assert all(b1 - b0 == 2 for b0, b1 in zip(built, built[1:])), built
        assert cache_size(llm) == 0
    finally:
        llm.close()


@pytest.mark.parametrize("slots", [None, "3"])
def test_cache_stays_bounded_and_evicted_graphs_rebuild_exactly(model_path, vocab, slots):
    """20 distinct masks, twice: the cache never holds more than its slots; a graph evicted and
    built again gives the same logits as the first time."""
    bound = DEFAULT_SLOTS if slots is None else int(slots)
    llm = load(model_path, cache=slots)
    try:
        rt = llm.rt
        n = rt.n_layer
        masks = [SkipSet.from_lists(n, attention=[k % (n - 2) + 1], ffn=[(3 * k) % (n - 2) + 1]).mask()
                 for k in range(20)]
        assert len(set(masks)) == 20
        rt.remove(-1, 0, -1)
        rt.decode(vocab[:50], 0)
        first = []
        for rnd in range(2):
            for k, mask in enumerate(masks):
                built0, _ = native.graph_stats(rt.ctx)
                with rt.skipping(mask):
                    rt.decode([vocab[50]], 50)
                rt.remove(0, 50, -1)
                built1, _ = native.graph_stats(rt.ctx)
                row = rt.logits(-1).copy()
                assert 1 <= cache_size(llm) <= bound
                assert built1 == built0 + 1    # every mask was evicted since its last use (LRU)
                if rnd == 0:
                    first.append(row)
                else:
                    assert np.array_equal(row, first[k]), f"mask {k} rebuilt after eviction differs"
        assert cache_size(llm) == bound
    finally:
        llm.close()


def test_kv_shift_invalidates_the_cache(model_path, vocab):
    """A K-shift (memory update) drops every cached graph; results still equal fresh graphs."""
    def run(llm):
        rt = llm.rt
        rt.remove(-1, 0, -1)
        rt.decode(vocab[:40], 0)
        out = []
        for _ in range(2):
            for p in range(40, 44):
                rt.decode([vocab[p]], p)
                out.append(rt.logits(-1).copy())
            rt.remove(0, 40, -1)
        size_before = cache_size(llm)
        rt.remove(0, 0, 10)
        C.llama_memory_seq_add(rt.mem, 0, 10, -1, -10)   # shift positions 10..39 to 0..29
        built0, _ = native.graph_stats(rt.ctx)
        rt.decode([vocab[40]], 30)
        built1, _ = native.graph_stats(rt.ctx)
        out.append(rt.logits(-1).copy())
        rt.remove(-1, 0, -1)
        return out, size_before, cache_size(llm), built1 - built0

    ref = load(model_path, reuse=False)
    try:
        expected, _, _, _ = run(ref)
    finally:
        ref.close()
    llm = load(model_path)
    try:
        got, size_before, size_after, n_built = run(llm)
    finally:
        llm.close()
    assert size_before == 1 and size_after == 1 and n_built == 1
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.array_equal(g, e), f"call {i}"


@pytest.mark.parametrize("cache", [None, "1"])
def test_graphs_of_equal_counts_are_planned_afresh(cache):
    """patch 0008: each inner layer of Gemma 3 bypassed whole in turn, 4 rows with logits on a scratch
    sequence (a search probe's call): the graphs of two such masks have the same node and leaf counts,
    but where a sliding-window layer and a global one swap, leaf i is a weight in one graph and an
    input in the other. ggml's allocator checked only the counts and the nodes, so the input kept the
    previous plan's "no buffer" and the decode crashed (Gemma 3 270M: in the main scheduler with the
    cache off, and in a cache slot a graph of the same counts was evicted from, as the search's
    probes did). Every call must run and give the logits of a context that builds every graph
    afresh (LLAMA_GRAPH_REUSE_DISABLE: the main scheduler, where the crash came too)."""
    path = resolve_model("gemma3-270m", progress=False)

    def run(llm: SwiftLlama) -> list[np.ndarray]:
        rt, n = llm.rt, llm.rt.n_layer
        toks = llm.tokenize(PROMPT.encode())[:24]
        rt.remove(-1, 0, -1)
        rt.decode(toks, 0)
        p = len(toks) - 4
        out = []
        for il in range(1, n - 1):
            rt.share(0, 1, 0, p)
            with rt.skipping(SkipSet.from_lists(n, attention=[il], ffn=[il]).mask()):
                rt.decode(toks[p:], p, seq=1, all_logits=True)
            out.append(rt.logits_rows(4).copy())
            rt.remove(1, -1, -1)
        return out

    ref = load(path, reuse=False)
    try:
        expected = run(ref)
    finally:
        ref.close()
    llm = load(path, cache=cache)
    try:
        got = run(llm)
    finally:
        llm.close()
    assert len(got) == len(expected) >= 16
    for il, (g, e) in enumerate(zip(got, expected), start=1):
        assert np.array_equal(g, e), f"layer {il} bypassed: max diff {np.abs(g - e).max()}"
