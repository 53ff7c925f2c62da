"""Per-sample caption processing: prefix/suffix, dropout, wildcards, tag shuffle with kept tokens, token warm-up.

Follows sd-scripts' order of operations so captions written for it train the same way. Randomness comes from the
`random.Random` the caller passes, so a sample's caption depends only on (seed, epoch, position), not on workers.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_WILDCARD = re.compile(r"\{([^{}]+)\}")
_LBRACE, _RBRACE = "\x00lb\x00", "\x00rb\x00"


@dataclass(frozen=True)
class CaptionOptions:
    """Caption settings of one subset (names as in the dataset TOML)."""

    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0

    @property
    def splits_tags(self) -> bool:
        return self.shuffle_caption or self.token_warmup_step > 0 or self.caption_tag_dropout_rate > 0


def _expand_wildcards(caption: str, rng: random.Random) -> str:
    """`{a|b|c}` picks one option; `{{` and `}}` stand for literal braces."""
    caption = caption.replace("{{", _LBRACE).replace("}}", _RBRACE)
    caption = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(_LBRACE, "{").replace(_RBRACE, "}")


def _tags(text: str, separator: str) -> list[str]:
    return [t.strip() for t in text.split(separator) if t.strip()]


def _split_fixed(caption: str, opts: CaptionOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, flexible tags, fixed tail) of a caption."""
    sep = opts.keep_tokens_separator
    if sep and sep in caption:
        head, flex = caption.split(sep, 1)
        tail = ""
        if sep in flex:
            flex, tail = flex.split(sep, 1)
        return (_tags(head, opts.caption_separator), _tags(flex, opts.caption_separator),
                _tags(tail, opts.caption_separator))
    tags = [t.strip() for t in caption.strip().split(opts.caption_separator)]
    if opts.keep_tokens > 0:
        return tags[: opts.keep_tokens], tags[opts.keep_tokens:], []
    return [], tags, []


def warmup_steps(opts: CaptionOptions, max_train_steps: int) -> int:
    """`token_warmup_step` below 1 is a fraction of the training steps."""
    if opts.token_warmup_step < 1:
        return math.floor(opts.token_warmup_step * max_train_steps)
    return int(opts.token_warmup_step)


def process_caption(caption: str, opts: CaptionOptions, rng: random.Random, epoch: int = 0, step: int = 0,
                    max_train_steps: int = 0) -> str:
    """The caption a sample trains with this time (sd-scripts' process_caption semantics)."""
    if "\n" in caption:  # a wildcard caption file: one of its lines per use
        caption = rng.choice(caption.split("\n"))
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix
    dropped = opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate
    if opts.caption_dropout_every_n_epochs > 0 and epoch % opts.caption_dropout_every_n_epochs == 0:
        dropped = True
    if dropped:
        return ""
    if opts.enable_wildcard:
        caption = _expand_wildcards(caption, rng)
    if opts.splits_tags:
        fixed, flex, tail = _split_fixed(caption, opts)
        warmup = warmup_steps(opts, max_train_steps)
        if warmup and step < warmup:
            keep = math.floor(step * (len(flex) - opts.token_warmup_min) / warmup) + opts.token_warmup_min
            flex = flex[:keep]
        if opts.shuffle_caption:
            rng.shuffle(flex)
        if opts.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + tail)
    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, opts.caption_separator)
    return caption


def caption_text(text: str, enable_wildcard: bool) -> str:
    """What a caption file contributes: its first non-empty line, or with wildcards all of them (one per use)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    return "\n".join(lines) if enable_wildcard else lines[0]
