"""Drafters and the controller that chooses between them.

Unit tests (no model): the n-gram index stays equal to one built from scratch through appends
and rollbacks; acceptance statistics; the cost model's per-context verification tables; the
controller's decision as a deterministic function of given costs and acceptance; the auto
backoff. Real-model tests: greedy output with each drafter forced equals plain decoding (shared
prompts; long RAG and summarization contexts past 512 cells); long lookup drafts roll back after
a rejection; same-seed sampling with lookup drafts is plain sampling token for token.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from swift_gguf import costmodel
from swift_gguf.controller import (LOSS_SHARE, LOSS_STEPS, Backoff, Controller, LossBudget, choose,
                                   resolve_spec_type)
from swift_gguf.costmodel import Costs, best_length, bucket
from swift_gguf.drafters import Acceptance, LookupDrafter, NgramIndex, Offer, offer_class
from swift_gguf.engine import SpecConfig, Stream

SPEC_BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "spec-bench" / "questions.jsonl"
V_SHORT = [0.0, 1.0, 1.54, 1.74, 2.0, 2.29, 2.6, 2.9, 3.2, 3.49] + [3.49 + 0.4 * i for i in range(1, 60)]
V_LONG = [0.0, 1.0, 1.64, 2.40, 3.06, 3.72, 4.35, 5.0, 5.6, 6.26] + [6.26 + 0.66 * i for i in range(1, 60)]


# -- the n-gram index ---------------------------------------------------------------------------

def fresh(tokens, is_eog=lambda t: False):
    idx = NgramIndex(is_eog=is_eog)
    idx.sync(list(tokens))
    return idx


@pytest.mark.parametrize("vocab", [5, 60])
def test_index_follows_appends_and_rollbacks_exactly(vocab):
    """Through appends to one list and switches to other lists sharing a prefix (the next request,
    the next chat turn), the index equals one built from scratch on the current list: its unigrams
    at once, its longer n-grams and end-of-generation positions once completed. (With 60 tokens
    the last token often occurs nowhere earlier, so match() leaves positions lazy across switches.)"""
    rng = random.Random(vocab)
    eog = lambda t: t == 0
    idx = NgramIndex(is_eog=eog)
    tokens = [rng.randrange(vocab) for _ in range(30)]
    idx.sync(tokens)
    for step in range(200):
        if step % 7 == 3:   # another list: a common prefix, then different tokens
            keep = rng.randrange(len(tokens) + 1)
            tokens = tokens[:keep] + [rng.randrange(vocab) for _ in range(rng.randrange(1, 10))]
        else:
            tokens.append(rng.randrange(vocab))
        idx.sync(tokens)
        ref = fresh(tokens, eog)
        assert idx.tokens == tokens
        assert {k: v for k, v in idx.ends.items() if isinstance(k, int)} == ref.ends
        assert idx.match() == ref.match()
        if step % 5 == 0:
            idx.complete()
            ref.complete()
            assert idx.ends == ref.ends and idx.eog == ref.eog == [j for j, t in enumerate(tokens) if t == 0]


def test_index_match_is_the_longest_latest_occurrence():
    #        0  1  2  3  4  5  6  7  8  9 10 11 12
    idx = fresh([7, 1, 2, 3, 9, 5, 2, 3, 8, 4, 1, 2, 3])
    m, q, agree = idx.match()
    # "1 2 3" occurs at 1..3 (followed by 9); "2 3" also at 6..7 (followed by 8): the 3-gram wins
    assert (m, q, agree) == (3, 3, True)
    idx = fresh([5, 2, 3, 9, 6, 2, 3, 8, 0, 2, 3])
    m, q, agree = idx.match()
    assert (m, q) == (2, 6) and not agree     # the latest of equals; the earlier ones disagree (9, 8)
    assert fresh([1, 2, 3]).match() is None


def test_offer_classes_grow_with_the_match_and_agreement():
    assert offer_class(1, False) < offer_class(1, True) < offer_class(2, False)
    assert offer_class(5, True) == offer_class(7, True) < offer_class(8, True) < offer_class(40, True)


def test_lookup_offers_the_continuation_and_learns_from_what_followed():
    d = LookupDrafter(Costs(), is_eog=lambda t: t == 0)
    stream = Stream([4, 5, 6, 7, 0, 9, 4, 5], 7)
    offer = d.offer(stream, stream.n_past)
    assert offer.tokens == [6, 7, 0] and offer.limit == 3     # cut after the end-of-generation token
    before = d.acceptance.seen[offer.key].copy()
    stream.tokens += [6, 1]                                   # the model went on with 6, then not 7
    stream.n_past += 2
    d.offer(stream, stream.n_past)                            # resolves the unused (shadow) offer
    seen = d.acceptance.seen[offer.key] - before * 0.98
    assert np.allclose(seen[:3], [1, 1, 0])                   # position 1 accepted, position 2 rejected


def test_acceptance_is_conditional_per_position():
    a = Acceptance([0.5, 0.5], positions=4, weight=0.0, decay=1.0)
    a.observe(1, drafted=4, n_accepted=1)    # position 1 accepted, 2 rejected, 3-4 never reached
    a.observe(1, drafted=4, n_accepted=4)
    assert a.probs(1)[:2] == [1.0, 0.5] and a.seen[1].tolist() == [2, 2, 1, 1]
    assert a.probs(0) == [0.5] * 4



def test_acceptance_priors_per_position():
    """A (first, later) prior: once a looked-up token was right the text is usually being copied."""
    a = Acceptance([(0.2, 0.8), 0.5], positions=4, weight=2.0, decay=1.0)
    assert a.probs(0) == pytest.approx([0.2, 0.8, 0.8, 0.8]) and a.probs(1) == pytest.approx([0.5] * 4)
    a.observe(0, drafted=4, n_accepted=0)    # only position 1 reached: the later ones keep their prior
    assert a.probs(0) == pytest.approx([0.4 / 3, 0.8, 0.8, 0.8])

# -- the cost model ------------------------------------------------------------------------------

def test_v_table_prefers_live_numbers_and_shifts_calibration_by_context():
    c = Costs(t_plain=0.010, v={2: 1.5, 3: 1.75, 5: 2.3, 9: 3.5}, n_ctx=100)
    short = c.v_table(100)
    assert short[1] == 1.0 and short[2] == pytest.approx(1.5) and short[9] == pytest.approx(3.5)
    # a long context where plain steps were measured 3x dearer: each row pays the attention growth
    for _ in range(3):
        c.observe_plain(1500, 0.030)
    long = c.v_table(1500)
    assert long[9] == pytest.approx((3.5 * 0.010 + 9 * 0.020) / 0.030)
    assert bucket(100) != bucket(1500) and np.all(np.diff(long) >= 0)
    # live verifications of 3 tokens at that context replace the shape there and set its level
    for _ in range(20):
        c.observe_verify(1500, 3, 0.060)
    live = c.v_table(1500)
    assert live[3] == pytest.approx(2.0) and live[2] < live[3] < live[4]
    assert live[5] == pytest.approx(long[5] * 2.0 / long[3])
    assert c.v_table(100)[9] == pytest.approx(3.5)   # another bucket is unaffected


def test_v_table_keeps_a_disturbed_calibrations_ratios():
    """A calibration whose plain step was timed slower than generation's (a cold first call, a busy
    machine) keeps its v(n) ratios: the context shift (each row paying the attention growth since the
    calibration) must not turn negative. It did: the Qwen 0.5B Spec-Bench replay built tables with
    v(14) = 11 where verification cost 3.5, and v(n) = 1 for every n in another bucket."""
    c = Costs(t_plain=0.0164, v={2: 1.05, 3: 1.25, 5: 1.64, 9: 2.55, 17: 4.4}, n_ctx=50)
    for _ in range(3):
        c.observe_plain(400, 0.0129)   # generation's plain steps: faster than the calibration's
    t = c.v_table(400)
    assert t[9] == pytest.approx(2.55) and t[17] == pytest.approx(4.4) and t[40] > t[17]
    for _ in range(20):                # one live size sets the level, the calibration the shape
        c.observe_verify(400, 2, 0.0129 * 1.1)
    live = c.v_table(400)
    assert live[2] == pytest.approx(1.1) and live[17] == pytest.approx(4.4 * 1.1 / 1.05)
    assert np.all(np.diff(live[1:]) >= 0) and np.all(live[2:] <= np.arange(2, len(live)))


# -- the policy ----------------------------------------------------------------------------------

def offer(name, accept, limit=16, c_token=0.0, c_fixed=0.0):
    class Named:
        pass
    d = Named()
    d.name = name
    return Offer(d, limit, list(accept) + [accept[-1]] * 64, c_fixed=c_fixed, c_token=c_token)


def test_best_length_trades_acceptance_against_verification_cost():
    sure = [0.95] * 32
    d_short, s_short = best_length(sure, 0.0, 0.0, V_SHORT, 32)
    d_long, s_long = best_length(sure, 0.0, 0.0, V_LONG, 32)
    assert d_short > d_long >= 1 and s_short > s_long > 1.0   # dear verification: shorter drafts
    # exact S for a one-token draft: (1 + p) / v(2)
    assert best_length([0.6], 0.0, 0.0, V_SHORT, 1) == (1, pytest.approx(1.6 / 1.54))
    # a draft cost per token shortens the draft
    assert best_length(sure, 0.0, 0.3, V_SHORT, 32)[0] < d_short


def test_one_speedup_model():
    """best_length's one-pass S(d) is costmodel.speedup(d) to the bit, for every d up to where it stops;
    the fixed-length choice and the search's `predict` are the same formula on their own inputs."""
    rng = random.Random(3)
    for _ in range(300):
        accept = [rng.random() ** rng.choice([0.2, 1, 3]) for _ in range(40)]
        c_fixed, c_token = rng.choice([0.0, 0.05]), rng.choice([0.0, 0.02, 0.4])
        v = rng.choice([V_SHORT, V_LONG])
        limit = rng.randrange(1, 32)
        d, s = best_length(accept, c_fixed, c_token, v, limit)
        assert s == costmodel.speedup(accept, c_fixed, c_token, d, v)
        reach, stop = 1.0, limit
        for k in range(1, limit + 1):
            reach *= accept[k - 1]
            if reach < costmodel.TINY:
                stop = k
                break
        assert s == max(costmodel.speedup(accept, c_fixed, c_token, k, v) for k in range(1, stop + 1))
        o = Offer(None, limit, accept, c_fixed=c_fixed, c_token=c_token)
        fixed = rng.randrange(1, 32)
        assert choose([o], v, limit, 0.02, fixed=fixed).speedup == costmodel.speedup(
            accept, c_fixed, c_token, min(fixed, limit), v)
    from swift_gguf.skipset import SkipSet
    costs = Costs(t_plain=0.01, v=CPU_V, attn=0.01, ffn=0.02, n_ctx=100)
    skip = SkipSet.from_indices(30, range(10))
    assert costmodel.predict(skip, 0.8, costs) == best_length(
        [0.8] * costmodel.DRAFT_MAX, 0.0, costs.c(skip), [costs.verify(n) for n in range(costmodel.V_MAX + 1)],
        costmodel.DRAFT_MAX)
    assert costmodel.predict(skip, 0.8, Costs()) == (1, 0.0)


