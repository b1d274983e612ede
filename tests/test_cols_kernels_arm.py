"""patch 0006's NEON multi-column kernels on ARM64, under qemu-user: bit-identical, column by column, to the
one-column kernels that a one-token decode runs.

tests/test_cols_kernels.py does this for x86; this host cannot run ARM code natively, so the same driver
(tests/native/cols_kernels_main.cpp) and ggml-cpu's arch/arm kernel sources from the patched sdist are
cross-compiled for aarch64 at the ISA levels of Apple's chips (armv8.2-a+dotprod+fp16 as on M1, where ggml
repacks Q4_K/Q5_K/Q6_K as 8x4 and Q8_0/Q4_0 as 4x4; +i8mm as on M2 and later, 8x8 and 4x8) with the flags
of llama.cpp's Release build, linked statically and run under `qemu-aarch64 -cpu max`. Every output float
of the multi-column kernels (the repacked GEMVs' and ggml_swift_mul_mat_cols') is compared with memcmp to
the one-column kernels' on random weights and activations, 1..32 columns, row lengths 256..8960.
Equality under emulation is the same arithmetic as on the hardware (IEEE operations, exact integer dot
products) compiled by this GCC; it says nothing about speed on Apple hardware, nor about Apple's clang.
"""
from __future__ import annotations

import concurrent.futures
import re
import shutil
import subprocess

import pytest

from tests.test_cols_kernels import check_report, compile_level, patched_ggml, run

TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64", "git")
LEVELS = ["armv8.2-a+dotprod+fp16", "armv8.2-a+dotprod+i8mm+fp16"]
# llama.cpp's Release flags for ggml-cpu on aarch64 (-march comes per level), plus the test's section flags
BASE = ["-O3", "-DNDEBUG", "-D_GNU_SOURCE", "-ffunction-sections", "-fdata-sections"]
TRIALS = 4   # per weight type and row length; qemu runs the driver ~20x slower than native
QEMU = ["qemu-aarch64", "-cpu", "max", "-L", "/usr/aarch64-linux-gnu"]

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (apt-get install g++-aarch64-linux-gnu qemu-user)")


def test_neon_multi_column_kernels_equal_one_column_kernels(tmp_path):
    ggml = patched_ggml(tmp_path / "sdist")
    assert "ggml_gemv_q4_K_8x4_q8_K_cols" in (ggml / "src/ggml-cpu/arch/arm/repack.cpp").read_text()
    common = tmp_path / "ggml-quants.o"   # the reference quantizers (weights only), plain C
    run(["nice", "-n", "10", "aarch64-linux-gnu-gcc", *BASE, "-march=armv8-a", "-std=gnu11",
         f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", "-c", str(ggml / "src" / "ggml-quants.c"), "-o", str(common)])
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        exes = dict(zip(LEVELS, pool.map(
            lambda m: compile_level(ggml, tmp_path, m, [f"-march={m}"], common, arch="arm", base=BASE,
                                    cc="aarch64-linux-gnu-gcc", cxx="aarch64-linux-gnu-g++", link=("-static",)),
            LEVELS)))
    report = []
    for march, exe in exes.items():
        res = subprocess.run([*QEMU, str(exe), str(TRIALS)], capture_output=True, text=True, timeout=600)
        report.append(f"== {march}\n{res.stdout}{res.stderr}")
        check_report("\n".join(report), res.stdout, res.returncode, 100_000)
        # every kernel ran: the repacked layouts of this level and the vec_dot types
        k, q = ("8x8", "4x8") if "i8mm" in march else ("8x4", "4x4")
        names = [f"q4_K_{k}", f"q5_K_{k}", f"q6_K_{k}", f"q8_0_{q}", f"q4_0_{q}", "iq4_nl_4x4",
                 *(f"{t} (vec_dot)" for t in ("q4_K", "q5_K", "q6_K", "iq4_xs", "q4_0", "q5_0", "q8_0", "q4_1"))]
        for name in names:
            m = re.search(rf"^{re.escape(name)}.*checked\s+(\d+) differ 0", res.stdout, re.M)
            assert m and int(m.group(1)) > 5_000, report[-1]
    print("\n".join(report))
