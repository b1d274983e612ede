"""Plain steps through the faster of two kernel paths with the same logits (runtime.StepKernels).

On the CPU a one-token decode can run upstream's kernels (tinyBLAS where it applies) or the
verification kernels (batch invariance on); selfcheck compares a one-token verification with the
one-token decode bit for bit at every ISA level and setting (tests/test_batch_invariance.py,
test_isa_levels.py, test_arm_invariance.py). Here: how the choice is made, and that plain decoding
through either path is llama_cpp.Llama's output, token for token, on both shipped models with the
CLI's settings and the library's, past 512 cells of context.
"""
from __future__ import annotations

import pytest

from swift_gguf.api import SwiftLlama
from swift_gguf.models import resolve_model
from swift_gguf.runtime import STEP_MARGIN, STEP_REVISIT, STEP_TRIALS, StepKernels
from tests.test_lossless_settings import (N_CTX, N_TOKENS, SETTINGS, _llama_greedy, _prompt_tokens, _questions,
                                          _swift_greedy)


def _time(kernels: StepKernels, upstream: float, verification: float, steps: int) -> list[bool]:
    """`steps` plain steps taking the given seconds per path; returns the paths they took."""
    taken = []
    for _ in range(steps):
        v = kernels.next()
        taken.append(v)
        kernels.observe(v, verification if v else upstream)
    return taken


def test_plain_steps_alternate_then_keep_the_faster():
    k = StepKernels(choose=True)
    taken = _time(k, upstream=0.010, verification=0.008, steps=2 * STEP_TRIALS)
    assert taken == [False, True] * STEP_TRIALS and k.verification is True and k.label() == "verification"
    assert _time(k, upstream=0.001, verification=1.0, steps=5) == [True] * 5   # chosen once, kept


def test_the_choice_is_timed_again_after_a_while():
    """A choice made while the machine was busy does not stay for the model's lifetime."""
    k = StepKernels(choose=True)
    _time(k, upstream=0.010, verification=0.020, steps=2 * STEP_TRIALS)   # (disturbed: verification slow)
    assert k.verification is False
    assert _time(k, upstream=0.010, verification=0.008, steps=STEP_REVISIT) == [False] * STEP_REVISIT
    assert k.verification is None   # timing both again
    assert _time(k, upstream=0.010, verification=0.008, steps=2 * STEP_TRIALS) == [False, True] * STEP_TRIALS
    assert k.verification is True
    fixed = StepKernels(choose=False)   # (off the CPU: nothing to time)
    _time(fixed, upstream=0.010, verification=0.001, steps=STEP_REVISIT + 1)
    assert fixed.verification is False


def test_upstream_stays_unless_the_verification_kernels_are_clearly_faster():
    k = StepKernels(choose=True)
    _time(k, upstream=0.010, verification=0.010 * (STEP_MARGIN + 0.01), steps=2 * STEP_TRIALS)
    assert k.verification is False and k.label() == "upstream"
    slow = StepKernels(choose=True)
    _time(slow, upstream=0.010, verification=0.011, steps=2 * STEP_TRIALS)
    assert slow.verification is False


def test_the_choice_is_made_on_medians():
    """One slow step (a step right after a large batch, another process) does not decide it."""
    k = StepKernels(choose=True)
    for i in range(2 * STEP_TRIALS):
        v = k.next()
        k.observe(v, (0.008 if v else 0.010) * (5.0 if i == 1 else 1.0))
    assert k.verification is True


def test_off_the_cpu_one_token_decodes_stay_upstream():
    k = StepKernels(choose=False)
    assert _time(k, upstream=0.010, verification=0.001, steps=2 * STEP_TRIALS) == [False] * (2 * STEP_TRIALS)
    assert k.label() == "upstream"


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_plain_decoding_through_either_kernels_is_llamas(name, setting):
    model = resolve_model(name, progress=False)
    llm = SwiftLlama(str(model), n_ctx=N_CTX, spec="off", profile=None, **SETTINGS[setting])
    try:
        prompts = [_prompt_tokens(llm, q) for q in _questions().values()]
        assert all(len(p) > 512 for p in prompts)
        reference = _llama_greedy(model, SETTINGS[setting], prompts)
        assert llm.rt.kernels.verification is None   # a CPU context: both paths are candidates
        for toks, ref in zip(prompts, reference):   # the first STEP_TRIALS * 2 steps alternate
            assert _swift_greedy(llm, toks, mode="off") == ref
        assert llm.last_stats.step_kernels in ("upstream", "verification")
        decodes = llm.rt.decode_calls
        for forced in (True, False):
            llm.rt.kernels.verification = forced
            for toks, ref in zip(prompts, reference):
                assert _swift_greedy(llm, toks, mode="off") == ref, f"{name} {setting} verification kernels={forced}"
        assert llm.rt.decode_calls > decodes + 2 * N_TOKENS   # (plain steps really ran)
    finally:
        llm.close()

