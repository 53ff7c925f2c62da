"""Block-wise lr weights and ranks (networks.lora network_args) on tiny SD1 (25 blocks) and SDXL (23 blocks)."""

from __future__ import annotations

import math

import pytest
import toml
import torch

from library.block_weights import block_index, num_blocks, part_lengths
from library.errors import ToolkitError
from library.lora_io import load_lora, split_modules
from library.models.factory import random_bundle
from networks import lora

FAMILIES = ("sd1", "sdxl")


@pytest.fixture(scope="module")
def bundles():
    return {fam: random_bundle(fam) for fam in FAMILIES}


def _te(bundle):
    return bundle.text_encoders if bundle.is_sdxl else bundle.text_encoders[0]


def _create(bundle, dim: int = 4, alpha: float = 2.0, **network_args):
    """create_network the way train_network calls it: every network_args value is a string."""
    args = {k: str(v) for k, v in network_args.items()}
    return lora.create_network(1.0, dim, alpha, bundle.vae, _te(bundle), bundle.unet, **args)


def _by_block(net, sdxl: bool) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for m in net.unet_loras:
        out.setdefault(block_index(m.lora_name, sdxl), []).append(m.lora_name)
    return out


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def _spec_preset(name: str, n: int, offset: float = 0.0) -> list[float]:
    """lora-format.md §5.2, written out independently of library.block_weights."""
    ramp = [i / (n - 1) for i in range(n)]
    return {
        "sine": [math.sin(math.pi / 2 * r) + offset for r in ramp],
        "cosine": [math.sin(math.pi / 2 * r) + offset for r in reversed(ramp)],
        "linear": [r + offset for r in ramp],
        "reverse_linear": [r + offset for r in reversed(ramp)],
        "zeros": [offset] * n,
    }[name]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_unet_module_has_a_block_and_lierla_blocks_match_the_spec(bundles, family):
    sdxl = family == "sdxl"
    blocks = _by_block(_create(bundles[family], conv_dim=2), sdxl)
    assert -1 not in blocks
    expected = set(range(2, 22)) if sdxl else set(range(1, 25))  # C3Lier: every block that holds layers
    assert set(blocks) == expected
    lierla = set(_by_block(_create(bundles[family]), sdxl))
    assert lierla == ({5, 6, 8, 9, 11, 13, 14, 15, 16, 17, 18} if sdxl
                      else {1, 2, 4, 5, 7, 8, 12, 16, 17, 18, 19, 20, 21, 22, 23, 24})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["sine", "cosine", "linear", "reverse_linear", "zeros"])
@pytest.mark.parametrize("offset", [None, 0.5])
def test_presets_equal_the_spec_formula_at_every_index(bundles, family, name, offset):
    sdxl = family == "sdxl"
    n_down, n_mid, n_up = part_lengths(sdxl)
    arg = name if offset is None else f"{name}+{offset}"
    net = _create(bundles[family], down_lr_weight=arg, up_lr_weight=arg)
    expected = _spec_preset(name, n_down, offset or 0.0)
    got = net.blocks.lr_weights
    assert len(got) == num_blocks(sdxl)
    down = got[1:1 + n_down] if sdxl else got[:n_down]
    up = got[1 + n_down + n_mid:-1] if sdxl else got[n_down + n_mid:]
    for part in (down, up):
        assert len(part) == len(expected)
        assert all(abs(g - e) < 1e-12 for g, e in zip(part, expected)), (part, expected)
    if sdxl:
        assert got[0] == got[-1] == 1.0  # time/label embedding and out: no LoRA, padded with 1.0
    if name == "sine" and offset == 0.5 and not sdxl:  # the spec's worked example
        assert [round(v, 3) for v in down[:3]] == [0.5, 0.642, 0.782] and down[-1] == 1.5


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_weight_or_under_threshold_creates_no_module_and_groups_get_base_lr_times_weight(bundles, family):
    sdxl = family == "sdxl"
    n_down, n_mid, n_up = part_lengths(sdxl)
    down = [0.5 + 0.05 * i for i in range(n_down)]
    down[-1] = 0  # an explicit zero
    down[-2] = 0.1  # equal to the threshold: the comparison is strict, so it goes too
    down[-3] = 0.11  # just above: kept
    mid = [0.7] * n_mid
    up = [1.0 + 0.1 * i for i in range(n_up)]
    up[0] = 0.05  # under the threshold
    net = _create(bundles[family], down_lr_weight=_csv(down), mid_lr_weight=_csv(mid), up_lr_weight=_csv(up),
                  block_lr_zero_threshold=0.1, conv_dim=2)
    weights = ([1.0] if sdxl else []) + [w if w > 0.1 else 0.0 for w in down + mid + up] + ([1.0] if sdxl else [])
    blocks = _by_block(net, sdxl)
    first_down = 1 if sdxl else 0
    gone = {first_down + n_down - 1, first_down + n_down - 2, first_down + n_down + n_mid}
    assert all(weights[i] == 0 for i in gone)
    assert not gone & set(blocks), "a block with weight 0 still has modules"
    plain = _by_block(_create(bundles[family], conv_dim=2), sdxl)
    assert {i: len(v) for i, v in blocks.items()} == {i: len(v) for i, v in plain.items() if i not in gone}

    base_lr = 1e-3
    groups, descriptions = net.prepare_optimizer_params(5e-5, base_lr, 7e-4)
    by_param = {id(p): m.lora_name for m in net.unet_loras for p in m.parameters()}
    unet_groups = [(g, d) for g, d in zip(groups, descriptions) if d.startswith("unet")]
    assert len(unet_groups) == len(blocks)
    for group, _ in unet_groups:
        idx = {block_index(by_param[id(p)], sdxl) for p in group["params"]}
        assert len(idx) == 1  # one block per group
        (i,) = idx
        assert group["lr"] == pytest.approx(base_lr * weights[i], rel=1e-12)
        assert len(group["params"]) == 2 * len(blocks[i])
    te_groups = [g for g, d in zip(groups, descriptions) if d.startswith("textencoder")]
    assert te_groups and all(g["lr"] == 5e-5 for g in te_groups)  # the text encoder ignores block weights
    groups, _ = net.prepare_optimizer_params(None, None, 7e-4)  # no unet_lr: default lr × weight
    assert sorted(g["lr"] for g in groups) == pytest.approx(sorted([7e-4] * len(te_groups) +
                                                                   [7e-4 * weights[i] for i in blocks]))


