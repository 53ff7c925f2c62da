"""Tests for the offline CLIP tokenizers in ``library.tokenizer``."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.tokenizer import VOCAB_DIR, load_clip_tokenizer, load_tokenizers  # noqa: E402

BOS, EOS = 49406, 49407
CAT_IDS = [BOS, 320, 1125, 539, 320, 2368, EOS]
WHEEL = Path("/tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force hub-offline mode and make any outgoing socket connection fail loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_shipped_files_present() -> None:
    assert (VOCAB_DIR / "vocab.json").is_file()
    assert (VOCAB_DIR / "merges.txt").is_file()
    assert (VOCAB_DIR / "LICENSE").is_file()


def test_basic_ids_and_vocab_size() -> None:
    tok = load_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert len(tok) == 49408
    assert tok.bos_token_id == BOS and tok.eos_token_id == EOS
    assert tok.model_max_length == 77
    assert tok.decode(tok("a photo of a cat").input_ids, skip_special_tokens=True) == "a photo of a cat"


@pytest.mark.parametrize(
    ("family", "pads"),
    [("sd1", [EOS]), ("sd2", [0]), ("sdxl", [EOS, 0]), ("SDXL", [EOS, 0])],
)
def test_family_pad_ids(family: str, pads: list[int]) -> None:
    toks = load_tokenizers(family)
    assert [t.pad_token_id for t in toks] == pads
    for tok, pad in zip(toks, pads, strict=True):
        ids = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
        assert len(ids) == 77
        assert ids[: len(CAT_IDS)] == CAT_IDS
        assert ids[len(CAT_IDS) :] == [pad] * (77 - len(CAT_IDS))


def test_unknown_family_and_bad_pad() -> None:
    with pytest.raises(ValueError):
        load_tokenizers("sd3")
    with pytest.raises(ValueError):
        load_clip_tokenizer(pad="<|notatoken|>")


def test_truncation_keeps_bos_and_eos() -> None:
    tok = load_clip_tokenizer()
    ids = tok(" ".join(["cat"] * 200), truncation=True, padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == BOS and ids[-1] == EOS
    assert ids[1:-1] == [2368] * 75


def test_instances_are_independent() -> None:
    a = load_clip_tokenizer()
    a.model_max_length = 5
    b = load_clip_tokenizer()
    assert b.model_max_length == 77 and a is not b
    assert load_clip_tokenizer(model_max_length=225).model_max_length == 225


def _save_diffusers_tokenizer(root: Path, subfolder: str, pad: str, max_len: int) -> None:
    tok = load_clip_tokenizer(pad=pad, model_max_length=max_len)
    tok.save_pretrained(str(root / subfolder))


def test_loads_from_diffusers_folder(tmp_path: Path) -> None:
    _save_diffusers_tokenizer(tmp_path, "tokenizer", "<|endoftext|>", 123)
    (tok,) = load_tokenizers("sd1", diffusers_dir=str(tmp_path))
    assert tok.model_max_length == 123
    assert tok("a photo of a cat").input_ids == CAT_IDS


def test_sdxl_diffusers_folder_uses_both_subfolders(tmp_path: Path) -> None:
    _save_diffusers_tokenizer(tmp_path, "tokenizer", "<|endoftext|>", 111)
    _save_diffusers_tokenizer(tmp_path, "tokenizer_2", "!", 222)
    toks = load_tokenizers("sdxl", diffusers_dir=str(tmp_path))
    assert [t.model_max_length for t in toks] == [111, 222]
    assert [t.pad_token_id for t in toks] == [EOS, 0]


def test_diffusers_folder_without_tokenizer_falls_back(tmp_path: Path) -> None:
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    toks = load_tokenizers("sdxl", diffusers_dir=str(tmp_path))
    assert [t.model_max_length for t in toks] == [77, 77]
    assert [t.pad_token_id for t in toks] == [EOS, 0]
    assert toks[0]("a photo of a cat").input_ids == CAT_IDS


@pytest.mark.skipif(not WHEEL.is_file(), reason="open_clip_torch wheel not available")
def test_build_script_reproduces_shipped_files(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_clip_vocab
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert build_clip_vocab.main(["--wheel", str(WHEEL), "--out", str(tmp_path)]) == 0
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (VOCAB_DIR / name).read_bytes()
