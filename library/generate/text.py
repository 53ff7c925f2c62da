r"""Prompt embeddings for generation: long prompts in 75-token chunks, emphasis, clip_skip, SDXL's two encoders.

A prompt longer than 75 tokens is encoded in chunks of `<BOS> 75 tokens <EOS/PAD>` (up to
`max_embeddings_multiples` chunks) and the outputs are joined keeping only the first BOS and the last
EOS, as sd-scripts does for `--max_token_length` in training (training.md §6). The number of chunks is the
smallest that holds the longest prompt of the batch, so a short prompt is encoded exactly as by Diffusers.

Emphasis follows the syntax sd-scripts and AUTOMATIC1111 read: `(word)` x1.1, `[word]` /1.1, `(word:1.5)` x1.5,
nested brackets multiply, `\(` `\)` `\[` `\]` are literal brackets. The token embeddings are scaled by their
weights and the whole is rescaled to its former mean, so emphasis shifts attention without changing the
overall magnitude. A prompt without brackets is untouched.

Training with `--weighted_captions` reads captions with the same parser (`weighted_batch`) and multiplies each
token's hidden state by its weight without the rescaling (`scale_tokens`), as sd-scripts' training does; SDXL
applies both to each of its two encoders' outputs.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch

from library.models import ModelBundle

log = logging.getLogger(__name__)

CHUNK = 75  # content tokens per CLIP window (77 minus BOS and EOS)
EMPHASIS = 1.1  # `(x)` multiplies by this, `[x]` divides by it
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")


@dataclass
class Conditioning:
    """U-Net conditioning of a batch: `embeds` [B, T, D]; `pooled` [B, P] for SDXL, else None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


def content_ids(tokenizer, text: str) -> list[int]:  # noqa: ANN001 - CLIPTokenizer
    """Token ids of `text` without BOS/EOS and without truncation."""
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs by its brackets; unclosed brackets apply to the end."""
    runs: list[list] = []  # [text, weight], weights multiplied in place as brackets close
    open_round: list[int] = []
    open_square: list[int] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            runs.append(["".join(buf), 1.0])
            buf.clear()

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    i = 0
    while i < len(text):
        c = text[i]
        m = _WEIGHT_CLOSE.match(text, i) if c == ":" and open_round else None
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "()[]\\":
            buf.append(text[i + 1])
            i += 2
            continue
        if m:
            flush()
            scale_from(open_round.pop(), float(m.group(1)))
            i = m.end()
            continue
        if c in "([":
            flush()
            (open_round if c == "(" else open_square).append(len(runs))
        elif c == ")" and open_round:
            flush()
            scale_from(open_round.pop(), EMPHASIS)
        elif c == "]" and open_square:
            flush()
            scale_from(open_square.pop(), 1 / EMPHASIS)
        else:
            buf.append(c)
        i += 1
    flush()
    for start in open_round:
        scale_from(start, EMPHASIS)
    for start in open_square:
        scale_from(start, 1 / EMPHASIS)
    merged: list[tuple[str, float]] = []
    for t, w in runs:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + t, w)
        elif t:
            merged.append((t, w))
    return merged or [("", 1.0)]


MAX_WEIGHT = 10.0  # beyond this a caption weight only blows the hidden states up (and the loss to NaN)
_WEIGHT_TEXT = re.compile(r":([^()\[\]]*)\)")


def emphasis_problem(text: str) -> tuple[int, str] | None:
    """(1-based position, what is wrong) of the first emphasis syntax error of a weighted caption, or None: a
    bracket never closed, a weight that is not a number, or one outside [0, MAX_WEIGHT]. Stray closing brackets
    stay plain text, as in the parser."""
    opened: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "([":
            opened.append((c, i))
        elif c == ":" and opened and opened[-1][0] == "(":
            m = _WEIGHT_TEXT.match(text, i)
            if m:
                word = m.group(1).strip()
                try:
                    weight = float(word)
                except ValueError:
                    return i + 2, f"weight {word!r} is not a number"
                if not 0 <= weight <= MAX_WEIGHT:
                    return i + 2, f"weight {word} is outside [0, {MAX_WEIGHT:g}]"
                opened.pop()
                i = m.end()
                continue
        elif c == ")" and opened and opened[-1][0] == "(" or c == "]" and opened and opened[-1][0] == "[":
            opened.pop()
        i += 1
    if opened:
        c, at = opened[0]
        return at + 1, f"'{c}' is never closed"
    return None


def weighted_ids(tokenizer, text: str) -> tuple[list[int], list[float]]:  # noqa: ANN001 - CLIPTokenizer
    """Content token ids of a prompt with emphasis, and one weight per token."""
    ids: list[int] = []
    weights: list[float] = []
    for part, w in parse_emphasis(text):
        part_ids = content_ids(tokenizer, part)
        ids += part_ids
        weights += [w] * len(part_ids)
    return ids, weights


def apply_weights(embeds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's embedding by its weight, then restore each prompt's mean (sd-scripts' lpw rule)."""
    if bool((weights == 1).all()):
        return embeds
    before = embeds.float().mean(dim=(-2, -1), keepdim=True)
    scaled = embeds.float() * weights[..., None]
    after = scaled.mean(dim=(-2, -1), keepdim=True)
    return (scaled * (before / after)).to(embeds.dtype)


