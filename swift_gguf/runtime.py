"""A thin layer over one llama.cpp context: decode a batch, read logits, edit the KV cache,
and set the layer-skip mask for the duration of a block.

The engine and the search talk to llama.cpp only through this class.
"""
from __future__ import annotations

import ctypes
import statistics
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
from llama_cpp import llama_cpp as C

from . import native, rpc
from .errors import ContextFullError, DecodeError
from .limits import MAX_VERIFY

# llama_get_logits(_ith) returning a plain address (a separate function object: llama_cpp's own
# binding, with its POINTER(c_float) result, stays untouched)
_logits_ith = C._lib["llama_get_logits_ith"]
_logits_ith.argtypes, _logits_ith.restype = [ctypes.c_void_p, ctypes.c_int32], ctypes.c_void_p
_logits = C._lib["llama_get_logits"]
_logits.argtypes, _logits.restype = [ctypes.c_void_p], ctypes.c_void_p

_DECODE_ERRORS = {
    1: "no free slot in the KV cache for this batch (the context is full): use a larger -c/--ctx-size",
    2: "decoding was aborted",
    -1: "invalid batch (bad token id or position)",
}


#: plain steps timed per kernel path before a Runtime keeps one (alternating, so both see the same
#: contexts and the same cache state after verifications)
STEP_TRIALS = 8
#: one-token decodes keep the verification kernels only where they are at least this much faster
#: (the medians of STEP_TRIALS steps differ by ~1% where the two are equal)
STEP_MARGIN = 0.97
#: plain steps after which the choice is timed again: one made while another process held a core
#: would otherwise stay for the model's lifetime (a new trial costs STEP_TRIALS steps on the slower
#: path, ~0.2% of the steps at a 20% difference)
STEP_REVISIT = 1024


class StepKernels:
    """Which kernels one-token decodes run on a CPU: upstream's (tinyBLAS where it applies) or the
    verification kernels (batch invariance on: patches 0003/0006's column kernels, ggml's vec_dot).

    Their logits are the same bit for bit: every row of a verification batch equals its one-token
    decode (patch 0003), and a one-token verification is such a row, checked like the others at every
    ISA level and setting (selfcheck.SIZES holds 1; tests/native/arm for ARM64). Which one is faster
    depends on the weights' types, the thread count and the CPU: on a 2-core Zen 5 with 2 threads,
    Gemma 3 (a Q8_0 output matrix) decodes in 0.80x the time through the verification kernels and
    Qwen2.5-Coder-0.5B in 0.86x, SmolLM2 (Q4_1) and Qwen2.5-Coder-1.5B (Q4_K) in 1.01-1.04x
    (benchmarks/verify_costs.py); with 1 thread Gemma 3 takes 1.10x (doctor --check). So plain steps take
    both, alternating, STEP_TRIALS each, then keep the faster: off and auto decode plainly at the
    better speed, with the same output; every STEP_REVISIT plain steps they are timed again. Elsewhere
    (a GPU, RPC workers) one-token decodes are upstream's.
    """

    def __init__(self, choose: bool):
        self.verification: bool | None = None if choose else False   # None: still timing both
        self.choose = choose
        self._seconds: tuple[list[float], list[float]] = ([], [])   # (upstream, verification)
        self._since = 0   # plain steps since the choice

    def next(self) -> bool:
        """Whether the next plain step runs the verification kernels."""
        if self.verification is not None:
            return self.verification
        upstream, verification = self._seconds
        return len(verification) < len(upstream)

    def observe(self, verification: bool, seconds: float) -> None:
        """A plain step's decode time on the path it took; the choice is made once both have enough,
        and made again after STEP_REVISIT more plain steps."""
        if self.verification is not None:
            self._since += 1
            if self.choose and self._since >= STEP_REVISIT:
                self.verification, self._seconds, self._since = None, ([], []), 0
            return
        self._seconds[verification].append(seconds)
        upstream, ver = self._seconds
        if len(upstream) >= STEP_TRIALS and len(ver) >= STEP_TRIALS:
            self.verification = self.prefers_verification(statistics.median(upstream), statistics.median(ver))

    def label(self) -> str:
        return {None: "timing", True: "verification", False: "upstream"}[self.verification]

    @staticmethod
    def prefers_verification(upstream: float, verification: float) -> bool:
        """The choice from two typical step times: the verification kernels only where clearly faster."""
        return verification < STEP_MARGIN * upstream


