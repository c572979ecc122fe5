"""Membership scores as pure functions: logits, labels and masks in, per-sequence numbers out.

Every score is oriented so that *higher means more likely a member* (memorized); the
definitions, with their papers, are in docs/theory.md §6 ("Evidence of memorization"):

- ``loss``: minus the mean token NLL (nats).
- ``zlib`` (Carlini et al. 2021): minus the sum of token NLL over the zlib-compressed length
  of the text's UTF-8 bytes.
- ``min_k`` (Shi et al. 2023): mean of the lowest k % of token log-probs (computed in
  :mod:`hopaudit.capture`).
- ``min_k_pp`` (Min-K%++, Zhang et al. 2024): mean of the lowest k % of
  z_t = (log p(x_t) - mu_t) / sigma_t, with mu_t and sigma_t the mean and standard deviation of
  log p under the model's own next-token distribution p at position t.
- ``ref_loss_diff`` (Carlini et al. 2021): NLL under a reference model minus NLL under the
  audited one (same tokenizer).

Min-K%++ needs the whole next-token distribution at every position: :func:`token_statistics`
reads it from the logits the forward already produced, in chunks of positions, so a
(batch x length x vocab) float array is never made beyond what the model returned;
:func:`head_statistics` makes those logits itself from the LM head's input, a chunk at a time,
so the capture never holds them whole (:mod:`hopaudit.capture.head`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "COLUMN_BYTES",
    "COLUMN_VALUES",
    "HEAD_CHUNK_VALUES",
    "SCORE_CHUNK_VALUES",
    "greedy_runs",
    "head_statistics",
    "lowest_fraction_mean",
    "sequence_scores",
    "sequence_statistics",
    "token_statistics",
    "zlib_length",
    "zlib_score",
]

#: Logit values scored at once (float32: 2 MiB, ten rows of a 50K vocabulary): the passes over a
#: chunk stay in a core's cache, faster than 4 MiB (benchmarks/README.md, scores.py).
SCORE_CHUNK_VALUES = 2**19
#: Logits the LM head makes at once in :func:`head_statistics`, by the bytes of a logit: the
#: fastest of 2**21 to 2**25 on the audit's batch (benchmarks/README.md, head_chunks.py).
HEAD_CHUNK_VALUES = {2: 2**23, 4: 2**25}
#: Logits a slice of the vocabulary holds when the scores make a linear head's logits a slice at a
#: time (:func:`head_statistics` ``linear=``): in float32, 2**19 to 2**21 ran alike; 2**20 the
#: fastest of them in bfloat16 (benchmarks/README.md, head_chunks.py).
COLUMN_VALUES = 2**20
#: The bytes a logit needs for the slices: bfloat16 logits ran faster made a few rows at a time
#: (benchmarks/README.md, head_chunks.py ``columns_over_rows_bfloat16``).
COLUMN_BYTES = 4


def token_statistics(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift: bool = True,
    chunk_values: int = SCORE_CHUNK_VALUES,
    overwrite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per next-token prediction within the mask: (sequence index, log p of the true next
    token, top-1 hit, Min-K%++ z), ordered by sequence, then position.

    A prediction at token t of token t+1 counts when both are real tokens. ``shift=False`` is
    the seq2seq alignment: logits[t] predict ``input_ids[t]`` (the labels; the decoder read them
    shifted right), counted where the mask is set. Computed in float32, or
    float64 for float64 logits, over at most ``chunk_values`` logits at once, gathered across
    the batch (one chunk serves many short sequences). z is 0 where the distribution has no
    spread (sigma = 0: a one-hot prediction). ``overwrite=True`` lets the work run in place on
    ``logits`` already in that dtype (the capture's, which nothing reads after).
    """
    b_idx, t_idx, targets = _predictions(input_ids, mask, shift)
    work = torch.promote_types(logits.dtype, torch.float32)
    chunk = max(1, int(chunk_values) // logits.shape[-1])
    chunks = _row_chunks(logits, b_idx, t_idx, chunk, work, overwrite)
    return (b_idx, *_statistics(chunks, targets, chunk, logits.shape[-1], work))


def head_statistics(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift: bool = True,
    chunk_values: int = SCORE_CHUNK_VALUES,
    head_values: int | None = None,
    vocab: int | None = None,
    dtype: torch.dtype | None = None,
    linear: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`token_statistics` of the logits ``head`` makes from ``hidden`` (batch x length x
    width: the LM head's input, :mod:`hopaudit.capture.head`), made for the predictions only,
    about ``head_values`` logits at a time (None: :data:`HEAD_CHUNK_VALUES` of the logits'
    dtype): the batch's logits are never whole.

    ``head`` maps rows (n x width) to their logits (n x ``vocab``, in ``dtype``; both read off
    one row when not given); the work dtype is float32, or float64 for float64 logits.
    ``linear=(weight, bias)`` says that ``head`` is that linear map (``weight`` vocab x width):
    float32 (or float64) logits are then made a slice of the vocabulary at a time for many rows
    at once, about ``head_values`` logits a slice (None: :data:`COLUMN_VALUES`;
    :func:`_column_statistics`), products whose output stays in cache; bfloat16 ones still a
    few rows at a time, which ran faster (benchmarks/README.md, head_chunks.py).
    """
    b_idx, t_idx, targets = _predictions(input_ids, mask, shift)
    rows = hidden[b_idx, t_idx]
    if linear is not None and dtype is None:
        dtype = head(rows[:1] if len(rows) else hidden[:1, :1].reshape(1, -1)).dtype
    if linear is not None and dtype.itemsize >= COLUMN_BYTES:
        values = COLUMN_VALUES if head_values is None else int(head_values)
        return (b_idx, *_column_statistics(rows, *linear, targets, values, dtype))
    if vocab is None or dtype is None:
        first = head(rows[:1] if len(rows) else hidden[:1, :1].reshape(1, -1))
        vocab, dtype = first.shape[-1], first.dtype
    work = torch.promote_types(dtype, torch.float32)
    chunk = max(1, int(chunk_values) // vocab)
    if head_values is None:
        head_values = HEAD_CHUNK_VALUES.get(dtype.itemsize, HEAD_CHUNK_VALUES[4])
    step = max(chunk, int(head_values) // vocab // chunk * chunk)
    chunks = _head_chunks(rows, head, chunk, step, work)
    return (b_idx, *_statistics(chunks, targets, chunk, vocab, work))


def _predictions(
    input_ids: torch.Tensor, mask: torch.Tensor, shift: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sequence index, position, target token) of every prediction that counts."""
    m = mask.bool()
    valid = m[:, :-1] & m[:, 1:] if shift else m
    b_idx, t_idx = valid.nonzero(as_tuple=True)
    return b_idx, t_idx, input_ids[b_idx, t_idx + (1 if shift else 0)]


def _empty(device: torch.device, work: torch.dtype) -> tuple[torch.Tensor, ...]:
    empty = torch.empty(0, device=device, dtype=work)
    return empty, empty.bool(), empty


def _statistics(
    chunks: Iterator[tuple[int, torch.Tensor]],
    targets: torch.Tensor,
    chunk: int,
    vocab: int,
    work: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p of the target, top-1 hit, Min-K%++ z) of the predictions whose logit rows
    ``chunks`` yields (first prediction, rows in ``work`` dtype that may be overwritten)."""
    n, device = targets.numel(), targets.device
    if n == 0:
        return _empty(device, work)
    # per prediction: y_t, Z, sum(e * y), sum(e * y * y) of the max-shifted row (the chunks'
    # reductions); everything else on these n numbers at once, not chunk by chunk
    moments = torch.empty(4, n, dtype=work, device=device)
    hit = torch.empty(n, dtype=torch.bool, device=device)
    exps = torch.empty((min(chunk, n), vocab), dtype=work, device=device)
    for s, y in chunks:
        e = s + y.shape[0]
        _chunk_moments(y, targets[s:e], hit[s:e], moments[:, s:e], exps[: e - s])
    lp, z = _log_p_and_z(*moments)
    return lp, hit, z


#: Rows the LM head runs on at once when it is made a slice of the vocabulary at a time: enough
#: for products at speed, few enough that a slice's columns stay wide (at least ``_MIN_COLUMNS``).
_COLUMN_ROWS = 2048
_MIN_COLUMNS = 256


def _column_statistics(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    values: int,
    work: torch.dtype,
    by_max: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p of the target, top-1 hit, Min-K%++ z) of the logits ``rows @ weight.T + bias``,
    made a slice of the vocabulary at a time for up to ``_COLUMN_ROWS`` rows at once.

    A whole row of logits is never held: each slice's reductions (:func:`_exp_moments`,
    shifted by the slice's running maximum m) are folded into per-row sums in float64. When m
    rises by d < 0 (old minus new), the sums of the old slices move to the new shift as
    Z' = a Z, S1' = a (S1 + d Z), S2' = a (S2 + 2 d S1 + d^2 Z) with a = exp(d). The top-1 hit
    is the target being the first index of the row's maximum: the index where m last rose
    (a later tie keeps the earlier one), so slices go in vocabulary order. The products of a
    slice write about ``values`` logits, which stay in cache, where a whole row's
    (vocabulary-wide) output went to memory: faster on a CPU (benchmarks/head_chunks.py).
    ``by_max`` chooses how the index of a new maximum is found, as in :func:`_top1_hits`.
    """
    n, device = targets.numel(), targets.device
    if n == 0:
        return _empty(device, work)
    vocab, acc = int(weight.shape[0]), torch.float64
    lp = torch.empty(n, dtype=work, device=device)
    z = torch.empty(n, dtype=work, device=device)
    hit = torch.empty(n, dtype=torch.bool, device=device)
    blocks = -(-n // _COLUMN_ROWS)
    step = -(-n // blocks)  # rows a block, the blocks alike
    cols = min(vocab, max(_MIN_COLUMNS, values // step // 64 * 64))
    exps = torch.empty(step * cols, dtype=work, device=device)
    for s in range(0, n, step):
        e = min(n, s + step)
        lp[s:e], hit[s:e], z[s:e] = _column_block(
            rows[s:e], weight, bias, targets[s:e], cols, work, acc, exps, by_max
        )
    return lp, hit, z


def _column_block(rows, weight, bias, target, cols, work, acc, exps, by_max):
    """:func:`_column_statistics` of one block of rows (``exps`` a flat buffer of at least
    rows x ``cols`` values in ``work`` dtype, the logits' own)."""
    n, vocab, device = rows.shape[0], int(weight.shape[0]), rows.device
    top = torch.full((n,), -math.inf, dtype=work, device=device)
    first = torch.zeros(n, dtype=torch.long, device=device)
    y_t = torch.full((n,), math.nan, dtype=work, device=device)  # a target past the head: NaN
    sums = torch.zeros(3, n, dtype=acc, device=device)  # Z, S1, S2 shifted by ``top``
    part = torch.empty(3, n, dtype=work, device=device)
    order = torch.argsort(target)
    edges = torch.searchsorted(target[order], torch.arange(0, vocab + cols, cols, device=device))
    edges = edges.tolist()
    by_max = by_max if by_max is not None else device.type != "cpu"
    for k, c0 in enumerate(range(0, vocab, cols)):
        c1 = min(vocab, c0 + cols)
        y = F.linear(rows, weight[c0:c1], None if bias is None else bias[c0:c1]).to(work)
        here = order[edges[k] : edges[k + 1]]  # the rows whose target is in this slice
        y_t[here] = y[here, target[here] - c0]
        if by_max:  # on a device, no wait for the rows that rose
            high, arg = y.max(1)
            first = torch.where(high > top, arg + c0, first)
        else:  # on a CPU amax is several times faster than max with its index (_top1_hits)
            high = y.amax(1)
            rose = (high > top).nonzero()[:, 0]
            if len(rose):
                first[rose] = y[rose].argmax(1) + c0
        new = torch.maximum(top, high)
        if c0:  # the sums so far, shifted to the new maximum
            d = (top - new).to(acc)
            a = d.exp()
            z0, s1, s2 = sums
            sums[2] = a * (s2 + 2 * d * s1 + d * d * z0)
            sums[1] = a * (s1 + d * z0)
            sums[0] = a * z0
        top = new
        y.sub_(top[:, None])
        _exp_moments(y, part, exps[: n * (c1 - c0)].view(n, c1 - c0))
        sums += part
    lp, z = _log_p_and_z(y_t.to(acc) - top.to(acc), *sums)
    hit = (first == target) & ~torch.isnan(top)
    return lp.to(work), hit, z.to(work)


def _head_chunks(
    rows: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    chunk: int,
    step: int,
    work: torch.dtype,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first prediction, its ``chunk`` rows of logits in ``work`` dtype): the head run on
    ``step`` rows at once (a product large enough to run at speed), each of its ``chunk``-row
    slices copied into one reused buffer (in place when the head already gives ``work``)."""
    n = rows.shape[0]
    buf = None
    for s in range(0, n, step):
        logits = head(rows[s : s + step])
        for a in range(0, logits.shape[0], chunk):
            y = logits[a : a + chunk]
            if y.dtype != work:
                if buf is None:
                    buf = torch.empty((min(chunk, n), y.shape[1]), dtype=work, device=y.device)
                y = buf[: y.shape[0]].copy_(y)
            yield s + a, y
        del logits


def _row_chunks(
    logits: torch.Tensor,
    b_idx: torch.Tensor,
    t_idx: torch.Tensor,
    chunk: int,
    work: torch.dtype,
    overwrite: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(first prediction, its ``chunk`` rows of logits in ``work`` dtype) over the predictions.

    The rows of a sequence are consecutive in memory: a chunk is copied from one slice per
    sequence it spans into one reused buffer (a gather by index cost more than the statistics
    themselves), or is the slice itself when ``overwrite`` allows and no copy is needed.
    """
    n, (b, t, vocab) = b_idx.numel(), logits.shape
    try:
        flat = logits.view(b * t, vocab)
    except RuntimeError:  # strides that do not flatten: gather by index
        for s in range(0, n, chunk):
            yield s, logits[b_idx[s : s + chunk], t_idx[s : s + chunk]].to(work)
        return
    rows = (b_idx * t + t_idx).cpu().numpy()
    # run k of consecutive rows covers predictions bounds[k] .. bounds[k + 1]
    bounds = np.append(np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1), n)
    in_place = overwrite and logits.dtype == work
    buf = None
    k = 0
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        while bounds[k + 1] <= s:
            k += 1
        if in_place and bounds[k + 1] >= e:
            yield s, flat[rows[s] : rows[s] + e - s]
            continue
        if buf is None:
            buf = torch.empty((min(chunk, n), vocab), dtype=work, device=logits.device)
        y, p, j = buf[: e - s], s, k
        while p < e:
            q = min(e, int(bounds[j + 1]))
            y[p - s : q - s].copy_(flat[rows[p] : rows[p] + q - p])
            p, j = q, j + 1
        yield s, y


def _chunk_moments(
    y: torch.Tensor, target: torch.Tensor, hit: torch.Tensor, out: torch.Tensor, exps: torch.Tensor
) -> None:
    """The reductions of one chunk of logit rows ``y`` (rows this function may overwrite):
    ``hit`` gets the top-1 hits (:func:`_top1_hits`), ``out`` (4 x rows) the shifted target
    logit y_t, Z = sum(e), sum(e * y) and sum(e * y * y), with y shifted by its row maximum and
    e = exp(y) written into ``exps``; the products multiplied in place, no other buffer."""
    top, hit_rows = _top1_hits(y, target)
    hit.copy_(hit_rows)
    y.sub_(top[:, None])
    out[0] = y.gather(1, target[:, None])[:, 0]
    _exp_moments(y, out[1:], exps)


def _exp_moments(y: torch.Tensor, out: torch.Tensor, exps: torch.Tensor) -> None:
    """``out`` (3 x rows) = sum(e), sum(e * y), sum(e * y * y) of shifted logit rows ``y``, with
    e = exp(y) written into ``exps`` and multiplied there in place."""
    e = torch.exp(y, out=exps)
    torch.sum(e, 1, out=out[0])
    torch.sum(e.mul_(y), 1, out=out[1])
    torch.sum(e.mul_(y), 1, out=out[2])


def _log_p_and_z(
    y_t: torch.Tensor, total: torch.Tensor, sum_ey: torch.Tensor, sum_eyy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of the target, Min-K%++ z) from a row's moments (:func:`_chunk_moments`).

    With Z = sum(e): log p(target) = y_t - log Z, mu = E_p[log p] = E_p[y] - log Z, and
    sigma^2 = Var_p[log p] = Var_p[y] (log Z shifts both alike), E_p[y] and E_p[y^2] the sums
    over Z. The shift by the row maximum keeps exp in range. z is 0 where sigma is.
    """
    mean_y = sum_ey / total
    second = sum_eyy / total
    sigma = (second - mean_y * mean_y).clamp_min(0).sqrt()
    lp_t = y_t - total.log()
    z = torch.where(sigma > 0, (y_t - mean_y) / sigma, torch.zeros_like(sigma))
    return lp_t, z


def _top1_hits(
    y: torch.Tensor, target: torch.Tensor, by_max: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row maximum, whether the target is the row's argmax: the first of tied maxima).

    On a CPU the maximum alone (``amax``) is several times faster than ``max`` with its
    index, so only the rows whose target holds the maximum are looked at again, each over the
    tokens before its target for an earlier tie. On other devices, where that loop would wait
    on the device row by row, ``max`` gives both (``by_max`` chooses either way).
    """
    if by_max if by_max is not None else y.device.type != "cpu":
        top, arg = y.max(1)
        return top, arg == target
    top = y.amax(1)
    hit = y.gather(1, target[:, None])[:, 0] == top
    rows = hit.nonzero()[:, 0].tolist()
    if rows:
        targets, tops = target.tolist(), top.tolist()
        for r in rows:
            t = targets[r]
            if t and float(y[r, :t].amax()) == tops[r]:
                hit[r] = False  # an earlier token ties: argmax is that one
    return top, hit


def lowest_fraction_mean(
    seq: np.ndarray, values: np.ndarray, n_sequences: int, fraction: float
) -> np.ndarray:
    """Per sequence, the mean of its lowest ``max(1, floor(fraction * n))`` values (NaN for a
    sequence without values): Min-K% of log-probs, Min-K%++ of z."""
    out = np.full(n_sequences, np.nan)
    seq = np.asarray(seq, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if seq.size == 0:
        return out
    order = np.lexsort((values, seq))
    seq_s, v_s = seq[order], values[order]
    counts = np.bincount(seq_s, minlength=n_sequences)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k = np.maximum(1, np.floor(counts * fraction).astype(np.int64))
    cum = np.concatenate([[0.0], np.cumsum(v_s)])
    idx = np.flatnonzero(counts > 0)
    out[idx] = (cum[starts[idx] + k[idx]] - cum[starts[idx]]) / k[idx]
    return out


def sequence_scores(
    seq: np.ndarray, logp: np.ndarray, hit: np.ndarray, n_sequences: int, min_k: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean NLL, Min-K% Prob, top-1) per sequence from per-token values; NaN without tokens.

    Min-K% Prob is the mean of the lowest ``max(1, floor(min_k * n))`` token log-probs.
    """
    seq = np.asarray(seq, dtype=np.int64)
    counts = np.bincount(seq, minlength=n_sequences)
    has = counts > 0
    nll = np.full(n_sequences, np.nan)
    top1 = np.full(n_sequences, np.nan)
    sums = np.bincount(seq, weights=np.asarray(logp, np.float64), minlength=n_sequences)
    hits = np.bincount(seq, weights=np.asarray(hit, np.float64), minlength=n_sequences)
    nll[has] = -sums[has] / counts[has]
    top1[has] = hits[has] / counts[has]
    return nll, lowest_fraction_mean(seq, logp, n_sequences, min_k), top1


def sequence_statistics(
    seq: np.ndarray, logp: np.ndarray, z: np.ndarray, n_sequences: int, min_k: float
) -> dict[str, np.ndarray]:
    """Per sequence: ``n_predicted`` (int64), ``nll_sum`` (nats; NaN without predictions) and
    ``min_k_pp`` (Min-K%++ over the lowest ``min_k`` fraction of z)."""
    seq = np.asarray(seq, dtype=np.int64)
    counts = np.bincount(seq, minlength=n_sequences).astype(np.int64)
    sums = np.bincount(seq, weights=-np.asarray(logp, np.float64), minlength=n_sequences)
    nll_sum = np.where(counts > 0, sums, np.nan)
    return {
        "n_predicted": counts,
        "nll_sum": nll_sum,
        "min_k_pp": lowest_fraction_mean(seq, z, n_sequences, min_k),
    }


def zlib_length(text: str) -> int:
    """Bytes of ``zlib.compress`` (default level) of the text's UTF-8 encoding."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(nll_sum: np.ndarray, texts: list[str]) -> np.ndarray:
    """The zlib score, oriented higher = member: -(sum of token NLL) / zlib length of the text."""
    nll_sum = np.asarray(nll_sum, dtype=np.float64)
    if nll_sum.shape != (len(texts),):
        raise ValueError(f"{nll_sum.shape[0]} NLL sums for {len(texts)} texts")
    lengths = np.array([zlib_length(t) for t in texts], dtype=np.float64)
    return -nll_sum / lengths


def greedy_runs(
    seq: np.ndarray, hit: np.ndarray, n_sequences: int, prefix: int, suffix: int
) -> tuple[np.ndarray, np.ndarray]:
    """(extracted_tokens, compared_tokens) per sequence, read off a teacher-forced pass.

    Greedy decoding from x[:p] gives x[p] exactly when the argmax of the logits at position
    p-1 is x[p]; having given x[p..p+j), its next input is x[:p+j], the same as teacher forcing,
    so by induction it reproduces x[p..p+j] exactly when the top-1 prediction is right at every
    position p-1 .. p+j-1 (docs/theory.md §6). ``hit`` holds each next-token prediction's top-1
    hit, ordered by sequence (``seq``), then position, every sequence's from its first token
    (right-padded: :func:`token_statistics`'s order). The run is
    capped at ``suffix`` and at the tokens a sequence holds after its prefix
    (``compared_tokens``).
    """
    seq = np.asarray(seq, dtype=np.int64)
    hit = np.asarray(hit, dtype=bool)
    counts = np.bincount(seq, minlength=n_sequences)[:n_sequences]
    starts = np.cumsum(counts) - counts
    compared = np.clip(counts - (prefix - 1), 0, suffix).astype(np.int64)
    steps = np.arange(suffix)
    within = steps[None, :] < compared[:, None]
    at = np.where(within, starts[:, None] + prefix - 1 + steps[None, :], 0)
    run = hit[at] & within if hit.size else within
    return np.cumprod(run, axis=1).sum(1).astype(np.int64), compared
