"""Checking a GGUF file before llama.cpp loads it: is it complete, and what is it.

`check_gguf` reads only the header (memory-mapped), so a wrong download, a
truncated file or a file in another format is reported with its cause and fix
in milliseconds, instead of as a crash or an opaque error at load time.
Imports without llama_cpp: the CLI checks files before the native library loads.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .registry import MODELS

@dataclass(frozen=True)
class GGUFInfo:
    """What swift-gguf needs to know about a model file, read from its header only."""

    path: Path
    architecture: str
    n_layer: int | None  # {arch}.block_count; None if the file lacks it
    size: int  # file size in bytes
    name: str | None  # general.name
    has_chat_template: bool  # tokenizer.chat_template present
    version: int = 3
    n_tensors: int = 0


_SUPPORTED_VERSIONS = (2, 3)  # llama.cpp reads v2 and v3; v1 was dropped long ago

# GGUF metadata value types: id -> struct format of a scalar (strings and arrays apart).
_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
               10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class _Truncated(Exception):
    """Parsing ran past the end of the file."""


class _Corrupt(Exception):
    """The header holds a value no valid GGUF has."""


def check_gguf(path: str | os.PathLike) -> GGUFInfo:
    """Check that `path` is a complete, loadable-looking GGUF file and describe it.

    Reads only the header (memory-mapped, so a large file costs a few milliseconds):
    magic, version, metadata and tensor table, and checks that the file is long
    enough for every tensor. Raises ModelFileError saying what is wrong and what to do.
    """
    path = Path(path).expanduser()
    size = _check_readable_file(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _check_magic_and_version(path, buf)
            return _parse_gguf(path, buf, size)
    except PermissionError as exc:
        raise _no_permission(path) from exc
    except OSError as exc:
        raise ModelFileError(f"could not read {path}: {exc}. Check the file and the disk.") from exc


def _check_readable_file(path: Path) -> int:
    """Errors a user can fix without looking inside the file. Returns its size."""
    if not path.exists():
        raise ModelFileError(
            f"model file not found: {path}. Check the path, or use an alias "
            f"({', '.join(MODELS)}) to download a model.")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.gguf"))[:5]
        hint = f" It contains: {', '.join(found)}." if found else ""
        raise ModelFileError(f"{path} is a directory; pass the path of a .gguf file.{hint}")
    if not os.access(path, os.R_OK):
        raise _no_permission(path)
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes), probably left by an interrupted "
                             f"download; delete it and download the model again.")
    return size


def _no_permission(path: Path) -> ModelFileError:
    return ModelFileError(f"no permission to read {path}; make it readable "
                          f"(chmod a+r {path}) or run as a user who can read it.")


def _check_magic_and_version(path: Path, buf) -> None:
    head = bytes(buf[:64])
    if head[:4] != b"GGUF":
        raise ModelFileError(f"{path} is not a GGUF file: {_guess_format(head)}")
    if len(head) < 8:
        raise _truncated_header(path, len(head), len(head))
    version = _U32.unpack_from(head, 4)[0]
    if version in _SUPPORTED_VERSIONS:
        return
    if struct.unpack_from(">I", head, 4)[0] in _SUPPORTED_VERSIONS:
        raise ModelFileError(f"{path} is a big-endian GGUF, which llama.cpp cannot load on "
                             f"this machine; get or convert a little-endian file.")
    if version == 1:
        raise ModelFileError(f"{path} is GGUF version 1, which llama.cpp no longer loads; "
                             f"re-convert the model with a recent llama.cpp.")
    raise ModelFileError(f"{path} has unsupported GGUF version {version} (supported: "
                         f"{', '.join(map(str, _SUPPORTED_VERSIONS))}); the file is corrupt, "
                         f"or needs a newer llama.cpp and swift-gguf.")


def _guess_format(head: bytes) -> str:
    """Name the likely format of a non-GGUF file: most such files are a wrong download."""
    text = head.lstrip().lower()
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"ggml", b"ggmf", b"ggjt"):
        return "it is an old GGML/GGJT file; convert it to GGUF with a recent llama.cpp."
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return ("it is an HTML/XML page, probably saved from a web page instead of the file; "
                "download the raw file (on Hugging Face: the 'resolve' URL, not 'blob').")
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer; fetch the real file (git lfs pull) or download it."
    if head[:2] == b"PK":
        return "it is a zip archive (perhaps a wheel); extract the .gguf file from it."
    if len(head) >= 9 and head[8:9] == b"{":
        return ("it looks like a safetensors file; convert it with llama.cpp's "
                "convert_hf_to_gguf.py.")
    return f"it starts with {head[:8]!r} instead of b'GGUF'; pass a .gguf model file."


def _truncated_header(path: Path, at: int, size: int) -> ModelFileError:
    return ModelFileError(f"{path} ends inside its GGUF header (needed more than byte "
                          f"{at} of {size}): the file is truncated or corrupt; delete it and "
                          f"download it again.")


def _parse_gguf(path: Path, buf, size: int) -> GGUFInfo:
    reader = _HeaderReader(buf)
    try:
        header = reader.read_header()
    except (_Truncated, struct.error, IndexError, OverflowError, RecursionError):
        raise _truncated_header(path, reader.pos, size) from None
    except _Corrupt as exc:
        raise ModelFileError(f"{path} has a corrupt GGUF header ({exc}); delete it and "
                             f"download it again.") from None
    needed = header["file_end"]
    if size < needed:
        raise ModelFileError(
            f"{path} is truncated: it has {size:,} bytes but its tensors need {needed:,} "
            f"({100 * size / needed:.0f}% present), probably an interrupted download; "
            f"delete it and download it again.")
    kv = header["kv"]
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(f"{path} has no general.architecture key, so llama.cpp cannot "
                             f"load it as a model; pass a model GGUF (not an adapter or vocab file).")
    block_count = kv.get(f"{arch}.block_count")
    name = kv.get("general.name")
    return GGUFInfo(
        path=path, architecture=arch,
        n_layer=int(block_count) if isinstance(block_count, int) else None,
        size=size, name=name if isinstance(name, str) else None,
        has_chat_template="tokenizer.chat_template" in kv,
        version=header["version"], n_tensors=header["n_tensors"],
    )


class _HeaderReader:
    """Minimal GGUF header parser over a buffer (mmap), little-endian, v2/v3.

    Faster than gguf.GGUFReader (which builds objects for every vocabulary entry,
    ~2-10 s on small models) and never touches tensor data. Array values are
    skipped, except that their key is recorded with the value None.
    """

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def read_header(self) -> dict[str, Any]:
        self.pos = 4
        version = self.u32()
        n_tensors, n_kv = self.u64(), self.u64()
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            kv[key] = self.value(self.u32())
        extent = max((self.tensor_extent() for _ in range(n_tensors)), default=0)
        alignment = kv.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
        data_offset = -(-self.pos // alignment) * alignment
        # The file must reach the end of its last tensor's data, not past it: like llama.cpp,
        # which checks offset + size against the file size. With no tensor data (a vocab-only
        # file) the header is the whole file, with no padding up to the data section.
        file_end = data_offset + extent if extent else self.pos
        return {"version": version, "n_tensors": n_tensors, "kv": kv, "file_end": file_end}

    def need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise _Truncated()

    def u32(self) -> int:
        self.need(4)
        self.pos += 4
        return _U32.unpack_from(self.buf, self.pos - 4)[0]

    def u64(self) -> int:
        self.need(8)
        self.pos += 8
        return _U64.unpack_from(self.buf, self.pos - 8)[0]

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        fmt = _SCALAR_FMT.get(vtype)
        if fmt is not None:
            n = struct.calcsize(fmt)
            self.need(n)
            self.pos += n
            return struct.unpack_from(fmt, self.buf, self.pos - n)[0]
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            self.skip_array(self.u32(), self.u64())
            return None
        raise _Corrupt(f"unknown metadata value type {vtype} at byte {self.pos}")

    def skip_array(self, etype: int, count: int) -> None:
        fmt = _SCALAR_FMT.get(etype)
        if fmt is not None:
            self.need(count * struct.calcsize(fmt))
            self.pos += count * struct.calcsize(fmt)
        elif etype == _STRING:
            # Vocabularies hold 50k-260k strings: a tight loop, bounds checked once at
            # the end (unpack_from raises struct.error if we run off the buffer first).
            pos, buf, unpack = self.pos, self.buf, _U64.unpack_from
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
            self.pos = pos
            self.need(0)
        elif etype == _ARRAY:
            for _ in range(count):
                self.skip_array(self.u32(), self.u64())
        else:
            raise _Corrupt(f"unknown array element type {etype} at byte {self.pos}")

    def tensor_extent(self) -> int:
        """Read one tensor-table entry; return where its data ends, relative to the data section."""
        self.string()  # name
        n_dims = self.u32()
        if n_dims > 8:
            raise _Corrupt(f"a tensor claims {n_dims} dimensions")
        n_elems = 1
        for _ in range(n_dims):
            n_elems *= self.u64()
        ggml_type = self.u32()
        offset = self.u64()
        return offset + _tensor_nbytes(ggml_type, n_elems)


def _tensor_nbytes(ggml_type: int, n_elems: int) -> int:
    """Bytes of tensor data; 0 for a type unknown to the installed gguf package.

    Being lenient on unknown (newer) types means a truncated file with such a last
    tensor could pass this check; llama.cpp will still reject it at load time.
    """
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ImportError, ValueError, KeyError):
        return 0
    return n_elems // block * type_size
