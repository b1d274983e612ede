"""Losslessness at every instruction-set level this host can execute, not only its native one.

ggml compiles different kernels per level (#if __AVX2__, __AVX512F__, __AVX512VNNI__,
__AVX512FP16__ ...): the multi-column verification kernels and flash attention's vector code
among them. A user's laptop runs another level than this host's native build, so the suite
builds ggml's CPU backend of the same patched tree for each lower level (native/build.py
--cpu-variant, cached, under a minute each) and runs `swift-gguf doctor --check` on it in a
subprocess (LLAMA_CPP_LIB_PATH): verification rows vs one-token decodes, bit for bit, flash
attention on and off, llama-cpp-python's default (unequal) thread counts and equal ones,
contexts up to 1117 tokens. The native level is tests/test_batch_invariance.py's.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("native_build", ROOT / "native" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

LEVELS = build.runnable_cpu_variants()
# what llama.cpp's system info must (and must not) report for the variant that was loaded
EXPECT = {"avx2": ("AVX2 = 1", "AVX512 = 1"), "avx512": ("AVX512 = 1", "AVX512_VNNI = 1")}


@pytest.fixture(scope="module", params=LEVELS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no x86 instruction-set level below native that this CPU can execute"))])
def variant_lib(request) -> tuple[str, Path]:
    return request.param, build.build_cpu_variant(request.param)


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_doctor_check_passes_at_every_level(variant_lib, model):
    level, lib = variant_lib
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(lib))
    cli = [sys.executable, "-c", "import cli; cli.main()"]
    res = subprocess.run([*cli, "doctor", "--check", "--json", "-m", model], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=900)
    report = json.loads(res.stdout)
    has, lacks = EXPECT[level]
    assert has in report["system_info"] and lacks not in report["system_info"], report["system_info"]
    assert str(lib) in report["library"]
    failed = [r for r in report["check"] if not r["passed"]]
    assert len(report["check"]) >= 2 and not failed, failed
    # a plain step timed through both one-token kernel paths of this level (runtime.StepKernels chooses)
    assert all(r["step_ms"]["upstream"] > 0 and r["step_ms"]["verification"] > 0 for r in report["check"])
    assert res.returncode == 0, res.stderr[-2000:]
