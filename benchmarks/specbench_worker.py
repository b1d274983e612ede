#!/usr/bin/env python3
"""One Spec-Bench arm as a long-lived process: loads the model once, answers JSON lines.

Started by benchmarks/specbench.py (`python -m benchmarks.specbench_worker CONFIG` from the
repository root), never by hand. It runs under either interpreter:
the repository's .venv (swift-gguf arms, patched llama.cpp) or the unpatched peer venv
(benchmarks/peers.py: plain llama-cpp-python, its prompt-lookup drafter, and the adapter that
drives llama.cpp's llama-server). So it imports llama_cpp, the standard library and the parts of
swift_gguf that work on any llama_cpp (its chat template, run from this checkout: the worker runs
from the repository root), plus SwiftLlama for swift arms. Prompts: swift_gguf.template's
conversation_renderer, the same tokens for every arm.

Protocol: the first argument is a JSON object {"kind", "model", "n_ctx", "threads", "format",
"kwargs", ...}; the worker prints {"ready": ...} once loaded, then for each request line
    {"op": "run", "turns": [...], "max_tokens": N}  -> {"turns": [{...}, ...]}
    {"op": "costs", "contexts": [...], "sizes": [...]} (swift only) -> {"costs": {...}}
    {"op": "quit"}
answers one line. Anything else llama.cpp prints goes to stderr: the protocol uses a private
copy of stdout, and fd 1 is pointed at stderr.

Timing, the same for every in-process arm: generation time runs from the moment the first
generated token is available (it comes from the prompt's logits, so prompt evaluation is before
it) to the moment the last one is; the tokens it covers are all generated tokens but the first.
For llama-server its own timings are used, which measure exactly that (predicted_ms runs from the
first sampled token to the last; predicted_n counts the first one too).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from swift_gguf.template import conversation_renderer


def answer_text(llm, ids: list[int]) -> str:
    return llm.detokenize([t for t in ids if not is_eog(llm, t)]).decode("utf-8", errors="replace")


def is_eog(llm, tok: int) -> bool:
    from llama_cpp import llama_cpp as C
    return bool(C.llama_vocab_is_eog(C.llama_model_get_vocab(llm._model.model), tok))


# -- in-process arms (llama-cpp-python's Llama, or SwiftLlama) ---------------------------------

class CountingLookup:
    """llama-cpp-python's LlamaPromptLookupDecoding, counting drafts per cycle.

    Llama.generate calls the draft model once per verification cycle, after yielding that
    cycle's tokens; the tokens yielded between two calls are the accepted drafts plus one.
    """

    def __init__(self, num_pred_tokens: int, max_ngram_size: int):
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        self.inner = LlamaPromptLookupDecoding(max_ngram_size=max_ngram_size, num_pred_tokens=num_pred_tokens)
        self.cycles: list[list[int]] = []   # [drafted, tokens yielded after it]

    def __call__(self, input_ids, **kwargs):
        draft = self.inner(input_ids, **kwargs)
        self.cycles.append([len(draft), 0])
        return draft

    def yielded(self) -> None:
        if self.cycles:
            self.cycles[-1][1] += 1

    def take(self) -> dict:
        done = [(d, y) for d, y in self.cycles if d > 0 and y > 0]
        self.cycles = []
        return {"cycles": len(done), "drafted": sum(d for d, _ in done),
                "accepted": sum(min(y - 1, d) for d, y in done)}


class InProcess:
    def __init__(self, cfg: dict):
        self.fmt = cfg["format"]
        self.lookup = None
        common = dict(n_ctx=cfg["n_ctx"], n_threads=cfg["threads"], n_threads_batch=cfg["threads"],
                      n_batch=cfg.get("n_batch", 512), flash_attn=cfg.get("flash_attn", True), verbose=False)
        if cfg["kind"] == "swift":
            from swift_gguf import SwiftLlama
            kwargs = {"profile": None, **cfg.get("kwargs", {})}
            self.llm = SwiftLlama(cfg["model"], **common, **kwargs)
        else:
            import llama_cpp
            kwargs = dict(cfg.get("kwargs", {}))
            if cfg["kind"] == "lookup":
                self.lookup = CountingLookup(int(kwargs.pop("num_pred_tokens", 10)),
                                             int(kwargs.pop("max_ngram_size", 2)))
                kwargs["draft_model"] = self.lookup
                # Llama keeps logits of every position with a draft model, but sizes its scores
                # buffer by the logits_all argument (n_batch rows): past n_batch tokens it fails
                kwargs.setdefault("logits_all", True)
            self.llm = llama_cpp.Llama(cfg["model"], **common, **kwargs)
        self.swift = cfg["kind"] == "swift"
        self.render = conversation_renderer(self.llm, self.fmt)

    def info(self) -> dict:
        import llama_cpp
        return {"llama_cpp_python": llama_cpp.__version__, "n_ctx": self.llm.n_ctx(),
                "chat_template": bool(self.llm.metadata.get("tokenizer.chat_template"))}

    def generate(self, tokens: list[int], max_tokens: int) -> dict:
        llm = self.llm
        ids: list[int] = []
        t0 = time.perf_counter()
        t_first = t_last = t0
        gen = llm.generate(tokens, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0)
        try:
            for tok in gen:
                t_last = time.perf_counter()
                if not ids:
                    t_first = t_last
                ids.append(int(tok))
                if self.lookup is not None:
                    self.lookup.yielded()
                if len(ids) >= max_tokens or is_eog(llm, tok):
                    break
        finally:
            gen.close()
        out = {"tokens": ids, "gen_tokens": max(len(ids) - 1, 0), "gen_s": t_last - t_first,
               "prompt_s": t_first - t0}
        if self.swift:
            st = llm.last_stats.to_dict()
            out["spec"] = {k: st.get(k) for k in ("cycles", "drafted", "accepted", "plain_steps", "mode_used",
                                                  "t_search", "search_probes", "step_kernels")}
            for key in ("drafters", "by_drafter"):   # per-drafter stats, where the engine has them
                if key in st:
                    out["spec"][key] = st[key]
        elif self.lookup is not None:
            out["spec"] = self.lookup.take()
        return out

    def reset(self) -> None:
        self.llm.reset()

    def costs(self, contexts: list[int], sizes: list[int], reps: int) -> dict:
        if not self.swift:
            raise ValueError("verification costs are measured by a swift-gguf arm")
        return measure_verify_costs(self.llm, contexts, sizes, reps)


PLAIN_RUN = 8   # consecutive one-token decodes per plain-step sample of measure_verify_costs


def filler_tokens(llm, n: int) -> list[int]:
    """n tokens of ordinary text: the context cost measurements are made after."""
    text = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 8, add_bos=False)
    return (text * (n // len(text) + 1))[:n]


def measure_verify_costs(llm, contexts: list[int], sizes: list[int], reps: int = 3) -> dict:
    """v(n) at each context length: time of one n-token batch (logits for all n) on a scratch
    sequence after `ctx` cached tokens, over the time of a one-token step there as plain decoding takes
    it: the mean of PLAIN_RUN consecutive one-token decodes (timing.plain_run).

    costmodel.calibrate's measurement (swift_gguf.timing.batch_seconds) at chosen context lengths:
    the KV cache is cleared first (a unified cache shares its cells between sequences) and the
    context is a filler written into the scratch sequence. The sizes are interleaved, each round in
    the other order, over 2 * reps rounds after one untimed round that may build the graphs, and the
    median of each size counts: measuring one size after the other, best of 3, gave tables whose
    v(n) went up and down by 10-30% between neighbouring sizes (this VM's slow phases hit some
    sizes and not others), and a replay that decides on such a table exploits its accidents.
    The plain step is a run of decodes, as plain decoding takes it, on the kernels it takes
    (runtime.StepKernels: the choice is made first where it is open). Up to the 2026-12-05g runs it was
    one one-token verification: right after a 64-token batch that took 5-12% longer than a step of
    plain generation on SmolLM2 (every v(n) as much too low, the oracle bound optimistic: an in-process
    trace of auto found its verifications as the table predicted, its plain steps ~10% faster), and
    through the verification kernels it is 13-20% faster than a plain step on Gemma 3 and Qwen 0.5B
    (benchmarks/verify_costs.py's plain paths).
    """
    from swift_gguf.timing import batch_seconds, choose_step_kernels
    rt = llm.rt
    out = {}
    order = sorted({1, *sizes})
    # the plain step on the kernels plain decoding takes (a fresh model has not chosen yet; a benchmark's
    # `off` worker has, after its answers)
    llm.reset()
    choose_step_kernels(rt, filler_tokens(llm, 1)[0], 0)
    for ctx in contexts:
        llm.reset()
        need = ctx + max(sizes) + 1
        if need > rt.n_ctx:
            continue
        filler = filler_tokens(llm, ctx)
        batch = filler[:max(order)] if max(order) <= ctx else (filler * 2)[:max(order)]
        samples = batch_seconds(rt, batch, ctx, order, 2 * reps, fill=filler, alternate=True, plain=PLAIN_RUN)
        times = {n: statistics.median(v) for n, v in samples.items()}
        out[str(ctx)] = {"t1": times[1], "v": {str(n): times[n] / times[1] for n in order if n > 1},
                         "step_kernels": rt.kernels.label()}
    llm.reset()
    return out


# -- llama.cpp's llama-server (unpatched peer) -------------------------------------------------

class Server:
    """llama-server on 127.0.0.1, fed with token ids rendered here (so templates cannot differ)."""

    def __init__(self, cfg: dict):
        import llama_cpp
        self.fmt = cfg["format"]
        # the vocabulary alone, to render and tokenize exactly as the in-process arms do
        self.llm = llama_cpp.Llama(cfg["model"], vocab_only=True, verbose=False)
        self.render = conversation_renderer(self.llm, self.fmt)
        self.log = open(cfg["log"], "w")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [cfg["server"], "-m", cfg["model"], "-c", str(cfg["n_ctx"]), "-t", str(cfg["threads"]),
                "-tb", str(cfg["threads"]), "-fa", "on", "-np", "1", "--host", "127.0.0.1",
                "--port", str(port), "--metrics", "--spec-type", cfg["spec_type"], *cfg.get("server_args", [])]
        import subprocess
        self.cmd = args
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready(cfg.get("start_timeout", 120))
        self._metrics = self._read_metrics()

    def _wait_ready(self, timeout: float) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {self.proc.returncode} while starting "
                                   f"(command: {' '.join(self.cmd)}); see {self.log.name}")
            try:
                if _http("GET", self.url + "/health", timeout=2).get("status") == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"llama-server did not answer /health within {timeout}s; see {self.log.name}")

    def _read_metrics(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        vals = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                vals[name.split(":", 1)[-1]] = float(value)
        return vals

    def info(self) -> dict:
        return {"command": self.cmd, "chat_template": bool(self.llm.metadata.get("tokenizer.chat_template"))}

    def generate(self, tokens: list[int], max_tokens: int) -> dict:
        body = {"prompt": tokens, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
                "cache_prompt": True, "return_tokens": True, "stream": False}
        t0 = time.perf_counter()
        res = _http("POST", self.url + "/completion", body, timeout=600)
        wall = time.perf_counter() - t0
        tm = res["timings"]
        ids = [int(t) for t in res.get("tokens", [])]
        before, self._metrics = self._metrics, self._read_metrics()
        steps = self._metrics.get("spec_decode_num_drafts_total", 0) - before.get("spec_decode_num_drafts_total", 0)
        return {"tokens": ids, "gen_tokens": max(int(tm["predicted_n"]) - 1, 0),
                "gen_s": tm["predicted_ms"] / 1000.0, "prompt_s": tm["prompt_ms"] / 1000.0, "wall_s": wall,
                "server_predicted_n": int(tm["predicted_n"]),
                "spec": {"drafted": int(tm.get("draft_n", 0)), "accepted": int(tm.get("draft_n_accepted", 0)),
                         "cycles": int(steps)}}

    def reset(self) -> None:
        pass   # the server reuses the common prefix itself; prompt time is not counted

    def costs(self, *a) -> dict:
        raise ValueError("verification costs are measured by a swift-gguf arm")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> dict:
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


# -- the loop ------------------------------------------------------------------------------------

def run_conversation(arm, turns: list[str], max_tokens: int, return_prompt: bool) -> list[dict]:
    """Answer each turn, appending this arm's own answer before the next turn (as Spec-Bench does)."""
    arm.reset()
    messages: list[dict] = []
    out = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        tokens = arm.render(messages)
        r = arm.generate(tokens, max_tokens)
        r["prompt_tokens"] = len(tokens)
        r["answer"] = [t for t in r["tokens"] if not is_eog(arm.llm, t)]   # what identity compares
        if return_prompt:
            r["prompt"] = tokens
        messages.append({"role": "assistant", "content": answer_text(arm.llm, r["tokens"])})
        out.append(r)
    return out


def main() -> int:
    cfg = json.loads(sys.argv[1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # llama.cpp's and anyone's prints must not corrupt the protocol
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        arm = Server(cfg) if cfg["kind"] == "server" else InProcess(cfg)
    except Exception as e:   # report, do not hang the driver
        send({"error": f"{type(e).__name__}: {e}"})
        return 1
    send({"ready": True, "info": arm.info(), "pid": os.getpid()})
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                if req["op"] == "quit":
                    break
                if req["op"] == "run":
                    send({"turns": run_conversation(arm, req["turns"], req["max_tokens"],
                                                    req.get("return_prompt", False))})
                elif req["op"] == "costs":
                    send({"costs": arm.costs(req["contexts"], req["sizes"], req.get("reps", 3))})
                else:
                    send({"error": f"unknown op {req['op']!r}"})
            except Exception as e:
                import traceback
                traceback.print_exc()
                send({"error": f"{type(e).__name__}: {e}"})
    finally:
        if isinstance(arm, Server):
            arm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
