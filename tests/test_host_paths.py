"""The per-token host paths made cheaper for fast backends (issue 25).

Each shortcut is checked against a plain computation of the same thing: v tables against the
per-n formula, the controller's remembered draft lengths and reused plans against `choose` on
the table itself, the n-gram index's match against a brute-force search. Two shortcuts decide on
numbers a little older, on purpose, and are checked for when they look again: a stationary
drafter's offer held for HOLD_TOKENS tokens, and v tables rebuilt by the weight of new
observations (plain steps only once the plain step moved). No model needed.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest

from swift_gguf import costmodel as cm
from swift_gguf.controller import EXPLORE_MIN, HOLD_TOKENS, Controller, choose
from swift_gguf.costmodel import MIN_LIVE, V_DRIFT, V_MAX, V_REFRESH, V_VERIFY_WEIGHT, Costs, bucket
from swift_gguf.drafters import CANDIDATES, MATCH_CAP, NGRAM_MAX, NgramIndex, Offer
from swift_gguf.engine import SpecConfig, Stream
from swift_gguf.runtime import STEP_TRIALS, StepKernels


def reference_table(c: Costs, n_ctx: int) -> np.ndarray:
    """v(n) for one n at a time, as docs/cost-model.md describes it."""
    b, t1 = bucket(n_ctx), c.plain_seconds(n_ctx)
    ns = np.arange(V_MAX + 1, dtype=np.float64)
    if c.known and t1 > 0:
        r = min(c.t_plain / t1, 1.0)   # a calibration slower than a plain step now: its ratios as they are
        shape = ns * (1.0 - r) + np.array([c.verify(int(n)) for n in ns]) * r
    else:
        shape = ns.copy()
    timed = {n: e for n, e in c.live.verify.get(b, {}).items() if e.n >= MIN_LIVE and t1 > 0 and n <= V_MAX}
    table = shape.copy()
    if timed:
        # each timed size's live / shape ratio, shrunk toward the pooled one (weights: observations, capped)
        raw = {n: e.mean / t1 / max(float(shape[n]), 1e-9) for n, e in timed.items()}
        w = {n: float(min(e.n, cm.SHRINK_CAP)) for n, e in timed.items()}
        pts = sorted(timed)
        pooled = sum(w[n] * raw[n] for n in pts) / sum(w[n] for n in pts)
        ratio = {n: (w[n] * raw[n] + cm.SHRINK * pooled) / (w[n] + cm.SHRINK) for n in pts}
        for n in range(2, V_MAX + 1):
            near = min(pts, key=lambda p: (abs(p - n), p))
            table[n] = shape[n] * ratio[near]
    table = np.minimum(np.maximum(table, 1.0), np.maximum(ns, 1.0))
    table[0] = 0.0
    return np.maximum.accumulate(table)


def random_costs(rng: random.Random) -> tuple[Costs, int]:
    c = Costs()
    if rng.random() < 0.8:
        secs = {1: rng.uniform(1e-4, 1e-2)}
        secs.update({n: secs[1] * rng.uniform(0.5, 1.3 * n) for n in cm.CALIBRATION_SIZES if rng.random() < 0.9})
        if len(secs) >= 3:
            cm.set_calibration(c, secs, rng.randrange(2000))
    n_ctx = rng.randrange(3000)
    for _ in range(rng.randrange(40)):
        at = n_ctx if rng.random() < 0.8 else rng.randrange(3000)
        if rng.random() < 0.4:
            c.observe_plain(at, rng.uniform(1e-4, 2e-2))
        else:
            c.observe_verify(at, rng.choice([2, 3, 5, 9, 17, 32, 64, 70]), rng.uniform(1e-4, 5e-2))
    return c, n_ctx


def test_v_tables_are_bitwise_the_per_n_formula():
    rng = random.Random(0)
    for _ in range(500):
        c, n_ctx = random_costs(rng)
        assert c.v_table(n_ctx).tobytes() == reference_table(c, n_ctx).tobytes()


def test_v_tables_are_rebuilt_after_verifications_or_a_moved_plain_step():
    """A bucket's table is rebuilt after 16 verifications there; after plain steps only where the
    plain step moved by more than V_DRIFT (steady plain steps every token rebuilt it for nothing)."""
    costs = Costs(t_plain=0.01, v={2: 1.5, 3: 1.8, 5: 2.4, 9: 3.6, 17: 6.9}, n_ctx=100)
    for _ in range(MIN_LIVE):
        costs.observe_plain(100, 0.01)
    t = costs.v_table(100)
    for _ in range(3 * V_REFRESH):
        costs.observe_plain(100, 0.01 * (1 + V_DRIFT / 2))
    assert costs.v_table(100) is t
    for _ in range(V_REFRESH):
        costs.observe_plain(100, 0.0125)
    t2 = costs.v_table(100)
    assert t2 is not t and t2.tobytes() == reference_table(costs, 100).tobytes()
    for _ in range(V_REFRESH // V_VERIFY_WEIGHT - 1):
        costs.observe_verify(100, 5, 0.03)
        assert costs.v_table(100) is t2
    costs.observe_verify(100, 5, 0.03)
    t3 = costs.v_table(100)
    assert t3 is not t2 and t3.tobytes() == reference_table(costs, 100).tobytes()


class Drafter:
    """Offers whatever the test sets, as the same object while it is unchanged (as LayerSkipDrafter does)."""

    def __init__(self, name, stationary=False):
        self.name, self.next, self.stationary, self.asked = name, None, stationary, 0

    def offer(self, stream, n_ctx):
        self.asked += 1
        return self.next

    def idle_reason(self):
        return f"{self.name} idle"


def test_plans_are_choose_on_the_table_itself():
    """Remembered draft lengths (per offer and table), the table as a list, reused plain plans: every
    plan equals `choose` on the v table with fresh arithmetic, over changing offers and costs."""
    rng = random.Random(1)
    costs = Costs(t_plain=0.01, v={2: 1.5, 3: 1.8, 5: 2.4, 9: 3.6, 17: 6.9}, n_ctx=100)
    a, b = Drafter("ngram"), Drafter("layer-skip")
    cfg = SpecConfig(mode="auto")
    ctl = Controller(cfg, costs, {"ngram": a, "layer-skip": b})
    lists = [[rng.uniform(0.0, 1.0)] * 40 for _ in range(4)] + [[0.9] * 40]
    offers = [Offer(d, rng.randrange(1, 32), rng.choice(lists), c_fixed=rng.choice([0.0, 0.05]),
                    c_token=rng.choice([0.0, 0.3, 0.6])) for d in (a, b) for _ in range(6)]
    stream = Stream(list(range(101)), 100)
    for step in range(3000):
        a.next = rng.choice([None, *[o for o in offers if o.drafter is a]])
        b.next = rng.choice([None, *[o for o in offers if o.drafter is b]])
        if rng.random() < 0.15:
            costs.observe_plain(stream.n_past, rng.uniform(0.005, 0.02))
        elif rng.random() < 0.15:
            costs.observe_verify(stream.n_past, rng.randrange(2, 33), rng.uniform(0.005, 0.2))
        d_cap = rng.choice([0, 1, 3, 31, 40])
        ctl.budget.tokens = rng.choice([0, 20, 100, 1000])   # the allowance caps drafts (LossBudget)
        ctl.budget.balance = rng.choice([0.0, 0.0, -0.8, 3.0])
        want_offers = [o for o in (a.next, b.next) if o is not None]
        plan = ctl.plan(stream, d_cap)
        if d_cap < 1:
            assert plan.offer is None and plan.reason == ""
            continue
        v, loss = costs.v_table(stream.n_past), ctl.budget.allowance()
        affordable = max(d for d in range(len(v) - 1) if v[d + 1] - 1 <= loss)
        if affordable < 1:
            assert plan.offer is None and "allowance" in plan.reason
            continue
        if not want_offers:
            assert plan.offer is None and plan.reason == "ngram idle"
            continue
        c = choose(want_offers, v, min(d_cap, 31, affordable), cfg.margin, loss=loss)
        assert (plan.offer, plan.d, plan.speedup) == ((c.offer, c.d, c.speedup) if plan.offer is not None
                                                      else (None, 0, c.speedup))
        if plan.offer is None:
            assert plan.reason == f"predicted speedup {c.speedup:.2f}x does not pay; decoding plainly"


def test_a_stationary_offer_is_held_and_asked_again_after_hold_tokens_or_a_refresh():
    """A stationary drafter (layer skipping) is asked once per HOLD_TOKENS generated tokens while its
    offer does not pay, and at once after refresh() (a cycle observed, a search probe, a new request);
    its held plain verdict is `choose`'s on the table when it was asked; a lookup is asked every time."""
    costs = Costs(t_plain=0.01, v={2: 1.5, 3: 1.8, 5: 2.4, 9: 3.6, 17: 6.9}, n_ctx=100)
    look, skip = Drafter("ngram"), Drafter("layer-skip", stationary=True)
    ctl = Controller(SpecConfig(mode="auto"), costs, {"ngram": look, "layer-skip": skip})
    stream = Stream(list(range(101)), 100)
    poor = Offer(skip, 16, [0.3] * 16, c_token=0.5)
    good = Offer(skip, 16, [0.95] * 16, c_token=0.05)
    skip.next = poor
    for t in range(3 * HOLD_TOKENS):
        plan = ctl.plan(stream, 40)
        c = choose([poor], costs.v_table(stream.n_past), 40, 0.02)
        assert plan.offer is None and plan.speedup == c.speedup and not c.pays
        ctl.generated += 1
    assert skip.asked == 3 and look.asked == 3 * HOLD_TOKENS
    skip.next = good   # a better set: noticed when the hold ends ...
    while ctl.plan(stream, 40).offer is None:
        ctl.generated += 1
    assert skip.asked == 4 and ctl.generated == 3 * HOLD_TOKENS
    skip.next = poor
    ctl.refresh()      # ... or at once after a refresh
    assert ctl.plan(stream, 40).offer is None and skip.asked == 5
    skip.next = good
    assert ctl.plan(stream, 40).offer is None and skip.asked == 5   # held
    ctl.observe("layer-skip", 4, 5, 0.03, stream.n_past)              # a cycle refreshes too
    assert ctl.plan(stream, 40).offer is good and skip.asked == 6
    # the last tokens of an answer lower the limit every token: a verdict for a longer one holds
    ctl.refresh()
    skip.next = poor
    first = ctl.plan(stream, 40)
    for cap in range(15, 0, -1):
        assert ctl.plan(stream, cap) is first and not choose([poor], costs.v_table(stream.n_past), cap, 0.02).pays
    assert skip.asked == 7
    # with a lookup offer besides it, the choice is made afresh every time (with the held offer)
    ctl.refresh()
    skip.next, look.next = poor, Offer(look, 8, [0.9] * 8)
    c = choose([look.next, poor], costs.v_table(stream.n_past), 40, 0.02)
    plan = ctl.plan(stream, 40)
    assert (plan.offer, plan.d) == (c.offer, c.d) and plan.offer is look.next
    # a plain verdict kept after a lookup that did not pay (no cycle, no refresh) lapses where the
    # stationary offer's hold ends, not HOLD_TOKENS after it was kept
    ctl.refresh()
    start, look.next, asked = ctl.generated, None, skip.asked
    assert ctl.plan(stream, 40).offer is None and skip.asked == asked + 1   # held from here
    ctl.generated += 10
    look.next = Offer(look, 3, [0.05] * 8)
    assert ctl.plan(stream, 40).offer is None
    look.next = None
    ctl.generated += 1
    assert ctl.plan(stream, 40).offer is None   # kept, with the offer held since `start`
    skip.next = good
    while ctl.plan(stream, 40).offer is None:
        ctl.generated += 1
    assert ctl.generated == start + HOLD_TOKENS and skip.asked == asked + 2