def test_choose_the_best_offer_and_whether_it_pays():
    weak = offer("ngram", [0.3])
    c = choose([weak], V_SHORT, 16, 0.02)
    assert c.offer is weak and not c.pays                            # (1 + 0.3) / 1.54 < 1
    strong = offer("ngram", [0.9])
    skip = offer("layer-skip", [0.7], c_token=0.4)
    c = choose([skip, strong], V_SHORT, 16, 0.02)
    assert c.offer is strong and c.pays and c.d > 1 and c.speedup > 1.5
    assert choose([skip, strong], V_SHORT, 2, 0.02).d == 2            # the cap (tokens left, room)
    assert choose([strong], V_SHORT, 16, 0.02, fixed=5).d == 5
    # margin: a predicted 1.04x pays with margin 0.02, not with 0.05
    p = 1.04 * 1.54 - 1.0
    assert choose([offer("ngram", [p], limit=1)], V_SHORT, 16, 0.02).pays
    assert not choose([offer("ngram", [p], limit=1)], V_SHORT, 16, 0.05).pays
    assert choose([], V_SHORT, 16, 0.02).offer is None


def test_the_same_offer_pays_at_a_short_context_and_not_at_a_long_one():
    o = offer("ngram", [0.62])
    assert choose([o], V_SHORT, 16, 0.02).pays
    assert not choose([o], V_LONG, 16, 0.02).pays


