#!/usr/bin/env python3
"""swift-gguf on a GPU: batch invariance, fixture tables, Spec-Bench, in one run, within a deadline.

    python3 -m benchmarks.gpu.gpu_bench --out OUT                 # GPU (n_gpu_layers=-1, flash attention on)
    python3 -m benchmarks.gpu.gpu_bench --cpu --out OUT --only bitwise,specbench --limit 1 --max-tokens 16
    python3 -m benchmarks.gpu.gpu_bench --prepare-only            # build the fixtures only (no llama.cpp)

Default steps, in priority order (issue 27; each gets a share of the time left, see WEIGHT):
  bitwise    max |logit difference| between every row of a verification batch of n (2, 5, 9, 17, 32;
             Runtime.verify, invariance on) and the one-token decodes of the same tokens, after contexts
             of 100, 1010 (a batch across 1024 cells: llama.cpp splits it, patch 0007) and 1100 tokens,
             flash attention on and off, on SmolLM2 and the fixtures K=3 and K=1 (swift_gguf.selfcheck,
             one child process per model and setting: a crash or abort is a result, not the end of the run)
  k1_swift, k3_swift   the fixtures' tables with mode "swift" and the skip set of exactly the inserted
             blocks: acceptance must be 1.00 and every output identical where invariance holds
  specbench  Spec-Bench, `auto` against `off` per question (benchmarks/gpu/gpu_specbench.py)
  controls   SmolLM2 again with one switch of patch 0007 off at a time (GGML_SWIFT_CUDA_OFF), all of them
             off (a negative control: the check must see the difference), CUDA fusion off
             (GGML_CUDA_DISABLE_FUSION) and CUDA graphs off (GGML_CUDA_DISABLE_GRAPHS); when `bitwise`
             finds a difference they run right after it (they tell where it comes from), else last
Older steps, with --only: switch_smollm2, switch_k1, smollm2_auto, k1_auto, k3_auto:
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
Outputs in --out: summary.json (device, build, every step's summary), bitwise.json, <table>.json,
specbench.json (at most 8 files come back from the GPU machine with log.txt: keep --only short).
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
DEFAULT_STEPS = ("bitwise", "k1_swift", "k3_swift", "specbench", "controls")
ALL_STEPS = ("bitwise",) + SWITCHING + TABLES + ("specbench", "controls")
# share of the time left for each step among the weighted steps still to come; the unweighted
# (optional) steps get only what the others leave
WEIGHT = {"bitwise": 3, "switch_smollm2": 1, "switch_k1": 1, "k1_swift": 2, "k3_swift": 2, "smollm2_auto": 3,
          "k1_auto": 0, "k3_auto": 0, "specbench": 4, "controls": 0}
# bitwise: verification sizes and context lengths (1010 + 17 and + 32 cross 1024 cells)
BITWISE_SIZES = (2, 5, 9, 17, 32)
BITWISE_POSITIONS = (100, 1010, 1100)
# controls: (name, environment); each runs SmolLM2 with flash attention on and off
CONTROLS = (("all_switches_off", {"GGML_SWIFT_CUDA_OFF": "mmvq,mmvf,cols,fa"}),
            ("mmvq_off", {"GGML_SWIFT_CUDA_OFF": "mmvq"}),
            ("mmvf_off", {"GGML_SWIFT_CUDA_OFF": "mmvf"}),
            ("cols_off", {"GGML_SWIFT_CUDA_OFF": "cols"}),
            ("fa_off", {"GGML_SWIFT_CUDA_OFF": "fa"}),
            ("cuda_fusion_off", {"GGML_CUDA_DISABLE_FUSION": "1"}),
            ("cuda_graphs_off", {"GGML_CUDA_DISABLE_GRAPHS": "1"}))


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
                           flash_attn=bool(args.flash_attn), profile=None, verbose=False)
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


# -- bitwise check and controls (patch 0007) ------------------------------------------------------------

def bitwise_child(cfg: dict) -> dict:
    """In a child process: swift_gguf.selfcheck's comparison of verification rows with one-token decodes,
    summarized per (context, size). Returns what the parent prints as one JSON line."""
    t0 = time.time()
    from swift_gguf import native
    from swift_gguf.selfcheck import Setting, check_setting
    positions, sizes = tuple(cfg["positions"]), tuple(cfg["sizes"])
    res = check_setting(cfg["model"], Setting(flash_attn=bool(cfg["flash_attn"])), positions=positions,
                        sizes=sizes, n_gpu_layers=cfg["n_gpu_layers"])
    by = {f"L{L}_n{n}": 0.0 for L in positions for n in sizes}
    for m in res.mismatches:
        key = f"L{m.position - m.row}_n{m.batch}"
        by[key] = max(by.get(key, 0.0), m.max_diff)
    return {"passed": res.passed, "rows": res.rows, "mismatched_rows": len(res.mismatches),
            "max_diff": max((m.max_diff for m in res.mismatches), default=0.0), "error": res.error,
            "by_context_and_size": by,
            "first_mismatches": [{"position": m.position, "batch": m.batch, "row": m.row, "max_diff": m.max_diff}
                                 for m in res.mismatches[:24]],
            "cuda_invariance_symbol": hasattr_lib("ggml_backend_cuda_set_swift_invariant_batch"),
            "backends": native.backends(), "seconds": round(time.time() - t0, 2)}


def hasattr_lib(name: str) -> bool:
    from swift_gguf import native
    try:
        getattr(native._lib, name)
        return True
    except AttributeError:
        return False


def run_child(cfg: dict, env: dict, timeout: float) -> dict:
    """gpu_bench.py --bitwise-child in a process of its own, with `env` on top of ours."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bitwise-child", json.dumps(cfg)]
    full_env = dict(os.environ, **env)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 5), env=full_env)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-1500:]
        return {"error": f"timeout after {timeout:.0f}s", "stderr_tail": tail.decode(errors="replace")
                if isinstance(tail, bytes) else tail, "seconds": round(time.time() - t0, 2)}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"child exited with {p.returncode}", "stderr_tail": p.stderr[-2000:],
                "seconds": round(time.time() - t0, 2)}
    out = json.loads(lines[-1])
    out["seconds_with_start"] = round(time.time() - t0, 2)
    return out


