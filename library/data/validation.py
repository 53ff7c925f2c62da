"""The validation split: a seeded share of each training subset held out of training (sd-scripts'
`validation_split`, per dataset). Regularisation subsets are never split. Validation samples see no
augmentation and no caption randomness, so a validation loss only moves when the weights do.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

from library.data.config import SubsetConfig


def split_records(records: Sequence, share: float, seed: int) -> tuple[list, list]:
    """(training, validation) records of one subset: shuffled by `seed`, the first ceil(n·(1−share)) train.

    The two parts are disjoint by construction and depend only on the file names, `share` and `seed`."""
    if share <= 0:
        return list(records), []
    order = sorted(records, key=lambda r: r.path.name)
    random.Random(seed).shuffle(order)
    n_train = math.ceil(len(order) * (1 - share))
    held = {id(r) for r in order[n_train:]}
    return [r for r in records if id(r) not in held], [r for r in records if id(r) in held]


def validation_subset(subset: SubsetConfig) -> SubsetConfig:
    """The subset as validation reads it: no flips, colour changes, random or face crops, caption shuffle or
    dropout."""
    caption = dataclasses.replace(subset.caption, shuffle_caption=False, caption_dropout_rate=0.0,
                                  caption_dropout_every_n_epochs=0, caption_tag_dropout_rate=0.0,
                                  token_warmup_step=0)
    return dataclasses.replace(subset, caption=caption, flip_aug=False, color_aug=False, random_crop=False,
                               face_crop_aug_range=None, num_repeats=1)
