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
import random
import sys
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp
import numpy as np
from llama_cpp import llama_cpp as C

from . import native, profiles
from .engine import GenStats, SpecConfig, Stream, SwiftEngine, Token
from .errors import ContextFullError, ModelFileError
from .models import check_gguf, is_recurrent_arch
from .runtime import Runtime
from .sampling import ChainSampler, GreedySampler, SamplingParams, TokenSampler
from .search import SearchConfig
from .skipset import SkipSet

_warned_inexact: set[str] = set()


def _warn_inexact_once(backend: str) -> None:
    if backend in _warned_inexact:
        return
    _warned_inexact.add(backend)
    if backend.upper().startswith("RPC"):
        # the client cannot see what a worker runs: `swift-gguf rpc-server` starts its CPU backend
        # with batch invariance on (GGML_SWIFT_INVARIANT_BATCH), llama.cpp's own rpc-server does not
        print(f"swift-gguf: layers are on RPC workers ({backend}); speculative output equals plain decoding "
              "when every worker is `swift-gguf rpc-server` on a CPU (its verification batches are bit-exact). "
              "A worker started with llama.cpp's own rpc-server, or one on a GPU, computes batches in another "
              "order: output may differ from plain decoding where two tokens are nearly tied.", file=sys.stderr)
        return
    print(f"swift-gguf: layers are offloaded ({backend}); on this backend llama.cpp's batched verification is "
          "not bit-identical to one-token decoding, so a speculative output may differ from plain decoding "
          "where two tokens are nearly tied (the CPU build guarantees identical output). Use --spec off / "
          "spec=\"off\" where identical output matters.", file=sys.stderr)


