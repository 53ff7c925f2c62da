"""Prompt embeddings (library.generate.text) against Diffusers' own encode_prompt, long prompts, clip_skip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.generate.pipeline import build_pipeline  # noqa: E402
from library.generate.text import PromptEncoder, chunk_ids, parse_emphasis  # noqa: E402
from library.models.factory import random_bundle  # noqa: E402

BOS, EOS = 49406, 49407
LONG = " ".join(["red"] * 100)  # 100 tokens: two windows


@pytest.fixture(scope="module")
def bundles():  # noqa: ANN201
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and robust to a busy CPU
    yield {f: random_bundle(f) for f in ("sd1", "sd2", "sdxl")}
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_short_prompt_matches_diffusers(bundles, family) -> None:  # noqa: ANN001
    bundle = bundles[family]
    pipe = build_pipeline(bundle)
    pos, neg = PromptEncoder(bundle).encode(["a red circle on blue"], ["blurry"])
    with torch.no_grad():
        ref = pipe.encode_prompt("a red circle on blue", device="cpu", num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, negative_prompt="blurry")
    torch.testing.assert_close(pos.embeds, ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(neg.embeds, ref[1], rtol=0, atol=1e-6)
    if family == "sdxl":
        torch.testing.assert_close(pos.pooled, ref[2], rtol=0, atol=1e-6)
        torch.testing.assert_close(neg.pooled, ref[3], rtol=0, atol=1e-6)
        assert pos.embeds.shape == (1, 77, 64)


def test_clip_skip_is_penultimate_layer_with_final_norm(bundles) -> None:  # noqa: ANN001
    # (Diffusers' own clip_skip reads `text_encoder.text_model`, which transformers 5 no longer has)
    bundle = bundles["sd1"]
    te, tok = bundle.text_encoders[0], bundle.tokenizers[0]
    pos, _ = PromptEncoder(bundle, clip_skip=2).encode(["a cat"], [""])
    ids = tok("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
        ref = te.final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(pos.embeds, ref, rtol=0, atol=1e-6)
    assert (pos.embeds - out.last_hidden_state).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_long_prompt_chunks(bundles, family, caplog) -> None:  # noqa: ANN001
    bundle = bundles[family]
    width = 64 if family == "sdxl" else 32
    long2 = LONG + " blue"  # differs only after token 75
    enc = PromptEncoder(bundle, max_embeddings_multiples=3)
    pos, neg = enc.encode([LONG, long2], ["", ""])
    assert pos.embeds.shape == (2, 2 * 75 + 2, width) and neg.embeds.shape == pos.embeds.shape
    # the first window (BOS + 75 tokens) does not see later tokens; the second window does
    torch.testing.assert_close(pos.embeds[0, :76], pos.embeds[1, :76], rtol=0, atol=0)
    assert (pos.embeds[0, 76:] - pos.embeds[1, 76:]).abs().max() > 1e-4
    # without multiples the prompt is cut at 75 tokens, with a warning
    cut, _ = PromptEncoder(bundle).encode([LONG, long2], ["", ""])
    assert cut.embeds.shape == (2, 77, width)
    torch.testing.assert_close(cut.embeds[0], cut.embeds[1], rtol=0, atol=0)
    assert any("tokens" in r.getMessage() for r in caplog.records)


def test_chunk_ids_windows() -> None:
    ids = list(range(1000, 1100))  # 100 content tokens
    sd1 = chunk_ids(ids, 2, BOS, EOS, EOS)
    assert sd1.shape == (2, 77)
    assert sd1[0].tolist() == [BOS, *ids[:75], EOS]
    assert sd1[1].tolist() == [BOS, *ids[75:], *[EOS] * 51]
    sd2 = chunk_ids(ids, 2, BOS, EOS, 0)  # <PAD> = 0: windows cut in the text still end with EOS
    assert sd2[0].tolist() == [BOS, *ids[:75], EOS]
    assert sd2[1].tolist() == [BOS, *ids[75:], EOS, *[0] * 50]
    empty = chunk_ids(ids[:10], 2, BOS, EOS, 0)[1].tolist()  # a window past the text: <BOS> <EOS> <PAD>...
    assert empty[:3] == [BOS, EOS, 0]
    assert chunk_ids(list(range(200)), 2, BOS, EOS, EOS)[1, -1] == EOS  # truncated text still ends with EOS


def test_emphasis_parsing() -> None:
    assert parse_emphasis("a cat") == [("a cat", 1.0)]
    assert parse_emphasis("a (cat)") == [("a ", 1.0), ("cat", pytest.approx(1.1))]
    assert parse_emphasis("((cat))")[0][1] == pytest.approx(1.21)
    assert parse_emphasis("[dog] x") == [("dog", pytest.approx(1 / 1.1)), (" x", 1.0)]
    assert parse_emphasis("(cat:1.5) and (dog:.5)") == [("cat", 1.5), (" and ", 1.0), ("dog", 0.5)]
    assert parse_emphasis(r"\(literal\) at 12:30") == [("(literal) at 12:30", 1.0)]
    assert parse_emphasis("(unclosed") == [("unclosed", pytest.approx(1.1))]
    assert parse_emphasis("a (b [c] d)") == [("a ", 1.0), ("b ", pytest.approx(1.1)), ("c", pytest.approx(1.0)),
                                              (" d", pytest.approx(1.1))]


def test_emphasis_embeddings(bundles) -> None:  # noqa: ANN001
    enc = PromptEncoder(bundles["sd1"])
    (plain, _), (neutral, _), (strong, _) = (enc.encode([p], [""]) for p in
                                             ("a red cat", "a (red:1.0) cat", "a (red:1.5) cat"))
    torch.testing.assert_close(neutral.embeds, plain.embeds, rtol=0, atol=0)  # weight 1 is the plain prompt
    assert (strong.embeds - plain.embeds).abs().max() > 1e-3
    torch.testing.assert_close(strong.embeds.mean(), plain.embeds.mean(), rtol=1e-4, atol=1e-6)  # mean restored
