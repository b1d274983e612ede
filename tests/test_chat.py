"""`swift-gguf chat` and ChatSession on the real SmolLM2-135M-Instruct (it has a chat template)."""
from __future__ import annotations

import io
import re

import pytest
from click.testing import CliRunner

import cli
from swift_gguf.chat import ChatSession, Piece, StopFilter, run_chat
from swift_gguf.errors import SwiftGGUFError

GREEDY = dict(temp=0.0)


@pytest.fixture(scope="module")
def llm(model_path):
    from swift_gguf.api import SwiftLlama
    # flash attention as the CLI loads it: the transcript test compares the CLI's reply with this one's
    model = SwiftLlama(str(model_path), n_ctx=1024, spec="off", profile=None, flash_attn=True)
    yield model
    model.close()


@pytest.fixture
def session(llm):
    llm.reset()
    return ChatSession(llm, max_tokens=16, sampling=GREEDY)


def reply_text(session: ChatSession, text: str) -> str:
    return "".join(p.text for p in session.reply(text))


def scripted(*lines):
    """An input() stand-in that answers lines, then EOF."""
    it = iter(lines)

    def read(_prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return read


def chat_cli(model_path, stdin, *args):
    return CliRunner().invoke(cli.main, ["chat", "-m", str(model_path), "-n", "16", *args], input=stdin)


# -- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["off", "auto"])
def test_cli_scripted_transcript(model_path, session, spec):
    expected = reply_text(session, "Hello")
    result = chat_cli(model_path, "Hello\n/stats\n/reset\nHi\n/exit\n", "--spec", spec)
    assert result.exit_code == 0, result.output
    if spec == "off":
        assert expected in result.stdout
    assert "n_prompt" in result.stdout and "skip set:" in result.stdout     # /stats
    assert "[conversation cleared]" in result.stdout                       # /reset
    assert result.stderr.count("tok/s") == 2                               # a stats line per reply


def test_cli_eof_ends_cleanly_and_tolerates_bad_input(model_path):
    # a blank line (ignored), invalid UTF-8, no /exit; --color adds no ANSI codes to a pipe
    result = chat_cli(model_path, b"   \nHel\xfflo\n", "--spec", "off", "--color")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("tok/s") == 1
    assert result.stdout.strip() and "\x1b[" not in result.output


def test_cli_unknown_command_hint(model_path):
    result = chat_cli(model_path, "/frobnicate\n", "--spec", "off")
    assert result.exit_code == 0
    assert "unknown command /frobnicate" in result.stdout and "/help" in result.stdout


def test_cli_model_without_chat_template(model_path, monkeypatch):
    def load_without_template(**kw):
        model = original(**kw)
        model.metadata.pop("tokenizer.chat_template", None)
        return model
    original = cli.load_model
    monkeypatch.setattr(cli, "load_model", load_without_template)
    result = chat_cli(model_path, "Hello\n", "--spec", "off")
    assert result.exit_code == 1
    assert "no chat template" in result.output and "swift-gguf generate" in result.output
    assert "Traceback" not in result.output


# -- ChatSession ----------------------------------------------------------------------------


def test_reply_matches_create_chat_completion(llm, session):
    text = reply_text(session, "What is the capital of France?")
    llm.reset()
    out = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                     max_tokens=16, temperature=0.0)
    assert text and text == out["choices"][0]["message"]["content"]
    assert session.messages[-1] == {"role": "assistant", "content": text}


def test_multi_turn_reuses_kv_prefix(llm, session):
    first = reply_text(session, "Hello")
    prompt1 = len(session.template.tokens(session.messages[:1]))
    n_after_first = llm.n_tokens
    starts = []
    decode = llm.rt.decode

    def spy(tokens, pos0, **kw):
        starts.append((pos0, len(tokens)))
        return decode(tokens, pos0, **kw)
    llm.rt.decode = spy
    try:
        second = reply_text(session, "Tell me a joke")
    finally:
        del llm.rt.decode
    reused, evaluated = starts[0]
    assert reused >= prompt1 and reused + evaluated == llm.last_stats.n_prompt
    assert evaluated < llm.last_stats.n_prompt - prompt1
    assert llm.n_tokens > n_after_first

    # Not asserted: that a fresh run of the whole conversation gives the same second reply. It need
    # not: a fresh run evaluates the first reply inside a prompt batch (> 32 tokens: llama.cpp's
    # batched kernels), the reused cache holds it as decoded token by token, and the two KV caches
    # differ in low bits (llama_cpp.Llama behaves the same). What must hold, equality with
    # llama_cpp.Llama over the same turns, is tests/test_dropin.py::test_multi_turn_chat_reuses_the_prefix.
    assert second and first


