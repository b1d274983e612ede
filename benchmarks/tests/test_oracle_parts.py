"""benchmarks/oracle_parts.py: the policy replayed with one decision handed to an oracle that knows the
recorded future. No model."""
from __future__ import annotations

import pytest

from benchmarks import oracle_parts, policy_sim
from benchmarks.tests.test_policy_sim import COSTS


def diverging_run() -> dict:
    """Answers that copy their prompt's text in stretches and go elsewhere in between: some lookups are
    right, some wrong, and where a copy ends is not visible in the text before it."""
    raw, questions = {}, []
    for q in range(4):
        text = [1000 + 7 * q + (i * 13) % 97 for i in range(80)]
        answer = text[:18] + [3000 + q, 3001] + text[20:34] + [3100 + q] + text[35:48] + [3200, 3201 + q] + text[50:70]
        raw[str(q)] = [[{"prompt": [1] + text + [2], "tokens": answer}]]
        questions.append({"question_id": q, "column": "copying"})
    return {"raw": {"baseline": raw}, "questions": questions, "verify_costs": COSTS, "table": {}}


def test_the_policy_mode_is_the_plain_replay_and_the_future_only_helps():
    run = diverging_run()
    rows = oracle_parts.shares(run)
    plain = policy_sim.replay(run)["overall"]
    oracle = oracle_parts.oracle_bound(run)["speedup_overall"]
    assert rows["policy"]["overall"] == pytest.approx(plain / oracle)
    assert rows["policy"]["overall"] < 1.0
    # the oracle's length, its decision, or both, on the policy's own occurrences: never worse here, and
    # both together close most of the gap (the occurrence is the same: one earlier copy of the text)
    for mode in ("length", "decide", "both"):
        assert rows[mode]["overall"] >= rows["policy"]["overall"] - 1e-9, mode
    assert rows["both"]["overall"] > rows["policy"]["overall"] and rows["both"]["overall"] > 0.95
