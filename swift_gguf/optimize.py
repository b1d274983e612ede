"""Offline search (`swift-gguf optimize`): the on-the-fly search, run to completion on prompts.

Generates a short answer to each calibration prompt (so that the search scores candidates
on the model's own text, as it does on the fly), then spends probes on that stream until
the search stops or the probe budget is used, and saves the profile.
"""
from __future__ import annotations

import json
import sys
import time
from importlib import resources
from pathlib import Path

from .engine import Stream
from .errors import SwiftGGUFError
from .generation import render_prompt


def load_prompts(path: str | None, default: str = "bench") -> list[dict]:
    """Prompts from a JSONL file, or the built-in set.

    A line is {"prompt": "..."} (optional "id", "category"), or a Spec-Bench question
    {"question_id", "category", "turns": [...]}: its first turn becomes "prompt", all of them
    "turns" (the benchmark runs every turn), and Spec-Bench's column ("spec_bench_category",
    where present) its category.
    """
    if path is None:
        text = resources.files("swift_gguf").joinpath("data", f"{default}.jsonl").read_text(encoding="utf-8")
        source = f"built-in {default} prompts"
    else:
        p = Path(path)
        if not p.is_file():
            raise SwiftGGUFError(f"prompts file {path} does not exist.\nFix: pass a JSONL file with one "
                                 '{"prompt": "..."} object per line.')
        text = p.read_text(encoding="utf-8", errors="replace")
        source = str(p)
    prompts = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SwiftGGUFError(f"{source}, line {lineno}: not valid JSON ({e.msg}); a prompts file is JSONL.\n"
                                 'Fix: one JSON object per line, e.g. {"prompt": "Hello"}.') from None
        if isinstance(row, dict) and "turns" in row and "prompt" not in row:
            row = _spec_bench_row(row, source, lineno)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise SwiftGGUFError(f"{source}, line {lineno}: no non-empty \"prompt\" string field.\n"
                                 'Fix: each line needs {"prompt": "..."} (or Spec-Bench\'s {"turns": ["..."]}).')
        row.setdefault("id", f"p{lineno:02d}")
        row.setdefault("category", "")
        prompts.append(row)
    if not prompts:
        raise SwiftGGUFError(f"{source} holds no prompts.\n"
                             'Fix: add one JSON object per line, e.g. {"prompt": "Hello"}.')
    return prompts


def _spec_bench_row(row: dict, source: str, lineno: int) -> dict:
    turns = row["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise SwiftGGUFError(f"{source}, line {lineno}: \"turns\" must be a list of non-empty strings.\n"
                             'Fix: e.g. {"question_id": 1, "category": "qa", "turns": ["Who wrote Hamlet?"]}.')
    out = {"prompt": turns[0], "turns": turns,
           "category": str(row.get("spec_bench_category") or row.get("category") or ""),
           "source_category": str(row.get("category") or "")}   # the question's own (MT-bench's "writing", ...)
    if "question_id" in row:
        out["id"] = str(row["question_id"])
        out["question_id"] = row["question_id"]
    return out


# Spec-Bench's categories (its "spec_bench_category"), in its own column order
SPEC_BENCH_CATEGORIES = ("multi-turn conversation", "translation", "summarization", "question answering",
                         "mathematical reasoning", "retrieval-augmented generation")


