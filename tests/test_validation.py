"""Validation split and loss on the tiny SD1 model: a seeded, disjoint split that leaves regularisation images
alone; identical losses for unchanged weights; TensorBoard points at exactly the requested steps;
--max_validation_steps bounds the work; no augmentation or caption randomness in validation samples."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fixtures import base_args, make_env, tb_scalars  # noqa: E402

import train_network  # noqa: E402
from library.data.captions import CaptionOptions  # noqa: E402
from library.data.config import DatasetConfig, SubsetConfig  # noqa: E402
from library.data.dataset import TrainDataset  # noqa: E402
from library.options.parse import parse_training_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    return make_env(tmp_path_factory.mktemp("val"))


def _datasets(env: dict, split: float, seed: int | None, reg: Path | None = None, **subset_kw) -> list[DatasetConfig]:
    subsets = [SubsetConfig(env["img"] / "10_sks circle", num_repeats=2, **subset_kw)]
    if reg is not None:
        subsets.append(SubsetConfig(reg, is_reg=True))
    return [DatasetConfig((64, 64), validation_split=split, validation_seed=seed, subsets=subsets)]


def test_split_is_seeded_disjoint_and_leaves_reg_images(env, tmp_path):
    reg = tmp_path / "reg"
    reg.mkdir()
    for p in sorted((env["img"] / "10_sks circle").glob("000[0-2].png")):
        shutil.copy(p, reg / p.name)
    names = lambda ds: sorted(r.path.name for r in ds.records if not r.subset.is_reg)  # noqa: E731
    train = TrainDataset(_datasets(env, 0.25, 7, reg), seed=1)
    val = TrainDataset(_datasets(env, 0.25, 7, reg), seed=1, validation=True)
    assert len(names(val)) == 3 and len(names(train)) == 9  # 12 images: ceil(12 * 0.75) train
    assert not set(names(train)) & set(names(val))
    assert sorted(names(train) + names(val)) == sorted(p.name for p in (env["img"] / "10_sks circle").glob("*.png"))
    assert names(TrainDataset(_datasets(env, 0.25, 7, reg), seed=99, validation=True)) == names(val)  # seed wins
    assert names(TrainDataset(_datasets(env, 0.25, 8, reg), seed=1, validation=True)) != names(val)
    # no validation_seed: the run's seed decides
    assert names(TrainDataset(_datasets(env, 0.25, None), seed=5, validation=True)) == \
        names(TrainDataset(_datasets(env, 0.25, None), seed=5, validation=True))
    assert {r.path.name for r in train.records if r.subset.is_reg} == {"0000.png", "0001.png", "0002.png"}
    assert not any(r.subset.is_reg for r in val.records)
    assert all(r.repeats == 1 for r in val.records) and train.num_train_images == 18


def test_validation_samples_have_no_augmentation_or_caption_randomness(env):
    caption = CaptionOptions(shuffle_caption=True, caption_dropout_rate=0.5, caption_tag_dropout_rate=0.5)
    val = TrainDataset(_datasets(env, 0.5, 0, caption=caption, flip_aug=True), seed=1, validation=True)
    from library.train.validation import Validator

    cfg = parse_training_args(["--validation_split", "0.5"])
    v = Validator(val, cfg, seed=1)
    for req in v.requests:
        batch = val[req]
        for k, i in enumerate(req.indices):
            assert batch["captions"][k] == val.records[i].caption  # untouched caption
    assert not any(r.subset.flip_aug or r.subset.caption.shuffle_caption for r in val.records)


def test_validation_run_logs_exact_steps_and_repeats_exactly(env, tmp_path):
    from library.train.loop import Trainer

    out, logs = tmp_path / "o", tmp_path / "logs"
    argv = base_args(env, out, 5, "--validation_split", "0.25", "--validation_seed", "3", "--validate_every_n_steps",
                     "2", "--logging_dir", str(logs), "--train_batch_size", "2")
    cfg = parse_training_args(argv)
    trainer = Trainer(cfg)
    trainer.setup()
    # two validations of the same weights give the same loss, whatever the training RNG did in between
    first = trainer.validator.run(trainer._forward_loss, show_progress=False)
    torch.rand(100)
    state = torch.get_rng_state()
    second = trainer.validator.run(trainer._forward_loss, show_progress=False)
    assert first == second and torch.equal(state, torch.get_rng_state())  # training noise is left untouched
    trainer.run()
    steps = [s for s, _ in tb_scalars(logs, "loss/validation/step_average")]
    assert steps == [2, 4]
    epochs = tb_scalars(logs, "loss/validation/epoch_average")
    assert [s for s, _ in epochs] == list(range(1, trainer.num_epochs + 1))
    assert [s for s, _ in tb_scalars(logs, "loss/validation/step_divergence")] == [2, 4]
    assert [(k, at) for k, at, _ in trainer.val_losses] == [("step", 2), ("step", 4), ("epoch", 1)]
    assert trainer.metadata.base["ss_num_validation_images"] == "3"


def test_max_validation_steps_bounds_the_work(env, tmp_path):
    from library.train.loop import Trainer

    cfg = parse_training_args(base_args(env, tmp_path / "o", 1, "--validation_split", "0.5",
                                        "--max_validation_steps", "2"))
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.validator.dataset.num_batches() == 6
    calls = []

    def counting(batch, t):
        calls.append(int(t[0]))
        return trainer._forward_loss(batch, t)

    trainer.validator.run(counting, show_progress=False)
    assert trainer.validator.batches_run == 2 and calls == [200, 400, 600, 800] * 2


def test_split_in_dataset_toml_and_progress_bar(env, tmp_path, capsys):
    toml_file = tmp_path / "ds.toml"
    toml_file.write_text(f"[general]\nvalidation_seed = 4\n[[datasets]]\nresolution = 64\nvalidation_split = 0.25\n"
                         f"[[datasets.subsets]]\nimage_dir = '{env['img'] / '10_sks circle'}'\n", encoding="utf-8")
    assert train_network.main(base_args(env, tmp_path / "o", 2, "--dataset_config", str(toml_file))) is not None
    err = capsys.readouterr().err
    assert "validation: 3 images" in err and "val_loss=" in err


def test_sdxl_validation_with_masks_and_cached_text(tiny_checkpoints, env, tmp_path):
    """SDXL: the validation images' latents and text-encoder outputs are cached too (the encoders are freed),
    masks follow, and two validations of the same weights agree."""
    import sdxl_train_network
    from library.train.loop import Trainer

    args = base_args(env, tmp_path / "o", 2, "--validation_split", "0.25", "--masked_loss",
                     "--conditioning_data_dir", str(env["masks"]), "--cache_latents", "--cache_text_encoder_outputs",
                     "--network_train_unet_only")
    args[args.index("--pretrained_model_name_or_path") + 1] = str(tiny_checkpoints["sdxl"])
    cfg = parse_training_args(args, "sdxl_train_network")
    trainer = Trainer(cfg, sdxl_script=True)
    trainer.setup()
    records = trainer.validator.dataset.records
    assert len(records) == 3 and all(r.te_outputs is not None and r.mask is not None for r in records)
    first = trainer.validator.run(trainer._forward_loss, show_progress=False)
    assert first == trainer.validator.run(trainer._forward_loss, show_progress=False)
    assert sdxl_train_network.main(args) is not None
