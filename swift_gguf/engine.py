"""The SWIFT decoding loop: draft with a skip set, verify in one batch, accept, repeat.

One `SwiftEngine` per context. `run()` continues a stream whose prompt is already
in the KV cache and yields tokens; the stream's KV cache, its token list and
`n_past` agree with each other at every yield, so a consumer may stop at any time.

Modes: `off` decodes plainly; `swift` always speculates (given a skip set); `auto`
speculates only while the measured costs and acceptance say it pays, and probes
again from time to time.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, NamedTuple

import numpy as np

from . import costmodel
from .costmodel import Costs
from .sampling import TokenSampler, top1
from .search import LayerSearch, SearchConfig, SearchState
from .skipset import SkipSet

MODES = ("off", "swift", "auto")
CALIBRATION_SIZES = (2, 3, 5, 9)
FRONT_LOAD = 2.5   # search share per unit of estimated gain while exploring (capped by search_budget_max)


@dataclass
class SpecConfig:
    mode: str = "auto"
    draft_max: int | None = None    # None: chosen from measured verification costs
    draft_p_min: float = 0.8        # epsilon: stop drafting below this top-1 probability
    adaptive_p_min: bool = True     # drop the confidence stop while low-confidence drafts are accepted
    skip: SkipSet | None = None     # a fixed skip set (no search) when given
    search: SearchConfig = field(default_factory=SearchConfig)
    search_budget: float = 0.02     # share of generation time for the search once a set pays
    search_budget_max: float = 1.0   # share while the potential gain is large (up to the generation time)
    margin: float = 0.02            # auto speculates when the predicted speedup > 1 + margin

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown speculation mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not 0.0 < self.draft_p_min <= 1.0:
            raise ValueError(f"draft_p_min (epsilon) must be in (0, 1], got {self.draft_p_min}")
        if self.draft_max is not None and self.draft_max < 1:
            raise ValueError(f"draft_max must be at least 1, got {self.draft_max}")


class Token(NamedTuple):
    id: int
    from_draft: bool   # True when the token was drafted and accepted by the verifier
    row: int = -1      # the row of the last decode's logits it was chosen from (valid until the next decode)


@dataclass
class GenStats:
    """One generation's statistics (printed by the CLI, returned by the API, asserted by tests)."""
    n_prompt: int = 0
    tokens: int = 0
    cycles: int = 0
    drafted: int = 0
    accepted: int = 0
    plain_steps: int = 0
    accepted_hist: list[int] = field(default_factory=list)   # cycles by accepted length
    t_prompt: float = 0.0
    t_draft: float = 0.0
    t_verify: float = 0.0
    t_plain: float = 0.0
    t_search: float = 0.0
    t_total: float = 0.0
    search_probes: int = 0
    mode: str = "auto"
    mode_used: str = "plain"
    reason: str = ""
    stop_reason: str = ""
    skip: dict = field(default_factory=dict)
    predicted_speedup: float = 0.0
    draft_max: int = 0
    costs: dict = field(default_factory=dict)
    exact: bool = True   # False where the backend's verification batches are not bit-identical (CUDA)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.cycles if self.cycles else 0.0

    @property
    def tokens_per_second(self) -> float:
        t = self.t_total - self.t_prompt
        return self.tokens / t if t > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(acceptance_rate=round(self.acceptance_rate, 4), mean_accepted=round(self.mean_accepted, 4),
                 tokens_per_second=round(self.tokens_per_second, 3))
        return d

    def summary(self) -> str:
        s = f"{self.tokens} tokens, {self.tokens_per_second:.1f} tok/s, mode {self.mode_used}"
        if self.drafted:
            s += (f", accepted {self.accepted}/{self.drafted} drafts ({self.acceptance_rate:.0%}),"
                  f" {self.mean_accepted:.2f} per cycle")
        if self.reason:
            s += f" ({self.reason})"
        if self.drafted and not self.exact:
            s += "; speculative output may differ from plain decoding at near-ties on this backend"
        return s


@dataclass
class Stream:
    """A generation in progress: tokens[:n_past] are in the KV cache, tokens[n_past] is pending."""
    tokens: list[int]
    n_past: int

    @property
    def last(self) -> int:
        return self.tokens[self.n_past]


