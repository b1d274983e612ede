"""One-shot completion used by the CLI's `generate` and by the benchmarks."""
from __future__ import annotations

import codecs
import contextlib
from typing import TextIO

from .sampling import SamplingParams


def render_prompt(llm, prompt: str | list[dict], use_template: bool) -> str | list[int]:
    """The prompt as text, or as tokens of a chat in the model's own template.

    prompt is one user message, or a conversation ({"role", "content"} messages ending with a
    user turn). Without the template a conversation is plain text: each answer follows its
    question directly (as it was generated), the next question after a blank line.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not use_template:
        if isinstance(prompt, str):
            return prompt
        return "".join(("\n\n" if m["role"] == "user" and i else "") + m["content"] for i, m in enumerate(messages))
    from .template import ChatTemplate
    template = ChatTemplate(llm, fix="drop --chat-template (plain completion), or use a chat model.")
    return template.tokens(messages)


def context_limit(llm) -> int:
    """How many tokens (prompt plus output) this model's context holds.

    llama.cpp may pad the context beyond the requested size (to a multiple of 256), while
    Llama's token buffer (input_ids) has the requested size: the smaller one is the limit.
    """
    n = llm.n_ctx()
    ids = getattr(llm, "input_ids", None)
    return min(n, len(ids)) if ids is not None else n


def _write(stream: TextIO, text: str) -> None:
    """Write text, replacing what the stream's encoding cannot show (e.g. emoji on an ASCII terminal)."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        enc = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(enc, errors="replace").decode(enc, errors="replace"))
    stream.flush()


def complete(llm, prompt: str, *, max_tokens: int, use_template: bool = False, stream_to: TextIO | None = None,
             temp: float = 0.0, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: int | None = None) -> dict:
    """Generate; returns {"text", "tokens", "stats", "stats_line"}; streams text to stream_to if given.

    Raises ContextFullError when the prompt does not fit in the context; output that would run
    past the end of the context stops there, with stats["stop_reason"] == "context full".
    """
    from .errors import ContextFullError
    params: SamplingParams = llm.sampling_params(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                                 repeat_penalty=repeat_penalty, seed=seed)
    rendered = render_prompt(llm, prompt, use_template)
    tokens = (llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True) if isinstance(rendered, str)
              else list(rendered))
    limit = context_limit(llm)
    if len(tokens) >= limit:
        raise ContextFullError(f"the prompt has {len(tokens)} tokens but the context holds only {limit} "
                               f"(prompt and output together).\nFix: shorten the prompt, or raise -c/--ctx-size "
                               f"(e.g. -c {_round_up(len(tokens) + max_tokens, 256)}).")
    room = limit - len(tokens)   # the most tokens that can follow the prompt
    ids: list[int] = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = b""
    eog = False
    with contextlib.closing(llm.generate_tokens(tokens, params, max_tokens=min(max_tokens, room))) as run:
        for tok in run:
            if llm.rt.is_eog(tok.id):
                eog = True
                break
            ids.append(tok.id)
            piece = llm.detokenize([tok.id], prev_tokens=ids[:-1])
            text += piece
            if stream_to is not None:
                chunk = decoder.decode(piece)   # holds back a multi-byte character split over tokens
                if chunk:
                    _write(stream_to, chunk)
    if stream_to is not None:   # bytes the model never completed into a character
        chunk = decoder.decode(b"", final=True)
        if chunk:
            _write(stream_to, chunk)
    stats = llm.last_stats
    if eog and not stats.stop_reason:
        stats.stop_reason = "eos"
    if room < max_tokens and stats.tokens >= room and stats.stop_reason in ("max tokens", ""):
        stats.stop_reason = "context full"
    return {"text": text.decode("utf-8", errors="replace"), "tokens": ids, "stats": stats.to_dict(),
            "stats_line": stats.summary()}


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step
