"""Generate the Hugging Face CLIP tokenizer files (vocab.json, merges.txt) from the original CLIP BPE table.

The toolkit ships these files so that tokenizers can be built without touching a model hub. The input is the
``bpe_simple_vocab_16e6.txt.gz`` table released with OpenAI CLIP (MIT); it can be given directly or read out of an
``open_clip_torch`` wheel, which bundles it. The output is byte-for-byte deterministic for a given input.

Usage:
    python tools/build_clip_vocab.py --wheel /path/open_clip_torch-3.3.0-py3-none-any.whl
    python tools/build_clip_vocab.py --bpe /path/bpe_simple_vocab_16e6.txt.gz [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.files import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)

WHEEL_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "library" / "tokenizer" / "clip_vocab"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # byte tokens, byte tokens with </w>, two specials


def byte_alphabet() -> list[str]:
    """Return the 256 printable stand-ins used by byte-level BPE, ordered as CLIP orders its base vocabulary.

    Bytes that are already visible, non-space characters keep their own code point; the rest are mapped, in byte
    order, onto code points 256, 257, ... so every byte has a printable single-character representative.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in visible]
    extra = 0
    for b in range(256):
        if b not in visible:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def read_bpe_table(wheel: Path | None = None, bpe: Path | None = None) -> str:
    """Read and decompress the CLIP BPE table from a wheel or from the ``.txt.gz`` file itself."""
    if bpe is not None:
        raw = bpe.read_bytes()
    elif wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(WHEEL_MEMBER)
    else:
        raise ValueError("give either a wheel or a bpe .txt.gz path")
    return gzip.decompress(raw).decode("utf-8")


def build_vocab(table: str) -> tuple[dict[str, int], list[str]]:
    """Build the token->id mapping and the ordered merge list from the decompressed BPE table.

    Line 0 of the table is a header; the next ``NUM_MERGES`` lines are the merges CLIP actually uses.
    """
    lines = table.split("\n")
    merges = lines[1 : 1 + NUM_MERGES]
    if len(merges) != NUM_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ValueError("unexpected BPE table layout")
    base = byte_alphabet()
    tokens = base + [c + "</w>" for c in base] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} unique tokens, got {len(vocab)}")
    return vocab, merges


def write_files(vocab: dict[str, int], merges: list[str], out_dir: Path) -> list[Path]:
    """Write ``vocab.json`` and ``merges.txt`` (UTF-8, LF line endings) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_path = out_dir / "vocab.json"
    merges_path = out_dir / "merges.txt"
    vocab_text = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n"
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    for path, text in ((vocab_path, vocab_text), (merges_path, merges_text)):
        with atomic_path(path) as tmp:
            tmp.write_bytes(text.encode("utf-8"))
    return [vocab_path, merges_path]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--wheel", type=Path, help="open_clip_torch wheel containing the BPE table")
    src.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    vocab, merges = build_vocab(read_bpe_table(wheel=args.wheel, bpe=args.bpe))
    for path in write_files(vocab, merges, args.out):
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
