"""Losslessness of SWIFT decoding against plain decoding, on the real model.

Greedy: token-for-token equality with plain decoding (swift-gguf's `off` mode, itself checked
against llama-cpp-python's own `Llama.generate`) on every second prompt of the shared set (all
its categories), 128 tokens each, across skip sets (empty: every draft accepted; every inner sub-layer: almost none accepted;
random) and draft lengths 1, 4, 16, in modes swift and auto.
"""
from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from swift_gguf.api import SwiftLlama
from swift_gguf.generation import render_prompt
from swift_gguf.sampling import SamplingParams
from swift_gguf.skipset import SkipSet

N_TOKENS = 128
N_LAYER = 30


@pytest.fixture(scope="module")
def llm(model_path):
    m = SwiftLlama(str(model_path), n_ctx=1024, spec="off", profile=None)
    yield m
    m.close()


@pytest.fixture(scope="module")
def prompts(llm, bench_prompts):
    """Every second prompt of bench.jsonl: all its categories, half its decoding time."""
    return {p["id"]: render_prompt(llm, p["prompt"], True) for p in bench_prompts[::2]}


def run(llm, tokens, *, mode, skip=None, draft_max=None, params=None, n=N_TOKENS):
    with llm.speculation(mode, skip=skip, draft_max=draft_max):
        llm.reset()
        return [t.id for t in llm.generate_tokens(tokens, params or SamplingParams(), max_tokens=n)]


@pytest.fixture(scope="module")
def plain(llm, prompts):
    return {pid: run(llm, toks, mode="off") for pid, toks in prompts.items()}


def test_off_mode_is_llama_cpp_python_plain_decoding(model_path, prompts, plain):
    ref = llama_cpp.Llama(str(model_path), n_ctx=1024, verbose=False)   # the same arguments as the fixture
    try:
        for pid in list(prompts)[::3]:   # chat, story, math, rewrite
            ref.reset()
            out = []
            for tok in ref.generate(prompts[pid], temp=0.0):
                out.append(tok)
                if len(out) == len(plain[pid]) or llama_cpp.llama_vocab_is_eog(ref._model.vocab, tok):
                    break
            assert out == plain[pid], pid
    finally:
        ref.close()


RANDOM = SkipSet.from_indices(N_LAYER, np.random.default_rng(7).choice(56, size=17, replace=False))
CASES = {
    "empty-d4": (SkipSet(N_LAYER), 4),
    "empty-d16": (SkipSet(N_LAYER), 16),
    "all-inner-d16": (SkipSet.all_inner(N_LAYER), 16),
    "random-d1": (RANDOM, 1),
    "random-d4": (RANDOM, 4),
    "random-d16": (RANDOM, 16),
}


# one case decodes every prompt to 128 tokens; the others every second prompt (every fourth of
# bench.jsonl) to 64 tokens: full-cost layer-skip drafts make each case as dear as plain decoding
FULL_CASE = "random-d4"
SHORT = 64


@pytest.mark.parametrize("case", list(CASES))
def test_swift_greedy_equals_plain(llm, prompts, plain, case):
    skip, d = CASES[case]
    drafted = accepted = 0
    ids, n = (list(prompts), N_TOKENS) if case == FULL_CASE else (list(prompts)[::2], SHORT)
    for pid in ids:
        toks, ref = prompts[pid], plain[pid][:n]
        out = run(llm, toks, mode="swift", skip=skip, draft_max=d, n=n)
        assert out == ref, f"{case}: prompt {pid} diverges at {first_diff(out, ref)}"
        st = llm.last_stats
        assert st.mode_used == "swift" and st.cycles > 0
        drafted += st.drafted
        accepted += st.accepted
    if case.startswith("empty"):
        assert accepted == drafted > 0              # the full model drafts for itself: all accepted
    if case.startswith("all-inner"):
        assert accepted / drafted < 0.1             # a drafter without inner layers is nearly useless


def test_auto_greedy_equals_plain(llm, prompts, plain, monkeypatch):
    """auto: lossless whatever it chooses per cycle (prompt lookup, layer skipping, plain steps),
    with the layer search running alongside. (Which choice pays is a function of the measured
    costs, tested without a model in test_drafters.py, not a property of this machine.) The loss
    budget is lifted: it keeps the search's probes out of answers that lost to speculation, which
    on a busy machine can be every one of these, and the probes are what this test interleaves."""
    monkeypatch.setattr(llm.engine.controller.budget, "allows", lambda cost=0.0: True)
    llm.engine.search.reset()
    for pid in list(prompts)[::2]:   # every fourth prompt of bench.jsonl (all but one category)
        toks = prompts[pid]
        out = run(llm, toks, mode="auto")
        assert out == plain[pid], f"auto: prompt {pid} diverges at {first_diff(out, plain[pid])}"
        st = llm.last_stats
        assert st.spec_type == "auto" and st.drafted == sum(d["drafted"] for d in st.drafters.values())
    assert llm.engine.search.state.probes > 0         # the search ran alongside


def test_token_provenance(llm, prompts, plain):
    """With an empty skip set every drafted token is accepted: tokens say they came from drafts."""
    toks = next(iter(prompts.values()))
    with llm.speculation("swift", skip=SkipSet(N_LAYER), draft_max=4):
        llm.reset()
        got = list(llm.generate_tokens(toks, SamplingParams(), max_tokens=32))
    assert [t.id for t in got] == plain[next(iter(prompts))][:32]
    assert got[0].from_draft is False                  # the first token comes from the prompt's logits
    assert sum(t.from_draft for t in got) == llm.last_stats.accepted > 0


