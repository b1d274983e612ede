"""The OpenAI-compatible server: real HTTP on 127.0.0.1, the real SmolLM2-135M, bounded loops.

The server runs in a background thread on a free port; clients use http.client and raw
sockets only. Generations are short (a few tokens) so the file runs in about 30 s
on two cores.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from swift_gguf.server import make_server, request_settings
from swift_gguf.skipset import SkipSet

MODEL_NAME = "smollm2-135m"
TIMEOUT = 120   # seconds for any one HTTP exchange
COMPLETION_PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"   # greedy decoding keeps counting: no early end of text

LOG: list[str] = []   # the server's log lines (list.append is thread-safe)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm(model_path):
    from swift_gguf.api import SwiftLlama
    # A fixed skip set (no search) makes "swift" really draft from the first request, so greedy
    # equality is checked through speculation; it also spares the search's time on two cores.
    model = SwiftLlama(str(model_path), n_ctx=1024, profile=None, verbose=False)
    try:
        with model.speculation(skip=SkipSet.from_lists(model.rt.n_layer, attention=range(8, 22))):
            yield model
    finally:
        model.close()


@pytest.fixture(scope="module")
def server(llm):
    srv = make_server(llm, host="127.0.0.1", port=0, model_name=MODEL_NAME, log=LOG.append)
    thread = threading.Thread(target=srv.serve_forever, name="swift-server", daemon=True)
    thread.start()
    yield srv
    srv.stop(timeout=30)
    thread.join(timeout=30)
    assert not thread.is_alive()


def request(server, method: str, path: str, body=None, raw: bytes | None = None):
    """One HTTP exchange: (status, headers, parsed JSON body or raw text)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8")
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = text
        return resp.status, dict(resp.getheaders()), payload
    finally:
        conn.close()


def post(server, path: str, body):
    return request(server, "POST", path, body)


def stream(server, path: str, body) -> tuple[int, dict, list]:
    """POST with stream=true; returns (status, headers, events) with events parsed from SSE."""
    status, headers, text = request(server, "POST", path, {**body, "stream": True})
    assert isinstance(text, str), text
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return status, headers, events


def completion_text(resp: dict) -> str:
    return resp["choices"][0]["text"]


def chat_text(resp: dict) -> str:
    return resp["choices"][0]["message"]["content"]


def direct(server, call):
    """Call the model directly (speculation off), alone on it like a request."""
    with server.gate.hold(), request_settings(server.llm, "off"):
        return call(server.llm)


def wait_idle(server, seconds: float = 60.0) -> None:
    """Wait until no request holds the model (a response arrives just before the lock is released)."""
    deadline = time.monotonic() + seconds
    while server.gate.busy:
        assert time.monotonic() < deadline, "the server did not release the model"
        time.sleep(0.02)


def assert_stats(resp: dict, mode: str) -> None:
    t = resp["timings"]
    for key in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second",
                "draft_n", "draft_n_accepted"):
        assert key in t, key
    assert resp["swift"]["mode"] == mode
    assert t["draft_n"] == resp["swift"]["drafted"] and t["draft_n_accepted"] == resp["swift"]["accepted"]
    per_drafter = resp["swift"]["drafters"].values()   # the totals, split by drafter
    assert sum(d["drafted"] for d in per_drafter) == t["draft_n"]
    assert sum(d["accepted"] for d in per_drafter) == t["draft_n_accepted"]
    assert t["predicted_n"] >= 1 and t["prompt_n"] >= 1


# -- simple endpoints ----------------------------------------------------------------------------

def test_health_and_models(server):
    assert request(server, "GET", "/health")[:3:2] == (200, {"status": "ok"})
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=TIMEOUT)
    try:   # HTTP/1.1 keep-alive: several requests on one connection
        for _ in range(3):
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
    finally:
        conn.close()
    status, _, body = request(server, "GET", "/v1/models")
    assert status == 200
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL_NAME]
    assert body["data"][0]["object"] == "model"
    # One log line per request, written just after the response: poll (bounded) for it.
    deadline = time.monotonic() + 10
    while not any(re.fullmatch(r"GET /v1/models 200 \d+ms", line) for line in LOG):
        assert time.monotonic() < deadline, LOG[-5:]
        time.sleep(0.02)


