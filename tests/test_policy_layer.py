"""The policy layer (engine, controller, drafters, costmodel, pacing, search) imports without llama_cpp,
and the product's collaborators have what its Protocols (swift_gguf/protocols.py) list. No model."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from swift_gguf import protocols
from swift_gguf.costmodel import Costs
from swift_gguf.engine import SpecConfig, Stream

ROOT = Path(__file__).resolve().parent.parent
POLICY = ("engine", "controller", "drafters", "costmodel", "pacing", "search", "protocols")


def test_policy_layer_imports_without_llama_cpp():
    code = ("import sys\n"
            "sys.modules['llama_cpp'] = None   # any import of it now fails\n"
            + "".join(f"import swift_gguf.{m}\n" for m in POLICY)
            + "print(' '.join(sorted(m for m in sys.modules if m.startswith('swift_gguf'))))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert {f"swift_gguf.{m}" for m in POLICY} <= loaded
    assert not loaded & {"swift_gguf.native", "swift_gguf.runtime", "swift_gguf.api"}


def _members(proto) -> set[str]:
    return {n for n in (*proto.__annotations__, *vars(proto)) if not n.startswith("_")}


def test_the_products_collaborators_have_what_the_protocols_list():
    from swift_gguf.runtime import Runtime, StepKernels
    assert isinstance(Costs(), protocols.CostModel)
    assert isinstance(StepKernels(choose=True), protocols.StepKernelChoice)
    for name in _members(protocols.Runtime) - set(protocols.Runtime.__annotations__):
        assert callable(getattr(Runtime, name)), name
    config = SpecConfig()
    assert all(hasattr(config, n) for n in _members(protocols.SpecSettings))
    stream = Stream([1, 2, 3], 2)
    assert all(hasattr(stream, n) for n in _members(protocols.TokenStream)) and stream.last == 3


def test_runtime_protocol_matches_the_runtimes_signatures():
    """Same parameter names as runtime.Runtime's methods: a stand-in written against the Protocol fits."""
    from swift_gguf.runtime import Runtime
    for name in _members(protocols.Runtime) - set(protocols.Runtime.__annotations__):
        want = list(inspect.signature(getattr(protocols.Runtime, name)).parameters)
        assert list(inspect.signature(getattr(Runtime, name)).parameters) == want, name