def spec_bench_questions(path: str | Path, per_category: int | None = None) -> list[dict]:
    """The one Spec-Bench loader: load_prompts' rows of a Spec-Bench questions file (category:
    Spec-Bench's column; question_id and source_category kept), `per_category` of each of its six
    categories evenly spaced through the category (so multi-turn spans MT-bench's sub-categories;
    None: all), in Spec-Bench's column order."""
    by_cat: dict[str, list[dict]] = {}
    for row in load_prompts(str(path)):
        by_cat.setdefault(row["category"], []).append(row)
    missing = [c for c in SPEC_BENCH_CATEGORIES if c not in by_cat]
    if missing:
        raise SwiftGGUFError(f"{path} has no questions of {', '.join(missing)}.\n"
                             "Fix: use Spec-Bench's file with the spec_bench_category field (benchmarks/data/spec-bench).")
    out = []
    for cat in SPEC_BENCH_CATEGORIES:
        qs = by_cat[cat]
        n = len(qs) if per_category is None else min(per_category, len(qs))
        out += [qs[i * len(qs) // n] for i in range(n)]
    return out


def _stream_of(llm) -> Stream:
    """The stream the last generation left: KV tokens plus the pending last token."""
    tokens = [int(t) for t in llm.input_ids[:llm.n_tokens]]
    return Stream(tokens + [llm.last_tokens[-1].id], llm.n_tokens)


def run_optimize(llm, prompts: list[dict], *, seed: int = 0, max_probes: int = 400, tokens: int = 96,
                 progress: bool = True, plot: str | None = None) -> dict:
    """Run the search on the prompts until it stops or max_probes; save and return the result."""
    engine = llm.engine
    search = engine.search
    search.reopen(seed=seed)   # a round of its own on the calibration prompts, reproducible by seed
    use_template = bool(llm.metadata.get("tokenizer.chat_template"))
    bar = _bar(max_probes, progress)
    start = time.perf_counter()
    probes0 = search.state.probes
    try:
        for p in prompts:
            if search.state.probes - probes0 >= max_probes:
                break
            rendered = render_prompt(llm, p["prompt"], use_template)
            with llm.speculation("off"):   # generate the calibration text plainly: all time goes to probes
                for _ in llm.generate_tokens(rendered, llm.sampling_params(temp=0.0), max_tokens=tokens):
                    pass
            if llm.n_tokens < search.needs():
                continue
            stream = _stream_of(llm)
            if not engine.costs.known:
                engine.calibrate(stream)
            share = max(1, (max_probes - (search.state.probes - probes0)) // max(1, len(prompts) // 4))
            for _ in range(share * 4):
                if not search.active or search.state.probes - probes0 >= max_probes:
                    break
                before = search.state.probes
                search.step(llm.rt, stream.tokens, stream.n_past)
                bar.update(search.state.probes - before)
                bar.set_postfix_str(_postfix(search.state))
            if not search.active:
                break
    finally:
        bar.close()
    path = llm.save_profile(found_by="swift-gguf optimize")
    result = summary(llm, time.perf_counter() - start, path)
    if progress:
        print(render_summary(result), file=sys.stderr)
    if plot:
        plot_search(llm, plot)
    return result


def _postfix(st) -> str:
    if st.best is None:
        return "scanning sub-layers"
    return f"best {st.best.describe()}, matchness {st.best_matchness:.2f}, predicted {st.best_predicted:.2f}x"


def _bar(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="probes", unit="probe", disable=not enabled, file=sys.stderr)


def summary(llm, seconds: float, path) -> dict:
    st = llm.engine.search.state
    skip = st.best.to_json() if st.best is not None else {"attention": [], "ffn": []}
    return {"matchness": round(st.best_matchness, 4), "predicted_speedup": round(st.best_predicted, 4),
            "probes": st.probes, "skip": skip, "draft_length": st.best_draft_length,
            "search_done": st.done, "seconds": round(seconds, 2), "costs": llm.engine.costs.to_json(),
            "profile": str(path) if path else None, "n_layer": st.n_layer}


def render_summary(r: dict) -> str:
    rows = [("skip (attention)", ", ".join(map(str, r["skip"]["attention"])) or "-"),
            ("skip (ffn)", ", ".join(map(str, r["skip"]["ffn"])) or "-"),
            ("matchness", f"{r['matchness']:.3f}"),
            ("predicted speedup", f"{r['predicted_speedup']:.3f}x (draft length {r['draft_length']})"),
            ("probes", str(r["probes"])), ("time", f"{r['seconds']:.1f}s"),
            ("profile", r["profile"] or "(not saved)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot_search(llm, path: str) -> None:
    """Per-sub-layer importance (KL when skipped alone) and matchness over probes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    st = llm.engine.search.state
    n_inner = st.n_layer - 2
    imp = np.asarray(st.importance, dtype=float)
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 7))
    layers = np.arange(1, n_inner + 1)
    a.bar(layers - 0.2, imp[:n_inner], width=0.4, label="attention")
    a.bar(layers + 0.2, imp[n_inner:], width=0.4, label="FFN")
    a.set_yscale("symlog", linthresh=1e-3)
    a.set_xlabel("layer")
    a.set_ylabel("KL when skipped alone")
    a.legend()
    hist = [h for h in st.history if h["phase"] not in ("importance", "layer-importance")]
    if hist:
        b.plot([h["probe"] for h in hist], [h["matchness"] for h in hist], ".", label="matchness")
        b.plot([h["probe"] for h in hist], [h["predicted"] for h in hist], "x", label="predicted speedup")
    b.set_xlabel("probe")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
