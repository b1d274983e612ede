"""`SwiftLlama`: llama-cpp-python's `Llama`, decoding through SWIFT.

Everything `Llama` offers on top of its token generator (create_completion,
create_chat_completion with the GGUF chat template, stream=True, stop sequences,
max_tokens) runs through SWIFT, because `generate()` is the one method replaced.

    from swift_gguf import SwiftLlama
    llm = SwiftLlama("model.gguf", spec="auto")
    out = llm.create_completion("Once upon a time", max_tokens=64, temperature=0)
    print(out["choices"][0]["text"], llm.last_stats.summary())
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp
import numpy as np
import llama_cpp._internals as internals
from llama_cpp import llama_cpp as C

from . import native, profiles
from .engine import GenStats, SpecConfig, Stream, SwiftEngine, Token
from .errors import ContextFullError, ModelFileError
from .models import check_gguf, is_recurrent_arch
from .runtime import Runtime
from .sampling import Sampler, SamplingParams
from .search import SearchConfig
from .skipset import SkipSet

_ctx_lock = threading.Lock()
_NO_SCORES = np.zeros(0, dtype=np.float32)


@contextlib.contextmanager
def _scratch_sequence_contexts():
    """Make Llama create its context with a second sequence on a unified KV cache.

    The search's matchness probes run on a scratch sequence that shares the
    stream's KV cells (seq_cp), which llama.cpp allows only on a unified cache.
    Llama does not expose n_seq_max / kv_unified, so its context class is wrapped
    while the constructor runs.
    """
    original = internals.LlamaContext

    class _Context(original):
        def __init__(self, *, model, params, verbose=True):
            params.n_seq_max = max(params.n_seq_max, 2)
            params.kv_unified = True
            super().__init__(model=model, params=params, verbose=verbose)

    with _ctx_lock:
        internals.LlamaContext = _Context
        try:
            yield
        finally:
            internals.LlamaContext = original


class SwiftLlama(llama_cpp.Llama):
    """A `Llama` whose generation uses self-speculative decoding by layer skipping.

    Args (besides all of `Llama`'s):
        spec: "auto" (default: speculate only where it pays), "swift" (always), "off".
        draft_max: maximum drafted tokens per cycle (default: chosen from measured costs).
        draft_p_min: stop drafting after a token whose top-1 probability is below this.
        skip: a fixed SkipSet (disables the search).
        profile: "auto" (the user cache), a path, or None (neither load nor save).
        search: SearchConfig for the on-the-fly search.
    """

    def __init__(self, model_path: str, *, spec: str = "auto", draft_max: int | None = None,
                 draft_p_min: float = 0.8, skip: SkipSet | None = None,
                 profile: str | Path | None = "auto", search: SearchConfig | None = None,
                 verbose: bool = False, **kwargs):
        info = check_gguf(model_path)
        # rpc_servers="host:port,...": `swift-gguf rpc-server` workers (llama.cpp's --rpc; Llama has no such
        # argument); their devices must be registered before the model loads, then n_gpu_layers and
        # tensor_split (workers first, then local GPUs) decide which layers they hold
        rpc_servers = kwargs.pop("rpc_servers", None)
        if rpc_servers:
            from .rpc import add_servers
            add_servers(rpc_servers)
        config = SpecConfig(mode=spec, draft_max=draft_max, draft_p_min=draft_p_min, skip=skip,
                            search=search or SearchConfig())
        kwargs.setdefault("swa_full", True)   # sliding-window caches must allow rollback
        # Flash attention makes verification batch-invariant on the CPU: without it, llama.cpp's
        # attention gives a token's logits that differ (up to ~1.0 on SmolLM2) between a batch of
        # one and a batch of several, so a verified token could differ from plain decoding.
        kwargs.setdefault("flash_attn", True)
        with _scratch_sequence_contexts():
            try:
                super().__init__(model_path, verbose=verbose, **kwargs)
            except ValueError as e:
                raise ModelFileError(f"llama.cpp could not load {model_path}: {e}.\n"
                                     "Fix: check that the file is a complete GGUF model llama.cpp supports.") from e
        self.model_info = info
        self.rt = Runtime(self._ctx.ctx, self._model.model, n_batch=self.n_batch)
        # llama.cpp pads n_ctx up (to 256); honour the size asked for, which input_ids holds
        self._n_ctx = min(self._n_ctx, len(self.input_ids))
        self.rt.n_ctx = self._n_ctx
        supported, reason = self._layer_skip_support(info.architecture)
        self.backend = self._backend_name(kwargs.get("n_gpu_layers", 0))
        self._profile_path, prof = self._load_profile(profile, config.search)
        self.engine = SwiftEngine(self.rt, config, costs=prof.costs if prof else None,
                                  search_state=prof.state if prof else None,
                                  supported=supported, reason=reason)
        self.last_stats: GenStats | None = None
        self.last_tokens: list[Token] = []
        self._synced = 0

    # -- setup ------------------------------------------------------------------------

    def _layer_skip_support(self, arch: str) -> tuple[bool, str]:
        if is_recurrent_arch(arch) or C.llama_model_is_recurrent(self._model.model) \
                or C.llama_model_is_hybrid(self._model.model):
            return False, f"{arch} is a recurrent/hybrid model: its state cannot be rolled back"
        if not native.layer_skip_supported(self._model.model):
            return False, f"architecture {arch} does not support layer skipping yet"
        return True, ""

    @staticmethod
    def _backend_name(n_gpu_layers: int) -> str:
        devs = [d for d in native.backends() if not d.upper().startswith("CPU")]
        if n_gpu_layers and devs and C.llama_supports_gpu_offload():
            return f"{devs[0]}-ngl{n_gpu_layers}"
        return "cpu"

    def _load_profile(self, profile, search: SearchConfig):
        if profile is None:
            return None, None
        model_id = profiles.model_identity(self.model_path)
        path = profiles.profile_path(model_id, self.backend) if profile == "auto" else Path(profile)
        self._model_id = model_id
        return path, profiles.load(path, model_id, self.backend, self.rt.n_layer, search)

    def save_profile(self, found_by: str = "on-the-fly search") -> Path | None:
        """Write what the search learned (atomically); returns the path, or None if profiles are off."""
        if self._profile_path is None:
            return None
        prof = profiles.Profile(self._model_id, self.backend, self.model_info.name or Path(self.model_path).name,
                                self.engine.search.state, self.engine.costs, found_by)
        profiles.save(self._profile_path, prof)
        return self._profile_path

    # -- generation ---------------------------------------------------------------------

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor=None, stopping_criteria=None, grammar=None):
        """Llama.generate's contract (yields token ids), decoded through SWIFT."""
        unsupported = [name for cond, name in ((typical_p != 1.0, "typical_p"), (mirostat_mode, "mirostat"),
                                               (logits_processor, "logits_processor"), (grammar, "grammar"))
                       if cond]
        if unsupported:
            self.last_stats = GenStats(mode=self.engine.config.mode, mode_used="plain",
                                       reason=f"{', '.join(unsupported)} needs plain llama.cpp sampling")
            warnings.warn(f"{', '.join(unsupported)} not supported by swift-gguf; decoding with plain llama.cpp",
                          stacklevel=2)
            self._input_ids_sync_for_plain()
            yield from super().generate(tokens, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                        temp=temp, repeat_penalty=repeat_penalty, reset=reset,
                                        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                                        tfs_z=tfs_z, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau,
                                        mirostat_eta=mirostat_eta, penalize_nl=penalize_nl,
                                        logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                                        grammar=grammar)
            return
        params = self.sampling_params(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                      repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                      presence_penalty=presence_penalty)
        history = list(tokens)
        with contextlib.closing(self.generate_tokens(tokens, params)) as run:
            for tok in run:
                history.append(tok.id)
                # llama-cpp-python's chat handlers pass a stop-on-token criterion; swift-gguf has no
                # per-position scores to give it (an empty array), the token history is complete
                if stopping_criteria is not None and stopping_criteria(np.asarray(history), _NO_SCORES):
                    return
                yield tok.id

    def sampling_params(self, *, temp: float = 0.0, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                        repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
                        presence_penalty: float = 0.0, seed: int | None = None) -> SamplingParams:
        if temp < 0:   # llama-cpp-python: plain softmax sampling
            temp, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
        if seed is None and self._seed != C.LLAMA_DEFAULT_SEED:
            seed = self._seed
        return SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                              repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                              presence_penalty=presence_penalty, penalty_last_n=self.last_n_tokens_size,
                              seed=seed)

    def generate_tokens(self, prompt: str | bytes | Sequence[int], params: SamplingParams | None = None,
                        max_tokens: int | None = None) -> Iterator[Token]:
        """Yield generated tokens, each with whether it came from an accepted draft.

        Statistics of the generation are in `last_stats` once the iterator ends or is closed.
        """
        stats = GenStats(mode=self.engine.config.mode)
        self.last_stats, self.last_tokens = stats, []
        tokens = self._prompt_tokens(prompt)
        params = params or SamplingParams()
        limit = self._n_ctx - len(tokens) if max_tokens is None or max_tokens <= 0 else max_tokens
        stats.n_prompt = len(tokens)
        sampler = Sampler(params)
        stream = self._eval_prompt(tokens, sampler, stats)
        run = self.engine.run(stream, sampler, limit, stats)
        try:
            for tok in run:
                self.last_tokens.append(tok)
                self._sync(stream)
                yield tok
        finally:
            run.close()
            self._sync(stream)
            if self.engine.search.state.probes:
                self.save_profile()

    def _prompt_tokens(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            prompt = prompt.encode("utf-8")
        tokens = self.tokenize(prompt, add_bos=True, special=True) if isinstance(prompt, bytes) else list(prompt)
        if not tokens:
            raise ValueError("the prompt is empty: give at least one token")
        if len(tokens) >= self._n_ctx:
            raise ContextFullError(f"the prompt has {len(tokens)} tokens but the context holds {self._n_ctx}.\n"
                                   "Fix: shorten the prompt or raise -c/--ctx-size.")
        return tokens

    def _eval_prompt(self, tokens: list[int], sampler: Sampler, stats: GenStats) -> Stream:
        """Evaluate the prompt with the full model, reusing the cached common prefix."""
        keep = 0
        limit = min(self.n_tokens, len(tokens) - 1)   # at least one token is decoded for fresh logits
        while keep < limit and self.input_ids[keep] == tokens[keep]:
            keep += 1
        self.rt.remove(-1, keep, -1)   # also anything a failed or interrupted call left behind
        self.n_tokens = self._synced = keep
        stats.t_prompt = self.rt.decode(tokens[keep:], keep)
        self.input_ids[keep:len(tokens)] = tokens[keep:]
        self.n_tokens = self._synced = len(tokens)
        first = sampler.sample(self.rt.logits(-1), tokens)
        stats.t_total += stats.t_prompt
        return Stream(list(tokens) + [first], len(tokens))

    def _sync(self, stream: Stream) -> None:
        """Keep Llama's view (input_ids, n_tokens) equal to what the KV cache holds."""
        n = stream.n_past
        if n > self._synced:
            self.input_ids[self._synced:n] = stream.tokens[self._synced:n]
        self.n_tokens = self._synced = n

    def _input_ids_sync_for_plain(self) -> None:
        self.rt.remove(-1, self.n_tokens, -1)

    def reset(self) -> None:
        """Forget the cached prompt: Llama's view and the KV cache (all sequences)."""
        super().reset()
        self._synced = 0
        if getattr(self, "rt", None) is not None:
            self.rt.remove(-1, 0, -1)

    def close(self) -> None:
        rt = getattr(self, "rt", None)
        if rt is not None:
            rt.close()
        super().close()
