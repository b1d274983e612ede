"""When does speculation pay? Measured costs and the speedup formula.

Costs are in units of one plain single-token decode step at the same context length
(docs/cost-model.md): c for one draft step, v(n) for verifying n tokens with logits
for all of them. A cycle drafting d tokens whose draft positions are accepted with
conditional probabilities p_1..p_d (position i is reached only if 1..i-1 were accepted)
emits E = 1 + p_1 + p_1 p_2 + ... + p_1...p_d tokens on average (the verifier's own token
included) and costs c_fixed + d*c + v(d+1):

    S = E / (c_fixed + d*c + v(d+1))

That formula is written once, here (`expected_tokens`, `cycle_cost`, `speedup`, `best_length`), for
every prediction: the controller's choice of drafter and length (live v tables), the layer search's
ranking of skip sets and the search pacing's estimate of a gain (`predict`: the calibration's v, a
constant acceptance, no fixed cost), and the engine's `predicted_speedup`; draft lengths run up to
DRAFT_MAX unless draft_max says otherwise.

Each measured thing is kept apart (`Costs`):
  calibration  measured once per model on a scratch sequence, at one context length:
               t_plain, v(n) and the per-sub-layer cost shares (saved in the profile)
  live         what generation measures as it runs, per context-length bucket: plain-step
               decode seconds, verification decode seconds per batch size (no Python
               sampling in either), and each drafter's own draft seconds
The live numbers describe this machine now (load, context length); the calibration gives the
shape of v(n) where live numbers are missing. Verification gets dearer with context (each query
row of a verification batch reads all of K and V), so v is looked up per bucket.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .limits import MAX_VERIFY
from .protocols import Runtime
from .skipset import SkipSet
from .timing import batch_seconds, choose_step_kernels

EMA = 0.2           # weight of a new measurement in running averages
BUCKET_BASE = 128   # context buckets: [0, 128), [128, 256), [256, 512), ... (each doubles)
MIN_LIVE = 2        # live observations before a live number replaces the calibration's
OUTLIER = 3.0       # a live sample counts at most this multiple of the running average
# A bucket's v table is recomputed once its live observations weigh V_REFRESH: a verification
# V_VERIFY_WEIGHT, a plain step 1. Verifications are what the table is made of (one moves an entry);
# plain steps only move the unit, slowly, and come every token: rebuilding a table every 16 of them
# cost ~3 us a token on a fast backend (benchmarks/host_work.py), every 64 a quarter of that
V_REFRESH = 64
V_VERIFY_WEIGHT = 4   # so 16 verifications, as before plain steps were told apart
SHRINK = 4.0          # a timed size's live ratio to the shape is shrunk toward its bucket's pooled ratio
SHRINK_CAP = 9        # ... as if the pool were SHRINK observations; one size counts at most this many (an
                      # EMA of weight EMA remembers about (2 - EMA) / EMA of them)
V_DRIFT = 0.02        # ... and where only plain steps came, only once the plain step moved by this share
V_MAX = 64          # verification sizes the tables cover (v[n] for n <= V_MAX)
# The one draft maximum every prediction assumes unless draft_max says otherwise (the layer-skip
# drafter's longest offer, the search's ranking, pacing, predicted_speedup): at the acceptance a
# good skip set reaches (~0.9) a 17th drafted token adds 0.9^17 = 0.17 expected tokens for one more
# draft step and verification row (0.3-0.6 plain steps on this project's CPUs), which raises the
# predicted speedup only where it is below 0.3-0.6, where nothing pays anyway
DRAFT_MAX = 16
MIN_DRAFT_COST = 0.02   # floor of a predicted draft step's cost: a skip set never makes drafting free
                        # (embeddings, first and last layer, output matrix; a share model could say 0)


# n = 0..V_MAX, and max(n, 1), for the v tables (read only)
_NS = np.arange(V_MAX + 1, dtype=np.float64)
_NS_AT_LEAST_1 = np.maximum(_NS, 1.0)
_NS.flags.writeable = _NS_AT_LEAST_1.flags.writeable = False


def bucket(n_ctx: int) -> int:
    """The context-length bucket of a context holding n_ctx tokens."""
    return max(0, n_ctx // BUCKET_BASE).bit_length()


class Ema:
    """A running average of seconds that shrugs off outliers, with its observation count.

    Disturbances only ever make a call slower: the first call of a batch shape builds its graph
    (measured: 2.6 s for a 53 ms call), another process takes the CPU. So the second sample
    replaces the first where it is smaller, and later samples count at most OUTLIER x the average.
    """
    __slots__ = ("mean", "n")

    def __init__(self) -> None:
        self.mean, self.n = 0.0, 0

    def add(self, x: float) -> None:
        if self.n == 0:
            self.mean = x
        elif self.n == 1:
            self.mean = min(self.mean, x)
        else:
            self.mean = (1 - EMA) * self.mean + EMA * min(x, OUTLIER * self.mean)
        self.n += 1


class Decayed:
    """Decayed evidence: a sum of observed amounts and a sum of their weights, both ageing by `decay`
    per observation (so the last ~1 / (1 - decay) observations count), and the number of observations
    aged alike. The one primitive behind the layer-skip drafter's live acceptance and its
    low-confidence acceptance, and the controller's backoff (tokens per plain-step cost of a drafter's
    cycles).

    Two running statistics keep their own shape, on purpose: `Ema` (seconds: the first sample taken as
    it is, the second only where smaller, outliers clipped) and drafters.Acceptance (one such pair per
    acceptance class and draft position, where only the positions a draft reached age).
    """
    __slots__ = ("decay", "num", "den", "count")

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.num = self.den = self.count = 0.0

    def add(self, num: float, den: float = 1.0) -> None:
        d = self.decay
        self.num = d * self.num + num
        self.den = d * self.den + den
        self.count = d * self.count + 1

    def ratio(self) -> float:
        """num / den (the caller decides how much evidence, den or count, it needs first)."""
        return self.num / self.den

    def clear(self) -> None:
        self.num = self.den = self.count = 0.0


class LiveCosts:
    """Live decode timings per context bucket, and each drafter's draft timings (never saved)."""

    def __init__(self) -> None:
        self.plain: dict[int, Ema] = {}               # bucket -> seconds per plain decode step
        self.verify: dict[int, dict[int, Ema]] = {}   # bucket -> n -> seconds per verification of n
        self.draft: dict[str, Ema] = {}               # drafter -> draft cost (plain steps, see observe_draft)
        self.changes: dict[int, int] = {}             # bucket -> weight of its observations (table refreshes)
        self.verified: dict[int, int] = {}            # bucket -> verifications observed

    def to_json(self) -> dict:
        return {
            "plain_ms": {str(b): round(e.mean * 1e3, 4) for b, e in sorted(self.plain.items())},
            "verify_ms": {str(b): {str(n): round(e.mean * 1e3, 4) for n, e in sorted(vs.items())}
                          for b, vs in sorted(self.verify.items())},
            "draft": {k: round(e.mean, 5) for k, e in sorted(self.draft.items())},
        }