def test_a_kept_plain_verdict_is_the_decision_made_afresh():
    """Controller.plan keeps a plain verdict (`Quiet`) while what it rests on stays: every plan equals
    the one a controller with the same held offers decides afresh, over answers whose draft cap
    shrinks every token, loss budgets that grow and are spent (cycles, search probes), a stationary
    drafter sitting out and coming back, its offer moving (seen when its hold ends), and lookups that
    offer now and then; the stream-dependent drafter is asked every token, the stationary one once per
    HOLD_TOKENS between refreshes."""
    rng = random.Random(3)
    costs = Costs(t_plain=0.01, v={2: 1.2, 3: 1.4, 5: 1.9, 9: 2.9, 17: 5.1}, n_ctx=100)
    for n in (2, 3, 5):   # timed sizes (no exploring there), the rest untimed
        for _ in range(MIN_LIVE):
            costs.observe_verify(100, n, 0.01 * costs.v[n])
    look, skip = Drafter("ngram"), Drafter("layer-skip", stationary=True)
    kept = Controller(SpecConfig(mode="auto"), costs, {"ngram": look, "layer-skip": skip})
    fresh = Controller(SpecConfig(mode="auto"), costs, {"ngram": look, "layer-skip": skip})
    skips = [None, Offer(skip, 16, [0.3] * 16, c_token=0.5), Offer(skip, 16, [0.7] * 16, c_token=0.3),
             Offer(skip, 16, [0.97] * 16, c_token=0.05), Offer(skip, 40, [0.85] * 40, c_token=0.12),
             Offer(skip, 4, [0.9] * 4, c_fixed=2.3, c_token=0.05)]   # best at 4 (timed), at 3 explores
    liar = Offer(skip, 16, [0.9] * 16, c_token=0.05)   # its drafts are rejected: it loses and sits out
    skips += [liar]
    looks = [Offer(look, rng.randrange(1, 12), [rng.uniform(0.2, 0.95)] * 12) for _ in range(4)]
    looks.append(Offer(look, 3, [0.05] * 12))   # a lookup that does not pay (no cycle, no refresh)
    stream = Stream(list(range(101)), 100)
    kept_plans = explored_after_kept = sat_out = 0
    for answer in range(400):
        for ctl in (kept, fresh):
            ctl.budget.start()
            ctl.refresh()
        skip.next = rng.choice(skips)
        left = rng.choice([8, 40, 200])
        since_refresh, skip_asked = 0, skip.asked
        while left > 0:
            look.next = rng.choice(looks) if rng.random() < 0.1 else None
            if rng.random() < 0.03:   # a stationary offer that moved (costs drift): seen when its hold ends
                skip.next = rng.choice(skips)
            fresh._quiet = None   # (decides afresh; its held offers are the same as kept's)
            before, looked = kept._quiet, look.asked
            plan = kept.plan(stream, left - 1)
            # the lookup: asked once by every plan that may draft (not at the last token, not over budget)
            assert look.asked - looked == (0 if left == 1 or "allowance" in plan.reason else 1)
            want = fresh.plan(stream, left - 1)
            assert (plan.offer, plan.d) == (want.offer, want.d)
            assert ("allowance" in plan.reason) == ("allowance" in want.reason)
            if plan.offer is None and left > 1:
                assert plan.reason
            kept_plans += before is not None and kept._quiet is before
            # (what the cases below need to have happened)
            explored_after_kept += (before is not None and before.plan.speedup >= EXPLORE_MIN
                                    and plan.offer is not None and plan.speedup < 1.0)
            sat_out += not kept.backoff.allows("layer-skip", kept.generated)
            step, refreshed = 1, True
            if plan.offer is not None:   # a cycle, its drafts accepted as the offer predicts: both observe it
                o, accepted = plan.offer, 0
                while accepted < plan.d and rng.random() < (0.1 if o is liar else o.accept[accepted]):
                    accepted += 1
                cost = (o.c_fixed + plan.d * o.c_token + costs.v_table(100)[plan.d + 1]) * rng.uniform(0.9, 1.3)
                for ctl in (kept, fresh):
                    ctl.observe(o.drafter.name, plan.d, accepted + 1, cost * costs.t_plain, stream.n_past)
                step = min(accepted + 1, left)
            elif rng.random() < 0.02:   # a layer-search probe: both pay for it, both refresh
                for ctl in (kept, fresh):
                    ctl.budget.charge(2.0)
                    ctl.refresh()
            else:
                refreshed = False
            if refreshed:
                since_refresh, skip_asked = 0, skip.asked
                if rng.random() < 0.3:
                    skip.next = rng.choice(skips)
            left -= step
            since_refresh += step
            for ctl in (kept, fresh):
                ctl.generated += step
                ctl.budget.tokens += step
            # the stationary drafter: asked again only once a hold ended (twice: kept and fresh)
            assert skip.asked - skip_asked <= 2 * (since_refresh // HOLD_TOKENS + 1)
    assert kept_plans > 1000   # the kept verdicts were used (and checked)
    assert explored_after_kept > 0 and sat_out > 0


def brute_match(toks: list[int]):
    """NgramIndex.match by searching the whole list."""
    e = len(toks) - 1
    for n in range(min(NGRAM_MAX, e), 0, -1):
        occ = [q for q in range(n - 1, e) if toks[q - n + 1:q + 1] == toks[e - n + 1:]]
        if not occ:
            continue
        best, nexts = None, set()
        for q in reversed(occ[-CANDIDATES:]):
            nexts.add(toks[q + 1])
            m = n
            while m < MATCH_CAP and q - m >= 0 and toks[q - m] == toks[e - m]:
                m += 1
            if best is None or m > best[0]:
                best = (m, q)
        return best[0], best[1], len(nexts) == 1
    return None


def test_index_match_equals_a_brute_force_search():
    rng = random.Random(2)
    for _ in range(300):
        idx, vocab = NgramIndex(), rng.choice([2, 4, 30, 5000])
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(1, 20))]
        for step in range(40):
            if rng.random() < 0.15:   # the next request: a common prefix, then other tokens
                keep = rng.randrange(len(tokens) + 1)
                tokens = tokens[:keep] + [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
            else:
                tokens.append(rng.randrange(vocab))
            if rng.random() < 0.5:
                idx.sync(tokens)
                assert idx.match() == brute_match(tokens)
            else:   # (the one-call form LookupDrafter.offer uses)
                assert idx.sync_match(tokens) == brute_match(tokens)


def test_set_calibration_clamps_disturbed_timings():
    costs = Costs()
    # v(2) measured below one step, v(3) above three steps, v(5) below v(3): all disturbed
    cm.set_calibration(costs, {1: 0.010, 2: 0.008, 3: 0.040, 5: 0.020, 9: 0.050}, 100)
    assert costs.t_plain == 0.010 and costs.n_ctx == 100
    assert costs.v == {2: 1.0, 3: 3.0, 5: 3.0, 9: 5.0}


class FakeRuntime:
    """A protocols.Runtime that logs every call and takes seconds from a function of the call."""

    def __init__(self, seconds, n_layer=6, n_ctx=512):
        self.seconds, self.n_layer, self.n_vocab, self.n_ctx = seconds, n_layer, 8, n_ctx
        self.max_verify = 64
        self.log, self.mask = [], b""
        self.kernels = StepKernels(choose=False)

    def verify(self, tokens, pos0, *, seq=0):
        self.log.append(("verify", len(tokens), pos0, seq, self.mask))
        return self.seconds(len(tokens), self.mask, len(self.log))

    def decode(self, tokens, pos0, *, seq=0, all_logits=False):
        self.log.append(("decode", len(tokens), pos0, seq, self.mask))
        return self.seconds(len(tokens), self.mask, len(self.log))

    def step(self, token, pos, *, seq=0, plain=False):
        verification = self.kernels.next() if plain else bool(self.kernels.verification)
        self.log.append(("step", 1, pos, seq, self.mask) + (("verification",) if verification else ()))
        secs = self.seconds(1, self.mask, len(self.log)) * (0.8 if verification else 1.0)
        if plain:
            self.kernels.observe(verification, secs)
        return secs

    def remove(self, seq, p0, p1=-1):
        self.log.append(("remove", seq, p0, p1))

    def share(self, src, dst, p0, p1):
        self.log.append(("share", src, dst, p0, p1))

    def room(self, n_past):
        return self.n_ctx - n_past

    @contextlib.contextmanager
    def skipping(self, mask):
        self.mask = mask
        try:
            yield
        finally:
            self.mask = b""


def reference_calibration(rt, last, n_past, reps=3):
    """costmodel.calibrate's timing loop as it was written before timing.py (issue 28), its size 1 a
    plain step since plain steps may run other kernels than a one-token verification."""
    sizes = [n for n in (1, *cm.CALIBRATION_SIZES) if rt.room(n_past) > n + 1]
    toks = [last] * max(sizes)

    def timed(sizes, mask=b""):
        best = {n: float("inf") for n in sizes}
        rt.share(0, 1, 0, n_past)
        try:
            with rt.skipping(mask):
                for i in range(reps + 1):
                    for n in sizes:   # (size 1: a plain step, runtime.StepKernels)
                        secs = rt.verify(toks[:n], n_past, seq=1) if n > 1 else rt.step(toks[0], n_past, seq=1)
                        rt.remove(1, n_past, -1)
                        if i:
                            best[n] = min(best[n], secs)
        finally:
            rt.remove(1, -1, -1)
        return best
    return timed


def test_calibration_makes_the_same_calls_and_numbers_through_timing():
    from swift_gguf.skipset import SkipSet

    def seconds(n, mask, k):   # a noisy but deterministic machine
        return 0.01 * (0.6 + 0.4 * n) * (0.8 if mask else 1.0) * (1 + 0.3 * ((k * 7919) % 11) / 11)

    new_rt, ref_rt = FakeRuntime(seconds), FakeRuntime(seconds)
    costs = cm.calibrate(new_rt, 5, 100, Costs())
    timed = reference_calibration(ref_rt, 5, 100)
    want = Costs()
    cm.set_calibration(want, timed([1, *cm.CALIBRATION_SIZES]), 100)
    n = ref_rt.n_layer
    attn = SkipSet.from_lists(n, attention=range(1, n - 1)).mask()
    ffn = SkipSet.from_lists(n, ffn=range(1, n - 1)).mask()
    c_attn, c_ffn = timed([1], attn)[1] / want.t_plain, timed([1], ffn)[1] / want.t_plain
    assert new_rt.log == ref_rt.log
    assert (costs.t_plain, costs.v, costs.n_ctx) == (want.t_plain, want.v, want.n_ctx)
    assert costs.attn == max(1.0 - c_attn, 0.0) / (n - 2) and costs.ffn == max(1.0 - c_ffn, 0.0) / (n - 2)


def test_calibration_first_chooses_the_kernels_plain_steps_will_run():
    """Where the runtime's choice of one-token kernels is open, calibrate makes it first (plain steps at
    consecutive positions on the scratch sequence, alternating), then times its plain step and the
    drafting steps on the chosen kernels."""
    rt = FakeRuntime(lambda n, mask, k: 0.01 * (0.6 + 0.4 * n))   # here the verification kernels: 0.8x
    rt.kernels = StepKernels(choose=True)
    costs = cm.calibrate(rt, 5, 100, Costs())
    trial = [c for c in rt.log if c[0] == "step" and c[2] >= 100][:2 * STEP_TRIALS]
    assert [c[2] for c in trial] == list(range(100, 100 + 2 * STEP_TRIALS))
    assert [len(c) == 6 for c in trial] == [False, True] * STEP_TRIALS
    assert rt.kernels.verification is True
    later = [c for c in rt.log[rt.log.index(trial[-1]) + 1:] if c[0] == "step"]
    assert later and all(c[-1] == "verification" for c in later)   # plain and masked steps alike
    assert costs.t_plain == pytest.approx(0.008)


def test_a_plain_step_sample_is_a_run_of_consecutive_decodes():
    """timing.batch_seconds(plain=k): size 1 is k one-token decodes at consecutive positions (as plain
    decoding takes them, not one decode right after a large batch), their mean, removed afterwards."""
    from swift_gguf.timing import batch_seconds

    rt = FakeRuntime(lambda n, mask, k: 0.001 * k)
    samples = batch_seconds(rt, [7] * 9, 100, [1, 9], 2, plain=4)
    runs = [i for i, c in enumerate(rt.log) if c[:3] == ("step", 1, 100)]
    assert len(runs) == 3 and len(samples[1]) == 2 and len(samples[9]) == 2   # one untimed round
    for i in runs:
        assert rt.log[i:i + 5] == [("step", 1, 100 + j, 1, b"") for j in range(4)] + [("remove", 1, 100, -1)]
    k = runs[-1] + 1   # the last run's decodes are log entries k..k+3: their mean
    assert samples[1][-1] == pytest.approx(0.001 * (4 * k + 6) / 4)