def bitwise_models(a, fixtures: dict) -> list[tuple[str, str]]:
    models = [("smollm2", str(a.model)), ("fixture_k3", fixtures["k3"]["out"]), ("fixture_k1", fixtures["k1"]["out"])]
    if a.gemma and Path(a.gemma).exists():
        models.insert(1, ("gemma3", str(a.gemma)))
    return [m for m in models if not a.bitwise_models or m[0] in a.bitwise_models]


def run_bitwise(a, fixtures: dict, until: float, out: dict) -> dict:
    """Every model with flash attention on and off (GPU: all layers offloaded)."""
    out.update(positions=list(a.positions), sizes=list(a.sizes), n_gpu_layers=0 if a.cpu else -1, runs={})
    cases = [(name, path, fa) for name, path in bitwise_models(a, fixtures) for fa in (1, 0)]
    for i, (name, path, fa) in enumerate(cases):
        left = until - time.time()
        if left < 10:
            out["cut"] = f"time slice ended before {name} fa={fa}"
            break
        cfg = {"model": path, "flash_attn": fa, "positions": list(a.positions), "sizes": list(a.sizes),
               "n_gpu_layers": 0 if a.cpu else -1}
        # a share of what is left for each remaining case, at least 60 s (a model load and ~250 decodes)
        r = run_child(cfg, {}, max(left / (len(cases) - i), min(60.0, left)))
        out["runs"][f"{name}_fa{fa}"] = r
        log(f"bitwise {name} flash_attn={fa}: " + (f"ERROR {r['error']}" if r.get("error") else
            f"{'PASS' if r['passed'] else 'FAIL'} rows {r['rows']}, mismatched {r['mismatched_rows']}, "
            f"max |diff| {r['max_diff']:.3g} ({r['seconds']}s)"))
    runs = out["runs"].values()
    out["passed"] = bool(out["runs"]) and all(r.get("passed") for r in runs)
    out["max_diff"] = max((r.get("max_diff", 0.0) for r in runs), default=None)
    return out


