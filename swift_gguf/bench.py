"""Benchmark: plain decoding vs swift-gguf (and prompt lookup as a peer), per the protocol in
docs/benchmark-protocol.md: same process, same model and context, interleaved
A B (C) A B (C) ..., per-pair ratios, median with min and max, generated tokens only
(prompt evaluation reported separately), search time included in swift's time.

Multi-turn questions (Spec-Bench's): every turn is run, and each arm's next turn sees that arm's
own earlier answers, as Spec-Bench runs them (benchmarks/specbench.py follows the same rule). With
lossless speculation the arms' answers are the same tokens anyway; where an arm's differ (the
prompt-lookup peer), its next prompt follows what it said, not what plain decoding said.

For every swift run the bound S is computed from that run's own measurements:
    S = (mean accepted + 1) / (mean drafted * c + v)
with c = draft time per drafted token and v = verification time per cycle, both over the
plain time per token of the paired plain run; efficiency = achieved / S.
"""
from __future__ import annotations

import platform
import statistics
import sys
import time

from .generation import render_prompt


def _peer(llm):
    """llama-cpp-python's own speculative path: Llama with LlamaPromptLookupDecoding."""
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    return llama_cpp.Llama(llm.model_path, n_ctx=llm.n_ctx(), n_threads=llm.n_threads,
                           n_threads_batch=llm.n_threads_batch, n_gpu_layers=llm.model_params.n_gpu_layers,
                           flash_attn=True, verbose=False,
                           # with a draft model Llama keeps every position's logits, but sizes that
                           # buffer by logits_all (else n_batch rows: longer prompts fail)
                           logits_all=True, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))


def _run_swift(llm, tokens, mode: str, max_tokens: int) -> dict:
    with llm.speculation(mode):
        llm.reset()
        ids = [t.id for t in llm.generate_tokens(tokens, llm.sampling_params(temp=0.0), max_tokens=max_tokens)]
    st = llm.last_stats
    gen = st.t_total - st.t_prompt
    return {"tokens": ids, "n": len(ids), "seconds": gen, "prompt_seconds": st.t_prompt,
            "tps": len(ids) / gen if gen > 0 else 0.0, "stats": st.to_dict()}


def _run_peer(peer, tokens, max_tokens: int, is_eog) -> dict:
    peer.reset()
    ids = []
    start = time.perf_counter()
    t_first = None
    for tok in peer.generate(tokens, temp=0.0):
        if t_first is None:
            t_first = time.perf_counter()
        ids.append(tok)
        if len(ids) >= max_tokens or is_eog(tok):
            break
    end = time.perf_counter()
    # the first token needs the prompt evaluation: count generation from it, like the swift runs
    gen = end - (t_first or start)
    return {"tokens": ids, "n": len(ids), "seconds": gen, "prompt_seconds": (t_first or end) - start,
            "tps": (len(ids) - 1) / gen if gen > 0 and len(ids) > 1 else 0.0}


def bound(stats: dict, t_plain: float) -> float | None:
    """Speedup bound from a swift run's own c, v and acceptance (None if it never speculated)."""
    cycles, drafted = stats["cycles"], stats["drafted"]
    if not cycles or not drafted or t_plain <= 0:
        return None
    c = stats["t_draft"] / drafted / t_plain
    v = stats["t_verify"] / cycles / t_plain
    return (stats["accepted"] / cycles + 1.0) / (drafted / cycles * c + v)


