#!/usr/bin/env python3
"""Which part of the oracle's knowledge auto's prompt lookup lacks: the policy replayed with one
decision handed to an oracle that knows what the model generates next.

policy_sim.py replays the real LookupDrafter and Controller on a Spec-Bench run's recorded outputs;
here the Controller's plan is corrected, per cycle, with the recorded future (greedy verification
accepts a draft exactly as far as it agrees with it):

  policy    the policy alone (policy_sim's replay)
  length    the policy decides where to draft and from which earlier occurrence; the oracle sets the
            length: the best (d + 1) / v(d + 1) over the run of that continuation that will be accepted
  decide    the oracle decides whether to draft (plain where nothing of the policy's continuation will
            be accepted profitably); the policy's length where it drafts, the oracle's where it declined
  both      the oracle's decision and length, on the policy's occurrence
  oracle    benchmarks/oracle.py's bound (also chooses the occurrence, among every earlier one)

Each is printed as a share of the oracle per category. What `length` and `decide` recover is what a
causal policy cannot know from the text before the draft (where a copy ends, whether the model goes
elsewhere); the rest of the gap to `oracle` is the occurrence.

    .venv/bin/python -m benchmarks.oracle_parts benchmarks/results/specbench-*-2026-12-05k.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.oracle import oracle_bound, oracle_length
from benchmarks.policy_sim import replay
from swift_gguf.controller import Controller, Plan
from swift_gguf.drafters import LOOKUP

MODES = ("policy", "length", "decide", "both")


def controller_with_future(run: dict, mode: str, arm: str = "baseline") -> type:
    """A Controller class whose plans `mode` corrects with the recorded outputs, turn by turn in
    policy_sim.replay's order (a new stream object: the next recorded turn)."""
    turns = [(t["prompt"], t["tokens"]) for reps in run["raw"][arm].values() for t in reps[0]]

    class FutureController(Controller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._turn, self._stream = -1, None

        def plan(self, stream, d_cap: int) -> Plan:
            p = super().plan(stream, d_cap)
            if mode == "policy":
                return p
            if stream is not self._stream:
                self._turn, self._stream = self._turn + 1, stream
            prompt, out = turns[self._turn]
            offer = p.offer or self._offer_again(stream)
            if offer is None:
                return p
            k = len(stream.tokens) - len(prompt)   # out[k] is the next token
            run_ = 0
            while run_ < min(len(offer.tokens), d_cap) and offer.tokens[run_] == out[k + run_]:
                run_ += 1
            best_d = oracle_length(run_, self.costs.v_table(stream.n_past).__getitem__)
            if mode == "length":
                return p if p.offer is None else Plan(offer, max(best_d, 1))
            if mode == "decide":
                if best_d == 0:
                    return Plan(None)
                return p if p.offer is not None else Plan(offer, best_d)
            return Plan(offer, best_d) if best_d else Plan(None)   # both

        def _offer_again(self, stream):
            """The lookup offer plan() declined, asked again; its continuation is the list the drafter
            shadows (so that drafting it ends the shadow, as a draft of the first offer would)."""
            drafter = self.drafters[LOOKUP]
            offer = drafter.offer(stream, stream.n_past)
            if offer is not None and drafter._shadow is not None and drafter._shadow[1] == offer.tokens:
                offer.tokens = drafter._shadow[1]
            return offer

    return FutureController


def shares(run: dict) -> dict[str, dict[str, float]]:
    """Per mode: the replay's speedup over plain decoding per category and overall, as a share of the oracle's."""
    o = oracle_bound(run)
    out = {}
    for mode in MODES:
        r = replay(run, controller=controller_with_future(run, mode))
        row = {c: s / o["speedup"][c] for c, s in r["by_category"].items()}
        row["overall"] = r["overall"] / o["speedup_overall"]
        out[mode] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="specbench.py JSON results")
    args = ap.parse_args()
    for path in args.runs:
        rows = shares(json.loads(path.read_text()))
        cats = list(rows["policy"])
        print(f"{path.name}: share of the oracle")
        print("  " + f"{'':8s}" + "".join(f"{c[:12]:>14s}" for c in cats))
        for mode, row in rows.items():
            print("  " + f"{mode:8s}" + "".join(f"{row[c]:14.3f}" for c in cats))


if __name__ == "__main__":
    main()
