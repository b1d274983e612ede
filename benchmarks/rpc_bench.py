#!/usr/bin/env python3
"""Plain vs auto over llama.cpp's RPC backend on loopback, with the per-call overhead RPC adds.

    .venv/bin/python -m benchmarks.rpc_bench                  # SmolLM2 and the K=3 fixture
    .venv/bin/python -m benchmarks.rpc_bench --only k3 --limit 2

Two `swift-gguf rpc-server` workers (127.0.0.1, free ports) hold the last two thirds of the
layers, half each (-ngl 2L/3 --tensor-split 1,1); the first third and the embeddings stay in this
process. llama.cpp offloads the output layer first, so it sits on worker 2 and every output row's
logits (n_vocab floats) cross the connection. Per model, in one process:

1. Call costs, local model vs the split model, interleaved (A B A B, 7 rounds, medians):
   one plain step, verification of n tokens, a draft step with the skip set, and a whole cycle
   (d drafts + one verification of d+1, the pattern speculation really runs: the workers' graphs
   alternate). The differences are RPC's per-call overhead on loopback; the bytes per call come
   from the kernel's TCP counters (`ss -ti`) of the two client connections.
2. `swift_gguf.bench.run_bench` on the split model: plain vs auto, 3 interleaved pairs per prompt.
   SmolLM2: auto from scratch (its search runs during the benchmark). K=3 fixture: auto with what
   its profile holds (every inserted block, matchness 1.0, search done: the fixture-k3-auto-profile
   scenario), so that search time does not mix into the RPC comparison; then `swift` (always
   speculating) with the same set.
3. A model on paper (performance-model.md's S with these measured costs) of what 1 GbE and
   10 GbE round trips and bandwidth would do to S.

Writes benchmarks/results/rpc-<model>.json and benchmarks/results/rpc-section.md.
The CPU is shared: only same-run ratios are meaningful, not absolute times. One thread in the
client and in each worker: with two, three processes on 2 busy cores left ggml's spinning thread
barriers waiting for descheduled threads, and a one-token step took 0.5-6 s instead of ~15 ms.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.run import model_path
from swift_gguf.redundancy import inserted_layers
from swift_gguf.costmodel import interpolate
from swift_gguf.timing import CycleReplay, interleaved, time_batch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 1          # client and each worker (see the module docstring)
ROUNDS = 15          # interleaved rounds of the call-cost measurement (the fastest of each counts)
CONTEXT = 96         # tokens in the KV cache while call costs are measured
SIZES = (2, 3, 5, 9, 17)
CYCLE_D = 4          # drafts per cycle in the cycle measurement
NETWORKS = {         # (round trip s, bytes/s): typical switched LANs, kernel TCP, small messages
    "10 GbE": (50e-6, 1.25e9),
    "1 GbE": (200e-6, 1.25e8),
}
# name: (benchmarks.run model, prompts, modes). K=3 also runs `swift` (always speculating): auto's
# first decision rests on one calibration, which load spikes on a shared CPU can tip to "plain".
MODELS = {"smollm2": ("smollm2", 6, ("auto",)), "k3": ("k3", 6, ("auto", "swift"))}


def tcp_bytes(ports: list[int]) -> int:
    """Bytes sent plus received on this machine's connections to the workers (client side)."""
    total = 0
    for port in ports:
        out = subprocess.run(["ss", "-tinH", "dst", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout
        total += sum(int(x) for x in re.findall(r"bytes_(?:sent|received):(\d+)", out))
    return total


class Caller:
    """Timed decode calls on one model at a fixed context (swift_gguf.timing: positions removed after each)."""

    def __init__(self, llm, prompt_tokens: list[int]):
        self.llm, self.rt = llm, llm.rt
        self.rt.remove(-1, 0, -1)
        self.rt.decode(prompt_tokens, 0)
        self.n_past = len(prompt_tokens)
        self.tok = prompt_tokens[-1]
        self._cycles: dict[tuple[int, bytes], CycleReplay] = {}

    def call(self, n: int, mask: bytes = b"") -> float:
        """Decode seconds of n tokens: a batch is timed as speculation runs it, a verification."""
        with self.rt.skipping(mask):
            return time_batch(self.rt, [self.tok] * n, self.n_past, verify=n > 1)

    def cycle(self, d: int, mask: bytes) -> float:
        """d one-token draft steps with the mask, then a verification of d + 1 tokens (wall seconds)."""
        replay = self._cycles.get((d, mask))
        if replay is None:
            replay = self._cycles[(d, mask)] = CycleReplay(self.rt, self.n_past, self.tok, mask, d)
        return replay.cycle()


def call_costs(local, remote, prompt_tokens, mask: bytes, ports: list[int]) -> dict:
    """Per-call times, local model vs the split model (interleaved rounds, the fastest of each:
    the CPU is shared and interference only adds), and the bytes each kind of call moves."""
    callers = {"local": Caller(local, prompt_tokens), "rpc": Caller(remote, prompt_tokens)}
    kinds = {"plain": (1, b""), **{f"v{n}": (n, b"") for n in SIZES}, "draft": (1, mask)}
    calls = {}
    for side, c in callers.items():   # every graph built once in the untimed first round
        for k, (n, m) in kinds.items():
            calls[(side, k)] = lambda c=c, n=n, m=m: c.call(n, m)
        calls[(side, "cycle")] = lambda c=c: c.cycle(CYCLE_D, mask)
    times = interleaved(calls, ROUNDS)
    best = {side: {k: min(times[(side, k)]) for k in [*kinds, "cycle"]} for side in callers}
    # bytes on the wire (kernel counters, exact): a call repeated (each worker replays its last
    # graph) and whole cycles (draft and verification graphs alternate, so each is sent again)
    rpc = callers["rpc"]

    def wire(fn, reps: int = 5) -> int:
        fn()   # the workers now hold this call's graph (a repeated call replays it)
        b0 = tcp_bytes(ports)
        for _ in range(reps):
            fn()
        return round((tcp_bytes(ports) - b0) / reps)

    repeated = {n: wire(lambda n=n: rpc.call(n)) for n in (1, 2, 5, 9, 17)}
    cycles = {d: wire(lambda d=d: rpc.cycle(d, mask)) for d in (1, 2, 4, 8, 16)}
    for c in callers.values():
        c.rt.remove(-1, 0, -1)
    return {
        "seconds": {side: {k: round(v, 6) for k, v in m.items()} for side, m in best.items()},
        "overhead_seconds": {k: round(best["rpc"][k] - best["local"][k], 6) for k in best["local"]},
        "overhead_ratio": {k: round(best["rpc"][k] / best["local"][k], 4) for k in best["local"]},
        "bytes_repeated_call": repeated,   # n tokens -> bytes per call
        "bytes_cycle": cycles,             # d drafts + verification of d + 1 -> bytes per cycle
        "cycle_d": CYCLE_D, "rounds": ROUNDS,
    }


def _interp(points: dict, x: float) -> float:
    """costmodel.interpolate over a measured dict read back from JSON (string keys)."""
    return interpolate({float(k): float(v) for k, v in points.items()}, x)


def paper_model(costs: dict, bench: dict, round_trips: int) -> dict:
    """S on a real network: this run's loopback times plus the wire's round trips and bytes.

    From the benchmark itself (all prompts and pairs): t = plain seconds per token, E = mean
    accepted + 1, d = drafted per cycle, and a cycle's loopback time E / S_bound * t (S_bound:
    the run's own bound, performance-model.md's S from its measured c, v and acceptance).
    Every call waits `round_trips` round trips (the client sends activations to each worker in
    turn and waits for its output) and moves the bytes measured above:
        plain_net = t + k*RTT + B_plain/BW
        cycle_net = E/S_bound*t + (d + 1)*k*RTT + B_cycle(d)/BW
        S_net     = E * plain_net / cycle_net
    "drafts local": the draft steps never leave this machine (a skip set covering every remote
    layer): a cycle pays one call's round trips and a repeated verification's bytes, B_rep(d + 1).
    """
    rows, s = bench["rows"], bench["summary"]
    cycles = sum(r["cycles"] for r in rows)
    if not cycles or not s["bound"]:
        return {"note": "auto decoded plainly in this run: no speculative cycle to model"}
    t = sum(r["plain_seconds"] for r in rows) / sum(r["plain_tokens"] for r in rows)
    d = sum(r["drafted"] for r in rows) / cycles
    E = s["mean_accepted"] + 1.0
    cycle_lo = E / s["bound"] * t
    b_plain = _at(costs["bytes_repeated_call"], 1)
    b_cycle = _interp(costs["bytes_cycle"], d)
    b_verify = _interp(costs["bytes_repeated_call"], d + 1)
    k = round_trips
    out = {"t_plain_ms": round(t * 1e3, 3), "E": round(E, 3), "d": round(d, 3), "round_trips_per_call": k,
           "bytes_plain": b_plain, "bytes_cycle": round(b_cycle), "bytes_verify_only": round(b_verify),
           "S_loopback": s["bound"]}
    for name, (rtt, bw) in NETWORKS.items():
        plain_net = t + k * rtt + b_plain / bw
        cycle_net = cycle_lo + (d + 1) * k * rtt + b_cycle / bw
        local_drafts = cycle_lo + k * rtt + b_verify / bw
        out[name] = {"rtt_us": rtt * 1e6, "bytes_per_s": bw, "plain_ms": round(plain_net * 1e3, 3),
                     "cycle_ms": round(cycle_net * 1e3, 3), "S": round(E * plain_net / cycle_net, 3),
                     "S_drafts_local": round(E * plain_net / local_drafts, 3)}
    return out


def run_model(name: str, limit: int | None, max_tokens: int, workers) -> dict[str, dict]:
    """Results per scenario (rpc-<name>[-<mode>]) of one model: call costs once, then each mode."""
    from swift_gguf.api import SwiftLlama
    from swift_gguf.bench import run_bench
    from swift_gguf.optimize import load_prompts
    from swift_gguf.skipset import SkipSet
    model, n_prompts, modes = MODELS[name]
    path = str(model_path(model))
    # weights in anonymous memory on both sides (workers receive theirs over the connection; an
    # mmap'd local copy would differ in page size and TLB misses, not in what RPC costs)
    common = dict(n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, profile=None, use_mmap=False)
    local = SwiftLlama(path, spec="off", **common)
    n = local.rt.n_layer
    ngl = 2 * n // 3
    remote = SwiftLlama(path, spec="auto", rpc_servers=",".join(w.endpoint for w in workers), n_gpu_layers=ngl,
                        tensor_split=[1, 1], **common)
    out = {}
    try:
        if name == "k3":
            # what the fixture's search finds and its profile holds (fixture-k3-auto-profile):
            # every inserted block, matchness 1.0, search done; the costs are measured here, over RPC
            inner = [il for il in inserted_layers(n // 4, 3) if 0 < il < n - 1]
            skip = SkipSet.from_lists(n, attention=inner, ffn=inner)
            state = remote.engine.search.state
            state.best, state.best_matchness, state.done = skip, 1.0, True
        else:
            # for the call costs only: a quarter of the inner sub-layers (auto searches its own set)
            skip = SkipSet.from_indices(n, range(0, 2 * (n - 2), 4))
        prompts = load_prompts(None, default="bench")[: limit or n_prompts]
        ctx = remote.tokenize(("The history of the harbour town is long. " * 12).encode())[:CONTEXT]
        costs = call_costs(local, remote, ctx, skip.mask(), [w.port for w in workers])
        local.close()
        local = None
        for mode in modes:
            scenario = f"rpc-{name}" + ("" if mode == "auto" else f"-{mode}")
            print(f"== {scenario}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            bench = run_bench(remote, prompts, max_tokens=max_tokens, pairs=3, peer=False, mode=mode, progress=True)
            bench["scenario"] = {
                "name": scenario, "model": model, "mode": mode,
                "skip": "profile: every inserted block" if name == "k3" else "searched from scratch",
                "placement": f"layers 0-{n - ngl} local; {n - ngl + 1}-{n - ngl // 2} on worker 1; "
                             f"{n - ngl // 2 + 1}-{n - 1} and the output on worker 2 (127.0.0.1)",
                "threads": THREADS, "wall_seconds": round(time.perf_counter() - t0, 1),
                "command": f"python -m benchmarks.rpc_bench --only {name}"}
            bench["call_costs"] = costs
            bench["paper_model"] = paper_model(costs, bench, round_trips=len(workers))
            out[scenario] = bench
        return out
    finally:
        remote.close()
        if local is not None:
            local.close()


def _at(d: dict, k: int):
    """d[k], also for a dict read back from JSON (string keys)."""
    return d[k] if k in d else d[str(k)]


def section(results: dict[str, dict]) -> str:
    """The BENCHMARKS.md section (markdown)."""
    lines = ["## Over llama.cpp's RPC backend (loopback, two workers)", "",
             "`benchmarks/rpc_bench.py`: two `swift-gguf rpc-server` workers on 127.0.0.1 hold the last two "
             "thirds of the layers, half each (`-ngl 2L/3 --tensor-split 1,1`); this process keeps the first "
             "third. llama.cpp offloads the output layer first, so it is on worker 2: every output row's logits "
             f"(n_vocab floats, 196 KB for SmolLM2) come back over the connection. {THREADS} thread in the "
             "client and in each worker: the three processes share this machine's 2 cores, nothing else ran. "
             "Read the same-run ratios, not the absolute times.",
             "", "| model, mode | plain t/s | mode t/s | speedup (median of 3 pairs x prompts) | min-max | acceptance | "
             "mean accepted | bound S | efficiency | identical |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["summary"]
        pt = statistics.median(x["plain_tps"] for x in r["rows"])
        st = statistics.median(x["swift_tps"] for x in r["rows"])
        lines.append(f"| {r['scenario']['model']}, {r['scenario']['mode']} ({r['scenario']['skip']}) | {pt:.1f} | {st:.1f} | "
                     f"{s['speedup_median']:.3f}x | {s['speedup_min']:.2f}-{s['speedup_max']:.2f} | "
                     f"{s['acceptance_rate']:.2f} | {s['mean_accepted']:.2f} | {s['bound'] or '-'} | "
                     f"{s['efficiency'] or '-'} | {'yes' if s['identical_outputs'] else 'NO'} |")
    lines += ["", "Per-call cost, local model vs the same model split over RPC (same run, interleaved, fastest "
              f"of {ROUNDS} rounds, context {CONTEXT} tokens; bytes: the kernel's TCP counters of the two "
              "connections, both directions):", "",
              "| model | plain step local / RPC (ms) | RPC overhead, plain step | v(9) local / RPC (ms) | "
              f"cycle d={CYCLE_D} local / RPC (ms) | bytes: plain step | 9-token verification | cycle d={CYCLE_D} |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r["scenario"]["mode"] != "auto":   # the same model's costs: one row
            continue
        c = r["call_costs"]
        sl, sr = c["seconds"]["local"], c["seconds"]["rpc"]
        lines.append(f"| {r['scenario']['model']} | {sl['plain'] * 1e3:.1f} / {sr['plain'] * 1e3:.1f} | "
                     f"{c['overhead_seconds']['plain'] * 1e3:+.1f} ms ({c['overhead_ratio']['plain']:.2f}x) | "
                     f"{sl['v9'] * 1e3:.0f} / {sr['v9'] * 1e3:.0f} | {sl['cycle'] * 1e3:.0f} / {sr['cycle'] * 1e3:.0f} | "
                     f"{_at(c['bytes_repeated_call'], 1):,} | {_at(c['bytes_repeated_call'], 9):,} | "
                     f"{_at(c['bytes_cycle'], CYCLE_D):,} |")
    lines += ["", "On paper, over a real network (`paper_model` in the JSON; formula in `benchmarks/rpc_bench.py`): "
              "this run's loopback times plus, per call, one round trip per worker and the bytes above at the "
              "link's rate; E = mean accepted + 1 and d = drafted per cycle from this run. \"drafts local\": if "
              "the draft steps never left this machine (a skip set covering every remote layer; the search does "
              "not look for one).", "",
              "| model, mode | t plain (ms) | E | d | S loopback (run's bound) | S 10 GbE (50 us, 1.25 GB/s) | "
              "S 1 GbE (200 us, 125 MB/s) | S 1 GbE, drafts local |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["paper_model"]
        label = f"{r['scenario']['model']}, {r['scenario']['mode']}"
        if "E" not in m:
            lines.append(f"| {label} | | | | {m['note']} | | | |")
            continue
        lines.append(f"| {label} | {m['t_plain_ms']:.1f} | {m['E']} | {m['d']} | {m['S_loopback']} | "
                     f"{m['10 GbE']['S']} | {m['1 GbE']['S']} | {m['1 GbE']['S_drafts_local']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=list(MODELS))
    ap.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--section-only", action="store_true",
                    help="only write rpc-section.md again from the rpc-*.json files in --out")
    opts = ap.parse_args(argv)
    if opts.section_only:
        results = {p.stem: json.loads(p.read_text()) for p in sorted(opts.out.glob("rpc-*.json"))}
        (opts.out / "rpc-section.md").write_text(section(results))
        return 0
    from swift_gguf.rpc import LocalWorker
    opts.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with LocalWorker(threads=THREADS) as w1, LocalWorker(threads=THREADS) as w2:
        for name in opts.only or list(MODELS):
            for scenario, result in run_model(name, opts.limit, opts.max_tokens, [w1, w2]).items():
                results[scenario] = result
                (opts.out / f"{scenario}.json").write_text(json.dumps(result, indent=1))
    (opts.out / "rpc-section.md").write_text(section(results))
    print(section(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
