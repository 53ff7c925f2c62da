"""On-disk cache of base-weight norms (Frobenius and spectral), one JSON file per checkpoint.

Computing the spectral norm of every base weight means reading most of a multi-GB checkpoint; the values
never change for a given file, so they are kept in `<cache dir>/<sha256 of the checkpoint path>.json`
together with the checkpoint's identity (path, size, mtime and a hash of its header and of a few sampled
data windows). A cache whose identity does not match is stale and rebuilt; an unreadable one is rebuilt
with a warning. The cache dir is `$LORA_TOOLKIT_CACHE/norms`, else `$XDG_CACHE_HOME/sd-lora-toolkit/norms`,
else `~/.cache/sd-lora-toolkit/norms`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from library.files import atomic_path

log = logging.getLogger(__name__)

VERSION = 1
APP_DIR = "sd-lora-toolkit"
_WINDOW = 1 << 16


def default_cache_dir() -> Path:
    """Where norms are cached unless `--cache_dir` says otherwise."""
    if os.environ.get("LORA_TOOLKIT_CACHE"):
        return Path(os.environ["LORA_TOOLKIT_CACHE"]) / "norms"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / APP_DIR / "norms"


def checkpoint_identity(path: str | os.PathLike) -> dict:
    """Path, size, mtime and a content fingerprint (header + three 64 KiB data windows) of a file."""
    path = Path(path).resolve()
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        header_len = 8 + n if 0 < n < min(st.st_size, 100 << 20) else min(st.st_size, 1 << 20)
        f.seek(0)
        h.update(f.read(header_len))
        for offset in (header_len, header_len + (st.st_size - header_len) // 2, max(header_len, st.st_size - _WINDOW)):
            f.seek(offset)
            h.update(f.read(_WINDOW))
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "fingerprint": h.hexdigest()}


class NormsCache:
    """Norm values by weight id (checkpoint key, with `[a:b]` for a row slice) for one checkpoint."""

    def __init__(self, checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.identity = checkpoint_identity(checkpoint)
        name = hashlib.sha256(self.identity["path"].encode()).hexdigest()[:24] + ".json"
        self.file = Path(cache_dir) / name if cache_dir else default_cache_dir() / name
        self.values: dict[str, dict[str, float]] = {}
        self.dirty = False
        self.loaded_from_disk = False
        if enabled:
            self._load()

    def _load(self) -> None:
        if not self.file.exists():
            return
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("norms"), dict):
                raise ValueError("unexpected layout")
            norms = {k: {n: float(x) for n, x in v.items()} for k, v in data["norms"].items()}
        except (OSError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
            log.warning("norms cache %s is unreadable (%s): rebuilding it", self.file, e)
            self.dirty = True
            return
        if data.get("version") != VERSION or data.get("identity") != self.identity:
            log.info("norms cache %s is stale (checkpoint changed or another file): rebuilding it", self.file)
            self.dirty = True
            return
        self.values = norms
        self.loaded_from_disk = True
        log.info("norms cache: %d base weights read from %s", len(norms), self.file)

    def get(self, weight_id: str, kind: str) -> float | None:
        return self.values.get(weight_id, {}).get(kind)

    def put(self, weight_id: str, kind: str, value: float) -> None:
        self.values.setdefault(weight_id, {})[kind] = float(value)
        self.dirty = True

    def save(self) -> None:
        """Write the cache atomically if anything was added (a failure to write only warns)."""
        if not (self.enabled and self.dirty):
            return
        data = {"version": VERSION, "identity": self.identity, "norms": self.values}
        try:
            with atomic_path(self.file) as tmp:
                tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        except OSError as e:
            log.warning("could not write norms cache %s (%s)", self.file, e)
            return
        self.dirty = False
        log.info("norms cache: %d base weights written to %s", len(self.values), self.file)
