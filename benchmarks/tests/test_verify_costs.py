"""benchmarks/verify_costs.py on the real default model: a v(n) per size and context, and its table."""
from __future__ import annotations

from benchmarks import verify_costs as vc


def test_verify_costs_measures_every_size_at_every_context(model_path):
    r = vc.measure(str(model_path), [32, 64], threads=2, reps=1)
    assert r["weights"].startswith("Q4_1")   # SmolLM2-135M's matrices: Q4_1, Q8_0
    assert set(r["costs"]) == {"32", "64"}
    for c in r["costs"].values():
        assert c["t1"] > 0 and set(c["v"]) == {str(n) for n in vc.SIZES}
        assert c["v"]["32"] > c["v"]["2"] > 0   # 32 rows cost more than 2 (same weights, 16x the columns)
        assert c["step_kernels"] in ("upstream", "verification")   # chosen before the plain step is timed
    # a plain step through the verification kernels gives upstream's one-token logits bit for bit
    assert set(r["plain_paths"]) == {"32", "64"}
    assert all(p["identical"] and p["decode_ms"] > 0 and p["verify_ms"] > 0 for p in r["plain_paths"].values())
    lines = vc.table({"models": {"smollm2": r}}).splitlines()
    assert len(lines) == 9 and lines[2].startswith("| smollm2 | Q4_1") and lines[-1].endswith("| yes |")
