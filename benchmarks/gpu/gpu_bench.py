#!/usr/bin/env python3
"""swift-gguf on a GPU: switching cost and benchmark tables, in one process, within a deadline.

    python3 -m benchmarks.gpu.gpu_bench --out OUT                 # GPU (n_gpu_layers=-1, flash_attn=False)
    python3 -m benchmarks.gpu.gpu_bench --cpu --out OUT --limit 2 --pairs 1 --max-tokens 32
    python3 -m benchmarks.gpu.gpu_bench --prepare-only            # build the fixtures only (no llama.cpp)

Steps (each stops cleanly at the deadline; results are written after every step):
  a. redundancy fixtures K=1 and K=3 from the model (swift_gguf.redundancy.build_fixture)
  b. switching cost on SmolLM2 and fixture K=1: benchmarks/switching.py's measurement (steady-state
     1-token draft call with a skip mask, 5-token verify call, and alternating cycles draft x4 +
     verify x5 as SwiftEngine._cycle makes them; overhead = cycle / (4*draft + verify) - 1), with
     patch 0002's graph cache on and off when the library exports llama_swift_graph_cache_size
     (LLAMA_SWIFT_GRAPH_CACHE=0 at context creation), the two contexts interleaved
  c. tables with swift_gguf.bench.run_bench (peer=False), one prompt at a time so that a
     deadline keeps the prompts already done: fixture K=1 and K=3 with mode "swift" and a fixed
     skip set of exactly the inserted blocks, SmolLM2 with mode "auto" (search from scratch),
     then fixtures K=1 and K=3 with mode "auto".
Outputs in --out: summary.json (device, build, switching, table summaries) and <table>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path


DEFAULT_MODEL = Path("/root/.cache/swift-gguf/models/SmolLM2-135M-Instruct.Q4_1.gguf")
SWITCH_BLOCK = 10      # switching: calls per block (a sample is a block's mean; see benchmarks/switching.py)
TABLES = ("k1_swift", "k3_swift", "smollm2_auto", "k1_auto", "k3_auto")
SWITCHING = ("switch_smollm2", "switch_k1")
# share of the time left for each step among the weighted steps still to come; the unweighted
# (optional) steps get only what the others leave
WEIGHT = {"switch_smollm2": 1, "switch_k1": 1, "k1_swift": 2, "k3_swift": 3, "smollm2_auto": 3,
          "k1_auto": 0, "k3_auto": 0}


class Deadline(BaseException):
    """The run's deadline passed (raised by SIGALRM between llama.cpp calls; a BaseException so
    that no `except Exception` on the way swallows it)."""


def log(msg: str) -> None:
    print(f"[gpu_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


# -- device / build info ------------------------------------------------------------------------

def device_info(kit: Path) -> dict:
    info: dict = {"host": platform.node(), "machine": platform.machine(), "python": platform.python_version(),
                  "nproc": os.cpu_count()}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["gpu"] = q.stdout.strip() or q.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        info["gpu"] = f"none ({e.__class__.__name__})"
    for name, key in (("build_flags.txt", "build_flags"), ("build.done", "build_done"),
                      ("build_fallback.txt", "build_fallback")):
        p = kit / name
        if p.exists():
            info[key] = p.read_text().strip()
    p = kit / "KIT_INFO.json"
    if p.exists():
        info["kit"] = json.loads(p.read_text())
    return info


# -- a. fixtures -----------------------------------------------------------------------------------

def prepare_fixtures(model: Path, kit: Path) -> dict:
    from swift_gguf.redundancy import build_fixture, inserted_layers
    from gguf import GGUFReader
    out = {}
    for k in (1, 3):
        path = kit / f"fixture-k{k}.gguf"
        meta_path = path.with_suffix(".json")
        t0 = time.perf_counter()
        if path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            meta["reused"] = True
            n_orig = meta["n_orig_layer"]
        elif path.exists():
            r = GGUFReader(path, "r")
            arch = r.fields["general.architecture"].contents()
            n_layer = int(r.fields[f"{arch}.block_count"].contents())
            n_orig = n_layer // (k + 1)
            meta = {"out": str(path), "per_block": k, "n_layer": n_layer, "n_orig_layer": n_orig,
                    "reused": True}
        else:
            log(f"building fixture K={k} -> {path}")
            meta = build_fixture(model, path, per_block=k)
            n_orig = meta["n_orig_layer"]
            write_json(meta_path, {kk: v for kk, v in meta.items() if kk not in ("inserted_layers", "original_layers")})
        meta["inserted_layers"] = inserted_layers(n_orig, k)
        meta["seconds"] = round(time.perf_counter() - t0, 2)
        log(f"fixture K={k}: {meta['n_layer']} layers, {meta['seconds']}s")
        out[f"k{k}"] = meta
    return out


def inserted_skip(meta: dict):
    """Skip set of exactly the inserted (identity) blocks, minus the last layer (never skipped)."""
    from swift_gguf.skipset import SkipSet
    n = meta["n_layer"]
    ins = [il for il in meta["inserted_layers"] if il < n - 1]
    return SkipSet.from_lists(n, attention=ins, ffn=ins)


# -- llama helpers ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.gpu = not args.cpu
        self.common = dict(n_ctx=args.n_ctx, n_gpu_layers=-1 if self.gpu else 0,
                           flash_attn=(not self.gpu) or os.environ.get("GPU_FLASH_ATTN") == "1",
                           profile=None, verbose=False)
        if args.threads:
            self.common.update(n_threads=args.threads, n_threads_batch=args.threads)

    def make(self, path: Path, *, spec: str, env: dict | None = None, **kw):
        from swift_gguf.api import SwiftLlama
        from swift_gguf.native import context_env
        with context_env(**(env or {})):
            return SwiftLlama(str(path), spec=spec, **self.common, **kw)


def graph_cache_size_fn():
    from llama_cpp import llama_cpp as C
    try:
        fn = C._lib.llama_swift_graph_cache_size
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_int32
    return fn


def run_switching(bench: Bench, name: str, path: Path, skip, reps: int, until: float) -> dict:
    """benchmarks/switching.py's measurement on this device: graph cache on and off (when the library
    can say), `reps` calls per call shape in blocks of SWITCH_BLOCK, up to `until`."""
    from benchmarks.switching import line, measure_switching
    cache_fn = graph_cache_size_fn()
    variants = [("default", {"LLAMA_SWIFT_GRAPH_CACHE": None})]
    if cache_fn is not None:
        variants.append(("graph_cache_off", {"LLAMA_SWIFT_GRAPH_CACHE": "0"}))
    out = {"model": str(path), "skip": skip.to_json(), "skip_describe": skip.describe(),
           "graph_cache_symbol": cache_fn is not None}
    llms = {}
    try:
        for label, env in variants:
            llms[label] = bench.make(path, spec="off", env=env)
        block = min(reps, SWITCH_BLOCK)
        res = measure_switching(llms, skip.mask(), max(2, reps // block), block, until=until)
        for label, r in res.items():
            r["backend"] = llms[label].backend
            if cache_fn is not None:
                r["graph_cache_size"] = int(cache_fn(llms[label].rt.ctx))
            out[label] = r
            log(f"{name}" + line(f"[{label}]", r))
    except Deadline:
        out["cut"] = "deadline"
        log(f"{name}: cut by the deadline")
    finally:
        for llm in llms.values():
            llm.close()
    return out


def smollm2_skip(n_layer: int):
    """A representative drafting mask for the real model: attention and FFN of every odd inner layer."""
    from swift_gguf.skipset import SkipSet
    odd = [il for il in range(1, n_layer - 1) if il % 2 == 1]
    return SkipSet.from_lists(n_layer, attention=odd, ffn=odd)


def token_time(llm, n: int = 12) -> float:
    """Median seconds of a plain 1-token decode (for time estimates)."""
    rt = llm.rt
    toks = llm.tokenize(b"Hello there", add_bos=True, special=True)
    rt.remove(-1, 0, -1)
    rt.decode(toks, 0)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        rt.decode([toks[-1]], len(toks))
        rt.logits(-1).argmax()
        ts.append(time.perf_counter() - t)
        rt.remove(0, len(toks), -1)
    rt.remove(-1, 0, -1)
    return statistics.median(ts[2:])


# -- c. tables ----------------------------------------------------------------------------------------

def run_table(bench: Bench, name: str, llm, prompts: list[dict], mode: str, time_left, out_dir: Path) -> dict:
    from swift_gguf import bench as sb
    a = bench.args
    t_tok = token_time(llm)
    est_first = a.pairs * 2 * a.max_tokens * t_tok * 1.6 + (20.0 if mode == "auto" else 2.0)
    rows, last, truncated, stopped = [], None, False, ""
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        per = (time.perf_counter() - t0) / i if i else est_first
        if time_left() < per * 1.15 + 3:
            truncated, stopped = True, f"deadline: {time_left():.0f}s left, a prompt takes ~{per:.0f}s"
            log(f"{name}: stopping before prompt {i + 1}/{len(prompts)} ({stopped})")
            break
        try:
            res = sb.run_bench(llm, [p], max_tokens=a.max_tokens, pairs=a.pairs, peer=False, mode=mode,
                               progress=False)
        except Deadline:
            truncated, stopped = True, f"deadline during prompt {p['id']}"
            log(f"{name}: {stopped}")
            break
        r = res["rows"][0]
        rows.append(r)
        last = res
        log(f"{name} {p['id']}: plain {r['plain_tps']:.1f} t/s, swift {r['swift_tps']:.1f} t/s, "
            f"speedup {r['speedup']:.3f}x [{r['speedup_min']:.2f}..{r['speedup_max']:.2f}], "
            f"accept {r['acceptance_rate']:.2f}, mean acc {r['mean_accepted']:.2f}, "
            f"identical {r['identical']}, modes {r['mode_used']}")
    result = {"name": name, "mode": mode, "prompts_planned": len(prompts), "prompts_run": len(rows),
              "truncated": truncated, "stopped": stopped, "seconds": round(time.perf_counter() - t0, 2),
              "plain_token_ms_estimate": round(t_tok * 1e3, 4), "rows": rows}
    if rows:
        cfg = dict(last["config"])
        # bench._config writes flash_attn: True regardless; record what this run used
        cfg.update(flash_attn=bench.common["flash_attn"], n_gpu_layers=bench.common["n_gpu_layers"],
                   backend=llm.backend)
        result.update(config=cfg, summary=sb._summary(rows), by_category=sb._by_category(rows),
                      skip=last["skip"], search=last["search"], costs=last["costs"])
        with contextlib.suppress(Exception):
            result["table"] = sb.render_table(result)
            print(result["table"], flush=True)
    write_json(out_dir / f"{name}.json", result)
    return result


def table_brief(t: dict) -> dict:
    keys = ("prompts_planned", "prompts_run", "truncated", "stopped", "seconds")
    d = {k: t.get(k) for k in keys}
    d.update(t.get("summary", {}))
    if "search" in t:
        d["search"] = t["search"]
    if "skip" in t and t["skip"]:
        d["skip_sublayers"] = len(t["skip"]["attention"]) + len(t["skip"]["ffn"])
    return d


# -- main ---------------------------------------------------------------------------------------------

def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_out"))
    ap.add_argument("--kit", type=Path, default=Path("/tmp/kit"), help="fixtures and build info live here")
    ap.add_argument("--model", type=Path, default=None, help="default: KIT/model.gguf, else the cached SmolLM2")
    ap.add_argument("--cpu", action="store_true", help="n_gpu_layers=0, flash_attn=True, small defaults")
    ap.add_argument("--limit", type=int, default=None, help="prompts per table (GPU 8, CPU 2)")
    ap.add_argument("--pairs", type=int, default=None, help="plain/swift pairs per prompt (GPU 3, CPU 1)")
    ap.add_argument("--max-tokens", type=int, default=None, help="GPU 128, CPU 32")
    ap.add_argument("--reps", type=int, default=None, help="switching repetitions (GPU 50, CPU 10)")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--budget", type=float, default=None, help="seconds from start (GPU 330, CPU 1800)")
    ap.add_argument("--deadline", type=float, default=None, help="absolute time.time() deadline (wins over --budget)")
    ap.add_argument("--only", default="", help=f"comma list of {', '.join(SWITCHING + TABLES)}")
    ap.add_argument("--prepare-only", action="store_true", help="build the fixtures and exit (no llama.cpp)")
    a = ap.parse_args(argv)
    cpu = a.cpu
    a.limit = a.limit or (2 if cpu else 8)
    a.pairs = a.pairs or (1 if cpu else 3)
    a.max_tokens = a.max_tokens or (32 if cpu else 128)
    a.reps = a.reps or (10 if cpu else 50)
    a.budget = a.budget or (1800.0 if cpu else 330.0)
    if a.model is None:
        a.model = a.kit / "model.gguf" if (a.kit / "model.gguf").exists() else DEFAULT_MODEL
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    return a


def main(argv=None) -> int:
    a = parse(argv)
    start = time.time()
    deadline = a.deadline or start + a.budget
    a.kit.mkdir(parents=True, exist_ok=True)
    fixtures = prepare_fixtures(a.model, a.kit)
    if a.prepare_only:
        return 0

    def time_left() -> float:
        return deadline - time.time()

    def on_alarm(signum, frame):
        raise Deadline()

    def arm(until: float) -> None:   # SIGALRM at min(until, deadline)
        signal.setitimer(signal.ITIMER_REAL, max(min(until, deadline) - time.time(), 0.5))

    signal.signal(signal.SIGALRM, on_alarm)
    arm(deadline)

    a.out.mkdir(parents=True, exist_ok=True)
    import llama_cpp
    from swift_gguf import native
    from swift_gguf.optimize import load_prompts
    bench = Bench(a)
    summary = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
               "device": device_info(a.kit),
               "library": {"path": native.library_path(), "llama_cpp_python": llama_cpp.__version__,
                           "llama_cpp_module": llama_cpp.__file__, "backends": native.backends(),
                           "gpu_offload": native.gpu_offload_supported(),
                           "graph_cache_symbol": graph_cache_size_fn() is not None},
               "context": bench.common, "fixtures": {k: {kk: vv for kk, vv in v.items() if kk != "inserted_layers"}
                                                     for k, v in fixtures.items()},
               "switching": {}, "tables": {}, "cut": {}, "errors": {}, "stopped": ""}
    log(f"library {summary['library']['path']}, backends {summary['library']['backends']}, "
        f"graph cache symbol: {summary['library']['graph_cache_symbol']}, deadline in {time_left():.0f}s")
    if not a.cpu and not native.gpu_offload_supported():
        log("WARNING: this library cannot offload to a GPU; the numbers are CPU numbers")
    out_summary = a.out / "summary.json"
    write_json(out_summary, summary)
    prompts = load_prompts(None)[:a.limit]
    steps = [n for n in SWITCHING + TABLES if not a.only or n in a.only]

    def slice_end(i: int) -> float:
        """This step's share of the time left: by WEIGHT among the remaining weighted steps;
        the unweighted (optional) steps share what is left after them."""
        rest = steps[i:]
        w = WEIGHT.get(steps[i], 0)
        frac = w / sum(WEIGHT.get(n, 0) for n in rest) if w else 1.0 / len(rest)
        return time.time() + time_left() * frac

    try:
        for i, name in enumerate(steps):
            if time_left() < 8:
                summary["stopped"] = f"deadline before {name}"
                log(summary["stopped"])
                break
            t0 = time.perf_counter()
            until = slice_end(i)
            log(f"--- {name} ({time_left():.0f}s left, this step up to {until - time.time():.0f}s)")
            try:
                if name.startswith("switch_"):
                    arm(until + 10)   # soft limits inside; the alarm only if they fail
                    if name == "switch_smollm2":
                        n_layer = fixtures["k1"]["n_orig_layer"]
                        summary["switching"]["smollm2"] = run_switching(
                            bench, name, a.model, smollm2_skip(n_layer), a.reps, until)
                    else:
                        summary["switching"]["k1"] = run_switching(
                            bench, name, Path(fixtures["k1"]["out"]), inserted_skip(fixtures["k1"]), a.reps, until)
                    cut = summary["switching"][name.split("_", 1)[1]].get("cut")
                    if cut:
                        summary["cut"][name] = cut
                else:
                    arm(until)
                    which, mode = name.split("_")
                    if which == "smollm2":
                        llm = bench.make(a.model, spec=mode)
                    else:
                        meta = fixtures[which]
                        fixed = {"skip": inserted_skip(meta)} if mode == "swift" else {}
                        llm = bench.make(Path(meta["out"]), spec=mode, **fixed)
                    try:
                        t = run_table(bench, name, llm, prompts, mode, lambda: min(until, deadline) - time.time(),
                                      a.out)
                    finally:
                        llm.close()
                    summary["tables"][name] = table_brief(t)
                    if t["truncated"]:
                        summary["cut"][name] = t["stopped"]
            except Deadline:
                summary["cut"][name] = f"time slice ended ({time.perf_counter() - t0:.0f}s)"
                log(f"{name}: {summary['cut'][name]}")
            except Exception as e:   # record and go on with the next step
                summary["errors"][name] = f"{e.__class__.__name__}: {e}\n{traceback.format_exc()}"
                log(f"{name} FAILED: {e.__class__.__name__}: {e}")
                traceback.print_exc()
            finally:
                arm(deadline)
            log(f"{name} took {time.perf_counter() - t0:.1f}s")
            write_json(out_summary, summary)
            if time_left() < 1:
                summary["stopped"] = f"deadline during {name}"
                break
    except Deadline:   # between steps
        summary["stopped"] = summary["stopped"] or "deadline (SIGALRM)"
        log(summary["stopped"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        summary["seconds"] = round(time.time() - start, 1)
        write_json(out_summary, summary)
    log(f"done in {summary['seconds']}s; stopped: {summary['stopped'] or 'no'}; errors: {list(summary['errors']) or 'none'}")
    brief = {"switching": {m: {v: s[v].get("overhead") for v in ("default", "graph_cache_off") if v in s}
                           for m, s in summary["switching"].items()},
             "tables": {n: {k: t.get(k) for k in ("prompts_run", "speedup_median", "acceptance_rate",
                                                   "identical_outputs", "truncated")}
                        for n, t in summary["tables"].items()}}
    print(json.dumps(brief, indent=1), flush=True)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
