"""swift-gguf: faster local LLM inference by self-speculative decoding (SWIFT) on llama.cpp.

One click group; each command's docstring is its --help. Heavy imports (llama_cpp)
happen inside commands so that --help, doctor and models work quickly.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from swift_gguf import limits
from swift_gguf.limits import click_type

DEFAULT_MODEL = "smollm2-135m"


# -- shared options ------------------------------------------------------------------------

def model_options(f):
    """Options every model-loading command takes (llama.cpp / llama-cpp-python conventions)."""
    opts = [
        click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
                     help="A GGUF path, an alias (see `swift-gguf models`), or hf:REPO/FILE."),
        click.option("-c", "--ctx-size", default=2048, show_default=True, help="Context size in tokens.",
                     type=click_type(limits.CTX_SIZE, True,
                                     f"The context must hold at least {limits.CTX_SIZE.min:g} tokens.")),
        click.option("-ngl", "--n-gpu-layers", default=0, show_default=True,
                     help="Layers to offload to the GPU (-1 = all).",
                     type=click_type(limits.GPU_LAYERS, True, "Give a number of layers, or -1 for all.")),
        click.option("-t", "--threads", default=None,
                     help="CPU threads for generation (default: half the cores, as llama-cpp-python).",
                     type=click_type(limits.THREADS, True, "Use at least 1 thread (or leave the option out).")),
        click.option("-tb", "--threads-batch", default=None,
                     help="CPU threads for batches: prompts and verification (default: --threads if given, "
                          "else all cores).",
                     type=click_type(limits.THREADS, True, "Use at least 1 thread (or leave the option out).")),
        click.option("-fa", "--flash-attn", type=click.Choice(["on", "off"]), default="on", show_default=True,
                     help="Flash attention (llama.cpp's -fa)."),
        click.option("--rpc", default=None, metavar="HOST:PORT[,...]",
                     help="Offload layers to `swift-gguf rpc-server` workers (with -ngl; llama.cpp's --rpc)."),
        click.option("-ts", "--tensor-split", default=None, metavar="N0,N1,...",
                     help="Share of the offloaded layers per device, RPC workers first, e.g. 1,1."),
        click.option("--spec", type=click.Choice(["off", "swift", "auto"]), default="auto", show_default=True,
                     help="off: plain decoding; swift: always speculate; auto: only where it pays."),
        click.option("--spec-type", type=click.Choice(["auto", "layer-skip", "ngram", "lookup"]), default=None,
                     help="Drafters (as llama.cpp's --spec-type): auto (chosen per cycle), layer-skip, "
                          "ngram / lookup (prompt lookup). Default: layer-skip with --spec swift, auto with --spec auto."),
        click.option("--draft-max", default=None, help="Max drafted tokens per cycle (default: adaptive).",
                     type=click_type(limits.DRAFT_MAX, True, "Draft at least 1 token, or use --spec off.")),
        click.option("--draft-p-min", default=0.8, show_default=True,
                     help="Confidence threshold epsilon: stop drafting below this top-1 probability.",
                     type=click_type(limits.DRAFT_P_MIN, False, f"Epsilon must be in {limits.DRAFT_P_MIN}, e.g. 0.8.")),
        click.option("--profile", default="auto", show_default=True,
                     help="Skip profile: 'auto' (user cache), a JSON path, or 'none'."),
        click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's logs."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def sampling_options(f):
    opts = [
        click.option("--temp", type=float, default=0.0, show_default=True, help="Temperature (0 = greedy)."),
        click.option("--top-k", default=40, show_default=True,
                     type=click_type(limits.TOP_K, True, "Use 0 (off) or a positive number.")),
        click.option("--top-p", default=0.95, show_default=True, type=click_type(limits.PROBABILITY, False)),
        click.option("--min-p", default=0.05, show_default=True, type=click_type(limits.PROBABILITY, False)),
        click.option("--repeat-penalty", default=1.0, show_default=True,
                     type=click_type(limits.REPEAT_PENALTY, False, "It must be positive (1.0 = off).")),
        click.option("--seed", type=int, default=None, help="Random seed for sampling."),
        click.option("-n", "--max-tokens", default=256, show_default=True, help="Tokens to generate.",
                     type=click_type(limits.MAX_TOKENS, True, "Generate at least 1 token.")),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def user_errors(f):
    """Turn user-facing errors into click errors: a message and exit code 1, no traceback.

    swift-gguf's own errors carry the cause and the fix; an OSError here is about a path the
    user gave (--out, --plot, --profile, a busy --port) and is reported with that path.
    """
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from swift_gguf.errors import SwiftGGUFError
        try:
            return f(*args, **kwargs)
        except SwiftGGUFError as e:
            raise click.ClickException(str(e)) from None
        except BrokenPipeError:   # the reader went away (`swift-gguf generate | head -1`): stop quietly
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):   # no real stdout (e.g. under CliRunner)
                pass
            sys.exit(1)
        except OSError as e:
            what = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{what}{e.strerror or e}.\n"
                                       "Fix: check the path (its folder must exist and be writable), "
                                       "the permissions, or the port.") from None
    return wrapper


def check_output_paths(**paths) -> None:
    """Fail before a long run, not after it, when an output file cannot be written (click: exit code 2)."""
    for option, value in paths.items():
        if not value:
            continue
        folder = Path(value).expanduser().resolve().parent
        if not folder.is_dir():
            raise click.BadParameter(f"{value}: the folder {folder} does not exist; create it or pick another path",
                                     param_hint=option)
        if not os.access(folder, os.W_OK):
            raise click.BadParameter(f"{value}: the folder {folder} is not writable", param_hint=option)


def load_model(model, ctx_size, n_gpu_layers, threads, spec, draft_max, draft_p_min, profile, verbose,
               spec_type=None, rpc=None, tensor_split=None, threads_batch=None, flash_attn="on", **_):
    """Resolve the model spec and load it as a SwiftLlama (with clear errors)."""
    split_shares = parse_tensor_split(tensor_split)
    if rpc:
        from swift_gguf.errors import RpcError
        from swift_gguf.rpc import add_servers, parse_servers
        try:
            parse_servers(rpc)
        except RpcError as e:
            raise click.BadParameter(str(e), param_hint="--rpc") from None
    from swift_gguf.models import resolve_model
    path = resolve_model(model)
    if rpc:   # reach the workers before the model object exists (SwiftLlama would register them too)
        add_servers(rpc)
        if not n_gpu_layers:
            click.echo("warning: --rpc without -ngl: every layer stays on this machine; "
                       "pass -ngl N to put the last N layers on the workers", err=True)
    from swift_gguf import native
    from swift_gguf.api import SwiftLlama
    if n_gpu_layers and not rpc and not native.gpu_offload_supported():
        click.echo("warning: this llama.cpp build has no GPU backend; -ngl ignored, running on the CPU. "
                   "Build one with CMAKE_ARGS=\"-DGGML_CUDA=on\" python native/build.py", err=True)
        n_gpu_layers = 0
    kwargs = dict(n_ctx=ctx_size, n_gpu_layers=n_gpu_layers, spec=spec, spec_type=spec_type, draft_max=draft_max,
                  draft_p_min=draft_p_min, profile=None if profile == "none" else profile, verbose=verbose,
                  # llama.cpp's tools default to -fa auto: on where the backend supports it
                  flash_attn=flash_attn == "on")
    if threads:   # llama.cpp's -t: batches take the same count unless -tb says otherwise
        kwargs.update(n_threads=threads, n_threads_batch=threads)
    if threads_batch:
        kwargs.update(n_threads_batch=threads_batch)
    if rpc:
        kwargs.update(rpc_servers=rpc)
    if split_shares:
        kwargs.update(tensor_split=split_shares)
    return SwiftLlama(str(path), **kwargs)


def parse_tensor_split(value: str | None) -> list[float] | None:
    """'3,1' -> [3.0, 1.0] (llama.cpp's -ts; llama-cpp-python's tensor_split)."""
    if not value:
        return None
    try:
        shares = [float(x) for x in value.replace("/", ",").split(",")]
    except ValueError:
        shares = []
    if not shares or any(x < 0 for x in shares) or not sum(shares) > 0:
        raise click.BadParameter(f"{value}: give non-negative shares separated by commas, e.g. 1,1",
                                 param_hint="-ts/--tensor-split")
    return shares


def sampling_kwargs(temp, top_k, top_p, min_p, repeat_penalty, seed, **_):
    return dict(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed)


def split(kwargs: dict, names: tuple[str, ...]) -> dict:
    return {k: kwargs[k] for k in names if k in kwargs}


MODEL_KEYS = ("model", "ctx_size", "n_gpu_layers", "threads", "threads_batch", "flash_attn", "spec", "spec_type",
              "draft_max", "draft_p_min", "profile", "verbose", "rpc", "tensor_split")
SAMPLING_KEYS = ("temp", "top_k", "top_p", "min_p", "repeat_penalty", "seed")


# -- the group -----------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swift-gguf")
def main():
    """swift-gguf: faster local LLM inference by self-speculative decoding (SWIFT).

    The model drafts tokens for itself with some of its own sub-layers skipped, then
    verifies the draft in one batch: output identical to plain decoding.
    """


@main.command()
@model_options
@sampling_options
@click.option("--system", default=None, help="System prompt.")
@click.option("--color", is_flag=True,
              help="Mark tokens from accepted drafts: green from layer skipping, cyan from prompt lookup.")
@user_errors
def chat(**kw):
    """Chat with a model (streaming; /help for commands)."""
    from swift_gguf.chat import ChatSession, run_chat
    llm = load_model(**split(kw, MODEL_KEYS))
    session = ChatSession(llm, system=kw["system"], max_tokens=kw["max_tokens"],
                          sampling=sampling_kwargs(**split(kw, SAMPLING_KEYS)))
    run_chat(session, color=kw["color"])


@main.command()
@model_options
@sampling_options
@click.option("-p", "--prompt", default=None, help="The prompt (default: read stdin).")
@click.option("--chat-template/--no-chat-template", "use_template", default=False,
              help="Wrap the prompt as a user message in the model's chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, tokens, stats.")
@user_errors
def generate(**kw):
    """Generate a completion for one prompt."""
    prompt = kw["prompt"]
    if prompt is None:
        if sys.stdin.isatty():
            click.echo("reading the prompt from stdin (end it with Ctrl-D; or pass -p TEXT)", err=True)
        prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    if not prompt.strip():
        raise click.UsageError("the prompt is empty: pass -p TEXT or pipe text on stdin")
    llm = load_model(**split(kw, MODEL_KEYS))
    try:
        from swift_gguf.generation import complete
        result = complete(llm, prompt, max_tokens=kw["max_tokens"], use_template=kw["use_template"],
                          stream_to=None if kw["as_json"] else sys.stdout,
                          **sampling_kwargs(**split(kw, SAMPLING_KEYS)))
    finally:
        llm.close()
    if kw["as_json"]:
        click.echo(json.dumps(result))
    else:
        click.echo()
        click.echo(f"[{result['stats_line']}]", err=True)
        if result["stats"]["stop_reason"] == "context full":
            click.echo(f"note: stopped at the end of the context ({kw['ctx_size']} tokens); "
                       "raise -c/--ctx-size for longer output", err=True)


@main.command()
@model_options
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Calibration prompts (JSONL with a 'prompt' field); default: built-in prompts.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-probes", default=400, show_default=True,
              type=click_type(limits.Bound(min=1), True, "Allow at least 1 probe."))
@click.option("--tokens", default=96, show_default=True, help="Tokens generated per prompt.",
              type=click_type(limits.Bound(min=1), True, "Generate at least 1 token per prompt."))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the search.")
@user_errors
def optimize(**kw):
    """Search the skip set offline on calibration prompts and save the profile."""
    check_output_paths(**{"--plot": kw["plot"]})
    from swift_gguf.optimize import load_prompts, run_optimize
    prompts = load_prompts(kw["prompts_file"])
    kw["spec"] = "auto"
    llm = load_model(**split(kw, MODEL_KEYS))
    try:
        result = run_optimize(llm, prompts, seed=kw["seed"], max_probes=kw["max_probes"], tokens=kw["tokens"],
                              progress=not kw["as_json"], plot=kw["plot"])
    finally:
        llm.close()
    if kw["as_json"]:
        click.echo(json.dumps(result))


@main.command()
@model_options
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompt set: JSONL with a 'prompt' field, or Spec-Bench questions (question_id, "
                   "category, turns: every turn runs); default: the built-in set.")
@click.option("-n", "--max-tokens", default=128, show_default=True,
              type=click_type(limits.MAX_TOKENS, True, "Generate at least 1 token."))
@click.option("--pairs", default=3, show_default=True, help="Interleaved plain/swift pairs per prompt.",
              type=click_type(limits.Bound(min=1), True, "Run at least 1 pair."))
@click.option("--limit", default=None, help="Use only the first N prompts.",
              type=click_type(limits.Bound(min=1), True, "Use at least 1 prompt."))
@click.option("--peer/--no-peer", default=True, help="Also run llama-cpp-python's prompt-lookup drafter.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the results.")
@user_errors
def bench(**kw):
    """Plain decoding vs swift-gguf (and prompt lookup) on a prompt set, interleaved."""
    check_output_paths(**{"--out": kw["out"], "--plot": kw["plot"]})
    from swift_gguf.bench import run_bench
    from swift_gguf.optimize import load_prompts
    prompts = load_prompts(kw["prompts_file"], default="bench")[: kw["limit"] or None]
    llm = load_model(**split(kw, MODEL_KEYS))
    try:
        result = run_bench(llm, prompts, max_tokens=kw["max_tokens"], pairs=kw["pairs"], peer=kw["peer"],
                           mode=kw["spec"], progress=not kw["as_json"], plot=kw["plot"])
    finally:
        llm.close()
    if kw["out"]:
        Path(kw["out"]).write_text(json.dumps(result, indent=1))
    if kw["as_json"]:
        click.echo(json.dumps(result))


@main.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@user_errors
def serve(**kw):
    """OpenAI-compatible HTTP server (/v1/models, /v1/completions, /v1/chat/completions)."""
    from swift_gguf.server import serve as run_server
    llm = load_model(**split(kw, MODEL_KEYS))
    name = Path(kw["model"]).name if kw["model"].endswith(".gguf") else kw["model"]   # a path names its file
    run_server(llm, host=kw["host"], port=kw["port"], model_name=name)


@main.command("rpc-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="IPv4 address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=50052, show_default=True)
@click.option("-t", "--threads", type=click.IntRange(1, None), default=None,
              help="CPU threads (default: half the cores, as llama.cpp's rpc-server).")
@click.option("--allow-remote", is_flag=True,
              help="Allow an address other than loopback (the RPC protocol has no authentication).")
@user_errors
def rpc_server(host, port, threads, allow_remote):
    """Serve this machine's devices to `--rpc` clients (llama.cpp's RPC backend, this build)."""
    from swift_gguf.rpc import serve as run_worker
    run_worker(host, port, threads, allow_remote=allow_remote)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--check", is_flag=True,
              help="Also verify losslessness on this machine: verification batches vs one-token decoding, "
                   "bit for bit, with your settings (a few seconds).")
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, help="Model for --check.")
@click.option("-t", "--threads", default=None, help="--check: threads of one-token decodes (as for chat).",
              type=click_type(limits.THREADS, True, "Use at least 1 thread (or leave the option out)."))
@click.option("-tb", "--threads-batch", default=None, help="--check: threads of batches (default: --threads).",
              type=click_type(limits.THREADS, True, "Use at least 1 thread (or leave the option out)."))
@click.option("-fa", "--flash-attn", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="--check: flash attention (as for chat).")
@click.option("-ngl", "--n-gpu-layers", default=0, show_default=True, help="--check: layers on the GPU.",
              type=click_type(limits.GPU_LAYERS, True, "Give a number of layers, or -1 for all."))
@user_errors
def doctor(as_json, check, model, threads, threads_batch, flash_attn, n_gpu_layers):
    """Check the set-up: patched library, pin, backends, CPU features, caches.

    With --check, also measure whether speculative output is identical to plain decoding here:
    after contexts of 100 to 1100 tokens, the rows of verification batches (2, 9 and 17 tokens)
    are compared bit for bit with one-token decodes of the same tokens, with your settings and
    with flash attention and the thread counts switched (to name the setting that fails).
    Exit code 1 if anything differs.
    """
    from swift_gguf.doctor import collect, render, run_check
    report = collect()
    ok = bool(report.get("layer_skip"))
    if not as_json:
        click.echo(render(report))
    if check and ok:
        report["check"] = run_check(model, flash_attn == "on", threads, threads_batch, n_gpu_layers,
                                    echo=None if as_json else click.echo)
        ok = all(r["passed"] for r in report["check"])
    if as_json:
        click.echo(json.dumps(report, indent=1))
    if not ok:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """List the model aliases and the cached models."""
    from swift_gguf.models import MODELS, list_cached
    cached = list_cached()
    if as_json:
        click.echo(json.dumps({"aliases": sorted(MODELS), "cached": cached}, default=str))
        return
    width = max(len(name) for name in MODELS)
    click.echo("aliases:")
    for name, entry in sorted(MODELS.items()):
        click.echo(f"  {name:{width}s} {entry.description}")
    click.echo("cached:")
    for row in cached:
        click.echo(f"  {row.get('alias') or '-':{width}s} {row['path']}  ({row['size'] / 1e6:.0f} MB)")
    if not cached:
        click.echo("  (none)")


@main.command()
@click.argument("alias")
@click.option("--force", is_flag=True, help="Fetch again even if cached.")
@user_errors
def pull(alias, force):
    """Fetch a model by alias (or hf:REPO/FILE) into the cache."""
    from swift_gguf.models import pull as do_pull
    path = do_pull(alias, force=force)
    click.echo(str(path))


if __name__ == "__main__":
    main()