def run_bench(llm, prompts: list[dict], *, max_tokens: int = 128, pairs: int = 3, peer: bool = True,
              peer_pairs: int | None = None, mode: str = "auto", progress: bool = True,
              plot: str | None = None) -> dict:
    """Run the interleaved benchmark; returns one JSON-able dict (rows and summary).

    The peer runs in the first peer_pairs pairs of each prompt (default: all); its ratio is
    taken against the plain run of the same pair.
    """
    peer_pairs = pairs if peer_pairs is None else peer_pairs
    use_template = bool(llm.metadata.get("tokenizer.chat_template"))
    peer_llm = _peer(llm) if peer else None
    rows = []
    total = len(prompts) * pairs
    done = 0
    start = time.perf_counter()
    try:
        warm_up = _warm_up(llm, peer_llm, mode, use_template)
        for p in prompts:
            runs = {"plain": [], "swift": [], "peer": []}
            for i in range(pairs):
                # every turn of a multi-turn (Spec-Bench) question, each arm answering its own
                # conversation (the module docstring's rule), the arms interleaved turn by turn
                arms = {"plain": lambda t: _run_swift(llm, t, "off", max_tokens),
                        "swift": lambda t: _run_swift(llm, t, mode, max_tokens)}
                if peer_llm is not None and i < peer_pairs:
                    arms["peer"] = lambda t: _run_peer(peer_llm, t, max_tokens, llm.rt.is_eog)
                messages = {arm: [] for arm in arms}
                turns = {"plain": [], "swift": [], "peer": []}
                for turn in p.get("turns") or [p["prompt"]]:
                    for arm, generate in arms.items():
                        turns[arm].append(generate(_next_prompt(llm, messages[arm], turn, use_template)))
                        _answered(llm, messages[arm], turns[arm][-1]["tokens"])
                for arm, ts in turns.items():
                    if ts:
                        runs[arm].append(_merge_turns(ts))
                done += 1
                if progress:
                    _progress(done, total, start, p["id"], runs)
            rows.append(_row(p, runs))
    finally:
        if peer_llm is not None:
            peer_llm.close()
        if progress:
            print(file=sys.stderr)
    result = {"config": {**_config(llm, max_tokens, pairs, mode), "warm_up": warm_up},
              "rows": rows, "summary": _summary(rows),
              "by_category": _by_category(rows), "skip": llm.engine.skip.to_json() if llm.engine.skip else None,
              "search": {"probes": llm.engine.search.state.probes, "seconds": round(llm.engine.search.state.seconds, 3),
                         "matchness": round(llm.engine.search.state.best_matchness, 4)},
              "costs": llm.engine.costs.to_json()}
    if progress:
        print(render_table(result), file=sys.stderr)
    if plot:
        plot_bench(result, plot)
    return result


def _warm_up(llm, peer_llm, mode: str, use_template: bool) -> dict:
    """One short untimed generation per arm before the measured ones (as benchmarks/specbench.py
    does): graphs built, caches warm and swift's cost calibration measured (once per model: with a
    profile it is loaded instead). Returns what the calibration took, so that the report shows it."""
    tokens = _tokens(llm, render_prompt(llm, "Say hello.", use_template))
    _run_swift(llm, tokens, "off", 8)
    swift = _run_swift(llm, tokens, mode, 8)
    if peer_llm is not None:
        _run_peer(peer_llm, tokens, 8, llm.rt.is_eog)
    return {"calibration_seconds": round(swift["stats"]["t_calibrate"], 4)}


def _next_prompt(llm, messages: list[dict], turn: str, use_template: bool) -> list[int]:
    """The prompt of an arm's next turn: its conversation so far and the new question."""
    messages.append({"role": "user", "content": turn})
    return _tokens(llm, render_prompt(llm, messages if len(messages) > 1 else turn, use_template))


def _answered(llm, messages: list[dict], tokens: list[int]) -> None:
    """The arm's answer joins its conversation (without end-of-generation tokens)."""
    answer = [t for t in tokens if not llm.rt.is_eog(t)]
    messages.append({"role": "assistant", "content": llm.detokenize(answer).decode("utf-8", errors="replace")})


def _tokens(llm, rendered) -> list[int]:
    return list(rendered) if not isinstance(rendered, str) else llm.tokenize(rendered.encode(), add_bos=True, special=True)


ADDITIVE_STATS = ("tokens", "cycles", "drafted", "accepted", "plain_steps", "t_prompt", "t_calibrate", "t_draft", "t_verify",
                  "t_plain", "t_search", "t_total")


def _merge_turns(turns: list[dict]) -> dict:
    """One run over a question's turns: tokens and times added up (a single turn stays as it is)."""
    if len(turns) == 1:
        return turns[0]
    n, secs = sum(t["n"] for t in turns), sum(t["seconds"] for t in turns)
    out = {"tokens": [tok for t in turns for tok in t["tokens"]], "n": n, "seconds": secs,
           "prompt_seconds": sum(t["prompt_seconds"] for t in turns), "tps": n / secs if secs > 0 else 0.0,
           "turn_tokens": [t["n"] for t in turns]}
    if "stats" in turns[0]:
        stats = dict(turns[-1]["stats"])
        for key in ADDITIVE_STATS:
            stats[key] = sum(t["stats"][key] for t in turns)
        used = {t["stats"]["mode_used"] for t in turns}
        stats["mode_used"] = used.pop() if len(used) == 1 else "mixed"
        stats["draft_max"] = max(t["stats"]["draft_max"] for t in turns)
        out["stats"] = stats
    return out


