#!/usr/bin/env python3
"""Build the benchmark peers: unpatched llama-cpp-python and llama.cpp's llama-server.

    python3 -m benchmarks.peers              # build what is missing (about 20 min on 2 cores)
    python3 -m benchmarks.peers --check      # say what is built, build nothing
    python3 -m benchmarks.peers --only server

(from the repository root, as every benchmark: benchmarks/ is a package)

Both come from the SAME pinned sdist as swift-gguf's patched build (patches/PIN, checked by
sha256), WITHOUT the patches and with the same CMake flags (AMX off, native/build.py), so that a
ratio against them measures swift-gguf and nothing else:

  (a) lcp:    llama-cpp-python 0.3.36 in its own virtual environment,
              <cache>/peers/lcp-venv (the baseline of every Spec-Bench ratio);
  (b) server: llama.cpp's llama-server from the sdist's vendored tree,
              <cache>/peers/llama-server/build/bin/llama-server (llama.cpp's own n-gram speculation).

<cache> is swift-gguf's cache directory (~/.cache/swift-gguf, or $SWIFT_GGUF_HOME). Each peer is
built once: a marker file records the sdist hash and CMake arguments it was built with, and a peer
whose marker matches is skipped. The two builds run one after the other (each uses every core).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from native.build import NINJA_PROGRESS, BuildError, default_cmake_args, extract, fetch_sdist, read_pin
from swift_gguf.paths import cache_dir

MARKER = "swift-gguf-peer.json"


class PeerError(RuntimeError):
    """A peer build step failed; the message names the cause and the fix."""


def peers_dir() -> Path:
    return cache_dir() / "peers"


def lcp_python() -> Path:
    """The interpreter of the unpatched llama-cpp-python's virtual environment."""
    return peers_dir() / "lcp-venv" / "bin" / "python"


def server_binary() -> Path:
    return peers_dir() / "llama-server" / "build" / "bin" / "llama-server"


def server_cmake_args() -> list[str]:
    # llama.cpp's own tools, unpatched, with the flags the Python builds get (AMX off);
    # no curl/OpenSSL: models are local files and the server listens on 127.0.0.1 only.
    return ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", *default_cmake_args(),
            "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"]


def say(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def marker_ok(dirpath: Path, want: dict) -> bool:
    try:
        return json.loads((dirpath / MARKER).read_text()) == want
    except (OSError, ValueError):
        return False


def write_marker(dirpath: Path, info: dict) -> None:
    (dirpath / MARKER).write_text(json.dumps(info, indent=2))


def run_logged(cmd: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None) -> None:
    """Run a build command into a log, printing ninja's progress about every 10%."""
    start = time.monotonic()
    last_tenth = -1
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            m = NINJA_PROGRESS.search(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                tenth = 10 * done // max(total, 1)
                if tenth != last_tenth:
                    last_tenth = tenth
                    say(f"  {done}/{total} compiled, {time.monotonic() - start:.0f}s")
        rc = proc.wait()
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise PeerError(f"`{shlex.join(cmd[:4])} ...` failed (exit {rc}); last lines of {log_path}:\n  "
                        + "\n  ".join(tail)
                        + "\nFix: read the log; check the compiler toolchain, cmake and ninja.")


def build_lcp(sdist: Path, pin: dict) -> float | None:
    """(a) Unpatched llama-cpp-python in its own venv; returns the build time, None if skipped."""
    venv = peers_dir() / "lcp-venv"
    args = default_cmake_args()
    want = {"peer": "llama-cpp-python", "sha256": pin["sha256"], "cmake_args": args}
    if marker_ok(venv, want) and lcp_python().exists():
        say(f"(a) unpatched llama-cpp-python {pin['version']}: already built ({venv}), skipped")
        return None
    say(f"(a) unpatched llama-cpp-python {pin['version']} into {venv} (~10 min on 2 cores)")
    start = time.monotonic()
    log_path = peers_dir() / "lcp-build.log"
    log_path.write_text("")
    run_logged([sys.executable, "-m", "venv", "--clear", str(venv)], log_path)
    env = dict(os.environ, CMAKE_ARGS=shlex.join(args))
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    # The local, hash-checked sdist, built from source (--no-binary): never a prebuilt wheel.
    run_logged([str(lcp_python()), "-m", "pip", "install", "-v", "--no-cache-dir",
                "--no-binary", "llama-cpp-python", str(sdist)], log_path, env=env)
    check = subprocess.run([str(lcp_python()), "-c",
                            "import llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0 or check.stdout.strip() != pin["version"]:
        raise PeerError(f"the peer venv does not import llama_cpp {pin['version']}: "
                        f"{check.stdout.strip()} {check.stderr.strip()[-500:]}\nFix: read {log_path}.")
    write_marker(venv, want)
    took = time.monotonic() - start
    say(f"(a) done in {took:.0f}s")
    return took


def build_server(sdist: Path, pin: dict) -> float | None:
    """(b) llama-server from the sdist's vendored llama.cpp, unpatched."""
    base = peers_dir() / "llama-server"
    args = server_cmake_args()
    want = {"peer": "llama-server", "sha256": pin["sha256"], "cmake_args": args}
    if marker_ok(base, want) and server_binary().exists():
        say(f"(b) llama-server (llama.cpp {pin.get('llama_cpp_commit')}): already built ({base}), skipped")
        return None
    say(f"(b) llama-server from llama.cpp {pin.get('llama_cpp_commit')} into {base} (~10 min on 2 cores)")
    start = time.monotonic()
    base.mkdir(parents=True, exist_ok=True)
    src = base / "src"
    if not (src / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            os.replace(extract(sdist, Path(tmp)), src)
    log_path = peers_dir() / "server-build.log"
    log_path.write_text("")
    build = base / "build"
    run_logged(["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build), *args], log_path)
    run_logged(["ninja", "-C", str(build), f"-j{os.cpu_count() or 2}", "llama-server"], log_path)
    if not server_binary().exists():
        raise PeerError(f"the build finished without {server_binary()}; see {log_path}")
    write_marker(base, want)
    took = time.monotonic() - start
    say(f"(b) done in {took:.0f}s")
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["lcp", "server"], help="build one peer only")
    ap.add_argument("--check", action="store_true", help="report what is built; build nothing")
    opts = ap.parse_args(argv)
    pin = read_pin()
    if opts.check:
        print(f"lcp:    {'built' if lcp_python().exists() else 'missing'} ({lcp_python()})")
        print(f"server: {'built' if server_binary().exists() else 'missing'} ({server_binary()})")
        return 0 if lcp_python().exists() and server_binary().exists() else 1
    peers_dir().mkdir(parents=True, exist_ok=True)
    try:
        sdist = fetch_sdist(pin, cache_dir() / "sdist")
        times = {}
        if opts.only in (None, "lcp"):
            times["lcp"] = build_lcp(sdist, pin)
        if opts.only in (None, "server"):
            times["server"] = build_server(sdist, pin)
    except (PeerError, BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: {e.filename} not found.\nFix: install cmake, ninja and a C/C++ compiler.",
              file=sys.stderr)
        return 1
    built = ", ".join(f"{k} {v:.0f}s" for k, v in times.items() if v is not None)
    say(f"peers ready{' (built: ' + built + ')' if built else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
