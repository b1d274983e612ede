"""llama.cpp's RPC backend: layers on other machines.

A worker (`swift-gguf rpc-server`) serves its devices to one client at a time; the client
(`--rpc HOST:PORT,...`, `SwiftLlama(rpc_servers=...)`) registers the workers' devices before
the model loads, and `-ngl` / `--tensor-split` decide which layers go where, exactly as with
llama.cpp's own `--rpc`. The skip mask acts in the graph builder, so it covers remote layers too.

The RPC protocol has no authentication or encryption: a worker must only be reachable from
machines you trust. Binding one to anything but loopback therefore needs `allow_remote`.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterable

from . import native
from .errors import RpcError

CONNECT_TIMEOUT_S = 5.0       # reachability check before llama.cpp connects (its connect() has no timeout)

_lock = threading.Lock()
_registered: dict[str, list[str]] = {}   # endpoint -> its device names, once per process

INSECURE_WARNING = (
    "WARNING: the RPC protocol has no authentication and no encryption. Anyone who can reach "
    "{endpoint} can use this machine's memory and compute and read what clients send. "
    "Serve only on a network you trust (or tunnel it, e.g. ssh -L).")


def parse_servers(spec: str | Iterable[str]) -> list[str]:
    """'host:port,host:port' (or a list of them) -> validated endpoints, in order, without repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RpcError(f"{raw!r} is not an RPC server address.\n"
                           "Fix: give HOST:PORT pairs separated by commas, e.g. --rpc 192.168.1.10:50052,192.168.1.11:50052")
        if item not in out:
            out.append(item)
    if not out:
        raise RpcError("no RPC server given.\nFix: give HOST:PORT pairs separated by commas, e.g. --rpc 127.0.0.1:50052")
    return out


def _require_backend() -> None:
    if not native.rpc_supported():
        raise RpcError(native.rpc_unsupported_reason())


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with the cause and the fix when nothing answers at endpoint."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise RpcError(f"cannot reach the RPC worker at {endpoint}: {why}.\n"
                       f"Fix: start it on that machine with `swift-gguf rpc-server --host HOST --port {port}` "
                       "(from the same swift-gguf build), or correct --rpc.") from None


def add_servers(spec: str | Iterable[str]) -> list[str]:
    """Register the workers' devices for this process, as llama.cpp's `--rpc` does.

    Returns the device names (RPC0, RPC1, ... in the order given); their order is the order
    of `tensor_split`'s first entries. An endpoint already registered is not registered again.
    Devices stay registered for the process: later models loaded with -ngl > 0 may use them too.
    """
    endpoints = parse_servers(spec)
    _require_backend()
    names: list[str] = []
    with _lock:
        for ep in endpoints:
            if ep not in _registered:
                check_reachable(ep)
                errors = native.rpc_error_count()
                devs = native.rpc_add_server(ep)
                if not devs:
                    why = native.rpc_last_error() if native.rpc_error_count() != errors else "it reported no devices"
                    raise RpcError(f"the RPC worker at {ep} did not answer: {why}.\n"
                                   "Fix: check that it is a `swift-gguf rpc-server` (or llama.cpp rpc-server) of "
                                   "the same llama.cpp version, and that no other client is using it "
                                   "(a worker serves one client at a time).")
                _registered[ep] = devs
            names += _registered[ep]
    return names


def check_errors(since: int, *, call_failed: bool = False) -> None:
    """Raise RpcError if an RPC connection failed after the count `since` (patch 0005 counts them),
    or, for a llama_decode that failed, if any ever did."""
    n = native.rpc_error_count()
    if n != since or (call_failed and n):
        raise RpcError(f"{native.rpc_last_error()}.\n"
                       "Output stopped here: layers of this model live on that worker. Fix: restart the worker "
                       "(`swift-gguf rpc-server ...`), then load the model again (a new SwiftLlama, or run the "
                       "command again).")


# -- the worker ------------------------------------------------------------------------------------

def worker_devices() -> list[str]:
    """The devices a worker serves, as llama.cpp's rpc-server picks them: accelerators, else the CPU."""
    devs = [(name, kind) for name, _, kind, reg in native.devices() if reg != "RPC"]
    gpus = [n for n, kind in devs if kind not in (native.GGML_DEV_TYPE_CPU, native.GGML_DEV_TYPE_ACCEL)]
    return gpus or [n for n, kind in devs if kind == native.GGML_DEV_TYPE_CPU][:1]


def check_bind_host(host: str, allow_remote: bool) -> bool:
    """Validate the address a worker binds to; True when it is not loopback (callers warn)."""
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise RpcError(f"{host!r}: a worker binds to an IPv4 address (llama.cpp's RPC transport), "
                       "e.g. 127.0.0.1 or this machine's LAN address.") from None
    if ip.is_loopback:
        return False
    if not allow_remote:
        raise RpcError(f"binding the worker to {host} would expose it beyond this machine, and the RPC "
                       "protocol has no authentication.\nFix: keep --host 127.0.0.1 (and tunnel, e.g. ssh -L), "
                       "or pass --allow-remote if the network is trusted.")
    return True


def serve(host: str, port: int, n_threads: int | None = None, allow_remote: bool = False,
          log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> None:
    """Run a worker until interrupted (Ctrl-C, SIGTERM). Raises RpcError if it cannot serve."""
    remote = check_bind_host(host, allow_remote)
    _require_backend()
    endpoint = f"{host}:{port}"
    if remote:
        log(INSECURE_WARNING.format(endpoint=endpoint))
    devs = worker_devices()
    # verification batches must compute each token as a one-token decode does (patch 0003); the client
    # cannot switch that per decode over RPC, so the worker's CPU backends have it on from the start
    # (a prompt batch of <= 32 tokens then uses the one-token kernels too: exact, but not upstream's order)
    os.environ.setdefault("GGML_SWIFT_INVARIANT_BATCH", str(native.INVARIANT_UBATCH))
    n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)   # llama.cpp rpc-server's default
    log(f"swift-gguf rpc-server: serving {', '.join(devs)} on {endpoint} ({n_threads} threads); stop with Ctrl-C")
    stopped = threading.Event()

    def run() -> None:
        # signals go to the main thread: an interrupted accept()/recv() here would end the server
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            native.rpc_start_server(endpoint, n_threads, devs)
        finally:
            stopped.set()

    threading.Thread(target=run, name="rpc-server", daemon=True).start()
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        log("swift-gguf rpc-server: stopped")
        return
    # the server only returns when it could not listen or accept
    raise RpcError(f"the worker could not serve on {endpoint} (see the lines above): the port may be in use "
                   "or the address not on this machine.\nFix: pick another --port, or check --host.")


class LocalWorker:
    """A worker in a subprocess of this machine, on a loopback port (tests, benchmarks).

    `port=None` takes a free one. Ready when constructed; stop() (or `with`) ends it.
    """

    def __init__(self, port: int | None = None, threads: int = 1, log: IO | None = None, timeout: float = 60.0):
        self.port = port or _free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        cli = Path(__file__).resolve().parent.parent / "cli.py"
        self.proc = subprocess.Popen([sys.executable, str(cli), "rpc-server", "--port", str(self.port),
                                      "-t", str(threads)], stdout=log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:   # ready once it accepts a connection (a worker drops one that says nothing)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RpcError(f"the worker on port {self.port} did not start (exit {self.proc.returncode})")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "LocalWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
