"""The model's own chat template (GGUF metadata), set up exactly as llama-cpp-python sets it up.

`Llama.__init__` builds a `Jinja2ChatFormatter` from ``tokenizer.chat_template`` with the
vocabulary texts of the BOS and EOS tokens, and its chat handler tokenizes the rendered text
with ``add_bos=False`` (the formatter reports ``added_special``: the template decides about
BOS) and ``special=True``. Doing the same here makes `swift-gguf chat`, ``generate
--chat-template`` and the benchmarks feed the model the tokens ``create_chat_completion`` feeds it.
Works on any `llama_cpp.Llama` (SwiftLlama included, and the unpatched peers of benchmarks/).

`conversation_renderer` is the benchmarks' one way from a conversation to prompt tokens: the
template, or for a model without one (a base model) "Question: ...\nAnswer:" turns.
"""
from __future__ import annotations

from typing import Callable

from .errors import SwiftGGUFError

PLAIN_QUESTION, PLAIN_ANSWER = "Question: ", "Answer:"


def vocab_text(llm, token: int) -> str:
    """A token's text in the vocabulary ("" for -1): what llama-cpp-python gives the template."""
    from llama_cpp import llama_cpp as C
    if token < 0:
        return ""
    return C.llama_vocab_get_text(C.llama_model_get_vocab(llm.model), token).decode("utf-8", errors="ignore")


def _piece(llm, token: int) -> str:
    """A token as generated text, special tokens spelled out."""
    return llm.detokenize([token], special=True).decode("utf-8", errors="ignore") if token >= 0 else ""


class ChatTemplate:
    """Renders messages to prompt tokens with the model's template; knows the end-of-turn text.

    Raises SwiftGGUFError when the model has no template; `fix` is the hint that follows.
    """

    def __init__(self, llm, fix: str = "use a chat/instruct model."):
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise SwiftGGUFError(f"this model has no chat template in its metadata (a base model?).\nFix: {fix}")
        from llama_cpp import llama_cpp as C
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        self.llm = llm
        self._vocab = C.llama_model_get_vocab(llm.model)
        eos = vocab_text(llm, llm.token_eos())
        self._format = Jinja2ChatFormatter(template, eos_token=eos, bos_token=vocab_text(llm, llm.token_bos()))
        eot = C.llama_vocab_eot(self._vocab)
        # end-of-turn markers, also as generated text (a model may spell one with ordinary tokens)
        self.stops = sorted({s for s in (_piece(llm, llm.token_eos()), _piece(llm, eot)) if s})

    def render(self, messages: list[dict]) -> str:
        """The prompt text for messages, ending with the assistant's turn opening."""
        try:
            return self._format(messages=messages).prompt
        except Exception as e:   # jinja errors and the template's own raise_exception
            raise SwiftGGUFError(f"the model's chat template cannot render this conversation: {e}.\n"
                                 "Fix: /reset, or start without --system if the template rejects it.") from e

    def tokens(self, messages: list[dict]) -> list[int]:
        """Prompt tokens, as llama-cpp-python's chat handler makes them (the template places BOS)."""
        return self.llm.tokenize(self.render(messages).encode("utf-8"), add_bos=False, special=True)

    def ends_turn(self, token: int) -> bool:
        """True for end-of-generation tokens and tokens spelling an end-of-turn marker."""
        from llama_cpp import llama_cpp as C
        return bool(C.llama_vocab_is_eog(self._vocab, token)) or _piece(self.llm, token) in self.stops


def qa_text(messages: list[dict]) -> str:
    """A conversation as a base model reads one: "Question: <turn>\nAnswer:" per question and
    " <answer>\n" after each answered one, ending where the next answer starts."""
    text = ""
    for m in messages:
        if m["role"] == "user":
            text += f"{PLAIN_QUESTION}{m['content'].strip()}\n{PLAIN_ANSWER}"
        else:
            text += f" {m['content'].strip()}\n"
    return text


def conversation_renderer(llm, fmt: str = "auto") -> Callable[[list[dict]], list[int]]:
    """messages -> prompt tokens ending where the assistant's answer starts: "chat", the model's own
    template as create_chat_completion applies it (ChatTemplate.tokens); "plain", qa_text with BOS;
    "auto", chat where the model has a template."""
    if fmt == "auto":
        fmt = "chat" if llm.metadata.get("tokenizer.chat_template") else "plain"
    if fmt == "chat":
        return ChatTemplate(llm, fix="use --format plain (Question/Answer turns) for a base model.").tokens
    if fmt != "plain":
        raise ValueError(f"unknown prompt format {fmt!r}; use auto, chat or plain")
    return lambda messages: llm.tokenize(qa_text(messages).encode("utf-8"), add_bos=True, special=False)
