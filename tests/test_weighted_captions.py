"""--weighted_captions on the tiny SD1/SD2/SDXL text encoders: plain captions give exactly the unweighted conditioning,
`(sks:1.0)` exactly the plain caption's, `(sks:1.5)` scales only the tokens it covers, long captions keep their
weights per chunk; a short run trains with it; refused together with --cache_text_encoder_outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fixtures import base_args  # noqa: E402

import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402
from library.generate.text import content_ids  # noqa: E402
from library.models.factory import random_bundle  # noqa: E402
from library.train.text import TextConditioner  # noqa: E402

CAPTION = "sks circle, red, on blue background"


@pytest.fixture(scope="module")
def bundles():  # noqa: ANN201
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {f: random_bundle(f) for f in ("sd1", "sd2")}
    torch.set_num_threads(before)


def _conditioners(bundle, max_token_length=None, clip_skip=None):  # noqa: ANN001, ANN202
    tok, te = bundle.tokenizers[0], bundle.text_encoders[0]
    return (TextConditioner(tok, te, clip_skip, max_token_length),
            TextConditioner(tok, te, clip_skip, max_token_length, weighted=True))


@pytest.mark.parametrize("family, max_token_length, clip_skip", [("sd1", None, None), ("sd1", 150, 2),
                                                                 ("sd2", None, None), ("sd2", 225, None)])
@torch.no_grad()
def test_plain_and_unit_weight_captions_are_exactly_unweighted(bundles, family, max_token_length, clip_skip):
    plain, weighted = _conditioners(bundles[family], max_token_length, clip_skip)
    long = ", ".join(["red circle"] * 40)  # past 75 tokens: several chunks
    captions = [CAPTION, "", long]
    ref = plain(captions)
    assert torch.equal(weighted(captions), ref)
    assert torch.equal(weighted(["(sks:1.0) circle, red, on blue background", "", long]), ref)


@torch.no_grad()
def test_weight_scales_only_the_tokens_it_covers(bundles):
    plain, weighted = _conditioners(bundles["sd1"])
    tok = bundles["sd1"].tokenizers[0]
    n_sks = len(content_ids(tok, "sks"))
    ref = plain([CAPTION])[0]
    out = weighted(["(sks:1.5) circle, red, on blue background"])[0]
    covered = torch.zeros(out.shape[0], dtype=torch.bool)
    covered[1:1 + n_sks] = True  # after BOS
    assert torch.allclose(out[covered], ref[covered] * 1.5, rtol=1e-6, atol=1e-6)
    assert torch.equal(out[~covered], ref[~covered])
    emphasis = weighted(["(sks) circle, [red], on blue background"])[0]
    assert torch.allclose(emphasis[1:1 + n_sks], ref[1:1 + n_sks] * 1.1, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(emphasis, ref)


@torch.no_grad()
def test_weights_follow_their_chunk_in_long_captions(bundles):
    plain, weighted = _conditioners(bundles["sd1"], 150)
    tok = bundles["sd1"].tokenizers[0]
    head = ", ".join(["red circle"] * 30)
    n_head = len(content_ids(tok, head + ","))
    assert 75 < n_head < 148
    ref = plain([f"{head}, sks"])[0]
    out = weighted([f"{head}, (sks:2)"])[0]
    n_sks = len(content_ids(tok, "sks"))
    pos = 1 + n_head  # joined layout: BOS, 75 tokens of chunk 1, 75 of chunk 2, EOS
    assert torch.allclose(out[pos:pos + n_sks], ref[pos:pos + n_sks] * 2, rtol=1e-6, atol=1e-6)
    rest = torch.ones(out.shape[0], dtype=torch.bool)
    rest[pos:pos + n_sks] = False
    assert torch.equal(out[rest], ref[rest])


@pytest.mark.parametrize("script", ["train_network", "sdxl_train_network"])
def test_refused_with_cached_text_encoder_outputs(capsys, script):
    main = __import__(script).main
    for option in ("--cache_text_encoder_outputs", "--cache_text_encoder_outputs_to_disk"):
        assert run_main(main, ["--weighted_captions", option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --weighted_captions and {option} exclude each other: give one of them"]


def test_training_reads_weighted_captions(tmp_path):
    from safetensors.torch import load_file

    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset

    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors", "sd1")
    runs = {}
    for name, text, flag in (("plain", "sks circle", []), ("unit", "(sks:1.0) circle", ["--weighted_captions"]),
                             ("weighted", "(sks:1.3) circle", ["--weighted_captions"])):
        img = make_sample_dataset(tmp_path / name, num_images=2, resolution=64, seed=0)
        for cap in (img / "10_sks circle").glob("*.caption"):
            cap.write_text(cap.read_text().replace("sks circle", text), encoding="utf-8")
        env = {"ckpt": ckpt, "img": img}
        runs[name] = load_file(train_network.main(base_args(env, tmp_path / f"o-{name}", 2, *flag)))
    assert all(torch.equal(runs["plain"][k], runs["unit"][k]) for k in runs["plain"])
    assert any(not torch.equal(runs["plain"][k], runs["weighted"][k]) for k in runs["plain"])


@torch.no_grad()
def test_sdxl_weights_scale_both_encoders_and_leave_the_pool():
    from library.train.text import text_conditioner

    bundle = random_bundle("sdxl")
    plain, weighted = text_conditioner(bundle), text_conditioner(bundle, weighted=True)
    ref = plain([CAPTION])
    assert all(torch.equal(getattr(weighted([CAPTION]), k), getattr(ref, k)) for k in ("hidden1", "hidden2", "pool2"))
    out = weighted(["(sks:1.5) circle, red, on blue background"])
    for k, tok in (("hidden1", bundle.tokenizers[0]), ("hidden2", bundle.tokenizers[1])):
        n = len(content_ids(tok, "sks"))
        got, want = getattr(out, k)[0], getattr(ref, k)[0]
        assert torch.allclose(got[1:1 + n], want[1:1 + n] * 1.5, rtol=1e-5, atol=1e-6)
        assert torch.equal(got[1 + n:], want[1 + n:]) and torch.equal(got[:1], want[:1])
    assert torch.equal(out.pool2, ref.pool2)
