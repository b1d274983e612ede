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

    .venv/bin/python -m benchmarks.policy_sim benchmarks/results/specbench-smollm2-135m-*.json

`--live SIGMA` replays the live cost estimator as well: the controller then decides on
swift_gguf's own `Costs`, calibrated and fed with timings drawn from the run's measured costs
times lognormal noise of that sigma (a VM's call-to-call jitter), while each cycle is still
charged the measured cost. The plain replay decides on the measured table itself, which is
optimistic where that table is noisy: it exploits every accident of the measurement.
`--costs FILE` takes the measured costs from another run's JSON (its "verify_costs").
"""
from __future__ import annotations

import argparse
import bisect
import json
from pathlib import Path

import numpy as np

from benchmarks.oracle import CostTable
from swift_gguf.controller import Controller
from swift_gguf.costmodel import CALIBRATION_SIZES, MIN_LIVE, V_MAX, Costs, set_calibration
from swift_gguf.drafters import LOOKUP, LookupDrafter
from swift_gguf.engine import SpecConfig, Stream


class RunCosts:
    """The run's measured costs (specbench.py's verify_costs, read through its CostTable: the package's
    one v(n) interpolator) in the shape the controller asks for: a v table per measured context,
    the nearest one deciding, as the engine decides on per-bucket tables."""

    def __init__(self, verify_costs: dict):
        table = CostTable(verify_costs)
        self.ctxs = table.ctxs
        self.t1 = [table.plain_seconds(c) for c in self.ctxs]
        self.tables = []
        for c in self.ctxs:
            v = np.array([table.verify(n, c) for n in range(V_MAX + 1)])
            v[0] = 0.0
            self.tables.append(v)

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


class LiveTimer:
    """Timings as the engine would measure them live: a measured cost times lognormal noise.

    It calibrates swift_gguf's `Costs` as costmodel.calibrate does (best of 3 per size) and feeds
    it every simulated call, so the controller decides on the live estimator's numbers."""

    def __init__(self, truth: CostTable, costs: Costs, sigma: float, seed: int = 0):
        self.truth, self.costs, self.sigma = truth, costs, sigma
        self.rng = np.random.default_rng(seed)

    def seconds(self, n: int, n_ctx: int) -> float:
        """The measured (mean) cost of an n-token call: what a cycle is charged."""
        t1 = self.truth.plain_seconds(n_ctx)
        return t1 if n == 1 else t1 * self.truth.verify(n, n_ctx)

    def sample(self, n: int, n_ctx: int) -> float:
        return self.seconds(n, n_ctx) * float(np.exp(self.rng.normal(0.0, self.sigma)))

    def calibrate(self, n_ctx: int, reps: int = 3) -> None:
        set_calibration(self.costs, {n: min(self.sample(n, n_ctx) for _ in range(reps))
                                     for n in (1, *CALIBRATION_SIZES)}, n_ctx)


def replay_turn(prompt: list[int], out: list[int], costs, ctl: Controller,
                drafter: LookupDrafter, timer: LiveTimer | None = None) -> tuple[float, float, int, int]:
    """(plain seconds, replayed seconds, cycles, accepted) for one recorded turn.

    Without a timer each cycle is charged (and decided on) `costs`; with one, the controller
    decides on the live estimator that the timer feeds, and each call is charged timer.seconds."""
    stream = Stream(list(prompt) + [out[0]], len(prompt))
    k, plain_s, sim_s, cycles, accepted = 1, 0.0, 0.0, 0, 0
    ctl.budget.start()        # a turn is a request: its own loss budget (SwiftEngine.run)
    ctl.budget.tokens += 1    # the pending token, emitted first
    while k < len(out):
        n_ctx = stream.n_past
        t1 = timer.seconds(1, n_ctx) if timer else costs.plain_seconds(n_ctx)
        plan = ctl.plan(stream, len(out) - k - 1)
        if plan.offer is None:
            emitted, secs = [out[k]], t1
            if timer:
                timer.costs.observe_plain(n_ctx, timer.sample(1, n_ctx))
        else:
            draft = drafter.propose(plan.offer, stream, plan.d)
            n_acc = 0
            while n_acc < len(draft.tokens) and draft.tokens[n_acc] == out[k + n_acc]:
                n_acc += 1
            emitted = out[k:k + n_acc + 1]
            n = len(draft.tokens) + 1
            if timer:
                secs, seen = timer.seconds(n, n_ctx), timer.sample(n, n_ctx)
                timer.costs.observe_verify(n_ctx, n, seen)
            else:
                secs = seen = costs.v_table(n_ctx)[n] * t1
            drafter.observe(draft, n_acc)
            ctl.observe(LOOKUP, len(draft.tokens), len(emitted), seen, n_ctx)
            cycles, accepted = cycles + 1, accepted + n_acc
        stream.n_past += len(emitted)
        stream.tokens.extend(emitted)
        ctl.generated += len(emitted)
        ctl.budget.tokens += len(emitted)
        plain_s += len(emitted) * t1
        sim_s += secs
        k += len(emitted)
    return plain_s, sim_s, cycles, accepted


