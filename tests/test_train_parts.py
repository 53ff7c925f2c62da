"""The pieces under train_network.py, checked against sd-scripts' formulas: captions, token chunks, the noise
schedule and loss weights, optimizer/scheduler names, dataset TOML validation and the batch sampler."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.data.captions import CaptionOptions, process_caption  # noqa: E402
from library.errors import ToolkitError  # noqa: E402


def test_caption_keep_tokens_shuffle_and_dropout():
    rng = random.Random(0)
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=2)
    caption = "sks dog, photo, a, b, c, d, e"
    outs = {process_caption(caption, opts, rng) for _ in range(30)}
    assert all(o.startswith("sks dog, photo, ") for o in outs) and len(outs) > 5
    assert all(sorted(o.split(", ")) == sorted(caption.split(", ")) for o in outs)
    sep = CaptionOptions(shuffle_caption=True, keep_tokens_separator="|||")
    for _ in range(10):
        o = process_caption("sks, dog ||| a, b, c ||| tail", sep, rng)
        assert o.startswith("sks, dog, ") and o.endswith(", tail") and sorted(o.split(", ")[2:5]) == ["a", "b", "c"]
    assert process_caption("x, y", CaptionOptions(caption_dropout_every_n_epochs=2), rng, epoch=4) == ""
    assert process_caption("x, y", CaptionOptions(caption_dropout_every_n_epochs=2), rng, epoch=3) == "x, y"
    assert process_caption("x", CaptionOptions(caption_prefix="pre", caption_suffix="post"), rng) == "pre x post"
    wild = CaptionOptions(enable_wildcard=True)
    assert {process_caption("a {red|blue} {{x}}", wild, rng) for _ in range(20)} == {"a red {x}", "a blue {x}"}
    assert process_caption("a;b, c", CaptionOptions(secondary_separator=";"), rng) == "a,b, c"
    # token warm-up: from token_warmup_min tags at step 0 to all tags at the warm-up end
    warm = CaptionOptions(token_warmup_min=1, token_warmup_step=10)
    assert process_caption("a, b, c, d, e", warm, rng, step=0) == "a"
    assert process_caption("a, b, c, d, e", warm, rng, step=5) == "a, b, c"
    assert process_caption("a, b, c, d, e", warm, rng, step=10) == "a, b, c, d, e"


def test_token_chunks_and_clip_skip():
    from transformers import CLIPTextConfig, CLIPTextModel

    from library.tokenizer import load_tokenizers
    from library.train.text import TextConditioner

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=77)).eval()
    for family in ("sd1", "sd2"):
        tok = load_tokenizers(family)[0]
        cond = TextConditioner(tok, te, max_token_length=225)
        ids = cond.tokenize(["a photo of a cat " * 40, "dog"])
        assert ids.shape == (2, 3, 77)
        assert (ids[:, :, 0] == tok.bos_token_id).all()
        # short caption: padding ends every chunk; SD2 marks an all-padding chunk with EOS after its BOS
        assert (ids[1, :, -1] == tok.pad_token_id).all()
        assert (ids[1, 1:, 1] == tok.eos_token_id).all()
        assert ids[0, 0, -1] == tok.eos_token_id  # a chunk ending in text ends with EOS
        with torch.no_grad():
            assert cond.encode(ids).shape == (2, 227, 32)
    tok = load_tokenizers("sd1")[0]
    with torch.no_grad():
        plain = TextConditioner(tok, te)(["a cat"])
        skip1 = TextConditioner(tok, te, clip_skip=1)(["a cat"])
        skip2 = TextConditioner(tok, te, clip_skip=2)(["a cat"])
        out = te(TextConditioner(tok, te).tokenize(["a cat"])[:, 0], output_hidden_states=True)
    assert torch.allclose(plain, skip1) and plain.shape == (1, 77, 32)
    assert torch.allclose(skip2, te.final_layer_norm(out.hidden_states[-2]))


def test_noise_schedule_and_loss_weights():
    from library.train.objective import Objective, ObjectiveConfig, alphas_cumprod

    ab = alphas_cumprod()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(ab, torch.cumprod(1 - betas, 0).float())
    zt = alphas_cumprod(zero_terminal_snr=True)
    assert zt[-1] == 0 and torch.isclose(zt[0], ab[0])
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    obj = Objective(ObjectiveConfig(v_parameterization=True))
    a = ab[t].view(-1, 1, 1, 1)
    assert torch.allclose(obj.target(latents, noise, t), a.sqrt() * noise - (1 - a).sqrt() * latents)
    pred = torch.randn(3, 4, 8, 8)
    per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    snr = ab[t] / (1 - ab[t])
    gamma = Objective(ObjectiveConfig(min_snr_gamma=5))
    assert torch.isclose(gamma.loss(pred, noise, t), (per_sample * snr.clamp(max=5) / snr).mean())
    weights = torch.tensor([1.0, 0.5, 2.0])
    assert torch.isclose(Objective(ObjectiveConfig()).loss(pred, noise, t, weights), (per_sample * weights).mean())
    debiased = Objective(ObjectiveConfig(debiased_estimation_loss=True))
    assert torch.isclose(debiased.loss(pred, noise, t), (per_sample / snr.sqrt()).mean())
    with pytest.raises(ToolkitError, match="noise_offset"):
        Objective(ObjectiveConfig(adaptive_noise_scale=0.1))
    torch.manual_seed(0)
    offset = Objective(ObjectiveConfig(noise_offset=0.5)).noise_like(torch.zeros(64, 4, 8, 8))
    assert offset.mean(dim=(2, 3)).std() > 0.3  # a per-channel shift on top of unit noise


def test_optimizers_and_schedulers():
    from library.train.optim import build_optimizer, build_scheduler, int_or_ratio, parse_optimizer_args

    assert parse_optimizer_args(["betas=0.9,0.99", "weight_decay=0.01", "decouple=True", "d_coef=x"]) == \
        {"betas": (0.9, 0.99), "weight_decay": 0.01, "decouple": True, "d_coef": "x"}
    p = torch.nn.Parameter(torch.zeros(4))
    for name, cls in (("adamw", "AdamW"), ("AdamW8bit", "AdamW8bit"), ("Lion", "Lion"), ("SGDNesterov", "SGD"),
                      ("Prodigy", "Prodigy"), ("RMSprop", "RMSprop"), ("torch.optim.Adam", "Adam")):
        setup = build_optimizer(name, None, [{"params": [p]}], 1e-3)
        assert type(setup.optimizer).__name__ == cls
    sgd = build_optimizer("SGDNesterov", None, [{"params": [p]}], 1e-3)
    assert sgd.optimizer.defaults["nesterov"] and sgd.optimizer.defaults["momentum"] == 0.9
    assert "nesterov=True" in sgd.description
    ada = build_optimizer("Adafactor", None, [{"params": [p], "lr": 1e-3}], 1e-3)
    assert ada.scheduler_override == "adafactor:0.001"
    with pytest.raises(ToolkitError, match="DAdapt|dadaptation|unknown"):
        build_optimizer("NoSuchOptimizer", None, [{"params": [p]}], 1e-3)
    opt = build_optimizer("AdamW", None, [{"params": [p]}], 1.0).optimizer
    sched = build_scheduler("cosine", opt, 100, warmup_steps=int_or_ratio(0.1, 100))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and abs(lrs[10] - 1) < 1e-6 and lrs[-1] < 0.01
    with pytest.raises(ToolkitError, match="constant_with_warmup"):
        build_scheduler("constant", opt, 100, warmup_steps=5)
    assert int_or_ratio("5%", 200) == 10 and int_or_ratio(7, 200) == 7


def test_dataset_toml_validation(tmp_path):
    from library.data.config import datasets_from_config, read_dataset_config

    img = tmp_path / "img"
    img.mkdir()
    cases = {
        "[general]\nshufle_caption = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\n": "shuffle_caption",
        "[[datasets]]\nimage_dir = 'x'\n[[datasets.subsets]]\nimage_dir = 'x'\n": "not allowed here",
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nresolution = 512\n": "[[datasets]]",
        "[[datasets]]\nbatch_size = 'two'\n[[datasets.subsets]]\nimage_dir = 'x'\n": "must be an integer",
        "[dataset]\n": "top-level",
        "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n": "image_dir",
    }
    for text, expected in cases.items():
        f = tmp_path / "d.toml"
        f.write_text(text, encoding="utf-8")
        with pytest.raises(ToolkitError, match=expected.replace("[", r"\[")):
            read_dataset_config(f)
    f.write_text(f"[general]\nflip_aug = true\n[[datasets]]\nresolution = [96, 64]\n[[datasets.subsets]]\n"
                 f"image_dir = '{img}'\nflip_aug = false\n[[datasets.subsets]]\nimage_dir = '{tmp_path / 'no'}'\n",
                 encoding="utf-8")
    with pytest.raises(ToolkitError, match="folder not found"):
        datasets_from_config(f, {})
    f.write_text(f"[general]\nflip_aug = true\nkeep_tokens = 3\n[[datasets]]\nresolution = [96, 64]\n"
                 f"[[datasets.subsets]]\nimage_dir = '{img}'\nflip_aug = false\n", encoding="utf-8")
    (ds,) = datasets_from_config(f, {"keep_tokens": 1, "train_batch_size": 4})
    sub = ds.subsets[0]
    assert ds.resolution == (96, 64) and ds.batch_size == 4  # command line fills what the file leaves out
    assert sub.flip_aug is False and sub.caption.keep_tokens == 3  # subset beats general beats command line


def test_sampler_shards_and_pads():
    from library.data.dataset import EpochSampler

    class Plan:
        def __init__(self, n: int) -> None:
            self.n = n

        def num_batches(self) -> int:
            return self.n

        def plan_epoch(self, epoch: int) -> list[list[int]]:
            order = list(range(self.n))
            random.Random(epoch).shuffle(order)
            return [[i] for i in order]

    plan = Plan(7)
    ranks = [list(EpochSampler(plan, r, 2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 7 batches padded to 8
    seen = [b.indices[0] for rank in ranks for b in rank]
    assert set(seen) == set(range(7)) and len(seen) == 8
    s = EpochSampler(plan, 0, 1, grad_accum=2)
    s.set_epoch(3, skip=4)
    reqs = list(s)
    assert [r.position for r in reqs] == [4, 5, 6] and all(r.epoch == 3 for r in reqs)
    assert reqs[0].step == 3 * 4 + 2  # 4 optimizer steps per epoch, batch 4 is in the 3rd
