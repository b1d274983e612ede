#!/usr/bin/env python3
"""The CPU benchmark scenarios behind BENCHMARKS.md (protocol: docs/benchmark-protocol.md).

    .venv/bin/python -m benchmarks.run                 # all scenarios, under 15 minutes on 2 cores
    .venv/bin/python -m benchmarks.run --only smollm2-auto --limit 4

Each scenario loads its model once and runs `swift_gguf.bench.run_bench` (interleaved plain /
swift / prompt-lookup runs in one process) and writes benchmarks/results/<scenario>.json.
Fixture scenarios use the redundancy fixture (swift_gguf/redundancy.py): a test
instrument, never a real model's result. "scratch" scenarios start without a profile (the
search runs during the benchmark and its time is included); "profile" scenarios reuse the
profile the scratch run saved, completed offline by `swift-gguf optimize` where the scratch run
left the search unfinished (the offline search's time is reported, not included).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from swift_gguf.redundancy import cached_fixture

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# name: (model, mode, prompts limit, profile: "scratch" | "reuse-optimized", peer arm)
# Every scenario runs 3 interleaved pairs (the protocol's minimum). The prompt-lookup peer runs
# on the real model only: on the fixtures it would measure the fixture, not a drafter.
# The K=3 scratch scenario uses every prompt: its search is amortised over the prompt set.
# The peer runs in the first pair of each prompt (it is 2-3x slower than plain decoding).
PAIRS = 3
PEER_PAIRS = 1
SCENARIOS = {
    "smollm2-auto": ("smollm2", "auto", None, "scratch", True),
    "smollm2-swift": ("smollm2", "swift", 4, "reuse-optimized", True),
    "fixture-k1-auto-scratch": ("k1", "auto", 6, "scratch", False),
    "fixture-k1-auto-profile": ("k1", "auto", 6, "reuse-optimized", False),
    "fixture-k3-auto-scratch": ("k3", "auto", None, "scratch", False),
    "fixture-k3-auto-profile": ("k3", "auto", 6, "reuse-optimized", False),
}


def model_path(name: str) -> Path:
    from swift_gguf.models import resolve_model
    base = resolve_model("smollm2-135m", progress=False)
    if name == "smollm2":
        return base
    return cached_fixture(base, int(name[1:]))


def run_scenario(name: str, profile_dir: Path, limit: int | None, max_tokens: int) -> dict:
    from swift_gguf.api import SwiftLlama
    from swift_gguf.bench import run_bench
    from swift_gguf.optimize import load_prompts, run_optimize
    model, mode, n_prompts, prof, peer = SCENARIOS[name]
    profile = profile_dir / f"{model}.json"
    if prof == "scratch" and profile.exists():
        profile.unlink()
    llm = SwiftLlama(str(model_path(model)), n_ctx=1024, n_threads=2, n_threads_batch=2, spec=mode,
                     profile=str(profile))
    try:
        optimize_seconds = 0.0
        if prof == "reuse-optimized" and not llm.engine.search.state.done:
            # the profile a user gets from `swift-gguf optimize` (its time is not in the table)
            t = time.perf_counter()
            run_optimize(llm, load_prompts(None)[:4], max_probes=400, tokens=64, progress=False)
            optimize_seconds = round(time.perf_counter() - t, 1)
        prompts = load_prompts(None, default="bench")[: limit or n_prompts or None]
        t0 = time.perf_counter()
        result = run_bench(llm, prompts, max_tokens=max_tokens, pairs=PAIRS, peer=peer, peer_pairs=PEER_PAIRS,
                           mode=mode, progress=True)
        result["scenario"] = {"name": name, "model": model, "mode": mode, "profile": prof,
                              "wall_seconds": round(time.perf_counter() - t0, 1),
                              "optimize_seconds": optimize_seconds,
                              "command": f"python -m benchmarks.run --only {name}"}
        llm.save_profile()
    finally:
        llm.close()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=list(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=RESULTS)
    opts = ap.parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    profile_dir = Path(tempfile.mkdtemp(prefix="swift-bench-profiles-"))
    for name in opts.only or list(SCENARIOS):
        print(f"== {name}", file=sys.stderr, flush=True)
        result = run_scenario(name, profile_dir, opts.limit, opts.max_tokens)
        (opts.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        s = result["summary"]
        print(f"== {name}: speedup {s['speedup_median']}x (min {s['speedup_min']}, max {s['speedup_max']}), "
              f"overall {s['speedup_overall']}x, "
              f"bound {s['bound']}, efficiency {s['efficiency']}, identical {s['identical_outputs']}",
              file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