class ScriptedDrafter:
    """Offers a fixed acceptance profile (the controller sees drafters only through offers)."""
    stationary = False   # asked every plan

    def __init__(self, name, accept, c_token=0.0):
        self.name, self.accept, self.c_token = name, accept, c_token

    def offer(self, stream, n_ctx):
        self.last_offer = Offer(self, 16, [self.accept] * 16, c_token=self.c_token)
        return self.last_offer

    def idle_reason(self):
        return "idle"


CPU_V = {2: 1.54, 3: 1.74, 5: 2.29, 9: 3.49, 17: 6.65}


def controller(mode="auto", spec_type=None, v=None, timed=True, **drafters):
    """A controller over scripted drafters, with calibrated costs at a 100-token context; timed:
    live timings that agree with the calibration (so no verification size is left to explore)."""
    costs = Costs(t_plain=0.01, v=v or CPU_V, n_ctx=100)
    if timed:
        for _ in range(2):
            costs.observe_plain(100, 0.01)
            for n in range(2, 33):
                costs.observe_verify(100, n, 0.01 * costs.verify(n))
    cfg = SpecConfig(mode=mode, spec_type=spec_type)
    return Controller(cfg, costs, drafters), costs


def test_controller_decision_from_given_costs():
    """The decision issue #14 asked for: from given costs, not from this machine's speed."""
    stream = Stream(list(range(101)), 100)
    skip = ScriptedDrafter("layer-skip", 0.6, 0.5)
    ctl, _ = controller(ngram=ScriptedDrafter("ngram", 0.8), **{"layer-skip": skip})
    ctl.budget.tokens = 10**6   # a long answer: its loss budget (tested below) caps no draft
    plan = ctl.plan(stream, d_cap=32)
    assert plan.offer.drafter.name == "ngram" and plan.d >= 3 and plan.speedup > 1.3
    # layer skipping alone at c = 0.5 and 60% acceptance does not pay on these costs: plain
    ctl, _ = controller(spec_type="layer-skip", **{"layer-skip": skip})
    plan = ctl.plan(stream, d_cap=32)
    assert plan.offer is None and "does not pay" in plan.reason
    # ... the same set on a cheap-to-verify backend (v(n) near 1) pays
    ctl, _ = controller(spec_type="layer-skip", v={2: 1.05, 3: 1.1, 5: 1.2, 9: 1.4, 17: 2.0}, **{"layer-skip": skip})
    assert ctl.plan(stream, d_cap=32).offer is skip.last_offer
    # swift mode speculates whatever the prediction; off never does
    ctl, _ = controller(mode="swift", **{"layer-skip": ScriptedDrafter("layer-skip", 0.1, 0.9)})
    assert ctl.plan(stream, d_cap=32).offer is not None
    ctl, _ = controller(mode="off", ngram=ScriptedDrafter("ngram", 0.99))
    assert ctl.plan(stream, d_cap=32).offer is None


