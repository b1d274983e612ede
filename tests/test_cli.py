"""The command line (cli.main) through click's CliRunner, on the real patched llama.cpp and model.

One thread (-t 1) everywhere: the machine is small and shared, and llama.cpp's worker threads
spin. Tests never assert timings, only the shape of the output and the identity of tokens.
"""
from __future__ import annotations

import json
import re

import click
import pytest
from click.testing import CliRunner

import cli
from swift_gguf import limits

COMMANDS = ("chat", "generate", "optimize", "bench", "serve", "doctor", "models", "pull")
STATS_KEYS = ("drafted", "accepted", "acceptance_rate", "mean_accepted", "tokens_per_second", "mode_used")
SUMMARY_KEYS = ("speedup_median", "acceptance_rate", "mean_accepted", "bound", "efficiency", "identical_outputs")
FAST = ["-t", "1", "--profile", "none"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args, input=None):
    result = CliRunner().invoke(cli.main, [str(a) for a in args], input=input)
    assert "Traceback" not in result.output, result.output
    return result


def ok(*args, input=None):
    result = invoke(*args, input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture()
def two_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Write a haiku about the sea."}\n{"prompt": "List three fruits."}\n')
    return path


# -- help ------------------------------------------------------------------------------------

def test_help_lists_every_command():
    out = ok("--help").output
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_help(name):
    out = ok(name, "--help").output
    assert "Usage:" in out and name in out


# -- generate --------------------------------------------------------------------------------

# A skip set for SmolLM2 that drafts but is often wrong (16 of the 56 inner sub-layers).
REJECTING_SET = {"attention": list(range(5, 13)), "ffn": list(range(5, 13))}


@pytest.fixture(scope="module")
def rejecting_profile(model_path, tmp_path_factory):
    """A finished search's profile holding REJECTING_SET: `--profile PATH` makes swift speculate
    with rejections from the first token (no search runs, so nothing rewrites the file)."""
    from swift_gguf import profiles
    from swift_gguf.costmodel import Costs
    from swift_gguf.search import SearchState
    from swift_gguf.skipset import SkipSet
    state = SearchState(30)
    state.best = SkipSet.from_lists(30, **REJECTING_SET)
    state.done = True   # best_matchness 0: live acceptance never looks like a task change
    path = tmp_path_factory.mktemp("profile") / "smollm2-rejecting.json"
    profiles.save(path, profiles.Profile(profiles.model_identity(model_path), "cpu", "SmolLM2", state, Costs()))
    return path


def test_generate_json_modes_give_identical_tokens(model_path, rejecting_profile):
    """swift really speculates (drafts, some rejected) and still gives plain decoding's tokens."""
    results = {}
    for spec in ("off", "swift", "auto"):
        r = ok("generate", "-m", model_path, "-p", "The capital of France is", "-n", 16, "--temp", 0,
               "--spec", spec, "--json", "-t", 1, "--profile", rejecting_profile, "--draft-max", 4)
        data = json.loads(r.stdout)   # one JSON object, nothing else on stdout
        assert isinstance(data["text"], str) and data["text"]
        assert all(isinstance(t, int) for t in data["tokens"]) and 0 < len(data["tokens"]) <= 16
        for key in STATS_KEYS:
            assert key in data["stats"], key
        assert data["stats"]["mode"] == spec
        results[spec] = data
    assert results["off"]["stats"]["mode_used"] == "plain"
    swift = results["swift"]["stats"]
    assert swift["mode_used"] == "swift" and swift["skip"] == REJECTING_SET
    assert 0 < swift["accepted"] < swift["drafted"]   # speculation with rejections, not plain vs plain
    assert results["off"]["tokens"] == results["swift"]["tokens"] == results["auto"]["tokens"]
    assert results["off"]["text"] == results["swift"]["text"]


def test_generate_text_output_and_stats_line(model_path):
    r = ok("generate", "-m", model_path, "-p", "Once upon a time", "-n", 8, "--spec", "swift", *FAST)
    assert r.stdout.strip()                      # the completion itself
    assert not r.stdout.lstrip().startswith("{")
    assert "tok/s" in r.stderr and "mode" in r.stderr and r.stderr.strip().startswith("[")
    assert "tok/s" not in r.stdout


def test_generate_with_the_chat_template(model_path):
    r = ok("generate", "-m", model_path, "-p", "Say hello.", "-n", 8, "--chat-template", "--json", *FAST)
    data = json.loads(r.stdout)
    # the prompt went through SmolLM2's chat template: many more tokens than the bare text
    assert data["stats"]["n_prompt"] > 10
    assert data["tokens"]
    plain = json.loads(ok("generate", "-m", model_path, "-p", "Say hello.", "-n", 8, "--json", *FAST).stdout)
    assert plain["stats"]["n_prompt"] < data["stats"]["n_prompt"]


def test_generate_reads_the_prompt_from_stdin(model_path):
    r = ok("generate", "-m", model_path, "-n", 4, "--json", *FAST, input="Once upon a time")
    assert json.loads(r.stdout)["stats"]["n_prompt"] >= 4


# -- doctor, models, pull ------------------------------------------------------------------------

def test_doctor_json():
    data = json.loads(ok("doctor", "--json").stdout)
    assert data["layer_skip"] is True
    import llama_cpp
    assert data["llama_cpp_python"] == llama_cpp.__version__
    assert data["pin"]["version"] == "0.3.36"
    assert "CPU" in data["backends"]
    from swift_gguf import native
    assert data["layer_skip_architectures"] == list(native.layer_skip_architectures())
    assert {"llama", "gemma3", "qwen3moe", "gpt-oss"} <= set(data["layer_skip_architectures"])


def test_doctor_text():
    out = ok("doctor").stdout
    assert "layer skip): ok" in out and "backends:" in out and "0.3.36" in out
    assert "layer skip architectures: llama, qwen2" in out


def test_doctor_check_names_each_setting(model_path):
    """`doctor --check` with the user's thread counts (-t 1 -tb 2: unequal, as llama-cpp-python's
    default on 2 cores) and flash attention: each setting passes, the user's first."""
    out = ok("doctor", "--check", "-m", str(model_path), "-t", "1", "-tb", "2", "-fa", "on").stdout
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith(("pass", "FAIL", "ERROR"))]
    assert lines[0].startswith("pass") and "flash attention on, threads 1/2" in lines[0]
    assert any("flash attention off, threads 1/2" in line for line in lines)
    assert any("flash attention on, threads 1/1" in line for line in lines)
    assert all(line.startswith("pass") for line in lines), lines
    assert "identical to plain decoding with these settings" in out
    # and what a plain step costs through each one-token kernel path, per setting
    steps = [line for line in out.splitlines() if "plain step" in line]
    assert len(steps) == len(lines) and all("verification kernels" in line for line in steps), steps


