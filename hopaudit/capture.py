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

import ctypes
import functools
import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hopaudit.blocks import input_embedding, vocab_size
from hopaudit.errors import CaptureError, DataError, HopauditError, ModelError
from hopaudit.precision import autocast_context, compute_dtype, describe
from hopaudit.progress import tqdm
from hopaudit.store import ActivationStore, normalize_dtype

FINAL = "final"

# CPU batch sizing: tokens per batch, and the float32 logits a batch may hold.
CPU_TOKENS_PER_BATCH = 8192
LOGITS_BUDGET_BYTES = 512 * 2**20
# Log-softmax works on at most this many logit values at once (float32: 64 MiB).
SCORE_CHUNK_VALUES = 2**24
# Rows leave a GPU by an asynchronous copy into pinned memory, so the forward never waits for
# them; False copies them blocking (benchmarks/gpu.py measures both: gpu_async_copy_speedup).
ASYNC_COPY = True


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
@dataclass
class CaptureResult:
    """Everything one capture pass produced; see the module docstring for the definitions."""

    store: ActivationStore
    layer_names: list[str]
    row_sequence: np.ndarray
    row_position: np.ndarray
    nonfinite: dict[str, int]
    seq_nll: np.ndarray | None
    seq_min_k: np.ndarray | None
    seq_top1: np.ndarray | None
    cross_entropy: float | None
    n_tokens: int
    seconds: float
    tokens_per_second: float
    loss_note: str | None
    # additions to the contract (defaults keep it backward compatible)
    n_predicted: int = 0  # next-token predictions behind cross_entropy
    batch_size: int = 0
    positions: Any = "last"
    min_k: float = 0.2
    overflow: dict[str, int] = field(default_factory=dict)  # rows finite before the cast only
    compute_dtype: str | None = None  # "bfloat16 autocast" or the model's own dtype