def test_controller_explores_sizes_whose_verification_was_never_timed():
    """A draft that nearly pays on the calibration's costs is tried until its verification size was
    timed live at this context (twice); then the live cost decides."""
    stream = Stream(list(range(101)), 100)
    near = ScriptedDrafter("ngram", 0.42)           # best: d = 1, S = 1.42 / 1.54 = 0.92
    ctl, costs = controller(timed=False, ngram=near)
    plan = ctl.plan(stream, d_cap=32)
    assert plan.offer is not None and plan.d == 1 and 0.8 < plan.speedup < 1.0
    costs.observe_plain(100, 0.01)
    costs.observe_plain(100, 0.01)
    costs.observe_verify(100, 2, 0.0154)
    assert ctl.plan(stream, d_cap=32).offer is not None   # timed once: not yet believed
    costs.observe_verify(100, 2, 0.0154)
    assert ctl.plan(stream, d_cap=32).offer is None        # timed: it does not pay
    far = ScriptedDrafter("ngram", 0.1)             # S = 0.71: not worth trying
    ctl, _ = controller(timed=False, ngram=far)
    assert ctl.plan(stream, d_cap=32).offer is None


class StationaryDrafter(ScriptedDrafter):
    stationary = True   # one prediction for the whole stream (layer skipping)


