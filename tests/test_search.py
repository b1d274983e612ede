"""The layer search: it finds the fixture's inserted blocks, uses its Bayesian step, and its
profiles survive corruption and concurrent writers."""
from __future__ import annotations

import json
import multiprocessing
import warnings

import numpy as np
import pytest

from swift_gguf import profiles
from swift_gguf.costmodel import Costs, predict
from swift_gguf.search import LayerSearch, Probe, SearchConfig, SearchState
from swift_gguf.skipset import SkipSet, n_sublayers


def cpu_like_costs(n_layer: int) -> Costs:
    """Costs shaped like this CPU's (verification nearly linear in tokens)."""
    inner = n_layer - 2
    return Costs(t_plain=0.01, v={2: 1.45, 3: 1.7, 5: 2.4, 9: 3.7}, attn=0.3 / inner, ffn=0.6 / inner)


def test_search_finds_the_inserted_blocks_of_the_fixture(fixture_k1, bench_prompts):
    """Real model, real probes: every chosen sub-layer is an inserted identity, matchness 1.0.
    (That a seed fixes the whole search, Bayesian steps included: test_reset_gives_the_search_of_a_new_object.)"""
    from swift_gguf.redundancy import inserted_layers
    from swift_gguf.api import SwiftLlama
    from swift_gguf.optimize import run_optimize

    llm = SwiftLlama(str(fixture_k1), n_ctx=1024, profile=None)
    try:
        r = run_optimize(llm, bench_prompts[:3], seed=3, max_probes=200, tokens=64, progress=False)
    finally:
        llm.close()
    inserted = set(inserted_layers(30, 1))
    chosen = set(r["skip"]["attention"]) | set(r["skip"]["ffn"])
    assert chosen and chosen <= inserted
    assert r["matchness"] == 1.0
    assert len(r["skip"]["attention"]) + len(r["skip"]["ffn"]) >= 40   # most of the 58 free sub-layers
    assert r["probes"] <= 200 and r["search_done"]


def drive(search: LayerSearch, score, steps: int, until_done: bool = True) -> list[str]:
    """Step the search with a fake matchness function instead of the model, `steps` times or
    until it stops; returns the phases of the probes that improved the best set."""
    improvements = []
    for _ in range(steps):
        if until_done and not search.active:
            break
        phase, skip, W = search._next()
        if phase == "reference":
            search._refs[W] = object()   # the fake needs no reference pass
            continue
        probe = Probe(skip, score(skip), 0.0, 0.0, phase)
        probe.draft_length, probe.predicted = predict(skip, probe.matchness, search.costs)
        before = search.state.best_predicted
        search._observe(probe)
        if search.state.best_predicted > before:
            improvements.append(phase)
    return improvements


def run_fake_search(n_layer: int, score, probes: int, seed: int = 0) -> tuple[LayerSearch, list[str]]:
    state = SearchState(n_layer, SearchConfig(seed=seed, patience=10_000, max_probes=10_000))
    search = LayerSearch(state, cpu_like_costs(n_layer))
    return search, drive(search, score, probes, until_done=False)


def mediocre(skip: SkipSet) -> float:
    """A matchness that never reaches stop_matchness: rounds end by max_probes."""
    return 0.6 if len(skip) <= 6 else 0.3


def test_a_reopened_round_gets_max_probes_of_its_own():
    """max_probes limits a round, not the model's life: after a task change (reopen) the
    search probes again, first re-scoring its best set on the new text."""
    n_layer = 8
    search = LayerSearch(SearchState(n_layer, SearchConfig(max_probes=40, patience=10_000, bo_every=1000)),
                         cpu_like_costs(n_layer))
    drive(search, mediocre, 1000)
    st = search.state
    assert st.done and st.probes == st.round_probes == 40 and st.best is not None
    best = st.best
    search.reopen()
    assert search.active and st.round_probes == 0 and st.best_matchness == 0.0
    drive(search, mediocre, 1000)
    assert st.done and st.round_probes == 40 and st.probes == 80
    assert st.history[40]["phase"] == "rescore" and st.history[40]["size"] == len(best)


