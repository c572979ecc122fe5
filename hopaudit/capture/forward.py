"""One forward pass over the data with a hook on every block: activations out, scores alongside.

The hook of each block picks the chosen token positions out of the block's output, detaches,
casts to the storage dtype and copies only those rows off the device, so memory holds what is
kept and nothing else (``output_hidden_states`` would hold every position of every layer, and
its last entry is usually after the final norm). When the model returns logits (a causal LM
head), the same pass also gives per-sequence token NLL, Min-K% Prob and top-1 accuracy, and the
corpus cross-entropy.

Positions (``positions=``), computed per batch from the attention mask before the forward:

- ``"last"``: the last real (non-pad) token of each sequence: one row per sequence.
- ``"all"``: every real token: one row per token.
- ``"mean"``: the mean over the real tokens (float32 accumulation): one row per sequence,
  ``row_position`` -1.
- an int or a list of ints: those positions *relative to each sequence's real tokens*: ``0`` is
  the first real token, ``-1`` the last real one, ``-2`` the one before, whatever the padding.
  Every sequence must be long enough for every position (else a :class:`DataError` before any
  forward). Positions that fall on the same token of a sequence are stored once.

Scores, per sequence over next-token predictions within the mask (a prediction at token t of
token t+1 counts when both are real tokens):

- ``seq_nll``: mean token negative log-likelihood, nats.
- ``seq_min_k``: Min-K% Prob (Shi et al. 2023): the mean of the lowest ``floor(k * n)`` token
  log-probs (at least one). It is a mean *log-prob*, so it is <= 0, and as in the paper higher
  (closer to 0) means more likely seen in training; their code negates it, this does not.
- ``seq_top1``: fraction of next tokens that are the model's argmax.
- ``cross_entropy``: token-weighted over all predictions of the corpus, which is what
  ``model(input_ids, labels=input_ids).loss`` gives on unpadded equal-length sequences.

Sequences with fewer than two real tokens have no prediction: their scores are NaN.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hopaudit.capture.batching import choose_batch_size, layer_bytes, layer_rows, model_device
from hopaudit.capture.columns import Column
from hopaudit.capture.feed import Feed, forward_kwargs
from hopaudit.capture.head import HeadChunks, intercepted_head, output_head
from hopaudit.capture.hooks import FINAL, TraceBlocks, hooked_modules
from hopaudit.capture.positions import check_positions_fit, parse_positions, select_positions
from hopaudit.capture.result import CaptureResult
from hopaudit.capture.store import ActivationStore, normalize_dtype
from hopaudit.errors import CaptureError, DataError, HopauditError, ModelError
from hopaudit.evidence.scores import (
    greedy_runs,
    head_statistics,
    sequence_scores,
    sequence_statistics,
    token_statistics,
)
from hopaudit.heap import kept_heap, release_freed_memory
from hopaudit.model.blocks import ENCODER_FINAL, is_masked_lm, vocab_size
from hopaudit.model.compiled import check_compile, compiled_blocks
from hopaudit.model.precision import (
    autocast_context,
    cast_weights_once,
    compute_dtype,
    describe,
)
from hopaudit.progress import tqdm

__all__ = [
    "ASYNC_COPY",
    "HEAD_CHUNKS",
    "capture",
    "logits_of",
    "storage_dtypes",
]

# Rows leave a GPU by an asynchronous copy into pinned memory, so the forward never waits for
# them; False copies them blocking (benchmarks/gpu.py measures both: gpu_async_copy_speedup).
ASYNC_COPY = True
# The scores run the LM head on their own rows, a chunk at a time, so a batch's logits are never
# whole (capture/head.py); False keeps them whole (benchmarks compare both).
HEAD_CHUNKS = True


def logits_of(output: Any, vocab: int | None) -> torch.Tensor | None:
    """The logits of a model's output: its ``logits`` field, or the output itself when it is a
    plain (batch, seq, vocab) tensor (a hand-written LM such as nanoGPT)."""
    if isinstance(output, torch.Tensor):
        logits = output if vocab is not None and output.shape[-1] == vocab else None
    elif isinstance(output, dict):
        logits = output.get("logits")
    else:
        logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) and logits.ndim == 3 else None


def storage_dtypes(store_dtype: Any) -> tuple[torch.dtype, torch.dtype, np.dtype]:
    """(dtype rows are rounded to, dtype they leave the device in, numpy store dtype).

    numpy has no bfloat16, so bfloat16 rows are rounded to bfloat16 and stored as float32
    (exactly, no further rounding)."""
    if store_dtype in (torch.bfloat16, "bfloat16"):
        return torch.bfloat16, torch.float32, np.dtype(np.float32)
    np_dtype = normalize_dtype(store_dtype)
    t = getattr(torch, np_dtype.name)
    return t, t, np_dtype


def _open_store(store: Any, names: list[str], np_dtype: np.dtype) -> tuple[ActivationStore, bool]:
    if store is None or isinstance(store, (str, Path)):
        return ActivationStore(names, dtype=np_dtype, path=store), True
    if isinstance(store, ActivationStore):
        if store.finalized or list(store.layer_names) != names or store.dtype != np_dtype:
            raise DataError(
                f"the store given must be a fresh ActivationStore for layers {names} in "
                f"{np_dtype.name}; pass a directory path or None instead"
            )
        return store, False
    raise DataError(f"store must be None, a directory path, or an ActivationStore, got {store!r}")


class _Batch:
    """What the hooks need to know about the batch in flight, and what they collected.

    Each stack chooses its rows by its own mask of real positions: the encoder's by the
    attention mask, an encoder-decoder's decoder by its labels; an image or audio encoder's
    mask is only known from its blocks' output length (``frame_mask(seq)``), so rows are
    chosen at the stack's first block. Index tensors go to the device each block runs on.
    """

    def __init__(
        self, stack_of, masks, positions, round_dtype, out_dtype, widths, frame_mask, write=None
    ):
        self.widths = widths  # (stack, name) -> hidden size seen, shared across batches
        self.stack_of = stack_of
        self.masks = masks  # stack -> (batch, seq) mask on the CPU, or None
        self.positions = positions
        self.frame_mask = frame_mask
        self.sel: dict[str, tuple] = {}  # stack -> (b_idx, p_idx, weights, mask), CPU
        self._on: dict[tuple[str, torch.device], tuple] = {}
        self.round_dtype = round_dtype
        self.out_dtype = out_dtype
        self.pending: set[torch.device] = set()  # GPUs with copies in flight: synchronize
        # write(name, rows): rows in host memory go to the store as their block ends, so a
        # batch holds one layer's rows at a time, not every layer's (None in ``rows``)
        self.write = write
        self.rows: dict[str, torch.Tensor | None] = {}
        self.bad: dict[str, torch.Tensor] = {}
        self.overflow: dict[str, torch.Tensor] = {}

    def selection(self, stack: str, seq: int) -> tuple:
        if stack not in self.sel:
            mask = self.masks.get(stack)
            if mask is None:
                mask = self.frame_mask(seq)
                check_positions_fit(self.positions, mask.sum(1))
            b_idx, p_idx = select_positions(mask, self.positions)
            weights = None
            if self.positions == "mean":
                w = mask.float()
                weights = w / w.sum(1, keepdim=True)
            self.sel[stack] = (b_idx, p_idx, weights, mask)
        return self.sel[stack]

    def _device_selection(self, stack: str, device: torch.device) -> tuple:
        key = (stack, device)
        if key not in self._on:
            b_idx, p_idx, weights, _ = self.sel[stack]
            self._on[key] = (
                b_idx.to(device),
                p_idx.to(device),
                None if weights is None else weights.to(device),
            )
        return self._on[key]

    def collect(self, name: str, out: torch.Tensor) -> None:
        stack = self.stack_of[name]
        if out.ndim == 3:
            self.selection(stack, int(out.shape[1]))
        mask = self.sel[stack][3] if stack in self.sel else self.masks.get(stack)
        batch, seq = ("?", "?") if mask is None else tuple(mask.shape)
        if out.ndim != 3 or out.shape[0] != batch or out.shape[1] != seq:
            raise ModelError(
                f"module {name!r} gave an output of shape {tuple(out.shape)} for a batch of "
                f"{batch} sequences of {seq} positions; a transformer block gives (batch, seq, "
                "hidden), so this module is not one: pass blocks='path.to.layers' (the ModuleList"
                " of the blocks)"
            )
        same = {n: w for (st, n), w in self.widths.items() if st == stack}
        if same and name not in same:
            first, width = next(iter(same.items()))
            if out.shape[2] != width:
                raise ModelError(
                    f"module {name!r} gave an output of shape {tuple(out.shape)}, hidden size "
                    f"{out.shape[2]}, but {first!r} gave hidden size {width}; the blocks of one "
                    "model share a hidden size, so this module is not a block: pass "
                    "blocks='path.to.layers'"
                )
        self.widths.setdefault((stack, name), int(out.shape[2]))
        if name in self.rows:
            raise ModelError(
                f"module {name!r} ran twice in one forward pass (weights shared across layers?); "
                "hook modules that run once each: pass blocks='path.to.layers'"
            )
        # the rows leave the device this block ran on (accelerate may spread the blocks)
        b_idx, p_idx, weights = self._device_selection(stack, out.device)
        if weights is not None:
            sel = torch.einsum("bt,bth->bh", weights, out.detach().float())
        else:
            sel = out.detach()[b_idx, p_idx]
        rounded = sel.to(self.round_dtype)
        bad = ~torch.isfinite(rounded).all(1)
        self.bad[name] = bad.sum()
        if rounded.dtype != sel.dtype:
            self.overflow[name] = (bad & torch.isfinite(sel).all(1)).sum()
        rows = rounded.to(self.out_dtype)
        if rows.device.type == "cuda" and ASYNC_COPY:  # only the selected rows leave the GPU,
            host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)  # into pinned memory
            host.copy_(rows, non_blocking=True)
            self.pending.add(rows.device)  # a device map may put blocks on several GPUs
            rows = host
        elif rows.device.type != "cpu":
            rows = rows.cpu()
        if self.write is not None and not rows.is_pinned():
            self.write(name, rows)
            rows = None
        self.rows[name] = rows


def capture(
    model: nn.Module,
    data: Any,
    blocks: Sequence[Any],
    *,
    final: tuple[str, nn.Module] | None = None,
    positions: Any = "last",
    store_dtype: Any = torch.float16,
    store: Any = None,
    batch_size: int | None = None,
    progress: bool = True,
    min_k: float = 0.2,
    autocast: str = "off",
    extraction: tuple[int, int] | None = None,
    compile: bool = False,
) -> CaptureResult:
    """Run ``data`` through ``model`` once, storing each block's (and the final norm's, as layer
    ``"final"``) activations at ``positions``, and scoring each sequence from the logits.

    ``blocks`` are (path, module) pairs with ``final``, or a list of
    :class:`~hopaudit.blocks.Stack` (:func:`~hopaudit.blocks.find_stacks`: an
    encoder-decoder's two stacks, each choosing rows by its own mask; the decoder's scores
    use the seq2seq alignment, logits[t] against labels[t]). ``data`` is a ``TokenData`` or
    an ``InputData`` (images, audio: rows are chosen over patches or frames; no loss).
    ``store`` is None (RAM), a directory (memory-mapped files, for captures bigger than RAM)
    or a fresh :class:`ActivationStore`. ``batch_size=None`` chooses one
    (:func:`choose_batch_size`: a batch's logits within one layer's float32 rows,
    :func:`logits_budget`). The model stays on its device(s), runs in eval mode under
    ``torch.inference_mode()``, and gets its training flags back afterwards, also on error.
    ``autocast`` is ``"off"`` (the model as it is), ``"bfloat16"`` or ``"auto"`` (see
    :mod:`hopaudit.precision`). ``extraction=(prefix, suffix)`` also gives each sequence's
    ``seq_extracted_tokens`` from the same pass's top-1 hits (a causal LM's right-padded
    sequences: :func:`hopaudit.evidence.scores.greedy_runs`), with no decoding.
    ``compile=True`` runs each block through ``torch.compile`` (:mod:`hopaudit.model.compiled`;
    a failed compilation leaves the pass eager, with a warning and ``compiled`` saying why).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch nn.Module, got {type(model).__name__}")
    check_compile(compile)
    modules, stack_of = hooked_modules(model, blocks, final)
    names = list(modules)
    stacks = list(dict.fromkeys(stack_of.values()))
    feed = Feed(data, model, stacks)
    pos = parse_positions(positions)
    if feed.mask is not None:
        check_positions_fit(pos, feed.mask.sum(1))
    if feed.labels is not None:
        check_positions_fit(pos, (feed.labels != -100).sum(1))
    if not (isinstance(min_k, (int, float)) and 0 < min_k <= 1):
        raise DataError(f"min_k is a fraction of tokens in (0, 1], got {min_k!r}")
    vocab = vocab_size(model)
    for what, t in (("token ids", feed.ids), ("labels", feed.labels)):
        if t is None:
            continue
        real = t[t != -100] if what == "labels" else t
        lo, hi = int(real.min()), int(real.max())
        if lo < 0 or (vocab is not None and hi >= vocab):
            raise DataError(
                f"{what} run from {lo} to {hi} but the model's vocabulary has {vocab} entries; "
                "the tokenizer does not match the model"
            )
    n_seq = feed.n
    seq_len = int(feed.ids.shape[1]) if feed.ids is not None else 1
    device = model_device(model)
    if batch_size is None:
        one_layer = layer_bytes(model, data, pos)
        batch_size = choose_batch_size(model, seq_len, n_seq, device, one_layer)
        if feed.ids is None:  # images or audio: a few samples per batch
            batch_size = min(batch_size, 16)
    elif not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int or None, got {batch_size!r}")
    round_dtype, out_dtype, np_dtype = storage_dtypes(store_dtype)
    kwargs = forward_kwargs(model)
    amp = compute_dtype(model, device, autocast)

    flags = [(m, m.training) for m in model.modules()]
    st, owned = _open_store(store, names, np_dtype)
    # a store on disk keeps the audit's memory to about one layer's (docs/architecture.md): the
    # weights' bfloat16 copies then stay within one layer's float32 rows, the LM head's first
    copies_budget = layer_bytes(model, data, pos) if st.path is not None else None
    bar = None
    # what each batch keeps goes into arrays made now, not between its large blocks (columns.py)
    n_rows = layer_rows(data, pos)
    row_seq = {s_: Column(np.int64, n_rows) for s_ in stacks}
    row_pos = {s_: Column(np.int64, n_rows) for s_ in stacks}
    n_pred = n_seq * seq_len if feed.ids is not None else 0
    tok_seq, tok_lp = Column(np.int64, n_pred), Column(np.float64, n_pred)
    tok_hit, tok_z = Column(np.bool_, n_pred), Column(np.float64, n_pred)
    nonfinite = dict.fromkeys(names, 0)
    overflow = dict.fromkeys(names, 0)
    loss_note: str | None = None
    state: dict[str, _Batch] = {}
    widths: dict[tuple[str, str], int] = {}
    n_tokens = 0

    def on_output(name: str, out: torch.Tensor) -> None:
        state["batch"].collect(name, out)

    def write(name: str, rows: torch.Tensor) -> None:
        st.append(name, rows.numpy(), copy=False)  # a fresh array: the store may keep it

    t0 = time.perf_counter()
    try:
        bar = tqdm(total=n_seq, unit="seq", desc="capture", disable=not progress, leave=False)
        model.eval()
        # bfloat16 autocast (amp) for the whole pass, or no-op contexts: the LM head's weights
        # cast once, then the blocks' while the memory allows (the rest cast by autocast at
        # each call): see model/precision.py
        with (
            torch.inference_mode(),
            autocast_context(amp, device),
            cast_weights_once(
                model, amp, budget=copies_budget, first=[output_head(model)]
            ) as n_cast,
            _scored_head(model, feed) as head,
            compiled_blocks(_blocks_only(modules), compile) as compiled,
            kept_heap() as heap,  # after the weights' copies: the batches' working set alone
            TraceBlocks(modules, on_output),
        ):
            for start in range(0, n_seq, batch_size):
                stop = min(n_seq, start + batch_size)
                inputs, masks, score = feed.batch(start, stop, device)
                frames = feed.frame_mask(inputs, start, stop)
                if compiled.active and start == 0:
                    bar.set_postfix_str("compiling the blocks (torch.compile)", refresh=True)
                held = {n: st.shape(n)[0] for n in names}
                for attempt in range(3):
                    batch = _Batch(
                        stack_of, masks, pos, round_dtype, out_dtype, widths, frames, write
                    )
                    state["batch"] = batch
                    try:
                        output = model(**inputs, **kwargs)
                        logits = logits_of(output, vocab)
                        hidden = _head_input(head, score, logits)
                        break
                    except HopauditError:
                        raise
                    except Exception as e:
                        for n, rows in held.items():  # the rows this attempt wrote go
                            st.truncate(n, rows)
                        if head is not None:
                            # a model that fails the head's check or cannot run its head on a
                            # slice: this batch again, and the rest, with the logits whole
                            head.stop()
                            head = None
                            continue
                        what = f"{type(e).__name__}: {e}"
                        if attempt == 2 or not compiled.active:
                            raise CaptureError(
                                f"the forward pass failed on sequences {start}..{stop - 1}: {what}"
                            ) from e
                        # a compiled batch failed: the compiler, most likely (no C++ compiler,
                        # an operation it cannot trace); this batch again and the rest eager
                        compiled.undo(what[:300])
                        warnings.warn(f"{compiled.note}; the pass runs eager", stacklevel=2)
                missing = [n for n in names if n not in batch.rows]
                if missing:
                    raise ModelError(
                        f"modules {missing} did not run in the model's forward pass; they are "
                        "not its blocks: pass blocks='path.to.layers'"
                    )
                for gpu in batch.pending:  # every copy has landed before the rows are read
                    torch.cuda.synchronize(gpu)
                for n in names:
                    rows = batch.rows[n]
                    if rows is not None:  # held until now: a GPU's copy in flight
                        # pinned buffers go back to torch's cache; the store keeps a pageable copy
                        st.append(n, rows.numpy(), copy=rows.is_pinned())
                    nonfinite[n] += int(batch.bad[n])
                    if n in batch.overflow:
                        overflow[n] += int(batch.overflow[n])
                for s_ in stacks:
                    b_idx, p_idx, _w, _m = batch.sel[s_]
                    row_seq[s_].extend(b_idx, offset=start)
                    row_pos[s_].extend(p_idx)
                scored = hidden is not None or (
                    logits is not None and score is not None and not is_masked_lm(model)
                )
                if scored:
                    targets, score_mask, shift = score
                    if hidden is not None:  # the head run on the scored rows, a chunk at a time
                        b, lp, hit, z = head_statistics(
                            hidden, head.logits, targets, score_mask, shift=shift,
                            vocab=head.vocab, dtype=head.dtype, linear=head.linear,
                        )  # fmt: skip
                    else:  # the logits are read here only: scored in place, copied if need be
                        b, lp, hit, z = token_statistics(
                            logits, targets, score_mask, shift=shift, overwrite=True
                        )
                    tok_z.extend(z)
                    tok_seq.extend(b, offset=start)
                    tok_lp.extend(lp)
                    tok_hit.extend(hit)
                elif loss_note is None:
                    loss_note = _no_loss_reason(model, logits, feed)
                n_tokens += int(batch.sel[stacks[0]][3].sum())
                # the batch's rows are in the store: freed before the keeper reads the heap, so
                # a trim's floor does not hold a batch of rows that its working set counts again
                del output, logits, hidden, batch
                state.clear()
                heap.batch_done()
                bar.update(stop - start)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{n_tokens / max(elapsed, 1e-9):,.0f} tok/s", refresh=False)
        st.finalize()
        if n_cast:
            # the weights' bfloat16 copies (model/precision.py) went with the pass, after the
            # kept heap's own trim: their heap pages go back now, not after the first layer
            release_freed_memory()
    except BaseException:
        if owned:
            st.discard()
        raise
    finally:
        state.clear()
        for m, f in flags:
            m.training = f
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0

    seq_nll = seq_min_k = seq_top1 = extracted = None
    cross_entropy = None
    n_predicted = 0
    extra: dict[str, np.ndarray] = {}
    if loss_note is None:
        seq_a, lp_a, hit_a = tok_seq.values(), tok_lp.values(), tok_hit.values()
        seq_nll, seq_min_k, seq_top1 = sequence_scores(seq_a, lp_a, hit_a, n_seq, float(min_k))
        z_a = tok_z.values()
        extra = sequence_statistics(seq_a, lp_a, z_a, n_seq, float(min_k))
        if extraction is not None and feed.labels is None:  # next-token (shifted) predictions
            extracted = greedy_runs(seq_a, hit_a, n_seq, *extraction)[0]
        n_predicted = int(lp_a.size)
        cross_entropy = float(-lp_a.sum() / n_predicted) if n_predicted else math.nan
        if not n_predicted:
            loss_note = "no sequence has two real tokens: no next-token prediction to score"
    for n, c in overflow.items():
        if c:
            warnings.warn(
                f"{c} rows of layer {n!r} overflowed {np_dtype.name} storage (values past "
                f"{float(torch.finfo(round_dtype).max):.0f}); pass store_dtype=torch.float32",
                RuntimeWarning,
                stacklevel=2,
            )
    seqs = {s_: row_seq[s_].values() for s_ in stacks}
    poss = {s_: row_pos[s_].values() for s_ in stacks}
    last = stack_of[names[-1]]
    return CaptureResult(
        store=st,
        layer_names=names,
        row_sequence=seqs[last],
        row_position=poss[last],
        nonfinite=nonfinite,
        seq_nll=seq_nll,
        seq_min_k=seq_min_k,
        seq_top1=seq_top1,
        cross_entropy=cross_entropy,
        n_tokens=n_tokens,
        seconds=seconds,
        tokens_per_second=n_tokens / seconds if seconds > 0 else math.inf,
        loss_note=loss_note,
        n_predicted=n_predicted,
        batch_size=batch_size,
        positions=pos,
        min_k=float(min_k),
        overflow={n: c for n, c in overflow.items() if c},
        compute_dtype=describe(amp, model, n_cast),
        layer_stacks=dict(stack_of),
        stack_sequence=seqs if len(stacks) > 1 else {},
        stack_position=poss if len(stacks) > 1 else {},
        seq_min_k_pp=extra.get("min_k_pp"),
        seq_n_predicted=extra.get("n_predicted"),
        seq_extracted_tokens=extracted,
        compiled=compiled.note,
    )


