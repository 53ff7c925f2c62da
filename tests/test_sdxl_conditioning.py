"""SDXL conditioning during training equals what Diffusers' StableDiffusionXLPipeline computes: the context of
both text encoders, the pooled embedding, and the size/crop time ids taken from the dataset's bucketing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.data.config import datasets_from_folders  # noqa: E402
from library.data.dataset import BatchRequest, TrainDataset  # noqa: E402
from library.data.images import load_rgb, resize_and_crop  # noqa: E402
from library.generate.pipeline import build_pipeline  # noqa: E402
from library.generate.text import PromptEncoder  # noqa: E402
from library.models.factory import random_bundle  # noqa: E402
from library.train.text import SdxlTextConditioner, text_conditioner  # noqa: E402

CAPTIONS = ["a photo of a sks circle", "", "red circle on a blue gradient background, high quality, detailed"]


@pytest.fixture(scope="module")
def bundle():  # noqa: ANN201
    return random_bundle("sdxl", seed=3)


def test_context_and_pooled_equal_diffusers_encode_prompt(bundle):
    pipe = build_pipeline(bundle)
    with torch.no_grad():
        ref, _, ref_pooled, _ = pipe.encode_prompt(CAPTIONS, device=torch.device("cpu"),
                                                   do_classifier_free_guidance=False)
        outs = text_conditioner(bundle)(CAPTIONS)
    assert outs.context().shape == ref.shape == (3, 77, 64)
    torch.testing.assert_close(outs.context(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs.pool2, ref_pooled, rtol=1e-5, atol=1e-5)
    # the pooled embedding is bigG's projected EOS state: it differs between captions
    assert (outs.pool2[0] - outs.pool2[2]).abs().max() > 1e-3


def test_long_captions_in_windows_as_generation_encodes_them(bundle, caplog):
    long = ", ".join(f"tag{i}" for i in range(60))  # about 120 tokens: two 75-token windows
    cond = SdxlTextConditioner(bundle.tokenizers, bundle.text_encoders, clip_skip=2, max_token_length=150)
    assert "clip_skip" in caplog.text  # SDXL ignores it, and says so
    with torch.no_grad():
        outs = cond([long, "short"])
        ref, _ = PromptEncoder(bundle, max_embeddings_multiples=2).encode([long, "short"], ["", ""])
    assert outs.context().shape == (2, 152, 64)
    torch.testing.assert_close(outs.context(), ref.embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs.pool2, ref.pooled, rtol=1e-5, atol=1e-5)
    # the second window of the long caption carries text: it is not the padding of a short caption
    assert (outs.hidden2[0, 80:150] - outs.hidden2[1, 80:150]).abs().max() > 1e-3


def _images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.caption").write_text("sks circle", encoding="utf-8")


@pytest.mark.parametrize("random_crop", [False, True])
def test_time_ids_follow_the_crop_actually_used(bundle, tmp_path, random_crop):
    sizes = [(96, 64), (64, 100), (80, 80), (150, 70)]
    _images(tmp_path / "img" / "1_sks circle", sizes)
    cli = {"resolution": "64", "enable_bucket": True, "min_bucket_reso": 32, "max_bucket_reso": 128,
           "bucket_reso_steps": 32, "random_crop": random_crop, "flip_aug": True}
    dataset = TrainDataset(datasets_from_folders(tmp_path / "img", None, cli), seed=5)
    pipe = build_pipeline(bundle)
    seen_offsets = set()
    for position in range(8):
        index = position % len(dataset.records)
        batch = dataset[BatchRequest((index,), epoch=0, position=position)]
        r = dataset.records[index]
        orig_h, orig_w, top, left, th, tw = batch["size_cond"][0].tolist()
        assert (orig_w, orig_h) == Image.open(r.path).size and (tw, th) == r.bucket
        # the pixels are exactly the resized image cropped at (top, left), flipped or not
        whole = resize_and_crop(load_rgb(r.path), r.resized, r.resized)
        image = ((batch["images"][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        crop = whole[top:top + th, left:left + tw]
        flipped = whole[:, ::-1][top:top + th, left:left + tw]
        assert np.array_equal(image, crop) or np.array_equal(image, flipped)
        seen_offsets.add((index, top, left))
        ref = pipe._get_add_time_ids((orig_h, orig_w), (top, left), (th, tw), torch.float32,
                                     text_encoder_projection_dim=bundle.text_encoders[1].config.projection_dim)
        _, added = text_conditioner(bundle).for_batch(batch, torch.device("cpu"), torch.float32)
        torch.testing.assert_close(added["time_ids"], ref)
    if random_crop:  # a random crop moves: the same image shows up at different offsets
        assert len(seen_offsets) > len({i for i, _, _ in seen_offsets})


def test_unet_prediction_equals_the_pipeline_call(bundle):
    """The training step conditions the U-Net exactly as the pipeline does at generation."""
    captions = CAPTIONS[:2]
    batch = {"captions": captions, "size_cond": torch.tensor([[1024, 768, 0, 32, 64, 64], [64, 64, 0, 0, 64, 64]])}
    pipe = build_pipeline(bundle)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        context, added = text_conditioner(bundle).for_batch(batch, torch.device("cpu"), torch.float32)
        ours = bundle.unet(x, 500, context, added_cond_kwargs=added).sample
        emb, _, pooled, _ = pipe.encode_prompt(captions, device=torch.device("cpu"), do_classifier_free_guidance=False)
        dim = bundle.text_encoders[1].config.projection_dim
        ids = torch.stack([pipe._get_add_time_ids((1024, 768), (0, 32), (64, 64), torch.float32, dim)[0],
                           pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, dim)[0]])
        ref = bundle.unet(x, 500, emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # the size conditioning matters: other time ids give another prediction
    with torch.no_grad():
        other = bundle.unet(x, 500, emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids.flip(0)}).sample
    assert (other - ref).abs().max() > 1e-4
