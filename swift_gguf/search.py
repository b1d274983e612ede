"""Which sub-layers to skip: matchness probes and the on-the-fly search.

A probe teacher-forces a window of the stream's own tokens through a candidate
drafter in one batched decode, on a scratch sequence that shares the context's KV
cells, and compares its next-token choices with the full model's on the same window.

The search runs in phases, one probe per step, so the engine can interleave it
with decoding under a time budget:

  reference  full-model pass over the window (what candidates must agree with)
  importance one probe per sub-layer, skipping it alone: the mean KL divergence
             from the full model ranks sub-layers from free to vital (beyond the
             reference method: it is what finds the few truly redundant ones).
             While whole layers keep turning out free, a layer is probed first
             with both sub-layers skipped, and its two sub-layers only if it is not
             free (on the K=3 fixture 174 probes instead of 236); a model whose
             first layers are not free is scanned sub-layer by sub-layer
  size       skip the k least important sub-layers, for k on a grid, ranked by the
             predicted speedup (costmodel) rather than matchness at a fixed ratio
  refine     the reference schedule: random perturbations of the best set, every
             25th candidate from Bayesian optimisation (scikit-optimize, GP + LCB),
             every probe told to the optimiser; a candidate replaces the best only
             if it predicts a higher speedup

A round stops when the best set's matchness exceeds `stop_matchness`, after `patience`
probes without improvement, or after `max_probes` probes; `reopen()` starts a new round
(on a task change) that keeps what was learned, `reset()` forgets everything.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import costmodel
from .costmodel import Costs
from .protocols import Runtime
from .skipset import SkipSet, n_sublayers


FREE_KL = 1e-3         # a (sub-)layer whose skipping moves the distribution less than this is "free"
LAYER_TRIAL = 8        # whole-layer probes before deciding whether they pay
LAYER_FREE_SHARE = 0.25  # keep probing whole layers while at least this share of them is free

# size phase: skip shares tried, a coarse grid over what a model may tolerate (the reference fixes
# 0.45-0.5 on 13B-70B models; small models tolerate far less, hence the fine low end) ...
SIZE_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75)
SIZE_JUMPS = 3         # ... plus the counts at the largest jumps of importance (the end of a free run)
JUMP_FLOOR = 1e-9      # added to KLs before their log (free sub-layers have a KL of ~0)
START_SHARE = 4        # without a best set yet, refine and Bayesian steps start from the n // 4 least important

# refine: random moves around the best set (the reference draws random sets of one fixed size; here
# the size moves too). Not tuned: mostly small steps, growing a little more often than shrinking
MOVE_SIZES = (1, 1, 2, 3, 4)   # sub-layers one move changes, drawn uniformly (1 in 2 of 5 moves)
GROW_BELOW, SHRINK_BELOW = 0.4, 0.7   # a uniform draw below 0.4 grows the set, below 0.7 shrinks it, else a swap

# Bayesian step (the reference's GP with kappa = 2.5): the optimiser is refitted from the best and the
# latest probes only, so fitting stays cheap however long the search runs
BO_BEST, BO_RECENT = 20, 60
BO_KAPPA = 2.5
BO_POINTS = 500        # random points the acquisition function is maximised over


@dataclass
class SearchConfig:
    window: int = 50            # W: tokens per matchness probe
    importance_window: int = 4  # tokens per single-sub-layer probe (cheap: one per sub-layer)
    stop_matchness: float = 0.93
    patience: int = 300
    max_probes: int = 1000
    bo_every: int = 25
    seed: int = 0


@dataclass
class Window:
    """Tokens tokens[0..W] at positions pos0..pos0+W; the last one is not in the KV cache."""
    tokens: list[int]
    pos0: int

    @property
    def size(self) -> int:
        return len(self.tokens) - 1


@dataclass
class Probe:
    skip: SkipSet
    matchness: float   # fraction of positions where the drafter's argmax equals the full model's
    kl: float          # mean KL(full || drafter) over the window
    seconds: float
    phase: str
    predicted: float = 0.0
    draft_length: int = 1


SCORE_ROWS = 8   # window rows scored at a time (Scratch): memory bounded for any window


class Scratch:
    """Two row blocks of float64, vocabulary-wide, that every probe's scoring reuses.

    A probe's log-softmax and KL used to allocate 4-6 arrays of W x n_vocab doubles afresh (Gemma 3:
    8 MB each for a 4-token window, 105 MB for W = 50); fresh memory costs a page fault per page at
    first touch, expensive in a VM (a first log-softmax of 4 x 262,144 rows took 25 ms, later ones 4).
    Rows are scored SCORE_ROWS at a time: each row's arithmetic is the same whatever rows share its
    block, so the results are those of whole-window arrays, bit for bit."""

    def __init__(self) -> None:
        self._blocks: tuple[np.ndarray, np.ndarray] | None = None

    def blocks(self, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
        b = self._blocks
        if b is None or b[0].shape[1] != n_vocab:
            b = self._blocks = (np.empty((SCORE_ROWS, n_vocab)), np.empty((SCORE_ROWS, n_vocab)))
        return b


def _row_blocks(n: int):
    """The slices of SCORE_ROWS rows (the last one shorter) that score an n-row window."""
    for i in range(0, n, SCORE_ROWS):
        yield slice(i, min(i + SCORE_ROWS, n))


def _log_softmax(rows: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """log-softmax of each row of `rows` (float32 logits) into `out` (float64, the same shape), `tmp`
    for the exponentials."""
    out[...] = rows
    out -= out.max(axis=1, keepdims=True)
    out -= np.log(np.exp(out, out=tmp).sum(axis=1, keepdims=True))
    return out


class Reference:
    """The full model's log-probabilities over a window, from its W rows of logits."""

    def __init__(self, window: Window, rows: np.ndarray, scratch: Scratch):
        self.window = window
        self.logp = np.empty(rows.shape)
        _, tmp = scratch.blocks(rows.shape[1])
        for b in _row_blocks(len(rows)):
            _log_softmax(rows[b], self.logp[b], tmp[:b.stop - b.start])
        self.argmax = self.logp.argmax(axis=1)
        self.p = np.exp(self.logp)