@pytest.mark.parametrize("family", FAMILIES)
def test_block_dims_files_have_the_stated_rank_and_alpha_per_block(bundles, family, tmp_path):
    sdxl = family == "sdxl"
    n = num_blocks(sdxl)
    dims = [(i % 5) + (i % 2) for i in range(n)]  # 0..5, some zeros
    alphas = [0.5 * (i + 1) for i in range(n)]
    conv_dims = [(i % 3) for i in range(n)]
    conv_alphas = [0.25 * (i + 1) for i in range(n)]
    bundle = bundles[family]
    net = _create(bundle, dim=8, alpha=8, block_dims=_csv(dims), block_alphas=_csv(alphas),
                  conv_block_dims=_csv(conv_dims), conv_block_alphas=_csv(conv_alphas))
    net.apply_to(_te(bundle), bundle.unet)
    try:
        net.save_weights(tmp_path / "blocks.safetensors", torch.float16, {})
    finally:
        net.remove_from()
    modules = split_modules(load_lora(tmp_path / "blocks.safetensors")[0])
    unet = {k: m for k, m in modules.items() if k.startswith("lora_unet_")}
    plain = _create(bundle, conv_dim=2)
    expected = {}
    for m in plain.unet_loras:
        i = block_index(m.lora_name, sdxl)
        dim, alpha = (conv_dims[i], conv_alphas[i]) if m.is_kxk else (dims[i], alphas[i])
        if dim:
            expected[m.lora_name] = (dim, alpha)
    assert {k: (m.rank, m.alpha) for k, m in unet.items()} == expected
    assert any(m.is_conv and m.kernel_size == (3, 3) for m in unet.values())
    te = [m for k, m in modules.items() if not k.startswith("lora_unet_")]
    assert te and all((m.rank, m.alpha) == (8, 8.0) for m in te)  # text encoder: network_dim/alpha


def test_toml_network_args_reach_the_network(bundles):
    """A config file's `network_args = ["k=v", ...]` list, split at the first '=' as train_network does."""
    config = toml.loads('network_args = ["down_lr_weight=reverse_linear+0.25", "mid_lr_weight=0", '
                        '"up_lr_weight=sine", "block_lr_zero_threshold=0.3", "block_dims=' + _csv([2] * 25) + '"]')
    kwargs = dict(item.split("=", 1) for item in config["network_args"])
    net = lora.create_network(1.0, 4, 1, None, bundles["sd1"].text_encoders[0], bundles["sd1"].unet, **kwargs)
    expected_down = [w if w > 0.3 else 0.0 for w in _spec_preset("reverse_linear", 12, 0.25)]
    expected_up = [w if w > 0.3 else 0.0 for w in _spec_preset("sine", 12)]
    assert net.blocks.lr_weights == pytest.approx(expected_down + [0.0] + expected_up)
    assert 12 not in _by_block(net, False)  # mid weight 0: no mid-block modules
    assert {m.lora_dim for m in net.unet_loras} == {2}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key,value,message", [
    ("down_lr_weight", "0.5", "single number is not a list"),
    ("up_lr_weight", "1,1,1", "expected {down} comma-separated values"),
    ("down_lr_weight", "1," * 13, "expected {down} comma-separated values"),
    ("mid_lr_weight", "1,1,1,1", "expected {mid} comma-separated values"),
    ("up_lr_weight", "sinus", "unknown block lr preset 'sinus'"),
    ("down_lr_weight", "sine+abc", "offset 'abc' is not a number"),
    ("block_dims", "4", "expected {n} comma-separated values (one per block), got a single value"),
    ("block_dims", "4,4,4", "expected {n} comma-separated values"),
    ("block_alphas", "1,1", "expected {n} comma-separated values"),
    ("conv_block_dims", "2," * 30, "expected {n} comma-separated values"),
    ("conv_block_alphas", "1", "expected {n} comma-separated values"),
    ("block_dims", "<n floats>", "not a whole number"),
    ("block_lr_zero_threshold", "high", "block_lr_zero_threshold='high' is not a number"),
])
def test_wrong_counts_and_lone_numbers_give_a_clear_error(bundles, family, key, value, message):
    sdxl = family == "sdxl"
    n_down, n_mid, _ = part_lengths(sdxl)
    args = {key: _csv([4.5] * num_blocks(sdxl)) if value == "<n floats>" else value}
    if key == "block_lr_zero_threshold":
        args["down_lr_weight"] = "sine"
    with pytest.raises(ToolkitError) as err:
        _create(bundles[family], **args)
    text = str(err.value)
    assert key in text or "preset" in text
    assert message.format(down=n_down, mid=n_mid, n=num_blocks(sdxl)) in text


