#!/usr/bin/env python3
"""Replay the lookup drafter and the controller on a Spec-Bench run's recorded outputs.

Greedy verification accepts a draft exactly as far as it agrees with plain decoding's output,
so the prompt-lookup policy can be replayed without the model: the real `LookupDrafter` and
`Controller` plan every cycle over the baseline's own token streams, each cycle is charged
v(d + 1) plain steps from the run's measured verification costs (a plain step: 1), and the
predicted speedup is plain time over replayed time, weighted by the plain step time at each
context like specbench.py's oracle. The policy's knobs (swift_gguf/drafters.py,
swift_gguf/controller.py) can then be tuned in seconds instead of a benchmark run; the
benchmark remains the measurement.

    .venv/bin/python benchmarks/policy_sim.py benchmarks/results/specbench-smollm2-135m-*.json
"""
from __future__ import annotations

import argparse
import bisect
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swift_gguf.controller import Controller   # noqa: E402
from swift_gguf.costmodel import MIN_LIVE, V_MAX   # noqa: E402
from swift_gguf.drafters import LOOKUP, LookupDrafter   # noqa: E402
from swift_gguf.engine import SpecConfig, Stream   # noqa: E402


class RunCosts:
    """The run's measured costs (specbench.py's verify_costs) in the shape the drafters ask for."""

    def __init__(self, verify_costs: dict):
        self.ctxs = sorted(int(c) for c in verify_costs)
        self.t1 = [verify_costs[str(c)]["t1"] for c in self.ctxs]
        self.tables = []
        for c in self.ctxs:
            pts = {1: 1.0, **{int(n): x for n, x in verify_costs[str(c)]["v"].items()}}
            ns = sorted(pts)
            table = np.interp(np.arange(V_MAX + 1), ns, [pts[n] for n in ns])
            table[0] = 0.0
            self.tables.append(table)

    def _nearest(self, n_ctx: int) -> int:
        i = bisect.bisect_left(self.ctxs, n_ctx)
        return min((j for j in (i - 1, i) if 0 <= j < len(self.ctxs)), key=lambda j: abs(self.ctxs[j] - n_ctx))

    def v_table(self, n_ctx: int) -> np.ndarray:
        return self.tables[self._nearest(n_ctx)]

    def plain_seconds(self, n_ctx: int) -> float:
        return self.t1[self._nearest(n_ctx)]

    def live_verify_count(self, n_ctx: int, n: int) -> int:
        return MIN_LIVE   # every size timed: no exploration (the replay knows the costs)

    def draft_cost(self, drafter: str) -> float:
        return 0.0

    def observe_draft(self, *args, **kwargs) -> None:
        pass


def replay_turn(prompt: list[int], out: list[int], costs: RunCosts, ctl: Controller,
                drafter: LookupDrafter) -> tuple[float, float, int, int]:
    """(plain seconds, replayed seconds, cycles, accepted) for one recorded turn."""
    stream = Stream(list(prompt) + [out[0]], len(prompt))
    k, plain_s, sim_s, cycles, accepted = 1, 0.0, 0.0, 0, 0
    while k < len(out):
        n_ctx = stream.n_past
        t1 = costs.plain_seconds(n_ctx)
        plan = ctl.plan(stream, len(out) - k - 1)
        if plan.offer is None:
            emitted, secs = [out[k]], t1
        else:
            draft = drafter.propose(plan.offer, stream, plan.d)
            n_acc = 0
            while n_acc < len(draft.tokens) and draft.tokens[n_acc] == out[k + n_acc]:
                n_acc += 1
            emitted = out[k:k + n_acc + 1]
            secs = costs.v_table(n_ctx)[len(draft.tokens) + 1] * t1
            drafter.observe(draft, n_acc)
            ctl.observe(LOOKUP, len(draft.tokens), len(emitted), secs, n_ctx)
            cycles, accepted = cycles + 1, accepted + n_acc
        stream.n_past += len(emitted)
        stream.tokens.extend(emitted)
        ctl.generated += len(emitted)
        plain_s += len(emitted) * t1
        sim_s += secs
        k += len(emitted)
    return plain_s, sim_s, cycles, accepted


def replay(run: dict, arm: str = "baseline", margin: float | None = None) -> dict:
    costs = RunCosts(run["verify_costs"])
    by_cat: dict[str, list[float]] = {}
    plain_total = sim_total = 0.0
    cycles = accepted = 0
    column = {str(q["question_id"]): q["column"] for q in run["questions"]}
    # one drafter and controller for the whole run, as in a benchmark worker (a long-lived model)
    cfg = SpecConfig(mode="auto", spec_type="ngram")
    if margin is not None:
        cfg.margin = margin
    drafter = LookupDrafter(costs)
    ctl = Controller(cfg, costs, {LOOKUP: drafter})
    for qid, reps in run["raw"][arm].items():
        cat = column[qid]
        turns = reps[0]
        p_s = s_s = 0.0
        for t in turns:
            t_plain, t_sim, n_cycles, n_acc = replay_turn(t["prompt"], t["tokens"], costs, ctl, drafter)
            p_s, s_s = p_s + t_plain, s_s + t_sim
            cycles, accepted = cycles + n_cycles, accepted + n_acc
        plain_total, sim_total = plain_total + p_s, sim_total + s_s
        by_cat.setdefault(cat, []).append((p_s, s_s))
    cats = {c: sum(p for p, _ in v) / sum(s for _, s in v) for c, v in by_cat.items()}
    return {"overall": plain_total / sim_total, "by_category": cats, "cycles": cycles,
            "mean_accepted": (accepted + cycles) / cycles if cycles else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="specbench.py JSON results")
    ap.add_argument("--margin", type=float, default=None)
    args = ap.parse_args()
    for path in args.runs:
        run = json.loads(path.read_text())
        r = replay(run, margin=args.margin)
        oracle = run["table"].get("oracle", {}).get("speedup", {})
        print(f"{path.name}: replayed {r['overall']:.3f}x overall, {r['cycles']} cycles, "
              f"{r['mean_accepted']:.2f} tokens per cycle")
        for c, s in r["by_category"].items():
            o = oracle.get(c)
            print(f"  {c:32s} {s:.3f}x" + (f"  (oracle {o:.3f}x)" if o else ""))


if __name__ == "__main__":
    main()
