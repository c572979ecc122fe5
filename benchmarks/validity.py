"""What the geometry predicts, measured with known answers (issue 22): a validity study.

A grid of tiny GPT-2s (2 blocks, hidden ``--widths``) trained from nothing on N member
sequences of the pydoc corpus (64 tokens each, ``hopaudit.zoo.train_tiny_gpt2``), N from
``--sizes``, each seed with its own members, init and batches, with as many held-out sequences
of the same corpus never trained on (fewer only where the corpus runs out: it holds 2485
sequences of 64 tokens at the tokenizer's 1024-token vocabulary). Every run trains for the
same number of steps (equal compute; small N are seen many more times than large N) and is
audited at ``--checkpoints`` steps along the way (halvings ending at the last step: from
under-fit to memorized), with ``heldout=`` and ``extraction=`` (32 + 32 tokens), float32
(``autocast="off"``, so the numbers do not depend on the CPU's bfloat16 support).

Per checkpoint and layer (``final`` and every block) it records the ground truth (the members'
extraction rate, the loss AUROC of members against held-out, train and held-out cross-entropy)
and the geometry as the audit reports it (``Audit.layers``, ``saturation``, ``summary()``,
the layer reports' basins; no theory recomputed here). Then, at the ``final`` layer, over all
checkpoints of all runs:

    rho_<q>=               Spearman's correlation of q with the members' extraction rate
    rho_<q>_lo= / _hi=     its 95 % bootstrap interval, resampling runs (not checkpoints)
    rho_within_<q>=        the median over runs of the per-run correlation (across steps)
    rho_partial_<q>= / _lo= / _hi=   Spearman's partial correlation of q with the extraction
                           rate given the members' cross-entropy (what q tells beyond the
                           loss), with the same bootstrap over runs
    capacity_observed_<width>=   N at which the final extraction rate (mean over seeds) falls
                                 below 0.5, interpolated in log2 N (nan: it never does here)
    capacity_predicted_<width>=  N at which the final r_hat / r_star (mean over seeds) falls
                                 below 1 (r_hat crosses r*); capacity_predicted_rc_<width>=
                                 the same for r_hat / r_c
    auroc_seq_<score>= / _lo= / _hi=   per-sequence membership scores on the memorized
                                 checkpoints (members' extraction rate >= 0.5): the mean of
                                 their AUROCs, 95 % interval by a bootstrap over runs and,
                                 within each, over sequences
    auroc_seq_<score>_lo_fw= / _hi_fw=   the same bootstrap's interval at 1 - 0.05 / k for
                                 the k geometric scores tried (Bonferroni): a score is kept
                                 only when this family-wise interval excludes 0.5
    n_runs=, n_checkpoints=, n_memorized_checkpoints=, native_bf16=, cpu_kind=, cpu_model=,
    wall_seconds=, load_average_start=, load_average_end= (1-minute load average of the machine)

q is a geometric quantity (``GEOMETRY``) or, as anchors to read them against, a quantity that
is not geometry (``ANCHORS``: the train cross-entropy, log2 N and log2 step). ``--out DIR``
writes ``checkpoints.parquet`` (one row per run, checkpoint and layer; a column per q, plus
``extraction_rate``, ``run``, ``seed``, ``width``, ``n_members``, ``step``, ``layer``),
``sequences.parquet`` (one row per sequence and checkpoint: its scores and whether it is a
member) and ``capacity.svg``; ``--from DIR`` prints every line again from those two tables
alone, without training. Each finished run is also kept in ``DIR/runs/``, and running again
with the same ``--out`` reuses the runs found there (a grid stopped half-way resumes). Runs
go to ``--workers`` processes (one torch thread each).

``--write-package-data [PATH]`` writes what the views show (hopaudit/views/validity.json: the
command, version, date, grid, and per geometric panel its quantity's rho, interval and partial
rho; read by hopaudit/views/validity.py).

Usage: ``python benchmarks/validity.py [--quick] [--out DIR] [--write-package-data]``;
``--quick`` is a reduced grid (12 runs of 2000 steps, under 10 minutes on two idle cores),
the full grid (36 runs of 4000 steps) about 35 idle. docs/validity.md has the lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: The geometric quantities correlated with the extraction rate (columns of checkpoints.parquet).
GEOMETRY = (
    "r_hat",  # Audit.layers: median nearest-other distance / 2
    "r_ratio",  # r_hat / r_star
    "r_hat_over_r_c",  # r_hat / r_c (Audit.layers r_hat and r_c)
    "separated_frac",  # fraction of patterns with nn > 2 r_star
    "saturation",  # 1 - median nn at 100 % of the patterns / at 25 % (Audit.saturation)
    "twonn_id",  # TwoNN intrinsic dimension
    "n_basins",  # distinct basins: patterns that are some pattern's nearest (basin_sizes > 0)
    "basin_frac",  # n_basins / n_patterns
    "log_z_vol",  # log Z, the paper's volume form
    "log_z_gauss",  # log Z, the exact Gaussian-ball form
    "floor_low",  # F(Z_vol), the floor band's lower edge
    "floor_gap",  # the members' cross-entropy minus floor_low (the band against the loss)
)
#: Not geometry: what the geometry has to beat (the loss, the data size, training time).
ANCHORS = ("train_ce", "log2_n_members", "log2_step")
#: Ground truth per checkpoint.
TRUTH = (
    "extraction_rate",
    "extraction_rate_heldout",
    "auroc_loss",
    "train_ce",
    "heldout_ce",
)
#: Per-sequence scores, oriented so that a member is expected higher (docs/validity.md).
SEQ_SCORES = (
    "nn_ratio_final",  # -(nn / r_hat) at final: Audit.geometric_scores(), the existing score
    "nn_ratio_layers",  # the same, averaged over every layer
    "norm",  # the raw (unnormalized) norm of the pattern at the last block
    "drift",  # mean distance moved from layer to layer (RMS-normalized patterns)
    "member_vs_heldout",  # log(nearest held-out distance / nearest member distance) at final
    "nn2_over_nn",  # log(second / first nearest member distance) at final
    "loss",  # -(mean token NLL): not geometry, the anchor
)
#: Coverage of the family-wise intervals: 95 % shared by the geometric scores tried (all but
#: the loss, the anchor), so one of them excluding 0.5 by chance is at most 5 % likely.
FAMILY_LEVEL = 1 - 0.05 / (len(SEQ_SCORES) - 1)
MEMORIZED = 0.5  # a checkpoint is memorized when at least this fraction of members is extracted
PREFIX = SUFFIX = 32
SEQ_LEN = PREFIX + SUFFIX

PACKAGE_DATA = _HERE.parent / "hopaudit" / "views" / "validity.json"
FULL = dict(widths=(16, 32, 64), sizes=(64, 128, 256, 512, 1024, 2048), seeds=(0, 1),
            steps=4000, checkpoints=6)  # fmt: skip
QUICK = dict(widths=(32, 64), sizes=(64, 256, 1024), seeds=(0, 1), steps=2000, checkpoints=4)


# --------------------------------------------------------------------------- statistics
def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing the mean of their ranks (as scipy's rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    cuts = np.flatnonzero(xs[1:] != xs[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(x)]])
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of the pairs where both values are finite (Pearson's
    correlation of their average ranks); nan with fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    rx, ry = average_ranks(x[ok]), average_ranks(y[ok])
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman's partial correlation of x and y given z: the rank correlations combined as
    (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)), over the triples where all three are
    finite; nan where a correlation is undefined or z explains x or y entirely."""
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[ok], y[ok], z[ok]
    r_xy, r_xz, r_yz = spearman(x, y), spearman(x, z), spearman(y, z)
    den = (1 - r_xz**2) * (1 - r_yz**2)
    if not all(map(math.isfinite, (r_xy, r_xz, r_yz))) or den <= 1e-12:
        return math.nan
    return float((r_xy - r_xz * r_yz) / math.sqrt(den))