def scale_tokens(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each token's hidden state [B, T, D] times its weight [B, T] (training: no mean rescaling, as sd-scripts)."""
    return hidden * weights.to(hidden.device, hidden.dtype)[..., None]


def weighted_batch(tokenizer, texts: list[str], n_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Token windows [B, n, 77] of prompts with emphasis, and weights [B, 75n+2] matching `join_chunks` output
    (BOS, EOS and padding weigh 1)."""
    rows, weight_rows = [], []
    length = CHUNK * n_chunks
    for t in texts:
        ids, weights = weighted_ids(tokenizer, t)
        rows.append(chunk_ids(ids, n_chunks, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id))
        weights = weights[:length]
        weight_rows.append([1.0, *weights, *[1.0] * (length - len(weights)), 1.0])
    return torch.stack(rows), torch.tensor(weight_rows)


def chunk_ids(ids: list[int], n_chunks: int, bos: int, eos: int, pad: int) -> torch.Tensor:
    """[n_chunks, 77] windows of `<BOS> 75 tokens <last>`; tokens past 75*n_chunks are dropped.

    With a pad token other than EOS (SD2, SDXL's second encoder) a window cut inside the text gets EOS as its
    last token, and an empty window starts `<BOS> <EOS>`, so every window is a well-formed CLIP input.
    """
    length = CHUNK * n_chunks
    full = [bos, *ids[:length], eos]
    full += [pad] * (length + 2 - len(full))
    out = []
    for c in range(n_chunks):
        chunk = [full[0], *full[1 + CHUNK * c:1 + CHUNK * (c + 1)], full[-1]]
        if pad != eos:
            if chunk[-2] not in (eos, pad):
                chunk[-1] = eos
            if chunk[1] == pad:
                chunk[1] = eos
        out.append(chunk)
    return torch.tensor(out, dtype=torch.long)


def join_chunks(hidden: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*n, 77, D] chunk outputs -> [B, 75n+2, D]: first BOS, the 75 middles of every chunk, last EOS."""
    n = hidden.shape[0] // batch
    h = hidden.reshape(batch, n, hidden.shape[1], hidden.shape[2])
    middle = h[:, :, 1:-1].reshape(batch, n * (hidden.shape[1] - 2), hidden.shape[2])
    return torch.cat([h[:, 0, :1], middle, h[:, -1, -1:]], dim=1)


def _final_norm(te: torch.nn.Module) -> torch.nn.Module:
    # transformers 5 CLIPTextModel has no `text_model.` level; CLIPTextModelWithProjection still does
    return getattr(te, "text_model", te).final_layer_norm


class PromptEncoder:
    """Encodes prompt batches for one ModelBundle (the text encoders may carry LoRA modules)."""

    def __init__(self, bundle: ModelBundle, clip_skip: int | None = None, max_embeddings_multiples: int = 1) -> None:
        self.bundle = bundle
        self.max_chunks = max(1, max_embeddings_multiples or 1)
        self.clip_skip = clip_skip
        if clip_skip is not None and clip_skip < 1:
            from library.errors import ToolkitError

            raise ToolkitError(f"--clip_skip must be 1 or more, got {clip_skip}")
        if bundle.is_sdxl and clip_skip not in (None, 1, 2):
            log.warning("SDXL ignores --clip_skip: its encoders always use the penultimate layer")
        elif bundle.is_v2 and clip_skip not in (None, 1):
            log.warning("--clip_skip with an SD2 model is unusual: SD2 already uses the penultimate layer")

    def n_chunks(self, texts: list[str]) -> int:
        """Chunks needed by the longest text, capped at max_embeddings_multiples (warns when cut)."""
        longest = max((len(weighted_ids(self.bundle.tokenizers[0], t)[0]) for t in texts), default=0)
        needed = max(1, math.ceil(longest / CHUNK))
        if needed > self.max_chunks:
            log.warning("a prompt has %d tokens; only the first %d are used (raise --max_embeddings_multiples)",
                        longest, CHUNK * self.max_chunks)
        return min(needed, self.max_chunks)

    def _ids(self, tokenizer, texts: list[str], n: int,  # noqa: ANN001
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """[B*n, 77] window ids and [B, 75n+2] weights matching the joined embeddings."""
        ids, weights = weighted_batch(tokenizer, texts, n)
        return ids.reshape(-1, ids.shape[-1]).to(device), weights.to(device)

    @torch.no_grad()
    def _encode(self, texts: list[str], n: int) -> Conditioning:
        b = self.bundle
        device = b.unet.device
        if not b.is_sdxl:
            te = b.text_encoders[0]
            ids, weights = self._ids(b.tokenizers[0], texts, n, te.device)
            if self.clip_skip in (None, 1):
                hidden = te(ids).last_hidden_state
            else:
                hidden = _final_norm(te)(te(ids, output_hidden_states=True).hidden_states[-self.clip_skip])
            embeds = apply_weights(join_chunks(hidden, len(texts)), weights)
            return Conditioning(embeds.to(device, b.unet.dtype))
        parts, pooled = [], None
        for i, (te, tok) in enumerate(zip(b.text_encoders, b.tokenizers)):
            ids, weights = self._ids(tok, texts, n, te.device)
            out = te(ids, output_hidden_states=True)
            # penultimate layer, no final norm (SDXL)
            parts.append(apply_weights(join_chunks(out.hidden_states[-2], len(texts)), weights))
            if i == 1:  # pooled output of the first window, as sd-scripts does for long prompts
                pooled = out.text_embeds.reshape(len(texts), n, -1)[:, 0]
        return Conditioning(torch.cat(parts, dim=-1).to(device, b.unet.dtype), pooled.to(device, b.unet.dtype))

    def encode(self, prompts: list[str], negatives: list[str]) -> tuple[Conditioning, Conditioning]:
        """(positive, negative) conditioning with the same length, so classifier-free guidance can pair them."""
        n = self.n_chunks(prompts + negatives)
        return self._encode(prompts, n), self._encode(negatives, n)