@pytest.mark.parametrize("where", ["draft", "verify"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_leaves_no_mask_and_next_generation_is_lossless(llm, prompts, plain, monkeypatch, where, exc):
    pid, toks = next(iter(prompts.items()))
    with llm.speculation("swift", skip=RANDOM, draft_max=4):
        _interrupt_and_resume(llm, toks, plain[pid], monkeypatch, where, exc)


def _interrupt_and_resume(llm, toks, want, monkeypatch, where, exc):
    rt = llm.rt
    real_decode = rt.decode
    calls = {"n": 0}

    def failing_decode(tokens, pos0, **kw):
        masked = rt.current_mask() != b""
        if (where == "draft") == masked and len(tokens) < 20:
            calls["n"] += 1
            if calls["n"] == 5:
                raise exc("interrupted")
        return real_decode(tokens, pos0, **kw)

    monkeypatch.setattr(rt, "decode", failing_decode)
    llm.reset()
    with pytest.raises(exc):
        for _ in llm.generate_tokens(toks, SamplingParams(), max_tokens=64):
            pass
    monkeypatch.setattr(rt, "decode", real_decode)
    assert rt.current_mask() == b""
    # no llm.reset(): the next request must repair the KV cache by itself
    out = [t.id for t in llm.generate_tokens(toks, SamplingParams(), max_tokens=N_TOKENS)]
    assert out == want


def test_plain_generations_do_not_fund_the_search(llm, prompts):
    """The search's time allowance is a share of swift/auto generation time only: plain
    ("off") requests interleaved with auto ones (as in a benchmark) must not enlarge it."""
    llm.engine.search.reset()
    toks = next(iter(prompts.values()))
    before = llm.engine.pacer.gen_time
    for _ in range(2):
        run(llm, toks, mode="off", n=32)
    assert llm.engine.pacer.gen_time == before and llm.engine.search.state.probes == 0
    run(llm, toks, mode="auto", n=32)
    assert llm.engine.pacer.gen_time > before


def test_stopping_early_keeps_the_cache_consistent(llm, prompts, plain):
    """A consumer that stops mid-cycle (stop sequence, max_tokens) leaves a usable cache."""
    pid, toks = next(iter(prompts.items()))
    with llm.speculation("swift", skip=SkipSet(N_LAYER), draft_max=8):
        llm.reset()
        gen = llm.generate_tokens(toks, SamplingParams(), max_tokens=N_TOKENS)
        first = [next(gen).id for _ in range(7)]
        gen.close()
        assert first == plain[pid][:7]
        # continue from the prompt plus what was consumed: prefix reuse must be exact
        out = [t.id for t in llm.generate_tokens(toks + first, SamplingParams(), max_tokens=N_TOKENS - 7)]
    assert out == plain[pid][7:]


def test_fixture_with_inserted_blocks_skipped_accepts_everything(fixture_k1, bench_prompts):
    from swift_gguf.redundancy import inserted_layers
    ins = [il for il in inserted_layers(30, 1) if il < 59]
    llm = SwiftLlama(str(fixture_k1), n_ctx=1024, spec="swift", profile=None, draft_max=8, draft_p_min=1e-6,
                     skip=SkipSet.from_lists(60, attention=ins, ffn=ins))
    try:
        for p in bench_prompts[::12]:   # chat, math
            toks = render_prompt(llm, p["prompt"], True)
            llm.reset()
            out = [t.id for t in llm.generate_tokens(toks, SamplingParams(), max_tokens=64)]
            st = llm.last_stats
            assert st.drafted > 0 and st.accepted == st.drafted, st.summary()
            assert out == run(llm, toks, mode="off", n=64)
    finally:
        llm.close()


def first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_auto_speculates_where_it_pays_fixture_k3(fixture_k3, bench_prompts):
    """K=3 (three identity blocks per real block): with the set the search finds there (every
    inserted block; the search itself: test_search.py, on K=1), auto's measured costs say
    speculation pays on this CPU, and it speculates, losslessly."""
    from swift_gguf.redundancy import inserted_layers
    llm = SwiftLlama(str(fixture_k3), n_ctx=1024, spec="auto", profile=None)
    try:
        inner = [il for il in inserted_layers(30, 3) if il < 119]
        st = llm.engine.search.state
        st.best, st.best_matchness, st.done = SkipSet.from_lists(120, attention=inner, ffn=inner), 1.0, True
        toks = render_prompt(llm, bench_prompts[5]["prompt"], True)
        llm.reset()
        out = [t.id for t in llm.generate_tokens(toks, SamplingParams(), max_tokens=64)]
        stats = llm.last_stats
        # it speculates (a measured loss on a loaded machine may switch it back later: "mixed")
        assert stats.mode_used in ("swift", "mixed") and stats.cycles > 0, stats.reason
        # skipping identity blocks drafts exactly what the full model computes: every layer-skip draft
        # is accepted (auto may also take prompt-lookup drafts, which can be rejected)
        skip_drafts = stats.drafters.get("layer-skip", {})
        assert skip_drafts.get("drafted", 0) > 0 and skip_drafts["accepted"] == skip_drafts["drafted"], stats.drafters
        assert out == run(llm, toks, mode="off", n=64)
    finally:
        llm.close()