def _progress(done, total, start, pid, runs) -> None:
    el = time.perf_counter() - start
    r = runs["swift"][-1]["tps"] / max(runs["plain"][-1]["tps"], 1e-9)
    msg = f"\r[{done}/{total}] {pid}: swift/plain {r:.2f}x, {el:.0f}s elapsed, ~{el / done * (total - done):.0f}s left "
    print(msg, end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)


def _ratios(num: list[dict], den: list[dict]) -> list[float]:
    return [a["tps"] / b["tps"] for a, b in zip(num, den) if b["tps"] > 0]


def _row(p: dict, runs: dict) -> dict:
    plain, swift, peer = runs["plain"], runs["swift"], runs["peer"]
    ratios = _ratios(swift, plain)
    bounds = [bound(s["stats"], pl["seconds"] / max(pl["n"], 1)) for s, pl in zip(swift, plain)]
    bounds = [b for b in bounds if b is not None]
    last = swift[-1]["stats"]
    drafted = sum(s["stats"]["drafted"] for s in swift)
    accepted = sum(s["stats"]["accepted"] for s in swift)
    cycles = sum(s["stats"]["cycles"] for s in swift)
    gen_s = sum(s["seconds"] for s in swift)
    row = {
        "id": p["id"], "category": p.get("category", ""), "tokens": plain[-1]["n"],
        "turn_tokens": plain[-1].get("turn_tokens", [plain[-1]["n"]]),
        "plain_tps": round(statistics.median(r["tps"] for r in plain), 3),
        "swift_tps": round(statistics.median(r["tps"] for r in swift), 3),
        "speedup": round(statistics.median(ratios), 4), "speedup_min": round(min(ratios), 4),
        "speedup_max": round(max(ratios), 4),
        "drafted": drafted, "accepted": accepted, "cycles": cycles,
        "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "mean_accepted": round(accepted / cycles, 4) if cycles else 0.0,
        "drafters": _drafter_totals(s["stats"] for s in swift),
        "bound": round(statistics.median(bounds), 4) if bounds else None,
        "mode_used": [s["stats"]["mode_used"] for s in swift],
        "identical": all(s["tokens"] == plain[0]["tokens"] for s in swift + plain),
        "search_seconds": round(sum(s["stats"]["t_search"] for s in swift), 4),
        "search_share": round(sum(s["stats"]["t_search"] for s in swift) / gen_s, 4) if gen_s else 0.0,
        "prompt_seconds_plain": round(statistics.median(r["prompt_seconds"] for r in plain), 4),
        "prompt_seconds_swift": round(statistics.median(r["prompt_seconds"] for r in swift), 4),
        "costs": last["costs"], "draft_max": max(s["stats"]["draft_max"] for s in swift),
        # totals over every pair, for the aggregate (search time included) speed of a scenario
        "plain_tokens": sum(r["n"] for r in plain), "plain_seconds": round(sum(r["seconds"] for r in plain), 4),
        "swift_tokens": sum(r["n"] for r in swift), "swift_seconds": round(gen_s, 4),
    }
    row["efficiency"] = round(row["speedup"] / row["bound"], 4) if row["bound"] else None
    if peer:
        pr = _ratios(peer, plain)
        row.update(peer_tps=round(statistics.median(r["tps"] for r in peer), 3),
                   peer_speedup=round(statistics.median(pr), 4), peer_identical=all(r["tokens"] == plain[0]["tokens"][:len(r["tokens"])] for r in peer))
    return row


def _drafter_totals(stats) -> dict:
    """Cycles, drafted and accepted tokens per drafter, summed over runs."""
    out: dict[str, dict] = {}
    for st in stats:
        for name, d in st.get("drafters", {}).items():
            t = out.setdefault(name, {"cycles": 0, "drafted": 0, "accepted": 0})
            for k in t:
                t[k] += d[k]
    return out


