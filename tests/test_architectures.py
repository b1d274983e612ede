"""The layer-skip mask on every architecture the patch covers, with tiny random-weight models.

No real model of most of these architectures is available offline, so swift_gguf.testmodels
writes one per architecture (llama.cpp's tensor names, shapes and metadata; a few layers,
some of them inserted identity blocks). For each: llama.cpp loads and decodes it; skipping
exactly the identity blocks leaves the logits bit-identical while skipping a real sub-layer
changes them; greedy SWIFT decoding equals plain decoding; an empty mask is the plain graph,
also after 50 alternations that go through the graph cache.
"""
from __future__ import annotations

import numpy as np
import pytest

from swift_gguf import native, testmodels
from swift_gguf.api import SwiftLlama
from swift_gguf.sampling import SamplingParams
from swift_gguf.skipset import ATTN, FFN, SkipSet
from tests.test_native import PROMPT, logits_for

ARCHS = sorted(testmodels.ARCHS)
# upstream never reuses these graphs: their attention-temperature input has no can_reuse
NEVER_REUSED = {"llama4", "mistral3"}
N_TOKENS = 32
# one thread: these models are so small that waiting for a second one costs more than it brings
KW = dict(n_ctx=256, n_threads=1, n_threads_batch=1, profile=None)


def load(path) -> SwiftLlama:
    return SwiftLlama(str(path), spec="off", **KW)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> (path, inserted layers, n_layer): each model is written once per test module."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, tuple[str, list[int], int]] = {}

    def get(arch: str):
        if arch not in built:
            meta = testmodels.build(arch, root / f"{arch}.gguf")
            built[arch] = meta["out"], meta["inserted_layers"], meta["n_layer"]
        return built[arch]
    return get


