"""Aspect-ratio bucketing (sd-scripts' rules): the bucket list, which bucket an image goes to, and its resize.

Default mode picks from a predefined list of sizes of about the training area and scales the image to cover
the bucket; `bucket_no_upscale` derives the bucket from the image itself (shrunk to the area if larger) and
never enlarges it. Either way the image is then cropped to the bucket, never padded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from library.errors import ToolkitError

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)


def make_bucket_resolutions(max_reso: Size, min_size: int, max_size: int, step: int) -> list[Size]:
    """Sizes of about `max_reso`'s area, each side a multiple of `step` within [min_size, max_size]."""
    area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(area) // step) * step
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((area // width) // step) * step)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


@dataclass(frozen=True)
class Assignment:
    """Where one image goes: the bucket, the size it is resized to before cropping, and the aspect error."""

    bucket: Size
    resized: Size
    ar_error: float


class BucketSelector:
    """Assigns images to buckets for one dataset (resolution and bucket options as on the command line)."""

    def __init__(self, resolution: Size, enable_bucket: bool = False, min_bucket_reso: int = 256,
                 max_bucket_reso: int = 1024, bucket_reso_steps: int = 64, bucket_no_upscale: bool = False) -> None:
        self.resolution = resolution
        self.enable_bucket = enable_bucket
        self.no_upscale = enable_bucket and bucket_no_upscale
        self.step = bucket_reso_steps
        self.area = resolution[0] * resolution[1]
        if not enable_bucket:
            self.predefined = [resolution]
            return
        if bucket_reso_steps <= 0:
            raise ToolkitError(f"bucket_reso_steps must be positive, got {bucket_reso_steps}")
        if min_bucket_reso < self.step:  # would round down to 0 (sd-scripts then divides by zero)
            raise ToolkitError(f"min_bucket_reso ({min_bucket_reso}) must be at least bucket_reso_steps "
                               f"({self.step})")
        self.min_size = min_bucket_reso - min_bucket_reso % self.step
        self.max_size = max_bucket_reso + (-max_bucket_reso) % self.step
        if self.min_size != min_bucket_reso:
            log.warning("min_bucket_reso %d adjusted to %d, a multiple of bucket_reso_steps %d", min_bucket_reso,
                        self.min_size, self.step)
        if self.max_size != max_bucket_reso:
            log.warning("max_bucket_reso %d adjusted to %d, a multiple of bucket_reso_steps %d", max_bucket_reso,
                        self.max_size, self.step)
        if self.min_size > min(resolution):
            raise ToolkitError(f"min_bucket_reso ({min_bucket_reso}) must not exceed the smaller side of "
                               f"resolution {resolution[0]}x{resolution[1]}")
        if max(resolution) > self.max_size:
            raise ToolkitError(f"max_bucket_reso ({max_bucket_reso}) must be at least the larger side of "
                               f"resolution {resolution[0]}x{resolution[1]}")
        self.predefined = [] if self.no_upscale else make_bucket_resolutions(
            resolution, self.min_size, self.max_size, self.step)

    def _round(self, x: float) -> int:
        """Round to nearest, then down to a multiple of the step (at least one step)."""
        x = int(x + 0.5)
        return max(self.step, x - x % self.step)

    def select(self, width: int, height: int) -> Assignment:
        """The bucket and resize of a `width` x `height` image."""
        ar = width / height
        if not self.enable_bucket:
            bucket = self.resolution
        elif not self.no_upscale:
            bucket = (width, height) if (width, height) in self.predefined else min(
                self.predefined, key=lambda r: abs(r[0] / r[1] - ar))  # min keeps the first of equal errors
        else:
            return self._select_no_upscale(width, height, ar)
        # scale so the image covers the bucket: wider than the bucket => match heights, else widths
        scale = bucket[1] / height if ar > bucket[0] / bucket[1] else bucket[0] / width
        resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        return Assignment(bucket, resized, abs(bucket[0] / bucket[1] - ar))

    def _select_no_upscale(self, width: int, height: int, ar: float) -> Assignment:
        if width * height > self.area:
            rw = math.sqrt(self.area * ar)
            rh = self.area / rw
            w_r = self._round(rw)
            h_r = self._round(rh)
            err_w = abs(w_r / self._round(w_r / ar) - ar)
            err_h = abs(self._round(h_r * ar) / h_r - ar)
            resized = (w_r, int(w_r / ar + 0.5)) if err_w < err_h else (int(h_r * ar + 0.5), h_r)
        else:
            resized = (width, height)
        bucket = (max(self.step, resized[0] - resized[0] % self.step),
                  max(self.step, resized[1] - resized[1] % self.step))
        if bucket[0] > resized[0] or bucket[1] > resized[1]:  # image smaller than one step: the only way is up
            scale = max(bucket[0] / resized[0], bucket[1] / resized[1])
            resized = (math.ceil(resized[0] * scale), math.ceil(resized[1] * scale))
        return Assignment(bucket, resized, abs(bucket[0] / bucket[1] - ar))


def crop_offsets(resized: Size, bucket: Size) -> tuple[int, int]:
    """Centre-crop offsets (left, top) of a bucket inside the resized image."""
    return (resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2


def bucket_info(assignments: dict[Size, int], mean_ar_error: float) -> dict:
    """`ss_bucket_info` metadata: the non-empty buckets and the mean aspect error."""
    buckets = {i: {"resolution": list(r), "count": n} for i, (r, n) in enumerate(sorted(assignments.items()))}
    return {"buckets": buckets, "mean_img_ar_error": mean_ar_error}
