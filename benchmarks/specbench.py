#!/usr/bin/env python3
"""Spec-Bench on the CPU: swift-gguf beside llama.cpp's and llama-cpp-python's own speculation.

The full run (one command; peers first: `python3 -m benchmarks.peers`, ~20 min, once):

    .venv/bin/python -m benchmarks.specbench --model smollm2-135m     # ~60 min on 2 idle cores
    .venv/bin/python -m benchmarks.specbench --model gemma3-270m      # ~90 min
    .venv/bin/python -m benchmarks.report                              # tables into BENCHMARKS.md

Smoke run (1 question per category, 1 repetition; numbers meaningless on a shared CPU; without
the peers built, add --drop baseline --drop lookup --drop server: every ratio is then against `off`):

    .venv/bin/python -m benchmarks.specbench --per-category 1 --reps 1 --out /tmp/smoke.json

Questions: benchmarks/data/spec-bench/questions.jsonl (its README), `--per-category` of each of
the six Spec-Bench categories (evenly spaced through the category, so multi-turn spans MT-bench's
sub-categories; the package's loader, swift_gguf.optimize.spec_bench_questions). Multi-turn
questions run both turns: each arm's own first answer is appended to the conversation before the
second turn, as Spec-Bench does (and `swift-gguf bench`, swift_gguf/bench.py). Greedy,
`--max-tokens` per turn. Prompts (swift_gguf.template.conversation_renderer, in every worker): the
model's chat template as create_chat_completion applies it; a model without one (Gemma 3 270M is
a base model) gets "Question: <turn>\\nAnswer:" (and " <answer>\\n" after each answered turn), for
every arm alike.

Arms, each a long-lived worker process (benchmarks/specbench_worker.py, model loaded once),
run one after the other on each question, the order rotating per question and repetition
(A B C .. then B C .. A), per the protocol in docs/benchmark-protocol.md:
  baseline  unpatched llama-cpp-python 0.3.36, plain decoding (peer venv; every ratio's base)
  off       swift-gguf, spec="off" (patched build, plain decoding)
  auto      swift-gguf, spec="auto"
  --arm NAME:key=value,...   more swift-gguf arms, the pairs given to SwiftLlama as keyword
            arguments (e.g. --arm lookup:spec=swift,spec_type=ngram); values are parsed as JSON
            where they can be (numbers, true/false/null), else kept as strings
  server    llama.cpp's n-gram speculation, llama-server (unpatched peer) with --spec-type given by
            --server-spec; "best" (default) runs each of --server-candidates on the first question
            of every category first and keeps the fastest. Prompts go in as token ids.
  lookup    llama-cpp-python's LlamaPromptLookupDecoding (peer venv), num_pred_tokens 10
Swift arms run without a profile (profile=None: a fresh search, its time counted) unless the
arm says otherwise (e.g. profile=auto).

Timing (the same for every in-process arm, see specbench_worker.py): generated tokens only;
generation time runs from the first generated token (which prompt evaluation produces) to the
last, and covers all generated tokens but the first. llama-server: its own timings, which
measure the same span. Speed of an arm on a set of questions = its tokens over its time, all
turns and repetitions together; speedup = that over the baseline's on the same questions.

Oracle: an oracle prompt-lookup drafter replayed on the baseline's own outputs: at each step
the longest n-gram (3, then 2, then 1) ending the text so far that occurs earlier in prompt +
output; among its occurrences, the one whose continuation agrees longest with what the model
generates next; it drafts d <= that run (at most limits.MAX_VERIFY - 1 = 63, as auto may; before
2026-12-05 at most 16), d chosen to maximise (d+1)/v(d+1), and only
when that exceeds 1 (else a plain step). v(n) and the plain step time are measured in this run
by the `off` worker at several context lengths and interpolated; the oracle's speedup is plain
time over oracle time, both in seconds, so it is weighted like the measured speedups. That is a
gain over swift-gguf's own plain decoding; the table's oracle row multiplies it by `off`'s speedup
over the baseline (per category), so that it stands on the baseline's footing like every other
row (patch 0004 makes plain decoding faster than the unpatched library on AVX512-FP16 CPUs).
Efficiency = an arm's speedup / the oracle's; the "auto / off" row is speculation's own gain.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.oracle import OracleError, oracle_bound
from swift_gguf.optimize import SPEC_BENCH_CATEGORIES, spec_bench_questions

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = ROOT / "benchmarks" / "data" / "spec-bench" / "questions.jsonl"   # Apache-2.0, see its README
RESULTS = ROOT / "benchmarks" / "results"
WORKER = "benchmarks.specbench_worker"   # run as a module from the repository root (either interpreter)
# Spec-Bench's own column order (the package's loader) and its leaderboard's column titles
CATEGORIES = list(SPEC_BENCH_CATEGORIES)
COLUMN_TITLES = ["Multi-turn Conversation", "Translation", "Summarization", "Question Answering",
                 "Mathematical Reasoning", "Retrieval-aug. Generation"]
COST_SIZES = (2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 64)   # up to limits.MAX_VERIFY: what auto and the oracle may verify


class BenchError(RuntimeError):
    """A setup or run problem; the message names the cause and the fix."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- questions -----------------------------------------------------------------------------------

