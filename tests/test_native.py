"""The patched llama.cpp: the per-call skip mask on the real model and on the fixture."""
from __future__ import annotations

import numpy as np
import pytest

from swift_gguf import native
from swift_gguf.api import SwiftLlama
from swift_gguf.models import resolve_model
from swift_gguf.skipset import ATTN, FFN, SkipSet
from tests.conftest import UNSUPPORTED_ARCH

PROMPT = "The quick brown fox jumps over the lazy dog. Then it"


def load(path, **kw) -> SwiftLlama:
    return SwiftLlama(str(path), n_ctx=256, n_threads=2, n_threads_batch=2, profile=None, spec="off", **kw)


def logits_for(llm: SwiftLlama, mask: bytes = b"", tokens=None, n_rows: int | None = None) -> np.ndarray:
    """Fresh evaluation of tokens (from position 0) with mask set; logits of every row, copied."""
    tokens = tokens or llm.tokenize(PROMPT.encode())
    llm.rt.remove(-1, 0, -1)
    with llm.rt.skipping(mask):
        llm.rt.decode(tokens, 0, all_logits=True)
    llm.rt.remove(-1, 0, -1)
    return llm.rt.logits_rows(n_rows or len(tokens)).copy()


@pytest.fixture(scope="module")
def smol(model_path):
    llm = load(model_path)
    yield llm
    llm.close()


def test_patched_symbols_and_support(smol):
    assert native.layer_skip_supported(smol._model.model)
    assert native.get_layer_skip(smol.rt.ctx, smol.rt.n_layer) == b""
    built0, _ = native.graph_stats(smol.rt.ctx)
    logits_for(smol)
    built1, _ = native.graph_stats(smol.rt.ctx)
    assert built1 == built0 + 1


def test_empty_mask_matches_a_context_that_never_had_one(model_path, smol):
    fresh = load(model_path)
    try:
        expected = logits_for(fresh)
    finally:
        fresh.close()
    mask = SkipSet.from_indices(smol.rt.n_layer, range(0, 56, 3)).mask()
    logits_for(smol, mask)                      # a masked call first...
    got_cleared = logits_for(smol, b"")         # ...then no mask
    got_zeros = logits_for(smol, bytes(smol.rt.n_layer))  # all-zero mask = no mask
    assert np.array_equal(got_cleared, expected)
    assert np.array_equal(got_zeros, expected)
    assert native.get_layer_skip(smol.rt.ctx, smol.rt.n_layer) == b""


def test_skipping_changes_logits_and_the_mask_is_cleared_after_errors(smol):
    plain = logits_for(smol)
    skipped = logits_for(smol, SkipSet.from_lists(smol.rt.n_layer, attention=[5], ffn=[7]).mask())
    assert np.abs(plain - skipped).max() > 1e-2
    with pytest.raises(RuntimeError):
        with smol.rt.skipping(SkipSet.from_lists(smol.rt.n_layer, ffn=[3]).mask()):
            assert smol.rt.current_mask() != b""
            raise RuntimeError("boom")
    assert smol.rt.current_mask() == b""


def test_invalid_masks_are_refused(smol):
    n = smol.rt.n_layer
    with pytest.raises(ValueError, match="wrong length"):
        native.set_layer_skip(smol.rt.ctx, bytes([ATTN]) * (n - 1))
    with pytest.raises(ValueError, match="unknown bits"):
        native.set_layer_skip(smol.rt.ctx, bytes([4]) + bytes(n - 1))
    assert smol.rt.current_mask() == b""


def test_bypassing_every_attention_layer_decodes(smol):
    """No attention layer left: the positions and KQ-mask inputs are used by no node, yet the
    graph keeps them, so setting them works (upstream would write to unallocated tensors)."""
    n = smol.rt.n_layer
    plain = logits_for(smol)
    for bits in (ATTN, ATTN | FFN):
        got = logits_for(smol, bytes([bits]) * n)
        assert np.isfinite(got).all() and np.abs(got - plain).max() > 1e-2
    assert np.array_equal(logits_for(smol), plain)


