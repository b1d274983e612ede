"""The speculative decoding loop: plan, draft, verify in one batch, accept, repeat.

One `SwiftEngine` per context. `run()` continues a stream whose prompt is already in the
KV cache and yields tokens; the stream's KV cache, its token list and `n_past` agree with
each other at every yield, so a consumer may stop at any time.

Who drafts is the controller's choice each cycle (controller.py): the layer-skip drafter
(SWIFT: the model with some sub-layers skipped) or prompt lookup (drafters.py). The
verification is the same for every drafter: one batch over [last, drafts...], each
position sampled in order by the one `TokenSampler` (so each emitted token is sampled
exactly once, as plain decoding samples it), drafts accepted while the sample equals them,
rejected positions removed from the KV cache.

Modes: `off` decodes plainly; `swift` always speculates (by layer skipping unless
`spec_type` names another drafter); `auto` speculates where the measured costs and
acceptance say it pays. `spec_type` restricts the drafters: `auto` (choose per cycle),
`layer-skip`, `ngram` (prompt lookup).
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, NamedTuple

from . import costmodel, limits
from .controller import SPEC_TYPE_ALIASES, Controller, Plan, resolve_spec_type
from .costmodel import Costs
from .drafters import LAYER_SKIP, LOOKUP, Draft, LayerSkipDrafter, LookupDrafter
from .pacing import SearchPacer
from .protocols import Runtime, TokenSampler
from .search import LayerSearch, SearchConfig, SearchState
from .skipset import SkipSet

MODES = ("off", "swift", "auto")


@dataclass
class SpecConfig:
    mode: str = "auto"
    spec_type: str | None = None    # drafters: auto, layer-skip, ngram (None: layer-skip for swift, auto for auto)
    draft_max: int | None = None    # None: chosen from measured costs and acceptance
    draft_p_min: float = 0.8        # epsilon: layer skipping stops drafting below this top-1 probability
    adaptive_p_min: bool = True     # drop the confidence stop while low-confidence drafts are accepted
    skip: SkipSet | None = None     # a fixed skip set (no search) when given
    search: SearchConfig = field(default_factory=SearchConfig)
    search_budget: float = 0.02     # share of generation time for the search once a set pays
    search_budget_max: float = 1.0   # share while the potential gain is large (up to the generation time)
    margin: float = 0.02            # auto speculates when the predicted speedup > 1 + margin

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown speculation mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.spec_type is not None:
            self.spec_type = SPEC_TYPE_ALIASES.get(self.spec_type, self.spec_type)
            resolve_spec_type(self.spec_type, self.mode)   # raises for an unknown type
        if self.draft_p_min not in limits.DRAFT_P_MIN:
            raise ValueError(f"draft_p_min (epsilon) must be in {limits.DRAFT_P_MIN}, got {self.draft_p_min}")
        if self.draft_max is not None and self.draft_max not in limits.DRAFT_MAX:
            raise ValueError(f"draft_max must be in {limits.DRAFT_MAX}, got {self.draft_max}")


class Token(NamedTuple):
    id: int
    from_draft: bool   # True when the token was drafted and accepted by the verifier
    row: int = -1      # the row of the last decode's logits it was chosen from (valid until the next decode)
    drafter: str = ""  # the drafter of an accepted draft token ("" for the verifier's own tokens)


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
    drafters: dict = field(default_factory=dict)   # drafter -> {cycles, drafted, accepted, t_draft}
    t_prompt: float = 0.0
    t_draft: float = 0.0
    t_verify: float = 0.0
    t_plain: float = 0.0
    t_search: float = 0.0
    t_calibrate: float = 0.0   # the cost calibration, once per model (before this request's prompt)
    t_total: float = 0.0
    search_probes: int = 0
    mode: str = "auto"
    spec_type: str = ""
    mode_used: str = "plain"
    reason: str = ""
    stop_reason: str = ""
    skip: dict = field(default_factory=dict)
    predicted_speedup: float = 0.0   # the layer-skip drafter's, from the calibration's costs
    draft_max: int = 0
    costs: dict = field(default_factory=dict)
    acceptance: dict = field(default_factory=dict)   # lookup: conditional acceptance by match class
    exact: bool = True   # False where the backend's verification batches are not bit-identical (CUDA)
    step_kernels: str = ""   # plain steps' kernels: upstream, verification, timing (runtime.StepKernels)

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

    def add_cycle(self, draft: Draft, n_acc: int, t_verify: float) -> None:
        drafted = len(draft.tokens)
        self.cycles += 1
        self.drafted += drafted
        self.accepted += n_acc
        if len(self.accepted_hist) <= n_acc:
            self.accepted_hist.extend([0] * (n_acc + 1 - len(self.accepted_hist)))
        self.accepted_hist[n_acc] += 1
        self.t_draft += draft.seconds
        self.t_verify += t_verify
        self.draft_max = max(self.draft_max, drafted)
        d = self.drafters.setdefault(draft.drafter, {"cycles": 0, "drafted": 0, "accepted": 0, "t_draft": 0.0})
        d["cycles"] += 1
        d["drafted"] += drafted
        d["accepted"] += n_acc
        d["t_draft"] += draft.seconds

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
            s += " [" + "; ".join(f"{name} {d['accepted']}/{d['drafted']} in {d['cycles']} cycles"
                                  for name, d in self.drafters.items()) + "]"
        if self.reason:
            s += f" ({self.reason})"
        if self.drafted and not self.exact:
            s += "; speculative output may differ from plain decoding at near-ties on this backend"
        return s


@dataclass
class Stream:
    """A generation in progress: tokens[:n_past] are in the KV cache, tokens[n_past] is pending.

    The token list only grows while the stream lives (drafts never enter it; the lookup index
    relies on that)."""
    tokens: list[int]
    n_past: int

    @property
    def last(self) -> int:
        return self.tokens[self.n_past]


class SwiftEngine:
    """The draft/verify loop for one context, over the controller's plans and the drafters."""

    def __init__(self, rt: Runtime, config: SpecConfig, *, costs: Costs | None = None,
                 search_state: SearchState | None = None, supported: bool = True, reason: str = "",
                 rollback: bool = True):
        self.rt = rt
        self.config = config
        self.costs = costs or Costs()
        self.supported = supported          # layer skipping works on this model
        self.unsupported_reason = reason
        self.rollback = rollback            # its KV cache can drop rejected positions (not recurrent)
        self.search = LayerSearch(search_state or SearchState(rt.n_layer, config.search), self.costs)
        self.pacer = SearchPacer(config, self.search, self.costs, rt.n_layer)
        self.layer_skip = LayerSkipDrafter(rt, config, self.search, self.costs)
        self.lookup = LookupDrafter(self.costs, is_eog=functools.lru_cache(maxsize=None)(rt.is_eog))
        self.controller = Controller(config, self.costs, {LOOKUP: self.lookup, LAYER_SKIP: self.layer_skip})
        if not supported:
            self.controller.unavailable[LAYER_SKIP] = reason
        if not rollback:
            self.controller.unavailable[LOOKUP] = reason

    @property
    def skip(self) -> SkipSet | None:
        return self.layer_skip.skip

    def predicted_speedup(self) -> float:
        """The layer-skip drafter's predicted speedup (calibration's costs, its acceptance)."""
        if self.skip is None or not self.costs.known:
            return 0.0
        return costmodel.predict(self.skip, self.layer_skip.alpha(), self.costs, self.config.draft_max or costmodel.DRAFT_MAX)[1]

    def calibrate(self, stream: Stream) -> Costs:
        return costmodel.calibrate(self.rt, stream.last, stream.n_past, self.costs,
                                   sub_layers=self.supported)

    def prepare(self, token: int, n_past: int, stats: GenStats) -> None:
        """Before a request's prompt: calibrate the costs if this request may speculate and they are
        unknown (once per model; a profile brings them). Here rather than mid-answer, where it
        stalled the stream after its first token; its time counts in the request's total."""
        if self.config.mode == "off" or self.costs.known or not self.controller.can_draft():
            return
        start = time.perf_counter()
        costmodel.calibrate(self.rt, token, n_past, self.costs, sub_layers=self.supported)
        stats.t_calibrate = time.perf_counter() - start
        stats.t_total += stats.t_calibrate

    # -- the loop ----------------------------------------------------------------------

    def run(self, stream: Stream, sampler: TokenSampler, max_tokens: int, stats: GenStats) -> Iterator[Token]:
        """Generate up to max_tokens after stream's pending token (which is emitted first)."""
        cfg = self.config
        stats.mode = cfg.mode
        stats.spec_type = resolve_spec_type(cfg.spec_type, cfg.mode) if cfg.mode != "off" else ""
        start = time.perf_counter()
        used = set()
        budget = self.controller.budget
        budget.start()
        self.controller.refresh()   # (settings may differ from the last request's)
        searching = self._search_allowed()   # (the settings hold for a request)
        try:
            emitted = 1
            stats.tokens += 1
            budget.tokens += 1
            yield Token(stream.last, False)
            if self.rt.is_eog(stream.last):
                stats.stop_reason = "eos"
                return
            # (calibration runs in prepare(), before the prompt; this is the fallback for a caller that
            # switched speculation on after it: after the first yield, whose logits row the consumer reads)
            if self.controller.can_draft() and not self.costs.known and emitted < max_tokens:
                self.calibrate(stream)
            while emitted < max_tokens:
                room = self.rt.room(stream.n_past)
                if room < 2:
                    stats.stop_reason = "context full"
                    return
                t0 = time.perf_counter()
                plan = self.controller.plan(stream, min(max_tokens - emitted - 1, room - 2, self.rt.max_verify - 1))
                if plan.offer is not None:
                    new = self._cycle(stream, sampler, plan, stats)
                    used.add("swift")
                else:
                    new = self._plain_step(stream, sampler, stats)
                    if plan.reason:   # (a last token or a full context is no decision)
                        stats.reason = plan.reason
                        used.add("plain")
                if cfg.mode != "off":   # the search's allowance grows only where it may run
                    self.pacer.gen_time += time.perf_counter() - t0
                for tok in new:
                    stats.tokens += 1
                    emitted += 1
                    budget.tokens += 1
                    self.controller.generated += 1
                    yield tok
                    if self.rt.is_eog(tok.id):
                        stats.stop_reason = "eos"
                        return
                if searching and self.search.active and (probed := self.pacer.step(self.rt, stream, budget)):
                    stats.t_search += probed
                    self.controller.refresh()   # the search may have found another skip set
            stats.stop_reason = stats.stop_reason or "max tokens"
        finally:
            stats.t_total += time.perf_counter() - start
            stats.mode_used = "swift" if used == {"swift"} else ("mixed" if len(used) > 1 else "plain")
            stats.skip = self.skip.to_json() if self.skip is not None else {}
            stats.predicted_speedup = round(self.predicted_speedup(), 4)
            stats.costs = self.costs.to_json()
            stats.acceptance = self.lookup.acceptance.to_json()
            stats.search_probes = self.search.state.probes
            stats.step_kernels = self.rt.kernels.label()

    def _search_allowed(self) -> bool:
        cfg = self.config
        return (cfg.mode != "off" and cfg.skip is None and self.supported and self.rollback
                and resolve_spec_type(cfg.spec_type, cfg.mode) in ("auto", LAYER_SKIP))

    def _plain_step(self, stream: Stream, sampler: TokenSampler, stats: GenStats) -> list[Token]:
        secs = self.rt.step(stream.last, stream.n_past, plain=True)
        tok = sampler.sample(-1, stream.tokens)
        self.costs.observe_plain(stream.n_past, secs)
        stream.n_past += 1
        del stream.tokens[stream.n_past:]
        stream.tokens.append(tok)
        stats.plain_steps += 1
        stats.t_plain += secs
        return [Token(tok, False)]

    def _cycle(self, stream: Stream, sampler: TokenSampler, plan: Plan, stats: GenStats) -> list[Token]:
        """One draft/verify cycle; returns the accepted drafts and the verifier's token."""
        rt, n_past, drafter = self.rt, stream.n_past, plan.offer.drafter
        draft = drafter.propose(plan.offer, stream, plan.d)
        t_v = rt.verify([stream.last, *draft.tokens], n_past)
        t0 = time.perf_counter()
        # each sampled token joins the stream at once: the context the next position is sampled
        # after (a copy of the history per position cost ~5 us a token at 2,000 tokens of context)
        tokens = stream.tokens   # == tokens[:n_past + 1]
        for i, d in enumerate(draft.tokens):
            t = sampler.sample(i, tokens)
            tokens.append(t)
            if t != d:
                break
        else:
            tokens.append(sampler.sample(len(draft.tokens), tokens))
        out = tokens[n_past + 1:]
        n_acc = len(out) - 1
        rt.remove(0, n_past + n_acc + 1, -1)   # rejected positions
        stream.n_past = n_past + n_acc + 1
        t_sample = time.perf_counter() - t0
        # the cost model sees the decode alone: sampling costs the same per token in a plain step
        self.costs.observe_verify(n_past, len(draft.tokens) + 1, t_v)
        drafter.observe(draft, n_acc)
        self.controller.observe(draft.drafter, len(draft.tokens), n_acc + 1, draft.seconds + t_v, n_past)
        stats.add_cycle(draft, n_acc, t_v + t_sample)
        return [Token(t, i < n_acc, i, draft.drafter if i < n_acc else "") for i, t in enumerate(out)]
