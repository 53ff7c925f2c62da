"""Reading and writing state-dict files safely.

safetensors is read lazily and checked; `.ckpt`/`.pt` go through `torch.load(weights_only=True)` so a pickle
payload is refused; every write goes to a temporary file renamed into place, so a failed run never leaves
a half-written file or clobbers an existing one.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from library.errors import ToolkitError

SAFETENSORS_EXT = ".safetensors"


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ToolkitError(f"{path}: file not found")
    if path.is_dir():
        raise ToolkitError(f"{path}: is a folder, expected a .safetensors or .ckpt file")


def _safetensors_header(path: Path) -> dict:
    """Parse and validate the header so a truncated file fails here with a clear message."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ToolkitError(f"{path}: truncated safetensors file (no header)")
        n = int.from_bytes(raw, "little")
        if n > size - 8 or n > 100 * 2**20:
            raise ToolkitError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ToolkitError(f"{path}: corrupt safetensors header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ToolkitError(f"{path}: truncated safetensors file ({size} bytes, header promises {8 + n + end})")
    return header


class LazySafetensors(Mapping):
    """Read-only mapping over a safetensors file that loads one tensor at a time (streaming merges)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", mmap: bool = True) -> None:
        """`mmap=False` reads each tensor with plain file reads: the pages of tensors already read do not stay
        mapped, so a pass over a whole checkpoint keeps the resident memory at about one tensor."""
        self.path = Path(path)
        _check_exists(self.path)
        header = _safetensors_header(self.path)
        self.metadata: dict[str, str] = header.get("__metadata__") or {}
        self._info = {k: v for k, v in header.items() if k != "__metadata__"}
        if mmap:
            self._file = safe_open(str(self.path), framework="pt", device=device)
        else:
            self._file = None
            self._raw = open(self.path, "rb")  # kept open for the mapping's lifetime
            self._data_start = 8 + int.from_bytes(self._raw.read(8), "little")

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._info:
            raise KeyError(key)
        if self._file is not None:
            return self._file.get_tensor(key)
        start, end = self._info[key]["data_offsets"]
        buf = torch.empty(end - start, dtype=torch.uint8)
        self._raw.seek(self._data_start + start)
        if self._raw.readinto(buf.numpy()) != end - start:
            raise ToolkitError(f"{self.path}: truncated while reading {key}")
        return buf.view(self.dtype(key)).reshape(self.shape(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._info[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return {v: k for k, v in _ST_DTYPES.items()}[self._info[key]["dtype"]]


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:  # mmap keeps a large zip-format .ckpt out of memory until each tensor is used
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe pickle"
        raise ToolkitError(f"{path}: refused to load: the file holds more than plain tensors ({first[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ToolkitError(f"{path}: not a readable .ckpt/.pt file ({str(e).splitlines()[0][:160]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ToolkitError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_state_dict(path: str | os.PathLike, lazy: bool = False) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """Load a `.safetensors` (lazily if asked) or `.ckpt`/`.pt`/`.pth` state dict; returns (tensors, metadata)."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() == SAFETENSORS_EXT:
        lazy_sd = LazySafetensors(path)
        if lazy:
            return lazy_sd, lazy_sd.metadata
        try:
            return {k: lazy_sd[k] for k in lazy_sd}, lazy_sd.metadata
        except Exception as e:  # safetensors raises its own error types on corrupt data
            raise ToolkitError(f"{path}: corrupt safetensors file ({e})") from None
    return _load_torch(path), {}


def open_streaming(path: str | os.PathLike) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """A state dict for one pass, tensor by tensor: safetensors read without mmap (resident memory stays at about
    one tensor), `.ckpt`/`.pt` loaded whole. Returns (tensors, metadata)."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() == SAFETENSORS_EXT:
        tensors = LazySafetensors(path, mmap=False)
        return tensors, tensors.metadata
    return _load_torch(path), {}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file ({} for other formats)."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() != SAFETENSORS_EXT:
        return {}
    return _safetensors_header(path).get("__metadata__") or {}


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), folder: bool = False) -> Path:
    """Decide before any heavy work that `path` can be written: it is no input (nor inside an input folder), a
    file output is not a folder, a folder output is absent or empty, and its parent exists or can be created."""
    path = Path(path)
    real = path.resolve()
    for item in inputs:
        src = Path(item).resolve()
        if real == src or (src.is_dir() and src in real.parents):
            raise ToolkitError(f"{path}: is the input {item} (or inside it); write the output elsewhere")
    if folder:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ToolkitError(f"{path}: output folder exists and is not empty")
    elif path.is_dir():
        raise ToolkitError(f"{path}: is a folder; give an output file name")
    parent = real.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ToolkitError(f"{path}: cannot write there ({parent} is not a writable folder)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path` (absent or an empty folder); it becomes `path` only if the block
    succeeds, and is removed otherwise."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ToolkitError(f"{path}: output folder exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def serialize_safetensors(sd: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of a state dict (tensors made contiguous, metadata values as strings)."""
    head, body = safetensors_parts(sd, metadata)
    return head + bytes(body)


def safetensors_parts(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                      ) -> tuple[bytes, memoryview]:
    """The file as (8-byte length + JSON header, tensor data); the data is a view, never copied.

    Metadata keys are written in sorted order: safetensors itself writes them in hash order, which changes
    from run to run, so the same tensors and metadata would not give the same bytes.
    """
    data = st_save({k: v.detach().contiguous() for k, v in sd.items()})
    n = int.from_bytes(data[:8], "little")
    return _head(json.loads(data[8:8 + n]), metadata), memoryview(data)[8 + n:]


def replace_metadata(head: bytes, metadata: Mapping[str, str] | None) -> bytes:
    """The header part of `safetensors_parts` with other metadata (the tensor data stays valid)."""
    return _head(json.loads(head[8:]), metadata)


def _head(header: dict, metadata: Mapping[str, str] | None) -> bytes:
    header.pop("__metadata__", None)
    if metadata:
        header = {"__metadata__": {k: str(v) for k, v in sorted(metadata.items())}, **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned, as safetensors does
    return len(text).to_bytes(8, "little") + text


def write_parts(path: str | os.PathLike, head: bytes, body: memoryview) -> None:
    """Write a `safetensors_parts` result atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(head)
        f.write(body)


def save_state_dict(sd: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str] | None = None, extra: dict | None = None) -> None:
    """Write atomically: safetensors (with metadata) by extension, else `torch.save` (with `extra` keys)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == SAFETENSORS_EXT:
            head, body = safetensors_parts(sd, metadata)
            with open(tmp, "wb") as f:
                f.write(head)
                f.write(body)
        else:
            obj = {k: v.detach().contiguous() for k, v in sd.items()}
            if extra:
                obj = {**extra, "state_dict": obj}
            torch.save(obj, tmp)


_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def stream_safetensors(path: str | os.PathLike, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                       tensors: Iterator[torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time, atomically; `tensors` yields in `layout` order.

    The header is known up front from `layout` (key, dtype, shape), so peak memory is one tensor, not a model.
    """
    header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for key, dtype, shape in layout:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data start to 8 bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(max_workers=1) as writer:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        pending = None  # the previous tensor's write runs in the background while the next one is made
        for (key, dtype, shape), t in zip(layout, tensors, strict=True):
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise ValueError(f"stream_safetensors: {key} is {t.dtype} {tuple(t.shape)}, header says {dtype} {shape}")
            data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            if pending is not None:
                pending.result()
            pending = writer.submit(f.write, data)
        if pending is not None:
            pending.result()


def read_ahead(tensors: Mapping[str, torch.Tensor], keys: Iterable[str], depth: int = 2
               ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) in order while a background thread already reads the next `depth` tensors
    (file reads release the GIL, so reading overlaps the caller's work)."""
    keys = iter(keys)
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = collections.deque((k, reader.submit(tensors.__getitem__, k)) for k in itertools.islice(keys, depth))
        while pending:
            key, future = pending.popleft()
            nxt = next(keys, None)
            if nxt is not None:
                pending.append((nxt, reader.submit(tensors.__getitem__, nxt)))
            yield key, future.result()
