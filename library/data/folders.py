"""DreamBooth folders: `<repeats>_<class tokens>` sub-folders, their images, and the caption next to each image."""

from __future__ import annotations

import logging
from pathlib import Path

from library.errors import ToolkitError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def glob_images(folder: Path) -> list[Path]:
    """Images directly in `folder` (no recursion), sorted by name; extensions matched case-insensitively."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def parse_subset_folder(name: str) -> tuple[int, str] | None:
    """`10_sks dog` -> (10, "sks dog"); None when the part before the first `_` is not a number."""
    head, sep, rest = name.partition("_")
    if not sep:
        return None
    try:
        return int(head), rest
    except ValueError:
        return None


def dreambooth_subsets(parent: Path, option: str) -> list[tuple[Path, int, str]]:
    """(folder, repeats, class tokens) of each `N_name` sub-folder of `parent` (`option` names it in errors)."""
    if not parent.exists():
        raise ToolkitError(f"{option} {parent}: folder not found")
    if not parent.is_dir():
        raise ToolkitError(f"{option} {parent}: not a folder")
    found, skipped = [], []
    for sub in sorted(p for p in parent.iterdir() if p.is_dir()):
        parsed = parse_subset_folder(sub.name)
        if parsed is None:
            log.warning("%s: skipping folder %r: its name must be '<repeats>_<class tokens>', e.g. '10_%s'",
                        option, sub.name, sub.name)
            skipped.append(sub.name)
            continue
        repeats, tokens = parsed
        if repeats < 1:
            log.warning("%s: skipping folder %r: repeats must be at least 1", option, sub.name)
            continue
        found.append((sub, repeats, tokens))
    if not found:
        if skipped:
            raise ToolkitError(f"{option} {parent}: no '<repeats>_<name>' folders; found {skipped[0]!r}: rename it "
                               f"to e.g. '10_{skipped[0]}' (the number is how often each image repeats per epoch)")
        if glob_images(parent):
            raise ToolkitError(f"{option} {parent}: images must be in '<repeats>_<name>' sub-folders, e.g. "
                               f"{parent / '10_mychar'}; give the parent of those folders")
        raise ToolkitError(f"{option} {parent}: no '<repeats>_<name>' image folders inside")
    return found


def read_caption(image: Path, caption_extension: str) -> str | None:
    """Text of the caption file next to `image` (face-crop names fall back to the stem without 4 parts)."""
    candidates = [image.with_name(image.stem + caption_extension)]
    parts = image.stem.split("_")
    if len(parts) >= 5:
        candidates.append(image.with_name("_".join(parts[:-4]) + caption_extension))
    for path in candidates:
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ToolkitError(f"{path}: caption file is not UTF-8 text") from None
            if not text.strip():
                log.warning("%s: empty caption file", path)
            return text
    return None
