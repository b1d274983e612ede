"""Bounds of the numbers a user sets, and the verification limit, in one place.

The CLI turns the bounds into click's IntRange/FloatRange option types (`click_type`); the
engine's and the API's own checks read the same bounds, so the two cannot drift apart.
No llama_cpp here: the policy modules (controller, drafters) read MAX_VERIFY without the
native library.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """An interval; None is unbounded on that side; *_open excludes the end itself."""
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.min is not None and (x < self.min or (self.min_open and x == self.min)):
            return False
        return not (self.max is not None and (x > self.max or (self.max_open and x == self.max)))

    def __str__(self) -> str:
        """Interval notation: (0, 1], [16, inf)."""
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return (f"{'(' if self.min_open or self.min is None else '['}{lo}, "
                f"{hi}{')' if self.max_open or self.max is None else ']'}")


# -- speculation (SpecConfig) ------------------------------------------------------------
# Patch 0003 makes CPU batches of up to INVARIANT_UBATCH rows bit-identical to one-token decodes (and
# patch 0002's graph cache keeps graphs up to that size); while the setting is on, llama_decode splits
# a longer batch into ubatches of that size (ABI 5), each one as exact
INVARIANT_UBATCH = 32
# Most tokens in one verification call (a draft of at most MAX_VERIFY - 1 tokens plus the pending one):
# two invariant ubatches. Copies in summaries and retrieved passages run longer than 32 tokens; past
# 64 a cycle gains little (v(n) is linear in n there: ~0.2 plain steps per row on this project's CPUs)
MAX_VERIFY = 2 * INVARIANT_UBATCH
DRAFT_MAX = Bound(min=1)                        # tokens drafted per cycle
DRAFT_P_MIN = Bound(0.0, 1.0, min_open=True)    # epsilon: the confidence that keeps a draft going

# -- the model and the context -----------------------------------------------------------
CTX_SIZE = Bound(min=16)        # a context smaller than this cannot hold a prompt and a reply
GPU_LAYERS = Bound(min=-1)      # -1: all layers (llama.cpp's convention)
THREADS = Bound(min=1)

# -- sampling (llama.cpp conventions) ----------------------------------------------------
MAX_TOKENS = Bound(min=1)
TOP_K = Bound(min=0)            # 0: off
PROBABILITY = Bound(0.0, 1.0)   # top_p, min_p
REPEAT_PENALTY = Bound(0.0, min_open=True)   # 1.0: off


def click_type(bound: Bound, integer: bool, hint: str = ""):
    """click's IntRange/FloatRange for bound; hint (what to do instead) ends its error message."""
    import click

    base = click.IntRange if integer else click.FloatRange

    class Range(base):
        def fail(self, message, param=None, ctx=None):
            super().fail(f"{message} {hint}".strip(), param, ctx)

    lo = None if bound.min is None else (int(bound.min) if integer else bound.min)
    hi = None if bound.max is None else (int(bound.max) if integer else bound.max)
    return Range(lo, hi, min_open=bound.min_open, max_open=bound.max_open)
