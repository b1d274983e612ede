"""`swift-gguf chat` in a real terminal (tmux): prompt, streaming, Ctrl-C, /exit."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

TMUX = shutil.which("tmux") or ("/usr/bin/tmux" if Path("/usr/bin/tmux").exists() else None)
SWIFT_GGUF = Path(sys.executable).with_name("swift-gguf")

pytestmark = [
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed (needed for the real terminal test)"),
    pytest.mark.skipif(not SWIFT_GGUF.exists(), reason=f"{SWIFT_GGUF} is not installed"),
]


class Pane:
    """One tmux session on a private server socket, driven by send-keys and read by capture-pane."""

    def __init__(self, command: str):
        self.socket = f"swift-gguf-test-{uuid.uuid4().hex[:8]}"
        self.name = "chat"
        self.tmux("new-session", "-d", "-s", self.name, "-x", "160", "-y", "50", command,
                  ";", "set-option", "-t", self.name, "remain-on-exit", "on")
        self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def tmux(self, *args: str) -> str:
        done = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return done.stdout

    def screen(self) -> str:
        """The whole pane, scrollback included, wrapped lines joined."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.name)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", text)
        self.tmux("send-keys", "-t", self.name, "Enter")

    def ctrl_c(self) -> None:
        self.tmux("send-keys", "-t", self.name, "C-c")

    def wait(self, ready, timeout: float = 120.0, what: str = "") -> str:
        """Poll the screen until ready(screen) holds; fail with the screen after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ready(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; screen:\n{screen}")
            time.sleep(0.1)

    def dead(self) -> bool:
        """True once the pane's program ended (its terminal closed) or the session is gone."""
        return self.tmux("display-message", "-p", "-t", self.name, "#{pane_dead}").strip() in ("1", "")

    def kill(self) -> None:
        """End the session and this test's private tmux server."""
        for cmd in (["kill-session", "-t", self.name], ["kill-server"]):
            subprocess.run([TMUX, "-L", self.socket, *cmd], capture_output=True, timeout=30)
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)


def at_prompt(screen: str) -> bool:
    """True when the last non-blank line is the chat's "> " prompt."""
    lines = [line for line in screen.splitlines() if line.strip()]
    return bool(lines) and lines[-1].rstrip() == ">"


def answer_after(screen: str, question: str) -> str:
    """The reply text printed between the question's prompt line and its stats line."""
    tail = screen[screen.rindex(f"> {question}") + len(question) + 2:]
    return tail[:tail.index("tok/s")].rsplit("[", 1)[0].strip()


def test_chat_in_a_real_terminal(model_path, tmp_path):
    chat = shlex.join([str(SWIFT_GGUF), "chat", "-m", str(model_path), "-n", "400", "--temp", "0",
                       "--profile", str(tmp_path / "profile.json")])
    # bash reports the exit code on the screen (tmux is slow to reap a program that got SIGINT)
    pane = Pane(shlex.join(["bash", "-c", f'{chat}; echo "[exit status $?]"']))
    try:
        pane.wait(at_prompt, timeout=180, what="the first prompt")

        pane.type("What is the capital of France?")
        screen = pane.wait(lambda s: s.count("tok/s") == 1 and at_prompt(s), what="the first answer")
        assert answer_after(screen, "What is the capital of France?")

        pane.type("Write a long story about a dragon")
        pane.wait(lambda s: len(s.split("> Write a long story about a dragon", 1)[-1].strip()) > 40,
                  what="the story to start streaming")
        pane.ctrl_c()
        screen = pane.wait(lambda s: "[interrupted]" in s and at_prompt(s), what="[interrupted] and the prompt")
        assert screen.count("tok/s") == 2, "the story ended before Ctrl-C reached it"

        pane.type("What is 2 plus 2?")
        screen = pane.wait(lambda s: s.count("tok/s") == 3 and at_prompt(s), what="the answer after Ctrl-C")
        assert answer_after(screen, "What is 2 plus 2?")

        pane.type("/exit")
        screen = pane.wait(lambda s: "[exit status" in s, timeout=30, what="the program to end")
        assert "[exit status 0]" in screen
        pane.wait(lambda s: pane.dead(), timeout=30, what="the pane to close")
    finally:
        pane.kill()
