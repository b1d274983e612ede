"""Bad input of every kind: a clear message (what is wrong, what to do), a non-zero exit, no traceback.

Model files, options, context limits, odd prompts, a random-prompt losslessness property and a
library without swift-gguf's patch. (An interrupted model fetch is covered by test_models.py.)
One thread (-t 1 / n_threads=1) everywhere: the machine is small and shared.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
from swift_gguf.api import SwiftLlama
from swift_gguf.errors import ContextFullError
from swift_gguf.skipset import SkipSet, n_sublayers
from tests.conftest import UNSUPPORTED_ARCH

ROOT = Path(__file__).resolve().parent.parent
FAST = ["-t", "1", "--profile", "none"]


def invoke(*args, input=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def fails(*args, code=1, input=None):
    """Run the CLI expecting a clean failure; returns the output (stdout and stderr)."""
    r = invoke(*args, input=input)
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Error:" in r.output
    return r.output


def runs(*args, input=None):
    r = invoke(*args, input=input)
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def generate_fails(model, code=1) -> str:
    return fails("generate", "-m", model, "-p", "hi", "-n", 4, *FAST, code=code)


# -- model files ---------------------------------------------------------------------------------

def test_missing_model_file(tmp_path):
    out = generate_fails(tmp_path / "nope.gguf")
    assert "not found" in out and "nope.gguf" in out and "alias" in out


def test_model_path_is_a_directory(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    out = generate_fails(tmp_path)
    assert "is a directory" in out and "pass the path of a .gguf file" in out and "m.gguf" in out


def test_empty_model_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    out = generate_fails(path)
    assert "empty (0 bytes)" in out and "download" in out


def test_non_gguf_file(tmp_path):
    path = tmp_path / "page.gguf"
    path.write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    out = generate_fails(path)
    assert "not a GGUF file" in out and "HTML" in out and "resolve" in out


def test_gguf_truncated_in_its_tensor_data(model_path, tmp_path):
    path = tmp_path / "truncated.gguf"
    size = model_path.stat().st_size
    with open(model_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(size // 2))
    out = generate_fails(path)
    assert "truncated" in out and "50% present" in out and "download it again" in out


def test_unknown_alias():
    out = generate_fails("no-such-alias")
    assert "unknown model 'no-such-alias'" in out and "smollm2-135m" in out and "hf:" in out


def test_architecture_without_mask_support_decodes_plainly(unsupported_model):
    r = runs("generate", "-m", unsupported_model, "-p", "Hello", "-n", 8, "--spec", "swift", "--json", *FAST)
    data = json.loads(r.stdout)
    assert len(data["tokens"]) > 0
    stats = data["stats"]
    assert stats["mode_used"] == "plain" and stats["drafted"] == 0
    assert UNSUPPORTED_ARCH in stats["reason"] and "not support" in stats["reason"]


# -- options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, option, words", [
    (["-n", "0"], "max-tokens", "at least 1 token"),
    (["-n", "-5"], "max-tokens", "at least 1 token"),
    (["--draft-p-min", "0"], "--draft-p-min", "(0, 1]"),
    (["--draft-p-min", "1.5"], "--draft-p-min", "(0, 1]"),
    (["--draft-max", "0"], "--draft-max", "--spec off"),
    (["--spec", "bogus"], "--spec", "'off', 'swift', 'auto'"),
    (["-c", "8"], "--ctx-size", "at least 16 tokens"),
    (["-t", "0"], "--threads", "at least 1 thread"),
])
def test_bad_option_values_are_usage_errors(model_path, args, option, words):
    out = fails("generate", "-m", model_path, "-p", "hi", *args, code=2)
    assert option in out and words in out and "Usage:" in out


def test_context_smaller_than_the_prompt(model_path):
    prompt = "The history of the city is long and complicated. " * 8   # about 80 tokens
    out = fails("generate", "-m", model_path, "-p", prompt, "-c", 32, "-n", 4, *FAST)
    assert "the context holds only 32" in out and "-c/--ctx-size" in out and "shorten the prompt" in out


def test_gpu_layers_on_a_cpu_only_build_warn_and_run_on_the_cpu(model_path):
    from swift_gguf import native
    if native.gpu_offload_supported():
        pytest.skip("this llama.cpp build has a GPU backend")
    r = runs("generate", "-m", model_path, "-p", "Hello", "-n", 4, "-ngl", 5, "--json", *FAST)
    assert "warning" in r.stderr and "no GPU backend" in r.stderr and "-DGGML_CUDA=on" in r.stderr
    assert json.loads(r.stdout)["tokens"]


BAD_PROMPT_FILES = {
    # name: (file content, what the message must say)
    "not-jsonl": ('{"prompt": "fine"}\n\nWrite a poem about the sea\n',
                  ["line 3", "not valid JSON", '{"prompt": "Hello"}']),
    "no-prompt-field": ('{"prompt": "fine"}\n{"text": "no prompt here"}\n', ["line 2", '"prompt"', "Fix:"]),
    "spec-bench-no-turns": ('{"question_id": 1, "category": "qa", "turns": []}\n', ["line 1", '"turns"', "Fix:"]),
}


@pytest.mark.parametrize("case", list(BAD_PROMPT_FILES))
@pytest.mark.parametrize("command", ["optimize", "bench"])
def test_bad_prompts_file(model_path, tmp_path, command, case):
    content, expected = BAD_PROMPT_FILES[case]
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    out = fails(command, "-m", model_path, "--prompts", path, *FAST)
    assert all(e in out for e in expected), out


@pytest.mark.parametrize("command, option", [("bench", "--out"), ("bench", "--plot"), ("optimize", "--plot")])
def test_output_path_in_a_missing_folder_fails_before_the_run(model_path, tmp_path, command, option):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n')
    out = fails(command, "-m", model_path, "--prompts", prompts, option, tmp_path / "missing-dir" / "x.png",
                *FAST, code=2)
    assert option in out and "missing-dir" in out and "does not exist" in out


@pytest.mark.parametrize("args, option", [(["--pairs", "0"], "--pairs"), (["--limit", "0"], "--limit")])
def test_bad_bench_counts(model_path, args, option):
    out = fails("bench", "-m", model_path, *args, *FAST, code=2)
    assert option in out and "at least 1" in out


# -- context limits (API and CLI) ---------------------------------------------------------------------

def _words(n: int) -> str:
    return " ".join(["one two three four five six seven eight nine ten"] * n)


def _ctx_run(model_path, n_ctx: int, prompt: str, spec: str, max_tokens: int = 100):
    llm = SwiftLlama(str(model_path), n_ctx=n_ctx, spec=spec, skip=SkipSet(30), draft_max=16, profile=None,
                     n_threads=1, n_threads_batch=1)
    try:
        # llama.cpp pads the context (to 256); SwiftLlama honours the size asked for
        assert llm.rt.n_ctx == n_ctx
        n_prompt = len(llm.tokenize(prompt.encode()))
        ids = [t.id for t in llm.generate_tokens(prompt, llm.sampling_params(temp=0.0), max_tokens=max_tokens)]
        return n_prompt, ids, llm.last_stats
    finally:
        llm.close()


@pytest.mark.parametrize("n_ctx, words", [(256, 22), (64, 4)])
def test_context_fills_in_the_middle_of_a_draft(model_path, n_ctx, words):
    """The prompt leaves less room than max_tokens: generation stops at the end of the context,
    with the plain output up to there and no exception; drafts near the end are cut short."""
    prompt = _words(words)
    n_prompt, plain, plain_stats = _ctx_run(model_path, n_ctx, prompt, "off")
    assert n_ctx - n_prompt < 100
    _, swift, stats = _ctx_run(model_path, n_ctx, prompt, "swift")
    assert swift == plain
    assert len(swift) == n_ctx - n_prompt
    assert stats.stop_reason == plain_stats.stop_reason == "context full"
    assert stats.cycles > 0 and stats.mode_used == "swift"


def test_prompt_longer_than_the_context_api(model_path):
    llm = SwiftLlama(str(model_path), n_ctx=256, spec="swift", profile=None, n_threads=1, n_threads_batch=1)
    try:
        with pytest.raises(ContextFullError, match="context holds 256"):
            next(llm.generate_tokens(_words(30), max_tokens=4))
        # the model is still usable afterwards
        assert len([t for t in llm.generate_tokens("Hello", max_tokens=4)]) == 4
    finally:
        llm.close()


def test_cli_output_stops_at_the_end_of_the_context(model_path):
    r = runs("generate", "-m", model_path, "-p", _words(4), "-c", 48, "-n", 100, "--spec", "off", *FAST)
    assert "end of the context" in r.stderr and "-c/--ctx-size" in r.stderr
    r = runs("generate", "-m", model_path, "-p", _words(4), "-c", 48, "-n", 100, "--json", *FAST)
    data = json.loads(r.stdout)
    assert data["stats"]["stop_reason"] == "context full"
    assert data["stats"]["n_prompt"] + len(data["tokens"]) <= 48


# -- prompts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompt_is_a_usage_error(model_path, prompt):
    out = fails("generate", "-m", model_path, "-p", prompt, *FAST, code=2)
    assert "prompt is empty" in out and "-p TEXT" in out
    out = fails("generate", "-m", model_path, *FAST, code=2, input=prompt)
    assert "prompt is empty" in out


def test_very_long_prompt_within_the_context(model_path):
    r = runs("generate", "-m", model_path, "-p", _words(50), "-c", 1024, "-n", 4, "--json", *FAST)
    data = json.loads(r.stdout)
    assert 400 < data["stats"]["n_prompt"] < 1024 and data["tokens"]


@pytest.mark.parametrize("prompt", ["Emoji: 😀🚀👩‍👩‍👧 and more", "中文和日本語のテキスト、한국어",
                                    "שלום עולם! مرحبا بالعالم", "\u200f\u202eRTL override\u202c zero\u200bwidth"])
def test_arbitrary_unicode_prompts(model_path, prompt):
    runs("generate", "-m", model_path, "-p", prompt, "-n", 6, *FAST)
    data = json.loads(runs("generate", "-m", model_path, "-p", prompt, "-n", 6, "--json", *FAST).stdout)
    assert data["tokens"]


def test_invalid_utf8_on_stdin(model_path):
    raw = b"\xff\xfe broken \xc3\x28 bytes \xed\xa0\x80 and \xf0\x9f"
    r = runs("generate", "-m", model_path, "-n", 4, *FAST, input=raw)
    assert r.stdout
    data = json.loads(runs("generate", "-m", model_path, "-n", 4, "--json", *FAST, input=raw).stdout)
    assert data["stats"]["n_prompt"] > 1


# -- property: greedy swift == greedy plain on random prompts -------------------------------------------

@pytest.fixture(scope="module")
def prop_llm(model_path):
    rng = np.random.default_rng(7)
    n_layer = 30
    skip = SkipSet.from_indices(n_layer, rng.choice(n_sublayers(n_layer), size=12, replace=False))
    llm = SwiftLlama(str(model_path), n_ctx=256, spec="swift", skip=skip, draft_max=4, profile=None,
                     n_threads=1, n_threads_batch=1)
    yield llm
    llm.close()


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prompt=st.text(min_size=1, max_size=40))
def test_swift_equals_plain_on_random_prompts(prop_llm, prompt):
    out = {}
    for mode in ("off", "swift"):
        with prop_llm.speculation(mode):
            prop_llm.reset()
            out[mode] = [t.id for t in prop_llm.generate_tokens(prompt, prop_llm.sampling_params(temp=0.0),
                                                                max_tokens=12)]
        assert prop_llm.last_stats.mode_used == ("plain" if mode == "off" else "swift") or len(out[mode]) <= 1
    assert out["swift"] == out["off"]


# -- a llama.cpp library without swift-gguf's patch -----------------------------------------------------

FAKE_LIB = "/opt/stock-llama/libllama.so"


@pytest.fixture(scope="module")
def unpatched_env(tmp_path_factory):
    """PYTHONPATH with a stand-in llama_cpp whose library has none of the llama_swift_* symbols."""
    root = tmp_path_factory.mktemp("unpatched")
    pkg = root / "llama_cpp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('__version__ = "0.3.36"\n')
    (pkg / "llama_cpp.py").write_text(textwrap.dedent(f'''
        class _StockLibrary:
            """Like ctypes.CDLL of a stock libllama: no llama_swift_* symbols."""
            _name = {FAKE_LIB!r}

            def __getattr__(self, name):
                raise AttributeError(f"{FAKE_LIB}: undefined symbol: {{name}}")


        _lib = _StockLibrary()
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(ROOT)]))
    return env


def _run(env, *args):
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_unpatched_library_is_named_with_the_build_command(unpatched_env):
    code = ("from swift_gguf.errors import NativeLibraryError\n"
            "try:\n    import swift_gguf.native\n"
            "except NativeLibraryError as e:\n    print(e)\nelse:\n    print('NO ERROR')\n")
    p = _run(unpatched_env, "-c", code)
    assert p.returncode == 0, p.stderr
    assert "not swift-gguf's patched build" in p.stdout
    assert FAKE_LIB in p.stdout and "0.3.36" in p.stdout
    assert "python native/build.py" in p.stdout


def test_doctor_and_generate_with_an_unpatched_library(unpatched_env, model_path):
    p = _run(unpatched_env, "-m", "cli", "doctor", "--json")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    report = json.loads(p.stdout)
    assert report["layer_skip"] is False
    assert FAKE_LIB in report["error"] and "native/build.py" in report["error"]
    p = _run(unpatched_env, "-m", "cli", "doctor")
    assert p.returncode != 0 and "MISSING" in p.stdout and FAKE_LIB in p.stdout
    p = _run(unpatched_env, "-m", "cli", "generate", "-m", str(model_path), "-p", "hi", "-n", "2")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "patched build" in p.stderr and FAKE_LIB in p.stderr and "native/build.py" in p.stderr
