"""How well each membership score separates members (stored) from non-members (held-out).

Pure functions of score arrays (docs/theory.md §6): AUROC (ties count one half), the ROC curve
at every distinct threshold, the TPR at a given FPR read off that curve, and a 95 % bootstrap
interval over sequences (members and non-members resampled separately). Plus the one piece
that runs a model: :func:`reference_nll`, the mean token NLL of every sequence under a
reference model, for ``ref_loss_diff``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hopaudit.errors import DataError, ModelError
from hopaudit.progress import tqdm

__all__ = [
    "MEMBERSHIP_COLUMNS",
    "MIN_PER_CLASS",
    "auroc",
    "bootstrap_auroc",
    "check_reference",
    "membership_table",
    "reference_nll",
    "roc_curve",
    "tpr_at_fpr",
]

MEMBERSHIP_COLUMNS = [
    "score",
    "layer",
    "auroc",
    "auroc_lo",
    "auroc_hi",
    "tpr_at_1pct_fpr",
    "tpr_at_5pct_fpr",
    "n_members",
    "n_nonmembers",
]
#: Fewest members and non-members an evaluation takes: with one, the bootstrap has nothing to
#: resample and the ROC curve has a single step.
MIN_PER_CLASS = 2


def _pair(members: Any, nonmembers: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite scores of each class, float64; a DataError when a class has fewer than 2."""
    m = np.asarray(members, dtype=np.float64).ravel()
    n = np.asarray(nonmembers, dtype=np.float64).ravel()
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size < MIN_PER_CLASS or n.size < MIN_PER_CLASS:
        raise DataError(
            f"membership needs at least {MIN_PER_CLASS} members and {MIN_PER_CLASS} non-members "
            f"with a finite score, got {m.size} and {n.size}: AUROC and its interval are "
            "undefined; give more stored and held-out sequences"
        )
    return m, n


def auroc(members: Any, nonmembers: Any) -> float:
    """P(score of a random member > score of a random non-member), ties counting 1/2
    (the Mann-Whitney U statistic over m * n, from mid-ranks)."""
    m, n = _pair(members, nonmembers)
    from scipy.stats import rankdata  # scipy.stats takes ~0.5 s: imported when first scored

    ranks = rankdata(np.concatenate([m, n]))
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def roc_curve(members: Any, nonmembers: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with one point per distinct score, thresholds descending, starting
    at (0, 0) with threshold +inf: a sequence is called a member when its score >= threshold.
    The points of scikit-learn's ``roc_curve(..., drop_intermediate=False)``."""
    m, n = _pair(members, nonmembers)
    scores = np.concatenate([m, n])
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / m.size]
    fpr = np.r_[0.0, fps / n.size]
    return fpr, tpr, np.r_[np.inf, s[last]]


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The largest TPR among the ROC points with FPR <= ``target`` (no interpolation)."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def bootstrap_auroc(
    members: Any, nonmembers: Any, n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC: members and non-members are resampled
    separately, with replacement; (nan, nan) for ``n_boot=0``.

    A resample is a vector of counts (how often each sequence was drawn, multinomial), so all
    ``n_boot`` AUROCs come from one sort: each member's count-weighted number of non-members
    below it (ties one half), summed with the members' counts.
    """
    m, n = _pair(members, nonmembers)
    if n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    step = max(1, 2**22 // (m.size + n.size))  # resamples per block: bounded memory
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        w_m = rng.multinomial(m.size, np.full(m.size, 1.0 / m.size), size=b)
        w_n = rng.multinomial(n.size, np.full(n.size, 1.0 / n.size), size=b)
        values[start : start + b] = weighted_auroc(m, n, w_m, w_n)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def weighted_auroc(
    members: np.ndarray, nonmembers: np.ndarray, w_m: np.ndarray, w_n: np.ndarray
) -> np.ndarray:
    """AUROC of the samples that repeat each member ``w_m[b, i]`` times and each non-member
    ``w_n[b, j]`` times, for every row b (counts, as a bootstrap draws them)."""
    m, n = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    w_m = np.atleast_2d(np.asarray(w_m, np.float64))
    w_n = np.atleast_2d(np.asarray(w_n, np.float64))
    order = np.argsort(n, kind="stable")
    below = np.searchsorted(n[order], m, side="left")  # non-members strictly below each member
    upto = np.searchsorted(n[order], m, side="right")  # ... and those equal to it
    cum = np.zeros((w_n.shape[0], n.size + 1))
    np.cumsum(w_n[:, order], axis=1, out=cum[:, 1:])
    wins = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])
    return (w_m * wins).sum(1) / (w_m.sum(1) * w_n.sum(1))


def membership_table(
    members: Mapping[tuple[str, str | None], Any],
    nonmembers: Mapping[tuple[str, str | None], Any],
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (score, layer) key present in both mappings with enough finite values:
    AUROC, its bootstrap interval, TPR at 1 % and 5 % FPR, and the class sizes."""
    rows = []
    for key, mem in members.items():
        if key not in nonmembers:
            continue
        try:
            m, n = _pair(mem, nonmembers[key])
        except DataError:
            continue
        fpr, tpr, _ = roc_curve(m, n)
        lo, hi = bootstrap_auroc(m, n, n_boot, seed)
        rows.append(
            {
                "score": key[0],
                "layer": key[1],
                "auroc": auroc(m, n),
                "auroc_lo": lo,
                "auroc_hi": hi,
                "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
                "tpr_at_5pct_fpr": tpr_at_fpr(fpr, tpr, 0.05),
                "n_members": int(m.size),
                "n_nonmembers": int(n.size),
            }
        )
    return pd.DataFrame(rows, columns=MEMBERSHIP_COLUMNS)


