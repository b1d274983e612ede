"""Switching cost of the draft/verify alternation, with and without the graph cache (patch 0002).

    .venv/bin/python -m benchmarks.switching                 # SmolLM2, 1 thread, 7 rounds of 20 calls
    THREADS=2 ROUNDS=9 .venv/bin/python -m benchmarks.switching

The one switching measurement of the project (benchmarks/gpu/gpu_bench.py runs it on a GPU): a
cycle of 4 one-token drafts under a skip mask + their KV removed + one 5-token verification +
its KV removed, always at the same positions, made as SwiftEngine._cycle makes the calls
(swift_gguf.timing.CycleReplay: greedy drafts, the host work of each call included), against the
sum of its calls in steady state (each call shape repeated on its own, so its graph is reused):
overhead = cycle / (4 * draft + verify) - 1. Every round runs a block of `block` calls of each
shape (plain step, draft step, verification, cycle) on each context (graph cache on, off),
interleaved and in alternating order (timing.interleaved); a sample is a block's mean, and the
tables report medians over rounds.
"""
from __future__ import annotations

import os
import statistics
import time

from swift_gguf.skipset import SkipSet
from swift_gguf.timing import CycleReplay, interleaved

DRAFTS_PER_CYCLE = 4
PROMPT = ("The quick brown fox jumps over the lazy dog. Then it ran into the forest, where the old "
          "owl was waiting for the night to fall and the stars to come out over the hills.")
SHAPES = ("plain", "draft", "verify", "cycle")


def replay(llm, mask: bytes) -> CycleReplay:
    """The prompt in the KV cache, and the cycle after it (the model's own next token drafted from)."""
    rt = llm.rt
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    rt.remove(-1, 0, -1)
    rt.decode(prompt, 0)
    last = int(rt.logits(-1).argmax())
    return CycleReplay(rt, len(prompt), last, mask, DRAFTS_PER_CYCLE)


def _ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1e3, 4), "min_ms": round(xs[0] * 1e3, 4),
            "p90_ms": round(xs[int(0.9 * (len(xs) - 1))] * 1e3, 4), "n": len(xs)}


def measure_switching(llms: dict, mask: bytes, rounds: int, block: int = 20,
                      until: float | None = None) -> dict[str, dict]:
    """Per context (label -> SwiftLlama): plain, draft, verify and cycle times, graphs built and
    reused per call, the ideal cycle (the sum of its steady-state calls) and the overhead over it.
    until (time.time()): no new round after it once two rounds were timed."""
    from swift_gguf import native
    replays = {label: replay(llm, mask) for label, llm in llms.items()}
    graphs = {(label, shape): [0, 0, 0] for label in llms for shape in SHAPES}   # built, reused, calls

    def block_of(label: str, shape: str):
        r = replays[label]
        call = {"plain": r.step, "draft": lambda: r.step(masked=True), "verify": r.verify, "cycle": r.cycle}[shape]

        def run() -> float:
            call()   # the block's first call may build its graph: not timed
            b0 = native.graph_stats(r.rt.ctx)
            secs = sum(call() for _ in range(block)) / block
            b1 = native.graph_stats(r.rt.ctx)
            g = graphs[(label, shape)]
            g[0], g[1], g[2] = g[0] + b1[0] - b0[0], g[1] + b1[1] - b0[1], g[2] + block
            return secs
        return run

    samples = interleaved({(label, shape): block_of(label, shape) for label in llms for shape in SHAPES},
                          rounds, alternate=True, until=until)
    out = {}
    for label, r in replays.items():
        res = out[label] = {"n_layer": r.rt.n_layer, "n_past": r.n_past, "rounds": len(samples[(label, "plain")]),
                            "block": block, "drafts_per_cycle": DRAFTS_PER_CYCLE}
        for shape in SHAPES:
            built, reused, calls = graphs[(label, shape)]
            res[shape] = {**_ms(samples[(label, shape)]), "graphs_built_per_call": round(built / calls, 3),
                          "graphs_reused_per_call": round(reused / calls, 3)}
        ideal = DRAFTS_PER_CYCLE * res["draft"]["median_ms"] + res["verify"]["median_ms"]
        res["ideal_cycle_ms"] = round(ideal, 4)
        res["overhead"] = round(res["cycle"]["median_ms"] / ideal - 1.0, 4)
        res["draft_over_plain"] = round(res["draft"]["median_ms"] / res["plain"]["median_ms"], 4)
        res["verify_over_plain"] = round(res["verify"]["median_ms"] / res["plain"]["median_ms"], 4)
        r.rt.remove(-1, 0, -1)
    return out


def line(label: str, res: dict) -> str:
    return (f"  {label:15s} plain {res['plain']['median_ms']:7.3f}  draft {res['draft']['median_ms']:7.3f}  "
            f"verify({DRAFTS_PER_CYCLE + 1}) {res['verify']['median_ms']:7.3f}  cycle {res['cycle']['median_ms']:7.3f} "
            f"(ideal {res['ideal_cycle_ms']:.3f}) -> overhead {res['overhead']:+.1%}; "
            f"graphs built per cycle {res['cycle']['graphs_built_per_call']}")


def main() -> None:
    from swift_gguf.api import SwiftLlama
    from swift_gguf.models import resolve_model
    from swift_gguf.native import context_env
    threads = int(os.environ.get("THREADS", "1"))
    rounds = int(os.environ.get("ROUNDS", "7"))
    block = int(os.environ.get("BLOCK", "20"))
    model = str(resolve_model("smollm2-135m", progress=False))
    llms = {}
    for label, cache in (("graph cache", None), ("no graph cache", "0")):
        with context_env(LLAMA_SWIFT_GRAPH_CACHE=cache):
            llms[label] = SwiftLlama(model, n_ctx=512, n_threads=threads, n_threads_batch=threads, profile=None,
                                     spec="off")
    try:
        n_layer = next(iter(llms.values())).rt.n_layer
        mask = SkipSet.from_indices(n_layer, range(1, n_layer - 1, 2)).mask()
        t0 = time.perf_counter()
        res = measure_switching(llms, mask, rounds, block)
        print(f"threads={threads}, {rounds} rounds x {block} calls per shape (medians, ms), "
              f"{time.perf_counter() - t0:.0f} s")
        for label, r in res.items():
            print(line(label, r))
    finally:
        for llm in llms.values():
            llm.close()


if __name__ == "__main__":
    main()
