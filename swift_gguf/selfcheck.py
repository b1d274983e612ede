"""Is speculation lossless on this machine, with these settings? A bitwise self-test.

Speculative decoding is lossless only if every row of a verification batch (`Runtime.verify`)
has exactly the logits plain decoding computes for that token, one token at a time. Whether it
does depends on the build's kernels (the CPU's instruction set), on the settings (flash attention,
the thread counts of one-token decodes and of batches, the KV cache type, the ubatch size) and on
the context length (flash attention splits long contexts across threads). This module measures
it: after a context of L tokens it verifies n tokens in one batch, then decodes the same n tokens
one at a time, and compares the logits bit for bit.

`swift-gguf doctor --check` runs it with the user's settings; the test suite runs it over a
matrix of settings and over every instruction-set level the host can execute.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

#: KV positions at which verification batches start: below 256 cells (llama.cpp's padding step),
#: past it, past 512 (one-token decodes split the attention into one chunk per thread there) and
#: past 1024
POSITIONS = (100, 300, 600, 1100)
#: verification sizes: one token (a plain step through the verification kernels, runtime.StepKernels),
#: the smallest draft, a typical layer-skip draft + 1, a long lookup draft + 1, one past
#: limits.INVARIANT_UBATCH (llama.cpp decodes it as two ubatches, 32 + 8)
SIZES = (1, 2, 9, 17, 40)


@dataclass(frozen=True)
class Setting:
    """What a model is loaded with, as far as verification's numerics are concerned."""
    flash_attn: bool = True
    n_threads: int | None = None         # None: llama-cpp-python's default (half the cores)
    n_threads_batch: int | None = None   # None: llama-cpp-python's default (all cores)
    extra: tuple[tuple[str, object], ...] = ()   # other Llama arguments (type_k, n_ubatch, ...)

    def kwargs(self) -> dict:
        kw: dict = {"flash_attn": self.flash_attn, **dict(self.extra)}
        if self.n_threads is not None:
            kw["n_threads"] = self.n_threads
        if self.n_threads_batch is not None:
            kw["n_threads_batch"] = self.n_threads_batch
        return kw

    def label(self) -> str:
        threads = f"{_threads(self.n_threads, False)}/{_threads(self.n_threads_batch, True)}"
        parts = [f"flash attention {'on' if self.flash_attn else 'off'}", f"threads {threads}"]
        parts += [f"{k}={v}" for k, v in self.extra]
        return ", ".join(parts)


def _threads(n: int | None, batch: bool) -> str:
    if n is not None:
        return str(n)
    cores = os.cpu_count() or 1
    return f"{cores if batch else max(cores // 2, 1)} (default)"


@dataclass
class Mismatch:
    """A verification row whose logits differ from its one-token decode."""
    position: int       # KV position of the row's token
    batch: int          # size of the verification batch
    row: int            # row in that batch
    max_diff: float     # max |logit difference|


@dataclass
class CheckResult:
    setting: str
    rows: int = 0                                   # rows compared
    mismatches: list[Mismatch] = field(default_factory=list)
    error: str | None = None                        # the setting could not be checked
    step_ms: dict[str, float] | None = None         # a plain step's median ms per kernel path (timed checks)

    @property
    def passed(self) -> bool:
        return self.error is None and self.rows > 0 and not self.mismatches

    def summary(self) -> str:
        if self.error:
            return f"ERROR   {self.setting}: {self.error}"
        if self.passed:
            return f"pass    {self.setting}: {self.rows} verification rows bit-identical to one-token decoding"
        worst = max(m.max_diff for m in self.mismatches)
        first = min(m.position for m in self.mismatches)
        return (f"FAIL    {self.setting}: {len(self.mismatches)} of {self.rows} rows differ from one-token "
                f"decoding (from KV position {first} on, max |logit difference| {worst:.3g})")

    def step_summary(self) -> str:
        """Which kernels plain steps would take with this setting, and why (empty if not timed)."""
        if not self.step_ms:
            return ""
        up, ver = self.step_ms["upstream"], self.step_ms["verification"]
        from .runtime import StepKernels
        faster = "the verification kernels" if StepKernels.prefers_verification(up, ver) else "upstream's"
        return (f"plain step {up:.2f} ms through upstream's one-token kernels, {ver:.2f} ms through the "
                f"verification kernels ({ver / up:.2f}x, the same logits): plain decoding would take {faster}")

    def as_dict(self) -> dict:
        return {"setting": self.setting, "rows": self.rows, "passed": self.passed, "error": self.error,
                "mismatches": [asdict(m) for m in self.mismatches], "step_ms": self.step_ms}


