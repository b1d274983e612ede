"""SwiftLlama is a drop-in for llama_cpp.Llama: the same calls give the same results.

Differential tests against the reference, not against swift-gguf itself: every case runs the
same llama-cpp-python call on `llama_cpp.Llama` (the same patched build, plain decoding) and on
`SwiftLlama` in each speculation mode — `off`, `auto`, and `swift` with a fixed skip set that
drafts and gets rejections — and requires the same text, finish_reason, usage, logprobs and
stream. Volatile fields (id, created) are dropped before comparing.
"""
from __future__ import annotations

import copy

import llama_cpp
import numpy as np
import pytest
from llama_cpp import LlamaGrammar, LogitsProcessorList, StoppingCriteriaList

from swift_gguf.api import SwiftLlama
from swift_gguf.models import resolve_model
from swift_gguf.skipset import SkipSet

MODES = ("off", "auto", "swift")
COMMON = dict(n_ctx=1024, n_threads=2, n_threads_batch=2, verbose=False, seed=1234)


# Per model (by layer count): drafts often enough accepted to speculate, often enough rejected to roll back.
SKIPPED_ATTENTION = {30: range(8, 22), 18: range(6, 12)}   # SmolLM2-135M, Gemma 3 270M


def _skip(n_layer: int) -> SkipSet:
    return SkipSet.from_lists(n_layer, attention=SKIPPED_ATTENTION[n_layer])


@pytest.fixture(scope="module")
def pair(model_path):
    """(reference Llama, SwiftLlama) on the default model, both with logits for every token."""
    ref = llama_cpp.Llama(str(model_path), logits_all=True, **COMMON)
    swift = SwiftLlama(str(model_path), logits_all=True, profile=None, **COMMON)
    yield ref, swift
    swift.close()
    ref.close()


def clean(result):
    """A response (or list of stream chunks) without the fields that differ between any two calls."""
    if isinstance(result, list):
        return [clean(c) for c in result]
    out = copy.deepcopy(result)
    out.pop("id", None)
    out.pop("created", None)
    return out


def run_both(pair, mode, call):
    """call(llm) on the reference and on SwiftLlama in `mode`; returns both results and the stats."""
    ref, swift = pair
    ref.reset()
    swift.reset()
    expected = call(ref)
    if not isinstance(expected, dict):
        expected = list(expected)
    with swift.speculation(mode, skip=_skip(swift.rt.n_layer) if mode == "swift" else None):
        got = call(swift)
        if not isinstance(got, dict):
            got = list(got)
    return clean(expected), clean(got), swift.last_stats


def assert_same(pair, mode, call, *, must_draft=True):
    expected, got, stats = run_both(pair, mode, call)
    assert got == expected
    if mode == "swift" and must_draft:
        assert stats is not None and stats.drafted > 0 and stats.accepted < stats.drafted, \
            "the swift case must draft and see rejections, or it compares plain with plain"
    return got


CHAT_HI = [{"role": "user", "content": "Say hi."}]
CHAT_DE = [{"role": "user", "content": "Translate German to English: Alle Tickets behalten "
                                        "für diese Shows Gültigkeit ."}]


# -- answers that end naturally (the bug: empty content, finish_reason "length") -----------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("messages", [CHAT_HI, CHAT_DE], ids=["hi", "translate"])
def test_chat_completion_ending_naturally(pair, mode, messages):
    got = assert_same(pair, mode, lambda m: m.create_chat_completion(messages, max_tokens=48, temperature=0),
                      must_draft=False)
    choice = got["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"].strip()
    assert got["usage"]["completion_tokens"] < 48


@pytest.mark.parametrize("mode", MODES)
def test_chat_completion_stream(pair, mode):
    chunks = assert_same(pair, mode, lambda m: m.create_chat_completion(CHAT_DE, max_tokens=48, temperature=0,
                                                                        stream=True), must_draft=False)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).strip()


@pytest.mark.parametrize("mode", MODES)
def test_completion_reaching_max_tokens(pair, mode):
    got = assert_same(pair, mode, lambda m: m.create_completion("The capital of France is", max_tokens=40,
                                                                temperature=0))
    assert got["choices"][0]["finish_reason"] == "length" and got["usage"]["completion_tokens"] == 40


@pytest.mark.parametrize("mode", MODES)
def test_completion_stream_reaching_max_tokens(pair, mode):
    assert_same(pair, mode, lambda m: m.create_completion("Once upon a time", max_tokens=40, temperature=0,
                                                          stream=True))


# -- stop strings, echo -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stop", [["Paris"], ["zzzz-never"], [".", "\n", "Paris"]], ids=["hit", "missed", "several"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_stop_strings(pair, mode, stop, stream):
    assert_same(pair, mode, lambda m: m.create_completion("Q: What is the capital of France?\nA:",
                                                          max_tokens=32, temperature=0, stop=stop, stream=stream),
                must_draft=False)


