"""patch 0006 (and 0003's Q4_1/Q8_0 kernels): the multi-column kernels that verification batches run are
bit-identical, column by column, to the one-column kernels of one-token decoding.

Speculative verification computes n drafted tokens as one batch (patch 0003: invariance on); every column
must equal what a one-token decode computes, bit for bit. The multi-column kernels (arch/x86/quants.c
ggml_vec_dot_*_cols, arch/x86/repack.cpp ggml_gemv_*_cols) share the unpacked weights between columns and
may form integer sums in another order (VNNI, 512-bit registers), but every int32 lane converted to float
and every float operation must be the one-column code's, which differs by ISA level. So this compiles, from
the pinned sdist with all patches applied, ggml-cpu's kernel sources and a driver (tests/native/) once per
x86 ISA level this CPU can run, and compares every output float of the multi-column kernels with the
one-column kernels' (memcmp) on random weights (reference quantizers, the library's repack functions) and
random activations (the library's activation quantizers), 1..32 columns, row lengths 256..8960.
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("native_build", ROOT / "native" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

HERE = Path(__file__).resolve().parent / "native"
GGML = "vendor/llama.cpp/ggml"
# the flags llama.cpp's CMake gives ggml-cpu (see the build log), plus the ones native/build.py adds
BUILD_FLAGS = [f for a in build.default_cmake_args() if a.startswith("-DCMAKE_C_FLAGS=")
               for f in a.partition("=")[2].split()]
BASE = ["-O3", "-DNDEBUG", "-D_GNU_SOURCE", "-ffunction-sections", "-fdata-sections", *BUILD_FLAGS]
# ISA levels: (name, compiler flags, /proc/cpuinfo flags the CPU needs to run them)
LEVELS = [
    ("avx2", ["-mavx2", "-mfma", "-mf16c", "-mbmi2"], {"avx2", "fma", "f16c", "bmi2"}),
    ("avx2+avxvnni", ["-mavx2", "-mfma", "-mf16c", "-mbmi2", "-mavxvnni"], {"avx2", "fma", "f16c", "bmi2", "avx_vnni"}),
    ("avx512", ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mf16c", "-mbmi2"],
     {"avx512f", "avx512bw", "avx512dq", "avx512vl", "fma", "f16c", "bmi2"}),
    ("native", ["-march=native"], set()),
]
TRIALS = 12   # per weight type and row length (each with several column sets)

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith("linux")
    or shutil.which("g++") is None or shutil.which("gcc") is None or shutil.which("git") is None,
    reason="the multi-column kernels are x86 code (needs Linux, gcc, g++, git)")


def patched_ggml(dest: Path) -> Path:
    """vendor/llama.cpp/ggml of the pinned sdist (headers, ggml-quants.c, ggml-cpu/) with every patch
    applied (their ggml parts)."""
    sdist = build.fetch_sdist(build.read_pin(), build.cache_dir() / "sdist")
    with tarfile.open(sdist) as tar:
        def wanted(name: str) -> bool:
            rel = name.partition(f"/{GGML}/")[2]
            return bool(rel) and (rel.startswith(("include/", "src/ggml-cpu/"))
                                  or (rel.startswith("src/") and rel.count("/") == 1))
        members = [m for m in tar.getmembers() if (m.isfile() or m.isdir()) and wanted(m.name)]
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)
    (root,) = [p for p in dest.iterdir() if p.is_dir()]
    for patch in build.patch_files():
        # the ggml parts of each patch that the extracted files hold (git's --include '*' matches '/')
        subprocess.run(["git", "apply", "--whitespace=nowarn", f"--include={GGML}/include/*",
                        f"--include={GGML}/src/ggml-cpu/*",
                        *(f"--include={GGML}/src/{p.name}" for p in (root / GGML / "src").iterdir() if p.is_file()),
                        str(patch)], cwd=root, check=True)
    ggml = root / GGML
    assert "ggml_vec_dot_q6_K_q8_K_cols" in (ggml / "src/ggml-cpu/arch/x86/quants.c").read_text()
    assert "ggml_gemv_q4_K_8x8_q8_K_cols" in (ggml / "src/ggml-cpu/arch/x86/repack.cpp").read_text()
    return ggml


def host_flags() -> set[str]:
    return set(build.cpu_features().split())


def run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, " ".join(cmd) + "\n" + res.stderr[-4000:]


def compile_level(ggml: Path, out: Path, name: str, flags: list[str], common_obj: Path, *, arch: str = "x86",
                  cc: str = "gcc", cxx: str = "g++", base: list[str] = BASE, link: tuple[str, ...] = ()) -> Path:
    """The driver and ggml-cpu's kernel sources for arch/<arch>, compiled with base + flags and linked."""
    inc = [f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cpu'}"]
    cpu = ggml / "src" / "ggml-cpu"
    d = out / name.replace("+", "_")
    d.mkdir()
    units = [(cxx, HERE / "cols_kernels_main.cpp", "gnu++17"), (cxx, cpu / f"arch/{arch}/repack.cpp", "gnu++17"),
             (cc, cpu / f"arch/{arch}/quants.c", "gnu11"), (cc, cpu / "quants.c", "gnu11"),
             (cc, HERE / "cols_kernels_stubs.c", "gnu11")]
    objs = []
    for i, (compiler, src, std) in enumerate(units):
        obj = d / f"{i}-{src.stem}.o"
        run(["nice", "-n", "10", compiler, *base, *flags, f"-std={std}", *inc, "-c", str(src), "-o", str(obj)])
        objs.append(obj)
    exe = d / "cols_kernels"
    run([cxx, *link, "-Wl,--gc-sections", *map(str, objs), str(common_obj), "-o", str(exe), "-lm"])
    return exe


def check_report(report: str, stdout: str, returncode: int, min_checked: int) -> None:
    """The driver's last line is "checked N differ M": no differences, and enough comparisons."""
    last = stdout.strip().splitlines()[-1].split()
    checked, differ = int(last[1]), int(last[3])
    assert returncode == 0 and differ == 0, report
    assert checked > min_checked, report


def test_multi_column_kernels_equal_one_column_kernels(tmp_path):
    ggml = patched_ggml(tmp_path / "sdist")
    have = host_flags()
    levels = [(n, f) for n, f, need in LEVELS if need <= have]
    assert any(n == "native" for n, _ in levels)
    inc = [f"-I{ggml / 'include'}", f"-I{ggml / 'src'}"]
    # the reference quantizers (weights only): plain C, compiled once
    common = tmp_path / "ggml-quants.o"
    run(["gcc", *BASE, "-std=gnu11", *inc, "-c", str(ggml / "src" / "ggml-quants.c"), "-o", str(common)])
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(levels), os.cpu_count() or 1))) as pool:
        exes = dict(zip([n for n, _ in levels],
                        pool.map(lambda lv: compile_level(ggml, tmp_path, lv[0], lv[1], common), levels)))
    report = []
    for name, exe in exes.items():
        res = subprocess.run([str(exe), str(TRIALS)], capture_output=True, text=True, timeout=300)
        report.append(f"== {name}\n{res.stdout}{res.stderr}")
        check_report("\n".join(report), res.stdout, res.returncode, 500_000)
    print("\n".join(report))