def _groups(runs: Sequence[Any]) -> list[np.ndarray]:
    runs = np.asarray(runs)
    return [np.flatnonzero(runs == r) for r in pd.unique(runs)]


def bootstrap_over_runs(
    x: Sequence[float],
    y: Sequence[float],
    runs: Sequence[Any],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    given: Sequence[float] | None = None,
) -> tuple[float, float]:
    """95 % percentile interval of ``spearman(x, y)`` (``partial_spearman(x, y, given)`` with
    ``given``) when whole runs are resampled with replacement (checkpoints of one run are not
    independent draws); resamples whose correlation is undefined are left out; (nan, nan)
    when none is defined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    z = None if given is None else np.asarray(given, dtype=np.float64)
    groups = _groups(runs)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
        if z is None:
            stats[b] = spearman(x[idx], y[idx])
        else:
            stats[b] = partial_spearman(x[idx], y[idx], z[idx])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def within_run_median(x: Sequence[float], y: Sequence[float], runs: Sequence[Any]) -> float:
    """Median over runs of each run's Spearman correlation (runs where it is undefined, e.g. a
    constant extraction rate, are left out); nan when no run has one."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    per_run = np.array([spearman(x[g], y[g]) for g in _groups(runs)])
    per_run = per_run[np.isfinite(per_run)]
    return float(np.median(per_run)) if per_run.size else math.nan


def auroc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """P(member score > non-member score), ties counting 1/2 (Mann-Whitney U / (m n)), over
    the finite scores; nan when a class has none."""
    m = np.asarray(members, dtype=np.float64)
    n = np.asarray(nonmembers, dtype=np.float64)
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size == 0 or n.size == 0:
        return math.nan
    ranks = average_ranks(np.concatenate([m, n]))
    return float((ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0) / (m.size * n.size))


