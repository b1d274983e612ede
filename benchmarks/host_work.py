#!/usr/bin/env python3
"""Host work per emitted token on an emulated fast backend (issue 25).

    .venv/bin/python -m benchmarks.host_work                      # threads 1/1 and 2/2, 21 rounds
    .venv/bin/python -m benchmarks.host_work --threads 1 --reps 3 --tag smoke --out /tmp/hw.json

On a GPU a SmolLM2 step takes ~1.2 ms, so Python's work around each step (sampling, the
controller's decision, the lookup index, search pacing, statistics) is a visible share of it;
on this 2-core CPU a real model's step takes ~10 ms and hides it. Here the model is a tiny
random llama (swift_gguf.testmodels: 64 wide, 4 real + 2 identity blocks) with SmolLM2's
vocabulary size (49152): a decode costs a few hundred microseconds, almost all of it the output
matrix, while every logits row is a real model's 49152 floats. Every llama_decode is timed
(a wrapper around llama_cpp's binding, which every arm calls), so besides wall time per token
the table gives host time per token = wall time - decode time.

Arms (same process, each its own model object; every round runs every arm once, in an order
rotated per round; greedy; 128 tokens; time from the first generated token to the last, over
the tokens after the first, as benchmarks/specbench.py counts):

  llama         llama_cpp.Llama.generate(temp=0): the reference
  off           SwiftLlama(spec="off").generate_tokens
  auto          spec="auto" where nothing pays: the search has finished (it found the identity
                blocks, but on this model skipping layers saves almost nothing: the output matrix
                is the cost) and the random model's output rarely repeats, so auto decodes plainly
                while both drafters are asked every token
  auto-lookup   spec="auto" on a copy of the model whose attention outputs are scaled by 0.01
                (same shapes, same cost): its greedy output falls into a cycle of ~60 tokens, and
                the prompt is already in it, so prompt-lookup drafts are accepted (its search has
                finished too)
  lookup        spec="swift", spec_type="ngram" on the copying model: prompt lookup every cycle
                (auto backs off lookups here now and then: on this CPU verifying n tokens costs
                ~0.8 n plain steps, so even fully accepted drafts barely pay)
  swift         spec="swift" with a fixed skip set (the inner identity block): layer-skip drafts,
                all accepted (their logits are bit-identical)

Every arm's output is checked against llama_cpp.Llama's on the same model and prompt.
Writes benchmarks/results/host-work[-TAG].json (or --out) and prints the table.
The CPU is shared: only same-run ratios mean anything; the rounds are interleaved and medians
reported with min and max (docs/benchmark-protocol.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp
from llama_cpp import llama_cpp as C

from swift_gguf import testmodels
from swift_gguf.api import SwiftLlama
from swift_gguf.optimize import run_optimize
from swift_gguf.skipset import SkipSet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
N_VOCAB = 49152        # SmolLM2's vocabulary
N_CTX = 1024
TOKENS = 128           # generated per run
PROMPT_LEN = 40        # random tokens after BOS
CYCLE_LEAD = 200       # copying model: greedy tokens in the prompt (its output is in its cycle by then)
ATTN_SCALE = 0.01      # copying model: attention output scale
ARMS = ("llama", "off", "auto", "auto-lookup", "lookup", "swift")
COPYING = ("auto-lookup", "lookup")   # the arms on the copying model

# -- timing every decode ----------------------------------------------------------------------

_decode = C.llama_decode
_decoding = [0.0, 0]   # seconds inside llama_decode, calls


def _timed_decode(ctx, batch):
    t = time.perf_counter()
    try:
        return _decode(ctx, batch)
    finally:
        _decoding[0] += time.perf_counter() - t
        _decoding[1] += 1


C.llama_decode = _timed_decode   # Runtime and Llama's internals both look it up at call time


# -- models -----------------------------------------------------------------------------------

def build_models(root: Path) -> dict:
    """The random model and its copying twin (attention outputs scaled down: same shapes and cost)."""
    from gguf import GGUFReader
    meta = testmodels.build("llama", root / "random.gguf", n_vocab=N_VOCAB)
    shutil.copy(meta["out"], root / "copying.gguf")
    reader = GGUFReader(root / "copying.gguf", "r+")
    for t in reader.tensors:
        if t.name.endswith("attn_output.weight"):
            t.data[...] *= ATTN_SCALE
    del reader   # flushes the memory map
    return {"random": meta["out"], "copying": str(root / "copying.gguf"), "n_layer": meta["n_layer"],
            "inserted": meta["inserted_layers"]}


def load(models: dict, threads: int) -> dict:
    kw = dict(n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)
    inner = [i for i in models["inserted"] if 0 < i < models["n_layer"] - 1]
    skip = SkipSet.from_lists(models["n_layer"], attention=inner, ffn=inner)
    objs = {
        "llama": llama_cpp.Llama(models["random"], **kw),
        "off": SwiftLlama(models["random"], spec="off", profile=None, **kw),
        "auto": SwiftLlama(models["random"], spec="auto", profile=None, **kw),
        "auto-lookup": SwiftLlama(models["copying"], spec="auto", profile=None, **kw),
        "lookup": SwiftLlama(models["copying"], spec="swift", spec_type="ngram", profile=None, **kw),
        "swift": SwiftLlama(models["random"], spec="swift", skip=skip, profile=None, **kw),
    }
    # the search a user's profile would hold: run to its end before anything is timed
    for arm in ("auto", "auto-lookup"):
        run_optimize(objs[arm], [{"prompt": "Once upon a time, in a quiet village by the sea,"}],
                     max_probes=400, tokens=64, progress=False)
        if objs[arm].engine.search.active:
            raise SystemExit(f"{arm}: the search did not finish in 400 probes")
    return objs


def prompts(models: dict, objs: dict, seed: int) -> dict:
    rnd = random.Random(seed)
    x = [1] + [rnd.randrange(3, N_VOCAB) for _ in range(PROMPT_LEN)]
    xc = [1] + [rnd.randrange(3, N_VOCAB) for _ in range(PROMPT_LEN)]
    with objs["auto-lookup"].speculation("off"):
        lead = [t.id for t in objs["auto-lookup"].generate_tokens(xc, max_tokens=CYCLE_LEAD)]
    return {"random": x, "copying": xc + lead}


# -- one run ------------------------------------------------------------------------------------

def run_llama(llm, prompt: list[int]) -> dict:
    return _timed(lambda: llm.generate(prompt, temp=0.0), None)


def run_swift(llm, prompt: list[int]) -> dict:
    return _timed(lambda: (t.id for t in llm.generate_tokens(prompt, max_tokens=TOKENS)), llm)


def _timed(start, llm) -> dict:
    """Generate TOKENS tokens; wall and decode time from the first token to the last."""
    ids = []
    call = time.perf_counter()
    d_call = _decoding[0]
    gen = start()
    t_first = d_first = c_first = None
    for tok in gen:
        if t_first is None:
            t_first, d_first, c_first = time.perf_counter(), _decoding[0], _decoding[1]
        ids.append(tok)
        if len(ids) >= TOKENS:
            break
    t_last, d_last, c_last = time.perf_counter(), _decoding[0], _decoding[1]
    gen.close()
    end = time.perf_counter()
    n = len(ids) - 1
    r = {"ids": ids, "wall_us": (t_last - t_first) / n * 1e6, "decode_us": (d_last - d_first) / n * 1e6,
         "decodes": c_last - c_first,
         # the whole call's host time (prompt handling, set-up and wrap-up included), per generation
         "call_host_us": ((end - call) - (_decoding[0] - d_call)) * 1e6}
    r["host_us"] = r["wall_us"] - r["decode_us"]
    if llm is not None:
        st = llm.last_stats
        r.update(drafted=st.drafted, accepted=st.accepted, cycles=st.cycles, plain_steps=st.plain_steps,
                 step_kernels=st.step_kernels,
                 drafters={k: {"drafted": v["drafted"], "accepted": v["accepted"]} for k, v in st.drafters.items()})
    return r


# -- the benchmark ------------------------------------------------------------------------------

def bench(models: dict, threads: int, reps: int, seed: int) -> dict:
    objs = load(models, threads)
    try:
        ps = prompts(models, objs, seed)
        prompt = {a: ps["copying" if a in COPYING else "random"] for a in ARMS}
        ref = {"random": run_llama(objs["llama"], ps["random"])["ids"]}
        ref["copying"] = _reference(models["copying"], ps["copying"], threads)
        for arm in ARMS:   # warm-up: graphs built, the calibration measured, outputs checked
            out = (run_llama if arm == "llama" else run_swift)(objs[arm], prompt[arm])["ids"]
            want = ref["copying" if arm in COPYING else "random"]
            if out != want:
                raise SystemExit(f"{arm}: output differs from llama_cpp.Llama's (threads {threads})")
        samples = {a: [] for a in ARMS}
        for r in range(reps):
            order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
            for arm in order:
                s = (run_llama if arm == "llama" else run_swift)(objs[arm], prompt[arm])
                s["identical"] = s.pop("ids") == ref["copying" if arm in COPYING else "random"]
                samples[arm].append(s)
        return {"threads": threads, "arms": {a: summarize(samples, a) for a in ARMS}, "samples": samples}
    finally:
        for o in objs.values():
            o.close()


def _reference(path: str, prompt: list[int], threads: int) -> list[int]:
    llm = llama_cpp.Llama(path, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        return run_llama(llm, prompt)["ids"]
    finally:
        llm.close()


def _stat(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2)}


def summarize(samples: dict, arm: str) -> dict:
    mine = samples[arm]
    out = {k: _stat([s[k] for s in mine]) for k in ("wall_us", "decode_us", "host_us", "call_host_us")}
    for base in ("off", "llama"):   # per round: speed relative to the base (its time / ours), host time ratio
        pairs = list(zip(samples[base], mine))
        out[f"speed_vs_{base}"] = _stat([b["wall_us"] / s["wall_us"] for b, s in pairs])
        out[f"host_vs_{base}"] = _stat([s["host_us"] / b["host_us"] for b, s in pairs])
    out["identical"] = all(s["identical"] for s in mine)
    if "drafted" in mine[0]:
        out.update(drafted=sum(s["drafted"] for s in mine), accepted=sum(s["accepted"] for s in mine),
                   cycles=sum(s["cycles"] for s in mine), plain_steps=sum(s["plain_steps"] for s in mine),
                   step_kernels=mine[-1]["step_kernels"])   # (the plain steps' kernels at the last round)
    out["decodes_per_run"] = statistics.median(s["decodes"] for s in mine)
    return out


def render(result: dict) -> str:
    lines = [f"host work per token ({result['tag'] or 'untagged'}; {result['reps']} interleaved rounds x "
             f"{TOKENS} tokens; median [min-max])"]
    for run in result["runs"]:
        lines.append(f"\nthreads {run['threads']}/{run['threads']}")
        lines.append(f"{'arm':12s} {'wall us/tok':>20s} {'decode':>7s} {'host us/tok':>18s} {'speed/off':>18s} "
                     f"{'speed/llama':>18s} {'host/off':>6s} {'host/llama':>10s}  drafts")
        for arm, a in run["arms"].items():
            def f(k, p=0):
                s = a[k]
                return f"{s['median']:.{p}f} [{s['min']:.{p}f}-{s['max']:.{p}f}]"
            drafts = (f"{a['accepted']}/{a['drafted']} in {a['cycles']} cycles, {a.get('step_kernels', '?')} kernels"
                      if "drafted" in a else "")
            same = "" if a["identical"] else "  OUTPUT DIFFERS"
            lines.append(f"{arm:12s} {f('wall_us'):>20s} {a['decode_us']['median']:7.0f} {f('host_us'):>18s} "
                         f"{f('speed_vs_off', 3):>18s} {f('speed_vs_llama', 3):>18s} "
                         f"{a['host_vs_off']['median']:6.2f} {a['host_vs_llama']['median']:10.2f}  {drafts}{same}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, action="append", help="thread counts (default: 1 and 2)")
    ap.add_argument("--reps", type=int, default=21, help="interleaved rounds (default 21)")
    ap.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    ap.add_argument("--tag", default="", help="names the result file host-work-TAG.json")
    ap.add_argument("--out", type=Path, default=None,
                    help="result file (default: benchmarks/results/host-work[-TAG].json)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    opts = ap.parse_args(argv)
    out = opts.out or RESULTS / (f"host-work-{opts.tag}.json" if opts.tag else "host-work.json")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="swift-host-work-") as tmp:
        models = build_models(Path(tmp))
        runs = [bench(models, t, opts.reps, opts.seed) for t in (opts.threads or [1, 2])]
    result = {"tag": opts.tag, "started": started, "reps": opts.reps, "tokens": TOKENS, "n_vocab": N_VOCAB,
              "n_ctx": N_CTX, "seed": opts.seed, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
              "command": " ".join(["python -m benchmarks.host_work", *(argv if argv is not None else sys.argv[1:])]),
              "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if opts.json else render(result))
    print(f"wrote {out}; load average {load_before[0]:.2f} before, {result['load_after'][0]:.2f} after",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
