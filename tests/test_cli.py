"""The command line (cli.main) through click's CliRunner, on the real patched llama.cpp and model.

One thread (-t 1) everywhere: the machine is small and shared, and llama.cpp's worker threads
spin. Tests never assert timings, only the shape of the output and the identity of tokens.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cli

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

def test_generate_json_modes_give_identical_tokens(model_path):
    results = {}
    for spec in ("off", "swift", "auto"):
        r = ok("generate", "-m", model_path, "-p", "The capital of France is", "-n", 16, "--temp", 0,
               "--spec", spec, "--json", *FAST)
        data = json.loads(r.stdout)   # one JSON object, nothing else on stdout
        assert isinstance(data["text"], str) and data["text"]
        assert all(isinstance(t, int) for t in data["tokens"]) and 0 < len(data["tokens"]) <= 16
        for key in STATS_KEYS:
            assert key in data["stats"], key
        assert data["stats"]["mode"] == spec
        results[spec] = data
    assert results["off"]["stats"]["mode_used"] == "plain"
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
           "--json", "-t", 1, "--profile", profile, "--plot", plot)
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
def test_bench_json_summary(model_path, two_prompts, tmp_path, peer):
    plot = tmp_path / "bench.png"
    args = ["bench", "-m", model_path, "--prompts", two_prompts, "-n", 16, "--pairs", 1, "--json", peer, *FAST]
    if peer == "--peer":
        args += ["--plot", plot]
    data = json.loads(ok(*args).stdout)
    summary = data["summary"]
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["prompts"] == 2 and len(data["rows"]) == 2
    assert summary["identical_outputs"] is True   # greedy swift == greedy plain
    assert ("peer_speedup_median" in summary) == (peer == "--peer")
    if peer == "--peer":
        assert plot.read_bytes()[:8] == PNG_MAGIC
