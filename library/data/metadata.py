"""Fine-tuning metadata datasets: sd-scripts' metadata JSON (`--in_json`, dataset TOML `metadata_file`), read into
training records and written by the `finetune/` tools.

The file maps an image key to its entry: `{"<key>": {"caption": "...", "tags": "...", "train_resolution": [w, h],
"image_size": [w, h]}}`. A key is the image's stem (the tools' default: the image lies in the subset's `image_dir`),
a path relative to `image_dir`, or an absolute path (`--full_path`). A `.jsonl` file holds one
`{"image_path", "caption", "tags", "image_size"}` object per line (sd-scripts' optional form). `caption` and `tags`
join as sd-scripts joins them: `caption + caption_separator + tags` (with `enable_wildcard`, tags follow every line).
Precomputed latents are `<image stem>.npz` beside the image (prepare_buckets_latents.py, sd-scripts' keys).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from library.data.folders import IMAGE_EXTENSIONS, glob_images
from library.errors import ToolkitError
from library.files import check_output_file, write_text_atomic

log = logging.getLogger(__name__)


def read_metadata(path: Path, what: str = "metadata_file") -> dict[str, dict]:
    """The entries of a metadata `.json` (or `.jsonl`) file, key -> dict; refused with one line when malformed."""
    if not path.is_file():
        raise ToolkitError(f"{what} {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".jsonl":
            data = {}
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                if not isinstance(item, dict) or "image_path" not in item:
                    raise ToolkitError(f"{what} {path}: line {n}: expected an object with \"image_path\"")
                data[str(item["image_path"])] = {k: item[k] for k in ("caption", "tags", "image_size") if k in item}
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{what} {path}: not a valid JSON file: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ToolkitError(f"{what} {path}: expected an object mapping each image to its entry "
                           "({\"img001\": {\"caption\": \"...\"}, ...})")
    return data


def write_metadata(path: Path, metadata: dict[str, dict]) -> None:
    """Write a metadata file as sd-scripts does (JSON, indent 2), atomically."""
    write_text_atomic(path, json.dumps(metadata, indent=2))


def image_key(image: Path, full_path: bool) -> str:
    """The key the finetune tools use for an image: its stem, or its whole path with `--full_path`."""
    return str(image) if full_path else image.stem


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The images of a folder (and its sub-folders with `recursive`), sorted."""
    if not recursive:
        return glob_images(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageResolver:
    """Finds the image file of a metadata key: a file path as given, or a stem matched in its folder."""

    def __init__(self, image_dir: Path | None, source: Path) -> None:
        self.image_dir, self.source = image_dir, source
        self._stems: dict[Path, dict[str, Path]] = {}

    def _by_stem(self, folder: Path) -> dict[str, Path]:
        if folder not in self._stems:
            index: dict[str, Path] = {}
            for p in glob_images(folder) if folder.is_dir() else []:
                index.setdefault(p.stem, p)
            self._stems[folder] = index
        return self._stems[folder]

    def __call__(self, key: str) -> Path | None:
        path = Path(key)
        if not path.is_absolute():
            if self.image_dir is None:
                raise ToolkitError(f"{self.source}: key {key!r} is not an absolute path: give the subset an "
                                   "image_dir (or --train_data_dir with --in_json)")
            path = self.image_dir / key
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            return path
        return self._by_stem(path.parent).get(path.name)


def entry_caption(entry: dict, separator: str, wildcard: bool) -> str:
    """The caption an entry trains with: `caption` and `tags` joined by the caption separator (sd-scripts)."""
    caption = entry.get("caption") or ""
    tags = entry.get("tags")
    if not isinstance(caption, str) or (tags is not None and not isinstance(tags, str)):
        raise ValueError("caption and tags must be strings")
    if wildcard:
        if tags is not None:
            tags = tags.replace("\n", separator)
            caption = "\n".join(f"{line}{separator}{tags}" for line in caption.split("\n") if line.strip())
        return caption
    if tags:
        caption = (caption + separator if caption else "") + tags
    return caption


def entry_size(entry: dict) -> tuple[int, int] | None:
    """`image_size` [w, h] when the entry gives it (saves reading the image header)."""
    size = entry.get("image_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


@dataclass(frozen=True)
class MetadataImage:
    """One usable entry of a metadata file: the image, its caption, its size when the file gives it, and the
    bucket prepare_buckets_latents.py chose for it (`train_resolution`)."""

    path: Path
    caption: str
    size: tuple[int, int] | None
    train_resolution: tuple[int, int] | None


def metadata_images(metadata_file: Path, image_dir: Path | None, separator: str = ",",
                    wildcard: bool = False) -> list[MetadataImage]:
    """The entries of a metadata file whose image exists, sorted by image path (entries without one are
    skipped with a warning: they may be latents-only leftovers)."""
    metadata = read_metadata(metadata_file)
    resolve = ImageResolver(image_dir, metadata_file)
    out, missing = [], []
    for key, entry in metadata.items():
        path = resolve(key)
        if path is None:
            missing.append(key)
            continue
        try:
            caption = entry_caption(entry, separator, wildcard)
        except ValueError as e:
            raise ToolkitError(f"{metadata_file}: {key!r}: {e}") from None
        reso = entry.get("train_resolution")
        reso = (int(reso[0]), int(reso[1])) if isinstance(reso, (list, tuple)) and len(reso) == 2 else None
        out.append(MetadataImage(path, caption, entry_size(entry), reso))
    if missing:
        log.warning("%s: %d of %d entries have no image (e.g. %r in %s); skipped", metadata_file, len(missing),
                    len(metadata), missing[0], image_dir or "their folder")
    return sorted(out, key=lambda m: str(m.path))


def merge_texts(train_data_dir: Path, out_json: Path, in_json: Path | None, field: str, caption_extension: str,
                full_path: bool = False, recursive: bool = False) -> dict[str, dict]:
    """Put each image's text file (`<stem><caption_extension>`) into the metadata as `field` ("caption" or "tags");
    the finetune merge tools. Starts from `in_json`, or `out_json` when it exists; returns what was written."""
    if recursive and not full_path:
        raise ToolkitError("--recursive needs --full_path (keys of images in sub-folders must be paths)")
    if not train_data_dir.is_dir():
        raise ToolkitError(f"train_data_dir {train_data_dir}: folder not found")
    check_output_file(out_json, "out_json")
    source = in_json if in_json is not None else (out_json if out_json.is_file() else None)
    metadata = read_metadata(source, "--in_json") if source is not None else {}
    if source is not None:
        log.info("adding %s to %s (existing %s are replaced)", field, source, field)
    images = find_images(train_data_dir, recursive)
    log.info("found %d images in %s", len(images), train_data_dir)
    missing = 0
    for image in images:
        text_file = image.with_suffix(caption_extension)
        if not text_file.is_file():
            missing += 1
            log.warning("%s: no %s file; not in the metadata's %s", image, caption_extension, field)
            continue
        try:
            text = text_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise ToolkitError(f"{text_file}: not UTF-8 text") from None
        metadata.setdefault(image_key(image, full_path), {})[field] = text
        log.debug("%s: %s", image.name, text)
    write_metadata(out_json, metadata)
    log.info("wrote %s (%d entries; %d images without a %s file)", out_json, len(metadata), missing,
             caption_extension)
    return metadata
