"""Sampling under speculation preserves the target distribution (statistical tests).

For each scheme we draw N continuations of a few tokens with different seeds and compare
the empirical distribution of the tokens at positions 2 and 3 (position 1 comes from the
prompt's logits in every mode; later positions go through drafting and verification)
between plain sampling and SWIFT sampling with a chi-square test of homogeneity.
Significance level: ALPHA = 0.001 per comparison. The same test, with the same sample
size, detects a biased sampler (temperature 0.5 instead of 1.0: mass moved to the top token,
as a verifier that favoured the drafter's argmax would do), which shows it has the power to
catch such a bias. (Temperature 0.85 was tried and was not detected at N = 300: p = 0.24.)
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from swift_gguf.api import SwiftLlama
from swift_gguf.sampling import SamplingParams
from swift_gguf.skipset import SkipSet

ALPHA = 0.001
N = 300
PROMPT = "My favourite animal is the"


@pytest.fixture(scope="module")
def llm(model_path):
    m = SwiftLlama(str(model_path), n_ctx=256, spec="off", profile=None)
    yield m
    m.close()


def samples(llm, mode, *, skip=None, temp=1.0, n=N, length=3, seed0=0):
    rows, drafted, accepted = [], 0, 0
    with llm.speculation(mode, skip=skip, draft_max=4):
        for i in range(n):
            params = SamplingParams(temperature=temp, top_k=40, top_p=0.95, min_p=0.05, seed=seed0 + i)
            rows.append(tuple(t.id for t in llm.generate_tokens(PROMPT, params, max_tokens=length)))
            drafted += llm.last_stats.drafted
            accepted += llm.last_stats.accepted
    return rows, drafted, accepted


def homogeneity_p(a: list[tuple], b: list[tuple], pos: int) -> float:
    """Chi-square p-value that position pos has the same distribution in both samples."""
    ca, cb = Counter(r[pos] for r in a if len(r) > pos), Counter(r[pos] for r in b if len(r) > pos)
    keys = sorted(set(ca) | set(cb), key=lambda k: -(ca[k] + cb[k]))
    table = np.array([[ca[k] for k in keys], [cb[k] for k in keys]], dtype=float)
    # pool rare categories (expected counts < 5 make chi-square unreliable)
    big = table.sum(axis=0) >= 10
    pooled = np.column_stack([table[:, big], table[:, ~big].sum(axis=1)]) if (~big).any() else table
    pooled = pooled[:, pooled.sum(axis=0) > 0]
    return float(chi2_contingency(pooled)[1])


@pytest.fixture(scope="module")
def plain_samples(llm):
    return samples(llm, "off", seed0=10_000)[0]


@pytest.mark.parametrize("skip_kind", ["empty", "random"])
def test_swift_sampling_matches_plain_distribution(llm, plain_samples, skip_kind):
    skip = SkipSet(30) if skip_kind == "empty" else SkipSet.from_indices(30, range(1, 56, 3))
    rows, drafted, accepted = samples(llm, "swift", skip=skip, seed0=20_000)
    assert drafted >= N   # speculation really happened: at least one draft per sample
    if skip_kind == "random":
        assert accepted / drafted < 0.6   # the case where drafts are often rejected
    for pos in (1, 2):
        p = homogeneity_p(plain_samples, rows, pos)
        assert p > ALPHA, f"position {pos + 1}: distributions differ (p = {p:.2g})"


def test_the_test_detects_a_biased_sampler(llm, plain_samples):
    """Power check: a sampler biased towards the top token (temperature 0.5 instead of 1.0, what a
    verifier that favours the drafter's argmax would produce) is rejected by the same test."""
    rows, _, _ = samples(llm, "off", temp=0.5, seed0=30_000)
    assert min(homogeneity_p(plain_samples, rows, pos) for pos in (1, 2)) < ALPHA


@pytest.mark.parametrize("params", [
    dict(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3, presence_penalty=0.4),
    dict(temperature=0.8, mirostat_mode=2, mirostat_tau=4.0),
], ids=["top-k-p", "penalties", "mirostat2"])
def test_same_seed_gives_plain_sampling_token_for_token(llm, params):
    """Each verified position takes the one draw plain decoding takes there, from identical logits
    through the same llama.cpp chain: with the same seed, speculative sampling IS plain sampling."""
    skip = SkipSet.from_indices(30, range(1, 56, 3))
    drafted = rejected = 0
    for seed in range(6):
        p = SamplingParams(**params, seed=seed)
        with llm.speculation("off"):
            plain = [t.id for t in llm.generate_tokens(PROMPT, p, max_tokens=24)]
        with llm.speculation("swift", skip=skip, draft_max=4):
            swift = [t.id for t in llm.generate_tokens(PROMPT, p, max_tokens=24)]
        assert swift == plain, f"seed {seed}"
        drafted += llm.last_stats.drafted
        rejected += llm.last_stats.drafted - llm.last_stats.accepted
    assert drafted > 0 and rejected > 0   # speculation happened, with rollbacks
