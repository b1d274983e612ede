"""Chat prompts are built exactly as llama-cpp-python builds them for the model's GGUF template.

`Llama.create_chat_completion` renders the template with the vocabulary texts of BOS and EOS and
tokenizes without adding BOS (the template places it). `swift-gguf chat` (ChatTemplate) and
`generate --chat-template` / the benchmarks (render_prompt) must feed the model the same tokens,
on SmolLM2 and on a variant whose template uses eos_token and whose vocabulary asks for BOS.
"""
from __future__ import annotations

import llama_cpp
import pytest
from gguf import GGUFValueType

from swift_gguf.generation import render_prompt
from swift_gguf.template import ChatTemplate
from tests.ggufutil import retarget

VARIANT_TEMPLATE = (
    "Conversation:\n{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATIONS = {
    "one-message": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    "multi-turn": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
                   {"role": "user", "content": "Tell me a joke"}],
}


class Recording(llama_cpp.Llama):
    """llama-cpp-python's own Llama, noting the prompt tokens its chat handler passes on."""

    def create_completion(self, prompt, *args, **kwargs):
        self.prompts.append(list(prompt))
        return super().create_completion(prompt, *args, **kwargs)


@pytest.fixture(scope="module")
def variant(model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("template") / "smollm2-variant.gguf"
    return retarget(model_path, out, "llama", extra={
        "tokenizer.chat_template": (VARIANT_TEMPLATE, GGUFValueType.STRING),
        "tokenizer.ggml.add_bos_token": (True, GGUFValueType.BOOL)})


@pytest.fixture(scope="module")
def references(model_path, variant):
    llms = {name: Recording(str(path), n_ctx=256, n_threads=1, verbose=False)
            for name, path in (("smollm2", model_path), ("variant", variant))}
    for llm in llms.values():
        llm.prompts = []
    yield llms
    for llm in llms.values():
        llm.close()


@pytest.mark.parametrize("model", ["smollm2", "variant"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_prompt_tokens_are_llama_cpp_pythons(references, model, name):
    llm, messages = references[model], CONVERSATIONS[name]
    llm.create_chat_completion(messages, max_tokens=1, temperature=0.0)
    expected = llm.prompts[-1]
    assert ChatTemplate(llm).tokens(messages) == expected
    if len(messages) == 1:
        assert render_prompt(llm, messages[0]["content"], True) == expected


def test_the_variant_covers_eos_token_and_a_bos_wanting_vocabulary(references):
    """What SmolLM2's template does not exercise: eos_token inside the template, and a vocabulary
    that asks for BOS, which llama-cpp-python's chat handler leaves to the template."""
    llm = references["variant"]
    assert llm.tokenize(b"Hi", add_bos=True)[0] == llm.token_bos()
    tokens = ChatTemplate(llm).tokens(CONVERSATIONS["one-message"])
    assert tokens[0] != llm.token_bos() and llm.token_eos() in tokens
