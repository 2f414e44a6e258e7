"""Reading safetensors files tensor by tensor with plain reads, without a memory map.

The `safetensors` package (which writes our checkpoints) hands out tensors backed by a memory map of
the file: right for tensors kept as stored (no copy; pages become resident as they are used), wrong
for tensors that are converted at load (to another dtype, quantized, relaid): their mapped pages stay
resident beside the converted copies until the whole file is released, so a one-file checkpoint
peaks at about twice its size. `iter_safetensors(file, copy=...)` reads the tensors `copy` names
(`readinto` straight into their own buffer: the page cache holds the file, the process only the
tensor, freed once converted) and maps the rest.

The format: 8 bytes (little-endian u64) giving the header's length N, N bytes of JSON mapping each
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data after the header;
"__metadata__" holds strings), then the data. Everything is checked before a byte is trusted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import weakref
from collections.abc import Callable, Iterator

import torch
from safetensors import safe_open

MAX_HEADER = 100 * 2**20
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E4M3", "float8_e4m3fn"),
                     ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)


class SafetensorsFormatError(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong (the caller names
    the file)."""


def read_header(fh, file: str) -> tuple[dict, int]:
    """(the tensors' entries, the data's start offset), validated against the file's size."""
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(8)
    if len(head) < 8:
        raise SafetensorsFormatError(f"{size} bytes, shorter than a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > size:
        raise SafetensorsFormatError(f"header length {n} does not fit the file ({size} bytes)")
    try:
        header = json.loads(fh.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsFormatError(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("the header is not a JSON object")
    header.pop("__metadata__", None)
    data = 8 + n
    for key, entry in header.items():
        if not isinstance(entry, dict):
            raise SafetensorsFormatError(f"entry {key!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise SafetensorsFormatError(f"tensor {key!r} has dtype {dtype!r}, not one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsFormatError(f"tensor {key!r} has shape {shape!r}, not a list of sizes")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] or data + offsets[1] > size):
            raise SafetensorsFormatError(f"tensor {key!r} has data_offsets {offsets!r} outside the file's "
                                         f"{size - data} data bytes (truncated?)")
        want = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != want:
            raise SafetensorsFormatError(f"tensor {key!r} ({dtype} {shape}) needs {want} bytes, its offsets "
                                         f"span {offsets[1] - offsets[0]}")
    return header, data


def iter_safetensors(file: str, copy: Callable[[str, torch.dtype], bool] | None = None
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in file order: tensors for which copy(name, dtype) is true (all without `copy`)
    read into fresh CPU tensors that own their memory, the others views of safetensors' memory map."""
    with open(file, "rb", buffering=0) as fh, contextlib.ExitStack() as stack:
        header, data = read_header(fh, file)
        mapped = None
        for key, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if copy is not None and not copy(key, DTYPES[entry["dtype"]]):
                if mapped is None:
                    mapped = stack.enter_context(safe_open(file, framework="pt"))
                yield key, mapped.get_tensor(key)
                continue
            tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
            _fill(fh, data + entry["data_offsets"][0], tensor, key)
            yield key, tensor


def _runs(index, size: int) -> list[tuple[int, int]]:
    """A slice or an index tensor along a dimension of `size` -> contiguous [begin, end) runs in order."""
    if isinstance(index, slice):
        begin, end, step = index.indices(size)
        if step != 1:
            raise ValueError("only unit-step slices are read")
        return [(begin, end)]
    runs: list[tuple[int, int]] = []
    for i in index.tolist():
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _fill(fh, offset: int, out: torch.Tensor, key: str) -> None:
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
    fh.seek(offset)
    done = 0
    while done < len(view):
        got = fh.readinto(view[done:])
        if not got:
            raise SafetensorsFormatError(f"tensor {key!r} ends early (truncated?)")
        done += got


READ_BLOCK = 8 * 2**20  # bytes of whole rows read at a time to take a column range out of them


def iter_safetensors_parts(file: str, select: Callable[[str, tuple[int, ...], torch.dtype], tuple | None]
                           ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, part) in file order. select(name, shape, dtype) gives (dim, index, mapped): the part
    along dim 0 or 1 (a slice, or an index tensor of positions), or None to skip the tensor. A part
    that is one run of rows and `mapped` (kept as stored) is a view of a private memory map of the
    file: only its pages are ever read, and only when used. Other parts are read with plain reads
    into tensors of their own (a column range taken from blocks of whole rows, READ_BLOCK bytes at a
    time). Either way a tensor-parallel rank holds its slices and never the rest."""
    import mmap

    with open(file, "rb", buffering=0) as fh:
        header, data = read_header(fh, file)
        mapping = None
        for key, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            shape, dtype = tuple(entry["shape"]), DTYPES[entry["dtype"]]
            choice = select(key, shape, dtype)
            if choice is None:
                continue
            dim, index, mapped = choice
            base = data + entry["data_offsets"][0]
            if not shape:
                out = torch.empty((), dtype=dtype)
                _fill(fh, base, out, key)
                yield key, out
                continue
            runs = _runs(index, shape[dim])
            width = sum(e - b for b, e in runs)
            if dim == 0:
                row = math.prod(shape[1:]) * dtype.itemsize
                if mapped and len(runs) == 1 and width:
                    if mapping is None:  # copy-on-write: writable for torch, never written back
                        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
                    flat = torch.frombuffer(mapping, dtype=dtype, count=width * row // dtype.itemsize,
                                            offset=base + runs[0][0] * row)
                    yield key, flat.view(width, *shape[1:])
                    continue
                out = torch.empty((width, *shape[1:]), dtype=dtype)
                at = 0
                for b, e in runs:
                    _fill(fh, base + b * row, out[at:at + e - b], key)
                    at += e - b
                yield key, out
                continue
            if len(shape) != 2 or dim != 1:
                raise ValueError(f"tensor {key!r}: only the columns of a matrix are read by range")
            rows, cols = shape
            out = torch.empty((rows, width), dtype=dtype)
            chunk = max(1, READ_BLOCK // max(1, cols * dtype.itemsize))
            buf = torch.empty((min(chunk, rows), cols), dtype=dtype)
            for r in range(0, rows, chunk):
                n = min(chunk, rows - r)
                _fill(fh, base + r * cols * dtype.itemsize, buf[:n], key)
                at = 0
                for b, e in runs:
                    out[r:r + n, at:at + e - b] = buf[:n, b:e]
                    at += e - b
            yield key, out


class StoredRows:
    """Rows of a matrix stored in a safetensors file, read with positional reads when they are looked
    up: `rows(ids)` equals `tensor[ids]`. For a table of which a step needs a few rows (a quantized
    model's token embedding: 51200 x 1024 int8 in 350M, 52 MB) this keeps the table out of the
    process: read through a memory map, the page cache's large folios (up to 2 MB, made by readahead or
    by the write that made the file) are mapped whole on a fault, so looking up ~200 tokens' rows made
    ~50 MB of the table resident. A pread copies a row's bytes and maps nothing; with a cold cache it
    also reads only the pages of the rows looked up."""

    def __init__(self, file: str, key: str) -> None:
        with open(file, "rb", buffering=0) as fh:
            header, data = read_header(fh, file)
        if key not in header:
            raise KeyError(f"{file} holds no tensor {key!r}")
        entry = header[key]
        if len(entry["shape"]) != 2:
            raise ValueError(f"{file}: tensor {key!r} has shape {entry['shape']}, not a matrix of rows")
        self.file, self.key = file, key
        self.shape, self.dtype = tuple(entry["shape"]), DTYPES[entry["dtype"]]
        self.offset = data + entry["data_offsets"][0]
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        weakref.finalize(self, os.close, self._fd)

    def __deepcopy__(self, memo) -> StoredRows:  # reads only: a copied module shares it (and its descriptor)
        return self

    def __reduce__(self):  # a pickled module opens the file again
        return StoredRows, (self.file, self.key)

    def fileno(self) -> int:
        """The open file's descriptor: row r's bytes lie at `offset + r * row_bytes` (the native decode
        step reads picked tokens' rows itself)."""
        return self._fd

    def row_into(self, row: int, out) -> None:
        """Row `row` (an int; negative counts from the end) into `out`, a writable buffer of one row's
        bytes (a numpy array): the one-row decode step's lookup, without torch ops."""
        n_rows = self.shape[0]
        r = row + n_rows if row < 0 else row
        if not 0 <= r < n_rows:
            raise IndexError(f"index {row} is out of range for the {n_rows} rows of {self.key!r}")
        if os.preadv(self._fd, [out], self.offset + r * self.row_bytes) != self.row_bytes:
            raise SafetensorsFormatError(f"{self.file}: tensor {self.key!r} ends early (truncated?)")

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (any shape, integer) -> (*ids.shape, cols) rows in the stored dtype."""
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"row indices must be integers, not {ids.dtype}")
        flat = ids.reshape(-1).tolist()
        out = torch.empty(len(flat), self.shape[1], dtype=self.dtype)
        view = memoryview(out.view(torch.uint8).numpy()).cast("B") if flat else None
        rb = self.row_bytes
        for i, r in enumerate(flat):
            self.row_into(r, view[i * rb:(i + 1) * rb])
        return out.view(*ids.shape, self.shape[1])
