"""An OpenAI-compatible HTTP server for a SwiftLlama, on the standard library only.

    GET  /health                {"status": "ok"}
    GET  /v1/models             the one served model, in OpenAI's list format
    POST /v1/completions        llm.create_completion(...)
    POST /v1/chat/completions   llm.create_chat_completion(...) (the GGUF chat template)

The /v1 prefix is optional. Requests take OpenAI's fields (prompt/messages,
max_tokens, temperature, top_p, stop, seed, stream, presence_penalty,
frequency_penalty, logit_bias, logprobs, top_logprobs, echo, response_format, n=1),
llama.cpp's top_k, min_p, typical_p, repeat_penalty, mirostat_* and grammar (GBNF),
and `"speculative": "off" | "swift" | "auto"` (or true/false = auto/off) to choose the
speculation mode for that request. A field the server does not implement is answered
with HTTP 400 naming it, never ignored. Any model name is accepted (one model is
served; /v1/models gives its name). Responses carry llama.cpp-server-style
`"timings"` and a `"swift"` object with the generation's statistics; a stream
carries them in its final chunk (the one with a finish_reason).

One model has one llama.cpp context, which is not thread-safe: requests run one at
a time, the others queue (at most `max_waiting`, beyond that 503 + Retry-After).

    from swift_gguf.server import serve
    serve(llm, host="127.0.0.1", port=8080, model_name="smollm2-135m")
"""
from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from .engine import MODES, GenStats
from .errors import ContextFullError

MAX_WAITING = 64             # queued requests beyond the running one before answering 503
MAX_BODY = 16 * 1024 * 1024  # bytes; a request body larger than this is refused (413)
RETRY_AFTER_S = 1


# -- errors ------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error answered to the client as OpenAI's {"error": {...}} with an HTTP status."""

    def __init__(self, status: int, message: str, err_type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.err_type = status, message, err_type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.err_type, "code": self.status}}


# -- request validation ------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_stop(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))


def _is_logit_bias(v: Any) -> bool:
    return isinstance(v, dict) and all(str(k).lstrip("-").isdigit() and _is_number(x) for k, x in v.items())


def _is_response_format(v: Any) -> bool:
    return isinstance(v, dict) and v.get("type") in ("text", "json_object", "json_schema")


# Fields passed to create_completion / create_chat_completion: name -> (check, what it must be).
SAMPLING_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_tokens": (_is_int, "an integer"),
    "temperature": (_is_number, "a number"),
    "top_p": (_is_number, "a number"),
    "top_k": (_is_int, "an integer"),
    "min_p": (_is_number, "a number"),
    "typical_p": (_is_number, "a number"),
    "stop": (_is_stop, "a string or a list of strings"),
    "seed": (_is_int, "an integer"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "presence_penalty": (_is_number, "a number"),
    "frequency_penalty": (_is_number, "a number"),
    "repeat_penalty": (_is_number, "a number"),
    "mirostat_mode": (_is_int, "an integer (0, 1 or 2)"),
    "mirostat_tau": (_is_number, "a number"),
    "mirostat_eta": (_is_number, "a number"),
    "logit_bias": (_is_logit_bias, "an object mapping token ids to numbers"),
}
# Per endpoint, the fields that only it takes.
COMPLETION_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (lambda v: _is_int(v) and 0 <= v <= 20, "an integer from 0 to 20"),
    "echo": (lambda v: isinstance(v, bool), "a boolean"),
}
CHAT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (lambda v: _is_int(v) and 0 <= v <= 20, "an integer from 0 to 20"),
    "response_format": (_is_response_format, 'an object with "type": "text", "json_object" or "json_schema"'),
}
# Fields read elsewhere, or that cannot change the output.
OTHER_FIELDS = {"model", "prompt", "messages", "speculative", "grammar", "n", "max_completion_tokens",
                "user", "stream_options", "store", "metadata", "service_tier"}


def sampling_kwargs(body: dict, endpoint_fields: dict | None = None) -> dict:
    """The request's generation fields, type-checked; null counts as absent (client defaults).

    A field this server does not implement is refused (400, naming it) rather than ignored:
    ignoring it would silently answer another question than the one asked.
    """
    endpoint_fields = endpoint_fields or {}
    fields = {**SAMPLING_FIELDS, **endpoint_fields}
    unknown = sorted(k for k, v in body.items() if v is not None and k not in fields and k not in OTHER_FIELDS)
    if unknown:
        raise ApiError(400, f"unsupported field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                            "this server would ignore it and answer differently than asked; drop it")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "'n' must be 1: this server generates one choice per request")
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}   # OpenAI's newer name
    kwargs = {}
    for name, (check, what) in fields.items():
        value = body.get(name)
        if value is None:
            continue
        if not check(value):
            raise ApiError(400, f"'{name}' must be {what}, got {json.dumps(value)[:80]}")
        kwargs[name] = value
    if "logit_bias" in kwargs:
        kwargs["logit_bias"] = {int(k): float(v) for k, v in kwargs["logit_bias"].items()}
    if "mirostat_mode" in kwargs and kwargs["mirostat_mode"] not in (0, 1, 2):
        raise ApiError(400, "'mirostat_mode' must be 0, 1 or 2")
    grammar = body.get("grammar")
    if grammar is not None:
        kwargs["grammar"] = parse_grammar(grammar)
    return kwargs


