"""One-shot completion used by the CLI's `generate` and by the benchmarks."""
from __future__ import annotations

from typing import TextIO

from .sampling import SamplingParams


def render_prompt(llm, prompt: str, use_template: bool) -> str | list[int]:
    """The prompt as text, or as tokens of a one-message chat in the model's own template."""
    if not use_template:
        return prompt
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        from .errors import SwiftGGUFError
        raise SwiftGGUFError("this model has no chat template in its metadata.\n"
                             "Fix: drop --chat-template (plain completion), or use a chat model.")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    eos = llm.detokenize([llm.token_eos()]).decode("utf-8", errors="ignore")
    bos = llm.detokenize([llm.token_bos()]).decode("utf-8", errors="ignore")
    fmt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
    text = fmt(messages=[{"role": "user", "content": prompt}]).prompt
    return llm.tokenize(text.encode("utf-8"), add_bos=not text.startswith(bos) or not bos, special=True)


def complete(llm, prompt: str, *, max_tokens: int, use_template: bool = False, stream_to: TextIO | None = None,
             temp: float = 0.0, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: int | None = None) -> dict:
    """Generate; returns {"text", "tokens", "stats", "stats_line"}; streams text to stream_to if given."""
    params: SamplingParams = llm.sampling_params(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                                 repeat_penalty=repeat_penalty, seed=seed)
    rendered = render_prompt(llm, prompt, use_template)
    ids: list[int] = []
    pending = b""
    text = b""
    for tok in llm.generate_tokens(rendered, params, max_tokens=max_tokens):
        if llm.rt.is_eog(tok.id):
            break
        ids.append(tok.id)
        piece = llm.detokenize([tok.id], prev_tokens=ids[:-1])
        text += piece
        if stream_to is not None:
            pending += piece
            try:
                stream_to.write(pending.decode("utf-8"))
                stream_to.flush()
                pending = b""
            except UnicodeDecodeError:   # a multi-byte character split over tokens
                pass
    stats = llm.last_stats
    return {"text": text.decode("utf-8", errors="replace"), "tokens": ids, "stats": stats.to_dict(),
            "stats_line": stats.summary()}
