#!/usr/bin/env python3
"""Spec-Bench on the GPU: swift-gguf `auto` against `off` (its plain decoding), per question.

    python3 -m benchmarks.gpu.gpu_specbench --model MODEL.gguf --out specbench.json          # GPU, all layers
    python3 -m benchmarks.gpu.gpu_specbench --cpu --per-category 1 --max-tokens 16 --out /tmp/sb.json

The GPU machine has no unpatched peer (benchmarks/peers.py builds it for the CPU), so the baseline is
swift-gguf's own plain decoding (`off`): the speedups are speculation's own gain ("auto / off" of the
CPU report), and `identical` counts the questions whose answers (every turn) are token for token
those of plain decoding, which patch 0007 (CUDA batch invariance) should make all of them.

It reuses benchmarks/specbench.py: the questions (`--per-category` of each of the six categories,
evenly spaced through it: 4 gives the 24 questions of issue 27), the arm processes
(benchmarks/specbench_worker.py: one model load per arm, each arm answers with its own first answer
appended before a second turn), the warm-up, the rotation of the arm order per question and the
speed/identity helpers. Here the questions are taken category by category in turn (round robin), so
that a run cut by its deadline (`--budget`/`--deadline`) still covers every category; the
per-category speedup is tokens over seconds of each arm within the category, as specbench.py has it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import specbench as sb   # questions, Worker, warm-up, speed helpers

ARMS = ("off", "auto")


def log(msg: str) -> None:
    print(f"[gpu_specbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def round_robin(questions: list[dict]) -> list[dict]:
    """The questions category by category in turn: a cut run keeps every category."""
    by_cat = {c: [q for q in questions if q["column"] == c] for c in sb.CATEGORIES}
    out = []
    for i in range(max((len(v) for v in by_cat.values()), default=0)):
        out += [qs[i] for qs in by_cat.values() if i < len(qs)]
    return out


def arm_cfg(model: str, spec: str, *, gpu: bool, flash_attn: bool, n_ctx: int, threads: int | None) -> dict:
    """A swift-gguf arm of specbench_worker.py, all layers on the GPU (or none with --cpu)."""
    return {"kind": "swift", "model": model, "n_ctx": n_ctx, "threads": threads, "format": "auto",
            "flash_attn": flash_attn, "kwargs": {"spec": spec, "n_gpu_layers": -1 if gpu else 0}}


def summarize(questions: list[dict], raw: dict) -> dict:
    """auto against off: speedup overall and per category, identical answers, drafts accepted."""
    done = [q for q in questions if all(str(q["question_id"]) in raw[a] for a in ARMS)]
    cat_of = {str(q["question_id"]): q["column"] for q in done}
    runs = {a: {qid: raw[a][qid] for qid in cat_of} for a in ARMS}
    speeds = {a: sb._speeds(runs[a], cat_of) for a in ARMS}
    spec = [t.get("spec") or {} for reps in runs["auto"].values() for turns in reps for t in turns]
    drafted = sum(s.get("drafted") or 0 for s in spec)
    accepted = sum(s.get("accepted") or 0 for s in spec)
    cycles = sum(s.get("cycles") or 0 for s in spec)
    per_q = []
    for q in done:
        qid = str(q["question_id"])
        a, o = runs["auto"][qid][0], runs["off"][qid][0]
        per_q.append({"question_id": q["question_id"], "category": q["column"], "turns": len(a),
                      "identical": sb._identical(runs["auto"][qid], runs["off"][qid]),
                      "first_difference": _first_difference(a, o),
                      "tokens": sum(t["gen_tokens"] for t in a),
                      "off_tps": round(sb._tps(o), 2), "auto_tps": round(sb._tps(a), 2),
                      "speedup": sb._ratio(sb._tps(a), sb._tps(o)),
                      "modes": sorted({m for t in a for m in ((t.get("spec") or {}).get("mode_used") or {})})})
    by_cat = {}
    for c in sb.CATEGORIES:
        qs = [p for p in per_q if p["category"] == c]
        if qs:
            by_cat[c] = {"questions": len(qs), "identical": sum(p["identical"] for p in qs),
                         "speedup": sb._ratio(speeds["auto"]["by_cat"].get(c), speeds["off"]["by_cat"].get(c)),
                         "off_tps": round(speeds["off"]["by_cat"].get(c, 0.0), 2),
                         "auto_tps": round(speeds["auto"]["by_cat"].get(c, 0.0), 2)}
    return {"questions_run": len(done), "questions_planned": len(questions),
            "identical": sum(p["identical"] for p in per_q),
            "speedup_overall": sb._ratio(speeds["auto"]["overall"], speeds["off"]["overall"]),
            "off_tps": round(speeds["off"]["overall"], 2), "auto_tps": round(speeds["auto"]["overall"], 2),
            "min_category_speedup": min((v["speedup"] for v in by_cat.values() if v["speedup"]), default=None),
            "drafted": drafted, "accepted": accepted, "cycles": cycles,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
            "mean_accepted_tokens": round(1 + accepted / cycles, 3) if cycles else None,
            "by_category": by_cat, "per_question": per_q}


def _first_difference(a: list[dict], o: list[dict]):
    """(turn, token index) where auto's answer first leaves off's, or None when identical."""
    for ti, (ta, to) in enumerate(zip(a, o)):
        x, y = ta["answer"], to["answer"]
        for k in range(min(len(x), len(y))):
            if x[k] != y[k]:
                return [ti, k]
        if len(x) != len(y):
            return [ti, min(len(x), len(y))]
    return None


def render_table(s: dict) -> str:
    lines = [f"{'category':<32} {'n':>3} {'ident':>6} {'off t/s':>9} {'auto t/s':>9} {'auto/off':>9}"]
    for c, v in s["by_category"].items():
        lines.append(f"{c:<32} {v['questions']:>3} {v['identical']:>6} {v['off_tps']:>9.1f} {v['auto_tps']:>9.1f} "
                     f"{(v['speedup'] or 0):>9.3f}")
    lines.append(f"{'overall':<32} {s['questions_run']:>3} {s['identical']:>6} {s['off_tps']:>9.1f} "
                 f"{s['auto_tps']:>9.1f} {(s['speedup_overall'] or 0):>9.3f}")
    return "\n".join(lines)


def run(model: str, *, per_category: int = 4, max_tokens: int = 128, n_ctx: int = 2048, gpu: bool = True,
        flash_attn: bool = True, threads: int | None = None, deadline: float | None = None,
        log_dir: Path | None = None, questions_file: Path = sb.QUESTIONS, result: dict | None = None) -> dict:
    """Both arms on the questions, until `deadline` (time.time()); fills and returns `result` (so that
    a caller interrupted mid-run keeps what was done)."""
    result = {} if result is None else result
    questions = round_robin(sb.load_questions(Path(questions_file), per_category))
    log_dir = Path(log_dir or os.environ.get("TMPDIR", "/tmp")) / f"gpu_specbench-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    raw: dict = {a: {} for a in ARMS}
    result.update(benchmark="spec-bench (gpu: auto vs off)", model=model, gpu=gpu, flash_attn=flash_attn,
                  n_ctx=n_ctx, max_tokens=max_tokens, per_category=per_category,
                  questions=[{"question_id": q["question_id"], "column": q["column"], "turns": len(q["turns"])}
                             for q in questions],
                  raw=raw, stopped="", log_dir=str(log_dir))
    start = time.time()
    workers = []
    try:
        for a in ARMS:
            log(f"starting arm {a}")
            workers.append(sb.Worker(a, f"swift-gguf {a}", sys.executable,
                                     arm_cfg(model, a, gpu=gpu, flash_attn=flash_attn, n_ctx=n_ctx, threads=threads),
                                     log_dir))
        result["arms"] = {w.name: w.info for w in workers}
        sb.warm_up(workers)
        result["warm_up_seconds"] = round(time.time() - start, 2)
        t_q = None
        for qi, q in enumerate(questions):
            if deadline is not None and t_q is not None and time.time() + 1.3 * t_q + 2 > deadline:
                result["stopped"] = f"deadline before question {qi + 1}/{len(questions)} (~{t_q:.1f}s each)"
                log(result["stopped"])
                break
            t0 = time.time()
            for w in workers[qi % 2:] + workers[:qi % 2]:   # the order alternates, as specbench.py rotates it
                res = w.ask({"op": "run", "turns": q["turns"], "max_tokens": max_tokens})
                raw[w.name][str(q["question_id"])] = [res["turns"]]
            dt = time.time() - t0
            t_q = dt if t_q is None else 0.5 * (t_q + dt)
            a, o = raw["auto"][str(q["question_id"])][0], raw["off"][str(q["question_id"])][0]
            log(f"q{q['question_id']} ({q['column']}): off {sb._tps(o):.0f} t/s, auto {sb._tps(a):.0f} t/s, "
                f"identical {sb._identical([a], [o])}, {dt:.1f}s")
    finally:
        for w in workers:
            w.close()
        result["seconds"] = round(time.time() - start, 1)
        if any(raw[a] for a in ARMS):
            result["summary"] = summarize(questions, raw)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF path or registry alias (default smollm2-135m)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpu", action="store_true", help="n_gpu_layers=0 (tests the path on a machine without GPU)")
    ap.add_argument("--flash-attn", type=int, default=1)
    ap.add_argument("--per-category", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--budget", type=float, default=None, help="seconds from start")
    ap.add_argument("--questions", type=Path, default=sb.QUESTIONS)
    a = ap.parse_args(argv)
    from swift_gguf.models import resolve_model
    model = str(resolve_model(a.model or "smollm2-135m"))
    deadline = time.time() + a.budget if a.budget else None
    res = run(model, per_category=a.per_category, max_tokens=a.max_tokens, n_ctx=a.n_ctx, gpu=not a.cpu,
              flash_attn=bool(a.flash_attn), threads=a.threads, deadline=deadline, questions_file=a.questions)
    a.out.write_text(json.dumps(res, indent=1, default=str))
    if "summary" in res:
        print(render_table(res["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
