"""What the policy layer asks of its collaborators, as typed Protocols.

The policy (engine, controller, drafters, costmodel, pacing, search) imports no llama_cpp: it
talks to llama.cpp only through a `Runtime` (runtime.Runtime in the product; a fake, a replay or
another backend elsewhere), reads its settings from a `SpecSettings` (engine.SpecConfig), asks a
`CostModel` what things cost (costmodel.Costs; benchmarks/policy_sim.py's replay of a run's measured
costs) and follows a `TokenStream` (engine.Stream). Whatever stands in for one of them must have
what is listed here: the Protocols are runtime-checkable for the methods (isinstance), and type
checkers check the rest.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class Runtime(Protocol):
    """One llama.cpp context: decode calls (returning their seconds), logits, KV edits, the skip mask."""
    n_layer: int
    n_vocab: int
    max_verify: int   # most tokens one verify() call takes
    kernels: "StepKernelChoice"   # which kernels step() runs (runtime.StepKernels)

    def decode(self, tokens: Sequence[int], pos0: int, *, seq: int = 0, all_logits: bool = False) -> float: ...

    def verify(self, tokens: Sequence[int], pos0: int, *, seq: int = 0) -> float: ...

    def step(self, token: int, pos: int, *, seq: int = 0, plain: bool = False) -> float: ...

    def logits(self, row: int = -1): ...

    def logits_rows(self, n: int): ...

    def is_eog(self, token: int) -> bool: ...

    def remove(self, seq: int, p0: int, p1: int = -1) -> None: ...

    def share(self, src: int, dst: int, p0: int, p1: int) -> None: ...

    def room(self, n_past: int) -> int: ...

    def skipping(self, mask: bytes) -> AbstractContextManager[None]: ...


@runtime_checkable
class StepKernelChoice(Protocol):
    """Which kernels one-token decodes run (runtime.StepKernels): chosen from plain steps' timings."""
    verification: bool | None   # the verification kernels (True), upstream's (False), not chosen yet (None)

    def label(self) -> str: ...


class SpecSettings(Protocol):
    """The speculation settings the policy reads (engine.SpecConfig; `SwiftLlama.speculation()` changes them)."""
    mode: str                  # off, swift, auto
    spec_type: str | None      # which drafters (None: the mode's default)
    draft_max: int | None      # None: lengths from the costs and acceptance
    draft_p_min: float         # epsilon: the layer-skip drafter's confidence stop
    adaptive_p_min: bool
    skip: object | None        # a fixed skip set (skipset.SkipSet), or None: the search's
    margin: float              # auto drafts when the predicted speedup exceeds 1 + margin
    search_budget: float
    search_budget_max: float


@runtime_checkable
class CostModel(Protocol):
    """What the controller and the lookup drafter ask about costs, in plain decode steps at a context."""

    def v_table(self, n_ctx: int) -> Sequence[float]: ...

    def plain_seconds(self, n_ctx: int) -> float: ...

    def live_verify_count(self, n_ctx: int, n: int) -> int: ...

    def draft_cost(self, drafter: str) -> float | None: ...

    def observe_draft(self, drafter: str, n_ctx: int, seconds: float, per: int = 1) -> None: ...


class TokenStream(Protocol):
    """A generation in progress: tokens[:n_past] are in the KV cache, tokens[n_past] (`last`) is pending."""
    tokens: list[int]
    n_past: int

    @property
    def last(self) -> int: ...


class TokenSampler(Protocol):
    """Chooses the token that follows `context` from row `row` of the last decode's logits."""

    def sample(self, row: int, context: Sequence[int]) -> int: ...

    def close(self) -> None: ...
