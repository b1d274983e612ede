"""End to end: speculative greedy output equals llama_cpp.Llama's, loaded with the same arguments,
in the configurations users run, at contexts where attention splits across threads.

The kernel-level checks (test_batch_invariance.py, test_isa_levels.py) compare logits; these
compare whole outputs with forced speculation (every cycle drafts: layer skipping with a fixed
skip set, and prompt lookup), on Spec-Bench summarization and RAG questions whose prompts are
past 512 KV cells, for both shipped models, with the CLI's settings (flash attention on) and the
library's (Llama's defaults: flash attention off), both with llama-cpp-python's default thread
counts (unequal: half the cores for decoding, all of them for batches). Before ABI 4 the CLI's
setting diverged here on summarization (Spec-Bench question 244 at token 29-50).
"""
from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from swift_gguf.api import SwiftLlama
from swift_gguf.models import resolve_model
from swift_gguf.sampling import SamplingParams
from swift_gguf.skipset import SkipSet

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ROOT / "benchmarks" / "data" / "spec-bench" / "questions.jsonl"
QUESTION_IDS = (241, 481)   # summarization, RAG (~3300 characters): 650-800 tokens of prompt
N_TOKENS = 64
N_CTX = 2048
SETTINGS = {"cli": {"flash_attn": True}, "library": {}}   # the CLI loads with flash attention on


def _questions() -> dict[int, str]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return {r["question_id"]: r["turns"][0] for r in rows if r["question_id"] in QUESTION_IDS}


def _prompt_tokens(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=True, special=True)


def _llama_greedy(model: Path, setting: dict, prompts: list[list[int]]) -> list[list[int]]:
    ref = llama_cpp.Llama(str(model), n_ctx=N_CTX, verbose=False, **setting)
    try:
        outs = []
        for toks in prompts:
            ref.reset()
            out = []
            for tok in ref.generate(toks, temp=0.0):
                if llama_cpp.llama_vocab_is_eog(ref._model.vocab, tok):
                    break
                out.append(tok)
                if len(out) == N_TOKENS:
                    break
            outs.append(out)
        return outs
    finally:
        ref.close()


def _swift_greedy(llm: SwiftLlama, toks: list[int], **config) -> list[int]:
    llm.reset()
    out = []
    with llm.speculation(**config):
        for t in llm.generate_tokens(toks, SamplingParams(), max_tokens=N_TOKENS):
            if llm.rt.is_eog(t.id):
                break
            out.append(t.id)
    return out


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_forced_speculation_equals_llama(name, setting):
    model = resolve_model(name, progress=False)
    llm = SwiftLlama(str(model), n_ctx=N_CTX, spec="swift", profile=None, **SETTINGS[setting])
    try:
        prompts = [_prompt_tokens(llm, q) for q in _questions().values()]
        assert all(512 < len(p) < N_CTX - N_TOKENS for p in prompts), [len(p) for p in prompts]
        reference = _llama_greedy(model, SETTINGS[setting], prompts)
        n = llm.rt.n_layer
        skip = SkipSet.from_indices(n, np.random.default_rng(5).choice(2 * (n - 2), size=6, replace=False))
        drafted = {}
        for drafter, config in {"layer-skip": dict(mode="swift", spec_type="layer-skip", skip=skip, draft_max=6),
                                "lookup": dict(mode="swift", spec_type="ngram", skip=None, draft_max=None)}.items():
            for toks, ref in zip(prompts, reference):
                out = _swift_greedy(llm, toks, **config)
                assert out == ref, f"{name} {setting} {drafter}: first difference at token " \
                                   f"{next(i for i, (a, b) in enumerate(zip(out + [-1], ref + [-2])) if a != b)}"
                stats = llm.last_stats
                drafted[drafter] = drafted.get(drafter, 0) + stats.drafted
        assert drafted["layer-skip"] > 0 and drafted["lookup"] > 0, drafted
    finally:
        llm.close()


@pytest.mark.parametrize("spec", ["auto", "ngram"])
def test_cli_generate_equals_llama(spec, model_path):
    """`swift-gguf generate` with the CLI's own defaults (flash attention on, default threads): its
    default mode (auto) and forced prompt lookup. (Forced layer skipping needs a skip set, which the
    CLI takes from the search or a profile; the test above forces one through the library.)"""
    text = _questions()[QUESTION_IDS[0]]
    ref_llm = llama_cpp.Llama(str(model_path), n_ctx=N_CTX, flash_attn=True, verbose=False)
    try:
        toks = ref_llm.tokenize(text.encode(), add_bos=True, special=True)
    finally:
        ref_llm.close()
    (reference,) = _llama_greedy(model_path, {"flash_attn": True}, [toks])
    mode = ["--spec", "auto"] if spec == "auto" else ["--spec", "swift", "--spec-type", "ngram"]
    res = CliRunner().invoke(cli.main, ["generate", "-m", str(model_path), "-c", str(N_CTX), "-p", text,
                                        "-n", str(N_TOKENS), "--temp", "0", *mode, "--profile", "none",
                                        "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["tokens"] == reference
    if spec == "ngram":
        assert out["stats"]["drafted"] > 0
