"""Build a "redundancy fixture": a real GGUF model made redundant by construction.

After every original transformer block, K extra blocks are inserted.  Each inserted
block is an exact identity map of the residual stream: its attention output
projection and its FFN down projection are exact zeros, so both residual branches
add exactly 0.  Its other tensors (norms, q/k/v, gate/up) are copies of the
preceding original block, so an inserted block costs as much compute as a real one.

Layer layout: original block i -> layer i*(K+1); its copies -> i*(K+1)+1 .. i*(K+1)+K.
A layer-skipping drafter that skips exactly the inserted layers is therefore a
perfect drafter, which gives a known upper bound for self-speculative decoding.
The tests and the benchmarks build theirs with `cached_fixture` (once, into the cache).
Beside swift_gguf/testmodels.py (tiny random models of every architecture, the same
identity-block rule): this one turns a real model into a fixture.

CLI:  python -m swift_gguf.redundancy --base MODEL.gguf --out OUT.gguf [--per-block K]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter, GGMLQuantizationType
from gguf import quants as gguf_quants

# Tensors whose output is added to the residual stream (attention output, FFN down projection;
# biases and MoE experts' included): zero in an identity block, the same rule as the tiny test models'
from .fileio import atomic_output
from .testmodels import ZEROED_PREFIXES

_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")

# Keys GGUFWriter writes itself (architecture in __init__, GGUF.* are header pseudo-fields)
# or that we handle explicitly (alignment must also set writer.data_alignment).
_KEY_ARCH = "general.architecture"
_KEY_ALIGN = "general.alignment"
_KEY_NAME = "general.name"


def cached_fixture(base: Path, per_block: int, name: str = "smollm2-135m") -> Path:
    """The fixture of `base` with per_block identity blocks, built once into the cache
    (fixtures/<name>-identity-k<K>.gguf)."""
    from .paths import cache_dir
    out = cache_dir() / "fixtures" / f"{name}-identity-k{per_block}.gguf"
    if not out.exists():
        build_fixture(base, out, per_block=per_block)
    return out


def inserted_layers(n_orig_layers: int, per_block: int) -> list[int]:
    """Indices (in the fixture) of the inserted identity layers."""
    step = per_block + 1
    return [i * step + j for i in range(n_orig_layers) for j in range(1, step)]


def original_layers(n_orig_layers: int, per_block: int) -> list[int]:
    """Indices (in the fixture) where the original blocks 0..n-1 end up."""
    return [i * (per_block + 1) for i in range(n_orig_layers)]


def _field_value(reader: GGUFReader, key: str) -> Any:
    """Decoded value of a metadata key (None if absent)."""
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _is_zeroed(suffix: str) -> bool:
    return suffix.startswith(ZEROED_PREFIXES)


def _zeros_like_raw(data: np.ndarray) -> np.ndarray:
    """Zero bytes with the reader's raw layout (uint8 blocks for quantized types).

    All-zero bytes decode to exactly 0.0 for float types and for block quants
    (scale d = 0 and min m = 0, e.g. Q4_1 = fp16 d, fp16 m, 16 bytes of nibbles).
    This is verified by dequantizing in validate_fixture().
    """
    return np.zeros(data.shape, dtype=data.dtype)


def _split_tensors(reader: GGUFReader):
    """Split tensors into (non-layer before blocks, {block: [(suffix, tensor)]}, non-layer after)."""
    head, tail, blocks = [], [], {}
    for t in reader.tensors:
        m = _BLK_RE.match(t.name)
        if m is None:
            (tail if blocks else head).append(t)
        else:
            blocks.setdefault(int(m.group(1)), []).append((m.group(2), t))
    return head, blocks, tail


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, arch: str, n_layer: int, per_block: int) -> None:
    """Copy every key/value in file order, changing only block_count and general.name."""
    block_key = f"{arch}.block_count"
    for field in reader.fields.values():
        name = field.name
        if name == _KEY_ARCH or name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        if name == _KEY_ALIGN:
            writer.add_custom_alignment(int(field.contents()))  # also sets data_alignment
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        if vtype == GGUFValueType.ARRAY and name.startswith(f"{arch}.") and len(value) == n_layer // (per_block + 1):
            # per-layer hyperparameter arrays would need expanding too; not needed for llama, so refuse
            raise ValueError(f"per-layer metadata array {name!r} is not supported")
        if name == block_key:
            value = n_layer
        elif name == _KEY_NAME and per_block > 0:  # K=0 is a plain copy: keep the name
            value = f"{value} (redundancy fixture K={per_block})"
        writer.add_key_value(name, value, vtype, sub_type=sub_type)


def _add_raw_tensor(writer: GGUFWriter, name: str, data: np.ndarray, ttype: GGMLQuantizationType) -> None:
    """Add raw tensor data as-is.

    The reader exposes quantized data as uint8 of numpy shape (rows, bytes_per_row);
    with raw_dtype set, GGUFWriter converts that byte shape back to the element shape
    and writes dims in GGUF (reversed) order, so the header round-trips exactly.
    """
    writer.add_tensor(name, data, raw_dtype=ttype)


def build_fixture(base: Path, out: Path, per_block: int = 1, validate: bool = True) -> dict:
    """Write the redundancy fixture of `base` to `out` (atomically) and return its metadata.

    Returns a dict with n_layer, n_orig_layer, per_block, inserted_layers, original_layers,
    n_tensors, out_bytes and seconds.
    """
    if per_block < 0:
        raise ValueError("per_block must be >= 0")
    base, out = Path(base), Path(out)
    t0 = time.perf_counter()
    reader = GGUFReader(base, "r")
    arch = _field_value(reader, _KEY_ARCH)
    n_orig = int(_field_value(reader, f"{arch}.block_count"))
    head, blocks, tail = _split_tensors(reader)
    if sorted(blocks) != list(range(n_orig)):
        raise ValueError(f"{base}: blk.* indices {sorted(blocks)[:5]}... do not match block_count={n_orig}")
    step = per_block + 1
    n_layer = n_orig * step

    with atomic_output(out) as tmp:   # a fixture file is complete or absent
        writer = GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
        _copy_metadata(reader, writer, arch, n_layer, per_block)
        for t in head:
            _add_raw_tensor(writer, t.name, t.data, t.tensor_type)
        for i in range(n_orig):
            for j in range(step):  # j == 0: the original block; j >= 1: inserted identity copies
                for suffix, t in blocks[i]:
                    data = _zeros_like_raw(t.data) if j > 0 and _is_zeroed(suffix) else t.data
                    _add_raw_tensor(writer, f"blk.{i * step + j}.{suffix}", data, t.tensor_type)
        for t in tail:
            _add_raw_tensor(writer, t.name, t.data, t.tensor_type)
        n_tensors = sum(len(d) for d in writer.tensors)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    meta = {
        "base": str(base),
        "out": str(out),
        "per_block": per_block,
        "n_orig_layer": n_orig,
        "n_layer": n_layer,
        "inserted_layers": inserted_layers(n_orig, per_block),
        "original_layers": original_layers(n_orig, per_block),
        "n_tensors": n_tensors,
        "out_bytes": out.stat().st_size,
    }
    if validate:
        validate_fixture(base, out, per_block, base_reader=reader)  # reuse: parsing costs seconds
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return meta


def _dequantizes_to_zero(data: np.ndarray, ttype: GGMLQuantizationType) -> bool:
    """True if the tensor decodes to exact zeros (checks decoding, not just the bytes)."""
    try:
        values = gguf_quants.dequantize(data, ttype)
    except NotImplementedError:  # no numpy decoder for this type: fall back to raw bytes
        return not np.any(data.view(np.uint8))
    return not np.any(values)


def validate_fixture(base: Path, out: Path, per_block: int, base_reader: GGUFReader | None = None) -> None:
    """Re-read `out` and check it is the redundancy fixture of `base`; raise AssertionError if not."""
    rb = base_reader if base_reader is not None else GGUFReader(Path(base), "r")
    ro = GGUFReader(Path(out), "r")
    arch = _field_value(rb, _KEY_ARCH)
    n_orig = int(_field_value(rb, f"{arch}.block_count"))
    step = per_block + 1
    n_block_tensors = sum(1 for t in rb.tensors if _BLK_RE.match(t.name))
    n_other = len(rb.tensors) - n_block_tensors

    def check(cond: bool, msg: str) -> None:
        if not cond:
            raise AssertionError(f"{out}: {msg}")

    check(_field_value(ro, _KEY_ARCH) == arch, "architecture changed")
    check(int(_field_value(ro, f"{arch}.block_count")) == n_orig * step, "wrong block_count")
    check(len(ro.tensors) == n_other + n_block_tensors * step, "wrong tensor count")
    out_by_name = {t.name: t for t in ro.tensors}
    for bt in rb.tensors:
        m = _BLK_RE.match(bt.name)
        if m is None:
            targets = [(bt.name, False)]
        else:
            i, suffix = int(m.group(1)), m.group(2)
            targets = [(f"blk.{i * step + j}.{suffix}", j > 0 and _is_zeroed(suffix)) for j in range(step)]
        for name, zeroed in targets:
            ot = out_by_name.get(name)
            check(ot is not None, f"missing tensor {name}")
            check(ot.tensor_type == bt.tensor_type, f"{name}: type {ot.tensor_type.name} != {bt.tensor_type.name}")
            check(list(ot.shape) == list(bt.shape), f"{name}: shape {list(ot.shape)} != {list(bt.shape)}")
            if zeroed:
                check(_dequantizes_to_zero(ot.data, ot.tensor_type), f"{name}: not all zeros")
            else:
                check(np.array_equal(ot.data.view(np.uint8), bt.data.view(np.uint8)), f"{name}: bytes differ from {bt.name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swift_gguf.redundancy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="input GGUF model")
    ap.add_argument("--out", type=Path, required=True, help="output GGUF path")
    ap.add_argument("--per-block", type=int, default=1, help="identity blocks inserted after each block (K)")
    ap.add_argument("--no-validate", action="store_true", help="skip re-reading and checking the output")
    args = ap.parse_args(argv)
    meta = build_fixture(args.base, args.out, args.per_block, validate=not args.no_validate)
    print(
        f"wrote {meta['out']}: {meta['n_orig_layer']} -> {meta['n_layer']} layers "
        f"(K={meta['per_block']}, {len(meta['inserted_layers'])} identity layers), "
        f"{meta['n_tensors']} tensors, {meta['out_bytes'] / 1e6:.1f} MB, {meta['seconds']:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
