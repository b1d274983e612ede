"""Drafters: who proposes the tokens that the verifier checks.

A drafter makes an `Offer` (what it could draft here, its predicted acceptance per draft
position and its cost; cheap), `propose`s a `Draft` of the length the controller chose, and
`observe`s how many of its tokens the verifier accepted. The verifier never knows which
drafter it talks to.

  LayerSkipDrafter  the model itself with a skip set (SWIFT): one partial-model decode per
                    drafted token, stopping below a confidence threshold
  LookupDrafter     prompt lookup: the continuation of the latest earlier place where the
                    stream's last tokens occur (prompt and everything generated, across chat
                    turns), from an n-gram index kept in step with the stream. Costs ~nothing,
                    so its acceptance alone decides whether it pays; it is measured live per
                    matched length and draft position, also where it did not draft ("shadow"
                    offers are checked against the tokens that followed)
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from .costmodel import DRAFT_MAX, Costs, Decayed
from .limits import MAX_VERIFY
from .protocols import CostModel, Runtime, SpecSettings, TokenStream
from .sampling import top1

if TYPE_CHECKING:
    from .search import LayerSearch

LAYER_SKIP = "layer-skip"
LOOKUP = "ngram"

# -- lookup ---------------------------------------------------------------------------------
NGRAM_MAX = 4         # longest n-gram the index keys (the match is then extended backwards)
MATCH_CAP = 32        # longest backward match measured (longer matches share one class)
CANDIDATES = 4        # latest earlier occurrences compared for the longest backward match
LOOKUP_MAX = MAX_VERIFY - 1   # most tokens a lookup draft takes from its continuation (+1: the verified batch)
# acceptance classes by matched length: 1, 2, 3, 4-7, 8-15, 16+ (each split by agreement)
MATCH_CLASSES = (1, 2, 3, 4, 8, 16)
# prior conditional acceptance per class, (disagreeing, agreeing) occurrences, before live evidence
# of PRIOR_WEIGHT observations: (first draft position, later positions). Once a looked-up token was
# right the text is usually being copied, so later positions are accepted far more often than the
# first (SmolLM2 on Spec-Bench: 0.17 then 0.8 for a one-token match whose occurrences disagree)
LOOKUP_PRIOR = ((0.15, 0.75), (0.35, 0.7), (0.25, 0.8), (0.55, 0.75), (0.3, 0.8), (0.7, 0.8),
                (0.3, 0.8), (0.8, 0.85), (0.6, 0.9), (0.9, 0.94), (0.8, 0.9), (0.95, 0.95))
PRIOR_WEIGHT = 2.0
DECAY = 0.98          # evidence of a class and position ages by this per observation of it

# -- layer skipping -------------------------------------------------------------------------
LAYER_SKIP_MAX = DRAFT_MAX   # longest layer-skip draft offered (without a larger draft_max)
FIXED_SET_ALPHA = 0.9  # acceptance assumed for a user's fixed skip set until it was measured live (it
                       # has no matchness; the fixtures' identity blocks, the usual fixed sets, reach ~1)
LIVE_ALPHA_MIN = 16   # decayed drafted tokens before live acceptance replaces the search's matchness
LOW_CONF_MIN = 16     # low-confidence drafts seen before epsilon may be dropped
LOW_CONF_KEEP = 0.9   # ... when more than this share of them were accepted
LOW_CONF_DECAY = 0.97
LIVE_DECAY = 0.95
TASK_CHANGE_DROP = 0.25  # reopen the search when live acceptance falls this far below the set's matchness
TASK_CHANGE_MIN = 30     # decayed drafted tokens before that judgement


@dataclass
class Draft:
    drafter: str
    tokens: list[int]
    probs: list[float] | None   # the drafter's confidence per token (None: a lookup has none)
    seconds: float
    key: int = 0                # acceptance class it was drafted under


@dataclass
class Offer:
    """What a drafter could draft at this point, and what it predicts about it."""
    drafter: "Drafter"
    limit: int                  # most tokens it can draft here
    accept: Sequence[float]     # conditional acceptance of draft positions 1.. (at least limit long)
    c_fixed: float = 0.0        # draft cost per cycle, in plain decode steps
    c_token: float = 0.0        # draft cost per drafted token, in plain decode steps
    key: int = 0
    tokens: list[int] = field(default_factory=list)   # lookup: the continuation itself


class Drafter(Protocol):
    name: str
    stationary: bool   # its offer does not depend on the stream (the controller may hold it a while)

    def offer(self, stream: TokenStream, n_ctx: int) -> Offer | None: ...

    def idle_reason(self) -> str: ...

    def propose(self, offer: Offer, stream: TokenStream, d: int) -> Draft: ...

    def observe(self, draft: Draft, n_accepted: int) -> None: ...


class Acceptance:
    """Conditional acceptance per (class, draft position) from decayed counts and a prior.

    Position i of a draft is observed when positions 1..i-1 were accepted; it is accepted
    when the verifier chose the drafted token there. Plain Python lists: an observation touches
    the few positions a draft reached (numpy's whole-row operations cost ~30 us each time).
    """

    def __init__(self, prior: Sequence, positions: int, weight: float = PRIOR_WEIGHT,
                 decay: float = DECAY):
        """prior: per class, one probability for every position or (first position, later ones)."""
        self.prior = [[float(p[0])] + [float(p[1])] * (positions - 1) if np.ndim(p) else [float(p)] * positions
                      for p in prior]
        self.weight, self.decay = weight, decay
        self._accepted = [[0.0] * positions for _ in prior]
        self._seen = [[0.0] * positions for _ in prior]
        self._probs = [list(row) for row in self.prior]

    @property
    def seen(self) -> np.ndarray:
        """Decayed observations per class and position (a copy)."""
        return np.array(self._seen)

    def probs(self, key: int) -> list[float]:
        return self._probs[key]

    def observe(self, key: int, drafted: int, n_accepted: int) -> None:
        acc, seen, prior = self._accepted[key], self._seen[key], self.prior[key]
        reached = min(n_accepted + 1, drafted, len(seen))
        if reached <= 0:
            return
        w, decay = self.weight, self.decay
        probs = list(self._probs[key])   # a new list: the controller remembers results per list object
        for i in range(reached):
            a = acc[i] * decay + (1.0 if i < n_accepted else 0.0)
            n = seen[i] * decay + 1.0
            acc[i], seen[i] = a, n
            probs[i] = (a + w * prior[i]) / (n + w)
        self._probs[key] = probs

    def to_json(self) -> dict:
        return {str(k): [round(x, 3) for x in self._probs[k][:8]] for k in range(len(self.prior))
                if self._seen[k][0] > 0}


# -- prompt lookup --------------------------------------------------------------------------

class NgramIndex:
    """End positions of every n-gram (n = 1..n_max) of a token list, kept in step with it, and
    the positions of its end-of-generation tokens.

    `sync(tokens)` makes the index describe `tokens`: a stream's token list only grows, so
    for the same list only the new tokens are added; another list (the next request, the
    next chat turn) keeps the common prefix and re-indexes the rest.

    A new token is indexed as a unigram only (its key is the token itself); its longer
    n-grams and whether it ends generation are indexed when `match` needs them, which is
    only where the last token occurred before. Text that does not repeat (where nothing can
    be looked up) costs one dict entry a token: on a fast backend the full index cost ~2 us
    of a ~300 us step (benchmarks/host_work.py).
    """

    def __init__(self, n_max: int = NGRAM_MAX, is_eog: Callable[[int], bool] = lambda t: False):
        self.n_max = n_max
        self.is_eog = is_eog
        self.tokens: list[int] = []
        self.ends: dict = {}          # token -> end positions; (n-gram tuple, n >= 2) -> end positions
        self.eog: list[int] = []      # positions < _full holding an end-of-generation token, ascending
        self._full = 0                # positions < _full have every n-gram indexed, later ones their unigram
        self._source: list[int] | None = None

    def sync(self, tokens: list[int]) -> None:
        n = len(self.tokens)
        if not (tokens is self._source and len(tokens) >= n and (n == 0 or tokens[n - 1] == self.tokens[-1])):
            keep = 0
            for keep, (a, b) in enumerate(zip(self.tokens, tokens)):
                if a != b:
                    break
            else:
                keep = min(n, len(tokens))
            self._truncate(keep)
            self._source = tokens
        self._extend(tokens)

    def sync_match(self, tokens: list[int]) -> tuple[int, int, bool] | None:
        """sync(tokens), then match(): what LookupDrafter.offer asks every token."""
        self.sync(tokens)
        return self.match()

    def _extend(self, tokens: list[int]) -> None:
        """Index tokens[len(self.tokens):] as unigrams (the rest equals self.tokens)."""
        toks, ends = self.tokens, self.ends
        for j in range(len(toks), len(tokens)):
            t = tokens[j]
            toks.append(t)
            e = ends.get(t)
            if e is None:
                ends[t] = [j]
            else:
                e.append(j)

    def complete(self) -> None:
        """Index the longer n-grams and end-of-generation tokens of every position not yet done."""
        toks, ends, n_max = self.tokens, self.ends, self.n_max
        for j in range(self._full, len(toks)):
            for n in range(2, min(n_max, j + 1) + 1):
                key = tuple(toks[j - n + 1:j + 1])
                e = ends.get(key)
                if e is None:
                    ends[key] = [j]
                else:
                    e.append(j)
            if self.is_eog(toks[j]):
                self.eog.append(j)
        self._full = len(toks)

    def _truncate(self, keep: int) -> None:
        toks = self.tokens
        if keep < len(toks) - keep:   # (a new request) indexing the kept tokens afresh is less work
            kept = toks[:keep]
            del toks[:]
            self.ends.clear()
            self.eog.clear()
            self._full = 0
            self._extend(kept)
            return
        for j in range(len(toks) - 1, keep - 1, -1):
            for n in range(1, (min(self.n_max, j + 1) if j < self._full else 1) + 1):
                key = toks[j] if n == 1 else tuple(toks[j - n + 1:j + 1])
                ends = self.ends[key]
                ends.pop()   # j is its latest end: positions were appended in order
                if not ends:
                    del self.ends[key]
        while self.eog and self.eog[-1] >= keep:
            self.eog.pop()
        self._full = min(self._full, keep)
        del toks[keep:]

    def match(self) -> tuple[int, int, bool] | None:
        """(m, q, agree): the list's end matches the m tokens ending at q < end, for the longest
        n-gram with an earlier occurrence: of its CANDIDATES latest earlier occurrences, the one
        with the longest backward match (m up to MATCH_CAP; the latest on ties); agree: they all
        continue with the same token. None without any."""
        toks = self.tokens
        e = len(toks) - 1
        if e < 1:
            return None
        last = self.ends[toks[e]]
        if len(last) < 2:   # its last token occurs nowhere earlier (where text does not repeat)
            return None
        self.complete()
        for n in range(min(self.n_max, e), 0, -1):
            ends = last if n == 1 else self.ends.get(tuple(toks[e - n + 1:]))
            if ends is None or len(ends) < 2:   # its last end is e itself
                continue
            best = None
            nexts = set()
            for q in reversed(ends[-1 - CANDIDATES:-1]):
                nexts.add(toks[q + 1])
                m = n
                while m < MATCH_CAP and q - m >= 0 and toks[q - m] == toks[e - m]:
                    m += 1
                if best is None or m > best[0]:
                    best = (m, q)
            return best[0], best[1], len(nexts) == 1
        return None

    def continuation(self, q: int, limit: int) -> list[int]:
        """Up to limit tokens after position q, cut after an end-of-generation token (nothing follows
        one); positions up to the list's end indexed (`complete`)."""
        stop = q + 1 + limit
        i = bisect.bisect_right(self.eog, q)
        if i < len(self.eog):
            stop = min(stop, self.eog[i] + 1)
        return self.tokens[q + 1:stop]


def offer_class(m: int, agree: bool) -> int:
    """The acceptance class of a lookup: its matched length's class, and whether the earlier
    occurrences agree on the next token (where they disagree, acceptance is about half)."""
    k = 0
    while k + 1 < len(MATCH_CLASSES) and m >= MATCH_CLASSES[k + 1]:
        k += 1
    return 2 * k + agree


class LookupDrafter:
    """Prompt lookup over the prompt and everything generated (an n-gram index kept in step)."""

    name = LOOKUP
    stationary = False

    def __init__(self, costs: CostModel, is_eog: Callable[[int], bool] = lambda t: False):
        self.costs = costs
        self.index = NgramIndex(is_eog=is_eog)
        self.acceptance = Acceptance(LOOKUP_PRIOR, LOOKUP_MAX)
        self._shadow: tuple[int, list[int], int] | None = None   # (class, continuation, its stream position)
        self._offer_seconds = 0.0

    def offer(self, stream: TokenStream, n_ctx: int) -> Offer | None:
        tokens = stream.tokens
        if self._shadow is not None:   # (an earlier offer waits for its verdict: rarely, per token)
            self._resolve_shadow(tokens)
        found = self.index.sync_match(tokens)
        if found is None:
            return None
        # (the draft's cost: what drafting adds; keeping the index and matching come every token anyway)
        start = time.perf_counter()
        m, q, agree = found
        key = offer_class(m, agree)
        cont = self.index.continuation(q, LOOKUP_MAX)
        if self._shadow is None:   # checked against what follows, whatever the controller does
            self._shadow = (key, cont, len(tokens))
        self._offer_seconds = time.perf_counter() - start
        return Offer(self, len(cont), self.acceptance.probs(key), c_fixed=self.costs.draft_cost(self.name) or 0.0,
                     key=key, tokens=cont)

    def idle_reason(self) -> str:
        return "the last tokens occur nowhere earlier: nothing to look up"

    def propose(self, offer: Offer, stream: TokenStream, d: int) -> Draft:
        start = time.perf_counter()
        if self._shadow is not None and self._shadow[1] is offer.tokens:
            self._shadow = None   # the verifier's verdict is this offer's observation
        draft = Draft(self.name, offer.tokens[:d], None, self._offer_seconds + time.perf_counter() - start, offer.key)
        self.costs.observe_draft(self.name, stream.n_past, draft.seconds)
        return draft

    def observe(self, draft: Draft, n_accepted: int) -> None:
        self.acceptance.observe(draft.key, len(draft.tokens), n_accepted)

    def _resolve_shadow(self, tokens: list[int]) -> None:
        """Score a continuation offered earlier against the tokens that followed it."""
        if self._shadow is None:
            return
        key, cont, pos = self._shadow
        if tokens is not self.index._source or pos > len(tokens):
            self._shadow = None   # another stream: nothing to compare with
            return
        followed = tokens[pos:pos + len(cont)]
        a = 0
        while a < len(followed) and followed[a] == cont[a]:
            a += 1
        if a < len(followed) or a == len(cont):   # decided: a mismatch, or all of it matched
            self.acceptance.observe(key, len(cont), a)
            self._shadow = None


# -- layer skipping -------------------------------------------------------------------------

class LayerSkipDrafter:
    """The model drafts for itself with a skip set (SWIFT); stops below the confidence threshold."""

    name = LAYER_SKIP
    stationary = True

    def __init__(self, rt: Runtime, config: SpecSettings, search: LayerSearch, costs: Costs):
        self.rt, self.config, self.search, self.costs = rt, config, search, costs
        self._live = Decayed(LIVE_DECAY)           # accepted / drafted tokens of this skip set
        self._low_conf = Decayed(LOW_CONF_DECAY)   # accepted / seen drafts below epsilon
        self._set = None              # the skip set the live numbers belong to
        self._set_empty = True        # ... whether it is empty (asked every token)
        self._scratch = np.empty(rt.n_vocab, np.float32)   # top1's work buffer
        self._offer: Offer | None = None   # the last offer, made again while its numbers are the same

    @property
    def skip(self):
        return self.config.skip if self.config.skip is not None else self.search.state.best

    def alpha(self) -> float:
        """Per-token acceptance: live once enough was drafted, else the search's matchness."""
        if self._live.den >= LIVE_ALPHA_MIN:
            return self._live.ratio()
        return self.search.state.best_matchness if self.config.skip is None else FIXED_SET_ALPHA

    def cost(self) -> float:
        """Draft cost per token in plain steps: live for this skip set, else the calibration's model."""
        self._follow_set()
        live = self.costs.draft_cost(self.name)
        return live if live is not None else self.costs.c(self.skip)

    def offer(self, stream: TokenStream, n_ctx: int) -> Offer | None:
        skip = self.skip
        if skip is None:
            return None
        self._follow_set()
        # an empty set drafts at full cost: only where asked to (swift mode: every draft is exact)
        if self._set_empty and self.config.mode != "swift":
            return None
        n = max(LAYER_SKIP_MAX, self.config.draft_max or 0)
        alpha, cost = self.alpha(), self.cost()
        o = self._offer
        # the same offer object (and acceptance list) while nothing changed: the controller
        # remembers its draft length for it instead of recomputing it every token
        if o is None or o.limit != n or o.accept[0] != alpha or o.c_token != cost:
            o = self._offer = Offer(self, n, [alpha] * n, c_token=cost)
        return o

    def idle_reason(self) -> str:
        return "no skip set found yet" if self.skip is None else "the skip set is empty: drafts cost a full step"

    def propose(self, offer: Offer, stream: TokenStream, d: int) -> Draft:
        """Draft up to d tokens with the skip set; stop after a token below epsilon or an EOG.
        The partial model's KV entries are removed again, whatever happens."""
        rt, n_past = self.rt, stream.n_past
        drafts: list[int] = []
        probs: list[float] = []
        tok, pos = stream.last, n_past
        eps = self.epsilon()
        start = time.perf_counter()
        try:
            with rt.skipping(self.skip.mask()):
                while len(drafts) < d:
                    rt.step(tok, pos)
                    tok, p = top1(rt.logits(-1), self._scratch)
                    drafts.append(tok)
                    probs.append(p)
                    pos += 1
                    if p < eps or rt.is_eog(tok):   # nothing follows an end-of-generation token
                        break
        finally:
            rt.remove(0, n_past, -1)   # draft KV is partial-model KV: never keep it
        secs = time.perf_counter() - start
        self.costs.observe_draft(self.name, n_past, secs, per=len(drafts))
        return Draft(self.name, drafts, probs, secs)

    def epsilon(self) -> float:
        """The confidence threshold in use: epsilon, or 0 while low-confidence drafts are accepted anyway.

        Beyond the reference: a drafter whose low-confidence tokens are still accepted more than
        90% of the time (a very redundant model) gains nothing from stopping early; confidence is
        a proxy for acceptance, and the live acceptance of those tokens is the real thing.
        """
        low = self._low_conf
        if self.config.adaptive_p_min and low.den >= LOW_CONF_MIN and low.ratio() > LOW_CONF_KEEP:
            return 0.0
        return self.config.draft_p_min

    def observe(self, draft: Draft, n_accepted: int) -> None:
        self._follow_set()
        for i, p in enumerate(draft.probs or ()):
            if p < self.config.draft_p_min:
                self._low_conf.add(i < n_accepted)
        self._live.add(n_accepted, len(draft.tokens))
        self._check_task_change()

    def _follow_set(self) -> None:
        """Live numbers belong to one skip set: forget them when the set changes."""
        skip = self.skip
        if skip is not self._set:
            self._set, self._set_empty = skip, not skip
            self._live.clear()
            self.costs.reset_draft(self.name)

    def _check_task_change(self) -> None:
        """Reopen the search when live acceptance falls well below what the set promised."""
        live = self._live
        st = self.search.state
        if (self.config.skip is None and st.done and live.den >= TASK_CHANGE_MIN
                and live.ratio() < st.best_matchness - TASK_CHANGE_DROP):
            self.search.reopen()
            live.clear()
