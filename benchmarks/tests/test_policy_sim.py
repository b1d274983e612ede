"""benchmarks/policy_sim.py: the lookup policy replayed on recorded outputs, with and without the
live cost estimator. No model."""
from __future__ import annotations

import pytest

from benchmarks import policy_sim
from swift_gguf.costmodel import Costs

# verification costs as specbench.py records them: plain-step seconds and v(n) per context
COSTS = {"64": {"t1": 0.010, "v": {"2": 1.4, "3": 1.6, "5": 2.0, "9": 3.2, "17": 6.0}},
         "512": {"t1": 0.016, "v": {"2": 1.6, "3": 2.1, "5": 3.0, "9": 5.0, "17": 9.5}}}


def copy_run(n_questions: int = 6) -> dict:
    """A run whose answers repeat their prompts' text: lookups are right, so drafting pays."""
    raw, questions = {}, []
    for q in range(n_questions):
        text = [1000 + 7 * q + (i * 13) % 97 for i in range(60)]
        prompt = [1] + text + [2]
        raw[str(q)] = [[{"prompt": prompt, "tokens": text[:48]}]]
        questions.append({"question_id": q, "column": "copying"})
    return {"raw": {"baseline": raw}, "questions": questions, "verify_costs": COSTS, "table": {}}


def novel_run() -> dict:
    """Answers that never repeat anything: nothing to look up, every step plain."""
    run = copy_run(1)
    run["raw"]["baseline"]["0"] = [[{"prompt": [1, 2, 3, 4], "tokens": list(range(5000, 5048))}]]
    return run


def test_replay_speeds_up_copied_text_and_nothing_else():
    assert policy_sim.replay(copy_run())["overall"] > 1.5
    plain = policy_sim.replay(novel_run())
    assert plain["cycles"] == 0 and plain["overall"] == pytest.approx(1.0)


def test_live_replay_decides_on_the_estimator_and_noise_costs_speed():
    table = policy_sim.replay(copy_run())["overall"]
    exact = policy_sim.replay(copy_run(), live=0.0)
    noisy = [policy_sim.replay(copy_run(), live=0.3, seed=s)["overall"] for s in range(3)]
    assert exact["overall"] > 1.5 and exact["cycles"] > 0
    # the same seed draws the same timings: a replay is reproducible
    assert policy_sim.replay(copy_run(), live=0.3, seed=1)["overall"] == noisy[1]
    # the live estimator knows less than the measured table it is fed from: on average it decides worse
    # (one seed's noise may happen to favour a better draft length than the table's greedy choice)
    assert sum(noisy) / len(noisy) <= table + 1e-9


def test_live_timer_feeds_a_calibration_and_charges_measured_costs():
    costs = Costs()
    timer = policy_sim.LiveTimer(policy_sim.CostTable(COSTS), costs, sigma=0.0)
    timer.calibrate(64)
    assert costs.known and costs.t_plain == pytest.approx(0.010) and costs.n_ctx == 64
    assert costs.v[9] == pytest.approx(3.2)
    assert timer.seconds(1, 512) == pytest.approx(0.016)
    assert timer.seconds(5, 512) == pytest.approx(0.016 * 3.0)



def test_the_replays_costs_are_what_the_policy_asks_for():
    """The replay's stand-in for swift_gguf's Costs has what protocols.CostModel lists (the controller
    and the lookup drafter ask nothing else), and its tables are the run's CostTable at each context."""
    from swift_gguf.protocols import CostModel
    costs = policy_sim.RunCosts(COSTS)
    assert isinstance(costs, CostModel)
    table = policy_sim.CostTable(COSTS)
    assert list(costs.v_table(64)[1:33]) == [table.verify(n, 64) for n in range(1, 33)]
    assert costs.v_table(500)[17] == table.verify(17, 512) and costs.plain_seconds(70) == 0.010


def test_each_replayed_turn_is_a_request_with_its_own_loss_budget():
    """As SwiftEngine.run: a turn starts a new loss budget, so one answer's losses do not silence
    speculation on every later answer of the run (the replay collapsed to 1.00x when they did)."""
    from swift_gguf.controller import Controller
    from swift_gguf.drafters import LOOKUP, LookupDrafter
    from swift_gguf.engine import SpecConfig
    costs = policy_sim.RunCosts(COSTS)
    drafter = LookupDrafter(costs)
    ctl = Controller(SpecConfig(mode="auto", spec_type="ngram"), costs, {LOOKUP: drafter})
    ctl.budget.charge(100.0)   # an earlier answer lost far more than its allowance
    turn = copy_run(1)["raw"]["baseline"]["0"][0][0]
    plain_s, sim_s, cycles, accepted = policy_sim.replay_turn(turn["prompt"], turn["tokens"], costs, ctl, drafter)
    assert cycles > 0 and accepted > 0 and plain_s / sim_s > 1.5
    assert ctl.budget.tokens == len(turn["tokens"])