# ------------------------------------------------------------------------------- positions
def parse_positions(positions: Any) -> str | list[int]:
    """``"last"``, ``"all"``, ``"mean"``, or a sorted list of distinct ints."""
    if isinstance(positions, str):
        if positions in ("last", "all", "mean"):
            return positions
        raise DataError(
            f"positions={positions!r} is not understood; use 'last', 'all', 'mean', an int or a "
            "list of ints"
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
def token_scores(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per next-token prediction within the mask: (sequence index, log-prob of the true next
    token, top-1 hit), computed in float32 with log_softmax over bounded chunks.

    A prediction at token t of token t+1 counts when both are real tokens. Each sequence's
    predictions are read as a view of the logits when they are contiguous (right padding), so
    the logits are not copied.
    """
    m = mask.bool()
    valid = m[:, :-1] & m[:, 1:]
    vocab = logits.shape[-1]
    chunk = max(1, SCORE_CHUNK_VALUES // vocab)
    seqs, lps, hits = [], [], []
    for b in range(logits.shape[0]):
        t = valid[b].nonzero()[:, 0]
        n = t.numel()
        if n == 0:
            continue
        t0, t1 = int(t[0]), int(t[-1]) + 1
        rows = logits[b, t0:t1] if t1 - t0 == n else logits[b, t]
        targets = input_ids[b, t + 1]
        for s in range(0, n, chunk):
            x = rows[s : s + chunk].float()
            target = targets[s : s + chunk]
            lp = torch.log_softmax(x, dim=-1)
            lps.append(lp.gather(1, target[:, None])[:, 0])
            hits.append(x.argmax(1) == target)
        seqs.append(torch.full((n,), b, dtype=torch.long, device=logits.device))
    if not lps:
        empty = torch.empty(0, device=logits.device)
        return empty.long(), empty, empty.bool()
    return torch.cat(seqs), torch.cat(lps), torch.cat(hits)


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


def _logits_of(output: Any, vocab: int | None) -> torch.Tensor | None:
    """The logits of a model's output: its ``logits`` field, or the output itself when it is a
    plain (batch, seq, vocab) tensor (a hand-written LM such as nanoGPT)."""
    if isinstance(output, torch.Tensor):
        logits = output if vocab is not None and output.shape[-1] == vocab else None
    elif isinstance(output, dict):
        logits = output.get("logits")
    else:
        logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) and logits.ndim == 3 else None


def _is_masked_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    return "MaskedLM" in name or name.endswith("ForPreTraining")


# ---------------------------------------------------------------------------------- device
def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the input embedding's device (right for accelerate device maps), else
    the first parameter's, else the CPU."""
    weight = getattr(input_embedding(model), "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _config_int(model: nn.Module, *names: str) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int):
            return v
    return None


def choose_batch_size(model: nn.Module, seq_len: int, n_sequences: int, device: Any) -> int:
    """A batch size that keeps memory modest.

    CPU: about 8192 tokens per batch (fewer past 512 tokens per sequence, since attention grows
    with the square of the length), and at most 512 MiB of float32 logits per batch. CUDA: half
    the free memory, divided by a rough per-sequence cost (float32 logits x 3, 32 hidden-size
    float32 activations per token, and one float32 attention matrix per head).
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
            bs = min(bs, LOGITS_BUDGET_BYTES // (seq_len * vocab * 4))
    return int(max(1, min(bs, n_sequences)))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap pages freed by a batch back to the OS (glibc; a no-op elsewhere).

    A forward pass frees many arrays of a few MB (below glibc's 32 MB mmap limit) in an order
    that fragments the heap, so the peak resident memory of a long capture kept growing with
    the number of batches (SmolLM2, 600 x 64 tokens: 6.6 GB; with a trim per batch 2.0 GB).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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
        if name in modules or name == FINAL:
            raise ModelError(f"block name {name!r} is repeated or reserved ('final')")
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


def _storage_dtypes(store_dtype: Any) -> tuple[torch.dtype, torch.dtype, np.dtype]:
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
    """What the hooks need to know about the batch in flight, and what they collected."""

    def __init__(self, b_idx, p_idx, weights, shape, round_dtype, out_dtype, device, widths):
        self.widths = widths  # name -> hidden size seen, shared across batches
        self.b_idx = b_idx
        self.p_idx = p_idx
        self.weights = weights  # (batch, seq) float32 mean weights, or None
        self.shape = shape
        self.round_dtype = round_dtype
        self.out_dtype = out_dtype
        self.pending: set[torch.device] = set()  # GPUs with copies in flight: synchronize
        self.rows: dict[str, torch.Tensor] = {}
        self.bad: dict[str, torch.Tensor] = {}
        self.overflow: dict[str, torch.Tensor] = {}

    def collect(self, name: str, out: torch.Tensor) -> None:
        batch, seq = self.shape
        if out.ndim != 3 or out.shape[0] != batch or out.shape[1] != seq:
            raise ModelError(
                f"module {name!r} gave an output of shape {tuple(out.shape)} for a batch of "
                f"{batch} sequences of {seq} tokens; a transformer block gives (batch, seq, "
                "hidden), so this module is not one: pass blocks='path.to.layers' (the ModuleList"
                " of the blocks)"
            )
        if self.widths and name not in self.widths:
            first, width = next(iter(self.widths.items()))
            if out.shape[2] != width:
                raise ModelError(
                    f"module {name!r} gave an output of shape {tuple(out.shape)}, hidden size "
                    f"{out.shape[2]}, but {first!r} gave hidden size {width}; the blocks of one "
                    "model share a hidden size, so this module is not a block: pass "
                    "blocks='path.to.layers'"
                )
        self.widths.setdefault(name, int(out.shape[2]))
        if name in self.rows:
            raise ModelError(
                f"module {name!r} ran twice in one forward pass (weights shared across layers?); "
                "hook modules that run once each: pass blocks='path.to.layers'"
            )
        if self.weights is not None:
            sel = torch.einsum("bt,bth->bh", self.weights, out.detach().float())
        else:
            sel = out.detach()[self.b_idx, self.p_idx]
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


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def capture(
    model: nn.Module,
    data: Any,
    blocks: Sequence[tuple[str, nn.Module]],
    *,
    final: tuple[str, nn.Module] | None,
    positions: Any = "last",
    store_dtype: Any = torch.float16,
    store: Any = None,
    batch_size: int | None = None,
    progress: bool = True,
    min_k: float = 0.2,
    autocast: str = "off",
) -> CaptureResult:
    """Run ``data`` through ``model`` once, storing each block's (and the final norm's, as layer
    ``"final"``) activations at ``positions``, and scoring each sequence from the logits.

    ``store`` is None (RAM), a directory (memory-mapped files, for captures bigger than RAM)
    or a fresh :class:`ActivationStore`. ``batch_size=None`` chooses one
    (:func:`choose_batch_size`). The model stays on its device, runs in eval mode under
    ``torch.inference_mode()``, and gets its training flags back afterwards, also on error.
    ``autocast`` is ``"off"`` (the model as it is), ``"bfloat16"`` or ``"auto"`` (see
    :mod:`hopaudit.precision`).
    """
    input_ids, attention_mask = _check_data(data)
    pos = parse_positions(positions)
    lengths = attention_mask.sum(1)
    check_positions_fit(pos, lengths)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch nn.Module, got {type(model).__name__}")
    modules = _check_blocks(blocks, final)
    names = list(modules)
    if not (isinstance(min_k, (int, float)) and 0 < min_k <= 1):
        raise DataError(f"min_k is a fraction of tokens in (0, 1], got {min_k!r}")
    vocab = vocab_size(model)
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        raise DataError(
            f"token ids run from {lo} to {hi} but the model's vocabulary has {vocab} entries; "
            "the tokenizer does not match the model"
        )
    n_seq, seq_len = input_ids.shape
    device = model_device(model)
    if batch_size is None:
        batch_size = choose_batch_size(model, seq_len, n_seq, device)
    elif not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int or None, got {batch_size!r}")
    round_dtype, out_dtype, np_dtype = _storage_dtypes(store_dtype)
    kwargs = _forward_kwargs(model)
    amp = compute_dtype(model, device, autocast)

    flags = [(m, m.training) for m in model.modules()]
    st, owned = _open_store(store, names, np_dtype)
    bar = None
    row_seq: list[np.ndarray] = []
    row_pos: list[np.ndarray] = []
    nonfinite = dict.fromkeys(names, 0)
    overflow = dict.fromkeys(names, 0)
    tok_seq: list[torch.Tensor] = []
    tok_lp: list[torch.Tensor] = []
    tok_hit: list[torch.Tensor] = []
    loss_note: str | None = None
    state: dict[str, _Batch] = {}
    widths: dict[str, int] = {}

    def on_output(name: str, out: torch.Tensor) -> None:
        state["batch"].collect(name, out)

    t0 = time.perf_counter()
    try:
        bar = tqdm(total=n_seq, unit="seq", desc="capture", disable=not progress, leave=False)
        model.eval()
        # bfloat16 autocast (amp) for the whole pass, or a no-op context: see precision.py
        with torch.inference_mode(), autocast_context(amp, device), TraceBlocks(modules, on_output):
            done_tokens = 0
            for start in range(0, n_seq, batch_size):
                stop = min(n_seq, start + batch_size)
                mask = attention_mask[start:stop]
                width = int(mask.any(0).nonzero().max()) + 1  # drop all-pad trailing columns
                mask = mask[:, :width]
                ids = input_ids[start:stop, :width]
                b_idx, p_idx = select_positions(mask, pos)
                weights = None
                if pos == "mean":
                    w = mask.float()
                    weights = (w / w.sum(1, keepdim=True)).to(device)
                batch = _Batch(
                    b_idx.to(device),
                    p_idx.to(device),
                    weights,
                    tuple(ids.shape),
                    round_dtype,
                    out_dtype,
                    device,
                    widths,
                )
                state["batch"] = batch
                ids_d = ids.to(device, non_blocking=True)
                mask_d = mask.to(device, non_blocking=True)
                try:
                    output = model(input_ids=ids_d, attention_mask=mask_d, **kwargs)
                except HopauditError:
                    raise
                except Exception as e:
                    raise CaptureError(
                        f"the forward pass failed on sequences {start}..{stop - 1}: "
                        f"{type(e).__name__}: {e}"
                    ) from e
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
                row_seq.append((b_idx + start).numpy())
                row_pos.append(p_idx.numpy())
                logits = _logits_of(output, vocab)
                if logits is not None and not _is_masked_lm(model):
                    b, lp, hit = token_scores(logits, ids_d, mask_d)
                    tok_seq.append(b.cpu() + start)
                    tok_lp.append(lp.cpu())
                    tok_hit.append(hit.cpu())
                elif loss_note is None:
                    loss_note = (
                        f"{type(model).__name__} has a masked-LM head: no next-token loss"
                        if logits is not None
                        else f"{type(model).__name__} returns no logits (encoder without an LM "
                        "head): no next-token loss"
                    )
                del output, logits
                state.clear()
                release_freed_memory()
                done_tokens += int(mask.sum())
                bar.update(stop - start)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{done_tokens / max(elapsed, 1e-9):,.0f} tok/s", refresh=False)
        st.finalize()
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

    n_tokens = int(lengths.sum())
    seq_nll = seq_min_k = seq_top1 = None
    cross_entropy = None
    n_predicted = 0
    if loss_note is None:
        seq_a = torch.cat(tok_seq).numpy().astype(np.int64)
        lp_a = torch.cat(tok_lp).numpy().astype(np.float64)
        hit_a = torch.cat(tok_hit).numpy()
        seq_nll, seq_min_k, seq_top1 = sequence_scores(seq_a, lp_a, hit_a, n_seq, float(min_k))
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
    return CaptureResult(
        store=st,
        layer_names=names,
        row_sequence=np.concatenate(row_seq).astype(np.int64),
        row_position=np.concatenate(row_pos).astype(np.int64),
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
        compute_dtype=describe(amp, model),
    )
