"""Run: .venv/bin/python -m benchmarks.switching   (THREADS=1 REPS=7 by default)

Switching cost of the draft/verify alternation, with and without the graph cache (patch 0002).

cycle = 4 one-token drafts under a skip mask + KV removal + one 5-token verification + removal,
always at the same positions. Compared to the sum of its calls in steady state (each call shape
repeated on its own, so its graph is reused): overhead = cycle / (4 * draft + verify) - 1.
"""
import os, statistics, sys, time
from contextlib import contextmanager

from swift_gguf.api import SwiftLlama
from swift_gguf import native
from swift_gguf.skipset import SkipSet

from swift_gguf.models import resolve_model

MODEL = str(resolve_model("smollm2-135m", progress=False))
THREADS = int(os.environ.get("THREADS", "1"))
REPS = int(os.environ.get("REPS", "7"))
N = 20   # calls or cycles per repetition


@contextmanager
def env(k, v):
    old = os.environ.get(k)
    if v is None: os.environ.pop(k, None)
    else: os.environ[k] = v
    try: yield
    finally:
        if old is None: os.environ.pop(k, None)
        else: os.environ[k] = old


def load(cache):
    with env("LLAMA_SWIFT_GRAPH_CACHE", cache):
        return SwiftLlama(MODEL, n_ctx=512, n_threads=THREADS, n_threads_batch=THREADS, profile=None, spec="off")


def setup(llm):
    rt = llm.rt
    toks = llm.tokenize(b"The quick brown fox jumps over the lazy dog. Then it ran into the forest, where the old owl")
    prompt = (toks * 4)[:64]
    rt.remove(-1, 0, -1)
    rt.decode(prompt, 0)
    mask = SkipSet.from_indices(rt.n_layer, range(1, rt.n_layer - 1, 2)).mask()
    return rt, len(prompt), prompt[-1], mask


def t_drafts(rt, n_past, tok, mask):
    with rt.skipping(mask):
        rt.decode([tok], n_past); rt.logits(-1)      # warm (graph built / selected)
        t0 = time.perf_counter()
        for i in range(N):
            rt.decode([tok], n_past + 1 + i); rt.logits(-1)
        t = (time.perf_counter() - t0) / N
    rt.remove(0, n_past, -1)
    return t


def t_verifies(rt, n_past, tok):
    rt.verify([tok] * 5, n_past); rt.logits_rows(5)
    rt.remove(0, n_past, -1)
    t0 = time.perf_counter()
    for _ in range(N):
        rt.verify([tok] * 5, n_past); rt.logits_rows(5)
        rt.remove(0, n_past, -1)
    t = (time.perf_counter() - t0) / N
    rt.remove(0, n_past, -1)
    return t


def t_cycles(rt, n_past, tok, mask):
    def cycle():
        with rt.skipping(mask):
            for i in range(4):
                rt.decode([tok], n_past + i); rt.logits(-1)
        rt.remove(0, n_past, -1)
        rt.verify([tok] * 5, n_past); rt.logits_rows(5)
        rt.remove(0, n_past, -1)
    cycle()
    t0 = time.perf_counter()
    for _ in range(N):
        cycle()
    return (time.perf_counter() - t0) / N


def main():
    ctxs = {"cache": load(None), "no cache": load("0")}
    states = {k: setup(v) for k, v in ctxs.items()}
    res = {k: {"draft": [], "verify": [], "cycle": [], "ratio": [], "extra": []} for k in ctxs}
    for rep in range(REPS):
        for k in (list(ctxs) if rep % 2 == 0 else list(ctxs)[::-1]):
            rt, n_past, tok, mask = states[k]
            d = t_drafts(rt, n_past, tok, mask)
            v = t_verifies(rt, n_past, tok)
            c = t_cycles(rt, n_past, tok, mask)
            r = res[k]
            r["draft"].append(d); r["verify"].append(v); r["cycle"].append(c); r["ratio"].append(c / (4 * d + v)); r["extra"].append(c - (4 * d + v))
    print(f"threads={THREADS} reps={REPS} x {N} (median; ms)")
    for k, r in res.items():
        built, reused = native.graph_stats(ctxs[k].rt.ctx)
        med = {m: statistics.median(x) for m, x in r.items()}
        print(f"  {k:9s} draft {med['draft']*1e3:6.2f}  verify {med['verify']*1e3:6.2f}  "
              f"sum 4d+v {(4*med['draft']+med['verify'])*1e3:6.2f}  cycle {med['cycle']*1e3:6.2f}  "
              f"cycle-sum {med['extra']*1e3:+.2f}  cycle/sum {med['ratio']:.3f} (min {min(r['ratio']):.3f} max {max(r['ratio']):.3f})  "
              f"graphs built {built} reused {reused}")
    for llm in ctxs.values():
        llm.close()


if __name__ == "__main__":
    main()
