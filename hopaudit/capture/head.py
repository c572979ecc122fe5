"""The LM head run by the scores, a few hundred rows at a time: a batch's logits never whole.

A causal LM's forward ends in its output embedding (the LM head), whose output, batch x length
x vocabulary, is the largest tensor of the pass (a batch of 20 x 64 GPT-2 tokens: 123 MiB in
bfloat16). The scores read each row once (:mod:`hopaudit.evidence.scores`), so the capture can
stop the head from making them: :class:`HeadChunks` records the head's input (the final hidden
states) and hands the head an empty slice of it; the scores then run the head on the rows they
need, a chunk at a time, while the chunk's logits are still in cache.

That is only the same computation when the model's logits *are* its head's output. Some models
post-process them (Gemma 2's soft-capping, Cohere's logit scale): :func:`check_head` runs the
first tokens of the first sequence once as the model is, and keeps the model's own logits
unless the head, called on the very input it got, gives them back bit for bit. A model that
cannot run on an empty slice (an error in the intercepted batch) runs that batch again with its
logits whole, as does every later batch (capture/forward.py). docs/performance.md, "The
logits".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["HeadChunks", "check_head", "intercepted_head", "output_head"]


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's LM head (transformers' ``get_output_embeddings()``), or None when it has none
    or it is offloaded (accelerate's hooks would move its weight in at every chunk)."""
    get = getattr(model, "get_output_embeddings", None)
    try:
        head = get() if callable(get) else None
    except (AttributeError, NotImplementedError, TypeError):
        return None
    if not isinstance(head, nn.Module) or hasattr(head, "_hf_hook"):
        return None
    return head


class HeadChunks:
    """While :meth:`intercepting`, every call of ``head`` records its input (``hidden``) and
    runs on an empty slice of it instead, so the model's logits have no positions; ``head`` on
    rows of ``hidden`` gives the logits the model would have made (:func:`check_head`)."""

    def __init__(self, head: nn.Module, vocab: int, dtype: torch.dtype) -> None:
        self.head = head
        self.vocab, self.dtype = vocab, dtype  # of the logits it makes
        self.hidden: torch.Tensor | None = None
        self.calls = 0
        self.active = True

    @contextlib.contextmanager
    def intercepting(self) -> Iterator[HeadChunks]:
        """The head intercepted for the block; the hook is removed after, also on error."""

        def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
            if not self.active:
                return None
            if not args or not isinstance(args[0], torch.Tensor) or args[0].ndim != 3:
                return None  # not a (batch, length, hidden) input: left alone
            self.hidden = args[0]
            self.calls += 1
            return (args[0][:, :0], *args[1:])

        handle = self.head.register_forward_pre_hook(pre_hook)
        try:
            yield self
        finally:
            handle.remove()

    def stop(self) -> None:
        """The head left alone from now on (the model's logits whole again)."""
        self.active = False
        self.hidden, self.calls = None, 0

    def take(self) -> torch.Tensor | None:
        """The hidden states of the last forward, when the head ran exactly once on them (None
        otherwise: its logits are not the scores' to make); forgets them."""
        hidden, calls = self.hidden, self.calls
        self.hidden, self.calls = None, 0
        return hidden if calls == 1 else None

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """The head's logits for ``rows`` (n x hidden): called as the model calls it, not
        intercepted."""
        active, self.active = self.active, False
        try:
            return self.head(rows[None])[0]
        finally:
            self.active = active


def check_head(
    head: nn.Module, run: Callable[[], Any], logits_of: Callable[[Any], torch.Tensor | None]
) -> HeadChunks | str:
    """The head ready to intercept when the model's logits are its head's output; else why
    the capture keeps them whole. ``run()`` is one forward of the model (a few tokens of the
    first sequence); ``logits_of`` reads the logits from its output."""
    seen: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen.append(args[0])

    handle = head.register_forward_pre_hook(record)
    try:
        output = run()
    except Exception as e:  # the capture's own batch fails alike, and says so
        return f"the first sequence's forward failed ({type(e).__name__})"
    finally:
        handle.remove()
    logits = logits_of(output)
    if logits is None:
        return "the model's output has no logits"
    if len(seen) != 1 or seen[0].ndim != 3 or seen[0].shape[:2] != logits.shape[:2]:
        return "the LM head does not run once on every position"
    if not torch.equal(head(seen[0]), logits):
        return "the model changes its LM head's output (a scale or soft cap)"
    return HeadChunks(head, int(logits.shape[-1]), logits.dtype)


@contextlib.contextmanager
def intercepted_head(
    model: nn.Module,
    run: Callable[[], Any],
    logits_of: Callable[[Any], torch.Tensor | None],
    *,
    enabled: bool = True,
) -> Iterator[HeadChunks | None]:
    """``model``'s LM head intercepted for the block when :func:`check_head` (with ``run``,
    one short forward) shows its logits are the head's output; else (or not ``enabled``) None,
    the logits whole."""
    head = output_head(model) if enabled else None
    chunks = None if head is None else check_head(head, run, logits_of)
    if not isinstance(chunks, HeadChunks):
        yield None
        return
    with chunks.intercepting():
        yield chunks