def auroc_over_runs(
    runs: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
    *,
    n_boot: int = 500,
    seed: int = 0,
    levels: Sequence[float] = (0.95,),
) -> tuple[float, ...]:
    """(mean AUROC, low, high) over checkpoints grouped by run: ``runs[i]`` lists run
    i's checkpoints as (member scores, non-member scores). The interval resamples runs, then
    within every drawn checkpoint its members and non-members (each with replacement); one
    (low, high) per entry of ``levels`` (coverage), from the same resamples."""
    runs = [list(r) for r in runs if len(r)]
    if not runs:
        return (math.nan,) * (1 + 2 * len(levels))
    point = float(np.nanmean([auroc(m, n) for r in runs for m, n in r]))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        values = []
        for i in rng.integers(len(runs), size=len(runs)):
            for m, n in runs[i]:
                values.append(auroc(m[rng.integers(m.size, size=m.size)],
                                    n[rng.integers(n.size, size=n.size)]))  # fmt: skip
        stats[b] = np.nanmean(values)
    out = [point]
    for level in levels:
        tail = 100 * (1 - level) / 2
        out += [float(v) for v in np.percentile(stats[np.isfinite(stats)], [tail, 100 - tail])]
    return tuple(out)


def first_crossing(
    ns: Sequence[float], values: Sequence[float], level: float
) -> tuple[float, str | None]:
    """(N, None) where ``values`` (ordered by ``ns``) first falls below ``level`` having been
    at or above it, interpolated linearly in log2 N; (nan, why) when it never does."""
    ns, values = np.asarray(ns, dtype=np.float64), np.asarray(values, dtype=np.float64)
    for i in range(1, len(ns)):
        a, b = values[i - 1], values[i]
        if a >= level > b:
            t = (a - level) / (a - b)
            return float(2 ** (math.log2(ns[i - 1]) + t * math.log2(ns[i] / ns[i - 1]))), None
    if len(values) and np.all(values < level):
        return math.nan, f"below {level:g} at every N ({ns[0]:g}..{ns[-1]:g})"
    return math.nan, f"not below {level:g} at any larger N ({ns[0]:g}..{ns[-1]:g})"


