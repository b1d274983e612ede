#!/usr/bin/env python3
"""Plain vs auto over llama.cpp's RPC backend on loopback, with the per-call overhead RPC adds.

    .venv/bin/python benchmarks/rpc_bench.py                  # SmolLM2 and the K=3 fixture
    .venv/bin/python benchmarks/rpc_bench.py --only k3 --limit 2

Two `swift-gguf rpc-server` workers (127.0.0.1, free ports) hold the last two thirds of the
layers, half each (-ngl 2L/3 --tensor-split 1,1); the first third, the embeddings and the output
stay in this process. Per model, in one process:

1. Call costs, local model vs the split model, interleaved (A B A B, 7 rounds, medians):
   one plain step, verification of n tokens, a draft step with the skip set, and a whole cycle
   (d drafts + one verification of d+1, the pattern speculation really runs: the workers' graphs
   alternate). The differences are RPC's per-call overhead on loopback; the bytes per call come
   from the kernel's TCP counters (`ss -ti`) of the two client connections.
2. `swift_gguf.bench.run_bench` on the split model: plain vs auto, 3 interleaved pairs per prompt.
   SmolLM2: auto from scratch (its search runs during the benchmark). K=3 fixture: auto with the
   skip set its search finds (every inserted block, as the fixture-k3-auto-profile scenario),
   given as a fixed set so that search time does not mix into the RPC comparison.
3. A model on paper (performance-model.md's S with these measured costs) of what 1 GbE and
   10 GbE round trips and bandwidth would do to S.

Writes benchmarks/results/rpc-<model>.json and benchmarks/results/rpc-section.md.
The CPU is shared: only same-run ratios are meaningful, not absolute times.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.redundancy_fixture import inserted_layers  # noqa: E402
from benchmarks.run import model_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2          # client and each worker; the pipeline runs one stage at a time
ROUNDS = 7           # interleaved rounds of the call-cost measurement
CONTEXT = 96         # tokens in the KV cache while call costs are measured
SIZES = (2, 3, 5, 9, 17)
CYCLE_D = 4          # drafts per cycle in the cycle measurement
NETWORKS = {         # (round trip s, bytes/s): typical switched LANs, kernel TCP, small messages
    "10 GbE": (50e-6, 1.25e9),
    "1 GbE": (200e-6, 1.25e8),
}
MODELS = {"smollm2": ("smollm2", 6), "k3": ("k3", 6)}   # name: (benchmarks.run model, prompts)


def tcp_bytes(ports: list[int]) -> int:
    """Bytes sent plus received on this machine's connections to the workers (client side)."""
    total = 0
    for port in ports:
        out = subprocess.run(["ss", "-tinH", "dst", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout
        total += sum(int(x) for x in re.findall(r"bytes_(?:sent|received):(\d+)", out))
    return total


class Caller:
    """Timed decode calls on one model at a fixed context (scratch positions removed after each)."""

    def __init__(self, llm, prompt_tokens: list[int]):
        self.llm, self.rt = llm, llm.rt
        self.rt.remove(-1, 0, -1)
        self.rt.decode(prompt_tokens, 0)
        self.n_past = len(prompt_tokens)
        self.tok = prompt_tokens[-1]

    def call(self, n: int, mask: bytes = b"") -> float:
        with self.rt.skipping(mask):
            secs = self.rt.decode([self.tok] * n, self.n_past, all_logits=n > 1)
        self.rt.remove(0, self.n_past, -1)
        return secs

    def cycle(self, d: int, mask: bytes) -> float:
        """d one-token draft steps with the mask, then a verification of d + 1 tokens."""
        t0 = time.perf_counter()
        with self.rt.skipping(mask):
            for i in range(d):
                self.rt.decode([self.tok], self.n_past + i)
        self.rt.remove(0, self.n_past, -1)
        self.rt.verify([self.tok] * (d + 1), self.n_past)
        self.rt.remove(0, self.n_past, -1)
        return time.perf_counter() - t0


def call_costs(local, remote, prompt_tokens, mask: bytes, ports: list[int]) -> dict:
    callers = {"local": Caller(local, prompt_tokens), "rpc": Caller(remote, prompt_tokens)}
    kinds = {"plain": (1, b""), **{f"v{n}": (n, b"") for n in SIZES}, "draft": (1, mask)}
    times = {side: {k: [] for k in [*kinds, "cycle"]} for side in callers}
    for c in callers.values():   # build every graph once, untimed
        for n, m in kinds.values():
            c.call(n, m)
        c.cycle(CYCLE_D, mask)
    for _ in range(ROUNDS):
        for side, c in callers.items():
            for k, (n, m) in kinds.items():
                times[side][k].append(c.call(n, m))
            times[side]["cycle"].append(c.cycle(CYCLE_D, mask))
    med = {side: {k: statistics.median(v) for k, v in t.items()} for side, t in times.items()}
    # bytes on the wire per call: repeated plain steps (the workers replay their last graph) and
    # whole cycles (draft and verification graphs alternate, so each is sent again)
    rpc = callers["rpc"]
    b0 = tcp_bytes(ports)
    for _ in range(20):
        rpc.call(1)
    b1 = tcp_bytes(ports)
    for _ in range(10):
        rpc.cycle(CYCLE_D, mask)
    b2 = tcp_bytes(ports)
    rpc.rt.remove(-1, 0, -1)
    callers["local"].rt.remove(-1, 0, -1)
    t = med["local"]["plain"]
    return {
        "seconds": {side: {k: round(v, 6) for k, v in m.items()} for side, m in med.items()},
        "local_units": {"c": round(med["local"]["draft"] / t, 4),
                        "v": {n: round(med["local"][f"v{n}"] / t, 4) for n in SIZES}},
        "rpc_units_of_rpc_plain": {"c": round(med["rpc"]["draft"] / med["rpc"]["plain"], 4),
                                   "v": {n: round(med["rpc"][f"v{n}"] / med["rpc"]["plain"], 4) for n in SIZES}},
        "overhead_seconds": {k: round(med["rpc"][k] - med["local"][k], 6) for k in med["local"]},
        "overhead_ratio": {k: round(med["rpc"][k] / med["local"][k], 4) for k in med["local"]},
        "bytes_per_plain_step": round((b1 - b0) / 20),
        "bytes_per_cycle": round((b2 - b1) / 10),
        "cycle_d": CYCLE_D,
    }


def paper_model(costs: dict, bench: dict, sync_round_trips: int) -> dict:
    """S on a real network, from this run's loopback costs plus the wire's round trips and bytes.

    Every call waits `sync_round_trips` round trips (one per worker: the client sends the
    activations, the worker answers with its output) and moves its bytes. Over the network:
        plain step:  plain_rpc + k*RTT + bytes_plain/BW
        cycle of d:  cycle_rpc(d) + (d + 1)*k*RTT + bytes_cycle(d)/BW
    with cycle_rpc(d) = d*draft_rpc + v_rpc(d + 1) + the alternation's extra (measured at d = 4:
    the workers' graphs change, so they are sent again) and bytes_cycle(d) = bytes_cycle(4) +
    (d - 4)*bytes_plain. With E tokens per cycle (this run's mean accepted + 1):
        S = E * plain_net / cycle_net
    "drafts local": the draft steps never leave this machine (a skip set covering every remote
    layer): their round trips and bytes go; their measured time stays (conservative).
    """
    s = bench["summary"]
    cycles = sum(r["cycles"] for r in bench["rows"])
    drafted = sum(r["drafted"] for r in bench["rows"])
    if not cycles:
        return {"note": "auto never speculated in this run: no S to model"}
    d = drafted / cycles
    E = s["mean_accepted"] + 1.0
    sec = costs["seconds"]["rpc"]
    pts = sorted([(1, sec["plain"])] + [(n, sec[f"v{n}"]) for n in SIZES])

    def v_rpc(n: float) -> float:   # seconds, linear between measured sizes
        for (n0, t0), (n1, t1) in zip(pts, pts[1:]):
            if n <= n1:
                return t0 + (t1 - t0) * (n - n0) / (n1 - n0)
        (n0, t0), (n1, t1) = pts[-2], pts[-1]
        return t1 + (t1 - t0) * (n - n1) / (n1 - n0)

    switching = sec["cycle"] - CYCLE_D * sec["draft"] - v_rpc(CYCLE_D + 1)
    cycle_rpc = d * sec["draft"] + v_rpc(d + 1) + switching
    b_plain = costs["bytes_per_plain_step"]
    b_cycle = costs["bytes_per_cycle"] + (d - CYCLE_D) * b_plain
    k = sync_round_trips
    out = {"E": round(E, 3), "d": round(d, 3), "round_trips_per_call": k,
           "switching_seconds_per_cycle": round(switching, 6), "loopback": round(E * sec["plain"] / cycle_rpc, 3)}
    for name, (rtt, bw) in NETWORKS.items():
        plain_net = sec["plain"] + k * rtt + b_plain / bw
        cycle_net = cycle_rpc + (d + 1) * k * rtt + b_cycle / bw
        local_drafts = cycle_rpc + k * rtt + (b_cycle - d * b_plain) / bw
        out[name] = {"rtt_us": rtt * 1e6, "bytes_per_s": bw, "plain_ms": round(plain_net * 1e3, 3),
                     "cycle_ms": round(cycle_net * 1e3, 3), "S": round(E * plain_net / cycle_net, 3),
                     "S_drafts_local": round(E * plain_net / local_drafts, 3)}
    return out


def run_model(name: str, limit: int | None, max_tokens: int, workers) -> dict:
    from swift_gguf.api import SwiftLlama
    from swift_gguf.bench import run_bench
    from swift_gguf.optimize import load_prompts
    from swift_gguf.skipset import SkipSet
    model, n_prompts = MODELS[name]
    path = str(model_path(model))
    common = dict(n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, profile=None)
    local = SwiftLlama(path, spec="off", **common)
    n = local.rt.n_layer
    ngl = 2 * n // 3
    remote = SwiftLlama(path, spec="auto", rpc_servers=",".join(w.endpoint for w in workers), n_gpu_layers=ngl,
                        tensor_split=[1, 1], **common)
    try:
        if name == "k3":
            inner = [il for il in inserted_layers(n // 4, 3) if 0 < il < n - 1]
            skip = SkipSet.from_lists(n, attention=inner, ffn=inner)
            remote.engine.config.skip = skip
        else:
            # for the call costs only: a quarter of the inner sub-layers (auto searches its own set)
            skip = SkipSet.from_indices(n, range(0, 2 * (n - 2), 4))
        prompts = load_prompts(None, default="bench")[: limit or n_prompts]
        ctx = remote.tokenize(("The history of the harbour town is long. " * 12).encode())[:CONTEXT]
        costs = call_costs(local, remote, ctx, skip.mask(), [w.port for w in workers])
        local.close()
        local = None
        t0 = time.perf_counter()
        bench = run_bench(remote, prompts, max_tokens=max_tokens, pairs=3, peer=False, mode="auto", progress=True)
        bench["scenario"] = {"name": f"rpc-{name}", "model": model, "mode": "auto",
                             "skip": "fixed: every inserted block" if name == "k3" else "searched from scratch",
                             "placement": f"layers 0-{n - ngl - 1} + output local; {n - ngl}-{n - ngl // 2 - 1} "
                                          f"on worker 1; {n - ngl // 2}-{n - 1} on worker 2 (127.0.0.1)",
                             "threads": THREADS, "wall_seconds": round(time.perf_counter() - t0, 1),
                             "command": f"benchmarks/rpc_bench.py --only {name}"}
        bench["call_costs"] = costs
        bench["paper_model"] = paper_model(costs, bench, sync_round_trips=len(workers))
        return bench
    finally:
        remote.close()
        if local is not None:
            local.close()


def section(results: dict[str, dict]) -> str:
    """The BENCHMARKS.md section (markdown)."""
    lines = ["## Over llama.cpp's RPC backend (loopback, two workers)", "",
             "`benchmarks/rpc_bench.py`: two `swift-gguf rpc-server` workers on 127.0.0.1 hold the last two "
             "thirds of the layers, half each (`-ngl 2L/3 --tensor-split 1,1`); this process keeps the first "
             f"third and the output. {THREADS} threads in the client and in each worker, same CPU. "
             "The CPU was shared with other jobs while this ran: read the same-run ratios, not the absolute times.",
             "", "| model | plain t/s | auto t/s | speedup (median of 3 pairs x prompts) | min-max | acceptance | "
             "mean accepted | bound S | efficiency | identical |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["summary"]
        pt = statistics.median(x["plain_tps"] for x in r["rows"])
        st = statistics.median(x["swift_tps"] for x in r["rows"])
        lines.append(f"| {r['scenario']['model']} ({r['scenario']['skip']}) | {pt:.1f} | {st:.1f} | "
                     f"{s['speedup_median']:.3f}x | {s['speedup_min']:.2f}-{s['speedup_max']:.2f} | "
                     f"{s['acceptance_rate']:.2f} | {s['mean_accepted']:.2f} | {s['bound'] or '-'} | "
                     f"{s['efficiency'] or '-'} | {'yes' if s['identical_outputs'] else 'NO'} |")
    lines += ["", "Per-call cost, local model vs the same model split over RPC (same run, interleaved, medians "
              f"of {ROUNDS} rounds, context {CONTEXT} tokens):", "",
              "| model | plain step local / RPC (ms) | RPC overhead per call | v(9) local / RPC (x plain) | "
              f"cycle d={CYCLE_D} local / RPC (ms) | bytes per plain step / per cycle |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["call_costs"]
        sl, sr = c["seconds"]["local"], c["seconds"]["rpc"]
        lines.append(f"| {r['scenario']['model']} | {sl['plain'] * 1e3:.2f} / {sr['plain'] * 1e3:.2f} | "
                     f"{c['overhead_seconds']['plain'] * 1e3:.2f} ms ({c['overhead_ratio']['plain']:.2f}x) | "
                     f"{c['local_units']['v'][9]:.2f} / {c['rpc_units_of_rpc_plain']['v'][9]:.2f} | "
                     f"{sl['cycle'] * 1e3:.1f} / {sr['cycle'] * 1e3:.1f} | "
                     f"{c['bytes_per_plain_step']:,} / {c['bytes_per_cycle']:,} |")
    lines += ["", "On paper, over a real network (`paper_model` in the JSON): each call waits one round trip per "
              "worker and moves the bytes above; S = E x plain_net / cycle_net with this run's E (mean accepted "
              "+ 1) and d. \"drafts local\": if the draft steps never left this machine (a skip set covering "
              "every remote layer; not what the search does today).", "",
              "| model | E | d | S loopback | S 10 GbE (50 us, 1.25 GB/s) | S 1 GbE (200 us, 125 MB/s) | "
              "S 1 GbE, drafts local |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["paper_model"]
        if "E" not in m:
            lines.append(f"| {r['scenario']['model']} | - | - | {m['note']} | | | |")
            continue
        lines.append(f"| {r['scenario']['model']} | {m['E']} | {m['d']} | {m['loopback']} | {m['10 GbE']['S']} | "
                     f"{m['1 GbE']['S']} | {m['1 GbE']['S_drafts_local']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=list(MODELS))
    ap.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=RESULTS)
    opts = ap.parse_args(argv)
    from swift_gguf.rpc import LocalWorker
    opts.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with LocalWorker(threads=THREADS) as w1, LocalWorker(threads=THREADS) as w2:
        for name in opts.only or list(MODELS):
            print(f"== rpc-{name}", file=sys.stderr, flush=True)
            results[name] = run_model(name, opts.limit, opts.max_tokens, [w1, w2])
            (opts.out / f"rpc-{name}.json").write_text(json.dumps(results[name], indent=1))
    (opts.out / "rpc-section.md").write_text(section(results))
    print(section(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
