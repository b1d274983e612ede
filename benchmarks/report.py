#!/usr/bin/env python3
"""Render the tables of BENCHMARKS.md from benchmarks/results/*.json (and plots next to them).

    .venv/bin/python -m benchmarks.report     # rewrites the block between the GENERATED markers

Every number in the tables comes from a JSON file in benchmarks/results; the narrative around
the tables is written by hand and says which run it discusses.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REPORT = ROOT / "BENCHMARKS.md"
PLOTS = RESULTS / "plots"
GPU_RESULTS = RESULTS / "gpu"
GPU_PATTERN = "*-synced-*.json"   # GPU runs whose decode timings wait for the device (see BENCHMARKS.md)
BEGIN, END = "<!-- GENERATED: benchmarks/report.py -->", "<!-- END GENERATED -->"


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def summary_table(results: dict[str, dict], prefix: str = "") -> str:
    lines = ["| scenario | device | prompts × pairs | speedup median (min–max) | overall | acceptance | mean accepted | bound S | efficiency | search share | peer (prompt lookup) | identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s, c = r["summary"], r["config"]
        overall = s.get("speedup_overall", s.get("speedup_aggregate"))   # (its name before issue 28)
        dev = "GPU" if c.get("n_gpu_layers") not in (0, None) else "CPU"
        lines.append(f"| [{name}](benchmarks/results/{prefix}{name}.json) | {dev} | {s['prompts']} × {c['pairs']} | "
                     f"{s['speedup_median']:.3f}× ({s['speedup_min']:.2f}–{s['speedup_max']:.2f}) | "
                     f"{fmt(overall, '.3f') + '×' if overall else '-'} | "
                     f"{s['acceptance_rate']:.2f} | {s['mean_accepted']:.2f} | {fmt(s['bound'])} | "
                     f"{fmt(s['efficiency'])} | {s['search_share']:.1%} | {fmt(s.get('peer_speedup_median'), '.3f') + '×' if s.get('peer_speedup_median') else '-'} | "
                     f"{'yes' if s['identical_outputs'] else 'NO'} |")
    return "\n".join(lines)


def category_table(results: dict[str, dict]) -> str:
    cats = sorted({c for r in results.values() for c in r.get("by_category", {})})
    lines = ["| scenario | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for name, r in results.items():
        bc = r.get("by_category", {})
        cells = [f"{bc[c]['speedup_median']:.2f}× (min {bc[c]['speedup_min']:.2f})" if c in bc else "-" for c in cats]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def costs_table(results: dict[str, dict]) -> str:
    lines = ["| scenario | t_plain (ms) | v(2) | v(3) | v(5) | v(9) | attn share / sub-layer | FFN share / sub-layer | skip set (attn + ffn) | search probes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        c = r.get("costs", {})
        v = c.get("v", {})
        skip = r.get("skip") or {"attention": [], "ffn": []}
        lines.append(f"| {name} | {c.get('t_plain', 0) * 1000:.2f} | " + " | ".join(fmt(v.get(k)) for k in ("2", "3", "5", "9"))
                     + f" | {c.get('attn', 0):.4f} | {c.get('ffn', 0):.4f} | {len(skip['attention'])} + {len(skip['ffn'])} | "
                     f"{r.get('search', {}).get('probes', 0)} |")
    return "\n".join(lines)


def machines(results: dict[str, dict]) -> str:
    seen = {}
    for name, r in results.items():
        c = r["config"]
        key = (c.get("machine"), c.get("platform"), tuple(c.get("backends", [])))
        cmd = r.get("scenario", {}).get("command") or (
            f"benchmarks/gpu/stage2.sh, gpu_bench.py --only {r['name']}" if "name" in r else "")
        seen.setdefault(key, []).append((name, c.get("date"), cmd))
    out = []
    for (machine, plat, backends), runs in seen.items():
        out.append(f"- {machine}, {plat}, backends {', '.join(backends)}: "
                   + "; ".join(f"{n} ({d}, `{cmd}`)" for n, d, cmd in runs))
    return "\n".join(out)


def specbench_sections(runs: dict[str, dict]) -> list[str]:
    """Spec-Bench tables, the latest run per model, in Spec-Bench's own format."""
    from benchmarks.specbench import costs_line, markdown_table, search_line
    latest = {}
    for name, r in sorted(runs.items()):   # names end in the date: the last one per model wins
        latest[r["config"]["model_name"]] = (name, r)
    parts = []
    for model, (name, r) in latest.items():
        c = r["config"]
        sel = c.get("server_selection") or {}
        parts += [f"### Spec-Bench, {model} ([{name}](benchmarks/results/{name}.json); {c['date']}, "
                  f"{c['questions']} questions × {c['reps']} repetitions, {c['max_tokens']} tokens per turn, "
                  f"{c['threads']} threads, `{c['command']}`)",
                  markdown_table(r),
                  f"Speedups against the first row (same run, interleaved); v(n) from the same run: {costs_line(r)}."
                  + f" Layer search: {search_line(r)}."
                  + (f" llama-server's spec type chosen on {len(sel['questions'])} questions: "
                     + ", ".join(f"{k} {v:.1f} tok/s" for k, v in sel["tokens_per_second"].items()) + "."
                     if sel else "")]
    return parts


