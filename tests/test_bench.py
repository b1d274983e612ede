"""`swift-gguf bench` on Spec-Bench's question format (question_id, category, turns).

Real model, one thread, 16 tokens per turn, one pair: only the structure of the summary and the
identity of outputs are asserted, never a timing.
"""
from __future__ import annotations

import json

from tests.test_cli import FAST, ok

SPEC_BENCH_ROWS = [
    {"question_id": 81, "category": "writing", "spec_bench_category": "multi-turn conversation",
     "turns": ["Name two colours.", "Now name a third one."]},
    {"question_id": 201, "category": "translation", "turns": ["Translate into English: Guten Morgen."]},
]


def test_bench_runs_spec_bench_questions_every_turn(model_path, tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in SPEC_BENCH_ROWS))
    data = json.loads(ok("bench", "-m", model_path, "--prompts", path, "-n", 16, "--pairs", 1, "--json",
                         "--no-peer", *FAST).stdout)
    rows = {r["id"]: r for r in data["rows"]}
    assert set(rows) == {"81", "201"}
    # both turns of the multi-turn question generated (tokens per turn of the plain run)
    assert len(rows["81"]["turn_tokens"]) == 2 and min(rows["81"]["turn_tokens"]) > 0
    assert len(rows["201"]["turn_tokens"]) == 1
    summary = data["summary"]
    assert summary["speedup_overall"] > 0 and "speedup_aggregate" not in summary   # one name for one ratio
    assert set(summary["by_category"]) == {"multi-turn conversation", "translation"}
    assert summary["identical_outputs"] is True

