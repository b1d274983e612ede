"""The speculation controller: one decision per cycle — which drafter, how many tokens, or a plain step.

Every drafter that can draft here makes an offer: its conditional acceptance per draft
position p_1, p_2, ... and its cost (c_fixed per cycle, c_token per drafted token, in plain
decode steps). For a draft of d tokens the predicted speedup over plain decoding is

    S(d) = (1 + p_1 + p_1 p_2 + ... + p_1...p_d) / (c_fixed + d * c_token + v(d + 1))

(costmodel's one speedup model: `speedup`, `best_length`) with v(n) the verification cost at
this context length (costmodel.Costs.v_table). `auto`
takes the offer and length with the highest S, or a plain step (S = 1) unless the best S
exceeds 1 + margin; `swift` always takes the best offer. A stationary drafter (layer skipping:
one prediction for the whole stream) whose cycles measured a loss (tokens per plain-step cost
below 1) is set aside for a while, doubling each time, and each request carries a loss budget
(`LossBudget`): no draft is longer than what the answer could still afford to lose if all of it
were rejected, and once speculation (cycles and search probes) has cost an answer more than a
few percent of its plain time, `auto` decodes it plainly.
The decision is a deterministic function of these numbers (`choose`).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from . import costmodel
from .costmodel import MIN_LIVE, OUTLIER, V_MAX, Decayed, best_length
from .drafters import LAYER_SKIP, LOOKUP, Drafter, Offer
from .limits import MAX_VERIFY   # verification batches stay within patch 0003's bit-exact bound
from .protocols import CostModel, SpecSettings, TokenStream

SPEC_TYPES = ("auto", LAYER_SKIP, LOOKUP)
SPEC_TYPE_ALIASES = {"lookup": LOOKUP, "prompt-lookup": LOOKUP, "swift": LAYER_SKIP}
EXPLORE_MIN = 0.8        # predicted speedup above which an untimed verification size is tried
MEMO_MAX = 256           # remembered draft lengths per v table (lookup classes x acceptance updates)
BACKOFF_TOKENS = 64      # generated tokens a losing drafter sits out at first
BACKOFF_MAX = 4096       # ... doubling up to this
BACKOFF_EVIDENCE = 8     # decayed cycles of a drafter before a measured loss is believed
BACKOFF_DECAY = 0.95
BACKOFF_LOSS = 0.9        # measured tokens per plain-step cost below which a drafter sits out
                          # (near 1 the measurement's noise, not a loss: the acceptance model adapts)
# A stationary drafter's offer (layer skipping: the same wherever the stream is) is asked again after
# this many generated tokens, or at once after anything it rests on changed (Controller.refresh: a cycle,
# a search probe, a request, other settings), and a plain verdict is kept as long (`Quiet`). While nothing
# pays, asking every drafter, building the v table and choosing again cost ~6 us a token of a ~270 us
# step on a fast backend (benchmarks/host_work.py: Python's objects are cold in the cache after each
# decode), re-deciding every 16 tokens still ~2 us; what is noticed late is only the drift of the plain
# step with the context (a few percent over 64 tokens)
HOLD_TOKENS = 64


def resolve_spec_type(spec_type: str | None, mode: str) -> str:
    """The drafters a mode uses: the given spec_type, else layer skipping for swift, all for auto."""
    if spec_type is None:
        return LAYER_SKIP if mode == "swift" else "auto"
    t = SPEC_TYPE_ALIASES.get(spec_type, spec_type)
    if t not in SPEC_TYPES:
        raise ValueError(f"unknown spec_type {spec_type!r}; use one of {', '.join(SPEC_TYPES)} "
                         f"(or {', '.join(SPEC_TYPE_ALIASES)})")
    return t


class Choice(NamedTuple):   # (a tuple: made every token, where a frozen dataclass costs ~1 us)
    offer: Offer | None   # the offer with the highest predicted speedup (None: none could draft)
    d: int
    speedup: float        # its predicted speedup
    pays: bool = False    # speedup > 1 + margin


def rejection_loss(o: Offer, d: int, v: Sequence[float]) -> float:
    """Plain steps a cycle drafting d tokens of offer o loses where all are rejected (it still emits one
    token, worth a plain step): what the loss budget must be able to pay for."""
    return o.c_fixed + d * o.c_token + v[d + 1] - 1.0


def choose(offers: Sequence[Offer], v: Sequence[float], d_cap: int, margin: float, *,
           fixed: int | None = None, lengths: Callable = best_length, loss: float | None = None) -> Choice:
    """The offer and draft length with the highest predicted speedup, and whether it pays.

    d_cap bounds every draft (tokens left, room in the context, draft_max); `fixed` drafts
    exactly that many tokens (or fewer, where an offer has fewer). Ties go to the first offer.
    `lengths` computes best_length (the controller passes its memo of it). `loss`: the most plain
    steps a cycle may lose, drafting and verifying tokens of which none is accepted (the cycle then
    still emits one token, worth a plain step).
    """
    best, best_d, best_s = None, 0, 0.0
    for o in offers:
        limit = min(o.limit, d_cap)
        if loss is not None:
            while limit >= 1 and rejection_loss(o, limit, v) > loss:
                limit -= 1
        if limit < 1:
            continue
        if fixed is not None:
            d = min(fixed, limit)
            s = costmodel.speedup(o.accept, o.c_fixed, o.c_token, d, v)
        else:
            d, s = lengths(o.accept, o.c_fixed, o.c_token, v, limit)
        if s > best_s:
            best, best_d, best_s = o, d, s
    return Choice(best, best_d, best_s, best_s > 1.0 + margin)


class Backoff:
    """Per drafter: after its cycles measured a loss, decode without it for a while (doubling).

    For stationary drafters only (Controller.observe): their offer is one prediction for the whole
    stream, so a measured loss says it is wrong everywhere. Prompt lookup predicts per match class
    and learns each class live, its losses bounded per answer by the loss budget: setting all of it
    aside after a run of short-match rejections also set aside the long copies that pay (SmolLM2's
    first Spec-Bench question: 15 rejected one-token lookups in turn 1, then lookups sat out turn 2's
    copy; replayed 1.18x instead of 1.52x)."""

    def __init__(self) -> None:
        self._recent: dict[str, Decayed] = {}   # tokens its recent cycles emitted / their cost in plain steps
        self._until: dict[str, int] = {}      # generated-token count until which it sits out
        self._length: dict[str, int] = {}

    def allows(self, drafter: str, generated: int) -> bool:
        return generated >= self._until.get(drafter, 0)

    def returns(self, generated: int) -> list[int]:
        """The generated-token counts at which the drafters sitting out now may draft again."""
        return [u for u in self._until.values() if u > generated]

    def measured(self, drafter: str) -> float | None:
        """Tokens per plain-step cost of the drafter's recent cycles (None: too little evidence)."""
        r = self._recent.get(drafter)
        if r is None or r.count < BACKOFF_EVIDENCE or r.den <= 0:
            return None
        return r.ratio()

    def observe(self, drafter: str, emitted: int, cost: float, generated: int) -> float | None:
        """Record one cycle; returns the measured speedup when it was a loss (the drafter now sits out)."""
        recent = self._recent.get(drafter)
        if recent is None:
            recent = self._recent[drafter] = Decayed(BACKOFF_DECAY)
        recent.add(emitted, cost)
        live = self.measured(drafter)
        if live is None or live >= BACKOFF_LOSS:
            if live is not None:
                self._length.pop(drafter, None)   # it pays again: the next loss starts short
            return None
        length = self._length.get(drafter, BACKOFF_TOKENS)
        self._until[drafter] = generated + length
        self._length[drafter] = min(2 * length, BACKOFF_MAX)
        recent.clear()
        return live