def run_probe(rt: Runtime, skip: SkipSet, window: Window) -> tuple[np.ndarray, float]:
    """Teacher-force window through the drafter with skip set; (logits [W, vocab], seconds). The
    logits are the runtime's view: valid until its next decode.

    Scratch sequence 1 shares sequence 0's cells before the window, so the probe
    sees the same context as the stream; it is removed afterwards whatever happens.

    The window goes through the verification kernels (Runtime.verify): each row's logits are then
    those of a one-token decode, as the drafter's own steps will see them, and on K-quant and
    large-vocabulary models they are several times faster than upstream's small-batch kernels
    (Gemma 3 270M, 5 rows with every row's logits: 12 ms against 42 ms; a plain step 8.7 ms).
    Upstream's kernels made a search step cost 2.1-2.7x its window decodes at v(W + 1), the price the
    pacer asks the loss budget for (pacing.PROBE_PRIOR).
    """
    W = window.size
    rt.share(0, 1, 0, window.pos0)
    try:
        with rt.skipping(skip.mask()):
            if W <= rt.max_verify:
                secs = rt.verify(window.tokens[:W], window.pos0, seq=1)
            else:   # (a batch size below the window: upstream's kernels, as for any batch)
                secs = rt.decode(window.tokens[:W], window.pos0, seq=1, all_logits=True)
    finally:
        rt.remove(1, -1, -1)
    return rt.logits_rows(W), secs


def _still_valid(ref: Reference, tokens: list[int], n_past: int) -> bool:
    w = ref.window
    return w.pos0 + w.size <= n_past and tokens[w.pos0:w.pos0 + w.size + 1] == w.tokens


def compare(ref: Reference, rows: np.ndarray, scratch: Scratch) -> tuple[float, float]:
    """(matchness, mean KL(full || drafter)) of a probe's logits rows against the reference."""
    logp, tmp = scratch.blocks(rows.shape[1])
    argmax = np.empty(len(rows), dtype=np.intp)
    kl = np.empty(len(rows))
    for b in _row_blocks(len(rows)):
        n = b.stop - b.start
        x = _log_softmax(rows[b], logp[:n], tmp[:n])
        argmax[b] = x.argmax(axis=1)
        d = np.subtract(ref.logp[b], x, out=tmp[:n])
        d *= ref.p[b]   # p * (logp_ref - logp), as ref.p * (ref.logp - logp) computes it
        kl[b] = d.sum(axis=1)
    return float(np.mean(argmax == ref.argmax)), max(float(np.mean(kl)), 0.0)