@pytest.mark.parametrize("mode", MODES)
def test_echo(pair, mode):
    got = assert_same(pair, mode, lambda m: m.create_completion("Once upon a time", max_tokens=24,
                                                                temperature=0, echo=True))
    assert got["choices"][0]["text"].startswith("Once upon a time")


# -- sampling: penalties, seeds, grammar, processors, criteria, logprobs ---------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("penalty", [dict(repeat_penalty=1.3), dict(presence_penalty=0.8, frequency_penalty=0.5)],
                         ids=["repeat", "presence-frequency"])
def test_penalties(pair, mode, penalty):
    assert_same(pair, mode, lambda m: m.create_completion("Repeat after me: la la la la la la", max_tokens=32,
                                                          temperature=0, **penalty), must_draft=False)


@pytest.mark.parametrize("mode", MODES)
def test_seeded_sampling(pair, mode):
    got = assert_same(pair, mode, lambda m: m.create_completion("My favourite animal is the", max_tokens=40,
                                                                temperature=0.9, top_k=50, top_p=0.95,
                                                                min_p=0.02, seed=42))
    assert got["choices"][0]["text"]


@pytest.mark.parametrize("mode", MODES)
def test_seeded_chat_sampling(pair, mode):
    assert_same(pair, mode, lambda m: m.create_chat_completion(CHAT_HI, max_tokens=40, temperature=0.8, seed=7),
                must_draft=False)


@pytest.mark.parametrize("mode", MODES)
def test_grammar(pair, mode):
    grammar = LlamaGrammar.from_string('root ::= "The answer is " [0-9]+ "."', verbose=False)
    got = assert_same(pair, mode, lambda m: m.create_completion("Q: What is 7 times 6?\nA:", max_tokens=16,
                                                                temperature=0, grammar=grammar),
                      must_draft=False)
    assert got["choices"][0]["text"].startswith("The answer is ")


@pytest.mark.parametrize("mode", MODES)
def test_logits_processor_and_logit_bias(pair, mode):
    ban = pair[1].tokenize(b" the", add_bos=False)[0]

    def no_the(input_ids, scores):
        scores[ban] = -np.inf
        return scores

    got = assert_same(pair, mode, lambda m: m.create_completion(
        "Once upon a time", max_tokens=32, temperature=0, logits_processor=LogitsProcessorList([no_the])))
    assert " the" not in got["choices"][0]["text"]
    assert_same(pair, mode, lambda m: m.create_completion("Once upon a time", max_tokens=32, temperature=0,
                                                          logit_bias={ban: -100.0}))


@pytest.mark.parametrize("mode", MODES)
def test_stopping_criteria(pair, mode):
    period = pair[1].tokenize(b".", add_bos=False)[-1]
    seen_lengths = []

    def after_two_sentences(input_ids, logits):
        seen_lengths.append((len(input_ids), logits.shape))
        return int(np.sum(np.asarray(input_ids) == period)) >= 2

    got = assert_same(pair, mode, lambda m: m.create_completion(
        "Once upon a time", max_tokens=64, temperature=0,
        stopping_criteria=StoppingCriteriaList([after_two_sentences])), must_draft=False)
    assert got["choices"][0]["finish_reason"] == "stop"
    assert all(shape == (pair[1].n_vocab(),) for _, shape in seen_lengths)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echo"])
def test_logprobs(pair, mode, echo):
    got = assert_same(pair, mode, lambda m: m.create_completion("The capital of France is", max_tokens=16,
                                                                temperature=0, logprobs=3, echo=echo))
    lp = got["choices"][0]["logprobs"]
    assert lp["tokens"] and len(lp["top_logprobs"]) == len(lp["tokens"])


@pytest.mark.parametrize("mode", MODES)
def test_logprobs_stream(pair, mode):
    assert_same(pair, mode, lambda m: m.create_completion("The capital of France is", max_tokens=16,
                                                          temperature=0, logprobs=2, stream=True))


# -- state: cached prefixes, multi-turn chat, save/load, reset, long prompts -------------------------

@pytest.mark.parametrize("mode", MODES)
def test_multi_turn_chat_reuses_the_prefix(pair, mode):
    def conversation(m):
        messages = [{"role": "user", "content": "Name a fruit."}]
        outs = []
        for follow_up in ("What colour is it?", "Name another one."):
            r = m.create_chat_completion(messages, max_tokens=32, temperature=0)
            outs.append(clean(r))
            messages += [r["choices"][0]["message"], {"role": "user", "content": follow_up}]
        return {"turns": outs}

    assert_same(pair, mode, conversation, must_draft=False)


@pytest.mark.parametrize("mode", MODES)
def test_repeated_prompt_and_reset(pair, mode):
    def twice(m):
        a = m.create_completion("The quick brown fox", max_tokens=24, temperature=0)
        b = m.create_completion("The quick brown fox", max_tokens=24, temperature=0)
        m.reset()
        c = m.create_completion("The quick brown fox", max_tokens=24, temperature=0)
        return {"runs": [clean(a), clean(b), clean(c)]}

    got = assert_same(pair, mode, twice)
    assert got["runs"][0] == got["runs"][1] == got["runs"][2]


