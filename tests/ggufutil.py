"""Tiny GGUF helpers for tests: re-label a real model as another architecture, change its metadata."""
from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def retarget(base: Path, out: Path, arch: str, extra: dict | None = None) -> Path:
    """Copy base (a llama GGUF) with general.architecture = arch and llama.* keys renamed arch.*;
    extra: {key: (value, GGUFValueType)} added, or replacing the key's value."""
    extra = extra or {}
    reader = GGUFReader(base, "r")
    src_arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(out, arch=arch)
    for field in reader.fields.values():
        name = field.name
        if name == "general.architecture" or name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        if name.startswith(src_arch + "."):
            name = arch + name[len(src_arch):]
        if name in extra:
            continue
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for key, (value, vtype) in extra.items():
        writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