def test_reset_gives_the_search_of_a_new_object():
    """reset(seed) forgets the saved state and the object's own (references, optimiser, size
    scores): the search then runs exactly as a new LayerSearch with that seed."""
    n_layer = 10
    config = dict(max_probes=30, patience=10_000, bo_every=12)   # one Bayesian step a run
    used = LayerSearch(SearchState(n_layer, SearchConfig(seed=1, **config)), cpu_like_costs(n_layer))
    drive(used, mediocre, 1000)
    assert used.state.done and used._opt is not None
    used.reset(seed=7)
    assert used.active and used.state.probes == 0 and used.state.best is None
    new = LayerSearch(SearchState(n_layer, SearchConfig(seed=7, **config)), cpu_like_costs(n_layer))
    drive(used, mediocre, 1000)
    drive(new, mediocre, 1000)
    assert used.state.history == new.state.history and used.state.best == new.state.best


def scan_importance(n_layer: int, kl_of, stop_after: int | None = None) -> tuple[LayerSearch, dict[str, int]]:
    """Drive the importance scan with a fake KL per probed skip set; probes per phase."""
    state = SearchState(n_layer, SearchConfig())
    search = LayerSearch(state, cpu_like_costs(n_layer))
    counts: dict[str, int] = {}
    while any(np.isnan(state.importance)) and (stop_after is None or sum(counts.values()) < stop_after):
        phase, skip, W = search._next()
        if phase == "reference":
            search._refs[W] = object()
            continue
        counts[phase] = counts.get(phase, 0) + 1
        search._observe(Probe(skip, 1.0, kl_of(skip), 0.0, phase))
    return search, counts


def test_importance_scan_probes_free_layers_whole():
    """Three of four layers are exact identities (the K=3 fixture's pattern): each layer is
    probed whole, only the vital ones sub-layer by sub-layer, and the ranking is unchanged."""
    n_layer = 42
    vital = {il for il in range(1, n_layer - 1) if il % 4 == 0}

    def kl_of(skip: SkipSet) -> float:
        return sum(0.3 + 0.01 * il for il in skip.attention | skip.ffn if il in vital)

    search, counts = scan_importance(n_layer, kl_of, stop_after=12)
    assert search.free_evidence() == (24, 18 / 24)   # 12 layers probed whole, 9 of them free
    search, counts = scan_importance(n_layer, kl_of)
    state, inner = search.state, n_layer - 2
    assert counts == {"layer-importance": inner, "importance": 2 * len(vital)}
    free = {i for i, k in enumerate(state.importance) if k < 1e-3}
    assert free == set(SkipSet.from_lists(n_layer, attention=set(range(1, n_layer - 1)) - vital,
                                          ffn=set(range(1, n_layer - 1)) - vital).indices())


def test_importance_scan_falls_back_to_sub_layers_on_a_model_without_free_layers():
    n_layer = 30

    def kl_of(skip: SkipSet) -> float:
        return 0.05 * len(skip)

    search, counts = scan_importance(n_layer, kl_of)
    assert counts == {"layer-importance": 8, "importance": 2 * (n_layer - 2)}   # 8 trial probes only
    assert all(abs(k - 0.05) < 1e-12 for k in search.state.importance)
    assert search.free_evidence() == (2 * (n_layer - 2), 0.0)


def test_bayesian_step_runs_and_every_probe_is_told():
    n_layer = 12
    n = n_sublayers(n_layer)
    target = set(range(0, n, 2))   # the truly free sub-layers of this fake model

    def score(skip: SkipSet) -> float:
        return float(np.exp(-1.5 * len(set(skip.indices()) - target)))

    search, improvements = run_fake_search(n_layer, score, 150, seed=1)
    hist = search.state.history
    bayes = [h for h in hist if h["phase"] == "bayes"]
    assert len(bayes) >= 4                                      # every 25th candidate
    told = sum(1 for h in hist if h["phase"] not in ("importance", "layer-importance", "rescore"))
    assert len(search._told) == told                            # every probe told
    assert search._opt is not None and search._opt.models       # the GP was fitted
    assert search.state.best_matchness > 0.9


