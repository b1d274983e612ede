"""Shared test fixtures: prompts, isolated profiles, an unsupported model (the real default model and
the redundancy fixtures are in the repository's conftest.py, shared with benchmarks/tests).

Everything here is real: the patched llama.cpp, SmolLM2-135M fetched from PyPI by
swift-gguf's own code, fixtures built from it with the gguf package.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH_PROMPTS = ROOT / "swift_gguf" / "data" / "bench.jsonl"


def load_bench_prompts() -> list[dict]:
    return [json.loads(line) for line in BENCH_PROMPTS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def bench_prompts() -> list[dict]:
    return load_bench_prompts()


@pytest.fixture(autouse=True)
def _isolated_profiles(tmp_path, monkeypatch):
    """Profiles written by tests go to a temporary directory, never the user's cache.

    Models stay in the real cache (SWIFT_GGUF_HOME is not changed) so they are fetched once.
    """
    import swift_gguf.paths as paths
    monkeypatch.setattr(paths, "profiles_dir", lambda: tmp_path / "profiles")
    import swift_gguf.profiles as profiles
    monkeypatch.setattr(profiles, "profiles_dir", lambda: tmp_path / "profiles")


#: A real llama.cpp architecture the layer-skip patch does not cover (llama-like tensors, so
#: SmolLM2 relabelled as it loads and decodes); change it when the patch comes to cover it.
UNSUPPORTED_ARCH = "ernie4_5"


@pytest.fixture(scope="session")
def unsupported_model(model_path, tmp_path_factory):
    """SmolLM2 relabelled as UNSUPPORTED_ARCH."""
    from tests.ggufutil import retarget
    out = tmp_path_factory.mktemp("unsupported") / f"{UNSUPPORTED_ARCH}.gguf"
    return retarget(model_path, out, UNSUPPORTED_ARCH)
