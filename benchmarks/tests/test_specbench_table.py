"""benchmarks/specbench.py's table: speedups against the baseline, the oracle on the baseline's
footing when swift-gguf's plain decoding (`off`) is faster than the baseline, and speculation's own
gain (auto / off). Synthetic run, no model."""
from __future__ import annotations

import pytest

from benchmarks import specbench

COSTS = {"64": {"t1": 0.010, "v": {"2": 1.4, "3": 1.6, "5": 2.0, "9": 3.2, "17": 6.0}}}


def run(off_speed: float, auto_speed: float) -> dict:
    """One question per category whose answer repeats its prompt (the oracle drafts it); each arm
    generates the same 48 tokens, in gen_s = 48 / (its tokens per second)."""
    questions, raw = [], {"baseline": {}, "off": {}, "auto": {}}
    for q, cat in enumerate(specbench.CATEGORIES):
        text = [1000 + 7 * q + (i * 13) % 97 for i in range(60)]
        prompt = [1] + text + [2]
        questions.append({"question_id": q, "column": cat})
        for arm, speed in (("baseline", 100.0), ("off", 100.0 * off_speed), ("auto", 100.0 * auto_speed)):
            turn = {"prompt": prompt, "tokens": text[:48], "answer": text[:48], "gen_tokens": 48,
                    "gen_s": 48 / speed, "prompt_s": 0.1}
            raw[arm][str(q)] = [[turn]]
    arms = {"baseline": {"label": "baseline", "kind": "lcp"}, "off": {"label": "swift-gguf off", "kind": "swift"},
            "auto": {"label": "swift-gguf auto", "kind": "swift"}}
    return {"raw": raw, "questions": questions, "verify_costs": COSTS, "arms": arms}


def test_oracle_stands_on_the_baselines_footing():
    same, faster = run(1.0, 1.2), run(1.5, 1.8)
    t_same, t_fast = specbench.summarize(same), specbench.summarize(faster)
    gain = t_same["oracle"]["speedup_overall"]
    assert gain > 1.5   # the answers copy the prompt: the oracle drafts nearly everything
    # the oracle's own gain does not depend on the arms' speeds; its row is that gain times off's
    assert t_fast["oracle"]["speedup_overall_over_plain"] == pytest.approx(gain)
    assert t_fast["oracle"]["speedup_overall"] == pytest.approx(1.5 * gain, rel=1e-3)
    for c in specbench.CATEGORIES:
        assert t_fast["oracle"]["speedup"][c] == pytest.approx(1.5 * t_same["oracle"]["speedup"][c], rel=1e-3)
    # so an arm's efficiency is its gain over off against the oracle's gain over plain decoding
    assert t_fast["rows"]["auto"]["efficiency_overall"] == pytest.approx(1.2 / gain, rel=1e-3)
    assert t_same["rows"]["auto"]["efficiency_overall"] == pytest.approx(1.2 / gain, rel=1e-3)


def test_table_shows_speculations_own_gain():
    r = run(1.5, 1.8)
    r["table"] = specbench.summarize(r)
    lines = specbench.markdown_table(r).splitlines()
    (row,) = [ln for ln in lines if ln.startswith("| auto / off")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:7] == ["1.20×"] * 6 and cells[8] == "1.20×"
    (off,) = [ln for ln in lines if ln.startswith("| swift-gguf off")]
    assert "1.50×" in off


def test_without_the_baseline_every_ratio_is_against_off():
    """A smoke run without the unpatched peers (--drop baseline): `off` stands in as the base."""
    r = run(1.5, 1.8)
    del r["raw"]["baseline"], r["arms"]["baseline"]
    t = specbench.summarize(r)
    assert t["rows"]["off"]["speedup_overall"] == 1.0
    assert t["rows"]["auto"]["speedup_overall"] == pytest.approx(1.2, rel=1e-3)
    assert t["oracle"]["speedup_overall"] == pytest.approx(specbench.summarize(run(1.0, 1.2))["oracle"]["speedup_overall"])


def test_slowest_question_pools_turns_and_repetitions():
    """The per-question floor: each question's tokens over its seconds (every turn and repetition),
    against the baseline's; the minimum over questions, named."""
    r = run(1.0, 1.5)
    slow = r["raw"]["auto"]["3"][0][0]
    r["raw"]["auto"]["3"] = [[dict(slow, gen_s=48 / 80.0)], [dict(slow, gen_s=48 / 120.0)]]   # 0.8x, 1.2x
    r["raw"]["baseline"]["3"] = [r["raw"]["baseline"]["3"][0]] * 2
    r["table"] = specbench.summarize(r)
    assert r["table"]["rows"]["auto"]["worst_question"] == ["3", pytest.approx(0.96)]   # 96 tokens in 1.0 s
    assert r["table"]["rows"]["baseline"]["worst_question"] == ["0", 1.0]
    (row,) = [ln for ln in specbench.markdown_table(r).splitlines() if ln.startswith("| swift-gguf auto")]
    assert "0.96× (q3)" in row


def test_an_arm_may_run_another_checkout(tmp_path):
    """--arm NAME:root=PATH: the arm's worker runs there (a worktree of an earlier commit)."""
    assert specbench.arm_root(None) == specbench.ROOT
    assert specbench.arm_root(str(specbench.ROOT)) == specbench.ROOT
    with pytest.raises(specbench.BenchError, match="not a swift-gguf checkout"):
        specbench.arm_root(str(tmp_path))
    assert len(specbench.checkout_commit(specbench.ROOT)) >= 7


def test_search_line_reports_the_searchs_time_and_probes():
    """What the layer search cost each speculating arm and how far it got (its probe count by the end)."""
    r = run(1.0, 1.5)
    for i, (qid, reps) in enumerate(sorted(r["raw"]["auto"].items())):
        reps[0][0]["spec"] = {"t_search": 0.01, "search_probes": i}
    line = specbench.search_line(r)
    gen = sum(reps[0][0]["gen_s"] for reps in r["raw"]["auto"].values())
    assert line == f"auto: 0.06 s ({0.06 / gen:.1%} of generation), 5 probes"