def test_models_text_and_json(model_path):
    out = ok("models").stdout
    assert "aliases:" in out and "smollm2-135m" in out and "cached:" in out
    data = json.loads(ok("models", "--json").stdout)
    assert "smollm2-135m" in data["aliases"]
    assert any(row["path"] == str(model_path) for row in data["cached"])


def test_pull_unknown_alias_is_a_clean_error():
    r = invoke("pull", "no-such-model-xyz")
    assert r.exit_code == 1
    assert "unknown model 'no-such-model-xyz'" in r.output and "smollm2-135m" in r.output
    assert isinstance(r.exception, SystemExit)


# -- optimize --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def optimized(fixture_k1, tmp_path_factory):
    """`optimize --json` on the redundancy fixture, once: (its JSON, the profile, the plot)."""
    tmp = tmp_path_factory.mktemp("optimize")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text('{"prompt": "Write a haiku about the sea."}\n{"prompt": "List three fruits."}\n')
    profile, plot = tmp / "k1.json", tmp / "search.png"
    r = ok("optimize", "-m", fixture_k1, "--prompts", prompts, "--max-probes", 150, "--tokens", 48,
           "--json", "--profile", profile, "--plot", plot)
    return json.loads(r.stdout), profile, plot


def test_optimize_json_profile_and_plot(optimized):
    data, profile, plot = optimized
    for key in ("matchness", "predicted_speedup", "probes"):
        assert key in data
    assert 0 < data["probes"] <= 150 + 8   # a probe step may finish its batch past the budget
    assert set(data["skip"]) == {"attention", "ffn"}
    assert all(isinstance(i, int) for i in data["skip"]["attention"] + data["skip"]["ffn"])
    assert data["skip"]["attention"] or data["skip"]["ffn"]   # the fixture's identity layers are found
    assert data["profile"] == str(profile)
    assert json.loads(profile.read_text())
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_generate_with_the_optimized_profile_speculates_losslessly(fixture_k1, optimized):
    _, profile, _ = optimized
    runs = {}
    for spec in ("off", "swift"):
        r = ok("generate", "-m", fixture_k1, "-p", "The capital of France is", "-n", 24, "--temp", 0,
               "--spec", spec, "--json", "-t", 1, "--profile", profile)
        runs[spec] = json.loads(r.stdout)
    swift = runs["swift"]["stats"]
    assert swift["drafted"] > 0 and swift["mode_used"] == "swift"
    assert 0.0 <= swift["acceptance_rate"] <= 1.0
    assert runs["swift"]["tokens"] == runs["off"]["tokens"]