# -- greedy output through the server and through speculation ------------------------------------
#
# Patch 0003 makes CPU verification batches bit-identical to one-token decoding, so "swift" and
# "off" must give the same text on any prompt; several prompts, each against a direct call.

@pytest.mark.parametrize("prompt", [COUNTING_PROMPT, COMPLETION_PROMPT, "Once upon a time",
                                    "Q: Name three colours.\nA:"])
def test_completion_equals_direct_call_and_speculation_keeps_it(server, prompt):
    # each call from an empty cache: a repeated prompt would otherwise reuse the cached prefix and
    # evaluate its last token alone, which (as in llama_cpp.Llama) need not give the logits that
    # token got as a row of the prompt batch
    def fresh_completion(m):
        m.reset()
        return m.create_completion(prompt, max_tokens=16, temperature=0)

    want = completion_text(direct(server, fresh_completion))
    req = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 16, "temperature": 0}
    for mode in ("off", "swift"):
        direct(server, lambda m: m.reset())
        status, _, resp = post(server, "/v1/completions", {**req, "speculative": mode})
        assert status == 200, resp
        assert completion_text(resp) == want, mode
        assert resp["model"] == MODEL_NAME and resp["object"] == "text_completion"
        assert_stats(resp, mode)
    wait_idle(server)
    assert server.llm.engine.config.mode == "auto"   # the per-request mode was restored


def test_speculation_really_drafts_through_the_server(server):
    status, _, resp = post(server, "/v1/completions", {"prompt": COUNTING_PROMPT, "max_tokens": 16,
                                                       "temperature": 0, "speculative": "swift"})
    assert status == 200 and resp["timings"]["draft_n"] > 0


# The GGUF-template chat handler passes a stop-on-EOS stopping_criteria: SwiftLlama honours it, so
# chat completions decode through SWIFT (the statistics prove it).
def test_chat_equals_direct_call_and_uses_the_gguf_template(server):
    llm = server.llm
    assert llm.chat_format == "chat_template.default"   # SmolLM2's own template, from the GGUF
    chat = lambda m: chat_text(m.create_chat_completion(CHAT, max_tokens=12, temperature=0))  # noqa: E731
    want = {"off": direct(server, chat)}
    with server.gate.hold(), request_settings(llm, "swift"):
        want["swift"] = chat(llm)
    assert want["off"].strip()
    for spec, mode in ((False, "off"), ("swift", "swift")):
        status, _, resp = post(server, "/v1/chat/completions",
                               {"messages": CHAT, "max_tokens": 12, "temperature": 0, "speculative": spec})
        assert status == 200, resp
        assert chat_text(resp) == want[mode], mode
        assert resp["object"] == "chat.completion"
        assert_stats(resp, mode)   # statistics exist: the chat went through SWIFT, not plain llama.cpp
    assert resp["timings"]["draft_n"] > 0