# ------------------------------------------------------------------------------ reference
def check_reference(model: Any, reference: Any) -> None:
    """A reference model must be a causal LM over the same vocabulary (and, where both
    tokenizers can be found, the same tokens); a :class:`ModelError` otherwise."""
    import torch  # here, not at the top: the AUROCs need no torch (hopaudit show)

    from hopaudit.data.prepare import find_tokenizer
    from hopaudit.model.blocks import is_masked_lm, vocab_size

    if not isinstance(reference, torch.nn.Module):
        raise ModelError(
            f"reference must be a torch model (a causal LM), got {type(reference).__name__}"
        )
    if is_masked_lm(reference):
        raise ModelError(
            f"reference {type(reference).__name__} has a masked-LM head; ref_loss_diff needs a "
            "causal LM over the same tokenizer"
        )
    v_model, v_ref = vocab_size(model), vocab_size(reference)
    if v_model is None or v_ref is None or v_model != v_ref:
        raise ModelError(
            f"the reference model's vocabulary has {v_ref} entries and the audited model's "
            f"{v_model}: ref_loss_diff compares NLLs of the same tokens, so the reference must "
            "use the same tokenizer; pass a reference trained with it"
        )
    tok_m, tok_r = find_tokenizer(model), find_tokenizer(reference)
    if tok_m is not None and tok_r is not None and tok_m.get_vocab() != tok_r.get_vocab():
        raise ModelError(
            "the reference model's tokenizer differs from the audited model's (same size, "
            "other tokens): ref_loss_diff needs the same tokenizer"
        )


def _reference_forward(model: Any, head: Any, ids: Any, mask: Any, vocab: Any) -> tuple[Any, Any]:
    """(output, the LM head's input) of one reference batch with its head intercepted, or
    (output, None) with its logits whole: also when the intercepted batch failed, ran the head
    other than once on every position, or failed the head's check (capture/head.py; then the
    head is left alone from now on)."""
    from hopaudit.capture.forward import logits_of

    if head is not None:
        try:
            out = model(input_ids=ids, attention_mask=mask)
        except Exception:  # a model that cannot run its head on a slice
            out = None
        hidden = head.take(None if out is None else logits_of(out, vocab))
        if out is not None and hidden is not None and hidden.shape[:2] == ids.shape:
            return out, hidden
        head.stop()
    return model(input_ids=ids, attention_mask=mask), None


def reference_nll(
    reference: Any,
    input_ids: Any,
    attention_mask: Any,
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Mean token NLL (nats) of every sequence under ``reference``: one forward per batch, in
    inference mode; the model's training flags are restored afterwards. As in the capture, the
    reference's LM head runs on the scored rows a chunk at a time where its logits are the
    head's output (capture/head.py), so a batch's logits are never whole."""
    import torch  # here, not at the top: the AUROCs need no torch (hopaudit show)

    from hopaudit.capture import forward
    from hopaudit.capture.batching import choose_batch_size, model_device
    from hopaudit.capture.forward import logits_of
    from hopaudit.capture.head import intercepted_head
    from hopaudit.evidence.scores import head_statistics, sequence_statistics, token_statistics
    from hopaudit.heap import kept_heap
    from hopaudit.model.blocks import vocab_size

    ids = torch.as_tensor(input_ids).long()
    mask = torch.as_tensor(attention_mask).long()
    n_seq, seq_len = ids.shape
    device = model_device(reference)
    if batch_size is None:
        batch_size = choose_batch_size(reference, seq_len, n_seq, device)
    flags = [(m, m.training) for m in reference.modules()]
    seqs, lps = [], []
    vocab = vocab_size(reference)
    try:
        reference.eval()
        with (
            torch.inference_mode(),
            intercepted_head(reference, enabled=forward.HEAD_CHUNKS) as head,
            kept_heap() as heap,  # freed blocks reused (heap.py)
        ):
            for start in tqdm(
                range(0, n_seq, batch_size), desc="reference", disable=not progress, leave=False
            ):
                stop = min(n_seq, start + batch_size)
                b_ids, b_mask = ids[start:stop].to(device), mask[start:stop].to(device)
                out, hidden = _reference_forward(reference, head, b_ids, b_mask, vocab)
                if hidden is not None:  # the head run on the scored rows, a chunk at a time
                    b, lp, _hit, _z = head_statistics(
                        hidden, head.logits, b_ids, b_mask, vocab=head.vocab, dtype=head.dtype,
                        linear=head.linear,
                    )  # fmt: skip
                else:
                    logits = logits_of(out, vocab)
                    if logits is None:
                        raise ModelError(
                            f"the reference {type(reference).__name__} returns no logits; it "
                            "must be a causal LM"
                        )
                    b, lp, _hit, _z = token_statistics(logits, b_ids, b_mask, overwrite=True)
                    del logits
                    head = None  # a batch ran with its logits whole: so do the rest
                seqs.append(b.cpu().numpy() + start)
                lps.append(lp.cpu().numpy())
                del out, hidden
                heap.batch_done()
    finally:
        for m, f in flags:
            m.training = f
    seq = np.concatenate(seqs) if seqs else np.empty(0, np.int64)
    lp = np.concatenate(lps) if lps else np.empty(0)
    stats = sequence_statistics(seq, lp, np.zeros_like(lp), n_seq, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return stats["nll_sum"] / stats["n_predicted"]