def run_controls(a, until: float, out: dict) -> dict:
    """SmolLM2 with single switches of patch 0007 off, all of them off, CUDA fusion off, CUDA graphs off."""
    positions = (max(a.positions),)
    sizes = tuple(n for n in a.sizes if n in (2, 9, 17)) or tuple(a.sizes)
    out.update(positions=list(positions), sizes=list(sizes), runs={})
    wanted = [c for c in CONTROLS if not a.controls or c[0] in a.controls]
    cases = [(name, env, fa) for name, env in wanted for fa in (1, 0) if not (name == "fa_off" and fa == 0)]
    for i, (name, env, fa) in enumerate(cases):
        left = until - time.time()
        if left < 10:
            out["cut"] = f"time slice ended before {name} fa={fa}"
            break
        cfg = {"model": str(a.model), "flash_attn": fa, "positions": list(positions), "sizes": list(sizes),
               "n_gpu_layers": 0 if a.cpu else -1}
        r = run_child(cfg, env, max(left / (len(cases) - i), min(45.0, left)))
        r["env"] = env
        out["runs"][f"{name}_fa{fa}"] = r
        log(f"control {name} flash_attn={fa} {env}: " + (f"ERROR {r['error']}" if r.get("error") else
            f"{'PASS' if r['passed'] else 'FAIL'} mismatched {r['mismatched_rows']}/{r['rows']}, "
            f"max |diff| {r['max_diff']:.3g}"))
    return out


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
    ap.add_argument("--only", default="", help=f"comma list of {', '.join(ALL_STEPS)} "
                                                f"(default: {','.join(DEFAULT_STEPS)})")
    ap.add_argument("--flash-attn", type=int, default=1,
                    help="flash attention for the tables and Spec-Bench (bitwise and controls run both)")
    ap.add_argument("--positions", default=None, help=f"bitwise contexts (GPU {BITWISE_POSITIONS}, CPU 100)")
    ap.add_argument("--sizes", default=None, help=f"bitwise verification sizes (GPU {BITWISE_SIZES}, CPU 2,5)")
    ap.add_argument("--gemma", default=None, help="a Gemma 3 GGUF for the bitwise check too (when carried)")
    ap.add_argument("--bitwise-models", default="", help="comma list of smollm2, gemma3, fixture_k3, fixture_k1 "
                                                           "(default: all that are there)")
    ap.add_argument("--controls", default="", help=f"comma list of {', '.join(c[0] for c in CONTROLS)} (default all)")
    ap.add_argument("--sb-per-category", type=int, default=None, help="Spec-Bench questions per category (GPU 4, CPU 1)")
    ap.add_argument("--prepare-only", action="store_true", help="build the fixtures and exit (no llama.cpp)")
    ap.add_argument("--bitwise-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.bitwise_child:
        return a
    cpu = a.cpu
    a.limit = a.limit or (2 if cpu else 8)
    a.pairs = a.pairs or (1 if cpu else 3)
    a.max_tokens = a.max_tokens or (32 if cpu else 128)
    a.reps = a.reps or (10 if cpu else 50)
    a.budget = a.budget or (1800.0 if cpu else 330.0)
    if a.model is None:
        a.model = a.kit / "model.gguf" if (a.kit / "model.gguf").exists() else DEFAULT_MODEL
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in a.only if s not in ALL_STEPS]
    if unknown:
        ap.error(f"--only: unknown step(s) {unknown}; known: {', '.join(ALL_STEPS)}")
    a.positions = tuple(int(x) for x in a.positions.split(",")) if a.positions else \
        ((100,) if cpu else BITWISE_POSITIONS)
    a.sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else ((2, 5) if cpu else BITWISE_SIZES)
    a.controls = [c.strip() for c in a.controls.split(",") if c.strip()]
    a.bitwise_models = [c.strip() for c in a.bitwise_models.split(",") if c.strip()]
    a.sb_per_category = a.sb_per_category or (1 if cpu else 4)
    return a


