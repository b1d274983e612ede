"""The GPU kit's new steps on the CPU (benchmarks/gpu: gpu_bench.py's bitwise/controls steps, gpu_specbench.py).

A GPU machine is lent to some sessions only and for minutes, so the script that runs there must work
the first time: these tests run its paths here with n_gpu_layers=0 and tiny limits, and check the
JSON it writes. (The CUDA numbers themselves need the GPU: benchmarks/gpu/README.md.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _turn(answer: list[int], tokens: int, secs: float, spec: dict | None = None) -> dict:
    return {"answer": answer, "tokens": answer, "gen_tokens": tokens, "gen_s": secs, "prompt_s": 0.01,
            "spec": spec}


def test_specbench_summary_counts_identical_answers_and_speedups_per_category():
    from benchmarks import specbench as sb
    from benchmarks.gpu import gpu_specbench as gs
    questions = [{"question_id": i, "column": c, "turns": ["q"]} for i, c in enumerate(sb.CATEGORIES)]
    raw = {"off": {}, "auto": {}}
    for i, _ in enumerate(sb.CATEGORIES):
        raw["off"][str(i)] = [[_turn([1, 2, 3], 10, 1.0)]]
        same = i != 2   # the third category's answer differs at token 1
        raw["auto"][str(i)] = [[_turn([1, 2, 3] if same else [1, 9, 3], 10, 0.5,
                                      {"drafted": 4, "accepted": 3, "cycles": 2, "mode_used": {"swift": 2}})]]
    s = gs.summarize(questions, raw)
    assert s["questions_run"] == 6 and s["identical"] == 5
    assert s["speedup_overall"] == pytest.approx(2.0)
    assert s["by_category"][sb.CATEGORIES[2]]["identical"] == 0
    assert s["by_category"][sb.CATEGORIES[0]]["speedup"] == pytest.approx(2.0)
    assert s["acceptance_rate"] == pytest.approx(0.75) and s["mean_accepted_tokens"] == pytest.approx(2.5)
    third = next(p for p in s["per_question"] if p["question_id"] == 2)
    assert third["first_difference"] == [0, 1] and third["modes"] == ["swift"]
    assert "overall" in gs.render_table(s)


def test_specbench_questions_go_round_robin_over_categories():
    from benchmarks import specbench as sb
    from benchmarks.gpu import gpu_specbench as gs
    qs = sb.load_questions(sb.QUESTIONS, 2)
    rr = gs.round_robin(qs)
    assert sorted(q["question_id"] for q in rr) == sorted(q["question_id"] for q in qs)
    assert [q["column"] for q in rr[:6]] == sb.CATEGORIES   # a run cut after 6 questions has every category


def _kit(tmp_path: Path, fixture_k1: Path, fixture_k3: Path) -> Path:
    kit = tmp_path / "kit"
    kit.mkdir()
    for k, path in ((1, fixture_k1), (3, fixture_k3)):   # the cached fixtures instead of building them again
        (kit / f"fixture-k{k}.gguf").symlink_to(path)
    return kit


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu.gpu_bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env=env)


@pytest.mark.slow
def test_gpu_bench_bitwise_and_controls_steps_on_the_cpu(tmp_path, model_path, fixture_k1, fixture_k3):
    kit = _kit(tmp_path, fixture_k1, fixture_k3)
    out = tmp_path / "out"
    p = _run(["--cpu", "--kit", str(kit), "--out", str(out), "--model", str(model_path),
              "--only", "bitwise,controls", "--bitwise-models", "smollm2,fixture_k1", "--positions", "100",
              "--sizes", "2,3", "--controls", "all_switches_off,cuda_fusion_off", "--budget", "600"], timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    bw = json.loads((out / "bitwise.json").read_text())
    assert set(bw["runs"]) == {"smollm2_fa1", "smollm2_fa0", "fixture_k1_fa1", "fixture_k1_fa0"}
    for name, r in bw["runs"].items():
        assert r.get("error") is None, (name, r)
        # the CPU is batch-invariant (patch 0003): every row equals its one-token decode
        assert r["passed"] and r["max_diff"] == 0.0 and r["rows"] == 5, (name, r)
        assert set(r["by_context_and_size"]) == {"L100_n2", "L100_n3"}
        assert r["backends"] == ["CPU"] or "CPU" in r["backends"]
    assert bw["passed"] is True
    ctl = bw["controls"]["runs"]
    assert set(ctl) == {"all_switches_off_fa1", "all_switches_off_fa0", "cuda_fusion_off_fa1", "cuda_fusion_off_fa0"}
    assert ctl["cuda_fusion_off_fa1"]["env"] == {"GGML_CUDA_DISABLE_FUSION": "1"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == {} and summary["bitwise"]["passed"] is True


@pytest.mark.slow
def test_gpu_bench_specbench_step_on_the_cpu(tmp_path, model_path, fixture_k1, fixture_k3):
    from benchmarks import specbench as sb
    # one short question per category keeps the auto arm's search short
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps({"question_id": 900 + i, "category": c, "spec_bench_category": c,
                                         "turns": ["Name three colours."] * (2 if i == 0 else 1)}) + "\n"
                             for i, c in enumerate(sb.CATEGORIES)))
    out = tmp_path / "sb.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu.gpu_specbench", "--cpu",
                        "--model", str(model_path), "--out", str(out), "--per-category", "1", "--max-tokens", "8",
                        "--n-ctx", "512", "--questions", str(qfile), "--budget", "600"],
                       capture_output=True, text=True, timeout=900, cwd=str(ROOT), env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    s = res["summary"]
    assert s["questions_run"] == 6 and set(s["by_category"]) == set(sb.CATEGORIES)
    # greedy speculation on the batch-invariant CPU: every answer is plain decoding's
    assert s["identical"] == 6
    assert res["raw"]["off"]["900"][0][1]["answer"] is not None   # the multi-turn question ran both turns
    assert res["flash_attn"] is True and res["gpu"] is False
