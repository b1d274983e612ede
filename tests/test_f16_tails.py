"""patches/0004-f16-tails.patch changes speed, not a single bit.

With AVX512-FP16, ggml's F16 vector step is 128 halves, so head sizes below that (SmolLM2's 64)
ran flash attention's V accumulation in the scalar leftover loop. The patch computes that loop's
own arithmetic with vector conversions. This compiles upstream's and the patched vec.h from the
pinned sdist side by side (tests/native/) with the wheel's flags and compares their outputs.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("native_build", ROOT / "native" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

PATCH = ROOT / "patches" / "0004-f16-tails.patch"
HERE = Path(__file__).resolve().parent / "native"
# the flags llama.cpp's CMake gives ggml-cpu on a native x86 build (see the build log), plus the
# ones native/build.py adds
BUILD_CXXFLAGS = [a.partition("=")[2].split() for a in build.default_cmake_args() if a.startswith("-DCMAKE_CXX_FLAGS=")]
CXXFLAGS = ["-O3", "-march=native", "-std=gnu++17", "-D_GNU_SOURCE", *(f for fl in BUILD_CXXFLAGS for f in fl)]

pytestmark = pytest.mark.skipif(
    "avx512_fp16" not in build.cpu_features().split() or shutil.which("g++") is None,
    reason="the patched tails are compiled only on AVX512-FP16 CPUs (needs g++)")


def ggml_tree(sdist: Path, dest: Path) -> Path:
    """Only vendor/llama.cpp/ggml of the sdist (the headers vec.h includes)."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/ggml/" in m.name
                   and (m.isdir() or m.name.endswith((".h", ".hpp")))]
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)
    (root,) = [p for p in dest.iterdir() if p.is_dir()]
    return root


def compile_tu(tree: Path, side: str, out: Path) -> Path:
    ggml = tree / "vendor" / "llama.cpp" / "ggml"
    obj = out / f"{side}.o"
    subprocess.run(["g++", *CXXFLAGS, f"-DSIDE={side}", f"-I{ggml / 'src' / 'ggml-cpu'}", f"-I{ggml / 'src'}",
                    f"-I{ggml / 'include'}", "-c", str(HERE / "f16_tails_tu.cpp"), "-o", str(obj)],
                   check=True, capture_output=True, text=True)
    return obj


def test_patched_tails_equal_upstreams_loops(tmp_path):
    sdist = build.fetch_sdist(build.read_pin(), build.cache_dir() / "sdist")
    ref = ggml_tree(sdist, tmp_path / "ref")
    new = shutil.copytree(ref, tmp_path / "new" / ref.name)   # the archive is read once
    subprocess.run(["git", "apply", "--whitespace=nowarn", str(PATCH)], cwd=new, check=True)
    assert (new / "vendor/llama.cpp/ggml/src/ggml-cpu/vec.h").read_text() != \
        (ref / "vendor/llama.cpp/ggml/src/ggml-cpu/vec.h").read_text()
    objs = [compile_tu(ref, "ref", tmp_path), compile_tu(new, "new", tmp_path)]
    exe = tmp_path / "f16_tails"
    subprocess.run(["g++", *CXXFLAGS, str(HERE / "f16_tails_main.cpp"), *map(str, objs), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    res = subprocess.run([str(exe), "400000"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    checked, differ = (int(w) for w in res.stdout.split() if w.isdigit())
    assert checked >= 50_000_000 and differ == 0, res.stdout
