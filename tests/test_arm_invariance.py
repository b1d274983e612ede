"""Batch invariance on ARM64 (Apple Silicon's instruction set), under qemu-user.

Verification rows must be bit-identical to one-token decodes on every CPU the product runs on; this
host is x86, so tests/native/arm/run_arm_check.sh cross-builds the patched llama.cpp (every
patches/*.patch applied to the pinned sdist, as native/build.py does) for aarch64 at two ISA levels
(armv8.2-a+dotprod+fp16: Apple M1; +i8mm: M2 and later, where ggml takes the 8x8 repacked and
mmla kernels) and runs tests/native/arm/verify_check.cpp under `qemu-aarch64 -cpu max`: after prompts
of 100 and 300 tokens, batches of n = 1, 2, 9, 17 with the invariance setting (and without it, the
negative control) against n one-token decodes, flash attention on and off, threads 2/2 and 1/2
(llama-cpp-python's default on 2 cores), SmolLM2 (Q4_1/Q8_0) and Gemma 3 (Q4_K/Q6_K/Q5_0/Q8_0).
Verification batches on ARM go through patch 0006's NEON multi-column kernels (dot products and the
repacked GEMVs of each level; tests/test_cols_kernels_arm.py checks them kernel by kernel): this checks
them, and the dispatch around them, end to end on real models. Needs aarch64-linux-gnu-g++, qemu-user, cmake and
ninja (.ci/run installs qemu-user); about 14 minutes on 2 cores from scratch (two cross-builds and
32 emulated comparisons), the builds cached per patch set.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from swift_gguf.models import resolve_model
from swift_gguf.paths import cache_dir

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "native" / "arm" / "run_arm_check.sh"
TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64", "cmake", "ninja", "git")
RESULT = re.compile(r"RESULT model=(\S+) fa=(\d) threads=(\d+)/(\d+) L=(\d+) n=(\d+) mode=(\S+) "
                    r"rows_differing=(\d+)/(\d+) max_abs_diff=(\S+)")

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs an x86-64 Linux host with {', '.join(TOOLS)} (apt-get install qemu-user g++-aarch64-linux-gnu)")


def work_dir() -> Path:
    """A build folder per patch set and driver: a changed patch or driver builds afresh."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "patches").glob("*.patch")) + [SCRIPT, SCRIPT.with_name("verify_check.cpp")]:
        h.update(p.name.encode() + p.read_bytes())
    return cache_dir() / "arm-check" / h.hexdigest()[:16]


def test_verification_rows_equal_one_token_decodes_on_arm64():
    resolve_model("smollm2-135m", progress=False)   # both models in the cache, where the script looks
    resolve_model("gemma3-270m", progress=False)
    env = dict(os.environ, QUICK="1", MODELS="smollm gemma", MDIR=str(cache_dir() / "models"),
               SDIST=str(next((cache_dir() / "sdist").glob("llama_cpp_python-*.tar.gz"))))
    p = subprocess.run(["bash", str(SCRIPT), str(work_dir())], capture_output=True, text=True, env=env,
                       timeout=2400)
    out = p.stdout + p.stderr
    rows = [m.groups() for m in RESULT.finditer(out)]
    invariant = [r for r in rows if r[6] == "invariant"]
    control = [r for r in rows if r[6] == "plain-control"]
    assert invariant, out[-4000:]
    failures = [r for r in invariant if r[7] != "0"]
    assert not failures, f"verification rows differ from one-token decodes on aarch64: {failures}\n{out[-4000:]}"
    assert p.returncode == 0, out[-4000:]
    # the whole grid ran: 2 ISA levels x 2 models x (FA on, 2/2, L 100 and 300, n 1/2/9/17 + FA off, 1/2, L 300,
    # n 1/2/9); n 1: a plain step through the verification kernels (runtime.StepKernels)
    assert len(invariant) == 2 * 2 * (2 * 4 + 3), len(invariant)
    assert {r[0] for r in invariant} == {"SmolLM2-135M-Instruct.Q4_1.gguf", next(
        p.name for p in (cache_dir() / "models").glob("gemma-3-270m*.gguf"))}
    assert {r[1] for r in invariant} == {"0", "1"} and {(r[2], r[3]) for r in invariant} == {("2", "2"), ("1", "2")}
    # negative control: without the setting, batches differ from one-token decodes (so the check can see it)
    assert sum(int(r[7]) for r in control) > 0, control