def test_auto_backoff_sets_a_losing_stationary_drafter_aside_and_doubles():
    stream = Stream(list(range(101)), 100)
    ctl, costs = controller(v={2: 1.05, 3: 1.1, 5: 1.2, 9: 1.4, 17: 2.0},
                            **{"layer-skip": StationaryDrafter("layer-skip", 0.9, 0.05)})
    ctl.budget.tokens = 10**6   # a long answer: its loss budget (tested below) does not stop it first

    def lose() -> int:
        """Cycles that emit 1 token in 2 plain steps' time (a measured loss) until it sits out."""
        n = 0
        while ctl.plan(stream, 32).offer is not None:
            ctl.observe("layer-skip", 1, 1, 0.02, 100)
            n += 1
        return n

    assert lose() == 10                                       # the evidence: 8 decayed cycles
    plan = ctl.plan(stream, 32)
    assert "measured at 0.50x" in plan.reason
    ctl.generated += 63
    assert ctl.plan(stream, 32).offer is None
    ctl.generated += 1                                        # 64 tokens later: drafts again
    assert lose() == 10
    ctl.generated += 127
    assert ctl.plan(stream, 32).offer is None                 # the second loss: 128 tokens
    ctl.generated += 1
    assert ctl.plan(stream, 32).offer is not None


def test_lookup_is_never_set_aside_its_classes_learn_and_the_budget_bounds_it():
    """Prompt lookup predicts per match class and learns each one live: a run of rejections is the
    budget's business (per answer), not a reason to set aside the long copies of the next answer."""
    stream = Stream(list(range(101)), 100)
    ctl, costs = controller(ngram=ScriptedDrafter("ngram", 0.9))
    for answer in range(3):
        ctl.budget.start()
        ctl.budget.tokens = 200
        n = 0
        while ctl.plan(stream, 32).offer is not None:
            ctl.observe("ngram", 1, 1, 0.02, 100)   # 1 token in 2 plain steps: a loss
            n += 1
        assert n > 5 and "allowance" in ctl.plan(stream, 32).reason
        ctl.generated += 200
    assert ctl.backoff.allows("ngram", ctl.generated) and ctl.backoff.measured("ngram") is None


def test_auto_stops_speculating_in_an_answer_once_it_lost_its_allowance():
    """LossBudget: cycles that cost more plain steps than they emit stop `auto` for the rest of the
    answer once what is left of LOSS_STEPS + LOSS_SHARE x its tokens cannot pay for one rejected
    draft; the allowance grows with the answer, a new answer starts afresh, and `swift` ignores it."""
    stream = Stream(list(range(101)), 100)
    ctl, costs = controller(ngram=ScriptedDrafter("ngram", 0.9))
    v2 = costs.v_table(100)[2] - 1.0                          # what a rejected one-token draft loses
    ctl.budget.start()
    ctl.budget.tokens = 10
    assert ctl.plan(stream, 32).offer is not None
    ctl.observe("ngram", 1, 1, 0.02, 100)                     # 1 token for 2 plain steps: -1
    assert ctl.budget.balance == pytest.approx(-1.0)
    assert ctl.budget.allowance() < v2                        # 1 + 0.3 - 1: no draft fits any more
    plan = ctl.plan(stream, 32)
    assert plan.offer is None and "allowance" in plan.reason
    ctl.budget.tokens += int((v2 + 1.0 - LOSS_STEPS) / LOSS_SHARE) + 1   # a long enough answer carries it
    assert ctl.plan(stream, 32).offer is not None
    ctl.observe("ngram", 1, 1, 0.02, 100)
    assert ctl.plan(stream, 32).offer is None
    ctl.budget.start()                                        # the next answer
    assert ctl.plan(stream, 32).offer is not None
    ctl.budget.charge(2.0)                                    # a layer-search probe of 2 plain steps
    assert not ctl.budget.allows() and ctl.plan(stream, 32).offer is None
    ctl.config.mode, ctl.config.spec_type = "swift", "ngram"
    ctl.refresh()                                             # (as SwiftLlama.speculation and each request do)
    assert ctl.plan(stream, 32).offer is not None