class Runtime:
    """Decode calls, logits and KV edits on one context, with timing of every call."""

    def __init__(self, ctx_ptr, model_ptr, *, n_batch: int, cpu: bool = False):
        self.ctx = ctx_ptr
        self.model = model_ptr
        self.vocab = C.llama_model_get_vocab(model_ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_layer = C.llama_model_n_layer(model_ptr)
        self.n_ctx = C.llama_n_ctx(ctx_ptr)
        self.n_batch = n_batch
        # most tokens one verification may hold: all of them must fit in one llama_decode call
        # (decode() splits longer inputs into n_batch calls, keeping only the last one's logits)
        self.max_verify = min(MAX_VERIFY, n_batch)
        self.mem = C.llama_get_memory(ctx_ptr)
        self._batch = C.llama_batch_init(n_batch, 0, 1)
        self._row_types: dict[int, type] = {}
        self._views: dict[tuple[int, int], np.ndarray] = {}   # (address, rows) -> view of the logits there
        self.decode_calls = 0
        # which kernels one-token decodes run (`step`): a choice only where every layer is on this CPU
        self.kernels = StepKernels(choose=cpu)
        self._rpc_errors = native.rpc_error_count()   # RPC connection failures so far (patch 0005)

    def close(self) -> None:
        if self._batch is not None:
            C.llama_batch_free(self._batch)
            self._batch = None

    # -- decoding ------------------------------------------------------------------

    def decode(self, tokens: Sequence[int], pos0: int, *, seq: int = 0, all_logits: bool = False) -> float:
        """Evaluate tokens at positions pos0.. on sequence seq; returns seconds taken (finished work).

        Logits are kept for every row when all_logits, else for the last row only.
        Longer inputs are split into n_batch chunks (then only the last chunk's logits stay).
        """
        start = time.perf_counter()
        n = len(tokens)
        for off in range(0, n, self.n_batch):
            chunk = tokens[off:off + self.n_batch]
            last_chunk = off + self.n_batch >= n
            self._fill(chunk, pos0 + off, seq, all_logits and last_chunk, last_chunk)
            rc = C.llama_decode(self.ctx, self._batch)
            self.decode_calls += 1
            if rc == -3:   # a failed computation: a lost RPC worker is the one cause to name
                rpc.check_errors(self._rpc_errors, call_failed=True)
            if rc != 0:
                msg = _DECODE_ERRORS.get(rc, f"llama_decode failed with code {rc}")
                if rc == 1:
                    raise ContextFullError(msg)
                raise DecodeError(msg)
        # llama_decode returns before an accelerator finishes (the wait happens when logits are
        # read): without this the costs measured on a GPU were the launch times (0.1 ms for a
        # 4.5 ms step) and every speedup prediction built on them was wrong
        C.llama_synchronize(self.ctx)
        # an RPC worker lost during this call leaves zeros where its layers' results were: never use them
        rpc.check_errors(self._rpc_errors)
        return time.perf_counter() - start

    def verify(self, tokens: Sequence[int], pos0: int, *, seq: int = 0) -> float:
        """Decode a verification batch (logits for every row): each row's logits are exactly those a
        one-token decode at its position gives (CPU, patch 0003), so accepting drafts against them is
        lossless; past limits.INVARIANT_UBATCH tokens llama.cpp splits the batch into ubatches of that
        size (patch 0003), each so, all their logits kept. Only here: every other batch (prompts) runs
        upstream's kernels and ubatch size, as llama.cpp's own."""
        if len(tokens) > self.max_verify:
            raise ValueError(f"a verification batch holds at most {self.max_verify} tokens here "
                             f"(limits.MAX_VERIFY, and n_batch {self.n_batch}), got {len(tokens)}")
        return self._decode_invariant(tokens, pos0, seq, all_logits=True)

    def _decode_invariant(self, tokens: Sequence[int], pos0: int, seq: int, all_logits: bool) -> float:
        """`decode` with batch invariance on for this call only (the verification kernels)."""
        native.set_batch_invariance(self.ctx)
        try:
            return self.decode(tokens, pos0, seq=seq, all_logits=all_logits)
        finally:
            native.set_batch_invariance(self.ctx, 0)

    def step(self, token: int, pos: int, *, seq: int = 0, plain: bool = False) -> float:
        """Decode one token (its row's logits kept) through the kernels `self.kernels` chose (the
        same logits either way); returns seconds taken. plain: a full-model plain step, the steps
        the choice is timed on (a drafting step under a skip mask takes the chosen path, or
        upstream's while both are still being timed)."""
        verification = self.kernels.next() if plain else bool(self.kernels.verification)
        secs = (self._decode_invariant([token], pos, seq, all_logits=False) if verification
                else self.decode([token], pos, seq=seq))
        if plain:
            self.kernels.observe(verification, secs)
        return secs

    def _fill(self, tokens: Sequence[int], pos0: int, seq: int, all_logits: bool, last: bool) -> None:
        b = self._batch
        n = len(tokens)
        b.n_tokens = n
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = all_logits
        if last:
            b.logits[n - 1] = True

    def logits(self, row: int = -1) -> np.ndarray:
        """Logits of one output row of the last decode (a view: copy it to keep it)."""
        return self._view(_logits_ith(self.ctx, row), 1)[0]

    def logits_rows(self, n: int) -> np.ndarray:
        """Logits of the last decode's n output rows, in batch order (a view)."""
        return self._view(_logits(self.ctx), n)

    def _view(self, addr: int | None, n: int) -> np.ndarray:
        # np.ctypeslib.as_array builds a ctypes array type per call (~50 us, once per drafted
        # token: a large share of a GPU step); the types are cached here per row count, and the
        # views per address: llama.cpp's output buffer stays put from decode to decode, so a plain
        # step reads the same row again (a view is only an address and a shape: one that llama.cpp
        # hands out again is as valid as a new one would be)
        if not addr:
            raise DecodeError("llama.cpp returned no logits for this row")
        view = self._views.get((addr, n))
        if view is not None:
            return view
        t = self._row_types.get(n)
        if t is None:
            t = self._row_types[n] = ctypes.c_float * (n * self.n_vocab)
        if len(self._views) >= 256:   # (a reallocated buffer brings new addresses)
            self._views.clear()
        view = self._views[(addr, n)] = np.frombuffer(t.from_address(addr), dtype=np.float32).reshape(n, self.n_vocab)
        return view

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    # -- KV cache --------------------------------------------------------------------

    def remove(self, seq: int, p0: int, p1: int = -1) -> None:
        """Drop positions [p0, p1) of seq (p1 < 0: to the end; seq < 0: every sequence)."""
        if not C.llama_memory_seq_rm(self.mem, seq, p0, p1):
            raise DecodeError(f"this model's memory cannot drop positions {p0}..{p1} (recurrent state)")

    def share(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Let seq dst see src's cells for positions [p0, p1) (free on a unified KV cache)."""
        C.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def clear(self) -> None:
        C.llama_memory_clear(self.mem, True)

    def room(self, n_past: int) -> int:
        """How many more positions fit after n_past."""
        return self.n_ctx - n_past

    # -- layer skipping ----------------------------------------------------------------

    @contextmanager
    def skipping(self, mask: bytes) -> Iterator[None]:
        """Decode with mask set inside the block; the mask is cleared on any exit (also Ctrl-C)."""
        native.set_layer_skip(self.ctx, mask)
        try:
            yield
        finally:
            native.clear_layer_skip(self.ctx)

    def current_mask(self) -> bytes:
        return native.get_layer_skip(self.ctx, self.n_layer)
