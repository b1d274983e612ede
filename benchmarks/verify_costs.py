#!/usr/bin/env python3
"""What verification costs on this machine: v(n) per model, the number speculation lives on.

    python -m benchmarks.verify_costs                          # the four registry models
    python -m benchmarks.verify_costs -m gemma3-270m -m my.gguf --contexts 100,1000

v(n) = seconds of one n-token verification batch (Runtime.verify: logits for every row, each row
bit-identical to its one-token decode) / seconds of one plain one-token decode (on the kernels plain
decoding chooses, runtime.StepKernels), at a context of
`ctx` cached tokens; the sizes interleaved round by round after an untimed round, medians
(specbench_worker.measure_verify_costs, the measurement every Spec-Bench run records). A draft of
d tokens pays only where the expected accepted tokens + 1 exceed v(d + 1) plus the drafting cost.
Flash attention on, -t threads for decoding and batches alike. Writes JSON and prints a table.

Also the plain step both ways (`plain_paths`): a one-token decode through upstream's kernels
(Runtime.decode) and through the verification kernels (Runtime.verify of one token), their logits
compared bit for bit: where the second is faster, plain decoding takes it (runtime.StepKernels).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.specbench_worker import filler_tokens, measure_verify_costs

MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
SIZES = [2, 5, 9, 17, 32, 33, 64]   # 33, 64: two invariant ubatches (limits.INVARIANT_UBATCH = 32)
RESULTS = Path(__file__).resolve().parent / "results"


def measure(model: str, contexts: list[int], threads: int, reps: int) -> dict:
    from swift_gguf import SwiftLlama
    from swift_gguf.models import resolve_model
    path = resolve_model(model, progress=True)
    llm = SwiftLlama(str(path), n_ctx=max(contexts) + max(SIZES) + 16, n_threads=threads,
                     n_threads_batch=threads, flash_attn=True, spec="off", profile=None, verbose=False)
    try:
        return {"path": str(path), "weights": weight_types(path),
                "costs": measure_verify_costs(llm, contexts, SIZES, reps=reps),
                "plain_paths": plain_paths(llm, contexts, reps)}
    finally:
        llm.close()


def plain_paths(llm, contexts: list[int], reps: int, tokens: int = 6) -> dict:
    """Per context: a one-token decode through upstream's kernels and through the verification
    kernels (batch invariance on), interleaved over 2 * reps rounds (medians, ms), and whether their
    logits are bit-identical for `tokens` different tokens."""
    import numpy as np

    from swift_gguf.timing import interleaved, time_batch
    rt = llm.rt
    out = {}
    for ctx in contexts:
        llm.reset()
        filler = filler_tokens(llm, ctx)
        rt.decode(filler, 0)
        identical = True
        for t in filler[:tokens]:
            rt.decode([t], ctx)
            a = rt.logits(-1).copy()
            rt.remove(0, ctx, -1)
            rt.verify([t], ctx)
            identical = identical and bool(np.array_equal(a, rt.logits(-1)))
            rt.remove(0, ctx, -1)
        s = interleaved({"decode": lambda: time_batch(rt, filler[:1], ctx, verify=False),
                         "verify": lambda: time_batch(rt, filler[:1], ctx)}, 2 * reps, alternate=True)
        out[str(ctx)] = {"identical": identical, "decode_ms": 1e3 * statistics.median(s["decode"]),
                         "verify_ms": 1e3 * statistics.median(s["verify"])}
    llm.reset()
    return out


def weight_types(path) -> str:
    """The matrices' quantization types by share of their bytes, e.g. 'Q4_K 55%, Q6_K 30%, Q8_0 15%'."""
    from gguf import GGUFReader
    size: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        if len(t.shape) >= 2:
            size[t.tensor_type.name] = size.get(t.tensor_type.name, 0) + int(t.n_bytes)
    total = sum(size.values()) or 1
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(size.items(), key=lambda kv: -kv[1]) if v / total >= 0.02)


def table(result: dict) -> str:
    lines = ["| model | weights | ctx | plain step | " + " | ".join(f"v({n})" for n in SIZES) + " |",
             "|---|---|---|---|" + "---|" * len(SIZES)]
    for model, r in result["models"].items():
        for ctx, c in r["costs"].items():
            kernels = f" ({c['step_kernels']} kernels)" if "step_kernels" in c else ""
            lines.append(f"| {model} | {r['weights']} | {ctx} | {c['t1'] * 1e3:.1f} ms{kernels} | "
                         + " | ".join(f"{c['v'][str(n)]:.2f}" for n in SIZES) + " |")
    paths = [(m, ctx, p) for m, r in result["models"].items() for ctx, p in r.get("plain_paths", {}).items()]
    if paths:
        lines += ["", "| model | ctx | one-token decode | through the verification kernels | logits identical |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m} | {ctx} | {p['decode_ms']:.2f} ms | {p['verify_ms']:.2f} ms ({p['verify_ms'] / p['decode_ms']:.2f}) "
                  f"| {'yes' if p['identical'] else 'NO'} |" for m, ctx, p in paths]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", action="append", help="alias or .gguf path (repeatable; default: the registry's four)")
    ap.add_argument("--contexts", default="100,1000", help="cached tokens before the batch (default: %(default)s)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="rounds = 2 * reps (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    contexts = [int(c) for c in a.contexts.split(",")]
    result = {"benchmark": "verify-costs", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": a.threads,
              "sizes": SIZES, "models": {}}
    for model in a.model or MODELS:
        result["models"][model] = measure(model, contexts, a.threads, a.reps)
        print(f"[verify_costs] {model} done", flush=True)
    out = a.out or RESULTS / f"verify-costs-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
