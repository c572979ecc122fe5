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
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hopaudit.capture.columns import Column
from hopaudit.capture.head import HeadChunks, intercepted_head, output_head
from hopaudit.capture.result import CaptureResult
from hopaudit.capture.store import ActivationStore, normalize_dtype
from hopaudit.errors import CaptureError, DataError, HopauditError, ModelError
from hopaudit.evidence.scores import (
    greedy_runs,
    head_statistics,
    sequence_statistics,
    token_statistics,
)
from hopaudit.heap import kept_heap, release_freed_memory
from hopaudit.model.blocks import (
    ENCODER_FINAL,
    Stack,
    decoder_start_ids,
    execution_device,
    is_encoder_decoder,
    is_masked_lm,
    main_input_name,
    vocab_size,
)
from hopaudit.model.compiled import check_compile, compiled_blocks
from hopaudit.model.precision import (
    autocast_context,
    cast_weights_once,
    compute_dtype,
    describe,
)
from hopaudit.progress import tqdm

FINAL = "final"

# CPU batch sizing: tokens per batch, and the float32 logits a batch may hold: about one
# layer's float32 patterns (the audit's own size, :func:`logits_budget`), never less than the
# floor (small audits still batch) nor more than the cap.
CPU_TOKENS_PER_BATCH = 8192
LOGITS_BUDGET_BYTES = 512 * 2**20
# the floor keeps small audits' batches big enough to run near the cap's speed
# (benchmarks/batch_size.py; benchmarks/README.md, "Constants")
LOGITS_FLOOR_BYTES = 256 * 2**20
# Rows leave a GPU by an asynchronous copy into pinned memory, so the forward never waits for
# them; False copies them blocking (benchmarks/gpu.py measures both: gpu_async_copy_speedup).
ASYNC_COPY = True
# The scores run the LM head on their own rows, a chunk at a time, so a batch's logits are never
# whole (capture/head.py); False keeps them whole (benchmarks compare both).
HEAD_CHUNKS = True


# ------------------------------------------------------------------------------------- hooks
def block_output_tensor(output: Any, name: str = "?") -> torch.Tensor:
    """The hidden-state tensor of a block's output: the tensor itself, or the first element of a
    tuple, list, dict or ``ModelOutput``."""
    seen = output
    for _ in range(4):
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, dict):  # ModelOutput is an OrderedDict
            output = next(iter(output.values()), None)
        elif isinstance(output, (tuple, list)) and output:
            output = output[0]
        else:
            break
    raise ModelError(
        f"module {name!r} returned {type(seen).__name__}, not a tensor or a tuple starting with "
        "one; it is not a transformer block: pass blocks='path.to.layers'"
    )