def test_unset_parts_stay_one_and_threshold_applies_only_to_given_parts(bundles):
    net = _create(bundles["sd1"], down_lr_weight=_csv([0.5] * 12), block_lr_zero_threshold=0.6)
    assert net.blocks.lr_weights == [0.0] * 12 + [1.0] * 13  # sd-scripts: unset mid/up are 1.0, not thresholded
    assert set(_by_block(net, False)) == {12, 16, 17, 18, 19, 20, 21, 22, 23, 24}


def test_create_network_from_weights_keeps_block_lr(bundles, tmp_path):
    bundle = bundles["sd1"]
    net = _create(bundle)
    net.apply_to(_te(bundle), bundle.unet)
    try:
        net.save_weights(tmp_path / "a.safetensors")
    finally:
        net.remove_from()
    up = [0.0] * 6 + [2.0] * 6
    net2, _ = lora.create_network_from_weights(1.0, tmp_path / "a.safetensors", None, _te(bundle), bundle.unet,
                                               up_lr_weight=_csv(up))
    groups, descriptions = net2.prepare_optimizer_params(1e-5, 1e-4, None)
    lrs = {d: g["lr"] for g, d in zip(groups, descriptions)}
    assert lrs["unet block 22"] == pytest.approx(2e-4) and lrs["unet block 1"] == pytest.approx(1e-4)
    assert "unet block 16" not in lrs  # weight 0: not trained


@pytest.mark.parametrize("source", ["command line", "toml"])
def test_train_network_takes_block_args_from_command_line_and_config(tmp_path, source):
    """Two steps of train_network.py: a zero up-weight block has no keys, the rest have their block_dims rank."""
    import train_network
    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset

    ckpt = write_random_checkpoint(tmp_path / "tiny-sd1.safetensors", "sd1")
    img = make_sample_dataset(tmp_path / "data", num_images=2, resolution=64, aspect_ratios=False)
    dims = [(i % 3) + 2 for i in range(25)]
    up = [1.0] * 12
    up[4] = 0  # OUT04 = up_blocks_1_attentions_1
    network_args = [f"block_dims={_csv(dims)}", f"up_lr_weight={_csv(up)}", "mid_lr_weight=0.5"]
    base = ["--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(img), "--resolution", "64",
            "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2", "--learning_rate", "1e-3",
            "--max_data_loader_n_workers", "0", "--network_train_unet_only", "--network_dim", "8"]
    args = list(base)
    if source == "toml":
        args += ["--config_file", str(_write_toml(tmp_path / "config.toml", network_args))]
    else:
        args += ["--network_module", "networks.lora", "--network_args", *network_args]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = train_network.main(args)
    finally:
        torch.set_num_threads(threads)
    modules = split_modules(load_lora(path)[0])
    blocks = {block_index(n, False) for n in modules}
    assert 17 not in blocks and blocks == {1, 2, 4, 5, 7, 8, 12, 16, 18, 19, 20, 21, 22, 23, 24}
    assert all(m.rank == dims[block_index(n, False)] for n, m in modules.items())
    bad = (["--network_module", "networks.lora", "--network_args", "up_lr_weight=1,1"] if source == "command line"
           else ["--config_file", str(_write_toml(tmp_path / "bad.toml", ["up_lr_weight=1,1"]))])
    with pytest.raises(ToolkitError, match="up_lr_weight: expected 12 comma-separated values"):
        train_network.main([*base, *bad])


def _write_toml(path, network_args):
    path.write_text(toml.dumps({"network_module": "networks.lora", "network_args": network_args}))
    return path