@dataclass
class Costs:
    """Decode costs on this backend: the calibration (saved) and live measurements (kept apart)."""
    t_plain: float = 0.0                                 # calibration: seconds per plain decode step
    v: dict[int, float] = field(default_factory=dict)    # calibration: n -> cost of verifying n tokens
    attn: float = 0.0   # calibration: cost share of one inner attention sub-layer
    ffn: float = 0.0    # calibration: cost share of one inner FFN sub-layer
    n_ctx: int = 0      # calibration: the context length it ran at
    live: LiveCosts = field(default_factory=LiveCosts, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._tables: dict[int, tuple] = {}   # bucket -> (changes, verified, plain seconds when built, v table)
        self._curve: tuple[tuple, np.ndarray] | None = None    # (calibration, its v(n) for n = 0..V_MAX)
        self._cal_v: tuple[tuple, list[float]] | None = None   # (calibration's v, its v(n) for n = 0..V_MAX)

    @property
    def known(self) -> bool:
        return self.t_plain > 0 and len(self.v) >= 2

    # -- calibration-based predictions (the search compares skip sets with these) ----------

    def c(self, skip: SkipSet) -> float:
        """Predicted cost of one draft step with skip set (at least MIN_DRAFT_COST of a step)."""
        return max(1.0 - len(skip.attention) * self.attn - len(skip.ffn) * self.ffn, MIN_DRAFT_COST)

    def verify(self, n: int) -> float:
        """The calibration's v(n), interpolated linearly between measured points (v(1) = 1)."""
        return interpolate({1: 1.0, **self.v}, n)

    def calibration_v(self) -> list[float]:
        """The calibration's v(n) for n = 0..V_MAX (what the search ranks skip sets with): computed
        once per calibration. The search compares sets probed at different contexts and times, and
        the calibration is the one yardstick they share; the controller decides each cycle on the
        live tables (`v_table`)."""
        key = tuple(sorted(self.v.items()))
        if self._cal_v is None or self._cal_v[0] != key:
            self._cal_v = (key, [self.verify(n) for n in range(V_MAX + 1)])
        return self._cal_v[1]

    # -- live measurements ----------------------------------------------------------------

    def observe_plain(self, n_ctx: int, seconds: float) -> None:
        # (every token: no Ema built to be thrown away, the bucket computed once)
        b = bucket(n_ctx)
        live = self.live
        ema = live.plain.get(b)
        if ema is None:
            ema = live.plain[b] = Ema()
        ema.add(seconds)
        live.changes[b] = live.changes.get(b, 0) + 1

    def observe_verify(self, n_ctx: int, n: int, seconds: float) -> None:
        b = bucket(n_ctx)
        live = self.live
        live.verify.setdefault(b, {}).setdefault(n, Ema()).add(seconds)
        live.changes[b] = live.changes.get(b, 0) + V_VERIFY_WEIGHT
        live.verified[b] = live.verified.get(b, 0) + 1

    def observe_draft(self, drafter: str, n_ctx: int, seconds: float, per: int = 1) -> None:
        """A drafter's cost in plain steps at this context: seconds / per (per token, or 1 per cycle)."""
        t1 = self.plain_seconds(n_ctx)
        if t1 > 0 and per > 0:
            self.live.draft.setdefault(drafter, Ema()).add(seconds / per / t1)

    def live_verify_count(self, n_ctx: int, n: int) -> int:
        """How often verifying n tokens was timed in this context's bucket."""
        e = self.live.verify.get(bucket(n_ctx), {}).get(n)
        return e.n if e is not None else 0

    def draft_cost(self, drafter: str) -> float | None:
        """The drafter's live draft cost in plain steps (None before it has drafted)."""
        e = self.live.draft.get(drafter)
        return e.mean if e is not None and e.n >= MIN_LIVE else None

    def reset_draft(self, drafter: str) -> None:
        """Forget a drafter's live cost (its skip set changed)."""
        self.live.draft.pop(drafter, None)

    # -- what the controller asks ------------------------------------------------------------

    def plain_seconds(self, n_ctx: int) -> float:
        """Seconds of one plain decode step at this context (live where measured, else the nearest)."""
        b = bucket(n_ctx)
        e = self.live.plain.get(b)
        if e is not None and e.n >= MIN_LIVE:
            return e.mean
        if self.t_plain > 0 and (bucket(self.n_ctx) == b or not self.live.plain):
            return self.t_plain
        known = [(abs(k - b), k) for k, e in self.live.plain.items() if e.n >= 1]
        return self.live.plain[min(known)[1]].mean if known else self.t_plain

    def v_table(self, n_ctx: int) -> np.ndarray:
        """v[n] for n = 0..V_MAX at this context, in plain steps of this context (v[1] = 1).

        Live verification times of this bucket where measured; elsewhere the calibration's curve,
        shifted for the context (each of n rows pays the plain step's growth in attention since
        the calibration's context) and scaled by the nearest timed size's ratio of live to shape cost,
        shrunk toward the bucket's pooled ratio (`_live_ratios`). Cached per bucket.
        """
        b = bucket(n_ctx)
        changes = self.live.changes.get(b, 0)
        cached = self._tables.get(b)
        if cached is not None and changes - cached[0] < V_REFRESH and (changes > 0 or cached[0] == 0):
            return cached[3]
        verified = self.live.verified.get(b, 0)
        t1 = self.plain_seconds(n_ctx)
        if cached is not None and cached[1] == verified and abs(t1 - cached[2]) <= V_DRIFT * cached[2]:
            # only plain steps came, and the unit moved by less than V_DRIFT since the table was built
            self._tables[b] = (changes, verified, cached[2], cached[3])
            return cached[3]
        table = self._build_table(n_ctx)
        self._tables[b] = (changes, verified, t1, table)
        return table

    def _build_table(self, n_ctx: int) -> np.ndarray:
        # Few numpy calls, in place where the result is the same, the calibration's curve computed
        # once: a table was rebuilt every 16 plain steps, and per-size Python loops here took
        # ~0.2 ms per table, 12-15 us per token on a fast backend (benchmarks/host_work.py; now
        # ~45 us per table)
        b = bucket(n_ctx)
        t1 = self.plain_seconds(n_ctx)
        if self.known and t1 > 0:
            # (cal + n * (t1 - t_plain)) / t1 = r v_cal(n) + (1 - r) n with r = t_plain / t1: each row pays
            # the attention the context grew by since the calibration. r <= 1: a calibration slower than a
            # plain step now was disturbed (a cold first call, a busy machine), not at a longer context,
            # and its ratios v_cal(n) are what it measured well; unclamped, r > 1 made the shape negative
            # for long drafts and a live point's level scaled it into nonsense (Qwen 0.5B replays: v(14)
            # = 11 where it is 3.5, v(n) = 1 for every n in another bucket, 1.12x instead of 1.31x)
            r = min(self.t_plain / t1, 1.0)
            shape = _NS * (1.0 - r)
            shape += self._calibration_curve() * r
        else:   # nothing calibrated: assume verification costs what n plain steps cost
            shape = _NS.copy()
        table = shape   # (the live branch reads shape only through copies, before it assigns)
        pts, ratios = self._live_ratios(b, t1, shape)
        if pts:
            # each n >= 2: the calibration's shape times the nearest timed size's ratio (ties: the
            # smaller size). Whole-array arithmetic, element by element the same operations as one n
            # at a time (a loop over the 63 sizes is too slow, see above)
            pa = np.array(pts)
            n = np.arange(2, V_MAX + 1)
            i = np.argmin(np.abs(pa[None, :] - n[:, None]), axis=1)   # the first minimum, as per n
            table[2:] = shape[n] * np.array(ratios)[i]
        np.maximum(table, 1.0, out=table)   # a batch of n: 1 to n steps
        np.minimum(table, _NS_AT_LEAST_1, out=table)
        table[0] = 0.0
        return np.maximum.accumulate(table, out=table)   # verifying more never costs less

    def _live_ratios(self, b: int, t1: float, shape: np.ndarray) -> tuple[list[int], list[float]]:
        """The sizes timed live in bucket b (at least MIN_LIVE times) and each one's live cost over the
        shape's, shrunk toward the bucket's pooled ratio as if the pool were SHRINK more observations.

        The controller picks the draft length with the best predicted speedup, so it favours the size
        whose cost was measured low by chance (a 15% jitter per call on this project's VMs): raw
        per-size averages cost 2-5% of speed in replays with that noise (benchmarks/policy_sim.py
        --live 0.15, 12 seeds, four models), the shrunk ratios about half of it."""
        timed = self.live.verify.get(b, {})
        pts = sorted(n for n, e in timed.items() if e.n >= MIN_LIVE and n <= V_MAX) if t1 > 0 else []
        if not pts:
            return [], []
        raw = [timed[n].mean / t1 / max(float(shape[n]), 1e-9) for n in pts]
        w = [float(min(timed[n].n, SHRINK_CAP)) for n in pts]
        pooled = sum(wi * r for wi, r in zip(w, raw)) / sum(w)
        return pts, [(wi * r + SHRINK * pooled) / (wi + SHRINK) for wi, r in zip(w, raw)]

    def _calibration_curve(self) -> np.ndarray:
        """The calibration's v(n) for n = 0..V_MAX as an array, computed once per calibration (not per table)."""
        key = tuple(sorted(self.v.items()))
        if self._curve is None or self._curve[0] != key:
            self._curve = (key, np.array(self.calibration_v()))
        return self._curve[1]

    # -- saving ---------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"t_plain": self.t_plain, "v": {str(k): round(x, 4) for k, x in sorted(self.v.items())},
                "attn": self.attn, "ffn": self.ffn, "n_ctx": self.n_ctx, "live": self.live.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "Costs":
        """The calibration of a saved profile (live measurements are not saved)."""
        return cls(t_plain=float(d["t_plain"]), v={int(k): float(x) for k, x in d["v"].items()},
                   attn=float(d["attn"]), ffn=float(d["ffn"]), n_ctx=int(d.get("n_ctx", 0)))


def interpolate(points: Mapping[float, float], x: float) -> float:
    """The one interpolator of measured points (v(n) by batch size; the benchmarks' bytes per call):
    linear between points, the first point's value at or below it, and beyond the last the last
    segment continued (verification cost keeps growing with the batch: neither flat nor through
    the origin). The engine's v tables, the search's ranking and every benchmark read v(n) through it."""
    pts = sorted(points.items())
    if len(pts) == 1 or x <= pts[0][0]:
        return pts[0][1]
    for (n0, v0), (n1, v1) in zip(pts, pts[1:]):
        if x <= n1:
            return v0 + (v1 - v0) * (x - n0) / (n1 - n0)
    (n0, v0), (n1, v1) = pts[-2], pts[-1]
    return v1 + (v1 - v0) / (n1 - n0) * (x - n1)


# -- the speedup model --------------------------------------------------------------------------

def expected_tokens(accept: Sequence[float], d: int) -> float:
    """E: mean tokens a cycle drafting d tokens emits, 1 + p_1 + p_1 p_2 + ... + p_1...p_d (accept[i]:
    the conditional acceptance of draft position i + 1; the verifier's own token included)."""
    e, reach = 1.0, 1.0
    for p in accept[:d]:
        reach *= p
        e += reach
    return e


def cycle_cost(c_fixed: float, c_token: float, d: int, v: Sequence[float]) -> float:
    """Plain steps one cycle drafting d tokens costs: c_fixed + d c_token + v(d + 1) (v[n]: verifying n)."""
    return c_fixed + d * c_token + v[d + 1]


def speedup(accept: Sequence[float], c_fixed: float, c_token: float, d: int, v: Sequence[float]) -> float:
    """S(d) = E / cycle cost: the predicted speedup of drafting d tokens over plain decoding."""
    return expected_tokens(accept, d) / cycle_cost(c_fixed, c_token, d, v)


TINY = 1e-3   # best_length stops lengthening a draft once its end is reached with less than this chance


def best_length(accept: Sequence[float], c_fixed: float, c_token: float, v: Sequence[float],
                limit: int) -> tuple[int, float]:
    """(d, S(d)) with the highest predicted speedup over d = 1..limit (ties: the shorter draft).

    `speedup` for each d, accumulated in one pass (the same doubles: tests/test_drafters.py); asked
    for every offer the controller has not seen with this v table, so kept to plain float arithmetic."""
    expected, reach = 1.0, 1.0
    best = (0, 0.0)
    for d in range(1, limit + 1):
        reach *= accept[d - 1]
        expected += reach
        s = expected / (c_fixed + d * c_token + v[d + 1])
        if s > best[1]:
            best = (d, s)
        if reach < TINY:   # longer drafts only add cost
            break
    return best


def predict(skip: SkipSet, alpha: float, costs: Costs, d_max: int = DRAFT_MAX) -> tuple[int, float]:
    """(best draft length, predicted speedup) of layer skipping with skip set at per-token acceptance
    alpha: the calibration's costs (v and the set's draft cost c; no fixed cost, as the layer-skip
    drafter's offers have none); (1, 0.0) before the costs are calibrated."""
    if not costs.known:
        return 1, 0.0
    d_max = min(d_max, MAX_VERIFY - 1)   # as the controller caps every draft
    return best_length([alpha] * d_max, 0.0, costs.c(skip), costs.calibration_v(), d_max)


# -- calibration --------------------------------------------------------------------------

CALIBRATION_SIZES = (2, 3, 5, 9, 17)


def set_calibration(costs: Costs, seconds: dict[int, float], n_ctx: int) -> None:
    """The calibration's t_plain and v(n) from the timings of n-token calls at context n_ctx (seconds[1]: plain)."""
    t1 = seconds[1]
    costs.t_plain, costs.n_ctx = t1, n_ctx
    # a batch of n never costs more than n one-token decodes, nor less than a smaller batch:
    # a measurement outside that was disturbed (another process took the CPU)
    v, prev = {}, 1.0
    for n in sorted(seconds)[1:]:
        prev = v[n] = min(max(seconds[n] / t1, prev), float(n))
    costs.v = v
    costs._tables.clear()


def calibrate(rt: Runtime, last: int, n_past: int, costs: Costs, *, sub_layers: bool = True, reps: int = 3) -> Costs:
    """Measure t_plain, v(n) and per-sub-layer costs at context n_past (once per model).

    Runs on a scratch sequence that shares the stream's cells before n_past, so the stream is
    untouched; `last` is the token decoded (repeated for the batch sizes). The runtime's choice of
    kernels for one-token decodes is made first where it is open (timing.choose_step_kernels).
    """
    sizes = [n for n in (1, *CALIBRATION_SIZES) if rt.room(n_past) > n + 1 and n <= rt.max_verify]
    if len(sizes) < 3:
        return costs
    choose_step_kernels(rt, last, n_past)   # (t_plain and the drafting steps on the kernels they will run)
    toks = [last] * max(sizes)

    def timed(sizes: list[int], mask: bytes = b"") -> dict[int, float]:
        """Best of reps timings per size, the sizes interleaved (timing.batch_seconds)."""
        samples = batch_seconds(rt, toks, n_past, sizes, reps, mask=mask)
        return {n: min(xs, default=float("inf")) for n, xs in samples.items()}

    set_calibration(costs, timed(sizes), n_past)
    t1 = costs.t_plain
    inner = max(rt.n_layer - 2, 1)
    if rt.n_layer > 2 and sub_layers:
        attn = SkipSet.from_lists(rt.n_layer, attention=range(1, rt.n_layer - 1)).mask()
        ffn = SkipSet.from_lists(rt.n_layer, ffn=range(1, rt.n_layer - 1)).mask()
        c_attn, c_ffn = timed([1], attn)[1] / t1, timed([1], ffn)[1] / t1
        costs.attn = max(1.0 - c_attn, 0.0) / inner
        costs.ffn = max(1.0 - c_ffn, 0.0) / inner
    return costs