@dataclass
class SearchState:
    """Everything the search knows about one model; spans requests and chat turns."""
    n_layer: int
    config: SearchConfig = field(default_factory=SearchConfig)
    importance: list[float] = field(default_factory=list)   # KL per sub-layer (nan: unknown)
    best: SkipSet | None = None
    best_matchness: float = 0.0
    best_predicted: float = 0.0
    best_draft_length: int = 1
    probes: int = 0          # over the model's life (reports, plots)
    round_probes: int = 0    # in the current round: what max_probes limits
    since_improve: int = 0
    done: bool = False
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)     # one row per probe (for plots/reports)

    def __post_init__(self):
        n = n_sublayers(self.n_layer)
        if len(self.importance) != n:
            self.importance = [math.nan] * n


class LayerSearch:
    """The on-the-fly search: call step() whenever the engine grants time for one probe."""

    def __init__(self, state: SearchState, costs: Costs):
        self.state = state
        self.costs = costs
        self.cfg = state.config
        self.n = n_sublayers(state.n_layer)
        self._forget(self.cfg.seed)

    def _forget(self, seed: int) -> None:
        """Clear what this object learned beside the saved state (references, the size phase's
        scores, the optimiser's observations) and seed its random moves."""
        self.cfg.seed = seed
        self.rng = np.random.default_rng(seed)
        self._refs: dict[int, Reference] = {}
        self._scratch = Scratch()   # the probes' scoring buffers
        self._size_grid: list[int] = []
        self._size_scores: dict[int, float] = {}
        self._opt = None
        self._told: list[tuple[list[float], float]] = []
        self._layer_probes: dict[int, float] = {}   # inner layer -> KL with both sub-layers skipped

    # -- public -----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self.state.done and self.n > 0

    @property
    def exploring(self) -> bool:
        """Still in the phases that decide whether any set can pay: the importance scan, or the
        skip counts of the size phase not all scored yet."""
        return (any(math.isnan(x) for x in self.state.importance)
                or not self._size_scores or bool(self._size_grid))

    def free_evidence(self) -> tuple[int, float]:
        """(sub-layers with evidence, share of them found free) from the importance scan so far.

        A whole-layer probe counts for its two sub-layers (free or not: a layer that is not free
        counts as two non-free sub-layers until they are probed one by one)."""
        known = {i: k for i, k in enumerate(self.state.importance) if k == k}
        inner = self.state.n_layer - 2
        for il, kl in self._layer_probes.items():
            for i in (il - 1, il - 1 + inner):
                known.setdefault(i, kl)
        if not known:
            return 0, 0.0
        return len(known), sum(k < FREE_KL for k in known.values()) / len(known)

    def next_window(self) -> int:
        """Tokens the next probe teacher-forces: the importance scan's short window, then W."""
        if any(math.isnan(x) for x in self.state.importance):
            return self.cfg.importance_window
        return self.cfg.window

    def needs(self) -> int:
        """Tokens of history (window + 1) the next probe needs."""
        return max(self.cfg.window, self.cfg.importance_window) + 1

    def reset(self, seed: int | None = None) -> None:
        """Forget everything: a fresh search with the same configuration, as if new.

        seed (default: the configuration's) seeds its random moves."""
        self.state = SearchState(self.state.n_layer, self.cfg)
        self._forget(self.cfg.seed if seed is None else seed)

    def reopen(self, seed: int | None = None) -> None:
        """Start a new round on fresh text (the task changed, or `optimize` brings its prompts):
        keep what was learned, re-score the best set, and allow the round max_probes probes.

        seed, if given, reseeds the random moves (for a reproducible round)."""
        st = self.state
        st.done = False
        st.since_improve = 0
        st.round_probes = 0
        self._refs.clear()
        if seed is not None:
            self.cfg.seed = seed
            self.rng = np.random.default_rng(seed)
        if st.best is not None:
            st.best_matchness = 0.0
            st.best_predicted = 0.0

    def step(self, rt: Runtime, tokens: list[int], n_past: int) -> Probe | None:
        """Run one probe on the stream's last tokens (tokens[n_past] is not yet in the KV cache)."""
        if not self.active or not self.costs.known:
            return None
        self._drop_stale_references(tokens, n_past)
        phase, skip, W = self._next()
        if W + 1 > n_past + 1 or rt.room(n_past) < W:
            return None
        start = time.perf_counter()
        if phase == "reference":
            # a reference serves the probes on its own text only, and the next request's text drops it:
            # taken alone, the pacer's next grant often came after the answer had ended, so short answers
            # paid for references no probe read (Spec-Bench, 96-token answers: ~2% of generation time
            # and not one probe in a run). Taken here with the probe that reads it
            window = Window(list(tokens[n_past - W:n_past + 1]), n_past - W)
            rows, _ = run_probe(rt, SkipSet(self.state.n_layer), window)
            self._refs[W] = Reference(window, rows, self._scratch)
            phase, skip, W = self._next()   # (with the reference in place: a probe on it)
            if phase == "reference":   # (never: one reference is needed at a time)
                self.state.seconds += time.perf_counter() - start
                return None
        ref = self._refs[W]
        rows, secs = run_probe(rt, skip, ref.window)
        match, kl = compare(ref, rows, self._scratch)
        probe = Probe(skip, match, kl, secs, phase)
        probe.draft_length, probe.predicted = costmodel.predict(skip, match, self.costs)
        self._observe(probe)
        self.state.seconds += time.perf_counter() - start
        return probe

    def _drop_stale_references(self, tokens: list[int], n_past: int) -> None:
        """A reference is only valid while its window is still the stream's text at its positions."""
        for W, ref in list(self._refs.items()):
            if not _still_valid(ref, tokens, n_past):
                del self._refs[W]

    def step_windows(self, tokens: list[int], n_past: int) -> int:
        """Window decodes the next step runs: its probe, and the full model's reference first where the
        stream has none for it (what a loss budget is asked for)."""
        ref = self._refs.get(self.next_window())
        return 1 if ref is not None and _still_valid(ref, tokens, n_past) else 2

    # -- scheduling ---------------------------------------------------------------------------

    def _next(self) -> tuple[str, SkipSet | None, int]:
        st, cfg = self.state, self.cfg
        if any(math.isnan(x) for x in st.importance):
            W = cfg.importance_window
            if W not in self._refs:
                return "reference", None, W
            il = self._next_layer()
            if il is not None:
                return "layer-importance", SkipSet.from_lists(st.n_layer, attention=[il], ffn=[il]), W
            i = next(i for i, x in enumerate(st.importance) if math.isnan(x))
            return "importance", SkipSet.from_indices(st.n_layer, [i]), W
        W = cfg.window
        if W not in self._refs:
            return "reference", None, W
        if st.best is not None and st.best_predicted == 0.0:
            return "rescore", st.best, W
        if not self._size_grid and not self._size_scores:
            self._size_grid = self._grid()
        if self._size_grid:
            k = self._size_grid.pop(0)
            return "size", self._prefix(k), W
        if st.round_probes % cfg.bo_every == cfg.bo_every - 1:
            return "bayes", self._bayes_candidate(st.best or self._prefix(max(1, self.n // START_SHARE))), W
        return "refine", self._refine_candidate(), W

    def _next_layer(self) -> int | None:
        """The next inner layer to probe whole, or None once whole-layer probes stop paying."""
        probed = self._layer_probes
        if len(probed) >= LAYER_TRIAL and sum(k < FREE_KL for k in probed.values()) < LAYER_FREE_SHARE * len(probed):
            return None
        inner = self.state.n_layer - 2
        for il in range(1, self.state.n_layer - 1):
            a, f = il - 1, il - 1 + inner
            if il not in probed and math.isnan(self.state.importance[a]) and math.isnan(self.state.importance[f]):
                return il
        return None

    def _order(self) -> list[int]:
        """Sub-layers from least to most important."""
        return list(np.argsort(np.asarray(self.state.importance), kind="stable"))

    def _prefix(self, k: int) -> SkipSet:
        return SkipSet.from_indices(self.state.n_layer, self._order()[:k])

    def _grid(self) -> list[int]:
        """Skip counts to try: the sizes where importance jumps, plus a coarse ratio grid."""
        n = self.n
        imp = np.sort(np.asarray(self.state.importance))
        sizes = {max(1, round(n * r)) for r in SIZE_RATIOS}
        # where importance jumps (e.g. the end of a run of free sub-layers)
        gaps = np.diff(np.log10(imp + JUMP_FLOOR))
        for j in np.argsort(-gaps)[:SIZE_JUMPS]:
            sizes.add(int(j) + 1)
        return sorted(s for s in sizes if 0 < s <= n)

    def _refine_candidate(self) -> SkipSet:
        st = self.state
        best = st.best or self._prefix(max(1, self.n // START_SHARE))
        idx = set(best.indices())
        outside = [i for i in range(self.n) if i not in idx]
        m = int(self.rng.choice(list(MOVE_SIZES)))
        move = self.rng.random()
        if move < GROW_BELOW and outside:    # grow
            idx.update(self.rng.choice(outside, size=min(m, len(outside)), replace=False).tolist())
        elif move < SHRINK_BELOW and len(idx) > 1:  # shrink
            idx.difference_update(self.rng.choice(sorted(idx), size=min(m, len(idx) - 1), replace=False).tolist())
        elif outside and idx:          # swap
            k = min(m, len(outside), len(idx))
            idx.difference_update(self.rng.choice(sorted(idx), size=k, replace=False).tolist())
            idx.update(self.rng.choice(outside, size=k, replace=False).tolist())
        return SkipSet.from_indices(st.n_layer, idx)

    def _optimizer(self):
        """A fresh GP optimiser told the most informative past probes (bounded, so fitting stays cheap)."""
        from skopt import Optimizer
        from skopt.space import Real
        told = self._told
        best = sorted(told, key=lambda xy: xy[1])[:BO_BEST]
        recent = told[-BO_RECENT:]
        pts = {tuple(x): y for x, y in best + recent}
        opt = Optimizer([Real(0.0, 1.0) for _ in range(self.n)], base_estimator="GP",
                        acq_func="LCB", acq_func_kwargs={"kappa": BO_KAPPA},
                        acq_optimizer="sampling", acq_optimizer_kwargs={"n_points": BO_POINTS},
                        n_initial_points=1, random_state=int(self.rng.integers(1 << 31)))
        if pts:
            opt.tell([list(x) for x in pts], list(pts.values()))
        self._opt = opt
        return opt

    def _bayes_candidate(self, best: SkipSet) -> SkipSet:
        """The GP's suggestion, rounded to its top-K coordinates (K = the best set's size)."""
        x = np.asarray(self._optimizer().ask())
        k = max(len(best), 1)
        return SkipSet.from_indices(self.state.n_layer, np.argsort(-x)[:k].tolist())

    def _tell(self, probe: Probe) -> None:
        """Every probe is told: the Bayesian step learns from all of them (-predicted speedup)."""
        x = [0.0] * self.n
        for i in probe.skip.indices():
            x[i] = 1.0
        self._told.append((x, -probe.predicted))

    def _observe(self, probe: Probe) -> None:
        st = self.state
        st.probes += 1
        st.round_probes += 1
        st.history.append({"probe": st.probes, "phase": probe.phase, "size": len(probe.skip),
                           "matchness": round(probe.matchness, 4), "kl": round(probe.kl, 6),
                           "predicted": round(probe.predicted, 4)})
        if probe.phase == "importance":
            (i,) = probe.skip.indices()
            st.importance[i] = probe.kl
            return
        if probe.phase == "layer-importance":
            (il,) = probe.skip.attention
            self._layer_probes[il] = probe.kl
            if probe.kl < FREE_KL:   # both sub-layers free: no need to probe them one by one
                for i in probe.skip.indices():
                    st.importance[i] = probe.kl / 2
            return
        if probe.phase == "size":
            self._size_scores[len(probe.skip)] = probe.predicted
        if probe.phase != "rescore":
            self._tell(probe)
        if probe.phase == "rescore" or probe.predicted > st.best_predicted:
            improved = probe.predicted > st.best_predicted + 1e-9 and probe.phase != "rescore"
            st.best, st.best_matchness, st.best_predicted = probe.skip, probe.matchness, probe.predicted
            st.best_draft_length = probe.draft_length
            st.since_improve = 0 if improved else st.since_improve
        else:
            st.since_improve += 1
        if probe.phase in ("refine", "bayes") or (probe.phase == "size" and not self._size_grid):
            if (st.best_matchness > self.cfg.stop_matchness or st.since_improve >= self.cfg.patience
                    or st.round_probes >= self.cfg.max_probes):
                st.done = True