def parse_grammar(text: Any):
    """A GBNF grammar (llama.cpp server's "grammar" field) as a LlamaGrammar; 400 if it does not parse."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'grammar' must be a GBNF grammar string")
    from llama_cpp import LlamaGrammar
    return LlamaGrammar.from_string(text, verbose=False)   # parsed when sampling starts: a bad one is a 400 there


def wants_logprobs(kwargs: dict) -> bool:
    return kwargs.get("logprobs") not in (None, False)


def speculation_mode(body: dict) -> str | None:
    """The request's "speculative" field as an engine mode, or None to keep the server's mode."""
    value = body.get("speculative")
    if value is None:
        return None
    if isinstance(value, bool):
        return "auto" if value else "off"
    if value in MODES:
        return value
    raise ApiError(400, f"'speculative' must be one of {', '.join(map(repr, MODES))} or a boolean, "
                        f"got {json.dumps(value)[:80]}")


def completion_prompt(body: dict) -> str | list[int]:
    """The prompt of /v1/completions: a string, a list of token ids, or a list of one string."""
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "missing required field 'prompt'")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(map(_is_int, prompt))):
        return prompt
    raise ApiError(400, "'prompt' must be a string or a non-empty list of token ids (one prompt per request)")


def chat_messages(body: dict) -> list[dict]:
    """The messages of /v1/chat/completions: a non-empty list of objects, each with a string role."""
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "missing required field 'messages'")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role'")
        if not isinstance(m.get("content"), (str, list, type(None))):
            raise ApiError(400, f"messages[{i}].content must be a string")
    return messages


# -- statistics --------------------------------------------------------------------------------

def timings(stats: GenStats) -> dict:
    """llama.cpp server's "timings" object, from one generation's statistics."""
    gen_s = max(stats.t_total - stats.t_prompt, 0.0)
    return {
        "prompt_n": stats.n_prompt,
        "prompt_ms": round(stats.t_prompt * 1e3, 3),
        "prompt_per_second": round(stats.n_prompt / stats.t_prompt, 3) if stats.t_prompt > 0 else 0.0,
        "predicted_n": stats.tokens,
        "predicted_ms": round(gen_s * 1e3, 3),
        "predicted_per_token_ms": round(gen_s * 1e3 / stats.tokens, 3) if stats.tokens else 0.0,
        "predicted_per_second": round(stats.tokens_per_second, 3),
        "draft_n": stats.drafted,
        "draft_n_accepted": stats.accepted,
    }


def add_stats(response: dict, stats: GenStats | None) -> dict:
    """Put "timings" and "swift" into a response or final chunk (when the generation left statistics)."""
    if stats is not None:
        response["timings"] = timings(stats)
        response["swift"] = stats.to_dict()
    return response


# -- the model gate ----------------------------------------------------------------------------

class ModelGate:
    """Runs requests on the model one at a time, with at most `max_waiting` queued behind the running one."""

    def __init__(self, max_waiting: int = MAX_WAITING):
        self.max_waiting = max_waiting
        self._model = threading.Lock()   # held while a request uses the llama.cpp context
        self._count = threading.Lock()   # guards _pending
        self._pending = 0                # requests running or waiting

    @property
    def busy(self) -> bool:
        return self._pending > 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the model for one request; ApiError 503 when the queue is full."""
        with self._count:
            if self._pending > self.max_waiting:
                raise ApiError(503, f"the server is busy ({self._pending - 1} requests queued); retry later",
                               "server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
            self._pending += 1
        try:
            with self._model:
                yield
        finally:
            with self._count:
                self._pending -= 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request holds the model (True), or give up after timeout seconds (False)."""
        if not self._model.acquire(timeout=timeout):
            return False
        self._model.release()
        return True


# -- per-request model settings ----------------------------------------------------------------

@contextlib.contextmanager
def request_settings(llm, mode: str | None, logprobs: bool = False) -> Iterator[None]:
    """Apply one request's speculation mode (and logits for every token, for logprobs); restore afterwards."""
    llm.last_stats = None   # so a generation that leaves no statistics does not report the previous one's
    with llm.speculation(mode), (llm.logits_for_every_token() if logprobs else contextlib.nullcontext()):
        yield


# -- the HTTP handler --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """One HTTP connection. The server (SwiftServer) holds the model, its name and the gate."""

    server: "SwiftServer"
    protocol_version = "HTTP/1.1"   # keep-alive for plain responses; streams close the connection
    timeout = 300                   # seconds an idle or stalled connection may hold a thread

    # Routes: path -> (method, handler method name); the /v1 prefix is optional.
    ROUTES = {
        "/health": ("GET", "get_health"),
        "/v1/models": ("GET", "get_models"),
        "/v1/completions": ("POST", "post_completions"),
        "/v1/chat/completions": ("POST", "post_chat_completions"),
    }
    ROUTES.update({path[3:]: route for path, route in list(ROUTES.items()) if path.startswith("/v1/")})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_OPTIONS(self):
        self._dispatch("OPTIONS")

    # -- dispatch, responses, logging -------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        """Route one request, answer errors as OpenAI error objects, and log one line."""
        start = time.perf_counter()
        self._status, self._headers_sent, self._streaming = 0, False, False
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            route = self.ROUTES.get(path)
            if route is None:
                raise ApiError(404, f"unknown path {path}; this server answers "
                                    f"{', '.join(p for p in self.ROUTES if p.startswith(('/v1', '/health')))}",
                               "not_found_error")
            allowed, name = route
            if method != allowed:
                raise ApiError(405, f"{path} takes {allowed}, not {method}", headers={"Allow": allowed})
            getattr(self, name)()
        except ApiError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):   # the client went away: nothing to answer
            self._status = self._status or 499
            self.close_connection = True
        except Exception as e:   # a server-side failure: answer 500, keep serving
            traceback.print_exc(file=sys.stderr)
            self._send_error(ApiError(500, f"{type(e).__name__}: {e}", "server_error"))
        finally:
            self.server.log(f"{method} {path} {self._status} {(time.perf_counter() - start) * 1e3:.0f}ms")

    def _send_error(self, e: ApiError) -> None:
        if self._headers_sent:   # too late for a status: report in-band if streaming, and hang up
            if self._streaming:
                with contextlib.suppress(OSError):
                    self._write_event(e.body())
            self.close_connection = True
            return
        # Close after errors: the request body may be unread, which would garble a kept-alive connection.
        self._send_json(e.status, e.body(), {**e.headers, "Connection": "close"})
        self.close_connection = True

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, default=_json_value).encode("utf-8")
        self._start_response(status, {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                      **(headers or {})})
        if self.command != "HEAD":
            self.wfile.write(data)

    def _start_response(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self._status, self._headers_sent = status, True

    def _write_event(self, payload: dict | str) -> None:
        """One server-sent event; raises BrokenPipeError/ConnectionResetError when the client is gone."""
        data = payload if isinstance(payload, str) else json.dumps(payload, default=_json_value)
        self.wfile.write(f"data: {data}\n\n".encode("utf-8"))

    def log_request(self, code="-", size="-") -> None:
        pass   # _dispatch logs one line per request, with its duration

    def log_message(self, format: str, *args) -> None:
        self.server.log(f"{self.address_string()} {format % args}")   # http.server's own errors (bad request line)

    # -- endpoints ----------------------------------------------------------------------------

    def get_health(self) -> None:
        self._send_json(200, {"status": "ok"})

    def get_models(self) -> None:
        self._send_json(200, {"object": "list", "data": [{
            "id": self.server.model_name, "object": "model", "created": self.server.created,
            "owned_by": "swift-gguf"}]})

    def post_completions(self) -> None:
        body = self._read_json()
        prompt = completion_prompt(body)
        self._generate(body, COMPLETION_FIELDS, lambda llm, kw: llm.create_completion(prompt=prompt, **kw))

    def post_chat_completions(self) -> None:
        body = self._read_json()
        messages = chat_messages(body)
        self._generate(body, CHAT_FIELDS, lambda llm, kw: llm.create_chat_completion(messages=messages, **kw))

    # -- generation -----------------------------------------------------------------------------

    def _read_json(self) -> dict:
        """The request body as a JSON object (400 for anything else)."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if length > MAX_BODY:
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of {MAX_BODY}")
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        self.server.check_model(body.get("model"))
        return body

    def _generate(self, body: dict, fields: dict, call: Callable[[Any, dict], Any]) -> None:
        """Validate the request's fields, then run `call(llm, kwargs)` alone on the model and answer."""
        kwargs = sampling_kwargs(body, fields)
        mode = speculation_mode(body)
        # responses name the model as the request did (as llama.cpp's server does), else the served name
        kwargs["model"] = body.get("model") or self.server.model_name
        llm = self.server.llm
        with self.server.gate.hold(), request_settings(llm, mode, wants_logprobs(kwargs)):
            try:
                result = call(llm, kwargs)
                first = next(result, None) if kwargs.get("stream") else None   # a stream evaluates its prompt here
            except (ValueError, ContextFullError) as e:   # e.g. a prompt longer than the context
                raise ApiError(400, str(e)) from None
            if kwargs.get("stream"):
                self._stream(result, first)
            else:
                self._send_json(200, add_stats(result, llm.last_stats))

    def _stream(self, chunks: Iterator[dict], first: dict | None) -> None:
        """Send chunks as server-sent events, the statistics in the final one, then [DONE].

        The generator is closed in every case (client gone, server stopping, error) so that
        the engine's finally blocks run and the KV cache and Llama's state stay consistent.
        """
        self.close_connection = True   # the body ends when the connection does: no length needed
        self._streaming = True
        try:
            self._start_response(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "Connection": "close"})
            chunk = first
            while chunk is not None:
                if chunk["choices"] and chunk["choices"][0].get("finish_reason") is not None:
                    # llama-cpp-python has left its token loop by now: the statistics are final.
                    add_stats(chunk, self.server.llm.last_stats)
                self._write_event(chunk)
                if self.server.stopping.is_set():
                    return
                chunk = next(chunks, None)
            self._write_event("[DONE]")
        finally:
            chunks.close()