@pytest.mark.parametrize("path,body,text_of", [
    ("/v1/chat/completions", {"messages": CHAT}, lambda c: c["choices"][0]["delta"].get("content", "")),
    ("/v1/completions", {"prompt": COMPLETION_PROMPT}, lambda c: c["choices"][0]["text"]),
])
def test_stream_equals_non_streamed(server, path, body, text_of):
    body = {**body, "max_tokens": 12, "temperature": 0, "speculative": "swift"}
    status, _, whole = post(server, path, body)
    assert status == 200
    status, headers, events = stream(server, path, body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(text_of(c) for c in chunks) == (chat_text(whole) if "chat" in path else completion_text(whole))
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert_stats(final, "swift")
    # Final statistics: the engine's generator had finished (its finally ran) before this chunk.
    assert final["timings"]["predicted_n"] == whole["timings"]["predicted_n"]
    assert final["timings"]["predicted_ms"] > 0 and final["swift"]["mode_used"] == whole["swift"]["mode_used"]
    assert all("timings" not in c for c in chunks[:-1])


# -- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,raw,status,needle", [
    ("POST", "/v1/completions", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
    ("POST", "/v1/completions", b'{"max_tokens": 4}', 400, "prompt"),
    ("POST", "/v1/chat/completions", b'{"max_tokens": 4}', 400, "messages"),
    ("POST", "/v1/completions", b'{"prompt": "a", "temperature": "hot"}', 400, "temperature"),
    ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": 2.5}', 400, "max_tokens"),
    ("POST", "/v1/completions", b'{"prompt": "a", "speculative": "maybe"}', 400, "speculative"),
    ("POST", "/v1/completions", b'{"prompt": "a", "model": 7}', 400, "model"),
    ("POST", "/v1/completions", b'{"prompt": "a", "n": 2}', 400, "'n' must be 1"),
    ("POST", "/v1/completions", b'{"prompt": "a", "best_of": 3}', 400, "'best_of'"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a"}], "tools": [{}]}', 400,
     "'tools'"),
    ("POST", "/v1/completions", b'{"prompt": "a", "response_format": {"type": "json_object"}}', 400,
     "'response_format'"),
    ("POST", "/v1/completions", b'{"prompt": "a", "logit_bias": {"x": 1}}', 400, "logit_bias"),
    ("POST", "/v1/completions", b'{"prompt": "a", "grammar": "root ::= ("}', 400, "grammar"),
    ("POST", "/v1/nowhere", b"{}", 404, "unknown path"),
    ("GET", "/v1/completions", None, 405, "POST"),
    ("POST", "/health", b"{}", 405, "GET"),
])
def test_client_errors(server, method, path, raw, status, needle):
    got, headers, body = request(server, method, path, raw=raw)
    assert got == status, body
    assert needle in body["error"]["message"]
    assert body["error"]["type"]
    if status == 400:
        assert body["error"]["type"] == "invalid_request_error"
    if status == 405:
        assert headers["Allow"] in ("GET", "POST")


def test_any_model_name_and_harmless_fields_are_accepted(server):
    for name in ("model", "gpt-4", None):
        status, _, resp = post(server, "/v1/completions", {"model": name, "prompt": COMPLETION_PROMPT,
                                                           "max_tokens": 2, "temperature": 0, "user": "x",
                                                           "n": 1, "logit_bias": None})
        assert status == 200 and resp["usage"]["completion_tokens"] >= 1
        assert resp["model"] == (name or MODEL_NAME)   # the name the client sent, as llama.cpp's server


def test_fields_that_change_the_output_are_applied(server):
    """logprobs, logit_bias, grammar and response_format reach the model: each equals the direct call."""
    llm = server.llm
    ban = llm.tokenize(b" Paris", add_bos=False)[0]
    cases = [
        ("/v1/completions", {"prompt": COMPLETION_PROMPT, "logprobs": 2},
         lambda m, kw: m.create_completion(COMPLETION_PROMPT, **kw)),
        ("/v1/completions", {"prompt": COMPLETION_PROMPT, "logit_bias": {str(ban): -100}},
         lambda m, kw: m.create_completion(COMPLETION_PROMPT, **kw)),
        ("/v1/completions", {"prompt": COMPLETION_PROMPT, "grammar": 'root ::= " " [A-Z] [a-z]+'},
         lambda m, kw: m.create_completion(COMPLETION_PROMPT, **kw)),
        ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "top_logprobs": 2},
         lambda m, kw: m.create_chat_completion(CHAT, **kw)),
        ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_object"}},
         lambda m, kw: m.create_chat_completion(CHAT, **kw)),
    ]
    from swift_gguf.server import sampling_kwargs, CHAT_FIELDS, COMPLETION_FIELDS
    for path, fields, call in cases:
        body = {**fields, "max_tokens": 8, "temperature": 0, "speculative": "swift"}
        status, _, resp = post(server, path, body)
        assert status == 200, resp
        kw = sampling_kwargs(body, CHAT_FIELDS if "chat" in path else COMPLETION_FIELDS)
        with server.gate.hold(), request_settings(llm, "off", "logprobs" in fields):
            want = call(llm, kw)
        assert resp["choices"][0] == json.loads(json.dumps(want["choices"][0], default=float)), path
    status, _, resp = post(server, "/v1/completions", {"prompt": COMPLETION_PROMPT, "max_tokens": 4,
                                                       "temperature": 0, "logit_bias": {str(ban): -100}})
    assert "Paris" not in completion_text(resp)