# -- bench -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("peer", ["--no-peer", "--peer"])
def test_bench_json_summary(model_path, two_prompts, tmp_path, rejecting_profile, peer):
    plot = tmp_path / "bench.png"
    args = ["bench", "-m", model_path, "--prompts", two_prompts, "-n", 16, "--pairs", 1, "--json", peer,
            "-t", 1, "--spec", "swift", "--profile", rejecting_profile, "--draft-max", 4]
    if peer == "--peer":
        args += ["--plot", plot]
    data = json.loads(ok(*args).stdout)
    summary = data["summary"]
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["prompts"] == 2 and len(data["rows"]) == 2
    assert data["config"]["mode"] == "swift" and data["skip"] == REJECTING_SET
    assert 0 < sum(r["accepted"] for r in data["rows"]) < sum(r["drafted"] for r in data["rows"])
    assert summary["identical_outputs"] is True   # greedy swift (with rejections) == greedy plain
    assert ("peer_speedup_median" in summary) == (peer == "--peer")
    if peer == "--peer":
        assert plot.read_bytes()[:8] == PNG_MAGIC


# -- option bounds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("option, bound, inside, outside", [
    ("draft_p_min", limits.DRAFT_P_MIN, [1.0, 1e-6, 0.8], [0.0, -0.1, 1.01]),
    ("draft_max", limits.DRAFT_MAX, [1, 64], [0, -3]),
    ("ctx_size", limits.CTX_SIZE, [16, 4096], [15, 0]),
    ("n_gpu_layers", limits.GPU_LAYERS, [-1, 0, 99], [-2]),
    ("threads", limits.THREADS, [1, 8], [0, -1]),
    ("max_tokens", limits.MAX_TOKENS, [1, 512], [0, -5]),
    ("top_k", limits.TOP_K, [0, 40], [-1]),
    ("top_p", limits.PROBABILITY, [0.0, 1.0], [-0.01, 1.5]),
    ("repeat_penalty", limits.REPEAT_PENALTY, [1e-3, 1.0, 2.0], [0.0, -1.0]),
])
def test_option_types_take_their_bounds_from_limits(option, bound, inside, outside):
    """One source of truth: each option accepts exactly the values its bound contains."""
    param = next(p for p in cli.generate.params if p.name == option)
    for value in inside:
        assert value in bound and param.type.convert(value, param, None) == value
    for value in outside:
        assert value not in bound
        with pytest.raises(click.BadParameter):
            param.type.convert(value, param, None)


def test_bound_notation():
    assert (str(limits.DRAFT_P_MIN), str(limits.CTX_SIZE), str(limits.PROBABILITY)) == ("(0, 1]", "[16, inf)", "[0, 1]")


@pytest.mark.parametrize("field, bound, inside, outside", [
    ("draft_p_min", limits.DRAFT_P_MIN, [1.0, 1e-6], [0.0, 1.01]),
    ("draft_max", limits.DRAFT_MAX, [1, 64], [0, -3]),
])
def test_spec_config_checks_the_same_bounds(field, bound, inside, outside):
    """The API's SpecConfig refuses exactly what the CLI refuses, naming the interval."""
    from swift_gguf.engine import SpecConfig
    for value in inside:
        assert getattr(SpecConfig(**{field: value}), field) == value
    for value in outside:
        with pytest.raises(ValueError, match=re.escape(str(bound))):
            SpecConfig(**{field: value})
