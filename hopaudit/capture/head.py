"""The LM head run by the scores, a few hundred rows at a time: a batch's logits never whole.

A causal LM's forward ends in its output embedding (the LM head), whose output, batch x length
x vocabulary, is the largest tensor of the pass (a batch of 20 x 64 GPT-2 tokens: 123 MiB in
bfloat16). The scores read each row once (:mod:`hopaudit.evidence.scores`), so the capture can
stop the head from making them: :class:`HeadChunks` records the head's input (the final hidden
states) and hands the head an empty slice of it; the scores then run the head on the rows they
need, a chunk at a time, while the chunk's logits are still in cache.

That is only the same computation when the model's logits *are* its head's output. Some models
post-process them (Gemma 2's soft-capping, Cohere's logit scale), so the first batch is the
check: its head is handed each sequence's first position instead of none, and
:meth:`HeadChunks.take` hands the scores the head's input only if the head, called again on that
very slice, gives the model's logits back bit for bit (no separate forward before the batches).
A model that fails the check, or cannot run on a slice (an error in the intercepted batch),
runs that batch again with its logits whole, as does every later batch (capture/forward.py).
docs/performance.md, "The logits".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["HeadChunks", "intercepted_head", "output_head"]


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
    runs on a slice of it instead: each sequence's first position until the check has passed
    (:meth:`take`), none after, so the model's logits are tiny; ``head`` on rows of ``hidden``
    gives the logits the model would have made. ``vocab`` and ``dtype`` (of those logits) are
    known once the check has passed; ``refused`` says why it did not."""

    def __init__(self, head: nn.Module) -> None:
        self.head = head
        self.vocab: int | None = None
        self.dtype: torch.dtype | None = None
        self.checked = False
        self.refused: str | None = None
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
            return (args[0][:, : 0 if self.checked else 1], *args[1:])

        handle = self.head.register_forward_pre_hook(pre_hook)
        try:
            yield self
        finally:
            handle.remove()

    def stop(self) -> None:
        """The head left alone from now on (the model's logits whole again)."""
        self.active = False
        self.hidden, self.calls = None, 0

    def take(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        """The hidden states of the last forward, whose ``logits`` the model returned, when the
        head ran exactly once on them and, the first time, the check passed (None otherwise:
        the logits are not the scores' to make; ``refused`` says why); forgets them."""
        hidden, calls = self.hidden, self.calls
        self.hidden, self.calls = None, 0
        if calls != 1 or hidden is None:
            self.refused = self.refused or "the LM head does not run once on every position"
            return None
        if not self.checked:
            self.refused = self._check(hidden, logits)
            self.checked = self.refused is None
        return hidden if self.checked else None

    def _check(self, hidden: torch.Tensor, logits: torch.Tensor | None) -> str | None:
        """Why the model's ``logits`` of the first positions are not the head's own output on
        them (the same slice, so the same product bit for bit), or None when they are."""
        if logits is None:
            return "the model's output has no logits"
        if logits.shape[:2] != (hidden.shape[0], 1):
            return "the LM head does not run once on every position"
        if not torch.equal(self.logits(hidden[:, :1]), logits):
            return "the model changes its LM head's output (a scale or soft cap)"
        self.vocab, self.dtype = int(logits.shape[-1]), logits.dtype
        return None

    @property
    def linear(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(weight, bias) when the head is a plain ``nn.Linear`` with no hook but this one's, so
        that its logits may be made from its weight a slice of the vocabulary at a time
        (:func:`hopaudit.evidence.scores.head_statistics`); None otherwise (a subclass, an
        adapter, a hook of the user's: the head is called as the model calls it)."""
        head = self.head
        if type(head) is not nn.Linear or head._forward_hooks or len(head._forward_pre_hooks) > 1:
            return None
        if _global_hooks():
            return None
        return head.weight, head.bias

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """The head's logits for ``rows`` (n x hidden, or batch x length x hidden as the model
        calls it): not intercepted."""
        active, self.active = self.active, False
        try:
            return self.head(rows) if rows.ndim == 3 else self.head(rows[None])[0]
        finally:
            self.active = active


def _global_hooks() -> bool:
    """Whether hooks are registered for every module (``register_module_forward_hook``)."""
    from torch.nn.modules import module as m

    names = ("_global_forward_hooks", "_global_forward_pre_hooks")
    return any(bool(getattr(m, name, None)) for name in names)


@contextlib.contextmanager
def intercepted_head(model: nn.Module, *, enabled: bool = True) -> Iterator[HeadChunks | None]:
    """``model``'s LM head intercepted for the block (its first batch the check, see
    :class:`HeadChunks`); None when it has none, is offloaded, or not ``enabled``."""
    head = output_head(model) if enabled else None
    if head is None:
        yield None
        return
    chunks = HeadChunks(head)
    with chunks.intercepting():
        yield chunks