# -- the server --------------------------------------------------------------------------------

class SwiftServer(ThreadingHTTPServer):
    """A threading HTTP server for one SwiftLlama; `url` is its base URL (port 0 picks a free port)."""

    daemon_threads = True   # connection threads never keep the process alive

    def __init__(self, llm, host: str = "127.0.0.1", port: int = 8080, model_name: str | None = None,
                 max_waiting: int = MAX_WAITING, log: Callable[[str], None] | None = None):
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.llm = llm
        self.model_name = model_name or Path(llm.model_path).name
        self.gate = ModelGate(max_waiting)
        self.stopping = threading.Event()   # set at shutdown: streams end after their current chunk
        self.created = int(time.time())
        self._log = log or _log_to_stderr

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def check_model(self, model: Any) -> None:
        """Any model name is this model (llama.cpp's server answers whatever name a client sends
        when it serves one model: clients must send some name); only its type is checked."""
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "'model' must be a string")

    def log(self, line: str) -> None:
        """One log line (by default to stderr; tests pass their own `log`)."""
        self._log(line)

    def handle_error(self, request, client_address) -> None:
        """An exception escaped a connection: one line for a vanished client, a traceback otherwise."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout)):
            self.log(f"{client_address[0]} connection ended: {type(exc).__name__}")
        else:
            super().handle_error(request, client_address)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, end streams, wait (bounded) for the running generation, close the socket.

        Call from another thread than serve_forever's (or after serve_forever returned).
        """
        self.stopping.set()
        self.shutdown()
        self.gate.wait_idle(timeout)
        self.server_close()


