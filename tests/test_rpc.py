"""llama.cpp's RPC backend: SmolLM2 split across the local CPU and two `swift-gguf rpc-server` workers.

Loopback only: the workers (one thread each) listen on free ports of 127.0.0.1, started here and
always stopped. The client side runs in its own process (tests/rpc_client.py): checked are
greedy swift (a fixed skip set with remote layers in it) and auto against local plain decoding,
the graph cache serving the RPC graphs, the redundancy fixture's inserted blocks skipped on the
workers (bit-identical logits), a worker killed mid-generation (a clear error, then a new load
once the worker is back), and the CLI's errors for bad or unreachable --rpc and unsafe binds.
"""
from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from swift_gguf import native
from swift_gguf.rpc import LocalWorker

ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT = 150   # seconds; a hang (the failure this file guards against) ends the test

pytestmark = pytest.mark.skipif(not native.rpc_supported(), reason=native.rpc_unsupported_reason())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(log_dir: Path, port: int | None = None) -> LocalWorker:
    """A `swift-gguf rpc-server` subprocess (one thread) on a loopback port, logging to log_dir."""
    port = port or free_port()
    with open(log_dir / f"worker-{port}.log", "ab") as log:
        return LocalWorker(port, threads=1, log=log)


@pytest.fixture
def workers(tmp_path):
    started: list[LocalWorker] = []
    try:
        started.append(worker(tmp_path))
        started.append(worker(tmp_path))
        yield started
    finally:
        for w in started:
            w.stop()


def servers(workers: list[LocalWorker]) -> str:
    return ",".join(w.endpoint for w in workers)


def client(scenario: str, model, workers: list[LocalWorker], log_dir: Path, *extra, **popen) -> subprocess.Popen:
    """Start tests/rpc_client.py; its stderr (llama.cpp's log, long) goes to a file, proc.err_path."""
    err_path = log_dir / f"client-{scenario}.log"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.rpc_client", scenario, str(model), servers(workers),
                                 *map(str, extra)], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, **popen)
    proc.err_path = err_path
    return proc


def finish(proc: subprocess.Popen, stdin: str | None = None) -> tuple[dict, str]:
    """The client's JSON lines merged into one dict, and its stderr (llama.cpp's log)."""
    try:
        out, _ = proc.communicate(stdin, timeout=CLIENT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.err_path.read_text(errors="replace")
    assert proc.returncode == 0, f"client exit {proc.returncode}:\n{err[-3000:]}"
    found: dict = {}
    for line in out.splitlines():
        found.update(json.loads(line))
    return found, err


def assert_layers_on(err: str, workers: list[LocalWorker]) -> None:
    """llama.cpp's load log names a model buffer on each worker."""
    for w in workers:
        assert re.search(rf"RPC\d+\[{re.escape(w.endpoint)}\] model buffer size = +[1-9]", err), \
            f"no layers on {w.endpoint}"


def test_split_model_swift_and_auto_equal_local_plain(model_path, workers, tmp_path):
    found, err = finish(client("equal", model_path, workers, tmp_path))
    assert_layers_on(err, workers)
    local = found["local"]
    assert found["remote_plain"] == local
    assert found["swift"] == local
    assert found["auto"] == local
    assert found["drafted"] > 0 and found["accepted"] > 0   # the swift runs did speculate
    # the graph cache (patch 0002) serves the alternating draft/verify graphs over RPC too
    assert found["reused"] > found["built"]


def test_inserted_blocks_skipped_on_the_workers_are_exact(fixture_k1, workers, tmp_path):
    found, err = finish(client("fixture", fixture_k1, workers, tmp_path))
    assert_layers_on(err, workers)
    assert found["n_layer"] == 60
    assert found["inserted_identical"]
    assert found["real_max_diff"] > 1e-2   # the mask does reach a remote layer


def read_lines(proc: subprocess.Popen, n: int) -> dict:
    """The next n JSON lines of a running client, merged (a client that hangs fails the test)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(proc.stdout.readline()) for _ in range(n)], daemon=True).start()
    found: dict = {}
    for _ in range(n):
        try:
            line = lines.get(timeout=CLIENT_TIMEOUT)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"the client hung for {CLIENT_TIMEOUT} s")
        assert line, f"the client ended early:\n{proc.err_path.read_text(errors='replace')[-3000:]}"
        found.update(json.loads(line))
    return found


def test_killed_worker_is_a_clear_error_and_the_model_loads_again(model_path, workers, tmp_path):
    victim = workers[1]
    proc = client("kill", model_path, workers, tmp_path, victim.proc.pid, stdin=subprocess.PIPE)
    report = read_lines(proc, 2)   # the local reference, then what the kill did
    assert report["error"], f"no error after the worker died ({report['tokens']} tokens)"
    assert f"RPC server {victim.endpoint}: connection lost" in report["error"]
    assert "restart the worker" in report["error"] and "load the model again" in report["error"]
    victim.proc.wait(10)
    workers[1] = worker(tmp_path, port=victim.port)   # back on the same port
    found, _ = finish(proc, "go\n")
    assert found["reloaded"] == report["local"]


def test_cli_rpc_errors(model_path, tmp_path):
    def run(*args):
        r = CliRunner().invoke(cli.main, [str(a) for a in args])
        assert "Traceback" not in r.output, r.output
        return r.exit_code, r.output

    code, out = run("generate", "-m", model_path, "-p", "hi", "-n", 2, "--rpc", "nowhere")
    assert code == 2 and "--rpc" in out and "HOST:PORT" in out
    port = free_port()
    code, out = run("generate", "-m", model_path, "-p", "hi", "-n", 2, "-ngl", 9, "--rpc", f"127.0.0.1:{port}")
    assert code == 1 and f"cannot reach the RPC worker at 127.0.0.1:{port}" in out and "swift-gguf rpc-server" in out
    code, out = run("rpc-server", "--host", "0.0.0.0", "--port", port)
    assert code == 1 and "no authentication" in out and "--allow-remote" in out
    with socket.socket() as busy:   # a port something else listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, out = run("rpc-server", "--port", busy.getsockname()[1])
    assert code == 1 and "could not serve" in out and "--port" in out
