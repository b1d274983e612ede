"""Token selection for the verifier: llama.cpp's own sampler chain, built as llama-cpp-python builds it.

Every emitted token, plain or speculative, is chosen by one call of a `TokenSampler` on one
row of the last decode's logits. The speculative verifier samples each verified position in
order and accepts a draft while the sample equals it, so each position takes exactly the draw
plain decoding would take there: with the same seed, speculative output equals plain output
token for token, and equals `llama_cpp.Llama`'s (same chain: penalties, grammar, logits
processors, top-k / typical / top-p / min-p / temperature, mirostat, its RNG).

Greedy decoding without penalties, grammar or logits processors reduces llama.cpp's chain to
an argmax (its greedy sampler keeps the first maximum, as numpy's argmax does): that case skips
the chain's per-call copy of the vocabulary.

No llama_cpp at import (the policy layer imports `top1` and `TokenSampler` from here): a
`ChainSampler` binds llama.cpp's sampling call when it is made.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .protocols import TokenSampler  # noqa: F401  (re-exported: the samplers below are TokenSamplers)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, named and defaulted as llama-cpp-python's `create_completion` names them."""
    temperature: float = 0.0  # 0: greedy; < 0: sample from the untruncated softmax
    top_k: int = 40           # <= 0: off
    top_p: float = 0.95       # >= 1: off
    min_p: float = 0.05       # <= 0: off
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0)

    def llama_kwargs(self) -> dict:
        """These settings as `Llama._init_sampler` / `Llama.generate` keyword arguments."""
        return dict(temp=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                    typical_p=self.typical_p, repeat_penalty=self.repeat_penalty,
                    frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                    mirostat_mode=self.mirostat_mode, mirostat_tau=self.mirostat_tau,
                    mirostat_eta=self.mirostat_eta)


class GreedySampler:
    """argmax of the row: what llama.cpp's chain [penalties (neutral), greedy] returns."""

    def __init__(self, logits: Callable[[int], np.ndarray]):
        self._logits = logits

    def sample(self, row: int, context: Sequence[int]) -> int:
        return int(self._logits(row).argmax())   # (the method: np.argmax's dispatch costs ~1 us a token)

    def close(self) -> None:
        pass


class ChainSampler:
    """llama.cpp's sampler chain (a llama-cpp-python `LlamaSampler`) applied to one row.

    `llama_sampler_sample` applies the chain to the row, draws, and accepts the token into the
    chain's state (penalty window, grammar, mirostat): called once per emitted token, in order,
    the state always follows the emitted text. `before(context)` runs first when given (it shows
    Python logits processors the history they expect).
    """

    def __init__(self, chain, ctx, before: Callable[[Sequence[int]], None] | None = None):
        from llama_cpp import llama_cpp as C
        self._chain = chain
        self._ctx = ctx
        self._before = before
        self._sample = C.llama_sampler_sample

    def sample(self, row: int, context: Sequence[int]) -> int:
        if self._before is not None:
            self._before(context)
        return int(self._sample(self._chain.sampler, self._ctx, row))

    def close(self) -> None:
        self._chain.close()


def top1(logits: np.ndarray, scratch: np.ndarray | None = None) -> tuple[int, float]:
    """(argmax token, its softmax probability): the drafter's choice and confidence.

    scratch (float32, the logits' size) avoids two vocabulary-sized temporaries per call:
    above malloc's mmap threshold each one costs fresh pages, once per drafted token.
    """
    i = int(np.argmax(logits))
    buf = np.empty(logits.shape, np.float32) if scratch is None else scratch
    np.subtract(logits, logits[i], out=buf)
    np.exp(buf, out=buf)
    return i, 1.0 / float(np.add.reduce(buf))   # what buf.sum() computes, without its Python wrapper