# A request may lose at most this to speculation (auto): LOSS_STEPS plain steps plus LOSS_SHARE of the
# plain steps its tokens would have taken. Every prediction can be wrong on a given text (a lookup that
# matched where the model goes elsewhere, costs measured at another context, a machine that got busy):
# this bounds what a wrong prediction costs one answer. A draft is never longer than the allowance
# left could pay for if all of it were rejected (a rejected 8-token draft cost a 20-token answer of
# Qwen2.5-Coder-1.5B 1.7 steps: 0.92x), so the bound holds up to the timing noise of single calls.
# 3% plus one step keeps a 21-token answer above 0.92x of plain decoding, a 96-token one above 0.96x;
# the first step is what one exploratory cycle of a short draft costs where it is rejected (v(2) - 1
# to v(4) - 1 on this project's CPUs).
LOSS_SHARE = 0.03
LOSS_STEPS = 1.0


class LossBudget:
    """One request's balance of speculation, in plain decode steps: each cycle adds the tokens it
    emitted and subtracts what it cost; layer-search probes subtract their cost. While the balance
    is below -(LOSS_STEPS + LOSS_SHARE x tokens emitted), auto decodes plainly: the allowance grows
    with every token, so speculation resumes after a loss only once the request is long enough to
    carry it."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        """A new request."""
        self.balance = 0.0    # tokens emitted by cycles minus their cost and the probes', in plain steps
        self.tokens = 0       # tokens emitted in this request (plain steps included)

    def allowance(self) -> float:
        """What the request may still lose (negative: it lost more than allowed)."""
        return LOSS_STEPS + LOSS_SHARE * self.tokens + self.balance

    def allows(self, cost: float = 0.0) -> bool:
        """Whether speculation may go on, or spend `cost` more plain steps on a probe."""
        return self.allowance() >= cost

    def tokens_to_reach(self, level: float) -> int:
        """The request's token count at which allowance() first reaches `level`, the balance unchanged
        (the same float arithmetic as allowance(): exact, not an estimate)."""
        if level == float("inf"):
            return 1 << 62
        def at(t):
            return LOSS_STEPS + LOSS_SHARE * t + self.balance
        t = max(self.tokens, math.ceil((level - LOSS_STEPS - self.balance) / LOSS_SHARE))
        while t > self.tokens and at(t - 1) >= level:
            t -= 1
        while at(t) < level:
            t += 1
        return t

    def cycle(self, emitted: int, cost: float) -> None:
        self.balance += emitted - cost

    def charge(self, cost: float) -> None:
        self.balance -= cost


@dataclass
class Plan:
    offer: Offer | None
    d: int = 0
    speedup: float = 0.0
    reason: str = ""      # why a plain step (empty for a draft, or a plain step that is no choice)


# plans that are the same every time (shared: plans are read, never changed)
OFF_PLAN = Plan(None, reason="speculation off")
NO_DECISION = Plan(None)
NO_LOSS_CAP = (None, 0.0, -1.0, 0)   # (an empty range: computed at the first plan)


class Quiet(NamedTuple):
    """A plain verdict kept while what it was decided on stays (Controller.plan's first lines): the
    drafters that depend on the stream (prompt lookup) still offer nothing, the held offers of the
    stationary ones are still held, no drafter sitting out came back, the draft cap is not lower than
    the verdict depended on, and the loss budget still caps drafts the same. Settings, observed cycles
    and search probes end it through Controller.refresh. (A tuple: checked every token.)"""
    plan: Plan
    ask: tuple          # (name, offer method) of the drafters asked every token
    until: int          # generated-token count where it lapses: a held offer's end, a backoff's end
    d_min: int          # the d_cap range it holds for (d_cap only shrinks within a request)
    d_max: int
    balance: float      # the loss budget's balance it was decided on ...
    tokens_lo: int      # ... and the range of its token count over which the allowance caps drafts the same
    tokens_hi: int


class Controller:
    """Plans each cycle from the drafters' offers and the measured costs (mode, spec_type, backoff)."""

    def __init__(self, config: SpecSettings, costs: CostModel, drafters: dict[str, Drafter]):
        self.config = config
        self.costs = costs
        self.drafters = drafters     # name -> drafter, in the order ties are broken
        self.backoff = Backoff()
        self.budget = LossBudget()   # this request's (the engine starts one per request)
        self.generated = 0           # tokens generated over the engine's lifetime
        self.unavailable: dict[str, str] = {}   # drafter -> why it cannot run on this model
        self._reasons: dict[str, str] = {}      # drafter -> why it sits out
        # per-token work while nothing pays (see _v, _lengths, _plain): on a fast backend a plan
        # that recomputed everything cost 25-30 us a token (benchmarks/host_work.py: ~0.3 ms decodes;
        # SmolLM2 on an H200 takes ~1.2 ms a token)
        self._v_array = None                    # the v table _v_list and _memo belong to
        self._v_list: list[float] = []
        self._memo: dict[tuple, tuple] = {}     # best_length's results for that table
        self._last_plain: Plan | None = None
        self._last_idle: Plan | None = None
        self._held: dict[str, tuple] = {}       # stationary drafter -> (its offer, held until: generated count)
        self._quiet: Quiet | None = None        # a plain verdict kept while nothing it rests on changed
        self._names_for: tuple = (None, [])     # (spec_type, mode) -> the drafters they use
        self._loss_cap = NO_LOSS_CAP            # (v table, allowance from, allowance to, draft cap)

    def _names(self) -> list[str]:
        key = (self.config.spec_type, self.config.mode)
        if self._names_for[0] != key:   # (asked every token; the settings rarely change)
            kind = resolve_spec_type(*key)
            self._names_for = (key, list(self.drafters) if kind == "auto" else [kind])
        return self._names_for[1]

    def can_draft(self) -> bool:
        """Whether the mode and spec_type leave a drafter that works on this model."""
        return self.config.mode != "off" and any(n not in self.unavailable for n in self._names())

    def plan(self, stream: TokenStream, d_cap: int) -> Plan:
        cfg = self.config
        if cfg.mode == "off":
            return OFF_PLAN
        if d_cap < 1:   # a last token, or the end of the context: plainly, no decision
            return NO_DECISION
        q = self._quiet
        if q is not None:
            b = self.budget
            if (self.generated < q.until and q.d_min <= d_cap <= q.d_max and b.balance == q.balance
                    and q.tokens_lo <= b.tokens < q.tokens_hi):
                for i, (name, offer) in enumerate(q.ask):
                    o = offer(stream, stream.n_past)
                    if o is not None:   # decide with it (the drafters before it offered nothing)
                        self._quiet = None
                        asked = dict.fromkeys(n for n, _ in q.ask[:i])
                        asked[name] = o
                        return self._decide(stream, d_cap, asked)
                return q.plan
            self._quiet = None
        return self._decide(stream, d_cap, None)

    def _decide(self, stream: TokenStream, d_cap: int, asked: dict | None) -> Plan:
        """The plan from every drafter's offer (`asked`: offers already asked for this token)."""
        cfg = self.config
        cap = min(d_cap, MAX_VERIFY - 1, cfg.draft_max or MAX_VERIFY)
        loss = None
        if cfg.mode == "auto":
            loss = self.budget.allowance()
            lc = self._loss_cap
            if not lc[1] <= loss < lc[2]:
                lc = self._draft_cap(loss, self._v(stream.n_past))
            if lc[3] < 1:
                return self._keep(self._over_budget(), d_cap, 1, self._loss_cap[2], asks=False)
            cap = min(cap, lc[3])
        offers = []
        auto, generated = cfg.mode == "auto", self.generated
        for name in self._names():
            if name in self.unavailable or (auto and not self.backoff.allows(name, generated)):
                continue
            o = asked[name] if asked is not None and name in asked else self._ask(name, stream)
            if o is not None:
                offers.append(o)
        if not offers:
            return self._keep(self._idle(), d_cap, 1, float("inf"))
        v = self._v(stream.n_past)
        if loss is not None and v is not self._loss_cap[0]:   # another table: its cap
            cap = min(cap, self._draft_cap(loss, v)[3])
        c = choose(offers, v, cap, cfg.margin, fixed=cfg.draft_max if cfg.mode == "swift" else None,
                   lengths=self._lengths, loss=loss)
        if c.offer is not None and (cfg.mode == "swift" or c.pays or self._explore(c, stream.n_past)):
            return Plan(c.offer, c.d, c.speedup)
        plain = self._plain(c.speedup)
        if all(o.drafter.stationary for o in offers):
            # the allowance at which a longer draft becomes affordable, where one might pay or explore
            # (over every length the settings allow: the same limit every time, so `_lengths` remembers it)
            level = float("inf")
            if loss is not None and choose(offers, v, min(MAX_VERIFY - 1, cfg.draft_max or MAX_VERIFY),
                                           cfg.margin, lengths=self._lengths).speedup >= EXPLORE_MIN:
                level = self._next_affordable(offers, v, cap, loss)
            # a shorter cap cannot make it pay (the best over fewer lengths is no better) unless it
            # might explore (the last tokens of an answer lower d_cap every token)
            d_min = 1 if c.speedup < EXPLORE_MIN else max(min(o.limit, cap) for o in offers)
            return self._keep(plain, d_cap, d_min, level)
        return plain

    def _next_affordable(self, offers: Sequence[Offer], v: Sequence[float], cap: int, loss: float) -> float:
        """The lowest allowance above `loss` at which the loss budget lets some offer draft longer than now
        (`choose`'s loss rule per offer, `_draft_cap`'s over the table)."""
        level = self._loss_cap[2]
        for o in offers:
            limit = min(o.limit, cap)
            d = 1
            while d <= limit and rejection_loss(o, d, v) <= loss:
                d += 1
            if d <= limit:
                level = min(level, rejection_loss(o, d, v))
        return level

    def _keep(self, plan: Plan, d_cap: int, d_min: int, level: float, *, asks: bool = True) -> Plan:
        """Keep a plain verdict for the next tokens (`Quiet`) and return it; it lapses where the loss
        budget's allowance reaches `level` (auto: where a draft the verdict ruled out becomes affordable).
        asks: the drafters that depend on the stream are asked every token meanwhile (not over budget)."""
        generated = self.generated
        until = generated + HOLD_TOKENS
        for _, held_until in self._held.values():
            until = min(until, held_until)
        for back in self.backoff.returns(generated):
            until = min(until, back)
        ask = ()
        if asks:
            auto = self.config.mode == "auto"
            ask = tuple((n, d.offer) for n in self._names() if not (d := self.drafters[n]).stationary
                        and n not in self.unavailable and (not auto or self.backoff.allows(n, generated)))
        b = self.budget
        self._quiet = Quiet(plan, ask, until, d_min, d_cap, b.balance, b.tokens, b.tokens_to_reach(level))
        return plan

    def _ask(self, name: str, stream: TokenStream) -> Offer | None:
        """A drafter's offer. A stationary drafter's (one that does not depend on the stream: layer
        skipping) is held for HOLD_TOKENS generated tokens, unless `refresh` comes first."""
        d = self.drafters[name]
        if not d.stationary:
            return d.offer(stream, stream.n_past)
        held = self._held.get(name)
        if held is not None and self.generated < held[1]:
            return held[0]
        o = d.offer(stream, stream.n_past)
        self._held[name] = (o, self.generated + HOLD_TOKENS)
        return o

    def refresh(self) -> None:
        """Ask every drafter again at the next plan: something a held offer rests on may have changed
        (a cycle was observed, the search probed a skip set, a new request with other settings)."""
        self._held.clear()
        self._quiet = None

    def _v(self, n_ctx: int) -> list[float]:
        """The v table as a list, converted once per table: best_length's arithmetic on Python floats
        gives the same doubles as on numpy's float64 scalars, at a fraction of the cost per operation."""
        v = self.costs.v_table(n_ctx)
        if v is not self._v_array:   # a new table (tables are rebuilt, never changed in place)
            # (float64 only: arithmetic on a float32 scalar would round to float32)
            self._v_array, self._memo = v, {}
            self._v_list = v.tolist() if getattr(v, "dtype", None) == np.float64 else v
        return self._v_list

    def _draft_cap(self, loss: float, v: Sequence[float]) -> tuple:
        """The longest draft whose verification, all of it rejected, loses at most `loss` plain steps
        (v[d + 1] - 1; v is monotone), with the range of `loss` over which it stays the same: the
        allowance changes every token, the answer only where it crosses a table entry."""
        n = bisect.bisect_right(v, 1.0 + loss, 1) - 1   # the largest n with v[n] <= 1 + loss (v[1] = 1)
        hi = v[n + 1] - 1.0 if n + 1 < len(v) else float("inf")
        self._loss_cap = (v, v[n] - 1.0, hi, n - 1)
        return self._loss_cap

    def _lengths(self, accept: Sequence[float], c_fixed: float, c_token: float, v: Sequence[float],
                 limit: int) -> tuple[int, float]:
        """best_length, remembered for the current v table: while nothing pays, the same offer (the
        same acceptance list: drafters replace those lists, never change them) comes every token.
        The entry keeps `accept` alive, so an id in a key is never another list's."""
        if v is not self._v_list:   # another table than the memo's
            return best_length(accept, c_fixed, c_token, v, limit)
        key = (id(accept), c_fixed, c_token, limit)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is accept:
            return hit[1]
        result = best_length(accept, c_fixed, c_token, v, limit)
        if len(self._memo) >= MEMO_MAX:
            self._memo.clear()
        self._memo[key] = (accept, result)
        return result

    def _idle(self) -> Plan:
        """A plain step because no drafter can draft, with the first reason in the drafters' order (asked
        only now: while another drafter offers, nobody reads them); the last such plan again for the
        same reason."""
        why = ""
        for name in self._names():
            if name in self.unavailable:
                why = self.unavailable[name]
            elif self.config.mode == "auto" and not self.backoff.allows(name, self.generated):
                why = self._reasons.get(name, "")
            else:
                why = self.drafters[name].idle_reason()
            if why:
                break
        last = self._last_idle
        if last is None or last.reason != why:
            last = self._last_idle = Plan(None, reason=why)
        return last

    def _over_budget(self) -> Plan:
        """A plain step because speculation lost this request more than its allowance (LossBudget)."""
        why = (f"speculation lost this answer its allowance ({LOSS_SHARE:.0%} of its plain time and "
               f"{LOSS_STEPS:g} step); decoding plainly until the answer is long enough to carry a draft")
        last = self._last_idle
        if last is None or last.reason != why:
            last = self._last_idle = Plan(None, reason=why)
        return last

    def _plain(self, speedup: float) -> Plan:
        """A plain step's plan; the last one again while the predicted speedup is the same (no new
        string per token)."""
        last = self._last_plain
        if last is None or last.speedup != speedup:
            last = self._last_plain = Plan(None, 0, speedup,
                                           f"predicted speedup {speedup:.2f}x does not pay; decoding plainly")
        return last

    def _explore(self, c: Choice, n_ctx: int) -> bool:
        """Draft where it nearly pays but verifying that many tokens was never timed at this context:
        the prediction rests on the calibration there (one measurement, perhaps on a busy machine,
        at another context length), and only drafting measures the real cost."""
        return c.speedup >= EXPLORE_MIN and self.costs.live_verify_count(n_ctx, c.d + 1) < MIN_LIVE

    def observe(self, drafter: str, drafted: int, emitted: int, seconds: float, n_ctx: int) -> None:
        """One cycle's outcome: drafted and emitted tokens, its draft + verification seconds."""
        self.refresh()   # the drafter learned from it
        if self.config.mode != "auto":
            return
        t1 = self.costs.plain_seconds(n_ctx)
        if t1 <= 0:
            return
        # a disturbed cycle (a graph built, the CPU taken) counts at most OUTLIER x its expected cost
        expected = self.costs.v_table(n_ctx)[min(drafted + 1, V_MAX)]
        cost = min(seconds / t1, OUTLIER * expected)
        self.budget.cycle(emitted, cost)
        if not self.drafters[drafter].stationary:
            return
        live = self.backoff.observe(drafter, emitted, cost, self.generated)
        if live is not None:
            self._reasons[drafter] = f"{drafter} drafts measured at {live:.2f}x plain; decoding without them for a while"