@pytest.mark.parametrize("mode", MODES)
def test_save_and_load_state(pair, mode):
    def resumed(m):
        m.create_completion("In the beginning", max_tokens=16, temperature=0)
        state = m.save_state()
        a = m.create_completion("In the beginning there was", max_tokens=24, temperature=0)
        m.create_completion("Something else entirely", max_tokens=8, temperature=0)
        m.load_state(state)
        b = m.create_completion("In the beginning there was", max_tokens=24, temperature=0)
        return {"runs": [clean(a), clean(b)], "n_tokens": m.n_tokens}

    got = assert_same(pair, mode, resumed)
    assert got["runs"][0] == got["runs"][1]


@pytest.mark.parametrize("mode", MODES)
def test_long_prompt_past_512_cells(pair, mode, bench_prompts):
    text = " ".join(p["prompt"] for p in bench_prompts)
    tokens = pair[1].tokenize(text.encode(), add_bos=False)[:700]
    prompt = pair[1].detokenize(tokens).decode("utf-8", errors="ignore") + "\n\nIn short,"
    got = assert_same(pair, mode, lambda m: m.create_completion(prompt, max_tokens=40, temperature=0),
                      must_draft=False)
    assert got["usage"]["prompt_tokens"] > 512


@pytest.mark.parametrize("mode", MODES)
def test_generate_with_reset_false_continues(pair, mode):
    def cont(m):
        first = m.tokenize(b"One, two, three,")
        out = []
        for tok in m.generate(first, temp=0):
            out.append(tok)
            if len(out) == 6:
                break
        more = []
        for tok in m.generate(m.tokenize(b" and", add_bos=False), temp=0, reset=False):
            more.append(tok)
            if len(more) == 6:
                break
        return {"first": out, "more": more, "n_tokens": m.n_tokens}

    assert_same(pair, mode, cont, must_draft=False)


# -- tokenizer and vocabulary ----------------------------------------------------------------------

def test_tokenizer_helpers(pair):
    ref, swift = pair
    text = "Hello World</s> ünïcødé 🙂"
    for special in (False, True):
        for add_bos in (False, True):
            assert swift.tokenize(text.encode(), add_bos=add_bos, special=special) == \
                ref.tokenize(text.encode(), add_bos=add_bos, special=special)
    toks = ref.tokenize(text.encode())
    assert swift.detokenize(toks) == ref.detokenize(toks)
    assert (swift.token_bos(), swift.token_eos(), swift.n_vocab(), swift.n_ctx(), swift.n_embd()) == \
        (ref.token_bos(), ref.token_eos(), ref.n_vocab(), ref.n_ctx(), ref.n_embd())
    assert swift.metadata == ref.metadata


def test_vocab_only(model_path):
    ref = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    swift = SwiftLlama(str(model_path), vocab_only=True, verbose=False, profile=None)
    try:
        assert swift.tokenize(b"Hello World") == ref.tokenize(b"Hello World")
        with pytest.raises(RuntimeError, match="vocab_only"):
            swift.create_completion("Hello", max_tokens=2)
    finally:
        swift.close()
        ref.close()


# -- the second shipped model: Gemma 3 270M (base model: completions) -------------------------------

@pytest.fixture(scope="module")
def gemma_pair():
    path = str(resolve_model("gemma3-270m", progress=False))
    ref = llama_cpp.Llama(path, swa_full=True, **COMMON)
    swift = SwiftLlama(path, profile=None, **COMMON)
    yield ref, swift
    swift.close()
    ref.close()


@pytest.mark.parametrize("mode", MODES)
def test_gemma3_completions(gemma_pair, mode):
    assert_same(gemma_pair, mode, lambda m: m.create_completion("Once upon a time", max_tokens=40, temperature=0))
    assert_same(gemma_pair, mode, lambda m: m.create_completion("The three primary colours are", max_tokens=32,
                                                                temperature=0, stop=["."], stream=True),
                must_draft=False)
    assert_same(gemma_pair, mode, lambda m: m.create_completion("My favourite food is", max_tokens=32,
                                                                temperature=0.8, seed=3, repeat_penalty=1.2),
                must_draft=False)


def test_a_failed_load_leaves_no_noise_at_exit(tmp_path):
    """A constructor that raises must not make the interpreter print __del__ errors at exit."""
    import subprocess
    import sys
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    code = ("from swift_gguf.api import SwiftLlama\n"
            f"try:\n    SwiftLlama({str(bad)!r}, profile=None)\nexcept Exception as e:\n    print(type(e).__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ModelFileError"
    assert "Exception ignored" not in res.stderr and "AttributeError" not in res.stderr, res.stderr


def test_a_grammar_that_does_not_parse_is_a_clear_error(pair):
    """Llama adds a null sampler for such a grammar and crashes on the first token; SwiftLlama refuses it."""
    with pytest.raises(ValueError, match="does not parse"):
        pair[1].create_completion("Hi", max_tokens=2, grammar=LlamaGrammar.from_string("root ::= (", verbose=False))
