"""Write a state dict tensor by tensor (safetensors) so a save never holds a second, serialized model."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import torch

from library.files import SAFETENSORS_EXT, save_state_dict, stream_safetensors


def write_tensors(path: str | os.PathLike, sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                  metadata: dict[str, str] | None = None, bar=None, extra: dict | None = None,  # noqa: ANN001
                  shown: str | os.PathLike | None = None) -> None:
    """Atomically write `sd` cast to `dtype` (floating tensors only, range-checked): `.safetensors` streamed, else
    `torch.save` (with `extra` keys such as epoch/global_step). `bar` (a tqdm) advances once per tensor.
    `shown`: the path errors name when `path` lies in a temporary folder."""
    if str(path).lower().endswith(SAFETENSORS_EXT):
        layout = [(k, dtype if dtype is not None and v.is_floating_point() else v.dtype, tuple(v.shape))
                  for k, v in sd.items()]

        def tensors() -> Iterator[torch.Tensor]:
            for v in sd.values():
                yield v
                if bar is not None:
                    bar.update(1)

        stream_safetensors(path, layout, tensors(), metadata, shown)
        return
    save_state_dict(sd, path, metadata, extra, dtype)
    if bar is not None:
        bar.update(len(sd))
