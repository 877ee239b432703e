"""A GGUF file's header (metadata and tensor table) read in one pass, without its tensor data.

`gguf.GGUFReader` builds a numpy view per array element: on a 49k-token vocabulary it takes tens of
seconds on a busy CPU, too slow for `serve`'s start and every registry reload. This walks the same
layout (GGUF v2/v3, little-endian) with `struct`, using the `gguf` package's own type tables
(value types, tensor types and their block sizes), in well under a second.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

MAGIC = b"GGUF"
_SCALARS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    type: GGMLQuantizationType

    @property
    def n_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type]
        count = 1
        for dim in self.shape:
            count *= dim
        return count // block * size


@dataclass(frozen=True)
class Header:
    fields: dict[str, Any]
    tensors: list[TensorInfo]


class _Short(Exception):
    """The bytes read so far end inside the header: read more."""


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.at)
        except struct.error:
            raise _Short from None
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        raw = self.data[self.at:self.at + n]
        if len(raw) != n:
            raise _Short
        self.at += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            item = GGUFValueType(self.take("<I"))
            return [self.value(item) for _ in range(self.take("<Q"))]
        return self.take(_SCALARS[vtype])


def read_header(path: Path) -> Header:
    """The metadata and tensor table of a GGUF file; `ValueError` if it is not one (or is cut short).
    The file is mapped, not read: only the header's pages are touched."""
    with path.open("rb") as f:
        if path.stat().st_size < 24:
            raise ValueError("not a GGUF file (too short)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return _parse(data)
            except _Short:
                raise ValueError("the file ends inside its GGUF header") from None


def _parse(data: mmap.mmap) -> Header:
    cur = _Cursor(data)
    if data[:4] != MAGIC:
        raise ValueError("not a GGUF file (bad magic)")
    cur.at = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    n_tensors, n_fields = cur.take("<Q"), cur.take("<Q")
    fields: dict[str, Any] = {}
    for _ in range(n_fields):
        key = cur.string()
        try:
            vtype = GGUFValueType(cur.take("<I"))
        except ValueError:
            raise ValueError(f"field {key}: unknown value type") from None
        fields[key] = cur.value(vtype)
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.take("<Q") for _ in range(cur.take("<I")))
        ttype = GGMLQuantizationType(cur.take("<I"))
        cur.take("<Q")  # offset in the data section
        tensors.append(TensorInfo(name, dims, ttype))
    return Header(fields, tensors)
