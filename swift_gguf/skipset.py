"""Skip sets: which attention and FFN sub-layers the drafter bypasses.

Sub-layers are indexed for the search as 0..2*(L-2)-1: first the attention of the
inner layers 1..L-2, then their FFNs. The first and last layers are never skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

ATTN = 1  # mask bit: bypass the attention sub-layer (llama_swift_set_layer_skip)
FFN = 2   # mask bit: bypass the FFN sub-layer


@dataclass(frozen=True)
class SkipSet:
    """Layers whose attention / FFN sub-layer is bypassed while drafting."""
    n_layer: int
    attention: frozenset[int] = frozenset()
    ffn: frozenset[int] = frozenset()

    def __post_init__(self):
        for il in (*self.attention, *self.ffn):
            if not 0 < il < self.n_layer - 1:
                raise ValueError(f"layer {il} cannot be skipped (only inner layers 1..{self.n_layer - 2})")

    @classmethod
    def from_lists(cls, n_layer: int, attention: Iterable[int] = (), ffn: Iterable[int] = ()) -> "SkipSet":
        return cls(n_layer, frozenset(int(i) for i in attention), frozenset(int(i) for i in ffn))

    @classmethod
    def from_indices(cls, n_layer: int, indices: Iterable[int]) -> "SkipSet":
        """From search indices (see module docstring)."""
        inner = n_layer - 2
        idx = [int(i) for i in indices]
        return cls(n_layer,
                   frozenset(i + 1 for i in idx if i < inner),
                   frozenset(i - inner + 1 for i in idx if i >= inner))

    @classmethod
    def all_inner(cls, n_layer: int) -> "SkipSet":
        return cls.from_indices(n_layer, range(n_sublayers(n_layer)))

    def indices(self) -> list[int]:
        inner = self.n_layer - 2
        return sorted([il - 1 for il in self.attention] + [il - 1 + inner for il in self.ffn])

    def mask(self) -> bytes:
        """One byte per layer for llama_swift_set_layer_skip (empty when nothing is skipped)."""
        cached = self.__dict__.get("_mask")   # set once per set: drafting asks every cycle
        if cached is not None:
            return cached
        m = bytearray(self.n_layer if self else 0)
        for il in self.attention:
            m[il] |= ATTN
        for il in self.ffn:
            m[il] |= FFN
        object.__setattr__(self, "_mask", bytes(m))
        return self.__dict__["_mask"]

    def __len__(self) -> int:
        return len(self.attention) + len(self.ffn)

    def __bool__(self) -> bool:
        return len(self) > 0

    @property
    def ratio(self) -> float:
        return len(self) / max(n_sublayers(self.n_layer), 1)

    def to_json(self) -> dict:
        return {"attention": sorted(self.attention), "ffn": sorted(self.ffn)}

    def describe(self) -> str:
        return f"{len(self.attention)} attn + {len(self.ffn)} ffn of {n_sublayers(self.n_layer)} ({self.ratio:.0%})"


def n_sublayers(n_layer: int) -> int:
    """How many sub-layers the search may skip."""
    return max(2 * (n_layer - 2), 0)