def context_tokens(llm, n: int) -> list[int]:
    """n tokens of natural text (the built-in prompts, repeated as needed), starting with BOS."""
    from .optimize import load_prompts
    text = "\n\n".join(p["prompt"] for p in load_prompts(None, default="bench"))
    toks = llm.tokenize(text.encode(), add_bos=False)
    bos = llm.tokenize(b"", add_bos=True)
    out = list(bos)
    while len(out) < n:
        out += toks
    return out[:n]


def compare_rows(llm, tokens: Sequence[int], positions: Iterable[int] = POSITIONS,
                 sizes: Iterable[int] = SIZES, *, verify: Callable | None = None) -> tuple[int, list[Mismatch]]:
    """Verify tokens[L:L+n] in one batch after tokens[:L] and compare every row with the one-token
    decode of the same token; returns (rows compared, mismatches).

    The context is evaluated once, up to the largest L; for each L, from the largest down, the
    cache is cut back to L (as a rejected draft is). `verify` replaces Runtime.verify (the tests'
    negative control passes a plain batch decode, which must be caught).
    """
    rt = llm.rt
    positions, sizes = sorted(positions, reverse=True), sorted(sizes)
    need = positions[0] + sizes[-1]
    if len(tokens) < need or need > rt.n_ctx:
        raise ValueError(f"the check needs {need} tokens in the context (got {len(tokens)} tokens, "
                         f"n_ctx {rt.n_ctx})")
    verify = verify or rt.verify
    rt.clear()
    rt.decode(list(tokens[:positions[0]]), 0)
    rows, bad = 0, []
    for L in positions:
        rt.remove(0, L, -1)
        cont = list(tokens[L:L + sizes[-1]])
        single = []
        for i, t in enumerate(cont):
            rt.decode([t], L + i)
            single.append(rt.logits(-1).copy())
        for n in sizes:
            rt.remove(0, L, -1)
            verify(cont[:n], L)
            batch = rt.logits_rows(n)
            for i in range(n):
                rows += 1
                diff = float(np.max(np.abs(batch[i] - single[i])))
                if diff != 0.0 or not np.array_equal(batch[i], single[i]):
                    bad.append(Mismatch(position=L + i, batch=n, row=i, max_diff=diff))
    rt.clear()
    return rows, bad


def check_setting(model_path: str | Path, setting: Setting, *, n_ctx: int | None = None,
                  positions: Iterable[int] = POSITIONS, sizes: Iterable[int] = SIZES, time_steps: bool = False,
                  **load) -> CheckResult:
    """Load the model with `setting` (and `load`: Llama arguments such as n_gpu_layers) and compare;
    time_steps: also time a plain step through both one-token kernel paths, where the runtime chooses
    between them (a CPU context: runtime.StepKernels)."""
    from .api import SwiftLlama
    positions, sizes = tuple(positions), tuple(sizes)
    need = max(positions) + max(sizes)
    result = CheckResult(setting=setting.label())
    try:
        llm = SwiftLlama(str(model_path), n_ctx=n_ctx or max(2048, need), spec="off", profile=None,
                         **setting.kwargs(), **load)
    except Exception as e:   # a setting this build or backend cannot load is reported, not raised
        result.error = str(e)
        return result
    try:
        tokens = context_tokens(llm, need)
        result.rows, result.mismatches = compare_rows(llm, tokens, positions, sizes)
        if time_steps and llm.rt.kernels.choose:
            result.step_ms = time_step_paths(llm, tokens)
    finally:
        llm.close()
    return result


def time_step_paths(llm, tokens: Sequence[int], n_past: int = 100, rounds: int = 6) -> dict[str, float]:
    """Median ms of a plain step at n_past through each one-token kernel path (timing.step_paths)."""
    from .timing import step_paths
    rt = llm.rt
    rt.clear()
    rt.decode(list(tokens[:n_past]), 0)
    try:
        samples = step_paths(rt, tokens[n_past:], n_past, rounds)
    finally:
        rt.clear()
    return {path: round(1e3 * float(np.median(xs)), 4) for path, xs in samples.items()}


def user_settings(flash_attn: bool, threads: int | None, threads_batch: int | None) -> list[Setting]:
    """The user's setting first, then neighbours that tell which setting a failure comes from:
    flash attention switched, and (where the thread counts differ) equal thread counts."""
    if threads is not None and threads_batch is None:
        threads_batch = threads   # llama.cpp's -t without -tb: batches use the same threads
    mine = Setting(flash_attn, threads, threads_batch)
    out = [mine, Setting(not flash_attn, threads, threads_batch)]
    decode_threads = threads or max((os.cpu_count() or 1) // 2, 1)
    batch_threads = threads_batch or (os.cpu_count() or 1)
    if decode_threads != batch_threads:
        out.append(Setting(flash_attn, decode_threads, decode_threads))
    return out