def test_bayesian_suggestion_can_win():
    """Told probes that point at a good set the local moves have not reached: the GP's
    suggestion (rounded to the best set's size) is that set, and it replaces the best."""
    n_layer = 12
    n = n_sublayers(n_layer)
    target = set(range(5, 15))
    rng = np.random.default_rng(0)
    state = SearchState(n_layer, SearchConfig(seed=0))
    state.importance = [0.5] * n
    search = LayerSearch(state, cpu_like_costs(n_layer))
    search._refs[state.config.window] = object()
    search._size_grid, search._size_scores = [], {10: 0.0}
    for _ in range(100):   # random sets, scored by their overlap with the target
        idx = set(rng.choice(n, size=10, replace=False).tolist())
        x = [1.0 if i in idx else 0.0 for i in range(n)]
        search._told.append((x, -len(idx & target) / 10))
    state.best = SkipSet.from_indices(n_layer, range(n - 10, n))   # a poor best set of size 10
    state.best_predicted, state.best_matchness = 0.1, 0.1
    suggestion = search._bayes_candidate(state.best)
    overlap = len(set(suggestion.indices()) & target)
    assert overlap >= 7   # a random set of 10 overlaps 5 on average
    probe = Probe(suggestion, 1.0, 0.0, 0.0, "bayes")
    probe.draft_length, probe.predicted = predict(suggestion, 1.0, search.costs)
    search._observe(probe)
    assert state.best == suggestion


def test_importance_then_size_picks_the_free_prefix():
    n_layer = 16
    n = n_sublayers(n_layer)
    free = set(range(0, n, 3))

    def score(skip):
        return 1.0 if set(skip.indices()) <= free else 0.3

    state = SearchState(n_layer, SearchConfig())
    state.importance = [0.0 if i in free else 0.5 + i / 100 for i in range(n)]
    search = LayerSearch(state, cpu_like_costs(n_layer))
    for _ in range(40):
        phase, skip, W = search._next()
        if phase == "reference":
            search._refs[W] = object()
            continue
        probe = Probe(skip, score(skip), 0.0, 0.0, phase)
        probe.draft_length, probe.predicted = predict(skip, probe.matchness, search.costs)
        search._observe(probe)
        if state.done:
            break
    assert set(state.best.indices()) == free
    assert state.done and state.best_matchness == 1.0


# -- profiles ---------------------------------------------------------------------------------

def make_profile(n_layer=30) -> profiles.Profile:
    st = SearchState(n_layer)
    st.importance = [0.1 * i for i in range(n_sublayers(n_layer))]
    st.importance[3] = float("nan")
    st.best = SkipSet.from_lists(n_layer, attention=[3, 5], ffn=[7])
    st.best_matchness, st.best_predicted, st.best_draft_length, st.probes = 0.8, 1.1, 3, 42
    st.round_probes = 12
    return profiles.Profile("abc", "cpu", "model", st, cpu_like_costs(n_layer))


def test_profile_round_trip(tmp_path):
    path = tmp_path / "p.json"
    profiles.save(path, make_profile())
    got = profiles.load(path, "abc", "cpu", 30)
    assert got is not None
    assert got.state.best == make_profile().state.best
    assert got.state.probes == 42 and got.state.round_probes == 12 and np.isnan(got.state.importance[3])
    assert got.costs.v == cpu_like_costs(30).v
    d = json.loads(path.read_text())
    assert d["skip"] == {"attention": [3, 5], "ffn": [7]} and d["version"] == profiles.VERSION


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "version", "other-model", "other-backend", "wrong-layers"])
def test_bad_profiles_are_ignored_with_a_warning(tmp_path, damage):
    path = tmp_path / "p.json"
    profiles.save(path, make_profile())
    text = path.read_text()
    if damage == "corrupt":
        path.write_text("{not json")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "version":
        path.write_text(text.replace(f'"version": {profiles.VERSION}', '"version": 999'))
    model, backend, n_layer = "abc", "cpu", 30
    if damage == "other-model":
        model = "zzz"
    if damage == "other-backend":
        backend = "CUDA0-ngl99"
    if damage == "wrong-layers":
        n_layer = 31
    with pytest.warns(UserWarning, match="ignoring skip profile"):
        assert profiles.load(path, model, backend, n_layer) is None


def _writer(path: str, i: int) -> None:
    prof = make_profile()
    prof.state.probes = i
    for _ in range(40):
        profiles.save(__import__("pathlib").Path(path), prof)