# --------------------------------------------------------------------------- the grid
def run_one(job: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Train one run and audit it at its checkpoints: (checkpoint rows, sequence rows)."""
    import torch

    import hopaudit
    from hopaudit.zoo import corpus, train_tiny_gpt2

    torch.set_num_threads(1)
    docs = corpus("pydoc", max_chars=job["max_chars"])
    n, steps, k = job["n_members"], job["steps"], job["checkpoints"]
    stops = sorted({max(1, steps >> i) for i in range(k)})
    rows: list[dict] = []
    seqs: list[dict] = []
    held: dict[str, Any] = {}

    def on_checkpoint(step: int, run: Any) -> None:
        if len(run.train_ids) != n:
            raise RuntimeError(f"asked for {n} members, the run kept {len(run.train_ids)}")
        if "ids" not in held:  # a seeded choice of as many held-out sequences, fixed per run
            pool = len(run.heldout_ids)
            pick = np.random.default_rng(1000 + job["seed"]).permutation(pool)[: min(n, pool)]
            held["ids"] = run.heldout_ids[np.sort(pick)]
        a = hopaudit.audit(
            run.model, run.train_ids, heldout=held["ids"], tokenizer=run.tokenizer,
            extraction={"prefix": PREFIX, "suffix": SUFFIX}, progress=False, umap_layers=[],
            bootstrap=0, autocast="off", seed=0,
        )  # fmt: skip
        meta = {
            "run": job["run"], "seed": job["seed"], "width": job["width"], "n_members": n,
            "n_heldout": len(held["ids"]), "step": step, "steps": steps,
            "epochs": run.config["epochs"], "train_loss_logged": float(np.mean(run.losses[-20:])),
        }  # fmt: skip
        rows.extend(checkpoint_rows(a, meta))
        seqs.extend(sequence_rows(a, meta))

    t0 = time.perf_counter()
    total = train_tiny_gpt2(docs, steps=1, seq_len=SEQ_LEN, progress=False).config
    train_tiny_gpt2(
        docs, fraction=n / total["n_sequences_total"], n_layer=2, n_embd=job["width"],
        n_head=2, seq_len=SEQ_LEN, steps=steps, batch_size=job["batch_size"], lr=job["lr"],
        seed=job["seed"], progress=False, threads=1, checkpoints=stops,
        on_checkpoint=on_checkpoint,
    )  # fmt: skip
    for r in rows:
        r["run_seconds"] = time.perf_counter() - t0
    return rows, seqs


def checkpoint_rows(a: Any, meta: dict[str, Any]) -> list[dict]:
    """One row per layer of one audited checkpoint: ``meta``, the ground truth, the geometry."""
    s = a.summary()
    membership = a.membership.set_index("score")
    held = a.heldout_samples
    truth = {
        "extraction_rate": s["extraction_rate"],
        "extraction_rate_heldout": s["extraction_rate_heldout"],
        "auroc_loss": float(membership.loc["loss", "auroc"]),
        "train_ce": s["cross_entropy"],
        "heldout_ce": float(held["cross_entropy"].mean()),
        "log2_n_members": math.log2(meta["n_members"]),
        "log2_step": math.log2(meta["step"]),
    }
    sat = a.saturation
    out = []
    for row in a.layers.itertuples():
        rep = a.layer_report(row.name)
        curve = sat[sat["name"] == row.name].set_index("fraction")["median"]
        sizes = np.asarray(rep.basin_sizes)
        n_basins = int((sizes > 0).sum())
        out.append(
            {
                **meta,
                **truth,
                "layer": row.name,
                "layer_index": int(row.layer),
                "is_final": row.name == a.layer_names[-1],
                "n": int(row.n),
                "n_patterns": int(row.n_patterns),
                "r_hat": row.r_hat,
                "r_star": row.r_star,
                "r_c": row.r_c,
                "r_ratio": row.r_ratio,
                "r_hat_over_r_c": row.r_hat / row.r_c,
                "separated_frac": row.separated_frac,
                "contained_frac": row.contained_frac,
                "saturation": 1.0 - curve.loc[1.0] / curve.loc[0.25],
                "twonn_id": row.twonn_id,
                "n_basins": n_basins,
                "basin_frac": n_basins / row.n_patterns,
                "log_z_vol": row.log_z_vol,
                "log_z_gauss": row.log_z_gauss,
                "floor_low": row.floor_low,
                "floor_high": row.floor_high,
                "floor_gap": s["cross_entropy"] - row.floor_low,
            }
        )
    return out


def _rms(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x * math.sqrt(x.shape[1]) / np.where(norm > 0, norm, 1.0)


def _two_nearest(queries: np.ndarray, refs: np.ndarray, self_mask: np.ndarray | None):
    """Distances from each query to its nearest and second-nearest reference (L2), with
    ``self_mask[i, j]`` marking pairs to skip (a pattern is not its own neighbour)."""
    sq = (queries**2).sum(1)[:, None] + (refs**2).sum(1)[None] - 2 * queries @ refs.T
    d = np.sqrt(np.maximum(sq, 0.0))
    if self_mask is not None:
        d[self_mask] = np.inf
    part = np.partition(d, 1, axis=1)[:, :2]
    return part[:, 0], part[:, 1]


def sequence_rows(a: Any, meta: dict[str, Any]) -> list[dict]:
    """Every member's and held-out sequence's scores (``SEQ_SCORES``) at one checkpoint, from
    the audit's public data: its geometric scores, samples and stored patterns."""
    names = a.layer_names
    final, last_block = names[-1], names[-2]
    rows = []
    g = {w: a.geometric_scores(w) for w in ("stored", "heldout")}
    samples = {"stored": a.samples, "heldout": a.heldout_samples}
    raw = {
        "stored": {name: np.asarray(a.activations(name), np.float64) for name in names},
        "heldout": {
            name: np.asarray(a.heldout_capture.store.get(name), np.float64) for name in names
        },
    }
    n_mem = raw["stored"][final].shape[0]
    for which in ("stored", "heldout"):
        if raw[which][final].shape[0] != len(samples[which]):
            raise RuntimeError("expected one pattern per sequence (positions='last')")
    z = {w: {name: _rms(raw[w][name]) for name in names} for w in raw}
    both = np.concatenate([z["stored"][final], z["heldout"][final]])
    n_all = both.shape[0]
    eye = np.eye(n_all, dtype=bool)
    near_m1, near_m2 = _two_nearest(both, both[:n_mem], eye[:, :n_mem])
    near_h1, _ = _two_nearest(both, both[n_mem:], eye[:, n_mem:])
    for which, offset in (("stored", 0), ("heldout", n_mem)):
        k = len(samples[which])
        sl = slice(offset, offset + k)
        drift = np.mean(
            [
                np.linalg.norm(z[which][names[i + 1]] - z[which][names[i]], axis=1)
                for i in range(len(names) - 1)
            ],
            axis=0,
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = {
                "nn_ratio_final": g[which][final].to_numpy(),
                "nn_ratio_layers": g[which][names].to_numpy().mean(axis=1),
                "norm": np.linalg.norm(raw[which][last_block], axis=1),
                "drift": drift,
                "member_vs_heldout": np.log(near_h1[sl]) - np.log(near_m1[sl]),
                "nn2_over_nn": np.log(near_m2[sl]) - np.log(near_m1[sl]),
                "loss": samples[which]["loss"].to_numpy(),
            }
        ex = samples[which]["extracted_tokens"].to_numpy()
        for i in range(k):
            rows.append(
                {
                    "run": meta["run"],
                    "step": meta["step"],
                    "member": which == "stored",
                    "sequence": i,
                    "extracted_tokens": int(ex[i]),
                    **{name: float(v[i]) for name, v in scores.items()},
                }
            )
    return rows


def make_jobs(grid: dict[str, Any], *, batch_size: int, lr: float, max_chars: int | None):
    """One job per (width, N, seed): seed by seed, and within a seed the sizes and widths
    middle first, then the middles of each half (:func:`spread_order`), so a grid cut short
    still spans the sizes and widths."""
    jobs = []
    for width in grid["widths"]:
        for n in grid["sizes"]:
            for seed in grid["seeds"]:
                jobs.append(
                    {
                        "run": f"w{width}-n{n}-s{seed}",
                        "width": int(width),
                        "n_members": int(n),
                        "seed": int(seed),
                        "steps": int(grid["steps"]),
                        "checkpoints": int(grid["checkpoints"]),
                        "batch_size": batch_size,
                        "lr": lr,
                        "max_chars": max_chars,
                    }
                )
    size_rank = {n: i for i, n in enumerate(spread_order(sorted(grid["sizes"])))}
    width_rank = {w: i for i, w in enumerate(spread_order(sorted(grid["widths"])))}
    return sorted(
        jobs, key=lambda j: (j["seed"], size_rank[j["n_members"]], width_rank[j["width"]])
    )


def spread_order(values: Sequence[Any]) -> list[Any]:
    """``values`` (sorted) middle first, then the middles of the halves, breadth first: any
    prefix of the result spans the range (``[1, 2, 3, 4, 5, 6]`` -> ``[3, 1, 5, 2, 4, 6]``)."""
    out, queue = [], [(0, len(values) - 1)]
    while queue:
        lo, hi = queue.pop(0)
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        out.append(values[mid])
        queue += [(lo, mid - 1), (mid + 1, hi)]
    return out


def _job_file(cache: Path, job: dict[str, Any], kind: str) -> Path:
    key = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:10]
    return cache / f"{job['run']}-{key}.{kind}.parquet"


def run_grid(
    jobs: list[dict], workers: int, log: Callable[[str], None], cache: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every job's rows, in job order: in this process (workers=1) or a spawned pool. With a
    ``cache`` folder each finished run is written there at once, and a run already there
    (same job, every parameter alike) is read back instead of trained again."""
    results: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    t0 = time.perf_counter()

    def done(job: dict, res: tuple[list, list]) -> None:
        frames = (pd.DataFrame(res[0]), pd.DataFrame(res[1]))
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            for kind, frame in zip(("checkpoints", "sequences"), frames, strict=True):
                _atomic_write(_job_file(cache, job, kind), frame.to_parquet)
        results[job["run"]] = frames
        secs = res[0][0]["run_seconds"] if res[0] else math.nan
        elapsed, load = time.perf_counter() - t0, os.getloadavg()[0]
        log(f"# run {len(results)}/{len(jobs)} {job['run']}: {secs:.0f} s "
            f"(elapsed {elapsed:.0f} s, load {load:.1f})")  # fmt: skip

    todo = []
    for job in jobs:
        files = [_job_file(cache, job, k) for k in ("checkpoints", "sequences")] if cache else []
        if files and all(f.exists() for f in files):
            results[job["run"]] = (pd.read_parquet(files[0]), pd.read_parquet(files[1]))
            log(f"# run {job['run']}: read from {cache}")
        else:
            todo.append(job)
    if workers <= 1:
        for job in todo:
            done(job, run_one(job))
    elif todo:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, job): job for job in todo}
            for fut in cf.as_completed(futures):
                done(futures[fut], fut.result())
    checkpoints = pd.concat([results[job["run"]][0] for job in jobs], ignore_index=True)
    sequences = pd.concat([results[job["run"]][1] for job in jobs], ignore_index=True)
    return checkpoints, sequences


# --------------------------------------------------------------------------- the lines
def summarize(
    checkpoints: pd.DataFrame, sequences: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0
) -> tuple[list[tuple[str, float]], list[str]]:
    """Every printed ``name=value`` pair, and the notes (``# ...`` lines), from the two
    tables alone: what ``--from DIR`` recomputes."""
    lines: list[tuple[str, float]] = []
    notes: list[str] = []
    fin = checkpoints[checkpoints["is_final"]].sort_values(["run", "step"])
    y, runs = fin["extraction_rate"].to_numpy(), fin["run"].to_numpy()
    lines += [("n_runs", fin["run"].nunique()), ("n_checkpoints", len(fin))]
    for q in (*GEOMETRY, *ANCHORS):
        x = fin[q].to_numpy(dtype=np.float64)
        lo, hi = bootstrap_over_runs(x, y, runs, n_boot=n_boot, seed=seed)
        lines += [
            (f"rho_{q}", spearman(x, y)),
            (f"rho_{q}_lo", lo),
            (f"rho_{q}_hi", hi),
            (f"rho_within_{q}", within_run_median(x, y, runs)),
        ]
    ce = fin["train_ce"].to_numpy(dtype=np.float64)
    for q in (*GEOMETRY, "log2_n_members", "log2_step"):
        x = fin[q].to_numpy(dtype=np.float64)
        lo, hi = bootstrap_over_runs(x, y, runs, n_boot=n_boot, seed=seed, given=ce)
        lines += [
            (f"rho_partial_{q}", partial_spearman(x, y, ce)),
            (f"rho_partial_{q}_lo", lo),
            (f"rho_partial_{q}_hi", hi),
        ]
    last = fin[fin["step"] == fin["steps"]]
    for width, part in last.groupby("width"):
        by_n = part.groupby("n_members")[["extraction_rate", "r_ratio", "r_hat_over_r_c"]].mean()
        ns = by_n.index.to_numpy(dtype=np.float64)
        for name, col, level in (
            ("capacity_observed", "extraction_rate", MEMORIZED),
            ("capacity_predicted", "r_ratio", 1.0),
            ("capacity_predicted_rc", "r_hat_over_r_c", 1.0),
        ):
            value, why = first_crossing(ns, by_n[col].to_numpy(), level)
            lines.append((f"{name}_{width}", value))
            if why:
                notes.append(f"# {name}_{width}: {col} {why}")
    memo = fin[fin["extraction_rate"] >= MEMORIZED][["run", "step"]]
    lines.append(("n_memorized_checkpoints", len(memo)))
    picked = sequences.merge(memo, on=["run", "step"])
    for score in SEQ_SCORES:
        grouped = []
        for _, run_part in picked.groupby("run", sort=True):
            grouped.append(
                [
                    (
                        ck.loc[ck["member"], score].to_numpy(np.float64),
                        ck.loc[~ck["member"], score].to_numpy(np.float64),
                    )
                    for _, ck in run_part.groupby("step", sort=True)
                ]
            )
        point, lo, hi, lo_fw, hi_fw = auroc_over_runs(
            grouped, n_boot=max(1, n_boot // 4), seed=seed, levels=(0.95, FAMILY_LEVEL)
        )
        lines += [(f"auroc_seq_{score}", point), (f"auroc_seq_{score}_lo", lo),
                  (f"auroc_seq_{score}_hi", hi), (f"auroc_seq_{score}_lo_fw", lo_fw),
                  (f"auroc_seq_{score}_hi_fw", hi_fw)]  # fmt: skip
    return lines, notes


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}" if abs(value) >= 1e4 else f"{float(value):.4f}"
    return str(value)


# --------------------------------------------------------------------------- the plot
def capacity_svg(checkpoints: pd.DataFrame, lines: dict[str, float]) -> str:
    """Two panels against N (log2): the final extraction rate per width (mean over seeds,
    each seed a dot) and r_hat / r_star at final, with the observed and predicted capacity
    marked. Plain SVG: no plotting library is needed."""
    fin = checkpoints[checkpoints["is_final"] & (checkpoints["step"] == checkpoints["steps"])]
    widths = sorted(fin["width"].unique())
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    ns = sorted(fin["n_members"].unique())
    lx0, lx1 = math.log2(ns[0]), math.log2(ns[-1])
    W, H, pad, gap = 380, 260, 48, 40
    total_w = 2 * W + gap + 2 * pad
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{H + 2 * pad + 20}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{total_w}" height="{H + 2 * pad + 20}" fill="white"/>']  # fmt: skip
    ratio_max = math.ceil(max(1.2, float(np.nanmax(fin["r_ratio"])) * 1.05) * 2) / 2
    panels = [
        ("extraction_rate", "members' extraction rate (final step)", 0.0, 1.0, MEMORIZED,
         "capacity_observed"),
        ("r_ratio", "r\u0302 / r* at final (final step)", 0.0, ratio_max, 1.0,
         "capacity_predicted"),
    ]  # fmt: skip
    for p, (col, title, y0, y1, level, cap) in enumerate(panels):
        ox = pad + p * (W + gap)

        def px(n: float, ox: float = ox) -> float:
            return ox + (math.log2(n) - lx0) / max(lx1 - lx0, 1e-9) * W

        def py(v: float, y0: float = y0, y1: float = y1) -> float:
            return pad + H - (v - y0) / (y1 - y0) * H

        out.append(f'<rect x="{ox}" y="{pad}" width="{W}" height="{H}" fill="none" '
                   'stroke="#888"/>')  # fmt: skip
        out.append(f'<text x="{ox + W / 2}" y="{pad - 18}" text-anchor="middle">{title}</text>')
        out.append(f'<line x1="{ox}" x2="{ox + W}" y1="{py(level):.1f}" y2="{py(level):.1f}" '
                   'stroke="#444" stroke-dasharray="4 3"/>')  # fmt: skip
        for n in ns:
            out.append(f'<text x="{px(n):.1f}" y="{pad + H + 16}" text-anchor="middle">{n}</text>')
        out.append(f'<text x="{ox + W / 2}" y="{pad + H + 34}" text-anchor="middle">'
                   'N member sequences (log scale)</text>')  # fmt: skip
        ticks = np.linspace(y0, y1, 5) if y1 <= 1 else np.arange(y0, y1 + 1e-9, 0.5)
        for v in ticks:
            out.append(f'<text x="{ox - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.2g}</text>')
        for c, width in enumerate(widths):
            color = colors[c % len(colors)]
            part = fin[fin["width"] == width]
            for r in part.itertuples():
                v = getattr(r, col)
                if math.isfinite(v):
                    out.append(f'<circle cx="{px(r.n_members):.1f}" cy="{py(v):.1f}" r="2" '
                               f'fill="{color}" opacity="0.45"/>')  # fmt: skip
            mean = part.groupby("n_members")[col].mean()
            pts = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in mean.items() if math.isfinite(v))
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
            mark = lines.get(f"{cap}_{width}", math.nan)
            if isinstance(mark, float) and math.isfinite(mark):
                out.append(f'<line x1="{px(mark):.1f}" x2="{px(mark):.1f}" y1="{pad}" '
                           f'y2="{pad + H}" stroke="{color}" stroke-dasharray="2 2"/>')  # fmt: skip
            out.append(f'<text x="{ox + W - 8}" y="{pad + 16 + 15 * c}" text-anchor="end" '
                       f'fill="{color}">width {width}</text>')  # fmt: skip
    out.append(
        f'<text x="{pad}" y="{H + 2 * pad + 12}" fill="#444">Lines: the mean over seeds '
        "(dots: each seed). Dotted verticals: the capacity, observed (extraction falls "
        "below 0.5, left) and predicted (r\u0302 crosses r*, right).</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- files
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_tables(src: Path, log: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tables of an ``--out`` folder (``checkpoints.parquet`` alone gives every line
    but the per-sequence AUROCs); without them (a grid still running or stopped), the runs
    finished so far, from ``src/runs/``."""
    if (src / "checkpoints.parquet").exists():
        checkpoints = pd.read_parquet(src / "checkpoints.parquet")
        if not (src / "sequences.parquet").exists():  # the auroc_seq_ lines are then nan
            log(f"# {src}: no sequences.parquet, so no per-sequence AUROC")
            return checkpoints, pd.DataFrame(columns=["run", "step", "member", *SEQ_SCORES])
        return checkpoints, pd.read_parquet(src / "sequences.parquet")
    parts = sorted((src / "runs").glob("*.checkpoints.parquet"))
    if not parts:
        raise SystemExit(f"{src}: no checkpoints.parquet and no finished run in {src / 'runs'}")
    log(f"# {src}: no checkpoints.parquet, reading the {len(parts)} runs finished so far")
    seqs = [p.with_name(p.name.replace(".checkpoints.", ".sequences.")) for p in parts]
    checkpoints = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return checkpoints, pd.concat([pd.read_parquet(p) for p in seqs], ignore_index=True)


#: Each geometric panel's quantity (a column of checkpoints.parquet) and how a line names it.
PANEL_QUANTITIES = {
    "distances": ("saturation", "The distance curve's shift from 25 % to 100 % of the patterns"),
    "radii": ("r_ratio", "r\u0302 / r* at the final layer"),
    "floor": ("floor_gap", "The cross-entropy's height above the floor F(Z)"),
    "basins": ("basin_frac", "The share of patterns that are a basin"),
}  # fmt: skip


def package_data(values: dict[str, Any], checkpoints: pd.DataFrame, command: str) -> dict:
    """The validity file the package ships (hopaudit/views/validity.json): the command,
    version and date, the grid, and per panel its quantity's rho, interval and partial rho;
    the basins panel also carries the per-sequence nn / r-hat AUROC."""
    import datetime

    from hopaudit import __version__

    fin = checkpoints[checkpoints["is_final"]]
    grid = (
        f"{fin['run'].nunique()} tiny GPT-2 runs (2 blocks; widths "
        f"{', '.join(map(str, sorted(fin['width'].unique())))}; N = "
        f"{', '.join(map(str, sorted(fin['n_members'].unique())))} pydoc sequences; seeds "
        f"{', '.join(map(str, sorted(fin['seed'].unique())))}; {int(fin['steps'].max())} steps), "
        f"{len(fin)} checkpoints"
    )
    panels = {}
    for panel, (q, label) in PANEL_QUANTITIES.items():
        entry: dict[str, Any] = {"quantity": q, "label": label}
        for stem in (f"rho_{q}", f"rho_partial_{q}"):
            key = "rho" if stem == f"rho_{q}" else "rho_partial"
            for s in ("", "_lo", "_hi"):
                entry[f"{key}{s}"] = round(float(values[f"{stem}{s}"]), 4)
        panels[panel] = entry
    panels["basins"]["sequence"] = {
        "label": "nn / r\u0302",
        **{k: round(float(values[f"auroc_seq_nn_ratio_final{s}"]), 4)
           for k, s in (("auroc", ""), ("auroc_lo", "_lo"), ("auroc_hi", "_hi"))},
    }  # fmt: skip
    data = {
        "_doc": "What benchmarks/validity.py measured each geometric panel's quantity to "
        "predict (docs/validity.md); written by its --write-package-data, read by "
        "hopaudit/views/validity.py.",
        "command": command,
        "hopaudit_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "grid": grid,
        "doc": "docs/validity.md",
        "panels": panels,
    }
    if values.get("n_memorized_checkpoints", 0) > 0 and math.isfinite(values["auroc_seq_loss"]):
        data["membership"] = membership_data(values)  # else nothing was memorized to score
    return data


#: How the package ships each per-sequence score tried (None: not shipped as its own row):
#: (its name in Audit.membership, its label, whether the package reverses it).
SHIPPED_AS = {
    "nn_ratio_final": ("geometric", "nn / r\u0302 at final", False),
    "nn_ratio_layers": ("nn_ratio_layers", "nn / r\u0302, mean of layers", False),
    "norm": ("norm_reversed", "\u2212\u2016h\u2016 at the last block", True),
    "drift": (None, "the distance moved from layer to layer", False),
    "member_vs_heldout": ("member_vs_heldout", "nearest held-out / nearest stored", False),
    "nn2_over_nn": (None, "second over first nearest stored", False),
}


LOSS_KEYS = (("auroc", ""), ("auroc_lo", "_lo"), ("auroc_hi", "_hi"))


def membership_data(values: dict[str, Any]) -> dict:
    """The membership panel's entry: every geometric per-sequence score tried, as the package
    orients it (``norm`` reversed), its AUROC with its 95 % and family-wise intervals, and
    whether the rule kept it (family-wise interval excludes 0.5); the loss's AUROC beside."""

    def get(score: str, suffix: str) -> float:
        return round(float(values[f"auroc_seq_{score}{suffix}"]), 4)

    scores = []
    for score in SEQ_SCORES[:-1]:
        name, label, reverse = SHIPPED_AS[score]
        point, lo, hi, lo_fw, hi_fw = (
            get(score, s) for s in ("", "_lo", "_hi", "_lo_fw", "_hi_fw")
        )
        kept = not lo_fw <= 0.5 <= hi_fw
        if reverse:
            point, lo, hi, lo_fw, hi_fw = 1 - point, 1 - hi, 1 - lo, 1 - hi_fw, 1 - lo_fw
        scores.append({"score": name or score, "label": label, "shipped": name is not None,
                       "kept": kept, **{k: round(v, 4) for k, v in (
                           ("auroc", point), ("auroc_lo", lo), ("auroc_hi", hi),
                           ("auroc_lo_fw", lo_fw), ("auroc_hi_fw", hi_fw))}})  # fmt: skip
    return {
        "n_checkpoints": int(values["n_memorized_checkpoints"]),
        "loss": {k: get("loss", s) for k, s in LOSS_KEYS},
        "scores": scores,
    }


def cpu_description() -> tuple[bool, str, str]:
    """(native bfloat16, "native-bfloat16" or "avx2-only" or "other", the CPU's model name)."""
    import torch

    from hopaudit.model.precision import native_bf16

    native = native_bf16(torch.device("cpu"))
    model = platform.processor() or "unknown"
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
    except OSError:
        pass
    kind = "native-bfloat16" if native else ("avx2-only" if " avx2" in flags else "other")
    return native, kind, model


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run (or reload with ``--from``) the grid, print the lines, return them as a dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced grid (~5 minutes)")
    parser.add_argument("--out", help="directory for checkpoints.parquet, sequences.parquet")
    parser.add_argument("--from", dest="source", help="print the lines from a previous --out")
    parser.add_argument("--widths", help="comma-separated hidden sizes (overrides the grid)")
    parser.add_argument("--sizes", help="comma-separated member counts N")
    parser.add_argument("--seeds", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, help="training steps of every run")
    parser.add_argument("--checkpoints", type=int, help="audits per run (halvings of steps)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-chars", type=int, help="cut the corpus (toy runs)")
    parser.add_argument("--workers", type=int, default=2, help="processes (1: in this one)")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--write-package-data", nargs="?", const=str(PACKAGE_DATA),
                        metavar="PATH", help="write the views' validity file (default: "
                        "hopaudit/views/validity.json)")  # fmt: skip
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.source:
        checkpoints, sequences = load_tables(Path(args.source), log)
    else:
        grid = dict(QUICK if args.quick else FULL)
        for key in ("widths", "sizes", "seeds"):
            if getattr(args, key):
                grid[key] = tuple(int(v) for v in getattr(args, key).split(","))
        for key in ("steps", "checkpoints"):
            if getattr(args, key):
                grid[key] = getattr(args, key)
        jobs = make_jobs(grid, batch_size=args.batch_size, lr=args.lr, max_chars=args.max_chars)
        cache = Path(args.out) / "runs" if args.out else None
        checkpoints, sequences = run_grid(jobs, args.workers, log, cache)
    lines, notes = summarize(checkpoints, sequences, n_boot=args.boot)
    native, kind, model = cpu_description()
    lines += [("native_bf16", native), ("cpu_kind", kind), ("cpu_model", model)]
    if not args.source:  # how long, and how busy the machine was (others share it)
        lines.append(("wall_seconds", time.perf_counter() - t0))
        lines += [("load_average_start", load_start), ("load_average_end", os.getloadavg()[0])]
    for name, value in lines:
        print(f"{name}={_fmt(value)}")
    for note in notes:
        print(note)
    values = dict(lines)
    if args.write_package_data:
        from hopaudit.views.validity import check_validity

        command = "python benchmarks/validity.py " + " ".join(
            sys.argv[1:] if argv is None else list(argv)
        )
        data = check_validity(package_data(values, checkpoints, command.strip()))
        text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
        _atomic_write(Path(args.write_package_data), lambda p: p.write_text(text, "utf-8"))
        log(f"# wrote {args.write_package_data}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "checkpoints.parquet", lambda p: checkpoints.to_parquet(p))
        _atomic_write(out / "sequences.parquet", lambda p: sequences.to_parquet(p))
        svg = capacity_svg(checkpoints, values)
        _atomic_write(out / "capacity.svg", lambda p: p.write_text(svg))
    return values


if __name__ == "__main__":
    main()
