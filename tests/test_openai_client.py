"""The real `openai` client package against `swift-gguf serve` (a real process) on 127.0.0.1.

Covers what a client of an OpenAI-compatible server does first: list models, chat and
completions (streamed and not), any model name, finish_reason "stop" at the end of generation,
usage, and the README's server example verbatim (only the port differs).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp
import pytest

openai = pytest.importorskip("openai")   # a test dependency ([test] extra); skipped only outside it

ROOT = Path(__file__).resolve().parent.parent
CHAT_HI = [{"role": "user", "content": "Say hi."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(model_path):
    """`swift-gguf serve` as a user starts it, on a free port; stopped whatever happens."""
    port = _free_port()
    cli = Path(sys.executable).with_name("swift-gguf")
    cmd = [str(cli), "serve", "-m", str(model_path), "--port", str(port), "-c", "1024", "-t", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start listening in 120 s"
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{served}/v1", api_key="none", timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def reference(model_path):
    """Plain llama-cpp-python on the same model with the server's settings (flash attention on)."""
    ref = llama_cpp.Llama(str(model_path), n_ctx=1024, n_threads=2, n_threads_batch=2, flash_attn=True,
                          verbose=False)
    yield ref
    ref.close()


def test_models_list(client, model_path):
    ids = [m.id for m in client.models.list().data]
    assert ids == [model_path.name]


@pytest.mark.parametrize("name", ["model", "gpt-4o-mini"])
def test_chat_ends_naturally_with_the_reference_answer(client, reference, name):
    want = reference.create_chat_completion(CHAT_HI, max_tokens=48, temperature=0)
    r = client.chat.completions.create(model=name, messages=CHAT_HI, max_tokens=48, temperature=0)
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == want["usage"]["completion_tokens"] < 48
    assert r.usage.prompt_tokens == want["usage"]["prompt_tokens"]


def test_chat_stream(client, reference):
    want = reference.create_chat_completion(CHAT_HI, max_tokens=48, temperature=0)
    chunks = list(client.chat.completions.create(model="model", messages=CHAT_HI, max_tokens=48, temperature=0,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["choices"][0]["message"]["content"]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_completions(client, reference, stream):
    want = reference.create_completion("The capital of France is", max_tokens=12, temperature=0)
    r = client.completions.create(model="model", prompt="The capital of France is", max_tokens=12, temperature=0,
                                  stream=stream)
    if stream:
        chunks = list(r)
        assert "".join(c.choices[0].text for c in chunks) == want["choices"][0]["text"]
        assert chunks[-1].choices[0].finish_reason == want["choices"][0]["finish_reason"]
    else:
        assert r.choices[0].text == want["choices"][0]["text"]
        assert r.choices[0].finish_reason == want["choices"][0]["finish_reason"] == "length"
        assert r.usage.completion_tokens == 12


def test_readme_server_example_verbatim(served):
    """The README's Python server example, run as written (the port is the one difference)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Server"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'base_url="http://127.0.0.1:8080/v1"' in code
    code = code.replace("127.0.0.1:8080", f"127.0.0.1:{served}")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)   # noqa: S102 - the documented example, on purpose
    r = scope["r"]
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
