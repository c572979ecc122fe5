"""Ground truth by extraction (Carlini et al. 2022, docs/theory.md §6).

A sequence x is (p, s)-extractable when greedy decoding from its first p tokens reproduces its
next s tokens exactly. :func:`extraction` decodes every sequence's suffix in batches with the
model's KV cache (one forward over the prefixes, then one single-token forward per suffix
token); models whose forward takes no cache (a hand-written nanoGPT) are decoded by running
the whole growing sequence at every step, which gives the same tokens, only slower.
``audit()`` and ``Audit.query`` do not decode: they read the same runs off their capture's
top-1 hits (:func:`hopaudit.evidence.scores.greedy_runs`, docs/theory.md §6).
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hopaudit.errors import CaptureError, DataError, HopauditError, ModelError
from hopaudit.progress import tqdm

__all__ = [
    "NOT_DECODED",
    "ExtractionResult",
    "check_extraction",
    "decoded_tokens",
    "extraction",
    "extraction_unsupported",
]

DEFAULT_PREFIX = 32
DEFAULT_SUFFIX = 32


@dataclass
class ExtractionResult:
    """Per sequence: ``extracted`` (the whole suffix matched), ``extracted_tokens`` (how many
    leading suffix tokens matched, 0..suffix) and ``generated`` (the greedy suffix, token ids,
    up to and including the first token that differs from the text at least; ``NOT_DECODED``
    where decoding stopped because every sequence of its batch had diverged)."""

    extracted: np.ndarray  # (n,) bool
    extracted_tokens: np.ndarray  # (n,) int64
    generated: np.ndarray  # (n, suffix) int64
    prefix: int
    suffix: int
    seconds: float
    tokens_per_second: float  # generated tokens per second
    cached: bool  # decoded with the KV cache

    @property
    def rate(self) -> float:
        """Fraction of sequences extracted."""
        return float(self.extracted.mean()) if self.extracted.size else float("nan")


def extraction_unsupported(model: Any) -> str | None:
    """Why ``model`` cannot be decoded greedily (an encoder, a masked or seq2seq LM), or None."""
    from hopaudit.model.blocks import is_masked_lm

    name = type(model).__name__
    cfg = getattr(model, "config", None)
    if is_masked_lm(model):
        return f"{name} is a masked LM: extraction needs a causal LM that decodes left to right"
    if cfg is not None and getattr(cfg, "is_encoder_decoder", False):
        return f"{name} is an encoder-decoder: extraction is defined for decoder-only causal LMs"
    get_head = getattr(model, "get_output_embeddings", None)
    if cfg is not None and callable(get_head) and get_head() is None:
        return f"{name} has no LM head (an encoder): there is no next token to decode"
    return None


def parse_extraction(option: Any) -> tuple[int, int] | None:
    """``audit(extraction=...)``: False/None (off), True (32, 32) or {"prefix": p, "suffix": s}."""
    if option is None or option is False:
        return None
    if option is True:
        return DEFAULT_PREFIX, DEFAULT_SUFFIX
    if isinstance(option, dict) and set(option) <= {"prefix", "suffix"}:
        return _check_lengths(
            option.get("prefix", DEFAULT_PREFIX), option.get("suffix", DEFAULT_SUFFIX)
        )
    raise DataError(
        f"extraction={option!r} is not understood; pass True (prefix=suffix=32) or "
        '{"prefix": p, "suffix": s}'
    )


def _check_lengths(prefix: Any, suffix: Any) -> tuple[int, int]:
    for name, v in (("prefix", prefix), ("suffix", suffix)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise DataError(f"extraction {name} must be a positive number of tokens, got {v!r}")
    return int(prefix), int(suffix)


def check_extraction(lengths: Any, prefix: int, suffix: int, what: str = "data") -> None:
    """Every sequence must hold prefix + suffix real tokens (checked before any forward)."""
    lengths = np.asarray(lengths)
    short = np.flatnonzero(lengths < prefix + suffix)
    if short.size:
        raise DataError(
            f"extraction needs prefix + suffix = {prefix} + {suffix} = {prefix + suffix} tokens "
            f"per sequence, but {short.size} of the {lengths.size} sequences of the {what} are "
            f"shorter (sequence {int(short[0])} has {int(lengths[short[0]])}); pass a smaller "
            "prefix and suffix, or longer sequences (max_length, chunking='stream')"
        )


def _cache_argument(model: Any) -> str | None:
    """The forward's KV-cache keyword (``cache`` in transformers 5, ``past_key_values``
    before), or None when the forward takes no cache."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if "use_cache" not in params:
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _cache_of(output: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise ModelError(f"{type(output).__name__} returned no KV cache with use_cache=True")


def _logits(output: Any) -> torch.Tensor:
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise ModelError(f"{type(output).__name__} holds no (batch, seq, vocab) logits to decode")
    return logits


#: What ``generated`` holds after decoding stopped: no token id is negative, so it never matches.
NOT_DECODED = -1


def greedy_suffix(
    model: Any,
    prefix_ids: torch.Tensor,
    suffix: int,
    cache_arg: str | None,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy continuation of ``suffix`` tokens for a dense (batch, p) prefix batch, with the KV
    cache passed as ``cache_arg`` (None: the whole growing sequence at every step).

    With ``target`` (batch, suffix), decoding stops once every row has produced a token that
    differs from its target: what extraction measures (the longest matching run) is then known,
    and the rest of the row is ``NOT_DECODED``. A model that memorized nothing diverges within
    a few tokens, so this saves most of the decoding; a memorized batch decodes to the end.
    """
    batch = prefix_ids.shape[0]
    out_tokens = torch.full(
        (batch, suffix), NOT_DECODED, dtype=torch.long, device=prefix_ids.device
    )
    alive = torch.ones(batch, dtype=torch.bool, device=prefix_ids.device)

    def keep(i: int, nxt: torch.Tensor) -> bool:
        """Write step i's tokens; False when no row can still match its target."""
        out_tokens[:, i] = nxt
        if target is None:
            return True
        alive.logical_and_(nxt == target[:, i])
        return bool(alive.any())

    if cache_arg is not None:
        mask = torch.ones_like(prefix_ids)
        out = model(input_ids=prefix_ids, attention_mask=mask, use_cache=True)
        past = _cache_of(out)
        nxt = _logits(out)[:, -1].argmax(-1)
        for i in range(suffix):
            if not keep(i, nxt) or i == suffix - 1:
                break
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            kwargs = {cache_arg: past}
            out = model(input_ids=nxt[:, None], attention_mask=mask, use_cache=True, **kwargs)
            past = _cache_of(out)
            nxt = _logits(out)[:, -1].argmax(-1)
        return out_tokens
    ids = prefix_ids
    for i in range(suffix):
        nxt = _logits(model(input_ids=ids, attention_mask=torch.ones_like(ids)))[:, -1].argmax(-1)
        if not keep(i, nxt):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out_tokens


def decoded_tokens(generated: Any) -> int:
    """How many tokens greedy decoding produced (``NOT_DECODED`` ones are not counted)."""
    return int((np.asarray(generated) != NOT_DECODED).sum())


def extract(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    prefix: int = DEFAULT_PREFIX,
    suffix: int = DEFAULT_SUFFIX,
    batch_size: int | None = None,
    progress: bool = True,
    what: str = "data",
    autocast: torch.dtype | None = None,
    full: bool = False,
) -> ExtractionResult:
    """Greedy extraction of right-padded token sequences (checked; see :func:`extraction`),
    under ``autocast`` to that dtype with the weights cast once (None: the model as it is).
    ``full=True`` decodes every suffix to its end, so ``generated`` holds the whole greedy
    continuation (by default a batch stops once all its rows have diverged from their text)."""
    from hopaudit.capture.batching import choose_batch_size, model_device
    from hopaudit.capture.head import output_head
    from hopaudit.heap import kept_heap
    from hopaudit.model.precision import autocast_context, cast_weights_once

    prefix, suffix = _check_lengths(prefix, suffix)
    ids = torch.as_tensor(input_ids).long()
    mask = torch.as_tensor(attention_mask).long()
    check_extraction((mask != 0).sum(1).numpy(), prefix, suffix, what)
    if not bool((mask[:, : prefix + suffix] != 0).all()):
        raise DataError("extraction needs right-padded sequences (real tokens first)")
    n = ids.shape[0]
    device = model_device(model)
    if batch_size is None:
        batch_size = choose_batch_size(model, prefix + suffix, n, device)
    cache_arg = _cache_argument(model)
    generated = torch.empty(n, suffix, dtype=torch.long)
    flags = [(m, m.training) for m in model.modules()]
    t0 = time.perf_counter()
    bar = tqdm(total=n, unit="seq", desc="extraction", disable=not progress, leave=False)
    try:
        model.eval()
        with (
            torch.inference_mode(),
            autocast_context(autocast, device),
            cast_weights_once(model, autocast, first=[output_head(model)]),  # head: every step
            kept_heap() as heap,  # same-shaped batches: freed blocks reused (heap.py)
        ):
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                batch = ids[start:stop, :prefix].to(device)
                target = None if full else ids[start:stop, prefix : prefix + suffix].to(device)
                try:
                    generated[start:stop] = greedy_suffix(
                        model, batch, suffix, cache_arg, target
                    ).cpu()
                except HopauditError:
                    raise
                except Exception as e:
                    raise CaptureError(
                        f"greedy decoding failed on sequences {start}..{stop - 1}: "
                        f"{type(e).__name__}: {e}"
                    ) from e
                heap.batch_done()
                bar.update(stop - start)
                decoded = int((generated[:stop] != NOT_DECODED).sum())
                rate = decoded / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
    finally:
        bar.close()
        for m, f in flags:
            m.training = f
    seconds = time.perf_counter() - t0
    target = ids[:, prefix : prefix + suffix]
    match = (generated == target).long()
    matched = match.cumprod(1).sum(1).numpy().astype(np.int64)
    return ExtractionResult(
        extracted=matched == suffix,
        extracted_tokens=matched,
        generated=generated.numpy(),
        prefix=prefix,
        suffix=suffix,
        seconds=seconds,
        tokens_per_second=decoded_tokens(generated) / seconds if seconds > 0 else float("inf"),
        cached=cache_arg is not None,
    )


def extraction(
    model: Any,
    data: Any,
    *,
    prefix: int = DEFAULT_PREFIX,
    suffix: int = DEFAULT_SUFFIX,
    tokenizer: Any = None,
    max_length: int | None = None,
    chunking: str = "stream",
    max_sequences: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> ExtractionResult | None:
    """Which sequences of ``data`` a causal LM reproduces: greedy decoding from each sequence's
    first ``prefix`` tokens, compared with its next ``suffix`` tokens (Carlini et al. 2022).

    ``data`` takes every form :func:`hopaudit.audit` takes (texts need the tokenizer, found
    beside the model when not given). Every sequence must hold ``prefix + suffix`` tokens (a
    :class:`DataError` before any forward otherwise). Returns None, with a warning saying why,
    for a model that cannot decode left to right (an encoder, a masked LM).
    """
    from hopaudit.data.prepare import prepare_data
    from hopaudit.model.loading import load_model

    prefix, suffix = _check_lengths(prefix, suffix)
    model, tokenizer = load_model(model, tokenizer=tokenizer)
    reason = extraction_unsupported(model)
    if reason is not None:
        warnings.warn(f"no extraction: {reason}", stacklevel=2)
        return None
    tokens = prepare_data(
        data,
        tokenizer,
        max_length=max_length,
        chunking=chunking,
        max_sequences=max_sequences,
        model=model,
    )
    return extract(
        model,
        tokens.input_ids,
        tokens.attention_mask,
        prefix=prefix,
        suffix=suffix,
        batch_size=batch_size,
        progress=progress,
    )