def test_the_library_lists_every_tested_architecture():
    listed = native.layer_skip_architectures()
    assert set(ARCHS) <= set(listed)
    assert {"llama", "qwen2", "qwen3", "gemma3"} <= set(listed)
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize("arch", ARCHS)
def test_inserted_blocks_skip_exactly_and_real_ones_do_not(arch, tiny):
    path, inserted, n = tiny(arch)
    llm = load(path)
    try:
        assert llm.model_info.architecture == arch
        assert native.layer_skip_supported(llm._model.model)
        assert llm.rt.n_layer == n
        tokens = llm.tokenize(PROMPT.encode())
        plain = logits_for(llm, b"", tokens)
        assert np.isfinite(plain).all() and plain.std() > 0.1
        mask = bytearray(n)
        for il in inserted:
            mask[il] = ATTN | FFN
        assert np.array_equal(logits_for(llm, bytes(mask), tokens), plain)
        # last row only: the output-row selection of a bypassed last layer (inserted[-1] == n - 1)
        assert inserted[-1] == n - 1
        last = {}
        for m in (b"", bytes(mask)):
            llm.rt.remove(-1, 0, -1)
            with llm.rt.skipping(m):
                llm.rt.decode(tokens, 0)
            last[m] = llm.rt.logits(-1).copy()
        llm.rt.remove(-1, 0, -1)
        assert np.array_equal(last[bytes(mask)], last[b""])
        real = next(il for il in range(1, n) if il not in inserted)
        for bit in (ATTN, FFN):
            one = bytearray(n)
            one[real] = bit
            assert np.abs(logits_for(llm, bytes(one), tokens) - plain).max() > 1e-3, f"bit {bit} of layer {real}"
        # no attention left at all: inputs only attention reads (positions, KQ masks of both kinds,
        # Llama 4's and Mistral 3's attention temperature) stay in the graph and are set
        assert np.isfinite(logits_for(llm, bytes([ATTN]) * n, tokens)).all()
        assert np.array_equal(logits_for(llm, b"", tokens), plain)
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_swift_greedy_equals_plain(arch, tiny):
    path, inserted, n = tiny(arch)
    kw = dict(KW, draft_max=4, draft_p_min=1e-6)
    plain_llm = SwiftLlama(path, spec="off", **kw)
    try:
        expected = [t.id for t in plain_llm.generate_tokens(PROMPT, SamplingParams(), max_tokens=N_TOKENS)]
    finally:
        plain_llm.close()
    assert len(expected) == N_TOKENS
    inner = [il for il in inserted if il < n - 1]
    real = [il for il in range(1, n - 1) if il not in inserted]
    cases = {"identity blocks": (SkipSet.from_lists(n, attention=inner, ffn=inner), True),
             # a drafter that is often wrong: verification rejects drafts and rolls the cache back
             "plus real sub-layers": (SkipSet.from_lists(n, attention=inner + real, ffn=inner + real[:1]), False)}
    for name, (skip, perfect) in cases.items():
        llm = SwiftLlama(path, spec="swift", skip=skip, **kw)
        try:
            out = [t.id for t in llm.generate_tokens(PROMPT, SamplingParams(), max_tokens=N_TOKENS)]
            st = llm.last_stats
        finally:
            llm.close()
        assert out == expected, f"{name}: diverges at {next(i for i, (a, b) in enumerate(zip(out, expected)) if a != b)}"
        assert st.mode_used == "swift" and st.drafted > 0, (name, st.reason)
        if perfect:
            assert st.accepted == st.drafted, f"{name}: a drafter without identity blocks is exact"
        else:
            assert st.accepted < st.drafted, f"{name}: no draft was rejected"


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_mask_is_the_plain_graph_after_alternations(arch, tiny):
    """50 alternations of no mask and a mask, over two batch sizes (graphs from the cache):
    every result equals that of a context that only ever saw that mask."""
    path, inserted, n = tiny(arch)
    real = next(il for il in range(1, n - 1) if il not in inserted)
    masks = [b"", SkipSet.from_lists(n, attention=[real], ffn=[inserted[0]]).mask()]
    expected = {}
    for mi, mask in enumerate(masks):
        fresh = load(path)
        try:
            tokens = fresh.tokenize(PROMPT.encode())
            shapes = [tokens[:1], tokens[:6]]
            for si, toks in enumerate(shapes):
                expected[mi, si] = logits_for(fresh, mask, toks)
        finally:
            fresh.close()
    assert not np.array_equal(expected[0, 1], expected[1, 1])
    llm = load(path)
    try:
        built0, reused0 = native.graph_stats(llm.rt.ctx)
        for i in range(50):
            mi, si = i % 2, (i // 2) % 2
            got = logits_for(llm, masks[mi], shapes[si])
            assert np.array_equal(got, expected[mi, si]), f"alternation {i}: mask {mi}, batch {len(shapes[si])}"
        built1, reused1 = native.graph_stats(llm.rt.ctx)
        built = built1 - built0
        assert built + reused1 - reused0 == 50
        if arch not in NEVER_REUSED:
            assert built == 4          # one graph per (mask, batch size); the rest come from the cache
        assert np.array_equal(logits_for(llm, bytes(n), shapes[1]), expected[0, 1])   # all-zero mask = no mask
    finally:
        llm.close()


def test_gemma4_bypassed_kv_source_still_writes_its_kv(tiny):
    """Gemma 4 E2B/E4B share KV: the last layers read the KV cache of earlier ones. A KV-source
    layer whose attention is bypassed still stores its K/V, so its readers see the drafted tokens.
    Inserted block 3 is the full-attention KV source of the real layer 4: bypassing it must be exact
    in fresh contexts, for a whole prompt and for one token at a time. (A missing store would leave
    the zeros of a fresh cache there, so layer 4's attention would add 0, as if bypassed, which the
    last assertion shows changes the logits; stale cells from an earlier decode of the same tokens
    would hide it, hence the fresh contexts.)"""
    path, inserted, n = tiny("gemma4")
    swa, shared = testmodels.gemma4_layout(n)
    src, reader = n - shared - 1, n - shared
    assert shared and src in inserted and reader not in inserted and not swa[src] and not swa[reader]
    skip_src = bytearray(n)
    skip_src[src] = ATTN | FFN
    results = {}
    for mask in (b"", bytes(skip_src)):
        llm = load(path)
        try:
            tokens = llm.tokenize(PROMPT.encode())
            whole = logits_for(llm, mask, tokens)
        finally:
            llm.close()
        llm = load(path)
        try:   # the prompt plainly, then 4 tokens one at a time with the mask (as drafts are made)
            llm.rt.decode(tokens[:-4], 0)
            steps = []
            for i in range(len(tokens) - 4, len(tokens)):
                with llm.rt.skipping(mask):
                    llm.rt.decode(tokens[i:i + 1], i)
                steps.append(llm.rt.logits(-1).copy())
        finally:
            llm.close()
        results[mask] = whole, np.stack(steps)
    assert np.array_equal(results[b""][0], results[bytes(skip_src)][0])
    assert np.array_equal(results[b""][1], results[bytes(skip_src)][1])
    # a shared-KV layer bypasses its attention freely (it writes no KV), and that changes the logits
    llm = load(path)
    try:
        skip_reader = bytearray(n)
        skip_reader[reader] = ATTN
        assert np.abs(logits_for(llm, bytes(skip_reader)) - results[b""][0]).max() > 1e-3
    finally:
        llm.close()


def test_the_builder_command_line(tmp_path, capsys):
    from gguf import GGUFReader
    out = tmp_path / "m.gguf"
    assert testmodels.main(["--arch", "qwen3moe", "--out", str(out), "--layers", "3", "--inserted", "1"]) == 0
    assert "4 layers (identity blocks at [3])" in capsys.readouterr().out
    fields = GGUFReader(out).fields
    assert fields["qwen3moe.block_count"].contents() == 4
    assert fields[testmodels.INSERTED_KEY].contents() == [3]
    assert testmodels.main(["--arch", "gemma2", "--out", str(tmp_path / "x.gguf"), "--layers", "0"]) == 2
    assert "at least one real layer" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()
