"""Text conditioning of SDXL beyond CLIP's 77 tokens: the prompt encoded in windows, concatenated along the sequence.

`encode_long_prompt` tokenizes each prompt without special tokens, cuts the ids into windows of `window` tokens
(``model_max_length - 2``: 75 for SDXL), and lays every window out as SDXL lays out a whole prompt: BOS, the
window's tokens, EOS, then the tokenizer's own padding token up to ``window + 2`` (77). Each window goes through
both CLIP text encoders exactly as `StableDiffusionXLPipeline.encode_prompt` sends a prompt (penultimate hidden
state; the two encoders' features concatenated on the last dimension); the windows' states are concatenated along
the sequence, so a prompt of n windows conditions the UNet with ``n * 77`` tokens. The pooled embedding (SDXL's
``text_embeds``) is the last encoder's projection of the first window only.

- A prompt of at most `window` tokens is one window with the very ids diffusers uses, so its embeddings equal
  `encode_prompt`'s (same layers, same ids, same shapes).
- Every prompt and negative prompt of a call is padded to the same number of windows with windows of the empty
  prompt (BOS, EOS, padding: what the empty prompt encodes to), so ``prompt_embeds`` and
  ``negative_prompt_embeds`` have the same sequence length, as the pipeline requires (compel's rule).
- Every window, the last included, is padded to 77 (A1111's and compel's layout). Diffusers' community
  ``lpw_stable_diffusion_xl`` differs on three points: it leaves the last window unpadded, pads the shorter of
  prompt and negative with EOS tokens before windowing, and takes the pooled embedding from the last window.
- Windows are cut at token boundaries, not at words or commas.

`long_prompt_embeds(pipe, prompt, negative_prompt)` gives the four keyword arguments of an SDXL pipeline call
(``prompt_embeds=``, ``pooled_prompt_embeds=``, ``negative_prompt_embeds=``, ``negative_pooled_prompt_embeds=``),
with SDXL's own unconditional branch: zeros when the pipeline's `force_zeros_for_empty_prompt` is set and no
negative prompt is given (SDXL base's setting), else the encoded negative (or empty) prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["encode_long_prompt", "long_prompt_embeds", "prompt_windows"]


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    return [prompts] if isinstance(prompts, str) else list(prompts)


def _window_size(tokenizers: Sequence[Any], text_encoders: Sequence[Any], window: int | None) -> int:
    """`window` checked against what every tokenizer and encoder holds, or ``model_max_length - 2`` when None."""
    longest = min(int(t.model_max_length) for t in tokenizers)
    positions = [getattr(getattr(e, "config", None), "max_position_embeddings", None) for e in text_encoders]
    longest = min([longest, *(int(p) for p in positions if p is not None)])
    if window is None:
        window = longest - 2
    if not 1 <= window <= longest - 2:
        raise ValueError(f"window must be between 1 and {longest - 2} tokens (the encoders hold {longest}), got {window}")
    return window


def prompt_windows(tokenizer: Any, text: str, window: int) -> list[list[int]]:
    """The ids of `text` in windows of `window` tokens, each ``[BOS, tokens..., EOS, PAD...]`` of length
    ``window + 2``; the empty text is one window ``[BOS, EOS, PAD...]``."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None:
        pad = eos
    count = max(1, math.ceil(len(ids) / window))
    rows = []
    for k in range(count):
        part = list(ids[k * window : (k + 1) * window])
        rows.append([bos, *part, eos] + [pad] * (window - len(part)))
    return rows


def _empty_window(tokenizer: Any, window: int) -> list[int]:
    return prompt_windows(tokenizer, "", window)[0]