@pytest.mark.parametrize("streamed", [False, True])
def test_prompt_longer_than_the_context_is_a_400(server, streamed):
    body = {"prompt": "word " * 1100, "max_tokens": 4, "stream": streamed}
    status, _, resp = post(server, "/v1/completions", body)
    assert status == 400, resp
    assert "context" in resp["error"]["message"]
    assert request(server, "GET", "/health")[0] == 200


def test_a_server_failure_is_a_500_and_the_server_keeps_serving(server, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure")
    monkeypatch.setattr(server.llm, "create_completion", boom)
    status, _, resp = post(server, "/v1/completions", {"prompt": "a"})
    assert status == 500 and "simulated failure" in resp["error"]["message"]
    monkeypatch.undo()
    status, _, resp = post(server, "/v1/completions", {"prompt": COMPLETION_PROMPT, "max_tokens": 2})
    assert status == 200
    wait_idle(server)
    assert server.llm.engine.config.mode == "auto"


def test_a_full_queue_answers_503_with_retry_after(server, monkeypatch):
    monkeypatch.setattr(server.gate, "max_waiting", 0)
    with server.gate.hold():   # the model is busy, and nobody may wait
        status, headers, resp = post(server, "/v1/completions", {"prompt": "a", "max_tokens": 2})
    assert status == 503 and headers["Retry-After"].isdigit()
    assert "busy" in resp["error"]["message"]


# -- disconnects and concurrency ---------------------------------------------------------------------

def test_client_disconnecting_mid_stream_stops_the_generation(server):
    max_tokens = 300
    body = json.dumps({"prompt": COUNTING_PROMPT, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "speculative": "swift"}).encode()
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"data: ") < 3:   # a few chunks, then hang up
            part = sock.recv(4096)
            assert part, "the server closed the stream early"
            received += part
        assert received.startswith(b"HTTP/1.1 200")
        with contextlib.suppress(OSError):   # close at once with a reset, like a killed client
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_idle(server)
    stats = server.llm.last_stats
    assert stats.tokens < max_tokens // 2   # closed early, not run to max_tokens
    # The server still answers, and correctly (the KV cache was left consistent).
    want = completion_text(direct(server, lambda m: m.create_completion(COUNTING_PROMPT, max_tokens=6,
                                                                        temperature=0)))
    status, _, resp = post(server, "/v1/completions", {"prompt": COUNTING_PROMPT, "max_tokens": 6,
                                                       "temperature": 0, "speculative": "swift"})
    assert status == 200 and completion_text(resp) == want


def test_concurrent_clients_queue_and_get_the_single_client_answers(server):
    prompts = ["Once upon a time", "The best way to learn", COUNTING_PROMPT, "Water boils at"]
    modes = ["off", "swift", "auto"]
    cases = [(p, m) for p in prompts for m in modes]   # 12 cases; 50 requests cycle through them
    single = {}
    for p, m in cases:
        status, _, resp = post(server, "/v1/completions", {"prompt": p, "max_tokens": 8, "temperature": 0,
                                                           "speculative": m})
        assert status == 200
        single[p, m] = completion_text(resp)

    def client(i: int):
        p, m = cases[i % len(cases)]
        return (p, m), post(server, "/v1/completions", {"prompt": p, "max_tokens": 8, "temperature": 0,
                                                        "speculative": m})

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(client, range(50), timeout=TIMEOUT * 2))
    assert len(results) == 50
    for case, (status, headers, resp) in results:   # 8 clients never fill the 64-place queue: no 503
        assert status == 200, resp
        assert completion_text(resp) == single[case], case
    wait_idle(server)
    assert request(server, "GET", "/health")[2] == {"status": "ok"}
    assert server.llm.engine.config.mode == "auto"