def test_alternating_masks_give_fresh_logits(model_path, smol):
    """50 alternations of two masks and two batch sizes: every result equals a fresh computation."""
    n = smol.rt.n_layer
    masks = [SkipSet.from_indices(n, range(0, 56, 4)).mask(), SkipSet.from_lists(n, ffn=range(10, 20)).mask()]
    tokens = smol.tokenize(PROMPT.encode())
    shapes = [tokens[:1], tokens[:5]]
    expected = {}
    for mi, mask in enumerate(masks):
        for si, toks in enumerate(shapes):
            fresh = load(model_path)
            try:
                expected[mi, si] = logits_for(fresh, mask, toks)
            finally:
                fresh.close()
    built0, _ = native.graph_stats(smol.rt.ctx)
    for i in range(50):
        mi, si = i % 2, (i // 2) % 2
        got = logits_for(smol, masks[mi], shapes[si])
        assert np.array_equal(got, expected[mi, si]), f"alternation {i}: mask {mi}, batch {len(shapes[si])}"
    built1, _ = native.graph_stats(smol.rt.ctx)
    assert built1 > built0   # new masks and shapes built graphs (none reused across masks: exact logits)


def test_same_mask_reuses_the_graph(smol):
    mask = SkipSet.from_lists(smol.rt.n_layer, attention=[3]).mask()
    tok = smol.tokenize(b"Hello")[:1]
    smol.rt.remove(-1, 0, -1)
    with smol.rt.skipping(mask):
        smol.rt.decode(tok, 0)
        built0, reused0 = native.graph_stats(smol.rt.ctx)
        for pos in range(1, 6):
            smol.rt.decode(tok, pos)
        built1, reused1 = native.graph_stats(smol.rt.ctx)
    smol.rt.remove(-1, 0, -1)
    assert built1 == built0 and reused1 == reused0 + 5


def test_fixture_skipping_inserted_blocks_is_exact(fixture_k1):
    """K=1: odd layers are identities; skipping them (the last layer too, which exercises the
    output-row selection on a bypassed attention) leaves the logits unchanged, skipping a real one does not."""
    llm = load(fixture_k1)
    try:
        n = llm.rt.n_layer
        assert n == 60
        inserted = bytearray(n)
        for il in range(1, n, 2):
            inserted[il] = ATTN | FFN
        tokens = llm.tokenize(PROMPT.encode())
        plain = logits_for(llm, b"", tokens)
        skipped = logits_for(llm, bytes(inserted), tokens)
        assert np.abs(plain - skipped).max() <= 1e-5
        # last row only (the output-row selection path of a bypassed last layer)
        llm.rt.remove(-1, 0, -1)
        with llm.rt.skipping(bytes(inserted)):
            llm.rt.decode(tokens, 0)
        assert np.abs(llm.rt.logits(-1) - plain[-1]).max() <= 1e-5
        llm.rt.remove(-1, 0, -1)
        real = bytearray(n)
        real[2] = ATTN | FFN
        assert np.abs(plain - logits_for(llm, bytes(real), tokens)).max() > 1e-2
    finally:
        llm.close()


def test_unsupported_architecture_is_reported_and_decodes_plainly(unsupported_model):
    llm = SwiftLlama(str(unsupported_model), n_ctx=256, profile=None, spec="swift")
    try:
        assert UNSUPPORTED_ARCH not in native.layer_skip_architectures()
        assert not native.layer_skip_supported(llm._model.model)
        with pytest.raises(ValueError, match="does not honour"):
            native.set_layer_skip(llm.rt.ctx, bytes([FFN]) + bytes(llm.rt.n_layer - 1))
        out = [t.id for t in llm.generate_tokens("Hello", max_tokens=8)]
        assert len(out) == 8
        assert llm.last_stats.mode_used == "plain"
        assert UNSUPPORTED_ARCH in llm.last_stats.reason and "not support" in llm.last_stats.reason
    finally:
        llm.close()


@pytest.mark.slow
def test_gemma3_honours_the_mask():
    path = resolve_model("gemma3-270m", progress=False)
    llm = load(path)
    try:
        assert native.layer_skip_supported(llm._model.model)
        tokens = llm.tokenize(b"Once upon a time, there was a")
        plain = logits_for(llm, b"", tokens)
        n = llm.rt.n_layer
        assert np.array_equal(logits_for(llm, bytes(n), tokens), plain)
        changed = logits_for(llm, SkipSet.from_lists(n, attention=[4], ffn=[6]).mask(), tokens)
        assert np.abs(changed - plain).max() > 1e-2
        # Gemma 3 interleaves 5 sliding-window layers with 1 full-attention layer (5, 11, 17):
        # bypassing every full-attention layer leaves the full-attention KV inputs unused, which
        # the graph keeps (they are set every call): it decodes
        assert n == 18
        full = bytearray(n)
        for il in (5, 11, 17):
            full[il] = ATTN
        got = logits_for(llm, bytes(full), tokens)
        assert np.isfinite(got).all() and np.abs(got - plain).max() > 1e-2
        assert np.array_equal(logits_for(llm, b"", tokens), plain)
    finally:
        llm.close()