def replay(run: dict, arm: str = "baseline", margin: float | None = None, live: float | None = None,
           costs_from: dict | None = None, seed: int = 0, controller: type = Controller) -> dict:
    """The policy replayed on a run's recorded outputs (see the module docstring). `controller`: the
    Controller class that plans (benchmarks/oracle_parts.py hands it the recorded future)."""
    measured = costs_from or run["verify_costs"]
    timer = LiveTimer(CostTable(measured), Costs(), live, seed) if live is not None else None
    costs = timer.costs if timer else RunCosts(measured)
    by_cat: dict[str, list[float]] = {}
    plain_total = sim_total = 0.0
    cycles = accepted = 0
    column = {str(q["question_id"]): q["column"] for q in run["questions"]}
    # one drafter and controller for the whole run, as in a benchmark worker (a long-lived model)
    cfg = SpecConfig(mode="auto", spec_type="ngram")
    if margin is not None:
        cfg.margin = margin
    drafter = LookupDrafter(costs)
    ctl = controller(cfg, costs, {LOOKUP: drafter})
    for qid, reps in run["raw"][arm].items():
        cat = column[qid]
        turns = reps[0]
        p_s = s_s = 0.0
        for t in turns:
            if timer and not timer.costs.known:
                timer.calibrate(len(t["prompt"]))
            t_plain, t_sim, n_cycles, n_acc = replay_turn(t["prompt"], t["tokens"], costs, ctl, drafter, timer)
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
    ap.add_argument("--live", type=float, default=None, metavar="SIGMA",
                    help="decide on the live cost estimator, fed timings with this lognormal noise")
    ap.add_argument("--seeds", type=int, default=3, help="noise seeds averaged with --live")
    ap.add_argument("--costs", type=Path, default=None, help="a JSON whose verify_costs replace the run's")
    args = ap.parse_args()
    costs_from = json.loads(args.costs.read_text())["verify_costs"] if args.costs else None
    for path in args.runs:
        run = json.loads(path.read_text())
        seeds = range(args.seeds) if args.live is not None else [0]
        rs = [replay(run, margin=args.margin, live=args.live, costs_from=costs_from, seed=s) for s in seeds]
        r = rs[0]
        overall = [x["overall"] for x in rs]
        oracle = run["table"].get("oracle", {}).get("speedup", {})
        print(f"{path.name}: replayed {np.mean(overall):.3f}x overall"
              + (f" (seeds {min(overall):.3f}-{max(overall):.3f})" if len(rs) > 1 else "")
              + f", {r['cycles']} cycles, {r['mean_accepted']:.2f} tokens per cycle")
        for c in r["by_category"]:
            s = np.mean([x["by_category"][c] for x in rs])
            o = oracle.get(c)
            print(f"  {c:32s} {s:.3f}x" + (f"  (oracle {o:.3f}x)" if o and costs_from is None else ""))


if __name__ == "__main__":
    main()
