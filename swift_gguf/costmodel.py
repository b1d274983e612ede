"""When does speculation pay? Measured costs and the speedup formula.

Costs are in units of one plain single-token decode step (docs/cost-model.md):
c(set) for one draft step with a skip set, v(n) for verifying n tokens with logits
for all of them. A cycle drafting d tokens with per-token acceptance a emits
E = (1 - a^(d+1)) / (1 - a) tokens on average and costs d*c + v(d+1):

    S = E / (d*c + v(d+1))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .skipset import SkipSet

EMA = 0.2  # weight of a new measurement in running averages


@dataclass
class Costs:
    """Measured decode costs on this backend, relative to one plain decode step."""
    t_plain: float = 0.0                                 # seconds per plain decode step
    v: dict[int, float] = field(default_factory=dict)    # n -> cost of verifying n tokens
    attn: float = 0.0   # cost share of one inner attention sub-layer
    ffn: float = 0.0    # cost share of one inner FFN sub-layer

    @property
    def known(self) -> bool:
        return self.t_plain > 0 and len(self.v) >= 2

    def c(self, skip: SkipSet) -> float:
        """Predicted cost of one draft step with skip set (at least 2% of a step)."""
        return max(1.0 - len(skip.attention) * self.attn - len(skip.ffn) * self.ffn, 0.02)

    def verify(self, n: int) -> float:
        """v(n), interpolated linearly between measured points (v(1) = 1)."""
        pts = sorted({1: 1.0, **self.v}.items())
        if n <= pts[0][0]:
            return pts[0][1]
        for (n0, v0), (n1, v1) in zip(pts, pts[1:]):
            if n <= n1:
                return v0 + (v1 - v0) * (n - n0) / (n1 - n0)
        (n0, v0), (n1, v1) = pts[-2], pts[-1]
        return v1 + (v1 - v0) / (n1 - n0) * (n - n1)

    def observe_plain(self, seconds: float) -> None:
        self.t_plain = seconds if self.t_plain <= 0 else (1 - EMA) * self.t_plain + EMA * seconds

    def observe_verify(self, n: int, seconds: float) -> None:
        if self.t_plain <= 0:
            return
        r = seconds / self.t_plain
        self.v[n] = r if n not in self.v else (1 - EMA) * self.v[n] + EMA * r

    def to_json(self) -> dict:
        d = asdict(self)
        d["v"] = {str(k): round(x, 4) for k, x in sorted(self.v.items())}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Costs":
        return cls(t_plain=float(d["t_plain"]), v={int(k): float(x) for k, x in d["v"].items()},
                   attn=float(d["attn"]), ffn=float(d["ffn"]))


def expected_tokens(alpha: float, d: int) -> float:
    """Mean tokens emitted by a cycle of d drafts with per-token acceptance alpha (bonus included)."""
    if alpha >= 1.0:
        return d + 1.0
    return (1.0 - alpha ** (d + 1)) / (1.0 - alpha)


def speedup(alpha: float, c: float, d: int, costs: Costs) -> float:
    return expected_tokens(alpha, d) / (d * c + costs.verify(d + 1))


def best_draft_length(alpha: float, c: float, costs: Costs, d_max: int) -> tuple[int, float]:
    """(d, S) maximising the predicted speedup over draft lengths 1..d_max."""
    best = (1, speedup(alpha, c, 1, costs))
    for d in range(2, d_max + 1):
        s = speedup(alpha, c, d, costs)
        if s > best[1]:
            best = (d, s)
    return best


def predict(skip: SkipSet, alpha: float, costs: Costs, d_max: int) -> tuple[int, float]:
    """(best draft length, predicted speedup) for a skip set whose acceptance is alpha."""
    if not costs.known:
        return 1, 0.0
    return best_draft_length(alpha, costs.c(skip), costs, d_max)