class SwiftLlama(llama_cpp.Llama):
    """A `Llama` whose generation uses self-speculative decoding by layer skipping.

    Every method of `Llama` keeps its contract (its own tests pass against this class); the
    tokens come from SWIFT's draft/verify loop, chosen by llama.cpp's own sampler chain, so the
    output is `Llama`'s output (see README: "When is the output identical").

    Args (besides all of `Llama`'s):
        spec: "auto" (default: speculate only where it pays), "swift" (always), "off".
        spec_type: the drafters: "auto" (chosen per cycle), "layer-skip", "ngram" (prompt lookup);
            default: layer-skip for spec="swift", auto for spec="auto" (llama.cpp's --spec-type).
        draft_max: maximum drafted tokens per cycle (default: chosen from measured costs).
        draft_p_min: stop drafting after a token whose top-1 probability is below this.
        skip: a fixed SkipSet (disables the search).
        profile: "auto" (the user cache), a path, or None (neither load nor save).
        search: SearchConfig for the on-the-fly search.
    """

    def __init__(self, model_path: str, *, spec: str = "auto", spec_type: str | None = None,
                 draft_max: int | None = None, draft_p_min: float = 0.8, skip: SkipSet | None = None,
                 profile: str | Path | None = "auto", search: SearchConfig | None = None,
                 verbose: bool = False, **kwargs):
        # rpc_servers="host:port,...": `swift-gguf rpc-server` workers (llama.cpp's --rpc; Llama has no such
        # argument); their devices must be registered before the model loads, then n_gpu_layers and
        # tensor_split (workers first, then local GPUs) decide which layers they hold
        rpc_servers = kwargs.pop("rpc_servers", None)
        if rpc_servers:
            from .rpc import add_servers
            add_servers(rpc_servers)
        config = SpecConfig(mode=spec, spec_type=spec_type, draft_max=draft_max, draft_p_min=draft_p_min, skip=skip,
                            search=search or SearchConfig())
        info = check_gguf(model_path)
        vocab_only = bool(kwargs.get("vocab_only"))
        # Sliding-window caches must allow rollback. Every other setting keeps Llama's default
        # (flash_attn too: patch 0003 makes verification batch-invariant with and without it), so
        # the same arguments give the same output as llama_cpp.Llama.
        kwargs.setdefault("swa_full", True)
        try:
            super().__init__(model_path, verbose=verbose, **kwargs)
        except ValueError as e:
            raise ModelFileError(f"llama.cpp could not load {model_path}: {e}.\n"
                                 "Fix: check that the file is a complete GGUF model llama.cpp supports.") from e
        self.model_info = info
        self.last_stats: GenStats | None = None
        self.last_tokens: list[Token] = []
        self._synced = 0
        self._profile_saved_at: tuple | None = None
        self.backend = self._backend_name(kwargs.get("n_gpu_layers", 0))
        self.exact = native.verification_is_exact(self.backend)
        if not self.exact:
            _warn_inexact_once(self.backend)
        if vocab_only:   # a tokenizer only: nothing to decode with
            self.rt, self.engine = None, None
            return
        self.rt = Runtime(self._ctx.ctx, self._model.model, n_batch=self.n_batch, cpu=self.backend == "cpu")
        # llama.cpp pads n_ctx up (to 256); honour the size asked for, which input_ids holds
        self._n_ctx = min(self._n_ctx, len(self.input_ids))
        self.rt.n_ctx = self._n_ctx
        supported, reason = self._layer_skip_support(info.architecture)
        rollback = not self._cannot_roll_back(info.architecture)
        self._profile_path, prof = self._load_profile(profile, config.search)
        self.engine = SwiftEngine(self.rt, config, costs=prof.costs if prof else None,
                                  search_state=prof.state if prof else None,
                                  supported=supported, reason=reason, rollback=rollback)
        self._profile_saved_at = self._search_mark()

    # -- setup ------------------------------------------------------------------------

    @property
    def context_params(self):
        return self._swift_context_params

    @context_params.setter
    def context_params(self, params) -> None:
        """Llama.__init__ assigns its llama_context_params here before it creates the context.

        The search's matchness probes run on a scratch sequence that shares the stream's KV
        cells (seq_cp), which llama.cpp allows only on a unified cache with two sequences;
        Llama's constructor has no argument for either, so they are set on its own params
        object (per instance: no global state, safe with other Llama objects being built).
        """
        params.n_seq_max = max(params.n_seq_max, 2)
        params.kv_unified = True
        self._swift_context_params = params

    def _cannot_roll_back(self, arch: str) -> bool:
        return bool(is_recurrent_arch(arch) or C.llama_model_is_recurrent(self._model.model)
                    or C.llama_model_is_hybrid(self._model.model))

    def _layer_skip_support(self, arch: str) -> tuple[bool, str]:
        if self._cannot_roll_back(arch):
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

    def _search_mark(self) -> tuple:
        """What a saved profile holds of the search; a profile is written only when this changed."""
        st = self.engine.search.state
        return (st.probes, st.done, st.best.to_json() if st.best is not None else None,
                self.engine.costs.known)

    def save_profile(self, found_by: str = "on-the-fly search") -> Path | None:
        """Write what the search learned (atomically); returns the path, or None if profiles are off."""
        if self._profile_path is None:
            return None
        prof = profiles.Profile(self._model_id, self.backend, self.model_info.name or Path(self.model_path).name,
                                self.engine.search.state, self.engine.costs, found_by)
        profiles.save(self._profile_path, prof)
        self._profile_saved_at = self._search_mark()
        return self._profile_path

    def _save_profile_if_changed(self) -> None:
        """After a generation: keep what the search learned; a failed write is a warning, not an error."""
        if self._profile_path is None or self._search_mark() == self._profile_saved_at:
            return
        try:
            self.save_profile()
        except OSError as e:
            self._profile_saved_at = self._search_mark()   # warn once per change, not per generation
            warnings.warn(f"swift-gguf could not save the skip profile to {self._profile_path}: {e}. "
                          "The search result is kept for this session only. Fix: make the cache "
                          "directory writable, or set SWIFT_GGUF_HOME.", RuntimeWarning, stacklevel=3)

    @contextlib.contextmanager
    def speculation(self, mode: str | None = None, **settings) -> Iterator["SwiftLlama"]:
        """Use another speculation mode (and SpecConfig fields, e.g. skip=...) inside the block.

            with llm.speculation("off"):
                plain = llm.create_completion(prompt, max_tokens=64, temperature=0)
        """
        engine = self._require_engine()
        config = engine.config
        changes = dict(settings, **({"mode": mode} if mode is not None else {}))
        saved = {name: getattr(config, name) for name in changes}
        for name, value in changes.items():
            if not hasattr(config, name):
                raise TypeError(f"unknown speculation setting {name!r}")
            setattr(config, name, value)
        engine.controller.refresh()   # (its kept verdicts rest on the settings)
        try:
            config.__post_init__()   # validate the new values
            yield self
        finally:
            for name, value in saved.items():
                setattr(config, name, value)
            engine.controller.refresh()

    @contextlib.contextmanager
    def logits_for_every_token(self) -> Iterator["SwiftLlama"]:
        """Keep every token's logits inside the block, as Llama(logits_all=True) does: what logprobs need.

        The array is allocated lazily (np.zeros maps untouched pages to nothing), so only the rows of
        the request's tokens cost memory. Cached positions have no stored logits, so the prompt is
        evaluated afresh.
        """
        if self._logits_all:
            yield self
            return
        saved = self.scores
        self._logits_all = True
        self.scores = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)
        self.n_tokens = self._synced = 0
        try:
            yield self
        finally:
            self._logits_all = False
            self.scores = saved

    def _require_engine(self) -> SwiftEngine:
        if self.engine is None:
            raise RuntimeError("this SwiftLlama was loaded with vocab_only=True: it can tokenize but not generate.\n"
                               "Fix: load the model without vocab_only.")
        return self.engine

    # -- sampling --------------------------------------------------------------------------

    def make_sampler(self, params: SamplingParams, *, grammar=None, logits_processor=None) -> TokenSampler:
        """The sampler `Llama.generate` would use for these settings (llama.cpp's chain), seeded as Llama seeds.

        Greedy decoding without penalties, grammar or logits processors is an argmax: no chain.
        """
        if params.greedy and not params.penalized and grammar is None and logits_processor is None:
            return GreedySampler(self.rt.logits)
        if grammar is not None:
            self._check_grammar(grammar)
        if params.seed is not None:
            self.set_seed(params.seed)
        chain = self._init_sampler(**params.llama_kwargs(), logits_processor=logits_processor, grammar=grammar)
        return ChainSampler(chain, self._ctx.ctx, self._show_context if logits_processor is not None else None)

    def _check_grammar(self, grammar) -> None:
        """Refuse a grammar llama.cpp cannot parse (Llama would add a null sampler and crash on use)."""
        smpl = C.llama_sampler_init_grammar(self._model.vocab, grammar._grammar.encode("utf-8"),
                                            grammar._root.encode("utf-8"))
        if not smpl:
            raise ValueError("the grammar does not parse as GBNF (llama.cpp's parser refused it; with verbose=True "
                             "its log says where). Fix the grammar, e.g. root ::= \"yes\" | \"no\"")
        C.llama_sampler_free(smpl)

    def _show_context(self, context: Sequence[int]) -> None:
        """Llama's logits processors read self._input_ids: make it the tokens before the sampled one."""
        n = len(context)
        if n > self._synced:
            self.input_ids[self._synced:n] = context[self._synced:n]
        self.n_tokens = n

    def sampling_params(self, *, temp: float = 0.0, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                        typical_p: float = 1.0, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
                        presence_penalty: float = 0.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                        mirostat_eta: float = 0.1, seed: int | None = None) -> SamplingParams:
        """SamplingParams with llama-cpp-python's names and defaults (temp 0 here: greedy).

        Without a seed, the seed is drawn from the model's seed as create_completion draws it.
        """
        if seed is None:
            seed = random.Random(self._seed).randint(0, 2 ** 32)
        return SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                              repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                              presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                              mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=seed)

    # -- generation ---------------------------------------------------------------------

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor=None, stopping_criteria=None, grammar=None):
        """Llama.generate's contract, decoded through SWIFT.

        As in Llama: every sampled token is yielded, the end-of-generation token included (the
        caller stops there); `stopping_criteria(input_ids, logits)` sees the tokens before the
        sampled one and the logits it was sampled from, and ends the generator when true;
        reset=False continues after the cached tokens. When the generator is closed, the KV
        cache keeps what Llama's would keep (the prompt and every token but the last yielded,
        or all yielded tokens when a stopping criterion ended it), so a following call
        evaluates the same batches as Llama and its output stays Llama's.
        """
        self._require_engine()
        params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        tokens = list(tokens) if reset else self._input_ids.tolist() + list(tokens)
        sampler = self.make_sampler(params, grammar=grammar, logits_processor=logits_processor)
        consumed = 0   # yielded tokens after which the caller asked for more: Llama has evaluated those
        run = self.generate_tokens(tokens, sampler=sampler)
        try:
            for tok in run:
                q = len(tokens) + consumed   # the sampled token's position
                row = self.rt.logits(tok.row) if (stopping_criteria is not None or self._logits_all) else None
                if self._logits_all:
                    self.scores[q - 1, :] = row
                if stopping_criteria is not None and stopping_criteria(self.input_ids[:q], np.array(row)):
                    return
                yield tok.id
                consumed += 1
        finally:
            run.close()
            sampler.close()
            self._keep_cached(len(tokens) + consumed)

    def _keep_cached(self, n: int) -> None:
        """Keep the first n positions in the KV cache (and in Llama's view), drop the rest."""
        if n < self.n_tokens:
            self.rt.remove(-1, n, -1)
            self.n_tokens = self._synced = n

    def generate_tokens(self, prompt: str | bytes | Sequence[int], params: SamplingParams | None = None,
                        max_tokens: int | None = None, *, sampler: TokenSampler | None = None) -> Iterator[Token]:
        """Yield generated tokens, each with whether it came from an accepted draft.

        `params` (default: greedy) or a ready `sampler` (`make_sampler`) choose the tokens.
        Statistics of the generation are in `last_stats` once the iterator ends or is closed.
        """
        engine = self._require_engine()
        stats = GenStats(mode=engine.config.mode, exact=self.exact)
        self.last_stats, self.last_tokens = stats, []
        tokens = self._prompt_tokens(prompt)
        limit = self._n_ctx - len(tokens) if max_tokens is None or max_tokens <= 0 else max_tokens
        stats.n_prompt = len(tokens)
        own_sampler = sampler is None
        if own_sampler:
            sampler = self.make_sampler(params or SamplingParams())
        try:
            engine.prepare(tokens[0], self.n_tokens, stats)
            stream = self._eval_prompt(tokens, sampler, stats)
            run = engine.run(stream, sampler, limit, stats)
            try:
                for tok in run:
                    self.last_tokens.append(tok)
                    self._sync(stream)
                    yield tok
            finally:
                run.close()
                self._sync(stream)
                self._save_profile_if_changed()
        finally:
            if own_sampler:
                sampler.close()

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

    def _eval_prompt(self, tokens: list[int], sampler: TokenSampler, stats: GenStats) -> Stream:
        """Evaluate the prompt with the full model, reusing the cached common prefix as Llama does."""
        keep = 0
        limit = min(self.n_tokens, len(tokens) - 1)   # at least one token is decoded for fresh logits
        while keep < limit and self.input_ids[keep] == tokens[keep]:
            keep += 1
        self.rt.remove(-1, keep, -1)   # also anything a failed or interrupted call left behind
        self.n_tokens = self._synced = keep
        stats.t_prompt = self._decode_prompt(tokens, keep)
        self.input_ids[keep:len(tokens)] = tokens[keep:]
        self.n_tokens = self._synced = len(tokens)
        first = sampler.sample(-1, tokens)
        stats.t_total += stats.t_prompt
        return Stream(list(tokens) + [first], len(tokens))

    def _decode_prompt(self, tokens: list[int], start: int) -> float:
        """Decode tokens[start:] in Llama's n_batch chunks; with logits_all, keep every row in scores."""
        if not self._logits_all:
            return self.rt.decode(tokens[start:], start)
        secs = 0.0
        for off in range(start, len(tokens), self.n_batch):
            chunk = tokens[off:off + self.n_batch]
            secs += self.rt.decode(chunk, off, all_logits=True)
            self.scores[off:off + len(chunk), :] = self.rt.logits_rows(len(chunk))
        return secs

    def _sync(self, stream: Stream) -> None:
        """Keep Llama's view (input_ids, n_tokens) equal to what the KV cache holds."""
        n = stream.n_past
        if n > self._synced:
            self.input_ids[self._synced:n] = stream.tokens[self._synced:n]
        self.n_tokens = self._synced = n

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
        if hasattr(self, "_stack"):   # absent when __init__ failed before Llama set it up
            super().close()

    def __del__(self) -> None:
        self.close()
