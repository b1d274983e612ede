"""The client side of tests/test_rpc.py, run in its own process:

    python -m tests.rpc_client SCENARIO MODEL SERVERS [VICTIM_PID]

RPC devices stay registered for the process that added them (as with llama.cpp's --rpc), and
a client whose worker dies must be seen to survive it: so each scenario runs here, prints its
findings as JSON lines on stdout, and the test asserts on them. llama.cpp's log (stderr, the
client is verbose) shows where the layers went.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

from swift_gguf.api import SwiftLlama
from swift_gguf.errors import RpcError
from swift_gguf.skipset import ATTN, FFN, SkipSet

# longer than 32 tokens: a prompt batch then runs upstream's kernels on the client and on the workers
# alike (the workers have patch 0003's invariance on for every batch of <= 32 tokens, since a client
# cannot switch it per decode over RPC; the client turns it on for its verification decodes alone)
PROMPTS = ["The history of the old harbour town begins in the twelfth century, when fishermen from the "
           "northern villages settled along the river mouth and built the first wooden piers, the "
           "warehouses and a small chapel for the sailors. Over the next",
           "Here is a short recipe for bread, written for someone who has never baked before and wants "
           "a simple loaf made with flour, water, salt and yeast, baked in an ordinary home oven:"]
N_TOKENS = 40
ONE_THREAD = dict(n_threads=1, n_threads_batch=1)


def load(model: str, servers: str | None = None, ngl: int = 0, **kw) -> SwiftLlama:
    if servers:   # the layers after the first n_layer - ngl go to the workers, half each
        kw.update(rpc_servers=servers, n_gpu_layers=ngl, tensor_split=[1, 1], verbose=True)
    return SwiftLlama(model, n_ctx=512, profile=None, spec="off", **ONE_THREAD, **kw)


def generate(llm: SwiftLlama, prompt: str, mode: str, skip: SkipSet | None = None, n: int = N_TOKENS) -> list[int]:
    with llm.speculation(mode, skip=skip, draft_max=4 if skip is not None else None):
        llm.reset()
        return [t.id for t in llm.generate_tokens(prompt, llm.sampling_params(temp=0.0), max_tokens=n)]


def emit(**values) -> None:
    print(json.dumps(values), flush=True)


def equal(model: str, servers: str) -> None:
    """Local plain decoding vs plain, swift (fixed skip set, remote layers in it) and auto over RPC."""
    local = load(model)
    try:
        emit(local=[generate(local, p, "off") for p in PROMPTS])
    finally:
        local.close()
    from swift_gguf import native
    llm = load(model, servers, ngl=20)   # SmolLM2: layers 0-10 here, 11-20 on worker 1, 21-29 + output on worker 2
    try:
        skip = SkipSet.from_lists(llm.rt.n_layer, attention=[3, 12, 15, 22, 25], ffn=[5, 14, 24])
        emit(remote_plain=[generate(llm, p, "off") for p in PROMPTS])
        built0, reused0 = native.graph_stats(llm.rt.ctx)
        swift, drafted, accepted = [], 0, 0
        for p in PROMPTS:
            swift.append(generate(llm, p, "swift", skip))
            drafted, accepted = drafted + llm.last_stats.drafted, accepted + llm.last_stats.accepted
        built1, reused1 = native.graph_stats(llm.rt.ctx)
        emit(swift=swift, drafted=drafted, accepted=accepted, built=built1 - built0, reused=reused1 - reused0)
        emit(auto=[generate(llm, p, "auto") for p in PROMPTS])
    finally:
        llm.close()


def fixture(model: str, servers: str) -> None:
    """The K=1 fixture (60 layers, odd ones inserted identities): layers 21-59 and the output on the workers."""
    llm = load(model, servers, ngl=40)
    try:
        n = llm.rt.n_layer
        tokens = llm.tokenize(PROMPTS[0].encode())

        def logits(mask: bytes) -> np.ndarray:
            llm.rt.remove(-1, 0, -1)
            with llm.rt.skipping(mask):
                llm.rt.decode(tokens, 0, all_logits=True)
            llm.rt.remove(-1, 0, -1)
            return llm.rt.logits_rows(len(tokens)).copy()

        plain = logits(b"")
        inserted = bytearray(n)
        for il in range(1, n, 2):
            inserted[il] = ATTN | FFN
        real = bytearray(n)
        real[44] = ATTN | FFN   # an original block, on worker 2
        emit(n_layer=n, inserted_identical=bool(np.array_equal(plain, logits(bytes(inserted)))),
             real_max_diff=float(np.abs(plain - logits(bytes(real))).max()))
    finally:
        llm.close()


def kill(model: str, servers: str, victim: int) -> None:
    """Kill a worker mid-generation; after the test restarted it (a line on stdin), load again."""
    local = load(model)
    try:
        emit(local=generate(local, PROMPTS[0], "off", n=16))
    finally:
        local.close()
    llm = load(model, servers, ngl=20)
    error, seconds, produced = None, None, 0
    try:
        for produced, _ in enumerate(llm.generate_tokens(PROMPTS[0], max_tokens=200), 1):
            if produced == 4:
                os.kill(victim, signal.SIGKILL)
                t_kill = time.monotonic()
    except RpcError as e:
        error, seconds = str(e), time.monotonic() - t_kill
    finally:
        llm.close()
    emit(error=error, seconds_to_error=seconds, tokens=produced)
    sys.stdin.readline()
    llm = load(model, servers, ngl=20)
    try:
        emit(reloaded=generate(llm, PROMPTS[0], "off", n=16))
    finally:
        llm.close()


if __name__ == "__main__":
    scenario, model, servers, *rest = sys.argv[1:]
    {"equal": equal, "fixture": fixture, "kill": kill}[scenario](model, servers, *map(int, rest))
