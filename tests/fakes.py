"""A stand-in Audit with the exact attributes the widget reads, built from real distances.

The patterns are random Gaussian clusters; nearest-pattern distances, saturation subsets,
basins and ratios are computed by brute force here, so the numbers are consistent with each
other the way a real audit's are. The widget and report tests run on it in a second, beside the
tests that run a real ``hopaudit.audit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hopaudit.views.protocol import View

WORDS = (
    "memory",
    "basin",
    "pattern",
    "radius",
    "floor",
    "layer",
    "token",
    "sequence",
    "model",
    "entropy",
    "retrieval",
    "attention",
    "residual",
    "stream",
    "vector",
    "nearest",
    "ball",
    "volume",
    "partition",
    "energy",
    "hopfield",
)


@dataclass
class FakeReport:
    n: int
    n_patterns: int
    nn: np.ndarray
    saturation_nn: dict[float, np.ndarray]
    r_hat: float
    r_star: float
    r_c: float
    basin_sizes: np.ndarray


@dataclass
class FakeEmbedding:
    xy: np.ndarray
    rows: np.ndarray
    sequence: np.ndarray
    basin: np.ndarray
    ratio: np.ndarray
    n_total: int = 0


@dataclass
class FakeAudit(View):
    layers: pd.DataFrame
    reports: dict[str, FakeReport]
    samples: pd.DataFrame
    embeddings: dict[str, FakeEmbedding]
    _summary: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def widget_state(self, **options: Any) -> dict[str, Any]:
        from hopaudit.views.widget import widget_state

        return widget_state(self, **options)


def _nn(x: np.ndarray, ref: np.ndarray | None = None, exclude_self: bool = True):
    ref = x if ref is None else ref
    d2 = (x * x).sum(1)[:, None] + (ref * ref).sum(1)[None, :] - 2 * x @ ref.T
    d2 = np.maximum(d2, 0)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    j = d2.argmin(1)
    return np.sqrt(d2[np.arange(len(x)), j]), j


def fake_audit(
    n_blocks: int = 4, d: int = 240, n: int = 32, seed: int = 0, skip: int | None = None
) -> FakeAudit:
    """``n_blocks`` blocks + ``final``; ``d`` sequences (one pattern each) of hidden size ``n``."""
    rng = np.random.default_rng(seed)
    names = [f"transformer.h.{i}" for i in range(n_blocks)] + ["final"]
    texts = [
        f"seq {i}: " + " ".join(rng.choice(WORDS, size=12 + i % 9)) + f" #{i}" for i in range(d)
    ]
    rows, reports, embeddings = [], {}, {}
    r_star = math.sqrt(n / (2 * math.pi * math.e))
    centers = rng.normal(size=(6, n)) * 3
    ratio_final = np.full(d, np.nan)
    basin_final = np.full(d, -1)
    for li, name in enumerate(names):
        row: dict[str, Any] = {"layer": li, "name": name, "normalize": "rms", "n": n}
        if skip is not None and li == skip:
            row.update(skipped_reason="all rows were non-finite")
            rows.append(row)
            continue
        scale = 0.6 + 0.25 * li
        x = centers[rng.integers(0, 6, size=d)] + rng.normal(size=(d, n)) * scale
        nn, j = _nn(x)
        sat = {}
        for frac in (0.25, 0.5, 0.75, 1.0):
            k = max(2, round(frac * d))
            sub = rng.choice(d, size=k, replace=False)
            q = np.setdiff1d(np.arange(d), sub) if frac < 1 else np.arange(d)
            if frac < 1:
                sat[frac] = _nn(x[q], x[sub], exclude_self=False)[0]
            else:
                sat[frac] = nn.copy()
        r_hat = float(np.median(nn) / 2)
        lg = math.lgamma(n / 2 + 1)
        r_c = math.exp((lg - n / 2 * math.log(math.pi) - math.log(d)) / n)
        sizes = np.bincount(j, minlength=d)
        rep = FakeReport(n, d, nn, sat, r_hat, r_star, r_c, sizes)
        reports[name] = rep
        log_z_vol = math.log(d) + n / 2 * math.log(math.pi) + n * math.log(r_hat) - lg
        floor = log_z_vol + math.exp(-log_z_vol)
        row.update(
            n_patterns=d,
            n_queries=d,
            nn_mean=float(nn.mean()),
            nn_median=float(np.median(nn)),
            nn_q10=float(np.quantile(nn, 0.1)),
            nn_q90=float(np.quantile(nn, 0.9)),
            r_hat=r_hat,
            r_hat_mean=float(nn.mean() / 2),
            r_star=r_star,
            r_ratio=r_hat / r_star,
            separated_frac=float((nn > 2 * r_star).mean()),
            contained_frac=math.nan,
            log_z_gauss=log_z_vol - 1.0,
            log_z_vol=log_z_vol,
            r_c=r_c,
            floor_low=floor,
            floor_high=floor + math.log(n_blocks),
            floor_gauss=floor + 0.5,
            twonn_id=float(8 + li),
            nonfinite=0,
            skipped_reason=None,
        )
        rows.append(row)
        if li in (0, n_blocks - 1, n_blocks):
            xy = (rng.normal(size=(d, 2)) + centers[:, :2][j % 6] * 0.8).astype(np.float32)
            ratio = (nn / r_hat).astype(np.float32)
            embeddings[name] = FakeEmbedding(
                xy=xy,
                rows=np.arange(d, dtype=np.int64),
                sequence=np.arange(d, dtype=np.int64),
                basin=j.astype(np.int64),
                ratio=ratio,
                n_total=d,
            )
        if name == "final":
            ratio_final = nn / r_hat
            basin_final = j
    layers = pd.DataFrame(rows)
    for col in ("skipped_reason",):
        if col not in layers:
            layers[col] = None
    ce = rng.gamma(4.0, 0.8, size=d)
    samples = pd.DataFrame(
        {
            "sequence": np.arange(d),
            "text": texts,
            "cross_entropy": ce,
            "min_k": -ce * 2 - rng.random(d),
            "top1": rng.random(d),
            "distance_ratio": ratio_final,
            "basin": basin_final,
        }
    )
    fin = reports["final"]
    summary = {
        "model": "fake-gpt2-tiny",
        "n_params_total": 1_234_567,
        "n_params_blocks": 987_654,
        "n_layers": n_blocks,
        "hidden_size": n,
        "n_sequences": d,
        "n_tokens": d * 64,
        "cross_entropy": float(ce.mean()),
        "floor_low": float(layers.iloc[-1]["floor_low"]),
        "floor_high": float(layers.iloc[-1]["floor_high"]),
        "floor_gauss": float(layers.iloc[-1]["floor_gauss"]),
        "chinchilla_loss": 4.2,
        "log10_N": math.log10(987_654),
        "two_log10_D": 2 * math.log10(d * 64),
        "normalize": "rms",
        "capture_seconds": 1.5,
        "total_seconds": 4.25,
        "tokens_per_second": d * 64 / 1.5,
        "loss_note": None,
        "n_patterns": fin.n_patterns,
    }
    return FakeAudit(layers, reports, samples, embeddings, summary)


def resign(root: Any, edit: Any = None) -> None:
    """Make a saved audit at ``root`` self-consistent again after its files were changed: every
    manifest entry's size and digest (the format's: BLAKE3 from format 4) recomputed, then
    audit.json's own digest (``edit(meta)`` may change audit.json's content first). What a
    crafted audit from someone else looks like: every digest matches, so only the checks on the
    content can refuse it."""
    import hashlib
    import json
    from pathlib import Path

    from hopaudit.storage.manifest import digest_key, encode_meta

    root = Path(root)
    meta = json.loads((root / "audit.json").read_text())
    meta.pop("sha256", None)
    if edit is not None:
        edit(meta)
    key = digest_key(int(meta.get("format_version", 1)))
    for rel in meta["files"]:
        data = (root / rel).read_bytes()
        if key == "blake3":
            import blake3

            digest = blake3.blake3(data).hexdigest()
        else:
            digest = hashlib.sha256(data).hexdigest()
        meta["files"][rel] = {"size": len(data), key: digest}
    (root / "audit.json").write_bytes(encode_meta(meta))