class TraceBlocks:
    """Forward hooks on named modules for the duration of a ``with`` block (baukit TraceDict
    style): ``callback(name, output_tensor)`` runs after each module's forward.

    Every hook is removed in ``finally``, also when the body or the forward raises
    (``KeyboardInterrupt`` included); exceptions are never swallowed.
    """

    def __init__(self, modules: dict[str, nn.Module], callback: Callable[[str, torch.Tensor], Any]):
        self.modules = dict(modules)
        self.callback = callback
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.callback(name, block_output_tensor(output, name))

        return hook

    def __enter__(self) -> TraceBlocks:
        try:
            for name, module in self.modules.items():
                self.handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook this tracer registered (idempotent)."""
        handles, self.handles = self.handles, []
        for h in handles:
            h.remove()

    def __exit__(self, *exc: Any) -> bool:
        self.remove()
        return False


# ---------------------------------------------------------------------------------- results
# CaptureResult lives in capture/result.py (no torch: a saved audit loads without it)


# ------------------------------------------------------------------------------- positions
def parse_positions(positions: Any) -> str | list[int]:
    """``"last"``, ``"all"``, ``"mean"``, or a sorted list of distinct ints."""
    if isinstance(positions, str):
        if positions in ("last", "all", "mean"):
            return positions
        if positions == "cls":  # the first position: a ViT/BERT's CLS token
            return [0]
        raise DataError(
            f"positions={positions!r} is not understood; use 'last', 'all', 'mean', 'cls', an "
            "int or a list of ints"
        )
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        return [int(positions)]
    if isinstance(positions, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(
        positions, (str, bytes)
    ):
        vals = list(positions.tolist() if hasattr(positions, "tolist") else positions)
        if vals and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            return sorted({int(v) for v in vals})
    raise DataError(
        f"positions={positions!r} is not understood; use 'last', 'all', 'mean', an int or a "
        "non-empty list of ints"
    )


def check_positions_fit(positions: str | list[int], lengths: torch.Tensor) -> None:
    """Every int position must exist in every sequence (relative to its real tokens)."""
    if isinstance(positions, str):
        return
    shortest = int(lengths.min())
    which = int(lengths.argmin())
    bad = [p for p in positions if (p >= shortest if p >= 0 else -p > shortest)]
    if bad:
        raise DataError(
            f"positions {bad} are beyond sequence {which}, which has {shortest} tokens; positions "
            f"count real tokens from the start (0..{shortest - 1}) or from the end "
            f"(-1..-{shortest}); use smaller ones, positions='last', or longer sequences"
        )


def select_positions(
    mask: torch.Tensor, positions: str | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_sequence, row_position) index tensors of the rows to keep from one batch.

    ``mask`` is (batch, seq); for ``"mean"`` the positions are -1 (rows are means).
    """
    m = mask.bool()
    batch = mask.shape[0]
    if positions == "all":
        b, t = m.nonzero(as_tuple=True)
        return b, t
    lengths = m.sum(1)
    if positions == "mean":
        return torch.arange(batch), torch.full((batch,), -1, dtype=torch.long)
    cum = m.long().cumsum(1)  # cum[b, t] = number of real tokens in 0..t
    if positions == "last":
        t = ((cum == lengths[:, None]) & m).long().argmax(1)
        return torch.arange(batch), t
    cols = []
    for p in positions:
        k = torch.full_like(lengths, p) if p >= 0 else lengths + p  # k-th real token
        if bool(((k < 0) | (k >= lengths)).any()):
            check_positions_fit(positions, lengths)
        cols.append(((cum == (k + 1)[:, None]) & m).long().argmax(1))
    pos = torch.stack(cols, 1).sort(1).values  # (batch, P), ascending per row
    b = torch.arange(batch)[:, None].expand_as(pos)
    keep = torch.ones_like(pos, dtype=torch.bool)
    keep[:, 1:] = pos[:, 1:] != pos[:, :-1]  # -1 and len-1 may name the same token
    return b[keep], pos[keep]


# --------------------------------------------------------------------------------- scores
def sequence_scores(
    seq: np.ndarray, logp: np.ndarray, hit: np.ndarray, n_sequences: int, min_k: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean NLL, Min-K% Prob, top-1) per sequence from per-token values; NaN without tokens.

    Min-K% Prob is the mean of the lowest ``max(1, floor(min_k * n))`` token log-probs.
    """
    nll = np.full(n_sequences, np.nan)
    mink = np.full(n_sequences, np.nan)
    top1 = np.full(n_sequences, np.nan)
    if seq.size == 0:
        return nll, mink, top1
    order = np.lexsort((logp, seq))  # by sequence, then ascending log-prob
    seq_s, lp_s = seq[order], logp[order].astype(np.float64)
    counts = np.bincount(seq_s, minlength=n_sequences)
    has = counts > 0
    sums = np.bincount(seq_s, weights=lp_s, minlength=n_sequences)
    nll[has] = -sums[has] / counts[has]
    top1[has] = (
        np.bincount(seq, weights=hit.astype(np.float64), minlength=n_sequences)[has] / (counts[has])
    )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k = np.maximum(1, np.floor(counts * min_k).astype(np.int64))
    cum = np.concatenate([[0.0], np.cumsum(lp_s)])
    idx = np.flatnonzero(has)
    mink[idx] = (cum[starts[idx] + k[idx]] - cum[starts[idx]]) / k[idx]
    return nll, mink, top1


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


# ---------------------------------------------------------------------------------- device
def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the execution device of the first module that runs, as accelerate's
    hooks name it (device maps, ``cpu_offload``, disk offload), else the input embedding's
    device, else the first parameter's, else the CPU (:func:`hopaudit.blocks.execution_device`).
    """
    return execution_device(model)


def _config_int(model: nn.Module, *names: str) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int):
            return v
    return None


def layer_rows(data: Any, positions: Any) -> int:
    """The rows one layer of ``data`` stores at ``positions``: every real token for ``"all"``
    (by the attention mask, or the labels of a seq2seq decoder when more), else one row per
    sequence and position. Sizes budgets (the store's dtype, a CPU batch); not exact for
    image or audio encoders, whose positions are only known after their first block."""
    pos = parse_positions(positions)
    n = int(getattr(data, "num_sequences", 0) or 0)
    if pos != "all":
        return n * (len(pos) if isinstance(pos, list) else 1)
    mask = getattr(data, "attention_mask", None)
    rows = int(mask.sum()) if mask is not None else n
    labels = getattr(data, "labels", None)
    if labels is not None:
        rows = max(rows, int((labels != -100).sum()))
    return rows