class SwiftEngine:
    """Draft/verify loop plus the auto controller and the search pacing for one context."""

    def __init__(self, rt, config: SpecConfig, *, costs: Costs | None = None,
                 search_state: SearchState | None = None, supported: bool = True, reason: str = ""):
        self.rt = rt
        self.config = config
        self.costs = costs or Costs()
        self.supported = supported
        self.unsupported_reason = reason
        state = search_state or SearchState(rt.n_layer, config.search)
        self.search = LayerSearch(state, self.costs)
        self._live_tokens = 0.0    # decayed tokens emitted by speculative cycles
        self._live_time = 0.0      # decayed seconds they took
        self._backoff_until = 0    # auto: plain until this many tokens were generated
        self._backoff = 64
        self._generated = 0        # tokens generated over the engine's lifetime
        self._gen_time = 0.0       # seconds spent generating in swift/auto mode (the search's budget base)
        self._promised = 0.0       # acceptance the current set was chosen with
        self._live_accept = (0.0, 0.0)  # decayed (accepted, drafted)
        self._low_conf = (0.0, 0.0)     # decayed (accepted, seen) drafts below epsilon
        self._speculating = False       # auto's last decision
        self._decided_for = None        # what that decision was based on
        self._reason = ""
        self._share = (0.0, -1)         # cached search share and the probe count it was computed at
        self._scratch = np.empty(rt.n_vocab, np.float32)   # top1's work buffer

    # -- which skip set, and whether to speculate ---------------------------------------

    @property
    def skip(self) -> SkipSet | None:
        return self.config.skip if self.config.skip is not None else self.search.state.best

    def _alpha(self) -> float:
        acc, dr = self._live_accept
        if dr >= 16:
            return acc / dr
        return self.search.state.best_matchness if self.config.skip is None else 0.9

    def _draft_max(self, remaining: int, n_past: int) -> int:
        if self.config.draft_max is not None:
            d = self.config.draft_max
        elif self.costs.known and self.skip is not None:
            d, _ = costmodel.best_draft_length(self._alpha(), self.costs.c(self.skip), self.costs, 16)
            d = max(d, 2)
        else:
            d = 4
        return max(0, min(d, remaining - 1, self.rt.room(n_past) - 2))

    def predicted_speedup(self) -> float:
        if self.skip is None or not self.costs.known:
            return 0.0
        d_max = self.config.draft_max or 16
        return costmodel.predict(self.skip, self._alpha(), self.costs, d_max)[1]

    def live_speedup(self) -> float | None:
        if self._live_time <= 0 or self._live_tokens < 24 or self.costs.t_plain <= 0:
            return None
        return self._live_tokens / self._live_time * self.costs.t_plain

    def _want_spec(self, stats: GenStats) -> bool:
        mode = self.config.mode
        if mode == "off":
            stats.reason = "speculation off"
            return False
        if not self.supported:
            stats.reason = self.unsupported_reason
            return False
        if self.skip is None:
            stats.reason = "no skip set found yet"
            return False
        if mode == "swift":   # an explicitly given empty set speculates too (every draft is exact)
            return True
        if not self.skip:
            return False
        if self._generated < self._backoff_until:
            stats.reason = self._reason
            return False
        # while decoding plainly, decide again only every 16 tokens or when the search found a new
        # set: on a GPU a plain step takes ~1 ms and the decision itself must not cost percent
        key = (id(self.skip), self.search.state.probes // 16)
        if not self._speculating and key == self._decided_for and self._generated % 16:
            stats.reason = self._reason
            return False
        self._decided_for = key
        live = self.live_speedup()
        s = live if live is not None else self.predicted_speedup()
        self._speculating = s > 1.0 + self.config.margin
        if self._speculating:
            return True
        if live is not None:   # measured loss: back off, then probe again later
            self._backoff_until = self._generated + self._backoff
            self._backoff = min(self._backoff * 2, 4096)
            self._live_tokens = self._live_time = 0.0
            stats.reason = f"speculation measured at {live:.2f}x plain; decoding plainly"
        else:
            stats.reason = f"predicted speedup {s:.2f}x does not pay; decoding plainly"
        self._reason = stats.reason
        return False

    # -- the loop ----------------------------------------------------------------------

    def run(self, stream: Stream, sampler: TokenSampler, max_tokens: int, stats: GenStats) -> Iterator[Token]:
        """Generate up to max_tokens after stream's pending token (which is emitted first)."""
        stats.mode = self.config.mode
        start = time.perf_counter()
        used = set()
        try:
            emitted = 0
            first = stream.last
            stats.tokens += 1
            emitted += 1
            yield Token(first, False)
            if self.rt.is_eog(first):
                stats.stop_reason = "eos"
                return
            # after the first yield: the consumer reads that token's logits row before any decode
            if self.config.mode != "off" and self.supported and not self.costs.known and emitted < max_tokens:
                self.calibrate(stream)
            while emitted < max_tokens:
                if self.rt.room(stream.n_past) < 2:
                    stats.stop_reason = "context full"
                    return
                remaining = max_tokens - emitted
                spec = self._want_spec(stats)
                d_max = self._draft_max(remaining, stream.n_past) if spec else 0
                t0 = time.perf_counter()
                if d_max >= 1:
                    new = self._cycle(stream, sampler, d_max, stats)
                    used.add("swift")
                else:   # (a last token or a full context is decoded plainly without counting as a switch)
                    new = self._plain_step(stream, sampler, stats)
                    used.add("swift" if spec else "plain")
                if self.config.mode != "off":   # the search's allowance grows only where it may run
                    self._gen_time += time.perf_counter() - t0
                for tok in new:
                    stats.tokens += 1
                    emitted += 1
                    self._generated += 1
                    yield tok
                    if self.rt.is_eog(tok.id):
                        stats.stop_reason = "eos"
                        return
                self._maybe_search(stream, stats)
            stats.stop_reason = stats.stop_reason or "max tokens"
        finally:
            stats.t_total += time.perf_counter() - start
            stats.mode_used = "swift" if used == {"swift"} else ("mixed" if len(used) > 1 else "plain")
            stats.skip = self.skip.to_json() if self.skip is not None else {}
            stats.predicted_speedup = round(self.predicted_speedup(), 4)
            stats.costs = self.costs.to_json()
            stats.search_probes = self.search.state.probes

    def _plain_step(self, stream: Stream, sampler: TokenSampler, stats: GenStats) -> list[Token]:
        secs = self.rt.decode([stream.last], stream.n_past)
        tok = sampler.sample(-1, stream.tokens)
        stream.n_past += 1
        del stream.tokens[stream.n_past:]
        stream.tokens.append(tok)
        stats.plain_steps += 1
        stats.t_plain += secs
        self.costs.observe_plain(secs)
        return [Token(tok, False)]

    def _draft(self, stream: Stream, d_max: int) -> tuple[list[int], list[float], float]:
        """Draft up to d_max tokens with the skip set; stop after a token below epsilon or an EOG.

        Returns (drafts, their top-1 probabilities, seconds)."""
        drafts: list[int] = []
        probs: list[float] = []
        tok, pos = stream.last, stream.n_past
        eps = self._epsilon()
        start = time.perf_counter()
        with self.rt.skipping(self.skip.mask()):
            while len(drafts) < d_max:
                self.rt.decode([tok], pos)
                tok, p = top1(self.rt.logits(-1), self._scratch)
                drafts.append(tok)
                probs.append(p)
                pos += 1
                if p < eps or self.rt.is_eog(tok):   # nothing follows an end-of-generation token
                    break
        return drafts, probs, time.perf_counter() - start

    def _epsilon(self) -> float:
        """The confidence threshold in use: epsilon, or 0 while low-confidence drafts are accepted anyway.

        Beyond the reference: a drafter whose low-confidence tokens are still accepted more than
        90% of the time (a very redundant model) gains nothing from stopping early; confidence is
        a proxy for acceptance, and the live acceptance of those tokens is the real thing.
        """
        acc, n = self._low_conf
        if self.config.adaptive_p_min and n >= 16 and acc / n > 0.9:
            return 0.0
        return self.config.draft_p_min

    def _observe_confidence(self, probs: list[float], n_acc: int) -> None:
        acc, n = self._low_conf
        for i, p in enumerate(probs):
            if p < self.config.draft_p_min:
                acc, n = 0.97 * acc + (i < n_acc), 0.97 * n + 1
        self._low_conf = (acc, n)

    def _cycle(self, stream: Stream, sampler: TokenSampler, d_max: int, stats: GenStats) -> list[Token]:
        """One draft/verify cycle; returns the accepted drafts and the verifier's token."""
        rt, n_past = self.rt, stream.n_past
        try:
            drafts, probs, t_draft = self._draft(stream, d_max)
        finally:
            rt.remove(0, n_past, -1)   # draft KV is partial-model KV: never keep it
        t_v = rt.decode([stream.last, *drafts], n_past, all_logits=True)
        t0 = time.perf_counter()
        history = stream.tokens   # == tokens[:n_past + 1]; the accepted tokens extend it below
        out: list[int] = []
        for i, d in enumerate(drafts):
            t = sampler.sample(i, history + out if out else history)
            out.append(t)
            if t != d:
                break
        else:
            out.append(sampler.sample(len(drafts), history + out))
        n_acc = len(out) - 1
        rt.remove(0, n_past + n_acc + 1, -1)   # rejected positions
        stream.n_past = n_past + n_acc + 1
        del stream.tokens[n_past + 1:]
        stream.tokens.extend(out)
        t_v += time.perf_counter() - t0
        self._observe_confidence(probs, n_acc)
        self._account(stats, len(drafts), n_acc, t_draft, t_v)
        return [Token(t, i < n_acc, i) for i, t in enumerate(out)]

    def _account(self, stats: GenStats, drafted: int, n_acc: int, t_draft: float, t_verify: float) -> None:
        stats.cycles += 1
        stats.drafted += drafted
        stats.accepted += n_acc
        if len(stats.accepted_hist) <= n_acc:
            stats.accepted_hist.extend([0] * (n_acc + 1 - len(stats.accepted_hist)))
        stats.accepted_hist[n_acc] += 1
        stats.t_draft += t_draft
        stats.t_verify += t_verify
        stats.draft_max = max(stats.draft_max, drafted)
        self.costs.observe_verify(drafted + 1, t_verify)
        decay = 0.95
        self._live_tokens = decay * self._live_tokens + n_acc + 1
        self._live_time = decay * self._live_time + t_draft + t_verify
        acc, dr = self._live_accept
        self._live_accept = (decay * acc + n_acc, decay * dr + drafted)
        self._check_task_change()

    def _check_task_change(self) -> None:
        """Reopen the search when live acceptance falls well below what the set promised."""
        acc, dr = self._live_accept
        st = self.search.state
        if self.config.skip is None and st.done and dr >= 30 and acc / dr < st.best_matchness - 0.25:
            self.search.reopen()
            self._live_accept = (0.0, 0.0)

    # -- search pacing ---------------------------------------------------------------------

    def _search_share(self) -> float:
        """Share of generation time the search may use: more while the potential gain is large.

        Until the size phase has scored its skip counts, the gain is estimated from the share of
        sub-layers the importance scan found (nearly) free: skipping that share at near-perfect
        acceptance. (Dropping to the small budget right after the scan starved the size phase:
        on the K=3 fixture the 13.6 s scan had used a 1% allowance for the next 1300 s.)
        Afterwards the search only refines: the small budget, halved while nothing pays.
        """
        cfg, st = self.config, self.search.state
        if not self.costs.known:
            return 0.0
        if self.search.exploring:
            n_known, free = self.search.free_evidence()
            if n_known < 8:   # too little evidence for an estimate yet
                return cfg.search_budget
            cand = SkipSet.from_indices(self.rt.n_layer, range(int(free * self.search.n)))
            gain = costmodel.predict(cand, 0.98, self.costs, 16)[1] - 1.0
            # the sooner a large gain is found, the more tokens it speeds up: front-load (a 20%
            # gain already takes the maximum share), small or no gain keeps the small budget
            return float(np.clip(FRONT_LOAD * gain, cfg.search_budget / 2, cfg.search_budget_max))
        return cfg.search_budget if st.best_predicted > 1.0 else cfg.search_budget / 2

    def _maybe_search(self, stream: Stream, stats: GenStats) -> None:
        if (self.config.mode == "off" or self.config.skip is not None or not self.supported
                or not self.search.active):
            return
        st = self.search.state
        if self._share[1] != st.probes or not self.costs.known:
            self._share = (self._search_share(), st.probes)
        spent = st.seconds
        if spent > self._share[0] * self._gen_time:
            return
        before = spent
        self.search.step(self.rt, stream.tokens, stream.n_past)
        stats.t_search += self.search.state.seconds - before

    # -- calibration ----------------------------------------------------------------------

    def calibrate(self, stream: Stream, reps: int = 2) -> Costs:
        """Measure t_plain, v(n) and per-sub-layer costs on a scratch sequence (once per model)."""
        rt, n_past = self.rt, stream.n_past
        sizes = [n for n in (1, *CALIBRATION_SIZES) if rt.room(n_past) > n + 1]
        if len(sizes) < 3:
            return self.costs
        toks = [stream.last] * max(sizes)

        def timed(n: int, mask: bytes = b"") -> float:
            best = float("inf")
            rt.share(0, 1, 0, n_past)
            try:
                with rt.skipping(mask):
                    for i in range(reps + 1):   # the first call may build a graph: not timed
                        secs = rt.decode(toks[:n], n_past, seq=1, all_logits=True)
                        rt.remove(1, n_past, -1)
                        if i:
                            best = min(best, secs)
            finally:
                rt.remove(1, -1, -1)
            return best

        t1 = timed(1)
        costs = self.costs
        costs.t_plain = t1
        costs.v = {n: timed(n) / t1 for n in sizes if n > 1}
        inner = max(rt.n_layer - 2, 1)
        if rt.n_layer > 2 and self.supported:
            c_attn = timed(1, SkipSet.from_lists(rt.n_layer, attention=range(1, rt.n_layer - 1)).mask()) / t1
            c_ffn = timed(1, SkipSet.from_lists(rt.n_layer, ffn=range(1, rt.n_layer - 1)).mask()) / t1
            costs.attn = max(1.0 - c_attn, 0.0) / inner
            costs.ffn = max(1.0 - c_ffn, 0.0) / inner
        return costs
