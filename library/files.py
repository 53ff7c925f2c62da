"""Reading and writing state-dict files safely: the one owner of the rules for input and output files.

safetensors is read lazily and checked; `.ckpt`/`.pt` go through `torch.load(weights_only=True)` so a pickle
payload is refused; every tensor read is checked for NaN/Inf (a damaged input never flows into a result).
Output paths are checked before any heavy work (`check_output_file`, `check_output_dir`), and every write goes
to a temporary file renamed into place, so a failed run never leaves a half-written file or clobbers an
existing one.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import math
import mmap as _mmap
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from library.errors import ToolkitError
from library.finite import NarrowingError, cast_for_save, check_finite

SAFETENSORS_EXT = ".safetensors"
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")  # torch.save containers
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ToolkitError(f"{path}: file not found")
    if path.is_dir():
        raise ToolkitError(f"{path}: is a folder, expected a .safetensors or .ckpt file")


def _safetensors_header(path: Path) -> dict:
    """Parse and validate the header, so a truncated or corrupt file fails here with one clear line, and no
    tensor can claim more bytes than the file holds (reading never allocates beyond the file's size)."""
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
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ToolkitError(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ToolkitError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ToolkitError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    spans = sorted(_tensor_span(path, k, v) for k, v in header.items() if k != "__metadata__")
    for (_, e0, k0), (s1, _, k1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ToolkitError(f"{path}: corrupt safetensors header (tensors {k0} and {k1} overlap)")
    end = spans[-1][1] if spans else 0
    if 8 + n + end > size:
        raise ToolkitError(f"{path}: truncated safetensors file ({size} bytes, header promises {8 + n + end})")
    return header


def _tensor_span(path: Path, key: str, info: object) -> tuple[int, int, str]:
    """(start, end, key) of one header entry, after checking its dtype, shape and byte count agree."""
    bad = f"{path}: corrupt safetensors header (tensor {key[:80]}"
    if not isinstance(info, dict):
        raise ToolkitError(f"{bad}: not an object)")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ST_NAMES:
        raise ToolkitError(f"{bad}: unknown dtype {str(dtype)[:20]!r})")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ToolkitError(f"{bad}: shape {str(shape)[:40]} is not a list of sizes)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ToolkitError(f"{bad}: data_offsets {str(offsets)[:40]} are not [start, end])")
    if math.prod(shape) * _ST_NAMES[dtype].itemsize != offsets[1] - offsets[0]:
        raise ToolkitError(f"{bad}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype})")
    return offsets[0], offsets[1], key


class LazySafetensors(Mapping):
    """Read-only mapping over a safetensors file that loads one tensor at a time (streaming merges)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", mmap: bool = True,
                 check_finite: bool = True) -> None:
        """`mmap=False` reads each tensor with plain file reads: the pages of tensors already read do not stay
        mapped, so a pass over a whole checkpoint keeps the resident memory at about one tensor.
        `check_finite` refuses a tensor holding NaN/Inf when it is read (off only for inspection tools)."""
        self.path = Path(path)
        self.check_finite = check_finite
        self.last_bounds: tuple[float, float] | None = None  # (min, max) of the tensor read last, when checked
        _check_exists(self.path)
        header = _safetensors_header(self.path)
        self.metadata: dict[str, str] = header.get("__metadata__") or {}
        self._info = {k: v for k, v in header.items() if k != "__metadata__"}
        if mmap:
            try:
                self._file = safe_open(str(self.path), framework="pt", device=device)
            except Exception as e:  # safetensors raises its own error types on corrupt data
                raise ToolkitError(f"{self.path}: corrupt safetensors file ({_first_line(e)})") from None
        else:
            self._file = None
            self._scratch: torch.Tensor | None = None  # reused by get_as
            self._raw = open(self.path, "rb")  # kept open for the mapping's lifetime
            self._data_start = 8 + int.from_bytes(self._raw.read(8), "little")
            self._map = _private_map(self._raw)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._info:
            raise KeyError(key)
        if self._file is not None:
            try:
                t = self._file.get_tensor(key)
            except Exception as e:  # safetensors raises its own error types on corrupt data
                raise ToolkitError(f"{self.path}: corrupt safetensors file ({_first_line(e)})") from None
            if self.check_finite:
                self.last_bounds = check_finite(t, self.path, key, bounds=False)
            return t
        start, end = self._info[key]["data_offsets"]
        return self._read(key, torch.empty(end - start, dtype=torch.uint8))

    def get_as(self, key: str, dtype: torch.dtype | None,
               cast: Callable[[torch.Tensor, torch.dtype], torch.Tensor] | None = None) -> torch.Tensor:
        """The tensor cast to `dtype` (None: as stored). Without mmap a cast reads straight from a private map of
        the file (or, where there is none, into one reused scratch buffer), so only the cast result is fresh
        memory. `cast(tensor, dtype)` replaces the plain `.to` (fp8 narrowing); it may change the tensor it gets
        in place."""
        if self._file is not None or dtype is None or key not in self._info or self.dtype(key) == dtype \
                or not self.dtype(key).is_floating_point:
            t = self[key]
            if dtype is None or not t.is_floating_point() or t.dtype == dtype:
                return t
            return self._cast_checked(key, t, dtype, cast)
        if self._map is not None:
            return self._cast_mapped(key, dtype, cast)
        start, end = self._info[key]["data_offsets"]
        if self._scratch is None or self._scratch.numel() < end - start:
            self._scratch = None  # free the old one first
            self._scratch = torch.empty(end - start, dtype=torch.uint8)
        return self._cast_checked(key, self._read(key, self._scratch[: end - start], check=False), dtype, cast)

    def _cast_checked(self, key: str, src: torch.Tensor, dtype: torch.dtype,
                      cast: Callable[[torch.Tensor, torch.dtype], torch.Tensor] | None) -> torch.Tensor:
        """`src` cast to `dtype` and checked: the source first where `cast` needs its range (fp8 narrowing),
        else the result (one fast pass). A result that fails where the source passes holds a finite stored value
        beyond the narrower dtype: `NarrowingError`, not the damaged-file error."""
        if cast is not None:
            if self.check_finite:
                self.last_bounds = check_finite(src, self.path, key)
            return cast(src, dtype)
        out = src.to(dtype)
        if self.check_finite:
            try:
                self.last_bounds = check_finite(out, self.path, key, bounds=False)
            except ToolkitError:
                bounds = check_finite(src, self.path, key)  # a NaN or Inf in the file itself: that error
                top = max(-bounds[0], bounds[1]) if isinstance(bounds, tuple) else math.inf
                raise NarrowingError(self.path, key, out.dtype, top) from None
        return out

    def _cast_mapped(self, key: str, dtype: torch.dtype,
                     cast: Callable[[torch.Tensor, torch.dtype], torch.Tensor] | None) -> torch.Tensor:
        """Cast straight from the file's pages (no copy into a buffer first), then drop those pages from this
        process (MADV_DONTNEED): resident memory stays at the cast tensors plus one source tensor."""
        start, end = self._info[key]["data_offsets"]
        first, last = self._data_start + start, self._data_start + end
        if last > len(self._map):
            raise ToolkitError(f"{self.path}: truncated while reading {key}")
        src = torch.frombuffer(self._map, dtype=torch.uint8, count=end - start, offset=first) if end > start \
            else torch.empty(0, dtype=torch.uint8)
        try:
            return self._cast_checked(key, src.view(self.dtype(key)).reshape(self.shape(key)), dtype, cast)
        finally:
            del src
            page = first - first % _mmap.PAGESIZE
            if last > page:
                self._map.madvise(_mmap.MADV_DONTNEED, page, last - page)

    def _read(self, key: str, buf: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Read `key`'s bytes into `buf` (uint8, exactly its size) as a tensor viewing `buf`; checked finite (the
        fast check: `last_bounds` may be left None) unless `check=False` (the caller checks)."""
        start, end = self._info[key]["data_offsets"]
        self._raw.seek(self._data_start + start)
        if self._raw.readinto(buf.numpy()) != end - start:
            raise ToolkitError(f"{self.path}: truncated while reading {key}")
        t = buf.view(self.dtype(key)).reshape(self.shape(key))
        if check and self.check_finite:
            self.last_bounds = check_finite(t, self.path, key, bounds=False)
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __contains__(self, key: object) -> bool:  # Mapping's default would read the tensor
        return key in self._info

    def close(self) -> None:
        """Close the file now (otherwise it closes when the mapping is garbage-collected)."""
        if self._file is None:
            if self._map is not None:
                self._map.close()
                self._map = None
            self._raw.close()
            self._scratch = None

    def __len__(self) -> int:
        return len(self._info)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._info[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return _ST_NAMES[self._info[key]["dtype"]]


def _private_map(raw) -> _mmap.mmap | None:  # noqa: ANN001 - an open binary file
    """A copy-on-write map of the whole file for casting tensors straight from its pages, where pages can be
    dropped after use (MADV_DONTNEED: Linux, macOS); None elsewhere (plain reads then)."""
    if not hasattr(_mmap, "MADV_DONTNEED"):
        return None
    try:
        return _mmap.mmap(raw.fileno(), 0, access=_mmap.ACCESS_COPY)
    except (OSError, ValueError):  # an empty file, or one that cannot be mapped
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _torch_load(path: Path, mmap: bool) -> object:
    """torch.load; with mmap, None when the file is not in the zip format (mmap needs it)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as e:
        if mmap and "mmap" in str(e):
            return None
        raise


def _load_torch(path: Path, finite: bool = True) -> dict[str, torch.Tensor]:
    try:  # mmap keeps a large zip-format .ckpt out of memory until each tensor is used
        obj = _torch_load(path, mmap=True)
        if obj is None:  # outside the handler: what the first attempt read is freed before the second starts
            obj = _torch_load(path, mmap=False)
    except pickle.UnpicklingError as e:
        raise ToolkitError(f"{path}: refused to load: the file holds more than plain tensors ({_first_line(e)})"
                           ) from None
    except Exception as e:  # a damaged zip or pickle surfaces as many error types; weights_only keeps it safe
        raise ToolkitError(f"{path}: not a readable .ckpt/.pt file ({_first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ToolkitError(f"{path}: expected a state dict, found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if finite:
        for k, v in tensors.items():
            check_finite(v, path, k)
    return tensors


def is_safetensors(path: Path) -> bool:
    """A `.safetensors` name, or (any other name) content that starts like one: an 8-byte header length, then
    `{`. A renamed or extension-less safetensors file is read as what it is, not reported as a broken pickle."""
    if path.suffix.lower() == SAFETENSORS_EXT:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100 * 2**20


def load_state_dict(path: str | os.PathLike, lazy: bool = False, check_finite: bool = True
                    ) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """Load a `.safetensors` (lazily if asked) or `.ckpt`/`.pt`/`.pth` state dict; returns (tensors, metadata).

    Every tensor is checked for NaN/Inf as it is read unless `check_finite` is False (inspection tools)."""
    path = Path(path)
    _check_exists(path)
    if is_safetensors(path):
        if lazy:
            lazy_sd = LazySafetensors(path, check_finite=check_finite)
            return lazy_sd, lazy_sd.metadata
        # plain reads, not mmap: the tensors are the only copy of the data in memory (mapped pages would be a second)
        reader = LazySafetensors(path, mmap=False, check_finite=check_finite)
        try:
            return {k: reader[k] for k in reader}, reader.metadata
        finally:
            reader.close()
    return _load_torch(path, check_finite), {}


def open_streaming(path: str | os.PathLike) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """A state dict for one pass, tensor by tensor: safetensors read without mmap (resident memory stays at about
    one tensor), `.ckpt`/`.pt` loaded whole. Returns (tensors, metadata)."""
    path = Path(path)
    _check_exists(path)
    if is_safetensors(path):
        tensors = LazySafetensors(path, mmap=False)
        return tensors, tensors.metadata
    return _load_torch(path), {}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file ({} for other formats)."""
    path = Path(path)
    _check_exists(path)
    if not is_safetensors(path):
        return {}
    return _safetensors_header(path).get("__metadata__") or {}


def check_input_file(path: str | os.PathLike, option: str) -> Path:
    """An input weights file, checked before any model loads: present, a file (not a folder), and (safetensors)
    a valid header. The message starts with the option that named it."""
    p = Path(path)
    if not p.exists():
        raise ToolkitError(f"{option} {p}: file not found")
    if p.is_dir():
        raise ToolkitError(f"{option} {p}: is a folder; give the file (.safetensors)")
    try:
        read_metadata(p)
    except ToolkitError as e:
        raise ToolkitError(f"{option} {e}") from None
    return p


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_dir(folder: str | os.PathLike, option: str, shown: str | os.PathLike | None = None) -> Path:
    """Refuse, before any heavy work, an output folder that cannot be used: a file, a path below a file, or a
    folder (or the nearest existing parent of one still to be created) where no file can be written.
    `shown` is the path the message names (the output file, when its folder is checked)."""
    folder = Path(folder) if str(folder) else Path(".")
    shown = folder if shown is None else shown
    if folder.exists() and not folder.is_dir():
        raise ToolkitError(f"{option} {shown}: {folder} is a file, not a folder" if shown != folder else
                           f"{option} {folder}: is a file, not a folder")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ToolkitError(f"{option} {shown}: {existing} is a file, so no folder can be made below it")
    try:  # a real write: permission bits alone say nothing for root, read-only mounts or full quotas
        with tempfile.TemporaryFile(dir=existing, prefix=".write-test."):
            pass
    except OSError as e:
        where = "folder" if existing == shown else f"folder {existing}, where it would be created,"
        raise ToolkitError(f"{option} {shown}: {where} is not writable ({e.strerror or e})") from None
    return folder


def _refuse_inputs(path: Path, option: str, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    for input_option, source in inputs:
        if source and (_same_path(path, Path(source)) or Path(source).resolve() in path.resolve().parents):
            raise ToolkitError(f"{option} {path}: is also the input {input_option} (or inside it); write "
                               "somewhere else (the input would be replaced)")


def check_weights_suffix(path: str | os.PathLike, option: str | None = None) -> None:
    """A weights file's name must say its container: `.safetensors`, or `.ckpt`/`.pt`/`.pth`/`.bin` for a torch
    pickle (`out.txt` would be a pickle no reader expects)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != SAFETENSORS_EXT and suffix not in PICKLE_EXTS:
        where = f"{option} {path}" if option else str(path)
        raise ToolkitError(f"{where}: the extension {suffix or '(none)'} does not say the format; name it "
                           f"{path.with_suffix(SAFETENSORS_EXT).name} (or .ckpt/.pt for a torch pickle)")


def check_output_file(path: str | os.PathLike, option: str,
                      inputs: Iterable[tuple[str, str | os.PathLike | None]] = (), weights: bool = False) -> Path:
    """The one output-file rule, checked before any heavy work: not a folder, not one of the `inputs`
    ((option, path) pairs), and its folder exists or can be created and is writable; `weights`: a name that says
    the container (`check_weights_suffix`). The file itself is replaced only by a finished output (`atomic_path`)."""
    path = Path(path)
    if not str(path) or path.is_dir():
        raise ToolkitError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'out.safetensors'}")
    if weights:
        check_weights_suffix(path, option)
    _refuse_inputs(path, option, inputs)
    check_output_dir(path.parent, option, shown=path)
    return path


def check_output_folder(path: str | os.PathLike, option: str,
                        inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """The same rule for an output that is a whole folder (a Diffusers model): absent or empty, not an input,
    and creatable; it is written by `atomic_dir`."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ToolkitError(f"{option} {path}: output folder exists and is not empty")
    _refuse_inputs(path, option, inputs)
    check_output_dir(path.parent, option, shown=path)
    return path


def _normal_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same extension, so writers that choose the format by extension
    still do); rename it into place only if the block succeeds, with the usual permissions (0666 less the
    umask) whoever created the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _normal_mode())  # mkstemp makes 0600, and so may a third-party writer
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _name_the_output(e, tmp, path)
        raise


def _name_the_output(e: BaseException, tmp: str, path: Path) -> None:
    """Make an error raised while writing the hidden temporary file name the user's output instead (a full disk,
    a value out of range): the temporary name means nothing to the user and no longer exists."""
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) == tmp:
        e.filename = str(path)
    elif isinstance(e, ToolkitError) and e.args and tmp in str(e.args[0]):
        e.args = (str(e.args[0]).replace(tmp, str(path)), *e.args[1:])


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path` (absent or an empty folder); it becomes `path` only if the block
    succeeds, and is removed otherwise."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ToolkitError(f"{path}: output folder exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, _normal_mode() | 0o111)  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (JSON, TOML) atomically, UTF-8 with LF line endings."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8", newline="\n")


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
                    metadata: dict[str, str] | None = None, extra: dict | None = None,
                    dtype: torch.dtype | None = None) -> None:
    """Write atomically: safetensors (with metadata) by extension, else `torch.save` (with `extra` keys).
    Floating tensors are cast to `dtype` (None: as they are) by `cast_for_save`, which refuses values that
    would be NaN or Inf in the file."""
    path = Path(path)
    check_weights_suffix(path)
    sd = {k: cast_for_save(v, dtype, path, k) for k, v in sd.items()}
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




def stream_safetensors(path: str | os.PathLike, layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
                       tensors: Iterator[torch.Tensor], metadata: dict[str, str] | None = None,
                       shown: str | os.PathLike | None = None) -> None:
    """Write a safetensors file one tensor at a time, atomically; `tensors` yields in `layout` order, each cast
    to its layout dtype by `cast_for_save` (which refuses values that would be NaN or Inf in the file).

    The header is known up front from `layout` (key, dtype, shape), so peak memory is one tensor, not a model.
    `shown`: the path errors name (the user's output, when `path` lies in a temporary folder).
    """
    shown = path if shown is None else shown
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
            t = cast_for_save(t, dtype, shown, key)
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"stream_safetensors: {key} is {tuple(t.shape)}, header says {shape}")
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