def _summary(rows: list[dict]) -> dict:
    sp = [r["speedup"] for r in rows]
    drafted = sum(r["drafted"] for r in rows)
    accepted = sum(r["accepted"] for r in rows)
    cycles = sum(r["cycles"] for r in rows)
    bounds = [r["bound"] for r in rows if r["bound"]]
    effs = [r["efficiency"] for r in rows if r["efficiency"]]
    out = {"prompts": len(rows), "speedup_median": round(statistics.median(sp), 4),
           "speedup_min": round(min(r["speedup_min"] for r in rows), 4),
           "speedup_max": round(max(r["speedup_max"] for r in rows), 4),
           "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
           "mean_accepted": round(accepted / cycles, 4) if cycles else 0.0,
           "bound": round(statistics.median(bounds), 4) if bounds else None,
           "efficiency": round(statistics.median(effs), 4) if effs else None,
           "identical_outputs": all(r["identical"] for r in rows),
           "drafters": _drafter_totals(rows),
           "search_share": round(statistics.median(r["search_share"] for r in rows), 4),
           # the whole scenario's tokens/s ratio, Spec-Bench's "overall" (all tokens over all generation
           # time, every prompt and pair): a search that runs early is paid once, here
           "speedup_overall": _aggregate(rows),
           "by_category": {c: v["speedup_median"] for c, v in _by_category(rows).items()}}
    if rows and "peer_speedup" in rows[0]:
        out["peer_speedup_median"] = round(statistics.median(r["peer_speedup"] for r in rows), 4)
    return out


def _aggregate(rows: list[dict]) -> float | None:
    """Total swift tokens/s over total plain tokens/s, every prompt and pair together."""
    pt, ps = sum(r.get("plain_tokens", 0) for r in rows), sum(r.get("plain_seconds", 0) for r in rows)
    st, ss = sum(r.get("swift_tokens", 0) for r in rows), sum(r.get("swift_seconds", 0) for r in rows)
    if not (pt and ps and st and ss):
        return None
    return round((st / ss) / (pt / ps), 4)


def _by_category(rows: list[dict]) -> dict:
    cats: dict[str, list] = {}
    for r in rows:
        cats.setdefault(r["category"] or "-", []).append(r)
    return {c: {"speedup_median": round(statistics.median(r["speedup"] for r in rs), 4),
                "speedup_min": round(min(r["speedup_min"] for r in rs), 4),
                **({"peer_speedup_median": round(statistics.median(r["peer_speedup"] for r in rs), 4)}
                   if "peer_speedup" in rs[0] else {})}
            for c, rs in sorted(cats.items())}


def _config(llm, max_tokens: int, pairs: int, mode: str) -> dict:
    import llama_cpp
    from . import native
    return {"model": llm.model_path, "n_layer": llm.rt.n_layer, "n_ctx": llm.n_ctx(),
            "threads": llm.n_threads, "n_gpu_layers": llm.model_params.n_gpu_layers, "mode": mode,
            "spec_type": llm.engine.config.spec_type,
            "max_tokens": max_tokens, "pairs": pairs, "draft_p_min": llm.engine.config.draft_p_min,
            "draft_max": llm.engine.config.draft_max, "flash_attn": True,
            "llama_cpp_python": llama_cpp.__version__, "backends": native.backends(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def render_table(result: dict) -> str:
    peer = "peer_speedup" in (result["rows"][0] if result["rows"] else {})
    head = f"{'prompt':8s} {'cat':6s} {'plain t/s':>9s} {'swift t/s':>9s} {'speedup':>8s} {'accept':>7s} {'mean acc':>8s} {'bound':>6s} {'eff':>5s}" + (f" {'peer':>6s}" if peer else "") + "  same"
    lines = [head]
    for r in result["rows"]:
        b = f"{r['bound']:.2f}" if r["bound"] else "-"
        e = f"{r['efficiency']:.2f}" if r["efficiency"] else "-"
        lines.append(f"{r['id']:8s} {r['category'][:6]:6s} {r['plain_tps']:9.1f} {r['swift_tps']:9.1f} {r['speedup']:7.2f}x"
                     f" {r['acceptance_rate']:7.2f} {r['mean_accepted']:8.2f} {b:>6s} {e:>5s}"
                     + (f" {r['peer_speedup']:5.2f}x" if peer else "") + f"  {'yes' if r['identical'] else 'NO'}")
    s = result["summary"]
    lines.append(f"median speedup {s['speedup_median']:.3f}x (min {s['speedup_min']:.2f}, max {s['speedup_max']:.2f}); "
                 f"overall {s.get('speedup_overall')}x; "
                 f"acceptance {s['acceptance_rate']:.2f}; bound {s['bound']}; efficiency {s['efficiency']}; "
                 f"identical outputs: {s['identical_outputs']}")
    return "\n".join(lines)


def plot_bench(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.45), 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["speedup"] for r in rows], width=0.4, label="swift-gguf")
    if rows and "peer_speedup" in rows[0]:
        ax.bar([i + 0.2 for i in x], [r["peer_speedup"] for r in rows], width=0.4, label="prompt lookup (peer)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(x), [r["id"] for r in rows], rotation=90)
    ax.set_ylabel("speed / plain decoding (same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
