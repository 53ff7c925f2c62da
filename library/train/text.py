"""Captions to U-Net conditioning for SD1/SD2: tokenise (optionally 150/225 tokens in 75-token chunks) and run
the text encoder with `--clip_skip`, exactly as sd-scripts does, so a LoRA sees the same context either way.
With `--weighted_captions` captions are read by the prompt parser of library/generate/text.py and each token's
hidden state is multiplied by its weight."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from library.errors import ToolkitError
from library.generate.text import scale_tokens, weighted_batch

log = logging.getLogger(__name__)


class TextConditioner:
    """One CLIP tokenizer + text encoder pair (SD1/SD2)."""

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, clip_skip: int | None = None,  # noqa: ANN001
                 max_token_length: int | None = None, weighted: bool = False) -> None:
        if max_token_length not in (None, 75, 150, 225):
            raise ToolkitError(f"--max_token_length must be 75, 150 or 225, got {max_token_length}")
        if clip_skip is not None and clip_skip < 1:
            raise ToolkitError(f"--clip_skip must be 1 or more, got {clip_skip}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.clip_skip = clip_skip
        self.chunk = tokenizer.model_max_length  # 77
        self.max_length = self.chunk if max_token_length is None else max_token_length + 2
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.weighted = weighted

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Token ids [B, chunks, 77]: each chunk is `<BOS> 75 tokens <EOS|PAD>`."""
        ids = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").input_ids
        if self.max_length == self.chunk:
            return ids.unsqueeze(1)
        inner = self.chunk - 2
        chunks = []
        for i in range(1, self.max_length - 1, inner):
            c = torch.cat([ids[:, :1], ids[:, i:i + inner], ids[:, -1:]], dim=1)
            if self.pad != self.eos:  # SD2: a chunk that ends in text ends in EOS; an empty chunk starts with EOS
                ends_in_text = (c[:, -2] != self.eos) & (c[:, -2] != self.pad)
                c[ends_in_text, -1] = self.eos
                c[c[:, 1] == self.pad, 1] = self.eos
            chunks.append(c)
        return torch.stack(chunks, dim=1)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, 77 or 75·n+2, D] for token ids from `tokenize`."""
        b, n, length = ids.shape
        device = next(self.text_encoder.parameters()).device
        flat = ids.reshape(-1, length).to(device)
        if self.clip_skip is None or self.clip_skip == 1:
            hidden = self.text_encoder(flat)[0]
        else:
            out = self.text_encoder(flat, output_hidden_states=True, return_dict=True)
            hidden = out.hidden_states[-self.clip_skip]
            final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm
            hidden = final_norm(hidden)
        hidden = hidden.reshape(b, n * length, -1)
        if n == 1:
            return hidden
        parts = [hidden[:, :1]]
        for k in range(n):
            chunk = hidden[:, k * length + 1:(k + 1) * length - 1]
            parts.append(chunk)
        parts.append(hidden[:, -1:])
        return torch.cat(parts, dim=1)

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        if not self.weighted:
            return self.encode(self.tokenize(captions))
        ids, weights = weighted_batch(self.tokenizer, list(captions), (self.max_length - 2) // (self.chunk - 2))
        return scale_tokens(self.encode(ids), weights)
