"""Timing decode calls as speculation makes them: the one primitive of the calibration and the benchmarks.

  interleaved   each call once per round, after one untimed round (it may build graphs): a busy
                machine's slow phases then hit every call alike (docs/benchmark-protocol.md)
  scratch       a scratch sequence at a context: the stream's cells shared, or a filler decoded
  time_batch    one batch of n tokens at a context (a verification batch: logits for every row,
                or a plain step), its decode seconds; the positions are removed again
  plain_run     the mean of k consecutive one-token decodes (a plain step as plain decoding takes it)
  step_paths    samples of a plain step through each one-token kernel path (runtime.StepKernels)
  choose_step_kernels  the runtime's choice of kernels for one-token decodes, made now (plain steps
                on the scratch sequence), so that a calibration times the steps plain decoding takes
  batch_seconds samples of verification batches of several sizes at a context (v(n))
  CycleReplay   a draft/verify cycle as SwiftEngine._cycle runs it (greedy one-token drafts with
                the skip mask, their KV removed, one verification of them all, rejected KV removed)
                and its parts in steady state, wall seconds with the host work each call brings

Users: costmodel.calibrate, benchmarks/specbench_worker.py (v(n) at chosen contexts),
benchmarks/rpc_bench.py (call costs over RPC), benchmarks/switching.py (the switching cost,
also on the GPU through benchmarks/gpu/gpu_bench.py). No llama_cpp here: everything goes through
a protocols.Runtime.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Hashable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from .protocols import Runtime
from .sampling import top1

K = TypeVar("K", bound=Hashable)
SCRATCH = 1   # the scratch sequence (the stream is sequence 0)


def interleaved(calls: Mapping[K, Callable[[], float]], rounds: int, *, alternate: bool = False,
                until: float | None = None) -> dict[K, list[float]]:
    """Samples of each call: rounds + 1 rounds over the calls in order, the first one untimed (it may
    build graphs). alternate: every other round in the reverse order, starting reversed (so no call
    always runs first after another one). until (a time.time()): no new round after it, once two
    were timed."""
    keys = list(calls)
    samples: dict[K, list[float]] = {k: [] for k in keys}
    for i in range(rounds + 1):
        if until is not None and i > 2 and time.time() > until:
            break
        for k in (keys if not alternate or i % 2 else keys[::-1]):
            secs = calls[k]()
            if i:
                samples[k].append(secs)
    return samples


@contextmanager
def scratch(rt: Runtime, n_past: int, fill: Sequence[int] | None = None) -> Iterator[int]:
    """The scratch sequence holding a context of n_past tokens: the stream's own cells before n_past
    (shared, free on a unified KV cache), or `fill` decoded there; removed on exit. Yields its id."""
    if fill is None:
        rt.share(0, SCRATCH, 0, n_past)
    try:
        if fill is not None:
            rt.decode(fill, 0, seq=SCRATCH)
        yield SCRATCH
    finally:
        rt.remove(SCRATCH, -1, -1)


def time_batch(rt: Runtime, tokens: Sequence[int], n_past: int, *, seq: int = 0, verify: bool = True) -> float:
    """Decode seconds of one batch at positions n_past.. of seq, removed again afterwards: a
    verification batch (logits for every row, Runtime.verify), or with verify=False a plain decode
    (the last row's logits). The layer-skip mask is whatever the caller set around it."""
    secs = rt.verify(tokens, n_past, seq=seq) if verify else rt.decode(tokens, n_past, seq=seq)
    rt.remove(seq, n_past, -1)
    return secs


def plain_run(rt: Runtime, tokens: Sequence[int], n_past: int, k: int, *, seq: int = 0) -> float:
    """Mean decode seconds of k consecutive one-token decodes (Runtime.step: the kernels plain steps
    run) of tokens[:k] at positions n_past.., removed again afterwards: a plain step as plain
    decoding takes it, one after another. (Alone,
    right after a large batch, a one-token step ran 5-12% slower than in a run: SmolLM2 at 96 and
    720 cells of context, benchmarks/specbench_worker.py's v(n) interleaving sizes up to 64.)"""
    secs = sum(rt.step(tokens[i], n_past + i, seq=seq) for i in range(k)) / k
    rt.remove(seq, n_past, -1)
    return secs


def step_paths(rt: Runtime, tokens: Sequence[int], n_past: int, rounds: int, k: int = 4) -> dict[str, list[float]]:
    """Samples of a plain step (`plain_run` of k tokens at n_past) through upstream's one-token kernels
    and through the verification kernels, interleaved over `rounds` (what runtime.StepKernels chooses
    between); the runtime's own choice is left as it was."""
    kernels = rt.kernels
    saved = kernels.verification

    def through(verification: bool) -> Callable[[], float]:
        def call() -> float:
            kernels.verification = verification
            return plain_run(rt, tokens, n_past, k)
        return call
    try:
        return interleaved({"upstream": through(False), "verification": through(True)}, rounds, alternate=True)
    finally:
        kernels.verification = saved


def choose_step_kernels(rt: Runtime, token: int, n_past: int, *, limit: int = 32) -> None:
    """Make the runtime's choice of one-token kernels (runtime.StepKernels) now if it is still open:
    plain steps of `token` at consecutive positions after n_past on the scratch sequence, as plain
    decoding's first steps would make it (at most `limit`), removed again. A calibration times its
    plain step and drafting steps after this, on the kernels plain decoding and drafting will run
    (Gemma 3: 20% apart on a Zen 5)."""
    if rt.kernels.verification is not None or rt.room(n_past) <= limit + 1:
        return
    with scratch(rt, n_past) as seq:
        for i in range(limit):
            if rt.kernels.verification is not None:
                break
            rt.step(token, n_past + i, seq=seq, plain=True)


def batch_seconds(rt: Runtime, tokens: Sequence[int], n_past: int, sizes: Sequence[int], rounds: int, *,
                  fill: Sequence[int] | None = None, mask: bytes = b"", alternate: bool = False,
                  plain: int = 0) -> dict[int, list[float]]:
    """Decode seconds of verification batches of each size (tokens[:n]) at a context of n_past tokens
    on the scratch sequence (`scratch`: the stream's cells, or `fill`), interleaved over `rounds`
    timed rounds, with the skip mask set: what costmodel.calibrate measures v(n) with (best of
    each), and benchmarks/specbench_worker.py at the contexts of a run (median of each). Size 1 is
    a plain step (`plain_run` of max(plain, 1) tokens: a one-token verification may run other
    kernels than plain steps, runtime.StepKernels)."""
    with scratch(rt, n_past, fill) as seq, rt.skipping(mask):
        calls = {n: (lambda n=n: time_batch(rt, tokens[:n], n_past, seq=seq)) for n in sizes}
        if 1 in calls:
            calls[1] = lambda: plain_run(rt, tokens, n_past, max(plain, 1), seq=seq)
        return interleaved(calls, rounds, alternate=alternate)


class CycleReplay:
    """A draft/verify cycle of d drafts at a fixed context, replayed as the engine runs it, and its
    calls one by one in steady state (each wall seconds, the greedy host work included: top1 of a
    draft's logits, the argmax of the verified rows).

    The drafts are the skip set's own greedy continuation of `last`; the verified tokens the full
    model's (so a timed verification sees the text speculation would verify)."""

    def __init__(self, rt: Runtime, n_past: int, last: int, mask: bytes, d: int, seq: int = 0):
        self.rt, self.n_past, self.last, self.mask, self.d, self.seq = rt, n_past, last, mask, d, seq
        self._scratch = np.empty(rt.n_vocab, np.float32)
        self.verified = [last, *self._continue(b"", d)]   # the full model's own continuation

    def _continue(self, mask: bytes, d: int) -> list[int]:
        """d greedy tokens after `last` (with mask), removed again."""
        rt, out, tok = self.rt, [], self.last
        with rt.skipping(mask):
            for i in range(d):
                rt.step(tok, self.n_past + i, seq=self.seq)
                tok, _ = top1(rt.logits(-1), self._scratch)
                out.append(tok)
        rt.remove(self.seq, self.n_past, -1)
        return out

    def step(self, masked: bool = False) -> float:
        """One one-token decode of `last` and its top1: a plain step, or with masked a draft step
        (the mask set around the timed call, as the drafter sets it around its whole draft)."""
        with self.rt.skipping(self.mask) if masked else nullcontext():
            return self._step()

    def _step(self) -> float:
        rt = self.rt
        t = time.perf_counter()
        rt.step(self.last, self.n_past, seq=self.seq)
        top1(rt.logits(-1), self._scratch)
        dt = time.perf_counter() - t
        rt.remove(self.seq, self.n_past, -1)
        return dt

    def verify(self) -> float:
        """One verification of d + 1 tokens and the argmax of its rows."""
        rt = self.rt
        t = time.perf_counter()
        rt.verify(self.verified, self.n_past, seq=self.seq)
        rt.logits_rows(len(self.verified)).argmax(axis=1)
        dt = time.perf_counter() - t
        rt.remove(self.seq, self.n_past, -1)
        return dt

    def cycle(self) -> float:
        """The whole cycle: d masked one-token drafts (each from the last one's top1), the draft KV
        removed, one verification of [last, drafts...] and its argmax, the verified KV removed."""
        t = time.perf_counter()
        drafts = self._continue(self.mask, self.d)
        rt = self.rt
        rt.verify([self.last, *drafts], self.n_past, seq=self.seq)
        rt.logits_rows(len(drafts) + 1).argmax(axis=1)
        rt.remove(self.seq, self.n_past, -1)
        return time.perf_counter() - t
