"""Interactive chat: a conversation with a model through SWIFT decoding.

`ChatSession` keeps the message history, renders it with the model's own chat
template (from the GGUF metadata) and streams the reply token by token through
`SwiftLlama.generate_tokens`, so every piece of text knows whether it came from an
accepted draft. Each turn's prompt starts with the previous one, so SwiftLlama's
prefix matching reuses the KV cache across turns.

`run_chat` is the read-reply loop behind `swift-gguf chat`: a prompt with line
editing on a terminal, plain lines from a pipe; Ctrl-C stops a reply, Ctrl-C at
the prompt or end of input leaves.
"""
from __future__ import annotations

import codecs
import contextlib
import json
import sys
from typing import Callable, Iterator, NamedTuple, TextIO

from .errors import SwiftGGUFError
from .template import ChatTemplate

HELP = """\
commands:
  /help         this help
  /stats        statistics of the last reply, and the skip set
  /reset        forget the conversation (history and KV cache)
  /exit, /quit  leave (Ctrl-D at the prompt too)
Ctrl-C stops a reply; at the prompt it leaves. Start a message with // to send a literal /."""

DRAFT_COLOR = "\x1b[32m"   # green: tokens from accepted layer-skip drafts
DRAFTER_COLORS = {"layer-skip": DRAFT_COLOR, "ngram": "\x1b[36m"}   # cyan: from prompt lookup
DIM = "\x1b[2m"
RESET = "\x1b[0m"


class Piece(NamedTuple):
    """A piece of streamed reply text and whether (and from which drafter) its token came from an accepted draft."""
    text: str
    from_draft: bool = False
    drafter: str = ""


# -- streamed text -----------------------------------------------------------------------


