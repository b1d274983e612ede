"""Pacing the layer search: how much of the generation time its probes may use.

Scoring one candidate skip set costs as much as tens of plain steps on a CPU, so the search
runs between cycles under a time allowance: a share of the time spent generating with
speculation allowed (plain `off` requests do not fund it), large while a big gain may still be
found, small once the search only refines (docs: performance model, "Pacing the search").
"""
from __future__ import annotations

import numpy as np

from typing import TYPE_CHECKING

from . import costmodel
from .costmodel import Costs
from .protocols import Runtime, SpecSettings, TokenStream
from .skipset import SkipSet

if TYPE_CHECKING:
    from .controller import LossBudget
    from .search import LayerSearch

FRONT_LOAD = 2.5      # search share per unit of estimated gain while exploring (capped by search_budget_max)
MIN_EVIDENCE = 8      # sub-layers with importance evidence before the gain is estimated from them
FREE_MATCHNESS = 0.98  # acceptance assumed for a set of free sub-layers
# A search step's cost over its window decodes' (v(W + 1) each) before any step was timed: a graph
# built for each new skip mask and the log-softmax and KL over vocabulary-wide rows come on top. The
# first step of a process, forced on real answers, took 1.2x (SmolLM2, Qwen2.5-Coder-0.5B) to 2.0x
# (Gemma 3 270M: 262,144-wide rows) its decodes, later ones ~1.0x (search.run_probe decodes its
# window through the verification kernels, which v(n) times; through upstream's batch kernels, until
# 2026-12-05, steps took 2.1-2.7x and SmolLM2's first one, charged at its decodes' estimate, cost a
# 96-token answer 7%). Once a step was timed, the last measured ratio replaces it for kinds not timed yet.
PROBE_PRIOR = 2.0


class SearchPacer:
    """Grants the layer search its probes, one at a time, within its share of generation time."""

    def __init__(self, config: SpecSettings, search: LayerSearch, costs: Costs, n_layer: int):
        self.config, self.search, self.costs, self.n_layer = config, search, costs, n_layer
        self.gen_time = 0.0          # seconds spent generating where the search may run
        self._share = (0.0, -1)      # cached share and the probe count it was computed at
        self._seen: dict[tuple[int, int], float] = {}   # (window, window decodes) -> last step's plain steps
        self._ratio = PROBE_PRIOR    # the last step's cost over its decodes' estimate (kinds not timed yet)
        # the last step the loss budget could not carry: (budget, its balance, token count from, to) over
        # which it still cannot (asked every token: on real text ~15 us a token while the search is open)
        self._denied: tuple = (None, 0.0, 0, -1)

    def share(self) -> float:
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
            if n_known < MIN_EVIDENCE:
                return cfg.search_budget
            cand = SkipSet.from_indices(self.n_layer, range(int(free * self.search.n)))
            gain = costmodel.predict(cand, FREE_MATCHNESS, self.costs)[1] - 1.0
            # the sooner a large gain is found, the more tokens it speeds up: front-load (a 20%
            # gain already takes the maximum share), small or no gain keeps the small budget
            return float(np.clip(FRONT_LOAD * gain, cfg.search_budget / 2, cfg.search_budget_max))
        return cfg.search_budget if st.best_predicted > 1.0 else cfg.search_budget / 2

    def step(self, rt: Runtime, stream: TokenStream, budget: LossBudget | None = None) -> float:
        """Run one probe if the allowance has room; returns the seconds it took.

        With a request's loss budget (controller.LossBudget, auto), a probe must also fit what the
        request may still lose, and is charged to it, front-loading or not: on a model where nothing
        pays, a 50-token probe costs tens of plain steps, and must not sink a short answer. (Front-
        loaded probes used to be exempt, as an investment across requests; once the search probed at
        all (its references had been dropped before any probe read them), SmolLM2's Spec-Bench run
        spent 9.9% of generation on it and auto fell from 1.25x to 1.13x, 2026-12-05. Funded by the
        budget, the search runs where the answer can carry it, and faster where speculation gains.)"""
        if not self.search.active:
            return 0.0
        st = self.search.state
        if self._share[1] != st.probes or not self.costs.known:
            self._share = (self.share(), st.probes)
        if st.seconds > self._share[0] * self.gen_time:
            return 0.0
        if budget is not None:
            denied = self._denied
            if denied[0] is budget and denied[1] == budget.balance and denied[2] <= budget.tokens < denied[3]:
                return 0.0
        kind = (self.search.next_window(), self.search.step_windows(stream.tokens, stream.n_past))
        if budget is not None:
            cost = self._cost(kind, stream.n_past)
            if not budget.allows(cost):
                # until the allowance reaches it (the balance moves only with cycles and probes)
                self._denied = (budget, budget.balance, budget.tokens, budget.tokens_to_reach(cost))
                return 0.0
        before = st.seconds
        self.search.step(rt, stream.tokens, stream.n_past)
        secs = st.seconds - before
        t1 = self.costs.plain_seconds(stream.n_past)
        if t1 > 0:
            self._seen[kind] = secs / t1
            self._ratio = max(1.0, secs / t1 / self._decodes(kind, stream.n_past))
            if budget is not None:
                budget.charge(secs / t1)
        return secs

    def _cost(self, kind: tuple[int, int], n_past: int) -> float:
        """Plain steps the next search step will cost: what the last step of its kind cost where that
        was more than its window decodes at v(W + 1) each; for a kind not timed yet, those decodes times
        the last step's ratio to its decodes (PROBE_PRIOR before any). (A step is more than its decodes:
        a graph built for its new skip mask, the log-softmax and KL over vocabulary-wide rows; a 4-token
        importance probe of SmolLM2 estimated at its decodes alone once sank a 42-token answer to 0.83x.)"""
        decodes = self._decodes(kind, n_past)
        seen = self._seen.get(kind)
        return max(decodes, seen) if seen is not None else decodes * self._ratio

    def _decodes(self, kind: tuple[int, int], n_past: int) -> float:
        """A search step's window decodes, in plain steps: v(W + 1) each."""
        window, decodes = kind
        v = self.costs.v_table(n_past)
        return decodes * float(v[min(window + 1, len(v) - 1)])