def test_concurrent_writers_never_corrupt_a_profile(tmp_path):
    path = tmp_path / "p.json"
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(str(path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = profiles.load(path, "abc", "cpu", 30)
    assert got is not None and got.state.probes in range(4)
    assert not list(tmp_path.glob(".*tmp"))


class ProbeRuntime:
    """Enough of a protocols.Runtime for LayerSearch.step: logs decodes, returns fixed log-probs."""

    def __init__(self, n_layer=6, n_vocab=8):
        self.n_layer, self.n_vocab, self.n_ctx, self.max_verify = n_layer, n_vocab, 512, 64
        self.decodes, self.mask = [], None
        self._rows = np.log(np.random.default_rng(0).dirichlet(np.ones(n_vocab), size=64))

    def decode(self, tokens, pos0, *, seq=0, all_logits=False):
        self.decodes.append((len(tokens), pos0, seq, self.mask))
        return 0.001

    def verify(self, tokens, pos0, *, seq=0):   # (probes decode their windows through it)
        return self.decode(tokens, pos0, seq=seq, all_logits=True)

    def logits_rows(self, n):
        return self._rows[:n]

    def share(self, src, dst, p0, p1):
        pass

    def remove(self, seq, p0, p1=-1):
        pass

    def room(self, n_past):
        return self.n_ctx - n_past

    def skipping(self, mask):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self.mask = mask
            try:
                yield
            finally:
                self.mask = None
        return ctx()


def test_a_reference_is_taken_with_the_probe_that_reads_it():
    """A step that needs the full model's reference decodes it and then its probe, in the same step:
    the next request's text would drop a reference taken alone before any probe read it (short
    answers used to pay for such references and the search never probed). A reference still valid
    on the stream is reused; step_windows says which (what the loss budget is asked for)."""
    rt = ProbeRuntime()
    search = LayerSearch(SearchState(rt.n_layer, SearchConfig()), cpu_like_costs(rt.n_layer))
    W = search.next_window()
    tokens = list(range(100, 160))
    assert search.step_windows(tokens, 50) == 2
    assert search.step(rt, tokens, 50) is not None and search.state.probes == 1
    assert [(n, pos, seq) for n, pos, seq, _ in rt.decodes] == [(W, 50 - W, 1)] * 2
    rt.decodes.clear()
    tokens.append(7)   # the stream went on: its reference still holds
    assert search.step_windows(tokens, 51) == 1
    assert search.step(rt, tokens, 51) is not None and len(rt.decodes) == 1 and search.state.probes == 2
    rt.decodes.clear()
    other = list(range(200, 260))   # the next request: other text at those positions
    assert search.step_windows(other, 51) == 2
    assert search.step(rt, other, 51) is not None and len(rt.decodes) == 2 and search.state.probes == 3


def test_the_pacer_asks_the_budget_for_what_a_step_of_its_kind_last_cost():
    """A search step is granted only where the request's loss budget can carry it: at first as its
    window decodes at v(W + 1) each times PROBE_PRIOR (the KL over vocabulary rows and a new graph come
    on top), then at least what the last step of its kind cost (a 4-token importance probe of SmolLM2,
    through upstream's batch kernels, took ~7 plain steps where 2 v(5) ~ 4 were asked, and sank a short
    answer to 0.83x); a kind not
    timed yet is priced at the last step's ratio to its decodes."""
    import time as _time

    from swift_gguf.controller import LossBudget
    from swift_gguf.engine import SpecConfig, Stream
    from swift_gguf.pacing import PROBE_PRIOR, SearchPacer

    class SlowRuntime(ProbeRuntime):
        def decode(self, tokens, pos0, *, seq=0, all_logits=False):
            _time.sleep(0.04)   # 4 plain steps of 0.01 s per window decode: 8 a step, where 2 v(5) = 4.8
            return super().decode(tokens, pos0, seq=seq, all_logits=all_logits)

    rt = SlowRuntime()
    costs = cpu_like_costs(rt.n_layer)
    search = LayerSearch(SearchState(rt.n_layer, SearchConfig()), costs)
    pacer = SearchPacer(SpecConfig(), search, costs, rt.n_layer)
    pacer.gen_time = 1e6   # the time share allows any step: the budget decides
    W = search.next_window()

    def budget(steps):
        b = LossBudget()
        b.balance = steps - 1.0   # what the request may still lose: `steps` plain steps
        return b

    first = Stream(list(range(100, 160)), 50)
    assert search.step_windows(first.tokens, 50) == 2 and 2 * costs.verify(W + 1) < 5.5
    decodes = 2 * float(costs.v_table(50)[W + 1])
    assert pacer.step(rt, first, budget(decodes * PROBE_PRIOR - 0.1)) == 0.0   # (no step timed yet)
    b = budget(5.5 + decodes * PROBE_PRIOR)
    secs = pacer.step(rt, first, b)
    assert secs >= 0.08 and b.balance == pytest.approx(4.5 + decodes * PROBE_PRIOR - secs / 0.01)   # charged what it cost
    other = Stream(list(range(200, 260)), 50)   # the next request: a reference again, the same kind of step
    assert search.step_windows(other.tokens, 50) == 2
    assert pacer.step(rt, other, budget(5.5)) == 0.0                     # 5.5 < what it cost last time
    assert pacer.step(rt, other, budget(secs / 0.01 + 0.5)) > 0.0
    # a kind not timed yet (one window decode: the reference still holds): its decodes at the last ratio
    other.tokens.append(7)
    assert search.step_windows(other.tokens, 51) == 1
    ratio = (secs / 0.01) / decodes
    one = float(costs.v_table(51)[W + 1]) * ratio
    assert ratio > 1.5 and one < 0.6 * decodes * PROBE_PRIOR
    assert pacer.step(rt, other, budget(one - 0.3)) == 0.0 and pacer._cost((W, 1), 51) == pytest.approx(one, rel=0.3)
    # a denied step is not priced again while the budget cannot have changed its answer: it is granted
    # the first token the allowance reaches its cost (LOSS_SHARE more per token), or after a cycle
    cost = pacer._cost((W, 1), 51)
    b = budget(cost - 0.1)
    assert pacer.step(rt, other, b) == 0.0
    calls = []
    search.step_windows = lambda *a: calls.append(a) or 1
    for _ in range(3):
        b.tokens += 1
        assert pacer.step(rt, other, b) == 0.0 and not calls   # (0.03 x 3 < 0.1)
    b.tokens += 1
    assert b.allows(cost) and pacer.step(rt, other, b) > 0.0 and calls
    cost = pacer._cost((W, 1), 51)
    b = budget(cost - 0.5)
    assert pacer.step(rt, other, b) == 0.0
    b.cycle(2, 1.0)   # a cycle that gained a plain step
    assert pacer.step(rt, other, b) > 0.0


@pytest.mark.parametrize("W", [1, 4, 13, 50])
def test_probe_scoring_in_row_blocks_is_the_whole_window_arithmetic_bit_for_bit(W):
    """Reference and compare score a window SCORE_ROWS rows at a time in reused buffers (no fresh
    vocabulary-wide arrays per probe): the log-probabilities, matchness and KL are exactly those of the
    whole-window formulas they replaced, for windows shorter and longer than a block."""
    from swift_gguf.search import SCORE_ROWS, Reference, Scratch, Window, compare

    rng = np.random.default_rng(W)
    ref_rows = (rng.standard_normal((W, 3001)) * 4).astype(np.float32)
    probe_rows = (ref_rows + rng.standard_normal((W, 3001)).astype(np.float32)).astype(np.float32)

    def log_softmax(rows):   # the whole-window formula (search.py until 2026-12-05)
        x = rows.astype(np.float64)
        x -= x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    scratch = Scratch()
    ref = Reference(Window(list(range(W + 1)), 0), ref_rows, scratch)
    want_logp = log_softmax(ref_rows)
    assert np.array_equal(ref.logp, want_logp) and np.array_equal(ref.p, np.exp(want_logp))
    logp = log_softmax(probe_rows)
    want = (float(np.mean(logp.argmax(axis=1) == want_logp.argmax(axis=1))),
            max(float(np.mean(np.sum(ref.p * (ref.logp - logp), axis=1))), 0.0))
    assert compare(ref, probe_rows, scratch) == want and want[1] > 0
    assert scratch.blocks(3001)[0].shape == (SCORE_ROWS, 3001)   # bounded whatever W is
