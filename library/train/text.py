"""Captions to U-Net conditioning, exactly as sd-scripts trains, so a LoRA sees the same context either way.

SD1/SD2: tokenise (optionally 150/225 tokens in 75-token chunks) and run the text encoder with `--clip_skip`.
SDXL, as SDXL was trained: context = concat(CLIP ViT-L penultimate hidden states [.., 768], OpenCLIP ViT-bigG
penultimate hidden states [.., 1280]), no final layer norm; pooled = bigG's last hidden state at the first EOS
of the first 77-token window, through `text_projection`; windows joined as for SD1/SD2. The size conditioning
`time_ids` = (original h, w, crop top, crop left, target h, w) comes per image from the dataset; the U-Net
embeds it itself (Diffusers `add_time_proj`, the same sinusoidal embedding as SGM's).

`--weighted_captions`: captions are read by the prompt parser of library/generate/text.py (`(word:1.2)`,
`(word)`, `[word]`) and each token's hidden state is multiplied by its weight, as sd-scripts trains (SDXL: both
encoders' hidden states; the pooled output is left as it is). Plain captions give exactly the unweighted result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from library.errors import ToolkitError
from library.generate.text import join_chunks, scale_tokens, weighted_batch

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

    def tokenize_weighted(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, chunks, 77] of captions with `(word:1.2)` weights, and weights [B, 75·chunks+2]."""
        return weighted_batch(self.tokenizer, list(captions), (self.max_length - 2) // (self.chunk - 2))

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
        return join_chunks(hidden, b)

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        if not self.weighted:
            return self.encode(self.tokenize(captions))
        ids, weights = self.tokenize_weighted(captions)
        return scale_tokens(self.encode(ids), weights)

    def for_batch(self, batch: dict, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, None]:
        """(U-Net context, no added conditioning) for a training batch."""
        return self(batch["captions"]).to(device, dtype), None


@dataclass
class SdxlTextOutputs:
    """What the two encoders give for a batch: the cacheable part of SDXL's conditioning."""

    hidden1: torch.Tensor  # [B, T, 768] CLIP-L penultimate layer
    hidden2: torch.Tensor  # [B, T, 1280] bigG penultimate layer
    pool2: torch.Tensor  # [B, 1280] bigG projected pooled output

    def context(self) -> torch.Tensor:
        return torch.cat([self.hidden1, self.hidden2], dim=-1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SdxlTextOutputs:
        return SdxlTextOutputs(*(t.to(device, dtype) for t in (self.hidden1, self.hidden2, self.pool2)))

    @staticmethod
    def stack(items: Sequence[SdxlTextOutputs]) -> SdxlTextOutputs:
        return SdxlTextOutputs(*(torch.cat([getattr(i, k) for i in items]) for k in ("hidden1", "hidden2", "pool2")))

    def row(self, i: int) -> SdxlTextOutputs:
        return SdxlTextOutputs(self.hidden1[i:i + 1], self.hidden2[i:i + 1], self.pool2[i:i + 1])


def _pooled(te2: torch.nn.Module, last_hidden: torch.Tensor, ids: torch.Tensor, eos: int) -> torch.Tensor:
    """bigG's pooled output: the hidden state at the first EOS, projected (as SDXL and sd-scripts pool)."""
    index = (ids == eos).int().argmax(dim=-1).to(last_hidden.device)
    pooled = last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device), index]
    proj = te2.text_projection
    wide = proj.weight.dtype if proj.weight.element_size() > 1 else last_hidden.dtype  # fp8: computes in that
    return proj(pooled.to(wide)).to(last_hidden.dtype)


class SdxlTextConditioner:
    """Tokenisers + text encoders of an SDXL model; `__call__(captions)` gives `SdxlTextOutputs`."""

    def __init__(self, tokenizers: Sequence, text_encoders: Sequence[torch.nn.Module],  # noqa: ANN001
                 clip_skip: int | None = None, max_token_length: int | None = None, weighted: bool = False) -> None:
        if clip_skip is not None:
            log.warning("--clip_skip has no effect on SDXL: both encoders always use their penultimate layer")
        self.windows = [TextConditioner(tok, te, None, max_token_length) for tok, te in zip(tokenizers, text_encoders)]
        self.weighted = weighted
        self.text_encoders = list(text_encoders)

    def release_encoders(self) -> None:
        """Drop every reference to the encoders (after their outputs were cached), so their memory can go."""
        self.text_encoders = []
        for window in self.windows:
            window.text_encoder = None

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, windows, 77] for each encoder (te2 pads with `!`, te1 with EOS)."""
        return self.windows[0].tokenize(captions), self.windows[1].tokenize(captions)

    def encode(self, ids1: torch.Tensor, ids2: torch.Tensor) -> SdxlTextOutputs:
        te1, te2 = self.text_encoders
        b, n, length = ids1.shape
        flat1 = ids1.reshape(-1, length).to(next(te1.parameters()).device)
        flat2 = ids2.reshape(-1, length).to(next(te2.parameters()).device)
        hidden1 = te1(flat1, output_hidden_states=True, return_dict=True).hidden_states[-2]
        out2 = te2(flat2, output_hidden_states=True, return_dict=True)
        pool2 = _pooled(te2, out2.last_hidden_state, flat2, self.windows[1].eos)
        return SdxlTextOutputs(join_chunks(hidden1, b), join_chunks(out2.hidden_states[-2], b),
                               pool2.reshape(b, n, -1)[:, 0])

    def __call__(self, captions: Sequence[str]) -> SdxlTextOutputs:
        if not self.weighted:
            return self.encode(*self.tokenize(captions))
        (ids1, w1), (ids2, w2) = (w.tokenize_weighted(captions) for w in self.windows)
        outs = self.encode(ids1, ids2)
        return SdxlTextOutputs(scale_tokens(outs.hidden1, w1), scale_tokens(outs.hidden2, w2), outs.pool2)

    def for_batch(self, batch: dict, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(U-Net context, added conditioning `text_embeds` + `time_ids`) for a training batch; cached encoder
        outputs are used when the batch carries them."""
        cached = batch.get("te_outputs")
        outs = SdxlTextOutputs.stack(cached) if cached else self(batch["captions"])
        outs = outs.to(device, dtype)
        added = {"text_embeds": outs.pool2, "time_ids": batch["size_cond"].to(device, dtype)}
        return outs.context(), added


def text_conditioner(bundle, clip_skip: int | None = None,  # noqa: ANN001 - a ModelBundle
                     max_token_length: int | None = None,
                     weighted: bool = False) -> TextConditioner | SdxlTextConditioner:
    """The conditioner of a model's family (SD1/SD2: one encoder; SDXL: two plus size conditioning)."""
    if bundle.is_sdxl:
        return SdxlTextConditioner(bundle.tokenizers, bundle.text_encoders, clip_skip, max_token_length, weighted)
    return TextConditioner(bundle.tokenizers[0], bundle.text_encoders[0], clip_skip, max_token_length, weighted)