def test_no_draft_is_longer_than_the_allowance_can_lose():
    """A draft of d tokens that is all rejected costs v(d + 1) - 1 plain steps more than a plain step
    (plus its drafting): auto drafts no more than what is left of the answer's allowance can pay for,
    so one wrong prediction cannot take a short answer below its floor (a rejected 8-token lookup cost
    a 20-token Qwen2.5-Coder-1.5B answer 0.92x). The cap grows with the answer and with its gains."""
    stream = Stream(list(range(101)), 100)
    ctl, costs = controller(v={2: 1.1, 3: 1.3, 5: 1.6, 9: 2.4, 17: 4.0}, ngram=ScriptedDrafter("ngram", 0.95))
    free, _ = controller(v={2: 1.1, 3: 1.3, 5: 1.6, 9: 2.4, 17: 4.0}, ngram=ScriptedDrafter("ngram", 0.95))
    free.budget.tokens = 10**6
    v = costs.v_table(100)

    def longest(loss):
        return max(d for d in range(len(v) - 1) if v[d + 1] - 1.0 <= loss)

    ctl.budget.start()
    plan = ctl.plan(stream, 32)
    assert plan.offer is not None and 1 <= plan.d == longest(LOSS_STEPS) < 16
    ctl.budget.tokens = 50                                    # 1 + 1.5 steps
    assert plan.d < ctl.plan(stream, 32).d <= longest(LOSS_STEPS + 50 * LOSS_SHARE)
    ctl.budget.cycle(12, 3.0)                                 # a paying cycle widens it
    assert ctl.plan(stream, 32).d == free.plan(stream, 32).d   # no longer capped
    # a drafter's own cost counts too: layer skipping at 0.3 plain steps a drafted token
    ctl, costs = controller(v={2: 1.02, 3: 1.04, 5: 1.08, 9: 1.16, 17: 1.32},
                            **{"layer-skip": ScriptedDrafter("layer-skip", 0.95, 0.3)})
    ctl.budget.start()
    plan = ctl.plan(stream, 32)
    v = costs.v_table(100)
    assert plan.offer is not None and plan.d * 0.3 + v[plan.d + 1] - 1.0 <= LOSS_STEPS
    assert (plan.d + 1) * 0.3 + v[plan.d + 2] - 1.0 > LOSS_STEPS
    # swift mode has no budget
    ctl.config.mode = "swift"
    ctl.refresh()
    assert ctl.plan(stream, 32).d > plan.d


def test_loss_budget_bounds_the_allowance():
    b = LossBudget()
    assert b.allows(LOSS_STEPS) and not b.allows(LOSS_STEPS + 0.01)
    b.tokens = 100
    assert b.allowance() == pytest.approx(LOSS_STEPS + 100 * LOSS_SHARE)
    b.cycle(5, 2.0)                                           # a paying cycle adds to what may be lost
    assert b.allowance() == pytest.approx(LOSS_STEPS + 100 * LOSS_SHARE + 3.0)
    b.start()
    assert b.balance == 0.0 and b.tokens == 0