def test_interrupted_reply_keeps_partial_text(llm, session):
    class InterruptingOutput(io.StringIO):
        writes = 0

        def write(self, s):
            InterruptingOutput.writes += 1
            if InterruptingOutput.writes == 3:
                raise KeyboardInterrupt
            return super().write(s)
    out = InterruptingOutput()
    run_chat(session, input_fn=scripted("Count from one to ten.", "Hi"), output=out, err=io.StringIO())
    assert "[interrupted]" in out.getvalue()
    partial = session.messages[1]
    assert partial["role"] == "assistant" and partial["content"]
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]


def test_color_marks_accepted_drafts(model_path, session):
    from swift_gguf.api import SwiftLlama
    from swift_gguf.skipset import SkipSet
    plain = reply_text(session, "Name three colors.")
    drafter = SwiftLlama(str(model_path), n_ctx=1024, spec="swift", profile=None,
                         skip=SkipSet.from_lists(30))   # an empty skip set: every draft is exact
    try:
        out = io.StringIO()
        run_chat(ChatSession(drafter, max_tokens=16, sampling=GREEDY), color="always",
                 input_fn=scripted("Name three colors."), output=out, err=io.StringIO())
        assert drafter.last_stats.accepted > 0
    finally:
        drafter.close()
    assert "\x1b[32m" in out.getvalue()
    assert re.sub(r"\x1b\[\d+m", "", out.getvalue()).strip() == plain.strip()


def test_text_held_back_at_the_end_of_a_turn_is_kept(llm):
    """The reply ends in "<" (which could begin "<|im_end|>", so the stop filter holds it back)
    right before the end-of-turn token: the "<" still reaches the screen and the history."""
    s = ChatSession(llm, max_tokens=8, sampling=GREEDY)
    for q, a in (("Repeat exactly: x <", "x <"), ("Repeat exactly: y <", "y <")):
        s.messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    text = reply_text(s, "Repeat exactly: z <")
    assert llm.rt.is_eog(llm.last_tokens[-1].id)            # the turn ended (not max_tokens)
    assert llm.detokenize([llm.last_tokens[-2].id]).endswith(b"<")
    assert text.endswith("<") and s.messages[-1] == {"role": "assistant", "content": text}


def test_ctrl_c_at_prompt_exits_cleanly(session):
    def interrupt(_prompt):
        raise KeyboardInterrupt
    out = io.StringIO()
    run_chat(session, input_fn=interrupt, output=out, err=io.StringIO(), interactive=True)
    assert session.messages == []


def test_system_prompt_and_reset(llm):
    s = ChatSession(llm, system="You are terse.", max_tokens=4, sampling=GREEDY)
    reply_text(s, "Hi")
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    s.reset()
    assert s.messages == [{"role": "system", "content": "You are terse."}] and llm.n_tokens == 0


def test_no_template_fails_at_session_start(llm, monkeypatch):
    monkeypatch.delitem(llm.metadata, "tokenizer.chat_template")
    with pytest.raises(SwiftGGUFError, match="no chat template"):
        ChatSession(llm)


# -- StopFilter -----------------------------------------------------------------------------


def feed_all(stops, texts):
    f = StopFilter(stops)
    shown, stopped = [], False
    for t in texts:
        ready, stopped = f.feed(Piece(t, t.startswith("d")))
        shown += ready
        if stopped:
            break
    else:
        shown += f.flush()
    return "".join(p.text for p in shown), stopped, shown


def test_stop_string_split_over_pieces_is_cut():
    text, stopped, _ = feed_all(["<|im_end|>"], ["Hello", " <|im", "_end|>", "more"])
    assert (text, stopped) == ("Hello ", True)


def test_partial_stop_prefix_is_released_at_the_end():
    text, stopped, shown = feed_all(["<|im_end|>"], ["a <", "|i", "dx"])
    assert (text, stopped) == ("a <|idx", False)
    assert [p.from_draft for p in shown][-1] is True


def test_finish_keeps_held_text_and_the_decoders_tail():
    f = StopFilter(["<|im_end|>"])
    ready, _ = f.feed(Piece("a <"))
    assert "".join(p.text for p in ready) == "a "
    assert "".join(p.text for p in f.finish("\ufffd")) == "<\ufffd"   # held "<" and the tail
    f = StopFilter(["<|im_end|>"])
    f.feed(Piece("x <|im_end"))
    assert "".join(p.text for p in f.finish("|>")) == ""   # the tail completes the stop string
