"""`--network_args key=value` settings of each network module, declared once like the options (`spec.opt`), so the
web UI's network section, and any doc, are built from them. `scripts=` names the network modules that read a key.

A new network module (e.g. a LyCORIS one) makes its keys appear in the UI by declaring them here: a group class
whose fields name the module(s) in `scripts=`, added to `NETWORK_ARG_GROUPS`, and the module added to
`NETWORK_MODULES`. The networks themselves still parse and check the values (they get them as strings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from library.options.spec import Option, interval, non_negative, opt, options_of, positive

LORA, DYLORA, LYCORIS = "networks.lora", "networks.dylora", "networks.lycoris"
# the network modules the UI offers; --network_module also takes any other module with create_network()
NETWORK_MODULES: list[str] = [LORA, DYLORA, LYCORIS]
BOTH = (LORA, DYLORA)
# a share of values dropped while training: 1 would drop all of them
FRACTION = interval(0, 1, high_open=True, why=" (the share of values dropped; 1 would drop all of them)")
LORAPLUS = interval(0, math.inf, low_open=True, high_open=True, why=" (the up factors' lr is the lr times this)")


@dataclass
class ConvArgs:
    GROUP = "LoCon (3x3 convolutions)"
    conv_dim: int | None = opt(int, None, "rank of the 3x3 conv modules (LoCon); none: no conv modules",
                               check=non_negative, scripts=BOTH)
    conv_alpha: float | None = opt(float, None, "alpha of the conv modules [1]", check=non_negative, scripts=BOTH)


@dataclass
class DyLoRAArgs:
    GROUP = "DyLoRA"
    unit: int | None = opt(int, None, "rank step: one run trains usable LoRAs at unit, 2*unit, ... network_dim "
                           "[1]", check=positive, scripts=(DYLORA,))


@dataclass
class DropoutArgs:
    GROUP = "dropout"
    dropout: float | None = opt(float, None, "dropout of the rank activations (as --network_dropout)",
                                check=FRACTION, scripts=(LORA,))
    rank_dropout: float | None = opt(float, None, "drop whole ranks with this probability while training",
                                     check=FRACTION, scripts=(LORA,))
    module_dropout: float | None = opt(float, None, "skip whole modules with this probability while training",
                                       check=FRACTION, scripts=(LORA,))


@dataclass
class LoraPlusArgs:
    GROUP = "LoRA+"
    loraplus_lr_ratio: float | None = opt(float, None, "learning rate of the up factors = this x the down "
                                          "factors' (LoRA+; 16 is common)", check=LORAPLUS, scripts=BOTH)
    loraplus_unet_lr_ratio: float | None = opt(float, None, "LoRA+ ratio for the U-Net only", check=LORAPLUS,
                                               scripts=BOTH)
    loraplus_text_encoder_lr_ratio: float | None = opt(float, None, "LoRA+ ratio for the text encoder only",
                                                       check=LORAPLUS, scripts=BOTH)


@dataclass
class BlockArgs:
    GROUP = "block-wise dims and learning rates"
    block_dims: str | None = opt(str, None, "rank of each U-Net block, comma-separated (25 values SD1/SD2: in0-11, "
                                 "mid, out0-11; 23 SDXL)", scripts=(LORA,))
    block_alphas: str | None = opt(str, None, "alpha of each U-Net block, comma-separated (as block_dims)",
                                   scripts=(LORA,))
    conv_block_dims: str | None = opt(str, None, "conv rank of each U-Net block, comma-separated", scripts=(LORA,))
    conv_block_alphas: str | None = opt(str, None, "conv alpha of each U-Net block, comma-separated", scripts=(LORA,))
    down_lr_weight: str | None = opt(str, None, "lr weight of each input block (12 values, or a preset: sine, "
                                     "cosine, linear, reverse_linear, zeros, with +offset)", scripts=(LORA,))
    mid_lr_weight: str | None = opt(str, None, "lr weight of the middle block", scripts=(LORA,))
    up_lr_weight: str | None = opt(str, None, "lr weight of each output block (as down_lr_weight)", scripts=(LORA,))
    block_lr_zero_threshold: float | None = opt(float, None, "blocks whose lr weight is not above this are not "
                                                "trained", scripts=(LORA,))


NETWORK_ARG_GROUPS: list[type] = [ConvArgs, DyLoRAArgs, DropoutArgs, LoraPlusArgs, BlockArgs]


def network_arg_options(module: str) -> list[Option]:
    """The declared `--network_args` keys of a network module (empty for an undeclared module); LyCORIS' are
    declared in `lycoris_args` (`lycoris.kohya` configs run on the same arguments)."""
    if module in (LYCORIS, "lycoris.kohya"):
        from library.options.lycoris_args import lycoris_options

        return lycoris_options()
    return [o for cls in NETWORK_ARG_GROUPS for o in options_of(cls) if module in o.scripts]


def split_network_args(words: list[str] | None, module: str) -> tuple[dict[str, str], list[str]]:
    """`["conv_dim=4", "foo=1"]` -> ({"conv_dim": "4"}, ["foo=1"]): the declared keys of `module`, and the rest."""
    declared = {o.name for o in network_arg_options(module)}
    known, rest = {}, []
    for word in words or []:
        key, sep, value = word.partition("=")
        if sep and key.strip() in declared:
            known[key.strip()] = value.strip()
        else:
            rest.append(word)
    return known, rest


def declared_names(module: str) -> frozenset[str]:
    """The `--network_args` keys a network module declares (its `KNOWN_ARGS` start from these)."""
    return frozenset(o.name for o in network_arg_options(module))


def value_problem(o: Option, text: str) -> str | None:
    """What is wrong with the string `text` as the value of the declared network arg `o` (None: fine). Numbers
    must be finite; whole numbers whole; then the declaration's check."""
    if o.type in (int, float):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            return "expected a whole number" if o.type is int else "expected a finite number"
        if o.type is int and value != int(value):
            return "expected a whole number"
    elif o.type is not str:
        return None  # other kinds are read by the network module itself
    else:
        value = text
    return o.check(value) if o.check is not None else None
