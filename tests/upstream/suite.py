"""llama-cpp-python's own tests, from the pinned sdist, run against SwiftLlama.

The upstream files are not copied into this repository: they are extracted from the pinned
sdist (fetched and sha256-checked by native/build.py's helpers), adapted by the committed
adapt.patch (only where an assertion names a specific model's output; the expected value then
comes from llama_cpp.Llama on the same model), given conftest_dropin.py as their conftest.py,
and run by pytest in a subprocess whose cwd is the extracted sdist root (test_llama.py opens
./vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf).

By hand (from the repository root):

    python -m tests.upstream.suite --spec swift --model gemma3-270m [-- pytest args]
    python -m tests.upstream.suite --spec reference --no-adapt   # upstream as is, on plain Llama
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ADAPT_PATCH = HERE / "adapt.patch"
CONFTEST = HERE / "conftest_dropin.py"
TEST_FILES = ("tests/test_llama.py", "tests/test_llama_chat_format.py",
              "tests/test_llama_grammar.py", "tests/test_llama_speculative.py")
DATA_FILES = ("vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf",)
SPECS = ("off", "swift", "auto", "reference")


def _native_build():
    """native/build.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("swift_gguf_native_build", ROOT / "native" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(dest: Path, *, adapt: bool = True) -> Path:
    """Extract the upstream tests into dest, adapt them, add our conftest; returns the sdist root."""
    build = _native_build()
    from swift_gguf.paths import cache_dir
    pin = build.read_pin()
    sdist = build.fetch_sdist(pin, cache_dir() / "sdist")   # downloads if absent; checks the sha256
    prefix = f"llama_cpp_python-{pin['version']}"
    wanted = {f"{prefix}/{name}" for name in TEST_FILES + DATA_FILES}
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        missing = wanted - {m.name for m in members}
        if missing:
            raise FileNotFoundError(f"{sdist.name} lacks {', '.join(sorted(missing))}; "
                                    "the pin in patches/PIN changed: refresh tests/upstream/")
        for m in members:
            tar.extract(m, dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extract(m, dest)
    root = dest / prefix
    if adapt:
        res = subprocess.run(["git", "apply", "--verbose", str(ADAPT_PATCH)], cwd=root,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"tests/upstream/adapt.patch does not apply to {prefix}'s tests:\n"
                               f"{res.stderr}\nFix: remake the patch against the pinned sdist's tests.")
    shutil.copy(CONFTEST, root / "tests" / "conftest.py")
    # Our own empty ini: pytest must not search above the extracted tree for a configuration.
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def run(root: Path, spec: str, model: str, *, junit: Path | None = None, extra: list[str] = (),
        timeout: float | None = None, capture: bool = True) -> subprocess.CompletedProcess:
    """Run the upstream tests in `root` (from `prepare`) with SwiftLlama in `spec` mode."""
    env = dict(os.environ, SWIFT_GGUF_UPSTREAM_SPEC=spec, SWIFT_GGUF_UPSTREAM_MODEL=model)
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-p", "no:cacheprovider", "-rs", "-v",
           "--tb=short", "--show-capture=no"]   # llama.cpp's load logs would bury the failures
    if junit is not None:
        cmd.append(f"--junitxml={junit}")
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT) if capture else {}
    return subprocess.run(cmd + list(extra), cwd=root, env=env, timeout=timeout, text=True, **pipes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", choices=SPECS, default="swift")
    ap.add_argument("--model", default="smollm2-135m", help="the shipped model standing in (default smollm2-135m)")
    ap.add_argument("--no-adapt", dest="adapt", action="store_false", help="run upstream's tests unadapted")
    ap.add_argument("--keep", type=Path, help="extract into this directory (kept) instead of a temporary one")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    opts = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swift-gguf-upstream-") as tmp:
        dest = opts.keep or Path(tmp)
        root = prepare(dest, adapt=opts.adapt)
        print(f"upstream tests in {root}", file=sys.stderr)
        return run(root, opts.spec, opts.model, extra=opts.pytest_args, capture=False).returncode


if __name__ == "__main__":
    sys.exit(main())
