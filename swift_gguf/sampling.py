"""Token selection: greedy, or sampling from the target's processed distribution.

The speculative verifier needs the *processed* distribution at each verified
position (after penalties, top-k, top-p, min-p, temperature), so sampling is done
here in numpy rather than in llama.cpp's sampler chain. The order follows
llama-cpp-python's chain: penalties -> top-k -> top-p -> min-p -> temperature -> draw.
Plain decoding in swift-gguf uses this same sampler, so speculative and plain
outputs come from the same distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # <= 0: greedy (argmax)
    top_k: int = 40           # <= 0: off
    top_p: float = 0.95       # >= 1: off
    min_p: float = 0.05       # <= 0: off
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        return (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0)


class Sampler:
    """Chooses the next token from a row of logits and the token history."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def apply_penalties(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        p = self.params
        if not p.penalized or p.penalty_last_n == 0 or not history:
            return logits
        recent = np.asarray(history[-p.penalty_last_n:] if p.penalty_last_n > 0 else history)
        ids, counts = np.unique(recent, return_counts=True)
        out = logits.copy()
        vals = out[ids]
        vals = np.where(vals <= 0, vals * p.repeat_penalty, vals / p.repeat_penalty)
        vals -= counts * p.frequency_penalty + p.presence_penalty
        out[ids] = vals
        return out

    def distribution(self, logits: np.ndarray, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(candidate token ids, their probabilities) of the processed distribution."""
        p = self.params
        x = self.apply_penalties(np.asarray(logits, dtype=np.float64), history)
        if 0 < p.top_k < x.size:
            ids = np.argpartition(-x, p.top_k - 1)[:p.top_k]
        else:
            ids = np.arange(x.size)
        ids = ids[np.argsort(-x[ids], kind="stable")]
        vals = x[ids]
        if p.top_p < 1.0:
            probs = _softmax(vals)
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            ids, vals = ids[:keep], vals[:keep]
        if p.min_p > 0.0:
            # min-p on the untempered distribution: keep tokens with prob >= min_p * max prob
            keep = vals >= vals[0] + np.log(p.min_p)
            ids, vals = ids[keep], vals[keep]
        return ids, _softmax(vals / p.temperature)

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """The next token: argmax when greedy, else a draw from the processed distribution."""
        if self.params.greedy:
            return int(np.argmax(self.apply_penalties(logits, history)))
        ids, probs = self.distribution(logits, history)
        return int(ids[self.rng.choice(ids.size, p=probs)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def top1(logits: np.ndarray, scratch: np.ndarray | None = None) -> tuple[int, float]:
    """(argmax token, its softmax probability): the drafter's choice and confidence.

    scratch (float32, the logits' size) avoids two vocabulary-sized temporaries per call:
    above malloc's mmap threshold each one costs fresh pages, once per drafted token.
    """
    i = int(np.argmax(logits))
    buf = np.empty(logits.shape, np.float32) if scratch is None else scratch
    np.subtract(logits, logits[i], out=buf)
    np.exp(buf, out=buf)
    return i, 1.0 / float(buf.sum())
