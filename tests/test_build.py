"""native/build.py's wheel cache key: a wheel built for one CPU or compiler is never reused on another.

llama.cpp builds for the native CPU (-march=native), so a cached wheel from a machine with more
instruction-set extensions would crash here with SIGILL; the key must change with the CPU's
flags and with the compilers.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("native_build", ROOT / "native" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

PIN = build.read_pin()
ARGS = build.default_cmake_args()
CPU = "avx avx2 fma sse2 sse4_2"
CC = ["CC=cc: cc (Debian 12.2.0-14) 12.2.0", "CXX=c++: c++ (Debian 12.2.0-14) 12.2.0"]


def test_key_changes_with_a_cpu_flag_or_the_compiler():
    key = build.build_key(PIN, ARGS, CPU, CC)
    assert build.build_key(PIN, ARGS, CPU, CC) == key                       # stable
    assert build.build_key(PIN, ARGS, CPU + " avx512f", CC) != key          # one more extension
    assert build.build_key(PIN, ARGS, CPU.replace("fma ", ""), CC) != key   # one fewer
    clang = [CC[0], "CXX=c++: clang version 16.0.6"]
    assert build.build_key(PIN, ARGS, CPU, clang) != key
    assert build.build_key(PIN, ARGS + ["-DGGML_CUDA=on"], CPU, CC) != key


def test_the_default_key_is_this_machines():
    """Without arguments the key uses this machine's CPU flags and compilers."""
    here = build.build_key(PIN, ARGS, build.cpu_features(), build.compilers())
    assert build.build_key(PIN, ARGS) == here != build.build_key(PIN, ARGS, CPU, CC)


def test_cpu_flags_from_cpuinfo():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: sse2 avx2 fpu avx2\n\nprocessor\t: 1\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd aes\nCPU implementer\t: 0x41\n"
    assert build.cpu_flags_from_cpuinfo(x86) == "avx2 fpu sse2"
    assert build.cpu_flags_from_cpuinfo(arm) == "aes asimd fp"
    assert build.cpu_flags_from_cpuinfo("processor: 0\n") == ""


def test_this_machines_features_and_compilers_are_named():
    assert build.cpu_features().strip()
    cc, cxx = build.compilers()
    assert cc.startswith("CC=") and cxx.startswith("CXX=") and ": " in cc


def test_a_missing_compiler_is_named_not_raised(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc-xyz")
    cc = build.compilers()[0]
    assert cc.startswith("CC=/nonexistent/cc-xyz: unavailable")
