#!/usr/bin/env python3
"""Render the tables of BENCHMARKS.md from benchmarks/results/*.json (and plots next to them).

    .venv/bin/python benchmarks/report.py     # rewrites the block between the GENERATED markers

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
BEGIN, END = "<!-- GENERATED: benchmarks/report.py -->", "<!-- END GENERATED -->"


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def summary_table(results: dict[str, dict]) -> str:
    lines = ["| scenario | device | prompts × pairs | speedup median (min–max) | acceptance | mean accepted | bound S | efficiency | search share | peer (prompt lookup) | identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s, c = r["summary"], r["config"]
        dev = "GPU" if c.get("n_gpu_layers") not in (0, None) else "CPU"
        lines.append(f"| [{name}](benchmarks/results/{name}.json) | {dev} | {s['prompts']} × {c['pairs']} | "
                     f"{s['speedup_median']:.3f}× ({s['speedup_min']:.2f}–{s['speedup_max']:.2f}) | "
                     f"{s['acceptance_rate']:.2f} | {s['mean_accepted']:.2f} | {fmt(s['bound'])} | "
                     f"{fmt(s['efficiency'])} | {s['search_share']:.1%} | {fmt(s.get('peer_speedup_median'), '.3f')}× | "
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
        seen.setdefault(key, []).append((name, c.get("date"), r.get("scenario", {}).get("command", "")))
    out = []
    for (machine, plat, backends), runs in seen.items():
        out.append(f"- {machine}, {plat}, backends {', '.join(backends)}: "
                   + "; ".join(f"{n} ({d}, `{cmd}`)" for n, d, cmd in runs))
    return "\n".join(out)


def render(results: dict[str, dict]) -> str:
    return "\n\n".join([BEGIN, "### Summary (one row per scenario; ratios are same-run, interleaved)",
                        summary_table(results), "### Speedup by prompt category", category_table(results),
                        "### Measured costs (units of one plain decode step)", costs_table(results),
                        "### Runs", machines(results), END])


def main() -> int:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    results = {k: v for k, v in results.items() if "summary" in v}
    text = REPORT.read_text() if REPORT.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    REPORT.write_text(head + render(results) + tail)
    print(f"wrote {REPORT} from {len(results)} result files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