@torch.no_grad()
def _encode(
    tokenizers: Sequence[Any], text_encoders: Sequence[Any], texts: list[str], window: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, count * (window + 2), sum of widths) hidden states and (B, P) pooled of the first window.

    One forward pass per window position, over the batch: window k of every text together, so the first window
    goes through each encoder in exactly the (B, 77) call `encode_prompt` makes for the truncated prompts (equal
    results, not just close ones: a different batch shape may change the last bits of a matmul)."""
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        empty = _empty_window(tokenizer, window)
        windows = [prompt_windows(tokenizer, text, window) for text in texts]
        windows = [w + [empty] * (count - len(w)) for w in windows]
        device = next(encoder.parameters()).device
        hidden = []
        for k in range(count):
            ids = torch.tensor([w[k] for w in windows], dtype=torch.long, device=device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL's layer: the penultimate hidden state
            # the projected pooled output (text_encoder_2's text_embeds) of the first window, as diffusers takes it
            if k == 0 and out[0].ndim == 2:
                pooled = out[0]
        states.append(torch.cat(hidden, dim=1))
    if pooled is None:
        raise ValueError("no text encoder returns a pooled projection (SDXL's text_encoder_2 does)")
    return torch.cat(states, dim=-1), pooled


def encode_long_prompt(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    window: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)`` of
    `prompts` (a string or a list) in windows of `window` tokens (``model_max_length - 2`` when None).

    `negative_prompts`: one string for the whole batch, one per prompt, or None for the empty prompt. Shapes are
    those SDXL's pipeline takes: embeds (B, n * (window + 2), D1 + D2) with n the largest window count of any
    prompt or negative prompt of the call, pooled (B, P). On `device` / in `dtype`, by default the last text
    encoder's (as `encode_prompt` casts)."""
    texts = _as_list(prompts)
    if not texts:
        raise ValueError("no prompts to encode")
    if negative_prompts is None:
        negatives = [""] * len(texts)
    elif isinstance(negative_prompts, str):
        negatives = [negative_prompts] * len(texts)
    else:
        negatives = list(negative_prompts)
    if len(negatives) != len(texts):
        raise ValueError(f"{len(negatives)} negative prompts for {len(texts)} prompts")
    if len(tokenizers) != len(text_encoders):
        raise ValueError(f"{len(tokenizers)} tokenizers for {len(text_encoders)} text encoders")
    window = _window_size(tokenizers, text_encoders, window)
    count = max(len(prompt_windows(t, text, window)) for t in tokenizers for text in texts + negatives)
    embeds, pooled = _encode(tokenizers, text_encoders, texts, window, count)
    negative, negative_pooled = _encode(tokenizers, text_encoders, negatives, window, count)
    last = next(text_encoders[-1].parameters())
    device = last.device if device is None else device
    dtype = last.dtype if dtype is None else dtype
    return tuple(t.to(device=device, dtype=dtype) for t in (embeds, negative, pooled, negative_pooled))  # type: ignore[return-value]


def long_prompt_embeds(
    pipe: Any, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None, window: int | None = None
) -> dict[str, torch.Tensor]:
    """The embedding keyword arguments of an SDXL pipeline call for `prompt` encoded in windows (in place of
    ``prompt=`` / ``negative_prompt=``). The unconditional branch is zeros when `negative_prompt` is None and the
    pipeline's config has `force_zeros_for_empty_prompt`, as `encode_prompt` decides."""
    if getattr(pipe, "text_encoder_2", None) is None or getattr(pipe, "tokenizer_2", None) is None:
        raise ValueError(f"long prompts need an SDXL pipeline (two CLIP text encoders), not {type(pipe).__name__}")
    tokenizers = [t for t in (pipe.tokenizer, pipe.tokenizer_2) if t is not None]
    encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]
    embeds, negative, pooled, negative_pooled = encode_long_prompt(
        tokenizers,
        encoders,
        prompt,
        negative_prompt,
        window,
        device=pipe._execution_device,
        dtype=encoders[-1].dtype,
    )
    if negative_prompt is None and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    return {
        "prompt_embeds": embeds,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative,
        "negative_pooled_prompt_embeds": negative_pooled,
    }
