"""The `--network_args` of `networks.lycoris`, declared once: LyCORIS' names, meanings and defaults
(`lycoris.kohya.create_network` of lycoris-lora 3.2), parsed from the strings a command line or config gives.

Values are strings; booleans are read as LyCORIS reads them (`str(v).lower() != "false"`: only "false" is false, so
"0" and "no" mean true — kept for compatibility, and warned about). The deprecated aliases `use_cp`,
`use_conv_cp` and `disable_conv_cp` are copied over `use_tucker` in the order given, exactly as LyCORIS does
(so `disable_conv_cp=True` turns Tucker *on*). No torch import here, so docs and forms can read it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields

from library.errors import ToolkitError
from library.options.spec import Option, opt, options_of

log = logging.getLogger(__name__)

ALGOS = ("lora", "locon", "loha", "lokr")
# LyCORIS algorithms this toolkit reads (merge, convert, generation) but does not train natively
OTHER_ALGOS = ("dylora", "glora", "full", "diag-oft", "boft", "ia3", "tlora")
PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-only", "unet-transformer-only", "unet-convblock-only",
           "ia3")
DEPRECATED = {"disable_conv_cp": "use_tucker", "use_cp": "use_tucker", "use_conv_cp": "use_tucker"}
# accepted because LyCORIS takes them, without effect here (one warning each)
WITHOUT_EFFECT = {
    "train_norm": "norm layers are not trained natively; train with lycoris.kohya for it",
    "block_size": "DyLoRA only", "constraint": "OFT only", "rescaled": "OFT only", "train_t5xxl": "no T5 here",
}


def _ratio(value: object) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"  # type: ignore[operator]


def _non_negative(value: object) -> str | None:
    return None if value >= 0 else "must not be negative"  # type: ignore[operator]


def _factor(value: object) -> str | None:
    return None if value == -1 or value >= 1 else "must be -1 (most balanced) or a whole number >= 1"  # type: ignore


@dataclass
class LycorisArgs:
    """`networks.lycoris` network_args (LyCORIS' names): what each means and its LyCORIS default."""

    GROUP = "network_args (networks.lycoris)"
    algo: str = opt(str, "lora", "algorithm: lora/locon (LoRA on Linear and conv layers), loha (Hadamard product "
                    "of two low-rank products), lokr (Kronecker product)", choices=ALGOS)
    preset: str = opt(str, "full", "which layers (presets below), or a LyCORIS preset TOML with unet_target_module, "
                      "unet_target_name, text_encoder_target_module, text_encoder_target_name, enable_conv, "
                      "use_fnmatch", metavar="NAME|PATH")
    conv_dim: int | None = opt(int, None, "rank of kxk conv layers (1x1 convs use network_dim); 0 or unset: "
                               "network_dim, as in LyCORIS", check=_non_negative)
    conv_alpha: float | None = opt(float, None, "alpha of kxk conv layers; 0 or unset: network_alpha",
                                   check=_non_negative)
    factor: int = opt(int, -1, "LoKr: split each dimension as (factor, dim/factor); -1 = most balanced",
                      check=_factor)
    use_tucker: bool = opt(bool, False, "Tucker core for kxk conv kernels (LoCon lora_mid, LoHa hada_t1/t2, LoKr "
                           "lokr_t2). Deprecated aliases use_cp, use_conv_cp, disable_conv_cp are copied over it in "
                           "the order given, as LyCORIS does (disable_conv_cp=True turns Tucker on)")
    decompose_both: bool = opt(bool, False, "LoKr: also make the small factor W1 low-rank (when rank < its size/2)")
    full_matrix: bool = opt(bool, False, "LoKr: keep W2 a full matrix whatever the rank (all factors full: scale "
                            "1, alpha written as network_dim)")
    unbalanced_factorization: bool = opt(bool, False, "LoKr: swap the output factors (the bigger one in W1)")
    dora_wd: bool = opt(bool, False, "DoRA: also train a magnitude (dora_scale) on top of the algorithm")
    wd_on_output: bool = opt(bool, False, "DoRA: magnitude per output row instead of per input column. Off here "
                             "(LyCORIS >= 3.2 defaults to on): the input axis is the layout LyCORIS, ComfyUI and "
                             "A1111 apply alike")
    dropout: float = opt(float, 0.0, "dropout of the module's output ΔW·x while training (not with DoRA, as in "
                         "LyCORIS); --network_dropout sets it too", check=_ratio)
    rank_dropout: float = opt(float, 0.0, "drop output rows of ΔW while training (probability, LyCORIS' meaning)",
                              check=_ratio)
    rank_dropout_scale: bool = opt(bool, False, "rescale the rows kept by rank_dropout by 1/mean")
    module_dropout: float = opt(float, 0.0, "skip the whole module in a training step (probability)", check=_ratio)
    rs_lora: bool = opt(bool, False, "rank-stabilised scale alpha/sqrt(rank) (the file stores alpha*sqrt(rank))")
    use_scalar: bool = opt(bool, False, "train a scalar (from 0) multiplying ΔW, every factor initialised non-zero; "
                           "files hold it folded into one factor, as LyCORIS writes them")
    bypass_mode: bool = opt(bool, False, "always run the layer as base(x) + ΔW·x, never with the weight W + ΔW "
                            "(same numbers; LoCon and LoKr always run so). LoHa: more compute, no W+ΔW tensor")
    loraplus_lr_ratio: float | None = opt(float, None, "LoRA+: lr ratio of lora_up (LoCon) to the rest",
                                          check=_non_negative)
    loraplus_unet_lr_ratio: float | None = opt(float, None, "LoRA+ ratio for the U-Net", check=_non_negative)
    loraplus_text_encoder_lr_ratio: float | None = opt(float, None, "LoRA+ ratio for the text encoders",
                                                       check=_non_negative)


def lycoris_options() -> list[Option]:
    return list(options_of(LycorisArgs))


KNOWN_ARGS = frozenset({f.name for f in fields(LycorisArgs)} | set(DEPRECATED) | set(WITHOUT_EFFECT))


def str_bool(value: object) -> bool:
    """LyCORIS' reading of a boolean network_arg: everything but "false" (any case) is true."""
    return str(value).lower() != "false"


def resolve_use_tucker(kwargs: Mapping[str, object]) -> bool:
    """`use_tucker` after LyCORIS' handling of its deprecated aliases (copied over it in the order given, then
    `not disable_conv_cp or use_conv_cp or use_cp or use_tucker` on the raw values)."""
    kw = dict(kwargs)
    for key, value in kwargs.items():
        if key in DEPRECATED:
            log.warning("network_args %s is deprecated: use use_tucker", key)
            kw["use_tucker"] = value
    return str_bool(not kw.get("disable_conv_cp", True) or kw.get("use_conv_cp", False) or kw.get("use_cp", False)
                    or kw.get("use_tucker", False))


def _convert(o: Option, raw: object) -> object:
    if o.type is bool:
        text = str(raw).strip()
        if text.lower() not in ("true", "false"):
            log.warning("network_args %s=%s reads as true (only 'false' is false, as in LyCORIS)", o.name, text)
        return str_bool(text)
    if raw in (None, "", "None"):
        return o.default
    text = str(raw).strip()
    try:
        if o.type is int:
            number = float(text)
            if number != int(number):
                raise ValueError
            value: object = int(number)
        else:
            value = o.type(text)
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if o.type is int else "a number" if o.type is float else "text"
        raise ToolkitError(f"network_args {o.name}={raw!r}: expected {kind}") from None
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        raise ToolkitError(f"network_args {o.name}={raw!r}: expected a finite number")
    return value


def parse_lycoris_args(kwargs: Mapping[str, object]) -> LycorisArgs:
    """Typed, checked network_args; unknown names are warned about with the closest known one."""
    options = {o.name: o for o in lycoris_options()}
    values: dict[str, object] = {}
    for key, raw in kwargs.items():
        if key in DEPRECATED or key == "use_tucker":
            continue
        if key in WITHOUT_EFFECT:
            log.warning("network_args %s: no effect in networks.lycoris (%s)", key, WITHOUT_EFFECT[key])
            continue
        o = options.get(key)
        if o is None:
            close = difflib.get_close_matches(key, sorted(KNOWN_ARGS), n=1, cutoff=0.6)
            log.warning("network_args %s is not used by networks.lycoris%s", key,
                        f" (did you mean {close[0]}?)" if close else "")
            continue
        value = _convert(o, raw)
        if key == "algo":
            value = str(value).lower()
            if value in OTHER_ALGOS:
                raise ToolkitError(f"network_args algo={value}: networks.lycoris trains {', '.join(ALGOS)}; "
                                   "for this algorithm use --network_module lycoris.kohya with lycoris-lora installed")
        if o.choices and value not in o.choices:
            raise ToolkitError(f"network_args {key}={raw!r}: choose one of {', '.join(o.choices)}")
        if o.check is not None and value is not None:
            problem = o.check(value)
            if problem:
                raise ToolkitError(f"network_args {key}={raw!r}: {problem}")
        values[key] = value
    values["use_tucker"] = resolve_use_tucker(kwargs)
    return LycorisArgs(**values)