def load_questions(path: Path, per_category: int) -> list[dict]:
    """`per_category` questions of each Spec-Bench category, evenly spaced through it (the package's
    loader, swift_gguf.optimize.spec_bench_questions): question_id, category (the question's own),
    column (Spec-Bench's), turns."""
    from swift_gguf.errors import SwiftGGUFError
    try:
        rows = spec_bench_questions(path, per_category)
    except SwiftGGUFError as e:
        raise BenchError(str(e)) from None
    return [{"question_id": r["question_id"], "category": r["source_category"], "column": r["category"],
             "turns": r["turns"]} for r in rows]


# -- arms ------------------------------------------------------------------------------------------

def parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_arm(spec: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, kwargs)."""
    name, sep, rest = spec.partition(":")
    if not sep or not name or not rest:
        raise BenchError(f"--arm {spec!r}: expected NAME:key=value,... (e.g. lookup:spec=swift,spec_type=ngram)")
    kwargs = {}
    for pair in rest.split(","):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise BenchError(f"--arm {spec!r}: {pair!r} is not key=value")
        kwargs[key.strip()] = parse_value(value.strip())
    return name, kwargs


class Worker:
    """One arm's process; requests and answers are JSON lines."""

    def __init__(self, name: str, label: str, python: str, cfg: dict, log_dir: Path, root: Path = ROOT):
        self.name, self.label, self.cfg = name, label, cfg
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "w")
        # root: the checkout whose worker and swift_gguf package the arm runs (the same interpreter,
        # so the same native library): another commit's policy in the same interleaved run
        self.proc = subprocess.Popen([python, "-m", WORKER, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=str(root))
        hello = self._read()
        self.info = hello.get("info", {})

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise BenchError(f"arm {self.name} exited (code {self.proc.returncode}); last lines of {self.log_path}:\n  "
                             + "\n  ".join(_tail(self.log_path)))
        msg = json.loads(line)
        if "error" in msg:
            raise BenchError(f"arm {self.name}: {msg['error']}\n(log: {self.log_path})")
        return msg

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


def _tail(path: Path, n: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def peer_paths() -> tuple[Path, Path]:
    from benchmarks.peers import lcp_python, server_binary
    return lcp_python(), server_binary()


def start_arms(opts, model: str, log_dir: Path, server_spec: str | None) -> list[Worker]:
    lcp, server = peer_paths()
    peers = {"baseline", "lookup"} - set(opts.drop)
    need = [p for p, used in ((lcp, bool(peers)), (server, server_spec is not None)) if used and not p.exists()]
    if need:
        raise BenchError(f"the unpatched peers are not built ({', '.join(map(str, need))} missing).\n"
                         "Fix: python3 -m benchmarks.peers (about 20 minutes on 2 cores, once); or, for a "
                         "smoke run, --drop baseline --drop lookup --drop server.")
    base = {"model": model, "n_ctx": opts.ctx, "threads": opts.threads, "format": opts.format}
    plan = [("baseline", "llama-cpp-python (unpatched, plain)", str(lcp), {"kind": "lcp"}),
            ("off", "swift-gguf off", sys.executable, {"kind": "swift", "kwargs": {"spec": "off"}}),
            ("auto", "swift-gguf auto", sys.executable, {"kind": "swift", "kwargs": {"spec": "auto"}})]
    for spec in opts.arm:
        name, kwargs = parse_arm(spec)
        root = arm_root(kwargs.pop("root", None))
        where = "" if root == ROOT else f" at {checkout_commit(root)}"
        plan.append((name, f"swift-gguf{where} {name} ({', '.join(f'{k}={v}' for k, v in kwargs.items())})",
                     sys.executable, {"kind": "swift", "kwargs": kwargs, **({"root": str(root)} if root != ROOT else {})}))
    if server_spec is not None:
        plan.append(server_plan(server_spec, opts, log_dir))
    plan.append(("lookup", f"LlamaPromptLookupDecoding (num_pred_tokens={opts.lookup_tokens})", str(lcp),
                 {"kind": "lookup", "kwargs": {"num_pred_tokens": opts.lookup_tokens}}))
    names = [p[0] for p in plan]
    if len(set(names)) != len(names):
        raise BenchError(f"two arms share a name ({', '.join(names)}); give --arm a unique NAME")
    plan = [p for p in plan if p[0] not in opts.drop or p[0] == "off"]
    workers = []
    try:
        for name, label, python, cfg in plan:
            say(f"  starting {name}: {label}")
            workers.append(Worker(name, label, python, {**base, **cfg}, log_dir, Path(cfg.get("root", ROOT))))
    except BaseException:
        for w in workers:
            w.close()
        raise
    return workers


def arm_root(path) -> Path:
    """An arm's checkout (--arm NAME:root=PATH,...): another commit of this repository, e.g. a
    `git worktree` of the commit before a change, to compare policies in one interleaved run."""
    if path is None:
        return ROOT
    root = Path(str(path)).expanduser().resolve()
    if not (root / "swift_gguf").is_dir() or not (root / "benchmarks" / "specbench_worker.py").is_file():
        raise BenchError(f"--arm root={path}: not a swift-gguf checkout (no swift_gguf/ and "
                         "benchmarks/specbench_worker.py there). Fix: git worktree add /tmp/before <commit>")
    return root


def checkout_commit(root: Path) -> str:
    """The short commit a checkout is at ('?' when git cannot say)."""
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def server_plan(spec_type: str, opts, log_dir: Path) -> tuple:
    _, server = peer_paths()
    extra = opts.server_args.split() if opts.server_args else []
    label = f"llama.cpp llama-server --spec-type {spec_type}" + (f" {opts.server_args}" if extra else "")
    return (f"server-{spec_type}", label, str(peer_paths()[0]),
            {"kind": "server", "server": str(server), "spec_type": spec_type, "server_args": extra,
             "log": str(log_dir / f"llama-server-{spec_type}.out")})


def warm_up(workers: list[Worker], max_tokens: int = 8) -> None:
    """One short generation per arm: graphs, caches and swift's cost calibration before timing."""
    for w in workers:
        w.ask({"op": "run", "turns": ["Say hello."], "max_tokens": max_tokens})


def pick_server_spec(opts, model: str, questions: list[dict], log_dir: Path) -> tuple[str, dict]:
    """The fastest --server-candidates type on the first question of each category (turn 1)."""
    firsts = [next(q for q in questions if q["column"] == c) for c in CATEGORIES]
    base = {"model": model, "n_ctx": opts.ctx, "threads": opts.threads, "format": opts.format}
    speeds = {}
    for spec in opts.server_candidates.split(","):
        name, label, python, cfg = server_plan(spec.strip(), opts, log_dir)
        say(f"  choosing the llama-server spec type: {spec} on {len(firsts)} questions")
        w = Worker(name, label, python, {**base, **cfg}, log_dir)
        try:
            warm_up([w])
            toks = secs = 0.0
            for q in firsts:
                t = w.ask({"op": "run", "turns": q["turns"][:1], "max_tokens": opts.max_tokens})["turns"][0]
                toks += t["gen_tokens"]
                secs += t["gen_s"]
            speeds[spec.strip()] = toks / secs if secs else 0.0
        finally:
            w.close()
    best = max(speeds, key=speeds.get)
    say("  llama-server spec types, tokens/s on the selection: "
        + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items()) + f" -> {best}")
    return best, {"questions": [q["question_id"] for q in firsts], "tokens_per_second": speeds, "chosen": best}


# -- the run ------------------------------------------------------------------------------------------

def run(opts) -> dict:
    from swift_gguf.models import resolve_model
    model = str(resolve_model(opts.model))
    questions = load_questions(Path(opts.questions), opts.per_category)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from swift_gguf.paths import cache_dir
    log_dir = cache_dir() / "specbench" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    say(f"Spec-Bench: {len(questions)} questions x {opts.reps} repetitions, model {model}; logs in {log_dir}")
    start = time.monotonic()
    selection = None
    server_spec = None if "server" in opts.drop else opts.server_spec
    if server_spec == "best":
        server_spec, selection = pick_server_spec(opts, model, questions, log_dir)
    workers = start_arms(opts, model, log_dir, server_spec)
    try:
        warm_up(workers)
        raw = {w.name: {} for w in workers}
        total = len(questions) * opts.reps * len(workers)
        done = 0
        for rep in range(opts.reps):
            for qi, q in enumerate(questions):
                k = (qi + rep) % len(workers)
                for w in workers[k:] + workers[:k]:
                    res = w.ask({"op": "run", "turns": q["turns"], "max_tokens": opts.max_tokens,
                                 "return_prompt": w.name == base_arm(raw) and rep == 0})
                    raw[w.name].setdefault(str(q["question_id"]), []).append(res["turns"])
                    done += 1
                el = time.monotonic() - start
                say(f"[{done}/{total}] rep {rep + 1} q{q['question_id']} ({q['column']}): "
                    + " ".join(f"{w.name} {_tps(raw[w.name][str(q['question_id'])][-1]):.0f}" for w in workers)
                    + f" tok/s; {el / 60:.1f} min, ~{el / done * (total - done) / 60:.0f} min left")
        off = next(w for w in workers if w.name == "off")
        contexts = cost_contexts(raw[base_arm(raw)], opts.ctx)
        say(f"  measuring v(n) at contexts {contexts} (swift-gguf off worker)")
        costs = off.ask({"op": "costs", "contexts": contexts, "sizes": list(COST_SIZES), "reps": 3})["costs"]
        infos = {w.name: {"label": w.label, "kind": w.cfg["kind"], "kwargs": w.cfg.get("kwargs", {}),
                          "info": w.info} for w in workers}
    finally:
        for w in workers:
            w.close()
    result = {
        "benchmark": "spec-bench",
        "config": config(opts, model, questions, selection, time.monotonic() - start),
        "arms": infos,
        "questions": [{"question_id": q["question_id"], "category": q["category"], "column": q["column"],
                       "turns": len(q["turns"])} for q in questions],
        "raw": raw,
        "verify_costs": costs,
    }
    result["table"] = summarize(result)
    return result


def _tps(turns: list[dict]) -> float:
    t = sum(x["gen_tokens"] for x in turns)
    s = sum(x["gen_s"] for x in turns)
    return t / s if s else 0.0


def cost_contexts(baseline: dict, n_ctx: int) -> list[int]:
    """Context lengths spanning where the baseline generated (min, quartiles, max), for v(n)."""
    ctxs = sorted(t["prompt_tokens"] + t["gen_tokens"] // 2 for reps in baseline.values() for t in reps[0])
    picks = [ctxs[min(int(q * len(ctxs)), len(ctxs) - 1)] for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    out = sorted({max(16, -(-p // 16) * 16) for p in picks})
    return [c for c in out if c + max(COST_SIZES) + 1 <= n_ctx]


def config(opts, model: str, questions: list[dict], selection, seconds: float) -> dict:
    import platform
    from native.build import read_pin
    return {"model": model, "model_name": opts.model, "questions_file": str(opts.questions),
            "per_category": opts.per_category, "questions": len(questions), "reps": opts.reps,
            "max_tokens": opts.max_tokens, "n_ctx": opts.ctx, "threads": opts.threads,
            "format": opts.format, "greedy": True, "flash_attn": True, "pin": read_pin(),
            "server_selection": selection, "server_args": opts.server_args,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu": _cpu_name(), "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(seconds, 1), "command": " ".join(["python -m benchmarks.specbench", *sys.argv[1:]])}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# -- analysis -----------------------------------------------------------------------------------------

def base_arm(raw: dict) -> str:
    """The arm every ratio is taken against: the unpatched baseline, or `off` where it was dropped
    (a smoke run without the peers)."""
    return "baseline" if "baseline" in raw else "off"


def summarize(result: dict) -> dict:
    """Per arm: speedup per category and overall, mean accepted, identical outputs; the oracle."""
    cat_of = {str(q["question_id"]): q["column"] for q in result["questions"]}
    raw = result["raw"]
    base = raw[base_arm(raw)]
    speeds = {arm: _speeds(runs, cat_of) for arm, runs in raw.items()}
    ref = speeds[base_arm(raw)]
    n_reps = min(len(reps) for reps in base.values())
    rows = {}
    for arm, runs in raw.items():
        sp = speeds[arm]
        spec = [t.get("spec") or {} for reps in runs.values() for turns in reps for t in turns]
        cycles = sum(s.get("cycles", 0) for s in spec)
        accepted = sum(s.get("accepted", 0) for s in spec)
        drafted = sum(s.get("drafted", 0) for s in spec)
        rows[arm] = {
            "label": result["arms"][arm]["label"],
            "speedup": {c: _ratio(sp["by_cat"].get(c), ref["by_cat"].get(c)) for c in CATEGORIES},
            "speedup_overall": _ratio(sp["overall"], ref["overall"]),
            # the same ratio within each repetition: its spread is the run's noise
            "speedup_overall_by_rep": [_ratio(_speeds(_rep(runs, k), cat_of)["overall"],
                                              _speeds(_rep(base, k), cat_of)["overall"]) for k in range(n_reps)],
            "tokens_per_second": round(sp["overall"], 3),
            "drafted": drafted, "accepted": accepted, "cycles": cycles,
            # Spec-Bench's "mean accepted tokens": tokens per verification cycle, bonus included
            "mean_accepted_tokens": round(1 + accepted / cycles, 3) if cycles else (1.0 if arm == "baseline" else None),
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
            "identical": sum(_identical(runs.get(qid), base[qid]) for qid in base),
            "worst_question": _worst_question(runs, base),
            "questions": len(base),
            "prompt_seconds": round(sum(t["prompt_s"] for reps in runs.values() for turns in reps for t in turns), 3),
        }
    oracle = oracle_bound(result, base_arm(raw))
    if "off" in rows:   # on the baseline's footing: swift-gguf's own plain decoding times the oracle's gain
        _scale_oracle(oracle, rows["off"])
    for arm, row in rows.items():
        row["efficiency"] = {c: _ratio(row["speedup"][c], oracle["speedup"].get(c)) for c in CATEGORIES}
        row["efficiency_overall"] = _ratio(row["speedup_overall"], oracle["speedup_overall"])
    return {"rows": rows, "oracle": oracle}


def _speeds(runs: dict, cat_of: dict) -> dict:
    tok, sec = {}, {}
    for qid, reps in runs.items():
        c = cat_of[qid]
        for turns in reps:
            for t in turns:
                tok[c] = tok.get(c, 0) + t["gen_tokens"]
                sec[c] = sec.get(c, 0.0) + t["gen_s"]
    by_cat = {c: tok[c] / sec[c] for c in tok if sec[c] > 0}
    all_s = sum(sec.values())
    return {"by_cat": by_cat, "overall": sum(tok.values()) / all_s if all_s else 0.0}


def _worst_question(runs: dict, base: dict) -> list | None:
    """[question id, speedup] of the question this arm is slowest on against the baseline (its
    repetitions and turns pooled, as the overall speed pools them): the floor a user meets."""
    ratios = [(qid, _ratio(_tps([t for turns in runs[qid] for t in turns]),
                           _tps([t for turns in base[qid] for t in turns]))) for qid in base if runs.get(qid)]
    ratios = [(qid, r) for qid, r in ratios if r is not None]
    return list(min(ratios, key=lambda x: x[1])) if ratios else None


def _rep(runs: dict, k: int) -> dict:
    return {qid: reps[k:k + 1] for qid, reps in runs.items()}


def _ratio(a, b):
    return round(a / b, 4) if a and b else None


def _answers(turns: list[dict]) -> list[list[int]]:
    return [t["answer"] for t in turns]


def _identical(reps: list | None, base_reps: list) -> bool:
    """Every repetition's answers (all turns) equal the baseline's first repetition's."""
    if not reps:
        return False
    ref = _answers(base_reps[0])
    return all(_answers(turns) == ref for turns in reps)


def _scale_oracle(oracle: dict, off: dict) -> None:
    """The oracle's speedups are over the `off` worker's plain decoding (its costs are measured
    there); where that differs from the baseline (patch 0004 makes plain decoding faster on
    AVX512-FP16 CPUs), the bound an arm is held to is that plain speed times the oracle's gain."""
    oracle["speedup_over_plain"] = dict(oracle["speedup"])
    oracle["speedup_overall_over_plain"] = oracle["speedup_overall"]
    oracle["speedup"] = {c: round(x * off["speedup"][c], 4) for c, x in oracle["speedup"].items()
                         if off["speedup"].get(c)}
    if oracle["speedup_overall"] and off["speedup_overall"]:
        oracle["speedup_overall"] = round(oracle["speedup_overall"] * off["speedup_overall"], 4)


# -- tables -------------------------------------------------------------------------------------------

def markdown_table(result: dict) -> str:
    """Spec-Bench's own format: rows = arms, the six category columns, mean accepted tokens, overall."""
    t = result["table"]
    head = ("| arm | " + " | ".join(COLUMN_TITLES)
            + " | #Mean Accepted Tokens | Overall | slowest question | identical outputs |")
    lines = [head, "|---|" + "---|" * (len(COLUMN_TITLES) + 4)]
    for arm, r in t["rows"].items():
        cells = [_x(r["speedup"][c]) for c in CATEGORIES]
        mat = "-" if r["mean_accepted_tokens"] is None else f"{r['mean_accepted_tokens']:.2f}"
        worst = r.get("worst_question")   # (absent from runs summarized before it was recorded)
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {mat} | {_x(r['speedup_overall'])} | "
                     f"{'-' if not worst else f'{_x(worst[1])} (q{worst[0]})'} | {r['identical']}/{r['questions']} |")
    o, rows = t["oracle"], t["rows"]
    lines.append("| oracle prompt lookup (bound, baseline's outputs, this run's v(n)) | "
                 + " | ".join(_x(o["speedup"].get(c)) for c in CATEGORIES) + f" | - | {_x(o['speedup_overall'])} | - | - |")
    speculating = {arm: r for arm, r in rows.items() if result["arms"][arm]["kind"] == "swift" and arm != "off"}
    if "off" in rows:
        off = rows["off"]
        for arm, r in speculating.items():
            lines.append(f"| {arm} / off (speculation's own gain; oracle's: "
                         f"{_x(o.get('speedup_overall_over_plain'))}) | "
                         + " | ".join(_x(_ratio(r["speedup"][c], off["speedup"][c])) for c in CATEGORIES)
                         + f" | - | {_x(_ratio(r['speedup_overall'], off['speedup_overall']))} | - | - |")
    for arm, r in speculating.items():
        lines.append(f"| efficiency of {arm} (speedup / oracle) | "
                     + " | ".join(_f(r["efficiency"][c]) for c in CATEGORIES)
                     + f" | - | {_f(r['efficiency_overall'])} | - | - |")
    return "\n".join(lines)


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}×"


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def search_line(result: dict) -> str:
    """Per speculating swift-gguf arm: the layer search's seconds, their share of generation time, and
    its probes by the end of the run (a search that spends time and never probes is a defect: the
    2026-12-05 runs showed 0 probes for ~2% of generation time)."""
    parts = []
    for arm, runs in result["raw"].items():
        if result["arms"][arm]["kind"] != "swift" or arm == "off":
            continue
        turns = [t for reps in runs.values() for turns in reps for t in turns]
        secs = sum((t.get("spec") or {}).get("t_search", 0.0) for t in turns)
        gen = sum(t["gen_s"] for t in turns)
        probes = max(((t.get("spec") or {}).get("search_probes", 0) for t in turns), default=0)
        parts.append(f"{arm}: {secs:.2f} s ({secs / gen:.1%} of generation), {probes} probes" if gen else f"{arm}: -")
    return "; ".join(parts)


def costs_line(result: dict) -> str:
    parts = []
    for c, m in sorted(result["verify_costs"].items(), key=lambda kv: int(kv[0])):
        v = m["v"]
        parts.append(f"ctx {c}: t1 {m['t1'] * 1000:.1f} ms, v(2) {v['2']:.2f} v(5) {v['5']:.2f} v(9) {v['9']:.2f} v(17) {v['17']:.2f}")
    return "; ".join(parts)


# -- command line -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="alias or .gguf path (default: %(default)s)")
    ap.add_argument("--questions", default=str(QUESTIONS), help="Spec-Bench questions.jsonl")
    ap.add_argument("--per-category", type=int, default=6, help="questions per category (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the whole interleaved set (default: %(default)s)")
    ap.add_argument("-n", "--max-tokens", type=int, default=128, help="new tokens per turn (default: %(default)s)")
    ap.add_argument("-c", "--ctx", type=int, default=2048,
                    help="context size; the longest Spec-Bench prompt plus two turns fits (default: %(default)s)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--format", choices=["auto", "chat", "plain"], default="auto",
                    help="prompt format: the chat template, or 'Question: ...\\nAnswer:' (auto: chat if the model has a template)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME:key=value,...",
                    help="an extra swift-gguf arm (SwiftLlama keyword arguments; root=PATH runs another checkout of "
                         "this repository, e.g. a git worktree of an earlier commit); repeatable")
    ap.add_argument("--server-spec", default="best",
                    help="llama-server --spec-type for its arm, or 'best' (default): the fastest of --server-candidates")
    ap.add_argument("--server-candidates", default="ngram-simple,ngram-mod")
    ap.add_argument("--server-args", default="", help="extra llama-server arguments, e.g. '--spec-ngram-simple-size-n 3'")
    ap.add_argument("--lookup-tokens", type=int, default=10, help="LlamaPromptLookupDecoding's num_pred_tokens")
    ap.add_argument("--drop", action="append", default=[], choices=["baseline", "auto", "server", "lookup"],
                    help="leave an arm out (repeatable); without the baseline (a smoke run without the "
                         "peers) every ratio is against `off`")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/specbench-<model>-<date>.json)")
    opts = ap.parse_args(argv)
    if opts.per_category < 1 or opts.reps < 1 or opts.max_tokens < 2:
        ap.error("--per-category and --reps must be at least 1, --max-tokens at least 2")
    try:
        result = run(opts)
    except (BenchError, OracleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    name = Path(opts.model).stem if opts.model.endswith(".gguf") else opts.model
    out = Path(opts.out) if opts.out else RESULTS / f"specbench-{name}-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown_table(result))
    print(f"\nv(n) measured: {costs_line(result)}")
    print(f"layer search: {search_line(result)}")
    print(f"\nwrote {out} ({result['config']['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