def layer_bytes(model: nn.Module, data: Any, positions: Any) -> int | None:
    """One layer's rows of ``data`` in float32 (rows x hidden size x 4), None when the model's
    config names no hidden size: what :func:`logits_budget` scales with."""
    hidden = _config_int(model, "hidden_size", "n_embd", "d_model")
    return None if hidden is None else layer_rows(data, positions) * hidden * 4


def logits_budget(one_layer: int | None = None) -> int:
    """The float32 logits one CPU batch may hold: ``one_layer`` bytes (one layer's float32
    patterns, :func:`layer_bytes`), at least ``LOGITS_FLOOR_BYTES`` (256 MiB: a small audit
    still batches at speed) and at most ``LOGITS_BUDGET_BYTES`` (512 MiB); the cap when unknown.

    With the cap alone a batch's logits were the capture's peak, several layers of a small
    positions="all" audit; a budget of one layer keeps the capture's peak near the measuring's
    (docs/performance.md, benchmarks/many_layers.py)."""
    if one_layer is None:
        return LOGITS_BUDGET_BYTES
    return int(min(LOGITS_BUDGET_BYTES, max(LOGITS_FLOOR_BYTES, int(one_layer))))


def choose_batch_size(
    model: nn.Module, seq_len: int, n_sequences: int, device: Any, one_layer: int | None = None
) -> int:
    """A batch size that keeps memory modest.

    CPU: about 8192 tokens per batch (fewer past 512 tokens per sequence, since attention grows
    with the square of the length), and at most :func:`logits_budget` bytes of float32 logits
    per batch (``one_layer``: one layer's float32 patterns, :func:`layer_bytes`; None: the
    512 MiB cap). CUDA: half the free memory, divided by a rough per-sequence cost (float32
    logits x 3, 32 hidden-size float32 activations per token, and one float32 attention
    matrix per head).
    """
    device = torch.device(device)
    seq_len = max(1, seq_len)
    vocab = vocab_size(model) or 0
    hidden = _config_int(model, "hidden_size", "n_embd", "d_model") or 1024
    heads = _config_int(model, "num_attention_heads", "n_head") or 16
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        per_seq = seq_len * (vocab * 4 * 3 + hidden * 4 * 32) + seq_len * seq_len * heads * 4
        bs = (free // 2) // max(1, per_seq)
    else:
        tokens = CPU_TOKENS_PER_BATCH
        if seq_len > 512:
            tokens = max(seq_len, CPU_TOKENS_PER_BATCH * 512 // seq_len)
        bs = tokens // seq_len
        if vocab:
            bs = min(bs, logits_budget(one_layer) // (seq_len * vocab * 4))
    return int(max(1, min(bs, n_sequences)))


# --------------------------------------------------------------------------------- capture
def _check_data(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = getattr(data, "input_ids", None)
    mask = getattr(data, "attention_mask", None)
    if ids is None:
        raise DataError(
            f"capture() takes a TokenData (from hopaudit.data.prepare_data), got "
            f"{type(data).__name__}"
        )
    ids = torch.as_tensor(ids)
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise DataError(
            f"input_ids must be (sequences, seq_len) with an attention_mask of the same shape; "
            f"got {tuple(ids.shape)} and {tuple(mask.shape)}"
        )
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise DataError("there are no tokens to capture: the data is empty")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise DataError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    lengths = (mask != 0).sum(1)
    if bool((lengths == 0).any()):
        i = int((lengths == 0).nonzero()[0])
        raise DataError(
            f"sequence {i} has no real tokens (its attention mask is all zero); drop it"
        )
    return ids.long(), (mask != 0).long()


def _check_stacks(
    model: nn.Module, blocks: Sequence[Any], final: tuple[str, nn.Module] | None
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """(layer name -> module, layer name -> stack) for (path, module) pairs plus ``final``, or
    for a list of :class:`~hopaudit.blocks.Stack` (then ``final`` must be None)."""
    if blocks and all(isinstance(b, Stack) for b in blocks):
        if final is not None:
            raise ModelError("pass final=None with stacks: each Stack carries its own final")
        modules: dict[str, nn.Module] = {}
        stack_of: dict[str, str] = {}
        for st in blocks:
            if st.final is not None and st.final_name not in (FINAL, ENCODER_FINAL):
                raise ModelError(f"a stack's final layer is 'final' or 'encoder.final', got "
                                 f"{st.final_name!r}")  # fmt: skip
            part = _check_blocks(st.blocks, None)
            if st.final is not None:
                part[st.final_name] = st.final[1]
            clash = set(part) & set(modules)
            if clash:
                raise ModelError(f"layers {sorted(clash)} appear in two stacks")
            modules.update(part)
            stack_of.update(dict.fromkeys(part, st.name))
        return modules, stack_of
    from hopaudit.model.blocks import stack_role

    modules = _check_blocks(blocks, final)
    role = stack_role(model, final)
    return modules, dict.fromkeys(modules, role)


def _check_blocks(
    blocks: Sequence[tuple[str, nn.Module]], final: tuple[str, nn.Module] | None
) -> dict[str, nn.Module]:
    modules: dict[str, nn.Module] = {}
    for item in blocks:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ModelError(
                f"blocks must be a list of (path, module) pairs (from find_blocks), got {item!r}"
            )
        name, module = str(item[0]), item[1]
        if not isinstance(module, nn.Module):
            raise ModelError(f"block {name!r} is a {type(module).__name__}, not a torch module")
        if name in modules or name in (FINAL, ENCODER_FINAL):
            raise ModelError(
                f"block name {name!r} is repeated or reserved ('final', 'encoder.final')"
            )
        modules[name] = module
    if not modules:
        raise ModelError("no blocks to hook: pass blocks=find_blocks(model)")
    if final is not None:
        if not (isinstance(final, (tuple, list)) and len(final) == 2) or not isinstance(
            final[1], nn.Module
        ):
            raise ModelError(f"final must be a (path, module) pair or None, got {final!r}")
        modules[FINAL] = final[1]
    return modules


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

    def __init__(self, stack_of, masks, positions, round_dtype, out_dtype, widths, frame_mask):
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
        self.rows: dict[str, torch.Tensor] = {}
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
        self.rows[name] = rows


class _Feed:
    """The data in capture's terms: each batch's forward inputs and each stack's mask.

    Token data (a ``TokenData``) feed ``input_ids`` and ``attention_mask``; an encoder-decoder
    also gets ``decoder_input_ids`` = its labels shifted right (the model's own shift) and
    its decoder stack selects rows where there is a label. Non-text data (an ``InputData``)
    feed their tensors as given, floats cast to the model's dtype.
    """

    def __init__(self, data: Any, model: nn.Module, stacks: list[str]) -> None:
        from hopaudit.data.prepare import InputData

        self.model = model
        self.stacks = stacks
        self.seq2seq = is_encoder_decoder(model)
        self.main = main_input_name(model)
        if isinstance(data, InputData):
            self.ids = self.mask = None
            self.inputs = {k: torch.as_tensor(v) for k, v in data.inputs.items()}
            if not self.inputs:
                raise DataError("the InputData holds no inputs")
            self.n = int(next(iter(self.inputs.values())).shape[0])
            if self.n == 0:
                raise DataError("there are no samples to capture: the data is empty")
        else:
            self.ids, self.mask = _check_data(data)
            self.inputs = {}
            self.n = int(self.ids.shape[0])
        self.labels = _check_labels(getattr(data, "labels", None), self.n)
        if self.seq2seq and self.labels is None:
            raise DataError(
                f"{type(model).__name__} is an encoder-decoder: its decoder runs on labels, "
                "and the data give none; pass texts (each is its own label), (source, target) "
                "text pairs, or rows with input_ids (or input_features) and labels"
            )
        if not self.seq2seq and self.labels is not None:
            self.labels = None  # a decoder-only or encoder model has one stack: no targets
        given = set(self.inputs) if self.ids is None else {"input_ids", "attention_mask"}
        if self.seq2seq:
            given.add("decoder_input_ids")
        _check_forward_inputs(model, given, self.main)
        self.float_dtype = next(
            (p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32
        )

    def batch(self, start: int, stop: int, device: torch.device) -> tuple[dict, dict, Any]:
        """(forward kwargs on ``device``, stack -> CPU mask or None, (targets, mask, shift)
        for the scores on ``device`` or None)."""
        kwargs: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor | None] = {}
        score = None
        if self.ids is not None:
            mask = self.mask[start:stop]
            width = int(mask.any(0).nonzero().max()) + 1  # drop all-pad trailing columns
            mask = mask[:, :width]
            ids = self.ids[start:stop, :width]
            kwargs["input_ids"] = ids.to(device, non_blocking=True)
            kwargs["attention_mask"] = mask.to(device, non_blocking=True)
            masks[self.stacks[0]] = mask
            score = (kwargs["input_ids"], kwargs["attention_mask"], True)
        else:
            for k, v in self.inputs.items():
                v = v[start:stop]
                if v.is_floating_point():
                    v = v.to(self.float_dtype)
                kwargs[k] = v.to(device, non_blocking=True)
            masks[self.stacks[0]] = None
            score = None
        if self.labels is not None:
            labels = self.labels[start:stop]
            has = (labels != -100).any(0).nonzero()
            labels = labels[:, : int(has.max()) + 1]
            kwargs["decoder_input_ids"] = decoder_start_ids(self.model, labels).to(device)
            label_mask = (labels != -100).long()
            masks[self.stacks[-1]] = label_mask
            targets = labels.clamp_min(0).to(device)
            score = (targets, label_mask.to(device), False)
        return kwargs, masks, score

    def frame_mask(self, kwargs: dict[str, torch.Tensor], start: int, stop: int):
        """The mask of real positions of a non-text encoder's output of ``seq`` positions:
        all of them, or, for raw audio with an attention mask, the frames its samples fill."""
        am = self.inputs.get("attention_mask")
        lengths_of = getattr(self.model, "_get_feat_extract_output_lengths", None)

        def mask_of(seq: int) -> torch.Tensor:
            n = stop - start
            if am is None or not callable(lengths_of) or self.main != "input_values":
                return torch.ones(n, seq, dtype=torch.long)
            frames = torch.as_tensor(lengths_of(am[start:stop].sum(-1))).long().clamp(1, seq)
            return (torch.arange(seq)[None] < frames[:, None]).long()

        return mask_of


def _check_labels(labels: Any, n: int) -> torch.Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.ndim != 2 or labels.shape[0] != n or labels.is_floating_point():
        raise DataError(
            f"labels must be integer ids (sequences, target_len) for {n} sequences, got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    empty = ~(labels != -100).any(1)
    if bool(empty.any()):
        raise DataError(f"sequence {int(empty.nonzero()[0])} has no label (all -100); drop it")
    return labels.long()


def _check_forward_inputs(model: nn.Module, given: set[str], main: str) -> None:
    """The forward must take every input given, and get the one it needs (named)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    # transformers' forwards end in **kwargs (attention flags) and ignore what they do not
    # name: an input they do not name would be dropped silently
    is_hf = hasattr(model, "config") and hasattr(model, "main_input_name")
    takes_any = not is_hf and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = set(params)
    unknown = sorted(k for k in given if k not in names and k != "attention_mask")
    if unknown and not takes_any:
        raise DataError(
            f"{type(model).__name__}.forward takes no {', '.join(unknown)}; it takes "
            f"{', '.join(n for n in params if n not in ('kwargs', 'args'))[:300]}: pass the "
            "inputs this model reads"
        )
    required = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in given
    ]
    if main in names and main not in given and main != "input_ids":
        required = [main, *[r for r in required if r != main]]
    if required:
        raise DataError(
            f"{type(model).__name__}.forward needs {', '.join(required)}, which the data do "
            f"not give (they give {', '.join(sorted(given))}); pass data with "
            f"{required[0]}"
        )


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


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
    modules, stack_of = _check_stacks(model, blocks, final)
    names = list(modules)
    stacks = list(dict.fromkeys(stack_of.values()))
    feed = _Feed(data, model, stacks)
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
    kwargs = _forward_kwargs(model)
    amp = compute_dtype(model, device, autocast)

    flags = [(m, m.training) for m in model.modules()]
    st, owned = _open_store(store, names, np_dtype)
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
            cast_weights_once(model, amp, first=[output_head(model)]) as n_cast,
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
                for attempt in range(3):
                    batch = _Batch(stack_of, masks, pos, round_dtype, out_dtype, widths, frames)
                    state["batch"] = batch
                    try:
                        output = model(**inputs, **kwargs)
                        logits = logits_of(output, vocab)
                        hidden = _head_input(head, score, logits)
                        break
                    except HopauditError:
                        raise
                    except Exception as e:
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
                    # pinned buffers go back to torch's cache; the store keeps a pageable copy
                    st.append(n, batch.rows[n].numpy(), copy=batch.rows[n].is_pinned())
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
                            vocab=head.vocab, dtype=head.dtype,
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
                del output, logits, hidden
                state.clear()
                heap.batch_done()
                n_tokens += int(batch.sel[stacks[0]][3].sum())
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
def _scored_head(model: nn.Module, feed: _Feed) -> Iterator[HeadChunks | None]:
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


def _no_loss_reason(model: nn.Module, logits: Any, feed: _Feed) -> str:
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