def test_backoff_forgets_after_a_gain():
    b = Backoff()
    while b.allows("x", 0):
        b.observe("x", 1, 2.0, 0)                            # losses until it sits out (64 tokens)
    assert not b.allows("x", 63) and b.allows("x", 64)
    for _ in range(30):
        assert b.observe("x", 3, 1.0, 64) is None            # 3x: it pays
    while b.allows("x", 100):
        b.observe("x", 1, 2.0, 100)
    assert b.allows("x", 164) and not b.allows("x", 163)     # back to the first length, not 128


def test_layer_skip_live_numbers_are_the_decayed_ratios():
    """The layer-skip drafter's live acceptance and low-confidence acceptance (costmodel.Decayed) are
    the decayed sums written out by hand, observation by observation, through skip-set changes and a
    reopened search."""
    from types import SimpleNamespace

    from swift_gguf.drafters import (LIVE_ALPHA_MIN, LIVE_DECAY, LOW_CONF_DECAY, LOW_CONF_KEEP, LOW_CONF_MIN,
                                     TASK_CHANGE_DROP, TASK_CHANGE_MIN, Draft, LayerSkipDrafter)
    from swift_gguf.skipset import SkipSet
    rng = random.Random(4)
    state = SimpleNamespace(best=SkipSet.from_indices(10, [1]), best_matchness=0.7, done=True)
    search = SimpleNamespace(state=state, reopened=0)
    search.reopen = lambda: setattr(search, "reopened", search.reopened + 1)
    cfg = SpecConfig(mode="auto")
    d = LayerSkipDrafter(SimpleNamespace(n_vocab=8), cfg, search, Costs())
    acc = dr = low_acc = low_n = 0.0
    last = None
    for step in range(600):
        if step % 97 == 50:   # the search found another set: live acceptance starts afresh
            state.best = SkipSet.from_indices(10, [rng.randrange(16)])
        n = rng.randrange(1, 9)
        probs = [rng.random() for _ in range(n)]
        n_acc = rng.randrange(n + 1)
        d.observe(Draft("layer-skip", [0] * n, probs, 0.0), n_acc)
        if state.best is not last:   # (observe follows the set first)
            acc = dr = 0.0
            last = state.best
        for i, p in enumerate(probs):
            if p < cfg.draft_p_min:
                low_acc, low_n = LOW_CONF_DECAY * low_acc + (i < n_acc), LOW_CONF_DECAY * low_n + 1
        acc, dr = LIVE_DECAY * acc + n_acc, LIVE_DECAY * dr + n
        if dr >= TASK_CHANGE_MIN and acc / dr < state.best_matchness - TASK_CHANGE_DROP:
            acc = dr = 0.0   # the drafter reopened the search
        assert d.alpha() == (acc / dr if dr >= LIVE_ALPHA_MIN else state.best_matchness)
        assert d.epsilon() == (0.0 if low_n >= LOW_CONF_MIN and low_acc / low_n > LOW_CONF_KEEP else cfg.draft_p_min)
    assert search.reopened > 0


def test_spec_type_names():
    assert resolve_spec_type(None, "swift") == "layer-skip" and resolve_spec_type(None, "auto") == "auto"
    assert resolve_spec_type("lookup", "auto") == "ngram"
    assert SpecConfig(spec_type="lookup").spec_type == "ngram"
    with pytest.raises(ValueError, match="unknown spec_type"):
        SpecConfig(spec_type="eagle")


def test_chat_colors_follow_the_drafter():
    import io

    from swift_gguf.chat import DRAFTER_COLORS, RESET, ChatUI, Piece
    ui = ChatUI.__new__(ChatUI)
    ui.out, ui.color = io.StringIO(), True
    color = ""
    for p in (Piece("a", False), Piece("b", True, "ngram"), Piece("c", True, "ngram"),
              Piece("d", True, "layer-skip"), Piece("e", False)):
        color = ui._write(p, color)
    assert ui.out.getvalue() == (f"a{DRAFTER_COLORS['ngram']}bc{DRAFTER_COLORS['layer-skip']}d{RESET}e")


# -- real model ----------------------------------------------------------------------------------

N_TOKENS = 64


