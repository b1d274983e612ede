"""Tests for swift_gguf/redundancy.py: structure of the fixture GGUF, and that llama.cpp
loads it at twice the depth with the inserted identity blocks leaving greedy outputs unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

from swift_gguf.redundancy import build_fixture, inserted_layers, original_layers  # noqa: E402

BLOCK_SUFFIXES = (
    "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
    "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
)
ZEROED = ("attn_output.weight", "ffn_down.weight")


@pytest.fixture(scope="module")
def base_path(model_path) -> Path:
    """$SWIFT_GGUF_TEST_MODEL (a llama GGUF) if set, else the default model."""
    env = os.environ.get("SWIFT_GGUF_TEST_MODEL")
    return Path(env) if env else model_path


@pytest.fixture(scope="module")
def base_reader(base_path) -> GGUFReader:
    return GGUFReader(base_path, "r")


@pytest.fixture(scope="module", params=[1, 3], ids=lambda k: f"K{k}")
def fixture_file(request, base_path, tmp_path_factory):
    """(per_block, metadata, reader, path) for a freshly built fixture (each K built once)."""
    k = request.param
    out = tmp_path_factory.mktemp(f"fixture_k{k}") / f"fixture_k{k}.gguf"
    meta = build_fixture(base_path, out, per_block=k)
    return k, meta, GGUFReader(out, "r"), out


def _value(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def _tensors(reader: GGUFReader) -> dict:
    return {t.name: t for t in reader.tensors}


def test_inserted_layers_indices():
    assert inserted_layers(3, 1) == [1, 3, 5]
    assert inserted_layers(2, 3) == [1, 2, 3, 5, 6, 7]
    assert original_layers(2, 3) == [0, 4]
    assert inserted_layers(4, 0) == []
    # inserted and original layers partition 0..n*(K+1)-1
    for n, k in [(30, 1), (30, 3), (5, 2)]:
        assert sorted(inserted_layers(n, k) + original_layers(n, k)) == list(range(n * (k + 1)))


def test_layer_count_and_metadata(fixture_file, base_reader):
    k, meta, rd, _ = fixture_file
    arch = _value(base_reader, "general.architecture")
    n_orig = _value(base_reader, f"{arch}.block_count")
    assert meta["n_orig_layer"] == n_orig
    assert meta["n_layer"] == n_orig * (k + 1) == _value(rd, f"{arch}.block_count")
    assert meta["inserted_layers"] == inserted_layers(n_orig, k)
    assert meta["original_layers"] == original_layers(n_orig, k)
    if k == 1:
        assert meta["inserted_layers"] == list(range(1, 2 * n_orig, 2))  # exactly the odd layers
    assert _value(rd, "general.architecture") == arch
    assert _value(rd, "general.name").endswith(f"(redundancy fixture K={k})")

    # every other key is copied unchanged (tokenizer arrays, chat template, hparams, ...)
    changed = {f"{arch}.block_count", "general.name"}
    base_keys = [f for f in base_reader.fields if not f.startswith("GGUF.")]
    out_keys = [f for f in rd.fields if not f.startswith("GGUF.")]
    assert out_keys == base_keys  # same keys, same order, nothing written twice
    for key in base_keys:
        if key not in changed:
            assert rd.fields[key].types == base_reader.fields[key].types, key
            assert _value(rd, key) == _value(base_reader, key), key
    assert _value(rd, "tokenizer.chat_template") == _value(base_reader, "tokenizer.chat_template")
    assert len(_value(rd, "tokenizer.ggml.tokens")) == len(_value(base_reader, "tokenizer.ggml.tokens"))
    assert rd.alignment == base_reader.alignment


def test_tensor_layout(fixture_file, base_reader):
    k, meta, rd, _ = fixture_file
    n_blk = sum(t.name.startswith("blk.") for t in base_reader.tensors)
    n_other = len(base_reader.tensors) - n_blk
    assert len(rd.tensors) == meta["n_tensors"] == n_other + n_blk * (k + 1)
    # all of blk.i comes before blk.i+1
    layer_seq = [int(t.name.split(".")[1]) for t in rd.tensors if t.name.startswith("blk.")]
    assert layer_seq == sorted(layer_seq)
    assert set(layer_seq) == set(range(meta["n_layer"]))


def test_inserted_blocks_are_identities(fixture_file, base_reader):
    k, meta, rd, _ = fixture_file
    out, base = _tensors(rd), _tensors(base_reader)
    step = k + 1
    for layer in meta["inserted_layers"]:
        src = layer // step  # original block it was copied from
        for suffix in BLOCK_SUFFIXES:
            t, b = out[f"blk.{layer}.{suffix}"], base[f"blk.{src}.{suffix}"]
            assert t.tensor_type == b.tensor_type and list(t.shape) == list(b.shape)
            if suffix in ZEROED:
                assert not np.any(t.data), f"blk.{layer}.{suffix} bytes not zero"
                values = dequantize(t.data, t.tensor_type)
                assert values.size == int(np.prod(t.shape))
                assert np.all(values == 0.0), f"blk.{layer}.{suffix} does not decode to 0"
            else:
                assert np.array_equal(t.data, b.data), f"blk.{layer}.{suffix} != blk.{src}.{suffix}"


def test_original_blocks_and_globals_unchanged(fixture_file, base_reader):
    k, meta, rd, _ = fixture_file
    out = _tensors(rd)
    for b in base_reader.tensors:
        name = b.name
        if name.startswith("blk."):
            _, i, suffix = name.split(".", 2)
            name = f"blk.{int(i) * (k + 1)}.{suffix}"
        t = out[name]
        assert t.tensor_type == b.tensor_type, name  # Q4_1 stays Q4_1, F32 stays F32
        assert list(t.shape) == list(b.shape), name
        assert np.array_equal(t.data, b.data), f"{name} bytes differ from base {b.name}"


def test_zero_q41_block_decodes_to_zero():
    """The construction relies on all-zero Q4_1 bytes (d=0, m=0) decoding to exactly 0.0."""
    q41 = gguf.GGMLQuantizationType.Q4_1
    block_size, type_size = gguf.GGML_QUANT_SIZES[q41]
    assert (block_size, type_size) == (32, 20)  # fp16 d + fp16 m + 16 bytes of nibbles
    values = dequantize(np.zeros((4, 3 * type_size), dtype=np.uint8), q41)
    assert values.shape == (4, 3 * block_size) and np.all(values == 0.0)


def test_atomic_write_leaves_no_temp(fixture_file):
    _, meta, _, out = fixture_file
    assert out.is_file() and meta["out_bytes"] == out.stat().st_size
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_llama_cpp_greedy_matches_base(base_path, fixture_file):
    """llama.cpp loads the fixture at K + 1 times the depth, and since identity blocks add exactly
    0 to the residual stream, its greedy output is the base model's."""
    import llama_cpp

    k, _, _, out = fixture_file

    def greedy(path: Path) -> tuple[str, int]:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
        try:
            res = llm.create_completion("The capital of France is", max_tokens=16, temperature=0.0, top_k=1)
            # what llama.cpp loaded, not what the file says: the model's own layer count
            return res["choices"][0]["text"], llama_cpp.llama_model_n_layer(llm.model)
        finally:
            llm.close()

    (base_text, base_n), (fixture_text, fixture_n) = greedy(base_path), greedy(out)
    assert base_n > 0 and fixture_n == (k + 1) * base_n
    assert base_text and fixture_text == base_text