@contextlib.contextmanager
def _scored_head(model: nn.Module, feed: Feed) -> Iterator[HeadChunks | None]:
    """The model's LM head intercepted for the pass (capture/head.py; the first batch checks
    that its logits are the head's own output) when the capture scores them; else None."""
    if not HEAD_CHUNKS or is_masked_lm(model) or (feed.ids is None and feed.labels is None):
        yield None
        return
    with intercepted_head(model) as chunks:
        yield chunks


def _head_input(
    head: HeadChunks | None, score: Any, logits: torch.Tensor | None
) -> torch.Tensor | None:
    """The LM head's input of the batch that just ran (the scores make its logits), or None
    when the head is not intercepted; raises when the head did not run once on every scored
    position or failed its check, so that the batch runs again with its logits whole."""
    if head is None:
        return None
    hidden = head.take(logits)
    if score is None or hidden is None or hidden.shape[:2] != score[0].shape:
        raise RuntimeError(f"the LM head's logits stay whole: {head.refused or 'other rows'}")
    return hidden


def _blocks_only(modules: dict[str, nn.Module]) -> list[nn.Module]:
    """The blocks among the hooked modules: not the final norms (one small operation each)."""
    return [m for n, m in modules.items() if n not in (FINAL, ENCODER_FINAL)]


def _no_loss_reason(model: nn.Module, logits: Any, feed: Feed) -> str:
    name = type(model).__name__
    if logits is not None and is_masked_lm(model):
        return f"{name} has a masked-LM head: no next-token loss"
    if feed.ids is None and feed.labels is None:
        from hopaudit.data.inputs import INPUT_KIND

        what = INPUT_KIND.get(feed.main, "images or audio").split(" (")[0]
        return (
            f"{name} reads {feed.main} ({what}), not tokens, and has no text decoder: no "
            "next-token loss"
        )
    if logits is None:
        return f"{name} returns no logits (encoder without an LM head): no next-token loss"
    return f"{name}'s logits do not match its vocabulary: no next-token loss"