@pytest.fixture(scope="module")
def llm(model_path):
    from swift_gguf.api import SwiftLlama
    m = SwiftLlama(str(model_path), n_ctx=2048, spec="off", profile=None)
    yield m
    m.close()


def spec_bench(category: str, n: int) -> list[str]:
    """The first turns of the first n Spec-Bench questions of a (question's own) category."""
    from swift_gguf.optimize import spec_bench_questions
    return [q["prompt"] for q in spec_bench_questions(SPEC_BENCH) if q["source_category"] == category][:n]


@pytest.fixture(scope="module")
def prompts(llm, bench_prompts):
    """Four shared prompts, and a RAG and a summarization question of Spec-Bench (> 512 tokens)."""
    from swift_gguf.generation import render_prompt
    if not SPEC_BENCH.exists():
        pytest.skip(f"Spec-Bench questions not found at {SPEC_BENCH}")
    out = {p["id"]: render_prompt(llm, p["prompt"], True) for p in bench_prompts[:4]}
    for cat in ("rag", "summarization"):
        for i, text in enumerate(spec_bench(cat, 1)):
            out[f"{cat}-{i}"] = render_prompt(llm, text, True)
    return out


def long_ones(prompts):
    return {k: v for k, v in prompts.items() if k.startswith(("rag", "summarization"))}


def gen(llm, tokens, n=N_TOKENS, params=None, **spec):
    with llm.speculation(**spec):
        llm.reset()
        out = [t.id for t in llm.generate_tokens(tokens, params, max_tokens=n)]
    return out, llm.last_stats


@pytest.fixture(scope="module")
def plain(llm, prompts):
    return {pid: gen(llm, toks, mode="off")[0] for pid, toks in prompts.items()}


@pytest.mark.parametrize("spec", [
    dict(mode="swift", spec_type="ngram"),
    dict(mode="auto", spec_type="ngram"),
    dict(mode="auto", spec_type="auto"),
], ids=["swift-ngram", "auto-ngram", "auto-auto"])
def test_greedy_with_each_drafter_equals_plain(llm, prompts, plain, spec):
    assert all(len(t) > 512 for t in long_ones(prompts).values())   # long contexts: past 512 cells
    drafted = 0
    for pid, toks in prompts.items():
        out, st = gen(llm, toks, **spec)
        assert out == plain[pid], (pid, spec, st.summary())
        drafted += st.drafters.get("ngram", {}).get("drafted", 0)
    if spec["mode"] == "swift":   # (whether auto drafts depends on this machine's costs: not asserted)
        assert drafted > 0


def test_long_lookup_drafts_roll_back_after_a_rejection(llm, prompts, plain, monkeypatch):
    """Forced 24-token lookup drafts: some of 16+ tokens are rejected part-way; the rejected
    positions leave the KV cache (which holds exactly the accepted text), and the output is plain's."""
    from llama_cpp import llama_cpp as C
    seen = []
    real = llm.engine.lookup.observe
    monkeypatch.setattr(llm.engine.lookup, "observe", lambda d, n: (seen.append((len(d.tokens), n)), real(d, n)))
    for pid, toks in long_ones(prompts).items():
        out, st = gen(llm, toks, mode="swift", spec_type="ngram", draft_max=24)
        assert out == plain[pid]
        assert C.llama_memory_seq_pos_max(llm.rt.mem, 0) == llm.n_tokens - 1
    assert any(d >= 16 and n < d for d, n in seen), seen


def test_same_seed_sampling_with_lookup_drafts_is_plain_sampling(llm, prompts):
    from swift_gguf.sampling import SamplingParams
    toks = prompts["summarization-0"]
    drafted = rejected = 0
    for seed in range(2):
        p = SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=seed)
        plain, _ = gen(llm, toks, n=32, params=p, mode="off")
        out, st = gen(llm, toks, n=32, params=p, mode="swift", spec_type="ngram", draft_max=8)
        assert out == plain, f"seed {seed}"
        drafted += st.drafted
        rejected += st.drafted - st.accepted
    assert drafted > 0 and rejected > 0
