"""The oracle bound of a Spec-Bench run (benchmarks/specbench.py) and the run's measured costs.

`CostTable`: v(n) and the plain step time measured by the run's `off` worker at several contexts,
read through the package's one v(n) interpolator (costmodel.interpolate) in n and linearly
between contexts. The oracle: a prompt-lookup drafter replayed on the base arm's own outputs that
knows what the model generates next (specbench.py's docstring); policy_sim.py prices its replay
with the same table.
"""
from __future__ import annotations

import bisect
from typing import Callable

from swift_gguf.costmodel import interpolate
from swift_gguf.limits import MAX_VERIFY

# as long as any draft of the engine may be (16 before verifications of up to 64 tokens: an oracle
# held to shorter drafts than the policy it bounds would be no bound)
ORACLE_DRAFT_MAX = MAX_VERIFY - 1


class OracleError(RuntimeError):
    """The run holds no measured costs to price the oracle with."""


class CostTable:
    """A run's measured v(n) and plain step time, interpolated linearly in n and in context length."""

    def __init__(self, measured: dict):
        self.ctxs = sorted(int(c) for c in measured)
        if not self.ctxs:
            raise OracleError("no verification costs were measured (the contexts did not fit in --ctx)")
        self.t1 = [measured[str(c)]["t1"] for c in self.ctxs]
        self.v = [{1: 1.0, **{int(n): x for n, x in measured[str(c)]["v"].items()}} for c in self.ctxs]

    def _at(self, ctx: int, f) -> float:
        i = bisect.bisect_left(self.ctxs, ctx)
        if i == 0:
            return f(0)
        if i >= len(self.ctxs):
            return f(len(self.ctxs) - 1)
        c0, c1 = self.ctxs[i - 1], self.ctxs[i]
        w = (ctx - c0) / (c1 - c0)
        return (1 - w) * f(i - 1) + w * f(i)

    def plain_seconds(self, ctx: int) -> float:
        return self._at(ctx, lambda i: self.t1[i])

    def verify(self, n: int, ctx: int) -> float:
        """v(n) at ctx: the package's interpolator in n (costmodel.interpolate) at the measured
        contexts around ctx, linear between them (the nearest one outside them)."""
        return self._at(ctx, lambda i: interpolate(self.v[i], n))


def oracle_length(run: int, v: Callable[[int], float]) -> int:
    """The oracle's draft length where the next `run` drafted tokens would all be accepted: d <= run with
    the highest (d + 1) / v(d + 1), if above a plain step's 1 (else 0: a plain step; ties: the shorter)."""
    best_d, best_rate = 0, 1.0
    for d in range(1, run + 1):
        rate = (d + 1) / v(d + 1)
        if rate > best_rate:
            best_d, best_rate = d, rate
    return best_d


def oracle_cycles(prompt: list[int], out: list[int], costs: CostTable) -> tuple[float, float]:
    """(plain seconds, oracle seconds) to generate out[1:] after prompt (out[0] comes from the prompt)."""
    seq = list(prompt) + list(out)
    index = NgramIndex(seq)
    p = len(prompt)
    plain = oracle = 0.0
    i = 1
    while i < len(out):
        ctx = p + i
        run = min(index.best_run(ctx, ORACLE_DRAFT_MAX), len(out) - 1 - i)
        best_d = oracle_length(run, lambda n: costs.verify(n, ctx))
        t1 = costs.plain_seconds(ctx)
        if best_d:
            oracle += costs.verify(best_d + 1, ctx) * t1
            plain += sum(costs.plain_seconds(ctx + k) for k in range(best_d + 1))
            i += best_d + 1
        else:
            oracle += t1
            plain += t1
            i += 1
    return plain, oracle


class NgramIndex:
    """Start positions of every 1-, 2- and 3-gram of a token sequence."""

    def __init__(self, seq: list[int]):
        self.seq = seq
        self.pos: dict[tuple, list[int]] = {}
        for g in (1, 2, 3):
            for j in range(len(seq) - g + 1):
                self.pos.setdefault(tuple(seq[j:j + g]), []).append(j)

    def best_run(self, ctx: int, cap: int) -> int:
        """With seq[:ctx] known: the longest agreement with seq[ctx:] (at most cap) of the text after
        an earlier occurrence of the longest (3, 2, 1)-gram that ends seq[:ctx]."""
        seq = self.seq
        for g in (3, 2, 1):
            if ctx <= g:
                continue
            starts = self.pos.get(tuple(seq[ctx - g:ctx]), [])
            earlier = starts[:bisect.bisect_left(starts, ctx - g)]
            if earlier:
                best = 0
                for j in earlier:
                    k = 0
                    while k < cap and j + g + k < ctx and ctx + k < len(seq) and seq[j + g + k] == seq[ctx + k]:
                        k += 1
                    best = max(best, k)
                return best
        return 0


def oracle_bound(result: dict, base: str = "baseline") -> dict:
    """The oracle's speedup over plain decoding per category and overall, on arm `base`'s outputs."""
    costs = CostTable(result["verify_costs"])
    cat_of = {str(q["question_id"]): q["column"] for q in result["questions"]}
    plain, orc = {}, {}
    for qid, reps in result["raw"][base].items():
        c = cat_of[qid]
        for t in reps[0]:
            a, b = oracle_cycles(t["prompt"], t["tokens"], costs)
            plain[c] = plain.get(c, 0.0) + a
            orc[c] = orc.get(c, 0.0) + b
    return {"speedup": {c: round(plain[c] / orc[c], 4) for c in plain if orc[c] > 0},
            "speedup_overall": round(sum(plain.values()) / sum(orc.values()), 4) if sum(orc.values()) else None,
            "draft_max": ORACLE_DRAFT_MAX,
            "definition": "longest 3..1-gram match over prompt + output, best occurrence, drafts d <= accepted run "
                          "maximising (d+1)/v(d+1); costs from this run"}