def render(results: dict[str, dict], gpu: dict[str, dict], plots: list[tuple[str, str]],
           specbench: dict[str, dict] | None = None) -> str:
    parts = [BEGIN, "### Summary (one row per scenario; ratios are same-run, interleaved)",
             summary_table(results), "### Speedup by prompt category", category_table(results),
             "### Measured costs (units of one plain decode step)", costs_table(results)]
    if specbench:
        parts += specbench_sections(specbench)
    if gpu:
        parts += [f"### GPU rows ({', '.join(sorted(_gpu_names()))}; "
                  "benchmarks/results/gpu, made by benchmarks/gpu)",
                  summary_table(gpu, "gpu/"), costs_table(gpu)]
    if plots:
        parts += ["### Plots (made from the same JSON files by this script)"]
        parts += [f"![{title}](benchmarks/results/plots/{name})" for name, title in plots]
    parts += ["### Runs", machines({**results, **gpu}), END]
    return "\n\n".join(parts)


def _gpu_names() -> set[str]:
    """The GPUs named by the summary files gpu_bench wrote next to those tables."""
    names = {(json.loads(p.read_text()).get("device") or {}).get("gpu", "GPU").split(",")[0]
             for p in GPU_RESULTS.glob(GPU_PATTERN.replace(".json", "summary.json"))}
    return names or {"GPU"}


# -- plots --------------------------------------------------------------------------------------

def make_plots(results: dict[str, dict], gpu: dict[str, dict]) -> list[tuple[str, str]]:
    """PNG files under benchmarks/results/plots; returns (file name, title) pairs."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from swift_gguf.bench import plot_bench
    PLOTS.mkdir(parents=True, exist_ok=True)
    out = [("efficiency.png", "achieved speedup against the bound S of the same run, per prompt")]
    _plot_efficiency({**results, **{f"gpu/{k}": v for k, v in gpu.items()}}, PLOTS / out[0][0], plt)
    out.append(("verify_costs.png", "verification cost v(n) in plain decode steps, per scenario"))
    _plot_costs({**results, **{f"gpu/{k}": v for k, v in gpu.items()}}, PLOTS / out[1][0], plt)
    for name, r in results.items():
        plot_bench(r, str(PLOTS / f"{name}.png"))
        out.append((f"{name}.png", f"{name}: speedup per prompt (swift-gguf and the prompt-lookup peer)"))
    return out


def _plot_efficiency(all_results: dict[str, dict], path: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    top = 1.0
    for name, r in all_results.items():
        pts = [(row["bound"], row["speedup"]) for row in r["rows"] if row.get("bound")]
        if pts:
            ax.scatter(*zip(*pts), label=name, s=18)
            top = max(top, *(max(p) for p in pts))
    ax.plot([0, top * 1.05], [0, top * 1.05], "k--", lw=0.8, label="efficiency 1")
    ax.plot([0, top * 1.05], [0, 0.9 * top * 1.05], "k:", lw=0.8, label="efficiency 0.9")
    _finish(fig, ax, path, plt, "bound S from the run's own c, v, acceptance",
            "achieved speedup (same run, interleaved)")


def _plot_costs(all_results: dict[str, dict], path: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in all_results.items():
        v = {int(k): x for k, x in (r.get("costs") or {}).get("v", {}).items() if x < 50}
        if len(v) >= 2:
            ns = [1] + sorted(v)
            ax.plot(ns, [1.0] + [v[n] for n in ns[1:]], marker="o", label=name)
    ax.plot([1, 9], [1, 9], "k:", lw=0.8, label="linear (no batching gain)")
    _finish(fig, ax, path, plt, "tokens verified in one call (n)", "v(n) / one plain decode step")


def _finish(fig, ax, path: Path, plt, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(folder: Path, pattern: str) -> dict[str, dict]:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob(pattern))}
    return {k: v for k, v in results.items() if "summary" in v and v.get("rows")}


def load_specbench(folder: Path) -> dict[str, dict]:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("specbench-*.json"))}
    return {k: v for k, v in runs.items() if v.get("benchmark") == "spec-bench" and "table" in v}


def main() -> int:
    results = load(RESULTS, "*.json")
    gpu = load(GPU_RESULTS, GPU_PATTERN)
    specbench = load_specbench(RESULTS)
    plots = make_plots(results, gpu)
    text = REPORT.read_text() if REPORT.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    REPORT.write_text(head + render(results, gpu, plots, specbench) + tail)
    print(f"wrote {REPORT} from {len(results)} CPU, {len(gpu)} GPU and {len(specbench)} Spec-Bench result files, "
          f"{len(plots)} plots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