class StopFilter:
    """Holds back streamed text that may begin a stop string; cuts the stream at the first one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held: list[Piece] = []

    def feed(self, piece: Piece) -> tuple[list[Piece], bool]:
        """Add a piece; returns the pieces safe to show and whether a stop string was reached."""
        if piece.text:
            self._held.append(piece)
        text = "".join(p.text for p in self._held)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            return self._release(min(hits)), True
        return self._release(len(text) - self._partial_stop(text)), False

    def flush(self) -> list[Piece]:
        """Everything still held (the stream ended without completing a stop string)."""
        held, self._held = self._held, []
        return held

    def finish(self, tail: str = "") -> list[Piece]:
        """The stream ended (end of turn, max tokens): the rest of the text, with tail (the
        decoder's last characters) added, cut at a stop string if tail completes one."""
        ready, stopped = self.feed(Piece(tail))
        return ready if stopped else ready + self.flush()

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of text that a stop string starts with."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _release(self, n: int) -> list[Piece]:
        out: list[Piece] = []
        while self._held and n > 0:
            p = self._held[0]
            if len(p.text) <= n:
                out.append(self._held.pop(0))
                n -= len(p.text)
            else:
                out.append(p._replace(text=p.text[:n]))
                self._held[0] = p._replace(text=p.text[n:])
                n = 0
        return out


# -- the session ------------------------------------------------------------------------


class ChatSession:
    """A conversation with one SwiftLlama: history, sampling settings, streamed replies.

    Raises SwiftGGUFError at once when the model has no usable chat template.
    """

    def __init__(self, llm, *, system: str | None = None, max_tokens: int = 256,
                 sampling: dict | None = None):
        self.llm = llm
        self.template = ChatTemplate(llm, fix="use `swift-gguf generate -p TEXT` for plain completion, "
                                               "or a chat/instruct model.")
        self.system = system
        self.max_tokens = max_tokens
        self.sampling = dict(sampling or {})
        self.messages: list[dict] = []
        self.turn_stats = None   # GenStats of the last turn's generation (None if it never started)
        self.reset(clear_cache=False)
        self.template.render(self.messages + [{"role": "user", "content": "Hi"}])   # fails early if unusable

    def reset(self, clear_cache: bool = True) -> None:
        """Forget the conversation (the system prompt stays); clear the KV cache too."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        if clear_cache:
            self.llm.reset()

    def reply(self, user_text: str) -> Iterator[Piece]:
        """Stream the assistant's reply to user_text; the reply joins the history when done.

        An interrupted reply (the iterator closed, or an exception such as Ctrl-C) keeps
        the text produced so far; a turn that produced nothing is dropped.
        """
        self.messages.append({"role": "user", "content": user_text})
        parts: list[str] = []
        completed = False
        before, self.turn_stats = self.llm.last_stats, None
        try:
            for piece in self._stream(self.template.tokens(self.messages)):
                parts.append(piece.text)
                yield piece
            completed = True
        finally:
            if self.llm.last_stats is not before:
                self.turn_stats = self.llm.last_stats
            if completed or parts:
                self.messages.append({"role": "assistant", "content": "".join(parts)})
            else:
                self.messages.pop()

    def _stream(self, prompt: list[int]) -> Iterator[Piece]:
        """Generate after prompt until end of turn, a stop string or max_tokens."""
        llm = self.llm
        params = llm.sampling_params(**self.sampling)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")   # characters split over tokens
        stops = StopFilter(self.template.stops)
        with contextlib.closing(llm.generate_tokens(prompt, params, max_tokens=self.max_tokens)) as tokens:
            for tok in tokens:
                if self.template.ends_turn(tok.id):
                    break   # the text held back so far is still part of the reply
                text = decoder.decode(llm.detokenize([tok.id]))
                ready, stopped = stops.feed(Piece(text, tok.from_draft, tok.drafter))
                yield from ready
                if stopped:
                    return
        yield from stops.finish(decoder.decode(b"", final=True))

    @property
    def last_stats(self):
        """GenStats of the last generation (None before the first)."""
        return self.llm.last_stats

    def stats_report(self) -> str:
        """The last reply's statistics, one field a line, and the current skip set."""
        stats = self.last_stats
        if stats is None:
            return "no reply yet"
        lines = [f"last reply: {stats.summary()}"]
        for key, value in stats.to_dict().items():
            lines.append(f"  {key:18s} {_format_value(value)}")
        lines.append(f"skip set: {_describe_skip(self.llm.engine.skip)}")
        return "\n".join(lines)


def _rounded(value):
    """value with every float (also inside dicts and lists) cut to 4 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _format_value(value) -> str:
    value = _rounded(value)
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)


def _describe_skip(skip) -> str:
    if skip is None:
        return "none yet"
    return (f"{skip.describe()}; attention {sorted(skip.attention)}, ffn {sorted(skip.ffn)}")


# -- the loop ---------------------------------------------------------------------------


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _line_reader(stream) -> Callable[[str], str]:
    """input()-like reading of piped lines: invalid UTF-8 is replaced, EOFError at the end."""
    raw = getattr(stream, "buffer", None)

    def read(_prompt: str = "") -> str:
        line = raw.readline() if raw is not None else stream.readline()
        if not line:
            raise EOFError
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        return line.rstrip("\r\n")
    return read


def _prompt_reader() -> Callable[[str], str]:
    """input() with line editing where readline exists, tolerant of invalid UTF-8."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (enables editing and history for input())
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdin.reconfigure(errors="replace")
    return input


class ChatUI:
    """Writes replies, statistics and command output for run_chat."""

    def __init__(self, session: ChatSession, out: TextIO, err: TextIO, color, interactive: bool):
        self.session = session
        self.out, self.err = out, err
        self.interactive = interactive
        self.color = color == "always" or (bool(color) and _isatty(out))
        self.dim = _isatty(err)

    def say(self, text: str, stream: TextIO | None = None) -> None:
        stream = stream or self.out
        stream.write(text + "\n")
        stream.flush()

    def greet(self) -> None:
        llm = self.session.llm
        name = getattr(getattr(llm, "model_info", None), "name", "") or "the model"
        self.say(f"chatting with {name}; /help for commands, Ctrl-D or /exit to leave", self.err)

    def reply(self, text: str) -> None:
        """Stream one reply; Ctrl-C stops it (the engine's cleanup runs), errors are reported."""
        pieces = self.session.reply(text)
        in_color = ""
        try:
            for piece in pieces:
                in_color = self._write(piece, in_color)
        except KeyboardInterrupt:
            pieces.close()
            self._end(in_color, "\n[interrupted]")
        except SwiftGGUFError as e:
            pieces.close()
            self._end(in_color, "")
            self.say(f"error: {e}", self.err)
            return
        else:
            self._end(in_color, "")
        self.stats_line()

    def _write(self, piece: Piece, in_color: str) -> str:
        """Write a piece in its drafter's color (where colors are on); returns the color now in use."""
        color = DRAFTER_COLORS.get(piece.drafter, DRAFT_COLOR) if piece.from_draft else ""
        if self.color and color != in_color:
            self.out.write(color or RESET)
            in_color = color
        self.out.write(piece.text)
        self.out.flush()
        return in_color

    def _end(self, in_color: str, note: str) -> None:
        self.say((RESET if in_color else "") + note)

    def stats_line(self) -> None:
        stats = self.session.turn_stats
        if stats is not None:
            line = f"[{stats.summary()}]"
            self.say(f"{DIM}{line}{RESET}" if self.dim else line, self.err)

    def command(self, text: str) -> bool:
        """Run a /command; returns False when the chat should end."""
        name = text.split()[0].lower()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/stats":
            self.say(self.session.stats_report())
        elif name == "/reset":
            self.session.reset()
            self.say("[conversation cleared]")
        else:
            self.say(f"unknown command {name}: type /help for the commands (// sends a literal /)")
        return True


def run_chat(session: ChatSession, color=False, input_fn: Callable[[str], str] | None = None,
             output: TextIO | None = None, *, err: TextIO | None = None,
             interactive: bool | None = None) -> None:
    """Chat until /exit, end of input, or Ctrl-C at the prompt.

    color: True marks draft tokens when output is a terminal, "always" forces it.
    input_fn: input()-like (prompt -> line, EOFError at the end); default: a "> "
    prompt on a terminal, plain lines from a pipe. interactive (default: stdin is
    a terminal and no input_fn is given) shows the prompt and a greeting.
    """
    out = output or sys.stdout
    err = err or sys.stderr
    if interactive is None:
        interactive = input_fn is None and _isatty(sys.stdin)
    if input_fn is None:
        input_fn = _prompt_reader() if interactive else _line_reader(sys.stdin)
    ui = ChatUI(session, out, err, color, interactive)
    if interactive:
        ui.greet()
    while True:
        try:   # Ctrl-C during a reply is handled by ui.reply; anywhere else it leaves
            if not _turn(ui, input_fn("> " if interactive else "")):
                return
        except (EOFError, KeyboardInterrupt):
            if interactive:
                ui.say("")
            return


def _turn(ui: ChatUI, line: str) -> bool:
    """Handle one input line: a /command or a message; returns False when the chat should end."""
    text = line.strip()
    if not text:
        return True
    if text.startswith("/") and not text.startswith("//"):
        return ui.command(text)
    ui.reply(text[1:] if text.startswith("//") else text)
    return True