def _json_value(obj: Any) -> Any:
    """JSON for what json cannot encode: numpy scalars (logprobs are np.float32) as numbers, else text."""
    item = getattr(obj, "item", None)
    return item() if callable(item) else str(obj)


def _log_to_stderr(line: str) -> None:
    sys.stderr.write(f"swift-gguf server: {line}\n")
    sys.stderr.flush()


def make_server(llm, host: str = "127.0.0.1", port: int = 8080, model_name: str | None = None,
                **kwargs) -> SwiftServer:
    """A server for llm, bound but not yet serving: run `serve_forever()` (e.g. in a thread), then `stop()`."""
    return SwiftServer(llm, host, port, model_name, **kwargs)


def serve(llm, host: str = "127.0.0.1", port: int = 8080, model_name: str | None = None) -> None:
    """Serve llm until Ctrl-C, then shut down cleanly (no traceback)."""
    server = make_server(llm, host, port, model_name)
    print(f"swift-gguf: serving {server.model_name} at {server.url}/v1 "
          f"(speculation {llm.engine.config.mode}); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nswift-gguf: shutting down", flush=True)
    finally:
        # serve_forever has returned in this thread, so shutdown() is not needed (it would wait forever).
        server.stopping.set()
        try:
            if not server.gate.wait_idle(30.0):
                print("swift-gguf: a generation is still running; exiting anyway", flush=True)
        except KeyboardInterrupt:
            pass
        server.server_close()