def main(argv=None) -> int:
    a = parse(argv)
    if a.bitwise_child:   # one bitwise comparison in this (child) process; the result is the last line
        res = bitwise_child(json.loads(a.bitwise_child))
        print(json.dumps(res, default=str), flush=True)
        return 0
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
               "switching": {}, "tables": {}, "bitwise": {}, "controls": {}, "specbench": {},
               "cut": {}, "errors": {}, "stopped": ""}
    log(f"library {summary['library']['path']}, backends {summary['library']['backends']}, "
        f"graph cache symbol: {summary['library']['graph_cache_symbol']}, deadline in {time_left():.0f}s")
    if not a.cpu and not native.gpu_offload_supported():
        log("WARNING: this library cannot offload to a GPU; the numbers are CPU numbers")
    out_summary = a.out / "summary.json"
    write_json(out_summary, summary)
    prompts = load_prompts(None)[:a.limit]
    steps = [n for n in ALL_STEPS if n in a.only] if a.only else list(DEFAULT_STEPS)

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
                if name == "bitwise":
                    arm(until + 30)   # soft limits inside (child timeouts); the alarm only if they fail
                    res = run_bitwise(a, fixtures, until, summary["bitwise"])
                    write_json(a.out / "bitwise.json", {**res, "controls": summary["controls"]})
                    crashed = [k for k, r in res["runs"].items()
                               if k.endswith(f"_fa{int(bool(a.flash_attn))}") and r.get("error")]
                    if res["runs"] and len(crashed) == len(res["runs"]) // 2:
                        # every child with the tables' setting failed to run: the tables run in this process
                        # and would take the whole run down with them; Spec-Bench and controls use children
                        for t in [t for t in steps[i + 1:] if t in TABLES or t.startswith("switch_")]:
                            steps.remove(t)
                            summary["cut"][t] = "skipped: every bitwise child with this setting failed (see bitwise)"
                    if not res["passed"] and "controls" in steps[i + 1:]:
                        # a difference: the controls say where it comes from, before anything else
                        steps.remove("controls")
                        steps.insert(i + 1, "controls")
                        WEIGHT["controls"] = 3
                elif name == "controls":
                    arm(until + 30)
                    run_controls(a, until, summary["controls"])
                    write_json(a.out / "bitwise.json", {**summary["bitwise"], "controls": summary["controls"]})
                elif name == "specbench":
                    from benchmarks.gpu import gpu_specbench
                    arm(until + 40)   # gpu_specbench stops before a question it cannot finish by `until`
                    res = {}
                    try:
                        gpu_specbench.run(str(a.model), per_category=a.sb_per_category, max_tokens=a.max_tokens,
                                          n_ctx=max(a.n_ctx, 2048), gpu=not a.cpu, flash_attn=bool(a.flash_attn),
                                          threads=a.threads, deadline=until, log_dir=a.kit, result=res)
                    finally:
                        write_json(a.out / "specbench.json", res)
                        sm = res.get("summary", {})
                        summary["specbench"] = {k: v for k, v in sm.items() if k != "per_question"}
                        summary["specbench"]["stopped"] = res.get("stopped", "")
                        if sm:
                            print(gpu_specbench.render_table(sm), flush=True)
                elif name.startswith("switch_"):
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
    brief = {"bitwise": {k: ("ERROR " + r["error"]) if r.get("error") else (r["passed"], r["max_diff"])
                         for k, r in summary["bitwise"].get("runs", {}).items()},
             "controls": {k: ("ERROR " + r["error"]) if r.get("error") else (r["passed"], r["max_diff"])
                          for k, r in summary["controls"].get("runs", {}).items()},
             "specbench": {k: summary["specbench"].get(k) for k in ("questions_run", "identical", "speedup_overall",
                                                                     "min_category_speedup", "acceptance_rate")},
             "switching": {m: {v: s[v].get("overhead") for v in ("default", "graph_cache_off") if v in s}
                           for m, s in summary["switching"].items()},
             "tables": {n: {k: t.get(k) for k in ("prompts_run", "speedup_median", "acceptance_rate",
                                                   "identical_outputs", "truncated")}
                        for n, t in summary["tables"].items()}}
    print(json.dumps(brief, indent=1), flush=True)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
